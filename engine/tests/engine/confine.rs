//! Seccomp and Landlock confinement against the real kernel.
//!
//! Both apply per thread, and so does `no_new_privs`: each test confines a freshly spawned
//! thread, which then probes from inside, while the test's own thread plays the engine —
//! it holds the [`NotifyListener`] and answers. Forbidden calls that could do harm if the
//! filter were broken are made so that they fail harmlessly without it (a path that does
//! not exist, a null argument), and a raw `fork` that returned in a child would exit at
//! once.
//!
//! Under `CI` a missing kernel mechanism fails the test; elsewhere the test says why it
//! skips.
// Raw system calls (fork, clone3, x32 numbers, a second seccomp listener) have no safe
// wrapper; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::kill;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket, socketpair,
};
use nix::unistd::{Pid, gettid};
use plugboard_engine::sandbox::landlock::{self, FsPolicy, LandlockError, PathAccess};
use plugboard_engine::sandbox::seccomp::{
    self, FileWatch, Notification, NotifyListener, SeccompError, SyscallPolicy,
};

/// How long the engine side waits for anything the confined thread does.
const WITHIN: Duration = Duration::from_secs(10);

const NOTHING_GRANTED: SyscallPolicy = SyscallPolicy {
    network: false,
    spawn: false,
    files: FileWatch::Writes,
};

// ----- helpers -----

/// Whether seccomp user notification works here; fails the test under `CI` if not.
fn seccomp_available(test: &str) -> bool {
    match seccomp::check_support() {
        Ok(()) => true,
        Err(error) => skip_or_fail(test, &error.to_string()),
    }
}

/// Whether Landlock ABI `REQUIRED_ABI` works here; fails the test under `CI` if not.
fn landlock_available(test: &str) -> bool {
    match landlock::check_support() {
        Ok(_) => true,
        Err(error) => skip_or_fail(test, &error.to_string()),
    }
}

fn skip_or_fail(test: &str, why: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: this kernel mechanism is required when CI is set: {why}"
    );
    eprintln!("skipping {test}: {why}");
    false
}

/// A thread under the seccomp filter, and the engine's end of its listener.
struct Confined<T> {
    listener: NotifyListener,
    thread: JoinHandle<T>,
}

/// Spawns a thread that installs the filter for `policy`, hands over the listener, then
/// runs `probe`.
fn confine<T, F>(policy: SyscallPolicy, probe: F) -> Confined<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (listener_tx, listener_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let listener = seccomp::install(&policy).expect("installing the seccomp filter");
        listener_tx
            .send(listener)
            .expect("the test waits for the listener");
        probe()
    });
    match listener_rx.recv() {
        Ok(fd) => Confined {
            listener: NotifyListener::new(fd),
            thread,
        },
        // The thread dropped its sender without sending: it panicked; show why.
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => unreachable!("the thread returned without sending its listener"),
        },
    }
}

impl<T> Confined<T> {
    /// Answers every call until the last thread under the filter is gone; returns the
    /// probe's result and what the engine saw.
    fn finish(self) -> (T, Vec<Notification>) {
        let deadline = Instant::now() + WITHIN;
        let mut seen = Vec::new();
        loop {
            match self
                .listener
                .next(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Some(notification)) => seen.push(notification),
                Ok(None) => panic!(
                    "the confined thread neither called nor finished within {WITHIN:?}; seen: {seen:#?}"
                ),
                Err(SeccompError::ListenerClosed) => break,
                Err(error) => panic!("the listener failed: {error}; seen: {seen:#?}"),
            }
        }
        match self.thread.join() {
            Ok(result) => (result, seen),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The one notification for `syscall`, failing with everything seen otherwise.
fn reported<'a>(seen: &'a [Notification], syscall: &str) -> &'a Notification {
    let matching: Vec<&Notification> = seen.iter().filter(|n| n.syscall == syscall).collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one `{syscall}` notification; seen: {seen:#?}"
    );
    matching[0]
}

fn tcp_socket(family: AddressFamily) -> Result<OwnedFd, Errno> {
    socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
}

