//! The bundle watcher against real directories: bundles added, changed and removed are
//! reported once each, after the debounce interval; reading a bundle is not a change.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use plugboard_engine::watcher::{BundleChange, BundleWatcher, WatchError};

const DEBOUNCE: Duration = Duration::from_millis(200);
/// Generous: other builds and tests may load the machine.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long "nothing more" is waited for: several debounce intervals.
const QUIET: Duration = Duration::from_millis(1500);

struct Watched {
    _watcher: BundleWatcher,
    changes: mpsc::Receiver<Vec<BundleChange>>,
}

impl Watched {
    fn start(plugin_dirs: &[PathBuf], bundles: &[PathBuf]) -> Self {
        let (sender, changes) = mpsc::channel();
        let watcher = BundleWatcher::start(plugin_dirs, bundles, DEBOUNCE, move |batch| {
            let _ = sender.send(batch);
        })
        .expect("the watcher starts");
        Self {
            _watcher: watcher,
            changes,
        }
    }

    /// The next batch of changes, which must come within [`ARRIVAL`].
    fn next(&self) -> Vec<BundleChange> {
        self.changes
            .recv_timeout(ARRIVAL)
            .expect("a change is reported within the arrival time")
    }

    /// Every change reported within `window`.
    fn within(&self, window: Duration) -> Vec<BundleChange> {
        let deadline = Instant::now() + window;
        let mut all = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.changes.recv_timeout(left) {
                Ok(batch) => all.extend(batch),
                Err(_) => break,
            }
        }
        all
    }
}

fn write_bundle(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("plugin.toml"), "[plugin]\nname = \"demo\"\n").unwrap();
    fs::write(dir.join("libdemo.so"), b"not really a library").unwrap();
}

#[test]
fn a_new_bundle_is_added_a_modified_one_changed_a_deleted_one_removed() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let watched = Watched::start(std::slice::from_ref(&plugins), &[]);

    let bundle = plugins.join("demo");
    write_bundle(&bundle);
    assert_eq!(watched.next(), vec![BundleChange::Added(bundle.clone())]);

    fs::write(bundle.join("libdemo.so"), b"a new build").unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Changed(bundle.clone())]);

    fs::remove_dir_all(&bundle).unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Removed(bundle.clone())]);
    assert_eq!(watched.within(QUIET), vec![]);
}

#[test]
fn bundles_present_at_start_are_known_and_a_burst_of_writes_is_one_change() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    let bundle = plugins.join("demo");
    write_bundle(&bundle);
    let watched = Watched::start(std::slice::from_ref(&plugins), &[]);

    // Twenty writes over about 200 ms, each closer to the next than the debounce interval.
    for round in 0..20 {
        fs::write(bundle.join("libdemo.so"), format!("build {round}")).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(watched.next(), vec![BundleChange::Changed(bundle.clone())]);
    assert_eq!(watched.within(QUIET), vec![]);
}

#[test]
fn reading_a_bundle_is_not_a_change() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    let bundle = plugins.join("demo");
    write_bundle(&bundle);
    let watched = Watched::start(std::slice::from_ref(&plugins), &[]);

    for _ in 0..3 {
        let _ = fs::read(bundle.join("plugin.toml")).unwrap();
        let _ = fs::read(bundle.join("libdemo.so")).unwrap();
        let _ = fs::read_dir(&bundle).unwrap().count();
        let _ = fs::read_dir(&plugins).unwrap().count();
    }
    assert_eq!(watched.within(QUIET), vec![]);
}

#[test]
fn a_directory_becomes_a_bundle_when_its_manifest_appears_and_stops_being_one_without() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let watched = Watched::start(std::slice::from_ref(&plugins), &[]);

    // Not a bundle yet: nothing to report.
    let dir = plugins.join("later");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("libdemo.so"), b"library first").unwrap();
    fs::write(plugins.join("README"), b"not a bundle either").unwrap();
    assert_eq!(watched.within(QUIET), vec![]);

    fs::write(dir.join("plugin.toml"), "[plugin]\n").unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Added(dir.clone())]);

    fs::remove_file(dir.join("plugin.toml")).unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Removed(dir.clone())]);
}

