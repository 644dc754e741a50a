//! Hook statistics per (plugin, hook): calls, errors, timeouts, in flight, calls/s, latency
//! percentiles (`hdrhistogram`) over the last 60 s and since start, mean and total time,
//! last call, last error. Snapshots carry the numbers, never the histograms.

pub mod dispatch;
mod handle;
pub(crate) mod traffic;

pub use handle::{HookCallError, HookHandle, HookReply};

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use crate::events::unix_millis;
use crate::manifest::Priority;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes.
const MAX_LATENCY_US: u64 = 600_000_000;
/// The recent window: twelve buckets of five seconds, the last minute.
const BUCKET_SECONDS: u64 = 5;
const WINDOW_BUCKETS: u64 = 12;
const WINDOW_SECONDS: u64 = BUCKET_SECONDS * WINDOW_BUCKETS;
/// The buckets `calls_per_sec_10s` counts: the current one and the one before.
const LATEST_BUCKETS: u64 = 2;

/// The since-start histogram: 2 significant digits, as the recent window, with 64-bit
/// counts: 23 KiB per hook (3 digits took 172 KiB, 172 MiB for a thousand hooks). Its
/// counts are written once now, so its pages are resident from the start and the
/// engine's memory does not creep for hours as calls reach new latency values.
fn new_histogram() -> Histogram<u64> {
    let mut histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
        .expect("static histogram bounds are valid");
    histogram.reset();
    histogram
}

/// One bucket of the recent window: 2 significant digits (1 % of the value, plenty for a
/// p99 on a dashboard) and 32-bit counts keep it at 12 KiB. With 3 digits and 64-bit
/// counts a bucket was 172 KiB, and a busy engine held up to 60 of them per hook.
fn new_window_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("static histogram bounds are valid")
}

/// How one call ended, from the engine's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    Ok,
    /// The plugin answered with an error status and message.
    Error {
        message: String,
    },
    /// No answer within the timeout; a late reply is discarded.
    Timeout,
    /// Refused before reaching the plugin (too many in flight).
    Busy,
    /// The worker died (or was killed) before it answered: an error, but not a latency —
    /// how long the call waited says nothing of the plugin's speed.
    Gone,
}

#[derive(Debug)]
struct Bucket {
    /// Seconds since start divided by [`BUCKET_SECONDS`].
    index: u64,
    /// When its five seconds end, on [`call_clock`]: a call before then is recorded here
    /// with one comparison, no arithmetic on the clock.
    ends: quanta::Instant,
    histogram: Histogram<u32>,
    calls: u64,
}

/// The lock around a hook's record. Taken once per call for a few tens of nanoseconds, and
/// by a snapshot for microseconds: a spin lock whose release is a plain store spends one
/// atomic read-modify-write per call where a mutex spends two (its release must learn
/// whether to wake a waiter) — 8–10 ns on this VM, a tenth of an in-process call's budget.
/// A thread that finds it held yields its CPU until it is free.
type RecordLock = spin::mutex::SpinMutex<HookRecord, spin::relax::Yield>;

/// Live statistics of one hook of one plugin, shared by every thread that calls it.
///
/// The call path touches it twice: [`HookStats::begin`] (one atomic add, which is also the
/// `max_in_flight` check) and [`HookStats::end`] (one short lock around the counters and
/// the current bucket's histogram, and one read of the call clock unless the caller brings
/// the call's end, as [`HookStats::end_at`]). A call is recorded in one histogram only: the
/// since-start one is the buckets that left the recent window, plus the window's. Calls in
/// flight are the calls begun less those ended; `ended` is written only under the lock, so
/// it needs no atomic read-modify-write of its own — on this VM each of those costs 8–9 ns.
#[derive(Debug)]
pub struct HookStats {
    begun: AtomicU64,
    ended: AtomicU64,
    record: RecordLock,
}

/// What [`HookStats`] keeps under its lock.
#[derive(Debug)]
struct HookRecord {
    /// When the statistics began, on [`call_clock`].
    started: quanta::Instant,
    calls: u64,
    errors: u64,
    timeouts: u64,
    busy: u64,
    /// Calls whose worker was gone before it answered (counted in `errors`, not timed).
    gone: u64,
    total: Duration,
    /// The calls of the buckets that left the window: since start, less the window.
    retired: Histogram<u64>,
    window: VecDeque<Bucket>,
    /// When the last call began, on [`call_clock`].
    last_call: Option<quanta::Instant>,
    last_error: Option<(SystemTime, String)>,
}

impl Default for HookStats {
    fn default() -> Self {
        Self::new()
    }
}

