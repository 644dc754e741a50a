//! A file appended line by line and rotated by size (`name` → `name.1` → … →
//! `name.<keep>`, the oldest dropped), so nothing the engine writes for a long time — the
//! audit trail, the captured plugin output — can fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The open file and its rotation rule.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    /// Rotate once the file grows past this many bytes.
    max_bytes: u64,
    /// Rotated files kept (`name.1` is the newest); 0 keeps none.
    keep: u32,
    /// Whether a rotation first waits until the file is on disk (the audit trail); the
    /// log of plugin output does not, so whoever writes the line that rotates it (a
    /// thread reading a worker's replies) never waits for the disk.
    sync_on_rotation: bool,
    file: File,
    size: u64,
    /// A write failed part-way (disk full, a file size limit): the file may end in part
    /// of a line, so the next line starts on a line of its own.
    torn: bool,
    /// When the path was last compared with the open file.
    path_checked: Instant,
}

/// How often an append looks whether the path still names the open file: moved or
/// removed from outside (a log rotator, a cleanup), the file is made again at the path —
/// lines written to a file nobody can find are lost in all but name.
const CHECK_PATH_EVERY: Duration = Duration::from_secs(1);

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Makes the directory `path` is in, if it is missing.
fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}

/// Whether `path` names the very file `file` is.
fn names(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => (named.dev(), named.ino()) == (open.dev(), open.ino()),
        _ => false,
    }
}

