//! Reads an audit file record by record, holding at most one line of up to
//! [`LONGEST_RECORD`] bytes: a longer line (a damaged file, `/dev/zero` given by mistake) is
//! skipped without being buffered, and reported as soon as it passes the limit.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{AUDIT_SCHEMA, AuditRecord};

/// The longest line read as a record; the engine's records are a few hundred bytes.
pub const LONGEST_RECORD: usize = 1024 * 1024;

/// What one step of reading gives.
#[derive(Debug)]
pub enum AuditItem {
    Record(Box<AuditRecord>),
    /// A line that is not a record, and why; it was skipped.
    Skipped(String),
}

/// One line as read.
enum Line {
    /// Ended by a newline; in `line`.
    Complete,
    /// The file ended before its newline; in `line`.
    Torn,
    /// Passed [`LONGEST_RECORD`]; the rest of it is skipped on the next read.
    TooLong,
    End,
}

/// The records of an audit file, in order.
#[derive(Debug)]
pub struct AuditReader<R> {
    reader: R,
    /// Named in the warnings.
    file: PathBuf,
    line: Vec<u8>,
    number: u64,
    /// The rest of an over-long line is still to be skipped.
    skipping: bool,
}

impl AuditReader<BufReader<File>> {
    pub fn open(file: &Path) -> io::Result<Self> {
        Ok(Self::new(BufReader::new(File::open(file)?), file))
    }
}

impl<R: BufRead> AuditReader<R> {
    pub fn new(reader: R, file: &Path) -> Self {
        Self {
            reader,
            file: file.to_owned(),
            line: Vec::new(),
            number: 0,
            skipping: false,
        }
    }

    /// The next record or skipped line; `None` at the end of the file.
    pub fn next_item(&mut self) -> io::Result<Option<AuditItem>> {
        loop {
            let line = self.read_line()?;
            let (file, number) = (self.file.display(), self.number);
            match line {
                Line::End => return Ok(None),
                Line::TooLong => {
                    return Ok(Some(AuditItem::Skipped(format!(
                        "{file}: line {number}: longer than {} MiB, not an audit record; skipped",
                        LONGEST_RECORD / (1024 * 1024)
                    ))));
                }
                Line::Complete | Line::Torn if self.line.trim_ascii().is_empty() => {}
                complete_or_torn => {
                    let text = String::from_utf8_lossy(&self.line);
                    let skipped = match serde_json::from_str::<AuditRecord>(text.trim_end()) {
                        Ok(record) if record.schema <= AUDIT_SCHEMA => {
                            return Ok(Some(AuditItem::Record(Box::new(record))));
                        }
                        Ok(record) => format!(
                            "{file}: line {number}: schema {} is newer than this reader's {AUDIT_SCHEMA}; skipped",
                            record.schema
                        ),
                        Err(_) if matches!(complete_or_torn, Line::Torn) => format!(
                            "{file}: line {number}: a torn last line ({} bytes, the writer was interrupted); skipped",
                            self.line.len()
                        ),
                        Err(err) => {
                            format!("{file}: line {number}: not an audit record ({err}); skipped")
                        }
                    };
                    return Ok(Some(AuditItem::Skipped(skipped)));
                }
            }
        }
    }

    /// Reads the next line into `self.line`, up to [`LONGEST_RECORD`] bytes.
    fn read_line(&mut self) -> io::Result<Line> {
        self.line.clear();
        let mut started = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if available.is_empty() {
                self.skipping = false;
                return Ok(if started { Line::Torn } else { Line::End });
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let used = newline.map_or(available.len(), |at| at + 1);
            if self.skipping {
                self.reader.consume(used);
                self.skipping = newline.is_none();
                continue;
            }
            if !started {
                started = true;
                self.number += 1;
            }
            if self.line.len() + used > LONGEST_RECORD {
                self.reader.consume(used);
                self.skipping = newline.is_none();
                self.line.clear();
                return Ok(Line::TooLong);
            }
            self.line.extend_from_slice(&available[..used]);
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Line::Complete);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    const RECORD: &str =
        r#"{"schema":1,"seq":7,"at_ms":1,"plugin":"hello","kind":"engine","message":"hi"}"#;

    fn items(bytes: impl io::Read) -> (Vec<u64>, Vec<String>) {
        let mut reader = AuditReader::new(BufReader::new(bytes), Path::new("audit.jsonl"));
        let (mut seqs, mut skipped) = (Vec::new(), Vec::new());
        while let Some(item) = reader.next_item().unwrap() {
            match item {
                AuditItem::Record(record) => seqs.push(record.event.seq),
                AuditItem::Skipped(why) => skipped.push(why),
            }
        }
        (seqs, skipped)
    }

    #[test]
    fn an_over_long_line_is_skipped_and_the_next_record_read() {
        let long = io::repeat(b'x').take(3 * LONGEST_RECORD as u64);
        let rest = format!("\n{RECORD}\n");
        let (seqs, skipped) = items(long.chain(rest.as_bytes()));
        assert_eq!(seqs, [7]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].contains("line 1: longer than 1 MiB"),
            "{skipped:?}"
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
        let padded = |length: usize| {
            let mut line = RECORD.to_owned();
            line.push_str(&" ".repeat(length - RECORD.len() - 1));
            line.push('\n');
            line
        };
        let (seqs, _) = items(padded(LONGEST_RECORD).as_bytes());
        assert_eq!(seqs, [7]);
        let (seqs, skipped) = items(padded(LONGEST_RECORD + 1).as_bytes());
        assert!(seqs.is_empty() && skipped.len() == 1, "{skipped:?}");
    }

    #[test]
    fn an_endless_line_is_reported_before_it_ends_without_being_buffered() {
        let mut reader = AuditReader::new(
            BufReader::new(io::repeat(0).take(64 * LONGEST_RECORD as u64)),
            Path::new("/dev/zero"),
        );
        let first = reader.next_item().unwrap();
        assert!(
            matches!(&first, Some(AuditItem::Skipped(why)) if why.contains("line 1: longer than")),
            "{first:?}"
        );
        assert!(reader.line.capacity() <= 2 * LONGEST_RECORD);
        assert!(reader.next_item().unwrap().is_none());
        assert!(reader.line.capacity() <= 2 * LONGEST_RECORD);
    }

    #[test]
    fn torn_blank_foreign_and_newer_lines_are_skipped_with_the_reason() {
        let newer = RECORD.replace("\"schema\":1", "\"schema\":99");
        let text = format!("{RECORD}\n\n   \nnot json\n{newer}\n{{\"schema\":1,\"se");
        let (seqs, skipped) = items(text.as_bytes());
        assert_eq!(seqs, [7]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(
            skipped[0].contains("line 4: not an audit record"),
            "{skipped:?}"
        );
        assert!(
            skipped[1].contains("line 5: schema 99 is newer"),
            "{skipped:?}"
        );
        assert!(
            skipped[2].contains("line 6: a torn last line"),
            "{skipped:?}"
        );
    }
}
