//! The handshake in the trusted host, sans-IO, with nothing lost at handoff.
//!
//! rustls's unbuffered connection is shown exactly one whole TLS record at a
//! time. When the handshake completes, every byte the peer sent after its
//! last handshake record is therefore still in our buffer, untouched: it
//! goes to the guest as buffered ciphertext. Application data rustls had to
//! decrypt on the way (sent in the same flight as the peer's Finished) goes
//! as buffered plaintext. Each reaches the guest exactly once.
//!
//! The keys leave rustls through `dangerous_into_kernel_connection`; a
//! client keeps the kernel connection so NewSessionTickets that arrive
//! later, through the guest, still feed resumption.

use std::sync::{Arc, Mutex};

use keyferry_record::ContentType;
use keyferry_record::connection::{Facts, Role};
use keyferry_record::framing::{self, Frame, HEADER_LEN, MAX_PLAINTEXT};
use keyferry_record::record::{TrafficKey, TrafficKeyMaterial};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ClientConfig, HandshakeKind, ServerConfig, Side};
use zeroize::Zeroizing;

use crate::error::{Error, HandshakeError, Result};
use crate::export::{ConnectionKeys, SecretLog, keys_from_secrets};

/// The most bytes a peer may send during the handshake before we stop
/// buffering them (a handshake record is at most 2^14+256 bytes; a peer
/// that sends far more before finishing is misbehaving).
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;

enum Unbuffered {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// Where the handshake stands after [`Handshake::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send [`Handshake::take_outgoing`], then feed more bytes.
    NeedInput,
    /// The handshake is complete: send the outgoing bytes, then
    /// [`Handshake::finish`].
    Complete,
}

/// A connection's keys and facts, ready for a guest.
pub struct Handoff {
    /// Both directions' key material, exact.
    pub keys: ConnectionKeys,
    /// Non-secret handshake facts for the guest.
    pub facts: Facts,
    /// For a client: the kernel connection that turns tickets arriving
    /// through the guest into resumable sessions. It holds the resumption
    /// secret and rustls's copy of the traffic secrets until dropped: drop
    /// it when tickets are not wanted.
    pub kernel: Option<KernelConnection<ClientConnectionData>>,
    /// Whether this handshake resumed an earlier session.
    pub resumed: bool,
}

/// One handshake in progress.
pub struct Handshake {
    conn: Unbuffered,
    log: Arc<SecretLog>,
    sni: Option<Arc<SniSlot>>,
    server_name: Option<String>,
    incoming: Vec<u8>,
    exposed: usize,
    outgoing: Vec<u8>,
    early: Zeroizing<Vec<u8>>,
    connection_id: u64,
    complete: bool,
    /// We have sent a change_cipher_spec or a protected record: from then
    /// on an alert of ours must be protected too, so only rustls can send
    /// one.
    protecting: bool,
    /// A server that has not yet seen the client's protected flight start:
    /// records before it may be 0-RTT data it rejected, to be skipped
    /// (RFC 8446 section 4.2.10).
    early_window: bool,
}

enum Step {
    Again,
    Blocked,
    Traffic,
    Fail(Error),
}

impl Handshake {
    /// A server handshake. `config` is shared; a per-connection copy gets
    /// its own secret log and SNI capture.
    pub fn server(config: &Arc<ServerConfig>, connection_id: u64) -> Result<Self> {
        let log = Arc::new(SecretLog::new());
        let sni = Arc::new(SniSlot {
            inner: config.cert_resolver.clone(),
            seen: Mutex::new(None),
        });
        let mut c = (**config).clone();
        c.key_log = log.clone();
        c.cert_resolver = sni.clone();
        let conn = UnbufferedServerConnection::new(Arc::new(c))?;
        Ok(Self::new(
            Unbuffered::Server(conn),
            log,
            Some(sni),
            None,
            connection_id,
        ))
    }

