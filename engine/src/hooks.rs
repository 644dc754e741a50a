//! Hook statistics per (plugin, hook): calls, errors, timeouts, in flight, calls/s, latency
//! percentiles (`hdrhistogram`) over the last 60 s and since start, mean and total time,
//! last call, last error. Snapshots carry the numbers, never the histograms.

pub mod dispatch;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::events::unix_millis;
use crate::manifest::Priority;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
const MAX_LATENCY_US: u64 = 600_000_000;
/// The recent window: 60 one-second buckets.
const WINDOW_SECONDS: usize = 60;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
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
}

#[derive(Debug)]
struct Bucket {
    second: u64,
    histogram: Histogram<u64>,
    calls: u64,
}

/// Live statistics of one hook of one plugin.
#[derive(Debug)]
pub struct HookStats {
    started: Instant,
    calls: u64,
    errors: u64,
    timeouts: u64,
    busy: u64,
    in_flight: u64,
    total: Duration,
    since_start: Histogram<u64>,
    window: VecDeque<Bucket>,
    last_call: Option<SystemTime>,
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
            started: Instant::now(),
            calls: 0,
            errors: 0,
            timeouts: 0,
            busy: 0,
            in_flight: 0,
            total: Duration::ZERO,
            since_start: new_histogram(),
            window: VecDeque::with_capacity(WINDOW_SECONDS + 1),
            last_call: None,
            last_error: None,
        }
    }

    /// Calls sent and not answered yet.
    pub fn snapshot_in_flight(&self) -> u64 {
        self.in_flight
    }

    /// A call is about to be sent.
    pub fn begin(&mut self) {
        self.in_flight += 1;
        self.last_call = Some(SystemTime::now());
    }

    /// A call begun with [`HookStats::begin`] ended after `elapsed`.
    pub fn end(&mut self, elapsed: Duration, result: &CallResult) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.record(elapsed, result);
    }

    fn second_now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn record(&mut self, elapsed: Duration, result: &CallResult) {
        self.calls += 1;
        match result {
            CallResult::Ok => {}
            CallResult::Error { message } => {
                self.errors += 1;
                self.last_error = Some((SystemTime::now(), message.clone()));
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
                return;
            }
        }
        self.total += elapsed;
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        let _ = self.since_start.record(micros);
        let second = self.second_now();
        if self
            .window
            .back()
            .is_none_or(|bucket| bucket.second != second)
        {
            self.window.push_back(Bucket {
                second,
                histogram: new_histogram(),
                calls: 0,
            });
        }
        self.expire(second);
        if let Some(bucket) = self.window.back_mut() {
            let _ = bucket.histogram.record(micros);
            bucket.calls += 1;
        }
    }

    fn expire(&mut self, now: u64) {
        while self
            .window
            .front()
            .is_some_and(|bucket| bucket.second + (WINDOW_SECONDS as u64) <= now)
        {
            self.window.pop_front();
        }
    }

    /// The numbers, as of now.
    pub fn snapshot(&self) -> HookStatsSnapshot {
        let now = self.second_now();
        let mut recent = new_histogram();
        let mut recent_calls = 0;
        for bucket in self
            .window
            .iter()
            .filter(|bucket| bucket.second + (WINDOW_SECONDS as u64) > now)
        {
            let _ = recent.add(&bucket.histogram);
            recent_calls += bucket.calls;
        }
        // Calls per second over the window actually covered (shorter right after start).
        let covered = (now + 1).min(WINDOW_SECONDS as u64);
        #[allow(clippy::cast_precision_loss)]
        let calls_per_sec = recent_calls as f64 / covered as f64;
        let measured = self.calls - self.busy;
        HookStatsSnapshot {
            calls: self.calls,
            errors: self.errors,
            timeouts: self.timeouts,
            busy: self.busy,
            in_flight: self.in_flight,
            calls_per_sec,
            recent: Percentiles::of(&recent),
            since_start: Percentiles::of(&self.since_start),
            mean_us: if measured == 0 {
                0
            } else {
                u64::try_from(self.total.as_micros() / u128::from(measured)).unwrap_or(u64::MAX)
            },
            total_ms: u64::try_from(self.total.as_millis()).unwrap_or(u64::MAX),
            last_call: self.last_call.map(unix_millis),
            last_error: self.last_error.as_ref().map(|(_, message)| message.clone()),
            last_error_at: self.last_error.as_ref().map(|(when, _)| unix_millis(*when)),
            priority: None,
            timeout_ms: None,
        }
    }
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
    fn of(histogram: &Histogram<u64>) -> Self {
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
    /// Over the last 60 s.
    pub calls_per_sec: f64,
    /// Latency over the last 60 s.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles_follow_the_calls() {
        let mut stats = HookStats::new();
        for millis in 1..=100 {
            stats.begin();
            stats.end(Duration::from_millis(millis), &CallResult::Ok);
        }
        stats.begin();
        stats.end(Duration::from_millis(250), &CallResult::Timeout);
        stats.begin();
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
        assert!((249_000..=251_000).contains(&snapshot.since_start.max_us));
        assert_eq!(snapshot.last_error.as_deref(), Some("boom"));
        assert!(snapshot.calls_per_sec > 0.0);
    }

    #[test]
    fn busy_rejections_are_counted_but_not_timed() {
        let mut stats = HookStats::new();
        stats.end(Duration::ZERO, &CallResult::Busy);
        let snapshot = stats.snapshot();
        assert_eq!(
            (snapshot.calls, snapshot.busy, snapshot.since_start.max_us),
            (1, 1, 0)
        );
    }
}
