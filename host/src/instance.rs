//! One guest instance and the keys it holds, seen from the host.
//!
//! The host drives the guest through its WIT exports and checks what comes
//! back: a record the guest seals must parse as whole records, a payload
//! must fit the TLS limits, a public key must have its length and id. The
//! host never trusts a length, an index or a type the guest returns.

use std::sync::{Arc, Mutex};

use keyferry_record::blob::{self, PUBLIC_KEY_LEN, WrappingSecret};
use keyferry_record::framing::count_records;
use keyferry_record::record::{HEADER_LEN, MAX_PLAINTEXT, TrafficKeyMaterial};
use keyferry_record::{AeadAlgorithm, ContentType, MacAlgorithm};
use wasmtime::Store;
use wasmtime::component::{ResourceAny, TypedFunc};

use crate::bindings::{DataplaneHostKeys, DataplaneHostKeysIndices};
use crate::connection_funcs::ConnectionFuncs;
use crate::engine::engine_error;
use crate::error::{Error, GuestError, Result, SandboxError};
use crate::keystore::HostKeyStore;
use crate::sandbox::{ExecutionBound, Sandboxed, StoreState};

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
            .map_err(|_| GuestError::InvalidResult("exchange key length"))?;
        if id != blob::key_id(&public_key) {
            return Err(GuestError::InvalidResult("exchange key id does not match the key").into());
        }
        Ok(Self {
            id: blob::key_id(&public_key),
            public_key,
        })
    }

    /// Checks that a blob a guest exported is addressed to this key.
    pub(crate) fn check_addressed(&self, blob: &[u8]) -> Result<()> {
        let header = blob::peek_header(blob)
            .map_err(|_| GuestError::InvalidResult("exported blob header"))?;
        if header.key_id != self.id {
            return Err(GuestError::InvalidResult("exported blob addressed to another key").into());
        }
        Ok(())
    }
}

/// An imported traffic key, owned by one guest instance. Not `Clone`:
/// exporting consumes it, as CryptExportKey destroys the source key.
pub struct TrafficKeyHandle {
    resource: ResourceAny,
    instance: u64,
    /// The key lives in the host key store, so its records are opened
    /// from the host's copy (`open-held`) without entering the guest.
    host_resident: bool,
}

#[cfg(feature = "dangerous-test-hooks")]
impl TrafficKeyHandle {
    /// A second handle to the same guest resource. Only for tests that
    /// check the guest and host survive use after export; real code never
    /// needs it, since export consumes the handle.
    pub fn dangerous_duplicate(&self) -> Self {
        Self {
            resource: self.resource,
            instance: self.instance,
            host_resident: self.host_resident,
        }
    }
}

/// An imported MAC key, owned by one guest instance.
pub struct MacKeyHandle {
    resource: ResourceAny,
    instance: u64,
}

pub use keyferry_record::record::TrafficKeyState;

/// What an instance exports: every component's `connection`, the
/// reference component's key-level interfaces, and a composed `wasi:http`
/// component's request path.
pub(crate) struct GuestFuncs {
    pub(crate) connection: ConnectionFuncs,
    pub(crate) full: KeyLevelFuncs,
    /// A composed `wasi:http` component's request path.
    pub(crate) http: Option<HttpFuncs>,
}

/// A composed `wasi:http` component's request path: the front decodes
/// each request (`next-request`), the tenant handles it, the front ends
/// the response (`handled`). The host makes these calls, as `wasmtime
/// serve` calls a handler; `paused` says whether the front stopped between
/// requests for the connection to move to a fresh instance.
pub(crate) struct HttpFuncs {
    pub(crate) next_request: TypedFunc<(), (Option<(ResourceAny, ResourceAny)>,)>,
    pub(crate) handled: TypedFunc<(), ()>,
    pub(crate) paused: TypedFunc<(), (bool,)>,
    pub(crate) handle: TypedFunc<(ResourceAny, ResourceAny), ()>,
}

