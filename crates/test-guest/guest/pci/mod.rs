//! PCI as a bare-metal OS does it: configuration access (ECAM when the MCFG or the host
//! bridge's `_CBA` names one, else the legacy 0xcf8/0xcfc ports), enumeration of the host
//! bridge's first bus and of every bridge's secondary bus (numbering bridges firmware left
//! unnumbered), BAR sizing and assignment from the host bridge's windows (resources.rs),
//! capability lists, and MSI-X (msix.rs).
//!
//! Every configuration access from CPL3 is a VM exit (ECAM: MMIO; legacy: two port
//! accesses), so the module reads each register once and keeps what it learned in
//! [`Function`].
//!
//! Arguments any scenario using [`Pci::probe`] understands:
//! - `pci=auto|ecam|legacy`: configuration mechanism (auto: ECAM if found, else legacy);
//! - `ecam=<base>[:<last bus>]`: the ECAM base (of bus 0) when ACPI has none;
//! - `mmio32=<base>:<size>`, `mmio64=<base>:<size>`, `io=<base>:<size>`: windows for BARs
//!   nobody assigned (default: the host bridge's `_CRS`);
//! - `bar64=high|low`: where unassigned 64-bit BARs go (default high: the 64-bit window if
//!   there is one the kit can map, else the 32-bit one);
//! - `assign=0`: leave unassigned BARs alone; `assign=all`: (re)assign every BAR, even
//!   those firmware assigned (to exercise the allocator and 64-bit windows).

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

pub mod msix;
mod resources;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

#[allow(unused_imports)] // kit API: BarKind has no user outside the module yet
pub use resources::{Bar, BarKind, Origin, Window};

use crate::kit::{Ctx, Fail};
use crate::{acpi, aml, fail, io};

/// Configuration space registers (type 0 and 1 headers).
pub const VENDOR_ID: u16 = 0x00;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION: u16 = 0x08;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const SUBSYSTEM_VENDOR: u16 = 0x2c;
pub const CAP_PTR: u16 = 0x34;
pub const INTERRUPT_PIN: u16 = 0x3d;
/// Type 1 (bridge): primary, secondary, subordinate bus, secondary latency.
pub const BRIDGE_BUSES: u16 = 0x18;

pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;

/// Capability IDs.
pub const CAP_MSI: u8 = 0x05;
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;

const LEGACY_ADDR: u16 = 0xcf8;
const LEGACY_DATA: u16 = 0xcfc;
const LEGACY_ENABLE: u32 = 1 << 31;
/// Bridges nested deeper than this are not followed (a loop guard).
const MAX_DEPTH: u32 = 8;

/// Bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

impl Bdf {
    /// Parses `bb:dd.f` (hex).
    pub fn parse(text: &str) -> Option<Self> {
        let (bus, rest) = text.split_once(':')?;
        let (dev, func) = rest.split_once('.')?;
        let bdf = Self {
            bus: u8::from_str_radix(bus, 16).ok()?,
            dev: u8::from_str_radix(dev, 16).ok()?,
            func: u8::from_str_radix(func, 16).ok()?,
        };
        (bdf.dev < 32 && bdf.func < 8).then_some(bdf)
    }
}

/// How configuration space is reached.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Memory-mapped: bus `b`'s space at `base + (b << 20)`.
    Ecam {
        base: u64,
        bus_start: u8,
        bus_end: u8,
    },
    /// Ports 0xcf8 (address) / 0xcfc (data): the first 256 bytes only.
    Legacy,
}

impl Access {
    fn ecam_addr(base: u64, bdf: Bdf, off: u16) -> u64 {
        crate::paging::virt(
            base + (u64::from(bdf.bus) << 20)
                + (u64::from(bdf.dev) << 15)
                + (u64::from(bdf.func) << 12)
                + u64::from(off & 0xfff),
        )
    }

    fn reaches(&self, bdf: Bdf, off: u16) -> bool {
        match *self {
            Self::Ecam {
                bus_start, bus_end, ..
            } => (bus_start..=bus_end).contains(&bdf.bus) && off < 0x1000,
            Self::Legacy => off < 0x100,
        }
    }

    fn legacy_select(bdf: Bdf, off: u16) {
        io::outl(
            LEGACY_ADDR,
            LEGACY_ENABLE
                | (u32::from(bdf.bus) << 16)
                | (u32::from(bdf.dev) << 11)
                | (u32::from(bdf.func) << 8)
                | u32::from(off & 0xfc),
        );
    }

