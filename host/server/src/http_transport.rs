//! A connection served by a composed `wasi:http` component: the socket
//! as the guest's blocking [`Transport`], with the server's timeouts,
//! shutdown and shedding, while the guest drives the connection (DESIGN
//! section 9).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyferry::dataplane::{DataPlane, Delivery};
use keyferry::http_serve::{Output, Parked, Transport, TransportError};
use rustix::event::{PollFd, PollFlags};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::ending::{Ending, SessionSummary};
use crate::transport::SessionControl;

/// How often a waiting transport looks at shutdown and shedding.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Lines a connection's component may print per second; the rest are
/// counted and dropped (a component must not flood the log).
const PRINT_BUDGET: u32 = 100;

/// The socket, as a served component's guest sees it.
struct SocketTransport {
    fd: OwnedFd,
    control: SessionControl,
    peer: String,
    /// Why the transport ended the connection, for the log line.
    ending: Arc<Mutex<Option<Ending>>>,
    printed: (Instant, u32, u64),
    /// Nanoseconds spent waiting on the peer or a timer, so far: not
    /// computing, and the runtime's other connections were elsewhere.
    waited: Arc<AtomicU64>,
    /// `--access-log`, and when the request in progress began: its first
    /// bytes read after an idle wait, or the previous answer.
    requests: Option<(crate::access::ConnectionLog, Instant)>,
    /// Bytes came from the peer after the handshake: it has sent a
    /// request. One that has not is not closed at shutdown while idle
    /// (its first request may be on its way), as nginx serves a new
    /// connection's first request through a graceful stop.
    read_any: bool,
}

impl SocketTransport {
    fn end(&self, ending: Ending, error: TransportError) -> TransportError {
        let mut slot = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(ending);
        error
    }

