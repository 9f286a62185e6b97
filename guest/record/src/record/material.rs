//! What a traffic key is made from and what it tells about itself: the
//! raw state a handshake engine exports and a blob carries, checked
//! against its secret, and the non-secret state.

use alloc::vec::Vec;
use zeroize::Zeroizing;

use super::AES_GCM_RECORD_LIMIT;
use crate::error::{BlobError, Error, Result};
use crate::keyschedule::traffic_key_and_iv;
use crate::suite::{AeadAlgorithm, Direction, ProtocolVersion};

/// The raw state a traffic key is made from: what the host exports from a
/// handshake engine, and what a blob carries. Secret fields zeroize on drop;
/// no `Debug` or `Clone`.
pub struct TrafficKeyMaterial {
    /// Record format.
    pub version: ProtocolVersion,
    /// Record AEAD.
    pub aead: AeadAlgorithm,
    /// Seal or open.
    pub direction: Direction,
    /// Key generation (TLS 1.3 KeyUpdates so far).
    pub generation: u32,
    /// Next record's sequence number.
    pub sequence: u64,
    /// Records per generation before an AES-GCM seal key updates itself
    /// (TLS 1.3) or stops (TLS 1.2).
    pub auto_update_limit: u64,
    /// The AEAD key; empty for a host-resident key.
    pub key: Zeroizing<Vec<u8>>,
    /// The 12-byte IV; empty for a host-resident key.
    pub iv: Zeroizing<Vec<u8>>,
    /// The TLS 1.3 traffic secret; empty for TLS 1.2 and host-resident keys.
    pub secret: Zeroizing<Vec<u8>>,
    /// `Some(reference)` for a host-resident key.
    pub host_key_ref: Option<u64>,
    /// Whether the key may be exported again.
    pub exportable: bool,
    /// The connection the key belongs to.
    pub connection_id: u64,
    /// Plaintext already decrypted by the previous owner.
    pub buffered_plaintext: Zeroizing<Vec<u8>>,
    /// Ciphertext already received by the previous owner, not yet opened.
    pub buffered_ciphertext: Vec<u8>,
}

impl TrafficKeyMaterial {
    /// Material with the defaults a fresh handoff has: exportable, nothing
    /// buffered, generation 0, the default AES-GCM limit.
    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the raw state a handshake engine exports"
    )]
    pub fn new(
        version: ProtocolVersion,
        aead: AeadAlgorithm,
        direction: Direction,
        key: &[u8],
        iv: &[u8],
        secret: &[u8],
        sequence: u64,
        connection_id: u64,
    ) -> Self {
        Self {
            version,
            aead,
            direction,
            generation: 0,
            sequence,
            auto_update_limit: AES_GCM_RECORD_LIMIT,
            key: Zeroizing::new(key.to_vec()),
            iv: Zeroizing::new(iv.to_vec()),
            secret: Zeroizing::new(secret.to_vec()),
            host_key_ref: None,
            exportable: true,
            connection_id,
            buffered_plaintext: Zeroizing::new(Vec::new()),
            buffered_ciphertext: Vec::new(),
        }
    }
}

impl TrafficKeyMaterial {
    /// Checks that a TLS 1.3 software key's secret has its hash's length
    /// and that its key and IV are the ones the secret derives: material
    /// that disagrees with itself is refused rather than half-working
    /// until the first KeyUpdate. TLS 1.2 and host-resident material,
    /// which carry no secret here, pass.
    pub fn check_derivation(&self) -> Result<()> {
        if self.version != ProtocolVersion::Tls13 || self.host_key_ref.is_some() {
            return Ok(());
        }
        if self.secret.len() != self.aead.tls13_hash().output_len() {
            return Err(Error::Blob(BlobError::InvalidState));
        }
        let (key, iv) = traffic_key_and_iv(self.aead, &self.secret)?;
        let same = subtle::ConstantTimeEq::ct_eq(&key[..], &self.key[..])
            & subtle::ConstantTimeEq::ct_eq(&iv[..], &self.iv[..]);
        if bool::from(same) {
            Ok(())
        } else {
            Err(Error::Blob(BlobError::InvalidState))
        }
    }

    /// TLS 1.3 material from a traffic secret alone: the key and IV are
    /// derived (RFC 8446 section 7.3).
    pub fn from_tls13_secret(
        aead: AeadAlgorithm,
        direction: Direction,
        secret: &[u8],
        sequence: u64,
        connection_id: u64,
    ) -> Result<Self> {
        let (key, iv) = traffic_key_and_iv(aead, secret)?;
        Ok(Self::new(
            ProtocolVersion::Tls13,
            aead,
            direction,
            &key,
            &iv,
            secret,
            sequence,
            connection_id,
        ))
    }
}

/// A snapshot of the non-secret state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficKeyState {
    /// Record format.
    pub version: ProtocolVersion,
    /// Record AEAD.
    pub aead: AeadAlgorithm,
    /// Seal or open.
    pub direction: Direction,
    /// Next sequence number in this generation.
    pub sequence: u64,
    /// KeyUpdates so far.
    pub generation: u32,
    /// Whether export is allowed.
    pub exportable: bool,
    /// Whether the material lives in the host.
    pub host_resident: bool,
    /// The host store's reference, for a host-resident key: the host moves
    /// its grant when the key migrates.
    pub host_key_ref: Option<u64>,
    /// Owning connection.
    pub connection_id: u64,
    /// Automatic update (or stop) point for AES-GCM.
    pub auto_update_limit: u64,
}
