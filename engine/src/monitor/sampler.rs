//! The sampler thread: at every interval, host totals from `sysinfo` and one reading of
//! every running worker through its kept-open [`WorkerProbe`].

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::WorkerProbe;
use crate::engine::Shared;
use crate::snapshot::HostSnapshot;

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

/// A worker's probe, tied to the worker generation it was opened for.
struct Probed {
    generation: u64,
    probe: WorkerProbe,
}

fn run(shared: &Weak<Shared>, interval: Duration, stop: &(Mutex<bool>, Condvar)) {
    let mut probes: HashMap<String, Probed> = HashMap::new();
    let mut system = System::new();
    let engine_pid = Pid::from_u32(std::process::id());
    let mut next = Instant::now();
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
        let host = sample_host(&mut system, engine_pid);
        *shared.host.lock().unwrap_or_else(PoisonError::into_inner) = host;
        sample_workers(&shared, &mut probes);
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

fn sample_workers(shared: &Shared, probes: &mut HashMap<String, Probed>) {
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
            let (cgroup, pid) = {
                let lifecycle = plugin.lifecycle();
                (lifecycle.cgroup.clone(), lifecycle.sandbox_pid)
            };
            let (Some(cgroup), Some(pid)) = (cgroup, pid) else {
                continue;
            };
            // A worker that just ended cannot be opened: it is sampled no more.
            let Ok(probe) = WorkerProbe::open(shared.scope.root(), &cgroup, pid) else {
                probes.remove(&plugin.name);
                continue;
            };
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
                },
            );
        }
        let Some(probed) = probes.get_mut(&plugin.name) else {
            continue;
        };
        match probed.probe.read() {
            Ok(reading) => {
                let limits = probed.probe.limits();
                plugin
                    .resources
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Instant::now(), reading, limits);
            }
            Err(_) => {
                probes.remove(&plugin.name);
            }
        }
    }
}
