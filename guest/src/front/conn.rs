//! One served connection of the `wasi:http` front: the record layer
//! pulled through the host's transport, the HTTP/1.1 codec, and the state
//! of the request in progress that the `wasi:http` resources share.
//!
//! Everything here runs inside the sandbox. The host's transport moves
//! ciphertext only: plaintext exists in this memory and the tenant's.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::codec::{
    self, BodyFraming, ChunkedDecoder, Field, Refusal, RequestHead, ResponseFraming,
};
use crate::application::{Application, Reply, RequestSummary, SharedSession};
use crate::bindings::keyferry::dataplane::transport as host;
use crate::connection::Facts;
use keyferry_record::instance_local;

/// The most ciphertext one read asks the host for: a few whole records.
const READ_MAX: u32 = 64 * 1024;

/// Response bytes held before they are sealed and sent: whole records,
/// and the bound on what a response body buffers here.
pub(crate) const WRITE_BUFFER: usize = 4 * crate::framing::MAX_PLAINTEXT;

/// A request body left unread after the response that is at most this
/// long is read and dropped so the connection can be kept (nginx's
/// lingering read); a longer one ends the connection.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// The connection's application: it only collects the plaintext that the
/// front pulls through the record layer.
pub(crate) struct HttpFront {
    received: Vec<u8>,
    /// Paused between requests: the connection may move to a fresh
    /// instance.
    paused: bool,
}

impl Application for HttpFront {
    fn new(_: &Facts) -> Self {
        Self {
            received: Vec::new(),
            paused: false,
        }
    }

    fn receive(&mut self, plaintext: &[u8], _: &mut Reply) {
        self.received.extend_from_slice(plaintext);
    }

    /// A peer that half-closes after its request still gets the response.
    fn peer_closed(&mut self, _: &mut Reply) {}

    /// A connection moves only when the front paused it between requests
    /// (`--instance-per-request`): otherwise the tenant's state is here.
    fn is_idle(&self) -> bool {
        self.paused && self.received.is_empty()
    }

    fn attached(session: &SharedSession<Self>) {
        FRONT.with_borrow_mut(|front| *front = Some(Front::new(session.clone())));
    }
}

instance_local! {
    /// The connection this instance serves (one at a time).
    static FRONT: RefCell<Option<Front>> = const { RefCell::new(None) };
}

/// Runs `f` on the attached connection. Trapping without one is right: the
/// `wasi:http` resources exist only while a connection is served.
pub(crate) fn with_front<R>(f: impl FnOnce(&mut Front) -> R) -> R {
    FRONT.with_borrow_mut(|front| f(front.as_mut().expect("no connection is attached")))
}

/// [`with_front`] from a destructor, which may run while the front is
/// already borrowed (a resource dropped by the front's own code): then it
/// does nothing.
pub(crate) fn try_with_front(f: impl FnOnce(&mut Front)) {
    FRONT.with(|front| {
        if let Ok(mut front) = front.try_borrow_mut()
            && let Some(front) = front.as_mut()
        {
            f(front);
        }
    });
}

/// What a request's resources use to find it: requests are numbered per
/// connection, and a resource of an earlier request finds nothing.
pub(crate) type RequestId = u64;

/// Where the response to the current request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    /// `response-outparam.set` not called yet.
    NotSet,
    /// The head is out (or queued); the body is being written.
    Sending {
        framing: ResponseFraming,
        written: u64,
    },
    /// The body ended properly.
    Finished,
    /// The response cannot be completed: the connection ends after it.
    Failed,
}

/// The request in progress.
pub(crate) struct Request {
    pub(crate) id: RequestId,
    pub(crate) head: RequestHead,
    framing: BodyFraming,
    /// Content-Length bytes not yet taken from `inbuf`.
    left: u64,
    chunked: ChunkedDecoder,
    /// Decoded body bytes not read by the tenant yet.
    body: Vec<u8>,
    received: u64,
    body_done: bool,
    body_failed: bool,
    trailers: Option<Vec<Field>>,
    continue_due: bool,
    /// Some of the response went out (not only queued).
    on_wire: bool,
    keep_alive: bool,
    response: Response,
    /// The status the tenant set (0 until it does), and the body bytes it
    /// wrote: for the access log.
    status: u16,
    sent: u64,
}

