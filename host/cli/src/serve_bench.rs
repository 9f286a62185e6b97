//! `keyferry bench-serve`: `keyferry serve` against a plain rustls server
//! and nginx on loopback, with the same response body and the same suite,
//! side by side in one run. wrk drives the load; each server runs as its own
//! process so its memory per connection can be read from /proc.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The body every server sends, sized like keyferry's HTTP report.
pub const BODY: &str = "keyferry benchmark body: the same bytes from every server under test, so the comparison \
is the TLS and data-plane work and nothing else. Lorem ipsum dolor sit amet, consectetur adipiscing elit, \
sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.\n";

/// How long and how hard `bench-serve` drives each server.
pub struct Options {
    /// Length of each wrk run.
    pub duration: Duration,
    /// Connections wrk keeps open.
    pub connections: u32,
    /// Idle connections opened to measure memory per connection.
    pub idle_connections: u32,
    /// Where to write bench-serve.svg and bench-serve.json.
    pub out: PathBuf,
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
}

/// One server against another, from the same run.
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
    /// Response body bytes.
    pub body_bytes: usize,
    /// Per server, in the table's order.
    pub rows: Vec<Row>,
    /// keyferry's modes against each other and against the baselines.
    pub ratios: Vec<Ratio>,
}

struct Target {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Target {
    /// SIGTERM first, so a master process (nginx) takes its workers down
    /// with it (SIGKILL would orphan them); SIGKILL if it lingers.
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("server on port {port} did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Memory of one process, KiB: (RSS, PSS) from `smaps_rollup`.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("no {name} in smaps_rollup"))?
            .parse()
            .map_err(Into::into)
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// (RSS, PSS) of a process and its children (nginx and keyferry run
/// workers), KiB. PSS is what the machine pays: RSS counts a page once per
/// mapping, and a wasmtime instance maps its component's memory image
/// copy-on-write, so RSS counts the image's shared pages again for every
/// instance.
fn tree_memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut rss, mut pss) = memory_kib(pid)?;
    // Each thread lists the children it started (keyferry's workers are
    // started from runtime threads), so read them all.
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            let (r, p) = tree_memory_kib(child).unwrap_or((0, 0));
            rss += r;
            pss += p;
        }
    }
    Ok((rss, pss))
}

fn wrk(port: u16, options: &Options, close: bool) -> anyhow::Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "1",
        "-c",
        &options.connections.to_string(),
        "-d",
        &format!("{}s", options.duration.as_secs()),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("wrk printed no Requests/sec")?
        .trim()
        .parse()?;
    if text.contains("Non-2xx") || text.contains("Socket errors") && !close {
        eprintln!("wrk reported errors against port {port}:\n{text}");
    }
    Ok(rate)
}

