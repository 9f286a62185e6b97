//! The `keyferry` command's parts that are not the command line itself:
//! the built-in application components, and the benchmarks (shared by the
//! `bench` commands and `cargo bench`) with their charts.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

pub mod bench;
pub mod charts;
pub mod serve_bench;

/// The built-in application components `keyferry serve` runs, built from
/// `guest/examples` by this crate's build script.
pub mod apps {
    /// The HTTP/1.1 responder that reports the connection's TLS facts
    /// from inside the sandbox (`keyferry serve`'s default).
    pub const HTTP_RESPONDER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/http_app.wasm"));
    /// Echo (`keyferry serve --echo`).
    pub const ECHO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_app.wasm"));
}
