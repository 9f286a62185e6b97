//! Format 2: wrapped with a symmetric secret the host handed the instance
//! when it made it, for handoffs inside one process. The per-blob key is
//! HKDF-SHA256(salt, secret, "keyferry key blob v2"); being used once, it
//! takes the all-zero nonce.

use alloc::vec::Vec;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::contents::{mac_key_contents, traffic_key_contents};
use super::{BlobKind, FORMAT_WRAPPED, HEADER_LEN, salt_and_id, unwrap_with, wrap_with};
use crate::error::{Error, Result};
use crate::mac::MacKey;
use crate::record::TrafficKeyMaterial;

/// A wrapping secret's length.
pub const WRAPPING_SECRET_LEN: usize = 32;
/// The per-blob salt of format 2.
pub const SALT_LEN: usize = 16;

const WRAPPED_INFO: &[u8] = b"keyferry key blob v2";
/// Short enough that the label and the secret fit one SHA-256 block (55
/// bytes with the padding): an instance computes the id when it takes its
/// secret, in wasm, where a compression is about 0.2 us.
const WRAPPING_ID_LABEL: &[u8] = b"keyferry wrap id";
const _: () = assert!(WRAPPING_ID_LABEL.len() + WRAPPING_SECRET_LEN <= 55);

/// An instance's wrapping secret (format 2). The host makes it and hands
/// it to the instance it just created; neither copy is ever printed or
/// cloned, and both are wiped when they drop.
pub struct WrappingSecret {
    secret: Zeroizing<[u8; WRAPPING_SECRET_LEN]>,
    /// HKDF-Expand keyed with the secret, its HMAC pads already absorbed:
    /// a blob's key then costs two SHA-256 compressions in the guest
    /// instead of eight (HKDF-Extract with the salt, then Expand). The
    /// secret is uniformly random, so it is a PRK as it is (RFC 5869
    /// section 3.3) and the salt goes into the info. Wiped when it drops
    /// (the SHA-256 states zeroize, sha2's `zeroize` feature).
    expand: hkdf::Hkdf<Sha256>,
    id: [u8; 16],
}

impl WrappingSecret {
    /// A fresh secret from the system's randomness, read ahead for
    /// several instances (`random.rs`).
    pub fn generate() -> Result<Self> {
        /// The host makes a secret per connection: sixteen per read of the
        /// system's randomness. A pool of its own, so public draws (salts,
        /// ids) never come from it. In wasm, where the host makes the
        /// secrets, nothing is read ahead.
        #[cfg(not(target_arch = "wasm32"))]
        const POOL_LEN: usize = 16 * WRAPPING_SECRET_LEN;
        #[cfg(target_arch = "wasm32")]
        const POOL_LEN: usize = WRAPPING_SECRET_LEN;
        crate::instance_local! {
            static SECRETS: core::cell::RefCell<crate::random::Pool<POOL_LEN>> =
                const { core::cell::RefCell::new(crate::random::Pool::new()) };
        }
        let mut secret = Zeroizing::new([0u8; WRAPPING_SECRET_LEN]);
        SECRETS.with_borrow_mut(|pool| pool.fill(&mut secret[..]))?;
        Ok(Self::from_array(secret))
    }

    /// The secret the host handed over; exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; WRAPPING_SECRET_LEN]);
        if bytes.len() != WRAPPING_SECRET_LEN {
            return Err(Error::InvalidArgument("wrapping secret length"));
        }
        secret.copy_from_slice(bytes);
        Ok(Self::from_array(secret))
    }

    fn from_array(secret: Zeroizing<[u8; WRAPPING_SECRET_LEN]>) -> Self {
        let digest = Sha256::new()
            .chain_update(WRAPPING_ID_LABEL)
            .chain_update(&secret[..])
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let expand = hkdf::Hkdf::<Sha256>::from_prk(&secret[..])
            .expect("a 32-byte secret is a valid HKDF-SHA256 PRK");
        Self { secret, expand, id }
    }

    /// The id blobs wrapped with this secret carry: a hash, safe to show.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The secret's bytes, to hand to the instance.
    pub fn expose(&self) -> &[u8] {
        &self.secret[..]
    }

    /// The AEAD key for one blob's salt: HKDF-Expand(secret, label || salt).
    fn blob_key(&self, salt: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        self.expand
            .expand_multi_info(&[WRAPPED_INFO, salt], &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 length");
        key
    }
}

/// Wraps traffic-key material with an instance's wrapping secret. Its TLS
/// 1.3 key and IV are checked against its secret here, natively in the
/// host, so the instance need not check them again in wasm.
pub fn wrap_traffic_key(secret: &WrappingSecret, m: &TrafficKeyMaterial) -> Result<Vec<u8>> {
    m.check_derivation()?;
    let (salt, blob_id) = salt_and_id()?;
    wrap(
        secret,
        BlobKind::TrafficKey,
        &salt,
        traffic_key_contents(m, &blob_id)?,
    )
}

