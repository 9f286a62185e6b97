//! One guest instance's key state: its exchange key, its wrapping secret
//! and its registry.
//!
//! Import opens a blob, rebuilds the key and admits it; export seals the
//! exact state to another public key and consumes the handle.
//!
//! Blobs reach an instance two ways (DESIGN section 3): wrapped with the
//! secret the host in this process handed it (format 2, a hash and an AEAD),
//! or sealed with HPKE to its exchange key (format 1) by a sender that did
//! not create it. The exchange key pair is made on first use, so an
//! instance that only ever receives wrapped blobs never pays for X25519.
//!
//! An instance that serves many connections (a shared instance) rotates its
//! exchange key every [`ROTATE_EVERY`] imports and keeps the previous one,
//! so what it must remember stays bounded: a blob sealed to a key two
//! rotations old cannot be opened at all, so its id, and the marks of keys
//! released before then, can be forgotten without allowing a replay.

use alloc::vec::Vec;
use core::cell::RefCell;

use crate::blob::{self, ExchangeKeyPair, Recipient, WrappingSecret};
use crate::connection::{Connection, Facts};
use crate::error::{Error, Result};
use crate::key_service::KeyService;
use crate::mac::MacKey;
use crate::record::TrafficKey;
use crate::registry::{Position, Registry};

/// Imports between exchange-key rotations.
pub const ROTATE_EVERY: u32 = 1024;

/// An instance's keys and memory of the keys it has held.
pub struct Instance {
    /// Made on first use.
    exchange: Option<ExchangeKeyPair>,
    /// The key before the last rotation: blobs sealed to it still open.
    previous: Option<ExchangeKeyPair>,
    /// Given by the host, once per epoch.
    wrapping: Option<WrappingSecret>,
    /// The secret before the last rotation.
    previous_wrapping: Option<WrappingSecret>,
    /// Rotations so far.
    epoch: u32,
    imports: u32,
    registry: Registry,
    service: Option<&'static dyn KeyService>,
}

impl Instance {
    /// A new instance; its exchange key is made when first asked for.
    /// `service` is the host key service, when this build links one.
    pub fn new(service: Option<&'static dyn KeyService>) -> Self {
        Self {
            exchange: None,
            previous: None,
            wrapping: None,
            previous_wrapping: None,
            epoch: 0,
            imports: 0,
            registry: Registry::default(),
            service,
        }
    }

