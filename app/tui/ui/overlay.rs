//! What draws over the screen: the `?` help (built from the live keymap), confirmation
//! dialogs and a call's reply.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::centered;
use crate::tui::app::{App, Overlay};
use crate::tui::format;
use crate::tui::keymap::{Action, ActionGroup};

/// Draws the open dialog, if any; returns the help's scroll as drawn (clamped to its
/// last page), for the app to keep.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) -> Option<u16> {
    match &app.overlay {
        Some(Overlay::Help(scroll)) => return Some(draw_help(frame, area, app, *scroll)),
        Some(Overlay::Confirm(confirm)) => {
            let lines = confirm_lines(confirm, area, app);
            draw_box(frame, area, app, &confirm.title, lines, None);
        }
        Some(Overlay::Reply(report)) => {
            let theme = &app.theme;
            let status_style = if report.status == "ok" {
                theme.ok()
            } else {
                theme.error()
            };
            let mut lines = vec![Line::from(vec![
                Span::styled(
                    format!("{}.{} → ", report.plugin, report.hook),
                    theme.text(),
                ),
                Span::styled(report.status.clone(), status_style),
                Span::styled(
                    format!(" in {}", format::micros(report.duration_us)),
                    theme.muted(),
                ),
            ])];
            lines.push(Line::raw(""));
            if report.reply.is_empty() {
                lines.push(Line::styled("(empty reply)", theme.muted()));
            } else {
                lines.extend(
                    report
                        .reply
                        .lines()
                        .map(|line| Line::styled(line.to_owned(), theme.text())),
                );
            }
            lines.push(Line::raw(""));
            lines.push(Line::styled("enter / esc: close", theme.muted()));
            draw_box(frame, area, app, "Reply", lines, None);
        }
        Some(Overlay::Text { title, lines }) => {
            let theme = &app.theme;
            let mut shown: Vec<Line> = lines
                .iter()
                .map(|line| Line::styled(line.clone(), theme.text()))
                .collect();
            shown.push(Line::raw(""));
            shown.push(Line::styled("any key: close", theme.muted()));
            draw_box(frame, area, app, title, shown, None);
        }
        Some(Overlay::Chaos(selected)) => {
            // The chosen entry stays in sight however short the screen: the two lines
            // above the list come before it.
            let lines = chaos_lines(app, *selected);
            draw_box(frame, area, app, "Chaos", lines, Some(2 + *selected));
        }
        Some(Overlay::Prompt(_)) | None => {}
    }
    None
}

/// A confirmation's text and its keys.
fn confirm_lines<'a>(
    confirm: &'a crate::tui::app::Confirm,
    area: Rect,
    app: &App,
) -> Vec<Line<'a>> {
    let theme = &app.theme;
    // Too tall for the screen (a reload's preview on a short terminal): what does
    // not change gives way first, so every change stays in sight.
    let unchanged = |line: &&String| line.ends_with("(unchanged)");
    // Rows as the box will wrap them (its width as `draw_box` picks it).
    let longest = confirm
        .lines
        .iter()
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0);
    let width = (longest + 4).clamp(30, usize::from(area.width.saturating_sub(4)).max(30));
    let inner = width.saturating_sub(2).max(1);
    let rows: usize = confirm
        .lines
        .iter()
        .map(|line| line.chars().count().div_ceil(inner).max(1))
        .sum();
    // The blank line and the keys under them, and the box's borders.
    let too_tall = rows + 4 > usize::from(area.height);
    let hidden = if too_tall {
        confirm.lines.iter().filter(unchanged).count()
    } else {
        0
    };
    let mut lines: Vec<Line> = confirm
        .lines
        .iter()
        .filter(|line| hidden == 0 || !unchanged(line))
        .map(|line| Line::styled(line.clone(), theme.text()))
        .collect();
    if hidden > 0 {
        lines.push(Line::styled(
            format!("({hidden} unchanged not shown)"),
            theme.muted(),
        ));
    }
    lines.push(Line::raw(""));
    lines.push(Line::from(vec![
        Span::styled(" y ", theme.selection()),
        Span::styled(" yes    ", theme.text()),
        Span::styled(" n ", theme.selection()),
        Span::styled(" no / esc", theme.text()),
    ]));
    lines
}