    /// A client handshake to `server_name`. Pass the same `config` for
    /// every connection: the per-connection copy shares its session store
    /// and verifier, so sessions resume.
    pub fn client(
        config: &Arc<ClientConfig>,
        server_name: ServerName<'static>,
        connection_id: u64,
    ) -> Result<Self> {
        let log = Arc::new(SecretLog::new());
        let mut c = (**config).clone();
        c.key_log = log.clone();
        let name = match &server_name {
            ServerName::DnsName(d) => Some(d.as_ref().to_string()),
            _ => None,
        };
        let conn = UnbufferedClientConnection::new(Arc::new(c), server_name)?;
        Ok(Self::new(
            Unbuffered::Client(conn),
            log,
            None,
            name,
            connection_id,
        ))
    }

    fn new(
        conn: Unbuffered,
        log: Arc<SecretLog>,
        sni: Option<Arc<SniSlot>>,
        server_name: Option<String>,
        connection_id: u64,
    ) -> Self {
        let early_window = matches!(conn, Unbuffered::Server(_));
        Self {
            conn,
            log,
            sni,
            server_name,
            incoming: Vec::new(),
            exposed: 0,
            outgoing: Vec::new(),
            early: Zeroizing::new(Vec::new()),
            connection_id,
            complete: false,
            protecting: false,
            early_window,
        }
    }

