//! The wasmtime engine, its limits, and the compiled guest components.
//!
//! Every guest store gets a memory cap and an execution bound per call, so
//! a guest that loops or allocates without end traps instead of taking the
//! host with it. One [`GuestEngine`] serves many instances; instantiating
//! from a [`GuestComponent`] skips all compilation and type checking.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::app_bindings::{ApplicationPlugin, ApplicationPluginPre};
use crate::bindings::keyferry::dataplane::key_service;
use crate::bindings::{DataplaneHostKeys, DataplaneHostKeysPre};
use crate::error::{Error, Result, TrapKind};
use crate::guest::GuestInstance;
use crate::keystore::HostKeyStore;

/// The epoch ticker's period: the granularity of [`ExecutionBound::Deadline`].
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How long one call into a guest may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionBound {
    /// Each call gets this much fuel (about one unit per wasm instruction).
    /// Deterministic, at some cost in speed.
    Fuel(u64),
    /// Each call must return within this wall-clock time (epoch
    /// interruption, checked every [`EPOCH_TICK`]). Cheap.
    Deadline(Duration),
}

/// Limits and engine settings for guests.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    memory_limit: usize,
    execution: ExecutionBound,
    pooling: Option<u32>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            memory_limit: 64 << 20,
            execution: ExecutionBound::Deadline(Duration::from_secs(1)),
            pooling: None,
        }
    }
}

impl SandboxConfig {
    /// The most linear memory one guest instance may grow to, in bytes.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The execution bound applied to every call.
    pub fn with_execution_bound(mut self, bound: ExecutionBound) -> Self {
        self.execution = bound;
        self
    }

    /// Preallocates slots for up to `max_instances` live guests (the
    /// pooling allocator), which makes instantiation much cheaper.
    pub fn with_pooling(mut self, max_instances: u32) -> Self {
        self.pooling = Some(max_instances);
        self
    }

    /// The memory limit in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// The execution bound.
    pub fn execution_bound(&self) -> ExecutionBound {
        self.execution
    }
}