/// `syscall(2)`'s result as `Ok(value)` or `Err(errno)`.
fn raw_result(result: libc::c_long) -> Result<libc::c_long, Errno> {
    if result < 0 {
        Err(Errno::last())
    } else {
        Ok(result)
    }
}

/// `/proc/thread-self/status` field `name` of the calling thread.
fn thread_status(name: &str) -> String {
    let status = fs::read_to_string("/proc/thread-self/status").expect("procfs is mounted");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/thread-self/status:\n{status}"))
        .trim()
        .to_owned()
}

// ----- seccomp: what is reported, what still works -----

#[test]
fn ipv4_socket_fails_with_eperm_and_the_engine_sees_it_by_name() {
    if !seccomp_available("ipv4_socket_fails_with_eperm_and_the_engine_sees_it_by_name") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        (gettid(), tcp_socket(AddressFamily::Inet).map(drop))
    });
    let ((tid, result), seen) = confined.finish();
    assert_eq!(result, Err(Errno::EPERM));
    let socket = reported(&seen, "socket");
    assert_eq!(
        socket.detail,
        "domain AF_INET, type SOCK_STREAM|SOCK_CLOEXEC"
    );
    assert_eq!(socket.args[0], u64::try_from(libc::AF_INET).unwrap());
    assert_eq!(
        i64::from(socket.pid),
        i64::from(tid.as_raw()),
        "the calling thread"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

#[test]
fn ipv6_socket_is_caught_by_its_own_rule() {
    if !seccomp_available("ipv6_socket_is_caught_by_its_own_rule") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        tcp_socket(AddressFamily::Inet6).map(drop)
    });
    let (result, seen) = confined.finish();
    assert_eq!(result, Err(Errno::EPERM));
    assert!(
        reported(&seen, "socket")
            .detail
            .starts_with("domain AF_INET6,"),
        "{seen:#?}"
    );
}

#[test]
fn upper_bits_in_the_family_do_not_smuggle_a_socket_past_the_filter() {
    if !seccomp_available("upper_bits_in_the_family_do_not_smuggle_a_socket_past_the_filter") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        let family = (1u64 << 32) | u64::try_from(libc::AF_INET).unwrap();
        // SAFETY: socket(2) takes no pointers; a descriptor it might return is closed at once.
        let result =
            raw_result(unsafe { libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0) });
        if let Ok(fd) = result {
            // SAFETY: a non-negative socket(2) result is a new descriptor nobody else owns.
            drop(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) });
        }
        result
    });
    let (result, seen) = confined.finish();
    assert_eq!(
        result,
        Err(Errno::EPERM),
        "the kernel reads the family as an int"
    );
    assert!(
        reported(&seen, "socket")
            .detail
            .starts_with("domain AF_INET,"),
        "{seen:#?}"
    );
}

#[test]
fn unix_socket_pairs_still_work_without_network() {
    if !seccomp_available("unix_socket_pairs_still_work_without_network") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        let (left, right) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        nix::unistd::write(&left, b"ping")?;
        let mut buffer = [0u8; 8];
        let read = nix::unistd::read(&right, &mut buffer)?;
        Ok::<_, Errno>(buffer[..read].to_vec())
    });
    let (result, seen) = confined.finish();
    assert_eq!(result, Ok(b"ping".to_vec()));
    assert!(seen.is_empty(), "{seen:#?}");
}