    /// Bytes from the peer.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        if self.incoming.len() + data.len() > MAX_HANDSHAKE_BUFFER {
            return Err(HandshakeError::TooMuchData(MAX_HANDSHAKE_BUFFER).into());
        }
        self.incoming.extend_from_slice(data);
        Ok(())
    }

    /// Bytes to send to the peer now.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        self.note_protection();
        std::mem::take(&mut self.outgoing)
    }

    /// Notes whether what we are about to send switches us to protected
    /// records: a change_cipher_spec (TLS 1.2, or TLS 1.3's middlebox
    /// compatibility one, sent just before protected records) or an
    /// application_data record (TLS 1.3's protected records).
    fn note_protection(&mut self) {
        let mut rest = &self.outgoing[..];
        while let Frame::Record(n) = framing::next_record(rest) {
            if matches!(rest[0], CHANGE_CIPHER_SPEC | APPLICATION_DATA) {
                self.protecting = true;
                return;
            }
            rest = &rest[n..];
        }
    }

    /// Drops a record rustls skipped as rejected 0-RTT data, so it is not
    /// shown to rustls again. rustls's unbuffered server skips records
    /// that do not open under the client's handshake key, up to its budget
    /// (`max_early_data_size`), but reports none of them as processed until
    /// a handshake message follows; shown them again with the next record,
    /// it skips them again and spends its budget on each once more, so a
    /// few records of early data exhaust it and end in `bad_record_mac`.
    ///
    /// rustls blocked with nothing discarded and exactly one protected
    /// record shown means it skipped the record, or holds it as the first
    /// fragment of a handshake message. Opening it with the client's
    /// handshake key tells which: the flight's first record has sequence
    /// number 0. Once one opens, the window closes.
    fn skip_rejected_early_data(&mut self) -> bool {
        if !self.early_window || self.exposed == 0 {
            return false;
        }
        let shown = &self.incoming[..self.exposed];
        if shown[0] != APPLICATION_DATA || framing::next_record(shown) != Frame::Record(shown.len())
        {
            return false;
        }
        let Unbuffered::Server(server) = &self.conn else {
            return false;
        };
        let (Some(secret), Some(aead)) = (
            self.log.client_handshake_secret(),
            server.negotiated_cipher_suite().and_then(tls13_aead),
        ) else {
            return false;
        };
        let opens = TrafficKeyMaterial::from_tls13_secret(
            aead,
            keyferry_record::Direction::Open,
            &secret,
            0,
            self.connection_id,
        )
        .and_then(|m| TrafficKey::from_material(m, None))
        .and_then(|mut key| key.open(shown.to_vec()))
        .is_ok();
        if opens {
            self.early_window = false;
            return false;
        }
        self.incoming.drain(..self.exposed);
        self.exposed = 0;
        true
    }

    /// A record of a content type TLS does not define must end the
    /// connection with `unexpected_message` (RFC 8446 section 5, RFC 5246
    /// section 6); rustls answers one with `decode_error`. The alert is
    /// ours, in the clear or protected as [`Self::protected_tls13_alert`]
    /// says; where neither is possible, rustls's stands.
    fn refuse_unknown_type(&mut self) -> Option<Error> {
        let alert = self.our_alert(UNEXPECTED_MESSAGE)?;
        self.outgoing.extend_from_slice(&alert);
        Some(HandshakeError::UnexpectedRecord.into())
    }

    /// rustls ends some handshakes without the alert the RFCs ask for: a
    /// record of another type between the fragments of a handshake message
    /// (RFC 8446 section 5.1), or a protected record with no content type.
    /// `unexpected_message` goes here, in the clear or protected; where
    /// neither is possible, none does (the README's conformance list says
    /// so).
    fn alert_rustls_left_out(&mut self, e: &Error) {
        let Error::Handshake(HandshakeError::Tls(rustls::Error::PeerMisbehaved(_))) = e else {
            return;
        };
        if let Some(alert) = self.our_alert(UNEXPECTED_MESSAGE) {
            self.outgoing.extend_from_slice(&alert);
        }
    }

    /// A fatal alert we can send now: in the clear while we send in the
    /// clear, protected as a TLS 1.3 server's after its flight, or none.
    fn our_alert(&mut self, description: u8) -> Option<Vec<u8>> {
        self.note_protection();
        if self.protecting {
            self.protected_tls13_alert(description)
        } else {
            Some(alert_record(description).to_vec())
        }
    }

    /// Refuses a record over the size limits (RFC 8446 section 5.1,
    /// RFC 5246 section 6.2.1) with a fatal `record_overflow` alert, before
    /// rustls sees it: rustls takes headers up to 18431 bytes long and
    /// would wait for a body it must refuse. While we still send in the
    /// clear, the alert goes in the clear. A TLS 1.3 server that has sent
    /// its flight protects it as rustls would: under its first application
    /// traffic key (rustls switches to it with its Finished), at sequence
    /// number 0 (its tickets come only after the client's Finished).
    /// Otherwise (a resumed TLS 1.2 handshake, say) only rustls holds the
    /// key, so it is shown the header with its length at the most a record
    /// field holds, which it refuses with its own `decode_error` alert.
    fn refuse_oversize(&mut self) -> Result<()> {
        if let Some(alert) = self.our_alert(RECORD_OVERFLOW) {
            self.outgoing.extend_from_slice(&alert);
            return Err(HandshakeError::RecordOverflow.into());
        }
        let header = self.exposed;
        self.incoming[header + 3..header + HEADER_LEN].copy_from_slice(&[0xff, 0xff]);
        self.exposed += HEADER_LEN;
        Ok(())
    }

    /// A fatal alert protected as a TLS 1.3 server's first record under its
    /// application traffic key, if this is one that has sent its flight.
    fn protected_tls13_alert(&self, description: u8) -> Option<Vec<u8>> {
        let Unbuffered::Server(server) = &self.conn else {
            return None;
        };
        if server.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        let aead = server.negotiated_cipher_suite().and_then(tls13_aead)?;
        let secret = self.log.server_traffic_secret()?;
        let material = TrafficKeyMaterial::from_tls13_secret(
            aead,
            keyferry_record::Direction::Seal,
            &secret,
            0,
            self.connection_id,
        )
        .ok()?;
        let mut key = TrafficKey::from_material(material, None).ok()?;
        key.seal(ContentType::Alert, &[2, description], 0).ok()
    }

    /// Runs the handshake as far as the bytes fed so far allow. On error,
    /// the alert rustls wants to send is in [`Handshake::take_outgoing`].
    pub fn advance(&mut self) -> Result<Progress> {
        if self.complete {
            return Ok(Progress::Complete);
        }
        loop {
            let (discard, step) = match &mut self.conn {
                Unbuffered::Client(c) => {
                    let status = c.process_tls_records(&mut self.incoming[..self.exposed]);
                    step(status, &mut self.outgoing, &mut self.early)
                }
                Unbuffered::Server(s) => {
                    let status = s.process_tls_records(&mut self.incoming[..self.exposed]);
                    step(status, &mut self.outgoing, &mut self.early)
                }
            };
            self.incoming.drain(..discard);
            self.exposed -= discard;
            match step {
                Step::Again => {}
                Step::Blocked if discard == 0 && self.skip_rejected_early_data() => {}
                Step::Traffic if !self.is_handshaking() => {
                    self.complete = true;
                    return Ok(Progress::Complete);
                }
                Step::Traffic | Step::Blocked => {
                    // Show rustls exactly one more whole record, if we have one.
                    let rest = &self.incoming[self.exposed..];
                    if rest.len() >= HEADER_LEN
                        && !(20..=24).contains(&rest[0])
                        && let Some(e) = self.refuse_unknown_type()
                    {
                        return Err(e);
                    }
                    let rest = &self.incoming[self.exposed..];
                    match framing::next_record(rest) {
                        // A record in the clear (a handshake record other
                        // than TLS 1.3's protected ones, an alert, a
                        // change_cipher_spec) holds at most 2^14 bytes.
                        Frame::Record(n)
                            if n - HEADER_LEN > MAX_PLAINTEXT && rest[0] != APPLICATION_DATA =>
                        {
                            self.refuse_oversize()?;
                        }
                        Frame::Record(n) => self.exposed += n,
                        // Not TLS at all (plain HTTP sent to this port,
                        // say): its "length" would keep us waiting for
                        // bytes that never come. Show rustls the header,
                        // which it refuses with its own alert at once.
                        Frame::Incomplete if self.exposed == 0 && not_tls(rest) => {
                            self.exposed = HEADER_LEN;
                        }
                        Frame::Incomplete => return Ok(Progress::NeedInput),
                        Frame::Oversize if not_tls(rest) => self.exposed += HEADER_LEN,
                        Frame::Oversize => {
                            self.refuse_oversize()?;
                        }
                    }
                }
                Step::Fail(e) => {
                    let queued = self.outgoing.len();
                    self.flush_alert();
                    if self.outgoing.len() == queued {
                        self.alert_rustls_left_out(&e);
                    }
                    self.tls12_certificate_alert(&e);
                    return Err(e);
                }
            }
        }
    }

    /// rustls refuses a TLS 1.2 client that sends no certificate when one
    /// is required with `certificate_required`, an alert TLS 1.3 defined;
    /// TLS 1.2 (RFC 5246 section 7.4.6) wants `handshake_failure`. The
    /// alert goes in the clear then (our change_cipher_spec comes after
    /// the client's certificate), so its description is put right here.
    fn tls12_certificate_alert(&mut self, e: &Error) {
        let tls12 = match &self.conn {
            Unbuffered::Server(s) => s.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2),
            Unbuffered::Client(_) => false,
        };
        let no_certificate = matches!(
            e,
            Error::Handshake(HandshakeError::Tls(rustls::Error::NoCertificatesPresented))
        );
        if !(tls12 && no_certificate) || self.protecting {
            return;
        }
        if let Some(alert) = self.outgoing.rchunks_exact_mut(ALERT_RECORD_LEN).next()
            && *alert == alert_record(CERTIFICATE_REQUIRED)
        {
            alert.copy_from_slice(&alert_record(HANDSHAKE_FAILURE));
        }
    }

    fn is_handshaking(&self) -> bool {
        match &self.conn {
            Unbuffered::Client(c) => c.is_handshaking(),
            Unbuffered::Server(s) => s.is_handshaking(),
        }
    }

    fn flush_alert(&mut self) {
        macro_rules! flush {
            ($c:expr) => {
                while $c.wants_write() {
                    let UnbufferedStatus { state, .. } = $c.process_tls_records(&mut []);
                    match state {
                        Ok(ConnectionState::EncodeTlsData(mut e)) => {
                            if encode(&mut e, &mut self.outgoing).is_err() {
                                break;
                            }
                        }
                        Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                        _ => break,
                    }
                }
            };
        }
        match &mut self.conn {
            Unbuffered::Client(c) => flush!(c),
            Unbuffered::Server(s) => flush!(s),
        }
    }

    /// Takes the keys out of rustls and gathers the facts. The outgoing
    /// bytes must have been sent first. A server's rustls state, copies of
    /// the keys included, is dropped and zeroized here; a client's kernel
    /// connection is kept in the [`Handoff`] (see its `kernel` field).
    pub fn finish(mut self) -> Result<Handoff> {
        if !self.complete {
            return Err(HandshakeError::OutOfOrder("handshake not complete").into());
        }
        if !self.outgoing.is_empty() {
            return Err(HandshakeError::OutOfOrder("handshake bytes not yet sent").into());
        }
        if self.exposed != 0 {
            return Err(
                HandshakeError::OutOfOrder("a handshake message was left half processed").into(),
            );
        }
        let leftover = std::mem::take(&mut self.incoming);
        let (side, facts, resumed, secrets, kernel) = match self.conn {
            Unbuffered::Client(c) => {
                let facts = facts(
                    &c,
                    Role::Client,
                    self.server_name.clone(),
                    self.connection_id,
                )?;
                let resumed = c.handshake_kind() == Some(HandshakeKind::Resumed);
                let (secrets, kernel) = c.dangerous_into_kernel_connection()?;
                (Side::Client, facts, resumed, secrets, Some(kernel))
            }
            Unbuffered::Server(s) => {
                let sni = self
                    .sni
                    .as_ref()
                    .and_then(|slot| slot.seen.lock().ok().and_then(|s| s.clone()));
                let facts = facts(&s, Role::Server, sni, self.connection_id)?;
                let resumed = s.handshake_kind() == Some(HandshakeKind::Resumed);
                let (secrets, _kernel) = s.dangerous_into_kernel_connection()?;
                (Side::Server, facts, resumed, secrets, None)
            }
        };
        let mut keys =
            keys_from_secrets(side, facts.version, secrets, &self.log, self.connection_id)?;
        keys.open.buffered_plaintext = std::mem::take(&mut self.early);
        keys.open.buffered_ciphertext = leftover;
        Ok(Handoff {
            keys,
            facts,
            kernel,
            resumed,
        })
    }
}

