//! ACPI tables describing the machine to the guest, built with the rust-vmm
//! `acpi_tables` crate.
//!
//! # Where they sit
//! All tables live in the legacy BIOS window [`ACPI_START`]..[`ACPI_END`]
//! (0xE0000..0x100000): RAM under KVM, reserved in the guest's memory map (see
//! `crate::memory`), and the range a legacy OS scans for the RSDP.
//! ```text
//! 0xE0000  RSDP (36 bytes, revision 2, points at the XSDT only)
//!          XSDT -> FADT, MADT, [MCFG]        each table 16-byte aligned
//!          FADT -> FACS (64-byte aligned), DSDT
//! ```
//! The tables are built in host memory first, so their sizes are known before
//! anything is written: if they do not fit the window (several thousand vCPUs)
//! [`create_acpi_tables`] fails with [`AcpiError::TooBig`] and writes nothing.
//!
//! # What they say
//! - FADT: a full (not hardware-reduced) PC platform already in ACPI mode
//!   (SMI_CMD = 0; the PM1 device reads SCI_EN = 1). The PM1a event block at
//!   0x600 (4 bytes) and control block at 0x604 (2 bytes) are the
//!   `vireo_devices::pm` device; SCI on IRQ 9; no PM timer, no GPE blocks;
//!   fixed-feature power button, no sleep button; reset by writing 0x06 to
//!   port 0xCF9; an i8042 and a CMOS RTC (century register 0x32), no VGA.
//! - MADT: the local APICs at 0xFEE00000 (one entry per vCPU, x2APIC entries
//!   for APIC IDs above 254), the 8259 pair (PCAT_COMPAT), one IOAPIC at
//!   0xFEC00000 for GSIs 0-23, ISA IRQ 0 -> GSI 2 and the SCI level-triggered,
//!   active-high (what KVM's in-kernel IOAPIC implements), NMI on LINT1.
//! - DSDT: `\_S5` (SLP_TYP 5, which the PM1 device turns into a power-off),
//!   processor devices (`ACPI0007`, `_UID` = MADT processor UID = vCPU index),
//!   COM1, the RTC and the i8042 keyboard controller, and with a
//!   [`PciHostBridge`] a PCIe host bridge `\_SB.PCI0` plus a motherboard
//!   resource device reserving its ECAM area (Linux uses MMCONFIG only if that
//!   area is reserved); the MCFG then describes the ECAM area.
//!
//! Everything follows the ACPI 6.3 specification; the FADT is revision 6.5 as
//! the crate builds it.

use std::ops::Range;

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::{facs::FACS, mcfg::MCFG, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vireo_devices::pm::{PM1_BASE, PM1_CNT_OFFSET, RESET_PORT, RESET_VALUE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device_manager::SCI_IRQ;
use crate::memory::{HIGH_MEMORY_START, MIB};

mod dsdt;
mod madt;
#[cfg(test)]
mod tests;

/// Start of the window the tables live in; the RSDP is here.
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the window the tables live in.
pub const ACPI_END: u64 = HIGH_MEMORY_START;
/// Address of the RSDP (16-byte aligned, inside the legacy scan area).
pub const RSDP_ADDR: u64 = ACPI_START;

/// OEM ID in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"VIREO ";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"VIREOVM ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// Physical address of every local APIC.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Physical address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;

/// Most vCPUs the tables can name (processor devices are `C000`..`CFFF`).
/// The window is full well before this: see [`AcpiError::TooBig`].
pub const MAX_CPUS: usize = 0x1000;

/// Alignment of each table.
const TABLE_ALIGN: u64 = 16;
/// Alignment the FACS needs.
const FACS_ALIGN: u64 = 64;

/// The SCI as an ISA IRQ number (the FADT's SCI_INT, the MADT override).
const SCI: u8 = isa_irq(SCI_IRQ);

const PM1_EVT_PORT: u32 = io_port(PM1_BASE) as u32;
const PM1_CNT_PORT: u32 = io_port(PM1_BASE + PM1_CNT_OFFSET) as u32;
/// PM1_EVT_LEN: status + enable, 16 bits each.
const PM1_EVT_LEN: u8 = 4;
/// PM1_CNT_LEN: one 16-bit control register.
const PM1_CNT_LEN: u8 = 2;
/// CMOS index of the century register (FADT CENTURY).
const RTC_CENTURY: u8 = 0x32;

const fn isa_irq(irq: u32) -> u8 {
    assert!(irq < 16, "not an ISA IRQ");
    irq as u8
}

const fn io_port(port: u64) -> u16 {
    assert!(port <= 0xffff, "not an I/O port");
    port as u16
}

/// What the tables describe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// The APIC ID of each vCPU, in vCPU order. The vCPU's index is its ACPI
    /// processor UID (MADT) and the `_UID` of its processor device (DSDT).
    pub apic_ids: Vec<u32>,
    /// The PCI host bridge, if the machine has PCI.
    pub pci: Option<PciHostBridge>,
}

/// A range of addresses: `size` bytes (or ports) from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Length; never 0.
    pub size: u64,
}

