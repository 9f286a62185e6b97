//! Side-by-side throughput measurements, in one run, so the ratios are
//! meaningful on a noisy machine: the guest against the same RustCrypto
//! record layer compiled natively, and against rustls's own record layer
//! (ring). Used by `cargo bench` and `keyferry bench`.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyferry_record::record::{TrafficKey, TrafficKeyMaterial};
use keyferry_record::{AeadAlgorithm, ContentType, Direction, ProtocolVersion};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

use anyhow::{Result, bail};
use indicatif::ProgressBar;

use crate::charts::{Panel, grouped_bars};

mod handoff;
pub use handoff::{HandoffLatency, measure_handoff};
use keyferry::suites::{self, Suite};
use keyferry::tls::{ServerVerification, TlsOptions};
use keyferry::{GuestComponent, GuestEngine, GuestInstance, SandboxConfig};
use keyferry_server::ready::BATCH;

/// How much to measure.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct BenchOptions {
    /// Records per measurement.
    pub records: usize,
    /// Measurements per variant; the median is reported.
    pub rounds: usize,
    /// Plaintext bytes per record (at most 2^14).
    pub record_size: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            records: 256,
            rounds: 5,
            record_size: 16384,
        }
    }
}

/// Throughput of one variant, MB/s (10^6 bytes of plaintext per second).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Throughput {
    /// Sealing.
    pub seal: f64,
    /// Opening.
    pub open: f64,
}

/// Copies of a record's bytes across the sandbox boundary, per record and
/// in units of the record's plaintext: what the canonical ABI moved into
/// the guest's linear memory and out of it, counted from the bytes each
/// call passed and returned and, for host-resident keys, from the key
/// service's own count ([`keyferry::KeyServiceTraffic`]). Copies inside
/// the guest or inside the host are not crossings and are not counted.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Copies {
    /// Sealing: into guest memory.
    pub seal_in: f64,
    /// Sealing: out of guest memory.
    pub seal_out: f64,
    /// Opening: into guest memory.
    pub open_in: f64,
    /// Opening: out of guest memory.
    pub open_out: f64,
}

/// One suite's results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteResult {
    /// Suite name.
    pub suite: &'static str,
    /// The guest with the key in its memory.
    pub guest: Throughput,
    /// The guest with a host-resident key (AEAD in the host).
    pub guest_host_key: Throughput,
    /// The same record layer and RustCrypto crates, native.
    pub native: Throughput,
    /// rustls's record layer with its ring provider.
    pub rustls: Throughput,
    /// The same record layer natively over RustCrypto with software AES
    /// (the comparison binary, [`soft_aes`]), for an AES-GCM suite when
    /// the run was given it.
    pub native_soft: Option<Throughput>,
    /// The ratios, each the median of the rounds' own ratios: the two
    /// figures of a round are measured seconds apart, the rounds minutes
    /// apart on a machine whose speed drifts.
    pub ratios: Ratios,
    /// Copies across the boundary with the key in the guest.
    pub guest_copies: Copies,
    /// Copies across the boundary with a host-resident key.
    pub guest_host_key_copies: Copies,
}

/// A suite's ratios, seal and open each the median over the rounds of
/// that round's ratio.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Ratios {
    /// guest / native.
    pub guest_native: Throughput,
    /// guest / rustls.
    pub guest_rustls: Throughput,
    /// guest+hk / rustls.
    pub host_key_rustls: Throughput,
    /// guest / native with software AES, for AES-GCM with `--soft-aes`.
    pub guest_native_soft: Option<Throughput>,
}

/// The median over rounds of `a[i] / b[i]`, seal and open.
fn median_ratio(a: &[Throughput], b: &[Throughput]) -> Throughput {
    let ratios: Vec<Throughput> = a
        .iter()
        .zip(b)
        .map(|(a, b)| Throughput {
            seal: a.seal / b.seal.max(1e-9),
            open: a.open / b.open.max(1e-9),
        })
        .collect();
    median(&ratios)
}

/// Everything one run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// What was measured.
    pub options: BenchOptions,
    /// Per suite.
    pub suites: Vec<SuiteResult>,
    /// One host-to-guest call that does no work (`state`), nanoseconds.
    pub call_overhead_ns: f64,
    /// Handshake complete to guest ready as `serve` does it: its default
    /// component (the HTTP responder) on an engine that pools instance
    /// slots.
    pub handoff: HandoffLatency,
    /// The same with the reference component on the library's default
    /// engine (an mmap per instance, unmapped when it drops).
    pub handoff_on_demand: HandoffLatency,
}

