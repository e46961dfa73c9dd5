//! The common configuration structure: feature negotiation, device status,
//! queue setup (virtio 1.2, section 4.1.4.3).
//!
//! | offset | field | access |
//! |---|---|---|
//! | 0x00 | device_feature_select (le32) | RW |
//! | 0x04 | device_feature (le32) | RO |
//! | 0x08 | driver_feature_select (le32) | RW |
//! | 0x0c | driver_feature (le32) | RW |
//! | 0x10 | config_msix_vector (le16) | RW |
//! | 0x12 | num_queues (le16) | RO |
//! | 0x14 | device_status (u8) | RW |
//! | 0x15 | config_generation (u8) | RO |
//! | 0x16 | queue_select (le16) | RW |
//! | 0x18 | queue_size (le16) | RW |
//! | 0x1a | queue_msix_vector (le16) | RW |
//! | 0x1c | queue_enable (le16) | RW |
//! | 0x1e | queue_notify_off (le16) | RO |
//! | 0x20 | queue_desc (le64) | RW |
//! | 0x28 | queue_driver (le64) | RW |
//! | 0x30 | queue_device (le64) | RW |
//!
//! Reads of any width return the bytes of this layout. Writes must hit one
//! field with its natural width (64-bit fields also as two dwords); others
//! are dropped with a rate-limited log line.
//!
//! # Status
//! Writing 0 resets the device. Otherwise the driver may only add bits.
//! FEATURES_OK sticks only if the accepted features are a subset of the
//! offered ones and include VIRTIO_F_VERSION_1 (the driver reads the status
//! back to learn this). DRIVER_OK activates the device: every enabled
//! queue must have a valid size and rings that are aligned and lie in guest
//! memory; otherwise the device sets DEVICE_NEEDS_RESET instead.