/// One connection.
pub(crate) struct Front {
    session: SharedSession<HttpFront>,
    limits: host::HttpConfig,
    /// Requests this instance has taken.
    served: u32,
    paused: bool,
    /// Plaintext from the peer that is not part of a decoded body yet: a
    /// head, body bytes, pipelined requests.
    inbuf: Vec<u8>,
    /// No more input: EOF, close_notify, an alert or a transport failure.
    input_over: bool,
    /// Nothing more can be sent, or the last response failed: the
    /// connection ends without close_notify, so a cut-off response is not
    /// taken for a whole one.
    broken: bool,
    /// The last response was whole and the connection ends after it
    /// (`Connection: close`, HTTP/1.0, a body left unread): close_notify.
    closing: bool,
    /// Plaintext of the response, not sealed yet.
    out: Vec<u8>,
    next_id: RequestId,
    pub(crate) request: Option<Request>,
}

impl Front {
    fn new(session: SharedSession<HttpFront>) -> Self {
        Self {
            session,
            limits: host::config(),
            served: 0,
            paused: false,
            inbuf: Vec::new(),
            input_over: false,
            broken: false,
            closing: false,
            out: Vec::new(),
            next_id: 1,
            request: None,
        }
    }

    /// The request `id`, if it is still the current one.
    pub(crate) fn request(&mut self, id: RequestId) -> Option<&mut Request> {
        self.request.as_mut().filter(|r| r.id == id)
    }

    /// Takes the plaintext the record layer delivered outside a pull:
    /// what arrived with the client's last handshake flight, delivered
    /// when the connection started.
    fn absorb(&mut self) {
        if let Some(session) = self.session.borrow_mut().as_mut() {
            let (_, app) = session.parts_mut();
            self.inbuf.append(&mut app.received);
        }
    }

    /// Pulls ciphertext once and runs it through the record layer. False
    /// when no more input can come.
    fn fill(&mut self, idle: bool) -> bool {
        // What the tenant wrote goes out before waiting on the peer.
        self.flush();
        if self.input_over {
            return false;
        }
        let ciphertext = match host::read(READ_MAX, idle) {
            Ok(c) => c,
            Err(_) => {
                self.input_over = true;
                self.broken = true;
                return false;
            }
        };
        let mut session = self.session.borrow_mut();
        let Some(session) = session.as_mut() else {
            self.input_over = true;
            self.broken = true;
            return false;
        };
        let step = if ciphertext.is_empty() {
            session.end_of_stream()
        } else {
            session.receive(&ciphertext)
        };
        let (_, app) = session.parts_mut();
        if self.inbuf.is_empty() {
            core::mem::swap(&mut self.inbuf, &mut app.received);
        } else {
            self.inbuf.append(&mut app.received);
        }
        if !step.to_send.is_empty() && host::write(&step.to_send).is_err() {
            self.broken = true;
        }
        if ciphertext.is_empty() || step.closed.is_some() {
            self.input_over = true;
        }
        if step.done {
            // An alert (ours or the peer's) ended the connection.
            self.input_over = true;
            self.broken = true;
        }
        true
    }

