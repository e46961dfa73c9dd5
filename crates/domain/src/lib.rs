//! libvirt-compatible domain XML for Vireo: parse, validate, fill defaults
//! and write back normalised XML for the subset of libvirt's domain format
//! that Vireo runs. Pure: no I/O.
//!
//! # API
//!
//! - [`Domain::from_xml`] reads a definition (libvirt's inactive domain XML),
//!   checks it, fills libvirt's defaults and generates what libvirt
//!   generates (a version 4 UUID, `52:54:00:xx:xx:xx` MAC addresses).
//!   [`Domain::from_xml_with`] takes the generator ([`IdGenerator`]), so a
//!   caller can make them deterministic or unique across a host.
//! - [`Domain::to_xml`] writes the normalised form: libvirt's element order,
//!   two-space indentation, single-quoted attributes, memory in KiB, every
//!   default spelled out. For every accepted input `d`,
//!   `Domain::from_xml(&d.to_xml()) == Ok(d)`, so `to_xml` is idempotent.
//! - The model ([`Domain`] and the types it holds) has public fields; the
//!   helpers [`Domain::cpu_model`], [`Domain::console_device`],
//!   [`Domain::console_sink`], [`Memory::bytes`], [`Disk::direct`] give what
//!   the monitor's command line needs.
//! - [`validate_name`] checks a domain name on its own.
//!
//! # Never dropped silently
//!
//! Everything in the input is either understood or refused: an element or
//! attribute Vireo cannot honour is a [`DomainError`] naming its path and
//! line (`line 12: /domain/devices/graphics: element not supported by Vireo
//! (graphics): ...`), as are malformed XML, duplicate elements, bad values,
//! units and overflows. The only thing ignored is the `id` attribute of
//! `<domain>` (a running domain's number; libvirt ignores it in definitions
//! too), and comments. Namespaced elements are accepted only inside
//! `<metadata>`.
//!
//! Untrusted input stays cheap: documents over 1 MiB, nested over 64 deep,
//! with more than 16384 elements, 256 attributes on one element or 256
//! namespace declarations are refused; DOCTYPEs (so custom entities) and
//! processing instructions are refused; time and memory are linear in the
//! input.
//!
//! # Supported subset
//!
//! | element | Vireo |
//! |---|---|
//! | `<domain type='kvm'>` | only `kvm` |
//! | `name`, `uuid`, `title`, `description` | name rules: [`validate_name`]; uuid in libvirt's forms, generated if absent |
//! | `metadata` | children kept verbatim (namespaces included) |
//! | `memory`, `currentMemory` | libvirt's units; whole 4 KiB pages, 8 MiB to 16 TiB; currentMemory = memory (no balloon) |
//! | `vcpu` | 1 to 254, `placement='static'`; `current` must equal the count (no CPU hotplug) |
//! | `cpu` | `host-passthrough`/`host-model` = Vireo `host`; `custom` with model `x86-64-v2`; `<topology>` with dies = 1; `check`, `migratable`, `match`, `fallback` kept |
//! | `os` | `<type arch='x86_64' machine='...'>hvm</type>` (machine default `pc`, no effect), `<kernel>`, `<initrd>`, `<cmdline>`, `<boot dev>` (kept, no effect); no `<kernel>` = the built-in test guest ([`Boot::TestGuest`]) |
//! | `features` | `acpi`, `apic`, `pae`, `vmport state='off'` |
//! | `clock` | `offset` utc or localtime; timers rtc, pit, kvmclock (present), hpet (present='no') |
//! | `on_poweroff`, `on_reboot`, `on_crash` | destroy, restart, preserve (defaults destroy, restart, destroy) |
//! | `pm` | suspend-to-mem/disk `enabled='no'` only |
//! | `devices/emulator` | kept |
//! | `devices/disk` | `type` file or block, `device='disk'`, bus virtio, raw or qcow2, `cache` none (O_DIRECT, raw only)/writeback/default, `io`, `discard='unmap'`, `queues`, `readonly`, `serial` |
//! | `devices/interface` | `type` ethernet or bridge, model virtio, `mac`, `target dev` (TAP), `driver queues` |
//! | `devices/serial`, `devices/console` | COM1 (isa-serial port 0) and one virtio console sharing one sink: pty, file, unix (`mode='bind'`) or null |
//! | `devices/rng` | virtio, backend random (/dev/urandom, /dev/random) or builtin |
//! | `devices/controller` | kept verbatim, no effect (types pci, usb, virtio-serial, sata, ide, scsi, fdc, ccid, isa) |
//! | `devices/input` | PS/2 mouse and keyboard, kept verbatim |
//! | `devices/memballoon` | `model='none'` only, kept verbatim |
//!
//! Everything else (graphics, video, sound, hostdev, filesystem, channel,
//! cdroms, `<address>`, NUMA, tuning, ...) is refused by name.

