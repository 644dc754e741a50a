//! The sampling thread: takes the engine's snapshot once per interval, or sooner when
//! something happened, and hands it to the UI as owned data — the UI never waits on the
//! engine's locks while it draws.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plugboard_engine::Engine;

use super::event_loop::{AppEvent, Unread};

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
    unread: &Unread,
) {
    loop {
        let taken = Instant::now();
        // The UI has not taken the last sample yet (it is stalled): skip this tick.
        if unread.samples.load(Ordering::Acquire) == 0 {
            unread.samples.fetch_add(1, Ordering::AcqRel);
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
                && let Ok(output) = engine.plugin_output(&plugin)
            {
                unread.samples.fetch_add(1, Ordering::AcqRel);
                let history = AppEvent::History {
                    plugin,
                    samples,
                    output,
                };
                if out.send(history).is_err() {
                    return;
                }
            }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use plugboard_engine::{Engine, EngineConfig};

    use super::{AppEvent, Unread, run};

    /// A UI that stopped taking samples (its terminal blocked) gets no more until it takes
    /// the one it has: the queue to it never grows with every tick.
    #[test]
    fn a_stalled_ui_is_sent_no_further_sample_until_it_takes_the_last() {
        // An engine without plugins: what is sampled does not matter here.
        let engine = Arc::new(
            Engine::start(EngineConfig::new(PathBuf::from(
                "/nonexistent/plugboard-host",
            )))
            .expect("the engine starts"),
        );
        let (out, received) = mpsc::channel();
        let (wake, woken) = mpsc::channel::<()>();
        let unread = Arc::new(Unread::default());
        let sampler = {
            let (engine, unread) = (Arc::clone(&engine), Arc::clone(&unread));
            std::thread::spawn(move || {
                run(
                    &engine,
                    Duration::from_millis(10),
                    &Mutex::new(None),
                    &woken,
                    &out,
                    &unread,
                );
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let samples = |received: &mpsc::Receiver<AppEvent>| {
            received
                .try_iter()
                .filter(|event| matches!(event, AppEvent::Sample(_)))
                .count()
        };
        assert_eq!(
            samples(&received),
            1,
            "about 30 ticks, one sample while none was taken"
        );
        // The UI takes it: samples flow again, one at a time.
        unread.samples.fetch_sub(1, Ordering::AcqRel);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(samples(&received), 1);
        drop(wake);
        sampler.join().unwrap();
        engine.shutdown();
    }
}
