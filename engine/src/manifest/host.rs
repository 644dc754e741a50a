//! The checks that need the bundle directory and the host: the library file and the
//! `[requires]` section.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::error::UnavailableReason;
use super::source::{KeyPath, SourceMap};
use super::validate::{Reporter, quoted};
use super::{Manifest, ManifestError};

/// The dynamic loader's configuration, read for its library directories.
const LD_SO_CONF: &str = "/etc/ld.so.conf";
/// Read as well as whatever `ld.so.conf` includes, since some hosts do not include it.
const LD_SO_CONF_D: &str = "/etc/ld.so.conf.d/*.conf";
/// Guards against `include` loops in `ld.so.conf`.
const MAX_INCLUDE_DEPTH: u32 = 8;

/// Where `[requires]` entries are looked for on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSearchPaths {
    /// Searched for bare program names, in order (normally `$PATH`).
    pub binary_dirs: Vec<PathBuf>,
    /// Searched for library sonames.
    pub library_dirs: Vec<PathBuf>,
}

impl HostSearchPaths {
    /// `$PATH` for programs; for libraries `$LD_LIBRARY_PATH`, the directories listed in
    /// `/etc/ld.so.conf` (with its includes) and `/etc/ld.so.conf.d/*.conf`, and the standard
    /// `/lib`, `/usr/lib`, `/lib64`, `/usr/lib64`, their multiarch subdirectories and
    /// `/usr/local/lib`. Relative entries are ignored: they would depend on the engine's
    /// working directory.
    pub fn from_system() -> Self {
        let binary_dirs = absolute_dirs(std::env::var_os("PATH").as_deref());

        let mut library_dirs = absolute_dirs(std::env::var_os("LD_LIBRARY_PATH").as_deref());
        ld_so_conf_dirs(Path::new(LD_SO_CONF), 0, &mut library_dirs);
        for conf in expand_wildcard(Path::new(LD_SO_CONF_D)) {
            ld_so_conf_dirs(&conf, 0, &mut library_dirs);
        }
        for base in ["/lib", "/usr/lib", "/lib64", "/usr/lib64"] {
            library_dirs.push(PathBuf::from(base));
        }
        if let Some(tuple) = multiarch_tuple() {
            library_dirs.push(Path::new("/lib").join(tuple));
            library_dirs.push(Path::new("/usr/lib").join(tuple));
        }
        library_dirs.push(PathBuf::from("/usr/local/lib"));

        Self {
            binary_dirs: without_duplicates(binary_dirs),
            library_dirs: without_duplicates(library_dirs),
        }
    }

    /// An absolute path if it is an executable file, or the first executable file of that
    /// name in [`HostSearchPaths::binary_dirs`].
    pub fn find_binary(&self, binary: &str) -> Option<PathBuf> {
        if binary.contains('/') {
            let path = Path::new(binary);
            return (path.is_absolute() && is_executable_file(path)).then(|| path.to_path_buf());
        }
        self.binary_dirs
            .iter()
            .map(|dir| dir.join(binary))
            .find(|candidate| is_executable_file(candidate))
    }

    /// The first file named `soname` in [`HostSearchPaths::library_dirs`].
    pub fn find_library(&self, soname: &str) -> Option<PathBuf> {
        self.library_dirs
            .iter()
            .map(|dir| dir.join(soname))
            .find(|candidate| candidate.is_file())
    }
}

pub(super) fn check_bundle(
    manifest: &Manifest,
    bundle_dir: &Path,
    search_paths: &HostSearchPaths,
) -> Result<(), ManifestError> {
    // `parse` already accepted this text, so a failure here only costs the line numbers.
    let map = SourceMap::parse(&manifest.source).ok();
    let report = Reporter::new(&manifest.file, map.as_ref());

    let library = &manifest.plugin.library;
    let library_path = bundle_dir.join(library);
    // Following a symlink is fine: the bytes that are loaded are the bytes that are verified.
    let reason = match fs::metadata(&library_path) {
        Ok(metadata) if metadata.is_file() => None,
        Ok(metadata) if metadata.is_dir() => Some(UnavailableReason::IsDirectory),
        Ok(_) => Some(UnavailableReason::NotRegularFile),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some(UnavailableReason::NotFound),
        Err(err) => Some(UnavailableReason::Unreadable { kind: err.kind() }),
    };
    if let Some(reason) = reason {
        return Err(report.unavailable(
            &KeyPath::of(&["plugin", "library"]),
            quoted(library),
            reason,
            format!("a regular file at {}", library_path.display()),
        ));
    }

    for (index, binary) in manifest.requires.binaries.iter().enumerate() {
        if search_paths.find_binary(binary).is_none() {
            let expected = if binary.contains('/') {
                "an executable regular file at that path".to_owned()
            } else {
                format!(
                    "an executable file named {} in a $PATH directory ({})",
                    quoted(binary),
                    list(&search_paths.binary_dirs)
                )
            };
            let path = KeyPath::of(&["requires", "binaries"]).index(index);
            return Err(report.unavailable(
                &path,
                quoted(binary),
                UnavailableReason::NotFound,
                expected,
            ));
        }
    }

    for (index, soname) in manifest.requires.libraries.iter().enumerate() {
        if search_paths.find_library(soname).is_none() {
            let path = KeyPath::of(&["requires", "libraries"]).index(index);
            return Err(report.unavailable(
                &path,
                quoted(soname),
                UnavailableReason::NotFound,
                format!(
                    "a file named {} in a system library directory ({})",
                    quoted(soname),
                    list(&search_paths.library_dirs)
                ),
            ));
        }
    }
    Ok(())
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

fn list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "none configured".to_owned();
    }
    dirs.iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The absolute entries of a colon-separated list such as `$PATH`.
