//! Verify throughput for a 10 MiB library, next to `openssl dgst -sha3-512` on the same
//! file in the same run.
//!
//! Run: `cargo bench -p plugboard-engine --bench verify`
//!
//! "verify" is everything `plugboard verify` does to a bundle: read and hash plugin.toml,
//! stream the library once into a sealed memfd while hashing it, read plugin.sig, and check
//! the Ed25519 signature against a trust store. OpenSSL's time is measured as a process, so
//! its start-up cost (hashing an empty file) is measured too and subtracted.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use plugboard_engine::bundle::Bundle;
use plugboard_engine::loader::SealedLibrary;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::trust::{self, PrivateKey, SIGNATURE_FILE, TrustLevel, TrustStore};

const LIBRARY_BYTES: usize = 10 * 1024 * 1024;
const ROUNDS: usize = 15;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(rounds: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm the page cache and the code
    median(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    // 10 MiB fits an f64 mantissa exactly.
    #[allow(clippy::cast_precision_loss)]
    let bytes = bytes as f64;
    bytes / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn openssl(file: &Path) -> bool {
    Command::new("openssl")
        .args(["dgst", "-sha3-512", "-r"])
        .arg(file)
        .output()
        .is_ok_and(|out| out.status.success())
}

fn main() {
    let temp = tempfile::tempdir().expect("temp dir");
    let bundle = temp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    // Incompressible, deterministic filler (xorshift), like a real stripped library.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut library = Vec::with_capacity(LIBRARY_BYTES);
    while library.len() < LIBRARY_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        library.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::File::create(bundle.join("libbig.so"))
        .unwrap()
        .write_all(&library)
        .unwrap();
    std::fs::write(
        bundle.join("plugin.toml"),
        "[plugin]\nname = \"big\"\nversion = \"1.0.0\"\napi_version = 1\nlibrary = \"libbig.so\"\n",
    )
    .unwrap();
    let keys = temp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (_, private, public) = trust::write_keypair(&keys, "bench").unwrap();
    let key = PrivateKey::load(&private).unwrap();
    let opened = Bundle::open(&bundle, &HostLimits::default()).unwrap();
    key.sign_bundle(opened.digests())
        .write(&bundle.join(SIGNATURE_FILE))
        .unwrap();
    let store_dir = temp.path().join("store");
    TrustStore::add_key(&store_dir, &public, TrustLevel::Sandboxed).unwrap();
    let store = TrustStore::open(&store_dir).unwrap();

    let verify = time(ROUNDS, || {
        let bundle = Bundle::open(&bundle, &HostLimits::default()).unwrap();
        bundle.verify(&store).unwrap();
    });
    let sealed_copy = time(ROUNDS, || {
        let file = std::fs::File::open(bundle.join("libbig.so")).unwrap();
        SealedLibrary::from_reader("bench", file).unwrap();
    });
    let digest_only = time(ROUNDS, || {
        trust::digest_file(&bundle.join("libbig.so")).unwrap();
    });
    println!(
        "library: {} MiB, {ROUNDS} rounds, medians",
        LIBRARY_BYTES / (1024 * 1024)
    );
    println!(
        "plugboard verify (bundle open + sealed copy + signature): {verify:>10.2?}  {:>7.1} MiB/s",
        mib_per_s(LIBRARY_BYTES, verify)
    );
    println!(
        "plugboard sealed copy + SHA3-512 of the library:         {sealed_copy:>10.2?}  {:>7.1} MiB/s",
        mib_per_s(LIBRARY_BYTES, sealed_copy)
    );
    println!(
        "plugboard SHA3-512 of the library alone:                  {digest_only:>10.2?}  {:>7.1} MiB/s",
        mib_per_s(LIBRARY_BYTES, digest_only)
    );

    let empty = temp.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let library_path = bundle.join("libbig.so");
    if !openssl(&empty) {
        println!("openssl dgst -sha3-512: not available, no reference in this run");
        return;
    }
    let startup = time(ROUNDS, || assert!(openssl(&empty)));
    let whole = time(ROUNDS, || assert!(openssl(&library_path)));
    let hashing = whole.saturating_sub(startup);
    println!(
        "openssl dgst -sha3-512 (process, as measured):            {whole:>10.2?}  {:>7.1} MiB/s",
        mib_per_s(LIBRARY_BYTES, whole)
    );
    println!("openssl start-up (empty file):                            {startup:>10.2?}");
    println!(
        "openssl hashing alone (minus start-up):                   {hashing:>10.2?}  {:>7.1} MiB/s",
        mib_per_s(LIBRARY_BYTES, hashing)
    );
    println!(
        "ratio verify / openssl hashing throughput: {:.2}x  (goal >= 0.80x)",
        hashing.as_secs_f64() / verify.as_secs_f64()
    );
    println!(
        "ratio digest / openssl hashing throughput: {:.2}x",
        hashing.as_secs_f64() / digest_only.as_secs_f64()
    );
}
