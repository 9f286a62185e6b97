//! The built-in HTTP/1.1 responder: it answers every request (keep-alive,
//! pipelining) with a report of the connection's TLS facts as seen from
//! inside the sandbox, so `curl` shows that the response was made there.
//! `keyferry serve` runs it by default, as a component of its own (this
//! example); its tests run natively (`guest/tests/http_responder.rs`), and
//! the `http` fuzz target drives it.

use alloc::{format, string::String, vec::Vec};
use keyferry_guest::application::{Application, Reply, RequestSummary};
use keyferry_guest::connection::{Facts, Role};

/// The largest request head the responder buffers (431 past it).
const MAX_HEAD: usize = 16 * 1024;
/// The largest request body it accepts (413 past it).
const MAX_BODY: usize = 1 << 20;

/// The HTTP/1.1 responder.
pub struct HttpResponder {
    /// The report's lines about the connection, which do not change from
    /// one request to the next: formatted once, when the session starts.
    facts: String,
    pending: Vec<u8>,
    requests: u64,
}

impl Application for HttpResponder {
    fn new(facts: &Facts) -> Self {
        Self {
            facts: facts_report(facts),
            pending: Vec::new(),
            requests: 0,
        }
    }

    fn receive(&mut self, plaintext: &[u8], reply: &mut Reply) {
        self.pending.extend_from_slice(plaintext);
        let mut answered = Vec::new();
        let (responses, close) = self.serve_http(&mut answered);
        for request in answered {
            reply.answered(request);
        }
        reply.send(&responses);
        if close {
            reply.close();
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }
}

impl HttpResponder {
    /// Answers every complete request in the buffer, each reported in
    /// `answered`. Returns the responses and whether to close afterwards.
    fn serve_http(&mut self, answered: &mut Vec<RequestSummary>) -> (Vec<u8>, bool) {
        let mut responses = Vec::new();
        loop {
            let Some((head_end, body_start)) = head_end(&self.pending) else {
                if self.pending.len() > MAX_HEAD {
                    refuse(&mut responses, answered, 431, ("-", "-"));
                    return (responses, true);
                }
                return (responses, false);
            };
            // Borrowed, not copied, when the head is UTF-8 (it is ASCII in
            // practice); the request is answered before it is drained.
            let head = String::from_utf8_lossy(&self.pending[..head_end]);
            // Lines end in CRLF; a bare LF ends one too (RFC 9112 section
            // 2.2 lets a recipient accept it), and splitting on one byte
            // is a `memchr`, not a substring search.
            let mut lines = head
                .split('\n')
                .map(|line| line.strip_suffix('\r').unwrap_or(line));
            let request_line = lines.next().unwrap_or_default();
            let mut parts = request_line.split(' ');
            let (Some(method), Some(target), Some(http_version), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                refuse(&mut responses, answered, 400, ("-", "-"));
                return (responses, true);
            };
            if !http_version.starts_with("HTTP/1.") {
                refuse(&mut responses, answered, 400, (method, target));
                return (responses, true);
            }
            let mut content_length = 0usize;
            let mut seen_length = false;
            let mut close = http_version == "HTTP/1.0";
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    refuse(&mut responses, answered, 400, (method, target));
                    return (responses, true);
                };
                let value = value.trim_ascii();
                match Field::of(name.trim_ascii()) {
                    // One Content-Length, digits only (RFC 9112 section 6.3):
                    // anything else is how requests get smuggled.
                    Field::ContentLength
                        if seen_length
                            || value.is_empty()
                            || !value.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        refuse(&mut responses, answered, 400, (method, target));
                        return (responses, true);
                    }
                    Field::ContentLength => match value.parse::<usize>() {
                        Ok(n) if n <= MAX_BODY => {
                            seen_length = true;
                            content_length = n;
                        }
                        Ok(_) => {
                            refuse(&mut responses, answered, 413, (method, target));
                            return (responses, true);
                        }
                        Err(_) => {
                            refuse(&mut responses, answered, 400, (method, target));
                            return (responses, true);
                        }
                    },
                    Field::TransferEncoding => {
                        refuse(&mut responses, answered, 501, (method, target));
                        return (responses, true);
                    }
                    Field::Connection => {
                        let v = value.to_ascii_lowercase();
                        if v.contains("close") {
                            close = true;
                        } else if v.contains("keep-alive") {
                            close = false;
                        }
                    }
                    Field::Other => {}
                }
            }
            let total = body_start + content_length;
            if self.pending.len() < total {
                return (responses, false);
            }
            let request = self.requests + 1;
            let send_body = method != "HEAD";
            let body_len = self.report_len(request, method, target);
            responses.reserve(RESPONSE_HEAD.len() + 20 + 28 + body_len);
            responses.extend_from_slice(RESPONSE_HEAD);
            decimal(body_len as u64, &mut responses);
            responses.extend_from_slice(if close {
                b"\r\nConnection: close\r\n\r\n".as_slice()
            } else {
                b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
            });
            if send_body {
                self.report(request, method, target, &mut responses);
            }
            answered.push(RequestSummary {
                method: method.into(),
                target: target.into(),
                status: 200,
                received: content_length as u64,
                sent: if send_body { body_len as u64 } else { 0 },
            });
            drop(head);
            self.pending.drain(..total);
            self.requests = request;
            if close {
                return (responses, true);
            }
        }
    }

    /// The body of request number `request`, appended to `out`: the
    /// request, then the connection's facts. Written piece by piece rather
    /// than with `format!`: `core::fmt` was a tenth of the guest's time per
    /// keep-alive request.
    fn report(&self, request: u64, method: &str, target: &str, out: &mut Vec<u8>) {
        for piece in [REPORT_TITLE, "request: ", method, " ", target, REPORT_COUNT] {
            out.extend_from_slice(piece.as_bytes());
        }
        decimal(request, out);
        out.push(b'\n');
        out.extend_from_slice(self.facts.as_bytes());
    }

    /// The length of [`HttpResponder::report`]'s body, for Content-Length.
    fn report_len(&self, request: u64, method: &str, target: &str) -> usize {
        REPORT_TITLE.len()
            + "request: ".len()
            + method.len()
            + 1
            + target.len()
            + REPORT_COUNT.len()
            + decimal_len(request)
            + 1
            + self.facts.len()
    }
}

