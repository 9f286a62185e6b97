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
//! The contents are the same in every format.

use alloc::vec::Vec;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::blob_aead;
use crate::error::{BlobError, Error, Result};
use crate::mac::MacKey;
use crate::record::TrafficKeyMaterial;
use crate::suite::{AeadAlgorithm, Direction, MacAlgorithm, ProtocolVersion};

type Kem = X25519HkdfSha256;

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
/// The per-blob counter of format 3.
pub const COUNTER_LEN: usize = 8;
/// A wrapping secret's length.
pub const WRAPPING_SECRET_LEN: usize = 32;
/// The per-blob salt of format 2.
pub const SALT_LEN: usize = 16;
/// Magic, version, kind and key id: the associated data.
pub const HEADER_LEN: usize = 22;
/// X25519 encapsulated key.
pub const ENC_LEN: usize = 32;
/// The HPKE AEAD tag.
pub const SEAL_TAG_LEN: usize = 16;
/// X25519 public key length.
pub const PUBLIC_KEY_LEN: usize = 32;
/// The most bytes a blob may carry as buffered plaintext or ciphertext.
pub const MAX_BUFFERED: usize = 1 << 20;

const INFO: &[u8] = b"keyferry key blob";
const WRAPPED_INFO: &[u8] = b"keyferry key blob v2";
const SESSION_INFO: &[u8] = b"keyferry blob session";
const SESSION_EXPORT_LABEL: &[u8] = b"keyferry key blob v3";
/// Short enough that the label and the secret fit one SHA-256 block (55
/// bytes with the padding): an instance computes the id when it takes its
/// secret, in wasm, where a compression is about 0.2 us.
const WRAPPING_ID_LABEL: &[u8] = b"keyferry wrap id";
const _: () = assert!(WRAPPING_ID_LABEL.len() + WRAPPING_SECRET_LEN <= 55);
const FLAG_EXPORTABLE: u8 = 1;
const FLAG_HOST_RESIDENT: u8 = 2;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// One direction of a connection's record protection.
    TrafficKey,
    /// An HMAC key.
    MacKey,
}

impl BlobKind {
    fn code(self) -> u8 {
        match self {
            Self::TrafficKey => 1,
            Self::MacKey => 2,
        }
    }
}

/// An instance's key-exchange key pair. Made once per instance; the private
/// half never leaves it (hpke's X25519 private key zeroizes on drop).
pub struct ExchangeKeyPair {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: [u8; PUBLIC_KEY_LEN],
    id: [u8; 16],
}

impl ExchangeKeyPair {
    /// A fresh key pair from the system's randomness (WASI `random` in the
    /// guest).
    pub fn generate() -> Self {
        let (private, public) = Kem::gen_keypair();
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(&public.to_bytes());
        Self {
            private,
            public: bytes,
            id: key_id(&bytes),
        }
    }

