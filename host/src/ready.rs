//! Instances made and keyed before the connections they will serve
//! (issue: new connections at the price of an unsandboxed server).
//!
//! Making an instance (instantiation, its first call, its wrapping secret)
//! costs more than the rest of a handoff together; done ahead, off the
//! connection's path, the handoff is only the seal and the import. Each
//! instance still serves one connection and is then dropped: nothing from
//! one connection can reach the next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use crate::component::GuestComponent;
use crate::error::Result;
use crate::instance::GuestInstance;

/// Instances kept ready for the next connections, in one process or in a
/// worker.
pub const READY_INSTANCES: usize = 4;

/// A few ready instances of one component, refilled in the background.
pub struct ReadyInstances {
    component: GuestComponent,
    ready: Mutex<Vec<GuestInstance>>,
    target: usize,
    refilling: AtomicBool,
    /// How many are ready, for the metrics.
    level: Gauge,
}

impl ReadyInstances {
    /// Keeps up to `target` instances of `component` ready, starting with
    /// the first [`take`](Self::take), and `level` (a metrics gauge) at how
    /// many are.
    pub fn new(component: GuestComponent, target: usize, level: Gauge) -> Arc<Self> {
        Arc::new(Self {
            component,
            ready: Mutex::new(Vec::with_capacity(target)),
            target,
            refilling: AtomicBool::new(false),
            level,
        })
    }

    /// An instance for one connection: a ready one if there is one, else
    /// one made now. Starts a refill in the background (inside a tokio
    /// runtime; outside one, instances are made on demand).
    pub fn take(self: &Arc<Self>) -> Result<GuestInstance> {
        let ready = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            let one = ready.pop();
            self.level.set(ready.len() as i64);
            one
        };
        self.refill();
        match ready {
            Some(instance) if !instance.is_poisoned() => Ok(instance),
            _ => self.component.instantiate(),
        }
    }

    /// How many are ready now.
    pub fn len(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is ready now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refills on the runtime itself, one instance per poll. An instance
    /// takes about as long as one guest call on a record (tens of
    /// microseconds, and guest calls already run on their tokio worker), so
    /// a task that yields between instances holds a worker no longer than a
    /// call does. The blocking pool this used before cost a thread wake-up
    /// and context switches per connection, on the cores the connections
    /// need: with `wrk -H 'Connection: close'` against `serve --workers 0`,
    /// 2.75-2.88 context switches per connection with it, 0.5-1.85
    /// without, and more handshakes/s in each of four paired runs.
    fn refill(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            while this.len() < this.target {
                match this.component.instantiate() {
                    Ok(instance) => {
                        let mut ready = this.ready.lock().unwrap_or_else(|e| e.into_inner());
                        ready.push(instance);
                        this.level.set(ready.len() as i64);
                    }
                    // The next connection makes its own and says why.
                    Err(_) => break,
                }
                tokio::task::yield_now().await;
            }
            this.refilling.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{GuestEngine, SandboxConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_are_ready_ahead_and_never_handed_out_twice() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference(&engine).unwrap();
        let level = Gauge::default();
        let pool = ReadyInstances::new(component, 3, level.clone());
        let first = pool.take().unwrap();
        // The refill runs in the background; wait for it.
        for _ in 0..500 {
            if pool.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pool.len(), 3);
        assert_eq!(level.get(), 3);
        let taken: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        let mut ids: Vec<_> = taken.iter().map(|g| g.store_id()).collect();
        ids.push(first.store_id());
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4, "each instance serves one connection");
    }
}
