//! Compiles `hello.c` into `libhello_c.so` with `cc -shared`, so its symbols are exported
//! exactly as a C plugin author's would be, and places it beside the Rust plugins in
//! `target/<profile>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = crate_dir.join("hello.c");
    let include = crate_dir.join("../sdk/include");
    let library = out_dir.join("libhello_c.so");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());

    println!("cargo:rerun-if-changed={}", source.display());
    println!(
        "cargo:rerun-if-changed={}",
        include.join("plugboard.h").display()
    );
    println!("cargo:rerun-if-env-changed=CC");

    let status = Command::new(&compiler)
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&library)
        .arg(&source)
        .status()
        .unwrap_or_else(|err| panic!("cannot run the C compiler `{compiler}`: {err}"));
    assert!(
        status.success(),
        "`{compiler}` failed to build {}",
        source.display()
    );

    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out: put a copy in target/<profile>/
    // where the Rust plugin libraries are, for the demo and for manual packing.
    if let Some(profile_dir) = out_dir
        .ancestors()
        .nth(3)
        .filter(|dir| dir.join("build").is_dir())
    {
        copy_if_changed(&library, &profile_dir.join("libhello_c.so"));
    }
    println!("cargo:rustc-env=HELLO_C_LIBRARY={}", library.display());
}

fn copy_if_changed(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).expect("the library was just built");
    if std::fs::read(to).ok().as_deref() != Some(bytes.as_slice()) {
        std::fs::write(to, bytes)
            .unwrap_or_else(|err| panic!("cannot copy to {}: {err}", to.display()));
    }
}
