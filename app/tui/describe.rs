//! Events in words: a short kind, a sentence, and how alarming it is.
//!
//! Events are read through their JSON form (the README's contract) rather than by
//! matching the engine's enum, so a kind the engine adds later still shows — with its
//! fields — instead of breaking the dashboard's build.

use std::fmt::Write as _;

use plugboard_engine::{Event, PluginState};
use serde_json::{Map, Value};

use super::columns::state_look;
use super::theme::Role;

/// One event as the log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    /// The kind as in snapshots (`state_changed`; a violation shows its own kind).
    pub kind: String,
    pub text: String,
    pub role: Role,
    /// A violation of the plugin's rules (counted apart in the detail view).
    pub violation: bool,
}

fn text_of(fields: &Map<String, Value>, key: &str) -> String {
    match fields.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn state_of(fields: &Map<String, Value>, key: &str) -> Option<PluginState> {
    fields
        .get(key)
        .and_then(|value| serde_json::from_value(value.clone()).ok())
}

/// An exit status in words; accepts `{"code": 1}` and the older `{"code": {"code": 1}}`.
fn exit_of(value: Option<&Value>) -> String {
    let Some(Value::Object(exit)) = value else {
        return String::new();
    };
    let number = |key: &str| -> Option<String> {
        match exit.get(key)? {
            Value::Object(inner) => inner.get(key).map(ToString::to_string),
            other => Some(other.to_string()),
        }
    };
    if let Some(code) = number("code") {
        format!("exit code {code}")
    } else if let Some(signal) = number("signal") {
        format!("killed by signal {signal}")
    } else {
        Value::Object(exit.clone()).to_string()
    }
}

/// Every field but the bookkeeping ones, as `key=value`, for kinds without a sentence.
fn fields_text(fields: &Map<String, Value>) -> String {
    fields
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "seq" | "at_ms" | "plugin" | "kind"))
        .map(|(key, value)| match value {
            Value::String(text) => format!("{key}={text}"),
            other => format!("{key}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[allow(clippy::too_many_lines)] // one arm per kind
pub fn describe(event: &Event) -> Described {
    let value = serde_json::to_value(event).unwrap_or(Value::Null);
    let empty = Map::new();
    let fields = value.as_object().unwrap_or(&empty);
    let kind = text_of(fields, "kind");
    let text = |key: &str| text_of(fields, key);
    let mut violation = false;
    let (kind, text, role) = match kind.as_str() {
        "discovered" => (
            kind,
            format!("bundle found in {}", text("dir")),
            Role::Muted,
        ),
        "state_changed" => {
            let from = state_of(fields, "from").map_or("?", |state| state_look(state).label);
            let to = state_of(fields, "to").map(state_look);
            let role = match to.map(|look| look.role) {
                Some(role @ (Role::Ok | Role::Error | Role::Warn)) => role,
                _ => Role::Text,
            };
            let to = to.map_or_else(
                || text("to"),
                |look| format!("{} {}", look.symbol, look.label),
            );
            (kind, format!("{from} → {to}"), role)
        }
        "rejected" => (kind, format!("rejected: {}", text("reason")), Role::Error),
        "started" => {
            let mechanisms: Vec<String> = fields
                .get("mechanisms")
                .and_then(Value::as_array)
                .map(|badges| {
                    badges
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let audit = fields.get("audit").and_then(Value::as_bool) == Some(true);
            if fields.get("in_process").and_then(Value::as_bool) == Some(true) {
                return Described {
                    kind,
                    text: format!(
                        "started in-process: inside the engine (pid {}), no sandbox",
                        text("worker_pid")
                    ),
                    role: Role::Warn,
                    violation: false,
                };
            }
            (
                kind,
                format!(
                    "started{}: worker {}, sandbox pid {} [{}]",
                    if audit {
                        " in AUDIT MODE (records, does not block)"
                    } else {
                        ""
                    },
                    text("worker_pid"),
                    text("sandbox_pid"),
                    mechanisms.join(" ")
                ),
                if audit { Role::Warn } else { Role::Ok },
            )
        }
        "audited" => {
            let path = text("path");
            let detail = text("detail");
            let mut sentence = format!(
                "audit: {} would need {}",
                text("syscall"),
                text("capability")
            );
            if !detail.is_empty() {
                let _ = write!(sentence, " ({detail})");
            }
            if !path.is_empty() {
                let _ = write!(sentence, ": {path}");
            }
            (kind, sentence, Role::Warn)
        }
        "stopped" => {
            let exit = exit_of(fields.get("exit"));
            (
                kind,
                if exit.is_empty() {
                    "stopped".to_owned()
                } else {
                    format!("stopped ({exit})")
                },
                Role::Text,
            )
        }
        "crashed" => {
            violation = true;
            (
                kind,
                format!("crashed: {}", exit_of(fields.get("exit"))),
                Role::Error,
            )
        }
        "forbidden_syscall" => {
            violation = true;
            let detail = text("detail");
            (
                kind,
                if detail.is_empty() {
                    format!("forbidden syscall {}", text("syscall"))
                } else {
                    format!("forbidden syscall {}: {detail}", text("syscall"))
                },
                Role::Error,
            )
        }
        "protocol_violation" => {
            violation = true;
            (
                kind,
                format!("protocol violation: {}", text("reason")),
                Role::Error,
            )
        }
        "hook_timeout" => {
            violation = true;
            (
                kind,
                format!(
                    "hook {} timed out after {} ms",
                    text("hook"),
                    text("timeout_ms")
                ),
                Role::Error,
            )
        }
        "forbidden_emit" => {
            violation = true;
            (
                kind,
                format!(
                    "emitted {}, which its manifest does not grant",
                    text("hook")
                ),
                Role::Error,
            )
        }
        // Typed violations: `violation` names the kind, `action` what the policy did.
        "violation" => {
            violation = true;
            let which = text("violation");
            let mut sentence = which.replace('_', " ");
            // What was done comes before the detail, which a narrow row cuts.
            let action = text("action");
            // The policy said restart, and nothing will (budget spent, restarts off).
            let not_restarted = fields
                .get("facts")
                .and_then(|facts| facts.get(plugboard_engine::supervisor::NOT_RESTARTED))
                .is_some();
            if not_restarted {
                sentence.push_str(" → not restarted");
            } else if !action.is_empty() && action != "log" {
                let _ = write!(sentence, " → {action}");
            }
            // A resource counter's violation names the hooks that were in flight when the
            // sampler saw it: bystanders as likely as causes (cpuspin's own threads spin
            // while `ping` runs), so said as such; other kinds were caught in the call.
            let sampled = matches!(
                which.as_str(),
                "cpu_throttled" | "memory_limit" | "pids_limit" | "fd_limit"
            );
            let hook = text("hook");
            if !hook.is_empty() && !sampled {
                sentence.push_str(": ");
                sentence.push_str(&hook);
            }
            let detail = text("detail");
            if !detail.is_empty() {
                sentence.push_str(": ");
                sentence.push_str(&detail);
            }
            if !hook.is_empty() && sampled {
                let _ = write!(sentence, " (seen while {hook} ran)");
            }
            let role = if text("severity") == "warning" {
                Role::Warn
            } else {
                Role::Error
            };
            (if which.is_empty() { kind } else { which }, sentence, role)
        }
        "reloaded" => (
            kind,
            format!(
                "reloaded {} → {}",
                Some(text("from_version"))
                    .filter(|version| !version.is_empty())
                    .unwrap_or_else(|| "?".to_owned()),
                text("to_version")
            ),
            Role::Ok,
        ),
        "start_failed" => (
            kind,
            format!("start failed: {}", text("reason")),
            Role::Error,
        ),
        "reload_failed" => (
            kind,
            format!("reload failed, old version serves: {}", text("reason")),
            Role::Error,
        ),
        "backing_off" => {
            // `budget_left` counts the restart being scheduled: attempt 3 with 1 left is
            // the last one the window allows.
            let count = |key: &str| fields.get(key).and_then(Value::as_u64).unwrap_or(0);
            let allowed = (count("attempt") + count("budget_left")).saturating_sub(1);
            (
                kind,
                format!(
                    "restart {} of {allowed} in {} ms",
                    text("attempt"),
                    text("delay_ms"),
                ),
                Role::Warn,
            )
        }
        "restarts_exhausted" => (
            kind,
            format!(
                "gave up after {} restarts in {} s",
                text("restarts"),
                text("window_s")
            ),
            Role::Error,
        ),
        "hook_toggled" => {
            let enabled = fields
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            (
                kind,
                format!(
                    "hook {} {}",
                    text("hook"),
                    if enabled { "enabled" } else { "disabled" }
                ),
                Role::Info,
            )
        }
        "quarantine_cleared" => (
            kind,
            "quarantine cleared by an operator: it may load and start again".to_owned(),
            Role::Info,
        ),
        "plugin_toggled" => {
            let enabled = fields
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            (
                kind,
                (if enabled { "enabled" } else { "disabled" }).to_owned(),
                Role::Info,
            )
        }
        "bundle_changed" => (
            kind,
            format!("bundle changed on disk: {}", text("dir")),
            Role::Warn,
        ),
        "bundle_removed" => (
            kind,
            format!("bundle removed from disk: {}", text("dir")),
            Role::Warn,
        ),
        "bundle_moved" => (
            kind,
            format!("bundle moved on disk: {} → {}", text("from"), text("to")),
            Role::Warn,
        ),
        "health_changed" => {
            let to = text("to");
            let detail = text("detail");
            let role = match to.as_str() {
                "healthy" => Role::Ok,
                "unhealthy" => Role::Error,
                _ => Role::Warn,
            };
            let mut sentence = format!("health {} → {to}", text("from"));
            if !detail.is_empty() {
                let _ = write!(sentence, ": {detail}");
            }
            (kind, sentence, role)
        }
        "engine" => {
            let warning = fields.get("warning").and_then(Value::as_bool) == Some(true);
            let role = if warning { Role::Warn } else { Role::Info };
            (kind, text("message"), role)
        }
        _ => {
            let sentence = fields_text(fields);
            (kind, sentence, Role::Text)
        }
    };
    Described {
        kind,
        text,
        role,
        violation,
    }
}

/// Whether an event matches the event log's filter. Each word must match: `kind:NAME`
/// and `plugin:NAME` match those fields (by prefix), any other word the plugin, the kind
/// or the text.
pub fn matches_filter(event: &Event, filter: &str) -> bool {
    if filter.trim().is_empty() {
        return true;
    }
    let described = describe(event);
    let plugin = event.plugin.as_deref().unwrap_or("engine");
    let text = described.text.to_lowercase();
    filter.split_whitespace().all(|word| {
        let word = word.to_lowercase();
        if let Some(kind) = word.strip_prefix("kind:") {
            described.kind.starts_with(kind) || (kind.starts_with("viol") && described.violation)
        } else if let Some(name) = word.strip_prefix("plugin:") {
            // That plugin (`hello` is not `hello-c`); `hello*` for every name so begun.
            match name.strip_suffix('*') {
                Some(prefix) => plugin.starts_with(prefix),
                None => plugin == name,
            }
        } else {
            plugin.contains(&word) || described.kind.contains(&word) || text.contains(&word)
        }
    })
}

#[cfg(test)]
mod tests {
    use plugboard_engine::{EngineTopic, EventKind};

    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 1,
            at_ms: 0,
            plugin: Some("netprobe".to_owned()),
            kind,
        }
    }

    #[test]
    fn plugin_in_a_filter_is_that_plugin_and_a_star_takes_a_prefix() {
        let mut of_hello_c = event(EventKind::engine_note(EngineTopic::General, "x"));
        of_hello_c.plugin = Some("hello-c".to_owned());
        assert!(!matches_filter(&of_hello_c, "plugin:hello"));
        assert!(matches_filter(&of_hello_c, "plugin:hello-c"));
        assert!(matches_filter(&of_hello_c, "plugin:hello*"));
        assert!(matches_filter(&of_hello_c, "kind:engine plugin:HELLO-C"));
    }

    #[test]
    fn a_failed_start_says_why() {
        let failed = describe(&event(EventKind::StartFailed {
            reason: "the plugin refused to start (panic)".to_owned(),
        }));
        assert_eq!(failed.role, Role::Error);
        assert_eq!(
            failed.text,
            "start failed: the plugin refused to start (panic)"
        );
    }

    #[test]
    fn an_engine_warning_shows_as_a_warning_and_a_note_as_information() {
        let left = describe(&event(EventKind::engine_warning(
            EngineTopic::Cgroup,
            "the cgroup plugboard-x of its stopped worker could not be removed",
        )));
        assert_eq!(left.role, Role::Warn);
        assert!(left.text.contains("could not be removed"), "{}", left.text);
        let traffic = describe(&event(EventKind::engine_note(
            EngineTopic::Traffic,
            "traffic off",
        )));
        assert_eq!(traffic.role, Role::Info);
    }

    #[test]
    fn audit_mode_reads_as_sentences() {
        let audited = describe(&event(EventKind::Audited {
            capability: "fs_write".to_owned(),
            syscall: "openat".to_owned(),
            path: Some("/var/lib/x".to_owned()),
            creates: true,
            detail: String::new(),
        }));
        assert_eq!(
            audited.text,
            "audit: openat would need fs_write: /var/lib/x"
        );
        let started = describe(&event(EventKind::Started {
            worker_pid: 10,
            sandbox_pid: 11,
            mechanisms: vec!["ns".to_owned(), "sc".to_owned()],
            audit: true,
            in_process: false,
        }));
        assert!(
            started.text.starts_with("started in AUDIT MODE"),
            "{}",
            started.text
        );
        assert!(matches!(started.role, Role::Warn));
        let inside = describe(&event(EventKind::Started {
            worker_pid: 7,
            sandbox_pid: 7,
            mechanisms: Vec::new(),
            audit: false,
            in_process: true,
        }));
        assert_eq!(
            inside.text,
            "started in-process: inside the engine (pid 7), no sandbox"
        );
    }

    #[test]
    fn every_kind_without_fields_still_reads_as_a_sentence() {
        let cleared = describe(&event(EventKind::QuarantineCleared));
        assert!(
            cleared.text.starts_with("quarantine cleared"),
            "{}",
            cleared.text
        );
    }

    #[test]
    fn a_moved_bundle_names_both_directories() {
        let moved = describe(&event(EventKind::BundleMoved {
            from: "/plugins/hello-1.0".to_owned(),
            to: "/plugins/hello-1.1".to_owned(),
        }));
        assert_eq!(
            moved.text,
            "bundle moved on disk: /plugins/hello-1.0 → /plugins/hello-1.1"
        );
    }

    #[test]
    fn a_backoff_says_which_restart_of_how_many_the_window_allows() {
        let last = describe(&event(EventKind::BackingOff {
            attempt: 3,
            delay_ms: 675,
            budget_left: 1,
        }));
        assert_eq!(last.text, "restart 3 of 3 in 675 ms");
    }

    #[test]
    fn a_crash_the_budget_does_not_restart_says_so() {
        let mut violation = plugboard_engine::policy::Violation::new(
            plugboard_engine::policy::ViolationKind::Crash,
            "engine",
            "the worker ended unexpectedly: killed by signal 11",
        )
        .fact(
            plugboard_engine::supervisor::NOT_RESTARTED,
            "the restart budget is spent (3 restarts within 300 s)",
        );
        violation.action = plugboard_engine::policy::Action::Restart;
        let crash = describe(&event(EventKind::Violation { violation }));
        assert!(
            crash.text.starts_with("crash → not restarted: "),
            "{}",
            crash.text
        );
    }

    #[test]
    fn a_sampled_violation_names_the_hook_in_flight_as_a_bystander() {
        let violation = plugboard_engine::policy::Violation::new(
            plugboard_engine::policy::ViolationKind::CpuThrottled,
            "cgroup",
            "throttled in 100% of its CPU periods for 5 s",
        )
        .during(Some("ping".to_owned()));
        let throttled = describe(&event(EventKind::Violation { violation }));
        assert_eq!(
            throttled.text,
            "cpu throttled: throttled in 100% of its CPU periods for 5 s (seen while ping ran)"
        );
    }
}