impl Window {
    /// Last address (inclusive), if the window is not empty and does not wrap.
    fn last(&self) -> Option<u64> {
        self.size.checked_sub(1)?.checked_add(self.base)
    }
}

/// A PCI Express host bridge on segment 0, described by the MCFG and the
/// DSDT's `\_SB.PCI0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHostBridge {
    /// ECAM (MMCONFIG) base address as the MCFG defines it: the configuration
    /// space of bus `b` is at `ecam_base + (b << 20)`, even when `bus_start`
    /// is not 0. 1 MiB aligned. See [`PciHostBridge::ecam_window`].
    pub ecam_base: u64,
    /// First bus number the bridge decodes (`_BBN`).
    pub bus_start: u8,
    /// Last bus number the bridge decodes.
    pub bus_end: u8,
    /// I/O port window forwarded to PCI, if any (within 0..0x10000).
    pub io: Option<Window>,
    /// 32-bit MMIO window (below 4 GiB).
    pub mmio32: Window,
    /// 64-bit MMIO window, if any.
    pub mmio64: Option<Window>,
}

impl PciHostBridge {
    /// The ECAM area the bridge decodes: 1 MiB per bus from `bus_start` to
    /// `bus_end`. This is what the VMM must route to PCI configuration space,
    /// and what the DSDT reserves as a motherboard resource.
    pub fn ecam_window(&self) -> Window {
        let buses = u64::from(self.bus_end.saturating_sub(self.bus_start)) + 1;
        Window {
            base: self
                .ecam_base
                .saturating_add(u64::from(self.bus_start) * MIB),
            size: buses * MIB,
        }
    }

    fn validate(&self) -> Result<(), AcpiError> {
        if self.bus_end < self.bus_start {
            return Err(AcpiError::PciBusRange {
                start: self.bus_start,
                end: self.bus_end,
            });
        }
        let bad = |window: &'static str, w: Window, reason: &'static str| {
            Err(AcpiError::PciWindow {
                window,
                base: w.base,
                size: w.size,
                reason,
            })
        };
        let ecam = self.ecam_window();
        if !self.ecam_base.is_multiple_of(MIB) {
            return bad("ECAM", ecam, "the base is not 1 MiB aligned");
        }
        if ecam.last().is_none() || self.ecam_base.checked_add(256 * MIB).is_none() {
            return bad("ECAM", ecam, "it wraps around the address space");
        }
        if let Some(io) = self.io {
            match io.last() {
                None => return bad("I/O", io, "it is empty or wraps"),
                Some(last) if last > 0xffff => return bad("I/O", io, "it goes beyond port 0xffff"),
                Some(_) => {}
            }
        }
        match self.mmio32.last() {
            None => return bad("32-bit MMIO", self.mmio32, "it is empty or wraps"),
            Some(last) if last > u64::from(u32::MAX) => {
                return bad("32-bit MMIO", self.mmio32, "it goes beyond 4 GiB")
            }
            Some(_) => {}
        }
        if let Some(mmio64) = self.mmio64 {
            if mmio64.last().is_none() {
                return bad("64-bit MMIO", mmio64, "it is empty or wraps");
            }
        }
        Ok(())
    }
}

