//! keyferry's TLS record core, the same inside the sandbox and out: the
//! guest component runs it on the keys it imports, the host seals blobs
//! and checks records with it, and its tests run natively.
//!
//! The modules are named after what they hold: [`record`] (TLS 1.3 and
//! TLS 1.2 AEAD records), [`keyschedule`] (HKDF-Expand-Label and
//! KeyUpdate), [`mac`] (HMAC keys), [`blob`] (the sealed key blob
//! formats), [`cipher`] (the record AEADs), [`framing`] (record
//! boundaries), [`connection`] (a connection's data plane), and
//! [`key_service`] (keys that stay with the host).
//!
//! No WIT and no component glue: that is `keyferry-guest`, which builds
//! the components on this crate. In wasm the AEADs are `keyferry-simd`'s.
#![no_std]
// In wasm, one `unsafe impl Sync` for per-instance statics (`local`).
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

extern crate alloc;
// Natively the host links this crate and its tests run: std is there, for
// per-thread state and the tests. In wasm the component decides.
#[cfg(any(test, not(target_arch = "wasm32")))]
#[cfg_attr(test, macro_use)]
extern crate std;

pub mod blob;
pub mod blob_aead;
pub mod cipher;
pub mod connection;
pub mod error;
pub mod framing;
pub mod key_service;
pub mod keyschedule;
#[doc(hidden)]
pub mod local;
pub mod mac;
pub(crate) mod random;
pub mod record;
pub mod suite;
#[doc(hidden)]
pub mod vectors;
mod wit_enum;

#[cfg(test)]
mod testutil;

// Only for its `precomputed-tables` feature (see Cargo.toml).
use curve25519_dalek as _;

pub use error::{Alert, BlobError, Error, KeyServiceError, Result, UnusableReason};
pub use key_service::KeyPosition;
pub use suite::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
