//! Reading and writing one cgroup file, with errors that name the cgroup and the file.

use std::io;
use std::path::Path;

use super::CgroupError;

/// The trimmed contents of `<cgroup>/<file>`.
pub(super) fn read(cgroup: &Path, file: &'static str) -> Result<String, CgroupError> {
    std::fs::read_to_string(cgroup.join(file))
        .map(|text| text.trim().to_owned())
        .map_err(|source| CgroupError::Read {
            cgroup: cgroup.to_owned(),
            file,
            error: source,
        })
}

/// Writes `value` to `<cgroup>/<file>` in one `write(2)`, as the kernel expects.
pub(super) fn write(cgroup: &Path, file: &'static str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(cgroup.join(file), value).map_err(|source| CgroupError::Write {
        cgroup: cgroup.to_owned(),
        file,
        value: value.to_owned(),
        error: source,
    })
}

/// The processes listed in `<cgroup>/cgroup.procs`; none when the cgroup is gone.
pub(super) fn read_procs(cgroup: &Path) -> Result<Vec<u32>, CgroupError> {
    let listed = match read(cgroup, "cgroup.procs") {
        Ok(listed) => listed,
        Err(CgroupError::Read { error: source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(Vec::new());
        }
        Err(error) => return Err(error),
    };
    let mut pids = Vec::new();
    for line in listed.lines() {
        match line.trim().parse::<u32>() {
            // 0 stands for a process the reader cannot see; it must never reach kill(2),
            // where 0 means "my whole process group".
            Ok(0) => {}
            Ok(pid) => pids.push(pid),
            Err(_) => {
                return Err(CgroupError::Parse {
                    cgroup: cgroup.to_owned(),
                    file: "cgroup.procs",
                    content: line.to_owned(),
                    expected: "one process id per line",
                });
            }
        }
    }
    Ok(pids)
}

/// A limit: a number, or `None` for no limit (`max` on v2, `-1` on v1).
pub(super) fn parse_limit(
    cgroup: &Path,
    file: &'static str,
    text: &str,
) -> Result<Option<u64>, CgroupError> {
    match text.trim() {
        "max" | "-1" => Ok(None),
        number => number.parse().map(Some).map_err(|_| CgroupError::Parse {
            cgroup: cgroup.to_owned(),
            file,
            content: text.to_owned(),
            expected: "a number, `max` or -1",
        }),
    }
}

/// `<cgroup>/<file>` read as a limit.
pub(super) fn read_limit(cgroup: &Path, file: &'static str) -> Result<Option<u64>, CgroupError> {
    parse_limit(cgroup, file, &read(cgroup, file)?)
}
