//! Violations and what the host does about them.
//!
//! A [`Violation`] is something the engine caught a plugin doing — never something the
//! plugin reported about itself: a seccomp notification, a cgroup counter, a worker that
//! broke the protocol or died, a hook that did not answer. The host's [`Policy`] maps each
//! [`ViolationKind`] (with a threshold where one makes sense) to an [`Action`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What was violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The cgroup's memory limit was hit (allocations reclaimed or refused).
    MemoryLimit,
    /// The kernel's OOM killer ended a process of the plugin.
    OomKill,
    /// Throttled by its CPU quota for a sustained period.
    CpuThrottled,
    /// A fork or thread refused by the pids limit.
    PidsLimit,
    /// As many descriptors open as its `max_open_files` allows.
    FdLimit,
    HookTimeout,
    /// A syscall its capabilities do not grant, denied by the seccomp filter.
    ForbiddenSyscall,
    /// A file access outside `fs_read`/`fs_write`, denied by Landlock.
    FsDenied,
    /// A hook emitted that its manifest does not list.
    ForbiddenEmit,
    /// The worker ended while it should have been running.
    Crash,
    /// Its health checks reached `failures_before_unhealthy`.
    HealthFailed,
    /// The worker broke the IPC protocol (and was killed for it).
    ProtocolViolation,
    /// Its bundle failed signature or trust checks.
    TrustFailure,
}

impl ViolationKind {
    pub const ALL: [ViolationKind; 13] = [
        ViolationKind::MemoryLimit,
        ViolationKind::OomKill,
        ViolationKind::CpuThrottled,
        ViolationKind::PidsLimit,
        ViolationKind::FdLimit,
        ViolationKind::HookTimeout,
        ViolationKind::ForbiddenSyscall,
        ViolationKind::FsDenied,
        ViolationKind::ForbiddenEmit,
        ViolationKind::Crash,
        ViolationKind::HealthFailed,
        ViolationKind::ProtocolViolation,
        ViolationKind::TrustFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::MemoryLimit => "memory_limit",
            ViolationKind::OomKill => "oom_kill",
            ViolationKind::CpuThrottled => "cpu_throttled",
            ViolationKind::PidsLimit => "pids_limit",
            ViolationKind::FdLimit => "fd_limit",
            ViolationKind::HookTimeout => "hook_timeout",
            ViolationKind::ForbiddenSyscall => "forbidden_syscall",
            ViolationKind::FsDenied => "fs_denied",
            ViolationKind::ForbiddenEmit => "forbidden_emit",
            ViolationKind::Crash => "crash",
            ViolationKind::HealthFailed => "health_failed",
            ViolationKind::ProtocolViolation => "protocol_violation",
            ViolationKind::TrustFailure => "trust_failure",
        }
    }

    /// How bad it is when it happens at all.
    pub fn severity(self) -> Severity {
        match self {
            ViolationKind::MemoryLimit
            | ViolationKind::CpuThrottled
            | ViolationKind::PidsLimit
            | ViolationKind::FdLimit
            | ViolationKind::HookTimeout
            | ViolationKind::HealthFailed => Severity::Warning,
            ViolationKind::OomKill
            | ViolationKind::ForbiddenSyscall
            | ViolationKind::FsDenied
            | ViolationKind::ForbiddenEmit
            | ViolationKind::Crash
            | ViolationKind::ProtocolViolation
            | ViolationKind::TrustFailure => Severity::Critical,
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// What the engine did about a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Recorded; nothing else (the mechanism itself may already have blocked it: a denied
    /// syscall fails with EPERM, a refused fork with EAGAIN).
    Log,
    /// The worker is restarted (a crashed one through the restart policy's backoff).
    Restart,
    /// The plugin is stopped and stays stopped until an operator starts it.
    Stop,
    /// The plugin is unloaded and kept from starting until an operator clears it; this
    /// survives engine restarts.
    Quarantine,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Restart => "restart",
            Action::Stop => "stop",
            Action::Quarantine => "quarantine",
        }
    }
}

/// The fact holding the OOM kill count of the worker's cgroup since it started (`oom_kills`
/// is how many of them this violation reports).
pub const OOM_KILLS_TOTAL: &str = "oom_kills_total";

/// One violation, as recorded in events and the audit file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// Named `violation` in JSON (an event's `kind` is `violation`).
    #[serde(rename = "violation")]
    pub kind: ViolationKind,
    /// The hook running when it happened, when the engine knows it.
    pub hook: Option<String>,
    /// What caught it: `seccomp`, `landlock`, `cgroup`, `rlimits`, `engine`, `trust`.
    pub mechanism: String,
    pub severity: Severity,
    /// For people: what happened, with the limit and the observed value where there are.
    pub detail: String,
    /// For scripts: the values that matter (`limit`, `observed`, `syscall`, `family`,
    /// `signal`, `exit_code`, `path`, `timeout_ms`…).
    pub facts: BTreeMap<String, serde_json::Value>,
    pub action: Action,
}

impl Violation {
    /// A violation of `kind` with its default severity; the action is decided by policy.
    pub fn new(kind: ViolationKind, mechanism: &str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            hook: None,
            mechanism: mechanism.to_owned(),
            severity: kind.severity(),
            detail: detail.into(),
            facts: BTreeMap::new(),
            action: Action::Log,
        }
    }

    #[must_use]
    pub fn fact(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.facts.insert(key.to_owned(), value.into());
        self
    }

    #[must_use]
    pub fn during(mut self, hook: Option<String>) -> Self {
        self.hook = hook;
        self
    }
}

