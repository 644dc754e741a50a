//! `plugboard suggest <plugin>`: after a plugin ran in audit mode (`[plugins.<name>]
//! audit = true`), prints the `[capabilities]` block that would let it run enforced, from
//! the `audited` events in the audit file (and its rotated predecessors).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plugboard_engine::audit::AuditRecord;
use plugboard_engine::manifest::{MANIFEST_FILE, Manifest};
use plugboard_engine::suggest;

use super::engine_options::EngineOptions;
use super::output::{errln, outln};
use plugboard_engine::audit::{AuditItem, AuditReader};

/// How many rotated files (`FILE.1` newest … `FILE.N`) are looked for.
const ROTATED_LOOKED_FOR: u32 = 64;

pub fn run(options: &EngineOptions, plugin: &str, json: bool) -> Result<()> {
    let config = options.settings()?;
    let Some(file) = config.audit_file.clone() else {
        bail!(
            "no audit file: pass --audit-file FILE or set `audit_file` in the host configuration (the engine records audit-mode observations there)"
        );
    };
    let records = read_with_rotated(&file)?;
    let current = find_manifest(&config, plugin)?;
    let suggestion = suggest::suggest(
        plugin,
        current.as_ref().map(|manifest| &manifest.capabilities),
        &records,
    );
    if suggestion.audit_runs == 0 && suggestion.observations == 0 {
        bail!(
            "`{plugin}` has no audit-mode run in {}: set `audit = true` under [plugins.{plugin}] in the host configuration, run it and exercise it, then ask again",
            file.display()
        );
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&suggestion)?)?;
    } else {
        super::output::write_text(suggestion.to_toml())?;
    }
    Ok(())
}

/// The records of `file` and of its rotated predecessors, oldest first.
fn read_with_rotated(file: &Path) -> Result<Vec<AuditRecord>> {
    let mut files: Vec<PathBuf> = (1..=ROTATED_LOOKED_FOR)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", file.display())))
        .filter(|rotated| rotated.is_file())
        .collect();
    files.push(file.to_owned());
    let mut records = Vec::new();
    for file in files {
        let cannot_read = || format!("cannot read audit file {}", file.display());
        let mut reader = AuditReader::open(&file).with_context(cannot_read)?;
        while let Some(item) = reader.next_item().with_context(cannot_read)? {
            match item {
                AuditItem::Record(record) => records.push(*record),
                AuditItem::Skipped(warning) => errln!("warning: {warning}"),
            }
        }
    }
    Ok(records)
}

/// The manifest of the bundle named `plugin` among the configured bundles, if any.
fn find_manifest(
    config: &plugboard_engine::EngineConfig,
    plugin: &str,
) -> Result<Option<Manifest>> {
    let mut candidates: Vec<PathBuf> = config.bundles.clone();
    for dir in &config.plugin_dirs {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list plugin directory {}", dir.display()))?;
        candidates.extend(entries.filter_map(|entry| Some(entry.ok()?.path())));
    }
    Ok(candidates
        .iter()
        .filter(|dir| dir.join(MANIFEST_FILE).is_file())
        .filter_map(|dir| Manifest::load(dir, &config.limits).ok())
        .find(|manifest| manifest.plugin.name == plugin))
}
