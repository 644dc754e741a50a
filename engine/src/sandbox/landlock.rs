//! Landlock: the part of the file system a worker can still reach once it has confined
//! itself, built from the manifest's `fs_read`/`fs_write` and what libc and the dynamic
//! loader need.
//!
//! A hard requirement, never best effort: every file-system access right of Landlock ABI
//! [`REQUIRED_ABI`] is handled (denied unless a rule grants it), plus its two scopes, and if
//! the kernel cannot enforce all of that, [`restrict`] fails instead of confining less. ABI 6
//! (Linux 6.12) because it adds the scopes: no connecting to abstract UNIX sockets and no
//! signals outside the worker's own Landlock domain. ABI 7 adds only audit-logging flags,
//! whose defaults (log denials of this program) are what the engine wants, so requiring it
//! would refuse 6.12 hosts for nothing.
//!
//! Network access is not handled here (Landlock ABI 4 could): the seccomp filter and the
//! empty network namespace already cover it, and TCP port rules would add nothing.
//!
//! Landlock governs paths resolved after [`restrict`]. Descriptors opened before (the
//! sealed library memfd, inherited sockets, a terminal) keep the access they were opened
//! with, and files on internal kernel mounts (memfds) are not governed at all: a worker can
//! confine itself completely and then `dlopen("/proc/self/fd/N")` its sealed library.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use ::landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat};
use serde::{Deserialize, Serialize};

use super::seccomp::FileAccess;

/// The Landlock ABI whose access rights and scopes [`restrict`] requires and enforces.
pub const REQUIRED_ABI: u32 = 6;
const HANDLED_ABI: ABI = ABI::V6;

/// `LANDLOCK_CREATE_RULESET_VERSION` from `<linux/landlock.h>`: ask for the ABI version.
const CREATE_RULESET_VERSION: libc::c_uint = 1;

/// What a confined worker may reach in the file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsPolicy {
    /// The manifest's `fs_read`: read files, list directories, execute.
    pub read: Vec<PathBuf>,
    /// The manifest's `fs_write`: everything file-related — read, write, truncate, create
    /// and remove files, directories, links, sockets and pipes, rename across directories.
    pub write: Vec<PathBuf>,
    /// What the dynamic loader and libc need; the host's, not the plugin's, choice.
    pub system_read: Vec<PathBuf>,
}

/// Read-only system paths every worker gets: shared libraries and the loader's cache
/// (`dlopen` of the plugin's dependencies), time zone data, and the harmless character
/// devices. Not `/etc` as a whole (`/etc/passwd` and the host's configuration stay out of
/// reach), not `/proc` or `/sys`: glibc falls back when it cannot read
/// `/sys/devices/system/cpu/online`, and procfs inodes come and go, so rules on them would
/// not hold anyway.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
];

/// What name resolution reads, for a plugin granted `network`.
const RESOLVER_READ: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/host.conf",
];

impl FsPolicy {
    /// No plugin paths; `SYSTEM_READ` as the system paths.
    pub fn system_defaults() -> Self {
        Self {
            read: Vec::new(),
            write: Vec::new(),
            system_read: SYSTEM_READ.iter().map(PathBuf::from).collect(),
        }
    }

    /// The policy a worker confines itself with: the manifest's paths, plus its private
    /// `/tmp` as writable when it has one (a mount namespace of its own), plus what name
    /// resolution reads when it has the network. The engine builds the same policy to check
    /// the file calls the worker's filter shows it.
    pub fn for_worker(
        fs_read: &[PathBuf],
        fs_write: &[PathBuf],
        private_tmp: bool,
        network: bool,
    ) -> Self {
        let mut write = fs_write.to_vec();
        if private_tmp {
            write.push(PathBuf::from("/tmp"));
        }
        let policy = Self {
            read: fs_read.to_vec(),
            write,
            ..Self::system_defaults()
        };
        if network {
            policy.with_resolver_files()
        } else {
            policy
        }
    }

