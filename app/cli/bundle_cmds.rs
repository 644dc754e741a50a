//! `keygen`, `pack`, `sign`, `verify`, `inspect`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plugboard_engine::bundle::{Bundle, BundleError};
use plugboard_engine::manifest::{
    HostLimits, IsolationMode, MANIFEST_FILE, Manifest, read_manifest,
};
use plugboard_engine::trust::{self, PrivateKey, SIGNATURE_FILE, TrustError, TrustStore, Verified};
use serde::Serialize;

use super::output::{errln, outln};

pub fn keygen(out: &Path, name: &str) -> Result<()> {
    // `write_keypair` checks the name first, then creates `out` itself, with mode 0700.
    let (key_id, private, public) = trust::write_keypair(out, name)?;
    outln!("key_id: {key_id}")?;
    outln!(
        "private key: {} (mode 0600; keep it secret)",
        private.display()
    )?;
    outln!("public key: {}", public.display())?;
    Ok(())
}

/// The limits a bundle is checked against: those of the host configuration `config` (as
/// that host's engine will check it), else the built-in ones.
fn host_limits(config: Option<&Path>) -> Result<HostLimits> {
    host_settings(config).map(|(limits, _)| limits)
}

/// [`host_limits`], and the configuration's trust store.
fn host_settings(config: Option<&Path>) -> Result<(HostLimits, Option<std::path::PathBuf>)> {
    let Some(file) = config else {
        return Ok((HostLimits::default(), None));
    };
    let mut host = plugboard_engine::EngineConfig::new(std::path::PathBuf::new());
    plugboard_engine::host_config::apply_file(&mut host, file)?;
    Ok((host.limits, host.trust_store))
}

pub fn pack(
    manifest_path: &Path,
    library: &Path,
    out: &Path,
    key: Option<&Path>,
    config: Option<&Path>,
) -> Result<()> {
    let limits = &host_limits(config)?;
    let source = read_manifest(manifest_path)?;
    let manifest = Manifest::parse(&source, manifest_path, limits)?;
    // Load the key before writing anything, so a bad key leaves no half-made bundle.
    let key = key.map(PrivateKey::load).transpose()?;
    if !library.is_file() {
        bail!(
            "library {} does not exist or is not a file: expected the built plugin (.so)",
            library.display()
        );
    }
    check_plugin_library(library, &manifest)?;
    let created = !out.exists();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let bundle = match write_bundle(&source, &manifest, library, out, key.as_ref(), limits) {
        Ok(bundle) => bundle,
        Err(err) => {
            if created {
                // Nothing half-made is left where a bundle was asked for.
                let _ = std::fs::remove_dir_all(out);
            }
            return Err(err);
        }
    };
    // Said once the bundle is complete: a reader that goes away (`| head -1`) cuts the
    // report short, never the bundle.
    outln!("bundle: {}", out.display())?;
    print_digests(&bundle)?;
    match key {
        Some(key) => outln!("key_id: {}", key.key_id()),
        None => outln!(
            "unsigned: sign it with `plugboard sign {} --key <file>`",
            out.display()
        ),
    }
}

