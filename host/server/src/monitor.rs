//! The privileged side of `serve`'s process split: the handshake process.
//!
//! It holds the identity and the private key, accepts TCP, runs every
//! handshake, and hands each connection to a data-plane worker
//! ([`crate::worker`]): the socket by `SCM_RIGHTS`, the traffic keys as
//! blobs sealed in the HPKE session this process opened to the worker's
//! published key (one X25519 encapsulation per worker lifetime, a key
//! export per blob: blob format 3), the handshake facts, and what was read
//! past the handshake (inside the open key's blob). Workers are fresh `exec`s of the binary,
//! never forks of this process, so no page of the key is inherited; they
//! never open the key file.
//!
//! This side trusts no worker: every frame is typed and length-checked
//! ([`crate::channel`]), a worker that sends anything the protocol does not
//! allow is killed and replaced, and nothing a worker can say makes this
//! process sign, decrypt or reveal anything. A dead worker loses only its
//! own connections; the others, and accepting, carry on.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyferry_record::blob::SessionSender;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot, watch};
use tracing::{debug, info, warn};

use crate::channel::{Assignment, Backend, Channel, ChannelError, FromWorker, MAX_READY, ToWorker};
use crate::ending::ConnectionOutcome;
use crate::ending::EndingKind;
use crate::forward::Upstream;
use crate::front::{ADMISSION_WAIT, Established, FrontOptions, Placement, accept_all};
use crate::metrics::Metrics;
use keyferry::error::Result;
use keyferry::handshake::Handoff;

pub use crate::relay::LogFormat;

/// How to start a worker: this binary, in its worker mode.
/// [`WorkerCommand::new`], then `with_*` steps.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerCommand {
    /// The program (normally `std::env::current_exe()`).
    pub program: PathBuf,
    /// Its arguments, selecting worker mode and the worker's settings.
    pub args: Vec<OsString>,
    /// The format the worker logs in, this process's own: its lines are
    /// relayed into this process's log in that format. In JSON they are
    /// written to standard error as whole objects (`relay_stderr`).
    pub log_format: LogFormat,
}

impl WorkerCommand {
    /// Runs `program` with `args` (which select worker mode), logging text.
    pub fn new(program: PathBuf, args: Vec<OsString>) -> Self {
        Self {
            program,
            args,
            log_format: LogFormat::default(),
        }
    }

    /// The format workers log in: this process's own.
    pub fn with_log_format(mut self, log_format: LogFormat) -> Self {
        self.log_format = log_format;
        self
    }
}

