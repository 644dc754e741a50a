//! `trust list|add|revoke|allow|list-key`.

use std::path::Path;

use anyhow::{Result, bail};
use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::trust::{self, Digest, KeyId, PublicKey, TrustError, TrustLevel, TrustStore};

use super::output::{errln, outln};

pub fn list(dir: &Path) -> Result<()> {
    existing_store(dir)?;
    let store = TrustStore::open(dir)?;
    let keys = store.list();
    if keys.is_empty() {
        outln!("no pinned keys in {}", dir.display())?;
    }
    for key in keys {
        outln!(
            "key {} level {} file {}{}",
            key.key_id,
            key.level,
            key.file.display(),
            if key.revoked { " (revoked)" } else { "" }
        )?;
    }
    for key_id in store.revoked_keys() {
        outln!("revoked key {key_id}")?;
    }
    for digest in store.revoked_digests() {
        outln!("revoked digest {digest}")?;
    }
    if let Some(list) = store.trust_list() {
        for entry in &list.entries {
            outln!("allowed {} {} {}", entry.name, entry.version, entry.digest)?;
        }
    }
    Ok(())
}

pub fn add(dir: &Path, public_key: &Path, level: TrustLevel) -> Result<()> {
    let key_id = PublicKey::load(public_key)?.key_id();
    // The level the key has now, to say when this changes it. A store that does not open
    // is one this creates, or a broken one that `add_key` names.
    let before = TrustStore::open(dir).ok().and_then(|store| {
        store
            .list()
            .into_iter()
            .find(|key| key.key_id == key_id)
            .map(|key| key.level)
    });
    let key_id = TrustStore::add_key(dir, public_key, level)?;
    let dir = dir.display();
    match before {
        None => outln!("pinned key {key_id} at trust level {level} in {dir}"),
        Some(old) if old == level => {
            outln!("key {key_id} was already pinned at trust level {level} in {dir}; unchanged")
        }
        Some(old) => outln!("changed the trust level of key {key_id} in {dir}: {old} → {level}"),
    }
}

/// Every command but `add` needs the store to exist: creating one to revoke in would hide
/// a mistyped path, and the real store would go on trusting what was meant to be revoked.
fn existing_store(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(TrustError::StoreMissing {
            dir: dir.to_owned(),
        }
        .into());
    }
    Ok(())
}

pub fn revoke(dir: &Path, key_id: Option<&str>, digest: Option<&str>) -> Result<()> {
    existing_store(dir)?;
    match (key_id, digest) {
        (Some(key_id), None) => {
            let key_id: KeyId = key_id.parse()?;
            TrustStore::revoke_key(dir, key_id)?;
            outln!("revoked key {key_id} in {}", dir.display())?;
        }
        (None, Some(digest)) => {
            let digest = Digest::from_hex(digest)?;
            TrustStore::revoke_digest(dir, digest)?;
            outln!("revoked digest {digest} in {}", dir.display())?;
        }
        _ => bail!("give exactly one of --key-id or --digest"),
    }
    // Stdout is the record of what changed; this is advice.
    errln!(
        "plugboard: engines using this store stop the plugins it covers within a sampling \
         interval (about a second), and refuse them from then on"
    );
    Ok(())
}

pub fn allow(dir: &Path, bundle_dir: &Path) -> Result<()> {
    existing_store(dir)?;
    let bundle = Bundle::open(bundle_dir, &HostLimits::default())?;
    let manifest = bundle.manifest();
    let digest = bundle.digests().bundle_digest();
    TrustStore::allow_bundle(
        dir,
        &manifest.plugin.name,
        &manifest.plugin.version.to_string(),
        digest,
    )?;
    outln!(
        "allowed {} {} (bundle digest {digest}) in {}",
        manifest.plugin.name,
        manifest.plugin.version,
        dir.display()
    )?;
    // Being on the list is not enough to verify: a bundle whose signature fails (tampered,
    // unsigned, its key not pinned yet) stays refused. Said, not refused, since the key may
    // well be added next.
    if let Err(refusal) = TrustStore::open(dir).and_then(|store| bundle.verify(&store)) {
        errln!(
            "warning: {} does not verify against {} yet, so it stays refused: {refusal}",
            bundle_dir.display(),
            dir.display()
        );
    }
    Ok(())
}

pub fn list_key(out: &Path) -> Result<()> {
    trust::generate_trust_list_key(out)?;
    outln!(
        "trust list key: {} (mode 0600; keep it secret)",
        out.display()
    )?;
    Ok(())
}
