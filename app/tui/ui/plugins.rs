//! The plugin table: sortable columns, a filter, as many columns as the width allows.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};

use super::header::style_for;
use super::{pane_block, previous_offset, scroll_offset};
use crate::tui::app::{App, Pane, ScreenLayout};
use crate::tui::columns::Column;

pub fn draw(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    previous: &ScreenLayout,
    layout: &mut ScreenLayout,
) {
    let theme = &app.theme;
    let plugins = app.visible_plugins();
    let total = app.snapshot().map_or(0, |snapshot| snapshot.plugins.len());
    let focused = app.focus == Pane::Plugins;
    let mut title = vec![Span::raw(format!("Plugins {}/{total}", plugins.len()))];
    if !app.plugin_filter.is_empty() {
        title.push(Span::styled(
            format!(" /{}", app.plugin_filter),
            theme.accent(),
        ));
    }
    let block = pane_block(title, focused, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    layout.panes.push((Pane::Plugins, area));
    if inner.height < 2 || inner.width < 10 {
        return;
    }

    if plugins.is_empty() {
        let text = if total > 0 {
            format!("no plugin matches the filter \"{}\"", app.plugin_filter)
        } else {
            app.empty_hint
                .clone()
                .unwrap_or_else(|| "no plugins found".to_owned())
        };
        frame.render_widget(
            Paragraph::new(Line::styled(text, theme.muted())).wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }

    let columns = Column::fitting(inner.width);
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|column| match column {
            Column::Name => Constraint::Min(column.width()),
            other => Constraint::Length(other.width()),
        })
        .collect();
    let cells = Layout::horizontal(widths.clone()).spacing(1).split(inner);
    layout.header_row = Some(inner.y);
    layout.header_cells = columns
        .iter()
        .zip(cells.iter())
        .map(|(column, cell)| (*column, cell.x, cell.width))
        .collect();

    let header = header_row(&columns, app);

    let rows_area = Rect::new(inner.x, inner.y + 1, inner.width, inner.height - 1);
    let visible_rows = usize::from(rows_area.height);
    let selected = app
        .selected_plugin
        .as_deref()
        .and_then(|name| plugins.iter().position(|plugin| plugin.name == name));
    let offset = scroll_offset(
        selected.unwrap_or(0),
        previous_offset(previous, Pane::Plugins),
        visible_rows,
        plugins.len(),
    );
    layout.rows.push((Pane::Plugins, rows_area, offset));

    let name_width = layout
        .header_cells
        .iter()
        .find(|(column, ..)| *column == Column::Name)
        .map_or(usize::MAX, |(_, _, width)| usize::from(*width));
    // Only the rows on screen are built: a fleet can be hundreds of plugins.
    let rows = plugins
        .iter()
        .skip(offset)
        .take(visible_rows)
        .map(|plugin| {
            Row::new(columns.iter().map(|column| {
                let cell = if *column == Column::Name {
                    crate::tui::columns::name_cell(plugin, name_width)
                } else {
                    column.cell(plugin)
                };
                Cell::from(Line::from(cell.text).alignment(alignment(*column)))
                    .style(style_for(app, cell.role))
            }))
        });
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(if focused {
            theme.selection()
        } else {
            theme
                .selection()
                .remove_modifier(ratatui::style::Modifier::BOLD)
        });
    let mut state = TableState::default()
        .with_selected(selected.filter(|at| *at >= offset).map(|at| at - offset));
    frame.render_stateful_widget(table, inner, &mut state);
}

/// The column titles, the sorted one marked with its direction.
fn header_row(columns: &[Column], app: &App) -> Row<'static> {
    let theme = &app.theme;
    Row::new(columns.iter().map(|column| {
        let mut title = column.title().to_owned();
        if *column == app.sort.column {
            title.push(if app.sort.descending { '▼' } else { '▲' });
        }
        let cell = Cell::from(Line::from(title).alignment(alignment(*column)));
        if *column == app.sort.column {
            cell.style(theme.accent())
        } else {
            cell
        }
    }))
    .style(theme.title())
}

fn alignment(column: Column) -> Alignment {
    if column.right_aligned() {
        Alignment::Right
    } else {
        Alignment::Left
    }
}
