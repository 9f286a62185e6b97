//! keyferry's record AEADs for WebAssembly's `simd128`: AES-GCM
//! (`aes_gcm_simd128`) and ChaCha20-Poly1305
//! (`chacha20poly1305_simd128`), with RustCrypto's `aead` traits, so
//! `keyferry-record` takes them in place of RustCrypto's own in wasm.
//!
//! Why a crate of their own: RustCrypto's portable AES and GHASH, compiled
//! to wasm, run a fraction as fast as these 128-bit-lane versions, and the
//! record core is easier to read without them. Every module is compiled
//! only for `wasm32` with `simd128` (the guest builds set
//! `-C target-feature=+simd128`); on other targets the crate is empty.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod aes_gcm_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod aes_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod chacha20_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod chacha20poly1305_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod ghash_simd128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod poly1305_simd128;
