//! Driving an application inside the sandbox: the host hands a guest a
//! connection's sealed keys and its handshake facts, then moves only
//! ciphertext in and out. Plaintext never exists in the host.

use keyferry_guest::blob;
use keyferry_guest::connection::{Closed, Event, Facts};
use keyferry_guest::record::TrafficKeyMaterial;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::app_bindings::ApplicationPlugin;
use crate::app_bindings::exports::keyferry::dataplane::application as wapp;
use crate::convert::plugin::{closed_from_wit, error_from_wit, event_from_wit, facts_to_wit};
use crate::error::{Error, Result};
use crate::guest::{ExchangeKey, count_records};
use crate::sandbox::{ExecutionBound, Sandboxed, StoreState};

/// Which built-in application the reference component runs. Plugins may
/// ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// Echo every byte back.
    Echo,
    /// Answer HTTP/1.1 requests with the connection's TLS facts.
    Http,
}

/// What one step of the application produced, checked by the host.
#[derive(Debug, Default)]
pub struct SessionStep {
    /// Ciphertext for the peer: whole TLS records only.
    pub to_send: Vec<u8>,
    /// Post-handshake messages for the host (tickets for a client).
    pub events: Vec<Event>,
    /// How the peer's side ended, once it has.
    pub closed: Option<Closed>,
    /// The session is over: send `to_send` and close the transport.
    pub done: bool,
}

/// An application session in an [`AppInstance`].
pub struct SessionHandle {
    resource: ResourceAny,
}

/// A guest instance driven through its `application` export.
pub struct AppInstance {
    sandbox: Sandboxed<ApplicationPlugin>,
    exchange: ExchangeKey,
}

/// The most ciphertext one step may return: what the host accepts from a
/// guest before calling the output hostile.
const MAX_STEP_OUTPUT: usize = 64 << 20;

impl AppInstance {
    pub(crate) fn new(
        store: Store<StoreState>,
        bindings: ApplicationPlugin,
        bound: ExecutionBound,
    ) -> Result<Self> {
        let mut sandbox = Sandboxed::new(store, bindings, bound);
        let key = sandbox.call(|s, b| {
            b.keyferry_dataplane_application()
                .call_application_exchange_key(s)
        })?;
        let exchange = ExchangeKey::checked(&key.id, &key.public_key)?;
        Ok(Self { sandbox, exchange })
    }

    /// The instance's exchange key.
    pub fn exchange_key(&self) -> ExchangeKey {
        self.exchange
    }

    /// Whether a trap has ended this instance.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.is_poisoned()
    }

    /// Seals both keys to this instance and starts a session on them. The
    /// material is consumed and zeroized here.
    pub fn attach(
        &mut self,
        seal: TrafficKeyMaterial,
        open: TrafficKeyMaterial,
        facts: &Facts,
        mode: AppMode,
    ) -> Result<SessionHandle> {
        let seal_blob = blob::seal_traffic_key(&self.exchange.public_key, &seal)?;
        let open_blob = blob::seal_traffic_key(&self.exchange.public_key, &open)?;
        drop((seal, open));
        self.attach_blobs(&seal_blob, &open_blob, facts, mode)
    }

    /// Starts a session on blobs already sealed to this instance.
    pub fn attach_blobs(
        &mut self,
        seal_blob: &[u8],
        open_blob: &[u8],
        facts: &Facts,
        mode: AppMode,
    ) -> Result<SessionHandle> {
        let facts = facts_to_wit(facts);
        let mode = match mode {
            AppMode::Echo => wapp::AppMode::Echo,
            AppMode::Http => wapp::AppMode::Http,
        };
        let r = self.sandbox.call(|s, b| {
            b.keyferry_dataplane_application()
                .session()
                .call_attach(s, seal_blob, open_blob, &facts, mode)
        })?;
        match r {
            Ok(resource) => Ok(SessionHandle { resource }),
            Err(e) => Err(error_from_wit(e)),
        }
    }

    /// Delivers what was buffered at handoff.
    pub fn start(&mut self, session: &SessionHandle) -> Result<SessionStep> {
        let out = self.sandbox.call(|s, b| {
            b.keyferry_dataplane_application()
                .session()
                .call_start(s, session.resource)
        })?;
        checked(out)
    }

    /// Ciphertext arrived from the peer.
    pub fn on_ciphertext(&mut self, session: &SessionHandle, data: &[u8]) -> Result<SessionStep> {
        let out = self.sandbox.call(|s, b| {
            b.keyferry_dataplane_application()
                .session()
                .call_on_ciphertext(s, session.resource, data)
        })?;
        checked(out)
    }

    /// The transport hit EOF.
    pub fn on_end_of_stream(&mut self, session: &SessionHandle) -> Result<SessionStep> {
        let out = self.sandbox.call(|s, b| {
            b.keyferry_dataplane_application()
                .session()
                .call_on_end_of_stream(s, session.resource)
        })?;
        checked(out)
    }

    /// Drops a finished session in the guest, so an instance that serves
    /// many sessions does not keep their state.
    pub fn end(&mut self, session: SessionHandle) -> Result<()> {
        self.sandbox.call(|s, _| session.resource.resource_drop(s))
    }

    /// Asks the application to send close_notify and end.
    pub fn shutdown(&mut self, session: &SessionHandle) -> Result<SessionStep> {
        let out = self.sandbox.call(|s, b| {
            b.keyferry_dataplane_application()
                .session()
                .call_shutdown(s, session.resource)
        })?;
        checked(out)
    }
}

/// The host never trusts the guest's output: whole records, bounded size,
/// bounded events.
fn checked(out: wapp::SessionOutput) -> Result<SessionStep> {
    if out.to_send.len() > MAX_STEP_OUTPUT || count_records(&out.to_send).is_none() {
        return Err(Error::InvalidGuestResult(
            "session output is not whole TLS records",
        ));
    }
    if out.events.len() > 64 {
        return Err(Error::InvalidGuestResult("too many events in one step"));
    }
    Ok(SessionStep {
        to_send: out.to_send,
        events: out.events.into_iter().map(event_from_wit).collect(),
        closed: out.closed.map(closed_from_wit),
        done: out.done,
    })
}
