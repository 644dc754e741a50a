//! Supervision: one actor thread per plugin owns its lifecycle state — load, start, stop,
//! reload, unload, enable/disable, restarts with backoff after a crash — and reacts to its
//! worker's events. Commands and worker events are messages to that actor, so nothing else
//! changes the state. Hook calls do not queue behind the actor: they go straight to the
//! running worker (`Running`).

mod actor;
pub(crate) mod dependencies;
mod policy;
mod runner;
pub mod state_file;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

pub use policy::{PluginOverrides, RestartPolicy, WatchPolicy};
pub(crate) use runner::Runner;

pub use actor::NOT_RESTARTED;
pub(crate) use actor::{
    hooks_in_flight, millis, run_actor, say_dependents_left_running, say_not_started,
};

use crate::engine::EngineError;
use crate::events::unix_millis;
use crate::hooks::HookStats;
use crate::loader::SealedLibrary;
use crate::manifest::Manifest;
use crate::monitor::SampleSeries;
use crate::policy::{Violation, ViolationCounts};
use crate::snapshot::{Health, OutputLine, PluginState, TrustInfo};
use crate::worker::{
    ExitStatus, MechanismState, OUTPUT_LINES_PER_SEC, OutputStream, TokenBucket, WorkerEvent,
};

/// Violations of one kind (and syscall) a minute that are itemized as events and audit
/// lines when the policy only logs them; the rest are counted, and the next itemized one
/// says how many came between.
pub(crate) const ITEMIZED_PER_MINUTE: u32 = 20;

/// One kind of logged violation within its minute (see [`ITEMIZED_PER_MINUTE`]): how
/// many were itemized, and how many only counted since the last itemized one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoggedMinute {
    pub since: Instant,
    pub shown: u32,
    pub counted_only: u64,
}

/// Captured output lines kept per plugin.
const OUTPUT_RING: usize = 500;

/// Events a plugin's actor may have waiting (worker events other than output lines, and
/// violations caught elsewhere). A worker can cause them faster than the actor records
/// them, above all while the actor is busy stopping or restarting it; past this backlog
/// they wait for room or are counted as unrecorded (see [`Plugin::queue_event`]).
const EVENT_BACKLOG: usize = 1024;

/// Slots of the backlog a waiting producer leaves to those that drop: a flood of
/// forbidden calls, whose listener takes every slot the actor frees, must not crowd out
/// the rarer violations that cannot wait.
const BACKLOG_RESERVE: usize = 64;

/// What a producer does with an event when the actor's backlog is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Queue it anyway: what comes at a pace the engine sets — a worker's exit or protocol
    /// violation (once), a hook timeout (bounded by the calls in flight), the sampler's
    /// resource violations (once per interval).
    Queue,
    /// Wait up to this long for room, then count it as unrecorded. For the seccomp
    /// listener, whose caller waits in its syscall meanwhile: the flood slows down to the
    /// pace at which the engine records it. Its room ends [`BACKLOG_RESERVE`] short of
    /// the backlog's.
    Wait(Duration),
    /// Count it as unrecorded at once: what a worker can send as fast as it likes and
    /// whose thread must not wait (a forbidden emit).
    Drop,
}

/// A plugin's captured output: a bounded ring behind a token-bucket rate limit of
/// [`OUTPUT_LINES_PER_SEC`] (bursts: twice that) whatever the stream, so a chatty or
/// hostile plugin cannot exhaust the engine's memory. (Its worker's follower limits stdout
/// and stderr at the same rate before lines are even built.)
pub(crate) struct OutputRing {
    pub lines: VecDeque<OutputLine>,
    pub dropped: u64,
    tokens: TokenBucket,
}

impl OutputRing {
    pub fn new() -> Self {
        Self {
            lines: VecDeque::with_capacity(OUTPUT_RING),
            dropped: 0,
            tokens: TokenBucket::new(OUTPUT_LINES_PER_SEC, OUTPUT_LINES_PER_SEC * 2.0),
        }
    }

