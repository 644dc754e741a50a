//! `[dependencies]`: which plugins must run before another, resolved by semver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{ActorMessage, Plugin};
use crate::engine::{EngineError, Shared};
use crate::manifest::Manifest;
use crate::snapshot::PluginState;

/// The plugins to start for `name`, dependencies first (each once), `name` last. Loads
/// (verifies) every dependency on the way so their manifests and versions are known;
/// refuses a missing or incompatible dependency and a cycle, naming them. `name` itself is
/// only read here, not verified, when its manifest declares no dependencies: its start
/// verifies it while its worker confines itself, and checks its dependencies again against
/// the verified manifest. One that declares dependencies is verified first, so that an
/// unverified manifest never decides which other plugins start, nor turns a bundle's
/// trust failure into a dependency error.
pub(crate) fn start_order(shared: &Shared, name: &str) -> Result<Vec<Arc<Plugin>>, EngineError> {
    let mut order = Vec::new();
    let mut path = Vec::new();
    visit(shared, name, &mut path, &mut order)?;
    Ok(order)
}

fn visit(
    shared: &Shared,
    name: &str,
    path: &mut Vec<String>,
    order: &mut Vec<Arc<Plugin>>,
) -> Result<(), EngineError> {
    if order.iter().any(|plugin| plugin.name == name) {
        return Ok(());
    }
    if let Some(at) = path.iter().position(|seen| seen == name) {
        let mut cycle = path[at..].to_vec();
        cycle.push(name.to_owned());
        return Err(EngineError::DependencyCycle {
            cycle: cycle.join(" → "),
        });
    }
    let plugin = shared.plugin(name)?;
    let manifest = if path.is_empty() {
        read_manifest(shared, &plugin)?
    } else {
        loaded_manifest(&plugin)?
    };
    path.push(name.to_owned());
    for (dependency, requirement) in &manifest.dependencies {
        let Ok(target) = shared.plugin(dependency) else {
            return Err(EngineError::MissingDependency {
                plugin: name.to_owned(),
                dependency: dependency.clone(),
                requirement: requirement.to_string(),
            });
        };
        let found = loaded_manifest(&target).map_err(|err| EngineError::DependencyUnavailable {
            plugin: name.to_owned(),
            dependency: dependency.clone(),
            reason: err.to_string(),
        })?;
        if !requirement.matches(&found.plugin.version) {
            return Err(EngineError::IncompatibleDependency {
                plugin: name.to_owned(),
                dependency: dependency.clone(),
                requirement: requirement.to_string(),
                found: found.plugin.version.to_string(),
            });
        }
        visit(shared, dependency, path, order)?;
    }
    path.pop();
    order.push(plugin);
    Ok(())
}

/// The plugin's manifest: the verified one if it is loaded, else `plugin.toml` as it is on
/// disk, unverified, if it declares no dependencies (nothing to start first). A manifest
/// that declares some, or does not read or parse, is loaded the usual way, which verifies
/// the bundle (rejecting it with the reason if it fails).
fn read_manifest(shared: &Shared, plugin: &Plugin) -> Result<Manifest, EngineError> {
    if let Some(manifest) = plugin.lifecycle().manifest.clone() {
        return Ok(manifest);
    }
    let path = plugin.dir().join(crate::manifest::MANIFEST_FILE);
    match crate::manifest::read_bundle_manifest(&path)
        .and_then(|source| Manifest::parse(&source, &path, &shared.config.limits))
    {
        Ok(unverified) if unverified.dependencies.is_empty() => Ok(unverified),
        _ => loaded_manifest(plugin),
    }
}

/// The plugin's manifest, verifying the bundle first when that has not happened yet.
fn loaded_manifest(plugin: &Plugin) -> Result<Manifest, EngineError> {
    if let Some(manifest) = plugin.lifecycle().manifest.clone() {
        return Ok(manifest);
    }
    plugin.ask(ActorMessage::Load)?;
    plugin
        .lifecycle()
        .manifest
        .clone()
        .ok_or_else(|| EngineError::Gone {
            plugin: plugin.name.clone(),
        })
}

/// At start: every dependency of `manifest` must be up, in a matching version.
pub(crate) fn check_running(
    shared: &Shared,
    name: &str,
    manifest: &Manifest,
) -> Result<(), EngineError> {
    for (dependency, requirement) in &manifest.dependencies {
        let Ok(target) = shared.plugin(dependency) else {
            return Err(EngineError::MissingDependency {
                plugin: name.to_owned(),
                dependency: dependency.clone(),
                requirement: requirement.to_string(),
            });
        };
        let lifecycle = target.lifecycle();
        let version = lifecycle
            .manifest
            .as_ref()
            .map(|manifest| manifest.plugin.version.clone());
        let up = lifecycle.is_up() && lifecycle.state != PluginState::Starting;
        let state = lifecycle.state;
        drop(lifecycle);
        if !up {
            return Err(EngineError::DependencyUnavailable {
                plugin: name.to_owned(),
                dependency: dependency.clone(),
                reason: format!("it is {}", state.as_str()),
            });
        }
        if let Some(version) = version.filter(|version| !requirement.matches(version)) {
            return Err(EngineError::IncompatibleDependency {
                plugin: name.to_owned(),
                dependency: dependency.clone(),
                requirement: requirement.to_string(),
                found: version.to_string(),
            });
        }
    }
    Ok(())
}

/// Whether `dependency`, which refused a start of its dependent as unavailable, was only
/// starting: it is starting still, or is up by now (it finished between the refusal and
/// this look). Either way the dependent may be tried again in a moment.
pub(crate) fn was_only_starting(shared: &Shared, dependency: &str) -> bool {
    shared.plugin(dependency).is_ok_and(|target| {
        let lifecycle = target.lifecycle();
        lifecycle.state == PluginState::Starting || lifecycle.is_up()
    })
}

