//! Revocation as operators run it with nginx: OCSP responses stapled from
//! a file (`openssl s_client -status` reads them), client CRLs (curl with
//! a revoked certificate is refused), and `--client-ca`/`--client-crl`
//! re-read on SIGHUP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keyferry_tests::process::{Server, message, relayed, temp_dir};

/// Runs openssl in `dir` with `args`, split at spaces.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An openssl CA (`ca.pem`), a leaf for localhost it signed with serial
/// 5EED01 (`leaf.pem`, `leaf.key`), and `chain.pem`, leaf then CA, so the
/// server's chain holds the issuer and the OCSP CertID's issuer key hash
/// is checked too.
fn ca_and_leaf(dir: &Path) {
    openssl(
        dir,
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
         -subj /CN=Test-OCSP-CA -days 2 -addext basicConstraints=critical,CA:TRUE",
    );
    openssl(
        dir,
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
         -subj /CN=localhost -addext subjectAltName=DNS:localhost",
    );
    openssl(
        dir,
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 0x5EED01 -days 1 \
         -out leaf.pem -copy_extensions copy",
    );
    let chain = [
        std::fs::read_to_string(dir.join("leaf.pem")).unwrap(),
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
}

/// An OCSP response from the CA about the leaf, made by `openssl ocsp`
/// from an index that says `status` (`V` valid, `R` revoked), written to
/// `out`.
fn ocsp_response(dir: &Path, status: char, out: &str) {
    let revoked = if status == 'R' { "261201000000Z" } else { "" };
    std::fs::write(
        dir.join("index.txt"),
        format!("{status}\t301231235959Z\t{revoked}\t5EED01\tunknown\t/CN=localhost\n"),
    )
    .unwrap();
    openssl(
        dir,
        "ocsp -issuer ca.pem -cert leaf.pem -no_nonce -reqout req.der",
    );
    openssl(
        dir,
        &format!(
            "ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin req.der \
             -respout {out} -ndays 1"
        ),
    );
}

/// What `openssl s_client -status` says of the stapled response.
fn stapled(server: &Server, dir: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-status",
            "-servername",
            "localhost",
            "-connect",
        ])
        .arg(server.addr())
        .arg("-CAfile")
        .arg(dir.join("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn this_update(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix("This Update: "))
        .unwrap_or_else(|| panic!("no This Update in:\n{status}"))
        .to_string()
}

fn hangup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_ocsp_response_is_stapled_checked_and_re_read_on_sighup() {
    let dir = temp_dir("ocsp");
    ca_and_leaf(&dir);
    ocsp_response(&dir, 'V', "good.der");
    let response = dir.join("stapled.der");
    std::fs::copy(dir.join("good.der"), &response).unwrap();
    let (chain, key) = (dir.join("chain.pem"), dir.join("leaf.key"));
    let args = [
        "--echo",
        "--cert",
        path(&chain),
        "--key",
        path(&key),
        "--ocsp",
        path(&response),
    ];
    let server = Server::start(&args);

    let status = stapled(&server, &dir);
    assert!(
        status.contains("OCSP Response Status: successful"),
        "{status}"
    );
    assert!(status.contains("Cert Status: good"), "{status}");
    assert!(status.contains("Serial Number: 5EED01"), "{status}");
    assert!(status.contains("Verify return code: 0 (ok)"), "{status}");
    let first = this_update(&status);

    // A response that says revoked is refused, and the good one stays.
    ocsp_response(&dir, 'R', "stapled.der");
    hangup(&server);
    let failed = server
        .stderr
        .wait_for_event(|e| message(e).starts_with("SIGHUP: reload failed") && !relayed(e));
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("stapled.der"), "{failed}");
    assert!(error.contains("revoked"), "{failed}");
    assert_eq!(this_update(&stapled(&server, &dir)), first);

    // A newer good response is served after the next SIGHUP.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ocsp_response(&dir, 'V', "stapled.der");
    hangup(&server);
    server
        .stderr
        .wait_for_event(|e| message(e) == "SIGHUP: reloaded" && !relayed(e));
    let status = stapled(&server, &dir);
    assert!(status.contains("Cert Status: good"), "{status}");
    assert_ne!(this_update(&status), first, "the new response is stapled");

    // A client that does not ask gets no response.
    let out = Command::new("openssl")
        .args(["s_client", "-servername", "localhost", "-connect"])
        .arg(server.addr())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("OCSP Response Status"));
}

