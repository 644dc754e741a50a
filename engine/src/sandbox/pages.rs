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
}
