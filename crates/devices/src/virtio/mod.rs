//! virtio 1.x devices and their PCI transport.
//!
//! - [`VirtioDevice`] is transport-agnostic: device type, features, device
//!   configuration space, queues, activation and reset, and
//!   [`VirtioDevice::process_queue`], which the monitor calls when a queue's
//!   notification (its ioeventfd) fires.
//! - [`pci::VirtioPciDevice`] wraps one in the virtio-pci "modern" transport
//!   (virtio 1.x only) and implements [`PciDevice`](crate::pci::PciDevice).
//! - Rings come from the upstream `virtio-queue` crate; [`queue`] adds the
//!   checks that turn a malformed descriptor chain into a device that needs
//!   reset rather than a panic or a host-side error.
//! - Devices: [`rng`] (entropy from getrandom(2)) and [`console`] (an hvc
//!   port).
//!
//! # A broken driver
//! When the driver breaks the protocol (a malformed chain, a ring outside
//! memory), the device stops using its queues and calls
//! [`VirtioInterrupt::set_needs_reset`]: the transport sets
//! DEVICE_NEEDS_RESET in the device status and sends a configuration change
//! interrupt (virtio 1.2, section 2.1.2). Only a reset (status 0) brings the
//! device back. Guest-triggered log lines are rate limited.

pub mod block;
pub mod console;
pub mod net;
pub mod pci;
pub mod queue;
pub mod rng;

#[cfg(test)]
pub(crate) mod testutil;

use std::io;
use std::sync::Arc;

pub use virtio_queue::Queue;

use crate::HostEvents;

pub use crate::GuestMemoryMmap;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    use virtio_bindings::virtio_config as c;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = c::VIRTIO_CONFIG_S_DRIVER as u8;
    /// The driver is set up and the device is live.
    pub const DRIVER_OK: u8 = c::VIRTIO_CONFIG_S_DRIVER_OK as u8;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = c::VIRTIO_CONFIG_S_FEATURES_OK as u8;
    /// The device hit an unrecoverable error.
    pub const DEVICE_NEEDS_RESET: u8 = c::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
    /// The driver gave up on the device.
    pub const FAILED: u8 = c::VIRTIO_CONFIG_S_FAILED as u8;
}

/// VIRTIO_F_VERSION_1: virtio 1.x (required: no legacy interface).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// VIRTIO_RING_F_EVENT_IDX: used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// VIRTIO_RING_F_INDIRECT_DESC: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Features every device offers through the transport (the rings are
/// virtio-queue's, which implements both ring features).
pub const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;

/// Device type of a network card.
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Device type of a block device.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Device type of a console.
pub const TYPE_CONSOLE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
/// Device type of an entropy source.
pub const TYPE_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

/// What a device signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The device configuration (or status) changed.
    Config,
    /// Buffers were used in queue N.
    Queue(u16),
}

/// How a device reaches the driver; implemented by the transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals the driver.
    fn trigger(&self, interrupt: VirtioInterruptType) -> io::Result<()>;
    /// The driver broke the protocol: set DEVICE_NEEDS_RESET and send a
    /// configuration change interrupt.
    fn set_needs_reset(&self);
}

/// Reads device configuration space held as bytes: `data` gets the bytes
/// at `offset`, and 0 past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Why a device could not go live.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The device needs a queue the driver did not enable.
    #[error("queue {0} is required but not enabled")]
    QueueNotReady(u16),
    /// The number of queues does not match.
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
}

/// A virtio device, independent of its transport.
///
/// Queue processing happens on the caller's thread, in
/// [`VirtioDevice::process_queue`]; no device starts threads of its own.
/// Nothing here may panic on guest input.
pub trait VirtioDevice: Send {
    /// Device type (virtio 1.2, section 5: 1 net, 2 block, 3 console, 4
    /// entropy, ...).
    fn device_type(&self) -> u32;
    /// Device feature bits. The transport adds [`TRANSPORT_FEATURES`].
    fn features(&self) -> u64;
    /// Maximum size of each queue (a power of two, at most 32768); the
    /// length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Bytes of device configuration space (0: none).
    fn config_size(&self) -> usize {
        0
    }
    /// Reads device configuration space (outside it reads 0).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }
    /// Writes device configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Goes live with the negotiated `features`, guest memory and the
    /// queues as the driver set them up (`queues[i].ready()` tells which it
    /// enabled; ready ones are checked to lie in `mem`).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        features: u64,
    ) -> Result<(), ActivateError>;
    /// Returns to the pre-activation state, dropping queues and memory.
    fn reset(&mut self);
    /// The driver notified queue `index`: serve every available buffer.
    fn process_queue(&mut self, index: u16);
    /// Whether the last [`VirtioDevice::process_queue`] of `index` stopped
    /// with chains left because its per-call budget ran out (fairness
    /// between queues): the caller then calls it again after serving
    /// others. Without that, the leftover chains could wait forever, since
    /// with EVENT_IDX the driver need not notify about them again.
    fn queue_has_more(&self, index: u16) -> bool {
        let _ = index;
        false
    }
    /// Where to register the host file descriptors the device needs
    /// watched (see [`HostEvents`]). Called once, before activation, by a
    /// monitor that has an event loop; devices that have no such descriptors
    /// ignore it.
    fn set_host_events(&mut self, events: Arc<dyn HostEvents>) {
        let _ = events;
    }
    /// A descriptor registered through [`HostEvents::watch`] with `token`
    /// became readable. May come after a reset (a stale event): ignore
    /// tokens that are not live.
    fn host_event(&mut self, token: u32) {
        let _ = token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_values() {
        // virtio 1.2, sections 2.1, 5 and 6: the numbers drivers rely on.
        assert_eq!(
            [status::ACKNOWLEDGE, status::DRIVER, status::DRIVER_OK],
            [1, 2, 4]
        );
        assert_eq!(
            [
                status::FEATURES_OK,
                status::DEVICE_NEEDS_RESET,
                status::FAILED
            ],
            [8, 0x40, 0x80]
        );
        assert_eq!(TRANSPORT_FEATURES, (1 << 32) | (1 << 29) | (1 << 28));
        assert_eq!([TYPE_NET, TYPE_BLOCK, TYPE_CONSOLE, TYPE_RNG], [1, 2, 3, 4]);
    }
}
