//! The host library's error type, in the rustls style: one
//! `#[non_exhaustive]` enum whose variants hold typed detail.
//!
//! Guest-reported errors keep their typed form ([`keyferry_record::Error`])
//! so callers can match on the TLS alert to send. wasmtime's errors stay
//! attached as the [`source`](std::error::Error::source). Nothing here
//! carries key material: the guest's errors never hold any, and host-side
//! failures name the step or the file, not the bytes.

use std::path::PathBuf;

pub use keyferry_record::{Alert, BlobError, KeyServiceError, UnusableReason};

/// Every way the host library can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The record layer or blob format refused the operation (in the guest,
    /// or natively when the host seals a blob).
    #[error(transparent)]
    Record(#[from] keyferry_record::Error),
    /// A guest broke the WIT contract, or lacks what was asked of it.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The sandbox stopped a guest, or could not run one.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A certificate, key or option could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The handshake failed, or its keys could not be handed over.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
    /// The component cannot be served: not a component, the wrong world,
    /// or an import a served `wasi:http` component cannot have.
    #[error(transparent)]
    Compose(#[from] crate::compose::ComposeError),
}

/// A guest that broke the WIT contract's promises or lacks an export. The
/// host never trusts a length, an index or a type that a guest returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The guest returned a value that breaks the contract; the text names
    /// which promise.
    #[error("guest returned an invalid result: {0}")]
    InvalidResult(&'static str),
    /// The guest refused an argument; the text is the guest's, sanitized.
    #[error("guest refused an argument: {0}")]
    InvalidArgument(String),
    /// The guest's self-check found a failure; the text is the guest's.
    #[error("guest self-check failed: {0}")]
    SelfCheckFailed(String),
    /// A key handle from another instance was used.
    #[error("key handle belongs to another guest instance")]
    ForeignHandle,
    /// The component does not export this interface (an application plugin
    /// has no `keys`, for example).
    #[error("the component does not export {0}")]
    MissingExport(&'static str),
}

/// Why the sandbox stopped a guest or could not run it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The guest trapped (including running out of fuel or time, or
    /// exceeding its memory cap). Its store is poisoned; only a new
    /// instance works again.
    #[error("guest trapped: {kind}")]
    Trap {
        /// Why.
        kind: TrapKind,
        /// wasmtime's report, with the guest's backtrace.
        #[source]
        source: wasmtime::Error,
    },
    /// A call was made on an instance that trapped earlier.
    #[error("guest instance is poisoned by an earlier trap")]
    Poisoned,
    /// Compiling, linking or instantiating a component failed.
    #[error("wasm engine: {context}")]
    Engine {
        /// What was being done.
        context: &'static str,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
}

/// Why a guest call trapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrapKind {
    /// The per-call fuel budget ran out.
    #[error("out of fuel")]
    OutOfFuel,
    /// The per-call epoch deadline passed.
    #[error("execution deadline passed")]
    Deadline,
    /// A memory or table grow beyond the store limits, or an allocation
    /// failure inside the guest.
    #[error("resource limit reached")]
    ResourceLimit,
    /// Any other trap: unreachable, out-of-bounds access, stack overflow.
    #[error("wasm trap")]
    Other,
    /// The guest tried to wait (a sleep, a poll, a stream that is not
    /// ready) on a thread that serves other connections
    /// (the crate's `wasi_io`).
    #[error("would block: a data-plane guest may not wait on a clock or a stream")]
    WouldBlock,
}

/// Why a guest trapped in a WASI stream or poll: what it would have
/// waited in (the crate's `wasi_io`). It classifies as
/// [`TrapKind::WouldBlock`].
#[derive(Debug, thiserror::Error)]
#[error("the guest would wait in {0}; a data-plane guest may not block its thread")]
pub struct WouldBlock(pub &'static str);

impl TrapKind {
    /// Every kind, in a fixed order (the process channel's codes are
    /// positions in it).
    pub const ALL: [TrapKind; 5] = [
        TrapKind::OutOfFuel,
        TrapKind::Deadline,
        TrapKind::ResourceLimit,
        TrapKind::Other,
        TrapKind::WouldBlock,
    ];
}

/// A configuration that cannot be used. Messages name the file or the
/// option, never key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file's contents could not be parsed.
    #[error("malformed PEM ({what}) in {}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// A certificate file holds no certificate.
    #[error("no certificate in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a type rustls cannot sign with.
    #[error("unsupported private key type")]
    UnsupportedKey,
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// A CA certificate could not be used as a trust anchor.
    #[error("bad CA certificate in {}: {reason}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// webpki's reason.
        reason: String,
    },
    /// A session-ticket key file is not a whole number of 48-byte keys.
    #[error("{}: a ticket key file holds one or more 48-byte keys", path.display())]
    TicketKeys {
        /// The file.
        path: PathBuf,
    },
    /// An OCSP response cannot be stapled.
    #[error("OCSP response {}: {reason}", path.display())]
    Ocsp {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate revocation list cannot be used.
    #[error("CRL {}: {reason}", path.display())]
    Crl {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A server needs at least one identity.
    #[error("no certificate to serve")]
    NoIdentity,
    /// A self-signed certificate could not be made.
    #[error("generating a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Client verification could not be set up.
    #[error("client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// A handshake that did not complete, or whose keys could not leave rustls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// rustls refused the peer (the peer got rustls's alert).
    #[error("tls: {}", tls_prose(.0))]
    Tls(#[from] rustls::Error),
    /// The peer closed the transport before the handshake completed.
    #[error("peer closed the transport during the handshake")]
    PeerClosed,
    /// The peer closed the transport without sending a byte: a TCP health
    /// check (HAProxy's, a load balancer's) or a port scan.
    #[error("peer closed the transport without sending anything")]
    PeerSilent,
    /// The peer did not finish in time.
    #[error("timed out")]
    TimedOut,
    /// The peer sent more than the handshake may buffer.
    #[error("peer sent more than {0} bytes before finishing the handshake")]
    TooMuchData(usize),
    /// The peer sent a record over the TLS size limit.
    #[error("record over the TLS size limit")]
    RecordOverflow,
    /// The peer sent a record of a content type TLS does not define.
    #[error("record of an unknown content type")]
    UnexpectedRecord,
    /// A step was taken out of order (finishing before completion, or
    /// with unsent bytes).
    #[error("handshake used out of order: {0}")]
    OutOfOrder(&'static str),
    /// The negotiated connection cannot be handed to a guest, or rustls's
    /// keys did not match the logged secrets.
    #[error("key export: {0}")]
    Export(&'static str),
}

/// rustls's message, with webpki's reasons (which print as bare enum
/// names, such as `Other(OtherError(CaUsedAsEndEntity))`) said in words.
fn tls_prose(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as Tls};
    let other = match e {
        Tls::InvalidCertificate(CertificateError::Other(other)) => other,
        Tls::InvalidCertificate(CertificateError::Revoked) => {
            return "invalid peer certificate: revoked (a --client-crl lists it)".into();
        }
        Tls::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
            return "invalid peer certificate: no CRL covers a certificate in its chain \
                    (each CA in the chain needs its CRL)"
                .into();
        }
        Tls::InvalidCertificate(
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. },
        ) => {
            return "invalid peer certificate: the CRL for its chain is past its nextUpdate \
                    (replace it and send SIGHUP)"
                .into();
        }
        _ => return e.to_string(),
    };
    let reason = match other.0.downcast_ref::<webpki::Error>() {
        Some(webpki::Error::CaUsedAsEndEntity) => {
            "the peer presented a CA certificate (basicConstraints CA:TRUE) as its own; \
             it needs a leaf certificate issued by that CA (the CA goes in the verifier's \
             trust anchors, such as --ca)"
                .to_string()
        }
        Some(webpki::Error::EndEntityUsedAsCa) => {
            "a certificate in the peer's chain that is not a CA was used to issue another"
                .to_string()
        }
        Some(webpki::Error::RequiredEkuNotFoundContext(_)) => {
            "the peer's certificate is not issued for this use (its extended key usage \
             lacks serverAuth or clientAuth)"
                .to_string()
        }
        Some(webpki::Error::PathLenConstraintViolated) => {
            "the peer's chain is longer than a CA in it allows".to_string()
        }
        Some(other) => format!("{other:?}"),
        None => other.0.to_string(),
    };
    format!("invalid peer certificate: {reason}")
}

/// Results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// The TLS alert the connection should send for this error, if the
    /// failure is one of the peer's records.
    pub fn alert(&self) -> Option<Alert> {
        match self {
            Self::Record(keyferry_record::Error::Alert(a)) => Some(*a),
            _ => None,
        }
    }

    /// Why a guest trapped, if it did.
    pub fn trap(&self) -> Option<TrapKind> {
        match self {
            Self::Sandbox(SandboxError::Trap { kind, .. }) => Some(*kind),
            _ => None,
        }
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Self::Handshake(HandshakeError::Tls(e))
    }
}
