//! The WIT glue: exports the `keyferry:dataplane` interfaces over the plain
//! modules of this crate. Nothing here does crypto or parsing of its own.

use std::cell::RefCell;

use crate::app::{AppMode, Session, SessionOutput};
use crate::bindings;
use crate::bindings::exports::keyferry::dataplane::application::{
    self, GuestSession, Session as SessionHandle,
};
use crate::bindings::exports::keyferry::dataplane::connection::{
    self as wconn, GuestTlsConnection, TlsConnection as TlsConnectionHandle,
};
use crate::bindings::exports::keyferry::dataplane::keys::{
    self, GuestMacKey, GuestTrafficKey, MacKey as MacKeyHandle, TrafficKey as TrafficKeyHandle,
};
use crate::bindings::exports::keyferry::dataplane::primitives;
use crate::bindings::exports::keyferry::dataplane::types as wit;
use crate::connection::{Closed, Connection, Event, Facts, Output, Role};
use crate::error::{Alert, BlobError, Error, UnusableReason};
use crate::instance::Instance;
use crate::mac::MacKey;
use crate::record::TrafficKey;
use crate::suite::{AeadAlgorithm, ContentType, Direction, MacAlgorithm, ProtocolVersion};
use crate::{blob, cipher, keyschedule, mac, selfcheck};

struct Component;

fn with_instance<R>(f: impl FnOnce(&mut Instance) -> R) -> R {
    crate::instance::with_local(key_service(), f)
}

#[cfg(feature = "host-keys")]
fn key_service() -> Option<&'static dyn crate::key_service::KeyService> {
    Some(&host_keys::IMPORTED)
}

#[cfg(not(feature = "host-keys"))]
fn key_service() -> Option<&'static dyn crate::key_service::KeyService> {
    None
}

#[cfg(feature = "host-keys")]
mod host_keys {
    use crate::bindings::keyferry::dataplane::key_service as ks;
    use crate::error::KeyServiceError;
    use crate::key_service::KeyService;

    /// The `key-service` import, seen as the record layer's trait.
    pub(super) struct Imported;
    pub(super) static IMPORTED: Imported = Imported;

    fn convert(e: ks::KeyServiceError) -> KeyServiceError {
        match e {
            ks::KeyServiceError::UnknownKey => KeyServiceError::UnknownKey,
            ks::KeyServiceError::SequenceReused => KeyServiceError::SequenceReused,
            ks::KeyServiceError::AuthenticationFailed => KeyServiceError::AuthenticationFailed,
            ks::KeyServiceError::InvalidArgument => KeyServiceError::InvalidArgument,
            ks::KeyServiceError::Unsupported => KeyServiceError::Unsupported,
        }
    }

    impl KeyService for Imported {
        fn seal_record(
            &self,
            key_ref: u64,
            generation: u32,
            sequence: u64,
            aad: &[u8],
            plaintext: &[u8],
        ) -> Result<Vec<u8>, KeyServiceError> {
            ks::seal_record(key_ref, generation, sequence, aad, plaintext).map_err(convert)
        }

        fn open_record(
            &self,
            key_ref: u64,
            generation: u32,
            sequence: u64,
            aad: &[u8],
            body: &[u8],
        ) -> Result<Vec<u8>, KeyServiceError> {
            ks::open_record(key_ref, generation, sequence, aad, body).map_err(convert)
        }

        fn update(&self, key_ref: u64, generation: u32) -> Result<(), KeyServiceError> {
            ks::update(key_ref, generation).map_err(convert)
        }
    }
}

/// A traffic key handle. `None` once exported.
struct TrafficKeyResource(RefCell<Option<TrafficKey>>);

impl Drop for TrafficKeyResource {
    fn drop(&mut self) {
        if let Some(key) = self.0.get_mut().take() {
            with_instance(|i| i.release(&key));
        }
    }
}