/// The chaos menu, `selected` marked.
fn chaos_lines(app: &App, selected: usize) -> Vec<Line<'static>> {
    let theme = &app.theme;
    let mut lines = vec![Line::styled(
        "Sets off one plugin (started first if needed): a call to it alone.",
        theme.muted(),
    )];
    lines.push(Line::raw(""));
    let name_width = app
        .chaos
        .iter()
        .map(|act| act.plugin.len())
        .max()
        .unwrap_or(8);
    for (at, act) in app.chaos.iter().enumerate() {
        let (name, what) = (&act.plugin, &act.what);
        let style = if at == selected {
            theme.selection()
        } else {
            theme.text()
        };
        let marker = if at == selected { "▶ " } else { "  " };
        lines.push(Line::styled(
            format!("{marker}{name:<name_width$}  {what}"),
            style,
        ));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "↑/↓ choose · enter set off · esc close",
        theme.muted(),
    ));
    lines
}

/// `line` cut to at most `width` cells (counted by characters of its spans).
fn cut_line(line: Line<'_>, width: usize) -> Line<'_> {
    let mut left = width;
    let mut spans = Vec::new();
    for span in line.spans {
        if left == 0 {
            break;
        }
        let count = span.content.chars().count();
        if count <= left {
            left -= count;
            spans.push(span);
        } else {
            let cut: String = span.content.chars().take(left).collect();
            spans.push(Span::styled(cut, span.style));
            left = 0;
        }
    }
    Line::from(spans).style(line.style)
}

/// Draws `lines` in a box over `area`. Taller than the screen, the middle gives way, never
/// the last line (the keys that answer or close the box) nor the line `focus` (a menu's
/// chosen entry): the lines shown slide down to it.
fn draw_box(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    title: &str,
    mut lines: Vec<Line>,
    focus: Option<usize>,
) {
    let theme = &app.theme;
    let longest = lines.iter().map(Line::width).max().unwrap_or(0);
    let width = u16::try_from(longest + 4)
        .unwrap_or(u16::MAX)
        .clamp(30, area.width.saturating_sub(4).max(30));
    // Wrapped lines need more rows than there are lines.
    let inner_width = usize::from(width.saturating_sub(2)).max(1);
    // Rows as the paragraph wraps them (at word boundaries: more than width / columns).
    let rows_of = |line: &Line| {
        Paragraph::new(line.clone())
            .wrap(Wrap { trim: false })
            .line_count(u16::try_from(inner_width).unwrap_or(u16::MAX))
            .max(1)
    };
    // Taller than the screen: the middle gives way, never the last line (the keys that
    // answer or close the box).
    let room = usize::from(area.height.saturating_sub(2)).max(1);
    if lines.iter().map(rows_of).sum::<usize>() > room && lines.len() > 2 {
        let last = lines.pop().expect("more than two lines");
        // The first line shown: the top, or as far down as `focus` needs (one row then
        // goes to the `…` above).
        let fits_from = |start: usize| {
            let mut used = rows_of(&last) + 1 + usize::from(start > 0);
            let mut end = start;
            for line in &lines[start..] {
                used += rows_of(line);
                if used > room {
                    break;
                }
                end += 1;
            }
            end
        };
        let mut start = 0;
        while let Some(focus) = focus {
            if focus < fits_from(start) || start + 1 >= lines.len() {
                break;
            }
            start += 1;
        }
        let mut kept = Vec::new();
        if start > 0 {
            kept.push(Line::styled("…", theme.muted()));
        }
        let mut used = rows_of(&last) + 1 + usize::from(start > 0);
        let mut cut_below = false;
        for line in lines.into_iter().skip(start) {
            let rows = rows_of(&line);
            if used + rows > room {
                cut_below = true;
                // The line that does not fit shows as much as the rows left hold (a long
                // text alone in its box shows its beginning, not nothing).
                // (A row's worth of slack: the cut may wrap at a word.)
                let left = room.saturating_sub(used + 1);
                if left > 0 {
                    kept.push(cut_line(line, left * inner_width));
                }
                break;
            }
            used += rows;
            kept.push(line);
        }
        if cut_below {
            kept.push(Line::styled("…", theme.muted()));
        }
        kept.push(last);
        lines = kept;
    }
    let rows: usize = lines.iter().map(rows_of).sum();
    let height = u16::try_from(rows + 2).unwrap_or(u16::MAX);
    let popup = centered(area, width, height);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .border_style(theme.border(true))
        .title(Line::styled(format!(" {title} "), theme.title()))
        .style(theme.base());
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        popup,
    );
}

