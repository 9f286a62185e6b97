//! Compiled guest components, ready to instantiate.
//!
//! Every component exports `keyferry:dataplane/connection`; the reference
//! component also exports the key-level interfaces (`keys`, `primitives`,
//! `self-check`). Instantiating from a [`GuestComponent`] skips all
//! compilation; the `connection` exports are type-checked once per
//! component, and the key-level ones on an instance's first call to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, Instance, InstancePre, ResourceAny, TypedFunc,
};

use crate::bindings::DataplaneHostKeysIndices;
use crate::compose::{self, ComponentKind};
use crate::connection_funcs::ConnectionIndices;
use crate::engine::{GuestEngine, engine_error};
use crate::error::Result;
use crate::instance::{GuestFuncs, GuestInstance, HttpFuncs, KeyLevelFuncs};
use crate::sandbox::{StoreState, arm, classify};

/// The reference component (`dataplane` world): its connections hand their
/// plaintext to the host. Shipped prebuilt (`host/components`), as the
/// WASI adapter crate ships its adapter, so an embedder's build compiles
/// nothing for wasm; the tests rebuild it and check the bytes.
pub const REFERENCE_COMPONENT: &[u8] = include_bytes!("../components/keyferry_guest.wasm");

/// The reference component built for the `dataplane-host-keys` world, for
/// host-resident keys.
pub const REFERENCE_COMPONENT_HOST_KEYS: &[u8] =
    include_bytes!("../components/keyferry_guest_host_keys.wasm");

/// A compiled, type-checked guest component.
#[derive(Clone)]
pub struct GuestComponent {
    engine: GuestEngine,
    pre: InstancePre<StoreState>,
    connection: ConnectionIndices,
    full: Option<Arc<DataplaneHostKeysIndices>>,
    /// The front's `http-session` and the tenant's handler, for a
    /// composed `wasi:http` component.
    http: Option<HttpIndices>,
    kind: ComponentKind,
}

impl GuestComponent {
    /// Compiles a component (a `.wasm` component binary). It either
    /// exports `keyferry:dataplane/connection` (an application component)
    /// or is a stock `wasi:http` component (it exports
    /// `wasi:http/incoming-handler@0.2.x`), which is first composed with
    /// keyferry's front ([`crate::compose`]).
    pub fn new(engine: &GuestEngine, wasm: &[u8]) -> Result<Self> {
        let kind = compose::kind_of(wasm)?;
        let component = match kind {
            ComponentKind::Application => Component::new(engine.wasmtime(), wasm),
            ComponentKind::WasiHttp => {
                Component::new(engine.wasmtime(), &compose::compose_wasi_http(wasm)?[..])
            }
        }
        .map_err(engine_error("compiling"))?;
        let prepared = Self::prepare(engine, component)?;
        if prepared.kind != kind {
            // A composition that lost its request path would serve as an
            // application component and fail on every connection.
            return Err(engine_error("loading the composed wasi:http component")(
                wasmtime::format_err!("it exports no http-session or incoming-handler"),
            )
            .into());
        }
        Ok(prepared)
    }

    /// Compiles the reference component.
    pub fn reference(engine: &GuestEngine) -> Result<Self> {
        Self::new(engine, REFERENCE_COMPONENT)
    }

    /// Compiles the reference component with the host key service import.
    pub fn reference_with_host_keys(engine: &GuestEngine) -> Result<Self> {
        Self::new(engine, REFERENCE_COMPONENT_HOST_KEYS)
    }

    /// Serializes a compiled component so a later process can skip
    /// compilation ([`GuestComponent::deserialize`]).
    pub fn precompile(engine: &GuestEngine, wasm: &[u8]) -> Result<Vec<u8>> {
        Ok(engine
            .wasmtime()
            .precompile_component(wasm)
            .map_err(engine_error("precompiling"))?)
    }