    /// Whether this policy grants `access` to `path` (absolute, normalised), judged the way
    /// Landlock does as far as names tell: beneath a granted path. A name may be a symbolic
    /// link whose target is granted, so before calling a path denied its deepest existing
    /// ancestor is resolved too (on the host's file system, which the worker shares but for
    /// its private `/tmp` and `/proc`). Paths under `/proc` and `/dev/fd` are not judged:
    /// `/proc/self/fd/N` names descriptors (pipes, the sealed library) that no path rule
    /// governs; Landlock decides those alone.
    pub fn judge(&self, path: &Path, access: FileAccess) -> PathVerdict {
        if path.starts_with("/proc") || path.starts_with("/dev/fd") {
            return PathVerdict::NotJudged;
        }
        let granted: Vec<&PathBuf> = match access {
            FileAccess::Write => self.write.iter().collect(),
            FileAccess::Read => self
                .system_read
                .iter()
                .chain(&self.read)
                .chain(&self.write)
                .collect(),
        };
        if granted.iter().any(|rule| path.starts_with(rule)) {
            return PathVerdict::Granted;
        }
        if path.starts_with("/tmp") {
            // The worker's /tmp is not the engine's: nothing to resolve here.
            return PathVerdict::Denied;
        }
        // The path comes with its links resolved as the worker sees them (the notified
        // call's operands are); a rule is a host path, whose own links Landlock resolved
        // when it opened it.
        let granted_resolved = granted.iter().any(|rule| {
            let rule = std::fs::canonicalize(rule).unwrap_or_else(|_| (*rule).clone());
            path.starts_with(&rule)
        });
        if granted_resolved {
            PathVerdict::Granted
        } else {
            PathVerdict::Denied
        }
    }

    /// Adds the resolver's configuration files (`/etc/resolv.conf`, `/etc/hosts`, …) to
    /// the system paths, for a plugin granted `network`.
    #[must_use]
    pub fn with_resolver_files(mut self) -> Self {
        self.system_read
            .extend(RESOLVER_READ.iter().map(PathBuf::from));
        self
    }
}

/// What [`FsPolicy::judge`] concludes about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathVerdict {
    Granted,
    Denied,
    /// Not decidable from the name; Landlock decides alone.
    NotJudged,
}

/// Which list of the policy a path came from, and so what it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathAccess {
    SystemRead,
    Read,
    Write,
}

/// A path the ruleset grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedPath {
    pub path: PathBuf,
    pub access: PathAccess,
}

/// A policy path that could not be granted because it does not exist on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedPath {
    pub path: PathBuf,
    pub access: PathAccess,
    /// Why, for the worker's handshake: "does not exist on this host".
    pub reason: String,
}

/// What [`restrict`] enforced on the calling thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockStatus {
    /// The kernel's Landlock ABI version.
    pub abi: u32,
    /// The ABI whose access rights and scopes are enforced ([`REQUIRED_ABI`]).
    pub handled_abi: u32,
    /// Connecting to abstract UNIX sockets and signalling processes outside the worker's
    /// Landlock domain are denied.
    pub scoped: bool,
    pub granted: Vec<GrantedPath>,
    pub skipped: Vec<SkippedPath>,
}

/// Why Landlock could not confine the calling thread. Nothing is enforced when one of
/// these is returned, except `no_new_privs` if the final step failed.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error(
        "Landlock is not available on this kernel ({reason}); Plugboard requires Landlock ABI {required} (Linux 6.12) or newer"
    )]
    Unavailable { reason: String, required: u32 },
    #[error(
        "this kernel's Landlock ABI is {kernel}; Plugboard requires ABI {required} (Linux 6.12) or newer for its file-system rights and scopes"
    )]
    AbiTooOld { kernel: u32, required: u32 },
    #[error("Landlock policy path `{path}` is relative; expected an absolute path")]
    RelativePath { path: PathBuf },
    #[error("cannot open `{path}` to grant it under Landlock: {error}")]
    OpenPath { path: PathBuf, error: Errno },
    #[error("cannot inspect `{path}` to grant it under Landlock: {error}")]
    StatPath { path: PathBuf, error: Errno },
    #[error("building the Landlock ruleset failed while {step}: {error}")]
    Ruleset { step: String, error: RulesetError },
    #[error(
        "Landlock reported the ruleset {status}, no_new_privs {no_new_privs}; expected it fully enforced with no_new_privs set"
    )]
    NotEnforced { status: String, no_new_privs: bool },
}

/// The kernel's Landlock ABI version, or why Landlock cannot be used. Changes nothing.
pub fn check_support() -> Result<u32, LandlockError> {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the kernel requires a null attribute
    // pointer and size 0, reads nothing and creates nothing; it only returns the version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if version < 0 {
        let error = io::Error::last_os_error();
        let reason = match error.raw_os_error() {
            Some(libc::ENOSYS) => "not built into the kernel (ENOSYS)".to_owned(),
            Some(libc::EOPNOTSUPP) => {
                "built in but not enabled at boot; add it to the lsm= list (EOPNOTSUPP)".to_owned()
            }
            _ => error.to_string(),
        };
        return Err(LandlockError::Unavailable {
            reason,
            required: REQUIRED_ABI,
        });
    }
    let abi = u32::try_from(version).map_err(|_| LandlockError::Unavailable {
        reason: format!("the kernel reported ABI version {version}"),
        required: REQUIRED_ABI,
    })?;
    if abi < REQUIRED_ABI {
        return Err(LandlockError::AbiTooOld {
            kernel: abi,
            required: REQUIRED_ABI,
        });
    }
    Ok(abi)
}