/// One state of the unbuffered loop: encode, transmit (our caller sends),
/// collect early plaintext, or report where we stand.
fn step<D>(
    status: UnbufferedStatus<'_, '_, D>,
    outgoing: &mut Vec<u8>,
    early: &mut Vec<u8>,
) -> (usize, Step) {
    let UnbufferedStatus {
        mut discard, state, ..
    } = status;
    let step = match state {
        Err(e) => Step::Fail(HandshakeError::Tls(e).into()),
        Ok(ConnectionState::EncodeTlsData(mut e)) => match encode(&mut e, outgoing) {
            Ok(()) => Step::Again,
            Err(e) => Step::Fail(e),
        },
        Ok(ConnectionState::TransmitTlsData(t)) => {
            t.done();
            Step::Again
        }
        Ok(ConnectionState::BlockedHandshake) => Step::Blocked,
        Ok(ConnectionState::ReadTraffic(mut r)) => {
            let mut failed = None;
            while let Some(record) = r.next_record() {
                match record {
                    Ok(record) => {
                        discard += record.discard;
                        early.extend_from_slice(record.payload);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                Some(e) => Step::Fail(HandshakeError::Tls(e).into()),
                None => Step::Again,
            }
        }
        Ok(ConnectionState::WriteTraffic(_)) => Step::Traffic,
        Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
            Step::Fail(HandshakeError::PeerClosed.into())
        }
        Ok(_) => Step::Fail(
            HandshakeError::OutOfOrder("unexpected handshake state (early data is off)").into(),
        ),
    };
    (discard, step)
}

fn encode<D>(e: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> Result<()> {
    let used = out.len();
    let need = match e.encode(&mut []) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Ok(_) => return Ok(()),
        Err(EncodeError::AlreadyEncoded) => {
            return Err(HandshakeError::OutOfOrder("record encoded twice").into());
        }
    };
    out.resize(used + need, 0);
    let n = e.encode(&mut out[used..]).map_err(|_| {
        HandshakeError::OutOfOrder("encoding a record into a buffer of its own size")
    })?;
    out.truncate(used + n);
    Ok(())
}

fn facts(
    conn: &rustls::CommonState,
    role: Role,
    server_name: Option<String>,
    connection_id: u64,
) -> Result<Facts> {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => keyferry_record::ProtocolVersion::Tls13,
        Some(rustls::ProtocolVersion::TLSv1_2) => keyferry_record::ProtocolVersion::Tls12,
        _ => return Err(HandshakeError::Export("unsupported protocol version").into()),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .ok_or(HandshakeError::Export("no cipher suite"))?;
    let suite = crate::suites::iana_name(suite).to_string();
    let peer_certificate = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(crate::x509::peer_certificate);
    Ok(Facts {
        role,
        version,
        suite,
        server_name,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        peer_certificate,
        connection_id,
    })
}

/// Wraps the server's certificate resolver to see the client's SNI, which
/// the unbuffered server connection does not expose.
struct SniSlot {
    inner: Arc<dyn ResolvesServerCert>,
    seen: Mutex<Option<String>>,
}

impl core::fmt::Debug for SniSlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SniSlot")
    }
}

