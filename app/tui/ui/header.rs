//! The header: version, uptime, traffic, host and engine figures, plugins per state.

use std::collections::BTreeMap;

use plugboard_engine::PluginState;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::tui::app::App;
use crate::tui::columns::state_look;
use crate::tui::format::{self, NONE};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.theme;
    let snapshot = app.snapshot();
    let first = snapshot.map_or_else(
        || vec![Span::styled(" plugboard", theme.title())],
        |snapshot| first_line(app, snapshot, area.width),
    );
    let mut second = counts(app);
    if app.paused.is_some() {
        // The shown sample's time, as the events are stamped, and how far it is behind
        // the newest sample — in time, not samples: events make samples come faster than
        // the sampling interval.
        let at = snapshot.map_or_else(String::new, |snapshot| {
            format!(" at {}", crate::tui::format::clock(snapshot.taken_at_ms))
        });
        let behind = snapshot
            .zip(app.history.back())
            .map_or(0, |(shown, newest)| {
                newest.taken_at_ms.saturating_sub(shown.taken_at_ms) / 1000
            });
        let paused = Span::styled(
            format!(" ⏸ PAUSED{at}, {behind}s behind "),
            theme.warn().add_modifier(Modifier::REVERSED),
        );
        second.insert(0, paused);
        second.insert(1, Span::raw(" "));
    }
    if area.height >= 2 {
        frame.render_widget(
            Paragraph::new(vec![
                Line::from(super::fit_spans(first, area.width)),
                Line::from(super::fit_spans(second, area.width)),
            ]),
            area,
        );
    } else {
        // One line: what matters most at a glance: traffic, pause and states — the
        // traffic first, short as it is, so the per-state counts are what a narrow line
        // cuts.
        let mut line = vec![Span::styled("plugboard ", theme.title())];
        if let Some(snapshot) = snapshot {
            line.push(Span::styled(
                match snapshot.traffic {
                    Some(rate) => format!("traffic {}/s │", format::rate(rate)),
                    None => "traffic off │".to_owned(),
                },
                theme.muted(),
            ));
        }
        line.extend(second);
        frame.render_widget(
            Paragraph::new(Line::from(super::fit_spans(line, area.width))),
            area,
        );
    }
}

/// Version, uptime, traffic, host and engine figures: the most that fits, dropping the
/// version first, then the words, then the engine's figures.
fn first_line(app: &App, snapshot: &plugboard_engine::Snapshot, width: u16) -> Vec<Span<'static>> {
    let theme = &app.theme;
    let host = &snapshot.host;
    // All zeros: the engine has not sampled the host yet.
    let sampled = host.memory_total_bytes > 0;
    let percent = |value: f64| {
        if sampled {
            format!("{value:.0}%")
        } else {
            NONE.to_owned()
        }
    };
    let host_memory = if sampled {
        format::bytes_of(host.memory_used_bytes, host.memory_total_bytes)
    } else {
        NONE.to_owned()
    };
    let engine_rss = if sampled {
        format::bytes(host.engine_rss_bytes)
    } else {
        NONE.to_owned()
    };
    let variants = [
        (true, true, true),
        (false, true, true),
        (false, false, true),
        (false, false, false),
    ];
    let mut chosen = Vec::new();
    for (version, words, engine) in variants {
        let mut spans = vec![Span::styled(" plugboard", theme.title())];
        if version {
            spans.push(Span::styled(
                format!(" {}", snapshot.version),
                theme.muted(),
            ));
        }
        spans.push(Span::styled(" up ", theme.muted()));
        spans.push(Span::styled(
            format::uptime(snapshot.uptime_ms),
            theme.text(),
        ));
        spans.push(Span::styled(" │ traffic ", theme.muted()));
        spans.push(match snapshot.traffic {
            Some(rate) => Span::styled(format!("● {}/s", format::rate(rate)), theme.ok()),
            None => Span::styled("○ off", theme.idle()),
        });
        spans.push(Span::styled(" │ host ", theme.muted()));
        spans.push(Span::styled(
            if words {
                format!("cpu {} mem {host_memory}", percent(host.cpu_percent))
            } else {
                format!("{} {host_memory}", percent(host.cpu_percent))
            },
            theme.text(),
        ));
        if engine {
            spans.push(Span::styled(" │ engine ", theme.muted()));
            spans.push(Span::styled(
                if words {
                    format!("cpu {} rss {engine_rss}", percent(host.engine_cpu_percent))
                } else {
                    format!("{} {engine_rss}", percent(host.engine_cpu_percent))
                },
                theme.text(),
            ));
        }
        let fits = Line::from(spans.clone()).width() <= usize::from(width);
        chosen = spans;
        if fits {
            break;
        }
    }
    chosen
}

/// `● 3 running ○ 1 stopped ✗ 1 failed`, worst first.
fn counts(app: &App) -> Vec<Span<'static>> {
    let theme = &app.theme;
    let Some(snapshot) = app.snapshot() else {
        return vec![Span::styled(" waiting for the engine…", theme.muted())];
    };
    let mut by_state: BTreeMap<PluginState, usize> = BTreeMap::new();
    for plugin in &snapshot.plugins {
        *by_state.entry(plugin.state).or_default() += 1;
    }
    let mut spans = vec![Span::styled(
        format!(" {} plugins ", snapshot.plugins.len()),
        theme.text(),
    )];
    let mut states: Vec<(PluginState, usize)> = by_state.into_iter().collect();
    states.sort_by_key(|(state, _)| match state_look(*state).role {
        crate::tui::theme::Role::Error => 0,
        crate::tui::theme::Role::Warn => 1,
        crate::tui::theme::Role::Ok => 2,
        _ => 3,
    });
    for (state, count) in states {
        let look = state_look(state);
        spans.push(Span::styled(
            format!(
                "{} {count} {} ",
                look.symbol,
                crate::tui::format::state_words(look.label)
            ),
            style_for(app, look.role),
        ));
    }
    spans
}

pub fn style_for(app: &App, role: crate::tui::theme::Role) -> ratatui::style::Style {
    use crate::tui::theme::Role;
    let theme = &app.theme;
    match role {
        Role::Ok => theme.ok(),
        Role::Warn => theme.warn(),
        Role::Error => theme.error(),
        Role::Idle => theme.idle(),
        Role::Muted => theme.muted(),
        Role::Info => theme.info(),
        Role::Accent => theme.accent(),
        Role::Title => theme.title(),
        _ => theme.text(),
    }
}
