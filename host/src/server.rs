//! `keyferry serve`: a TLS server whose handshakes run here, in the trusted
//! host, and whose data plane runs in one guest instance per connection.
//!
//! Each connection is its own tokio task with its own wasmtime store, so a
//! guest that traps, loops or runs out of memory ends only its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyferry_guest::connection::Closed;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::app::AppMode;
use crate::error::{Error, Result};
use crate::handshake::Handshake;
use crate::sandbox::GuestComponent;
use crate::transport::{
    Ending, PLAINTEXT_INTERNAL_ERROR, SessionHost, SharedInstance, handshake_async, run_session,
};

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The instances of [`Isolation::Shared`], used round-robin.
pub struct SharedPool {
    slots: Vec<tokio::sync::Mutex<SharedInstance>>,
    next: AtomicU64,
}

impl SharedPool {
    /// `instances` shared instances (at least one), made on first use.
    pub fn new(instances: usize) -> Self {
        Self {
            slots: (0..instances.max(1)).map(|_| Default::default()).collect(),
            next: AtomicU64::new(0),
        }
    }

    fn pick(&self) -> &tokio::sync::Mutex<SharedInstance> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.slots.len();
        &self.slots[i]
    }
}

fn attach_shared(
    shared: &mut SharedInstance,
    component: &GuestComponent,
    seal: keyferry_guest::record::TrafficKeyMaterial,
    open: keyferry_guest::record::TrafficKeyMaterial,
    facts: &keyferry_guest::connection::Facts,
    mode: AppMode,
) -> Result<(crate::app::SessionHandle, u64)> {
    if shared.app.as_ref().is_none_or(|a| a.is_poisoned()) {
        shared.app = Some(component.instantiate_application()?);
        shared.epoch += 1;
    }
    let app = shared.app.as_mut().ok_or(Error::Poisoned)?;
    let session = app.attach(seal, open, facts, mode)?;
    Ok((session, shared.epoch))
}

async fn refuse(stream: &mut TcpStream, peer: SocketAddr, stats: &ServerStats, e: Error) {
    stats.guest_failures.fetch_add(1, Ordering::Relaxed);
    warn!(%peer, error = %e, "guest could not take the connection");
    let _ = stream.write_all(&PLAINTEXT_INTERNAL_ERROR).await;
}

/// Everything a server needs.
#[derive(Clone)]
pub struct ServerOptions {
    /// TLS settings (identity, versions, suites, ALPN).
    pub tls: Arc<ServerConfig>,
    /// The compiled guest that serves each connection.
    pub component: GuestComponent,
    /// Which built-in application (for the reference component).
    pub mode: AppMode,
    /// Instance per connection, or shared instances.
    pub isolation: Isolation,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long to wait for sessions to finish after shutdown starts.
    pub drain_timeout: Duration,
}

/// Counters for the final log line and for tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Handshakes that failed.
    pub handshake_failures: AtomicU64,
    /// Sessions whose guest failed.
    pub guest_failures: AtomicU64,
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Serves until `shutdown` becomes true, then sends close_notify on open
/// connections and waits for them (up to the drain timeout).
pub async fn serve(
    listener: TcpListener,
    options: ServerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Arc<ServerStats>> {
    let stats = Arc::new(ServerStats::default());
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(|_| Error::Config("connection limit closed".into()))?,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let options = options.clone();
        let stats = stats.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            connection(stream, peer, &options, &stats, shutdown).await;
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
    Ok(stats)
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    options: &ServerOptions,
    stats: &ServerStats,
    shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let id =
        NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed) | (u64::from(std::process::id()) << 40);
    let _ = stream.set_nodelay(true);
    let handoff = match Handshake::server(&options.tls, id) {
        Ok(hs) => tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_async(&mut stream, hs))
            .await
            .unwrap_or_else(|_| Err(Error::Handshake("timed out".into()))),
        Err(e) => Err(e),
    };
    let handoff = match handoff {
        Ok(h) => h,
        Err(e) => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            info!(%peer, error = %e, "handshake failed");
            return;
        }
    };
    let handoff_done = Instant::now();
    let facts = handoff.facts.clone();
    let version = match facts.version {
        keyferry_guest::ProtocolVersion::Tls13 => "TLSv1.3",
        keyferry_guest::ProtocolVersion::Tls12 => "TLSv1.2",
    };
    let (seal, open) = (handoff.keys.seal, handoff.keys.open);
    let (summary, ready) = match &options.isolation {
        Isolation::PerConnection => {
            let attached = options
                .component
                .instantiate_application()
                .and_then(|mut app| {
                    let session = app.attach(seal, open, &facts, options.mode)?;
                    Ok((app, session))
                });
            let (mut app, session) = match attached {
                Ok(a) => a,
                Err(e) => return refuse(&mut stream, peer, stats, e).await,
            };
            let ready = handoff_done.elapsed();
            let summary = run_session(
                &mut stream,
                SessionHost::Owned(&mut app),
                &session,
                shutdown,
            )
            .await;
            if !app.is_poisoned() {
                let _ = app.end(session);
            }
            (summary, ready)
        }
        Isolation::Shared(pool) => {
            let slot = pool.pick();
            let attached = {
                let mut shared = slot.lock().await;
                attach_shared(
                    &mut shared,
                    &options.component,
                    seal,
                    open,
                    &facts,
                    options.mode,
                )
            };
            let (session, epoch) = match attached {
                Ok(a) => a,
                Err(e) => return refuse(&mut stream, peer, stats, e).await,
            };
            let ready = handoff_done.elapsed();
            let summary = run_session(
                &mut stream,
                SessionHost::Shared { slot, epoch },
                &session,
                shutdown,
            )
            .await;
            let mut shared = slot.lock().await;
            if shared.epoch == epoch
                && let Some(app) = shared.app.as_mut().filter(|a| !a.is_poisoned())
            {
                let _ = app.end(session);
            }
            (summary, ready)
        }
    };
    let ending = match &summary.ending {
        Ending::Clean => "close_notify".to_string(),
        Ending::Peer(Closed::Truncated) => "truncated (EOF without close_notify)".to_string(),
        Ending::Peer(Closed::PeerAlert(d)) => format!("peer alert {d}"),
        Ending::Peer(Closed::LocalAlert(a)) => format!("sent alert {a}"),
        Ending::Peer(Closed::CloseNotify) => "close_notify".to_string(),
        Ending::Shutdown => "server shutdown".to_string(),
        Ending::GuestFailed(e) => {
            stats.guest_failures.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, error = %e, "guest failed; its connection is closed, the server carries on");
            format!("guest failed: {e}")
        }
        Ending::Transport(e) => format!("transport error: {e}"),
    };
    info!(
        %peer,
        version,
        suite = %facts.suite,
        sni = facts.server_name.as_deref().unwrap_or("-"),
        bytes_in = summary.bytes_in,
        bytes_out = summary.bytes_out,
        handoff_us = ready.as_micros() as u64,
        duration_ms = started.elapsed().as_millis() as u64,
        ending = %ending,
        "connection"
    );
}
