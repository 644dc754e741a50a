//! The host side of loading a plugin library: the verified bytes go into a sealed memfd
//! and are loaded from `/proc/self/fd/N`, so nothing can change between check and load.
//!
//! [`SealedLibrary::from_reader`] reads the library once, hashing each chunk as it copies
//! it into an anonymous memory file, then seals the file against any further change. The
//! digest it returns is the digest of exactly the bytes the memfd holds; the signature is
//! checked against that digest; only then does [`load`] hand the memfd's path to `dlopen`.
//! The ABI checks themselves (version first, then the table) are the SDK's
//! [`PluginLibrary::open`](plugboard_sdk::host::PluginLibrary::open).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use plugboard_sdk::host::{HostError, PluginLibrary};

use crate::sandbox::pages::ZeroPages;
use crate::trust::{Digest, DigestBuilder};

/// Why a library could not be sealed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot create a sealed memory file for the library: {error}")]
    Memfd { error: nix::Error },
    #[error("cannot copy the library into its sealed memory file: {error}")]
    Copy { error: io::Error },
    #[error("cannot seal the library's memory file: {error}")]
    Seal { error: nix::Error },
    #[error(
        "the library's memory file is not sealed against writes (seals {seals:#x}); refusing to load bytes that could change"
    )]
    NotSealed { seals: i32 },
    #[error("no free descriptor path to load the library from: {error}")]
    Descriptor { error: nix::Error },
    #[error(transparent)]
    Abi(#[from] HostError),
}

/// The seals that make a memfd immutable: no writes, no size change, no seal removal.
const IMMUTABLE_SEALS: SealFlag = SealFlag::F_SEAL_WRITE
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

const COPY_CHUNK: usize = 1 << 20;
/// Chunks in flight between the copier and the hasher.
const PIPELINE_DEPTH: usize = 4;

/// One chunk of the copy: a mapping of its own ([`ZeroPages`]), and how much of it holds
/// data. A 1 MiB `Vec` would come from the malloc heap once glibc's adaptive mmap threshold
/// has risen past it (the first such free raises it), and a heap that holds these chunks
/// for a moment at every load and reload fragments: the engine's memory crept by a few
/// MiB over a soak of reloads. A mapping is given back whole when the chunk is dropped.
struct Chunk {
    pages: ZeroPages,
    len: usize,
}

impl Chunk {
    fn data(&self) -> &[u8] {
        &self.pages[..self.len]
    }
}

/// Reads `reader` to the end in chunks, writes each to `file`, then passes it on to the
/// hasher. Returns the number of bytes copied.
fn copy_chunks(
    reader: &mut impl Read,
    file: &mut File,
    to_hasher: &mpsc::SyncSender<Chunk>,
    recycled: &mpsc::Receiver<Chunk>,
) -> Result<u64, LoaderError> {
    let mut len = 0u64;
    loop {
        let mut chunk = match recycled.try_recv() {
            Ok(chunk) => chunk,
            Err(_) => Chunk {
                pages: ZeroPages::new(COPY_CHUNK).map_err(|errno| LoaderError::Copy {
                    error: io::Error::from(errno),
                })?,
                len: 0,
            },
        };
        let read = match reader.read(&mut chunk.pages) {
            Ok(0) => return Ok(len),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(LoaderError::Copy { error: source }),
        };
        chunk.len = read;
        file.write_all(chunk.data())
            .map_err(|source| LoaderError::Copy { error: source })?;
        len += read as u64;
        to_hasher.send(chunk).map_err(|_| LoaderError::Copy {
            error: io::Error::other("the hashing thread stopped"),
        })?;
    }
}

/// A plugin library's bytes in an anonymous, sealed (immutable) memory file.
#[derive(Debug)]
pub struct SealedLibrary {
    memfd: OwnedFd,
    len: u64,
}

/// A library's memory file before it is filled and sealed. Its descriptor may be handed to
/// a worker already — the worker loads nothing until the engine says the bytes are sealed
/// and verified, and checks the seals itself — so a worker can confine itself while the
/// engine is still copying and hashing the library.
#[derive(Debug)]
pub struct UnsealedLibrary {
    file: File,
}

