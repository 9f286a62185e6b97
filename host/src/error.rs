//! The host library's error type.
//!
//! Guest-reported errors keep their typed form ([`keyferry_guest::Error`]) so
//! callers can match on the TLS alert to send. Nothing here carries key
//! material: the guest's own messages never hold any, and host-side
//! failures name the step, not the bytes.

pub use keyferry_guest::{Alert, BlobError, KeyServiceError, UnusableReason};

/// Every way the host library can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The record layer or blob format refused the operation (in the guest,
    /// or natively when the host seals a blob).
    #[error(transparent)]
    Record(#[from] keyferry_guest::Error),
    /// The guest refused an argument; the text is the guest's.
    #[error("guest refused an argument: {0}")]
    GuestInvalidArgument(String),
    /// The host key service refused a guest's request; the text is the guest's.
    #[error("host key service refused: {0}")]
    GuestKeyService(String),
    /// The guest trapped (including running out of fuel or time, or
    /// exceeding its memory cap). Its store is poisoned; only a new
    /// instance works again.
    #[error("guest trapped: {0}")]
    Trap(TrapKind),
    /// A call was made on an instance that trapped earlier.
    #[error("guest instance is poisoned by an earlier trap")]
    Poisoned,
    /// The guest returned a value that breaks the WIT contract's promises
    /// (the host never trusts a length or type from the guest).
    #[error("guest returned an invalid result: {0}")]
    InvalidGuestResult(&'static str),
    /// A handle from another instance was used.
    #[error("key handle belongs to another guest instance")]
    ForeignHandle,
    /// Compiling or instantiating the component failed.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The handshake engine could not hand over its keys.
    #[error("key export from the TLS stack failed: {0}")]
    Export(&'static str),
    /// A certificate, key or option could not be used; the text names the
    /// file or option, never key bytes.
    #[error("configuration: {0}")]
    Config(String),
    /// The handshake failed; the text says how (never with key bytes).
    #[error("handshake: {0}")]
    Handshake(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
    /// rustls refused an operation.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
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
}

/// Results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// The TLS alert the connection should send for this error, if the
    /// failure is one of the peer's records.
    pub fn alert(&self) -> Option<Alert> {
        match self {
            Self::Record(keyferry_guest::Error::Alert(a)) => Some(*a),
            _ => None,
        }
    }
}
