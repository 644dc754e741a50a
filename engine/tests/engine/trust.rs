//! Digests, keys, signatures, the trust store and the encrypted trust list, with real keys
//! generated in temporary directories and OpenSSL as the independent implementation.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use plugboard_engine::trust::{
    BundleDigests, BundleSignature, Digest, DigestBuilder, KeyId, PrivateKey, PublicKey,
    SIGNATURE_FILE, STATEMENT_DOMAIN, TRUST_CONFIG_FILE, TrustError, TrustLevel, TrustList,
    TrustListKey, TrustStore, bundle_statement, digest_file, digest_reader,
    generate_trust_list_key, open_trust_list, seal_trust_list, write_keypair,
};
use tempfile::TempDir;

/// A plausible plugin.toml of about 200 bytes.
const MANIFEST: &[u8] = br#"[plugin]
name = "hello"
version = "1.2.3"
library = "libhello.so"
description = "Says hello to every hook it is given"
authors = ["Plugboard tests"]

[capabilities]
fs_read = ["/usr/share/hello"]
network = false
spawn = false
"#;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trust");

/// 4 KiB that stand in for a library.
fn fake_library() -> Vec<u8> {
    (0..4096u32)
        .map(|i| u8::try_from((i * 31 + 7) % 251).unwrap())
        .collect()
}

fn flip_bit(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[bit / 8] ^= 1 << (bit % 8);
    flipped
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A signer with a key pair on disk and a store that pins its public key.
struct Setup {
    _temp: TempDir,
    store: PathBuf,
    keys: PathBuf,
    key: PrivateKey,
    key_path: PathBuf,
    pub_path: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let temp = tempfile::tempdir().unwrap();
        let keys = temp.path().join("keys");
        let (key_id, key_path, pub_path) = write_keypair(&keys, "signer").unwrap();
        let key = PrivateKey::load(&key_path).unwrap();
        assert_eq!(key.key_id(), key_id);
        let store = temp.path().join("store");
        assert_eq!(
            TrustStore::add_key(&store, &pub_path, TrustLevel::Sandboxed).unwrap(),
            key_id
        );
        Setup {
            _temp: temp,
            store,
            keys,
            key,
            key_path,
            pub_path,
        }
    }

    fn open_store(&self) -> TrustStore {
        TrustStore::open(&self.store).unwrap()
    }
}

fn verify(
    store: &TrustStore,
    digests: &BundleDigests,
    signature: &BundleSignature,
) -> Result<TrustLevel, TrustError> {
    store
        .verify(digests, Some(signature), "hello", "1.2.3")
        .map(|verified| verified.level)
}

fn assert_bad_signature(result: Result<TrustLevel, TrustError>, what: &str) {
    match result {
        Err(TrustError::BadSignature { .. }) => {}
        other => panic!("{what}: expected BadSignature, got {other:?}"),
    }
}

// ----- digests and the statement -----

