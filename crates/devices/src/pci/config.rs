//! A type 0 configuration space, shared by every emulated function.
//!
//! Registers follow the PCI Local Bus specification 3.0, section 6:
//!
//! | offset | register | here |
//! |---|---|---|
//! | 0x00 | vendor ID, device ID | read-only |
//! | 0x04 | command | I/O, memory, bus master, parity, SERR, INTx disable writable |
//! | 0x06 | status | read-only; bit 4 (capability list) when capabilities exist |
//! | 0x08 | revision, class code (prog-if, subclass, class) | read-only |
//! | 0x0c | cache line size | writable; latency timer, header type, BIST read-only |
//! | 0x10-0x27 | BAR 0-5 | see below |
//! | 0x2c | subsystem vendor ID, subsystem ID | read-only |
//! | 0x30 | expansion ROM BAR | always 0 (no ROM) |
//! | 0x34 | capabilities pointer | read-only |
//! | 0x3c | interrupt line | writable; interrupt pin read-only |
//!
//! A BAR register holds the base address in its upper bits and the type in
//! its low bits (memory: bit 0 = 0, bits 2:1 = 00 for 32-bit or 10 for
//! 64-bit, bit 3 = prefetchable; I/O: bit 0 = 1). Address bits below the
//! BAR's size are hard-wired to 0, so writing all-ones and reading back gives
//! the size mask (the size-probing protocol). A 64-bit BAR uses the next
//! register for the upper 32 address bits.
//!
//! Capabilities start at 0x40 on dword boundaries and form a list through
//! their second byte. The extended space (0x100-0xfff) reads 0: no extended
//! capabilities.

use super::{BarKind, BarSpec, DecodedBar, PciError, CONFIG_SPACE_SIZE, NUM_BARS};

/// Vendor ID register.
pub const VENDOR_ID: u16 = 0x00;
/// Device ID register.
pub const DEVICE_ID: u16 = 0x02;
/// Command register.
pub const COMMAND: u16 = 0x04;
/// Status register.
pub const STATUS: u16 = 0x06;
/// Revision ID register.
pub const REVISION_ID: u16 = 0x08;
/// Class code (prog-if at 0x09, subclass at 0x0a, base class at 0x0b).
pub const CLASS_CODE: u16 = 0x09;
/// Cache line size register.
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Header type register.
pub const HEADER_TYPE: u16 = 0x0e;
/// First BAR register.
pub const BAR0: u16 = 0x10;
/// Subsystem vendor ID register.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID register.
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Expansion ROM base address register.
pub const ROM_BAR: u16 = 0x30;
/// Capabilities pointer.
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Interrupt line register.
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin register.
pub const INTERRUPT_PIN: u16 = 0x3d;
/// Where the first capability goes.
pub const FIRST_CAPABILITY: u16 = 0x40;
/// End of the standard configuration space (capabilities live below it).
pub const STANDARD_SPACE_END: u16 = 0x100;

/// Command register: I/O space decoding.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Writable command bits: I/O, memory, bus master, parity error response,
/// SERR# enable, INTx disable.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | (1 << 6) | (1 << 8) | COMMAND_INTX_DISABLE;
/// Status register: the capability list is valid.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// The identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class << 16 | subclass << 8 | programming interface.
    pub class: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    spec: BarSpec,
    /// Current base address (size-aligned).
    addr: u64,
    /// Where the monitor placed it; restored on reset.
    placed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar(Bar),
    /// The upper half of the 64-bit BAR in the previous slot.
    Upper,
}

/// The configuration space of one function.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    regs: Vec<u8>,
    /// Power-on values of the writable bits, for [`ConfigSpace::reset`].
    defaults: Vec<u8>,
    /// Per-byte mask of bits the guest may write.
    wmask: Vec<u8>,
    bars: [BarSlot; NUM_BARS],
    last_capability: Option<u16>,
    next_capability: u16,
}

fn in_bar_registers(offset: usize) -> bool {
    (usize::from(BAR0)..usize::from(BAR0) + 4 * NUM_BARS).contains(&offset)
}