/// Wraps a MAC key with an instance's wrapping secret.
pub fn wrap_mac_key(secret: &WrappingSecret, key: &MacKey) -> Result<Vec<u8>> {
    let (salt, blob_id) = salt_and_id()?;
    wrap(
        secret,
        BlobKind::MacKey,
        &salt,
        mac_key_contents(key, &blob_id)?,
    )
}

/// Wraps `inner` (consumed, so its buffer is wiped here) with `secret`
/// under a fresh `salt`.
fn wrap(
    secret: &WrappingSecret,
    kind: BlobKind,
    salt: &[u8; SALT_LEN],
    inner: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>> {
    let key = secret.blob_key(salt);
    wrap_with(FORMAT_WRAPPED, kind, &secret.id, salt, &key, inner)
}

/// Opens a format 2 blob whose header was checked.
pub(super) fn unwrap(secret: &WrappingSecret, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let key = secret.blob_key(&blob[HEADER_LEN..HEADER_LEN + SALT_LEN]);
    unwrap_with(&key, SALT_LEN, blob)
}

#[cfg(test)]
mod tests {
    use super::super::tests::material;
    use super::super::{ExchangeKeyPair, Recipient, open_mac_key, open_traffic_key, peek_header};
    use super::*;
    use crate::error::BlobError;
    use crate::suite::MacAlgorithm;

    #[test]
    fn a_wrapped_blob_opens_with_its_secret_exactly() {
        let secret = WrappingSecret::generate().unwrap();
        let blob = wrap_traffic_key(&secret, &material()).unwrap();
        assert_eq!(&blob[..5], b"KFKB\x02");
        assert_eq!(peek_header(&blob).unwrap().key_id, secret.id());
        let (_, m) = open_traffic_key(Recipient::Wrapping(&secret), &blob).unwrap();
        let want = material();
        assert_eq!((m.sequence, m.connection_id), (7, 3));
        assert_eq!((&m.key[..], &m.iv[..]), (&want.key[..], &want.iv[..]));
        assert_eq!(m.buffered_ciphertext, vec![1, 2, 3]);
        // The same secret handed over as bytes is the same recipient.
        let copy = WrappingSecret::from_bytes(secret.expose()).unwrap();
        assert!(open_traffic_key(Recipient::Wrapping(&copy), &blob).is_ok());
    }

    #[test]
    fn a_wrapped_blob_is_bound_to_its_secret_and_every_byte() {
        let secret = WrappingSecret::generate().unwrap();
        let other = WrappingSecret::generate().unwrap();
        let keys = ExchangeKeyPair::generate();
        let blob = wrap_traffic_key(&secret, &material()).unwrap();
        let err = |r: Result<([u8; 16], TrafficKeyMaterial)>| {
            r.err().map(|e| match e {
                Error::Blob(b) => b,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(
            err(open_traffic_key(Recipient::Wrapping(&other), &blob)),
            Some(BlobError::WrongRecipient)
        );
        // A format 2 blob is nobody's HPKE blob, even with a matching id.
        assert_eq!(
            err(open_traffic_key(Recipient::Exchange(&keys), &blob)),
            Some(BlobError::WrongRecipient)
        );
        // Flip each byte after the header's checks: salt, ciphertext, tag.
        for at in HEADER_LEN..blob.len() {
            let mut bad = blob.clone();
            bad[at] ^= 0x20;
            assert_eq!(
                err(open_traffic_key(Recipient::Wrapping(&secret), &bad)),
                Some(BlobError::AuthenticationFailed),
                "byte {at}"
            );
        }
        // Cut short anywhere: malformed or unauthenticated, never opened.
        for len in 0..blob.len() {
            assert!(open_traffic_key(Recipient::Wrapping(&secret), &blob[..len]).is_err());
        }
        // The kind is bound too.
        assert_eq!(
            open_mac_key(Recipient::Wrapping(&secret), &blob).err(),
            Some(BlobError::WrongKind.into())
        );
    }

    #[test]
    fn a_wrapping_secret_has_exactly_32_bytes() {
        assert!(WrappingSecret::from_bytes(&[1; 31]).is_err());
        assert!(WrappingSecret::from_bytes(&[1; 33]).is_err());
        let a = WrappingSecret::from_bytes(&[1; 32]).unwrap();
        let b = WrappingSecret::from_bytes(&[2; 32]).unwrap();
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn wrapped_mac_keys_round_trip() {
        let secret = WrappingSecret::generate().unwrap();
        let mac = MacKey::new(MacAlgorithm::HmacSha256, &[5; 32], false, 8).unwrap();
        let blob = wrap_mac_key(&secret, &mac).unwrap();
        let (_, back) = open_mac_key(Recipient::Wrapping(&secret), &blob).unwrap();
        assert_eq!((back.connection_id, back.exportable), (8, false));
    }
}
