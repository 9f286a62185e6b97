//! `serve --workers N`: the handshake process holds the private key, data-
//! plane workers (fresh execs of the binary) run the guests and never hold
//! it. A worker that dies loses only its own connections; a worker that
//! breaks the channel protocol is cut off and replaced.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyferry_tests::process::{
    PATIENCE, Server, children, has_fields, keyferry, memory_contains, message, pem_identity,
    private_key_bytes, read_exact, relayed, rustls_client, temp_dir, write_all,
};
use serde_json::Value;

type Client = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn echo(c: &mut Client, text: &[u8]) {
    write_all(c, text);
    assert_eq!(read_exact(c, text.len()), text);
}

/// Whether `e` is the handshake process's own `message` event (not a
/// worker's, which the relay marks `relayed`).
fn own(e: &Value, text: &str) -> bool {
    message(e) == text && !relayed(e)
}

/// Whether `e` is the handshake process cutting a worker off for a
/// protocol violation whose `violation` field contains `what`.
fn cut_off_for(e: &Value, what: &str) -> bool {
    own(e, "worker broke the protocol; cutting it off")
        && e["violation"]
            .as_str()
            .is_some_and(|violation| violation.contains(what))
}

/// Waits until `server` has `n` workers running, each with instances
/// ready, and returns their pids.
fn workers(server: &Server, n: usize) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = children(server.child.id());
        let ready = server
            .stderr
            .events()
            .iter()
            .filter(|e| own(e, "worker ready"))
            .count();
        if pids.len() >= n && ready >= n {
            return pids;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "workers did not start; log:\n{}",
            server.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The handshake process's (debug) event of handing the connection from
/// 127.0.0.1:`port` to a worker.
fn hand_over_event(server: &Server, port: u16) -> Value {
    let peer = format!("127.0.0.1:{port}");
    server.stderr.wait_for_event(|e| {
        own(e, "connection handed to a worker") && has_fields(e, &[("peer", peer.as_str())])
    })
}

/// A client that completes its handshake, with `request` sent along, and
/// whose connection the handshake process has handed to a worker (the
/// hand-over event is logged at debug).
fn handed_over(server: &Server, request: &[u8]) -> Client {
    let mut c = rustls_client(&server.addr());
    c.conn.writer().write_all(request).unwrap();
    while c.conn.is_handshaking() {
        c.conn.complete_io(&mut c.sock).unwrap();
    }
    hand_over_event(server, c.sock.local_addr().unwrap().port());
    c
}

/// The pid of the worker the handshake process gave `client` to.
fn worker_of(server: &Server, client: &Client) -> u32 {
    let port = client.sock.local_addr().unwrap().port();
    let handed = hand_over_event(server, port);
    handed["worker_pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("a worker pid: {handed}"))
}

#[test]
fn the_private_key_lives_only_in_the_handshake_process() {
    let (cert, key) = pem_identity("privsep-scan");
    let server = Server::start(&[
        "--workers",
        "1",
        "--echo",
        "--max-connections",
        "8",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    // A connection through the worker, so its guest has run.
    let mut c = rustls_client(&server.addr());
    echo(&mut c, b"through a worker");
    let (der, scalar) = private_key_bytes(&key);
    let needles: [&[u8]; 2] = [&der, &scalar];
    let pids = workers(&server, 1);
    for pid in &pids {
        assert!(
            !memory_contains(*pid, &needles),
            "worker {pid} holds the private key"
        );
    }
    // The same scan finds the key where it is, so it can fail.
    assert!(
        memory_contains(server.child.id(), &needles),
        "the handshake process holds the key"
    );
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "no-new-privs: {status}");
        // A descriptor per connection it may hold (8), and 64 more: a
        // worker that reports connections done early cannot keep more.
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(
            files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
            ["72", "72"],
            "{files}"
        );
        if rustix::process::geteuid().is_root() {
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
            for set in ["CapPrm", "CapEff"] {
                assert!(
                    status.contains(&format!("{set}:\t0000000000000000")),
                    "{set}: {status}"
                );
            }
            // wasmtime's pagemap (for resetting instances) was opened
            // before the drop: a process that has changed its uid can no
            // longer open its own /proc files.
            let pagemap = format!("/proc/{pid}/pagemap");
            let opened = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .any(|l| l.display().to_string() == pagemap);
            assert!(opened, "worker {pid} has no pagemap open");
        }
        // The listening socket stayed in the handshake process.
        let listener = listening_inode(server.port);
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .collect();
        assert!(
            !fds.contains(&format!("socket:[{listener}]")),
            "the worker holds the listener: {fds:?}"
        );
    }
}

/// The inode of the socket listening on 127.0.0.1:`port`.
fn listening_inode(port: u16) -> String {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .map(|f| f[9].to_string())
        .expect("the listening socket")
}

#[test]
fn a_killed_worker_loses_only_its_own_connections() {
    // The hand-over line `worker_of` reads is logged at debug.
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &["--workers", "2", "--echo"],
        &[("KEYFERRY_LOG", "debug")],
    );
    workers(&server, 2);
    let mut clients: Vec<Client> = (0..6)
        .map(|i| {
            let mut c = rustls_client(&server.addr());
            echo(&mut c, format!("client {i}").as_bytes());
            c
        })
        .collect();
    let owners: Vec<u32> = clients.iter().map(|c| worker_of(&server, c)).collect();
    let victim = owners[0];
    assert!(
        owners.iter().any(|o| *o != victim),
        "connections went to both workers: {owners:?}"
    );
    std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for (c, owner) in clients.iter_mut().zip(&owners) {
        if *owner == victim {
            // Its connections end: an error or EOF, never wrong bytes.
            let _ = c.write_all(b"anyone there?").and_then(|()| c.flush());
            let mut buf = [0u8; 64];
            assert!(
                !matches!(c.read(&mut buf), Ok(n) if n > 0),
                "a dead worker's connection kept talking"
            );
        } else {
            echo(c, &big);
        }
    }
    server
        .stderr
        .wait_for_event(|e| own(e, "worker ended; starting another"));
    // New connections are served, by the survivor and the replacement.
    for i in 0..4 {
        let mut c = rustls_client(&server.addr());
        echo(&mut c, format!("after the kill {i}").as_bytes());
    }
}

#[test]
fn a_worker_that_breaks_the_protocol_is_cut_off_and_replaced() {
    // The first five starts misbehave on the channel (standard input), each
    // its own way; from the sixth on the real worker runs.
    let script = worker_script(
        "forged-worker",
        &format!(
            "case $n in\n\
             1) printf 'not a frame at all' >&0; sleep 30; exit ;;\n\
             2) printf '\\002\\000\\000\\000\\000\\000\\000\\000\\052\\001\\000{zeros}' >&0; sleep 30; exit ;;\n\
             3) dd if=/dev/zero bs=700000 count=1 >&0 2>/dev/null; sleep 30; exit ;;\n\
             4) printf '\\001\\001\\000\\000\\000\\001' >&0; sleep 30; exit ;;\n\
             5) printf '\\004{key}' >&0; printf '\\004{key}' >&0; sleep 30; exit ;;\n\
             esac",
            key = "\\011".repeat(32),
            // A whole Done frame's report: bytes in, bytes out, attach time.
            zeros = "\\000".repeat(24),
        ),
    );
    let mut server = Server::start(&[
        "--workers",
        "1",
        "--echo",
        "--worker-program",
        script.to_str().unwrap(),
    ]);
    server
        .stderr
        .wait_for_event(|e| cut_off_for(e, "published its key twice"));
    // The four before it, each cut off for its own violation.
    let events = server.stderr.events();
    for what in [
        "sent a malformed frame",
        "reported a connection it was never given",
        "frame too long",
        "announced an instance before publishing its key",
    ] {
        assert!(
            events.iter().any(|e| cut_off_for(e, what)),
            "{what}:\n{}",
            server.stderr.text()
        );
    }
    // The fourth worker is the real one: the server serves.
    let start = Instant::now();
    loop {
        let served = std::panic::catch_unwind(|| {
            let mut c = rustls_client(&server.addr());
            echo(&mut c, b"served after five bad workers");
        });
        if served.is_ok() {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.alive());
}

#[test]
fn the_channel_carries_no_private_key_bytes() {
    let (cert, key) = pem_identity("privsep-capture");
    let dir = temp_dir("recording-worker");
    let capture = dir.join("capture");
    let script = dir.join("recording-worker.sh");
    // Publishes a key (any 32-byte X25519 key) and one ready instance, as
    // two datagrams, then records everything the handshake process sends.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             printf '\\004{key}' >&0\n\
             printf '\\001\\001\\000\\000\\000\\001' >&0\n\
             exec cat <&0 > {capture}\n",
            key = "\\011".repeat(32),
            capture = capture.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Logged at debug: the hand-over line this waits for.
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &[
            "--workers",
            "1",
            "--echo",
            "--worker-program",
            script.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[("KEYFERRY_LOG", "debug")],
    );
    // A handshake; the connection goes to the recording worker (which will
    // never answer, so the client is dropped).
    let _c = handed_over(&server, b"secret request");
    let start = Instant::now();
    let recorded = loop {
        let bytes = std::fs::read(&capture).unwrap_or_default();
        if bytes.windows(4).any(|w| w == b"KFKB") {
            break bytes;
        }
        assert!(start.elapsed() < PATIENCE, "nothing recorded");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (der, scalar) = private_key_bytes(&key);
    for needle in [&der[..], &scalar[..]] {
        assert!(
            !recorded.windows(needle.len()).any(|w| w == needle),
            "private key bytes on the channel"
        );
    }
    assert!(
        !recorded.windows(14).any(|w| w == b"secret request"),
        "the channel carries sealed blobs, not plaintext"
    );
    drop(server);
}

#[test]
fn curl_and_many_clients_are_served_through_workers() {
    let server = Server::start(&["--workers", "2"]);
    let out = std::process::Command::new("curl")
        .args(["-sk", &server.url("/through-workers")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("produced inside the WebAssembly sandbox")
            && body.contains("request: GET /through-workers"),
        "{body}"
    );
    let addr = server.addr();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = rustls_client(&addr);
                let request = format!("GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                write_all(&mut c, request.as_bytes());
                let mut response = Vec::new();
                let _ = c.read_to_end(&mut response);
                let text = String::from_utf8_lossy(&response).into_owned();
                assert!(text.contains(&format!("request: GET /{i}")), "{text}");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a client failed");
    }
}

/// How many descriptors process `pid` holds.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether a process of uid 65534 (or of the tests' own uid, run without
/// root) can open `/proc/PID/mem`, the door to another process's memory.
fn same_uid_opens_memory_of(pid: u32) -> bool {
    let mut command = if rustix::process::geteuid().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(keyferry_tests::process::UNPRIVILEGED).arg("head");
        c
    } else {
        std::process::Command::new("head")
    };
    // Opens the file and reads nothing: the open is what is refused.
    command
        .args(["-c", "0", &format!("/proc/{pid}/mem")])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn without_root_the_key_is_out_of_reach_of_the_workers_uid() {
    let (cert, key) = pem_identity("privsep-unprivileged");
    let server = keyferry_tests::process::Server::start_unprivileged(&[
        "--workers",
        "1",
        "--echo",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    server.stderr.wait_for_event(|e| own(e, "worker ready"));
    let mut c = rustls_client(&server.addr());
    echo(&mut c, b"served by a confined worker");
    let holder = server.child.id();
    // The same uid can read a dumpable process's memory (the control),
    // and not the key holder's.
    let mut control = std::process::Command::new(if rustix::process::geteuid().is_root() {
        "setpriv"
    } else {
        "sleep"
    });
    if rustix::process::geteuid().is_root() {
        control
            .args(keyferry_tests::process::UNPRIVILEGED)
            .arg("sleep");
    }
    let mut control = control.arg("30").spawn().unwrap();
    // setpriv is not dumpable between its setuid and its exec of sleep.
    let start = Instant::now();
    while std::fs::read_to_string(format!("/proc/{}/comm", control.id()))
        .is_ok_and(|comm| comm.trim() != "sleep")
    {
        assert!(start.elapsed() < PATIENCE, "the control never became sleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    let readable = same_uid_opens_memory_of(control.id());
    let _ = control.kill();
    let _ = control.wait();
    assert!(readable, "the same uid reads a dumpable process's memory");
    assert!(
        !same_uid_opens_memory_of(holder),
        "the same uid reads the key holder's memory"
    );
    // Said at start, before any worker.
    assert!(
        server
            .stderr
            .events()
            .iter()
            .any(|e| own(e, "key protection") && e["dumpable"] == false),
        "{}",
        server.stderr.text()
    );
    // The worker tried the key file after confining itself, and could not
    // open it.
    let tried = server
        .stderr
        .wait_for_event(|e| message(e) == "worker cannot open the key holder's file" && relayed(e));
    assert_eq!(tried["file"], key.to_str().unwrap(), "{tried}");
    for pid in workers(&server, 1) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("Seccomp:\t2"), "seccomp filter: {status}");
        assert!(status.contains("NoNewPrivs:\t1"), "no-new-privs: {status}");
        assert!(
            !same_uid_opens_memory_of(holder),
            "worker {pid}'s uid reads the key holder's memory"
        );
    }
}

#[test]
fn workers_never_run_as_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: --user has no effect, nothing to refuse");
        return;
    }
    let out = std::process::Command::new(keyferry())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--user", "root"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("workers never run as uid or gid 0"), "{text}");
    // A worker started by hand as root with no user to become refuses too.
    let out = std::process::Command::new(keyferry())
        .args(["worker", "--echo"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("a worker never runs as uid 0"), "{text}");
}

/// A forged worker program: a shell script that counts its starts in `$n`
/// and runs `dispatch`, then (unless `dispatch` left) the real worker.
fn worker_script(name: &str, dispatch: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let counter = dir.join("runs");
    let script = dir.join("forged-worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n\
             {dispatch}\n\
             exec {keyferry} \"$@\"\n",
            counter = counter.display(),
            keyferry = keyferry().display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The first `starts` starts run `forged` (with the channel on standard
/// input), every later start the real worker.
fn forged_worker(name: &str, starts: u32, forged: &str) -> std::path::PathBuf {
    worker_script(name, &format!("if [ $n -le {starts} ]; then {forged}; fi"))
}

#[test]
fn a_worker_that_sends_an_empty_datagram_is_cut_off() {
    let script = forged_worker(
        "empty-datagram",
        1,
        "exec python3 -c \"import socket, time; \
         s = socket.socket(fileno=0); s.send(b''); time.sleep(60)\"",
    );
    let server = Server::start(&[
        "--workers",
        "1",
        "--echo",
        "--worker-program",
        script.to_str().unwrap(),
    ]);
    server
        .stderr
        .wait_for_event(|e| cut_off_for(e, "sent an empty frame"));
    // Its replacement (the real worker) serves.
    server.stderr.wait_for_event(|e| own(e, "worker ready"));
    let mut c = rustls_client(&server.addr());
    echo(&mut c, b"served after the empty datagram");
}

#[test]
fn a_worker_that_publishes_another_workers_key_is_cut_off() {
    // The first two starts (one per worker) publish the same key; the
    // second to arrive is cut off. Later starts are the real worker.
    let script = forged_worker(
        "stolen-key",
        2,
        &format!("printf '\\004{}' >&0; exec sleep 60", "\\011".repeat(32)),
    );
    let server = Server::start(&[
        "--workers",
        "2",
        "--echo",
        "--worker-program",
        script.to_str().unwrap(),
    ]);
    server
        .stderr
        .wait_for_event(|e| cut_off_for(e, "published another worker's key"));
}

#[test]
fn a_worker_that_stops_reading_cannot_wedge_the_key_holder() {
    // Publishes a key and one ready instance, then never reads again.
    let script = forged_worker(
        "stops-reading",
        1,
        &format!(
            "printf '\\004{key}' >&0; printf '\\001\\001\\000\\000\\000\\001' >&0; exec sleep 3600",
            key = "\\011".repeat(32)
        ),
    );
    let mut server = Server::start_with_env(
        "127.0.0.1:0",
        &[
            "--workers",
            "1",
            "--echo",
            "--max-connections",
            "1",
            "--worker-program",
            script.to_str().unwrap(),
        ],
        &[("KEYFERRY_LOG", "debug")],
    );
    // One connection in the silent worker's hands: the only place under
    // the cap.
    let held = handed_over(&server, b"never answered");
    let holder = server.child.id();
    let baseline = descriptors(holder);
    let addr = server.addr();
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if let Ok(s) = std::net::TcpStream::connect(&addr) {
                        drop(s);
                    }
                }
            })
        })
        .collect();
    for f in flood {
        f.join().unwrap();
    }
    let start = Instant::now();
    while descriptors(holder) > baseline {
        assert!(
            start.elapsed() < PATIENCE,
            "descriptors stay above the baseline {baseline}: {}",
            descriptors(holder)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C ends it, the silent worker included, within its drain time.
    let asked = Instant::now();
    let status = server.interrupt();
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        asked.elapsed()
    );
    drop(held);
}

/// A worker knows what the handshake process knew of a connection: that it
/// resumed a session, in its log line (it was always false with workers).
#[test]
fn a_resumed_handshake_is_known_as_such_in_the_worker() {
    let server = Server::start(&["--workers", "1", "--echo"]);
    let config = Arc::new(
        keyferry::tls::TlsOptions::default()
            .client_config(keyferry::tls::ServerVerification::DangerousNone)
            .unwrap(),
    );
    let mut ports = Vec::new();
    for expected in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let sock = std::net::TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut c = rustls::StreamOwned::new(conn, sock);
        // The echo is read after the server's tickets: the client keeps one.
        echo(&mut c, b"twice");
        assert_eq!(c.conn.handshake_kind(), Some(expected));
        ports.push(c.sock.local_addr().unwrap().port());
        c.conn.send_close_notify();
        let _ = c.flush();
    }
    for (port, resumed) in ports.iter().zip([false, true]) {
        let peer = format!("127.0.0.1:{port}");
        // The worker's own per-connection event.
        let connection = server.stderr.wait_for_event(|e| {
            has_fields(e, &[("message", "connection"), ("peer", peer.as_str())]) && relayed(e)
        });
        assert_eq!(connection["resumed"], resumed, "{connection}");
    }
}

/// A worker's standard error cannot make an event of the handshake
/// process: a line that is not a JSON object (a panic, a cut line, or this
/// forgery of the handshake process's `worker ready`) is relayed tagged
/// `relayed`, as every worker line is.
#[test]
fn a_worker_cannot_forge_an_event_of_the_handshake_process() {
    let script = forged_worker(
        "forged-log-line",
        1,
        "echo 'worker ready' >&2; echo '{\"message\":\"worker ready\",\"worker\":7}' >&2",
    );
    let server = Server::start(&[
        "--workers",
        "1",
        "--echo",
        "--worker-program",
        script.to_str().unwrap(),
    ]);
    // The real worker (the script's second start onwards) gets ready.
    server.stderr.wait_for_event(|e| own(e, "worker ready"));
    let forged = server
        .stderr
        .wait_for_events(2, |e| message(e) == "worker ready" && relayed(e));
    for e in &forged {
        assert_eq!(
            e["worker"], 0,
            "the relay's worker index, not the line's: {e}"
        );
    }
    // Every `worker ready` event without `relayed` is the handshake
    // process's own.
    for e in server.stderr.events() {
        if message(&e) == "worker ready" && !relayed(&e) {
            assert_eq!(e["target"], "keyferry_server::monitor", "{e}");
        }
    }
}