impl UnsealedLibrary {
    /// A new, empty memory file named after the plugin.
    pub fn create(name: &str) -> Result<Self, LoaderError> {
        let memfd = memfd_create(
            format!("plugboard:{name}").as_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|source| LoaderError::Memfd { error: source })?;
        Ok(Self {
            file: File::from(memfd),
        })
    }

    /// The memory file, e.g. to hand to a worker before it is filled.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Copies everything `reader` yields into the memory file, hashing it on the way (the
    /// source is read once), then seals it. Returns the sealed copy and the SHA3-512 of
    /// exactly those bytes.
    ///
    /// Hashing runs on a second thread, fed the very buffers that were just written, so
    /// copying and hashing overlap.
    pub fn fill_and_seal(
        self,
        mut reader: impl Read,
    ) -> Result<(SealedLibrary, Digest), LoaderError> {
        let mut file = self.file;
        let (to_hasher, hasher_inbox) = mpsc::sync_channel::<Chunk>(PIPELINE_DEPTH);
        let (recycle, recycled) = mpsc::channel::<Chunk>();
        let (copied, digest) = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut hasher = DigestBuilder::new();
                for chunk in hasher_inbox {
                    hasher.update(chunk.data());
                    // The copier may have finished already; then the buffer is simply freed.
                    let _ = recycle.send(chunk);
                }
                hasher.finish()
            });
            let copied = copy_chunks(&mut reader, &mut file, &to_hasher, &recycled);
            drop(to_hasher);
            (copied, hasher.join())
        });
        let len = copied?;
        let digest = digest.map_err(|_| LoaderError::Copy {
            error: io::Error::other("the hashing thread panicked"),
        })?;
        let memfd = OwnedFd::from(file);
        seal(&memfd)?;
        let sealed = SealedLibrary { memfd, len };
        sealed.check_sealed()?;
        Ok((sealed, digest))
    }
}

/// Seals `memfd` against every change. The kernel refuses a write seal (`EBUSY`) while a
/// page of the file is pinned or mapped writable elsewhere, and waits only about 75 ms for
/// that to pass: a pin can outlast that (another thread of the host forking while the file
/// was written, a page still in flight), so a few more tries follow before giving up.
fn seal(memfd: &OwnedFd) -> Result<(), LoaderError> {
    const TRIES: u32 = 5;
    let mut tries = 0;
    loop {
        match fcntl(memfd, FcntlArg::F_ADD_SEALS(IMMUTABLE_SEALS)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if tries + 1 < TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20 << tries));
            }
            Err(source) => return Err(LoaderError::Seal { error: source }),
        }
    }
}

impl SealedLibrary {
    /// Copies everything `reader` yields into a new memfd, hashing it on the way, then
    /// seals the memfd (see [`UnsealedLibrary::fill_and_seal`]).
    pub fn from_reader(name: &str, reader: impl Read) -> Result<(Self, Digest), LoaderError> {
        UnsealedLibrary::create(name)?.fill_and_seal(reader)
    }

    /// Adopts a memfd passed by the engine (in the worker), refusing one that is not
    /// sealed: the worker loads only bytes that can no longer change.
    pub fn from_sealed_fd(memfd: OwnedFd) -> Result<Self, LoaderError> {
        let len = File::from(
            memfd
                .try_clone()
                .map_err(|source| LoaderError::Copy { error: source })?,
        )
        .metadata()
        .map_err(|source| LoaderError::Copy { error: source })?
        .len();
        let sealed = Self { memfd, len };
        sealed.check_sealed()?;
        Ok(sealed)
    }

    /// Confirms with the kernel that the memfd can no longer change.
    fn check_sealed(&self) -> Result<(), LoaderError> {
        let seals = fcntl(&self.memfd, FcntlArg::F_GET_SEALS)
            .map_err(|source| LoaderError::Seal { error: source })?;
        if SealFlag::from_bits_truncate(seals).contains(IMMUTABLE_SEALS) {
            Ok(())
        } else {
            Err(LoaderError::NotSealed { seals })
        }
    }

