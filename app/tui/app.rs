//! The dashboard's state and what keys, clicks, samples, events and command results do to
//! it. Nothing here touches the terminal or the engine: keys turn into [`Effect`]s (run
//! this command, quit) that the event loop carries out, so every behaviour is testable
//! with recorded snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use plugboard_engine::manifest::Priority;
use plugboard_engine::monitor::ResourceSample;
use plugboard_engine::{CallReport, Command, Event, Outcome, PluginSnapshot, Snapshot};
use ratatui::layout::{Position, Rect};

use super::columns::{self, Column, Sort};
use super::describe;
use super::keymap::{Action, Keymap};
use super::theme::{Role, Theme, Themes};

/// How many samples the pause history keeps (one per sampling tick).
pub const HISTORY: usize = 300;
/// How many events the event log keeps.
pub const EVENT_LOG: usize = 2000;
/// Calls per second the traffic key turns on, unless the front end says otherwise.
pub const DEFAULT_TRAFFIC_RATE: f64 = 20.0;
/// The rates the faster and slower keys step between.
pub const KEY_TRAFFIC_RATES: std::ops::RangeInclusive<f64> = 1.0..=100_000.0;
/// How long what the traffic keys asked for counts over what the snapshots show.
const TRAFFIC_KEY_SETTLES: Duration = Duration::from_secs(3);

/// How long a success stays in the status line (warnings and errors stay until replaced).
pub const STATUS_OK_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Plugin table and event log.
    Main,
    /// One plugin.
    Detail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pane {
    Plugins,
    Events,
    Hooks,
    PluginEvents,
    Log,
    /// Trust, supervision and the granted matrix (its own pane on small terminals).
    Info,
}

impl Pane {
    pub fn title(self) -> &'static str {
        match self {
            Pane::Plugins => "Plugins",
            Pane::Events | Pane::PluginEvents => "Events",
            Pane::Hooks => "Hooks",
            Pane::Log => "Log",
            Pane::Info => "Info",
        }
    }

    fn filterable(self) -> bool {
        matches!(
            self,
            Pane::Plugins | Pane::Events | Pane::PluginEvents | Pane::Log
        )
    }
}

/// A command for the engine, with the words the status line uses for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub label: String,
    pub command: Command,
}

/// What the event loop must do after a key or a click.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run a command on a thread of its own; its result comes back to [`App::on_job_done`].
    Run(Job),
    /// Read the plugin's bundle on disk (off the UI thread) and say what a reload would
    /// change; the answer comes back to [`App::on_reload_preview`].
    PreviewReload { plugin: Box<PluginSnapshot> },
    /// Stop every plugin gracefully and leave.
    Quit,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub message: String,
    /// Set when the engine refused because running plugins depend on this one.
    pub dependents: Vec<String>,
}

/// A question with a command behind "yes".
#[derive(Debug, Clone, PartialEq)]
pub struct Confirm {
    pub title: String,
    pub lines: Vec<String>,
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptPurpose {
    /// Editing the filter of a pane (applied as typed; esc restores `previous`).
    Filter { pane: Pane, previous: String },
    /// `hook payload` for a call to this plugin.
    Call { plugin: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub purpose: PromptPurpose,
    pub input: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    /// The key help, scrolled this many lines down.
    Help(u16),
    /// The chaos menu: which misbehaving plugin to set off (index into `App::chaos`).
    Chaos(usize),
    Confirm(Confirm),
    Prompt(Prompt),
    Reply(CallReport),
    /// A text in full (an event, a log line, why a plugin is where it is), which a pane's
    /// row shows cut: a title and its lines, wrapped to the screen.
    Text {
        title: String,
        lines: Vec<String>,
    },
}

/// The status line: the last result or refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub text: String,
    pub role: Role,
}

/// Hook table columns (detail view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookColumn {
    Name,
    /// The manifest's priority (critical first when descending).
    Priority,
    Calls,
    Errors,
    Timeouts,
    P50,
    P99,
    Max,
    Rate,
    /// The hook's effective timeout.
    Limit,
}

impl HookColumn {
    pub const ALL: [HookColumn; 10] = [
        HookColumn::Name,
        HookColumn::Priority,
        HookColumn::Calls,
        HookColumn::Rate,
        HookColumn::Errors,
        HookColumn::Timeouts,
        HookColumn::P50,
        HookColumn::P99,
        HookColumn::Max,
        HookColumn::Limit,
    ];

    pub fn title(self) -> &'static str {
        match self {
            HookColumn::Name => "HOOK",
            HookColumn::Priority => "PRIO",
            HookColumn::Limit => "LIMIT",
            HookColumn::Calls => "CALLS",
            HookColumn::Rate => "/S",
            HookColumn::Errors => "ERR",
            HookColumn::Timeouts => "T/O",
            HookColumn::P50 => "P50",
            HookColumn::P99 => "P99",
            HookColumn::Max => "MAX",
        }
    }
}

/// Where things were drawn last, so a click finds what it hit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScreenLayout {
    /// Each pane's whole area (border included).
    pub panes: Vec<(Pane, Rect)>,
    /// Each pane's first data row and how many rows it shows, and the index of the item
    /// drawn in that first row.
    pub rows: Vec<(Pane, Rect, usize)>,
    /// Plugin table column headers: column and its x range.
    pub header_cells: Vec<(Column, u16, u16)>,
    pub header_row: Option<u16>,
    /// The detail view showed one pane at a time (small terminal).
    pub compact: bool,
    /// How far the Info pane was scrolled as drawn (the wanted scroll, within its end).
    pub info_scroll: Option<u16>,
}

/// One entry of the chaos menu: a plugin, what its `chaos` hook does, and the payload
/// it is set off with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosAct {
    pub plugin: String,
    pub what: String,
    pub payload: Vec<u8>,
}

/// The whole dashboard state.
#[derive(Debug)]
pub struct App {
    pub keymap: Keymap,
    pub themes: Themes,
    pub theme: Theme,
    /// Newest last.
    pub history: VecDeque<Arc<Snapshot>>,
    /// Jobs the dashboard ran on its own at start: their success is not said in the
    /// status line (a failure is).
    pub quiet_jobs: std::collections::BTreeSet<u64>,
    /// While paused: how many samples back from the newest the display is.
    pub paused: Option<usize>,
    /// Event log (newest last).
    pub events: VecDeque<Event>,
    /// While paused, events after this one are not shown.
    paused_at_seq: Option<u64>,
    pub screen: Screen,
    pub focus: Pane,
    pub selected_plugin: Option<String>,
    pub sort: Sort,
    pub plugin_filter: String,
    pub event_filter: String,
    pub plugin_event_filter: String,
    pub log_filter: String,
    /// Lines the detail view's Info pane is scrolled down (one pane at a time only).
    pub info_scroll: u16,
    /// The plugin whose details were opened last (whose log and event filters these are).
    detail_plugin: Option<String>,
    /// Index into the shown events (0 = newest).
    pub event_cursor: usize,
    pub plugin_event_cursor: usize,
    /// Index into the shown log lines (0 = newest).
    pub log_cursor: usize,
    pub selected_hook: Option<String>,
    pub hook_sort: HookColumn,
    pub hook_sort_ascending: bool,
    pub overlay: Option<Overlay>,
    /// Dialogs that an engine answer brought while another was open (or a prompt was being
    /// typed in): shown in turn as each one closes, never in place of the open one, so no
    /// key typed for one lands in another.
    pub queued_overlays: VecDeque<Overlay>,
    pub status: Option<Status>,
    /// The status line's text as first seen by a sample, and when: a success said long
    /// ago is cleared (see [`STATUS_OK_FOR`]).
    pub status_seen: Option<(String, Instant)>,
    /// Commands running now (label by job id).
    pub pending: BTreeMap<u64, String>,
    next_job: u64,
    pub traffic_rate: f64,
    /// What a traffic key last asked for (a rate, or off), and when.
    traffic_asked: Option<(Option<f64>, Instant)>,
    /// Traffic commands sent and not answered yet.
    traffic_jobs: usize,
    pub layout: ScreenLayout,
    /// Shown instead of an empty plugin table (no plugin directory configured, …).
    pub empty_hint: Option<String>,
    /// The engine's ring of resource samples of the plugin in the detail view (oldest
    /// first), for its charts.
    pub resource_history: Option<(String, Vec<ResourceSample>)>,
    /// Every kept output line of the plugin in the detail view, oldest first.
    pub output_history: Option<(String, Vec<plugboard_engine::snapshot::OutputLine>)>,
    /// Plugins the chaos menu offers.
    pub chaos: Vec<ChaosAct>,
    /// A job to run when another one ends: (first, next, whether next runs even when
    /// first failed).
    chained: Vec<(Job, Job, bool)>,
    pub quitting: bool,
}

