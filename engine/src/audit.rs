//! The audit file: every event as one JSON line — schema version, sequence number,
//! wall-clock time, plugin and event — appended, rotated by size.
//!
//! Every line is written to the kernel as soon as the event happens (it survives the
//! engine being killed); a violation is also `fsync`ed before its action is carried out,
//! so it survives the host going down. After a crash the last line may be torn: the
//! writer starts its first line on a fresh line, and [`read`] skips a torn line with a
//! warning instead of failing the whole file.
//!
//! The file is written by a thread of its own ([`AuditWriter`]): whoever raises an event
//! hands it over in `seq` order and waits for its line (and a violation's fsync) without
//! holding the event ring's lock, which snapshots and every other event need. Lines that
//! wait together are written together, with one fsync.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::rotating::RotatingFile;

mod reader;
pub use reader::{AuditItem, AuditReader, LONGEST_RECORD};

/// The version of the line format; a reader refuses lines of a newer one.
pub const AUDIT_SCHEMA: u32 = 1;

/// One line of the audit file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub schema: u32,
    /// The engine that wrote it: `seq` starts at 1 in each run, and runs may share a file.
    /// (Absent from lines written before it was recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_pid: Option<u32>,
    #[serde(flatten)]
    pub event: Event,
}

/// Where and how the audit file is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPolicy {
    pub file: PathBuf,
    /// Rotate once the file grows past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` is the newest).
    pub keep: u32,
}

