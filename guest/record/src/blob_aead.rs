//! The AEAD that blob formats 2 and 3 seal their contents with:
//! ChaCha20-Poly1305 under the blob's own key (derived per blob, so the
//! nonce is all zeros), and where a process may bring its own.
//!
//! Every connection's handoff seals two blobs and opens them again, so
//! this AEAD is on the per-connection path three times over in `serve`'s
//! workers (sealed in the handshake process, opened and wrapped again in
//! the worker, opened in the guest). The crate's own choice ([`CrateAead`])
//! is RustCrypto's `chacha20poly1305` natively and the guest's `simd128`
//! construction in wasm, where RustCrypto's runs scalar. Natively,
//! RustCrypto's AVX2 ChaCha20 is entered through `cipher`'s generic
//! closures, which are compiled without AVX2, so its intrinsics become
//! calls: a ~150-byte blob took about 1.5 µs. A host that links a faster
//! implementation of the same algorithm installs it with [`install`], as
//! rustls installs a process-wide `CryptoProvider`; `keyferry` installs
//! ring's, which rustls already links. The output is the same either way
//! (ChaCha20-Poly1305 is deterministic), which the host's tests check.

use chacha20poly1305::aead::{AeadInOut, KeyInit};

/// ChaCha20-Poly1305 (RFC 8439) with a 32-byte key and the all-zero nonce.
/// Implementations must compare tags in constant time, wipe what they
/// derive from the key, and leave no unauthenticated plaintext in `text`
/// when an open fails.
pub trait BlobAead: Send + Sync {
    /// Encrypts `text` in place, binding `aad`, and returns the tag.
    fn seal(&self, key: &[u8; 32], aad: &[u8], text: &mut [u8]) -> Result<[u8; 16], Failed>;

    /// Decrypts `text` in place if `tag` authenticates it and `aad`.
    fn open(
        &self,
        key: &[u8; 32],
        aad: &[u8],
        text: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), Failed>;
}

/// A seal or open failed: a tag that does not verify, or a text too long
/// for the algorithm.
#[derive(Debug, thiserror::Error)]
#[error("the blob AEAD failed")]
pub struct Failed;

/// The crate's own ChaCha20-Poly1305: the `simd128` construction in wasm,
/// RustCrypto's elsewhere.
pub struct CrateAead;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
type Cipher = keyferry_simd::chacha20poly1305_simd128::ChaCha20Poly1305;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
type Cipher = chacha20poly1305::ChaCha20Poly1305;

impl BlobAead for CrateAead {
    fn seal(&self, key: &[u8; 32], aad: &[u8], text: &mut [u8]) -> Result<[u8; 16], Failed> {
        let tag = Cipher::new(key.into())
            .encrypt_inout_detached(&Default::default(), aad, text.into())
            .map_err(|_| Failed)?;
        Ok(tag.into())
    }

    fn open(
        &self,
        key: &[u8; 32],
        aad: &[u8],
        text: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), Failed> {
        Cipher::new(key.into())
            .decrypt_inout_detached(&Default::default(), aad, text.into(), tag.into())
            .map_err(|_| Failed)
    }
}

#[cfg(not(target_arch = "wasm32"))]
static INSTALLED: std::sync::OnceLock<&'static dyn BlobAead> = std::sync::OnceLock::new();

/// Makes `aead` the blob AEAD of this process. The first installation
/// stays: returns false if another was installed before (or blobs were
/// already sealed or opened with the crate's own), so every blob of a
/// process goes through one implementation. Native only: a component
/// always uses the crate's own.
#[cfg(not(target_arch = "wasm32"))]
pub fn install(aead: &'static dyn BlobAead) -> bool {
    INSTALLED.set(aead).is_ok()
}

/// The process's blob AEAD.
pub(crate) fn get() -> &'static dyn BlobAead {
    #[cfg(not(target_arch = "wasm32"))]
    return *INSTALLED.get_or_init(|| &CrateAead);
    #[cfg(target_arch = "wasm32")]
    &CrateAead
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through the trait, as a host's implementation is used: a round
    /// trip, and neither a flipped tag bit nor other AAD opens.
    #[test]
    fn crate_aead_round_trips_and_refuses_a_flipped_bit() {
        let key = [7u8; 32];
        let aad = b"header";
        let plain = b"the contents of a blob".to_vec();
        let mut text = plain.clone();
        let tag = CrateAead.seal(&key, aad, &mut text).unwrap();
        assert_ne!(text, plain);
        let mut opened = text.clone();
        CrateAead.open(&key, aad, &mut opened, &tag).unwrap();
        assert_eq!(opened, plain);
        let mut bad = tag;
        bad[0] ^= 1;
        let mut tampered = text.clone();
        assert!(CrateAead.open(&key, aad, &mut tampered, &bad).is_err());
        assert!(CrateAead.open(&key, b"other", &mut text, &tag).is_err());
    }
}
