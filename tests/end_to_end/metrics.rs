//! `serve --metrics`: a scrape after a known mix of connections reports
//! exactly that mix, in text the Prometheus project's parser accepts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keyferry_tests::process::{
    PATIENCE, Sample, Server, read_exact, rustls_client, sample, scrape, write_all,
};

const CLEAN: usize = 3;
const TRUNCATED: usize = 2;
const BAD_MAC: usize = 2;

/// Echo, then close_notify both ways.
fn clean(addr: &str) {
    let mut c = rustls_client(addr);
    write_all(&mut c, b"clean");
    assert_eq!(read_exact(&mut c, 5), b"clean");
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the server answers close_notify with its own");
}

/// Echo, then the TCP connection ends without close_notify.
fn truncated(addr: &str) {
    let mut c = rustls_client(addr);
    write_all(&mut c, b"cut");
    assert_eq!(read_exact(&mut c, 3), b"cut");
    c.sock.shutdown(std::net::Shutdown::Both).unwrap();
}

/// Echo, then an application-data record no key made: the server must
/// answer bad_record_mac and close.
fn bad_mac(addr: &str) {
    let mut c = rustls_client(addr);
    write_all(&mut c, b"mac");
    assert_eq!(read_exact(&mut c, 3), b"mac");
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x5a; 40]);
    c.sock.write_all(&forged).unwrap();
    let mut buf = [0u8; 64];
    let err = c
        .read(&mut buf)
        .expect_err("the server's alert ends the connection");
    assert!(
        err.to_string().contains("BadRecordMac"),
        "expected a bad_record_mac alert, got {err}"
    );
}

/// Not TLS at all: a failed handshake.
fn not_tls(addr: &str) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    sock.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
}

/// Scrapes until every connection of the mix has been counted as ended
/// (workers report endings a moment after the client sees them).
fn settled(metrics: &str, ended: usize) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let samples = scrape(metrics);
        let counted = sample(&samples, "keyferry_connections_ended_total", &[]);
        if counted as usize >= ended && sample(&samples, "keyferry_connections_open", &[]) == 0.0 {
            return samples;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{counted} of {ended} endings counted: {samples:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_known_mix_is_counted_exactly(workers: &str) {
    let server = Server::start(&["--echo", "--workers", workers, "--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let addr = server.addr();
    for _ in 0..CLEAN {
        clean(&addr);
    }
    for _ in 0..TRUNCATED {
        truncated(&addr);
    }
    for _ in 0..BAD_MAC {
        bad_mac(&addr);
    }
    not_tls(&addr);
    let served = CLEAN + TRUNCATED + BAD_MAC;
    let s = settled(&metrics, served);
    let ended = |ending| {
        sample(
            &s,
            "keyferry_connections_ended_total",
            &[("ending", ending)],
        )
    };
    assert_eq!(ended("close_notify"), CLEAN as f64, "{s:?}");
    assert_eq!(ended("truncated"), TRUNCATED as f64, "{s:?}");
    assert_eq!(ended("sent_alert"), BAD_MAC as f64, "{s:?}");
    assert_eq!(
        sample(&s, "keyferry_connections_ended_total", &[]),
        served as f64,
        "nothing else ended: {s:?}"
    );
    assert_eq!(
        sample(&s, "keyferry_connections_accepted_total", &[]),
        (served + 1) as f64
    );
    assert_eq!(
        sample(
            &s,
            "keyferry_handshakes_total",
            &[("version", "TLSv1.3"), ("outcome", "completed")]
        ),
        served as f64,
        "{s:?}"
    );
    assert_eq!(
        sample(&s, "keyferry_handshakes_total", &[("outcome", "failed")]),
        1.0,
        "{s:?}"
    );
    assert_eq!(
        sample(&s, "keyferry_handoff_seconds_count", &[]),
        served as f64
    );
    assert!(sample(&s, "keyferry_handoff_seconds_sum", &[]) > 0.0);
    // Each echo is one record each way, beyond close_notify and alerts.
    let received = sample(&s, "keyferry_bytes_total", &[("direction", "received")]);
    let sent = sample(&s, "keyferry_bytes_total", &[("direction", "sent")]);
    assert!(received >= (served * 22) as f64, "{received}");
    assert!(sent >= (served * 22) as f64, "{sent}");
    assert_eq!(sample(&s, "keyferry_guest_traps_total", &[]), 0.0);
    assert_eq!(sample(&s, "keyferry_connections_refused_total", &[]), 0.0);
    let pools: Vec<&Sample> = s
        .iter()
        .filter(|x| x.name == "keyferry_ready_instances")
        .collect();
    let expected_pools = workers.parse::<usize>().unwrap().max(1);
    assert_eq!(pools.len(), expected_pools, "{pools:?}");
    // The build, the certificate made at start (rcgen's run to 4096), the
    // configuration loaded at start, and the process serving the scrape.
    assert_eq!(sample(&s, "keyferry_build_info", &[]), 1.0);
    assert_eq!(
        sample(&s, "keyferry_certificate_not_after_seconds", &[]),
        67_090_118_400.0
    );
    assert_eq!(
        sample(&s, "keyferry_config_last_reload_successful", &[]),
        1.0
    );
    assert!(sample(&s, "process_cpu_seconds_total", &[]) > 0.0);
    assert!(sample(&s, "process_open_fds", &[]) >= 3.0);
    assert!(sample(&s, "process_resident_memory_bytes", &[]) > 1e6);
    // Health: connections are being taken.
    let mut health = TcpStream::connect(&metrics).unwrap();
    health.set_read_timeout(Some(PATIENCE)).unwrap();
    health
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nserving\n"),
        "{answer}"
    );
}

#[test]
fn metrics_count_a_known_mix_with_workers() {
    a_known_mix_is_counted_exactly("2");
}

#[test]
fn metrics_count_a_known_mix_in_one_process() {
    a_known_mix_is_counted_exactly("0");
}
