//! `keyferry serve`: a TLS server whose handshakes run here, in the trusted
//! host, and whose data plane and application run in a guest instance per
//! connection (or in a few shared instances).
//!
//! Each connection is its own tokio task with its own wasmtime store, so a
//! guest that traps, loops or runs out of memory ends only its connection.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{info, warn};

use crate::ending::ConnectionOutcome;
use crate::front::{Established, FrontOptions, Placement, accept_all};
use crate::ready::{InstancePool, READY_INSTANCES, Refill};
use crate::session::{refuse_unattached, serve_attached};
use crate::transport::{SessionControl, SessionHandle, Sessions, Timeouts, guest_call};
use keyferry::component::GuestComponent;
use keyferry::dataplane::DataPlane;
use keyferry::error::Result;

/// How connections share guest instances (DESIGN section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// A fresh instance per connection: the strongest isolation, and the
    /// default. A failing guest takes down only its own connection.
    PerConnection,
    /// A few long-lived instances, each serving many connections of one
    /// tenant. Cheaper per connection (no instantiation, no key pair); a
    /// guest failure ends every connection in that instance. Holds how
    /// many instances (at least one).
    Shared(usize),
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
pub async fn run(
    listener: TcpListener,
    options: ServerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let level = options.front.metrics.ready_instances("in-process");
    let instances = match options.isolation {
        Isolation::PerConnection => InstancePool::fresh(
            options.component.clone(),
            READY_INSTANCES,
            Refill::Background,
            level,
        ),
        Isolation::Shared(instances) => {
            InstancePool::shared(options.component.clone(), instances, level)
        }
    };
    let placement = Arc::new(InProcess {
        options: options.clone(),
        instances,
        sessions: Sessions::default(),
        epoch: Instant::now(),
        shutdown: shutdown.clone(),
    });
    let mut tasks = accept_all(&listener, &mut shutdown, &options.front, &placement).await;
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

/// Connections placed in instances of this process.
struct InProcess {
    options: ServerOptions,
    instances: Arc<InstancePool>,
    sessions: Sessions,
    /// When the server started: session instances keep time from it.
    epoch: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Placement for InProcess {
    async fn shed(&self) -> bool {
        self.sessions.shed_longest_idle()
    }

    async fn place(&self, connection: Established, permit: OwnedSemaphorePermit) {
        let id = connection.id;
        let handle = self.sessions.insert(id);
        self.run(connection, handle).await;
        self.sessions.remove(id);
        drop(permit);
    }
}

impl InProcess {
    /// Attaches the connection to an instance, serves it, and reports it.
    async fn run(&self, connection: Established, handle: Arc<SessionHandle>) {
        let Established {
            mut stream,
            peer,
            handoff,
            admitted,
            handshake_done,
            upstream,
            ..
        } = connection;
        let metrics = &self.options.front.metrics;
        let instances = &self.instances;
        // Bytes the peer sent with its last handshake flight (data in the
        // same write as its Finished) count as received after the
        // handshake.
        let read_with_handshake = (handoff.keys.open.buffered_ciphertext.len()
            + handoff.keys.open.buffered_plaintext.len()) as u64;
        let attached = guest_call(|| DataPlane::new(instances.take()?, handoff));
        let peer = peer.to_string();
        let (plane, first) = match attached {
            Ok(a) => a,
            Err(e) => {
                metrics.connection_unserved(&ConnectionOutcome::unserved(Some(&e)));
                return refuse_unattached(&mut stream, &peer, &e).await;
            }
        };
        let ready = handshake_done.elapsed();
        metrics.connection_opened();
        metrics.handoff(ready);
        let control = SessionControl {
            shutdown: self.shutdown.clone(),
            handle,
            epoch: self.epoch,
            timeouts: self.options.timeouts,
            drain_timeout: self.options.front.drain_timeout,
            access_log: self.options.front.access_log.clone(),
        };
        let (summary, guest) = serve_attached(
            &mut stream,
            plane,
            (first, upstream),
            control,
            &peer,
            read_with_handshake,
            (ready, admitted),
        )
        .await;
        // Its own instance is dropped with the next batch; a shared one
        // stays (`crate::ready`).
        if let Some(guest) = guest {
            instances.retire(guest);
        }
        metrics.connection_ended(&ConnectionOutcome::from(&summary));
    }
}
