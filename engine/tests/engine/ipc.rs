//! The engine⇄worker channel over real `SOCK_SEQPACKET` socketpairs: round trips of every
//! message, descriptor passing, concurrent senders, a hostile peer writing raw datagrams,
//! peer shutdown, and a fuzzed frame decoder.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{ControlMessage, MsgFlags, send, sendmsg, setsockopt, sockopt};
use nix::sys::uio::pread;
use nix::unistd::pipe2;
use plugboard_engine::ipc::{
    Channel, ConfinementPlan, EngineMessage, HEADER_BYTES, IpcError, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, StepReport, WorkerMessage, decode_frame, encode_frame,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

fn plan() -> ConfinementPlan {
    ConfinementPlan {
        plugin: "hello".to_owned(),
        library: "libhello.so".to_owned(),
        seccomp_program: Vec::new(),
        uid: 65_534,
        gid: 65_534,
        network: false,
        spawn: true,
        fs_read: vec![PathBuf::from("/usr"), PathBuf::from("/lib")],
        fs_write: vec![PathBuf::from("/tmp/plugboard/hello")],
        max_open_files: 256,
        address_space_bytes: 8 << 30,
        tmpfs_bytes: 16 << 20,
        env: vec![("LANG".to_owned(), "C.UTF-8".to_owned())],
        config_json: br#"{"greeting":"hi"}"#.to_vec(),
        require: vec!["seccomp".to_owned(), "landlock".to_owned()],
        serve_threads: 3,
        audit: false,
    }
}

fn engine_messages() -> Vec<EngineMessage> {
    vec![
        EngineMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            plan: plan(),
        },
        EngineMessage::Proceed,
        EngineMessage::Load,
        EngineMessage::Call {
            id: u64::MAX,
            hook: "on_tick".to_owned(),
            payload: (0..=255).collect(),
            depth: 0,
        },
        EngineMessage::Health { id: 7 },
        EngineMessage::EmitResult { id: 8, code: -3 },
        EngineMessage::Shutdown,
    ]
}

fn worker_messages() -> Vec<WorkerMessage> {
    vec![
        WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            pid: 4242,
        },
        WorkerMessage::Confined {
            steps: vec![
                StepReport {
                    mechanism: "seccomp".to_owned(),
                    ok: true,
                    detail: "filter with 41 rules".to_owned(),
                },
                StepReport {
                    mechanism: "landlock".to_owned(),
                    ok: false,
                    detail: "not supported: ABI 0 — ünïcödé".to_owned(),
                },
            ],
            sandbox_pid: 4243,
        },
        WorkerMessage::SeccompListener,
        WorkerMessage::Ready,
        WorkerMessage::LoadFailed {
            reason: "hello_create returned null".to_owned(),
        },
        WorkerMessage::Reply {
            id: 1,
            status: 0,
            body: b"ok".to_vec(),
        },
        WorkerMessage::Log {
            level: 2,
            message: "line\nwith newline".to_owned(),
        },
        WorkerMessage::Emit {
            id: 2,
            hook: "custom".to_owned(),
            payload: Vec::new(),
            depth: 0,
        },
    ]
}

/// A channel and the raw socket of its peer, for writing datagrams no `Channel` would.
fn hostile_pair() -> (Channel, OwnedFd) {
    let (engine, worker) = Channel::pair().expect("socketpair");
    (engine, worker.into_fd())
}

fn send_raw(fd: &OwnedFd, datagram: &[u8]) {
    let sent = send(fd.as_raw_fd(), datagram, MsgFlags::MSG_NOSIGNAL)
        .unwrap_or_else(|errno| panic!("raw send of {} bytes: {errno}", datagram.len()));
    assert_eq!(sent, datagram.len(), "raw send was partial");
}

fn frame_with_body(declared: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = b"PB".to_vec();
    frame.extend_from_slice(&declared.to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

/// Asserts `result` is a protocol violation whose reason contains `expected`.
fn expect_protocol<T: Debug>(result: Result<T, IpcError>, expected: &str) -> String {
    match result {
        Err(IpcError::Protocol { reason }) => {
            assert!(
                reason.contains(expected),
                "protocol error {reason:?} does not contain {expected:?}"
            );
            reason
        }
        other => panic!("expected a protocol error containing {expected:?}, got {other:?}"),
    }
}

/// After a bad datagram, the next valid frame still arrives.
fn assert_still_usable(engine: &Channel, worker: &OwnedFd) {
    let frame = encode_frame(&WorkerMessage::Ready).expect("encode");
    send_raw(worker, &frame);
    match engine.recv_timeout::<WorkerMessage>(WAIT) {
        Ok(Some(WorkerMessage::Ready)) => {}
        other => panic!("the channel is unusable after a bad datagram: {other:?}"),
    }
}

/// Whether every write end of the pipe whose read end is `read` has been closed.
fn all_writers_closed(read: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::try_from(WAIT).expect("timeout")).expect("poll");
    ready == 1
        && fds[0]
            .revents()
            .is_some_and(|revents| revents.contains(PollFlags::POLLHUP))
}

fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    let flags = fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD");
    FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC)
}