/// Everything the handshake process needs: [`MonitorOptions::new`] with
/// the front's options and how to start a worker, then `with_*` steps.
#[derive(Clone)]
#[non_exhaustive]
pub struct MonitorOptions {
    /// TLS, the connection cap across all workers, PROXY, the handshake
    /// timeout, how long workers may take to close their sessions at
    /// shutdown, and where connections are counted (the workers report
    /// each connection's end).
    pub front: FrontOptions,
    /// How many workers to keep running.
    pub workers: usize,
    /// How to start one.
    pub command: WorkerCommand,
    /// Called once, when the first worker has an instance ready and
    /// connections start being taken (a service manager's readiness).
    pub on_serving: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl MonitorOptions {
    /// Hands connections made behind `front` to one worker started by
    /// `command`.
    pub fn new(front: FrontOptions, command: WorkerCommand) -> Self {
        Self {
            front,
            workers: 1,
            command,
            on_serving: None,
        }
    }

    /// How many workers to keep running (at least one).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Calls `on_serving` once a worker is ready and connections are
    /// taken: the moment to tell a service manager the server is ready.
    pub fn with_on_serving(mut self, on_serving: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.on_serving = Some(on_serving);
        self
    }
}

/// One running worker, as the handshake process sees it.
struct Worker {
    pid: u32,
    channel: Channel,
    state: Mutex<WorkerState>,
    /// The blob session to the worker, once it published its key. Held
    /// from sealing a connection's blobs until its frame is sent, so the
    /// worker sees the session's counters in order.
    blobs: tokio::sync::Mutex<Option<SessionSender>>,
    /// Tells the supervisor to cut the worker off.
    cut_off: Notify,
    /// Its ready instances, for the metrics.
    ready_level: Gauge,
}

/// How long handing a connection to a worker may take before the worker
/// is taken for stuck.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Workers in a row that die within [`QUICK_FAILURE`] of starting before
/// the handshake process gives up and stops: a crash loop serves nobody,
/// and a supervisor (systemd, Kubernetes) should see the failure.
const MAX_QUICK_FAILURES: u32 = 10;
/// A worker that dies sooner than this after starting failed quickly.
const QUICK_FAILURE: Duration = Duration::from_secs(2);

/// How long any other frame to a worker (its session, a shed request,
/// shutdown) may wait for room in the channel before the worker is cut
/// off: a worker that stops reading is never waited for.
const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a worker that closed its channel, or was killed, may take to
/// be reaped before it is killed (again) and left.
const REAP_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct WorkerState {
    /// Whether the worker has published its key.
    greeted: bool,
    /// The id of the key it published.
    exchange: Option<[u8; 16]>,
    /// Instances announced and not yet given a connection, oldest first.
    ready: VecDeque<u32>,
    /// Connections handed over and not yet reported done. Whoever removes
    /// one counts its ending, once.
    open: HashMap<u64, Handed>,
    /// Set when the worker is cut off: it gets nothing more.
    dead: bool,
    /// Who waits for the answer to each ShedIdle asked, in order, by the
    /// number each question got.
    shed_answers: VecDeque<(u64, oneshot::Sender<bool>)>,
    /// The number the next ShedIdle gets.
    next_question: u64,
}

/// A connection in a worker's hands.
struct Handed {
    /// Its place under the connection cap, given back when it ends.
    _permit: OwnedSemaphorePermit,
    /// When its handshake completed.
    handshake_done: Instant,
    /// How long sealing and sending it took after that.
    handing: Duration,
}

impl Worker {
    fn lock(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the worker dead and tells its supervisor to kill it.
    fn cut_off(&self) {
        self.lock().dead = true;
        self.cut_off.notify_one();
    }

    /// Sends a frame, waiting at most `timeout` for room in the channel. A
    /// worker that does not make room in time, or whose channel failed, is
    /// cut off; false then.
    async fn send_bounded(
        &self,
        frame: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
        timeout: Duration,
    ) -> bool {
        match tokio::time::timeout(timeout, self.channel.send(frame, fds)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) | Err(_) => {
                self.cut_off();
                false
            }
        }
    }

    /// Sends a control frame (no descriptor) within [`CONTROL_SEND_TIMEOUT`].
    async fn send_control(&self, frame: &ToWorker) -> bool {
        match frame.encode() {
            Ok(bytes) => self.send_bounded(&bytes, &[], CONTROL_SEND_TIMEOUT).await,
            Err(_) => false,
        }
    }

    /// Applies one frame from the worker; an error cuts the worker off.
    /// A hello is answered with the session it opens, which must reach
    /// the worker before anything else is sent to it.
    fn apply(
        &self,
        frame: FromWorker,
        metrics: &Metrics,
    ) -> std::result::Result<Option<(SessionSender, ToWorker)>, &'static str> {
        let mut state = self.lock();
        match frame {
            FromWorker::Hello { exchange } => {
                if state.greeted {
                    return Err("published its key twice");
                }
                state.greeted = true;
                state.exchange = Some(exchange.id);
                keyferry::install_blob_aead();
                let (sender, encapsulated) = SessionSender::new(&exchange.public_key)
                    .map_err(|_| "published a key that is not an X25519 public key")?;
                return Ok(Some((sender, ToWorker::Session { encapsulated })));
            }
            FromWorker::Ready { instances } => {
                if !state.greeted {
                    return Err("announced an instance before publishing its key");
                }
                for instance in instances {
                    if state.ready.len() >= MAX_READY {
                        return Err("announced too many ready instances");
                    }
                    if state.ready.contains(&instance) {
                        return Err("announced an instance twice");
                    }
                    state.ready.push_back(instance);
                }
                self.ready_level.set(state.ready.len() as i64);
            }
            FromWorker::Done {
                connection_id,
                report,
            } => {
                let Some(handed) = state.open.remove(&connection_id) else {
                    return Err("reported a connection it was never given");
                };
                if let Some(us) = report.attach_us {
                    metrics.handoff(handed.handing + Duration::from_micros(us));
                }
                metrics.connection_ended(&report.outcome);
            }
            FromWorker::Shed { closed } => {
                let Some((_, waiter)) = state.shed_answers.pop_front() else {
                    return Err("answered a question it was not asked");
                };
                let _ = waiter.send(closed);
            }
        }
        Ok(None)
    }
}

