//! The handshake's alerts, as RFC 8446 section 6 and RFC 5246 section 7.2
//! name them, driven from raw sockets and from openssl s_client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use keyferry_tests::process::{PATIENCE, Server, message, pem_identity, relayed};

const UNEXPECTED_MESSAGE: u8 = 10;
const RECORD_OVERFLOW: u8 = 22;

/// Sends `bytes` on a fresh connection and returns the description of the
/// first alert the server sends in the clear, and every record type seen
/// before it.
fn alert_after(server: &Server, bytes: &[u8]) -> (Option<u8>, Vec<u8>) {
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    raw.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    let mut types = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let Some(body) = rest.get(5..5 + len) else {
            break;
        };
        if rest[0] == 21 && len == 2 {
            assert_eq!(body[0], 2, "a fatal alert");
            return (Some(body[1]), types);
        }
        types.push(rest[0]);
        rest = &rest[5 + len..];
    }
    (None, types)
}

/// A real ClientHello handshake message, as rustls sends it.
fn client_hello() -> Vec<u8> {
    let config = keyferry::tls::TlsOptions::default()
        .client_config(keyferry::tls::ServerVerification::DangerousNone)
        .unwrap();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut wire = Vec::new();
    conn.write_tls(&mut wire).unwrap();
    assert_eq!(wire[0], 22, "a handshake record");
    let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
    assert_eq!(wire.len(), 5 + len, "one record");
    wire[5..].to_vec()
}

fn record(content_type: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap();
    let mut r = vec![content_type, 3, 1];
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(payload);
    r
}

#[test]
fn oversize_records_during_the_handshake_get_record_overflow() {
    let server = Server::start(&["--workers", "0", "--echo"]);
    // Headers over 2^14+256, each sent alone: the server must not wait for
    // a body it will refuse (it used to, or to read the body as a header).
    for len in [16641u16, 17000, 18432, 0xffff] {
        let mut header = vec![22, 3, 1];
        header.extend_from_slice(&len.to_be_bytes());
        let (alert, before) = alert_after(&server, &header);
        assert_eq!(alert, Some(RECORD_OVERFLOW), "length {len}");
        assert!(before.is_empty(), "nothing before the alert: {before:?}");
    }
    // A well-formed ClientHello in a record padded past 2^14: a plaintext
    // record over the limit, refused before rustls answers it.
    let mut padded = client_hello();
    padded.resize((1 << 14) + 100, 0);
    let (alert, before) = alert_after(&server, &record(22, &padded));
    assert_eq!(alert, Some(RECORD_OVERFLOW));
    assert!(before.is_empty(), "no ServerHello: {before:?}");
    // The same ClientHello in a record of legal size is answered.
    let (alert, before) = alert_after(&server, &record(22, &client_hello()));
    assert_eq!(alert, None, "answered: {before:?}");
    assert_eq!(before.first(), Some(&22), "a ServerHello");
    // Logged by this process itself (`--workers 0`), as a failed handshake
    // with the reason.
    server.stderr.wait_for_event(|e| {
        message(e) == "handshake failed"
            && !relayed(e)
            && e["error"]
                .as_str()
                .is_some_and(|error| error.contains("record over the TLS size limit"))
    });
}

/// Completes the server's side of a TLS 1.3 handshake (its flight, up to
/// its Finished), sends `bytes` instead of the client's Finished, and
/// returns what the client makes of the server's answer.
fn answer_after_the_servers_flight(server: &Server, bytes: &[u8]) -> rustls::Error {
    let config = keyferry::tls::TlsOptions::default()
        .client_config(keyferry::tls::ServerVerification::DangerousNone)
        .unwrap();
    let mut client = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    client.write_tls(&mut sock).unwrap();
    while client.is_handshaking() {
        client.read_tls(&mut sock).unwrap();
        client.process_new_packets().unwrap();
    }
    sock.write_all(bytes).unwrap();
    loop {
        match client.read_tls(&mut sock) {
            Ok(0) => panic!("closed without an alert"),
            Ok(_) => {}
            Err(e) => panic!("no alert: {e}"),
        }
        if let Err(e) = client.process_new_packets() {
            return e;
        }
    }
}

/// After the server's flight its records are protected, and so are its
/// alerts: the client must be able to open them.
#[test]
fn alerts_after_the_servers_flight_are_protected() {
    use rustls::AlertDescription::{RecordOverflow, UnexpectedMessage};
    let server = Server::start(&["--workers", "0", "--echo", "--tls13"]);
    let overflow = answer_after_the_servers_flight(&server, &[23, 3, 3, 0x41, 0x01]);
    assert_eq!(overflow, rustls::Error::AlertReceived(RecordOverflow));
    let unknown = answer_after_the_servers_flight(&server, &[0, 3, 3, 0, 1, 0]);
    assert_eq!(unknown, rustls::Error::AlertReceived(UnexpectedMessage));
}

