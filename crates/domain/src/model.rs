//! The typed model of a domain definition: what Vireo can run, with
//! libvirt's defaults filled in. Every field maps to one piece of libvirt
//! domain XML (named in its doc comment).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::MacAddr;
use crate::xml::raw::RawElement;

/// An enum whose variants are spelled as in libvirt XML.
macro_rules! xml_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value, in the order messages list them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as written in XML.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl $crate::model::XmlEnum for $name {
            const ALL: &'static [$name] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
/// What the parser needs of an [`xml_enum!`] type.
pub(crate) trait XmlEnum: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

/// A domain definition (`<domain type='kvm'>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// `<name>`: see [`crate::validate_name`].
    pub name: String,
    /// `<uuid>`; generated (version 4) when absent.
    pub uuid: Uuid,
    /// `<title>`: one line.
    pub title: Option<String>,
    /// `<description>`: any text.
    pub description: Option<String>,
    /// The children of `<metadata>`, kept verbatim for the applications that
    /// wrote them.
    pub metadata: Vec<RawElement>,
    /// `<memory>` and `<currentMemory>`.
    pub memory: Memory,
    /// `<vcpu placement='static'>N</vcpu>`: 1 to [`crate::MAX_VCPUS`].
    pub vcpus: u32,
    /// `<os>`.
    pub os: Os,
    /// `<features>`.
    pub features: Features,
    /// `<cpu>`; `None`: Vireo's default CPU model (`auto`) and topology (one
    /// socket of single-threaded cores).
    pub cpu: Option<Cpu>,
    /// `<clock>`.
    pub clock: Clock,
    /// `<on_poweroff>`, `<on_reboot>`, `<on_crash>`.
    pub lifecycle: Lifecycle,
    /// `<pm>`: only ever "suspend disabled", which is what Vireo does.
    pub pm: Option<Pm>,
    /// `<devices>`.
    pub devices: Devices,
}

/// Guest memory, in KiB like libvirt (`<memory unit='KiB'>`).
///
/// Both are whole 4 KiB pages, from 8 MiB to [`crate::MAX_MEMORY_KIB`].
/// Vireo has no memory balloon, so the guest always has all of `kib`:
/// `current_kib` (`<currentMemory>`) equals `kib`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub kib: u64,
    pub current_kib: u64,
}

impl Memory {
    /// Guest RAM in bytes (what the monitor's `--memory` takes).
    pub fn bytes(&self) -> u64 {
        self.kib.saturating_mul(1024)
    }
}

/// `<os>`: how the guest starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `<type machine='...'>`: kept as given (default `pc`). It has no
    /// effect: Vireo has one machine type. The architecture is always
    /// `x86_64` and the type `hvm`.
    pub machine: String,
    /// What runs: `<kernel>` (and `<initrd>`), or the built-in test guest.
    pub boot: Boot,
    /// `<cmdline>`: the kernel command line (for the test guest:
    /// `scenario=NAME key=value ...`).
    pub cmdline: Option<String>,
    /// `<boot dev='...'/>` in order: kept for libvirt tools, no effect yet
    /// (Vireo has no firmware to choose a boot device).
    pub boot_devices: Vec<BootDevice>,
}

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boot {
    /// No `<kernel>`: Vireo has no firmware yet, so a domain without a
    /// kernel runs Vireo's built-in test guest (`vireo-vmm` without
    /// `--kernel`).
    TestGuest,
    /// Direct kernel boot: `<kernel>` (a bzImage, a vmlinux or any PVH ELF)
    /// and an optional `<initrd>`; absolute host paths.
    Kernel {
        kernel: String,
        initrd: Option<String>,
    },
}

xml_enum! {
    /// `<boot dev='...'/>`.
    BootDevice { Hd = "hd", Cdrom = "cdrom", Network = "network", Fd = "fd" }
}

/// `<features>`: the flags libvirt writes for PC guests. Vireo's machine
/// always has ACPI and an APIC; the flags are kept for libvirt tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// `<acpi/>`.
    pub acpi: bool,
    /// `<apic/>`.
    pub apic: bool,
    /// `<pae/>`.
    pub pae: bool,
    /// `<vmport state='off'/>` (Vireo has no VMware port, so only "off").
    pub vmport_off: bool,
}

/// `<cpu>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// `mode` with its `<model>`.
    pub mode: CpuMode,
    /// `check`: how libvirt checks the CPU; no effect in Vireo.
    pub check: Option<CpuCheck>,
    /// `migratable='on|off'`: kept, no effect yet.
    pub migratable: Option<bool>,
    /// `<topology>`; `None`: one socket of single-threaded cores.
    pub topology: Option<Topology>,
}