/// Runs the comparison binary at `path` (`host/cli/soft-aes`: the guest
/// crate's record layer built natively over RustCrypto's AES-GCM with
/// software AES, `--cfg aes_backend="soft"`) with `options`' records,
/// rounds and record size, for `version`'s records and `aead` (an AES-GCM),
/// and reads what it printed: the "native" column with the AES
/// instructions taken away, as the guest has none.
pub fn soft_aes(
    path: &Path,
    options: &BenchOptions,
    version: ProtocolVersion,
    aead: AeadAlgorithm,
) -> Result<Throughput> {
    let name = match aead {
        AeadAlgorithm::Aes128Gcm => "AES-128-GCM",
        AeadAlgorithm::Aes256Gcm => "AES-256-GCM",
        AeadAlgorithm::ChaCha20Poly1305 => bail!("the comparison binary measures AES-GCM only"),
    };
    let out = std::process::Command::new(path)
        .args([options.records, options.rounds, options.record_size].map(|n| n.to_string()))
        .arg(match version {
            ProtocolVersion::Tls13 => "tls13",
            ProtocolVersion::Tls12 => "tls12",
        })
        .arg(name)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_soft_aes(&String::from_utf8_lossy(&out.stdout), name)
}

/// Reads `AES-128-GCM seal 201.3` lines for `name`: its seal and open
/// figures, each once, and nothing else.
fn parse_soft_aes(text: &str, name: &str) -> Result<Throughput> {
    let mut figures = [None; 2];
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let slot = match fields[..] {
            [aead, "seal", _] if aead == name => 0,
            [aead, "open", _] if aead == name => 1,
            _ => bail!("unexpected line from the comparison binary: {line:?}"),
        };
        let mbps: f64 = fields[2].parse()?;
        if figures[slot].replace(mbps).is_some() || !mbps.is_finite() || mbps <= 0.0 {
            bail!("unexpected line from the comparison binary: {line:?}");
        }
    }
    let [Some(seal), Some(open)] = figures else {
        bail!("the comparison binary printed {text:?}, not both figures for {name}");
    };
    Ok(Throughput { seal, open })
}

/// Runs every measurement with the engine's reference components,
/// advancing `progress` one step per round of a suite (and one each for the
/// call overhead and the handoff): [`steps`] in all.
pub fn run(engine: &GuestEngine, options: BenchOptions, progress: &ProgressBar) -> Result<Report> {
    run_with(engine, options, None, progress)
}

