//! The host configuration file: the shipped example (`examples/plugboard.toml`) parses
//! with the values it shows and shows every key the format has, and every broken file
//! under `tests/fixtures/host-configs/` is refused with a message that names the file, the
//! line, the key and what was expected.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugboard_engine::EngineConfig;
use plugboard_engine::host_config::{HostConfigError, apply_file};
use plugboard_engine::manifest::{HostLimits, Manifest};
use plugboard_engine::sandbox::Mechanism;
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host-configs")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugboard.toml")
}

fn fresh() -> EngineConfig {
    EngineConfig::new(PathBuf::from("/usr/libexec/plugboard-host"))
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixtures())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| {
            Path::new(name)
                .extension()
                .is_some_and(|extension| extension == "toml")
        })
        .collect();
    names.sort();
    names
}

fn refusal(file: &Path) -> String {
    let mut config = fresh();
    match apply_file(&mut config, file) {
        Err(err @ HostConfigError::Invalid { .. }) => err.to_string(),
        Err(err) => panic!("{} could not be read: {err}", file.display()),
        Ok(()) => panic!("{} was accepted", file.display()),
    }
}

fn assert_refused_with(file_name: &str, expected: &[&str]) {
    let message = refusal(&fixtures().join(file_name));
    assert!(
        message.contains(&format!("{file_name}: ")),
        "message does not name the file {file_name}:\n{message}"
    );
    for part in expected {
        assert!(
            message.contains(part),
            "message for {file_name} lacks {part:?}:\n{message}"
        );
    }
}

/// One test per broken fixture: `test: "file" => [substrings of the message]`. Each list
/// holds the line, the key with the value as written, and the expectation.
macro_rules! invalid_host_configs {
    ($($test:ident: $file:literal => [$($expected:expr),+ $(,)?];)+) => {
        mod invalid {
            $(
                #[test]
                fn $test() {
                    super::assert_refused_with($file, &[$($expected),+]);
                }
            )+
        }

        /// Every fixture that has a test above.
        const TESTED_FIXTURES: &[&str] = &[$($file),+];
    };
}

