//! The fixed CLI forms: keygen, pack, sign, verify, inspect, trust, completions.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{
    fails, keys, ok, plugboard, plugin_library, repo_root, signed_example, stderr,
};

#[test]
fn every_command_has_help() {
    for command in [
        &["--help"][..],
        &["keygen", "--help"],
        &["pack", "--help"],
        &["sign", "--help"],
        &["verify", "--help"],
        &["inspect", "--help"],
        &["trust", "--help"],
        &["trust", "list", "--help"],
        &["trust", "add", "--help"],
        &["trust", "revoke", "--help"],
        &["trust", "allow", "--help"],
        &["new", "--help"],
        &["headless", "--help"],
        &["completions", "--help"],
    ] {
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = command
            .iter()
            .map(|arg| arg as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let out = ok(&plugboard(&args));
        assert!(out.contains("Usage: plugboard"), "{command:?}: {out}");
    }
}

#[test]
fn keygen_writes_a_0600_private_key_and_prints_its_id() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "release");
    let mode = std::fs::metadata(&keys.private)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The directory keygen created holds a secret: only its owner may list it.
    let dir_mode = std::fs::metadata(keys.private.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert_eq!(keys.key_id.len(), 16);
    assert!(
        std::fs::read_to_string(&keys.private)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(
        std::fs::read_to_string(&keys.public)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // Never overwrite an existing key.
    let err = fails(&plugboard(&[
        &"keygen",
        &"--out",
        &temp.path().join("keys"),
        &"--name",
        &"release",
    ]));
    assert!(err.contains("already exists"), "{err}");
    // A name that cannot be a key file's is refused before anything is created.
    let missing = temp.path().join("not-yet");
    let err = fails(&plugboard(&[
        &"keygen",
        &"--out",
        &missing,
        &"--name",
        &"../escape",
    ]));
    assert!(err.contains("escape"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn pack_sign_verify_round_trip_and_tampering_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "dev");
    let bundle = signed_example(temp.path(), "hello", &keys);
    let out = ok(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(
        out.contains(&format!("ok: hello 0.1.0 signed by key {}", keys.key_id)),
        "{out}"
    );

    // Granting itself the network after signing breaks the signature.
    let manifest = bundle.join("plugin.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n[capabilities]\nnetwork = true\n");
    std::fs::write(&manifest, text).unwrap();
    let err = fails(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(err.contains("does not match this bundle"), "{err}");

    // Re-signing with the same key makes it verify again.
    ok(&plugboard(&[&"sign", &bundle, &"--key", &keys.private]));
    ok(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    // The host configuration's trust store, as `call` and `headless` take it.
    let config = temp.path().join("host.toml");
    std::fs::write(
        &config,
        format!("trust_store = {:?}\n", keys.store.display().to_string()),
    )
    .unwrap();
    ok(&plugboard(&[&"verify", &bundle, &"--config", &config]));
    let err = fails(&plugboard(&[&"verify", &bundle]));
    assert!(
        err.contains("no trust store: pass --trust-store DIR"),
        "{err}"
    );
}

#[test]
fn unsigned_and_unknown_signer_bundles_fail_with_distinct_reasons() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "pinned");
    let unsigned = temp.path().join("unsigned");
    let manifest = repo_root().join("plugins/counter/plugin.toml");
    let out = ok(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &plugin_library("counter"),
        &"--out",
        &unsigned,
    ]));
    assert!(out.contains("unsigned"), "{out}");
    let unsigned_err = fails(&plugboard(&[
        &"verify",
        &unsigned,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(unsigned_err.contains("not signed"), "{unsigned_err}");

    let stranger = temp.path().join("stranger");
    ok(&plugboard(&[
        &"keygen",
        &"--out",
        &stranger,
        &"--name",
        &"stranger",
    ]));
    ok(&plugboard(&[
        &"sign",
        &unsigned,
        &"--key",
        &stranger.join("stranger.key"),
    ]));
    let unknown_err = fails(&plugboard(&[
        &"verify",
        &unsigned,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(
        unknown_err.contains("not pinned in the trust store"),
        "{unknown_err}"
    );
    assert_ne!(unsigned_err, unknown_err);
}

#[test]
fn a_group_readable_private_key_is_refused_like_ssh_does() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "loose");
    std::fs::set_permissions(&keys.private, std::fs::Permissions::from_mode(0o640)).unwrap();
    let bundle = temp.path().join("b");
    let manifest = repo_root().join("plugins/hello/plugin.toml");
    let err = fails(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &plugin_library("hello"),
        &"--out",
        &bundle,
        &"--key",
        &keys.private,
    ]));
    assert!(err.contains("0640") && err.contains("chmod 600"), "{err}");
    assert!(!bundle.exists(), "a refused key leaves no half-made bundle");
}

/// A bundle within a host's raised maxima is packed, signed, verified and inspected against
/// that host's configuration (`--config`); against the built-in limits it is refused.
#[test]
fn bundle_commands_check_against_the_host_configuration_given() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "ops");
    let manifest = std::fs::read_to_string(repo_root().join("plugins/hello/plugin.toml"))
        .unwrap()
        .replace("memory_mb = 32", "memory_mb = 10000");
    let manifest_file = temp.path().join("big.toml");
    std::fs::write(&manifest_file, manifest).unwrap();
    let host = temp.path().join("plugboard.toml");
    std::fs::write(&host, "[limits]\nmax_memory_mb = 16384\n").unwrap();
    let bundle = temp.path().join("big");
    let library = plugin_library("hello");
    let pack = |config: Option<&std::path::PathBuf>| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"pack",
            &manifest_file,
            &"--library",
            &library,
            &"--out",
            &bundle,
            &"--key",
            &keys.private,
        ];
        if let Some(config) = config {
            args.push(&"--config");
            args.push(config);
        }
        plugboard(&args)
    };
    let err = fails(&pack(None));
    assert!(err.contains("memory_mb") && err.contains("8192"), "{err}");
    assert!(pack(Some(&host)).status.success());
    ok(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
        &"--config",
        &host,
    ]));
    ok(&plugboard(&[&"inspect", &bundle, &"--config", &host]));
    ok(&plugboard(&[
        &"sign",
        &bundle,
        &"--key",
        &keys.private,
        &"--config",
        &host,
    ]));
}