/// The CPU `mode` and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuMode {
    /// No mode and no model (a `<cpu>` giving only a topology): Vireo's
    /// default model, `auto`.
    Default,
    /// `host-passthrough`: Vireo's `host` model.
    HostPassthrough,
    /// `host-model`: Vireo's `host` model too (what KVM supports on this
    /// host, which is what libvirt's host-model approximates).
    HostModel,
    /// `custom` with `<model>`.
    Custom {
        model: CustomCpuModel,
        /// `match`: no effect in Vireo (the model is exactly what it is).
        match_: Option<CpuMatch>,
        /// `<model fallback='...'>`.
        fallback: Option<CpuFallback>,
    },
}

xml_enum! {
    /// `<cpu check='...'>`.
    CpuCheck { None = "none", Partial = "partial", Full = "full" }
}

xml_enum! {
    /// `<cpu match='...'>`.
    CpuMatch { Exact = "exact", Minimum = "minimum", Strict = "strict" }
}

xml_enum! {
    /// `<model fallback='...'>`.
    CpuFallback { Allow = "allow", Forbid = "forbid" }
}

xml_enum! {
    /// The named CPU models Vireo has.
    CustomCpuModel {
        /// The x86-64-v2 psABI level: a baseline for moving guests between hosts.
        X86_64V2 = "x86-64-v2",
    }
}

xml_enum! {
    /// Vireo's CPU models, as the monitor's `--cpu-model` spells them.
    CpuModel { Host = "host", X86_64V2 = "x86-64-v2" }
}

/// `<topology sockets='S' dies='1' cores='C' threads='T'/>`; S x C x T is
/// the vCPU count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

/// `<clock>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// `offset`: what the guest's RTC shows; default `utc`.
    pub offset: ClockOffset,
    /// `<timer>` elements, kept for libvirt tools (each checked against
    /// what Vireo's machine has).
    pub timers: Vec<Timer>,
}

xml_enum! {
    /// `<clock offset='...'>`.
    ClockOffset { Utc = "utc", Localtime = "localtime" }
}

/// `<timer name='...' present='...' tickpolicy='...' track='...'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub name: TimerName,
    pub present: Option<bool>,
    pub tickpolicy: Option<TickPolicy>,
    /// Only for the RTC.
    pub track: Option<RtcTrack>,
}

xml_enum! {
    /// The timers Vireo knows: an RTC, a PIT and the KVM clock are always
    /// there; there is no HPET.
    TimerName { Rtc = "rtc", Pit = "pit", Hpet = "hpet", Kvmclock = "kvmclock" }
}

xml_enum! {
    /// `tickpolicy`.
    TickPolicy { Delay = "delay", Catchup = "catchup", Merge = "merge", Discard = "discard" }
}

xml_enum! {
    /// `track` of the RTC.
    RtcTrack { Boot = "boot", Guest = "guest", Wall = "wall", Realtime = "realtime" }
}

/// What happens when the guest powers off, reboots or crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Default `destroy`.
    pub on_poweroff: LifecycleAction,
    /// Default `restart` (`destroy` = the monitor's `--no-reboot`).
    pub on_reboot: LifecycleAction,
    /// Default `destroy`.
    pub on_crash: LifecycleAction,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            on_poweroff: LifecycleAction::Destroy,
            on_reboot: LifecycleAction::Restart,
            on_crash: LifecycleAction::Destroy,
        }
    }
}

xml_enum! {
    /// A lifecycle action. libvirt's rename-restart, coredump-destroy and
    /// coredump-restart are refused.
    LifecycleAction { Destroy = "destroy", Restart = "restart", Preserve = "preserve" }
}

/// `<pm>` with suspend explicitly disabled (Vireo has no S3/S4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pm {
    /// `<suspend-to-mem enabled='no'/>`.
    pub suspend_to_mem_disabled: bool,
    /// `<suspend-to-disk enabled='no'/>`.
    pub suspend_to_disk_disabled: bool,
}

/// `<devices>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    /// `<emulator>`: kept for libvirt tools; the daemon chooses the monitor.
    pub emulator: Option<String>,
    /// `<disk>`s: virtio-blk, in order.
    pub disks: Vec<Disk>,
    /// `<controller>`s, kept verbatim. No effect: Vireo's devices sit on its
    /// one PCI root bus, and every device that would need another
    /// controller (SCSI, SATA, USB, ...) is refused.
    pub controllers: Vec<RawElement>,
    /// `<interface>`s: virtio-net, in order.
    pub interfaces: Vec<Interface>,
    /// `<serial>`: COM1.
    pub serial: Option<Serial>,
    /// `<console>`s: at most one on COM1 (first) and one virtio console.
    pub consoles: Vec<Console>,
    /// `<input type='mouse|keyboard' bus='ps2'/>`, kept verbatim: the PS/2
    /// controller (i8042) is part of Vireo's machine.
    pub inputs: Vec<RawElement>,
    /// `<memballoon model='none'/>`, kept verbatim (Vireo has no balloon).
    pub memballoon: Option<RawElement>,
    /// `<rng model='virtio'>`.
    pub rng: Option<Rng>,
}

