//! The `keyferry` command: a TLS server and client whose handshakes run in
//! this trusted process and whose data plane runs in a WebAssembly sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use keyferry::handshake::Handshake;
use keyferry::metrics::Metrics;
use keyferry::monitor::{MonitorOptions, WorkerCommand};
use keyferry::server::{Isolation, ServerOptions, SharedPool, serve};
use keyferry::tls::{self, Identities, Identity, ServerVerification, TlsOptions};
use keyferry::transport::Timeouts;
use keyferry::{DataPlane, ExecutionBound, GuestComponent, GuestEngine, SandboxConfig};
use keyferry_cli::{apps, bench, charts, serve_bench};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// Split-TLS with a sandboxed data plane: rustls handshakes in this process,
/// record encryption in a WebAssembly guest.
#[derive(Parser)]
#[command(name = "keyferry", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve TLS; each connection's data plane runs in its own guest.
    #[command(after_help = "Examples:\n  \
        keyferry serve\n  \
        curl -k https://127.0.0.1:8443/\n  \
        keyferry serve --echo --listen 127.0.0.1:9000\n  \
        keyferry serve --cert server.pem --key server.key --guest my_plugin.wasm")]
    Serve(Box<ServeArgs>),
    /// Connect to a TLS server like `openssl s_client -quiet`: stdin to the
    /// peer, the peer to stdout, with the data plane in a guest.
    #[command(after_help = "Examples:\n  \
        keyferry connect 127.0.0.1:8443 --insecure\n  \
        echo hello | keyferry connect localhost:4433 --ca ca.pem")]
    Connect(ConnectArgs),
    /// Run the guest's self-check (known-answer vectors, round trips).
    SelfCheck,
    /// Print what the embedded guest supports (JSON).
    Describe,
    /// Measure record throughput: guest vs native vs rustls, side by side.
    #[command(after_help = "Example:\n  keyferry bench --records 256 --rounds 5")]
    Bench(BenchArgs),
    /// Measure `keyferry serve` against a plain rustls server and nginx on
    /// loopback with wrk: requests/s, handshakes/s, memory per connection.
    #[command(
        after_help = "Example (needs wrk, and nginx for the third column):\n  \
        keyferry bench-serve --seconds 5 --connections 32"
    )]
    BenchServe {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent connections wrk keeps open.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Idle connections opened to measure memory per connection.
        #[arg(long, default_value_t = 200)]
        idle: u32,
        /// Measurements of each server, interleaved; the table shows
        /// medians, and each ratio is the median of its rounds' ratios.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Where to write bench-serve.svg and bench-serve.json.
        #[arg(long, value_name = "DIR", default_value = "keyferry-bench")]
        out: PathBuf,
    },
    /// The plain rustls server `bench-serve` compares against.
    #[command(hide = true)]
    BenchBaselineServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Body length; bench-serve sets it so the response is as long as
        /// keyferry's.
        #[arg(long, default_value_t = serve_bench::BODY.len())]
        body_bytes: usize,
    },
    /// A data-plane worker of `serve --workers N`, talking to the
    /// handshake process on standard input.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Write the embedded guest component to a file, for `wasmtime run`.
    #[command(after_help = "Example:\n  \
        keyferry write-guest guest.wasm && wasmtime run --invoke 'self-check()' guest.wasm")]
    WriteGuest {
        /// Where to write the component.
        path: PathBuf,
    },
}

#[derive(Args)]
struct SandboxArgs {
    /// Linear memory cap per guest instance, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    /// Wall-clock bound on each call into a guest, in milliseconds.
    #[arg(long, default_value_t = 1000, conflicts_with = "fuel")]
    deadline_ms: u64,
    /// Fuel (about one unit per wasm instruction) per call, instead of a deadline.
    #[arg(long)]
    fuel: Option<u64>,
}

impl SandboxArgs {
    fn config(&self) -> SandboxConfig {
        let bound = match self.fuel {
            Some(fuel) => ExecutionBound::Fuel(fuel),
            None => ExecutionBound::Deadline(Duration::from_millis(self.deadline_ms)),
        };
        SandboxConfig::default()
            .with_memory_limit(self.memory_mib << 20)
            .with_execution_bound(bound)
    }
}