/// AF_UNIX turns `SOCK_RAW` into a datagram socket, and a datagram socket of a pair still
/// sends to any address `sendto` names: without `network`, neither reaches a host socket.
#[test]
fn raw_and_paired_datagram_sockets_cannot_reach_a_host_socket_without_network() {
    if !seccomp_available(
        "raw_and_paired_datagram_sockets_cannot_reach_a_host_socket_without_network",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.sock");
    let host = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    host.set_nonblocking(true).unwrap();
    let address = UnixAddr::new(&path).unwrap();
    let confined = confine(NOTHING_GRANTED, move || {
        let send_to_host = |fd: &OwnedFd| {
            nix::sys::socket::sendto(
                fd.as_raw_fd(),
                b"escaped",
                &address,
                nix::sys::socket::MsgFlags::empty(),
            )
        };
        let raw = socket(
            AddressFamily::Unix,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd| send_to_host(&fd));
        let paired = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .and_then(|(left, _right)| send_to_host(&left));
        (raw, paired)
    });
    let ((raw, paired), seen) = confined.finish();
    assert_eq!(raw, Err(Errno::EPERM), "socket(AF_UNIX, SOCK_RAW)");
    assert_eq!(paired, Err(Errno::EPERM), "socketpair(AF_UNIX, SOCK_DGRAM)");
    let mut received = [0u8; 16];
    assert!(
        host.recv(&mut received).is_err(),
        "a datagram reached the host socket"
    );
    assert!(
        reported(&seen, "socket")
            .detail
            .starts_with("domain AF_UNIX, type SOCK_RAW"),
        "{seen:#?}"
    );
    assert!(
        reported(&seen, "socketpair")
            .detail
            .starts_with("domain AF_UNIX, type SOCK_DGRAM"),
        "{seen:#?}"
    );
}

/// `listmount`'s number, the same on every architecture (libc does not name it yet).
const LISTMOUNT: libc::c_long = 458;

/// `listmount` with a null request: EFAULT from the kernel before it reads anything.
fn listmount_of_nothing() -> Result<libc::c_long, Errno> {
    // SAFETY: a null request makes listmount fail with EFAULT before it reads anything;
    // under the filter it never reaches the kernel.
    raw_result(unsafe {
        libc::syscall(
            LISTMOUNT,
            std::ptr::null::<libc::c_void>(),
            0usize,
            0usize,
            0usize,
        )
    })
}

/// `listmount` and `statmount` show the host's mount table, which Landlock keeps
/// `/proc/self/mountinfo` from showing; libseccomp 2.5 does not know them by name.
#[test]
fn mount_listing_calls_newer_than_libseccomp_are_reported_by_name() {
    if !seccomp_available("mount_listing_calls_newer_than_libseccomp_are_reported_by_name") {
        return;
    }
    let unconfined = listmount_of_nothing();
    if unconfined == Err(Errno::ENOSYS) {
        eprintln!("listmount: this kernel (before 6.8) has no such call; nothing to confine");
        return;
    }
    assert_eq!(unconfined, Err(Errno::EFAULT), "listmount on this kernel");
    let confined = confine(NOTHING_GRANTED, listmount_of_nothing);
    let (result, seen) = confined.finish();
    assert_eq!(result, Err(Errno::EPERM));
    reported(&seen, "listmount");
}

#[test]
fn connect_is_reported_without_network() {
    if !seccomp_available("connect_is_reported_without_network") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        let unix = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let nowhere = UnixAddr::new("/nonexistent/plugboard-confine.sock")?;
        Ok::<_, Errno>((unix.as_raw_fd(), connect(unix.as_raw_fd(), &nowhere)))
    });
    let (result, seen) = confined.finish();
    let (fd, connected) = result.expect("an AF_UNIX socket is allowed");
    assert_eq!(
        connected,
        Err(Errno::EPERM),
        "ENOENT would mean connect ran"
    );
    assert_eq!(reported(&seen, "connect").detail, format!("fd {fd}"));
}

#[test]
fn network_capability_allows_an_ipv4_socket() {
    if !seccomp_available("network_capability_allows_an_ipv4_socket") {
        return;
    }
    let network = SyscallPolicy {
        network: true,
        spawn: false,
        files: FileWatch::Writes,
    };
    let confined = confine(network, || tcp_socket(AddressFamily::Inet).map(drop));
    let (result, seen) = confined.finish();
    assert_eq!(result, Ok(()));
    assert!(seen.is_empty(), "{seen:#?}");
}

#[test]
fn clone3_fails_with_enosys_and_threads_still_start() {
    if !seccomp_available("clone3_fails_with_enosys_and_threads_still_start") {
        return;
    }
    // SAFETY: clone3 with a null argument block and size 0 fails before creating anything.
    let unconfined = raw_result(unsafe {
        libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0usize)
    });
    assert_eq!(unconfined, Err(Errno::EINVAL), "without the filter");

    let confined = confine(NOTHING_GRANTED, || {
        // SAFETY: as above; under the filter it never reaches the kernel's checks.
        let clone3 = raw_result(unsafe {
            libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0usize)
        });
        // glibc tries clone3, gets ENOSYS, and falls back to clone with CLONE_THREAD.
        let thread = thread::spawn(|| 6 * 7).join();
        (clone3, thread.ok())
    });
    let ((clone3, thread), seen) = confined.finish();
    assert_eq!(clone3, Err(Errno::ENOSYS));
    assert_eq!(thread, Some(42));
    assert!(
        seen.is_empty(),
        "clone3 is refused, not reported: {seen:#?}"
    );
}

