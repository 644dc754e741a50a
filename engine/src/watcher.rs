//! Watches bundle directories and reports bundles that appeared, changed or went away.
//!
//! The roots are plugin directories (each direct child holding a `plugin.toml` is a bundle)
//! and single bundle directories. `notify` reports raw file-system events
//! (inotify on Linux; its thread sleeps until the kernel has an event); the watcher then
//! maps every path to the bundle it belongs to (`<plugin_dir>/<bundle>/…` belongs to
//! `<plugin_dir>/<bundle>`) and reports a bundle once it has been quiet for the debounce
//! interval, so a copy of three files, or an editor's burst of writes, is one report.
//!
//! What is reported is decided by the state on disk when the bundle has settled, not by
//! the kinds of the events: a directory that now holds a `plugin.toml` and was not known is
//! [`BundleChange::Added`]; one that was known and still has it is
//! [`BundleChange::Changed`]; a known one that is gone, or lost its `plugin.toml`, is
//! [`BundleChange::Removed`]. Reading a bundle (the engine opening its files to verify
//! them) is not a change: access events are ignored.
//!
//! When the kernel's event queue overflows, or the watcher reports an error, every root is
//! rescanned: bundles are compared with the set of known ones, and a known bundle counts as
//! changed only if the size, time stamps or identity of one of its entries differ from what
//! was seen last. A root that is removed and created again is watched again.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

/// How the directory `plugboard pack` stages a bundle in, inside it, begins.
pub const PACK_STAGING_PREFIX: &str = ".plugboard-pack-";
/// The file whose presence makes a directory a bundle.
const MANIFEST_FILE: &str = "plugin.toml";
/// A bundle written to without pause is still reported after this many debounce intervals.
const MAX_DELAY_FACTOR: u32 = 10;
/// Runtime errors kept for [`BundleWatcher::take_errors`].
const MAX_KEPT_ERRORS: usize = 16;

/// What happened to one bundle directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BundleChange {
    /// A directory with a `plugin.toml` that was not known before.
    Added(PathBuf),
    /// A known bundle whose files changed.
    Changed(PathBuf),
    /// A known bundle that is gone, or no longer has a `plugin.toml`.
    Removed(PathBuf),
}

impl BundleChange {
    /// The bundle directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Added(path) | Self::Changed(path) | Self::Removed(path) => path,
        }
    }
}

/// Why watching could not start, or what went wrong while watching.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the file watcher: {error}")]
    Start { error: notify::Error },
    #[error("cannot watch {}: {error}", dir.display())]
    Watch { dir: PathBuf, error: notify::Error },
    #[error("cannot list the plugin directory {}: {error}", dir.display())]
    List { dir: PathBuf, error: io::Error },
    #[error("watching the bundle directories: {reason}")]
    Runtime { reason: String },
}