impl App {
    pub fn new(keymap: Keymap, themes: Themes, theme: Theme) -> App {
        App {
            keymap,
            themes,
            theme,
            history: VecDeque::new(),
            quiet_jobs: std::collections::BTreeSet::new(),
            paused: None,
            events: VecDeque::new(),
            paused_at_seq: None,
            screen: Screen::Main,
            focus: Pane::Plugins,
            selected_plugin: None,
            sort: Sort::default(),
            plugin_filter: String::new(),
            event_filter: String::new(),
            plugin_event_filter: String::new(),
            log_filter: String::new(),
            detail_plugin: None,
            info_scroll: 0,
            event_cursor: 0,
            plugin_event_cursor: 0,
            log_cursor: 0,
            selected_hook: None,
            hook_sort: HookColumn::P99,
            hook_sort_ascending: false,
            overlay: None,
            queued_overlays: VecDeque::new(),
            status: None,
            status_seen: None,
            pending: BTreeMap::new(),
            next_job: 0,
            traffic_rate: DEFAULT_TRAFFIC_RATE,
            traffic_asked: None,
            traffic_jobs: 0,
            layout: ScreenLayout::default(),
            empty_hint: None,
            resource_history: None,
            output_history: None,
            chaos: Vec::new(),
            chained: Vec::new(),
            quitting: false,
        }
    }

    // ----- data in -----

    pub fn on_sample(&mut self, sample: Snapshot) {
        self.expire_status();
        // With no traffic command under way, the engine's word is the snapshot's.
        if self.traffic_jobs == 0 {
            self.traffic_asked = None;
        }
        let pinned = self.pinned_log_line();
        if self.history.len() == HISTORY {
            self.history.pop_front();
            // A paused view that pointed at the evicted sample now shows the oldest.
            if let Some(back) = self.paused.as_mut() {
                *back = (*back).min(HISTORY - 2);
            }
        }
        self.history.push_back(Arc::new(sample));
        // Keep a paused view on the sample it shows.
        if let Some(back) = self.paused.as_mut() {
            *back = (*back + 1).min(self.history.len() - 1);
        }
        self.keep_log_cursor(pinned);
        // Nothing selected yet, or the selected plugin is gone (a refused duplicate is
        // forgotten when its bundle is removed): the first one shown is. Details of a
        // plugin that is gone close, saying so, rather than show another plugin, which
        // the next key would act on. Paused, the sample shown may predate the plugin: the
        // selection waits (keys find no target in that sample).
        if self.selected().is_none() && self.paused.is_none() {
            if self.screen == Screen::Detail {
                if let Some(gone) = &self.selected_plugin {
                    self.status = Some(Status {
                        text: format!("`{gone}` is no longer listed"),
                        role: Role::Warn,
                    });
                }
                self.back();
            }
            self.selected_plugin = self
                .visible_plugins()
                .first()
                .map(|plugin| plugin.name.clone());
        }
    }

    pub fn on_engine_event(&mut self, event: Event) {
        if self.events.back().is_some_and(|last| last.seq >= event.seq) {
            return; // already seen (seeded from the ring and delivered live)
        }
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        // A cursor away from the newest stays on the same event as new ones arrive: it
        // moves down for each one its pane shows above it.
        if self.paused.is_none() {
            self.keep_event_cursors(std::slice::from_ref(&event));
        }
        self.events.push_back(event);
    }

    /// Moves the event cursors down past `arrived` events that their panes show (newest
    /// first there), so each stays on the event it was on.
    fn keep_event_cursors(&mut self, arrived: &[Event]) {
        let watched = self.selected_plugin.clone();
        let shown = |event: &Event, plugin: Option<&str>, filter: &str| {
            plugin.is_none_or(|name| event.plugin.as_deref() == Some(name))
                && describe::matches_filter(event, filter)
        };
        if self.event_cursor > 0 {
            let above = arrived
                .iter()
                .filter(|event| shown(event, None, &self.event_filter))
                .count();
            self.event_cursor += above;
        }
        if self.plugin_event_cursor > 0 {
            let above = arrived
                .iter()
                .filter(|event| shown(event, watched.as_deref(), &self.plugin_event_filter))
                .count();
            self.plugin_event_cursor += above;
        }
    }

    /// Takes a command's result; returns what must run next (a chained command).
    pub fn on_job_done(
        &mut self,
        id: u64,
        job: &Job,
        result: Result<Outcome, JobError>,
    ) -> Vec<Effect> {
        self.pending.remove(&id);
        if matches!(job.command, Command::Traffic { .. }) {
            self.traffic_jobs = self.traffic_jobs.saturating_sub(1);
        }
        let next = self
            .chained
            .iter()
            .position(|(first, _, _)| first == job)
            .map(|at| self.chained.remove(at));
        let succeeded = result.is_ok();
        // A startup job that worked shows in the table; the status line keeps what was
        // said (the demo's key and directory).
        if !(self.quiet_jobs.remove(&id) && succeeded) {
            self.record_result(job, result);
        }
        match next {
            Some((_, next, always)) if succeeded || always => vec![Effect::Run(next)],
            _ => Vec::new(),
        }
    }

    fn record_result(&mut self, job: &Job, result: Result<Outcome, JobError>) {
        match result {
            Ok(Outcome::Called { report }) => {
                // A call refused before it reached the plugin took no time worth saying.
                let took = if matches!(report.status.as_str(), "disabled" | "busy") {
                    String::new()
                } else {
                    format!(" in {}", super::format::micros(report.duration_us))
                };
                self.status = Some(Status {
                    text: format!("{}: {}{took}", job.label, report.status),
                    role: if report.status == "ok" {
                        Role::Ok
                    } else {
                        Role::Error
                    },
                });
                self.show(Overlay::Reply(report));
            }
            Ok(Outcome::Emitted { reports }) => {
                self.status = Some(Status {
                    text: format!("{}: {} subscriber(s) called", job.label, reports.len()),
                    role: Role::Ok,
                });
            }
            Ok(Outcome::Done) => {
                // Paused, the screen shows an older sample: the change is not in it yet.
                let paused = if self.paused.is_some() {
                    " (paused: the screen shows an older sample; p resumes)"
                } else {
                    ""
                };
                self.status = Some(Status {
                    text: format!("✓ {}: done{paused}", job.label),
                    role: Role::Ok,
                });
            }
            Err(error) if !error.dependents.is_empty() => {
                // The engine refused because running plugins depend on this one: ask
                // before forcing it (which stops them first).
                let forced = match &job.command {
                    Command::Stop { plugin, .. } => Some(Command::Stop {
                        plugin: plugin.clone(),
                        force: true,
                    }),
                    Command::Unload { plugin, .. } => Some(Command::Unload {
                        plugin: plugin.clone(),
                        force: true,
                    }),
                    Command::Disable { plugin, .. } => Some(Command::Disable {
                        plugin: plugin.clone(),
                        force: true,
                    }),
                    _ => None,
                };
                self.status = Some(Status {
                    text: format!("✗ {}: {}", job.label, error.message),
                    role: Role::Error,
                });
                if let Some(command) = forced {
                    self.show(Overlay::Confirm(Confirm {
                        title: format!("Force {}?", job.label),
                        lines: vec![
                            format!(
                                "Running plugins depend on it: {}.",
                                error.dependents.join(", ")
                            ),
                            "Stop them first and go on?".to_owned(),
                        ],
                        job: Job {
                            label: format!("{} (forced)", job.label),
                            command,
                        },
                    }));
                }
            }
            Err(error) => {
                self.status = Some(Status {
                    text: format!("✗ {}: {}", job.label, error.message),
                    role: Role::Error,
                });
            }
        }
    }

