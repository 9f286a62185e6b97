//! Conversions between the WIT types of the two generated bindings and the
//! record layer's own types. The `application-plugin` world and the full
//! `dataplane-host-keys` world share the `types` interface, but bindgen
//! makes separate Rust types for each, so one macro writes both sets.

macro_rules! conversions {
    ($name:ident, $wit:path) => {
        #[allow(dead_code, reason = "not every world uses every conversion")]
        pub(crate) mod $name {
            use keyferry_guest::connection::{Closed, Event, Facts, Role};
            use keyferry_guest::{Alert, BlobError, Error as G, ProtocolVersion, UnusableReason};

            use crate::error::Error;
            use $wit as wit;

            pub(crate) fn alert_from_wit(a: wit::Alert) -> Alert {
                match a {
                    wit::Alert::UnexpectedMessage => Alert::UnexpectedMessage,
                    wit::Alert::BadRecordMac => Alert::BadRecordMac,
                    wit::Alert::RecordOverflow => Alert::RecordOverflow,
                    wit::Alert::IllegalParameter => Alert::IllegalParameter,
                    wit::Alert::DecodeError => Alert::DecodeError,
                    wit::Alert::InternalError => Alert::InternalError,
                }
            }

            pub(crate) fn error_from_wit(e: wit::Error) -> Error {
                Error::Record(match e {
                    wit::Error::Blob(b) => G::Blob(match b {
                        wit::BlobError::Malformed => BlobError::Malformed,
                        wit::BlobError::UnsupportedVersion => BlobError::UnsupportedVersion(0),
                        wit::BlobError::WrongKind => BlobError::WrongKind,
                        wit::BlobError::WrongRecipient => BlobError::WrongRecipient,
                        wit::BlobError::AuthenticationFailed => BlobError::AuthenticationFailed,
                        wit::BlobError::Replayed => BlobError::Replayed,
                        wit::BlobError::SequenceRollback => BlobError::SequenceRollback,
                        wit::BlobError::HostKeysUnavailable => BlobError::HostKeysUnavailable,
                        wit::BlobError::InvalidState => BlobError::InvalidState,
                    }),
                    wit::Error::Alert(a) => G::Alert(alert_from_wit(a)),
                    wit::Error::Unusable(u) => G::Unusable(match u {
                        wit::UnusableReason::Failed => UnusableReason::Failed,
                        wit::UnusableReason::Exhausted => UnusableReason::Exhausted,
                    }),
                    wit::Error::NotExportable => G::NotExportable,
                    wit::Error::WrongKeyType => G::WrongKeyType,
                    wit::Error::InvalidArgument(text) => {
                        return Error::GuestInvalidArgument(super::guest_text(&text))
                    }
                    wit::Error::KeyService(text) => {
                        return Error::GuestKeyService(super::guest_text(&text))
                    }
                })
            }

            /// WIT's blob error does not carry the refused version; the
            /// blob's clear header has it, so put it back for the caller.
            pub(crate) fn blob_error_from_wit(e: wit::Error, blob: &[u8]) -> Error {
                match error_from_wit(e) {
                    Error::Record(G::Blob(BlobError::UnsupportedVersion(_))) => {
                        Error::Record(G::Blob(BlobError::UnsupportedVersion(
                            blob.get(4).copied().unwrap_or(0),
                        )))
                    }
                    other => other,
                }
            }

            pub(crate) fn facts_to_wit(f: &Facts) -> wit::Facts {
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

            pub(crate) fn event_from_wit(e: wit::Event) -> Event {
                match e {
                    wit::Event::NewSessionTicket(m) => Event::NewSessionTicket(m),
                    wit::Event::CertificateRequest(m) => Event::CertificateRequest(m),
                }
            }

            pub(crate) fn closed_from_wit(c: wit::Closed) -> Closed {
                match c {
                    wit::Closed::CloseNotify => Closed::CloseNotify,
                    wit::Closed::PeerAlert(d) => Closed::PeerAlert(d),
                    wit::Closed::LocalAlert(a) => Closed::LocalAlert(alert_from_wit(a)),
                    wit::Closed::Truncated => Closed::Truncated,
                }
            }
        }
    };
}

/// A guest's text, made safe for a log line: no control characters (no
/// forged lines), at most 200 characters.
pub(crate) fn guest_text(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

conversions!(full, crate::bindings::exports::keyferry::dataplane::types);
conversions!(
    plugin,
    crate::app_bindings::exports::keyferry::dataplane::types
);
