//! `keyferry serve`: a TLS server whose handshakes run here, in the trusted
//! host, and whose data plane and application run in a guest instance per
//! connection (or in a few shared instances).
//!
//! Each connection is its own tokio task with its own wasmtime store, so a
//! guest that traps, loops or runs out of memory ends only its connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ending::ConnectionOutcome;
use crate::front::{Cap, FrontOptions, accept, establish};
use crate::metrics::Metrics;
use crate::ready::{READY_INSTANCES, ReadyInstances};
use crate::transport::{
    SessionControl, SessionHandle, Sessions, Timeouts, guest_call, new_connection_id,
    refuse_unattached, serve_attached,
};
use keyferry::component::GuestComponent;
use keyferry::dataplane::DataPlane;
use keyferry::error::Result;
use keyferry::instance::GuestInstance;

/// How connections share guest instances (DESIGN section 7).
#[derive(Clone)]
pub enum Isolation {
    /// A fresh instance per connection: the strongest isolation, and the
    /// default. A failing guest takes down only its own connection.
    PerConnection,
    /// A few long-lived instances, each serving many connections of one
    /// tenant. Cheaper per connection (no instantiation, no key pair); a
    /// guest failure ends every connection in that instance.
    Shared(Arc<SharedPool>),
}

/// The instances of [`Isolation::Shared`], used round-robin. A poisoned
/// instance is replaced on its next use; the connections still attached
/// to it keep their handle and end with its failure.
pub struct SharedPool {
    slots: Vec<Mutex<Option<GuestInstance>>>,
    next: AtomicU64,
}

impl SharedPool {
    /// `instances` shared instances (at least one), made on first use.
    pub fn new(instances: usize) -> Self {
        Self {
            slots: (0..instances.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicU64::new(0),
        }
    }

    /// The next instance, made afresh if its slot is empty or poisoned.
    pub fn instance(&self, component: &GuestComponent) -> Result<GuestInstance> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.slots.len();
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(instance) if !instance.is_poisoned() => Ok(instance.clone()),
            _ => {
                let instance = component.instantiate()?;
                *slot = Some(instance.clone());
                Ok(instance)
            }
        }
    }
}

/// Everything a server needs: [`ServerOptions::new`] with the front's
/// options and the application, then `with_*` steps for the rest. Fields
/// are read freely; new ones come with defaults, so adding one breaks no
/// caller.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// TLS, the connection cap, PROXY, the handshake and drain timeouts,
    /// the metrics: what a worker-mode server has too.
    pub front: FrontOptions,
    /// The compiled application component that serves each connection.
    pub component: GuestComponent,
    /// Instance per connection, or shared instances.
    pub isolation: Isolation,
    /// Keep-alive, request and write timeouts (`timeouts.handshake` is
    /// `front.handshake_timeout`).
    pub timeouts: Timeouts,
}

impl ServerOptions {
    /// Serves `component` behind `front`: an instance per connection and
    /// nginx's timeouts ([`Timeouts::default`]).
    pub fn new(front: FrontOptions, component: GuestComponent) -> Self {
        let timeouts = Timeouts {
            handshake: front.handshake_timeout,
            ..Timeouts::default()
        };
        Self {
            front,
            component,
            isolation: Isolation::PerConnection,
            timeouts,
        }
    }

    /// How connections share guest instances.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Handshake, keep-alive, request and write timeouts; the handshake
    /// one becomes the front's.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.front.handshake_timeout = timeouts.handshake;
        self.timeouts = timeouts;
        self
    }
}

