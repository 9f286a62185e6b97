//! A deliberately broken plugin, for the host's sandbox tests: it echoes,
//! except that a line `trap` makes it trap, `loop` makes it spin forever,
//! and `grow` makes it allocate until its memory cap stops it. The host
//! must end only that connection, with an alert, and keep serving others.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

use keyferry_guest::ProtocolVersion;
use keyferry_guest::connection::{Connection, Facts, Output, Role};
use keyferry_guest::instance;

mod bindings {
    wit_bindgen::generate!({ path: "../wit", world: "application-plugin" });
}

use bindings::exports::keyferry::dataplane::application::{
    self, GuestSession, Session as SessionHandle, SessionOutput,
};
use bindings::exports::keyferry::dataplane::types as wit;

struct Plugin;

struct Broken {
    conn: RefCell<Connection>,
}

impl GuestSession for Broken {
    fn attach(
        seal_blob: Vec<u8>,
        open_blob: Vec<u8>,
        facts: wit::Facts,
        _mode: application::AppMode,
    ) -> Result<SessionHandle, wit::Error> {
        let facts = Facts {
            role: if matches!(facts.role, wit::Role::Client) {
                Role::Client
            } else {
                Role::Server
            },
            version: if matches!(facts.version, wit::ProtocolVersion::Tls12) {
                ProtocolVersion::Tls12
            } else {
                ProtocolVersion::Tls13
            },
            suite: facts.suite,
            server_name: facts.server_name,
            alpn: facts.alpn,
            peer_subject: facts.peer_subject,
            connection_id: facts.connection_id,
        };
        let conn =
            instance::with_local(None, |i| i.attach_connection(&seal_blob, &open_blob, facts))
                .map_err(|e| wit::Error::InvalidArgument(e.to_string()))?;
        Ok(SessionHandle::new(Broken {
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
        SessionOutput {
            to_send: Vec::new(),
            events: Vec::new(),
            closed: Some(wit::Closed::Truncated),
            done: true,
        }
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

impl Broken {
    fn step(&self, out: Output) -> SessionOutput {
        let text = String::from_utf8_lossy(&out.plaintext).into_owned();
        match text.trim() {
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            _ => {}
        }
        let mut conn = self.conn.borrow_mut();
        let mut to_send = out.to_send;
        if !out.plaintext.is_empty() {
            to_send.extend(conn.send(&out.plaintext).unwrap_or_default());
        }
        SessionOutput {
            to_send,
            events: Vec::new(),
            closed: None,
            done: out.closed.is_some(),
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

    type Session = Broken;
}

bindings::export!(Plugin with_types_in bindings);
