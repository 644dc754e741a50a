//! Kernel notices that a worker's memory limit counters may have moved, so the sampler
//! reads those counters only then.
//!
//! A v1 memory cgroup signals an eventfd registered through `cgroup.event_control` when
//! its usage crosses a threshold (either way) and when it meets the OOM killer. Every
//! worker's eventfds sit in one epoll set, so finding out which workers were noticed costs
//! the sampler one `epoll_wait` per sample for all of them.
//!
//! Why this is enough to see every limit hit: a charge fails (and `memory.failcnt` counts
//! it) only when usage plus the charge exceeds the limit, and no single charge is larger
//! than a PMD-sized folio (2 MiB on x86-64). With the threshold [`NEAR_LIMIT_MARGIN`] or a
//! quarter of the limit below it, whichever is more, usage must cross the threshold before
//! any hit, and that crossing is noticed; an OOM kill is noticed itself.
//!
//! Not covered: v1 `pids.events` raises no poll notification (on this host's kernel only
//! the v2 file does), so it is read at every sample; v2 hosts read their memory counters at
//! every sample too (`memory.events` does notify there — a later step).

use std::collections::HashSet;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::MonitorError;

/// The smallest distance between the threshold and the limit: twice the largest single
/// charge.
pub const NEAR_LIMIT_MARGIN: u64 = 4 << 20;

/// Where the threshold sits for a memory limit: `limit - max(limit / 4, NEAR_LIMIT_MARGIN)`
/// (0 for small limits: then the counters are read at every sample).
pub fn near_limit_threshold(limit: u64) -> u64 {
    limit.saturating_sub((limit / 4).max(NEAR_LIMIT_MARGIN))
}

/// One epoll set holding every watched worker's eventfds, each tagged with its token.
#[derive(Debug)]
pub struct LimitNotices {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

/// A worker's registered eventfds; dropped, they close and the kernel forgets the events.
#[derive(Debug)]
pub struct MemoryWatch {
    threshold: EventFd,
    oom: EventFd,
    pub(super) near_bytes: u64,
}

/// A failed registration step, for [`MonitorError::Notices`].
fn failed(step: impl Into<String>) -> impl FnOnce(nix::Error) -> MonitorError {
    move |errno| MonitorError::Notices {
        step: step.into(),
        error: errno.into(),
    }
}

impl LimitNotices {
    pub fn new() -> Result<Self, MonitorError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(failed("epoll_create"))?;
        Ok(Self {
            epoll,
            events: vec![EpollEvent::empty(); 64],
        })
    }

    /// Registers a v1 memory cgroup's threshold (on its kept-open `usage` file) and OOM
    /// events under `token`.
    pub(super) fn watch_memory(
        &self,
        memory_dir: &Path,
        usage: &std::fs::File,
        oom_control: &std::fs::File,
        limit: u64,
        token: u64,
    ) -> Result<MemoryWatch, MonitorError> {
        let near_bytes = near_limit_threshold(limit);
        let new_eventfd = || {
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(failed("eventfd"))
        };
        let (threshold, oom) = (new_eventfd()?, new_eventfd()?);
        let control = memory_dir.join("cgroup.event_control");
        for line in [
            format!(
                "{} {} {near_bytes}",
                threshold.as_fd().as_raw_fd(),
                usage.as_raw_fd()
            ),
            format!("{} {}", oom.as_fd().as_raw_fd(), oom_control.as_raw_fd()),
        ] {
            std::fs::write(&control, &line).map_err(|source| MonitorError::Notices {
                step: format!("writing {line:?} to {}", control.display()),
                error: source,
            })?;
        }
        for eventfd in [&threshold, &oom] {
            self.epoll
                .add(eventfd, EpollEvent::new(EpollFlags::EPOLLIN, token))
                .map_err(failed("epoll_ctl"))?;
        }
        Ok(MemoryWatch {
            threshold,
            oom,
            near_bytes,
        })
    }

    /// The tokens of the workers noticed since the last call, without waiting. Each
    /// noticed worker's eventfds must be drained (`MemoryWatch::drain`) or it shows again.
    pub fn noticed(&mut self) -> HashSet<u64> {
        let mut noticed = HashSet::new();
        loop {
            let Ok(count) = self.epoll.wait(&mut self.events, EpollTimeout::ZERO) else {
                return noticed;
            };
            noticed.extend(self.events[..count].iter().map(EpollEvent::data));
            if count < self.events.len() {
                return noticed;
            }
            // The buffer was full: more may be ready. Undrained eventfds stay ready, so a
            // larger buffer sees them all (and those already seen again).
            let larger = self.events.len() * 2;
            self.events.resize(larger, EpollEvent::empty());
        }
    }
}

impl MemoryWatch {
    /// Resets both eventfds (the counts do not matter: the counters are read).
    pub(super) fn drain(&self) {
        for eventfd in [&self.threshold, &self.oom] {
            let _ = nix::unistd::read(eventfd.as_fd(), &mut [0u8; 8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_leaves_a_quarter_of_the_limit_or_the_margin() {
        assert_eq!(near_limit_threshold(32 << 20), 24 << 20);
        assert_eq!(near_limit_threshold(8 << 20), 4 << 20);
        assert_eq!(near_limit_threshold(4 << 20), 0);
        assert_eq!(near_limit_threshold(1 << 30), 768 << 20);
    }
}