    /// The bundle on disk was read for a reload: ask, showing what would change.
    pub fn on_reload_preview(&mut self, plugin: &PluginSnapshot, changes: Vec<String>) {
        use plugboard_engine::PluginState;
        // What a reload does depends on the state (the engine's `reload`): a running plugin
        // gets the new version beside the old; one that is down is verified again, no more.
        let what = if matches!(plugin.state, PluginState::Running | PluginState::Degraded) {
            "verify again, start the new version beside the running one; traffic switches once \
             it is healthy, and the old one keeps serving if the new one fails."
        } else {
            "verify the bundle on disk again; it is not started (start it after)."
        };
        let mut lines = vec![
            format!(
                "{} {} ({}): {what}",
                plugin.name,
                plugin.version.as_deref().unwrap_or("?"),
                columns::state_look(plugin.state).label
            ),
            String::new(),
            "On disk now:".to_owned(),
        ];
        lines.extend(changes);
        if plugin.changed_on_disk {
            lines.push("The watcher saw the bundle change since it was verified.".to_owned());
        }
        self.status = None;
        self.show(Overlay::Confirm(Confirm {
            title: format!("Reload {}?", plugin.name),
            lines,
            job: Job {
                label: format!("reload {}", plugin.name),
                command: Command::Reload {
                    plugin: plugin.name.clone(),
                },
            },
        }));
    }

    pub fn on_resource_history(&mut self, plugin: String, samples: Vec<ResourceSample>) {
        self.resource_history = Some((plugin, samples));
    }

    /// The whole log the engine keeps of the plugin in the detail view (a snapshot carries
    /// its newest 20 lines). A log cursor away from the newest line stays on its line.
    pub fn on_output_history(
        &mut self,
        plugin: String,
        lines: Vec<plugboard_engine::snapshot::OutputLine>,
    ) {
        let pinned = self.pinned_log_line();
        self.output_history = Some((plugin, lines));
        self.keep_log_cursor(pinned);
    }

    /// The log line under the cursor, when it is away from the newest (which follows),
    /// with how many lines equal to it are older: a plugin may repeat a line within a
    /// millisecond, and new lines only ever come on the newer side.
    fn pinned_log_line(&self) -> Option<(plugboard_engine::snapshot::OutputLine, usize)> {
        if self.log_cursor == 0 {
            return None;
        }
        let lines = self.visible_log();
        let line = (*lines.get(self.log_cursor)?).clone();
        let older = lines[self.log_cursor + 1..]
            .iter()
            .filter(|other| ***other == line)
            .count();
        Some((line, older))
    }

