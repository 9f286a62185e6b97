//! The host key store: host-resident ("hardware") traffic keys.
//!
//! Like a key in an HSM, the material never leaves: a blob for such a key
//! carries only a reference, the guest asks the store to seal and open
//! record bodies through the `key-service` import, and exporting the key
//! from a guest never destroys it here.
//!
//! The store enforces what a guest cannot be trusted to: a key never seals
//! twice at one sequence number, so even a malicious guest cannot make it
//! reuse an AES-GCM nonce. Wasm has no AES instructions; the host has, so
//! this is also the fast path for AES-GCM.

use std::collections::HashMap;
use std::sync::Mutex;

use keyferry_guest::cipher::{RecordCipher, TAG_LEN};
use keyferry_guest::key_service::KeyService;
use keyferry_guest::keyschedule::{IV_LEN, next_traffic_secret, traffic_key_and_iv};
use keyferry_guest::record::{TLS12_EXPLICIT_NONCE_LEN, TrafficKeyMaterial, xor_nonce};
use keyferry_guest::{AeadAlgorithm, Direction, KeyServiceError, ProtocolVersion};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{HandshakeError, Result};

struct HostKey {
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    direction: Direction,
    cipher: RecordCipher,
    iv: Zeroizing<[u8; IV_LEN]>,
    secret: Option<Zeroizing<Vec<u8>>>,
    generation: u32,
    /// The lowest sequence number this key may still seal at.
    next_seal: u64,
}

/// Host-resident traffic keys, shared by every guest instance of an engine.
#[derive(Default)]
pub struct HostKeyStore {
    keys: Mutex<HashMap<u64, HostKey>>,
}

impl HostKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
        }
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
            cipher: RecordCipher::new(material.aead, &material.key)?,
            iv: Zeroizing::new(iv),
            secret,
            generation: material.generation,
            next_seal: material.sequence,
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

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HostKey>> {
        // A panic while holding the lock cannot leave a key half-updated in
        // a way that matters more than losing the store, so recover.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KeyService for HostKeyStore {
    fn seal_record(
        &self,
        key_ref: u64,
        generation: u32,
        sequence: u64,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        let mut keys = self.lock();
        let key = keys.get_mut(&key_ref).ok_or(KeyServiceError::UnknownKey)?;
        if key.direction != Direction::Seal || key.generation != generation {
            return Err(KeyServiceError::UnknownKey);
        }
        if sequence < key.next_seal || sequence == u64::MAX {
            return Err(KeyServiceError::SequenceReused);
        }
        if plaintext.len() > keyferry_guest::record::MAX_INNER_PLAINTEXT || aad.len() > 13 {
            return Err(KeyServiceError::InvalidArgument);
        }
        key.next_seal = sequence + 1;
        let nonce = xor_nonce(&key.iv, sequence);
        let explicit = key.version == ProtocolVersion::Tls12 && key.aead.is_aes_gcm();
        let mut body = Vec::with_capacity(TLS12_EXPLICIT_NONCE_LEN + plaintext.len() + TAG_LEN);
        if explicit {
            body.extend_from_slice(&nonce[4..]);
        }
        let start = body.len();
        body.extend_from_slice(plaintext);
        let tag = key
            .cipher
            .seal_in_place(&nonce, aad, &mut body[start..])
            .map_err(|_| KeyServiceError::InvalidArgument)?;
        body.extend_from_slice(&tag);
        Ok(body)
    }

    fn open_record(
        &self,
        key_ref: u64,
        generation: u32,
        sequence: u64,
        aad: &[u8],
        body: &[u8],
    ) -> Result<Vec<u8>, KeyServiceError> {
        let keys = self.lock();
        let key = keys.get(&key_ref).ok_or(KeyServiceError::UnknownKey)?;
        if key.direction != Direction::Open || key.generation != generation {
            return Err(KeyServiceError::UnknownKey);
        }
        let explicit = if key.version == ProtocolVersion::Tls12 && key.aead.is_aes_gcm() {
            TLS12_EXPLICIT_NONCE_LEN
        } else {
            0
        };
        if body.len() < explicit + TAG_LEN || aad.len() > 13 {
            return Err(KeyServiceError::AuthenticationFailed);
        }
        let nonce = if explicit > 0 {
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&key.iv[..4]);
            n[4..].copy_from_slice(&body[..explicit]);
            n
        } else {
            xor_nonce(&key.iv, sequence)
        };
        let (text, tag) = body[explicit..].split_at(body.len() - explicit - TAG_LEN);
        let mut plain = text.to_vec();
        key.cipher
            .open_in_place(&nonce, aad, &mut plain, tag)
            .map_err(|_| KeyServiceError::AuthenticationFailed)?;
        Ok(plain)
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
        key.cipher = RecordCipher::new(key.aead, &k).map_err(|_| KeyServiceError::Unsupported)?;
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
    use super::*;
    use keyferry_guest::ContentType;
    use keyferry_guest::record::TrafficKey;

    fn leak(store: HostKeyStore) -> &'static HostKeyStore {
        Box::leak(Box::new(store))
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
            .seal_record(key_ref, 0, 10, &[23, 3, 3, 0, 20], b"abcd")
            .unwrap();
        assert_eq!(
            store.seal_record(key_ref, 0, 10, &[23, 3, 3, 0, 20], b"abcd"),
            Err(KeyServiceError::SequenceReused)
        );
        assert_eq!(
            store.seal_record(key_ref, 0, 9, &[23, 3, 3, 0, 20], b"abcd"),
            Err(KeyServiceError::SequenceReused)
        );
        assert_eq!(
            store.seal_record(key_ref, 1, 11, &[23, 3, 3, 0, 20], b"abcd"),
            Err(KeyServiceError::UnknownKey)
        );
        store
            .seal_record(key_ref, 0, 11, &[23, 3, 3, 0, 20], b"abcd")
            .unwrap();
        assert_eq!(
            store.open_record(key_ref, 0, 0, &[], &[0; 32]),
            Err(KeyServiceError::UnknownKey)
        );
    }
}