    /// Reads `width` bytes (1, 2 or 4, naturally aligned) at `off`; all ones where nothing
    /// answers.
    pub fn read(&self, bdf: Bdf, off: u16, width: u8) -> u32 {
        if !self.reaches(bdf, off) {
            return u32::MAX >> (32 - 8 * u32::from(width));
        }
        match *self {
            Self::Ecam { base, .. } => {
                let addr = Self::ecam_addr(base, bdf, off);
                // SAFETY: the ECAM area is device memory (not RAM) the kit maps (below 4 GiB
                // statically, above by `Pci::probe`); the access is naturally aligned.
                unsafe {
                    match width {
                        1 => u32::from(io::mmio_read8(addr)),
                        2 => u32::from(io::mmio_read16(addr & !1)),
                        _ => io::mmio_read32(addr & !3),
                    }
                }
            }
            Self::Legacy => {
                Self::legacy_select(bdf, off);
                let port = LEGACY_DATA + (off & 3);
                match width {
                    1 => u32::from(io::inb(port)),
                    2 => u32::from(io::inw(port & !1)),
                    _ => io::inl(LEGACY_DATA),
                }
            }
        }
    }

    /// Writes `width` bytes (1, 2 or 4, naturally aligned) at `off`.
    pub fn write(&self, bdf: Bdf, off: u16, width: u8, value: u32) {
        if !self.reaches(bdf, off) {
            return;
        }
        match *self {
            Self::Ecam { base, .. } => {
                let addr = Self::ecam_addr(base, bdf, off);
                // SAFETY: as for `read`.
                unsafe {
                    match width {
                        1 => io::mmio_write8(addr, value as u8),
                        2 => io::mmio_write16(addr & !1, value as u16),
                        _ => io::mmio_write32(addr & !3, value),
                    }
                }
            }
            Self::Legacy => {
                Self::legacy_select(bdf, off);
                let port = LEGACY_DATA + (off & 3);
                match width {
                    1 => io::outb(port, value as u8),
                    2 => io::outw(port & !1, value as u16),
                    _ => io::outl(LEGACY_DATA, value),
                }
            }
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Ecam {
                base,
                bus_start,
                bus_end,
            } => write!(
                f,
                "ECAM at {base:#x} buses {bus_start}-{bus_end} ({:#x}-{:#x})",
                base + (u64::from(bus_start) << 20),
                base + ((u64::from(bus_end) + 1) << 20) - 1
            ),
            Self::Legacy => write!(f, "legacy ports 0xcf8/0xcfc"),
        }
    }
}

/// A capability in the standard list.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    pub id: u8,
    pub offset: u8,
}

/// One PCI function, as enumerated (BARs sized and, if needed, assigned).
#[derive(Clone, Debug)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Base class, subclass, programming interface (24 bits).
    pub class: u32,
    pub revision: u8,
    pub header_type: u8,
    pub subsys_vendor: u16,
    pub subsys_id: u16,
    /// Interrupt pin (0 none, 1-4 INTA-INTD).
    pub irq_pin: u8,
    pub bars: Vec<Bar>,
    pub caps: Vec<Cap>,
    /// PCIe extended capabilities (id, offset); ECAM only.
    pub ext_caps: Vec<(u16, u16)>,
    /// What was wrong with the capability lists, if anything.
    pub cap_error: Option<String>,
    /// For bridges: (secondary, subordinate) bus.
    pub buses: Option<(u8, u8)>,
}

impl Function {
    pub fn is_bridge(&self) -> bool {
        self.header_type & 0x7f == 1
    }

    /// The first capability with `id`.
    pub fn cap(&self, id: u8) -> Option<u8> {
        self.caps.iter().find(|c| c.id == id).map(|c| c.offset)
    }

    /// The BAR with index `index`, if implemented.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

impl fmt::Display for Function {
    /// `00:01.0 1af4:1042 class 010000 bars [1 mem32 0xc0001000+0x1000*] caps 11@98 ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:06x}",
            self.bdf, self.vendor, self.device, self.class
        )?;
        if self.is_bridge() {
            if let Some((sec, sub)) = self.buses {
                write!(f, " bridge buses {sec:02x}-{sub:02x}")?;
            }
        }
        f.write_str(" bars")?;
        if self.bars.is_empty() {
            f.write_str(" none")?;
        }
        for bar in &self.bars {
            write!(f, " [{bar}]")?;
        }
        f.write_str(" caps")?;
        if self.caps.is_empty() {
            f.write_str(" none")?;
        }
        for cap in &self.caps {
            write!(f, " {:02x}@{:02x}", cap.id, cap.offset)?;
        }
        if !self.ext_caps.is_empty() {
            f.write_str(" ext")?;
            for (id, off) in &self.ext_caps {
                write!(f, " {id:04x}@{off:03x}")?;
            }
        }
        if self.irq_pin != 0 && self.irq_pin <= 4 {
            write!(f, " pin {}", char::from(b'A' + self.irq_pin - 1))?;
        }
        Ok(())
    }
}

