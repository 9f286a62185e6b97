//! The protocol between the handshake process ([`crate::monitor`]) and its
//! data-plane workers ([`crate::worker`]): typed, length-checked frames
//! over a Unix `SOCK_SEQPACKET` socket, with the accepted TCP socket passed
//! by `SCM_RIGHTS` (rustix does the descriptor passing).
//!
//! The list of frames is short on purpose, as OpenSSH's monitor protocol
//! is. A worker can only publish its key-exchange key (once, first), say
//! that an instance is ready for a connection, and that a connection
//! ended; nothing it sends can make the handshake process sign, decrypt or
//! reveal anything. The handshake process opens the worker's blob session
//! (HPKE, once), sends it connections (socket, blobs sealed in that
//! session, handshake facts), asks it to shed an idle connection, or to
//! shut down. Every frame is one datagram: a frame
//! that does not parse exactly, or arrives truncated, is an error.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use keyferry_record::ProtocolVersion;
use keyferry_record::blob::{ENC_LEN, PUBLIC_KEY_LEN};
use keyferry_record::connection::{Facts, PeerCertificate, Role};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::ending::{ConnectionOutcome, EndingKind};
use keyferry::error::TrapKind;
use keyferry::instance::ExchangeKey;

/// The largest frame either side sends: two blobs with what was buffered
/// at handoff (bounded by the handshake's own buffer), and the facts.
pub const MAX_FRAME: usize = 640 * 1024;
/// Ready instances one worker may have announced and not yet been given.
pub const MAX_READY: usize = 64;
/// Most descriptors beside one frame: a connection's client socket, and
/// with `--forward` its backend socket.
pub const MAX_FDS: usize = 2;

const READY: u8 = 1;
const DONE: u8 = 2;
const SHED: u8 = 3;
const HELLO: u8 = 4;
const CONNECTION: u8 = 16;
const SHED_IDLE: u8 = 17;
const SHUTDOWN: u8 = 18;
const SESSION: u8 = 19;

/// Why a frame was refused, or the channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The frame is shorter than its fields say.
    #[error("truncated frame")]
    Truncated,
    /// Bytes after the last field.
    #[error("trailing bytes after a frame")]
    Trailing,
    /// A frame type this side does not accept.
    #[error("unexpected frame type {0}")]
    UnexpectedType(u8),
    /// A field out of range; the text names it.
    #[error("bad field: {0}")]
    BadField(&'static str),
    /// A frame over [`MAX_FRAME`], or one the kernel truncated.
    #[error("frame too long")]
    TooLong,
    /// A connection frame without its socket, or a descriptor where none
    /// belongs.
    #[error("descriptor missing or unexpected")]
    Descriptor,
    /// The other side closed the channel.
    #[error("channel closed")]
    Closed,
    /// A datagram of no bytes: no frame is empty, and one would otherwise
    /// read as the channel closing.
    #[error("empty frame")]
    Empty,
    /// The socket failed.
    #[error("channel i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a worker sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromWorker {
    /// The worker's key-exchange key, made when it started: its first
    /// frame, and only once. Blobs for the worker are sealed in an HPKE
    /// session to it.
    Hello {
        /// The worker's public key.
        exchange: ExchangeKey,
    },
    /// Instances are ready, each for one connection: a worker makes them
    /// a batch at a time (`crate::ready`), and says so in one frame.
    Ready {
        /// The worker's names for the instances: 1 to [`MAX_READY`].
        instances: Vec<u32>,
    },
    /// A connection the handshake process handed over has ended.
    Done {
        /// Its id.
        connection_id: u64,
        /// How it went, for the handshake process's metrics.
        report: ConnectionReport,
    },
    /// The answer to [`ToWorker::ShedIdle`]: whether an idle connection was
    /// closed.
    Shed {
        /// An idle connection was closed.
        closed: bool,
    },
}

/// What a worker says about a connection that ended: the counts its log
/// line has, without names or text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionReport {
    /// How it ended, its trap, and bytes each way.
    pub outcome: ConnectionOutcome,
    /// How long the worker took from receiving it to the guest being
    /// ready (opening the blobs, attaching), in microseconds; `None` if no
    /// guest took it.
    pub attach_us: Option<u64>,
}