    /// The key a blob names in its header: the current or the previous
    /// exchange key (format 1) or wrapping secret (format 2); any other is
    /// another recipient's.
    fn recipient(&self, sealed: &[u8]) -> Result<Recipient<'_>> {
        let header = blob::peek_header(sealed)?;
        let id = header.key_id;
        let found = if header.version == blob::FORMAT_WRAPPED {
            [&self.wrapping, &self.previous_wrapping]
                .into_iter()
                .flatten()
                .find(|w| w.id() == id)
                .map(Recipient::Wrapping)
        } else {
            [&self.exchange, &self.previous]
                .into_iter()
                .flatten()
                .find(|k| k.key_id() == id)
                .map(Recipient::Exchange)
        };
        found.ok_or_else(|| crate::error::BlobError::WrongRecipient.into())
    }

    /// Counts an import and rotates the keys when it is time: the current
    /// exchange key and wrapping secret become the previous ones, a new
    /// exchange key is made when next asked for, and the host hands over a
    /// new wrapping secret for the new epoch.
    fn imported(&mut self) {
        self.imports = self.imports.wrapping_add(1);
        if self.imports.is_multiple_of(ROTATE_EVERY) {
            self.previous = self.exchange.take();
            self.previous_wrapping = self.wrapping.take();
            self.epoch += 1;
            self.registry.retire_before(self.epoch.saturating_sub(1));
        }
    }

    /// The exchange key pair, made now if this is the first use.
    pub fn exchange(&mut self) -> &ExchangeKeyPair {
        self.exchange.get_or_insert_with(ExchangeKeyPair::generate)
    }

    /// Takes the wrapping secret for this epoch from the host and returns
    /// its id and the epoch. An epoch has one secret: a second is refused,
    /// so nothing in the instance can swap the secret blobs are addressed
    /// to.
    pub fn set_wrapping_secret(&mut self, secret: &[u8]) -> Result<([u8; 16], u32)> {
        if self.wrapping.is_some() {
            return Err(Error::InvalidArgument(
                "this epoch already has a wrapping secret",
            ));
        }
        let secret = WrappingSecret::from_bytes(secret)?;
        let id = secret.id();
        self.wrapping = Some(secret);
        Ok((id, self.epoch))
    }

    /// Rotations so far: a new epoch wants a new wrapping secret, and has
    /// a new exchange key.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether host-resident keys can be used here.
    pub fn has_key_service(&self) -> bool {
        self.service.is_some()
    }

    /// CryptImportKey for a traffic key.
    pub fn import_traffic_key(&mut self, sealed: &[u8]) -> Result<TrafficKey> {
        let recipient = self.recipient(sealed)?;
        let (blob_id, material) = blob::open_traffic_key(recipient, sealed)?;
        // Only the host that made this instance holds its wrapping secret,
        // and it checks what it wraps (`blob::wrap_traffic_key`); a blob
        // sealed to the exchange key may come from anyone holding the
        // public key, another instance included.
        let key = match recipient {
            Recipient::Wrapping(_) => TrafficKey::from_checked_material(material, self.service)?,
            Recipient::Exchange(_) => TrafficKey::from_material(material, self.service)?,
        };
        self.registry
            .admit_traffic(blob_id, key.fingerprint(), position(&key), self.epoch)?;
        self.imported();
        Ok(key)
    }

    /// CryptImportKey for a MAC key.
    pub fn import_mac_key(&mut self, sealed: &[u8]) -> Result<MacKey> {
        let (blob_id, key) = blob::open_mac_key(self.recipient(sealed)?, sealed)?;
        self.registry.admit_mac(blob_id, self.epoch)?;
        self.imported();
        Ok(key)
    }

    /// CryptExportKey: seals the key's exact state to `recipient` and
    /// consumes it. The key is released here whatever the outcome, so a
    /// refused export still ends the handle.
    pub fn export_traffic_key(&mut self, key: TrafficKey, recipient: &[u8]) -> Result<Vec<u8>> {
        self.release(&key);
        let material = key.into_material()?;
        blob::seal_traffic_key(recipient, &material)
    }

    /// Exports a MAC key, consuming it.
    pub fn export_mac_key(&mut self, key: MacKey, recipient: &[u8]) -> Result<Vec<u8>> {
        if !key.exportable() {
            return Err(Error::NotExportable);
        }
        blob::seal_mac_key(recipient, &key)
    }

    /// Records a traffic key's final position when its handle goes away.
    pub fn release(&mut self, key: &TrafficKey) {
        self.registry
            .release(key.fingerprint(), position(key), self.epoch);
    }
}

keyferry_record::instance_local! {
    /// The keys of the component instance this code runs in.
    static LOCAL: RefCell<Option<Instance>> = const { RefCell::new(None) };
}

/// Runs `f` on this component instance's [`Instance`], making it (and its
/// exchange key, from WASI randomness) on first use. Components built on
/// this crate, the reference one and plugins alike, keep their keys here.
pub fn with_local<R>(
    service: Option<&'static dyn KeyService>,
    f: impl FnOnce(&mut Instance) -> R,
) -> R {
    LOCAL.with(|cell| {
        let mut slot = cell.borrow_mut();
        f(slot.get_or_insert_with(|| Instance::new(service)))
    })
}

impl Instance {
    /// Imports both directions' blobs of one connection and pairs them.
    /// On failure no key stays marked live.
    pub fn attach_connection(
        &mut self,
        seal_blob: &[u8],
        open_blob: &[u8],
        facts: Facts,
    ) -> Result<Connection> {
        let seal = self.import_traffic_key(seal_blob)?;
        let open = match self.import_traffic_key(open_blob) {
            Ok(open) => open,
            Err(e) => {
                self.release(&seal);
                return Err(e);
            }
        };
        let marks = [
            (seal.fingerprint(), position(&seal)),
            (open.fingerprint(), position(&open)),
        ];
        Connection::new(seal, open, facts).inspect_err(|_| {
            for (key, at) in marks {
                self.registry.release(key, at, self.epoch);
            }
        })
    }

