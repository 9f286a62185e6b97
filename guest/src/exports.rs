//! The WIT glue: exports an [`Application`] as a component, over the plain
//! modules of this crate. Nothing here does crypto or parsing of its own.
//!
//! [`export_application!`](crate::export_application) instantiates
//! [`Exports`] for one application type. With the `reference-component`
//! feature the world also exports traffic and MAC keys, the stateless
//! primitives, `self-check` and `describe`.

use alloc::{string::ToString, vec::Vec};
use core::cell::RefCell;
use core::marker::PhantomData;

use crate::application::{Application, Session, Step};
use crate::bindings::exports::keyferry::dataplane::connection::{
    self as wconn, GuestTlsConnection, TlsConnection as TlsConnectionHandle,
};
use crate::bindings::keyferry::dataplane::types as wit;
use crate::error::Error;
use crate::instance::Instance;

/// The exports of a component whose connections run `A`.
pub struct Exports<A>(PhantomData<A>);

/// Tells the host of a request the application is done with
/// (`keyferry:dataplane/access-log`). The reference component's worlds do
/// not import it (it runs under the stock wasmtime CLI, and its
/// application hands its plaintext out): there it goes nowhere.
pub(crate) fn report(request: crate::application::RequestSummary) {
    #[cfg(not(feature = "reference-component"))]
    crate::bindings::keyferry::dataplane::access_log::answered(
        &crate::bindings::keyferry::dataplane::access_log::RequestSummary {
            method: request.method,
            target: request.target,
            status: request.status,
            received: request.received,
            sent: request.sent,
        },
    );
    #[cfg(feature = "reference-component")]
    drop(request);
}

/// Runs `f` on this component instance's keys.
pub(crate) fn with_instance<R>(f: impl FnOnce(&mut Instance) -> R) -> R {
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
    use alloc::vec::Vec;

    use crate::bindings::keyferry::dataplane::key_service as ks;
    use crate::error::KeyServiceError;
    use crate::key_service::{KeyPosition, KeyService};
    use crate::suite::ContentType;

    /// The `key-service` import, seen as the record layer's trait.
    pub(super) struct Imported;
    pub(super) static IMPORTED: Imported = Imported;

    impl KeyService for Imported {
        fn seal_record(
            &self,
            at: KeyPosition,
            aad: &[u8],
            plaintext: &[u8],
        ) -> Result<Vec<u8>, KeyServiceError> {
            ks::seal_record(at.into(), aad, plaintext).map_err(Into::into)
        }

        fn seal_payload(
            &self,
            at: KeyPosition,
            content_type: ContentType,
            payload: &[u8],
            padding: usize,
        ) -> Result<Vec<u8>, KeyServiceError> {
            let padding = u16::try_from(padding).map_err(|_| KeyServiceError::InvalidArgument)?;
            ks::seal_payload(at.into(), content_type.into(), payload, padding).map_err(Into::into)
        }

        fn seal_held(
            &self,
            at: KeyPosition,
            content_type: ContentType,
            payload: &[u8],
            padding: usize,
        ) -> Result<usize, KeyServiceError> {
            let padding = u16::try_from(padding).map_err(|_| KeyServiceError::InvalidArgument)?;
            let len = ks::seal_held(at.into(), content_type.into(), payload, padding)?;
            usize::try_from(len).map_err(|_| KeyServiceError::InvalidArgument)
        }

        fn open_held(&self, at: KeyPosition, aad: &[u8]) -> Result<Vec<u8>, KeyServiceError> {
            ks::open_held(at.into(), aad).map_err(Into::into)
        }

        fn open_record(
            &self,
            at: KeyPosition,
            aad: &[u8],
            body: &[u8],
        ) -> Result<Vec<u8>, KeyServiceError> {
            ks::open_record(at.into(), aad, body).map_err(Into::into)
        }

        fn update(&self, key_ref: u64, generation: u32) -> Result<(), KeyServiceError> {
            ks::update(key_ref, generation).map_err(Into::into)
        }
    }

    impl From<KeyPosition> for ks::KeyPosition {
        fn from(at: KeyPosition) -> Self {
            Self {
                key_ref: at.key_ref,
                generation: at.generation,
                sequence: at.sequence,
            }
        }
    }
}