impl ResolvesServerCert for SniSlot {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = hello.server_name().map(str::to_string);
        }
        self.inner.resolve(hello)
    }
}

/// The AEAD of a TLS 1.3 suite.
fn tls13_aead(suite: rustls::SupportedCipherSuite) -> Option<keyferry_record::AeadAlgorithm> {
    use keyferry_record::AeadAlgorithm;
    match suite.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(AeadAlgorithm::Aes128Gcm),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(AeadAlgorithm::Aes256Gcm),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
            Some(AeadAlgorithm::ChaCha20Poly1305)
        }
        _ => None,
    }
}

const CHANGE_CIPHER_SPEC: u8 = 20;
const APPLICATION_DATA: u8 = 23;
const CERTIFICATE_REQUIRED: u8 = 116;
const HANDSHAKE_FAILURE: u8 = 40;
const ALERT_RECORD_LEN: usize = HEADER_LEN + 2;
const UNEXPECTED_MESSAGE: u8 = 10;
const RECORD_OVERFLOW: u8 = 22;

/// A fatal alert in the clear: type alert, legacy version TLS 1.2, length
/// 2, level fatal, then the description.
const fn alert_record(description: u8) -> [u8; ALERT_RECORD_LEN] {
    [21, 3, 3, 0, 2, 2, description]
}