/// A connection handed to a worker (its socket travels beside the frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The ready instance it goes to.
    pub instance: u32,
    /// The connection id both blobs carry.
    pub connection_id: u64,
    /// The client's address, for the log line.
    pub peer: String,
    /// Bytes the client sent with its last handshake flight (they travel
    /// in the open blob), for the log line's count.
    pub read_with_handshake: u64,
    /// Whether the handshake resumed a session.
    pub resumed: bool,
    /// The handshake facts.
    pub facts: Facts,
    /// The seal key's blob, sealed in the worker's session.
    pub seal_blob: Vec<u8>,
    /// The open key's blob, with whatever was read past the handshake.
    pub open_blob: Vec<u8>,
    /// `--forward`: the backend's side.
    pub backend: Backend,
}

/// A forwarded connection's backend, as the handshake process connected it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Not forwarded.
    None,
    /// Connected: its socket is the second descriptor beside the frame.
    Connected,
    /// The connect failed, for this reason: the worker sends close_notify.
    Failed(String),
}

/// What the handshake process sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// The blob session to the worker's key (the answer to its hello):
    /// the HPKE encapsulated key.
    Session {
        /// HPKE's `enc`.
        encapsulated: [u8; ENC_LEN],
    },
    /// Serve this connection.
    Connection(Box<Assignment>),
    /// Close the longest-idle connection (with close_notify) to make room.
    ShedIdle,
    /// Send close_notify on every connection and exit.
    Shutdown,
}