impl TrafficKeyResource {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut TrafficKey) -> Result<R, Error>,
    ) -> Result<R, wit::Error> {
        let mut slot = self.0.borrow_mut();
        let key = slot
            .as_mut()
            .ok_or(wit::Error::Unusable(wit::UnusableReason::Failed))?;
        f(key).map_err(to_wit)
    }
}

impl GuestTrafficKey for TrafficKeyResource {
    fn import(blob: Vec<u8>) -> Result<TrafficKeyHandle, wit::Error> {
        let key = with_instance(|i| i.import_traffic_key(&blob)).map_err(to_wit)?;
        Ok(TrafficKeyHandle::new(TrafficKeyResource(RefCell::new(
            Some(key),
        ))))
    }

    fn seal(
        &self,
        content_type: wit::ContentType,
        payload: Vec<u8>,
        padding: u16,
    ) -> Result<Vec<u8>, wit::Error> {
        self.with(|k| {
            k.seal(
                content_type_from_wit(content_type),
                &payload,
                padding as usize,
            )
        })
    }

    fn open(&self, wire: Vec<u8>) -> Result<wit::OpenedRecord, wit::Error> {
        self.with(|k| k.open(wire))
            .map(|(content_type, payload)| wit::OpenedRecord {
                content_type: content_type_to_wit(content_type),
                payload,
            })
    }

    fn send_key_update(&self, request_update: bool) -> Result<Vec<u8>, wit::Error> {
        self.with(|k| k.send_key_update(request_update))
    }

    fn update(&self) -> Result<(), wit::Error> {
        self.with(|k| k.update())
    }

    fn state(&self) -> wit::TrafficKeyState {
        let slot = self.0.borrow();
        let Some(key) = slot.as_ref() else {
            unreachable!("an exported handle is consumed by the canonical ABI")
        };
        state_to_wit(key.state())
    }

    fn take_buffered(&self) -> wit::Buffered {
        let mut slot = self.0.borrow_mut();
        match slot.as_mut() {
            Some(key) => {
                let (mut plaintext, ciphertext) = key.take_buffered();
                wit::Buffered {
                    plaintext: std::mem::take(&mut *plaintext),
                    ciphertext,
                }
            }
            None => wit::Buffered {
                plaintext: Vec::new(),
                ciphertext: Vec::new(),
            },
        }
    }

    fn export(this: TrafficKeyHandle, recipient: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
        let resource: TrafficKeyResource = this.into_inner();
        let key = resource
            .0
            .borrow_mut()
            .take()
            .ok_or(wit::Error::Unusable(wit::UnusableReason::Failed))?;
        with_instance(|i| i.export_traffic_key(key, &recipient)).map_err(to_wit)
    }
}

/// A MAC key handle.
struct MacKeyResource(MacKey);

impl GuestMacKey for MacKeyResource {
    fn import(blob: Vec<u8>) -> Result<MacKeyHandle, wit::Error> {
        let key = with_instance(|i| i.import_mac_key(&blob)).map_err(to_wit)?;
        Ok(MacKeyHandle::new(MacKeyResource(key)))
    }

    fn compute(&self, data: Vec<u8>) -> Vec<u8> {
        self.0.compute(&data)
    }

    fn verify(&self, data: Vec<u8>, tag: Vec<u8>) -> Result<bool, wit::Error> {
        self.0.verify(&data, &tag).map_err(to_wit)
    }

    fn state(&self) -> wit::MacKeyState {
        wit::MacKeyState {
            algorithm: mac_to_wit(self.0.algorithm()),
            exportable: self.0.exportable(),
            connection_id: self.0.connection_id(),
        }
    }

    fn export(this: MacKeyHandle, recipient: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
        let MacKeyResource(key) = this.into_inner();
        with_instance(|i| i.export_mac_key(key, &recipient)).map_err(to_wit)
    }
}

impl keys::Guest for Component {
    type TrafficKey = TrafficKeyResource;
    type MacKey = MacKeyResource;

