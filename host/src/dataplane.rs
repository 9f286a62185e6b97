//! The one connection driver: a TLS connection whose data plane runs in a
//! guest, used by `keyferry serve`, `keyferry connect` and library users
//! alike.
//!
//! The host seals the handoff's keys to the guest instance, attaches the
//! connection, and from then on moves only ciphertext in and out. What
//! happens to the plaintext is the component's application: the reference
//! component hands it back ([`Delivery::plaintext`]), an application
//! plugin keeps it in the sandbox and answers the peer itself. The host
//! handles the events the guest surfaces, such as a client's session
//! tickets, and checks everything the guest returns.

use keyferry_record::connection::{Closed, Event, Facts};
use keyferry_record::framing::count_records;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use wasmtime::component::ResourceAny;
use zeroize::Zeroizing;

use crate::bindings::exports::keyferry::dataplane::connection as wconn;
use crate::error::{Error, GuestError, Result};
use crate::handshake::Handoff;
use crate::instance::{GuestInstance, TrafficKeyState};

/// The most ciphertext one step may return before the host calls the
/// output hostile.
const MAX_STEP_OUTPUT: usize = 64 << 20;
/// The most events one step may return. A step answers at most one read
/// (or one call), and a server sends a handful of tickets per connection;
/// rustls keeps a bounded number per server name, and a ticket can only
/// ever be stored under this connection's own server name.
const MAX_STEP_EVENTS: usize = 16;

/// What one step delivered.
#[derive(Default)]
pub struct Delivery {
    /// Ciphertext for the peer: whole records.
    pub to_send: Vec<u8>,
    /// Application data the guest handed to the host (empty for an
    /// application that keeps its plaintext in the sandbox).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// How the peer's side ended, once it has.
    pub closed: Option<Closed>,
    /// The connection is over: send `to_send`, then close the transport.
    pub done: bool,
    /// Nothing is half done (no partial record, no partial request): a
    /// server may close the connection to make room.
    pub idle: bool,
    /// NewSessionTickets stored for resumption in this step.
    pub tickets: usize,
    /// Post-handshake CertificateRequests seen (not supported: reported).
    pub certificate_requests: usize,
    /// Requests the application reported answered in this step, for the
    /// access log.
    pub answered: Vec<crate::access_log::RequestSummary>,
}

/// A connection whose record layer and application run in a guest.
pub struct DataPlane {
    guest: GuestInstance,
    conn: Option<ResourceAny>,
    kernel: Option<KernelConnection<ClientConnectionData>>,
    facts: Facts,
    resumed: bool,
    /// Ciphertext (and handoff-buffered bytes) given to the guest, and
    /// plaintext it returned: the second may never outgrow the first.
    bytes_in: u64,
    plaintext_out: u64,
}

impl DataPlane {
    /// Seals the handoff's keys to `guest`, attaches the connection and
    /// delivers what was buffered at handoff. The host's copies of the keys
    /// are zeroized before this returns.
    pub fn new(guest: GuestInstance, handoff: Handoff) -> Result<(Self, Delivery)> {
        let Handoff {
            keys,
            facts,
            kernel,
            resumed,
        } = handoff;
        let buffered = keys.open.buffered_plaintext.len() + keys.open.buffered_ciphertext.len();
        let seal_blob = guest.seal_traffic_key(&keys.seal)?;
        let open_blob = guest.seal_traffic_key(&keys.open)?;
        drop(keys);
        Self::attach(
            guest, &seal_blob, &open_blob, facts, kernel, resumed, buffered,
        )
    }

    /// Attaches a connection whose blobs were sealed elsewhere to this
    /// guest instance: wrapped for it (format 2, `GuestInstance::
    /// seal_traffic_key`) or sealed to its exchange key by another process
    /// (format 1). The guest may deliver no more plaintext than the open
    /// blob could carry.
    pub fn from_blobs(
        guest: GuestInstance,
        seal_blob: &[u8],
        open_blob: &[u8],
        facts: Facts,
    ) -> Result<(Self, Delivery)> {
        Self::attach(
            guest,
            seal_blob,
            open_blob,
            facts,
            None,
            false,
            open_blob.len(),
        )
    }

    fn attach(
        guest: GuestInstance,
        seal_blob: &[u8],
        open_blob: &[u8],
        facts: Facts,
        kernel: Option<KernelConnection<ClientConnectionData>>,
        resumed: bool,
        buffered: usize,
    ) -> Result<(Self, Delivery)> {
        let wfacts = (&facts).into();
        let conn = guest
            .call_connection(|s, c| c.call_attach(s, seal_blob, open_blob, &wfacts))?
            .map_err(Error::from)?;
        // Two imports: the instance may have rotated its keys.
        guest.note_import();
        let mut plane = Self {
            guest,
            conn: Some(conn),
            kernel,
            facts,
            resumed,
            bytes_in: buffered as u64,
            plaintext_out: 0,
        };
        let out = plane.guest.call_connection(|s, c| c.call_start(s, conn))?;
        let delivery = plane.deliver(out, 0)?;
        Ok((plane, delivery))
    }

