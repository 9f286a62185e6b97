//! Several identities chosen by SNI, and SIGHUP reloads, as nginx does
//! them: against curl and a rustls client.

use std::path::{Path, PathBuf};
use std::process::Command;

use keyferry_tests::process::{
    Server, message, read_exact, relayed, rustls_client_named, sample, scrape, temp_dir, write_all,
};

/// A self-signed certificate for `name` (subject CN=`name`), written to
/// `dir`/`file`.pem and `file`.key.
fn identity(dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The subject curl reports for `name` (resolved to the test server).
fn subject_for(server: &Server, name: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-v",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "--resolve",
        ])
        .arg(format!("{name}:{}:127.0.0.1", server.port))
        .arg(format!("https://{name}:{}/", server.port))
        .output()
        .expect("run curl");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    err.lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: "))
        .unwrap_or_else(|| panic!("no subject in curl's output:\n{err}"))
        .to_string()
}

/// A rustls client that sends `sni` (or none) and reports the leaf.
fn connect(
    server: &Server,
    sni: Option<&str>,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut stream = rustls_client_named(&server.addr(), sni);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

fn leaf_pem_der(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .unwrap()
        .to_vec()
}

fn leaf(stream: &rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

fn hangup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn each_name_gets_its_own_certificate_and_no_sni_gets_the_first() {
    let dir = temp_dir("two-identities");
    let (a_cert, a_key) = identity(&dir, "a", "a.test");
    let (b_cert, b_key) = identity(&dir, "b", "b.test");
    let server = Server::start(&[
        "--echo",
        "--cert",
        a_cert.to_str().unwrap(),
        "--key",
        a_key.to_str().unwrap(),
        "--cert",
        b_cert.to_str().unwrap(),
        "--key",
        b_key.to_str().unwrap(),
    ]);
    assert_eq!(subject_for(&server, "a.test"), "CN=a.test");
    assert_eq!(subject_for(&server, "b.test"), "CN=b.test");
    assert_eq!(subject_for(&server, "other.test"), "CN=a.test");
    let none = connect(&server, None);
    assert_eq!(leaf(&none), leaf_pem_der(&a_cert));
    let b = connect(&server, Some("b.test"));
    assert_eq!(leaf(&b), leaf_pem_der(&b_cert));
}

#[test]
fn sighup_serves_the_new_certificate_keeps_open_connections_and_survives_a_broken_file() {
    let dir = temp_dir("reload");
    let (cert, key) = identity(&dir, "live", "reload.test");
    let first = leaf_pem_der(&cert);
    let server = Server::start(&[
        "--echo",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    // The certificate in service, by fingerprint, and the reloads so far.
    let in_service = || {
        let samples = scrape(&server.metrics_addr());
        let certificates: Vec<String> = samples
            .iter()
            .filter(|s| s.name == "keyferry_certificate_not_after_seconds")
            .map(|s| s.labels["fingerprint"].clone())
            .collect();
        let reloads = |outcome| {
            sample(
                &samples,
                "keyferry_config_reloads_total",
                &[("outcome", outcome)],
            )
        };
        let successful = sample(&samples, "keyferry_config_last_reload_successful", &[]);
        (
            certificates,
            reloads("success"),
            reloads("failure"),
            successful,
        )
    };
    let (at_start, ..) = in_service();
    assert_eq!(at_start.len(), 1, "{at_start:?}");
    let mut before = connect(&server, Some("reload.test"));
    assert_eq!(leaf(&before), first);
    write_all(&mut before, b"before the reload");
    assert_eq!(read_exact(&mut before, 17), b"before the reload");

    // A new certificate in the same files.
    let fresh = temp_dir("reload-new");
    let (new_cert, new_key) = identity(&fresh, "new", "reload.test");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let second = leaf_pem_der(&cert);
    hangup(&server);
    server
        .stderr
        .wait_for_event(|e| message(e) == "SIGHUP: reloaded" && !relayed(e));
    let (reloaded, successes, failures, successful) = in_service();
    assert!(
        reloaded.len() == 1
            && reloaded != at_start
            && (successes, failures, successful) == (1.0, 0.0, 1.0),
        "{reloaded:?} {successes} {failures} {successful}"
    );
    let after = connect(&server, Some("reload.test"));
    assert_eq!(
        leaf(&after),
        second,
        "a new connection gets the new certificate"
    );
    // The connection made before carries on, with the certificate it saw.
    write_all(&mut before, b"still here");
    assert_eq!(read_exact(&mut before, 10), b"still here");
    assert_eq!(leaf(&before), first);

    // A broken key: the reload fails and the new certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    hangup(&server);
    const RELOAD_FAILED: &str = "SIGHUP: reload failed; still serving the previous configuration";
    server
        .stderr
        .wait_for_event(|e| message(e) == RELOAD_FAILED && !relayed(e));
    let again = connect(&server, Some("reload.test"));
    assert_eq!(leaf(&again), second);
    // The metrics say it failed, and still show the certificate in service.
    assert_eq!(in_service(), (reloaded, 1.0, 1.0, 0.0));
}

/// A CA (written to `dir`/ca.pem) and a client certificate it signed for
/// `cn` (client.pem, client.key).
fn client_ca(dir: &Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{cn} CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// curl, with a client certificate if given: its output, or its error.
fn curl_with(server: &Server, client: Option<(&Path, &Path)>) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sSk", "--max-time", "30"]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(server.url("/mtls")).output().expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn client_certificates_from_the_client_ca_are_required_or_optional() {
    let dir = temp_dir("mtls");
    let (ca, cert, key) = client_ca(&dir, "alice");
    let other = temp_dir("mtls-other");
    let (_, stranger, stranger_key) = client_ca(&other, "mallory");

    let required = Server::start(&["--client-ca", ca.to_str().unwrap()]);
    let body = curl_with(&required, Some((&cert, &key))).expect("served with a certificate");
    assert!(body.contains("peer_certificate: CN=alice\n"), "{body}");
    assert!(body.contains("peer_issuer: CN=alice CA\n"), "{body}");
    assert!(
        body.contains("peer_subject_alt_names: DNS:alice.example\n"),
        "{body}"
    );
    let serial = body
        .lines()
        .find_map(|l| l.strip_prefix("peer_serial: "))
        .expect("a serial line");
    assert!(
        serial.len() >= 2 && serial.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
        "{serial}"
    );
    let sha256 = body
        .lines()
        .find_map(|l| l.strip_prefix("peer_sha256: "))
        .expect("a fingerprint line");
    assert_eq!(sha256.len(), 95, "{sha256}");
    let refused = curl_with(&required, None).expect_err("required refuses a client without one");
    assert!(
        refused.contains("alert") || refused.contains("SSL"),
        "{refused}"
    );
    assert!(curl_with(&required, Some((&stranger, &stranger_key))).is_err());

    let optional = Server::start(&[
        "--client-ca",
        ca.to_str().unwrap(),
        "--client-auth",
        "optional",
    ]);
    let body = curl_with(&optional, None).expect("optional serves a client without one");
    assert!(body.contains("peer_certificate: -"), "{body}");
    let body = curl_with(&optional, Some((&cert, &key))).expect("and one with one");
    assert!(body.contains("peer_certificate: CN=alice"), "{body}");
    assert!(
        curl_with(&optional, Some((&stranger, &stranger_key))).is_err(),
        "another CA's is refused"
    );
}

/// An RSA-2048 certificate for `name`, made by openssl (rcgen on ring
/// cannot make RSA keys).
fn rsa_identity(dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (c, k)
}

/// What openssl s_client reports when it offers only `sigalgs` at
/// `version`: the server's signature type and its key size.
fn signature_offered_only(server: &Server, version: &str, sigalgs: &str) -> (String, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.addr(),
            "-servername",
            "localhost",
        ])
        .args([version, "-sigalgs", sigalgs])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no {prefix:?} in s_client's output:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string()
    };
    (
        field("Peer signature type: "),
        field("Server public key is "),
    )
}

#[test]
fn rsa_and_ecdsa_identities_for_one_name_serve_each_client_what_it_can_verify() {
    let dir = temp_dir("rsa-ecdsa");
    let (ecdsa_cert, ecdsa_key) = identity(&dir, "ecdsa", "localhost");
    let (rsa_cert, rsa_key) = rsa_identity(&dir, "rsa", "localhost");
    // Both orders: the first identity is only the default, not a
    // preference that overrides what the client can verify.
    for pairs in [
        [(&ecdsa_cert, &ecdsa_key), (&rsa_cert, &rsa_key)],
        [(&rsa_cert, &rsa_key), (&ecdsa_cert, &ecdsa_key)],
    ] {
        let mut args = Vec::new();
        for (c, k) in pairs {
            args.extend(["--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()]);
        }
        let server = Server::start(&args);
        for version in ["-tls1_3", "-tls1_2"] {
            let (kind, bits) =
                signature_offered_only(&server, version, "rsa_pss_rsae_sha256:RSA+SHA256");
            assert!(kind.starts_with("RSA"), "{version}: {kind}");
            assert_eq!(bits, "2048 bit", "{version}");
            let (kind, bits) = signature_offered_only(&server, version, "ecdsa_secp256r1_sha256");
            assert_eq!(kind, "ECDSA", "{version}");
            assert_eq!(bits, "256 bit", "{version}");
        }
    }
}
