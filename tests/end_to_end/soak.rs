//! A bounded soak: many connections through `serve` in a mix (short HTTP
//! requests, long echoes, abrupt resets mid-record, KeyUpdates), sampling
//! the servers' memory, descriptors and threads. Memory must come back to
//! within 10% of where it started, and descriptors and threads must not
//! grow. Ignored by default (minutes); run it with
//!
//! ```text
//! KEYFERRY_SOAK_CONNECTIONS=100000 cargo test --release -p keyferry-tests \
//!     --test end_to_end soak -- --ignored --nocapture
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyferry_tests::process::{PATIENCE, Server, children, read_exact, write_all};

/// RSS in KiB, descriptors and threads of a server and its workers.
fn footprint(server: &Server) -> (u64, usize, usize) {
    let mut pids = vec![server.child.id()];
    pids.extend(children(server.child.id()));
    let (mut rss, mut fds, mut threads) = (0, 0, 0);
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        rss += field("VmRSS:");
        threads += field("Threads:") as usize;
        fds += std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
    }
    (rss, fds, threads)
}

fn client(addr: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    keyferry_tests::process::rustls_client(addr)
}

/// One connection of kind `i % 4`; true if it behaved as expected.
fn one(i: usize, http: &str, echo: &str) -> bool {
    let run = || -> std::io::Result<bool> {
        match i % 4 {
            // A short HTTP request.
            0 => {
                let mut c = client(http);
                c.write_all(b"GET /soak HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut response = Vec::new();
                let _ = c.read_to_end(&mut response);
                Ok(response.starts_with(b"HTTP/1.1 200"))
            }
            // A long echo.
            1 => {
                let mut c = client(echo);
                let data = vec![(i % 251) as u8; 64 * 1024];
                write_all(&mut c, &data);
                Ok(read_exact(&mut c, data.len()) == data)
            }
            // An abrupt end in the middle of a record.
            2 => {
                let mut c = client(echo);
                write_all(&mut c, b"hello");
                let _ = read_exact(&mut c, 5);
                c.conn.writer().write_all(b"never finished")?;
                let mut wire = Vec::new();
                c.conn.write_tls(&mut wire)?;
                c.sock.write_all(&wire[..wire.len() / 2])?;
                Ok(true)
            }
            // KeyUpdates both ways, then data.
            _ => {
                let mut c = client(echo);
                write_all(&mut c, b"before");
                let _ = read_exact(&mut c, 6);
                c.conn
                    .refresh_traffic_keys()
                    .map_err(std::io::Error::other)?;
                write_all(&mut c, b"after the update");
                Ok(read_exact(&mut c, 16) == b"after the update")
            }
        }
    };
    std::panic::catch_unwind(run).is_ok_and(|r| r.unwrap_or(false))
}

#[test]
#[ignore = "minutes of load; run it on purpose (see the module docs)"]
fn soak_memory_descriptors_and_threads_come_back() {
    let total: usize = std::env::var("KEYFERRY_SOAK_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let http = Server::start(&[]);
    let echo = Server::start(&["--echo"]);
    let (http_addr, echo_addr) = (http.addr(), echo.addr());
    // Warm up: every worker has made instances and grown its pools.
    for i in 0..400 {
        one(i, &http_addr, &echo_addr);
    }
    std::thread::sleep(Duration::from_secs(2));
    let start = [footprint(&http), footprint(&echo)];
    eprintln!(
        "soak start: http {:?}, echo {:?} (KiB RSS, fds, threads)",
        start[0], start[1]
    );
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (done, failed) = (done.clone(), failed.clone());
            let (http_addr, echo_addr) = (http_addr.clone(), echo_addr.clone());
            std::thread::spawn(move || {
                loop {
                    let i = done.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if !one(i * 4 + t, &http_addr, &echo_addr) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut next_sample = total / 10;
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        let n = done.load(Ordering::Relaxed).min(total);
        if n >= next_sample {
            eprintln!(
                "soak {n}/{total} after {:?}: http {:?}, echo {:?}",
                began.elapsed(),
                footprint(&http),
                footprint(&echo)
            );
            next_sample += total / 10;
        }
        assert!(
            began.elapsed() < PATIENCE * 60,
            "the soak did not finish in an hour"
        );
    }
    for t in threads {
        t.join().unwrap();
    }
    // Let connections drain, and idle runtime threads (kept 10 s) end.
    std::thread::sleep(Duration::from_secs(12));
    let end = [footprint(&http), footprint(&echo)];
    eprintln!(
        "soak end after {:?}: http {:?}, echo {:?}; {} of {total} connections misbehaved",
        began.elapsed(),
        end[0],
        end[1],
        failed.load(Ordering::Relaxed)
    );
    for (s, e) in start.iter().zip(&end) {
        assert!(
            e.0 <= s.0 + s.0 / 10,
            "memory came back to within 10%: {} KiB -> {} KiB",
            s.0,
            e.0
        );
        assert!(e.1 <= s.1, "no descriptor leaks: {} -> {}", s.1, e.1);
        assert!(e.2 <= s.2, "no thread leaks: {} -> {}", s.2, e.2);
    }
    assert!(
        failed.load(Ordering::Relaxed) < total / 100,
        "almost every connection behaved"
    );
}
