//! Resource sampling of sandboxed workers: memory, CPU, throttling and pids from the
//! worker's cgroup, threads, RSS, descriptors and I/O from `/proc`.
//!
//! A [`WorkerProbe`] opens every file once, when the worker starts, and re-reads it from
//! offset 0 at each sample (cgroup and proc files regenerate their content on every read):
//! reopening would double the cost per plugin. The probe returns raw counters; a
//! [`SampleSeries`] turns consecutive readings into rates and keeps the ring the charts
//! draw from.

mod notices;
mod sampler;

pub use notices::{LimitNotices, near_limit_threshold};
pub(crate) use sampler::Sampler;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::events::unix_millis;
use crate::sandbox::cgroup::{CgroupLayout, CgroupRoot, Controller};

/// Why a worker cannot be sampled (it is gone, or a file is missing or malformed).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot open {}: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot register the kernel's memory notices ({step}): {error}")]
    Notices { step: String, error: std::io::Error },
    #[error("{}: expected {expected}, found {found:?}", path.display())]
    Parse {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    /// Its message names the cgroup.
    #[error(transparent)]
    Cgroup(#[from] crate::sandbox::cgroup::CgroupError),
}

/// One file, opened once and re-read from the start.
#[derive(Debug)]
struct KeptFile {
    path: PathBuf,
    file: File,
}

impl KeptFile {
    fn open(path: PathBuf) -> Result<Self, MonitorError> {
        match File::open(&path) {
            Ok(file) => Ok(Self { path, file }),
            Err(source) => Err(MonitorError::Open {
                path,
                error: source,
            }),
        }
    }

    fn open_optional(path: PathBuf) -> Option<Self> {
        File::open(&path).ok().map(|file| Self { path, file })
    }

    /// The whole content, read with `pread` at offset 0 into `buffer`.
    ///
    /// Every file read here is a kernel `seq_file` (cgroup files, `/proc/<pid>/stat`,
    /// `io`), whose read fills the buffer until the content ends: a read shorter than the
    /// space offered is the end, so one system call reads a file, not two (the second would
    /// only return 0). The buffer keeps its length between reads; nothing is zeroed.
    fn read<'a>(&self, buffer: &'a mut Vec<u8>) -> Result<&'a str, MonitorError> {
        let text = self.read_bytes(buffer)?;
        std::str::from_utf8(text).map_err(|_| MonitorError::Parse {
            path: self.path.clone(),
            expected: "text",
            found: String::from_utf8_lossy(text).into_owned(),
        })
    }

    /// As [`KeptFile::read`], for a file that may hold bytes of any value (`stat` holds
    /// the process name, which the plugin sets).
    fn read_bytes<'a>(&self, buffer: &'a mut Vec<u8>) -> Result<&'a [u8], MonitorError> {
        if buffer.len() < 4096 {
            buffer.resize(4096, 0);
        }
        let mut filled = 0;
        loop {
            if filled == buffer.len() {
                buffer.resize(buffer.len() * 2, 0);
            }
            let space = buffer.len() - filled;
            match self.file.read_at(&mut buffer[filled..], filled as u64) {
                Ok(read) => {
                    filled += read;
                    if read < space {
                        break;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(MonitorError::Read {
                        path: self.path.clone(),
                        error: source,
                    });
                }
            }
        }
        Ok(&buffer[..filled])
    }

    fn number(&self, buffer: &mut Vec<u8>) -> Result<u64, MonitorError> {
        let text = self.read(buffer)?.trim();
        text.parse().map_err(|_| MonitorError::Parse {
            path: self.path.clone(),
            expected: "a number",
            found: text.to_owned(),
        })
    }

    /// The value of `key` in a `key value` per line file (`cpu.stat`, `memory.events`),
    /// 0 when the key is absent.
    fn keyed(&self, buffer: &mut Vec<u8>, key: &str) -> Result<u64, MonitorError> {
        Ok(keyed_value(self.read(buffer)?, key).unwrap_or(0))
    }
}

