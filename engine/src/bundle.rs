//! A plugin bundle on disk — `plugin.toml`, the library it names, `plugin.sig` — read once.
//!
//! [`Bundle::open`] (or its two halves, [`Bundle::begin_open`] and
//! [`OpeningBundle::read_library`], between which a worker can be started) reads the manifest bytes once (hashing and parsing the same bytes) and
//! streams the library once into a sealed memfd while hashing it. Verification and loading
//! then work on those in-memory copies only: a file changed on disk after `open` changes
//! nothing about what is verified or what runs.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::loader::{self, LoadedLibrary, LoaderError, SealedLibrary, UnsealedLibrary};
use crate::manifest::{HostLimits, MANIFEST_FILE, Manifest, ManifestError, read_bundle_manifest};
use crate::regular_file::{open_regular_file, open_regular_file_in_place};
use crate::trust::{
    BundleDigests, BundleSignature, Digest, SIGNATURE_FILE, TrustError, TrustStore, Verified,
};

/// The largest library read: a library is copied into memory to be hashed and sealed, so
/// an untrusted bundle must not name a file of any size (a sparse file of a terabyte).
pub const MAX_LIBRARY_BYTES: u64 = 1 << 30;

/// Why a bundle could not be opened, verified or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("library {}: {error}", path.display())]
    Library { path: PathBuf, error: LoaderError },
    #[error(
        "library {} is over {} MiB: larger than any plugin library this engine loads",
        path.display(),
        MAX_LIBRARY_BYTES >> 20
    )]
    LibraryTooLarge { path: PathBuf },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("bundle {}: {error}", dir.display())]
    Load { dir: PathBuf, error: LoaderError },
}

/// A bundle read into memory: parsed manifest, digests, signature and the sealed library.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    digests: BundleDigests,
    signature: Option<BundleSignature>,
    library: SealedLibrary,
}

/// A bundle whose manifest and signature are read and whose library is not yet: the first
/// half of [`Bundle::open`]. The library's memory file exists already, empty, so a worker
/// can be started on it (and confine itself) while [`OpeningBundle::read_library`] copies
/// and hashes the library.
#[derive(Debug)]
pub struct OpeningBundle {
    dir: PathBuf,
    manifest: Manifest,
    manifest_digest: Digest,
    signature: Option<BundleSignature>,
    library_path: PathBuf,
    library_file: File,
    library: UnsealedLibrary,
}

impl OpeningBundle {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The library's memory file, still empty and unsealed.
    pub fn library_fd(&self) -> BorrowedFd<'_> {
        self.library.fd()
    }

    /// Copies the library into its memory file while hashing it, and seals it.
    pub fn read_library(self) -> Result<Bundle, BundleError> {
        // Bounded again while copying: the file may have grown since it was opened.
        let (library, library_digest) = self
            .library
            .fill_and_seal(self.library_file.take(MAX_LIBRARY_BYTES + 1))
            .map_err(|source| BundleError::Library {
                path: self.library_path.clone(),
                error: source,
            })?;
        if library.len() > MAX_LIBRARY_BYTES {
            return Err(BundleError::LibraryTooLarge {
                path: self.library_path,
            });
        }
        Ok(Bundle {
            dir: self.dir,
            manifest: self.manifest,
            digests: BundleDigests {
                manifest: self.manifest_digest,
                library: library_digest,
            },
            signature: self.signature,
            library,
        })
    }
}

impl Bundle {
    /// Reads and validates the bundle in `dir`. A missing `plugin.sig` is not an error
    /// here (the bundle is unsigned, which [`Bundle::verify`] refuses); a malformed one is.
    pub fn open(dir: &Path, limits: &HostLimits) -> Result<Self, BundleError> {
        Self::begin_open(dir, limits)?.read_library()
    }