impl AuditPolicy {
    pub fn new(file: PathBuf) -> Self {
        Self {
            file,
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// The open audit file.
#[derive(Debug)]
pub struct AuditLog {
    file: RotatingFile,
}

impl AuditLog {
    /// Opens (or creates) the file for appending. A torn last line, left by an engine that
    /// was killed mid-write, is closed with a newline so the next record starts clean.
    pub fn open(policy: AuditPolicy) -> io::Result<Self> {
        Ok(Self {
            file: RotatingFile::open(policy.file, policy.max_bytes, policy.keep, true)?,
        })
    }

    /// Appends `event`; with `durable`, also waits until it is on disk.
    pub fn append(&mut self, event: &Event, durable: bool) -> io::Result<()> {
        let record = AuditRecord {
            schema: AUDIT_SCHEMA,
            engine_pid: Some(std::process::id()),
            event: event.clone(),
        };
        let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.append_line(&line, durable)
    }
}

impl AuditLog {
    /// Waits until every line appended so far is on disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync()
    }
}

/// Lines handed to the writer and not yet written; past this, whoever raises an event
/// waits for room (the disk is that far behind).
const AUDIT_QUEUE: usize = 4096;

/// One event for the writer, and whom to tell once its line is written.
struct AuditJob {
    event: Event,
    durable: bool,
    written: mpsc::SyncSender<()>,
}

/// The audit file's writer thread (see the module's documentation).
#[derive(Debug)]
pub struct AuditWriter {
    jobs: Mutex<Option<mpsc::SyncSender<AuditJob>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Lines that could not be written, and syncs that failed: said in every snapshot.
    failures: Arc<AtomicU64>,
}

impl AuditWriter {
    pub fn start(log: AuditLog) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel(AUDIT_QUEUE);
        let failures = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&failures);
        let thread = std::thread::Builder::new()
            .name("pb-audit".to_owned())
            .spawn(move || write_jobs(log, &queue, &counted))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            failures,
        })
    }

    /// Lines that could not be written (disk full, say) and syncs that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Hands `event` over — in `seq` order: call it under the event ring's lock — and
    /// returns what to wait on for its line to be written (and, `durable`, on disk).
    /// `None` once the writer is closed.
    pub fn submit(&self, event: Event, durable: bool) -> Option<mpsc::Receiver<()>> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let (written, wait) = mpsc::sync_channel(1);
        jobs.as_ref()?
            .send(AuditJob {
                event,
                durable,
                written,
            })
            .ok()?;
        Some(wait)
    }

    /// Writes what is queued and ends the thread; later events are not written.
    pub fn close(&self) {
        drop(
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Writes each batch of waiting lines, syncs once if any of them must be durable, then
/// tells their senders.
fn write_jobs(mut log: AuditLog, queue: &mpsc::Receiver<AuditJob>, failures: &AtomicU64) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(255));
        for job in &batch {
            if log.append(&job.event, false).is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if batch.iter().any(|job| job.durable) && log.sync().is_err() {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        for job in batch {
            let _ = job.written.send(());
        }
    }
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct AuditContents {
    pub records: Vec<AuditRecord>,
    /// Lines that could not be used, each saying which and why.
    pub warnings: Vec<String>,
}

/// Reads a whole audit file (see [`AuditReader`] to go record by record). A line that is
/// not a record (a torn last line after a crash, damage, a line over [`LONGEST_RECORD`]) is
/// skipped with a warning naming it; a record of a newer schema is skipped likewise.
pub fn read(path: &Path) -> io::Result<AuditContents> {
    let mut contents = AuditContents::default();
    let mut reader = AuditReader::open(path)?;
    while let Some(item) = reader.next_item()? {
        match item {
            AuditItem::Record(record) => contents.records.push(*record),
            AuditItem::Skipped(why) => contents.warnings.push(why),
        }
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, EventLog};

    fn events(count: usize) -> Vec<Event> {
        let mut log = EventLog::default();
        (0..count)
            .map(|n| {
                log.push(
                    Some("hello"),
                    EventKind::engine_note(
                        crate::events::EngineTopic::General,
                        format!("event {n}"),
                    ),
                )
            })
            .collect()
    }

    /// Events handed over from several threads, in `seq` order under one lock as the ring
    /// does, are each in the file when their sender stops waiting, and in that order.
    #[test]
    fn the_writer_keeps_seq_order_and_a_line_is_written_when_its_wait_ends() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let writer =
            AuditWriter::start(AuditLog::open(AuditPolicy::new(file.clone())).unwrap()).unwrap();
        let ring = Mutex::new(EventLog::default());
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (ring, writer, file) = (&ring, &writer, &file);
                scope.spawn(move || {
                    for n in 0..50 {
                        let mut ring = ring.lock().unwrap();
                        let event = ring.push(
                            None,
                            EventKind::engine_note(
                                crate::events::EngineTopic::General,
                                format!("thread {thread} event {n}"),
                            ),
                        );
                        let seq = event.seq;
                        let written = writer.submit(event, n % 10 == 0).unwrap();
                        drop(ring);
                        written.recv().unwrap();
                        let read_back = read(file).unwrap();
                        assert!(
                            read_back
                                .records
                                .iter()
                                .any(|record| record.event.seq == seq)
                        );
                    }
                });
            }
        });
        writer.close();
        assert!(writer.submit(events(1).remove(0), false).is_none());
        let seqs: Vec<u64> = read(&file)
            .unwrap()
            .records
            .iter()
            .map(|record| record.event.seq)
            .collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    }

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let written = events(3);
        let mut log = AuditLog::open(AuditPolicy::new(file.clone())).unwrap();
        for event in &written {
            log.append(event, true).unwrap();
        }
        drop(log);
        // A writer killed mid-line.
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut torn, b"{\"schema\":1,\"seq\":4,\"at_").unwrap();
        let read_back = read(&file).unwrap();
        assert_eq!(
            read_back
                .records
                .iter()
                .map(|record| record.event.clone())
                .collect::<Vec<_>>(),
            written
        );
        assert!(
            read_back
                .records
                .iter()
                .all(|record| record.schema == AUDIT_SCHEMA
                    && record.engine_pid == Some(std::process::id()))
        );
        assert_eq!(read_back.warnings.len(), 1, "{:?}", read_back.warnings);
        assert!(read_back.warnings[0].contains("line 4") && read_back.warnings[0].contains("torn"));
        // The next engine starts on a fresh line; the torn one stays skipped.
        let mut log = AuditLog::open(AuditPolicy::new(file.clone())).unwrap();
        log.append(&events(1)[0], false).unwrap();
        let read_back = read(&file).unwrap();
        assert_eq!(read_back.records.len(), 4);
        assert_eq!(read_back.warnings.len(), 1);
        assert!(read_back.warnings[0].contains("not an audit record"));
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(AuditPolicy {
            file: file.clone(),
            max_bytes: 300,
            keep: 2,
        })
        .unwrap();
        for event in events(40) {
            log.append(&event, false).unwrap();
        }
        let rotated = |n: u32| dir.path().join(format!("audit.jsonl.{n}"));
        assert!(rotated(1).exists() && rotated(2).exists() && !rotated(3).exists());
        let newest = read(&file).unwrap().records;
        let older = read(&rotated(1)).unwrap().records;
        assert!(older.last().unwrap().event.seq < newest.first().map_or(u64::MAX, |r| r.event.seq));
        assert!(std::fs::metadata(&file).unwrap().len() <= 400);
    }
}