/// Makes `fd`'s send buffer big enough for `bytes`-byte datagrams, if this process may.
fn allow_datagrams_of(fd: &OwnedFd, bytes: usize) {
    let want = bytes + 4096;
    if setsockopt(fd, sockopt::SndBufForce, &want).is_err() {
        let _ = setsockopt(fd, sockopt::SndBuf, &want);
    }
}

// ---------------------------------------------------------------------------------------
// Frames

#[test]
fn frame_layout_is_magic_length_body() {
    // Proceed is variant 1: a one-byte postcard body.
    let frame = encode_frame(&EngineMessage::Proceed).expect("encode");
    assert_eq!(frame, [b'P', b'B', 1, 0, 0, 0, 1]);
    assert_eq!(
        decode_frame::<EngineMessage>(&frame).expect("decode"),
        EngineMessage::Proceed
    );
}

#[test]
fn every_message_round_trips_through_a_frame() {
    for msg in engine_messages() {
        let frame = encode_frame(&msg).expect("encode");
        assert_eq!(decode_frame::<EngineMessage>(&frame).expect("decode"), msg);
    }
    for msg in worker_messages() {
        let frame = encode_frame(&msg).expect("encode");
        assert_eq!(decode_frame::<WorkerMessage>(&frame).expect("decode"), msg);
    }
}

fn call_with_payload(len: usize) -> EngineMessage {
    EngineMessage::Call {
        id: 0,
        hook: String::new(),
        payload: vec![0xa5; len],
        depth: 0,
    }
}

