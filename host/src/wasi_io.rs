//! `wasi:io` streams and polls that never wait on a tokio runtime.
//!
//! wasmtime-wasi's synchronous bindings run every operation that may wait
//! (a blocking write or read, a flush, a poll, even dropping a stream)
//! through `Handle::block_on` on the current tokio runtime, and that panics
//! on a runtime worker thread. `serve` runs guest calls on its tokio
//! workers (`keyferry_server::transport::guest_call`), so a plugin's `println!`, or
//! the message of a Rust guest that panics, would take the host task down
//! with it. [`add_to_linker`] shadows those two interfaces.
//!
//! On a thread inside a tokio runtime, each operation is wasmtime-wasi's
//! own asynchronous implementation, polled once. A data-plane guest's
//! streams are its stdio: an empty stdin and sinks for stdout and stderr,
//! always ready, so printing works as it did. An operation that would have
//! to wait (a guest that sleeps, or waits on a clock or on a stream that is
//! not ready) traps instead of stalling a thread that serves other
//! connections: a data-plane guest is a record processor, and the traps of
//! a bad guest end only its own connection. On a thread outside any
//! runtime (the library's synchronous use, the CLI's benches) the
//! operations wait as before.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::io::streams::{
    HostInputStream as AsyncIn, HostOutputStream as AsyncOut,
};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

use crate::error::WouldBlock;
use crate::sandbox::StoreState;

/// Replaces the `wasi:io/streams` and `wasi:io/poll` functions that
/// `wasmtime_wasi::p2::add_to_linker_sync` linked with ones that never wait
/// on a runtime. Call it after that.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = streams::add_to_linker::<StoreState, NoWait>(linker, |s| NoWaitIo(&mut s.table))
        .and_then(|()| {
            poll::add_to_linker::<StoreState, NoWait>(linker, |s| NoWaitIo(&mut s.table))
        });
    linker.allow_shadowing(false);
    linked
}

/// The [`HasData`] marker for [`NoWaitIo`].
struct NoWait;

impl HasData for NoWait {
    type Data<'a> = NoWaitIo<'a>;
}

/// A store's resource table, seen through the no-wait `wasi:io`.
struct NoWaitIo<'a>(&'a mut ResourceTable);

/// Runs `f` to completion if it is ready now. Inside a tokio runtime a
/// future that is not ready is a [`WouldBlock`] trap; outside one,
/// wasmtime-wasi's own `in_tokio` waits for it.
fn now<F: Future>(what: &'static str, f: F) -> wasmtime::Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(wasmtime_wasi::runtime::in_tokio(f));
    }
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(WouldBlock(what).into()),
    }
}

/// [`now`] for stream operations, whose traps travel as
/// [`StreamError::Trap`].
fn now_stream<T, F: Future<Output = StreamResult<T>>>(what: &'static str, f: F) -> StreamResult<T> {
    now(what, f).map_err(StreamError::Trap)?
}

impl streams::Host for NoWaitIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NoWaitIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now("dropping an output stream", AsyncOut::drop(self.0, stream))?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncOut::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncOut::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        now_stream(
            "a blocking write",
            AsyncOut::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        now_stream(
            "a blocking write",
            AsyncOut::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOut::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncOut::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncOut::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        now_stream("a blocking flush", AsyncOut::blocking_flush(self.0, stream))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOut::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        now_stream(
            "a blocking splice",
            AsyncOut::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl streams::HostInputStream for NoWaitIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now("dropping an input stream", AsyncIn::drop(self.0, stream))?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncIn::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        now_stream(
            "a blocking read",
            AsyncIn::blocking_read(self.0, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncIn::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        now_stream(
            "a blocking skip",
            AsyncIn::blocking_skip(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncIn::subscribe(self.0, stream)
    }
}

impl poll::Host for NoWaitIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now("a poll", async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for NoWaitIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(
            "a readiness check",
            async_poll::HostPollable::ready(self.0, pollable),
        )?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(
            "a pollable",
            async_poll::HostPollable::block(self.0, pollable),
        )?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_an_operation_waits_for_its_result() {
        let slept = now("a test sleep", async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            7
        });
        assert_eq!(slept.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_a_runtime_thread_a_ready_operation_runs_and_a_waiting_one_traps() {
        assert_eq!(now("a ready future", async { 3 }).unwrap(), 3);
        let err = now(
            "a test sleep",
            tokio::time::sleep(std::time::Duration::from_secs(3600)),
        )
        .unwrap_err();
        let blocked = err.downcast_ref::<WouldBlock>().expect("typed");
        assert_eq!(blocked.0, "a test sleep");
        assert!(err.to_string().contains("may not block"), "{err}");
        let stream: StreamResult<()> = now_stream("a stream", std::future::pending());
        assert!(matches!(stream, Err(StreamError::Trap(e)) if e.is::<WouldBlock>()));
    }
}