    /// Keeps the line unless the rate limit drops it; the line kept, if it was.
    pub fn push(&mut self, stream: OutputStream, line: String) -> Option<&OutputLine> {
        self.tokens.refill();
        if !self.tokens.take() {
            self.dropped += 1;
            return None;
        }
        if self.lines.len() == OUTPUT_RING {
            self.lines.pop_front();
        }
        self.lines.push_back(OutputLine {
            at_ms: unix_millis(SystemTime::now()),
            stream,
            line,
        });
        self.lines.back()
    }
}

/// Where a crashed plugin is in its restart policy.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// When the restarts of the current window happened (oldest first).
    pub recent: VecDeque<Instant>,
    /// The pending restart, when one is scheduled.
    pub next_retry: Option<(Instant, SystemTime)>,
}

/// The lifecycle part of a plugin, owned by its actor.
pub(crate) struct Lifecycle {
    pub state: PluginState,
    pub reason: Option<String>,
    /// Set when the bundle can never be loaded as it is (a duplicate name).
    pub blocked: Option<String>,
    pub manifest: Option<Manifest>,
    pub library: Option<SealedLibrary>,
    /// What `library`'s trust verdict rests on, asked again at each start from it.
    pub proof: Option<actor::KeptProof>,
    /// The merged config the plugin receives at creation.
    pub config: serde_json::Map<String, serde_json::Value>,
    pub trust: TrustInfo,
    pub mechanisms: BTreeMap<String, MechanismState>,
    pub worker_pid: Option<u32>,
    pub sandbox_pid: Option<u32>,
    pub cgroup: Option<String>,
    pub last_exit: Option<ExitStatus>,
    pub violations: u64,
    /// Disabled by the host configuration or an operator: it does not start.
    pub disabled: bool,
    /// Generation of the current worker; events of older workers are ignored.
    pub generation: u64,
    /// The last generation given to a worker ([`Lifecycle::issue_generation`]), kept apart
    /// from `generation` so a worker that never became current (a failed reload) does not
    /// share its number with the next one, whose events its late exit would pass for.
    pub generations_issued: u64,
    pub starts: u64,
    pub restarts: u64,
    pub last_start: Option<SystemTime>,
    pub last_reload: Option<SystemTime>,
    pub backoff: Backoff,
    /// The bundle on disk differs from what was verified (seen by the watcher).
    pub changed_on_disk: bool,
    /// The bundle directory is gone from disk.
    pub removed_from_disk: bool,
    pub health: HealthCheck,
    /// Recent violations per kind, for the policy's thresholds.
    pub violation_counts: ViolationCounts,
    /// Violations the policy only logs, by kind and syscall: how many were itemized as
    /// events in the current minute and how many were only counted since the last one.
    pub itemized: BTreeMap<(crate::policy::ViolationKind, Option<String>), LoggedMinute>,
    /// Audit mode: what was already recorded as `audited` (each observation once).
    pub audited: BTreeSet<String>,
    /// The OOM kill count of worker `.0`'s cgroup already reported (`.1`): the sampler and
    /// the crash handler both read it, and a kill is reported by whichever reads it first.
    pub oom_kills_reported: (u64, u64),
}

/// The state of a plugin's health checks (`[health]` in its manifest).
#[derive(Debug)]
pub(crate) struct HealthCheck {
    pub health: Health,
    /// Failed checks in a row.
    pub failures: u32,
    pub next: Option<Instant>,
    pub last_checked: Option<SystemTime>,
    /// The plugin's answer to the last failed check.
    pub last_failure: Option<String>,
}

impl HealthCheck {
    pub fn new() -> Self {
        Self {
            health: Health::Unknown,
            failures: 0,
            next: None,
            last_checked: None,
            last_failure: None,
        }
    }
}

impl Lifecycle {
    /// A generation no worker of this plugin had before.
    pub fn issue_generation(&mut self) -> u64 {
        self.generations_issued += 1;
        self.generations_issued
    }