#[test]
fn encoder_accepts_exactly_the_maximum_and_refuses_one_byte_more() {
    // Call{id: 0, hook: "", depth: 0}: variant, id, hook length, a 3-byte payload length
    // and the depth = 7.
    let overhead = HEADER_BYTES + 7;
    let largest = encode_frame(&call_with_payload(MAX_FRAME_BYTES - overhead)).expect("encode");
    assert_eq!(largest.len(), MAX_FRAME_BYTES);
    match encode_frame(&call_with_payload(MAX_FRAME_BYTES - overhead + 1)) {
        Err(IpcError::TooLarge { bytes, max }) => {
            assert_eq!((bytes, max), (MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn encoder_refuses_an_oversized_message_with_its_exact_size() {
    let msg = call_with_payload(2 << 20);
    let expected = HEADER_BYTES + postcard::to_allocvec(&msg).expect("postcard").len();
    let err = encode_frame(&msg).expect_err("a 2 MiB payload must not fit in a frame");
    match &err {
        IpcError::TooLarge { bytes, max } => {
            assert_eq!((*bytes, *max), (expected, MAX_FRAME_BYTES));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("message of {expected} bytes exceeds the 1048640-byte limit of one frame")
    );
    // The channel refuses it before anything reaches the socket.
    let (engine, worker) = Channel::pair().expect("socketpair");
    assert!(matches!(engine.send(&msg), Err(IpcError::TooLarge { .. })));
    assert_eq!(
        worker.recv_timeout::<EngineMessage>(Duration::ZERO).ok(),
        Some(None)
    );
}

#[test]
fn encoder_reports_unencodable_values() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut plan = plan();
    plan.fs_read
        .push(PathBuf::from(OsStr::from_bytes(b"/not-utf8-\xff")));
    let msg = EngineMessage::Welcome { protocol: 1, plan };
    match encode_frame(&msg) {
        Err(IpcError::Encode { reason }) => assert!(reason.contains("EngineMessage"), "{reason}"),
        other => panic!("expected Encode, got {other:?}"),
    }
}

#[test]
fn decoder_names_each_kind_of_bad_frame() {
    let valid = encode_frame(&WorkerMessage::Ready).expect("encode");
    let mut trailing = valid.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    trailing[2..6].copy_from_slice(&4u32.to_le_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            vec![0; MAX_FRAME_BYTES + 1],
            "frame of 1048641 bytes exceeds the 1048640-byte maximum",
        ),
        (
            b"PB\x01".to_vec(),
            "truncated frame: 3 bytes is shorter than the 6-byte header",
        ),
        (Vec::new(), "truncated frame: 0 bytes"),
        (
            b"XY\x01\0\0\0\x03".to_vec(),
            "bad magic 0x58 0x59, expected \"PB\"",
        ),
        (
            frame_with_body(100, &[3; 10]),
            "truncated frame: the header declares a 100-byte body but the datagram carries 10",
        ),
        (
            frame_with_body(u32::MAX, &[3]),
            "the header declares a 4294967295-byte body",
        ),
        (
            frame_with_body(1, &[3, 3]),
            "frame length mismatch: the header declares a 1-byte body but the datagram carries 2",
        ),
        (frame_with_body(1, &[200]), "undecodable body: "),
        (
            frame_with_body(0, &[]),
            "expected a postcard-encoded WorkerMessage",
        ),
        (trailing, "3 trailing bytes after a complete WorkerMessage"),
    ];
    for (frame, expected) in cases {
        expect_protocol(decode_frame::<WorkerMessage>(&frame), expected);
    }
}

// ---------------------------------------------------------------------------------------
// Round trips over a socketpair

#[test]
fn every_message_round_trips_over_a_socketpair() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    for msg in engine_messages() {
        engine.send(&msg).expect("send");
        assert_eq!(worker.recv::<EngineMessage>().expect("recv"), msg);
    }
    for msg in worker_messages() {
        worker.send(&msg).expect("send");
        assert_eq!(engine.recv::<WorkerMessage>().expect("recv"), msg);
    }
    // recv_with_fd without an attached descriptor.
    worker.send(&WorkerMessage::Ready).expect("send");
    let (msg, fd) = engine.recv_with_fd::<WorkerMessage>().expect("recv");
    assert_eq!((msg, fd.is_none()), (WorkerMessage::Ready, true));
}

#[test]
fn a_maximal_frame_crosses_the_socketpair() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let msg = call_with_payload(MAX_FRAME_BYTES - HEADER_BYTES - 7);
    match engine.send(&msg) {
        Ok(()) => assert_eq!(worker.recv::<EngineMessage>().expect("recv"), msg),
        // Only without CAP_NET_ADMIN on a host whose net.core.wmem_max is below 1 MiB.
        Err(IpcError::TooLarge { bytes, max }) if max < MAX_FRAME_BYTES => {
            eprintln!("send buffer limited to {max} bytes here; {bytes}-byte frame refused");
        }
        Err(err) => panic!("sending a maximal frame: {err}"),
    }
}

#[test]
fn recv_timeout_gives_up_and_then_receives() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let start = Instant::now();
    let nothing = engine
        .recv_timeout::<WorkerMessage>(Duration::from_millis(50))
        .expect("recv_timeout");
    let waited = start.elapsed();
    assert_eq!(nothing, None);
    assert!(
        waited >= Duration::from_millis(50) && waited < WAIT,
        "waited {waited:?} for a 50 ms timeout"
    );

    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Delays the send so that the receiver is already waiting in poll.
            std::thread::sleep(Duration::from_millis(20));
            worker.send(&WorkerMessage::Ready).expect("send");
        });
        assert_eq!(
            engine
                .recv_timeout::<WorkerMessage>(WAIT)
                .expect("recv_timeout"),
            Some(WorkerMessage::Ready)
        );
    });
}

// ---------------------------------------------------------------------------------------
// Descriptor passing

#[test]
fn a_pipe_write_end_travels_with_its_message() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let (read, write) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
    worker
        .send_with_fd(&WorkerMessage::SeccompListener, write.as_fd())
        .expect("send_with_fd");
    drop(write);

    let (msg, fd) = engine
        .recv_with_fd::<WorkerMessage>()
        .expect("recv_with_fd");
    assert_eq!(msg, WorkerMessage::SeccompListener);
    let fd = fd.expect("the descriptor sent with the message");
    assert!(
        is_cloexec(fd.as_fd()),
        "received descriptors must be close-on-exec"
    );
    File::from(fd)
        .write_all(b"through the passed descriptor")
        .expect("write through the received descriptor");

    let mut text = String::new();
    File::from(read).read_to_string(&mut text).expect("read");
    assert_eq!(text, "through the passed descriptor");
}

