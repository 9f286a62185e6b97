//! The host key store: host-resident ("hardware") traffic keys.
//!
//! Like a key in an HSM, the material never leaves: a blob for such a key
//! carries only a reference, the guest asks the store to seal and open
//! record bodies through the `key-service` import, and exporting the key
//! from a guest never destroys it here.
//!
//! The store enforces what a guest cannot be trusted to: a key never seals
//! twice at one sequence number, so even a malicious guest cannot make it
//! reuse an AES-GCM nonce; an AES-GCM key stops at the RFC 8446 section 5.5
//! usage limit; and each reference works only for the one guest store it
//! was granted to. The host grants a reference when it seals the key's blob
//! to an instance, moves the grant when the key migrates, and revokes it
//! when the key is exported anywhere else, so an instance that gave a key
//! away can no longer seal with it or move it on. Wasm has no AES
//! instructions; the host has, so this is also the fast path for AES-GCM
//! (`host_aead`: ring's AEAD, wiped on drop).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use keyferry_record::cipher::{NONCE_LEN, TAG_LEN};
use keyferry_record::key_service::{KeyPosition, KeyService};
use keyferry_record::keyschedule::{IV_LEN, next_traffic_secret, traffic_key_and_iv};
use keyferry_record::record::{SealParams, TrafficKeyMaterial, explicit_nonce_len, xor_nonce};
use keyferry_record::{AeadAlgorithm, ContentType, Direction, KeyServiceError, ProtocolVersion};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{HandshakeError, Result};
use crate::host_aead::HostAead;

struct HostKey {
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    direction: Direction,
    cipher: HostAead,
    iv: Zeroizing<[u8; IV_LEN]>,
    secret: Option<Zeroizing<Vec<u8>>>,
    generation: u32,
    /// The lowest sequence number this key may still seal at.
    next_seal: u64,
    /// The guest store allowed to use the key, if any.
    holder: Option<u64>,
}

/// AES-GCM records one key may protect (RFC 8446 section 5.5: 2^24.5).
pub const AES_GCM_USAGE_LIMIT: u64 = 23_726_566;

/// Host-resident traffic keys, shared by every guest instance of an engine.
#[derive(Default)]
pub struct HostKeyStore {
    keys: Mutex<HashMap<u64, HostKey>>,
    /// Live instances by exchange-key id: where a migrating key's grant goes.
    instances: Mutex<HashMap<[u8; 16], u64>>,
    /// Bytes the key-service import read out of guests' memory.
    from_guests: AtomicU64,
    /// Bytes the key-service import returned into guests' memory.
    to_guests: AtomicU64,
    /// Record bytes the key-service import kept in the host.
    held: AtomicU64,
}

/// What the key-service import has moved across the sandbox boundary since
/// the store was made: each byte is one copy out of a guest's linear memory
/// or into it. `keyferry bench` divides it by the records it sealed and
/// opened to count the copies a host-resident key costs per record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyServiceTraffic {
    /// Bytes read out of guests' memory (AAD, plaintext, record bodies).
    pub from_guests: u64,
    /// Bytes returned into guests' memory (sealed records, plaintext).
    pub to_guests: u64,
    /// Record bytes that stayed in the host instead: records sealed with
    /// `seal-held`, and the bodies `open-held` opened. Not crossings; a
    /// caller that counts what a guest call returned or was passed
    /// subtracts them.
    pub held: u64,
}

