//! The three record AEADs behind one type, operating in place.
//!
//! In-place `AeadInOut` calls mean no allocation per record: the record
//! buffer that crossed into the sandbox is encrypted where it lies.

use alloc::boxed::Box;
use alloc::vec::Vec;

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use aes_gcm::{Aes128Gcm, Aes256Gcm};
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use chacha20poly1305::ChaCha20Poly1305;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use keyferry_simd::aes_gcm_simd128::{Aes128Gcm, Aes256Gcm};
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use keyferry_simd::chacha20poly1305_simd128::ChaCha20Poly1305;

use crate::error::{Alert, Error, Result};
use crate::suite::AeadAlgorithm;

/// Every supported AEAD has a 16-byte tag.
pub const TAG_LEN: usize = 16;
/// Every supported AEAD has a 12-byte nonce.
pub const NONCE_LEN: usize = 12;

/// A keyed AEAD. The cipher types zeroize their key schedules on drop (the
/// crates' `zeroize` feature), so this type holds no secret past its life.
pub enum RecordCipher {
    /// AES-128-GCM.
    Aes128(Box<Aes128Gcm>),
    /// AES-256-GCM.
    Aes256(Box<Aes256Gcm>),
    /// ChaCha20-Poly1305.
    ChaCha(Box<ChaCha20Poly1305>),
}

impl RecordCipher {
    /// Keys `algorithm` with `key`, which must have the algorithm's length.
    pub fn new(algorithm: AeadAlgorithm, key: &[u8]) -> Result<Self> {
        let bad = |_| Error::InvalidArgument("aead key length");
        Ok(match algorithm {
            AeadAlgorithm::Aes128Gcm => {
                Self::Aes128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?))
            }
            AeadAlgorithm::Aes256Gcm => {
                Self::Aes256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?))
            }
            AeadAlgorithm::ChaCha20Poly1305 => Self::ChaCha(Box::new(
                ChaCha20Poly1305::new_from_slice(key).map_err(bad)?,
            )),
        })
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        fn run<A: AeadInOut>(
            a: &A,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
        ) -> Result<[u8; TAG_LEN]> {
            let nonce = Nonce::<A>::try_from(&nonce[..])
                .map_err(|_| Error::InvalidArgument("nonce length"))?;
            let tag = a
                .encrypt_inout_detached(&nonce, aad, buf.into())
                .map_err(|_| Error::InvalidArgument("aead input too long"))?;
            let mut out = [0u8; TAG_LEN];
            out.copy_from_slice(&tag);
            Ok(out)
        }
        match self {
            Self::Aes128(a) => run(a.as_ref(), nonce, aad, buf),
            Self::Aes256(a) => run(a.as_ref(), nonce, aad, buf),
            Self::ChaCha(a) => run(a.as_ref(), nonce, aad, buf),
        }
    }

    /// Decrypts `buf` in place after checking `tag` (constant time, inside
    /// the AEAD crates). On failure `buf` holds no plaintext.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        fn run<A: AeadInOut>(
            a: &A,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
            tag: &[u8],
        ) -> Result<()> {
            let nonce = Nonce::<A>::try_from(&nonce[..])
                .map_err(|_| Error::InvalidArgument("nonce length"))?;
            let tag = Tag::<A>::try_from(tag).map_err(|_| Error::Alert(Alert::BadRecordMac))?;
            a.decrypt_inout_detached(&nonce, aad, buf.into(), &tag)
                .map_err(|_| Error::Alert(Alert::BadRecordMac))
        }
        match self {
            Self::Aes128(a) => run(a.as_ref(), nonce, aad, buf, tag),
            Self::Aes256(a) => run(a.as_ref(), nonce, aad, buf, tag),
            Self::ChaCha(a) => run(a.as_ref(), nonce, aad, buf, tag),
        }
    }
}

/// One-shot AEAD seal with a caller-chosen nonce, for known-answer tests.
/// Returns ciphertext followed by the tag.
pub fn seal(
    algorithm: AeadAlgorithm,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let nonce: &[u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| Error::InvalidArgument("nonce length"))?;
    let cipher = RecordCipher::new(algorithm, key)?;
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    let tag = cipher.seal_in_place(nonce, aad, &mut out)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// One-shot AEAD open of ciphertext followed by its tag.
pub fn open(
    algorithm: AeadAlgorithm,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let nonce: &[u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| Error::InvalidArgument("nonce length"))?;
    let cipher = RecordCipher::new(algorithm, key)?;
    let split = sealed
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(Error::Alert(Alert::BadRecordMac))?;
    let (body, tag) = sealed.split_at(split);
    let mut out = body.to_vec();
    cipher.open_in_place(nonce, aad, &mut out, tag)?;
    Ok(out)
}
