//! One macro for the WIT glue on both sides of the boundary.

/// Writes `From` both ways between one of this crate's enums and the
/// bindings' enum of the same WIT type, case by case. A case whose Rust name
/// differs in the bindings is written `Ours = Theirs`. The host and the
/// guest glue both use it, so no mapping is written by hand twice.
#[doc(hidden)]
#[macro_export]
macro_rules! wit_enum {
    ($ours:ident <=> $m:ident :: $theirs:ident { $($v:ident $(= $t:ident)?),* $(,)? }) => {
        impl From<$ours> for $m::$theirs {
            fn from(value: $ours) -> Self {
                match value {
                    $($ours::$v => $crate::wit_enum!(@case $m::$theirs, $v $($t)?),)*
                }
            }
        }
        impl From<$m::$theirs> for $ours {
            fn from(value: $m::$theirs) -> Self {
                match value {
                    $($crate::wit_enum!(@case $m::$theirs, $v $($t)?) => $ours::$v,)*
                }
            }
        }
    };
    (@case $m:ident :: $theirs:ident, $v:ident) => { $m::$theirs::$v };
    (@case $m:ident :: $theirs:ident, $v:ident $t:ident) => { $m::$theirs::$t };
}

/// Writes every conversion between this crate's value types and the
/// bindings' copies of the `types` interface, in both directions: the
/// enums, blob errors, facts, events, how a connection closed, and a
/// traffic key's state. `$wit` names the bindings' `types` module in the
/// caller's scope. The guest glue and the host call it once each, so the
/// mappings exist once.
#[doc(hidden)]
#[macro_export]
macro_rules! wit_conversions {
    ($wit:ident) => {
        const _: () = {
            use $crate::connection::{Closed, Event, Facts, Role};
            use $crate::record::TrafficKeyState;
            use $crate::{
                AeadAlgorithm, Alert, BlobError, ContentType, Direction, KeyServiceError,
                MacAlgorithm, ProtocolVersion, UnusableReason,
            };

    $crate::wit_enum!(ProtocolVersion <=> $wit::ProtocolVersion { Tls12, Tls13 });
            $crate::wit_enum!(AeadAlgorithm <=> $wit::AeadAlgorithm {
                Aes128Gcm,
                Aes256Gcm,
                ChaCha20Poly1305 = Chacha20Poly1305,
            });
    $crate::wit_enum!(Direction <=> $wit::Direction { Seal, Open });
    $crate::wit_enum!(MacAlgorithm <=> $wit::MacAlgorithm { HmacSha256, HmacSha384 });
            $crate::wit_enum!(ContentType <=> $wit::ContentType {
                ChangeCipherSpec,
                Alert,
                Handshake,
                ApplicationData,
            });
            $crate::wit_enum!(Alert <=> $wit::Alert {
                UnexpectedMessage,
                BadRecordMac,
                RecordOverflow,
                IllegalParameter,
                DecodeError,
                InternalError,
            });
    $crate::wit_enum!(UnusableReason <=> $wit::UnusableReason { Failed, Exhausted });
            $crate::wit_enum!(KeyServiceError <=> $wit::KeyServiceError {
                UnknownKey,
                SequenceReused,
                AuthenticationFailed,
                InvalidArgument,
                Unsupported,
                Exhausted,
            });
    $crate::wit_enum!(Role <=> $wit::Role { Client, Server });

            impl From<BlobError> for $wit::BlobError {
                fn from(b: BlobError) -> Self {
                    match b {
                        BlobError::Malformed => Self::Malformed,
                        BlobError::UnsupportedVersion(v) => Self::UnsupportedVersion(v),
                        BlobError::WrongKind => Self::WrongKind,
                        BlobError::WrongRecipient => Self::WrongRecipient,
                        BlobError::AuthenticationFailed => Self::AuthenticationFailed,
                        BlobError::Replayed => Self::Replayed,
                        BlobError::SequenceRollback => Self::SequenceRollback,
                        BlobError::HostKeysUnavailable => Self::HostKeysUnavailable,
                        BlobError::InvalidState => Self::InvalidState,
                        // `BlobError` is non-exhaustive outside this crate;
                        // a case the WIT does not know is a bad state.
                        #[allow(unreachable_patterns, reason = "exhaustive inside this crate")]
                        _ => Self::InvalidState,
                    }
                }
            }

            impl From<$wit::BlobError> for BlobError {
                fn from(b: $wit::BlobError) -> Self {
                    match b {
                        $wit::BlobError::Malformed => Self::Malformed,
                        $wit::BlobError::UnsupportedVersion(v) => Self::UnsupportedVersion(v),
                        $wit::BlobError::WrongKind => Self::WrongKind,
                        $wit::BlobError::WrongRecipient => Self::WrongRecipient,
                        $wit::BlobError::AuthenticationFailed => Self::AuthenticationFailed,
                        $wit::BlobError::Replayed => Self::Replayed,
                        $wit::BlobError::SequenceRollback => Self::SequenceRollback,
                        $wit::BlobError::HostKeysUnavailable => Self::HostKeysUnavailable,
                        $wit::BlobError::InvalidState => Self::InvalidState,
                    }
                }
            }

            impl From<Closed> for $wit::Closed {
                fn from(c: Closed) -> Self {
                    match c {
                        Closed::CloseNotify => Self::CloseNotify,
                        Closed::PeerAlert(d) => Self::PeerAlert(d),
                        Closed::LocalAlert(a) => Self::LocalAlert(a.into()),
                        Closed::Truncated => Self::Truncated,
                    }
                }
            }

            impl From<$wit::Closed> for Closed {
                fn from(c: $wit::Closed) -> Self {
                    match c {
                        $wit::Closed::CloseNotify => Self::CloseNotify,
                        $wit::Closed::PeerAlert(d) => Self::PeerAlert(d),
                        $wit::Closed::LocalAlert(a) => Self::LocalAlert(a.into()),
                        $wit::Closed::Truncated => Self::Truncated,
                    }
                }
            }

            impl From<Event> for $wit::Event {
                fn from(e: Event) -> Self {
                    match e {
                        Event::NewSessionTicket(m) => Self::NewSessionTicket(m),
                        Event::CertificateRequest(m) => Self::CertificateRequest(m),
                    }
                }
            }

            impl From<$wit::Event> for Event {
                fn from(e: $wit::Event) -> Self {
                    match e {
                        $wit::Event::NewSessionTicket(m) => Self::NewSessionTicket(m),
                        $wit::Event::CertificateRequest(m) => Self::CertificateRequest(m),
                    }
                }
            }

            impl From<&Facts> for $wit::Facts {
                fn from(f: &Facts) -> Self {
                    Self {
                        role: f.role.into(),
                        version: f.version.into(),
                        suite: f.suite.clone(),
                        server_name: f.server_name.clone(),
                        alpn: f.alpn.clone(),
                        peer_certificate: f.peer_certificate.as_ref().map(|c| {
                            $wit::PeerCertificate {
                                subject: c.subject.clone(),
                                issuer: c.issuer.clone(),
                                serial: c.serial.clone(),
                                subject_alt_names: c.subject_alt_names.clone(),
                                sha256: c.sha256.clone(),
                            }
                        }),
                        connection_id: f.connection_id,
                    }
                }
            }

            impl From<$wit::Facts> for Facts {
                fn from(f: $wit::Facts) -> Self {
                    Self {
                        role: f.role.into(),
                        version: f.version.into(),
                        suite: f.suite,
                        server_name: f.server_name,
                        alpn: f.alpn,
                        peer_certificate: f.peer_certificate.map(|c| {
                            $crate::connection::PeerCertificate {
                                subject: c.subject,
                                issuer: c.issuer,
                                serial: c.serial,
                                subject_alt_names: c.subject_alt_names,
                                sha256: c.sha256,
                            }
                        }),
                        connection_id: f.connection_id,
                    }
                }
            }

            impl From<TrafficKeyState> for $wit::TrafficKeyState {
                fn from(s: TrafficKeyState) -> Self {
                    Self {
                        version: s.version.into(),
                        aead: s.aead.into(),
                        direction: s.direction.into(),
                        sequence: s.sequence,
                        generation: s.generation,
                        exportable: s.exportable,
                        residency: if s.host_resident {
                            $wit::Residency::Host
                        } else {
                            $wit::Residency::Software
                        },
                        host_key_ref: s.host_key_ref,
                        connection_id: s.connection_id,
                        auto_update_limit: s.auto_update_limit,
                    }
                }
            }

            impl From<$wit::TrafficKeyState> for TrafficKeyState {
                fn from(s: $wit::TrafficKeyState) -> Self {
                    Self {
                        version: s.version.into(),
                        aead: s.aead.into(),
                        direction: s.direction.into(),
                        sequence: s.sequence,
                        generation: s.generation,
                        exportable: s.exportable,
                        host_resident: matches!(s.residency, $wit::Residency::Host),
                        host_key_ref: s.host_key_ref,
                        connection_id: s.connection_id,
                        auto_update_limit: s.auto_update_limit,
                    }
                }
            }
        };
    };
}
