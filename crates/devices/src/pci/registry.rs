//! The set of PCI functions, by address, and the dispatch of configuration
//! accesses to them.
//!
//! The registry can change at runtime ([`PciRegistry::add`],
//! [`PciRegistry::remove`]): a hotplug controller (ACPI or PCIe native) only
//! needs to call those and raise its own event. All methods take `&self`;
//! share the registry as an `Arc`.
//!
//! # Locking
//! Configuration writes are serialized by one registry lock, so
//! [`BarMoved`] events reach the listener in the order the writes happened.
//! The listener runs *after* the device's own lock is released (a vCPU may be
//! inside [`PciBarWindow`] holding the device while waiting for the bus the
//! listener updates). It runs on the vCPU thread that made the configuration
//! write, before that write completes, so the guest's next access sees the
//! new mapping. The listener must not call back into the registry's
//! configuration methods, and the bus that dispatched the configuration
//! access (PIO for 0xcf8, MMIO for ECAM) must allow modification while a
//! dispatch is in progress.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::config::HEADER_TYPE;
use super::{BarMoved, DecodedBar, PciAddress, PciDevice, PciError, CONFIG_SPACE_SIZE};
use crate::BusDevice;

/// A function shared between the registry, its BAR windows and the monitor.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Receives [`BarMoved`] events. Implemented by the monitor.
pub trait PciBarListener: Send + Sync {
    /// A BAR's decoded address changed. See the module docs for the context
    /// this runs in.
    ///
    /// The guest controls `new`: it may overlap another mapping (a 64-bit
    /// BAR rewritten one dword at a time while decoding passes through
    /// mixed addresses). Treat a mapping that cannot be made as "not
    /// mapped" and carry on; the next event for this BAR has it as `old`.
    fn bar_moved(&self, event: &BarMoved);
}

