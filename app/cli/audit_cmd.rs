//! `plugboard audit <file>`: reads an audit file line by line, as a person or a script
//! would want it; damaged lines (a torn last line after a crash) are skipped with a warning
//! on stderr.

use std::path::Path;

use anyhow::{Context, Result};
use plugboard_engine::EventKind;

use super::output::outln;

pub fn show(file: &Path, json: bool) -> Result<()> {
    let contents = plugboard_engine::audit::read(file)
        .with_context(|| format!("cannot read audit file {}", file.display()))?;
    for warning in &contents.warnings {
        eprintln!("warning: {warning}");
    }
    for record in &contents.records {
        if json {
            outln!("{}", serde_json::to_string(record)?)?;
            continue;
        }
        let event = &record.event;
        let what = match &event.kind {
            EventKind::Violation { violation } => format!(
                "violation {} [{}] by {}{}: {} -> {}",
                violation.kind,
                serde_json::to_value(violation.severity)?
                    .as_str()
                    .unwrap_or_default(),
                violation.mechanism,
                violation
                    .hook
                    .as_deref()
                    .map(|hook| format!(" in `{hook}`"))
                    .unwrap_or_default(),
                violation.detail,
                violation.action.as_str()
            ),
            other => serde_json::to_string(other)?,
        };
        outln!(
            "{:>6} {} {:<16} {what}",
            event.seq,
            event.at_ms,
            event.plugin.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}