fn absolute_dirs(list: Option<&OsStr>) -> Vec<PathBuf> {
    list.map(|list| {
        std::env::split_paths(list)
            .filter(|dir| dir.is_absolute())
            .collect()
    })
    .unwrap_or_default()
}

fn without_duplicates(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut unique: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// Appends the directories an `ld.so.conf`-style file lists, following `include` lines.
/// Unreadable files are skipped: they list nothing the loader could use either.
fn ld_so_conf_dirs(conf: &Path, depth: u32, dirs: &mut Vec<PathBuf>) {
    if depth > MAX_INCLUDE_DEPTH {
        return;
    }
    let Ok(text) = fs::read_to_string(conf) else {
        return;
    };
    for line in text.lines() {
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if let Some(patterns) = line
            .strip_prefix("include")
            .filter(|rest| rest.starts_with([' ', '\t']))
        {
            for pattern in patterns.split_whitespace() {
                // ldconfig reads a relative include relative to the including file.
                let pattern = match conf.parent() {
                    Some(parent) if !pattern.starts_with('/') => parent.join(pattern),
                    _ => PathBuf::from(pattern),
                };
                for included in expand_wildcard(&pattern) {
                    ld_so_conf_dirs(&included, depth + 1, dirs);
                }
            }
        } else if line.starts_with('/') {
            // A directory may carry a library-type suffix, as in `/usr/lib=ELF`.
            let dir = line.split_once('=').map_or(line, |(dir, _)| dir).trim_end();
            dirs.push(PathBuf::from(dir));
        }
        // Anything else (`hwcap` lines, relative paths) names no directory we can use.
    }
}

/// The existing files matching `pattern`, whose last component may contain `*` and `?`,
/// sorted as ldconfig's glob sorts them.
fn expand_wildcard(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name_pattern)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let name_pattern = name_pattern.to_string_lossy();
    if !name_pattern.contains(['*', '?']) {
        return if pattern.is_file() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut matches: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| wildcard_matches(&name_pattern, &entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    matches.sort();
    matches
}

/// Shell-style matching of `*` (any run) and `?` (one character), without brackets.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and how much of `name` it has swallowed so far.
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((star, swallowed)) => {
                    p = star + 1;
                    n = swallowed + 1;
                    backtrack = Some((star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The Debian-style multiarch directory name of this architecture (`/usr/lib/<tuple>`).
fn multiarch_tuple() -> Option<&'static str> {
    let tuple = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" if cfg!(target_endian = "little") => "powerpc64le-linux-gnu",
        "powerpc64" => "powerpc64-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        "loongarch64" => "loongarch64-linux-gnu",
        _ => return None,
    };
    Some(tuple)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_matches("*.conf", "libc.conf"));
        assert!(wildcard_matches("*.conf", ".conf"));
        assert!(!wildcard_matches("*.conf", "libc.conf.bak"));
        assert!(wildcard_matches("lib?.conf", "libx.conf"));
        assert!(wildcard_matches("a*b*c", "aXXbYYc"));
        assert!(!wildcard_matches("a*b*c", "aXXbYY"));
        assert!(wildcard_matches("*", ""));
    }

    #[test]
    fn ld_so_conf_follows_relative_includes_and_ignores_comments() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("ld.so.conf.d");
        fs::create_dir(&conf_d).unwrap();
        fs::write(
            dir.path().join("ld.so.conf"),
            "include ld.so.conf.d/*.conf\n# /nope\n",
        )
        .unwrap();
        fs::write(
            conf_d.join("a.conf"),
            "/opt/a/lib # comment\n/opt/typed=ELF\nrelative/lib\n",
        )
        .unwrap();
        fs::write(conf_d.join("b.conf"), "include ../ld.so.conf\n/opt/b/lib\n").unwrap();
        fs::write(conf_d.join("ignored.txt"), "/opt/ignored\n").unwrap();

        let mut dirs = Vec::new();
        ld_so_conf_dirs(&dir.path().join("ld.so.conf"), 0, &mut dirs);
        let dirs = without_duplicates(dirs);
        assert_eq!(
            dirs,
            [
                PathBuf::from("/opt/a/lib"),
                PathBuf::from("/opt/typed"),
                PathBuf::from("/opt/b/lib")
            ]
        );
    }
}
