//! The status line (last result, commands in flight, the prompt being typed) and the key
//! hints, generated from the live keymap.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::header::style_for;
use crate::tui::app::{App, Overlay, Pane, PromptPurpose, Screen};
use crate::tui::keymap::Action;

pub fn draw_status(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.theme;
    let line = if let Some(Overlay::Prompt(prompt)) = &app.overlay {
        let label = match &prompt.purpose {
            PromptPurpose::Filter { pane, .. } => {
                format!("filter {}: ", pane.title().to_lowercase())
            }
            PromptPurpose::Call { plugin } => format!("call {plugin} (hook payload): "),
        };
        Line::from(vec![
            Span::styled(label, theme.accent().add_modifier(Modifier::BOLD)),
            Span::styled(prompt.input.clone(), theme.text()),
            Span::styled("█", theme.accent()),
            Span::styled("  enter ok · esc cancel", theme.muted()),
        ])
    } else {
        let mut spans = Vec::new();
        if !app.pending.is_empty() {
            let labels: Vec<&str> = app.pending.values().map(String::as_str).collect();
            spans.push(Span::styled(
                format!("⟳ {}… ", labels.join(", ")),
                theme.warn(),
            ));
        }
        if let Some(status) = &app.status {
            // Cut visibly, not silently, where the line ends.
            let used: usize = spans.iter().map(Span::width).sum();
            let room = usize::from(area.width).saturating_sub(used);
            spans.push(Span::styled(
                crate::tui::format::truncate(&status.text, room),
                style_for(app, status.role),
            ));
        } else if app.pending.is_empty() {
            spans.push(Span::styled(
                format!("{} for help", app.keymap.label(Action::Help)),
                theme.muted(),
            ));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The actions worth a hint on this screen, most useful first (help and quit lead, so
/// they survive the narrowest terminal).
pub fn footer_actions(app: &App) -> Vec<Action> {
    let mut actions = vec![Action::Help, Action::Quit];
    match (app.screen, app.focus) {
        (Screen::Main, Pane::Events) => actions.extend([
            Action::Filter,
            Action::Open,
            Action::NextPane,
            Action::Pause,
            Action::Traffic,
        ]),
        (Screen::Main, _) => actions.extend([
            Action::Start,
            Action::Stop,
            Action::Reload,
            Action::Unload,
            Action::Load,
            Action::Open,
            Action::Filter,
            Action::SortNext,
            Action::Traffic,
            Action::Pause,
            Action::NextPane,
        ]),
        (Screen::Detail, Pane::Hooks) => actions.extend([
            Action::Back,
            Action::ToggleHook,
            Action::Call,
            Action::SortNext,
            Action::Start,
            Action::Stop,
            Action::Reload,
            Action::NextPane,
        ]),
        // The info pane has nothing to filter.
        (Screen::Detail, Pane::Info) => actions.extend([
            Action::Back,
            Action::Call,
            Action::Start,
            Action::Stop,
            Action::Reload,
            Action::NextPane,
        ]),
        (Screen::Detail, _) => actions.extend([
            Action::Back,
            Action::Filter,
            Action::Call,
            Action::Start,
            Action::Stop,
            Action::Reload,
            Action::NextPane,
        ]),
    }
    let quarantined = app
        .selected()
        .is_some_and(|plugin| plugin.state == plugboard_engine::PluginState::Quarantined);
    if quarantined {
        actions.insert(2, Action::ClearQuarantine);
    }
    // The demo's misbehaving plugins are its point: their menu comes early.
    if !app.chaos.is_empty() && app.screen == Screen::Main {
        let at = actions
            .iter()
            .position(|action| *action == Action::Stop)
            .map_or(actions.len(), |at| at + 1);
        actions.insert(at, Action::Chaos);
    }
    if app.paused.is_some() {
        actions.insert(2, Action::HistoryBack);
        actions.insert(3, Action::HistoryForward);
    }
    actions
}

pub fn draw_keys(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.theme;
    let mut spans = Vec::new();
    let mut used = 0usize;
    for action in footer_actions(app) {
        let key = app.keymap.label(action);
        if key.is_empty() {
            continue;
        }
        let width = key.chars().count() + action.short().len() + 3;
        if used + width > usize::from(area.width) {
            break;
        }
        used += width;
        spans.push(Span::styled(
            key,
            theme.accent().add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::styled(
            format!(" {}  ", action.short()),
            theme.muted(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
