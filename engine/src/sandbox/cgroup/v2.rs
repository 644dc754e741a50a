//! cgroup v2 by plain file operations (`cgroups-rs` only knows `/sys/fs/cgroup` as a v2 root).

use std::path::Path;

use super::{CPU_PERIOD_US, CgroupError, CgroupLimits, cpu_percent, files};

/// What a scope hands down to its plugin cgroups: without these in `cgroup.subtree_control`
/// a child has no `memory.max`, `cpu.max` or `pids.max`.
const DELEGATED_CONTROLLERS: &str = "+memory +cpu +pids";

/// Creates the scope and enables the controllers on the way down to its children.
pub(super) fn create_scope(root: &Path, scope: &Path) -> Result<(), CgroupError> {
    files::write(root, "cgroup.subtree_control", DELEGATED_CONTROLLERS)?;
    create(scope)?;
    files::write(scope, "cgroup.subtree_control", DELEGATED_CONTROLLERS)
}

pub(super) fn create(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir(dir).map_err(|source| CgroupError::Io {
        action: "create cgroup directory",
        path: dir.to_owned(),
        error: source,
    })
}

/// `memory.max` (and no swap, when the kernel has swap accounting), `cpu.max`, `pids.max`.
pub(super) fn apply_limits(dir: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
    files::write(dir, "memory.max", &limits.memory_bytes.to_string())?;
    // Without this a memory hog would swap instead of meeting its limit.
    if dir.join("memory.swap.max").is_file() {
        files::write(dir, "memory.swap.max", "0")?;
    }
    files::write(
        dir,
        "cpu.max",
        &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us()),
    )?;
    files::write(dir, "pids.max", &limits.pids_max.to_string())
}

/// The limits in the kernel's files now.
pub(super) fn read_limits(dir: &Path) -> Result<CgroupLimits, CgroupError> {
    let memory = files::read_limit(dir, "memory.max")?;
    let cpu_max = files::read(dir, "cpu.max")?;
    let (quota, period) = parse_cpu_max(dir, &cpu_max)?;
    let pids = files::read_limit(dir, "pids.max")?;
    Ok(CgroupLimits {
        memory_bytes: memory.unwrap_or(u64::MAX),
        cpu_percent: cpu_percent(quota, period),
        pids_max: pids.unwrap_or(u64::MAX),
    })
}

/// `cpu.max` is `<quota|max> <period>`.
fn parse_cpu_max(dir: &Path, text: &str) -> Result<(Option<u64>, u64), CgroupError> {
    let malformed = || CgroupError::Parse {
        cgroup: dir.to_owned(),
        file: "cpu.max",
        content: text.to_owned(),
        expected: "`<quota|max> <period>` in microseconds",
    };
    let mut fields = text.split_whitespace();
    let (Some(quota), Some(period), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(malformed());
    };
    let quota = files::parse_limit(dir, "cpu.max", quota).map_err(|_| malformed())?;
    let period = period
        .parse()
        .map_err(|_: std::num::ParseIntError| malformed())?;
    Ok((quota, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parses_and_malformed_content_is_named() {
        let dir = Path::new("/x");
        assert_eq!(
            parse_cpu_max(dir, "50000 100000").unwrap(),
            (Some(50_000), 100_000)
        );
        assert_eq!(parse_cpu_max(dir, "max 100000").unwrap(), (None, 100_000));
        for bad in ["", "50000", "a 100000", "1 2 3"] {
            let error = parse_cpu_max(dir, bad).unwrap_err();
            assert!(error.to_string().contains("cpu.max"), "{error}");
        }
    }
}
