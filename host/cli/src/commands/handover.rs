//! `serve --handover-socket PATH`: a restart that drops no connection,
//! without systemd, as HAProxy's `-x` and nginx's binary upgrade do.
//!
//! The running server listens on a Unix socket at PATH. A new server
//! started with the same flag connects to it and is given the listening
//! TCP socket (`SCM_RIGHTS`) instead of binding its own. Both accept from
//! that one socket while the new server's workers compile the guest; when
//! the new server is ready it says so, and the old one stops accepting,
//! drains its connections and exits. Connections waiting in the listen
//! queue stay in the socket, which the new server holds, so none is
//! refused or reset. The new server then answers on PATH for the next
//! restart.
//!
//! PATH is made with mode 0600, and only a process of this server's uid
//! (or root) is given the listener.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::{info, warn};

/// The byte that comes with the listener.
const LISTENER: u8 = b'L';
/// The byte the new server sends once it serves.
const READY: u8 = b'R';

/// The listener a running server handed over, and the line to tell it
/// when this one serves.
pub(crate) struct Taken {
    pub(crate) listener: std::net::TcpListener,
    predecessor: UnixStream,
}

impl Taken {
    /// Tells the old server this one serves: it stops accepting and
    /// drains.
    pub(crate) fn ready(mut self) {
        if let Err(e) = self.predecessor.write_all(&[READY]) {
            warn!(error = %e, "could not tell the previous server to stop; stop it with SIGTERM");
        }
    }
}

/// Takes the listening socket from the server answering at `path`, if one
/// does. `None` when nothing answers there (no file, or one left by a
/// server that has exited): then this server binds its own.
pub(crate) fn take(path: &Path) -> anyhow::Result<Option<Taken>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("--handover-socket {}", path.display()));
        }
    };
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .with_context(|| format!("receiving the listener over {}", path.display()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.bytes != 1 || byte[0] != LISTENER || fds.len() != 1 {
        bail!(
            "--handover-socket {}: the server there did not hand over a listener",
            path.display()
        );
    }
    let listener = super::systemd::listening_tcp(fds.remove(0), "the handed-over socket")?;
    stream.set_read_timeout(None)?;
    Ok(Some(Taken {
        listener,
        predecessor: stream,
    }))
}

/// This server's end of PATH: it hands `listener` to the next server and
/// calls `stop` once that one serves. Removed when dropped, unless a newer
/// server has taken PATH over.
pub(crate) struct Offer {
    path: PathBuf,
    /// PATH's inode as this server made it.
    inode: (u64, u64),
}

impl Offer {
    /// Answers at `path` (replacing whatever is there, atomically).
    pub(crate) fn open(
        path: &Path,
        listener: &tokio::net::TcpListener,
        stop: impl Fn() + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let staging = path.with_extension(format!("{}.new", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        let unix = UnixListener::bind(&staging)
            .with_context(|| format!("--handover-socket {}", path.display()))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staging, path)
            .with_context(|| format!("--handover-socket {}", path.display()))?;
        let meta = std::fs::metadata(path)?;
        let fd = listener.as_fd().try_clone_to_owned()?;
        let stop = std::sync::Arc::new(stop);
        std::thread::Builder::new()
            .name("keyferry-handover".into())
            .spawn(move || {
                for stream in unix.incoming() {
                    match stream {
                        Ok(stream) => {
                            if offer(stream, &fd) {
                                info!(
                                    "the new server is ready; this one stops accepting and drains"
                                );
                                stop();
                                return;
                            }
                        }
                        Err(e) => warn!(error = %e, "handover socket"),
                    }
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        })
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Hands the listener to the server at the other end of `stream`, and
/// waits for it to be ready: true when it is, false when it went away
/// first (this server then carries on).
fn offer(mut stream: UnixStream, listener: &OwnedFd) -> bool {
    let Ok(peer) = rustix::net::sockopt::socket_peercred(&stream) else {
        return false;
    };
    let me = rustix::process::geteuid();
    if peer.uid != me && !peer.uid.is_root() {
        warn!(
            uid = peer.uid.as_raw(),
            "refused the listener to a process of another user"
        );
        return false;
    }
    let fds = [listener.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return false;
    }
    if let Err(e) = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&[LISTENER])],
        &mut control,
        SendFlags::NOSIGNAL,
    ) {
        warn!(error = %e, "could not hand the listener over");
        return false;
    }
    info!(
        pid = peer.pid.as_raw_nonzero().get(),
        "handed the listener to a new server; serving until it is ready"
    );
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) if byte[0] == READY => true,
        _ => {
            warn!("the new server went away before it was ready; still serving");
            false
        }
    }
}