mod error;
mod model;
mod parse;
mod values;
mod write;
mod xml;

pub use error::DomainError;
pub use model::{
    Boot, BootDevice, CharSource, Clock, ClockOffset, Console, ConsoleTarget, Cpu, CpuCheck,
    CpuFallback, CpuMatch, CpuMode, CpuModel, CustomCpuModel, Devices, Disk, DiskCache,
    DiskDiscard, DiskFormat, DiskIo, DiskSource, Domain, Features, Interface, InterfaceKind,
    Lifecycle, LifecycleAction, Memory, Os, Pm, Rng, RngBackend, RtcTrack, Serial, TickPolicy,
    Timer, TimerName, Topology,
};
pub use uuid::Uuid;
pub use values::{parse_uuid, unit_scale, validate_name, MacAddr, MacError, NameError, NAME_MAX};
pub use xml::raw::{RawElement, RawNode};
pub use xml::tree::MAX_DOCUMENT_BYTES;

/// Most vCPUs a domain may have (the monitor's limit: xAPIC IDs are 8 bits
/// and 0xff is broadcast).
pub const MAX_VCPUS: u32 = 254;

/// Least guest memory, in KiB (8 MiB, the monitor's minimum).
pub const MIN_MEMORY_KIB: u64 = 8 * 1024;

/// Most guest memory, in KiB (16 TiB). The host's physical address width
/// may allow less; the monitor checks that when it starts.
pub const MAX_MEMORY_KIB: u64 = 16 << 30;

/// Most PCI devices (disks, NICs, rng, virtio console): the free slots of
/// Vireo's PCI bus 0 (slot 0 holds the host bridge).
pub const MAX_PCI_DEVICES: usize = 31;

/// Makes what libvirt generates for a definition that leaves it out.
pub trait IdGenerator {
    /// A UUID for a domain without `<uuid>`.
    fn uuid(&mut self) -> Uuid;
    /// A MAC address for a NIC without `<mac>` (the parser retries if it
    /// returns one in use, multicast or zero).
    fn mac(&mut self) -> MacAddr;
}

/// Random version 4 UUIDs and random `52:54:00:xx:xx:xx` MAC addresses.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdGenerator for RandomIds {
    fn uuid(&mut self) -> Uuid {
        Uuid::new_v4()
    }

    fn mac(&mut self) -> MacAddr {
        MacAddr::random()
    }
}

impl Domain {
    /// Reads, checks and completes a domain definition; UUID and MAC
    /// addresses left out are generated at random.
    pub fn from_xml(xml: &str) -> Result<Domain, DomainError> {
        Domain::from_xml_with(xml, &mut RandomIds)
    }

    /// [`Domain::from_xml`] with the generator of UUIDs and MAC addresses.
    pub fn from_xml_with(xml: &str, ids: &mut dyn IdGenerator) -> Result<Domain, DomainError> {
        parse::domain(xml, ids)
    }

    /// The normalised XML (ends with a newline).
    pub fn to_xml(&self) -> String {
        write::domain(self)
    }

    /// Vireo's CPU model (`--cpu-model`); `None` means the monitor's
    /// default, `auto`.
    pub fn cpu_model(&self) -> Option<CpuModel> {
        match self.cpu.as_ref()?.mode {
            CpuMode::Default => None,
            CpuMode::HostPassthrough | CpuMode::HostModel => Some(CpuModel::Host),
            CpuMode::Custom {
                model: CustomCpuModel::X86_64V2,
                ..
            } => Some(CpuModel::X86_64V2),
        }
    }

    /// The vCPU topology (`--topology`); `None`: one socket.
    pub fn topology(&self) -> Option<Topology> {
        self.cpu.as_ref()?.topology
    }

    /// Which device takes console input (`--console`).
    pub fn console_device(&self) -> ConsoleTarget {
        if self
            .devices
            .consoles
            .iter()
            .any(|c| c.target == ConsoleTarget::Virtio)
        {
            ConsoleTarget::Virtio
        } else {
            ConsoleTarget::Serial
        }
    }

    /// Where the console goes (the sink COM1 and the virtio console share);
    /// `None`: nowhere (`--serial none`).
    pub fn console_sink(&self) -> Option<&CharSource> {
        self.devices
            .serial
            .as_ref()
            .map(|s| &s.source)
            .or_else(|| self.devices.consoles.first().map(|c| &c.source))
    }

    /// Whether the domain runs Vireo's built-in test guest.
    pub fn is_test_guest(&self) -> bool {
        self.os.boot == Boot::TestGuest
    }
}

#[cfg(test)]
mod tests;
