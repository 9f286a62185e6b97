//! Running handshakes and sessions over real byte streams: blocking
//! (`Read + Write`) and tokio (`AsyncRead + AsyncWrite`). The logic is all
//! in the sans-IO [`Handshake`] and the guest's [`DataPlane`]; these loops
//! only move bytes and keep time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyferry_record::connection::{Closed, Facts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ending::{Ending, SessionSummary};
use keyferry::dataplane::{DataPlane, Delivery};
use keyferry::error::{HandshakeError, Result};
use keyferry::handshake::{Handoff, Handshake, Progress};

/// How long a session may wait on its peer, in each state (nginx's
/// `keepalive_timeout`, `client_header_timeout` and `send_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a client may take to finish its handshake.
    pub handshake: Duration,
    /// An idle connection (nothing half received, the application idle,
    /// e.g. a keep-alive connection between requests) is closed with
    /// close_notify after this long without a byte.
    pub keepalive: Duration,
    /// A connection in the middle of a record or request is closed after
    /// this long without a byte.
    pub request: Duration,
    /// A write the peer does not drain within this long ends the session.
    pub write: Duration,
}

impl Default for Timeouts {
    /// nginx's defaults, and a 10 s handshake.
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            keepalive: Duration::from_secs(75),
            request: Duration::from_secs(60),
            write: Duration::from_secs(60),
        }
    }
}

/// A session's place among a server's connections: whether it is idle, and
/// a way for the server to ask it to close so another client can be
/// admitted.
#[derive(Debug, Default)]
pub struct SessionHandle {
    /// Milliseconds since `epoch` when the session last became idle; 0
    /// while it is busy (mid-handshake, mid-record, mid-request, writing).
    idle_since_ms: AtomicU64,
    pub(crate) shed: tokio::sync::Notify,
}

impl SessionHandle {
    pub(crate) fn set_idle(&self, epoch: Instant, idle: bool) {
        let ms = if idle {
            u64::try_from(epoch.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
        } else {
            0
        };
        self.idle_since_ms.store(ms, Ordering::Relaxed);
    }

    /// When the session became idle, in ms since the server's epoch.
    pub fn idle_since_ms(&self) -> Option<u64> {
        match self.idle_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// Asks an idle session to close (with close_notify). Returns false if
    /// it stopped being idle since `seen_ms` (it is then left alone).
    pub fn shed_if_idle_since(&self, seen_ms: u64) -> bool {
        let claimed = self
            .idle_since_ms
            .compare_exchange(seen_ms, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if claimed {
            self.shed.notify_one();
        }
        claimed
    }
}

/// What a served session listens to besides its peer.
pub struct SessionControl {
    /// Becomes true when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The session's handle among the server's connections.
    pub handle: Arc<SessionHandle>,
    /// The server's time origin for [`SessionHandle`] timestamps.
    pub epoch: Instant,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// After shutdown starts, how long a busy session may take to finish
    /// what it is doing (an idle one closes at once); then it is closed
    /// with close_notify, busy or not.
    pub drain_timeout: Duration,
    /// `--access-log`: a line per request the application reports.
    pub access_log: Option<Arc<crate::access::AccessLog>>,
}

impl SessionControl {
    /// When a session still busy at shutdown is closed: a little before
    /// the server stops waiting for its sessions, so the close_notify
    /// goes out rather than the task being dropped.
    pub(crate) fn drain_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.drain_timeout.mul_f64(0.9)
    }
}

/// Read buffer size: one maximal record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;

/// A session's read buffer while it is idle or its peer sends little: a
/// keep-alive request's records fit, and an idle connection does not hold
/// a whole record's worth of touched memory (at thousands of idle
/// connections, that is a large share of what each costs). A read that
/// fills it grows it to [`READ_CHUNK`] until the session is idle again.
const IDLE_READ: usize = 2 * 1024;

/// Grows a read buffer that the last read (`n` bytes) filled to
/// [`READ_CHUNK`]: more is coming, so read whole records at once.
fn grow_after_full_read(buf: &mut Vec<u8>, n: usize) {
    if n == buf.len() && buf.len() < READ_CHUNK {
        buf.resize(READ_CHUNK, 0);
    }
}

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

/// Runs a handshake to completion over a tokio stream. The read buffer
/// starts at `IDLE_READ` (a few KiB), which holds a typical client flight, and grows
/// to `READ_CHUNK` (a whole record) once a read fills it (a large ClientHello or a client
/// certificate chain): zeroing a whole record's buffer for every handshake
/// showed in the profile of new connections.
pub async fn handshake_async<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut hs: Handshake,
) -> Result<Handoff> {
    let mut buf = vec![0u8; IDLE_READ];
    let mut heard = false;
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
                    return Err(if heard {
                        HandshakeError::PeerClosed
                    } else {
                        HandshakeError::PeerSilent
                    }
                    .into());
                }
                heard = true;
                hs.feed(&buf[..n])?;
                grow_after_full_read(&mut buf, n);
            }
        }
    }
}