    /// The first half of [`Bundle::open`]: the manifest read, hashed, parsed and checked,
    /// the signature read, the library opened and its memory file created.
    pub fn begin_open(dir: &Path, limits: &HostLimits) -> Result<OpeningBundle, BundleError> {
        Self::begin_open_reading(dir, limits, true)
    }

    /// [`Bundle::open`] without reading `plugin.sig`, as if the bundle were unsigned: for
    /// signing it anew, or showing what it holds when its signature file does not read.
    pub fn open_without_signature(dir: &Path, limits: &HostLimits) -> Result<Self, BundleError> {
        Self::begin_open_reading(dir, limits, false)?.read_library()
    }

    fn begin_open_reading(
        dir: &Path,
        limits: &HostLimits,
        read_signature: bool,
    ) -> Result<OpeningBundle, BundleError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let source = read_bundle_manifest(&manifest_path)?;
        let manifest_digest = Digest::of(source.as_bytes());
        let manifest = Manifest::parse(&source, &manifest_path, limits)?;
        manifest.check_bundle(dir)?;

        let library_path = dir.join(&manifest.plugin.library);
        let library_file =
            open_regular_file(&library_path).map_err(|source| BundleError::Read {
                path: library_path.clone(),
                error: source,
            })?;
        let library_len = library_file
            .metadata()
            .map_err(|source| BundleError::Read {
                path: library_path.clone(),
                error: source,
            })?
            .len();
        if library_len > MAX_LIBRARY_BYTES {
            return Err(BundleError::LibraryTooLarge { path: library_path });
        }
        let library = UnsealedLibrary::create(&manifest.plugin.name).map_err(|source| {
            BundleError::Library {
                path: library_path.clone(),
                error: source,
            }
        })?;

        let signature_path = dir.join(SIGNATURE_FILE);
        let signature = match open_regular_file_in_place(&signature_path) {
            Ok(_) if !read_signature => None,
            Ok(file) => Some(BundleSignature::read_from(file, &signature_path)?),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(BundleError::Read {
                    path: signature_path,
                    error: source,
                });
            }
        };
        Ok(OpeningBundle {
            dir: dir.to_owned(),
            manifest,
            manifest_digest,
            signature,
            library_path,
            library_file,
            library,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Digests of the bytes read by [`Bundle::open`] — the bytes that would run.
    pub fn digests(&self) -> &BundleDigests {
        &self.digests
    }

    pub fn signature(&self) -> Option<&BundleSignature> {
        self.signature.as_ref()
    }

    /// The sealed copy of the library.
    pub fn library(&self) -> &SealedLibrary {
        &self.library
    }

    /// Checks the signature over the digests of the bytes read, against `store`.
    pub fn verify(&self, store: &TrustStore) -> Result<Verified, TrustError> {
        store.verify(
            &self.digests,
            self.signature.as_ref(),
            &self.manifest.plugin.name,
            &self.manifest.plugin.version.to_string(),
        )
    }

    /// Loads the sealed library into this process. Runs the library's constructors: in
    /// process isolation only the confined worker calls this.
    pub fn load(self, _verified: &Verified) -> Result<(Manifest, LoadedLibrary), BundleError> {
        // The verdict is the caller's proof; the loading itself is the same.
        self.load_unverified()
    }

    /// Loads without a trust verdict: only for development hosts that explicitly allow
    /// unsigned bundles (and, in the engine, only inside a sandbox).
    pub fn load_unverified(self) -> Result<(Manifest, LoadedLibrary), BundleError> {
        let library =
            loader::load(self.library, &self.manifest.plugin.library).map_err(|source| {
                BundleError::Load {
                    dir: self.dir.clone(),
                    error: source,
                }
            })?;
        Ok((self.manifest, library))
    }

    /// Gives up the sealed library, e.g. to pass its descriptor to a worker.
    pub fn into_parts(self) -> (Manifest, BundleDigests, SealedLibrary) {
        (self.manifest, self.digests, self.library)
    }
}