impl HttpFuncs {
    /// Serves requests until the front has none ready: true when it paused
    /// the connection to go on in a fresh instance, false when it parked
    /// it or the connection ended.
    fn serve(&self, store: &mut Store<StoreState>) -> wasmtime::Result<bool> {
        loop {
            let (next,) = self.next_request.call(&mut *store, ())?;
            let Some((request, response)) = next else {
                break;
            };
            self.handle.call(&mut *store, (request, response))?;
            self.handled.call(&mut *store, ())?;
        }
        let (paused,) = self.paused.call(&mut *store, ())?;
        Ok(paused)
    }
}

/// The key-level interfaces (`keys`, `primitives`, `self-check`) of one
/// instance, looked up on the first call that needs them. `bindgen!`'s
/// loader type-checks every export of the world, `connection` included,
/// and has no check-once form (`crate::connection_funcs` is that for
/// `connection`): an instance that only ever serves a connection, as
/// `DataPlane` uses it, never pays for it.
pub(crate) enum KeyLevelFuncs {
    /// The component does not export them.
    Absent,
    /// Exported; not looked up in this instance yet. The indices are the
    /// component's, shared by its instances.
    Unloaded(Arc<DataplaneHostKeysIndices>, wasmtime::component::Instance),
    /// Looked up and type-checked (boxed: several hundred bytes, that an
    /// instance used only through `connection` need not carry).
    Loaded(Box<DataplaneHostKeys>),
}

impl KeyLevelFuncs {
    /// Looks the interfaces up if that has not happened yet. No guest code
    /// runs.
    fn load(&mut self, store: &mut Store<StoreState>) -> Result<()> {
        if let Self::Unloaded(indices, instance) = self {
            let loaded = indices
                .load(store, instance)
                .map_err(engine_error("loading the data-plane exports"))?;
            *self = Self::Loaded(Box::new(loaded));
        }
        Ok(())
    }
}

/// A running guest: its store, its exports and its exchange key.
///
/// A cheap handle (clone it to share the instance): the connections of one
/// tenant may share an instance (DESIGN section 7), and each
/// [`DataPlane`](crate::DataPlane) holds a handle to the instance it runs
/// in. Calls are serialized; a trap poisons the instance for every handle.
#[derive(Clone)]
pub struct GuestInstance {
    sandbox: Arc<Mutex<Sandboxed<GuestFuncs>>>,
    id: u64,
    registration: Arc<Registration>,
    /// The component it is an instance of, for a fresh sibling.
    component: Option<crate::component::GuestComponent>,
}

/// The instance's keys for its current epoch (they rotate after many
/// imports), and its entries in the host key store's list of live
/// instances, removed when the last handle goes.
struct Registration {
    keys: Arc<HostKeyStore>,
    /// The instance's store id: the one its exchange keys register to.
    store: u64,
    epoch: Mutex<Epoch>,
    exchange_ids: Mutex<Vec<[u8; 16]>>,
}

/// What the host knows of the instance's epochs. Both keys are made when
/// first needed: an instance given only wrapped blobs never makes an X25519
/// key pair. The number only moves forward, and the secret carries the
/// epoch the instance took it for, so a report that arrives late can never
/// make the host forget a secret the instance still holds.
#[derive(Default)]
struct Epoch {
    /// The newest epoch the instance has reported.
    number: u32,
    exchange: Option<ExchangeKey>,
    /// The secret this process wraps blobs for the instance with, and the
    /// epoch the instance took it for.
    wrapping: Option<(u32, WrappingSecret)>,
    /// The instance has imported since it last reported its epoch, so it
    /// may have rotated. Asked when the epoch is next needed, not after
    /// every import: an instance that serves one connection imports its
    /// two blobs and is never asked, one host-guest call fewer.
    unreported_import: bool,
}

