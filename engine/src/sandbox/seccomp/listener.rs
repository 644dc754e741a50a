//! The engine's end of a worker's seccomp filter: reads each suspended call, lets the
//! engine decide while the caller still waits (`EPERM`, `EACCES`, or let it through), and
//! says what was attempted.
//!
//! Kernel behaviour this relies on (Linux 6.18, `kernel/seccomp.c`):
//! - a notified call suspends the calling *thread* until the listener answers; the
//!   listener polls readable (`POLLIN`) while a call waits to be read;
//! - the listener belongs to the *filter*, not to a thread: every thread and child process
//!   created after the filter was loaded shares it. `POLLHUP` comes once the last of them
//!   has exited; one thread exiting while another still runs changes nothing. An exited
//!   child that has not been reaped yet no longer counts (measured: `POLLHUP` before
//!   `waitpid`);
//! - a caller that is killed (or interrupted before the engine read its call) vanishes from
//!   the queue; reading then fails with `ENOENT`, and so do the validity check and the
//!   answer for a call read before the caller died;
//! - if the listener is closed, waiting and future notified calls fail with `ENOSYS`: the
//!   filter fails closed, but unreported.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::{Deserialize, Serialize};

use super::files::{self, FileOperand};
use super::{SeccompError, detail, syscall_name, watch};

/// One forbidden call, as the engine records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Notification {
    /// The calling thread's id as seen from the listener's pid namespace (0 if the caller is
    /// not visible there). It names a thread, not necessarily its process.
    pub pid: u32,
    /// The system call's name, e.g. `socket`.
    pub syscall: String,
    /// The raw argument registers. Pointers point into the caller's memory, which is not
    /// read: it could change between the read and the decision.
    pub args: [u64; 6],
    /// The arguments that explain the call, decoded from registers (`domain AF_INET, type
    /// SOCK_STREAM` for `socket`, the flags for `clone`); empty when none do.
    pub detail: String,
    /// For a file-system call, its paths, read from the caller's memory while it waited
    /// (see the `files` module for what that is worth); empty for other calls.
    pub files: Vec<FileOperand>,
}

/// How the engine answers a suspended call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The call fails with this errno and does nothing.
    Deny(i32),
    /// The kernel runs the call as if the filter had allowed it
    /// (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). Never a security decision on its own: the
    /// caller's memory may change after the engine read it. Used where another mechanism
    /// still decides (Landlock, for file calls) and in audit mode, which records instead of
    /// confining by the host's explicit choice.
    Continue,
    /// The engine adds the `inotify_add_watch` the caller asked for itself — on `judged`
    /// (the path it read and judged, links resolved) when `named` (the path as the caller
    /// gave it) reaches the same file for the caller — with the caller's identity, and
    /// answers with the watch descriptor or the error: for a watch the engine is the only
    /// check (see `watch`).
    AddWatch {
        named: std::path::PathBuf,
        judged: std::path::PathBuf,
    },
}

/// A seccomp user-notification listener: the engine reads each call on it and answers it.
#[derive(Debug)]
pub struct NotifyListener {
    fd: OwnedFd,
}

/// What `poll` said about the listener.
enum Readiness {
    CallWaiting,
    TimedOut,
    Closed,
}

impl NotifyListener {
    /// Wraps a listener descriptor, typically received from a worker over its socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Waits up to `timeout` for one notification and answers it with `EPERM`; returns what
    /// was attempted. See [`next_with`](Self::next_with).
    pub fn next(&self, timeout: Duration) -> Result<Option<Notification>, SeccompError> {
        self.next_with(timeout, |_| Verdict::Deny(libc::EPERM))
            .map(|answered| answered.map(|(notification, _)| notification))
    }

