//! `keyferry bench-serve`: `keyferry serve` against a plain rustls server
//! and nginx on loopback, with responses of the same length and the same
//! suite, side by side in one run. wrk drives the load; each server runs as
//! its own process so its memory per connection can be read from /proc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

mod baseline;
mod measure;
mod smaps;
mod targets;

use crate::bench::median_of;

pub use baseline::baseline_server;
#[cfg(test)]
use measure::cpu_ticks;
use measure::{Load, measure, memory_per_connection};
use targets::{
    start_baseline, start_keyferry, start_keyferry_wasi_http, start_matched, start_nginx,
    start_wasmtime_behind_nginx,
};

/// The text of the baselines' body. Each baseline repeats it to the length
/// that makes its whole response (status line, headers, body) as long as
/// keyferry's HTTP report, measured at start-up ([`padded_body`]).
pub const BODY: &str = "keyferry benchmark body: the same bytes from every server under test, so the comparison \
is the TLS and data-plane work and nothing else. Lorem ipsum dolor sit amet, consectetur adipiscing elit, \
sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.\n";

/// [`BODY`] repeated, or cut, to exactly `len` bytes, ending in a newline.
pub fn padded_body(len: usize) -> String {
    let text = BODY.trim_end();
    let mut body: String = text
        .chars()
        .chain(core::iter::once(' '))
        .cycle()
        .take(len.saturating_sub(1))
        .collect();
    if len > 0 {
        body.push('\n');
    }
    body
}

/// How long and how hard `bench-serve` drives each server.
pub struct Options {
    /// Length of each wrk run.
    pub duration: Duration,
    /// Connections wrk keeps open.
    pub connections: u32,
    /// Idle connections opened to measure memory per connection.
    pub idle_connections: u32,
    /// How many times each server is measured; rates and ratios are the
    /// medians.
    pub rounds: usize,
    /// Where to write bench-serve.svg and bench-serve.json.
    pub out: PathBuf,
    /// A stock wasi:http component: adds keyferry serving it, and nginx
    /// (TLS 1.3) in front of `wasmtime serve` running it.
    pub wasi_http: Option<PathBuf>,
}

/// One server's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// Which server.
    pub server: &'static str,
    /// Keep-alive requests per second.
    pub requests_per_second: f64,
    /// New connections (one request each) per second.
    pub handshakes_per_second: f64,
    /// Memory per idle connection, KiB: growth of the proportional set
    /// size (PSS) of the server and its children.
    pub kib_per_connection: f64,
    /// The same in resident set size (RSS), which counts pages shared
    /// between mappings once per mapping.
    pub rss_kib_per_connection: f64,
    /// Where the memory per idle connection goes: private dirty KiB per
    /// connection by kind of mapping, largest first (PSS also counts a
    /// share of pages other processes map, so the two totals differ).
    pub kib_per_connection_by_kind: Vec<(smaps::Kind, f64)>,
    /// Server CPU time (user and system, the server and its children) per
    /// keep-alive request, µs: what a request costs whatever shares the
    /// cores, here wrk.
    pub cpu_us_per_request: f64,
    /// The same per new connection (a handshake and one request).
    pub cpu_us_per_connection: f64,
    /// Bytes of one keep-alive response (status line, headers and body),
    /// read at start-up: the baselines' bodies are padded to match
    /// keyferry's, so every server encrypts and sends as much.
    pub response_bytes: usize,
}

/// One server against another, from the same run: the median over the
/// rounds of each round's ratio.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ratio {
    /// The server measured.
    pub server: &'static str,
    /// The server it is compared with.
    pub against: &'static str,
    /// Keep-alive requests/s, as a multiple of `against`'s.
    pub requests: f64,
    /// Handshakes/s, as a multiple of `against`'s.
    pub handshakes: f64,
}

/// Everything one `bench-serve` run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Seconds per wrk run.
    pub seconds: u64,
    /// Connections wrk kept open.
    pub connections: u32,
    /// Idle connections for the memory figure.
    pub idle_connections: u32,
    /// Measurements per server; rates and ratios are medians.
    pub rounds: usize,
    /// Per server, in the table's order.
    pub rows: Vec<Row>,
    /// keyferry's modes against each other and against the baselines.
    pub ratios: Vec<Ratio>,
}