/// [`run`], and with `soft_aes` (the comparison binary, [`soft_aes`]) each
/// round of an AES-GCM suite also runs it once, right after the guest, so
/// the two are measured in the same minutes.
pub fn run_with(
    engine: &GuestEngine,
    options: BenchOptions,
    soft_aes: Option<&Path>,
    progress: &ProgressBar,
) -> Result<Report> {
    if options.record_size == 0 || options.record_size > keyferry_record::record::MAX_PLAINTEXT {
        bail!("record size must be 1..=16384");
    }
    let plain = GuestComponent::reference(engine)?;
    let host_keys = GuestComponent::reference_with_host_keys(engine)?;
    let payload = vec![0xa5u8; options.record_size];
    let mut suites = Vec::new();
    let mut connection_id = 1u64 << 40;
    for suite in suites::ALL {
        let (name, version, aead) = (suite.name(), suite.version, suite.aead);
        let mut guest = Vec::new();
        let mut guest_hk = Vec::new();
        let mut native = Vec::new();
        let mut rustls_t = Vec::new();
        let mut native_soft = Vec::new();
        let mut guest_copies = Copies::default();
        let mut guest_host_key_copies = Copies::default();
        for round in 0..options.rounds {
            progress.set_message(format!("{name}, round {}", round + 1));
            connection_id += 2;
            let (throughput, copies) = measure_guest(
                &plain,
                None,
                version,
                aead,
                &payload,
                options.records,
                connection_id,
            )?;
            guest.push(throughput);
            guest_copies = copies;
            if let Some(path) = soft_aes.filter(|_| aead.is_aes_gcm()) {
                let once = BenchOptions {
                    rounds: 1,
                    ..options
                };
                native_soft.push(self::soft_aes(path, &once, version, aead)?);
            }
            native.push(measure_native(
                version,
                aead,
                &payload,
                options.records,
                connection_id,
            )?);
            let store = Some(engine.key_store().as_ref());
            let (throughput, copies) = measure_guest(
                &host_keys,
                store,
                version,
                aead,
                &payload,
                options.records,
                connection_id + 1,
            )?;
            guest_hk.push(throughput);
            guest_host_key_copies = copies;
            rustls_t.push(measure_rustls(&suite, &payload, options.records)?);
            progress.inc(1);
        }
        suites.push(SuiteResult {
            suite: name,
            guest: median(&guest),
            guest_host_key: median(&guest_hk),
            native: median(&native),
            rustls: median(&rustls_t),
            native_soft: (!native_soft.is_empty()).then(|| median(&native_soft)),
            ratios: Ratios {
                guest_native: median_ratio(&guest, &native),
                guest_rustls: median_ratio(&guest, &rustls_t),
                host_key_rustls: median_ratio(&guest_hk, &rustls_t),
                guest_native_soft: (!native_soft.is_empty())
                    .then(|| median_ratio(&guest, &native_soft)),
            },
            guest_copies,
            guest_host_key_copies,
        });
    }
    progress.set_message("host-to-guest call");
    let call_overhead_ns = measure_call_overhead(&plain)?;
    progress.inc(1);
    progress.set_message("handoff");
    // serve's engine pools instance slots (`SandboxConfig::with_pooling`)
    // and runs the HTTP responder, whose world exports only `connection`;
    // the library's default engine maps a fresh slot per instance, and the
    // reference component exports the key-level interfaces too (each
    // export is looked up and type-checked per instance). Both are timed.
    let pooled_engine = GuestEngine::new(SandboxConfig::default().with_pooling(64))?;
    let served = GuestComponent::new(&pooled_engine, crate::apps::HTTP_RESPONDER)?;
    let handoff = measure_handoff(&served, options.rounds * 10)?;
    let handoff_on_demand = measure_handoff(&plain, options.rounds * 10)?;
    progress.inc(1);
    Ok(Report {
        options,
        suites,
        call_overhead_ns,
        handoff,
        handoff_on_demand,
    })
}

/// How many steps [`run`] reports to its progress bar.
pub fn steps(options: &BenchOptions) -> u64 {
    (suites::ALL.len() * options.rounds + 2) as u64
}

impl Report {
    /// The throughput chart: MB/s of each variant per suite, sealing above
    /// and opening below.
    pub fn chart(&self, path: &Path) -> Result<()> {
        let panel = |op: &str, pick: fn(&Throughput) -> f64| Panel {
            title: format!(
                "{op}: {} B records, median of {} rounds",
                self.options.record_size, self.options.rounds
            ),
            y_label: "MB/s".into(),
            groups: self.suites.iter().map(|s| short_suite(s.suite)).collect(),
            series: [
                (
                    "guest (key in the sandbox)",
                    (|s| &s.guest) as fn(&SuiteResult) -> &Throughput,
                ),
                ("guest + host-resident key", |s| &s.guest_host_key),
                ("native RustCrypto", |s| &s.native),
                ("rustls (ring)", |s| &s.rustls),
            ]
            .into_iter()
            .map(|(name, variant)| {
                (
                    name.to_string(),
                    self.suites.iter().map(|s| pick(variant(s))).collect(),
                )
            })
            .collect(),
        };
        grouped_bars(
            path,
            "keyferry bench: record throughput",
            &[panel("seal", |t| t.seal), panel("open", |t| t.open)],
        )
    }
}

/// "TLS 1.3 AES-128-GCM" for a suite's IANA name: short enough to label a
/// bar group.
fn short_suite(iana: &str) -> String {
    let version = if iana.contains("_WITH_") {
        "1.2"
    } else {
        "1.3"
    };
    let aead = if iana.contains("CHACHA20") {
        "ChaCha20"
    } else if iana.contains("AES_256") {
        "AES-256-GCM"
    } else {
        "AES-128-GCM"
    };
    format!("TLS {version} {aead}")
}

fn material(
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    direction: Direction,
    connection_id: u64,
) -> TrafficKeyMaterial {
    match version {
        ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
            aead,
            direction,
            &vec![0x3c; aead.tls13_hash().output_len()],
            0,
            connection_id,
        )
        .expect("derivation of a fixed secret"),
        ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
            version,
            aead,
            direction,
            &vec![0x3c; aead.key_len()],
            &[0x5a; 12],
            &[],
            0,
            connection_id,
        ),
    }
}

