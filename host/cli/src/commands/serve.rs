//! `keyferry serve`: the handshake process, with its workers or with the
//! data plane in this process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use clap::builder::TypedValueParser as _;
use keyferry::GuestEngine;
use keyferry::ocsp::OcspStaple;
use keyferry::tls::{self, Identities, Identity, TlsOptions};
use keyferry_server::front::{FrontOptions, ServerTls};
use keyferry_server::metrics::{Metrics, Serving};
use keyferry_server::monitor::{LogFormat, MonitorOptions, WorkerCommand};
use keyferry_server::server::{Isolation, ServerOptions};
use tracing::{info, warn};

use super::args::{PlaneArgs, TlsArgs, pool_slots};

/// Whether a client must present a certificate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum ClientAuth {
    /// Refuse clients without one.
    Required,
    /// Serve clients without one; one from another CA is still refused.
    Optional,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on: IP:PORT or HOST:PORT (a host name is
    /// resolved; the first address that binds is used).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub(crate) listen: String,
    /// PEM certificate chain (a self-signed one is made at start without
    /// it). Repeat with --key for several identities: each client gets the
    /// one valid for the name it sent (SNI), exact before wildcard, and the
    /// first serves clients that send none or an unknown one. SIGHUP
    /// re-reads them all (and --ticket-keys); if one fails to load, the
    /// ones in service stay.
    #[arg(long, requires = "key")]
    pub(crate) cert: Vec<PathBuf>,
    /// PEM private key for the --cert in the same position.
    #[arg(long, requires = "cert")]
    pub(crate) key: Vec<PathBuf>,
    /// Verify client certificates against these PEM CA certificates
    /// (inbound mTLS). The application in the guest sees the client
    /// certificate's subject in the handshake facts.
    #[arg(long)]
    pub(crate) client_ca: Option<PathBuf>,
    /// With --client-ca: refuse client certificates this CRL revokes (PEM
    /// `X509 CRL` blocks as `openssl ca -gencrl` writes them, or DER;
    /// repeat for several). As nginx's `ssl_crl`, every CA in a client's
    /// chain needs its CRL, and a CRL past its nextUpdate refuses the
    /// clients it covers. SIGHUP re-reads it, and --client-ca.
    #[arg(long, value_name = "FILE", requires = "client_ca")]
    pub(crate) client_crl: Vec<PathBuf>,
    /// A DER OCSP response to staple (`openssl ocsp -respout`, fetched by
    /// a cron job as for nginx's `ssl_stapling_file`); repeat for several.
    /// Each goes to the --cert it is about (serial number and issuer). It
    /// must say `good` and be current; it is stapled until a minute before
    /// its nextUpdate, and SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub(crate) ocsp: Vec<PathBuf>,
    /// With --client-ca: `required` refuses clients without a certificate
    /// (certificate_required alert), `optional` serves them.
    #[arg(long, value_enum, default_value = "required", requires = "client_ca")]
    pub(crate) client_auth: ClientAuth,
    /// Data-plane worker processes (default: one per core). The handshake
    /// process holds the key and hands each connection to a worker that
    /// never has it; 0 runs the data plane in this process, beside the key
    /// (for embedding and debugging).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// The user workers run as when serve is started as root.
    #[arg(long, default_value = "nobody")]
    pub(crate) user: String,
    /// Each connection starts with a HAProxy PROXY protocol v2 header (an
    /// L4 load balancer in front); its client address is logged.
    #[arg(long)]
    pub(crate) proxy_protocol: bool,
    /// With --proxy-protocol: believe PROXY headers only from this network
    /// (CIDR, or one address; repeat for several), the load balancers'. A
    /// client that reaches the port from elsewhere is closed. Without it,
    /// any peer may claim any client address.
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
    pub(crate) proxy_from: Vec<keyferry_server::proxy::Network>,
    /// Set SO_REUSEPORT, so several serve processes on one host share the
    /// port and the kernel spreads connections among them.
    #[arg(long)]
    pub(crate) reuse_port: bool,
    /// With --forward: write a PROXY protocol v2 header to the backend
    /// before the client's bytes, with the client's address and, as TLVs,
    /// the ALPN, the SNI (authority), and the TLS version, suite and client
    /// certificate's common name (hitch's write-proxy-v2).
    #[arg(long, requires = "forward")]
    pub(crate) forward_proxy_protocol: bool,
    /// With --forward: seconds a backend connect may take. A backend that
    /// refuses or does not answer ends the client's connection with
    /// close_notify, logged and counted (keyferry_backend_connects_total).
    #[arg(long, default_value_t = 5, requires = "forward",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connect_timeout: u64,
    /// Obtain and renew the certificate from this ACME CA directory (RFC
    /// 8555), e.g. https://acme-v02.api.letsencrypt.org/directory, with
    /// the TLS-ALPN-01 challenge answered on the served port. Instead of
    /// --cert/--key.
    #[arg(
        long,
        value_name = "URL",
        requires = "acme_domain",
        conflicts_with = "cert"
    )]
    pub(crate) acme_directory: Option<String>,
    /// With --acme-directory: a name the certificate covers (repeatable;
    /// each must resolve to this server for the CA).
    #[arg(long, value_name = "NAME", requires = "acme_directory")]
    pub(crate) acme_domain: Vec<String>,
    /// With --acme-directory: a contact address for the account
    /// (repeatable).
    #[arg(long, value_name = "ADDRESS", requires = "acme_directory")]
    pub(crate) acme_email: Vec<String>,
    /// With --acme-directory: where the account key and the certificate
    /// with its key are kept (mode 0700), so a restart serves the stored
    /// certificate at once (default: $STATE_DIRECTORY, as systemd's
    /// StateDirectory= sets it, else ./keyferry-acme).
    #[arg(long, value_name = "DIR", requires = "acme_directory")]
    pub(crate) acme_state: Option<PathBuf>,
    /// With --acme-directory: trust this CA certificate for the ACME
    /// server's own HTTPS (a test CA such as Pebble's); the system's roots
    /// otherwise.
    #[arg(long, value_name = "FILE", requires = "acme_directory")]
    pub(crate) acme_ca: Option<PathBuf>,
    /// With --acme-directory: renew this many days before the certificate
    /// expires.
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = 30,
        requires = "acme_directory"
    )]
    pub(crate) acme_renew_days: u64,
    /// A Unix socket for restarts that drop no connection: a new serve
    /// started with the same PATH takes this one's listening socket over
    /// it instead of binding its own, and once the new one serves this one
    /// stops accepting, drains (--drain-timeout) and exits 0. Made with
    /// mode 0600; only this server's user (or root) is given the listener.
    #[arg(long, value_name = "PATH")]
    pub(crate) handover_socket: Option<PathBuf>,
    /// Session-ticket keys shared by a fleet: one or more 48-byte keys (a
    /// 16-byte name, a 32-byte key); the first issues tickets, all open
    /// them. Make one with `head -c 48 /dev/urandom > ticket.key`.
    #[arg(long, value_name = "FILE")]
    pub(crate) ticket_keys: Option<PathBuf>,
    /// The program workers run (default: this binary). For tests.
    #[arg(long, hide = true)]
    pub(crate) worker_program: Option<PathBuf>,
    /// Most connections served at once. At the cap the longest-idle
    /// keep-alive connection is closed to admit a new client; a client that
    /// still cannot be admitted within 2 s is closed. At least 1.
    #[arg(long, default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub(crate) max_connections: usize,
    /// Seconds a client may take to finish its handshake.
    #[arg(long, default_value_t = 10)]
    pub(crate) handshake_timeout: u64,
    /// Load and check everything (certificates and keys, OCSP responses,
    /// client CA and CRLs, ticket keys, the guest in a confined worker)
    /// without listening,
    /// print every problem found, and exit 0 if there is none, as `nginx
    /// -t` does.
    #[arg(long)]
    pub(crate) check: bool,
    /// Serve Prometheus metrics (OpenMetrics text) at
    /// http://ADDR:PORT/metrics, on a listener of their own; a bare PORT
    /// listens on 127.0.0.1. Handshakes by version, suite and outcome,
    /// handoff latency, open connections, endings, bytes, guest traps,
    /// ready instances and worker restarts.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub(crate) metrics: Option<String>,
    /// Share this many guest instances among all connections instead of a
    /// fresh instance per connection (cheaper handshakes; a guest failure
    /// then ends every connection in its instance). Needs --workers 0.
    #[arg(long, value_name = "INSTANCES")]
    pub(crate) shared_instances: Option<usize>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) plane: PlaneArgs,
}

