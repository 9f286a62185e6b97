//! One guest instance and the keys it holds, seen from the host.
//!
//! The host drives the guest through its WIT exports and checks what comes
//! back: a record the guest seals must parse as whole records, a payload
//! must fit the TLS limits, a public key must have its length and id. The
//! host never trusts a length, an index or a type the guest returns.

use std::sync::atomic::{AtomicU64, Ordering};

use keyferry_guest::blob::{self, PUBLIC_KEY_LEN};
use keyferry_guest::record::{HEADER_LEN, MAX_CIPHERTEXT, MAX_PLAINTEXT, TrafficKeyMaterial};
use keyferry_guest::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::bindings::DataplaneHostKeys;
use crate::bindings::exports::keyferry::dataplane::types as wit;
use crate::convert::full::{blob_error_from_wit, error_from_wit};
use crate::error::{Error, Result};
use crate::sandbox::{ExecutionBound, Sandboxed, StoreState};

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// A guest instance's public exchange key: blobs for it are sealed to this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeKey {
    /// SHA-256 of the public key, first 16 bytes.
    pub id: [u8; 16],
    /// X25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

impl ExchangeKey {
    /// Checks what a guest reported: the length, and that the id is the
    /// key's own.
    pub(crate) fn checked(id: &[u8], public_key: &[u8]) -> Result<Self> {
        let public_key: [u8; PUBLIC_KEY_LEN] = public_key
            .try_into()
            .map_err(|_| Error::InvalidGuestResult("exchange key length"))?;
        if id != blob::key_id(&public_key) {
            return Err(Error::InvalidGuestResult(
                "exchange key id does not match the key",
            ));
        }
        Ok(Self {
            id: blob::key_id(&public_key),
            public_key,
        })
    }
}

/// An imported traffic key, owned by one guest instance. Not `Clone`:
/// exporting consumes it, as CryptExportKey destroys the source key.
pub struct TrafficKeyHandle {
    resource: ResourceAny,
    instance: u64,
}

impl TrafficKeyHandle {
    /// A second handle to the same guest resource. Only for tests that
    /// check the guest and host survive use after export; real code never
    /// needs it, since export consumes the handle.
    #[doc(hidden)]
    pub fn dangerous_duplicate(&self) -> Self {
        Self {
            resource: self.resource,
            instance: self.instance,
        }
    }
}

/// An imported MAC key, owned by one guest instance.
pub struct MacKeyHandle {
    resource: ResourceAny,
    instance: u64,
}

pub use keyferry_guest::record::TrafficKeyState;

/// A running guest: its store, its bindings and its exchange key.
pub struct GuestInstance {
    sandbox: Sandboxed<DataplaneHostKeys>,
    exchange: ExchangeKey,
    id: u64,
}

impl GuestInstance {
    pub(crate) fn new(
        store: Store<StoreState>,
        bindings: DataplaneHostKeys,
        bound: ExecutionBound,
    ) -> Result<Self> {
        let mut sandbox = Sandboxed::new(store, bindings, bound);
        let key = sandbox.call(|s, b| b.keyferry_dataplane_keys().call_instance_exchange_key(s))?;
        let exchange = ExchangeKey::checked(&key.id, &key.public_key)?;
        Ok(Self {
            sandbox,
            exchange,
            id: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// This instance's exchange key.
    pub fn exchange_key(&self) -> ExchangeKey {
        self.exchange
    }

    /// Whether an earlier trap has made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.is_poisoned()
    }

    /// Seals traffic-key material to this instance (host side of the
    /// handoff, or any other handshake engine's keys). The material is
    /// zeroized when it drops.
    pub fn seal_traffic_key(&self, material: &TrafficKeyMaterial) -> Result<Vec<u8>> {
        Ok(blob::seal_traffic_key(&self.exchange.public_key, material)?)
    }

    /// Seals a MAC key to this instance.
    pub fn seal_mac_key(&self, key: &keyferry_guest::mac::MacKey) -> Result<Vec<u8>> {
        Ok(blob::seal_mac_key(&self.exchange.public_key, key)?)
    }

    pub(crate) fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>, &DataplaneHostKeys) -> wasmtime::Result<R>,
    ) -> Result<R> {
        self.sandbox.call(f)
    }

