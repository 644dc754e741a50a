//! One plugin: identity line, trust and supervision, what the kernel granted, and the
//! hook table, log and events as panes.

use plugboard_engine::PluginSnapshot;
use plugboard_engine::sandbox::Mechanism;
use plugboard_engine::snapshot::ConfigSource;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, List, ListItem, ListState, Paragraph, Row, Table, TableState};

use super::header::style_for;
use super::{events, pane_block, previous_offset, scroll_offset};
use crate::tui::app::{App, HookColumn, Pane, ScreenLayout};
use crate::tui::columns::{health_look, isolation_badges, state_look};
use crate::tui::format::{self, NONE};
use crate::tui::theme::Theme;

/// What the details say when the sample shown has no such plugin.
fn no_plugin_line(app: &App) -> Line<'static> {
    let text = if app.paused.is_some() {
        format!(
            "not in the sample shown (paused: {} steps to newer ones)",
            app.keymap.label(crate::tui::keymap::Action::HistoryForward)
        )
    } else {
        "the plugin is gone".to_owned()
    };
    Line::styled(text, app.theme.muted())
}

pub fn draw(
    frame: &mut Frame,
    body: Rect,
    app: &App,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    let theme = &app.theme;
    let Some(plugin) = app.selected() else {
        frame.render_widget(Paragraph::new(no_plugin_line(app)), body);
        return;
    };
    let [title_area, rest] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(body);
    let title = super::fit_spans(title_line(plugin, theme).spans, title_area.width);
    frame.render_widget(Paragraph::new(Line::from(title)), title_area);

    let compact = rest.height < 18 || rest.width < 60;
    layout.compact = compact;
    if compact {
        // One pane at a time; the info panels are a pane of their own.
        let pane = if app.panes(true).contains(&app.focus) {
            app.focus
        } else {
            Pane::Hooks
        };
        draw_pane(frame, rest, app, plugin, pane, previous, layout);
        return;
    }
    let mut left = trust_lines(plugin, theme);
    left.extend(resource_lines(app, plugin));
    let granted = granted_lines(plugin, theme);
    let config = config_lines(plugin, theme);
    // The info row grows with what it has to say (the granted matrix with the effective
    // config below it), but leaves the panes six rows.
    let right = granted.len()
        + 2
        + if config.is_empty() {
            0
        } else {
            config.len() + 2
        };
    let wanted = u16::try_from((left.len() + 2).max(right)).unwrap_or(u16::MAX);
    let info_height = wanted
        .clamp(10, 18)
        .min(rest.height.saturating_sub(6))
        .max(3);
    let [info_area, panes_area] =
        Layout::vertical([Constraint::Length(info_height), Constraint::Min(4)]).areas(rest);
    let [trust_area, right_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(info_area);
    let block = pane_block(vec![Span::raw("Trust & supervision")], false, theme);
    frame.render_widget(Paragraph::new(left).block(block), trust_area);
    // The config box gets what the granted matrix leaves, when that is a line at least.
    let granted_height = u16::try_from(granted.len() + 2).unwrap_or(u16::MAX);
    let (granted_area, config_area) = if config.is_empty() || right_area.height < granted_height + 3
    {
        (right_area, None)
    } else {
        let [granted_area, config_area] =
            Layout::vertical([Constraint::Length(granted_height), Constraint::Min(3)])
                .areas(right_area);
        (granted_area, Some(config_area))
    };
    // With no worker running, what the last one was granted: nothing confines it now.
    let granted_title = if plugin.worker_pid.is_some() || plugin.mechanisms.is_empty() {
        "What the kernel granted"
    } else {
        "What the kernel granted its last worker"
    };
    let block = pane_block(vec![Span::raw(granted_title)], false, theme);
    frame.render_widget(Paragraph::new(granted).block(block), granted_area);
    if let Some(config_area) = config_area {
        let block = pane_block(vec![Span::raw(config_title(plugin))], false, theme);
        frame.render_widget(Paragraph::new(config).block(block), config_area);
    }

    if panes_area.height >= 16 {
        // Tall: the hook table above, log and events side by side below.
        let [hooks_area, bottom] =
            Layout::vertical([Constraint::Percentage(45), Constraint::Min(4)]).areas(panes_area);
        let [log_area, events_area] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(bottom);
        draw_pane(
            frame,
            hooks_area,
            app,
            plugin,
            Pane::Hooks,
            previous,
            layout,
        );
        draw_pane(frame, log_area, app, plugin, Pane::Log, previous, layout);
        draw_pane(
            frame,
            events_area,
            app,
            plugin,
            Pane::PluginEvents,
            previous,
            layout,
        );
    } else {
        let pane = if app.focus == Pane::Info {
            Pane::Hooks
        } else {
            app.focus
        };
        draw_pane(frame, panes_area, app, plugin, pane, previous, layout);
    }
}

fn title_line<'a>(plugin: &'a PluginSnapshot, theme: &Theme) -> Line<'a> {
    let look = state_look(plugin.state);
    let (health, health_role) = health_look(plugin.health);
    let _ = health_role;
    let mut spans = vec![
        Span::styled(format!(" {} ", plugin.name), theme.title()),
        Span::styled(plugin.version.clone().unwrap_or_default(), theme.muted()),
        Span::raw("  "),
        Span::styled(
            format!("{} {}", look.symbol, look.label),
            match look.role {
                crate::tui::theme::Role::Ok => theme.ok(),
                crate::tui::theme::Role::Warn => theme.warn(),
                crate::tui::theme::Role::Error => theme.error(),
                _ => theme.idle(),
            },
        ),
        Span::styled(format!("  health {health}"), theme.muted()),
    ];
    // What an on-call engineer needs first comes first: a narrow screen cuts the end.
    if plugin.violations > 0 {
        spans.push(Span::styled(
            format!(
                "  {}",
                crate::tui::format::count(plugin.violations, "violation")
            ),
            theme.error(),
        ));
    }
    if plugin.violations_unrecorded > 0 {
        spans.push(Span::styled(
            format!(" (+{} unrecorded)", plugin.violations_unrecorded),
            theme.error(),
        ));
    }
    if let (Some(worker), Some(sandbox)) = (plugin.worker_pid, plugin.sandbox_pid) {
        spans.push(Span::styled(
            format!("  pid {worker}/{sandbox}"),
            theme.muted(),
        ));
    }
    spans.push(Span::styled(
        format!("  {} [{}]", plugin.isolation, isolation_badges(plugin)),
        theme.info(),
    ));
    Line::from(spans)
}

