//! Taking a finished rustls connection's traffic keys, exactly.
//!
//! rustls's `dangerous_extract_secrets` gives each direction's key, IV and
//! next sequence number. TLS 1.3 KeyUpdate in the guest also needs the
//! traffic secret, which rustls only shows through [`KeyLog`]; a
//! [`SecretLog`] captures it, and the key derived from it is checked
//! against the extracted key before anything is sealed.
//!
//! Plaintext that rustls already decrypted is drained into the receive
//! key's buffered plaintext, and bytes it never saw into its buffered
//! ciphertext ([`ExportableConnection`]), so the guest delivers each exactly
//! once.

use std::io;
use std::sync::Mutex;

use keyferry_record::framing::{self, Frame, HEADER_LEN, MAX_CIPHERTEXT};
use keyferry_record::record::TrafficKeyMaterial;
use keyferry_record::{AeadAlgorithm, Direction, ProtocolVersion};
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

/// How many bytes [`ExportableConnection`] holds before it must be
/// processed or exported: four records of the largest size, so a peer that
/// sends after the handshake cannot grow it without bound.
const INCOMING_LIMIT: usize = 4 * (HEADER_LEN + MAX_CIPHERTEXT);

/// The longest record rustls takes, header included (TLS 1.2's limit:
/// 2^14 + 2048 bytes of ciphertext).
const RUSTLS_MAX_RECORD: usize = HEADER_LEN + (1 << 14) + 2048;

/// How much one [`ExportableConnection::read_tls`] asks of its reader.
const READ_CHUNK: usize = HEADER_LEN + MAX_CIPHERTEXT;

/// A buffered rustls connection whose keys leave it with nothing lost.
///
/// rustls's buffered `Connection` keeps what it reads in a deframer it never
/// shows, and `dangerous_extract_secrets` drops whatever that still holds:
/// a record the peer sent right behind its Finished, or half of one, would
/// vanish at export. This wrapper shows rustls one whole record at a time,
/// and only while the handshake runs. Every byte after the record that
/// completed it stays here, and [`Self::dangerous_export_keys`] hands it to
/// the open key as buffered ciphertext, for the guest to open (application
/// data, tickets, KeyUpdate and alerts alike). Plaintext rustls decrypted
/// on the way (early data, or application data in the same record) goes as
/// buffered plaintext. Each byte reaches the guest exactly once.
///
/// [`crate::handshake::Handshake`] does the same sans-IO over rustls's
/// unbuffered API; this is for embedders who already drive a buffered
/// connection.
pub struct ExportableConnection {
    connection: rustls::Connection,
    /// Bytes read and not yet shown to rustls: never more than one
    /// partial record while the handshake runs, anything after it.
    incoming: Vec<u8>,
}

impl ExportableConnection {
    /// Wraps a connection that has not read anything yet.
    pub fn new(connection: impl Into<rustls::Connection>) -> Self {
        Self {
            connection: connection.into(),
            incoming: Vec::new(),
        }
    }

