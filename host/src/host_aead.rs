//! The AEAD behind host-resident keys: ring's, the one rustls already
//! links, wiped when the key is dropped.
//!
//! Host-resident keys are the fast path for AES-GCM (Wasm has no AES
//! instructions), so the host's AEAD is what bounds it, and ring's
//! assembly is several times faster than RustCrypto's `aes-gcm` (the
//! guest's crate) natively (PERF.md has the figures).
//!
//! It is also the blob AEAD of every keyferry process ([`install_blob_aead`]):
//! the handoff seals and opens two blobs per connection, and ring does one
//! in a fraction of the time RustCrypto's ChaCha20 takes natively.
//!
//! ring does not wipe its keys when they drop (its key schedules are plain
//! data with no `Drop`), and a host-resident key lives as long as its
//! connection. So the key lives in a heap slot of its own that is never
//! handed out, and [`HostAead`]'s `Drop` overwrites the whole slot with
//! zeros before freeing it. Tags are compared by ring, in constant time.

use std::mem::MaybeUninit;

use keyferry_record::AeadAlgorithm;
use keyferry_record::blob_aead::{self, BlobAead, Failed};
use keyferry_record::cipher::{NONCE_LEN, TAG_LEN};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag};

/// A keyed AEAD, wiped on drop. No `Clone`, no `Debug`.
pub(crate) struct HostAead {
    /// Always initialized until `drop`, which wipes it: `MaybeUninit` so
    /// that the wiped bytes are never a `LessSafeKey` anybody reads.
    key: Box<MaybeUninit<LessSafeKey>>,
}

/// A key of the wrong length for its algorithm.
#[derive(Debug, thiserror::Error)]
#[error("a key of the wrong length for its AEAD")]
pub(crate) struct BadKey;

/// An AEAD operation failed: a tag that does not verify, or a buffer too
/// long for one record.
#[derive(Debug, thiserror::Error)]
#[error("the AEAD operation failed")]
pub(crate) struct AeadFailed;

impl HostAead {
    /// Keys `algorithm` with `key`, which the caller wipes.
    pub(crate) fn new(algorithm: AeadAlgorithm, key: &[u8]) -> Result<Self, BadKey> {
        let algorithm = match algorithm {
            AeadAlgorithm::Aes128Gcm => &AES_128_GCM,
            AeadAlgorithm::Aes256Gcm => &AES_256_GCM,
            AeadAlgorithm::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        };
        let unbound = ring::aead::UnboundKey::new(algorithm, key).map_err(|_| BadKey)?;
        Ok(Self {
            key: Box::new(MaybeUninit::new(LessSafeKey::new(unbound))),
        })
    }

    #[allow(unsafe_code, reason = "reading the slot's key; see the SAFETY note")]
    fn key(&self) -> &LessSafeKey {
        // SAFETY: `new` initializes the slot and only `drop` (which takes
        // `&mut self`, so no borrow from here is alive) de-initializes it.
        unsafe { self.key.assume_init_ref() }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailed> {
        let tag = self
            .key()
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| AeadFailed)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `buf` in place and checks `tag`; on failure ring zeroes
    /// `buf`, so no unauthenticated plaintext is left in it.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), AeadFailed> {
        let tag = Tag::try_from(tag).map_err(|_| AeadFailed)?;
        self.key()
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadFailed)
    }
}

impl Drop for HostAead {
    #[allow(unsafe_code, reason = "wiping the key's slot; see the SAFETY note")]
    fn drop(&mut self) {
        let slot: *mut MaybeUninit<LessSafeKey> = &mut *self.key;
        let bytes = slot.cast::<MaybeUninit<u8>>();
        for i in 0..size_of::<LessSafeKey>() {
            // SAFETY: `bytes + i` stays inside the boxed slot, which this
            // `&mut self` owns; any byte is a valid `MaybeUninit<u8>`. The
            // key is not dropped in place: `LessSafeKey` has no `Drop` (ring's
            // key schedules are plain data), and after this the slot holds
            // no key, so the `Box` frees it as the uninitialized memory its
            // type says it may be. Volatile, so the wipe is not elided.
            unsafe { std::ptr::write_volatile(bytes.add(i), MaybeUninit::new(0)) };
        }
    }
}

/// Blob formats 2 and 3 over ring: the same ChaCha20-Poly1305 as the
/// guest crate's own, keyed per blob and wiped with the [`HostAead`].
struct RingBlobAead;

/// Blob keys are used once, under the all-zero nonce.
const BLOB_NONCE: [u8; NONCE_LEN] = [0; NONCE_LEN];

