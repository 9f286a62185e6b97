//! Every connection's lifecycle: accept → admit → handshake → place → run
//! → report. All of it but the placement is here, the same whichever
//! process then serves the connection: [`crate::server`] places it in an
//! instance of this process, [`crate::monitor`] in a worker's (see
//! `Placement`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keyferry::error::{Error, HandshakeError};
use keyferry::handshake::{Handoff, Handshake};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::transport::{handshake_async, new_connection_id};

/// How long a client that arrives at the connection cap waits for an idle
/// connection to make room before it is closed.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// What the front of every connection needs, whichever process then
/// serves it: [`FrontOptions::new`] with the TLS config, then `with_*`
/// steps. [`crate::server::ServerOptions`] (this process) and
/// [`crate::monitor::MonitorOptions`] (workers) each hold one. Fields are
/// read freely; new ones come with defaults, so adding one breaks no
/// caller.
#[derive(Clone)]
#[non_exhaustive]
pub struct FrontOptions {
    /// TLS settings (identity, versions, suites, ALPN, client
    /// verification), replaceable while serving.
    pub tls: Arc<ServerTls>,
    /// Most connections served at once. At the cap, the longest-idle
    /// connection is closed (with close_notify) to admit a new client; a
    /// client that still cannot be admitted is closed promptly.
    pub max_connections: usize,
    /// How long a client may take to finish its handshake (and to send
    /// its PROXY header).
    pub handshake_timeout: Duration,
    /// Every connection starts with a HAProxy PROXY v2 header (behind an
    /// L4 load balancer), believed only from these sources; its client
    /// address goes in the log. `None`: no header.
    pub proxy_protocol: Option<Arc<crate::proxy::TrustedSources>>,
    /// How long open connections may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Where connections, handshakes and endings are counted (see
    /// [`crate::scrape::serve_metrics`] to publish them).
    pub metrics: Arc<Metrics>,
    /// `--forward`: each connection's plaintext goes to this backend,
    /// which this process connects to after the handshake.
    pub forward: Option<Arc<crate::forward::Forward>>,
    /// `--access-log`, for the connections this process serves itself
    /// (workers have their own, [`crate::worker::WorkerOptions`]).
    pub access_log: Option<Arc<crate::access::AccessLog>>,
}

impl FrontOptions {
    /// Handshakes with `tls`: at most 512 connections, a 10 s handshake
    /// timeout, no PROXY header, 5 s to drain, and fresh metrics.
    pub fn new(tls: Arc<ServerConfig>) -> Self {
        Self {
            tls: Arc::new(ServerTls::new(tls)),
            max_connections: 512,
            handshake_timeout: Duration::from_secs(10),
            proxy_protocol: None,
            drain_timeout: Duration::from_secs(5),
            metrics: Arc::new(Metrics::new()),
            forward: None,
            access_log: None,
        }
    }

    /// Logs each request the application reports, for connections served
    /// in this process.
    pub fn with_access_log(mut self, access_log: Arc<crate::access::AccessLog>) -> Self {
        self.access_log = Some(access_log);
        self
    }

    /// Most connections served at once (at least one).
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections.max(1);
        self
    }

    /// How long a client may take to finish its handshake.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Expect a PROXY v2 header on every connection, believed only from
    /// `trusted`.
    pub fn with_proxy_protocol(mut self, trusted: Arc<crate::proxy::TrustedSources>) -> Self {
        self.proxy_protocol = Some(trusted);
        self
    }

    /// How long open connections may take to finish after shutdown starts.
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Forward each connection's plaintext to a backend. The placement's
    /// guest must hand its plaintext to the host (the reference
    /// component).
    pub fn with_forward(mut self, forward: Arc<crate::forward::Forward>) -> Self {
        self.forward = Some(forward);
        self
    }

    /// Where connections are counted (share it with a metrics listener).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

/// The server config in service. A reload that changes what rustls's
/// config holds by value (the client CAs and CRLs, inside its verifier)
/// replaces it whole: handshakes that start afterwards use the new one,
/// and those under way finish with the one they started with.
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Serves `config` until it is replaced.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            current: RwLock::new(config),
        }
    }

    /// The config a handshake starting now uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves `config` from the next handshake on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// A connection past its handshake, to be placed.
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    /// The client: the TCP peer, or what its PROXY header said.
    pub(crate) peer: SocketAddr,
    pub(crate) id: u64,
    pub(crate) handoff: Handoff,
    /// When it was admitted: the connection line's duration runs from here.
    pub(crate) admitted: Instant,
    pub(crate) handshake_done: Instant,
    /// With `--forward`, the backend's side.
    pub(crate) upstream: Option<crate::forward::Upstream>,
}

