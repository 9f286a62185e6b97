//! Running handshakes and sessions over real byte streams: blocking
//! (`Read + Write`) and tokio (`AsyncRead + AsyncWrite`). The logic is all
//! in the sans-IO [`Handshake`] and the guest's [`DataPlane`]; these loops
//! only move bytes and keep time.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use keyferry_guest::connection::Closed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dataplane::{DataPlane, Delivery};
use crate::error::{HandshakeError, Result};
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
                    return Err(HandshakeError::PeerClosed.into());
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
                    return Err(HandshakeError::PeerClosed.into());
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
    /// The transport failed, or the peer stayed silent or stopped reading.
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

/// Runs a guest call. A call may use its whole deadline, so on a
/// multi-threaded runtime tell tokio this worker is busy: its other tasks
/// (accepts, other connections) move to another worker meanwhile.
pub fn blocking<R>(call: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}

/// Serves a connection whose application runs in the guest, over a tokio
/// stream, until it ends, the peer leaves or stalls, or `shutdown` fires.
/// `first` is what [`DataPlane::new`] delivered. A guest failure ends only
/// this session (and, for a shared instance, the sessions sharing it).
pub async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    plane: &mut DataPlane,
    first: Delivery,
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
    let mut step: Result<Delivery> = Ok(first);
    let mut eof = false;
    loop {
        let d = match step {
            Ok(d) if !d.plaintext.is_empty() => {
                // Nothing here consumes plaintext: it belongs to an
                // application inside the sandbox.
                summary.ending = Ending::GuestFailed(
                    "the component handed plaintext to the host; serve needs an application component".into(),
                );
                let _ = stream.write_all(&PLAINTEXT_INTERNAL_ERROR).await;
                break;
            }
            Ok(d) => d,
            Err(e) => {
                summary.ending = Ending::GuestFailed(e.to_string());
                let _ = stream.write_all(&PLAINTEXT_INTERNAL_ERROR).await;
                break;
            }
        };
        if !d.to_send.is_empty() {
            let write = async {
                stream.write_all(&d.to_send).await?;
                stream.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => summary.bytes_out += d.to_send.len() as u64,
                Ok(Err(e)) => {
                    summary.ending = Ending::Transport(e.to_string());
                    break;
                }
                Err(_) => {
                    summary.ending =
                        Ending::Transport("write timeout: the peer stopped reading".into());
                    break;
                }
            }
        }
        if d.done || eof {
            // After EOF the transport is over whatever the guest says: a
            // guest that keeps answering `done: false` must not spin on a
            // closed socket.
            summary.ending = match (d.closed, &summary.ending) {
                (_, Ending::Shutdown) => Ending::Shutdown,
                (Some(c), _) if c != Closed::CloseNotify => Ending::Peer(c),
                (None, _) if eof => Ending::Peer(Closed::Truncated),
                _ => Ending::Clean,
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
                    blocking(|| plane.end_of_stream())
                }
                Ok(Ok(n)) => {
                    summary.bytes_in += n as u64;
                    blocking(|| plane.receive(&buf[..n]))
                }
                Ok(Err(e)) => {
                    summary.ending = Ending::Transport(e.to_string());
                    break;
                }
            },
            _ = shutdown.changed() => {
                summary.ending = Ending::Shutdown;
                blocking(|| plane.close())
            }
        };
    }
    let _ = stream.shutdown().await;
    summary.duration = started.elapsed();
    summary
}
