//! Stock `wasi:http` components served over HTTPS (DESIGN section 9):
//! components from three toolchains and wasmtime's own test programs,
//! driven by curl and raw HTTP/1.1 over rustls, in both placements.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyferry_tests::process::{
    LONG_GUEST_CALL, Server, children, guest_failure, has_fields, memory_find, message, relayed,
    rustls_client, sample, scrape, temp_dir,
};
use keyferry_tests::tenants;
use serde_json::Value;

/// Waits for a per-connection event that ended as `ending`, logged by a
/// worker or, with `--workers 0` in `placement`, by the server itself;
/// then checks that no connection so far ended in a guest failure.
fn ended_without_guest_failures(server: &Server, ending: &str, placement: &[&str]) {
    let in_workers = !placement.windows(2).any(|w| w == ["--workers", "0"]);
    server.stderr.wait_for_event(|e| {
        has_fields(e, &[("message", "connection"), ("ending", ending)]) && relayed(e) == in_workers
    });
    assert!(
        !server.stderr.events().iter().any(guest_failure),
        "{}",
        server.stderr.text()
    );
}

/// The response carries a Date (RFC 9110 section 6.6.1) in the
/// IMF-fixdate form, which GNU date reads back, and it is the time now.
fn assert_dated(r: &Response) {
    let date = r.header("date").unwrap_or_else(|| panic!("no Date: {r:?}"));
    assert!(date.len() == 29 && date.ends_with(" GMT"), "{date:?}");
    let read = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .expect("date");
    let seconds: u64 = String::from_utf8_lossy(&read.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("GNU date cannot read {date:?}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(seconds.abs_diff(now) < 600, "{date:?} is not now");
}

/// `serve --guest tenant`, with a worker ready: workers compile the
/// component after the listener is up (a large one, such as the
/// JavaScript engine, takes seconds). Clients wait in the listen backlog
/// meanwhile; waiting here keeps the compile out of each test's timeouts.
fn serve(tenant: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--guest", tenant];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    if !extra.windows(2).any(|w| w == ["--workers", "0"]) {
        server
            .stderr
            .wait_for_event(|e| message(e) == "worker ready" && !relayed(e));
    }
    server
}

/// curl's body, and whether it succeeded.
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn get(server: &Server, path: &str) -> String {
    let (ok, body) = curl(&[&server.url(path)]);
    assert!(ok, "GET {path}: {body}");
    body
}

/// `GET path`, answering the status code.
fn status(server: &Server, path: &str) -> String {
    curl(&["-o", "/dev/null", "-w", "%{http_code}", &server.url(path)]).1
}

/// One HTTP/1.1 response as a client reads it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads HTTP/1.1 responses from a stream, keeping what follows one for
/// the next (pipelining).
struct Reader<S> {
    stream: S,
    buf: Vec<u8>,
    eof: bool,
}

impl<S: Read> Reader<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    fn more(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            if !self.more() {
                return None;
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn fields(&mut self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while let Some(line) = self.line() {
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("a header line");
            fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        fields
    }

    /// The next response; `head_only` for a response to HEAD.
    fn response(&mut self, head_only: bool) -> Option<Response> {
        let status_line = self.line()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers = self.fields();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if head_only || status == 100 || status == 204 || status == 304 {
            return Some(response);
        }
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line()?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    response.trailers = self.fields();
                    break;
                }
                response.body.extend(self.take(size)?);
                self.take(2)?;
            }
        } else if let Some(length) = response.header("content-length") {
            let n = length.parse().ok()?;
            response.body = self.take(n)?;
        } else {
            while self.more() {}
            response.body = std::mem::take(&mut self.buf);
        }
        Some(response)
    }
}

/// A raw keep-alive connection to the server over rustls.
struct Client {
    reader: Reader<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
}

