//! TLS 1.3 and TLS 1.2 AEAD record protection with one traffic key.
//!
//! A [`TrafficKey`] is one direction of one connection: it owns the key,
//! the IV, the sequence number, and for TLS 1.3 the traffic secret, so it can
//! move to the next generation (KeyUpdate) without help from the host.

use alloc::vec::Vec;
use zeroize::Zeroizing;

use crate::cipher::{NONCE_LEN, RecordCipher, TAG_LEN};
use crate::error::{Alert, BlobError, Error, KeyServiceError, Result, UnusableReason};
use crate::framing;
use crate::key_service::{KeyPosition, KeyService};
use crate::keyschedule::{IV_LEN, next_traffic_secret, traffic_key_and_iv};
use crate::suite::{AeadAlgorithm, ContentType, Direction, ProtocolVersion};

pub use crate::framing::{HEADER_LEN, MAX_CIPHERTEXT, MAX_PLAINTEXT};

/// RFC 8446 section 5.2: TLSInnerPlaintext is at most 2^14 + 1 bytes.
pub const MAX_INNER_PLAINTEXT: usize = MAX_PLAINTEXT + 1;
/// TLS 1.2 GCM sends 8 bytes of explicit nonce before the ciphertext.
pub const TLS12_EXPLICIT_NONCE_LEN: usize = 8;
/// Default automatic KeyUpdate point for AES-GCM: 2^24 records per
/// generation, safely below the RFC 8446 section 5.5 limit of 2^24.5.
pub const AES_GCM_RECORD_LIMIT: u64 = 1 << 24;

mod layout;
mod material;

pub use layout::{SealParams, explicit_nonce_len, key_update_message, xor_nonce};
use layout::{check_received, check_sendable, tls12_aad};
pub use material::{TrafficKeyMaterial, TrafficKeyState};

/// Where a traffic key's material lives.
pub enum Residency {
    /// In this guest.
    Software {
        /// The keyed AEAD.
        cipher: RecordCipher,
        /// The raw key, kept for export: the AEAD types do not give it back.
        key: Zeroizing<Vec<u8>>,
        /// The record IV (TLS 1.2: 4-byte salt and 8 bytes rustls uses as an
        /// explicit-nonce mask).
        iv: Zeroizing<[u8; IV_LEN]>,
        /// The TLS 1.3 traffic secret of the current generation.
        secret: Option<Zeroizing<Vec<u8>>>,
    },
    /// In the host key store, used through the key service.
    Host {
        /// The store's reference.
        key_ref: u64,
        /// The store.
        service: &'static dyn KeyService,
    },
}

/// One direction of a connection's record protection with its exact state.
pub struct TrafficKey {
    pub(crate) version: ProtocolVersion,
    pub(crate) aead: AeadAlgorithm,
    pub(crate) direction: Direction,
    pub(crate) residency: Residency,
    pub(crate) sequence: u64,
    pub(crate) generation: u32,
    pub(crate) auto_update_limit: u64,
    pub(crate) exportable: bool,
    pub(crate) connection_id: u64,
    pub(crate) buffered_plaintext: Zeroizing<Vec<u8>>,
    pub(crate) buffered_ciphertext: Vec<u8>,
    pub(crate) failed: bool,
    /// [`TrafficKey::fingerprint`], computed when the material changes
    /// (import, KeyUpdate) rather than on every import and release.
    fingerprint: [u8; 16],
}

impl TrafficKey {
    /// Builds a usable key from material, checking that it holds together.
    /// `service` must be given for a host-resident key.
    pub fn from_material(
        m: TrafficKeyMaterial,
        service: Option<&'static dyn KeyService>,
    ) -> Result<Self> {
        m.check_derivation()?;
        Self::from_checked_material(m, service)
    }

