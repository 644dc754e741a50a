//! `plugboard demo`: nothing prepared. A throw-away signing key in a temporary directory,
//! the example bundles packed from the libraries built next to this binary and signed
//! with it, a trust store pinning it, the well-behaved plugins started and traffic on.
//! The misbehaving examples (and the zoo) are verified and wait for the user: the chaos
//! menu sets off one zoo plugin at a time.
//! The temporary directory goes away when the demo ends.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plugboard_engine::EngineConfig;
use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::{HostLimits, MANIFEST_FILE, Manifest};
use plugboard_engine::trust::{PrivateKey, SIGNATURE_FILE, TrustLevel, TrustStore};

use super::ViewOptions;
use super::app::{App, ChaosAct, Status};
use super::event_loop::{self, Startup};
use super::theme::Role;

/// What the demo does with an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Well-behaved: started, under traffic.
    Run,
    /// Misbehaving on request: verified, offered by the chaos menu (what it does, and the
    /// payload its `chaos` hook gets).
    Chaos(&'static str, &'static str),
    /// Misbehaving examples without a chaos hook: verified, for the user to start.
    Load,
}

/// An example plugin: its manifest (built into the binary) and its part in the demo.
struct Example {
    name: &'static str,
    manifest: &'static str,
    part: Part,
}

macro_rules! example {
    ($name:literal, $part:expr) => {
        Example {
            name: $name,
            manifest: include_str!(concat!("../../plugins/", $name, "/plugin.toml")),
            part: $part,
        }
    };
}

/// The examples and the zoo; the zoo in the order the chaos menu lists it.
const EXAMPLES: [Example; 16] = [
    example!("hello", Part::Run),
    example!("counter", Part::Run),
    example!("hello-c", Part::Run),
    example!("panicky", Part::Load),
    example!("prober", Part::Load),
    example!(
        "netprobe",
        Part::Chaos(
            "connects over TCP without the network capability (seccomp)",
            ""
        )
    ),
    example!(
        "memhog",
        Part::Chaos("allocates until its cgroup's memory limit OOM-kills it", "")
    ),
    example!(
        "cpuspin",
        Part::Chaos(
            "busy-loops on several threads for 8 s, far past its CPU quota",
            "8000"
        )
    ),
    example!(
        "forkbomb",
        Part::Chaos("starts processes in a loop (seccomp refuses spawning)", "")
    ),
    example!("fdleak", Part::Chaos("opens files until EMFILE", "")),
    example!(
        "crasher",
        Part::Chaos("writes through a bad pointer: SIGSEGV, then restarts", "")
    ),
    example!(
        "slowhook",
        Part::Chaos("sleeps far past its hook timeout", "")
    ),
    example!(
        "fswriter",
        Part::Chaos("writes outside its fs_write grant (Landlock)", "")
    ),
    example!(
        "panicker",
        Part::Chaos("panics in a hook (an error reply; the worker lives)", "")
    ),
    example!(
        "flaky",
        Part::Chaos(
            "its health checks start failing at random (`steady` would heal it: off)",
            ""
        )
    ),
    example!(
        "badproto",
        Part::Chaos("writes garbage frames onto its IPC socket", "")
    ),
];

/// Calls per second the demo's traffic generator makes unless `--traffic-rate` says.
const DEMO_TRAFFIC: f64 = 20.0;