/// Locks a shared function (recovering from poisoning: the monitor aborts
/// on panic, so poisoning only happens in tests).
pub fn lock_device(dev: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

use lock_device as lock;

/// Which decoded BARs changed between `before` and `after`.
fn diff(device: PciAddress, before: &[DecodedBar], after: &[DecodedBar]) -> Vec<BarMoved> {
    let mut out = Vec::new();
    for b in before {
        let now = after.iter().find(|a| a.index == b.index);
        if now.map(|a| a.addr) != Some(b.addr) {
            out.push(BarMoved {
                device,
                bar: b.index,
                kind: b.kind,
                size: b.size,
                old: Some(b.addr),
                new: now.map(|a| a.addr),
            });
        }
    }
    for a in after {
        if !before.iter().any(|b| b.index == a.index) {
            out.push(BarMoved {
                device,
                bar: a.index,
                kind: a.kind,
                size: a.size,
                old: None,
                new: Some(a.addr),
            });
        }
    }
    out
}

/// Whether a configuration access is well formed: 1, 2 or 4 bytes inside
/// one aligned dword of the 4 KiB space.
fn valid_access(offset: u16, len: usize) -> bool {
    matches!(len, 1 | 2 | 4)
        && usize::from(offset) + len <= CONFIG_SPACE_SIZE
        && usize::from(offset % 4) + len <= 4
}

/// The PCI functions of segment 0, by address.
#[derive(Default)]
pub struct PciRegistry {
    devices: RwLock<BTreeMap<PciAddress, SharedPciDevice>>,
    listener: RwLock<Option<Arc<dyn PciBarListener>>>,
    /// Serializes configuration writes and hotplug (see the module docs).
    writes: Mutex<()>,
}

impl PciRegistry {
    /// An empty registry without a listener.
    pub fn new() -> PciRegistry {
        PciRegistry::default()
    }

    /// Sets where [`BarMoved`] events go.
    pub fn set_listener(&self, listener: Arc<dyn PciBarListener>) {
        *self.listener.write().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    fn notify(&self, events: &[BarMoved]) {
        if events.is_empty() {
            return;
        }
        let listener = self
            .listener
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(l) = listener {
            for e in events {
                l.bar_moved(e);
            }
        }
    }

    fn serialize(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `device` at `addr`. BARs it already decodes are reported as
    /// moved from `None`.
    pub fn add(&self, addr: PciAddress, device: SharedPciDevice) -> Result<(), PciError> {
        let _serial = self.serialize();
        let decoded = lock(&device).decoded_bars();
        {
            let mut map = self.devices.write().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&addr) {
                return Err(PciError::AddressInUse(addr));
            }
            map.insert(addr, device);
        }
        self.notify(&diff(addr, &[], &decoded));
        Ok(())
    }

    /// Removes the function at `addr`. BARs it decoded are reported as moved
    /// to `None`, so the monitor unmaps them.
    pub fn remove(&self, addr: PciAddress) -> Option<SharedPciDevice> {
        let _serial = self.serialize();
        let device = self
            .devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr)?;
        let decoded = lock(&device).decoded_bars();
        self.notify(&diff(addr, &decoded, &[]));
        Some(device)
    }

    /// The function at `addr`.
    pub fn get(&self, addr: PciAddress) -> Option<SharedPciDevice> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    /// Every function, in address order.
    pub fn devices(&self) -> Vec<(PciAddress, SharedPciDevice)> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(a, d)| (*a, d.clone()))
            .collect()
    }

    /// The lowest device number on `bus` with nothing at any function: where
    /// the next single-function device goes.
    pub fn free_slot(&self, bus: u8) -> Option<PciAddress> {
        let map = self.devices.read().unwrap_or_else(|p| p.into_inner());
        (0..32u8)
            .filter_map(|d| PciAddress::new(bus, d, 0))
            .find(|a| {
                !map.keys()
                    .any(|k| k.bus() == bus && k.device() == a.device())
            })
    }

    fn has_other_functions(&self, addr: PciAddress) -> bool {
        let map = self.devices.read().unwrap_or_else(|p| p.into_inner());
        map.keys()
            .any(|k| k.bus() == addr.bus() && k.device() == addr.device() && k.function() != 0)
    }

    /// Reads configuration space of `addr`. Absent functions and malformed
    /// accesses read all-ones.
    pub fn config_read(&self, addr: PciAddress, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if !valid_access(offset, data.len()) {
            return;
        }
        let Some(device) = self.get(addr) else {
            return;
        };
        lock(&device).read_config(offset, data);
        // Function 0 advertises the other functions of its device through
        // the multi-function bit of the header type.
        let header = usize::from(HEADER_TYPE);
        let start = usize::from(offset);
        if addr.function() == 0
            && (start..start + data.len()).contains(&header)
            && self.has_other_functions(addr)
        {
            data[header - start] |= 0x80;
        }
    }

    /// Writes configuration space of `addr`, then reports BAR moves.
    /// Writes to absent functions and malformed accesses are dropped.
    pub fn config_write(&self, addr: PciAddress, offset: u16, data: &[u8]) {
        if !valid_access(offset, data.len()) {
            return;
        }
        let _serial = self.serialize();
        let Some(device) = self.get(addr) else {
            return;
        };
        let events = {
            let mut d = lock(&device);
            let before = d.decoded_bars();
            d.write_config(offset, data);
            let after = d.decoded_bars();
            diff(addr, &before, &after)
        };
        self.notify(&events);
    }

    /// Resets every function (machine reset) and reports the BARs that
    /// stopped being decoded.
    pub fn reset(&self) {
        let _serial = self.serialize();
        for (addr, device) in self.devices() {
            let events = {
                let mut d = lock(&device);
                let before = d.decoded_bars();
                d.reset();
                let after = d.decoded_bars();
                diff(addr, &before, &after)
            };
            self.notify(&events);
        }
    }
}

/// A BAR of a function as a [`BusDevice`]: insert one on the MMIO (or port
/// I/O) bus at the BAR's decoded address, with the BAR's size.
pub struct PciBarWindow {
    device: SharedPciDevice,
    bar: u8,
}