use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::interrupt::PciInterrupt;
use super::VirtioPciDevice;
use crate::guest_warn;
use crate::virtio::queue::queue_in_memory;
use crate::virtio::{
    status, Queue, VirtioDevice, VirtioInterrupt, TRANSPORT_FEATURES, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const LEN: usize = 0x38;

/// Replaces the low or high half of `v` (`high` selects).
fn set_half(v: u64, high: bool, half: u32) -> u64 {
    if high {
        (v & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (v & !0xffff_ffff) | u64::from(half)
    }
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// Feature bits offered to the driver.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    /// Feature bits the driver accepted (final once FEATURES_OK sticks).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn snapshot(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let mut put = |off: u64, bytes: &[u8]| {
            let off = off as usize;
            b[off..off + bytes.len()].copy_from_slice(bytes);
        };
        let half = |v: u64, select: u32| match select {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            DEVICE_FEATURE,
            &half(self.offered_features(), self.device_feature_select).to_le_bytes(),
        );
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            DRIVER_FEATURE,
            &half(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(
            CONFIG_MSIX_VECTOR,
            &self.shared.config_vector().to_le_bytes(),
        );
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(DEVICE_STATUS, &[self.status()]);
        put(CONFIG_GENERATION, &[self.shared.config_generation()]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        let q = usize::from(self.queue_select);
        if let Some(r) = self.queues.get(q) {
            put(QUEUE_SIZE, &r.size.to_le_bytes());
            put(
                QUEUE_MSIX_VECTOR,
                &self.shared.queue_vector(q).to_le_bytes(),
            );
            put(QUEUE_ENABLE, &u16::from(r.enabled).to_le_bytes());
            // queue_notify_off = queue index: doorbell at index * multiplier.
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &r.desc.to_le_bytes());
            put(QUEUE_DRIVER, &r.driver.to_le_bytes());
            put(QUEUE_DEVICE, &r.device.to_le_bytes());
        } else {
            // An absent queue reads size 0 ("unavailable") and NO_VECTOR.
            put(QUEUE_MSIX_VECTOR, &super::NO_VECTOR.to_le_bytes());
        }
        b
    }

    pub(super) fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let snap = self.snapshot();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| snap.get(o).copied())
                .unwrap_or(0);
        }
    }

    pub(super) fn common_write(&mut self, offset: u64, data: &[u8]) {
        let v = {
            let mut b = [0u8; 8];
            let n = data.len().min(8);
            b[..n].copy_from_slice(&data[..n]);
            u64::from_le_bytes(b)
        };
        let configurable = self.status & status::DRIVER_OK == 0;
        let q = usize::from(self.queue_select);
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (DRIVER_FEATURE, 4) => {
                if self.status & status::FEATURES_OK != 0 {
                    guest_warn!(self.log, "virtio-pci: features written after FEATURES_OK");
                    return;
                }
                match self.driver_feature_select {
                    0 => self.driver_features = set_half(self.driver_features, false, v as u32),
                    1 => self.driver_features = set_half(self.driver_features, true, v as u32),
                    _ => {}
                }
            }
            (CONFIG_MSIX_VECTOR, 2) => self.shared.set_config_vector(v as u16),
            (DEVICE_STATUS, 1) => self.set_status(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (QUEUE_MSIX_VECTOR, 2) => self.shared.set_queue_vector(q, v as u16),
            (QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC..=0x37, _) if !configurable => {
                guest_warn!(self.log, "virtio-pci: queue setup written after DRIVER_OK");
            }
            (QUEUE_SIZE, 2) => {
                if let Some(r) = self.queues.get_mut(q) {
                    r.size = v as u16;
                }
            }
            (QUEUE_ENABLE, 2) => {
                // Only 1 is valid; 0 needs VIRTIO_F_RING_RESET (not offered).
                if let (Some(r), 1) = (self.queues.get_mut(q), v) {
                    r.enabled = true;
                }
            }
            (o @ (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE), 4 | 8) => {
                self.set_ring_address(q, o, false, data.len() == 8, v);
            }
            (o, 4) if matches!(o, 0x24 | 0x2c | 0x34) => {
                self.set_ring_address(q, o - 4, true, false, v);
            }
            _ => guest_warn!(
                self.log,
                "virtio-pci: ignored common configuration write at {offset:#x} ({} bytes)",
                data.len()
            ),
        }
    }

    fn set_ring_address(&mut self, q: usize, field: u64, high: bool, whole: bool, v: u64) {
        let Some(r) = self.queues.get_mut(q) else {
            return;
        };
        let slot = match field {
            QUEUE_DESC => &mut r.desc,
            QUEUE_DRIVER => &mut r.driver,
            _ => &mut r.device,
        };
        *slot = if whole {
            v
        } else {
            set_half(*slot, high, v as u32)
        };
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.virtio_reset();
            return;
        }
        let value = value & !status::DEVICE_NEEDS_RESET;
        let old = self.status;
        if old & !value != 0 {
            guest_warn!(
                self.log,
                "virtio-pci: driver cleared status bits ({old:#x} -> {value:#x}); ignored"
            );
            return;
        }
        let added = value & !old;
        let mut new = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            guest_warn!(
                self.log,
                "virtio-pci: driver features {:#x} refused (offered {:#x})",
                self.driver_features,
                self.offered_features()
            );
            new &= !status::FEATURES_OK;
        }
        self.status = new;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered_features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// What `interrupt.set_needs_reset()` does, from the transport's side.
    fn needs_reset(&mut self, why: std::fmt::Arguments<'_>) {
        guest_warn!(self.log, "virtio-pci: {why}; the device needs a reset");
        PciInterrupt(self.shared.clone()).set_needs_reset();
    }

    /// The queues as the driver set them up, checked; `Err(index)` names
    /// the first bad enabled queue.
    fn build_queues(&self, mem: &crate::virtio::GuestMemoryMmap) -> Result<Vec<Queue>, u16> {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut out = Vec::with_capacity(self.queues.len());
        for (i, r) in self.queues.iter().enumerate() {
            let i = i as u16;
            // The max sizes were checked in new().
            let mut q = Queue::new(r.max).map_err(|_| i)?;
            if r.enabled {
                q.try_set_size(r.size).map_err(|_| i)?;
                q.try_set_desc_table_address(GuestAddress(r.desc))
                    .map_err(|_| i)?;
                q.try_set_avail_ring_address(GuestAddress(r.driver))
                    .map_err(|_| i)?;
                q.try_set_used_ring_address(GuestAddress(r.device))
                    .map_err(|_| i)?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !queue_in_memory(&q, mem) {
                    return Err(i);
                }
            }
            out.push(q);
        }
        Ok(out)
    }

    fn activate(&mut self) {
        let needed = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        if self.status & needed != needed {
            let s = self.status;
            self.needs_reset(format_args!(
                "DRIVER_OK without feature negotiation (status {s:#x})"
            ));
            return;
        }
        let Some(mem) = self.mem.clone() else {
            self.needs_reset(format_args!(
                "DRIVER_OK before the monitor gave guest memory"
            ));
            return;
        };
        let queues = match self.build_queues(&mem) {
            Ok(q) => q,
            Err(i) => {
                self.needs_reset(format_args!(
                    "queue {i} has an invalid size or rings outside memory"
                ));
                return;
            }
        };
        let interrupt = Arc::new(PciInterrupt(self.shared.clone()));
        match self
            .device
            .activate(mem, queues, interrupt, self.driver_features)
        {
            Ok(()) => self.active = true,
            Err(e) => self.needs_reset(format_args!("activation failed: {e}")),
        }
    }
}