    pub fn new(blocked: Option<String>) -> Self {
        Self {
            state: if blocked.is_some() {
                PluginState::Rejected
            } else {
                PluginState::Discovered
            },
            reason: blocked.clone(),
            blocked,
            manifest: None,
            library: None,
            proof: None,
            config: serde_json::Map::new(),
            trust: TrustInfo::default(),
            mechanisms: BTreeMap::new(),
            worker_pid: None,
            sandbox_pid: None,
            cgroup: None,
            last_exit: None,
            violations: 0,
            disabled: false,
            generation: 0,
            generations_issued: 0,
            starts: 0,
            restarts: 0,
            last_start: None,
            last_reload: None,
            backoff: Backoff::default(),
            changed_on_disk: false,
            removed_from_disk: false,
            health: HealthCheck::new(),
            violation_counts: ViolationCounts::default(),
            itemized: BTreeMap::new(),
            audited: BTreeSet::new(),
            oom_kills_reported: (0, 0),
        }
    }

    /// Of the `total` OOM kills counted in worker `generation`'s cgroup, how many were not
    /// reported yet; from now on they count as reported.
    pub fn claim_oom_kills(&mut self, generation: u64, total: u64) -> u64 {
        let (seen_generation, seen) = self.oom_kills_reported;
        let reported = if seen_generation == generation {
            seen
        } else {
            0
        };
        if total > reported {
            self.oom_kills_reported = (generation, total);
        }
        total.saturating_sub(reported)
    }

    /// Whether the plugin has (or is about to have) a worker serving calls.
    pub fn is_up(&self) -> bool {
        matches!(
            self.state,
            PluginState::Running
                | PluginState::Degraded
                | PluginState::Starting
                | PluginState::Reloading
        )
    }
}

/// A running plugin as the call path sees it: the worker and what each call needs to know,
/// computed once at start so a call takes no lifecycle lock.
pub(crate) struct Running {
    pub runner: Runner,
    pub generation: u64,
    pub timeouts: BTreeMap<String, Duration>,
    /// Hooks its manifest keeps from the traffic generator (`traffic = false`).
    pub no_traffic: BTreeSet<String>,
    /// Its `max_in_flight`, over all its hooks together.
    pub max_in_flight: u64,
    /// The statistics of every hook its manifest subscribes to: what its calls in flight
    /// are counted over.
    pub hook_stats: Box<[Arc<HookStats>]>,
    /// The hooks its manifest lets it emit (checked where an emit arrives).
    pub emit_grants: Vec<String>,
    /// Hooks whose calls found the worker gone: what it was doing when it died.
    pub lost_calls: Mutex<BTreeSet<String>>,
}

/// An answer to a command, sent back by the actor.
pub(crate) type Reply = mpsc::Sender<Result<(), EngineError>>;

/// What the bundle watcher saw. Each names the directory it is about: the plugin may have
/// moved on since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DiskChange {
    Changed(PathBuf),
    Removed(PathBuf),
    Restored(PathBuf),
    /// The bundle providing the plugin is now the one in `to`.
    Moved {
        from: PathBuf,
        to: PathBuf,
    },
}

pub(crate) enum ActorMessage {
    Load(Reply),
    Start(Reply),
    Stop(Reply),
    /// The engine shuts down: a running worker is stopped; a plugin that is down keeps its
    /// state (failed, rejected, quarantined…) for the final snapshot.
    Shutdown(Reply),
    Unload(Reply),
    Reload(Reply),
    SetEnabled(bool, Reply),
    ClearQuarantine(Reply),
    /// Caught outside the actor (a hook timeout, a forbidden emit, a resource counter), in
    /// the worker of `generation` when one was seen: a worker replaced since (a reload, a
    /// restart) answers for its own violations no more, its successor not at all.
    Violation {
        generation: Option<u64>,
        violation: Violation,
    },
    /// A worker's event; `hooks` are the hooks that were in flight when it was produced
    /// (for violations, the likeliest culprits).
    Worker {
        generation: u64,
        event: WorkerEvent,
        hooks: Option<String>,
    },
    Disk(DiskChange),
    /// The trust store changed on disk: a plugin up on a verdict it no longer gives is
    /// stopped.
    TrustChanged,
    Exit,
}

