//! Serving a connection with a composed `wasi:http` component
//! ([`crate::compose`]): the `keyferry:dataplane/transport` import, through
//! which the guest pulls ciphertext and pushes records, and the one call
//! that serves the connection.
//!
//! A `wasi:http` 0.2 handler is a plain call that may wait for the request
//! body or a timer in the middle, so the guest drives the connection: the
//! host's part is a byte stream ([`Transport`]) it blocks on. Everything
//! that crosses here is ciphertext, a length or a time; request and
//! response bytes stay in the guest (DESIGN section 9). What the component
//! prints is the exception, as with any host: it goes to the embedder's
//! log through [`Transport::print`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, Lower};

use crate::sandbox::{EPOCH_TICK, ExecutionBound, StoreState};

/// Why the transport could not do what the guest asked.
#[derive(ComponentType, Lift, Lower, Debug, Clone, Copy, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
pub enum TransportError {
    /// The peer closed or reset the connection.
    #[component(name = "closed")]
    Closed,
    /// The peer sent or read nothing for the timeout that applies.
    #[component(name = "timeout")]
    Timeout,
    /// The server is shutting down, or closed the connection to make room.
    #[component(name = "shutdown")]
    Shutdown,
}

/// Which of the component's outputs a line came from.
#[derive(ComponentType, Lift, Lower, Debug, Clone, Copy, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
pub enum Output {
    /// Standard output.
    #[component(name = "stdout")]
    Stdout,
    /// Standard error.
    #[component(name = "stderr")]
    Stderr,
}

/// How the guest's HTTP codec serves a connection.
#[derive(ComponentType, Lift, Lower, Debug, Clone, Copy, PartialEq, Eq)]
#[component(record)]
pub struct HttpConfig {
    /// Largest request head (request line and headers): 431 past it.
    #[component(name = "max-head")]
    pub max_head: u32,
    /// Largest request body: 413 past it.
    #[component(name = "max-body")]
    pub max_body: u64,
    /// Each request after the first in a fresh instance, for components
    /// that assume Spin's semantics (a new instance per request).
    #[component(name = "instance-per-request")]
    pub instance_per_request: bool,
}

impl Default for HttpConfig {
    /// nginx's header buffers (4 x 8 KiB), 1 GiB of body, and an instance
    /// per connection (its keep-alive requests).
    fn default() -> Self {
        Self {
            max_head: 32 << 10,
            max_body: 1 << 30,
            instance_per_request: false,
        }
    }
}

/// The byte stream under a served connection, as the embedder provides
/// it. Calls block: the guest waits in them. The timeouts (keep-alive,
/// request, write) and the server's shutdown are the implementation's to
/// apply, and to report as [`TransportError`].
pub trait Transport: Send {
    /// Reads ciphertext into `buf`, waiting for at least one byte; 0 is
    /// EOF. `idle`: no request is in progress (the keep-alive timeout
    /// applies, and a server may close the connection to make room).
    fn read(&mut self, buf: &mut [u8], idle: bool) -> Result<usize, TransportError>;

    /// Writes all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), TransportError>;

    /// Waits until bytes can be read (when `readable`) or until `until`,
    /// whichever comes first; true when bytes can be read. A guest that
    /// waits here is in the middle of a request (a handler sleeping, or
    /// waiting for a body): the request timeout bounds it.
    fn wait(&mut self, readable: bool, until: Option<Instant>) -> Result<bool, TransportError>;

    /// A line the component printed to `output`.
    fn print(&mut self, output: Output, line: &[u8]);

    /// The front answered a request (for the access log). Ignored unless
    /// the transport logs requests.
    fn answered(&mut self, _request: crate::access_log::RequestSummary) {}
}

/// What the host keeps for a connection being served.
pub(crate) struct HttpState {
    transport: Box<dyn Transport>,
    /// Records to send if the guest fails before its next write.
    armed: Option<Vec<u8>>,
    bound: ExecutionBound,
    bytes_in: u64,
    bytes_out: u64,
    /// Where the guest parked the connection, if it did.
    parked: Option<Parked>,
}

/// Where a connection was parked: what the wait for the peer's next bytes
/// is bounded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Between requests: the keep-alive timeout; the server may close it
    /// to make room.
    Idle,
    /// In the middle of a request head: the head must be whole within the
    /// request timeout of its first byte (nginx's `client_header_timeout`),
    /// however slowly its bytes come.
    MidHead,
}

/// A connection served by a composed `wasi:http` component
/// ([`crate::DataPlane::serve_http`]), ended or parked.
pub struct HttpServed {
    /// The transport, for the next call when the connection is parked.
    pub transport: Box<dyn Transport>,
    /// The connection's plane once it ended, in the instance that served
    /// it last; `None` if moving it to a fresh instance failed (the error
    /// says why).
    pub plane: Option<crate::DataPlane>,
    /// A guest failure, or a failed move to a fresh instance.
    pub result: crate::Result<()>,
    /// Bytes, instances, and whether the reserve 500 went out.
    pub outcome: HttpOutcome,
}

/// How a served connection went.
#[derive(Debug)]
pub struct HttpOutcome {
    /// Ciphertext bytes read from the peer.
    pub bytes_in: u64,
    /// Ciphertext bytes written to the peer.
    pub bytes_out: u64,
    /// The guest failed, and the host sent the 500 the guest had sealed in
    /// reserve (nothing else had gone out since).
    pub fault_response_sent: bool,
    /// Instances that served the connection (more than one with
    /// `instance_per_request`).
    pub instances: u32,
    /// The guest waits for the peer's next bytes: call
    /// [`crate::DataPlane::serve_http`] again once they arrive (or
    /// [`crate::DataPlane::close`] the connection), holding no thread
    /// meanwhile.
    pub parked: Option<Parked>,
}

