//! A TLS connection's data plane: a byte stream of ciphertext in, plaintext
//! out, and the post-handshake protocol (alerts, close_notify, KeyUpdate)
//! handled here, inside the sandbox.
//!
//! Input may arrive in any split, one byte at a time included: records are
//! reassembled from a buffer, and handshake messages from records. Messages
//! this layer does not own (NewSessionTicket, CertificateRequest) go to the
//! host as events; none is dropped.

use alloc::{string::String, vec::Vec};
use zeroize::Zeroizing;

use crate::error::{Alert, Error, Result};
use crate::framing::{self, Frame, MAX_PLAINTEXT};
use crate::record::TrafficKey;
use crate::suite::{ContentType, Direction, ProtocolVersion};

/// Handshake message types this layer looks at (RFC 8446 section 4).
const HELLO_REQUEST: u8 = 0;
const CLIENT_HELLO: u8 = 1;
const NEW_SESSION_TICKET: u8 = 4;
const CERTIFICATE_REQUEST: u8 = 13;
const KEY_UPDATE: u8 = 24;
/// Alert descriptions this layer sends or recognizes.
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;
/// The largest post-handshake message we reassemble (a NewSessionTicket
/// with a large ticket and extensions fits easily).
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// KeyUpdate requests tolerated without application data in between, as
/// rustls does, so a peer cannot keep us re-keying forever.
const MAX_KEY_UPDATE_REQUESTS: u32 = 32;
/// Consecutive empty application-data records tolerated (rustls: 32): each
/// costs an AEAD open and delivers nothing.
const MAX_EMPTY_RECORDS: u32 = 32;
/// Warning alerts tolerated over a connection's life (rustls and BoringSSL:
/// 4).
const MAX_WARNING_ALERTS: u32 = 4;
/// Renegotiation attempts declined before the next one is fatal (rustls: 1).
const MAX_RENEGOTIATION_ATTEMPTS: u32 = 1;

/// Which side of the handshake this connection was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The TLS client.
    Client,
    /// The TLS server.
    Server,
}

/// Non-secret facts of the handshake, for the application in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Client or server.
    pub role: Role,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// IANA suite name.
    pub suite: String,
    /// SNI the client sent.
    pub server_name: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The peer's certificate, if the peer sent one.
    pub peer_certificate: Option<PeerCertificate>,
    /// The connection id the keys carry.
    pub connection_id: u64,
}

/// What the host read from the peer's verified leaf certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Subject distinguished name ("CN=alice, O=Example").
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Subject alternative names, typed ("DNS:a.example", "IP:10.0.0.1").
    pub subject_alt_names: Vec<String>,
    /// SHA-256 of the DER certificate, colon-separated upper-case hex.
    pub sha256: String,
}

/// A post-handshake message for the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A NewSessionTicket, whole message (type and length included): the
    /// host's client can resume with it.
    NewSessionTicket(Vec<u8>),
    /// A post-handshake CertificateRequest, whole message.
    CertificateRequest(Vec<u8>),
}

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer sent close_notify: a clean end of its data.
    CloseNotify,
    /// The peer sent a fatal alert with this description.
    PeerAlert(u8),
    /// We found a protocol error, sent this alert and closed.
    LocalAlert(Alert),
    /// The transport ended without close_notify: the data may be cut short.
    Truncated,
}

/// What one step produced.
#[derive(Default)]
pub struct Output {
    /// Ciphertext to send to the peer (KeyUpdate answers, alerts).
    pub to_send: Vec<u8>,
    /// Application plaintext, in order.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Post-handshake messages for the host.
    pub events: Vec<Event>,
    /// Set once the peer's side is over.
    pub closed: Option<Closed>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Open,
    Closed(Closed),
}

/// One connection's data plane: both traffic keys and the reassembly state.
pub struct Connection {
    seal: TrafficKey,
    open: TrafficKey,
    facts: Facts,
    inbuf: Vec<u8>,
    handshake: Vec<u8>,
    read: ReadState,
    write_closed: bool,
    key_update_requests: u32,
    empty_records: u32,
    warning_alerts: u32,
    renegotiation_attempts: u32,
    started: bool,
}

