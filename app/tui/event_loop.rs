//! The event loop: one channel carries keys, mouse, resizes, samples, engine events,
//! command results and signals to the UI thread, which redraws when something arrived —
//! never in a busy loop. Commands run on threads of their own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use crossterm::event::{Event as TermEvent, KeyCode, KeyEventKind, MouseEventKind};
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::{Command, Engine, EngineError, Event, Outcome, PluginSnapshot, Snapshot};

use super::app::{App, Effect, Job, JobError, Status};
use super::terminal::{self, TerminalGuard};
use super::theme::Role;
use super::{reload_preview, sampler, ui};

/// Samples and engine events sent to the UI thread and not yet handled. While the UI is
/// behind (a terminal that stopped reading blocks it in `draw`), the sampler skips its
/// ticks and the events thread waits, leaving the engine's bounded subscription to fill:
/// a stalled dashboard holds one snapshot and a bounded number of events, not a queue
/// that grows every second.
#[derive(Debug, Default)]
pub struct Unread {
    pub samples: AtomicUsize,
    pub events: AtomicUsize,
    /// The UI thread has left its loop: nobody will read again, so nobody waits for it.
    pub closed: AtomicBool,
}

/// Engine events the UI may have waiting before the events thread stops taking more.
const EVENTS_UNREAD_MAX: usize = plugboard_engine::events::SUBSCRIBER_QUEUE;

/// Everything the UI thread reacts to.
#[derive(Debug)]
pub enum AppEvent {
    Terminal(TermEvent),
    Sample(Box<Snapshot>),
    Engine(Event),
    JobDone {
        id: u64,
        job: Job,
        result: Result<Outcome, JobError>,
    },
    /// The resource samples and the whole kept log of the plugin the detail view shows.
    History {
        plugin: String,
        samples: Vec<plugboard_engine::monitor::ResourceSample>,
        output: Vec<plugboard_engine::snapshot::OutputLine>,
    },
    ReloadPreview {
        plugin: Box<PluginSnapshot>,
        changes: Vec<String>,
    },
    Signal(i32),
}

/// How the dashboard begins: which plugins to start, whether to turn traffic on.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub start: Vec<String>,
    pub load: Vec<String>,
    pub traffic: Option<f64>,
    pub sample_interval: Option<Duration>,
}

/// Runs the dashboard until the user quits or a signal arrives; stops every plugin
/// gracefully on the way out.
pub fn run(engine: Engine, mut app: App, startup: &Startup) -> Result<()> {
    let engine = Arc::new(engine);
    let (sender, receiver) = mpsc::channel();
    let (wake, wake_receiver) = mpsc::channel();
    spawn_signal_thread(&sender)?;
    // Subscribe before reading the ring, so nothing falls between the two.
    let events = engine.subscribe();
    for event in engine.recent_events() {
        app.on_engine_event(event);
    }
    let unread = Arc::new(Unread::default());
    spawn_engine_events(events, sender.clone(), wake.clone(), Arc::clone(&unread));
    let watched = Arc::new(Mutex::new(None));
    {
        let (engine, sender, watched, unread) = (
            Arc::clone(&engine),
            sender.clone(),
            Arc::clone(&watched),
            Arc::clone(&unread),
        );
        let interval = startup.sample_interval.unwrap_or(Duration::from_secs(1));
        std::thread::Builder::new()
            .name("pb-ui-sampler".to_owned())
            .spawn(move || {
                sampler::run(
                    &engine,
                    interval,
                    &watched,
                    &wake_receiver,
                    &sender,
                    &unread,
                );
            })
            .context("cannot start the sampling thread")?;
    }

    let mut guard = TerminalGuard::enter()?;
    spawn_input_thread(sender.clone());
    let runner = JobRunner::new(Arc::clone(&engine), sender.clone(), wake);
    // The dashboard's own start-up jobs: said in the status line only if they fail.
    for plugin in &startup.load {
        let id = runner.run(
            &mut app,
            Job {
                label: format!("load {plugin}"),
                command: Command::Load {
                    plugin: plugin.clone(),
                },
            },
        );
        app.quiet_jobs.insert(id);
    }
    for plugin in &startup.start {
        let id = runner.run(
            &mut app,
            Job {
                label: format!("start {plugin}"),
                command: Command::Start {
                    plugin: plugin.clone(),
                },
            },
        );
        app.quiet_jobs.insert(id);
    }
    if let Some(rate) = startup.traffic {
        app.traffic_rate = rate;
        let id = runner.run(
            &mut app,
            Job {
                label: format!("traffic on ({rate} calls/s)"),
                command: Command::Traffic { rate: Some(rate) },
            },
        );
        app.quiet_jobs.insert(id);
    }
    drop(sender);

    // A panic on this thread (a drawing bug) is caught here once the panic hook has
    // restored the terminal and printed the message: the plugins are then stopped and their
    // cgroups removed as on any other way out, rather than left to die with the process.
    let panic_key = test_panic_key();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        event_loop(
            &mut guard, &mut app, &receiver, &runner, &watched, &unread, panic_key,
        )
    }))
    .unwrap_or_else(|_| Err(anyhow!("the dashboard panicked (its message is above)")));
    unread.closed.store(true, Ordering::Release);

    // Leave gracefully whatever ended the loop: say so, stop everything, restore.
    app.status = Some(Status {
        text: "stopping plugins…".to_owned(),
        role: Role::Warn,
    });
    if !terminal::panicked() {
        let _ = guard.terminal.draw(|frame| ui::draw(frame, &mut app));
    }
    let _ = engine.execute(Command::Traffic { rate: None });
    engine.shutdown();
    drop(guard);
    outcome
}

