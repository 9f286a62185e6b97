//! The interfaces a stock `wasi:http` component imports, implemented in
//! the sandbox over [`super::conn`]: `wasi:http/types`, `wasi:io`
//! (streams, poll, error), the monotonic clock, stdio, a filesystem with
//! no directories, and an outgoing handler that refuses. Each carries
//! plaintext or a type that does, so none may be the host's (DESIGN
//! section 9, rule 1).

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use super::codec::{self, Field};
use super::conn::{self, HttpFront, RequestId, try_with_front, with_front};
use crate::bindings::exports::keyferry::dataplane::http_session;
use crate::bindings::exports::wasi::cli::{stderr, stdin, stdout};
use crate::bindings::exports::wasi::clocks::monotonic_clock;
use crate::bindings::exports::wasi::filesystem::{preopens, types as fs};
use crate::bindings::exports::wasi::http::{outgoing_handler, types as http};
use crate::bindings::exports::wasi::io::{error as ioerror, poll, streams};
use crate::bindings::keyferry::dataplane::transport as host;
use crate::exports::Exports;

/// The front component's exports.
pub(crate) type Front = Exports<HttpFront>;

// ---- wasi:io/error ---------------------------------------------------------

/// An I/O error: what failed, for the tenant's messages.
pub(crate) struct IoError(String);

impl ioerror::GuestError for IoError {
    fn to_debug_string(&self) -> String {
        self.0.clone()
    }
}

impl ioerror::Guest for Front {
    type Error = IoError;
}

fn failed(what: &str) -> streams::StreamError {
    streams::StreamError::LastOperationFailed(ioerror::Error::new(IoError(what.to_string())))
}

// ---- wasi:io/poll ----------------------------------------------------------

/// What a pollable waits for.
pub(crate) enum Pollable {
    /// Always ready (output streams, which write through at once).
    Ready,
    /// The monotonic clock reaching this instant (ns).
    Timer(u64),
    /// Body bytes of this request (or its end).
    Body(RequestId),
    /// This request's trailers (the end of its body).
    Trailers(RequestId),
}

impl Pollable {
    fn is_ready(&self) -> bool {
        match *self {
            Self::Ready => true,
            Self::Timer(at) => host::now() >= at,
            Self::Body(id) => with_front(|f| f.body_ready(id)),
            Self::Trailers(id) => with_front(|f| {
                // Trailers come after the body: read past what the tenant
                // left unread.
                while let Ok(bytes) = f.read_body(id, conn::WRITE_BUFFER, false) {
                    if bytes.is_empty() {
                        break;
                    }
                }
                f.trailers(id).is_some()
            }),
        }
    }

    /// What waiting for this one needs: the peer's bytes, a deadline.
    fn needs(&self) -> (bool, Option<u64>) {
        match *self {
            Self::Ready => (false, None),
            Self::Timer(at) => (false, Some(at)),
            Self::Body(_) | Self::Trailers(_) => (true, None),
        }
    }
}

impl poll::GuestPollable for Pollable {
    fn ready(&self) -> bool {
        self.is_ready()
    }

    fn block(&self) {
        while !self.is_ready() {
            let (readable, deadline) = self.needs();
            if !wait(readable, deadline) {
                return;
            }
        }
    }
}

/// Waits for the peer or a deadline. False when there is nothing left to
/// wait for (the peer is gone and no deadline is set): the caller must not
/// spin.
fn wait(readable: bool, deadline: Option<u64>) -> bool {
    with_front(|f| f.wait(readable, deadline))
}

impl poll::Guest for Front {
    type Pollable = Pollable;

    fn poll(list: Vec<poll::PollableBorrow<'_>>) -> Vec<u32> {
        if list.is_empty() {
            // The WIT asks for a trap on an empty list.
            panic!("poll of an empty list");
        }
        loop {
            let ready: Vec<u32> = list
                .iter()
                .enumerate()
                .filter(|(_, p)| p.get::<Pollable>().is_ready())
                .map(|(i, _)| i as u32)
                .collect();
            if !ready.is_empty() {
                return ready;
            }
            let (readable, deadline) = list.iter().fold((false, None::<u64>), |(r, d), p| {
                let (pr, pd) = p.get::<Pollable>().needs();
                (
                    r || pr,
                    match (d, pd) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                )
            });
            if !wait(readable, deadline) {
                // Nothing can become ready: say all are, and let the
                // tenant's reads report the end.
                return (0..list.len() as u32).collect();
            }
        }
    }
}

