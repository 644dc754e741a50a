//! Requests to one worker and their replies, received by the callers themselves.
//!
//! There is no reader thread on the call path. Whoever holds the *receive role* reads the
//! socket: normally a thread waiting for a reply of its own (the *leader*). It handles
//! whatever arrives — its own replies, other callers' replies (stored in their slot, their
//! thread unparked), log lines, emits, protocol violations — and when it has what it
//! waited for it passes the role to another waiting caller (unparking it), or leaves it
//! free. A caller that finds the role taken waits parked until its reply is delivered or
//! the role is passed to it. A single caller with nothing else in flight thus sends, then
//! receives its reply itself: no thread wake-up besides its own.
//!
//! While nobody calls, the *idle reader* thread takes the role, so a worker's log lines,
//! emits and violations between calls are still handled. It stays out of the way while
//! calls keep coming: it only waits on the socket once no request was made for a while
//! (its check interval grows from [`IDLE_CHECK_MIN`] to [`IDLE_CHECK_MAX`] while calls
//! continue), and hands the role to a waiting caller as soon as it has read what was
//! queued.
//!
//! Whoever receives makes every protocol check: a reply to an id never issued, a frame that
//! is not a `WorkerMessage`, a message out of protocol — each is reported as
//! [`WorkerEvent::ProtocolViolation`] before the worker is killed, and every waiting caller
//! gets [`CallFailure::WorkerGone`]. A receive that fails for the engine's own reasons
//! (no memory for the buffer) is not the worker's doing: it is reported as
//! [`WorkerEvent::ReceiveFailed`] and tried again. Once the handshake is over the engine's
//! end refuses descriptors (`SO_PASSRIGHTS`, Linux 6.16): a worker's send with one fails in
//! the worker, and replies are read with a plain `recv`; on older kernels every datagram is
//! still checked for descriptors.
//!
//! Messages that are not replies (log lines, emits, counts of dropped lines) are read at
//! most [`WORKER_MESSAGES_PER_SEC`] a second: past that, whoever receives waits first
//! ([`Calls::pace`]).
//!
//! Pipelined calls ([`Calls::request_many`]) are packed into `Calls` frames and answered in
//! `Replies` frames: one datagram carries up to [`CALLS_PER_FRAME`] calls each way.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

#[cfg(test)]
use super::Emits;
use super::{
    CallFailure, CallOutcome, EmitHandler, EventSink, TokenBucket, UNSOLICITED_BYTES_PER_TOKEN,
    WORKER_MESSAGES_PER_SEC, WorkerEvent, log_line,
};
use crate::ipc::{
    CallRef, CallsRef, Channel, EngineMessage, IpcError, Outgoing, WorkerMessage, encode_frame,
};
use crate::job_threads::JobThreads;
use crate::sandbox::process::ProcessHandle;

/// Emits a worker may have waiting for an answer at once; more are refused at once, so a
/// plugin (or a loop of plugins emitting to each other) cannot pile up engine threads.
const MAX_EMITS_IN_FLIGHT: usize = 16;

/// The threads admitted emits call their subscribers on, shared by every worker; one that
/// was idle for 10 s ends.
pub(crate) static EMIT_THREADS: JobThreads = JobThreads::new("pb-emit", Duration::from_secs(10));

/// Depths of emit chains told apart in [`Calls::chain_depths`]; deeper ones count in the
/// last slot (the engine's bound on chains is below it).
const DEPTH_SLOTS: usize = 8;

/// The most messages read after the worker is gone: more than its socket can hold.
const DRAIN_LIMIT: usize = 65_536;

/// How long an emit's answer waits for room in a socket the worker does not read (the
/// worker's own emit gives up after 5 s).
const EMIT_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The socket's receive timeout: a leader waiting for a slow reply looks at its deadline
/// and at the worker's state this often (exact deadlines within the last tick).
const RECEIVE_TICK: Duration = Duration::from_millis(10);

/// The idle reader's first look for a quiet socket after calls, and its longest interval
/// between looks while calls keep coming.
const IDLE_CHECK_MIN: Duration = Duration::from_millis(1);
const IDLE_CHECK_MAX: Duration = Duration::from_millis(20);

/// How long the idle reader waits on the socket before it looks at the worker's state.
/// A worker's exit closes its end, which wakes the wait at once: this only bounds how long
/// a missed wake-up could go unnoticed, so it is long (an idle engine with many workers
/// should not wake for nothing).
const IDLE_POLL: Duration = Duration::from_secs(10);

/// How long a receiver waits after a receive failed in the engine before it tries again.
const RECEIVE_RETRY: Duration = Duration::from_millis(10);

/// A paced receiver waits until this many messages other than replies are allowed
/// again: one sleep per batch, not per message.
const PACED_BATCH: f64 = 16.0;

/// Requests of one caller sent ahead of their replies.
const BATCH_WINDOW: usize = 256;

/// Calls packed into one frame by [`Calls::request_many`].
const CALLS_PER_FRAME: usize = 64;

/// About the most bytes of hooks and payloads packed into one frame (a larger call goes
/// alone).
const FRAME_BUDGET: usize = 48 * 1024;

/// A reply as it arrived: status, body and when it was received.
type Reply = (i32, Vec<u8>, Instant);

/// The state of one worker's requests, shared by callers, the idle reader and the waiter.
pub(super) struct Calls {
    channel: Arc<Channel>,
    /// The next request id: a reply to any id at or above it answers a request that was
    /// never sent.
    next_id: AtomicU64,
    state: Mutex<State>,
    /// The worker is gone (exited, closed its end, killed for a violation): nothing more is
    /// received and every request fails.
    gone: AtomicBool,
    /// Set before a protocol violation is reported: the worker is being killed, and a stop
    /// that follows must not ask it to shut down (it would exit 0 first, and its end would
    /// read as a clean one).
    broke_protocol: AtomicBool,
    /// Counts requests, so the idle reader sees whether calls are still coming.
    activity: AtomicU64,
    /// The worker process, killed by pidfd when it breaks the protocol.
    process: Arc<ProcessHandle>,
    events: EventSink,
    emit: Option<EmitHandler>,
    /// Where admitted emits run ([`EMIT_THREADS`]; a test's own).
    emit_threads: &'static JobThreads,
    emits_in_flight: Arc<AtomicUsize>,
    /// The rate of messages other than replies ([`WORKER_MESSAGES_PER_SEC`]).
    unsolicited: Mutex<TokenBucket>,
    /// Set when `unsolicited` ran out: whoever receives next waits for it first.
    paced: AtomicBool,
    /// When a failed receive was last reported.
    receive_failure_said: Mutex<Option<Instant>>,
    /// Calls in flight made for an emit chain, by its depth: an emit the worker sends is at
    /// least as deep as the deepest of them (see [`Calls::emit`]). Depth 0, the common
    /// call, is not counted.
    chain_depths: [AtomicUsize; DEPTH_SLOTS],
}

/// A call for an emit chain, counted in [`Calls::chain_depths`] while it is in flight.
pub(super) struct EmitCallGuard<'a> {
    slot: &'a AtomicUsize,
}

impl Drop for EmitCallGuard<'_> {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Request ids are consecutive numbers the engine issues: a multiplicative hash spreads
/// them as well as SipHash, for less.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ById<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Timed-out requests remembered one by one; past this many, the oldest are forgotten and
/// any reply to an id that old is taken as late.
const ABANDONED_KEPT: usize = 4096;

#[derive(Default)]
struct Abandoned {
    ids: BTreeSet<u64>,
    /// Ids below this were forgotten: whatever answers them counts as late.
    forgotten_below: u64,
}

impl Abandoned {
    fn insert(&mut self, id: u64) {
        self.ids.insert(id);
        if self.ids.len() > ABANDONED_KEPT
            && let Some(oldest) = self.ids.pop_first()
        {
            self.forgotten_below = self.forgotten_below.max(oldest + 1);
        }
    }

    /// Whether a reply to `id` (no longer waited for) answers a request that timed out.
    fn is_late(&self, id: u64) -> bool {
        id < self.forgotten_below || self.ids.contains(&id)
    }
}