impl Client {
    fn connect(server: &Server) -> Self {
        let stream = rustls_client(&server.addr());
        stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self {
            reader: Reader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.stream.write_all(bytes).expect("send");
        self.reader.stream.flush().expect("flush");
    }

    fn response(&mut self) -> Response {
        self.reader.response(false).expect("a response")
    }

    /// Whether the server closed the connection (EOF next).
    fn closed(&mut self) -> bool {
        self.reader.buf.is_empty() && !self.reader.more()
    }

    /// Whether the server ended the TLS stream with close_notify: rustls
    /// reads 0 bytes then, and an error after a bare TCP close.
    fn closed_with_close_notify(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.reader.buf.is_empty() && matches!(self.reader.stream.read(&mut byte), Ok(0))
    }
}

#[test]
fn stock_components_from_three_toolchains_are_served_in_both_placements() {
    for placement in [&[][..], &["--workers", "0"][..]] {
        // Plain generated bindings (wasip2, wasi 0.2.12).
        let plain = serve(tenants::PLAIN, placement);
        assert_eq!(get(&plain, "/"), "hello from a stock wasi:http component\n");
        let (ok, seen) = curl(&[
            "-H",
            "X-Mixed-Case: Value",
            "--resolve",
            &format!("example.test:{}:127.0.0.1", plain.port),
            &format!("https://example.test:{}/request?q=1", plain.port),
        ]);
        assert!(ok, "{seen}");
        assert!(seen.contains("scheme=Some(Scheme::Https)"), "{seen}");
        assert!(
            seen.contains(&format!("authority=Some(\"example.test:{}\")", plain.port)),
            "{seen}"
        );
        assert!(seen.contains("path=/request?q=1"), "{seen}");
        assert!(seen.contains("x-mixed-case: Value"), "{seen}");
        assert!(
            !seen.contains("host:"),
            "the Host header is the authority: {seen}"
        );
        // Two requests, one connection.
        let (ok, both) = curl(&[
            "-w",
            "connects=%{num_connects}\n",
            &plain.url("/"),
            &plain.url("/"),
        ]);
        assert!(
            ok && both.contains("connects=1\n") && both.ends_with("connects=0\n"),
            "{both}"
        );

        // The async Rust SDK: wstd's own example.
        let wstd = serve(tenants::WSTD, placement);
        assert_eq!(get(&wstd, "/"), "Hello, wasi:http/proxy world!\n");
        let (ok, echoed) = curl(&["--data-binary", "wstd echo", &wstd.url("/echo")]);
        assert!(ok && echoed == "wstd echo", "{echoed}");
        let streamed = get(&wstd, "/stream-body");
        assert_eq!(streamed.lines().count(), 5, "{streamed}");

        // Another language: JavaScript through componentize-js. Its
        // engine takes each worker seconds to compile; a client that
        // connects as soon as the server says it serves waits in the
        // listen backlog meanwhile, and is served (it was closed before).
        // (A debug build on a busy machine compiles it for most of a
        // minute: curl waits for up to three.)
        let js = Server::start(&[&["--guest", tenants::JS][..], placement].concat());
        let (ok, hi) = curl(&["--max-time", "180", &js.url("/hi")]);
        assert!(ok && hi == "hello from JavaScript, GET /hi\n", "{hi}");
        let (ok, shouted) = curl(&["--data-binary", "from js", &js.url("/echo")]);
        assert!(ok && shouted == "FROM JS", "{shouted}");

        // wasmtime's own test programs, one of them at wasi 0.2.4.
        let proxy = serve(tenants::API_PROXY, placement);
        assert_eq!(get(&proxy, "/"), "hello, world!");
        assert_eq!(get(&proxy, "/early_drop"), "hello, world!");
        assert_eq!(get(&proxy, "/modify_fields/1000"), "Ok(())");
        assert_eq!(get(&proxy, "/new_fields/1000"), "Ok(())");
        let streaming = serve(tenants::API_PROXY_STREAMING, placement);
        let big: String = "streamed through wasmtime's own test program\n".repeat(20_000);
        let file = temp_dir("wasi-http-echo").join("body");
        std::fs::write(&file, &big).unwrap();
        let (ok, echoed) = curl(&[
            "--data-binary",
            &format!("@{}", file.display()),
            &streaming.url("/echo"),
        ]);
        assert!(ok && echoed == big, "{} bytes back", echoed.len());

        for server in [&plain, &wstd, &js, &proxy, &streaming] {
            ended_without_guest_failures(server, "close_notify", placement);
        }
    }
}

/// How many threads process `pid` runs now.
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn idle_keep_alive_connections_hold_no_thread_and_time_out_with_close_notify() {
    let server = serve(
        tenants::PLAIN,
        &["--workers", "1", "--keepalive-timeout", "3"],
    );
    let worker = children(server.child.id())[0];
    let threads = || threads_of(worker);
    let before = threads();
    let mut clients: Vec<Client> = (0..60)
        .map(|_| {
            let mut client = Client::connect(&server);
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(client.response().status, 200);
            client
        })
        .collect();
    // Each connection is parked between requests: waited for on the
    // worker's runtime, with no thread of its own.
    let idle = threads();
    assert!(
        idle < before + 16,
        "{idle} threads with 60 idle connections ({before} before)"
    );
    // A parked connection still serves its next request.
    clients[7].send(b"GET /count HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(clients[7].response().body, b"1\n");
    // The keep-alive timeout closes them with close_notify (a clean end
    // of the TLS stream: rustls reads 0 bytes, not an unexpected EOF).
    for client in &mut clients {
        let mut byte = [0u8; 1];
        let read = client.reader.stream.read(&mut byte);
        assert!(matches!(read, Ok(0)), "{read:?}");
    }
    ended_without_guest_failures(&server, "keepalive_timeout", &["--workers", "1"]);
}

#[test]
fn a_head_trickled_byte_by_byte_holds_no_thread_and_meets_the_request_timeout() {
    let server = serve(
        tenants::PLAIN,
        &["--workers", "1", "--request-timeout", "2"],
    );
    let worker = children(server.child.id())[0];
    let threads = || threads_of(worker);
    let before = threads();
    // Forty clients each start a head and add a header line a second,
    // which would never finish: the slowloris attack.
    let mut clients: Vec<Client> = (0..40)
        .map(|_| {
            let mut client = Client::connect(&server);
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
            client
        })
        .collect();
    let mut closed = vec![false; clients.len()];
    for round in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        if round == 0 {
            let during = threads();
            assert!(
                during < before + 16,
                "{during} threads with 40 heads in progress ({before} before)"
            );
        }
        for (client, closed) in clients.iter_mut().zip(closed.iter_mut()) {
            if !*closed
                && client
                    .reader
                    .stream
                    .write_all(b"X-Slow: 1\r\n")
                    .and_then(|()| client.reader.stream.flush())
                    .is_err()
            {
                *closed = true;
            }
        }
    }
    // The head had to be whole 2 s after its first byte, however the bytes
    // came: every client was closed long before its tenth line.
    for client in &mut clients {
        client
            .reader
            .stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = client.reader.stream.read(&mut byte);
        // close_notify, or a reset if a late line hit the closed socket;
        // not a read that timed out on a connection still open.
        let open = matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(
            matches!(read, Ok(0)) || (read.is_err() && !open),
            "{read:?}"
        );
    }
    ended_without_guest_failures(&server, "request_timeout", &["--workers", "1"]);
    // And a whole request is still served.
    assert_eq!(
        get(&server, "/"),
        "hello from a stock wasi:http component\n"
    );
}

#[test]
fn an_instance_per_connection_or_per_request() {
    let counts = |server: &Server| {
        let mut client = Client::connect(server);
        client.send(b"GET /count HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut seen = vec![client.response().body];
        for _ in 0..2 {
            client.send(b"GET /count HTTP/1.1\r\nHost: a\r\n\r\n");
            seen.push(client.response().body);
        }
        // Pipelined requests stay with the instance that has them.
        client
            .send(b"GET /count HTTP/1.1\r\nHost: a\r\n\r\nGET /count HTTP/1.1\r\nHost: a\r\n\r\n");
        seen.push(client.response().body);
        seen.push(client.response().body);
        seen.into_iter()
            .map(|b| String::from_utf8(b).unwrap().trim().to_string())
            .collect::<Vec<_>>()
    };
    for placement in [&["--workers", "1"][..], &["--workers", "0"][..]] {
        let per_connection = serve(tenants::PLAIN, placement);
        assert_eq!(counts(&per_connection), ["1", "2", "3", "4", "5"]);
        let mut args = placement.to_vec();
        args.push("--instance-per-request");
        let per_request = serve(tenants::PLAIN, &args);
        assert_eq!(counts(&per_request), ["1", "1", "1", "1", "2"]);
        // The async SDK's component too, through the same moves.
        let wstd = serve(tenants::WSTD, &args);
        let (ok, body) = curl(&[&wstd.url("/"), &wstd.url("/"), &wstd.url("/")]);
        assert!(ok && body.matches("Hello").count() == 3, "{body}");
        ended_without_guest_failures(&per_request, "close_notify", placement);
    }
}

#[test]
fn bodies_stream_with_length_and_chunked_coding_and_trailers_both_ways() {
    let server = serve(tenants::PLAIN, &[]);
    let mut client = Client::connect(&server);
    client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world");
    let r = client.response();
    assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");

    // Chunked in, with a trailer: chunked out, with the same trailer.
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n1;ext=x\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: 42\r\n\r\n",
    );
    let r = client.response();
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.trailers, [("x-checksum".to_string(), "42".to_string())]);

