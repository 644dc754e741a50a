//! The one deliberate memory fault of the zoo.
//!
//! Why not `raise(SIGSEGV)`, which needs no `unsafe`: the plugin runs as pid 1 of its
//! worker's pid namespace, and the kernel drops signals that pid 1 sends itself when their
//! action is the default one — a raised SIGSEGV would be ignored. Only a real fault (a
//! signal the kernel forces on the thread) ends pid 1, as it would end any other process.
#![allow(unsafe_code)]

/// An address in the first page, which is never mapped (`vm.mmap_min_addr`). Not null:
/// the standard library's debug checks would turn a null write into an abort (SIGABRT).
const UNMAPPED: usize = 0x10;

/// Writes to an unmapped address: the kernel delivers SIGSEGV and the process dies.
pub fn segfault() -> ! {
    let pointer = std::ptr::without_provenance_mut::<u8>(UNMAPPED);
    // SAFETY: none — this is the point. The write is deliberate undefined behaviour that
    // faults at once (the address is in the never-mapped first page), so the process dies
    // of SIGSEGV before anything could observe a consequence; `write_volatile` keeps the
    // compiler from removing or reordering the store.
    unsafe { pointer.write_volatile(1) };
    // Not reached; if the write somehow succeeded, still do not return into the host.
    std::process::abort()
}
