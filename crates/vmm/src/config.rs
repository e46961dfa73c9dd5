//! What one VM is made of, as the monitor's caller gives it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::arch::x86_64::cpu_model::CpuModel;
use crate::arch::x86_64::cpuid::Topology;
use crate::memory::{LayoutError, MemoryLayout};

/// Most vCPUs a VM may have: xAPIC IDs are 8 bits and 0xff is broadcast.
pub const MAX_VCPUS: u32 = 254;

/// Where COM1 goes.
#[derive(Debug, Clone, Default)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin (`escape`, if set, is the byte that
    /// ends the VM when typed, e.g. Ctrl-] = 0x1d).
    Stdio { escape: Option<u8> },
    /// Output appended to a file; no input.
    File(PathBuf),
    /// A Unix socket the monitor listens on; one client at a time gets the
    /// output and may type input. Output is dropped while no client is there.
    Socket(PathBuf),
    /// Output kept in memory (for tests and embedding).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// No console.
    #[default]
    Null,
}

/// Which device carries the console's input (output goes to the console
/// sink from both when both exist).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConsoleDevice {
    /// COM1 only.
    #[default]
    Serial,
    /// A virtio-console (hvc0 in Linux) takes the input; COM1 still prints.
    Virtio,
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Image file or block device.
    pub path: PathBuf,
    /// Refuse writes (the guest sees a read-only disk).
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// GET_ID serial (default: derived from the file's identity).
    pub serial: Option<String>,
    /// Number of request queues (1..=16).
    pub queues: u16,
    /// The image format; probed from the file when `None`.
    pub format: Option<vireo_disk::ImageFormat>,
}

impl DiskConfig {
    /// A writable, cached, single-queue disk on `path`.
    pub fn new(path: impl Into<PathBuf>) -> DiskConfig {
        DiskConfig {
            path: path.into(),
            read_only: false,
            direct: false,
            serial: None,
            queues: 1,
            format: None,
        }
    }
}

/// Where a NIC's TAP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Open (or create) the TAP interface of this name.
    Name(String),
    /// Use this inherited descriptor, a TAP opened with IFF_VNET_HDR.
    Fd(i32),
}

/// A virtio-net NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP backend.
    pub tap: TapSource,
    /// MAC address (default: random, locally administered).
    pub mac: Option<[u8; 6]>,
    /// Queue pairs (a multi-queue TAP for more than one).
    pub queues: u16,
}

/// One VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// ELF kernel with a PVH entry point.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// How the vCPUs form sockets, cores and threads (default: one socket of
    /// single-threaded cores). Its product must equal `cpus`.
    pub topology: Option<Topology>,
    /// Which CPU features the guest sees.
    pub cpu_model: CpuModel,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// COM1.
    pub serial: SerialConfig,
    /// Whether a guest reset (or triple fault) reboots the VM (true, the
    /// default) or ends the monitor.
    pub reboot: bool,
    /// Ends the VM as an internal error after this many vCPU exits to the
    /// monitor (all vCPUs together): a test's guard against runaway guests.
    pub exit_budget: Option<u64>,
    /// Which device takes console input.
    pub console: ConsoleDevice,
    /// A virtio-rng device.
    pub rng: bool,
    /// virtio-blk disks, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs, after the disks.
    pub nets: Vec<NetConfig>,
}

/// Invalid configuration: the VM cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("a VM needs at least one vCPU")]
    NoCpus,
    #[error("{cpus} vCPUs requested; at most {max} are supported")]
    TooManyCpus { cpus: u32, max: u32 },
    #[error(
        "the topology {sockets} sockets x {cores} cores x {threads} threads makes {product} vCPUs, \
         but {cpus} were asked for"
    )]
    TopologyMismatch {
        sockets: u32,
        cores: u32,
        threads: u32,
        product: u64,
        cpus: u32,
    },
    #[error("a topology needs at least one socket, core and thread")]
    TopologyZero,
    #[error(transparent)]
    Memory(#[from] LayoutError),
}

impl VmConfig {
    /// The vCPU topology in effect.
    pub fn topology(&self) -> Topology {
        self.topology.unwrap_or(Topology::flat(self.cpus))
    }

    /// A config for `kernel` with one vCPU and 128 MiB, console on stdio.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            topology: None,
            cpu_model: CpuModel::auto(),
            memory: 128 << 20,
            serial: SerialConfig::Stdio { escape: None },
            reboot: true,
            exit_budget: None,
            console: ConsoleDevice::Serial,
            rng: false,
            disks: Vec::new(),
            nets: Vec::new(),
        }
    }

    /// Checks what can be checked without KVM; `kvm_max_vcpus` is KVM's limit
    /// and `phys_bits` the host's guest-physical address width.
    pub fn validate(&self, kvm_max_vcpus: u32, phys_bits: u8) -> Result<MemoryLayout, ConfigError> {
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        let max = MAX_VCPUS.min(kvm_max_vcpus);
        if self.cpus > max {
            return Err(ConfigError::TooManyCpus {
                cpus: self.cpus,
                max,
            });
        }
        if let Some(t) = self.topology {
            if t.sockets == 0 || t.cores == 0 || t.threads == 0 {
                return Err(ConfigError::TopologyZero);
            }
            let product = u64::from(t.sockets) * u64::from(t.cores) * u64::from(t.threads);
            if product != u64::from(self.cpus) {
                return Err(ConfigError::TopologyMismatch {
                    sockets: t.sockets,
                    cores: t.cores,
                    threads: t.threads,
                    product,
                    cpus: self.cpus,
                });
            }
        }
        Ok(MemoryLayout::new(self.memory, phys_bits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_limit() {
        let mut c = VmConfig::new("/k");
        assert!(c.validate(1024, 40).is_ok());
        c.cpus = 0;
        assert!(matches!(c.validate(1024, 40), Err(ConfigError::NoCpus)));
        c.cpus = 300;
        assert_eq!(
            c.validate(1024, 40).expect_err("too many").to_string(),
            "300 vCPUs requested; at most 254 are supported"
        );
        c.cpus = 20;
        assert!(c.validate(16, 40).is_err(), "KVM's own limit applies");
        c.cpus = 4;
        c.topology = Some(Topology {
            sockets: 2,
            cores: 2,
            threads: 1,
        });
        assert!(c.validate(16, 40).is_ok());
        c.topology = Some(Topology {
            sockets: 2,
            cores: 2,
            threads: 2,
        });
        assert!(c
            .validate(16, 40)
            .expect_err("mismatch")
            .to_string()
            .contains("makes 8 vCPUs"));
        c.topology = Some(Topology {
            sockets: 0,
            cores: 2,
            threads: 2,
        });
        assert!(matches!(c.validate(16, 40), Err(ConfigError::TopologyZero)));
        c.topology = None;
        c.cpus = 1;
        c.memory = 1 << 20;
        assert!(c
            .validate(16, 40)
            .expect_err("small")
            .to_string()
            .contains("too small"));
    }
}