/// A `tls-connection` handle. `None` once exported.
pub struct ConnectionResource<A>(crate::application::SharedSession<A>);

impl<A> Drop for ConnectionResource<A> {
    fn drop(&mut self) {
        if let Some(session) = self.0.borrow_mut().take() {
            with_instance(|i| i.release_connection(session.connection()));
        }
    }
}

impl<A: Application> ConnectionResource<A> {
    fn step(&self, f: impl FnOnce(&mut Session<A>) -> Step) -> wconn::Output {
        match self.0.borrow_mut().as_mut() {
            Some(session) => {
                let mut step = f(session);
                for request in core::mem::take(&mut step.answered) {
                    report(request);
                }
                step.into()
            }
            None => wconn::Output {
                to_send: Vec::new(),
                plaintext: Vec::new(),
                events: Vec::new(),
                closed: None,
                done: true,
                idle: false,
            },
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut Session<A>) -> Result<R, Error>,
    ) -> Result<R, wit::Error> {
        let mut slot = self.0.borrow_mut();
        let session = slot
            .as_mut()
            .ok_or(wit::Error::Unusable(wit::UnusableReason::Failed))?;
        f(session).map_err(Into::into)
    }
}

impl<A: Application> GuestTlsConnection for ConnectionResource<A> {
    fn attach(
        seal_blob: Vec<u8>,
        open_blob: Vec<u8>,
        facts: wit::Facts,
    ) -> Result<TlsConnectionHandle, wit::Error> {
        let conn = with_instance(|i| i.attach_connection(&seal_blob, &open_blob, facts.into()))?;
        let session = alloc::rc::Rc::new(RefCell::new(Some(Session::<A>::new(conn))));
        A::attached(&session);
        Ok(TlsConnectionHandle::new(Self(session)))
    }

    fn start(&self) -> wconn::Output {
        self.step(Session::start)
    }

    fn receive(&self, ciphertext: Vec<u8>) -> wconn::Output {
        self.step(|s| s.receive(&ciphertext))
    }

    fn end_of_stream(&self) -> wconn::Output {
        self.step(Session::end_of_stream)
    }

    fn send(&self, plaintext: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
        self.with(|s| s.send(&plaintext))
    }

    fn close(&self) -> wconn::Output {
        self.step(Session::close)
    }

    fn key_update(&self, request_update: bool) -> Result<Vec<u8>, wit::Error> {
        self.with(|s| s.key_update(request_update))
    }

    fn key_states(&self) -> (wit::TrafficKeyState, wit::TrafficKeyState) {
        let slot = self.0.borrow();
        let Some(session) = slot.as_ref() else {
            unreachable!("an exported handle is consumed by the canonical ABI")
        };
        let (seal, open) = session.connection().keys();
        (seal.state().into(), open.state().into())
    }

    fn export(
        this: TlsConnectionHandle,
        recipient: Vec<u8>,
    ) -> Result<wconn::Migrated, wit::Error> {
        let resource: Self = this.into_inner();
        let session = resource
            .0
            .borrow_mut()
            .take()
            .ok_or(wit::Error::Unusable(wit::UnusableReason::Failed))?;
        // A refused export still ends the handle (WIT consumes it), so
        // release the keys on every path: none may stay marked live.
        if let Err(e) = session.check_exportable() {
            with_instance(|i| i.release_connection(session.connection()));
            return Err(e.into());
        }
        let (seal, open) = session.into_connection()?.into_keys()?;
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
            })
        })
        .map_err(Into::into)
    }
}

impl<A: Application> wconn::Guest for Exports<A> {
    type TlsConnection = ConnectionResource<A>;

