//! How a protected record is laid out and checked, the same for a key in
//! the guest and one in the host's key store: the nonce, the TLS 1.2
//! explicit nonce and AAD, the framing of a sealed record, and which
//! content types may be sent and received.

use alloc::vec::Vec;
use zeroize::Zeroize;

use super::{MAX_INNER_PLAINTEXT, TLS12_EXPLICIT_NONCE_LEN};
use crate::cipher::{NONCE_LEN, TAG_LEN};
use crate::error::{Alert, Error, Result};
use crate::framing::{HEADER_LEN, MAX_CIPHERTEXT, MAX_PLAINTEXT};
use crate::keyschedule::IV_LEN;
use crate::suite::{AeadAlgorithm, ContentType, ProtocolVersion};

/// A KeyUpdate handshake message (RFC 8446 section 4.6.3).
pub fn key_update_message(request_update: bool) -> [u8; 5] {
    [24, 0, 0, 1, request_update as u8]
}

/// RFC 8446 section 5.3: the per-record nonce is the IV XOR the sequence
/// number, left-padded. rustls uses the same form for TLS 1.2 (the explicit
/// nonce is its last 8 bytes), and RFC 7905 for TLS 1.2 ChaCha20.
pub fn xor_nonce(iv: &[u8; IV_LEN], seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *iv;
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

/// The explicit nonce a record body starts with: 8 bytes for TLS 1.2 GCM
/// (RFC 5288), none for TLS 1.3 or TLS 1.2 ChaCha20-Poly1305 (RFC 7905).
/// The record layer and the host key store frame and open bodies by it.
pub fn explicit_nonce_len(version: ProtocolVersion, aead: AeadAlgorithm) -> usize {
    match version {
        ProtocolVersion::Tls12 if aead.is_aes_gcm() => TLS12_EXPLICIT_NONCE_LEN,
        _ => 0,
    }
}

/// What frames one record for sealing: the key's version, AEAD and IV, and
/// the record's sequence number. The guest's software keys and the host key
/// store both seal through it, so a record is laid out one way (RFC 8446
/// section 5.2, RFC 5246 section 6.2.3.3, RFC 7905) whichever side holds
/// the key; only the AEAD that fills it in differs.
pub struct SealParams<'a> {
    /// The key's protocol version.
    pub version: ProtocolVersion,
    /// The key's AEAD.
    pub aead: AeadAlgorithm,
    /// The key's record IV.
    pub iv: &'a [u8; IV_LEN],
    /// The record's sequence number.
    pub sequence: u64,
}

impl SealParams<'_> {
    /// The whole record's length, header to tag, or `record_overflow` if
    /// `payload` and `padding` do not fit one record. TLS 1.2 has no
    /// padding: any is refused.
    pub fn record_len(&self, payload_len: usize, padding: usize) -> Result<usize> {
        let body_len = match self.version {
            ProtocolVersion::Tls13 => payload_len
                .checked_add(1)
                .and_then(|n| n.checked_add(padding))
                .filter(|n| *n <= MAX_INNER_PLAINTEXT)
                .map(|n| n + TAG_LEN),
            ProtocolVersion::Tls12 if padding == 0 && payload_len <= MAX_PLAINTEXT => {
                Some(payload_len + explicit_nonce_len(self.version, self.aead) + TAG_LEN)
            }
            ProtocolVersion::Tls12 => None,
        };
        body_len
            .filter(|n| *n <= MAX_CIPHERTEXT)
            .map(|n| HEADER_LEN + n)
            .ok_or(Error::Alert(Alert::RecordOverflow))
    }

    /// Appends one sealed record to `out`: the header, a TLS 1.2 AES-GCM
    /// explicit nonce, the text (TLS 1.3: `payload`, `content_type`, then
    /// `padding` zero bytes; TLS 1.2: `payload`) encrypted in place by
    /// `seal(nonce, aad, text)`, and the tag it returns. On an error `out`
    /// is left as it was.
    pub fn append(
        &self,
        out: &mut Vec<u8>,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
        seal: impl FnOnce(&[u8; NONCE_LEN], &[u8], &mut [u8]) -> Result<[u8; TAG_LEN]>,
    ) -> Result<()> {
        let len = self.record_len(payload.len(), padding)?;
        let start = out.len();
        out.reserve_exact(len);
        let body_len = ((len - HEADER_LEN) as u16).to_be_bytes();
        let nonce = xor_nonce(self.iv, self.sequence);
        let sealed = match self.version {
            ProtocolVersion::Tls13 => {
                out.extend_from_slice(&[ContentType::ApplicationData.code(), 3, 3]);
                out.extend_from_slice(&body_len);
                out.extend_from_slice(payload);
                out.push(content_type.code());
                out.resize(start + len - TAG_LEN, 0);
                let (header, text) = out[start..].split_at_mut(HEADER_LEN);
                seal(&nonce, header, text)
            }
            ProtocolVersion::Tls12 => {
                out.extend_from_slice(&[content_type.code(), 3, 3]);
                out.extend_from_slice(&body_len);
                let explicit = explicit_nonce_len(self.version, self.aead);
                out.extend_from_slice(&nonce[NONCE_LEN - explicit..]);
                let text_start = out.len();
                out.extend_from_slice(payload);
                let aad = tls12_aad(self.sequence, content_type.code(), [3, 3], payload.len());
                seal(&nonce, &aad, &mut out[text_start..])
            }
        };
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                // Nothing half-sealed (or still plain) stays behind.
                out[start..].zeroize();
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// RFC 5246 section 6.2.3.3: seq_num + type + version + length.
pub(super) fn tls12_aad(seq: u64, content_type: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

pub(super) fn check_sendable(content_type: ContentType, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PLAINTEXT {
        return Err(Error::Alert(Alert::RecordOverflow));
    }
    match content_type {
        ContentType::ChangeCipherSpec => Err(Error::Alert(Alert::UnexpectedMessage)),
        ContentType::Handshake | ContentType::Alert if payload.is_empty() => {
            Err(Error::Alert(Alert::UnexpectedMessage))
        }
        _ => Ok(()),
    }
}

pub(super) fn check_received(code: u8, payload: &[u8]) -> Result<ContentType> {
    match ContentType::from_code(code) {
        Some(ContentType::ApplicationData) => Ok(ContentType::ApplicationData),
        Some(t @ (ContentType::Handshake | ContentType::Alert)) if !payload.is_empty() => Ok(t),
        // A protected change_cipher_spec, an empty handshake or alert
        // record, or a type TLS does not define.
        _ => Err(Error::Alert(Alert::UnexpectedMessage)),
    }
}