/// The PCI hierarchy as found (and set up) by [`Pci::probe`].
#[derive(Debug)]
pub struct Pci {
    pub access: Access,
    /// Where the configuration mechanism came from (MCFG, `_CBA`, argument, probe).
    pub access_from: &'static str,
    pub windows: resources::Windows,
    /// Where the windows came from.
    pub windows_from: String,
    /// Every function, in bus-scan order.
    pub functions: Vec<Function>,
    /// Things worth printing: windows left unused, BARs left unassigned, ...
    pub notes: Vec<String>,
}

/// Parses `<base>:<size>` (numbers as `Ctx::arg_u64` reads them).
fn parse_window(key: &str, text: &str) -> Result<Window, Fail> {
    let number = |t: &str| match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    };
    let parsed = text
        .split_once(':')
        .and_then(|(b, s)| Some((number(b)?, number(s)?)));
    match parsed {
        Some((base, size)) if size > 0 && base.checked_add(size).is_some() => {
            Ok(Window { base, size })
        }
        _ => fail!("{key}={text}: expected <base>:<size>, e.g. 0xc0000000:0x20000000"),
    }
}

/// Whether the legacy configuration ports answer (the address register reads back).
fn legacy_ports_present() -> bool {
    let saved = io::inl(LEGACY_ADDR);
    io::outl(LEGACY_ADDR, LEGACY_ENABLE);
    let present = io::inl(LEGACY_ADDR) == LEGACY_ENABLE;
    io::outl(LEGACY_ADDR, saved);
    present
}

impl Pci {
    /// Finds the configuration mechanism and windows, enumerates, sizes BARs, assigns the
    /// unassigned ones, enables memory/I/O decoding and bus mastering where BARs are live.
    pub fn probe(ctx: &Ctx) -> Result<Self, Fail> {
        let mode = ctx.arg("pci").unwrap_or("auto");
        if !matches!(mode, "auto" | "ecam" | "legacy") {
            fail!("pci={mode}: expected auto, ecam or legacy");
        }
        // ACPI is optional: without tables, arguments (or the legacy ports) must do.
        let mut notes = Vec::new();
        let mcfg = acpi::mcfg(ctx).unwrap_or_else(|e| {
            notes.push(format!("no MCFG ({e})"));
            Vec::new()
        });
        let bridges = match acpi::dsdt(ctx) {
            Ok(Some(dsdt)) => aml::host_bridges(dsdt.body()),
            Ok(None) => Vec::new(),
            Err(e) => {
                notes.push(format!("no DSDT ({e})"));
                Vec::new()
            }
        };
        // Segment 0's host bridge (the one with _BBN 0 or the first).
        let bridge = bridges
            .iter()
            .find(|b| b.seg.unwrap_or(0) == 0 && b.bbn.unwrap_or(0) == 0)
            .or_else(|| bridges.first());
        let crs_buses = bridge.and_then(|b| {
            b.resources.iter().find_map(|r| match *r {
                aml::Resource::Bus { min, max } => Some((min.min(255) as u8, max.min(255) as u8)),
                _ => None,
            })
        });

        let (access, access_from) = match (mode, ctx.arg("ecam")) {
            ("legacy", _) => (Access::Legacy, "pci=legacy"),
            (_, Some(text)) => {
                let (base, last) = match text.split_once(':') {
                    Some((b, l)) => (b, Some(l)),
                    None => (text, None),
                };
                let base = parse_window("ecam", &format!("{base}:1"))?.base;
                let last = match last {
                    Some(l) => l
                        .parse::<u8>()
                        .map_err(|_| Fail::new(format!("ecam={text}: bad last bus")))?,
                    None => crs_buses.map_or(255, |b| b.1),
                };
                (
                    Access::Ecam {
                        base,
                        bus_start: 0,
                        bus_end: last,
                    },
                    "ecam= argument",
                )
            }
            _ => {
                if let Some(area) = mcfg.iter().find(|a| a.segment == 0) {
                    (
                        Access::Ecam {
                            base: area.base,
                            bus_start: area.bus_start,
                            bus_end: area.bus_end,
                        },
                        "ACPI MCFG",
                    )
                } else if let Some(cba) = bridge.and_then(|b| b.cba) {
                    let (start, end) = crs_buses.unwrap_or((0, 255));
                    (
                        Access::Ecam {
                            base: cba,
                            bus_start: start,
                            bus_end: end,
                        },
                        "the host bridge's _CBA (no MCFG)",
                    )
                } else if mode == "ecam" {
                    fail!("pci=ecam: no MCFG, no _CBA and no ecam= argument");
                } else if legacy_ports_present() {
                    (Access::Legacy, "legacy ports (no MCFG, no _CBA)")
                } else {
                    fail!(
                        "no PCI configuration access: no MCFG, no host bridge _CBA in the DSDT, \
                         no ecam= argument, and ports 0xcf8/0xcfc do not answer"
                    );
                }
            }
        };
        if let Access::Ecam {
            base,
            bus_start,
            bus_end,
        } = access
        {
            if bus_start > bus_end || !base.is_multiple_of(1 << 20) {
                fail!("{access}: not a 1 MiB aligned area with a valid bus range");
            }
            ctx.map_identity(
                base + (u64::from(bus_start) << 20),
                (u64::from(bus_end - bus_start) + 1) << 20,
            )?;
        }

        let (windows, windows_from) = resources::Windows::find(ctx, bridge)?;
        let mut pci = Self {
            access,
            access_from,
            windows,
            windows_from,
            functions: Vec::new(),
            notes,
        };
        let first_bus = match access {
            Access::Ecam { bus_start, .. } => bus_start,
            Access::Legacy => bridge.and_then(|b| b.bbn).unwrap_or(0) as u8,
        };
        let mut next_bus = first_bus + 1;
        pci.scan_bus(first_bus, &mut next_bus, 0);
        match ctx.arg("assign").unwrap_or("1") {
            "0" => {}
            "1" => resources::assign(ctx, &mut pci, first_bus)?,
            "all" => {
                for bar in pci.functions.iter_mut().flat_map(|f| &mut f.bars) {
                    bar.origin = Origin::Unassigned;
                }
                resources::assign(ctx, &mut pci, first_bus)?;
            }
            other => fail!("assign={other}: expected 0, 1 or all"),
        }
        resources::enable(ctx, &mut pci)?;
        Ok(pci)
    }

