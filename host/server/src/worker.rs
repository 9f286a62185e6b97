//! The unprivileged side of `serve`'s process split: a data-plane worker.
//!
//! A worker is a fresh `exec` of the binary, started by the handshake
//! process ([`crate::monitor`]) with one channel ([`crate::channel`]) as
//! its standard input. It never sees the certificate's private key or its
//! file: it publishes its own key-exchange key, keeps a few guest instances
//! ready, and serves the connections handed to it (the socket, blobs sealed
//! in the HPKE session the handshake process opened to it, the handshake
//! facts), one instance per connection, each blob wrapped again for its
//! instance. It never handshakes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use rustix::thread::{CapabilitySet, CapabilitySets};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use keyferry_record::blob::{ExchangeKeyPair, SessionReceiver};
use keyferry_record::record::TrafficKeyMaterial;

use crate::channel::{
    Assignment, Backend, Channel, ChannelError, ConnectionReport, FromWorker, ToWorker,
};
use crate::ending::ConnectionOutcome;
use crate::forward::Upstream;
use crate::ready::{InstancePool, READY_INSTANCES, Refill};
use crate::session::serve_attached;
use crate::transport::{SessionControl, Sessions, Timeouts, guest_call};
use keyferry::component::GuestComponent;
use keyferry::dataplane::DataPlane;
use keyferry::export::ConnectionKeys;
use keyferry::handshake::Handoff;
use keyferry::instance::{ExchangeKey, GuestInstance};

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The channel to the handshake process failed or carried a frame the
    /// protocol does not allow.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// The handshake process named an instance this worker never offered.
    #[error("connection for unknown instance {0}")]
    UnknownSlot(u32),
    /// The handshake process sent a connection before opening the blob
    /// session, or opened a second one.
    #[error("blob session out of order")]
    Session,
    /// Dropping privileges or closing inherited descriptors failed.
    #[error("hardening the worker: {0}")]
    Harden(std::io::Error),
    /// Started as root with no unprivileged user to become (or with uid 0
    /// as that user): a worker never runs as root.
    #[error("a worker never runs as uid 0: give it an unprivileged user")]
    RunsAsRoot,
    /// Confinement could not be set up, or a privilege drop did not hold.
    #[error("confining the worker: {0}")]
    Confine(#[from] crate::confine::ConfineError),
    /// The sandbox could not make an instance.
    #[error(transparent)]
    Guest(#[from] keyferry::Error),
}

/// Takes the worker down to what it needs, first thing after `exec`,
/// before any other thread exists: closes every inherited descriptor but
/// standard input (the channel), output and error; sets no-new-privs; and,
/// when started as root, drops to `user` (uid, gid) with no supplementary
/// groups, and checks the drop ([`crate::confine::verify_dropped`]). A
/// worker never runs as uid 0: started as root without a user to become,
/// or with uid 0 as that user, it refuses to start. Per-thread credential
/// calls are process-wide here because the process still has one thread.
///
/// What the worker reads from the file system (its guest) it reads after
/// this; then [`crate::confine::confine_worker`] shuts it in.
pub fn harden(user: Option<(u32, u32)>) -> Result<(), WorkerError> {
    let harden = |e: rustix::io::Errno| WorkerError::Harden(e.into());
    close_inherited_descriptors().map_err(WorkerError::Harden)?;
    if rustix::process::geteuid().is_root() || rustix::process::getuid().is_root() {
        let (uid, gid) = match user {
            Some((uid, gid)) if uid != 0 && gid != 0 => (uid, gid),
            _ => return Err(WorkerError::RunsAsRoot),
        };
        // Only what the drop below needs. Without CAP_SYS_ADMIN the
        // pagemap opened next shows no physical frame numbers, and the
        // descriptor keeps what it was opened with.
        let drop_only = CapabilitySet::SETUID | CapabilitySet::SETGID;
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: drop_only,
                permitted: drop_only,
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(harden)?;
        rustix::thread::clear_ambient_capability_set().map_err(harden)?;
        open_pagemap();
        let gid = rustix::process::Gid::from_raw(gid);
        let uid = rustix::process::Uid::from_raw(uid);
        rustix::thread::set_thread_groups(&[]).map_err(harden)?;
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(harden)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(harden)?;
        crate::confine::verify_dropped()?;
    }
    // Opens it now if the drop above did not (a no-op if it did).
    open_pagemap();
    rustix::thread::set_no_new_privs(true).map_err(harden)?;
    Ok(())
}

/// Descriptors a worker may hold beyond one per connection: standard
/// streams, the channel, the runtime's, wasmtime's.
const SPARE_DESCRIPTORS: u64 = 64;

/// Caps the descriptors this worker may ever hold (soft and hard limit) at
/// one per connection it may serve, plus a few. The handshake process
/// counts a connection's place under the cap free when the worker reports
/// it done; a compromised worker could report early and keep the socket,
/// and this bounds how many it can keep: it cannot raise a hard limit.
pub fn limit_descriptors(max_connections: usize) -> Result<(), WorkerError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE_DESCRIPTORS);
    let limit = getrlimit(Resource::Nofile)
        .maximum
        .map_or(wanted, |hard| hard.min(wanted));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .map_err(|e| WorkerError::Harden(e.into()))
}

