//! Clear errors for the operator's mistakes.

use std::process::Command;
use std::time::{Duration, Instant};

use keyferry_tests::process::{
    PATIENCE, Server, children, has_fields, keyferry, message, pem_identity, relayed, temp_dir,
};

fn serve_fails(args: &[&str]) -> String {
    let out = Command::new(keyferry())
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let server = Server::start(&[]);
    let err = serve_fails(&["--listen", &server.addr()]);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn unreadable_and_mismatched_pem_files_are_clear_errors() {
    let dir = temp_dir("operator");
    let missing = dir.join("missing.pem");
    let err = serve_fails(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        missing.to_str().unwrap(),
        "--key",
        missing.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cannot read") && err.contains("missing.pem"),
        "{err}"
    );
    assert!(
        err.contains("No such file or directory"),
        "the OS's reason: {err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "each cause once: {err}"
    );

    let (cert, _) = pem_identity("mismatch-a");
    let (_, other_key) = pem_identity("mismatch-b");
    let err = serve_fails(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert!(err.contains("does not match the certificate"), "{err}");
    // Neither the PEM armour nor any line of the key's base64 appears.
    let key_pem = std::fs::read_to_string(&other_key).unwrap();
    for line in key_pem.lines().filter(|l| !l.is_empty()) {
        assert!(!err.contains(line), "key material in an error: {err}");
    }
}

#[test]
fn help_and_self_check_work() {
    let out = Command::new(keyferry())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--listen") && help.contains("curl -k https://127.0.0.1:8443/"),
        "{help}"
    );
    let out = Command::new(keyferry()).arg("self-check").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok tls 1.3 records (RFC 8448 section 3)")
    );
}

#[test]
fn alpn_the_responder_cannot_speak_is_refused() {
    let err = serve_fails(&["--listen", "127.0.0.1:0", "--alpn", "h2"]);
    assert!(
        err.contains("--alpn h2") && err.contains("only http/1.1"),
        "{err}"
    );
}

#[test]
fn listen_takes_a_host_name() {
    let server = Server::start_listening("localhost:0", &["--echo"]);
    let mut c = keyferry_tests::process::rustls_client(&server.addr());
    keyferry_tests::process::write_all(&mut c, b"by name");
    assert_eq!(keyferry_tests::process::read_exact(&mut c, 7), b"by name");
}

/// The JSON log is one object per line, the workers' events included: the
/// handshake process relays each worker object whole, with the worker's own
/// fields at the top level (so `ending` is read the same way from either
/// process) and `worker`, `pid` and `relayed: true` set by the relay. Its
/// own events never carry `relayed`, so a worker's cannot pass for them.
#[test]
fn json_logs_relay_worker_events_as_one_object_tagged_by_the_relay() {
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &["--workers", "1"],
        &[("KEYFERRY_LOG_FORMAT", "json")],
    );
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "30", &server.url("/json")])
        .output()
        .expect("run curl");
    assert!(out.status.success());
    let connection = server
        .stderr
        .wait_for_fields(&[("message", "connection"), ("ending", "close_notify")]);
    // Every line is a JSON object, the relayed ones too (the last line may
    // still be half written: only whole lines are read).
    let log = server.stderr.text();
    let whole = log.rfind('\n').map_or("", |end| &log[..end]);
    for line in whole.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{log}"));
        assert!(parsed.is_object(), "{line:?}");
    }
    for field in [
        "peer",
        "suite",
        "bytes_in",
        "bytes_out",
        "handoff_us",
        "level",
        "timestamp",
        "target",
    ] {
        assert!(
            connection.get(field).is_some(),
            "{field} missing: {connection}"
        );
    }
    assert_eq!(connection["suite"], "TLS_CHACHA20_POLY1305_SHA256");
    assert!(connection["bytes_in"].is_u64(), "{connection}");
    // The worker's own target, not the relay's.
    assert_eq!(
        connection["target"], "keyferry_server::transport",
        "{connection}"
    );
    // Tagged by the relay: the worker's index, and the pid of one of this
    // server's children.
    assert!(relayed(&connection), "{connection}");
    assert_eq!(connection["worker"].as_u64(), Some(0), "{connection}");
    let pid = connection["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no numeric pid: {connection}"));
    let workers = children(server.child.id());
    assert!(
        workers.contains(&pid),
        "pid {pid} is not a worker of this server ({workers:?}): {connection}"
    );
    // The handshake process's own events carry no `relayed` at all, and
    // every event that does is tagged whole.
    let events = server.stderr.events();
    for e in &events {
        if let Some(v) = e.get("relayed") {
            assert!(
                *v == true && e["worker"].is_u64() && e["pid"].is_u64(),
                "a relayed event not tagged by the relay: {e}"
            );
        }
    }
    for own in ["listening", "worker started", "worker ready"] {
        assert!(
            events
                .iter()
                .any(|e| message(e) == own && e.get("relayed").is_none()),
            "no {own:?} event of the handshake process itself in {log}"
        );
    }
}