#[test]
fn a_memfd_travels_with_its_message() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let memfd = memfd_create("plugboard-ipc-test", MFdFlags::MFD_CLOEXEC).expect("memfd");
    File::from(memfd.try_clone().expect("dup"))
        .write_all(b"sealed library bytes")
        .expect("write memfd");
    engine
        .send_with_fd(&EngineMessage::Proceed, memfd.as_fd())
        .expect("send_with_fd");

    let (msg, fd) = worker
        .recv_with_fd::<EngineMessage>()
        .expect("recv_with_fd");
    assert_eq!(msg, EngineMessage::Proceed);
    let fd = fd.expect("the memfd sent with the message");
    assert_ne!(fd.as_raw_fd(), memfd.as_raw_fd());
    let mut buf = [0; 20];
    assert_eq!(pread(&fd, &mut buf, 0).expect("pread"), 20);
    assert_eq!(&buf, b"sealed library bytes");
}

#[test]
fn a_descriptor_on_a_plain_recv_is_a_violation_and_is_closed() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let (read, write) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
    worker
        .send_with_fd(&WorkerMessage::Ready, write.as_fd())
        .expect("send_with_fd");
    drop(write);
    expect_protocol(
        engine.recv::<WorkerMessage>(),
        "datagram carried 1 file descriptor(s) where none was expected",
    );
    assert!(
        all_writers_closed(&read),
        "the unexpected descriptor was not closed"
    );

    worker.send(&WorkerMessage::Ready).expect("send");
    assert_eq!(
        engine.recv::<WorkerMessage>().expect("recv"),
        WorkerMessage::Ready
    );
}

#[test]
fn two_descriptors_are_a_violation_and_both_are_closed() {
    let (engine, worker) = hostile_pair();
    let (read_a, write_a) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
    let (read_b, write_b) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
    let frame = encode_frame(&WorkerMessage::SeccompListener).expect("encode");
    let fds = [write_a.as_raw_fd(), write_b.as_raw_fd()];
    sendmsg::<()>(
        worker.as_raw_fd(),
        &[std::io::IoSlice::new(&frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .expect("sendmsg with two descriptors");
    drop((write_a, write_b));

    expect_protocol(
        engine.recv_with_fd::<WorkerMessage>(),
        "datagram carried 2 file descriptors, expected at most one",
    );
    assert!(
        all_writers_closed(&read_a),
        "the first descriptor was not closed"
    );
    assert!(
        all_writers_closed(&read_b),
        "the second descriptor was not closed"
    );
    assert_still_usable(&engine, &worker);
}

// ---------------------------------------------------------------------------------------
// Concurrency

#[test]
fn concurrent_senders_each_deliver_whole_messages_in_order() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 1_000;
    let (engine, worker) = Channel::pair().expect("socketpair");
    let body = |thread: u64, seq: u64| -> Vec<u8> {
        let len = usize::try_from((thread * 131 + seq * 17) % 3_000).unwrap_or(0);
        let fill = u8::try_from((thread * 31 + seq) % 251).unwrap_or(0);
        vec![fill; len]
    };

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let worker = &worker;
            scope.spawn(move || {
                for seq in 0..PER_THREAD {
                    let msg = WorkerMessage::Reply {
                        id: thread << 32 | seq,
                        status: i32::try_from(thread).unwrap_or(-1),
                        body: body(thread, seq),
                    };
                    worker.send(&msg).expect("send");
                }
            });
        }

        let mut next_seq: BTreeMap<u64, u64> = BTreeMap::new();
        for _ in 0..THREADS * PER_THREAD {
            let msg = engine
                .recv_timeout::<WorkerMessage>(WAIT)
                .expect("recv")
                .unwrap_or_else(|| panic!("messages stopped arriving; got so far {next_seq:?}"));
            let WorkerMessage::Reply {
                id,
                status,
                body: got,
            } = msg
            else {
                panic!("unexpected {msg:?}");
            };
            let (thread, seq) = (id >> 32, id & 0xffff_ffff);
            assert_eq!(i64::from(status), i64::try_from(thread).unwrap_or(-1));
            let expected = next_seq.entry(thread).or_insert(0);
            assert_eq!(
                seq, *expected,
                "thread {thread}'s messages arrived out of order"
            );
            *expected += 1;
            assert!(
                got == body(thread, seq),
                "thread {thread} message {seq} arrived damaged"
            );
        }
        assert!(next_seq.values().all(|&n| n == PER_THREAD), "{next_seq:?}");
    });
}

