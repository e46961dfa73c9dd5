//! `vireo-vmm`: runs one VM on /dev/kvm, in this process, until it ends.
//!
//! The exit status says how the VM ended (see `vireo_api::MonitorExit`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vireo_api::device_args::{DiskArg, NetArg, TapArg};
use vireo_api::size::parse_size;
use vireo_api::MonitorExit;
use vireo_vmm::arch::x86_64::cpu_model::CpuModel;
use vireo_vmm::arch::x86_64::cpuid::Topology;
use vireo_vmm::config::{ConsoleDevice, DiskConfig, NetConfig, TapSource};
use vireo_vmm::{Machine, SerialConfig, VmConfig};

mod control;
mod logger;
mod tty;

/// Ctrl-]: leaves an interactive console.
const ESCAPE: u8 = 0x1d;

#[derive(Parser, Debug)]
#[command(
    name = "vireo-vmm",
    version,
    about = "Run one virtual machine on /dev/kvm."
)]
struct Args {
    /// ELF kernel with a PVH entry point (vmlinux, or the Vireo test guest).
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "", value_name = "TEXT")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u32,
    /// vCPU topology, e.g. sockets=2,cores=2,threads=1 (omitted parts are 1;
    /// the product must equal --cpus). Default: one socket of --cpus cores.
    #[arg(long, value_name = "LIST", value_parser = parse_topology)]
    topology: Option<Topology>,
    /// CPU model: host, x86-64-v2, emulated (for hosts whose KVM emulates guest
    /// kernel code) or auto (emulated on such hosts, else host).
    #[arg(long, default_value = "auto", value_name = "MODEL")]
    cpu_model: CpuModel,
    /// Guest memory: a number with an optional unit (K, M, G, T); a bare number is MiB.
    #[arg(long, default_value = "128M", value_name = "SIZE", value_parser = parse_size)]
    memory: u64,
    /// Where COM1 goes: stdio, file:PATH, unix:PATH (the monitor listens) or none.
    #[arg(long, default_value = "stdio", value_name = "SINK", value_parser = parse_serial)]
    serial: SerialArg,
    /// Serve the control protocol (pause, resume, power-button, stop) on this
    /// Unix socket; see vireo_api::control.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// End the monitor when the guest resets instead of rebooting it.
    #[arg(long)]
    no_reboot: bool,
    /// Stop the VM as an internal error after this many exits to the monitor
    /// (a guard for tests against runaway guests).
    #[arg(long, value_name = "N")]
    exit_budget: Option<u64>,
    /// Which device takes console input: serial (COM1) or virtio (a
    /// virtio-console, hvc0 in Linux; COM1 still prints to the same place).
    #[arg(long, default_value = "serial", value_name = "DEVICE", value_parser = parse_console)]
    console: ConsoleDevice,
    /// Add a virtio-rng entropy device (fed by the host's getrandom).
    #[arg(long)]
    rng: bool,
    /// Add a virtio-blk disk: PATH[,readonly][,direct][,serial=TEXT][,queues=N].
    /// Repeat for more disks.
    #[arg(long, value_name = "SPEC")]
    disk: Vec<DiskArg>,
    /// Add a virtio-net NIC on a TAP: tap=NAME|fd=N[,mac=ADDR][,queues=N].
    /// Repeat for more NICs.
    #[arg(long, value_name = "SPEC")]
    net: Vec<NetArg>,
    /// Log level: error, warn, info, debug, trace (also VIREO_LOG).
    #[arg(long, env = "VIREO_LOG", default_value = "warn", value_name = "LEVEL", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

#[derive(Debug, Clone)]
enum SerialArg {
    Stdio,
    File(PathBuf),
    Unix(PathBuf),
    None,
}

fn parse_topology(s: &str) -> Result<Topology, String> {
    let mut t = Topology {
        sockets: 1,
        cores: 1,
        threads: 1,
    };
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}': expected sockets=N, cores=N or threads=N"))?;
        let n: u32 = value
            .parse()
            .map_err(|_| format!("'{part}': '{value}' is not a number"))?;
        match key {
            "sockets" => t.sockets = n,
            "cores" => t.cores = n,
            "threads" => t.threads = n,
            _ => {
                return Err(format!(
                    "'{key}' is not part of a topology: use sockets, cores, threads"
                ))
            }
        }
    }
    Ok(t)
}