/// The text log, as operators read it: a worker's line is relayed as a
/// line of the handshake process ending with the worker's index and pid.
#[test]
fn text_logs_tag_each_worker_line_with_its_worker_and_pid() {
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &["--workers", "1"],
        &[("KEYFERRY_LOG_FORMAT", "text")],
    );
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "30", &server.url("/text")])
        .output()
        .expect("run curl");
    assert!(out.status.success());
    // A whole line: the relay's tags come after the worker's fields.
    let start = std::time::Instant::now();
    let line = loop {
        let log = server.stderr.text();
        if let Some(line) = log
            .split_inclusive('\n')
            .find(|l| l.ends_with('\n') && l.contains("ending=close_notify"))
        {
            break line.trim_end().to_string();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no per-connection line; log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!line.starts_with('{'), "text, not JSON: {line}");
    assert!(line.contains("keyferry_server::relay"), "{line}");
    assert!(line.contains(" worker=0 pid="), "{line}");
    let pid: u32 = line
        .rsplit_once(" pid=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"));
    let workers = children(server.child.id());
    assert!(workers.contains(&pid), "{pid} not in {workers:?}: {line}");
}

/// `KEYFERRY_PERF_MAP=1` names the guest's compiled functions for `perf`
/// in each worker's `/tmp/perf-PID.map`, with the worker still fully
/// confined: the map is the one file it may write, and it still cannot
/// open a private key.
#[test]
fn a_confined_worker_writes_its_perf_map_when_asked() {
    let maps = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir("/tmp")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("perf-") && n.ends_with(".map"))
            })
            .collect()
    };
    let before = maps();
    let (cert, key) = pem_identity("perf-map");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &["--workers", "1", "--cert", cert, "--key", key],
        &[("KEYFERRY_PERF_MAP", "1")],
    );
    let confined = server
        .stderr
        .wait_for_event(|e| relayed(e) && message(e) == "worker confined");
    assert!(
        has_fields(&confined, &[("landlock", "full"), ("seccomp", "true")])
            || has_fields(&confined, &[("landlock", "partial"), ("seccomp", "true")]),
        "{confined}"
    );
    let pid = confined["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {confined}"));
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "30", &server.url("/")])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{out:?}");
    let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    // This run's maps (the serving worker's, and the `--check` worker's
    // that `serve` starts first) are not left in /tmp.
    for made in maps().difference(&before) {
        let _ = std::fs::remove_file(made);
    }
    // Each line is `ADDRESS SIZE NAME`, one per compiled function.
    let functions = text
        .lines()
        .filter(|l| l.split_whitespace().count() >= 3)
        .count();
    assert!(
        functions > 10,
        "{} holds {functions} functions:\n{text}",
        map.display()
    );
    assert!(
        text.contains("keyferry"),
        "no guest function names in {}",
        map.display()
    );
    // Still no file but the map: the private key stays out of reach
    // (the worker checks this itself at start and would have exited).
    let workers = children(server.child.id());
    assert!(workers.contains(&(pid as u32)), "{pid} not in {workers:?}");
}

/// With JSON logs, a fatal error is a JSON line too, and a format that is
/// neither text nor json is refused rather than silently ignored.
#[test]
fn fatal_errors_follow_the_log_format_and_unknown_formats_are_refused() {
    let out = Command::new(keyferry())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--guest",
            "/nonexistent/guest.wasm",
        ])
        .env("KEYFERRY_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fatal = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["message"] == "fatal")
        .unwrap_or_else(|| panic!("no fatal line: {stderr}"));
    assert_eq!(fatal["level"], "ERROR");
    assert!(
        fatal["causes"]
            .as_str()
            .unwrap()
            .contains("No such file or directory"),
        "{fatal}"
    );
    let out = Command::new(keyferry())
        .arg("describe")
        .env("KEYFERRY_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("KEYFERRY_LOG_FORMAT=yaml: expected text or json")
    );
}