#[test]
fn one_end_is_read_and_written_by_two_threads_at_once() {
    const CALLS: u64 = 2_000;
    let (engine, worker) = Channel::pair().expect("socketpair");
    std::thread::scope(|scope| {
        // The worker: answers every call.
        scope.spawn(|| {
            loop {
                match worker.recv::<EngineMessage>() {
                    Ok(EngineMessage::Call { id, payload, .. }) => worker
                        .send(&WorkerMessage::Reply {
                            id,
                            status: 0,
                            body: payload,
                        })
                        .expect("reply"),
                    Ok(EngineMessage::Shutdown) | Err(IpcError::Closed) => break,
                    other => panic!("worker got {other:?}"),
                }
            }
        });
        // The engine's writer thread, while the test thread reads on the same channel.
        scope.spawn(|| {
            for id in 0..CALLS {
                engine
                    .send(&EngineMessage::Call {
                        id,
                        hook: "echo".to_owned(),
                        payload: id.to_le_bytes().to_vec(),
                        depth: 0,
                    })
                    .expect("call");
            }
        });
        for expected in 0..CALLS {
            match engine.recv_timeout::<WorkerMessage>(WAIT).expect("recv") {
                Some(WorkerMessage::Reply {
                    id,
                    status: 0,
                    body,
                }) => {
                    assert_eq!((id, body), (expected, expected.to_le_bytes().to_vec()));
                }
                other => panic!("expected the reply to call {expected}, got {other:?}"),
            }
        }
        engine.send(&EngineMessage::Shutdown).expect("shutdown");
    });
}

// ---------------------------------------------------------------------------------------
// A hostile peer

#[test]
fn hostile_random_datagrams_are_violations_and_the_channel_survives() {
    let (engine, worker) = hostile_pair();
    // xorshift64: reproducible garbage without a dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let len = usize::try_from(next() % 600).unwrap_or(0) + 1;
        let garbage: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        send_raw(&worker, &garbage);
        let result = engine.recv_timeout::<WorkerMessage>(WAIT);
        assert!(
            matches!(result, Err(IpcError::Protocol { .. })),
            "round {round}: {len} random bytes gave {result:?}"
        );
        if round % 20 == 0 {
            assert_still_usable(&engine, &worker);
        }
    }
    assert_still_usable(&engine, &worker);
}

#[test]
fn hostile_oversized_datagram_is_a_violation() {
    let (engine, worker) = hostile_pair();
    let size = 2 << 20;
    allow_datagrams_of(&worker, size);
    match send(
        worker.as_raw_fd(),
        &vec![0x50; size],
        MsgFlags::MSG_NOSIGNAL,
    ) {
        Ok(sent) => assert_eq!(sent, size),
        Err(Errno::EMSGSIZE) => {
            // Without CAP_NET_ADMIN and with a small net.core.wmem_max, nobody can send
            // one: the kernel is the first line of defence.
            eprintln!("this host cannot send a {size}-byte datagram; nothing to receive");
            return;
        }
        Err(errno) => panic!("sending {size} bytes: {errno}"),
    }
    expect_protocol(
        engine.recv::<WorkerMessage>(),
        "frame of 2097152 bytes exceeds the 1048640-byte maximum",
    );
    assert_still_usable(&engine, &worker);

    // One byte over the maximum, with a valid header claiming it all.
    let body_len = MAX_FRAME_BYTES + 1 - HEADER_BYTES;
    let frame = frame_with_body(u32::try_from(body_len).unwrap_or(0), &vec![0; body_len]);
    send_raw(&worker, &frame);
    expect_protocol(
        engine.recv::<WorkerMessage>(),
        "frame of 1048641 bytes exceeds the 1048640-byte maximum",
    );
    assert_still_usable(&engine, &worker);
}