fn mbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// The median of `figures` (the upper one of an even count; 0 for none):
/// every median the benchmarks report.
pub(crate) fn median_of(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures.get(figures.len() / 2).copied().unwrap_or(0.0)
}

fn median(samples: &[Throughput]) -> Throughput {
    let pick = |f: fn(&Throughput) -> f64| median_of(samples.iter().map(f).collect());
    Throughput {
        seal: pick(|t| t.seal),
        open: pick(|t| t.open),
    }
}

fn measure_guest(
    component: &GuestComponent,
    store: Option<&keyferry::HostKeyStore>,
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    payload: &[u8],
    records: usize,
    connection_id: u64,
) -> Result<(Throughput, Copies)> {
    let g = component.instantiate()?;
    let mut seal_m = material(version, aead, Direction::Seal, connection_id);
    let mut open_m = material(version, aead, Direction::Open, connection_id);
    if let Some(store) = store {
        seal_m = store.insert(seal_m)?;
        open_m = store.insert(open_m)?;
    }
    let seal = g.import_traffic_key(&g.seal_traffic_key(&seal_m)?)?;
    let open = g.import_traffic_key(&g.seal_traffic_key(&open_m)?)?;
    let traffic = || store.map(|s| s.traffic()).unwrap_or_default();
    let before_seal = traffic();
    let start = Instant::now();
    let mut wire = Vec::with_capacity(records);
    for _ in 0..records {
        wire.push(g.seal(&seal, ContentType::ApplicationData, payload, 0)?);
    }
    let seal_time = start.elapsed();
    let before_open = traffic();
    let start = Instant::now();
    for record in &wire {
        let (_, got) = g.open(&open, record)?;
        if got.len() != payload.len() {
            bail!("benchmark round trip lost bytes");
        }
    }
    let open_time = start.elapsed();
    let after_open = traffic();
    if let (Some(store), Some(s), Some(o)) = (store, seal_m.host_key_ref, open_m.host_key_ref) {
        store.remove(s);
        store.remove(o);
    }
    // What each call passed in and got back, plus the key service's own
    // crossings, per byte of plaintext.
    let plaintext = (payload.len() * records) as f64;
    let wire_bytes = wire.iter().map(Vec::len).sum::<usize>() as f64;
    // Records the key service held in the host were part of `wire` without
    // crossing: sealed records never came back out of the guest, and the
    // bodies opened from the host's copy were never passed in.
    let (sealed_held, opened_held) = (
        (before_open.held - before_seal.held) as f64,
        (after_open.held - before_open.held) as f64,
    );
    let copies = Copies {
        seal_in: (plaintext + (before_open.to_guests - before_seal.to_guests) as f64) / plaintext,
        seal_out: (wire_bytes - sealed_held
            + (before_open.from_guests - before_seal.from_guests) as f64)
            / plaintext,
        open_in: (wire_bytes - opened_held + (after_open.to_guests - before_open.to_guests) as f64)
            / plaintext,
        open_out: (plaintext + (after_open.from_guests - before_open.from_guests) as f64)
            / plaintext,
    };
    Ok((
        Throughput {
            seal: mbps(payload.len() * records, seal_time),
            open: mbps(payload.len() * records, open_time),
        },
        copies,
    ))
}

fn measure_native(
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    payload: &[u8],
    records: usize,
    connection_id: u64,
) -> Result<Throughput> {
    let mut seal = TrafficKey::from_material(
        material(version, aead, Direction::Seal, connection_id),
        None,
    )?;
    let mut open = TrafficKey::from_material(
        material(version, aead, Direction::Open, connection_id),
        None,
    )?;
    let start = Instant::now();
    let mut wire = Vec::with_capacity(records);
    for _ in 0..records {
        wire.push(seal.seal(ContentType::ApplicationData, payload, 0)?);
    }
    let seal_time = start.elapsed();
    let start = Instant::now();
    for record in wire {
        let (_, got) = open.open(record)?;
        std::hint::black_box(got);
    }
    let open_time = start.elapsed();
    Ok(Throughput {
        seal: mbps(payload.len() * records, seal_time),
        open: mbps(payload.len() * records, open_time),
    })
}