impl HostKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves key material into the store and returns material for a
    /// host-resident blob: same state, the secrets replaced by a random
    /// reference. The input's secret fields are zeroized when it drops here.
    ///
    /// Like a key in an HSM, it stays until [`HostKeyStore::remove`]: remove
    /// it when its connection ends (exporting it from a guest never does).
    pub fn insert(&self, material: TrafficKeyMaterial) -> Result<TrafficKeyMaterial> {
        if material.host_key_ref.is_some() {
            return Err(HandshakeError::Export("material is already host-resident").into());
        }
        let iv: [u8; IV_LEN] = material.iv[..]
            .try_into()
            .map_err(|_| HandshakeError::Export("iv length"))?;
        let secret = match material.version {
            ProtocolVersion::Tls13 => {
                let (key, derived_iv) = traffic_key_and_iv(material.aead, &material.secret)?;
                let same = key[..].ct_eq(&material.key[..]) & derived_iv[..].ct_eq(&iv[..]);
                if !bool::from(same) {
                    return Err(HandshakeError::Export(
                        "key and iv do not derive from the traffic secret",
                    )
                    .into());
                }
                Some(Zeroizing::new(material.secret.to_vec()))
            }
            ProtocolVersion::Tls12 => None,
        };
        let key = HostKey {
            version: material.version,
            aead: material.aead,
            direction: material.direction,
            cipher: HostAead::new(material.aead, &material.key)
                .map_err(|_| HandshakeError::Export("key length"))?,
            iv: Zeroizing::new(iv),
            secret,
            generation: material.generation,
            next_seal: material.sequence,
            holder: None,
        };
        // References are capabilities: random, so a guest that was never
        // given one cannot guess another connection's key.
        let mut keys = self.lock();
        let key_ref = loop {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes)
                .map_err(|_| HandshakeError::Export("no system randomness"))?;
            let candidate = u64::from_le_bytes(bytes);
            if candidate != 0 && !keys.contains_key(&candidate) {
                break candidate;
            }
        };
        keys.insert(key_ref, key);
        drop(keys);
        let mut reference = material;
        reference.key = Zeroizing::new(Vec::new());
        reference.iv = Zeroizing::new(Vec::new());
        reference.secret = Zeroizing::new(Vec::new());
        reference.host_key_ref = Some(key_ref);
        Ok(reference)
    }

    /// Destroys a host-resident key (the connection is over); its material
    /// is zeroized as it drops.
    pub fn remove(&self, key_ref: u64) -> bool {
        self.lock().remove(&key_ref).is_some()
    }

    /// The key-service import's traffic so far.
    pub fn traffic(&self) -> KeyServiceTraffic {
        KeyServiceTraffic {
            from_guests: self.from_guests.load(Ordering::Relaxed),
            to_guests: self.to_guests.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
        }
    }

    /// Counts one key-service call's copies across the boundary.
    pub(crate) fn count_traffic(&self, from_guest: usize, to_guest: usize) {
        self.from_guests
            .fetch_add(from_guest as u64, Ordering::Relaxed);
        self.to_guests.fetch_add(to_guest as u64, Ordering::Relaxed);
    }

    /// Counts record bytes a key-service call kept in the host.
    pub(crate) fn count_held(&self, bytes: usize) {
        self.held.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seals a record body read from `plaintext` (for a guest, straight
    /// from its linear memory) into one buffer of the body's final size:
    /// the explicit nonce of a TLS 1.2 AES-GCM body, the ciphertext and the
    /// tag. That is the only copy the host makes; it is sealed in place.
    /// With a `caller`, only the key's holder may use it (checked in the
    /// same lookup).
    fn seal_from(
        &self,
        caller: Option<u64>,
        at: KeyPosition,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        if plaintext.len() > keyferry_record::record::MAX_INNER_PLAINTEXT || aad.len() > 13 {
            return Err(KeyServiceError::InvalidArgument);
        }
        let mut keys = self.lock();
        let key = Self::seal_key(&mut keys, caller, at)?;
        let nonce = xor_nonce(&key.iv, at.sequence);
        let explicit = explicit_nonce_len(key.version, key.aead);
        let mut body = Vec::with_capacity(explicit + plaintext.len() + TAG_LEN);
        body.extend_from_slice(&nonce[NONCE_LEN - explicit..]);
        body.extend_from_slice(plaintext);
        let tag = key
            .cipher
            .seal_in_place(&nonce, aad, &mut body[explicit..])
            .map_err(|_| KeyServiceError::InvalidArgument)?;
        body.extend_from_slice(&tag);
        Ok(body)
    }

    /// Frames and seals a whole record (the `seal-payload` import) read
    /// from `payload`, for a guest straight from its linear memory, into
    /// one buffer of the record's size: laid out by the record layer's own
    /// [`SealParams`], sealed in place. `caller` as for
    /// [`Self::seal_from`].
    fn seal_payload_from(
        &self,
        caller: Option<u64>,
        at: KeyPosition,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>, KeyServiceError> {
        let mut record = Vec::new();
        self.seal_payload_into(&mut record, caller, at, content_type, payload, padding)?;
        Ok(record)
    }

    /// [`Self::seal_payload_from`], appending the record to `out` (the
    /// `seal-held` import's held records) and returning its length. On an
    /// error `out` is as it was.
    pub(crate) fn seal_payload_into(
        &self,
        out: &mut Vec<u8>,
        caller: Option<u64>,
        at: KeyPosition,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<usize, KeyServiceError> {
        let mut keys = self.lock();
        // Framing first: a record that cannot be framed spends no sequence
        // number. Only a holder learns how a key frames (anyone else gets
        // unknown-key, as from `seal_key`).
        let framing = keys
            .get(&at.key_ref)
            .filter(|key| held_by(key, caller))
            .map(|key| SealParams {
                version: key.version,
                aead: key.aead,
                iv: &[0; IV_LEN],
                sequence: at.sequence,
            })
            .ok_or(KeyServiceError::UnknownKey)?;
        let len = framing
            .record_len(payload.len(), padding)
            .map_err(|_| KeyServiceError::InvalidArgument)?;
        let key = Self::seal_key(&mut keys, caller, at)?;
        let start = out.len();
        let sealed = SealParams {
            iv: &key.iv,
            ..framing
        }
        .append(out, content_type, payload, padding, |nonce, aad, text| {
            key.cipher
                .seal_in_place(nonce, aad, text)
                .map_err(|_| keyferry_record::Error::KeyService(KeyServiceError::InvalidArgument))
        });
        if sealed.is_err() || out.len() - start != len {
            out.truncate(start);
            return Err(KeyServiceError::InvalidArgument);
        }
        Ok(len)
    }

    /// The seal key at `at`, if `caller` holds it at that generation and
    /// may seal at that sequence; the sequence is then spent.
    fn seal_key(
        keys: &mut HashMap<u64, HostKey>,
        caller: Option<u64>,
        at: KeyPosition,
    ) -> Result<&HostKey, KeyServiceError> {
        let key = keys
            .get_mut(&at.key_ref)
            .filter(|key| held_by(key, caller))
            .ok_or(KeyServiceError::UnknownKey)?;
        if key.direction != Direction::Seal || key.generation != at.generation {
            return Err(KeyServiceError::UnknownKey);
        }
        if at.sequence < key.next_seal || at.sequence == u64::MAX {
            return Err(KeyServiceError::SequenceReused);
        }
        if key.aead.is_aes_gcm() && at.sequence >= AES_GCM_USAGE_LIMIT {
            return Err(KeyServiceError::Exhausted);
        }
        key.next_seal = at.sequence + 1;
        Ok(key)
    }

    /// Opens a record body read from `body` (for a guest, straight from its
    /// linear memory): only the ciphertext is copied, into a buffer of the
    /// plaintext's size, and decrypted there. `caller` as for
    /// [`Self::seal_from`].
    pub(crate) fn open_from(
        &self,
        caller: Option<u64>,
        at: KeyPosition,
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        let keys = self.lock();
        let key = keys
            .get(&at.key_ref)
            .filter(|key| held_by(key, caller))
            .ok_or(KeyServiceError::UnknownKey)?;
        if key.direction != Direction::Open || key.generation != at.generation {
            return Err(KeyServiceError::UnknownKey);
        }
        let explicit = explicit_nonce_len(key.version, key.aead);
        if body.len() < explicit + TAG_LEN || aad.len() > 13 {
            return Err(KeyServiceError::AuthenticationFailed);
        }
        let nonce = if explicit > 0 {
            let mut n = [0u8; NONCE_LEN];
            n[..4].copy_from_slice(&key.iv[..4]);
            n[4..].copy_from_slice(&body[..explicit]);
            n
        } else {
            xor_nonce(&key.iv, at.sequence)
        };
        let (text, tag) = body[explicit..].split_at(body.len() - explicit - TAG_LEN);
        let mut plain = text.to_vec();
        key.cipher
            .open_in_place(&nonce, aad, &mut plain, tag)
            .map_err(|_| KeyServiceError::AuthenticationFailed)?;
        Ok(plain)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HostKey>> {
        // A panic while holding the lock cannot leave a key half-updated in
        // a way that matters more than losing the store, so recover.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets guest store `holder` use `key_ref` (the host sealed the key's
    /// blob to it); any earlier holder loses it.
    pub(crate) fn grant(&self, key_ref: u64, holder: u64) {
        if let Some(key) = self.lock().get_mut(&key_ref) {
            key.holder = Some(holder);
        }
    }

    /// A key that `from` exported, sealed to the exchange key `to`: the
    /// grant moves to the instance holding that key, or is revoked if no
    /// live instance here does. Only the holder can give a key away.
    pub(crate) fn transfer(&self, key_ref: u64, from: u64, to: &[u8; 16]) {
        let next = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(to)
            .copied();
        if let Some(key) = self.lock().get_mut(&key_ref)
            && key.holder == Some(from)
        {
            key.holder = next;
        }
    }

    /// Records a live instance's exchange-key id; false, and nothing
    /// changed, if another live instance has it. A guest that reports a
    /// victim's exchange key as its own must not take over the victim's
    /// registration, and with it the grants of keys migrating to the
    /// victim.
    #[must_use]
    pub(crate) fn register_instance(&self, exchange_id: [u8; 16], store: u64) -> bool {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        match instances.entry(exchange_id) {
            std::collections::hash_map::Entry::Occupied(held) => *held.get() == store,
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(store);
                true
            }
        }
    }

    /// Forgets an instance that has gone: only the ids registered to it.
    pub(crate) fn unregister_instance(&self, exchange_id: &[u8; 16], store: u64) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if instances.get(exchange_id) == Some(&store) {
            instances.remove(exchange_id);
        }
    }

    /// The store as guest store `holder` may use it: only the keys granted
    /// to it.
    pub(crate) fn bound(&self, holder: u64) -> Bound<'_> {
        Bound {
            store: self,
            holder,
        }
    }

    fn check_holder(&self, key_ref: u64, holder: u64) -> Result<(), KeyServiceError> {
        match self.lock().get(&key_ref) {
            Some(key) if held_by(key, Some(holder)) => Ok(()),
            _ => Err(KeyServiceError::UnknownKey),
        }
    }
}

/// Whether `caller` may use `key`: the host (no caller) always, a guest
/// store only if it holds the key's grant.
fn held_by(key: &HostKey, caller: Option<u64>) -> bool {
    caller.is_none() || key.holder == caller
}

/// [`HostKeyStore`] seen from one guest store: the key-service import.
pub(crate) struct Bound<'a> {
    store: &'a HostKeyStore,
    holder: u64,
}

/// The key-service import's view: every call checks the holder in the same
/// lookup as the operation.
impl KeyService for Bound<'_> {
    fn seal_record(
        &self,
        at: KeyPosition,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        self.store.seal_from(Some(self.holder), at, aad, plaintext)
    }

    fn seal_payload(
        &self,
        at: KeyPosition,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>, KeyServiceError> {
        self.store
            .seal_payload_from(Some(self.holder), at, content_type, payload, padding)
    }

    fn open_record(
        &self,
        at: KeyPosition,
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        self.store.open_from(Some(self.holder), at, aad, body)
    }

    fn update(&self, key_ref: u64, generation: u32) -> Result<(), KeyServiceError> {
        self.store.check_holder(key_ref, self.holder)?;
        self.store.update(key_ref, generation)
    }
}

/// The host's own use of its store (no holder check: the host is trusted).
impl KeyService for HostKeyStore {
    fn seal_record(
        &self,
        at: KeyPosition,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        self.seal_from(None, at, aad, plaintext)
    }

    fn seal_payload(
        &self,
        at: KeyPosition,
        content_type: ContentType,
        payload: &[u8],
        padding: usize,
    ) -> Result<Vec<u8>, KeyServiceError> {
        self.seal_payload_from(None, at, content_type, payload, padding)
    }

    fn open_record(
        &self,
        at: KeyPosition,
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        self.open_from(None, at, aad, body)
    }

    fn update(&self, key_ref: u64, generation: u32) -> Result<(), KeyServiceError> {
        let mut keys = self.lock();
        let key = keys.get_mut(&key_ref).ok_or(KeyServiceError::UnknownKey)?;
        if generation < key.generation {
            return Ok(());
        }
        if generation > key.generation {
            return Err(KeyServiceError::InvalidArgument);
        }
        let secret = key.secret.as_ref().ok_or(KeyServiceError::Unsupported)?;
        let next =
            next_traffic_secret(key.aead, secret).map_err(|_| KeyServiceError::Unsupported)?;
        let (k, iv) =
            traffic_key_and_iv(key.aead, &next).map_err(|_| KeyServiceError::Unsupported)?;
        key.cipher = HostAead::new(key.aead, &k).map_err(|_| KeyServiceError::Unsupported)?;
        key.iv.copy_from_slice(&iv);
        key.secret = Some(next);
        key.generation = generation
            .checked_add(1)
            .ok_or(KeyServiceError::Unsupported)?;
        key.next_seal = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// A position for the tests' calls.
    pub(super) const fn at(key_ref: u64, generation: u32, sequence: u64) -> KeyPosition {
        KeyPosition {
            key_ref,
            generation,
            sequence,
        }
    }

    use super::*;
    use keyferry_record::record::{MAX_PLAINTEXT, TrafficKey};

    fn leak(store: HostKeyStore) -> &'static HostKeyStore {
        Box::leak(Box::new(store))
    }

    /// An instance that reports a victim's exchange key as its own takes
    /// neither the victim's registration nor the grant of a key migrating
    /// to the victim, and cannot unregister the victim.
    #[test]
    fn an_exchange_key_registered_to_one_instance_is_refused_to_another() {
        let store = HostKeyStore::default();
        let (victim, thief, id) = (1, 2, [7u8; 16]);
        assert!(store.register_instance(id, victim));
        assert!(store.register_instance(id, victim), "its own, again");
        assert!(!store.register_instance(id, thief), "refused");
        store.unregister_instance(&id, thief);
        // A key the holder (store 3) migrates to the victim's exchange key
        // goes to the victim, not to the thief.
        let material = TrafficKeyMaterial::new(
            ProtocolVersion::Tls12,
            AeadAlgorithm::Aes128Gcm,
            Direction::Seal,
            &[4; 16],
            &[6; 12],
            &[],
            0,
            0,
        );
        let key = store.insert(material).unwrap().host_key_ref.unwrap();
        store.grant(key, 3);
        store.transfer(key, 3, &id);
        assert_eq!(store.lock()[&key].holder, Some(victim), "the victim's");
        store.unregister_instance(&id, victim);
        assert!(
            store.register_instance(id, thief),
            "free once the victim is gone"
        );
    }

    #[test]
    fn host_resident_keys_interoperate_with_software_keys() {
        let store = leak(HostKeyStore::new());
        for version in [ProtocolVersion::Tls13, ProtocolVersion::Tls12] {
            for aead in AeadAlgorithm::ALL {
                let material = |direction| match version {
                    ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
                        aead,
                        direction,
                        &vec![9; aead.tls13_hash().output_len()],
                        0,
                        5,
                    )
                    .unwrap(),
                    ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                        version,
                        aead,
                        direction,
                        &vec![4; aead.key_len()],
                        &[6; 12],
                        &[],
                        0,
                        5,
                    ),
                };
                let hw = store.insert(material(Direction::Seal)).unwrap();
                let mut seal = TrafficKey::from_material(hw, Some(store)).unwrap();
                let mut open = TrafficKey::from_material(material(Direction::Open), None).unwrap();
                for i in 0..3u8 {
                    let rec = seal
                        .seal(ContentType::ApplicationData, &[i; 100], 0)
                        .unwrap();
                    assert_eq!(open.open(rec).unwrap().1, vec![i; 100]);
                }
                if version == ProtocolVersion::Tls13 {
                    let rec = seal.send_key_update(false).unwrap();
                    open.open(rec).unwrap();
                    open.update().unwrap();
                    let rec = seal.seal(ContentType::ApplicationData, b"next", 0).unwrap();
                    assert_eq!(open.open(rec).unwrap().1, b"next");
                }
            }
        }
    }

    /// The host frames a record with the record layer's own `SealParams`:
    /// what `seal-payload` returns is byte for byte what a software key
    /// with the same material seals, padding and TLS 1.2 explicit nonces
    /// included.
    #[test]
    fn host_framed_records_match_software_ones_byte_for_byte() {
        let store = leak(HostKeyStore::new());
        for version in [ProtocolVersion::Tls13, ProtocolVersion::Tls12] {
            for aead in AeadAlgorithm::ALL {
                let material = || match version {
                    ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
                        aead,
                        Direction::Seal,
                        &vec![2; aead.tls13_hash().output_len()],
                        7,
                        5,
                    )
                    .unwrap(),
                    ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                        version,
                        aead,
                        Direction::Seal,
                        &vec![4; aead.key_len()],
                        &[6; 12],
                        &[],
                        7,
                        5,
                    ),
                };
                let mut hw =
                    TrafficKey::from_material(store.insert(material()).unwrap(), Some(store))
                        .unwrap();
                let mut soft = TrafficKey::from_material(material(), None).unwrap();
                let paddings: &[usize] = match version {
                    ProtocolVersion::Tls13 => &[0, 1, 200],
                    ProtocolVersion::Tls12 => &[0],
                };
                for (len, padding) in [0usize, 1, 1000, MAX_PLAINTEXT - 200]
                    .into_iter()
                    .flat_map(|len| paddings.iter().map(move |p| (len, *p)))
                {
                    let payload = vec![len as u8; len];
                    let content_type = match len {
                        0 => ContentType::ApplicationData,
                        _ => ContentType::Alert,
                    };
                    let ctx = format!("{version:?} {aead:?} {len} bytes, padding {padding}");
                    assert_eq!(
                        hw.seal(content_type, &payload, padding).unwrap(),
                        soft.seal(content_type, &payload, padding).unwrap(),
                        "{ctx}"
                    );
                }
            }
        }
    }

    /// A record that cannot be framed is refused before its sequence
    /// number is spent.
    #[test]
    fn an_unframeable_payload_spends_no_sequence_number() {
        let store = HostKeyStore::new();
        let m = TrafficKeyMaterial::new(
            ProtocolVersion::Tls12,
            AeadAlgorithm::Aes128Gcm,
            Direction::Seal,
            &[1; 16],
            &[2; 12],
            &[],
            3,
            1,
        );
        let key_ref = store.insert(m).unwrap().host_key_ref.unwrap();
        let ct = ContentType::ApplicationData;
        for (payload, padding) in [(&b"x"[..], 1), (&[0; MAX_PLAINTEXT + 1][..], 0)] {
            assert_eq!(
                store.seal_payload(at(key_ref, 0, 3), ct, payload, padding),
                Err(KeyServiceError::InvalidArgument)
            );
        }
        let record = store.seal_payload(at(key_ref, 0, 3), ct, b"x", 0).unwrap();
        assert_eq!(record[..5], [23, 3, 3, 0, 8 + 1 + 16]);
        assert_eq!(record[5..13], xor_nonce(&[2; 12], 3)[4..]);
        assert_eq!(
            store.seal_payload(at(key_ref, 0, 3), ct, b"x", 0),
            Err(KeyServiceError::SequenceReused)
        );
    }

    #[test]
    fn store_refuses_sequence_reuse() {
        let store = HostKeyStore::new();
        let m = TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::Aes128Gcm,
            Direction::Seal,
            &[1; 32],
            10,
            1,
        )
        .unwrap();
        let key_ref = store.insert(m).unwrap().host_key_ref.unwrap();
        store
            .seal_record(at(key_ref, 0, 10), &[23, 3, 3, 0, 20], b"abcd")
            .unwrap();
        assert_eq!(
            store.seal_record(at(key_ref, 0, 10), &[23, 3, 3, 0, 20], b"abcd"),
            Err(KeyServiceError::SequenceReused)
        );
        assert_eq!(
            store.seal_record(at(key_ref, 0, 9), &[23, 3, 3, 0, 20], b"abcd"),
            Err(KeyServiceError::SequenceReused)
        );
        assert_eq!(
            store.seal_record(at(key_ref, 1, 11), &[23, 3, 3, 0, 20], b"abcd"),
            Err(KeyServiceError::UnknownKey)
        );
        store
            .seal_record(at(key_ref, 0, 11), &[23, 3, 3, 0, 20], b"abcd")
            .unwrap();
        assert_eq!(
            store.open_record(at(key_ref, 0, 0), &[], &[0; 32]),
            Err(KeyServiceError::UnknownKey)
        );
    }
}

