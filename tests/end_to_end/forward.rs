//! `--forward`: TLS ends in keyferry and the plaintext goes to a backend,
//! as stunnel and hitch do. The backends are a Python HTTP server, a
//! Python program that answers an upload after its end, one that reads
//! the PROXY v2 header, and HAProxy reading that header.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use keyferry_tests::process::{
    Killed, Server, free_port, has_fields, message, relayed, rustls_client, sample, scrape,
    temp_dir, wait_for_port,
};

/// `python3 -c program PORT`, listening once it accepts.
fn python_backend(program: &str) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-c", program, &port.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("start python3");
    wait_for_port(port);
    (Killed(child), port)
}

/// Python's own HTTP server over `dir`.
fn http_server(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server");
    wait_for_port(port);
    (Killed(child), port)
}

fn curl(url: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "60"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_python_http_server_is_served_over_https_in_both_placements() {
    let dir = temp_dir("forward-http");
    std::fs::write(dir.join("index.html"), "hello from the backend\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let (_backend, port) = http_server(&dir);
    let backend = format!("127.0.0.1:{port}");
    for workers in ["1", "0"] {
        let server = Server::start(&["--forward", &backend, "--workers", workers]);
        let page = curl(&server.url("/index.html"), &[]).unwrap();
        assert_eq!(page, b"hello from the backend\n", "workers {workers}");
        assert_eq!(curl(&server.url("/big.bin"), &[]).unwrap(), big);
        let status = curl(
            &server.url("/missing"),
            &["-o", "/dev/null", "-w", "%{http_code}"],
        );
        assert_eq!(status.unwrap(), b"404");
        let line = server.stderr.wait_for_event(|e| {
            message(e) == "connection" && has_fields(e, &[("ending", "close_notify")])
        });
        assert_eq!(relayed(&line), workers != "0", "{line}");
    }
}

/// Reads everything until the client's side ends, then answers with its
/// length and SHA-256, then closes: the answer can only arrive if the
/// client's close_notify reached the backend as a half-close.
const DIGEST_AFTER_EOF: &str = r#"
import hashlib, socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def serve(conn):
    digest, total = hashlib.sha256(), 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    conn.sendall(f"{total} {digest.hexdigest()}\n".encode())
while True:
    conn, _ = listener.accept()
    try:
        serve(conn)
    except OSError:
        pass  # the test's probe of the port
    conn.close()
"#;

#[test]
fn an_upload_streams_to_the_backend_and_a_half_close_carries_its_answer_back() {
    use sha2::{Digest, Sha256};
    let (_backend, port) = python_backend(DIGEST_AFTER_EOF);
    let server = Server::start(&["--forward", &format!("127.0.0.1:{port}")]);
    let upload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut client = rustls_client(&server.addr());
    client.write_all(&upload).unwrap();
    // The client is done sending: close_notify, and the socket stays open
    // for the answer.
    client.conn.send_close_notify();
    client.flush().unwrap();
    let mut answer = String::new();
    client
        .read_to_string(&mut answer)
        .expect("the answer, then close_notify");
    let expected = format!("{} {}\n", upload.len(), hex(&Sha256::digest(&upload)));
    assert_eq!(answer, expected);
    let line = server.stderr.wait_for_event(|e| message(e) == "connection");
    assert!(has_fields(&line, &[("ending", "close_notify")]), "{line}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_unreachable_backend_is_logged_counted_and_the_client_gets_close_notify() {
    let port = free_port();
    let server = Server::start(&[
        "--forward",
        &format!("127.0.0.1:{port}"),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut client = rustls_client(&server.addr());
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    // A clean end: close_notify, not a reset or a truncation.
    client.read_to_end(&mut got).expect("close_notify");
    assert!(got.is_empty());
    let failed = server
        .stderr
        .wait_for_event(|e| message(e) == "backend connect failed" && !relayed(e));
    assert!(
        failed["error"].as_str().unwrap_or("").contains("refused"),
        "{failed}"
    );
    assert_eq!(failed["backend"], format!("127.0.0.1:{port}"));
    let line = server.stderr.wait_for_event(|e| message(e) == "connection");
    assert!(has_fields(&line, &[("ending", "backend_error")]), "{line}");
    let samples = scrape(&server.metrics_addr());
    let connects = |outcome| {
        sample(
            &samples,
            "keyferry_backend_connects_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(connects("refused"), 1.0);
    assert_eq!(connects("connected"), 0.0);
    assert_eq!(
        sample(
            &samples,
            "keyferry_connections_ended_total",
            &[("ending", "backend_error")]
        ),
        1.0
    );
}

/// Reads one PROXY v2 header and answers, as HTTP, what it said: the
/// source address and each TLV keyferry writes.
const PROXY_READER: &str = r#"
import socket, struct, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
def serve(conn):
    head = exact(conn, 16)
    assert head[:12] == b"\r\n\r\n\x00\r\nQUIT\n", head
    block = exact(conn, struct.unpack("!H", head[14:16])[0])
    assert head[12] == 0x21 and head[13] == 0x11, head
    src = socket.inet_ntoa(block[0:4])
    fields, tlvs = [f"src={src}"], block[12:]
    while tlvs:
        kind, length = tlvs[0], struct.unpack("!H", tlvs[1:3])[0]
        value, tlvs = tlvs[3:3 + length], tlvs[3 + length:]
        if kind == 0x01:
            fields.append("alpn=" + value.decode())
        elif kind == 0x02:
            fields.append("authority=" + value.decode())
        elif kind == 0x20:
            fields.append(f"client={value[0]} verify={struct.unpack('!I', value[1:5])[0]}")
            sub = value[5:]
            while sub:
                k, n = sub[0], struct.unpack("!H", sub[1:3])[0]
                fields.append({0x21: "version", 0x22: "cn", 0x23: "cipher"}.get(k, hex(k)) + "=" + sub[3:3 + n].decode())
                sub = sub[3 + n:]
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    body = ("\n".join(fields) + "\n").encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
while True:
    conn, _ = listener.accept()
    try:
        serve(conn)
    except (OSError, EOFError):
        pass  # the test's probe of the port
    conn.close()
"#;

#[test]
fn the_proxy_v2_header_carries_the_client_alpn_sni_and_tls_version() {
    let (_backend, port) = python_backend(PROXY_READER);
    let server = Server::start(&[
        "--forward",
        &format!("127.0.0.1:{port}"),
        "--forward-proxy-protocol",
        "--alpn",
        "http/1.1",
        "--tls13",
    ]);
    let resolve = format!("example.test:{}:127.0.0.1", server.port);
    let url = format!("https://example.test:{}/", server.port);
    let body = curl(&url, &["--resolve", &resolve]).unwrap();
    let body = String::from_utf8(body).unwrap();
    for field in [
        "src=127.0.0.1",
        "alpn=http/1.1",
        "authority=example.test",
        "client=1 verify=1",
        "version=TLSv1.3",
        "cipher=TLS_",
    ] {
        assert!(body.contains(field), "{field} in:\n{body}");
    }
}

#[test]
fn haproxy_reads_the_proxy_v2_header_forward_proxy_protocol_writes() {
    let dir = temp_dir("forward-haproxy");
    let port = free_port();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\n\
             frontend behind_keyferry\n  bind 127.0.0.1:{port} accept-proxy\n  \
             http-request return status 200 content-type text/plain \
             lf-string \"src=%[src] authority=%[fc_pp_authority]\\n\"\n"
        ),
    )
    .unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let _haproxy = Killed(haproxy);
    wait_for_port(port);
    let server = Server::start(&[
        "--forward",
        &format!("127.0.0.1:{port}"),
        "--forward-proxy-protocol",
        "--alpn",
        "http/1.1",
    ]);
    let resolve = format!("app.example:{}:127.0.0.1", server.port);
    let url = format!("https://app.example:{}/", server.port);
    let body = curl(&url, &["--resolve", &resolve]).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "src=127.0.0.1 authority=app.example\n"
    );
}
