//! How the guest reaches configuration space: the legacy port mechanism and
//! ECAM.
//!
//! # Configuration mechanism #1 ([`PciConfigIo`], ports 0xcf8-0xcff)
//! A dword write to 0xcf8 (CONFIG_ADDRESS) selects a register: bit 31
//! enable, bits 23:16 bus, 15:11 device, 10:8 function, 7:2 dword register.
//! Accesses of 1, 2 or 4 bytes at 0xcfc + n (CONFIG_DATA) then reach byte
//! `register + n` of that function, if bit 31 is set; otherwise they read
//! all-ones. Only the first 256 bytes are reachable this way. Accesses to
//! 0xcf8-0xcfb other than a dword at 0xcf8 are not CONFIG_ADDRESS: on a PC
//! they reach other chipset registers (0xcf9 is the reset control
//! register), so [`PciConfigIo::with_passthrough`] routes them to another
//! device, and otherwise they read all-ones.
//!
//! # ECAM ([`PciEcam`], memory-mapped)
//! 1 MiB per bus, 4 KiB per function: offset
//! `bus << 20 | device << 15 | function << 12 | register`, covering the
//! whole 4 KiB space. The device is placed at the area of its first bus,
//! `ecam_base + (bus_start << 20)`, with length
//! `(bus_end - bus_start + 1) << 20`.

use std::sync::Arc;

use super::{PciAddress, PciRegistry};
use crate::bus::SharedDevice;
use crate::BusDevice;

/// First port of configuration mechanism #1.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports it covers (CONFIG_ADDRESS and CONFIG_DATA).
pub const PCI_CONFIG_IO_LEN: u64 = 8;

const ENABLE: u32 = 1 << 31;
/// The CONFIG_ADDRESS bits that hold state: enable, bus, device, function,
/// register (bits 30:24 are reserved and 1:0 are hard-wired to 0).
const ADDRESS_MASK: u32 = 0x80ff_fffc;

/// Ports 0xcf8-0xcff as a [`BusDevice`].
pub struct PciConfigIo {
    registry: Arc<PciRegistry>,
    address: u32,
    /// `(first port offset, length, device)` for byte registers sharing
    /// 0xcf8-0xcfb.
    passthrough: Vec<(u64, u64, SharedDevice)>,
}

impl PciConfigIo {
    /// The mechanism, reaching `registry`.
    pub fn new(registry: Arc<PciRegistry>) -> PciConfigIo {
        PciConfigIo {
            registry,
            address: 0,
            passthrough: Vec::new(),
        }
    }

    /// Routes accesses to `[base + offset, base + offset + len)` that are not
    /// CONFIG_ADDRESS accesses to `device` (at its offset 0 and up), for
    /// instance the reset control register at 0xcf9: `with_passthrough(1, 1,
    /// reset)`. The range must lie in 0..4.
    pub fn with_passthrough(mut self, offset: u64, len: u64, device: SharedDevice) -> Self {
        self.passthrough.push((offset, len, device));
        self
    }

    /// The current CONFIG_ADDRESS value.
    pub fn address(&self) -> u32 {
        self.address
    }

    fn passthrough_for(&self, offset: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        self.passthrough.iter().find_map(|(start, plen, dev)| {
            (offset >= *start && offset + len as u64 <= start + plen)
                .then_some((offset - start, dev))
        })
    }

    /// The function and register a CONFIG_DATA access at `offset` reaches.
    fn target(&self, offset: u64, len: usize) -> Option<(PciAddress, u16)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let within = offset.checked_sub(4)?;
        if within.checked_add(len as u64).is_none_or(|end| end > 4) {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let register = (self.address & 0xfc) as u16 + within as u16;
        Some((PciAddress::new(bus, device, function)?, register))
    }
}

fn dev_lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
        } else if offset < 4 {
            if let Some((off, dev)) = self.passthrough_for(offset, data.len()) {
                dev_lock(dev).read(off, data);
            }
        } else if let Some((addr, reg)) = self.target(offset, data.len()) {
            self.registry.config_read(addr, reg, data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.address = v & ADDRESS_MASK;
        } else if offset < 4 {
            if let Some((off, dev)) = self.passthrough_for(offset, data.len()) {
                dev_lock(dev).write(off, data);
            }
        } else if let Some((addr, reg)) = self.target(offset, data.len()) {
            self.registry.config_write(addr, reg, data);
        }
    }
}