pub(crate) fn serve_command(
    args: ServeArgs,
    log_level: Option<&str>,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    // Before the key is read: from here on, no process of this uid (a
    // worker included) can read this one's memory, and no core file holds
    // the key.
    keyferry_server::confine::protect_key_holder().context("making the key holder non-dumpable")?;
    if args.check {
        return check_configuration(&args);
    }
    // The built-in responder speaks HTTP/1.1 only: do not let ALPN promise
    // a client anything else.
    if args.plane.is_builtin_http()
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
    // A certificate made at start is written out (the certificate, never
    // its key) once the port is known, for clients to pin.
    let mut made_certificate = None;
    let acme = acme_options(&args)?;
    // With ACME: the stored certificate, or a stand-in until the first one
    // is issued, and when to renew.
    let mut acme_renew_at = None;
    let identities = if let Some(acme) = &acme {
        match acme.stored() {
            Some(identity) => {
                info!(fingerprint = %identity.fingerprint(), "ACME: serving the stored certificate");
                acme_renew_at = Some(acme.renew_at(&identity));
                vec![identity]
            }
            None => {
                info!(domains = %acme.domains.join(","), "ACME: no certificate yet; serving a self-signed one until it is issued");
                vec![keyferry_server::certificate::self_signed(&acme.domains)?]
            }
        }
    } else if files.is_empty() {
        let (identity, pem) = keyferry_server::certificate::self_signed_with_pem(&[
            "localhost".to_string(),
            listen_host,
        ])?;
        made_certificate = Some(pem);
        vec![identity]
    } else {
        load_identities(&files, &args.ocsp)?
    };
    let identities = Arc::new(Identities::new(&identities)?);
    let mut options = args.tls.options();
    // The built-in responder speaks HTTP/1.1: say so in ALPN, as nginx
    // does, unless told otherwise.
    if args.plane.is_builtin_http() && args.tls.alpn.is_empty() {
        options = options.with_alpn(&[b"http/1.1"]);
    }
    if acme.is_some() {
        // The CA's validation offers `acme-tls/1` alone; clients never
        // negotiate it (the handshake process closes such a connection).
        let mut alpn = options.alpn().to_vec();
        if alpn.is_empty() {
            bail!(
                "--acme-directory answers TLS-ALPN-01, which needs ALPN: name the protocols \
                 this server speaks with --alpn (the built-in responder offers http/1.1)"
            );
        }
        alpn.push(tls::ACME_TLS_ALPN.to_vec());
        let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        options = options.with_alpn(&alpn);
    }
    let ticket_keys = match &args.ticket_keys {
        Some(path) => Some(Arc::new(keyferry_server::tickets::TicketKeys::from_file(
            path,
        )?)),
        None => None,
    };
    if let Some(keys) = &ticket_keys {
        options = options.with_ticket_keys(keys.clone());
    }
    let client = args.client_ca.clone().map(|ca| ClientFiles {
        ca,
        crls: args.client_crl.clone(),
        auth: args.client_auth,
    });
    let client_verification = client.as_ref().map(ClientFiles::load).transpose()?;
    let tls = Arc::new(ServerTls::new(Arc::new(
        ClientFiles::apply(options.clone(), client_verification, args.client_auth)
            .server_config_for(identities.clone())?,
    )));
    let metrics = Arc::new(Metrics::new());
    metrics.certificates(&identities.expiries());
    let reload = Reload {
        identities: identities.clone(),
        files,
        ocsp: args.ocsp.clone(),
        ticket_keys: ticket_keys.zip(args.ticket_keys.clone()),
        client,
        options,
        tls: tls.clone(),
        metrics: metrics.clone(),
    };
    let workers = match (args.workers, args.shared_instances) {
        (Some(n), None) => n,
        (None, None) => default_workers(),
        // Shared instances live in one process.
        (Some(0), Some(_)) => 0,
        (_, Some(_)) => {
            bail!(
                "--shared-instances shares instances within one process, beside the key: \
                 say so with --workers 0"
            )
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
    let program = match &args.worker_program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding this binary to start workers")?,
    };
    let mut argv = worker_args(&args)?;
    if let Some(level) = log_level {
        argv.extend(["--log-level".into(), level.into()]);
    }
    let worker_command = WorkerCommand::new(program, argv).with_log_format(log_format);
    if workers > 0 {
        log_key_protection(&args.user);
        // This process never compiles guest code: a worker-to-be checks the
        // guest, confined and as the workers' user, and a guest that cannot
        // run fails the start instead of every worker, forever.
        check_guest(&worker_command.args).context("the guest cannot run in a worker")?;
    }
    let proxy_protocol = args.proxy_protocol.then(|| {
        let trusted = keyferry_server::proxy::TrustedSources::new(args.proxy_from.clone());
        if trusted.is_any() {
            warn!("--proxy-protocol without --proxy-from: any peer may claim any client address");
        }
        Arc::new(trusted)
    });
    let metrics_address = match &args.metrics {
        Some(spec) => Some(
            keyferry_server::scrape::metrics_address(spec)
                .with_context(|| format!("--metrics {spec}: expected PORT or ADDR:PORT"))?,
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // SIGHUP is caught before anything else, so a reload signal sent
        // as soon as the process exists never kills it.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        // A restart: the running server hands its listening socket over.
        let taken = match &args.handover_socket {
            Some(path) => super::handover::take(path)?,
            None => None,
        };
        let activated = match taken {
            Some(_) => None,
            None => super::systemd::activated_listener()
                .context("taking the socket systemd passed")?,
        };
        let (listener, predecessor) = match (taken, activated) {
            (Some(taken), _) => {
                info!("took the listening socket from the running server (--handover-socket)");
                let listener = taken.listener.try_clone()?;
                (tokio::net::TcpListener::from_std(listener)?, Some(taken))
            }
            // Socket activation: systemd holds the listening socket, so it
            // outlives restarts, and `--listen` does not apply.
            (None, Some(listener)) => {
                info!("serving the listening socket systemd passed (socket activation)");
                (tokio::net::TcpListener::from_std(listener)?, None)
            }
            (None, None) => (
                bind(&args.listen, args.reuse_port)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?,
                None,
            ),
        };
        // Told once this server serves: the previous one then drains.
        let predecessor = std::sync::Mutex::new(predecessor);
        let serving = move || {
            if let Some(taken) = predecessor.lock().unwrap_or_else(|e| e.into_inner()).take() {
                taken.ready();
            }
        };
        let local = listener.local_addr()?;
        let fingerprint = identities.fingerprints().join(",");
        info!(address = %local, fingerprint = %fingerprint, application, workers, "listening");
        if let Some(pem) = &made_certificate {
            let path = std::env::temp_dir().join(format!("keyferry-{}.pem", local.port()));
            match std::fs::write(&path, pem) {
                Ok(()) => info!(
                    path = %path.display(),
                    "self-signed certificate written for clients to pin (curl --cacert)"
                ),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot write the self-signed certificate"),
            }
        }
        println!("keyferry serving on https://{local}/ (certificate SHA-256 {fingerprint})");
        tokio::spawn(reload.on_sighup(hangups));
        if let Some(acme) = acme {
            tokio::spawn(super::acme::keep_certificate(
                acme,
                identities.clone(),
                metrics.clone(),
                acme_renew_at,
            ));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tx = Arc::new(tx);
        // The next server takes the listener through here.
        let _offer = match &args.handover_socket {
            Some(path) => {
                let (tx, metrics) = (tx.clone(), metrics.clone());
                Some(super::handover::Offer::open(path, &listener, move || {
                    metrics.set_serving(Serving::Stopping);
                    super::systemd::stopping();
                    info!(signal = "handover", "no longer accepting connections");
                    let _ = tx.send(true);
                })?)
            }
            None => None,
        };
        if let Some(address) = metrics_address {
            let scrape = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for --metrics"))?;
            let address = scrape.local_addr()?;
            info!(%address, "metrics at http://{address}/metrics");
            tokio::spawn(keyferry_server::scrape::serve_metrics(
                scrape,
                metrics.clone(),
                rx.clone(),
            ));
        }
        // SIGINT (Ctrl-C) and SIGTERM (systemd, docker stop, Kubernetes)
        // both stop accepting and close what is open with close_notify.
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let stopping_metrics = metrics.clone();
        tokio::spawn(async move {
            let signal = match terminate {
                Ok(mut terminate) => tokio::select! {
                    r = tokio::signal::ctrl_c() => r.ok().map(|()| "SIGINT"),
                    r = terminate.recv() => r.map(|()| "SIGTERM"),
                },
                Err(_) => tokio::signal::ctrl_c().await.ok().map(|()| "SIGINT"),
            };
            if let Some(signal) = signal {
                stopping_metrics.set_serving(Serving::Stopping);
                super::systemd::stopping();
                info!(signal, "no longer accepting connections");
                let _ = tx.send(true);
            }
        });
        // The front of every connection, the same in both placements.
        let mut front = FrontOptions::new(tls.current())
            .with_max_connections(args.max_connections)
            .with_handshake_timeout(timeouts.handshake)
            .with_drain_timeout(Duration::from_secs(args.plane.drain_timeout))
            .with_metrics(metrics.clone());
        if let Some(trusted) = &proxy_protocol {
            front = front.with_proxy_protocol(trusted.clone());
        }
        if let Some(log) = args.plane.access_log() {
            front = front.with_access_log(log);
        }
        if let Some(backend) = &args.plane.forward {
            front = front.with_forward(Arc::new(keyferry_server::forward::Forward {
                backend: backend.clone(),
                proxy_protocol: args.forward_proxy_protocol,
                connect_timeout: Duration::from_secs(args.connect_timeout),
            }));
        }
        // SIGHUP replaces the config this front reads.
        front.tls = tls;
        match in_process {
            Some(component) => {
                let options = ServerOptions::new(front, component)
                    .with_timeouts(timeouts)
                    .with_isolation(match args.shared_instances {
                        Some(n) => Isolation::Shared(n),
                        None => Isolation::PerConnection,
                    });
                // The guest is compiled and every connection is served
                // from here on.
                metrics.set_serving(Serving::Serving);
                super::systemd::ready();
                serving();
                // As a task on the runtime's threads, not on this one:
                // what the accept loop spawns then starts on the same
                // thread without waking another.
                tokio::spawn(keyferry_server::server::run(listener, options, rx)).await??
            }
            None => {
                let options = MonitorOptions::new(front, worker_command)
                    .with_workers(workers)
                    // Ready once a worker has compiled the guest and
                    // connections are taken.
                    .with_on_serving({
                        let metrics = metrics.clone();
                        Arc::new(move || {
                            metrics.set_serving(Serving::Serving);
                            super::systemd::ready();
                            serving();
                        })
                    });
                tokio::spawn(keyferry_server::monitor::run(listener, options, rx)).await??
            }
        };
        info!(accepted = metrics.accepted_total(), "stopped");
        Ok(())
    })
}

/// The arguments of `keyferry worker` for this server's workers.
fn worker_args(args: &ServeArgs) -> anyhow::Result<Vec<std::ffi::OsString>> {
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
    Ok(a)
}

/// `serve --check`, as `nginx -t` and `haproxy -c`: loads everything the
/// server would (identities, client CA, ticket keys, the guest in a
/// confined worker-to-be) without listening, and reports every problem,
/// not only the first.
fn check_configuration(args: &ServeArgs) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    if args.plane.is_builtin_http()
        && let Some(other) = args.tls.alpn.iter().find(|p| *p != "http/1.1")
    {
        problems.push(format!(
            "--alpn {other}: the built-in HTTP responder speaks only http/1.1"
        ));
    }
    if args.listen.rsplit_once(':').is_none() {
        problems.push(format!("--listen {}: expected HOST:PORT", args.listen));
    }
    if let Some(backend) = &args.plane.forward
        && !backend
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    {
        problems.push(format!("--forward {backend}: expected HOST:PORT"));
    }
    if args.cert.len() != args.key.len() {
        problems.push(format!(
            "{} --cert and {} --key: give each certificate its key, in the same order",
            args.cert.len(),
            args.key.len()
        ));
    }
    let mut identities = Vec::new();
    let mut staples = Vec::new();
    for path in &args.ocsp {
        match OcspStaple::from_file(path) {
            Ok(staple) => staples.push(staple),
            Err(e) => problems.push(format!("--ocsp {}: {e}", path.display())),
        }
    }
    for (cert, key) in args.cert.iter().zip(&args.key) {
        match Identity::from_pem_files(cert, key) {
            Ok(identity) => identities.push(identity),
            Err(e) => problems.push(format!(
                "--cert {} --key {}: {e}",
                cert.display(),
                key.display()
            )),
        }
    }
    if let Err(e) = tls::attach_staples(&mut identities, &staples) {
        problems.push(format!("--ocsp: {e}"));
    }
    if !identities.is_empty()
        && let Err(e) = Identities::new(&identities)
    {
        problems.push(format!("the identities together: {e}"));
    }
    if let Some(path) = &args.client_ca
        && let Err(e) = tls::roots_from_pem_file(path)
    {
        problems.push(format!("--client-ca {}: {e}", path.display()));
    }
    for path in &args.client_crl {
        if let Err(e) = tls::crls_from_file(path) {
            problems.push(format!("--client-crl {}: {e}", path.display()));
        }
    }
    if let Some(path) = &args.ticket_keys
        && let Err(e) = keyferry_server::tickets::TicketKeys::from_file(path)
    {
        problems.push(format!("--ticket-keys {}: {e}", path.display()));
    }
    if let Some(spec) = &args.metrics
        && keyferry_server::scrape::metrics_address(spec).is_none()
    {
        problems.push(format!("--metrics {spec}: expected PORT or ADDR:PORT"));
    }
    let in_process = args.workers == Some(0);
    if args.shared_instances.is_some() && !in_process {
        problems.push("--shared-instances needs --workers 0".to_string());
    }
    if in_process {
        let loaded = GuestEngine::new(
            args.plane
                .sandbox
                .config()
                .with_pooling(pool_slots(args.max_connections)),
        )
        .map_err(anyhow::Error::from)
        .and_then(|engine| args.plane.component(&engine))
        .and_then(|component| Ok(component.instantiate()?));
        if let Err(e) = loaded {
            problems.push(format!("the guest: {e:#}"));
        }
    } else {
        match worker_args(args) {
            Ok(worker) => {
                if let Err(e) = check_guest(&worker) {
                    problems.push(format!("the guest, in a worker: {e:#}"));
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if problems.is_empty() {
        println!("keyferry: the configuration is good");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("keyferry: {problem}");
    }
    bail!("{} problem(s) found", problems.len())
}

/// Runs this binary as a worker with `--check` (the workers' own
/// arguments) and waits for its verdict, up to two minutes (compiling a
/// large component takes a while); its error, if any, is the reason.
fn check_guest(worker_args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::io::Read;
    let program = std::env::current_exe().context("finding this binary to check the guest")?;
    let mut child = std::process::Command::new(program)
        .args(worker_args)
        .arg("--check")
        .env("KEYFERRY_LOG", "error")
        .env("KEYFERRY_LOG_FORMAT", "text")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting a worker to check the guest")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("checking the guest took over two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        return Ok(());
    }
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    // The worker's own error and its causes, one line.
    let reason: Vec<&str> = said
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches("keyferry: error: ")
                .trim_start_matches("caused by: ")
        })
        .filter(|l| !l.is_empty())
        .collect();
    bail!("{}", reason.join(": "))
}

/// Says at start what protects the key from the workers and what does not
/// (DESIGN section 6; the README's threat model has the table).
pub(crate) fn log_key_protection(user: &str) {
    let root = rustix::process::geteuid().is_root();
    let yama = keyferry_server::confine::yama_ptrace_scope();
    let landlock = keyferry_server::confine::landlock_abi();
    info!(
        dumpable = keyferry_server::confine::is_dumpable(),
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

/// One worker per core, as nginx's `worker_processes auto`. Weighed
/// against one per core but one (the handshake process needs a core under
/// load too) on this 2-core machine (README, Performance): one fewer
/// served 23% more keep-alive requests of the built-in responder, but 25%
/// fewer of a wasi:http component, whose guest work is what plugin
/// platforms run, and new connections came as fast either way.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--acme-*`, with the state directory made (mode 0700).
fn acme_options(args: &ServeArgs) -> anyhow::Result<Option<super::acme::AcmeOptions>> {
    let Some(directory) = &args.acme_directory else {
        return Ok(None);
    };
    let state = args.acme_state.clone().unwrap_or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .map_or_else(|| PathBuf::from("keyferry-acme"), PathBuf::from)
    });
    std::fs::create_dir_all(&state).with_context(|| format!("--acme-state {}", state.display()))?;
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("--acme-state {}", state.display()))?;
    Ok(Some(super::acme::AcmeOptions {
        directory: directory.clone(),
        domains: args.acme_domain.clone(),
        email: args.acme_email.clone(),
        state,
        ca: args.acme_ca.clone(),
        renew_before: Duration::from_secs(args.acme_renew_days.saturating_mul(86400)),
    }))
}

/// Reads each certificate and key pair, and staples each OCSP response to
/// the certificate it is about.
pub(crate) fn load_identities(
    files: &[(PathBuf, PathBuf)],
    ocsp: &[PathBuf],
) -> keyferry::Result<Vec<Identity>> {
    let mut identities = files
        .iter()
        .map(|(cert, key)| Identity::from_pem_files(cert, key))
        .collect::<keyferry::Result<Vec<_>>>()?;
    let staples = ocsp
        .iter()
        .map(|path| OcspStaple::from_file(path))
        .collect::<keyferry::Result<Vec<_>>>()?;
    tls::attach_staples(&mut identities, &staples)?;
    Ok(identities)
}

/// Client verification's files: `--client-ca` and `--client-crl`, which
/// SIGHUP re-reads too.
pub(crate) struct ClientFiles {
    pub(crate) ca: PathBuf,
    pub(crate) crls: Vec<PathBuf>,
    pub(crate) auth: ClientAuth,
}

/// Client verification's trust anchors and revocation lists, read.
pub(crate) type ClientVerification = (
    rustls::RootCertStore,
    Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
);

impl ClientFiles {
    pub(crate) fn load(&self) -> keyferry::Result<ClientVerification> {
        let roots = tls::roots_from_pem_file(&self.ca)?;
        let mut crls = Vec::new();
        for path in &self.crls {
            crls.extend(tls::crls_from_file(path)?);
        }
        Ok((roots, crls))
    }

    /// `options` with client verification, if there is any.
    pub(crate) fn apply(
        options: TlsOptions,
        verification: Option<ClientVerification>,
        auth: ClientAuth,
    ) -> TlsOptions {
        let Some((roots, crls)) = verification else {
            return options;
        };
        let options = options.with_client_crls(crls);
        match auth {
            ClientAuth::Required => options.with_client_verification(roots),
            ClientAuth::Optional => options.with_optional_client_verification(roots),
        }
    }
}

/// What SIGHUP re-reads, as nginx's `-s reload` does: new handshakes use
/// the new identities and ticket keys, connections already made carry on,
/// and anything that fails to load leaves what is in service in place.
/// With workers, only this (the handshake) process holds them.
pub(crate) struct Reload {
    pub(crate) identities: Arc<Identities>,
    pub(crate) files: Vec<(PathBuf, PathBuf)>,
    pub(crate) ocsp: Vec<PathBuf>,
    pub(crate) ticket_keys: Option<(Arc<keyferry_server::tickets::TicketKeys>, PathBuf)>,
    pub(crate) client: Option<ClientFiles>,
    /// The TLS options without client verification, which a reload of
    /// the client's files rebuilds the config from.
    pub(crate) options: TlsOptions,
    /// The config in service, replaced when the client's files change.
    pub(crate) tls: Arc<ServerTls>,
    /// Where each reload's outcome and the certificates in service show.
    pub(crate) metrics: Arc<Metrics>,
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

    pub(crate) fn reload(&self) {
        super::systemd::reloading();
        self.reload_files();
        super::systemd::ready();
    }

    fn reload_files(&self) {
        if self.files.is_empty() && self.ticket_keys.is_none() && self.client.is_none() {
            info!("SIGHUP: nothing to reload (the certificate was made at start)");
            return;
        }
        // Load everything first, then swap: all or nothing.
        let swapped = self.load().and_then(|(identities, tickets, client)| {
            // Built before anything is swapped, so a config rustls refuses
            // leaves everything in place.
            let config = match (&self.client, client) {
                (Some(files), Some(verification)) => Some(
                    ClientFiles::apply(self.options.clone(), Some(verification), files.auth)
                        .server_config_for(self.identities.clone())?,
                ),
                _ => None,
            };
            if let Some(identities) = identities {
                self.identities.replace(&identities)?;
            }
            if let (Some((keys, _)), Some(new)) = (&self.ticket_keys, tickets) {
                keys.replace(new);
            }
            if let Some(config) = config {
                self.tls.replace(Arc::new(config));
            }
            Ok(())
        });
        self.metrics.config_reloaded(swapped.is_ok());
        match swapped {
            Ok(()) => {
                self.metrics.certificates(&self.identities.expiries());
                info!(fingerprint = %self.identities.fingerprints().join(","), "SIGHUP: reloaded");
            }
            Err(e) => warn!(
                error = %e,
                "SIGHUP: reload failed; still serving the previous configuration"
            ),
        }
    }

    /// Reads every file this reload covers.
    pub(crate) fn load(&self) -> keyferry::Result<Loaded> {
        let identities = if self.files.is_empty() {
            None
        } else {
            Some(load_identities(&self.files, &self.ocsp)?)
        };
        let client = self.client.as_ref().map(ClientFiles::load).transpose()?;
        let tickets = self
            .ticket_keys
            .as_ref()
            .map(|(_, path)| keyferry_server::tickets::TicketKeys::from_file(path))
            .transpose()?;
        Ok((identities, tickets, client))
    }
}

/// What a reload read: identities, ticket keys and client verification,
/// each `None` when not configured.
pub(crate) type Loaded = (
    Option<Vec<Identity>>,
    Option<keyferry_server::tickets::TicketKeys>,
    Option<ClientVerification>,
);

/// Binds the first address `listen` resolves to that binds, with
/// SO_REUSEADDR (as tokio does) and, if asked, SO_REUSEPORT.
pub(crate) async fn bind(
    listen: &str,
    reuse_port: bool,
) -> std::io::Result<tokio::net::TcpListener> {
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
pub(crate) fn lookup_user(name: &str) -> anyhow::Result<Option<(u32, u32)>> {
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