/// Opens this process's `/proc/self/pagemap` for wasmtime's pooling
/// allocator, which then resets a finished instance's memory by rewriting
/// only the pages it dirtied ([`keyferry::engine`]). wasmtime opens the file
/// once per process, on first use; after a drop from root the process is
/// no longer dumpable, its `/proc/self` files belong to root, and the open
/// would fail, so it is done before the drop.
fn open_pagemap() {
    let available = wasmtime::PoolingAllocationConfig::is_pagemap_scan_available();
    tracing::debug!(available, "pagemap scan for instance reset");
}

/// Closes descriptors above 2 other than the channel. The handshake process
/// passes only 0-2 (everything else it holds is close-on-exec), so this
/// finds nothing unless the worker was started some other way.
fn close_inherited_descriptors() -> std::io::Result<()> {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in open {
        // The listing's own descriptor is closed by now; anything else
        // still open was inherited.
        if rustix::io::fcntl_getfd(borrowed(fd)).is_ok() {
            close_raw(fd);
        }
    }
    Ok(())
}

#[allow(
    unsafe_code,
    reason = "a descriptor inherited across exec is owned by nothing in this process yet"
)]
fn borrowed(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only to query `fd` right after checking /proc lists it,
    // before anything in this process could close it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

#[allow(
    unsafe_code,
    reason = "a descriptor inherited across exec is owned by nothing in this process yet"
)]
fn close_raw(fd: i32) {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is open (checked) and was inherited across exec, so no
    // object in this process owns it; taking ownership and dropping it
    // closes it exactly once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// What a worker serves connections with: [`WorkerOptions::new`], then
/// `with_*` steps.
#[non_exhaustive]
pub struct WorkerOptions {
    /// The application component.
    pub component: GuestComponent,
    /// Keep-alive, request and write timeouts.
    pub timeouts: Timeouts,
    /// How long to wait for sessions after shutdown before leaving.
    pub drain_timeout: Duration,
    /// `--access-log`: a line per request the application reports.
    pub access_log: Option<Arc<crate::access::AccessLog>>,
}

impl WorkerOptions {
    /// Serves connections with `component`: nginx's timeouts, 5 s to drain.
    pub fn new(component: GuestComponent) -> Self {
        Self {
            component,
            timeouts: Timeouts::default(),
            drain_timeout: Duration::from_secs(5),
            access_log: None,
        }
    }

    /// Logs each request the application reports.
    pub fn with_access_log(mut self, access_log: Arc<crate::access::AccessLog>) -> Self {
        self.access_log = Some(access_log);
        self
    }

    /// Keep-alive, request and write timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// How long to wait for sessions after shutdown before leaving.
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }
}

