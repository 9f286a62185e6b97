//! The HTTP/1.1 server codec of the `wasi:http` front (RFC 9112): request
//! heads, body framing, the chunked coding both ways, and response heads.
//! Plain Rust over byte slices, so it is tested natively; the front feeds
//! it plaintext that never leaves the sandbox.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A header as the tenant sees it: the name lowercased, the value as sent.
pub type Field = (String, Vec<u8>);

/// A request line and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method token, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target (origin form, or `*`, or absolute form).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header fields in order, names lowercased.
    pub headers: Vec<Field>,
}

impl RequestHead {
    /// The values of header `name` (lowercase).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Whether a comma-separated header `name` lists `token` (case
    /// insensitive), as `Connection: close` or `Expect: 100-continue`.
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.values(name).any(|v| {
            v.split(|b| *b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Whether the connection stays open after this request's response
    /// (RFC 9112 section 9.3).
    pub fn keep_alive(&self) -> bool {
        if self.lists("connection", "close") {
            return false;
        }
        self.minor >= 1 || self.lists("connection", "keep-alive")
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a request head was refused, as the status the codec answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not HTTP/1.x syntax, or framing that cannot be trusted.
    BadRequest(&'static str),
    /// 431: the head is larger than the limit.
    HeadersTooLarge,
    /// 413: the declared body is larger than the limit.
    ContentTooLarge,
    /// 501: a transfer coding other than chunked.
    NotImplemented(&'static str),
    /// 505: not HTTP/1.0 or 1.1.
    VersionNotSupported,
}

impl Refusal {
    /// The response status.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::HeadersTooLarge => 431,
            Self::ContentTooLarge => 413,
            Self::NotImplemented(_) => 501,
            Self::VersionNotSupported => 505,
        }
    }
}

/// Most header fields in one request (nginx allows about as many in its
/// default buffers).
const MAX_FIELDS: usize = 128;

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete
/// (and still under `max_head`). On success, also returns how many bytes
/// the head took. Empty lines before the request line are skipped (RFC
/// 9112 section 2.2).
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(RequestHead, usize)>, Refusal> {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    while buf[start..].starts_with(b"\n") {
        start += 1;
    }
    let rest = &buf[start..];
    let Some((end, blank)) = find_head_end(rest) else {
        if rest.len() > max_head {
            return Err(Refusal::HeadersTooLarge);
        }
        return Ok(None);
    };
    if end > max_head {
        return Err(Refusal::HeadersTooLarge);
    }
    let head = &rest[..end];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(Refusal::BadRequest("malformed method"));
    }
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::BadRequest("malformed request target"));
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if v.starts_with(b"HTTP/") => return Err(Refusal::VersionNotSupported),
        _ => return Err(Refusal::BadRequest("malformed version")),
    };
    let headers = parse_fields(lines)?;
    let head = RequestHead {
        method: String::from_utf8(method.to_vec()).map_err(|_| Refusal::BadRequest("method"))?,
        target: String::from_utf8(target.to_vec()).map_err(|_| Refusal::BadRequest("target"))?,
        minor,
        headers,
    };
    let consumed = start + end + blank;
    Ok(Some((head, consumed)))
}

/// Parses header lines (a head's, or a chunked body's trailer section).
fn parse_fields<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Vec<Field>, Refusal> {
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Obsolete line folding: refused (RFC 9112 section 5.2).
            return Err(Refusal::BadRequest("obsolete line folding"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(Refusal::BadRequest("header line without a colon"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(Refusal::BadRequest("malformed header name"));
        }
        let value = trim(&line[colon + 1..]);
        if value.iter().any(|b| *b == 0 || *b == b'\r' || *b == b'\n') {
            return Err(Refusal::BadRequest("malformed header value"));
        }
        if headers.len() == MAX_FIELDS {
            return Err(Refusal::HeadersTooLarge);
        }
        let name = String::from_utf8(name.to_ascii_lowercase())
            .map_err(|_| Refusal::BadRequest("name"))?;
        headers.push((name, value.to_vec()));
    }
    Ok(headers)
}

/// Where a head's last line ends (its newline), and how long the blank
/// line after it is, if the head arrived whole.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|b| *b == b'\n') {
        let at = i + nl;
        match &buf[at + 1..] {
            [b'\n', ..] => return Some((at, 2)),
            [b'\r', b'\n', ..] => return Some((at, 3)),
            _ => i = at + 1,
        }
    }
    None
}

/// How the request's body is framed, or why it cannot be trusted (RFC
/// 9112 section 6.3): both Content-Length and Transfer-Encoding, a coding
/// other than chunked, or Content-Lengths that disagree are refused, as
/// request smuggling relies on them.
pub fn body_framing(head: &RequestHead, max_body: u64) -> Result<BodyFraming, Refusal> {
    let mut codings = head.values("transfer-encoding").peekable();
    if codings.peek().is_some() {
        if head.values("content-length").next().is_some() {
            return Err(Refusal::BadRequest(
                "both content-length and transfer-encoding",
            ));
        }
        if head.minor == 0 {
            return Err(Refusal::BadRequest("transfer-encoding in HTTP/1.0"));
        }
        let all: Vec<&[u8]> = codings
            .flat_map(|v| v.split(|b| *b == b','))
            .map(trim)
            .filter(|t| !t.is_empty())
            .collect();
        return match all.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(BodyFraming::Chunked),
            _ => Err(Refusal::NotImplemented("transfer coding")),
        };
    }
    let mut length = None;
    for value in head.values("content-length") {
        for part in value.split(|b| *b == b',').map(trim) {
            let n = parse_decimal(part).ok_or(Refusal::BadRequest("malformed content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::BadRequest("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    match length {
        None | Some(0) => Ok(BodyFraming::Empty),
        Some(n) if n > max_body => Err(Refusal::ContentTooLarge),
        Some(n) => Ok(BodyFraming::Length(n)),
    }
}

/// `Content-Length` fields that do not parse as one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLength;

/// The one length a response's `Content-Length` fields give (`None`
/// without one).
pub fn content_length(headers: &[Field]) -> Result<Option<u64>, InvalidLength> {
    let mut length = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        for part in value.split(|b| *b == b',').map(trim) {
            let n = parse_decimal(part).ok_or(InvalidLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(InvalidLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `name` is a valid field name (a token).
pub fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// Whether `value` may be sent as a field value.
pub fn is_field_value(value: &[u8]) -> bool {
    !value.iter().any(|b| *b == 0 || *b == b'\r' || *b == b'\n')
}

/// Most bytes of a chunk-size line (with extensions) or of a trailer
/// section.
const MAX_CHUNK_LINE: usize = 4096;

/// Decodes the chunked coding (RFC 9112 section 7.1).
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
    trailers: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// This many data bytes left in the chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
    /// Done.
    Done,
}

impl ChunkedDecoder {
    /// Decodes from `input` into `out`, at most `max` data bytes. Returns
    /// how many input bytes were used.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, &'static str> {
        let mut used = 0;
        let mut produced = 0;
        while used < input.len() && self.state != ChunkState::Done {
            let rest = &input[used..];
            match self.state {
                ChunkState::Size | ChunkState::Trailers => {
                    let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(rest);
                        used = input.len();
                        if self.line.len() + self.trailers.len() > MAX_CHUNK_LINE {
                            return Err("chunk line too long");
                        }
                        break;
                    };
                    self.line.extend_from_slice(&rest[..nl]);
                    used += nl + 1;
                    if self.line.len() + self.trailers.len() > MAX_CHUNK_LINE {
                        return Err("chunk line too long");
                    }
                    let line = core::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    if self.state == ChunkState::Size {
                        let size = line
                            .split(|b| *b == b';')
                            .next()
                            .map(trim)
                            .unwrap_or_default();
                        if size.is_empty()
                            || size.len() > 15
                            || !size.iter().all(u8::is_ascii_hexdigit)
                        {
                            return Err("malformed chunk size");
                        }
                        let n = size.iter().fold(0u64, |n, d| {
                            n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
                        });
                        self.state = if n == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(n)
                        };
                    } else if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else {
                        self.trailers.extend_from_slice(line);
                        self.trailers.push(b'\n');
                    }
                }
                ChunkState::Data(left) => {
                    if produced >= max {
                        break;
                    }
                    let n = rest
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX))
                        .min(max - produced);
                    out.extend_from_slice(&rest[..n]);
                    produced += n;
                    used += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    // CRLF (or a bare LF) after the data.
                    match rest {
                        [b'\r', b'\n', ..] => {
                            used += 2;
                            self.state = ChunkState::Size;
                        }
                        [b'\n', ..] => {
                            used += 1;
                            self.state = ChunkState::Size;
                        }
                        [b'\r'] => break,
                        _ => return Err("chunk data not followed by CRLF"),
                    }
                }
                ChunkState::Done => unreachable!("the loop stops at Done"),
            }
        }
        Ok(used)
    }

    /// Whether the last chunk and the trailer section arrived.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The trailer fields, once done.
    pub fn trailers(&self) -> Result<Vec<Field>, Refusal> {
        parse_fields(self.trailers.split(|b| *b == b'\n'))
    }
}

/// How a response body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    /// The tenant set Content-Length.
    Length(u64),
    /// Chunked (HTTP/1.1 without Content-Length).
    Chunked,
    /// Until the connection closes (HTTP/1.0 without Content-Length).
    Close,
}

/// Headers the front writes itself: the tenant's are dropped.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "http2-settings"
    )
}

