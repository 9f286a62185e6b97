//! Shared fixtures for keyferry's integration tests: one compiled guest per
//! test process, real rustls peers handshaking in memory, and a small record
//! pump that moves bytes between a live rustls connection and a guest.
#![allow(missing_docs, reason = "test fixtures")]

pub mod process;

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use keyferry::export::{ConnectionKeys, ExportableConnection, SecretLog};
use keyferry::{
    ContentType, GuestComponent, GuestEngine, GuestInstance, SandboxConfig, TrafficKeyHandle,
};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, Connection, ServerConfig};

/// One engine and compiled components per test binary: compiling is the
/// slow part, and instances are what each test needs fresh.
pub struct Fixture {
    pub engine: GuestEngine,
    pub plain: GuestComponent,
    pub host_keys: GuestComponent,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let engine = GuestEngine::new(SandboxConfig::default()).expect("engine");
        let plain = GuestComponent::reference(&engine).expect("compile guest");
        let host_keys =
            GuestComponent::reference_with_host_keys(&engine).expect("compile host-keys guest");
        Fixture {
            engine,
            plain,
            host_keys,
        }
    })
}

pub fn guest() -> GuestInstance {
    fixture().plain.instantiate().expect("instantiate guest")
}

pub fn guest_with_host_keys() -> GuestInstance {
    fixture()
        .host_keys
        .instantiate()
        .expect("instantiate host-keys guest")
}

pub use keyferry::suites::Suite;

/// Every record suite, from the library's one table.
pub fn all_suites() -> Vec<Suite> {
    keyferry::suites::ALL.to_vec()
}

/// The test plugins built from guest/examples by this crate's build script.
pub mod plugins {
    /// Echoes in upper case: a plugin on the guest library.
    pub const UPPERCASE: &str = concat!(env!("OUT_DIR"), "/uppercase_plugin.wasm");
    /// Traps, loops or hogs memory on request.
    pub const MISBEHAVING: &str = concat!(env!("OUT_DIR"), "/misbehaving_plugin.wasm");
    /// A plugin that returns what generated bindings never would: an
    /// event flood, and event lists that alias one buffer
    /// (`guest/examples/hostile_plugin.rs`).
    pub const HOSTILE: &str = concat!(env!("OUT_DIR"), "/hostile_plugin.wasm");
}

/// Stock `wasi:http` components (`tests/tenants`), none written for
/// keyferry, built by this crate's build script.
pub mod tenants {
    /// Plain generated bindings (the `wasip2` crate, wasi 0.2.12), with
    /// routes that exercise a host: echo, sleep, faults.
    pub const PLAIN: &str = concat!(env!("OUT_DIR"), "/plain_tenant.wasm");
    /// wstd's own `http_server` example (the async Rust WASI SDK).
    pub const WSTD: &str = concat!(env!("OUT_DIR"), "/wstd_example.wasm");
    /// wasmtime's `p2_api_proxy` test program, at wasi 0.2.4.
    pub const API_PROXY: &str = concat!(env!("OUT_DIR"), "/api_proxy.wasm");
    /// A JavaScript service worker (`fetch` event), componentized with
    /// componentize-js (StarlingMonkey).
    pub const JS: &str = concat!(env!("OUT_DIR"), "/js_tenant.wasm");
    /// wasmtime's `p2_api_proxy_streaming` test program (its own executor
    /// over `wasi:io/poll`).
    pub const API_PROXY_STREAMING: &str = concat!(env!("OUT_DIR"), "/api_proxy_streaming.wasm");
}

struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed cert");
        Identity {
            cert: ck.cert.der().clone(),
            key: ck.signing_key.serialize_der(),
        }
    })
}

fn provider(suite: Suite) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = default_provider();
    p.cipher_suites = vec![suite.rustls];
    Arc::new(p)
}

pub fn server_config(suite: Suite, log: Arc<SecretLog>) -> Arc<ServerConfig> {
    let id = identity();
    let mut c = ServerConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[suite.rustls_version()])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone().into()),
        )
        .expect("server cert");
    c.enable_secret_extraction = true;
    c.key_log = log;
    Arc::new(c)
}

