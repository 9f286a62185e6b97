//! Running handshakes and sessions over real byte streams: blocking
//! (`Read + Write`) and tokio (`AsyncRead + AsyncWrite`). The logic is all
//! in the sans-IO [`Handshake`] and the guest; these loops only move bytes.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use keyferry_guest::connection::Closed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::app::{AppInstance, SessionHandle, SessionStep};
use crate::error::{Error, Result};
use crate::handshake::{Handoff, Handshake, Progress};

/// A session with no bytes from the peer for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A write the peer does not drain within this long ends the session.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Read buffer size: one maximal record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;

/// Runs a handshake to completion over a blocking stream.
pub fn handshake<S: Read + Write>(stream: &mut S, mut hs: Handshake) -> Result<Handoff> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let progress = hs.advance();
        let out = hs.take_outgoing();
        if !out.is_empty() {
            stream.write_all(&out)?;
            stream.flush()?;
        }
        match progress? {
            Progress::Complete => return hs.finish(),
            Progress::NeedInput => {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Err(Error::Handshake(
                        "peer closed the transport during the handshake".into(),
                    ));
                }
                hs.feed(&buf[..n])?;
            }
        }
    }
}

/// Runs a handshake to completion over a tokio stream.
pub async fn handshake_async<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut hs: Handshake,
) -> Result<Handoff> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let progress = hs.advance();
        let out = hs.take_outgoing();
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        match progress? {
            Progress::Complete => return hs.finish(),
            Progress::NeedInput => {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Err(Error::Handshake(
                        "peer closed the transport during the handshake".into(),
                    ));
                }
                hs.feed(&buf[..n])?;
            }
        }
    }
}

/// How a served session ended, for the per-connection log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// close_notify exchanged.
    Clean,
    /// The peer's side ended some other way (alert, truncation).
    Peer(Closed),
    /// The host shut the session down (Ctrl-C).
    Shutdown,
    /// The guest failed (trap, limit, bad output); the text says how.
    GuestFailed(String),
    /// The transport failed.
    Transport(String),
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

/// A fatal internal_error alert in the clear. Once a guest has failed, the
/// host holds no key to protect an alert with (it destroyed its copies at
/// handoff), so this is the most it can say; peers treat it as a fatal
/// error either way.
pub const PLAINTEXT_INTERNAL_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

/// A guest instance that serves several sessions (one tenant's
/// connections), shared by their tasks. A trap ends every session in it;
/// the next connection gets a fresh instance.
#[derive(Default)]
pub struct SharedInstance {
    /// The instance, made on first use and after a trap.
    pub app: Option<AppInstance>,
    /// Bumped whenever the instance is replaced, so sessions of a dead
    /// instance know their handles are gone.
    pub epoch: u64,
}

/// Where a session's guest instance lives.
pub enum SessionHost<'a> {
    /// An instance of its own (one per connection: the strongest isolation).
    Owned(&'a mut AppInstance),
    /// An instance shared with other sessions.
    Shared {
        /// The shared instance.
        slot: &'a tokio::sync::Mutex<SharedInstance>,
        /// The instance generation the session was attached to.
        epoch: u64,
    },
}

enum Op<'b> {
    Start,
    Data(&'b [u8]),
    Eof,
    Shutdown,
}

impl SessionHost<'_> {
    async fn call(&mut self, session: &SessionHandle, op: Op<'_>) -> Result<SessionStep> {
        fn run(app: &mut AppInstance, session: &SessionHandle, op: Op<'_>) -> Result<SessionStep> {
            match op {
                Op::Start => app.start(session),
                Op::Data(d) => app.on_ciphertext(session, d),
                Op::Eof => app.on_end_of_stream(session),
                Op::Shutdown => app.shutdown(session),
            }
        }
        match self {
            SessionHost::Owned(app) => blocking(|| run(app, session, op)),
            SessionHost::Shared { slot, epoch } => {
                let mut shared = slot.lock().await;
                if shared.epoch != *epoch {
                    return Err(Error::Poisoned);
                }
                let app = shared.app.as_mut().ok_or(Error::Poisoned)?;
                blocking(|| run(app, session, op))
            }
        }
    }
}

/// Runs a guest call. A call may use its whole deadline, so on a
/// multi-threaded runtime tell tokio this worker is busy: its other tasks
/// (accepts, other connections) move to another worker meanwhile.
fn blocking<R>(call: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}

/// Serves an application session over a tokio stream until it ends, the
/// peer leaves, or `shutdown` fires. Guest failures end only this session
/// (and, for a shared instance, the sessions sharing it).
pub async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut host: SessionHost<'_>,
    session: &SessionHandle,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> SessionSummary {
    let started = Instant::now();
    let mut summary = SessionSummary {
        bytes_in: 0,
        bytes_out: 0,
        ending: Ending::Clean,
        duration: Duration::ZERO,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut step = host.call(session, Op::Start).await;
    let mut eof = false;
    loop {
        let s = match step {
            Ok(s) => s,
            Err(e) => {
                summary.ending = Ending::GuestFailed(e.to_string());
                let _ = stream.write_all(&PLAINTEXT_INTERNAL_ERROR).await;
                break;
            }
        };
        if let Err(e) = send(stream, &s, &mut summary).await {
            summary.ending = Ending::Transport(e.to_string());
            break;
        }
        if s.done {
            summary.ending = match s.closed {
                None | Some(Closed::CloseNotify) if !matches!(summary.ending, Ending::Shutdown) => {
                    Ending::Clean
                }
                Some(c) if c != Closed::CloseNotify => Ending::Peer(c),
                _ => summary.ending.clone(),
            };
            break;
        }
        if eof {
            // The transport is over whatever the guest says: a guest that
            // keeps answering `done: false` must not spin on a closed socket.
            summary.ending = match s.closed {
                Some(c) if c != Closed::CloseNotify => Ending::Peer(c),
                Some(_) => Ending::Clean,
                None => Ending::Peer(Closed::Truncated),
            };
            break;
        }
        step = tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)) => match read {
                Err(_) => {
                    summary.ending = Ending::Transport("idle timeout".into());
                    break;
                }
                Ok(Ok(0)) => {
                    eof = true;
                    host.call(session, Op::Eof).await
                }
                Ok(Ok(n)) => {
                    summary.bytes_in += n as u64;
                    host.call(session, Op::Data(&buf[..n])).await
                }
                Ok(Err(e)) => {
                    summary.ending = Ending::Transport(e.to_string());
                    break;
                }
            },
            _ = shutdown.changed() => {
                summary.ending = Ending::Shutdown;
                host.call(session, Op::Shutdown).await
            }
        };
    }
    let _ = stream.shutdown().await;
    summary.duration = started.elapsed();
    summary
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    step: &SessionStep,
    summary: &mut SessionSummary,
) -> Result<()> {
    if !step.to_send.is_empty() {
        stream.write_all(&step.to_send).await?;
        stream.flush().await?;
        summary.bytes_out += step.to_send.len() as u64;
    }
    Ok(())
}
