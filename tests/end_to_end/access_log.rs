//! `--access-log`: a line per request, which the HTTP application in the
//! sandbox reports (the built-in responder, and a served wasi:http
//! component through the front), with the client, the status, the bytes,
//! the time it took and the connection's facts; `--quiet-from` keeps a
//! health checker's requests out of the INFO log.

use std::process::Command;

use keyferry_tests::process::{
    Server, has_fields, message, read_exact, relayed, rustls_client, temp_dir, write_all,
};
use keyferry_tests::tenants;
use serde_json::Value;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_request(e: &Value) -> bool {
    message(e) == "request" && e["target"] == "keyferry::access"
}

/// A CA and a client certificate it signed for `cn`: (ca.pem, cert, key).
fn client_certificate(cn: &str) -> (String, String, String) {
    let dir = temp_dir("access-log-mtls");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = ["ca.pem", "client.pem", "client.key"].map(|f| dir.join(f));
    std::fs::write(&paths[0], ca_pem).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    let [ca, cert, key] = paths.map(|p| p.to_str().unwrap().to_string());
    (ca, cert, key)
}

#[test]
fn the_built_in_responder_logs_each_request_in_both_placements() {
    let (ca, cert, key) = client_certificate("alice");
    for workers in ["1", "0"] {
        let server = Server::start(&[
            "--access-log",
            "--workers",
            workers,
            "--client-ca",
            &ca,
            "--client-auth",
            "optional",
        ]);
        // Two requests on one connection (curl keeps it alive).
        curl(&[&server.url("/first"), &server.url("/second?x=1")]);
        let lines = server.stderr.wait_for_events(2, is_request);
        for (line, path) in lines.iter().zip(["/first", "/second?x=1"]) {
            assert!(
                has_fields(
                    line,
                    &[
                        ("method", "GET"),
                        ("path", path),
                        ("alpn", "http/1.1"),
                        ("client", "-")
                    ]
                ),
                "{line}"
            );
            assert_eq!(line["status"], 200, "{line}");
            assert_eq!(line["resumed"], false, "{line}");
            assert!(line["bytes_out"].as_u64().unwrap() > 100, "{line}");
            assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
            assert_eq!(relayed(line), workers == "1", "{line}");
            assert!(
                line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{line}"
            );
        }
        // A body, and a client certificate.
        curl(&[
            "--cert",
            &cert,
            "--key",
            &key,
            "--data-binary",
            "twelve bytes",
            &server.url("/upload"),
        ]);
        let line = server
            .stderr
            .wait_for_event(|e| is_request(e) && e["path"] == "/upload");
        assert!(
            has_fields(&line, &[("method", "POST"), ("client", "CN=alice")]),
            "{line}"
        );
        assert_eq!(line["bytes_in"], 12, "{line}");
        // A request that does not parse is logged too, as nginx logs a 400.
        let mut raw = rustls_client(&server.addr());
        write_all(&mut raw, b"NONSENSE\r\n\r\n");
        assert_eq!(read_exact(&mut raw, 12), b"HTTP/1.1 400");
        let line = server
            .stderr
            .wait_for_event(|e| is_request(e) && e["status"] == 400);
        assert!(
            has_fields(&line, &[("method", "-"), ("path", "-")]),
            "{line}"
        );
    }
}

#[test]
fn requests_are_not_logged_without_access_log_nor_at_info_from_quiet_networks() {
    for args in [
        &[][..],
        &["--access-log", "--quiet-from", "127.0.0.0/8"][..],
    ] {
        let server = Server::start(args);
        curl(&[&server.url("/health")]);
        // The connection's own line comes after its request would have.
        server.stderr.wait_for_event(|e| message(e) == "connection");
        assert!(
            !server.stderr.events().iter().any(is_request),
            "{args:?}: {}",
            server.stderr.text()
        );
    }
    // At debug, the quiet network's requests are there.
    let server = Server::start_with_env(
        "127.0.0.1:0",
        &["--access-log", "--quiet-from", "127.0.0.1"],
        &[("KEYFERRY_LOG", "debug")],
    );
    curl(&[&server.url("/health")]);
    let line = server.stderr.wait_for_event(is_request);
    assert_eq!(line["level"], "DEBUG", "{line}");
}

#[test]
fn a_served_wasi_http_component_s_requests_are_logged_by_the_front() {
    let server = Server::start(&["--guest", tenants::WSTD, "--access-log"]);
    let echoed = curl(&["--data-binary", "wstd echo", &server.url("/echo")]);
    assert_eq!(echoed, "wstd echo");
    curl(&[&server.url("/")]);
    let lines = server.stderr.wait_for_events(2, is_request);
    assert!(
        has_fields(&lines[0], &[("method", "POST"), ("path", "/echo")]),
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["bytes_in"], 9);
    assert_eq!(lines[0]["bytes_out"], 9);
    assert!(
        has_fields(&lines[1], &[("method", "GET"), ("path", "/")]),
        "{}",
        lines[1]
    );
    assert!(lines[1]["bytes_out"].as_u64().unwrap() > 0, "{}", lines[1]);
}
