//! The handoff latency (DESIGN section 5) and the sandbox's share of a
//! connection: what handing a finished handshake to a guest costs, part by
//! part, against the rustls handshake itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use keyferry::tls::{ServerVerification, TlsOptions};
use keyferry::{DataPlane, GuestComponent, GuestInstance};
use keyferry_server::ready::{BATCH, Retired, make_batch};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection};

/// The handoff latency (DESIGN section 5): from rustls reporting the
/// handshake complete to the guest ready to serve, covering key export,
/// instantiation, sealing, import and start. Microseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct HandoffLatency {
    /// Median over the runs, a fresh instance made after the handshake.
    pub median_us: f64,
    /// 99th percentile of the same.
    pub p99_us: f64,
    /// Median with the instance made before the handshake completed (a
    /// ready instance, as `serve` keeps): export, seal, import, start.
    pub ready_median_us: f64,
    /// 99th percentile of the same.
    pub ready_p99_us: f64,
    /// Medians of the parts: key export from rustls.
    pub export_us: f64,
    /// Instantiation (a fresh guest per connection).
    pub instantiate_us: f64,
    /// Sealing both blobs, with the instance's wrapping secret handed over.
    pub seal_us: f64,
    /// Delivering both blobs, importing them and starting the connection.
    pub attach_us: f64,
    /// Dropping the connection's instance when it is over (its store and
    /// memory slot).
    pub teardown_us: f64,
    /// Instantiation per instance in a batch, as `serve` makes its ready
    /// instances (`keyferry_server::ready`): the batch's time over its size.
    pub batched_instantiate_us: f64,
    /// Teardown per connection with stores dropped in a batch before the
    /// next one is made, as `serve` does: the connection's own drop (its
    /// keys wiped in the guest) and its share of the batch's drop.
    pub batched_teardown_us: f64,
    /// Median CPU time of the server's rustls handshake itself (the
    /// ClientHello to complete), the yardstick for the sandbox's cost.
    pub handshake_us: f64,
    /// Runs measured.
    pub runs: usize,
}

impl HandoffLatency {
    /// The sandbox's own work for one connection, wherever it runs (a
    /// ready instance is made off the connection's path, but made all the
    /// same): the medians of the parts the sandbox adds to a handshake.
    pub fn sandbox_us(&self) -> f64 {
        self.instantiate_us + self.seal_us + self.attach_us + self.teardown_us
    }

    /// The same with instances made and dropped in batches, `serve`'s way.
    pub fn batched_sandbox_us(&self) -> f64 {
        self.batched_instantiate_us + self.seal_us + self.attach_us + self.batched_teardown_us
    }
}

