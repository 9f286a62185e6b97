//! `serve --workers N`: the handshake process holds the private key, data-
//! plane workers (fresh execs of the binary) run the guests and never hold
//! it. A worker that dies loses only its own connections; a worker that
//! breaks the channel protocol is cut off and replaced.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use keyferry_tests::process::{
    PATIENCE, Server, children, keyferry, memory_contains, pem_identity, private_key_bytes,
    read_exact, rustls_client, temp_dir, write_all,
};

type Client = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn echo(c: &mut Client, text: &[u8]) {
    write_all(c, text);
    assert_eq!(read_exact(c, text.len()), text);
}

/// Waits until `server` has `n` workers running, each with instances
/// ready, and returns their pids.
fn workers(server: &Server, n: usize) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = children(server.child.id());
        if pids.len() >= n && server.stderr.text().matches("worker ready").count() >= n {
            return pids;
        }
        assert!(start.elapsed() < PATIENCE, "workers did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the worker the handshake process gave `client` to.
fn worker_of(server: &Server, client: &Client) -> u32 {
    let port = client.sock.local_addr().unwrap().port();
    let needle = format!("peer=127.0.0.1:{port} ");
    let log = server.stderr.wait_for(&needle);
    let line = log
        .lines()
        .find(|l| l.contains(&needle) && l.contains("handed to a worker"))
        .expect("the hand-over line");
    line.split("worker_pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("a worker pid")
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
    server.stderr.wait_for("worker ended; starting another");
    // New connections are served, by the survivor and the replacement.
    for i in 0..4 {
        let mut c = rustls_client(&server.addr());
        echo(&mut c, format!("after the kill {i}").as_bytes());
    }
}

#[test]
fn a_worker_that_breaks_the_protocol_is_cut_off_and_replaced() {
    let dir = temp_dir("forged-worker");
    let counter = dir.join("runs");
    let script = dir.join("forged-worker.sh");
    // The first five starts misbehave on the channel (standard input), each
    // its own way; from the sixth on the real worker runs.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n\
             case $n in\n\
             1) printf 'not a frame at all' >&0; sleep 30 ;;\n\
             2) printf '\\002\\000\\000\\000\\000\\000\\000\\000\\052\\001\\000{zeros}' >&0; sleep 30 ;;\n\
             3) dd if=/dev/zero bs=700000 count=1 >&0 2>/dev/null; sleep 30 ;;\n\
             4) printf '\\001\\001\\000\\000\\000\\001' >&0; sleep 30 ;;\n\
             5) printf '\\004{key}' >&0; printf '\\004{key}' >&0; sleep 30 ;;\n\
             *) exec {keyferry} \"$@\" ;;\n\
             esac\n",
            counter = counter.display(),
            keyferry = keyferry().display(),
            key = "\\011".repeat(32),
            // A whole Done frame's report: bytes in, bytes out, attach time.
            zeros = "\\000".repeat(24),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = Server::start(&[
        "--workers",
        "1",
        "--echo",
        "--worker-program",
        script.to_str().unwrap(),
    ]);
    let log = server.stderr.wait_for("published its key twice");
    for what in [
        "sent a malformed frame",
        "reported a connection it was never given",
        "frame too long",
        "announced an instance before publishing its key",
    ] {
        assert!(log.contains(what), "{what}:\n{log}");
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
    let mut c = rustls_client(&server.addr());
    c.conn.writer().write_all(b"secret request").unwrap();
    while c.conn.is_handshaking() {
        c.conn.complete_io(&mut c.sock).unwrap();
    }
    server.stderr.wait_for("handed to a worker");
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