/// A corrupt `plugin.sig`: `inspect` still shows the bundle, with the signature as its
/// trust error, and `sign` replaces it (it refused to, for the corrupt file).
#[test]
fn a_corrupt_signature_file_is_inspected_and_signed_over() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "dev");
    let bundle = signed_example(temp.path(), "counter", &keys);
    std::fs::write(bundle.join("plugin.sig"), "not a signature\n").unwrap();
    let out = ok(&plugboard(&[&"inspect", &bundle, &"--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["name"], "counter");
    assert_eq!(report["signed"], true);
    assert_eq!(report["trusted"], false);
    assert!(
        report["trust_error"]
            .as_str()
            .is_some_and(|error| error.contains("plugin.sig")),
        "{report}"
    );
    ok(&plugboard(&[&"sign", &bundle, &"--key", &keys.private]));
    ok(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
}

#[test]
fn inspect_json_reports_digests_signer_trust_and_revocation() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "dev");
    let bundle = signed_example(temp.path(), "counter", &keys);
    let out = ok(&plugboard(&[
        &"inspect",
        &bundle,
        &"--json",
        &"--trust-store",
        &keys.store,
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["name"], "counter");
    assert_eq!(report["version"], "0.1.0");
    assert_eq!(report["key_id"], keys.key_id.as_str());
    assert_eq!(report["trusted"], true);
    assert_eq!(report["revoked"], false);
    assert_eq!(report["manifest_sha3_512"].as_str().unwrap().len(), 128);
    // The digest Plugboard prints is the one OpenSSL computes.
    let openssl = Command::new("openssl")
        .args(["dgst", "-sha3-512", "-r"])
        .arg(bundle.join("libcounter.so"))
        .output();
    match openssl {
        Ok(output) if output.status.success() => {
            let hex = String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            assert_eq!(report["library_sha3_512"], hex.as_str());
        }
        _ if std::env::var_os("CI").is_some() => panic!("openssl is required in CI"),
        _ => eprintln!("skipping the openssl comparison: openssl is not installed"),
    }

    // Revoking the key shows up as revoked and untrusted, and verify fails.
    ok(&plugboard(&[
        &"trust",
        &"revoke",
        &"--trust-store",
        &keys.store,
        &"--key-id",
        &keys.key_id,
    ]));
    let report: serde_json::Value = serde_json::from_str(&ok(&plugboard(&[
        &"inspect",
        &bundle,
        &"--json",
        &"--trust-store",
        &keys.store,
    ])))
    .unwrap();
    assert_eq!(report["trusted"], false);
    assert_eq!(report["revoked"], true);
    let err = fails(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(err.contains("revoked"), "{err}");
    let listing = ok(&plugboard(&[
        &"trust",
        &"list",
        &"--trust-store",
        &keys.store,
    ]));
    assert!(
        listing.contains(&format!("revoked key {}", keys.key_id)),
        "{listing}"
    );
}

#[test]
fn a_revoked_bundle_digest_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "dev");
    let bundle = signed_example(temp.path(), "hello", &keys);
    let report: serde_json::Value =
        serde_json::from_str(&ok(&plugboard(&[&"inspect", &bundle, &"--json"]))).unwrap();
    assert_eq!(
        report["trusted"],
        serde_json::Value::Null,
        "no store given: trust unknown"
    );
    let digest = report["bundle_sha3_512"].as_str().unwrap().to_owned();
    ok(&plugboard(&[
        &"trust",
        &"revoke",
        &"--trust-store",
        &keys.store,
        &"--digest",
        &digest,
    ]));
    let err = fails(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(err.contains("revoked") && err.contains(&digest), "{err}");
}

#[test]
fn inspect_text_names_every_contract_field() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "dev");
    let bundle = signed_example(temp.path(), "hello", &keys);
    let out = ok(&plugboard(&[
        &"inspect",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));
    for field in [
        "name: hello",
        "manifest_sha3_512: ",
        "library_sha3_512: ",
        "key_id: ",
        "trusted: yes",
        "revoked: no",
    ] {
        assert!(out.contains(field), "missing {field:?} in:\n{out}");
    }
}

#[test]
fn a_broken_manifest_fails_pack_with_a_one_line_reason() {
    let temp = tempfile::tempdir().unwrap();
    let manifest = temp.path().join("plugin.toml");
    std::fs::write(&manifest, "[plugin]\nname = \"Bad Name\"\nversion = \"0.1.0\"\napi_version = 1\nlibrary = \"libx.so\"\n").unwrap();
    let err = fails(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &plugin_library("hello"),
        &"--out",
        &temp.path().join("out"),
    ]));
    assert!(
        err.contains("plugin.name") && err.contains("Bad Name"),
        "{err}"
    );
}

