//! Resource sampling of real sandboxed workers, read from their cgroups and `/proc`.

use std::time::{Duration, Instant};

use plugboard_engine::monitor::{LimitNotices, WorkerProbe};
use plugboard_engine::sandbox::cgroup::{CgroupLimits, CgroupRoot, EngineScope, PluginCgroup};

use crate::runtime::{call, engine_configured, plugin, same, start};

/// This process's descriptors open on the worker's cgroup or `/proc` files (other tests
/// running in parallel open files too, but never these).
fn descriptors_on(cgroup: &str, pid: u32) -> usize {
    let proc_dir = format!("/proc/{pid}/");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.contains(cgroup.trim_start_matches('/')) || target.starts_with(&proc_dir)
        })
        .count()
}

#[test]
fn a_running_worker_is_sampled_from_its_cgroup_and_proc_with_its_limits() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.sample_interval = Duration::from_millis(100);
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    for _ in 0..50 {
        call(engine, "hello", "greet", "sampled");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let sample = loop {
        if let Some(sample) = plugin(engine, "hello")
            .resources
            .filter(|sample| sample.at_ms > 0)
        {
            if engine.resource_history("hello").unwrap().len() >= 3 {
                break sample;
            }
        }
        assert!(Instant::now() < deadline, "no samples of hello");
        std::thread::sleep(Duration::from_millis(50));
    };
    // hello's manifest: memory_mb 32, cpu_percent 25, max_threads 8.
    assert_eq!(sample.memory_limit_bytes, Some(32 << 20));
    assert_eq!(sample.pids_max, Some(8));
    assert!(sample.cpu_percent_of_quota.is_some());
    assert!(
        sample.memory_bytes > 0 && sample.rss_bytes > 0,
        "{sample:?}"
    );
    assert!(
        sample.pids_current >= 1 && sample.threads >= 1,
        "{sample:?}"
    );
    assert!(sample.open_fds >= 3, "{sample:?}");
    // The count is the kernel's (the size of /proc/<pid>/fd): the same as listing it.
    let sandbox_pid = plugin(engine, "hello").sandbox_pid.expect("running");
    let listed = std::fs::read_dir(format!("/proc/{sandbox_pid}/fd"))
        .unwrap()
        .count() as u64;
    assert_eq!(sample.open_fds, listed, "{sample:?}");
    assert!(sample.cpu_percent >= 0.0 && sample.throttled_ratio >= 0.0);
    let host = engine.snapshot().host;
    assert!(host.cpus >= 1 && host.memory_total_bytes > host.memory_used_bytes);
    assert!(host.engine_rss_bytes > 0, "{host:?}");
    // Once stopped, a plugin shows no current sample.
    engine
        .execute(plugboard_engine::Command::Stop {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    assert!(plugin(engine, "hello").resources.is_none());
}

#[test]
fn a_probe_keeps_its_files_open_and_rereads_them() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.sample_interval = Duration::from_secs(3600);
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    let hello = plugin(engine, "hello");
    let root = CgroupRoot::system().unwrap();
    let (cgroup, pid) = (hello.cgroup.clone().unwrap(), hello.sandbox_pid.unwrap());
    assert_eq!(descriptors_on(&cgroup, pid), 0);
    let mut probe = WorkerProbe::open(&root, &cgroup, pid).unwrap();
    let opened = descriptors_on(&cgroup, pid);
    assert!(opened >= 10, "the probe holds its files: {opened}");
    let first = probe.read().unwrap();
    for _ in 0..20 {
        call(engine, "hello", "greet", "x");
    }
    let second = probe.read().unwrap();
    assert_eq!(
        descriptors_on(&cgroup, pid),
        opened,
        "reading opens nothing new"
    );
    assert!(second.cpu_usage_ns >= first.cpu_usage_ns);
    assert!(second.memory_bytes > 0);
}

/// A spike to the memory limit and back between two samples: usage is low again at the
/// second sample, so only the kernel's notice makes the probe read the limit counters
/// (which it otherwise reads only near the limit or every few samples).
#[test]
fn a_memory_limit_hit_between_two_samples_is_read_because_the_kernel_noticed_it() {
    let Some(root) = crate::cgroup::kernel_root() else {
        return;
    };
    if !root.layout().uses_v1_hierarchies() {
        eprintln!("skipping: memory notices are registered on cgroup v1 hosts only");
        return;
    }
    let scope = EngineScope::create(&root).unwrap();
    let limit = 16 << 20;
    let limits = CgroupLimits {
        memory_bytes: limit,
        cpu_percent: 100,
        pids_max: 16,
    };
    let cgroup = PluginCgroup::create(&scope, "spike", &limits).unwrap();
    // The /proc half of the probe reads this process; the cgroup half the new cgroup.
    let mut probe = WorkerProbe::open(&root, &cgroup.display_path(), std::process::id()).unwrap();
    let mut notices = LimitNotices::new().unwrap();
    probe.watch(&notices, 7).unwrap();
    let before = probe.sample(false).unwrap();
    assert_eq!(before.memory_limit_hits, 0);
    assert!(notices.noticed().is_empty(), "nothing happened yet");

    // 32 MiB into tmpfs from a process born in the cgroup: its page cache is charged there
    // and cannot be reclaimed, so it hits the 16 MiB limit (and meets the OOM killer).
    let fill_dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let fill = fill_dir.path().join("fill");
    let output = std::fs::File::create(&fill).unwrap();
    let mut writer = cgroup
        .thread_entry()
        .expect("a v1 host")
        .run_inside(|| {
            std::process::Command::new("head")
                .args(["-c", "33554432", "/dev/zero"])
                .stdout(output)
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .unwrap()
        .expect("head starts");
    writer.wait().unwrap();
    std::fs::remove_file(&fill).unwrap();

    let noticed = notices.noticed();
    assert!(noticed.contains(&7), "no notice for the spike: {noticed:?}");
    let after = probe.sample(noticed.contains(&7)).unwrap();
    assert!(
        after.memory_bytes < plugboard_engine::monitor::near_limit_threshold(limit),
        "usage is back below the threshold ({} bytes), so only the notice calls for the read",
        after.memory_bytes
    );
    assert!(
        after.memory_limit_hits > before.memory_limit_hits,
        "the limit hits were read: {after:?}"
    );
    assert!(notices.noticed().is_empty(), "a read notice is drained");
    drop(probe);
    cgroup.remove().unwrap();
    scope.remove().unwrap();
}

/// The process name in `/proc/<pid>/stat` is whatever bytes a plugin gives its threads
/// (`PR_SET_NAME`): a name that is not UTF-8 must not stop the sampling of that worker
/// (which would silence its limit violations).
#[test]
fn a_process_named_in_bytes_that_are_not_text_is_still_sampled() {
    use std::os::unix::ffi::OsStrExt as _;
    let Some(root) = crate::cgroup::kernel_root() else {
        return;
    };
    let scope = EngineScope::create(&root).unwrap();
    let limits = CgroupLimits {
        memory_bytes: 64 << 20,
        cpu_percent: 100,
        pids_max: 16,
    };
    let cgroup = PluginCgroup::create(&scope, "oddname", &limits).unwrap();
    // The kernel names a process after its executable's file name.
    let dir = tempfile::tempdir().unwrap();
    let odd = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"\xff\xfe odd) name"));
    std::fs::copy("/bin/sleep", &odd).unwrap();
    let mut child = std::process::Command::new(&odd).arg("30").spawn().unwrap();
    // Until it has run the odd program (the forked child bears this thread's name first)
    // and sleeps (before that it may not have touched a page: rss 0).
    let (comm, stat) = (
        format!("/proc/{}/comm", child.id()),
        format!("/proc/{}/stat", child.id()),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(&comm).unwrap() != b"\xff\xfe odd) name\n"
        || !std::fs::read(&stat)
            .unwrap()
            .windows(3)
            .any(|state| state == b") S")
    {
        assert!(Instant::now() < deadline, "the odd sleep never slept");
        std::thread::sleep(Duration::from_millis(5));
    }
    let reading = WorkerProbe::open(&root, &cgroup.display_path(), child.id())
        .and_then(|mut probe| probe.read());
    child.kill().unwrap();
    child.wait().unwrap();
    cgroup.remove().unwrap();
    scope.remove().unwrap();
    let reading = reading.expect("the odd name is read past");
    assert_eq!(reading.threads, 1);
    assert!(reading.rss_bytes > 0, "{reading:?}");
}