#[test]
fn digest_hex_round_trips_and_rejects_bad_input() {
    let digest = Digest::of(b"plugboard");
    let hex = digest.to_hex();
    assert_eq!(hex.len(), 128);
    assert_eq!(hex, hex.to_lowercase());
    assert_eq!(digest.to_string(), hex);
    assert_eq!(Digest::from_hex(&hex).unwrap(), digest);
    assert_eq!(Digest::from_hex(&hex.to_uppercase()).unwrap(), digest);
    assert_eq!(hex.parse::<Digest>().unwrap(), digest);

    let json = serde_json::to_string(&digest).unwrap();
    assert_eq!(json, format!("\"{hex}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);

    let short = Digest::from_hex(&hex[..126]).unwrap_err();
    assert!(
        matches!(short, TrustError::InvalidDigest { .. }),
        "{short:?}"
    );
    assert!(short.to_string().contains("128 hexadecimal"), "{short}");
    let not_hex = Digest::from_hex(&format!("{}zz", &hex[..126])).unwrap_err();
    assert!(
        matches!(not_hex, TrustError::InvalidDigest { .. }),
        "{not_hex:?}"
    );
}

#[test]
fn streamed_and_incremental_digests_agree() {
    // Larger than one 1 MiB chunk and not a multiple of it.
    let data: Vec<u8> = (0..(3 * 1024 * 1024 + 12345u32))
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    let whole = Digest::of(&data);
    assert_eq!(digest_reader(data.as_slice()).unwrap(), whole);

    let mut builder = DigestBuilder::new();
    for chunk in data.chunks(7777) {
        builder.update(chunk);
    }
    assert_eq!(builder.finish(), whole);

    let mut writer = DigestBuilder::new();
    std::io::copy(&mut data.as_slice(), &mut writer).unwrap();
    assert_eq!(writer.finish(), whole);

    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("data.bin");
    fs::write(&file, &data).unwrap();
    assert_eq!(digest_file(&file).unwrap(), whole);
    assert_ne!(Digest::of(&data[1..]), whole);
}

#[test]
fn statement_is_domain_then_manifest_then_library_digest() {
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let statement = digests.statement();
    assert_eq!(statement.len(), 147);
    assert_eq!(STATEMENT_DOMAIN, b"plugboard-bundle-v1");
    assert_eq!(&statement[..19], STATEMENT_DOMAIN);
    assert_eq!(&statement[19..83], digests.manifest.as_bytes());
    assert_eq!(&statement[83..], digests.library.as_bytes());
    assert_eq!(
        bundle_statement(&digests.manifest, &digests.library),
        statement
    );
    assert_eq!(digests.bundle_digest(), Digest::of(&statement));
    // Swapping manifest and library must name a different bundle.
    let swapped = BundleDigests::new(digests.library, digests.manifest);
    assert_ne!(swapped.bundle_digest(), digests.bundle_digest());
}

#[test]
fn key_id_is_hex_of_first_eight_bytes_of_the_key_digest() {
    let key = PrivateKey::generate();
    let public = key.public_key();
    let expected = hex::encode(&Digest::of(public.as_bytes()).as_bytes()[..8]);
    assert_eq!(key.key_id().to_string(), expected);
    assert_eq!(public.key_id(), key.key_id());
    assert_eq!(expected.parse::<KeyId>().unwrap(), key.key_id());
    let json = serde_json::to_string(&key.key_id()).unwrap();
    assert_eq!(json, format!("\"{expected}\""));
    for bad in ["", "0123", "0123456789abcdeg", "0123456789abcdef00"] {
        let error = bad.parse::<KeyId>().unwrap_err();
        assert!(
            matches!(error, TrustError::InvalidKeyId { .. }),
            "{bad}: {error:?}"
        );
    }
    assert_eq!(
        format!("{key:?}"),
        format!("PrivateKey {{ key_id: KeyId({expected}), .. }}")
    );
}

// ----- keys on disk -----

#[test]
fn keypair_files_have_the_documented_formats_and_modes() {
    let temp = tempfile::tempdir().unwrap();
    let (key_id, key_path, pub_path) = write_keypair(temp.path(), "release").unwrap();
    assert_eq!(key_path, temp.path().join("release.key"));
    assert_eq!(pub_path, temp.path().join("release.pub"));
    assert_eq!(mode_of(&key_path), 0o600);
    assert_eq!(mode_of(&pub_path) & 0o022, 0);

    let key_pem = fs::read_to_string(&key_path).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{key_pem}"
    );
    let pub_pem = fs::read_to_string(&pub_path).unwrap();
    assert!(
        pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{pub_pem}"
    );

    let public = PublicKey::load(&pub_path).unwrap();
    assert_eq!(public.key_id(), key_id);
    assert_eq!(PublicKey::from_pem(&pub_pem).unwrap(), public);
    assert_eq!(public.to_pem(), pub_pem);
    assert_eq!(*PrivateKey::load(&key_path).unwrap().to_pem(), key_pem);
}

#[test]
fn keygen_refuses_to_overwrite_and_rejects_path_like_names() {
    let temp = tempfile::tempdir().unwrap();
    let (_, key_path, pub_path) = write_keypair(temp.path(), "release").unwrap();
    let before = fs::read(&key_path).unwrap();
    let error = write_keypair(temp.path(), "release").unwrap_err();
    assert!(matches!(error, TrustError::KeyExists { .. }), "{error:?}");
    assert!(error.to_string().contains("release"), "{error}");
    assert_eq!(
        fs::read(&key_path).unwrap(),
        before,
        "existing key was changed"
    );

    // A stray private key alone also blocks a new pair.
    fs::remove_file(&pub_path).unwrap();
    let error = write_keypair(temp.path(), "release").unwrap_err();
    assert!(matches!(error, TrustError::KeyExists { path } if path == key_path));

    for name in ["", "../escape", "a/b", ".hidden"] {
        let error = write_keypair(temp.path(), name).unwrap_err();
        assert!(
            matches!(error, TrustError::InvalidKeyName { .. }),
            "{name:?}: {error:?}"
        );
    }
}

#[test]
fn private_key_readable_by_others_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let (_, key_path, _) = write_keypair(temp.path(), "loose").unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
        set_mode(&key_path, mode);
        let error = PrivateKey::load(&key_path).unwrap_err();
        assert!(
            matches!(error, TrustError::InsecureKeyFile { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("{mode:04o}")), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", key_path.display())),
            "{message}"
        );
    }
    set_mode(&key_path, 0o400);
    PrivateKey::load(&key_path).unwrap();
}

