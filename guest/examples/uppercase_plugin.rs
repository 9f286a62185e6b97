//! A data-plane plugin built on keyferry's record layer: an echo service
//! that answers in upper case. It is a whole component for the
//! `application-plugin` world in about a hundred lines, because the record
//! layer, KeyUpdate, alerts and blob import all come from `keyferry_guest`.
//!
//! Build it:
//!
//! ```text
//! cargo build -p keyferry-guest --example uppercase_plugin --no-default-features \
//!     --target wasm32-wasip2 --release
//! ```
//!
//! and serve with it: `keyferry serve --guest
//! target/wasm32-wasip2/release/examples/uppercase_plugin.wasm`.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

use keyferry_guest::ProtocolVersion;
use keyferry_guest::connection::{Closed, Connection, Event, Facts, Output, Role};
use keyferry_guest::instance;

mod bindings {
    wit_bindgen::generate!({ path: "../wit", world: "application-plugin" });
}

use bindings::exports::keyferry::dataplane::application::{
    self, GuestSession, Session as SessionHandle, SessionOutput,
};
use bindings::exports::keyferry::dataplane::types as wit;

struct Plugin;

struct Shout {
    conn: RefCell<Connection>,
}

impl GuestSession for Shout {
    fn attach(
        seal_blob: Vec<u8>,
        open_blob: Vec<u8>,
        facts: wit::Facts,
        _mode: application::AppMode,
    ) -> Result<SessionHandle, wit::Error> {
        let conn = instance::with_local(None, |i| {
            i.attach_connection(&seal_blob, &open_blob, facts_from_wit(facts))
        })
        .map_err(|e| wit::Error::InvalidArgument(e.to_string()))?;
        Ok(SessionHandle::new(Shout {
            conn: RefCell::new(conn),
        }))
    }

    fn start(&self) -> SessionOutput {
        let out = self.conn.borrow_mut().start();
        self.step(out)
    }

    fn on_ciphertext(&self, data: Vec<u8>) -> SessionOutput {
        let out = self.conn.borrow_mut().receive(&data);
        self.step(out)
    }

    fn on_end_of_stream(&self) -> SessionOutput {
        let out = self.conn.borrow_mut().end_of_stream();
        let mut step = self.step(out);
        step.done = true;
        step
    }

    fn shutdown(&self) -> SessionOutput {
        let to_send = self.conn.borrow_mut().close().unwrap_or_default();
        SessionOutput {
            to_send,
            events: Vec::new(),
            closed: None,
            done: true,
        }
    }
}

impl Shout {
    /// The application: upper-case whatever arrives, and answer a
    /// close_notify with our own.
    fn step(&self, out: Output) -> SessionOutput {
        let mut conn = self.conn.borrow_mut();
        let mut to_send = out.to_send;
        let mut done = out.closed.is_some();
        if !out.plaintext.is_empty() {
            match conn.send(&out.plaintext.to_ascii_uppercase()) {
                Ok(wire) => to_send.extend(wire),
                Err(_) => done = true,
            }
        }
        if out.closed == Some(Closed::CloseNotify) {
            to_send.extend(conn.close().unwrap_or_default());
        }
        SessionOutput {
            to_send,
            events: out.events.into_iter().map(event_to_wit).collect(),
            closed: out.closed.map(closed_to_wit),
            done,
        }
    }
}

impl application::Guest for Plugin {
    fn application_exchange_key() -> wit::ExchangeKey {
        instance::with_local(None, |i| wit::ExchangeKey {
            id: i.exchange().key_id().to_vec(),
            public_key: i.exchange().public_key().to_vec(),
        })
    }

    type Session = Shout;
}

bindings::export!(Plugin with_types_in bindings);

fn facts_from_wit(f: wit::Facts) -> Facts {
    Facts {
        role: match f.role {
            wit::Role::Client => Role::Client,
            wit::Role::Server => Role::Server,
        },
        version: match f.version {
            wit::ProtocolVersion::Tls12 => ProtocolVersion::Tls12,
            wit::ProtocolVersion::Tls13 => ProtocolVersion::Tls13,
        },
        suite: f.suite,
        server_name: f.server_name,
        alpn: f.alpn,
        peer_subject: f.peer_subject,
        connection_id: f.connection_id,
    }
}

fn event_to_wit(e: Event) -> wit::Event {
    match e {
        Event::NewSessionTicket(m) => wit::Event::NewSessionTicket(m),
        Event::CertificateRequest(m) => wit::Event::CertificateRequest(m),
    }
}

fn closed_to_wit(c: Closed) -> wit::Closed {
    match c {
        Closed::CloseNotify => wit::Closed::CloseNotify,
        Closed::PeerAlert(d) => wit::Closed::PeerAlert(d),
        Closed::LocalAlert(_) => wit::Closed::LocalAlert(wit::Alert::UnexpectedMessage),
        Closed::Truncated => wit::Closed::Truncated,
    }
}
