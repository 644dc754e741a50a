//! Round-trip latency of the engine⇄worker channel, next to a raw SEQPACKET ping-pong in
//! the same run.
//!
//! Run: `cargo bench -p plugboard-engine --bench ipc` (`PLUGBOARD_IPC_BENCH_ROUNDS` sets
//! the round trips per kind, 100 000 by default).
//!
//! Both peers are separate processes, like a worker: this binary re-executes itself with
//! `PLUGBOARD_IPC_BENCH_PEER` set and the socket as its stdin (the engine never forks).
//! "raw" is one 64-byte datagram each way with plain send/recv; "framed" is
//! `EngineMessage::Call` → `WorkerMessage::Reply` through `Channel` (encode, sendmsg,
//! recvmsg, decode on both sides), with a payload that makes the Call frame 64 bytes.
//! The two kinds alternate in blocks, so drift on a noisy machine hits both alike. Where
//! the scheduler puts a peer matters more than anything measured here: a peer woken on the
//! other core costs about 3x (on the 2-core development machine, either kind now and then
//! shows ~25 µs instead of ~8 µs for a whole run), so repeat a run whose ratio is below 1.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, recv, send};
use plugboard_engine::ipc::{Channel, EngineMessage, IpcError, WorkerMessage, encode_frame};

const PEER_ENV: &str = "PLUGBOARD_IPC_BENCH_PEER";
const ROUNDS_ENV: &str = "PLUGBOARD_IPC_BENCH_ROUNDS";
const DATAGRAM: usize = 64;
const BLOCK: usize = 5_000;
const WARM_UP: u64 = 2_000;

fn main() {
    match std::env::var(PEER_ENV).as_deref() {
        Ok("raw") => raw_echo(),
        Ok("framed") => framed_echo(),
        Ok(other) => panic!("{PEER_ENV}={other:?}: expected \"raw\" or \"framed\""),
        Err(_) => measure(),
    }
}

fn stdin_socket() -> OwnedFd {
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("the socket as stdin")
}

/// Peer: sends every datagram straight back.
fn raw_echo() {
    let socket = stdin_socket();
    let mut buf = [0u8; DATAGRAM];
    loop {
        match recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return,
            Ok(n) => {
                send(socket.as_raw_fd(), &buf[..n], MsgFlags::MSG_NOSIGNAL).expect("echo");
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => panic!("raw peer recv: {errno}"),
        }
    }
}

/// Peer: answers every Call with a Reply carrying the payload back.
fn framed_echo() {
    let channel = Channel::from_fd(stdin_socket());
    loop {
        match channel.recv::<EngineMessage>() {
            Ok(EngineMessage::Call { id, payload, .. }) => channel
                .send(&WorkerMessage::Reply {
                    id,
                    status: 0,
                    body: payload,
                })
                .expect("reply"),
            Ok(EngineMessage::Shutdown) | Err(IpcError::Closed) => return,
            Ok(other) => panic!("framed peer got {other:?}"),
            Err(err) => panic!("framed peer: {err}"),
        }
    }
}

fn spawn_peer(kind: &str) -> (Channel, Child) {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env(PEER_ENV, kind)
        .stdin(Stdio::from(worker.into_fd()))
        .spawn()
        .expect("spawn the echo peer");
    (engine, child)
}

fn raw_round_trip(socket: &Channel, out: &[u8; DATAGRAM], back: &mut [u8; DATAGRAM]) {
    let fd = socket.as_fd().as_raw_fd();
    send(fd, out, MsgFlags::MSG_NOSIGNAL).expect("raw send");
    let n = recv(fd, back, MsgFlags::empty()).expect("raw recv");
    assert_eq!(n, DATAGRAM, "raw echo came back short");
}

fn framed_round_trip(channel: &Channel, id: u64, payload: &[u8]) {
    channel
        .send(&EngineMessage::Call {
            id,
            hook: "on_tick".to_owned(),
            payload: payload.to_vec(),
            depth: 0,
        })
        .expect("call");
    match channel.recv::<WorkerMessage>().expect("reply") {
        WorkerMessage::Reply { id: got, .. } if got == id => {}
        other => panic!("expected the reply to call {id}, got {other:?}"),
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn percentile(sorted: &[u64], p: usize) -> Duration {
    let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    Duration::from_nanos(sorted.get(index).copied().unwrap_or(0))
}

fn report(name: &str, samples: &mut [u64]) -> (Duration, Duration) {
    samples.sort_unstable();
    let (p50, p99) = (percentile(samples, 50), percentile(samples, 99));
    let max = Duration::from_nanos(samples.last().copied().unwrap_or(0));
    println!("{name:<44} p50 {p50:>10.2?}   p99 {p99:>10.2?}   max {max:>10.2?}");
    (p50, p99)
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_nanos() as f64 / b.as_nanos().max(1) as f64
}

fn measure() {
    let rounds: usize = std::env::var(ROUNDS_ENV).ok().map_or(100_000, |text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{ROUNDS_ENV}={text:?} is not a number"))
    });
    let (raw, mut raw_peer) = spawn_peer("raw");
    let (framed, mut framed_peer) = spawn_peer("framed");

    // A Call frame of exactly 64 bytes, like the raw datagram.
    let mut payload = Vec::new();
    while encode_frame(&EngineMessage::Call {
        id: u64::MAX / 2,
        hook: "on_tick".to_owned(),
        payload: payload.clone(),
        depth: 0,
    })
    .expect("encode")
    .len()
        < DATAGRAM
    {
        payload.push(0x5a);
    }
    let out = [0x5a; DATAGRAM];
    let mut back = [0u8; DATAGRAM];

    for i in 0..WARM_UP {
        raw_round_trip(&raw, &out, &mut back);
        framed_round_trip(&framed, i, &payload);
    }

    let mut raw_samples = Vec::with_capacity(rounds);
    let mut framed_samples = Vec::with_capacity(rounds);
    let mut id = u64::MAX / 2;
    while raw_samples.len() < rounds {
        let block = BLOCK.min(rounds - raw_samples.len());
        for _ in 0..block {
            let start = Instant::now();
            raw_round_trip(&raw, &out, &mut back);
            raw_samples.push(nanos(start.elapsed()));
        }
        for _ in 0..block {
            id += 1;
            let start = Instant::now();
            framed_round_trip(&framed, id, &payload);
            framed_samples.push(nanos(start.elapsed()));
        }
    }

    println!(
        "{rounds} round trips each, two processes, alternating blocks of {BLOCK}; \
         Call frame {DATAGRAM} bytes ({} payload bytes)",
        payload.len()
    );
    let (raw50, raw99) = report(
        "raw SEQPACKET ping-pong (64-byte datagrams)",
        &mut raw_samples,
    );
    let (framed50, framed99) = report(
        "Channel Call -> Reply (postcard frames)",
        &mut framed_samples,
    );
    println!(
        "ratio framed / raw: p50 {:.2}x   p99 {:.2}x   (framing cost p50 {:.2?})",
        ratio(framed50, raw50),
        ratio(framed99, raw99),
        framed50.saturating_sub(raw50)
    );

    framed.send(&EngineMessage::Shutdown).expect("shutdown");
    drop((raw, framed));
    for (name, child) in [("raw", &mut raw_peer), ("framed", &mut framed_peer)] {
        let status = child.wait().expect("wait for the peer");
        assert!(status.success(), "the {name} peer exited with {status}");
    }
}
