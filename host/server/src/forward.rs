//! `--forward`: TLS terminated here, the plaintext streamed to a backend
//! and back, as stunnel, hitch and HAProxy's TCP mode do.
//!
//! The handshake process connects to the backend (a worker can make no
//! socket) and writes the optional PROXY v2 header; the connection's
//! data plane then relays between the client's records and the backend's
//! bytes. The guest opens and seals the records; the plaintext leaves the
//! sandbox to go to the backend. That is the point of forwarding, and the
//! threat model says so.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyferry::{DataPlane, Delivery};
use keyferry_record::connection::{Closed, Facts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use crate::ending::{ConnectOutcome, Ending, SessionSummary};
use crate::metrics::Metrics;
use crate::transport::{SessionControl, guest_call};

/// Where forwarded connections go, and how.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The backend as given (`HOST:PORT`), resolved for each connection.
    pub backend: String,
    /// Write a PROXY v2 header (client address, ALPN, SNI, TLS version and
    /// suite) before the first byte.
    pub proxy_protocol: bool,
    /// How long a backend connect may take.
    pub connect_timeout: Duration,
}

/// What a forwarded connection has on the backend's side.
#[derive(Debug)]
pub enum Upstream {
    /// Connected (with the PROXY header written, if asked).
    Connected(TcpStream),
    /// The connect failed: the client gets close_notify, and the reason
    /// goes in its log line.
    Failed(String),
}

impl Forward {
    /// Connects to the backend for the client at `client` (which reached
    /// `local`), counting and logging a failure.
    pub async fn connect(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        facts: &Facts,
        metrics: &Metrics,
    ) -> Upstream {
        let (outcome, upstream) = match self.try_connect(client, local, facts).await {
            Ok(stream) => (ConnectOutcome::Connected, Upstream::Connected(stream)),
            Err((outcome, reason)) => {
                warn!(peer = %client, backend = %self.backend, error = %reason, "backend connect failed");
                (outcome, Upstream::Failed(reason))
            }
        };
        metrics.backend_connect(outcome);
        upstream
    }

