//! Bad input and failing guests end only their own connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keyferry_tests::process::{
    LONG_GUEST_CALL, PATIENCE, Server, guest_failure, has_fields, message, read_exact, relayed,
    rustls_client, sample, scrape, write_all,
};
use serde_json::Value;

/// Whether the event's `detail` contains `text` (no `detail`, no match).
fn detail_contains(e: &Value, text: &str) -> bool {
    e["detail"].as_str().is_some_and(|d| d.contains(text))
}

/// Whether `e` is the handshake process's "handshake failed" event, with
/// `reason` in its error.
fn handshake_failed(e: &Value, reason: &str) -> bool {
    message(e) == "handshake failed"
        && !relayed(e)
        && e["error"]
            .as_str()
            .is_some_and(|error| error.contains(reason))
}

fn echo_works(server: &Server, text: &[u8]) {
    let mut c = rustls_client(&server.addr());
    write_all(&mut c, text);
    assert_eq!(read_exact(&mut c, text.len()), text);
}

#[test]
fn two_hundred_concurrent_connections_are_all_served() {
    let server = Server::start(&["--echo", "--max-connections", "256"]);
    let addr = server.addr();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = rustls_client(&addr);
                let msg = format!("connection {i} says hello").repeat(50);
                write_all(&mut c, msg.as_bytes());
                let got = read_exact(&mut c, msg.len());
                assert_eq!(got, msg.as_bytes(), "connection {i}");
                c.conn.send_close_notify();
                let _ = c.flush();
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a connection failed");
    }
}

