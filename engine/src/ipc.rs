//! Frames and messages between the engine and its workers (`plugboard-host`).
//!
//! An engine and a worker talk over one `SOCK_SEQPACKET` socketpair: one datagram is one
//! frame ([`encode_frame`], [`decode_frame`]), one frame is one message ([`EngineMessage`]
//! engine → worker, [`WorkerMessage`] worker → engine). SEQPACKET keeps datagram
//! boundaries and delivers in order, so neither side ever reassembles a stream, and a send
//! is atomic: threads sharing a [`Channel`] never interleave their messages.
//!
//! Workers run plugin code and are untrusted. Everything a [`Channel`] receives is checked
//! — datagram size, header, body, trailing bytes, attached descriptors — and any deviation
//! is an [`IpcError::Protocol`] naming what was wrong and what was expected. The channel
//! itself stays usable after one (the bad datagram is consumed whole); the supervisor
//! decides what a violation costs the worker (DESIGN.md: it is killed).

mod frame;
mod hot;
mod message;

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockFlag, SockType,
    getsockopt, recv, recvmsg, send, sendmmsg, sendmsg, setsockopt, socketpair, sockopt,
};
use nix::sys::time::TimeVal;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use frame::{
    HEADER_BYTES, MAGIC, MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, MAX_REPLY_BYTES, decode_frame,
    encode_frame, oversized_reply,
};
pub use message::{
    BatchedCall, BatchedCallRef, BatchedReply, CallRef, CallsRef, ConfinementPlan, EngineMessage,
    EngineMessageRef, PROTOCOL_VERSION, ReplyRef, StepReport, WorkerMessage,
};

use crate::sandbox::pages::ZeroPages;
use frame::{check_frame_size, encode_frame_into, protocol};

/// A message a [`Channel`] sends: postcard's frame, unless the type writes its own (the
/// frames of every call do, see `hot`).
pub trait Outgoing: Serialize {
    /// The frame, in `buffer` (cleared first), so a sender can reuse one allocation.
    fn frame_into(&self, buffer: Vec<u8>) -> Result<Vec<u8>, IpcError> {
        encode_frame_into(self, buffer)
    }
}

/// A message a [`Channel`] receives: decoded by postcard, unless the type reads its own
/// frames first (a worker's replies do).
pub trait Incoming: DeserializeOwned {
    fn from_frame(frame: &[u8]) -> Result<Self, IpcError> {
        decode_frame(frame)
    }
}

/// A request as a worker's serving thread reads it, borrowing from `frame`: a `Call` by
/// hand, anything else by postcard.
pub fn decode_request(frame: &[u8]) -> Result<EngineMessageRef<'_>, IpcError> {
    hot::decode_call(frame).map_or_else(|| decode_frame(frame), Ok)
}

impl Outgoing for EngineMessage {}
impl Outgoing for WorkerMessage {}
impl Outgoing for CallsRef<'_> {}

impl Outgoing for CallRef<'_> {
    fn frame_into(&self, buffer: Vec<u8>) -> Result<Vec<u8>, IpcError> {
        hot::encode_call_into(self, buffer)
    }
}

impl Outgoing for ReplyRef<'_> {
    fn frame_into(&self, buffer: Vec<u8>) -> Result<Vec<u8>, IpcError> {
        hot::encode_reply_into(self, buffer)
    }
}

impl Incoming for EngineMessage {}

impl Incoming for WorkerMessage {
    fn from_frame(frame: &[u8]) -> Result<Self, IpcError> {
        hot::decode_reply(frame).map_or_else(|| decode_frame(frame), Ok)
    }
}

/// What went wrong on an IPC channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket itself failed (the message says which call).
    #[error("IPC socket error: {error}")]
    Io { error: io::Error },
    /// The peer closed its end (or shut down writing); nothing more will arrive.
    #[error("the peer closed the IPC channel")]
    Closed,
    /// The peer sent something that is not a valid frame of the expected message type.
    #[error("IPC protocol violation: {reason}")]
    Protocol { reason: String },
    /// A message too large to send as one frame.
    #[error("message of {bytes} bytes exceeds the {max}-byte limit of one frame")]
    TooLarge { bytes: usize, max: usize },
    /// A message that postcard cannot encode (e.g. a path that is not UTF-8).
    #[error("cannot encode message: {reason}")]
    Encode { reason: String },
}