impl BlobAead for RingBlobAead {
    fn seal(&self, key: &[u8; 32], aad: &[u8], text: &mut [u8]) -> Result<[u8; 16], Failed> {
        HostAead::new(AeadAlgorithm::ChaCha20Poly1305, key)
            .map_err(|_| Failed)?
            .seal_in_place(&BLOB_NONCE, aad, text)
            .map_err(|_| Failed)
    }

    fn open(
        &self,
        key: &[u8; 32],
        aad: &[u8],
        text: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), Failed> {
        HostAead::new(AeadAlgorithm::ChaCha20Poly1305, key)
            .map_err(|_| Failed)?
            .open_in_place(&BLOB_NONCE, aad, text, tag)
            .map_err(|_| Failed)
    }
}

/// Makes ring's ChaCha20-Poly1305 this process's blob AEAD, before the
/// first blob is sealed or opened (later calls change nothing).
pub fn install_blob_aead() {
    static RING: RingBlobAead = RingBlobAead;
    let _ = blob_aead::install(&RING);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ring's blob AEAD and the guest crate's own give the same blobs and
    /// open each other's; a flipped bit opens in neither.
    #[test]
    fn the_blob_aeads_agree() {
        let ring = RingBlobAead;
        let ours = blob_aead::CrateAead;
        for len in [
            0usize, 1, 15, 16, 17, 63, 64, 65, 150, 191, 192, 193, 1000, 70_000,
        ] {
            let key: [u8; 32] = std::array::from_fn(|i| (i * 13 + len) as u8);
            let aad: Vec<u8> = (0..(len % 40)).map(|i| i as u8).collect();
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 + 1) as u8).collect();
            let mut a = plain.clone();
            let tag_a = ring.seal(&key, &aad, &mut a).unwrap();
            let mut b = plain.clone();
            let tag_b = ours.seal(&key, &aad, &mut b).unwrap();
            assert_eq!((&a, tag_a), (&b, tag_b), "{len}");
            let mut opened = a.clone();
            ours.open(&key, &aad, &mut opened, &tag_a).unwrap();
            assert_eq!(opened, plain);
            let mut opened = b.clone();
            ring.open(&key, &aad, &mut opened, &tag_b).unwrap();
            assert_eq!(opened, plain);
            let mut bad = tag_a;
            bad[len % 16] ^= 1;
            assert!(ring.open(&key, &aad, &mut a.clone(), &bad).is_err());
            assert!(ours.open(&key, &aad, &mut a.clone(), &bad).is_err());
        }
    }

    /// ring agrees with the guest's own RustCrypto AEADs both ways, for
    /// every algorithm, and a flipped bit never opens.
    #[test]
    fn ring_and_the_guest_ciphers_agree() {
        for (algorithm, key_len) in [
            (AeadAlgorithm::Aes128Gcm, 16),
            (AeadAlgorithm::Aes256Gcm, 32),
            (AeadAlgorithm::ChaCha20Poly1305, 32),
        ] {
            let key: Vec<u8> = (0..key_len).map(|i| i as u8 * 7 + 1).collect();
            let host = HostAead::new(algorithm, &key).unwrap();
            let guest = keyferry_record::cipher::RecordCipher::new(algorithm, &key).unwrap();
            let nonce = [9u8; NONCE_LEN];
            for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 16 * 1024 + 1] {
                let plain: Vec<u8> = (0..len).map(|i| (i * 31 + 1) as u8).collect();
                let aad = [23u8, 3, 3, (len >> 8) as u8, len as u8];
                let mut ours = plain.clone();
                let tag = host.seal_in_place(&nonce, &aad, &mut ours).unwrap();
                let mut theirs = plain.clone();
                let their_tag = guest.seal_in_place(&nonce, &aad, &mut theirs).unwrap();
                assert_eq!((&ours, tag), (&theirs, their_tag), "{algorithm:?} {len}");
                let mut opened = ours.clone();
                host.open_in_place(&nonce, &aad, &mut opened, &tag).unwrap();
                assert_eq!(opened, plain);
                let mut bad = tag;
                bad[len % TAG_LEN] ^= 1;
                let mut tampered = ours.clone();
                assert!(
                    host.open_in_place(&nonce, &aad, &mut tampered, &bad)
                        .is_err()
                );
                assert!(
                    len == 0 || tampered != plain,
                    "no plaintext after a failed open"
                );
            }
        }
        assert!(HostAead::new(AeadAlgorithm::Aes128Gcm, &[0; 32]).is_err());
    }
}