impl FromWorker {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        match self {
            Self::Hello { exchange } => {
                w.push(HELLO);
                w.extend_from_slice(&exchange.public_key);
            }
            Self::Ready { instances } => {
                w.push(READY);
                // The decoder refuses a count out of 1..=MAX_READY, so a
                // worker never sends one.
                w.push(u8::try_from(instances.len()).unwrap_or(u8::MAX));
                for instance in instances {
                    w.extend_from_slice(&instance.to_be_bytes());
                }
            }
            Self::Done {
                connection_id,
                report,
            } => {
                w.push(DONE);
                w.extend_from_slice(&connection_id.to_be_bytes());
                let o = &report.outcome;
                w.push(ending_code(o.ending));
                w.push(trap_code(o.trap));
                w.extend_from_slice(&o.bytes_in.to_be_bytes());
                w.extend_from_slice(&o.bytes_out.to_be_bytes());
                // u64::MAX: no guest took it.
                w.extend_from_slice(&report.attach_us.unwrap_or(u64::MAX).to_be_bytes());
            }
            Self::Shed { closed } => {
                w.push(SHED);
                w.push(u8::from(*closed));
            }
        }
        w
    }

    /// Parses a worker's frame; anything but an exact, known frame is an
    /// error.
    pub fn decode(frame: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader(frame);
        let frame = match r.u8()? {
            HELLO => {
                let public_key: [u8; PUBLIC_KEY_LEN] = r
                    .take(PUBLIC_KEY_LEN)?
                    .try_into()
                    .map_err(|_| ChannelError::Truncated)?;
                Self::Hello {
                    exchange: ExchangeKey {
                        id: keyferry_record::blob::key_id(&public_key),
                        public_key,
                    },
                }
            }
            READY => {
                let count = usize::from(r.u8()?);
                if !(1..=MAX_READY).contains(&count) {
                    return Err(ChannelError::BadField("ready instances"));
                }
                Self::Ready {
                    instances: (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?,
                }
            }
            DONE => Self::Done {
                connection_id: r.u64()?,
                report: ConnectionReport {
                    outcome: ConnectionOutcome {
                        ending: ending_from_code(r.u8()?)?,
                        trap: trap_from_code(r.u8()?)?,
                        bytes_in: r.u64()?,
                        bytes_out: r.u64()?,
                    },
                    attach_us: Some(r.u64()?).filter(|us| *us != u64::MAX),
                },
            },
            SHED => Self::Shed {
                closed: r.flag("shed answer")?,
            },
            other => return Err(ChannelError::UnexpectedType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

impl ToWorker {
    /// The frame's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, ChannelError> {
        let mut w = Vec::new();
        match self {
            Self::Connection(a) => {
                w.push(CONNECTION);
                w.extend_from_slice(&a.instance.to_be_bytes());
                w.extend_from_slice(&a.connection_id.to_be_bytes());
                put(&mut w, a.peer.as_bytes())?;
                w.extend_from_slice(&a.read_with_handshake.to_be_bytes());
                w.push(u8::from(a.resumed));
                put_facts(&mut w, &a.facts)?;
                put(&mut w, &a.seal_blob)?;
                put(&mut w, &a.open_blob)?;
                match &a.backend {
                    Backend::None => w.push(0),
                    Backend::Connected => w.push(1),
                    Backend::Failed(reason) => {
                        w.push(2);
                        put(&mut w, reason.as_bytes())?;
                    }
                }
            }
            Self::Session { encapsulated } => {
                w.push(SESSION);
                w.extend_from_slice(encapsulated);
            }
            Self::ShedIdle => w.push(SHED_IDLE),
            Self::Shutdown => w.push(SHUTDOWN),
        }
        if w.len() > MAX_FRAME {
            return Err(ChannelError::TooLong);
        }
        Ok(w)
    }

    /// Parses a handshake-process frame.
    pub fn decode(frame: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader(frame);
        let frame = match r.u8()? {
            CONNECTION => Self::Connection(Box::new(Assignment {
                instance: r.u32()?,
                connection_id: r.u64()?,
                peer: r.string()?,
                read_with_handshake: r.u64()?,
                resumed: r.flag("resumed")?,
                facts: r.facts()?,
                seal_blob: r.bytes()?.to_vec(),
                open_blob: r.bytes()?.to_vec(),
                backend: match r.u8()? {
                    0 => Backend::None,
                    1 => Backend::Connected,
                    2 => Backend::Failed(r.string()?),
                    _ => return Err(ChannelError::BadField("backend")),
                },
            })),
            SESSION => Self::Session {
                encapsulated: r
                    .take(ENC_LEN)?
                    .try_into()
                    .map_err(|_| ChannelError::Truncated)?,
            },
            SHED_IDLE => Self::ShedIdle,
            SHUTDOWN => Self::Shutdown,
            other => return Err(ChannelError::UnexpectedType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

// The wire codes of endings and traps, each written out: the protocol does
// not change when a variant is added or the enums are reordered. A new
// ending needs a new code here (the match is exhaustive); a trap kind the
// core adds (its enum is non-exhaustive) travels as "other" until it gets
// one.

fn ending_code(ending: EndingKind) -> u8 {
    match ending {
        EndingKind::CloseNotify => 1,
        EndingKind::Truncated => 2,
        EndingKind::PeerAlert => 3,
        EndingKind::SentAlert => 4,
        EndingKind::Shutdown => 5,
        EndingKind::Shed => 6,
        EndingKind::KeepaliveTimeout => 7,
        EndingKind::RequestTimeout => 8,
        EndingKind::WriteTimeout => 9,
        EndingKind::GuestFailed => 10,
        EndingKind::Transport => 11,
        EndingKind::Unserved => 12,
        EndingKind::WorkerExited => 13,
        EndingKind::BackendError => 14,
    }
}

fn ending_from_code(code: u8) -> Result<EndingKind, ChannelError> {
    Ok(match code {
        1 => EndingKind::CloseNotify,
        2 => EndingKind::Truncated,
        3 => EndingKind::PeerAlert,
        4 => EndingKind::SentAlert,
        5 => EndingKind::Shutdown,
        6 => EndingKind::Shed,
        7 => EndingKind::KeepaliveTimeout,
        8 => EndingKind::RequestTimeout,
        9 => EndingKind::WriteTimeout,
        10 => EndingKind::GuestFailed,
        11 => EndingKind::Transport,
        12 => EndingKind::Unserved,
        13 => EndingKind::WorkerExited,
        14 => EndingKind::BackendError,
        _ => return Err(ChannelError::BadField("ending")),
    })
}

fn trap_code(trap: Option<TrapKind>) -> u8 {
    match trap {
        None => 0,
        Some(TrapKind::OutOfFuel) => 1,
        Some(TrapKind::Deadline) => 2,
        Some(TrapKind::ResourceLimit) => 3,
        Some(TrapKind::Other) => 4,
        Some(TrapKind::WouldBlock) => 5,
        // A kind the core adds later travels as "other" until it has a
        // code of its own here.
        Some(_) => 4,
    }
}

fn trap_from_code(code: u8) -> Result<Option<TrapKind>, ChannelError> {
    Ok(Some(match code {
        0 => return Ok(None),
        1 => TrapKind::OutOfFuel,
        2 => TrapKind::Deadline,
        3 => TrapKind::ResourceLimit,
        4 => TrapKind::Other,
        5 => TrapKind::WouldBlock,
        _ => return Err(ChannelError::BadField("trap")),
    }))
}

fn put(w: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ChannelError> {
    let len = u32::try_from(bytes.len()).map_err(|_| ChannelError::TooLong)?;
    w.extend_from_slice(&len.to_be_bytes());
    w.extend_from_slice(bytes);
    Ok(())
}

fn put_option(w: &mut Vec<u8>, bytes: Option<&[u8]>) -> Result<(), ChannelError> {
    match bytes {
        None => w.push(0),
        Some(b) => {
            w.push(1);
            put(w, b)?;
        }
    }
    Ok(())
}

fn put_facts(w: &mut Vec<u8>, f: &Facts) -> Result<(), ChannelError> {
    w.push(match f.role {
        Role::Client => 0,
        Role::Server => 1,
    });
    w.push(match f.version {
        ProtocolVersion::Tls12 => 2,
        ProtocolVersion::Tls13 => 3,
    });
    put(w, f.suite.as_bytes())?;
    put_option(w, f.server_name.as_deref().map(str::as_bytes))?;
    put_option(w, f.alpn.as_deref())?;
    match &f.peer_certificate {
        None => w.push(0),
        Some(c) => {
            w.push(1);
            for field in [&c.subject, &c.issuer, &c.serial, &c.sha256] {
                put(w, field.as_bytes())?;
            }
            let names =
                u32::try_from(c.subject_alt_names.len()).map_err(|_| ChannelError::TooLong)?;
            w.extend_from_slice(&names.to_be_bytes());
            for name in &c.subject_alt_names {
                put(w, name.as_bytes())?;
            }
        }
    }
    w.extend_from_slice(&f.connection_id.to_be_bytes());
    Ok(())
}

/// A bounds-checked reader: every short read is an error, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChannelError> {
        if self.0.len() < n {
            return Err(ChannelError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ChannelError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ChannelError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ChannelError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn flag(&mut self, name: &'static str) -> Result<bool, ChannelError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ChannelError::BadField(name)),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], ChannelError> {
        let len = usize::try_from(self.u32()?).map_err(|_| ChannelError::TooLong)?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, ChannelError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| ChannelError::BadField("utf-8"))
    }

    fn option(&mut self) -> Result<Option<&'a [u8]>, ChannelError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(ChannelError::BadField("option tag")),
        }
    }

    fn option_string(&mut self) -> Result<Option<String>, ChannelError> {
        self.option()?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| ChannelError::BadField("utf-8")))
            .transpose()
    }

    fn facts(&mut self) -> Result<Facts, ChannelError> {
        let role = match self.u8()? {
            0 => Role::Client,
            1 => Role::Server,
            _ => return Err(ChannelError::BadField("role")),
        };
        let version = match self.u8()? {
            2 => ProtocolVersion::Tls12,
            3 => ProtocolVersion::Tls13,
            _ => return Err(ChannelError::BadField("version")),
        };
        Ok(Facts {
            role,
            version,
            suite: self.string()?,
            server_name: self.option_string()?,
            alpn: self.option()?.map(<[u8]>::to_vec),
            peer_certificate: self.peer_certificate()?,
            connection_id: self.u64()?,
        })
    }

    fn peer_certificate(&mut self) -> Result<Option<PeerCertificate>, ChannelError> {
        match self.u8()? {
            0 => return Ok(None),
            1 => {}
            _ => return Err(ChannelError::BadField("option tag")),
        }
        let (subject, issuer, serial, sha256) = (
            self.string()?,
            self.string()?,
            self.string()?,
            self.string()?,
        );
        let count = self.u32()? as usize;
        // Each name takes at least its 4-byte length: a count the frame
        // cannot hold is refused before anything is allocated for it.
        if count > self.0.len() / 4 {
            return Err(ChannelError::Truncated);
        }
        let subject_alt_names = (0..count)
            .map(|_| self.string())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(PeerCertificate {
            subject,
            issuer,
            serial,
            subject_alt_names,
            sha256,
        }))
    }

    fn finish(&self) -> Result<(), ChannelError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ChannelError::Trailing)
        }
    }
}

