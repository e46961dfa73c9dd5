//! MSI-X: the capability, the vector table and the pending bit array.
//!
//! Layout (PCI Local Bus specification 3.0, section 6.8.2):
//! - Capability (ID 0x11, 12 bytes): +2 message control (bits 10:0 table
//!   size - 1, read-only; bit 14 function mask; bit 15 MSI-X enable), +4
//!   table offset | BIR (BAR index in bits 2:0), +8 PBA offset | BIR.
//! - Table: 16 bytes per vector: message address low, high, message data,
//!   vector control (bit 0: masked; set at reset).
//! - PBA: one pending bit per vector, in little-endian qwords; read-only.
//!
//! A vector is *masked* when MSI-X is disabled, the function is masked or
//! its own mask bit is set. Raising a masked vector (while MSI-X is enabled)
//! sets its pending bit instead; unmasking a pending vector delivers it.
//!
//! # Wiring
//! The monitor implements [`MsiInterrupt`] per device: one KVM GSI route
//! (MSI type) plus one irqfd per vector. [`MsiInterrupt::update`] is called
//! whenever a vector's (address, data, masked) triple changes: reprogram the
//! GSI route there (`KVM_SET_GSI_ROUTING`). [`MsiInterrupt::trigger`] is
//! called only for unmasked vectors: write the vector's irqfd.

use std::io;
use std::sync::Arc;

use super::config::ConfigSpace;
use super::PciError;
use crate::guest_warn;
use crate::ratelimit::RateLimitedLog;

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

/// An MSI message: a write of `data` to `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (on x86: 0xfee0_0000 | destination and mode bits).
    pub address: u64,
    /// Message data (on x86: vector and delivery mode).
    pub data: u32,
}

/// A vector's routing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixVectorUpdate {
    /// Vector index in the table.
    pub vector: u16,
    /// The message the guest programmed.
    pub message: MsiMessage,
    /// Whether the vector is masked (entry mask, function mask or MSI-X
    /// disabled): the device will not trigger it while masked.
    pub masked: bool,
}

/// Where a device's MSI-X messages go. Implemented by the monitor (KVM GSI
/// routing + irqfd); never sees the device.
pub trait MsiInterrupt: Send + Sync {
    /// Sends vector `vector` with its current message. Called only while the
    /// vector is unmasked.
    fn trigger(&self, vector: u16) -> io::Result<()>;
    /// The guest changed a vector's message or mask state.
    fn update(&self, update: &MsixVectorUpdate);
}

/// What became of a [`Msix::trigger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixDelivery {
    /// The message was sent.
    Sent,
    /// The vector is masked: its pending bit is set.
    Pending,
    /// MSI-X is disabled: use INTx if the device has it.
    Disabled,
    /// No such vector.
    NoSuchVector,
    /// The monitor failed to send it (logged).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address_low: u32,
    address_high: u32,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Entry = Entry {
        address_low: 0,
        address_high: 0,
        data: 0,
        control: VECTOR_MASKED,
    };

    fn bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..4].copy_from_slice(&self.address_low.to_le_bytes());
        b[4..8].copy_from_slice(&self.address_high.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Entry {
        let dw = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Entry {
            address_low: dw(0),
            address_high: dw(4),
            data: dw(8),
            // Only the mask bit is implemented; the rest is reserved.
            control: dw(12) & VECTOR_MASKED,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.address_high) << 32) | u64::from(self.address_low),
            data: self.data,
        }
    }
}

/// Where a structure lives: BAR `bar`, at `offset` (8-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarLocation {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// Offset of the capability in configuration space, once added.
    capability: Option<u16>,
    /// What the monitor was last told about each vector.
    reported: Vec<(MsiMessage, bool)>,
    interrupt: Arc<dyn MsiInterrupt>,
    log: RateLimitedLog,
}

