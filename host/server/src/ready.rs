//! Instances made and keyed before the connections they will serve, and
//! dropped after them, a few at a time (issue: new connections at the
//! price of an unsandboxed server).
//!
//! Making an instance (instantiation, its first call, its wrapping secret)
//! costs more than the rest of a handoff together; done ahead, off the
//! connection's path, the handoff is only the seal and the import. Each
//! instance still serves one connection and is then dropped: nothing from
//! one connection can reach the next.
//!
//! Made one at a time between handshakes, an instance finds wasmtime's
//! code and the component's metadata gone from the caches, and so does a
//! store being dropped. Made in a run of [`BATCH`], right after the
//! instances of ended connections are dropped (their memory slots are the
//! ones the new instances take), the run shares one warm-up: `keyferry
//! bench` measures the sandbox's work per connection both ways.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

use keyferry::component::GuestComponent;
use keyferry::error::Result;
use keyferry::instance::GuestInstance;

/// Instances kept ready for the next connections, in one process or in a
/// worker. A refill starts when [`BATCH`] of them have been taken.
pub const READY_INSTANCES: usize = 8;

/// Instances made, or dropped, in one go.
pub const BATCH: usize = 4;

/// Memory slots a pooled engine needs besides one per connection: the
/// ready instances, and the retired ones waiting to be dropped.
pub const SPARE_SLOTS: u32 = (READY_INSTANCES + 2 * BATCH) as u32;

/// How often a retired instance is looked for when no refill comes (an
/// idle server). Its keys were wiped when its connection ended, but its
/// memory slot is held until it is dropped: within twice this.
pub const RETIRED_WAIT: Duration = Duration::from_millis(50);

/// Instances whose connections have ended, waiting to be dropped together:
/// before the next batch is made (whose instances then take their slots),
/// when `2 * BATCH` wait, or within `2 * RETIRED_WAIT` when no batch is
/// made. A retired instance is never handed out again.
#[derive(Default)]
pub struct Retired {
    waiting: Mutex<Vec<GuestInstance>>,
    /// How many times the waiting instances were dropped: the sweeper
    /// drops them only when a whole [`RETIRED_WAIT`] passed without it.
    drops: AtomicU64,
    sweeping: AtomicBool,
}

