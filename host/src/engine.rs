//! The wasmtime engine and its limits.
//!
//! Every guest store gets a memory cap and an execution bound per call, so
//! a guest that loops or allocates without end traps instead of taking the
//! host with it. One [`GuestEngine`] serves many components and instances.

use crate::http_serve::HttpConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimitsBuilder,
};

use crate::bindings::keyferry::dataplane::types;
use crate::error::{Result, SandboxError};
use crate::keystore::HostKeyStore;
use crate::sandbox::{EPOCH_TICK, ExecutionBound, Limits, StoreState};

/// Limits and engine settings for guests.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    memory_limit: usize,
    execution: ExecutionBound,
    pooling: Option<u32>,
    env: Arc<Vec<(String, String)>>,
    http: HttpConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            memory_limit: 64 << 20,
            execution: ExecutionBound::Deadline(Duration::from_secs(1)),
            pooling: None,
            env: Arc::default(),
            http: HttpConfig::default(),
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

    /// The environment a guest's `wasi:cli/environment` returns (empty by
    /// default: a guest sees none of the host's).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = Arc::new(env);
        self
    }

    /// What a served `wasi:http` component's HTTP codec accepts (the
    /// largest request head and body).
    pub fn with_http(mut self, limits: HttpConfig) -> Self {
        self.http = limits;
        self
    }

    /// The HTTP codec's limits.
    pub fn http_config(&self) -> HttpConfig {
        self.http
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

struct EngineShared {
    engine: Engine,
    linker: Linker<StoreState>,
    config: SandboxConfig,
    keys: Arc<HostKeyStore>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A wasmtime engine configured for keyferry guests: the linker (WASI and
/// the host key service), the limits, and the host key store its guests
/// share. Cheap to clone.
#[derive(Clone)]
pub struct GuestEngine {
    shared: Arc<EngineShared>,
}

/// Wraps a wasmtime error with what was being done.
pub(crate) fn engine_error(context: &'static str) -> impl FnOnce(wasmtime::Error) -> SandboxError {
    move |source| SandboxError::Engine { context, source }
}

/// Bytes of a pooled memory kept resident between instances when Linux's
/// `PAGEMAP_SCAN` is not available (before 6.7, other systems): wasmtime
/// then rewrites this much of the low memory with memset whatever was
/// touched. About what a fresh instance touches: keeping less resident
/// costs more in page faults than it saves in memset, keeping more costs
/// more in memset than it saves in faults (PERF.md has the figures).
const KEEP_RESIDENT: usize = 128 << 10;

/// With `PAGEMAP_SCAN`, wasmtime rewrites only the pages an instance
/// dirtied, up to this many bytes, and hands back only the rest: a
/// connection's instance touches well under this, so a slot is reset
/// with no `madvise` (and no TLB shootdown) and the next instance takes
/// no page faults (server CPU per new connection went down, and minor
/// faults per connection to almost none; PERF.md has the figures).
const KEEP_RESIDENT_SCANNED: usize = 1 << 20;

impl GuestEngine {
    /// Builds the engine and linker. Starts the epoch ticker thread when
    /// the execution bound is a deadline.
    pub fn new(config: SandboxConfig) -> Result<Self> {
        crate::host_aead::install_blob_aead();
        let mut wasm = Config::new();
        // KEYFERRY_PERF_MAP=1: write /tmp/perf-PID.map so `perf report`
        // names JIT-compiled guest functions (a profiling aid; off by
        // default, as the map grows with every compiled component).
        if std::env::var_os("KEYFERRY_PERF_MAP").is_some_and(|v| v == "1") {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
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
            // A composed wasi:http component has two memories (front and
            // tenant); the others have one.
            pool.total_component_instances(max)
                .total_core_instances(max.saturating_mul(8))
                .total_memories(max.saturating_mul(2))
                .total_tables(max.saturating_mul(4))
                .max_memory_size(config.memory_limit)
                .max_unused_warm_slots(max.min(64))
                // A reused slot is wiped with memset up to this size
                // instead of being handed back to the kernel, so the next
                // instance does not fault its pages in again.
                .table_keep_resident(KEEP_RESIDENT / 16);
            if PoolingAllocationConfig::is_pagemap_scan_available() {
                pool.pagemap_scan(Enabled::Yes)
                    .linear_memory_keep_resident(KEEP_RESIDENT_SCANNED);
            } else {
                pool.linear_memory_keep_resident(KEEP_RESIDENT);
            }
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(engine_error("creating the engine"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error("linking WASI"))?;
        crate::wasi_io::add_to_linker(&mut linker).map_err(engine_error("linking WASI streams"))?;
        crate::key_service::add_to_linker(&mut linker)
            .map_err(engine_error("linking the key service"))?;
        types::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(engine_error("linking the types interface"))?;
        crate::http_serve::add_to_linker(&mut linker)
            .map_err(engine_error("linking the HTTP transport"))?;
        crate::access_log::add_to_linker(&mut linker)
            .map_err(engine_error("linking the access log"))?;
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
                })?;
        }
        Ok(Self {
            shared: Arc::new(EngineShared {
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

    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.shared.engine
    }

    pub(crate) fn linker(&self) -> &Linker<StoreState> {
        &self.shared.linker
    }

    pub(crate) fn new_store(&self, memories: usize) -> Store<StoreState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.shared.config.memory_limit)
            // The memory cap is per linear memory; a component built by
            // wasm-component-ld has one, so allow one and the cap is the
            // instance's total. A composed wasi:http component has one
            // per part (`memories`). Tables are bounded too.
            .instances(64)
            .tables(64)
            .memories(memories)
            .table_elements(100_000)
            .build();
        static NEXT_STORE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let state = StoreState {
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            wasi: None,
            table: ResourceTable::new(),
            limits: Limits(limits, 0),
            keys: self.shared.keys.clone(),
            held: Default::default(),
            env: self.shared.config.env.clone(),
            http_config: self.shared.config.http,
            http: None,
            answered: Vec::new(),
        };
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limits);
        // Everything a guest hands the host in one call (a call's result,
        // or a key-service request) must live in its memory, so no honest
        // call moves more than the memory cap. Lists that alias one region
        // many times could otherwise make the host lift far more (wasmtime's
        // default allowance is 128 MiB per call).
        store.set_hostcall_fuel(self.shared.config.memory_limit);
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_hands_over_no_more_than_its_memory_per_call() {
        let engine = GuestEngine::new(SandboxConfig::default().with_memory_limit(8 << 20)).unwrap();
        assert_eq!(engine.new_store(1).hostcall_fuel(), 8 << 20);
    }
}
