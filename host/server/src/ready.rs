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

/// When a pool of fresh instances makes more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refill {
    /// On the tokio runtime, [`BATCH`] per poll, once `BATCH` were taken:
    /// a server that runs its connections in this process.
    Background,
    /// Only when the owner calls [`InstancePool::refill_now`], the whole
    /// shortfall in one run, each instance under a number the owner
    /// announces: a worker, whose handshake process picks the instance
    /// for each connection it hands over.
    Announced,
}

/// The guest instances connections are placed in, in one process or in a
/// worker: one type, so the policies (batches, slot reuse, poisoned
/// instances, the ready gauge) are written once.
///
/// A pool holds either fresh instances, each serving one connection and
/// then retired ([`InstancePool::fresh`]), or a few long-lived ones that
/// connections share round-robin ([`InstancePool::shared`], DESIGN section
/// 7).
pub struct InstancePool {
    component: GuestComponent,
    /// How many fresh instances are ready, for the metrics; 0 for shared.
    level: Gauge,
    stock: Stock,
}

enum Stock {
    Fresh(Fresh),
    /// A poisoned instance is replaced on its next use; the connections
    /// still attached to it keep their handle and end with its failure.
    Shared {
        instances: Vec<Mutex<Option<GuestInstance>>>,
        next: AtomicU64,
    },
}

struct Fresh {
    ready: Mutex<Ready>,
    target: usize,
    refill: Refill,
    refilling: AtomicBool,
    retired: Arc<Retired>,
}

#[derive(Default)]
struct Ready {
    /// Each under the number it was announced with ([`Refill::Announced`]).
    instances: Vec<(u32, GuestInstance)>,
    last_number: u32,
}

