//! The paths of a notified file-system call (`openat`, `mkdir`, `rename`, …), read from the
//! suspended caller's memory so that the engine can check them against the worker's
//! file-system rules and name them in its report.
//!
//! What is read can change after the engine read it (another thread of the plugin may
//! rewrite the string before the kernel does): the engine only ever *denies* on what it
//! read, and what it lets through the kernel checks again with Landlock. A path read here
//! is therefore evidence for a report, never a permission — but for an inotify watch,
//! which no other mechanism checks: the engine then adds the watch itself, on the path it
//! read (`watch`), and never lets the call through.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a call does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    Read,
    /// Writes, truncates, creates, removes, renames or links.
    Write,
}

impl FileAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            FileAccess::Read => "read",
            FileAccess::Write => "write",
        }
    }
}

/// One path argument of a file-system call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileOperand {
    /// Absolute, with its symbolic links and `..` resolved as the caller would (see
    /// `in_worker_view`), as the caller's mount namespace names it; `None` when it could
    /// not be read (the caller died, a bad pointer, a descriptor that is gone) or needs
    /// more lookups than the engine spends on one.
    pub path: Option<PathBuf>,
    /// The path as the caller gave it, made absolute, its links not resolved (what an
    /// engine that makes the call itself walks again as the caller would).
    #[serde(skip)]
    pub named: Option<PathBuf>,
    pub access: FileAccess,
    /// The call creates the path's last component (`O_CREAT`, `mkdir`, the new name of a
    /// `rename`), so the rights that count are those on its parent directory.
    pub creates: bool,
}

/// Whether the filter routes `syscall` to the engine as a file-system call (its
/// notifications carry [`FileOperand`]s).
pub fn is_file_syscall(syscall: &str) -> bool {
    !specs(syscall, &[0; 6]).is_empty()
}

/// Where in the registers one path operand is.
struct Spec {
    /// The register with the directory descriptor a relative path starts from; `None`:
    /// the working directory.
    dirfd: Option<usize>,
    path: usize,
    access: FileAccess,
    creates: bool,
}

const fn spec(dirfd: Option<usize>, path: usize, access: FileAccess, creates: bool) -> Spec {
    Spec {
        dirfd,
        path,
        access,
        creates,
    }
}

/// The path operands of `syscall` (x86-64 and arm64 argument order; both put the flags of
/// `open` second and those of `openat` third).
fn specs(syscall: &str, args: &[u64; 6]) -> Vec<Spec> {
    use FileAccess::{Read, Write};
    let open_access = |flags: u64| {
        let flags = flags & 0xffff_ffff;
        let accmode = flags & u64::from(libc::O_ACCMODE.unsigned_abs());
        let creates = flags & u64::from(libc::O_CREAT.unsigned_abs()) != 0;
        let truncates = flags & u64::from(libc::O_TRUNC.unsigned_abs()) != 0;
        let writes = accmode != u64::from(libc::O_RDONLY.unsigned_abs()) || creates || truncates;
        (if writes { Write } else { Read }, creates)
    };
    match syscall {
        "open" => {
            let (access, creates) = open_access(args[1]);
            vec![spec(None, 0, access, creates)]
        }
        "openat" => {
            let (access, creates) = open_access(args[2]);
            vec![spec(Some(0), 1, access, creates)]
        }
        "creat" | "mkdir" => vec![spec(None, 0, Write, true)],
        "mkdirat" => vec![spec(Some(0), 1, Write, true)],
        "truncate" | "rmdir" | "unlink" => vec![spec(None, 0, Write, false)],
        "unlinkat" => vec![spec(Some(0), 1, Write, false)],
        "rename" => vec![spec(None, 0, Write, false), spec(None, 1, Write, true)],
        "renameat" | "renameat2" => vec![
            spec(Some(0), 1, Write, false),
            spec(Some(2), 3, Write, true),
        ],
        // The new name; the target of a symbolic link is only text.
        "link" | "symlink" => vec![spec(None, 1, Write, true)],
        "linkat" => vec![spec(Some(2), 3, Write, true)],
        "symlinkat" => vec![spec(Some(1), 2, Write, true)],
        // Landlock does not cover inotify: a watch reads names and activity, so it is
        // judged as a read.
        "inotify_add_watch" => vec![spec(None, 1, Read, false)],
        _ => Vec::new(),
    }
}