/// At reload: every running plugin that depends on `name` directly must accept `version`,
/// the version it is reloaded to; the first that does not is named with its requirement.
pub(crate) fn check_dependents_accept(
    shared: &Shared,
    name: &str,
    version: &semver::Version,
) -> Result<(), EngineError> {
    // `name` itself is skipped before its lifecycle is locked: a start asks this holding it.
    for plugin in shared
        .all_plugins()
        .iter()
        .filter(|plugin| plugin.name != name)
    {
        let lifecycle = plugin.lifecycle();
        let up = lifecycle.is_up() || lifecycle.state == PluginState::BackingOff;
        let requirement = lifecycle
            .manifest
            .as_ref()
            .and_then(|manifest| manifest.dependencies.get(name).cloned());
        drop(lifecycle);
        match requirement {
            Some(requirement) if up && !requirement.matches(version) => {
                return Err(EngineError::IncompatibleDependency {
                    plugin: plugin.name.clone(),
                    dependency: name.to_owned(),
                    requirement: requirement.to_string(),
                    found: version.to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// At reload, for the new version's `manifest`: no cycle, its dependencies up, and the
/// running dependents accepting its version.
pub(crate) fn check_reload(
    shared: &Shared,
    name: &str,
    manifest: &Manifest,
) -> Result<(), EngineError> {
    check_no_cycle(shared, name, manifest)?;
    check_running(shared, name, manifest)?;
    check_dependents_accept(shared, name, &manifest.plugin.version)
}

/// A cycle `manifest` (`name`'s, about to run) would close through the other plugins'
/// current manifests: refused, naming it (`a → b → a`). A start checks it although
/// [`start_order`] refuses cycles, because a reload can change a manifest under plugins
/// already running.
pub(crate) fn check_no_cycle(
    shared: &Shared,
    name: &str,
    manifest: &Manifest,
) -> Result<(), EngineError> {
    let mut searched = BTreeSet::new();
    for dependency in manifest.dependencies.keys() {
        let mut path = vec![name.to_owned()];
        if reaches(shared, dependency, name, &mut path, &mut searched) {
            path.push(name.to_owned());
            return Err(EngineError::DependencyCycle {
                cycle: path.join(" → "),
            });
        }
    }
    Ok(())
}

/// Whether `target` is reached from `from` through the current manifests' dependencies;
/// `path` then holds the way there. `target`'s own manifest is never read (its lifecycle
/// may be locked by the caller).
fn reaches(
    shared: &Shared,
    from: &str,
    target: &str,
    path: &mut Vec<String>,
    searched: &mut BTreeSet<String>,
) -> bool {
    if from == target {
        return true;
    }
    if !searched.insert(from.to_owned()) {
        return false;
    }
    let dependencies: Vec<String> = shared.plugin(from).map_or_else(
        |_| Vec::new(),
        |plugin| {
            plugin
                .lifecycle()
                .manifest
                .as_ref()
                .map(|manifest| manifest.dependencies.keys().cloned().collect())
                .unwrap_or_default()
        },
    );
    path.push(from.to_owned());
    if dependencies
        .iter()
        .any(|dependency| reaches(shared, dependency, target, path, searched))
    {
        return true;
    }
    path.pop();
    false
}

/// The running plugins that depend on `name`, directly or through others, the farthest
/// dependents first: the order to stop them in before `name`. Ends whatever the graph
/// (each plugin is visited once), a cycle included.
pub(crate) fn running_dependents(shared: &Shared, name: &str) -> Vec<Arc<Plugin>> {
    // The plugins up besides `name`, each with what it depends on, read once.
    let up: BTreeMap<String, (Arc<Plugin>, BTreeSet<String>)> = shared
        .all_plugins()
        .into_iter()
        .filter(|plugin| plugin.name != name)
        .filter_map(|plugin| {
            let lifecycle = plugin.lifecycle();
            let up = lifecycle.is_up() || lifecycle.state == PluginState::BackingOff;
            let dependencies: BTreeSet<String> = lifecycle
                .manifest
                .as_ref()
                .map(|manifest| manifest.dependencies.keys().cloned().collect())
                .unwrap_or_default();
            drop(lifecycle);
            up.then(|| (plugin.name.clone(), (plugin, dependencies)))
        })
        .collect();
    let mut dependents = BTreeSet::new();
    let mut frontier = vec![name.to_owned()];
    while let Some(current) = frontier.pop() {
        for (other, (_, dependencies)) in &up {
            if dependencies.contains(&current) && dependents.insert(other.clone()) {
                frontier.push(other.clone());
            }
        }
    }
    // Depth-first over their dependencies among themselves: each after what it depends
    // on; reversed, each before what it depends on.
    let (mut placed, mut order) = (BTreeSet::new(), Vec::new());
    for dependent in &dependents {
        after_its_dependencies(dependent, &up, &dependents, &mut placed, &mut order);
    }
    order.reverse();
    order
}

/// Places `name` in `order` after the plugins among `dependents` it depends on (each once:
/// a cycle ends where it comes back).
fn after_its_dependencies(
    name: &str,
    up: &BTreeMap<String, (Arc<Plugin>, BTreeSet<String>)>,
    dependents: &BTreeSet<String>,
    placed: &mut BTreeSet<String>,
    order: &mut Vec<Arc<Plugin>>,
) {
    if !placed.insert(name.to_owned()) {
        return;
    }
    let Some((plugin, dependencies)) = up.get(name) else {
        return;
    };
    for dependency in dependencies
        .iter()
        .filter(|dependency| dependents.contains(*dependency))
    {
        after_its_dependencies(dependency, up, dependents, placed, order);
    }
    order.push(Arc::clone(plugin));
}