pub fn client_config(suite: Suite, log: Arc<SecretLog>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity().cert.clone()).expect("root");
    let mut c = ClientConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[suite.rustls_version()])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.enable_secret_extraction = true;
    c.key_log = log;
    Arc::new(c)
}

/// Which side of the connection the guest takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// A guest holding one side of a live TLS connection, and the rustls peer
/// holding the other.
pub struct Link {
    pub guest: GuestInstance,
    pub seal: TrafficKeyHandle,
    pub open: TrafficKeyHandle,
    pub peer: Connection,
    pub version: keyferry::ProtocolVersion,
}

/// Handshakes in memory, exports `role`'s keys into `guest`, and returns
/// the link. The other side stays a live rustls connection.
pub fn handshake_into(suite: Suite, role: Role, guest: GuestInstance) -> Link {
    let (keys, peer) = handshake_and_export(suite, role, 0xc0ffee);
    let mut link = Link::import(guest, keys.version, &keys.seal, &keys.open, peer);
    link.open_buffered_tickets();
    link
}

impl Link {
    /// Seals both keys to `guest`, imports them there, and pairs the guest
    /// with the live `peer`.
    pub fn import(
        guest: GuestInstance,
        version: keyferry::ProtocolVersion,
        seal: &keyferry::TrafficKeyMaterial,
        open: &keyferry::TrafficKeyMaterial,
        peer: Connection,
    ) -> Link {
        let seal_blob = guest.seal_traffic_key(seal).expect("seal blob");
        let open_blob = guest.seal_traffic_key(open).expect("seal blob");
        let seal = guest
            .import_traffic_key(&seal_blob)
            .expect("import seal key");
        let open = guest
            .import_traffic_key(&open_blob)
            .expect("import open key");
        Link {
            guest,
            seal,
            open,
            peer,
            version,
        }
    }
}

