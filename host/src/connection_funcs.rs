//! The `keyferry:dataplane/connection` exports of one instance, loaded
//! without a type check per instance.
//!
//! `bindgen!`'s loader (`GuestIndices::load`) type-checks every export of
//! every instance, a noticeable share of what an instance costs `serve` to
//! make (PERF.md), for an answer that cannot change, since every instance of a
//! [`GuestComponent`](crate::component::GuestComponent) comes from one
//! `InstancePre` and so has the same export types. Here the check runs
//! once per component, on its first instance ([`ConnectionIndices::load`]),
//! and later instances only look their functions up.
//!
//! The signatures below are the ones `bindgen!` derives from
//! `wit/connection.wit`, over the same generated types; the check on the
//! first instance is against exactly these signatures, so a WIT change
//! that this file does not follow fails there, with a typed error, before
//! any call is made.

#![allow(
    unsafe_code,
    reason = "TypedFunc::new_unchecked, after the same signature was checked on an instance of the same InstancePre"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::AsContextMut;
use wasmtime::component::{
    ComponentExportIndex, Func, Instance, InstancePre, ResourceAny, TypedFunc,
};

use crate::bindings::exports::keyferry::dataplane::connection::{
    Error, ExchangeKey, Facts, Migrated, Output, TrafficKeyState,
};
use crate::sandbox::StoreState;

const INTERFACE: &str = "keyferry:dataplane/connection@0.1.0";