/// A fatal internal_error alert in the clear. Once a guest has failed, the
/// host holds no key to protect an alert with (it destroyed its copies at
/// handoff), so this is the most it can say; peers treat it as a fatal
/// error either way.
pub const PLAINTEXT_INTERNAL_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

/// How long sending [`PLAINTEXT_INTERNAL_ERROR`] may wait for a peer that
/// does not read: seven bytes fit any socket buffer, unless the peer left
/// it full.
const ALERT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends [`PLAINTEXT_INTERNAL_ERROR`], waiting at most a second: the
/// connection is over either way, and its task must not stay behind for a
/// peer that stopped reading.
pub(crate) async fn send_internal_error<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(
        ALERT_WRITE_TIMEOUT,
        stream.write_all(&PLAINTEXT_INTERNAL_ERROR),
    )
    .await;
}

/// A guest call that runs longer than this marks this process's guests
/// as ones that may compute for long: from then on every guest call runs
/// under `block_in_place`. A record or a request takes tens of
/// microseconds, an instantiation about a hundred. It is wall-clock time
/// (a vDSO read; the thread's CPU time is a system call, two per guest
/// call), so it must stay clear of preemption: on a loaded machine a
/// thread may wait several scheduler slices of a few milliseconds each.
/// 50 ms is far above that and far below the default 1 s deadline.
pub const INLINE_CALL_LIMIT: Duration = Duration::from_millis(50);

/// Set once a guest call has run past [`INLINE_CALL_LIMIT`].
static GUESTS_RUN_LONG: AtomicBool = AtomicBool::new(false);

/// Runs a guest call from async code.
///
/// Guest calls are short (a record, a request), so they run on the tokio
/// worker itself: `block_in_place` on every call hands the worker's core
/// to another thread and back each time, and that hand-off cost more than
/// the guest's work (it was about half of `serve`'s CPU under keep-alive
/// load; PERF.md has the figures). A guest's WASI stdio never waits on
/// the runtime (keyferry's `wasi_io`), so a plugin that prints is safe here.
/// But a call may use its whole deadline (a looping guest), and meanwhile
/// the worker's other tasks wait. So the first call that runs past
/// [`INLINE_CALL_LIMIT`] switches this process to `block_in_place` for
/// every later call (logged once): the other connections then move to
/// another worker while a guest runs.
pub fn guest_call<R>(call: impl FnOnce() -> R) -> R {
    guest_call_waiting(|| (call(), Duration::ZERO))
}

/// [`guest_call`] for a call that may also wait in the middle, having
/// handed the runtime's other connections to another thread first (a
/// served `wasi:http` component waiting for a body or a timer): `call`
/// returns how long it waited, and only the rest counts as computing
/// towards [`INLINE_CALL_LIMIT`]. A slow upload is no reason to move
/// every later call off its worker.
pub(crate) fn guest_call_waiting<R>(call: impl FnOnce() -> (R, Duration)) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            if GUESTS_RUN_LONG.load(Ordering::Relaxed) {
                return tokio::task::block_in_place(call).0;
            }
            let started = Instant::now();
            let (result, waited) = call();
            let took = started.elapsed().saturating_sub(waited);
            if took > INLINE_CALL_LIMIT && !GUESTS_RUN_LONG.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    "a guest call ran long; guest calls now leave their tokio worker to the other connections (block_in_place)"
                );
            }
            result
        }
        _ => call().0,
    }
}