impl ConfigSpace {
    /// A header type 0 space with `ids`, all BARs unused, no capabilities,
    /// decoding off.
    pub fn new(ids: PciIds) -> ConfigSpace {
        let mut c = ConfigSpace {
            regs: vec![0; CONFIG_SPACE_SIZE],
            defaults: vec![0; CONFIG_SPACE_SIZE],
            wmask: vec![0; CONFIG_SPACE_SIZE],
            bars: [BarSlot::Unused; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.init(VENDOR_ID, &ids.vendor.to_le_bytes());
        c.init(DEVICE_ID, &ids.device.to_le_bytes());
        c.init(REVISION_ID, &[ids.revision]);
        c.init(CLASS_CODE, &ids.class.to_le_bytes()[..3]);
        c.init(SUBSYSTEM_VENDOR_ID, &ids.subsystem_vendor.to_le_bytes());
        c.init(SUBSYSTEM_ID, &ids.subsystem.to_le_bytes());
        c.set_writable(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        c.set_writable(CACHE_LINE_SIZE, &[0xff]);
        c.set_writable(INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Sets bytes at `offset` at build time (they are also their reset value).
    /// Out-of-range bytes are dropped.
    pub fn init(&mut self, offset: u16, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(r) = self.regs.get_mut(usize::from(offset) + i) {
                *r = b;
                self.defaults[usize::from(offset) + i] = b;
            }
        }
    }

    /// Lets the guest write the bits of `mask` at `offset`.
    pub fn set_writable(&mut self, offset: u16, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            if let Some(w) = self.wmask.get_mut(usize::from(offset) + i) {
                *w = m;
            }
        }
    }

    /// Sets the interrupt pin (1 = INTA# .. 4 = INTD#, 0 = none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.init(INTERRUPT_PIN, &[pin]);
    }

    /// Declares a BAR. Its address is 0 until placed.
    pub fn add_bar(&mut self, spec: BarSpec) -> Result<(), PciError> {
        spec.validate()?;
        let i = usize::from(spec.index);
        let upper = spec.kind == BarKind::Mmio64;
        if self.bars[i] != BarSlot::Unused || (upper && self.bars[i + 1] != BarSlot::Unused) {
            return Err(PciError::BarInUse(spec.index));
        }
        self.bars[i] = BarSlot::Bar(Bar {
            spec,
            addr: 0,
            placed: 0,
        });
        if upper {
            self.bars[i + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// The declared BARs.
    pub fn bar_specs(&self) -> Vec<BarSpec> {
        self.bars
            .iter()
            .filter_map(|s| match s {
                BarSlot::Bar(b) => Some(b.spec),
                _ => None,
            })
            .collect()
    }

    fn bar(&self, index: u8) -> Option<&Bar> {
        match self.bars.get(usize::from(index)) {
            Some(BarSlot::Bar(b)) => Some(b),
            _ => None,
        }
    }

    /// Places BAR `index` at `addr` (firmware's assignment, also restored by
    /// [`ConfigSpace::reset`]). `addr` must be aligned to the BAR's size and
    /// fit its kind.
    pub fn place_bar(&mut self, index: u8, addr: u64) -> Result<(), PciError> {
        let Some(BarSlot::Bar(b)) = self.bars.get_mut(usize::from(index)) else {
            return Err(PciError::NoSuchBar(index));
        };
        let limit = match b.spec.kind {
            BarKind::Io | BarKind::Mmio32 => 1u64 << 32,
            BarKind::Mmio64 => u64::MAX,
        };
        let fits = addr
            .checked_add(b.spec.size - 1)
            .is_some_and(|last| last < limit);
        if addr & (b.spec.size - 1) != 0 || !fits {
            return Err(PciError::BadBarAddress { index, addr });
        }
        b.addr = addr;
        b.placed = addr;
        Ok(())
    }

    /// The address BAR `index` holds, whether or not it is decoded.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        self.bar(index).map(|b| b.addr)
    }

    /// The BARs decoded now: memory (I/O) decoding is on in the command
    /// register and the BAR holds a non-zero address.
    pub fn decoded_bars(&self) -> Vec<DecodedBar> {
        let command = self.command();
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                BarSlot::Bar(b) => Some((i, b)),
                _ => None,
            })
            .filter(|(_, b)| {
                let bit = if b.spec.kind.is_memory() {
                    COMMAND_MEMORY
                } else {
                    COMMAND_IO
                };
                command & bit != 0 && b.addr != 0
            })
            .map(|(i, b)| DecodedBar {
                index: i as u8,
                kind: b.spec.kind,
                size: b.spec.size,
                addr: b.addr,
            })
            .collect()
    }

    /// The decoded base of BAR `index`, if decoded.
    pub fn decoded_bar(&self, index: u8) -> Option<u64> {
        self.decoded_bars()
            .into_iter()
            .find(|b| b.index == index)
            .map(|b| b.addr)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Appends a capability with ID `id` and `body` (the bytes after the ID
    /// and next-pointer bytes) to the list. Returns its offset. The body is
    /// read-only unless made writable with [`ConfigSpace::set_writable`].
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u16, PciError> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        if usize::from(offset) + len > usize::from(STANDARD_SPACE_END) {
            return Err(PciError::CapabilitySpace { len });
        }
        self.init(offset, &[id, 0]);
        self.init(offset + 2, body);
        match self.last_capability {
            Some(last) => self.init(last + 1, &[offset as u8]),
            None => self.init(CAPABILITIES_POINTER, &[offset as u8]),
        }
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
        self.init(STATUS, &status.to_le_bytes());
        self.last_capability = Some(offset);
        // Room checked above: offset + len <= 0x100.
        self.next_capability = ((offset as usize + len + 3) & !3) as u16;
        Ok(offset)
    }

    /// Walks the capability list as a driver does: `(offset, id)` pairs.
    /// Stops at a loop or a pointer outside the standard space.
    pub fn capabilities(&self) -> Vec<(u16, u8)> {
        let mut out = Vec::new();
        let mut ptr = u16::from(self.read_u8(CAPABILITIES_POINTER)) & !3;
        while ptr >= FIRST_CAPABILITY && out.len() < 48 {
            out.push((ptr, self.read_u8(ptr)));
            ptr = u16::from(self.read_u8(ptr + 1)) & !3;
        }
        out
    }

    fn bar_dword(&self, slot: usize) -> u32 {
        match self.bars[slot] {
            BarSlot::Unused => 0,
            BarSlot::Upper => match self.bars[slot - 1] {
                BarSlot::Bar(b) => (b.addr >> 32) as u32,
                _ => 0,
            },
            BarSlot::Bar(b) => {
                let flags = match b.spec.kind {
                    BarKind::Io => 0x1,
                    BarKind::Mmio32 => 0x0,
                    BarKind::Mmio64 => 0x4,
                } | if b.spec.prefetchable { 0x8 } else { 0 };
                (b.addr as u32) | flags
            }
        }
    }

    fn write_bar_dword(&mut self, slot: usize, value: u32) {
        match self.bars[slot] {
            BarSlot::Unused => {}
            BarSlot::Upper => {
                if let BarSlot::Bar(b) = &mut self.bars[slot - 1] {
                    let mask = !(b.spec.size - 1);
                    b.addr = ((u64::from(value) << 32) | (b.addr & 0xffff_ffff)) & mask;
                }
            }
            BarSlot::Bar(ref mut b) => {
                let low_flags: u64 = if b.spec.kind == BarKind::Io { 0x3 } else { 0xf };
                let mask = !(b.spec.size - 1) & !low_flags;
                let low = u64::from(value) & mask & 0xffff_ffff;
                b.addr = (b.addr & !0xffff_ffff) | low;
            }
        }
    }

    fn byte(&self, offset: usize) -> u8 {
        if in_bar_registers(offset) {
            let rel = offset - usize::from(BAR0);
            self.bar_dword(rel / 4).to_le_bytes()[rel % 4]
        } else {
            self.regs.get(offset).copied().unwrap_or(0xff)
        }
    }

    /// Reads `data.len()` bytes at `offset` (bytes past the space read
    /// all-ones).
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte(usize::from(offset) + i);
        }
    }

    /// Writes `data` at `offset` as the guest would: only writable bits
    /// change; BAR registers follow the size-probing protocol.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let start = usize::from(offset);
        let mut i = 0;
        while i < data.len() {
            let off = start + i;
            if in_bar_registers(off) {
                // Merge the written bytes of this dword into its current value.
                let slot = (off - usize::from(BAR0)) / 4;
                let base = usize::from(BAR0) + slot * 4;
                let mut dword = self.bar_dword(slot).to_le_bytes();
                while i < data.len() && start + i < base + 4 {
                    dword[start + i - base] = data[i];
                    i += 1;
                }
                self.write_bar_dword(slot, u32::from_le_bytes(dword));
                continue;
            }
            if let (Some(r), Some(&m)) = (self.regs.get_mut(off), self.wmask.get(off)) {
                *r = (*r & !m) | (data[i] & m);
            }
            i += 1;
        }
    }