#[allow(clippy::too_many_lines)] // one line per fact, in reading order
/// What a verified manifest's `[capabilities]` grant, in a line: what an on-call engineer
/// asks first of a plugin (may it reach the network, start programs, write there?).
fn grants_text(capabilities: &plugboard_engine::manifest::Capabilities) -> String {
    let paths = |paths: &[std::path::PathBuf]| {
        paths
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut granted = Vec::new();
    if capabilities.network {
        granted.push("network".to_owned());
    }
    if capabilities.spawn {
        granted.push("spawn".to_owned());
    }
    if !capabilities.fs_write.is_empty() {
        granted.push(format!("write {}", paths(&capabilities.fs_write)));
    }
    if !capabilities.fs_read.is_empty() {
        granted.push(format!("read {}", paths(&capabilities.fs_read)));
    }
    if !capabilities.emit.is_empty() {
        granted.push(format!("emit {}", capabilities.emit.join(" ")));
    }
    granted.join(" · ")
}

/// The bundle's signer, digest, state on disk and grants.
fn bundle_lines<'a>(plugin: &'a PluginSnapshot, theme: &Theme) -> Vec<Line<'a>> {
    // At least one space after the longest label (`last exit`).
    let label = |text: &'static str| Span::styled(format!("{text:<9} "), theme.muted());
    let trust = &plugin.trust;
    vec![
        Line::from(vec![
            label("key"),
            match (&trust.key_id, trust.unverified) {
                (_, true) => Span::styled("UNVERIFIED (development mode)", theme.error()),
                (Some(key), false) => Span::styled(key.clone(), theme.text()),
                // Only a verified bundle has a signer to show (an unsigned one runs only
                // in development mode, above): nothing verified yet, or it was rejected.
                (None, false) => Span::styled("not verified", theme.muted()),
            },
            Span::styled(
                trust
                    .level
                    .as_ref()
                    .map(|level| format!("  {level}"))
                    .unwrap_or_default(),
                theme.muted(),
            ),
        ]),
        Line::from(vec![
            label("digest"),
            Span::styled(
                trust
                    .library_sha3_512
                    .as_deref()
                    .map_or(NONE.to_owned(), |digest| {
                        format!("sha3-512 {}…", &digest[..digest.len().min(16)])
                    }),
                theme.text(),
            ),
        ]),
        Line::from(vec![
            label("on disk"),
            if plugin.removed_from_disk {
                Span::styled("✗ REMOVED since verified", theme.error())
            } else if plugin.changed_on_disk {
                Span::styled("▲ CHANGED since verified", theme.warn())
            } else if trust.library_sha3_512.is_none() {
                Span::styled(NONE, theme.muted())
            } else {
                Span::styled("✓ as verified", theme.ok())
            },
        ]),
        Line::from(vec![
            label("grants"),
            plugin.capabilities.as_ref().map_or(
                Span::styled(NONE, theme.muted()),
                |capabilities| {
                    let granted = grants_text(capabilities);
                    if granted.is_empty() {
                        Span::styled("nothing beyond its own temp dir", theme.muted())
                    } else {
                        Span::styled(granted, theme.warn())
                    }
                },
            ),
        ]),
    ]
}