pub fn run(mut app: App, view: &ViewOptions) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("plugboard-demo-")
        .tempdir()
        .context("cannot create the demo's temporary directory")?;
    let binaries = std::env::current_exe()
        .context("cannot locate the plugboard binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("the plugboard binary has no directory")?;
    let prepared = prepare(work.path(), &binaries)?;

    let mut config = EngineConfig::new(binaries.join("plugboard-host"));
    if !config.worker.host_binary.is_file() {
        bail!(
            "the worker binary {} is missing: build the workspace (`cargo build --workspace`)",
            config.worker.host_binary.display()
        );
    }
    config.plugin_dirs = vec![prepared.plugins.clone()];
    config.trust_store = Some(prepared.trust_store.clone());
    config.log_file = Some(work.path().join("engine.log"));
    config.audit_file = Some(work.path().join("audit.jsonl"));
    config.state_file = Some(work.path().join("state.json"));
    let engine = plugboard_engine::Engine::start(config).context("the engine cannot start")?;
    // `--traffic-rate` if given, else the demo's own.
    let rate = view.traffic_rate.unwrap_or(DEMO_TRAFFIC);
    app.traffic_rate = rate;
    app.status = Some(Status {
        text: format!(
            "demo: bundles signed by throw-away key {} in {}",
            prepared.key_id,
            work.path().display()
        ),
        role: Role::Info,
    });
    app.chaos = EXAMPLES
        .iter()
        .filter_map(|example| match example.part {
            Part::Chaos(what, payload) => Some(ChaosAct {
                plugin: example.name.to_owned(),
                what: what.to_owned(),
                payload: payload.as_bytes().to_vec(),
            }),
            Part::Run | Part::Load => None,
        })
        .collect();
    let named = |wanted: fn(Part) -> bool| -> Vec<String> {
        EXAMPLES
            .iter()
            .filter(|example| wanted(example.part))
            .map(|example| example.name.to_owned())
            .collect()
    };
    let startup = Startup {
        start: named(|part| part == Part::Run),
        load: named(|part| part != Part::Run),
        traffic: Some(rate),
        sample_interval: Some(view.refresh),
    };
    let result = event_loop::run(engine, app, &startup);
    // `work` is removed here, after the engine has stopped every worker.
    drop(work);
    result
}

/// What `prepare` made.
#[derive(Debug)]
pub struct Prepared {
    pub plugins: PathBuf,
    pub trust_store: PathBuf,
    pub key_id: String,
}

/// A key, a trust store pinning it, and every example bundle packed and signed under
/// `work`; libraries are taken from `binaries` (the directory of the built workspace).
pub fn prepare(work: &Path, binaries: &Path) -> Result<Prepared> {
    let keys = work.join("keys");
    let trust_store = work.join("trust");
    let plugins = work.join("plugins");
    for dir in [&keys, &trust_store, &plugins] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = PrivateKey::generate();
    let public = keys.join("demo.pub");
    std::fs::write(&public, key.public_key().to_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    TrustStore::add_key(&trust_store, &public, TrustLevel::Sandboxed)?;

    let limits = HostLimits::default();
    for example in &EXAMPLES {
        let bundle = plugins.join(example.name);
        let manifest_file = bundle.join(MANIFEST_FILE);
        let manifest = Manifest::parse(example.manifest, &manifest_file, &limits)?;
        let library = binaries.join(&manifest.plugin.library);
        if !library.is_file() {
            bail!(
                "{} is missing: build the example plugins first (`cargo build --workspace`)",
                library.display()
            );
        }
        std::fs::create_dir(&bundle)
            .with_context(|| format!("cannot create {}", bundle.display()))?;
        std::fs::write(&manifest_file, example.manifest)
            .with_context(|| format!("cannot write {}", manifest_file.display()))?;
        let target = bundle.join(&manifest.plugin.library);
        std::fs::copy(&library, &target).with_context(|| {
            format!("cannot copy {} to {}", library.display(), target.display())
        })?;
        let opened = Bundle::open(&bundle, &limits)?;
        key.sign_bundle(opened.digests())
            .write(&bundle.join(SIGNATURE_FILE))?;
    }
    Ok(Prepared {
        plugins,
        trust_store,
        key_id: key.key_id().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_bundles_verify_against_the_demo_trust_store() {
        // The libraries are built next to the test binary's parent (target/<profile>).
        let binaries = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        if !binaries.join("libhello.so").is_file() {
            eprintln!("skipped: run `cargo build --workspace` first to build the example plugins");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let prepared = prepare(work.path(), &binaries).unwrap();
        let store = TrustStore::open(&prepared.trust_store).unwrap();
        for example in &EXAMPLES {
            let bundle =
                Bundle::open(&prepared.plugins.join(example.name), &HostLimits::default()).unwrap();
            let verified = bundle.verify(&store).unwrap();
            assert_eq!(
                verified.key_id.to_string(),
                prepared.key_id,
                "{}",
                example.name
            );
        }
    }
}