/// How many rows of the table are keyferry itself.
const KEYFERRY_ROWS: usize = 4;

/// Runs wrk against keyferry (instance per connection and shared), a plain
/// rustls server and nginx, each its own process, and prints the table.
pub fn run(options: Options) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("keyferry-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert: PathBuf = dir.join("cert.pem");
    let key: PathBuf = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;

    // Keep KEYFERRY_ROWS in step with these: the first four are keyferry.
    // The default (one worker per core) beside one per core but one: the
    // handshake process needs a core under load too, and here wrk takes
    // one as well.
    let fewer = crate::commands::serve::default_workers()
        .saturating_sub(1)
        .max(1);
    let per_core_args = ["--workers".to_string(), fewer.to_string()];
    let per_core_label = format!("keyferry serve --workers {fewer} (one per core but one)");
    let mut targets = vec![
        start_keyferry(
            &exe,
            &cert,
            &key,
            &[],
            // Leaked: a label for the whole run, as the others are.
            String::leak(format!(
                "keyferry serve (default: {} workers)",
                crate::commands::serve::default_workers()
            )),
        )?,
        start_keyferry(
            &exe,
            &cert,
            &key,
            &[per_core_args[0].as_str(), per_core_args[1].as_str()],
            String::leak(per_core_label),
        )?,
        start_keyferry(
            &exe,
            &cert,
            &key,
            &["--workers", "0"],
            "keyferry serve --workers 0",
        )?,
        start_keyferry(
            &exe,
            &cert,
            &key,
            &["--workers", "0", "--shared-instances", "2"],
            "keyferry --workers 0 --shared-instances 2",
        )?,
    ];
    // Every server sends responses as long as keyferry's report, whose
    // length this reads from the default server.
    let want = targets[0].response_bytes;
    targets.push(start_matched(want, |body| {
        start_baseline(&exe, &cert, &key, body)
    })?);
    match start_matched(want, |body| start_nginx(&dir, &cert, &key, body)) {
        Ok(t) => targets.push(t),
        Err(e) => eprintln!("skipping nginx: {e:#}"),
    }
    // The stock wasi:http rows: keyferry serving the component, and what a
    // user runs for it today. Both answer the component's own response.
    let baselines_end = targets.len();
    if let Some(component) = &options.wasi_http {
        targets.push(start_keyferry_wasi_http(
            &exe,
            &cert,
            &key,
            component,
            &[],
            "keyferry --guest wasi:http (workers)",
        )?);
        targets.push(start_keyferry_wasi_http(
            &exe,
            &cert,
            &key,
            component,
            &["--instance-per-request"],
            "keyferry --guest wasi:http --instance-per-request",
        )?);
        targets.push(start_wasmtime_behind_nginx(&dir, &cert, &key, component)?);
    }
    // Rounds, each measuring every server once, starting one server later
    // each time: the machine's speed drifts over minutes, and a ratio of
    // two figures measured in the same round is steadier than a ratio of
    // medians taken minutes apart.
    let rounds = options.rounds.max(1);
    let n = targets.len();
    let progress = crate::charts::progress(((2 * rounds + 1) * n) as u64);
    let mut keepalive: Vec<Vec<Load>> = (0..n).map(|_| Vec::with_capacity(rounds)).collect();
    let mut handshakes: Vec<Vec<Load>> = (0..n).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        for i in (0..n).map(|k| (k + round) % n) {
            let t = &targets[i];
            progress.set_message(format!(
                "round {}/{rounds}, {}: keep-alive requests",
                round + 1,
                t.name
            ));
            keepalive[i].push(measure(t, &options, false)?);
            progress.inc(1);
            progress.set_message(format!(
                "round {}/{rounds}, {}: new connections",
                round + 1,
                t.name
            ));
            handshakes[i].push(measure(t, &options, true)?);
            progress.inc(1);
        }
    }
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        progress.set_message(format!("{}: memory per idle connection", t.name));
        let idle = memory_per_connection(t, options.idle_connections)?;
        progress.inc(1);
        let pick = |loads: &[Load], f: fn(&Load) -> f64| median_of(loads.iter().map(f).collect());
        rows.push(Row {
            server: t.name,
            requests_per_second: pick(&keepalive[i], |l| l.rate),
            handshakes_per_second: pick(&handshakes[i], |l| l.rate),
            kib_per_connection: idle.pss,
            rss_kib_per_connection: idle.rss,
            kib_per_connection_by_kind: idle.by_kind,
            cpu_us_per_request: pick(&keepalive[i], |l| l.cpu_us_per_request),
            cpu_us_per_connection: pick(&handshakes[i], |l| l.cpu_us_per_request),
            response_bytes: t.response_bytes,
        });
    }
    progress.finish_and_clear();
    let per_round = |figures: &[Vec<Load>], a: usize, b: usize| {
        median_of(
            figures[a]
                .iter()
                .zip(&figures[b])
                .map(|(x, y)| x.rate / y.rate.max(1e-9))
                .collect(),
        )
    };
    let ratio = |a: usize, b: usize| Ratio {
        server: rows[a].server,
        against: rows[b].server,
        requests: per_round(&keepalive, a, b),
        handshakes: per_round(&handshakes, a, b),
    };
    // The cost of the process boundary, then each keyferry mode with an
    // instance per connection against the plain rustls server and nginx.
    let mut ratios = vec![ratio(0, 2), ratio(1, 2)];
    for other in KEYFERRY_ROWS..baselines_end {
        ratios.push(ratio(0, other));
        ratios.push(ratio(1, other));
        ratios.push(ratio(2, other));
    }
    if rows.len() == baselines_end + 3 {
        ratios.push(ratio(baselines_end, baselines_end + 2));
        ratios.push(ratio(baselines_end + 1, baselines_end + 2));
    }
    let report = Report {
        seconds: options.duration.as_secs(),
        connections: options.connections,
        idle_connections: options.idle_connections,
        rounds,
        rows,
        ratios,
    };
    print!("{report}");
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let (chart, json) = (
        options.out.join("bench-serve.svg"),
        options.out.join("bench-serve.json"),
    );
    report.chart(&chart)?;
    crate::charts::write_json(&json, &report)?;
    println!("wrote {} and {}", chart.display(), json.display());
    drop(targets);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "serve throughput on loopback, TLS 1.3 ChaCha20-Poly1305, wrk -t1 -c{} -d{}s; \
             median of {} rounds (ratios: median of each round's ratio)",
            self.connections, self.seconds, self.rounds
        )?;
        writeln!(
            f,
            "{:<42} {:>12} {:>13} {:>10} {:>8} {:>10} {:>10} {:>7}",
            "server",
            "requests/s",
            "handshakes/s",
            "KiB/conn",
            "(RSS)",
            "us/req",
            "us/conn",
            "resp B"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<42} {:>12.0} {:>13.0} {:>10.1} {:>8.1} {:>10.1} {:>10.0} {:>7}",
                r.server,
                r.requests_per_second,
                r.handshakes_per_second,
                r.kib_per_connection,
                r.rss_kib_per_connection,
                r.cpu_us_per_request,
                r.cpu_us_per_connection,
                r.response_bytes
            )?;
        }
        writeln!(
            f,
            "KiB/conn: PSS growth per idle connection (server and children); RSS counts copy-on-write pages once per mapping"
        )?;
        writeln!(
            f,
            "us/req, us/conn: server CPU (user + system, server and children) per keep-alive request and per new connection"
        )?;
        writeln!(
            f,
            "resp B: bytes of one response (status line, headers, body); the baselines' bodies are padded to keyferry's length"
        )?;
        writeln!(
            f,
            "memory per idle connection by kind of mapping (private dirty KiB per connection):"
        )?;
        for r in &self.rows {
            let kinds: Vec<String> = r
                .kib_per_connection_by_kind
                .iter()
                .map(|(kind, kib)| format!("{} {kib:.1}", kind.label()))
                .collect();
            writeln!(f, "  {}: {}", r.server, kinds.join(", "))?;
        }
        for r in &self.ratios {
            writeln!(
                f,
                "{} / {}: requests {:.2}x, handshakes {:.2}x",
                r.server, r.against, r.requests, r.handshakes
            )?;
        }
        Ok(())
    }
}

