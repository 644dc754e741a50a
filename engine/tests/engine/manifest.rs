//! `plugin.toml`: every shipped fixture under `tests/fixtures/manifests/valid/` loads with
//! the values it says, and every one under `invalid/` is refused with a message that names
//! the file, the key, the bad value and what was expected.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugboard_engine::manifest::{
    Capabilities, ConfigType, EffectiveResources, HostLimits, HostSearchPaths, IsolationMode,
    MANIFEST_FILE, Manifest, ManifestError, Priority, Requires, Resources, SUPPORTED_API_VERSIONS,
    UnavailableReason,
};
use serde_json::json;

/// The library every invalid fixture that gets as far as `check_bundle` names, so that
/// only the defect the fixture is about can fail.
const PRESENT_LIBRARY: &str = "libpresent.so";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests")
}

fn fixture_names(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixtures().join(dir))
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

fn parse_fixture(path: &Path, limits: &HostLimits) -> Result<Manifest, ManifestError> {
    let source = fs::read_to_string(path).unwrap();
    Manifest::parse(&source, path, limits)
}

fn parse_valid(file_name: &str) -> Manifest {
    let path = fixtures().join("valid").join(file_name);
    parse_fixture(&path, &HostLimits::default())
        .unwrap_or_else(|err| panic!("{file_name} should parse: {err}"))
}

/// A bundle directory holding `manifest`'s library (empty: only its presence is checked).
fn bundle_for(library: &str) -> tempfile::TempDir {
    let bundle = tempfile::tempdir().unwrap();
    fs::write(bundle.path().join(library), b"").unwrap();
    bundle
}

/// Parses an invalid fixture and, if that passes, checks it against a bundle holding
/// [`PRESENT_LIBRARY`] and this host.
fn invalid_fixture_error(file_name: &str) -> ManifestError {
    let path = fixtures().join("invalid").join(file_name);
    match parse_fixture(&path, &HostLimits::default()) {
        Err(err) => err,
        Ok(manifest) => {
            let bundle = bundle_for(PRESENT_LIBRARY);
            match manifest.check_bundle(bundle.path()) {
                Err(err) => err,
                Ok(()) => panic!("{file_name} was accepted"),
            }
        }
    }
}

