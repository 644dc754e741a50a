//! The event log: lifecycle changes and violations, newest first, filterable by kind,
//! plugin and text.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph};

use super::header::style_for;
use super::{pane_block, previous_offset, scroll_offset};
use crate::tui::app::{App, Pane, ScreenLayout};
use crate::tui::describe::describe;
use crate::tui::format;

/// `plugin`: only that plugin's events (the detail view).
pub fn draw(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    plugin: Option<&str>,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    let theme = &app.theme;
    let pane = if plugin.is_some() {
        Pane::PluginEvents
    } else {
        Pane::Events
    };
    let (filter, cursor) = if plugin.is_some() {
        (&app.plugin_event_filter, app.plugin_event_cursor)
    } else {
        (&app.event_filter, app.event_cursor)
    };
    let events = app.visible_events(plugin);
    let focused = app.focus == pane;
    let mut title = vec![Span::raw(format!("Events {}", events.len()))];
    // A plugin's own log says how many of its events were violations.
    if plugin.is_some() {
        let violations = events
            .iter()
            .filter(|event| describe(event).violation)
            .count();
        if violations > 0 {
            title.push(Span::styled(
                format!(
                    " · {}",
                    crate::tui::format::count(violations as u64, "violation")
                ),
                theme.error(),
            ));
        }
    }
    if !filter.is_empty() {
        title.push(Span::styled(format!(" /{filter}"), theme.accent()));
    }
    // Scrolled back, the newest events are off the top: say how many.
    if focused && cursor > 0 {
        title.push(Span::styled(format!(" · {cursor} newer ↑"), theme.accent()));
    }
    let block = pane_block(title, focused, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    layout.panes.push((pane, area));
    if inner.height == 0 {
        return;
    }
    if events.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled("no events", theme.muted())),
            inner,
        );
        return;
    }
    let wide = inner.width >= 70;
    let rows = usize::from(inner.height);
    let offset = scroll_offset(cursor, previous_offset(previous, pane), rows, events.len());
    layout.rows.push((pane, inner, offset));
    // Only the rows on screen are put into words: the log keeps thousands of events.
    let items: Vec<ListItem> = events
        .iter()
        .skip(offset)
        .take(rows)
        .map(|event| {
            let described = describe(event);
            let mut spans = vec![
                Span::styled(format::clock(event.at_ms), theme.muted()),
                Span::raw(" "),
            ];
            if plugin.is_none() {
                spans.push(Span::styled(
                    format!(
                        "{:<12} ",
                        format::truncate_name(event.plugin.as_deref().unwrap_or("engine"), 12)
                    ),
                    theme.accent(),
                ));
            }
            if wide {
                spans.push(Span::styled(
                    format!("{:<18} ", described.kind),
                    theme.muted(),
                ));
            }
            // Cut visibly: enter shows it whole.
            let used: usize = spans.iter().map(Span::width).sum();
            let room = usize::from(inner.width).saturating_sub(used);
            spans.push(Span::styled(
                format::truncate(&described.text, room),
                style_for(app, described.role),
            ));
            ListItem::new(Line::from(spans))
        })
        .collect();
    let list = List::new(items).highlight_style(if focused {
        theme.selection()
    } else {
        theme.text()
    });
    let mut state =
        ListState::default().with_selected(focused.then(|| cursor.saturating_sub(offset)));
    frame.render_stateful_widget(list, inner, &mut state);
}
