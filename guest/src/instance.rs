//! One guest instance's key state: its exchange key and its registry.
//!
//! Import opens a blob, rebuilds the key and admits it; export seals the
//! exact state to another public key and consumes the handle.
//!
//! An instance that serves many connections (a shared instance) rotates its
//! exchange key every [`ROTATE_EVERY`] imports and keeps the previous one,
//! so what it must remember stays bounded: a blob sealed to a key two
//! rotations old cannot be opened at all, so its id, and the marks of keys
//! released before then, can be forgotten without allowing a replay.

use std::cell::RefCell;

use crate::blob::{self, ExchangeKeyPair};
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
    exchange: ExchangeKeyPair,
    /// The key before the last rotation: blobs sealed to it still open.
    previous: Option<ExchangeKeyPair>,
    /// Rotations so far.
    epoch: u32,
    imports: u32,
    registry: Registry,
    service: Option<&'static dyn KeyService>,
}

impl Instance {
    /// A new instance with a fresh exchange key. `service` is the host key
    /// service, when this build links one.
    pub fn new(service: Option<&'static dyn KeyService>) -> Self {
        Self {
            exchange: ExchangeKeyPair::generate(),
            previous: None,
            epoch: 0,
            imports: 0,
            registry: Registry::default(),
            service,
        }
    }

    /// The exchange key a blob names in its header: the current one or the
    /// one before; any other is another recipient's.
    fn recipient(&self, sealed: &[u8]) -> Result<&ExchangeKeyPair> {
        let id = blob::peek_header(sealed)?.key_id;
        if id == self.exchange.key_id() {
            return Ok(&self.exchange);
        }
        match &self.previous {
            Some(previous) if id == previous.key_id() => Ok(previous),
            _ => Err(crate::error::BlobError::WrongRecipient.into()),
        }
    }

    /// Counts an import and rotates the exchange key when it is time.
    fn imported(&mut self) {
        self.imports = self.imports.wrapping_add(1);
        if self.imports.is_multiple_of(ROTATE_EVERY) {
            self.previous = Some(std::mem::replace(
                &mut self.exchange,
                ExchangeKeyPair::generate(),
            ));
            self.epoch += 1;
            self.registry.retire_before(self.epoch.saturating_sub(1));
        }
    }

    /// The exchange key pair.
    pub fn exchange(&self) -> &ExchangeKeyPair {
        &self.exchange
    }

    /// Whether host-resident keys can be used here.
    pub fn has_key_service(&self) -> bool {
        self.service.is_some()
    }

    /// CryptImportKey for a traffic key.
    pub fn import_traffic_key(&mut self, sealed: &[u8]) -> Result<TrafficKey> {
        let (blob_id, material) = blob::open_traffic_key(self.recipient(sealed)?, sealed)?;
        let key = TrafficKey::from_material(material, self.service)?;
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
        if !key.exportable {
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

thread_local! {
    /// The keys of the component instance this code runs in. A component
    /// instance is single-threaded, so one per thread is one per instance.
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
    Position {
        generation: key.generation,
        sequence: key.sequence,
    }
}