/// Handshakes in memory and exports `role`'s keys. Whatever the peer sent
/// after the exported side's handshake completed (a TLS 1.3 server's
/// tickets, for a client) is in the open key's buffered ciphertext.
pub fn handshake_and_export(
    suite: Suite,
    role: Role,
    connection_id: u64,
) -> (ConnectionKeys, Connection) {
    let client_log = Arc::new(SecretLog::new());
    let server_log = Arc::new(SecretLog::new());
    let client = rustls::ClientConnection::new(
        client_config(suite, client_log.clone()),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let server =
        rustls::ServerConnection::new(server_config(suite, server_log.clone())).expect("server");
    let (mut ours, mut peer, log): (ExportableConnection, Connection, _) = match role {
        Role::Client => (ExportableConnection::new(client), server.into(), client_log),
        Role::Server => (ExportableConnection::new(server), client.into(), server_log),
    };
    while ours.is_handshaking() || peer.is_handshaking() || ours.wants_write() || peer.wants_write()
    {
        let mut wire = Vec::new();
        while ours.wants_write() {
            ours.write_tls(&mut wire).expect("write_tls");
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            peer.read_tls(&mut rest).expect("read_tls");
            peer.process_new_packets().expect("process_new_packets");
        }
        let mut wire = Vec::new();
        while peer.wants_write() {
            peer.write_tls(&mut wire).expect("write_tls");
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            ours.read_tls(&mut rest).expect("read_tls");
            ours.process_new_packets().expect("process_new_packets");
        }
    }
    let keys = ours
        .dangerous_export_keys(&log, connection_id)
        .expect("export");
    (keys, peer)
}

/// Splits wire bytes into whole records.
pub fn split_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    use keyferry_record::framing::{Frame, next_record};
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Frame::Record(len) = next_record(bytes) else {
            panic!("trailing partial record")
        };
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

impl Link {
    /// Opens what the open key carried over from the handshake: a TLS 1.3
    /// client's key carries the tickets the server sent behind its
    /// Finished, which are all it may carry here.
    pub fn open_buffered_tickets(&mut self) {
        let (plaintext, ciphertext) = self.guest.take_buffered(&self.open).expect("buffered");
        assert!(plaintext.is_empty(), "no application data was sent");
        for record in split_records(&ciphertext) {
            let (ty, payload) = self.guest.open(&self.open, &record).expect("open ticket");
            assert_eq!(
                (ty, payload.first()),
                (ContentType::Handshake, Some(&4)),
                "only NewSessionTickets follow the handshake"
            );
        }
    }

    /// The guest seals `data` as application data; the peer reads it.
    pub fn guest_sends(&mut self, data: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in data.chunks(16384) {
            wire.extend(
                self.guest
                    .seal(&self.seal, ContentType::ApplicationData, chunk, 0)
                    .expect("guest seal"),
            );
        }
        self.peer_receives(&wire)
    }

    /// Feeds wire bytes to the peer and returns the plaintext it reads.
    pub fn peer_receives(&mut self, wire: &[u8]) -> Vec<u8> {
        let mut rest = wire;
        let mut got = Vec::new();
        loop {
            match self.peer.reader().read_to_end(&mut got) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("peer read: {e}"),
            }
            if rest.is_empty() {
                return got;
            }
            self.peer.read_tls(&mut rest).expect("peer read_tls");
            self.peer
                .process_new_packets()
                .expect("peer accepts the guest's records");
        }
    }

    /// The peer writes `data`; the guest opens every record, answering a
    /// KeyUpdate request as RFC 8446 section 4.6.3 says. Returns the
    /// application data and the other records' types.
    pub fn peer_sends(&mut self, data: &[u8]) -> (Vec<u8>, Vec<ContentType>) {
        let mut app = Vec::new();
        let mut other = Vec::new();
        for chunk in data.chunks(16384) {
            self.peer.writer().write_all(chunk).expect("peer write");
            let (a, o) = self.guest_receives_pending();
            app.extend(a);
            other.extend(o);
        }
        let (a, o) = self.guest_receives_pending();
        app.extend(a);
        other.extend(o);
        (app, other)
    }

    /// Opens whatever the peer has queued.
    pub fn guest_receives_pending(&mut self) -> (Vec<u8>, Vec<ContentType>) {
        let mut wire = Vec::new();
        while self.peer.wants_write() {
            self.peer.write_tls(&mut wire).expect("peer write_tls");
        }
        let mut app = Vec::new();
        let mut other = Vec::new();
        for record in split_records(&wire) {
            let (ty, payload) = self
                .guest
                .open(&self.open, &record)
                .expect("guest opens the peer's record");
            match ty {
                ContentType::ApplicationData => app.extend(payload),
                ContentType::Handshake if payload.len() == 5 && payload[0] == 24 => {
                    self.guest
                        .update(&self.open)
                        .expect("guest applies KeyUpdate");
                    if payload[4] == 1 {
                        let answer = self
                            .guest
                            .send_key_update(&self.seal, false)
                            .expect("answer KeyUpdate");
                        self.peer_receives(&answer);
                    }
                    other.push(ty);
                }
                t => other.push(t),
            }
        }
        (app, other)
    }
}

pub mod handoff {
    //! In-memory handoffs: a real rustls peer on one side, keyferry's
    //! sans-IO handshake and guest data plane on the other.

    use std::io::{Read, Write};
    use std::sync::Arc;

