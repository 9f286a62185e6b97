//! A whole connection's data plane in a guest, for hosts whose application
//! lives outside the sandbox (a client like `keyferry connect`, or a
//! library user who owns the plaintext). The guest does the record layer,
//! alerts, close_notify and KeyUpdate; the host feeds it ciphertext and
//! handles the events it surfaces, such as session tickets for resumption.

use keyferry_guest::blob;
use keyferry_guest::connection::{Closed, Event, Facts};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use wasmtime::component::ResourceAny;
use zeroize::Zeroizing;

use crate::bindings::exports::keyferry::dataplane::connection as wconn;
use crate::convert::full::{closed_from_wit, error_from_wit, event_from_wit, facts_to_wit};
use crate::error::{Error, Result};
use crate::guest::{GuestInstance, TrafficKeyState, count_records, state_from_wit};
use crate::handshake::Handoff;

/// What one step delivered.
#[derive(Default)]
pub struct Delivery {
    /// Ciphertext for the peer (KeyUpdate answers, alerts).
    pub to_send: Vec<u8>,
    /// Application data from the peer.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// How the peer's side ended, once it has.
    pub closed: Option<Closed>,
    /// NewSessionTickets stored for resumption in this step.
    pub tickets: usize,
    /// Post-handshake CertificateRequests seen (not supported: reported).
    pub certificate_requests: usize,
}

/// A connection whose record layer runs in a guest.
pub struct DataPlane {
    guest: GuestInstance,
    conn: ResourceAny,
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

    fn attach(
        mut guest: GuestInstance,
        seal_blob: &[u8],
        open_blob: &[u8],
        facts: Facts,
        kernel: Option<KernelConnection<ClientConnectionData>>,
        resumed: bool,
        buffered: usize,
    ) -> Result<(Self, Delivery)> {
        let wfacts = facts_to_wit(&facts);
        let conn = guest
            .call(|s, b| {
                b.keyferry_dataplane_connection()
                    .tls_connection()
                    .call_attach(s, seal_blob, open_blob, &wfacts)
            })?
            .map_err(error_from_wit)?;
        let mut plane = Self {
            guest,
            conn,
            kernel,
            facts,
            resumed,
            bytes_in: buffered as u64,
            plaintext_out: 0,
        };
        let out = plane.guest.call(|s, b| {
            b.keyferry_dataplane_connection()
                .tls_connection()
                .call_start(s, conn)
        })?;
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

    /// The guest instance, for its key state and self-check.
    pub fn guest_mut(&mut self) -> &mut GuestInstance {
        &mut self.guest
    }

    /// Ciphertext from the transport, in any split.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<Delivery> {
        let conn = self.conn;
        let out = self.guest.call(|s, b| {
            b.keyferry_dataplane_connection()
                .tls_connection()
                .call_receive(s, conn, ciphertext)
        })?;
        self.deliver(out, ciphertext.len())
    }

    /// The transport reached EOF.
    pub fn end_of_stream(&mut self) -> Result<Delivery> {
        let conn = self.conn;
        let out = self.guest.call(|s, b| {
            b.keyferry_dataplane_connection()
                .tls_connection()
                .call_end_of_stream(s, conn)
        })?;
        self.deliver(out, 0)
    }

    /// Protects application data for the peer.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let conn = self.conn;
        let wire = self
            .guest
            .call(|s, b| {
                b.keyferry_dataplane_connection()
                    .tls_connection()
                    .call_send(s, conn, plaintext)
            })?
            .map_err(error_from_wit)?;
        if count_records(&wire).is_none() || wire.len() < plaintext.len() {
            return Err(Error::InvalidGuestResult(
                "sealed output is not whole records",
            ));
        }
        Ok(wire)
    }

    /// close_notify for the peer.
    pub fn close(&mut self) -> Result<Vec<u8>> {
        let conn = self.conn;
        let wire = self
            .guest
            .call(|s, b| {
                b.keyferry_dataplane_connection()
                    .tls_connection()
                    .call_close(s, conn)
            })?
            .map_err(error_from_wit)?;
        if count_records(&wire).is_none() {
            return Err(Error::InvalidGuestResult(
                "close output is not whole records",
            ));
        }
        Ok(wire)
    }

    /// Sends a TLS 1.3 KeyUpdate (asking the peer to update too, if
    /// `request_update`).
    pub fn key_update(&mut self, request_update: bool) -> Result<Vec<u8>> {
        let conn = self.conn;
        let wire = self
            .guest
            .call(|s, b| {
                b.keyferry_dataplane_connection()
                    .tls_connection()
                    .call_key_update(s, conn, request_update)
            })?
            .map_err(error_from_wit)?;
        if count_records(&wire) != Some(1) {
            return Err(Error::InvalidGuestResult(
                "key update output is not one record",
            ));
        }
        Ok(wire)
    }

    /// The send and receive keys' non-secret state.
    pub fn key_states(&mut self) -> Result<(TrafficKeyState, TrafficKeyState)> {
        let conn = self.conn;
        let (seal, open) = self.guest.call(|s, b| {
            b.keyferry_dataplane_connection()
                .tls_connection()
                .call_key_states(s, conn)
        })?;
        Ok((state_from_wit(seal), state_from_wit(open)))
    }

    /// Moves the connection to another guest instance with its exact state
    /// (a plugin upgrade without a new handshake).
    pub fn migrate(mut self, to: GuestInstance) -> Result<Self> {
        let conn = self.conn;
        let recipient = to.exchange_key().public_key;
        let moved = self
            .guest
            .call(|s, b| {
                b.keyferry_dataplane_connection()
                    .tls_connection()
                    .call_export(s, conn, &recipient)
            })?
            .map_err(error_from_wit)?;
        for blob in [&moved.seal_blob, &moved.open_blob] {
            let header = blob::peek_header(blob)
                .map_err(|_| Error::InvalidGuestResult("migrated blob header"))?;
            if header.key_id != to.exchange_key().id {
                return Err(Error::InvalidGuestResult(
                    "migrated blob addressed to another key",
                ));
            }
        }
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
            return Err(Error::InvalidGuestResult(
                "a migrated connection delivered data at start",
            ));
        }
        Ok(plane)
    }

    /// Checks the guest's output and handles its events.
    fn deliver(&mut self, out: wconn::Output, input_len: usize) -> Result<Delivery> {
        if count_records(&out.to_send).is_none() {
            return Err(Error::InvalidGuestResult(
                "connection output is not whole TLS records",
            ));
        }
        // Every plaintext byte comes from at least one ciphertext byte.
        self.bytes_in += input_len as u64;
        self.plaintext_out += out.plaintext.len() as u64;
        if self.plaintext_out > self.bytes_in {
            return Err(Error::InvalidGuestResult("more plaintext than ciphertext"));
        }
        let mut delivery = Delivery {
            to_send: out.to_send,
            plaintext: Zeroizing::new(out.plaintext),
            closed: out.closed.map(closed_from_wit),
            ..Delivery::default()
        };
        for event in out.events.into_iter().map(event_from_wit) {
            match event {
                Event::NewSessionTicket(message) => {
                    let Some(kernel) = self.kernel.as_mut() else {
                        return Err(Error::InvalidGuestResult(
                            "a ticket event on a server connection",
                        ));
                    };
                    let body = message
                        .get(4..)
                        .ok_or(Error::InvalidGuestResult("ticket event too short"))?;
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