    /// Loads a component serialized by [`GuestComponent::precompile`].
    ///
    /// # Safety
    /// The bytes must come from `precompile` of an engine with the same
    /// configuration; wasmtime trusts them as machine code.
    #[allow(
        unsafe_code,
        reason = "wasmtime's precompiled-artifact API is unsafe by contract"
    )]
    pub unsafe fn deserialize(engine: &GuestEngine, bytes: &[u8]) -> Result<Self> {
        // SAFETY: the caller vouches for the bytes' origin (see above).
        let component = unsafe { Component::deserialize(engine.wasmtime(), bytes) }
            .map_err(engine_error("loading a precompiled component"))?;
        Self::prepare(engine, component)
    }

    fn prepare(engine: &GuestEngine, component: Component) -> Result<Self> {
        let pre = engine
            .linker()
            .instantiate_pre(&component)
            .map_err(engine_error("linking the component"))?;
        let connection = ConnectionIndices::new(&pre).map_err(engine_error(
            "the component does not export keyferry:dataplane/connection",
        ))?;
        let full = DataplaneHostKeysIndices::new(&pre).ok().map(Arc::new);
        let http = HttpIndices::new(&pre, engine);
        Ok(Self {
            engine: engine.clone(),
            pre,
            connection,
            full,
            kind: if http.is_some() {
                ComponentKind::WasiHttp
            } else {
                ComponentKind::Application
            },
            http,
        })
    }

    /// What the component is: an application component, or a composed
    /// stock `wasi:http` component.
    pub fn kind(&self) -> ComponentKind {
        self.kind
    }

    /// A fresh instance in its own store: its own memory, its own exchange
    /// key, its own registry of imported blobs. A trap poisons only it.
    pub fn instantiate(&self) -> Result<GuestInstance> {
        let memories = match self.kind {
            ComponentKind::Application => 1,
            ComponentKind::WasiHttp => 2,
        };
        let mut store = self.engine.new_store(memories);
        let bound = self.engine.config().execution_bound();
        arm(&mut store, bound)?;
        let instance = self.pre.instantiate(&mut store).map_err(classify)?;
        let http = match &self.http {
            Some(indices) => Some(indices.load(&mut store, &instance)?),
            None => None,
        };
        let connection = self
            .connection
            .load(&mut store, &instance)
            .map_err(engine_error("loading the connection exports"))?;
        let full = match &self.full {
            Some(indices) => KeyLevelFuncs::Unloaded(indices.clone(), instance),
            None => KeyLevelFuncs::Absent,
        };
        let guest = GuestInstance::new(
            store,
            GuestFuncs {
                connection,
                full,
                http,
            },
            bound,
            Some(self.clone()),
        )?;
        // Pre-keyed: the instance gets its wrapping secret now, off the
        // path of the connection it will serve.
        guest.prepare_wrapping()?;
        Ok(guest)
    }

    /// The names of the instances the component imports (WIT interfaces
    /// such as `wasi:random/random@0.2.6`), sorted: what the host must
    /// provide, and what each instance pays to be linked to.
    pub fn imports(&self) -> Vec<String> {
        let engine = self.engine.wasmtime();
        let mut names: Vec<String> = self
            .pre
            .component()
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Whether the component exports the key-level interfaces (`keys`,
    /// `primitives`, `self-check`), as the reference component does.
    pub fn has_keys_interface(&self) -> bool {
        self.full.is_some()
    }

    /// The engine this component belongs to.
    pub fn engine(&self) -> &GuestEngine {
        &self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SandboxConfig;

    /// Built without std: no WASI CLI or I/O imports (see the guest
    /// crate's `component-runtime`).
    #[test]
    fn the_reference_components_import_only_what_they_use() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        assert_eq!(
            GuestComponent::reference(&engine).unwrap().imports(),
            ["keyferry:dataplane/types@0.1.0", "wasi:random/random@0.2.6"]
        );
        assert_eq!(
            GuestComponent::reference_with_host_keys(&engine)
                .unwrap()
                .imports(),
            [
                "keyferry:dataplane/key-service@0.1.0",
                "keyferry:dataplane/types@0.1.0",
                "wasi:random/random@0.2.6"
            ]
        );
    }
}

/// Where a composed `wasi:http` component's request path is: the front's
/// `http-session` functions and the tenant's `handle`. Their types are
/// checked on the first instance only, as `ConnectionIndices` does for
/// `connection` (every instance of one `InstancePre` has the same types).
#[derive(Clone)]
struct HttpIndices {
    next_request: ComponentExportIndex,
    handled: ComponentExportIndex,
    paused: ComponentExportIndex,
    handle: ComponentExportIndex,
    checked: Arc<AtomicBool>,
}

impl HttpIndices {
    /// `None` unless the component exports both (an application
    /// component exports neither).
    fn new(pre: &InstancePre<StoreState>, engine: &GuestEngine) -> Option<Self> {
        let component = pre.component();
        let session = component.get_export_index(None, compose::HTTP_SESSION)?;
        let handler = component
            .component_type()
            .exports(engine.wasmtime())
            .find_map(|(name, item)| {
                (name.starts_with(compose::INCOMING_HANDLER)
                    && matches!(item.ty, ComponentItem::ComponentInstance(_)))
                .then(|| name.to_string())
            })?;
        let handler = component.get_export_index(None, &handler)?;
        Some(Self {
            next_request: component.get_export_index(Some(&session), "next-request")?,
            handled: component.get_export_index(Some(&session), "handled")?,
            paused: component.get_export_index(Some(&session), "paused")?,
            handle: component.get_export_index(Some(&handler), "handle")?,
            checked: Arc::default(),
        })
    }

    /// The functions in `instance`: type-checked if no instance of this
    /// component has been yet, only looked up after that.
    #[allow(
        unsafe_code,
        reason = "TypedFunc::new_unchecked, after the same signature was checked on an instance of the same InstancePre"
    )]
    fn load(&self, store: &mut Store<StoreState>, instance: &Instance) -> Result<HttpFuncs> {
        let mut find = |index: &ComponentExportIndex| {
            instance.get_func(&mut *store, index).ok_or_else(|| {
                engine_error("loading the wasi:http request path")(wasmtime::format_err!(
                    "an export of it is not a function"
                ))
            })
        };
        let (next_request, handled, paused, handle) = (
            find(&self.next_request)?,
            find(&self.handled)?,
            find(&self.paused)?,
            find(&self.handle)?,
        );
        if !self.checked.load(Ordering::Acquire) {
            let typed = |what: &'static str| engine_error(what);
            next_request
                .typed::<(), (Option<(ResourceAny, ResourceAny)>,)>(&*store)
                .map_err(typed("the type of http-session's next-request"))?;
            handled
                .typed::<(), ()>(&*store)
                .map_err(typed("the type of http-session's handled"))?;
            paused
                .typed::<(), (bool,)>(&*store)
                .map_err(typed("the type of http-session's paused"))?;
            handle
                .typed::<(ResourceAny, ResourceAny), ()>(&*store)
                .map_err(typed("the type of the tenant's incoming-handler handle"))?;
            self.checked.store(true, Ordering::Release);
        }
        // SAFETY: these exact parameter and result types were checked
        // above, on this instance or an earlier one of the same
        // `InstancePre`, which fixes every export's type.
        unsafe {
            Ok(HttpFuncs {
                next_request: TypedFunc::new_unchecked(next_request),
                handled: TypedFunc::new_unchecked(handled),
                paused: TypedFunc::new_unchecked(paused),
                handle: TypedFunc::new_unchecked(handle),
            })
        }
    }
}