/// `serve --check` loads everything and reports every problem, as
/// `nginx -t` does, without listening.
#[test]
fn check_reports_every_problem_and_passes_a_good_configuration() {
    let (cert, key) = pem_identity("check");
    let dir = temp_dir("check");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let not_wasm = dir.join("guest.wasm");
    std::fs::write(&not_wasm, "not wasm").unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let err = serve_fails(&[
        "--check",
        "--cert",
        cert,
        "--key",
        cert,
        "--client-ca",
        garbage.to_str().unwrap(),
        "--ticket-keys",
        "/nonexistent/ticket.key",
        "--guest",
        not_wasm.to_str().unwrap(),
    ]);
    for problem in [
        "--cert",
        "--client-ca",
        "no certificate in",
        "--ticket-keys /nonexistent/ticket.key",
        "the guest, in a worker",
        "4 problem(s) found",
    ] {
        assert!(err.contains(problem), "{problem}: {err}");
    }
    let out = Command::new(keyferry())
        .args([
            "serve",
            "--check",
            "--cert",
            cert,
            "--key",
            key,
            "--listen",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("the configuration is good"));
}

/// `--log-level` overrides KEYFERRY_LOG, in serve and in its workers.
#[test]
fn log_level_reaches_the_workers() {
    let server = Server::start(&["--log-level", "debug", "--workers", "1", "--echo"]);
    // A worker's own debug line, relayed by the handshake process at the
    // worker's level, and tagged with the worker.
    let scan = server
        .stderr
        .wait_for_event(|e| message(e) == "pagemap scan for instance reset" && relayed(e));
    assert_eq!(scan["worker"].as_u64(), Some(0), "{scan}");
    assert_eq!(scan["level"], "DEBUG", "{scan}");
}

/// Without --cert the certificate made at start is written out (never its
/// key) for clients to pin, and the built-in responder advertises http/1.1
/// in ALPN.
#[test]
fn the_certificate_made_at_start_can_be_pinned() {
    let server = Server::start(&[]);
    let written = server.stderr.wait_for_event(|e| {
        message(e) == "self-signed certificate written for clients to pin (curl --cacert)"
            && !relayed(e)
    });
    let path = written["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no path: {written}"))
        .to_string();
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE KEY"));
    let out = Command::new("curl")
        .args(["-sv", "--cacert", &path, &server.url("/pinned")])
        .output()
        .unwrap();
    let (body, verbose) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{verbose}");
    assert!(body.contains("request: GET /pinned"), "{body}");
    assert!(
        verbose.contains("ALPN: server accepted http/1.1"),
        "{verbose}"
    );
}

/// A TCP health check (connect, close) is not a failed handshake worth an
/// info line each time; a peer that sends something and leaves still is.
#[test]
fn health_checks_are_not_logged_as_failed_handshakes() {
    let server = Server::start(&["--echo", "--workers", "0"]);
    for _ in 0..3 {
        drop(std::net::TcpStream::connect(server.addr()).unwrap());
    }
    let mut c = keyferry_tests::process::rustls_client(&server.addr());
    keyferry_tests::process::write_all(&mut c, b"after the checks");
    assert_eq!(
        keyferry_tests::process::read_exact(&mut c, 16),
        b"after the checks"
    );
    drop(c);
    server.stderr.wait_for_event(|e| message(e) == "connection");
    assert!(
        !server
            .stderr
            .events()
            .iter()
            .any(|e| message(e) == "handshake failed"),
        "{}",
        server.stderr.text()
    );
    // Bytes, then nothing: still a failed handshake, at info.
    let mut half = std::net::TcpStream::connect(server.addr()).unwrap();
    std::io::Write::write_all(&mut half, &[22, 3, 1, 0, 200, 1]).unwrap();
    drop(half);
    server.stderr.wait_for_event(|e| {
        message(e) == "handshake failed"
            && e["error"].as_str().is_some_and(|error| {
                error.contains("peer closed the transport during the handshake")
            })
    });
}