/// One plugin: its bundle directory, the actor-owned lifecycle, and what calls touch.
pub(crate) struct Plugin {
    pub name: String,
    /// Changed only through [`Plugin::move_to`]: a bundle moved on disk.
    dir: RwLock<PathBuf>,
    /// The watcher saw the bundle in `dir` removed (and not back since).
    bundle_gone: AtomicBool,
    /// For a bundle refused because another one already provides its plugin name: that
    /// name (the entry itself is keyed by the bundle's path).
    pub duplicate_of: Option<String>,
    pub lifecycle: Mutex<Lifecycle>,
    /// What serves its calls; replaced only through [`Plugin::set_running`].
    running: RwLock<Option<Arc<Running>>>,
    /// Moves on whenever `running` or `disabled_hooks` changes, so a [`HookHandle`]
    /// knows with one atomic load whether what it resolved still holds.
    ///
    /// [`HookHandle`]: crate::hooks::HookHandle
    pub call_path_epoch: AtomicU64,
    pub stats: Mutex<BTreeMap<String, Arc<HookStats>>>,
    /// Changed only through [`Plugin::set_hook_enabled`].
    disabled_hooks: RwLock<BTreeSet<String>>,
    pub output: Mutex<OutputRing>,
    /// Resource samples of its workers (the sampler writes, snapshots and charts read).
    pub resources: Mutex<SampleSeries>,
    pub inbox: mpsc::Sender<ActorMessage>,
    /// Events queued for the actor through [`Plugin::queue_event`] and not yet handled.
    event_backlog: AtomicUsize,
    /// Events dropped because the backlog was full, since the plugin was discovered.
    events_unrecorded: AtomicU64,
    /// Emits refused for a chain too deep: how many, and when that was last said.
    pub deep_emits: Mutex<(u64, Option<Instant>)>,
    /// The worker waiting to be ready, while a start or reload waits for it: what the
    /// engine's shutdown cancels.
    pub starting: Mutex<Option<crate::worker::StartCancel>>,
    /// The worker a reload replaced, while it finishes the calls it was given: their emits
    /// are still its own (admitted under its manifest's grants).
    pub retiring: Mutex<Option<Arc<Running>>>,
    /// Hooks emitted through the engine (granted ones).
    pub emitted: AtomicU64,
    pub actor: Mutex<Option<JoinHandle<()>>>,
    /// Held while an operator's toggle (enable, disable, a hook's) takes effect and is
    /// persisted, so two racing toggles are saved in the order they took effect.
    pub toggle_order: Mutex<()>,
}