/// `num_threads` and `rss` (pages) from a `/proc/<pid>/stat` line. The command name may
/// hold spaces and parentheses, so fields are counted from its closing parenthesis.
fn stat_fields(line: &[u8]) -> (u64, u64) {
    // The name is between the first `(` and the last `) `, and may hold any byte but NUL
    // (the plugin names its threads): only the fields after it are read, all ASCII.
    let Some(end_of_name) = line.windows(2).rposition(|pair| pair == b") ") else {
        return (0, 0);
    };
    let Ok(rest) = std::str::from_utf8(&line[end_of_name + 2..]) else {
        return (0, 0);
    };
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state is field 3 of the line, num_threads 20, rss 24.
    let field = |number: usize| {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field(20), field(24))
}

fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once([' ', ':'])?;
        (name == key).then(|| value.trim().trim_end_matches(" kB").parse().ok())?
    })
}

/// Counters read from one worker at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    /// Times the memory limit was hit (v1 `failcnt`, v2 `memory.events` `max`).
    pub memory_limit_hits: u64,
    pub oom_kills: u64,
    pub cpu_usage_ns: u64,
    pub cpu_periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
    pub pids_current: u64,
    /// Forks refused by the pids limit (`pids.events` `max`).
    pub pids_limit_hits: u64,
    pub threads: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// The limits the worker runs under, read once when the probe opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbedLimits {
    pub memory_limit_bytes: Option<u64>,
    /// CPU quota as percent of one core (`None`: no quota).
    pub cpu_quota_percent: Option<f64>,
    pub pids_max: Option<u64>,
    /// The plugin process's `RLIMIT_NOFILE` soft limit.
    pub max_open_files: Option<u64>,
}

/// The open files of one worker.
#[derive(Debug)]
pub struct WorkerProbe {
    layout: CgroupLayout,
    memory_usage: KeptFile,
    memory_peak: Option<KeptFile>,
    /// v1 `memory.failcnt`; v2 `memory.events` (which also has the OOM kills).
    memory_hits: KeptFile,
    /// v1 `memory.oom_control`.
    oom_control: Option<KeptFile>,
    /// v1 `cpuacct.usage`.
    cpu_usage: Option<KeptFile>,
    cpu_stat: KeptFile,
    pids_current: KeptFile,
    pids_events: Option<KeptFile>,
    /// `/proc/<pid>/stat`: one line with the thread count and RSS (cheaper to generate and
    /// parse than `status`).
    stat: KeptFile,
    page_size: u64,
    io: Option<KeptFile>,
    /// `/proc/<pid>/fd`, open for `fstat` only: a `Dir` (`opendir`) would also take a
    /// 32 KiB listing buffer from the heap for as long as the worker lives.
    fd_dir: File,
    fd_dir_path: PathBuf,
    limits: ProbedLimits,
    buffer: Vec<u8>,
    /// The memory cgroup's threshold and OOM eventfds, when registered ([`Self::watch`]).
    memory_watch: Option<notices::MemoryWatch>,
    /// The memory limit counters as last read, and how many samples ago.
    memory_counters: Option<MemoryCounters>,
    samples_since_memory_counters: u32,
    /// Memory usage at the previous sample.
    previous_memory_bytes: u64,
}

/// The memory counters that move only at the limit (and the peak, shown beside usage).
#[derive(Debug, Clone, Copy)]
struct MemoryCounters {
    peak_bytes: Option<u64>,
    limit_hits: u64,
    oom_kills: u64,
}

/// With notices, the memory limit counters are still read every this many samples: the
/// peak shown beside usage stays this fresh.
pub const MEMORY_COUNTERS_EVERY: u32 = 10;