/// The origin of the guest's monotonic clock, shared by every store.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

const INTERFACE: &str = "keyferry:dataplane/transport@0.1.0";

/// The longest single read the guest may ask for.
const MAX_READ: usize = 256 << 10;

thread_local! {
    /// Where ciphertext is read before it is lifted into the guest.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Adds `keyferry:dataplane/transport` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut i = linker.root();
    let mut i = i.instance(INTERFACE)?;
    i.func_wrap("config", |cx: StoreContextMut<'_, StoreState>, (): ()| {
        Ok((cx.data().http_config,))
    })?;
    i.func_wrap(
        "read",
        |mut cx: StoreContextMut<'_, StoreState>, (max, idle): (u32, bool)| {
            let result = match state(&mut cx) {
                None => Err(TransportError::Closed),
                Some(s) => {
                    // One buffer per thread: a fresh, zeroed 64 KiB for
                    // every read of a short request is waste, and a buffer
                    // per connection would stay with idle ones.
                    let want = (max as usize).clamp(1, MAX_READ);
                    READ_BUF.with_borrow_mut(|buf| {
                        if buf.len() < want {
                            buf.resize(want, 0);
                        }
                        s.transport.read(&mut buf[..want], idle).map(|n| {
                            s.bytes_in += n as u64;
                            buf[..n].to_vec()
                        })
                    })
                }
            };
            rearm(&mut cx);
            Ok((result,))
        },
    )?;
    i.func_wrap(
        "write",
        |mut cx: StoreContextMut<'_, StoreState>, (ciphertext,): (Vec<u8>,)| {
            let result = match state(&mut cx) {
                None => Err(TransportError::Closed),
                Some(s) => {
                    // The reserve's sequence numbers are spent by this
                    // write: it may never go out now.
                    s.armed = None;
                    s.transport.write_all(&ciphertext).map(|()| {
                        s.bytes_out += ciphertext.len() as u64;
                    })
                }
            };
            rearm(&mut cx);
            Ok((result,))
        },
    )?;
    i.func_wrap(
        "wait",
        |mut cx: StoreContextMut<'_, StoreState>, (readable, deadline): (bool, Option<u64>)| {
            let result = match state(&mut cx) {
                None => Err(TransportError::Closed),
                Some(s) => {
                    let until = deadline.map(|ns| origin() + Duration::from_nanos(ns));
                    s.transport.wait(readable, until)
                }
            };
            rearm(&mut cx);
            Ok((result,))
        },
    )?;
    i.func_wrap("now", |_: StoreContextMut<'_, StoreState>, (): ()| {
        Ok((now_ns(),))
    })?;
    i.func_wrap(
        "unix-seconds",
        |_: StoreContextMut<'_, StoreState>, (): ()| {
            let seconds = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Ok((seconds,))
        },
    )?;
    i.func_wrap(
        "park",
        |mut cx: StoreContextMut<'_, StoreState>, (idle,): (bool,)| {
            if let Some(s) = state(&mut cx) {
                s.parked = Some(if idle { Parked::Idle } else { Parked::MidHead });
            }
            Ok(())
        },
    )?;
    i.func_wrap(
        "arm-fault-response",
        |mut cx: StoreContextMut<'_, StoreState>, (records,): (Vec<u8>,)| {
            // Whole records, checked as every record a guest hands over is.
            if let Some(s) = state(&mut cx)
                && keyferry_record::framing::count_records(&records).is_some()
            {
                s.armed = Some(records);
            }
            Ok(())
        },
    )?;
    i.func_wrap(
        "print",
        |mut cx: StoreContextMut<'_, StoreState>, (output, line): (Output, Vec<u8>)| {
            if let Some(s) = state(&mut cx) {
                s.transport.print(output, &line);
            }
            Ok(())
        },
    )?;
    Ok(())
}

fn state<'a>(cx: &'a mut StoreContextMut<'_, StoreState>) -> Option<&'a mut HttpState> {
    cx.data_mut().http.as_deref_mut()
}

/// Gives the guest its whole execution bound again after a host call that
/// may have waited: the bound limits computing between waits, not how
/// long a connection lasts.
fn rearm(cx: &mut StoreContextMut<'_, StoreState>) {
    let Some(bound) = cx.data().http.as_ref().map(|s| s.bound) else {
        return;
    };
    match bound {
        ExecutionBound::Fuel(fuel) => {
            let _ = cx.set_fuel(fuel);
        }
        ExecutionBound::Deadline(limit) => {
            let ticks = (limit.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1;
            cx.set_epoch_deadline(ticks);
        }
    }
}

impl HttpState {
    /// The front answered a request: its transport hears of it.
    pub(crate) fn answered(&mut self, request: crate::access_log::RequestSummary) {
        self.transport.answered(request);
    }

    pub(crate) fn new(transport: Box<dyn Transport>, bound: ExecutionBound) -> Self {
        Self {
            transport,
            armed: None,
            bound,
            bytes_in: 0,
            bytes_out: 0,
            parked: None,
        }
    }

    /// After the serve call: on a failure, the reserve goes out if nothing
    /// was written since it was sealed.
    pub(crate) fn finish(mut self, failed: bool) -> (HttpOutcome, Box<dyn Transport>) {
        let mut fault_response_sent = false;
        if failed && let Some(records) = self.armed.take() {
            fault_response_sent = self.transport.write_all(&records).is_ok();
            if fault_response_sent {
                self.bytes_out += records.len() as u64;
            }
        }
        let outcome = HttpOutcome {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            fault_response_sent,
            instances: 1,
            parked: self.parked,
        };
        (outcome, self.transport)
    }
}