impl Plugin {
    pub fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        dir: PathBuf,
        duplicate_of: Option<String>,
        lifecycle: Lifecycle,
        disabled_hooks: BTreeSet<String>,
        resources: SampleSeries,
        inbox: mpsc::Sender<ActorMessage>,
    ) -> Self {
        Self {
            name,
            dir: RwLock::new(dir),
            bundle_gone: AtomicBool::new(false),
            duplicate_of,
            lifecycle: Mutex::new(lifecycle),
            running: RwLock::new(None),
            call_path_epoch: AtomicU64::new(0),
            stats: Mutex::new(BTreeMap::new()),
            disabled_hooks: RwLock::new(disabled_hooks),
            output: Mutex::new(OutputRing::new()),
            resources: Mutex::new(resources),
            inbox,
            event_backlog: AtomicUsize::new(0),
            events_unrecorded: AtomicU64::new(0),
            deep_emits: Mutex::new((0, None)),
            starting: Mutex::new(None),
            retiring: Mutex::new(None),
            emitted: AtomicU64::new(0),
            actor: Mutex::new(None),
            toggle_order: Mutex::new(()),
        }
    }

    /// The bundle directory it is (re)loaded from.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Points the plugin at the bundle in `dir` and returns where it was; what runs is
    /// untouched until the next start or reload.
    pub fn move_to(&self, dir: PathBuf) -> PathBuf {
        std::mem::replace(
            &mut *self.dir.write().unwrap_or_else(PoisonError::into_inner),
            dir,
        )
    }

    pub fn bundle_gone(&self) -> bool {
        self.bundle_gone.load(Ordering::SeqCst)
    }

    pub fn set_bundle_gone(&self, gone: bool) {
        self.bundle_gone.store(gone, Ordering::SeqCst);
    }

    pub fn running(&self) -> Option<Arc<Running>> {
        self.running
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `running` in place of what served the calls (`None`: nothing does), and
    /// returns that.
    pub fn set_running(&self, running: Option<Arc<Running>>) -> Option<Arc<Running>> {
        let previous = std::mem::replace(
            &mut *self.running.write().unwrap_or_else(PoisonError::into_inner),
            running,
        );
        self.call_path_epoch.fetch_add(1, Ordering::Release);
        previous
    }

    pub fn hook_enabled(&self, hook: &str) -> bool {
        !self
            .disabled_hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(hook)
    }

    /// Enables or disables one hook; says whether that changed anything.
    pub fn set_hook_enabled(&self, hook: &str, enabled: bool) -> bool {
        let changed = {
            let mut disabled = self
                .disabled_hooks
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if enabled {
                disabled.remove(hook)
            } else {
                disabled.insert(hook.to_owned())
            }
        };
        self.call_path_epoch.fetch_add(1, Ordering::Release);
        changed
    }

    /// The disabled hooks, sorted.
    pub fn disabled_hooks(&self) -> Vec<String> {
        self.disabled_hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The statistics of `hook`, made on first use.
    pub fn hook_stats(&self, hook: &str) -> Arc<HookStats> {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = stats.get(hook) {
            return Arc::clone(entry);
        }
        let entry = Arc::new(HookStats::new());
        stats.insert(hook.to_owned(), Arc::clone(&entry));
        entry
    }

    /// Queues a worker's event or a violation for the actor, unless its backlog is full
    /// (see [`WhenFull`]); says whether it was queued. Commands do not go this way: they
    /// come from callers that wait for their answer, so they cannot pile up.
    pub fn queue_event(&self, message: ActorMessage, when_full: WhenFull) -> bool {
        let capacity = match when_full {
            WhenFull::Wait(_) => EVENT_BACKLOG - BACKLOG_RESERVE,
            WhenFull::Queue | WhenFull::Drop => EVENT_BACKLOG,
        };
        if self.event_backlog.fetch_add(1, Ordering::AcqRel) >= capacity {
            let room = match when_full {
                WhenFull::Queue => true,
                WhenFull::Drop => false,
                WhenFull::Wait(wait) => {
                    let deadline = Instant::now() + wait;
                    loop {
                        std::thread::sleep(Duration::from_millis(1));
                        if self.event_backlog.load(Ordering::Acquire) <= capacity {
                            break true;
                        }
                        if Instant::now() >= deadline {
                            break false;
                        }
                    }
                }
            };
            if !room {
                self.event_backlog.fetch_sub(1, Ordering::AcqRel);
                self.events_unrecorded.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        if self.inbox.send(message).is_err() {
            // The actor is gone (the engine is shutting down): nothing will take it.
            self.event_backlog.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Called by the actor as it takes an event that [`Plugin::queue_event`] queued.
    pub fn event_taken(&self) {
        self.event_backlog.fetch_sub(1, Ordering::AcqRel);
    }

    /// Events dropped so far because the actor's backlog was full.
    pub fn events_unrecorded(&self) -> u64 {
        self.events_unrecorded.load(Ordering::Relaxed)
    }

    /// Sends `message` to the actor and waits for its answer.
    pub fn ask(&self, message: impl FnOnce(Reply) -> ActorMessage) -> Result<(), EngineError> {
        let (reply, answer) = mpsc::channel();
        let gone = || EngineError::Gone {
            plugin: self.name.clone(),
        };
        self.inbox.send(message(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::ViolationKind;

    #[test]
    fn an_oom_kill_is_claimed_once_per_worker_whoever_reads_the_count_first() {
        let mut lifecycle = Lifecycle::new(None);
        // The sampler reads one kill of worker 3, then the crash handler the same count.
        assert_eq!(lifecycle.claim_oom_kills(3, 1), 1);
        assert_eq!(lifecycle.claim_oom_kills(3, 1), 0);
        // Two more by the next read: only those are new.
        assert_eq!(lifecycle.claim_oom_kills(3, 3), 2);
        // A late, older reading claims nothing and forgets nothing.
        assert_eq!(lifecycle.claim_oom_kills(3, 2), 0);
        assert_eq!(lifecycle.claim_oom_kills(3, 3), 0);
        // The next worker's cgroup counts from zero.
        assert_eq!(lifecycle.claim_oom_kills(4, 1), 1);
        assert_eq!(lifecycle.claim_oom_kills(4, 0), 0);
    }

    fn plugin() -> (Plugin, mpsc::Receiver<ActorMessage>) {
        let (inbox, messages) = mpsc::channel();
        let plugin = Plugin::new(
            "flooder".to_owned(),
            PathBuf::from("/nonexistent"),
            None,
            Lifecycle::new(None),
            BTreeSet::new(),
            SampleSeries::new(Duration::from_secs(1), Duration::from_secs(1)),
            inbox,
        );
        (plugin, messages)
    }

    fn violation() -> ActorMessage {
        ActorMessage::Violation {
            generation: None,
            violation: Violation::new(ViolationKind::HookTimeout, "engine", "no reply"),
        }
    }

    /// The actor's side: takes what is queued, as `run_actor` does.
    fn take_all(plugin: &Plugin, messages: &mpsc::Receiver<ActorMessage>) -> usize {
        let mut taken = 0;
        while messages.try_recv().is_ok() {
            plugin.event_taken();
            taken += 1;
        }
        taken
    }

    #[test]
    fn a_flood_of_events_queues_no_more_than_the_backlog_and_counts_the_rest() {
        let (plugin, messages) = plugin();
        let queued = (0..EVENT_BACKLOG + 500)
            .filter(|_| plugin.queue_event(violation(), WhenFull::Drop))
            .count();
        assert_eq!(queued, EVENT_BACKLOG);
        assert_eq!(plugin.events_unrecorded(), 500);
        // A worker's exit gets through a full backlog.
        assert!(plugin.queue_event(violation(), WhenFull::Queue));
        assert_eq!(take_all(&plugin, &messages), EVENT_BACKLOG + 1);
        // Taken, the backlog has room again.
        assert!(plugin.queue_event(violation(), WhenFull::Drop));
        assert_eq!(take_all(&plugin, &messages), 1);
        assert_eq!(plugin.events_unrecorded(), 500);
    }

    #[test]
    fn a_producer_that_may_wait_leaves_a_reserve_and_gets_room_once_events_are_taken() {
        let (plugin, messages) = plugin();
        let wait = |wait| plugin.queue_event(violation(), WhenFull::Wait(wait));
        for _ in 0..EVENT_BACKLOG - BACKLOG_RESERVE {
            assert!(wait(Duration::from_secs(10)));
        }
        // Full for those that wait: the wait ends, and the event is counted.
        let started = Instant::now();
        assert!(!wait(Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(plugin.events_unrecorded(), 1);
        // The reserve is left for those that cannot wait.
        assert!(plugin.queue_event(violation(), WhenFull::Drop));
        // The actor takes two events while the producer waits: it gets the room.
        let messages = std::thread::scope(|scope| {
            let actor = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                for _ in 0..2 {
                    messages.recv().unwrap();
                    plugin.event_taken();
                }
                messages
            });
            assert!(wait(Duration::from_secs(10)));
            actor.join().unwrap()
        });
        assert_eq!(plugin.events_unrecorded(), 1);
        assert_eq!(
            take_all(&plugin, &messages),
            EVENT_BACKLOG - BACKLOG_RESERVE
        );
    }
}