#[test]
fn threads_of_a_confined_thread_are_under_the_same_filter() {
    if !seccomp_available("threads_of_a_confined_thread_are_under_the_same_filter") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        thread::spawn(|| (gettid(), tcp_socket(AddressFamily::Inet).map(drop)))
            .join()
            .expect("the inner thread does not panic")
    });
    let ((inner_tid, result), seen) = confined.finish();
    assert_eq!(result, Err(Errno::EPERM));
    assert_eq!(
        i64::from(reported(&seen, "socket").pid),
        i64::from(inner_tid.as_raw())
    );
}

#[test]
fn fork_clone_and_execve_are_reported_without_spawn() {
    if !seccomp_available("fork_clone_and_execve_are_reported_without_spawn") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        // What glibc's fork() does: clone with only the exit signal, no CLONE_THREAD.
        // SAFETY: with the engine answering EPERM nothing is created; were a child created
        // anyway, it would leave at once through _exit without touching shared state.
        let clone =
            raw_result(unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) });
        if clone == Ok(0) {
            // SAFETY: _exit ends only the accidental child, running no destructors.
            unsafe { libc::_exit(0) };
        }
        #[cfg(target_arch = "x86_64")]
        let fork = {
            // SAFETY: as above.
            let fork = raw_result(unsafe { libc::syscall(libc::SYS_fork) });
            if fork == Ok(0) {
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            Some(fork)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let fork = None;
        let program = CString::new("/nonexistent/plugboard-confine").unwrap();
        let execve = nix::unistd::execve(&program, &[&program], &[] as &[&CString]).err();
        (clone, fork, execve)
    });
    let ((clone, fork, execve), seen) = confined.finish();
    assert_eq!(clone, Err(Errno::EPERM));
    assert_eq!(reported(&seen, "clone").detail, "flags SIGCHLD");
    if let Some(fork) = fork {
        assert_eq!(fork, Err(Errno::EPERM));
        reported(&seen, "fork");
    }
    assert_eq!(execve, Some(Errno::EPERM), "ENOENT would mean execve ran");
    reported(&seen, "execve");
}