#[test]
fn unknown_record_types_and_interleaved_records_get_unexpected_message() {
    let server = Server::start(&["--workers", "0", "--echo"]);
    // A content type TLS does not define (0), first or after a hello
    // fragment.
    let (alert, _) = alert_after(&server, &[0, 3, 3, 0, 1, 0]);
    assert_eq!(alert, Some(UNEXPECTED_MESSAGE));
    // A ClientHello in two records with an application_data record between
    // them (RFC 8446 section 5.1: handshake fragments are not interleaved).
    let hello = client_hello();
    let (first, second) = hello.split_at(40);
    let mut wire = record(22, first);
    wire.extend(record(23, &[0; 20]));
    wire.extend(record(22, second));
    let (alert, before) = alert_after(&server, &wire);
    assert_eq!(alert, Some(UNEXPECTED_MESSAGE), "before: {before:?}");
    // Split without anything between, it is answered.
    let mut wire = record(22, first);
    wire.extend(record(22, second));
    let (alert, before) = alert_after(&server, &wire);
    assert_eq!(alert, None);
    assert_eq!(before.first(), Some(&22), "a ServerHello");
}

/// openssl s_client with `args`; its output and whether it connected.
fn s_client(server: &Server, args: &[&str]) -> (String, bool) {
    let out = std::process::Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &server.addr()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

#[test]
fn a_client_with_nothing_in_common_gets_handshake_failure() {
    let server = Server::start(&["--workers", "0", "--echo"]);
    // No cipher suite in common (CBC only; rustls has none).
    let (text, ok) = s_client(&server, &["-tls1_2", "-cipher", "AES128-SHA"]);
    assert!(!ok && text.contains("alert number 40"), "{text}");
    // Suites in common, but no signature scheme the server's ECDSA key can
    // make: handshake_failure, not access_denied (49).
    for version in ["-tls1_3", "-tls1_2"] {
        let (text, ok) = s_client(&server, &[version, "-sigalgs", "RSA-PSS+SHA256"]);
        assert!(!ok && text.contains("alert number 40"), "{version}: {text}");
    }
    // The same client with a scheme in common is served.
    let (text, ok) = s_client(&server, &["-tls1_3", "-sigalgs", "ECDSA+SHA256"]);
    assert!(ok && text.contains("TLSv1.3"), "{text}");
}

#[test]
fn a_tls12_client_without_a_required_certificate_gets_handshake_failure() {
    let (ca, _) = pem_identity("alerts-client-ca");
    let server = Server::start(&[
        "--workers",
        "0",
        "--echo",
        "--client-ca",
        ca.to_str().unwrap(),
    ]);
    // TLS 1.2 has no certificate_required (116): handshake_failure.
    let (text, ok) = s_client(&server, &["-tls1_2"]);
    assert!(!ok && text.contains("alert number 40"), "{text}");
    // TLS 1.3 defined certificate_required for this, and keeps it.
    let (text, _) = s_client(&server, &["-tls1_3", "-ign_eof"]);
    assert!(text.contains("alert number 116"), "{text}");
}

/// Moves what `from` has to send into `to`, and lets `to` process it.
fn pump(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
) {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().unwrap();
    }
}

#[test]
fn rejected_early_data_is_skipped_as_the_rfc_says() {
    use keyferry::tls::{ServerVerification, TlsOptions};
    let (cert, key) = pem_identity("early-data");
    let server = Server::start(&[
        "--workers",
        "0",
        "--echo",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    // A server whose tickets allow 0-RTT (rustls offers it only with
    // stateful resumption): its ticket makes the client send early data to
    // keyferry, which knows nothing of the ticket, so it makes a full
    // handshake and must skip the early data (RFC 8446 section 4.2.10).
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut twin = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .unwrap();
    twin.max_early_data_size = 1 << 14;
    twin.send_tls13_tickets = 1;
    let mut config = TlsOptions::default()
        .client_config(ServerVerification::DangerousNone)
        .unwrap();
    config.enable_early_data = true;
    let config = Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
    let mut twin = rustls::ServerConnection::new(Arc::new(twin)).unwrap();
    // Hello, the server's flight, the client's Finished, then the
    // tickets.
    for _ in 0..3 {
        pump(&mut client, &mut twin);
        pump(&mut twin, &mut client);
    }
    // 2^14 bytes of early data in four records, each 4,017 bytes
    // protected: 16,068 of the 16,384 rustls skips at most.
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut early = client.early_data().expect("the ticket allows 0-RTT");
    for _ in 0..4 {
        early.write_all(&[7u8; 4000]).unwrap();
    }
    let sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::StreamOwned::new(client, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("the handshake completes");
    }
    assert!(
        !tls.conn.is_early_data_accepted(),
        "0-RTT is off in keyferry"
    );
    tls.write_all(b"after the early data").unwrap();
    let mut echoed = [0u8; 20];
    tls.read_exact(&mut echoed).unwrap();
    assert_eq!(
        &echoed, b"after the early data",
        "nothing of the early data"
    );
}