    /// Reads TLS bytes from `rd` into this wrapper's buffer (not rustls's).
    /// Fails once four whole records wait: call
    /// [`Self::process_new_packets`], or export.
    pub fn read_tls(&mut self, rd: &mut dyn io::Read) -> io::Result<usize> {
        let room = INCOMING_LIMIT.saturating_sub(self.incoming.len());
        if room == 0 {
            return Err(io::Error::other(
                "incoming buffer full: process the records or export the keys",
            ));
        }
        let start = self.incoming.len();
        self.incoming.resize(start + room.min(READ_CHUNK), 0);
        let read = rd.read(&mut self.incoming[start..]);
        self.incoming.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Shows rustls each whole record read so far, one at a time, while the
    /// handshake runs; after it, records wait here for the export.
    pub fn process_new_packets(&mut self) -> Result<rustls::IoState> {
        while self.connection.is_handshaking() {
            let len = match framing::next_record(&self.incoming) {
                Frame::Incomplete => break,
                Frame::Record(len) => len,
                // Over TLS 1.3's limit: rustls judges it (its own limit is
                // TLS 1.2's) once whole, or at once from the header when
                // it is over that too, and ends the connection with its
                // alert.
                Frame::Oversize => {
                    let declared = HEADER_LEN + framing::body_len(&self.incoming).unwrap_or(0);
                    if declared > RUSTLS_MAX_RECORD {
                        HEADER_LEN
                    } else if self.incoming.len() >= declared {
                        declared
                    } else {
                        break;
                    }
                }
            };
            let mut record = &self.incoming[..len];
            while !record.is_empty() {
                // rustls's deframer is empty before each record and takes
                // one whole; it refuses only before reading anything.
                if self.connection.read_tls(&mut record)? == 0 {
                    break;
                }
            }
            let shown = len - record.len();
            self.incoming.drain(..shown);
            self.connection
                .process_new_packets()
                .map_err(HandshakeError::Tls)?;
            if shown < len {
                break;
            }
        }
        Ok(self
            .connection
            .process_new_packets()
            .map_err(HandshakeError::Tls)?)
    }

    /// Writes what rustls has queued for the peer.
    pub fn write_tls(&mut self, wr: &mut dyn io::Write) -> io::Result<usize> {
        self.connection.write_tls(wr)
    }

    /// Whether rustls has bytes queued for the peer.
    pub fn wants_write(&self) -> bool {
        self.connection.wants_write()
    }

    /// Whether the handshake still runs.
    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// The connection, for its negotiated facts (ALPN, SNI, certificates).
    pub fn connection(&self) -> &rustls::Connection {
        &self.connection
    }

    /// Consumes the connection once its handshake is complete and returns
    /// its traffic keys with their exact state. rustls's copies are
    /// zeroized when the extracted secrets drop here.
    ///
    /// Dangerous: the result holds live key material. Seal it into blobs
    /// and drop it at once.
    ///
    /// The connection must have nothing left to write: flush it first.
    pub fn dangerous_export_keys(
        self,
        log: &SecretLog,
        connection_id: u64,
    ) -> Result<ConnectionKeys> {
        let Self {
            mut connection,
            incoming,
        } = self;
        if connection.is_handshaking() {
            return Err(HandshakeError::Export("handshake not complete").into());
        }
        if connection.wants_write() {
            return Err(
                HandshakeError::Export("connection has unsent data; flush it first").into(),
            );
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
        if let rustls::Connection::Server(server) = &mut connection
            && let Some(mut early) = server.early_data()
        {
            drain(&mut early, &mut plaintext)?;
        }
        drain(&mut connection.reader(), &mut plaintext)?;
        let secrets = connection.dangerous_extract_secrets()?;
        let mut keys = keys_from_secrets(side, version, secrets, log, connection_id)?;
        keys.open.buffered_plaintext = plaintext;
        keys.open.buffered_ciphertext = incoming;
        Ok(keys)
    }
}

/// Reads everything `reader` holds now into `into`.
fn drain(reader: &mut dyn io::Read, into: &mut Zeroizing<Vec<u8>>) -> Result<()> {
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        match reader.read(&mut chunk[..]) {
            Ok(0) => return Ok(()),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => {
                return Err(HandshakeError::Export("reading buffered plaintext failed").into());
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tls::{Identity, TlsOptions};

    fn server() -> ExportableConnection {
        let identity = Identity::self_signed(&["localhost".to_string()]).unwrap();
        let config = TlsOptions::default().server_config(&identity).unwrap();
        ExportableConnection::new(rustls::ServerConnection::new(Arc::new(config)).unwrap())
    }

    #[test]
    fn a_record_not_yet_whole_stays_here() {
        let mut s = server();
        s.read_tls(&mut &[22, 3, 1, 0, 100, 1, 0][..]).unwrap();
        s.process_new_packets().unwrap();
        assert_eq!(s.incoming, [22, 3, 1, 0, 100, 1, 0]);
        assert!(s.is_handshaking());
    }

    #[test]
    fn records_over_the_limits_end_the_handshake_without_waiting() {
        // Over every limit: refused from the header. Over TLS 1.3's but
        // within rustls's: refused once whole.
        for (length, body) in [(0xffff_usize, 0), (17_000, 17_000)] {
            let mut s = server();
            let mut record = vec![22, 3, 1, (length >> 8) as u8, length as u8];
            record.resize(5 + body, 0);
            let mut rest = &record[..];
            while !rest.is_empty() {
                s.read_tls(&mut rest).unwrap();
            }
            assert!(s.process_new_packets().is_err(), "length {length}");
        }
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut s = server();
        let flood = vec![23u8; INCOMING_LIMIT + 1];
        let mut rest = &flood[..];
        let mut read = 0;
        while let Ok(n) = s.read_tls(&mut rest) {
            read += n;
        }
        assert_eq!(read, INCOMING_LIMIT);
    }

    #[test]
    fn keys_leave_only_a_finished_handshake() {
        let log = SecretLog::new();
        assert!(matches!(
            server().dangerous_export_keys(&log, 1),
            Err(crate::Error::Handshake(HandshakeError::Export(_)))
        ));
    }
}