#[test]
fn mount_unshare_and_tiocsti_are_reported_whatever_the_capabilities() {
    if !seccomp_available("mount_unshare_and_tiocsti_are_reported_whatever_the_capabilities") {
        return;
    }
    let everything = SyscallPolicy {
        network: true,
        spawn: true,
        files: FileWatch::Writes,
    };
    let confined = confine(everything, || {
        let mount = nix::mount::mount(
            Some("none"),
            "/nonexistent/plugboard-confine",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        let unshare = nix::sched::unshare(CloneFlags::CLONE_NEWUTS);
        let null = fs::File::open("/dev/null").expect("/dev/null opens");
        let byte = b'x';
        // SAFETY: TIOCSTI reads one byte through the pointer, which points to a live local;
        // /dev/null is no terminal, so without the filter the call fails with ENOTTY.
        let tiocsti = raw_result(libc::c_long::from(unsafe {
            libc::ioctl(null.as_raw_fd(), libc::TIOCSTI, &raw const byte)
        }));
        let dumpable = nix::sys::prctl::set_dumpable(true);
        (mount, unshare, tiocsti, dumpable)
    });
    let ((mount, unshare, tiocsti, dumpable), seen) = confined.finish();
    assert_eq!(mount, Err(Errno::EPERM));
    assert_eq!(unshare, Err(Errno::EPERM));
    assert_eq!(tiocsti, Err(Errno::EPERM));
    assert_eq!(dumpable, Err(Errno::EPERM));
    reported(&seen, "mount");
    assert_eq!(reported(&seen, "unshare").detail, "flags CLONE_NEWUTS");
    assert!(
        reported(&seen, "ioctl").detail.ends_with("request TIOCSTI"),
        "{seen:#?}"
    );
    reported(&seen, "prctl");
    assert_eq!(seen.len(), 4, "{seen:#?}");
}

#[test]
fn confined_thread_has_no_new_privs_and_filter_mode_the_rest_does_not() {
    if !seccomp_available("confined_thread_has_no_new_privs_and_filter_mode_the_rest_does_not") {
        return;
    }
    let confined = confine(NOTHING_GRANTED, || {
        (thread_status("NoNewPrivs"), thread_status("Seccomp"))
    });
    let ((no_new_privs, mode), _) = confined.finish();
    assert_eq!(no_new_privs, "1");
    assert_eq!(mode, "2", "SECCOMP_MODE_FILTER");
    assert_eq!(
        thread_status("Seccomp"),
        "0",
        "the test's own thread is not confined"
    );
}

// ----- seccomp: the report cannot be suppressed or taken over -----

#[test]
fn the_call_waits_until_the_engine_has_answered() {
    if !seccomp_available("the_call_waits_until_the_engine_has_answered") {
        return;
    }
    let (result_tx, result_rx) = mpsc::channel();
    let confined = confine(NOTHING_GRANTED, move || {
        let result = tcp_socket(AddressFamily::Inet).map(drop);
        result_tx
            .send(result)
            .expect("the test waits for the result");
    });

    // The listener turns readable once the call is queued, i.e. the thread is suspended
    // in the kernel.
    let mut fds = [PollFd::new(confined.listener.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(i32::try_from(WITHIN.as_millis()).unwrap()).unwrap();
    let ready = poll(&mut fds, timeout).expect("polling the listener");
    assert_eq!(ready, 1, "no call queued within {WITHIN:?}");
    assert_eq!(
        result_rx.try_recv(),
        Err(TryRecvError::Empty),
        "the call returned before the engine answered"
    );

    let notification = confined
        .listener
        .next(WITHIN)
        .expect("reading the call")
        .expect("a call is queued");
    assert_eq!(notification.syscall, "socket");
    assert_eq!(
        result_rx.recv_timeout(WITHIN),
        Ok(Err(Errno::EPERM)),
        "the engine's answer is what the call returns"
    );
    let ((), rest) = confined.finish();
    assert!(rest.is_empty(), "{rest:#?}");
}

/// Installs an allow-everything filter with a listener of its own, as a plugin trying to
/// take over its notifications would.
fn install_own_listener() -> Result<OwnedFd, Errno> {
    let allow = libc::sock_filter {
        code: u16::try_from(libc::BPF_RET | libc::BPF_K).unwrap(),
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    };
    let program = libc::sock_fprog {
        len: 1,
        filter: (&raw const allow).cast_mut(),
    };
    nix::sys::prctl::set_no_new_privs()?;
    // SAFETY: the program points to one initialised instruction that outlives the call; the
    // kernel only reads it.
    let fd = raw_result(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &raw const program,
        )
    })?;
    // SAFETY: a non-negative result with NEW_LISTENER is a descriptor the kernel just
    // opened for this process.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) })
}

/// Plugin code can install no filter of its own: a listener would answer its own calls, and
/// any filter answering an errno would outrank the engine's notifications and hide its
/// forbidden calls. `seccomp(2)` is refused and reported.
#[test]
fn plugin_code_cannot_install_a_filter_of_its_own() {
    if !seccomp_available("plugin_code_cannot_install_a_filter_of_its_own") {
        return;
    }
    let unconfined = thread::spawn(install_own_listener).join().unwrap();
    assert!(unconfined.is_ok(), "control: {unconfined:?}");

    let confined = confine(NOTHING_GRANTED, || {
        // Its queries stay allowed (libseccomp asks what the kernel supports).
        let action: u32 = libc::SECCOMP_RET_LOG;
        // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which outlives
        // the call.
        let query = raw_result(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &raw const action,
            )
        });
        (query, install_own_listener().map(drop))
    });
    let ((query, result), seen) = confined.finish();
    assert_eq!(query, Ok(0), "a query of the kernel's support");
    assert_eq!(result, Err(Errno::EPERM));
    reported(&seen, "seccomp");
}

