//! The sampler thread: at every interval, host totals from `sysinfo` and one reading of
//! every running worker through its kept-open [`WorkerProbe`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::{LimitNotices, Reading, ResourceSample, WorkerProbe};
use crate::engine::Shared;
use crate::policy::{OOM_KILLS_TOTAL, Violation, ViolationKind};
use crate::snapshot::HostSnapshot;
use crate::supervisor::{ActorMessage, WhenFull, hooks_in_flight};

/// Runs until dropped.
pub(crate) struct Sampler {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(shared: &Arc<Shared>) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let interval = shared.config.sample_interval.max(Duration::from_millis(10));
        let thread = {
            let (shared, stop) = (Arc::downgrade(shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("pb-sampler".to_owned())
                .spawn(move || run(&shared, interval, &stop))
                .ok()
        };
        Self { stop, thread }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every sampled worker's probe, and the memory notices they are registered in.
struct Probes {
    by_plugin: HashMap<String, Probed>,
    notices: Option<LimitNotices>,
    next_token: u64,
}

/// A worker's probe, tied to the worker generation it was opened for, with what the
/// violation checks remember between samples.
struct Probed {
    generation: u64,
    probe: WorkerProbe,
    /// Its tag in the memory notices.
    token: u64,
    /// Since when it has been throttled above the policy's ratio, and whether that was
    /// reported already.
    throttled_since: Option<(Instant, bool)>,
    /// Whether the descriptor limit was reached at the previous sample.
    at_fd_limit: bool,
}

fn run(shared: &Weak<Shared>, interval: Duration, stop: &(Mutex<bool>, Condvar)) {
    let mut probes = Probes {
        by_plugin: HashMap::new(),
        // Without notices every sample reads every counter, as before they existed.
        notices: LimitNotices::new().ok(),
        next_token: 0,
    };
    let mut system = System::new();
    let engine_pid = Pid::from_u32(std::process::id());
    let mut next = Instant::now();
    let (mut workers_retired, mut trim_due) = (0, false);
    loop {
        {
            let (stopped, wake) = stop;
            let mut stopped = stopped.lock().unwrap_or_else(PoisonError::into_inner);
            while !*stopped {
                let Some(left) = next.checked_duration_since(Instant::now()) else {
                    break;
                };
                stopped = wake
                    .wait_timeout(stopped, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if *stopped {
                return;
            }
        }
        next += interval;
        if next < Instant::now() {
            next = Instant::now() + interval;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // A state file that could not be written (a full disk) is tried again each tick.
        shared.write_unsaved_state();
        // A revocation stops what it covers at once, not at the next restart.
        shared.look_at_trust_store();
        let host = sample_host(&mut system, engine_pid);
        *shared.host.lock().unwrap_or_else(PoisonError::into_inner) = host;
        sample_workers(&shared, &mut probes);
        // One tick after a worker was stopped or replaced: by then its probe is closed and
        // whoever still held its state has let go.
        if trim_due {
            crate::sandbox::pages::release_free_heap();
        }
        let retired = shared.workers_retired.load(Ordering::Relaxed);
        trim_due = retired != workers_retired;
        workers_retired = retired;
    }
}

fn sample_host(system: &mut System, engine_pid: Pid) -> HostSnapshot {
    system.refresh_cpu_usage();
    system.refresh_memory();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[engine_pid]),
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    let load = System::load_average();
    let engine = system.process(engine_pid);
    HostSnapshot {
        cpu_percent: f64::from(system.global_cpu_usage()),
        cpus: system.cpus().len(),
        memory_total_bytes: system.total_memory(),
        memory_used_bytes: system.used_memory(),
        load_1: load.one,
        load_5: load.five,
        load_15: load.fifteen,
        engine_cpu_percent: engine.map_or(0.0, |process| f64::from(process.cpu_usage())),
        engine_rss_bytes: engine.map_or(0, sysinfo::Process::memory),
    }
}

fn sample_workers(shared: &Shared, sampled: &mut Probes) {
    let noticed = sampled
        .notices
        .as_mut()
        .map(LimitNotices::noticed)
        .unwrap_or_default();
    let probes = &mut sampled.by_plugin;
    let plugins = shared.all_plugins();
    probes.retain(|name, _| plugins.iter().any(|plugin| &plugin.name == name));
    for plugin in plugins {
        let Some(running) = plugin.running() else {
            probes.remove(&plugin.name);
            continue;
        };
        let stale = probes
            .get(&plugin.name)
            .is_none_or(|probed| probed.generation != running.generation);
        if stale {
            // From the worker itself, not the lifecycle: during a reload the lifecycle
            // may still name the old worker while the new one serves.
            let (_, pid, cgroup) = running.runner.identity();
            let (Some(cgroup), Some(scope)) = (cgroup, &shared.scope) else {
                continue;
            };
            // A worker that just ended cannot be opened: it is sampled no more.
            let Ok(mut probe) = WorkerProbe::open(scope.root(), &cgroup, pid) else {
                probes.remove(&plugin.name);
                continue;
            };
            let token = sampled.next_token;
            sampled.next_token += 1;
            if let Some(notices) = &sampled.notices {
                // Unregistered, the probe reads its memory counters at every sample.
                let _ = probe.watch(notices, token);
            }
            plugin
                .resources
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restart();
            probes.insert(
                plugin.name.clone(),
                Probed {
                    generation: running.generation,
                    probe,
                    token,
                    throttled_since: None,
                    at_fd_limit: false,
                },
            );
        }
        let Some(probed) = probes.get_mut(&plugin.name) else {
            continue;
        };
        match probed.probe.sample(noticed.contains(&probed.token)) {
            Ok(reading) => {
                let limits = probed.probe.limits();
                let now = Instant::now();
                let (sample, before) = plugin
                    .resources
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(now, reading, limits);
                for violation in check(shared, probed, &sample, before.as_ref(), now) {
                    plugin.queue_event(
                        ActorMessage::Violation {
                            generation: Some(probed.generation),
                            violation: violation.during(hooks_in_flight(&plugin)),
                        },
                        WhenFull::Queue,
                    );
                }
            }
            Err(_) => {
                probes.remove(&plugin.name);
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{}.{} MiB", bytes >> 20, ((bytes & 0xf_ffff) * 10) >> 20)
}

/// The violations one sample shows, against the previous reading: limit hits and OOM
/// kills counted by the cgroup, sustained throttling, the descriptor limit reached.
fn check(
    shared: &Shared,
    probed: &mut Probed,
    sample: &ResourceSample,
    before: Option<&Reading>,
    now: Instant,
) -> Vec<Violation> {
    let mut found = Vec::new();
    // A worker's cgroup is new: its counters start at zero, so the first reading is
    // compared with zero (hits before it are reported too).
    let zero = Reading::default();
    {
        let before = before.unwrap_or(&zero);
        let hits = sample
            .memory_limit_hits
            .saturating_sub(before.memory_limit_hits);
        if hits > 0 {
            let limit = sample.memory_limit_bytes.unwrap_or(0);
            found.push(
                Violation::new(
                    ViolationKind::MemoryLimit,
                    "cgroup",
                    format!(
                        "hit its memory limit of {} {hits} time(s) (using {})",
                        mib(limit),
                        mib(sample.memory_bytes)
                    ),
                )
                .fact("limit_bytes", limit)
                .fact("observed_bytes", sample.memory_bytes)
                .fact("hits", hits),
            );
        }
        let kills = sample.oom_kills.saturating_sub(before.oom_kills);
        if kills > 0 {
            let limit = sample.memory_limit_bytes.unwrap_or(0);
            found.push(
                Violation::new(
                    ViolationKind::OomKill,
                    "cgroup",
                    format!(
                        "the kernel's OOM killer ended {kills} of its processes at its memory limit of {}",
                        mib(limit)
                    ),
                )
                .fact("limit_bytes", limit)
                .fact("oom_kills", kills)
                .fact(OOM_KILLS_TOTAL, sample.oom_kills),
            );
        }
        let refused = sample
            .pids_limit_hits
            .saturating_sub(before.pids_limit_hits);
        if refused > 0 {
            let limit = sample.pids_max.unwrap_or(0);
            found.push(
                Violation::new(
                    ViolationKind::PidsLimit,
                    "cgroup",
                    format!("{refused} fork(s) or thread(s) refused at its limit of {limit} tasks"),
                )
                .fact("limit", limit)
                .fact("observed", sample.pids_current)
                .fact("refused", refused),
            );
        }
    }
    found.extend(check_throttling(shared, probed, sample, now));
    found.extend(check_descriptors(probed, sample));
    found
}

/// Throttled above the policy's ratio for its `sustained_s`: one violation per stretch.
fn check_throttling(
    shared: &Shared,
    probed: &mut Probed,
    sample: &ResourceSample,
    now: Instant,
) -> Option<Violation> {
    let rule = shared.config.policy.rule(ViolationKind::CpuThrottled);
    if sample.throttled_ratio <= rule.ratio {
        probed.throttled_since = None;
        return None;
    }
    let quota = probed.probe.limits().cpu_quota_percent.unwrap_or(0.0);
    let (since, reported) = probed.throttled_since.get_or_insert((now, false));
    let sustained = now.duration_since(*since);
    if *reported || sustained < Duration::from_secs(rule.sustained_s) {
        return None;
    }
    *reported = true;
    Some(
        Violation::new(
            ViolationKind::CpuThrottled,
            "cgroup",
            format!(
                "throttled in {:.0}% of its CPU periods for {} s (quota {quota:.0}% of a core; the policy's threshold is {:.0}% for {} s)",
                sample.throttled_ratio * 100.0,
                sustained.as_secs(),
                rule.ratio * 100.0,
                rule.sustained_s
            ),
        )
        .fact("ratio", sample.throttled_ratio)
        .fact("sustained_s", sustained.as_secs())
        .fact("throttled_ms", sample.throttled_ms),
    )
}

/// As many descriptors open as the rlimit allows: reported when the limit is reached.
fn check_descriptors(probed: &mut Probed, sample: &ResourceSample) -> Option<Violation> {
    let limit = probed.probe.limits().max_open_files;
    let at_limit = limit.is_some_and(|limit| sample.open_fds >= limit);
    let newly = at_limit && !probed.at_fd_limit;
    probed.at_fd_limit = at_limit;
    let limit = limit.filter(|_| newly)?;
    Some(
        Violation::new(
            ViolationKind::FdLimit,
            "rlimits",
            format!(
                "{} descriptors open: its limit is {limit}, further opens fail with EMFILE",
                sample.open_fds
            ),
        )
        .fact("limit", limit)
        .fact("observed", sample.open_fds),
    )
}