    /// Waits up to `timeout` for one notification, calls `decide` with it *while the caller
    /// is still suspended* (so whatever `decide` records — the hooks in flight, say — is
    /// what held when the call was made), and answers as it says (after checking the
    /// notification id is still valid). `Ok(None)` on timeout.
    /// [`SeccompError::ListenerClosed`] when every thread and process under the filter is
    /// gone (the descriptor reports `POLLHUP`).
    ///
    /// A call whose caller died after it was read is still returned (and decided on): the
    /// attempt happened, only the answer had nobody left to receive it.
    pub fn next_with(
        &self,
        timeout: Duration,
        mut decide: impl FnMut(&Notification) -> Verdict,
    ) -> Result<Option<(Notification, Verdict)>, SeccompError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let remaining = deadline.map_or(timeout, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            });
            match self.wait(remaining)? {
                Readiness::TimedOut => return Ok(None),
                Readiness::Closed => return Err(SeccompError::ListenerClosed),
                Readiness::CallWaiting => {}
            }
            // The caller may have been killed between poll and read; then wait on.
            if let Some(request) = self.receive()? {
                return self.answer(&request, &mut decide).map(Some);
            }
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn wait(&self, timeout: Duration) -> Result<Readiness, SeccompError> {
        let started = Instant::now();
        loop {
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let left = timeout.saturating_sub(started.elapsed());
            match poll(&mut fds, poll_timeout(left)) {
                Ok(0) => return Ok(Readiness::TimedOut),
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(SeccompError::Poll { error: source }),
            }
            let events = fds[0].revents().unwrap_or(PollFlags::empty());
            // A waiting call first: it can still be answered while the filter goes away.
            if events.contains(PollFlags::POLLIN) {
                return Ok(Readiness::CallWaiting);
            }
            if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                return Ok(Readiness::Closed);
            }
            // Only POLLIN was asked for and POLLNVAL cannot happen on an owned descriptor;
            // should anything else wake us, wait out the rest.
        }
    }

    /// Reads one waiting call; `None` if its caller vanished after `poll`.
    fn receive(&self) -> Result<Option<libc::seccomp_notif>, SeccompError> {
        loop {
            // The kernel refuses a buffer that is not zeroed (it may grow new fields).
            // SAFETY: `seccomp_notif` is plain integers, for which all-zero is valid.
            let mut request: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: SECCOMP_IOCTL_NOTIF_RECV writes one `struct seccomp_notif` through the
            // pointer, which points to a live, writable value of exactly that type.
            let result = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &raw mut request,
                )
            };
            if result == 0 {
                return Ok(Some(request));
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ENOENT) => return Ok(None),
                _ => return Err(SeccompError::Receive { error }),
            }
        }
    }

    fn answer(
        &self,
        request: &libc::seccomp_notif,
        decide: &mut impl FnMut(&Notification) -> Verdict,
    ) -> Result<(Notification, Verdict), SeccompError> {
        // The filter kills every call from another architecture before any rule runs, so
        // `nr` is always a native system call number.
        let syscall = syscall_name(request.data.nr);
        let mut notification = Notification {
            pid: request.pid,
            detail: detail::describe(&syscall, &request.data.args),
            args: request.data.args,
            files: files::operands(request.pid, &syscall, &request.data.args),
            syscall,
        };
        // The pid is only meaningful while the id is valid: once the caller is gone, the
        // pid may already name another thread, and what was read may be its memory.
        let waiting = self.still_waiting(request.id)?;
        if !waiting {
            for operand in &mut notification.files {
                operand.path = None;
            }
        }
        let verdict = decide(&notification);
        if !waiting {
            return Ok((notification, verdict));
        }
        let answered = |result: Result<i64, i32>| libc::seccomp_notif_resp {
            id: request.id,
            val: result.unwrap_or(0),
            error: result.err().map_or(0, |errno| -errno),
            flags: 0,
        };
        let response = match &verdict {
            Verdict::Deny(errno) => answered(Err(*errno)),
            Verdict::Continue => libc::seccomp_notif_resp {
                id: request.id,
                val: 0,
                error: 0,
                flags: CONTINUE_FLAG,
            },
            Verdict::AddWatch { named, judged } => answered(
                watch::add_for_caller(request.pid, &request.data.args, named, judged, || {
                    self.still_waiting(request.id).unwrap_or(false)
                })
                .map(i64::from)
                .map_err(|errno| errno as i32),
            ),
        };
        loop {
            // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one `struct seccomp_notif_resp` through
            // the pointer, which points to a live, initialised value of exactly that type.
            let result = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &raw const response,
                )
            };
            if result == 0 {
                return Ok((notification, verdict));
            }
            let source = io::Error::last_os_error();
            match source.raw_os_error() {
                Some(libc::EINTR) => {}
                // Killed since the check: the attempt stands, the answer has no recipient.
                Some(libc::ENOENT) => return Ok((notification, verdict)),
                _ => {
                    return Err(SeccompError::Respond {
                        id: request.id,
                        syscall: notification.syscall,
                        error: source,
                    });
                }
            }
        }
    }

    /// Whether the caller of notification `id` still waits for its answer.
    fn still_waiting(&self, id: u64) -> Result<bool, SeccompError> {
        loop {
            // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64 through the pointer, which
            // points to a live local.
            let result = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                    &raw const id,
                )
            };
            if result == 0 {
                return Ok(true);
            }
            let source = io::Error::last_os_error();
            match source.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ENOENT) => return Ok(false),
                _ => return Err(SeccompError::Receive { error: source }),
            }
        }
    }
}

impl AsFd for NotifyListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` in the width of `seccomp_notif_resp.flags` (1).
#[allow(clippy::cast_possible_truncation)]
const CONTINUE_FLAG: u32 = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;

/// `timeout` for `poll(2)`, rounded up to whole milliseconds so that a short remainder
/// waits rather than spinning, and capped at what `poll` can express.
fn poll_timeout(timeout: Duration) -> PollTimeout {
    let millis = timeout.as_micros().div_ceil(1000);
    i32::try_from(millis).map_or(PollTimeout::MAX, |millis| {
        PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
    })
}