/// The running workers.
struct Pool {
    workers: Mutex<Vec<Option<Arc<Worker>>>>,
    next: AtomicUsize,
    ready: Notify,
    metrics: Arc<Metrics>,
    /// How long a worker told to shut down may take to exit.
    drain_timeout: Duration,
    /// Why the handshake process gave up on its workers, if it did.
    gave_up: Mutex<Option<String>>,
    /// Tells the accept loop to stop when a supervisor gives up.
    give_up: watch::Sender<bool>,
}

impl Pool {
    fn live(&self) -> Vec<Arc<Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .filter(|w| !w.lock().dead)
            .cloned()
            .collect()
    }

    /// Whether a live worker other than `worker` published the key `id`. A
    /// worker that publishes another's key could not open what is sealed
    /// to it, but is refused all the same: each key has one owner.
    fn published_by_another(&self, worker: &Arc<Worker>, id: &[u8; 16]) -> bool {
        self.live()
            .iter()
            .any(|other| !Arc::ptr_eq(other, worker) && other.lock().exchange == Some(*id))
    }

    /// Whether a live worker has an instance ready.
    fn any_ready(&self) -> bool {
        self.live().iter().any(|w| !w.lock().ready.is_empty())
    }

    /// Takes a ready instance, round-robin over the workers that have one.
    fn take_ready(&self) -> Option<(Arc<Worker>, u32)> {
        let live = self.live();
        if live.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..live.len()).find_map(|i| {
            let worker = &live[(start + i) % live.len()];
            let mut state = worker.lock();
            if state.dead {
                return None;
            }
            let instance = state.ready.pop_front()?;
            worker.ready_level.set(state.ready.len() as i64);
            drop(state);
            Some((worker.clone(), instance))
        })
    }

    /// Asks workers, most connections first, to close their longest-idle
    /// connection, until one has; true if one did.
    async fn shed_one(&self) -> bool {
        let mut workers = self.live();
        workers.sort_by_key(|w| std::cmp::Reverse(w.lock().open.len()));
        for worker in workers {
            let (tx, rx) = oneshot::channel();
            let question = {
                let mut state = worker.lock();
                if state.dead || state.open.is_empty() {
                    continue;
                }
                let question = state.next_question;
                state.next_question += 1;
                state.shed_answers.push_back((question, tx));
                question
            };
            if !worker.send_control(&ToWorker::ShedIdle).await {
                // Never asked: the answer it would wait for is not owed.
                worker
                    .lock()
                    .shed_answers
                    .retain(|(asked, _)| *asked != question);
                continue;
            }
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
                return true;
            }
        }
        false
    }
}

/// Serves until `shutdown` becomes true with `options.workers` worker
/// processes, then has every worker close its sessions with close_notify,
/// and waits for them (up to the drain timeout).
pub async fn run(
    listener: TcpListener,
    options: MonitorOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let metrics = options.front.metrics.clone();
    // Accepting stops at the caller's shutdown, or when a worker instance is
    // given up as a crash loop.
    let (give_up, mut gave_up) = watch::channel(false);
    let (accepting_tx, mut accepting) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = gave_up.changed() => {}
        }
        let _ = accepting_tx.send(true);
    });
    let pool = Arc::new(Pool {
        workers: Mutex::new(vec![None; options.workers.max(1)]),
        next: AtomicUsize::new(0),
        ready: Notify::new(),
        metrics: metrics.clone(),
        drain_timeout: options.front.drain_timeout,
        gave_up: Mutex::new(None),
        give_up,
    });
    let (stop_tx, stop) = watch::channel(false);
    let mut supervisors = tokio::task::JoinSet::new();
    for index in 0..options.workers.max(1) {
        supervisors.spawn(supervise(
            index,
            options.command.clone(),
            pool.clone(),
            stop.clone(),
        ));
    }
    // Until a worker has an instance ready, clients wait in the listen
    // backlog rather than being taken and closed: each worker compiles the
    // guest at start, which takes seconds for a large component.
    let mut stopped = accepting.clone();
    let first_ready = async {
        loop {
            let notified = pool.ready.notified();
            if pool.any_ready() {
                return;
            }
            notified.await;
        }
    };
    tokio::select! {
        () = first_ready => {
            info!("a worker is ready; taking connections");
            if let Some(on_serving) = &options.on_serving {
                on_serving();
            }
        }
        _ = stopped.wait_for(|stop| *stop) => {}
    }
    let mut tasks = accept_all(&listener, &mut accepting, &options.front, &pool).await;
    // Connections accepted before the stop finish their handshake and are
    // handed over first: a worker told to shut down takes no more, and a
    // client whose handshake was under way would be closed unanswered
    // (seen under load across a --handover-socket restart).
    let handed = async { while tasks.join_next().await.is_some() {} };
    let bound = options.front.handshake_timeout + ADMISSION_WAIT + Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, handed).await;
    info!("shutting down: workers close their connections with close_notify");
    let _ = stop_tx.send(true);
    // Each live worker is told once, each within a bound; one that does not
    // take the frame is cut off rather than waited for.
    let mut told = tokio::task::JoinSet::new();
    for worker in pool.live() {
        told.spawn(async move { worker.send_control(&ToWorker::Shutdown).await });
    }
    told.join_all().await;
    let drain = async { while supervisors.join_next().await.is_some() {} };
    if tokio::time::timeout(options.front.drain_timeout + Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        warn!("workers still running after the drain timeout");
    }
    tasks.abort_all();
    let gave_up = pool
        .gave_up
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match gave_up {
        Some(reason) => Err(std::io::Error::other(reason).into()),
        None => Ok(()),
    }
}

