//! Drawing: one function per component, each reading the [`App`] and writing a frame.
//! Where things landed is recorded in `app.layout`, so mouse clicks find their target.

mod detail;
mod events;
mod footer;
mod header;
mod overlay;
mod plugins;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::app::{App, Overlay, Pane, Screen, ScreenLayout};
use super::theme::Theme;

/// Below this the dashboard says the terminal is too small.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 12;

pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    frame.render_widget(Block::new().style(app.theme.base()), area);
    let previous = std::mem::take(&mut app.layout);
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(frame, area, &app.theme);
        return;
    }
    let header_height = if area.height >= 20 { 2 } else { 1 };
    let [header_area, body, status_area, footer_area] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    header::draw(frame, header_area, app);
    let mut layout = ScreenLayout::default();
    match app.screen {
        Screen::Main => draw_main(frame, body, app, &previous, &mut layout),
        Screen::Detail => detail::draw(frame, body, app, &previous, &mut layout),
    }
    footer::draw_status(frame, status_area, app);
    footer::draw_keys(frame, footer_area, app);
    // Kept as drawn, so that scrolling up from the end moves at once.
    if let Some(drawn) = layout.info_scroll {
        app.info_scroll = drawn;
    }
    app.layout = layout;
    // Kept as drawn, so that scrolling up from End moves at once.
    if let (Some(drawn), Some(Overlay::Help(scroll))) =
        (overlay::draw(frame, area, app), app.overlay.as_mut())
    {
        *scroll = drawn;
    }
}

fn draw_main(
    frame: &mut Frame,
    body: Rect,
    app: &App,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    // Small terminals show one pane at a time; tab switches.
    if body.height < 14 {
        match app.focus {
            Pane::Events => events::draw(frame, body, app, None, previous, layout),
            _ => plugins::draw(frame, body, app, previous, layout),
        }
        return;
    }
    let table_rows =
        u16::try_from(app.snapshot().map_or(0, |s| s.plugins.len())).unwrap_or(u16::MAX);
    // The table takes what its rows need (up to 60 %), the event log the rest.
    let table_height = (table_rows + 3).clamp(6, body.height * 3 / 5);
    let [table_area, events_area] =
        Layout::vertical([Constraint::Length(table_height), Constraint::Min(4)]).areas(body);
    plugins::draw(frame, table_area, app, previous, layout);
    events::draw(frame, events_area, app, None, previous, layout);
}

fn too_small(frame: &mut Frame, area: Rect, theme: &Theme) {
    let text = vec![
        Line::styled("terminal too small", theme.error()),
        Line::styled(
            format!(
                "{}×{}, need {MIN_WIDTH}×{MIN_HEIGHT}",
                area.width, area.height
            ),
            theme.muted(),
        ),
    ];
    let top = area.height.saturating_sub(2) / 2;
    let centred = Rect::new(area.x, area.y + top, area.width, area.height.min(2));
    frame.render_widget(
        Paragraph::new(text)
            .alignment(ratatui::layout::Alignment::Center)
            .wrap(Wrap { trim: true }),
        centred,
    );
}

/// A bordered pane whose border and title show whether it has the focus.
fn pane_block<'a>(title: Vec<Span<'a>>, focused: bool, theme: &Theme) -> Block<'a> {
    let mut spans = vec![Span::raw(" ")];
    spans.extend(title);
    spans.push(Span::raw(" "));
    let title_style = if focused {
        theme.title().add_modifier(Modifier::REVERSED)
    } else {
        theme.title()
    };
    Block::bordered()
        .border_style(theme.border(focused))
        .title(Line::from(spans).style(title_style))
}

/// Keeps `selected` inside a window of `rows` rows that started at `previous_offset`.
fn scroll_offset(selected: usize, previous_offset: usize, rows: usize, len: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    let mut offset = previous_offset.min(len.saturating_sub(rows));
    if selected < offset {
        offset = selected;
    } else if selected >= offset + rows {
        offset = selected + 1 - rows;
    }
    offset
}

fn previous_offset(previous: &ScreenLayout, pane: Pane) -> usize {
    previous
        .rows
        .iter()
        .find(|(p, _, _)| *p == pane)
        .map_or(0, |(_, _, first)| *first)
}

/// A rectangle of at most `width`×`height` in the middle of `area`.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}

#[cfg(test)]
mod tests;

/// `spans` cut to `width` columns, the cut marked with `…` (in the style of the span it
/// falls in): a line that does not fit shows that it goes on.
fn fit_spans(spans: Vec<Span<'_>>, width: u16) -> Vec<Span<'_>> {
    let width = usize::from(width);
    if Line::from(spans.clone()).width() <= width {
        return spans;
    }
    let mut fitted = Vec::new();
    let mut used = 0;
    for span in spans {
        let span_width = span.width();
        if used + span_width < width {
            used += span_width;
            fitted.push(span);
            continue;
        }
        // The line goes on past this span: its last column shows that.
        let room = width.saturating_sub(used);
        let mut text: String = span.content.chars().take(room.saturating_sub(1)).collect();
        text.push('…');
        fitted.push(Span::styled(text, span.style));
        break;
    }
    fitted
}