impl InstancePool {
    /// Keeps up to `target` fresh instances of `component` ready, refilled
    /// as `refill` says, and `level` (a metrics gauge) at how many are.
    /// A [`Refill::Background`] pool starts with the first
    /// [`take`](Self::take); an announced one with the first
    /// [`refill_now`](Self::refill_now).
    pub fn fresh(
        component: GuestComponent,
        target: usize,
        refill: Refill,
        level: Gauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            component,
            level,
            stock: Stock::Fresh(Fresh {
                ready: Mutex::new(Ready {
                    instances: Vec::with_capacity(target),
                    last_number: 0,
                }),
                target,
                refill,
                refilling: AtomicBool::new(false),
                retired: Arc::new(Retired::default()),
            }),
        })
    }

    /// `instances` long-lived instances of `component` (at least one),
    /// each made on its first use and shared by the connections placed
    /// in it. Cheaper per connection (no instantiation, no key pair); a
    /// guest failure ends every connection in that instance.
    pub fn shared(component: GuestComponent, instances: usize, level: Gauge) -> Arc<Self> {
        Arc::new(Self {
            component,
            level,
            stock: Stock::Shared {
                instances: (0..instances.max(1)).map(|_| Mutex::new(None)).collect(),
                next: AtomicU64::new(0),
            },
        })
    }

    /// An instance for one connection. Fresh: a ready one if there is
    /// one, else one made now; a [`Refill::Background`] pool starts a
    /// refill once `BATCH` have been taken (inside a tokio runtime;
    /// outside one, instances are made on demand). Shared: the next one in
    /// turn, made afresh if it is not there yet or poisoned.
    pub fn take(self: &Arc<Self>) -> Result<GuestInstance> {
        let fresh = match &self.stock {
            Stock::Fresh(fresh) => {
                // An announced pool's instances are taken by number: one
                // taken here would be named later and be gone.
                debug_assert!(
                    fresh.refill != Refill::Announced,
                    "take on an announced pool"
                );
                fresh
            }
            Stock::Shared { instances, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % instances.len();
                let mut slot = instances[i].lock().unwrap_or_else(|e| e.into_inner());
                return match slot.as_ref() {
                    Some(instance) if !instance.is_poisoned() => Ok(instance.clone()),
                    _ => {
                        let instance = self.component.instantiate()?;
                        *slot = Some(instance.clone());
                        Ok(instance)
                    }
                };
            }
        };
        let (ready, left) = {
            let mut ready = fresh.lock();
            let one = ready.instances.pop().map(|(_, instance)| instance);
            self.level.set(ready.instances.len() as i64);
            (one, ready.instances.len())
        };
        if fresh.refill == Refill::Background && left + BATCH.min(fresh.target) <= fresh.target {
            self.refill_in_background(fresh);
        }
        match ready {
            Some(instance) if !instance.is_poisoned() => Ok(instance),
            _ => {
                // Retired instances may hold the slots a pooled engine
                // has left.
                fresh.retired.drop_all();
                self.component.instantiate()
            }
        }
    }

    /// The fresh instance announced as `number` by
    /// [`refill_now`](Self::refill_now); `None` if no such instance is
    /// ready (never announced, or already taken).
    pub fn take_announced(&self, number: u32) -> Option<GuestInstance> {
        let Stock::Fresh(fresh) = &self.stock else {
            return None;
        };
        let mut ready = fresh.lock();
        let i = ready.instances.iter().position(|(n, _)| *n == number)?;
        let (_, instance) = ready.instances.swap_remove(i);
        self.level.set(ready.instances.len() as i64);
        Some(instance)
    }

    /// Whether [`refill_now`](Self::refill_now) would make any: `BATCH` or
    /// more of a fresh pool's target are missing. Checked before
    /// [`guest_call`](crate::transport::guest_call), which may hand the
    /// runtime to another thread, is paid for nothing.
    pub fn wants_refill(&self) -> bool {
        match &self.stock {
            Stock::Fresh(fresh) => fresh.lock().instances.len() + BATCH <= fresh.target,
            Stock::Shared { .. } => false,
        }
    }

    /// Refills a fresh pool when `BATCH` or more are missing: the whole
    /// shortfall in one run, made and keyed (each its wrapping secret)
    /// off the path of the connections they will serve, after the ended
    /// connections' instances are dropped. Returns the new instances'
    /// numbers, to announce; none if nothing was missing. Call it through
    /// [`guest_call`](crate::transport::guest_call): it runs guests.
    pub fn refill_now(&self) -> Result<Vec<u32>> {
        let Stock::Fresh(fresh) = &self.stock else {
            return Ok(Vec::new());
        };
        let ready = fresh.lock().instances.len();
        if ready + BATCH > fresh.target {
            return Ok(Vec::new());
        }
        self.fill(fresh, fresh.target - ready)
    }

    /// Takes an instance whose connection has ended. A fresh one is
    /// dropped with the next refill (see [`Retired::retire`]); a shared
    /// one stays in service.
    pub fn retire(&self, instance: GuestInstance) {
        if let Stock::Fresh(fresh) = &self.stock {
            fresh.retired.retire(instance);
        }
    }

    /// How many fresh instances are ready now (0 for a shared pool).
    pub fn len(&self) -> usize {
        match &self.stock {
            Stock::Fresh(fresh) => fresh.lock().instances.len(),
            Stock::Shared { .. } => 0,
        }
    }

    /// Whether no fresh instance is ready now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many retired instances wait to be dropped.
    pub fn retired(&self) -> usize {
        match &self.stock {
            Stock::Fresh(fresh) => fresh.retired.len(),
            Stock::Shared { .. } => 0,
        }
    }

    /// Makes up to `wanted` instances in one run and numbers them.
    fn fill(&self, fresh: &Fresh, wanted: usize) -> Result<Vec<u32>> {
        let made = make_batch(&self.component, &fresh.retired, wanted)?;
        let mut ready = fresh.lock();
        let mut numbers = Vec::with_capacity(made.len());
        for instance in made {
            ready.last_number = ready.last_number.wrapping_add(1);
            numbers.push(ready.last_number);
            let number = ready.last_number;
            ready.instances.push((number, instance));
        }
        self.level.set(ready.instances.len() as i64);
        Ok(numbers)
    }

    /// Refills on the runtime itself, [`BATCH`] instances per poll. An
    /// instance takes about as long as one guest call on a record (tens of
    /// microseconds, and guest calls already run on their tokio worker), so
    /// a task that yields between batches holds a worker no longer than a
    /// few calls do. The blocking pool this used before cost a thread
    /// wake-up and context switches per connection, on the cores the
    /// connections need (PERF.md has the measurement).
    fn refill_in_background(self: &Arc<Self>, fresh: &Fresh) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if fresh.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            let Stock::Fresh(fresh) = &this.stock else {
                return;
            };
            loop {
                let wanted = fresh.target.saturating_sub(this.len()).min(BATCH);
                // The next connection makes its own and says why.
                if wanted == 0 || this.fill(fresh, wanted).is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            fresh.refilling.store(false, Ordering::Release);
        });
    }
}