/// Opens `n` TLS connections that each make one request and then stay idle,
/// and returns how much the server's (RSS, PSS) grew per connection.
fn memory_per_connection(target: &Target, n: u32) -> anyhow::Result<(f64, f64)> {
    let options = keyferry::tls::TlsOptions::default();
    let config = Arc::new(options.client_config(keyferry::tls::ServerVerification::DangerousNone)?);
    let before = tree_memory_kib(target.child.id())?;
    let mut held = Vec::new();
    for _ in 0..n {
        let conn = rustls::ClientConnection::new(config.clone(), "localhost".try_into()?)?;
        let sock = std::net::TcpStream::connect(("127.0.0.1", target.port))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut buf = [0u8; 4096];
        let _ = tls.read(&mut buf)?;
        held.push(tls);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = tree_memory_kib(target.child.id())?;
    drop(held);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / f64::from(n);
    Ok((per(after.0, before.0), per(after.1, before.1)))
}

fn start_keyferry(
    exe: &Path,
    cert: &Path,
    key: &Path,
    extra: &[&str],
    name: &'static str,
) -> anyhow::Result<Target> {
    let port = free_port()?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--tls13"])
        .args(extra)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .env("KEYFERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    wait_listening(port)?;
    if !extra.contains(&"0") {
        // Workers announce their instances shortly after the listener is up.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Target { name, child, port })
}

fn start_baseline(exe: &Path, cert: &Path, key: &Path) -> anyhow::Result<Target> {
    let port = free_port()?;
    let child = Command::new(exe)
        .args([
            "bench-baseline-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    Ok(Target {
        name: "plain rustls + tokio server",
        child,
        port,
    })
}

fn start_nginx(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<Target> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; \
             uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;\n\
             keepalive_requests 1000000;\n\
             location / {{ default_type text/plain; return 200 '{body}'; }} }} }}\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
            body = BODY.trim_end(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run nginx (apt-get install nginx-light)")?;
    wait_listening(port)?;
    Ok(Target {
        name: "nginx 1.22 (OpenSSL)",
        child,
        port,
    })
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
    // One worker as well as the default (one per core): wrk runs on the
    // same cores, so the default has more busy processes than cores here.
    let mut targets = vec![
        start_keyferry(&exe, &cert, &key, &[], "keyferry serve (workers, default)")?,
        start_keyferry(
            &exe,
            &cert,
            &key,
            &["--workers", "1"],
            "keyferry serve --workers 1",
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
        start_baseline(&exe, &cert, &key)?,
    ];
    match start_nginx(&dir, &cert, &key) {
        Ok(t) => targets.push(t),
        Err(e) => eprintln!("skipping nginx: {e:#}"),
    }
    let progress = crate::charts::progress(3 * targets.len() as u64);
    let mut rows = Vec::new();
    for t in &targets {
        progress.set_message(format!("{}: keep-alive requests", t.name));
        let keepalive = wrk(t.port, &options, false);
        progress.inc(1);
        progress.set_message(format!("{}: new connections", t.name));
        let handshakes = wrk(t.port, &options, true);
        progress.inc(1);
        progress.set_message(format!("{}: memory per idle connection", t.name));
        let memory = memory_per_connection(t, options.idle_connections);
        progress.inc(1);
        let (rss, pss) = memory?;
        rows.push(Row {
            server: t.name,
            requests_per_second: keepalive?,
            handshakes_per_second: handshakes?,
            kib_per_connection: pss,
            rss_kib_per_connection: rss,
        });
    }
    progress.finish_and_clear();
    let ratio = |a: usize, b: usize| Ratio {
        server: rows[a].server,
        against: rows[b].server,
        requests: rows[a].requests_per_second / rows[b].requests_per_second.max(1e-9),
        handshakes: rows[a].handshakes_per_second / rows[b].handshakes_per_second.max(1e-9),
    };
    // The cost of the process boundary, then each keyferry mode with an
    // instance per connection against the plain rustls server and nginx.
    let mut ratios = vec![ratio(0, 2), ratio(1, 2)];
    for other in KEYFERRY_ROWS..rows.len() {
        ratios.push(ratio(0, other));
        ratios.push(ratio(1, other));
        ratios.push(ratio(2, other));
    }
    let report = Report {
        seconds: options.duration.as_secs(),
        connections: options.connections,
        idle_connections: options.idle_connections,
        body_bytes: BODY.len(),
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
            "serve throughput on loopback, TLS 1.3 ChaCha20-Poly1305, wrk -t1 -c{} -d{}s, {}-byte body",
            self.connections, self.seconds, self.body_bytes
        )?;
        writeln!(
            f,
            "{:<42} {:>14} {:>16} {:>12} {:>12}",
            "server", "requests/s", "handshakes/s", "KiB/conn", "(RSS)"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<42} {:>14.0} {:>16.0} {:>12.1} {:>12.1}",
                r.server,
                r.requests_per_second,
                r.handshakes_per_second,
                r.kib_per_connection,
                r.rss_kib_per_connection
            )?;
        }
        writeln!(
            f,
            "KiB/conn: PSS growth per idle connection (server and children); RSS counts copy-on-write pages once per mapping"
        )?;
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
    /// Requests/s, handshakes/s and memory per connection of every server,
    /// one panel each.
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
                    "memory (PSS) per idle connection (lower is better)",
                    "KiB",
                    |r| r.kib_per_connection,
                ),
            ],
        )
    }
}

/// The baseline: rustls and tokio with the same response, no sandbox.
pub fn baseline_server(
    listen: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = keyferry::tls::Identity::from_pem_files(cert, key)?;
    let options = keyferry::tls::TlsOptions::default().with_versions(&[&rustls::version::TLS13]);
    let config = Arc::new(options.server_config(&identity)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (sock, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let mut buf = vec![0u8; 16384];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = tls.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let close = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase().contains("connection: close");
                        pending.drain(..end + 4);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{BODY}",
                            BODY.len(),
                            if close { "close" } else { "keep-alive" }
                        );
                        if tls.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        if close {
                            let _ = tls.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_draws_and_serializes_every_server() {
        let row = |server, k, h, m| Row {
            server,
            requests_per_second: k,
            handshakes_per_second: h,
            kib_per_connection: m,
            rss_kib_per_connection: m + 1.0,
        };
        let report = Report {
            seconds: 5,
            connections: 32,
            idle_connections: 200,
            body_bytes: BODY.len(),
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