#[derive(Args)]
struct TlsArgs {
    /// ALPN protocols, in preference order.
    #[arg(long = "alpn")]
    alpn: Vec<String>,
    /// Only TLS 1.3.
    #[arg(long, conflicts_with = "tls12")]
    tls13: bool,
    /// Only TLS 1.2.
    #[arg(long)]
    tls12: bool,
}

impl TlsArgs {
    fn options(&self) -> TlsOptions {
        let mut options = TlsOptions::default();
        if self.tls12 {
            options = options.with_versions(&[&rustls::version::TLS12]);
        }
        if self.tls13 {
            options = options.with_versions(&[&rustls::version::TLS13]);
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|a| a.as_bytes()).collect();
        options.with_alpn(&alpn)
    }
}

/// Whether a client must present a certificate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ClientAuth {
    /// Refuse clients without one.
    Required,
    /// Serve clients without one; one from another CA is still refused.
    Optional,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on: IP:PORT or HOST:PORT (a host name is
    /// resolved; the first address that binds is used).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// PEM certificate chain (a self-signed one is made at start without
    /// it). Repeat with --key for several identities: each client gets the
    /// one valid for the name it sent (SNI), exact before wildcard, and the
    /// first serves clients that send none or an unknown one. SIGHUP
    /// re-reads them all (and --ticket-keys); if one fails to load, the
    /// ones in service stay.
    #[arg(long, requires = "key")]
    cert: Vec<PathBuf>,
    /// PEM private key for the --cert in the same position.
    #[arg(long, requires = "cert")]
    key: Vec<PathBuf>,
    /// Verify client certificates against these PEM CA certificates
    /// (inbound mTLS). The application in the guest sees the client
    /// certificate's subject in the handshake facts.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// With --client-ca: `required` refuses clients without a certificate
    /// (certificate_required alert), `optional` serves them.
    #[arg(long, value_enum, default_value = "required", requires = "client_ca")]
    client_auth: ClientAuth,
    /// Data-plane worker processes (default: one per core). The handshake
    /// process holds the key and hands each connection to a worker that
    /// never has it; 0 runs the data plane in this process, beside the key
    /// (for embedding and debugging).
    #[arg(long)]
    workers: Option<usize>,
    /// The user workers run as when serve is started as root.
    #[arg(long, default_value = "nobody")]
    user: String,
    /// Each connection starts with a HAProxy PROXY protocol v2 header (an
    /// L4 load balancer in front); its client address is logged.
    #[arg(long)]
    proxy_protocol: bool,
    /// With --proxy-protocol: believe PROXY headers only from this network
    /// (CIDR, or one address; repeat for several), the load balancers'. A
    /// client that reaches the port from elsewhere is closed. Without it,
    /// any peer may claim any client address.
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
    proxy_from: Vec<keyferry::proxy::Network>,
    /// Set SO_REUSEPORT, so several serve processes on one host share the
    /// port and the kernel spreads connections among them.
    #[arg(long)]
    reuse_port: bool,
    /// Session-ticket keys shared by a fleet: one or more 48-byte keys (a
    /// 16-byte name, a 32-byte key); the first issues tickets, all open
    /// them. Make one with `head -c 48 /dev/urandom > ticket.key`.
    #[arg(long, value_name = "FILE")]
    ticket_keys: Option<PathBuf>,
    /// The program workers run (default: this binary). For tests.
    #[arg(long, hide = true)]
    worker_program: Option<PathBuf>,
    /// Most connections served at once. At the cap the longest-idle
    /// keep-alive connection is closed to admit a new client; a client that
    /// still cannot be admitted within 2 s is closed.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Seconds a client may take to finish its handshake.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Serve Prometheus metrics (OpenMetrics text) at
    /// http://ADDR:PORT/metrics, on a listener of their own; a bare PORT
    /// listens on 127.0.0.1. Handshakes by version, suite and outcome,
    /// handoff latency, open connections, endings, bytes, guest traps,
    /// ready instances and worker restarts.
    #[arg(long, value_name = "[ADDR:]PORT")]
    metrics: Option<String>,
    /// Share this many guest instances among all connections instead of a
    /// fresh instance per connection (cheaper handshakes; a guest failure
    /// then ends every connection in its instance). Needs --workers 0.
    #[arg(long, value_name = "INSTANCES")]
    shared_instances: Option<usize>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    plane: PlaneArgs,
}

