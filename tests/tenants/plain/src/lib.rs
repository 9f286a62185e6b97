//! A stock `wasi:http` component on plain generated bindings (the `wasip2`
//! crate, wasi 0.2.12), synchronous, with std. Nothing in it knows
//! keyferry: its routes exercise what any host owes a component.
//!
//! - `/` a short text; `/request` the request as the component sees it;
//! - `/echo` streams the body back (chunked), with the request's trailers
//!   as the response's; `/upper` answers the body in upper case; `/length?n=N` N bytes with Content-Length;
//! - `/sleep?ms=N` answers after N ms on the monotonic clock;
//! - `/count` how many requests this instance has served;
//! - `/status?code=N`, `/env?name=K`, `/print`, `/fs`, `/socket`,
//!   `/outgoing`;
//! - faults: `/trap`, `/loop`, `/memory`, `/exit`, `/noanswer`,
//!   `/trap-midway` (traps after the head and some body went out).

use std::io::Write as _;

use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{OutputStream, StreamError};

struct Plain;

wasip2::http::proxy::export!(Plain);

impl wasip2::exports::http::incoming_handler::Guest for Plain {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (route, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("")
                .to_string()
        };
        match route {
            "/" => text(out, 200, "hello from a stock wasi:http component\n"),
            "/request" => {
                let mut s = format!(
                    "method={:?}\nscheme={:?}\nauthority={:?}\npath={target}\n",
                    request.method(),
                    request.scheme(),
                    request.authority()
                );
                for (name, value) in request.headers().entries() {
                    s.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                text(out, 200, &s);
            }
            "/echo" => echo(request, out),
            "/upper" => upper(request, out),
            "/count" => {
                // Requests this instance has served: 1, 2, 3 on one
                // keep-alive connection, unless each gets a fresh instance.
                static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                text(out, 200, &format!("{n}\n"));
            }
            "/length" => {
                let n: usize = param("n").parse().unwrap_or(0);
                let headers = Fields::from_list(&[("content-length".into(), n.to_string().into())])
                    .unwrap();
                let response = OutgoingResponse::new(headers);
                let body = response.body().unwrap();
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().unwrap();
                write_all(&stream, &vec![b'x'; n]);
                drop(stream);
                OutgoingBody::finish(body, None).unwrap();
            }
            "/sleep" => {
                let ms: u64 = param("ms").parse().unwrap_or(0);
                let start = wasip2::clocks::monotonic_clock::now();
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                let slept = (wasip2::clocks::monotonic_clock::now() - start) / 1_000_000;
                text(out, 200, &format!("slept {slept} ms\n"));
            }
            "/status" => text(out, param("code").parse().unwrap_or(200), ""),
            "/env" => text(
                out,
                200,
                &std::env::var(param("name")).unwrap_or_else(|_| "(unset)".into()),
            ),
            "/print" => {
                println!("a line on stdout");
                eprintln!("a line on stderr");
                let _ = std::io::stdout().flush();
                text(out, 200, "printed\n");
            }
            "/fs" => text(
                out,
                200,
                &match std::fs::File::open("/etc/passwd") {
                    Ok(_) => "opened /etc/passwd\n".to_string(),
                    Err(e) => format!("cannot open /etc/passwd: {e}\n"),
                },
            ),
            "/socket" => text(
                out,
                200,
                &match std::net::TcpStream::connect("127.0.0.1:9") {
                    Ok(_) => "connected\n".to_string(),
                    Err(e) => format!("cannot connect: {e}\n"),
                },
            ),
            "/outgoing" => {
                let request = OutgoingRequest::new(Fields::new());
                request.set_authority(Some("example.com")).unwrap();
                let answer = match wasip2::http::outgoing_handler::handle(request, None) {
                    Ok(_) => "sent\n".to_string(),
                    Err(e) => format!("refused: {e:?}\n"),
                };
                text(out, 200, &answer);
            }
            "/trap" => panic!("the component traps"),
            "/loop" => loop {
                std::hint::black_box(());
            },
            "/memory" => {
                let mut hog = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "/exit" => std::process::exit(3),
            "/noanswer" => drop(out),
            "/nobody" => {
                // A response whose body is never asked for: an empty one.
                let response = OutgoingResponse::new(Fields::new());
                response.set_status_code(204).unwrap();
                ResponseOutparam::set(out, Ok(response));
            }
            "/trap-midway" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().unwrap();
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().unwrap();
                write_all(&stream, b"the start of a body\n");
                stream.flush().unwrap();
                panic!("the component traps mid-response");
            }
            _ => text(out, 404, "not found\n"),
        }
        let _ = Method::Get;
    }
}

fn text(out: ResponseOutparam, status: u16, body: &str) {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).unwrap();
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).unwrap();
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().unwrap();
    write_all(&stream, body.as_bytes());
    drop(stream);
    OutgoingBody::finish(outgoing, None).unwrap();
}

/// Writes everything, as much as `check-write` allows at a time.
fn write_all(stream: &OutputStream, mut data: &[u8]) {
    while !data.is_empty() {
        let room = match stream.check_write() {
            Ok(0) => {
                stream.subscribe().block();
                continue;
            }
            Ok(n) => n as usize,
            Err(e) => panic!("response stream failed: {e:?}"),
        };
        let n = room.min(data.len());
        stream.write(&data[..n]).expect("write");
        data = &data[n..];
    }
    stream.blocking_flush().expect("flush");
}

/// The request body back in upper case, with Content-Length: a response
/// whose bytes differ from the request's.
fn upper(request: IncomingRequest, out: ResponseOutparam) {
    let body = request.consume().unwrap();
    let input = body.stream().unwrap();
    let mut all = Vec::new();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(bytes) => all.extend(bytes),
            Err(StreamError::Closed) => break,
            Err(e) => panic!("request body failed: {e:?}"),
        }
    }
    all.make_ascii_uppercase();
    let headers =
        Fields::from_list(&[("content-length".into(), all.len().to_string().into())]).unwrap();
    let response = OutgoingResponse::new(headers);
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().unwrap();
    write_all(&stream, &all);
    drop(stream);
    OutgoingBody::finish(outgoing, None).unwrap();
}

/// Streams the request body back, and its trailers as the response's.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let body = request.consume().unwrap();
    let input = body.stream().unwrap();
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let output = outgoing.write().unwrap();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(bytes) => write_all(&output, &bytes),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                panic!("request body failed: {}", e.to_debug_string())
            }
        }
    }
    drop(input);
    let trailers = IncomingBody::finish(body);
    trailers.subscribe().block();
    let trailers = match trailers.get() {
        Some(Ok(Ok(t))) => t,
        other => panic!("trailers: {other:?}"),
    };
    drop(output);
    OutgoingBody::finish(outgoing, trailers).unwrap_or_else(|e: ErrorCode| panic!("finish: {e:?}"));
}