#[test]
fn hostile_malformed_frames_are_violations_and_the_channel_survives() {
    let (engine, worker) = hostile_pair();
    let mut trailing = encode_frame(&WorkerMessage::Ready).expect("encode");
    trailing.extend_from_slice(b"xyz");
    trailing[2..6].copy_from_slice(&4u32.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "3-byte datagram",
            b"PB\x01".to_vec(),
            "truncated frame: 3 bytes is shorter than the 6-byte header",
        ),
        (
            "header that claims more than follows",
            frame_with_body(64, &[3]),
            "truncated frame: the header declares a 64-byte body but the datagram carries 1",
        ),
        (
            "header that claims less than follows",
            frame_with_body(1, &[3, 0, 0]),
            "frame length mismatch: the header declares a 1-byte body but the datagram \
             carries 3",
        ),
        (
            "bad magic",
            b"GET / HTTP/1.0\r\n".to_vec(),
            "bad magic 0x47 0x45, expected \"PB\" (0x50 0x42)",
        ),
        (
            "undecodable body",
            frame_with_body(2, &[5, 0xff]),
            "undecodable body",
        ),
        (
            "valid frame plus trailing bytes",
            trailing,
            "3 trailing bytes after a complete WorkerMessage",
        ),
        (
            "empty datagram",
            Vec::new(),
            "empty datagram, expected a frame of at least 6 bytes",
        ),
    ];
    for (what, datagram, expected) in cases {
        send_raw(&worker, &datagram);
        let reason = expect_protocol(engine.recv::<WorkerMessage>(), expected);
        eprintln!("{what}: {reason}");
        assert_still_usable(&engine, &worker);
    }
}

// ---------------------------------------------------------------------------------------
// Peer shutdown

#[test]
fn recv_after_the_peer_closed_is_closed() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    drop(worker);
    assert!(matches!(
        engine.recv::<WorkerMessage>(),
        Err(IpcError::Closed)
    ));
    assert!(matches!(
        engine.recv_timeout::<WorkerMessage>(WAIT),
        Err(IpcError::Closed)
    ));
    assert!(matches!(
        engine.recv_with_fd::<WorkerMessage>(),
        Err(IpcError::Closed)
    ));
}

#[test]
fn messages_sent_before_the_peer_closed_still_arrive() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    // Unread by the worker: its close resets the engine's end (ECONNRESET).
    engine.send(&EngineMessage::Health { id: 1 }).expect("send");
    worker.send(&WorkerMessage::Ready).expect("send");
    worker
        .send(&WorkerMessage::LoadFailed {
            reason: "last words".to_owned(),
        })
        .expect("send");
    drop(worker);
    assert_eq!(
        engine.recv::<WorkerMessage>().expect("first"),
        WorkerMessage::Ready
    );
    assert_eq!(
        engine.recv::<WorkerMessage>().expect("second"),
        WorkerMessage::LoadFailed {
            reason: "last words".to_owned()
        }
    );
    assert!(matches!(
        engine.recv::<WorkerMessage>(),
        Err(IpcError::Closed)
    ));
}

/// Whether SIGPIPE is pending for the calling thread (from /proc, so no handler is needed).
fn sigpipe_pending_for_this_thread() -> bool {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("read status");
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigPnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("SigPnd line in /proc/thread-self/status");
    mask & (1 << (Signal::SIGPIPE as u32 - 1)) != 0
}

#[test]
fn send_after_the_peer_closed_is_closed_without_sigpipe() {
    // Rust ignores SIGPIPE, which would hide a send without MSG_NOSIGNAL: block it in this
    // thread instead, so a SIGPIPE stays pending where /proc shows it.
    let mut sigpipe = SigSet::empty();
    sigpipe.add(Signal::SIGPIPE);
    sigpipe.thread_block().expect("block SIGPIPE");

    // The check itself works: a send without MSG_NOSIGNAL on a stream socket whose peer
    // is gone leaves SIGPIPE pending. (Linux 6.18 raises none for SEQPACKET at all, where
    // it answers EPIPE alone; MSG_NOSIGNAL keeps any kernel from raising one.)
    let (stream, peer) = UnixStream::pair().expect("stream socketpair");
    drop(peer);
    let raw_result = send(stream.as_raw_fd(), b"x", MsgFlags::empty());
    assert_eq!(
        raw_result,
        Err(Errno::EPIPE),
        "send to a closed stream peer"
    );
    assert!(
        sigpipe_pending_for_this_thread(),
        "a plain send raised no SIGPIPE"
    );
    assert_eq!(sigpipe.wait().expect("sigwait"), Signal::SIGPIPE);
    assert!(!sigpipe_pending_for_this_thread());

    let (engine, worker) = Channel::pair().expect("socketpair");
    drop(worker);
    let (read, write) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
    let sent = engine.send(&EngineMessage::Shutdown);
    let sent_with_fd = engine.send_with_fd(&EngineMessage::Proceed, write.as_fd());
    let pending = sigpipe_pending_for_this_thread();
    if pending {
        let _ = sigpipe.wait();
    }
    sigpipe.thread_unblock().expect("unblock SIGPIPE");
    drop((read, write));

    assert!(matches!(sent, Err(IpcError::Closed)), "send gave {sent:?}");
    assert!(
        matches!(sent_with_fd, Err(IpcError::Closed)),
        "send_with_fd gave {sent_with_fd:?}"
    );
    assert!(!pending, "a send on a closed channel raised SIGPIPE");
}