impl Epoch {
    /// Records that the instance has reached `number`.
    fn advance(&mut self, number: u32) {
        if number > self.number {
            self.number = number;
            // Its exchange key rotated with it (the old one still opens).
            self.exchange = None;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let ids = self
            .exchange_ids
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for id in ids.iter() {
            self.keys.unregister_instance(id, self.store);
        }
    }
}

impl GuestInstance {
    pub(crate) fn new(
        store: Store<StoreState>,
        exports: GuestFuncs,
        bound: ExecutionBound,
        component: Option<crate::component::GuestComponent>,
    ) -> Result<Self> {
        let (id, keys) = (store.data().id, store.data().keys.clone());
        let sandbox = Sandboxed::new(store, exports, bound);
        Ok(Self {
            sandbox: Arc::new(Mutex::new(sandbox)),
            id,
            registration: Arc::new(Registration {
                keys,
                store: id,
                epoch: Mutex::new(Epoch::default()),
                exchange_ids: Mutex::new(Vec::new()),
            }),
            component,
        })
    }

    /// A fresh instance of the same component, in its own store.
    pub(crate) fn sibling(&self) -> Result<Self> {
        self.component
            .as_ref()
            .ok_or(GuestError::MissingExport(
                "a component to make a fresh instance of",
            ))?
            .instantiate()
    }

    fn epoch(&self) -> std::sync::MutexGuard<'_, Epoch> {
        self.registration
            .epoch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// This instance's exchange key, for senders in other processes and
    /// for migration (blob format 1). The instance makes it on first use
    /// and rotates it every thousand-odd imports (keeping the one before),
    /// so seal to the key this returns now rather than to one kept from
    /// long ago.
    pub fn exchange_key(&self) -> Result<ExchangeKey> {
        let mut epoch = self.epoch();
        self.catch_up(&mut epoch)?;
        if let Some(key) = epoch.exchange {
            return Ok(key);
        }
        let key = self.call_connection(|s, c| c.call_instance_exchange_key(s))?;
        let key = ExchangeKey::checked(&key.id, &key.public_key)?;
        if !self.registration.keys.register_instance(key.id, self.id) {
            return Err(
                GuestError::InvalidResult("exchange key belongs to another instance").into(),
            );
        }
        self.registration
            .exchange_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.id);
        epoch.exchange = Some(key);
        Ok(key)
    }

    /// Notes an import: the instance may have rotated. The guest is asked
    /// when the epoch is next needed ([`Self::catch_up`]); if it has
    /// rotated, the keys the host knows for it are old, and are fetched
    /// (exchange key) or handed over (wrapping secret) again.
    pub(crate) fn note_import(&self) {
        self.epoch().unreported_import = true;
    }

    /// Asks the guest for its epoch if it has imported since it last
    /// reported. Under the epoch lock (epoch, then sandbox: the one lock
    /// order), so reports are applied in the order they were made.
    fn catch_up(&self, epoch: &mut Epoch) -> Result<()> {
        if epoch.unreported_import {
            let number = self.call_connection(|s, c| c.call_instance_epoch(s))?;
            epoch.advance(number);
            epoch.unreported_import = false;
        }
        Ok(())
    }

    /// Hands the instance a wrapping secret for its epoch, if it has none
    /// yet. Instantiation does this, so a ready instance's handoff is only
    /// the seal and the import.
    pub(crate) fn prepare_wrapping(&self) -> Result<()> {
        let mut epoch = self.epoch();
        self.ensure_wrapping(&mut epoch)
    }

    fn ensure_wrapping(&self, epoch: &mut Epoch) -> Result<()> {
        self.catch_up(epoch)?;
        if matches!(&epoch.wrapping, Some((n, _)) if *n == epoch.number) {
            return Ok(());
        }
        let secret = WrappingSecret::generate()?;
        let (id, number) = self
            .call_connection(|s, c| c.call_instance_wrapping_secret(s, secret.expose()))?
            .map_err(Error::from)?;
        if id != secret.id() {
            return Err(GuestError::InvalidResult("wrapping secret id").into());
        }
        // The instance may have rotated since the host last asked: the
        // secret belongs to the epoch it names.
        epoch.advance(number);
        epoch.wrapping = Some((number, secret));
        Ok(())
    }