/// Serves connections from the handshake process on `channel` until it
/// says shut down or goes away, then closes every session with
/// close_notify (up to the drain timeout).
pub async fn run(channel: OwnedFd, options: WorkerOptions) -> Result<(), WorkerError> {
    let channel = Arc::new(Channel::new(channel).map_err(ChannelError::from)?);
    let (to_monitor, mut outbox) = mpsc::unbounded_channel::<FromWorker>();
    let writer = {
        let channel = channel.clone();
        tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                if channel.send(&frame.encode(), &[]).await.is_err() {
                    break;
                }
            }
        })
    };
    // This worker's key-exchange key, for its whole life: the handshake
    // process sets up one HPKE session to it.
    let keys = ExchangeKeyPair::generate();
    let _ = to_monitor.send(FromWorker::Hello {
        exchange: ExchangeKey {
            id: keys.key_id(),
            public_key: keys.public_key(),
        },
    });
    let mut session: Option<SessionReceiver> = None;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let shared = Arc::new(WorkerContext {
        sessions: Sessions::default(),
        instances: InstancePool::fresh(
            options.component.clone(),
            READY_INSTANCES,
            Refill::Announced,
            // Counted by the handshake process, from the announcements.
            Gauge::default(),
        ),
        epoch: Instant::now(),
        timeouts: options.timeouts,
        drain_timeout: options.drain_timeout,
        access_log: options.access_log.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let result = loop {
        // Announced in one frame; the handshake process picks among them.
        if shared.instances.wants_refill() {
            let instances = guest_call(|| shared.instances.refill_now())?;
            if !instances.is_empty() {
                let _ = to_monitor.send(FromWorker::Ready { instances });
            }
        }
        let (frame, mut fds) = match channel.recv().await {
            Ok(f) => f,
            Err(ChannelError::Closed) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        // The client's socket, then the backend's when it was connected.
        let backend_fd = (fds.len() == 2).then(|| fds.pop()).flatten();
        let socket = fds.pop();
        match (ToWorker::decode(&frame), socket) {
            (Ok(ToWorker::Session { encapsulated }), None) if backend_fd.is_none() => {
                if session.is_some() {
                    break Err(WorkerError::Session);
                }
                keyferry::install_blob_aead();
                match SessionReceiver::new(&keys, &encapsulated) {
                    Ok(s) => session = Some(s),
                    Err(e) => break Err(keyferry::Error::from(e).into()),
                }
            }
            (Ok(ToWorker::Connection(mut assignment)), Some(socket))
                if backend_fd.is_some() == (assignment.backend == Backend::Connected) =>
            {
                let Some(guest) = shared.instances.take_announced(assignment.instance) else {
                    break Err(WorkerError::UnknownSlot(assignment.instance));
                };
                let Some(receiver) = session.as_mut() else {
                    break Err(WorkerError::Session);
                };
                // Open both blobs here, in order: the session refuses a
                // counter it has passed, so none opens twice.
                let keys = open_pair(receiver, &mut assignment);
                let done = to_monitor.clone();
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    let id = assignment.connection_id;
                    // Boxed, as `front::accept_all` boxes its connections:
                    // the task's future is then small, and tokio's copies
                    // of it cheap.
                    let report = Box::pin(serve_connection(
                        (*assignment, keys),
                        (socket, backend_fd),
                        guest,
                        &shared,
                        shutdown,
                    ))
                    .await;
                    let _ = done.send(FromWorker::Done {
                        connection_id: id,
                        report,
                    });
                });
            }
            (Ok(ToWorker::ShedIdle), None) if backend_fd.is_none() => {
                let closed = shared.sessions.shed_longest_idle();
                let _ = to_monitor.send(FromWorker::Shed { closed });
            }
            (Ok(ToWorker::Shutdown), None) if backend_fd.is_none() => break Ok(()),
            (Ok(_), _) => break Err(ChannelError::Descriptor.into()),
            (Err(e), _) => break Err(e.into()),
        }
        while tasks.try_join_next().is_some() {}
    };
    let _ = shutdown_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(options.drain_timeout, drain)
        .await
        .is_err()
    {
        warn!("sessions still open after the drain timeout; closing them");
    }
    drop(to_monitor);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    result
}

