//! The virtio-pci modern transport (virtio 1.2, section 4.1), virtio 1.x
//! only: no legacy I/O BAR, VIRTIO_F_VERSION_1 required.
//!
//! # What the guest sees
//! - IDs: vendor 0x1af4, device 0x1040 + device type, revision 1,
//!   subsystem 0x1af4:0x1100; class by device type (console 07/80, others
//!   ff/00 unless listed in [`class_code`]).
//! - One 64-bit memory BAR ([`VIRTIO_BAR`], non-prefetchable: the ISR
//!   read clears it) laid out as:
//!
//! | offset | structure | capability |
//! |---|---|---|
//! | 0x0000 | common configuration (0x38 bytes) | cfg_type 1 |
//! | 0x1000 | ISR status (1 byte, read-to-clear) | cfg_type 3 |
//! | 0x2000 | device configuration | cfg_type 4 (if the device has one) |
//! | 0x3000 | notifications: 4 bytes per queue (queue_notify_off = queue index, notify_off_multiplier = 4) | cfg_type 2 |
//! | 0x4000 | MSI-X table (queues + 1 vectors) | MSI-X |
//! | after the table, page aligned | MSI-X PBA | MSI-X |
//!
//!   plus the PCI configuration access capability (cfg_type 5), through
//!   which the driver can reach the BAR from configuration space.
//! - MSI-X vectors: the driver assigns one to the configuration change
//!   event (config_msix_vector) and one per queue (queue_msix_vector); a
//!   vector past the table reads back as NO_VECTOR (0xffff). Without MSI-X
//!   enabled, interrupts set the ISR bits and trigger the optional INTx line
//!   (pin INTA#).
//!
//! # Wiring
//! - After the BAR moves, [`PciDevice::ioevents`] lists one 2-byte MMIO
//!   doorbell per queue (`token` = queue index): register an ioeventfd on
//!   each and call [`PciDevice::ioevent`] (or
//!   [`VirtioPciDevice::process_queue`]) when it fires. Without ioeventfds
//!   the doorbell writes reach [`PciDevice::bar_write`], which does the same.
//! - [`VirtioPciDevice::set_guest_memory`] before the driver sets DRIVER_OK,
//!   and again after every machine reset that rebuilds guest memory.
//! - Interrupts go to the [`MsiInterrupt`] given at construction. The
//!   optional INTx line is raised with [`Interrupt::trigger`] (an edge);
//!   PCI INTx is level-triggered, so a monitor wiring it to an IOAPIC pin
//!   should use an irqfd with a resample eventfd and re-raise while the ISR
//!   byte is non-zero. Linux uses MSI-X whenever the capability is there.
//! - The monitor's [`MsiInterrupt`] runs with this device's MSI-X state
//!   locked: it must not call back into the device.

mod common;
mod interrupt;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};

use self::interrupt::Shared;
use crate::pci::config::{ConfigSpace, PciIds};
use crate::pci::msix::{BarLocation, Msix};
use crate::pci::{BarKind, BarSpec, DecodedBar, IoEvent, MsiInterrupt, PciDevice, PciError};
use crate::ratelimit::RateLimitedLog;
use crate::virtio::{GuestMemoryMmap, VirtioDevice, TYPE_BLOCK, TYPE_CONSOLE, TYPE_NET};
use crate::Interrupt;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Device ID of a modern virtio device of type 0 (add the device type).
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// The BAR holding every virtio structure and the MSI-X table.
pub const VIRTIO_BAR: u8 = 0;
/// Offset of the common configuration structure.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (through queue_device).
pub const COMMON_CFG_LEN: u64 = 0x38;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' doorbells.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// "No vector" in config_msix_vector / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
/// Most queues a device may have (the notification area is one page).
pub const MAX_QUEUES: usize = 1024;
/// Largest split ring (virtio 1.2, section 2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size of each region before the MSI-X table.
const REGION: u64 = 0x1000;

/// Capability ID of vendor-specific capabilities.
const CAP_VENDOR: u8 = 0x09;
/// virtio_pci_cap.cfg_type values.
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// The PCI class code the transport gives a device type.
pub fn class_code(device_type: u32) -> u32 {
    match device_type {
        TYPE_NET => 0x02_00_00,
        TYPE_BLOCK => 0x01_00_00,
        TYPE_CONSOLE => 0x07_80_00,
        _ => 0xff_00_00,
    }
}

const fn align_page(x: u64) -> u64 {
    (x + REGION - 1) & !(REGION - 1)
}