/// The path operands of a call by thread `pid` (host pid) to `syscall` with `args`, read
/// from its memory while it is suspended in the filter. Empty for other calls.
pub(super) fn operands(pid: u32, syscall: &str, args: &[u64; 6]) -> Vec<FileOperand> {
    let specs = specs(syscall, args);
    if specs.is_empty() {
        return Vec::new();
    }
    let memory = File::open(format!("/proc/{pid}/mem")).ok();
    let follows_last = follows_last_link(syscall, args);
    // These fail with EEXIST on a name that exists, whatever the grants: the kernel's to
    // answer (`mkdir -p` walks existing parents), not a denial to report.
    let fails_on_existing = matches!(
        syscall,
        "mkdir" | "mkdirat" | "link" | "linkat" | "symlink" | "symlinkat"
    );
    let exists = |path: &Path| {
        std::fs::symlink_metadata(
            Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path)),
        )
        .is_ok()
    };
    specs
        .into_iter()
        .map(|spec| {
            let raw = memory
                .as_ref()
                .and_then(|memory| read_c_string(memory, args[spec.path]));
            // A trailing `/` (or `/.`) makes the kernel follow a link in the last name
            // whatever the call's flags say.
            let follows_last = follows_last
                || raw
                    .as_deref()
                    .is_some_and(|raw| raw.ends_with(b"/") || raw.ends_with(b"/."));
            let named = raw.and_then(|raw| absolute(pid, spec.dirfd.map(|arg| args[arg]), &raw));
            let path = named
                .as_deref()
                .and_then(|path| in_worker_view(pid, path, follows_last))
                .filter(|path| !(fails_on_existing && spec.creates && exists(path)));
            FileOperand {
                path,
                named,
                access: spec.access,
                creates: spec.creates,
            }
        })
        .collect()
}

/// The NUL-terminated string at `address` in the caller's memory, at most `PATH_MAX`
/// bytes. Read a page at a time: a read that crosses into an unmapped page fails whole.
fn read_c_string(memory: &File, address: u64) -> Option<Vec<u8>> {
    const PAGE: u64 = 4096;
    const PATH_MAX: usize = 4096;
    if address == 0 {
        return None;
    }
    let mut bytes = Vec::new();
    let mut at = address;
    while bytes.len() < PATH_MAX {
        let to_page_end = PAGE - at % PAGE;
        let mut chunk = vec![0u8; usize::try_from(to_page_end).ok()?];
        let read = memory.read_at(&mut chunk, at).ok()?;
        if read == 0 {
            return None;
        }
        chunk.truncate(read);
        if let Some(end) = chunk.iter().position(|&byte| byte == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            return Some(bytes);
        }
        bytes.extend_from_slice(&chunk);
        at = at.checked_add(read as u64)?;
    }
    None
}

/// Whether the call follows a symbolic link in its path's last component: an open does,
/// unless `O_NOFOLLOW`, or `O_CREAT | O_EXCL` (which fails on any existing name); so does
/// `creat` and `truncate`; calls that change names act on the link itself.
fn follows_last_link(syscall: &str, args: &[u64; 6]) -> bool {
    let flags = match syscall {
        "open" => args[1],
        "openat" => args[2],
        "creat" | "truncate" => return true,
        "inotify_add_watch" => return args[2] & u64::from(libc::IN_DONT_FOLLOW) == 0,
        _ => return false,
    };
    let set = |flag: libc::c_int| flags & u64::from(flag.unsigned_abs()) != 0;
    let creates_new = set(libc::O_CREAT) && set(libc::O_EXCL);
    !(set(libc::O_NOFOLLOW) || creates_new)
}

/// `raw` made absolute: against the directory descriptor in `dirfd` (a register; `AT_FDCWD`
/// or `None` means the working directory) of process `pid`. `..` is left for
/// [`in_worker_view`], which resolves it after the links before it, as the kernel does.
fn absolute(pid: u32, dirfd: Option<u64>, raw: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // An empty name is the kernel's ENOENT to give (or, with AT_EMPTY_PATH, the descriptor's
    // own file): nothing to judge by name.
    if raw.is_empty() {
        return None;
    }
    let path = Path::new(std::ffi::OsStr::from_bytes(raw));
    if path.is_absolute() {
        return Some(path.to_owned());
    }
    // The kernel reads the descriptor as an `int`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let base = match dirfd.map(|register| register as u32 as i32) {
        None | Some(libc::AT_FDCWD) => std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?,
        Some(fd) => std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?,
    };
    base.is_absolute().then(|| base.join(path))
}

