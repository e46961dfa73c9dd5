//! `vireo run`: one VM in the foreground. Execs `vireo-vmm`, so the VM's exit
//! status is this command's exit status (see `vireo_api::MonitorExit`).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::Args;
use vireo_api::device_args::{DiskArg, NetArg};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// ELF kernel with a PVH entry point; without it, the built-in test guest boots.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (for the test guest: `scenario=NAME key=value ...`).
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Test-guest scenario to run (only without --kernel); see --list-scenarios.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["kernel", "cmdline"])]
    scenario: Option<String>,
    /// List the built-in test guest's scenarios and exit.
    #[arg(long)]
    list_scenarios: bool,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u32,
    /// vCPU topology, e.g. sockets=2,cores=2,threads=1 (the product must equal --cpus).
    #[arg(long, value_name = "LIST")]
    topology: Option<String>,
    /// CPU model: host, x86-64-v2, emulated or auto.
    #[arg(long, default_value = "auto", value_name = "MODEL")]
    cpu_model: String,
    /// Guest memory: a number with an optional unit (K, M, G, T); a bare number is MiB.
    #[arg(long, default_value = "128M", value_name = "SIZE", value_parser = vireo_api::size::parse_size)]
    memory: u64,
    /// Where the serial console goes: stdio, file:PATH, unix:PATH or none.
    #[arg(long, default_value = "stdio", value_name = "SINK")]
    serial: String,
    /// End when the guest resets instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// Which device takes console input: serial (COM1) or virtio (hvc0).
    #[arg(long, default_value = "serial", value_name = "DEVICE", value_parser = ["serial", "virtio"])]
    console: String,
    /// Add a virtio-rng entropy device.
    #[arg(long)]
    rng: bool,
    /// Add a virtio-blk disk: PATH[,readonly][,direct][,serial=TEXT][,queues=N] (repeatable).
    #[arg(long, value_name = "SPEC")]
    disk: Vec<DiskArg>,
    /// Add a virtio-net NIC on a TAP: tap=NAME|fd=N[,mac=ADDR][,queues=N] (repeatable).
    #[arg(long, value_name = "SPEC")]
    net: Vec<NetArg>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.list_scenarios {
        for (name, about) in vireo_test_guest::SCENARIOS {
            println!("{name:<12} {about}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(s) = &args.scenario {
        if !vireo_test_guest::SCENARIOS.iter().any(|(n, _)| n == s) {
            let names: Vec<&str> = vireo_test_guest::SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect();
            bail!(
                "no test-guest scenario named '{s}'; the scenarios are: {}",
                names.join(", ")
            );
        }
    }
    let vmm = find_vmm()?;
    let mut cmd = Command::new(&vmm);
    let mut keep_fd: Option<OwnedFd> = None;
    let kernel: OsString = match &args.kernel {
        Some(k) => k.clone().into(),
        None => {
            let fd = embedded_guest().context("cannot stage the built-in test guest")?;
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            keep_fd = Some(fd);
            path.into()
        }
    };
    let cmdline = match (&args.cmdline, &args.kernel) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => format!(
            "scenario={} cpus={} mem={}",
            args.scenario.as_deref().unwrap_or("hello"),
            args.cpus,
            args.memory >> 20
        ),
    };
    cmd.arg("--kernel").arg(kernel);
    if let Some(i) = &args.initrd {
        cmd.arg("--initrd").arg(i);
    }
    cmd.arg("--cmdline").arg(cmdline);
    cmd.arg("--cpus").arg(args.cpus.to_string());
    if let Some(t) = &args.topology {
        cmd.arg("--topology").arg(t);
    }
    cmd.arg("--cpu-model").arg(&args.cpu_model);
    cmd.arg("--memory").arg(format!("{}B", args.memory));
    cmd.arg("--serial").arg(&args.serial);
    if args.no_reboot {
        cmd.arg("--no-reboot");
    }
    cmd.arg("--console").arg(&args.console);
    if args.rng {
        cmd.arg("--rng");
    }
    for d in &args.disk {
        if !d.path.exists() {
            bail!("disk image '{}' does not exist", d.path.display());
        }
        cmd.arg("--disk").arg(d.to_string());
    }
    for n in &args.net {
        cmd.arg("--net").arg(n.to_string());
    }
    let err = cmd.exec();
    drop(keep_fd);
    Err(err).with_context(|| format!("cannot run {}", vmm.display()))
}

/// `vireo-vmm` next to this binary, else on PATH.
fn find_vmm() -> anyhow::Result<PathBuf> {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join("vireo-vmm");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("vireo-vmm");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("cannot find vireo-vmm next to vireo or on PATH (build it with `cargo build --release`)")
}

/// The built-in test guest in an anonymous memory file the monitor inherits.
fn embedded_guest() -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static C string; the result is checked. No
    // MFD_CLOEXEC: the exec'd monitor must inherit it.
    let fd = unsafe { libc::memfd_create(c"vireo-test-guest".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(vireo_test_guest::ELF)?;
    Ok(f.into())
}
