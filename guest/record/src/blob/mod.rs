//! keyferry's OPAQUEKEYBLOB: the one implementation of the key blob format,
//! used by the host to seal and by the guest to open and re-seal.
//!
//! Three formats address a recipient three ways (DESIGN section 3). All
//! start with the same 22-byte header, and every reader stays: a reader
//! accepts every version in [`READABLE_VERSIONS`].
//!
//! Layout of format version 1, HPKE to an instance's X25519 key, for a
//! recipient the sealer did not create (all integers big-endian):
//!
//! ```text
//! offset  size  field
//! 0       4     magic "KFKB"
//! 4       1     format version (1)
//! 5       1     kind (1 traffic key, 2 MAC key)
//! 6       16    recipient key id: SHA-256(recipient X25519 public key)[..16]
//! 22      32    HPKE encapsulated key
//! 54      ..    HPKE ciphertext of the key state, with a 16-byte tag
//! ```
//!
//! Sealing is HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256 and ChaCha20-Poly1305. Bytes 0..22 are the associated data,
//! so the version, kind and recipient cannot be changed without the open
//! failing; they are also checked before decryption so the errors are
//! precise.
//!
//! Format version 2 wraps with a symmetric secret the host handed the
//! instance when it made it, for handoffs inside one process: the host can
//! read the instance's memory anyway, so a secret it chose binds a blob to
//! the instance as well as a key pair would, and costs a hash and an AEAD
//! instead of two X25519 operations in Wasm.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "KFKB"
//! 4       1     format version (2)
//! 5       1     kind
//! 6       16    recipient secret id: SHA-256(label || secret)[..16]
//! 22      16    random salt
//! 38      ..    ChaCha20-Poly1305 ciphertext of the key state, 16-byte tag
//! ```
//!
//! The per-blob key is HKDF-SHA256(salt, secret, "keyferry key blob v2");
//! being used once, it takes the all-zero nonce. Bytes 0..38 are the
//! associated data.
//!
//! Format version 3 crosses a process: the handshake process to a
//! data-plane worker it did not create. The KEM is amortized as Oblivious
//! HTTP amortizes it: one HPKE setup (DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305) to the worker's published key for the
//! worker's lifetime ([`SessionSender`], [`SessionReceiver`]), and each
//! blob's key is the session's HPKE `Export` for the blob's counter:
//!
//! ```text
//! 0       22    header, as above (version 3, the worker key's id)
//! 22      8     counter: strictly increasing within the session
//! 30      ..    ChaCha20-Poly1305 ciphertext of the key state, 16-byte tag
//! ```
//!
//! The key is Export("keyferry key blob v3" || counter, 32), the nonce all
//! zero, bytes 0..30 the associated data. A counter at or below one
//! already opened is refused, so a blob opens once. The worker opens the
//! blob and wraps its contents for the instance it chose (format 2).
//!
//! The contents are the same in every format (`contents.rs`). Each format
//! has its module: [`sealed`] (1), [`wrapped`] (2) and [`session`] (3).

mod contents;
pub mod sealed;
pub mod session;
pub mod wrapped;

use alloc::vec::Vec;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::blob_aead;
use crate::error::{BlobError, Error, Result};
use crate::mac::MacKey;
use crate::record::TrafficKeyMaterial;
use contents::{mac_key_from_contents, traffic_key_from_contents};

pub use sealed::{ENC_LEN, ExchangeKeyPair, PUBLIC_KEY_LEN, seal_mac_key, seal_traffic_key};
pub use session::{COUNTER_LEN, SessionReceiver, SessionSender};
pub use wrapped::{SALT_LEN, WRAPPING_SECRET_LEN, WrappingSecret, wrap_mac_key, wrap_traffic_key};

/// The first bytes of every blob.
pub const MAGIC: [u8; 4] = *b"KFKB";
/// The format sealed with HPKE to an instance's exchange key.
pub const FORMAT_VERSION: u8 = 1;
/// The format wrapped with an instance's wrapping secret.
pub const FORMAT_WRAPPED: u8 = 2;
/// The format sealed to a worker process in an HPKE session.
pub const FORMAT_SESSION: u8 = 3;
/// Every version this code reads.
pub const READABLE_VERSIONS: &[u8] = &[1, 2, 3];
/// Magic, version, kind and key id: the associated data.
pub const HEADER_LEN: usize = 22;
/// The AEAD tag, in every format.
pub const SEAL_TAG_LEN: usize = 16;
/// The most bytes a blob may carry as buffered plaintext or ciphertext.
pub const MAX_BUFFERED: usize = 1 << 20;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// One direction of a connection's record protection.
    TrafficKey,
    /// An HMAC key.
    MacKey,
}

