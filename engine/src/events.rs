//! The engine's event log: lifecycle changes and violations, in a bounded in-memory ring
//! for front ends, and pushed to subscribers as they happen.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::snapshot::PluginState;
use crate::worker::ExitStatus;

/// How many events the ring keeps.
pub const EVENT_RING: usize = 2000;

/// Events a subscriber may have waiting. Past that it misses events until it reads again
/// (the gap shows in their `seq`; [`crate::Engine::recent_events`] has the ring): a
/// subscriber that stops reading costs the engine no more than this.
pub const SUBSCRIBER_QUEUE: usize = EVENT_RING;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub plugin: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Discovered {
        dir: String,
    },
    StateChanged {
        from: PluginState,
        to: PluginState,
    },
    /// Verification or start-up refused the plugin.
    Rejected {
        reason: String,
    },
    Started {
        worker_pid: u32,
        sandbox_pid: u32,
        mechanisms: Vec<String>,
        /// Started in audit mode (`[plugins.<name>] audit = true`): what its manifest does
        /// not allow is recorded (`audited` events), not blocked.
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        audit: bool,
        /// Loaded into the engine itself (both pids are the engine's; no sandbox).
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        in_process: bool,
    },
    Stopped {
        exit: Option<ExitStatus>,
    },
    /// The engine caught the plugin breaking a rule (a crash counts too); `action` is
    /// what the host's policy did about it.
    Violation {
        #[serde(flatten)]
        violation: crate::policy::Violation,
    },
    /// Audit mode: the plugin did something its manifest does not allow, and the engine
    /// let it through and recorded it (once per distinct observation). `capability` names
    /// what the manifest would have to grant: `network`, `spawn`, or `fs_read`/`fs_write`
    /// with `path`. `plugboard suggest` reads these from the audit file.
    Audited {
        capability: String,
        syscall: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        path: Option<String>,
        /// For a path: whether the call creates it (then its directory is what to grant).
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        creates: bool,
        #[serde(skip_serializing_if = "String::is_empty", default)]
        detail: String,
    },
    /// A new version took over from the old one.
    Reloaded {
        from_version: Option<String>,
        to_version: String,
        library_sha3_512: Option<String>,
    },
    /// A start failed (the worker's handshake, a required mechanism, the plugin's
    /// creation); the plugin is `failed` with this reason.
    StartFailed {
        reason: String,
    },
    /// A reload was refused or its new version failed; the old one keeps serving.
    ReloadFailed {
        reason: String,
    },
    /// A crashed plugin restarts after `delay_ms` (attempt `attempt` of the window).
    BackingOff {
        attempt: u32,
        delay_ms: u64,
        budget_left: u32,
    },
    /// The restart budget is spent: the plugin stays Failed.
    RestartsExhausted {
        restarts: u32,
        window_s: u64,
    },
    HookToggled {
        hook: String,
        enabled: bool,
    },
    PluginToggled {
        enabled: bool,
    },
    /// The bundle on disk changed since it was verified.
    BundleChanged {
        dir: String,
    },
    /// The bundle directory disappeared.
    BundleRemoved {
        dir: String,
    },
    /// The plugin's bundle is now the one in `to` (its directory `from` is gone): the
    /// plugin's next start or reload reads it there.
    BundleMoved {
        from: String,
        to: String,
    },
    /// A health check changed the plugin's health.
    HealthChanged {
        from: crate::snapshot::Health,
        to: crate::snapshot::Health,
        /// Failed checks in a row, and what the plugin answered to the last one.
        failures: u32,
        detail: Option<String>,
    },
    /// An operator cleared the plugin's quarantine.
    QuarantineCleared,
    /// Engine-level notes: `topic` says what about, `warning` whether an admin should act
    /// or look (a cgroup left behind, a state file not written), so front ends pick and
    /// colour them without reading `message`.
    Engine {
        message: String,
        #[serde(default)]
        topic: EngineTopic,
        #[serde(default)]
        warning: bool,
    },
}