    fn own(&self, resource: ResourceAny) -> TrafficKeyHandle {
        TrafficKeyHandle {
            resource,
            instance: self.id,
        }
    }

    fn check(&self, instance: u64) -> Result<()> {
        if instance == self.id {
            Ok(())
        } else {
            Err(Error::ForeignHandle)
        }
    }

    /// CryptImportKey: hands a sealed traffic-key blob to the guest.
    pub fn import_traffic_key(&mut self, blob: &[u8]) -> Result<TrafficKeyHandle> {
        let r = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_import(s, blob)
        })?;
        Ok(self.own(r.map_err(|e| blob_error_from_wit(e, blob))?))
    }

    /// Protects one record in the guest; returns wire bytes (one record, or
    /// a KeyUpdate record and then the record).
    pub fn seal(
        &mut self,
        key: &TrafficKeyHandle,
        content_type: ContentType,
        payload: &[u8],
        padding: u16,
    ) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let ct = content_type_to_wit(content_type);
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_keys().traffic_key().call_seal(
                    s,
                    key.resource,
                    ct,
                    payload,
                    padding,
                )
            })?
            .map_err(error_from_wit)?;
        let records = count_records(&out).ok_or(Error::InvalidGuestResult(
            "sealed output is not whole records",
        ))?;
        if records == 0 || records > 2 {
            return Err(Error::InvalidGuestResult("sealed output record count"));
        }
        Ok(out)
    }

    /// Opens one whole record in the guest.
    pub fn open(
        &mut self,
        key: &TrafficKeyHandle,
        record: &[u8],
    ) -> Result<(ContentType, Vec<u8>)> {
        self.check(key.instance)?;
        let opened = self
            .call(|s, b| {
                b.keyferry_dataplane_keys()
                    .traffic_key()
                    .call_open(s, key.resource, record)
            })?
            .map_err(error_from_wit)?;
        if opened.payload.len() > MAX_PLAINTEXT {
            return Err(Error::InvalidGuestResult("opened payload over 2^14 bytes"));
        }
        Ok((content_type_from_wit(opened.content_type), opened.payload))
    }

    /// Seals a KeyUpdate message and moves the seal key to its next generation.
    pub fn send_key_update(
        &mut self,
        key: &TrafficKeyHandle,
        request_update: bool,
    ) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_keys()
                    .traffic_key()
                    .call_send_key_update(s, key.resource, request_update)
            })?
            .map_err(error_from_wit)?;
        if count_records(&out) != Some(1) {
            return Err(Error::InvalidGuestResult(
                "key update output is not one record",
            ));
        }
        Ok(out)
    }

    /// Moves a key to its next generation (after opening the peer's KeyUpdate).
    pub fn update(&mut self, key: &TrafficKeyHandle) -> Result<()> {
        self.check(key.instance)?;
        self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_update(s, key.resource)
        })?
        .map_err(error_from_wit)
    }

    /// The key's non-secret state.
    pub fn state(&mut self, key: &TrafficKeyHandle) -> Result<TrafficKeyState> {
        self.check(key.instance)?;
        let s = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_state(s, key.resource)
        })?;
        Ok(state_from_wit(s))
    }

    /// Takes the plaintext and ciphertext buffered at handoff; once.
    pub fn take_buffered(&mut self, key: &TrafficKeyHandle) -> Result<(Vec<u8>, Vec<u8>)> {
        self.check(key.instance)?;
        let b = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_take_buffered(s, key.resource)
        })?;
        Ok((b.plaintext, b.ciphertext))
    }

    /// CryptExportKey: the guest seals the key's exact state to `recipient`
    /// and destroys its copy. The handle is consumed whatever the outcome.
    pub fn export_traffic_key(
        &mut self,
        key: TrafficKeyHandle,
        recipient: &ExchangeKey,
    ) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_keys().traffic_key().call_export(
                    s,
                    key.resource,
                    &recipient.public_key,
                )
            })?
            .map_err(error_from_wit)?;
        let header = blob::peek_header(&out)
            .map_err(|_| Error::InvalidGuestResult("exported blob header"))?;
        if header.key_id != recipient.id {
            return Err(Error::InvalidGuestResult(
                "exported blob addressed to another key",
            ));
        }
        Ok(out)
    }

    /// Drops a traffic key in the guest (its material is zeroized there).
    pub fn drop_traffic_key(&mut self, key: TrafficKeyHandle) -> Result<()> {
        self.check(key.instance)?;
        self.call(|s, _| key.resource.resource_drop(s))
    }

    /// Imports a sealed MAC-key blob.
    pub fn import_mac_key(&mut self, blob: &[u8]) -> Result<MacKeyHandle> {
        let r = self
            .call(|s, b| b.keyferry_dataplane_keys().mac_key().call_import(s, blob))?
            .map_err(|e| blob_error_from_wit(e, blob))?;
        Ok(MacKeyHandle {
            resource: r,
            instance: self.id,
        })
    }

    /// The full-length MAC of `data`, computed in the guest.
    pub fn mac_compute(&mut self, key: &MacKeyHandle, data: &[u8]) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let tag = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .mac_key()
                .call_compute(s, key.resource, data)
        })?;
        if tag.len() != 32 && tag.len() != 48 {
            return Err(Error::InvalidGuestResult("mac tag length"));
        }
        Ok(tag)
    }

    /// Verifies a tag in the guest (constant time there).
    pub fn mac_verify(&mut self, key: &MacKeyHandle, data: &[u8], tag: &[u8]) -> Result<bool> {
        self.check(key.instance)?;
        self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .mac_key()
                .call_verify(s, key.resource, data, tag)
        })?
        .map_err(error_from_wit)
    }

    /// Exports a MAC key, consuming the handle.
    pub fn export_mac_key(
        &mut self,
        key: MacKeyHandle,
        recipient: &ExchangeKey,
    ) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        self.call(|s, b| {
            b.keyferry_dataplane_keys().mac_key().call_export(
                s,
                key.resource,
                &recipient.public_key,
            )
        })?
        .map_err(error_from_wit)
    }

    /// Stateless AEAD seal in the guest (known-answer tests).
    pub fn aead_seal(
        &mut self,
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        pt: &[u8],
    ) -> Result<Vec<u8>> {
        let a = aead_to_wit(alg);
        self.call(|s, b| {
            b.keyferry_dataplane_primitives()
                .call_aead_seal(s, a, key, nonce, aad, pt)
        })?
        .map_err(error_from_wit)
    }

    /// Stateless AEAD open in the guest (known-answer tests).
    pub fn aead_open(
        &mut self,
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let a = aead_to_wit(alg);
        self.call(|s, b| {
            b.keyferry_dataplane_primitives()
                .call_aead_open(s, a, key, nonce, aad, ct)
        })?
        .map_err(error_from_wit)
    }

    /// Stateless HMAC in the guest (known-answer tests).
    pub fn hmac(&mut self, alg: MacAlgorithm, key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let a = mac_to_wit(alg);
        self.call(|s, b| b.keyferry_dataplane_primitives().call_hmac(s, a, key, data))
    }

    /// TLS 1.3 HKDF-Expand-Label in the guest.
    pub fn hkdf_expand_label(
        &mut self,
        alg: MacAlgorithm,
        secret: &[u8],
        label: &str,
        context: &[u8],
        length: u16,
    ) -> Result<Vec<u8>> {
        let a = mac_to_wit(alg);
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_primitives()
                    .call_hkdf_expand_label(s, a, secret, label, context, length)
            })?
            .map_err(error_from_wit)?;
        if out.len() != length as usize {
            return Err(Error::InvalidGuestResult("hkdf output length"));
        }
        Ok(out)
    }

    /// Runs the guest's self-check (known answers and round trips).
    pub fn self_check(&mut self) -> Result<Result<String, String>> {
        self.call(|s, b| b.call_self_check(s))
    }

    /// The guest's description of what it supports (JSON).
    pub fn describe(&mut self) -> Result<String> {
        self.call(|s, b| b.call_describe(s))
    }
}

