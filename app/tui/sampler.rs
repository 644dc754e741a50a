//! The sampling thread: takes the engine's snapshot once per interval, or sooner when
//! something happened, and hands it to the UI as owned data — the UI never waits on the
//! engine's locks while it draws.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plugboard_engine::Engine;

use super::event_loop::AppEvent;

/// Refreshes asked for by events come at most this often (an event flood must not turn
/// into a snapshot flood).
const MIN_GAP: Duration = Duration::from_millis(100);

/// Runs until the UI's receiver or the wake channel is gone. `watched`: the plugin whose
/// resource history the UI charts, if any (set by the UI thread).
pub fn run(
    engine: &Arc<Engine>,
    interval: Duration,
    watched: &Mutex<Option<String>>,
    wake: &Receiver<()>,
    out: &Sender<AppEvent>,
) {
    loop {
        let taken = Instant::now();
        if out
            .send(AppEvent::Sample(Box::new(engine.snapshot())))
            .is_err()
        {
            return;
        }
        let plugin = watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(plugin) = plugin
            && let Ok(samples) = engine.resource_history(&plugin)
            && out.send(AppEvent::History { plugin, samples }).is_err()
        {
            return;
        }
        match wake.recv_timeout(interval) {
            Ok(()) => {
                std::thread::sleep(MIN_GAP.saturating_sub(taken.elapsed()));
                while wake.try_recv().is_ok() {}
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