/// By hand rather than `#[from]`, which would also make the io error the `source()` of a
/// message that already says it.
impl From<io::Error> for IpcError {
    fn from(error: io::Error) -> Self {
        Self::Io { error }
    }
}

/// The most descriptors one `SCM_RIGHTS` message can carry (the kernel's `SCM_MAX_FD`).
/// The receive side makes room for all of them so it never loses track of one.
const SCM_MAX_FD: usize = 253;

/// `SO_SNDBUF` requested for both ends of a pair (the kernel doubles it): a datagram must
/// fit in the sender's buffer, and a maximal frame should not have to wait for an empty one.
const SEND_BUFFER_REQUEST: usize = 2 * MAX_FRAME_BYTES;

/// The kernel refuses a unix datagram longer than `sk_sndbuf - 32` with `EMSGSIZE`.
const SEND_BUFFER_OVERHEAD: usize = 32;

/// Send buffers larger than this are not kept for the thread's next send.
const KEPT_SEND_BUFFER: usize = 64 * 1024;

/// One end of the engine⇄worker `SOCK_SEQPACKET` socketpair.
///
/// All methods take `&self` and may be called from several threads at once: each send is
/// one datagram, so senders never interleave; each receive takes one whole datagram, and
/// every receiving thread has its own buffer, so receivers never wait for each other.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    /// The socket's receive timeout (`SO_RCVTIMEO`) in nanoseconds, 0 if none: a blocking
    /// receive comes back empty-handed after this long (see [`Channel::recv_before`]).
    tick_nanos: AtomicU64,
    /// The socket refuses descriptors (`SO_PASSRIGHTS` off, see
    /// [`Channel::refuse_descriptors`]): receives that expect none are plain `recv`s.
    no_descriptors: AtomicBool,
}

/// Per-thread receive buffers: a datagram is read whole into `data`, which must hold
/// `MAX_FRAME_BYTES + 1` bytes to tell a maximal frame from an oversized one. Mapped on a
/// thread's first receive ([`ZeroPages`]: pages the kernel never writes stay unbacked, and
/// the whole buffer goes back to the kernel when the thread ends).
#[derive(Default)]
struct ReceiveBuffers {
    data: Option<ZeroPages>,
    /// Room for one `SCM_RIGHTS` message of `SCM_MAX_FD` descriptors.
    control: Vec<u8>,
}

impl ReceiveBuffers {
    /// The data buffer, mapped (and the control buffer sized) on first use.
    fn data(&mut self) -> Result<&mut ZeroPages, Errno> {
        if self.data.is_none() {
            self.data = Some(ZeroPages::new(MAX_FRAME_BYTES + 1)?);
            self.control = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        }
        self.data.as_mut().ok_or(Errno::ENOMEM)
    }

    /// What the last receive wrote (empty before the first).
    fn received(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }
}