/// Symbolic links the kernel would follow for the worker's thread `pid`, followed: looked
/// up through its own root (`/proc/<pid>/root`, where its private `/tmp` and `/proc` are),
/// so that a link the plugin made in its `/tmp` to `/var/tmp` is judged as `/var/tmp`;
/// `..` taken after the links before it; its own `/proc/self` (or `thread-self`, or its
/// pid) read from the engine's side: `root`, `cwd` and `fd/N`, also under `task/<tid>`.
/// What does not exist (yet) is kept by name. `None` when the path needs more lookups than
/// the engine spends on one (it is then not judged: Landlock decides, unreported). Only
/// for the report: Landlock decides on what the kernel finds.
fn in_worker_view(pid: u32, path: &Path, follows_last: bool) -> Option<PathBuf> {
    const MAX_LINKS: usize = 40;
    // Each look walks the path from the root again: a hostile plugin's path of 2,000
    // components would cost the engine millions of lookups per call.
    const MAX_LOOKS: usize = 32;
    // And every name costs a little, `..` and the names links bring in too: 1,300 `..` in
    // each of a dozen links, resolved at 5,000 calls a second, kept an engine core busy.
    // Paths that really name files have far fewer.
    const MAX_NAMES: usize = 512;
    let mut looks = 0;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut pending = components_of(path);
    let mut names_left = MAX_NAMES.checked_sub(pending.len())?;
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        if resolved == Path::new("/proc")
            && name
                .as_encoded_bytes()
                .first()
                .is_some_and(u8::is_ascii_digit)
        {
            // A pid to compare reads the caller's status: a look like any other.
            looks += 1;
            if looks > MAX_LOOKS {
                return None;
            }
        }
        if resolved == Path::new("/proc") && is_own_process(pid, &name) {
            match own_process_link(pid, &mut pending) {
                // Its root is the host's root, seen through its own mounts.
                Some(OwnLink::Root) => resolved = PathBuf::from("/"),
                Some(OwnLink::Target(target)) => {
                    links += 1;
                    resolved = PathBuf::from("/");
                    names_left = prepend(&mut pending, &target, names_left)?;
                }
                // Another file of its /proc: kept by name (not judged).
                None => resolved.push(&name),
            }
            continue;
        }
        let candidate = resolved.join(&name);
        let last = pending.is_empty();
        // Links under /proc are magic (a process's fd, cwd, root): their text is no path
        // to follow (a memfd's reads `/memfd:x (deleted)`); the caller's own are read
        // above, others stay by name, not judged.
        let look = links < MAX_LINKS && (follows_last || !last) && !candidate.starts_with("/proc");
        if look {
            looks += 1;
            if looks > MAX_LOOKS {
                return None;
            }
        }
        let seen_from_engine = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        let link = look
            .then(|| std::fs::symlink_metadata(&seen_from_engine).ok())
            .flatten()
            .filter(|meta| meta.file_type().is_symlink())
            .and_then(|_| std::fs::read_link(&seen_from_engine).ok());
        match link {
            Some(target) => {
                links += 1;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                names_left = prepend(&mut pending, &target, names_left)?;
            }
            None => resolved = candidate,
        }
    }
    Some(resolved)
}

/// A path's names, `..` kept as names (`.` dropped).
fn components_of(path: &Path) -> std::collections::VecDeque<std::ffi::OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Puts `target`'s names before what is left to resolve, if they fit in `names_left`:
/// what is left of it then.
fn prepend(
    pending: &mut std::collections::VecDeque<std::ffi::OsString>,
    target: &Path,
    names_left: usize,
) -> Option<usize> {
    let names = components_of(target);
    let left = names_left.checked_sub(names.len())?;
    for name in names.into_iter().rev() {
        pending.push_front(name);
    }
    Some(left)
}

/// Where a link of the worker's own `/proc/<self>` leads.
enum OwnLink {
    Root,
    Target(PathBuf),
}

/// Whether `/proc/<name>` in the worker is the calling process itself: `self`,
/// `thread-self`, or its pid or thread id as its own pid namespace numbers them.
fn is_own_process(pid: u32, name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    if name == "self" || name == "thread-self" {
        return true;
    }
    if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_digit()) {
        return false;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|line| line.starts_with("NStgid:") || line.starts_with("NSpid:"))
        .filter_map(|line| line.split_whitespace().last())
        .any(|innermost| innermost == name)
}