/// What runs the data plane: the application, the sandbox, the session
/// timeouts. `serve` uses these in-process or passes them to its workers.
#[derive(Args)]
struct PlaneArgs {
    /// An application component (exporting keyferry:dataplane/connection,
    /// e.g. built with keyferry_guest::export_application!) to run instead
    /// of the built-in HTTP responder.
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Echo instead of the HTTP responder.
    #[arg(long, conflicts_with = "guest")]
    echo: bool,
    /// Seconds an idle connection (between requests) stays open.
    #[arg(long, default_value_t = 75)]
    keepalive_timeout: u64,
    /// Seconds a connection may stall in the middle of a request.
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
    /// Seconds a write may wait for a client that does not read.
    #[arg(long, default_value_t = 60)]
    write_timeout: u64,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

impl PlaneArgs {
    fn component(&self, engine: &GuestEngine) -> anyhow::Result<GuestComponent> {
        let wasm = self.guest_bytes()?;
        self.component_from(engine, wasm.as_deref())
    }

    /// The guest's bytes, read from its file (`None` for a built-in
    /// application): a worker reads them before it shuts itself in.
    fn guest_bytes(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.guest
            .as_ref()
            .map(|path| {
                std::fs::read(path).with_context(|| format!("reading guest {}", path.display()))
            })
            .transpose()
    }

    /// Compiles `wasm` (from [`PlaneArgs::guest_bytes`]), or the built-in
    /// application.
    fn component_from(
        &self,
        engine: &GuestEngine,
        wasm: Option<&[u8]>,
    ) -> anyhow::Result<GuestComponent> {
        Ok(match (wasm, &self.guest) {
            (Some(wasm), Some(path)) => GuestComponent::new(engine, wasm)
                .with_context(|| format!("loading guest {}", path.display()))?,
            (Some(wasm), None) => GuestComponent::new(engine, wasm)?,
            (None, _) if self.echo => GuestComponent::new(engine, apps::ECHO)?,
            (None, _) => GuestComponent::new(engine, apps::HTTP_RESPONDER)?,
        })
    }

    fn application(&self) -> &'static str {
        match (&self.guest, self.echo) {
            (Some(_), _) => "plugin",
            (None, true) => "echo",
            (None, false) => "http",
        }
    }

    fn timeouts(&self, handshake: u64) -> Timeouts {
        Timeouts {
            handshake: Duration::from_secs(handshake.max(1)),
            keepalive: Duration::from_secs(self.keepalive_timeout.max(1)),
            request: Duration::from_secs(self.request_timeout.max(1)),
            write: Duration::from_secs(self.write_timeout.max(1)),
        }
    }

    /// The same settings as `worker` arguments.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(path) = &self.guest {
            args.extend(["--guest".into(), path.into()]);
        }
        if self.echo {
            args.push("--echo".into());
        }
        for (flag, value) in [
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--request-timeout", self.request_timeout),
            ("--write-timeout", self.write_timeout),
            ("--memory-mib", self.sandbox.memory_mib as u64),
            ("--deadline-ms", self.sandbox.deadline_ms),
        ] {
            args.extend([flag.into(), value.to_string().into()]);
        }
        if let Some(fuel) = self.sandbox.fuel {
            args.extend(["--fuel".into(), fuel.to_string().into()]);
        }
        args
    }
}

