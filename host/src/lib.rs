//! keyferry: split-TLS with a sandboxed data plane.
//!
//! The trusted host runs the TLS handshake with rustls and keeps the
//! long-term private key. It exports each traffic key, with its exact
//! state, as a sealed blob ([`keyferry_guest::blob`]), wipes its own copy,
//! and hands the blob to a WebAssembly guest ([`GuestInstance`]), which
//! protects and opens records inside the sandbox. This is Windows
//! Schannel's split (CryptExportKey / CryptImportKey of OPAQUEKEYBLOBs
//! between the LSA and the application) with wasmtime as the boundary.
//!
//! Modules: [`sandbox`] (engine, limits, compiled components), [`guest`]
//! (one instance and its key handles), [`keystore`] (host-resident keys),
//! [`export`] (taking keys out of rustls), [`error`].
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

pub mod app;
pub mod bench;
mod convert;
pub mod dataplane;
pub mod error;
pub mod export;
pub mod guest;
pub mod handshake;
pub mod keystore;
pub mod sandbox;
pub mod server;
pub mod tls;
pub mod transport;
mod x509;

/// Generated wasmtime bindings for the `keyferry:dataplane` worlds.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    reason = "generated code"
)]
#[allow(unsafe_code, reason = "bindgen! expands to unsafe trait impls")]
pub mod bindings {
    include!("bindings.rs");
}

/// Generated wasmtime bindings for the `application-plugin` world: what
/// `serve` drives, in the reference component and in plugins alike.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    reason = "generated code"
)]
#[allow(unsafe_code, reason = "bindgen! expands to unsafe trait impls")]
pub mod app_bindings {
    include!("app_bindings.rs");
}

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/guest_artifacts.rs"));
}

pub use artifacts::{
    EXAMPLE_PLUGIN_MISBEHAVING_PATH, EXAMPLE_PLUGIN_UPPERCASE_PATH, GUEST_COMPONENT,
    GUEST_COMPONENT_HOST_KEYS, GUEST_COMPONENT_PATH,
};
pub use error::{Error, Result, TrapKind};
pub use guest::{ExchangeKey, GuestInstance, MacKeyHandle, TrafficKeyHandle, TrafficKeyState};
pub use keyferry_guest as record_layer;
pub use keyferry_guest::record::TrafficKeyMaterial;
pub use keyferry_guest::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
pub use keystore::HostKeyStore;
pub use sandbox::{ExecutionBound, GuestComponent, GuestEngine, SandboxConfig};