/// A connected pair of channel sockets: one end for the handshake process,
/// one for a worker. Both are close-on-exec; the worker's end is given to
/// the child as its standard input, the one descriptor it inherits.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    for end in [&a, &b] {
        rustix::net::sockopt::set_socket_send_buffer_size(end, MAX_FRAME * 2)?;
        rustix::net::sockopt::set_socket_recv_buffer_size(end, MAX_FRAME * 2)?;
        // The kernel caps the above at net.core.[wr]mem_max; root may go
        // past it, and a frame must fit in one datagram.
        if rustix::net::sockopt::socket_send_buffer_size(end)? < MAX_FRAME {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(end, MAX_FRAME * 2);
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(end, MAX_FRAME * 2);
        }
    }
    Ok((a, b))
}

/// One end of a channel, driven by tokio.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
    /// Where frames arrive: [`MAX_FRAME`] bytes, allocated once for the
    /// channel's life (pages the kernel never wrote stay unbacked). A fresh
    /// zeroed buffer per frame cost a 640 KiB calloc, and glibc's mmap and
    /// munmap of it, on every hand-over and every report: in the handshake
    /// process that was about a tenth of its CPU under new-connection load.
    scratch: Mutex<Box<[u8]>>,
}

impl Channel {
    /// Wraps a channel socket (it is made non-blocking).
    #[allow(
        unsafe_code,
        reason = "tokio's registration is unsafe by contract; an OwnedFd meets it"
    )]
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        // SAFETY: an `OwnedFd` owns one open descriptor, returns that same
        // descriptor from every `as_raw_fd` call, and closes it only when
        // dropped, which happens when the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Self {
            fd,
            scratch: Mutex::new(vec![0u8; MAX_FRAME].into_boxed_slice()),
        })
    }

    /// Sends one frame, with the descriptors in `fds` beside it (at most
    /// [`MAX_FDS`]).
    pub async fn send(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if frame.len() > MAX_FRAME || fds.len() > MAX_FDS {
            return Err(ChannelError::TooLong);
        }
        loop {
            let mut guard = self.fd.ready(Interest::WRITABLE).await?;
            let sent = guard.try_io(|inner| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(std::io::Error::other("control buffer too small"));
                }
                rustix::net::sendmsg(
                    inner.get_ref(),
                    &[IoSlice::new(frame)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(Ok(n)) if n == frame.len() => return Ok(()),
                Ok(Ok(_)) => return Err(ChannelError::TooLong),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Err(ChannelError::Closed);
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Whether the other end has closed (or shut down writing).
    fn peer_hung_up(&self) -> bool {
        use rustix::event::{PollFd, PollFlags};
        let mut fds = [PollFd::new(self.fd.get_ref(), PollFlags::RDHUP)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP),
            // Cannot tell: take it for closed, which ends the channel too.
            Err(_) => true,
        }
    }

    /// Receives one frame and the descriptors that came with it (at most
    /// [`MAX_FDS`]; more is an error, and they are closed).
    pub async fn recv(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ChannelError> {
        loop {
            let mut guard = self.fd.ready(Interest::READABLE).await?;
            let got = guard.try_io(|inner| {
                let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    inner.get_ref(),
                    &mut [IoSliceMut::new(&mut scratch)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                // The frame leaves the scratch buffer, and no copy of it
                // stays behind for the next one.
                let n = msg.bytes.min(scratch.len());
                let frame = scratch[..n].to_vec();
                scratch[..n].fill(0);
                Ok((frame, msg.flags, fds))
            });
            match got {
                Ok(Ok((frame, _, _))) if frame.is_empty() => {
                    // End of file and an empty datagram both read as no
                    // bytes; only a hang-up sets POLLRDHUP.
                    return Err(if self.peer_hung_up() {
                        ChannelError::Closed
                    } else {
                        ChannelError::Empty
                    });
                }
                Ok(Ok((frame, flags, fds))) => {
                    if flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
                        || fds.len() > MAX_FDS
                    {
                        return Err(ChannelError::TooLong);
                    }
                    return Ok((frame, fds));
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn facts() -> Facts {
        Facts {
            role: Role::Server,
            version: ProtocolVersion::Tls13,
            suite: "TLS_CHACHA20_POLY1305_SHA256".into(),
            server_name: Some("localhost".into()),
            alpn: None,
            peer_certificate: Some(PeerCertificate {
                subject: "CN=client".into(),
                issuer: "CN=Example CA".into(),
                serial: "01:02".into(),
                subject_alt_names: vec!["DNS:client.example".into(), "IP:10.0.0.1".into()],
                sha256: "AB:CD".into(),
            }),
            connection_id: 42,
        }
    }

    #[test]
    fn frames_round_trip_and_every_truncation_is_refused() {
        let assignment = ToWorker::Connection(Box::new(Assignment {
            instance: 3,
            connection_id: 42,
            peer: "127.0.0.1:5000".into(),
            read_with_handshake: 17,
            resumed: true,
            facts: facts(),
            seal_blob: vec![1; 150],
            open_blob: vec![2; 300],
            backend: Backend::Failed("connection refused".into()),
        }));
        let frame = assignment.encode().unwrap();
        assert_eq!(ToWorker::decode(&frame).unwrap(), assignment);
        for cut in 0..frame.len() {
            assert!(ToWorker::decode(&frame[..cut]).is_err(), "cut at {cut}");
        }
        for backend in [Backend::None, Backend::Connected] {
            let mut a = assignment.clone();
            if let ToWorker::Connection(c) = &mut a {
                c.backend = backend;
            }
            assert_eq!(ToWorker::decode(&a.encode().unwrap()).unwrap(), a);
        }
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            ToWorker::decode(&long),
            Err(ChannelError::Trailing)
        ));

        let session = ToWorker::Session {
            encapsulated: [5; 32],
        };
        let frame = session.encode().unwrap();
        assert_eq!(ToWorker::decode(&frame).unwrap(), session);
        for cut in 0..frame.len() {
            assert!(ToWorker::decode(&frame[..cut]).is_err(), "cut at {cut}");
        }

        let hello = FromWorker::Hello {
            exchange: ExchangeKey {
                id: keyferry_record::blob::key_id(&[9; 32]),
                public_key: [9; 32],
            },
        };
        let done = |ending, trap, attach_us| FromWorker::Done {
            connection_id: 42,
            report: ConnectionReport {
                outcome: ConnectionOutcome {
                    ending,
                    trap,
                    bytes_in: 1234,
                    bytes_out: 56789,
                },
                attach_us,
            },
        };
        let mut frames = vec![
            hello,
            FromWorker::Ready { instances: vec![7] },
            FromWorker::Ready {
                instances: (1..=MAX_READY as u32).collect(),
            },
        ];
        frames.extend(EndingKind::ALL.iter().map(|e| done(*e, None, Some(35))));
        frames.extend(
            TrapKind::ALL
                .iter()
                .map(|t| done(EndingKind::GuestFailed, Some(*t), None)),
        );
        for frame in frames {
            let bytes = frame.encode();
            assert_eq!(FromWorker::decode(&bytes).unwrap(), frame);
            for cut in 0..bytes.len() {
                assert!(FromWorker::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        // Unknown endings and traps are refused.
        let mut bad = done(EndingKind::Shed, None, None).encode();
        bad[9] = 0;
        assert!(FromWorker::decode(&bad).is_err());
        bad[9] = EndingKind::ALL.len() as u8 + 1;
        assert!(FromWorker::decode(&bad).is_err());
        let mut bad = done(EndingKind::Shed, None, None).encode();
        bad[10] = TrapKind::ALL.len() as u8 + 1;
        assert!(FromWorker::decode(&bad).is_err());
        // A batch of no instances, or of more than may be announced.
        assert!(matches!(
            FromWorker::decode(&[READY, 0]),
            Err(ChannelError::BadField(_))
        ));
        let mut over = vec![READY, MAX_READY as u8 + 1];
        over.extend(std::iter::repeat_n(0, 4 * (MAX_READY + 1)));
        assert!(matches!(
            FromWorker::decode(&over),
            Err(ChannelError::BadField(_))
        ));
        // A worker cannot send what only the handshake process sends.
        assert!(matches!(
            FromWorker::decode(&ToWorker::Shutdown.encode().unwrap()),
            Err(ChannelError::UnexpectedType(SHUTDOWN))
        ));
    }

    /// The wire codes are the protocol: pinned here, so a reordered enum
    /// or a changed code fails a test rather than mixing up reports.
    #[test]
    fn ending_and_trap_codes_are_fixed() {
        let endings: Vec<u8> = EndingKind::ALL.iter().map(|e| ending_code(*e)).collect();
        assert_eq!(endings, (1..=14).collect::<Vec<u8>>());
        assert_eq!(ending_code(EndingKind::CloseNotify), 1);
        assert_eq!(ending_code(EndingKind::WorkerExited), 13);
        assert_eq!(ending_code(EndingKind::BackendError), 14);
        for e in EndingKind::ALL {
            assert_eq!(ending_from_code(ending_code(e)).unwrap(), e);
        }
        assert_eq!(trap_code(Some(TrapKind::OutOfFuel)), 1);
        assert_eq!(trap_code(Some(TrapKind::WouldBlock)), 5);
        for t in TrapKind::ALL {
            assert_eq!(trap_from_code(trap_code(Some(t))).unwrap(), Some(t));
        }
        assert!(ending_from_code(0).is_err() && ending_from_code(15).is_err());
        assert!(trap_from_code(6).is_err());
    }

    #[test]
    fn descriptors_travel_beside_their_frame() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = pair().unwrap();
            let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
            let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
            a.send(b"frame", &[x.as_fd()]).await.unwrap();
            let (frame, fds) = b.recv().await.unwrap();
            assert_eq!(frame, b"frame");
            assert_eq!(fds.len(), 1, "the descriptor arrived");
            let (z, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            a.send(b"two", &[x.as_fd(), z.as_fd()]).await.unwrap();
            let (frame, fds) = b.recv().await.unwrap();
            assert_eq!((frame.as_slice(), fds.len()), (&b"two"[..], 2));
            assert!(matches!(
                a.send(b"three", &[x.as_fd(), z.as_fd(), x.as_fd()]).await,
                Err(ChannelError::TooLong)
            ));
            a.send(b"plain", &[]).await.unwrap();
            let (frame, fds) = b.recv().await.unwrap();
            assert_eq!(frame, b"plain");
            assert!(fds.is_empty());
            // An empty datagram is not the end of the channel.
            a.send(b"", &[]).await.unwrap();
            assert!(matches!(b.recv().await, Err(ChannelError::Empty)));
            a.send(b"after", &[]).await.unwrap();
            assert_eq!(b.recv().await.unwrap().0, b"after");
            drop(a);
            assert!(matches!(b.recv().await, Err(ChannelError::Closed)));
        });
    }
}