// ---------------------------------------------------------------------------------------
// Fuzzing the decoder

/// Cases per fuzz test: `PLUGBOARD_FUZZ_CASES`, 100 000 by default.
fn fuzz_config() -> ProptestConfig {
    let cases = match std::env::var("PLUGBOARD_FUZZ_CASES") {
        Ok(text) => text.trim().replace('_', "").parse().unwrap_or_else(|_| {
            panic!("PLUGBOARD_FUZZ_CASES={text:?} is not a number of cases (e.g. 1000000)")
        }),
        Err(_) => 100_000,
    };
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Decodes `frame` as both message types: any outcome but a panic or a non-protocol
/// error is fine, and whatever decodes re-encodes to a frame that decodes the same.
fn decode_both(frame: &[u8]) -> Result<(), TestCaseError> {
    fn check<T>(frame: &[u8]) -> Result<(), TestCaseError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
    {
        match decode_frame::<T>(frame) {
            Ok(value) => {
                let again = encode_frame(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decode_frame::<T>(&again).ok(), Some(value));
            }
            Err(IpcError::Protocol { reason }) => prop_assert!(!reason.is_empty()),
            Err(other) => prop_assert!(false, "decoding gave a non-protocol error: {other:?}"),
        }
        Ok(())
    }
    check::<EngineMessage>(frame)?;
    check::<WorkerMessage>(frame)
}

/// Short strings, cheaply, including multi-byte UTF-8 (the replacement character).
fn text() -> impl Strategy<Value = String> {
    vec(any::<u8>(), 0..8).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..24)
}

fn plan_strategy() -> impl Strategy<Value = ConfinementPlan> {
    (
        (
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
        ),
        vec(text().prop_map(PathBuf::from), 0..3),
        vec(text().prop_map(PathBuf::from), 0..3),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        vec((text(), text()), 0..3),
        bytes(),
        (vec(text(), 0..3), any::<u32>(), any::<bool>()),
    )
        .prop_map(
            |(
                (plugin, uid, gid, network, spawn),
                fs_read,
                fs_write,
                (max_open_files, address_space_bytes, tmpfs_bytes),
                env,
                config_json,
                (require, serve_threads, audit),
            )| ConfinementPlan {
                library: format!("lib{plugin}.so"),
                seccomp_program: Vec::new(),
                plugin,
                uid,
                gid,
                network,
                spawn,
                fs_read,
                fs_write,
                max_open_files,
                address_space_bytes,
                tmpfs_bytes,
                env,
                config_json,
                require,
                serve_threads,
                audit,
            },
        )
}

fn engine_message() -> impl Strategy<Value = EngineMessage> {
    prop_oneof![
        (any::<u32>(), plan_strategy())
            .prop_map(|(protocol, plan)| EngineMessage::Welcome { protocol, plan }),
        Just(EngineMessage::Proceed),
        Just(EngineMessage::Load),
        (any::<u64>(), text(), bytes()).prop_map(|(id, hook, payload)| EngineMessage::Call {
            id,
            hook,
            payload,
            depth: 0,
        }),
        any::<u64>().prop_map(|id| EngineMessage::Health { id }),
        (any::<u64>(), any::<i32>()).prop_map(|(id, code)| EngineMessage::EmitResult { id, code }),
        Just(EngineMessage::Shutdown),
    ]
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    let step = (text(), any::<bool>(), text()).prop_map(|(mechanism, ok, detail)| StepReport {
        mechanism,
        ok,
        detail,
    });
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(protocol, pid)| WorkerMessage::Hello { protocol, pid }),
        (vec(step, 0..4), any::<u32>())
            .prop_map(|(steps, sandbox_pid)| WorkerMessage::Confined { steps, sandbox_pid }),
        Just(WorkerMessage::SeccompListener),
        Just(WorkerMessage::Ready),
        text().prop_map(|reason| WorkerMessage::LoadFailed { reason }),
        (any::<u64>(), any::<i32>(), bytes()).prop_map(|(id, status, body)| WorkerMessage::Reply {
            id,
            status,
            body
        }),
        (any::<u32>(), text()).prop_map(|(level, message)| WorkerMessage::Log { level, message }),
        (any::<u64>(), text(), bytes()).prop_map(|(id, hook, payload)| WorkerMessage::Emit {
            id,
            hook,
            payload,
            depth: 0,
        }),
        any::<u64>().prop_map(|lines| WorkerMessage::LogsDropped { lines }),
    ]
}

