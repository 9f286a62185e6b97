//! The host key service: how the record layer reaches a host-resident key.
//!
//! In the component this is the `keyferry:dataplane/key-service` import; in
//! the host it is the key store itself. The record layer frames records and
//! keeps the sequence; the service derives nonces and runs the AEAD.

use crate::error::KeyServiceError;
use crate::suite::ContentType;
use alloc::vec::Vec;

/// Which host-resident key, at which record: what every sealing and
/// opening call names (the WIT `key-position`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPosition {
    /// The capability the key's blob carried.
    pub key_ref: u64,
    /// The KeyUpdate generation the caller holds the key at.
    pub generation: u32,
    /// The record's sequence number.
    pub sequence: u64,
}

/// A store of host-resident traffic keys.
pub trait KeyService: Sync {
    /// Seals one record body. `aad` is the record's additional data; the
    /// result is what follows the header (explicit nonce, ciphertext, tag).
    fn seal_record(
        &self,
        at: KeyPosition,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError>;

    /// Frames and seals one whole record and returns it, header included,
    /// laid out as [`crate::record::SealParams::append`] lays it out. The
    /// record layer's path: the payload is read once and the record comes
    /// back once, where `seal_record` needs the inner plaintext built
    /// first and the body copied behind a header after.
    fn seal_payload(
        &self,
        at: KeyPosition,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>, KeyServiceError>;

    /// [`Self::seal_payload`], with the record kept by the service (the
    /// `seal-held` import): it goes out with the records the host collects
    /// when the current export call returns, and only its length comes
    /// back. A service with nowhere to keep records refuses, as the key
    /// store does in the host's own process, where the record layer has
    /// no boundary to save a crossing of.
    fn seal_held(
        &self,
        _at: KeyPosition,
        _content_type: ContentType,
        _payload: &[u8],
        _padding: usize,
    ) -> Result<usize, KeyServiceError> {
        Err(KeyServiceError::InvalidArgument)
    }

    /// Opens the body of the record the service holds for the current
    /// call (the `open-held` import), with `aad`. A service that holds no
    /// records refuses, as for [`Self::seal_held`].
    fn open_held(&self, _at: KeyPosition, _aad: &[u8]) -> Result<Vec<u8>, KeyServiceError> {
        Err(KeyServiceError::InvalidArgument)
    }

    /// Opens one record body (everything after the header).
    fn open_record(
        &self,
        at: KeyPosition,
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError>;

    /// Moves the key from `generation` to the next one.
    fn update(&self, key_ref: u64, generation: u32) -> Result<(), KeyServiceError>;
}