/// Counts whole TLS records in `bytes`; `None` if they do not split exactly.
pub fn count_records(mut bytes: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !bytes.is_empty() {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
        if len > MAX_CIPHERTEXT || bytes.len() < HEADER_LEN + len {
            return None;
        }
        bytes = &bytes[HEADER_LEN + len..];
        n += 1;
    }
    Some(n)
}

/// The guest's report of a key's state, in the host's type.
pub(crate) fn state_from_wit(s: wit::TrafficKeyState) -> TrafficKeyState {
    TrafficKeyState {
        version: match s.version {
            wit::ProtocolVersion::Tls12 => ProtocolVersion::Tls12,
            wit::ProtocolVersion::Tls13 => ProtocolVersion::Tls13,
        },
        aead: aead_from_wit(s.aead),
        direction: match s.direction {
            wit::Direction::Seal => Direction::Seal,
            wit::Direction::Open => Direction::Open,
        },
        sequence: s.sequence,
        generation: s.generation,
        exportable: s.exportable,
        host_resident: matches!(s.residency, wit::Residency::Host),
        connection_id: s.connection_id,
        auto_update_limit: s.auto_update_limit,
    }
}

fn content_type_to_wit(t: ContentType) -> wit::ContentType {
    match t {
        ContentType::ChangeCipherSpec => wit::ContentType::ChangeCipherSpec,
        ContentType::Alert => wit::ContentType::Alert,
        ContentType::Handshake => wit::ContentType::Handshake,
        ContentType::ApplicationData => wit::ContentType::ApplicationData,
    }
}