    /// The public half, to seal blobs to.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public
    }

    /// The id bound into blobs sealed to this key.
    pub fn key_id(&self) -> [u8; 16] {
        self.id
    }
}

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
    /// several instances ([`crate::random`]).
    pub fn generate() -> Result<Self> {
        /// The host makes a secret per connection: sixteen per read of the
        /// system's randomness. A pool of its own, so public draws (salts,
        /// ids) never come from it. In wasm, where the host makes the
        /// secrets, nothing is read ahead.
        #[cfg(not(target_arch = "wasm32"))]
        const POOL_LEN: usize = 16 * WRAPPING_SECRET_LEN;
        #[cfg(target_arch = "wasm32")]
        const POOL_LEN: usize = WRAPPING_SECRET_LEN;
        crate::local::instance_local! {
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
            Self::Exchange(k) => k.id,
            Self::Wrapping(w) => w.id,
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

/// Seals traffic-key material to `recipient` (an X25519 public key).
pub fn seal_traffic_key(recipient: &[u8], m: &TrafficKeyMaterial) -> Result<Vec<u8>> {
    seal(
        recipient,
        BlobKind::TrafficKey,
        &traffic_key_contents(m, &random_id()?)?,
    )
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

/// The clear contents of a traffic-key blob. The buffer is sized exactly
/// and never grows: a reallocation would free a block holding the key, IV
/// and secret without wiping it.
fn traffic_key_contents(m: &TrafficKeyMaterial, blob_id: &[u8; 16]) -> Result<Zeroizing<Vec<u8>>> {
    let len = COMMON_LEN
        + 3
        + 4
        + 8
        + 8
        + 8
        + (1 + m.key.len())
        + (1 + m.iv.len())
        + (1 + m.secret.len())
        + (4 + m.buffered_plaintext.len())
        + (4 + m.buffered_ciphertext.len());
    let mut w = Zeroizing::new(Vec::with_capacity(len));
    put_common(
        &mut w,
        blob_id,
        m.connection_id,
        m.exportable,
        m.host_key_ref.is_some(),
    );
    w.push(m.version.code());
    w.push(m.aead.code());
    w.push(m.direction.code());
    w.extend_from_slice(&m.generation.to_be_bytes());
    w.extend_from_slice(&m.sequence.to_be_bytes());
    w.extend_from_slice(&m.auto_update_limit.to_be_bytes());
    w.extend_from_slice(&m.host_key_ref.unwrap_or(0).to_be_bytes());
    put_short(&mut w, &m.key)?;
    put_short(&mut w, &m.iv)?;
    put_short(&mut w, &m.secret)?;
    put_long(&mut w, &m.buffered_plaintext)?;
    put_long(&mut w, &m.buffered_ciphertext)?;
    exactly_sized(w, len)
}

/// Seals a MAC key to `recipient`.
pub fn seal_mac_key(recipient: &[u8], key: &MacKey) -> Result<Vec<u8>> {
    seal(
        recipient,
        BlobKind::MacKey,
        &mac_key_contents(key, &random_id()?)?,
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

/// The clear contents of a MAC-key blob, sized exactly as above.
fn mac_key_contents(key: &MacKey, blob_id: &[u8; 16]) -> Result<Zeroizing<Vec<u8>>> {
    let len = COMMON_LEN + 1 + (1 + key.key.len());
    let mut w = Zeroizing::new(Vec::with_capacity(len));
    put_common(&mut w, blob_id, key.connection_id, key.exportable, false);
    w.push(key.algorithm.code());
    put_short(&mut w, &key.key)?;
    exactly_sized(w, len)
}

/// Checks that a secret buffer was filled to exactly the size it was
/// allocated with, so no earlier, unwiped block of it was ever freed.
fn exactly_sized(w: Zeroizing<Vec<u8>>, len: usize) -> Result<Zeroizing<Vec<u8>>> {
    if w.len() != len || w.capacity() != len {
        return Err(Error::InvalidArgument("blob contents mis-sized"));
    }
    Ok(w)
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

/// Parses a traffic-key blob's clear contents.
fn traffic_key_from_contents(inner: &[u8]) -> Result<([u8; 16], TrafficKeyMaterial)> {
    let mut r = Reader(inner);
    let (blob_id, connection_id, exportable, host_resident) = r.common()?;
    let version = ProtocolVersion::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let aead = AeadAlgorithm::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let direction = Direction::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let generation = r.u32()?;
    let sequence = r.u64()?;
    let auto_update_limit = r.u64()?;
    let key_ref = r.u64()?;
    let key = Zeroizing::new(r.short()?.to_vec());
    let iv = Zeroizing::new(r.short()?.to_vec());
    let secret = Zeroizing::new(r.short()?.to_vec());
    let buffered_plaintext = Zeroizing::new(r.long()?.to_vec());
    let buffered_ciphertext = r.long()?.to_vec();
    r.finish()?;
    if !host_resident && key_ref != 0 {
        return Err(BlobError::Malformed.into());
    }
    Ok((
        blob_id,
        TrafficKeyMaterial {
            version,
            aead,
            direction,
            generation,
            sequence,
            auto_update_limit,
            key,
            iv,
            secret,
            host_key_ref: host_resident.then_some(key_ref),
            exportable,
            connection_id,
            buffered_plaintext,
            buffered_ciphertext,
        },
    ))
}

/// Opens a MAC-key blob addressed to `recipient`.
pub fn open_mac_key(recipient: Recipient<'_>, blob: &[u8]) -> Result<([u8; 16], MacKey)> {
    let inner = open(recipient, blob, BlobKind::MacKey)?;
    let mut r = Reader(&inner);
    let (blob_id, connection_id, exportable, host_resident) = r.common()?;
    let algorithm = MacAlgorithm::from_code(r.u8()?).ok_or(BlobError::Malformed)?;
    let key = r.short()?;
    r.finish()?;
    if host_resident {
        return Err(BlobError::Malformed.into());
    }
    let key = MacKey::new(algorithm, key, exportable, connection_id)
        .map_err(|_| BlobError::InvalidState)?;
    Ok((blob_id, key))
}

fn seal(recipient: &[u8], kind: BlobKind, inner: &[u8]) -> Result<Vec<u8>> {
    let recipient: &[u8; PUBLIC_KEY_LEN] = recipient
        .try_into()
        .map_err(|_| Error::InvalidArgument("recipient public key length"))?;
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| Error::InvalidArgument("recipient public key"))?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = FORMAT_VERSION;
    header[5] = kind.code();
    header[6..].copy_from_slice(&key_id(recipient));
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        INFO,
        inner,
        &header,
    )
    .map_err(|_| Error::InvalidArgument("recipient public key"))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + ENC_LEN + ciphertext.len());
    blob.extend_from_slice(&header);
    blob.extend_from_slice(&enc.to_bytes());
    blob.extend_from_slice(&ciphertext);
    Ok(blob)
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

/// Formats 2 and 3: header, salt (or counter), then `inner` sealed with
/// the blob's own key under the all-zero nonce.
fn wrap_with(
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
fn check_header(blob: &[u8], kind: BlobKind, version: u8, key_id: &[u8; 16]) -> Result<()> {
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

fn open(recipient: Recipient<'_>, blob: &[u8], kind: BlobKind) -> Result<Zeroizing<Vec<u8>>> {
    check_header(blob, kind, recipient.version(), &recipient.id())?;
    let keys = match recipient {
        Recipient::Exchange(keys) => keys,
        Recipient::Wrapping(secret) => return unwrap(secret, blob),
    };
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&blob[HEADER_LEN..HEADER_LEN + ENC_LEN])
        .map_err(|_| BlobError::Malformed)?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &keys.private,
        &enc,
        INFO,
        &blob[HEADER_LEN + ENC_LEN..],
        &blob[..HEADER_LEN],
    )
    .map(Zeroizing::new)
    .map_err(|_| BlobError::AuthenticationFailed.into())
}

/// Opens a format 2 blob whose header was checked.
fn unwrap(secret: &WrappingSecret, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let key = secret.blob_key(&blob[HEADER_LEN..HEADER_LEN + SALT_LEN]);
    unwrap_with(&key, SALT_LEN, blob)
}

/// Opens a format 2 or 3 blob whose header and length were checked.
fn unwrap_with(key: &[u8; 32], salt_len: usize, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let (aad, sealed) = blob.split_at(HEADER_LEN + salt_len);
    let (text, tag) = sealed.split_at(sealed.len() - SEAL_TAG_LEN);
    let mut inner = Zeroizing::new(text.to_vec());
    let tag: &[u8; SEAL_TAG_LEN] = tag.try_into().map_err(|_| BlobError::Malformed)?;
    blob_aead::get()
        .open(key, aad, &mut inner, tag)
        .map_err(|_| BlobError::AuthenticationFailed)?;
    Ok(inner)
}

type SessionContextS = hpke::aead::AeadCtxS<ChaCha20Poly1305, HkdfSha256, Kem>;
type SessionContextR = hpke::aead::AeadCtxR<ChaCha20Poly1305, HkdfSha256, Kem>;

/// The AEAD key for blob `counter` of a session: HPKE's Export for it.
fn session_key(
    export: impl FnOnce(&[u8], &mut [u8]) -> core::result::Result<(), hpke::HpkeError>,
    counter: u64,
) -> Result<Zeroizing<[u8; 32]>> {
    let mut context = [0u8; SESSION_EXPORT_LABEL.len() + COUNTER_LEN];
    context[..SESSION_EXPORT_LABEL.len()].copy_from_slice(SESSION_EXPORT_LABEL);
    context[SESSION_EXPORT_LABEL.len()..].copy_from_slice(&counter.to_be_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    export(&context, &mut key[..]).map_err(|_| Error::InvalidArgument("hpke export"))?;
    Ok(key)
}

/// The sending end of a format 3 session: the handshake process's, one per
/// worker for the worker's lifetime. The one X25519 encapsulation happens
/// in [`SessionSender::new`]; each blob after it costs an HKDF-Expand and
/// an AEAD.
pub struct SessionSender {
    context: SessionContextS,
    recipient: [u8; 16],
    next: u64,
}

impl SessionSender {
    /// A session to the X25519 public key a worker published, and the
    /// encapsulated key the worker needs to open it.
    pub fn new(recipient: &[u8]) -> Result<(Self, [u8; ENC_LEN])> {
        let public: &[u8; PUBLIC_KEY_LEN] = recipient
            .try_into()
            .map_err(|_| Error::InvalidArgument("recipient public key length"))?;
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public)
            .map_err(|_| Error::InvalidArgument("recipient public key"))?;
        let (enc, context) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk,
            SESSION_INFO,
        )
        .map_err(|_| Error::InvalidArgument("recipient public key"))?;
        let mut encapsulated = [0u8; ENC_LEN];
        encapsulated.copy_from_slice(&enc.to_bytes());
        Ok((
            Self {
                context,
                recipient: key_id(public),
                next: 0,
            },
            encapsulated,
        ))
    }

    /// Seals traffic-key material as the session's next blob.
    pub fn seal_traffic_key(&mut self, m: &TrafficKeyMaterial) -> Result<Vec<u8>> {
        let counter = self.next;
        self.next = counter
            .checked_add(1)
            .filter(|next| *next < u64::MAX)
            .ok_or(Error::InvalidArgument("blob session exhausted"))?;
        let key = session_key(|c, out| self.context.export(c, out), counter)?;
        wrap_with(
            FORMAT_SESSION,
            BlobKind::TrafficKey,
            &self.recipient,
            &counter.to_be_bytes(),
            &key,
            traffic_key_contents(m, &random_id()?)?,
        )
    }
}

/// The receiving end of a format 3 session: a worker's.
pub struct SessionReceiver {
    context: SessionContextR,
    recipient: [u8; 16],
    next: u64,
}

impl SessionReceiver {
    /// Opens the session the handshake process set up to `keys`.
    pub fn new(keys: &ExchangeKeyPair, encapsulated: &[u8]) -> Result<Self> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(encapsulated)
            .map_err(|_| BlobError::Malformed)?;
        let context = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &keys.private,
            &enc,
            SESSION_INFO,
        )
        .map_err(|_| BlobError::AuthenticationFailed)?;
        Ok(Self {
            context,
            recipient: keys.id,
            next: 0,
        })
    }

    /// Opens the session's next traffic-key blob. A blob whose counter is
    /// not past every one opened before is a replay.
    pub fn open_traffic_key(&mut self, blob: &[u8]) -> Result<([u8; 16], TrafficKeyMaterial)> {
        check_header(blob, BlobKind::TrafficKey, FORMAT_SESSION, &self.recipient)?;
        let mut counter = [0u8; COUNTER_LEN];
        counter.copy_from_slice(&blob[HEADER_LEN..HEADER_LEN + COUNTER_LEN]);
        let counter = u64::from_be_bytes(counter);
        // The sender never uses the last counter, so `next` can always
        // move past the one opened.
        if counter < self.next || counter == u64::MAX {
            return Err(BlobError::Replayed.into());
        }
        let key = session_key(|c, out| self.context.export(c, out), counter)?;
        let inner = unwrap_with(&key, COUNTER_LEN, blob)?;
        let opened = traffic_key_from_contents(&inner)?;
        self.next = counter + 1;
        Ok(opened)
    }
}

/// Public randomness, read ahead ([`crate::random`]): blob salts and blob
/// ids, which leave in the clear. Keys never come from this pool.
fn public_random(out: &mut [u8]) -> Result<()> {
    /// The host wraps or seals two blobs per connection (64 bytes), so one
    /// read serves sixteen connections. An instance makes few blobs, and
    /// in wasm each 8 bytes is a host call.
    #[cfg(not(target_arch = "wasm32"))]
    const POOL_LEN: usize = 1024;
    #[cfg(target_arch = "wasm32")]
    const POOL_LEN: usize = 256;
    crate::local::instance_local! {
        static POOL: core::cell::RefCell<crate::random::Pool<POOL_LEN>> =
            const { core::cell::RefCell::new(crate::random::Pool::new()) };
    }
    POOL.with_borrow_mut(|pool| pool.fill(out))
}

/// A wrapped blob's salt and id.
fn salt_and_id() -> Result<([u8; SALT_LEN], [u8; 16])> {
    let mut salt = [0u8; SALT_LEN];
    let mut id = [0u8; 16];
    public_random(&mut salt)?;
    public_random(&mut id)?;
    Ok((salt, id))
}

/// A sealed blob's id (formats 1 and 3).
fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    public_random(&mut id)?;
    Ok(id)
}