    /// [`TrafficKey::from_material`] for material whose TLS 1.3 key and IV
    /// were already checked against its secret
    /// ([`TrafficKeyMaterial::check_derivation`]), as the host checks what
    /// it wraps for an instance (blob format 2). Everything else is still
    /// checked. In the guest the derivation is 16 SHA-256 compressions per
    /// connection, scalar in wasm: two fifths of attaching a connection.
    pub fn from_checked_material(
        m: TrafficKeyMaterial,
        service: Option<&'static dyn KeyService>,
    ) -> Result<Self> {
        let invalid = Error::Blob(BlobError::InvalidState);
        if m.aead.is_aes_gcm() && !(1..=AES_GCM_RECORD_LIMIT).contains(&m.auto_update_limit) {
            return Err(invalid);
        }
        let residency = match m.host_key_ref {
            Some(key_ref) => {
                if !m.key.is_empty() || !m.iv.is_empty() || !m.secret.is_empty() {
                    return Err(invalid);
                }
                let service = service.ok_or(Error::Blob(BlobError::HostKeysUnavailable))?;
                Residency::Host { key_ref, service }
            }
            None => {
                if m.key.len() != m.aead.key_len() || m.iv.len() != IV_LEN {
                    return Err(invalid);
                }
                let secret = match m.version {
                    ProtocolVersion::Tls12 => {
                        if !m.secret.is_empty() {
                            return Err(invalid);
                        }
                        None
                    }
                    ProtocolVersion::Tls13 => {
                        if m.secret.len() != m.aead.tls13_hash().output_len() {
                            return Err(invalid);
                        }
                        Some(Zeroizing::new(m.secret.to_vec()))
                    }
                };
                let mut iv = Zeroizing::new([0u8; IV_LEN]);
                iv.copy_from_slice(&m.iv);
                Residency::Software {
                    cipher: RecordCipher::new(m.aead, &m.key)?,
                    key: Zeroizing::new(m.key.to_vec()),
                    iv,
                    secret,
                }
            }
        };
        let mut key = Self {
            version: m.version,
            aead: m.aead,
            direction: m.direction,
            residency,
            sequence: m.sequence,
            generation: m.generation,
            auto_update_limit: if m.aead.is_aes_gcm() {
                m.auto_update_limit
            } else {
                u64::MAX
            },
            exportable: m.exportable,
            connection_id: m.connection_id,
            buffered_plaintext: Zeroizing::new(m.buffered_plaintext.to_vec()),
            buffered_ciphertext: m.buffered_ciphertext.clone(),
            failed: false,
            fingerprint: [0; 16],
        };
        key.fingerprint = key.compute_fingerprint();
        Ok(key)
    }

    /// The exact material, for export or migration: refused unless the
    /// key was imported exportable. Consumes the key.
    pub fn into_material(mut self) -> Result<TrafficKeyMaterial> {
        if !self.exportable {
            return Err(Error::NotExportable);
        }
        if self.failed {
            return Err(Error::Unusable(UnusableReason::Failed));
        }
        let (key, iv, secret, host_key_ref) = match &self.residency {
            Residency::Software {
                key, iv, secret, ..
            } => (
                Zeroizing::new(key.to_vec()),
                Zeroizing::new(iv.to_vec()),
                Zeroizing::new(secret.as_ref().map(|s| s.to_vec()).unwrap_or_default()),
                None,
            ),
            Residency::Host { key_ref, .. } => (
                Zeroizing::new(Vec::new()),
                Zeroizing::new(Vec::new()),
                Zeroizing::new(Vec::new()),
                Some(*key_ref),
            ),
        };
        Ok(TrafficKeyMaterial {
            version: self.version,
            aead: self.aead,
            direction: self.direction,
            generation: self.generation,
            sequence: self.sequence,
            auto_update_limit: self.auto_update_limit.min(AES_GCM_RECORD_LIMIT),
            key,
            iv,
            secret,
            host_key_ref,
            exportable: self.exportable,
            connection_id: self.connection_id,
            buffered_plaintext: core::mem::take(&mut self.buffered_plaintext),
            buffered_ciphertext: core::mem::take(&mut self.buffered_ciphertext),
        })
    }

    /// Where a host-resident key stands for the record at `sequence`.
    fn position(&self, key_ref: u64, sequence: u64) -> KeyPosition {
        KeyPosition {
            key_ref,
            generation: self.generation,
            sequence,
        }
    }

    /// The non-secret state.
    pub fn state(&self) -> TrafficKeyState {
        TrafficKeyState {
            version: self.version,
            aead: self.aead,
            direction: self.direction,
            sequence: self.sequence,
            generation: self.generation,
            exportable: self.exportable,
            host_resident: matches!(self.residency, Residency::Host { .. }),
            host_key_ref: match self.residency {
                Residency::Host { key_ref, .. } => Some(key_ref),
                Residency::Software { .. } => None,
            },
            connection_id: self.connection_id,
            auto_update_limit: self.auto_update_limit,
        }
    }

