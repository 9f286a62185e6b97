//! Format 1: sealed with HPKE (RFC 9180, base mode, DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to an instance's exchange
//! key, for a recipient the sealer did not create.

use alloc::vec::Vec;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use super::contents::{mac_key_contents, traffic_key_contents};
use super::{BlobKind, FORMAT_VERSION, HEADER_LEN, MAGIC, key_id, random_id};
use crate::error::{BlobError, Error, Result};
use crate::mac::MacKey;
use crate::record::TrafficKeyMaterial;

pub(super) type Kem = X25519HkdfSha256;

/// X25519 encapsulated key.
pub const ENC_LEN: usize = 32;
/// X25519 public key length.
pub const PUBLIC_KEY_LEN: usize = 32;

const INFO: &[u8] = b"keyferry key blob";

/// An instance's key-exchange key pair. Made once per instance; the private
/// half never leaves it (hpke's X25519 private key zeroizes on drop).
pub struct ExchangeKeyPair {
    pub(super) private: <Kem as hpke::Kem>::PrivateKey,
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

/// Seals traffic-key material to `recipient` (an X25519 public key).
pub fn seal_traffic_key(recipient: &[u8], m: &TrafficKeyMaterial) -> Result<Vec<u8>> {
    seal(
        recipient,
        BlobKind::TrafficKey,
        &traffic_key_contents(m, &random_id()?)?,
    )
}

/// Seals a MAC key to `recipient`.
pub fn seal_mac_key(recipient: &[u8], key: &MacKey) -> Result<Vec<u8>> {
    seal(
        recipient,
        BlobKind::MacKey,
        &mac_key_contents(key, &random_id()?)?,
    )
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

/// Opens a format 1 blob whose header was checked.
pub(super) fn open(keys: &ExchangeKeyPair, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
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
