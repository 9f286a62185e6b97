//! `keyferry serve`: a TLS server whose handshakes run here, in the trusted
//! host, and whose data plane and application run in a guest instance per
//! connection (or in a few shared instances).
//!
//! Each connection is its own tokio task with its own wasmtime store, so a
//! guest that traps, loops or runs out of memory ends only its connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ending::ConnectionOutcome;
use crate::front::{Cap, accept, client_address, server_handshake};
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

/// Everything a server needs: [`ServerOptions::new`] with the TLS config
/// and the application, then `with_*` steps for the rest. Fields are read
/// freely; new ones come with defaults, so adding one breaks no caller.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// TLS settings (identity, versions, suites, ALPN).
    pub tls: Arc<ServerConfig>,
    /// The compiled application component that serves each connection.
    pub component: GuestComponent,
    /// Instance per connection, or shared instances.
    pub isolation: Isolation,
    /// Most connections served at once. At the cap, the longest-idle
    /// connection is closed (with close_notify) to admit a new client; a
    /// client that still cannot be admitted is closed promptly.
    pub max_connections: usize,
    /// Handshake, keep-alive, request and write timeouts.
    pub timeouts: Timeouts,
    /// Every connection starts with a HAProxy PROXY v2 header (behind an
    /// L4 load balancer), believed only from these sources; its client
    /// address goes in the log. `None`: no header.
    pub proxy_protocol: Option<Arc<crate::proxy::TrustedSources>>,
    /// How long to wait for sessions to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Where connections, handshakes and endings are counted (see
    /// [`crate::scrape::serve_metrics`] to publish them).
    pub metrics: Arc<Metrics>,
}

impl ServerOptions {
    /// Serves `component` with `tls`: an instance per connection, at most
    /// 512 connections, nginx's timeouts ([`Timeouts::default`]), no PROXY
    /// header, 5 s to drain, and fresh metrics.
    pub fn new(tls: Arc<ServerConfig>, component: GuestComponent) -> Self {
        Self {
            tls,
            component,
            isolation: Isolation::PerConnection,
            max_connections: 512,
            timeouts: Timeouts::default(),
            proxy_protocol: None,
            drain_timeout: Duration::from_secs(5),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// How connections share guest instances.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Most connections served at once (at least one).
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections.max(1);
        self
    }

    /// Handshake, keep-alive, request and write timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Expect a PROXY v2 header on every connection, believed only from
    /// `trusted`.
    pub fn with_proxy_protocol(mut self, trusted: Arc<crate::proxy::TrustedSources>) -> Self {
        self.proxy_protocol = Some(trusted);
        self
    }

    /// How long to wait for sessions to finish after shutdown starts.
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Where connections are counted (share it with a metrics listener).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
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
    let metrics = options.metrics.clone();
    let cap = Cap::new(options.max_connections);
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
    if tokio::time::timeout(options.drain_timeout, drain)
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
    let _ = stream.set_nodelay(true);
    let Some(peer) = client_address(
        stream,
        peer,
        options.proxy_protocol.as_deref(),
        options.timeouts.handshake,
    )
    .await
    else {
        return;
    };
    let Some(handoff) = server_handshake(
        stream,
        &options.tls,
        id,
        options.timeouts.handshake,
        peer,
        metrics,
    )
    .await
    else {
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
