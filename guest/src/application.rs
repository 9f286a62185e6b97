//! The application inside the sandbox: what a component does with its
//! connections' plaintext.
//!
//! A component implements [`Application`] and exports it with
//! `export_application!` (in wasm); the record layer,
//! KeyUpdate, alerts, close_notify and blob import come from this crate.
//! [`Session`] is the one driver that joins a [`Connection`] and an
//! application, and the WIT `tls-connection` resource is a thin shell over
//! it.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use zeroize::Zeroizing;

use crate::connection::{Closed, Connection, Event, Facts, Output};
use crate::error::{Error, Result};

/// What a component does with one connection's plaintext.
pub trait Application: 'static {
    /// The application for a connection whose handshake produced `facts`.
    fn new(facts: &Facts) -> Self
    where
        Self: Sized;

    /// Plaintext from the peer, in order and exactly once. Answer through
    /// `reply`.
    fn receive(&mut self, plaintext: &[u8], reply: &mut Reply);

    /// The peer sent close_notify. The default ends our side too, as an
    /// HTTP server does; an application that still has data to send may
    /// send it first, or leave the connection half open.
    fn peer_closed(&mut self, reply: &mut Reply) {
        reply.close();
    }

    /// Whether the host may send plaintext on this connection
    /// (`tls-connection.send`). An application that owns the conversation
    /// refuses, so the host cannot speak in its name.
    fn accepts_host_plaintext(&self) -> bool {
        false
    }

    /// Whether the application holds no state of its own (such as half a
    /// request), so the connection can move to another instance.
    fn is_idle(&self) -> bool {
        true
    }

    /// A connection of this application was attached. An application that
    /// drives its connection itself (the `wasi:http` front pulls its
    /// ciphertext through the host's transport) keeps the session here;
    /// others need not.
    fn attached(_session: &SharedSession<Self>)
    where
        Self: Sized,
    {
    }
}

/// A session as the `tls-connection` resource holds it: `None` once the
/// connection was exported or the resource dropped.
pub type SharedSession<A> = Rc<RefCell<Option<Session<A>>>>;

/// What an HTTP application says of a request it is done with, for the
/// host's access log (`serve --access-log`): only the application knows
/// where requests begin and end in the plaintext.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestSummary {
    /// The method (`-` if the request line did not parse).
    pub method: String,
    /// The request target as sent (`-` if it did not parse).
    pub target: String,
    /// The response status code.
    pub status: u16,
    /// Request body bytes received.
    pub received: u64,
    /// Response body bytes sent.
    pub sent: u64,
}

/// An application's answer to one step.
#[derive(Default)]
pub struct Reply {
    send: Vec<u8>,
    to_host: Zeroizing<Vec<u8>>,
    close: bool,
    answered: Vec<RequestSummary>,
}

impl Reply {
    /// Sends `plaintext` to the peer (protected in this sandbox).
    pub fn send(&mut self, plaintext: &[u8]) {
        self.send.extend_from_slice(plaintext);
    }

    /// Hands `plaintext` to the host: for components whose application
    /// lives outside the sandbox.
    pub fn deliver_to_host(&mut self, plaintext: &[u8]) {
        self.to_host.extend_from_slice(plaintext);
    }

    /// Ends our side after what was sent: close_notify, and the host closes
    /// the transport.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// What the application sent so far: for an application's own tests,
    /// which drive it without a connection.
    pub fn sent(&self) -> &[u8] {
        &self.send
    }

    /// What the application handed to the host so far.
    pub fn to_host(&self) -> &[u8] {
        &self.to_host
    }

    /// Whether the application ended its side.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Reports a request this step answered (or refused), for the host's
    /// access log.
    pub fn answered(&mut self, request: RequestSummary) {
        self.answered.push(request);
    }

    /// The requests reported so far.
    pub fn requests(&self) -> &[RequestSummary] {
        &self.answered
    }
}

/// The plaintext goes to the host: the reference component's application,
/// for clients such as `keyferry connect` and library users who own their
/// plaintext. A peer's close_notify leaves our side open for the host.
pub struct Passthrough;

impl Application for Passthrough {
    fn new(_: &Facts) -> Self {
        Self
    }

    fn receive(&mut self, plaintext: &[u8], reply: &mut Reply) {
        reply.deliver_to_host(plaintext);
    }

    fn peer_closed(&mut self, _: &mut Reply) {}

    fn accepts_host_plaintext(&self) -> bool {
        true
    }
}

/// Sends back every byte.
pub struct Echo;

impl Application for Echo {
    fn new(_: &Facts) -> Self {
        Self
    }

    fn receive(&mut self, plaintext: &[u8], reply: &mut Reply) {
        reply.send(plaintext);
    }
}