    /// Records where a connection's keys were when it ended.
    pub fn release_connection(&mut self, conn: &Connection) {
        let (seal, open) = conn.keys();
        self.release(seal);
        self.release(open);
    }
}

fn position(key: &TrafficKey) -> Position {
    let state = key.state();
    Position {
        generation: state.generation,
        sequence: state.sequence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BlobError;
    use crate::record::TrafficKeyMaterial;
    use crate::{AeadAlgorithm, Direction};

    fn material(connection_id: u64) -> TrafficKeyMaterial {
        // A distinct key per connection: marks are kept per key.
        let mut secret = [7u8; 32];
        secret[..8].copy_from_slice(&connection_id.to_be_bytes());
        TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::ChaCha20Poly1305,
            Direction::Seal,
            &secret,
            0,
            connection_id,
        )
        .unwrap()
    }

    #[test]
    fn wrapped_blobs_need_no_exchange_key_and_open_once() {
        let mut instance = Instance::new(None);
        let secret = WrappingSecret::generate().unwrap();
        assert_eq!(
            instance.set_wrapping_secret(secret.expose()).unwrap(),
            (secret.id(), 0)
        );
        let blob = blob::wrap_traffic_key(&secret, &material(1)).unwrap();
        instance.import_traffic_key(&blob).unwrap();
        assert!(instance.exchange.is_none(), "no X25519 key pair was made");
        assert_eq!(
            instance.import_traffic_key(&blob).err(),
            Some(BlobError::Replayed.into())
        );
        // Another secret's blob is another instance's.
        let other = WrappingSecret::generate().unwrap();
        let blob = blob::wrap_traffic_key(&other, &material(2)).unwrap();
        assert_eq!(
            instance.import_traffic_key(&blob).err(),
            Some(BlobError::WrongRecipient.into())
        );
    }

    #[test]
    fn an_epoch_takes_one_wrapping_secret() {
        let mut instance = Instance::new(None);
        instance.set_wrapping_secret(&[1; 32]).unwrap();
        assert!(instance.set_wrapping_secret(&[2; 32]).is_err());
        assert!(instance.set_wrapping_secret(&[1; 16]).is_err());
    }

    #[test]
    fn rotation_retires_the_wrapping_secret_two_epochs_on() {
        let mut instance = Instance::new(None);
        let first = WrappingSecret::generate().unwrap();
        instance.set_wrapping_secret(first.expose()).unwrap();
        let old = blob::wrap_traffic_key(&first, &material(1)).unwrap();
        let mut n = 2;
        for epoch in 1..=2 {
            // Import until the instance rotates; each epoch needs a new
            // secret, and the one before still opens.
            let secret = if epoch == 1 {
                first.expose().to_vec()
            } else {
                vec![epoch as u8; 32]
            };
            let secret = WrappingSecret::from_bytes(&secret).unwrap();
            while instance.epoch() < epoch {
                let key = instance
                    .import_traffic_key(&blob::wrap_traffic_key(&secret, &material(n)).unwrap())
                    .unwrap();
                instance.release(&key);
                n += 1;
            }
            assert_eq!(
                instance
                    .set_wrapping_secret(&[epoch as u8 + 1; 32])
                    .unwrap()
                    .1,
                epoch,
                "the secret is for the new epoch"
            );
            if epoch == 1 {
                // The previous epoch's secret still opens.
                let fresh = blob::wrap_traffic_key(&first, &material(n)).unwrap();
                assert!(instance.import_traffic_key(&fresh).is_ok());
                n += 1;
            }
        }
        assert_eq!(
            instance.import_traffic_key(&old).err(),
            Some(BlobError::WrongRecipient.into())
        );
    }
}
