//! Embedding the keyferry core in your own event loop: one TLS server
//! connection over a plain `std::net::TcpStream`, its handshake run here
//! (sans-IO, `Handshake`), its records and its application in a guest
//! (`DataPlane`). A rustls client on another thread talks to it.
//!
//! Run it with `cargo run -p keyferry --example embed`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use keyferry::handshake::{Handshake, Progress};
use keyferry::tls::{Identity, ServerVerification, TlsOptions};
use keyferry::{DataPlane, GuestComponent, GuestEngine, SandboxConfig};
use rustls::pki_types::PrivateKeyDer;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    // The sandbox (a memory cap and a per-call deadline by default) and
    // the reference component, whose connections hand their plaintext to
    // the host: the host here plays the application.
    let engine = GuestEngine::new(SandboxConfig::default())?;
    let component = GuestComponent::reference(&engine)?;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let identity = Identity::from_der(
        vec![made.cert.der().clone()],
        PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
    )?;
    let options = TlsOptions::default();
    let server_config = Arc::new(options.server_config(&identity)?);
    let client_config = Arc::new(options.client_config(ServerVerification::DangerousNone)?);

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let client = std::thread::spawn(move || -> Result<Vec<u8>, Error> {
        let conn = rustls::ClientConnection::new(client_config, "localhost".try_into()?)?;
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(address)?);
        tls.write_all(b"hello, sandbox")?;
        let mut answer = vec![0u8; b"HELLO, SANDBOX".len()];
        tls.read_exact(&mut answer)?;
        tls.conn.send_close_notify();
        tls.flush()?;
        Ok(answer)
    });

    let (mut stream, peer) = listener.accept()?;
    // The handshake, here: feed what the peer sends, send what rustls
    // answers, until it is complete.
    let mut handshake = Handshake::server(&server_config, 1)?;
    let mut buf = vec![0u8; 16 * 1024 + 256];
    loop {
        let progress = handshake.advance()?;
        stream.write_all(&handshake.take_outgoing())?;
        if progress == Progress::Complete {
            break;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err("the client left during the handshake".into());
        }
        handshake.feed(&buf[..n])?;
    }
    // The handoff: keys, state and anything read past the handshake go to
    // a fresh instance; this process's copies are wiped.
    let (mut plane, first) = DataPlane::new(component.instantiate()?, handshake.finish()?)?;
    println!("{peer}: handshake done, its records now in the guest");
    let mut delivery = first;
    loop {
        stream.write_all(&delivery.to_send)?;
        if !delivery.plaintext.is_empty() {
            // The application: answer in capitals.
            let answer = delivery.plaintext.to_ascii_uppercase();
            stream.write_all(&plane.send(&answer)?)?;
        }
        if delivery.done {
            break;
        }
        let n = stream.read(&mut buf)?;
        delivery = if n == 0 {
            plane.end_of_stream()?
        } else {
            plane.receive(&buf[..n])?
        };
    }
    let answer = client.join().map_err(|_| "the client panicked")??;
    println!("the client read {:?}", String::from_utf8_lossy(&answer));
    assert_eq!(answer, b"HELLO, SANDBOX");
    Ok(())
}