#[test]
fn a_guest_that_traps_loops_or_hogs_memory_ends_only_its_connection() {
    let server = Server::start(&[
        "--guest",
        keyferry_tests::plugins::MISBEHAVING,
        "--deadline-ms",
        "300",
        "--memory-mib",
        "32",
        "--metrics",
        "127.0.0.1:0",
    ]);
    // A healthy connection stays open across the others' failures.
    let mut healthy = rustls_client(&server.addr());
    write_all(&mut healthy, b"first");
    assert_eq!(read_exact(&mut healthy, 5), b"first");
    // A guest that writes to its stdout and stderr (WASI streams, whose
    // wasmtime-wasi versions block on the host's runtime) is served, not a
    // host-side panic.
    let mut chatty = rustls_client(&server.addr());
    write_all(&mut chatty, b"print");
    assert_eq!(read_exact(&mut chatty, 5), b"print");
    write_all(&mut chatty, b"again");
    assert_eq!(read_exact(&mut chatty, 5), b"again");
    for (i, poison) in ["trap", "loop", "grow", "sleep"].into_iter().enumerate() {
        let mut c = rustls_client(&server.addr());
        write_all(&mut c, poison.as_bytes());
        let mut buf = [0u8; 64];
        let result = c.read(&mut buf);
        assert!(
            !matches!(result, Ok(n) if n > 0),
            "{poison}: the failing guest's connection must end, got {result:?}"
        );
        // This poison's own failure: one more than before it, each logged
        // by a worker.
        server
            .stderr
            .wait_for_events(i + 1, |e| guest_failure(e) && relayed(e));
        write_all(
            &mut healthy,
            poison.as_bytes().to_ascii_uppercase().as_slice(),
        );
        assert_eq!(
            read_exact(&mut healthy, poison.len()),
            poison.as_bytes().to_ascii_uppercase(),
            "after {poison}"
        );
    }
    // The sleeper's trap is the last one logged.
    server.stderr.wait_for_event(|e| {
        guest_failure(e) && relayed(e) && detail_contains(e, "may not wait on a clock")
    });
    let events = server.stderr.events();
    let failures: Vec<&Value> = events.iter().filter(|e| guest_failure(e)).collect();
    let log = server.stderr.text();
    assert!(
        failures
            .iter()
            .any(|e| detail_contains(e, "deadline") || detail_contains(e, "execution")),
        "the loop hit its bound: {log}"
    );
    // Guest calls run on their tokio worker until one computes for long;
    // the loop did, so later calls leave the worker to the others.
    assert!(
        events
            .iter()
            .any(|e| message(e) == LONG_GUEST_CALL && relayed(e) && e["took_ms"].is_u64()),
        "{log}"
    );
    assert!(
        failures
            .iter()
            .any(|e| detail_contains(e, "resource limit") || detail_contains(e, "trap")),
        "{log}"
    );
    // The metrics count each failure by its trap (the worker reports it a
    // moment after its log line).
    let metrics = server.metrics_addr();
    let start = std::time::Instant::now();
    let samples = loop {
        let samples = scrape(&metrics);
        if sample(&samples, "keyferry_guest_traps_total", &[]) >= 4.0 {
            break samples;
        }
        assert!(start.elapsed() < PATIENCE, "{samples:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let traps = |kind| sample(&samples, "keyferry_guest_traps_total", &[("kind", kind)]);
    assert_eq!(traps("other"), 1.0, "unreachable: {samples:?}");
    assert_eq!(traps("would_block"), 1.0, "the sleep: {samples:?}");
    assert_eq!(traps("deadline"), 1.0, "the loop: {samples:?}");
    assert_eq!(traps("resource_limit"), 1.0, "the growth: {samples:?}");
    assert_eq!(
        sample(
            &samples,
            "keyferry_connections_ended_total",
            &[("ending", "guest_failure")]
        ),
        4.0
    );
    let mut server = server;
    assert!(server.alive(), "the server carries on");
}

#[test]
fn garbage_truncated_handshakes_and_oversize_records_are_contained() {
    let server = Server::start(&["--echo"]);
    // Garbage instead of a ClientHello.
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: not-tls\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    server
        .stderr
        .wait_for_event(|e| message(e) == "handshake failed" && !relayed(e));

    // A peer that leaves mid-handshake: logged as such, and nothing else
    // is disturbed.
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3])
        .unwrap();
    drop(raw);
    server
        .stderr
        .wait_for_event(|e| handshake_failed(e, "peer closed the transport during the handshake"));

    // An oversize record after a good handshake: record_overflow, closed.
    let mut c = rustls_client(&server.addr());
    write_all(&mut c, b"ok");
    assert_eq!(read_exact(&mut c, 2), b"ok");
    let mut header = vec![23, 3, 3, 0x48, 0x01];
    header.extend(vec![0u8; 64]);
    c.sock.write_all(&header).unwrap();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Err(e) => assert!(e.to_string().contains("RecordOverflow"), "{e}"),
        Ok(n) => panic!("expected the server's record_overflow alert, read {n} bytes"),
    }
    server.stderr.wait_for_event(|e| {
        has_fields(
            e,
            &[
                ("message", "connection"),
                ("ending", "sent_alert"),
                ("detail", "sent alert record_overflow"),
            ],
        ) && relayed(e)
    });
    assert!(
        server
            .stderr
            .events()
            .iter()
            .any(|e| message(e) == "handshake failed" && !relayed(e)),
        "{}",
        server.stderr.text()
    );

    // Everyone else is still served, by the same process.
    echo_works(&server, b"still serving");
    let mut server = server;
    assert!(server.alive());
}

#[test]
fn ctrl_c_sends_close_notify_and_exits() {
    let mut server = Server::start(&["--echo"]);
    let mut c = rustls_client(&server.addr());
    write_all(&mut c, b"idle soon");
    assert_eq!(read_exact(&mut c, 9), b"idle soon");
    let status = server.interrupt();
    assert!(
        status.success(),
        "serve exits cleanly on Ctrl-C: {status:?}"
    );
    let mut rest = Vec::new();
    let n = c
        .read_to_end(&mut rest)
        .expect("a clean close_notify, not a reset or truncation");
    assert_eq!(n, 0);
    // Logged by the worker that held the connection (the capture may still
    // be reading the last lines the server wrote before it exited).
    server.stderr.wait_for_event(|e| {
        has_fields(
            e,
            &[
                ("message", "connection"),
                ("ending", "shutdown"),
                ("detail", "server shutdown"),
            ],
        ) && relayed(e)
    });
}