/// The datagrams `serve` sent to its `$NOTIFY_SOCKET`, read until one holds
/// `wanted`.
fn notified_until(socket: &std::os::unix::net::UnixDatagram, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {wanted:?} from serve ({e}); got {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if seen.last().is_some_and(|s| s.contains(wanted)) {
            return seen;
        }
    }
}

#[test]
fn systemd_activates_it_with_a_socket_and_hears_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::process::Stdio;

    use keyferry_tests::process::Captured;

    let dir = temp_dir("systemd");
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    // systemd's own tool: it listens, and on the first connection execs
    // `serve` with the socket as descriptor 3 and LISTEN_PID/LISTEN_FDS
    // set, as systemd does for a .socket unit. It takes no port 0, so a
    // free port is found first, and another tried if something takes it
    // in between.
    let (mut child, stderr, port) = loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("systemd-socket-activate")
            .args(["-l", &format!("127.0.0.1:{port}")])
            .args(["-E", &format!("NOTIFY_SOCKET={}", notify_path.display())])
            .args(["-E", "KEYFERRY_LOG=info"])
            // The log format goes through -E as KEYFERRY_LOG does: JSON,
            // read by its fields below.
            .args(["-E", "KEYFERRY_LOG_FORMAT=json"])
            .arg(keyferry())
            // `--listen` is left at its default: the passed socket wins.
            .args(["serve", "--workers", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (systemd) is installed");
        let stderr = Captured::spawn(child.stderr.take().unwrap());
        let start = std::time::Instant::now();
        while !stderr.text().contains("as 3.") && child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < PATIENCE, "{}", stderr.text());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_none() {
            break (child, stderr, port);
        }
    };
    // The first client starts the server, and waits in the socket's
    // backlog until a worker is ready.
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "120"])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("request: GET /"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stderr.text()
    );
    // keyferry's events; `events` skips systemd-socket-activate's own text
    // lines on the same stderr.
    stderr.wait_for_event(|e| {
        message(e) == "serving the listening socket systemd passed (socket activation)"
            && !relayed(e)
    });
    assert!(
        stderr
            .events()
            .iter()
            .any(|e| message(e) == "a worker is ready; taking connections" && !relayed(e)),
        "{}",
        stderr.text()
    );
    let ready = notified_until(&notify, "READY=1");
    assert_eq!(ready, ["READY=1\nSTATUS=serving"]);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let reload = notified_until(&notify, "READY=1");
    assert!(
        reload.len() == 2
            && reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC=")
            && reload[0]["RELOADING=1\nMONOTONIC_USEC=".len()..]
                .parse::<u64>()
                .is_ok(),
        "{reload:?}"
    );

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        notified_until(&notify, "STOPPING=1"),
        ["STOPPING=1\nSTATUS=draining"]
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "still running after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", stderr.text());
}

/// A restart that drops nothing, without systemd: a second serve takes
/// the first one's listening socket over `--handover-socket`, and the
/// first drains and exits 0. wrk opens a new connection per request
/// (`Connection: close`) throughout, and not one fails.
#[test]
fn a_restart_over_the_handover_socket_fails_no_request() {
    let (cert, key) = pem_identity("handover");
    let socket = cert.with_file_name("handover.sock");
    let args = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--handover-socket",
        socket.to_str().unwrap(),
        "--workers",
        "1",
    ];
    let mut old = Server::start(&args);
    let url = old.url("/");
    let wrk = std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d8s", "-H", "Connection: close", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wrk (apt-get install wrk)");
    std::thread::sleep(Duration::from_secs(2));
    // Whatever --listen says, the new one serves the socket it was given.
    let new = Server::start(&args);
    assert_eq!(new.port, old.port);
    new.stderr.wait_for_event(|e| {
        message(e) == "took the listening socket from the running server (--handover-socket)"
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "the old server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the old server exits 0: {status:?}");
    old.stderr.wait_for_event(|e| {
        message(e) == "no longer accepting connections" && has_fields(e, &[("signal", "handover")])
    });
    let out = wrk.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{report}"));
    assert!(requests > 50, "{report}");
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    // Both served some of them.
    for server in [&old, &new] {
        server
            .stderr
            .wait_for_event(|e| message(e) == "connection" && relayed(e));
    }
    // The socket file is the new server's now, for the next restart.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
}