/// Where connections run: in an instance of this process, or of a worker.
/// The one step of the lifecycle the two placements do differently.
pub(crate) trait Placement: Send + Sync + 'static {
    /// Closes the longest-idle keep-alive connection (never a busy one) to
    /// make room for a client at the cap; whether one was found. Polled
    /// only at the cap.
    fn shed(&self) -> impl Future<Output = bool> + Send + '_;

    /// Places the connection in an instance, and runs and reports it, or
    /// has its worker do so. `permit` is its place under the connection
    /// cap, held until the connection ends.
    fn place(
        &self,
        connection: Established,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + '_;
}

/// Accepts connections until `stop` fires, and runs each through
/// [`serve_connection`] as a task of the set it returns, which the caller
/// drains as its placement needs.
pub(crate) async fn accept_all<P: Placement>(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    front: &FrontOptions,
    placement: &Arc<P>,
) -> JoinSet<()> {
    let cap = Cap::new(front.max_connections);
    let front = Arc::new(front.clone());
    let mut tasks = JoinSet::new();
    while let Some((stream, peer)) = accept(listener, stop, &front.metrics).await {
        let Some(queued) = cap.queue(&front.metrics, peer) else {
            continue;
        };
        let (front, placement) = (front.clone(), placement.clone());
        // Boxed: a connection's future is about 8 KB (the handshake, then
        // the data plane), and tokio copies a task's future when it makes
        // the task and again as the task moves through its stages; a box
        // is copied as one pointer.
        tasks.spawn(async move {
            Box::pin(serve_connection(stream, peer, queued, &front, &*placement)).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks
}

/// One connection, accepted and queued at the cap: admission, the
/// client's address and the handshake, then its placement.
async fn serve_connection<P: Placement>(
    mut stream: TcpStream,
    peer: SocketAddr,
    queued: Queued,
    front: &FrontOptions,
    placement: &P,
) {
    let Some(permit) = queued.admit(placement.shed(), &front.metrics, peer).await else {
        let _ = stream.shutdown().await;
        return;
    };
    let admitted = Instant::now();
    let id = new_connection_id();
    let Some((peer, handoff)) = establish(&mut stream, peer, id, front).await else {
        return;
    };
    // An ACME TLS-ALPN-01 validation: the handshake was the answer, and
    // the validation server closes (RFC 8737 section 3); nothing is served.
    if handoff.facts.alpn.as_deref() == Some(keyferry::tls::ACME_TLS_ALPN) {
        debug!(%peer, sni = handoff.facts.server_name.as_deref().unwrap_or("-"), "answered an ACME TLS-ALPN-01 validation");
        drop(handoff);
        let _ = stream.shutdown().await;
        return;
    }
    // The backend connect is not part of the handoff the metrics time.
    let upstream = match &front.forward {
        Some(forward) => {
            let local = stream
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            Some(
                forward
                    .connect(peer, local, &handoff.facts, &front.metrics)
                    .await,
            )
        }
        None => None,
    };
    let handshake_done = Instant::now();
    let connection = Established {
        stream,
        peer,
        id,
        handoff,
        admitted,
        handshake_done,
        upstream,
    };
    placement.place(connection, permit).await;
}

/// The front of one connection, the same in both placements: the
/// client's address (its PROXY v2 header, when one is expected) and the
/// handshake, each within the handshake timeout. `None` (logged and
/// counted) when either fails.
async fn establish(
    stream: &mut TcpStream,
    peer: SocketAddr,
    id: u64,
    front: &FrontOptions,
) -> Option<(SocketAddr, Handoff)> {
    let _ = stream.set_nodelay(true);
    let peer = client_address(
        stream,
        peer,
        front.proxy_protocol.as_deref(),
        front.handshake_timeout,
    )
    .await?;
    let handoff = server_handshake(
        stream,
        &front.tls.current(),
        id,
        front.handshake_timeout,
        peer,
        &front.metrics,
    )
    .await?;
    Some((peer, handoff))
}

/// The client's address: the TCP peer, or what the PROXY v2 header in front
/// of the connection says. `None` (and a log line) if the header is bad.
async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    proxy_protocol: Option<&crate::proxy::TrustedSources>,
    timeout: Duration,
) -> Option<SocketAddr> {
    let Some(trusted) = proxy_protocol else {
        return Some(peer);
    };
    if !trusted.allows(peer.ip()) {
        info!(%peer, "PROXY header expected from a trusted balancer; this peer is not one; closed");
        return None;
    }
    match tokio::time::timeout(timeout, crate::proxy::read_header(stream)).await {
        Ok(Ok(crate::proxy::Proxied::Client(client))) => Some(client),
        Ok(Ok(crate::proxy::Proxied::Local)) => Some(peer),
        Ok(Err(e)) => {
            info!(%peer, error = %e, "PROXY header refused");
            None
        }
        Err(_) => {
            info!(%peer, "no PROXY header in time");
            None
        }
    }
}

/// The next accepted connection, or `None` once `shutdown` fires. A failed
/// accept (out of descriptors, say) is logged and retried after a pause
/// that lets sessions end.
async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    metrics: &Metrics,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    metrics.accepted();
                    return Some(a);
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

/// The connection cap, the same for both placements: places for
/// connections, and places for the clients waiting at the cap for one.
#[derive(Clone)]
struct Cap {
    places: Arc<Semaphore>,
    queue: Arc<Semaphore>,
}

/// A client's place in the queue at the cap, held until it is admitted or
/// closed.
struct Queued {
    places: Arc<Semaphore>,
    _place: OwnedSemaphorePermit,
}

impl Cap {
    /// At most `max_connections` connections (at least one), and as many
    /// clients waiting for a place.
    fn new(max_connections: usize) -> Self {
        let max = max_connections.max(1);
        Self {
            places: Arc::new(Semaphore::new(max)),
            queue: Arc::new(Semaphore::new(max)),
        }
    }

    /// A place in the queue for `peer`, taken as it is accepted; `None`
    /// (counted and logged) when the queue is full: the caller closes the
    /// client at once.
    fn queue(&self, metrics: &Metrics, peer: SocketAddr) -> Option<Queued> {
        match self.queue.clone().try_acquire_owned() {
            Ok(place) => Some(Queued {
                places: self.places.clone(),
                _place: place,
            }),
            Err(_) => {
                metrics.refused_at_cap();
                info!(%peer, "at the connection cap with a full queue; closed");
                None
            }
        }
    }
}

impl Queued {
    /// A place under the connection cap for `peer`: at once if there is
    /// one; at the cap, after `shed` closed the longest-idle keep-alive
    /// connection (never a busy one) and its place came back within
    /// [`ADMISSION_WAIT`]. `None` (logged) if no place came: the caller
    /// closes the client. The queue place is given back either way.
    async fn admit(
        self,
        shed: impl Future<Output = bool>,
        metrics: &Metrics,
        peer: SocketAddr,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Some(permit);
        }
        // The shed connection is counted when it ends (ending "shed").
        shed.await;
        match tokio::time::timeout(ADMISSION_WAIT, self.places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                metrics.refused_at_cap();
                info!(%peer, "at the connection cap and nothing idle to close; closed");
                None
            }
        }
    }
}

/// Runs a server handshake over `stream` within `timeout`; a failure is
/// counted and logged (the peer already got rustls's alert) and gives
/// `None`.
async fn server_handshake(
    stream: &mut TcpStream,
    tls: &Arc<ServerConfig>,
    id: u64,
    timeout: Duration,
    peer: SocketAddr,
    metrics: &Metrics,
) -> Option<Handoff> {
    let handoff = match Handshake::server(tls, id) {
        Ok(hs) => tokio::time::timeout(timeout, handshake_async(stream, hs))
            .await
            .unwrap_or_else(|_| Err(HandshakeError::TimedOut.into())),
        Err(e) => Err(e),
    };
    match handoff {
        Ok(h) => {
            metrics.handshake_completed(&h.facts);
            Some(h)
        }
        Err(e) => {
            metrics.handshake_failed(&e);
            // A TCP health check connects and closes every few seconds:
            // at debug, not one info line each.
            if matches!(e, Error::Handshake(HandshakeError::PeerSilent)) {
                debug!(%peer, error = %e, "handshake failed");
            } else {
                info!(%peer, error = %e, "handshake failed");
            }
            None
        }
    }
}