impl Retired {
    /// Takes `instance`, whose connection has ended (drop its
    /// [`DataPlane`](keyferry::DataPlane) first: that wipes the connection's
    /// keys in the guest). Inside a tokio runtime a sweeper task runs
    /// while any wait; outside one, they wait for the next
    /// [`drop_all`](Self::drop_all) or for `2 * BATCH` to gather.
    pub fn retire(self: &Arc<Self>, instance: GuestInstance) {
        let full = {
            let mut waiting = self.lock();
            waiting.push(instance);
            waiting.len() >= 2 * BATCH
        };
        if full {
            self.drop_all();
        } else if !self.sweeping.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.clone().sweep());
                }
                Err(_) => self.sweeping.store(false, Ordering::Release),
            }
        }
    }

    /// Drops what has waited a whole [`RETIRED_WAIT`] with no batch made,
    /// until none waits. Under load a batch always comes first, so this
    /// wakes every `RETIRED_WAIT` and drops nothing.
    async fn sweep(self: Arc<Self>) {
        loop {
            let seen = self.drops.load(Ordering::Acquire);
            tokio::time::sleep(RETIRED_WAIT).await;
            if self.drops.load(Ordering::Acquire) == seen {
                self.drop_all();
            }
            if self.is_empty() {
                self.sweeping.store(false, Ordering::Release);
                // One retired between the check and the store found the
                // sweeper still running: take it on.
                if self.is_empty() || self.sweeping.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }

    /// Drops every waiting instance now: their stores, and the resets of
    /// their memory slots.
    pub fn drop_all(&self) {
        let gone = std::mem::take(&mut *self.lock());
        self.drops.fetch_add(1, Ordering::AcqRel);
        drop(gone);
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<GuestInstance>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes up to `count` instances of `component` in one go, after dropping
/// the retired ones (whose slots they then take). Stops at the first
/// failure, which it returns only if nothing was made.
pub fn make_batch(
    component: &GuestComponent,
    retired: &Retired,
    count: usize,
) -> Result<Vec<GuestInstance>> {
    retired.drop_all();
    let mut made = Vec::with_capacity(count);
    for _ in 0..count {
        match component.instantiate() {
            Ok(instance) => made.push(instance),
            Err(e) if made.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(made)
}

/// A few ready instances of one component, refilled in the background.
pub struct ReadyInstances {
    component: GuestComponent,
    ready: Mutex<Vec<GuestInstance>>,
    target: usize,
    refilling: AtomicBool,
    retired: Arc<Retired>,
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
            retired: Arc::new(Retired::default()),
            level,
        })
    }

    /// An instance for one connection: a ready one if there is one, else
    /// one made now. Starts a refill in the background once `BATCH` have
    /// been taken (inside a tokio runtime; outside one, instances are made
    /// on demand).
    pub fn take(self: &Arc<Self>) -> Result<GuestInstance> {
        let (ready, left) = {
            let mut ready = self.lock();
            let one = ready.pop();
            self.level.set(ready.len() as i64);
            (one, ready.len())
        };
        if left + BATCH.min(self.target) <= self.target {
            self.refill();
        }
        match ready {
            Some(instance) if !instance.is_poisoned() => Ok(instance),
            _ => {
                // Retired instances may hold the slots a pooled engine
                // has left.
                self.retired.drop_all();
                self.component.instantiate()
            }
        }
    }

    /// Takes an instance whose connection has ended, to drop it with the
    /// next refill (see [`Retired::retire`]).
    pub fn retire(&self, instance: GuestInstance) {
        self.retired.retire(instance);
    }

    /// How many are ready now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is ready now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many retired instances wait to be dropped.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<GuestInstance>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refills on the runtime itself, [`BATCH`] instances per poll. An
    /// instance takes about as long as one guest call on a record (tens of
    /// microseconds, and guest calls already run on their tokio worker), so
    /// a task that yields between batches holds a worker no longer than a
    /// few calls do. The blocking pool this used before cost a thread
    /// wake-up and context switches per connection, on the cores the
    /// connections need: with `wrk -H 'Connection: close'` against `serve
    /// --workers 0`, 2.75-2.88 context switches per connection with it,
    /// 0.5-1.85 without, and more handshakes/s in each of four paired runs.
    fn refill(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            loop {
                let wanted = this.target.saturating_sub(this.len()).min(BATCH);
                if wanted == 0 {
                    break;
                }
                match make_batch(&this.component, &this.retired, wanted) {
                    Ok(made) => {
                        let mut ready = this.lock();
                        ready.extend(made);
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
    use keyferry::engine::{GuestEngine, SandboxConfig};

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_are_ready_ahead_and_never_handed_out_twice() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference(&engine).unwrap();
        let level = Gauge::default();
        let pool = ReadyInstances::new(component, READY_INSTANCES, level.clone());
        let first = pool.take().unwrap();
        // The refill runs in the background; wait for it.
        until(|| pool.len() == READY_INSTANCES).await;
        assert_eq!(pool.len(), READY_INSTANCES);
        assert_eq!(level.get(), READY_INSTANCES as i64);
        let taken: Vec<_> = (0..READY_INSTANCES).map(|_| pool.take().unwrap()).collect();
        let mut ids: Vec<_> = taken.iter().map(|g| g.store_id()).collect();
        ids.push(first.store_id());
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            READY_INSTANCES + 1,
            "each instance serves one connection"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retired_instances_go_with_the_next_refill_or_after_a_wait() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference(&engine).unwrap();
        let pool = ReadyInstances::new(component, READY_INSTANCES, Gauge::default());
        let first = pool.take().unwrap();
        until(|| pool.len() == READY_INSTANCES).await;
        pool.retire(first);
        assert_eq!(pool.retired(), 1);
        // Fewer than a batch taken: no refill, and the retired one waits.
        let few: Vec<_> = (0..BATCH - 1).map(|_| pool.take().unwrap()).collect();
        assert_eq!(pool.retired(), 1);
        assert_eq!(pool.len(), READY_INSTANCES - (BATCH - 1));
        // The batch's last take starts a refill, which drops it first.
        let last = pool.take().unwrap();
        until(|| pool.len() == READY_INSTANCES).await;
        assert_eq!(pool.len(), READY_INSTANCES);
        assert_eq!(pool.retired(), 0);
        // With no refill coming, the sweeper drops them.
        for guest in few.into_iter().chain([last]) {
            pool.retire(guest);
        }
        assert_eq!(pool.retired(), BATCH);
        until(|| pool.retired() == 0).await;
        assert_eq!(pool.retired(), 0);
    }

    #[test]
    fn outside_a_runtime_retired_instances_wait_for_two_batches() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference(&engine).unwrap();
        let retired = Arc::new(Retired::default());
        let made = make_batch(&component, &retired, 2 * BATCH).unwrap();
        assert_eq!(made.len(), 2 * BATCH);
        for (n, guest) in made.into_iter().enumerate() {
            retired.retire(guest);
            let expected = if n + 1 == 2 * BATCH { 0 } else { n + 1 };
            assert_eq!(retired.len(), expected);
        }
        // A batch drops what waits before making its own.
        let one = make_batch(&component, &retired, 1).unwrap();
        retired.retire(one.into_iter().next().unwrap());
        assert_eq!(retired.len(), 1);
        assert_eq!(make_batch(&component, &retired, 1).unwrap().len(), 1);
        assert!(retired.is_empty());
    }
}
