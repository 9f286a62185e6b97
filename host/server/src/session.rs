//! A connection attached to its guest, from the attach to its one log
//! line, the same in one process and in a worker: it picks the loop that
//! serves it (the relay of `--forward`, a served wasi:http component, or
//! an application's byte stream) and reports how it went. Above the loops
//! ([`crate::transport`], [`crate::http_transport`], [`crate::forward`]),
//! so none of them imports another's caller.

use std::time::{Duration, Instant};

use keyferry::dataplane::{DataPlane, Delivery};
use tokio::io::AsyncWrite;

use crate::ending::SessionSummary;
use crate::transport::SessionControl;

/// A connection no guest could take, the same in one process and in a
/// worker: logged, and told with [`PLAINTEXT_INTERNAL_ERROR`].
pub(crate) async fn refuse_unattached<S: AsyncWrite + Unpin>(
    stream: &mut S,
    peer: &str,
    error: &keyferry::Error,
) {
    tracing::warn!(peer = %peer, error = %error, "guest could not take the connection");
    crate::transport::send_internal_error(stream).await;
}

/// The rest of a connection attached to its guest, the same in one
/// process and in a worker: the session runs to its end, the plane is
/// dropped (which wipes the connection's keys in the guest), and the
/// connection's one log line is written. `read_with_handshake` counts the
/// bytes the client sent with its last handshake flight; `ready` is how
/// long the guest took to be ready after the handshake, and `started` when
/// the connection began. `first` is what attaching delivered, and
/// `upstream` the backend's side of a forwarded connection. Returns the summary, and the guest instance for its owner
/// to retire or keep.
pub(crate) async fn serve_attached(
    stream: &mut tokio::net::TcpStream,
    mut plane: DataPlane,
    (first, upstream): (Delivery, Option<crate::forward::Upstream>),
    control: SessionControl,
    peer: &str,
    read_with_handshake: u64,
    (ready, started): (Duration, Instant),
) -> (SessionSummary, Option<keyferry::GuestInstance>) {
    let facts = plane.facts().clone();
    let requests = control
        .access_log
        .as_ref()
        .map(|log| log.connection(peer, &facts, plane.resumed()));
    let mut summary = if let Some(upstream) = upstream {
        crate::forward::relay(stream, upstream, &mut plane, first, control).await
    } else if plane.is_http() {
        let (summary, served) =
            crate::http_transport::serve_http(stream, plane, first, control, peer, requests).await;
        match served {
            Some(served) => plane = served,
            // The move to a fresh instance failed: the summary says why,
            // and the old instance went with its connection.
            None => {
                let mut summary = summary;
                summary.bytes_in += read_with_handshake;
                crate::transport::log_session(
                    peer,
                    &facts,
                    &summary,
                    false,
                    ready,
                    started.elapsed(),
                );
                return (summary, None);
            }
        }
        summary
    } else {
        crate::transport::run_session(stream, &mut plane, first, control, requests.as_ref()).await
    };
    summary.bytes_in += read_with_handshake;
    let guest = plane.guest().clone();
    let resumed = plane.resumed();
    drop(plane);
    crate::transport::log_session(peer, &facts, &summary, resumed, ready, started.elapsed());
    (summary, Some(guest))
}
