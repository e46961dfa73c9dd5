//! PCI: the device trait, configuration space, MSI-X, the root complex and
//! BAR placement.
//!
//! # Model
//! - A PCI function implements [`PciDevice`], a trait separate from
//!   [`BusDevice`](crate::BusDevice): configuration space accesses, the BARs
//!   it needs, accesses to those BARs, and the ioeventfd doorbells it wants.
//!   [`ConfigSpace`] implements the type 0 header (IDs, command/status, BAR
//!   registers with the size-probing protocol, capability list, interrupt
//!   line/pin) for every device; [`Msix`] the MSI-X capability, table and PBA.
//! - A [`PciRegistry`] holds the functions by [`PciAddress`]
//!   (bus, device, function). Functions can be added and removed at any time
//!   (hotplug); configuration accesses to absent functions read all-ones.
//! - The guest reaches the registry through [`PciConfigIo`] (ports
//!   0xcf8/0xcfc, "configuration mechanism #1") and [`PciEcam`] (the MMIO
//!   area the MCFG describes). Both are [`BusDevice`](crate::BusDevice)s.
//! - BARs are placed by the monitor with a [`PciAllocator`] and mapped on
//!   its buses with a [`PciBarWindow`]. Whenever the set of addresses a
//!   function *decodes* changes (the guest moves a BAR, or turns memory/I/O
//!   decoding on or off in the command register; a function is added or
//!   removed), the registry reports a [`BarMoved`] to its
//!   [`PciBarListener`], synchronously, before the guest's write completes.
//!
//! # Wiring (what the monitor does)
//! 1. `let registry = Arc::new(PciRegistry::new())`; add a [`HostBridge`] at
//!    00:00.0 and the devices at free slots ([`PciRegistry::free_slot`]).
//! 2. For every device, for every [`BarSpec`] of [`PciDevice::bars`]:
//!    `addr = allocator.allocate(&spec)?; device.place_bar(spec.index, addr)?`
//!    (the firmware's job: Linux keeps assignments that lie in the host
//!    bridge's windows). Devices come up with decoding off.
//! 3. `registry.set_listener(listener)`. On each [`BarMoved`]: remove the
//!    [`PciBarWindow`] at `old` from the MMIO (or port I/O) bus, insert one at
//!    `new`, unregister the device's previous ioeventfds and register those of
//!    [`PciDevice::ioevents`]. When an ioeventfd fires, call
//!    [`PciDevice::ioevent`] with its token.
//! 4. Port I/O bus: [`PciConfigIo`] at [`PCI_CONFIG_IO_BASE`] (0xcf8), length
//!    [`PCI_CONFIG_IO_LEN`] (8). Port 0xcf9 (the reset control register)
//!    lies inside that range: hand the reset device to
//!    [`PciConfigIo::with_passthrough`] instead of putting it on the bus.
//! 5. MMIO bus: [`PciEcam`] at `ecam_base + (bus_start << 20)`, length
//!    `(bus_end - bus_start + 1) << 20`, which is what the ACPI module's
//!    `PciHostBridge::ecam_window()` describes.

pub mod access;
pub mod allocator;
pub mod config;
pub mod host_bridge;
pub mod msix;
pub mod registry;

use std::fmt;