/// Keeps worker `index` running: starts it, reads its frames, and when it
/// dies or misbehaves, kills it and starts another.
async fn supervise(
    index: usize,
    command: WorkerCommand,
    pool: Arc<Pool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut quick_failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let reason = match run_worker(index, &command, &pool, &mut stop).await {
            Ok(reason) => reason,
            Err(e) => format!("could not start: {e}"),
        };
        pool.workers.lock().unwrap_or_else(|e| e.into_inner())[index] = None;
        if *stop.borrow() {
            return;
        }
        pool.metrics.worker_restarted();
        quick_failures = if started.elapsed() < QUICK_FAILURE {
            quick_failures + 1
        } else {
            0
        };
        if quick_failures >= MAX_QUICK_FAILURES {
            let why = format!(
                "worker {index} failed {quick_failures} times in a row within {QUICK_FAILURE:?} \
                 of starting; the last: {reason}"
            );
            tracing::error!(worker = index, reason = %reason, "workers crash in a loop; giving up");
            *pool.gave_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            let _ = pool.give_up.send(true);
            return;
        }
        let backoff = Duration::from_millis(100 << quick_failures.min(5));
        warn!(worker = index, reason = %reason, ?backoff, "worker ended; starting another");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Reads what an exited worker sent before it exited: its reports of the
/// connections that ended, which count as they ended rather than as
/// `worker_exited`. The channel's other end closed with the worker, so
/// this reads queued frames up to end of file; a frame that is not a
/// report, or a wait past a second (a descendant still holding the other
/// end), stops it.
async fn drain_reports(worker: &Worker, metrics: &Metrics) {
    let drained = async {
        while let Ok((frame, fds)) = worker.channel.recv().await
            && fds.is_empty()
        {
            match FromWorker::decode(&frame) {
                Ok(report @ FromWorker::Done { .. }) => {
                    if worker.apply(report, metrics).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
}

/// Runs one worker process until it exits or is cut off; returns why.
async fn run_worker(
    index: usize,
    command: &WorkerCommand,
    pool: &Pool,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<String> {
    let (ours, theirs) = crate::channel::pair()?;
    let mut child = tokio::process::Command::new(&command.program)
        .args(&command.args)
        .env("KEYFERRY_LOG_FORMAT", command.log_format.as_str())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        // Relayed line by line, tagged with the worker, so nothing a worker
        // writes can pass for a line of this process.
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(crate::relay::relay_stderr(
            stderr,
            index,
            pid,
            command.log_format,
        ));
    }
    let worker = Arc::new(Worker {
        pid,
        channel: Channel::new(ours)?,
        state: Mutex::new(WorkerState::default()),
        blobs: tokio::sync::Mutex::new(None),
        cut_off: Notify::new(),
        ready_level: pool.metrics.ready_instances(&index.to_string()),
    });
    pool.workers.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(worker.clone());
    info!(worker = index, pid, "worker started");
    let mut announced = false;
    let reason = loop {
        let received = tokio::select! {
            r = worker.channel.recv() => r,
            _ = worker.cut_off.notified() => {
                kill_and_reap(&mut child).await;
                break "cut off: stopped reading its channel".to_string();
            }
            status = child.wait() => {
                drain_reports(&worker, &pool.metrics).await;
                break format!("exited ({})", status.map(|s| s.to_string()).unwrap_or_default());
            }
            _ = stop.changed() => {
                // Shutdown: the worker drains its sessions and exits, within
                // the drain timeout; past it, it is killed.
                let waited = pool.drain_timeout + REAP_TIMEOUT;
                if tokio::time::timeout(waited, child.wait()).await.is_err() {
                    warn!(worker = index, pid, "worker still running after the drain timeout; killed");
                    kill_and_reap(&mut child).await;
                }
                drain_reports(&worker, &pool.metrics).await;
                break "shut down".to_string();
            }
        };
        let violation = match received {
            Ok((_, fds)) if !fds.is_empty() => "sent a descriptor".to_string(),
            Ok((frame, _)) => match FromWorker::decode(&frame) {
                Ok(FromWorker::Hello { exchange })
                    if pool.published_by_another(&worker, &exchange.id) =>
                {
                    "published another worker's key".to_string()
                }
                Ok(frame) => match worker.apply(frame, &pool.metrics) {
                    Ok(Some((sender, session))) => {
                        let mut blobs = worker.blobs.lock().await;
                        *blobs = Some(sender);
                        let sent = worker.send_control(&session).await;
                        drop(blobs);
                        if sent {
                            continue;
                        }
                        "could not be sent its blob session".to_string()
                    }
                    Ok(None) => {
                        if !announced && !worker.lock().ready.is_empty() {
                            announced = true;
                            info!(worker = index, pid, "worker ready");
                        }
                        pool.ready.notify_waiters();
                        continue;
                    }
                    Err(why) => why.to_string(),
                },
                Err(e) => format!("sent a malformed frame ({e})"),
            },
            Err(ChannelError::Closed) => {
                // A worker that closed its channel is on its way out; one
                // that lingers (or hands the channel's end to something
                // else) is not waited for.
                let status = match tokio::time::timeout(REAP_TIMEOUT, child.wait()).await {
                    Ok(status) => status.map(|s| s.to_string()).unwrap_or_default(),
                    Err(_) => {
                        kill_and_reap(&mut child).await;
                        "killed: it did not exit".to_string()
                    }
                };
                break format!("closed its channel and exited ({status})");
            }
            Err(ChannelError::Empty) => "sent an empty frame".to_string(),
            Err(e) => format!("channel failed ({e})"),
        };
        warn!(worker = index, pid, violation = %violation, "worker broke the protocol; cutting it off");
        kill_and_reap(&mut child).await;
        break format!("cut off: {violation}");
    };
    // Its connections died with it; their places under the cap come back.
    let mut state = worker.lock();
    state.dead = true;
    state.ready.clear();
    worker.ready_level.set(0);
    for _ in state.open.drain() {
        pool.metrics.connection_ended(&ConnectionOutcome {
            ending: EndingKind::WorkerExited,
            trap: None,
            bytes_in: 0,
            bytes_out: 0,
        });
    }
    Ok(reason)
}

/// Kills a worker and reaps it, waiting at most [`REAP_TIMEOUT`]: SIGKILL
/// ends any process, but a wait is still bounded.
async fn kill_and_reap(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    if tokio::time::timeout(REAP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        warn!(
            pid = child.id().unwrap_or(0),
            "a killed worker was not reaped in time"
        );
    }
}

impl Placement for Pool {
    async fn shed(&self) -> bool {
        self.shed_one().await
    }

    /// Hands the connection to a worker with an instance ready, which runs
    /// it and reports it when it ends.
    async fn place(&self, connection: Established, permit: OwnedSemaphorePermit) {
        let Established {
            stream,
            peer,
            id,
            handoff,
            handshake_done,
            upstream,
            ..
        } = connection;
        let metrics = &self.metrics;
        // A ready instance: usually waiting already; a worker being
        // replaced may take a moment.
        let deadline = Instant::now() + ADMISSION_WAIT;
        let (worker, instance) = loop {
            let notified = self.ready.notified();
            if let Some(ready) = self.take_ready() {
                break ready;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                metrics.connection_unserved(&ConnectionOutcome::unserved(None));
                warn!(%peer, "no worker had an instance ready; closed");
                return;
            }
        };
        let handed = Handed {
            _permit: permit,
            handshake_done,
            handing: Duration::ZERO,
        };
        let sockets = Sockets {
            client: &stream,
            upstream: upstream.as_ref(),
        };
        match hand_over(&worker, instance, handoff, sockets, peer, handed, metrics).await {
            // At debug: the worker logs the connection's one line when it
            // ends. A second line per connection at info was a measurable
            // share of the server's CPU under `Connection: close` load.
            Ok(()) => {
                debug!(%peer, connection_id = id, worker_pid = worker.pid, "connection handed to a worker")
            }
            Err(e) => {
                warn!(%peer, worker_pid = worker.pid, error = %e, "could not hand the connection over")
            }
        }
        // Our copy of the socket closes here; the worker's stays open.
    }
}

/// Seals the keys in the worker's blob session and sends it the
/// connection. The host's copies of the keys are zeroized before this
/// returns.
async fn hand_over(
    worker: &Worker,
    instance: u32,
    handoff: Handoff,
    sockets: Sockets<'_>,
    peer: SocketAddr,
    mut handed: Handed,
    metrics: &Metrics,
) -> Result<()> {
    let (backend, backend_fd) = match sockets.upstream {
        None => (Backend::None, None),
        Some(Upstream::Connected(b)) => (Backend::Connected, Some(b.as_fd())),
        Some(Upstream::Failed(reason)) => (Backend::Failed(reason.clone()), None),
    };
    // Held until the frame is sent: the worker opens blobs in order.
    let mut blobs = worker.blobs.lock().await;
    let sealed = assignment_frame(blobs.as_mut(), instance, handoff, peer, backend);
    let (connection_id, frame) = match sealed {
        Ok(sealed) => sealed,
        Err(e) => {
            metrics.connection_unserved(&ConnectionOutcome::unserved(None));
            return Err(e);
        }
    };
    {
        let mut state = worker.lock();
        if state.dead {
            metrics.connection_unserved(&ConnectionOutcome::unserved(None));
            return Err(std::io::Error::other("the worker died").into());
        }
        // Counted open before the frame goes: the worker may report it
        // done before this task runs again.
        handed.handing = handed.handshake_done.elapsed();
        state.open.insert(connection_id, handed);
        metrics.connection_opened();
    }
    // Given back, and counted as never served, unless the worker took it
    // or already died with it (then its supervisor counted it).
    let not_taken = || {
        if worker.lock().open.remove(&connection_id).is_some() {
            metrics.connection_ended(&ConnectionOutcome::unserved(None));
        }
    };
    // A worker that stops reading its channel would hold every connection
    // queued for it: it is cut off (its supervisor kills and replaces it,
    // and its connections' places come back).
    let fds: Vec<_> = std::iter::once(sockets.client.as_fd())
        .chain(backend_fd)
        .collect();
    if worker.send_bounded(&frame, &fds, HAND_OVER_TIMEOUT).await {
        Ok(())
    } else {
        not_taken();
        Err(std::io::Error::other("the worker did not take the connection; cut off").into())
    }
}

/// The sockets a connection hands over: the client's, and with `--forward`
/// the backend's (the worker can make none).
struct Sockets<'a> {
    client: &'a TcpStream,
    upstream: Option<&'a Upstream>,
}

/// A connection's frame for a worker, its keys sealed in the worker's blob
/// session. The host's copies of the keys are zeroized when this returns.
fn assignment_frame(
    sender: Option<&mut SessionSender>,
    instance: u32,
    handoff: Handoff,
    peer: SocketAddr,
    backend: Backend,
) -> Result<(u64, Vec<u8>)> {
    let Handoff {
        keys,
        facts,
        resumed,
        ..
    } = handoff;
    let read_with_handshake =
        (keys.open.buffered_ciphertext.len() + keys.open.buffered_plaintext.len()) as u64;
    let sender = sender.ok_or_else(|| std::io::Error::other("the worker has no blob session"))?;
    let seal_blob = sender.seal_traffic_key(&keys.seal)?;
    let open_blob = sender.seal_traffic_key(&keys.open)?;
    drop(keys);
    let connection_id = facts.connection_id;
    let frame = ToWorker::Connection(Box::new(Assignment {
        instance,
        connection_id,
        peer: peer.to_string(),
        read_with_handshake,
        resumed,
        facts,
        seal_blob,
        open_blob,
        backend,
    }))
    .encode()
    .map_err(std::io::Error::other)?;
    Ok((connection_id, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ConnectionReport;
    use tokio::sync::Semaphore;

    /// A worker that stops reading its channel is cut off by the first send
    /// that finds no room, never waited for.
    #[tokio::test]
    async fn a_send_to_a_worker_that_stopped_reading_cuts_it_off() {
        let metrics = Metrics::new();
        let (worker, _theirs) = test_worker(&metrics);
        let frame = vec![0u8; 60_000];
        let mut sent = 0;
        while worker
            .send_bounded(&frame, &[], Duration::from_millis(200))
            .await
        {
            sent += 1;
            assert!(sent < 10_000, "the channel never filled");
        }
        assert!(worker.lock().dead, "cut off");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), worker.cut_off.notified())
                .await
                .is_ok(),
            "its supervisor is told"
        );
    }
    use crate::ending::EndingKind;

    /// A worker as the handshake process sees it, and the worker's end of
    /// its channel.
    fn test_worker(metrics: &Metrics) -> (Worker, std::os::fd::OwnedFd) {
        let (ours, theirs) = crate::channel::pair().unwrap();
        let worker = Worker {
            pid: 0,
            channel: Channel::new(ours).unwrap(),
            state: Mutex::new(WorkerState::default()),
            blobs: tokio::sync::Mutex::new(None),
            cut_off: Notify::new(),
            ready_level: metrics.ready_instances("0"),
        };
        (worker, theirs)
    }

    #[tokio::test]
    async fn ready_batches_are_taken_in_order_and_checked_slot_by_slot() {
        let metrics = Metrics::new();
        let (worker, _channel) = test_worker(&metrics);
        let ready = |instances: Vec<u32>| FromWorker::Ready { instances };
        assert!(
            worker.apply(ready(vec![1]), &metrics).is_err(),
            "an instance before the worker's key"
        );
        let (worker, _channel) = test_worker(&metrics);
        worker.lock().greeted = true;
        assert!(worker.apply(ready(vec![1, 2, 3, 4]), &metrics).is_ok());
        assert_eq!(worker.lock().ready, [1, 2, 3, 4]);
        assert!(
            worker.apply(ready(vec![5, 5]), &metrics).is_err(),
            "an instance twice in one batch"
        );
        let (worker, _channel) = test_worker(&metrics);
        worker.lock().greeted = true;
        let all: Vec<u32> = (1..=MAX_READY as u32).collect();
        assert!(worker.apply(ready(all), &metrics).is_ok());
        assert!(
            worker.apply(ready(vec![1000]), &metrics).is_err(),
            "more than MAX_READY waiting"
        );
    }

    /// A report the worker queued just before it exited counts as the
    /// ending it reports; a connection it never reported is left for the
    /// caller to write off as `worker_exited`.
    #[tokio::test]
    async fn reports_queued_before_a_worker_exits_count_as_they_ended() {
        let metrics = Metrics::new();
        let (worker, theirs) = test_worker(&metrics);
        let cap = Arc::new(Semaphore::new(2));
        for id in [7, 8] {
            worker.lock().open.insert(
                id,
                Handed {
                    _permit: cap.clone().try_acquire_owned().unwrap(),
                    handshake_done: Instant::now(),
                    handing: Duration::ZERO,
                },
            );
        }
        let done = FromWorker::Done {
            connection_id: 7,
            report: ConnectionReport {
                outcome: ConnectionOutcome {
                    ending: EndingKind::CloseNotify,
                    trap: None,
                    bytes_in: 10,
                    bytes_out: 20,
                },
                attach_us: Some(30),
            },
        };
        let exited = Channel::new(theirs).unwrap();
        exited.send(&done.encode(), &[]).await.unwrap();
        drop(exited);
        drain_reports(&worker, &metrics).await;
        let state = worker.lock();
        assert!(!state.open.contains_key(&7), "the report was read");
        assert!(state.open.contains_key(&8), "the unreported one is left");
        drop(state);
        assert_eq!(cap.available_permits(), 1, "7's place came back");
        let text = metrics.encode();
        assert!(
            text.contains("keyferry_connections_ended_total{ending=\"close_notify\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keyferry_bytes_total{direction=\"received\"} 10"),
            "{text}"
        );
    }
}