/// After `/proc/<self>`: takes `root`, `cwd` or `fd/<n>` (optionally after `task/<tid>`)
/// from `pending` and says where it leads, read from the engine's side of the caller's
/// `/proc` (the engine sees no `/proc/self` of the worker's). `None`, with `pending` as it
/// was, for anything else.
fn own_process_link(
    pid: u32,
    pending: &mut std::collections::VecDeque<std::ffi::OsString>,
) -> Option<OwnLink> {
    let names: Vec<String> = pending
        .iter()
        .take(4)
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let skip = usize::from(names.first() == Some(&"task")) * 2;
    let (link, taken) = match names.get(skip..).unwrap_or_default() {
        ["root", ..] => (OwnLink::Root, skip + 1),
        ["cwd", ..] => (
            OwnLink::Target(std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?),
            skip + 1,
        ),
        ["fd", fd, ..] if fd.bytes().all(|byte| byte.is_ascii_digit()) => (
            OwnLink::Target(std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?),
            skip + 2,
        ),
        _ => return None,
    };
    if let OwnLink::Target(target) = &link {
        // Only a name that leads to the very file the link does: a pipe's or socket's name
        // is no path, and a memfd's (`/memfd:x (deleted)`) or shared memory's names a file
        // on a mount no path reaches (Landlock does not judge those either).
        let linked = names.get(skip..).and_then(|rest| match rest {
            ["cwd", ..] => std::fs::metadata(format!("/proc/{pid}/cwd")).ok(),
            ["fd", fd, ..] => std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok(),
            _ => None,
        })?;
        let named = std::fs::metadata(
            Path::new(&format!("/proc/{pid}/root")).join(target.strip_prefix("/").ok()?),
        )
        .ok()?;
        if !target.is_absolute() || (linked.dev(), linked.ino()) != (named.dev(), named.ino()) {
            return None;
        }
    }
    pending.drain(..taken);
    Some(link)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use nix::sys::memfd::{MFdFlags, memfd_create};

    use super::*;

    /// Through this process's own root, standing in for a worker's: links are followed
    /// where the kernel would, `..` after them, and its own `/proc/self` links are read.
    #[test]
    fn paths_are_judged_as_the_file_their_links_reach() {
        let pid = std::process::id();
        let view = |path: &Path, follows_last: bool| in_worker_view(pid, path, follows_last);
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/var/tmp", &link).unwrap();
        assert_eq!(
            view(&link.join("x"), false).unwrap(),
            Path::new("/var/tmp/x")
        );
        // The last component: followed by an open, not by an unlink.
        assert_eq!(view(&link, true).unwrap(), Path::new("/var/tmp"));
        assert_eq!(view(&link, false).unwrap(), link);
        // `..` after a link leaves where the link led, not where its name is.
        assert_eq!(
            view(&link.join("../tmp/x"), true).unwrap(),
            Path::new("/var/tmp/x")
        );
        let relative = dir.path().join("up");
        std::os::unix::fs::symlink("./link/y", &relative).unwrap();
        assert_eq!(view(&relative, true).unwrap(), Path::new("/var/tmp/y"));
        for own in ["/proc/self/root/etc/x", "/proc/thread-self/root/etc/x"] {
            assert_eq!(
                view(Path::new(own), true).unwrap(),
                Path::new("/etc/x"),
                "{own}"
            );
        }
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            view(Path::new("/proc/self/cwd/x"), true).unwrap(),
            cwd.join("x")
        );
        assert_eq!(
            view(&PathBuf::from(format!("/proc/self/task/{pid}/cwd/x")), true).unwrap(),
            cwd.join("x")
        );
        let opened = File::open(dir.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
        assert_eq!(
            view(&PathBuf::from(format!("/proc/self/fd/{fd}/link/z")), true).unwrap(),
            Path::new("/var/tmp/z")
        );
        // A memfd's link names no path (`/memfd:x (deleted)`): kept under /proc, not judged.
        let memfd = memfd_create(c"plugboard-test", MFdFlags::MFD_CLOEXEC).unwrap();
        let through_fd = PathBuf::from(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
        assert_eq!(view(&through_fd, true).unwrap(), through_fd);
        // A loop ends (the kernel answers ELOOP): not judged.
        let looped = dir.path().join("loop");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        assert_eq!(view(&looped, true), None);
        // A path that needs more lookups than the engine spends on one is not judged.
        let deep: PathBuf = std::iter::once(link.clone())
            .chain(std::iter::repeat_n(PathBuf::from("a"), 2000))
            .collect();
        assert_eq!(view(&deep, true), None);
        // Names cost too, those a link brings in as well: a link whose target is 600 `..`
        // is not resolved; 400 `..` in the path itself still are.
        let climbing = dir.path().join("climbing");
        let target: PathBuf = std::iter::repeat_n(PathBuf::from(".."), 600)
            .chain(std::iter::once(PathBuf::from("var/tmp")))
            .collect();
        std::os::unix::fs::symlink(&target, &climbing).unwrap();
        assert_eq!(view(&climbing, true), None);
        let many_up: PathBuf = std::iter::once(PathBuf::from("/"))
            .chain(std::iter::repeat_n(PathBuf::from(".."), 400))
            .chain(std::iter::once(PathBuf::from("var/tmp")))
            .collect();
        assert_eq!(view(&many_up, true).unwrap(), Path::new("/var/tmp"));
    }

    /// Calls that fail with EEXIST on a name that exists, and an empty name, are the
    /// kernel's to answer: no path to judge.
    #[test]
    fn an_existing_name_to_create_and_an_empty_name_are_not_judged() {
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let existing = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let new =
            std::ffi::CString::new(dir.path().join("new").as_os_str().as_encoded_bytes()).unwrap();
        let mkdir =
            |name: &std::ffi::CStr| operands(pid, "mkdir", &[name.as_ptr() as u64, 0, 0, 0, 0, 0]);
        assert_eq!(mkdir(&existing)[0].path, None);
        assert_eq!(
            mkdir(&new)[0].path.as_deref(),
            Some(dir.path().join("new").as_path())
        );
        let empty = c"";
        let open = operands(
            pid,
            "open",
            &[
                empty.as_ptr() as u64,
                u64::from(libc::O_WRONLY.unsigned_abs()),
                0,
                0,
                0,
                0,
            ],
        );
        assert_eq!(open[0].path, None);
    }

    #[test]
    fn an_open_that_does_not_follow_its_last_link_is_judged_on_the_link() {
        let openat = |flags: libc::c_int| [0, 0, u64::from(flags.unsigned_abs()), 0, 0, 0];
        assert!(follows_last_link("openat", &openat(libc::O_WRONLY)));
        assert!(!follows_last_link(
            "openat",
            &openat(libc::O_WRONLY | libc::O_NOFOLLOW)
        ));
        assert!(!follows_last_link(
            "openat",
            &openat(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
        ));
        assert!(follows_last_link(
            "openat",
            &openat(libc::O_WRONLY | libc::O_CREAT)
        ));
        assert!(!follows_last_link("unlinkat", &[0; 6]));
    }

    #[test]
    fn opens_are_writes_when_they_write_create_or_truncate() {
        let flags = |flags: libc::c_int| {
            let spec = &specs("openat", &[0, 0, u64::from(flags.unsigned_abs()), 0, 0, 0])[0];
            (spec.access, spec.creates)
        };
        assert_eq!(flags(libc::O_RDONLY), (FileAccess::Read, false));
        assert_eq!(
            flags(libc::O_RDONLY | libc::O_CLOEXEC),
            (FileAccess::Read, false)
        );
        assert_eq!(flags(libc::O_WRONLY), (FileAccess::Write, false));
        assert_eq!(flags(libc::O_RDWR), (FileAccess::Write, false));
        assert_eq!(
            flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            (FileAccess::Write, true)
        );
        assert_eq!(
            flags(libc::O_RDONLY | libc::O_TRUNC),
            (FileAccess::Write, false)
        );
    }

    #[test]
    fn renames_name_both_paths_and_links_the_new_one() {
        let rename = specs("renameat2", &[0; 6]);
        assert_eq!(
            rename.iter().map(|s| (s.dirfd, s.path)).collect::<Vec<_>>(),
            [(Some(0), 1), (Some(2), 3)]
        );
        assert_eq!(specs("symlinkat", &[0; 6])[0].path, 2);
        assert!(is_file_syscall("unlinkat"));
        assert!(!is_file_syscall("socket"));
    }

    #[test]
    fn paths_are_read_from_the_callers_memory_and_made_absolute() {
        // This process stands in for the suspended caller: its own memory and cwd.
        let pid = std::process::id();
        let raw = c"relative/../file.txt";
        let address = raw.as_ptr() as u64;
        let read = operands(pid, "open", &[address, 0, 0, 0, 0, 0]);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            read[0].path.as_deref(),
            Some(cwd.join("file.txt").as_path())
        );
        assert_eq!(read[0].access, FileAccess::Read);

        let absolute = c"/var/tmp/x";
        let dir = File::open("/").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let created = operands(
            pid,
            "openat",
            &[
                u64::from(fd.unsigned_abs()),
                absolute.as_ptr() as u64,
                u64::from((libc::O_WRONLY | libc::O_CREAT).unsigned_abs()),
                0,
                0,
                0,
            ],
        );
        assert_eq!(created[0].path.as_deref(), Some(Path::new("/var/tmp/x")));
        assert!(created[0].creates);
        // A bad pointer is no path, not a failure.
        assert_eq!(operands(pid, "unlink", &[8, 0, 0, 0, 0, 0])[0].path, None);
    }
}