    /// The handshake facts.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The guest instance the connection runs in.
    pub fn guest(&self) -> &GuestInstance {
        &self.guest
    }

    /// Whether the connection's component is a composed `wasi:http`
    /// component, which drives its connection itself
    /// ([`DataPlane::serve_http`]) instead of being fed ciphertext.
    pub fn is_http(&self) -> bool {
        self.guest.serves_http()
    }

    /// Whether [`DataPlane::serve_http`] moves the connection to a fresh
    /// instance after each request, instantiating in the middle of the
    /// call: an embedder that serves on an async runtime's thread may
    /// want such calls on a thread of their own.
    pub fn instance_per_request(&self) -> bool {
        self.guest.instance_per_request()
    }

    /// Serves the connection with a composed `wasi:http` component until
    /// it ends. Blocks: the guest pulls ciphertext from `transport` and
    /// writes records to it, and waits in it. Send what [`DataPlane::new`]
    /// delivered first. With `instance_per_request` (see
    /// [`crate::http_serve::HttpConfig`]) each request after the first runs
    /// in a fresh instance of the same component: the connection moves
    /// between requests with its exact state, as [`DataPlane::migrate`]
    /// moves it. A guest failure is the result's error; the outcome says
    /// whether the guest's reserve 500 went out, and whether the connection
    /// is only parked: idle between requests, to be served again (with the
    /// returned transport) once the peer's bytes arrive.
    pub fn serve_http(
        self,
        transport: Box<dyn crate::http_serve::Transport>,
    ) -> crate::http_serve::HttpServed {
        use crate::http_serve::{HttpOutcome, HttpServed};
        let mut plane = self;
        let mut transport = transport;
        let mut total = HttpOutcome {
            bytes_in: 0,
            bytes_out: 0,
            fault_response_sent: false,
            instances: 0,
            parked: None,
        };
        loop {
            let (result, outcome, back) = plane.guest.serve_http(transport);
            transport = back;
            total.bytes_in += outcome.bytes_in;
            total.bytes_out += outcome.bytes_out;
            total.fault_response_sent |= outcome.fault_response_sent;
            total.instances += 1;
            total.parked = outcome.parked;
            match result {
                // Paused and not parked: moving to a fresh instance.
                Ok(true) if outcome.parked.is_none() => {}
                Ok(_) => {
                    return HttpServed {
                        transport,
                        plane: Some(plane),
                        result: Ok(()),
                        outcome: total,
                    };
                }
                Err(e) => {
                    return HttpServed {
                        transport,
                        plane: Some(plane),
                        result: Err(e),
                        outcome: total,
                    };
                }
            }
            // Paused between requests: the next request in a fresh instance.
            match plane.guest.sibling().and_then(|fresh| plane.migrate(fresh)) {
                Ok(next) => plane = next,
                Err(e) => {
                    return HttpServed {
                        transport,
                        plane: None,
                        result: Err(e),
                        outcome: total,
                    };
                }
            }
        }
    }

    fn handle(&self) -> Result<ResourceAny> {
        self.conn
            .ok_or_else(|| GuestError::InvalidResult("connection already moved").into())
    }