/// A data-plane worker (started by `serve --workers N`; not for people).
#[derive(Args)]
struct WorkerArgs {
    /// Drop to this user id when started as root.
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    /// Drop to this group id when started as root.
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// Connections this worker may hold (sizes its instance pool).
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Files the worker must not be able to open once confined (serve
    /// passes its private keys and ticket keys): each is tried, and a file
    /// that opens under a full Landlock ruleset stops the worker.
    #[arg(long, value_name = "FILE")]
    check_unreadable: Vec<PathBuf>,
    #[command(flatten)]
    plane: PlaneArgs,
}

#[derive(Args)]
struct ConnectArgs {
    /// Server to connect to.
    address: String,
    /// Trust anchors (PEM). Defaults to the system bundle.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    insecure: bool,
    /// Server name for SNI and verification (defaults to the host part).
    #[arg(long)]
    sni: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// 16 KiB records per measurement.
    #[arg(long, default_value_t = 256)]
    records: usize,
    /// Measurements per variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where to write bench.svg (the chart) and bench.json (every figure).
    #[arg(long, value_name = "DIR", default_value = "keyferry-bench")]
    out: PathBuf,
    /// Also compare the guest's AES-GCM with the same record layer built
    /// natively over RustCrypto with software AES: the binary `cargo build
    /// --release` makes in host/cli/soft-aes
    /// (target/release/keyferry-soft-aes there).
    #[arg(long, value_name = "PATH")]
    soft_aes: Option<PathBuf>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::new(log_directives(
        std::env::var("KEYFERRY_LOG").ok().as_deref(),
    ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // KEYFERRY_LOG_FORMAT=json: one JSON object per line, with the same
    // fields as the text lines, at the top level, for log shippers.
    match std::env::var("KEYFERRY_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).init(),
        _ => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("keyferry: error: {e}");
            // A message that already shows its cause (as "cannot read F:
            // reason" does) is not followed by the cause again.
            let mut shown = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
            }
            ExitCode::FAILURE
        }
    }
}

/// The log filter. A bare level (`KEYFERRY_LOG=debug`) applies to keyferry's
/// own targets, with everything else at `warn`: wasmtime and cranelift log
/// thousands of lines at start at debug. rustls stays at `error` unless
/// named: it warns once per client that sends an IP address as SNI.
/// Anything with `=` in it is taken as a full `tracing` filter.
fn log_directives(setting: Option<&str>) -> String {
    match setting.map(str::trim) {
        Some(full) if full.contains('=') => full.to_string(),
        Some(level) if !level.is_empty() => {
            format!(
                "warn,rustls=error,keyferry={level},keyferry_cli={level},keyferry_guest={level}"
            )
        }
        _ => "info,rustls=error".to_string(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve_command(*args),
        Command::Connect(args) => connect_command(args),
        Command::SelfCheck => {
            let engine = GuestEngine::new(SandboxConfig::default())?;
            let report = GuestComponent::reference(&engine)?
                .instantiate()?
                .self_check()?;
            print!("{report}");
            Ok(())
        }
        Command::Describe => {
            let engine = GuestEngine::new(SandboxConfig::default())?;
            println!(
                "{}",
                GuestComponent::reference(&engine)?
                    .instantiate()?
                    .describe()?
            );
            Ok(())
        }
        Command::Bench(args) => {
            let engine = GuestEngine::new(SandboxConfig::default())?;
            let options = bench::BenchOptions {
                records: args.records,
                rounds: args.rounds,
                ..Default::default()
            };
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let progress = charts::progress(bench::steps(&options));
            let report = bench::run_with(&engine, options, args.soft_aes.as_deref(), &progress);
            progress.finish_and_clear();
            let report = report?;
            println!("{report}");
            let (chart, json) = (args.out.join("bench.svg"), args.out.join("bench.json"));
            report.chart(&chart)?;
            charts::write_json(&json, &report)?;
            println!("wrote {} and {}", chart.display(), json.display());
            Ok(())
        }
        Command::BenchServe {
            seconds,
            connections,
            idle,
            rounds,
            out,
        } => serve_bench::run(serve_bench::Options {
            duration: Duration::from_secs(seconds.max(1)),
            connections: connections.max(1),
            idle_connections: idle.max(1),
            rounds: rounds.max(1),
            out,
        }),
        Command::BenchBaselineServer {
            listen,
            cert,
            key,
            body_bytes,
        } => serve_bench::baseline_server(listen, &cert, &key, body_bytes),
        Command::Worker(args) => worker_command(args),
        Command::WriteGuest { path } => {
            std::fs::write(&path, keyferry::REFERENCE_COMPONENT)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({} bytes)",
                path.display(),
                keyferry::REFERENCE_COMPONENT.len()
            );
            Ok(())
        }
    }
}

fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    // Before the key is read: from here on, no process of this uid (a
    // worker included) can read this one's memory, and no core file holds
    // the key.
    keyferry::confine::protect_key_holder().context("making the key holder non-dumpable")?;
    // The built-in responder speaks HTTP/1.1 only: do not let ALPN promise
    // a client anything else.
    if args.plane.guest.is_none()
        && !args.plane.echo
        && let Some(other) = args.tls.alpn.iter().find(|p| *p != "http/1.1")
    {
        bail!(
            "--alpn {other}: the built-in HTTP responder speaks only http/1.1 \
             (use --echo, or --guest with an application that speaks {other})"
        );
    }
    let listen_host = args
        .listen
        .rsplit_once(':')
        .map(|(host, _)| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .context("--listen must be HOST:PORT")?;
    if args.cert.len() != args.key.len() {
        bail!(
            "{} --cert and {} --key: give each certificate its key, in the same order",
            args.cert.len(),
            args.key.len()
        );
    }
    let files: Vec<(PathBuf, PathBuf)> = args
        .cert
        .iter()
        .cloned()
        .zip(args.key.iter().cloned())
        .collect();
    let identities = if files.is_empty() {
        vec![Identity::self_signed(&[
            "localhost".to_string(),
            listen_host,
        ])?]
    } else {
        load_identities(&files)?
    };
    let identities = Arc::new(Identities::new(&identities)?);
    let mut options = args.tls.options();
    if let Some(path) = &args.client_ca {
        let roots = tls::roots_from_pem_file(path)?;
        options = match args.client_auth {
            ClientAuth::Required => options.with_client_verification(roots),
            ClientAuth::Optional => options.with_optional_client_verification(roots),
        };
    }
    let ticket_keys = match &args.ticket_keys {
        Some(path) => Some(Arc::new(keyferry::tickets::TicketKeys::from_file(path)?)),
        None => None,
    };
    if let Some(keys) = &ticket_keys {
        options = options.with_ticket_keys(keys.clone());
    }
    let tls = Arc::new(options.server_config_for(identities.clone())?);
    let reload = Reload {
        identities: identities.clone(),
        files,
        ticket_keys: ticket_keys.zip(args.ticket_keys.clone()),
    };
    let workers = match (args.workers, args.shared_instances) {
        (Some(n), None) => n,
        (None, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        // Shared instances live in one process.
        (None | Some(0), Some(_)) => 0,
        (Some(_), Some(_)) => {
            bail!("--shared-instances shares instances within one process: use it with --workers 0")
        }
    };
    let application = args.plane.application();
    let timeouts = args.plane.timeouts(args.handshake_timeout);
    // With workers, this process holds the key and never compiles or runs
    // guest code; the workers do.
    let in_process = if workers == 0 {
        let engine = GuestEngine::new(
            args.plane
                .sandbox
                .config()
                .with_pooling(pool_slots(args.max_connections)),
        )?;
        Some(args.plane.component(&engine)?)
    } else {
        None
    };
    let worker_command = WorkerCommand {
        program: match &args.worker_program {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("finding this binary to start workers")?,
        },
        args: {
            let mut a: Vec<std::ffi::OsString> = vec!["worker".into()];
            if let Some((uid, gid)) = lookup_user(&args.user)? {
                a.extend(["--uid".into(), uid.to_string().into()]);
                a.extend(["--gid".into(), gid.to_string().into()]);
            }
            a.extend([
                "--max-connections".into(),
                args.max_connections.to_string().into(),
            ]);
            for secret in args.key.iter().chain(&args.ticket_keys) {
                a.extend(["--check-unreadable".into(), secret.into()]);
            }
            a.extend(args.plane.to_args());
            a
        },
    };
    if workers > 0 {
        log_key_protection(&args.user);
    }
    let proxy_protocol = args.proxy_protocol.then(|| {
        let trusted = keyferry::proxy::TrustedSources::new(args.proxy_from.clone());
        if trusted.is_any() {
            warn!("--proxy-protocol without --proxy-from: any peer may claim any client address");
        }
        Arc::new(trusted)
    });
    let metrics_address = match &args.metrics {
        Some(spec) => Some(
            keyferry::scrape::metrics_address(spec)
                .with_context(|| format!("--metrics {spec}: expected PORT or ADDR:PORT"))?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // SIGHUP is caught before anything else, so a reload signal sent
        // as soon as the process exists never kills it.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let listener = bind(&args.listen, args.reuse_port)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        let fingerprint = identities.fingerprints().join(",");
        info!(address = %local, fingerprint = %fingerprint, application, workers, "listening");
        println!("keyferry serving on https://{local}/ (certificate SHA-256 {fingerprint})");
        tokio::spawn(reload.on_sighup(hangups));
        let (tx, rx) = tokio::sync::watch::channel(false);
        if let Some(address) = metrics_address {
            let scrape = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for --metrics"))?;
            let address = scrape.local_addr()?;
            info!(%address, "metrics at http://{address}/metrics");
            tokio::spawn(keyferry::scrape::serve_metrics(
                scrape,
                metrics.clone(),
                rx.clone(),
            ));
        }
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                info!("Ctrl-C: no longer accepting connections");
                let _ = tx.send(true);
            }
        });
        match in_process {
            Some(component) => {
                let options = ServerOptions {
                    tls,
                    component,
                    max_connections: args.max_connections,
                    timeouts,
                    proxy_protocol: proxy_protocol.clone(),
                    isolation: match args.shared_instances {
                        Some(n) => Isolation::Shared(Arc::new(SharedPool::new(n))),
                        None => Isolation::PerConnection,
                    },
                    drain_timeout: Duration::from_secs(5),
                    metrics: metrics.clone(),
                };
                // As a task on the runtime's threads, not on this one:
                // what the accept loop spawns then starts on the same
                // thread without waking another.
                tokio::spawn(serve(listener, options, rx)).await??
            }
            None => {
                let options = MonitorOptions {
                    tls,
                    workers,
                    command: worker_command,
                    max_connections: args.max_connections,
                    handshake_timeout: timeouts.handshake,
                    drain_timeout: Duration::from_secs(5),
                    proxy_protocol: proxy_protocol.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(keyferry::monitor::serve(listener, options, rx)).await??
            }
        };
        info!(accepted = metrics.accepted_total(), "stopped");
        Ok(())
    })
}

