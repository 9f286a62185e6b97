//! Taking a finished rustls connection's traffic keys, exactly.
//!
//! rustls's `dangerous_extract_secrets` gives each direction's key, IV and
//! next sequence number. TLS 1.3 KeyUpdate in the guest also needs the
//! traffic secret, which rustls only shows through [`KeyLog`]; a
//! [`SecretLog`] captures it, and the key derived from it is checked
//! against the extracted key before anything is sealed.
//!
//! Plaintext that rustls already decrypted is drained into the receive
//! key's buffered plaintext so the guest delivers it exactly once.

use std::io::Read;
use std::sync::Mutex;

use keyferry_guest::record::TrafficKeyMaterial;
use keyferry_guest::{AeadAlgorithm, Direction, ProtocolVersion};
use rustls::{ConnectionTrafficSecrets, KeyLog, Side};
use zeroize::Zeroizing;

use crate::error::{HandshakeError, Result};

/// Captures one connection's TLS 1.3 application traffic secrets. Install a
/// fresh one per connection (configs are cheap to clone) so secrets of
/// different connections can never be mixed up.
#[derive(Default)]
pub struct SecretLog {
    secrets: Mutex<Secrets>,
}

#[derive(Default)]
struct Secrets {
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
    /// The client's handshake traffic secret: a server opens the first
    /// record of the client's flight with it to tell rejected 0-RTT data
    /// from the flight (`crate::handshake`).
    client_handshake: Option<Zeroizing<Vec<u8>>>,
}

impl SecretLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's first application traffic secret, once rustls has it,
    /// left in the log for the export.
    pub(crate) fn server_traffic_secret(&self) -> Option<Zeroizing<Vec<u8>>> {
        let s = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        s.server.clone()
    }

    /// The client's handshake traffic secret, once rustls has it.
    pub(crate) fn client_handshake_secret(&self) -> Option<Zeroizing<Vec<u8>>> {
        let s = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        s.client_handshake.clone()
    }

    fn take(&self, side: Side) -> Option<Zeroizing<Vec<u8>>> {
        let mut s = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        match side {
            Side::Client => s.client.take(),
            Side::Server => s.server.take(),
        }
    }
}

/// rustls requires `Debug` of a key log; this one shows no secret.
impl core::fmt::Debug for SecretLog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretLog { .. }")
    }
}

impl KeyLog for SecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut s = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.client = Some(Zeroizing::new(secret.to_vec())),
            "SERVER_TRAFFIC_SECRET_0" => s.server = Some(Zeroizing::new(secret.to_vec())),
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET" => {
                s.client_handshake = Some(Zeroizing::new(secret.to_vec()));
            }
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(
            label,
            "CLIENT_TRAFFIC_SECRET_0"
                | "SERVER_TRAFFIC_SECRET_0"
                | "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
        )
    }
}

/// Both directions of a connection, ready to seal into blobs.
pub struct ConnectionKeys {
    /// The key this side seals with.
    pub seal: TrafficKeyMaterial,
    /// The key this side opens with; carries any plaintext rustls had
    /// already decrypted.
    pub open: TrafficKeyMaterial,
    /// Negotiated version.
    pub version: ProtocolVersion,
    /// Negotiated AEAD.
    pub aead: AeadAlgorithm,
}

/// Consumes a connection whose handshake is complete and returns its
/// traffic keys with their exact state. rustls's copies are zeroized when
/// the extracted secrets drop here.
///
/// Dangerous: the result holds live key material. Seal it into blobs and
/// drop it at once.
///
/// The connection must have nothing left to write (flush it first), and
/// must not have been fed bytes beyond the handshake that it has not yet
/// processed: rustls discards those at extraction.
pub fn dangerous_export_keys(
    mut connection: rustls::Connection,
    log: &SecretLog,
    connection_id: u64,
) -> Result<ConnectionKeys> {
    if connection.is_handshaking() {
        return Err(HandshakeError::Export("handshake not complete").into());
    }
    if connection.wants_write() {
        return Err(HandshakeError::Export("connection has unsent data; flush it first").into());
    }
    let side = match &connection {
        rustls::Connection::Client(_) => Side::Client,
        rustls::Connection::Server(_) => Side::Server,
    };
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => ProtocolVersion::Tls13,
        Some(rustls::ProtocolVersion::TLSv1_2) => ProtocolVersion::Tls12,
        _ => return Err(HandshakeError::Export("unsupported protocol version").into()),
    };
    let mut plaintext = Zeroizing::new(Vec::new());
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        match connection.reader().read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => plaintext.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                return Err(HandshakeError::Export("reading buffered plaintext failed").into());
            }
        }
    }
    let secrets = connection.dangerous_extract_secrets()?;
    let mut keys = keys_from_secrets(side, version, secrets, log, connection_id)?;
    keys.open.buffered_plaintext = plaintext;
    Ok(keys)
}

/// Builds both directions' material from rustls's extracted secrets and the
/// logged TLS 1.3 traffic secrets, checking that they agree.
pub(crate) fn keys_from_secrets(
    side: Side,
    version: ProtocolVersion,
    secrets: rustls::ExtractedSecrets,
    log: &SecretLog,
    connection_id: u64,
) -> Result<ConnectionKeys> {
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let (seal_secret, open_secret) = match version {
        ProtocolVersion::Tls13 => {
            let (ours, theirs) = match side {
                Side::Client => (Side::Client, Side::Server),
                Side::Server => (Side::Server, Side::Client),
            };
            (
                log.take(ours).ok_or(HandshakeError::Export(
                    "TLS 1.3 traffic secret not logged; install the SecretLog",
                ))?,
                log.take(theirs).ok_or(HandshakeError::Export(
                    "TLS 1.3 traffic secret not logged; install the SecretLog",
                ))?,
            )
        }
        ProtocolVersion::Tls12 => (Zeroizing::new(Vec::new()), Zeroizing::new(Vec::new())),
    };
    let seal = material(
        version,
        Direction::Seal,
        &tx,
        tx_seq,
        &seal_secret,
        connection_id,
    )?;
    let open = material(
        version,
        Direction::Open,
        &rx,
        rx_seq,
        &open_secret,
        connection_id,
    )?;
    let aead = seal.aead;
    Ok(ConnectionKeys {
        seal,
        open,
        version,
        aead,
    })
}

fn material(
    version: ProtocolVersion,
    direction: Direction,
    secrets: &ConnectionTrafficSecrets,
    sequence: u64,
    secret: &[u8],
    connection_id: u64,
) -> Result<TrafficKeyMaterial> {
    let (aead, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            (AeadAlgorithm::Aes128Gcm, key.as_ref(), iv.as_ref())
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            (AeadAlgorithm::Aes256Gcm, key.as_ref(), iv.as_ref())
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (AeadAlgorithm::ChaCha20Poly1305, key.as_ref(), iv.as_ref())
        }
        _ => return Err(HandshakeError::Export("unsupported cipher suite").into()),
    };
    let material = TrafficKeyMaterial::new(
        version,
        aead,
        direction,
        key,
        iv,
        secret,
        sequence,
        connection_id,
    );
    material.check_derivation().map_err(|_| {
        HandshakeError::Export("logged traffic secret does not match the connection's key")
    })?;
    Ok(material)
}