pub use access::{PciConfigIo, PciEcam, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
pub use allocator::{PciAllocator, PciAllocatorError, PciWindows, Window};
pub use config::{ConfigSpace, PciIds};
pub use host_bridge::HostBridge;
pub use msix::{MsiInterrupt, MsiMessage, Msix, MsixDelivery, MsixVectorUpdate};
pub use registry::{lock_device, PciBarListener, PciBarWindow, PciRegistry, SharedPciDevice};

/// Size of one function's configuration space (PCI Express extended space).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Number of BAR registers in a type 0 header.
pub const NUM_BARS: usize = 6;

/// The location of a function on the PCI hierarchy (segment 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// `bus:device.function`; `None` unless `device < 32` and `function < 8`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<PciAddress> {
        if device < 32 && function < 8 {
            Some(PciAddress {
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    /// The function addressed by an ECAM offset (bits 27:20 bus, 19:15
    /// device, 14:12 function), relative to the area of bus 0.
    pub const fn from_ecam_offset(offset: u64) -> PciAddress {
        PciAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        }
    }

    /// Bus number.
    pub const fn bus(&self) -> u8 {
        self.bus
    }

    /// Device number (0..32).
    pub const fn device(&self) -> u8 {
        self.device
    }

    /// Function number (0..8).
    pub const fn function(&self) -> u8 {
        self.function
    }

    /// The ECAM offset of this function's configuration space, relative to
    /// the area of bus 0.
    pub const fn ecam_offset(&self) -> u64 {
        ((self.bus as u64) << 20) | ((self.device as u64) << 15) | ((self.function as u64) << 12)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Port I/O space.
    Io,
    /// Memory below 4 GiB (one BAR register).
    Mmio32,
    /// Memory anywhere in the 64-bit space (two BAR registers: `index` and
    /// `index + 1`).
    Mmio64,
}

impl BarKind {
    /// Whether the BAR is in memory space (as opposed to I/O space).
    pub const fn is_memory(self) -> bool {
        !matches!(self, BarKind::Io)
    }
}

/// A BAR a device needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarSpec {
    /// BAR register index, 0..6 (a 64-bit BAR also takes `index + 1`).
    pub index: u8,
    /// Size in bytes: a power of two, at least 16 for memory and 4 for I/O,
    /// at most 256 for I/O and 2 GiB for 32-bit memory.
    pub size: u64,
    /// Address space and width.
    pub kind: BarKind,
    /// Whether reads have no side effects (memory BARs only).
    pub prefetchable: bool,
}

impl BarSpec {
    /// Checks the constraints documented on the fields.
    pub fn validate(&self) -> Result<(), PciError> {
        let bad = |why| {
            Err(PciError::InvalidBar {
                index: self.index,
                why,
            })
        };
        let last = match self.kind {
            BarKind::Mmio64 => NUM_BARS - 2,
            _ => NUM_BARS - 1,
        };
        if usize::from(self.index) > last {
            return bad("index out of range");
        }
        if !self.size.is_power_of_two() {
            return bad("size is not a power of two");
        }
        match self.kind {
            BarKind::Io if !(4..=256).contains(&self.size) => bad("I/O size not in 4..=256"),
            BarKind::Io if self.prefetchable => bad("I/O BARs cannot be prefetchable"),
            BarKind::Mmio32 if !(16..=1 << 31).contains(&self.size) => {
                bad("32-bit memory size not in 16..=2 GiB")
            }
            BarKind::Mmio64 if self.size < 16 => bad("memory size below 16"),
            _ => Ok(()),
        }
    }
}

/// A BAR as the function currently decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedBar {
    /// BAR register index.
    pub index: u8,
    /// Address space and width.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
    /// Base address (guest-physical, or port).
    pub addr: u64,
}

/// A change in where a function decodes one of its BARs. `None` means "not
/// decoded": decoding is off in the command register, the BAR holds 0, or
/// the function was just added/removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMoved {
    /// The function.
    pub device: PciAddress,
    /// BAR register index.
    pub bar: u8,
    /// Address space and width.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
    /// Where the BAR was decoded before.
    pub old: Option<u64>,
    /// Where it is decoded now.
    pub new: Option<u64>,
}

/// A doorbell register a device wants backed by an ioeventfd: a write of
/// `len` bytes at `addr` (any data) means "call [`PciDevice::ioevent`] with
/// `token`". Writes the ioeventfd does not match still reach
/// [`PciDevice::bar_write`], which does the same work, only slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoEvent {
    /// Guest-physical address (or port, for an I/O BAR).
    pub addr: u64,
    /// Access width in bytes.
    pub len: u8,
    /// Whether `addr` is in memory space (else port I/O).
    pub memory: bool,
    /// What to pass to [`PciDevice::ioevent`].
    pub token: u32,
}

