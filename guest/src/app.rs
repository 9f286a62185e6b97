//! The reference application that runs inside the sandbox: an echo mode and
//! an HTTP/1.1 responder that reports the connection's TLS facts as the
//! guest sees them. The host only moves ciphertext to and from it.
//!
//! A plugin author replaces this module with their own application over
//! [`Connection`]; see the README.

use crate::connection::{Closed, Connection, Event, Facts, Role};
use crate::suite::ProtocolVersion;

/// Which application a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// Sends back every byte it receives.
    Echo,
    /// Answers HTTP/1.1 requests (keep-alive, pipelining) with a report of
    /// the connection as seen from inside the sandbox.
    Http,
}

/// What one step of a session produced, for the host.
#[derive(Default, Debug)]
pub struct SessionOutput {
    /// Ciphertext for the peer.
    pub to_send: Vec<u8>,
    /// Post-handshake messages for the host.
    pub events: Vec<Event>,
    /// How the peer's side ended, once it has.
    pub closed: Option<Closed>,
    /// The session is over: the host closes the transport after sending
    /// `to_send`.
    pub done: bool,
}

/// The largest request head the responder buffers (431 past it).
const MAX_HEAD: usize = 16 * 1024;
/// The largest request body it accepts (413 past it).
const MAX_BODY: usize = 1 << 20;

/// An application session over one connection.
pub struct Session {
    conn: Connection,
    mode: AppMode,
    pending: Vec<u8>,
    requests: u64,
    done: bool,
}

impl Session {
    /// The application over a connection whose keys were just imported.
    pub fn new(conn: Connection, mode: AppMode) -> Self {
        Self {
            conn,
            mode,
            pending: Vec::new(),
            requests: 0,
            done: false,
        }
    }

    /// Delivers anything buffered at handoff; call once, first.
    pub fn start(&mut self) -> SessionOutput {
        let out = self.conn.start();
        self.step(out)
    }

    /// The connection under the application.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The connection's handshake facts.
    pub fn facts(&self) -> &Facts {
        self.conn.facts()
    }

    /// Ciphertext arrived from the peer.
    pub fn on_ciphertext(&mut self, data: &[u8]) -> SessionOutput {
        if self.done {
            return SessionOutput {
                done: true,
                ..SessionOutput::default()
            };
        }
        let out = self.conn.receive(data);
        self.step(out)
    }

    /// The transport hit EOF.
    pub fn on_end_of_stream(&mut self) -> SessionOutput {
        let out = self.conn.end_of_stream();
        let mut step = self.step(out);
        step.done = true;
        self.done = true;
        step
    }

    /// The host is shutting down: say close_notify and end.
    pub fn shutdown(&mut self) -> SessionOutput {
        let mut step = SessionOutput {
            done: true,
            ..SessionOutput::default()
        };
        if let Ok(close) = self.conn.close() {
            step.to_send = close;
        }
        self.done = true;
        step
    }

    fn step(&mut self, out: crate::connection::Output) -> SessionOutput {
        let mut step = SessionOutput {
            to_send: out.to_send,
            events: out.events,
            closed: out.closed,
            done: false,
        };
        let mut close_after = false;
        let response = match self.mode {
            AppMode::Echo => out.plaintext.to_vec(),
            AppMode::Http => {
                self.pending.extend_from_slice(&out.plaintext);
                let (response, close) = self.serve_http();
                close_after = close;
                response
            }
        };
        if !response.is_empty() {
            match self.conn.send(&response) {
                Ok(wire) => step.to_send.extend(wire),
                Err(_) => close_after = true,
            }
        }
        match out.closed {
            // A clean close from the peer: answer in kind.
            Some(Closed::CloseNotify) => close_after = true,
            Some(_) => {
                self.done = true;
            }
            None => {}
        }
        if close_after && !self.done {
            if let Ok(close) = self.conn.close() {
                step.to_send.extend(close);
            }
            self.done = true;
        }
        step.done = self.done;
        step
    }

