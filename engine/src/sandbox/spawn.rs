//! Starting a worker process with exactly the descriptors it is given: `posix_spawn` (no
//! copy of the engine's memory, the parent resumes once the child has exec'd) with file
//! actions that put each passed descriptor at its number and close every other one in the
//! child — including descriptors the engine's own process inherited without close-on-exec
//! from whoever started it, which close-on-exec alone would let through.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr;

use nix::errno::Errno;
use nix::unistd::Pid;

/// `posix_spawn`'s initialised file actions, destroyed when dropped.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> nix::Result<Self> {
        let mut actions = MaybeUninit::uninit();
        // SAFETY: init writes an initialised object into the storage it is given.
        Errno::result(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
        // SAFETY: initialised by the successful call above.
        Ok(Self(unsafe { actions.assume_init() }))
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` and destroyed once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&raw mut self.0) };
    }
}

/// `posix_spawn`'s initialised attributes, destroyed when dropped.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> nix::Result<Self> {
        let mut attributes = MaybeUninit::uninit();
        // SAFETY: init writes an initialised object into the storage it is given.
        Errno::result(unsafe { libc::posix_spawnattr_init(attributes.as_mut_ptr()) })?;
        // SAFETY: initialised by the successful call above.
        Ok(Self(unsafe { attributes.assume_init() }))
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` and destroyed once, here.
        unsafe { libc::posix_spawnattr_destroy(&raw mut self.0) };
    }
}

/// `posix_spawn`'s functions return the error number instead of setting `errno`.
fn spawn_result(code: libc::c_int) -> nix::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(code))
    }
}

/// A null-terminated array of pointers into `strings`, which must outlive it.
fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr().cast_mut())
        .chain(std::iter::once(ptr::null_mut()))
        .collect()
}

/// Spawns `binary` with arguments `args` (the first is its name) and environment `env`,
/// stdin `/dev/null`, each `(descriptor, number)` of `fds` dup'd to its number, and no
/// other descriptor: all from the highest number given plus one up are closed in the child.
/// Signals are unblocked and at their defaults (the engine's host may block or ignore
/// some). A source descriptor must not sit at a number another one is dup'd onto.
pub fn spawn_with_only(
    binary: &CStr,
    args: &[CString],
    env: &[CString],
    fds: &[(BorrowedFd<'_>, RawFd)],
) -> nix::Result<Pid> {
    let mut actions = FileActions::new()?;
    // SAFETY: `actions` is initialised; the path is a live C string copied by the call.
    spawn_result(unsafe {
        libc::posix_spawn_file_actions_addopen(
            &raw mut actions.0,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        )
    })?;
    for (fd, target) in fds {
        // SAFETY: `actions` is initialised; the descriptor stays open (borrowed) until
        // the spawn below has run the actions.
        spawn_result(unsafe {
            libc::posix_spawn_file_actions_adddup2(
                &raw mut actions.0,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                *target,
            )
        })?;
    }
    let highest = fds.iter().map(|(_, target)| *target).max().unwrap_or(0);
    // SAFETY: `actions` is initialised (glibc ≥ 2.34 closes the range with close_range).
    spawn_result(unsafe {
        libc::posix_spawn_file_actions_addclosefrom_np(&raw mut actions.0, highest + 1)
    })?;

    let mut attributes = Attributes::new()?;
    let mut no_signals = MaybeUninit::uninit();
    let mut all_signals = MaybeUninit::uninit();
    // SAFETY: each call initialises or reads the set or attributes it is given, all of
    // them live locals; the sets are initialised before they are read.
    unsafe {
        libc::sigemptyset(no_signals.as_mut_ptr());
        libc::sigfillset(all_signals.as_mut_ptr());
        spawn_result(libc::posix_spawnattr_setsigmask(
            &raw mut attributes.0,
            no_signals.as_ptr(),
        ))?;
        spawn_result(libc::posix_spawnattr_setsigdefault(
            &raw mut attributes.0,
            all_signals.as_ptr(),
        ))?;
        // The flags are `c_short` in the C API.
        #[allow(clippy::cast_possible_truncation)]
        spawn_result(libc::posix_spawnattr_setflags(
            &raw mut attributes.0,
            (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
        ))?;
    }

    let argv = pointers(args);
    let envp = pointers(env);
    let mut pid: libc::pid_t = 0;
    // SAFETY: `binary`, `argv` and `envp` are null-terminated and point into strings that
    // live across the call; `actions` and `attributes` are initialised.
    spawn_result(unsafe {
        libc::posix_spawn(
            &raw mut pid,
            binary.as_ptr(),
            &raw const actions.0,
            &raw const attributes.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    Ok(Pid::from_raw(pid))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::sys::wait::{WaitStatus, waitpid};

    use super::*;

    #[test]
    fn only_the_given_descriptors_reach_the_child_not_those_inherited_without_cloexec() {
        // A descriptor without close-on-exec, as a shell may leave one to the engine.
        let raw = fcntl(std::io::stderr().as_fd(), FcntlArg::F_DUPFD(200)).unwrap();
        // SAFETY: F_DUPFD just created `raw`; nothing else owns it.
        let inherited = unsafe { OwnedFd::from_raw_fd(raw) };
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let args = [
            c"sh".to_owned(),
            c"-c".to_owned(),
            c"ls /proc/self/fd".to_owned(),
        ];
        let pid = spawn_with_only(
            c"/bin/sh",
            &args,
            &[],
            &[(write.as_fd(), 1), (write.as_fd(), 2)],
        )
        .unwrap();
        drop(write);
        let mut listing = String::new();
        std::fs::File::from(read)
            .read_to_string(&mut listing)
            .unwrap();
        assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
        let numbers: Vec<i32> = listing.lines().map(|line| line.parse().unwrap()).collect();
        assert!(
            !numbers.contains(&inherited.as_raw_fd()),
            "descriptor {} reached the child: {numbers:?}",
            inherited.as_raw_fd()
        );
        // stdin (/dev/null), the two given, and the directory `ls` reads.
        assert_eq!(numbers.len(), 4, "{numbers:?}");
    }
}