    fn instance_exchange_key() -> wit::ExchangeKey {
        with_instance(|i| wit::ExchangeKey {
            id: i.exchange().key_id().to_vec(),
            public_key: i.exchange().public_key().to_vec(),
        })
    }
}

impl primitives::Guest for Component {
    fn aead_seal(
        algorithm: wit::AeadAlgorithm,
        key: Vec<u8>,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, wit::Error> {
        cipher::seal(aead_from_wit(algorithm), &key, &nonce, &aad, &plaintext).map_err(to_wit)
    }

    fn aead_open(
        algorithm: wit::AeadAlgorithm,
        key: Vec<u8>,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, wit::Error> {
        cipher::open(aead_from_wit(algorithm), &key, &nonce, &aad, &ciphertext).map_err(to_wit)
    }

    fn hmac(algorithm: wit::MacAlgorithm, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        mac::compute(mac_from_wit(algorithm), &key, &data)
    }

    fn hkdf_expand_label(
        algorithm: wit::MacAlgorithm,
        secret: Vec<u8>,
        label: String,
        context: Vec<u8>,
        length: u16,
    ) -> Result<Vec<u8>, wit::Error> {
        keyschedule::expand_label(
            mac_from_wit(algorithm),
            &secret,
            label.as_bytes(),
            &context,
            length as usize,
        )
        .map(|out| out.to_vec())
        .map_err(to_wit)
    }
}

impl bindings::Guest for Component {
    fn self_check() -> Result<String, String> {
        selfcheck::run()
    }

    fn describe() -> String {
        let suites: Vec<String> = [ProtocolVersion::Tls13, ProtocolVersion::Tls12]
            .into_iter()
            .flat_map(|v| {
                AeadAlgorithm::ALL
                    .into_iter()
                    .map(move |a| format!("\"{}\"", a.suite_name(v)))
            })
            .collect();
        let macs: Vec<String> = MacAlgorithm::ALL
            .iter()
            .map(|m| format!("\"{}\"", m.name()))
            .collect();
        let versions: Vec<String> = blob::READABLE_VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect();
        format!(
            "{{\"component\":\"keyferry-guest\",\"version\":\"{}\",\"wit\":\"keyferry:dataplane@0.1.0\",\
             \"record_suites\":[{}],\"mac_algorithms\":[{}],\"blob_format_versions\":[{}],\
             \"blob_format_written\":{},\"blob_seal\":\"HPKE base X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305\",\
             \"host_keys\":{}}}",
            env!("CARGO_PKG_VERSION"),
            suites.join(","),
            macs.join(","),
            versions.join(","),
            blob::FORMAT_VERSION,
            cfg!(feature = "host-keys"),
        )
    }
}

/// A connection handle. `None` once exported.
struct TlsConnectionResource(RefCell<Option<Connection>>);

fn release_connection(conn: &Connection) {
    with_instance(|i| i.release_connection(conn));
}

impl Drop for TlsConnectionResource {
    fn drop(&mut self) {
        if let Some(conn) = self.0.get_mut().take() {
            release_connection(&conn);
        }
    }
}

fn attach(seal_blob: &[u8], open_blob: &[u8], facts: wit::Facts) -> Result<Connection, wit::Error> {
    with_instance(|i| i.attach_connection(seal_blob, open_blob, facts_from_wit(facts)))
        .map_err(to_wit)
}

impl TlsConnectionResource {
    fn with<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> Option<R> {
        self.0.borrow_mut().as_mut().map(f)
    }
}

impl GuestTlsConnection for TlsConnectionResource {
    fn attach(
        seal_blob: Vec<u8>,
        open_blob: Vec<u8>,
        facts: wit::Facts,
    ) -> Result<TlsConnectionHandle, wit::Error> {
        let conn = attach(&seal_blob, &open_blob, facts)?;
        Ok(TlsConnectionHandle::new(TlsConnectionResource(
            RefCell::new(Some(conn)),
        )))
    }

    fn start(&self) -> wconn::Output {
        self.with(|c| output_to_wit(c.start()))
            .unwrap_or_else(empty_output)
    }

    fn receive(&self, ciphertext: Vec<u8>) -> wconn::Output {
        self.with(|c| output_to_wit(c.receive(&ciphertext)))
            .unwrap_or_else(empty_output)
    }

    fn end_of_stream(&self) -> wconn::Output {
        self.with(|c| output_to_wit(c.end_of_stream()))
            .unwrap_or_else(empty_output)
    }

    fn send(&self, plaintext: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
        self.with(|c| c.send(&plaintext).map_err(to_wit))
            .unwrap_or(Err(wit::Error::Unusable(wit::UnusableReason::Failed)))
    }

    fn close(&self) -> Result<Vec<u8>, wit::Error> {
        self.with(|c| c.close().map_err(to_wit))
            .unwrap_or(Err(wit::Error::Unusable(wit::UnusableReason::Failed)))
    }

    fn key_update(&self, request_update: bool) -> Result<Vec<u8>, wit::Error> {
        self.with(|c| c.key_update(request_update).map_err(to_wit))
            .unwrap_or(Err(wit::Error::Unusable(wit::UnusableReason::Failed)))
    }

    fn key_states(&self) -> (wit::TrafficKeyState, wit::TrafficKeyState) {
        let mut slot = self.0.borrow_mut();
        let Some(conn) = slot.as_mut() else {
            unreachable!("an exported handle is consumed by the canonical ABI")
        };
        let (seal, open) = conn.keys();
        (state_to_wit(seal.state()), state_to_wit(open.state()))
    }

    fn facts(&self) -> wit::Facts {
        self.with(|c| facts_to_wit(c.facts()))
            .unwrap_or_else(|| facts_to_wit(&placeholder_facts()))
    }

    fn export(
        this: TlsConnectionHandle,
        recipient: Vec<u8>,
    ) -> Result<wconn::Migrated, wit::Error> {
        let resource: TlsConnectionResource = this.into_inner();
        let conn = resource
            .0
            .borrow_mut()
            .take()
            .ok_or(wit::Error::Unusable(wit::UnusableReason::Failed))?;
        // A refused export still ends the handle (WIT consumes it), so
        // release the keys on every path: none may stay marked live.
        if let Err(e) = conn.check_exportable() {
            release_connection(&conn);
            return Err(to_wit(e));
        }
        let (seal, open, facts) = conn.into_keys().map_err(to_wit)?;
        with_instance(|i| {
            let seal_blob = match i.export_traffic_key(seal, &recipient) {
                Ok(blob) => blob,
                Err(e) => {
                    i.release(&open);
                    return Err(e);
                }
            };
            let open_blob = i.export_traffic_key(open, &recipient)?;
            Ok(wconn::Migrated {
                seal_blob,
                open_blob,
                facts: facts_to_wit(&facts),
            })
        })
        .map_err(to_wit)
    }
}

/// An application session handle.
struct SessionResource(RefCell<Session>);

impl Drop for SessionResource {
    fn drop(&mut self) {
        release_connection(self.0.get_mut().connection());
    }
}

impl GuestSession for SessionResource {
    fn attach(
        seal_blob: Vec<u8>,
        open_blob: Vec<u8>,
        facts: wit::Facts,
        mode: application::AppMode,
    ) -> Result<SessionHandle, wit::Error> {
        let conn = attach(&seal_blob, &open_blob, facts)?;
        let mode = match mode {
            application::AppMode::Echo => AppMode::Echo,
            application::AppMode::Http => AppMode::Http,
        };
        Ok(SessionHandle::new(SessionResource(RefCell::new(
            Session::new(conn, mode),
        ))))
    }

    fn start(&self) -> application::SessionOutput {
        session_output_to_wit(self.0.borrow_mut().start())
    }

    fn on_ciphertext(&self, data: Vec<u8>) -> application::SessionOutput {
        session_output_to_wit(self.0.borrow_mut().on_ciphertext(&data))
    }

    fn on_end_of_stream(&self) -> application::SessionOutput {
        session_output_to_wit(self.0.borrow_mut().on_end_of_stream())
    }

    fn shutdown(&self) -> application::SessionOutput {
        session_output_to_wit(self.0.borrow_mut().shutdown())
    }
}

impl wconn::Guest for Component {
    type TlsConnection = TlsConnectionResource;
}

impl application::Guest for Component {
    type Session = SessionResource;

    fn application_exchange_key() -> wit::ExchangeKey {
        <Component as keys::Guest>::instance_exchange_key()
    }
}

bindings::export!(Component with_types_in bindings);

fn state_to_wit(s: crate::record::TrafficKeyState) -> wit::TrafficKeyState {
    wit::TrafficKeyState {
        version: match s.version {
            ProtocolVersion::Tls12 => wit::ProtocolVersion::Tls12,
            ProtocolVersion::Tls13 => wit::ProtocolVersion::Tls13,
        },
        aead: aead_to_wit(s.aead),
        direction: match s.direction {
            Direction::Seal => wit::Direction::Seal,
            Direction::Open => wit::Direction::Open,
        },
        sequence: s.sequence,
        generation: s.generation,
        exportable: s.exportable,
        residency: if s.host_resident {
            wit::Residency::Host
        } else {
            wit::Residency::Software
        },
        connection_id: s.connection_id,
        auto_update_limit: s.auto_update_limit,
    }
}

fn placeholder_facts() -> Facts {
    Facts {
        role: Role::Server,
        version: ProtocolVersion::Tls13,
        suite: String::new(),
        server_name: None,
        alpn: None,
        peer_subject: None,
        connection_id: 0,
    }
}

fn empty_output() -> wconn::Output {
    wconn::Output {
        to_send: Vec::new(),
        plaintext: Vec::new(),
        events: Vec::new(),
        closed: Some(wit::Closed::LocalAlert(wit::Alert::UnexpectedMessage)),
    }
}

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

fn facts_to_wit(f: &Facts) -> wit::Facts {
    wit::Facts {
        role: match f.role {
            Role::Client => wit::Role::Client,
            Role::Server => wit::Role::Server,
        },
        version: match f.version {
            ProtocolVersion::Tls12 => wit::ProtocolVersion::Tls12,
            ProtocolVersion::Tls13 => wit::ProtocolVersion::Tls13,
        },
        suite: f.suite.clone(),
        server_name: f.server_name.clone(),
        alpn: f.alpn.clone(),
        peer_subject: f.peer_subject.clone(),
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
        Closed::LocalAlert(a) => wit::Closed::LocalAlert(alert_to_wit(a)),
        Closed::Truncated => wit::Closed::Truncated,
    }
}

fn output_to_wit(mut o: Output) -> wconn::Output {
    wconn::Output {
        to_send: o.to_send,
        plaintext: std::mem::take(&mut *o.plaintext),
        events: o.events.into_iter().map(event_to_wit).collect(),
        closed: o.closed.map(closed_to_wit),
    }
}

fn session_output_to_wit(o: SessionOutput) -> application::SessionOutput {
    application::SessionOutput {
        to_send: o.to_send,
        events: o.events.into_iter().map(event_to_wit).collect(),
        closed: o.closed.map(closed_to_wit),
        done: o.done,
    }
}

fn alert_to_wit(a: Alert) -> wit::Alert {
    match a {
        Alert::UnexpectedMessage => wit::Alert::UnexpectedMessage,
        Alert::BadRecordMac => wit::Alert::BadRecordMac,
        Alert::RecordOverflow => wit::Alert::RecordOverflow,
        Alert::IllegalParameter => wit::Alert::IllegalParameter,
        Alert::DecodeError => wit::Alert::DecodeError,
        Alert::InternalError => wit::Alert::InternalError,
    }
}

fn to_wit(e: Error) -> wit::Error {
    match e {
        Error::Blob(b) => wit::Error::Blob(match b {
            BlobError::Malformed => wit::BlobError::Malformed,
            BlobError::UnsupportedVersion(_) => wit::BlobError::UnsupportedVersion,
            BlobError::WrongKind => wit::BlobError::WrongKind,
            BlobError::WrongRecipient => wit::BlobError::WrongRecipient,
            BlobError::AuthenticationFailed => wit::BlobError::AuthenticationFailed,
            BlobError::Replayed => wit::BlobError::Replayed,
            BlobError::SequenceRollback => wit::BlobError::SequenceRollback,
            BlobError::HostKeysUnavailable => wit::BlobError::HostKeysUnavailable,
            BlobError::InvalidState => wit::BlobError::InvalidState,
        }),
        Error::Alert(a) => wit::Error::Alert(alert_to_wit(a)),
        Error::Unusable(u) => wit::Error::Unusable(match u {
            UnusableReason::Failed => wit::UnusableReason::Failed,
            UnusableReason::Exhausted => wit::UnusableReason::Exhausted,
        }),
        Error::NotExportable => wit::Error::NotExportable,
        Error::WrongKeyType => wit::Error::WrongKeyType,
        Error::InvalidArgument(what) => wit::Error::InvalidArgument(what.to_string()),
        Error::KeyService(e) => wit::Error::KeyService(e.to_string()),
    }
}

fn content_type_from_wit(t: wit::ContentType) -> ContentType {
    match t {
        wit::ContentType::ChangeCipherSpec => ContentType::ChangeCipherSpec,
        wit::ContentType::Alert => ContentType::Alert,
        wit::ContentType::Handshake => ContentType::Handshake,
        wit::ContentType::ApplicationData => ContentType::ApplicationData,
    }
}

fn content_type_to_wit(t: ContentType) -> wit::ContentType {
    match t {
        ContentType::ChangeCipherSpec => wit::ContentType::ChangeCipherSpec,
        ContentType::Alert => wit::ContentType::Alert,
        ContentType::Handshake => wit::ContentType::Handshake,
        ContentType::ApplicationData => wit::ContentType::ApplicationData,
    }
}

fn aead_from_wit(a: wit::AeadAlgorithm) -> AeadAlgorithm {
    match a {
        wit::AeadAlgorithm::Aes128Gcm => AeadAlgorithm::Aes128Gcm,
        wit::AeadAlgorithm::Aes256Gcm => AeadAlgorithm::Aes256Gcm,
        wit::AeadAlgorithm::Chacha20Poly1305 => AeadAlgorithm::ChaCha20Poly1305,
    }
}

fn aead_to_wit(a: AeadAlgorithm) -> wit::AeadAlgorithm {
    match a {
        AeadAlgorithm::Aes128Gcm => wit::AeadAlgorithm::Aes128Gcm,
        AeadAlgorithm::Aes256Gcm => wit::AeadAlgorithm::Aes256Gcm,
        AeadAlgorithm::ChaCha20Poly1305 => wit::AeadAlgorithm::Chacha20Poly1305,
    }
}

fn mac_from_wit(m: wit::MacAlgorithm) -> MacAlgorithm {
    match m {
        wit::MacAlgorithm::HmacSha256 => MacAlgorithm::HmacSha256,
        wit::MacAlgorithm::HmacSha384 => MacAlgorithm::HmacSha384,
    }
}

fn mac_to_wit(m: MacAlgorithm) -> wit::MacAlgorithm {
    match m {
        MacAlgorithm::HmacSha256 => wit::MacAlgorithm::HmacSha256,
        MacAlgorithm::HmacSha384 => wit::MacAlgorithm::HmacSha384,
    }
}