/// Says at start what protects the key from the workers and what does not
/// (DESIGN section 6; the README's threat model has the table).
fn log_key_protection(user: &str) {
    let root = rustix::process::geteuid().is_root();
    let yama = keyferry::confine::yama_ptrace_scope();
    let landlock = keyferry::confine::landlock_abi();
    info!(
        dumpable = keyferry::confine::is_dumpable(),
        workers_user = if root { user } else { "this uid" },
        yama_ptrace_scope = yama.map_or_else(|| "absent".to_string(), |s| s.to_string()),
        landlock_abi = landlock.map_or_else(|| "unavailable".to_string(), |v| v.to_string()),
        seccomp = true,
        "key protection"
    );
    if root && user == "nobody" {
        warn!(
            "workers run as nobody, a user other daemons share (they could signal the workers): \
             create a dedicated one (useradd --system --no-create-home keyferry) and pass --user keyferry"
        );
    }
    if !root {
        warn!(
            "started as an unprivileged user: workers run as this uid, kept from the key by \
             non-dumpability, Landlock and seccomp only; any other process of this uid can \
             still read the key file and signal this process (start as root with --user for \
             a separate uid)"
        );
    }
    if landlock.is_none() {
        warn!(
            "this kernel has no Landlock: workers can open any file their uid can read, \
             the key file included when they share this uid"
        );
    }
}

