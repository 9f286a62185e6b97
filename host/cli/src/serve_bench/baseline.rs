//! `keyferry bench-baseline-server`: the baseline of `bench-serve`, rustls
//! and tokio answering with a response of the same length, no sandbox.

use std::path::Path;
use std::sync::Arc;

use super::padded_body;

/// The baseline: rustls and tokio with a response of the same length, no
/// sandbox.
pub fn baseline_server(
    listen: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let body: Arc<str> = padded_body(body_bytes).into();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = keyferry::tls::Identity::from_pem_files(cert, key)?;
    let options = keyferry::tls::TlsOptions::default().with_versions(&[&rustls::version::TLS13]);
    let config = Arc::new(options.server_config(&identity)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (sock, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let mut buf = vec![0u8; 16384];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = tls.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let close = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase().contains("connection: close");
                        pending.drain(..end + 4);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
                            body.len(),
                            if close { "close" } else { "keep-alive" }
                        );
                        if tls.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        if close {
                            let _ = tls.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    })
}
