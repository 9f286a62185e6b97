//! `keyferry connect` against openssl s_server and against `keyferry serve`.

use std::io::Write;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use keyferry_tests::process::{Captured, Server, free_port, keyferry, pem_identity};

fn connect(addr: &str, args: &[&str], input: &[u8]) -> (Vec<u8>, String) {
    let mut child = Command::new(keyferry())
        .args(["connect", addr])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keyferry connect");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "keyferry connect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn connect_to_openssl_s_server_rev_over_tls13_and_tls12() {
    let (cert, key) = pem_identity("s_server");
    for version in ["-tls1_3", "-tls1_2"] {
        let port = free_port();
        let mut server = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &port.to_string(),
                "-naccept",
                "1",
                "-rev",
                version,
            ])
            .args([
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl s_server");
        let out = Captured::spawn(server.stdout.take().unwrap());
        out.wait_for("ACCEPT");
        let (got, log) = connect(
            &format!("127.0.0.1:{port}"),
            &["--ca", cert.to_str().unwrap(), "--sni", "localhost"],
            b"keyferry in the sandbox\n",
        );
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.contains("xobdnas eht ni yrrefyek"),
            "{version}: s_server reversed our line: {got:?}\n{log}"
        );
        let _ = server.kill();
        let _ = server.wait();
    }
}

#[test]
fn connect_to_keyferry_serve_echo_and_a_large_transfer() {
    let server = Server::start(&["--echo"]);
    let (got, _) = connect(
        &server.addr(),
        &["--insecure"],
        b"hello through two sandboxes\n",
    );
    assert_eq!(got, b"hello through two sandboxes\n");

    // 100 MiB through serve --echo, byte-exact.
    let mut data = vec![0u8; 100 << 20];
    let mut x = 0x2545F4914F6CDD1Du64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let (got, _) = connect(&server.addr(), &["--insecure"], &data);
    assert_eq!(got.len(), data.len(), "every byte came back");
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data), "byte-exact");
}