/// Errors from PCI device setup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR specification is invalid.
    #[error("invalid BAR {index}: {why}")]
    InvalidBar { index: u8, why: &'static str },
    /// The BAR does not exist on this device.
    #[error("the device has no BAR {0}")]
    NoSuchBar(u8),
    /// The BAR register (or its upper half) is already in use.
    #[error("BAR {0} is already in use")]
    BarInUse(u8),
    /// An address is not aligned to the BAR's size or does not fit its kind.
    #[error("address {addr:#x} is not valid for BAR {index}")]
    BadBarAddress { index: u8, addr: u64 },
    /// The capability does not fit in the standard configuration space.
    #[error("no room for a {len}-byte capability in configuration space")]
    CapabilitySpace { len: usize },
    /// A function already sits at this address.
    #[error("{0} is already in use")]
    AddressInUse(PciAddress),
    /// MSI-X parameters are invalid.
    #[error("invalid MSI-X setup: {0}")]
    InvalidMsix(&'static str),
    /// The device's own parameters do not fit the transport.
    #[error("invalid device: {0}")]
    InvalidDevice(&'static str),
}

/// A PCI function as the root complex sees it.
///
/// Configuration accesses reach the device already checked by the registry:
/// `data.len()` is 1, 2 or 4 and the access stays inside one aligned dword
/// of the 4 KiB space. BAR accesses come from a [`PciBarWindow`] with offsets
/// relative to the BAR's base; they may have any width and must be bounds
/// checked by the device. Nothing here may panic on guest input.
pub trait PciDevice: Send {
    /// Reads configuration space (may have side effects, e.g. through the
    /// virtio PCI configuration access capability).
    fn read_config(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space.
    fn write_config(&mut self, offset: u16, data: &[u8]);
    /// The BARs the device needs.
    fn bars(&self) -> Vec<BarSpec>;
    /// Places BAR `index` at `addr` (what firmware would do). The device
    /// derives every guest-physical address it reports (such as
    /// [`PciDevice::ioevents`]) from its BARs, so this is the hook telling
    /// it where they are. It does not turn decoding on.
    fn place_bar(&mut self, index: u8, addr: u64) -> Result<(), PciError>;
    /// The BARs the device currently decodes.
    fn decoded_bars(&self) -> Vec<DecodedBar>;
    /// Reads `data.len()` bytes at `offset` in BAR `index`.
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` in BAR `index`.
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]);
    /// Doorbells to back with ioeventfds, at the current BAR addresses
    /// (empty while the BARs are not decoded). Ask again after every
    /// [`BarMoved`] of this device.
    fn ioevents(&self) -> Vec<IoEvent> {
        Vec::new()
    }
    /// The ioeventfd of [`IoEvent`] `token` fired.
    fn ioevent(&mut self, token: u32) {
        let _ = token;
    }
    /// The guest memory the function reaches by DMA. The monitor calls this
    /// at every boot (guest memory is rebuilt on reboot), before the guest
    /// runs.
    fn set_dma_memory(&mut self, mem: crate::GuestMemoryMmap) {
        let _ = mem;
    }
    /// Where to register host descriptors to watch; see
    /// [`HostEvents`](crate::HostEvents). Called once, when the function is
    /// wired to an event loop.
    fn set_host_events(&mut self, events: std::sync::Arc<dyn crate::HostEvents>) {
        let _ = events;
    }
    /// A descriptor registered with `token` became readable.
    fn host_event(&mut self, token: u32) {
        let _ = token;
    }
    /// Whether [`PciDevice::ioevent`] with `token` left work for later:
    /// the caller calls it again after serving other events.
    fn ioevent_pending(&self, token: u32) -> bool {
        let _ = token;
        false
    }
    /// Returns the function to its power-on state (machine reset): decoding
    /// off, BARs back at their [`PciDevice::place_bar`] addresses.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_encodings() {
        let a = PciAddress::new(1, 0x1f, 7).expect("valid");
        assert_eq!(a.ecam_offset(), (1 << 20) | (0x1f << 15) | (7 << 12));
        assert_eq!(PciAddress::from_ecam_offset(a.ecam_offset() | 0xabc), a);
        assert_eq!(a.to_string(), "01:1f.7");
        assert!(PciAddress::new(0, 32, 0).is_none());
        assert!(PciAddress::new(0, 0, 8).is_none());
    }

    #[test]
    fn bar_spec_validation() {
        let spec = |index, size, kind| BarSpec {
            index,
            size,
            kind,
            prefetchable: false,
        };
        assert!(spec(0, 0x4000, BarKind::Mmio64).validate().is_ok());
        assert!(spec(4, 0x4000, BarKind::Mmio64).validate().is_ok());
        assert!(spec(5, 0x4000, BarKind::Mmio64).validate().is_err());
        assert!(spec(5, 0x4000, BarKind::Mmio32).validate().is_ok());
        assert!(spec(6, 0x4000, BarKind::Mmio32).validate().is_err());
        assert!(spec(0, 0x3000, BarKind::Mmio32).validate().is_err());
        assert!(spec(0, 8, BarKind::Mmio32).validate().is_err());
        assert!(spec(0, 1 << 32, BarKind::Mmio32).validate().is_err());
        assert!(spec(0, 1 << 32, BarKind::Mmio64).validate().is_ok());
        assert!(spec(0, 512, BarKind::Io).validate().is_err());
        assert!(spec(0, 32, BarKind::Io).validate().is_ok());
        let mut io = spec(0, 32, BarKind::Io);
        io.prefetchable = true;
        assert!(io.validate().is_err());
    }
}