/// What one step of a session produced, for the host.
#[derive(Default)]
pub struct Step {
    /// Ciphertext for the peer: whole records.
    pub to_send: Vec<u8>,
    /// Plaintext the application handed to the host.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Post-handshake messages for the host.
    pub events: Vec<Event>,
    /// How the peer's side ended, once it has.
    pub closed: Option<Closed>,
    /// The connection is over: send `to_send`, then close the transport.
    pub done: bool,
    /// Nothing is half done: no partial record and an idle application.
    /// A server may close such a connection (with close_notify) to make
    /// room, as HTTP servers close idle keep-alive connections.
    pub idle: bool,
    /// Requests the application reported, for the host's access log.
    pub answered: Vec<RequestSummary>,
}

/// One connection and its application.
pub struct Session<A> {
    conn: Connection,
    app: A,
}

impl<A> Session<A> {
    /// The connection under the application.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The application.
    pub fn application(&self) -> &A {
        &self.app
    }

    /// The connection and the application, for an application that drives
    /// its connection itself.
    pub fn parts_mut(&mut self) -> (&mut Connection, &mut A) {
        (&mut self.conn, &mut self.app)
    }
}

impl<A: Application> Session<A> {
    /// Starts the application on a connection whose keys were just imported.
    pub fn new(conn: Connection) -> Self {
        let app = A::new(conn.facts());
        Self { conn, app }
    }

    /// Delivers what was buffered at handoff; the first call only.
    pub fn start(&mut self) -> Step {
        let out = self.conn.start();
        self.step(out)
    }

    /// Ciphertext arrived from the peer, in any split.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Step {
        let out = self.conn.receive(ciphertext);
        self.step(out)
    }

    /// The transport hit EOF: without close_notify first, a truncation.
    /// The peer may still be reading (a half-close), so an application that
    /// ends its side on the peer's close does so here too, with
    /// close_notify after whatever it answered.
    pub fn end_of_stream(&mut self) -> Step {
        let out = self.conn.end_of_stream();
        let truncated = out.closed == Some(Closed::Truncated);
        let mut step = self.step(out);
        if truncated && !self.conn.write_closed() {
            let mut reply = Reply::default();
            self.app.peer_closed(&mut reply);
            if reply.close {
                step.to_send.extend(self.conn.close().unwrap_or_default());
            }
        }
        step.done = true;
        step.idle = false;
        step
    }

    /// Plaintext from the host, if the application lets the host speak.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if !self.app.accepts_host_plaintext() {
            return Err(Error::WrongKeyType);
        }
        self.conn.send(plaintext)
    }

    /// Ends the connection: close_notify (if our side is still open).
    pub fn close(&mut self) -> Step {
        Step {
            // Closing an already closed side yields nothing; a key that is
            // used up cannot say close_notify, and the host closes anyway.
            to_send: self.conn.close().unwrap_or_default(),
            closed: self.conn.closed(),
            done: true,
            idle: false,
            ..Step::default()
        }
    }

    /// A TLS 1.3 KeyUpdate of our sending key.
    pub fn key_update(&mut self, request_update: bool) -> Result<Vec<u8>> {
        self.conn.key_update(request_update)
    }

    /// Whether the connection can move to another instance now: not while
    /// the connection is mid-message or closing, nor while the application
    /// holds state of its own.
    pub fn check_exportable(&self) -> Result<()> {
        self.conn.check_exportable()?;
        if !self.app.is_idle() {
            return Err(Error::InvalidArgument(
                "the application is in the middle of a request",
            ));
        }
        Ok(())
    }

    /// The connection, to move it to another instance (see
    /// [`Session::check_exportable`]).
    pub fn into_connection(self) -> Result<Connection> {
        self.check_exportable()?;
        Ok(self.conn)
    }

    fn step(&mut self, out: Output) -> Step {
        let Output {
            to_send,
            plaintext,
            events,
            closed,
        } = out;
        let mut step = Step {
            to_send,
            events,
            closed,
            ..Step::default()
        };
        let mut reply = Reply::default();
        if !plaintext.is_empty() {
            self.app.receive(&plaintext, &mut reply);
        }
        if closed == Some(Closed::CloseNotify) {
            self.app.peer_closed(&mut reply);
        }
        let Reply {
            send,
            to_host,
            close,
            answered,
        } = reply;
        step.plaintext = to_host;
        step.answered = answered;
        if !send.is_empty() {
            match self.conn.send(&send) {
                Ok(wire) if step.to_send.is_empty() => step.to_send = wire,
                Ok(wire) => step.to_send.extend(wire),
                // Our side is already closed or the key is used up: what the
                // application said cannot go out, so the connection ends.
                Err(_) => step.done = true,
            }
        }
        if close {
            step.to_send.extend(self.conn.close().unwrap_or_default());
        }
        step.done |= self.conn.write_closed()
            || matches!(
                closed,
                Some(Closed::PeerAlert(_) | Closed::LocalAlert(_) | Closed::Truncated)
            );
        step.idle = !step.done && self.conn.is_between_records() && self.app.is_idle();
        step
    }
}