impl PciBarWindow {
    /// The window onto BAR `bar` of `device`.
    pub fn new(device: SharedPciDevice, bar: u8) -> PciBarWindow {
        PciBarWindow { device, bar }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).bar_write(self.bar, offset, data);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::config::{ConfigSpace, PciIds, BAR0, COMMAND, COMMAND_MEMORY};
    use crate::pci::{BarKind, BarSpec};

    /// Records BAR moves.
    #[derive(Default)]
    pub struct Moves(pub Mutex<Vec<BarMoved>>);

    impl Moves {
        pub fn take(&self) -> Vec<BarMoved> {
            std::mem::take(&mut *self.0.lock().expect("not poisoned"))
        }
    }

    impl PciBarListener for Moves {
        fn bar_moved(&self, event: &BarMoved) {
            self.0.lock().expect("not poisoned").push(*event);
        }
    }

    /// A function with one 32-bit BAR that echoes offsets.
    pub struct Dummy {
        pub config: ConfigSpace,
        pub bar_writes: Vec<(u8, u64, Vec<u8>)>,
    }

    impl Dummy {
        pub fn new(device_id: u16) -> Dummy {
            let mut config = ConfigSpace::new(PciIds {
                vendor: 0x1234,
                device: device_id,
                subsystem_vendor: 0,
                subsystem: 0,
                revision: 0,
                class: 0xff_0000,
            });
            config
                .add_bar(BarSpec {
                    index: 0,
                    size: 0x1000,
                    kind: BarKind::Mmio32,
                    prefetchable: false,
                })
                .expect("free");
            Dummy {
                config,
                bar_writes: Vec::new(),
            }
        }
    }