    async fn try_connect(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        facts: &Facts,
    ) -> Result<TcpStream, (ConnectOutcome, String)> {
        let started = Instant::now();
        let connect = async {
            let mut last = None;
            for address in tokio::net::lookup_host(&self.backend).await? {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("the name resolved to nothing")))
        };
        let mut stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err((ConnectOutcome::Refused, e.to_string()));
            }
            Ok(Err(e)) => return Err((ConnectOutcome::Error, e.to_string())),
            Err(_) => {
                return Err((
                    ConnectOutcome::TimedOut,
                    format!("no answer in {} ms", started.elapsed().as_millis()),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        if self.proxy_protocol {
            let header = crate::proxy::header_with_tlvs(client, local, &tls_tlvs(facts));
            stream.write_all(&header).await.map_err(|e| {
                (
                    ConnectOutcome::Error,
                    format!("writing the PROXY header: {e}"),
                )
            })?;
        }
        Ok(stream)
    }
}

/// The TLVs hitch's `write-proxy-v2` sends (PROXY protocol 2.2): the ALPN,
/// the server name (authority), and the SSL TLV with the version and suite
/// and, when one verified, the client certificate's common name.
pub(crate) fn tls_tlvs(facts: &Facts) -> Vec<(u8, Vec<u8>)> {
    let mut tlvs = Vec::new();
    if let Some(alpn) = &facts.alpn {
        tlvs.push((crate::proxy::PP2_TYPE_ALPN, alpn.clone()));
    }
    if let Some(sni) = &facts.server_name {
        tlvs.push((crate::proxy::PP2_TYPE_AUTHORITY, sni.as_bytes().to_vec()));
    }
    let mut ssl = Vec::new();
    let certificate = facts.peer_certificate.as_ref();
    // PP2_CLIENT_SSL, and PP2_CLIENT_CERT_CONN with a client certificate.
    ssl.push(0x01 | if certificate.is_some() { 0x02 } else { 0 });
    // verify: 0 is "the client presented a certificate and it verified";
    // rustls refuses one that does not, so 0 whenever there is one.
    ssl.extend_from_slice(&u32::from(certificate.is_none()).to_be_bytes());
    let mut sub = |kind: u8, value: &[u8]| {
        ssl.push(kind);
        ssl.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
        ssl.extend_from_slice(&value[..value.len().min(usize::from(u16::MAX))]);
    };
    sub(
        crate::proxy::PP2_SUBTYPE_SSL_VERSION,
        facts.version.name().as_bytes(),
    );
    sub(crate::proxy::PP2_SUBTYPE_SSL_CIPHER, facts.suite.as_bytes());
    if let Some(cn) = certificate.and_then(|c| common_name(&c.subject)) {
        sub(crate::proxy::PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    tlvs.push((crate::proxy::PP2_TYPE_SSL, ssl));
    tlvs
}

/// The CN of an RFC 4514 subject, as the facts write it.
fn common_name(subject: &str) -> Option<&str> {
    subject
        .split(',')
        .find_map(|rdn| rdn.trim().strip_prefix("CN="))
}

/// Most bytes read from either side at once.
const CHUNK: usize = 16 * 1024;

/// Most bytes waiting for a side that does not read before the other side
/// stops being read: a slow reader slows its sender, as a TCP proxy does.
const HIGH_WATER: usize = 256 * 1024;

/// Relays a forwarded connection until both sides are done: the client's
/// plaintext to the backend, the backend's bytes sealed to the client.
/// Each side may close first; the other direction carries on (the client's
/// close_notify half-closes the backend, the backend's EOF sends
/// close_notify). Nothing moving either way for the keep-alive timeout
/// ends it; at shutdown it carries on until the drain deadline.
pub(crate) async fn relay(
    client: &mut TcpStream,
    upstream: Upstream,
    plane: &mut DataPlane,
    first: Delivery,
    mut control: SessionControl,
) -> SessionSummary {
    let started = Instant::now();
    let mut summary = SessionSummary::starting();
    let mut backend = match upstream {
        Upstream::Connected(stream) => Some(stream),
        Upstream::Failed(reason) => {
            summary.ending = Ending::Backend(reason);
            None
        }
    };
    let mut to_client = Vec::new();
    // The client's plaintext, wiped once sent or dropped.
    let mut to_backend = zeroize::Zeroizing::new(Vec::new());
    let mut client_open = true;
    let mut backend_open = backend.is_some();
    let mut backend_half_closed = false;
    let mut closing = false;
    let mut draining: Option<tokio::time::Instant> = None;
    let mut step: keyferry::Result<Delivery> = Ok(first);
    let mut from_client = vec![0u8; CHUNK];
    let mut from_backend = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        match step {
            Ok(d) => {
                to_client.extend_from_slice(&d.to_send);
                to_backend.extend_from_slice(&d.plaintext);
                if let Some(closed) = d.closed {
                    client_open = false;
                    if closed != Closed::CloseNotify && !closing {
                        summary.ending = Ending::Peer(closed);
                    }
                }
                if d.done {
                    client_open = false;
                    backend_open = false;
                }
            }
            Err(e) => {
                summary.ending = Ending::GuestFailed {
                    reason: e.to_string(),
                    trap: e.trap(),
                };
                crate::transport::send_internal_error(client).await;
                break;
            }
        }
        if backend.is_none() {
            to_backend.clear();
        }
        // The backend is gone and the client has all it sent: close_notify.
        if !backend_open && !closing {
            closing = true;
            step = guest_call(|| plane.close());
            continue;
        }
        // The client is done sending and the backend has it all.
        if !client_open && to_backend.is_empty() && !backend_half_closed {
            backend_half_closed = true;
            if let Some(b) = backend.as_mut() {
                let _ = b.shutdown().await;
            }
        }
        if !client_open && !backend_open && to_backend.is_empty() {
            // Whatever is still for the client goes out, within the write
            // timeout, and the connection is over.
            if !to_client.is_empty() {
                match tokio::time::timeout(control.timeouts.write, client.write_all(&to_client))
                    .await
                {
                    Ok(Ok(())) => summary.bytes_out += to_client.len() as u64,
                    Ok(Err(e)) => summary.ending = Ending::Transport(e.to_string()),
                    Err(_) => summary.ending = Ending::WriteTimeout,
                }
            }
            break;
        }
        let idle = control.timeouts.keepalive;
        let backend_ref = backend.as_mut();
        let (mut backend_read, mut backend_write) = match backend_ref {
            Some(b) => {
                let (r, w) = b.split();
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        let (mut client_read, mut client_write) = client.split();
        step = tokio::select! {
            read = client_read.read(&mut from_client), if client_open && to_backend.len() < HIGH_WATER => {
                match read {
                    Ok(0) => guest_call(|| plane.end_of_stream()),
                    Ok(n) => {
                        summary.bytes_in += n as u64;
                        guest_call(|| plane.receive(&from_client[..n]))
                    }
                    Err(e) => {
                        summary.ending = Ending::Transport(e.to_string());
                        break;
                    }
                }
            }
            read = async { backend_read.as_mut().expect("guarded").read(&mut from_backend).await },
                if backend_open && to_client.len() < HIGH_WATER => {
                match read {
                    Ok(0) => {
                        backend_open = false;
                        Ok(Delivery::default())
                    }
                    Ok(n) => guest_call(|| plane.send(&from_backend[..n])).map(|records| Delivery {
                        to_send: records,
                        ..Delivery::default()
                    }),
                    Err(e) => {
                        backend_open = false;
                        summary.ending = Ending::Backend(e.to_string());
                        Ok(Delivery::default())
                    }
                }
            }
            written = client_write.write(&to_client), if !to_client.is_empty() => {
                match written {
                    Ok(n) => {
                        summary.bytes_out += n as u64;
                        to_client.drain(..n);
                        Ok(Delivery::default())
                    }
                    Err(e) => {
                        summary.ending = Ending::Transport(e.to_string());
                        break;
                    }
                }
            }
            written = async { backend_write.as_mut().expect("guarded").write(&to_backend).await },
                if backend_write.is_some() && !to_backend.is_empty() => {
                match written {
                    Ok(n) => {
                        to_backend.drain(..n);
                        Ok(Delivery::default())
                    }
                    Err(e) => {
                        // The backend stopped taking data: nothing more
                        // of the client's can go anywhere.
                        to_backend.clear();
                        client_open = false;
                        backend_open = false;
                        summary.ending = Ending::Backend(e.to_string());
                        Ok(Delivery::default())
                    }
                }
            }
            () = tokio::time::sleep(idle) => {
                summary.ending = Ending::KeepaliveTimeout;
                client_open = false;
                backend_open = false;
                to_backend.clear();
                Ok(Delivery::default())
            }
            // At shutdown a forwarded connection carries on, as HAProxy's
            // soft stop lets them, until the drain deadline.
            _ = control.shutdown.changed(), if !closing && draining.is_none() => {
                draining = Some(control.drain_deadline());
                Ok(Delivery::default())
            }
            () = crate::transport::sleep_until_some(draining), if !closing && draining.is_some() => {
                summary.ending = Ending::Shutdown;
                client_open = false;
                backend_open = false;
                to_backend.clear();
                Ok(Delivery::default())
            }
        };
    }
    if let Some(mut b) = backend {
        let _ = b.shutdown().await;
    }
    let _ = client.shutdown().await;
    summary.duration = started.elapsed();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssl_tlv_carries_version_suite_and_client_cn() {
        let mut facts = Facts {
            role: keyferry_record::connection::Role::Server,
            version: keyferry_record::suite::ProtocolVersion::Tls13,
            suite: "TLS13_AES_128_GCM_SHA256".into(),
            server_name: Some("example.com".into()),
            alpn: Some(b"h2".to_vec()),
            peer_certificate: None,
            connection_id: 1,
        };
        let tlvs = tls_tlvs(&facts);
        assert_eq!(tlvs[0], (0x01, b"h2".to_vec()));
        assert_eq!(tlvs[1], (0x02, b"example.com".to_vec()));
        let (kind, ssl) = &tlvs[2];
        assert_eq!(*kind, 0x20);
        // client SSL, no certificate, verify 1 (none presented).
        assert_eq!(&ssl[..5], &[0x01, 0, 0, 0, 1]);
        assert_eq!(&ssl[5..8], &[0x21, 0, 7]);
        assert_eq!(&ssl[8..15], b"TLSv1.3");
        assert_eq!(&ssl[15..18], &[0x23, 0, 24]);

        facts.peer_certificate = Some(keyferry_record::connection::PeerCertificate {
            subject: "CN=alice,O=Example".into(),
            ..Default::default()
        });
        let tlvs = tls_tlvs(&facts);
        let ssl = &tlvs[2].1;
        assert_eq!(&ssl[..5], &[0x03, 0, 0, 0, 0]);
        assert!(ssl.ends_with(&[0x22, 0, 5, b'a', b'l', b'i', b'c', b'e']));
    }
}
