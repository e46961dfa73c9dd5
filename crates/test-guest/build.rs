//! Builds the guest program (guest/main.rs) into `$OUT_DIR/vireo-test-guest.elf`.
//!
//! The guest is a `#![no_std]` binary compiled by the same rustc for the host target
//! (x86_64-unknown-linux-gnu) and linked with guest/link.ld into a static, non-PIE ELF
//! loaded at 1 MiB: no extra target, toolchain or download is needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const ELF_NAME: &str = "vireo-test-guest.elf";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");

    println!("cargo:rerun-if-changed={}", guest_dir.display());
    for file in guest_files(&guest_dir) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let elf = out_dir.join(ELF_NAME);
    let link_script = guest_dir.join("link.ld");

    let mut cmd = Command::new(&rustc);
    cmd.arg(guest_dir.join("main.rs"))
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "vireo_test_guest",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
        ])
        .args([
            "-C",
            "relocation-model=static",
            "-C",
            "debuginfo=0",
            "-C",
            "strip=debuginfo",
        ])
        .args(["-C", "force-unwind-tables=no"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "-C", "link-arg=-no-pie"])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", link_script.display()))
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .args(["--cap-lints", "warn"])
        // Panic messages name guest/<file>, not this checkout's path: the ELF is reproducible.
        .arg("--remap-path-prefix")
        .arg(format!("{}=guest", guest_dir.display()))
        .arg("-o")
        .arg(&elf)
        // The host build's flags (target-cpu, sanitizers, ...) are not meant for the guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        cmd.arg("-C")
            .arg(format!("linker={}", Path::new(&linker).display()));
    }

    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) => panic!(
            "cannot run {} to build the test guest: {err}",
            Path::new(&rustc).display()
        ),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        panic!(
            "compiling the test guest (crates/test-guest/guest) failed ({}); rustc's messages are above.\ncommand: {cmd:?}",
            output.status
        );
    }
    // The guest is meant to build warning-free: surface anything rustc said.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=test guest: {line}");
    }
    if let Err(err) = check_elf(&elf) {
        panic!(
            "the test guest {} is not what link.ld should produce: {err}",
            elf.display()
        );
    }
}

/// Every file under `dir`, recursively.
fn guest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => panic!("cannot list {}: {err}", dir.display()),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                println!("cargo:rerun-if-changed={}", path.display());
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A quick sanity check (the crate's unit tests check the details).
fn check_elf(elf: &Path) -> Result<(), String> {
    let bytes = fs::read(elf).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let e_type = u16::from_le_bytes([bytes[16], bytes[17]]);
    if e_type != 2 {
        return Err(format!("ELF type {e_type}, expected 2 (ET_EXEC)"));
    }
    Ok(())
}