/// The label of the report's request count.
const REPORT_COUNT: &str = "\nrequests_on_connection: ";

/// Appends `n` in decimal.
fn decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// How many digits [`decimal`] writes.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// A 200 response's head up to its Content-Length value.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: keyferry-guest\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ";

/// The request header fields the responder acts on, matched without
/// allocating (field names are case-insensitive, RFC 9110 section 5.1).
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    Other,
}

impl Field {
    fn of(name: &str) -> Self {
        if name.eq_ignore_ascii_case("content-length") {
            Self::ContentLength
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            Self::TransferEncoding
        } else if name.eq_ignore_ascii_case("connection") {
            Self::Connection
        } else {
            Self::Other
        }
    }
}

/// The report's first line.
const REPORT_TITLE: &str = "keyferry: this response was produced inside the WebAssembly sandbox\n";

/// The report's lines about the connection, made once when the connection
/// starts. Written piece by piece, as the report is: through `format!`,
/// `core::fmt` was about 2% of the samples of a warm handoff loop.
fn facts_report(f: &Facts) -> String {
    let peer = f.peer_certificate.as_ref();
    let role = match f.role {
        Role::Client => "client",
        Role::Server => "server",
    };
    let alpn = f.alpn.as_ref().map(|a| String::from_utf8_lossy(a));
    let names = peer.map(|c| c.subject_alt_names.join(", "));
    let mut out = String::with_capacity(320);
    for (name, value) in [
        ("tls_version", f.version.name()),
        ("cipher_suite", f.suite.as_str()),
        ("server_name", f.server_name.as_deref().unwrap_or("-")),
        ("alpn", alpn.as_deref().unwrap_or("-")),
        ("peer_certificate", peer.map_or("-", |c| c.subject.as_str())),
        ("peer_issuer", peer.map_or("-", |c| c.issuer.as_str())),
        ("peer_serial", peer.map_or("-", |c| c.serial.as_str())),
        ("peer_subject_alt_names", names.as_deref().unwrap_or("-")),
        ("peer_sha256", peer.map_or("-", |c| c.sha256.as_str())),
        ("role", role),
    ] {
        for piece in [name, ": ", value, "\n"] {
            out.push_str(piece);
        }
    }
    out.push_str("connection_id: ");
    for shift in (0..16).rev() {
        let nibble = (f.connection_id >> (4 * shift)) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).expect("a nibble"));
    }
    out.push('\n');
    out
}