/// What a guest store holds: WASI state, limits and the host key store.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    keys: Arc<HostKeyStore>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl key_service::Host for StoreState {
    fn seal_record(
        &mut self,
        key_ref: u64,
        generation: u32,
        sequence: u64,
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, key_service::KeyServiceError> {
        use keyferry_guest::key_service::KeyService;
        self.keys
            .seal_record(key_ref, generation, sequence, &aad, &plaintext)
            .map_err(to_wit)
    }

    fn open_record(
        &mut self,
        key_ref: u64,
        generation: u32,
        sequence: u64,
        aad: Vec<u8>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, key_service::KeyServiceError> {
        use keyferry_guest::key_service::KeyService;
        self.keys
            .open_record(key_ref, generation, sequence, &aad, &body)
            .map_err(to_wit)
    }

    fn update(
        &mut self,
        key_ref: u64,
        generation: u32,
    ) -> Result<(), key_service::KeyServiceError> {
        use keyferry_guest::key_service::KeyService;
        self.keys.update(key_ref, generation).map_err(to_wit)
    }
}

fn to_wit(e: keyferry_guest::KeyServiceError) -> key_service::KeyServiceError {
    use key_service::KeyServiceError as W;
    use keyferry_guest::KeyServiceError as E;
    match e {
        E::UnknownKey => W::UnknownKey,
        E::SequenceReused => W::SequenceReused,
        E::AuthenticationFailed => W::AuthenticationFailed,
        E::InvalidArgument => W::InvalidArgument,
        E::Unsupported => W::Unsupported,
    }
}

struct Shared {
    engine: Engine,
    linker: Linker<StoreState>,
    config: SandboxConfig,
    keys: Arc<HostKeyStore>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A wasmtime engine configured for keyferry guests.
#[derive(Clone)]
pub struct GuestEngine {
    shared: Arc<Shared>,
}

impl GuestEngine {
    /// Builds the engine and linker. Starts the epoch ticker thread when
    /// the execution bound is a deadline.
    pub fn new(config: SandboxConfig) -> Result<Self> {
        let mut wasm = Config::new();
        match config.execution {
            ExecutionBound::Fuel(_) => {
                wasm.consume_fuel(true);
            }
            ExecutionBound::Deadline(_) => {
                wasm.epoch_interruption(true);
            }
        }
        if let Some(max) = config.pooling {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(max)
                .total_core_instances(max.saturating_mul(8))
                .total_memories(max.saturating_mul(2))
                .total_tables(max.saturating_mul(4))
                .max_memory_size(config.memory_limit)
                .max_unused_warm_slots(max.min(64));
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        key_service::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        if matches!(config.execution, ExecutionBound::Deadline(_)) {
            let weak = engine.weak();
            let stop = ticker_stop.clone();
            thread::Builder::new()
                .name("keyferry-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| Error::Engine(format!("epoch ticker: {e}")))?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                config,
                keys: Arc::new(HostKeyStore::new()),
                ticker_stop,
            }),
        })
    }

    /// The host key store shared by this engine's guests.
    pub fn key_store(&self) -> &Arc<HostKeyStore> {
        &self.shared.keys
    }

    /// The sandbox settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// Compiles the reference guest (the `dataplane` world).
    pub fn reference_component(&self) -> Result<GuestComponent> {
        self.component(crate::GUEST_COMPONENT)
    }

    /// Compiles the reference guest built with the host key service import.
    pub fn reference_component_with_host_keys(&self) -> Result<GuestComponent> {
        self.component(crate::GUEST_COMPONENT_HOST_KEYS)
    }

    /// Compiles a component (a `.wasm` component binary) and checks that it
    /// exports the `keyferry:dataplane` interfaces.
    pub fn component(&self, wasm: &[u8]) -> Result<GuestComponent> {
        let component = Component::new(&self.shared.engine, wasm).map_err(engine_error)?;
        self.prepare(component)
    }

    /// Serializes a compiled component so a later process can skip
    /// compilation ([`GuestEngine::deserialize_component`]).
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>> {
        self.shared
            .engine
            .precompile_component(wasm)
            .map_err(engine_error)
    }

    /// Loads a component serialized by [`GuestEngine::precompile`].
    ///
    /// # Safety
    /// The bytes must come from `precompile` of an engine with the same
    /// configuration; wasmtime trusts them as machine code.
    #[allow(
        unsafe_code,
        reason = "wasmtime's precompiled-artifact API is unsafe by contract"
    )]
    pub unsafe fn deserialize_component(&self, bytes: &[u8]) -> Result<GuestComponent> {
        // SAFETY: the caller vouches for the bytes' origin (see above).
        let component =
            unsafe { Component::deserialize(&self.shared.engine, bytes) }.map_err(engine_error)?;
        self.prepare(component)
    }

    fn prepare(&self, component: Component) -> Result<GuestComponent> {
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(engine_error)?;
        // A component may export the whole data plane (the reference one
        // does), or only the application interface (a plugin).
        let full = DataplaneHostKeysPre::new(pre.clone()).ok();
        let app = ApplicationPluginPre::new(pre).ok();
        if full.is_none() && app.is_none() {
            return Err(Error::Engine(
                "the component exports neither keyferry:dataplane/keys nor keyferry:dataplane/application".into(),
            ));
        }
        Ok(GuestComponent {
            engine: self.clone(),
            full,
            app,
        })
    }

    pub(crate) fn new_store(&self) -> Store<StoreState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.shared.config.memory_limit)
            // The memory cap is per linear memory; a component built by
            // wasm-component-ld has one, so allow one and the cap is the
            // instance's total. Tables are bounded too.
            .instances(64)
            .tables(64)
            .memories(1)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let state = StoreState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            keys: self.shared.keys.clone(),
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }
}