/// Declares each export once: its field, its export name, the method that
/// calls it, and its parameter and result types.
macro_rules! connection_funcs {
    ($(
        $(#[$doc:meta])*
        $field:ident = $name:literal,
        fn $call:ident($($arg:ident: $ty:ty),*) -> $ret:ty;
    )*) => {
        /// Where a component's `connection` functions are, and whether
        /// their types have been checked on an instance yet.
        #[derive(Clone)]
        pub(crate) struct ConnectionIndices {
            $($field: ComponentExportIndex,)*
            checked: Arc<AtomicBool>,
        }

        /// One instance's `connection` functions.
        pub(crate) struct ConnectionFuncs {
            $($field: Func,)*
        }

        impl ConnectionIndices {
            /// Finds every function of the interface in the component.
            pub(crate) fn new(pre: &InstancePre<StoreState>) -> wasmtime::Result<Self> {
                let component = pre.component();
                let (_, interface) = component
                    .get_export(None, INTERFACE)
                    .ok_or_else(|| wasmtime::format_err!("no export `{INTERFACE}`"))?;
                let find = |name: &str| {
                    component
                        .get_export_index(Some(&interface), name)
                        .ok_or_else(|| wasmtime::format_err!("`{INTERFACE}` exports no `{name}`"))
                };
                Ok(Self {
                    $($field: find($name)?,)*
                    checked: Arc::default(),
                })
            }

            /// The instance's functions: type-checked if no instance of
            /// this component has been yet, only looked up after that.
            pub(crate) fn load(
                &self,
                mut store: impl AsContextMut<Data = StoreState>,
                instance: &Instance,
            ) -> wasmtime::Result<ConnectionFuncs> {
                let find = |store: &mut wasmtime::StoreContextMut<'_, StoreState>,
                            index: &ComponentExportIndex| {
                    instance
                        .get_func(&mut *store, index)
                        .ok_or_else(|| wasmtime::format_err!("a `{INTERFACE}` export is not a function"))
                };
                let mut store = store.as_context_mut();
                let exports = ConnectionFuncs {
                    $($field: find(&mut store, &self.$field)?,)*
                };
                if !self.checked.load(Ordering::Acquire) {
                    $(
                        exports.$field.typed::<($($ty,)*), ($ret,)>(&store).map_err(|e| {
                            e.context(concat!("the type of `", $name, "`"))
                        })?;
                    )*
                    self.checked.store(true, Ordering::Release);
                }
                Ok(exports)
            }
        }

        impl ConnectionFuncs {
            $(
                $(#[$doc])*
                pub(crate) fn $call(
                    &self,
                    store: impl AsContextMut<Data = StoreState>,
                    $($arg: $ty),*
                ) -> wasmtime::Result<$ret> {
                    // SAFETY: `load` returns exports only once these
                    // parameter and result types have been checked against
                    // this function in an instance of the same
                    // `InstancePre`, which fixes every export's type.
                    let func = unsafe {
                        TypedFunc::<($($ty,)*), ($ret,)>::new_unchecked(self.$field)
                    };
                    let (ret,) = func.call(store, ($($arg,)*))?;
                    Ok(ret)
                }
            )*
        }
    };
}

connection_funcs! {
    /// The instance's X25519 exchange key (made on first use).
    instance_exchange_key = "instance-exchange-key",
    fn call_instance_exchange_key() -> ExchangeKey;

    /// Hands the instance its wrapping secret; returns the secret's id and
    /// the instance's epoch.
    instance_wrapping_secret = "instance-wrapping-secret",
    fn call_instance_wrapping_secret(secret: &[u8]) -> Result<(Vec<u8>, u32), Error>;

    /// The instance's key epoch.
    instance_epoch = "instance-epoch",
    fn call_instance_epoch() -> u32;

    /// Imports a connection's two key blobs.
    attach = "[static]tls-connection.attach",
    fn call_attach(seal_blob: &[u8], open_blob: &[u8], facts: &Facts) -> Result<ResourceAny, Error>;

    /// What the connection sends and delivers first.
    start = "[method]tls-connection.start",
    fn call_start(conn: ResourceAny) -> Output;

    /// Ciphertext from the peer.
    receive = "[method]tls-connection.receive",
    fn call_receive(conn: ResourceAny, ciphertext: &[u8]) -> Output;

    /// The peer's end of stream.
    end_of_stream = "[method]tls-connection.end-of-stream",
    fn call_end_of_stream(conn: ResourceAny) -> Output;

    /// Seals the host's plaintext into records.
    send = "[method]tls-connection.send",
    fn call_send(conn: ResourceAny, plaintext: &[u8]) -> Result<Vec<u8>, Error>;

    /// Ends the connection with close_notify.
    close = "[method]tls-connection.close",
    fn call_close(conn: ResourceAny) -> Output;

    /// A TLS 1.3 KeyUpdate record.
    key_update = "[method]tls-connection.key-update",
    fn call_key_update(conn: ResourceAny, request_update: bool) -> Result<Vec<u8>, Error>;

    /// Both traffic keys' non-secret state.
    key_states = "[method]tls-connection.key-states",
    fn call_key_states(conn: ResourceAny) -> (TrafficKeyState, TrafficKeyState);

    /// Moves the connection's keys to another instance.
    export = "[static]tls-connection.export",
    fn call_export(conn: ResourceAny, recipient: &[u8]) -> Result<Migrated, Error>;
}

#[cfg(test)]
mod tests {
    use wasmtime::component::Component;

    use super::*;
    use crate::component::REFERENCE_COMPONENT;
    use crate::engine::{GuestEngine, SandboxConfig};

    fn prepared() -> (GuestEngine, InstancePre<StoreState>) {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = Component::new(engine.wasmtime(), REFERENCE_COMPONENT).unwrap();
        let pre = engine.linker().instantiate_pre(&component).unwrap();
        (engine, pre)
    }

    fn armed_store(engine: &GuestEngine) -> wasmtime::Store<StoreState> {
        let mut store = engine.new_store(1);
        crate::sandbox::arm(&mut store, engine.config().execution_bound()).unwrap();
        store
    }

    #[test]
    fn the_first_instance_is_checked_and_later_ones_only_looked_up() {
        let (engine, pre) = prepared();
        let indices = ConnectionIndices::new(&pre).unwrap();
        assert!(!indices.checked.load(Ordering::Acquire));
        for _ in 0..2 {
            let mut store = armed_store(&engine);
            let instance = pre.instantiate(&mut store).unwrap();
            let exports = indices.load(&mut store, &instance).unwrap();
            assert!(indices.checked.load(Ordering::Acquire));
            // Calls through the unchecked functions work on every instance.
            assert_eq!(exports.call_instance_epoch(&mut store).unwrap(), 0);
            let key = exports.call_instance_exchange_key(&mut store).unwrap();
            assert_eq!(key.public_key.len(), 32);
        }
        // Clones share the flag: they are the same component.
        assert!(indices.clone().checked.load(Ordering::Acquire));
    }

    #[test]
    fn a_signature_that_does_not_match_fails_the_check_with_its_name() {
        let (engine, pre) = prepared();
        let mut indices = ConnectionIndices::new(&pre).unwrap();
        // `start` pointed at `instance-epoch`: a function of another type.
        indices.start = indices.instance_epoch;
        let mut store = armed_store(&engine);
        let instance = pre.instantiate(&mut store).unwrap();
        let error = indices
            .load(&mut store, &instance)
            .err()
            .expect("type mismatch");
        assert!(
            format!("{error:#}").contains("[method]tls-connection.start"),
            "{error:#}"
        );
        assert!(!indices.checked.load(Ordering::Acquire));
    }

    #[test]
    fn a_component_without_the_interface_is_refused_before_any_instance() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        // The smallest component: the preamble, no sections.
        let empty = b"\0asm\x0d\x00\x01\x00";
        let component = Component::new(engine.wasmtime(), empty).unwrap();
        let pre = engine.linker().instantiate_pre(&component).unwrap();
        let error = ConnectionIndices::new(&pre).err().expect("no interface");
        assert!(error.to_string().contains(INTERFACE), "{error}");
    }
}