thread_local! {
    static RECEIVE_BUFFERS: RefCell<ReceiveBuffers> = RefCell::new(ReceiveBuffers::default());
    /// The frame buffer of this thread's last send, reused by the next.
    static SEND_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Encodes `msg` into this thread's send buffer and hands the frame to `use_frame`.
fn with_frame<T: Outgoing + ?Sized, R>(
    msg: &T,
    use_frame: impl FnOnce(&[u8]) -> R,
) -> Result<R, IpcError> {
    let buffer = SEND_BUFFER.try_with(Cell::take).unwrap_or_default();
    let frame = msg.frame_into(buffer)?;
    let result = use_frame(&frame);
    if frame.capacity() <= KEPT_SEND_BUFFER {
        let _ = SEND_BUFFER.try_with(|cell| cell.set(frame));
    }
    Ok(result)
}

/// Which descriptors the caller accepts with the next message.
#[derive(Clone, Copy)]
enum FdPolicy {
    None,
    AtMostOne,
}

/// One received datagram, before its frame is decoded.
struct Datagram {
    /// The datagram's real length (`MSG_TRUNC`), which may exceed the buffer.
    len: usize,
    fds: Vec<OwnedFd>,
    /// Control data other than one `SCM_RIGHTS` message.
    control_problem: Option<String>,
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Channel {
    /// A connected pair of channels (`SOCK_SEQPACKET`, both ends close-on-exec).
    ///
    /// Both ends get a send buffer large enough for a [`MAX_FRAME_BYTES`] frame when the
    /// process may set one (root uses `SO_SNDBUFFORCE`; otherwise `SO_SNDBUF` is capped by
    /// `net.core.wmem_max`, and a frame that does not fit is refused at send time with
    /// [`IpcError::TooLarge`]). The options stay with the socket when one end is passed to
    /// a worker.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|errno| os_error("socketpair(AF_UNIX, SOCK_SEQPACKET)", errno))?;
        for end in [&a, &b] {
            raise_send_buffer(end);
        }
        Ok((Channel::from_fd(a), Channel::from_fd(b)))
    }

    /// Wraps one end of a `SOCK_SEQPACKET` socketpair, e.g. the one a worker inherited.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            tick_nanos: AtomicU64::new(0),
            no_descriptors: AtomicBool::new(false),
        }
    }

    /// Makes this end refuse descriptors from now on (`SO_PASSRIGHTS` off, Linux 6.16):
    /// the peer's sends with `SCM_RIGHTS` fail in the peer (`EPERM`) and nothing with a
    /// descriptor can be queued here, so [`Channel::recv`] and the other receives that
    /// accept no descriptor need no control buffer and read with a plain `recv(2)`. On an
    /// older kernel this fails and the receives keep checking each datagram for
    /// descriptors.
    pub fn refuse_descriptors(&self) -> Result<(), IpcError> {
        crate::sandbox::process::refuse_descriptors(self.fd.as_fd())?;
        self.no_descriptors.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the socket's receive timeout (`SO_RCVTIMEO`) to `tick`: a blocking receive then
    /// returns after at most one tick, which lets [`Channel::recv_before`] wait in a single
    /// `recvmsg` instead of `poll` + `recvmsg`. [`Channel::recv`] and the other receives
    /// keep their meaning (they wait again after a tick).
    pub fn set_receive_tick(&self, tick: Duration) -> Result<(), IpcError> {
        let tick = tick.max(Duration::from_millis(1));
        let value = TimeVal::new(
            i64::try_from(tick.as_secs()).unwrap_or(i64::MAX),
            i64::from(tick.subsec_micros()),
        );
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &value)
            .map_err(|errno| os_error("setsockopt(SO_RCVTIMEO) on the IPC socket", errno))?;
        self.tick_nanos.store(
            u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// The socket, e.g. to pass to a spawned worker or to poll alongside other descriptors.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Gives the socket back.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends one message as one datagram. Blocks while the socket's send buffer is full.
    pub fn send<T: Outgoing + ?Sized>(&self, msg: &T) -> Result<(), IpcError> {
        with_frame(msg, |frame| self.send_frame(frame, None, true))?.map(drop)
    }

    /// Sends one message as one datagram if the socket's send buffer has room now;
    /// `Ok(false)` (nothing sent) if it would have to wait.
    pub fn try_send<T: Outgoing + ?Sized>(&self, msg: &T) -> Result<bool, IpcError> {
        with_frame(msg, |frame| self.send_frame(frame, None, false))?
    }

    /// Sends one message as one datagram, waiting for room in the send buffer until
    /// `deadline` at most: `Ok(false)` (nothing sent) if there was none by then. For a
    /// message to a peer that may have stopped reading, where waiting for ever would hold
    /// the sender with it.
    pub fn send_before<T: Outgoing + ?Sized>(
        &self,
        msg: &T,
        deadline: Instant,
    ) -> Result<bool, IpcError> {
        with_frame(msg, |frame| {
            loop {
                if self.send_frame(frame, None, false)? {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                self.wait_writable(Some(deadline))?;
            }
        })?
    }

    /// Sends already encoded frames ([`encode_frame`]), each as one datagram, in order, with
    /// as few system calls as the kernel allows (`sendmmsg`), waiting for room as needed.
    pub fn send_frames(&self, frames: &[Vec<u8>]) -> Result<(), IpcError> {
        let mut sent = 0;
        while sent < frames.len() {
            let rest = frames.get(sent..).unwrap_or_default();
            match self.try_send_frames(rest)? {
                0 => self.wait_for(PollFlags::POLLOUT, None)?,
                took => sent += took,
            }
        }
        Ok(())
    }

    /// Sends already encoded frames ([`encode_frame`]), each as one datagram, in order,
    /// with as few system calls as the kernel allows (`sendmmsg`), without waiting: returns
    /// how many were sent before the send buffer was full (0 if it is full now). Frames are
    /// sent as they are: a frame the peer would refuse is the caller's mistake.
    pub fn try_send_frames(&self, frames: &[Vec<u8>]) -> Result<usize, IpcError> {
        if frames.is_empty() {
            return Ok(0);
        }
        let slices: Vec<[IoSlice<'_>; 1]> =
            frames.iter().map(|frame| [IoSlice::new(frame)]).collect();
        let addresses = vec![None::<()>; frames.len()];
        let mut headers = MultiHeaders::<()>::preallocate(frames.len(), None);
        loop {
            let result = sendmmsg(
                self.fd.as_raw_fd(),
                &mut headers,
                &slices,
                &addresses,
                [],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            );
            match result {
                Ok(sent) => {
                    let sent: Vec<usize> = sent.map(|result| result.bytes).collect();
                    if let Some((index, bytes)) = sent
                        .iter()
                        .enumerate()
                        .find(|(index, bytes)| frames[*index].len() != **bytes)
                    {
                        return Err(partial_send(*bytes, frames[index].len()));
                    }
                    return Ok(sent.len());
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(0),
                Err(errno) => return Err(self.send_error(errno, frames[0].len())),
            }
        }
    }

    /// Sends one message with `fd` attached (`SCM_RIGHTS`) in the same datagram; the
    /// receiver gets its own descriptor for the same open file.
    pub fn send_with_fd<T: Outgoing + ?Sized>(
        &self,
        msg: &T,
        fd: BorrowedFd<'_>,
    ) -> Result<(), IpcError> {
        let frame = encode_frame(msg)?;
        self.send_frame(&frame, Some(fd), true).map(drop)
    }

    /// Receives one message, blocking until one arrives. A descriptor attached to it is a
    /// protocol violation (the descriptor is closed).
    pub fn recv<T: Incoming>(&self) -> Result<T, IpcError> {
        match self.receive(None, FdPolicy::None)? {
            Some((msg, _)) => Ok(msg),
            None => unreachable_timeout(),
        }
    }

    /// Receives one message and the descriptor attached to it, if any (close-on-exec).
    /// More than one descriptor is a protocol violation (all of them are closed).
    pub fn recv_with_fd<T: Incoming>(&self) -> Result<(T, Option<OwnedFd>), IpcError> {
        match self.receive(None, FdPolicy::AtMostOne)? {
            Some(received) => Ok(received),
            None => unreachable_timeout(),
        }
    }

    /// Like [`Channel::recv`], but gives up after `timeout` with `Ok(None)`.
    pub fn recv_timeout<T: Incoming>(&self, timeout: Duration) -> Result<Option<T>, IpcError> {
        Ok(self
            .receive(Some(timeout), FdPolicy::None)?
            .map(|(msg, _)| msg))
    }

    /// Like [`Channel::recv_with_fd`], but gives up after `timeout` with `Ok(None)`.
    pub fn recv_with_fd_timeout<T: Incoming>(
        &self,
        timeout: Duration,
    ) -> Result<Option<(T, Option<OwnedFd>)>, IpcError> {
        self.receive(Some(timeout), FdPolicy::AtMostOne)
    }

    /// Receives one message if one arrives before `deadline`, waiting at most one receive
    /// tick ([`Channel::set_receive_tick`]) when one is set: `Ok(None)` means nothing came
    /// in that time, so a caller can look at other things and call again. With a tick set
    /// and more than a tick to go this is a single blocking `recvmsg`. A descriptor attached
    /// to the message is a protocol violation.
    pub fn recv_before<T: Incoming>(&self, deadline: Instant) -> Result<Option<T>, IpcError> {
        self.recv_before_at(deadline, Instant::now())
    }

    /// [`Channel::recv_before`] for a caller that has just read the clock (`now`): a call's
    /// path reads it as few times as it can, each read costing tens of nanoseconds on a VM.
    pub fn recv_before_at<T: Incoming>(
        &self,
        deadline: Instant,
        now: Instant,
    ) -> Result<Option<T>, IpcError> {
        let tick = Duration::from_nanos(self.tick_nanos.load(Ordering::Relaxed));
        if tick.is_zero() || deadline.saturating_duration_since(now) <= tick {
            // The last stretch is waited for exactly: from the clock as it is now.
            return self.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        let mut resets = 0;
        loop {
            match self.receive_once(true, FdPolicy::None, &mut resets)? {
                Attempt::Message(decoded) => return decoded.map(|(msg, _)| Some(msg)),
                Attempt::Empty => return Ok(None),
                Attempt::Again => {}
            }
        }
    }

    /// Receives one [`EngineMessage`] and hands it to `handle` decoded in place
    /// ([`EngineMessageRef`]: hooks and payloads borrow from this thread's receive buffer,
    /// nothing is copied), for the worker's serving threads. It is one plain `recv(2)`, with
    /// no room for control data: meant for a peer trusted not to attach descriptors (the
    /// engine, seen from its worker) — one that did would not be seen, and the kernel closes
    /// it. Everything else is checked as [`Channel::recv`] checks it.
    pub fn recv_request<R>(
        &self,
        handle: impl FnOnce(Result<EngineMessageRef<'_>, IpcError>) -> R,
    ) -> R {
        let mut fresh = ReceiveBuffers::default();
        let mut handle = Some(handle);
        let mut run = |buffers: &mut ReceiveBuffers| {
            let received = buffers
                .data()
                .map_err(|errno| IpcError::from(os_error("mapping a receive buffer", errno)))
                .and_then(|data| self.receive_plain(data));
            let decoded = received.and_then(|len| {
                buffers
                    .received()
                    .get(..len)
                    .ok_or_else(|| protocol(format!("frame of {len} bytes does not fit")))
                    .and_then(decode_request)
            });
            handle.take().map(|handle| handle(decoded))
        };
        // The thread's buffer, unless it is in use further up this thread (a receive from
        // a handler) or gone (a thread-local destructor): then a buffer of its own.
        let result = RECEIVE_BUFFERS
            .try_with(|buffers| match buffers.try_borrow_mut() {
                Ok(mut buffers) => run(&mut buffers),
                Err(_) => run(&mut fresh),
            })
            .unwrap_or_else(|_| run(&mut fresh));
        result.unwrap_or_else(|| unreachable!("the handler runs exactly once"))
    }

    /// One datagram into `data` with `recv(2)`, waiting for it: its real length, checked
    /// against the frame limit.
    fn receive_plain(&self, data: &mut [u8]) -> Result<usize, IpcError> {
        let mut resets = 0;
        loop {
            match recv(self.fd.as_raw_fd(), data, MsgFlags::MSG_TRUNC) {
                Ok(0) if self.peer_has_shut_down() => return Err(IpcError::Closed),
                Ok(0) => {
                    return Err(protocol(format!(
                        "empty datagram, expected a frame of at least {HEADER_BYTES} bytes"
                    )));
                }
                Ok(len) => return check_frame_size(len).map(|()| len),
                Err(Errno::EINTR) => {}
                // A socket someone made non-blocking, or a receive tick.
                Err(Errno::EAGAIN) => self.wait_for(PollFlags::POLLIN, None)?,
                // See `receive_once`: the messages queued before the reset still come.
                Err(Errno::ECONNRESET) if resets == 0 => resets += 1,
                Err(Errno::ECONNRESET | Errno::ENOTCONN | Errno::EPIPE) => {
                    return Err(IpcError::Closed);
                }
                Err(errno) => return Err(os_error("recv on the IPC socket", errno).into()),
            }
        }
    }

    /// Receives one message if one is queued now, without waiting.
    pub fn try_recv<T: Incoming>(&self) -> Result<Option<T>, IpcError> {
        let mut resets = 0;
        loop {
            match self.receive_once(false, FdPolicy::None, &mut resets)? {
                Attempt::Message(decoded) => return decoded.map(|(msg, _)| Some(msg)),
                Attempt::Empty => return Ok(None),
                Attempt::Again => {}
            }
        }
    }

    /// Waits until a message can be received (or the peer closed its end), at most until
    /// `deadline`. Receives nothing.
    pub fn wait_readable(&self, deadline: Option<Instant>) -> Result<(), IpcError> {
        self.wait_for(PollFlags::POLLIN, deadline)
    }

    /// Waits until the send buffer has room, at most until `deadline`.
    pub fn wait_writable(&self, deadline: Option<Instant>) -> Result<(), IpcError> {
        self.wait_for(PollFlags::POLLOUT, deadline)
    }

    fn send_error(&self, errno: Errno, len: usize) -> IpcError {
        match errno {
            Errno::EPIPE | Errno::ECONNRESET | Errno::ECONNREFUSED | Errno::ENOTCONN => {
                IpcError::Closed
            }
            Errno::EMSGSIZE => IpcError::TooLarge {
                bytes: len,
                max: self.send_limit(),
            },
            errno => os_error("sending on the IPC socket", errno).into(),
        }
    }

    /// Sends one frame; `Ok(false)` if `wait` is off and the send buffer is full.
    fn send_frame(
        &self,
        frame: &[u8],
        fd: Option<BorrowedFd<'_>>,
        wait: bool,
    ) -> Result<bool, IpcError> {
        let iov = [IoSlice::new(frame)];
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        let flags = if wait {
            MsgFlags::MSG_NOSIGNAL
        } else {
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT
        };
        loop {
            // Plain send(2) when there is nothing to attach: cheaper than sendmsg(2).
            let result = if cmsgs.is_empty() {
                send(self.fd.as_raw_fd(), frame, flags)
            } else {
                sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, flags, None)
            };
            match result {
                Ok(sent) if sent == frame.len() => return Ok(true),
                Ok(sent) => return Err(partial_send(sent, frame.len())),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if !wait => return Ok(false),
                // A socket someone made non-blocking: wait until it can take more.
                Err(Errno::EAGAIN) => self.wait_for(PollFlags::POLLOUT, None)?,
                Err(errno) => return Err(self.send_error(errno, frame.len())),
            }
        }
    }

    /// The largest datagram this socket's send buffer accepts.
    fn send_limit(&self) -> usize {
        getsockopt(&self.fd, sockopt::SndBuf).map_or(MAX_FRAME_BYTES, |sndbuf| {
            sndbuf
                .saturating_sub(SEND_BUFFER_OVERHEAD)
                .min(MAX_FRAME_BYTES)
        })
    }

    /// Receives and decodes one datagram; `Ok(None)` only when `timeout` ran out.
    ///
    /// Without a timeout this is one blocking `recvmsg`; with one, a non-blocking
    /// `recvmsg` and `poll` until the deadline.
    fn receive<T: Incoming>(
        &self,
        timeout: Option<Duration>,
        policy: FdPolicy,
    ) -> Result<Option<(T, Option<OwnedFd>)>, IpcError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let blocking = deadline.is_none();
        let mut resets = 0;
        loop {
            match self.receive_once(blocking, policy, &mut resets)? {
                Attempt::Message(decoded) => return decoded.map(Some),
                Attempt::Again => continue,
                Attempt::Empty => {}
            }
            // Nothing queued (or a socket someone made non-blocking, or a receive tick
            // passed): wait for a datagram.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            self.wait_for(PollFlags::POLLIN, deadline)?;
        }
    }

    /// One `recvmsg` (blocking or not), decoded. `resets` counts the `ECONNRESET`s seen by
    /// this receive.
    fn receive_once<T: Incoming>(
        &self,
        blocking: bool,
        policy: FdPolicy,
        resets: &mut u32,
    ) -> Result<Attempt<T>, IpcError> {
        // No descriptor can come: a plain recv(2), no control buffer.
        let plain = matches!(policy, FdPolicy::None) && self.no_descriptors.load(Ordering::Relaxed);
        let receive_into = |buffers: &mut ReceiveBuffers| {
            self.receive_datagram(buffers, blocking, plain)
                .map(|datagram| {
                    datagram
                        .map(|datagram| self.decode_datagram(buffers.received(), datagram, policy))
                })
        };
        // A receive from a thread-local destructor gets a buffer of its own.
        let received = RECEIVE_BUFFERS
            .try_with(|buffers| receive_into(&mut buffers.borrow_mut()))
            .unwrap_or_else(|_| receive_into(&mut ReceiveBuffers::default()));
        match received {
            Ok(Some(decoded)) => Ok(Attempt::Message(decoded)),
            Ok(None) => Ok(Attempt::Empty),
            // The peer closed while messages we sent it were unread. The error is reported
            // (and cleared) before the messages it sent us, which are still queued: go on
            // reading them; the end of the queue is `Closed`.
            Err(Errno::ECONNRESET) if *resets == 0 => {
                *resets += 1;
                Ok(Attempt::Again)
            }
            Err(Errno::ECONNRESET | Errno::ENOTCONN | Errno::EPIPE) => Err(IpcError::Closed),
            Err(errno) => Err(os_error("recvmsg on the IPC socket", errno).into()),
        }
    }

    /// One `recvmsg` (non-blocking unless `blocking`; a plain `recv` if `plain`): `Ok(None)`
    /// if nothing is queued.
    /// Descriptors that came with the datagram are owned (and so closed on every path)
    /// from here on.
    fn receive_datagram(
        &self,
        buffers: &mut ReceiveBuffers,
        blocking: bool,
        plain: bool,
    ) -> Result<Option<Datagram>, Errno> {
        buffers.data()?;
        let mut flags = MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC;
        if !blocking {
            flags |= MsgFlags::MSG_DONTWAIT;
        }
        if plain {
            loop {
                match recv(self.fd.as_raw_fd(), buffers.data()?, flags) {
                    Ok(len) => {
                        return Ok(Some(Datagram {
                            len,
                            fds: Vec::new(),
                            control_problem: None,
                        }));
                    }
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => return Ok(None),
                    Err(errno) => return Err(errno),
                }
            }
        }
        loop {
            let ReceiveBuffers {
                data: Some(data),
                control,
            } = buffers
            else {
                return Err(Errno::ENOMEM);
            };
            let mut iov = [IoSliceMut::new(data)];
            let received = match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(control), flags)
            {
                Ok(received) => received,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(errno) => return Err(errno),
            };
            let mut fds = Vec::new();
            let mut control_problem = None;
            match received.cmsgs() {
                Ok(cmsgs) => {
                    for cmsg in cmsgs {
                        match cmsg {
                            ControlMessageOwned::ScmRights(raw) => {
                                fds.extend(
                                    raw.into_iter()
                                        .map(crate::sandbox::process::adopt_received_fd),
                                );
                            }
                            // Only SCM_RIGHTS reaches a socket without SO_PASSCRED & co.
                            other => {
                                control_problem = Some(format!(
                                    "unexpected control message {other:?}, expected at most \
                                     SCM_RIGHTS"
                                ));
                            }
                        }
                    }
                }
                // MSG_CTRUNC: ruled out by the SCM_MAX_FD-sized buffer, but if it happens
                // the descriptors that did arrive cannot be found to be closed.
                Err(_) => {
                    control_problem = Some(format!(
                        "control data truncated: more than the {SCM_MAX_FD} descriptors a \
                         datagram may carry"
                    ));
                }
            }
            return Ok(Some(Datagram {
                len: received.bytes,
                fds,
                control_problem,
            }));
        }
    }

    fn decode_datagram<T: Incoming>(
        &self,
        data: &[u8],
        datagram: Datagram,
        policy: FdPolicy,
    ) -> Result<(T, Option<OwnedFd>), IpcError> {
        let Datagram {
            len,
            mut fds,
            control_problem,
        } = datagram;
        if let Some(reason) = control_problem {
            return Err(protocol(reason));
        }
        if len == 0 && fds.is_empty() {
            return Err(if self.peer_has_shut_down() {
                IpcError::Closed
            } else {
                protocol(format!(
                    "empty datagram, expected a frame of at least {HEADER_BYTES} bytes"
                ))
            });
        }
        match (policy, fds.len()) {
            (_, 0) | (FdPolicy::AtMostOne, 1) => {}
            (FdPolicy::None, n) => {
                return Err(protocol(format!(
                    "datagram carried {n} file descriptor(s) where none was expected"
                )));
            }
            (FdPolicy::AtMostOne, n) => {
                return Err(protocol(format!(
                    "datagram carried {n} file descriptors, expected at most one"
                )));
            }
        }
        check_frame_size(len)?;
        let frame = data.get(..len).ok_or_else(|| {
            protocol(format!(
                "frame of {len} bytes does not fit the {}-byte receive buffer",
                data.len()
            ))
        })?;
        let msg = T::from_frame(frame)?;
        Ok((msg, fds.pop()))
    }

    /// Whether the peer closed its end or shut down writing (`POLLRDHUP`/`POLLHUP`), which
    /// tells end-of-stream apart from an empty datagram.
    fn peer_has_shut_down(&self) -> bool {
        let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
        let mut fds = [PollFd::new(self.fd.as_fd(), rdhup)];
        loop {
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(ready) => return ready > 0,
                Err(Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
    }

    /// Waits until the socket is ready for `events` or `deadline` passes.
    fn wait_for(&self, events: PollFlags, deadline: Option<Instant>) -> Result<(), IpcError> {
        let mut fds = [PollFd::new(self.fd.as_fd(), events)];
        let timeout = deadline.map_or(PollTimeout::NONE, |d| {
            let left = d.saturating_duration_since(Instant::now());
            // Round up, so a wait for 0.4 ms does not turn into a busy loop of 0 ms polls.
            let millis = left.as_nanos().div_ceil(1_000_000);
            i32::try_from(millis)
                .ok()
                .and_then(|ms| PollTimeout::try_from(ms).ok())
                .unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(errno) => Err(os_error("poll on the IPC socket", errno).into()),
        }
    }
}

/// What one receive attempt got.
enum Attempt<T> {
    /// A datagram, decoded (or why it is not a valid message).
    Message(Result<(T, Option<OwnedFd>), IpcError>),
    /// Nothing queued (non-blocking), or the receive tick passed.
    Empty,
    /// Try again at once.
    Again,
}

fn partial_send(sent: usize, len: usize) -> IpcError {
    IpcError::Io {
        error: io::Error::other(format!(
            "the IPC socket took {sent} of {len} bytes; a SOCK_SEQPACKET send is all or \
             nothing (is this a stream socket?)"
        )),
    }
}

/// Makes sure a maximal frame fits in `fd`'s send buffer, as far as this process may.
fn raise_send_buffer(fd: &OwnedFd) {
    let current = getsockopt(fd, sockopt::SndBuf).unwrap_or(0);
    if current >= SEND_BUFFER_REQUEST {
        return;
    }
    if setsockopt(fd, sockopt::SndBufForce, &SEND_BUFFER_REQUEST).is_err() {
        // Unprivileged: capped at net.core.wmem_max; `send` reports a frame that does not
        // fit as TooLarge with the real limit.
        let _ = setsockopt(fd, sockopt::SndBuf, &SEND_BUFFER_REQUEST);
    }
}

fn os_error(call: &str, errno: Errno) -> io::Error {
    io::Error::new(
        io::Error::from(errno).kind(),
        format!("{call}: {}", io::Error::from(errno)),
    )
}

/// A receive without a deadline only returns once a datagram arrived.
fn unreachable_timeout<T>() -> Result<T, IpcError> {
    Err(IpcError::Io {
        error: io::Error::other("a receive without a timeout returned without a message"),
    })
}