    impl PciDevice for Dummy {
        fn read_config(&mut self, offset: u16, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn write_config(&mut self, offset: u16, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn bars(&self) -> Vec<BarSpec> {
            self.config.bar_specs()
        }
        fn place_bar(&mut self, index: u8, addr: u64) -> Result<(), PciError> {
            self.config.place_bar(index, addr)
        }
        fn decoded_bars(&self) -> Vec<DecodedBar> {
            self.config.decoded_bars()
        }
        fn bar_read(&mut self, _index: u8, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
            self.bar_writes.push((index, offset, data.to_vec()));
        }
        fn reset(&mut self) {
            self.config.reset();
        }
    }

    fn addr(d: u8, f: u8) -> PciAddress {
        PciAddress::new(0, d, f).expect("valid")
    }

    fn read32(r: &PciRegistry, a: PciAddress, off: u16) -> u32 {
        let mut b = [0; 4];
        r.config_read(a, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn absent_functions_and_bad_accesses_read_all_ones() {
        let r = PciRegistry::new();
        r.add(addr(1, 0), Arc::new(Mutex::new(Dummy::new(7))))
            .expect("free");
        assert_eq!(read32(&r, addr(1, 0), 0), 0x0007_1234);
        assert_eq!(read32(&r, addr(2, 0), 0), u32::MAX);
        assert_eq!(read32(&r, addr(1, 1), 0), u32::MAX);
        // Crossing a dword, odd widths, past the end.
        let mut b = [0u8; 4];
        r.config_read(addr(1, 0), 2, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut b3 = [0u8; 3];
        r.config_read(addr(1, 0), 0, &mut b3);
        assert_eq!(b3, [0xff; 3]);
        let mut w = [0u8; 2];
        r.config_read(addr(1, 0), 0xfff, &mut w);
        assert_eq!(w, [0xff; 2]);
        r.config_read(addr(1, 0), 2, &mut w);
        assert_eq!(w, [0x07, 0x00]);
        // Writes to absent functions go nowhere.
        r.config_write(addr(3, 0), COMMAND, &[2, 0]);
        assert_eq!(
            r.add(addr(1, 0), Arc::new(Mutex::new(Dummy::new(8)))),
            Err(PciError::AddressInUse(addr(1, 0)))
        );
    }

    #[test]
    fn bar_moves_are_reported_in_order() {
        let r = PciRegistry::new();
        let moves = Arc::new(Moves::default());
        r.set_listener(moves.clone());
        let dev = Arc::new(Mutex::new(Dummy::new(1)));
        dev.lock()
            .expect("not poisoned")
            .place_bar(0, 0xe000_0000)
            .expect("aligned");
        r.add(addr(3, 0), dev.clone()).expect("free");
        assert!(moves.take().is_empty());

        let a = addr(3, 0);
        r.config_write(a, COMMAND, &COMMAND_MEMORY.to_le_bytes());
        let ev = BarMoved {
            device: a,
            bar: 0,
            kind: BarKind::Mmio32,
            size: 0x1000,
            old: None,
            new: Some(0xe000_0000),
        };
        assert_eq!(moves.take(), vec![ev]);
        // Linux's sizing sequence: decode off, all-ones, restore, decode on.
        r.config_write(a, COMMAND, &[0, 0]);
        r.config_write(a, BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&r, a, BAR0), 0xffff_f000);
        r.config_write(a, BAR0, &0xe000_0000u32.to_le_bytes());
        r.config_write(a, COMMAND, &COMMAND_MEMORY.to_le_bytes());
        let m = moves.take();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].old, m[0].new), (Some(0xe000_0000), None));
        assert_eq!((m[1].old, m[1].new), (None, Some(0xe000_0000)));
        // A move while decoding.
        r.config_write(a, BAR0, &0xe010_0000u32.to_le_bytes());
        let m = moves.take();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].old, m[0].new), (Some(0xe000_0000), Some(0xe010_0000)));
        // Writes that change nothing report nothing.
        r.config_write(a, BAR0, &0xe010_0000u32.to_le_bytes());
        r.config_write(a, 0x3c, &[5]);
        assert!(moves.take().is_empty());
        // Hot-unplug unmaps.
        assert!(r.remove(a).is_some());
        let m = moves.take();
        assert_eq!((m[0].old, m[0].new), (Some(0xe010_0000), None));
        assert!(r.remove(a).is_none());
        // Hotplug of a function that already decodes maps at once.
        r.add(a, dev).expect("free again");
        assert_eq!(moves.take()[0].new, Some(0xe010_0000));
        // Machine reset: decoding off, BAR back at its placement.
        r.reset();
        assert_eq!(moves.take()[0].new, None);
        assert_eq!(read32(&r, a, BAR0), 0xe000_0000);
    }

    #[test]
    fn multifunction_bit_and_free_slots() {
        let r = PciRegistry::new();
        assert_eq!(r.free_slot(0), Some(addr(0, 0)));
        r.add(addr(0, 0), Arc::new(Mutex::new(Dummy::new(1))))
            .expect("free");
        r.add(addr(2, 0), Arc::new(Mutex::new(Dummy::new(2))))
            .expect("free");
        assert_eq!(r.free_slot(0), Some(addr(1, 0)));
        let mut h = [0u8; 1];
        r.config_read(addr(2, 0), HEADER_TYPE, &mut h);
        assert_eq!(h[0], 0x00);
        r.add(addr(2, 3), Arc::new(Mutex::new(Dummy::new(3))))
            .expect("free");
        r.config_read(addr(2, 0), HEADER_TYPE, &mut h);
        assert_eq!(h[0], 0x80);
        // Seen in a dword read too.
        assert_eq!(read32(&r, addr(2, 0), 0x0c) >> 16 & 0xff, 0x80);
        assert_eq!(r.devices().len(), 3);
    }

    #[test]
    fn bar_window_forwards_to_the_device() {
        let dev = Arc::new(Mutex::new(Dummy::new(1)));
        let mut w = PciBarWindow::new(dev.clone(), 0);
        let mut b = [0u8; 2];
        w.read(0x42, &mut b);
        assert_eq!(b, [0x42, 0x42]);
        w.write(0x10, &[1, 2, 3, 4]);
        assert_eq!(
            dev.lock().expect("not poisoned").bar_writes,
            vec![(0, 0x10, vec![1, 2, 3, 4])]
        );
    }
}