    use keyferry::dataplane::{DataPlane, Delivery};
    use keyferry::handshake::{Handoff, Handshake, Progress};
    use keyferry::tls::{ServerVerification, TlsOptions};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, Connection, ServerConfig};

    use super::{Role, Suite};

    /// Configs for both sides, restricted to one suite.
    pub struct Configs {
        pub server: Arc<ServerConfig>,
        pub client: Arc<ClientConfig>,
    }

    pub fn configs(suite: Suite) -> Configs {
        let options = TlsOptions::default()
            .with_versions(&[suite.rustls_version()])
            .with_suites(&[suite.rustls]);
        let identity =
            keyferry_server::certificate::self_signed(&["localhost".into()]).expect("identity");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.chain()[0].clone()).expect("root");
        Configs {
            server: Arc::new(options.server_config(&identity).expect("server config")),
            client: Arc::new(
                options
                    .client_config(ServerVerification::Roots(roots))
                    .expect("client config"),
            ),
        }
    }

    /// Everything the peer wants to send, as bytes.
    pub fn drain(peer: &mut Connection) -> Vec<u8> {
        let mut out = Vec::new();
        while peer.wants_write() {
            peer.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    /// Feeds bytes to the rustls peer; returns the plaintext it reads.
    pub fn feed_peer(peer: &mut Connection, mut bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut got = Vec::new();
        loop {
            match peer.reader().read_to_end(&mut got) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => panic!("peer read: {e}"),
            }
            if bytes.is_empty() {
                return Ok(got);
            }
            peer.read_tls(&mut bytes).expect("read_tls");
            peer.process_new_packets()?;
        }
    }

    /// Runs our handshake against `peer`. `split` cuts what the peer sends
    /// into pieces (1 = one byte at a time). `before_last_flight` runs on
    /// the peer when its handshake completes, before its last flight is
    /// delivered to us (to write data in the same flight as Finished).
    pub fn run(
        mut hs: Handshake,
        peer: &mut Connection,
        split: usize,
        mut before_last_flight: impl FnMut(&mut Connection),
    ) -> Handoff {
        let mut fired = false;
        loop {
            let progress = hs.advance().expect("our handshake");
            let out = hs.take_outgoing();
            feed_peer(peer, &out).expect("peer accepts our handshake");
            if progress == Progress::Complete {
                // Whatever the peer still sends (tickets, data) is for the
                // data plane, not the handshake.
                return hs.finish().expect("handoff");
            }
            if !peer.is_handshaking() && !fired {
                fired = true;
                before_last_flight(peer);
            }
            let bytes = drain(peer);
            assert!(!bytes.is_empty() || !out.is_empty(), "handshake stalled");
            for piece in bytes.chunks(split.max(1)) {
                hs.feed(piece).expect("feed");
                if hs.advance().expect("our handshake") == Progress::Complete {
                    // Keep feeding: the rest must end up buffered, not lost.
                }
            }
        }
    }

    /// Handshake with `role` on our side, then a data plane in a fresh guest.
    pub fn connect(
        suite: Suite,
        role: Role,
        configs: &Configs,
        split: usize,
        before_last_flight: impl FnMut(&mut Connection),
    ) -> (DataPlane, Delivery, Connection, bool) {
        let (hs, mut peer): (Handshake, Connection) = match role {
            Role::Server => (
                Handshake::server(&configs.server, 1).expect("server handshake"),
                rustls::ClientConnection::new(
                    configs.client.clone(),
                    ServerName::try_from("localhost").unwrap(),
                )
                .expect("peer")
                .into(),
            ),
            Role::Client => (
                Handshake::client(
                    &configs.client,
                    ServerName::try_from("localhost").unwrap(),
                    2,
                )
                .expect("client handshake"),
                rustls::ServerConnection::new(configs.server.clone())
                    .expect("peer")
                    .into(),
            ),
        };
        let _ = suite;
        let handoff = run(hs, &mut peer, split, before_last_flight);
        let resumed = handoff.resumed;
        let (plane, first) = DataPlane::new(super::guest(), handoff).expect("data plane");
        (plane, first, peer, resumed)
    }

    /// The peer writes `data`; the plane receives it (answering KeyUpdates
    /// to the peer). Returns what the plane delivered.
    pub fn peer_to_plane(
        peer: &mut Connection,
        plane: &mut DataPlane,
        data: &[u8],
        split: usize,
    ) -> (Vec<u8>, Delivery) {
        let mut got = Vec::new();
        let mut last = Delivery::default();
        let mut chunks = data.chunks(16384).peekable();
        loop {
            if let Some(chunk) = chunks.next() {
                peer.writer().write_all(chunk).expect("peer write");
            }
            let wire = drain(peer);
            for piece in wire.chunks(split.max(1)) {
                let d = plane.receive(piece).expect("plane receive");
                got.extend_from_slice(&d.plaintext);
                if !d.to_send.is_empty() {
                    feed_peer(peer, &d.to_send).expect("peer accepts our answer");
                }
                last.tickets += d.tickets;
                if d.closed.is_some() {
                    last.closed = d.closed;
                }
            }
            if chunks.peek().is_none() && !peer.wants_write() {
                return (got, last);
            }
        }
    }
}