fn rustls_pair(suite: &Suite) -> Result<(Connection, Connection)> {
    let options = TlsOptions::default()
        .with_versions(&[suite.rustls_version()])
        .with_suites(&[suite.rustls]);
    let identity = keyferry_server::certificate::self_signed(&["localhost".into()])?;
    let server = Arc::new(options.server_config(&identity)?);
    let client = Arc::new(options.client_config(ServerVerification::DangerousNone)?);
    let mut c: Connection = ClientConnection::new(
        client,
        ServerName::try_from("localhost").expect("valid name"),
    )?
    .into();
    let mut s: Connection = ServerConnection::new(server)?.into();
    c.set_buffer_limit(None);
    s.set_buffer_limit(None);
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        pump(&mut c, &mut s)?;
        pump(&mut s, &mut c)?;
    }
    if c.negotiated_cipher_suite() != Some(suite.rustls) {
        bail!("rustls did not negotiate {}", suite.name());
    }
    Ok((c, s))
}

fn pump(from: &mut Connection, to: &mut Connection) -> Result<()> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf)?;
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest)?;
        to.process_new_packets()?;
    }
    Ok(())
}

fn measure_rustls(suite: &Suite, payload: &[u8], records: usize) -> Result<Throughput> {
    let (mut client, mut server) = rustls_pair(suite)?;
    let start = Instant::now();
    let mut wire = Vec::with_capacity(records);
    for _ in 0..records {
        client.writer().write_all(payload)?;
        let mut out = Vec::with_capacity(payload.len() + 64);
        while client.wants_write() {
            client.write_tls(&mut out)?;
        }
        wire.push(out);
    }
    let seal_time = start.elapsed();
    let mut sink = vec![0u8; payload.len()];
    let start = Instant::now();
    for record in &wire {
        let mut rest = &record[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest)?;
            server.process_new_packets()?;
        }
        server.reader().read_exact(&mut sink)?;
    }
    let open_time = start.elapsed();
    Ok(Throughput {
        seal: mbps(payload.len() * records, seal_time),
        open: mbps(payload.len() * records, open_time),
    })
}