fn trust_lines<'a>(plugin: &'a PluginSnapshot, theme: &Theme) -> Vec<Line<'a>> {
    // At least one space after the longest label (`last exit`).
    let label = |text: &'static str| Span::styled(format!("{text:<9} "), theme.muted());
    let supervision = &plugin.supervision;
    let mut lines = bundle_lines(plugin, theme);
    lines.extend([
        Line::from(vec![
            label("starts"),
            Span::styled(
                format!("{}  restarts {}", supervision.starts, supervision.restarts),
                theme.text(),
            ),
        ]),
        Line::from(vec![
            label("backoff"),
            Span::styled(
                format!(
                    "step {}  budget left {}",
                    supervision.backoff_step, supervision.restart_budget_left
                ),
                if supervision.restart_budget_left == 0 {
                    theme.error()
                } else {
                    theme.text()
                },
            ),
        ]),
        Line::from(vec![
            label("retry"),
            Span::styled(
                supervision.next_retry_ms.map_or_else(
                    || NONE.to_owned(),
                    |at| format!("{} ({})", format::clock(at), format::until(at, now_ms())),
                ),
                theme.text(),
            ),
        ]),
    ]);
    if let Some(reason) = &plugin.reason {
        lines.push(Line::from(vec![
            label("reason"),
            Span::styled(reason.clone(), theme.error()),
        ]));
    } else if let Some(exit) = plugin.last_exit {
        lines.push(Line::from(vec![
            label("last exit"),
            Span::styled(exit.to_string(), theme.text()),
        ]));
    }
    if !plugin.dependencies.is_empty() {
        let deps: Vec<String> = plugin
            .dependencies
            .iter()
            .map(|(name, requirement)| format!("{name} {requirement}"))
            .collect();
        lines.push(Line::from(vec![
            label("needs"),
            Span::styled(deps.join(", "), theme.text()),
        ]));
    }
    if !plugin.enabled {
        lines.push(Line::from(vec![
            label("enabled"),
            Span::styled("no (disabled)", theme.warn()),
        ]));
    }
    lines
}

/// How many samples the small charts show.
const CHART_SAMPLES: usize = 16;

/// CPU and memory against their limits, with a chart of the recent samples, and pids,
/// threads and descriptors — `–` until the engine has sampled the worker.
/// One resource of `plugin` for a chart, oldest first: the engine's ring (minutes) when the
/// UI has it for this plugin, up to the sample shown (paused, that is an older one); else
/// the samples in the snapshots the UI kept, from the one shown back.
/// The chart's values and the time they span (ms from the oldest to the shown sample):
/// the engine's ring of the plugin's samples, minutes long and growing, squeezed into
/// the chart's columns — or, before the ring has come, the last snapshots'.
fn resource_series(
    app: &App,
    plugin: &PluginSnapshot,
    pick: fn(&plugboard_engine::monitor::ResourceSample) -> f64,
) -> (Vec<f64>, u64) {
    let shown_at = app.snapshot().map_or(u64::MAX, |shown| shown.taken_at_ms);
    let ring: Vec<(u64, f64)> = app
        .resource_history
        .as_ref()
        .filter(|(name, _)| *name == plugin.name)
        .map(|(_, samples)| {
            samples
                .iter()
                .filter(|sample| sample.at_ms <= shown_at)
                .map(|sample| (sample.at_ms, pick(sample)))
                .collect()
        })
        .unwrap_or_default();
    let spanned = |points: &[(u64, f64)]| match (points.first(), points.last()) {
        (Some((oldest, _)), Some((newest, _))) => newest.saturating_sub(*oldest),
        _ => 0,
    };
    if !ring.is_empty() {
        let values: Vec<f64> = ring.iter().map(|(_, value)| *value).collect();
        return (buckets(&values, CHART_SAMPLES), spanned(&ring));
    }
    let mut points: Vec<(u64, f64)> = app
        .history
        .iter()
        .rev()
        .skip(app.paused.unwrap_or(0))
        .filter_map(|snapshot| {
            snapshot
                .plugins
                .iter()
                .find(|other| other.name == plugin.name)
                .and_then(|other| other.resources.as_ref())
                .map(|sample| (snapshot.taken_at_ms, pick(sample)))
        })
        .take(CHART_SAMPLES)
        .collect();
    points.reverse();
    let span = spanned(&points);
    (points.into_iter().map(|(_, value)| value).collect(), span)
}

