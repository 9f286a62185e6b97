//! keyferry's sandboxed TLS record layer.
//!
//! This crate is two things:
//!
//! - the reference data-plane **component** (built for `wasm32-wasip2`),
//!   exporting the `keyferry:dataplane` WIT interfaces: traffic keys and MAC
//!   keys imported from sealed blobs, record seal and open, KeyUpdate,
//!   export and migration, and a self-check;
//! - a plain **Rust library** with the same logic, free of WIT, so it is
//!   unit-tested natively, so the host seals blobs with the one
//!   implementation of the format, and so plugin authors can build their own
//!   components on it.
//!
//! The modules are named after what they hold: [`record`] (TLS 1.3 and TLS
//! 1.2 AEAD records), [`keyschedule`] (HKDF-Expand-Label and KeyUpdate),
//! [`mac`] (HMAC keys), [`blob`] (the sealed key blob format), [`registry`]
//! (single use and rollback checks), [`instance`] (one guest's keys),
//! [`framing`] (record boundaries), [`connection`] (a connection's data
//! plane), [`application`] (what a component does with the plaintext, and
//! [`export_application!`] to build a component), [`http`] (the built-in
//! HTTP/1.1 responder).
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod aes_gcm_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod aes_simd128;
pub mod application;
pub mod blob;
pub mod blob_aead;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod chacha20_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod chacha20poly1305_simd128;
pub mod cipher;
pub mod connection;
pub mod error;
pub mod framing;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod ghash_simd128;
pub mod http;
pub mod instance;
pub mod key_service;
pub mod keyschedule;
pub mod mac;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod poly1305_simd128;
pub mod record;
pub mod registry;
pub mod selfcheck;
pub mod suite;
mod wit_enum;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod exports;

/// Generated WIT bindings, for [`export_application!`] and the glue. The
/// world follows the features: `application-plugin` for plugins, the
/// reference component's `dataplane` (or `dataplane-host-keys`) otherwise.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    reason = "generated code"
)]
pub mod bindings {
    #[cfg(not(feature = "reference-component"))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "application-plugin",
        pub_export_macro: true,
    });
    #[cfg(all(feature = "reference-component", not(feature = "host-keys")))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "dataplane",
        pub_export_macro: true,
    });
    #[cfg(feature = "host-keys")]
    wit_bindgen::generate!({
        path: "../wit",
        world: "dataplane-host-keys",
        pub_export_macro: true,
    });
}

/// The reference component: its connections hand their plaintext to the host.
#[cfg(all(target_arch = "wasm32", feature = "reference-component"))]
#[allow(unreachable_pub, reason = "the generated export glue")]
mod reference_component {
    crate::export_application!(crate::application::Passthrough);
}

#[cfg(test)]
mod testutil;

// Only for its `precomputed-tables` feature (see Cargo.toml).
use curve25519_dalek as _;

pub use error::{Alert, BlobError, Error, KeyServiceError, Result, UnusableReason};
pub use suite::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
