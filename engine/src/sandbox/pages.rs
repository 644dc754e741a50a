//! Zeroed memory straight from the kernel, for buffers that are large but mostly unused:
//! an anonymous private mapping costs nothing until a page is written, and goes back to the
//! kernel when dropped.
//!
//! Why not a `Vec`: glibc serves a large allocation from a heap arena once its dynamic
//! mmap threshold has risen past that size (it rises the first time such a block is
//! freed), and then zeroes it there — every page resident — and the arena fragments as
//! workers come and go. Measured with the IPC layer's 1 MiB receive buffers (one per
//! receiving thread): about 1 MiB of RSS kept per worker started, for good, until these
//! buffers were mapped instead.

use std::num::NonZeroUsize;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// `len` zeroed bytes in a mapping of their own.
#[derive(Debug)]
pub struct ZeroPages {
    start: NonNull<u8>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is owned by this value alone (nothing else has its address), so
// moving it to another thread moves sole access with it.
unsafe impl Send for ZeroPages {}

impl ZeroPages {
    /// Maps `len` bytes (at least 1), readable and writable, not reserved against swap.
    pub fn new(len: usize) -> nix::Result<Self> {
        let len = NonZeroUsize::new(len.max(1)).ok_or(nix::Error::EINVAL)?;
        // SAFETY: a new private anonymous mapping at an address the kernel picks cannot
        // overlap memory Rust already owns; the result is checked before use.
        let start = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }?;
        Ok(Self {
            start: start.cast(),
            len,
        })
    }
}

impl Deref for ZeroPages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `start` is a live mapping of `len` readable bytes that only this value
        // owns; anonymous mappings are zero-initialised by the kernel.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len.get()) }
    }
}

impl DerefMut for ZeroPages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len.get()) }
    }
}

impl Drop for ZeroPages {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with exactly this address and length, and no
        // reference into it outlives `self`.
        let _ = unsafe { munmap(self.start.cast(), self.len.get()) };
    }
}

/// Gives the free pages inside malloc's heaps back to the kernel (`malloc_trim(0)`); true
/// when there were any. glibc returns memory on its own only from the top of a heap, so
/// what a stopped worker's state leaves free in the middle stays resident until this runs.
/// Takes well under a millisecond with a hundred workers.
pub fn release_free_heap() -> bool {
    // SAFETY: malloc_trim only walks malloc's own free lists, under its arena locks; it
    // changes no memory that is allocated.
    unsafe { libc::malloc_trim(0) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_zeroed_writable_and_cost_nothing_until_written() {
        let mut pages = ZeroPages::new(1 << 20).unwrap();
        assert_eq!(pages.len(), 1 << 20);
        assert!(pages.iter().step_by(4096).all(|&byte| byte == 0));
        pages[12345] = 7;
        assert_eq!(pages[12345], 7);
        let moved = std::thread::spawn(move || pages[12345]).join().unwrap();
        assert_eq!(moved, 7);
    }

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .unwrap()
            .unwrap();
        pages * u64::try_from(page_size).unwrap()
    }

    #[test]
    fn freed_heap_memory_in_the_middle_of_a_heap_goes_back_to_the_kernel() {
        // On a thread of its own, so that the blocks share one arena and the kept last
        // block stops glibc from trimming the freed ones off the heap's top by itself.
        std::thread::spawn(|| {
            const BLOCK: usize = 64 * 1024;
            let mut blocks: Vec<Vec<u8>> = (0..512).map(|_| vec![1_u8; BLOCK]).collect();
            let last = blocks.pop();
            let before = resident_bytes();
            drop(blocks);
            let freed = resident_bytes();
            assert!(release_free_heap());
            let after = resident_bytes();
            drop(last);
            // 32 MiB were freed in the middle of one heap (a thread's arena grows in heaps
            // of up to 64 MiB): free keeps them resident, the trim gives back at least half.
            assert!(
                freed.saturating_sub(after) >= 16 << 20,
                "resident {before} with the blocks, {freed} after freeing them, {after} after the trim"
            );
        })
        .join()
        .unwrap();
    }
}
