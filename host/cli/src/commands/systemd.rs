//! systemd's side of `serve`, without libsystemd: the readiness protocol
//! of sd_notify(3) (a datagram to `$NOTIFY_SOCKET`) and socket activation
//! as sd_listen_fds(3) defines it (listening sockets from descriptor 3).
//! Outside systemd neither variable is set and both are no-ops.

use std::ffi::OsStr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

use anyhow::{Context, bail};
use tracing::{debug, warn};

/// Where sd_listen_fds(3) puts the first passed descriptor.
const SD_LISTEN_FDS_START: i32 = 3;

/// Tells the service manager `state`, one `KEY=VALUE` per line, if it
/// asked to be told ($NOTIFY_SOCKET). A failure is logged, not fatal: the
/// server serves either way.
pub(crate) fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match send(&socket, state) {
        Ok(()) => debug!(state, "told the service manager"),
        Err(e) => warn!(error = %e, "cannot tell the service manager {state:?}"),
    }
}

/// `READY=1`: connections are being taken.
pub(crate) fn ready() {
    notify("READY=1\nSTATUS=serving");
}

/// `RELOADING=1` with the monotonic time, as `Type=notify-reload` wants,
/// before the reload; [`ready`] after it.
pub(crate) fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// `STOPPING=1`: draining, then exiting.
pub(crate) fn stopping() {
    notify("STOPPING=1\nSTATUS=draining");
}

fn send(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        // A socket in the abstract namespace.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(state.as_bytes(), &address)?;
        }
        None => {
            datagram.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// The listening socket systemd passed to this process (`LISTEN_PID` is
/// ours, `LISTEN_FDS` is 1), or `None` when it passed none. More than one
/// socket, or one that is not a listening TCP socket, is an error.
pub(crate) fn activated_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    let (Some(pid), Some(count)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var_os("LISTEN_FDS"),
    ) else {
        return Ok(None);
    };
    // Meant for another process (a parent that exec'd us without
    // clearing them): not ours to take. Workers and the check never take
    // them, since their pid differs.
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let count: i32 = count
        .to_str()
        .and_then(|c| c.parse().ok())
        .context("LISTEN_FDS is not a number")?;
    match count {
        0 => return Ok(None),
        1 => {}
        n => bail!("systemd passed {n} sockets; keyferry serves one (one ListenStream= line)"),
    }
    // SAFETY: LISTEN_PID names this process, so systemd (or
    // systemd-socket-activate) passed descriptor 3 to it, and this is its
    // one claim: nothing else in this process opened or owns it.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    listening_tcp(fd, "the socket systemd passed (ListenStream=ADDRESS:PORT)").map(Some)
}

/// `fd` as a listener, if it is a listening TCP socket; `what` names it
/// in the error.
pub(crate) fn listening_tcp(fd: OwnedFd, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let listening = rustix::net::sockopt::socket_acceptconn(&fd)
        .with_context(|| format!("{what} is not a socket"))?;
    let family = rustix::net::getsockname(&fd)
        .map(|a| a.address_family())
        .with_context(|| format!("{what} has no address"))?;
    if !listening
        || rustix::net::sockopt::socket_type(&fd)? != rustix::net::SocketType::STREAM
        || !matches!(
            family,
            rustix::net::AddressFamily::INET | rustix::net::AddressFamily::INET6
        )
    {
        bail!("{what} is not a listening TCP socket");
    }
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("keyferry-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut got = [0u8; 64];
        let n = listener.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("keyferry-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&address).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