    /// Puts the log cursor back on `pinned` after the lines changed.
    fn keep_log_cursor(&mut self, pinned: Option<(plugboard_engine::snapshot::OutputLine, usize)>) {
        if let Some((pinned, older)) = pinned {
            let lines = self.visible_log();
            let equal: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, line)| ***line == pinned)
                .map(|(at, _)| at)
                .collect();
            self.log_cursor = equal
                .len()
                .checked_sub(older + 1)
                .and_then(|from_newest| equal.get(from_newest).copied())
                .unwrap_or_else(|| self.log_cursor.min(lines.len().saturating_sub(1)));
        }
    }

    /// The plugin whose resource history the charts want: the one in the detail view,
    /// while the display is live.
    pub fn watched_plugin(&self) -> Option<String> {
        (self.screen == Screen::Detail && self.paused.is_none())
            .then(|| self.selected_plugin.clone())
            .flatten()
    }

    /// Registers a command as running and hands out its id.
    pub fn begin_job(&mut self, job: &Job) -> u64 {
        self.next_job += 1;
        self.pending.insert(self.next_job, job.label.clone());
        if matches!(job.command, Command::Traffic { .. }) {
            self.traffic_jobs += 1;
        }
        self.next_job
    }

    // ----- what is shown -----

    /// The snapshot on screen (the newest, or the one paused on).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        let back = self.paused.unwrap_or(0);
        self.history
            .len()
            .checked_sub(1 + back)
            .and_then(|at| self.history.get(at))
            .map(AsRef::as_ref)
    }

    /// Plugins that pass the filter, in sort order.
    pub fn visible_plugins(&self) -> Vec<&PluginSnapshot> {
        let Some(snapshot) = self.snapshot() else {
            return Vec::new();
        };
        let mut plugins: Vec<&PluginSnapshot> = snapshot
            .plugins
            .iter()
            .filter(|plugin| columns::matches_filter(plugin, &self.plugin_filter))
            .collect();
        plugins.sort_by(|a, b| self.sort.compare(a, b));
        plugins
    }

    pub fn selected(&self) -> Option<&PluginSnapshot> {
        let name = self.selected_plugin.as_deref()?;
        self.snapshot()?
            .plugins
            .iter()
            .find(|plugin| plugin.name == name)
    }

    fn selected_index(&self) -> Option<usize> {
        let name = self.selected_plugin.as_deref()?;
        self.visible_plugins()
            .iter()
            .position(|plugin| plugin.name == name)
    }

    /// Events shown in the log, newest first (`plugin`: only that plugin's).
    pub fn visible_events(&self, plugin: Option<&str>) -> Vec<&Event> {
        let filter = if plugin.is_some() {
            &self.plugin_event_filter
        } else {
            &self.event_filter
        };
        // Paused and stepped back: the events up to the sample shown.
        let shown_at = self
            .paused
            .filter(|back| *back > 0)
            .and_then(|_| self.snapshot())
            .map(|shown| shown.taken_at_ms);
        self.events
            .iter()
            .rev()
            .filter(|event| self.paused_at_seq.is_none_or(|seq| event.seq <= seq))
            .filter(|event| shown_at.is_none_or(|at| event.at_ms <= at))
            .filter(|event| plugin.is_none_or(|name| event.plugin.as_deref() == Some(name)))
            .filter(|event| describe::matches_filter(event, filter))
            .collect()
    }

    /// The selected plugin's hooks in the hook table's order: every hook with statistics
    /// plus the disabled ones.
    pub fn visible_hooks(&self) -> Vec<String> {
        let Some(plugin) = self.selected() else {
            return Vec::new();
        };
        let mut names: Vec<String> = plugin.hooks.keys().cloned().collect();
        for hook in &plugin.disabled_hooks {
            if !names.contains(hook) {
                names.push(hook.clone());
            }
        }
        let value = |name: &String| -> (u64, f64) {
            plugin
                .hooks
                .get(name)
                .map_or((0, 0.0), |stats| match self.hook_sort {
                    HookColumn::Name => (0, 0.0),
                    HookColumn::Priority => (
                        stats.priority.map_or(0, |priority| {
                            let rank = Priority::ALL
                                .iter()
                                .position(|other| *other == priority)
                                .unwrap_or(0);
                            // Critical ranks highest.
                            u64::try_from(Priority::ALL.len() - rank).unwrap_or(0)
                        }),
                        0.0,
                    ),
                    HookColumn::Limit => (stats.timeout_ms.unwrap_or(0), 0.0),
                    HookColumn::Calls => (stats.calls, 0.0),
                    HookColumn::Rate => (0, stats.calls_per_sec_10s),
                    HookColumn::Errors => (stats.errors, 0.0),
                    HookColumn::Timeouts => (stats.timeouts, 0.0),
                    HookColumn::P50 => (
                        shown_latency(stats.recent.p50_us, stats.since_start.p50_us),
                        0.0,
                    ),
                    HookColumn::P99 => (
                        shown_latency(stats.recent.p99_us, stats.since_start.p99_us),
                        0.0,
                    ),
                    HookColumn::Max => (stats.since_start.max_us, 0.0),
                })
        };
        names.sort_by(|a, b| {
            let order = if self.hook_sort == HookColumn::Name {
                a.cmp(b)
            } else {
                let (va, vb) = (value(a), value(b));
                va.0.cmp(&vb.0)
                    .then(va.1.partial_cmp(&vb.1).unwrap_or(std::cmp::Ordering::Equal))
            };
            let order = if self.hook_sort_ascending {
                order
            } else {
                order.reverse()
            };
            order.then_with(|| a.cmp(b))
        });
        names
    }

    /// The selected plugin's log lines (newest first) that pass the log filter: lines
    /// holding each of its words, in any case and order, as every filter reads.
    pub fn visible_log(&self) -> Vec<&plugboard_engine::snapshot::OutputLine> {
        let Some(plugin) = self.selected() else {
            return Vec::new();
        };
        let filter = self.log_filter.to_lowercase();
        let words: Vec<&str> = filter.split_whitespace().collect();
        // The whole kept log when the UI has it for this plugin, up to the sample shown
        // (paused, an older one); else the snapshot's newest lines.
        let shown_at = self.snapshot().map_or(u64::MAX, |shown| shown.taken_at_ms);
        let lines: &[plugboard_engine::snapshot::OutputLine] = match &self.output_history {
            Some((name, lines)) if *name == plugin.name && !lines.is_empty() => lines,
            _ => &plugin.recent_output,
        };
        let kept: Vec<&plugboard_engine::snapshot::OutputLine> = lines
            .iter()
            .filter(|line| line.at_ms <= shown_at || self.paused.is_none())
            .collect();
        // Newest first, but lines written together (same stream, same millisecond: a
        // panic's message, a backtrace) keep their order, so they read top to bottom.
        let mut newest_first = Vec::with_capacity(kept.len());
        let mut end = kept.len();
        while end > 0 {
            let last = kept[end - 1];
            let mut start = end - 1;
            while start > 0
                && kept[start - 1].at_ms == last.at_ms
                && kept[start - 1].stream == last.stream
            {
                start -= 1;
            }
            newest_first.extend_from_slice(&kept[start..end]);
            end = start;
        }
        newest_first
            .into_iter()
            .filter(|line| {
                let line = line.line.to_lowercase();
                words.iter().all(|word| line.contains(word))
            })
            .collect()
    }

    /// The panes of the current screen, in tab order. `compact`: the detail view shows one
    /// pane at a time, so the info panel becomes a pane of its own.
    pub fn panes(&self, compact: bool) -> Vec<Pane> {
        match (self.screen, compact) {
            (Screen::Main, _) => vec![Pane::Plugins, Pane::Events],
            (Screen::Detail, false) => vec![Pane::Hooks, Pane::Log, Pane::PluginEvents],
            (Screen::Detail, true) => vec![Pane::Info, Pane::Hooks, Pane::Log, Pane::PluginEvents],
        }
    }

    pub fn traffic_on(&self) -> bool {
        self.traffic_now().is_some()
    }

    /// The traffic generator's rate, when it is on: as a traffic key asked for it a moment
    /// ago (before a snapshot can show it: two quick presses act twice), else as the
    /// newest snapshot shows it.
    fn traffic_now(&self) -> Option<f64> {
        match self.traffic_asked {
            Some((asked, at)) if at.elapsed() < TRAFFIC_KEY_SETTLES => asked,
            _ => self.history.back().and_then(|snapshot| snapshot.traffic),
        }
    }

    // ----- input -----

    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let effects = if let Some(overlay) = self.overlay.take() {
            self.on_overlay_key(overlay, key)
        } else if let Some(action) = self.keymap.action_for(&key) {
            self.on_action(action)
        } else {
            Vec::new()
        };
        if self.overlay.is_none() {
            self.overlay = self.queued_overlays.pop_front();
        }
        effects
    }

    /// Opens `overlay` now, or after the dialogs already open or waiting.
    fn show(&mut self, overlay: Overlay) {
        if self.overlay.is_some() {
            self.queued_overlays.push_back(overlay);
        } else {
            self.overlay = Some(overlay);
        }
    }

    fn on_overlay_key(&mut self, overlay: Overlay, key: KeyEvent) -> Vec<Effect> {
        let action = self.keymap.action_for(&key);
        match overlay {
            Overlay::Chaos(at) => self.on_chaos_key(at, action, key),
            // Movement keys scroll the help; any other key closes it (quit too: it
            // closes help, not the dashboard).
            Overlay::Help(scroll) => {
                let scroll = match action {
                    Some(Action::Down) => Some(scroll.saturating_add(1)),
                    Some(Action::Up) => Some(scroll.saturating_sub(1)),
                    Some(Action::PageDown) => Some(scroll.saturating_add(10)),
                    Some(Action::PageUp) => Some(scroll.saturating_sub(10)),
                    Some(Action::Top) => Some(0),
                    Some(Action::Bottom) => Some(u16::MAX),
                    _ => None,
                };
                self.overlay = scroll.map(Overlay::Help);
                Vec::new()
            }
            // A reply appears when the engine answers, maybe while the operator types:
            // only enter or esc, as it says, closes it; other keys do nothing meanwhile
            // (none meant for the table is taken as its close).
            Overlay::Reply(report) => {
                if !matches!(key.code, KeyCode::Enter | KeyCode::Esc) {
                    self.overlay = Some(Overlay::Reply(report));
                }
                Vec::new()
            }
            // A text the operator opened: any key closes it, and does nothing else.
            Overlay::Text { .. } => Vec::new(),
            // Only `y` says yes: a dialog appears when the engine answers, and an Enter
            // meant to open a plugin's details must not confirm a forced stop.
            Overlay::Confirm(confirm) => match key.code {
                KeyCode::Char('y' | 'Y') => vec![Effect::Run(confirm.job)],
                KeyCode::Char('n' | 'N') | KeyCode::Esc => {
                    self.status = Some(Status {
                        text: format!("cancelled: {}", confirm.job.label),
                        role: Role::Muted,
                    });
                    Vec::new()
                }
                _ => {
                    self.overlay = Some(Overlay::Confirm(confirm));
                    Vec::new()
                }
            },
            Overlay::Prompt(prompt) => self.on_prompt_key(prompt, key),
        }
    }

    fn on_chaos_key(&mut self, at: usize, action: Option<Action>, key: KeyEvent) -> Vec<Effect> {
        let count = self.chaos.len();
        match (action, key.code) {
            (Some(Action::Up), _) => self.overlay = Some(Overlay::Chaos(at.saturating_sub(1))),
            (Some(Action::Down), _) => {
                self.overlay = Some(Overlay::Chaos((at + 1).min(count.saturating_sub(1))));
            }
            (Some(Action::Top), _) => self.overlay = Some(Overlay::Chaos(0)),
            (Some(Action::Bottom), _) => {
                self.overlay = Some(Overlay::Chaos(count.saturating_sub(1)));
            }
            (_, KeyCode::Enter) => {
                let Some(act) = self.chaos.get(at).cloned() else {
                    return Vec::new();
                };
                let plugin = act.plugin;
                let call = Job {
                    label: format!("chaos {plugin}"),
                    command: Command::Call {
                        plugin: plugin.clone(),
                        hook: "chaos".to_owned(),
                        payload: act.payload,
                    },
                };
                // One chosen act: the zoo's manifests keep `chaos` from generated traffic
                // (`traffic = false`), so nothing sets it off again behind the operator.
                let shown = self
                    .snapshot()
                    .and_then(|snapshot| snapshot.plugins.iter().find(|p| p.name == plugin));
                let running =
                    shown.is_some_and(|p| p.state == plugboard_engine::PluginState::Running);
                // Turned off by the operator: choosing the act turns it on again.
                let hook_off =
                    shown.is_some_and(|p| p.disabled_hooks.iter().any(|hook| hook == "chaos"));
                if let Some(waiting) =
                    shown.filter(|p| p.state == plugboard_engine::PluginState::BackingOff)
                {
                    // Starting it now would be an operator's start, with a fresh restart
                    // budget: acts repeated while it waits would never spend the budget
                    // (what a demo of crashes wants to show). Set it off once it runs.
                    let left = waiting.supervision.restart_budget_left;
                    let restart = format!(
                        " ({left} restart{} left in its budget)",
                        if left == 1 { "" } else { "s" }
                    );
                    self.warn(format!(
                        "{plugin} is backing off{restart}: set it off again once it runs, or press s to start it now with a fresh restart budget"
                    ));
                    return Vec::new();
                }
                let mut first = call;
                if !running {
                    // Not running: start it, then set it off.
                    let start = Job {
                        label: format!("start {plugin} for chaos"),
                        command: Command::Start {
                            plugin: plugin.clone(),
                        },
                    };
                    self.chained.push((start.clone(), first, false));
                    first = start;
                }
                if hook_off {
                    let enable = Job {
                        label: format!("enable hook {plugin}.chaos"),
                        command: Command::EnableHook {
                            plugin,
                            hook: "chaos".to_owned(),
                        },
                    };
                    self.chained.push((enable.clone(), first, false));
                    first = enable;
                }
                return vec![Effect::Run(first)];
            }
            (Some(Action::Back | Action::Quit | Action::Chaos), _) | (_, KeyCode::Esc) => {}
            _ => self.overlay = Some(Overlay::Chaos(at)),
        }
        Vec::new()
    }

    fn on_prompt_key(&mut self, mut prompt: Prompt, key: KeyEvent) -> Vec<Effect> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => {
                if let PromptPurpose::Filter { pane, previous } = &prompt.purpose {
                    self.filter_mut(*pane).clone_from(previous);
                    // The selection made while typing may be hidden by the old filter.
                    self.reset_cursor(*pane);
                }
                return Vec::new();
            }
            KeyCode::Enter => return self.submit_prompt(prompt),
            KeyCode::Backspace => {
                prompt.input.pop();
            }
            KeyCode::Char('u') if ctrl => prompt.input.clear(),
            KeyCode::Char('w') if ctrl => {
                let trimmed = prompt.input.trim_end().len();
                let cut = prompt.input[..trimmed].rfind(' ').map_or(0, |at| at + 1);
                prompt.input.truncate(cut);
            }
            KeyCode::Char(c) if !ctrl => prompt.input.push(c),
            _ => {}
        }
        if let PromptPurpose::Filter { pane, .. } = &prompt.purpose {
            // Filters apply as they are typed.
            self.filter_mut(*pane).clone_from(&prompt.input);
            self.reset_cursor(*pane);
        }
        self.overlay = Some(Overlay::Prompt(prompt));
        Vec::new()
    }

    fn submit_prompt(&mut self, prompt: Prompt) -> Vec<Effect> {
        match prompt.purpose {
            PromptPurpose::Filter { .. } => {
                // What the status said ("filter cleared", a hint) is about before.
                self.status = None;
                Vec::new()
            }
            PromptPurpose::Call { plugin } => {
                let input = prompt.input.trim_start();
                let (hook, payload) = input.split_once(' ').unwrap_or((input, ""));
                if hook.is_empty() {
                    self.status = Some(Status {
                        text: "call: type a hook name, then the payload".to_owned(),
                        role: Role::Warn,
                    });
                    return Vec::new();
                }
                vec![Effect::Run(Job {
                    label: format!("call {plugin}.{hook}"),
                    command: Command::Call {
                        plugin,
                        hook: hook.to_owned(),
                        payload: payload.as_bytes().to_vec(),
                    },
                })]
            }
        }
    }

    fn filter_mut(&mut self, pane: Pane) -> &mut String {
        match pane {
            Pane::Events => &mut self.event_filter,
            Pane::PluginEvents => &mut self.plugin_event_filter,
            Pane::Log => &mut self.log_filter,
            Pane::Plugins | Pane::Hooks | Pane::Info => &mut self.plugin_filter,
        }
    }

    fn reset_cursor(&mut self, pane: Pane) {
        match pane {
            Pane::Events => self.event_cursor = 0,
            Pane::PluginEvents => self.plugin_event_cursor = 0,
            Pane::Log => self.log_cursor = 0,
            Pane::Plugins => {
                let first = self
                    .visible_plugins()
                    .first()
                    .map(|plugin| plugin.name.clone());
                if self.selected_index().is_none() {
                    self.selected_plugin = first;
                }
            }
            Pane::Hooks | Pane::Info => {}
        }
    }

    /// Clears a success said [`STATUS_OK_FOR`] ago or more: the screen has moved on since
    /// ("✓ start crasher: done" while crasher has crashed again). Warnings and errors
    /// stay until something replaces them.
    fn expire_status(&mut self) {
        let Some(status) = &self.status else {
            self.status_seen = None;
            return;
        };
        match &self.status_seen {
            Some((text, since)) if *text == status.text => {
                if status.role == Role::Ok && since.elapsed() >= STATUS_OK_FOR {
                    self.status = None;
                    self.status_seen = None;
                }
            }
            _ => self.status_seen = Some((status.text.clone(), Instant::now())),
        }
    }

    fn warn(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            role: Role::Warn,
        });
    }

    /// The plugin a plugin command is about, or a hint in the status line. On the main
    /// screen it must be a row the table shows: a selected plugin that the filter hides
    /// now (its state changed under a state filter) is not what the operator sees.
    fn target(&mut self) -> Option<PluginSnapshot> {
        if self.screen == Screen::Main && self.focus == Pane::Events {
            // The table's row stays highlighted beside the chosen event: acting on either
            // could be the wrong one, so neither is guessed.
            let about = self
                .visible_events(None)
                .get(self.event_cursor)
                .and_then(|event| event.plugin.clone());
            let text = match about {
                Some(plugin) => format!(
                    "plugin keys act on the table: tab to it, or enter to open `{plugin}`, this event's plugin"
                ),
                None => "plugin keys act on the table: tab to it".to_owned(),
            };
            self.warn(text);
            return None;
        }
        let selected = self.selected().cloned();
        match &selected {
            None => self.warn("no plugin selected"),
            Some(plugin) if self.screen == Screen::Main && self.selected_index().is_none() => {
                let text = format!(
                    "`{}` is hidden by the filter `{}`: select a plugin the table shows, or clear the filter",
                    plugin.name, self.plugin_filter
                );
                self.warn(text);
                return None;
            }
            Some(_) => {}
        }
        selected
    }

    #[allow(clippy::too_many_lines)] // one arm per action reads best as one match
    pub fn on_action(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Quit => {
                self.quitting = true;
                return vec![Effect::Quit];
            }
            Action::Help => self.overlay = Some(Overlay::Help(0)),
            Action::Start => {
                if let Some(plugin) = self.target() {
                    return run(
                        format!("start {}", plugin.name),
                        Command::Start {
                            plugin: plugin.name,
                        },
                    );
                }
            }
            Action::Stop => {
                if let Some(plugin) = self.target() {
                    return run(
                        format!("stop {}", plugin.name),
                        Command::Stop {
                            plugin: plugin.name,
                            force: false,
                        },
                    );
                }
            }
            Action::Load => {
                if let Some(plugin) = self.target() {
                    return run(
                        format!("load {}", plugin.name),
                        Command::Load {
                            plugin: plugin.name,
                        },
                    );
                }
            }
            Action::Chaos => {
                if self.chaos.is_empty() {
                    self.warn("no misbehaving plugins to offer: `plugboard demo` has the zoo");
                } else {
                    self.overlay = Some(Overlay::Chaos(0));
                }
            }
            Action::ClearQuarantine => {
                if let Some(plugin) = self.target() {
                    return run(
                        format!("clear quarantine of {}", plugin.name),
                        Command::ClearQuarantine {
                            plugin: plugin.name,
                        },
                    );
                }
            }
            Action::ToggleEnabled => {
                if let Some(plugin) = self.target() {
                    let (verb, command) = if plugin.enabled {
                        (
                            "disable",
                            Command::Disable {
                                plugin: plugin.name.clone(),
                                force: false,
                            },
                        )
                    } else {
                        (
                            "enable",
                            Command::Enable {
                                plugin: plugin.name.clone(),
                            },
                        )
                    };
                    return run(format!("{verb} {}", plugin.name), command);
                }
            }
            Action::Reload => {
                if let Some(plugin) = self.target() {
                    // The engine refuses these: said now, not after a preview and a `y`.
                    use plugboard_engine::PluginState;
                    let refused = match plugin.state {
                        PluginState::Quarantined => Some(format!(
                            "clear its quarantine first ({}), then reload",
                            self.keymap.labels(Action::ClearQuarantine)
                        )),
                        PluginState::Starting | PluginState::Stopping | PluginState::Reloading => {
                            Some("wait until it is running or down".to_owned())
                        }
                        _ => None,
                    };
                    if let Some(hint) = refused {
                        self.warn(format!(
                            "{} is {}: {hint}",
                            plugin.name,
                            crate::tui::format::state_words(
                                columns::state_look(plugin.state).label
                            )
                        ));
                        return Vec::new();
                    }
                    self.status = Some(Status {
                        text: format!("reading the bundle of {} on disk…", plugin.name),
                        role: Role::Info,
                    });
                    return vec![Effect::PreviewReload {
                        plugin: Box::new(plugin),
                    }];
                }
            }
            Action::Unload => {
                if let Some(plugin) = self.target() {
                    self.overlay = Some(Overlay::Confirm(Confirm {
                        title: format!("Unload {}?", plugin.name),
                        lines: vec![
                            format!("Stop {} and drop its verified library;", plugin.name),
                            "the bundle is read and verified again at the next start.".to_owned(),
                        ],
                        job: Job {
                            label: format!("unload {}", plugin.name),
                            command: Command::Unload {
                                plugin: plugin.name,
                                force: false,
                            },
                        },
                    }));
                }
            }
            Action::ToggleHook => {
                let Some(plugin) = self.target() else {
                    return Vec::new();
                };
                let hook = if self.screen == Screen::Detail && self.focus == Pane::Hooks {
                    self.selected_hook
                        .clone()
                        .or_else(|| self.visible_hooks().first().cloned())
                } else {
                    None
                };
                let Some(hook) = hook else {
                    let how = if self.screen == Screen::Detail {
                        format!("{} to the Hooks pane", self.keymap.label(Action::NextPane))
                    } else {
                        format!(
                            "{} opens the details, then the Hooks pane",
                            self.keymap.label(Action::Open)
                        )
                    };
                    self.warn(format!("select a hook first: {how}"));
                    return Vec::new();
                };
                let disabled = plugin.disabled_hooks.contains(&hook);
                let (verb, command) = if disabled {
                    (
                        "enable",
                        Command::EnableHook {
                            plugin: plugin.name.clone(),
                            hook: hook.clone(),
                        },
                    )
                } else {
                    (
                        "disable",
                        Command::DisableHook {
                            plugin: plugin.name.clone(),
                            hook: hook.clone(),
                        },
                    )
                };
                return run(format!("{verb} hook {}.{hook}", plugin.name), command);
            }
            Action::TrafficFaster | Action::TrafficSlower => {
                let factor = if action == Action::TrafficFaster {
                    2.0
                } else {
                    0.5
                };
                // From the rate it runs at (set elsewhere, perhaps), else the one `t` uses.
                let running = self.traffic_now();
                let base = running.unwrap_or(self.traffic_rate);
                // Each key only ever moves the rate its way (a rate set elsewhere, outside
                // the keys' range, is not pulled into it).
                let stepped = base * factor;
                let rate = if factor > 1.0 {
                    stepped.min(KEY_TRAFFIC_RATES.end().max(base))
                } else {
                    stepped.max(KEY_TRAFFIC_RATES.start().min(base))
                };
                self.traffic_rate = rate;
                let shown = super::format::rate(rate);
                if running.is_some() {
                    self.traffic_asked = Some((Some(rate), Instant::now()));
                    return run(
                        format!("traffic at {shown} calls/s"),
                        Command::Traffic { rate: Some(rate) },
                    );
                }
                self.status = Some(Status {
                    text: format!("traffic rate {shown} calls/s when on (t)"),
                    role: Role::Info,
                });
                return Vec::new();
            }
            Action::Traffic => {
                let rate = (!self.traffic_on()).then_some(self.traffic_rate);
                self.traffic_asked = Some((rate, Instant::now()));
                let label = match rate {
                    Some(rate) => format!("traffic on ({} calls/s)", super::format::rate(rate)),
                    None => "traffic off".to_owned(),
                };
                return run(label, Command::Traffic { rate });
            }
            Action::Call => {
                if let Some(plugin) = self.target() {
                    let hook = if self.screen == Screen::Detail {
                        self.selected_hook.clone()
                    } else {
                        None
                    }
                    // On the table: a hook safe to call at enter, never one that does harm
                    // on purpose (`traffic = false`) or one switched off.
                    .or_else(|| {
                        plugin
                            .hooks
                            .iter()
                            .find(|(name, stats)| {
                                !stats.no_traffic && !plugin.disabled_hooks.contains(*name)
                            })
                            .map(|(name, _)| name.clone())
                    })
                    .map(|hook| hook + " ")
                    .unwrap_or_default();
                    self.overlay = Some(Overlay::Prompt(Prompt {
                        purpose: PromptPurpose::Call {
                            plugin: plugin.name,
                        },
                        input: hook,
                    }));
                }
            }
            Action::Pause => self.toggle_pause(),
            Action::HistoryBack | Action::HistoryForward => {
                let Some(back) = self.paused else {
                    self.warn(format!(
                        "history: pause first ({})",
                        self.keymap.label(Action::Pause)
                    ));
                    return Vec::new();
                };
                let newest_back = self.history.len().saturating_sub(1);
                self.paused = Some(if action == Action::HistoryBack {
                    (back + 1).min(newest_back)
                } else {
                    back.saturating_sub(1)
                });
            }
            Action::Filter => {
                let pane = self.focus;
                if !pane.filterable() {
                    self.warn(format!("the {} pane has no filter", pane.title()));
                    return Vec::new();
                }
                let current = self.filter_mut(pane).clone();
                self.overlay = Some(Overlay::Prompt(Prompt {
                    purpose: PromptPurpose::Filter {
                        pane,
                        previous: current.clone(),
                    },
                    input: current,
                }));
            }
            Action::SortNext | Action::SortPrevious | Action::SortReverse => {
                self.sort_action(action);
            }
            Action::NextPane | Action::PreviousPane => {
                let panes = self.panes(self.compact_detail());
                let at = panes
                    .iter()
                    .position(|pane| *pane == self.focus)
                    .unwrap_or(0);
                let next = if action == Action::NextPane {
                    (at + 1) % panes.len()
                } else {
                    (at + panes.len() - 1) % panes.len()
                };
                self.set_focus(panes[next]);
            }
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::PageUp => self.move_cursor(-self.page_rows()),
            Action::PageDown => self.move_cursor(self.page_rows()),
            Action::Top => self.move_cursor(isize::MIN / 2),
            Action::Bottom => self.move_cursor(isize::MAX / 2),
            Action::Open => self.open(),
            Action::Back => self.back(),
            Action::NextTheme => {
                let name = self.themes.next_after(&self.theme.name);
                match self.themes.resolve(&name, self.theme.monochrome) {
                    Ok(theme) => {
                        self.status = Some(Status {
                            text: format!("theme {name}"),
                            role: Role::Info,
                        });
                        self.theme = theme;
                    }
                    Err(err) => self.warn(err.to_string()),
                }
            }
        }
        Vec::new()
    }

    fn toggle_pause(&mut self) {
        if self.paused.take().is_some() {
            // What arrived while paused comes into view above the cursors.
            if let Some(paused_at) = self.paused_at_seq.take() {
                let arrived: Vec<Event> = self
                    .events
                    .iter()
                    .filter(|event| event.seq > paused_at)
                    .cloned()
                    .collect();
                self.keep_event_cursors(&arrived);
            }
            self.status = Some(Status {
                text: "live".to_owned(),
                role: Role::Info,
            });
        } else {
            self.paused = Some(0);
            self.paused_at_seq = self.events.back().map(|event| event.seq).or(Some(0));
            self.status = Some(Status {
                text: format!(
                    "paused: {}/{} step through the last {} samples",
                    self.keymap.label(Action::HistoryBack),
                    self.keymap.label(Action::HistoryForward),
                    self.history.len()
                ),
                role: Role::Info,
            });
        }
    }

    fn sort_action(&mut self, action: Action) {
        if self.screen == Screen::Detail {
            let at = HookColumn::ALL
                .iter()
                .position(|column| *column == self.hook_sort)
                .unwrap_or(0);
            let count = HookColumn::ALL.len();
            match action {
                Action::SortNext => self.hook_sort = HookColumn::ALL[(at + 1) % count],
                Action::SortPrevious => self.hook_sort = HookColumn::ALL[(at + count - 1) % count],
                _ => self.hook_sort_ascending = !self.hook_sort_ascending,
            }
            if action != Action::SortReverse {
                self.hook_sort_ascending = self.hook_sort == HookColumn::Name;
            }
            return;
        }
        // Only through the columns on screen (a narrow terminal drops some): a sort by a
        // column nobody sees reorders the rows for no visible reason.
        let shown: Vec<Column> = if self.layout.header_cells.is_empty() {
            Column::ALL.to_vec()
        } else {
            self.layout
                .header_cells
                .iter()
                .map(|(column, _, _)| *column)
                .collect()
        };
        let at = shown.iter().position(|column| *column == self.sort.column);
        let count = shown.len();
        match action {
            Action::SortNext => {
                self.sort = Sort::by(shown[at.map_or(0, |at| (at + 1) % count)]);
            }
            Action::SortPrevious => {
                self.sort = Sort::by(shown[at.map_or(count - 1, |at| (at + count - 1) % count)]);
            }
            _ => self.sort.descending = !self.sort.descending,
        }
        self.status = Some(Status {
            text: format!(
                "sorted by {} {}",
                self.sort.column.title().to_lowercase(),
                if self.sort.descending { "▼" } else { "▲" }
            ),
            role: Role::Info,
        });
    }

    /// Whether the detail view shows one pane at a time (decided by the last draw).
    fn compact_detail(&self) -> bool {
        self.screen == Screen::Detail && self.layout.compact
    }

    fn page_rows(&self) -> isize {
        self.layout
            .rows
            .iter()
            .find(|(pane, _, _)| *pane == self.focus)
            .map_or(10, |(_, area, _)| {
                isize::try_from(area.height.max(2) - 1).unwrap_or(10)
            })
    }

    fn move_cursor(&mut self, by: isize) {
        let step = |at: usize, len: usize| -> usize {
            if len == 0 {
                return 0;
            }
            at.saturating_add_signed(by).min(len - 1)
        };
        match self.focus {
            Pane::Plugins => {
                let names: Vec<String> = self
                    .visible_plugins()
                    .iter()
                    .map(|plugin| plugin.name.clone())
                    .collect();
                // From no row (nothing selected, or a row the filter hides): the first.
                let at = self.selected_index().map_or(0, |at| step(at, names.len()));
                self.selected_plugin = names.get(at).cloned();
            }
            Pane::Events => {
                let len = self.visible_events(None).len();
                self.event_cursor = step(self.event_cursor, len);
            }
            Pane::PluginEvents => {
                let name = self.selected_plugin.clone();
                let len = self.visible_events(name.as_deref()).len();
                self.plugin_event_cursor = step(self.plugin_event_cursor, len);
            }
            Pane::Log => {
                let len = self.visible_log().len();
                self.log_cursor = step(self.log_cursor, len);
            }
            Pane::Hooks => {
                let hooks = self.visible_hooks();
                let at = self
                    .selected_hook
                    .as_ref()
                    .and_then(|hook| hooks.iter().position(|name| name == hook))
                    .unwrap_or(0);
                self.selected_hook = hooks.get(step(at, hooks.len())).cloned();
            }
            Pane::Info => {
                let by = i16::try_from(by).unwrap_or(if by < 0 { i16::MIN } else { i16::MAX });
                self.info_scroll = self.info_scroll.saturating_add_signed(by);
            }
        }
    }

    fn open(&mut self) {
        match (self.screen, self.focus) {
            (Screen::Main, Pane::Events) => {
                // Jump to the plugin the event is about, on that event.
                let chosen = self
                    .visible_events(None)
                    .get(self.event_cursor)
                    .and_then(|event| Some((event.plugin.clone()?, event.seq)));
                // An event of the engine's own has no plugin to open: it is shown whole.
                if chosen.is_none()
                    && let Some(event) = self.visible_events(None).get(self.event_cursor)
                {
                    let lines = event_text(event);
                    self.show(Overlay::Text {
                        title: "Event".to_owned(),
                        lines,
                    });
                    return;
                }
                if let Some((plugin, seq)) = chosen {
                    self.selected_plugin = Some(plugin.clone());
                    self.open_detail();
                    if let Some(at) = self
                        .visible_events(Some(&plugin))
                        .iter()
                        .position(|event| event.seq == seq)
                    {
                        self.plugin_event_cursor = at;
                        self.focus = Pane::PluginEvents;
                    }
                }
            }
            (Screen::Main, _) => {
                if self.target().is_some() {
                    self.open_detail();
                }
            }
            (Screen::Detail, pane) => {
                if let Some((title, lines)) = self.full_text(pane) {
                    self.show(Overlay::Text { title, lines });
                }
            }
        }
    }

    /// What the detail view's `pane` shows cut, in full: the selected event (with its
    /// facts) or log line; on the other panes, why the plugin is where it is.
    fn full_text(&self, pane: Pane) -> Option<(String, Vec<String>)> {
        let plugin = self.selected()?;
        match pane {
            Pane::PluginEvents => {
                let event = *self
                    .visible_events(Some(&plugin.name))
                    .get(self.plugin_event_cursor)?;
                Some(("Event".to_owned(), event_text(event)))
            }
            Pane::Log => {
                let line = *self.visible_log().get(self.log_cursor)?;
                Some((
                    format!("{} {}", plugin.name, crate::tui::format::clock(line.at_ms)),
                    vec![line.line.clone()],
                ))
            }
            Pane::Hooks | Pane::Info | Pane::Plugins | Pane::Events => {
                let mut lines = vec![format!("{} is {}", plugin.name, plugin.state.as_str())];
                if let Some(reason) = &plugin.reason {
                    lines.push(String::new());
                    lines.push(reason.clone());
                }
                if let Some(exit) = plugin.last_exit {
                    lines.push(String::new());
                    lines.push(format!("its last worker ended: {exit}"));
                }
                if let Some(health) = &plugin.health_detail {
                    lines.push(String::new());
                    lines.push(format!("last failed health check: {health}"));
                }
                (lines.len() > 1).then(|| ("Why".to_owned(), lines))
            }
        }
    }

    /// Moves the focus to `pane`. A log (events, output) that loses it goes back to its
    /// newest line: scrolled back and unfocused, it would hide what arrives, with no
    /// highlighted row to say where it stands.
    fn set_focus(&mut self, pane: Pane) {
        if self.focus != pane {
            match self.focus {
                Pane::Events => self.event_cursor = 0,
                Pane::PluginEvents => self.plugin_event_cursor = 0,
                Pane::Log => self.log_cursor = 0,
                Pane::Plugins | Pane::Hooks | Pane::Info => {}
            }
        }
        self.focus = pane;
    }

    fn open_detail(&mut self) {
        if self.selected().is_none() {
            self.warn("no plugin selected");
            return;
        }
        self.screen = Screen::Detail;
        // A hint about where keys act, or a refusal, was about the screen left behind.
        if self
            .status
            .as_ref()
            .is_some_and(|status| status.role == Role::Warn)
        {
            self.status = None;
        }
        // What was fetched for an earlier visit is stale: the kept samples serve until the
        // next fetch (none while paused).
        self.resource_history = None;
        self.output_history = None;
        self.set_focus(Pane::Hooks);
        self.selected_hook = self.visible_hooks().first().cloned();
        self.log_cursor = 0;
        self.plugin_event_cursor = 0;
        self.info_scroll = 0;
        // The details' filters were typed for one plugin's log and events: another
        // plugin's open unfiltered (its log must not read "no line matches").
        if self.detail_plugin != self.selected_plugin {
            self.log_filter.clear();
            self.plugin_event_filter.clear();
            self.detail_plugin.clone_from(&self.selected_plugin);
        }
    }

    fn back(&mut self) {
        match self.screen {
            Screen::Detail => {
                self.screen = Screen::Main;
                self.set_focus(Pane::Plugins);
            }
            Screen::Main => {
                if self.paused.is_some() {
                    self.toggle_pause();
                } else if !self.filter_mut(self.focus).is_empty() {
                    self.filter_mut(self.focus).clear();
                    self.status = Some(Status {
                        text: "filter cleared".to_owned(),
                        role: Role::Info,
                    });
                }
            }
        }
    }

    pub fn on_mouse(&mut self, mouse: MouseEvent) -> Vec<Effect> {
        if self.overlay.is_some() {
            return Vec::new();
        }
        let at = Position::new(mouse.column, mouse.row);
        match mouse.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                if self.layout.header_row == Some(mouse.row) {
                    if let Some((column, _, _)) = self
                        .layout
                        .header_cells
                        .iter()
                        .find(|(_, x, width)| (*x..x + width).contains(&mouse.column))
                    {
                        self.sort = if self.sort.column == *column {
                            Sort {
                                column: *column,
                                descending: !self.sort.descending,
                            }
                        } else {
                            Sort::by(*column)
                        };
                        self.set_focus(Pane::Plugins);
                        return Vec::new();
                    }
                }
                if let Some((pane, _)) =
                    self.layout.panes.iter().find(|(_, area)| area.contains(at))
                {
                    self.set_focus(*pane);
                }
                let hit = self
                    .layout
                    .rows
                    .iter()
                    .find(|(_, area, _)| area.contains(at))
                    .map(|(pane, area, first)| (*pane, first + usize::from(mouse.row - area.y)));
                if let Some((pane, index)) = hit {
                    self.select_row(pane, index);
                }
            }
            MouseEventKind::ScrollDown | MouseEventKind::ScrollUp => {
                if let Some((pane, _)) =
                    self.layout.panes.iter().find(|(_, area)| area.contains(at))
                {
                    self.set_focus(*pane);
                    self.move_cursor(if mouse.kind == MouseEventKind::ScrollDown {
                        1
                    } else {
                        -1
                    });
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn select_row(&mut self, pane: Pane, index: usize) {
        match pane {
            Pane::Plugins => {
                let name = self
                    .visible_plugins()
                    .get(index)
                    .map(|plugin| plugin.name.clone());
                if name.is_some() {
                    // A click on the selected row opens it, like enter.
                    if name == self.selected_plugin {
                        self.open_detail();
                    }
                    self.selected_plugin = name;
                }
            }
            Pane::Events => {
                if index < self.visible_events(None).len() {
                    self.event_cursor = index;
                }
            }
            Pane::PluginEvents => {
                let name = self.selected_plugin.clone();
                if index < self.visible_events(name.as_deref()).len() {
                    self.plugin_event_cursor = index;
                }
            }
            Pane::Log => {
                if index < self.visible_log().len() {
                    self.log_cursor = index;
                }
            }
            Pane::Hooks => {
                if let Some(hook) = self.visible_hooks().get(index) {
                    self.selected_hook = Some(hook.clone());
                }
            }
            Pane::Info => {}
        }
    }
}

fn run(label: String, command: Command) -> Vec<Effect> {
    vec![Effect::Run(Job { label, command })]
}

/// The latency the hook table shows, which its sort must follow: the last minute's, or
/// the lifetime one when the last minute saw no call.
pub fn shown_latency(recent_us: u64, since_start_us: u64) -> u64 {
    if recent_us == 0 {
        since_start_us
    } else {
        recent_us
    }
}

/// An event in full, for its overlay: when, whose, what, and a violation's facts.
fn event_text(event: &Event) -> Vec<String> {
    let described = describe::describe(event);
    let mut lines = vec![
        format!(
            "{} {} {}",
            crate::tui::format::clock(event.at_ms),
            event.plugin.as_deref().unwrap_or("engine"),
            described.kind
        ),
        String::new(),
        described.text,
    ];
    if let plugboard_engine::EventKind::Violation { violation } = &event.kind {
        lines.push(String::new());
        lines.push(format!(
            "caught by {}, action {}",
            violation.mechanism,
            serde_json::to_value(violation.action)
                .ok()
                .and_then(|action| action.as_str().map(str::to_owned))
                .unwrap_or_default()
        ));
        lines.extend(
            violation
                .facts
                .iter()
                .map(|(fact, value)| format!("{fact} = {value}")),
        );
    }
    lines
}
