//! SIGINT, SIGTERM and SIGHUP as a request to stop the engine: a command that runs plugins
//! must stop them (workers, cgroups) before it ends, which the signals' default action,
//! ending the process at once, would not do. SIGHUP is what a closed terminal or a dropped
//! ssh session sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use plugboard_engine::Engine;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Whether `signal` was ignored when the process started (`SigIgn` in
/// `/proc/self/status`: `nohup` ignores SIGHUP for the command it runs).
fn ignored_at_start(signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .zip(u32::try_from(signal - 1).ok())
        .is_some_and(|(mask, bit)| mask & (1u64 << bit) != 0)
}

/// How often a wait looks whether a signal arrived.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// SIGINT, SIGTERM and SIGHUP, recorded instead of ending the process.
#[derive(Debug)]
pub struct StopSignals {
    /// The number of the last signal received; 0: none yet.
    received: Arc<AtomicUsize>,
}

impl StopSignals {
    /// From now on SIGINT, SIGTERM and SIGHUP no longer end the process; [`Self::received`] says
    /// whether one arrived.
    pub fn install() -> Result<Self> {
        let received = Arc::new(AtomicUsize::new(0));
        // Under `nohup` (SIGHUP ignored, as inherited) a hangup must not stop the engine.
        let hangup = (!ignored_at_start(SIGHUP)).then_some(SIGHUP);
        for signal in [Some(SIGINT), Some(SIGTERM), hangup].into_iter().flatten() {
            let number = usize::try_from(signal).context("a signal number is positive")?;
            signal_hook::flag::register_usize(signal, Arc::clone(&received), number)
                .context("cannot install signal handlers")?;
        }
        Ok(Self { received })
    }

    /// The name of the signal that asked to stop, if one did.
    pub fn received(&self) -> Option<&'static str> {
        let number = self.received.load(Ordering::SeqCst);
        match i32::try_from(number) {
            Ok(0) | Err(_) => None,
            Ok(SIGINT) => Some("SIGINT"),
            Ok(SIGTERM) => Some("SIGTERM"),
            Ok(SIGHUP) => Some("SIGHUP"),
            Ok(_) => Some("a signal"),
        }
    }

    /// Runs `work`, which waits on `engine` (a hook call), and shuts the engine down — its
    /// plugins stopped, its workers ended, its cgroups removed — as soon as a signal
    /// arrives meanwhile, which also ends the wait.
    pub fn stop_engine_during<T>(&self, engine: &Engine, work: impl FnOnce() -> T) -> T {
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !finished.load(Ordering::SeqCst) {
                    if self.received().is_some() {
                        engine.shutdown();
                        return;
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
            });
            let result = work();
            finished.store(true, Ordering::SeqCst);
            result
        })
    }
}
