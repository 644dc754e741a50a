//! `plugboard new <name>`: a plugin crate that builds, packs and signs with the CLI.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::output::outln;

/// The SDK this binary was built beside, when that checkout still exists.
fn default_sdk_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/sdk");
    path.join("Cargo.toml").is_file().then_some(path)
}

/// Whether `dir` holds the SDK's package (its Cargo.toml names `plugboard-sdk`): any other
/// directory would fail only at the plugin's first `cargo build`.
fn check_is_sdk(dir: &Path) -> Result<()> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    let named = text.parse::<toml::Table>().ok().and_then(|table| {
        table
            .get("package")?
            .get("name")?
            .as_str()
            .map(str::to_owned)
    });
    if named.as_deref() != Some(SDK_PACKAGE) {
        bail!(
            "{} is not the plugboard SDK: expected a directory whose Cargo.toml is package `{SDK_PACKAGE}` (`plugins/sdk` in a Plugboard checkout)",
            dir.display()
        );
    }
    Ok(())
}

/// The files of a new plugin crate; `{{key}}` placeholders are filled by [`render`].
const TEMPLATES: [(&str, &str); 6] = [
    ("Cargo.toml", include_str!("../templates/new/Cargo.toml.in")),
    (
        "plugin.toml",
        include_str!("../templates/new/plugin.toml.in"),
    ),
    ("src/lib.rs", include_str!("../templates/new/lib.rs.in")),
    (
        "tests/plugin.rs",
        include_str!("../templates/new/plugin_test.rs.in"),
    ),
    ("README.md", include_str!("../templates/new/README.md.in")),
    // The README's keygen puts the signing key in `keys/`: kept out of the repository.
    (".gitignore", include_str!("../templates/new/gitignore.in")),
];

fn render(template: &str, substitutions: &[(&str, &str)]) -> String {
    substitutions
        .iter()
        .fold(template.to_owned(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Names that are valid plugin names but that cargo refuses as a package name (the crate
/// is named like the plugin): keywords and the names cargo reserves.
const NOT_A_PACKAGE_NAME: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "core",
    "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if",
    "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub",
    "ref", "return", "self", "static", "std", "struct", "super", "test", "trait", "true", "try",
    "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// The package the new crate depends on: a crate of the same name would collide with it.
const SDK_PACKAGE: &str = "plugboard-sdk";

/// Names the generated code uses (the SDK's items it imports, the prelude's it calls): a
/// plugin type of one of these names would shadow it and the crate would not build.
const NAMES_THE_TEMPLATE_USES: &[&str] = &[
    "Box",
    "Config",
    "Debug",
    "Default",
    "Err",
    "Error",
    "Host",
    "None",
    "Ok",
    "Option",
    "Plugin",
    "Result",
    "Some",
    "String",
    "TestPlugin",
    "Vec",
];

/// The plugin's type: its name in CamelCase, made a Rust identifier that shadows nothing
/// the generated code uses (`9lives` → `Plugin9lives`, `result` → `ResultPlugin`).
fn type_name(name: &str) -> String {
    let camel: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    if camel.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Plugin{camel}")
    } else if NAMES_THE_TEMPLATE_USES.contains(&camel.as_str()) {
        format!("{camel}Plugin")
    } else {
        camel
    }
}

pub fn scaffold(name: &str, parent: &Path, sdk_path: Option<&Path>) -> Result<()> {
    if !valid_name(name) {
        bail!("plugin name {name:?} is invalid: expected 1 to 64 characters from a-z, 0-9 and '-'");
    }
    // The crate takes the plugin's name, and cargo wants more of a package name.
    if !name.starts_with(|first: char| first.is_ascii_lowercase()) {
        bail!(
            "plugin name {name:?} cannot name the new crate: cargo needs a package name that starts with a letter (a-z)"
        );
    }
    if name == SDK_PACKAGE {
        bail!(
            "plugin name {name:?} cannot name the new crate: it is the name of the SDK package the crate depends on"
        );
    }
    if NOT_A_PACKAGE_NAME.contains(&name) {
        bail!(
            "plugin name {name:?} cannot name the new crate: cargo refuses it as a package name (a Rust keyword or a reserved name)"
        );
    }
    let crate_dir = parent.join(name);
    if crate_dir.exists() {
        bail!(
            "{} already exists; choose another name or directory",
            crate_dir.display()
        );
    }
    let sdk = match sdk_path.map(Path::to_path_buf).or_else(default_sdk_path) {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("SDK path {} does not exist", path.display()))?,
        // Without a checkout beside this binary there is nothing to point at: a version
        // would have to come from a registry the SDK may not be published to.
        None => bail!(
            "no plugboard SDK found beside this plugboard (built from a checkout that has gone): pass --sdk-path <dir>, the `plugins/sdk` directory of a Plugboard checkout"
        ),
    };
    check_is_sdk(&sdk)?;
    let sdk_shown = format!("{:?}", sdk.display().to_string());
    let sdk_dependency = format!("plugboard-sdk = {{ path = {sdk_shown} }}");
    let testing_dependency = format!("{{ path = {sdk_shown}, features = [\"testing\"] }}");
    let library = format!("lib{}.so", name.replace('-', "_"));
    let type_name = type_name(name);

    let abi = plugboard_sdk::abi::ABI_VERSION.to_string();
    let substitutions = [
        ("name", name),
        ("type_name", type_name.as_str()),
        ("library", library.as_str()),
        ("sdk_dependency", sdk_dependency.as_str()),
        ("testing_dependency", testing_dependency.as_str()),
        ("abi", abi.as_str()),
    ];
    let files = TEMPLATES.map(|(relative, template)| (relative, render(template, &substitutions)));
    for (relative, contents) in files {
        let path = crate_dir.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    outln!(
        "created plugin crate {} (library {library})",
        crate_dir.display()
    )?;
    // Quoted as a shell would need it: the path may hold spaces.
    let shown = crate_dir.display().to_string();
    let quoted = if shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        shown
    } else {
        format!("'{}'", shown.replace('\'', r"'\''"))
    };
    outln!("next: cd {quoted} && cargo build && cargo test")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::type_name;

    #[test]
    fn the_type_name_is_camel_case_and_shadows_nothing_the_template_uses() {
        assert_eq!(type_name("rate-limiter"), "RateLimiter");
        assert_eq!(type_name("9lives"), "Plugin9lives");
        for (name, expected) in [
            ("plugin", "PluginPlugin"),
            ("result", "ResultPlugin"),
            ("config", "ConfigPlugin"),
            ("ok", "OkPlugin"),
            ("vec", "VecPlugin"),
            ("test-plugin", "TestPluginPlugin"),
        ] {
            assert_eq!(type_name(name), expected);
        }
    }
}