impl BlobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::TrafficKey => 1,
            Self::MacKey => 2,
        }
    }
}

/// Who opens a blob: an exchange key pair (format 1) or a wrapping secret
/// (format 2).
#[derive(Clone, Copy)]
pub enum Recipient<'a> {
    /// HPKE to this key pair.
    Exchange(&'a ExchangeKeyPair),
    /// Wrapped with this secret.
    Wrapping(&'a WrappingSecret),
}

impl Recipient<'_> {
    fn id(&self) -> [u8; 16] {
        match self {
            Self::Exchange(k) => k.key_id(),
            Self::Wrapping(w) => w.id(),
        }
    }

    fn version(&self) -> u8 {
        match self {
            Self::Exchange(_) => FORMAT_VERSION,
            Self::Wrapping(_) => FORMAT_WRAPPED,
        }
    }
}

/// SHA-256 of the public key, first 16 bytes.
pub fn key_id(public_key: &[u8; PUBLIC_KEY_LEN]) -> [u8; 16] {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// The clear header of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    /// Format version.
    pub version: u8,
    /// Kind code as written (checked against known kinds by `open_*`).
    pub kind: u8,
    /// Recipient key id.
    pub key_id: [u8; 16],
}

/// Reads a blob's clear header without opening it.
pub fn peek_header(blob: &[u8]) -> Result<BlobHeader> {
    if blob.len() < HEADER_LEN || blob[..4] != MAGIC {
        return Err(BlobError::Malformed.into());
    }
    let version = blob[4];
    if version == 0 {
        return Err(BlobError::Malformed.into());
    }
    if !READABLE_VERSIONS.contains(&version) {
        return Err(BlobError::UnsupportedVersion(version).into());
    }
    let mut key_id = [0u8; 16];
    key_id.copy_from_slice(&blob[6..22]);
    Ok(BlobHeader {
        version,
        kind: blob[5],
        key_id,
    })
}

/// Opens a traffic-key blob addressed to `recipient`. Returns the blob id
/// (for the single-use check) and the material.
pub fn open_traffic_key(
    recipient: Recipient<'_>,
    blob: &[u8],
) -> Result<([u8; 16], TrafficKeyMaterial)> {
    let inner = open(recipient, blob, BlobKind::TrafficKey)?;
    traffic_key_from_contents(&inner)
}

/// Opens a MAC-key blob addressed to `recipient`.
pub fn open_mac_key(recipient: Recipient<'_>, blob: &[u8]) -> Result<([u8; 16], MacKey)> {
    let inner = open(recipient, blob, BlobKind::MacKey)?;
    mac_key_from_contents(&inner)
}