/// The key that makes the UI thread panic when `PLUGBOARD_TEST_PANIC_KEY` names one (read
/// once, at start). A test hook, and the only way to make a working dashboard panic: the
/// end-to-end test presses it to check that a panic restores the terminal and stops every
/// worker. Unset (always, outside that test), no key panics.
fn test_panic_key() -> Option<char> {
    std::env::var("PLUGBOARD_TEST_PANIC_KEY")
        .ok()
        .and_then(|key| key.chars().next())
}

fn event_loop(
    guard: &mut TerminalGuard,
    app: &mut App,
    receiver: &Receiver<AppEvent>,
    runner: &JobRunner,
    watched: &Mutex<Option<String>>,
    unread: &Unread,
    panic_key: Option<char>,
) -> Result<()> {
    let mut dirty = true;
    loop {
        if terminal::panicked() {
            bail!("a dashboard thread panicked (its message is above)");
        }
        if dirty {
            guard
                .terminal
                .draw(|frame| ui::draw(frame, app))
                .context("cannot draw")?;
            dirty = false;
        }
        // Samples arrive every second, so the clock and countdowns stay current without a
        // timer of our own; the timeout only guards against a stalled sampler.
        let first = match receiver.recv_timeout(Duration::from_secs(2)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                dirty = true;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // Take everything already queued before drawing once.
        let mut next = Some(first);
        while let Some(event) = next {
            if let AppEvent::Terminal(TermEvent::Key(key)) = &event
                && panic_key.is_some_and(|panic_key| key.code == KeyCode::Char(panic_key))
            {
                panic!("PLUGBOARD_TEST_PANIC_KEY pressed: the panic the test asked for");
            }
            match handle(app, event, runner, unread) {
                Handled::Quit => return Ok(()),
                Handled::Redraw => dirty = true,
                Handled::Nothing => {}
            }
            next = receiver.try_recv().ok();
        }
        // Tell the sampler which plugin's history the charts need now.
        let wanted = app.watched_plugin();
        let mut current = watched.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != wanted {
            *current = wanted;
        }
    }
}

enum Handled {
    Redraw,
    Nothing,
    Quit,
}

fn handle(app: &mut App, event: AppEvent, runner: &JobRunner, unread: &Unread) -> Handled {
    let effects = match event {
        AppEvent::Terminal(TermEvent::Key(key)) if key.kind != KeyEventKind::Release => {
            app.on_key(key)
        }
        AppEvent::Terminal(TermEvent::Mouse(mouse)) => {
            if mouse.kind == MouseEventKind::Moved {
                return Handled::Nothing;
            }
            app.on_mouse(mouse)
        }
        AppEvent::Terminal(TermEvent::Resize(..)) => Vec::new(),
        AppEvent::Terminal(_) => return Handled::Nothing,
        AppEvent::Sample(sample) => {
            unread.samples.fetch_sub(1, Ordering::AcqRel);
            app.on_sample(*sample);
            Vec::new()
        }
        AppEvent::Engine(event) => {
            unread.events.fetch_sub(1, Ordering::AcqRel);
            app.on_engine_event(event);
            Vec::new()
        }
        AppEvent::JobDone { id, job, result } => app.on_job_done(id, &job, result),
        AppEvent::History {
            plugin,
            samples,
            output,
        } => {
            unread.samples.fetch_sub(1, Ordering::AcqRel);
            app.on_resource_history(plugin.clone(), samples);
            app.on_output_history(plugin, output);
            Vec::new()
        }
        AppEvent::ReloadPreview { plugin, changes } => {
            app.on_reload_preview(&plugin, changes);
            Vec::new()
        }
        AppEvent::Signal(signal) => {
            app.status = Some(Status {
                text: format!("signal {signal}: leaving"),
                role: Role::Warn,
            });
            return Handled::Quit;
        }
    };
    for effect in effects {
        match effect {
            Effect::Quit => return Handled::Quit,
            Effect::Run(job) => {
                runner.run(app, job);
            }
            Effect::PreviewReload { plugin } => {
                // The host's limits, as the engine will check and fill in the new manifest.
                let limits = app
                    .history
                    .back()
                    .map(|snapshot| snapshot.host_limits.clone())
                    .unwrap_or_default();
                runner.preview_reload(plugin, limits);
            }
        }
    }
    Handled::Redraw
}

/// Runs each command on a thread of its own (a start or a stop can take seconds) and
/// reports back on the UI's channel — but traffic commands one after the other on a thread
/// of theirs, in the order the keys asked for them: run side by side, a burst of `+` ended
/// at whichever rate the engine took last, and said another.
struct JobRunner {
    engine: Arc<Engine>,
    sender: Sender<AppEvent>,
    wake: Sender<()>,
    traffic: Option<Sender<(u64, Job)>>,
}

impl JobRunner {
    fn new(engine: Arc<Engine>, sender: Sender<AppEvent>, wake: Sender<()>) -> Self {
        let (traffic, jobs) = std::sync::mpsc::channel::<(u64, Job)>();
        let (lane_engine, lane_sender, lane_wake) =
            (Arc::clone(&engine), sender.clone(), wake.clone());
        let lane = std::thread::Builder::new()
            .name("pb-ui-traffic".to_owned())
            .spawn(move || {
                for (id, job) in jobs {
                    let result = lane_engine
                        .execute(job.command.clone())
                        .map_err(|err| job_error(&err));
                    let _ = lane_sender.send(AppEvent::JobDone { id, job, result });
                    let _ = lane_wake.send(());
                }
            });
        Self {
            engine,
            sender,
            wake,
            // Without its thread, traffic commands run as the others do.
            traffic: lane.is_ok().then_some(traffic),
        }
    }

    /// Runs `job` on a thread of its own (a traffic command on the traffic thread): its
    /// id.
    fn run(&self, app: &mut App, job: Job) -> u64 {
        let id = app.begin_job(&job);
        let job = match (&self.traffic, &job.command) {
            (Some(traffic), Command::Traffic { .. }) => match traffic.send((id, job)) {
                Ok(()) => return id,
                Err(std::sync::mpsc::SendError((_, job))) => job,
            },
            _ => job,
        };
        let (engine, sender, wake) = (
            Arc::clone(&self.engine),
            self.sender.clone(),
            self.wake.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("pb-ui-command".to_owned())
            .spawn(move || {
                let result = engine
                    .execute(job.command.clone())
                    .map_err(|err| job_error(&err));
                let _ = sender.send(AppEvent::JobDone { id, job, result });
                let _ = wake.send(());
            });
        if let Err(err) = spawned {
            app.pending.remove(&id);
            app.status = Some(Status {
                text: format!("cannot start a command thread: {err}"),
                role: Role::Error,
            });
        }
        id
    }
}

impl JobRunner {
    /// Reads the bundle on disk on a thread of its own (it hashes the whole library).
    fn preview_reload(&self, plugin: Box<PluginSnapshot>, limits: HostLimits) {
        let sender = self.sender.clone();
        let engine = Arc::clone(&self.engine);
        let _ = std::thread::Builder::new()
            .name("pb-ui-preview".to_owned())
            .spawn(move || {
                let changes = reload_preview::preview(
                    &plugin,
                    std::path::Path::new(&plugin.dir),
                    &limits,
                    reload_preview::EngineChecks {
                        verify: |bundle: &_| engine.verify_bundle(bundle),
                        dependencies: |bundle: &_| {
                            engine
                                .check_reload_dependencies(&plugin.name, bundle)
                                .map_err(|err| err.to_string())
                        },
                    },
                );
                let _ = sender.send(AppEvent::ReloadPreview { plugin, changes });
            });
    }
}

fn job_error(err: &EngineError) -> JobError {
    JobError {
        message: err.to_string(),
        dependents: match err {
            EngineError::HasDependents { dependents, .. } => dependents.clone(),
            _ => Vec::new(),
        },
    }
}

fn spawn_engine_events(
    events: Receiver<Event>,
    sender: Sender<AppEvent>,
    wake: Sender<()>,
    unread: Arc<Unread>,
) {
    let _ = std::thread::Builder::new()
        .name("pb-ui-events".to_owned())
        .spawn(move || {
            for event in events {
                while unread.events.load(Ordering::Acquire) >= EVENTS_UNREAD_MAX
                    && !unread.closed.load(Ordering::Acquire)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                unread.events.fetch_add(1, Ordering::AcqRel);
                if sender.send(AppEvent::Engine(event)).is_err() {
                    return;
                }
                // A state change: refresh the table now, not at the next tick.
                let _ = wake.send(());
            }
        });
}

/// Blocks in the terminal's `read` on its own thread; ends with the process.
fn spawn_input_thread(sender: Sender<AppEvent>) {
    let _ = std::thread::Builder::new()
        .name("pb-ui-input".to_owned())
        .spawn(move || {
            while let Ok(event) = crossterm::event::read() {
                if sender.send(AppEvent::Terminal(event)).is_err() {
                    return;
                }
            }
        });
}

/// SIGTERM, SIGINT and SIGHUP end the dashboard through the same graceful path as `q`.
fn spawn_signal_thread(sender: &Sender<AppEvent>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let sender = sender.clone();
    std::thread::Builder::new()
        .name("pb-ui-signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(AppEvent::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