/// Whether the file's last byte is a newline (or the file is empty or absent).
fn ends_with_newline(path: &Path) -> io::Result<bool> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(err) => return Err(err),
    };
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(length - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

impl RotatingFile {
    /// Opens (or creates) the file for appending. A torn last line, left by an engine that
    /// was killed mid-write, is closed with a newline so the next line starts clean.
    pub fn open(
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
        sync_on_rotation: bool,
    ) -> io::Result<Self> {
        // Its directory is made as the state file's is (a fresh host's /var/log/plugboard).
        create_parent(&path)?;
        let torn = !ends_with_newline(&path)?;
        let mut file = open_append(&path)?;
        if torn {
            file.write_all(b"\n")?;
        }
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            max_bytes,
            keep,
            sync_on_rotation,
            file,
            size,
            torn: false,
            path_checked: Instant::now(),
        })
    }

    /// Appends `line` (ending in a newline) in one write, so concurrent appenders never
    /// interleave within a line; with `durable`, also waits until it is on disk. Rotates
    /// once the file has grown past its size.
    pub fn append_line(&mut self, line: &[u8], durable: bool) -> io::Result<()> {
        if self.path_checked.elapsed() >= CHECK_PATH_EVERY {
            self.path_checked = Instant::now();
            // Made again (its directory too); when it cannot be (yet), this line still goes
            // to the open file, and the next look tries again.
            if !names(&self.path, &self.file)
                && let Ok(file) = create_parent(&self.path).and_then(|()| open_append(&self.path))
            {
                self.size = file.metadata().map_or(0, |meta| meta.len());
                self.file = file;
                self.torn = false;
            }
        }
        let written = if self.torn {
            // One write still: a newline ends the torn line, then this one.
            let mut after_tear = Vec::with_capacity(line.len() + 1);
            after_tear.push(b'\n');
            after_tear.extend_from_slice(line);
            self.file.write_all(&after_tear)
        } else {
            self.file.write_all(line)
        };
        if let Err(err) = written {
            // Part of the line may be in the file (an empty line is skipped by readers).
            self.torn = true;
            if let Ok(metadata) = self.file.metadata() {
                self.size = metadata.len();
            }
            return Err(err);
        }
        self.torn = false;
        if durable {
            self.file.sync_data()?;
        }
        self.size += line.len() as u64;
        if self.size > self.max_bytes {
            if let Err(err) = self.rotate() {
                // Whatever failed (the file was moved or removed underneath, the disk is
                // full), go on with a fresh file at the path rather than retry on every line.
                self.file = open_append(&self.path)?;
                self.size = self.file.metadata()?.len();
                return Err(err);
            }
        }
        Ok(())
    }

    /// Waits until what was appended is on disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.sync_on_rotation {
            self.file.sync_all()?;
        }
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        // Moved or removed underneath: the rotated files stay as they are.
        std::fs::metadata(&self.path)?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.torn = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    #[test]
    fn after_a_failed_write_the_next_line_starts_on_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = RotatingFile::open(path.clone(), 1 << 20, 2, true).unwrap();
        file.append_line(b"first\n", false).unwrap();
        // The disk fills up mid-line: part of it reached the file, then the write failed.
        file.file = open_append(Path::new("/dev/full")).unwrap();
        assert!(file.append_line(b"{\"second\":2}\n", false).is_err());
        file.file = open_append(&path).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"second\"")
            .unwrap();
        file.append_line(b"{\"third\":3}\n", false).unwrap();
        file.append_line(b"fourth\n", false).unwrap();
        assert_eq!(
            lines(&path),
            ["first", "{\"second\"", "{\"third\":3}", "fourth"]
        );
    }

    #[test]
    fn the_file_rotates_past_its_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.log");
        let mut file = RotatingFile::open(path.clone(), 10, 2, false).unwrap();
        for n in 1..=4 {
            file.append_line(format!("line {n} ...\n").as_bytes(), false)
                .unwrap();
        }
        let rotated = |n: u32| dir.path().join(format!("engine.log.{n}"));
        // Each line passes 10 bytes: the file rotates after every one, two are kept.
        assert_eq!(lines(&rotated(1)), ["line 4 ..."]);
        assert_eq!(lines(&rotated(2)), ["line 3 ..."]);
        assert!(!rotated(3).exists());
        assert!(lines(&path).is_empty());
    }

    #[test]
    fn keeping_no_rotated_file_starts_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.log");
        let mut file = RotatingFile::open(path.clone(), 10, 0, false).unwrap();
        file.append_line(b"a line past ten bytes\n", false).unwrap();
        file.append_line(b"short\n", false).unwrap();
        assert_eq!(lines(&path), ["short"]);
        assert!(!dir.path().join("engine.log.1").exists());
    }

    #[test]
    fn a_file_removed_underneath_is_started_over_at_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.log");
        let mut file = RotatingFile::open(path.clone(), 10, 2, false).unwrap();
        file.append_line(b"first line past ten\n", false).unwrap();
        std::fs::remove_file(&path).unwrap();
        // The rotation fails (nothing to rotate); the file is made again, and the rotated
        // one is left as it was.
        assert!(file.append_line(b"a line past ten bytes\n", false).is_err());
        file.append_line(b"next\n", false).unwrap();
        assert_eq!(lines(&path), ["next"]);
        assert_eq!(
            lines(&dir.path().join("engine.log.1")),
            ["first line past ten"]
        );
        assert!(!dir.path().join("engine.log.2").exists());
    }

    #[test]
    fn a_file_moved_away_from_outside_is_made_again_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let mut file = RotatingFile::open(path.clone(), 1 << 20, 2, false).unwrap();
        file.append_line(b"before\n", false).unwrap();
        let moved = dir.path().join("audit.jsonl.moved");
        std::fs::rename(&path, &moved).unwrap();
        file.path_checked = Instant::now().checked_sub(CHECK_PATH_EVERY).unwrap();
        file.append_line(b"after\n", false).unwrap();
        assert_eq!(lines(&moved), ["before"]);
        assert_eq!(lines(&path), ["after"]);
        // Its directory removed too: made again.
        std::fs::remove_dir_all(dir.path().join("logs")).unwrap();
        file.path_checked = Instant::now().checked_sub(CHECK_PATH_EVERY).unwrap();
        file.append_line(b"again\n", false).unwrap();
        assert_eq!(lines(&path), ["again"]);
    }

    #[test]
    fn a_torn_last_line_is_closed_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.log");
        std::fs::write(&path, "complete\ntorn").unwrap();
        let mut file = RotatingFile::open(path.clone(), 1 << 20, 1, false).unwrap();
        file.append_line(b"next\n", false).unwrap();
        assert_eq!(lines(&path), ["complete", "torn", "next"]);
    }
}