    /// Bytes buffered at handoff; empty after the first call.
    pub fn take_buffered(&mut self) -> (Zeroizing<Vec<u8>>, Vec<u8>) {
        (
            core::mem::take(&mut self.buffered_plaintext),
            core::mem::take(&mut self.buffered_ciphertext),
        )
    }

    fn usable(&self, direction: Direction) -> Result<()> {
        if self.failed {
            return Err(Error::Unusable(UnusableReason::Failed));
        }
        if self.direction != direction {
            return Err(Error::WrongKeyType);
        }
        Ok(())
    }

    /// Who this key is, for the rollback registry: a hash of the current
    /// generation's material (or of the host's reference), never of the
    /// labels a sealer chose. The same key re-sealed under another
    /// connection id is still the same key.
    pub fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    fn compute_fingerprint(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        /// Short enough that the label, the three codes, the residency
        /// byte, the longest key and the IV fit one SHA-256 block (55 bytes
        /// with the padding): every import computes one, in wasm.
        const LABEL: &[u8] = b"kf fp 2";
        const _: () = assert!(LABEL.len() + 3 + 1 + 32 + 12 <= 55);
        let mut h = Sha256::new();
        h.update(LABEL);
        h.update([self.version.code(), self.aead.code(), self.direction.code()]);
        match &self.residency {
            Residency::Software { key, iv, .. } => {
                h.update([0]);
                h.update(&key[..]);
                h.update(&iv[..]);
            }
            Residency::Host { key_ref, .. } => {
                h.update([1]);
                h.update(key_ref.to_be_bytes());
                h.update(self.generation.to_be_bytes());
            }
        }
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    /// Protects one record. A TLS 1.3 AES-GCM key at its limit first emits
    /// a KeyUpdate record, so the output may hold two records.
    pub fn seal(
        &mut self,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>> {
        self.seal_to(Sealed::Returned, content_type, payload, padding)
    }

    /// [`Self::seal`], except that a host-resident key leaves its records
    /// with the key service ([`KeyService::seal_held`]) and returns none
    /// of them: the record never comes back into this memory only to be
    /// copied out again. A software key returns its records as `seal`
    /// does. The caller must collect the held records from the service.
    pub fn seal_held(
        &mut self,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>> {
        self.seal_to(Sealed::Held, content_type, payload, padding)
    }

    fn seal_to(
        &mut self,
        to: Sealed,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>> {
        self.usable(Direction::Seal)?;
        check_sendable(content_type, payload)?;
        // Padding only exists in TLS 1.3. Every length here is checked: a
        // wrapped sum would let a caller's padding turn one content type
        // into another on the wire.
        let padding = match self.version {
            ProtocolVersion::Tls13 => padding,
            ProtocolVersion::Tls12 => 0,
        };
        self.framing().record_len(payload.len(), padding)?;
        // Sized by the first record sealed into it (or, with a host key,
        // replaced by the record the key service returns).
        let mut out = Vec::new();
        // A TLS 1.2 AES-GCM key cannot update itself: it stops at its
        // limit, keeping the last record for an alert, so it can still say
        // close_notify instead of leaving the peer to see a truncation.
        if self.version == ProtocolVersion::Tls12
            && self.sequence >= self.auto_update_limit.saturating_sub(1)
            && (content_type != ContentType::Alert || self.sequence >= self.auto_update_limit)
        {
            return Err(Error::Unusable(UnusableReason::Exhausted));
        }
        if self.sequence >= self.auto_update_limit {
            self.seal_into(
                &mut out,
                to,
                ContentType::Handshake,
                &key_update_message(false),
                0,
            )?;
            self.update()?;
        }
        self.seal_into(&mut out, to, content_type, payload, padding)?;
        Ok(out)
    }

    /// Seals `records` at the next sequence numbers and then puts the
    /// sequence back, so the key is where it was. For a response kept in
    /// reserve (a 500 a host sends if the application fails before it
    /// writes anything): the records and whatever is sent instead share
    /// nonces, so the caller must make sure at most one of them is ever
    /// sent. Refused for a host-resident key (its sequence lives in the key
    /// service) and near the key's limit (no KeyUpdate is sealed ahead).
    pub fn seal_ahead(&mut self, records: &[(ContentType, &[u8])]) -> Result<Vec<u8>> {
        self.usable(Direction::Seal)?;
        if !matches!(self.residency, Residency::Software { .. })
            || self.sequence.saturating_add(records.len() as u64)
                >= self.auto_update_limit.saturating_sub(1)
        {
            return Err(Error::InvalidArgument(
                "records cannot be sealed ahead with this key",
            ));
        }
        let saved = self.sequence;
        let mut out = Vec::new();
        let mut sealed = Ok(());
        for (content_type, payload) in records {
            sealed = check_sendable(*content_type, payload).and_then(|()| {
                self.seal_into(&mut out, Sealed::Returned, *content_type, payload, 0)
            });
            if sealed.is_err() {
                break;
            }
        }
        self.sequence = saved;
        sealed.map(|()| out)
    }

    /// Seals a KeyUpdate message, then moves to the next generation.
    pub fn send_key_update(&mut self, request_update: bool) -> Result<Vec<u8>> {
        self.usable(Direction::Seal)?;
        if self.version != ProtocolVersion::Tls13 {
            return Err(Error::WrongKeyType);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + 5 + 1 + TAG_LEN);
        self.seal_into(
            &mut out,
            Sealed::Returned,
            ContentType::Handshake,
            &key_update_message(request_update),
            0,
        )?;
        self.update()?;
        Ok(out)
    }

    fn next_sequence(&mut self) -> Result<u64> {
        let seq = self.sequence;
        // Sequence numbers never wrap: the last value is never used, so the
        // counter cannot come back to one already used.
        self.sequence = seq
            .checked_add(1)
            .filter(|s| *s != u64::MAX)
            .ok_or(Error::Unusable(UnusableReason::Exhausted))?;
        Ok(seq)
    }

    fn seal_into(
        &mut self,
        out: &mut Vec<u8>,
        to: Sealed,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<()> {
        // Checked before a sequence number is spent on a record that is
        // never sent.
        self.framing().record_len(payload.len(), padding)?;
        let seq = self.next_sequence()?;
        match &self.residency {
            Residency::Software { cipher, iv, .. } => SealParams {
                version: self.version,
                aead: self.aead,
                iv,
                sequence: seq,
            }
            .append(out, content_type, payload, padding, |nonce, aad, text| {
                cipher.seal_in_place(nonce, aad, text)
            }),
            Residency::Host { key_ref, service } if to == Sealed::Held => {
                // The host frames it (`SealParams`) and keeps it: the
                // payload leaves this memory once and the record never
                // enters it. The length is all there is to check here.
                let at = self.position(*key_ref, seq);
                let len = service.seal_held(at, content_type, payload, padding)?;
                if len == self.framing().record_len(payload.len(), padding)? {
                    Ok(())
                } else {
                    Err(Error::KeyService(KeyServiceError::InvalidArgument))
                }
            }
            Residency::Host { key_ref, service } => {
                // The host frames the record the same way (`SealParams`)
                // and returns it whole, so the payload leaves this memory
                // once and the record comes back once.
                let at = self.position(*key_ref, seq);
                let record = service.seal_payload(at, content_type, payload, padding)?;
                self.check_sealed(&record, content_type, payload.len(), padding)?;
                if out.is_empty() {
                    *out = record;
                } else {
                    out.extend_from_slice(&record);
                }
                Ok(())
            }
        }
    }

    /// Framing only: the version and AEAD, with no IV (for lengths).
    fn framing(&self) -> SealParams<'static> {
        SealParams {
            version: self.version,
            aead: self.aead,
            iv: &[0; IV_LEN],
            sequence: 0,
        }
    }

    /// A record the key service sealed has the header and length this key
    /// would have written: a confused host cannot make the record layer
    /// send a record of another type or a stream that no longer parses.
    fn check_sealed(
        &self,
        record: &[u8],
        content_type: ContentType,
        payload_len: usize,
        padding: usize,
    ) -> Result<()> {
        let len = self.framing().record_len(payload_len, padding)?;
        let outer = match self.version {
            ProtocolVersion::Tls13 => ContentType::ApplicationData,
            ProtocolVersion::Tls12 => content_type,
        };
        let header_ok = record.len() == len
            && record[..3] == [outer.code(), 3, 3]
            && usize::from(u16::from_be_bytes([record[3], record[4]])) == len - HEADER_LEN;
        if header_ok {
            Ok(())
        } else {
            Err(Error::KeyService(KeyServiceError::InvalidArgument))
        }
    }

    /// Authenticates and decrypts one whole record, header included. Any
    /// failure makes the key unusable: the connection must close.
    pub fn open(&mut self, record: Vec<u8>) -> Result<(ContentType, Vec<u8>)> {
        self.usable(Direction::Open)?;
        let result = self.open_inner(record, false);
        self.fail_on_error(result)
    }

    /// [`Self::open`] for a host-resident key whose record the key service
    /// holds: `header` is the record's 5-byte header, and the service
    /// opens the body ([`KeyService::open_held`]) without it entering this
    /// memory. A software key refuses with [`Error::WrongKeyType`] and
    /// stays usable; any other failure makes the key unusable, as `open`.
    pub fn open_held(&mut self, header: &[u8]) -> Result<(ContentType, Vec<u8>)> {
        self.usable(Direction::Open)?;
        if !matches!(self.residency, Residency::Host { .. }) {
            return Err(Error::WrongKeyType);
        }
        let result = <[u8; HEADER_LEN]>::try_from(header)
            .map_err(|_| Error::Alert(Alert::DecodeError))
            .and_then(|header| self.open_inner(header.to_vec(), true));
        self.fail_on_error(result)
    }

    /// An open that failed makes the key unusable for good.
    fn fail_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Opens `record`, or with `held`, the record whose header `record`
    /// is and whose body the key service holds.
    fn open_inner(&mut self, mut record: Vec<u8>, held: bool) -> Result<(ContentType, Vec<u8>)> {
        let Some(length) = framing::body_len(&record) else {
            return Err(Error::Alert(Alert::DecodeError));
        };
        let outer_type = record[0];
        let version = [record[1], record[2]];
        let body_len = if held {
            length
        } else {
            record.len() - HEADER_LEN
        };
        if version[0] != 3 || length != body_len {
            return Err(Error::Alert(Alert::DecodeError));
        }
        if length > MAX_CIPHERTEXT {
            return Err(Error::Alert(Alert::RecordOverflow));
        }
        match self.version {
            ProtocolVersion::Tls13 => {
                if outer_type != ContentType::ApplicationData.code() {
                    return Err(Error::Alert(Alert::UnexpectedMessage));
                }
                if length < TAG_LEN + 1 {
                    return Err(Error::Alert(Alert::BadRecordMac));
                }
                let inner_len = length - TAG_LEN;
                // RFC 8446 section 5.4: the whole encoded inner plaintext,
                // padding included, is at most 2^14 + 1 bytes.
                if inner_len > MAX_INNER_PLAINTEXT {
                    return Err(Error::Alert(Alert::RecordOverflow));
                }
                let seq = self.next_sequence()?;
                match &self.residency {
                    Residency::Software { cipher, iv, .. } => {
                        let (header, body) = record.split_at_mut(HEADER_LEN);
                        let (text, tag) = body.split_at_mut(inner_len);
                        cipher.open_in_place(&xor_nonce(iv, seq), header, text, tag)?;
                        record.truncate(HEADER_LEN + inner_len);
                        record.drain(..HEADER_LEN);
                    }
                    Residency::Host { key_ref, service } => {
                        let (aad, body) = record.split_at(HEADER_LEN);
                        let at = self.position(*key_ref, seq);
                        let plain = if held {
                            service.open_held(at, aad)
                        } else {
                            service.open_record(at, aad, body)
                        }
                        .map_err(|_| Error::Alert(Alert::BadRecordMac))?;
                        if plain.len() != inner_len {
                            return Err(Error::Alert(Alert::BadRecordMac));
                        }
                        record = plain;
                    }
                }
                // Strip zero padding; the last non-zero byte is the type.
                let end = record
                    .iter()
                    .rposition(|b| *b != 0)
                    .ok_or(Error::Alert(Alert::UnexpectedMessage))?;
                if end + 1 > MAX_INNER_PLAINTEXT {
                    return Err(Error::Alert(Alert::RecordOverflow));
                }
                let inner_type = record[end];
                record.truncate(end);
                let content_type = check_received(inner_type, &record)?;
                Ok((content_type, record))
            }
            ProtocolVersion::Tls12 => {
                let explicit = explicit_nonce_len(self.version, self.aead);
                if length < explicit + TAG_LEN {
                    return Err(Error::Alert(Alert::BadRecordMac));
                }
                let text_len = length - explicit - TAG_LEN;
                if text_len > MAX_PLAINTEXT {
                    return Err(Error::Alert(Alert::RecordOverflow));
                }
                let seq = self.next_sequence()?;
                let aad = tls12_aad(seq, outer_type, version, text_len);
                match &self.residency {
                    Residency::Software { cipher, iv, .. } => {
                        let nonce = if explicit > 0 {
                            let mut n = [0u8; NONCE_LEN];
                            n[..4].copy_from_slice(&iv[..4]);
                            n[4..].copy_from_slice(&record[HEADER_LEN..HEADER_LEN + explicit]);
                            n
                        } else {
                            xor_nonce(iv, seq)
                        };
                        let text_start = HEADER_LEN + explicit;
                        let (text, tag) = record[text_start..].split_at_mut(text_len);
                        cipher.open_in_place(&nonce, &aad, text, tag)?;
                        record.truncate(text_start + text_len);
                        record.drain(..text_start);
                    }
                    Residency::Host { key_ref, service } => {
                        let body = &record[HEADER_LEN..];
                        let at = self.position(*key_ref, seq);
                        let plain = if held {
                            service.open_held(at, &aad)
                        } else {
                            service.open_record(at, &aad, body)
                        }
                        .map_err(|_| Error::Alert(Alert::BadRecordMac))?;
                        if plain.len() != text_len {
                            return Err(Error::Alert(Alert::BadRecordMac));
                        }
                        record = plain;
                    }
                }
                let content_type = check_received(outer_type, &record)?;
                Ok((content_type, record))
            }
        }
    }

    /// Moves to the next key generation (RFC 8446 section 7.2).
    pub fn update(&mut self) -> Result<()> {
        if self.failed {
            return Err(Error::Unusable(UnusableReason::Failed));
        }
        if self.version != ProtocolVersion::Tls13 {
            return Err(Error::WrongKeyType);
        }
        let generation = self
            .generation
            .checked_add(1)
            .ok_or(Error::Unusable(UnusableReason::Exhausted))?;
        match &mut self.residency {
            Residency::Software {
                cipher,
                key,
                iv,
                secret,
            } => {
                let current = secret.as_ref().ok_or(Error::WrongKeyType)?;
                let next = next_traffic_secret(self.aead, current)?;
                let (next_key, next_iv) = traffic_key_and_iv(self.aead, &next)?;
                *cipher = RecordCipher::new(self.aead, &next_key)?;
                *key = next_key;
                iv.copy_from_slice(&next_iv);
                *secret = Some(next);
            }
            Residency::Host { key_ref, service } => service.update(*key_ref, self.generation)?,
        }
        self.generation = generation;
        self.sequence = 0;
        self.fingerprint = self.compute_fingerprint();
        Ok(())
    }
}

/// Where a host-resident key's sealed records go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sealed {
    /// Back into the record layer, to be returned ([`KeyService::seal_payload`]).
    Returned,
    /// Kept by the key service for its caller ([`KeyService::seal_held`]).
    Held,
}

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;

    use super::*;

    /// A key service that answers every seal with the same record.
    struct Confused(Vec<u8>);

    impl KeyService for Confused {
        fn seal_record(
            &self,
            _: KeyPosition,
            _: &[u8],
            _: &[u8],
        ) -> Result<Vec<u8>, KeyServiceError> {
            Ok(self.0.clone())
        }

        fn seal_payload(
            &self,
            _: KeyPosition,
            _: ContentType,
            _: &[u8],
            _: usize,
        ) -> Result<Vec<u8>, KeyServiceError> {
            Ok(self.0.clone())
        }

        fn seal_held(
            &self,
            _: KeyPosition,
            _: ContentType,
            _: &[u8],
            _: usize,
        ) -> Result<usize, KeyServiceError> {
            Ok(self.0.len())
        }

        fn open_record(
            &self,
            _: KeyPosition,
            _: &[u8],
            _: &[u8],
        ) -> Result<Vec<u8>, KeyServiceError> {
            Err(KeyServiceError::AuthenticationFailed)
        }

        fn open_held(&self, _: KeyPosition, _: &[u8]) -> Result<Vec<u8>, KeyServiceError> {
            Ok(self.0.clone())
        }

        fn update(&self, _: u64, _: u32) -> Result<(), KeyServiceError> {
            Ok(())
        }
    }

    /// A TLS 1.3 AES-128-GCM key held by `service`.
    fn host_key(direction: Direction, service: &'static Confused) -> TrafficKey {
        let mut m = TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::Aes128Gcm,
            direction,
            &[7; 32],
            0,
            1,
        )
        .unwrap();
        m.host_key_ref = Some(1);
        m.key = Zeroizing::new(Vec::new());
        m.iv = Zeroizing::new(Vec::new());
        m.secret = Zeroizing::new(Vec::new());
        TrafficKey::from_material(m, Some(service)).unwrap()
    }

    /// What the key service returns is sent only if it is framed as this
    /// key would frame it: right outer type, version, length field and
    /// length.
    #[test]
    fn a_record_the_key_service_framed_wrongly_is_not_sent() {
        // TLS 1.3, 2 bytes of payload: 5 + 2 + 1 + 16 = 24 bytes.
        let good = [&[23u8, 3, 3, 0, 19][..], &[0; 19]].concat();
        let wrong = [
            [&[22u8, 3, 3, 0, 19][..], &[0; 19]].concat(),
            [&[23u8, 3, 1, 0, 19][..], &[0; 19]].concat(),
            [&[23u8, 3, 3, 0, 18][..], &[0; 19]].concat(),
            [&[23u8, 3, 3, 0, 19][..], &[0; 18]].concat(),
            good[..3].to_vec(),
            Vec::new(),
        ];
        for (i, answer) in core::iter::once(good).chain(wrong).enumerate() {
            let service: &'static Confused = Box::leak(Box::new(Confused(answer.clone())));
            let mut key = host_key(Direction::Seal, service);
            let sealed = key.seal(ContentType::ApplicationData, b"hi", 0);
            if i == 0 {
                assert_eq!(sealed.unwrap(), answer);
            } else {
                assert!(
                    matches!(
                        sealed,
                        Err(Error::KeyService(KeyServiceError::InvalidArgument))
                    ),
                    "answer {i} was sent"
                );
            }
        }
    }

    /// A record the key service holds is not seen here, so its length is
    /// checked: one the key would not have framed fails the seal.
    #[test]
    fn a_held_record_of_the_wrong_length_fails_the_seal() {
        for (len, ok) in [(24, true), (23, false), (25, false), (0, false)] {
            let service: &'static Confused = Box::leak(Box::new(Confused(vec![0; len])));
            let mut key = host_key(Direction::Seal, service);
            let sealed = key.seal_held(ContentType::ApplicationData, b"hi", 0);
            if ok {
                // Held, so nothing comes back here.
                assert_eq!(sealed.unwrap(), Vec::<u8>::new());
            } else {
                assert!(
                    matches!(
                        sealed,
                        Err(Error::KeyService(KeyServiceError::InvalidArgument))
                    ),
                    "length {len} was accepted"
                );
            }
        }
    }

    /// `open_held` checks the header it is given and the plaintext the
    /// service returns as `open` checks a whole record.
    #[test]
    fn a_held_record_is_checked_like_a_passed_one() {
        // 2 bytes of data, its inner type, and the tag: a body of 19.
        let header = [23u8, 3, 3, 0, 19];
        let service: &'static Confused = Box::leak(Box::new(Confused(b"hi\x17".to_vec())));
        let mut key = host_key(Direction::Open, service);
        assert_eq!(
            key.open_held(&header).unwrap(),
            (ContentType::ApplicationData, b"hi".to_vec())
        );
        // The service's plaintext must have the length the header says.
        let mut key = host_key(Direction::Open, service);
        assert!(matches!(
            key.open_held(&[23, 3, 3, 0, 20]),
            Err(Error::Alert(Alert::BadRecordMac))
        ));
        assert!(matches!(
            key.open_held(&header),
            Err(Error::Unusable(UnusableReason::Failed))
        ));
        // Not a header: a decode error, and the key is done.
        for bad in [&header[..4], &[23, 3, 3, 0, 19, 0][..], &[22, 3, 3, 0, 19]] {
            let mut key = host_key(Direction::Open, service);
            assert!(key.open_held(bad).is_err(), "{bad:?}");
            assert!(key.open_held(&header).is_err(), "{bad:?}");
        }
    }

    /// A key held in this memory has no host copy to open: it refuses
    /// without failing, so the caller can pass the record instead.
    #[test]
    fn a_software_key_refuses_open_held_and_stays_usable() {
        let (mut seal, mut open) = pair(ProtocolVersion::Tls13);
        let record = seal.seal(ContentType::ApplicationData, b"data", 0).unwrap();
        assert!(matches!(
            open.open_held(&record[..HEADER_LEN]),
            Err(Error::WrongKeyType)
        ));
        assert_eq!(
            open.open(record).unwrap(),
            (ContentType::ApplicationData, b"data".to_vec())
        );
        // Sealing "held" with a software key returns the record as `seal`.
        let held = seal
            .seal_held(ContentType::ApplicationData, b"more", 0)
            .unwrap();
        assert_eq!(open.open(held).unwrap().1, b"more");
    }

    /// The check the host makes before it wraps material for an instance:
    /// a TLS 1.3 secret of the wrong length, or a key or IV it does not
    /// derive, is refused; TLS 1.2 material (no secret) passes.
    #[test]
    fn check_derivation_refuses_what_the_secret_does_not_derive() {
        let good = || {
            TrafficKeyMaterial::from_tls13_secret(
                AeadAlgorithm::Aes256Gcm,
                Direction::Seal,
                &[7; 48],
                0,
                1,
            )
            .unwrap()
        };
        good().check_derivation().unwrap();
        let refused = |m: TrafficKeyMaterial| {
            matches!(
                m.check_derivation(),
                Err(Error::Blob(BlobError::InvalidState))
            )
        };
        let mut m = good();
        m.key[0] ^= 1;
        assert!(refused(m));
        let mut m = good();
        m.iv[11] ^= 1;
        assert!(refused(m));
        let mut m = good();
        m.secret = Zeroizing::new(vec![7; 32]);
        assert!(refused(m), "a SHA-256-length secret for a SHA-384 suite");
        let tls12 = TrafficKeyMaterial::new(
            ProtocolVersion::Tls12,
            AeadAlgorithm::Aes128Gcm,
            Direction::Seal,
            &[7; 16],
            &[9; 12],
            &[],
            0,
            1,
        );
        tls12.check_derivation().unwrap();
    }

    fn pair(version: ProtocolVersion) -> (TrafficKey, TrafficKey) {
        let key = |direction| {
            let m = match version {
                ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
                    AeadAlgorithm::ChaCha20Poly1305,
                    direction,
                    &[7; 32],
                    0,
                    1,
                )
                .unwrap(),
                ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                    version,
                    AeadAlgorithm::Aes128Gcm,
                    direction,
                    &[7; 16],
                    &[9; 12],
                    &[],
                    0,
                    1,
                ),
            };
            TrafficKey::from_material(m, None).unwrap()
        };
        (key(Direction::Seal), key(Direction::Open))
    }

    #[test]
    fn padding_that_would_wrap_a_length_is_refused() {
        let (mut seal, mut open) = pair(ProtocolVersion::Tls13);
        for padding in [
            usize::MAX,
            usize::MAX - 1,
            usize::MAX - 5,
            MAX_INNER_PLAINTEXT,
        ] {
            assert_eq!(
                seal.seal(ContentType::ApplicationData, b"data", padding),
                Err(Error::Alert(Alert::RecordOverflow)),
                "padding {padding}"
            );
        }
        // The key is still good, and a legal padding still round-trips as
        // application data.
        let wire = seal
            .seal(
                ContentType::ApplicationData,
                b"data",
                MAX_INNER_PLAINTEXT - 5,
            )
            .unwrap();
        assert_eq!(
            open.open(wire).unwrap(),
            (ContentType::ApplicationData, b"data".to_vec())
        );
    }

    #[test]
    fn tls12_ignores_padding_of_any_size() {
        let (mut seal, mut open) = pair(ProtocolVersion::Tls12);
        let wire = seal
            .seal(ContentType::ApplicationData, b"data", usize::MAX)
            .unwrap();
        assert_eq!(
            open.open(wire).unwrap(),
            (ContentType::ApplicationData, b"data".to_vec())
        );
    }
}
