//! What `serve` counts, in Prometheus's (OpenMetrics) text format: what an
//! operator who runs nginx or Envoy beside it expects to scrape.
//!
//! One [`Metrics`] belongs to the process that accepts connections. With
//! worker processes that is the handshake process: the workers report each
//! connection's end in a frame ([`crate::channel::FromWorker::Done`]), so
//! one scrape sees every connection and no worker needs a listener.
//!
//! The text is encoded by `prometheus-client`; [`serve_metrics`] only puts
//! it on a plain-HTTP listener of its own, loopback unless the operator
//! says otherwise. Nothing here is derived from key material or plaintext:
//! counts, sizes, times and names that are already in the log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyferry_guest::connection::Facts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::{Error, HandshakeError, TrapKind};
use crate::transport::{EndingKind, SessionSummary};

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

/// How one served connection went, as [`Metrics::connection_ended`] counts
/// it: from the session summary in one process, from the worker's report
/// with workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionOutcome {
    /// How it ended.
    pub ending: EndingKind,
    /// The trap that ended it, if a guest trapped.
    pub trap: Option<TrapKind>,
    /// Ciphertext bytes received after the handshake.
    pub bytes_in: u64,
    /// Ciphertext bytes sent after the handshake.
    pub bytes_out: u64,
}

impl From<&SessionSummary> for ConnectionOutcome {
    fn from(summary: &SessionSummary) -> Self {
        Self {
            ending: summary.ending.kind(),
            trap: summary.ending.trap(),
            bytes_in: summary.bytes_in,
            bytes_out: summary.bytes_out,
        }
    }
}

impl ConnectionOutcome {
    /// A connection no guest took, after `error` (if it was a guest's).
    pub fn unserved(error: Option<&Error>) -> Self {
        Self {
            ending: EndingKind::Unserved,
            trap: error.and_then(Error::trap),
            bytes_in: 0,
            bytes_out: 0,
        }
    }
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
        let suite = crate::suites::ALL
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
            Error::Handshake(HandshakeError::PeerClosed) => "peer_closed",
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
    }
}

/// The most a scrape request may send before its blank line.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const MAX_SCRAPES: usize = 8;

/// Serves `GET /metrics` (plain HTTP/1.1, one request per connection) on
/// `listener` until `shutdown` becomes true. Any other path is a 404, any
/// other method a 405; a request that is too long, malformed or slow is
/// answered 400 or dropped. One scraper's trouble never touches another.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Scrapes served at once: a scraper is one client, a few at most; more
    // are closed at once rather than queued.
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            debug!(%peer, "metrics listener: too many scrapes at once; closed");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = scrape(stream, &metrics).await {
                debug!(%peer, error = %e, "metrics request failed");
            }
            drop(permit);
        });
    }
}

async fn scrape(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(end));
            }
            if request.len() > MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            request.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = head
        .and_then(|end| std::str::from_utf8(&request[..end]).ok())
        .and_then(|head| head.lines().next())
        .unwrap_or("");
    let (status, content_type, body) = answer(line, metrics);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    // A scraper that stops reading is dropped, not waited for.
    let head_only = line.starts_with("HEAD ");
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The status, content type and body for one request line.
fn answer(line: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", TEXT, "malformed request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", TEXT, "HTTP/1.x only\n".into());
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => ("405 Method Not Allowed", TEXT, "GET /metrics\n".into()),
        _ => ("404 Not Found", TEXT, "metrics are at /metrics\n".into()),
    }
}

/// Binds the metrics listener: `ADDR:PORT`, or a bare `PORT` on loopback
/// (metrics say how busy a server is and which names it serves; they are
/// not for the world unless the operator says so).
pub fn metrics_address(spec: &str) -> Option<SocketAddr> {
    match spec.parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => spec.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn requests_other_than_get_metrics_are_refused() {
        let m = Metrics::new();
        assert_eq!(answer("GET /metrics HTTP/1.1", &m).0, "200 OK");
        assert_eq!(answer("GET /metrics?x=1 HTTP/1.0", &m).0, "200 OK");
        assert_eq!(answer("GET / HTTP/1.1", &m).0, "404 Not Found");
        assert_eq!(
            answer("POST /metrics HTTP/1.1", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(answer("GET /metrics", &m).0, "400 Bad Request");
        assert_eq!(answer("", &m).0, "400 Bad Request");
        assert_eq!(answer("GET /metrics SPDY/3", &m).0, "400 Bad Request");
    }

    #[test]
    fn a_bare_port_is_loopback() {
        assert_eq!(
            metrics_address("9100"),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            metrics_address("0.0.0.0:9100"),
            Some("0.0.0.0:9100".parse().unwrap())
        );
        assert_eq!(
            metrics_address("[::1]:9100"),
            Some("[::1]:9100".parse().unwrap())
        );
        assert_eq!(metrics_address("localhost"), None);
    }
}
