//! The front of a served `wasi:http` component (DESIGN section 9): the
//! record layer, an HTTP/1.1 server codec, and the `wasi:http/types` and
//! `wasi:io` resources a stock component imports, all inside the sandbox.
//! The host composes it with the tenant at load time, and hands each
//! request it decodes to the tenant's handler.
//!
//! [`codec`] is plain Rust, tested natively. The connection state and the
//! WIT glue exist only in the component (feature `http-front`).

pub mod codec;
#[cfg(all(target_arch = "wasm32", feature = "http-front"))]
mod conn;
#[cfg(all(target_arch = "wasm32", feature = "http-front"))]
mod wasi;

#[cfg(all(target_arch = "wasm32", feature = "http-front"))]
#[allow(unreachable_pub, reason = "the generated export glue")]
mod component {
    use super::wasi::Front;
    crate::bindings::export!(Front with_types_in crate::bindings);
}