fn assert_refused_with(file_name: &str, expected: &[&str]) {
    let message = invalid_fixture_error(file_name).to_string();
    assert!(
        message.contains(file_name),
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
/// holds `file:line`, the key, the value as written and (part of) the expectation.
macro_rules! invalid_manifests {
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
        const TESTED_INVALID_FIXTURES: &[&str] = &[$($file),+];
    };
}

invalid_manifests! {
    name_pattern: "name_pattern.toml" => ["name_pattern.toml:2: ", "`plugin.name`", r#"= "Hello_World""#, "expected a plugin name: 1 to 64 characters from a-z, 0-9 and '-'"];
    name_too_long: "name_too_long.toml" => ["name_too_long.toml:2: ", "`plugin.name`", &format!("\"{}\"", "a".repeat(65)), "1 to 64 characters"];
    name_empty: "name_empty.toml" => ["name_empty.toml:2: ", "`plugin.name`", r#"= """#, "expected a plugin name"];
    version_not_semver: "version_not_semver.toml" => ["version_not_semver.toml:3: ", "`plugin.version`", r#"= "1.0""#, r#"expected a semver version such as "1.2.0""#, "while parsing minor version number"];
    api_version_unsupported: "api_version_unsupported.toml" => ["api_version_unsupported.toml:4: ", "`plugin.api_version` = 2", "expected a plugin API version this host supports: 1"];
    min_host_version_unmet: "min_host_version_unmet.toml" => ["min_host_version_unmet.toml:6: ", "`plugin.min_host_version`", r#"= ">=99.0""#, &format!("expected a requirement that this host's version {} satisfies", plugboard_engine::HOST_VERSION)];
    min_host_version_not_requirement: "min_host_version_not_requirement.toml" => ["min_host_version_not_requirement.toml:6: ", "`plugin.min_host_version`", r#"= "at least 0.1""#, r#"expected a semver requirement such as ">=0.1""#];
    library_path_separator: "library_path_separator.toml" => ["library_path_separator.toml:5: ", "`plugin.library`", r#"= "lib/libhello.so""#, "expected a file name inside the bundle directory", "no '/'"];
    library_dot_dot: "library_dot_dot.toml" => ["library_dot_dot.toml:5: ", "`plugin.library`", r#"= "..""#, "expected a file name inside the bundle directory"];
    library_is_the_manifest: "library_is_the_manifest.toml" => ["library_is_the_manifest.toml:5: ", "`plugin.library`", r#"= "plugin.toml""#, r#"not ".", "..", "plugin.toml" or "plugin.sig""#];
    library_missing: "library_missing.toml" => ["library_missing.toml:5: ", "`plugin.library`", r#"= "libabsent.so""#, "not found; expected a regular file at ", "/libabsent.so"];
    hook_name_invalid: "hook_name_invalid.toml" => ["hook_name_invalid.toml:7: ", "`hooks.Greet`", r#"the name "Greet" is not allowed"#, "expected a hook name: 1 to 64 characters from a-z, 0-9, '_', '.' and '-'"];
    hook_name_quoted: "hook_name_quoted.toml" => ["hook_name_quoted.toml:7: ", r#"`hooks."on request"`"#, r#"the name "on request""#, "expected a hook name"];
    hook_priority_unknown: "hook_priority_unknown.toml" => ["hook_priority_unknown.toml:8: ", "`hooks.greet.priority`", r#"= "urgent""#, "expected one of: critical, high, normal, low, background"];
    hook_timeout_zero: "hook_timeout_zero.toml" => ["hook_timeout_zero.toml:8: ", "`hooks.greet.timeout_ms` = 0", "expected an integer number of milliseconds from 1 to 60000"];
    hook_timeout_above_max: "hook_timeout_above_max.toml" => ["hook_timeout_above_max.toml:8: ", "`hooks.greet.timeout_ms` = 60001", "from 1 to 60000"];
    hook_value_not_table: "hook_value_not_table.toml" => ["hook_value_not_table.toml:8: ", "`hooks.greet`", r#"= "high""#, "expected a table such as { priority"];
    hook_unknown_key: "hook_unknown_key.toml" => ["hook_unknown_key.toml:8: ", "unknown key `hooks.greet.prio` in [hooks.greet]", "expected one of: priority, timeout_ms"];
    memory_zero: "memory_zero.toml" => ["memory_zero.toml:8: ", "`resources.memory_mb` = 0", "expected an integer number of MiB from 1 to 8192"];
    memory_above_max: "memory_above_max.toml" => ["memory_above_max.toml:8: ", "`resources.memory_mb` = 10000", "from 1 to 8192"];
    cpu_above_max: "cpu_above_max.toml" => ["cpu_above_max.toml:8: ", "`resources.cpu_percent` = 900", "expected an integer percentage of one CPU from 1 to 800"];
    open_files_too_low: "open_files_too_low.toml" => ["open_files_too_low.toml:8: ", "`resources.max_open_files` = 8", "expected an integer number of open files from 16 to 65536"];
    threads_negative: "threads_negative.toml" => ["threads_negative.toml:8: ", "`resources.max_threads` = -1", "expected an integer number of threads (pids) from 1 to 4096"];
    hook_timeout_resource_above_max: "hook_timeout_resource_above_max.toml" => ["hook_timeout_resource_above_max.toml:8: ", "`resources.hook_timeout_ms` = 120000", "from 1 to 60000"];
    wrong_type_string_for_integer: "wrong_type_string_for_integer.toml" => ["wrong_type_string_for_integer.toml:8: ", "`resources.memory_mb`", r#"= "64""#, "expected an integer number of MiB"];
    fs_read_relative: "fs_read_relative.toml" => ["fs_read_relative.toml:8: ", "`capabilities.fs_read[1]`", r#"= "data""#, "expected an absolute path without `..` components"];
    fs_write_parent_dir: "fs_write_parent_dir.toml" => ["fs_write_parent_dir.toml:8: ", "`capabilities.fs_write[0]`", r#"= "/tmp/../etc""#, "expected an absolute path without `..` components"];
    emit_hook_name_invalid: "emit_hook_name_invalid.toml" => ["emit_hook_name_invalid.toml:8: ", "`capabilities.emit[0]`", r#"= "Other Hook""#, "expected a hook name"];
    network_not_bool: "network_not_bool.toml" => ["network_not_bool.toml:8: ", "`capabilities.network`", r#"= "yes""#, "expected true or false"];
    health_timeout_over_interval: "health_timeout_over_interval.toml" => ["health_timeout_over_interval.toml:9: ", "`health.timeout_ms` = 2000", "expected an integer number of milliseconds from 1 to 1000 (`health.interval_ms`)"];
    health_default_timeout_over_interval: "health_default_timeout_over_interval.toml" => ["health_default_timeout_over_interval.toml:7: ", "`health.timeout_ms` = 1000 (the default)", "from 1 to 500 (`health.interval_ms`)"];
    health_interval_too_short: "health_interval_too_short.toml" => ["health_interval_too_short.toml:8: ", "`health.interval_ms` = 50", "expected an integer number of milliseconds from 100 to 3600000"];
    dependency_requirement_not_semver: "dependency_requirement_not_semver.toml" => ["dependency_requirement_not_semver.toml:8: ", "`dependencies.counter`", r#"= "latest""#, r#"expected a semver requirement such as "^0.1""#];
    dependency_on_itself: "dependency_on_itself.toml" => ["dependency_on_itself.toml:8: ", "`dependencies.hello`", r#"the name "hello" is not allowed"#, "expected the name of another plugin: `hello` cannot depend on itself"];
    dependency_name_invalid: "dependency_name_invalid.toml" => ["dependency_name_invalid.toml:8: ", "`dependencies.Counter`", r#"the name "Counter""#, "expected a plugin name"];
    config_string_for_integer: "config_string_for_integer.toml" => ["config_string_for_integer.toml:9: ", "`config.retries.default`", r#"= "three""#, r#"expected an integer, as `type = "integer"` says"#];
    config_bool_for_string: "config_bool_for_string.toml" => ["config_bool_for_string.toml:9: ", "`config.greeting.default` = true", r#"expected a string, as `type = "string"` says"#];
    config_float_not_finite: "config_float_not_finite.toml" => ["config_float_not_finite.toml:9: ", "`config.ratio.default` = nan", "expected a finite number"];
    config_required_with_default: "config_required_with_default.toml" => ["config_required_with_default.toml:10: ", "`config.api_key.default`", r#"= "secret""#, "expected no `default` for a setting with `required = true`"];
    config_type_unknown: "config_type_unknown.toml" => ["config_type_unknown.toml:8: ", "`config.items.type`", r#"= "list""#, "expected one of: string, integer, float, bool"];
    config_type_missing: "config_type_missing.toml" => ["config_type_missing.toml:7: ", "missing key `config.items.type`", "expected one of: string, integer, float, bool"];
    requires_binary_missing: "requires_binary_missing.toml" => ["requires_binary_missing.toml:8: ", "`requires.binaries[1]`", r#"= "plugboard-no-such-binary""#, "not found; expected an executable file named \"plugboard-no-such-binary\" in a $PATH directory"];
    requires_library_missing: "requires_library_missing.toml" => ["requires_library_missing.toml:8: ", "`requires.libraries[0]`", r#"= "libplugboard-no-such.so.1""#, "not found; expected a file named \"libplugboard-no-such.so.1\" in a system library directory (", "/usr/lib"];
    requires_library_with_path: "requires_library_with_path.toml" => ["requires_library_with_path.toml:8: ", "`requires.libraries[0]`", r#"= "/usr/lib/libc.so.6""#, "expected a library soname"];
    unknown_top_level_key: "unknown_top_level_key.toml" => ["unknown_top_level_key.toml:7: ", "unknown key `plugins` in the top level", "expected one of: plugin, hooks, capabilities, resources, health, dependencies, config, requires, isolation"];
    unknown_plugin_key: "unknown_plugin_key.toml" => ["unknown_plugin_key.toml:6: ", "unknown key `plugin.licence` in [plugin]", "expected one of: name, version, api_version, description, authors, library, min_host_version"];
    isolation_mode_unknown: "isolation_mode_unknown.toml" => ["isolation_mode_unknown.toml:8: ", "`isolation.mode`", r#"= "thread""#, "expected one of: process, in-process"];
    toml_syntax_error: "toml_syntax_error.toml" => ["toml_syntax_error.toml:3:14: invalid TOML: ", "(in `version = 0.1.0`)"];
    toml_unclosed_at_end: "toml_unclosed_at_end.toml" => ["toml_unclosed_at_end.toml:9:1: invalid TOML: ", "(after `fs_read = [`)"];
    duplicate_key: "duplicate_key.toml" => ["duplicate_key.toml:6:1: invalid TOML: ", "duplicate key `name` in table `plugin`", r#"(in `name = "again"`)"#];
    missing_plugin_name: "missing_plugin_name.toml" => ["missing_plugin_name.toml:1: ", "missing key `plugin.name`", "expected a plugin name"];
    missing_plugin_table: "missing_plugin_table.toml" => ["missing_plugin_table.toml: ", "missing key `plugin`", "expected a [plugin] table with name, version, api_version and library"];
}

#[test]
fn every_invalid_fixture_has_a_test() {
    let mut tested: Vec<&str> = TESTED_INVALID_FIXTURES.to_vec();
    tested.sort_unstable();
    assert_eq!(fixture_names("invalid"), tested);
    assert!(tested.len() >= 30);
}

#[test]
fn errors_expose_file_line_and_key() {
    let err = invalid_fixture_error("name_pattern.toml");
    assert!(matches!(err, ManifestError::InvalidValue { .. }), "{err:?}");
    assert!(err.file().ends_with("invalid/name_pattern.toml"));
    assert_eq!(err.line(), Some(2));
    assert_eq!(err.key(), Some("plugin.name"));

    let err = invalid_fixture_error("library_missing.toml");
    assert!(
        matches!(
            err,
            ManifestError::Unavailable {
                reason: UnavailableReason::NotFound,
                ..
            }
        ),
        "{err:?}"
    );

    let err = invalid_fixture_error("toml_syntax_error.toml");
    assert!(
        matches!(
            err,
            ManifestError::Syntax {
                line: 3,
                column: 14,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.key(), None);
}

#[test]
fn every_valid_fixture_loads_from_a_bundle() {
    let names = fixture_names("valid");
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let manifest = parse_valid(&name);
        let bundle = bundle_for(&manifest.plugin.library);
        fs::copy(
            fixtures().join("valid").join(&name),
            bundle.path().join(MANIFEST_FILE),
        )
        .unwrap();

        let loaded = Manifest::load(bundle.path(), &HostLimits::default())
            .unwrap_or_else(|err| panic!("{name} should load: {err}"));
        assert_eq!(loaded.file(), bundle.path().join(MANIFEST_FILE));
        assert_eq!(loaded.plugin, manifest.plugin);
    }
}

#[test]
fn full_manifest_has_every_value() {
    let manifest = parse_valid("full.toml");

    let plugin = &manifest.plugin;
    assert_eq!(plugin.name, "hello");
    assert_eq!(
        plugin.version,
        semver::Version::parse("1.2.3-beta.1").unwrap()
    );
    assert_eq!(plugin.api_version, 1);
    assert_eq!(plugin.description, "Greets whoever asks.");
    assert_eq!(plugin.authors, ["Ada <ada@example.org>", "Grace"]);
    assert_eq!(plugin.library, "libhello.so");
    assert_eq!(
        plugin.min_host_version,
        Some(semver::VersionReq::parse(">=0.1").unwrap())
    );

    assert_eq!(
        manifest.hooks.keys().collect::<Vec<_>>(),
        ["greet", "on.request", "tick"]
    );
    assert_eq!(manifest.hooks["greet"].priority, Priority::Critical);
    assert_eq!(manifest.hooks["greet"].timeout_ms, Some(100));
    assert_eq!(manifest.hooks["on.request"].priority, Priority::Background);
    assert_eq!(manifest.hooks["tick"].priority, Priority::Normal);
    assert_eq!(manifest.hooks["tick"].timeout_ms, None);

    let capabilities = &manifest.capabilities;
    assert_eq!(
        capabilities.fs_read,
        [PathBuf::from("/usr/share"), PathBuf::from("/etc/hello")]
    );
    assert_eq!(capabilities.fs_write, [PathBuf::from("/tmp/hello")]);
    assert!(capabilities.network);
    assert!(!capabilities.spawn);
    assert_eq!(capabilities.emit, ["other.hook", "audit_log"]);

    assert_eq!(manifest.health.interval(), Duration::from_secs(2));
    assert_eq!(manifest.health.timeout(), Duration::from_millis(500));
    assert_eq!(manifest.health.failures_before_unhealthy, 5);

    assert_eq!(manifest.dependencies.len(), 2);
    assert!(manifest.dependencies["counter"].matches(&semver::Version::new(0, 1, 7)));
    assert!(!manifest.dependencies["logger"].matches(&semver::Version::new(2, 0, 0)));

    assert_eq!(manifest.config["greeting"].value_type, ConfigType::String);
    assert_eq!(manifest.config["greeting"].description, "What to say.");
    assert!(manifest.config["api_key"].required);
    assert_eq!(manifest.config["api_key"].default, None);

    assert_eq!(manifest.requires.binaries, ["sh", "/bin/sh"]);
    assert_eq!(manifest.requires.libraries, ["libc.so.6"]);
    assert_eq!(manifest.isolation.mode, IsolationMode::InProcess);
}

#[test]
fn hook_timeout_takes_the_hook_then_resources_then_host_default() {
    let limits = HostLimits {
        default_hook_timeout_ms: 300,
        ..HostLimits::default()
    };

    let full = parse_valid("full.toml");
    // The hook's own timeout_ms wins.
    assert_eq!(
        full.hook_timeout("greet", &limits),
        Duration::from_millis(100)
    );
    // Without one, [resources].hook_timeout_ms applies, also to hooks not in the manifest.
    assert_eq!(
        full.hook_timeout("on.request", &limits),
        Duration::from_millis(250)
    );
    assert_eq!(
        full.hook_timeout("not-subscribed", &limits),
        Duration::from_millis(250)
    );

    // Without either, the host's default.
    let minimal = parse_valid("minimal.toml");
    assert_eq!(
        minimal.hook_timeout("anything", &limits),
        Duration::from_millis(300)
    );

    let inline = parse_valid("inline.toml");
    assert_eq!(
        inline.hook_timeout("pong", &limits),
        Duration::from_secs(60)
    );
    assert_eq!(
        inline.hook_timeout("ping", &limits),
        Duration::from_millis(300)
    );
}

#[test]
fn effective_resources_fill_in_host_defaults() {
    let limits = HostLimits::default();
    assert_eq!(
        parse_valid("full.toml").effective_resources(&limits),
        EffectiveResources {
            memory_mb: 64,
            cpu_percent: 50,
            max_threads: 16,
            max_open_files: 64,
            hook_timeout_ms: 250,
            max_in_flight: 8,
        }
    );
    assert_eq!(
        parse_valid("minimal.toml").effective_resources(&limits),
        EffectiveResources {
            memory_mb: 128,
            cpu_percent: 100,
            max_threads: 64,
            max_open_files: 256,
            hook_timeout_ms: 1000,
            max_in_flight: 64,
        }
    );
    let inline = parse_valid("inline.toml").effective_resources(&limits);
    assert_eq!(
        (inline.memory_mb, inline.max_open_files, inline.cpu_percent),
        (8192, 16, 100)
    );
}

#[test]
fn default_config_holds_the_defaults_only() {
    assert_eq!(
        serde_json::Value::Object(parse_valid("full.toml").default_config()),
        json!({
            "greeting": "Hello",
            "retries": 3,
            "ratio": 2,
            "threshold": 0.75,
            "verbose": false,
        })
    );
    assert!(parse_valid("minimal.toml").default_config().is_empty());
}

#[test]
fn minimal_and_empty_sections_take_every_default() {
    for name in ["minimal.toml", "empty-sections.toml"] {
        let manifest = parse_valid(name);
        assert!(manifest.hooks.is_empty(), "{name}");
        assert_eq!(
            manifest.capabilities,
            Capabilities::default(),
            "{name}: nothing granted"
        );
        assert_eq!(manifest.resources, Resources::default(), "{name}");
        assert_eq!(manifest.health.interval_ms, 5000, "{name}");
        assert_eq!(manifest.health.timeout_ms, 1000, "{name}");
        assert_eq!(manifest.health.failures_before_unhealthy, 3, "{name}");
        assert!(manifest.dependencies.is_empty(), "{name}");
        assert!(manifest.config.is_empty(), "{name}");
        assert_eq!(manifest.requires, Requires::default(), "{name}");
        assert_eq!(manifest.isolation.mode, IsolationMode::Process, "{name}");
        assert_eq!(manifest.plugin.description, "", "{name}");
        assert!(manifest.plugin.authors.is_empty(), "{name}");
        assert_eq!(manifest.plugin.min_host_version, None, "{name}");
    }
}

#[test]
fn inline_tables_and_dotted_keys_mean_the_same() {
    let manifest = parse_valid("inline.toml");
    assert_eq!(manifest.plugin.name, "inline");
    assert_eq!(manifest.hooks["ping"].priority, Priority::High);
    assert_eq!(manifest.hooks["pong"].timeout_ms, Some(60_000));
    assert_eq!(manifest.health.interval_ms, 100);
    assert_eq!(manifest.line_of("hooks.pong"), Some(4));
    assert_eq!(manifest.line_of("resources.memory_mb"), Some(5));
}

#[test]
fn host_limits_bound_what_a_manifest_may_ask_for() {
    let strict = HostLimits {
        max_memory_mb: 32,
        ..HostLimits::default()
    };
    let path = fixtures().join("valid/full.toml");
    let err = parse_fixture(&path, &strict).unwrap_err().to_string();
    assert!(
        err.contains("full.toml:28: `resources.memory_mb` = 64: expected an integer number of MiB from 1 to 32"),
        "{err}"
    );
}

#[test]
fn line_of_finds_quoted_and_nested_keys() {
    let manifest = parse_valid("full.toml");
    assert_eq!(manifest.line_of("plugin.name"), Some(3));
    assert_eq!(manifest.line_of(r#"hooks."on.request""#), Some(15));
    assert_eq!(manifest.line_of("resources.memory_mb"), Some(28));
    assert_eq!(manifest.line_of("config.ratio"), Some(53));
    assert_eq!(manifest.line_of("config.ratio.default"), Some(55));
    assert_eq!(manifest.line_of("capabilities.nothing"), None);
    assert_eq!(manifest.line_of("not a key ["), None);
}

#[test]
fn serializes_the_schema_without_internal_fields() {
    let manifest = parse_valid("full.toml");
    let value = serde_json::to_value(&manifest).unwrap();
    assert_eq!(value["plugin"]["name"], "hello");
    assert_eq!(value["plugin"]["version"], "1.2.3-beta.1");
    assert_eq!(value["hooks"]["greet"]["priority"], "critical");
    assert_eq!(value["isolation"]["mode"], "in-process");
    assert_eq!(value["config"]["retries"]["type"], "integer");
    assert!(
        value.get("source").is_none() && value.get("file").is_none(),
        "{value}"
    );
    assert!(manifest.source().contains("[plugin]"));
}

#[test]
fn priorities_order_critical_first() {
    let mut priorities = vec![
        Priority::Low,
        Priority::Critical,
        Priority::Background,
        Priority::Normal,
        Priority::High,
    ];
    priorities.sort();
    assert_eq!(priorities, Priority::ALL);
    assert_eq!(Priority::default(), Priority::Normal);
    assert_eq!(Priority::Background.to_string(), "background");
}

#[test]
fn config_types_accept_their_values() {
    assert!(ConfigType::String.accepts(&json!("x")));
    assert!(!ConfigType::String.accepts(&json!(1)));
    assert!(ConfigType::Integer.accepts(&json!(-3)));
    assert!(!ConfigType::Integer.accepts(&json!(1.5)));
    assert!(ConfigType::Float.accepts(&json!(1.5)));
    assert!(ConfigType::Float.accepts(&json!(2)));
    assert!(!ConfigType::Float.accepts(&serde_json::Value::Null));
    assert!(ConfigType::Bool.accepts(&json!(true)));
    assert!(!ConfigType::Bool.accepts(&json!("true")));
}

#[test]
fn supported_api_versions_include_the_sdk_abi() {
    assert!(SUPPORTED_API_VERSIONS.contains(&plugboard_sdk::abi::ABI_VERSION));
}

#[test]
fn load_names_a_missing_manifest() {
    let bundle = tempfile::tempdir().unwrap();
    let err = Manifest::load(bundle.path(), &HostLimits::default()).unwrap_err();
    assert!(matches!(err, ManifestError::Read { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "{}: cannot read the manifest",
            bundle.path().join(MANIFEST_FILE).display()
        )),
        "{message}"
    );
}

#[test]
fn load_refuses_an_oversized_manifest() {
    let bundle = tempfile::tempdir().unwrap();
    let mut source = fs::read_to_string(fixtures().join("valid/minimal.toml")).unwrap();
    source.push('#');
    source.push_str(&"x".repeat(1024 * 1024));
    fs::write(bundle.path().join(MANIFEST_FILE), source).unwrap();
    let err = Manifest::load(bundle.path(), &HostLimits::default()).unwrap_err();
    assert!(matches!(err, ManifestError::TooLarge { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("plugin.toml: the manifest is larger than 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn load_refuses_a_manifest_that_is_not_utf8() {
    let bundle = tempfile::tempdir().unwrap();
    fs::write(
        bundle.path().join(MANIFEST_FILE),
        b"[plugin]\nname = \"h\xffllo\"\n",
    )
    .unwrap();
    let err = Manifest::load(bundle.path(), &HostLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ManifestError::NotUtf8 {
                byte_offset: 18,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn library_must_be_a_regular_file() {
    let manifest = parse_valid("minimal.toml");
    let bundle = tempfile::tempdir().unwrap();
    fs::create_dir(bundle.path().join("libminimal.so")).unwrap();
    let err = manifest.check_bundle(bundle.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ManifestError::Unavailable {
                reason: UnavailableReason::IsDirectory,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("minimal.toml:6: `plugin.library` = \"libminimal.so\": it is a directory; expected a regular file at "), "{err}");
}

#[test]
fn check_bundle_searches_the_given_directories() {
    let host = tempfile::tempdir().unwrap();
    let bin = host.path().join("bin");
    let lib = host.path().join("lib");
    fs::create_dir(&bin).unwrap();
    fs::create_dir(&lib).unwrap();
    fs::write(bin.join("tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(bin.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(bin.join("data"), b"not a program").unwrap();
    fs::set_permissions(bin.join("data"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(lib.join("libfoo.so.1"), b"").unwrap();
    let search_paths = HostSearchPaths {
        binary_dirs: vec![bin.clone()],
        library_dirs: vec![lib.clone()],
    };
    let bundle = bundle_for("libpresent.so");
    let manifest_requiring = |binary: &str, library: &str| {
        let source = format!(
            "[plugin]\nname = \"needs\"\nversion = \"1.0.0\"\napi_version = 1\nlibrary = \"libpresent.so\"\n\n\
             [requires]\nbinaries = [\"{binary}\"]\nlibraries = [\"{library}\"]\n"
        );
        Manifest::parse(&source, Path::new("needs.toml"), &HostLimits::default()).unwrap()
    };

    let tool = bin.join("tool");
    for binary in ["tool", tool.to_str().unwrap()] {
        manifest_requiring(binary, "libfoo.so.1")
            .check_bundle_with(bundle.path(), &search_paths)
            .unwrap();
    }
    assert_eq!(
        search_paths.find_library("libfoo.so.1"),
        Some(lib.join("libfoo.so.1"))
    );

    // Present but not executable is as good as absent.
    let err = manifest_requiring("data", "libfoo.so.1")
        .check_bundle_with(bundle.path(), &search_paths)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs.toml:8: `requires.binaries[0]` = \"data\": not found; expected an executable file named \"data\" in a $PATH directory ("), "{err}");
    assert!(
        err.contains(&bin.display().to_string()),
        "lists where it looked: {err}"
    );

    let err = manifest_requiring("tool", "libbar.so.2")
        .check_bundle_with(bundle.path(), &search_paths)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs.toml:9: `requires.libraries[0]` = \"libbar.so.2\": not found"),
        "{err}"
    );
    assert!(
        err.contains(&lib.display().to_string()),
        "lists where it looked: {err}"
    );
}

#[test]
fn system_search_paths_find_what_every_linux_host_has() {
    let system = HostSearchPaths::from_system();
    assert!(system.find_binary("sh").is_some(), "{system:?}");
    assert!(system.find_binary("/bin/sh").is_some());
    assert!(
        system.find_binary("bin/sh").is_none(),
        "relative paths are not looked up"
    );
    assert!(
        system
            .library_dirs
            .iter()
            .any(|dir| dir == Path::new("/usr/lib"))
    );
}