/// One policy path, opened: the rule is attached to what the descriptor names, so a path
/// renamed or replaced after this point does not change what is granted.
struct OpenedPath {
    path: PathBuf,
    access: PathAccess,
    fd: OwnedFd,
    is_directory: bool,
}

/// Restricts the calling thread (and the threads and processes it creates afterwards) to
/// `policy`, with every ABI [`REQUIRED_ABI`] right handled and both scopes on. Sets
/// `no_new_privs`. A path that does not exist is skipped and listed in the status; a path
/// that exists but cannot be opened is an error, and so is a relative one.
///
/// Landlock confines one thread: call it on the thread that goes on to load the plugin,
/// before that thread creates any other.
pub fn restrict(policy: &FsPolicy) -> Result<LandlockStatus, LandlockError> {
    let abi = check_support()?;

    let mut opened = Vec::new();
    let mut skipped = Vec::new();
    let lists = [
        (&policy.system_read, PathAccess::SystemRead),
        (&policy.read, PathAccess::Read),
        (&policy.write, PathAccess::Write),
    ];
    for (paths, access) in lists {
        for path in paths {
            match open_policy_path(path)? {
                Ok(fd) => {
                    let is_directory = is_directory(path, &fd)?;
                    opened.push(OpenedPath {
                        path: path.clone(),
                        access,
                        fd,
                        is_directory,
                    });
                }
                Err(reason) => skipped.push(SkippedPath {
                    path: path.clone(),
                    access,
                    reason,
                }),
            }
        }
    }

    let ruleset_error = |step: &str| {
        let step = step.to_owned();
        move |source| LandlockError::Ruleset {
            step,
            error: source,
        }
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(HANDLED_ABI))
        .map_err(ruleset_error("handling every file-system access right"))?
        .scope(Scope::from_all(HANDLED_ABI))
        .map_err(ruleset_error("scoping abstract UNIX sockets and signals"))?
        .create()
        .map_err(ruleset_error("creating the ruleset"))?;

    let mut granted = Vec::with_capacity(opened.len());
    for OpenedPath {
        path,
        access,
        fd,
        is_directory,
    } in opened
    {
        let mut rights = access_rights(access);
        if !is_directory {
            // Directory rights on a file are an error under a hard requirement.
            rights &= AccessFs::from_file(HANDLED_ABI);
        }
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(ruleset_error(&format!("granting `{}`", path.display())))?;
        granted.push(GrantedPath { path, access });
    }

    let status = ruleset
        .restrict_self()
        .map_err(ruleset_error("restricting the calling thread"))?;
    if status.ruleset != RulesetStatus::FullyEnforced || !status.no_new_privs {
        return Err(LandlockError::NotEnforced {
            status: format!("{:?}", status.ruleset),
            no_new_privs: status.no_new_privs,
        });
    }
    Ok(LandlockStatus {
        abi,
        handled_abi: REQUIRED_ABI,
        scoped: true,
        granted,
        skipped,
    })
}

/// Opens `path` as a location only (`O_PATH`: no read access needed, symlinks followed).
/// `Ok(Err(reason))` when it does not exist here: a manifest path missing on this host
/// cannot be granted, and that is reported, not fatal.
fn open_policy_path(path: &Path) -> Result<Result<OwnedFd, String>, LandlockError> {
    if !path.is_absolute() {
        return Err(LandlockError::RelativePath {
            path: path.to_owned(),
        });
    }
    match open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(Ok(fd)),
        Err(Errno::ENOENT) => Ok(Err("does not exist on this host".to_owned())),
        Err(Errno::ENOTDIR) => Ok(Err(
            "does not exist on this host (a parent is not a directory)".to_owned(),
        )),
        Err(source) => Err(LandlockError::OpenPath {
            path: path.to_owned(),
            error: source,
        }),
    }
}