/// Instance slots for a pooled engine that serves up to `max_connections`:
/// one each, and room for the ready and retired instances besides.
fn pool_slots(max_connections: usize) -> u32 {
    u32::try_from(max_connections.max(1))
        .unwrap_or(u32::MAX)
        .saturating_add(keyferry::ready::SPARE_SLOTS)
}

/// Reads each certificate and key pair.
fn load_identities(files: &[(PathBuf, PathBuf)]) -> keyferry::Result<Vec<Identity>> {
    files
        .iter()
        .map(|(cert, key)| Identity::from_pem_files(cert, key))
        .collect()
}

/// What SIGHUP re-reads, as nginx's `-s reload` does: new handshakes use
/// the new identities and ticket keys, connections already made carry on,
/// and anything that fails to load leaves what is in service in place.
/// With workers, only this (the handshake) process holds them.
struct Reload {
    identities: Arc<Identities>,
    files: Vec<(PathBuf, PathBuf)>,
    ticket_keys: Option<(Arc<keyferry::tickets::TicketKeys>, PathBuf)>,
}

impl Reload {
    async fn on_sighup(self, hangups: std::io::Result<tokio::signal::unix::Signal>) {
        let Ok(mut hangups) = hangups else {
            warn!("cannot listen for SIGHUP; reloading is off");
            return;
        };
        while hangups.recv().await.is_some() {
            self.reload();
        }
    }