fn resource_lines<'a>(app: &App, plugin: &PluginSnapshot) -> Vec<Line<'a>> {
    let theme = &app.theme;
    // At least one space after the longest label (`last exit`).
    let label = |text: &'static str| Span::styled(format!("{text:<9} "), theme.muted());
    let Some(now) = &plugin.resources else {
        return vec![Line::from(vec![
            label("cpu/mem"),
            Span::styled(format!("{NONE} (not sampled)"), theme.muted()),
        ])];
    };
    let series = |pick| resource_series(app, plugin, pick);
    #[allow(clippy::cast_precision_loss)] // bytes far below 2^52 for a chart
    let (memory, _) = series(|sample| sample.memory_bytes as f64);
    let (cpu, span_ms) = series(|sample| sample.cpu_percent);
    // The quota as configured (an idle sample cannot say it: 0% of any quota is 0%).
    let cpu_limit = plugin
        .limits
        .as_ref()
        .map(|limits| f64::from(limits.cpu_percent))
        .filter(|_| now.cpu_percent_of_quota.is_some())
        .or_else(|| {
            now.cpu_percent_of_quota
                .filter(|share| *share > 0.0)
                .map(|share| now.cpu_percent * 100.0 / share)
        });
    #[allow(clippy::cast_precision_loss)]
    let memory_limit = now.memory_limit_bytes.map(|limit| limit as f64);
    let cpu_text = match cpu_limit {
        Some(quota) => format!(" {:.0}% of {:.0}%", now.cpu_percent, quota),
        None => format!(" {:.0}%", now.cpu_percent),
    };
    let memory_text = match now.memory_limit_bytes {
        Some(limit) => format!(" {}", format::bytes_of(now.memory_bytes, limit)),
        None => format!(" {}", format::bytes(now.memory_bytes)),
    };
    let hot = |share: Option<f64>| {
        if share.is_some_and(|share| share >= 0.9) {
            theme.error()
        } else {
            theme.accent()
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let memory_share = memory_limit.map(|limit| now.memory_bytes as f64 / limit);
    vec![
        Line::from(vec![
            label("cpu"),
            Span::styled(
                chart(&cpu, cpu_limit),
                hot(now.cpu_percent_of_quota.map(|share| share / 100.0)),
            ),
            Span::styled(cpu_text, theme.text()),
        ]),
        Line::from(vec![
            label("memory"),
            Span::styled(chart(&memory, memory_limit), hot(memory_share)),
            Span::styled(memory_text, theme.text()),
        ]),
        // How far back the charts reach (the engine's ring grows to minutes): read as
        // seconds ago, a spike minutes old would mislead.
        Line::from(vec![
            label(""),
            Span::styled(
                if span_ms < 1000 {
                    "↑ the newest sample".to_owned()
                } else {
                    format!("↑ last {}, peak per bar", format::uptime(span_ms))
                },
                theme.muted(),
            ),
        ]),
        Line::from(vec![
            label("pids"),
            Span::styled(
                format!(
                    "{}/{}  threads {}  fds {}",
                    now.pids_current,
                    now.pids_max
                        .map_or_else(|| NONE.to_owned(), |max| max.to_string()),
                    now.threads,
                    now.open_fds
                ),
                theme.text(),
            ),
        ]),
    ]
}

/// At most `count` values: each the largest of its stretch of `values`, so a short spike
/// still shows in a long history.
fn buckets(values: &[f64], count: usize) -> Vec<f64> {
    if values.len() <= count {
        return values.to_vec();
    }
    (0..count)
        .map(|bucket| {
            let start = bucket * values.len() / count;
            let end = ((bucket + 1) * values.len() / count).max(start + 1);
            values[start..end].iter().copied().fold(f64::MIN, f64::max)
        })
        .collect()
}

/// A one-line chart of `values` scaled to `limit` (or to their own maximum).
fn chart(values: &[f64], limit: Option<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = limit
        .filter(|limit| *limit > 0.0)
        .unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max))
        .max(f64::EPSILON);
    let mut text: String = values
        .iter()
        .map(|value| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=7
            let step = ((value / top) * 7.0).round().clamp(0.0, 7.0) as usize;
            BARS[step]
        })
        .collect();
    // Pad on the left so the newest sample is always in the same place.
    while text.chars().count() < CHART_SAMPLES {
        text.insert(0, ' ');
    }
    text
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// One line per mechanism: granted or not (symbol and word, not colour alone) and detail.
fn granted_lines<'a>(plugin: &'a PluginSnapshot, theme: &Theme) -> Vec<Line<'a>> {
    if plugin.mechanisms.is_empty() {
        return vec![Line::styled(
            "not started yet: nothing to show",
            theme.muted(),
        )];
    }
    let mut names: Vec<&str> = Mechanism::ALL
        .iter()
        .map(|mechanism| mechanism.name())
        .collect();
    for name in plugin.mechanisms.keys() {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let badge = Mechanism::ALL
                .iter()
                .find(|mechanism| mechanism.name() == name)
                .map_or("", |mechanism| mechanism.badge());
            match plugin.mechanisms.get(name) {
                Some(state) if state.active => Line::from(vec![
                    Span::styled(format!("✓ {badge:<4}"), theme.ok()),
                    Span::styled(format!("{name:<17}"), theme.text()),
                    Span::styled(state.detail.clone(), theme.muted()),
                ]),
                Some(state) => Line::from(vec![
                    Span::styled(format!("✗ {badge:<4}"), theme.error()),
                    Span::styled(format!("{name:<17}"), theme.text()),
                    Span::styled(state.detail.clone(), theme.error()),
                ]),
                None => Line::from(vec![
                    Span::styled(format!("? {badge:<4}"), theme.muted()),
                    Span::styled(format!("{name:<17}"), theme.muted()),
                    Span::styled("not reported", theme.muted()),
                ]),
            }
        })
        .collect()
}