/// The response head. `framing` decides Transfer-Encoding; `close` adds
/// `Connection: close`; `now` (seconds since the Unix epoch) is the Date
/// an origin server with a clock must send (RFC 9110 section 6.6.1), unless
/// the component set its own.
pub fn response_head(
    status: u16,
    headers: &[Field],
    framing: ResponseFraming,
    close: bool,
    now: u64,
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (name, value) in headers {
        if is_hop_by_hop(name) {
            continue;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    if !headers.iter().any(|(name, _)| name == "date") {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(&imf_fixdate(now));
        head.extend_from_slice(b"\r\n");
    }
    if framing == ResponseFraming::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// `unix_seconds` as an IMF-fixdate (RFC 9110 section 5.6.7), the form of
/// the Date header: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(unix_seconds: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (a
    // Thursday) in the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |out: &mut [u8], at: usize, n: u64| {
        out[at] = b'0' + (n / 10 % 10) as u8;
        out[at + 1] = b'0' + (n % 10) as u8;
    };
    two(&mut out, 5, day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut out, 12, year / 100);
    two(&mut out, 14, year % 100);
    two(&mut out, 17, secs / 3600);
    two(&mut out, 20, secs / 60 % 60);
    two(&mut out, 23, secs % 60);
    out
}

/// A chunk of the chunked coding.
pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the trailer section.
pub fn last_chunk(trailers: &[Field], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        if is_hop_by_hop(name) || name == "content-length" {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole short response the codec answers by itself (errors, and the
/// 500 kept in reserve): a text body and `Connection: close`.
pub fn simple_response(status: u16, head_only: bool, now: u64) -> Vec<u8> {
    let body = format!("{status} {}\n", reason(status));
    let headers = [
        ("content-type".into(), b"text/plain".to_vec()),
        (
            "content-length".into(),
            format!("{}", body.len()).into_bytes(),
        ),
    ];
    let mut out = response_head(
        status,
        &headers,
        ResponseFraming::Length(body.len() as u64),
        true,
        now,
    );
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Whether a response with `status` to `method` has no body.
pub fn bodiless(method: &str, status: u16) -> bool {
    method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304
}

/// The reason phrase for `status` (informative only; clients ignore it).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        418 => "I'm a teapot",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_leaves_the_pipelined_rest() {
        let req =
            b"\r\nGET /a?b=1 HTTP/1.1\r\nHost: Example.com\r\nX-A:  v \r\n\r\nGET / HTTP/1.1\r\n";
        let (head, used) = parse_head(req, 1024).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/a?b=1");
        assert_eq!(head.minor, 1);
        assert_eq!(
            head.headers,
            [
                ("host".into(), b"Example.com".to_vec()),
                ("x-a".into(), b"v".to_vec())
            ]
        );
        assert_eq!(&req[used..], b"GET / HTTP/1.1\r\n");
        assert!(head.keep_alive());
        assert_eq!(parse_head(&req[used..], 1024), Ok(None));
    }

    #[test]
    fn refuses_what_nginx_refuses() {
        let refuse = |r: &[u8]| parse_head(r, 64).unwrap_err();
        assert_eq!(
            refuse(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n").status(),
            400
        );
        assert_eq!(refuse(b"GET  / HTTP/1.1\r\n\r\n").status(), 400);
        assert_eq!(refuse(b"GET / HTTP/2.0\r\n\r\n").status(), 505);
        assert_eq!(refuse(b"GET / HTTP/1.1\r\nNo colon\r\n\r\n").status(), 400);
        assert_eq!(refuse(&[b'a'; 65]).status(), 431);
        let head = |r: &[u8]| parse_head(r, 1024).unwrap().unwrap().0;
        let both =
            head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(body_framing(&both, 10).unwrap_err().status(), 400);
        let two = head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(body_framing(&two, 10).unwrap_err().status(), 400);
        let gzip = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(body_framing(&gzip, 10).unwrap_err().status(), 501);
        let big = head(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(body_framing(&big, 10).unwrap_err().status(), 413);
        assert_eq!(body_framing(&big, 11), Ok(BodyFraming::Length(11)));
        let old = head(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!old.keep_alive());
        let close = head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!close.keep_alive());
    }

    #[test]
    fn chunked_in_any_split_with_trailers() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\nNEXT";
        for split in 1..wire.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut used = d.decode(&wire[..split], &mut out, usize::MAX).unwrap();
            while !d.is_done() && used < wire.len() {
                used += d.decode(&wire[used..], &mut out, usize::MAX).unwrap();
            }
            assert!(d.is_done(), "split {split}");
            assert_eq!(out, b"Wikipedia");
            assert_eq!(&wire[used..], b"NEXT");
            assert_eq!(d.trailers().unwrap(), [("x-sum".into(), b"9".to_vec())]);
        }
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"zz\r\n", &mut Vec::new(), 10).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"3\r\nabcX", &mut Vec::new(), 10).is_err());
    }

    #[test]
    fn decoding_stops_at_the_reader_limit() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let used = d
            .decode(b"a\r\n0123456789\r\n0\r\n\r\n", &mut out, 4)
            .unwrap();
        assert_eq!(out, b"0123");
        assert_eq!(used, 7);
    }

    #[test]
    fn a_response_length_is_one_number() {
        let f = |v: &[&str]| -> Vec<Field> {
            v.iter()
                .map(|v| ("content-length".into(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(content_length(&f(&[])), Ok(None));
        assert_eq!(content_length(&f(&["5"])), Ok(Some(5)));
        assert_eq!(content_length(&f(&["5", "5, 5"])), Ok(Some(5)));
        assert_eq!(content_length(&f(&["5", "100"])), Err(InvalidLength));
        assert_eq!(content_length(&f(&["+5"])), Err(InvalidLength));
    }

    #[test]
    fn response_heads_frame_the_body() {
        let head = response_head(
            200,
            &[
                ("x".into(), b"1".to_vec()),
                ("connection".into(), b"x".to_vec()),
            ],
            ResponseFraming::Chunked,
            true,
            784_111_777,
        );
        assert_eq!(
            head,
            &b"HTTP/1.1 200 OK\r\nx: 1\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
               transfer-encoding: chunked\r\nconnection: close\r\n\r\n"[..]
        );
        // The component's own Date stands.
        let head = response_head(
            204,
            &[("date".into(), b"x".to_vec())],
            ResponseFraming::None,
            false,
            0,
        );
        assert_eq!(head, b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
        let mut out = Vec::new();
        chunk(b"hello", &mut out);
        last_chunk(&[("x-t".into(), b"2".to_vec())], &mut out);
        assert_eq!(out, b"5\r\nhello\r\n0\r\nx-t: 2\r\n\r\n");
    }

    #[test]
    fn dates_are_imf_fixdates() {
        for (seconds, date) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_798_761_599, "Thu, 31 Dec 2026 23:59:59 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
        ] {
            assert_eq!(&imf_fixdate(seconds), date.as_bytes(), "{seconds}");
        }
    }
}