#[test]
fn packing_a_bundle_in_place_keeps_its_library_and_a_non_elf_library_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "dev");
    let bundle = signed_example(temp.path(), "hello", &keys);
    let library = bundle.join("libhello.so");
    let before = std::fs::read(&library).unwrap();
    // Re-packed from its own files, as after editing the manifest in place.
    ok(&plugboard(&[
        &"pack",
        &bundle.join("plugin.toml"),
        &"--library",
        &library,
        &"--out",
        &bundle,
        &"--key",
        &keys.private,
    ]));
    assert_eq!(
        std::fs::read(&library).unwrap(),
        before,
        "the library survives being packed onto itself"
    );
    ok(&plugboard(&[
        &"verify",
        &bundle,
        &"--trust-store",
        &keys.store,
    ]));

    let empty = temp.path().join("libempty.so");
    std::fs::write(&empty, b"").unwrap();
    let err = fails(&plugboard(&[
        &"pack",
        &repo_root().join("plugins/hello/plugin.toml"),
        &"--library",
        &empty,
        &"--out",
        &temp.path().join("out"),
    ]));
    assert!(
        err.contains("libempty.so") && err.contains("is not an ELF shared object"),
        "{err}"
    );
    assert!(!temp.path().join("out").exists(), "nothing written");
}

/// What the engine would refuse only when it loads the library is refused at `pack`: a
/// program instead of a library, a library that is no plugin. Another plugin's library
/// is packed, with a warning (the bundle names it as the manifest says).
#[test]
fn pack_refuses_a_library_that_is_no_plugin_and_warns_of_another_plugins() {
    let temp = tempfile::tempdir().unwrap();
    let manifest = repo_root().join("plugins/hello/plugin.toml");
    let out = temp.path().join("out");
    let program = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|path| path.is_file())
        .expect("true is installed");
    let err = fails(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &program,
        &"--out",
        &out,
    ]));
    assert!(
        err.contains("does not export `plugboard_plugin_entry`: it is not a Plugboard plugin")
            || err.contains("is not a shared library"),
        "{err}"
    );
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|path| path.is_file())
    .expect("libc is installed");
    let err = fails(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &libc,
        &"--out",
        &out,
    ]));
    assert!(
        err.contains("does not export `plugboard_plugin_entry`: it is not a Plugboard plugin"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");

    let output = plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &plugin_library("counter"),
        &"--out",
        &out,
    ]);
    ok(&output);
    let warned = stderr(&output);
    assert!(
        warned.contains("the library given is libcounter.so, the manifest names libhello.so"),
        "{warned}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&plugboard(&[&"completions", &shell]));
        assert!(
            out.contains("keygen") && out.contains("inspect"),
            "{shell}: {out}"
        );
    }
}