fn config_title(plugin: &PluginSnapshot) -> String {
    let overridden = plugin
        .config
        .values()
        .filter(|setting| setting.source == ConfigSource::Host)
        .count();
    format!(
        "Effective config {} · {overridden} from host",
        plugin.config.len()
    )
}

/// One line per `[config.<key>]`: the value the plugin received and which source won —
/// the host's override (with the default it replaced), the manifest's default, or none.
fn config_lines<'a>(plugin: &'a PluginSnapshot, theme: &Theme) -> Vec<Line<'a>> {
    let width = plugin
        .config
        .keys()
        .map(|key| key.chars().count())
        .max()
        .unwrap_or(0)
        .min(20);
    let value = |value: Option<&serde_json::Value>| {
        value.map_or_else(|| NONE.to_owned(), serde_json::Value::to_string)
    };
    // The host's overrides first, then settings without a value, then defaults: what
    // differs from the manifest is what a small terminal must still show.
    let mut settings: Vec<_> = plugin.config.iter().collect();
    settings.sort_by_key(|(key, setting)| {
        let rank = match setting.source {
            ConfigSource::Host => 0,
            ConfigSource::Unset => 1,
            ConfigSource::Manifest => 2,
        };
        (rank, *key)
    });
    settings
        .into_iter()
        .map(|(key, setting)| {
            let mut spans = vec![
                Span::styled(format!("{key:<width$} "), theme.muted()),
                Span::styled(
                    format!("{} ", value(setting.effective.as_ref())),
                    theme.text(),
                ),
            ];
            spans.push(match setting.source {
                ConfigSource::Host => Span::styled(
                    format!("◆ host (default {})", value(setting.default.as_ref())),
                    theme.accent(),
                ),
                ConfigSource::Manifest => Span::styled("· manifest default", theme.muted()),
                ConfigSource::Unset => Span::styled("✗ unset", theme.warn()),
            });
            Line::from(spans)
        })
        .collect()
}