/// Where a request's head ends: its length up to the blank line's first
/// LF, and where the body starts. The blank line is CRLF CRLF, or a bare
/// LF in either place: RFC 9112 section 2.2 lets a recipient take a bare
/// LF as a line's end, and a client that sends only LFs must not wait for
/// a CRLF that never comes.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        match &buf[at + 1..] {
            [b'\n', ..] => return Some((at, at + 2)),
            [b'\r', b'\n', ..] => return Some((at, at + 3)),
            _ => from = at + 1,
        }
    }
    None
}

/// Refuses a request with `status`, reporting it as `(method, target)`.
fn refuse(
    responses: &mut Vec<u8>,
    answered: &mut Vec<RequestSummary>,
    status: u16,
    (method, target): (&str, &str),
) {
    let reason = match status {
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Bad Request",
    };
    let response = simple(status, reason);
    answered.push(RequestSummary {
        method: method.into(),
        target: target.into(),
        status,
        received: 0,
        // The body: "STATUS REASON\n".
        sent: (4 + reason.len() + 1) as u64,
    });
    responses.extend(response);
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
    use alloc::string::ToString;

    use super::*;
    use keyferry_guest::application::testing::pair;
    use keyferry_guest::connection::Closed;

    #[test]
    fn http_keep_alive_and_pipelining() {
        let (mut s, mut c) = pair::<HttpResponder>();
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = s.receive(&c.send(req).unwrap());
        assert!(!out.done);
        assert!(out.plaintext.is_empty(), "nothing reaches the host");
        let answered: Vec<(&str, &str, u16)> = out
            .answered
            .iter()
            .map(|r| (r.method.as_str(), r.target.as_str(), r.status))
            .collect();
        assert_eq!(answered, [("GET", "/a", 200), ("GET", "/b", 200)]);
        let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        // Each report counts its own response's body.
        let bodies: u64 = out.answered.iter().map(|r| r.sent).sum();
        let heads = text.split("\r\n\r\n").count() - 1;
        assert!(
            heads == 2 && bodies > 0 && (bodies as usize) < text.len(),
            "{bodies}"
        );
        assert!(
            text.contains("request: GET /b") && text.contains("requests_on_connection: 2"),
            "{text}"
        );
        assert!(
            text.contains("server_name: localhost") && text.contains("alpn: http/1.1"),
            "{text}"
        );
        let out = s.receive(
            &c.send(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap(),
        );
        assert!(out.done);
        let reply = c.receive(&out.to_send);
        assert_eq!(reply.closed, Some(Closed::CloseNotify));
    }

    #[test]
    fn decimal_matches_display_and_its_length() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            decimal(n, &mut out);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(decimal_len(n), out.len(), "{n}");
        }
    }

    #[test]
    fn the_facts_report_names_every_fact() {
        let mut facts = Facts {
            role: Role::Server,
            version: keyferry_guest::ProtocolVersion::Tls13,
            suite: "TLS_AES_128_GCM_SHA256".into(),
            server_name: Some("a.example".into()),
            alpn: Some(b"h2".to_vec()),
            peer_certificate: Some(keyferry_guest::connection::PeerCertificate {
                subject: "CN=alice".into(),
                issuer: "CN=ca".into(),
                serial: "01:02".into(),
                subject_alt_names: vec!["DNS:a.example".into(), "IP:10.0.0.1".into()],
                sha256: "AB:CD".into(),
            }),
            connection_id: 0x0123_4567_89ab_cdef,
        };
        assert_eq!(
            facts_report(&facts),
            "tls_version: TLSv1.3\ncipher_suite: TLS_AES_128_GCM_SHA256\n\
             server_name: a.example\nalpn: h2\npeer_certificate: CN=alice\n\
             peer_issuer: CN=ca\npeer_serial: 01:02\n\
             peer_subject_alt_names: DNS:a.example, IP:10.0.0.1\npeer_sha256: AB:CD\n\
             role: server\nconnection_id: 0123456789abcdef\n"
        );
        facts.server_name = None;
        facts.alpn = None;
        facts.peer_certificate = None;
        facts.connection_id = 42;
        let report = facts_report(&facts);
        assert!(
            report.contains("server_name: -\nalpn: -\npeer_certificate: -\n"),
            "{report}"
        );
        assert!(
            report.ends_with("peer_sha256: -\nrole: server\nconnection_id: 000000000000002a\n"),
            "{report}"
        );
    }

    #[test]
    fn a_head_ends_at_a_blank_line_with_or_without_crs() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some((24, 27))
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nbody"), Some((22, 24)));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\n\r\n"), Some((23, 26)));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        // A client that ends its lines with bare LFs is answered.
        let (mut s, mut c) = pair::<HttpResponder>();
        let out = s.receive(
            &c.send(b"GET /lf HTTP/1.1\nHost: x\nConnection: close\n\n")
                .unwrap(),
        );
        let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("request: GET /lf\n"), "{text}");
    }

    #[test]
    fn content_length_counts_the_body_and_head_sends_none() {
        let (mut s, mut c) = pair::<HttpResponder>();
        let out = s.receive(
            &c.send(b"GET /x?y=1 HTTP/1.1\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\n\r\n")
                .unwrap(),
        );
        let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
        let (get, head) = text.split_at(text.rfind("HTTP/1.1 200").unwrap());
        let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
        let length = |head: &str| -> usize {
            head.lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(length(get_head), get_body.len(), "{text}");
        assert!(get_body.starts_with(REPORT_TITLE) && get_body.contains("request: GET /x?y=1\n"));
        let (head_head, head_body) = head.split_once("\r\n\r\n").unwrap();
        assert!(head_body.is_empty(), "HEAD has no body: {head:?}");
        assert!(length(head_head) > REPORT_TITLE.len(), "{head}");
    }

    #[test]
    fn a_half_received_request_is_not_idle() {
        let (mut s, mut c) = pair::<HttpResponder>();
        let out = s.receive(&c.send(b"GET / HTTP/1.1\r\n").unwrap());
        assert!(!out.idle && !s.application().is_idle());
        assert!(
            s.into_connection().is_err(),
            "half a request cannot migrate"
        );
    }

    #[test]
    fn http_rejects_malformed_requests() {
        let (mut s, mut c) = pair::<HttpResponder>();
        let out = s.receive(&c.send(b"NONSENSE\r\n\r\n").unwrap());
        assert!(out.done);
        let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            out.answered,
            [RequestSummary {
                method: "-".into(),
                target: "-".into(),
                status: 400,
                received: 0,
                sent: body.len() as u64,
            }]
        );
    }

    #[test]
    fn http_refuses_ambiguous_content_length() {
        for request in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
        ] {
            let (mut s, mut c) = pair::<HttpResponder>();
            let out = s.receive(&c.send(request).unwrap());
            assert!(out.done);
            let text = String::from_utf8(c.receive(&out.to_send).plaintext.to_vec()).unwrap();
            assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        }
    }
}