    /// Ciphertext from the transport, in any split.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<Delivery> {
        let conn = self.handle()?;
        let out = self
            .guest
            .call_connection(|s, c| c.call_receive(s, conn, ciphertext))?;
        self.deliver(out, ciphertext.len())
    }

    /// The transport reached EOF.
    pub fn end_of_stream(&mut self) -> Result<Delivery> {
        let conn = self.handle()?;
        let out = self
            .guest
            .call_connection(|s, c| c.call_end_of_stream(s, conn))?;
        self.deliver(out, 0)
    }

    /// Protects application data from the host for the peer. An
    /// application that owns its plaintext refuses.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let conn = self.handle()?;
        let wire = self
            .guest
            .call_connection(|s, c| c.call_send(s, conn, plaintext))?
            .map_err(Error::from)?;
        if count_records(&wire).is_none() || wire.len() < plaintext.len() {
            return Err(GuestError::InvalidResult("sealed output is not whole records").into());
        }
        Ok(wire)
    }

    /// Ends the connection: close_notify for the peer.
    pub fn close(&mut self) -> Result<Delivery> {
        let conn = self.handle()?;
        let out = self.guest.call_connection(|s, c| c.call_close(s, conn))?;
        self.deliver(out, 0)
    }

    /// Sends a TLS 1.3 KeyUpdate (asking the peer to update too, if
    /// `request_update`).
    pub fn key_update(&mut self, request_update: bool) -> Result<Vec<u8>> {
        let conn = self.handle()?;
        let wire = self
            .guest
            .call_connection(|s, c| c.call_key_update(s, conn, request_update))?
            .map_err(Error::from)?;
        if count_records(&wire) != Some(1) {
            return Err(GuestError::InvalidResult("key update output is not one record").into());
        }
        Ok(wire)
    }

    /// The send and receive keys' non-secret state.
    pub fn key_states(&mut self) -> Result<(TrafficKeyState, TrafficKeyState)> {
        let conn = self.handle()?;
        let (seal, open) = self
            .guest
            .call_connection(|s, c| c.call_key_states(s, conn))?;
        Ok((seal.into(), open.into()))
    }

    /// Moves the connection to another guest instance with its exact state
    /// (a plugin upgrade without a new handshake).
    pub fn migrate(mut self, to: GuestInstance) -> Result<Self> {
        let (seal_state, open_state) = self.key_states()?;
        let conn = self
            .conn
            .take()
            .ok_or(GuestError::InvalidResult("connection already moved"))?;
        let recipient = to.exchange_key()?;
        let moved = self
            .guest
            .call_connection(|s, c| c.call_export(s, conn, &recipient.public_key))?
            .map_err(Error::from)?;
        recipient.check_addressed(&moved.seal_blob)?;
        recipient.check_addressed(&moved.open_blob)?;
        self.guest
            .hand_over_references(&[seal_state, open_state], &recipient);
        // Ciphertext the old instance had buffered travels in the open blob.
        let carried =
            usize::try_from(self.bytes_in.saturating_sub(self.plaintext_out)).unwrap_or(usize::MAX);
        let (plane, delivery) = Self::attach(
            to,
            &moved.seal_blob,
            &moved.open_blob,
            self.facts.clone(),
            self.kernel.take(),
            self.resumed,
            carried,
        )?;
        if !delivery.plaintext.is_empty() || !delivery.to_send.is_empty() {
            return Err(
                GuestError::InvalidResult("a migrated connection delivered data at start").into(),
            );
        }
        Ok(plane)
    }

    /// Checks the guest's output and handles its events.
    fn deliver(&mut self, out: wconn::Output, input_len: usize) -> Result<Delivery> {
        if out.to_send.len() > MAX_STEP_OUTPUT || count_records(&out.to_send).is_none() {
            return Err(
                GuestError::InvalidResult("connection output is not whole TLS records").into(),
            );
        }
        if out.events.len() > MAX_STEP_EVENTS {
            return Err(GuestError::InvalidResult("too many events in one step").into());
        }
        // Every plaintext byte comes from at least one ciphertext byte.
        self.bytes_in += input_len as u64;
        self.plaintext_out += out.plaintext.len() as u64;
        if self.plaintext_out > self.bytes_in {
            return Err(GuestError::InvalidResult("more plaintext than ciphertext").into());
        }
        let mut delivery = Delivery {
            to_send: out.to_send,
            plaintext: Zeroizing::new(out.plaintext),
            closed: out.closed.map(Into::into),
            done: out.done,
            idle: out.idle,
            answered: self.guest.take_answered(),
            ..Delivery::default()
        };
        for event in out.events.into_iter().map(Event::from) {
            match event {
                Event::NewSessionTicket(message) => {
                    let Some(kernel) = self.kernel.as_mut() else {
                        return Err(GuestError::InvalidResult(
                            "a ticket event on a server connection",
                        )
                        .into());
                    };
                    let body = message
                        .get(4..)
                        .ok_or(GuestError::InvalidResult("ticket event too short"))?;
                    match kernel.handle_new_session_ticket(body) {
                        Ok(()) => delivery.tickets += 1,
                        Err(e) => {
                            tracing::warn!(error = %e, "peer sent a NewSessionTicket rustls refused")
                        }
                    }
                }
                Event::CertificateRequest(_) => {
                    tracing::warn!(
                        "peer asked for post-handshake client authentication, which is not supported"
                    );
                    delivery.certificate_requests += 1;
                }
            }
        }
        Ok(delivery)
    }
}

impl Drop for DataPlane {
    /// Drops the connection in the guest (its keys are zeroized there), so
    /// an instance that serves many connections does not keep their state.
    ///
    /// Not when this holds the instance's last handle, as it does for an
    /// instance per connection: the store goes right after, and wasmtime
    /// rewrites a pooled slot's dirtied pages (or unmaps the memory), keys
    /// included, so running the guest's destructor first would only cost a
    /// host-guest call.
    fn drop(&mut self) {
        if self.guest.is_last_handle() {
            return;
        }
        if let Some(conn) = self.conn.take()
            && !self.guest.is_poisoned()
        {
            let _ = self.guest.call_connection(|s, _| conn.resource_drop(s));
        }
    }
}
