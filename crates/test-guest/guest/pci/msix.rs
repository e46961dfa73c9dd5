//! MSI-X: the capability (message control, table and PBA locations), enabling it, and
//! programming table entries to deliver a vector to a local APIC (xAPIC physical
//! destination, fixed delivery, edge). Table and PBA are accessed 32 bits at a time.
//!
//! The table and PBA live in a memory BAR, so the function's BARs must be live (as
//! [`super::Pci::probe`] leaves them). Each table access is an MMIO exit.

use alloc::format;

use super::{Access, Function, Pci, CAP_MSIX};
use crate::kit::Fail;
use crate::{ensure, io};

const CONTROL: u16 = 2;
const TABLE: u16 = 4;
const PBA: u16 = 8;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: u64 = 16;
const VECTOR_CONTROL_MASKED: u32 = 1;
/// The xAPIC MSI address window: 0xfee00000 | destination APIC ID << 12.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

/// A function's MSI-X capability.
#[derive(Clone, Copy, Debug)]
pub struct Msix {
    access: Access,
    pub bdf: super::Bdf,
    /// Config space offset of the capability.
    pub cap: u8,
    /// Number of table entries.
    pub entries: u16,
    /// Where the guest reaches the table / the pending bit array (in a BAR; see
    /// `Bar::va`).
    pub table: u64,
    pub pba: u64,
    /// (BAR index, offset) of table and PBA, as the capability says.
    pub table_bar: (u8, u32),
    pub pba_bar: (u8, u32),
}

impl Msix {
    /// Reads and checks the capability: BIRs name live memory BARs that hold the table
    /// (16 bytes per entry, 8-byte aligned offset) and the PBA.
    pub fn find(pci: &Pci, f: &Function) -> Result<Option<Self>, Fail> {
        let Some(cap) = f.cap(CAP_MSIX) else {
            return Ok(None);
        };
        let at = u16::from(cap);
        let control = pci.read16(f.bdf, at + CONTROL);
        let table = pci.read32(f.bdf, at + TABLE);
        let pba = pci.read32(f.bdf, at + PBA);
        let entries = (control & 0x7ff) + 1;
        let table_bar = ((table & 7) as u8, table & !7);
        let pba_bar = ((pba & 7) as u8, pba & !7);
        let locate = |what: &str, (bir, off): (u8, u32), len: u64| -> Result<u64, Fail> {
            let bar = f.bar(bir).filter(|b| b.is_memory() && b.is_live());
            let Some(bar) = bar else {
                return Err(Fail::new(format!(
                    "{} MSI-X {what}: BIR {bir} is not a live memory BAR",
                    f.bdf
                )));
            };
            ensure!(
                u64::from(off) + len <= bar.size,
                "{} MSI-X {what} at BAR {bir} + {off:#x} ({len} bytes) goes beyond the BAR's {:#x} bytes",
                f.bdf,
                bar.size
            );
            Ok(bar.va() + u64::from(off))
        };
        let table_addr = locate("table", table_bar, u64::from(entries) * ENTRY_SIZE)?;
        let pba_addr = locate("PBA", pba_bar, u64::from(entries).div_ceil(64) * 8)?;
        Ok(Some(Self {
            access: pci.access,
            bdf: f.bdf,
            cap,
            entries,
            table: table_addr,
            pba: pba_addr,
            table_bar,
            pba_bar,
        }))
    }

    fn control(&self) -> u16 {
        self.access.read(self.bdf, u16::from(self.cap) + CONTROL, 2) as u16
    }

    fn set_control(&self, set: u16, clear: u16) {
        let value = (self.control() & !clear) | set;
        self.access
            .write(self.bdf, u16::from(self.cap) + CONTROL, 2, value.into());
    }

    /// Enables MSI-X with the function mask set (nothing is delivered until
    /// [`Msix::unmask_function`]); every entry masked first.
    pub fn enable(&self) {
        self.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK, 0);
        for entry in 0..self.entries {
            self.mask(entry, true);
        }
    }

    pub fn unmask_function(&self) {
        self.set_control(0, CONTROL_FUNCTION_MASK);
    }

    pub fn disable(&self) {
        self.set_control(0, CONTROL_ENABLE);
    }

    pub fn enabled(&self) -> bool {
        self.control() & CONTROL_ENABLE != 0
    }

    fn entry_addr(&self, entry: u16) -> u64 {
        self.table + u64::from(entry) * ENTRY_SIZE
    }

    /// Points `entry` at `vector` on the local APIC `apic_id` and unmasks it.
    pub fn program(&self, entry: u16, apic_id: u32, vector: u8) {
        let at = self.entry_addr(entry);
        // SAFETY: the table lies in a live memory BAR (checked by `find`), device memory
        // that is mapped and not RAM; 32-bit aligned accesses as the spec requires.
        unsafe {
            io::mmio_write32(at, MSI_ADDRESS_BASE | ((apic_id & 0xff) << 12));
            io::mmio_write32(at + 4, 0);
            io::mmio_write32(at + 8, u32::from(vector));
        }
        self.mask(entry, false);
    }

    /// Masks or unmasks one entry.
    pub fn mask(&self, entry: u16, masked: bool) {
        let at = self.entry_addr(entry) + 12;
        // SAFETY: as in `program`.
        unsafe {
            let control = io::mmio_read32(at);
            let value = if masked {
                control | VECTOR_CONTROL_MASKED
            } else {
                control & !VECTOR_CONTROL_MASKED
            };
            io::mmio_write32(at, value);
        }
    }

    /// The entry's pending bit (set while a masked entry has a message to send).
    pub fn pending(&self, entry: u16) -> bool {
        let at = self.pba + u64::from(entry / 32) * 4;
        // SAFETY: the PBA lies in a live memory BAR (checked by `find`); an aligned 32-bit
        // read (the spec allows DWORD or QWORD accesses).
        let bits = unsafe { io::mmio_read32(at) };
        bits & (1 << (entry % 32)) != 0
    }
}
