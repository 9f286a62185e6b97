//! `wasi:http/types` over the request in progress, an outgoing handler
//! that refuses, and `http-session`, which hands the host each request.

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::bindings::exports::keyferry::dataplane::http_session;
use crate::bindings::exports::wasi::http::{outgoing_handler, types as http};
use crate::bindings::exports::wasi::io::{error as ioerror, poll, streams};
use crate::front::codec::{self, Field};
use crate::front::conn::{self, RequestId, try_with_front, with_front};

use super::Front;
use super::io::{BodyLink, InputStream, OutputStream, Pollable};

// ---- wasi:http/types -------------------------------------------------------

/// Headers the tenant may neither read on a request nor set (the front
/// frames the connection itself), as wasmtime's host forbids them.
pub(super) fn is_forbidden(name: &str) -> bool {
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

pub(super) fn method_of(method: &str) -> http::Method {
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