/// The help's notes beside the navigation keys: dialogs, filters, mouse, key file.
fn help_notes(theme: &crate::tui::theme::Theme) -> Vec<Line<'static>> {
    vec![
        Line::raw(""),
        Line::styled("Dialogs", theme.title()),
        Line::styled(" y  yes    n / esc  no", theme.text()),
        Line::raw(""),
        Line::styled("Filters", theme.title()),
        Line::styled(" words match name, state, kind or text;", theme.text()),
        Line::styled(" events: kind:crash kind:viol plugin:hello;", theme.text()),
        Line::styled(" esc clears it (main screen, not paused)", theme.text()),
        Line::raw(""),
        Line::styled("CALLS/S: the rate over the last 5-10 s.", theme.muted()),
        Line::raw(""),
        Line::styled("Mouse: click selects rows and panes,", theme.muted()),
        Line::styled("a column title sorts, wheel scrolls.", theme.muted()),
        Line::raw(""),
        Line::styled(
            "Keys: $XDG_CONFIG_HOME/plugboard/keymap.toml",
            theme.muted(),
        ),
    ]
}

fn draw_help(frame: &mut Frame, area: Rect, app: &App, scroll: u16) -> u16 {
    let theme = &app.theme;
    let key_width = Action::ALL
        .iter()
        .map(|action| app.keymap.labels(*action).chars().count())
        .max()
        .unwrap_or(4)
        .min(16);
    let section = |group: ActionGroup| -> Vec<Line> {
        let mut lines = vec![Line::styled(group.title(), theme.title())];
        for action in Action::ALL.iter().filter(|action| action.group() == group) {
            lines.push(Line::from(vec![
                Span::styled(
                    format!(" {:<key_width$} ", app.keymap.labels(*action)),
                    theme.accent(),
                ),
                Span::styled(action.description(), theme.text()),
            ]));
        }
        lines
    };
    let mut left = section(ActionGroup::Plugin);
    left.push(Line::styled(
        " (on the table's plugin, or the one in the details)",
        theme.muted(),
    ));
    left.push(Line::raw(""));
    left.extend(section(ActionGroup::View));
    let mut right = section(ActionGroup::Navigation);
    right.extend(help_notes(theme));

    let popup = centered(
        area,
        area.width.saturating_sub(2).min(120),
        area.height.saturating_sub(1),
    );
    frame.render_widget(Clear, popup);
    let two_columns = popup.width >= 92;
    let rows = if two_columns {
        left.len().max(right.len())
    } else {
        left.len() + right.len() + 1
    };
    let rows = u16::try_from(rows).unwrap_or(u16::MAX);
    let visible = popup.height.saturating_sub(2);
    let scroll = scroll.min(rows.saturating_sub(visible));
    let title = if rows > visible {
        format!(
            " Help {}–{} of {rows} — {}/{} scroll, any other key closes ",
            scroll + 1,
            (scroll + visible).min(rows),
            app.keymap.label(Action::Down),
            app.keymap.label(Action::Up)
        )
    } else {
        " Help — any key closes ".to_owned()
    };
    let block = Block::bordered()
        .border_style(theme.border(true))
        .title(Line::styled(title, theme.title()))
        .style(theme.base());
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    if two_columns {
        let [left_area, right_area] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(inner);
        frame.render_widget(Paragraph::new(left).scroll((scroll, 0)), left_area);
        frame.render_widget(Paragraph::new(right).scroll((scroll, 0)), right_area);
    } else {
        left.push(Line::raw(""));
        left.extend(right);
        frame.render_widget(Paragraph::new(left).scroll((scroll, 0)), inner);
    }
    scroll
}