fn draw_pane(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    plugin: &PluginSnapshot,
    pane: Pane,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    match pane {
        Pane::Hooks => draw_hooks(frame, area, app, plugin, previous, layout),
        Pane::Log => draw_log(frame, area, app, plugin, previous, layout),
        Pane::Info => {
            let theme = &app.theme;
            let mut lines = trust_lines(plugin, theme);
            lines.extend(resource_lines(app, plugin));
            lines.push(Line::styled("What the kernel granted", theme.title()));
            lines.extend(granted_lines(plugin, theme));
            let config = config_lines(plugin, theme);
            if !config.is_empty() {
                lines.push(Line::styled(config_title(plugin), theme.title()));
                lines.extend(config);
            }
            // Taller than the pane on a small terminal: it scrolls (↑/↓ while focused).
            let rows = usize::from(area.height.saturating_sub(2));
            let last = u16::try_from(lines.len().saturating_sub(rows)).unwrap_or(u16::MAX);
            let scroll = app.info_scroll.min(last);
            let mut title = vec![Span::raw("Info")];
            if last > 0 {
                title.push(Span::styled(
                    format!(" · ↑↓ {scroll}/{last}"),
                    theme.muted(),
                ));
            }
            let block = pane_block(title, true, theme);
            frame.render_widget(Paragraph::new(lines).block(block).scroll((scroll, 0)), area);
            layout.info_scroll = Some(scroll);
            layout.panes.push((Pane::Info, area));
        }
        Pane::PluginEvents | Pane::Events | Pane::Plugins => {
            events::draw(frame, area, app, Some(&plugin.name), previous, layout);
        }
    }
}

#[allow(clippy::too_many_lines)] // the table and its last-error line
fn draw_hooks(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    plugin: &PluginSnapshot,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    let theme = &app.theme;
    let focused = app.focus == Pane::Hooks;
    let hooks = app.visible_hooks();
    let block = pane_block(
        vec![Span::raw(format!(
            "Hooks {} · by {} {}",
            hooks.len(),
            app.hook_sort.title().to_lowercase(),
            if app.hook_sort_ascending {
                "▲"
            } else {
                "▼"
            }
        ))],
        focused,
        theme,
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    layout.panes.push((Pane::Hooks, area));
    if inner.height < 2 {
        return;
    }
    if hooks.is_empty() {
        // Without a verified manifest, its hooks are not known: none is not "no hook".
        let text = if plugin.version.is_none() {
            "not verified yet: its hooks are not known"
        } else {
            "subscribes to no hook, and none was called"
        };
        frame.render_widget(Paragraph::new(Line::styled(text, theme.muted())), inner);
        return;
    }
    let columns: Vec<HookColumn> = if inner.width >= 86 {
        HookColumn::ALL.to_vec()
    } else if inner.width >= 62 {
        HookColumn::ALL
            .into_iter()
            .filter(|column| !matches!(column, HookColumn::Priority | HookColumn::Limit))
            .collect()
    } else {
        vec![
            HookColumn::Name,
            HookColumn::Calls,
            HookColumn::Errors,
            HookColumn::P99,
        ]
    };
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|column| match column {
            HookColumn::Name => Constraint::Min(10),
            HookColumn::Priority => Constraint::Length(10),
            HookColumn::Calls => Constraint::Length(8),
            _ => Constraint::Length(7),
        })
        .collect();
    let header = Row::new(columns.iter().map(|column| {
        let mut title = column.title().to_owned();
        if *column == app.hook_sort {
            title.push(if app.hook_sort_ascending {
                '▲'
            } else {
                '▼'
            });
        }
        Cell::from(Line::from(title).alignment(if left_aligned(*column) {
            Alignment::Left
        } else {
            Alignment::Right
        }))
    }))
    .style(theme.title());
    let rows = hooks.iter().map(|name| {
        let stats = plugin.hooks.get(name);
        let disabled = plugin.disabled_hooks.contains(name);
        Row::new(columns.iter().map(|column| {
            let (text, style) = match (column, stats) {
                (HookColumn::Name, _) => (
                    if disabled {
                        format!("⊘ {name} (off)")
                    } else {
                        name.clone()
                    },
                    if disabled { theme.warn() } else { theme.text() },
                ),
                (_, None) => (NONE.to_owned(), theme.muted()),
                (HookColumn::Priority, Some(stats)) => stats.priority.map_or_else(
                    || ("not subscribed".to_owned(), theme.muted()),
                    |priority| (priority.as_str().to_owned(), theme.text()),
                ),
                (HookColumn::Limit, Some(stats)) => (
                    stats.timeout_ms.map_or_else(
                        || NONE.to_owned(),
                        |ms| format::micros(ms.saturating_mul(1000)),
                    ),
                    theme.muted(),
                ),
                (HookColumn::Calls, Some(stats)) => (stats.calls.to_string(), theme.text()),
                // As in the table: a plugin not serving has no rate now, only what its
                // last 10 s of serving left.
                (HookColumn::Rate, Some(_)) if !crate::tui::columns::serving(plugin) => {
                    (NONE.to_owned(), theme.muted())
                }
                (HookColumn::Rate, Some(stats)) => {
                    (format::rate(stats.calls_per_sec_10s), theme.text())
                }
                (HookColumn::Errors, Some(stats)) => (
                    stats.errors.to_string(),
                    if stats.errors > 0 {
                        theme.warn()
                    } else {
                        theme.muted()
                    },
                ),
                (HookColumn::Timeouts, Some(stats)) => (
                    stats.timeouts.to_string(),
                    if stats.timeouts > 0 {
                        theme.error()
                    } else {
                        theme.muted()
                    },
                ),
                (HookColumn::P50, Some(stats)) => (
                    latency(stats.recent.p50_us, stats.since_start.p50_us),
                    theme.text(),
                ),
                (HookColumn::P99, Some(stats)) => (
                    latency(stats.recent.p99_us, stats.since_start.p99_us),
                    theme.text(),
                ),
                (HookColumn::Max, Some(stats)) => {
                    (latency(stats.since_start.max_us, 0), theme.text())
                }
            };
            Cell::from(Line::from(text).alignment(if left_aligned(*column) {
                Alignment::Left
            } else {
                Alignment::Right
            }))
            .style(style)
        }))
    });
    let rows_area = Rect::new(inner.x, inner.y + 1, inner.width, inner.height - 1);
    let selected = app
        .selected_hook
        .as_ref()
        .and_then(|hook| hooks.iter().position(|name| name == hook))
        .or(Some(0));
    let offset = scroll_offset(
        selected.unwrap_or(0),
        previous_offset(previous, Pane::Hooks),
        usize::from(rows_area.height),
        hooks.len(),
    );
    layout.rows.push((Pane::Hooks, rows_area, offset));
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(if focused {
            theme.selection()
        } else {
            theme.text()
        });
    let mut state = TableState::default()
        .with_offset(offset)
        .with_selected(selected);
    frame.render_stateful_widget(table, inner, &mut state);
    // The selected hook's last error, where there is room for it.
    if let Some(error) = selected
        .and_then(|at| hooks.get(at))
        .and_then(|hook| plugin.hooks.get(hook))
        .and_then(|stats| stats.last_error.as_ref())
        && inner.height as usize > hooks.len() + 2
    {
        let line_area = Rect::new(inner.x, inner.y + inner.height - 1, inner.width, 1);
        frame.render_widget(
            Paragraph::new(Line::styled(format!("last error: {error}"), theme.warn())),
            line_area,
        );
    }
}