impl Report {
    /// Requests/s, handshakes/s, CPU per request and memory per connection
    /// of every server, one panel each.
    pub fn chart(&self, path: &Path) -> anyhow::Result<()> {
        let panel = |title: &str, unit: &str, pick: fn(&Row) -> f64| crate::charts::Panel {
            title: title.into(),
            y_label: unit.into(),
            groups: vec![String::new()],
            series: self
                .rows
                .iter()
                .map(|r| (r.server.to_string(), vec![pick(r)]))
                .collect(),
        };
        crate::charts::grouped_bars(
            path,
            &format!(
                "keyferry bench-serve: wrk -c{} -d{}s on loopback, TLS 1.3 ChaCha20-Poly1305",
                self.connections, self.seconds
            ),
            &[
                panel(
                    "keep-alive requests/s (higher is better)",
                    "requests/s",
                    |r| r.requests_per_second,
                ),
                panel(
                    "new connections/s, one request each (higher is better)",
                    "handshakes/s",
                    |r| r.handshakes_per_second,
                ),
                panel(
                    "server CPU per keep-alive request (lower is better)",
                    "us",
                    |r| r.cpu_us_per_request,
                ),
                panel(
                    "memory (PSS) per idle connection (lower is better)",
                    "KiB",
                    |r| r.kib_per_connection,
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_reads_utime_and_stime_past_the_command_name() {
        let stat = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("4242 (x"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&own).is_some(), "{own}");
    }

    #[test]
    fn a_padded_body_has_exactly_the_length_asked_for() {
        for len in [
            1,
            2,
            BODY.len() - 1,
            BODY.len(),
            BODY.len() + 1,
            3 * BODY.len() + 7,
        ] {
            let body = padded_body(len);
            assert_eq!(body.len(), len);
            assert!(body.ends_with('\n'));
            assert!(!body.contains(['\'', '$']), "unsafe in nginx's return text");
        }
        assert_eq!(padded_body(BODY.len()), BODY);
        assert_eq!(padded_body(0), "");
    }

    #[test]
    fn the_report_draws_and_serializes_every_server() {
        let row = |server, k, h, m| Row {
            server,
            requests_per_second: k,
            handshakes_per_second: h,
            kib_per_connection: m,
            rss_kib_per_connection: m + 1.0,
            kib_per_connection_by_kind: vec![(smaps::Kind::Malloc, m / 10.0)],
            cpu_us_per_request: 1e6 / k,
            cpu_us_per_connection: 1e6 / h,
            response_bytes: 442,
        };
        let report = Report {
            seconds: 5,
            connections: 32,
            idle_connections: 200,
            rounds: 3,
            rows: vec![
                row("keyferry serve (workers, default)", 42206.0, 2154.0, 84.2),
                row("plain rustls + tokio server", 84930.0, 3162.0, 30.5),
            ],
            ratios: vec![Ratio {
                server: "keyferry serve (workers, default)",
                against: "plain rustls + tokio server",
                requests: 0.497,
                handshakes: 0.681,
            }],
        };
        let text = report.to_string();
        assert!(text.contains("requests 0.50x, handshakes 0.68x"), "{text}");
        assert!(text.contains("median of 3 rounds"), "{text}");
        assert!(text.contains(" 442\n"), "{text}");
        assert!(
            text.contains("  plain rustls + tokio server: malloc heap 3.0\n"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rows"][1]["handshakes_per_second"], 3162.0);
        assert_eq!(json["ratios"][0]["against"], "plain rustls + tokio server");
        let dir = std::env::temp_dir().join(format!("keyferry-serve-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench-serve.svg");
        report.chart(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in [
            "keyferry serve (workers, default)",
            "plain rustls + tokio server",
            "42k",
            "3162",
            "84.2",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