// ---- wasi:io/streams -------------------------------------------------------

/// A stream the tenant reads.
pub(crate) enum InputStream {
    /// A request body.
    Body(RequestId),
    /// Standard input: always at its end.
    Empty,
}

impl InputStream {
    fn take(&self, len: u64, blocking: bool) -> Result<Vec<u8>, streams::StreamError> {
        match *self {
            Self::Empty => Err(streams::StreamError::Closed),
            Self::Body(id) => {
                let max = usize::try_from(len)
                    .unwrap_or(usize::MAX)
                    .min(conn::WRITE_BUFFER);
                if max == 0 {
                    return Ok(Vec::new());
                }
                match with_front(|f| f.read_body(id, max, blocking)) {
                    Ok(bytes) => Ok(bytes),
                    Err(true) => Err(streams::StreamError::Closed),
                    Err(false) => Err(failed(
                        "the request body is malformed, too large or cut off",
                    )),
                }
            }
        }
    }
}

impl streams::GuestInputStream for InputStream {
    fn read(&self, len: u64) -> Result<Vec<u8>, streams::StreamError> {
        self.take(len, false)
    }

    fn blocking_read(&self, len: u64) -> Result<Vec<u8>, streams::StreamError> {
        self.take(len, true)
    }

    fn skip(&self, len: u64) -> Result<u64, streams::StreamError> {
        self.take(len, false).map(|b| b.len() as u64)
    }

    fn blocking_skip(&self, len: u64) -> Result<u64, streams::StreamError> {
        self.take(len, true).map(|b| b.len() as u64)
    }

    fn subscribe(&self) -> poll::Pollable {
        poll::Pollable::new(match *self {
            Self::Body(id) => Pollable::Body(id),
            Self::Empty => Pollable::Ready,
        })
    }
}

/// A response body on its way: before `response-outparam.set` its bytes
/// wait here, after it they go to the connection.
#[derive(Default)]
pub(crate) struct BodyLink {
    request: Option<RequestId>,
    early: Vec<u8>,
    early_finish: Option<Vec<Field>>,
    abandoned: bool,
    finished: bool,
}

/// A stream the tenant writes.
pub(crate) enum OutputStream {
    /// A response body.
    Body(Rc<RefCell<BodyLink>>),
    /// stdout or stderr: lines to the host's log.
    Log(host::Output, RefCell<Vec<u8>>),
}

/// The longest line a component's output sends to the log at once.
const MAX_LOG_LINE: usize = 4096;

impl OutputStream {
    fn put(&self, data: &[u8]) -> Result<(), streams::StreamError> {
        match self {
            Self::Log(which, line) => {
                let mut line = line.borrow_mut();
                for b in data {
                    if *b == b'\n' {
                        host::print(*which, &line);
                        line.clear();
                    } else {
                        line.push(*b);
                        if line.len() == MAX_LOG_LINE {
                            host::print(*which, &line);
                            line.clear();
                        }
                    }
                }
                Ok(())
            }
            Self::Body(link) => {
                let mut link = link.borrow_mut();
                if link.finished {
                    return Err(streams::StreamError::Closed);
                }
                match link.request {
                    Some(id) => with_front(|f| f.write_body(id, data)).map_err(|()| {
                        failed(
                            "the response cannot take these bytes (its length, or the connection)",
                        )
                    }),
                    None if link.early.len() + data.len() <= conn::WRITE_BUFFER => {
                        link.early.extend_from_slice(data);
                        Ok(())
                    }
                    None => Err(failed("more written than check-write allowed")),
                }
            }
        }
    }

    fn room(&self) -> u64 {
        match self {
            Self::Log(..) => MAX_LOG_LINE as u64,
            Self::Body(link) => {
                let link = link.borrow();
                match link.request {
                    Some(_) => with_front(|f| f.write_room()) as u64,
                    None => conn::WRITE_BUFFER.saturating_sub(link.early.len()) as u64,
                }
            }
        }
    }