    /// Wraps a blob's contents for this instance (format 2), handing the
    /// instance a fresh wrapping secret first if its epoch has none yet.
    fn wrap(
        &self,
        wrap: impl FnOnce(&WrappingSecret) -> keyferry_record::Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut epoch = self.epoch();
        self.ensure_wrapping(&mut epoch)?;
        let (_, secret) = epoch.wrapping.as_ref().expect("set above");
        Ok(wrap(secret)?)
    }

    /// Whether this is the instance's only handle, so dropping it drops
    /// the store and its memory.
    pub(crate) fn is_last_handle(&self) -> bool {
        Arc::strong_count(&self.sandbox) == 1 && Arc::weak_count(&self.sandbox) == 0
    }

    /// Whether an earlier trap has made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.lock().map_or(true, |s| s.is_poisoned())
    }

    /// The instance's store id, unique in this process: what host-resident
    /// keys are granted to.
    pub fn store_id(&self) -> u64 {
        self.id
    }

    /// Whether a WASI call has built the store's WASI context.
    #[cfg(test)]
    pub(crate) fn has_wasi_context(&self) -> bool {
        self.sandbox.lock().is_ok_and(|s| s.has_wasi_context())
    }

    /// Whether the key-level exports have been looked up in this instance.
    #[cfg(test)]
    fn has_loaded_key_level_funcs(&self) -> bool {
        self.sandbox
            .lock()
            .is_ok_and(|mut s| matches!(s.parts_mut().1.full, KeyLevelFuncs::Loaded(_)))
    }

    /// Whether the instance has imported since it last reported its epoch.
    #[cfg(test)]
    fn has_unreported_import(&self) -> bool {
        self.epoch().unreported_import
    }

    /// The largest this instance's linear memory has grown, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.sandbox.lock().map_or(0, |s| s.memory_bytes())
    }

    /// Seals traffic-key material to this instance (host side of the
    /// handoff, or any other handshake engine's keys). The material is
    /// zeroized when it drops.
    /// A host-resident key's reference is granted to this instance alone.
    pub fn seal_traffic_key(&self, material: &TrafficKeyMaterial) -> Result<Vec<u8>> {
        let blob = self.wrap(|secret| blob::wrap_traffic_key(secret, material))?;
        if let Some(key_ref) = material.host_key_ref {
            self.registration.keys.grant(key_ref, self.id);
        }
        Ok(blob)
    }

    /// After this instance exported keys in `states` to `recipient`: their
    /// host references (if any) go with them.
    pub(crate) fn hand_over_references(&self, states: &[TrafficKeyState], recipient: &ExchangeKey) {
        for key_ref in states.iter().filter_map(|s| s.host_key_ref) {
            self.registration
                .keys
                .transfer(key_ref, self.id, &recipient.id);
        }
    }

    /// Seals a MAC key to this instance.
    pub fn seal_mac_key(&self, key: &keyferry_record::mac::MacKey) -> Result<Vec<u8>> {
        self.wrap(|secret| blob::wrap_mac_key(secret, key))
    }

    /// Calls the instance's `connection` export.
    pub(crate) fn call_connection<R>(
        &self,
        f: impl FnOnce(&mut Store<StoreState>, &ConnectionFuncs) -> wasmtime::Result<R>,
    ) -> Result<R> {
        self.sandbox
            .lock()
            .map_err(|_| SandboxError::Poisoned)?
            .call(|s, e| f(s, &e.connection))
    }

    /// The requests the application reported in the last call, for the
    /// access log; empty for one that reports none.
    pub(crate) fn take_answered(&self) -> Vec<crate::access_log::RequestSummary> {
        self.sandbox.lock().map_or_else(
            |_| Vec::new(),
            |mut s| std::mem::take(&mut s.parts_mut().0.data_mut().answered),
        )
    }

    /// Whether this is an instance of a composed `wasi:http` component.
    pub fn serves_http(&self) -> bool {
        self.sandbox
            .lock()
            .map(|mut s| s.parts_mut().1.http.is_some())
            .unwrap_or(false)
    }

    /// Whether each request after the first is served by a fresh instance
    /// ([`crate::http_serve::HttpConfig::instance_per_request`]), made in
    /// the middle of [`crate::DataPlane::serve_http`].
    pub fn instance_per_request(&self) -> bool {
        self.sandbox
            .lock()
            .map(|mut s| s.parts_mut().0.data().http_config.instance_per_request)
            .unwrap_or(false)
    }

    /// Serves the attached connection of a composed `wasi:http` component
    /// over `state`'s transport, until it ends. On a failure, the 500 the
    /// guest sealed in reserve goes out if nothing was written since.
    #[allow(
        clippy::type_complexity,
        reason = "returned to one caller, which takes it apart"
    )]
    pub(crate) fn serve_http(
        &self,
        transport: Box<dyn crate::http_serve::Transport>,
    ) -> (
        Result<bool>,
        crate::http_serve::HttpOutcome,
        Box<dyn crate::http_serve::Transport>,
    ) {
        let mut sandbox = match self.sandbox.lock() {
            Ok(s) => s,
            Err(_) => {
                let state = crate::http_serve::HttpState::new(transport, ExecutionBound::Fuel(0));
                let (outcome, transport) = state.finish(false);
                return (Err(SandboxError::Poisoned.into()), outcome, transport);
            }
        };
        let state = crate::http_serve::HttpState::new(transport, sandbox.bound());
        sandbox.parts_mut().0.data_mut().http = Some(Box::new(state));
        let result = sandbox.call(|store, exports| match &exports.http {
            Some(http) => http.serve(store),
            None => Err(wasmtime::format_err!(
                "the component is not a composed wasi:http component"
            )),
        });
        let state = sandbox
            .parts_mut()
            .0
            .data_mut()
            .http
            .take()
            .expect("put there above");
        let (outcome, transport) = state.finish(result.is_err());
        (result, outcome, transport)
    }

    /// Calls the reference component's key-level exports.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<StoreState>, &DataplaneHostKeys) -> wasmtime::Result<R>,
    ) -> Result<R> {
        let mut sandbox = self.sandbox.lock().map_err(|_| SandboxError::Poisoned)?;
        if sandbox.is_poisoned() {
            return Err(SandboxError::Poisoned.into());
        }
        let (store, exports) = sandbox.parts_mut();
        exports.full.load(store)?;
        let result = sandbox.call(|s, e| match &e.full {
            KeyLevelFuncs::Loaded(full) => f(s, full).map(Some),
            KeyLevelFuncs::Absent | KeyLevelFuncs::Unloaded(..) => Ok(None),
        })?;
        result.ok_or_else(|| GuestError::MissingExport("keyferry:dataplane/keys").into())
    }

    fn own(&self, resource: ResourceAny, host_resident: bool) -> TrafficKeyHandle {
        TrafficKeyHandle {
            resource,
            instance: self.id,
            host_resident,
        }
    }

    fn check(&self, instance: u64) -> Result<()> {
        if instance == self.id {
            Ok(())
        } else {
            Err(GuestError::ForeignHandle.into())
        }
    }

    /// CryptImportKey: hands a sealed traffic-key blob to the guest.
    pub fn import_traffic_key(&self, blob: &[u8]) -> Result<TrafficKeyHandle> {
        let r = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_import(s, blob)
        })?;
        let mut handle = self.own(r.map_err(Error::from)?, false);
        self.note_import();
        // Only a store with keys in it can have granted this one.
        if !self.registration.keys.is_empty() {
            handle.host_resident = self.state(&handle)?.host_key_ref.is_some();
        }
        Ok(handle)
    }

    /// Protects one record in the guest; returns wire bytes (one record, or
    /// a KeyUpdate record and then the record).
    pub fn seal(
        &self,
        key: &TrafficKeyHandle,
        content_type: ContentType,
        payload: &[u8],
        padding: u16,
    ) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let ct = content_type.into();
        let (returned, held) = self.call(|s, b| {
            let returned = b.keyferry_dataplane_keys().traffic_key().call_seal(
                &mut *s,
                key.resource,
                ct,
                payload,
                padding,
            );
            // A host-resident key's records were sealed into the store
            // (`seal-held`), in order, before anything the guest returns.
            let held = std::mem::take(&mut s.data_mut().held);
            returned.map(|r| (r, held.sealed))
        })?;
        let out = match returned.map_err(Error::from)? {
            returned if held.is_empty() => returned,
            returned => {
                let mut out = held;
                out.extend_from_slice(&returned);
                out
            }
        };
        let records = count_records(&out).ok_or(GuestError::InvalidResult(
            "sealed output is not whole records",
        ))?;
        if records == 0 || records > 2 {
            return Err(GuestError::InvalidResult("sealed output record count").into());
        }
        Ok(out)
    }

    /// Opens one whole record in the guest.
    pub fn open(&self, key: &TrafficKeyHandle, record: &[u8]) -> Result<(ContentType, Vec<u8>)> {
        self.check(key.instance)?;
        let opened = match record.get(..HEADER_LEN) {
            // The body stays here: the key service opens it from the
            // store's copy, and only the header and the plaintext cross.
            // (`Sandboxed::call` drops it after the call.)
            Some(header) if key.host_resident => self.call(|s, b| {
                s.data_mut().held.to_open = Some(record.to_vec());
                b.keyferry_dataplane_keys()
                    .traffic_key()
                    .call_open_held(s, key.resource, header)
            })?,
            _ => self.call(|s, b| {
                b.keyferry_dataplane_keys()
                    .traffic_key()
                    .call_open(s, key.resource, record)
            })?,
        }
        .map_err(Error::from)?;
        if opened.payload.len() > MAX_PLAINTEXT {
            return Err(GuestError::InvalidResult("opened payload over 2^14 bytes").into());
        }
        Ok((opened.content_type.into(), opened.payload))
    }

    /// Seals a KeyUpdate message and moves the seal key to its next generation.
    pub fn send_key_update(&self, key: &TrafficKeyHandle, request_update: bool) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_keys()
                    .traffic_key()
                    .call_send_key_update(s, key.resource, request_update)
            })?
            .map_err(Error::from)?;
        if count_records(&out) != Some(1) {
            return Err(GuestError::InvalidResult("key update output is not one record").into());
        }
        Ok(out)
    }

    /// Moves a key to its next generation (after opening the peer's KeyUpdate).
    pub fn update(&self, key: &TrafficKeyHandle) -> Result<()> {
        self.check(key.instance)?;
        self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_update(s, key.resource)
        })?
        .map_err(Error::from)
    }

    /// The key's non-secret state.
    pub fn state(&self, key: &TrafficKeyHandle) -> Result<TrafficKeyState> {
        self.check(key.instance)?;
        let s = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .traffic_key()
                .call_state(s, key.resource)
        })?;
        Ok(s.into())
    }

    /// Takes the plaintext and ciphertext buffered at handoff; once.
    pub fn take_buffered(&self, key: &TrafficKeyHandle) -> Result<(Vec<u8>, Vec<u8>)> {
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
        &self,
        key: TrafficKeyHandle,
        recipient: &ExchangeKey,
    ) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let state = self.state(&key)?;
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_keys().traffic_key().call_export(
                    s,
                    key.resource,
                    &recipient.public_key,
                )
            })?
            .map_err(Error::from)?;
        recipient.check_addressed(&out)?;
        self.hand_over_references(&[state], recipient);
        Ok(out)
    }

    /// Drops a traffic key in the guest (its material is zeroized there).
    pub fn drop_traffic_key(&self, key: TrafficKeyHandle) -> Result<()> {
        self.check(key.instance)?;
        self.sandbox
            .lock()
            .map_err(|_| SandboxError::Poisoned)?
            .call(|s, _| key.resource.resource_drop(s))
    }

    /// Imports a sealed MAC-key blob.
    pub fn import_mac_key(&self, blob: &[u8]) -> Result<MacKeyHandle> {
        let r = self
            .call(|s, b| b.keyferry_dataplane_keys().mac_key().call_import(s, blob))?
            .map_err(Error::from)?;
        self.note_import();
        Ok(MacKeyHandle {
            resource: r,
            instance: self.id,
        })
    }

    /// The full-length MAC of `data`, computed in the guest.
    pub fn mac_compute(&self, key: &MacKeyHandle, data: &[u8]) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        let tag = self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .mac_key()
                .call_compute(s, key.resource, data)
        })?;
        if tag.len() != 32 && tag.len() != 48 {
            return Err(GuestError::InvalidResult("mac tag length").into());
        }
        Ok(tag)
    }

    /// Verifies a tag in the guest (constant time there).
    pub fn mac_verify(&self, key: &MacKeyHandle, data: &[u8], tag: &[u8]) -> Result<bool> {
        self.check(key.instance)?;
        self.call(|s, b| {
            b.keyferry_dataplane_keys()
                .mac_key()
                .call_verify(s, key.resource, data, tag)
        })?
        .map_err(Error::from)
    }

    /// Exports a MAC key, consuming the handle.
    pub fn export_mac_key(&self, key: MacKeyHandle, recipient: &ExchangeKey) -> Result<Vec<u8>> {
        self.check(key.instance)?;
        self.call(|s, b| {
            b.keyferry_dataplane_keys().mac_key().call_export(
                s,
                key.resource,
                &recipient.public_key,
            )
        })?
        .map_err(Error::from)
    }

    /// Stateless AEAD seal in the guest (known-answer tests).
    pub fn aead_seal(
        &self,
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        pt: &[u8],
    ) -> Result<Vec<u8>> {
        let a = alg.into();
        self.call(|s, b| {
            b.keyferry_dataplane_primitives()
                .call_aead_seal(s, a, key, nonce, aad, pt)
        })?
        .map_err(Error::from)
    }

    /// Stateless AEAD open in the guest (known-answer tests).
    pub fn aead_open(
        &self,
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let a = alg.into();
        self.call(|s, b| {
            b.keyferry_dataplane_primitives()
                .call_aead_open(s, a, key, nonce, aad, ct)
        })?
        .map_err(Error::from)
    }

    /// Stateless HMAC in the guest (known-answer tests).
    pub fn hmac(&self, alg: MacAlgorithm, key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let a = alg.into();
        self.call(|s, b| b.keyferry_dataplane_primitives().call_hmac(s, a, key, data))
    }

    /// TLS 1.3 HKDF-Expand-Label in the guest.
    pub fn hkdf_expand_label(
        &self,
        alg: MacAlgorithm,
        secret: &[u8],
        label: &str,
        context: &[u8],
        length: u16,
    ) -> Result<Vec<u8>> {
        let a = alg.into();
        let out = self
            .call(|s, b| {
                b.keyferry_dataplane_primitives()
                    .call_hkdf_expand_label(s, a, secret, label, context, length)
            })?
            .map_err(Error::from)?;
        if out.len() != length as usize {
            return Err(GuestError::InvalidResult("hkdf output length").into());
        }
        Ok(out)
    }

    /// Runs the guest's self-check (known answers and round trips) and
    /// returns its report.
    pub fn self_check(&self) -> Result<String> {
        self.call(|s, b| b.call_self_check(s))?
            .map_err(|failure| GuestError::SelfCheckFailed(crate::wit::guest_text(&failure)).into())
    }

    /// The guest's description of what it supports (JSON).
    pub fn describe(&self) -> Result<String> {
        self.call(|s, b| b.call_describe(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::GuestComponent;
    use crate::engine::{GuestEngine, SandboxConfig};

    #[test]
    fn a_store_builds_its_wasi_context_only_for_a_wasi_call() {
        let guest = reference_instance();
        // Instantiated and handed its wrapping secret: no WASI call yet.
        assert!(!guest.has_wasi_context());
        // Making its exchange key reads WASI randomness.
        guest.exchange_key().unwrap();
        assert!(guest.has_wasi_context());
    }

    /// An instance of the reference component on the default engine.
    fn reference_instance() -> GuestInstance {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        GuestComponent::reference(&engine)
            .unwrap()
            .instantiate()
            .unwrap()
    }

    fn material(secret: u8) -> TrafficKeyMaterial {
        TrafficKeyMaterial::from_tls13_secret(
            AeadAlgorithm::ChaCha20Poly1305,
            keyferry_record::Direction::Seal,
            &[secret; 32],
            0,
            u64::from(secret),
        )
        .unwrap()
    }

    #[test]
    fn key_level_funcs_are_looked_up_on_the_first_call_that_needs_them() {
        let guest = reference_instance();
        // Instantiating and wrapping use `connection` alone.
        let blob = guest.seal_traffic_key(&material(1)).unwrap();
        assert!(!guest.has_loaded_key_level_funcs());
        let key = guest.import_traffic_key(&blob).unwrap();
        assert!(guest.has_loaded_key_level_funcs());
        assert_eq!(guest.state(&key).unwrap().sequence, 0);
        guest.drop_traffic_key(key).unwrap();
    }

    #[test]
    fn an_import_is_reported_when_the_epoch_is_next_needed() {
        let guest = reference_instance();
        assert!(!guest.has_unreported_import());
        let key = guest
            .import_traffic_key(&guest.seal_traffic_key(&material(1)).unwrap())
            .unwrap();
        // Not asked after the import (an instance per connection never
        // needs its epoch again) ...
        assert!(guest.has_unreported_import());
        // ... but before the next wrap, which must use the current epoch's
        // secret: the blob it makes opens.
        let blob = guest.seal_traffic_key(&material(2)).unwrap();
        assert!(!guest.has_unreported_import());
        let second = guest.import_traffic_key(&blob).unwrap();
        assert!(guest.has_unreported_import());
        // The exchange key asks too.
        guest.exchange_key().unwrap();
        assert!(!guest.has_unreported_import());
        guest.drop_traffic_key(key).unwrap();
        guest.drop_traffic_key(second).unwrap();
    }

    #[test]
    fn a_late_epoch_report_never_makes_the_host_forget_a_secret() {
        let mut epoch = Epoch::default();
        epoch.advance(3);
        epoch.wrapping = Some((3, WrappingSecret::from_bytes(&[1; 32]).unwrap()));
        // A report of an older epoch, read before the rotation but applied
        // after it, changes nothing.
        epoch.advance(2);
        assert_eq!(epoch.number, 3);
        assert!(matches!(&epoch.wrapping, Some((3, _))));
        // A newer one makes the secret stale (a new one is handed over)
        // and the exchange key is fetched again.
        epoch.exchange = Some(ExchangeKey {
            id: [0; 16],
            public_key: [0; PUBLIC_KEY_LEN],
        });
        epoch.advance(4);
        assert!(epoch.exchange.is_none());
        assert!(!matches!(&epoch.wrapping, Some((n, _)) if *n == epoch.number));
    }
}