impl HookStats {
    pub fn new() -> Self {
        Self {
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            record: RecordLock::new(HookRecord {
                started: call_clock().now(),
                calls: 0,
                errors: 0,
                timeouts: 0,
                busy: 0,
                gone: 0,
                total: Duration::ZERO,
                retired: new_histogram(),
                window: VecDeque::new(),
                last_call: None,
                last_error: None,
            }),
        }
    }

    fn record(&self) -> spin::mutex::SpinMutexGuard<'_, HookRecord> {
        self.record.lock()
    }

    /// Calls begun so far (refused ones included).
    pub fn begun(&self) -> u64 {
        self.begun.load(Ordering::Acquire)
    }

    /// Calls ended so far (refused ones included).
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// Calls sent and not answered yet.
    pub fn in_flight(&self) -> u64 {
        let ended = self.ended.load(Ordering::Acquire);
        self.begun.load(Ordering::Acquire).saturating_sub(ended)
    }

    /// A call is about to be sent, unless `max_in_flight` calls already are: then it is
    /// counted as busy and `false` comes back. Every `true` must be followed by
    /// [`HookStats::end`].
    pub fn begin(&self, max_in_flight: u64) -> bool {
        self.begin_within([self], max_in_flight)
    }

    /// A call of this hook is about to be sent, unless its plugin already has `max` calls
    /// in flight over `hooks` (all of its hooks, this one among them): then it is counted
    /// as busy and `false` comes back. The call is counted first and the plugin's total
    /// read after, so callers racing for the last place may all be refused, never all
    /// admitted. One atomic read-modify-write, as for a hook alone: a plugin-wide counter
    /// would add two to every call. Every `true` must be followed by [`HookStats::end`].
    pub fn begin_within<'a>(
        &self,
        hooks: impl IntoIterator<Item = &'a HookStats>,
        max: u64,
    ) -> bool {
        // Sequentially consistent, the count and the reads after it: two callers of
        // different hooks each see the other's count or the other sees theirs (release
        // and acquire alone would let both miss both). On x86 this costs nothing more.
        self.begun.fetch_add(1, Ordering::SeqCst);
        let in_flight: u64 = hooks
            .into_iter()
            .map(|hook| {
                let ended = hook.ended.load(Ordering::SeqCst);
                hook.begun.load(Ordering::SeqCst).saturating_sub(ended)
            })
            .sum();
        if in_flight > max {
            self.end(Duration::ZERO, &CallResult::Busy);
            return false;
        }
        true
    }

    /// A call begun with [`HookStats::begin`] ended after `elapsed`.
    pub fn end(&self, elapsed: Duration, result: &CallResult) {
        self.end_at(elapsed, result, call_clock().now());
    }

    /// As [`HookStats::end`], for a call that ended at `finished` on the call clock (a
    /// caller that timed the call already has the time).
    pub fn end_at(&self, elapsed: Duration, result: &CallResult, finished: quanta::Instant) {
        let mut record = self.record();
        record.record(elapsed, result, finished);
        // Only ever written under the lock: a plain store of the next value is enough.
        self.ended
            .store(self.ended.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// The numbers, as of now.
    pub fn snapshot(&self) -> HookStatsSnapshot {
        self.snapshot_at(call_clock().now())
    }

    /// The numbers as of `clock` on the call clock.
    fn snapshot_at(&self, clock: quanta::Instant) -> HookStatsSnapshot {
        let in_flight = self.in_flight();
        self.record().snapshot(in_flight, clock)
    }
}

impl HookRecord {
    fn record(&mut self, elapsed: Duration, result: &CallResult, now: quanta::Instant) {
        self.calls += 1;
        match result {
            CallResult::Ok => {}
            CallResult::Error { message } => {
                self.errors += 1;
                self.last_error = Some((
                    SystemTime::now(),
                    crate::text::clip(message, crate::text::DETAIL_MAX),
                ));
            }
            CallResult::Timeout => {
                self.timeouts += 1;
                self.last_error = Some((
                    SystemTime::now(),
                    format!("timed out after {} ms", elapsed.as_millis()),
                ));
            }
            CallResult::Busy => {
                self.busy += 1;
                self.last_call = Some(now);
                return;
            }
            CallResult::Gone => {
                self.errors += 1;
                self.gone += 1;
                self.last_error = Some((SystemTime::now(), "the worker is gone".to_owned()));
                self.last_call = Some(now.checked_sub(elapsed).unwrap_or(now).max(self.started));
                return;
            }
        }
        // The call's end serves the window's bucket and the last call's time (when the call
        // began: its end less its duration).
        self.last_call = Some(now.checked_sub(elapsed).unwrap_or(now).max(self.started));
        self.total += elapsed;
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        // Calls from several threads may end out of order by a hair: one that ended just
        // before the current bucket began is counted in it.
        if self.window.back().is_none_or(|bucket| now >= bucket.ends) {
            self.open_bucket(now);
        }
        if let Some(bucket) = self.window.back_mut() {
            let _ = bucket.histogram.record(micros);
            bucket.calls += 1;
        }
    }

    /// Starts the bucket `now` falls in, retiring those that left the window. Under steady
    /// traffic one leaves as one starts, and its histogram is reused: no allocation.
    fn open_bucket(&mut self, now: quanta::Instant) {
        let index = self.bucket_at(now);
        let mut spare = None;
        while self
            .window
            .front()
            .is_some_and(|bucket| bucket.index + WINDOW_BUCKETS <= index)
        {
            if let Some(bucket) = self.window.pop_front() {
                add_counts(&mut self.retired, &bucket.histogram);
                spare = Some(bucket.histogram);
            }
        }
        let histogram = match spare {
            Some(mut histogram) => {
                histogram.reset();
                histogram
            }
            None => new_window_histogram(),
        };
        self.window.push_back(Bucket {
            index,
            ends: self.started + Duration::from_secs((index + 1) * BUCKET_SECONDS),
            histogram,
            calls: 0,
        });
    }

    /// Whole seconds since the statistics began, at `now`.
    fn second_at(&self, now: quanta::Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    fn bucket_at(&self, now: quanta::Instant) -> u64 {
        self.second_at(now) / BUCKET_SECONDS
    }

    fn snapshot(&self, in_flight: u64, clock: quanta::Instant) -> HookStatsSnapshot {
        let now = self.second_at(clock);
        let index = now / BUCKET_SECONDS;
        let mut recent = new_window_histogram();
        let mut recent_calls = 0;
        let mut latest_calls = 0;
        // Copied only when the window holds calls: an idle hook's snapshot copies nothing.
        let mut since_start = Cow::Borrowed(&self.retired);
        for bucket in &self.window {
            if bucket.index + WINDOW_BUCKETS > index {
                let _ = recent.add(&bucket.histogram);
                recent_calls += bucket.calls;
                if bucket.index + LATEST_BUCKETS > index {
                    latest_calls += bucket.calls;
                }
            } else {
                // Out of the window, not retired yet (no call since).
                add_counts(since_start.to_mut(), &bucket.histogram);
            }
        }
        if !recent.is_empty() {
            add_counts(since_start.to_mut(), &recent);
        }
        // Calls per second over the window actually covered: from the start of its oldest
        // bucket (or of the plugin) to now.
        let window_start = index.saturating_sub(WINDOW_BUCKETS - 1) * BUCKET_SECONDS;
        let covered = (now + 1 - window_start).min(WINDOW_SECONDS);
        #[allow(clippy::cast_precision_loss)]
        let calls_per_sec = recent_calls as f64 / covered as f64;
        let latest_start = index.saturating_sub(LATEST_BUCKETS - 1) * BUCKET_SECONDS;
        let latest_covered = (now + 1 - latest_start).min(LATEST_BUCKETS * BUCKET_SECONDS);
        #[allow(clippy::cast_precision_loss)]
        let calls_per_sec_10s = latest_calls as f64 / latest_covered as f64;
        let measured = self.calls - self.busy - self.gone;
        // The call clock is monotonic; the wall clock now, less how long ago, dates it.
        let wall_now = SystemTime::now();
        let last_call = self.last_call.map(|at| {
            wall_now
                .checked_sub(clock.saturating_duration_since(at))
                .unwrap_or(wall_now)
        });
        HookStatsSnapshot {
            calls: self.calls,
            errors: self.errors,
            timeouts: self.timeouts,
            busy: self.busy,
            in_flight,
            calls_per_sec,
            calls_per_sec_10s,
            recent: Percentiles::of(&recent),
            since_start: Percentiles::of(&since_start),
            mean_us: if measured == 0 {
                0
            } else {
                u64::try_from(self.total.as_micros() / u128::from(measured)).unwrap_or(u64::MAX)
            },
            total_ms: u64::try_from(self.total.as_millis()).unwrap_or(u64::MAX),
            last_call: last_call.map(unix_millis),
            last_error: self.last_error.as_ref().map(|(_, message)| message.clone()),
            last_error_at: self.last_error.as_ref().map(|(when, _)| unix_millis(*when)),
            priority: None,
            timeout_ms: None,
            no_traffic: false,
        }
    }
}

/// Adds a window bucket's counts (32-bit) to a since-start histogram (64-bit): one record
/// per distinct latency, not per call.
fn add_counts(into: &mut Histogram<u64>, from: &Histogram<u32>) {
    for value in from.iter_recorded() {
        let _ = into.record_n(value.value_iterated_to(), u64::from(value.count_at_value()));
    }
}

/// The clock calls are timed with and their statistics kept on: the TSC read directly
/// (calibrated once), 11 ns a read here against 29 ns for `std::time::Instant` — an
/// in-process call takes a few hundred nanoseconds, so the clock is a good part of its
/// statistics' cost. `quanta` falls back to the OS clock where the TSC is not reliable.
pub(crate) fn call_clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Latency percentiles in microseconds (0 when there were no calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    fn of<T: hdrhistogram::Counter>(histogram: &Histogram<T>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

/// One hook's statistics in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookStatsSnapshot {
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Calls refused because too many were in flight.
    pub busy: u64,
    pub in_flight: u64,
    /// Over the last minute (55 to 60 s: the window moves in 5-second steps).
    pub calls_per_sec: f64,
    /// Over the last 5 to 10 s: the rate now, which falls to 0 within 10 s of the last call
    /// (a dashboard's live figure; `calls_per_sec` is the steadier one).
    #[serde(default)]
    pub calls_per_sec_10s: f64,
    /// Latency over the last minute (as `calls_per_sec`), to 2 significant digits.
    pub recent: Percentiles,
    /// Latency since the plugin started.
    pub since_start: Percentiles,
    pub mean_us: u64,
    pub total_ms: u64,
    /// Unix time in milliseconds.
    pub last_call: Option<u64>,
    pub last_error: Option<String>,
    /// Unix time in milliseconds.
    pub last_error_at: Option<u64>,
    /// The manifest's `[hooks.<name>].priority` (`None`: a hook it does not subscribe to).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The hook's effective timeout (its own, else the plugin's, else the host's default).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The manifest keeps it from generated traffic (`traffic = false`: a hook that does
    /// harm or costs much on purpose).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_traffic: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose worker died before answering is an error with a reason, but its wait
    /// is no latency of the plugin's: the percentiles and the mean leave it out.
    #[test]
    fn a_call_whose_worker_is_gone_is_an_error_without_a_latency() {
        let stats = HookStats::new();
        assert!(stats.begin(u64::MAX));
        stats.end(Duration::from_millis(3), &CallResult::Ok);
        assert!(stats.begin(u64::MAX));
        stats.end(Duration::from_secs(2), &CallResult::Gone);
        let snapshot = stats.snapshot();
        assert_eq!(
            (snapshot.calls, snapshot.errors, snapshot.in_flight),
            (2, 1, 0)
        );
        assert_eq!(snapshot.last_error.as_deref(), Some("the worker is gone"));
        assert!(snapshot.last_error_at.is_some() && snapshot.last_call.is_some());
        for percentiles in [snapshot.recent, snapshot.since_start] {
            assert!(
                (2_900..=3_100).contains(&percentiles.max_us),
                "only the answered call is timed: {percentiles:?}"
            );
        }
        assert_eq!(snapshot.mean_us, 3_000);
    }

    #[test]
    fn counts_and_percentiles_follow_the_calls() {
        let stats = HookStats::new();
        for millis in 1..=100 {
            assert!(stats.begin(u64::MAX));
            stats.end(Duration::from_millis(millis), &CallResult::Ok);
        }
        assert!(stats.begin(u64::MAX));
        stats.end(Duration::from_millis(250), &CallResult::Timeout);
        assert!(stats.begin(u64::MAX));
        stats.end(
            Duration::from_millis(2),
            &CallResult::Error {
                message: "boom".into(),
            },
        );
        let snapshot = stats.snapshot();
        assert_eq!(
            (
                snapshot.calls,
                snapshot.errors,
                snapshot.timeouts,
                snapshot.in_flight
            ),
            (102, 1, 1, 0)
        );
        assert!(
            (49_000..=51_100).contains(&snapshot.recent.p50_us),
            "{:?}",
            snapshot.recent
        );
        assert!(
            (99_000..=101_000).contains(&snapshot.recent.p99_us),
            "{:?}",
            snapshot.recent
        );
        // Two significant digits: within 1 % of the true value.
        assert!(
            (247_500..=252_500).contains(&snapshot.since_start.max_us),
            "{:?}",
            snapshot.since_start
        );
        assert_eq!(snapshot.last_error.as_deref(), Some("boom"));
        assert!(snapshot.calls_per_sec > 0.0);
        let last_call = snapshot.last_call.expect("a last call");
        let now = unix_millis(SystemTime::now());
        assert!(
            now.abs_diff(last_call) < 1_000,
            "last call {last_call} ms, now {now} ms"
        );
    }

    #[test]
    fn calls_that_left_the_recent_window_still_count_since_start() {
        let stats = HookStats::new();
        let now = call_clock().now();
        for _ in 0..100 {
            assert!(stats.begin(u64::MAX));
            stats.end_at(Duration::from_millis(1), &CallResult::Ok, now);
        }
        // A call 70 s on: the first bucket leaves the window (the snapshot, taken now,
        // sees the later bucket as recent).
        assert!(stats.begin(u64::MAX));
        stats.end_at(
            Duration::from_millis(50),
            &CallResult::Ok,
            now + Duration::from_secs(70),
        );
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.calls, 101);
        assert!(
            (990..=1_010).contains(&snapshot.since_start.p50_us),
            "since start, the hundred 1 ms calls: {:?}",
            snapshot.since_start
        );
        assert!(
            (49_500..=50_500).contains(&snapshot.since_start.max_us),
            "{:?}",
            snapshot.since_start
        );
        assert!(
            (49_500..=50_500).contains(&snapshot.recent.p50_us),
            "the window holds the last call only: {:?}",
            snapshot.recent
        );
    }

    #[test]
    fn the_rate_now_falls_to_zero_when_calls_stop_and_the_minute_rate_lingers() {
        let stats = HookStats::new();
        let start = call_clock().now();
        for _ in 0..100 {
            assert!(stats.begin(u64::MAX));
            stats.end_at(Duration::from_micros(10), &CallResult::Ok, start);
        }
        let busy = stats.snapshot_at(start);
        assert!(busy.calls_per_sec_10s >= 99.0, "{}", busy.calls_per_sec_10s);
        // 20 s without a call: nothing now, the minute still counts them.
        let quiet = stats.snapshot_at(start + Duration::from_secs(20));
        assert!(quiet.calls_per_sec_10s.abs() < f64::EPSILON, "{quiet:?}");
        assert!(
            (4.0..6.0).contains(&quiet.calls_per_sec),
            "100 calls over 20 s: {}",
            quiet.calls_per_sec
        );
    }

    #[test]
    fn a_hook_holds_its_histograms_in_a_few_tens_of_kib() {
        // A bucket of the recent window (at most twelve per hook) and the since-start
        // histogram, counted as the kernel holds them: every count resident.
        let bucket = new_window_histogram();
        let since_start = new_histogram();
        let bytes = |len: usize, width: usize| len * width;
        let bucket_bytes = bytes(bucket.distinct_values(), 4);
        let since_start_bytes = bytes(since_start.distinct_values(), 8);
        assert!(bucket_bytes <= 16 * 1024, "{bucket_bytes} bytes per bucket");
        assert!(
            since_start_bytes <= 32 * 1024,
            "{since_start_bytes} bytes since start"
        );
    }

    #[test]
    fn a_plugins_cap_counts_the_calls_of_all_its_hooks() {
        let (first, second) = (HookStats::new(), HookStats::new());
        let hooks = [&first, &second];
        assert!(first.begin_within(hooks, 2));
        assert!(second.begin_within(hooks, 2));
        assert!(!first.begin_within(hooks, 2), "a third beyond a cap of two");
        assert!(!second.begin_within(hooks, 2));
        assert_eq!((first.in_flight(), second.in_flight()), (1, 1));
        first.end(Duration::from_micros(5), &CallResult::Ok);
        assert!(
            second.begin_within(hooks, 2),
            "an ended call frees its place"
        );
        assert_eq!(
            (first.snapshot().busy, second.snapshot().busy),
            (1, 1),
            "each refusal counted as busy on its hook"
        );
    }

    #[test]
    fn busy_rejections_are_counted_but_not_timed() {
        let stats = HookStats::new();
        assert!(stats.begin(1));
        assert!(!stats.begin(1), "a second call beyond a cap of one");
        assert_eq!(stats.in_flight(), 1);
        let snapshot = stats.snapshot();
        assert_eq!(
            (
                snapshot.calls,
                snapshot.busy,
                snapshot.in_flight,
                snapshot.since_start.max_us
            ),
            (1, 1, 1, 0)
        );
        stats.end(Duration::from_millis(3), &CallResult::Ok);
        let snapshot = stats.snapshot();
        assert_eq!(
            (snapshot.calls, snapshot.busy, snapshot.in_flight),
            (2, 1, 0)
        );
        assert!((2_970..=3_030).contains(&snapshot.since_start.max_us));
    }
}