    fn flush_now(&self) -> Result<(), streams::StreamError> {
        match self {
            Self::Log(which, line) => {
                let mut line = line.borrow_mut();
                if !line.is_empty() {
                    host::print(*which, &line);
                    line.clear();
                }
                Ok(())
            }
            Self::Body(link) => {
                let link = link.borrow();
                if link.finished {
                    return Err(streams::StreamError::Closed);
                }
                if link.request.is_some() {
                    with_front(|f| {
                        f.flush();
                        if f.is_broken() {
                            Err(failed("the connection is closed"))
                        } else {
                            Ok(())
                        }
                    })
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        if let Self::Log(which, line) = self {
            let line = line.get_mut();
            if !line.is_empty() {
                host::print(*which, line);
            }
        }
    }
}

impl streams::GuestOutputStream for OutputStream {
    fn check_write(&self) -> Result<u64, streams::StreamError> {
        if let Self::Body(link) = self {
            let link = link.borrow();
            if link.finished {
                return Err(streams::StreamError::Closed);
            }
            // Before the response is set its body waits here, and nothing
            // can drain it: a full buffer is an error, not a wait (the
            // stream's pollable is always ready, so waiting would spin).
            if link.request.is_none() && link.early.len() >= conn::WRITE_BUFFER {
                return Err(failed(
                    "at most 64 KiB of a body can be written before response-outparam.set",
                ));
            }
        }
        Ok(self.room())
    }

    fn write(&self, contents: Vec<u8>) -> Result<(), streams::StreamError> {
        self.put(&contents)
    }

    fn blocking_write_and_flush(&self, contents: Vec<u8>) -> Result<(), streams::StreamError> {
        if contents.len() > 4096 {
            return Err(failed("blocking-write-and-flush takes at most 4096 bytes"));
        }
        self.put(&contents)?;
        self.flush_now()
    }

    fn flush(&self) -> Result<(), streams::StreamError> {
        self.flush_now()
    }

    fn blocking_flush(&self) -> Result<(), streams::StreamError> {
        self.flush_now()
    }

    fn subscribe(&self) -> poll::Pollable {
        poll::Pollable::new(Pollable::Ready)
    }

    fn write_zeroes(&self, len: u64) -> Result<(), streams::StreamError> {
        let len = usize::try_from(len).map_err(|_| failed("too many zeroes"))?;
        self.put(&alloc::vec![0; len])
    }

    fn blocking_write_zeroes_and_flush(&self, len: u64) -> Result<(), streams::StreamError> {
        self.write_zeroes(len)?;
        self.flush_now()
    }

    fn splice(
        &self,
        src: streams::InputStreamBorrow<'_>,
        len: u64,
    ) -> Result<u64, streams::StreamError> {
        let len = len.min(self.room());
        let bytes = src.get::<InputStream>().take(len, false)?;
        self.put(&bytes)?;
        Ok(bytes.len() as u64)
    }

    fn blocking_splice(
        &self,
        src: streams::InputStreamBorrow<'_>,
        len: u64,
    ) -> Result<u64, streams::StreamError> {
        let len = len.min(self.room());
        let bytes = src.get::<InputStream>().take(len, true)?;
        self.put(&bytes)?;
        self.flush_now()?;
        Ok(bytes.len() as u64)
    }
}

impl streams::Guest for Front {
    type InputStream = InputStream;
    type OutputStream = OutputStream;
}

// ---- wasi:clocks/monotonic-clock and wasi:cli stdio ------------------------

impl monotonic_clock::Guest for Front {
    fn now() -> u64 {
        host::now()
    }

    fn resolution() -> u64 {
        1
    }

    fn subscribe_instant(when: u64) -> poll::Pollable {
        poll::Pollable::new(Pollable::Timer(when))
    }

    fn subscribe_duration(when: u64) -> poll::Pollable {
        poll::Pollable::new(Pollable::Timer(host::now().saturating_add(when)))
    }
}

impl stdin::Guest for Front {
    fn get_stdin() -> streams::InputStream {
        streams::InputStream::new(InputStream::Empty)
    }
}

impl stdout::Guest for Front {
    fn get_stdout() -> streams::OutputStream {
        streams::OutputStream::new(OutputStream::Log(host::Output::Stdout, RefCell::default()))
    }
}

impl stderr::Guest for Front {
    fn get_stderr() -> streams::OutputStream {
        streams::OutputStream::new(OutputStream::Log(host::Output::Stderr, RefCell::default()))
    }
}

// ---- wasi:filesystem: no directories ---------------------------------------

/// A served component gets no directories, so no descriptor ever exists:
/// opening a file fails as it does for a path outside every preopen.
pub(crate) enum NoDescriptor {}

super::sockets::uninhabited!(fs::GuestDescriptor => NoDescriptor {
    read_via_stream(offset: fs::Filesize) -> Result<streams::InputStream, fs::ErrorCode>;
    write_via_stream(offset: fs::Filesize) -> Result<streams::OutputStream, fs::ErrorCode>;
    append_via_stream() -> Result<streams::OutputStream, fs::ErrorCode>;
    advise(offset: fs::Filesize, length: fs::Filesize, advice: fs::Advice) -> Result<(), fs::ErrorCode>;
    sync_data() -> Result<(), fs::ErrorCode>;
    get_flags() -> Result<fs::DescriptorFlags, fs::ErrorCode>;
    get_type() -> Result<fs::DescriptorType, fs::ErrorCode>;
    set_size(size: fs::Filesize) -> Result<(), fs::ErrorCode>;
    set_times(a: fs::NewTimestamp, m: fs::NewTimestamp) -> Result<(), fs::ErrorCode>;
    read(length: fs::Filesize, offset: fs::Filesize) -> Result<(Vec<u8>, bool), fs::ErrorCode>;
    write(buffer: Vec<u8>, offset: fs::Filesize) -> Result<fs::Filesize, fs::ErrorCode>;
    read_directory() -> Result<fs::DirectoryEntryStream, fs::ErrorCode>;
    sync() -> Result<(), fs::ErrorCode>;
    create_directory_at(path: String) -> Result<(), fs::ErrorCode>;
    stat() -> Result<fs::DescriptorStat, fs::ErrorCode>;
    stat_at(flags: fs::PathFlags, path: String) -> Result<fs::DescriptorStat, fs::ErrorCode>;
    set_times_at(flags: fs::PathFlags, path: String, a: fs::NewTimestamp, m: fs::NewTimestamp) -> Result<(), fs::ErrorCode>;
    link_at(flags: fs::PathFlags, old: String, new_dir: fs::DescriptorBorrow<'_>, new: String) -> Result<(), fs::ErrorCode>;
    open_at(flags: fs::PathFlags, path: String, open: fs::OpenFlags, dflags: fs::DescriptorFlags) -> Result<fs::Descriptor, fs::ErrorCode>;
    readlink_at(path: String) -> Result<String, fs::ErrorCode>;
    remove_directory_at(path: String) -> Result<(), fs::ErrorCode>;
    rename_at(old: String, new_dir: fs::DescriptorBorrow<'_>, new: String) -> Result<(), fs::ErrorCode>;
    symlink_at(old: String, new: String) -> Result<(), fs::ErrorCode>;
    unlink_file_at(path: String) -> Result<(), fs::ErrorCode>;
    is_same_object(other: fs::DescriptorBorrow<'_>) -> bool;
    metadata_hash() -> Result<fs::MetadataHashValue, fs::ErrorCode>;
    metadata_hash_at(flags: fs::PathFlags, path: String) -> Result<fs::MetadataHashValue, fs::ErrorCode>;
});

/// Never made, as [`NoDescriptor`].
pub(crate) enum NoEntries {}

impl fs::GuestDirectoryEntryStream for NoEntries {
    fn read_directory_entry(&self) -> Result<Option<fs::DirectoryEntry>, fs::ErrorCode> {
        match *self {}
    }
}

impl fs::Guest for Front {
    type Descriptor = NoDescriptor;
    type DirectoryEntryStream = NoEntries;

    fn filesystem_error_code(_: ioerror::ErrorBorrow<'_>) -> Option<fs::ErrorCode> {
        None
    }
}

impl preopens::Guest for Front {
    fn get_directories() -> Vec<(fs::Descriptor, String)> {
        Vec::new()
    }
}

// ---- wasi:http/types -------------------------------------------------------

/// Headers the tenant may neither read on a request nor set (the front
/// frames the connection itself), as wasmtime's host forbids them.
fn is_forbidden(name: &str) -> bool {
    codec::is_hop_by_hop(name) || name == "host"
}

/// Header fields, shared between a request or response and its `headers`
/// child.
pub(crate) struct FieldsData {
    entries: Vec<Field>,
    mutable: bool,
}

/// A `fields` resource.
pub(crate) struct Fields(Rc<RefCell<FieldsData>>);

impl Fields {
    fn owned(entries: Vec<Field>, mutable: bool) -> Self {
        Self(Rc::new(RefCell::new(FieldsData { entries, mutable })))
    }

    fn check(&self, name: &str) -> Result<String, http::HeaderError> {
        if !self.0.borrow().mutable {
            return Err(http::HeaderError::Immutable);
        }
        if !codec::is_field_name(name) {
            return Err(http::HeaderError::InvalidSyntax);
        }
        let name = name.to_ascii_lowercase();
        if is_forbidden(&name) {
            return Err(http::HeaderError::Forbidden);
        }
        Ok(name)
    }

    fn entries(&self) -> Vec<Field> {
        self.0.borrow().entries.clone()
    }
}

impl http::GuestFields for Fields {
    fn new() -> Self {
        Self::owned(Vec::new(), true)
    }

    fn from_list(entries: Vec<(String, Vec<u8>)>) -> Result<http::Fields, http::HeaderError> {
        let fields = Self::owned(Vec::new(), true);
        for (name, value) in entries {
            let name = fields.check(&name)?;
            if !codec::is_field_value(&value) {
                return Err(http::HeaderError::InvalidSyntax);
            }
            fields.0.borrow_mut().entries.push((name, value));
        }
        Ok(http::Fields::new(fields))
    }

    fn get(&self, name: String) -> Vec<Vec<u8>> {
        let name = name.to_ascii_lowercase();
        self.0
            .borrow()
            .entries
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn has(&self, name: String) -> bool {
        let name = name.to_ascii_lowercase();
        self.0.borrow().entries.iter().any(|(n, _)| *n == name)
    }

    fn set(&self, name: String, value: Vec<Vec<u8>>) -> Result<(), http::HeaderError> {
        let name = self.check(&name)?;
        if !value.iter().all(|v| codec::is_field_value(v)) {
            return Err(http::HeaderError::InvalidSyntax);
        }
        let mut data = self.0.borrow_mut();
        data.entries.retain(|(n, _)| *n != name);
        data.entries
            .extend(value.into_iter().map(|v| (name.clone(), v)));
        Ok(())
    }

    fn delete(&self, name: String) -> Result<(), http::HeaderError> {
        let name = self.check(&name)?;
        self.0.borrow_mut().entries.retain(|(n, _)| *n != name);
        Ok(())
    }

    fn append(&self, name: String, value: Vec<u8>) -> Result<(), http::HeaderError> {
        let name = self.check(&name)?;
        if !codec::is_field_value(&value) {
            return Err(http::HeaderError::InvalidSyntax);
        }
        self.0.borrow_mut().entries.push((name, value));
        Ok(())
    }

    fn entries(&self) -> Vec<(String, Vec<u8>)> {
        Fields::entries(self)
    }

    fn clone(&self) -> http::Fields {
        http::Fields::new(Self::owned(self.entries(), true))
    }
}

/// An incoming request: the head the codec parsed.
pub(crate) struct IncomingRequest {
    id: RequestId,
    method: String,
    path: Option<String>,
    authority: Option<String>,
    headers: Rc<RefCell<FieldsData>>,
    consumed: Cell<bool>,
}

fn method_of(method: &str) -> http::Method {
    match method {
        "GET" => http::Method::Get,
        "HEAD" => http::Method::Head,
        "POST" => http::Method::Post,
        "PUT" => http::Method::Put,
        "DELETE" => http::Method::Delete,
        "CONNECT" => http::Method::Connect,
        "OPTIONS" => http::Method::Options,
        "TRACE" => http::Method::Trace,
        "PATCH" => http::Method::Patch,
        other => http::Method::Other(other.to_string()),
    }
}

impl http::GuestIncomingRequest for IncomingRequest {
    fn method(&self) -> http::Method {
        method_of(&self.method)
    }

    fn path_with_query(&self) -> Option<String> {
        self.path.clone()
    }

    fn scheme(&self) -> Option<http::Scheme> {
        Some(http::Scheme::Https)
    }

    fn authority(&self) -> Option<String> {
        self.authority.clone()
    }

    fn headers(&self) -> http::Headers {
        http::Fields::new(Fields(self.headers.clone()))
    }

    fn consume(&self) -> Result<http::IncomingBody, ()> {
        if self.consumed.replace(true) {
            return Err(());
        }
        Ok(http::IncomingBody::new(IncomingBody {
            id: self.id,
            stream_taken: Cell::new(false),
        }))
    }
}

/// A request's body.
pub(crate) struct IncomingBody {
    id: RequestId,
    stream_taken: Cell<bool>,
}

impl http::GuestIncomingBody for IncomingBody {
    fn stream(&self) -> Result<streams::InputStream, ()> {
        if self.stream_taken.replace(true) {
            return Err(());
        }
        Ok(streams::InputStream::new(InputStream::Body(self.id)))
    }

    fn finish(this: http::IncomingBody) -> http::FutureTrailers {
        let body: IncomingBody = this.into_inner();
        http::FutureTrailers::new(FutureTrailers {
            id: body.id,
            taken: Cell::new(false),
        })
    }
}

/// A request's trailers, once its body ended.
pub(crate) struct FutureTrailers {
    id: RequestId,
    taken: Cell<bool>,
}

impl http::GuestFutureTrailers for FutureTrailers {
    fn subscribe(&self) -> poll::Pollable {
        poll::Pollable::new(Pollable::Trailers(self.id))
    }

    #[allow(clippy::type_complexity, reason = "the WIT's type")]
    fn get(&self) -> Option<Result<Result<Option<http::Trailers>, http::ErrorCode>, ()>> {
        if self.taken.get() {
            return Some(Err(()));
        }
        if !Pollable::Trailers(self.id).is_ready() {
            return None;
        }
        self.taken.set(true);
        Some(Ok(match with_front(|f| f.trailers(self.id)) {
            Some(Ok(t)) if t.is_empty() => Ok(None),
            Some(Ok(t)) => Ok(Some(http::Fields::new(Fields::owned(
                t.into_iter().filter(|(n, _)| !is_forbidden(n)).collect(),
                false,
            )))),
            _ => Err(http::ErrorCode::HttpRequestBodySize(None)),
        }))
    }
}

/// Where the tenant puts its response.
pub(crate) struct ResponseOutparam {
    id: RequestId,
}

impl http::GuestResponseOutparam for ResponseOutparam {
    fn set(
        param: http::ResponseOutparam,
        response: Result<http::OutgoingResponse, http::ErrorCode>,
    ) {
        let param: ResponseOutparam = param.into_inner();
        let Ok(response) = response else {
            // An error instead of a response: the handler's return answers
            // 500 (nothing was set).
            return;
        };
        let response: OutgoingResponse = response.into_inner();
        response.headers.borrow_mut().mutable = false;
        let entries = response.headers.borrow().entries.clone();
        let status = response.status.get();
        let set = with_front(|f| f.set_response(param.id, status, &entries));
        if !set {
            return;
        }
        if !response.body_taken.get() {
            // Never asked for a body: the response has an empty one.
            let _ = with_front(|f| f.finish_body(param.id, &[]));
            return;
        }
        let mut link = response.body.borrow_mut();
        link.request = Some(param.id);
        let early = core::mem::take(&mut link.early);
        let finish = link.early_finish.take();
        let abandoned = link.abandoned;
        drop(link);
        with_front(|f| {
            if !early.is_empty() {
                let _ = f.write_body(param.id, &early);
            }
            if let Some(trailers) = finish {
                let _ = f.finish_body(param.id, &trailers);
            } else if abandoned {
                f.abandon_body(param.id);
            }
        });
    }
}

/// A response the tenant builds.
pub(crate) struct OutgoingResponse {
    status: Cell<u16>,
    headers: Rc<RefCell<FieldsData>>,
    body: Rc<RefCell<BodyLink>>,
    body_taken: Cell<bool>,
}

impl http::GuestOutgoingResponse for OutgoingResponse {
    fn new(headers: http::Headers) -> Self {
        let fields: Fields = headers.into_inner();
        Self {
            status: Cell::new(200),
            headers: fields.0,
            body: Rc::default(),
            body_taken: Cell::new(false),
        }
    }

    fn status_code(&self) -> u16 {
        self.status.get()
    }

    fn set_status_code(&self, status: u16) -> Result<(), ()> {
        if !(100..=999).contains(&status) {
            return Err(());
        }
        self.status.set(status);
        Ok(())
    }

    fn headers(&self) -> http::Headers {
        http::Fields::new(Fields(self.headers.clone()))
    }

    fn body(&self) -> Result<http::OutgoingBody, ()> {
        if self.body_taken.replace(true) {
            return Err(());
        }
        Ok(http::OutgoingBody::new(OutgoingBody {
            link: self.body.clone(),
            stream_taken: Cell::new(false),
            finished: Cell::new(false),
        }))
    }
}

/// A response body.
pub(crate) struct OutgoingBody {
    link: Rc<RefCell<BodyLink>>,
    stream_taken: Cell<bool>,
    finished: Cell<bool>,
}

impl Drop for OutgoingBody {
    fn drop(&mut self) {
        if self.finished.get() {
            return;
        }
        let mut link = self.link.borrow_mut();
        link.abandoned = true;
        if let Some(id) = link.request {
            try_with_front(|f| f.abandon_body(id));
        }
    }
}

impl http::GuestOutgoingBody for OutgoingBody {
    fn write(&self) -> Result<streams::OutputStream, ()> {
        if self.stream_taken.replace(true) {
            return Err(());
        }
        Ok(streams::OutputStream::new(OutputStream::Body(
            self.link.clone(),
        )))
    }

    fn finish(
        this: http::OutgoingBody,
        trailers: Option<http::Trailers>,
    ) -> Result<(), http::ErrorCode> {
        let body: OutgoingBody = this.into_inner();
        body.finished.set(true);
        let trailers = trailers
            .map(|t| t.into_inner::<Fields>().entries())
            .unwrap_or_default();
        let mut link = body.link.borrow_mut();
        link.finished = true;
        match link.request {
            Some(id) => {
                drop(link);
                with_front(|f| f.finish_body(id, &trailers)).map_err(|()| {
                    http::ErrorCode::InternalError(Some("the response body does not match its Content-Length, or the connection closed".into()))
                })
            }
            None => {
                link.early_finish = Some(trailers);
                Ok(())
            }
        }
    }
}

/// An outgoing request: built, and refused by the outgoing handler.
pub(crate) struct OutgoingRequest {
    method: RefCell<http::Method>,
    path: RefCell<Option<String>>,
    scheme: RefCell<Option<http::Scheme>>,
    authority: RefCell<Option<String>>,
    headers: Rc<RefCell<FieldsData>>,
    body_taken: Cell<bool>,
}

impl http::GuestOutgoingRequest for OutgoingRequest {
    fn new(headers: http::Headers) -> Self {
        let fields: Fields = headers.into_inner();
        Self {
            method: RefCell::new(http::Method::Get),
            path: RefCell::new(None),
            scheme: RefCell::new(None),
            authority: RefCell::new(None),
            headers: fields.0,
            body_taken: Cell::new(false),
        }
    }

    fn body(&self) -> Result<http::OutgoingBody, ()> {
        if self.body_taken.replace(true) {
            return Err(());
        }
        // Nothing will send it: the outgoing handler refuses every request.
        Ok(http::OutgoingBody::new(OutgoingBody {
            link: Rc::new(RefCell::new(BodyLink {
                finished: false,
                ..BodyLink::default()
            })),
            stream_taken: Cell::new(false),
            finished: Cell::new(true),
        }))
    }

    fn method(&self) -> http::Method {
        self.method.borrow().clone()
    }

    fn set_method(&self, method: http::Method) -> Result<(), ()> {
        if let http::Method::Other(m) = &method
            && !codec::is_field_name(m)
        {
            return Err(());
        }
        *self.method.borrow_mut() = method;
        Ok(())
    }

    fn path_with_query(&self) -> Option<String> {
        self.path.borrow().clone()
    }

    fn set_path_with_query(&self, path: Option<String>) -> Result<(), ()> {
        *self.path.borrow_mut() = path;
        Ok(())
    }

    fn scheme(&self) -> Option<http::Scheme> {
        self.scheme.borrow().clone()
    }

    fn set_scheme(&self, scheme: Option<http::Scheme>) -> Result<(), ()> {
        *self.scheme.borrow_mut() = scheme;
        Ok(())
    }

    fn authority(&self) -> Option<String> {
        self.authority.borrow().clone()
    }

    fn set_authority(&self, authority: Option<String>) -> Result<(), ()> {
        *self.authority.borrow_mut() = authority;
        Ok(())
    }

    fn headers(&self) -> http::Headers {
        http::Fields::new(Fields(self.headers.clone()))
    }
}

/// Timeouts of an outgoing request (kept, though nothing is sent).
#[derive(Default)]
pub(crate) struct RequestOptions {
    connect: Cell<Option<u64>>,
    first_byte: Cell<Option<u64>>,
    between_bytes: Cell<Option<u64>>,
}

impl http::GuestRequestOptions for RequestOptions {
    fn new() -> Self {
        Self::default()
    }

    fn connect_timeout(&self) -> Option<u64> {
        self.connect.get()
    }

    fn set_connect_timeout(&self, d: Option<u64>) -> Result<(), ()> {
        self.connect.set(d);
        Ok(())
    }

    fn first_byte_timeout(&self) -> Option<u64> {
        self.first_byte.get()
    }

    fn set_first_byte_timeout(&self, d: Option<u64>) -> Result<(), ()> {
        self.first_byte.set(d);
        Ok(())
    }

    fn between_bytes_timeout(&self) -> Option<u64> {
        self.between_bytes.get()
    }

    fn set_between_bytes_timeout(&self, d: Option<u64>) -> Result<(), ()> {
        self.between_bytes.set(d);
        Ok(())
    }
}

/// Responses to outgoing requests: never made, since every outgoing
/// request is refused.
pub(crate) enum NoResponse {}

impl http::GuestIncomingResponse for NoResponse {
    fn status(&self) -> u16 {
        match *self {}
    }

    fn headers(&self) -> http::Headers {
        match *self {}
    }

    fn consume(&self) -> Result<http::IncomingBody, ()> {
        match *self {}
    }
}

/// A pending response to an outgoing request: never made either.
pub(crate) enum NoFutureResponse {}

impl http::GuestFutureIncomingResponse for NoFutureResponse {
    fn subscribe(&self) -> poll::Pollable {
        match *self {}
    }

    fn get(&self) -> Option<Result<Result<http::IncomingResponse, http::ErrorCode>, ()>> {
        match *self {}
    }
}

impl http::Guest for Front {
    type Fields = Fields;
    type IncomingRequest = IncomingRequest;
    type OutgoingRequest = OutgoingRequest;
    type RequestOptions = RequestOptions;
    type ResponseOutparam = ResponseOutparam;
    type IncomingResponse = NoResponse;
    type IncomingBody = IncomingBody;
    type FutureTrailers = FutureTrailers;
    type OutgoingResponse = OutgoingResponse;
    type OutgoingBody = OutgoingBody;
    type FutureIncomingResponse = NoFutureResponse;

    fn http_error_code(_: ioerror::ErrorBorrow<'_>) -> Option<http::ErrorCode> {
        None
    }
}

impl outgoing_handler::Guest for Front {
    fn handle(
        _: http::OutgoingRequest,
        _: Option<http::RequestOptions>,
    ) -> Result<http::FutureIncomingResponse, http::ErrorCode> {
        Err(http::ErrorCode::HttpRequestDenied)
    }
}

// ---- keyferry:dataplane/http-session ---------------------------------------

impl http_session::Guest for Front {
    fn next_request() -> Option<(http::IncomingRequest, http::ResponseOutparam)> {
        let (id, method, target, headers, sni) = with_front(|f| {
            let id = f.next_request()?;
            let sni = conn::server_name(f);
            let request = f.request.as_ref()?;
            Some((
                id,
                request.head.method.clone(),
                request.head.target.clone(),
                request.head.headers.clone(),
                sni,
            ))
        })?;
        let host = headers
            .iter()
            .find(|(n, _)| n == "host")
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok());
        // Absolute form ("https://example.com/path"): the authority and the
        // path come from the target, which takes precedence over Host.
        let scheme_end = ["http://", "https://"].iter().find_map(|scheme| {
            target
                .get(..scheme.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(scheme))
                .then_some(scheme.len())
        });
        let (authority, path) = match scheme_end {
            Some(end) => {
                let rest = &target[end..];
                match rest.find(['/', '?']) {
                    Some(at) if rest.as_bytes()[at] == b'/' => {
                        (Some(rest[..at].to_string()), Some(rest[at..].to_string()))
                    }
                    Some(at) => (
                        Some(rest[..at].to_string()),
                        Some(alloc::format!("/{}", &rest[at..])),
                    ),
                    None => (Some(rest.to_string()), Some("/".into())),
                }
            }
            None => (host.or(sni), Some(target)),
        };
        let headers = headers
            .into_iter()
            .filter(|(n, _)| !is_forbidden(n))
            .collect();
        let request = IncomingRequest {
            id,
            method,
            path,
            authority,
            headers: Fields::owned(headers, false).0,
            consumed: Cell::new(false),
        };
        Some((
            http::IncomingRequest::new(request),
            http::ResponseOutparam::new(ResponseOutparam { id }),
        ))
    }

    fn handled() {
        with_front(|f| f.handled());
    }

    fn paused() -> bool {
        with_front(|f| f.is_paused())
    }
}