#[test]
fn an_ocsp_response_that_cannot_be_stapled_fails_the_start_and_the_check() {
    let dir = temp_dir("ocsp-bad");
    ca_and_leaf(&dir);
    ocsp_response(&dir, 'R', "revoked.der");
    let other = temp_dir("ocsp-other");
    ca_and_leaf(&other);
    ocsp_response(&other, 'V', "other.der");
    let (chain, key) = (dir.join("chain.pem"), dir.join("leaf.key"));
    for (response, reason) in [
        (dir.join("revoked.der"), "revoked"),
        // The same serial from another CA: the issuer's key hash differs.
        (other.join("other.der"), "about none of the --cert"),
        (dir.join("leaf.pem"), "not a DER OCSP response"),
    ] {
        for check in [false, true] {
            let mut command = Command::new(keyferry_tests::process::keyferry());
            command.args(["serve", "--listen", "127.0.0.1:0", "--echo", "--cert"]);
            command.args([path(&chain), "--key", path(&key), "--ocsp", path(&response)]);
            if check {
                command.arg("--check");
            }
            let out = command.stdin(Stdio::null()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(path(&response)), "{err}");
            assert!(err.contains(reason), "{reason}: {err}");
        }
    }
}

/// A CA (`ca.pem`, its key kept for CRLs) and client certificates it
/// signed for `names`, with serial numbers 1, 2, ...
struct ClientCa {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    fn new(dir: &Path, cn: &str, names: &[&str]) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        std::fs::write(dir.join("ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        for (i, name) in names.iter().enumerate() {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params =
                rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *name);
            params.serial_number = Some(rcgen::SerialNumber::from(i as u64 + 1));
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self {
            dir: dir.to_path_buf(),
            issuer,
        }
    }

    /// Writes `crl.pem`, revoking these serial numbers.
    fn revoke(&self, serials: &[u64]) -> PathBuf {
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(serials.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap();
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }

    fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// curl with a client certificate: whether it was served.
fn served(server: &Server, (cert, key): (PathBuf, PathBuf)) -> bool {
    Command::new("curl")
        .args(["-sSk", "--max-time", "30", "-o", "/dev/null", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(server.url("/"))
        .stderr(Stdio::null())
        .status()
        .expect("run curl")
        .success()
}

#[test]
fn a_client_crl_refuses_revoked_certificates_and_sighup_re_reads_it() {
    let dir = temp_dir("crl");
    let ca = ClientCa::new(&dir, "Clients CA", &["alice", "bob"]);
    let crl = ca.revoke(&[2]);
    let server = Server::start(&[
        "--client-ca",
        path(&dir.join("ca.pem")),
        "--client-crl",
        path(&crl),
    ]);
    assert!(served(&server, ca.client("alice")));
    assert!(!served(&server, ca.client("bob")), "bob is revoked");
    let refused = server.stderr.wait_for_event(|e| {
        message(e) == "handshake failed" && e["error"].as_str().unwrap_or("").contains("revoked")
    });
    assert!(!relayed(&refused));

    // Alice revoked too: after SIGHUP she is refused.
    ca.revoke(&[1, 2]);
    hangup(&server);
    server
        .stderr
        .wait_for_event(|e| message(e) == "SIGHUP: reloaded" && !relayed(e));
    assert!(!served(&server, ca.client("alice")));

    // A broken CRL leaves the last one in service.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    hangup(&server);
    let failed = server
        .stderr
        .wait_for_event(|e| message(e).starts_with("SIGHUP: reload failed") && !relayed(e));
    assert!(
        failed["error"].as_str().unwrap_or("").contains("crl.pem"),
        "{failed}"
    );
    assert!(!served(&server, ca.client("alice")));
    assert!(!served(&server, ca.client("bob")));
}

#[test]
fn sighup_re_reads_the_client_ca() {
    let dir = temp_dir("client-ca-reload");
    let first = ClientCa::new(&dir, "First CA", &["alice"]);
    let next_dir = temp_dir("client-ca-reload-next");
    let next = ClientCa::new(&next_dir, "Next CA", &["carol"]);
    let ca = dir.join("clients.pem");
    std::fs::copy(dir.join("ca.pem"), &ca).unwrap();
    let server = Server::start(&["--client-ca", path(&ca)]);
    assert!(served(&server, first.client("alice")));
    assert!(!served(&server, next.client("carol")));

    std::fs::copy(next_dir.join("ca.pem"), &ca).unwrap();
    hangup(&server);
    server
        .stderr
        .wait_for_event(|e| message(e) == "SIGHUP: reloaded" && !relayed(e));
    assert!(served(&server, next.client("carol")));
    assert!(!served(&server, first.client("alice")));
}