    // Content-Length set by the component: sent as is, no chunking.
    client.send(b"GET /length?n=100000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = client.response();
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body, vec![b'x'; 100_000]);
}

#[test]
fn keep_alive_pipelining_head_close_and_continue_behave_as_nginx() {
    let server = serve(tenants::PLAIN, &[]);
    let mut client = Client::connect(&server);
    // Pipelined: four requests in one write, answered in order.
    client.send(
        b"GET /request?n=1 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          HEAD / HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /request?n=4 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let r = client.response();
    assert!(String::from_utf8_lossy(&r.body).contains("path=/request?n=1"));
    assert_dated(&r);
    assert_eq!(client.response().body, b"abc");
    let head = client.reader.response(true).expect("HEAD answered");
    assert_eq!(head.status, 200);
    let r = client.response();
    assert!(
        String::from_utf8_lossy(&r.body).contains("path=/request?n=4"),
        "{r:?}"
    );

    // Expect: 100-continue: the interim response before the body is sent.
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = client.response();
    assert_eq!(interim.status, 100);
    client.send(b"body");
    assert_eq!(client.response().body, b"body");

    // A response the component gives no body: empty, and the connection
    // goes on.
    client.send(b"GET /nobody HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(client.response().status, 204);
    assert_eq!(client.response().status, 200);

    // Connection: close is honoured, and so is HTTP/1.0's default, both
    // ending with close_notify (a whole response, not a cut-off one).
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let r = client.response();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        client.closed_with_close_notify(),
        "close_notify after Connection: close"
    );
    let mut old = Client::connect(&server);
    old.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(old.response().status, 200);
    assert!(
        old.closed_with_close_notify(),
        "HTTP/1.0 without keep-alive closes"
    );

    // A target whose query holds a URL is origin form: the authority is
    // the Host header's, the path whole.
    let mut c = Client::connect(&server);
    c.send(b"GET /request?next=https://evil.test/x HTTP/1.1\r\nHost: good.test\r\n\r\n");
    let seen = String::from_utf8(c.response().body).unwrap();
    assert!(seen.contains("authority=Some(\"good.test\")"), "{seen}");
    assert!(
        seen.contains("path=/request?next=https://evil.test/x"),
        "{seen}"
    );
    // The absolute form names the authority itself.
    c.send(b"GET https://other.test/request HTTP/1.1\r\nHost: good.test\r\n\r\n");
    let seen = String::from_utf8(c.response().body).unwrap();
    assert!(seen.contains("authority=Some(\"other.test\")"), "{seen}");
}

#[test]
fn malformed_oversize_and_too_large_requests_are_refused() {
    let server = serve(
        tenants::PLAIN,
        &["--max-body", "1000", "--max-head", "4096"],
    );
    let refused = |request: Vec<u8>| {
        let mut client = Client::connect(&server);
        client.send(&request);
        let r = client.response();
        assert!(client.closed(), "closed after {}", r.status);
        assert_dated(&r);
        r.status
    };
    assert_eq!(refused(b"GARBAGE\r\n\r\n".to_vec()), 400);
    assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n".to_vec()), 400, "no Host");
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        400,
        "two Hosts"
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        400
    );
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(vec![b'a'; 8192]);
    big.extend(b"\r\n\r\n");
    assert_eq!(refused(big), 431);
    assert_eq!(
        refused(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n".to_vec()),
        413
    );
    // Over the cap in chunks: 413, since nothing was answered yet.
    let mut chunked =
        b"POST /upper HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend(b"190\r\n");
        chunked.extend(vec![b'a'; 400]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    assert_eq!(refused(chunked), 413);
    // A body cut off by close_notify: the component's read fails (it
    // traps, answered 500) instead of spinning on a stream that will
    // never fill.
    let mut cut = Client::connect(&server);
    cut.send(b"POST /upper HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello");
    cut.reader.stream.conn.send_close_notify();
    cut.reader.stream.flush().unwrap();
    assert_eq!(cut.response().status, 500);
    // A final status of 1xx is the component's error.
    assert_eq!(status(&server, "/status?code=150"), "500");
    // A stream of empty lines before a request is skipped, and dropped as
    // it comes.
    let mut blank = Client::connect(&server);
    blank.send(&b"\r\n".repeat(50_000));
    blank.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(blank.response().status, 200);
    // The server carries on.
    assert_eq!(
        get(&server, "/"),
        "hello from a stock wasi:http component\n"
    );
}

#[test]
fn the_components_imports_behave_as_a_host_should() {
    let server = serve(tenants::PLAIN, &["--env", "GREETING=hello there"]);
    assert_eq!(get(&server, "/env?name=GREETING"), "hello there");
    assert_eq!(get(&server, "/env?name=HOME"), "(unset)");
    let started = Instant::now();
    let slept = get(&server, "/sleep?ms=1000");
    assert!(started.elapsed() >= Duration::from_millis(1000), "{slept}");
    let ms: u64 = slept
        .trim_start_matches("slept ")
        .trim_end_matches(" ms\n")
        .parse()
        .unwrap();
    assert!(ms >= 1000, "{slept}");
    assert!(get(&server, "/fs").starts_with("cannot open /etc/passwd"));
    let socket = get(&server, "/socket");
    assert!(socket.starts_with("cannot connect:"), "{socket}");
    assert_eq!(
        get(&server, "/outgoing"),
        "refused: ErrorCode::HttpRequestDenied\n"
    );
    assert_eq!(get(&server, "/print"), "printed\n");
    // The component's output, one event a line, from the worker that ran
    // it, with the stream and the connection's peer.
    let component = |e: &Value, stream: &str, line: &str| {
        has_fields(
            e,
            &[
                ("target", "keyferry::component"),
                ("stream", stream),
                ("message", line),
            ],
        ) && e["peer"].is_string()
            && relayed(e)
    };
    server
        .stderr
        .wait_for_event(|e| component(e, "stderr", "a line on stderr"));
    let events = server.stderr.events();
    assert!(
        events
            .iter()
            .any(|e| component(e, "stdout", "a line on stdout")),
        "{}",
        server.stderr.text()
    );
    // The second of sleep was waiting, not computing: it is no reason to
    // move guest calls off their runtime thread. (On a loaded machine a
    // debug build's instantiation may pass the 50 ms limit first; then the
    // switch is made once, for that, and this sees nothing.)
    for e in events.iter().filter(|e| message(e) == LONG_GUEST_CALL) {
        let took = e["took_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric took_ms in {e}"));
        assert!(took < 900, "the sleep counted as computing: {e}");
    }
}

#[test]
fn faults_end_only_their_connection() {
    let server = serve(
        tenants::PLAIN,
        &[
            "--workers",
            "1",
            "--deadline-ms",
            "300",
            "--request-timeout",
            "2",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let mut keeper = Client::connect(&server);
    keeper.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(keeper.response().status, 200);

    for path in ["/trap", "/loop", "/memory", "/exit", "/noanswer"] {
        assert_eq!(status(&server, path), "500", "{path}");
    }
    // A component that never answers: the request timeout, then 500.
    let started = Instant::now();
    assert_eq!(status(&server, "/sleep?ms=100000"), "500");
    assert!(started.elapsed() < Duration::from_secs(30));
    // A fault after the response started: the connection is reset, never
    // passed off as a whole response.
    let (ok, partial) = curl(&[&server.url("/trap-midway")]);
    assert!(!ok, "a cut-off response must fail the client: {partial:?}");

    keeper.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        keeper.response().status,
        200,
        "the other connection carries on"
    );
    // Each fault answered with a 500 is one per-connection event, from
    // the worker, whose detail says so: the trap, loop, memory, exit and
    // the request timeout (midway resets instead, and the missing answer
    // is the front's own 500, a clean ending).
    let answered = server.stderr.wait_for_events(5, |e| {
        guest_failure(e)
            && relayed(e)
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("(answered 500)"))
    });
    for cause in ["execution deadline passed", "resource limit reached"] {
        assert!(
            answered
                .iter()
                .any(|e| e["detail"].as_str().is_some_and(|d| d.contains(cause))),
            "{cause}: {}",
            server.stderr.text()
        );
    }
    // Counted in the metrics by their trap (a worker reports a moment after
    // its log line): the trap, loop, memory, exit, timeout and midway (the
    // missing answer is the front's own 500, a clean ending).
    let metrics = server.metrics_addr();
    let started = Instant::now();
    let samples = loop {
        let samples = scrape(&metrics);
        let failures = sample(
            &samples,
            "keyferry_connections_ended_total",
            &[("ending", "guest_failure")],
        );
        if failures >= 6.0 {
            break samples;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{samples:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let traps = |kind| sample(&samples, "keyferry_guest_traps_total", &[("kind", kind)]);
    assert!(traps("deadline") >= 1.0, "the loop: {samples:?}");
    assert!(traps("resource_limit") >= 1.0, "the memory: {samples:?}");
    assert!(
        traps("other") >= 4.0,
        "trap, exit, the timeout, midway: {samples:?}"
    );
}

#[test]
fn two_hundred_concurrent_connections_are_served() {
    let server = serve(tenants::PLAIN, &["--max-connections", "512"]);
    let served = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let addr = server.addr();
            let served = served.clone();
            std::thread::spawn(move || {
                let stream = rustls_client(&addr);
                stream
                    .sock
                    .set_read_timeout(Some(Duration::from_secs(120)))
                    .unwrap();
                let mut reader = Reader::new(stream);
                for n in 0..2 {
                    let body = format!("connection {i} request {n}");
                    let request = format!(
                        "POST /upper HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    reader.stream.write_all(request.as_bytes()).unwrap();
                    let r = reader.response(false).expect("answered");
                    assert_eq!(r.body, body.to_uppercase().as_bytes());
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    assert_eq!(served.load(Ordering::Relaxed), 400);
}

/// A process's mappings that wasmtime reserved for guest memory: runs of
/// adjacent mappings, anonymous or of wasmtime's copy-on-write memory
/// images (`/memfd:wasm-memory-image`), spanning at least 1 GiB (a linear
/// memory's reservation with its guard; nothing else in these processes
/// reserves that much in one place).
fn guest_ranges(pid: u32) -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let anonymous = fields.len() == 5 || line.contains("/memfd:wasm-memory-image");
        let Some((start, end)) = fields[0].split_once('-') else {
            continue;
        };
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        match runs.last_mut() {
            Some(run) if anonymous && run.1 == start => run.1 = end,
            _ if anonymous => runs.push((start, end)),
            _ => {}
        }
    }
    runs.retain(|(s, e)| e - s >= 1 << 30);
    runs
}

#[test]
fn request_and_response_plaintext_exist_only_in_guest_memory() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let server = serve(tenants::PLAIN, &["--workers", "1"]);
    let marker: String = (0..24)
        .map(|_| char::from(b'a' + (getrandom_byte() % 26)))
        .collect();
    let request_marker = format!("kfreq-{marker}");
    let response_marker = request_marker.to_uppercase();
    let mut client = Client::connect(&server);
    client.send(
        format!(
            "POST /upper HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{request_marker}",
            request_marker.len()
        )
        .as_bytes(),
    );
    assert_eq!(client.response().body, response_marker.as_bytes());
    // The connection stays open while the processes are read.
    let handshake = server.child.id();
    let workers = children(handshake);
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = workers[0];
    let ranges = guest_ranges(worker);
    assert!(!ranges.is_empty(), "no guest memory found in the worker");
    let in_guest = |at: &u64| ranges.iter().any(|(s, e)| (*s..*e).contains(at));
    for marker in [&request_marker, &response_marker] {
        let found = memory_find(worker, marker.as_bytes());
        assert!(
            found.iter().any(in_guest),
            "{marker} is not in the guest's memory: {found:x?}"
        );
        let outside: Vec<_> = found.iter().filter(|a| !in_guest(a)).collect();
        assert!(
            outside.is_empty(),
            "{marker} is in the worker's host memory at {outside:x?} (guest ranges {ranges:x?})"
        );
        assert!(
            memory_find(handshake, marker.as_bytes()).is_empty(),
            "{marker} is in the handshake process"
        );
    }
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(client.response().status, 200);
}

fn getrandom_byte() -> u8 {
    let mut b = [0u8; 1];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    b[0]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_gigabyte_streams_through_while_worker_memory_stays_flat() {
    const TOTAL: u64 = 1 << 30;
    let server = serve(tenants::PLAIN, &["--workers", "1"]);
    server
        .stderr
        .wait_for_event(|e| message(e) == "worker confined" && relayed(e));
    let worker = children(server.child.id())[0];
    let mut stream = rustls_client(&server.addr());
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let baseline = rss_kib(worker);
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(worker), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // One rustls stream, nonblocking: write a chunk, read what came back,
    // so neither side's buffers fill.
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    stream.sock.set_nonblocking(true).unwrap();
    let chunk = vec![b'z'; 256 << 10];
    let (mut sent, mut echoed) = (0u64, 0u64);
    let mut pending: Vec<u8> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(600);
    while !tail.ends_with(b"\r\n0\r\n\r\n") {
        assert!(
            Instant::now() < deadline,
            "stalled: sent {sent}, echoed {echoed}"
        );
        if sent < TOTAL && pending.is_empty() {
            pending.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
            pending.extend(&chunk);
            pending.extend(b"\r\n");
            sent += chunk.len() as u64;
            if sent >= TOTAL {
                pending.extend(b"0\r\n\r\n");
            }
        }
        let mut progress = false;
        if !pending.is_empty() {
            match stream.write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                    progress = n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("closed after {echoed} bytes"),
            Ok(n) => {
                echoed += buf[..n].iter().filter(|b| **b == b'z').count() as u64;
                tail.extend_from_slice(&buf[..n]);
                let cut = tail.len().saturating_sub(16);
                tail.drain(..cut);
                progress = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        if !progress {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(echoed, TOTAL);
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("worker RSS: {baseline} KiB before, peak {peak} KiB while 1 GiB streamed");
    assert!(
        peak.saturating_sub(baseline) < 128 << 10,
        "worker memory grew from {baseline} KiB to {peak} KiB"
    );
}