/// Serves a connection whose application runs in the guest, over a tokio
/// stream, until it ends, the peer leaves or stalls, the server sheds it or
/// shuts down. `first` is what [`DataPlane::new`] delivered. A guest
/// failure ends only this session (and, for a shared instance, the sessions
/// sharing it). With `requests`, each request the application reports is
/// logged, timed from its first byte.
pub async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    plane: &mut DataPlane,
    first: Delivery,
    mut control: SessionControl,
    requests: Option<&crate::access::ConnectionLog>,
) -> SessionSummary {
    let started = Instant::now();
    let mut summary = SessionSummary::starting();
    let handle = control.handle.clone();
    let mut buf = vec![0u8; IDLE_READ];
    // Nothing has come from the peer since the handshake: its first
    // request may be on its way, so shutdown does not close it as idle
    // (nginx serves a new connection's first request through a graceful
    // stop).
    let mut fresh = first.to_send.is_empty();
    let mut step: Result<Delivery> = Ok(first);
    let mut eof = false;
    let mut closing = false;
    // Set when shutdown starts while the session is busy: it finishes
    // what it is doing, then closes, or is closed at this deadline.
    let mut draining: Option<tokio::time::Instant> = None;
    // When the first byte of the request in progress arrived.
    let mut request_since: Option<Instant> = None;
    loop {
        let d = match step {
            Ok(d) if !d.plaintext.is_empty() => {
                // Nothing here consumes plaintext: it belongs to an
                // application inside the sandbox.
                summary.ending = Ending::GuestFailed {
                    reason: "the component handed plaintext to the host; serve needs an application component".into(),
                    trap: None,
                };
                send_internal_error(stream).await;
                break;
            }
            Ok(d) => d,
            Err(e) => {
                summary.ending = Ending::GuestFailed {
                    reason: e.to_string(),
                    trap: e.trap(),
                };
                send_internal_error(stream).await;
                break;
            }
        };
        if let Some(log) = requests
            && !d.answered.is_empty()
        {
            let took = request_since.map_or(Duration::ZERO, |t| t.elapsed());
            for request in &d.answered {
                log.request(request, took);
            }
            // Pipelined bytes already here start the next one now.
            request_since = (!d.idle).then(Instant::now);
        }
        if !d.to_send.is_empty() {
            let write = async {
                stream.write_all(&d.to_send).await?;
                stream.flush().await
            };
            // A peer that never reads must not hold its place forever, nor
            // keep the server from shutting down past the drain deadline.
            let write = tokio::time::timeout(control.timeouts.write, write);
            tokio::pin!(write);
            let written = loop {
                tokio::select! {
                    w = &mut write => break Some(w),
                    _ = control.shutdown.changed(), if !closing && draining.is_none() => {
                        draining = Some(control.drain_deadline());
                    }
                    () = sleep_until_some(draining), if !closing && draining.is_some() => break None,
                }
            };
            let Some(written) = written else {
                summary.ending = Ending::Shutdown;
                break;
            };
            match written {
                Ok(Ok(())) => summary.bytes_out += d.to_send.len() as u64,
                Ok(Err(e)) => {
                    summary.ending = Ending::Transport(e.to_string());
                    break;
                }
                Err(_) => {
                    summary.ending = Ending::WriteTimeout;
                    break;
                }
            }
        }
        if d.done || eof {
            // After EOF the transport is over whatever the guest says: a
            // guest that keeps answering `done: false` must not spin on a
            // closed socket.
            summary.ending = match d.closed {
                // We closed it (shutdown, shed, keep-alive timeout): that
                // is the ending, whatever the peer's side said.
                _ if closing => summary.ending.clone(),
                Some(c) if c != Closed::CloseNotify => Ending::Peer(c),
                None if eof => Ending::Peer(Closed::Truncated),
                _ => Ending::Clean,
            };
            break;
        }
        if draining.is_some() && d.idle && !closing {
            // The request in progress at shutdown is answered: close now.
            summary.ending = Ending::Shutdown;
            closing = true;
            step = guest_call(|| plane.close());
            continue;
        }
        handle.set_idle(control.epoch, d.idle);
        if d.idle && buf.len() > IDLE_READ {
            buf = vec![0u8; IDLE_READ];
        }
        let wait = if d.idle {
            control.timeouts.keepalive
        } else {
            control.timeouts.request
        };
        step = tokio::select! {
            read = tokio::time::timeout(wait, stream.read(&mut buf)) => {
                handle.set_idle(control.epoch, false);
                match read {
                    Err(_) if d.idle => {
                        summary.ending = Ending::KeepaliveTimeout;
                        closing = true;
                        guest_call(|| plane.close())
                    }
                    Err(_) => {
                        summary.ending = Ending::RequestTimeout;
                        break;
                    }
                    Ok(Ok(0)) => {
                        eof = true;
                        guest_call(|| plane.end_of_stream())
                    }
                    Ok(Ok(n)) => {
                        summary.bytes_in += n as u64;
                        fresh = false;
                        request_since.get_or_insert_with(Instant::now);
                        let step = guest_call(|| plane.receive(&buf[..n]));
                        grow_after_full_read(&mut buf, n);
                        step
                    }
                    Ok(Err(e)) => {
                        summary.ending = Ending::Transport(e.to_string());
                        break;
                    }
                }
            },
            _ = handle.shed.notified() => {
                summary.ending = Ending::Shed;
                closing = true;
                guest_call(|| plane.close())
            }
            _ = control.shutdown.changed(), if !closing && draining.is_none() => {
                if d.idle && !fresh {
                    summary.ending = Ending::Shutdown;
                    closing = true;
                    guest_call(|| plane.close())
                } else {
                    draining = Some(control.drain_deadline());
                    // Nothing new: the session carries on as it was.
                    Ok(Delivery::default())
                }
            }
            () = sleep_until_some(draining), if !closing && draining.is_some() => {
                summary.ending = Ending::Shutdown;
                closing = true;
                guest_call(|| plane.close())
            }
        };
    }
    handle.set_idle(control.epoch, false);
    let _ = stream.shutdown().await;
    summary.duration = started.elapsed();
    summary
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The sessions a server (or a worker) is serving, so it can find the
/// longest-idle one when it is at its cap.
#[derive(Default)]
pub struct Sessions {
    handles: Mutex<HashMap<u64, Arc<SessionHandle>>>,
}

impl Sessions {
    /// Registers session `id`; it starts busy.
    pub fn insert(&self, id: u64) -> Arc<SessionHandle> {
        let handle = Arc::new(SessionHandle::default());
        self.lock().insert(id, handle.clone());
        handle
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionHandle>>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the longest-idle connection to close; false if none is idle.
    /// Busy connections (mid-handshake, mid-request, writing) are never
    /// chosen.
    pub fn shed_longest_idle(&self) -> bool {
        let mut idle: Vec<(u64, Arc<SessionHandle>)> = self
            .lock()
            .values()
            .filter_map(|handle| handle.idle_since_ms().map(|ms| (ms, handle.clone())))
            .collect();
        idle.sort_by_key(|(ms, _)| *ms);
        idle.into_iter()
            .any(|(ms, handle)| handle.shed_if_idle_since(ms))
    }
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A connection id unique across this host's processes: a counter, with
/// the process id above it.
pub(crate) fn new_connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed) | (u64::from(std::process::id()) << 40)
}

/// Writes the per-connection log line. `ending` is the same word as the
/// metrics' `ending` label; `detail`, quoted, says more where there is more
/// to say (a value with spaces is always quoted, so the line splits on
/// spaces between fields).
pub(crate) fn log_session(
    peer: &str,
    facts: &Facts,
    summary: &SessionSummary,
    resumed: bool,
    handoff: Duration,
    total: Duration,
) {
    let version = facts.version.name();
    let detail: Option<String> = match &summary.ending {
        Ending::Clean | Ending::Peer(Closed::CloseNotify) => None,
        Ending::Peer(Closed::Truncated) => Some("EOF without close_notify".into()),
        Ending::Peer(Closed::PeerAlert(d)) => Some(format!("peer alert {d}")),
        Ending::Peer(Closed::LocalAlert(a)) => Some(format!("sent alert {a}")),
        Ending::Shutdown => Some("server shutdown".into()),
        Ending::Shed => Some("closed while idle to admit a client at the cap".into()),
        Ending::KeepaliveTimeout => None,
        Ending::RequestTimeout => Some("peer stalled mid-request".into()),
        Ending::WriteTimeout => Some("peer stopped reading".into()),
        Ending::GuestFailed { reason: e, .. } => {
            tracing::warn!(peer = %peer, error = %e, "guest failed; its connection is closed, the server carries on");
            Some(format!("guest failed: {e}"))
        }
        Ending::Transport(e) => Some(format!("transport error: {e}")),
        Ending::Backend(e) => Some(format!("backend: {e}")),
    };
    tracing::info!(
        peer = %peer,
        version,
        suite = %facts.suite,
        sni = facts.server_name.as_deref().unwrap_or("-"),
        resumed,
        bytes_in = summary.bytes_in,
        bytes_out = summary.bytes_out,
        handoff_us = handoff.as_micros() as u64,
        duration_ms = total.as_millis() as u64,
        ending = %summary.ending.kind().as_str(),
        detail = detail.as_deref(),
        "connection"
    );
}
