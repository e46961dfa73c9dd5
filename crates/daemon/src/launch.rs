//! From a domain definition to the `vireo-vmm` command line that runs it.
//!
//! Pure: the daemon resolves the host side first (the domain's runtime
//! directory, the test guest's file, TAP names) and does the file system
//! work the plan asks for before it spawns the monitor.

use std::ffi::OsString;
use std::path::PathBuf;

use vireo_api::device_args::{DiskArg, NetArg, TapArg};
use vireo_domain::{Boot, CharSource, ConsoleTarget, Domain, LifecycleAction};

/// Where a running domain's files live (`/run/vireo/domains/NAME/`), and
/// what the daemon resolved for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    /// The domain's runtime directory.
    pub run_dir: PathBuf,
    /// The built-in test guest's ELF, for domains without `<kernel>`.
    pub test_guest: PathBuf,
    /// One TAP name per `<interface>`, in order (the target's, or one the
    /// daemon chose).
    pub taps: Vec<String>,
}

impl HostSide {
    /// The monitor's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    /// The console socket the daemon relays (for `<serial type='pty'>`).
    pub fn console_socket(&self) -> PathBuf {
        self.run_dir.join("console.sock")
    }
}

/// The monitor's command line, and what to do before running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub args: Vec<OsString>,
    /// Log files to empty first (`<source append='off'>`, libvirt's
    /// default; the monitor appends).
    pub truncate: Vec<PathBuf>,
}

/// The definition cannot be run as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    #[error("{interfaces} interfaces but {taps} TAP names were resolved")]
    TapCount { interfaces: usize, taps: usize },
    #[error("disk {target}: {why}")]
    Disk { target: String, why: String },
}

fn arg(text: impl Into<OsString>) -> OsString {
    text.into()
}

/// The `vireo-vmm` arguments (without the program name) for `domain`.
pub fn plan(domain: &Domain, host: &HostSide) -> Result<LaunchPlan, LaunchError> {
    let mut args: Vec<OsString> = Vec::new();
    let mut truncate = Vec::new();
    match &domain.os.boot {
        Boot::TestGuest => {
            args.push(arg("--kernel"));
            args.push(host.test_guest.clone().into_os_string());
        }
        Boot::Kernel { kernel, initrd } => {
            args.push(arg("--kernel"));
            args.push(arg(kernel));
            if let Some(initrd) = initrd {
                args.push(arg("--initrd"));
                args.push(arg(initrd));
            }
        }
    }
    if let Some(cmdline) = &domain.os.cmdline {
        args.push(arg("--cmdline"));
        args.push(arg(cmdline));
    }
    args.push(arg("--memory"));
    args.push(arg(format!("{}K", domain.memory.kib)));
    args.push(arg("--cpus"));
    args.push(arg(domain.vcpus.to_string()));
    if let Some(t) = domain.topology() {
        args.push(arg("--topology"));
        args.push(arg(format!(
            "sockets={},cores={},threads={}",
            t.sockets, t.cores, t.threads
        )));
    }
    if let Some(model) = domain.cpu_model() {
        args.push(arg("--cpu-model"));
        args.push(arg(model.as_str()));
    }
    args.push(arg("--serial"));
    args.push(match domain.console_sink() {
        None | Some(CharSource::Null) => arg("none"),
        Some(CharSource::Pty) => {
            let mut s = OsString::from("unix:");
            s.push(host.console_socket());
            s
        }
        Some(CharSource::File { path, append }) => {
            if *append != Some(true) {
                truncate.push(PathBuf::from(path));
            }
            arg(format!("file:{path}"))
        }
        Some(CharSource::Unix { path }) => arg(format!("unix:{path}")),
    });
    if domain.console_device() == ConsoleTarget::Virtio {
        args.push(arg("--console"));
        args.push(arg("virtio"));
    }
    args.push(arg("--control"));
    args.push(host.control_socket().into_os_string());
    if domain.lifecycle.on_reboot == LifecycleAction::Destroy {
        args.push(arg("--no-reboot"));
    }
    if domain.devices.rng.is_some() {
        args.push(arg("--rng"));
    }
    for disk in &domain.devices.disks {
        let spec = DiskArg {
            path: PathBuf::from(disk.path()),
            read_only: disk.read_only,
            direct: disk.direct(),
            serial: disk.serial.clone(),
            queues: disk.queues.unwrap_or(1),
            format: Some(disk.format.as_str().to_owned()),
        };
        let text = spec.to_string();
        // The monitor's syntax splits on commas; the domain crate refuses
        // them in paths, so this only guards against a change there.
        if disk.path().contains(',') {
            return Err(LaunchError::Disk {
                target: disk.target.clone(),
                why: "the path contains a comma".into(),
            });
        }
        args.push(arg("--disk"));
        args.push(arg(text));
    }
    let interfaces = &domain.devices.interfaces;
    if interfaces.len() != host.taps.len() {
        return Err(LaunchError::TapCount {
            interfaces: interfaces.len(),
            taps: host.taps.len(),
        });
    }
    for (nic, tap) in interfaces.iter().zip(&host.taps) {
        let spec = NetArg {
            tap: TapArg::Name(tap.clone()),
            mac: Some(nic.mac.0),
            queues: nic.queues.unwrap_or(1),
        };
        args.push(arg("--net"));
        args.push(arg(spec.to_string()));
    }
    Ok(LaunchPlan { args, truncate })
}