    fn reload(&self) {
        if self.files.is_empty() && self.ticket_keys.is_none() {
            info!("SIGHUP: nothing to reload (the certificate was made at start)");
            return;
        }
        // Load everything first, then swap: all or nothing.
        let swapped = self.load().and_then(|(identities, tickets)| {
            if let Some(identities) = identities {
                self.identities.replace(&identities)?;
            }
            if let (Some((keys, _)), Some(new)) = (&self.ticket_keys, tickets) {
                keys.replace(new);
            }
            Ok(())
        });
        match swapped {
            Ok(()) => {
                info!(fingerprint = %self.identities.fingerprints().join(","), "SIGHUP: reloaded");
            }
            Err(e) => warn!(
                error = %e,
                "SIGHUP: reload failed; still serving the previous certificates and ticket keys"
            ),
        }
    }

    /// Reads every file this reload covers.
    fn load(
        &self,
    ) -> keyferry::Result<(Option<Vec<Identity>>, Option<keyferry::tickets::TicketKeys>)> {
        let identities = if self.files.is_empty() {
            None
        } else {
            Some(load_identities(&self.files)?)
        };
        let tickets = self
            .ticket_keys
            .as_ref()
            .map(|(_, path)| keyferry::tickets::TicketKeys::from_file(path))
            .transpose()?;
        Ok((identities, tickets))
    }
}

/// Binds the first address `listen` resolves to that binds, with
/// SO_REUSEADDR (as tokio does) and, if asked, SO_REUSEPORT.
async fn bind(listen: &str, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        if reuse_port {
            socket.set_reuseport(true)?;
        }
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolved to nothing")))
}

/// The uid and gid of `name` from /etc/passwd, when this process is root
/// (otherwise workers keep this process's user and need nothing).
fn lookup_user(name: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        })
        .flatten()
        .next()
        .with_context(|| format!("--user {name}: no such user in /etc/passwd"))
        .and_then(|(uid, gid)| {
            if uid == 0 || gid == 0 {
                bail!("--user {name}: workers never run as uid or gid 0; name an unprivileged user")
            }
            Ok(Some((uid, gid)))
        })
}

/// `keyferry worker`: harden first, while this is the only thread, then
/// serve what the handshake process hands over on standard input.
fn worker_command(args: WorkerArgs) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    keyferry::worker::harden(args.uid.zip(args.gid))?;
    keyferry::worker::limit_descriptors(args.max_connections)?;
    let channel = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("the channel on standard input")?;
    // The guest is the one file a worker reads; after it, no file opens
    // (Landlock), and what an escaped guest would reach for is refused
    // (seccomp). Before the engine, whose compiler starts threads.
    let wasm = args.plane.guest_bytes()?;
    let confinement =
        keyferry::confine::confine_worker().map_err(keyferry::worker::WorkerError::from)?;
    info!(
        landlock = confinement.landlock.as_str(),
        seccomp = confinement.seccomp,
        uid = rustix::process::getuid().as_raw(),
        "worker confined"
    );
    check_unreadable(&args.check_unreadable, confinement.landlock)?;
    let engine = GuestEngine::new(
        args.plane
            .sandbox
            .config()
            .with_pooling(pool_slots(args.max_connections)),
    )?;
    let component = args.plane.component_from(&engine, wasm.as_deref())?;
    let options = keyferry::worker::WorkerOptions {
        component,
        timeouts: args.plane.timeouts(10),
        drain_timeout: Duration::from_secs(5),
    };
    // One runtime thread: there is a worker process per core already, so
    // more threads would only hand connections' wakeups from one to
    // another. Multi-threaded all the same, so a guest call that computes
    // for long can leave the thread to the other connections
    // (`transport::blocking`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Ctrl-C (and a hangup) reach the whole process group: the handshake
    // process tells workers when to stop and reloads what it holds, so a
    // worker ignores both signals itself.
    runtime.block_on(async move {
        tokio::spawn(async {
            loop {
                if tokio::signal::ctrl_c().await.is_err() {
                    break;
                }
            }
        });
        if let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move { while hangups.recv().await.is_some() {} });
        }
        // On the runtime's thread, with the sessions it spawns, rather than
        // on this one: a hand-over then wakes no other thread.
        tokio::spawn(keyferry::worker::run(channel, options)).await
    })??;
    Ok(())
}

