//! How a connection ended: the closed set of endings that the log line,
//! the metrics labels and a worker's report all name, and the totals a
//! session ends with. A leaf: the transport loops produce these, and the
//! metrics, the channel and the log consume them.

use std::time::Duration;

use keyferry_record::connection::Closed;

use keyferry::error::{Error, TrapKind};

/// How a served session ended, for the per-connection log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// close_notify exchanged.
    Clean,
    /// The peer's side ended some other way (alert, truncation).
    Peer(Closed),
    /// The host shut the session down (Ctrl-C).
    Shutdown,
    /// The server closed this idle connection to admit another client.
    Shed,
    /// An idle connection reached the keep-alive timeout.
    KeepaliveTimeout,
    /// A connection stalled mid-record or mid-request.
    RequestTimeout,
    /// The peer stopped reading what we sent.
    WriteTimeout,
    /// The guest failed (trap, limit, bad output).
    GuestFailed {
        /// What went wrong, for the log.
        reason: String,
        /// The trap, if the guest trapped.
        trap: Option<TrapKind>,
    },
    /// The transport failed, or the peer stayed silent or stopped reading.
    Transport(String),
    /// `--forward`: the backend could not be reached, or failed.
    Backend(String),
}

impl Ending {
    /// The ending without its detail: what metrics count and what a worker
    /// reports.
    pub fn kind(&self) -> EndingKind {
        match self {
            Self::Clean | Self::Peer(Closed::CloseNotify) => EndingKind::CloseNotify,
            Self::Peer(Closed::Truncated) => EndingKind::Truncated,
            Self::Peer(Closed::PeerAlert(_)) => EndingKind::PeerAlert,
            Self::Peer(Closed::LocalAlert(_)) => EndingKind::SentAlert,
            Self::Shutdown => EndingKind::Shutdown,
            Self::Shed => EndingKind::Shed,
            Self::KeepaliveTimeout => EndingKind::KeepaliveTimeout,
            Self::RequestTimeout => EndingKind::RequestTimeout,
            Self::WriteTimeout => EndingKind::WriteTimeout,
            Self::GuestFailed { .. } => EndingKind::GuestFailed,
            Self::Transport(_) => EndingKind::Transport,
            Self::Backend(_) => EndingKind::BackendError,
        }
    }

    /// The guest's trap, if one ended the session.
    pub fn trap(&self) -> Option<TrapKind> {
        match self {
            Self::GuestFailed { trap, .. } => *trap,
            _ => None,
        }
    }
}

/// How a connection ended, as a closed set: the label of
/// `keyferry_connections_ended_total`, and a byte in a worker's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndingKind {
    /// close_notify from the peer.
    CloseNotify,
    /// EOF without close_notify.
    Truncated,
    /// The peer sent a fatal alert.
    PeerAlert,
    /// We sent a fatal alert (bad_record_mac, decode_error, ...).
    SentAlert,
    /// Server shutdown.
    Shutdown,
    /// Closed while idle to admit a client at the cap.
    Shed,
    /// Idle past the keep-alive timeout.
    KeepaliveTimeout,
    /// Stalled mid-record or mid-request.
    RequestTimeout,
    /// The peer stopped reading.
    WriteTimeout,
    /// The guest failed (trap, limit, bad output).
    GuestFailed,
    /// The transport failed.
    Transport,
    /// The handshake completed but no guest could take the connection
    /// (no instance ready in time, or making one failed).
    Unserved,
    /// Its worker process died while serving it.
    WorkerExited,
    /// `--forward`: the backend could not be reached, or failed.
    BackendError,
}

impl EndingKind {
    /// Every kind.
    pub const ALL: [Self; 14] = [
        Self::CloseNotify,
        Self::Truncated,
        Self::PeerAlert,
        Self::SentAlert,
        Self::Shutdown,
        Self::Shed,
        Self::KeepaliveTimeout,
        Self::RequestTimeout,
        Self::WriteTimeout,
        Self::GuestFailed,
        Self::Transport,
        Self::Unserved,
        Self::WorkerExited,
        Self::BackendError,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CloseNotify => "close_notify",
            Self::Truncated => "truncated",
            Self::PeerAlert => "peer_alert",
            Self::SentAlert => "sent_alert",
            Self::Shutdown => "shutdown",
            Self::Shed => "shed",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::GuestFailed => "guest_failure",
            Self::Transport => "transport_error",
            Self::Unserved => "unserved",
            Self::WorkerExited => "worker_exited",
            Self::BackendError => "backend_error",
        }
    }
}

/// Totals of one session.
#[derive(Clone, Debug)]
pub struct SessionSummary {
    /// Ciphertext bytes received after the handshake.
    pub bytes_in: u64,
    /// Ciphertext bytes sent after the handshake.
    pub bytes_out: u64,
    /// How it ended.
    pub ending: Ending,
    /// How long the session ran.
    pub duration: Duration,
}

impl SessionSummary {
    /// A session that has just started: nothing moved yet, and clean
    /// unless something else is found.
    pub fn starting() -> Self {
        Self {
            bytes_in: 0,
            bytes_out: 0,
            ending: Ending::Clean,
            duration: Duration::ZERO,
        }
    }
}

/// How one served connection went, as `Metrics::connection_ended` counts
/// it: from the session summary in one process, from the worker's report
/// with workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionOutcome {
    /// How it ended.
    pub ending: EndingKind,
    /// The trap that ended it, if a guest trapped.
    pub trap: Option<TrapKind>,
    /// Ciphertext bytes received after the handshake.
    pub bytes_in: u64,
    /// Ciphertext bytes sent after the handshake.
    pub bytes_out: u64,
}

impl From<&SessionSummary> for ConnectionOutcome {
    fn from(summary: &SessionSummary) -> Self {
        Self {
            ending: summary.ending.kind(),
            trap: summary.ending.trap(),
            bytes_in: summary.bytes_in,
            bytes_out: summary.bytes_out,
        }
    }
}

impl ConnectionOutcome {
    /// A connection no guest took, after `error` (if it was a guest's).
    pub fn unserved(error: Option<&Error>) -> Self {
        Self {
            ending: EndingKind::Unserved,
            trap: error.and_then(Error::trap),
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// How a backend connect went, as `keyferry_backend_connects_total`
/// counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Connected.
    Connected,
    /// Refused or unreachable.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The name did not resolve, or writing the PROXY header failed.
    Error,
}

impl ConnectOutcome {
    /// Every outcome.
    pub const ALL: [Self; 4] = [Self::Connected, Self::Refused, Self::TimedOut, Self::Error];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Refused => "refused",
            Self::TimedOut => "timed_out",
            Self::Error => "error",
        }
    }
}