    /// Waits for `flags` on the socket until `deadline`: true when ready,
    /// false at the deadline.
    fn poll_until(
        &mut self,
        flags: PollFlags,
        deadline: Instant,
        idle: bool,
    ) -> Result<bool, TransportError> {
        if idle {
            self.control.handle.set_idle(self.control.epoch, true);
        }
        let waiting = Instant::now();
        let result = off_the_runtime(|| {
            loop {
                // A request in progress is finished through a shutdown (the
                // drain timeout bounds it); an idle wait ends at once.
                if idle && self.read_any && *self.control.shutdown.borrow() {
                    break Err(self.end(Ending::Shutdown, TransportError::Shutdown));
                }
                if idle && self.control.handle.idle_since_ms().is_none() {
                    // The server claimed this idle connection to make room.
                    break Err(self.end(Ending::Shed, TransportError::Shutdown));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() && !flags.is_empty() {
                    break Ok(false);
                }
                let slice = left.min(CHECK_EVERY);
                if flags.is_empty() {
                    std::thread::sleep(slice);
                    if Instant::now() >= deadline {
                        break Ok(false);
                    }
                    continue;
                }
                let timeout = rustix::time::Timespec {
                    tv_sec: slice.as_secs() as i64,
                    tv_nsec: i64::from(slice.subsec_nanos()),
                };
                let mut fds = [PollFd::new(&self.fd, flags)];
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => {}
                    Ok(_) => break Ok(true),
                    Err(e) => {
                        break Err(
                            self.end(Ending::Transport(e.to_string()), TransportError::Closed)
                        );
                    }
                }
            }
        });
        let waited = u64::try_from(waiting.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited.fetch_add(waited, Ordering::Relaxed);
        if idle {
            self.control.handle.set_idle(self.control.epoch, false);
        }
        result
    }
}

/// Runs a wait that blocks this thread. Guest calls run on a runtime
/// thread ([`crate::transport::guest_call`]), so a guest that waits in the
/// middle of a request (a handler's timer, a body still coming) hands the
/// runtime's other connections to another thread first; a call that never
/// waits costs no hand-off.
fn off_the_runtime<R>(wait: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

impl Transport for SocketTransport {
    fn read(&mut self, buf: &mut [u8], idle: bool) -> Result<usize, TransportError> {
        let (timeout, ending) = if idle {
            (self.control.timeouts.keepalive, Ending::KeepaliveTimeout)
        } else {
            (self.control.timeouts.request, Ending::RequestTimeout)
        };
        let deadline = Instant::now() + timeout;
        loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(n) => {
                    self.read_any |= n > 0;
                    if idle
                        && n > 0
                        && let Some((_, since)) = self.requests.as_mut()
                    {
                        *since = Instant::now();
                    }
                    return Ok(n);
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(self.end(Ending::Transport(e.to_string()), TransportError::Closed));
                }
            }
            if !self.poll_until(PollFlags::IN, deadline, idle)? {
                return Err(self.end(ending, TransportError::Timeout));
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.control.timeouts.write;
        while !bytes.is_empty() {
            match rustix::io::write(&self.fd, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                    if !self.poll_until(PollFlags::OUT, deadline, false)? {
                        return Err(self.end(Ending::WriteTimeout, TransportError::Timeout));
                    }
                }
                Err(e) => {
                    return Err(self.end(Ending::Transport(e.to_string()), TransportError::Closed));
                }
            }
        }
        Ok(())
    }

    fn wait(&mut self, readable: bool, until: Option<Instant>) -> Result<bool, TransportError> {
        // A request in progress: a handler's sleep or its wait for the
        // body is bounded by the request timeout.
        let cap = Instant::now() + self.control.timeouts.request;
        let deadline = until.map_or(cap, |u| u.min(cap));
        let flags = if readable {
            PollFlags::IN
        } else {
            PollFlags::empty()
        };
        if self.poll_until(flags, deadline, false)? {
            return Ok(true);
        }
        match until {
            Some(u) if u <= cap => Ok(false),
            _ => Err(self.end(Ending::RequestTimeout, TransportError::Timeout)),
        }
    }

    fn answered(&mut self, request: keyferry::access_log::RequestSummary) {
        if let Some((log, since)) = self.requests.as_mut() {
            log.request(&request, since.elapsed());
            *since = Instant::now();
        }
    }

    fn print(&mut self, output: Output, line: &[u8]) {
        let (since, count, dropped) = &mut self.printed;
        if since.elapsed() >= Duration::from_secs(1) {
            if *dropped > 0 {
                tracing::warn!(peer = %self.peer, dropped = *dropped, "component output over its budget was dropped");
            }
            *since = Instant::now();
            *count = 0;
            *dropped = 0;
        }
        if *count >= PRINT_BUDGET {
            *dropped += 1;
            return;
        }
        *count += 1;
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .take(4096)
            .collect();
        let stream = match output {
            Output::Stdout => "stdout",
            Output::Stderr => "stderr",
        };
        tracing::info!(target: "keyferry::component", peer = %self.peer, stream, "{text}");
    }
}

/// Why a parked connection's wait ended.
enum Wake {
    /// The peer sent bytes (or closed: the guest reads the EOF).
    Bytes,
    /// Nothing for the keep-alive timeout, or the head not whole within
    /// the request timeout.
    Timeout,
    /// The server closed the idle connection to admit a client.
    Shed,
    /// The server is shutting down.
    Shutdown,
    /// The socket failed.
    Failed(String),
}

/// Serves a connection attached to a composed `wasi:http` component: what
/// the handoff delivered goes out, then the guest drives the connection
/// while a request is in progress, on the runtime's thread until it must
/// wait in the middle of one. Between requests the
/// guest parks the connection and the wait for the next one happens here,
/// on the runtime, with no thread held: an idle keep-alive connection costs
/// its instance's memory and nothing else.
pub(crate) async fn serve_http(
    stream: &mut TcpStream,
    plane: DataPlane,
    first: Delivery,
    control: SessionControl,
    peer: &str,
    requests: Option<crate::access::ConnectionLog>,
) -> (SessionSummary, Option<DataPlane>) {
    let started = Instant::now();
    let mut summary = SessionSummary::starting();
    if !first.to_send.is_empty() {
        if let Err(e) = stream.write_all(&first.to_send).await {
            summary.ending = Ending::Transport(e.to_string());
            return (summary, Some(plane));
        }
        summary.bytes_out += first.to_send.len() as u64;
    }
    if first.done {
        summary.ending = first.closed.map_or(Ending::Clean, Ending::Peer);
        return (summary, Some(plane));
    }
    let fd = match rustix::io::fcntl_dupfd_cloexec(stream.as_fd(), 0) {
        Ok(fd) => fd,
        Err(e) => {
            summary.ending = Ending::Transport(e.to_string());
            return (summary, Some(plane));
        }
    };
    let drain_timeout = control.drain_timeout;
    // Set when shutdown finds a connection that has sent nothing yet: it
    // gets until then for its first request.
    let mut draining: Option<tokio::time::Instant> = None;
    let (mut shutdown, handle, epoch, keepalive, request_timeout) = (
        control.shutdown.clone(),
        control.handle.clone(),
        control.epoch,
        control.timeouts.keepalive,
        control.timeouts.request,
    );
    // When the request head in progress must be whole: set at the first
    // wait in the middle of a head, cleared when a request is served.
    let mut head_deadline: Option<tokio::time::Instant> = None;
    let ending = Arc::new(Mutex::new(None));
    let waited = Arc::new(AtomicU64::new(0));
    let mut transport: Box<dyn Transport> = Box::new(SocketTransport {
        fd,
        control,
        peer: peer.to_string(),
        ending: ending.clone(),
        printed: (Instant::now(), 0, 0),
        waited: waited.clone(),
        requests: requests.map(|log| (log, started)),
        read_any: false,
    });
    let mut plane = plane;
    let (plane, result, fault_response_sent) = loop {
        // On this runtime thread, as every guest call: the request is
        // usually here already, and a wait in the middle of one leaves the
        // runtime to the other connections (`SocketTransport::poll_until`).
        // Except when each request instantiates anew: that takes most of a
        // millisecond, which the other connections would wait out.
        let served = if plane.instance_per_request() {
            match tokio::task::spawn_blocking(move || plane.serve_http(transport)).await {
                Ok(done) => done,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        } else {
            crate::transport::guest_call_waiting(|| {
                let before = waited.load(Ordering::Relaxed);
                let served = plane.serve_http(transport);
                let after = waited.load(Ordering::Relaxed);
                (served, Duration::from_nanos(after.saturating_sub(before)))
            })
        };
        let keyferry::http_serve::HttpServed {
            transport: back,
            plane: served_plane,
            result,
            outcome,
        } = served;
        transport = back;
        summary.bytes_in += outcome.bytes_in;
        summary.bytes_out += outcome.bytes_out;
        let Some(served_plane) = served_plane else {
            break (None, result, outcome.fault_response_sent);
        };
        let parked = match outcome.parked {
            Some(parked) if result.is_ok() => parked,
            _ => break (Some(served_plane), result, outcome.fault_response_sent),
        };
        plane = served_plane;
        // Parked: wait for the peer's next bytes here, holding no thread.
        let idle = parked == Parked::Idle;
        if outcome.bytes_out > 0 {
            // A response went out: the head waited for before was whole.
            head_deadline = None;
        }
        let fresh = summary.bytes_in == 0;
        let until = if idle {
            head_deadline = None;
            let until = tokio::time::Instant::now() + keepalive;
            if fresh && *shutdown.borrow() {
                until.min(*draining.get_or_insert_with(|| {
                    tokio::time::Instant::now() + drain_timeout.mul_f64(0.9)
                }))
            } else {
                until
            }
        } else {
            *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + request_timeout)
        };
        let mut probe = [0u8; 1];
        if idle {
            handle.set_idle(epoch, true);
        }
        let wake = tokio::select! {
            peeked = tokio::time::timeout_at(until, stream.peek(&mut probe)) => match peeked {
                Ok(Ok(_)) => Wake::Bytes,
                Ok(Err(e)) => Wake::Failed(e.to_string()),
                Err(_) => Wake::Timeout,
            },
            _ = handle.shed.notified(), if idle => Wake::Shed,
            _ = shutdown.changed(), if idle && !fresh => Wake::Shutdown,
            () = crate::transport::sleep_until_some(draining), if draining.is_some() => Wake::Shutdown,
        };
        handle.set_idle(epoch, false);
        let ending = match wake {
            Wake::Bytes => continue,
            Wake::Timeout if idle => Ending::KeepaliveTimeout,
            Wake::Timeout => Ending::RequestTimeout,
            Wake::Shed => Ending::Shed,
            Wake::Shutdown => Ending::Shutdown,
            Wake::Failed(e) => Ending::Transport(e),
        };
        // Closed while waiting: close_notify, sealed in the guest.
        summary.ending = ending;
        if let Ok(closed) = crate::transport::guest_call(|| plane.close())
            && stream.write_all(&closed.to_send).await.is_ok()
        {
            summary.bytes_out += closed.to_send.len() as u64;
        }
        let _ = stream.shutdown().await;
        summary.duration = started.elapsed();
        return (summary, Some(plane));
    };
    // A response cut off by a fault must not pass for a whole one: reset
    // the connection (nginx does the same when an upstream fails
    // mid-response), rather than close it as a short body would be.
    let reset = result.is_err() && !fault_response_sent;
    summary.ending = match result {
        Err(e) => Ending::GuestFailed {
            reason: if fault_response_sent {
                format!("{e} (answered 500)")
            } else {
                e.to_string()
            },
            trap: e.trap(),
        },
        Ok(()) => ending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Ending::Clean),
    };
    if reset {
        let _ = rustix::net::sockopt::set_socket_linger(stream.as_fd(), Some(Duration::ZERO));
    } else {
        let _ = stream.shutdown().await;
    }
    summary.duration = started.elapsed();
    (summary, plane)
}