struct State {
    /// Request id → the caller (its key) waiting for it.
    waiting: ById<u64>,
    /// Requests whose caller gave up before their reply came (timed out): a reply to one
    /// of them is late, discarded (and paced), where a second reply to a request answered
    /// in time is a violation.
    abandoned: Abandoned,
    /// Waiting callers by key (the first id of their requests).
    callers: ById<Waiter>,
    /// Who reads the socket now.
    receiver: Option<Receiver>,
    /// The idle reader, to wake when the worker is gone.
    idle_reader: Option<Thread>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// The caller with this key.
    Caller(u64),
    /// The idle reader thread.
    Idle,
}

struct Waiter {
    /// To unpark it; `None` for a caller that took the receive role when it registered:
    /// it keeps the role until it leaves, so nobody ever delivers to it or wakes it.
    thread: Option<Thread>,
    /// Replies delivered by the leader: (request id, reply).
    inbox: Vec<(u64, Reply)>,
}

/// One caller's requests (ids `ids`) and what became of them.
struct Batch {
    key: u64,
    ids: Range<u64>,
    /// Its requests below this id went out (or were refused); a reply to one above is
    /// out of protocol.
    sent_below: u64,
    results: Vec<Option<Result<Reply, CallFailure>>>,
    missing: usize,
}

impl Batch {
    fn index(&self, id: u64) -> Option<usize> {
        if self.ids.contains(&id) {
            usize::try_from(id - self.ids.start).ok()
        } else {
            None
        }
    }

    /// Records a result; whether it is the first for `id`.
    fn settle(&mut self, id: u64, result: Result<Reply, CallFailure>) -> bool {
        if let Some(slot) = self.index(id).and_then(|index| self.results.get_mut(index))
            && slot.is_none()
        {
            *slot = Some(result);
            self.missing -= 1;
            return true;
        }
        false
    }

    /// Every request without a result gets `failure`.
    fn fail_rest(&mut self, failure: &CallFailure) {
        for slot in &mut self.results {
            if slot.is_none() {
                *slot = Some(Err(failure.clone()));
            }
        }
        self.missing = 0;
    }
}