fn is_directory(path: &Path, fd: &OwnedFd) -> Result<bool, LandlockError> {
    let stat = fstat(fd).map_err(|source| LandlockError::StatPath {
        path: path.to_owned(),
        error: source,
    })?;
    Ok(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// What a path from each policy list grants: reading is reading files, listing
/// directories and executing (`execve`; mapping a library only needs reading); writing is
/// every right there is.
fn access_rights(access: PathAccess) -> BitFlags<AccessFs> {
    match access {
        PathAccess::SystemRead | PathAccess::Read => AccessFs::from_read(HANDLED_ABI),
        PathAccess::Write => AccessFs::from_all(HANDLED_ABI),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths come resolved (the notified call's operands are, in the worker's view); a
    /// rule naming a link grants where the link leads, as Landlock does.
    #[test]
    fn paths_are_judged_beneath_granted_paths_and_rules_through_their_links() {
        // Not under /tmp: a worker's /tmp is its own, so names there are judged as they are.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let granted = dir.path().join("granted");
        std::fs::create_dir(&granted).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&granted, &link).unwrap();
        let policy = FsPolicy::for_worker(&[], std::slice::from_ref(&granted), false, false);
        let with_private_tmp = FsPolicy::for_worker(&[], &[], true, false);

        assert_eq!(
            policy.judge(&granted.join("new"), FileAccess::Write),
            PathVerdict::Granted
        );
        assert_eq!(
            with_private_tmp.judge(Path::new("/tmp/x"), FileAccess::Write),
            PathVerdict::Granted
        );
        let by_link = FsPolicy::for_worker(&[], std::slice::from_ref(&link), false, false);
        assert_eq!(
            by_link.judge(&granted.join("new"), FileAccess::Write),
            PathVerdict::Granted
        );
        assert_eq!(
            policy.judge(&dir.path().join("outside"), FileAccess::Write),
            PathVerdict::Denied
        );
        assert_eq!(
            policy.judge(Path::new("/var/tmp/x"), FileAccess::Write),
            PathVerdict::Denied
        );
        // System paths are readable, not writable.
        assert_eq!(
            policy.judge(Path::new("/usr/lib/x"), FileAccess::Read),
            PathVerdict::Granted
        );
        assert_eq!(
            policy.judge(Path::new("/usr/lib/x"), FileAccess::Write),
            PathVerdict::Denied
        );
        assert_eq!(
            policy.judge(Path::new("/etc/passwd"), FileAccess::Read),
            PathVerdict::Denied
        );
        assert_eq!(
            policy.judge(Path::new("/proc/self/fd/4"), FileAccess::Write),
            PathVerdict::NotJudged
        );
    }

    #[test]
    fn relative_paths_are_refused_before_anything_is_restricted() {
        let policy = FsPolicy {
            read: vec![PathBuf::from("relative/dir")],
            ..FsPolicy::default()
        };
        // Runs on a throw-away thread: a success would confine it.
        let result = std::thread::spawn(move || restrict(&policy))
            .join()
            .unwrap();
        match result {
            Err(LandlockError::RelativePath { path }) => {
                assert_eq!(path, Path::new("relative/dir"));
            }
            Err(LandlockError::Unavailable { .. } | LandlockError::AbiTooOld { .. }) => {}
            other => panic!("expected RelativePath, got {other:?}"),
        }
    }

    #[test]
    fn write_grants_read_and_every_write_right() {
        let write = access_rights(PathAccess::Write);
        for right in [
            AccessFs::ReadFile,
            AccessFs::WriteFile,
            AccessFs::Truncate,
            AccessFs::MakeReg,
            AccessFs::MakeDir,
            AccessFs::RemoveFile,
            AccessFs::RemoveDir,
            AccessFs::Refer,
        ] {
            assert!(write.contains(right), "{right:?}");
        }
        let read = access_rights(PathAccess::Read);
        assert_eq!(
            read,
            AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir
        );
    }

    #[test]
    fn system_defaults_cover_the_loader_but_not_etc() {
        let defaults = FsPolicy::system_defaults();
        assert!(defaults.read.is_empty() && defaults.write.is_empty());
        for needed in [
            "/usr",
            "/lib",
            "/etc/ld.so.cache",
            "/dev/null",
            "/dev/urandom",
        ] {
            assert!(
                defaults.system_read.contains(&PathBuf::from(needed)),
                "{needed}"
            );
        }
        assert!(
            !defaults
                .system_read
                .iter()
                .any(|path| path == Path::new("/etc"))
        );
        let with_resolver = FsPolicy::system_defaults().with_resolver_files();
        assert!(
            with_resolver
                .system_read
                .contains(&PathBuf::from("/etc/resolv.conf"))
        );
    }
}