fn content_type_from_wit(t: wit::ContentType) -> ContentType {
    match t {
        wit::ContentType::ChangeCipherSpec => ContentType::ChangeCipherSpec,
        wit::ContentType::Alert => ContentType::Alert,
        wit::ContentType::Handshake => ContentType::Handshake,
        wit::ContentType::ApplicationData => ContentType::ApplicationData,
    }
}

fn aead_to_wit(a: AeadAlgorithm) -> wit::AeadAlgorithm {
    match a {
        AeadAlgorithm::Aes128Gcm => wit::AeadAlgorithm::Aes128Gcm,
        AeadAlgorithm::Aes256Gcm => wit::AeadAlgorithm::Aes256Gcm,
        AeadAlgorithm::ChaCha20Poly1305 => wit::AeadAlgorithm::Chacha20Poly1305,
    }
}

fn aead_from_wit(a: wit::AeadAlgorithm) -> AeadAlgorithm {
    match a {
        wit::AeadAlgorithm::Aes128Gcm => AeadAlgorithm::Aes128Gcm,
        wit::AeadAlgorithm::Aes256Gcm => AeadAlgorithm::Aes256Gcm,
        wit::AeadAlgorithm::Chacha20Poly1305 => AeadAlgorithm::ChaCha20Poly1305,
    }
}

fn mac_to_wit(m: MacAlgorithm) -> wit::MacAlgorithm {
    match m {
        MacAlgorithm::HmacSha256 => wit::MacAlgorithm::HmacSha256,
        MacAlgorithm::HmacSha384 => wit::MacAlgorithm::HmacSha384,
    }
}