#[test]
fn a_bundle_moved_in_is_added_and_one_moved_out_removed() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let staging = temp.path().join("staging");
    write_bundle(&staging.join("demo"));
    let watched = Watched::start(std::slice::from_ref(&plugins), &[]);

    let bundle = plugins.join("demo");
    fs::rename(staging.join("demo"), &bundle).unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Added(bundle.clone())]);

    // Renamed within the plugin directory: the old name is gone, the new one is new.
    let renamed = plugins.join("demo-2");
    fs::rename(&bundle, &renamed).unwrap();
    let mut seen = watched.next();
    seen.extend(watched.within(QUIET));
    seen.sort();
    assert_eq!(
        seen,
        vec![
            BundleChange::Added(renamed.clone()),
            BundleChange::Removed(bundle.clone()),
        ]
    );
}

#[test]
fn a_single_bundle_directory_is_watched_even_across_its_removal() {
    let temp = tempfile::tempdir().unwrap();
    let bundle = temp.path().join("solo");
    write_bundle(&bundle);
    let watched = Watched::start(&[], std::slice::from_ref(&bundle));

    fs::write(bundle.join("plugin.sig"), b"signature").unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Changed(bundle.clone())]);

    fs::remove_dir_all(&bundle).unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Removed(bundle.clone())]);

    // Created again: found again, and its files are watched again.
    write_bundle(&bundle);
    assert_eq!(watched.next(), vec![BundleChange::Added(bundle.clone())]);
    fs::write(bundle.join("libdemo.so"), b"rebuilt").unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Changed(bundle.clone())]);
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("no-such-dir");
    let err = BundleWatcher::start(
        std::slice::from_ref(&missing),
        &[],
        DEBOUNCE,
        |_: Vec<BundleChange>| {},
    )
    .unwrap_err();
    assert!(matches!(err, WatchError::Watch { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn dropping_the_watcher_stops_it() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let (sender, calls) = mpsc::channel();
    let seen_dropped = Arc::clone(&dropped);
    let watcher = BundleWatcher::start(
        std::slice::from_ref(&plugins),
        &[],
        DEBOUNCE,
        move |batch: Vec<BundleChange>| {
            let _ = sender.send((batch, seen_dropped.load(Ordering::SeqCst)));
        },
    )
    .unwrap();
    write_bundle(&plugins.join("demo"));
    drop(watcher);
    dropped.store(true, Ordering::SeqCst);
    // Once the drop returned, the callback (and its sender) is gone: the channel is closed
    // at once, and no call happened after the drop.
    loop {
        match calls.try_recv() {
            Err(mpsc::TryRecvError::Disconnected) => break,
            Ok((_, after_drop)) => assert!(!after_drop, "called after the watcher was dropped"),
            Err(mpsc::TryRecvError::Empty) => panic!("the callback outlived the watcher"),
        }
    }
}

/// A symlink in a bundle is not followed: writes in the tree it points to are no change of
/// the bundle (a link to `/` would otherwise have the watcher walk the whole filesystem).
#[test]
fn a_symlinked_tree_inside_a_bundle_is_not_watched() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    let bundle = plugins.join("demo");
    write_bundle(&bundle);
    let cache = temp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    std::os::unix::fs::symlink(&cache, bundle.join("cache")).unwrap();
    let watched = Watched::start(std::slice::from_ref(&plugins), &[]);
    fs::write(cache.join("entry"), b"written by the plugin").unwrap();
    assert_eq!(watched.within(QUIET), vec![]);
    // The bundle's own files still are.
    fs::write(bundle.join("libdemo.so"), b"a new build").unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Changed(bundle)]);
}

/// A single bundle given inside a plugin directory that is watched too: watching the
/// bundle's parent (to see the bundle removed and created again) must not end the
/// directory's recursive watch, or bundles created in it later would go unseen once added.
#[test]
fn a_bundle_root_inside_a_plugin_directory_keeps_the_directory_recursive() {
    let temp = tempfile::tempdir().unwrap();
    let plugins = temp.path().join("plugins");
    let special = plugins.join("special");
    write_bundle(&special);
    let watched = Watched::start(
        std::slice::from_ref(&plugins),
        std::slice::from_ref(&special),
    );
    let late = plugins.join("late");
    write_bundle(&late);
    assert_eq!(watched.next(), vec![BundleChange::Added(late.clone())]);
    fs::write(late.join("libdemo.so"), b"a new build").unwrap();
    assert_eq!(watched.next(), vec![BundleChange::Changed(late)]);
}