/// What every connection a worker serves shares.
struct WorkerContext {
    sessions: Sessions,
    /// Instances ready for the connections to come, announced to the
    /// handshake process; those of ended connections are dropped a batch
    /// at a time.
    instances: Arc<InstancePool>,
    /// When the worker started: session instances keep time from it.
    epoch: Instant,
    timeouts: Timeouts,
    drain_timeout: Duration,
    access_log: Option<Arc<crate::access::AccessLog>>,
}

/// A TCP socket handed over the channel, for tokio.
fn tcp_stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// Opens a connection's two blobs from the handshake process. The blobs
/// are spent either way.
fn open_pair(receiver: &mut SessionReceiver, a: &mut Assignment) -> Opened {
    let seal = std::mem::take(&mut a.seal_blob);
    let open = std::mem::take(&mut a.open_blob);
    let (_, seal) = receiver.open_traffic_key(&seal)?;
    let (_, open) = receiver.open_traffic_key(&open)?;
    Ok((seal, open))
}

/// A connection's two keys as its blobs opened, seal then open.
type Opened = keyferry::Result<(TrafficKeyMaterial, TrafficKeyMaterial)>;

async fn serve_connection(
    (a, keys): (Assignment, Opened),
    (socket, backend_fd): (OwnedFd, Option<OwnedFd>),
    guest: GuestInstance,
    shared: &WorkerContext,
    shutdown: watch::Receiver<bool>,
) -> ConnectionReport {
    let started = Instant::now();
    let unserved = |e: Option<&keyferry::Error>| ConnectionReport {
        outcome: ConnectionOutcome::unserved(e),
        attach_us: None,
    };
    let std_stream = std::net::TcpStream::from(socket);
    let stream = std_stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(std_stream));
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            warn!(peer = %a.peer, error = %e, "handed a socket tokio cannot use");
            return unserved(None);
        }
    };
    let upstream = match (&a.backend, backend_fd) {
        (Backend::None, _) => None,
        (Backend::Failed(reason), _) => Some(Upstream::Failed(reason.clone())),
        (Backend::Connected, Some(fd)) => Some(match tcp_stream(fd) {
            Ok(s) => Upstream::Connected(s),
            Err(e) => Upstream::Failed(format!("handed a backend socket tokio cannot use: {e}")),
        }),
        (Backend::Connected, None) => Some(Upstream::Failed("no backend socket".into())),
    };
    // Wrapped again for the instance it goes to (blob format 2); the
    // material is wiped when the handoff drops.
    let attached = keys.and_then(|(seal, open)| {
        let handoff = Handoff {
            keys: ConnectionKeys {
                version: seal.version,
                aead: seal.aead,
                seal,
                open,
            },
            facts: a.facts,
            kernel: None,
            resumed: a.resumed,
        };
        guest_call(|| DataPlane::new(guest, handoff))
    });
    let (plane, first) = match attached {
        Ok(p) => p,
        Err(e) => {
            crate::session::refuse_unattached(&mut stream, &a.peer, &e).await;
            return unserved(Some(&e));
        }
    };
    let ready = started.elapsed();
    let handle = shared.sessions.insert(a.connection_id);
    let control = SessionControl {
        shutdown,
        handle,
        epoch: shared.epoch,
        timeouts: shared.timeouts,
        drain_timeout: shared.drain_timeout,
        access_log: shared.access_log.clone(),
    };
    let (summary, guest) = serve_attached(
        &mut stream,
        plane,
        (first, upstream),
        control,
        &a.peer,
        a.read_with_handshake,
        (ready, started),
    )
    .await;
    shared.sessions.remove(a.connection_id);
    // Its instance is dropped with the next batch.
    if let Some(guest) = guest {
        shared.instances.retire(guest);
    }
    ConnectionReport {
        outcome: ConnectionOutcome::from(&summary),
        attach_us: Some(u64::try_from(ready.as_micros()).unwrap_or(u64::MAX - 1)),
    }
}