invalid_host_configs! {
    unknown_top_level_key: "unknown_top_level_key.toml" => ["line 2: unknown key `max_plugin` in the top level", "expected one of: plugin_dirs, bundles, ", "max_plugins"];
    restart_unknown_key: "restart_unknown_key.toml" => ["line 3: unknown key `restart.max_retries` in [restart]", "expected one of: enabled, initial_delay_ms, factor, max_delay_ms, max_restarts, window_s"];
    restart_factor_below_one: "restart_factor_below_one.toml" => ["line 3: `restart.factor` = 0.5", "expected a finite number, at least 1.0"];
    restart_factor_nan: "restart_factor_nan.toml" => ["line 2: `restart.factor` = nan", "expected a finite number, at least 1.0"];
    restart_initial_delay_zero: "restart_initial_delay_zero.toml" => ["line 2: `restart.initial_delay_ms` = 0", "expected an integer number of milliseconds, at least 1"];
    restart_initial_delay_negative: "restart_initial_delay_negative.toml" => ["line 2: `restart.initial_delay_ms` = -5", "expected an integer number of milliseconds, at least 1"];
    restart_max_delay_below_initial: "restart_max_delay_below_initial.toml" => ["line 3: `restart.max_delay_ms` = 1000", "expected an integer number of milliseconds, at least 2000 (`restart.initial_delay_ms`)"];
    restart_window_zero: "restart_window_zero.toml" => ["line 3: `restart.window_s` = 0", "expected an integer number of seconds, at least 1"];
    max_plugins_zero: "max_plugins_zero.toml" => ["line 2: `max_plugins` = 0", "expected an integer number of plugins running at once, at least 1"];
    max_plugins_string: "max_plugins_string.toml" => ["line 1: `max_plugins` = \"many\"", "expected an integer number of plugins running at once, at least 1"];
    memory_budget_zero: "memory_budget_zero.toml" => ["line 2: `memory_budget_mb` = 0", "expected an integer number of MiB shared by all workers, at least 1"];
    grace_too_long: "grace_too_long.toml" => ["line 1: `grace_ms` = 700000", "expected an integer number of milliseconds from 0 to 600000"];
    bundles_not_array: "bundles_not_array.toml" => ["line 1: `bundles` = \"/home/ada/hello\"", "expected an array of bundle directories"];
    plugin_name_invalid: "plugin_name_invalid.toml" => ["line 1: `plugins.\"Bad Name\"`", "the name \"Bad Name\" is not allowed", "expected a plugin name: 1 to 64 characters from a-z, 0-9 and '-'"];
    plugin_unknown_key: "plugin_unknown_key.toml" => ["line 3: unknown key `plugins.hello.colour` in [plugins.hello]", "expected one of: enabled, config, resources, grace_ms"];
    plugin_resources_unknown_key: "plugin_resources_unknown_key.toml" => ["line 2: unknown key `plugins.hello.resources.memory` in [plugins.hello.resources]", "expected one of: memory_mb, cpu_percent, max_threads, max_open_files, hook_timeout_ms, max_in_flight"];
    plugin_memory_above_max: "plugin_memory_above_max.toml" => ["line 2: `plugins.hello.resources.memory_mb` = 1024", "expected an integer number of MiB from 1 to 512 (`limits.max_memory_mb`)"];
    plugin_cpu_zero: "plugin_cpu_zero.toml" => ["line 2: `plugins.hello.resources.cpu_percent` = 0", "expected an integer percentage of one CPU (200 = two full cores) from 1 to 800 (`limits.max_cpu_percent`)"];
    plugin_open_files_below_floor: "plugin_open_files_below_floor.toml" => ["line 2: `plugins.hello.resources.max_open_files` = 8", "expected an integer number of open files from 16 to 65536 (`limits.max_open_files`)"];
    plugin_grace_too_long: "plugin_grace_too_long.toml" => ["line 2: `plugins.hello.grace_ms` = 600001", "expected an integer number of milliseconds from 0 to 600000"];
    plugin_config_array: "plugin_config_array.toml" => ["line 3: `plugins.hello.config.names` = [\"a\", \"b\"]", "expected a string, integer, float or bool"];
    plugin_enabled_not_bool: "plugin_enabled_not_bool.toml" => ["line 2: `plugins.hello.enabled` = \"no\"", "expected true or false"];
    sandbox_require_unknown: "sandbox_require_unknown.toml" => ["line 2: `sandbox.require[1]` = \"selinux\"", "expected one of: unprivileged-uid, namespaces, cgroup, rlimits, no-new-privs, landlock, capabilities, seccomp"];
    sandbox_env_name_with_equals: "sandbox_env_name_with_equals.toml" => ["line 2: `sandbox.env.\"A=B\"`", "the name \"A=B\" is not allowed", "expected an environment variable name: not empty, without '=' or NUL"];
    sandbox_env_name_empty: "sandbox_env_name_empty.toml" => ["line 2: `sandbox.env.\"\"`", "the name \"\" is not allowed", "expected an environment variable name"];
    sandbox_env_value_not_string: "sandbox_env_value_not_string.toml" => ["line 2: `sandbox.env.WORKERS` = 4", "expected a string without NUL characters"];
    sandbox_tmpfs_zero: "sandbox_tmpfs_zero.toml" => ["line 2: `sandbox.tmpfs_mb` = 0", "expected an integer number of MiB from 1 to 8192 (`limits.max_memory_mb`)"];
    limits_default_above_max: "limits_default_above_max.toml" => ["line 2: `limits.default_memory_mb` = 1024", "expected an integer number of MiB from 1 to 512 (`limits.max_memory_mb`)"];
    limits_max_zero: "limits_max_zero.toml" => ["line 3: `limits.max_in_flight` = 0", "expected an integer number of concurrent hook calls, at least 1"];
    watch_debounce_too_short: "watch_debounce_too_short.toml" => ["line 2: `watch.debounce_ms` = 5", "expected an integer number of milliseconds from 10 to 60000"];
    watch_debounce_too_long: "watch_debounce_too_long.toml" => ["line 3: `watch.debounce_ms` = 120000", "expected an integer number of milliseconds from 10 to 60000"];
    watch_unknown_key: "watch_unknown_key.toml" => ["line 2: unknown key `watch.debounce` in [watch]", "expected one of: enabled, debounce_ms, reload_on_change"];
    policy_unknown_kind: "policy_unknown_kind.toml" => ["line 2: unknown key `policy.oom_killed` in [policy]; expected one of: memory_limit, oom_kill,"];
    policy_unknown_action: "policy_unknown_action.toml" => ["line 2: `policy.crash.action` = \"reboot\": expected one of: log, restart, stop, quarantine"];
    policy_count_zero: "policy_count_zero.toml" => ["line 3: `policy.hook_timeout.count` = 0", "expected an integer number of violations from 1 to 86400"];
    policy_ratio_above_one: "policy_ratio_above_one.toml" => ["line 2: `policy.cpu_throttled.ratio` = 1.5", "expected a share of CPU periods above 0 and below 1"];
    policy_ratio_of_one: "policy_ratio_of_one.toml" => ["line 2: `policy.cpu_throttled.ratio` = 1", "expected a share of CPU periods above 0 and below 1"];
    audit_max_zero: "audit_max_zero.toml" => ["line 2: `audit_max_mb` = 0", "expected an integer number of MiB, at least 1"];
    log_max_zero: "log_max_zero.toml" => ["line 2: `log_max_mb` = 0", "expected an integer number of MiB, at least 1"];
    log_keep_too_many: "log_keep_too_many.toml" => ["line 2: `log_keep` = 5000", "expected an integer number of rotated files from 0 to 1000"];
    toml_syntax_error: "toml_syntax_error.toml" => ["line 2, column 19: invalid TOML: ", "(in `memory_budget_mb =`)"];
}

