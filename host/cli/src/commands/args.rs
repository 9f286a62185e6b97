//! The arguments `serve`, `worker` and `connect` share: the sandbox's
//! limits, the TLS versions and ALPN, and what runs the data plane.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::apps;
use anyhow::Context;
use clap::Args;
use keyferry::http_serve::HttpConfig;
use keyferry::tls::TlsOptions;
use keyferry::{ExecutionBound, GuestComponent, GuestEngine, SandboxConfig};
use keyferry_server::transport::Timeouts;

#[derive(Args)]
pub(crate) struct SandboxArgs {
    /// Linear memory cap per guest instance, in MiB.
    #[arg(long, default_value_t = 64)]
    pub(crate) memory_mib: usize,
    /// Wall-clock bound on each call into a guest, in milliseconds (at
    /// least 1).
    #[arg(long, default_value_t = 1000, conflicts_with = "fuel",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) deadline_ms: u64,
    /// Fuel (about one unit per wasm instruction) per call, instead of a
    /// deadline (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) fuel: Option<u64>,
    /// For a wasi:http component: the largest request body, in bytes
    /// (413 past it).
    #[arg(long, default_value_t = 1 << 30)]
    pub(crate) max_body: u64,
    /// For a wasi:http component: the largest request head (request line
    /// and headers), in bytes (431 past it).
    #[arg(long, default_value_t = 32 << 10)]
    pub(crate) max_head: u32,
    /// For a wasi:http component: each request after the first on a
    /// connection runs in a fresh instance (the connection moves between
    /// requests), for components that assume Spin's semantics. The
    /// default is an instance per connection.
    #[arg(long)]
    pub(crate) instance_per_request: bool,
    /// An environment variable for the guest (`wasi:cli/environment`),
    /// as KEY=VALUE; repeat for more. A guest sees none of serve's own.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

impl SandboxArgs {
    pub(crate) fn config(&self) -> SandboxConfig {
        let bound = match self.fuel {
            Some(fuel) => ExecutionBound::Fuel(fuel),
            None => ExecutionBound::Deadline(Duration::from_millis(self.deadline_ms)),
        };
        SandboxConfig::default()
            .with_memory_limit(self.memory_mib << 20)
            .with_execution_bound(bound)
            .with_env(self.env.clone())
            .with_http(HttpConfig {
                max_head: self.max_head,
                max_body: self.max_body,
                instance_per_request: self.instance_per_request,
            })
    }
}

#[derive(Args)]
pub(crate) struct TlsArgs {
    /// ALPN protocols, in preference order.
    #[arg(long = "alpn")]
    pub(crate) alpn: Vec<String>,
    /// Only TLS 1.3.
    #[arg(long, conflicts_with = "tls12")]
    pub(crate) tls13: bool,
    /// Only TLS 1.2.
    #[arg(long)]
    pub(crate) tls12: bool,
}

impl TlsArgs {
    pub(crate) fn options(&self) -> TlsOptions {
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

/// What runs the data plane: the application, the sandbox, the session
/// timeouts. `serve` uses these in-process or passes them to its workers.
#[derive(Args)]
pub(crate) struct PlaneArgs {
    /// The application to serve instead of the built-in HTTP responder:
    /// a stock wasi:http component (one that exports
    /// wasi:http/incoming-handler@0.2.x, from any toolchain), or a keyferry
    /// application component (exporting keyferry:dataplane/connection,
    /// e.g. built with keyferry_guest::export_application!).
    #[arg(long)]
    pub(crate) guest: Option<PathBuf>,
    /// Echo instead of the HTTP responder.
    #[arg(long, conflicts_with = "guest")]
    pub(crate) echo: bool,
    /// Forward each connection's plaintext to this backend (HOST:PORT) and
    /// the backend's answer back, as stunnel and hitch do: TLS ends here,
    /// and the plaintext leaves the sandbox for the backend. The handshake
    /// process connects to it after each handshake.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["guest", "echo"])]
    pub(crate) forward: Option<String>,
    /// Seconds an idle connection (between requests) stays open.
    #[arg(long, default_value_t = 75)]
    pub(crate) keepalive_timeout: u64,
    /// Seconds a connection may stall in the middle of a request.
    #[arg(long, default_value_t = 60)]
    pub(crate) request_timeout: u64,
    /// Seconds a write may wait for a client that does not read.
    #[arg(long, default_value_t = 60)]
    pub(crate) write_timeout: u64,
    /// Seconds open connections get to finish after SIGTERM or SIGINT (or
    /// a handover to a new process): an idle one is closed at once, one in
    /// the middle of a request is answered and then closed, a forwarded one
    /// carries on; at the deadline every one left gets close_notify.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) drain_timeout: u64,
    /// Log a line per request (`request`, target `keyferry::access`):
    /// client, method, path, status, body bytes each way, duration, and the
    /// connection's resumed flag, ALPN and client-certificate subject. The
    /// HTTP application in the sandbox reports each request (the built-in
    /// responder and served wasi:http components do).
    #[arg(long)]
    pub(crate) access_log: bool,
    /// With --access-log: requests from this network (CIDR or one address;
    /// repeatable), such as a load balancer's health checks, are logged at
    /// debug rather than info.
    #[arg(long, value_name = "CIDR", requires = "access_log")]
    pub(crate) quiet_from: Vec<keyferry_server::proxy::Network>,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

impl PlaneArgs {
    pub(crate) fn component(&self, engine: &GuestEngine) -> anyhow::Result<GuestComponent> {
        let wasm = self.guest_bytes()?;
        self.component_from(engine, wasm.as_deref())
    }

    /// The guest's bytes, read from its file (`None` for a built-in
    /// application): a worker reads them before it shuts itself in.
    pub(crate) fn guest_bytes(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.guest
            .as_ref()
            .map(|path| {
                std::fs::read(path).with_context(|| format!("reading guest {}", path.display()))
            })
            .transpose()
    }

    /// Compiles `wasm` (from [`PlaneArgs::guest_bytes`]), or the built-in
    /// application.
    pub(crate) fn component_from(
        &self,
        engine: &GuestEngine,
        wasm: Option<&[u8]>,
    ) -> anyhow::Result<GuestComponent> {
        Ok(match (wasm, &self.guest) {
            (Some(wasm), Some(path)) => GuestComponent::new(engine, wasm)
                .with_context(|| format!("loading guest {}", path.display()))?,
            (Some(wasm), None) => GuestComponent::new(engine, wasm)?,
            (None, _) if self.echo => GuestComponent::new(engine, apps::ECHO)?,
            // The record layer alone: the plaintext comes out to the host,
            // which relays it to the backend.
            (None, _) if self.forward.is_some() => {
                GuestComponent::new(engine, keyferry::REFERENCE_COMPONENT)?
            }
            (None, _) => GuestComponent::new(engine, apps::HTTP_RESPONDER)?,
        })
    }

    /// `--access-log`, if asked for.
    pub(crate) fn access_log(&self) -> Option<Arc<keyferry_server::access::AccessLog>> {
        self.access_log.then(|| {
            Arc::new(keyferry_server::access::AccessLog::new(
                self.quiet_from.clone(),
            ))
        })
    }

    /// Whether the built-in HTTP/1.1 responder serves (no other
    /// application, no forwarding): ALPN then offers only `http/1.1`.
    pub(crate) fn is_builtin_http(&self) -> bool {
        self.guest.is_none() && !self.echo && self.forward.is_none()
    }

    pub(crate) fn application(&self) -> &'static str {
        match (&self.guest, self.echo) {
            (Some(_), _) => "plugin",
            (None, true) => "echo",
            (None, false) if self.forward.is_some() => "forward",
            (None, false) => "http",
        }
    }

    pub(crate) fn timeouts(&self, handshake: u64) -> Timeouts {
        Timeouts {
            handshake: Duration::from_secs(handshake.max(1)),
            keepalive: Duration::from_secs(self.keepalive_timeout.max(1)),
            request: Duration::from_secs(self.request_timeout.max(1)),
            write: Duration::from_secs(self.write_timeout.max(1)),
        }
    }

    /// The same settings as `worker` arguments.
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(path) = &self.guest {
            args.extend(["--guest".into(), path.into()]);
        }
        if self.echo {
            args.push("--echo".into());
        }
        if let Some(backend) = &self.forward {
            args.extend(["--forward".into(), backend.into()]);
        }
        if self.access_log {
            args.push("--access-log".into());
        }
        for network in &self.quiet_from {
            args.extend(["--quiet-from".into(), network.to_string().into()]);
        }
        for (flag, value) in [
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--request-timeout", self.request_timeout),
            ("--write-timeout", self.write_timeout),
            ("--drain-timeout", self.drain_timeout),
            ("--memory-mib", self.sandbox.memory_mib as u64),
            ("--max-body", self.sandbox.max_body),
            ("--max-head", u64::from(self.sandbox.max_head)),
        ] {
            args.extend([flag.into(), value.to_string().into()]);
        }
        if self.sandbox.instance_per_request {
            args.push("--instance-per-request".into());
        }
        for (key, value) in &self.sandbox.env {
            args.extend(["--env".into(), format!("{key}={value}").into()]);
        }
        // One execution bound or the other: the worker refuses both.
        match self.sandbox.fuel {
            Some(fuel) => args.extend(["--fuel".into(), fuel.to_string().into()]),
            None => args.extend([
                "--deadline-ms".into(),
                self.sandbox.deadline_ms.to_string().into(),
            ]),
        }
        args
    }
}

/// Instance slots for a pooled engine that serves up to `max_connections`:
/// one each, and room for the ready and retired instances besides.
pub(crate) fn pool_slots(max_connections: usize) -> u32 {
    u32::try_from(max_connections.max(1))
        .unwrap_or(u32::MAX)
        .saturating_add(keyferry_server::ready::SPARE_SLOTS)
}
