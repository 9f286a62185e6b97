//! What `serve` counts, in Prometheus's (OpenMetrics) text format: what an
//! operator who runs nginx or Envoy beside it expects to scrape.
//!
//! One [`Metrics`] belongs to the process that accepts connections. With
//! worker processes that is the handshake process: the workers report each
//! connection's end in a frame ([`crate::channel::FromWorker::Done`]), so
//! one scrape sees every connection and no worker needs a listener.
//!
//! The text is encoded by `prometheus-client`; [`crate::scrape::serve_metrics`] only puts
//! it on a plain-HTTP listener of its own, loopback unless the operator
//! says otherwise. Nothing here is derived from key material or plaintext:
//! counts, sizes, times and names that are already in the log line.

use std::time::Duration;

use keyferry_guest::connection::Facts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ending::ConnectionOutcome;
use keyferry::error::{Error, HandshakeError, TrapKind};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    version: &'static str,
    suite: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndingLabels {
    ending: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrapLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

/// The counters, gauges and histogram of one server, and the registry that
/// encodes them. Cheap to update from any task; share it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    accepted: Counter,
    refused: Counter,
    handshakes: Family<HandshakeLabels, Counter>,
    handoff: Histogram,
    open: Gauge,
    ended: Family<EndingLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    traps: Family<TrapLabels, Counter>,
    ready: Family<WorkerLabels, Gauge>,
    worker_restarts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `keyferry_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyferry");
        let accepted = Counter::default();
        let refused = Counter::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        // 10 µs to about 0.16 s: a ready instance takes tens of µs, a
        // fresh one about 100, a worker being replaced much longer.
        let handoff = Histogram::new(exponential_buckets(10e-6, 2.0, 15));
        let open = Gauge::default();
        let ended = Family::<EndingLabels, Counter>::default();
        let bytes = Family::<DirectionLabels, Counter>::default();
        let traps = Family::<TrapLabels, Counter>::default();
        let ready = Family::<WorkerLabels, Gauge>::default();
        let worker_restarts = Counter::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted",
            accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Clients closed at the connection cap because no connection was idle",
            refused.clone(),
        );
        registry.register(
            "handshakes",
            "Handshakes by protocol version, cipher suite and outcome \
             (version and suite are \"unknown\" when the handshake did not complete)",
            handshakes.clone(),
        );
        registry.register(
            "handoff_seconds",
            "From handshake complete to the guest holding the keys and ready",
            handoff.clone(),
        );
        registry.register(
            "connections_open",
            "Connections handed to a guest and not yet ended",
            open.clone(),
        );
        registry.register(
            "connections_ended",
            "Connections handed to a guest (or meant for one), by how they ended",
            ended.clone(),
        );
        registry.register(
            "bytes",
            "TLS bytes after the handshake, by direction (received from or sent to clients)",
            bytes.clone(),
        );
        registry.register(
            "guest_traps",
            "Guest traps that ended a connection, by kind",
            traps.clone(),
        );
        registry.register(
            "ready_instances",
            "Guest instances made and keyed ahead, waiting for a connection, by worker",
            ready.clone(),
        );
        registry.register(
            "worker_restarts",
            "Worker processes that ended and were replaced",
            worker_restarts.clone(),
        );
        Self {
            registry,
            accepted,
            refused,
            handshakes,
            handoff,
            open,
            ended,
            bytes,
            traps,
            ready,
            worker_restarts,
        }
    }

    /// The OpenMetrics text of every metric, as a scrape returns it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// Connections accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.accepted.get()
    }

    pub(crate) fn refused_at_cap(&self) {
        self.refused.inc();
    }

    pub(crate) fn handshake_completed(&self, facts: &Facts) {
        let version = facts.version.name();
        let suite = keyferry::suites::ALL
            .iter()
            .find(|s| s.name() == facts.suite)
            .map_or("unknown", |s| s.name());
        self.handshakes
            .get_or_create(&HandshakeLabels {
                version,
                suite,
                outcome: "completed",
            })
            .inc();
    }

    pub(crate) fn handshake_failed(&self, error: &Error) {
        let outcome = match error {
            Error::Handshake(HandshakeError::TimedOut) => "timed_out",
            Error::Handshake(HandshakeError::PeerClosed | HandshakeError::PeerSilent) => {
                "peer_closed"
            }
            Error::Io(_) => "transport_error",
            _ => "failed",
        };
        self.handshakes
            .get_or_create(&HandshakeLabels {
                version: "unknown",
                suite: "unknown",
                outcome,
            })
            .inc();
    }

    /// A connection is now in a guest's (or a worker's) hands.
    pub(crate) fn connection_opened(&self) {
        self.open.inc();
    }

    /// A guest was ready with a connection's keys `handoff` after its
    /// handshake completed.
    pub(crate) fn handoff(&self, handoff: Duration) {
        self.handoff.observe(handoff.as_secs_f64());
    }

    /// A connection that [`connection_opened`](Self::connection_opened)
    /// counted has ended.
    pub(crate) fn connection_ended(&self, outcome: &ConnectionOutcome) {
        self.open.dec();
        self.count_ending(outcome);
    }

    /// A connection whose handshake completed but that no guest took.
    pub(crate) fn connection_unserved(&self, outcome: &ConnectionOutcome) {
        self.count_ending(outcome);
    }

    fn count_ending(&self, outcome: &ConnectionOutcome) {
        self.ended
            .get_or_create(&EndingLabels {
                ending: outcome.ending.as_str(),
            })
            .inc();
        if let Some(kind) = outcome.trap {
            self.traps
                .get_or_create(&TrapLabels {
                    kind: trap_label(kind),
                })
                .inc();
        }
        self.bytes
            .get_or_create(&DirectionLabels {
                direction: "received",
            })
            .inc_by(outcome.bytes_in);
        self.bytes
            .get_or_create(&DirectionLabels { direction: "sent" })
            .inc_by(outcome.bytes_out);
    }

    /// The gauge of instances ready in `worker` ("in-process" without
    /// workers), to be set by whoever keeps them.
    pub(crate) fn ready_instances(&self, worker: &str) -> Gauge {
        self.ready
            .get_or_create(&WorkerLabels {
                worker: worker.to_string(),
            })
            .clone()
    }

    pub(crate) fn worker_restarted(&self) {
        self.worker_restarts.inc();
    }
}

fn trap_label(kind: TrapKind) -> &'static str {
    match kind {
        TrapKind::OutOfFuel => "out_of_fuel",
        TrapKind::Deadline => "deadline",
        TrapKind::ResourceLimit => "resource_limit",
        TrapKind::Other => "other",
        TrapKind::WouldBlock => "would_block",
        // A kind the core adds later counts as "other" until it is named here.
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ending::EndingKind;

    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn outcomes_are_counted_by_ending_trap_and_direction() {
        let m = Metrics::new();
        for us in [40, 90] {
            m.connection_opened();
            m.handoff(Duration::from_micros(us));
        }
        m.connection_ended(&ConnectionOutcome {
            ending: EndingKind::CloseNotify,
            trap: None,
            bytes_in: 100,
            bytes_out: 2000,
        });
        m.connection_ended(&ConnectionOutcome {
            ending: EndingKind::GuestFailed,
            trap: Some(TrapKind::OutOfFuel),
            bytes_in: 5,
            bytes_out: 0,
        });
        let text = m.encode();
        assert_eq!(sample(&text, "keyferry_connections_open"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                "keyferry_connections_ended_total{ending=\"close_notify\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "keyferry_connections_ended_total{ending=\"guest_failure\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "keyferry_guest_traps_total{kind=\"out_of_fuel\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "keyferry_bytes_total{direction=\"received\"}"),
            Some(105.0)
        );
        assert_eq!(
            sample(&text, "keyferry_bytes_total{direction=\"sent\"}"),
            Some(2000.0)
        );
        assert_eq!(sample(&text, "keyferry_handoff_seconds_count"), Some(2.0));
        // 40 µs falls in the 40 µs bucket (10·2²), 90 µs in the 160 µs one.
        assert_eq!(
            sample(&text, "keyferry_handoff_seconds_bucket{le=\"0.00004\"}"),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