fn left_aligned(column: HookColumn) -> bool {
    matches!(column, HookColumn::Name | HookColumn::Priority)
}

/// The last minute's figure when there were calls in it, else the lifetime one.
fn latency(recent: u64, since_start: u64) -> String {
    match crate::tui::app::shown_latency(recent, since_start) {
        0 => NONE.to_owned(),
        shown => format::micros(shown),
    }
}

fn draw_log(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    plugin: &PluginSnapshot,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    let theme = &app.theme;
    let focused = app.focus == Pane::Log;
    let lines = app.visible_log();
    let mut title = vec![Span::raw(format!("Log {}", lines.len()))];
    if plugin.output_dropped > 0 {
        title.push(Span::styled(
            format!(" ({} dropped)", plugin.output_dropped),
            theme.warn(),
        ));
    }
    if !app.log_filter.is_empty() {
        title.push(Span::styled(
            format!(" /{}", app.log_filter),
            theme.accent(),
        ));
    }
    let block = pane_block(title, focused, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    layout.panes.push((Pane::Log, area));
    if inner.height == 0 {
        return;
    }
    if lines.is_empty() {
        let text = if app.log_filter.is_empty() {
            "no output yet"
        } else {
            "no line matches the filter"
        };
        frame.render_widget(Paragraph::new(Line::styled(text, theme.muted())), inner);
        return;
    }
    let filter = app.log_filter.to_lowercase();
    let items: Vec<ListItem> = lines
        .iter()
        .map(|line| {
            let (stream, style) = match line.stream {
                plugboard_engine::worker::OutputStream::Stdout => ("out", theme.muted()),
                plugboard_engine::worker::OutputStream::Stderr => ("err", theme.warn()),
                plugboard_engine::worker::OutputStream::Log { level } => {
                    match plugboard_sdk::LogLevel::from_code(level) {
                        plugboard_sdk::LogLevel::Error => ("ERR", theme.error()),
                        plugboard_sdk::LogLevel::Warn => ("WRN", theme.warn()),
                        plugboard_sdk::LogLevel::Info => ("inf", theme.info()),
                        plugboard_sdk::LogLevel::Debug => ("dbg", theme.muted()),
                    }
                }
            };
            let mut spans = vec![
                Span::styled(format::clock_millis(line.at_ms), theme.muted()),
                Span::raw(" "),
                Span::styled(stream, style),
                Span::raw(" "),
            ];
            spans.extend(highlight(&line.line, &filter, app));
            ListItem::new(Line::from(spans))
        })
        .collect();
    let offset = scroll_offset(
        app.log_cursor,
        previous_offset(previous, Pane::Log),
        usize::from(inner.height),
        lines.len(),
    );
    layout.rows.push((Pane::Log, inner, offset));
    let list = List::new(items).highlight_style(if focused {
        theme.selection()
    } else {
        theme.text()
    });
    let mut state = ListState::default()
        .with_offset(offset)
        .with_selected(focused.then_some(app.log_cursor));
    frame.render_stateful_widget(list, inner, &mut state);
}

/// The line with every match of the search shown in reverse video. Matching ignores case
/// as the filter does; the line comes from a plugin, so any text must work (lower-casing
/// changes byte lengths outside ASCII, in both directions).
fn highlight<'a>(line: &'a str, filter: &str, app: &App) -> Vec<Span<'a>> {
    let text = app.theme.text();
    let filter = filter.to_lowercase();
    if filter.is_empty() {
        return vec![Span::styled(line, text)];
    }
    // Every word's matches, overlapping ones joined.
    let mut ranges: Vec<(usize, usize)> = filter
        .split_whitespace()
        .flat_map(|word| case_insensitive_matches(line, word))
        .collect();
    ranges.sort_unstable();
    let mut joined: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match joined.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => joined.push((start, end)),
        }
    }
    let mut spans = Vec::new();
    let mut at = 0;
    for (start, end) in joined {
        spans.push(Span::styled(&line[at..start], text));
        spans.push(Span::styled(
            &line[start..end],
            style_for(app, crate::tui::theme::Role::Accent)
                .add_modifier(ratatui::style::Modifier::REVERSED),
        ));
        at = end;
    }
    spans.push(Span::styled(&line[at..], text));
    spans
}