    /// A byte of configuration space.
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.byte(usize::from(offset))
    }

    /// A little-endian word of configuration space.
    pub fn read_u16(&self, offset: u16) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// A little-endian dword of configuration space.
    pub fn read_u32(&self, offset: u16) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Power-on state: writable bits back to their build-time values
    /// (decoding off), BARs back at their placed addresses.
    pub fn reset(&mut self) {
        for ((r, &d), &m) in self.regs.iter_mut().zip(&self.defaults).zip(&self.wmask) {
            *r = (*r & !m) | (d & m);
        }
        for slot in &mut self.bars {
            if let BarSlot::Bar(b) = slot {
                b.addr = b.placed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            revision: 1,
            class: 0x00ff_0000,
        }
    }

    fn bar(index: u8, size: u64, kind: BarKind, prefetchable: bool) -> BarSpec {
        BarSpec {
            index,
            size,
            kind,
            prefetchable,
        }
    }

    /// Sizes BAR `i` as Linux does: save, write all-ones, read, restore.
    fn probe(c: &mut ConfigSpace, i: u16) -> (u32, u32) {
        let off = BAR0 + 4 * i;
        let saved = c.read_u32(off);
        c.write(off, &u32::MAX.to_le_bytes());
        let mask = c.read_u32(off);
        c.write(off, &saved.to_le_bytes());
        (saved, mask)
    }

    #[test]
    fn header_identity_is_read_only() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(c.read_u32(0), 0x1044_1af4);
        assert_eq!(c.read_u32(0x08), 0xff00_0001);
        assert_eq!(c.read_u32(0x2c), 0x1100_1af4);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
        c.write(0, &[0; 4]);
        c.write(0x08, &[0xff; 4]);
        c.write(HEADER_TYPE, &[0x80]);
        assert_eq!(c.read_u32(0), 0x1044_1af4);
        assert_eq!(c.read_u32(0x08), 0xff00_0001);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
        // No ROM: the ROM BAR sizes to 0.
        c.write(ROM_BAR, &0xffff_f800u32.to_le_bytes());
        assert_eq!(c.read_u32(ROM_BAR), 0);
        // Past the space: all-ones.
        let mut b = [0; 2];
        c.read(0xfff, &mut b);
        assert_eq!(b, [0, 0xff]);
    }

    #[test]
    fn command_interrupt_line_and_pin() {
        let mut c = ConfigSpace::new(ids());
        c.set_interrupt_pin(1);
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE);
        c.write(INTERRUPT_LINE, &[11, 3]);
        assert_eq!(c.read_u8(INTERRUPT_LINE), 11);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
        // Status is read-only.
        c.write(STATUS, &[0xff, 0xff]);
        assert_eq!(c.read_u16(STATUS), 0);
        c.reset();
        assert_eq!(c.command(), 0);
        assert_eq!(c.read_u8(INTERRUPT_LINE), 0);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(bar(0, 0x4000, BarKind::Mmio64, true))
            .expect("free");
        c.add_bar(bar(2, 0x1000, BarKind::Mmio32, false))
            .expect("free");
        c.add_bar(bar(3, 0x20, BarKind::Io, false)).expect("free");
        c.place_bar(0, 0x1_2345_c000).expect("aligned");
        c.place_bar(2, 0xe000_1000).expect("aligned");
        c.place_bar(3, 0xc040).expect("aligned");

        // 64-bit prefetchable: type bits 0b1100.
        let (saved, mask) = probe(&mut c, 0);
        assert_eq!(saved, 0x2345_c00c);
        assert_eq!(mask, 0xffff_c00c);
        let (saved, mask) = probe(&mut c, 1);
        assert_eq!(saved, 0x1);
        assert_eq!(mask, 0xffff_ffff);
        assert_eq!(c.bar_address(0), Some(0x1_2345_c000));

        let (saved, mask) = probe(&mut c, 2);
        assert_eq!((saved, mask), (0xe000_1000, 0xffff_f000));
        let (saved, mask) = probe(&mut c, 3);
        assert_eq!((saved, mask), (0xc041, 0xffff_ffe1));
        // Unused BARs read 0 whatever is written.
        let (saved, mask) = probe(&mut c, 4);
        assert_eq!((saved, mask), (0, 0));

        // Unaligned low bits are dropped on write.
        c.write(BAR0 + 8, &0xe000_2fffu32.to_le_bytes());
        assert_eq!(c.bar_address(2), Some(0xe000_2000));
        // Byte writes merge into the dword.
        c.write(BAR0 + 8 + 3, &[0xd0]);
        assert_eq!(c.bar_address(2), Some(0xd000_2000));
        // Reset puts BARs back where firmware placed them.
        c.reset();
        assert_eq!(c.bar_address(2), Some(0xe000_1000));
    }

    #[test]
    fn large_64bit_bar_masks_the_upper_dword() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(bar(4, 1 << 33, BarKind::Mmio64, false))
            .expect("free");
        let (_, lo) = probe(&mut c, 4);
        let (_, hi) = probe(&mut c, 5);
        assert_eq!(lo, 0x4);
        assert_eq!(hi, 0xffff_fffe);
    }

    #[test]
    fn bar_declaration_errors() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(bar(1, 0x1000, BarKind::Mmio64, false))
            .expect("free");
        assert_eq!(
            c.add_bar(bar(2, 0x1000, BarKind::Mmio32, false)),
            Err(PciError::BarInUse(2))
        );
        assert_eq!(
            c.add_bar(bar(0, 0x1000, BarKind::Mmio64, false)),
            Err(PciError::BarInUse(0))
        );
        assert_eq!(c.place_bar(0, 0x1000), Err(PciError::NoSuchBar(0)));
        assert_eq!(c.place_bar(2, 0x1000), Err(PciError::NoSuchBar(2)));
        assert!(matches!(
            c.place_bar(1, 0x1800),
            Err(PciError::BadBarAddress { .. })
        ));
        c.add_bar(bar(3, 0x1000, BarKind::Mmio32, false))
            .expect("free");
        assert!(c.place_bar(3, 0x1_0000_0000).is_err());
        assert!(c.place_bar(3, 0xffff_f000).is_ok());
    }

    #[test]
    fn decoding_follows_the_command_register() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(bar(0, 0x1000, BarKind::Mmio32, false))
            .expect("free");
        c.add_bar(bar(1, 0x10, BarKind::Io, false)).expect("free");
        c.place_bar(0, 0xe000_0000).expect("ok");
        c.place_bar(1, 0xc000).expect("ok");
        assert!(c.decoded_bars().is_empty());
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(
            c.decoded_bars(),
            vec![DecodedBar {
                index: 0,
                kind: BarKind::Mmio32,
                size: 0x1000,
                addr: 0xe000_0000
            }]
        );
        c.write(COMMAND, &(COMMAND_MEMORY | COMMAND_IO).to_le_bytes());
        assert_eq!(c.decoded_bar(1), Some(0xc000));
        // A BAR holding 0 is treated as unassigned.
        c.write(BAR0, &[0; 4]);
        assert_eq!(c.decoded_bar(0), None);
    }

    #[test]
    fn capability_list_walk() {
        let mut c = ConfigSpace::new(ids());
        assert!(c.capabilities().is_empty());
        assert_eq!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
        let a = c.add_capability(0x09, &[14, 1, 0, 0]).expect("room");
        let b = c.add_capability(0x11, &[0; 10]).expect("room");
        let d = c.add_capability(0x09, &[3]).expect("room");
        assert_eq!((a, b, d), (0x40, 0x48, 0x54));
        assert_eq!(
            c.read_u16(STATUS) & STATUS_CAPABILITIES,
            STATUS_CAPABILITIES
        );
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(
            c.capabilities(),
            vec![(0x40, 0x09), (0x48, 0x11), (0x54, 0x09)]
        );
        assert_eq!(c.read_u8(0x41), 0x48);
        assert_eq!(c.read_u8(0x55), 0);
        // Read-only unless declared writable.
        c.write(0x42, &[0xaa]);
        assert_eq!(c.read_u8(0x42), 14);
        c.set_writable(0x42, &[0x0f]);
        c.write(0x42, &[0xaa]);
        assert_eq!(c.read_u8(0x42), 0x0a);
        c.reset();
        assert_eq!(c.read_u8(0x42), 14);
        // The standard space fills up.
        let err = loop {
            if let Err(e) = c.add_capability(0x09, &[0; 30]) {
                break e;
            }
        };
        assert!(matches!(err, PciError::CapabilitySpace { .. }));
        assert!(c.capabilities().iter().all(|&(off, _)| off < 0x100));
    }
}