    /// Seals and sends the queued response bytes.
    pub(crate) fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if self.broken {
            self.out.clear();
            return;
        }
        if let Some(request) = self.request.as_mut()
            && request.response != Response::NotSet
        {
            request.on_wire = true;
        }
        let plaintext = core::mem::take(&mut self.out);
        let sealed = match self.session.borrow_mut().as_mut() {
            Some(session) => session.parts_mut().0.send(&plaintext),
            None => Err(crate::error::Error::InvalidArgument("detached")),
        };
        zeroize::Zeroize::zeroize(&mut { plaintext });
        match sealed {
            Ok(records) if host::write(&records).is_ok() => {}
            _ => self.broken = true,
        }
    }

    /// Queues plaintext, sending once a few records' worth is queued.
    fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        if self.out.len() >= WRITE_BUFFER {
            self.flush();
        }
    }

    /// Ends the connection: what is queued, then close_notify.
    fn close(&mut self) {
        self.flush();
        if self.broken {
            return;
        }
        let closed = self
            .session
            .borrow_mut()
            .as_mut()
            .map(|s| s.parts_mut().0.close());
        if let Some(Ok(records)) = closed {
            let _ = host::write(&records);
        }
        self.broken = true;
    }

    /// Answers a request the codec refused, and ends the connection.
    /// `head` is the request's, if its head parsed.
    fn refuse(&mut self, refusal: Refusal, head_only: bool, head: Option<&RequestHead>) {
        let response = codec::simple_response(refusal.status(), head_only, host::unix_seconds());
        let body = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |at| response.len() - at - 4);
        self.queue(&response);
        self.close();
        crate::exports::report(RequestSummary {
            method: head.map_or_else(|| "-".into(), |h| h.method.clone()),
            target: head.map_or_else(|| "-".into(), |h| h.target.clone()),
            status: refusal.status(),
            received: 0,
            sent: body as u64,
        });
    }

    /// The next request's head, pulling input as needed; `None` when the
    /// connection is over.
    pub(crate) fn next_request(&mut self) -> Option<RequestId> {
        // Called again after a park: the host saw the peer's bytes, so read
        // them rather than park again.
        let mut resumed = core::mem::take(&mut self.paused);
        self.absorb();
        self.finish_request();
        if self.broken || self.closing {
            self.close();
            return None;
        }
        if self.limits.instance_per_request && self.served > 0 && self.inbuf.is_empty() {
            // Between requests with nothing half received: pause, so the
            // host moves the connection to a fresh instance for the next.
            // Pipelined bytes already here stay with this instance.
            self.flush();
            let mut session = self.session.borrow_mut();
            if let Some(session) = session.as_mut()
                && session.connection().is_between_records()
                && !self.broken
            {
                session.parts_mut().1.paused = true;
                self.paused = true;
                return None;
            }
        }
        let head = loop {
            // Empty lines before a request line are skipped (RFC 9112
            // section 2.2), and dropped so a stream of them cannot grow.
            let blank = self
                .inbuf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.inbuf.drain(..blank);
            match codec::parse_head(&self.inbuf, self.limits.max_head as usize) {
                Ok(Some((head, used))) => {
                    self.inbuf.drain(..used);
                    break head;
                }
                Ok(None) => {
                    let idle = self.inbuf.iter().all(|b| *b == b'\r' || *b == b'\n');
                    if !self.input_over && !resumed {
                        // Nothing to do until the peer sends (the next
                        // request, or the rest of this head): hand the
                        // wait to the host, which holds no thread for it.
                        self.flush();
                        host::park(idle);
                        self.paused = true;
                        return None;
                    }
                    let filled = self.fill(idle);
                    resumed = false;
                    if !filled {
                        // EOF or timeout between requests: a clean end. A
                        // request cut off mid-head gets nothing, as nginx
                        // does.
                        self.close();
                        return None;
                    }
                    if self.broken {
                        self.close();
                        return None;
                    }
                }
                Err(refusal) => {
                    self.refuse(refusal, false, None);
                    return None;
                }
            }
        };
        if head.minor == 1 && head.values("host").next().is_none() {
            self.refuse(
                Refusal::BadRequest("HTTP/1.1 request without Host"),
                false,
                Some(&head),
            );
            return None;
        }
        if head.values("host").count() > 1 {
            self.refuse(
                Refusal::BadRequest("more than one Host"),
                false,
                Some(&head),
            );
            return None;
        }
        let framing = match codec::body_framing(&head, self.limits.max_body) {
            Ok(f) => f,
            Err(refusal) => {
                self.refuse(refusal, head.method == "HEAD", Some(&head));
                return None;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.served += 1;
        let keep_alive = head.keep_alive() && !self.input_over;
        let continue_due = head.minor == 1 && head.lists("expect", "100-continue");
        self.request = Some(Request {
            id,
            framing,
            left: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::default(),
            body: Vec::new(),
            received: 0,
            body_done: framing == BodyFraming::Empty,
            body_failed: false,
            trailers: None,
            continue_due,
            on_wire: false,
            keep_alive,
            response: Response::NotSet,
            status: 0,
            sent: 0,
            head,
        });
        self.arm_fault_response();
        Some(id)
    }

    /// Seals, without spending sequence numbers, the 500 the host sends if
    /// the tenant fails before anything else goes out.
    fn arm_fault_response(&mut self) {
        let head_only = self
            .request
            .as_ref()
            .is_some_and(|r| r.head.method == "HEAD");
        let response = codec::simple_response(500, head_only, host::unix_seconds());
        let sealed = self
            .session
            .borrow_mut()
            .as_mut()
            .map(|s| s.parts_mut().0.seal_ahead_and_close(&response));
        if let Some(Ok(records)) = sealed {
            host::arm_fault_response(&records);
        }
    }

    /// The handler returned: the response is ended, and the connection
    /// kept only if it was whole.
    pub(crate) fn handled(&mut self) {
        let Some(request) = self.request.as_mut() else {
            return;
        };
        let status = if request.response == Response::NotSet {
            500
        } else {
            request.status
        };
        crate::exports::report(RequestSummary {
            method: request.head.method.clone(),
            target: request.head.target.clone(),
            status,
            received: request.received,
            sent: request.sent,
        });
        match request.response {
            Response::NotSet => {
                // The tenant never answered: 500, as `wasmtime serve` does.
                let head_only = request.head.method == "HEAD";
                request.response = Response::Failed;
                self.queue(&codec::simple_response(
                    500,
                    head_only,
                    host::unix_seconds(),
                ));
                self.close();
            }
            Response::Sending { .. } => {
                // The body was never finished: the peer must not take it
                // for whole. Without Content-Length or the last chunk, a
                // close is how HTTP/1.1 says so.
                request.response = Response::Failed;
                self.flush();
                self.broken = true;
            }
            Response::Finished => {}
            Response::Failed => self.broken = true,
        }
        self.flush();
    }

    /// Leaves the request behind: drains what is left of its body if that
    /// is short, so the connection can be kept.
    fn finish_request(&mut self) {
        let Some(mut request) = self.request.take() else {
            return;
        };
        if request.response != Response::Finished {
            self.broken = true;
            return;
        }
        // A body the client holds back for a 100 it never got will not
        // come: close rather than wait to drain it.
        if !request.keep_alive || (request.continue_due && !request.body_done) {
            self.closing = true;
            return;
        }
        let mut drained = 0u64;
        while !request.body_done && !request.body_failed && !self.broken && !self.closing {
            request.body.clear();
            self.decode(&mut request, usize::MAX);
            drained += request.body.len() as u64;
            if request.body_done || request.body_failed {
                break;
            }
            if drained > DRAIN_LIMIT || !self.fill(false) {
                self.closing = true;
            }
        }
        if request.body_failed {
            self.closing = true;
        }
    }

    /// Moves body bytes from `inbuf` into `request.body`, up to `want` of
    /// them buffered.
    fn decode(&mut self, request: &mut Request, want: usize) {
        if request.body_done || request.body_failed {
            return;
        }
        let room = want.saturating_sub(request.body.len());
        let before = request.body.len();
        match request.framing {
            BodyFraming::Empty => request.body_done = true,
            BodyFraming::Length(_) => {
                let n = self
                    .inbuf
                    .len()
                    .min(usize::try_from(request.left).unwrap_or(usize::MAX))
                    .min(room);
                request.body.extend(self.inbuf.drain(..n));
                request.left -= n as u64;
                if request.left == 0 {
                    request.body_done = true;
                    request.trailers = Some(Vec::new());
                }
            }
            BodyFraming::Chunked => {
                match request.chunked.decode(&self.inbuf, &mut request.body, room) {
                    Ok(used) => {
                        self.inbuf.drain(..used);
                        if request.chunked.is_done() {
                            request.body_done = true;
                            match request.chunked.trailers() {
                                Ok(t) => request.trailers = Some(t),
                                Err(_) => request.body_failed = true,
                            }
                        }
                    }
                    Err(_) => request.body_failed = true,
                }
            }
        }
        request.received += (request.body.len() - before) as u64;
        if request.received > self.limits.max_body {
            request.body_failed = true;
            request.keep_alive = false;
        }
    }

    /// Body bytes for the tenant: at most `max`, waiting for some when
    /// `blocking`. `Ok(empty)`: none yet. `Err(true)`: the body ended;
    /// `Err(false)`: it failed (malformed, too large, or cut off).
    pub(crate) fn read_body(
        &mut self,
        id: RequestId,
        max: usize,
        blocking: bool,
    ) -> Result<Vec<u8>, bool> {
        let Some(mut request) = self.request.take_if(|r| r.id == id) else {
            return Err(true);
        };
        let result = self.read_body_of(&mut request, max, blocking);
        self.request = Some(request);
        result
    }

    fn read_body_of(
        &mut self,
        request: &mut Request,
        max: usize,
        blocking: bool,
    ) -> Result<Vec<u8>, bool> {
        loop {
            if request.body.is_empty() {
                self.decode(request, max.max(1));
            }
            if !request.body.is_empty() {
                let n = request.body.len().min(max);
                return Ok(request.body.drain(..n).collect());
            }
            if request.body_failed {
                self.too_large_or_bad(request);
                return Err(false);
            }
            if request.body_done {
                return Err(true);
            }
            self.send_continue(request);
            if self.input_over {
                // No more input can come, and what is left cannot complete
                // the body: it was cut off.
                request.body_failed = true;
                request.keep_alive = false;
                continue;
            }
            if !blocking {
                return Ok(Vec::new());
            }
            if !self.fill(false) {
                // Cut off mid-body: what is left cannot complete it.
                request.body_failed = true;
                request.keep_alive = false;
            }
        }
    }

    /// A body over the limit gets 413 if nothing was answered yet.
    fn too_large_or_bad(&mut self, request: &mut Request) {
        if request.response == Response::NotSet && request.received > self.limits.max_body {
            request.response = Response::Failed;
            self.queue(&codec::simple_response(
                413,
                request.head.method == "HEAD",
                host::unix_seconds(),
            ));
            self.close();
        }
    }

    /// `Expect: 100-continue`: the interim response, once, when the tenant
    /// first waits for the body, as nginx sends it when it starts reading
    /// one. A final response already on the wire makes it moot; one only
    /// queued goes out after it.
    fn send_continue(&mut self, request: &mut Request) {
        if request.continue_due {
            request.continue_due = false;
            if !request.on_wire {
                self.out
                    .splice(0..0, b"HTTP/1.1 100 Continue\r\n\r\n".iter().copied());
                self.flush();
            }
        }
    }

    /// Whether reading the body would return at once.
    pub(crate) fn body_ready(&mut self, id: RequestId) -> bool {
        let Some(mut request) = self.request.take_if(|r| r.id == id) else {
            return true;
        };
        if request.body.is_empty() {
            self.decode(&mut request, WRITE_BUFFER);
        }
        let ready =
            !request.body.is_empty() || request.body_done || request.body_failed || self.input_over;
        if !ready {
            // Whoever waits for the body may be waiting for the client,
            // which waits for our 100 Continue.
            self.send_continue(&mut request);
        }
        self.request = Some(request);
        ready
    }

    /// The trailers, once the body ended: `Some(Ok)` then, `Some(Err)` if
    /// the body failed, `None` before.
    pub(crate) fn trailers(&mut self, id: RequestId) -> Option<Result<Vec<Field>, ()>> {
        let request = self.request(id)?;
        if request.body_failed {
            return Some(Err(()));
        }
        request
            .body_done
            .then(|| Ok(request.trailers.clone().unwrap_or_default()))
    }

    /// Waits for the peer (or until `deadline`) and takes what came.
    /// False when there is nothing to wait for: the caller must not spin.
    pub(crate) fn wait(&mut self, readable: bool, deadline: Option<u64>) -> bool {
        self.flush();
        let readable = readable && !self.input_over && !self.broken;
        if !readable && deadline.is_none() {
            return false;
        }
        match host::wait(readable, deadline) {
            Ok(true) => {
                self.fill(false);
                true
            }
            Ok(false) => true,
            // The request timeout passed while the tenant waited (on a
            // timer, or for a body the peer does not send), or the server
            // is shutting down: the tenant is stopped where it waits. The
            // host then sends the 500 sealed in reserve if nothing went out
            // yet, and resets the connection otherwise.
            Err(_) => panic!("the request timed out while the component waited"),
        }
    }

    /// `response-outparam.set`: the head goes out with the first body
    /// bytes or the body's end.
    pub(crate) fn set_response(&mut self, id: RequestId, status: u16, headers: &[Field]) -> bool {
        let Some(request) = self.request.as_mut().filter(|r| r.id == id) else {
            return false;
        };
        // A 1xx is not a final response, and lengths that disagree or do
        // not parse cannot be sent: either is the tenant's error (500).
        if request.response != Response::NotSet || !(200..=999).contains(&status) {
            return false;
        }
        let Ok(length) = codec::content_length(headers) else {
            return false;
        };
        let framing = if codec::bodiless(&request.head.method, status) {
            ResponseFraming::None
        } else if let Some(n) = length {
            ResponseFraming::Length(n)
        } else if request.head.minor == 1 {
            ResponseFraming::Chunked
        } else {
            request.keep_alive = false;
            ResponseFraming::Close
        };
        // A body still unread when the answer starts: the connection is
        // kept only if it can be drained afterwards.
        let close = !request.keep_alive;
        // One canonical Content-Length, whatever the tenant wrote; it
        // stays on a HEAD response, where it describes the GET.
        let mut headers: Vec<Field> = headers.to_vec();
        headers.retain(|(n, _)| n != "content-length");
        if let (Some(n), ResponseFraming::Length(_) | ResponseFraming::None) = (length, framing) {
            headers.push(("content-length".into(), alloc::format!("{n}").into_bytes()));
        }
        request.response = Response::Sending {
            framing,
            written: 0,
        };
        request.status = status;
        let head = codec::response_head(status, &headers, framing, close, host::unix_seconds());
        self.queue(&head);
        true
    }

    /// Body bytes of the response.
    pub(crate) fn write_body(&mut self, id: RequestId, data: &[u8]) -> Result<(), ()> {
        let Some(request) = self.request.as_mut().filter(|r| r.id == id) else {
            return Err(());
        };
        let Response::Sending { framing, written } = request.response else {
            return Err(());
        };
        let total = written + data.len() as u64;
        request.sent = total;
        match framing {
            ResponseFraming::None => {}
            ResponseFraming::Length(n) if total > n => {
                request.response = Response::Failed;
                return Err(());
            }
            ResponseFraming::Length(_) | ResponseFraming::Close => {
                request.response = Response::Sending {
                    framing,
                    written: total,
                };
                self.queue(data);
            }
            ResponseFraming::Chunked => {
                request.response = Response::Sending {
                    framing,
                    written: total,
                };
                let mut chunk = Vec::with_capacity(data.len() + 12);
                codec::chunk(data, &mut chunk);
                self.queue(&chunk);
            }
        }
        if self.broken { Err(()) } else { Ok(()) }
    }

    /// The response body ended (`outgoing-body.finish`).
    pub(crate) fn finish_body(&mut self, id: RequestId, trailers: &[Field]) -> Result<(), ()> {
        let Some(request) = self.request.as_mut().filter(|r| r.id == id) else {
            return Err(());
        };
        let Response::Sending { framing, written } = request.response else {
            return Err(());
        };
        match framing {
            ResponseFraming::Length(n) if written != n => {
                request.response = Response::Failed;
                return Err(());
            }
            ResponseFraming::Chunked => {
                let mut last = Vec::new();
                codec::last_chunk(trailers, &mut last);
                request.response = Response::Finished;
                self.queue(&last);
            }
            _ => request.response = Response::Finished,
        }
        self.flush();
        if self.broken { Err(()) } else { Ok(()) }
    }

    /// The tenant dropped the response body without finishing it.
    pub(crate) fn abandon_body(&mut self, id: RequestId) {
        if let Some(request) = self.request.as_mut().filter(|r| r.id == id)
            && matches!(request.response, Response::Sending { .. })
        {
            request.response = Response::Failed;
        }
    }

    /// Whether the response can take more bytes now.
    pub(crate) fn write_room(&self) -> usize {
        WRITE_BUFFER.saturating_sub(self.out.len()).max(1)
    }

    /// Whether the last `next_request` paused the connection.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether the transport failed.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }
}

/// The connection's facts the request needs: the authority when the
/// request has no Host (HTTP/1.0) comes from SNI.
pub(crate) fn server_name(front: &Front) -> Option<String> {
    front
        .session
        .borrow()
        .as_ref()
        .and_then(|s| s.connection().facts().server_name.clone())
}