/// Errors whose message already ends with their cause's used to say it twice
/// ("No such file or directory (os error 2): No such file or directory (os error 2)").
#[test]
fn a_failure_names_each_cause_once() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let library = plugin_library("hello");
    let bundle = root.path().join("bundle");
    for args in [
        vec![
            &"pack" as &dyn AsRef<std::ffi::OsStr>,
            &missing,
            &"--library",
            &library,
            &"--out",
            &bundle,
        ],
        vec![&"sign", &bundle, &"--key", &missing],
        vec![
            &"trust",
            &"add",
            &"--trust-store",
            &root.path().join("trust"),
            &missing,
        ],
        vec![&"headless", &"--config", &root.path(), &"--duration", &"1s"],
    ] {
        let err = fails(&plugboard(&args));
        let causes = err.matches("(os error").count();
        assert_eq!(causes, 1, "each cause once: {err}");
    }
}

/// Only `trust add` creates a store: revoking in a mistyped path would otherwise report
/// success while the real store goes on trusting the key.
#[test]
fn trust_commands_but_add_refuse_a_store_that_does_not_exist() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("no-such-store");
    let bundle = root.path().join("bundle");
    let digest = "ab".repeat(64);
    for args in [
        vec![
            &"trust" as &dyn AsRef<std::ffi::OsStr>,
            &"revoke",
            &"--trust-store",
            &missing,
            &"--key-id",
            &"0123456789abcdef",
        ],
        vec![
            &"trust",
            &"revoke",
            &"--trust-store",
            &missing,
            &"--digest",
            &digest,
        ],
        vec![&"trust", &"list", &"--trust-store", &missing],
        vec![&"trust", &"allow", &"--trust-store", &missing, &bundle],
    ] {
        let err = fails(&plugboard(&args));
        assert!(
            err.contains(&format!("trust store {} does not exist", missing.display())),
            "{err}"
        );
        assert!(!missing.exists(), "{} was created", missing.display());
    }
}

#[test]
fn trust_add_says_when_it_changes_the_level_of_a_pinned_key() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let add = |level: &str| {
        ok(&plugboard(&[
            &"trust",
            &"add",
            &"--trust-store",
            &keys.store,
            &keys.public,
            &"--level",
            &level,
        ]))
    };
    let out = add("in-process");
    assert!(
        out.contains(&format!(
            "changed the trust level of key {} in {}: sandboxed → in-process",
            keys.key_id,
            keys.store.display()
        )),
        "{out}"
    );
    let out = add("in-process");
    assert!(
        out.contains("was already pinned at trust level in-process") && out.contains("unchanged"),
        "{out}"
    );
    let out = add("sandboxed");
    assert!(out.contains("in-process → sandboxed"), "{out}");
}

#[test]
fn trust_allow_puts_a_bundle_on_the_list_and_warns_when_it_still_would_not_verify() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    ok(&plugboard(&[
        &"trust",
        &"list-key",
        &keys.store.join("trust-list.key"),
    ]));
    let config = keys.store.join("trust.toml");
    let mut text = std::fs::read_to_string(&config).unwrap_or_default();
    text.push_str("\n[trust_list]\nfile = \"trust-list.sealed\"\nkey_file = \"trust-list.key\"\n");
    std::fs::write(&config, text).unwrap();
    let verify = || plugboard(&[&"verify", &bundle, &"--trust-store", &keys.store]);
    // With a list configured, a signed bundle that is not on it is refused.
    let refused = stderr(&verify());
    assert!(refused.contains("trust list"), "{refused}");

    let allowed = plugboard(&[&"trust", &"allow", &"--trust-store", &keys.store, &bundle]);
    assert!(ok(&allowed).contains("allowed hello 0.1.0"));
    assert_eq!(
        stderr(&allowed),
        "",
        "a bundle that verifies draws no warning"
    );
    ok(&verify());

    // A tampered copy is listed as asked, with a warning that it still does not verify.
    let manifest = bundle.join("plugin.toml");
    let tampered = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("version = \"0.1.0\"", "version = \"0.1.1\"");
    std::fs::write(&manifest, tampered).unwrap();
    let allowed = plugboard(&[&"trust", &"allow", &"--trust-store", &keys.store, &bundle]);
    assert!(ok(&allowed).contains("allowed hello 0.1.1"));
    let warning = stderr(&allowed);
    assert!(
        warning.starts_with("warning: ")
            && warning.contains("does not verify")
            && warning.contains("stays refused"),
        "{warning}"
    );
}