fn parse_console(s: &str) -> Result<ConsoleDevice, String> {
    match s {
        "serial" => Ok(ConsoleDevice::Serial),
        "virtio" => Ok(ConsoleDevice::Virtio),
        _ => Err(format!(
            "'{s}' is not a console device: use serial or virtio"
        )),
    }
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not a log level: use error, warn, info, debug or trace"))
}

fn parse_serial(s: &str) -> Result<SerialArg, String> {
    let nonempty = |p: &str, what: &str| {
        if p.is_empty() {
            Err(format!(
                "'{s}': {what} needs a path, like {what}:/tmp/console"
            ))
        } else {
            Ok(PathBuf::from(p))
        }
    };
    match s {
        "stdio" => Ok(SerialArg::Stdio),
        "none" | "null" => Ok(SerialArg::None),
        _ => match s.split_once(':') {
            Some(("file", p)) => Ok(SerialArg::File(nonempty(p, "file")?)),
            Some(("unix", p)) => Ok(SerialArg::Unix(nonempty(p, "unix")?)),
            _ => Err(format!(
                "'{s}' is not a serial sink: use stdio, file:PATH, unix:PATH or none"
            )),
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    logger::init(args.log_level);
    let interactive = matches!(args.serial, SerialArg::Stdio) && std::io::stdin().is_terminal();
    let serial = match args.serial {
        SerialArg::Stdio => SerialConfig::Stdio {
            escape: interactive.then_some(ESCAPE),
        },
        SerialArg::File(p) => SerialConfig::File(p),
        SerialArg::Unix(p) => SerialConfig::Socket(p),
        SerialArg::None => SerialConfig::Null,
    };
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        topology: args.topology,
        cpu_model: args.cpu_model,
        memory: args.memory,
        serial,
        reboot: !args.no_reboot,
        exit_budget: args.exit_budget,
        console: args.console,
        rng: args.rng,
        disks: args
            .disk
            .into_iter()
            .map(|d| DiskConfig {
                path: d.path,
                read_only: d.read_only,
                direct: d.direct,
                serial: d.serial,
                queues: d.queues,
                format: d.format.and_then(|f| f.parse().ok()),
            })
            .collect(),
        nets: args
            .net
            .into_iter()
            .map(|n| NetConfig {
                tap: match n.tap {
                    TapArg::Name(name) => TapSource::Name(name),
                    TapArg::Fd(fd) => TapSource::Fd(fd),
                },
                mac: n.mac,
                queues: n.queues,
            })
            .collect(),
    };
    let exit = run(config, interactive, args.control.as_deref());
    ExitCode::from(exit.code())
}

fn run(config: VmConfig, interactive: bool, control: Option<&std::path::Path>) -> MonitorExit {
    let (machine, handle) = match Machine::new(config) {
        Ok(m) => m,
        Err(e) => {
            report(&e);
            return e.exit();
        }
    };
    let _control = match control
        .map(|p| control::serve(p, handle).map_err(|e| (p, e)))
        .transpose()
    {
        Ok(c) => c,
        Err((p, e)) => {
            eprintln!(
                "vireo-vmm: error: cannot serve the control socket '{}': {e}",
                p.display()
            );
            return MonitorExit::Usage;
        }
    };
    let _raw = if interactive {
        eprintln!("vireo-vmm: console attached; press Ctrl-] to stop the VM");
        tty::RawMode::enter(libc::STDIN_FILENO)
    } else {
        None
    };
    match machine.run() {
        Ok(outcome) => {
            drop(_raw);
            if outcome.exit != MonitorExit::Ok {
                eprintln!(
                    "vireo-vmm: {}: {}",
                    outcome.exit.describe(),
                    outcome.message
                );
            }
            outcome.exit
        }
        Err(e) => {
            drop(_raw);
            report(&e);
            e.exit()
        }
    }
}

/// Prints an error with its whole chain of causes on one line.
fn report(e: &dyn std::error::Error) {
    let mut line = format!("vireo-vmm: error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(&format!(": {c}"));
        cause = c.source();
    }
    eprintln!("{line}");
}
