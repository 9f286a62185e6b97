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

use keyferry_guest::connection::Closed;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::component::GuestComponent;
use crate::dataplane::DataPlane;
use crate::error::{Error, HandshakeError, Result};
use crate::handshake::Handshake;
use crate::instance::GuestInstance;
use crate::transport::{Ending, PLAINTEXT_INTERNAL_ERROR, blocking, handshake_async, run_session};

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
    /// The compiled application component that serves each connection.
    pub component: GuestComponent,
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
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
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
            .unwrap_or_else(|_| Err(HandshakeError::TimedOut.into())),
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
    let attached = blocking(|| {
        let guest = match &options.isolation {
            Isolation::PerConnection => options.component.instantiate()?,
            Isolation::Shared(pool) => pool.instance(&options.component)?,
        };
        DataPlane::new(guest, handoff)
    });
    let (mut plane, first) = match attached {
        Ok(a) => a,
        Err(e) => return refuse(&mut stream, peer, stats, e).await,
    };
    let ready = handoff_done.elapsed();
    let summary = run_session(&mut stream, &mut plane, first, shutdown).await;
    drop(plane);
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
