//! The metrics listener: `GET /metrics` in OpenMetrics text, plain
//! HTTP/1.1, one request per connection, for a Prometheus scraper, and
//! `GET /healthz` for health checks. The
//! counters themselves are in [`crate::metrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::metrics::{CONTENT_TYPE, Metrics, Serving};

/// The most a scrape request may send before its blank line.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const MAX_SCRAPES: usize = 8;

/// Serves `GET /metrics` (plain HTTP/1.1, one request per connection) on
/// `listener` until `shutdown` becomes true. Any other path is a 404, any
/// other method a 405; a request that is too long, malformed or slow is
/// answered 400 or dropped. One scraper's trouble never touches another.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Scrapes served at once: a scraper is one client, a few at most; more
    // are closed at once rather than queued.
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            debug!(%peer, "metrics listener: too many scrapes at once; closed");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = scrape(stream, &metrics).await {
                debug!(%peer, error = %e, "metrics request failed");
            }
            drop(permit);
        });
    }
}

async fn scrape(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(end));
            }
            if request.len() > MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            request.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = head
        .and_then(|end| std::str::from_utf8(&request[..end]).ok())
        .and_then(|head| head.lines().next())
        .unwrap_or("");
    let (status, content_type, body) = answer(line, metrics);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    // A scraper that stops reading is dropped, not waited for.
    let head_only = line.starts_with("HEAD ");
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The status, content type and body for one request line.
fn answer(line: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", TEXT, "malformed request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", TEXT, "HTTP/1.x only\n".into());
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => ("405 Method Not Allowed", TEXT, "GET /metrics\n".into()),
        // For a load balancer's or an orchestrator's health check: 200
        // while connections are taken, 503 before (workers still
        // compiling the guest) and once draining.
        ("GET" | "HEAD", "/healthz") => match metrics.serving() {
            Serving::Serving => ("200 OK", TEXT, "serving\n".into()),
            Serving::Starting => ("503 Service Unavailable", TEXT, "starting\n".into()),
            Serving::Stopping => ("503 Service Unavailable", TEXT, "stopping\n".into()),
        },
        (_, "/healthz") => ("405 Method Not Allowed", TEXT, "GET /healthz\n".into()),
        _ => (
            "404 Not Found",
            TEXT,
            "metrics are at /metrics, health at /healthz\n".into(),
        ),
    }
}

/// Binds the metrics listener: `ADDR:PORT`, or a bare `PORT` on loopback
/// (metrics say how busy a server is and which names it serves; they are
/// not for the world unless the operator says so).
pub fn metrics_address(spec: &str) -> Option<SocketAddr> {
    match spec.parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => spec.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_other_than_get_metrics_are_refused() {
        let m = Metrics::new();
        assert_eq!(answer("GET /metrics HTTP/1.1", &m).0, "200 OK");
        assert_eq!(answer("GET /metrics?x=1 HTTP/1.0", &m).0, "200 OK");
        assert_eq!(answer("GET / HTTP/1.1", &m).0, "404 Not Found");
        assert_eq!(
            answer("POST /metrics HTTP/1.1", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(answer("GET /metrics", &m).0, "400 Bad Request");
        assert_eq!(answer("", &m).0, "400 Bad Request");
        assert_eq!(answer("GET /metrics SPDY/3", &m).0, "400 Bad Request");
    }

    #[test]
    fn health_follows_the_server() {
        let m = Metrics::new();
        let health = |m: &Metrics| {
            let (status, _, body) = answer("GET /healthz HTTP/1.1", m);
            (status, body)
        };
        assert_eq!(health(&m), ("503 Service Unavailable", "starting\n".into()));
        m.set_serving(Serving::Serving);
        assert_eq!(health(&m), ("200 OK", "serving\n".into()));
        m.set_serving(Serving::Stopping);
        assert_eq!(health(&m), ("503 Service Unavailable", "stopping\n".into()));
        assert_eq!(
            answer("DELETE /healthz HTTP/1.1", &m).0,
            "405 Method Not Allowed"
        );
    }

    #[test]
    fn a_bare_port_is_loopback() {
        assert_eq!(
            metrics_address("9100"),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            metrics_address("0.0.0.0:9100"),
            Some("0.0.0.0:9100".parse().unwrap())
        );
        assert_eq!(
            metrics_address("[::1]:9100"),
            Some("[::1]:9100".parse().unwrap())
        );
        assert_eq!(metrics_address("localhost"), None);
    }
}