    /// Answers every complete request in the buffer. Returns the responses
    /// and whether to close afterwards.
    fn serve_http(&mut self) -> (Vec<u8>, bool) {
        let mut responses = Vec::new();
        loop {
            let Some(head_end) = find(&self.pending, b"\r\n\r\n") else {
                if self.pending.len() > MAX_HEAD {
                    responses.extend(simple(431, "Request Header Fields Too Large"));
                    return (responses, true);
                }
                return (responses, false);
            };
            let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default();
            let parts: Vec<&str> = request_line.split(' ').collect();
            if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
                responses.extend(simple(400, "Bad Request"));
                return (responses, true);
            }
            let (method, target, http_version) = (parts[0], parts[1], parts[2]);
            let mut content_length = 0usize;
            let mut seen_length = false;
            let mut close = http_version == "HTTP/1.0";
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    responses.extend(simple(400, "Bad Request"));
                    return (responses, true);
                };
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    // One Content-Length, digits only (RFC 9112 section 6.3):
                    // anything else is how requests get smuggled.
                    "content-length"
                        if seen_length
                            || value.is_empty()
                            || !value.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        responses.extend(simple(400, "Bad Request"));
                        return (responses, true);
                    }
                    "content-length" => match value.parse::<usize>() {
                        Ok(n) if n <= MAX_BODY => {
                            seen_length = true;
                            content_length = n;
                        }
                        Ok(_) => {
                            responses.extend(simple(413, "Content Too Large"));
                            return (responses, true);
                        }
                        Err(_) => {
                            responses.extend(simple(400, "Bad Request"));
                            return (responses, true);
                        }
                    },
                    "transfer-encoding" => {
                        responses.extend(simple(501, "Not Implemented"));
                        return (responses, true);
                    }
                    "connection" => {
                        let v = value.to_ascii_lowercase();
                        if v.contains("close") {
                            close = true;
                        } else if v.contains("keep-alive") {
                            close = false;
                        }
                    }
                    _ => {}
                }
            }
            let total = head_end + 4 + content_length;
            if self.pending.len() < total {
                return (responses, false);
            }
            self.pending.drain(..total);
            self.requests += 1;
            let body = self.report(method, target);
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nServer: keyferry-guest\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: {}\r\n\r\n",
                body.len(),
                if close { "close" } else { "keep-alive" }
            )
            .into_bytes();
            if method != "HEAD" {
                response.extend_from_slice(body.as_bytes());
            }
            responses.extend(response);
            if close {
                return (responses, true);
            }
        }
    }

    fn report(&self, method: &str, target: &str) -> String {
        let f = self.conn.facts();
        let version = match f.version {
            ProtocolVersion::Tls13 => "TLSv1.3",
            ProtocolVersion::Tls12 => "TLSv1.2",
        };
        let role = match f.role {
            Role::Client => "client",
            Role::Server => "server",
        };
        format!(
            "keyferry: this response was produced inside the WebAssembly sandbox\n\
             request: {method} {target}\n\
             requests_on_connection: {}\n\
             tls_version: {version}\n\
             cipher_suite: {}\n\
             server_name: {}\n\
             alpn: {}\n\
             peer_certificate: {}\n\
             role: {role}\n\
             connection_id: {:016x}\n",
            self.requests,
            f.suite,
            f.server_name.as_deref().unwrap_or("-"),
            f.alpn
                .as_ref()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_else(|| "-".into()),
            f.peer_subject.as_deref().unwrap_or("-"),
            f.connection_id,
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn simple(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{status} {reason}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: keyferry-guest\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{TrafficKey, TrafficKeyMaterial};
    use crate::suite::{AeadAlgorithm, Direction};

    fn sessions(mode: AppMode) -> (Session, Connection) {
        let key = |direction, secret: u8| {
            let m = TrafficKeyMaterial::from_tls13_secret(
                AeadAlgorithm::ChaCha20Poly1305,
                direction,
                &[secret; 32],
                0,
                3,
            )
            .unwrap();
            TrafficKey::from_material(m, None).unwrap()
        };
        let facts = |role| Facts {
            role,
            version: ProtocolVersion::Tls13,
            suite: "TLS13_CHACHA20_POLY1305_SHA256".into(),
            server_name: Some("localhost".into()),
            alpn: Some(b"http/1.1".to_vec()),
            peer_subject: None,
            connection_id: 3,
        };
        let server = Connection::new(
            key(Direction::Seal, 1),
            key(Direction::Open, 2),
            facts(Role::Server),
        )
        .unwrap();
        let client = Connection::new(
            key(Direction::Seal, 2),
            key(Direction::Open, 1),
            facts(Role::Client),
        )
        .unwrap();
        let mut session = Session::new(server, mode);
        assert!(session.start().to_send.is_empty());
        (session, client)
    }

    #[test]
    fn http_keep_alive_and_pipelining() {
        let (mut s, mut c) = sessions(AppMode::Http);
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = s.on_ciphertext(&c.send(req).unwrap());
        assert!(!out.done);
        let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(
            text.contains("request: GET /b") && text.contains("requests_on_connection: 2"),
            "{text}"
        );
        assert!(
            text.contains("server_name: localhost") && text.contains("alpn: http/1.1"),
            "{text}"
        );
        let out = s.on_ciphertext(
            &c.send(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap(),
        );
        assert!(out.done);
        let reply = c.receive(&out.to_send);
        assert_eq!(reply.closed, Some(Closed::CloseNotify));
    }

    #[test]
    fn http_rejects_malformed_requests() {
        let (mut s, mut c) = sessions(AppMode::Http);
        let out = s.on_ciphertext(&c.send(b"NONSENSE\r\n\r\n").unwrap());
        assert!(out.done);
        let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }

    #[test]
    fn http_refuses_ambiguous_content_length() {
        for request in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
        ] {
            let (mut s, mut c) = sessions(AppMode::Http);
            let out = s.on_ciphertext(&c.send(request).unwrap());
            assert!(out.done);
            let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
            assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        }
    }

    #[test]
    fn echo_and_close_notify() {
        let (mut s, mut c) = sessions(AppMode::Echo);
        let out = s.on_ciphertext(&c.send(b"hello").unwrap());
        assert_eq!(&c.receive(&out.to_send).plaintext[..], b"hello");
        let out = s.on_ciphertext(&c.close().unwrap());
        assert!(out.done);
        assert_eq!(out.closed, Some(Closed::CloseNotify));
        assert_eq!(c.receive(&out.to_send).closed, Some(Closed::CloseNotify));
    }
}
