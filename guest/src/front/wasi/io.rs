//! `wasi:io`: errors, pollables and streams, over the front's connection.

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::bindings::exports::wasi::io::{error as ioerror, poll, streams};
use crate::bindings::keyferry::dataplane::transport as host;
use crate::front::codec::Field;
use crate::front::conn::{self, RequestId, with_front};

use super::Front;

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

pub(super) fn failed(what: &str) -> streams::StreamError {
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
    pub(super) fn is_ready(&self) -> bool {
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
pub(super) fn wait(readable: bool, deadline: Option<u64>) -> bool {
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
    pub(super) request: Option<RequestId>,
    pub(super) early: Vec<u8>,
    pub(super) early_finish: Option<Vec<Field>>,
    pub(super) abandoned: bool,
    pub(super) finished: bool,
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