/// Where [`create_acpi_tables`] put the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// The RSDP, for `hvm_start_info.rsdp_paddr` (or the guest's own scan).
    pub rsdp: GuestAddress,
    /// The guest-physical range `[start, end)` the tables occupy.
    pub range: Range<u64>,
}

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPU to describe.
    #[error("cannot build ACPI tables for a machine without vCPUs")]
    NoCpus,
    /// More vCPUs than the DSDT can name.
    #[error("cannot build ACPI tables for {cpus} vCPUs: at most {MAX_CPUS} are supported")]
    TooManyCpus { cpus: usize },
    /// Two vCPUs with the same APIC ID.
    #[error("vCPUs {first} and {second} both have APIC ID {apic_id}")]
    DuplicateApicId {
        apic_id: u32,
        first: usize,
        second: usize,
    },
    /// An APIC ID no processor can have.
    #[error("vCPU {cpu} has APIC ID {apic_id:#x}, the broadcast ID")]
    BroadcastApicId { cpu: usize, apic_id: u32 },
    /// Bus range with its end before its start.
    #[error("the PCI host bridge's bus range {start}..={end} is empty")]
    PciBusRange { start: u8, end: u8 },
    /// A PCI window that cannot be described.
    #[error(
        "the PCI host bridge's {window} window ({size:#x} bytes at {base:#x}) is invalid: {reason}"
    )]
    PciWindow {
        window: &'static str,
        base: u64,
        size: u64,
        reason: &'static str,
    },
    /// The tables are larger than the window reserved for them.
    #[error(
        "the ACPI tables for {cpus} vCPUs need {needed} bytes from {ACPI_START:#x}, \
         but only {available} bytes are reserved for them (up to {ACPI_END:#x})"
    )]
    TooBig {
        cpus: usize,
        needed: u64,
        available: u64,
    },
    /// Guest memory does not cover the window.
    #[error("writing the ACPI tables to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Builds the ACPI tables for `config` and writes them into `mem` at
/// [`RSDP_ADDR`] and after. Nothing is written if they do not fit.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    config: &AcpiConfig,
) -> Result<AcpiTables, AcpiError> {
    validate(config)?;

    // Tables whose content does not depend on where the others are.
    let dsdt = serialize(&dsdt::build_dsdt(config));
    let madt = serialize(&madt::build_madt(&config.apic_ids));
    let mcfg = config.pci.as_ref().map(|pci| serialize(&build_mcfg(pci)));
    let mut facs = FACS::new();
    facs.version = 2; // ACPI 4.0 and later.
    let facs = serialize(&facs);

    // Placement.
    let mut cursor = RSDP_ADDR + Rsdp::len() as u64;
    let mut place = |len: usize, align: u64| {
        let addr = cursor.next_multiple_of(align);
        cursor = addr + len as u64;
        addr
    };
    let xsdt_entries = 2 + usize::from(mcfg.is_some());
    let xsdt_addr = place(36 + 8 * xsdt_entries, TABLE_ALIGN);
    let fadt_addr = place(acpi_tables::fadt::FADT::len(), TABLE_ALIGN);
    let madt_addr = place(madt.len(), TABLE_ALIGN);
    let mcfg_addr = mcfg.as_ref().map(|t| place(t.len(), TABLE_ALIGN));
    let facs_addr = place(facs.len(), FACS_ALIGN);
    let dsdt_addr = place(dsdt.len(), TABLE_ALIGN);
    let end = cursor;
    if end > ACPI_END {
        return Err(AcpiError::TooBig {
            cpus: config.apic_ids.len(),
            needed: end - ACPI_START,
            available: ACPI_END - ACPI_START,
        });
    }

    // Tables that point at others.
    let fadt = serialize(&build_fadt(facs_addr, dsdt_addr));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(addr) = mcfg_addr {
        xsdt.add_entry(addr);
    }
    let xsdt = serialize(&xsdt);
    debug_assert_eq!(xsdt.len(), 36 + 8 * xsdt_entries, "XSDT placed by its size");
    let rsdp = serialize(&Rsdp::new(OEM_ID, xsdt_addr));

    let mut writes = vec![
        (RSDP_ADDR, &rsdp),
        (xsdt_addr, &xsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (facs_addr, &facs),
        (dsdt_addr, &dsdt),
    ];
    if let (Some(addr), Some(table)) = (mcfg_addr, &mcfg) {
        writes.push((addr, table));
    }
    for (addr, bytes) in writes {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::GuestMemory)?;
    }
    Ok(AcpiTables {
        rsdp: GuestAddress(RSDP_ADDR),
        range: ACPI_START..end,
    })
}

