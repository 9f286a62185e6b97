//! The command line: argument parsing, logging set-up, and dispatch to
//! [`crate::commands`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::serve_bench;
use anyhow::Context;
use clap::{Parser, Subcommand};
use keyferry::{GuestComponent, GuestEngine, SandboxConfig};
use keyferry_server::monitor::LogFormat;

use crate::commands::bench::BenchArgs;
use crate::commands::connect::ConnectArgs;
use crate::commands::serve::ServeArgs;
use crate::commands::worker::WorkerArgs;

/// Split-TLS with a sandboxed data plane: rustls handshakes in this process,
/// record encryption in a WebAssembly guest.
#[derive(Parser)]
#[command(name = "keyferry", version, about, propagate_version = true)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) for keyferry's own
    /// lines, or a full `tracing` filter; overrides KEYFERRY_LOG. `serve`
    /// passes it to its workers.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
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
        /// Also a stock wasi:http component: keyferry serving it, against
        /// nginx (TLS 1.3) in front of `wasmtime serve` running it (the
        /// wasmtime CLI from KEYFERRY_WASMTIME or PATH).
        #[arg(long, value_name = "COMPONENT")]
        wasi_http: Option<PathBuf>,
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

/// Runs the `keyferry` command with this process's arguments. It is the
/// whole of the `keyferry` binary, in the library so the end-to-end tests'
/// package can build the same program as a binary of its own.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let setting = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("KEYFERRY_LOG").ok());
    let filter = tracing_subscriber::EnvFilter::new(log_directives(setting.as_deref()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // KEYFERRY_LOG_FORMAT=json: one JSON object per line, with the same
    // fields as the text lines, at the top level, for log shippers; fatal
    // errors too. Anything but text or json is refused.
    let json = match std::env::var("KEYFERRY_LOG_FORMAT").as_deref() {
        Err(_) | Ok("" | "text") => false,
        Ok("json") => true,
        Ok(other) => {
            eprintln!("keyferry: error: KEYFERRY_LOG_FORMAT={other}: expected text or json");
            return ExitCode::FAILURE;
        }
    };
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // `serve`'s workers log as this process does.
    let format = if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    match run(cli, format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // A message that already shows its cause (as "cannot read F:
            // reason" does) is not followed by the cause again.
            let mut shown = e.to_string();
            let mut causes = Vec::new();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    causes.push(text.clone());
                }
                shown = text;
            }
            if json {
                tracing::error!(error = %e, causes = %causes.join(": "), "fatal");
            } else {
                eprintln!("keyferry: error: {e}");
                for cause in causes {
                    eprintln!("  caused by: {cause}");
                }
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
            // A target directive matches by prefix: `keyferry` covers
            // keyferry_server and keyferry_cli too.
            format!("warn,rustls=error,keyferry={level}")
        }
        _ => "info,rustls=error".to_string(),
    }
}

fn run(cli: Cli, log_format: LogFormat) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            crate::commands::serve::serve_command(*args, cli.log_level.as_deref(), log_format)
        }
        Command::Connect(args) => crate::commands::connect::connect_command(args),
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
        Command::Bench(args) => args.execute(),
        Command::BenchServe {
            seconds,
            connections,
            idle,
            rounds,
            out,
            wasi_http,
        } => serve_bench::run(serve_bench::Options {
            duration: Duration::from_secs(seconds.max(1)),
            connections: connections.max(1),
            idle_connections: idle.max(1),
            rounds: rounds.max(1),
            out,
            wasi_http,
        }),
        Command::BenchBaselineServer {
            listen,
            cert,
            key,
            body_bytes,
        } => serve_bench::baseline_server(listen, &cert, &key, body_bytes),
        Command::Worker(args) => crate::commands::worker::worker_command(args),
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