    fn instance_exchange_key() -> wit::ExchangeKey {
        with_instance(|i| {
            let keys = i.exchange();
            wit::ExchangeKey {
                id: keys.key_id().to_vec(),
                public_key: keys.public_key().to_vec(),
            }
        })
    }

    fn instance_wrapping_secret(secret: Vec<u8>) -> Result<(Vec<u8>, u32), wit::Error> {
        let secret = zeroize::Zeroizing::new(secret);
        with_instance(|i| i.set_wrapping_secret(&secret))
            .map(|(id, epoch)| (id.to_vec(), epoch))
            .map_err(Into::into)
    }

    fn instance_epoch() -> u32 {
        with_instance(|i| i.epoch())
    }
}

/// Exports `$app` (a type implementing
/// [`Application`](crate::application::Application)) as this component's
/// connections. One line makes a whole data-plane component:
///
/// ```ignore
/// keyferry_guest::export_application!(keyferry_guest::application::Echo);
/// ```
#[macro_export]
macro_rules! export_application {
    ($app:ty) => {
        type KeyferryExports = $crate::exports::Exports<$app>;
        $crate::bindings::export!(KeyferryExports with_types_in $crate::bindings);
    };
}

// ---- the reference component's extra exports ------------------------------

#[cfg(feature = "reference-component")]
mod reference {
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;
    use core::cell::RefCell;

    use super::{Exports, with_instance};
    use crate::application::Application;
    use crate::bindings;
    use crate::bindings::exports::keyferry::dataplane::keys::{
        self, GuestMacKey, GuestTrafficKey, MacKey as MacKeyHandle, TrafficKey as TrafficKeyHandle,
    };
    use crate::bindings::exports::keyferry::dataplane::primitives;
    use crate::bindings::keyferry::dataplane::types as wit;
    use crate::error::Error;
    use crate::mac::MacKey;
    use crate::record::TrafficKey;
    use crate::suite::{AeadAlgorithm, MacAlgorithm, ProtocolVersion};
    use crate::{blob, cipher, keyschedule, mac, selfcheck};