impl Calls {
    pub(super) fn new(
        channel: Arc<Channel>,
        process: Arc<ProcessHandle>,
        events: EventSink,
        emit: Option<EmitHandler>,
    ) -> Self {
        // Without a tick a leader would wait in poll + recvmsg; with it, in one recvmsg.
        let _ = channel.set_receive_tick(RECEIVE_TICK);
        // The handshake's one descriptor (the seccomp listener) has arrived; from now on
        // the worker cannot send any (its send fails), and replies are read with a plain
        // recv. Before Linux 6.16 every datagram is checked for descriptors instead.
        let _ = channel.refuse_descriptors();
        Self {
            channel,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State {
                waiting: ById::default(),
                abandoned: Abandoned::default(),
                callers: ById::default(),
                receiver: None,
                idle_reader: None,
            }),
            gone: AtomicBool::new(false),
            broke_protocol: AtomicBool::new(false),
            activity: AtomicU64::new(0),
            process,
            events,
            emit,
            emit_threads: &EMIT_THREADS,
            emits_in_flight: Arc::default(),
            unsolicited: Mutex::new(TokenBucket::new(
                WORKER_MESSAGES_PER_SEC,
                WORKER_MESSAGES_PER_SEC,
            )),
            paced: AtomicBool::new(false),
            receive_failure_said: Mutex::new(None),
            chain_depths: Default::default(),
        }
    }

    /// Counts a call made for an emit chain `depth` (> 0) deep while the guard lives.
    pub(super) fn emit_call(&self, depth: u32) -> EmitCallGuard<'_> {
        let slot = &self.chain_depths[usize::try_from(depth)
            .unwrap_or(usize::MAX)
            .min(DEPTH_SLOTS - 1)];
        slot.fetch_add(1, Ordering::AcqRel);
        EmitCallGuard { slot }
    }

    /// The depth of the deepest emit-chain call in flight (0: none).
    fn deepest_emit_call(&self) -> u32 {
        self.chain_depths
            .iter()
            .rposition(|slot| slot.load(Ordering::Acquire) > 0)
            .map_or(0, |depth| u32::try_from(depth).unwrap_or(u32::MAX))
    }

    /// Passes an event about this worker to the engine.
    pub(super) fn report(&self, event: WorkerEvent) {
        (self.events)(event);
    }

    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests sent and not answered yet.
    pub(super) fn in_flight(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Sends one request (`message` gets its id) and waits at most `timeout` for the reply.
    pub(super) fn request<M: Outgoing>(
        &self,
        message: impl Fn(u64) -> M,
        timeout: Duration,
    ) -> Result<CallOutcome, CallFailure> {
        let start = Instant::now();
        let mut results = self.exchange(1, start, timeout, |ids, _| {
            match self.channel.try_send(&message(ids.start)) {
                Ok(true) => Ok(1),
                Ok(false) => Ok(0),
                Err(_) => Err(()),
            }
        });
        let result = results.pop().unwrap_or(Err(CallFailure::WorkerGone));
        result.map(|(status, body, received)| CallOutcome {
            status,
            body,
            duration: received.saturating_duration_since(start),
            finished: None,
        })
    }

    /// Calls `calls` (hook, payload), pipelined: packed [`CALLS_PER_FRAME`] to a frame,
    /// up to [`BATCH_WINDOW`] of them ahead of their replies; waits at most `timeout` from
    /// now for all replies. The results are in the order of `calls`.
    pub(super) fn request_many(
        &self,
        calls: &[(&str, &[u8])],
        depth: u32,
        timeout: Duration,
    ) -> Vec<Result<Reply, CallFailure>> {
        let mut first = None;
        self.exchange(calls.len(), Instant::now(), timeout, |ids, refused| {
            let first = *first.get_or_insert(ids.start);
            self.send_packed(ids, first, calls, depth, refused)
        })
    }

    /// Sends the calls with ids `ids` (`calls[id - first]`), packed into frames, without
    /// waiting for room: how many calls went out. A call too large for any frame is not
    /// sent: its id goes to `refused`, and it counts as gone out.
    fn send_packed(
        &self,
        ids: Range<u64>,
        first: u64,
        calls: &[(&str, &[u8])],
        depth: u32,
        refused: &mut Vec<u64>,
    ) -> Result<u64, ()> {
        let call = |id: u64| {
            let (hook, payload) = usize::try_from(id - first)
                .ok()
                .and_then(|index| calls.get(index))
                .copied()
                .unwrap_or(("", &[]));
            CallRef {
                id,
                hook,
                payload,
                depth,
            }
        };
        // Frames of up to CALLS_PER_FRAME calls and about FRAME_BUDGET bytes; a call too
        // large to share a frame goes alone, as a plain Call.
        let mut frames = Vec::new();
        let mut calls_in = Vec::new();
        let mut group: Vec<CallRef<'_>> = Vec::with_capacity(CALLS_PER_FRAME);
        let mut group_bytes = 0;
        let mut refused_now = 0;
        let mut ids = ids.peekable();
        while let Some(&id) = ids.peek() {
            let next = call(id);
            let bytes = next.hook.len() + next.payload.len() + 24;
            let full = group.len() == CALLS_PER_FRAME || group_bytes + bytes > FRAME_BUDGET;
            if !group.is_empty() && full {
                frames.push(encode_group(&group)?);
                calls_in.push(group.len());
                group.clear();
                group_bytes = 0;
            }
            if group.is_empty() && bytes > FRAME_BUDGET {
                // Alone in its frame; one that does not fit is refused, but only while
                // nothing is queued before it, so the calls keep their order.
                match encode_frame(&next) {
                    Ok(frame) => {
                        frames.push(frame);
                        calls_in.push(1);
                    }
                    Err(IpcError::TooLarge { .. } | IpcError::Encode { .. })
                        if frames.is_empty() =>
                    {
                        refused.push(id);
                        refused_now += 1;
                    }
                    Err(_) => break,
                }
                ids.next();
                continue;
            }
            group.push(next);
            group_bytes += bytes;
            ids.next();
        }
        if !group.is_empty() {
            frames.push(encode_group(&group)?);
            calls_in.push(group.len());
        }
        let sent_frames = self.channel.try_send_frames(&frames).map_err(drop)?;
        let sent: usize = calls_in.iter().take(sent_frames).sum();
        Ok(u64::try_from(sent + refused_now).unwrap_or(0))
    }

    /// Registers `count` requests under fresh ids, sends them with `send` (given the ids
    /// still to send, it sends what it can now without waiting and says how many went out),
    /// keeping at most [`BATCH_WINDOW`] ahead of their replies, and collects the replies —
    /// receiving them itself while it holds the receive role — until all are in, `timeout`
    /// after `start` (about now) has passed, or the worker is gone.
    fn exchange(
        &self,
        count: usize,
        start: Instant,
        timeout: Duration,
        mut send: impl FnMut(Range<u64>, &mut Vec<u64>) -> Result<u64, ()>,
    ) -> Vec<Result<Reply, CallFailure>> {
        if count == 0 {
            return Vec::new();
        }
        let deadline = start
            .checked_add(timeout)
            .unwrap_or(start + Duration::from_secs(86_400 * 365));
        let count_ids = u64::try_from(count).unwrap_or(u64::MAX);
        let window = u64::try_from(BATCH_WINDOW).unwrap_or(u64::MAX);
        // Known to the receiver as they are about to go out, the first window's now.
        let Some((first, mut leading)) = self.register(count_ids, count_ids.min(window)) else {
            return (0..count).map(|_| Err(CallFailure::WorkerGone)).collect();
        };
        let ids = first..first + count_ids;
        let mut known_below = first + count_ids.min(window);
        let mut batch = Batch {
            key: first,
            ids: ids.clone(),
            sent_below: first,
            results: (0..count).map(|_| None).collect(),
            missing: count,
        };
        // When the leader last read the clock: a receive needs it, and right after
        // registering, `start` is still as good as a fresh reading.
        let mut now = start;
        let chunk = u64::try_from(CALLS_PER_FRAME).unwrap_or(1);
        let mut answered: u64 = 0;
        loop {
            // Keep up to BATCH_WINDOW requests ahead of their replies, topped up a frame's
            // worth at a time, so the worker finds many calls per receive.
            let window_end = ids
                .start
                .saturating_add(answered.saturating_add(window))
                .min(ids.end);
            let room = window_end.saturating_sub(batch.sent_below);
            if room > 0 && room >= chunk.min(ids.end - batch.sent_below) {
                if window_end > known_below {
                    self.make_known(batch.key, known_below..window_end);
                    known_below = window_end;
                }
                answered += send_up_to(&mut batch, window_end, &mut send);
            }
            if batch.missing == 0 || self.gone.load(Ordering::SeqCst) {
                break;
            }
            if leading {
                let received = self.receive_paced(deadline, now);
                now = Instant::now();
                match received {
                    Ok(Some(message)) => {
                        match self.handle(message, &mut batch, now) {
                            Ok(settled) => answered += settled,
                            Err(reason) => self.lose_worker(Some(reason)),
                        }
                        // A worker that keeps the socket busy (log lines, emits, other
                        // callers' replies) must not keep this call past its deadline.
                        if batch.missing > 0 && now >= deadline {
                            break;
                        }
                    }
                    // Nothing within a tick: look at the deadline and the worker again.
                    Ok(None) => {
                        if now >= deadline {
                            break;
                        }
                    }
                    Err(err) => {
                        self.receive_error(err, deadline);
                        now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                    }
                }
            } else {
                now = Instant::now();
                if now >= deadline {
                    break;
                }
                let (delivered, promoted) = self.collect(&mut batch);
                answered += delivered;
                if promoted {
                    leading = true;
                    now = Instant::now();
                    continue;
                }
                if batch.missing == 0 {
                    continue;
                }
                // Woken by a delivery, a promotion, the worker's end — or the deadline.
                let wait = deadline.saturating_duration_since(now);
                std::thread::park_timeout(if batch.sent_below < ids.end {
                    wait.min(Duration::from_millis(1))
                } else {
                    wait
                });
            }
        }
        self.leave(&mut batch, leading, timeout);
        finish(batch)
    }

    /// Issues `count` request ids and makes the first `known` of them known (so replies
    /// find their caller) before any is sent: the first id (the caller's key), and whether
    /// the caller receives (it got the receive role); `None` if the worker is gone. The
    /// counters written here are written only under the lock, so they need no atomic
    /// read-modify-write.
    fn register(&self, count: u64, known: u64) -> Option<(u64, bool)> {
        let mut state = self.lock();
        if self.gone.load(Ordering::SeqCst) {
            return None;
        }
        let key = self.next_id.load(Ordering::Relaxed);
        self.next_id
            .store(key.saturating_add(count), Ordering::Release);
        self.activity.store(
            self.activity.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        state
            .waiting
            .extend((key..key.saturating_add(known.min(count))).map(|id| (id, key)));
        let leading = state.receiver.is_none();
        state.callers.insert(
            key,
            Waiter {
                thread: (!leading).then(std::thread::current),
                inbox: Vec::new(),
            },
        );
        if leading {
            state.receiver = Some(Receiver::Caller(key));
        }
        Some((key, leading))
    }

    /// Makes more of a caller's requests known, just before they go out: a reply to a
    /// request not sent yet is out of protocol.
    fn make_known(&self, key: u64, ids: Range<u64>) {
        self.lock().waiting.extend(ids.map(|id| (id, key)));
    }

    /// Takes the replies delivered to `batch`'s caller; whether the receive role was passed
    /// to it.
    fn collect(&self, batch: &mut Batch) -> (u64, bool) {
        let mut state = self.lock();
        let promoted = state.receiver == Some(Receiver::Caller(batch.key));
        let inbox = state
            .callers
            .get_mut(&batch.key)
            .map(|waiter| std::mem::take(&mut waiter.inbox))
            .unwrap_or_default();
        drop(state);
        let mut delivered = 0;
        for (id, reply) in inbox {
            if batch.settle(id, Ok(reply)) {
                delivered += 1;
            }
        }
        (delivered, promoted)
    }

    /// The caller is done (all replies in, deadline passed, or the worker gone): forget its
    /// requests, take the replies delivered meanwhile, and pass the receive role on if it
    /// held it.
    fn leave(&self, batch: &mut Batch, leading: bool, timeout: Duration) {
        let next_to_send = batch.sent_below;
        let mut state = self.lock();
        for id in batch.ids.clone() {
            state.waiting.remove(&id);
        }
        if let Some(waiter) = state.callers.remove(&batch.key) {
            for (id, reply) in waiter.inbox {
                batch.settle(id, Ok(reply));
            }
        }
        // Sent and not answered: a reply may still come, late.
        for id in batch.ids.start..next_to_send.min(batch.ids.end) {
            if batch
                .index(id)
                .is_some_and(|index| batch.results[index].is_none())
            {
                state.abandoned.insert(id);
            }
        }
        if leading || state.receiver == Some(Receiver::Caller(batch.key)) {
            pass_role(&mut state);
        }
        drop(state);
        let failure = if self.gone.load(Ordering::SeqCst) {
            CallFailure::WorkerGone
        } else {
            CallFailure::Timeout {
                timeout,
                late_by_end: None,
            }
        };
        // Requests never sent: the worker is gone or the deadline came first.
        for id in next_to_send..batch.ids.end {
            batch.settle(id, Err(failure.clone()));
        }
        batch.fail_rest(&failure);
    }

    /// Handles one message from the worker; `Err` is a protocol violation. Replies to
    /// `own` requests are settled there (how many is the `Ok`); replies to other callers'
    /// requests are handed to them.
    /// `received` is when it arrived.
    fn handle(
        &self,
        message: WorkerMessage,
        own: &mut Batch,
        received: Instant,
    ) -> Result<u64, String> {
        match message {
            WorkerMessage::Reply { id, status, body } => {
                self.replies(own, std::iter::once((id, status, body)), received)
            }
            // The engine packs at most CALLS_PER_FRAME calls to a frame: more replies in one
            // answer calls it never sent together.
            WorkerMessage::Replies { replies } if replies.len() > CALLS_PER_FRAME => Err(format!(
                "{} replies in one frame; the engine sends at most {CALLS_PER_FRAME} calls to a frame",
                replies.len()
            )),
            WorkerMessage::Replies { replies } => self.replies(
                own,
                replies
                    .into_iter()
                    .map(|reply| (reply.id, reply.status, reply.body)),
                received,
            ),
            WorkerMessage::Log { level, message } => {
                self.count_unsolicited(message.len());
                (self.events)(log_line(level, message));
                Ok(0)
            }
            WorkerMessage::LogsDropped { lines } => {
                self.count_unsolicited(0);
                (self.events)(WorkerEvent::OutputDropped { lines });
                Ok(0)
            }
            WorkerMessage::Emit {
                id,
                hook,
                payload,
                depth,
            } => {
                self.count_unsolicited(hook.len() + payload.len());
                // A name longer than any hook's cannot be granted: it is cut before the
                // refusal keeps it in a violation.
                let hook = crate::text::clipped(hook, 64);
                self.emit(id, hook, payload, depth);
                Ok(0)
            }
            other => Err(format!("unexpected {} after the handshake", other.kind())),
        }
    }

    /// Settles or hands over replies. A reply to an id the engine never issued, or a
    /// second reply to a request answered in time (or never sent), is a violation; one to
    /// a request that timed out is late: discarded, and paced.
    fn replies(
        &self,
        own: &mut Batch,
        replies: impl Iterator<Item = (u64, i32, Vec<u8>)>,
        received: Instant,
    ) -> Result<u64, String> {
        let issued = self.next_id.load(Ordering::Acquire);
        let several = own.ids.end - own.ids.start > 1;
        let mut settled = 0;
        let mut state = None;
        for (id, status, body) in replies {
            if id >= issued {
                return Err(format!(
                    "reply to request {id}, which the engine never sent"
                ));
            }
            // A late reply costs at most as a 64 KiB frame: one large answer to a call that
            // timed out must not hold the replies behind it back for long, while a flood
            // of them is still paced (and each is at most one frame to decode).
            let reply_len = body.len().min(16 * UNSOLICITED_BYTES_PER_TOKEN);
            let reply = (status, body, received);
            if own.index(id).is_some() {
                if id >= own.sent_below {
                    return Err(answered_twice(id));
                }
                // A single request is forgotten when its caller leaves.
                if several {
                    state.get_or_insert_with(|| self.lock()).waiting.remove(&id);
                }
                if own.settle(id, Ok(reply)) {
                    settled += 1;
                    continue;
                }
                return Err(answered_twice(id));
            }
            let state = state.get_or_insert_with(|| self.lock());
            let Some(key) = state.waiting.remove(&id) else {
                if !state.abandoned.is_late(id) {
                    return Err(answered_twice(id));
                }
                // Late (its call timed out): settles nothing, and costs as a message that
                // is not a reply, so a flood of them is paced.
                self.count_unsolicited(reply_len);
                continue;
            };
            if let Some(waiter) = state.callers.get_mut(&key) {
                waiter.inbox.push((id, reply));
                if let Some(thread) = &waiter.thread {
                    thread.unpark();
                }
            }
        }
        Ok(settled)
    }

    /// Answers an emit. Whether it may go out is decided here, on the receiving thread
    /// (a refusal starts no thread: a worker flooding forbidden emits costs the engine
    /// about what each costs it); an admitted one calls its subscribers on one of
    /// [`EMIT_THREADS`], so the receiver keeps reading (the subscribers may call back into
    /// this very worker).
    ///
    /// An answer never waits long for room in the socket: a worker that emits without
    /// reading its answers would otherwise fill the engine's send buffer and hold whoever
    /// answers — the receiving caller itself, for a refusal. A refusal is dropped if there
    /// is no room now, an emit's outcome if there is none within [`EMIT_ANSWER_WAIT`]; the
    /// plugin's emit then times out on its side.
    ///
    /// The worker says how deep the call it emitted from was; a hostile one could always
    /// say 0 from inside a chain. The depth used is at least that of the deepest
    /// emit-chain call in flight to it (with calls at several depths in flight, an emit may
    /// be taken as deeper than it is: chains end early, never late). An emit sent after its
    /// calls returned starts a new chain, like any emit outside a call.
    fn emit(&self, id: u64, hook: String, payload: Vec<u8>, depth: u32) {
        let depth = depth.max(self.deepest_emit_call());
        let refuse = |code| {
            let _ = self
                .channel
                .try_send(&EngineMessage::EmitResult { id, code });
        };
        let Some(handler) = self.emit.clone() else {
            refuse(plugboard_sdk::abi::EMIT_DENIED);
            return;
        };
        if self.emits_in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_EMITS_IN_FLIGHT {
            self.emits_in_flight.fetch_sub(1, Ordering::SeqCst);
            refuse(plugboard_sdk::abi::EMIT_FAILED);
            return;
        }
        if let Err(code) = handler.admit(&hook, depth) {
            self.emits_in_flight.fetch_sub(1, Ordering::SeqCst);
            refuse(code);
            return;
        }
        let (channel, in_flight) = (Arc::clone(&self.channel), Arc::clone(&self.emits_in_flight));
        let dispatched = self.emit_threads.run(Box::new(move || {
            let code = handler.dispatch(&hook, &payload, depth);
            let _ = channel.send_before(
                &EngineMessage::EmitResult { id, code },
                Instant::now() + EMIT_ANSWER_WAIT,
            );
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }));
        if dispatched.is_err() {
            self.emits_in_flight.fetch_sub(1, Ordering::SeqCst);
            refuse(plugboard_sdk::abi::EMIT_FAILED);
        }
    }

    /// Counts a message that is not a reply, of `bytes` bytes of text or payload, against
    /// [`WORKER_MESSAGES_PER_SEC`] — one token, and one more per [`UNSOLICITED_BYTES_PER_TOKEN`]
    /// bytes: a worker sending megabyte log lines itself (past its host, which never does)
    /// must not buy a megabyte of the engine's decoding and clipping with one token. Past
    /// the rate, receivers wait ([`Calls::pace`]) before they read on.
    fn count_unsolicited(&self, bytes: usize) {
        let mut tokens = self
            .unsolicited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tokens.refill();
        // Every message spends its tokens, the one that finds none too (a debt), so the
        // rate holds exactly.
        #[allow(clippy::cast_precision_loss)]
        tokens.spend(1.0 + (bytes / UNSOLICITED_BYTES_PER_TOKEN) as f64);
        if !tokens.has_token() {
            self.paced.store(true, Ordering::Relaxed);
        }
    }

    /// Waits (at most until `until`) until the worker's messages other than replies are
    /// within their rate again. Meanwhile nothing is read from the worker, whose sends wait
    /// once the socket is full: a worker flooding them is slowed to the rate.
    fn pace(&self, until: Instant) {
        loop {
            let wait = {
                let mut tokens = self
                    .unsolicited
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                tokens.refill();
                if tokens.has_token() {
                    self.paced.store(false, Ordering::Relaxed);
                    return;
                }
                tokens.time_until(PACED_BATCH)
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.is_gone() {
                return;
            }
            std::thread::sleep(wait.min(left));
        }
    }

    /// The leader's receive, at most until `deadline` (`now` is a recent reading of the
    /// clock), after waiting out the pace of the worker's unsolicited messages if need be.
    fn receive_paced(
        &self,
        deadline: Instant,
        mut now: Instant,
    ) -> Result<Option<WorkerMessage>, IpcError> {
        if self.paced.load(Ordering::Relaxed) {
            self.pace(deadline);
            now = Instant::now();
        }
        self.channel.recv_before_at::<WorkerMessage>(deadline, now)
    }

    /// What a failed receive means: the worker closed its end (it is gone), broke the
    /// protocol (it is killed), or the engine failed ([`Calls::receive_failed`]).
    fn receive_error(&self, err: IpcError, until: Instant) {
        match err {
            IpcError::Closed => self.mark_gone(),
            IpcError::Protocol { reason } => self.lose_worker(Some(reason)),
            IpcError::Io { error: source } => self.receive_failed(&source, until),
            other => self.lose_worker(Some(other.to_string())),
        }
    }

    /// A receive failed in the engine — not for anything the worker sent (that is
    /// `IpcError::Protocol`), but for the engine's own sake: no memory for the receive
    /// buffer, say. The worker is not blamed (a protocol violation would quarantine it):
    /// the failure is reported, at most once a second, and the receiver waits a little
    /// (at most until `until`) before it tries again; calls meanwhile may time out.
    fn receive_failed(&self, source: &std::io::Error, until: Instant) {
        let now = Instant::now();
        let report = {
            let mut said = self
                .receive_failure_said
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = said.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
            if due {
                *said = Some(now);
            }
            due
        };
        if report {
            (self.events)(WorkerEvent::ReceiveFailed {
                reason: source.to_string(),
            });
        }
        std::thread::sleep(RECEIVE_RETRY.min(until.saturating_duration_since(now)));
    }

    /// The worker is lost: with a `violation`, it broke the protocol (reported before the
    /// kill it causes, so the violation precedes the exit in the plugin's events). Every
    /// waiting caller is woken and fails.
    fn lose_worker(&self, violation: Option<String>) {
        if let Some(reason) = violation {
            self.broke_protocol.store(true, Ordering::SeqCst);
            (self.events)(WorkerEvent::ProtocolViolation { reason });
            // By pidfd: the follower may have reaped the worker already (it exited after
            // queueing the bad frame), and its pid may be another process's by now.
            let _ = self.process.kill();
        }
        self.mark_gone();
    }

    /// Whether the worker broke the protocol (and is being killed for it).
    pub(super) fn broke_protocol(&self) -> bool {
        self.broke_protocol.load(Ordering::SeqCst)
    }

    /// No more replies will come (the worker exited, or it is being killed): every waiting
    /// caller and the idle reader are woken.
    pub(super) fn mark_gone(&self) {
        self.gone.store(true, Ordering::SeqCst);
        let state = self.lock();
        for thread in state
            .callers
            .values()
            .filter_map(|waiter| waiter.thread.as_ref())
        {
            thread.unpark();
        }
        if let Some(thread) = &state.idle_reader {
            thread.unpark();
        }
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// The idle reader: receives while no caller does, until the worker is gone.
    pub(super) fn idle_reader(&self) {
        self.lock().idle_reader = Some(std::thread::current());
        let mut nobody = Batch {
            key: 0,
            ids: 0..0,
            sent_below: 0,
            results: Vec::new(),
            missing: 0,
        };
        let mut seen = self.activity.load(Ordering::Relaxed);
        let mut interval = IDLE_CHECK_MIN;
        while !self.is_gone() {
            // Stay out of the way while calls keep coming.
            let now = self.activity.load(Ordering::Relaxed);
            if now != seen || self.lock().receiver.is_some() {
                seen = now;
                std::thread::park_timeout(interval);
                interval = (interval * 2).min(IDLE_CHECK_MAX);
                continue;
            }
            interval = IDLE_CHECK_MIN;
            match self
                .channel
                .wait_readable(Instant::now().checked_add(IDLE_POLL))
            {
                Ok(()) => {}
                Err(IpcError::Io { error: source }) => {
                    self.receive_failed(&source, Instant::now() + RECEIVE_RETRY);
                    continue;
                }
                Err(_) => {
                    self.mark_gone();
                    break;
                }
            }
            {
                let mut state = self.lock();
                if state.receiver.is_some() {
                    continue;
                }
                state.receiver = Some(Receiver::Idle);
            }
            self.read_queued(&mut nobody);
            pass_role(&mut self.lock());
        }
        self.drain_output();
    }

    /// Handles every message queued now (as the receiver).
    fn read_queued(&self, nobody: &mut Batch) {
        while !self.is_gone() {
            if self.paced.load(Ordering::Relaxed) {
                self.pace(Instant::now() + IDLE_CHECK_MAX);
            }
            match self.channel.try_recv::<WorkerMessage>() {
                Ok(Some(message)) => {
                    if let Err(reason) = self.handle(message, nobody, Instant::now()) {
                        self.lose_worker(Some(reason));
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    self.receive_error(err, Instant::now() + RECEIVE_RETRY);
                    break;
                }
            }
        }
    }

    /// After the worker ended: the log lines it sent before are still reported.
    /// At most [`DRAIN_LIMIT`] messages: a process still holding the worker's end could
    /// otherwise keep this thread reading.
    fn drain_output(&self) {
        for _ in 0..DRAIN_LIMIT {
            let Ok(Some(message)) = self.channel.try_recv::<WorkerMessage>() else {
                break;
            };
            match message {
                WorkerMessage::Log { level, message } => (self.events)(log_line(level, message)),
                WorkerMessage::LogsDropped { lines } => {
                    (self.events)(WorkerEvent::OutputDropped { lines });
                }
                _ => {}
            }
        }
    }
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls")
            .field("next_id", &self.next_id)
            .field("gone", &self.gone)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// One frame for a group of calls: a plain Call for one, Calls for more.
fn encode_group(group: &[CallRef<'_>]) -> Result<Vec<u8>, ()> {
    match group {
        [single] => single.frame_into(Vec::new()),
        several => encode_frame(&CallsRef { calls: several }),
    }
    .map_err(drop)
}

/// Sends `batch`'s requests from its `sent_below` up to `end` (as many as go out now); the
/// requests refused (too large for a frame: never sent, so never answered), which count
/// as answered.
fn send_up_to(
    batch: &mut Batch,
    end: u64,
    send: &mut impl FnMut(Range<u64>, &mut Vec<u64>) -> Result<u64, ()>,
) -> u64 {
    let mut refused = Vec::new();
    if let Ok(sent) = send(batch.sent_below..end, &mut refused) {
        batch.sent_below += sent;
    } else {
        // The worker closed its end, or a request cannot be sent (too large): the
        // requests not sent yet fail; the sent ones still get their replies.
        for id in batch.sent_below..batch.ids.end {
            batch.settle(id, Err(CallFailure::WorkerGone));
        }
        batch.sent_below = batch.ids.end;
    }
    let count = u64::try_from(refused.len()).unwrap_or(u64::MAX);
    for id in refused {
        batch.settle(id, Err(CallFailure::WorkerGone));
    }
    count
}

fn answered_twice(id: u64) -> String {
    format!("a second reply to request {id}, which was answered already (or never sent)")
}

/// The receive role goes to a waiting caller (which is unparked) or to nobody.
fn pass_role(state: &mut State) {
    // Every caller still registered waits parked (the one that held the role has left).
    let next = state
        .callers
        .iter()
        .find_map(|(key, waiter)| Some((*key, waiter.thread.clone()?)));
    state.receiver = next.map(|(key, thread)| {
        thread.unpark();
        Receiver::Caller(key)
    });
}

fn finish(batch: Batch) -> Vec<Result<Reply, CallFailure>> {
    batch
        .results
        .into_iter()
        .map(|result| result.unwrap_or(Err(CallFailure::WorkerGone)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::ipc::{BatchedReply, EngineMessage, EngineMessageRef};
    use crate::worker::tests::flood;

    /// A stand-in process for the worker's pid (killed on a violation), and the engine's
    /// `Calls` over one end of a pair whose other end the test plays the worker on.
    struct Fixture {
        calls: Arc<Calls>,
        worker: Arc<Channel>,
        events: mpsc::Receiver<WorkerEvent>,
        child: std::process::Child,
        reader: Option<std::thread::JoinHandle<()>>,
    }

    fn fixture() -> Fixture {
        fixture_with(Arc::default(), None)
    }

    /// A fixture whose engine takes a millisecond to handle each event of the worker while
    /// `slow` is set (a loaded engine, or one writing its log), and answers emits with
    /// `emit`.
    fn fixture_with(slow: Arc<AtomicBool>, emit: Option<EmitHandler>) -> Fixture {
        fixture_on(slow, emit, &EMIT_THREADS)
    }

    /// [`fixture_with`], running admitted emits on `emit_threads`.
    fn fixture_on(
        slow: Arc<AtomicBool>,
        emit: Option<EmitHandler>,
        emit_threads: &'static JobThreads,
    ) -> Fixture {
        let (engine, worker) = Channel::pair().expect("socketpair");
        fixture_over(engine, worker, slow, emit, emit_threads)
    }

    /// [`fixture_on`] over the engine's end `engine` and the worker's end `worker`.
    fn fixture_over(
        engine: Channel,
        worker: Channel,
        slow: Arc<AtomicBool>,
        emit: Option<EmitHandler>,
        emit_threads: &'static JobThreads,
    ) -> Fixture {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let (sink, events) = mpsc::channel();
        let sink = Mutex::new(sink);
        let events_sink: EventSink = Arc::new(move |event| {
            if slow.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = sink
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(event);
        });
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let process = Arc::new(ProcessHandle::open(pid));
        let mut calls = Calls::new(Arc::new(engine), process, events_sink, emit);
        calls.emit_threads = emit_threads;
        let calls = Arc::new(calls);
        let idle = Arc::clone(&calls);
        let reader = std::thread::spawn(move || idle.idle_reader());
        Fixture {
            calls,
            worker: Arc::new(worker),
            events,
            child,
            reader: Some(reader),
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.calls.mark_gone();
            let _ = self.child.kill();
            let _ = self.child.wait();
            // The worker's end closes, which wakes an idle reader waiting on the socket.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.worker.as_fd()),
                nix::sys::socket::Shutdown::Both,
            );
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
        }
    }

    /// Answers every call with its payload, `Calls` frames with their replies in reverse
    /// order, until Shutdown or the end.
    fn echo_worker(worker: &Channel) {
        loop {
            let go_on = worker.recv_request(|message| match message {
                Ok(EngineMessageRef::Call { id, payload, .. }) => {
                    let body = payload.to_vec();
                    worker
                        .send(&WorkerMessage::Reply {
                            id,
                            status: 0,
                            body,
                        })
                        .expect("reply");
                    true
                }
                Ok(EngineMessageRef::Calls { calls }) => {
                    let replies = calls
                        .iter()
                        .rev()
                        .map(|call| BatchedReply {
                            id: call.id,
                            status: 0,
                            body: call.payload.to_vec(),
                        })
                        .collect();
                    worker
                        .send(&WorkerMessage::Replies { replies })
                        .expect("replies");
                    true
                }
                _ => false,
            });
            if !go_on {
                return;
            }
        }
    }

    fn single(calls: &Calls, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, CallFailure> {
        calls
            .request(
                |id| CallRef {
                    id,
                    hook: "echo",
                    payload,
                    depth: 0,
                },
                timeout,
            )
            .map(|outcome| outcome.body)
    }

    /// What a worker sends is kept at a bounded size, however large its frames: a logged
    /// line is cut to [`MAX_LINE`], an emitted name longer than any hook's to 64 bytes
    /// (it is refused either way), so a worker cannot make the engine keep megabytes.
    #[test]
    fn a_worker_s_oversized_log_line_and_hook_name_are_cut_where_they_arrive() {
        let (names, emitted) = mpsc::channel();
        let names = Mutex::new(names);
        let emit: EmitHandler = Arc::new(move |hook: &str, _: &[u8], _| {
            let _ = names.lock().unwrap().send(hook.to_owned());
            plugboard_sdk::abi::EMIT_DENIED
        });
        let fixture = fixture_with(Arc::default(), Some(emit));
        let huge = "z".repeat(512 * 1024);
        fixture
            .worker
            .send(&WorkerMessage::Log {
                level: 2,
                message: huge.clone(),
            })
            .unwrap();
        fixture
            .worker
            .send(&WorkerMessage::Emit {
                id: 1,
                hook: huge,
                payload: Vec::new(),
                depth: 0,
            })
            .unwrap();
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::Output { line, .. }) => {
                assert!(
                    line.len() < crate::worker::MAX_LINE + 64,
                    "{} bytes kept",
                    line.len()
                );
                assert!(
                    line.ends_with("more bytes)"),
                    "{}",
                    &line[line.len() - 40..]
                );
            }
            other => panic!("expected the log line, got {other:?}"),
        }
        let name = emitted.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            name.len() < 64 + 32 && !crate::manifest::is_hook_name(&name),
            "{name}"
        );
    }

    /// A worker cannot make an emit shallower than the emit-chain calls it is serving: a
    /// chain of plugins emitting to each other ends at the engine's bound whatever depth
    /// they claim.
    #[test]
    fn an_emit_is_at_least_as_deep_as_the_deepest_emit_call_in_flight() {
        let (depths, seen) = mpsc::channel();
        let depths = Mutex::new(depths);
        let emit: EmitHandler = Arc::new(move |_: &str, _: &[u8], depth| {
            let _ = depths.lock().unwrap().send(depth);
            plugboard_sdk::abi::EMIT_OK
        });
        let fixture = fixture_with(Arc::default(), Some(emit));
        let emit_claiming_zero = |id| {
            fixture
                .worker
                .send(&WorkerMessage::Emit {
                    id,
                    hook: "chain.next".to_owned(),
                    payload: Vec::new(),
                    depth: 0,
                })
                .unwrap();
            seen.recv_timeout(Duration::from_secs(5)).unwrap()
        };
        {
            let _shallow = fixture.calls.emit_call(1);
            let _deep = fixture.calls.emit_call(3);
            assert_eq!(emit_claiming_zero(1), 3);
        }
        assert_eq!(
            emit_claiming_zero(2),
            0,
            "no emit-chain call in flight any more"
        );
    }

    /// Admits only the hook `granted`, and counts what it dispatches.
    #[derive(Default)]
    struct OnlyGranted {
        dispatched: AtomicUsize,
    }

    impl Emits for OnlyGranted {
        fn admit(&self, hook: &str, _depth: u32) -> Result<(), i32> {
            if hook == "granted" {
                Ok(())
            } else {
                Err(plugboard_sdk::abi::EMIT_DENIED)
            }
        }

        fn dispatch(&self, _hook: &str, _payload: &[u8], _depth: u32) -> i32 {
            self.dispatched.fetch_add(1, Ordering::SeqCst);
            plugboard_sdk::abi::EMIT_OK
        }
    }

    /// A refused emit is answered on the thread that received it: a worker sending
    /// forbidden emits as fast as it can makes the engine start no thread. Admitted emits
    /// run on the emit threads, and a steady stream of them reuses one.
    #[test]
    fn refused_emits_start_no_thread_and_admitted_ones_reuse_one() {
        let emit_threads = Box::leak(Box::new(JobThreads::new(
            "pb-test-emit",
            Duration::from_secs(60),
        )));
        let handler = Arc::new(OnlyGranted::default());
        let fixture = fixture_on(Arc::default(), Some(handler.clone()), emit_threads);
        let emit = |id, hook: &str| {
            fixture
                .worker
                .send(&WorkerMessage::Emit {
                    id,
                    hook: hook.to_owned(),
                    payload: b"payload".to_vec(),
                    depth: 0,
                })
                .unwrap();
            match fixture
                .worker
                .recv_timeout::<EngineMessage>(Duration::from_secs(5))
            {
                Ok(Some(EngineMessage::EmitResult { id: answered, code })) => {
                    assert_eq!(answered, id);
                    code
                }
                other => panic!("emit {id}: expected its answer, got {other:?}"),
            }
        };
        for id in 1..=2_000 {
            assert_eq!(emit(id, "forbidden"), plugboard_sdk::abi::EMIT_DENIED);
        }
        assert_eq!(
            emit_threads.threads_started(),
            0,
            "a refusal started a thread"
        );
        assert_eq!(handler.dispatched.load(Ordering::SeqCst), 0);

        for id in 2_001..=2_200 {
            assert_eq!(emit(id, "granted"), plugboard_sdk::abi::EMIT_OK);
            // The answer is sent just before the thread goes back to waiting.
            let deadline = Instant::now() + Duration::from_secs(5);
            while emit_threads.threads_idle() == 0 {
                assert!(Instant::now() < deadline, "the emit thread never came back");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        assert_eq!(handler.dispatched.load(Ordering::SeqCst), 200);
        assert_eq!(emit_threads.threads_started(), 1);
    }

    /// Floods an engine's channel with log frames of `line(id)` for 1.5 s, as a worker
    /// writing them itself would: how many the engine read, and over how long.
    fn log_lines_read_in_a_flood(line: fn(u64) -> String) -> (u32, f64) {
        let fixture = fixture();
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let (worker, stop) = (Arc::clone(&fixture.worker), Arc::clone(&stop));
            std::thread::spawn(move || {
                flood(&worker, &stop, |id| WorkerMessage::Log {
                    level: 2,
                    message: line(id),
                });
            })
        };
        let started = Instant::now();
        let mut lines = 0u32;
        while started.elapsed() < Duration::from_millis(1500) {
            if let Ok(WorkerEvent::Output { .. }) =
                fixture.events.recv_timeout(Duration::from_millis(50))
            {
                lines += 1;
            }
        }
        let took = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        drop(fixture);
        flooder.join().expect("flooder ends");
        (lines, took)
    }

    /// A worker writing log frames itself, as fast as it can, is read at
    /// [`WORKER_MESSAGES_PER_SEC`]: the rest wait in the socket, and its sends with them.
    #[test]
    fn a_flood_of_log_frames_is_read_at_the_message_rate() {
        let (lines, took) = log_lines_read_in_a_flood(|id| format!("line {id}"));
        let bound = WORKER_MESSAGES_PER_SEC * (1.0 + took);
        assert!(
            f64::from(lines) <= bound * 1.05,
            "{lines} log frames read in {took:.2} s, past {bound:.0}"
        );
        assert!(
            f64::from(lines) >= WORKER_MESSAGES_PER_SEC,
            "{lines} log frames read in {took:.2} s: held back more than the rate needs"
        );
    }

    /// Long log frames cost their length: a worker sending 64 KiB lines itself is read at
    /// a seventeenth of the rate of short ones, not at the same rate of frames.
    #[test]
    fn a_flood_of_long_log_frames_is_read_at_a_rate_by_their_bytes() {
        const LENGTH: usize = 64 * 1024;
        let (lines, took) = log_lines_read_in_a_flood(|_| "x".repeat(LENGTH));
        #[allow(clippy::cast_precision_loss)]
        let tokens_each = 1.0 + (LENGTH / UNSOLICITED_BYTES_PER_TOKEN) as f64;
        let bound = WORKER_MESSAGES_PER_SEC * (1.0 + took) / tokens_each;
        assert!(
            f64::from(lines) <= bound * 1.05,
            "{lines} long log frames read in {took:.2} s, past {bound:.0}"
        );
        assert!(lines > 0, "none read");
    }

    /// A receive that fails in the engine — here its end is a pipe, not a socket; under
    /// memory pressure the receive buffer's mapping fails the same way — is the engine's
    /// trouble: said, and tried again, never taken for the worker breaking the protocol
    /// (which would kill and quarantine it).
    #[test]
    fn a_receive_failing_in_the_engine_is_said_not_blamed_on_the_worker() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let mut fixture = fixture_over(
            Channel::from_fd(read_end),
            Channel::from_fd(write_end),
            Arc::default(),
            None,
            &EMIT_THREADS,
        );
        nix::unistd::write(fixture.worker.as_fd(), b"PB").unwrap();
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::ReceiveFailed { reason }) => assert!(!reason.is_empty()),
            other => panic!("expected the failed receive, got {other:?}"),
        }
        // Tried again (every 10 ms) and said once within the second; nothing else.
        let later: Vec<WorkerEvent> = fixture
            .events
            .recv_timeout(Duration::from_millis(300))
            .into_iter()
            .collect();
        assert!(later.is_empty(), "{later:?}");
        assert!(!fixture.calls.broke_protocol() && !fixture.calls.is_gone());
        assert!(
            fixture.child.try_wait().unwrap().is_none(),
            "the worker was killed"
        );
        // Dropped: the idle reader, retrying on the unread bytes, sees it gone.
    }

    #[test]
    fn concurrent_callers_each_get_their_own_reply() {
        let fixture = fixture();
        let worker = Arc::clone(&fixture.worker);
        let echo = std::thread::spawn(move || echo_worker(&worker));
        std::thread::scope(|scope| {
            for thread in 0..8u32 {
                let calls = &fixture.calls;
                scope.spawn(move || {
                    for n in 0..300u32 {
                        let payload = format!("{thread}/{n}").into_bytes();
                        let body = single(calls, &payload, Duration::from_secs(10));
                        assert_eq!(body.as_deref(), Ok(&payload[..]));
                    }
                });
            }
        });
        assert_eq!(fixture.calls.in_flight(), 0);
        fixture
            .worker
            .send(&EngineMessage::Shutdown)
            .expect("shutdown");
        drop(fixture);
        echo.join().expect("echo ends");
    }

    #[test]
    fn batches_are_answered_in_order_of_the_calls_next_to_single_calls() {
        let fixture = fixture();
        let worker = Arc::clone(&fixture.worker);
        let echo = std::thread::spawn(move || echo_worker(&worker));
        let payloads: Vec<Vec<u8>> = (0..1000u32)
            .map(|n| n.to_le_bytes().repeat(usize::try_from(n % 7).unwrap_or(0)))
            .collect();
        let batch: Vec<(&str, &[u8])> = payloads.iter().map(|p| ("echo", &p[..])).collect();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..200 {
                    let body = single(&fixture.calls, b"single", Duration::from_secs(10));
                    assert_eq!(body.as_deref(), Ok(&b"single"[..]));
                }
            });
            for _ in 0..3 {
                let results = fixture
                    .calls
                    .request_many(&batch, 0, Duration::from_secs(10));
                assert_eq!(results.len(), payloads.len());
                for (result, payload) in results.iter().zip(&payloads) {
                    assert_eq!(result.as_ref().map(|r| &r.1), Ok(payload));
                }
            }
        });
        assert_eq!(fixture.calls.in_flight(), 0);
        drop(fixture);
        echo.join().expect("echo ends");
    }

    /// A worker answering a pipelined call the engine has not sent yet (it can guess the
    /// ids) breaks the protocol.
    #[test]
    fn a_reply_to_a_call_not_sent_yet_is_a_violation() {
        let fixture = fixture();
        let worker = Arc::clone(&fixture.worker);
        let guesser = std::thread::spawn(move || {
            let first = match worker.recv::<EngineMessage>().unwrap() {
                EngineMessage::Calls { calls } => calls[0].id,
                other => panic!("expected packed calls, got {other:?}"),
            };
            // The batch keeps 256 calls ahead of their replies: this one is not out yet.
            let ahead = first + 290;
            worker
                .send(&WorkerMessage::Reply {
                    id: ahead,
                    status: 0,
                    body: Vec::new(),
                })
                .expect("guessed reply");
            ahead
        });
        let batch: Vec<(&str, &[u8])> = (0..300).map(|_| ("echo", &b"x"[..])).collect();
        let results = fixture
            .calls
            .request_many(&batch, 0, Duration::from_secs(10));
        assert!(
            results
                .iter()
                .all(|result| result == &Err(CallFailure::WorkerGone)),
            "the batch fails with the worker"
        );
        let ahead = guesser.join().expect("guesser ends");
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::ProtocolViolation { reason }) => {
                assert!(reason.contains(&format!("request {ahead}")), "{reason}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn a_call_too_large_for_a_frame_fails_alone() {
        let fixture = fixture();
        let worker = Arc::clone(&fixture.worker);
        let echo = std::thread::spawn(move || echo_worker(&worker));
        let huge = vec![0u8; crate::ipc::MAX_FRAME_BYTES];
        let batch = [
            ("echo", &b"a"[..]),
            ("echo", &huge[..]),
            ("echo", &b"c"[..]),
        ];
        let results = fixture
            .calls
            .request_many(&batch, 0, Duration::from_secs(10));
        assert_eq!(results[0].as_ref().map(|r| &r.1[..]), Ok(&b"a"[..]));
        assert_eq!(
            results[1].as_ref().map(|_| ()),
            Err(&CallFailure::WorkerGone)
        );
        assert_eq!(results[2].as_ref().map(|r| &r.1[..]), Ok(&b"c"[..]));
        drop(fixture);
        echo.join().expect("echo ends");
    }

    #[test]
    fn a_timed_out_call_fails_and_its_late_reply_is_discarded() {
        let fixture = fixture();
        let started = Instant::now();
        let result = single(&fixture.calls, b"slow", Duration::from_millis(50));
        assert_eq!(
            result,
            Err(CallFailure::Timeout {
                timeout: Duration::from_millis(50),
                late_by_end: None,
            })
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // The late reply arrives, then the answer to the next call.
        let late = fixture.worker.recv::<EngineMessage>().expect("the call");
        let EngineMessage::Call { id, .. } = late else {
            panic!("expected the call, got {late:?}");
        };
        fixture
            .worker
            .send(&WorkerMessage::Reply {
                id,
                status: 0,
                body: b"late".to_vec(),
            })
            .expect("late reply");
        let worker = Arc::clone(&fixture.worker);
        let echo = std::thread::spawn(move || echo_worker(&worker));
        assert_eq!(
            single(&fixture.calls, b"next", Duration::from_secs(10)).as_deref(),
            Ok(&b"next"[..])
        );
        assert!(fixture.events.try_recv().is_err(), "no violation");
        drop(fixture);
        echo.join().expect("echo ends");
    }

    /// Late and repeated replies settle nothing and cost as messages that are not replies:
    /// a worker repeating a stale reply of 64 KiB is read at the byte-paced rate, and a
    /// frame of more replies than the engine ever sends calls together is a violation.
    #[test]
    fn stale_replies_are_paced_and_an_oversized_batch_is_a_violation() {
        const LENGTH: usize = 64 * 1024;
        let fixture = fixture();
        let timed_out = single(&fixture.calls, b"slow", Duration::from_millis(20));
        assert!(timed_out.is_err());
        let EngineMessage::Call { id, .. } = fixture.worker.recv::<EngineMessage>().unwrap() else {
            panic!("expected the call");
        };
        let body = vec![b'x'; LENGTH];
        let started = Instant::now();
        let mut sent = 0u32;
        while started.elapsed() < Duration::from_millis(1500) {
            let stale = WorkerMessage::Reply {
                id,
                status: 0,
                body: body.clone(),
            };
            match fixture.worker.try_send(&stale) {
                Ok(true) => sent += 1,
                Ok(false) => std::thread::sleep(Duration::from_micros(200)),
                Err(err) => panic!("the engine's end closed: {err}"),
            }
        }
        let took = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let tokens_each = 1.0 + (LENGTH / UNSOLICITED_BYTES_PER_TOKEN) as f64;
        // What was read at the rate, and what the socket's buffer holds besides.
        let bound = WORKER_MESSAGES_PER_SEC * (1.0 + took) / tokens_each + 64.0;
        assert!(
            f64::from(sent) <= bound * 1.05,
            "{sent} stale replies taken in {took:.2} s, past {bound:.0}"
        );
        assert!(fixture.events.try_recv().is_err(), "no violation");

        let replies = (0..=CALLS_PER_FRAME)
            .map(|_| crate::ipc::BatchedReply {
                id,
                status: 0,
                body: Vec::new(),
            })
            .collect();
        fixture
            .worker
            .send(&WorkerMessage::Replies { replies })
            .unwrap();
        match fixture.events.recv_timeout(Duration::from_secs(10)) {
            Ok(WorkerEvent::ProtocolViolation { reason }) => {
                assert!(reason.contains("65 replies in one frame"), "{reason}");
            }
            other => panic!("expected the violation, got {other:?}"),
        }
    }

    /// The timeout of a call the worker never answers (while it keeps the engine busy).
    const UNANSWERED_TIMEOUT: Duration = Duration::from_millis(200);

    /// Makes a call the worker never answers: its outcome and how long it took.
    fn call_never_answered(calls: &Calls) -> (Result<Vec<u8>, CallFailure>, Duration) {
        let started = Instant::now();
        let result = single(calls, b"never answered", UNANSWERED_TIMEOUT);
        (result, started.elapsed())
    }

    fn assert_timed_out_at_its_deadline(result: &Result<Vec<u8>, CallFailure>, waited: Duration) {
        assert_eq!(
            result,
            &Err(CallFailure::Timeout {
                timeout: UNANSWERED_TIMEOUT,
                late_by_end: None,
            })
        );
        assert!(
            waited < Duration::from_secs(1),
            "the call waited {waited:?} for a {UNANSWERED_TIMEOUT:?} timeout"
        );
    }

    #[test]
    fn a_worker_that_floods_log_lines_cannot_hold_a_call_past_its_deadline() {
        // Each line takes the engine a millisecond: the worker easily keeps the queue full.
        let slow = Arc::new(AtomicBool::new(true));
        let fixture = fixture_with(Arc::clone(&slow), None);
        let stop = Arc::new(AtomicBool::new(false));
        let (call_arrived, arrival) = mpsc::channel::<()>();
        // Once the call is out (its caller receiving, as the leader), two threads keep the
        // engine's receive queue full of log lines: every receive finds one waiting.
        let flooders: Vec<_> = (0..2)
            .map(|flooder| {
                let (worker, stop) = (Arc::clone(&fixture.worker), Arc::clone(&stop));
                let call_arrived = call_arrived.clone();
                std::thread::spawn(move || {
                    if flooder == 0 {
                        let _ = worker.recv::<EngineMessage>();
                        let _ = call_arrived.send(());
                    }
                    flood(&worker, &stop, |_| WorkerMessage::Log {
                        level: 2,
                        message: "busy".to_owned(),
                    });
                })
            })
            .collect();
        drop(call_arrived);
        let (result, waited) = call_never_answered(&fixture.calls);
        stop.store(true, Ordering::SeqCst);
        slow.store(false, Ordering::SeqCst);
        arrival.recv().expect("the call reached the worker");
        assert_timed_out_at_its_deadline(&result, waited);
        drop(fixture);
        for flooder in flooders {
            flooder.join().expect("flooder ends");
        }
    }

    /// A worker that emits without ever reading fills the engine's send buffer with the
    /// answers; the caller receiving (who answers the refusals) must not block on them.
    #[test]
    fn a_worker_that_emits_without_reading_its_answers_cannot_hold_a_call() {
        let fixture = fixture();
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let (worker, stop) = (Arc::clone(&fixture.worker), Arc::clone(&stop));
            std::thread::spawn(move || {
                let _ = worker.recv::<EngineMessage>();
                flood(&worker, &stop, |id| WorkerMessage::Emit {
                    id,
                    hook: "loop".to_owned(),
                    payload: Vec::new(),
                    depth: 0,
                });
                // Only now does it read (what the engine could send), so an engine stuck
                // in a send gets going again and the test ends.
                while let Ok(Some(_)) =
                    worker.recv_timeout::<EngineMessage>(Duration::from_millis(200))
                {
                }
            })
        };
        let (result, waited) = call_never_answered(&fixture.calls);
        stop.store(true, Ordering::SeqCst);
        assert_timed_out_at_its_deadline(&result, waited);
        drop(fixture);
        flooder.join().expect("flooder ends");
    }

    #[test]
    fn a_reply_to_a_request_never_sent_is_a_violation_and_fails_every_caller() {
        let fixture = fixture();
        let worker = Arc::clone(&fixture.worker);
        let forger = std::thread::spawn(move || {
            let _ = worker.recv::<EngineMessage>();
            worker
                .send(&WorkerMessage::Reply {
                    id: 999_999,
                    status: 0,
                    body: Vec::new(),
                })
                .expect("forged reply");
        });
        let result = single(&fixture.calls, b"x", Duration::from_secs(10));
        assert_eq!(result, Err(CallFailure::WorkerGone));
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::ProtocolViolation { reason }) => {
                assert!(reason.contains("999999"), "{reason}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
        assert_eq!(
            single(&fixture.calls, b"y", Duration::from_secs(1)),
            Err(CallFailure::WorkerGone)
        );
        forger.join().expect("forger ends");
    }

    /// A worker answering a call it answered in time once more breaks the protocol (a late
    /// reply to a call that timed out does not: see above).
    #[test]
    fn a_second_reply_to_a_call_answered_in_time_is_a_violation() {
        let fixture = fixture();
        let worker = Arc::clone(&fixture.worker);
        let repeater = std::thread::spawn(move || {
            let EngineMessage::Call { id, .. } = worker.recv::<EngineMessage>().unwrap() else {
                panic!("expected the call");
            };
            for _ in 0..2 {
                worker
                    .send(&WorkerMessage::Reply {
                        id,
                        status: 0,
                        body: b"once".to_vec(),
                    })
                    .expect("reply");
            }
            id
        });
        assert_eq!(
            single(&fixture.calls, b"x", Duration::from_secs(10)).as_deref(),
            Ok(&b"once"[..])
        );
        let id = repeater.join().expect("repeater ends");
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::ProtocolViolation { reason }) => {
                assert!(
                    reason.contains(&format!("a second reply to request {id}")),
                    "{reason}"
                );
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn between_calls_the_idle_reader_reports_log_lines_and_violations() {
        let fixture = fixture();
        fixture
            .worker
            .send(&WorkerMessage::Log {
                level: 2,
                message: "between calls".to_owned(),
            })
            .expect("log");
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::Output { line, .. }) => assert_eq!(line, "between calls"),
            other => panic!("expected the log line, got {other:?}"),
        }
        fixture
            .worker
            .send(&WorkerMessage::Ready)
            .expect("out of protocol");
        match fixture.events.recv_timeout(Duration::from_secs(5)) {
            Ok(WorkerEvent::ProtocolViolation { reason }) => {
                assert!(reason.contains("Ready"), "{reason}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}