/// systemd, `docker stop` and Kubernetes stop a service with SIGTERM: it
/// drains as Ctrl-C does, in every worker, and exits 0 with its workers.
#[test]
fn sigterm_closes_every_connection_with_close_notify_and_exits() {
    let mut server = Server::start(&["--echo", "--workers", "1"]);
    let mut c = rustls_client(&server.addr());
    write_all(&mut c, b"idle soon");
    assert_eq!(read_exact(&mut c, 9), b"idle soon");
    let workers = keyferry_tests::process::children(server.child.id());
    assert!(!workers.is_empty(), "a worker runs");
    // systemd's default stop signals every process of the service: a
    // worker leaves its stop to the handshake process, and keeps serving.
    for pid in &workers {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    }
    write_all(&mut c, b"still here");
    assert_eq!(read_exact(&mut c, 10), b"still here");
    let status = server.signal("TERM");
    assert!(
        status.success(),
        "serve exits cleanly on SIGTERM: {status:?}"
    );
    let mut rest = Vec::new();
    let n = c
        .read_to_end(&mut rest)
        .expect("a clean close_notify from the worker, not a reset");
    assert_eq!(n, 0);
    server.stderr.wait_for_event(|e| {
        message(e) == "no longer accepting connections"
            && !relayed(e)
            && has_fields(e, &[("signal", "SIGTERM")])
    });
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "worker {pid} outlived serve"
        );
    }
}

/// At SIGTERM a request under way is answered, and only then is its
/// connection closed (nginx's graceful stop); an idle connection is closed
/// at once; one that never finishes its request is closed with
/// close_notify at `--drain-timeout`. In workers and in one process.
#[test]
fn sigterm_answers_the_request_under_way_then_closes_and_bounds_the_rest() {
    for workers in ["1", "0"] {
        let mut server = Server::start(&["--workers", workers, "--drain-timeout", "3"]);
        let mut busy = rustls_client(&server.addr());
        write_all(&mut busy, b"GET /under-way HTTP/1.1\r\nHost: x\r\n");
        let mut idle = rustls_client(&server.addr());
        write_all(&mut idle, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut stalled = rustls_client(&server.addr());
        write_all(&mut stalled, b"GET /never-finished HTTP/1.1\r\n");
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let started = std::time::Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status();
        server
            .stderr
            .wait_for_event(|e| message(e) == "no longer accepting connections" && !relayed(e));
        // The idle connection gets close_notify (after the rest of its
        // first response).
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest)
            .expect("close_notify on the idle connection");
        // The one in the middle of its request finishes it and is
        // answered, then closed.
        std::thread::sleep(Duration::from_millis(300));
        write_all(&mut busy, b"\r\n");
        let mut answer = Vec::new();
        busy.read_to_end(&mut answer)
            .expect("the answer, then close_notify");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "workers {workers}: {answer}"
        );
        assert!(answer.contains("request: GET /under-way"), "{answer}");
        // The one that never finishes is closed at the drain deadline,
        // with close_notify.
        let mut nothing = Vec::new();
        stalled
            .read_to_end(&mut nothing)
            .expect("close_notify at the drain deadline");
        assert!(nothing.is_empty());
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "closed at the deadline, not at once: {:?}",
            started.elapsed()
        );
        let status = server.signal("TERM");
        assert!(status.success(), "exits 0: {status:?}");
    }
}

/// `--fuel` reaches the workers as their only execution bound (they were
/// given `--deadline-ms` too, which they refuse, and never started).
#[test]
fn fuel_bounds_guests_in_workers() {
    let server = Server::start(&["--echo", "--workers", "1", "--fuel", "100000000"]);
    server
        .stderr
        .wait_for_event(|e| message(e) == "worker ready" && !relayed(e));
    echo_works(&server, b"fuelled");
}

