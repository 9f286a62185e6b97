//! ACME (RFC 8555) against Pebble, Let's Encrypt's test CA: `serve
//! --acme-directory` obtains a certificate by answering TLS-ALPN-01 on its
//! own port, serves it without a restart, serves the stored one after a
//! restart, and renews it while serving.

use std::path::Path;
use std::process::{Command, Stdio};

use keyferry_tests::process::{
    Killed, Server, free_port, message, relayed, rustls_client_named, temp_dir, wait_for_port,
};

/// Pebble and its DNS (pebble-challtestsrv, which answers 127.0.0.1 for
/// every name), validating TLS-ALPN-01 on `tls_port`. Returns them, the
/// directory URL and the CA file its HTTPS is signed by.
fn pebble(dir: &Path, tls_port: u16) -> (Killed, Killed, String, String) {
    // Pebble's own HTTPS certificate, from a CA of ours.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble's HTTPS CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    std::fs::write(path("ca.pem"), ca_pem).unwrap();
    std::fs::write(path("pebble.pem"), leaf.pem()).unwrap();
    std::fs::write(path("pebble.key"), key.serialize_pem()).unwrap();
    let (acme_port, management, dns, dns_management) =
        (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        path("pebble.json"),
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": path("pebble.pem"),
            "privateKey": path("pebble.key"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let challtestsrv = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{dns_management}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pebble-challtestsrv (apt-get install pebble)");
    let challtestsrv = Killed(challtestsrv);
    let pebble = Command::new("pebble")
        .args(["-config", &path("pebble.json")])
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        // No random delays, and no random nonce rejections.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pebble (apt-get install pebble)");
    let pebble = Killed(pebble);
    wait_for_port(acme_port);
    wait_for_port(management);
    // The root Pebble issues under (its management API serves it), for
    // clients of the issued certificate.
    let out = Command::new("curl")
        .args(["-sSf", "--cacert", &path("ca.pem")])
        .arg(format!("https://127.0.0.1:{management}/roots/0"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("roots.pem"), out.stdout).unwrap();
    (
        pebble,
        challtestsrv,
        format!("https://127.0.0.1:{acme_port}/dir"),
        path("ca.pem"),
    )
}

/// The SHA-256 fingerprint of the certificate served for `name`, once
/// curl has verified it against Pebble's root `roots`.
fn verified_fingerprint(server: &Server, name: &str, roots: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null", "--cacert"])
        .arg(roots)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", server.port))
        .arg(format!("https://{name}:{}/", server.port))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl verifies {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = rustls_client_named(&server.addr(), Some(name));
    while client.conn.is_handshaking() {
        client.conn.complete_io(&mut client.sock).unwrap();
    }
    keyferry::tls::fingerprint(&client.conn.peer_certificates().unwrap()[0])
}

fn obtained(server: &Server) -> String {
    let event = server
        .stderr
        .wait_for_event(|e| message(e) == "ACME: certificate obtained; serving it" && !relayed(e));
    event["fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn a_certificate_is_obtained_from_pebble_served_stored_and_renewed_without_a_restart() {
    let dir = temp_dir("acme");
    let port = free_port();
    let (_pebble, _dns, directory, ca) = pebble(&dir, port);
    let state = dir.join("state");
    let listen = format!("127.0.0.1:{port}");
    let args = |renew_days: &'static str| {
        vec![
            "--acme-directory".to_string(),
            directory.clone(),
            "--acme-ca".into(),
            ca.clone(),
            "--acme-domain".into(),
            "keyferry.test".into(),
            "--acme-domain".into(),
            "www.keyferry.test".into(),
            "--acme-state".into(),
            state.to_str().unwrap().into(),
            "--acme-renew-days".into(),
            renew_days.into(),
        ]
    };
    let roots = dir.join("roots.pem");

    // First start: a stand-in until Pebble has validated the port and
    // issued the certificate, which is then served with no restart.
    let first_args = args("30");
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let first = Server::start_listening(&listen, &first_args);
    let issued = obtained(&first);
    for name in ["keyferry.test", "www.keyferry.test"] {
        assert_eq!(verified_fingerprint(&first, name, &roots), issued);
    }
    let key = std::fs::metadata(state.join("certificate.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    drop(first);

    // A restart serves the stored certificate at once; with renewal due
    // (100,000 days ahead) it gets a new one while serving the old.
    let renew_args = args("100000");
    let renew_args: Vec<&str> = renew_args.iter().map(String::as_str).collect();
    let second = Server::start_listening(&listen, &renew_args);
    second
        .stderr
        .wait_for_event(|e| message(e) == "ACME: serving the stored certificate" && !relayed(e));
    let renewed = obtained(&second);
    assert_ne!(renewed, issued, "a new certificate");
    assert_eq!(
        verified_fingerprint(&second, "keyferry.test", &roots),
        renewed
    );
    // The validation connections were answered and closed, not served.
    assert!(
        second
            .stderr
            .events()
            .iter()
            .all(|e| message(e) != "connection" || e["sni"] != "keyferry.test" || relayed(e))
    );
}