/// For an application's native tests: a session running it, and a client
/// facing it, keyed with each other's keys. The keys are constants: for
/// tests only, never for a connection.
pub mod testing {
    use super::{Application, Session};
    use crate::connection::{Connection, Facts, Role};
    use crate::record::{TrafficKey, TrafficKeyMaterial};
    use crate::suite::{AeadAlgorithm, Direction, ProtocolVersion};

    /// A server session running `A` (started, with nothing sent) and a
    /// client connection facing it, over TLS 1.3 with ChaCha20-Poly1305.
    pub fn pair<A: Application>() -> (Session<A>, Connection) {
        let key = |direction, secret: u8| {
            let m = TrafficKeyMaterial::from_tls13_secret(
                AeadAlgorithm::ChaCha20Poly1305,
                direction,
                &[secret; 32],
                0,
                3,
            )
            .unwrap();
            TrafficKey::from_material(m, None).unwrap()
        };
        let facts = |role| Facts {
            role,
            version: ProtocolVersion::Tls13,
            suite: "TLS_CHACHA20_POLY1305_SHA256".into(),
            server_name: Some("localhost".into()),
            alpn: Some(b"http/1.1".to_vec()),
            peer_certificate: None,
            connection_id: 3,
        };
        let server = Connection::new(
            key(Direction::Seal, 1),
            key(Direction::Open, 2),
            facts(Role::Server),
        )
        .unwrap();
        let client = Connection::new(
            key(Direction::Seal, 2),
            key(Direction::Open, 1),
            facts(Role::Client),
        )
        .unwrap();
        let mut session = Session::new(server);
        assert!(session.start().to_send.is_empty());
        (session, client)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::pair;
    use super::*;

    #[test]
    fn echo_and_close_notify() {
        let (mut s, mut c) = pair::<Echo>();
        let out = s.receive(&c.send(b"hello").unwrap());
        assert!(!out.done);
        assert_eq!(&c.receive(&out.to_send).plaintext[..], b"hello");
        let out = s.receive(&c.close().unwrap());
        assert!(out.done);
        assert_eq!(out.closed, Some(Closed::CloseNotify));
        assert_eq!(c.receive(&out.to_send).closed, Some(Closed::CloseNotify));
    }

    #[test]
    fn passthrough_hands_plaintext_to_the_host_and_stays_half_open() {
        let (mut s, mut c) = pair::<Passthrough>();
        let out = s.receive(&c.send(b"for the host").unwrap());
        assert_eq!(&out.plaintext[..], b"for the host");
        assert!(out.to_send.is_empty());
        let out = s.receive(&c.close().unwrap());
        assert_eq!(out.closed, Some(Closed::CloseNotify));
        assert!(!out.done, "our side stays open for the host");
        let wire = s.send(b"last words").unwrap();
        assert_eq!(&c.receive(&wire).plaintext[..], b"last words");
        let out = s.close();
        assert!(out.done);
        assert_eq!(c.receive(&out.to_send).closed, Some(Closed::CloseNotify));
    }

    #[test]
    fn an_application_that_owns_its_plaintext_refuses_the_host() {
        let (mut s, _) = pair::<Echo>();
        assert!(matches!(s.send(b"spoof"), Err(Error::WrongKeyType)));
    }

    #[test]
    fn idle_only_between_whole_records() {
        let (mut s, mut c) = pair::<Echo>();
        let wire = c.send(b"hello").unwrap();
        let out = s.receive(&wire[..3]);
        assert!(!out.idle, "half a record is not idle");
        let out = s.receive(&wire[3..]);
        assert!(out.idle, "whole records answered: idle");
    }

    #[test]
    fn truncation_and_alerts_end_the_session() {
        let (mut s, mut c) = pair::<Echo>();
        let out = s.end_of_stream();
        assert!(out.done);
        assert_eq!(out.closed, Some(Closed::Truncated));
        // The peer only half-closed: our side still says close_notify.
        assert_eq!(c.receive(&out.to_send).closed, Some(Closed::CloseNotify));
        let (mut s, _) = pair::<Echo>();
        let out = s.receive(&[
            23, 3, 3, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        assert!(out.done);
        assert!(matches!(out.closed, Some(Closed::LocalAlert(_))));
    }
}