// ----- seccomp: the listener's lifetime -----

#[test]
fn listener_times_out_while_any_thread_holds_the_filter_then_reports_closed() {
    if !seccomp_available(
        "listener_times_out_while_any_thread_holds_the_filter_then_reports_closed",
    ) {
        return;
    }
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let confined = confine(NOTHING_GRANTED, move || {
        // A second thread under the same filter that outlives the one that installed it.
        thread::spawn(move || {
            let _ = release_rx.recv();
        })
    });
    let Confined { listener, thread } = confined;
    let helper = thread.join().expect("the confined thread does not panic");

    let started = Instant::now();
    assert_eq!(
        listener.next(Duration::from_millis(200)).unwrap(),
        None,
        "the filter is per filter, not per thread: its helper still holds it"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    release_tx.send(()).unwrap();
    helper.join().unwrap();
    match listener.next(WITHIN) {
        Err(SeccompError::ListenerClosed) => {}
        other => panic!("expected the listener to report closed (POLLHUP), got {other:?}"),
    }
}

/// Measured on 6.18: an exited child that nobody has reaped yet no longer holds the filter.
#[test]
fn a_child_process_releases_the_filter_when_it_exits_not_when_it_is_reaped() {
    if !seccomp_available("a_child_process_releases_the_filter_when_it_exits_not_when_it_is_reaped")
    {
        return;
    }
    let spawner = SyscallPolicy {
        network: false,
        spawn: true,
        files: FileWatch::Writes,
    };
    let confined = confine(spawner, || {
        // SAFETY: the child only calls _exit, which is async-signal-safe and touches no
        // state shared with the parent.
        let child =
            raw_result(unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) });
        if child == Ok(0) {
            // SAFETY: ends the child at once, running no destructors.
            unsafe { libc::_exit(0) };
        }
        child
    });
    let Confined { listener, thread } = confined;
    let child = thread
        .join()
        .expect("the confined thread does not panic")
        .expect("spawn grants clone");
    let child = Pid::from_raw(i32::try_from(child).unwrap());

    match listener.next(WITHIN) {
        Err(SeccompError::ListenerClosed) => {}
        other => panic!("expected POLLHUP once thread and child had exited, got {other:?}"),
    }
    // Only now is the child reaped: it was a zombie when the listener reported closed.
    let status = nix::sys::wait::waitpid(child, None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
}

// ----- seccomp: architecture -----