#[cfg(test)]
mod binding_tests {
    use keyferry_record::key_service::KeyService;
    use keyferry_record::record::TrafficKeyMaterial;
    use keyferry_record::{AeadAlgorithm, ContentType, Direction, KeyServiceError};

    use super::AES_GCM_USAGE_LIMIT;
    use super::tests::at;
    use crate::{GuestComponent, GuestEngine, SandboxConfig};

    const AAD: [u8; 5] = [23, 3, 3, 0, 18];

    #[test]
    fn a_migrated_reference_works_only_for_its_new_holder() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference_with_host_keys(&engine).unwrap();
        let (a, b, c) = (
            component.instantiate().unwrap(),
            component.instantiate().unwrap(),
            component.instantiate().unwrap(),
        );
        let store = engine.key_store();
        let material = TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::Aes128Gcm,
            Direction::Seal,
            &[3; 32],
            0,
            9,
        )
        .unwrap();
        let reference = store.insert(material).unwrap();
        let key_ref = reference.host_key_ref.unwrap();
        let handle = a
            .import_traffic_key(&a.seal_traffic_key(&reference).unwrap())
            .unwrap();
        a.seal(&handle, ContentType::ApplicationData, b"from a", 0)
            .unwrap();
        // An instance never given the key cannot use its reference, nor
        // learn how it frames (an unframeable payload is unknown-key too).
        assert_eq!(
            store
                .bound(c.store_id())
                .seal_record(at(key_ref, 0, 100), &AAD, b"x"),
            Err(KeyServiceError::UnknownKey)
        );
        let outsider = store.bound(c.store_id());
        for padding in [0, 1 << 15] {
            assert_eq!(
                outsider.seal_payload(at(key_ref, 0, 100), ContentType::Alert, b"x", padding),
                Err(KeyServiceError::UnknownKey)
            );
        }
        // A migrates the key to B ...
        let blob = a
            .export_traffic_key(handle, &b.exchange_key().unwrap())
            .unwrap();
        let moved = b.import_traffic_key(&blob).unwrap();
        // ... after which A, going to the key service directly, gets
        // nowhere: it cannot seal far ahead (which would leave B with
        // sequence-reused forever) nor move the key on.
        assert_eq!(
            store
                .bound(a.store_id())
                .seal_record(at(key_ref, 0, u64::MAX - 1), &AAD, b"x"),
            Err(KeyServiceError::UnknownKey)
        );
        assert_eq!(
            store.bound(a.store_id()).update(key_ref, 0),
            Err(KeyServiceError::UnknownKey)
        );
        // B keeps working.
        for _ in 0..3 {
            b.seal(&moved, ContentType::ApplicationData, b"from b", 0)
                .unwrap();
        }
        // An export to a recipient that is no instance here revokes it.
        let elsewhere = crate::ExchangeKey {
            id: keyferry_record::blob::key_id(&[9; 32]),
            public_key: [9; 32],
        };
        b.export_traffic_key(moved, &elsewhere).unwrap();
        assert_eq!(
            store
                .bound(b.store_id())
                .seal_record(at(key_ref, 0, 1000), &AAD, b"x"),
            Err(KeyServiceError::UnknownKey)
        );
        assert!(store.remove(key_ref));
    }

    #[test]
    fn aes_gcm_keys_stop_at_the_usage_limit() {
        let store = super::HostKeyStore::new();
        let material = TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::Aes256Gcm,
            Direction::Seal,
            &[4; 48],
            AES_GCM_USAGE_LIMIT - 1,
            1,
        )
        .unwrap();
        let key_ref = store.insert(material).unwrap().host_key_ref.unwrap();
        store
            .seal_record(at(key_ref, 0, AES_GCM_USAGE_LIMIT - 1), &AAD, b"x")
            .expect("the last record under the limit");
        assert_eq!(
            store.seal_record(at(key_ref, 0, AES_GCM_USAGE_LIMIT), &AAD, b"x"),
            Err(KeyServiceError::Exhausted)
        );
    }
}