#[test]
fn garbage_key_files_are_refused_with_the_expected_format() {
    let temp = tempfile::tempdir().unwrap();
    let key_path = temp.path().join("garbage.key");
    fs::write(&key_path, "not a key\n").unwrap();
    set_mode(&key_path, 0o600);
    let error = PrivateKey::load(&key_path).unwrap_err();
    assert!(
        matches!(error, TrustError::InvalidPrivateKey { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("BEGIN PRIVATE KEY"), "{error}");

    let error = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        .unwrap_err();
    assert!(
        matches!(error, TrustError::InvalidPublicKey { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("BEGIN PUBLIC KEY"), "{error}");
}

// ----- signing and verifying -----

#[test]
fn sign_and_verify_round_trip_through_files() {
    let setup = Setup::new();
    let bundle = setup.keys.join("bundle");
    fs::create_dir(&bundle).unwrap();
    fs::write(bundle.join("plugin.toml"), MANIFEST).unwrap();
    fs::write(bundle.join("libhello.so"), fake_library()).unwrap();

    let digests = BundleDigests::new(
        digest_file(&bundle.join("plugin.toml")).unwrap(),
        digest_file(&bundle.join("libhello.so")).unwrap(),
    );
    let signer = PrivateKey::load(&setup.key_path).unwrap();
    signer
        .sign_bundle(&digests)
        .write(&bundle.join(SIGNATURE_FILE))
        .unwrap();

    let text = fs::read_to_string(bundle.join(SIGNATURE_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], r#"format = "plugboard-signature-v1""#);
    assert_eq!(lines[1], r#"algorithm = "ed25519""#);
    assert_eq!(lines[2], format!("key_id = \"{}\"", signer.key_id()));
    assert!(lines[3].starts_with("signature = \"") && lines[3].ends_with("==\""));

    let signature = BundleSignature::read(&bundle.join(SIGNATURE_FILE)).unwrap();
    assert_eq!(signature.key_id, signer.key_id());
    let verified = setup
        .open_store()
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap();
    assert_eq!(verified.key_id, signer.key_id());
    assert_eq!(verified.level, TrustLevel::Sandboxed);

    // The public key alone verifies too.
    let public = PublicKey::load(&setup.pub_path).unwrap();
    public.verify_bundle(&digests, &signature).unwrap();
    let other = PrivateKey::generate().sign_bundle(&digests);
    let error = public.verify_bundle(&digests, &other).unwrap_err();
    assert!(matches!(error, TrustError::WrongKey { .. }), "{error:?}");
}

#[test]
fn every_bit_flip_of_the_manifest_is_refused() {
    let setup = Setup::new();
    let store = setup.open_store();
    let library = fake_library();
    let signature = setup
        .key
        .sign_bundle(&BundleDigests::of(MANIFEST, &library));
    assert!((180..=260).contains(&MANIFEST.len()), "{}", MANIFEST.len());

    let library_digest = Digest::of(&library);
    for bit in 0..MANIFEST.len() * 8 {
        let digests = BundleDigests::new(Digest::of(&flip_bit(MANIFEST, bit)), library_digest);
        assert_bad_signature(
            verify(&store, &digests, &signature),
            &format!("manifest bit {bit}"),
        );
    }
}

#[test]
fn bit_flips_spread_over_the_library_are_refused() {
    let setup = Setup::new();
    let store = setup.open_store();
    let library = fake_library();
    let signature = setup
        .key
        .sign_bundle(&BundleDigests::of(MANIFEST, &library));
    let manifest_digest = Digest::of(MANIFEST);

    let total_bits = library.len() * 8;
    let stride = total_bits / 512;
    // 512 bits spread evenly (varying the bit within each byte), plus every bit of the
    // first and the last byte.
    let mut bits: Vec<usize> = (0..512).map(|i| i * stride + i % 8).collect();
    bits.extend(0..8);
    bits.extend(total_bits - 8..total_bits);
    bits.sort_unstable();
    bits.dedup();
    assert!(bits.len() >= 512 + 14);

    for bit in bits {
        let digests = BundleDigests::new(manifest_digest, Digest::of(&flip_bit(&library, bit)));
        assert_bad_signature(
            verify(&store, &digests, &signature),
            &format!("library bit {bit}"),
        );
    }
}

#[test]
fn every_bit_flip_of_the_signature_is_refused() {
    let setup = Setup::new();
    let store = setup.open_store();
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let signature = setup.key.sign_bundle(&digests);
    verify(&store, &digests, &signature).unwrap();

    for bit in 0..512 {
        let flipped = BundleSignature {
            key_id: signature.key_id,
            signature: flip_bit(&signature.signature, bit).try_into().unwrap(),
        };
        assert_bad_signature(
            verify(&store, &digests, &flipped),
            &format!("signature bit {bit}"),
        );
    }
}

#[test]
fn each_refusal_has_its_own_variant_and_message() {
    let setup = Setup::new();
    let library = fake_library();
    let digests = BundleDigests::of(MANIFEST, &library);
    let signature = setup.key.sign_bundle(&digests);
    let mut messages = HashSet::new();

    // Unsigned.
    let error = setup
        .open_store()
        .verify(&digests, None, "hello", "1.2.3")
        .unwrap_err();
    assert!(matches!(error, TrustError::Unsigned), "{error:?}");
    assert!(error.to_string().contains("not signed"), "{error}");
    assert!(error.to_string().contains("plugboard sign"), "{error}");
    messages.insert(error.to_string());

    // Unknown signer.
    let stranger = PrivateKey::generate();
    let error = verify(
        &setup.open_store(),
        &digests,
        &stranger.sign_bundle(&digests),
    )
    .unwrap_err();
    assert!(
        matches!(&error, TrustError::UnknownSigner { key_id } if *key_id == stranger.key_id()),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&stranger.key_id().to_string()),
        "{error}"
    );
    assert!(error.to_string().contains("plugboard trust add"), "{error}");
    messages.insert(error.to_string());

    // Bad signature.
    let other_manifest = BundleDigests::of(b"name = \"evil\"", &library);
    let error = verify(&setup.open_store(), &other_manifest, &signature).unwrap_err();
    assert!(
        matches!(error, TrustError::BadSignature { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("does not match"), "{error}");
    messages.insert(error.to_string());

    // Revoked library digest, then revoked bundle digest.
    let error = revoked_digest_error(&digests, digests.library);
    messages.insert(error.to_string());
    let error = revoked_digest_error(&digests, digests.bundle_digest());
    messages.insert(error.to_string());

    // Revoked key: takes precedence over everything after it.
    TrustStore::revoke_key(&setup.store, setup.key.key_id()).unwrap();
    let store = setup.open_store();
    let error = verify(&store, &digests, &signature).unwrap_err();
    assert!(
        matches!(&error, TrustError::RevokedKey { key_id } if *key_id == setup.key.key_id()),
        "{error:?}"
    );
    assert!(error.to_string().contains("revoked"), "{error}");
    messages.insert(error.to_string());
    assert!(store.list()[0].revoked);
    assert!(store.revoked_keys().contains(&setup.key.key_id()));
    // A revoked key cannot be pinned again by accident.
    let error =
        TrustStore::add_key(&setup.store, &setup.pub_path, TrustLevel::InProcess).unwrap_err();
    assert!(matches!(error, TrustError::RevokedKey { .. }), "{error:?}");

    assert_eq!(
        messages.len(),
        6,
        "messages are not distinct: {messages:#?}"
    );
}

/// Revokes one digest of a bundle in a fresh store and returns the refusal.
fn revoked_digest_error(digests: &BundleDigests, revoked: Digest) -> TrustError {
    let fresh = Setup::new();
    let signature_by_fresh = fresh.key.sign_bundle(digests);
    verify(&fresh.open_store(), digests, &signature_by_fresh).unwrap();
    TrustStore::revoke_digest(&fresh.store, revoked).unwrap();
    // Revoking twice changes nothing.
    TrustStore::revoke_digest(&fresh.store, revoked).unwrap();
    let store = fresh.open_store();
    assert_eq!(store.revoked_digests().len(), 1);
    let error = verify(&store, digests, &signature_by_fresh).unwrap_err();
    assert!(
        matches!(&error, TrustError::RevokedDigest { digest } if *digest == revoked),
        "{error:?}"
    );
    assert!(error.to_string().contains(&revoked.to_hex()), "{error}");
    assert!(error.to_string().contains("revocation list"), "{error}");
    // Another bundle by the same key still verifies.
    let other = BundleDigests::of(b"other manifest", b"other library");
    verify(&store, &other, &fresh.key.sign_bundle(&other)).unwrap();
    error
}

#[test]
fn trust_levels_come_from_trust_toml() {
    let setup = Setup::new();
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let signature = setup.key.sign_bundle(&digests);
    assert_eq!(
        verify(&setup.open_store(), &digests, &signature).unwrap(),
        TrustLevel::Sandboxed
    );

    TrustStore::add_key(&setup.store, &setup.pub_path, TrustLevel::InProcess).unwrap();
    let config = fs::read_to_string(setup.store.join(TRUST_CONFIG_FILE)).unwrap();
    assert!(
        config.contains(&format!("[keys.{}]", setup.key.key_id())),
        "{config}"
    );
    assert!(config.contains(r#"level = "in-process""#), "{config}");
    let store = setup.open_store();
    assert_eq!(
        verify(&store, &digests, &signature).unwrap(),
        TrustLevel::InProcess
    );
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key_id, setup.key.key_id());
    assert_eq!(listed[0].level, TrustLevel::InProcess);
    assert_eq!(
        listed[0].file,
        setup.store.join(format!("{}.pub", setup.key.key_id()))
    );
    assert!(!listed[0].revoked);

    TrustStore::add_key(&setup.store, &setup.pub_path, TrustLevel::Sandboxed).unwrap();
    assert_eq!(
        verify(&setup.open_store(), &digests, &signature).unwrap(),
        TrustLevel::Sandboxed
    );
}

#[test]
fn trust_toml_edits_keep_comments_and_safe_modes() {
    let setup = Setup::new();
    let config_path = setup.store.join(TRUST_CONFIG_FILE);
    fs::write(
        &config_path,
        "# Reviewed by the security team.\n[revoked]\n# Leaked in March.\nkeys = []\n",
    )
    .unwrap();
    set_mode(&config_path, 0o644);
    let revoked_key = PrivateKey::generate().key_id();
    TrustStore::revoke_key(&setup.store, revoked_key).unwrap();
    TrustStore::revoke_digest(&setup.store, Digest::of(b"bad release")).unwrap();
    TrustStore::add_key(&setup.store, &setup.pub_path, TrustLevel::InProcess).unwrap();

    let config = fs::read_to_string(&config_path).unwrap();
    assert!(
        config.starts_with("# Reviewed by the security team.\n[revoked]\n# Leaked in March.\n"),
        "{config}"
    );
    assert!(config.contains(&revoked_key.to_string()), "{config}");
    assert_eq!(mode_of(&config_path) & 0o022, 0);
    assert_eq!(mode_of(&setup.store) & 0o077, 0, "store created 0700");
    // No temporary files are left behind.
    let mut names: Vec<String> = fs::read_dir(&setup.store)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".trust.lock".to_owned(),
            format!("{}.pub", setup.key.key_id()),
            TRUST_CONFIG_FILE.to_owned()
        ]
    );
    let store = setup.open_store();
    assert!(store.revoked_keys().contains(&revoked_key));
    assert!(
        store
            .revoked_digests()
            .contains(&Digest::of(b"bad release"))
    );
}

// ----- store permissions -----

#[test]
fn store_writable_by_others_is_refused() {
    let setup = Setup::new();
    let pinned = setup.open_store().list()[0].file.clone();

    for mode in [0o775, 0o777, 0o757] {
        set_mode(&setup.store, mode);
        let error = TrustStore::open(&setup.store).unwrap_err();
        assert!(
            matches!(&error, TrustError::InsecureStorePath { path, .. } if *path == setup.store),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("{mode:04o}")), "{message}");
        assert!(
            message.contains(&format!("chmod go-w {}", setup.store.display())),
            "{message}"
        );
    }
    set_mode(&setup.store, 0o755);
    setup.open_store();

    for mode in [0o666, 0o664, 0o646] {
        set_mode(&pinned, mode);
        let error = TrustStore::open(&setup.store).unwrap_err();
        assert!(
            matches!(&error, TrustError::InsecureStorePath { path, .. } if *path == pinned),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(&format!("{mode:04o}")),
            "{error}"
        );
    }
    set_mode(&pinned, 0o644);

    let config = setup.store.join(TRUST_CONFIG_FILE);
    fs::write(&config, "").unwrap();
    set_mode(&config, 0o666);
    let error = TrustStore::open(&setup.store).unwrap_err();
    assert!(
        matches!(&error, TrustError::InsecureStorePath { path, .. } if *path == config),
        "{error:?}"
    );
    // Editing refuses too: the edit would launder the file.
    let error = TrustStore::revoke_digest(&setup.store, Digest::of(b"x")).unwrap_err();
    assert!(
        matches!(error, TrustError::InsecureStorePath { .. }),
        "{error:?}"
    );
    set_mode(&config, 0o644);
    setup.open_store();
}

#[test]
fn missing_store_and_broken_public_keys_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("nowhere");
    let error = TrustStore::open(&missing).unwrap_err();
    assert!(
        matches!(error, TrustError::StoreMissing { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("plugboard trust add"), "{error}");

    let setup = Setup::new();
    let broken = setup.store.join("broken.pub");
    fs::write(
        &broken,
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    set_mode(&broken, 0o644);
    let error = TrustStore::open(&setup.store).unwrap_err();
    assert!(
        matches!(&error, TrustError::InvalidPublicKey { path, .. } if *path == broken),
        "{error:?}"
    );
}

#[test]
fn broken_trust_toml_files_are_refused_with_clear_messages() {
    let cases = [
        ("unknown-section.toml", "revocations"),
        ("unknown-key-field.toml", "expires"),
        ("bad-level.toml", "trusted"),
        ("bad-digest.toml", "128 hexadecimal"),
        ("bad-key-id.toml", "16 hexadecimal"),
    ];
    for (fixture, expected) in cases {
        let setup = Setup::new();
        let config = setup.store.join(TRUST_CONFIG_FILE);
        fs::copy(Path::new(FIXTURES).join("configs").join(fixture), &config).unwrap();
        set_mode(&config, 0o644);
        let error = TrustStore::open(&setup.store).unwrap_err();
        assert!(
            matches!(&error, TrustError::InvalidTrustConfig { file, .. } if *file == config),
            "{fixture}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(expected), "{fixture}: {message}");
        assert!(message.contains("trust.toml"), "{fixture}: {message}");
    }
}

// ----- signature files -----

#[test]
fn signature_file_round_trips() {
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let signature = PrivateKey::generate().sign_bundle(&digests);
    let parsed = BundleSignature::parse(&signature.to_toml(), Path::new("plugin.sig")).unwrap();
    assert_eq!(parsed, signature);

    let valid = Path::new(FIXTURES).join("signatures/valid.sig");
    let read = BundleSignature::read(&valid).unwrap();
    assert_eq!(read.key_id.to_string(), "0123456789abcdef");
    assert_eq!(read.signature, [0u8; 64]);
}

#[test]
fn broken_signature_files_are_refused_with_clear_messages() {
    let cases = [
        ("unknown-field.sig", "comment"),
        ("wrong-format.sig", "plugboard-signature-v2"),
        ("wrong-algorithm.sig", "rsa-pss"),
        ("short-signature.sig", "63 bytes"),
        ("not-base64.sig", "base64"),
        ("unpadded.sig", "base64"),
        ("bad-key-id.sig", "key_id"),
        ("missing-signature.sig", "signature"),
    ];
    for (fixture, expected) in cases {
        let path = Path::new(FIXTURES).join("signatures").join(fixture);
        let error = BundleSignature::read(&path).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expected), "{fixture}: {message}");
        assert!(
            message.contains(&path.display().to_string()),
            "{fixture}: {message}"
        );
        match fixture {
            "wrong-format.sig" => assert!(
                matches!(error, TrustError::UnsupportedSignatureFormat { .. }),
                "{error:?}"
            ),
            "wrong-algorithm.sig" => assert!(
                matches!(error, TrustError::UnsupportedSignatureAlgorithm { .. }),
                "{error:?}"
            ),
            _ => assert!(
                matches!(error, TrustError::MalformedSignature { .. }),
                "{fixture}: {error:?}"
            ),
        }
    }
}

// ----- OpenSSL interoperability -----

/// Whether `openssl` can be run. Under CI a missing binary fails the test; elsewhere the
/// test says why it skips.
fn openssl_available(test: &str) -> bool {
    let why = match Command::new("openssl").arg("version").output() {
        Ok(output) if output.status.success() => return true,
        Ok(output) => format!(
            "`openssl version` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => format!("cannot run openssl: {error}"),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: openssl is required when CI is set ({why})"
    );
    eprintln!("skipping {test}: {why}");
    false
}

fn openssl<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let output = Command::new("openssl").args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {:?} failed: {}",
        args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The documented key id pipeline, with the final hex step done here.
fn openssl_key_id(pub_file: &Path) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl pkey -pubin -in \"$1\" -outform DER | tail -c 32 \
             | openssl dgst -sha3-512 -binary | head -c 8",
        )
        .arg("sh")
        .arg(pub_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout.len(), 8);
    hex::encode(output.stdout)
}

/// The README's "Signing with OpenSSL alone" recipe, run as written.
const README_OPENSSL_RECIPE: &str = r#"
set -eu
openssl genpkey -algorithm ed25519 -out signer.key && chmod 600 signer.key
openssl pkey -in signer.key -pubout -out signer.pub
{ printf 'plugboard-bundle-v1'
  openssl dgst -sha3-512 -binary bundle/plugin.toml
  openssl dgst -sha3-512 -binary bundle/libhello.so; } > statement.bin
key_id=$(openssl pkey -pubin -in signer.pub -outform DER | tail -c 32 \
         | openssl dgst -sha3-512 -binary | head -c 8 | xxd -p)
sig=$(openssl pkeyutl -sign -rawin -inkey signer.key -in statement.bin | base64 -w0)
printf 'format = "plugboard-signature-v1"\nalgorithm = "ed25519"\nkey_id = "%s"\nsignature = "%s"\n' \
       "$key_id" "$sig" > bundle/plugin.sig
"#;

#[test]
fn the_readme_openssl_recipe_produces_a_bundle_we_accept() {
    let test = "the_readme_openssl_recipe_produces_a_bundle_we_accept";
    if !openssl_available(test) {
        return;
    }
    if Command::new("xxd").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: xxd is required when CI is set"
        );
        eprintln!("skipping {test}: xxd is not installed");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let bundle = temp.path().join("bundle");
    fs::create_dir(&bundle).unwrap();
    fs::write(bundle.join("plugin.toml"), MANIFEST).unwrap();
    fs::write(bundle.join("libhello.so"), fake_library()).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(README_OPENSSL_RECIPE)
        .current_dir(temp.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let store = temp.path().join("store");
    let key_id = TrustStore::add_key(
        &store,
        &temp.path().join("signer.pub"),
        TrustLevel::Sandboxed,
    )
    .unwrap();
    let signature = BundleSignature::read(&bundle.join(SIGNATURE_FILE)).unwrap();
    assert_eq!(signature.key_id, key_id);
    let digests = BundleDigests::new(
        digest_file(&bundle.join("plugin.toml")).unwrap(),
        digest_file(&bundle.join("libhello.so")).unwrap(),
    );
    assert_eq!(
        fs::read(temp.path().join("statement.bin")).unwrap(),
        digests.statement()
    );
    TrustStore::open(&store)
        .unwrap()
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap();
    // The recipe's key works here too.
    let key = PrivateKey::load(&temp.path().join("signer.key")).unwrap();
    assert_eq!(key.sign_bundle(&digests), signature);
}

#[test]
fn openssl_sha3_512_matches_our_digest() {
    if !openssl_available("openssl_sha3_512_matches_our_digest") {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("libhello.so");
    fs::write(&file, fake_library()).unwrap();
    let output = String::from_utf8(openssl([
        OsStr::new("dgst"),
        OsStr::new("-sha3-512"),
        file.as_os_str(),
    ]))
    .unwrap();
    let theirs = output.split_whitespace().last().unwrap();
    assert_eq!(theirs, digest_file(&file).unwrap().to_hex());
}

#[test]
fn openssl_generated_key_loads_with_the_same_key_id() {
    if !openssl_available("openssl_generated_key_loads_with_the_same_key_id") {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let key_path = temp.path().join("key.pem");
    let pub_path = temp.path().join("key.pub");
    openssl([
        OsStr::new("genpkey"),
        OsStr::new("-algorithm"),
        OsStr::new("ed25519"),
        OsStr::new("-out"),
        key_path.as_os_str(),
    ]);
    set_mode(&key_path, 0o600);
    openssl([
        OsStr::new("pkey"),
        OsStr::new("-in"),
        key_path.as_os_str(),
        OsStr::new("-pubout"),
        OsStr::new("-out"),
        pub_path.as_os_str(),
    ]);

    let key = PrivateKey::load(&key_path).unwrap();
    let public = PublicKey::load(&pub_path).unwrap();
    assert_eq!(public.key_id(), key.key_id());
    assert_eq!(public.key_id().to_string(), openssl_key_id(&pub_path));
    // Our encodings are byte-identical to OpenSSL's.
    assert_eq!(*key.to_pem(), fs::read_to_string(&key_path).unwrap());
    assert_eq!(public.to_pem(), fs::read_to_string(&pub_path).unwrap());
}

#[test]
fn openssl_signature_over_the_statement_verifies() {
    if !openssl_available("openssl_signature_over_the_statement_verifies") {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let key_path = temp.path().join("third-party.pem");
    let pub_path = temp.path().join("third-party.pub");
    openssl([
        OsStr::new("genpkey"),
        OsStr::new("-algorithm"),
        OsStr::new("ed25519"),
        OsStr::new("-out"),
        key_path.as_os_str(),
    ]);
    openssl([
        OsStr::new("pkey"),
        OsStr::new("-in"),
        key_path.as_os_str(),
        OsStr::new("-pubout"),
        OsStr::new("-out"),
        pub_path.as_os_str(),
    ]);

    // The third party builds the statement from the two digests by the documented layout.
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let mut statement = b"plugboard-bundle-v1".to_vec();
    statement.extend_from_slice(digests.manifest.as_bytes());
    statement.extend_from_slice(digests.library.as_bytes());
    let statement_path = temp.path().join("statement.bin");
    fs::write(&statement_path, &statement).unwrap();
    let raw_signature = openssl([
        OsStr::new("pkeyutl"),
        OsStr::new("-sign"),
        OsStr::new("-rawin"),
        OsStr::new("-inkey"),
        key_path.as_os_str(),
        OsStr::new("-in"),
        statement_path.as_os_str(),
    ]);
    assert_eq!(raw_signature.len(), 64);

    let signature = BundleSignature {
        key_id: openssl_key_id(&pub_path).parse().unwrap(),
        signature: raw_signature.try_into().unwrap(),
    };
    let sig_path = temp.path().join(SIGNATURE_FILE);
    signature.write(&sig_path).unwrap();

    let store = temp.path().join("store");
    TrustStore::add_key(&store, &pub_path, TrustLevel::Sandboxed).unwrap();
    let signature = BundleSignature::read(&sig_path).unwrap();
    let verified = TrustStore::open(&store)
        .unwrap()
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap();
    assert_eq!(verified.key_id, signature.key_id);
}

#[test]
fn our_key_signs_identically_under_openssl() {
    if !openssl_available("our_key_signs_identically_under_openssl") {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let (key_id, key_path, pub_path) = write_keypair(temp.path(), "ours").unwrap();
    assert_eq!(key_id.to_string(), openssl_key_id(&pub_path));

    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let ours = PrivateKey::load(&key_path).unwrap().sign_bundle(&digests);
    let statement_path = temp.path().join("statement.bin");
    fs::write(&statement_path, digests.statement()).unwrap();
    let theirs = openssl([
        OsStr::new("pkeyutl"),
        OsStr::new("-sign"),
        OsStr::new("-rawin"),
        OsStr::new("-inkey"),
        key_path.as_os_str(),
        OsStr::new("-in"),
        statement_path.as_os_str(),
    ]);
    assert_eq!(theirs, ours.signature, "Ed25519 is deterministic");

    let sig_path = temp.path().join("sig.bin");
    fs::write(&sig_path, ours.signature).unwrap();
    let output = openssl([
        OsStr::new("pkeyutl"),
        OsStr::new("-verify"),
        OsStr::new("-pubin"),
        OsStr::new("-inkey"),
        pub_path.as_os_str(),
        OsStr::new("-rawin"),
        OsStr::new("-in"),
        statement_path.as_os_str(),
        OsStr::new("-sigfile"),
        sig_path.as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&output).contains("Verified Successfully"));
}

// ----- encrypted trust list -----

fn sample_list() -> TrustList {
    let mut list = TrustList::new();
    assert!(list.allow("hello", "1.2.3", Digest::of(b"bundle one")));
    assert!(list.allow("counter", "0.1.0", Digest::of(b"bundle two")));
    assert!(!list.allow("hello", "1.2.3", Digest::of(b"bundle one")));
    list
}

#[test]
fn trust_list_round_trips_and_uses_a_fresh_nonce() {
    let key = TrustListKey::generate();
    let list = sample_list();
    let sealed = seal_trust_list(&key, &list);
    assert_eq!(&sealed[..4], b"PBTL");
    assert_eq!(sealed[4], 1);
    assert_eq!(open_trust_list(&key, &sealed).unwrap(), list);
    assert!(list.contains("hello", "1.2.3", &Digest::of(b"bundle one")));
    assert!(!list.contains("hello", "1.2.4", &Digest::of(b"bundle one")));

    let again = seal_trust_list(&key, &list);
    assert_ne!(again, sealed);
    assert_ne!(again[5..29], sealed[5..29], "nonce reused");
    assert_eq!(open_trust_list(&key, &again).unwrap(), list);
    assert_eq!(
        open_trust_list(&key, &seal_trust_list(&key, &TrustList::new())).unwrap(),
        TrustList::new()
    );
}

#[test]
fn trust_list_under_the_wrong_key_is_refused() {
    let sealed = seal_trust_list(&TrustListKey::generate(), &sample_list());
    let error = open_trust_list(&TrustListKey::generate(), &sealed).unwrap_err();
    assert!(
        matches!(error, TrustError::TrustListAuthentication { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("failed authentication: wrong key or the file was modified"),
        "{error}"
    );
}

#[test]
fn a_flipped_bit_anywhere_in_the_sealed_list_is_refused() {
    let key = TrustListKey::generate();
    let sealed = seal_trust_list(&key, &sample_list());
    for position in 0..sealed.len() {
        let flipped = flip_bit(&sealed, position * 8 + position % 8);
        let error = open_trust_list(&key, &flipped).unwrap_err();
        match position {
            0..4 => assert!(
                matches!(error, TrustError::TrustListBadMagic { .. }),
                "{position}: {error:?}"
            ),
            4 => assert!(
                matches!(error, TrustError::TrustListUnsupportedVersion { .. }),
                "{position}: {error:?}"
            ),
            _ => assert!(
                matches!(error, TrustError::TrustListAuthentication { .. }),
                "{position}: {error:?}"
            ),
        }
    }
}

#[test]
fn a_truncated_sealed_list_is_refused() {
    let key = TrustListKey::generate();
    let sealed = seal_trust_list(&key, &sample_list());
    for length in 0..sealed.len() {
        let error = open_trust_list(&key, &sealed[..length]).unwrap_err();
        if length < 45 {
            assert!(
                matches!(error, TrustError::TrustListTruncated { .. }),
                "{length}: {error:?}"
            );
            assert!(error.to_string().contains("truncated"), "{error}");
        } else {
            assert!(
                matches!(error, TrustError::TrustListAuthentication { .. }),
                "{length}: {error:?}"
            );
        }
    }
    let error =
        open_trust_list(&key, b"not a trust list at all, just some text here ok").unwrap_err();
    assert!(
        matches!(error, TrustError::TrustListBadMagic { .. }),
        "{error:?}"
    );
}

#[test]
fn trust_list_key_file_is_private_and_exactly_32_bytes() {
    let temp = tempfile::tempdir().unwrap();
    let key_path = temp.path().join("trust-list.key");
    let key = generate_trust_list_key(&key_path).unwrap();
    assert_eq!(mode_of(&key_path), 0o600);
    assert_eq!(fs::read(&key_path).unwrap().len(), 32);
    let sealed = seal_trust_list(&key, &sample_list());
    let loaded = TrustListKey::load(&key_path).unwrap();
    assert_eq!(open_trust_list(&loaded, &sealed).unwrap(), sample_list());

    let error = generate_trust_list_key(&key_path).unwrap_err();
    assert!(matches!(error, TrustError::KeyExists { .. }), "{error:?}");

    set_mode(&key_path, 0o644);
    let error = TrustListKey::load(&key_path).unwrap_err();
    assert!(
        matches!(error, TrustError::InsecureKeyFile { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 600 {}", key_path.display())),
        "{error}"
    );

    let short = temp.path().join("short.key");
    fs::write(&short, [7u8; 31]).unwrap();
    set_mode(&short, 0o600);
    let error = TrustListKey::load(&short).unwrap_err();
    assert!(
        matches!(error, TrustError::InvalidTrustListKey { length: 31, .. }),
        "{error:?}"
    );
}

#[test]
fn a_store_with_a_trust_list_runs_only_listed_bundles() {
    let setup = Setup::new();
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let signature = setup.key.sign_bundle(&digests);

    let error = TrustStore::allow_bundle(&setup.store, "hello", "1.2.3", digests.bundle_digest())
        .unwrap_err();
    assert!(
        matches!(error, TrustError::TrustListNotConfigured { .. }),
        "{error:?}"
    );

    let key_file = setup.keys.join("trust-list.key");
    TrustStore::enable_trust_list(&setup.store, &key_file).unwrap();
    assert_eq!(mode_of(&key_file), 0o600);
    let store = setup.open_store();
    assert_eq!(store.trust_list(), Some(&TrustList::new()));
    let error = store
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap_err();
    assert!(
        matches!(&error, TrustError::NotOnTrustList { name, version, digest }
            if name == "hello" && version == "1.2.3" && *digest == digests.bundle_digest()),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("not on the trust store's trust list"),
        "{error}"
    );

    assert!(
        TrustStore::allow_bundle(&setup.store, "hello", "1.2.3", digests.bundle_digest()).unwrap()
    );
    assert!(
        !TrustStore::allow_bundle(&setup.store, "hello", "1.2.3", digests.bundle_digest()).unwrap()
    );
    let store = setup.open_store();
    store
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap();
    // Same bytes under another version, or another bundle under the listed version: refused.
    for (version, bundle) in [
        ("1.2.4", digests),
        ("1.2.3", BundleDigests::of(MANIFEST, b"other library")),
    ] {
        let signature = setup.key.sign_bundle(&bundle);
        let error = store
            .verify(&bundle, Some(&signature), "hello", version)
            .unwrap_err();
        assert!(
            matches!(error, TrustError::NotOnTrustList { .. }),
            "{error:?}"
        );
    }

    // The list on disk is encrypted: the name does not appear in it.
    let sealed_path = store.trust_list_file().unwrap().to_owned();
    let sealed = fs::read(&sealed_path).unwrap();
    assert!(!sealed.windows(5).any(|window| window == b"hello"));

    // A modified list refuses the whole store, naming the file.
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    fs::write(&sealed_path, &tampered).unwrap();
    let error = TrustStore::open(&setup.store).unwrap_err();
    assert!(
        error.to_string().contains(&format!(
            "trust list {} failed authentication",
            sealed_path.display()
        )),
        "{error}"
    );
    fs::write(&sealed_path, &sealed).unwrap();
    setup.open_store();

    // A key file others can read refuses the store.
    set_mode(&key_file, 0o640);
    let error = TrustStore::open(&setup.store).unwrap_err();
    assert!(
        matches!(error, TrustError::InsecureKeyFile { .. }),
        "{error:?}"
    );
    set_mode(&key_file, 0o600);

    // A deleted list does not silently turn the trust list off...
    fs::remove_file(&sealed_path).unwrap();
    let error = TrustStore::open(&setup.store).unwrap_err();
    assert!(
        matches!(&error, TrustError::TrustListMissing { file } if *file == sealed_path),
        "{error:?}"
    );
    // ...and allowing a bundle starts a new one.
    assert!(
        TrustStore::allow_bundle(&setup.store, "hello", "1.2.3", digests.bundle_digest()).unwrap()
    );
    setup
        .open_store()
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap();
}

#[test]
fn a_hand_configured_trust_list_starts_with_the_first_allowed_bundle() {
    // The CLI flow: `trust list-key`, then [trust_list] written into trust.toml by hand.
    let setup = Setup::new();
    let digests = BundleDigests::of(MANIFEST, &fake_library());
    let signature = setup.key.sign_bundle(&digests);
    generate_trust_list_key(&setup.store.join("trust-list.key")).unwrap();
    let config = setup.store.join(TRUST_CONFIG_FILE);
    fs::write(
        &config,
        "[trust_list]\nfile = \"trust-list.sealed\"\nkey_file = \"trust-list.key\"\n",
    )
    .unwrap();
    set_mode(&config, 0o644);
    let error = TrustStore::open(&setup.store).unwrap_err();
    assert!(
        matches!(error, TrustError::TrustListMissing { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("plugboard trust allow"),
        "{error}"
    );

    TrustStore::allow_bundle(&setup.store, "hello", "1.2.3", digests.bundle_digest()).unwrap();
    let store = setup.open_store();
    assert_eq!(store.trust_list().unwrap().entries.len(), 1);
    store
        .verify(&digests, Some(&signature), "hello", "1.2.3")
        .unwrap();
}

/// A file that is not an Ed25519 private key is refused saying what it holds instead: the
/// PKCS#8 parser alone named Ed25519's OID as the unsupported one for an RSA key.
#[test]
fn a_key_file_that_is_not_an_ed25519_private_key_says_what_it_holds() {
    let test = "a_key_file_that_is_not_an_ed25519_private_key_says_what_it_holds";
    let dir = TempDir::new().unwrap();
    let (_, _, public) = write_keypair(dir.path(), "real").unwrap();
    let refused = |name: &str, contents: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, contents).unwrap();
        set_mode(&path, 0o600);
        PrivateKey::load(&path).unwrap_err().to_string()
    };
    let empty = refused("empty.key", b"");
    assert!(empty.contains("the file is empty"), "{empty}");
    let public = refused("public.key", &fs::read(public).unwrap());
    assert!(public.contains("it holds a public key"), "{public}");
    if openssl_available(test) {
        let rsa = openssl([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
        ]);
        let rsa = refused("rsa.key", &rsa);
        assert!(
            rsa.contains("OID 1.2.840.113549.1.1.1, not Ed25519 (1.3.101.112)"),
            "{rsa}"
        );
    }
}

/// Only pinning a key creates a store: a revocation or a trust list for a directory that
/// does not exist (a mistyped path) is refused, and no store appears there.
#[test]
fn only_adding_a_key_creates_a_trust_store() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("no-such-store");
    let digest = Digest::of(b"anything");
    let key_id: KeyId = "0123456789abcdef".parse().unwrap();
    for refused in [
        TrustStore::revoke_key(&missing, key_id),
        TrustStore::revoke_digest(&missing, digest),
        TrustStore::enable_trust_list(&missing, Path::new("list.key")),
    ] {
        assert!(
            matches!(refused, Err(TrustError::StoreMissing { .. })),
            "{refused:?}"
        );
    }
    assert!(!missing.exists(), "no store was created");
}