/// [`pack`]'s writing part, into the existing directory `out`: the bundle, signed when a
/// key is given. It is made and checked whole in a hidden directory inside `out` first
/// (the library copied, the manifest's `[requires]` found, the signature made) — inside,
/// so that it needs no more permission than `out` and the renames stay on its filesystem —
/// and only then moved into place file by file: a pack that fails while checking leaves
/// the bundle in `out` as it was. (A rename failing between the library's and the
/// manifest's would leave them mismatched; renames within one directory do not fail but
/// for a full disk's metadata or a concurrent removal.) Packing in place (the library or
/// manifest given is the one in `out`) reads it before anything replaces it.
fn write_bundle(
    source: &str,
    manifest: &Manifest,
    library: &Path,
    out: &Path,
    key: Option<&PrivateKey>,
    limits: &HostLimits,
) -> Result<Bundle> {
    let staging = tempfile::Builder::new()
        .prefix(plugboard_engine::watcher::PACK_STAGING_PREFIX)
        .tempdir_in(out)
        .with_context(|| format!("cannot create a directory in {}", out.display()))?;
    let staged = |name: &Path| staging.path().join(name);
    let library_name = Path::new(&manifest.plugin.library);
    if let Some(dir) = staged(library_name).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut library_file = std::fs::File::open(library)
        .with_context(|| format!("cannot open the library {}", library.display()))?;
    replace_file(&staged(library_name), 0o755, |file| {
        std::io::copy(&mut library_file, file).map(drop)
    })
    .with_context(|| format!("cannot copy {}", library.display()))?;
    replace_file(&staged(Path::new(MANIFEST_FILE)), 0o644, |file| {
        std::io::Write::write_all(file, source.as_bytes())
    })?;
    let bundle = Bundle::open(staging.path(), limits)?;
    if let Some(key) = key {
        key.sign_bundle(bundle.digests())
            .write(&staged(Path::new(SIGNATURE_FILE)))?;
    }
    // Checked whole: into place. The library first, then the manifest, then the signature
    // (or no signature: one from an earlier pack would no longer match).
    let place = |name: &Path| -> Result<()> {
        let into = out.join(name);
        if let Some(dir) = into.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::rename(staged(name), &into)
            .with_context(|| format!("cannot move the packed {} into place", into.display()))
    };
    place(library_name)?;
    place(Path::new(MANIFEST_FILE))?;
    if key.is_some() {
        place(Path::new(SIGNATURE_FILE))?;
    } else {
        match std::fs::remove_file(out.join(SIGNATURE_FILE)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "cannot remove the stale {}",
                        out.join(SIGNATURE_FILE).display()
                    )
                });
            }
        }
    }
    Ok(bundle)
}