/// Watches plugin and bundle directories until dropped.
pub struct BundleWatcher {
    /// The raw inotify watcher. (A debouncing wrapper would add nothing the classifier does
    /// not do — it settles each bundle over the quiet window — and it wakes on a timer.)
    file_watcher: Arc<Mutex<Option<RecommendedWatcher>>>,
    stopped: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<WatchError>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BundleWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWatcher")
            .field("stopped", &self.stopped.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// What the watcher hands the classifier thread.
enum Signal {
    Paths(Vec<PathBuf>),
    Rescan,
    Error(String),
}

/// A watched root: a plugin directory (its children are bundles) or one bundle directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Root {
    path: PathBuf,
    kind: RootKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootKind {
    PluginDir,
    Bundle,
}

impl BundleWatcher {
    /// Starts watching `plugin_dirs` (every direct child with a `plugin.toml` is a bundle)
    /// and the single bundle directories `bundles`. Bundles present now are known; from
    /// here on `on_changes` is called, from a thread of the watcher, with the bundles that
    /// were added, changed or removed, each once it has been quiet for `debounce`.
    ///
    /// Every directory must exist. Dropping the watcher stops it; once the drop returns,
    /// `on_changes` is not called again.
    pub fn start(
        plugin_dirs: &[PathBuf],
        bundles: &[PathBuf],
        debounce: Duration,
        on_changes: impl Fn(Vec<BundleChange>) + Send + 'static,
    ) -> Result<Self, WatchError> {
        let roots: Vec<Root> = plugin_dirs
            .iter()
            .map(|path| Root {
                path: path.clone(),
                kind: RootKind::PluginDir,
            })
            .chain(bundles.iter().map(|path| Root {
                path: path.clone(),
                kind: RootKind::Bundle,
            }))
            .collect();
        let (signals, inbox) = mpsc::channel::<Signal>();
        // Raw events go straight to the classifier, which applies the quiet window per
        // bundle.
        let mut file_watcher = RecommendedWatcher::new(
            move |result: notify::Result<notify::Event>| match result {
                Ok(event) if event.need_rescan() => {
                    let _ = signals.send(Signal::Rescan);
                }
                // Reads are no change; a close after writing is (a file rewritten in place
                // through a mapping shows no other event).
                Ok(event)
                    if !matches!(event.kind, EventKind::Access(_))
                        || matches!(
                            event.kind,
                            EventKind::Access(AccessKind::Close(AccessMode::Write))
                        ) =>
                {
                    let _ = signals.send(Signal::Paths(event.paths));
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = signals.send(Signal::Error(error.to_string()));
                }
            },
            // A symlink in a bundle (to a cache, to `/`) is not followed: only the bundle's
            // own files are watched, and a link to a large tree cannot make the watcher walk
            // it.
            notify::Config::default().with_follow_symlinks(false),
        )
        .map_err(|source| WatchError::Start { error: source })?;
        for root in &roots {
            file_watcher
                .watch(&root.path, RecursiveMode::Recursive)
                .map_err(|source| WatchError::Watch {
                    dir: root.path.clone(),
                    error: source,
                })?;
            // The parent tells us when the root itself is removed and created again (its
            // own watch goes away with it). Best effort: the root's watch is what matters.
            // Not a parent inside a root (another root's recursive watch covers it, and a
            // second, non-recursive watch of it would end that recursion).
            if let Some(parent) = root.path.parent().filter(|parent| {
                !parent.as_os_str().is_empty()
                    && !roots.iter().any(|other| parent.starts_with(&other.path))
            }) {
                let _ = file_watcher.watch(parent, RecursiveMode::NonRecursive);
            }
        }
        // Listed after the watches are in place, so nothing happens unseen in between.
        let mut known = BTreeMap::new();
        for root in &roots {
            for bundle in candidates(root)? {
                if is_bundle(&bundle) {
                    let print = fingerprint(&bundle);
                    known.insert(bundle, print);
                }
            }
        }
        let file_watcher = Arc::new(Mutex::new(Some(file_watcher)));
        let stopped = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut classifier = Classifier {
            roots,
            known,
            pending: HashMap::new(),
            rescan: BTreeMap::new(),
            quiet: debounce,
            max_delay: debounce.saturating_mul(MAX_DELAY_FACTOR),
            file_watcher: Arc::clone(&file_watcher),
            errors: Arc::clone(&errors),
        };
        let thread_stopped = Arc::clone(&stopped);
        let thread = std::thread::Builder::new()
            .name("pb-bundle-watcher".to_owned())
            .spawn(move || classifier.run(&inbox, &thread_stopped, &on_changes))
            .map_err(|err| WatchError::Start {
                error: notify::Error::io(err),
            })?;
        Ok(Self {
            file_watcher,
            stopped,
            errors,
            thread: Some(thread),
        })
    }

    /// Errors the watcher ran into since the last call (each also triggered a rescan), at
    /// most the newest 16.
    pub fn take_errors(&self) -> Vec<WatchError> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for BundleWatcher {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let file_watcher = self
            .file_watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Ends the watcher's event loop, which drops its end of the channel: the classifier
        // sees the channel close and ends.
        drop(file_watcher);
        if let Some(thread) = self.thread.take() {
            // Dropped from inside `on_changes`: the classifier ends on its own.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// What was seen of a bundle's entries: name → (size, mtime, ctime, inode). Used only to
/// tell after a rescan whether a bundle changed while no events were seen.
type Fingerprint = BTreeMap<std::ffi::OsString, (u64, i64, i64, i64, i64, u64)>;

fn fingerprint(bundle: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(bundle) else {
        return Fingerprint::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            // Follows symbolic links: a bundle's library may be one.
            let meta = std::fs::metadata(entry.path()).ok()?;
            Some((
                entry.file_name(),
                (
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                    meta.ino(),
                ),
            ))
        })
        .collect()
}

fn is_bundle(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

/// The directories under `root` that are (or may be) bundles right now.
fn candidates(root: &Root) -> Result<Vec<PathBuf>, WatchError> {
    match root.kind {
        RootKind::Bundle => Ok(vec![root.path.clone()]),
        RootKind::PluginDir => {
            let entries = std::fs::read_dir(&root.path).map_err(|source| WatchError::List {
                dir: root.path.clone(),
                error: source,
            })?;
            Ok(entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_dir())
                .collect())
        }
    }
}

/// A bundle waiting for its quiet window to pass.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
    /// Events were seen for it (else it is only being rescanned).
    touched: bool,
}

struct Classifier {
    roots: Vec<Root>,
    known: BTreeMap<PathBuf, Fingerprint>,
    pending: HashMap<PathBuf, Pending>,
    /// Roots to list again (and watch again) once quiet, with when they were last marked.
    rescan: BTreeMap<usize, Instant>,
    quiet: Duration,
    max_delay: Duration,
    file_watcher: Arc<Mutex<Option<RecommendedWatcher>>>,
    errors: Arc<Mutex<Vec<WatchError>>>,
}

impl Classifier {
    fn run(
        &mut self,
        inbox: &mpsc::Receiver<Signal>,
        stopped: &AtomicBool,
        on_changes: &dyn Fn(Vec<BundleChange>),
    ) {
        loop {
            let wait = self
                .next_deadline()
                .map_or(Duration::from_secs(3600), |deadline| {
                    deadline.saturating_duration_since(Instant::now())
                });
            match inbox.recv_timeout(wait) {
                Ok(Signal::Paths(paths)) => {
                    let now = Instant::now();
                    for path in paths {
                        self.touch(&path, now);
                    }
                }
                Ok(Signal::Rescan) => self.rescan_all(Instant::now()),
                Ok(Signal::Error(reason)) => {
                    let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
                    if errors.len() >= MAX_KEPT_ERRORS {
                        errors.remove(0);
                    }
                    errors.push(WatchError::Runtime { reason });
                    drop(errors);
                    self.rescan_all(Instant::now());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let changes = self.settle(Instant::now());
            if !changes.is_empty() && !stopped.load(Ordering::SeqCst) {
                // A panicking callback must not end the watching.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    on_changes(changes);
                }));
            }
        }
    }

    /// Classifies every bundle (and rescans every root) whose quiet window has passed.
    fn settle(&mut self, now: Instant) -> Vec<BundleChange> {
        let settled: Vec<usize> = self
            .rescan
            .iter()
            .filter(|(_, last)| now >= **last + self.quiet)
            .map(|(index, _)| *index)
            .collect();
        for index in settled {
            self.rescan.remove(&index);
            self.rescan_root(index, now);
        }
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, pending)| {
                now >= pending.last + self.quiet || now >= pending.first + self.max_delay
            })
            .map(|(path, _)| path.clone())
            .collect();
        let mut changes: Vec<BundleChange> = due
            .into_iter()
            .filter_map(|path| {
                let pending = self.pending.remove(&path)?;
                self.classify(path, pending.touched)
            })
            .collect();
        changes.sort();
        changes
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| (pending.last + self.quiet).min(pending.first + self.max_delay))
            .chain(self.rescan.values().map(|last| *last + self.quiet))
            .min()
    }

    fn rescan_all(&mut self, now: Instant) {
        for index in 0..self.roots.len() {
            self.rescan.insert(index, now);
        }
    }

    /// Notes an event on `path`: the bundles it belongs to wait for their quiet window.
    fn touch(&mut self, path: &Path, now: Instant) {
        let mut bundles = Vec::new();
        for (index, root) in self.roots.iter().enumerate() {
            if path == root.path {
                // The root itself appeared, went away or moved: list it (and watch it)
                // again once things settle.
                self.rescan.insert(index, now);
            }
            let Ok(rest) = path.strip_prefix(&root.path) else {
                continue;
            };
            // What happens in `plugboard pack`'s staging directory inside a bundle is no
            // change of it: the bundle is made whole there before its files are renamed
            // into place (the renames are the change, seen under their new names). (Only
            // that one: a plugin's own files may be hidden, its library too.)
            let mut inside = rest.components();
            if root.kind == RootKind::PluginDir {
                inside.next();
            }
            if inside.next().is_some_and(|entry| {
                entry
                    .as_os_str()
                    .to_string_lossy()
                    .starts_with(PACK_STAGING_PREFIX)
            }) {
                continue;
            }
            match root.kind {
                RootKind::Bundle => bundles.push(root.path.clone()),
                RootKind::PluginDir => {
                    if let Some(first) = rest.components().next() {
                        bundles.push(root.path.join(first));
                    }
                }
            }
        }
        for bundle in bundles {
            self.pending
                .entry(bundle)
                .and_modify(|pending| {
                    pending.last = now;
                    pending.touched = true;
                })
                .or_insert(Pending {
                    first: now,
                    last: now,
                    touched: true,
                });
        }
    }

    /// Lists a root again: watches it again if it came back, and queues every bundle in
    /// it, and every known one that was in it, for classification now.
    fn rescan_root(&mut self, index: usize, now: Instant) {
        let root = self.roots[index].clone();
        if root.path.is_dir()
            && let Some(file_watcher) = self
                .file_watcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
        {
            // Idempotent for a root that is still watched.
            let _ = file_watcher.watch(&root.path, RecursiveMode::Recursive);
        }
        let mut bundles = candidates(&root).unwrap_or_default();
        bundles.extend(
            self.known
                .keys()
                .filter(|known| match root.kind {
                    RootKind::Bundle => **known == root.path,
                    RootKind::PluginDir => known.parent() == Some(root.path.as_path()),
                })
                .cloned(),
        );
        for bundle in bundles {
            self.pending.entry(bundle).or_insert(Pending {
                first: now,
                last: now.checked_sub(self.quiet).unwrap_or(now),
                touched: false,
            });
        }
    }

    /// Decides what happened to `bundle`, from the disk as it is now.
    fn classify(&mut self, bundle: PathBuf, touched: bool) -> Option<BundleChange> {
        let present = is_bundle(&bundle);
        match (present, self.known.contains_key(&bundle)) {
            (true, true) => {
                let print = fingerprint(&bundle);
                let previous = self.known.insert(bundle.clone(), print.clone());
                (touched || previous.as_ref() != Some(&print))
                    .then_some(BundleChange::Changed(bundle))
            }
            (true, false) => {
                let print = fingerprint(&bundle);
                self.known.insert(bundle.clone(), print);
                Some(BundleChange::Added(bundle))
            }
            (false, true) => {
                self.known.remove(&bundle);
                Some(BundleChange::Removed(bundle))
            }
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier(plugin_dir: &Path, quiet: Duration) -> Classifier {
        let roots = vec![Root {
            path: plugin_dir.to_owned(),
            kind: RootKind::PluginDir,
        }];
        let mut known = BTreeMap::new();
        for bundle in candidates(&roots[0]).unwrap() {
            if is_bundle(&bundle) {
                let print = fingerprint(&bundle);
                known.insert(bundle, print);
            }
        }
        Classifier {
            roots,
            known,
            pending: HashMap::new(),
            rescan: BTreeMap::new(),
            quiet,
            max_delay: quiet * MAX_DELAY_FACTOR,
            file_watcher: Arc::new(Mutex::new(None)),
            errors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn bundle(dir: &Path, library: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), "[plugin]\n").unwrap();
        std::fs::write(dir.join("libdemo.so"), library).unwrap();
    }

    #[test]
    fn a_rescan_reports_only_what_differs_from_what_was_seen() {
        let temp = tempfile::tempdir().unwrap();
        let (same, edited, gone, new) = (
            temp.path().join("same"),
            temp.path().join("edited"),
            temp.path().join("gone"),
            temp.path().join("new"),
        );
        for dir in [&same, &edited, &gone] {
            bundle(dir, b"v1");
        }
        let quiet = Duration::from_millis(100);
        let mut classifier = classifier(temp.path(), quiet);
        // What happened while no events were seen (e.g. the kernel's queue overflowed).
        std::fs::write(edited.join("libdemo.so"), b"version 2").unwrap();
        std::fs::remove_dir_all(&gone).unwrap();
        bundle(&new, b"v1");

        let now = Instant::now();
        classifier.rescan_all(now);
        assert_eq!(
            classifier.settle(now),
            vec![],
            "not before the quiet window"
        );
        assert_eq!(
            classifier.settle(now + quiet),
            vec![
                BundleChange::Added(new.clone()),
                BundleChange::Changed(edited.clone()),
                BundleChange::Removed(gone.clone()),
            ]
        );
        classifier.rescan_all(now + quiet);
        assert_eq!(classifier.settle(now + quiet * 2), vec![]);
    }

    /// `plugboard pack` makes the bundle in a hidden directory inside it, then renames
    /// the files into place: only the renames are a change of the bundle.
    #[test]
    fn events_in_a_hidden_entry_of_a_bundle_are_no_change_of_it() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("hello");
        bundle(&dir, b"v1");
        let quiet = Duration::from_millis(100);
        let mut classifier = classifier(temp.path(), quiet);
        let now = Instant::now();
        classifier.touch(&dir.join(".plugboard-pack-x1/libdemo.so"), now);
        assert_eq!(classifier.settle(now + quiet * 2), vec![]);
        std::fs::write(dir.join("libdemo.so"), b"version 2").unwrap();
        classifier.touch(&dir.join("libdemo.so"), now + quiet * 2);
        assert_eq!(
            classifier.settle(now + quiet * 3),
            vec![BundleChange::Changed(dir.clone())]
        );
    }

    #[test]
    fn events_keep_a_bundle_waiting_until_it_is_quiet_but_not_forever() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("busy");
        bundle(&dir, b"v1");
        let quiet = Duration::from_millis(100);
        let mut classifier = classifier(temp.path(), quiet);
        let start = Instant::now();
        let file = dir.join("libdemo.so");
        // An event every half quiet window: never quiet, reported at the latest after
        // MAX_DELAY_FACTOR windows.
        let mut reported = None;
        for step in 0..(MAX_DELAY_FACTOR * 4) {
            let now = start + quiet / 2 * step;
            classifier.touch(&file, now);
            let changes = classifier.settle(now);
            if !changes.is_empty() {
                assert_eq!(changes, vec![BundleChange::Changed(dir.clone())]);
                reported = Some(now - start);
                break;
            }
        }
        assert_eq!(reported, Some(quiet * MAX_DELAY_FACTOR));
        // Paths outside the roots and entries that are not bundles are ignored.
        classifier.touch(Path::new("/elsewhere/file"), start);
        classifier.touch(&temp.path().join("README"), start);
        assert_eq!(classifier.settle(start + quiet * 100), vec![]);
    }
}