/// Tries to open each of the key holder's secret files from the confined
/// worker, as OpenSSH's privsep child tries `setuid(0)` after its drop: a
/// confinement that should hold and does not is an error, not a warning.
fn check_unreadable(
    files: &[PathBuf],
    landlock: keyferry::confine::LandlockLevel,
) -> anyhow::Result<()> {
    for file in files {
        match std::fs::File::open(file) {
            Err(e) => {
                info!(file = %file.display(), error = %e, "worker cannot open the key holder's file")
            }
            Ok(_) if landlock == keyferry::confine::LandlockLevel::Full => {
                bail!(
                    "confinement did not hold: the worker opened {}",
                    file.display()
                )
            }
            Ok(_) => warn!(
                file = %file.display(),
                landlock = landlock.as_str(),
                "the worker can open the key holder's file: this kernel's Landlock does not keep it out"
            ),
        }
    }
    Ok(())
}

fn connect_command(args: ConnectArgs) -> anyhow::Result<()> {
    let (host, _port) = args
        .address
        .rsplit_once(':')
        .context("address must be HOST:PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = args.sni.clone().unwrap_or_else(|| host.to_string());
    let server_name = ServerName::try_from(name.clone())
        .with_context(|| format!("invalid server name {name}"))?;
    let verification = if args.insecure {
        ServerVerification::DangerousNone
    } else {
        let ca = args
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        ServerVerification::Roots(tls::roots_from_pem_file(&ca)?)
    };
    let options = args.tls.options();
    let config = Arc::new(options.client_config(verification)?);
    let engine = GuestEngine::new(args.sandbox.config())?;
    let guest = GuestComponent::reference(&engine)?.instantiate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut stream = tokio::net::TcpStream::connect(&args.address)
            .await
            .with_context(|| format!("cannot connect to {}", args.address))?;
        stream.set_nodelay(true)?;
        let hs = Handshake::client(&config, server_name, rand_id())?;
        let handoff = tokio::time::timeout(
            Timeouts::default().handshake,
            keyferry::transport::handshake_async(&mut stream, hs),
        )
        .await
        .context("the handshake timed out")??;
        info!(version = ?handoff.facts.version, suite = %handoff.facts.suite, "handshake complete; data plane in the guest");
        let (mut plane, first) = DataPlane::new(guest, handoff)?;
        let (mut net_in, mut net_out) = stream.split();
        let mut stdout = tokio::io::stdout();
        stdout.write_all(&first.plaintext).await?;
        // Full duplex: the socket is always read, so a peer that echoes
        // while we send can never deadlock against us.
        let mut pending = first.to_send;
        let mut written = 0;
        let mut stdin = tokio::io::stdin();
        let mut stdin_open = true;
        let mut net = vec![0u8; 16 * 1024 + 512];
        let mut input = vec![0u8; 16 * 1024];
        loop {
            if written == pending.len() {
                pending.clear();
                written = 0;
            }
            tokio::select! {
                read = net_in.read(&mut net) => {
                    let n = read?;
                    let d = if n == 0 { plane.end_of_stream()? } else { plane.receive(&net[..n])? };
                    stdout.write_all(&d.plaintext).await?;
                    stdout.flush().await?;
                    pending.extend_from_slice(&d.to_send);
                    if pending.len() - written > MAX_PENDING {
                        bail!("the server is not reading what we send");
                    }
                    if let Some(closed) = d.closed {
                        net_out.write_all(&pending[written..]).await?;
                        info!(?closed, "peer closed");
                        break;
                    }
                }
                w = net_out.write(&pending[written..]), if written < pending.len() => {
                    written += w?;
                }
                read = stdin.read(&mut input), if stdin_open && pending.len() - written < (1 << 20) => {
                    let n = read?;
                    if n == 0 {
                        stdin_open = false;
                        pending.extend_from_slice(&plane.close()?.to_send);
                    } else {
                        pending.extend_from_slice(&plane.send(&input[..n])?);
                    }
                }
            }
        }
        let _ = stream.shutdown().await;
        Ok(())
    })
}

/// The most unsent ciphertext `connect` holds before giving up on a peer
/// that does not read.
const MAX_PENDING: usize = 16 << 20;

fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom_fill(&mut b);
    u64::from_be_bytes(b)
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_bare_log_level_is_scoped_to_keyferry() {
        let d = super::log_directives(Some("debug"));
        assert!(
            d.starts_with("warn,") && d.contains("keyferry=debug"),
            "{d}"
        );
        assert!(!d.contains("cranelift"), "{d}");
        assert_eq!(
            super::log_directives(Some("wasmtime=trace")),
            "wasmtime=trace"
        );
        assert_eq!(super::log_directives(None), "info,rustls=error");
    }
}
