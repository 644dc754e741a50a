//! The traffic generator: calls every enabled hook of every running plugin, round-robin,
//! at a rate (calls per second over all of them), as a demo or a soak would.
//!
//! A paced loop hands each call to its plugin's lane — a thread of that plugin's own — so
//! a plugin whose hooks are slow holds back only its own calls: while its lane is still
//! in a call, its turns go to the next plugin, and the rest keep the rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::HookHandle;
use crate::engine::Shared;
use crate::supervisor::Plugin;

/// How often the generator looks for plugins and hooks to call. Between looks its handles
/// follow reloads, stops and hook toggles on their own.
const TARGETS_REFRESH: Duration = Duration::from_millis(250);

/// One hook to call, and its plugin.
struct Target {
    plugin: Arc<Plugin>,
    hook: String,
}

/// A plugin's lane: a thread calling its hooks one at a time, as the generator hands them.
struct Lane {
    /// Set while the lane is in a call (or has one waiting).
    busy: Arc<AtomicBool>,
    calls: mpsc::SyncSender<String>,
}

impl Lane {
    fn start(plugin: &Arc<Plugin>) -> Option<Lane> {
        let busy = Arc::new(AtomicBool::new(false));
        let (calls, hooks) = mpsc::sync_channel::<String>(1);
        let plugin = Arc::clone(plugin);
        let lane_busy = Arc::clone(&busy);
        std::thread::Builder::new()
            .name(format!("pb-traffic-{}", plugin.name))
            .spawn(move || {
                let mut handles: HashMap<String, HookHandle> = HashMap::new();
                let mut epoch = None;
                // Ends when the generator drops the lane (traffic off, the plugin gone).
                for hook in hooks {
                    // A handle keeps what it resolved until its next call: after a start,
                    // stop, reload or toggle, hooks no longer called would keep an old
                    // worker (or in-process instance) alive. Resolved afresh instead.
                    let now = plugin.call_path_epoch.load(Ordering::Acquire);
                    if epoch.replace(now) != Some(now) {
                        handles.clear();
                    }
                    let handle = handles.entry(hook).or_insert_with_key(|hook| {
                        HookHandle::new(Arc::clone(&plugin), hook.clone())
                    });
                    // Its outcome is in the hook's statistics, like any call's.
                    let _ = handle.call(b"traffic");
                    lane_busy.store(false, Ordering::Release);
                }
            })
            .ok()?;
        Some(Lane { busy, calls })
    }

    /// Hands the lane `hook` if it is free.
    fn offer(&self, hook: &str) -> Offered {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Offered::Busy;
        }
        match self.calls.try_send(hook.to_owned()) {
            Ok(()) => Offered::Taken,
            Err(mpsc::TrySendError::Full(_)) => {
                self.busy.store(false, Ordering::Release);
                Offered::Busy
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Offered::Gone,
        }
    }
}

enum Offered {
    Taken,
    Busy,
    /// Its thread ended (a panic in a call): the lane is started again.
    Gone,
}

/// Calls `rate` times a second until `running` is cleared.
pub(crate) fn drive_traffic(shared: &Arc<Shared>, rate: f64, running: &AtomicBool) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut targets = Vec::new();
    let mut lanes: HashMap<String, Lane> = HashMap::new();
    let mut looked = None::<Instant>;
    let mut turn = 0usize;
    while running.load(Ordering::SeqCst) {
        if looked.is_none_or(|at| at.elapsed() >= TARGETS_REFRESH) {
            targets = traffic_targets(shared);
            // Lanes of plugins no longer called end after their call.
            lanes.retain(|name, _| targets.iter().any(|target| target.plugin.name == *name));
            looked = Some(Instant::now());
        }
        // The next target that takes a call now: a hook disabled or a plugin stopped since
        // the last look, or a plugin still in its previous call, is passed over.
        let count = targets.len();
        for _ in 0..count {
            let target = &targets[turn % count];
            turn = turn.wrapping_add(1);
            if !target.plugin.hook_enabled(&target.hook) || target.plugin.running().is_none() {
                continue;
            }
            let lane = match lanes.get(&target.plugin.name) {
                Some(lane) => lane,
                None => match Lane::start(&target.plugin) {
                    Some(lane) => lanes.entry(target.plugin.name.clone()).or_insert(lane),
                    None => continue,
                },
            };
            match lane.offer(&target.hook) {
                Offered::Taken => break,
                Offered::Busy => {}
                Offered::Gone => {
                    lanes.remove(&target.plugin.name);
                }
            }
        }
        next += interval;
        // In slices, so that traffic off or a new rate ends this loop (and its lanes) at
        // once even at a call every few minutes.
        while let Some(wait) = next.checked_duration_since(Instant::now()) {
            if !running.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(wait.min(TARGETS_REFRESH));
        }
        if Instant::now() > next + interval {
            next = Instant::now();
        }
    }
}

/// Every enabled hook of every running plugin, but those its manifest keeps from traffic.
fn traffic_targets(shared: &Shared) -> Vec<Target> {
    shared
        .all_plugins()
        .into_iter()
        .flat_map(|plugin| {
            let hooks: Vec<String> = plugin
                .running()
                .map(|running| {
                    running
                        .timeouts
                        .keys()
                        .filter(|hook| {
                            plugin.hook_enabled(hook) && !running.no_traffic.contains(*hook)
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            hooks.into_iter().map(move |hook| Target {
                plugin: Arc::clone(&plugin),
                hook,
            })
        })
        .collect()
}