/// A guest that cannot run fails the start, with the reason, whether the
/// data plane runs in workers (the default) or in this process; nothing
/// prints "serving" and restarts workers forever.
#[test]
fn a_guest_that_cannot_run_fails_the_start() {
    let dir = keyferry_tests::process::temp_dir("bad-guests");
    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"-----BEGIN CERTIFICATE-----").unwrap();
    let missing = dir.join("missing.wasm");
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    for (guest, reason) in [
        (&not_wasm, "magic header not detected"),
        (&missing, "No such file or directory"),
        (&core, "a core WebAssembly module"),
    ] {
        for workers in ["2", "0"] {
            let out = std::process::Command::new(keyferry_tests::process::keyferry())
                .args(["serve", "--listen", "127.0.0.1:0", "--workers", workers])
                .arg("--guest")
                .arg(guest)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "--workers {workers}: {stderr}");
            assert!(stderr.contains(reason), "--workers {workers}: {stderr}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("serving"),
                "it never says it serves"
            );
        }
    }
}

/// Workers that die as soon as they start are restarted a bounded number
/// of times; then serve stops with an error, as a supervisor should see.
#[test]
fn a_worker_crash_loop_stops_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let dir = keyferry_tests::process::temp_dir("crash-loop");
    let script = dir.join("dies.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = Server::start(&[
        "--echo",
        "--workers",
        "1",
        "--worker-program",
        script.to_str().unwrap(),
    ]);
    server
        .stderr
        .wait_for_event(|e| message(e) == "workers crash in a loop; giving up" && !relayed(e));
    assert!(
        server
            .stderr
            .events()
            .iter()
            .any(|e| message(e) == "worker ended; starting another" && !relayed(e)),
        "{}",
        server.stderr.text()
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "serve did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success(), "a crash loop is a failure: {status:?}");
    // The fatal error, as a JSON event of the handshake process (the
    // reason in its error or its causes).
    server.stderr.wait_for_event(|e| {
        message(e) == "fatal"
            && !relayed(e)
            && ["error", "causes"].into_iter().any(|field| {
                e[field]
                    .as_str()
                    .is_some_and(|text| text.contains("failed 10 times in a row"))
            })
    });
}

#[test]
fn a_plugin_built_on_the_guest_library_serves_connections() {
    let server = Server::start(&["--guest", keyferry_tests::plugins::UPPERCASE]);
    let mut c = rustls_client(&server.addr());
    write_all(&mut c, b"shout this");
    assert_eq!(read_exact(&mut c, 10), b"SHOUT THIS");
}

#[test]
fn shared_instances_serve_many_connections_and_recover_from_a_trap() {
    let server = Server::start(&[
        "--guest",
        keyferry_tests::plugins::MISBEHAVING,
        "--workers",
        "0",
        "--shared-instances",
        "1",
    ]);
    for i in 0..5 {
        echo_works(
            &server,
            format!("shared instance, connection {i}").as_bytes(),
        );
    }
    // A trap ends every connection in the shared instance...
    let mut bystander = rustls_client(&server.addr());
    write_all(&mut bystander, b"before");
    assert_eq!(read_exact(&mut bystander, 6), b"before");
    let mut culprit = rustls_client(&server.addr());
    write_all(&mut culprit, b"trap");
    let mut buf = [0u8; 16];
    assert!(!matches!(culprit.read(&mut buf), Ok(n) if n > 0));
    // Logged by this process itself (`--workers 0`).
    server
        .stderr
        .wait_for_event(|e| guest_failure(e) && !relayed(e));
    write_all(&mut bystander, b"after");
    assert!(
        !matches!(bystander.read(&mut buf), Ok(n) if n > 0),
        "a connection sharing the trapped instance ends too: that is the documented cost"
    );
    // ...and the next connection gets a fresh one.
    echo_works(&server, b"a fresh shared instance");
}