/// Whether `bytes` start with a whole record header that no TLS peer sends:
/// a content type outside 20..=24 (RFC 8446 section 5.1 and RFC 5246 6.2.1)
/// or a major version other than 3.
fn not_tls(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && (!(20..=24).contains(&bytes[0]) || bytes[1] != 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Identity, TlsOptions};

    #[test]
    fn plain_http_is_refused_at_once_with_an_alert() {
        let identity = Identity::self_signed(&["localhost".to_string()]).unwrap();
        let config = Arc::new(TlsOptions::default().server_config(&identity).unwrap());
        let mut hs = Handshake::server(&config, 1).unwrap();
        // 8239 bytes, were "GET /" a record header.
        hs.feed(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").unwrap();
        let err = hs.advance().expect_err("refused without waiting for more");
        assert!(
            matches!(err, Error::Handshake(HandshakeError::UnexpectedRecord)),
            "{err}"
        );
        // 'G' is no record type: unexpected_message (RFC 8446 section 5).
        let alert = hs.take_outgoing();
        assert_eq!(alert, alert_record(UNEXPECTED_MESSAGE), "{alert:?}");
    }

    #[test]
    fn a_partial_tls_header_waits_for_more() {
        let identity = Identity::self_signed(&["localhost".to_string()]).unwrap();
        let config = Arc::new(TlsOptions::default().server_config(&identity).unwrap());
        let mut hs = Handshake::server(&config, 1).unwrap();
        hs.feed(&[22, 3, 1, 0x02, 0x00, 1, 0]).unwrap();
        assert!(matches!(hs.advance(), Ok(Progress::NeedInput)));
        assert!(not_tls(b"GET /"));
        assert!(not_tls(&[22, 4, 1, 0, 1]));
        assert!(!not_tls(&[23, 3, 3, 0x40, 0]));
        assert!(!not_tls(b"GET"));
    }
}