/// Formats 2 and 3: header, salt (or counter), then `inner` sealed with
/// the blob's own key under the all-zero nonce.
pub(super) fn wrap_with(
    version: u8,
    kind: BlobKind,
    recipient: &[u8; 16],
    salt: &[u8],
    key: &[u8; 32],
    inner: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>> {
    let start = HEADER_LEN + salt.len();
    let mut blob = Vec::with_capacity(start + inner.len() + SEAL_TAG_LEN);
    blob.extend_from_slice(&MAGIC);
    blob.push(version);
    blob.push(kind.code());
    blob.extend_from_slice(recipient);
    blob.extend_from_slice(salt);
    blob.extend_from_slice(&inner);
    drop(inner);
    let (aad, body) = blob.split_at_mut(start);
    let sealed = blob_aead::get().seal(key, aad, body);
    let Ok(tag) = sealed else {
        zeroize::Zeroize::zeroize(&mut blob);
        return Err(Error::InvalidArgument("blob contents too long"));
    };
    blob.extend_from_slice(&tag);
    Ok(blob)
}

/// What every open checks before decrypting, each with its own error: a
/// readable header, a length the blob's format can hold, the kind, and the
/// recipient (its key id and the format it takes).
pub(super) fn check_header(
    blob: &[u8],
    kind: BlobKind,
    version: u8,
    key_id: &[u8; 16],
) -> Result<()> {
    let header = peek_header(blob)?;
    let overhead = match header.version {
        FORMAT_WRAPPED => SALT_LEN + SEAL_TAG_LEN,
        FORMAT_SESSION => COUNTER_LEN + SEAL_TAG_LEN,
        _ => ENC_LEN + SEAL_TAG_LEN,
    };
    if blob.len() < HEADER_LEN + overhead {
        return Err(BlobError::Malformed.into());
    }
    match header.kind {
        1 | 2 if header.kind != kind.code() => return Err(BlobError::WrongKind.into()),
        1 | 2 => {}
        _ => return Err(BlobError::Malformed.into()),
    }
    if header.key_id != *key_id || header.version != version {
        return Err(BlobError::WrongRecipient.into());
    }
    Ok(())
}

/// Opens a blob of either kind addressed to `recipient`: its clear
/// contents.
fn open(recipient: Recipient<'_>, blob: &[u8], kind: BlobKind) -> Result<Zeroizing<Vec<u8>>> {
    check_header(blob, kind, recipient.version(), &recipient.id())?;
    match recipient {
        Recipient::Exchange(keys) => sealed::open(keys, blob),
        Recipient::Wrapping(secret) => wrapped::unwrap(secret, blob),
    }
}

/// Opens a format 2 or 3 blob whose header and length were checked.
pub(super) fn unwrap_with(
    key: &[u8; 32],
    salt_len: usize,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let (aad, sealed) = blob.split_at(HEADER_LEN + salt_len);
    let (text, tag) = sealed.split_at(sealed.len() - SEAL_TAG_LEN);
    let mut inner = Zeroizing::new(text.to_vec());
    let tag: &[u8; SEAL_TAG_LEN] = tag.try_into().map_err(|_| BlobError::Malformed)?;
    blob_aead::get()
        .open(key, aad, &mut inner, tag)
        .map_err(|_| BlobError::AuthenticationFailed)?;
    Ok(inner)
}

/// Public randomness, read ahead (`random.rs`): blob salts and blob
/// ids, which leave in the clear. Keys never come from this pool.
pub(super) fn public_random(out: &mut [u8]) -> Result<()> {
    /// The host wraps or seals two blobs per connection (64 bytes), so one
    /// read serves sixteen connections. An instance makes few blobs, and
    /// in wasm each 8 bytes is a host call.
    #[cfg(not(target_arch = "wasm32"))]
    const POOL_LEN: usize = 1024;
    #[cfg(target_arch = "wasm32")]
    const POOL_LEN: usize = 256;
    crate::instance_local! {
        static POOL: core::cell::RefCell<crate::random::Pool<POOL_LEN>> =
            const { core::cell::RefCell::new(crate::random::Pool::new()) };
    }
    POOL.with_borrow_mut(|pool| pool.fill(out))
}

/// A wrapped blob's salt and id.
pub(super) fn salt_and_id() -> Result<([u8; SALT_LEN], [u8; 16])> {
    let mut salt = [0u8; SALT_LEN];
    let mut id = [0u8; 16];
    public_random(&mut salt)?;
    public_random(&mut id)?;
    Ok((salt, id))
}

/// A sealed blob's id (formats 1 and 3).
pub(super) fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    public_random(&mut id)?;
    Ok(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::suite::{AeadAlgorithm, Direction};

    /// Traffic-key material with a buffered record, for the formats' tests.
    pub(crate) fn material() -> TrafficKeyMaterial {
        let mut m = TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::ChaCha20Poly1305,
            Direction::Seal,
            &[9; 32],
            7,
            3,
        )
        .unwrap();
        m.buffered_ciphertext = vec![1, 2, 3];
        m
    }

    #[test]
    fn salts_and_ids_never_repeat_across_refills() {
        let mut seen = std::collections::HashSet::new();
        // Several refills of the buffer, with draws of both sizes.
        for _ in 0..40 {
            let (salt, id) = salt_and_id().unwrap();
            let sealed_id = random_id().unwrap();
            assert_ne!(salt, [0; SALT_LEN]);
            assert_ne!(id, [0; 16]);
            assert_ne!(sealed_id, [0; 16]);
            assert!(seen.insert(salt.to_vec()), "a salt repeated");
            assert!(seen.insert(id.to_vec()), "an id repeated");
            assert!(
                seen.insert(sealed_id.to_vec()),
                "a sealed blob's id repeated"
            );
        }
    }
}