/// The arguments as one shell-like line, for logs.
pub fn display(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(taps: &[&str]) -> HostSide {
        HostSide {
            run_dir: PathBuf::from("/run/vireo/domains/vm1"),
            test_guest: PathBuf::from("/run/vireo/test-guest.elf"),
            taps: taps.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn line(xml: &str, taps: &[&str]) -> String {
        let domain = Domain::from_xml(xml).expect("valid domain");
        display(&plan(&domain, &host(taps)).expect("plan").args)
    }

    #[test]
    fn a_test_guest_domain_runs_the_built_in_guest() {
        let got = line(
            "<domain type='kvm'><name>vm1</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
             <os><type arch='x86_64'>hvm</type><cmdline>scenario=smp</cmdline></os></domain>",
            &[],
        );
        assert_eq!(
            got,
            "--kernel /run/vireo/test-guest.elf --cmdline scenario=smp --memory 65536K --cpus 2 \
             --serial none --control /run/vireo/domains/vm1/control.sock"
        );
    }

    #[test]
    fn devices_console_and_lifecycle_map_to_monitor_flags() {
        let xml = "<domain type='kvm'><name>web</name><memory unit='GiB'>1</memory><vcpu>4</vcpu>\
            <os><type arch='x86_64'>hvm</type><kernel>/boot/vmlinux</kernel>\
            <initrd>/boot/initrd</initrd><cmdline>console=hvc0</cmdline></os>\
            <cpu mode='host-passthrough'><topology sockets='2' cores='2' threads='1'/></cpu>\
            <on_reboot>destroy</on_reboot>\
            <devices>\
            <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>\
            <source file='/var/lib/vireo/images/web.img'/><target dev='vda' bus='virtio'/>\
            <serial>web-root</serial></disk>\
            <interface type='ethernet'><mac address='52:54:00:12:34:56'/><model type='virtio'/>\
            <driver queues='2'/></interface>\
            <serial type='pty'><target port='0'/></serial>\
            <console type='pty'><target type='virtio' port='0'/></console>\
            <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
            </devices></domain>";
        let got = line(xml, &["vnet0"]);
        assert_eq!(
            got,
            "--kernel /boot/vmlinux --initrd /boot/initrd --cmdline console=hvc0 \
             --memory 1048576K --cpus 4 --topology sockets=2,cores=2,threads=1 --cpu-model host \
             --serial unix:/run/vireo/domains/vm1/console.sock --console virtio --control /run/vireo/domains/vm1/control.sock --no-reboot --rng \
             --disk /var/lib/vireo/images/web.img,direct,serial=web-root,format=raw \
             --net tap=vnet0,mac=52:54:00:12:34:56,queues=2"
        );
    }

    #[test]
    fn file_consoles_are_emptied_unless_appending_and_taps_must_match() {
        let xml = "<domain type='kvm'><name>vm1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
            <os><type arch='x86_64'>hvm</type></os><devices>\
            <serial type='file'><source path='/var/log/vireo/vm1.log'/><target port='0'/></serial>\
            <interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>\
            </devices></domain>";
        let domain = Domain::from_xml(xml).expect("valid");
        let plan_ok = plan(&domain, &host(&["vnet7"])).expect("plan");
        assert_eq!(plan_ok.truncate, [PathBuf::from("/var/log/vireo/vm1.log")]);
        assert!(display(&plan_ok.args).contains("--serial file:/var/log/vireo/vm1.log"));
        assert_eq!(
            plan(&domain, &host(&[])),
            Err(LaunchError::TapCount {
                interfaces: 1,
                taps: 0
            })
        );
    }
}

#[cfg(test)]
mod monitor_accepts {
    //! The plan's arguments against the real `vireo-vmm`'s parser: a VM
    //! started from a definition reaches the test guest.
    use super::*;

    #[test]
    fn the_monitor_runs_a_planned_test_guest() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED: no /dev/kvm");
            return;
        }
        let Some(vmm) = option_env!("CARGO_BIN_EXE_vireo-vmm")
            .map(PathBuf::from)
            .or_else(|| {
                let exe = std::env::current_exe().ok()?;
                let bin = exe.parent()?.parent()?.join("vireo-vmm");
                bin.exists().then_some(bin)
            })
        else {
            eprintln!("SKIPPED: vireo-vmm is not built");
            return;
        };
        let dir = std::env::temp_dir().join(format!("vireo-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("run dir");
        let guest = dir.join("guest.elf");
        std::fs::write(&guest, vireo_test_guest::ELF).expect("guest");
        let domain = Domain::from_xml(
            "<domain type='kvm'><name>vm1</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
             <os><type arch='x86_64'>hvm</type><cmdline>scenario=hello</cmdline></os>\
             <on_reboot>destroy</on_reboot><devices><rng model='virtio'><backend model='builtin'/></rng>\
             <serial type='file'><source path='CONSOLE'/><target port='0'/></serial></devices></domain>"
                .replace("CONSOLE", &dir.join("console.log").display().to_string())
                .as_str(),
        )
        .expect("valid");
        let host = HostSide {
            run_dir: dir.clone(),
            test_guest: guest,
            taps: Vec::new(),
        };
        let plan = plan(&domain, &host).expect("plan");
        let status = std::process::Command::new(vmm)
            .args(&plan.args)
            .args(["--exit-budget", "2000000"])
            .status()
            .expect("run vireo-vmm");
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        assert!(
            status.success(),
            "vireo-vmm {}: {status}\n{console}",
            display(&plan.args)
        );
        assert!(console.contains("PASS hello"), "{console}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