    pub fn read8(&self, bdf: Bdf, off: u16) -> u8 {
        self.access.read(bdf, off, 1) as u8
    }

    pub fn read16(&self, bdf: Bdf, off: u16) -> u16 {
        self.access.read(bdf, off, 2) as u16
    }

    pub fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        self.access.read(bdf, off, 4)
    }

    pub fn write8(&self, bdf: Bdf, off: u16, value: u8) {
        self.access.write(bdf, off, 1, value.into());
    }

    pub fn write16(&self, bdf: Bdf, off: u16, value: u16) {
        self.access.write(bdf, off, 2, value.into());
    }

    pub fn write32(&self, bdf: Bdf, off: u16, value: u32) {
        self.access.write(bdf, off, 4, value);
    }

    /// The first function with this vendor and device ID.
    pub fn find(&self, vendor: u16, device: u16) -> Option<&Function> {
        self.functions
            .iter()
            .find(|f| f.vendor == vendor && f.device == device)
    }

    /// The function at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Option<&Function> {
        self.functions.iter().find(|f| f.bdf == bdf)
    }

    /// Sets and clears command register bits.
    pub fn update_command(&self, bdf: Bdf, set: u16, clear: u16) {
        let command = self.read16(bdf, COMMAND);
        self.write16(bdf, COMMAND, (command & !clear) | set);
    }

    /// Scans `bus`: every device, every function of multi-function devices, and the
    /// buses behind bridges (numbering those firmware left unnumbered from `next_bus`).
    fn scan_bus(&mut self, bus: u8, next_bus: &mut u8, depth: u32) {
        for dev in 0..32 {
            let bdf0 = Bdf { bus, dev, func: 0 };
            if matches!(self.read16(bdf0, VENDOR_ID), 0xffff | 0) {
                continue;
            }
            let multi = self.read8(bdf0, HEADER_TYPE) & 0x80 != 0;
            for func in 0..if multi { 8 } else { 1 } {
                let bdf = Bdf { bus, dev, func };
                if matches!(self.read16(bdf, VENDOR_ID), 0xffff | 0) {
                    continue;
                }
                let function = self.read_function(bdf);
                let bridge = function.is_bridge();
                self.functions.push(function);
                if bridge && depth < MAX_DEPTH {
                    let index = self.functions.len() - 1;
                    self.scan_bridge(index, next_bus, depth);
                }
            }
        }
    }

    /// Follows a bridge to its secondary bus, numbering it if firmware did not.
    fn scan_bridge(&mut self, index: usize, next_bus: &mut u8, depth: u32) {
        let bdf = self.functions[index].bdf;
        let last_bus = match self.access {
            Access::Ecam { bus_end, .. } => bus_end,
            Access::Legacy => 255,
        };
        let buses = self.read32(bdf, BRIDGE_BUSES);
        let (secondary, subordinate) = (((buses >> 8) & 0xff) as u8, ((buses >> 16) & 0xff) as u8);
        if secondary > bdf.bus && subordinate >= secondary {
            // Numbered by firmware: keep it.
            *next_bus = (*next_bus).max(subordinate.saturating_add(1));
            self.functions[index].buses = Some((secondary, subordinate));
            self.scan_bus(secondary, next_bus, depth + 1);
            return;
        }
        if *next_bus > last_bus || *next_bus == 0 {
            self.notes.push(format!(
                "bridge {bdf}: no bus number left for its secondary bus"
            ));
            return;
        }
        let secondary = *next_bus;
        *next_bus += 1;
        let keep = buses & 0xff00_0000;
        let program = |sub: u8| {
            keep | (u32::from(sub) << 16) | (u32::from(secondary) << 8) | u32::from(bdf.bus)
        };
        // Open the whole remaining range while scanning, then close it to what was used.
        self.write32(bdf, BRIDGE_BUSES, program(last_bus));
        self.scan_bus(secondary, next_bus, depth + 1);
        let subordinate = *next_bus - 1;
        self.write32(bdf, BRIDGE_BUSES, program(subordinate));
        self.functions[index].buses = Some((secondary, subordinate));
    }

    fn read_function(&mut self, bdf: Bdf) -> Function {
        let id = self.read32(bdf, VENDOR_ID);
        let class_rev = self.read32(bdf, REVISION);
        let header_type = self.read8(bdf, HEADER_TYPE);
        let (subsys_vendor, subsys_id) = if header_type & 0x7f == 0 {
            let s = self.read32(bdf, SUBSYSTEM_VENDOR);
            (s as u16, (s >> 16) as u16)
        } else {
            (0, 0)
        };
        let mut function = Function {
            bdf,
            vendor: id as u16,
            device: (id >> 16) as u16,
            class: class_rev >> 8,
            revision: class_rev as u8,
            header_type,
            subsys_vendor,
            subsys_id,
            irq_pin: self.read8(bdf, INTERRUPT_PIN),
            bars: Vec::new(),
            caps: Vec::new(),
            ext_caps: Vec::new(),
            cap_error: None,
            buses: None,
        };
        function.bars = resources::size_bars(self, bdf, header_type & 0x7f);
        self.read_caps(&mut function);
        function
    }

    /// Walks the capability list (and the extended one, with ECAM), noting malformed links.
    fn read_caps(&self, f: &mut Function) {
        let bdf = f.bdf;
        if self.read16(bdf, STATUS) & STATUS_CAP_LIST != 0 {
            let mut ptr = self.read8(bdf, CAP_PTR) & 0xfc;
            // 48 capabilities of 4 bytes fill the 192 bytes after the header.
            for _ in 0..48 {
                if ptr == 0 {
                    break;
                }
                if ptr < 0x40 {
                    f.cap_error = Some(format!("capability pointer {ptr:#x} inside the header"));
                    break;
                }
                let header = self.read16(bdf, u16::from(ptr));
                f.caps.push(Cap {
                    id: header as u8,
                    offset: ptr,
                });
                ptr = (header >> 8) as u8 & 0xfc;
            }
            if ptr != 0 && f.cap_error.is_none() {
                f.cap_error = Some(String::from("capability list does not end (a loop?)"));
            }
        }
        if let Access::Ecam { .. } = self.access {
            let mut off = 0x100u16;
            for _ in 0..960 {
                let header = self.read32(bdf, off);
                if header == 0 || header == u32::MAX {
                    break;
                }
                f.ext_caps.push((header as u16, off));
                let next = ((header >> 20) & 0xffc) as u16;
                if next == 0 {
                    break;
                }
                if next < 0x100 {
                    f.cap_error =
                        Some(format!("extended capability pointer {next:#x} below 0x100"));
                    break;
                }
                off = next;
            }
        }
    }
}
