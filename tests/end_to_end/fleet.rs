//! Running several `serve` processes as a fleet, without a home-made
//! cluster layer: `SO_REUSEPORT` on one host, and the HAProxy PROXY v2
//! header so the client's address survives an L4 load balancer.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use keyferry_tests::process::{
    PATIENCE, Server, has_fields, message, pem_identity, read_exact, relayed, rustls_client,
    temp_dir, write_all,
};

/// Whether `e` is the per-connection event of a client the PROXY header
/// named 203.0.113.9:4444, as a worker logged it.
fn served_behind_the_balancer(e: &serde_json::Value) -> bool {
    has_fields(
        e,
        &[("message", "connection"), ("peer", "203.0.113.9:4444")],
    ) && relayed(e)
}

#[test]
fn two_servers_share_a_port_with_reuse_port() {
    let args = ["--echo", "--workers", "0", "--reuse-port"];
    // The first takes a port the OS picks; the second joins it there (no
    // port is let go and taken again in between).
    let a = Server::start_listening("127.0.0.1:0", &args);
    let address = a.addr();
    let b = Server::start_listening(&address, &args);
    for i in 0..24 {
        let mut c = rustls_client(&address);
        let text = format!("connection {i}");
        write_all(&mut c, text.as_bytes());
        assert_eq!(read_exact(&mut c, text.len()), text.as_bytes());
    }
    // Lines appear as connections end; the kernel spreads new connections
    // over both listeners by their addresses.
    let served = |s: &Server| {
        s.stderr
            .events()
            .iter()
            .filter(|e| message(e) == "connection")
            .count()
    };
    let start = std::time::Instant::now();
    while served(&a) + served(&b) < 24 {
        assert!(
            start.elapsed() < PATIENCE,
            "not every connection was logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        served(&a) > 0 && served(&b) > 0,
        "both servers served: {} and {}",
        served(&a),
        served(&b)
    );
}

/// A TLS client behind a PROXY v2 header that says it is `client`.
fn proxied_client(
    server: &Server,
    client: std::net::SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let header = keyferry_server::proxy::header(client, sock.peer_addr().unwrap());
    sock.write_all(&header).unwrap();
    let config = keyferry::tls::TlsOptions::default()
        .client_config(keyferry::tls::ServerVerification::DangerousNone)
        .unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn a_proxy_v2_header_gives_the_log_the_client_address() {
    let server = Server::start(&["--echo", "--proxy-protocol"]);
    let client = "203.0.113.9:4444".parse().unwrap();
    let mut tls = proxied_client(&server, client);
    write_all(&mut tls, b"behind a balancer");
    assert_eq!(read_exact(&mut tls, 17), b"behind a balancer");
    drop(tls);
    server.stderr.wait_for_event(served_behind_the_balancer);

    // Without the header the connection is refused, and logged.
    let mut c = TcpStream::connect(server.addr()).unwrap();
    c.write_all(b"\x16\x03\x01\x00\x05hello-not-proxy").unwrap();
    server
        .stderr
        .wait_for_event(|e| message(e) == "PROXY header refused" && !relayed(e));
}

#[test]
fn proxy_headers_are_believed_only_from_the_balancers() {
    // 127.0.0.2 is not this test's address: every header here is refused.
    let elsewhere = Server::start(&["--echo", "--proxy-protocol", "--proxy-from", "127.0.0.2/32"]);
    let mut sock = TcpStream::connect(elsewhere.addr()).unwrap();
    let client = "203.0.113.9:4444".parse().unwrap();
    sock.write_all(&keyferry_server::proxy::header(
        client,
        sock.peer_addr().unwrap(),
    ))
    .unwrap();
    elsewhere.stderr.wait_for_event(|e| {
        message(e) == "PROXY header expected from a trusted balancer; this peer is not one; closed"
            && !relayed(e)
    });
    // The loopback network is: the header is believed.
    let trusted = Server::start(&["--echo", "--proxy-protocol", "--proxy-from", "127.0.0.0/8"]);
    let mut tls = proxied_client(&trusted, client);
    write_all(&mut tls, b"from a balancer");
    assert_eq!(read_exact(&mut tls, 15), b"from a balancer");
    drop(tls);
    trusted.stderr.wait_for_event(served_behind_the_balancer);
    // Nowhere in the refusing server's log, in any field: the whole text.
    assert!(
        !elsewhere.stderr.text().contains("203.0.113.9"),
        "never believed"
    );
}

#[test]
fn a_ticket_from_one_server_resumes_on_another_sharing_the_keys() {
    let dir = temp_dir("ticket-keys");
    let keys = dir.join("ticket.key");
    let mut bytes = vec![0u8; 48];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    std::fs::write(&keys, &bytes).unwrap();
    let (cert, key) = pem_identity("fleet-identity");
    let args = [
        "--echo",
        "--ticket-keys",
        keys.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let a = Server::start(&args);
    let b = Server::start(&args);
    let config = Arc::new(
        keyferry::tls::TlsOptions::default()
            .with_versions(&[&rustls::version::TLS13])
            .client_config(keyferry::tls::ServerVerification::DangerousNone)
            .unwrap(),
    );
    let connect = |server: &Server| {
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let sock = TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        write_all(&mut tls, b"ticket please");
        assert_eq!(read_exact(&mut tls, 13), b"ticket please");
        tls.conn.handshake_kind()
    };
    assert_eq!(connect(&a), Some(rustls::HandshakeKind::Full));
    assert_eq!(
        connect(&b),
        Some(rustls::HandshakeKind::Resumed),
        "the other server opened the first one's ticket"
    );
    // A server with other keys cannot.
    let other_keys = dir.join("other.key");
    std::fs::write(&other_keys, [7u8; 48]).unwrap();
    let c = Server::start(&[
        "--echo",
        "--ticket-keys",
        other_keys.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(connect(&c), Some(rustls::HandshakeKind::Full));
}