/// A valid frame of either direction.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        engine_message().prop_map(|msg| encode_frame(&msg).unwrap_or_default()),
        worker_message().prop_map(|msg| encode_frame(&msg).unwrap_or_default()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Remove(Index),
    Append(Vec<u8>),
    /// Replace the length field.
    SetLength(u32),
    /// Move the length field by a little.
    NudgeLength(i8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte(at, value)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::Insert(at, value)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
        1 => any::<u32>().prop_map(Mutation::SetLength),
        2 => any::<i8>().prop_map(Mutation::NudgeLength),
    ]
}

fn apply(frame: &mut Vec<u8>, mutation: &Mutation) {
    let len = frame.len();
    match mutation {
        Mutation::FlipBit(at, bit) if len > 0 => frame[at.index(len)] ^= 1 << bit,
        Mutation::SetByte(at, value) if len > 0 => frame[at.index(len)] = *value,
        Mutation::Truncate(at) if len > 0 => frame.truncate(at.index(len)),
        Mutation::Insert(at, value) => frame.insert(at.index(len + 1), *value),
        Mutation::Remove(at) if len > 0 => {
            frame.remove(at.index(len));
        }
        Mutation::Append(bytes) => frame.extend_from_slice(bytes),
        Mutation::SetLength(value) if len >= HEADER_BYTES => {
            frame[2..HEADER_BYTES].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::NudgeLength(delta) if len >= HEADER_BYTES => {
            let old = u32::from_le_bytes([frame[2], frame[3], frame[4], frame[5]]);
            let new = old.wrapping_add_signed(i32::from(*delta));
            frame[2..HEADER_BYTES].copy_from_slice(&new.to_le_bytes());
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// (a) Arbitrary bytes.
    #[test]
    fn fuzz_arbitrary_bytes(frame in vec(any::<u8>(), 0..96)) {
        decode_both(&frame)?;
    }

    /// (a') Arbitrary bodies behind a correct header, so the postcard decoder is reached.
    #[test]
    fn fuzz_arbitrary_bodies(body in vec(any::<u8>(), 0..96)) {
        let declared = u32::try_from(body.len()).unwrap_or(u32::MAX);
        decode_both(&frame_with_body(declared, &body))?;
    }

    /// (b) Valid frames of both directions with bit flips, truncations, insertions and
    /// length-field edits.
    #[test]
    fn fuzz_mutated_frames(
        frame in valid_frame(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut frame = frame;
        for mutation in &mutations {
            apply(&mut frame, mutation);
        }
        decode_both(&frame)?;
    }
}

/// A peer that stops reading cannot hold a sender that gives itself a deadline: with the
/// send buffer full, `send_before` gives up at the deadline (what a stop does before it
/// kills a worker whose hooks are stuck), and sends once there is room again.
#[test]
fn a_send_with_a_deadline_gives_up_on_a_peer_that_reads_nothing() {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let mut queued = 0;
    while engine.try_send(&EngineMessage::Shutdown).expect("try_send") {
        queued += 1;
    }
    assert!(queued > 0, "the send buffer took nothing");
    let started = Instant::now();
    let sent = engine
        .send_before(
            &EngineMessage::Shutdown,
            started + Duration::from_millis(100),
        )
        .expect("send_before");
    let waited = started.elapsed();
    assert!(!sent, "sent into a full buffer");
    assert!(
        (Duration::from_millis(100)..Duration::from_secs(1)).contains(&waited),
        "gave up after {waited:?}, expected at the 100 ms deadline"
    );
    // Room again: it sends at once.
    for _ in 0..queued {
        worker.recv::<EngineMessage>().expect("a queued message");
    }
    assert!(
        engine
            .send_before(
                &EngineMessage::Shutdown,
                Instant::now() + Duration::from_secs(5)
            )
            .expect("send_before")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_messages_round_trip(engine in engine_message(), worker in worker_message()) {
        let frame = encode_frame(&engine).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode_frame::<EngineMessage>(&frame).ok(), Some(engine));
        let frame = encode_frame(&worker).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode_frame::<WorkerMessage>(&frame).ok(), Some(worker));
    }
}