/// Runs `runs` in-memory TLS 1.3 handshakes against a rustls client and
/// times each handoff into a fresh application instance.
pub fn measure_handoff(component: &GuestComponent, runs: usize) -> Result<HandoffLatency> {
    use keyferry::handshake::{Handshake, Progress};
    let identity = keyferry_server::certificate::self_signed(&["localhost".into()])?;
    let options = TlsOptions::default();
    let server = Arc::new(options.server_config(&identity)?);
    let client = Arc::new(options.client_config(ServerVerification::DangerousNone)?);
    let runs = runs.max(2);
    let [
        mut total,
        mut ready,
        mut export,
        mut instantiate,
        mut seal,
        mut attach,
        mut teardown,
        mut handshake,
        mut batched_instantiate,
        mut batched_teardown,
    ] = std::array::from_fn(|_| Vec::with_capacity(runs));
    // Ready instances, made and dropped a batch at a time as `serve` does.
    let retired = Arc::new(Retired::default());
    let mut batch: Vec<GuestInstance> = Vec::new();
    // Each retired connection's own part of its teardown, until its
    // batch is dropped and its share of that is known.
    let mut pending_teardown: Vec<f64> = Vec::new();
    let drop_retired = |pending: &mut Vec<f64>, into: &mut Vec<f64>| {
        let waiting = retired.len().max(1) as f64;
        let t = Instant::now();
        retired.drop_all();
        let share = t.elapsed().as_secs_f64() * 1e6 / waiting;
        into.extend(pending.drain(..).map(|own| own + share));
    };
    for i in 0..runs {
        // Every other run uses an instance made beforehand, as `serve`
        // keeps ready ones; the others make one after the handshake.
        let made_before = i % 2 == 1;
        let early = if made_before {
            if batch.is_empty() {
                drop_retired(&mut pending_teardown, &mut batched_teardown);
                let t = Instant::now();
                batch = make_batch(component, &retired, BATCH)?;
                let made = t.elapsed().as_secs_f64() * 1e6 / batch.len().max(1) as f64;
                batched_instantiate.extend(std::iter::repeat_n(made, batch.len()));
            }
            batch.pop()
        } else {
            None
        };
        let mut in_rustls = Duration::ZERO;
        let mut peer: Connection = ClientConnection::new(
            client.clone(),
            ServerName::try_from("localhost").expect("valid name"),
        )?
        .into();
        let mut hs = Handshake::server(&server, i as u64 + 1)?;
        let complete = loop {
            let mut wire = Vec::new();
            while peer.wants_write() {
                peer.write_tls(&mut wire)?;
            }
            let t = Instant::now();
            hs.feed(&wire)?;
            let progress = hs.advance()?;
            let out = hs.take_outgoing();
            in_rustls += t.elapsed();
            let mut rest = &out[..];
            while !rest.is_empty() {
                peer.read_tls(&mut rest)?;
                peer.process_new_packets()?;
            }
            if progress == Progress::Complete {
                break Instant::now();
            }
        };
        let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
        let t = Instant::now();
        let handoff = hs.finish()?;
        export.push(us(t));
        handshake.push(in_rustls.as_secs_f64() * 1e6);
        let guest = match early {
            Some(guest) => guest,
            None => {
                let t = Instant::now();
                let guest = component.instantiate()?;
                instantiate.push(us(t));
                guest
            }
        };
        // The parts of DataPlane::new, timed one by one.
        let t = Instant::now();
        let seal_blob = guest.seal_traffic_key(&handoff.keys.seal)?;
        let open_blob = guest.seal_traffic_key(&handoff.keys.open)?;
        seal.push(us(t));
        drop(handoff.keys);
        let t = Instant::now();
        let (plane, _) = DataPlane::from_blobs(guest, &seal_blob, &open_blob, handoff.facts)?;
        attach.push(us(t));
        if made_before { &mut ready } else { &mut total }.push(us(complete));
        if made_before {
            // The connection's keys are wiped in the guest now; its store
            // is dropped with the next batch.
            let guest = plane.guest().clone();
            let t = Instant::now();
            drop(plane);
            let own = us(t);
            retired.retire(guest);
            pending_teardown.push(own);
        } else {
            // The instance goes with its connection: its store and memory
            // slot.
            let t = Instant::now();
            drop(plane);
            teardown.push(us(t));
        }
    }
    drop_retired(&mut pending_teardown, &mut batched_teardown);
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    Ok(HandoffLatency {
        median_us: pct(&mut total, 0.5),
        p99_us: pct(&mut total, 0.99),
        ready_median_us: pct(&mut ready, 0.5),
        ready_p99_us: pct(&mut ready, 0.99),
        export_us: pct(&mut export, 0.5),
        instantiate_us: pct(&mut instantiate, 0.5),
        seal_us: pct(&mut seal, 0.5),
        attach_us: pct(&mut attach, 0.5),
        teardown_us: pct(&mut teardown, 0.5),
        batched_instantiate_us: pct(&mut batched_instantiate, 0.5),
        batched_teardown_us: pct(&mut batched_teardown, 0.5),
        handshake_us: pct(&mut handshake, 0.5),
        runs,
    })
}
