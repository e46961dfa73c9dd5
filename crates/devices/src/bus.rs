//! Address-range dispatch for port I/O and MMIO accesses.
//!
//! A [`Bus`] maps non-overlapping `[base, base + len)` ranges to devices. The
//! vCPU threads look up the device for each exit and call it with the offset
//! inside its range. Devices are shared between vCPUs, so each sits behind its own
//! mutex: a slow device never blocks accesses to another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. Offsets are relative to the start of the device's range.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`. Unimplemented registers read as
    /// all-ones, like an open bus.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from inserting devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of devices keyed by address range.
///
/// The map can change while accesses are dispatched (PCI BARs move when the
/// guest reprograms them, devices are hot-plugged): lookups take a short
/// read lock and release it before calling the device, so a device may
/// itself cause the bus to change (a configuration write that moves a BAR).
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (base, e) in self.map().iter() {
            list.entry(&format_args!("{base:#x}+{:#x}", e.len));
        }
        list.finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        if let Some((&other, e)) = ranges.range(..base + len).next_back() {
            if other + e.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device whose range starts at `base`.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        self.ranges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&base)
            .map(|e| e.device)
    }

    /// The device covering the whole access, and the offset in its range.
    fn find(&self, addr: u64, size: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.map();
        let (&base, e) = ranges.range(..=addr).next_back()?;
        let off = addr - base;
        (off.checked_add(size as u64)? <= e.len).then(|| (off, e.device.clone()))
    }

    /// Dispatches a read. Returns false (and fills `data` with 0xff) when no
    /// device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                lock(&dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                lock(&dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex: the monitor aborts on panic,
/// so poisoning can only come from a test.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let dev = Arc::new(Mutex::new(Reg(vec![])));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).expect("free range");
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().expect("not poisoned").0, vec![(7, vec![7])]);
        // Outside, or straddling the end.
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let d = || Arc::new(Mutex::new(Reg(vec![]))) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).expect("free");
        assert!(matches!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x0, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(d(), 0x110, 1).expect("adjacent is fine");
        bus.insert(d(), 0xff, 1).expect("adjacent below is fine");
        assert!(bus.remove(0x100).is_some());
        bus.insert(d(), 0x100, 0x10).expect("free again");
    }
}