/// The byte ranges of `line` whose lower-cased text holds `lower_needle`, in order and
/// apart, each widened to whole characters of `line`.
fn case_insensitive_matches(line: &str, lower_needle: &str) -> Vec<(usize, usize)> {
    // For each byte of the lower-cased line: the range of the character of `line` it
    // came from.
    let mut lower = String::with_capacity(line.len());
    let mut origin = Vec::with_capacity(line.len());
    for (start, character) in line.char_indices() {
        let end = start + character.len_utf8();
        for lowered in character.to_lowercase() {
            lower.push(lowered);
            origin.resize(lower.len(), (start, end));
        }
    }
    let mut matches: Vec<(usize, usize)> = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find(lower_needle) {
        let (lower_start, lower_end) = (from + found, from + found + lower_needle.len());
        let start = origin[lower_start].0;
        let end = origin[lower_end - 1].1;
        match matches.last_mut() {
            // Two matches within one character of `line` (an expansion): one range.
            Some(last) if start < last.1 => last.1 = last.1.max(end),
            _ => matches.push((start, end)),
        }
        from = lower_end;
    }
    matches
}

#[cfg(test)]
mod highlight_tests {
    use super::case_insensitive_matches;

    #[test]
    fn matches_land_on_character_boundaries_whatever_lower_casing_does() {
        // The Kelvin sign lower-cases to a one-byte `k`, `İ` to three bytes.
        let line = "\u{212A} error \u{130}\u{130} Error";
        let matches = case_insensitive_matches(line, "e");
        for &(start, end) in &matches {
            assert!(line.is_char_boundary(start) && line.is_char_boundary(end));
        }
        let found: Vec<&str> = matches.iter().map(|&(s, e)| &line[s..e]).collect();
        assert_eq!(found, ["e", "E"]);
        let kelvin = case_insensitive_matches(line, "k e");
        assert_eq!(&line[kelvin[0].0..kelvin[0].1], "\u{212A} e");
        // A needle matching inside one character's expansion takes the whole character.
        let dotted = case_insensitive_matches("x\u{130}y", "i");
        assert_eq!(dotted, [(1, 3)]);
        assert!(case_insensitive_matches("abc", "z").is_empty());
    }
}