fn validate(config: &AcpiConfig) -> Result<(), AcpiError> {
    let ids = &config.apic_ids;
    if ids.is_empty() {
        return Err(AcpiError::NoCpus);
    }
    if ids.len() > MAX_CPUS {
        return Err(AcpiError::TooManyCpus { cpus: ids.len() });
    }
    let mut sorted: Vec<(u32, usize)> = ids.iter().copied().zip(0..).collect();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(AcpiError::DuplicateApicId {
                apic_id: w[0].0,
                first: w[0].1,
                second: w[1].1,
            });
        }
    }
    if let Some(cpu) = ids.iter().position(|&id| id == u32::MAX) {
        return Err(AcpiError::BroadcastApicId {
            cpu,
            apic_id: u32::MAX,
        });
    }
    if let Some(pci) = &config.pci {
        pci.validate()?;
    }
    Ok(())
}

fn serialize(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// A generic table (header + body) from the crate's `Sdt`, which keeps the
/// length and checksum right.
fn sdt(signature: [u8; 4], revision: u8, fixed: &[u8], body: &[u8]) -> Sdt {
    let mut table = Sdt::new(signature, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(fixed);
    table.append_slice(body);
    table
}

fn build_fadt(facs_addr: u64, dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let io = |bits: u8, access: AccessSize, port: u32| {
        GAS::new(GasSpace::SystemIo, bits, 0, access, u64::from(port))
    };
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // The power button is a fixed feature (PWRBTN_STS/EN in PM1); there
        // is no sleep button at all.
        .flag(Flags::SlpButton)
        // The PM1 block never sets RTC_STS: no wake from the RTC alarm.
        .flag(Flags::FixRtc)
        .flag(Flags::ResetRegSup);
    // The tables sit below 1 MiB: the 32-bit pointers reach them. The FACS
    // gets only the 32-bit field (earlier ACPI revisions want X_FIRMWARE_CTRL
    // zero when FIRMWARE_CTRL is set), the DSDT both (equal values are
    // accepted everywhere; ACPICA prefers X_DSDT).
    f.firmware_ctrl = u32::try_from(facs_addr)
        .expect("the tables are below 1 MiB")
        .into();
    f.dsdt = u32::try_from(dsdt_addr)
        .expect("the tables are below 1 MiB")
        .into();
    f.x_dsdt = dsdt_addr.into();
    f.sci_int = u16::from(SCI).into();
    // SMI_CMD, ACPI_ENABLE and ACPI_DISABLE stay 0: always in ACPI mode.
    f.pm1a_evt_blk = PM1_EVT_PORT.into();
    f.pm1a_cnt_blk = PM1_CNT_PORT.into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.x_pm1a_evt_blk = io(PM1_EVT_LEN * 8, AccessSize::WordAccess, PM1_EVT_PORT);
    f.x_pm1a_cnt_blk = io(PM1_CNT_LEN * 8, AccessSize::WordAccess, PM1_CNT_PORT);
    // No C2/C3: latencies above 100 and 1000 us say so.
    f.p_lvl2_lat = 0x0fff.into();
    f.p_lvl3_lat = 0x0fff.into();
    f.century = RTC_CENTURY;
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = io(8, AccessSize::ByteAccess, u32::from(io_port(RESET_PORT)));
    f.reset_value = RESET_VALUE;
    f.finalize()
}

/// IAPC_BOOT_ARCH: LEGACY_DEVICES (ISA-style devices: COM1, RTC), 8042, and
/// VGA Not Present. MSI is supported, ASPM irrelevant, the CMOS RTC present.
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 1) | (1 << 2);

fn build_mcfg(pci: &PciHostBridge) -> MCFG {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(pci.ecam_base, 0, pci.bus_start, pci.bus_end);
    mcfg
}