/// Writes `path` anew through a temporary file in its directory, renamed over it when
/// `write` succeeded, with permissions `mode`.
fn replace_file(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    write(temporary.as_file_mut()).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(
        temporary.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    temporary
        .persist(path)
        .map_err(|err| err.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What an engine would find only when it loads the library, said at `pack`: it must be
/// a shared library that exports the plugin entry point (a program — a
/// position-independent one is a shared object too — exports none). Read from its ELF tables; nothing of it runs. A file
/// name other than the one the manifest gives is warned of (the usual slip: another
/// plugin's library), as the bundle names it after the manifest.
fn check_plugin_library(library: &Path, manifest: &Manifest) -> Result<()> {
    use object::{Object as _, ObjectSymbol as _};
    let bytes = std::fs::read(library)
        .with_context(|| format!("cannot read the library {}", library.display()))?;
    let file = object::File::parse(&*bytes).with_context(|| {
        format!(
            "library {} is not an ELF shared object (its headers do not read as one): expected the built plugin (.so)",
            library.display()
        )
    })?;
    if file.kind() != object::ObjectKind::Dynamic {
        bail!(
            "library {} is not a shared library (a program or an object file): expected the plugin built as a cdylib (.so)",
            library.display()
        );
    }
    let entry = plugboard_sdk::abi::ENTRY_SYMBOL;
    let exported = file
        .dynamic_symbols()
        .any(|symbol| symbol.is_definition() && symbol.name() == Ok(entry));
    if !exported {
        bail!(
            "library {} does not export `{entry}`: it is not a Plugboard plugin (expected one built with plugboard-sdk's `export_plugin!`, or against plugboard.h)",
            library.display()
        );
    }
    let given = library
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    let named = Path::new(&manifest.plugin.library)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    if given != named {
        errln!(
            "plugboard: warning: the library given is {}, the manifest names {}: packed as {} (another plugin's library?)",
            given.as_deref().unwrap_or("?"),
            manifest.plugin.library,
            manifest.plugin.library
        );
    }
    Ok(())
}

pub fn sign(bundle_dir: &Path, key: &Path, config: Option<&Path>) -> Result<()> {
    let limits = &host_limits(config)?;
    let key = PrivateKey::load(key)?;
    // Whatever `plugin.sig` holds now (a corrupt one included) is replaced.
    let bundle = Bundle::open_without_signature(bundle_dir, limits)?;
    let signature = key.sign_bundle(bundle.digests());
    let path = bundle_dir.join(SIGNATURE_FILE);
    signature.write(&path)?;
    outln!(
        "signed {} {} with key {}: {}",
        bundle.manifest().plugin.name,
        bundle.manifest().plugin.version,
        key.key_id(),
        path.display()
    )?;
    Ok(())
}

pub fn verify(bundle_dir: &Path, trust_store: Option<&Path>, config: Option<&Path>) -> Result<()> {
    let (limits, configured_store) = host_settings(config)?;
    let limits = &limits;
    let Some(trust_store) = trust_store.map(Path::to_path_buf).or(configured_store) else {
        bail!(
            "no trust store: pass --trust-store DIR, or --config F with `trust_store` set (the store whose pinned keys the bundle must be signed by)"
        );
    };
    let store = TrustStore::open(&trust_store)?;
    let bundle = Bundle::open(bundle_dir, limits)?;
    let manifest = bundle.manifest();
    let verified = bundle.verify(&store).with_context(|| {
        format!(
            "{} {} ({}) is not trusted",
            manifest.plugin.name,
            manifest.plugin.version,
            bundle_dir.display()
        )
    })?;
    if let Some(refusal) = in_process_refusal(manifest, &verified) {
        bail!(
            "{} {} ({}) is not trusted to run as it asks: {refusal}",
            manifest.plugin.name,
            manifest.plugin.version,
            bundle_dir.display()
        );
    }
    outln!(
        "ok: {} {} signed by key {} (trust level {})",
        manifest.plugin.name,
        manifest.plugin.version,
        verified.key_id,
        verified.level
    )?;
    Ok(())
}

/// Why an engine refuses a bundle whose manifest asks for in-process isolation although
/// its signer is trusted at a lower level (the engine's own rule), if it does.
fn in_process_refusal(manifest: &Manifest, verified: &Verified) -> Option<String> {
    if manifest.isolation.mode != IsolationMode::InProcess {
        return None;
    }
    trust::in_process_refusal(Some(verified.level))
}

fn print_digests(bundle: &Bundle) -> Result<()> {
    let digests = bundle.digests();
    outln!("manifest_sha3_512: {}", digests.manifest)?;
    outln!("library_sha3_512: {}", digests.library)?;
    outln!("bundle_sha3_512: {}", digests.bundle_digest())?;
    Ok(())
}

/// What `inspect` reports; the field names are a contract for scripts.
#[derive(Debug, Serialize)]
struct Inspection {
    name: String,
    version: String,
    api_version: u32,
    description: String,
    authors: Vec<String>,
    library: String,
    library_bytes: u64,
    isolation: String,
    hooks: Vec<HookSummary>,
    capabilities: serde_json::Value,
    resources: serde_json::Value,
    dependencies: serde_json::Value,
    manifest_sha3_512: String,
    library_sha3_512: String,
    bundle_sha3_512: String,
    signed: bool,
    key_id: Option<String>,
    /// `None` when no trust store was given.
    trusted: Option<bool>,
    trust_level: Option<String>,
    /// `None` when no trust store was given (or the bundle is unsigned, for the key).
    revoked: Option<bool>,
    trust_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct HookSummary {
    name: String,
    priority: String,
    timeout_ms: u64,
}

pub fn inspect(
    bundle_dir: &Path,
    json: bool,
    trust_store: Option<&Path>,
    config: Option<&Path>,
) -> Result<()> {
    let limits = &host_limits(config)?;
    let report = inspection(bundle_dir, trust_store, limits)?;
    if json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        print_inspection(&report)?;
    }
    Ok(())
}

fn inspection(
    bundle_dir: &Path,
    trust_store: Option<&Path>,
    limits: &HostLimits,
) -> Result<Inspection> {
    // A `plugin.sig` that does not read is what to show, with the rest of the bundle: it
    // is the trust error, whether or not a trust store was given.
    let (bundle, unreadable_signature) = match Bundle::open(bundle_dir, limits) {
        Ok(bundle) => (bundle, None),
        Err(BundleError::Trust(err)) => (
            Bundle::open_without_signature(bundle_dir, limits)?,
            Some(err),
        ),
        Err(err) => return Err(err.into()),
    };
    let manifest = bundle.manifest();
    let digests = bundle.digests();
    let store = trust_store.map(TrustStore::open).transpose()?;
    // Signed: it has a signature file, readable or not.
    let signed = bundle.signature().is_some() || unreadable_signature.is_some();
    let signature_verdict = match unreadable_signature {
        Some(err) => Some(Err(err)),
        None => store.as_ref().map(|store| bundle.verify(store)),
    };
    let revoked = signature_verdict.as_ref().map(|verdict| {
        matches!(
            verdict,
            Err(TrustError::RevokedKey { .. } | TrustError::RevokedDigest { .. })
        )
    });
    // Trusted as the engine trusts: the in-process rule too.
    let verdict = signature_verdict.map(|verdict| {
        verdict.map_err(|err| err.to_string()).and_then(|verified| {
            match in_process_refusal(bundle.manifest(), &verified) {
                Some(refusal) => Err(refusal),
                None => Ok(verified),
            }
        })
    });
    let report = Inspection {
        name: manifest.plugin.name.clone(),
        version: manifest.plugin.version.to_string(),
        api_version: manifest.plugin.api_version,
        description: manifest.plugin.description.clone(),
        authors: manifest.plugin.authors.clone(),
        library: manifest.plugin.library.clone(),
        library_bytes: bundle.library().len(),
        isolation: manifest.isolation.mode.as_str().to_owned(),
        hooks: manifest
            .hooks
            .iter()
            .map(|(name, hook)| HookSummary {
                name: name.clone(),
                priority: hook.priority.to_string(),
                timeout_ms: u64::try_from(manifest.hook_timeout(name, limits).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect(),
        capabilities: json_value(&manifest.capabilities),
        resources: json_value(&manifest.effective_resources(limits)),
        dependencies: json_value(&manifest.dependencies),
        manifest_sha3_512: digests.manifest.to_hex(),
        library_sha3_512: digests.library.to_hex(),
        bundle_sha3_512: digests.bundle_digest().to_hex(),
        signed,
        key_id: bundle
            .signature()
            .map(|signature| signature.key_id.to_string()),
        trusted: verdict.as_ref().map(Result::is_ok),
        trust_level: verdict
            .as_ref()
            .and_then(|verdict| verdict.as_ref().ok())
            .map(|verified| verified.level.to_string()),
        revoked,
        trust_error: verdict
            .as_ref()
            .and_then(|verdict| verdict.as_ref().err())
            .map(ToString::to_string),
    };
    Ok(report)
}

fn print_inspection(report: &Inspection) -> Result<()> {
    outln!("name: {}", report.name)?;
    outln!("version: {}", report.version)?;
    outln!("api_version: {}", report.api_version)?;
    if !report.description.is_empty() {
        outln!("description: {}", report.description)?;
    }
    outln!(
        "library: {} ({} bytes)",
        report.library,
        report.library_bytes
    )?;
    outln!("isolation: {}", report.isolation)?;
    for hook in &report.hooks {
        outln!(
            "hook: {} (priority {}, timeout {} ms)",
            hook.name,
            hook.priority,
            hook.timeout_ms
        )?;
    }
    outln!("capabilities: {}", report.capabilities)?;
    outln!("resources: {}", report.resources)?;
    outln!("manifest_sha3_512: {}", report.manifest_sha3_512)?;
    outln!("library_sha3_512: {}", report.library_sha3_512)?;
    outln!("bundle_sha3_512: {}", report.bundle_sha3_512)?;
    let no_key = if report.signed {
        "none (plugin.sig does not read)"
    } else {
        "none (unsigned)"
    };
    outln!("key_id: {}", report.key_id.as_deref().unwrap_or(no_key))?;
    match (&report.trusted, &report.trust_error) {
        (None, _) => outln!("trusted: unknown (pass --trust-store to check)")?,
        (Some(true), _) => outln!(
            "trusted: yes (trust level {})",
            report.trust_level.as_deref().unwrap_or("?")
        )?,
        (Some(false), Some(reason)) => outln!("trusted: no: {reason}")?,
        (Some(false), None) => outln!("trusted: no")?,
    }
    match report.revoked {
        None => outln!("revoked: unknown (pass --trust-store to check)")?,
        Some(revoked) => outln!("revoked: {}", if revoked { "yes" } else { "no" })?,
    }
    Ok(())
}

fn json_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