/// Set in the child process that `x32_system_call_kills_the_whole_process` starts.
const X32_PROBE: &str = "PLUGBOARD_CONFINE_X32_PROBE";
const X32_PROBE_REACHED: &str = "x32 probe: filter installed, calling";

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_system_call_kills_the_whole_process() {
    if !seccomp_available("x32_system_call_kills_the_whole_process") {
        return;
    }
    let test_binary = std::env::current_exe().unwrap();
    let child = Command::new(test_binary)
        .args([
            "--exact",
            "confine::x32_probe_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(X32_PROBE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(child.wait_with_output()));
    let Ok(output) = done_rx.recv_timeout(WITHIN) else {
        let _ = kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("the x32 probe process did not end within {WITHIN:?}");
    };
    let output = output.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains(X32_PROBE_REACHED),
        "the probe did not get to its call:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSYS),
        "expected KILL_PROCESS (SIGSYS), got {:?}:\n{stdout}\n{stderr}",
        output.status
    );
}

/// Runs only in the child process of `x32_system_call_kills_the_whole_process`.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "run in a child process by x32_system_call_kills_the_whole_process"]
fn x32_probe_process() {
    if std::env::var_os(X32_PROBE).is_none() {
        return;
    }
    // No core file for the expected SIGSYS.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
    let _listener = seccomp::install(&NOTHING_GRANTED).unwrap();
    println!("{X32_PROBE_REACHED}");
    io::stdout().flush().unwrap();
    // SAFETY: getpid takes no arguments and has no effect; with the x32 bit set the filter
    // kills the process before the kernel looks at the number.
    let result = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
    println!(
        "x32 getpid returned {result} ({}): the process survived",
        Errno::last()
    );
}

// ----- Landlock -----

/// What a Landlock-confined thread could and could not do.
#[derive(Debug)]
struct FsProbe {
    read_granted: io::Result<String>,
    write_read_only: io::Result<()>,
    create_in_writable: io::Result<()>,
    create_elsewhere: io::Result<()>,
    read_passwd: io::Result<Vec<u8>>,
    dlopen_system_library: Result<(), String>,
}

fn errno_of<T>(result: &io::Result<T>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

#[test]
fn landlock_confines_the_thread_to_its_policy() {
    if !landlock_available("landlock_confines_the_thread_to_its_policy") {
        return;
    }
    let granted = tempfile::tempdir().unwrap();
    let read_only = granted.path().join("ro");
    let writable = granted.path().join("rw");
    let missing = granted.path().join("not-on-this-host");
    fs::create_dir(&read_only).unwrap();
    fs::create_dir(&writable).unwrap();
    fs::write(read_only.join("file"), "granted").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();

    let mut policy = FsPolicy::system_defaults();
    policy.read = vec![read_only.clone(), missing.clone()];
    policy.write = vec![writable.clone()];
    let elsewhere_path = elsewhere.path().to_owned();
    let (status, probe) = thread::spawn(move || {
        let status = landlock::restrict(&policy).expect("restricting the thread");
        let probe = FsProbe {
            read_granted: fs::read_to_string(read_only.join("file")),
            write_read_only: fs::OpenOptions::new()
                .write(true)
                .open(read_only.join("file"))
                .map(drop),
            create_in_writable: fs::write(writable.join("new"), "written"),
            create_elsewhere: fs::write(elsewhere_path.join("new"), "escaped"),
            read_passwd: fs::read("/etc/passwd"),
            // SAFETY: libthread_db's initialisers only set up its own state.
            dlopen_system_library: unsafe { libloading::Library::new("libthread_db.so.1") }
                .and_then(|library| {
                    // SAFETY: only the symbol's presence is checked; it is never called.
                    unsafe { library.get::<unsafe extern "C" fn() -> i32>(b"td_init\0") }.map(drop)
                })
                .map_err(|error| error.to_string()),
        };
        (status, probe)
    })
    .join()
    .unwrap();

    assert!(status.abi >= landlock::REQUIRED_ABI, "{status:?}");
    assert_eq!(status.handled_abi, landlock::REQUIRED_ABI);
    assert!(status.scoped);
    // System paths a host lacks (`/lib32`) are skipped too; of the plugin's, only this one.
    let skipped: Vec<&Path> = status
        .skipped
        .iter()
        .filter(|skipped| skipped.access != PathAccess::SystemRead)
        .map(|skipped| skipped.path.as_path())
        .collect();
    assert_eq!(skipped, [missing.as_path()], "{status:?}");
    assert_eq!(
        probe.read_granted.as_deref().ok(),
        Some("granted"),
        "{probe:?}"
    );
    assert_eq!(
        errno_of(&probe.write_read_only),
        Some(libc::EACCES),
        "{probe:?}"
    );
    assert!(probe.create_in_writable.is_ok(), "{probe:?}");
    assert_eq!(
        errno_of(&probe.create_elsewhere),
        Some(libc::EACCES),
        "{probe:?}"
    );
    assert_eq!(
        errno_of(&probe.read_passwd),
        Some(libc::EACCES),
        "/etc/passwd is not in the system defaults: {probe:?}"
    );
    assert_eq!(probe.dlopen_system_library, Ok(()), "{probe:?}");
    assert!(!elsewhere.path().join("new").exists());
    // The test's own thread is not confined.
    assert!(fs::read("/etc/passwd").is_ok());
}

/// The directory the C library was loaded from, where glibc's other libraries live.
fn libc_directory() -> PathBuf {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("libc.so"))
        })
        .and_then(|path| Path::new(path).parent().map(Path::to_owned))
        .unwrap_or_else(|| panic!("no libc.so in /proc/self/maps:\n{maps}"))
}

/// A sealed memfd holding `library`'s bytes, as the engine hands a verified plugin over.
fn sealed_copy(library: &Path) -> OwnedFd {
    let bytes = fs::read(library).unwrap();
    let memfd = memfd_create(
        c"plugboard-confine",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut file = fs::File::from(memfd);
    file.write_all(&bytes).unwrap();
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )
    .unwrap();
    OwnedFd::from(file)
}