/// What an engine note is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineTopic {
    /// Anything else (and notes recorded before topics existed).
    #[default]
    General,
    /// The traffic generator switched on or off.
    Traffic,
    /// A start an operator asked for was refused (a dependency, a cycle).
    StartRefused,
    /// A plugin runs without a verified signature (`allow_unsigned`).
    Unverified,
    /// The state file: in use by another engine, not written, written again.
    StateFile,
    /// A plugin's cgroup, or a stale one of an engine that is gone.
    Cgroup,
    /// Finding bundles: discovery, the directory watcher.
    Discovery,
    /// The host configuration (a `[plugins.<name>]` section naming no plugin).
    Config,
    /// Plugins depending on one another: dependents stopped first, a dependency down.
    Dependencies,
    /// The engine and a plugin's worker: its channel failing, its seccomp notifications
    /// queued, its violations counted rather than recorded one by one.
    Worker,
    /// An emit refused for the depth of its chain.
    Emit,
}

impl EventKind {
    /// An engine note for the record.
    pub fn engine_note(topic: EngineTopic, message: impl Into<String>) -> Self {
        Self::Engine {
            message: message.into(),
            topic,
            warning: false,
        }
    }

    /// An engine note an admin should act on or look at.
    pub fn engine_warning(topic: EngineTopic, message: impl Into<String>) -> Self {
        Self::Engine {
            message: message.into(),
            topic,
            warning: true,
        }
    }
}

/// The ring plus the live subscribers.
#[derive(Debug)]
pub struct EventLog {
    ring: VecDeque<Event>,
    next_seq: u64,
    subscribers: Vec<mpsc::SyncSender<Event>>,
}

impl Default for EventLog {
    /// The ring is sized once: grown by doubling, it would copy itself and leave the old
    /// buffer as a hole in the heap each time it passes a power of two.
    fn default() -> Self {
        Self {
            ring: VecDeque::with_capacity(EVENT_RING),
            next_seq: 0,
            subscribers: Vec::new(),
        }
    }
}

pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

impl EventLog {
    pub fn push(&mut self, plugin: Option<&str>, kind: EventKind) -> Event {
        self.next_seq += 1;
        let event = Event {
            seq: self.next_seq,
            at_ms: unix_millis(SystemTime::now()),
            plugin: plugin.map(str::to_owned),
            kind,
        };
        if self.ring.len() == EVENT_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(event.clone());
        // A full subscriber misses this one; those that went away are dropped here.
        self.subscribers.retain(|subscriber| {
            !matches!(
                subscriber.try_send(event.clone()),
                Err(mpsc::TrySendError::Disconnected(_))
            )
        });
        event
    }

    pub fn subscribe(&mut self) -> mpsc::Receiver<Event> {
        let (sender, receiver) = mpsc::sync_channel(SUBSCRIBER_QUEUE);
        self.subscribers.push(sender);
        receiver
    }

    pub fn recent(&self) -> Vec<Event> {
        self.ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_event(log: &mut EventLog, n: usize) {
        log.push(
            None,
            EventKind::engine_note(EngineTopic::General, format!("event {n}")),
        );
    }

    #[test]
    fn a_subscriber_that_does_not_read_holds_at_most_its_queue_and_then_sees_the_gap() {
        let mut log = EventLog::default();
        let subscriber = log.subscribe();
        for n in 0..SUBSCRIBER_QUEUE + 10 {
            engine_event(&mut log, n);
        }
        let waiting: Vec<u64> = subscriber.try_iter().map(|event| event.seq).collect();
        assert_eq!(waiting.len(), SUBSCRIBER_QUEUE);
        assert_eq!(waiting.last(), Some(&(SUBSCRIBER_QUEUE as u64)));
        // Read, it gets events again; the ten it missed show as a gap in `seq`.
        engine_event(&mut log, 0);
        let next = subscriber.try_recv().unwrap();
        assert_eq!(next.seq, SUBSCRIBER_QUEUE as u64 + 11);
        // One that went away is dropped.
        drop(subscriber);
        engine_event(&mut log, 0);
        assert!(log.subscribers.is_empty());
    }
}