impl Msix {
    /// `vectors` vectors (1..=2048), all masked, sending through `interrupt`.
    pub fn new(vectors: u16, interrupt: Arc<dyn MsiInterrupt>) -> Result<Msix, PciError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(PciError::InvalidMsix("vector count not in 1..=2048"));
        }
        let n = usize::from(vectors);
        Ok(Msix {
            entries: vec![Entry::RESET; n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            capability: None,
            reported: vec![(MsiMessage::default(), true); n],
            interrupt,
            log: RateLimitedLog::default(),
        })
    }

    /// Bytes the table of `vectors` vectors takes.
    pub const fn table_size(vectors: u16) -> u64 {
        vectors as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA of `vectors` vectors takes (whole qwords).
    pub const fn pba_size(vectors: u16) -> u64 {
        (vectors as u64).div_ceil(64) * 8
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Adds the capability to `config`, with the table and PBA at `table`
    /// and `pba`. Returns its offset.
    pub fn add_capability(
        &mut self,
        config: &mut ConfigSpace,
        table: BarLocation,
        pba: BarLocation,
    ) -> Result<u16, PciError> {
        if table.bar > 5
            || pba.bar > 5
            || !table.offset.is_multiple_of(8)
            || !pba.offset.is_multiple_of(8)
        {
            return Err(PciError::InvalidMsix("BIR or offset invalid"));
        }
        let control = self.vectors() - 1;
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&(table.offset | u32::from(table.bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba.offset | u32::from(pba.bar)).to_le_bytes());
        let offset = config.add_capability(MSIX_CAPABILITY_ID, &body)?;
        config.set_writable(
            offset + 2,
            &(MSIX_ENABLE | MSIX_FUNCTION_MASK).to_le_bytes(),
        );
        self.capability = Some(offset);
        Ok(offset)
    }

    /// Picks up a guest write to the message control register. Call after
    /// every configuration space write (cheap when nothing changed).
    pub fn config_written(&mut self, config: &ConfigSpace) {
        let Some(cap) = self.capability else {
            return;
        };
        let control = config.read_u16(cap + 2);
        let enabled = control & MSIX_ENABLE != 0;
        let function_masked = control & MSIX_FUNCTION_MASK != 0;
        if (enabled, function_masked) != (self.enabled, self.function_masked) {
            self.enabled = enabled;
            self.function_masked = function_masked;
            for v in 0..self.vectors() {
                self.refresh(v);
            }
        }
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    fn masked(&self, vector: u16) -> bool {
        !self.enabled
            || self.function_masked
            || self.entries[usize::from(vector)].control & VECTOR_MASKED != 0
    }

    /// Whether `vector` is pending.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = usize::from(vector);
        if let Some(q) = self.pending.get_mut(v / 64) {
            if on {
                *q |= 1 << (v % 64);
            } else {
                *q &= !(1 << (v % 64));
            }
        }
    }

    /// Reports a changed vector to the monitor and delivers it if it became
    /// unmasked while pending.
    fn refresh(&mut self, vector: u16) {
        let v = usize::from(vector);
        let state = (self.entries[v].message(), self.masked(vector));
        if self.reported[v] != state {
            self.reported[v] = state;
            self.interrupt.update(&MsixVectorUpdate {
                vector,
                message: state.0,
                masked: state.1,
            });
        }
        if !state.1 && self.is_pending(vector) {
            self.set_pending(vector, false);
            self.send(vector);
        }
    }

    fn send(&mut self, vector: u16) -> MsixDelivery {
        match self.interrupt.trigger(vector) {
            Ok(()) => MsixDelivery::Sent,
            Err(e) => {
                guest_warn!(self.log, "msix: failed to send vector {vector}: {e}");
                MsixDelivery::Failed
            }
        }
    }

    /// Raises `vector`.
    pub fn trigger(&mut self, vector: u16) -> MsixDelivery {
        if vector >= self.vectors() {
            return MsixDelivery::NoSuchVector;
        }
        if !self.enabled {
            return MsixDelivery::Disabled;
        }
        if self.masked(vector) {
            self.set_pending(vector, true);
            return MsixDelivery::Pending;
        }
        self.send(vector)
    }

    /// Reads the table at `offset` (any width; outside the table reads 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            let entry = off / MSIX_ENTRY_SIZE;
            *b = usize::try_from(entry)
                .ok()
                .and_then(|e| self.entries.get(e))
                .map_or(0, |e| e.bytes()[(off % MSIX_ENTRY_SIZE) as usize]);
        }
    }

    /// Writes the table at `offset` (any width; outside the table is
    /// ignored), then reports what changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched: Vec<u16> = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let off = offset.saturating_add(i as u64);
            let Some(e) = usize::try_from(off / MSIX_ENTRY_SIZE)
                .ok()
                .filter(|&e| e < self.entries.len())
            else {
                continue;
            };
            let mut bytes = self.entries[e].bytes();
            bytes[(off % MSIX_ENTRY_SIZE) as usize] = b;
            self.entries[e] = Entry::from_bytes(bytes);
            if touched.last() != Some(&(e as u16)) {
                touched.push(e as u16);
            }
        }
        for v in touched {
            self.refresh(v);
        }
    }

    /// Reads the PBA at `offset` (any width; outside reads 0).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            *b = usize::try_from(off / 8)
                .ok()
                .and_then(|q| self.pending.get(q))
                .map_or(0, |q| q.to_le_bytes()[(off % 8) as usize]);
        }
    }

    /// Power-on state (all vectors masked, nothing pending, disabled); the
    /// monitor hears about vectors that were unmasked.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::RESET);
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
        for v in 0..self.vectors() {
            self.refresh(v);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::config::PciIds;
    use std::sync::Mutex;

    /// Records what the device asked of the monitor.
    #[derive(Default)]
    pub struct MockMsi {
        pub sent: Mutex<Vec<u16>>,
        pub updates: Mutex<Vec<MsixVectorUpdate>>,
    }

    impl MockMsi {
        pub fn take_sent(&self) -> Vec<u16> {
            std::mem::take(&mut *self.sent.lock().expect("not poisoned"))
        }
        pub fn take_updates(&self) -> Vec<MsixVectorUpdate> {
            std::mem::take(&mut *self.updates.lock().expect("not poisoned"))
        }
    }

    impl MsiInterrupt for MockMsi {
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.sent.lock().expect("not poisoned").push(vector);
            Ok(())
        }
        fn update(&self, update: &MsixVectorUpdate) {
            self.updates.lock().expect("not poisoned").push(*update);
        }
    }

    fn setup(vectors: u16) -> (Msix, ConfigSpace, u16, Arc<MockMsi>) {
        let msi = Arc::new(MockMsi::default());
        let mut m = Msix::new(vectors, msi.clone()).expect("valid");
        let mut c = ConfigSpace::new(PciIds {
            vendor: 1,
            device: 2,
            subsystem_vendor: 0,
            subsystem: 0,
            revision: 0,
            class: 0,
        });
        let cap = m
            .add_capability(
                &mut c,
                BarLocation {
                    bar: 2,
                    offset: 0x4000,
                },
                BarLocation {
                    bar: 2,
                    offset: 0x5000,
                },
            )
            .expect("room");
        (m, c, cap, msi)
    }

    fn set_control(m: &mut Msix, c: &mut ConfigSpace, cap: u16, v: u16) {
        c.write(cap + 2, &v.to_le_bytes());
        m.config_written(c);
    }

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        m.write_table(v * 16, &(addr as u32).to_le_bytes());
        m.write_table(v * 16 + 4, &((addr >> 32) as u32).to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
        m.write_table(v * 16 + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn capability_layout() {
        let (_, c, cap, _) = setup(3);
        assert_eq!(c.read_u8(cap), MSIX_CAPABILITY_ID);
        assert_eq!(c.read_u16(cap + 2), 2);
        assert_eq!(c.read_u32(cap + 4), 0x4002);
        assert_eq!(c.read_u32(cap + 8), 0x5002);
        let mut c2 = c.clone();
        // Table size is read-only; enable and mask are writable.
        c2.write(cap + 2, &0xffffu16.to_le_bytes());
        assert_eq!(c2.read_u16(cap + 2), 0xc002);
        assert!(Msix::new(0, Arc::new(MockMsi::default())).is_err());
        assert!(Msix::new(2049, Arc::new(MockMsi::default())).is_err());
        assert_eq!(Msix::pba_size(65), 16);
        assert_eq!(Msix::table_size(3), 48);
    }

    #[test]
    fn table_programming_reports_routes() {
        let (mut m, mut c, cap, msi) = setup(4);
        // Entries reset masked.
        let mut b = [0u8; 4];
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        set_control(&mut m, &mut c, cap, MSIX_ENABLE);
        // Enabling with every entry masked reports nothing new.
        assert!(msi.take_updates().is_empty());
        program(&mut m, 1, 0xfee0_1000, 0x4041, false);
        let updates = msi.take_updates();
        // Address and data changes were reported while masked, then the unmask.
        assert_eq!(
            updates.last(),
            Some(&MsixVectorUpdate {
                vector: 1,
                message: MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x4041
                },
                masked: false
            })
        );
        assert!(updates[..updates.len() - 1].iter().all(|u| u.masked));
        // Read back as a qword.
        let mut q = [0u8; 8];
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        assert_eq!(m.trigger(1), MsixDelivery::Sent);
        assert_eq!(msi.take_sent(), vec![1]);
        // Reserved vector-control bits stay 0.
        m.write_table(16 + 12, &0xffff_fffeu32.to_le_bytes());
        m.read_table(16 + 12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
    }

    #[test]
    fn masked_vectors_become_pending_and_fire_on_unmask() {
        let (mut m, mut c, cap, msi) = setup(2);
        assert_eq!(m.trigger(0), MsixDelivery::Disabled);
        set_control(&mut m, &mut c, cap, MSIX_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x30, true);
        assert_eq!(m.trigger(0), MsixDelivery::Pending);
        assert!(m.is_pending(0));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1);
        assert!(msi.take_sent().is_empty());
        // Unmask: delivered once, pending cleared.
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(msi.take_sent(), vec![0]);
        assert!(!m.is_pending(0));
        // Function mask: pending again, delivered when lifted.
        set_control(&mut m, &mut c, cap, MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert!(msi.take_updates().iter().any(|u| u.vector == 0 && u.masked));
        assert_eq!(m.trigger(0), MsixDelivery::Pending);
        set_control(&mut m, &mut c, cap, MSIX_ENABLE);
        assert_eq!(msi.take_sent(), vec![0]);
        assert!(msi
            .take_updates()
            .iter()
            .any(|u| u.vector == 0 && !u.masked));
        // Disabling reports the vector masked; triggers say Disabled.
        set_control(&mut m, &mut c, cap, 0);
        assert!(msi.take_updates().iter().any(|u| u.vector == 0 && u.masked));
        assert_eq!(m.trigger(0), MsixDelivery::Disabled);
        assert_eq!(m.trigger(2), MsixDelivery::NoSuchVector);
    }

    #[test]
    fn hostile_table_accesses_are_harmless() {
        let (mut m, mut c, cap, msi) = setup(2);
        set_control(&mut m, &mut c, cap, MSIX_ENABLE);
        m.write_table(32, &[0xff; 8]);
        m.write_table(u64::MAX - 2, &[0xff; 8]);
        m.write_table(28, &[0, 0, 0, 0, 0x11, 0x22]);
        let mut b = [0xaa; 8];
        m.read_table(u64::MAX, &mut b);
        assert_eq!(b, [0; 8]);
        m.read_pba(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 8]);
        // The straddling write unmasked vector 1 (its control word) and
        // dropped the bytes for the absent vector 2.
        let mut e = [0u8; 16];
        m.read_table(16, &mut e);
        assert_eq!(&e[12..], &[0, 0, 0, 0]);
        assert_eq!(m.trigger(1), MsixDelivery::Sent);
        let _ = msi.take_updates();
        // Reset masks everything again and says so.
        m.reset();
        assert!(msi.take_updates().iter().any(|u| u.vector == 1 && u.masked));
        assert!(!m.enabled());
    }
}
