//! curl and openssl s_client against `keyferry serve`.

use std::io::Write;
use std::process::{Command, Stdio};

use keyferry_tests::process::{Captured, Server, has_fields, pem_identity, relayed};

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn curl_gets_responses_made_inside_the_guest_over_tls13_and_tls12() {
    let server = Server::start(&[]);
    // Two requests on one keep-alive connection.
    let body = curl(&[&server.url("/first"), &server.url("/second")]);
    assert_eq!(
        body.matches("produced inside the WebAssembly sandbox")
            .count(),
        2,
        "{body}"
    );
    assert!(
        body.contains("request: GET /second") && body.contains("requests_on_connection: 2"),
        "{body}"
    );
    assert!(body.contains("tls_version: TLSv1.3"), "{body}");

    let body = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        &server.url("/a"),
        &server.url("/b"),
        &server.url("/c"),
    ]);
    assert!(
        body.contains("tls_version: TLSv1.2") && body.contains("requests_on_connection: 3"),
        "{body}"
    );

    // SNI and ALPN reach the guest.
    let body = curl(&[
        "--resolve",
        &format!("localhost:{}:127.0.0.1", server.port),
        &format!("https://localhost:{}/sni", server.port),
    ]);
    assert!(body.contains("server_name: localhost"), "{body}");
    // One per-connection event, from a worker, has both: a TLS 1.3
    // connection closed cleanly, in the suite the server prefers.
    server.stderr.wait_for_event(|e| {
        has_fields(
            e,
            &[
                ("message", "connection"),
                ("ending", "close_notify"),
                ("suite", "TLS_CHACHA20_POLY1305_SHA256"),
            ],
        ) && relayed(e)
    });
}

#[test]
fn curl_with_alpn_and_a_pem_identity() {
    let (cert, key) = pem_identity("alpn");
    let server = Server::start(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--alpn",
        "http/1.1",
    ]);
    let body = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "--resolve",
        &format!("localhost:{}:127.0.0.1", server.port),
        &format!("https://localhost:{}/", server.port),
    ]);
    assert!(body.contains("alpn: http/1.1"), "{body}");
}

/// An interactive s_client: lines go in, echoes come out, `k`/`K` lines
/// are s_client's KeyUpdate commands.
struct SClient {
    child: std::process::Child,
    out: Captured,
    err: Captured,
}

impl SClient {
    fn start(port: u16, args: &[&str]) -> SClient {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl s_client");
        let out = Captured::spawn(child.stdout.take().unwrap());
        let err = Captured::spawn(child.stderr.take().unwrap());
        let client = SClient { child, out, err };
        client.out.wait_for("Verify return code");
        client
    }

    /// Checks what s_client says it negotiated.
    fn negotiated(&self, version: &str, cipher: &str) {
        let out = self.out.text();
        assert!(
            out.contains(&format!("New, {version}, Cipher is {cipher}\n")),
            "expected {version} with {cipher}:\n{out}"
        );
    }

    fn line(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// A command line (`k`, `K`): s_client reads a whole stdin chunk as the
    /// command, so wait until it acts before writing the next line.
    fn command(&mut self, letter: &str) {
        let before = self.err.text().matches("KEYUPDATE").count();
        self.line(letter);
        let start = std::time::Instant::now();
        while self.err.text().matches("KEYUPDATE").count() == before {
            assert!(
                start.elapsed() < keyferry_tests::process::PATIENCE,
                "s_client did not send a KeyUpdate"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn echo(&mut self, marker: &str) {
        self.line(marker);
        let text = self.out.wait_for(&format!("{marker}\n"));
        assert_eq!(
            text.matches(marker).count(),
            1,
            "echoed exactly once: {text}"
        );
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn openssl_s_client_echo_in_every_tls13_suite_with_key_updates() {
    let server = Server::start(&["--echo"]);
    for suite in [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ] {
        let mut c = SClient::start(server.port, &["-tls1_3", "-ciphersuites", suite]);
        c.negotiated("TLSv1.3", suite);
        c.echo(&format!("{suite}-before-update"));
        c.command("k"); // KeyUpdate, update_not_requested
        c.echo(&format!("{suite}-after-k"));
        c.command("K"); // KeyUpdate, update_requested: the guest must answer
        c.echo(&format!("{suite}-after-K"));
        c.command("K");
        c.echo(&format!("{suite}-after-second-K"));
        drop(c);
        // The server's per-connection event names the suite it served.
        server.stderr.wait_for_event(|e| {
            has_fields(e, &[("message", "connection"), ("suite", suite)]) && relayed(e)
        });
    }
    let served = server
        .stderr
        .events()
        .into_iter()
        .filter(|e| has_fields(e, &[("message", "connection"), ("version", "TLSv1.3")]))
        .count();
    assert_eq!(
        served,
        3,
        "one event per connection:\n{}",
        server.stderr.text()
    );
}

#[test]
fn openssl_s_client_echo_over_tls12_padding_and_small_fragments() {
    let server = Server::start(&["--echo"]);
    for cipher in [
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ] {
        let mut c = SClient::start(server.port, &["-tls1_2", "-cipher", cipher]);
        c.negotiated("TLSv1.2", cipher);
        c.echo(&format!("tls12-{cipher}"));
    }
    let mut c = SClient::start(server.port, &["-tls1_3", "-record_padding", "512"]);
    // The server prefers ChaCha20-Poly1305, the fast suite in Wasm.
    c.negotiated("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256");
    c.echo("padded-records-reach-the-guest");
    let mut c = SClient::start(server.port, &["-max_send_frag", "512"]);
    c.negotiated("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256");
    let long = "x".repeat(3000);
    c.echo(&format!("fragmented-{long}-end"));
}

#[test]
fn the_log_line_counts_data_sent_with_the_finished() {
    let server = Server::start(&["--echo"]);
    let config = keyferry::tls::TlsOptions::default()
        .client_config(keyferry::tls::ServerVerification::DangerousNone)
        .unwrap();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    // Written before the handshake ends: rustls sends it in the same flight
    // as its Finished, so it reaches the guest through the handoff.
    conn.writer().write_all(b"early bird").unwrap();
    let mut sock = std::net::TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(keyferry_tests::process::PATIENCE))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    while conn.wants_write() {
        conn.write_tls(&mut sock).unwrap();
    }
    let mut tls = rustls::StreamOwned::new(conn, sock);
    assert_eq!(
        keyferry_tests::process::read_exact(&mut tls, 10),
        b"early bird"
    );
    drop(tls);
    let connection = server
        .stderr
        .wait_for_event(|e| has_fields(e, &[("message", "connection")]) && relayed(e));
    let bytes_in = connection["bytes_in"]
        .as_u64()
        .unwrap_or_else(|| panic!("a numeric bytes_in field: {connection}"));
    assert!(bytes_in >= 10, "the early data is counted: {connection}");
}