/// The host's rule for one kind: the action, taken once `count` violations happened
/// within `window_s` (fewer are only logged). For `cpu_throttled`, `ratio` and
/// `sustained_s` say what counts as sustained throttling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    pub count: u32,
    pub window_s: u64,
    /// `cpu_throttled` only: share of CPU periods throttled (0–1).
    pub ratio: f64,
    /// `cpu_throttled` only: for how long.
    pub sustained_s: u64,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            action: Action::Log,
            count: 1,
            window_s: 60,
            ratio: 0.5,
            sustained_s: 5,
        }
    }
}

impl Rule {
    fn with(action: Action) -> Self {
        Self {
            action,
            ..Self::default()
        }
    }
}

/// Violation kind → rule. Kinds the host does not mention keep their defaults:
/// crashes, OOM kills and failed health restart; a protocol violation (a worker writing
/// garbage on its socket is hostile) quarantines; three hook timeouts within a minute
/// restart; everything else is logged (the mechanism already blocked it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Policy {
    pub rules: BTreeMap<ViolationKind, Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        let mut rules: BTreeMap<ViolationKind, Rule> = ViolationKind::ALL
            .into_iter()
            .map(|kind| (kind, Rule::default()))
            .collect();
        for kind in [
            ViolationKind::Crash,
            ViolationKind::OomKill,
            ViolationKind::HealthFailed,
        ] {
            rules.insert(kind, Rule::with(Action::Restart));
        }
        rules.insert(
            ViolationKind::ProtocolViolation,
            Rule::with(Action::Quarantine),
        );
        rules.insert(
            ViolationKind::HookTimeout,
            Rule {
                action: Action::Restart,
                count: 3,
                window_s: 60,
                ..Rule::default()
            },
        );
        Self { rules }
    }
}

impl Policy {
    pub fn rule(&self, kind: ViolationKind) -> Rule {
        self.rules.get(&kind).cloned().unwrap_or_default()
    }

    /// Applies the host's rules over the defaults.
    pub fn with_overrides(overrides: BTreeMap<ViolationKind, Rule>) -> Self {
        let mut policy = Self::default();
        policy.rules.extend(overrides);
        policy
    }
}

/// Per plugin: when each kind happened recently, to apply `count` within `window_s`.
#[derive(Debug, Default)]
pub(crate) struct ViolationCounts {
    recent: BTreeMap<ViolationKind, VecDeque<Instant>>,
}

impl ViolationCounts {
    /// Records one violation of `kind` and says what the rule asks for now.
    pub fn decide(&mut self, kind: ViolationKind, rule: &Rule, now: Instant) -> Action {
        let window = Duration::from_secs(rule.window_s);
        let recent = self.recent.entry(kind).or_default();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            recent.pop_front();
        }
        if recent.len() >= usize::try_from(rule.count.max(1)).unwrap_or(usize::MAX) {
            recent.clear();
            rule.action
        } else {
            Action::Log
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_waits_for_its_count_within_the_window() {
        let rule = Rule {
            action: Action::Restart,
            count: 3,
            window_s: 60,
            ..Rule::default()
        };
        let mut counts = ViolationCounts::default();
        let start = Instant::now();
        let kind = ViolationKind::HookTimeout;
        let at = |seconds| start + Duration::from_secs(seconds);
        assert_eq!(counts.decide(kind, &rule, at(0)), Action::Log);
        assert_eq!(counts.decide(kind, &rule, at(30)), Action::Log);
        // Both fall out of the window before the third arrives.
        assert_eq!(counts.decide(kind, &rule, at(100)), Action::Log);
        assert_eq!(counts.decide(kind, &rule, at(110)), Action::Log);
        assert_eq!(counts.decide(kind, &rule, at(120)), Action::Restart);
        // Counting starts afresh after an action.
        assert_eq!(counts.decide(kind, &rule, at(121)), Action::Log);
    }

    #[test]
    fn violations_serialize_with_their_kind_named_violation() {
        let violation = Violation::new(
            ViolationKind::ForbiddenSyscall,
            "seccomp",
            "socket(AF_INET)",
        )
        .fact("syscall", "socket")
        .fact("family", "AF_INET")
        .during(Some("connect".into()));
        let json = serde_json::to_value(&violation).unwrap();
        assert_eq!(json["violation"], "forbidden_syscall");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["facts"]["family"], "AF_INET");
        assert_eq!(json["hook"], "connect");
        assert_eq!(json["action"], "log");
    }

    #[test]
    fn the_defaults_restart_crashes_and_quarantine_protocol_violations() {
        let policy = Policy::default();
        assert_eq!(policy.rule(ViolationKind::Crash).action, Action::Restart);
        assert_eq!(
            policy.rule(ViolationKind::ProtocolViolation).action,
            Action::Quarantine
        );
        assert_eq!(
            policy.rule(ViolationKind::ForbiddenSyscall).action,
            Action::Log
        );
        assert_eq!(policy.rule(ViolationKind::HookTimeout).count, 3);
    }
}