/// `<disk type='file|block' device='disk'>` on `bus='virtio'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// `<source file='...'/>` or `<source dev='...'/>`.
    pub source: DiskSource,
    /// `<driver type='raw|qcow2'>`; default raw (libvirt never probes).
    pub format: DiskFormat,
    /// `<driver cache='...'>`: `none` bypasses the host page cache.
    pub cache: Option<DiskCache>,
    /// `<driver io='...'>`: kept; Vireo always uses io_uring where it can
    /// and a thread pool otherwise, with the same guest-visible behaviour.
    pub io: Option<DiskIo>,
    /// `<driver discard='unmap'>`: guest discards free host space (what
    /// Vireo's virtio-blk does).
    pub discard: Option<DiskDiscard>,
    /// `<driver queues='N'>`: request queues, 1 to 16.
    pub queues: Option<u16>,
    /// `<target dev='vdX'/>`.
    pub target: String,
    /// `<readonly/>`.
    pub read_only: bool,
    /// `<serial>`: the GET_ID serial.
    pub serial: Option<String>,
}

impl Disk {
    /// Whether the monitor opens the image with O_DIRECT (`cache='none'`).
    pub fn direct(&self) -> bool {
        self.cache == Some(DiskCache::None)
    }

    /// The image or block device path.
    pub fn path(&self) -> &str {
        match &self.source {
            DiskSource::File(p) | DiskSource::Block(p) => p,
        }
    }
}

/// Where a disk's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskSource {
    /// `type='file'`: an image file.
    File(String),
    /// `type='block'`: a host block device.
    Block(String),
}

xml_enum! {
    /// Image formats.
    DiskFormat { Raw = "raw", Qcow2 = "qcow2" }
}

xml_enum! {
    /// Cache modes Vireo honours: `none` (O_DIRECT) or the host page cache
    /// (`writeback`, `default`). writethrough, directsync and unsafe change
    /// flush semantics Vireo does not implement and are refused.
    DiskCache { None = "none", Writeback = "writeback", Default = "default" }
}

xml_enum! {
    /// `<driver io='...'>`.
    DiskIo { Native = "native", Threads = "threads", IoUring = "io_uring", Default = "default" }
}

xml_enum! {
    /// `<driver discard='...'>`; `ignore` is refused (Vireo always passes
    /// discards to the host).
    DiskDiscard { Unmap = "unmap" }
}

/// `<interface type='ethernet|bridge'>` with `<model type='virtio'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `type` and `<source>`.
    pub kind: InterfaceKind,
    /// `<mac address='...'/>`; generated (52:54:00:xx:xx:xx) when absent.
    pub mac: MacAddr,
    /// `<target dev='...'/>`: the TAP device's name; `None`: the daemon
    /// names it.
    pub target: Option<String>,
    /// `<driver queues='N'/>`: queue pairs, 1 to 16 (more than one needs a
    /// multi-queue TAP).
    pub queues: Option<u16>,
}

/// How a NIC reaches the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterfaceKind {
    /// `type='ethernet'`: a TAP the host configures itself.
    Ethernet,
    /// `type='bridge'` with `<source bridge='...'/>`: a TAP added to this
    /// host bridge.
    Bridge { bridge: String },
}

/// Where a character device's bytes go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CharSource {
    /// `type='pty'`: a pseudo-terminal the daemon provides.
    Pty,
    /// `type='file'` with `<source path='...' append='on|off'/>`.
    File { path: String, append: Option<bool> },
    /// `type='unix'` with `<source mode='bind' path='...'/>`: the monitor
    /// listens on this socket.
    Unix { path: String },
    /// `type='null'`: output discarded.
    Null,
}

impl CharSource {
    /// The `type` attribute.
    pub fn type_str(&self) -> &'static str {
        match self {
            CharSource::Pty => "pty",
            CharSource::File { .. } => "file",
            CharSource::Unix { .. } => "unix",
            CharSource::Null => "null",
        }
    }
}

/// `<serial>`: COM1, `<target type='isa-serial' port='0'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serial {
    pub source: CharSource,
}

/// `<console>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Console {
    /// `<target type='serial|virtio' port='0'/>`.
    pub target: ConsoleTarget,
    /// The same sink as the serial port: Vireo has one console sink that
    /// COM1 and the virtio console share.
    pub source: CharSource,
}

xml_enum! {
    /// A console's device: COM1 or a virtio console (`hvc0`), as the
    /// monitor's `--console` spells them.
    ConsoleTarget { Serial = "serial", Virtio = "virtio" }
}

/// `<rng model='virtio'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    pub backend: RngBackend,
}

/// `<backend model='...'>`. Vireo's virtio-rng always draws from the
/// host's getrandom, which is what both mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RngBackend {
    /// `<backend model='random'>/dev/urandom</backend>` (or /dev/random).
    Random(String),
    /// `<backend model='builtin'/>`.
    Builtin,
}