/// The driver-visible registers of one queue.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    max: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max: u16) -> QueueRegs {
        QueueRegs {
            max,
            size: max,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// A virtio device on the virtio-pci transport.
pub struct VirtioPciDevice<D: VirtioDevice> {
    device: D,
    config: ConfigSpace,
    shared: Arc<Shared>,
    mem: Option<GuestMemoryMmap>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    active: bool,
    pci_cfg_cap: u16,
    pba_offset: u64,
    log: RateLimitedLog,
}

fn lock_msix(m: &Mutex<Msix>) -> MutexGuard<'_, Msix> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A virtio_pci_cap body (after the ID and next bytes).
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let cap_len = 16 + extra.len() as u8;
    let mut b = vec![cap_len, cfg_type, VIRTIO_BAR, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// Wraps `device`, sending MSI-X messages through `msi` and, when MSI-X
    /// is off, raising `intx` (if any).
    pub fn new(
        device: D,
        msi: Arc<dyn MsiInterrupt>,
        intx: Option<Arc<dyn Interrupt>>,
    ) -> Result<VirtioPciDevice<D>, PciError> {
        let maxes = device.queue_max_sizes().to_vec();
        if maxes.is_empty() || maxes.len() > MAX_QUEUES {
            return Err(PciError::InvalidDevice("queue count not in 1..=1024"));
        }
        if maxes
            .iter()
            .any(|&m| !m.is_power_of_two() || m > MAX_QUEUE_SIZE)
        {
            return Err(PciError::InvalidDevice(
                "queue size not a power of two up to 32768",
            ));
        }
        let config_size = device.config_size() as u64;
        if config_size > REGION {
            return Err(PciError::InvalidDevice(
                "device configuration larger than 4 KiB",
            ));
        }
        let vectors = maxes.len() as u16 + 1;
        let pba_offset = MSIX_TABLE_OFFSET + align_page(Msix::table_size(vectors));
        let bar_size = (pba_offset + align_page(Msix::pba_size(vectors))).next_power_of_two();

        let dtype = device.device_type();
        let mut config = ConfigSpace::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE.wrapping_add(dtype as u16),
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x1100,
            revision: 1,
            class: class_code(dtype),
        });
        if intx.is_some() {
            config.set_interrupt_pin(1);
        }
        config.add_bar(BarSpec {
            index: VIRTIO_BAR,
            size: bar_size,
            kind: BarKind::Mmio64,
            prefetchable: false,
        })?;
        let mut msix = Msix::new(vectors, msi)?;
        msix.add_capability(
            &mut config,
            BarLocation {
                bar: VIRTIO_BAR,
                offset: MSIX_TABLE_OFFSET as u32,
            },
            BarLocation {
                bar: VIRTIO_BAR,
                offset: pba_offset as u32,
            },
        )?;
        config.add_capability(
            CAP_VENDOR,
            &virtio_cap(CFG_COMMON, COMMON_CFG_OFFSET, COMMON_CFG_LEN, &[]),
        )?;
        let notify_len = maxes.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        config.add_capability(
            CAP_VENDOR,
            &virtio_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
        )?;
        config.add_capability(CAP_VENDOR, &virtio_cap(CFG_ISR, ISR_OFFSET, 1, &[]))?;
        if config_size > 0 {
            config.add_capability(
                CAP_VENDOR,
                &virtio_cap(CFG_DEVICE, DEVICE_CFG_OFFSET, config_size, &[]),
            )?;
        }
        let pci_cfg_cap = config.add_capability(CAP_VENDOR, &virtio_cap(CFG_PCI, 0, 0, &[0; 4]))?;
        // bar, offset and length of the access window are the driver's.
        config.set_writable(pci_cfg_cap + 4, &[0xff]);
        config.set_writable(pci_cfg_cap + 8, &[0xff; 8]);

        Ok(VirtioPciDevice {
            shared: Arc::new(Shared::new(msix, maxes.len(), intx)),
            queues: maxes.iter().map(|&m| QueueRegs::new(m)).collect(),
            device,
            config,
            mem: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            active: false,
            pci_cfg_cap,
            pba_offset,
            log: RateLimitedLog::default(),
        })
    }

    /// Sets the guest memory the device will use from the next DRIVER_OK.
    pub fn set_guest_memory(&mut self, mem: GuestMemoryMmap) {
        self.mem = Some(mem);
    }

    /// The wrapped device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The wrapped device, mutably (e.g. to offer console input).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u8 {
        self.status | self.shared.needs_reset_bit()
    }

    /// Whether the device is live (DRIVER_OK accepted, not reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The driver notified queue `index`: let the device serve it.
    pub fn process_queue(&mut self, index: u16) {
        if self.active && self.shared.needs_reset_bit() == 0 {
            self.device.process_queue(index);
        }
    }

    fn notify_base(&self) -> Option<u64> {
        self.config
            .decoded_bar(VIRTIO_BAR)
            .map(|b| b + NOTIFY_OFFSET)
    }

    /// Where the pci_cfg_data window of the configuration access capability
    /// is, and what it points at: `(bar, offset, length)`.
    fn pci_cfg_window(&self) -> (u8, u32, u32) {
        let cap = self.pci_cfg_cap;
        (
            self.config.read_u8(cap + 4),
            self.config.read_u32(cap + 8),
            self.config.read_u32(cap + 12),
        )
    }

    /// The window access, if `offset`/`len` is exactly an access of the
    /// programmed length to pci_cfg_data, and the programmed target is
    /// valid (our BAR, length 1, 2 or 4, offset aligned to it).
    fn pci_cfg_target(&self, offset: u16, len: usize) -> Option<(u64, usize)> {
        if offset != self.pci_cfg_cap + 16 {
            return None;
        }
        let (bar, off, length) = self.pci_cfg_window();
        let ok = bar == VIRTIO_BAR
            && matches!(length, 1 | 2 | 4)
            && off.is_multiple_of(length)
            && len == length as usize;
        ok.then_some((u64::from(off), len))
    }

    fn in_pci_cfg_data(&self, offset: u16, len: usize) -> bool {
        let data = self.pci_cfg_cap + 16;
        offset < data + 4 && offset + len as u16 > data
    }

    /// Full virtio reset (status 0 written, or a PCI-level reset).
    fn virtio_reset(&mut self) {
        self.device.reset();
        self.active = false;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max);
        }
        self.shared.reset();
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPciDevice<D> {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        if self.in_pci_cfg_data(offset, data.len()) {
            data.fill(0);
            if let Some((off, len)) = self.pci_cfg_target(offset, data.len()) {
                self.bar_read(VIRTIO_BAR, off, &mut data[..len]);
            }
            return;
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        if self.in_pci_cfg_data(offset, data.len()) {
            if let Some((off, len)) = self.pci_cfg_target(offset, data.len()) {
                self.bar_write(VIRTIO_BAR, off, &data[..len]);
            }
            return;
        }
        self.config.write(offset, data);
        lock_msix(&self.shared.msix).config_written(&self.config);
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

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if index != VIRTIO_BAR {
            data.fill(0xff);
            return;
        }
        let msix_end = self.pba_offset + REGION;
        match offset {
            o if o < ISR_OFFSET => self.common_read(o - COMMON_CFG_OFFSET, data),
            ISR_OFFSET => {
                if let Some(b) = data.first_mut() {
                    *b = self.shared.take_isr();
                }
            }
            o if (DEVICE_CFG_OFFSET..NOTIFY_OFFSET).contains(&o) => {
                let rel = o - DEVICE_CFG_OFFSET;
                let size = self.device.config_size() as u64;
                if rel < size {
                    let n = ((size - rel) as usize).min(data.len());
                    self.device.read_config(rel, &mut data[..n]);
                }
            }
            o if (MSIX_TABLE_OFFSET..self.pba_offset).contains(&o) => {
                lock_msix(&self.shared.msix).read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (self.pba_offset..msix_end).contains(&o) => {
                lock_msix(&self.shared.msix).read_pba(o - self.pba_offset, data)
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if index != VIRTIO_BAR {
            return;
        }
        match offset {
            o if o < ISR_OFFSET => self.common_write(o - COMMON_CFG_OFFSET, data),
            o if (DEVICE_CFG_OFFSET..NOTIFY_OFFSET).contains(&o) => {
                let rel = o - DEVICE_CFG_OFFSET;
                let size = self.device.config_size() as u64;
                if rel < size {
                    let n = ((size - rel) as usize).min(data.len());
                    self.device.write_config(rel, &data[..n]);
                }
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER);
                if q < self.queues.len() as u64 {
                    self.process_queue(q as u16);
                }
            }
            o if (MSIX_TABLE_OFFSET..self.pba_offset).contains(&o) => {
                lock_msix(&self.shared.msix).write_table(o - MSIX_TABLE_OFFSET, data)
            }
            // ISR, PBA and holes are read-only.
            _ => {}
        }
    }

    fn ioevents(&self) -> Vec<IoEvent> {
        let Some(base) = self.notify_base() else {
            return Vec::new();
        };
        (0..self.queues.len() as u32)
            .map(|q| IoEvent {
                addr: base + u64::from(q * NOTIFY_OFF_MULTIPLIER),
                len: 2,
                memory: true,
                token: q,
            })
            .collect()
    }

    fn ioevent(&mut self, token: u32) {
        if let Ok(q) = u16::try_from(token) {
            self.process_queue(q);
        }
    }

    fn ioevent_pending(&self, token: u32) -> bool {
        self.active && u16::try_from(token).is_ok_and(|q| self.device.queue_has_more(q))
    }

    fn set_dma_memory(&mut self, mem: GuestMemoryMmap) {
        self.set_guest_memory(mem);
    }

    fn set_host_events(&mut self, events: Arc<dyn crate::HostEvents>) {
        self.device.set_host_events(events);
    }

    fn host_event(&mut self, token: u32) {
        self.device.host_event(token);
    }

    fn reset(&mut self) {
        self.virtio_reset();
        self.config.reset();
        lock_msix(&self.shared.msix).reset();
    }
}
