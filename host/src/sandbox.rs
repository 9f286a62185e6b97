//! What one guest store holds, and the one way into it: every call arms
//! the execution bound first, and any trap poisons the store for good.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::keyferry::dataplane::types as wit;
use crate::error::{Error, Result, SandboxError, TrapKind, WouldBlock};
use crate::keystore::HostKeyStore;

/// The epoch ticker's period: the granularity of [`ExecutionBound::Deadline`].
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How long one call into a guest may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionBound {
    /// Each call gets this much fuel (about one unit per wasm instruction).
    /// Deterministic, at some cost in speed.
    Fuel(u64),
    /// Each call must return within this wall-clock time (epoch
    /// interruption, checked every 10 ms). Cheap.
    Deadline(Duration),
}

/// What a guest store holds: WASI state, limits and the host key store.
pub(crate) struct StoreState {
    /// This store's id: the holder the host key store grants keys to.
    pub(crate) id: u64,
    /// WASI state, built on the guest's first WASI call. `serve`'s
    /// built-in components, which have no std, make none on a
    /// connection's path, and a `WasiCtx` (boxed stdio, clocks, a seeded
    /// RNG) was part of the cost of every store.
    pub(crate) wasi: Option<WasiCtx>,
    pub(crate) table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) keys: Arc<HostKeyStore>,
    /// Records the key service holds for the call in progress.
    pub(crate) held: HeldRecords,
    /// What `wasi:cli/environment` returns.
    pub(crate) env: Arc<Vec<(String, String)>>,
    /// What a composed `wasi:http` component's codec accepts.
    pub(crate) http_config: crate::http_serve::HttpConfig,
    /// The connection a composed `wasi:http` component is serving.
    pub(crate) http: Option<Box<crate::http_serve::HttpState>>,
    /// Requests an application reported in the call in progress
    /// (`keyferry:dataplane/access-log`), for [`crate::DataPlane`] to take.
    pub(crate) answered: Vec<crate::access_log::RequestSummary>,
}

/// Records that stay in the host while a guest works on them: those a
/// host-resident key sealed (`seal-held`), collected when the export call
/// returns, and the one record an `open-held` call opens. Neither crosses
/// into the guest's memory; the guest sees a length or a header.
#[derive(Default)]
pub(crate) struct HeldRecords {
    /// Sealed records, in the order the guest sealed them.
    pub(crate) sealed: Vec<u8>,
    /// The record handed to `open-held`, header included, until the key
    /// service opens it.
    pub(crate) to_open: Option<Vec<u8>>,
}

impl HeldRecords {
    /// The most records one export call may leave held: a `seal` makes at
    /// most two (a KeyUpdate, then the record). More is a guest sealing
    /// outside a call that collects them.
    pub(crate) const MAX_SEALED: usize = 3;
}

/// A grow the store limits refused. Typed, so a trap it causes is
/// classified by its type rather than by wasmtime's message text.
#[derive(Debug, thiserror::Error)]
#[error("{0} grow beyond the store limit")]
pub(crate) struct GrowRefused(&'static str);

/// wasmtime's [`StoreLimits`], trapping with [`GrowRefused`] when a grow is
/// refused: a guest at its cap stops at once instead of limping on. It also
/// records how large the guest's memory has grown.
pub(crate) struct Limits(pub(crate) StoreLimits, pub(crate) usize);

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.0.memory_growing(current, desired, maximum)? {
            true => {
                self.1 = self.1.max(desired);
                Ok(true)
            }
            false => Err(GrowRefused("memory").into()),
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.0.table_growing(current, desired, maximum)? {
            true => Ok(true),
            false => Err(GrowRefused("table").into()),
        }
    }

    fn instances(&self) -> usize {
        self.0.instances()
    }

    fn tables(&self) -> usize {
        self.0.tables()
    }

    fn memories(&self) -> usize {
        self.0.memories()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| {
                let mut builder = WasiCtx::builder();
                for (key, value) in self.env.iter() {
                    builder.env(key, value);
                }
                builder.build()
            }),
            table: &mut self.table,
        }
    }
}

impl wit::Host for StoreState {}

/// A guest store and its exports, with the execution bound armed before
/// every call and poisoning after a trap.
pub(crate) struct Sandboxed<E> {
    store: Store<StoreState>,
    exports: E,
    bound: ExecutionBound,
    poisoned: bool,
}

impl<E> Sandboxed<E> {
    pub(crate) fn new(store: Store<StoreState>, exports: E, bound: ExecutionBound) -> Self {
        Self {
            store,
            exports,
            bound,
            poisoned: false,
        }
    }

    pub(crate) fn bound(&self) -> ExecutionBound {
        self.bound
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The largest the guest's linear memory has grown, in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.store.data().limits.1
    }

    /// The store and the exports, for looking exports up (no guest code
    /// runs, so no bound is armed).
    pub(crate) fn parts_mut(&mut self) -> (&mut Store<StoreState>, &mut E) {
        (&mut self.store, &mut self.exports)
    }

    /// Whether a WASI call has built the store's WASI context.
    #[cfg(test)]
    pub(crate) fn has_wasi_context(&self) -> bool {
        self.store.data().wasi.is_some()
    }

    /// Calls into the guest. Any wasmtime error poisons the store: only a
    /// new instance works again.
    pub(crate) fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>, &E) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if self.poisoned {
            return Err(SandboxError::Poisoned.into());
        }
        arm(&mut self.store, self.bound)?;
        let result = f(&mut self.store, &self.exports);
        // Records held for a call are its own: what it did not collect
        // (a guest sealing where no caller collects) goes with it.
        self.store.data_mut().held = HeldRecords::default();
        result.map_err(|e| {
            self.poisoned = true;
            classify(e)
        })
    }
}

/// Arms the execution bound for the next call.
pub(crate) fn arm(store: &mut Store<StoreState>, bound: ExecutionBound) -> Result<()> {
    match bound {
        ExecutionBound::Fuel(fuel) => store.set_fuel(fuel).map_err(|source| {
            SandboxError::Engine {
                context: "setting fuel",
                source,
            }
            .into()
        }),
        ExecutionBound::Deadline(limit) => {
            let ticks = (limit.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1;
            store.set_epoch_deadline(ticks);
            Ok(())
        }
    }
}

/// Maps a wasmtime failure to why the guest stopped, by the trap's type.
pub(crate) fn classify(source: wasmtime::Error) -> Error {
    let kind = match source.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => TrapKind::OutOfFuel,
        Some(wasmtime::Trap::Interrupt) => TrapKind::Deadline,
        Some(wasmtime::Trap::AllocationTooLarge) => TrapKind::ResourceLimit,
        Some(wasmtime::Trap::CannotEnterComponent) => return SandboxError::Poisoned.into(),
        Some(_) => TrapKind::Other,
        None if source.downcast_ref::<GrowRefused>().is_some() => TrapKind::ResourceLimit,
        None if source.downcast_ref::<WouldBlock>().is_some() => TrapKind::WouldBlock,
        None => TrapKind::Other,
    };
    SandboxError::Trap { kind, source }.into()
}
