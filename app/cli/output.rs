//! Writing to stdout without panicking when the reader has gone (`plugboard audit F | head`):
//! `println!` panics on a closed pipe; these return the failure, and a closed pipe becomes
//! [`StdoutClosed`], which `main` treats as a quiet end.

use std::fmt;
use std::io::{self, Write as _};

/// Standard output is a pipe whose reader has gone.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub struct StdoutClosed;

/// Whether `err` comes from writing to a stdout whose reader has gone.
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(<dyn std::error::Error>::is::<StdoutClosed>)
}

fn failed(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(err).context("cannot write to standard output")
    }
}

/// Writes `text` to stdout as it is and flushes it.
pub fn write_text(text: impl fmt::Display) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    write!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(failed)
}

/// Writes `line` and a newline to stdout.
pub fn write_line(line: impl fmt::Display) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").map_err(failed)
}

/// `println!` that returns an error instead of panicking: `outln!("x {y}")?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes `line` and a newline to stderr; a stderr nobody reads (`2>&1 | head`) loses the
/// line rather than panicking, as `eprintln!` would, with plugins still to stop.
pub fn write_error_line(line: impl fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// `eprintln!` that never panics: `errln!("plugboard: note: {x}")`.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_error_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

/// The whole chain of `err` on one line (scripts read it, people read it), each cause once.
pub fn one_line_reason(err: &anyhow::Error) -> String {
    let mut reason = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Many errors already end their message with their source's (`cannot read F:
        // {source}`) and still report it as their source: it would be said twice.
        if reason.ends_with(&text) {
            continue;
        }
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&text);
    }
    // Parser messages quoted inside (TOML snippets) may span lines; fold them.
    let lines: Vec<&str> = reason
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read key.pub: {source}")]
    struct RepeatsItsSource {
        source: io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let err =
            anyhow::Error::new(RepeatsItsSource { source: missing }).context("cannot pin the key");
        assert_eq!(
            one_line_reason(&err),
            "cannot pin the key: cannot read key.pub: entity not found"
        );
    }

    #[test]
    fn each_distinct_cause_is_kept_and_lines_are_folded() {
        let err = anyhow::anyhow!("line 3:\n  key = 1\n  ^ bad").context("host.toml is invalid");
        assert_eq!(
            one_line_reason(&err),
            "host.toml is invalid: line 3: key = 1 ^ bad"
        );
    }

    #[test]
    fn a_closed_pipe_is_told_from_other_write_failures() {
        assert!(is_stdout_closed(&failed(io::ErrorKind::BrokenPipe.into())));
        assert!(!is_stdout_closed(&failed(
            io::ErrorKind::StorageFull.into()
        )));
    }
}