impl WorkerProbe {
    /// Opens the files of cgroup `cgroup` (relative to the controller roots, as in
    /// snapshots) and of process `pid` (the one running plugin code).
    pub fn open(root: &CgroupRoot, cgroup: &str, pid: u32) -> Result<Self, MonitorError> {
        let layout = root.layout();
        let dir = |controller| root.controller_dir(controller, cgroup);
        let (memory, cpu, cpuacct, pids) = (
            dir(Controller::Memory)?,
            dir(Controller::Cpu)?,
            dir(Controller::CpuAcct)?,
            dir(Controller::Pids)?,
        );
        let proc_dir = Path::new("/proc").join(pid.to_string());
        let v1 = layout.uses_v1_hierarchies();
        let mut buffer = Vec::with_capacity(4096);
        let mut limits = read_limits(v1, &memory, &cpu, &pids, &mut buffer);
        limits.max_open_files = std::fs::read_to_string(proc_dir.join("limits"))
            .ok()
            .and_then(|text| {
                let line = text
                    .lines()
                    .find(|line| line.starts_with("Max open files"))?;
                line.trim_start_matches("Max open files")
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
        let fd_dir_path = proc_dir.join("fd");
        let fd_dir = File::open(&fd_dir_path).map_err(|source| MonitorError::Open {
            path: fd_dir_path.clone(),
            error: source,
        })?;
        Ok(Self {
            layout,
            memory_usage: KeptFile::open(memory.join(if v1 {
                "memory.usage_in_bytes"
            } else {
                "memory.current"
            }))?,
            memory_peak: KeptFile::open_optional(memory.join(if v1 {
                "memory.max_usage_in_bytes"
            } else {
                "memory.peak"
            })),
            memory_hits: KeptFile::open(memory.join(if v1 {
                "memory.failcnt"
            } else {
                "memory.events"
            }))?,
            oom_control: v1
                .then(|| KeptFile::open(memory.join("memory.oom_control")))
                .transpose()?,
            cpu_usage: v1
                .then(|| KeptFile::open(cpuacct.join("cpuacct.usage")))
                .transpose()?,
            cpu_stat: KeptFile::open(cpu.join("cpu.stat"))?,
            pids_current: KeptFile::open(pids.join("pids.current"))?,
            pids_events: KeptFile::open_optional(pids.join("pids.events")),
            stat: KeptFile::open(proc_dir.join("stat"))?,
            page_size: nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .and_then(|size| u64::try_from(size).ok())
                .unwrap_or(4096),
            io: KeptFile::open_optional(proc_dir.join("io")),
            fd_dir,
            fd_dir_path,
            limits,
            buffer,
            memory_watch: None,
            memory_counters: None,
            samples_since_memory_counters: 0,
            previous_memory_bytes: 0,
        })
    }

    /// Registers the worker's memory threshold and OOM events in `notices` under `token`
    /// (v1 with a memory limit; elsewhere nothing is registered and every sample reads
    /// every counter). From then on [`Self::sample`] reads the memory limit counters only
    /// when the worker was noticed, is near its limit, or every
    /// [`MEMORY_COUNTERS_EVERY`] samples.
    pub fn watch(&mut self, notices: &LimitNotices, token: u64) -> Result<(), MonitorError> {
        let (Some(oom_control), Some(limit)) = (&self.oom_control, self.limits.memory_limit_bytes)
        else {
            return Ok(());
        };
        let Some(memory_dir) = self.memory_usage.path.parent() else {
            return Ok(());
        };
        self.memory_watch = Some(notices.watch_memory(
            memory_dir,
            &self.memory_usage.file,
            &oom_control.file,
            limit,
            token,
        )?);
        Ok(())
    }

    pub fn limits(&self) -> ProbedLimits {
        self.limits
    }

    /// The worker's open descriptors. Since Linux 6.2 `stat` of `/proc/<pid>/fd` reports
    /// their number as the size: one `fstat` instead of listing every descriptor. On an
    /// older kernel the size is 0 (a worker always has descriptors), so it is counted.
    fn open_fds(&self) -> u64 {
        if let Ok(metadata) = self.fd_dir.metadata()
            && metadata.len() > 0
        {
            return metadata.len();
        }
        std::fs::read_dir(&self.fd_dir_path).map_or(0, |entries| entries.count() as u64)
    }

    /// Reads every counter once.
    pub fn read(&mut self) -> Result<Reading, MonitorError> {
        self.sample(true)
    }

    /// One sample: every counter, except that with [`Self::watch`] the memory limit
    /// counters are carried over from the last reading unless `noticed` (its token came
    /// out of [`LimitNotices::noticed`]), usage is or was past the threshold, or the last
    /// reading is [`MEMORY_COUNTERS_EVERY`] samples old.
    pub fn sample(&mut self, noticed: bool) -> Result<Reading, MonitorError> {
        let buffer = &mut self.buffer;
        let v1 = self.layout.uses_v1_hierarchies();
        let memory_bytes = self.memory_usage.number(buffer)?;
        let due = match (&self.memory_watch, self.memory_counters) {
            (Some(watch), Some(_)) => {
                noticed
                    || memory_bytes >= watch.near_bytes
                    || self.previous_memory_bytes >= watch.near_bytes
                    || self.samples_since_memory_counters + 1 >= MEMORY_COUNTERS_EVERY
            }
            _ => true,
        };
        self.previous_memory_bytes = memory_bytes;
        let counters = match self.memory_counters {
            Some(counters) if !due => {
                self.samples_since_memory_counters += 1;
                counters
            }
            _ => {
                if noticed && let Some(watch) = &self.memory_watch {
                    watch.drain();
                }
                let counters = read_memory_counters(
                    v1,
                    self.memory_peak.as_ref(),
                    &self.memory_hits,
                    self.oom_control.as_ref(),
                    buffer,
                )?;
                self.memory_counters = Some(counters);
                self.samples_since_memory_counters = 0;
                counters
            }
        };
        let MemoryCounters {
            peak_bytes: memory_peak_bytes,
            limit_hits: memory_limit_hits,
            oom_kills,
        } = counters;
        let stat = self.cpu_stat.read(buffer)?;
        let cpu_periods = keyed_value(stat, "nr_periods").unwrap_or(0);
        let throttled_periods = keyed_value(stat, "nr_throttled").unwrap_or(0);
        let (throttled_ns, usage_from_stat) = if v1 {
            (keyed_value(stat, "throttled_time").unwrap_or(0), None)
        } else {
            (
                keyed_value(stat, "throttled_usec").unwrap_or(0) * 1000,
                keyed_value(stat, "usage_usec").map(|usec| usec * 1000),
            )
        };
        let cpu_usage_ns = match (&self.cpu_usage, usage_from_stat) {
            (Some(file), _) => file.number(buffer)?,
            (None, Some(ns)) => ns,
            (None, None) => 0,
        };
        let pids_current = self.pids_current.number(buffer)?;
        let pids_limit_hits = match &self.pids_events {
            Some(file) => file.keyed(buffer, "max")?,
            None => 0,
        };
        let (threads, rss_pages) = stat_fields(self.stat.read_bytes(buffer)?);
        let rss_bytes = rss_pages * self.page_size;
        let (read_bytes, write_bytes) = match &self.io {
            Some(file) => {
                let io = file.read(buffer)?;
                (
                    keyed_value(io, "read_bytes").unwrap_or(0),
                    keyed_value(io, "write_bytes").unwrap_or(0),
                )
            }
            None => (0, 0),
        };
        let open_fds = self.open_fds();
        if open_fds == 0 && !self.fd_dir_path.exists() {
            return Err(MonitorError::Read {
                path: self.fd_dir_path.clone(),
                error: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(Reading {
            memory_bytes,
            memory_peak_bytes,
            memory_limit_hits,
            oom_kills,
            cpu_usage_ns,
            cpu_periods,
            throttled_periods,
            throttled_ns,
            pids_current,
            pids_limit_hits,
            threads,
            rss_bytes,
            open_fds,
            read_bytes,
            write_bytes,
        })
    }
}

fn read_memory_counters(
    v1: bool,
    peak: Option<&KeptFile>,
    hits: &KeptFile,
    oom_control: Option<&KeptFile>,
    buffer: &mut Vec<u8>,
) -> Result<MemoryCounters, MonitorError> {
    let peak_bytes = match peak {
        Some(file) => Some(file.number(buffer)?),
        None => None,
    };
    let (limit_hits, oom_kills) = if v1 {
        let hits = hits.number(buffer)?;
        let kills = match oom_control {
            Some(file) => file.keyed(buffer, "oom_kill")?,
            None => 0,
        };
        (hits, kills)
    } else {
        let events = hits.read(buffer)?;
        (
            keyed_value(events, "max").unwrap_or(0),
            keyed_value(events, "oom_kill").unwrap_or(0),
        )
    };
    Ok(MemoryCounters {
        peak_bytes,
        limit_hits,
        oom_kills,
    })
}

fn read_limits(
    v1: bool,
    memory: &Path,
    cpu: &Path,
    pids: &Path,
    buffer: &mut Vec<u8>,
) -> ProbedLimits {
    let read = |path: PathBuf, buffer: &mut Vec<u8>| -> Option<String> {
        KeptFile::open_optional(path)?
            .read(buffer)
            .ok()
            .map(|text| text.trim().to_owned())
    };
    let number = |text: Option<String>| text.and_then(|text| text.parse::<u64>().ok());
    // v1 spells "no memory limit" as a huge page-aligned number.
    let no_limit_v1 = |bytes: u64| bytes < (1 << 62);
    let memory_limit_bytes = if v1 {
        number(read(memory.join("memory.limit_in_bytes"), buffer))
            .filter(|bytes| no_limit_v1(*bytes))
    } else {
        number(read(memory.join("memory.max"), buffer))
    };
    let cpu_quota_percent = if v1 {
        let quota =
            read(cpu.join("cpu.cfs_quota_us"), buffer).and_then(|text| text.parse::<i64>().ok());
        let period = number(read(cpu.join("cpu.cfs_period_us"), buffer));
        match (quota, period) {
            (Some(quota), Some(period)) if quota > 0 && period > 0 => {
                Some(ratio(u64::try_from(quota).unwrap_or(0), period) * 100.0)
            }
            _ => None,
        }
    } else {
        read(cpu.join("cpu.max"), buffer).and_then(|text| {
            let (quota, period) = text.split_once(' ')?;
            let (quota, period): (f64, f64) = (quota.parse().ok()?, period.parse().ok()?);
            (period > 0.0).then(|| quota * 100.0 / period)
        })
    };
    ProbedLimits {
        memory_limit_bytes,
        cpu_quota_percent,
        pids_max: number(read(pids.join("pids.max"), buffer)),
        max_open_files: None,
    }
}

/// `part / whole` as a float, 0 when `whole` is 0. Counters here stay far below 2^52, where
/// converting to `f64` starts to round.
#[allow(clippy::cast_precision_loss)]
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One point of a plugin's resource history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSample {
    pub at_ms: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_limit_hits: u64,
    pub oom_kills: u64,
    /// CPU used since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    /// The same in percent of the plugin's quota (`None`: no quota).
    pub cpu_percent_of_quota: Option<f64>,
    pub throttled_periods: u64,
    pub throttled_ms: u64,
    /// Share of the CPU periods since the previous sample in which it was throttled (0–1).
    pub throttled_ratio: f64,
    pub pids_current: u64,
    pub pids_max: Option<u64>,
    pub pids_limit_hits: u64,
    pub threads: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// A plugin's samples over time: turns readings into rates, keeps a bounded ring.
#[derive(Debug)]
pub struct SampleSeries {
    ring: VecDeque<ResourceSample>,
    capacity: usize,
    previous: Option<(Instant, Reading)>,
}

impl SampleSeries {
    /// Keeps at least `keep` of history at one sample per `interval` (never fewer than
    /// 600 samples).
    pub fn new(keep: Duration, interval: Duration) -> Self {
        let per_interval = keep.as_secs_f64() / interval.as_secs_f64().max(0.001);
        // Bounded before the conversion, so nothing is truncated.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let capacity = (per_interval.ceil().clamp(600.0, 1_000_000.0)) as usize;
        // The reserved part is written once now and emptied again: its pages are resident
        // from the start, so the engine's memory does not creep for ten minutes while the
        // rings fill (which would hide a real leak behind a bounded one).
        let mut ring = VecDeque::with_capacity(capacity.min(4096));
        ring.resize(ring.capacity(), ResourceSample::default());
        std::hint::black_box(&ring);
        ring.clear();
        Self {
            ring,
            capacity,
            previous: None,
        }
    }

    /// Adds a reading taken at `now`; returns the sample it made and the reading before it.
    pub fn push(
        &mut self,
        now: Instant,
        reading: Reading,
        limits: ProbedLimits,
    ) -> (ResourceSample, Option<Reading>) {
        let (cpu_percent, throttled_ratio) = match self.previous {
            Some((then, before)) => {
                let wall = u64::try_from(now.duration_since(then).as_nanos()).unwrap_or(u64::MAX);
                let used = reading.cpu_usage_ns.saturating_sub(before.cpu_usage_ns);
                let periods = reading.cpu_periods.saturating_sub(before.cpu_periods);
                let throttled = reading
                    .throttled_periods
                    .saturating_sub(before.throttled_periods);
                (ratio(used, wall) * 100.0, ratio(throttled, periods))
            }
            None => (0.0, 0.0),
        };
        let sample = ResourceSample {
            at_ms: unix_millis(SystemTime::now()),
            memory_bytes: reading.memory_bytes,
            memory_peak_bytes: reading.memory_peak_bytes,
            memory_limit_bytes: limits.memory_limit_bytes,
            memory_limit_hits: reading.memory_limit_hits,
            oom_kills: reading.oom_kills,
            cpu_percent,
            cpu_percent_of_quota: limits
                .cpu_quota_percent
                .map(|quota| cpu_percent * 100.0 / quota),
            throttled_periods: reading.throttled_periods,
            throttled_ms: reading.throttled_ns / 1_000_000,
            throttled_ratio,
            pids_current: reading.pids_current,
            pids_max: limits.pids_max,
            pids_limit_hits: reading.pids_limit_hits,
            threads: reading.threads,
            rss_bytes: reading.rss_bytes,
            open_fds: reading.open_fds,
            read_bytes: reading.read_bytes,
            write_bytes: reading.write_bytes,
        };
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(sample);
        let before = self
            .previous
            .replace((now, reading))
            .map(|(_, reading)| reading);
        (sample, before)
    }

    /// Forgets the previous reading (a new worker starts its counters at zero).
    pub fn restart(&mut self) {
        self.previous = None;
    }

    pub fn latest(&self) -> Option<&ResourceSample> {
        self.ring.back()
    }

    pub fn history(&self) -> Vec<ResourceSample> {
        self.ring.iter().copied().collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_parse_cgroup_and_proc_formats() {
        let stat = "nr_periods 10\nnr_throttled 4\nthrottled_time 123456\n";
        assert_eq!(keyed_value(stat, "nr_throttled"), Some(4));
        assert_eq!(keyed_value(stat, "throttled_time"), Some(123_456));
        let status = "Name:\tplugboard-host\nThreads:\t3\nVmRSS:\t    2048 kB\n";
        assert_eq!(keyed_value(status, "Threads"), Some(3));
        assert_eq!(keyed_value(status, "VmRSS"), Some(2048));
        assert_eq!(keyed_value(status, "VmSwap"), None);
        let stat = "42 (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 7 0 1234 10000000 512 18446744073709551615";
        assert_eq!(stat_fields(stat.as_bytes()), (7, 512));
        // A name that is not UTF-8 (a plugin's thread named so) changes nothing.
        let mut odd = b"42 (\xff\xfe) x".to_vec();
        odd.extend_from_slice(&stat.as_bytes()[13..]);
        assert_eq!(stat_fields(&odd), (7, 512));
    }

    #[test]
    fn the_series_turns_counters_into_rates_and_stays_bounded() {
        let mut series = SampleSeries::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(series.capacity(), 600);
        let start = Instant::now();
        let limits = ProbedLimits {
            memory_limit_bytes: Some(64 << 20),
            cpu_quota_percent: Some(50.0),
            pids_max: Some(16),
            max_open_files: Some(64),
        };
        let first = Reading {
            cpu_usage_ns: 1_000_000_000,
            cpu_periods: 100,
            ..Reading::default()
        };
        series.push(start, first, limits);
        // Half a core over one second, throttled in half of the periods.
        let second = Reading {
            cpu_usage_ns: 1_500_000_000,
            cpu_periods: 110,
            throttled_periods: 5,
            ..Reading::default()
        };
        let (sample, before) = series.push(start + Duration::from_secs(1), second, limits);
        assert_eq!(before, Some(first));
        assert!((sample.cpu_percent - 50.0).abs() < 0.01, "{sample:?}");
        assert!((sample.cpu_percent_of_quota.unwrap() - 100.0).abs() < 0.01);
        assert!((sample.throttled_ratio - 0.5).abs() < 0.01);
        for step in 2..700 {
            series.push(start + Duration::from_secs(step), second, limits);
        }
        assert_eq!(series.history().len(), 600);
    }
}