    /// Another descriptor of the same sealed memory file.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            memfd: self.memfd.try_clone()?,
            len: self.len,
        })
    }

    /// Number of bytes in the library.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, e.g. to hand to a worker process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The same bytes in a memfd of their own, sealed: the dynamic loader takes it for
    /// another image (with globals of its own), where a second load of this one would get
    /// the image already loaded. The bytes are sealed here, so they need no new check.
    pub fn private_copy(&self, name: &str) -> Result<Self, LoaderError> {
        let bytes = self
            .read_back()
            .map_err(|source| LoaderError::Copy { error: source })?;
        Self::from_reader(name, bytes.as_slice()).map(|(copy, _)| copy)
    }

    /// Reads the sealed bytes back (for checks and tests; loading never needs this).
    pub fn read_back(&self) -> io::Result<Vec<u8>> {
        let file = File::from(self.memfd.try_clone()?);
        let mut bytes = vec![0u8; usize::try_from(self.len).map_err(io::Error::other)?];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0)?;
        Ok(bytes)
    }
}

/// A plugin library loaded from its sealed memfd. The memfd stays open for as long as the
/// library is loaded: the dynamic loader knows the library by its `/proc/self/fd/N` path,
/// and a reused descriptor number must never alias a still-loaded library.
#[derive(Debug)]
pub struct LoadedLibrary {
    // Declared first so it is dropped (dlclose) before the descriptors are released.
    library: Option<Arc<PluginLibrary>>,
    descriptor: Option<OwnedFd>,
    sealed: Option<SealedLibrary>,
}

impl LoadedLibrary {
    /// The opened library; instances keep it alive.
    pub fn library(&self) -> &Arc<PluginLibrary> {
        self.library.as_ref().expect("present until drop")
    }
}

/// Descriptors of libraries that stayed resident after `dlclose` (a library may be marked
/// not unloadable, e.g. by thread-local destructors). Their paths are still claimed by the
/// dynamic loader, so their descriptor numbers must never be reused: keep them open.
static RETIRED_DESCRIPTORS: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether the dynamic loader already holds a library under `path`.
fn path_is_resident(path: &std::path::Path) -> bool {
    // SAFETY: RTLD_NOLOAD never loads (so runs no initialisers); it only looks `path` up
    // among loaded objects and, if found, takes a reference we release right away.
    let probe = unsafe {
        libloading::os::unix::Library::open(
            Some(path),
            libc::RTLD_NOLOAD | libloading::os::unix::RTLD_LAZY,
        )
    };
    probe.is_ok()
}

/// Loads a sealed library and checks its ABI; errors name it `shown_as` (the bundle's
/// file name, not the descriptor path it is loaded from). Loading runs the library's
/// constructors: call this only with verified bytes, and — in process isolation — only
/// inside the confined worker.
pub fn load(sealed: SealedLibrary, shown_as: &str) -> Result<LoadedLibrary, LoaderError> {
    sealed.check_sealed()?;
    // Pick a descriptor whose /proc path no resident library claims (see RETIRED_DESCRIPTORS).
    let mut spare = Vec::new();
    let descriptor = loop {
        let candidate = fcntl(&sealed.memfd, FcntlArg::F_DUPFD_CLOEXEC(0))
            .map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
            })
            .map_err(|source| LoaderError::Descriptor { error: source })?;
        if !path_is_resident(&proc_path(candidate.as_fd())) {
            break candidate;
        }
        // Keep the clashing one open while we look, so the next dup gets another number.
        spare.push(candidate);
        if spare.len() > 64 {
            return Err(LoaderError::Descriptor {
                error: nix::Error::EMFILE,
            });
        }
    };
    drop(spare);
    // SAFETY: the bytes behind this path were verified by the caller and are sealed, so
    // what runs is exactly what was verified.
    let library = unsafe { PluginLibrary::open(&proc_path(descriptor.as_fd())) }
        .map_err(|error| error.shown_as(std::path::Path::new(shown_as)))?;
    Ok(LoadedLibrary {
        library: Some(Arc::new(library)),
        descriptor: Some(descriptor),
        sealed: Some(sealed),
    })
}

impl Drop for LoadedLibrary {
    fn drop(&mut self) {
        let path = self.descriptor.as_ref().map(|fd| proc_path(fd.as_fd()));
        // Unloads unless an instance still holds the library (then it stays, and so must
        // the descriptor: fall through to the resident check).
        drop(self.library.take());
        let resident = path.as_deref().is_some_and(path_is_resident);
        if resident && let Some(descriptor) = self.descriptor.take() {
            RETIRED_DESCRIPTORS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(descriptor);
        }
        drop(self.sealed.take());
    }
}