/// The ECAM area of buses `bus_start..=bus_end` as a [`BusDevice`].
pub struct PciEcam {
    registry: Arc<PciRegistry>,
    bus_start: u8,
    bus_end: u8,
}

impl PciEcam {
    /// ECAM for buses `bus_start..=bus_end`.
    pub fn new(registry: Arc<PciRegistry>, bus_start: u8, bus_end: u8) -> PciEcam {
        PciEcam {
            registry,
            bus_start,
            bus_end: bus_end.max(bus_start),
        }
    }

    /// Offset of this device's area from the MCFG's base address.
    pub fn base_offset(&self) -> u64 {
        u64::from(self.bus_start) << 20
    }

    /// Length of the area.
    pub fn len(&self) -> u64 {
        (u64::from(self.bus_end - self.bus_start) + 1) << 20
    }

    /// Never empty (at least one bus); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn target(&self, offset: u64) -> Option<(PciAddress, u16)> {
        if offset >= self.len() {
            return None;
        }
        let addr = PciAddress::from_ecam_offset(offset + self.base_offset());
        Some((addr, (offset & 0xfff) as u16))
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.target(offset) {
            Some((addr, reg)) => self.registry.config_read(addr, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((addr, reg)) = self.target(offset) {
            self.registry.config_write(addr, reg, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{BAR0, COMMAND};
    use crate::pci::registry::tests::{Dummy, Moves};
    use crate::pci::{HostBridge, PciDevice};
    use crate::testutil::{hammer, Rng};
    use std::sync::Mutex;

    fn registry() -> Arc<PciRegistry> {
        let r = Arc::new(PciRegistry::new());
        let a = |d, f| PciAddress::new(0, d, f).expect("valid");
        r.add(a(0, 0), Arc::new(Mutex::new(HostBridge::new())))
            .expect("free");
        let mut d = Dummy::new(0x42);
        d.place_bar(0, 0xc000_0000).expect("aligned");
        r.add(a(3, 0), Arc::new(Mutex::new(d))).expect("free");
        r
    }

    fn cf8_addr(bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
        ENABLE | u32::from(bus) << 16 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg)
    }

    fn cf8_read(io: &mut PciConfigIo, bus: u8, dev: u8, func: u8, reg: u16, len: usize) -> u32 {
        io.write(
            0,
            &cf8_addr(bus, dev, func, (reg & 0xfc) as u8).to_le_bytes(),
        );
        let mut b = [0u8; 4];
        io.read(4 + u64::from(reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn ecam_read(e: &mut PciEcam, bus: u8, dev: u8, func: u8, reg: u16, len: usize) -> u32 {
        let off = PciAddress::new(bus, dev, func)
            .expect("valid")
            .ecam_offset()
            + u64::from(reg);
        let mut b = [0u8; 4];
        e.read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ecam_and_cf8_see_the_same_space() {
        let r = registry();
        let mut io = PciConfigIo::new(r.clone());
        let mut ecam = PciEcam::new(r.clone(), 0, 0);
        for dev in [0u8, 1, 3, 31] {
            for reg in (0..0x100u16).step_by(4) {
                for (len, sub) in [(4usize, 0u16), (2, 0), (2, 2), (1, 1), (1, 3)] {
                    let a = cf8_read(&mut io, 0, dev, 0, reg + sub, len);
                    let b = ecam_read(&mut ecam, 0, dev, 0, reg + sub, len);
                    assert_eq!(a, b, "dev {dev} reg {:#x} len {len}", reg + sub);
                }
            }
        }
        // Absent functions: all-ones, by both.
        assert_eq!(cf8_read(&mut io, 0, 5, 0, 0, 4), u32::MAX);
        assert_eq!(ecam_read(&mut ecam, 0, 5, 0, 0, 4), u32::MAX);
        assert_eq!(cf8_read(&mut io, 0, 3, 1, 0, 4), u32::MAX);
        // A write through one is seen through the other.
        io.write(0, &cf8_addr(0, 3, 0, BAR0 as u8).to_le_bytes());
        io.write(4, &0xd000_0000u32.to_le_bytes());
        assert_eq!(ecam_read(&mut ecam, 0, 3, 0, BAR0, 4), 0xd000_0000);
        let off = PciAddress::new(0, 3, 0).expect("valid").ecam_offset() + 0x3c;
        ecam.write(off, &[9]);
        assert_eq!(cf8_read(&mut io, 0, 3, 0, 0x3c, 1), 9);
        // Sub-dword writes through 0xcfc + n.
        io.write(0, &cf8_addr(0, 3, 0, 0x3c).to_le_bytes());
        io.write(4, &[10]);
        assert_eq!(ecam_read(&mut ecam, 0, 3, 0, 0x3c, 1), 10);
    }

    #[test]
    fn cf8_address_register_and_enable_bit() {
        let r = registry();
        let mut io = PciConfigIo::new(r);
        // Linux's type 1 probe: the written value reads back.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        // Reserved and low bits do not stick.
        io.write(0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(io.address(), ADDRESS_MASK);
        // Enable clear: data reads all-ones even for present devices.
        io.write(0, &(cf8_addr(0, 0, 0, 0) & !ENABLE).to_le_bytes());
        io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        io.write(4, &[0; 4]);
        // Byte accesses to 0xcf8-0xcfb do not change the address.
        io.write(0, &cf8_addr(0, 0, 0, 0).to_le_bytes());
        io.write(3, &[0x01]);
        io.write(0, &[0x00, 0x00]);
        assert_eq!(io.address(), cf8_addr(0, 0, 0, 0));
        // An access running past 0xcff reaches nothing.
        let mut w = [0u8; 4];
        io.read(6, &mut w);
        assert_eq!(w, [0xff; 4]);
    }

    #[test]
    fn cf9_passthrough() {
        #[derive(Default)]
        struct Reg(Vec<(u64, Vec<u8>)>);
        impl BusDevice for Reg {
            fn read(&mut self, offset: u64, data: &mut [u8]) {
                data.fill(0x40 + offset as u8);
            }
            fn write(&mut self, offset: u64, data: &[u8]) {
                self.0.push((offset, data.to_vec()));
            }
        }
        let reg = Arc::new(Mutex::new(Reg::default()));
        let mut io = PciConfigIo::new(registry()).with_passthrough(1, 1, reg.clone());
        io.write(1, &[0x06]);
        let mut b = [0u8; 1];
        io.read(1, &mut b);
        assert_eq!(b, [0x40]);
        // Not at 0xcf9, or wider than it: not passed through.
        io.write(2, &[0x06]);
        io.write(1, &[0x06, 0x00]);
        io.read(2, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(reg.lock().expect("not poisoned").0, vec![(0, vec![0x06])]);
        assert_eq!(io.address(), 0);
    }

    #[test]
    fn ecam_bus_range_and_extended_space() {
        let r = registry();
        let moves = Arc::new(Moves::default());
        r.set_listener(moves.clone());
        let bus1 = PciAddress::new(1, 0, 0).expect("valid");
        r.add(bus1, Arc::new(Mutex::new(Dummy::new(0x77))))
            .expect("free");
        // An ECAM window for buses 1..=2 starts at bus 1's area.
        let mut e = PciEcam::new(r.clone(), 1, 2);
        assert_eq!(e.base_offset(), 1 << 20);
        assert_eq!(e.len(), 2 << 20);
        let mut b = [0u8; 4];
        e.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0077_1234);
        e.read(2 << 20, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Extended space is reachable by ECAM only, and reads 0 here.
        e.read(0x100, &mut b);
        assert_eq!(b, [0; 4]);
        // ECAM writes report BAR moves like CF8 ones.
        e.write(u64::from(COMMAND), &[2, 0]);
        assert!(moves.take().is_empty(), "BAR at 0 is not decoded");
        e.write(u64::from(BAR0), &0xe000_0000u32.to_le_bytes());
        assert_eq!(moves.take()[0].new, Some(0xe000_0000));
    }

    #[test]
    fn random_accesses_never_panic() {
        let r = registry();
        let mut io = PciConfigIo::new(r.clone());
        let mut ecam = PciEcam::new(r, 0, 255);
        let mut rng = Rng::new(7);
        for round in 0..50 {
            io.write(0, &(rng.next() as u32 | ENABLE).to_le_bytes());
            hammer(&mut io, round, 8, 20);
        }
        hammer(&mut ecam, 3, 1 << 28, 5000);
    }
}