impl Connection {
    /// Pairs a seal key and an open key of the same connection.
    pub fn new(seal: TrafficKey, open: TrafficKey, facts: Facts) -> Result<Self> {
        if seal.direction != Direction::Seal
            || open.direction != Direction::Open
            || seal.connection_id != open.connection_id
            || seal.version != open.version
            || seal.version != facts.version
        {
            return Err(Error::WrongKeyType);
        }
        Ok(Self {
            seal,
            open,
            facts,
            inbuf: Vec::new(),
            handshake: Vec::new(),
            read: ReadState::Open,
            write_closed: false,
            key_update_requests: 0,
            empty_records: 0,
            warning_alerts: 0,
            renegotiation_attempts: 0,
            started: false,
        })
    }

    /// The handshake facts.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Both keys, for their non-secret state.
    pub fn keys(&self) -> (&TrafficKey, &TrafficKey) {
        (&self.seal, &self.open)
    }

    /// Whether the peer's side is over, and how.
    pub fn closed(&self) -> Option<Closed> {
        match self.read {
            ReadState::Open => None,
            ReadState::Closed(c) => Some(c),
        }
    }

    /// Whether this side has stopped sending (close_notify or a fatal
    /// alert went out).
    pub fn write_closed(&self) -> bool {
        self.write_closed
    }

    /// Delivers what the previous owner had already read at handoff:
    /// decrypted plaintext first, then any ciphertext, exactly once.
    pub fn start(&mut self) -> Output {
        let mut out = Output::default();
        if self.started {
            return out;
        }
        self.started = true;
        let (plaintext, ciphertext) = self.open.take_buffered();
        out.plaintext.extend_from_slice(&plaintext);
        self.inbuf.extend_from_slice(&ciphertext);
        self.process(&mut out);
        out
    }

    /// Takes ciphertext from the transport, in any split.
    pub fn receive(&mut self, data: &[u8]) -> Output {
        let mut out = self.start();
        if self.read == ReadState::Open {
            self.inbuf.extend_from_slice(data);
            self.process(&mut out);
        }
        out
    }

    /// The transport reached EOF. Without a close_notify first, that is a
    /// truncation, never a clean close.
    pub fn end_of_stream(&mut self) -> Output {
        let mut out = self.receive(&[]);
        if self.read == ReadState::Open {
            self.read = ReadState::Closed(Closed::Truncated);
            out.closed = Some(Closed::Truncated);
        }
        out
    }

