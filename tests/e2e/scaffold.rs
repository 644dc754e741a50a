//! `plugboard new` scaffolds a plugin crate that builds, passes its own test, packs, signs
//! and verifies with the CLI.

use std::process::Command;

use crate::support::{fails, keys, ok, plugboard};

fn cargo(args: &[&str], dir: &std::path::Path, target: &std::path::Path) {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_scaffolded_plugin_builds_tests_packs_signs_and_verifies() {
    let temp = tempfile::tempdir().unwrap();
    let out = ok(&plugboard(&[
        &"new",
        &"rate-limiter",
        &"--dir",
        &temp.path(),
    ]));
    assert!(out.contains("librate_limiter.so"), "{out}");
    let crate_dir = temp.path().join("rate-limiter");
    // The signing key the README's keygen puts in `keys/` stays out of the repository.
    let ignored = std::fs::read_to_string(crate_dir.join(".gitignore")).unwrap();
    assert!(
        ignored.lines().any(|line| line == "/keys/") && ignored.contains("*.key"),
        "{ignored}"
    );
    let target = temp.path().join("target");
    cargo(&["build", "--quiet"], &crate_dir, &target);
    cargo(&["test", "--quiet"], &crate_dir, &target);

    let keys = keys(temp.path(), "author");
    let bundle = temp.path().join("bundle");
    ok(&plugboard(&[
        &"pack",
        &crate_dir.join("plugin.toml"),
        &"--library",
        &target.join("debug/librate_limiter.so"),
        &"--out",
        &bundle,
        &"--key",
        &keys.private,
    ]));
    let verified = ok(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(verified.contains("ok: rate-limiter 0.1.0"), "{verified}");

    // A name whose type would shadow what the generated code uses builds too (the other
    // such names: `new_plugin`'s unit test).
    ok(&plugboard(&[&"new", &"plugin", &"--dir", &temp.path()]));
    cargo(&["build", "--quiet"], &temp.path().join("plugin"), &target);

    // A directory with a space: the hint to paste is quoted.
    let spaced = temp.path().join("dev space");
    std::fs::create_dir(&spaced).unwrap();
    let out = ok(&plugboard(&[&"new", &"spaced", &"--dir", &spaced]));
    assert!(
        out.contains(&format!("next: cd '{}/spaced' &&", spaced.display())),
        "{out}"
    );
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_directory() {
    let temp = tempfile::tempdir().unwrap();
    let err = fails(&plugboard(&[&"new", &"Not_Valid", &"--dir", &temp.path()]));
    assert!(
        err.contains("Not_Valid") && err.contains("a-z, 0-9"),
        "{err}"
    );
    // Valid plugin names that cargo refuses as package names are refused before anything
    // is written.
    let err = fails(&plugboard(&[&"new", &"9lives", &"--dir", &temp.path()]));
    assert!(err.contains("starts with a letter"), "{err}");
    let err = fails(&plugboard(&[
        &"new",
        &"--dir",
        &temp.path(),
        &"--",
        &"-dash",
    ]));
    assert!(err.contains("starts with a letter"), "{err}");
    let err = fails(&plugboard(&[&"new", &"test", &"--dir", &temp.path()]));
    assert!(err.contains("refuses it as a package name"), "{err}");
    let err = fails(&plugboard(&[
        &"new",
        &"plugboard-sdk",
        &"--dir",
        &temp.path(),
    ]));
    assert!(err.contains("the SDK package"), "{err}");
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0);
    std::fs::create_dir(temp.path().join("taken")).unwrap();
    let err = fails(&plugboard(&[&"new", &"taken", &"--dir", &temp.path()]));
    assert!(err.contains("already exists"), "{err}");
    // An --sdk-path that is not the SDK fails now, not at the plugin's first build.
    let err = fails(&plugboard(&[
        &"new",
        &"elsewhere",
        &"--dir",
        &temp.path(),
        &"--sdk-path",
        &crate::support::repo_root().join("plugins/hello"),
    ]));
    assert!(err.contains("is not the plugboard SDK"), "{err}");
    assert!(!temp.path().join("elsewhere").exists());
}