/// Blob id, connection id, flags.
const COMMON_LEN: usize = 16 + 8 + 1;

fn put_common(
    w: &mut Vec<u8>,
    blob_id: &[u8; 16],
    connection_id: u64,
    exportable: bool,
    host: bool,
) {
    w.extend_from_slice(blob_id);
    w.extend_from_slice(&connection_id.to_be_bytes());
    let mut flags = 0;
    if exportable {
        flags |= FLAG_EXPORTABLE;
    }
    if host {
        flags |= FLAG_HOST_RESIDENT;
    }
    w.push(flags);
}

fn put_short(w: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len =
        u8::try_from(bytes.len()).map_err(|_| Error::InvalidArgument("key field too long"))?;
    w.push(len);
    w.extend_from_slice(bytes);
    Ok(())
}

fn put_long(w: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_BUFFERED {
        return Err(Error::InvalidArgument("buffered bytes over the blob limit"));
    }
    w.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    w.extend_from_slice(bytes);
    Ok(())
}

/// A bounds-checked reader: every short read is `Malformed`, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(BlobError::Malformed.into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn short(&mut self) -> Result<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    fn long(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > MAX_BUFFERED {
            return Err(BlobError::Malformed.into());
        }
        self.take(n)
    }

    fn common(&mut self) -> Result<([u8; 16], u64, bool, bool)> {
        let id: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
        let connection_id = self.u64()?;
        let flags = self.u8()?;
        if flags & !(FLAG_EXPORTABLE | FLAG_HOST_RESIDENT) != 0 {
            return Err(BlobError::Malformed.into());
        }
        Ok((
            id,
            connection_id,
            flags & FLAG_EXPORTABLE != 0,
            flags & FLAG_HOST_RESIDENT != 0,
        ))
    }

    fn finish(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BlobError::Malformed.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> TrafficKeyMaterial {
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
    fn a_session_opens_each_blob_once_in_order_and_only_at_its_worker() {
        let worker = ExchangeKeyPair::generate();
        let (mut sender, enc) = SessionSender::new(&worker.public_key()).unwrap();
        let mut receiver = SessionReceiver::new(&worker, &enc).unwrap();
        let blobs: Vec<_> = (0..3)
            .map(|_| sender.seal_traffic_key(&material()).unwrap())
            .collect();
        assert!(blobs.iter().all(|b| b[4] == FORMAT_SESSION));
        // The second blob first: the first is then too old to open.
        let (_, m) = receiver.open_traffic_key(&blobs[1]).unwrap();
        assert_eq!((m.sequence, m.connection_id), (7, 3));
        for old in &blobs[..2] {
            assert_eq!(
                receiver.open_traffic_key(old).err(),
                Some(BlobError::Replayed.into())
            );
        }
        // Tampering anywhere after the header fails and consumes nothing.
        for at in HEADER_LEN + COUNTER_LEN..blobs[2].len() {
            let mut bad = blobs[2].clone();
            bad[at] ^= 1;
            assert_eq!(
                receiver.open_traffic_key(&bad).err(),
                Some(BlobError::AuthenticationFailed.into()),
                "byte {at}"
            );
        }
        assert!(receiver.open_traffic_key(&blobs[2]).is_ok());
        // Another worker, or an instance, is not the recipient.
        let other = ExchangeKeyPair::generate();
        let (mut to_other, enc_other) = SessionSender::new(&other.public_key()).unwrap();
        let theirs = to_other.seal_traffic_key(&material()).unwrap();
        assert_eq!(
            receiver.open_traffic_key(&theirs).err(),
            Some(BlobError::WrongRecipient.into())
        );
        assert_eq!(
            open_traffic_key(Recipient::Exchange(&other), &theirs).err(),
            Some(BlobError::WrongRecipient.into())
        );
        let _ = enc_other;
        // A blob of another session to the same worker does not open in
        // this one: the per-blob keys come from each session's secret.
        let (mut second, _) = SessionSender::new(&worker.public_key()).unwrap();
        let mut fresh = SessionReceiver::new(&worker, &enc).unwrap();
        assert_eq!(
            fresh
                .open_traffic_key(&second.seal_traffic_key(&material()).unwrap())
                .err(),
            Some(BlobError::AuthenticationFailed.into())
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

    #[test]
    fn secret_buffers_never_grow_so_no_unwiped_copy_is_freed() {
        // The suite `serve` prefers and the largest: a buffer sized short
        // of these (as a fixed 128 bytes was) reallocates mid-write.
        for (version, aead) in [
            (ProtocolVersion::Tls13, AeadAlgorithm::ChaCha20Poly1305),
            (ProtocolVersion::Tls13, AeadAlgorithm::Aes256Gcm),
            (ProtocolVersion::Tls13, AeadAlgorithm::Aes128Gcm),
            (ProtocolVersion::Tls12, AeadAlgorithm::Aes256Gcm),
        ] {
            for buffered in [0usize, 1, 200, 16 * 1024 + 5] {
                let mut m = match version {
                    ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
                        aead,
                        Direction::Open,
                        &vec![3; aead.tls13_hash().output_len()],
                        5,
                        9,
                    )
                    .unwrap(),
                    ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                        version,
                        aead,
                        Direction::Open,
                        &vec![3; aead.key_len()],
                        &[4; 12],
                        &[],
                        5,
                        9,
                    ),
                };
                m.buffered_plaintext = Zeroizing::new(vec![1; buffered]);
                m.buffered_ciphertext = vec![2; buffered / 2];
                let w = traffic_key_contents(&m, &[3; 16]).unwrap();
                assert_eq!(w.len(), w.capacity(), "{version:?} {aead:?} {buffered}");
            }
        }
        let mac = MacKey::new(MacAlgorithm::HmacSha384, &[5; 48], true, 1).unwrap();
        let w = mac_key_contents(&mac, &[4; 16]).unwrap();
        assert_eq!(w.len(), w.capacity());
    }
}
