//! Running `keyferry` and the peers as processes, for the end-to-end tests
//! (tests/end_to_end).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `keyferry` command as this package builds it for its end-to-end
/// tests (`src/bin/keyferry-under-test.rs`, which is `keyferry_cli::main`):
/// cargo puts it beside the test executable's `deps` folder.
pub fn keyferry() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    exe.parent()
        .and_then(std::path::Path::parent)
        .expect("tests run from target/<profile>/deps")
        .join(format!(
            "keyferry-under-test{}",
            std::env::consts::EXE_SUFFIX
        ))
}

/// How long to wait for a process to say something before failing the
/// test (a bound against hangs, not a performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Output of a child collected by a background thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn spawn(mut from: impl Read + Send + 'static) -> Self {
        let captured = Captured::default();
        let sink = captured.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        captured
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle`. For other programs' output
    /// (openssl, curl, systemd's tools) and keyferry's text log format;
    /// keyferry's own events are read with [`Captured::events`] and the
    /// `wait_for_event*` functions, by their fields, not their wording.
    pub fn wait_for(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {needle:?}; output so far:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Each complete line that is a JSON object, in order: keyferry's log
    /// events with `KEYFERRY_LOG_FORMAT=json` (the default of [`Server`]).
    /// Other lines are skipped: another program writing to the same
    /// stderr (systemd-socket-activate), or a last line still half written,
    /// which is read whole on a later call.
    pub fn events(&self) -> Vec<Value> {
        let text = self.text();
        let done = text.rfind('\n').map_or("", |end| &text[..end]);
        done.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Waits until `n` events match `matches`, and returns every event that
    /// matches (at least `n`, in log order). A wait on the condition, as
    /// [`Captured::wait_for`] is, never a sleep; on timeout the test fails
    /// with the whole log.
    #[track_caller]
    pub fn wait_for_events(&self, n: usize, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let found: Vec<Value> = self.events().into_iter().filter(|e| matches(e)).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {n} matching log events ({} so far); log:\n{}",
                found.len(),
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first event that matches `matches`, and returns it.
    #[track_caller]
    pub fn wait_for_event(&self, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_events(1, matches).remove(0)
    }

    /// Waits for the first event with all of `fields`, as [`has_fields`]
    /// compares them:
    /// `wait_for_fields(&[("message", "connection"), ("ending", "close_notify")])`.
    #[track_caller]
    pub fn wait_for_fields(&self, fields: &[(&str, &str)]) -> Value {
        let start = Instant::now();
        loop {
            if let Some(found) = self.events().into_iter().find(|e| has_fields(e, fields)) {
                return found;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for a log event with {fields:?}; log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The message of the event a guest call that computed for long logs once.
pub const LONG_GUEST_CALL: &str = "a guest call ran long; guest calls now leave their tokio worker \
    to the other connections (block_in_place)";

/// Whether `e` is a per-connection event that ended in a guest failure.
pub fn guest_failure(e: &Value) -> bool {
    has_fields(e, &[("message", "connection"), ("ending", "guest_failure")])
}

/// Whether event `e` has every one of `fields`. A string field compares as
/// the string; any other by its JSON text, so numbers and booleans are
/// written as JSON writes them: `("resumed", "true")`, `("worker", "0")`.
/// A field the event lacks never matches (`detail` is left out when there
/// is none).
pub fn has_fields(e: &Value, fields: &[(&str, &str)]) -> bool {
    fields.iter().all(|(k, v)| match e.get(*k) {
        Some(Value::String(s)) => s == v,
        Some(other) => serde_json::from_str::<Value>(v).is_ok_and(|want| *other == want),
        None => false,
    })
}

/// An event's `message` ("" if it has none): the fixed words of the event
/// (`connection`, `worker ready`), which tests match whole.
pub fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap_or("")
}

/// Whether the event is a worker's, relayed by the handshake process: the
/// relay sets `relayed: true` (with `worker` and `pid`) on every worker
/// object, and the handshake process's own events never carry `relayed`,
/// so a worker cannot pass an event off as the handshake process's.
pub fn relayed(e: &Value) -> bool {
    e["relayed"] == true
}

/// A running `keyferry serve`. It logs JSON (`KEYFERRY_LOG_FORMAT=json`)
/// unless a test asks for text, so tests read `stderr` by its events'
/// fields ([`Captured::events`]) rather than by the log's wording.
pub struct Server {
    pub child: Child,
    pub port: u16,
    address: String,
    pub stderr: Captured,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_listening("127.0.0.1:0", args)
    }

    /// `keyferry serve --listen ADDRESS` with `args`.
    pub fn start_listening(address: &str, args: &[&str]) -> Server {
        Self::start_with_env(address, args, &[])
    }

    /// The same, with extra environment variables.
    pub fn start_with_env(address: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_command(Command::new(keyferry()), address, args, env)
    }

    /// `keyferry serve` as an unprivileged user would start it: as uid and
    /// gid 65534 (through setpriv) when the tests run as root, as the
    /// tests' own user otherwise.
    pub fn start_unprivileged(args: &[&str]) -> Server {
        let command = if rustix::process::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args(UNPRIVILEGED).arg(keyferry());
            c
        } else {
            Command::new(keyferry())
        };
        Self::start_command(command, "127.0.0.1:0", args, &[])
    }

    fn start_command(
        mut command: Command,
        address: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = command
            .arg("serve")
            .args(["--listen", address])
            .args(args)
            .env("KEYFERRY_LOG", "info")
            // JSON, so tests read the log by its fields (`Captured::events`);
            // set before `env`, which may ask for text instead.
            .env("KEYFERRY_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keyferry serve");
        let stderr = Captured::spawn(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the start-up line");
        let address = line
            .split("https://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .filter(|a| {
                a.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no address in start-up line {line:?}; stderr:\n{}",
                    stderr.text()
                )
            })
            .to_string();
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("checked above");
        assert!(line.contains("certificate SHA-256"), "{line}");
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        Server {
            child,
            port,
            address,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    /// The address the server listens on, as it printed it.
    pub fn addr(&self) -> String {
        self.address.clone()
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Ctrl-C, then the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        self.signal("INT")
    }

    /// Sends `signal` (`INT`, `TERM`, ...), then waits for the exit status.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "serve did not stop after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// setpriv's arguments that make a command run as uid and gid 65534 with
/// no supplementary groups (for tests that run as root).
pub const UNPRIVILEGED: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// A temporary directory for PEM files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keyferry-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for "localhost" as PEM files.
pub fn pem_identity(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A rustls client over TCP that accepts any certificate (test servers
/// are self-signed), for protocol-level checks curl cannot make.
pub fn rustls_client(addr: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    rustls_client_named(addr, Some("localhost"))
}

/// The same, sending `sni` as the server name (or no SNI at all).
pub fn rustls_client_named(
    addr: &str,
    sni: Option<&str>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut config = keyferry::tls::TlsOptions::default()
        .client_config(keyferry::tls::ServerVerification::DangerousNone)
        .unwrap();
    config.enable_sni = sni.is_some();
    // Without SNI the name only picks the session cache entry.
    let name = sni.unwrap_or("no-sni.invalid").to_string();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from(name).unwrap(),
    )
    .unwrap();
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Reads exactly `n` bytes (or fails the test).
pub fn read_exact(stream: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read echo");
    buf
}

/// Writes then flushes.
pub fn write_all(stream: &mut impl Write, data: &[u8]) {
    stream.write_all(data).expect("write");
    stream.flush().expect("flush");
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Walks every readable mapping of process `pid` (through /proc/PID/mem,
/// which root may read for any process) in 8 MiB chunks that overlap by
/// `overlap` bytes, so nothing that long is split between two chunks.
/// `visit` gets each chunk and its address, and stops the walk with
/// `ControlFlow::Break`.
fn scan_memory(
    pid: u32,
    overlap: usize,
    mut visit: impl FnMut(u64, &[u8]) -> std::ops::ControlFlow<()>,
) {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let chunk = 8 << 20;
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(chunk + overlap);
            let mut buf = vec![0u8; len];
            let Ok(n) = mem.read_at(&mut buf, at) else {
                break;
            };
            if n == 0 {
                break;
            }
            if visit(at, &buf[..n]).is_break() {
                return;
            }
            at += chunk as u64;
        }
    }
}

/// Whether any readable mapping of process `pid` holds any of `needles`
/// (read through /proc/PID/mem, which root may do for any process).
pub fn memory_contains(pid: u32, needles: &[&[u8]]) -> bool {
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut found = false;
    scan_memory(pid, longest, |_, buf| {
        found = needles
            .iter()
            .any(|needle| buf.windows(needle.len()).any(|w| w == *needle));
        if found {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    found
}

/// Where in process `pid`'s readable memory `needle` occurs (through
/// /proc/PID/mem, as root).
pub fn memory_find(pid: u32, needle: &[u8]) -> Vec<u64> {
    let mut found = Vec::new();
    scan_memory(pid, needle.len(), |at, buf| {
        let mut from = 0;
        while let Some(i) = buf[from..].iter().position(|b| *b == needle[0]) {
            let i = from + i;
            if buf[i..].starts_with(needle) {
                found.push(at + i as u64);
            }
            from = i + 1;
        }
        std::ops::ControlFlow::Continue(())
    });
    found.sort();
    found.dedup();
    found
}

/// The DER of the private key in a PEM file, and the raw 32-byte scalar
/// inside it (an ECDSA P-256 key as rcgen makes them).
pub fn private_key_bytes(pem: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let der = PrivateKeyDer::from_pem_file(pem).expect("a PEM private key");
    let der = der.secret_der().to_vec();
    // ECPrivateKey: INTEGER 1, OCTET STRING (32) the scalar.
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an EC private key");
    let scalar = der[at + 5..at + 37].to_vec();
    (der, scalar)
}

impl Server {
    /// The `--metrics` listener's address, as the server logged it: the
    /// `address` field of its "metrics at http://ADDRESS/metrics" event.
    pub fn metrics_addr(&self) -> String {
        let event = self
            .stderr
            .wait_for_event(|e| message(e).starts_with("metrics at http://") && !relayed(e));
        event["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in the metrics event: {event}"))
            .to_string()
    }
}

/// One sample of a scrape: its name, labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Scrapes `http://ADDR/metrics` over plain HTTP/1.1 and parses the body
/// with the Prometheus project's own OpenMetrics parser (python's
/// `prometheus_client`), which refuses anything malformed. Fails the test
/// on a non-200 answer, a wrong content type or text the parser refuses.
pub fn scrape(addr: &str) -> Vec<Sample> {
    let mut sock = TcpStream::connect(addr).expect("connect to the metrics listener");
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(sock, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    sock.read_to_string(&mut response).expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let parser = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        print(json.dumps([[s.name, s.labels, s.value]\n\
            for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))\n";
    let mut python = Command::new("python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus_client: pip install prometheus-client)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    samples
        .into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels` (0
/// if there is none: a labelled counter that never moved is not listed).
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// A helper process (a backend, a CA), killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on (bound, then closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < PATIENCE, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}
