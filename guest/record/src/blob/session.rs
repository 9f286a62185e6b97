//! Format 3: from the handshake process to a data-plane worker it did not
//! create. The KEM is amortized as Oblivious HTTP amortizes it: one HPKE
//! setup to the worker's published key for the worker's lifetime, and
//! each blob's key is the session's HPKE `Export` for the blob's counter.

use alloc::vec::Vec;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use super::contents::{traffic_key_contents, traffic_key_from_contents};
use super::sealed::{ENC_LEN, ExchangeKeyPair, Kem, PUBLIC_KEY_LEN};
use super::{
    BlobKind, FORMAT_SESSION, HEADER_LEN, check_header, key_id, random_id, unwrap_with, wrap_with,
};
use crate::error::{BlobError, Error, Result};
use crate::record::TrafficKeyMaterial;

/// The per-blob counter of format 3.
pub const COUNTER_LEN: usize = 8;

const SESSION_INFO: &[u8] = b"keyferry blob session";
const SESSION_EXPORT_LABEL: &[u8] = b"keyferry key blob v3";

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
            recipient: keys.key_id(),
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

#[cfg(test)]
mod tests {
    use super::super::tests::material;
    use super::super::{Recipient, open_traffic_key};
    use super::*;

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
}
