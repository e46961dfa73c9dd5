//! `cargo xtask <job>`: what CI runs, and the benchmarks.
//!
//! - `cargo xtask run [ARGS]`: build the release binaries and `vireo run ARGS`
//!   (with no arguments: the built-in test guest). The README's first command.
//! - `cargo xtask ci`: format check, clippy, the whole test suite (exactly CI).
//! - `cargo xtask bench boot [--runs N]`: boot time and monitor overhead,
//!   Vireo against QEMU on the same test guest.
//! - `cargo xtask bench blk [--secs N] [--size 1G]`: virtio-blk IOPS and MB/s
//!   (4 KiB random at queue depth 1 and 32, 1 MiB sequential), host fio against
//!   QEMU against Vireo on one image.
//! - `cargo xtask bench net [--secs N]`: virtio-net transmit packets/s and Gb/s
//!   into a TAP, QEMU against Vireo (needs root for the TAP devices).
//! - `cargo xtask bench img [--size 4G] [--secs N]`: `vireo img convert` against
//!   `qemu-img convert` (qcow2 <-> raw, compressed qcow2) and 4 KiB random IOPS
//!   through the image library against qemu-io, on the same images.
//! - `cargo xtask guest-kernel` / `initramfs`: build the Linux test guest's
//!   kernel and initramfs into a cache outside the repository.
//! - `cargo xtask test-linux [--cpus 1,2] [--timeout SECS] [--qemu]`: the slow,
//!   opt-in Linux boot test (never part of `ci`).

use std::process::Command;

use anyhow::{bail, Context};

mod bench;
mod bench_blk;
mod bench_img;
mod bench_lifecycle;
mod bench_net;
mod bench_vm;
mod guest_assets;
mod linux;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::main(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("guest-kernel") => guest_assets::kernel_main(&args[1..]),
        Some("initramfs") => guest_assets::initramfs_main(&args[1..]),
        Some("test-linux") => linux::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask run [vireo run options] | ci | bench boot [--runs N]\n\
                 usage: cargo xtask bench blk [--secs N] [--size 1G] | bench net [--secs N]\n\
                 usage: cargo xtask bench img [--size 4G] [--secs N] [--tests LIST]\n\
                 usage: cargo xtask guest-kernel [--force] | initramfs [--force]\n\
                 usage: cargo xtask test-linux [--cpus 1,2] [--timeout SECS] [--qemu] [--quiet]"
            );
            bail!("unknown or missing job")
        }
    }
}

/// Runs a cargo subcommand in the workspace, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The workspace's root directory.
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn ci() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace", "--no-fail-fast"])?;
    Ok(())
}

fn run(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "vireo-monitor",
        "-p",
        "vireo-cli",
    ])?;
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        bail!("/dev/kvm is not usable by this user: Vireo needs KVM (run as root or join the kvm group)");
    }
    let vireo = workspace_root().join("target/release/vireo");
    let err = Command::new(&vireo).arg("run").args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", vireo.display()))
}