    /// Protects application data, split into records of at most 2^14 bytes.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if self.write_closed {
            return Err(Error::InvalidArgument(
                "connection already closed for writing",
            ));
        }
        if (1..=MAX_PLAINTEXT).contains(&plaintext.len()) {
            // One record, the common case: no second buffer to copy it into.
            return self.seal.seal(ContentType::ApplicationData, plaintext, 0);
        }
        let mut out =
            Vec::with_capacity(plaintext.len() + plaintext.len() / MAX_PLAINTEXT * 40 + 40);
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            out.extend(self.seal.seal(ContentType::ApplicationData, chunk, 0)?);
        }
        Ok(out)
    }

    /// `plaintext` (one record's worth at most) and close_notify, sealed
    /// at the next sequence numbers without spending them
    /// ([`TrafficKey::seal_ahead`]): what to send instead of anything else
    /// if the application fails.
    pub fn seal_ahead_and_close(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if self.write_closed || plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::InvalidArgument("nothing can be sealed ahead"));
        }
        self.seal.seal_ahead(&[
            (ContentType::ApplicationData, plaintext),
            (ContentType::Alert, &[1, CLOSE_NOTIFY]),
        ])
    }

    /// Sends close_notify; no more data can be sent after it.
    pub fn close(&mut self) -> Result<Vec<u8>> {
        if self.write_closed {
            return Ok(Vec::new());
        }
        self.write_closed = true;
        self.seal.seal(ContentType::Alert, &[1, CLOSE_NOTIFY], 0)
    }

    /// Sends a KeyUpdate (TLS 1.3) and moves the send key to its next
    /// generation.
    pub fn key_update(&mut self, request_update: bool) -> Result<Vec<u8>> {
        if self.write_closed {
            return Err(Error::InvalidArgument(
                "connection already closed for writing",
            ));
        }
        self.seal.send_key_update(request_update)
    }

    /// Whether nothing is half received: no partial record, no partial
    /// handshake message.
    pub fn is_between_records(&self) -> bool {
        self.inbuf.is_empty() && self.handshake.is_empty()
    }

    /// Whether the connection can move now: not while a handshake message
    /// is half received (it has no place in a blob) or while closing.
    pub fn check_exportable(&self) -> Result<()> {
        if !self.handshake.is_empty() {
            return Err(Error::InvalidArgument(
                "a handshake message is half received",
            ));
        }
        if self.read != ReadState::Open || self.write_closed {
            return Err(Error::InvalidArgument("connection is closing"));
        }
        Ok(())
    }

    /// Hands back both keys (for export to another instance). Ciphertext
    /// still unprocessed travels in the open key's buffer.
    pub fn into_keys(mut self) -> Result<(TrafficKey, TrafficKey)> {
        self.check_exportable()?;
        let (plaintext, mut ciphertext) = self.open.take_buffered();
        ciphertext.extend_from_slice(&self.inbuf);
        self.open.buffered_plaintext = plaintext;
        self.open.buffered_ciphertext = ciphertext;
        Ok((self.seal, self.open))
    }

    fn process(&mut self, out: &mut Output) {
        while self.read == ReadState::Open {
            match self.next_record(out) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let alert = match e {
                        Error::Alert(a) => a,
                        _ => Alert::InternalError,
                    };
                    self.fail(out, alert);
                }
            }
        }
    }

    /// Sends a fatal alert and closes both directions.
    fn fail(&mut self, out: &mut Output, alert: Alert) {
        if !self.write_closed
            && let Ok(record) = self.seal.seal(ContentType::Alert, &[2, alert.code()], 0)
        {
            out.to_send.extend(record);
        }
        self.write_closed = true;
        self.inbuf.clear();
        self.read = ReadState::Closed(Closed::LocalAlert(alert));
        out.closed = Some(Closed::LocalAlert(alert));
    }

    /// Opens one whole record if the buffer holds one.
    fn next_record(&mut self, out: &mut Output) -> Result<bool> {
        let len = match framing::next_record(&self.inbuf) {
            Frame::Incomplete => return Ok(false),
            Frame::Oversize => return Err(Error::Alert(Alert::RecordOverflow)),
            Frame::Record(len) => len,
        };
        let rest = self.inbuf.split_off(len);
        let record = core::mem::replace(&mut self.inbuf, rest);
        let (content_type, payload) = self.open.open(record)?;
        match content_type {
            ContentType::ApplicationData => {
                if !self.handshake.is_empty() {
                    // Handshake fragments may not interleave with other types.
                    return Err(Error::Alert(Alert::UnexpectedMessage));
                }
                if payload.is_empty() {
                    self.empty_records += 1;
                    if self.empty_records > MAX_EMPTY_RECORDS {
                        return Err(Error::Alert(Alert::UnexpectedMessage));
                    }
                } else {
                    self.key_update_requests = 0;
                    self.empty_records = 0;
                }
                out.plaintext.extend_from_slice(&payload);
                let mut payload = payload;
                zeroize::Zeroize::zeroize(&mut payload);
            }
            ContentType::Alert => self.alert(&payload, out)?,
            ContentType::Handshake => self.handshake_data(&payload, out)?,
            ContentType::ChangeCipherSpec => return Err(Error::Alert(Alert::UnexpectedMessage)),
        }
        Ok(true)
    }

    fn alert(&mut self, payload: &[u8], out: &mut Output) -> Result<()> {
        if !self.handshake.is_empty() {
            // Handshake fragments may not interleave with other types.
            return Err(Error::Alert(Alert::UnexpectedMessage));
        }
        if payload.len() != 2 {
            return Err(Error::Alert(Alert::DecodeError));
        }
        let (level, description) = (payload[0], payload[1]);
        match description {
            CLOSE_NOTIFY => {
                self.read = ReadState::Closed(Closed::CloseNotify);
                out.closed = Some(Closed::CloseNotify);
            }
            // TLS 1.3 treats every other alert as fatal except
            // user_canceled; TLS 1.2 lets warnings pass.
            USER_CANCELED => self.warning()?,
            _ if level == 1 && self.open.version == ProtocolVersion::Tls12 => self.warning()?,
            d => {
                self.write_closed = true;
                self.read = ReadState::Closed(Closed::PeerAlert(d));
                out.closed = Some(Closed::PeerAlert(d));
            }
        }
        Ok(())
    }

    /// Counts a warning alert; past the allowance a peer is flooding us.
    fn warning(&mut self) -> Result<()> {
        self.warning_alerts += 1;
        if self.warning_alerts > MAX_WARNING_ALERTS {
            return Err(Error::Alert(Alert::UnexpectedMessage));
        }
        Ok(())
    }

    fn handshake_data(&mut self, payload: &[u8], out: &mut Output) -> Result<()> {
        self.handshake.extend_from_slice(payload);
        loop {
            if self.handshake.len() < 4 {
                return Ok(());
            }
            let len =
                u32::from_be_bytes([0, self.handshake[1], self.handshake[2], self.handshake[3]])
                    as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(Error::Alert(Alert::DecodeError));
            }
            if self.handshake.len() < 4 + len {
                return Ok(());
            }
            let rest = self.handshake.split_off(4 + len);
            let message = core::mem::replace(&mut self.handshake, rest);
            self.handshake_message(message, out)?;
        }
    }

    fn handshake_message(&mut self, message: Vec<u8>, out: &mut Output) -> Result<()> {
        let tls13 = self.open.version == ProtocolVersion::Tls13;
        match message[0] {
            KEY_UPDATE if tls13 => {
                if message.len() != 5 {
                    return Err(Error::Alert(Alert::DecodeError));
                }
                // KeyUpdate must end its record: what follows is under the
                // next key (RFC 8446 section 5.1).
                if !self.handshake.is_empty() {
                    return Err(Error::Alert(Alert::UnexpectedMessage));
                }
                let requested = match message[4] {
                    0 => false,
                    1 => true,
                    _ => return Err(Error::Alert(Alert::IllegalParameter)),
                };
                self.open.update()?;
                if requested {
                    self.key_update_requests += 1;
                    if self.key_update_requests > MAX_KEY_UPDATE_REQUESTS {
                        return Err(Error::Alert(Alert::UnexpectedMessage));
                    }
                    if !self.write_closed {
                        out.to_send.extend(self.seal.send_key_update(false)?);
                    }
                }
            }
            NEW_SESSION_TICKET if tls13 && self.facts.role == Role::Client => {
                out.events.push(Event::NewSessionTicket(message));
            }
            // keyferry's clients never offer post_handshake_auth, so a
            // CertificateRequest now is an error (RFC 8446 section 4.6.2).
            // It is still reported, so the host's log says why.
            CERTIFICATE_REQUEST if tls13 && self.facts.role == Role::Client => {
                out.events.push(Event::CertificateRequest(message));
                return Err(Error::Alert(Alert::UnexpectedMessage));
            }
            // Renegotiation is not supported, whoever starts it: decline
            // with a warning, as RFC 5746 allows and rustls does, and carry
            // on with the current keys.
            HELLO_REQUEST | CLIENT_HELLO
                if !tls13 && (message[0] == HELLO_REQUEST) == (self.facts.role == Role::Client) =>
            {
                self.renegotiation_attempts += 1;
                if self.renegotiation_attempts > MAX_RENEGOTIATION_ATTEMPTS {
                    return Err(Error::Alert(Alert::UnexpectedMessage));
                }
                if !self.write_closed {
                    out.to_send.extend(self.seal.seal(
                        ContentType::Alert,
                        &[1, NO_RENEGOTIATION],
                        0,
                    )?);
                }
            }
            _ => return Err(Error::Alert(Alert::UnexpectedMessage)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TrafficKeyMaterial;
    use crate::suite::AeadAlgorithm;

    fn pair(aead: AeadAlgorithm, role_a: Role) -> (Connection, Connection) {
        pair_of(ProtocolVersion::Tls13, aead, role_a)
    }

    fn pair_of(
        version: ProtocolVersion,
        aead: AeadAlgorithm,
        role_a: Role,
    ) -> (Connection, Connection) {
        let key = |direction, secret: u8| {
            let m = match version {
                ProtocolVersion::Tls13 => {
                    let len = aead.tls13_hash().output_len();
                    TrafficKeyMaterial::from_tls13_secret(aead, direction, &vec![secret; len], 0, 1)
                        .unwrap()
                }
                ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
                    version,
                    aead,
                    direction,
                    &vec![secret; aead.key_len()],
                    &[secret; 12],
                    &[],
                    0,
                    1,
                ),
            };
            TrafficKey::from_material(m, None).unwrap()
        };
        let facts = |role| Facts {
            role,
            version,
            suite: "test".into(),
            server_name: None,
            alpn: None,
            peer_certificate: None,
            connection_id: 1,
        };
        let other = if role_a == Role::Client {
            Role::Server
        } else {
            Role::Client
        };
        let a = Connection::new(
            key(Direction::Seal, 1),
            key(Direction::Open, 2),
            facts(role_a),
        )
        .unwrap();
        let b = Connection::new(
            key(Direction::Seal, 2),
            key(Direction::Open, 1),
            facts(other),
        )
        .unwrap();
        (a, b)
    }

    #[test]
    fn any_split_gives_the_same_bytes() {
        let (mut a, mut b) = pair(AeadAlgorithm::ChaCha20Poly1305, Role::Client);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let wire = a.send(&data).unwrap();
        let mut got = Vec::new();
        // One byte at a time, then growing chunks.
        let (head, tail) = wire.split_at(3000);
        for byte in head {
            got.extend_from_slice(&b.receive(core::slice::from_ref(byte)).plaintext);
        }
        let mut rest = tail;
        let mut n = 1;
        while !rest.is_empty() {
            let take = n.min(rest.len());
            got.extend_from_slice(&b.receive(&rest[..take]).plaintext);
            rest = &rest[take..];
            n = n * 3 + 1;
        }
        assert_eq!(got, data);
    }

    #[test]
    fn tls12_renegotiation_is_declined_with_a_warning_either_way() {
        for (asker, message) in [(Role::Client, CLIENT_HELLO), (Role::Server, HELLO_REQUEST)] {
            let (mut a, mut b) = pair_of(ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm, asker);
            // A (truncated) ClientHello or a HelloRequest from the asker.
            let body: &[u8] = if message == CLIENT_HELLO {
                &[3, 3, 0, 0]
            } else {
                &[]
            };
            let mut hello = vec![message, 0, 0, body.len() as u8];
            hello.extend_from_slice(body);
            let wire = a.seal.seal(ContentType::Handshake, &hello, 0).unwrap();
            let out = b.receive(&wire);
            assert_eq!(out.closed, None, "{asker:?}: the connection stays up");
            assert!(
                !out.to_send.is_empty(),
                "{asker:?}: no_renegotiation is sent"
            );
            let (_, alert) = a.open.open(out.to_send.clone()).unwrap();
            assert_eq!(
                alert,
                [1, NO_RENEGOTIATION],
                "a warning-level no_renegotiation"
            );
            let answer = a.receive(&[]);
            assert_eq!(answer.closed, None, "a warning, not a fatal alert");
            let data = b.send(b"still here").unwrap();
            assert_eq!(&a.receive(&data).plaintext[..], b"still here");
        }
    }

    #[test]
    fn floods_of_empty_records_warnings_and_renegotiations_are_cut_off() {
        let (mut a, mut b) = pair(AeadAlgorithm::ChaCha20Poly1305, Role::Client);
        for _ in 0..MAX_EMPTY_RECORDS {
            let wire = a.seal.seal(ContentType::ApplicationData, &[], 0).unwrap();
            assert_eq!(b.receive(&wire).closed, None);
        }
        let wire = a.seal.seal(ContentType::ApplicationData, b"x", 0).unwrap();
        assert_eq!(
            &b.receive(&wire).plaintext[..],
            b"x",
            "data resets the count"
        );
        for i in 0..=MAX_EMPTY_RECORDS {
            let wire = a.seal.seal(ContentType::ApplicationData, &[], 0).unwrap();
            let out = b.receive(&wire);
            let expected =
                (i == MAX_EMPTY_RECORDS).then_some(Closed::LocalAlert(Alert::UnexpectedMessage));
            assert_eq!(out.closed, expected, "empty record {i}");
        }

        let tls12 = || {
            pair_of(
                ProtocolVersion::Tls12,
                AeadAlgorithm::Aes128Gcm,
                Role::Client,
            )
        };
        let (mut a, mut b) = tls12();
        for i in 0..=MAX_WARNING_ALERTS {
            let wire = a
                .seal
                .seal(ContentType::Alert, &[1, USER_CANCELED], 0)
                .unwrap();
            let out = b.receive(&wire);
            assert_eq!(out.closed.is_some(), i == MAX_WARNING_ALERTS, "warning {i}");
        }

        let (mut a, mut b) = tls12();
        for i in 0..=MAX_RENEGOTIATION_ATTEMPTS {
            let hello = [CLIENT_HELLO, 0, 0, 2, 3, 3];
            let wire = a.seal.seal(ContentType::Handshake, &hello, 0).unwrap();
            let out = b.receive(&wire);
            assert_eq!(
                out.closed.is_some(),
                i == MAX_RENEGOTIATION_ATTEMPTS,
                "renegotiation {i}"
            );
        }
    }

    #[test]
    fn key_update_request_is_answered() {
        let (mut a, mut b) = pair(AeadAlgorithm::Aes128Gcm, Role::Client);
        let update = a.seal.send_key_update(true).unwrap();
        let out = b.receive(&update);
        assert!(!out.to_send.is_empty(), "b answers the request");
        let out_a = a.receive(&out.to_send);
        assert!(out_a.to_send.is_empty(), "an answer is not answered");
        assert_eq!(a.open.state().generation, 1);
        assert_eq!(b.seal.state().generation, 1);
        let wire = b.send(b"after").unwrap();
        assert_eq!(&a.receive(&wire).plaintext[..], b"after");
    }

    #[test]
    fn close_notify_and_truncation() {
        let (mut a, mut b) = pair(AeadAlgorithm::ChaCha20Poly1305, Role::Server);
        let wire = [a.send(b"bye").unwrap(), a.close().unwrap()].concat();
        let out = b.receive(&wire);
        assert_eq!(&out.plaintext[..], b"bye");
        assert_eq!(out.closed, Some(Closed::CloseNotify));
        assert!(a.send(b"more").is_err());
        let (_, mut c) = pair(AeadAlgorithm::ChaCha20Poly1305, Role::Server);
        assert_eq!(c.end_of_stream().closed, Some(Closed::Truncated));
    }

    #[test]
    fn tickets_become_events_even_when_fragmented() {
        let (mut server, mut client) = pair(AeadAlgorithm::Aes256Gcm, Role::Server);
        let mut ticket = vec![NEW_SESSION_TICKET, 0, 0, 40];
        ticket.extend([7u8; 40]);
        let first = server
            .seal
            .seal(ContentType::Handshake, &ticket[..10], 0)
            .unwrap();
        let second = server
            .seal
            .seal(ContentType::Handshake, &ticket[10..], 0)
            .unwrap();
        assert!(client.receive(&first).events.is_empty());
        assert_eq!(
            client.receive(&second).events,
            vec![Event::NewSessionTicket(ticket)]
        );
    }

    #[test]
    fn a_tampered_record_sends_bad_record_mac_and_closes() {
        let (mut a, mut b) = pair(AeadAlgorithm::Aes128Gcm, Role::Client);
        let mut wire = a.send(b"x").unwrap();
        let n = wire.len();
        wire[n - 1] ^= 1;
        let out = b.receive(&wire);
        assert_eq!(out.closed, Some(Closed::LocalAlert(Alert::BadRecordMac)));
        let alert = a.receive(&out.to_send);
        assert_eq!(alert.closed, Some(Closed::PeerAlert(20)));
        assert!(b.send(b"no").is_err());
    }

    #[test]
    fn a_certificate_request_is_reported_and_refused() {
        let (mut server, mut client) = pair(AeadAlgorithm::ChaCha20Poly1305, Role::Server);
        let request = [CERTIFICATE_REQUEST, 0, 0, 1, 0];
        let out = client.receive(
            &server
                .seal
                .seal(ContentType::Handshake, &request, 0)
                .unwrap(),
        );
        assert_eq!(
            out.events,
            vec![Event::CertificateRequest(request.to_vec())]
        );
        assert_eq!(
            out.closed,
            Some(Closed::LocalAlert(Alert::UnexpectedMessage))
        );
    }

    #[test]
    fn oversize_record_header_is_refused_at_once() {
        let (_, mut b) = pair(AeadAlgorithm::Aes128Gcm, Role::Client);
        let out = b.receive(&[23, 3, 3, 0x48, 0x01]);
        assert_eq!(out.closed, Some(Closed::LocalAlert(Alert::RecordOverflow)));
    }
}
