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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyferry_record::connection::Facts;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Whether the server takes connections, for `/healthz`
/// ([`crate::scrape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Not yet: workers still compile the guest.
    Starting,
    /// Connections are taken.
    Serving,
    /// Draining at shutdown.
    Stopping,
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
    certificates: Family<CertificateLabels, Gauge>,
    reload_successful: Gauge,
    reload_success_time: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
    backend_connects: Family<OutcomeLabels, Counter>,
    serving: std::sync::atomic::AtomicU8,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `keyferry_` prefix, and
    /// the standard `process_*` metrics of this process.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("keyferry");
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
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The keyferry version serving, as a label (always 1)",
            build_info,
        );
        let certificates = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_not_after_seconds",
            "When each certificate in service expires, in seconds since the Unix epoch, \
             by the leaf's SHA-256 fingerprint",
            certificates.clone(),
        );
        // As Prometheus names its own: the configuration loaded at start
        // counts as a successful load.
        let reload_successful = Gauge::default();
        reload_successful.set(1);
        let reload_success_time = Gauge::default();
        reload_success_time.set(unix_seconds());
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_last_reload_successful",
            "Whether the last SIGHUP reload succeeded (1), or failed and left the previous \
             certificates and ticket keys in service (0)",
            reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (at start or on SIGHUP), \
             in seconds since the Unix epoch",
            reload_success_time.clone(),
        );
        registry.register(
            "config_reloads",
            "SIGHUP reloads, by outcome",
            reloads.clone(),
        );
        let backend_connects = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "backend_connects",
            "--forward: connections to the backend, by outcome (connected, refused, \
             timed_out, error)",
            backend_connects.clone(),
        );
        root.register_collector(Box::new(ProcessCollector));
        Self {
            registry: root,
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
            certificates,
            reload_successful,
            reload_success_time,
            reloads,
            backend_connects,
            serving: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Counts one backend connect of `--forward`.
    pub fn backend_connect(&self, outcome: crate::ending::ConnectOutcome) {
        self.backend_connects
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Where the server stands, for `/healthz`. The caller says when
    /// connections start being taken and when draining begins.
    pub fn set_serving(&self, serving: Serving) {
        let code = match serving {
            Serving::Starting => 0,
            Serving::Serving => 1,
            Serving::Stopping => 2,
        };
        self.serving
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the server stands.
    pub fn serving(&self) -> Serving {
        match self.serving.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Serving::Starting,
            1 => Serving::Serving,
            _ => Serving::Stopping,
        }
    }

    /// The certificates in service: each leaf's fingerprint and expiry
    /// (`keyferry::tls::Identities::expiries`). Replaces the last set.
    pub fn certificates(&self, expiries: &[(String, i64)]) {
        self.certificates.clear();
        for (fingerprint, not_after) in expiries {
            self.certificates
                .get_or_create(&CertificateLabels {
                    fingerprint: fingerprint.clone(),
                })
                .set(*not_after);
        }
    }

    /// A SIGHUP reload ended: `succeeded`, or left what was in service.
    pub fn config_reloaded(&self, succeeded: bool) {
        self.reload_successful.set(i64::from(succeeded));
        if succeeded {
            self.reload_success_time.set(unix_seconds());
        }
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: if succeeded { "success" } else { "failure" },
            })
            .inc();
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

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The `process_*` metrics every Prometheus client library exports, read
/// from `/proc/self` at each scrape. With workers they describe the
/// handshake process, which serves the scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self/stat` says, in its units.
struct ProcessStat {
    /// User and system CPU time, clock ticks.
    cpu_ticks: u64,
    /// Start, clock ticks after boot.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl ProcessStat {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: the fields
        // are what follows its last ')', starting with the state (field 3).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            cpu_ticks: field(14)? + field(15)?,
            start_ticks: field(22)?,
            virtual_bytes: field(23)?,
            resident_pages: field(24)?,
        })
    }
}

/// When the system booted, in seconds since the Unix epoch.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcessStat::read() else {
            return Ok(());
        };
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        encode_one(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ConstCounter::new(stat.cpu_ticks as f64 / ticks),
        )?;
        encode_one(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            ConstGauge::new(stat.resident_pages.saturating_mul(page) as i64),
        )?;
        encode_one(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            ConstGauge::new(stat.virtual_bytes as i64),
        )?;
        if let Some(boot) = boot_time() {
            encode_one(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                ConstGauge::new(boot as f64 + stat.start_ticks as f64 / ticks),
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            encode_one(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                ConstGauge::new(fds.count() as i64),
            )?;
        }
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            encode_one(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                ConstGauge::new(i64::try_from(max).unwrap_or(i64::MAX)),
            )?;
        }
        Ok(())
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

    #[test]
    fn build_certificates_reloads_and_the_process_are_described() {
        let m = Metrics::new();
        m.certificates(&[("AA:BB".into(), 1_800_000_000)]);
        m.config_reloaded(false);
        let text = m.encode();
        let version = format!(
            "keyferry_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &version), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "keyferry_certificate_not_after_seconds{fingerprint=\"AA:BB\"}"
            ),
            Some(1_800_000_000.0)
        );
        assert_eq!(
            sample(&text, "keyferry_config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "keyferry_config_reloads_total{outcome=\"failure\"}"),
            Some(1.0)
        );
        // A new set replaces the old one.
        m.certificates(&[("CC:DD".into(), 1_900_000_000)]);
        m.config_reloaded(true);
        let text = m.encode();
        assert!(!text.contains("AA:BB"), "{text}");
        assert_eq!(
            sample(&text, "keyferry_config_last_reload_successful"),
            Some(1.0)
        );
        let loaded = sample(
            &text,
            "keyferry_config_last_reload_success_timestamp_seconds",
        );
        assert!(loaded.is_some_and(|t| t > 1.7e9), "{text}");
        // This process, read from /proc.
        assert!(
            sample(&text, "process_cpu_seconds_total").is_some(),
            "{text}"
        );
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));
        assert!(sample(&text, "process_open_fds").is_some_and(|n| n >= 3.0));
        assert!(sample(&text, "process_max_fds").is_some_and(|n| n >= 3.0));
        let started = sample(&text, "process_start_time_seconds").unwrap();
        let now = unix_seconds() as f64;
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started}"
        );
    }
}
