//! keyferry's OPAQUEKEYBLOB: the one implementation of the key blob format,
//! used by the host to seal and by the guest to open and re-seal.
//!
//! Layout of format version 1 (all integers big-endian):
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

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{BlobError, Error, Result};
use crate::mac::MacKey;
use crate::record::TrafficKeyMaterial;
use crate::suite::{AeadAlgorithm, Direction, MacAlgorithm, ProtocolVersion};

type Kem = X25519HkdfSha256;

/// The first bytes of every blob.
pub const MAGIC: [u8; 4] = *b"KFKB";
/// The newest format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Every version this code reads.
pub const READABLE_VERSIONS: &[u8] = &[1];
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
    seal(recipient, BlobKind::TrafficKey, &traffic_key_contents(m)?)
}

/// The clear contents of a traffic-key blob. The buffer is sized exactly
/// and never grows: a reallocation would free a block holding the key, IV
/// and secret without wiping it.
fn traffic_key_contents(m: &TrafficKeyMaterial) -> Result<Zeroizing<Vec<u8>>> {
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
    let blob_id = random_id()?;
    put_common(
        &mut w,
        &blob_id,
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
    seal(recipient, BlobKind::MacKey, &mac_key_contents(key)?)
}

/// The clear contents of a MAC-key blob, sized exactly as above.
fn mac_key_contents(key: &MacKey) -> Result<Zeroizing<Vec<u8>>> {
    let len = COMMON_LEN + 1 + (1 + key.key.len());
    let mut w = Zeroizing::new(Vec::with_capacity(len));
    let blob_id = random_id()?;
    put_common(&mut w, &blob_id, key.connection_id, key.exportable, false);
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

/// Opens a traffic-key blob addressed to `keys`. Returns the blob id (for
/// the single-use check) and the material.
pub fn open_traffic_key(
    keys: &ExchangeKeyPair,
    blob: &[u8],
) -> Result<([u8; 16], TrafficKeyMaterial)> {
    let inner = open(keys, blob, BlobKind::TrafficKey)?;
    let mut r = Reader(&inner);
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

/// Opens a MAC-key blob addressed to `keys`.
pub fn open_mac_key(keys: &ExchangeKeyPair, blob: &[u8]) -> Result<([u8; 16], MacKey)> {
    let inner = open(keys, blob, BlobKind::MacKey)?;
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

fn open(keys: &ExchangeKeyPair, blob: &[u8], kind: BlobKind) -> Result<Zeroizing<Vec<u8>>> {
    let header = peek_header(blob)?;
    if blob.len() < HEADER_LEN + ENC_LEN + SEAL_TAG_LEN {
        return Err(BlobError::Malformed.into());
    }
    match header.kind {
        1 | 2 if header.kind != kind.code() => return Err(BlobError::WrongKind.into()),
        1 | 2 => {}
        _ => return Err(BlobError::Malformed.into()),
    }
    if header.key_id != keys.id {
        return Err(BlobError::WrongRecipient.into());
    }
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

/// A fresh random blob id.
fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|_| Error::InvalidArgument("no system randomness"))?;
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
                let w = traffic_key_contents(&m).unwrap();
                assert_eq!(w.len(), w.capacity(), "{version:?} {aead:?} {buffered}");
            }
        }
        let mac = MacKey::new(MacAlgorithm::HmacSha384, &[5; 48], true, 1).unwrap();
        let w = mac_key_contents(&mac).unwrap();
        assert_eq!(w.len(), w.capacity());
    }
}
