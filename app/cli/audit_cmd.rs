//! `plugboard audit <file>`: reads an audit file line by line, as a person or a script
//! would want it; damaged lines (a torn last line after a crash) are skipped with a warning
//! on stderr. Records are printed as they are read, so a large file needs no more memory
//! than a small one.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plugboard_engine::EventKind;
use plugboard_engine::audit::AuditRecord;

use super::output::{errln, outln};
use plugboard_engine::audit::{AuditItem, AuditReader};

pub fn show(file: &Path, json: bool) -> Result<()> {
    let cannot_read = || format!("cannot read audit file {}", file.display());
    let mut reader = AuditReader::open(file).with_context(cannot_read)?;
    let mut records = 0u64;
    let mut engine = None;
    let mut last_seq = 0;
    while let Some(item) = reader.next_item().with_context(cannot_read)? {
        match item {
            AuditItem::Skipped(warning) => errln!("warning: {warning}"),
            AuditItem::Record(record) => {
                records += 1;
                // Each run numbers its events from 1: where another engine's begin is said
                // (another pid, or the numbers starting again: pids repeat, in containers
                // every run may be pid 1).
                let new_run = record.engine_pid != engine || record.event.seq <= last_seq;
                if !json && record.engine_pid.is_some() && new_run {
                    outln!("-- engine {}", record.engine_pid.unwrap_or_default())?;
                }
                // Within a run the numbers follow each other: a hole is records the engine
                // could not write (a full disk; `audit_write_failures` counted them).
                if !new_run && record.event.seq > last_seq + 1 {
                    let (first, last) = (last_seq + 1, record.event.seq - 1);
                    let missing = if first == last {
                        format!("record {first} is")
                    } else {
                        format!("records {first}–{last} are")
                    };
                    errln!(
                        "warning: {missing} missing from this run{}: not written (a full disk?) or cut out",
                        record
                            .engine_pid
                            .map(|pid| format!(" of engine {pid}"))
                            .unwrap_or_default()
                    );
                }
                engine = record.engine_pid;
                last_seq = record.event.seq;
                print_record(&record, json)?;
            }
        }
    }
    if records == 0 {
        bail!(
            "{} holds no audit records: expected JSON lines as the engine writes them to its audit file (--audit-file, `audit_file`)",
            file.display()
        );
    }
    Ok(())
}

fn print_record(record: &AuditRecord, json: bool) -> Result<()> {
    if json {
        return outln!("{}", serde_json::to_string(record)?);
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
    )
}
