//! Shared fixtures for keyferry's integration tests: one compiled guest per
//! test process, real rustls peers handshaking in memory, and a small record
//! pump that moves bytes between a live rustls connection and a guest.
#![allow(missing_docs, reason = "test fixtures")]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use keyferry::export::{ConnectionKeys, SecretLog, dangerous_export_keys};
use keyferry::{
    ContentType, GuestComponent, GuestEngine, GuestInstance, SandboxConfig, TrafficKeyHandle,
};
use rustls::crypto::ring::{cipher_suite as cs, default_provider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, Connection, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
};

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
        let plain = engine.reference_component().expect("compile guest");
        let host_keys = engine
            .reference_component_with_host_keys()
            .expect("compile host-keys guest");
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

/// A protocol version and one cipher suite rustls offers for it.
#[derive(Clone, Copy)]
pub struct Suite {
    pub name: &'static str,
    pub version: &'static SupportedProtocolVersion,
    pub suite: SupportedCipherSuite,
}

pub fn all_suites() -> Vec<Suite> {
    vec![
        Suite {
            name: "TLS13_AES_128_GCM_SHA256",
            version: &rustls::version::TLS13,
            suite: cs::TLS13_AES_128_GCM_SHA256,
        },
        Suite {
            name: "TLS13_AES_256_GCM_SHA384",
            version: &rustls::version::TLS13,
            suite: cs::TLS13_AES_256_GCM_SHA384,
        },
        Suite {
            name: "TLS13_CHACHA20_POLY1305_SHA256",
            version: &rustls::version::TLS13,
            suite: cs::TLS13_CHACHA20_POLY1305_SHA256,
        },
        Suite {
            name: "TLS12_ECDHE_ECDSA_AES_128_GCM_SHA256",
            version: &rustls::version::TLS12,
            suite: cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        },
        Suite {
            name: "TLS12_ECDHE_ECDSA_AES_256_GCM_SHA384",
            version: &rustls::version::TLS12,
            suite: cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        },
        Suite {
            name: "TLS12_ECDHE_ECDSA_CHACHA20_POLY1305_SHA256",
            version: &rustls::version::TLS12,
            suite: cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        },
    ]
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
    p.cipher_suites = vec![suite.suite];
    Arc::new(p)
}

pub fn server_config(suite: Suite, log: Arc<SecretLog>) -> Arc<ServerConfig> {
    let id = identity();
    let mut c = ServerConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[suite.version])
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
        .with_protocol_versions(&[suite.version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.enable_secret_extraction = true;
    c.key_log = log;
    Arc::new(c)
}

/// Moves everything `from` wants to write into `to` and processes it.
pub fn transfer(from: &mut Connection, to: &mut Connection) -> usize {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write_tls");
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls");
        to.process_new_packets().expect("process_new_packets");
    }
    buf.len()
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
pub fn handshake_into(suite: Suite, role: Role, mut guest: GuestInstance) -> Link {
    let (keys, peer) = handshake_and_export(suite, role, 0xc0ffee);
    let seal_blob = guest.seal_traffic_key(&keys.seal).expect("seal blob");
    let open_blob = guest.seal_traffic_key(&keys.open).expect("seal blob");
    let version = keys.version;
    drop(keys);
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

/// Handshakes in memory and exports `role`'s keys.
pub fn handshake_and_export(
    suite: Suite,
    role: Role,
    connection_id: u64,
) -> (ConnectionKeys, Connection) {
    let client_log = Arc::new(SecretLog::new());
    let server_log = Arc::new(SecretLog::new());
    let mut client: Connection = rustls::ClientConnection::new(
        client_config(suite, client_log.clone()),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client")
    .into();
    let mut server: Connection =
        rustls::ServerConnection::new(server_config(suite, server_log.clone()))
            .expect("server")
            .into();
    while client.is_handshaking()
        || server.is_handshaking()
        || client.wants_write()
        || server.wants_write()
    {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
    }
    match role {
        Role::Client => (
            dangerous_export_keys(client, &client_log, connection_id).expect("export"),
            server,
        ),
        Role::Server => (
            dangerous_export_keys(server, &server_log, connection_id).expect("export"),
            client,
        ),
    }
}

/// Splits wire bytes into whole records.
pub fn split_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
        out.push(bytes[..5 + len].to_vec());
        bytes = &bytes[5 + len..];
    }
    assert!(bytes.is_empty(), "trailing partial record");
    out
}

impl Link {
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