#[test]
fn every_fixture_has_a_test() {
    let mut tested: Vec<&str> = TESTED_FIXTURES.to_vec();
    tested.sort_unstable();
    assert_eq!(fixture_names(), tested);
    assert!(tested.len() >= 15);
}

#[test]
fn the_example_parses_with_the_values_it_shows() {
    let mut config = fresh();
    apply_file(&mut config, &example()).unwrap_or_else(|err| panic!("{err}"));

    assert_eq!(
        config.plugin_dirs,
        [PathBuf::from("/var/lib/plugboard/plugins")]
    );
    assert_eq!(
        config.bundles,
        [PathBuf::from("/home/ada/src/hello-plugin/bundle")]
    );
    assert!(!config.allow_unsigned);
    assert_eq!(config.grace, Duration::from_secs(2));
    assert_eq!(
        config.state_file,
        Some(PathBuf::from("/var/lib/plugboard/state.json"))
    );
    assert_eq!((config.log_max_mb, config.log_keep), (64, 5));
    assert_eq!(config.max_plugins, Some(32));
    assert_eq!(config.memory_budget_mb, Some(4096));
    assert_eq!(config.worker.require, Mechanism::ALL);
    assert!(
        config
            .worker
            .env
            .contains(&("LANG".to_owned(), "C.UTF-8".to_owned()))
    );
    assert_eq!(config.worker.tmpfs_bytes, 16 << 20);
    // The example shows the built-in defaults of these sections.
    assert_eq!(config.limits, HostLimits::default());
    assert_eq!(config.restart, fresh().restart);
    assert_eq!(config.watch, fresh().watch);

    let hello = &config.plugins["hello"];
    assert_eq!(hello.enabled, Some(true));
    assert_eq!(hello.grace_ms, Some(5000));
    assert_eq!(hello.config["greeting"], json!("Good morning"));
    assert_eq!(hello.resources.memory_mb, Some(256));
    assert_eq!(config.plugins["counter"].enabled, Some(false));
}

/// The example's `[plugins.hello]` fits the real `hello` plugin: its config override is a
/// setting of that manifest, and its resource overrides win over the manifest's.
#[test]
fn the_example_overrides_fit_the_hello_plugin() {
    let mut config = fresh();
    apply_file(&mut config, &example()).unwrap();
    let manifest_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/hello/plugin.toml");
    let manifest = Manifest::parse(
        &fs::read_to_string(&manifest_file).unwrap(),
        &manifest_file,
        &config.limits,
    )
    .unwrap();
    let hello = &config.plugins["hello"];

    let merged = manifest.merged_config(&hello.config).unwrap();
    assert_eq!(merged["greeting"], json!("Good morning"));

    let resources = manifest.effective_resources_with(&config.limits, &hello.resources);
    assert_eq!(resources.memory_mb, 256);
    assert_eq!(resources.cpu_percent, 50);
    assert_eq!(resources.hook_timeout_ms, 2000);
    // `greet` has its own timeout in the manifest, which wins over the host's override.
    assert_eq!(
        manifest.hook_timeout_with("greet", &config.limits, &hello.resources),
        Duration::from_millis(100)
    );
}

/// The keys a section allows, read from the refusal of an unknown key in it.
fn allowed_keys(section_header: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("probe.toml");
    fs::write(&file, format!("{section_header}\nno_such_key = 1\n")).unwrap();
    let message = refusal(&file);
    let (_, list) = message
        .split_once("expected one of: ")
        .unwrap_or_else(|| panic!("no key list in: {message}"));
    list.split(", ").map(str::to_owned).collect()
}

/// Every key the format allows appears in the example, so a new key cannot be added
/// without documenting it there.
#[test]
fn the_example_shows_every_key() {
    let text = fs::read_to_string(example()).unwrap();
    let example: toml::Table = toml::from_str(&text).unwrap();
    let keys_of = |table: &toml::Table| table.keys().cloned().collect::<BTreeSet<String>>();
    let table = |value: &toml::Value| value.as_table().unwrap().clone();

    assert_eq!(keys_of(&example), allowed_keys(""));
    for section in ["sandbox", "limits", "restart", "watch"] {
        assert_eq!(
            keys_of(&table(&example[section])),
            allowed_keys(&format!("[{section}]")),
            "[{section}]"
        );
    }
    let rule = table(&example["policy"]["hook_timeout"]);
    assert_eq!(keys_of(&rule), allowed_keys("[policy.hook_timeout]"));
    let hello = table(&example["plugins"]["hello"]);
    assert_eq!(keys_of(&hello), allowed_keys("[plugins.hello]"));
    assert_eq!(
        keys_of(&table(&hello["resources"])),
        allowed_keys("[plugins.hello.resources]")
    );
}