#[test]
fn a_sealed_memfd_library_loads_after_full_confinement() {
    let test = "a_sealed_memfd_library_loads_after_full_confinement";
    if !landlock_available(test) || !seccomp_available(test) {
        return;
    }
    let library = libc_directory().join("libthread_db.so.1");
    let memfd = sealed_copy(&library);
    let (listener_tx, listener_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        // The worker's order: Landlock, then seccomp, then load. Nothing at all is granted
        // in the file system, not even the library's own directory.
        landlock::restrict(&FsPolicy::default()).expect("restricting the thread");
        listener_tx
            .send(seccomp::install(&NOTHING_GRANTED).expect("installing the filter"))
            .unwrap();
        let original = fs::read(&library).map(drop);
        let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
        // SAFETY: libthread_db's initialisers only set up its own state.
        let loaded = unsafe { libloading::Library::new(&path) }
            .and_then(|library| {
                // SAFETY: only the symbol's presence is checked; it is never called.
                unsafe { library.get::<unsafe extern "C" fn() -> i32>(b"td_init\0") }.map(drop)
            })
            .map_err(|error| error.to_string());
        let socket = tcp_socket(AddressFamily::Inet).map(drop);
        (original, loaded, socket)
    });
    let confined = Confined {
        listener: NotifyListener::new(listener_rx.recv().expect("the thread sends its listener")),
        thread,
    };
    let ((original, loaded, socket), seen) = confined.finish();
    assert_eq!(
        errno_of(&original),
        Some(libc::EACCES),
        "Landlock is in force: the library's own path is out of reach"
    );
    assert_eq!(loaded, Ok(()), "dlopen of the sealed memfd");
    assert_eq!(socket, Err(Errno::EPERM));
    reported(&seen, "socket");
}

#[test]
fn landlock_scopes_abstract_sockets_and_signals() {
    if !landlock_available("landlock_scopes_abstract_sockets_and_signals") {
        return;
    }
    let name = format!("plugboard-confine-{}", std::process::id());
    let address = UnixAddr::new_abstract(name.as_bytes()).unwrap();
    let server = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(server.as_raw_fd(), &address).unwrap();
    listen(&server, Backlog::new(4).unwrap()).unwrap();
    let mut outsider = Command::new("sleep").arg("60").spawn().unwrap();
    let outsider_pid = Pid::from_raw(i32::try_from(outsider.id()).unwrap());

    let connect_to_server = move || {
        let client = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(client.as_raw_fd(), &address)
    };
    let results = thread::spawn(move || {
        let before = (connect_to_server(), kill(outsider_pid, None));
        landlock::restrict(&FsPolicy::system_defaults()).expect("restricting the thread");
        let after = (connect_to_server(), kill(outsider_pid, None));
        (before, after)
    })
    .join();
    outsider.kill().unwrap();
    outsider.wait().unwrap();
    let (before, after) = results.unwrap();
    assert_eq!(before, (Ok(()), Ok(())), "control, before restricting");
    assert_eq!(after, (Err(Errno::EPERM), Err(Errno::EPERM)));
}

#[test]
fn a_policy_path_that_exists_but_cannot_be_opened_is_an_error() {
    if !landlock_available("a_policy_path_that_exists_but_cannot_be_opened_is_an_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let looping = dir.path().join("loop");
    std::os::unix::fs::symlink(&looping, &looping).unwrap();
    let mut policy = FsPolicy::system_defaults();
    policy.read = vec![looping.clone()];
    let (result, still_unconfined) = thread::spawn(move || {
        let result = landlock::restrict(&policy);
        (result, fs::read("/etc/passwd").is_ok())
    })
    .join()
    .unwrap();
    match result {
        Err(LandlockError::OpenPath {
            path,
            error: source,
        }) => {
            assert_eq!(path, looping);
            assert_eq!(source, Errno::ELOOP);
        }
        other => panic!("expected OpenPath for a symlink loop, got {other:?}"),
    }
    assert!(
        still_unconfined,
        "a failed restrict leaves the thread as it was"
    );
}