impl Fresh {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
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
        let pool = InstancePool::fresh(
            component,
            READY_INSTANCES,
            Refill::Background,
            level.clone(),
        );
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
        let pool = InstancePool::fresh(
            component,
            READY_INSTANCES,
            Refill::Background,
            Gauge::default(),
        );
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

    /// A worker's pool: nothing is made until asked, then the whole
    /// shortfall at once, under numbers that are never reused while ready.
    #[test]
    fn an_announced_pool_refills_when_asked_under_new_numbers() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference(&engine).unwrap();
        let level = Gauge::default();
        let pool =
            InstancePool::fresh(component, READY_INSTANCES, Refill::Announced, level.clone());
        assert!(pool.is_empty());
        assert!(pool.wants_refill());
        let first = pool.refill_now().unwrap();
        assert!(!pool.wants_refill());
        assert_eq!(first, (1..=READY_INSTANCES as u32).collect::<Vec<_>>());
        assert_eq!(level.get(), READY_INSTANCES as i64);
        // Fewer than a batch missing: nothing is made.
        let a = pool.take_announced(3).unwrap();
        assert!(
            pool.take_announced(3).is_none(),
            "each number is handed out once"
        );
        assert!(pool.take_announced(99).is_none());
        assert_eq!(pool.refill_now().unwrap(), Vec::<u32>::new());
        let taken: Vec<_> = [1, 2, 4]
            .iter()
            .map(|&n| pool.take_announced(n).unwrap())
            .collect();
        assert_eq!(level.get(), (READY_INSTANCES - BATCH) as i64);
        let next = pool.refill_now().unwrap();
        let expected: Vec<u32> =
            (READY_INSTANCES as u32 + 1..=(READY_INSTANCES + BATCH) as u32).collect();
        assert_eq!(next, expected);
        assert_eq!(pool.len(), READY_INSTANCES);
        for guest in taken.into_iter().chain([a]) {
            pool.retire(guest);
        }
        assert_eq!(pool.retired(), BATCH);
    }

    /// Shared instances are handed out in turn, each to many connections,
    /// and never retired.
    #[test]
    fn a_shared_pool_hands_its_instances_out_in_turn() {
        let engine = GuestEngine::new(SandboxConfig::default()).unwrap();
        let component = GuestComponent::reference(&engine).unwrap();
        let pool = InstancePool::shared(component, 2, Gauge::default());
        let ids: Vec<_> = (0..5).map(|_| pool.take().unwrap().store_id()).collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!([ids[2], ids[3], ids[4]], [ids[0], ids[1], ids[0]]);
        pool.retire(pool.take().unwrap());
        assert_eq!(pool.retired(), 0);
        assert!(pool.take_announced(1).is_none());
        assert_eq!(pool.refill_now().unwrap(), Vec::<u32>::new());
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