/// A pack that fails after it began writing (here `[requires]` names a binary this host
/// lacks, checked on the packed bundle) leaves no half-made bundle directory behind.
#[test]
fn a_failed_pack_leaves_no_bundle_directory() {
    let temp = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(repo_root().join("plugins/hello/plugin.toml")).unwrap();
    let manifest_file = temp.path().join("hello.toml");
    std::fs::write(
        &manifest_file,
        format!("{manifest}\n[requires]\nbinaries = [\"plugboard-no-such-binary\"]\n"),
    )
    .unwrap();
    let out = temp.path().join("bundle");
    let err = fails(&plugboard(&[
        &"pack",
        &manifest_file,
        &"--library",
        &plugin_library("hello"),
        &"--out",
        &out,
    ]));
    assert!(err.contains("plugboard-no-such-binary"), "{err}");
    assert!(!out.exists(), "{} was left behind", out.display());

    // Over a good signed bundle, the failed pack leaves it as it was, and nothing beside.
    let keys = keys(temp.path(), "author");
    let good = crate::support::signed_example(temp.path(), "hello", &keys);
    let before: Vec<Vec<u8>> = ["plugin.toml", "plugin.sig", "libhello.so"]
        .iter()
        .map(|file| std::fs::read(good.join(file)).unwrap())
        .collect();
    fails(&plugboard(&[
        &"pack",
        &manifest_file,
        &"--library",
        &plugin_library("hello"),
        &"--out",
        &good,
        &"--key",
        &keys.private,
    ]));
    let after: Vec<Vec<u8>> = ["plugin.toml", "plugin.sig", "libhello.so"]
        .iter()
        .map(|file| std::fs::read(good.join(file)).unwrap())
        .collect();
    assert!(before == after, "the signed bundle was changed");
    let staged: Vec<_> = std::fs::read_dir(&good)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(".plugboard-pack")
        })
        .collect();
    assert!(
        staged.is_empty(),
        "a staging directory was left: {staged:?}"
    );
}

/// Errors about key files name the file's role: a missing `--key` is said to be the
/// private key, a public key given for signing is said to be one, and `trust revoke`
/// without what to revoke names both choices.
#[test]
fn key_file_mistakes_are_named_as_such() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "author");
    let missing = temp.path().join("no-such.key");
    let err = fails(&plugboard(&[&"sign", &temp.path(), &"--key", &missing]));
    assert!(
        err.contains("no-such.key") && err.contains("expected an Ed25519 private key there"),
        "{err}"
    );
    let err = fails(&plugboard(&[&"sign", &temp.path(), &"--key", &keys.public]));
    assert!(err.contains("this is a public key"), "{err}");
    // A file that is no key at all: not told to chmod it.
    let manifest = repo_root().join("plugins/hello/plugin.toml");
    let err = fails(&plugboard(&[&"sign", &temp.path(), &"--key", &manifest]));
    assert!(
        err.contains("the file is no PEM key") && !err.contains("chmod"),
        "{err}"
    );
    // The private key given to the trust store: said as that.
    let err = fails(&plugboard(&[
        &"trust",
        &"add",
        &"--trust-store",
        &keys.store,
        &keys.private,
    ]));
    assert!(err.contains("this is a private key"), "{err}");
    let output = plugboard(&[&"trust", &"revoke", &"--trust-store", &keys.store]);
    assert_eq!(output.status.code(), Some(2));
    let err = crate::support::stderr(&output);
    assert!(
        err.contains("--key-id") && err.contains("--digest"),
        "{err}"
    );
}
