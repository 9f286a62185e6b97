//! The `keyferry` command. [`main`] is the whole program; the binary only
//! calls it, as `wasmtime-cli`'s does. The library also holds the built-in
//! application components and the benchmarks (shared by the `bench`
//! commands and `cargo bench`) with their charts.
// Denied, not forbidden: taking systemd's listening socket
// (`commands::systemd`) is the one place that needs it.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

pub mod bench;
pub mod charts;
mod command_line;
mod commands;
pub mod serve_bench;

pub use command_line::main;

/// The built-in application components `keyferry serve` runs, built from
/// `guest/examples` and shipped prebuilt (`host/cli/components`); the
/// tests rebuild them and check the bytes.
pub mod apps {
    /// The HTTP/1.1 responder that reports the connection's TLS facts
    /// from inside the sandbox (`keyferry serve`'s default).
    pub const HTTP_RESPONDER: &[u8] = include_bytes!("../components/http_app.wasm");
    /// Echo (`keyferry serve --echo`).
    pub const ECHO: &[u8] = include_bytes!("../components/echo_app.wasm");

    #[cfg(test)]
    mod tests {
        use keyferry::{GuestComponent, GuestEngine, SandboxConfig};

        /// Built without std (the guest crate's `component-runtime`): no
        /// WASI CLI or I/O imports, whose lowering would cost every
        /// instance two more core modules. A `println!` or a std
        /// collection in the applications would bring them back. The
        /// access log's import is lowered beside randomness's, in the same
        /// shim.
        #[test]
        fn the_built_in_applications_import_only_randomness_types_and_the_access_log() {
            let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
            for wasm in [super::HTTP_RESPONDER, super::ECHO] {
                let component = GuestComponent::new(&engine, wasm).unwrap();
                assert_eq!(
                    component.imports(),
                    [
                        "keyferry:dataplane/access-log@0.1.0",
                        "keyferry:dataplane/types@0.1.0",
                        "wasi:random/random@0.2.6"
                    ]
                );
            }
        }
    }
}