    /// A traffic key handle. `None` once exported.
    pub struct TrafficKeyResource(RefCell<Option<TrafficKey>>);

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
            f(key).map_err(Into::into)
        }
    }

    impl GuestTrafficKey for TrafficKeyResource {
        fn import(blob: Vec<u8>) -> Result<TrafficKeyHandle, wit::Error> {
            let key = with_instance(|i| i.import_traffic_key(&blob))?;
            Ok(TrafficKeyHandle::new(Self(RefCell::new(Some(key)))))
        }

        fn seal(
            &self,
            content_type: wit::ContentType,
            payload: Vec<u8>,
            padding: u16,
        ) -> Result<Vec<u8>, wit::Error> {
            self.with(|k| k.seal_held(content_type.into(), &payload, padding as usize))
        }

        fn open(&self, wire: Vec<u8>) -> Result<wit::OpenedRecord, wit::Error> {
            self.with(|k| k.open(wire))
                .map(|(content_type, payload)| wit::OpenedRecord {
                    content_type: content_type.into(),
                    payload,
                })
        }

        fn open_held(&self, header: Vec<u8>) -> Result<wit::OpenedRecord, wit::Error> {
            self.with(|k| k.open_held(&header))
                .map(|(content_type, payload)| wit::OpenedRecord {
                    content_type: content_type.into(),
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
            key.state().into()
        }

        fn take_buffered(&self) -> wit::Buffered {
            let mut slot = self.0.borrow_mut();
            let (plaintext, ciphertext) = match slot.as_mut() {
                Some(key) => {
                    let (mut plaintext, ciphertext) = key.take_buffered();
                    (core::mem::take(&mut *plaintext), ciphertext)
                }
                None => Default::default(),
            };
            wit::Buffered {
                plaintext,
                ciphertext,
            }
        }

        fn export(this: TrafficKeyHandle, recipient: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
            let resource: Self = this.into_inner();
            let key = resource
                .0
                .borrow_mut()
                .take()
                .ok_or(wit::Error::Unusable(wit::UnusableReason::Failed))?;
            Ok(with_instance(|i| i.export_traffic_key(key, &recipient))?)
        }
    }

    /// A MAC key handle.
    pub struct MacKeyResource(MacKey);

    impl GuestMacKey for MacKeyResource {
        fn import(blob: Vec<u8>) -> Result<MacKeyHandle, wit::Error> {
            let key = with_instance(|i| i.import_mac_key(&blob))?;
            Ok(MacKeyHandle::new(Self(key)))
        }

        fn compute(&self, data: Vec<u8>) -> Vec<u8> {
            self.0.compute(&data)
        }

        fn verify(&self, data: Vec<u8>, tag: Vec<u8>) -> Result<bool, wit::Error> {
            Ok(self.0.verify(&data, &tag)?)
        }

        fn state(&self) -> wit::MacKeyState {
            wit::MacKeyState {
                algorithm: self.0.algorithm().into(),
                exportable: self.0.exportable(),
                connection_id: self.0.connection_id(),
            }
        }

        fn export(this: MacKeyHandle, recipient: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
            let Self(key) = this.into_inner();
            Ok(with_instance(|i| i.export_mac_key(key, &recipient))?)
        }
    }

    impl<A: Application> keys::Guest for Exports<A> {
        type TrafficKey = TrafficKeyResource;
        type MacKey = MacKeyResource;
    }

    impl<A: Application> primitives::Guest for Exports<A> {
        fn aead_seal(
            algorithm: wit::AeadAlgorithm,
            key: Vec<u8>,
            nonce: Vec<u8>,
            aad: Vec<u8>,
            plaintext: Vec<u8>,
        ) -> Result<Vec<u8>, wit::Error> {
            Ok(cipher::seal(
                algorithm.into(),
                &key,
                &nonce,
                &aad,
                &plaintext,
            )?)
        }

        fn aead_open(
            algorithm: wit::AeadAlgorithm,
            key: Vec<u8>,
            nonce: Vec<u8>,
            aad: Vec<u8>,
            ciphertext: Vec<u8>,
        ) -> Result<Vec<u8>, wit::Error> {
            Ok(cipher::open(
                algorithm.into(),
                &key,
                &nonce,
                &aad,
                &ciphertext,
            )?)
        }

        fn hmac(algorithm: wit::MacAlgorithm, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
            mac::compute(algorithm.into(), &key, &data)
        }

        fn hkdf_expand_label(
            algorithm: wit::MacAlgorithm,
            secret: Vec<u8>,
            label: String,
            context: Vec<u8>,
            length: u16,
        ) -> Result<Vec<u8>, wit::Error> {
            Ok(keyschedule::expand_label(
                algorithm.into(),
                &secret,
                label.as_bytes(),
                &context,
                length as usize,
            )
            .map(|out| out.to_vec())?)
        }
    }

    impl<A: Application> bindings::Guest for Exports<A> {
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
}

// ---- conversions between this crate's types and the WIT types -------------

keyferry_record::wit_conversions!(wit);

impl From<Error> for wit::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Blob(b) => Self::Blob(b.into()),
            Error::Alert(a) => Self::Alert(a.into()),
            Error::Unusable(u) => Self::Unusable(u.into()),
            Error::NotExportable => Self::NotExportable,
            Error::WrongKeyType => Self::WrongKeyType,
            Error::InvalidArgument(what) => Self::InvalidArgument(what.to_string()),
            Error::KeyService(e) => Self::KeyService(e.into()),
            // `Error` is keyferry-record's, non-exhaustive here: a case
            // the WIT does not know yet is reported by its text.
            other => Self::InvalidArgument(other.to_string()),
        }
    }
}

impl From<Step> for wconn::Output {
    fn from(mut s: Step) -> Self {
        Self {
            to_send: s.to_send,
            plaintext: core::mem::take(&mut *s.plaintext),
            events: s.events.into_iter().map(Into::into).collect(),
            closed: s.closed.map(Into::into),
            done: s.done,
            idle: s.idle,
        }
    }
}