/// A compiled, type-checked guest component, ready to instantiate.
#[derive(Clone)]
pub struct GuestComponent {
    engine: GuestEngine,
    full: Option<DataplaneHostKeysPre<StoreState>>,
    app: Option<ApplicationPluginPre<StoreState>>,
}

impl GuestComponent {
    /// A fresh instance in its own store: its own memory, its own exchange
    /// key, its own registry of imported blobs. A trap poisons only it.
    pub fn instantiate(&self) -> Result<GuestInstance> {
        let pre = self.full.as_ref().ok_or_else(|| {
            Error::Engine("the component does not export keyferry:dataplane/keys (it is an application plugin)".into())
        })?;
        let mut store = self.engine.new_store();
        arm(&mut store, self.engine.shared.config.execution)?;
        let bindings: DataplaneHostKeys = pre.instantiate(&mut store).map_err(classify)?;
        GuestInstance::new(store, bindings, self.engine.shared.config.execution)
    }

    /// A fresh instance driven through the `application` interface only:
    /// what `serve` uses, for the reference component and plugins alike.
    pub fn instantiate_application(&self) -> Result<crate::app::AppInstance> {
        let pre = self.app.as_ref().ok_or_else(|| {
            Error::Engine("the component does not export keyferry:dataplane/application".into())
        })?;
        let mut store = self.engine.new_store();
        arm(&mut store, self.engine.shared.config.execution)?;
        let bindings: ApplicationPlugin = pre.instantiate(&mut store).map_err(classify)?;
        crate::app::AppInstance::new(store, bindings, self.engine.shared.config.execution)
    }

    /// Whether the component exports the whole data plane (keys, records).
    pub fn has_keys_interface(&self) -> bool {
        self.full.is_some()
    }

    /// The engine this component belongs to.
    pub fn engine(&self) -> &GuestEngine {
        &self.engine
    }
}

fn engine_error(e: wasmtime::Error) -> Error {
    Error::Engine(format!("{e:#}"))
}

/// Arms the execution bound for the next call.
pub(crate) fn arm(store: &mut Store<StoreState>, bound: ExecutionBound) -> Result<()> {
    match bound {
        ExecutionBound::Fuel(fuel) => store
            .set_fuel(fuel)
            .map_err(|e| Error::Engine(format!("{e:#}"))),
        ExecutionBound::Deadline(limit) => {
            let ticks = (limit.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1;
            store.set_epoch_deadline(ticks);
            Ok(())
        }
    }
}

/// Maps a wasmtime failure to why the guest stopped.
pub(crate) fn classify(e: wasmtime::Error) -> Error {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return Error::Trap(match trap {
            wasmtime::Trap::OutOfFuel => TrapKind::OutOfFuel,
            wasmtime::Trap::Interrupt => TrapKind::Deadline,
            wasmtime::Trap::CannotEnterComponent => return Error::Poisoned,
            _ => TrapKind::Other,
        });
    }
    let text = format!("{e:#}");
    if text.contains("growing memory") || text.contains("resource limit") || text.contains("limit")
    {
        return Error::Trap(TrapKind::ResourceLimit);
    }
    Error::Trap(TrapKind::Other)
}

/// A guest store and its bindings, with the execution bound armed before
/// every call and poisoning after a trap.
pub(crate) struct Sandboxed<B> {
    store: Store<StoreState>,
    bindings: B,
    bound: ExecutionBound,
    poisoned: bool,
}

impl<B> Sandboxed<B> {
    pub(crate) fn new(store: Store<StoreState>, bindings: B, bound: ExecutionBound) -> Self {
        Self {
            store,
            bindings,
            bound,
            poisoned: false,
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Calls into the guest. Any wasmtime error poisons the store: only a
    /// new instance works again.
    pub(crate) fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>, &B) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        arm(&mut self.store, self.bound)?;
        match f(&mut self.store, &self.bindings) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned = true;
                Err(classify(e))
            }
        }
    }
}