fn measure_call_overhead(component: &GuestComponent) -> Result<f64> {
    let g: GuestInstance = component.instantiate()?;
    let m = material(
        ProtocolVersion::Tls13,
        AeadAlgorithm::ChaCha20Poly1305,
        Direction::Seal,
        99,
    );
    let key = g.import_traffic_key(&g.seal_traffic_key(&m)?)?;
    for _ in 0..1000 {
        g.state(&key)?;
    }
    let calls = 20_000;
    let start = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(g.state(&key)?);
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "record seal/open throughput, {} B records, {} records x {} rounds (median), MB/s; \
             each ratio is the median of the rounds' ratios",
            self.options.record_size, self.options.records, self.options.rounds
        )?;
        writeln!(
            f,
            "{:<46} {:>4} {:>9} {:>9} {:>9} {:>9} {:>13} {:>13} {:>10}",
            "suite",
            "op",
            "guest",
            "guest+hk",
            "native",
            "rustls",
            "guest/native",
            "guest/rustls",
            "hk/rustls"
        )?;
        for s in &self.suites {
            let r = &s.ratios;
            for (op, pick) in [
                ("seal", (|t: &Throughput| t.seal) as fn(&Throughput) -> f64),
                ("open", |t: &Throughput| t.open),
            ] {
                writeln!(
                    f,
                    "{:<46} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>13.2} {:>13.2} {:>10.2}",
                    s.suite,
                    op,
                    pick(&s.guest),
                    pick(&s.guest_host_key),
                    pick(&s.native),
                    pick(&s.rustls),
                    pick(&r.guest_native),
                    pick(&r.guest_rustls),
                    pick(&r.host_key_rustls)
                )?;
            }
        }
        writeln!(
            f,
            "copies of a record across the sandbox boundary, counted (into guest memory / out of it, per byte of plaintext)"
        )?;
        writeln!(
            f,
            "{:<46} {:>11} {:>11} {:>14} {:>14}",
            "suite", "guest seal", "guest open", "guest+hk seal", "guest+hk open"
        )?;
        let pair = |a: f64, b: f64| format!("{a:.2}/{b:.2}");
        for s in &self.suites {
            let (g, h) = (&s.guest_copies, &s.guest_host_key_copies);
            writeln!(
                f,
                "{:<46} {:>11} {:>11} {:>14} {:>14}",
                s.suite,
                pair(g.seal_in, g.seal_out),
                pair(g.open_in, g.open_out),
                pair(h.seal_in, h.seal_out),
                pair(h.open_in, h.open_out)
            )?;
        }
        writeln!(
            f,
            "host-to-guest call (state(), no work): {:.0} ns",
            self.call_overhead_ns
        )?;
        for (h, allocator) in [
            (&self.handoff, "serve's HTTP component, pooled slots"),
            (
                &self.handoff_on_demand,
                "the reference component, an mmap per instance",
            ),
        ] {
            writeln!(
                f,
                "handoff, handshake complete to guest ready ({} runs, {allocator}): fresh instance median {:.0} us, \
                 p99 {:.0} us; ready instance median {:.0} us, p99 {:.0} us",
                h.runs, h.median_us, h.p99_us, h.ready_median_us, h.ready_p99_us
            )?;
            writeln!(
                f,
                "  parts (medians): export {:.1} us, instantiate {:.1} us, seal {:.1} us, \
                 deliver+import+start {:.1} us, teardown {:.1} us; the rustls server handshake \
                 itself: {:.0} us (fresh handoff = {:.0}%, ready = {:.0}% of it)",
                h.export_us,
                h.instantiate_us,
                h.seal_us,
                h.attach_us,
                h.teardown_us,
                h.handshake_us,
                100.0 * h.median_us / h.handshake_us.max(1e-9),
                100.0 * h.ready_median_us / h.handshake_us.max(1e-9)
            )?;
            let (one, batched) = (h.sandbox_us(), h.batched_sandbox_us());
            writeln!(
                f,
                "  sandbox work per connection (instantiate + seal + deliver/import/start + teardown): \
                 one instance at a time {one:.1} us = {:.0}% of the rustls server handshake; \
                 made and dropped {BATCH} at a time, as serve does (instantiate {:.1} us, teardown {:.1} us): \
                 {batched:.1} us = {:.0}%",
                100.0 * one / h.handshake_us.max(1e-9),
                h.batched_instantiate_us,
                h.batched_teardown_us,
                100.0 * batched / h.handshake_us.max(1e-9)
            )?;
        }
        if self.suites.iter().any(|s| s.native_soft.is_some()) {
            writeln!(
                f,
                "guest AES-GCM against the same record layer natively over RustCrypto with software AES (host/cli/soft-aes), MB/s"
            )?;
            writeln!(
                f,
                "{:<46} {:>4} {:>9} {:>11} {:>17}",
                "suite", "op", "guest", "native-soft", "guest/native-soft"
            )?;
            for s in &self.suites {
                let (Some(native), Some(ratio)) = (s.native_soft, s.ratios.guest_native_soft)
                else {
                    continue;
                };
                for (op, g, n, ratio) in [
                    ("seal", s.guest.seal, native.seal, ratio.seal),
                    ("open", s.guest.open, native.open, ratio.open),
                ] {
                    writeln!(
                        f,
                        "{:<46} {:>4} {:>9.1} {:>11.1} {:>17.2}",
                        s.suite, op, g, n, ratio
                    )?;
                }
            }
        }
        writeln!(
            f,
            "guest = software key in the sandbox; guest+hk = host-resident key (AEAD in the host via key-service);"
        )?;
        write!(
            f,
            "native = the guest's record layer and RustCrypto crates compiled natively; rustls = rustls 0.23 with ring"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_takes_the_middle_figure() {
        assert_eq!(median_of(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median_of(vec![5.0]), 5.0);
        assert_eq!(median_of(Vec::new()), 0.0);
    }

    #[test]
    fn the_comparison_binarys_figures_are_read_all_or_refused() {
        let good = "AES-256-GCM seal 151.8\nAES-256-GCM open 152.0\n";
        let soft = parse_soft_aes(good, "AES-256-GCM").unwrap();
        assert_eq!((soft.seal, soft.open), (151.8, 152.0));
        for bad in [
            "",
            "AES-256-GCM seal 151.8\n",
            &good.replace("151.8", "0"),
            &good.replace("151.8", "NaN"),
            &good.replace("AES-256-GCM open", "AES-256-GCM seal"),
            &good.replace("AES-256-GCM open", "AES-128-GCM open"),
            &format!("{good}warning: something\n"),
        ] {
            assert!(parse_soft_aes(bad, "AES-256-GCM").is_err(), "{bad:?}");
        }
    }
}