/// Serves until `shutdown` becomes true, then sends close_notify on open
/// connections and waits for them (up to the drain timeout).
pub async fn serve(
    listener: TcpListener,
    options: ServerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let metrics = options.front.metrics.clone();
    let cap = Cap::new(options.front.max_connections);
    let sessions = Arc::new(Sessions::default());
    let epoch = Instant::now();
    let ready = ReadyInstances::new(
        options.component.clone(),
        READY_INSTANCES,
        metrics.ready_instances("in-process"),
    );
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((mut stream, peer)) = accept(&listener, &mut shutdown, &metrics).await {
        let options = options.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let sessions = sessions.clone();
        let ready = ready.clone();
        let Some(queued) = cap.queue(&metrics, peer) else {
            continue;
        };
        tasks.spawn(async move {
            let shed = async { sessions.shed_longest_idle() };
            let Some(permit) = queued.admit(shed, &metrics, peer).await else {
                let _ = stream.shutdown().await;
                return;
            };
            let shared = ServerContext {
                options: &options,
                metrics: &metrics,
                sessions: &sessions,
                ready: &ready,
                epoch,
            };
            // Boxed: a connection's future is about 8 KB (the handshake,
            // then the data plane), and tokio copies a task's future when
            // it makes the task and again as the task moves through its
            // stages; a box is copied as one pointer.
            Box::pin(connection(stream, peer, shared, shutdown)).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    info!(
        open = tasks.len(),
        "shutting down: close_notify to open connections"
    );
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(options.front.drain_timeout, drain)
        .await
        .is_err()
    {
        warn!("sessions still open after the drain timeout; closing them");
    }
    Ok(())
}

/// What every connection of one server shares.
#[derive(Clone, Copy)]
struct ServerContext<'a> {
    options: &'a ServerOptions,
    metrics: &'a Metrics,
    sessions: &'a Sessions,
    ready: &'a Arc<ReadyInstances>,
    epoch: Instant,
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: ServerContext<'_>,
    shutdown: watch::Receiver<bool>,
) {
    let id = new_connection_id();
    let handle = shared.sessions.insert(id);
    session(&mut stream, peer, id, handle, shared, shutdown).await;
    shared.sessions.remove(id);
}

async fn session(
    stream: &mut TcpStream,
    peer: SocketAddr,
    id: u64,
    handle: Arc<SessionHandle>,
    shared: ServerContext<'_>,
    shutdown: watch::Receiver<bool>,
) {
    let ServerContext {
        options,
        metrics,
        ready: instances,
        epoch,
        ..
    } = shared;
    let started = Instant::now();
    let Some((peer, handoff)) = establish(stream, peer, id, &options.front).await else {
        return;
    };
    let handoff_done = Instant::now();
    // Bytes the peer sent with its last handshake flight (data in the same
    // write as its Finished) count as received after the handshake.
    let read_with_handshake = (handoff.keys.open.buffered_ciphertext.len()
        + handoff.keys.open.buffered_plaintext.len()) as u64;
    let attached = guest_call(|| {
        let guest = match &options.isolation {
            Isolation::PerConnection => instances.take()?,
            Isolation::Shared(pool) => pool.instance(&options.component)?,
        };
        DataPlane::new(guest, handoff)
    });
    let peer = peer.to_string();
    let (plane, first) = match attached {
        Ok(a) => a,
        Err(e) => {
            metrics.connection_unserved(&ConnectionOutcome::unserved(Some(&e)));
            return refuse_unattached(stream, &peer, &e).await;
        }
    };
    let ready = handoff_done.elapsed();
    metrics.connection_opened();
    metrics.handoff(ready);
    let control = SessionControl {
        shutdown,
        handle,
        epoch,
        timeouts: options.timeouts,
    };
    let timing = (ready, started);
    let (summary, guest) = serve_attached(
        stream,
        plane,
        first,
        control,
        &peer,
        read_with_handshake,
        timing,
    )
    .await;
    // Its own instance is dropped with the next batch (`crate::ready`).
    if matches!(options.isolation, Isolation::PerConnection)
        && let Some(guest) = guest
    {
        instances.retire(guest);
    }
    metrics.connection_ended(&ConnectionOutcome::from(&summary));
}
