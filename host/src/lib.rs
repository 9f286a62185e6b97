//! keyferry: split-TLS with a sandboxed data plane.
//!
//! The trusted host runs the TLS handshake with rustls and keeps the
//! long-term private key. It exports each traffic key, with its exact
//! state, as a sealed blob ([`keyferry_record::blob`]), wipes its own copy,
//! and hands the blob to a WebAssembly guest, which protects and opens
//! records inside the sandbox. This is Windows Schannel's split
//! (CryptExportKey / CryptImportKey of OPAQUEKEYBLOBs between the LSA and
//! the application) with wasmtime as the boundary.
//!
//! The layers, bottom up (each module imports only those below it):
//! - [`error`], [`suites`], [`keystore`] (host-resident keys, and
//!   `host_aead`, their AEAD), [`export`] (taking keys out of rustls);
//! - `store` (what a guest store holds, and the one way to call in);
//! - `wasi_io` (WASI streams and polls that never wait on the runtime);
//! - [`engine`] (wasmtime engine, limits), [`component`] (compiled
//!   components), [`instance`] (one guest instance and its key handles);
//! - [`handshake`] (sans-IO rustls handshake and handoff), [`tls`]
//!   (identities and configs), [`dataplane`] (the one connection driver);
//!
//! Embedding, in short: make a [`GuestEngine`] and a [`GuestComponent`],
//! run a [`handshake::Handshake`] over your transport (it is sans-IO:
//! `feed`, `advance`, `take_outgoing`), then hand the finished handshake to
//! a fresh instance with [`DataPlane::new`] and move ciphertext with
//! [`DataPlane::receive`] and [`DataPlane::send`]. `examples/embed.rs` is
//! a whole server connection over a `std::net::TcpStream` (`cargo run -p
//! keyferry --example embed`), and the README's library section a tour.
//!
//! The server built on it (connection lifecycle, the process split,
//! metrics, PROXY, tickets) is the `keyferry-server` crate beside this one;
//! an embedder who brings its own event loop takes this crate alone.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

/// Generated wasmtime bindings for the `keyferry:dataplane` package.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    reason = "generated code"
)]
#[allow(unsafe_code, reason = "bindgen! expands to unsafe trait impls")]
pub mod access_log;
mod bindings;
pub mod component;
pub mod compose;
mod connection_funcs;
pub mod dataplane;
pub mod engine;
pub mod error;
pub mod export;
pub mod handshake;
mod host_aead;
pub mod http_serve;
pub mod instance;
mod key_service;
pub mod keystore;
pub mod ocsp;
mod sandbox;
pub mod suites;
pub mod tls;
mod wasi_io;
mod wit;
mod x509;

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use component::{GuestComponent, REFERENCE_COMPONENT, REFERENCE_COMPONENT_HOST_KEYS};
pub use dataplane::{DataPlane, Delivery};
pub use engine::{GuestEngine, SandboxConfig};
pub use error::{Error, Result, TrapKind};
pub use host_aead::install_blob_aead;
pub use instance::{ExchangeKey, GuestInstance, MacKeyHandle, TrafficKeyHandle, TrafficKeyState};
pub use keyferry_record::record::TrafficKeyMaterial;
pub use keyferry_record::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
pub use keystore::{HostKeyStore, KeyServiceTraffic};
pub use sandbox::ExecutionBound;
