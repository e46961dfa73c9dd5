//! virtio-net (virtio 1.x, 5.1), one queue pair: receiveq 0 with posted device-writable
//! buffers, transmitq 1. Every packet starts with a 12-byte `virtio_net_hdr_v1` (flags,
//! gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers); no offloads, no
//! mergeable buffers, so the header is all zeros on transmit.

use alloc::vec::Vec;

use super::{Buf, Options, QueueError, Transport, Virtqueue, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::heap::PAGE_SIZE;
use crate::kit::Fail;
use crate::pci::{Function, Pci};
use crate::time::Deadline;
use crate::{ensure, heap};

pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_MQ: u64 = 1 << 22;
/// Status field: link up.
pub const S_LINK_UP: u16 = 1;

/// Device feature names, for printing.
pub const FEATURE_NAMES: &[(u32, &str)] = &[
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (2, "CTRL_GUEST_OFFLOADS"),
    (3, "MTU"),
    (5, "MAC"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (9, "GUEST_ECN"),
    (10, "GUEST_UFO"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (13, "HOST_ECN"),
    (14, "HOST_UFO"),
    (15, "MRG_RXBUF"),
    (16, "STATUS"),
    (17, "CTRL_VQ"),
    (18, "CTRL_RX"),
    (19, "CTRL_VLAN"),
    (21, "GUEST_ANNOUNCE"),
    (22, "MQ"),
    (23, "CTRL_MAC_ADDR"),
];

/// The header's size with VERSION_1.
pub const HDR_LEN: usize = 12;
/// Receive buffers kept posted, and their size (header + a full Ethernet frame).
const RX_SLOTS: u16 = 16;
const RX_SLOT_LEN: u32 = 2048;
/// The MAC used when the device offers none (locally administered).
const FALLBACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x76, 0x69, 0x72];
pub const TIMEOUT_MS: u64 = 5_000;

/// A virtio-net device with its first queue pair running.
#[derive(Debug)]
pub struct Net {
    pub t: Transport,
    pub rx: Virtqueue,
    pub tx: Virtqueue,
    pub mac: [u8; 6],
    /// Whether the MAC came from the device.
    pub mac_from_device: bool,
    pub mtu: Option<u16>,
    rx_buf: u64,
    rx_slot: Vec<u16>,
    tx_buf: u64,
}

impl Net {
    pub fn open(pci: &Pci, f: &Function, opts: &Options) -> Result<Self, Fail> {
        let mut t = Transport::open(pci, f, opts.mode)?;
        let mut wanted = F_MAC | F_STATUS | F_MTU;
        if opts.indirect {
            wanted |= F_INDIRECT_DESC;
        }
        if opts.event_idx {
            wanted |= F_EVENT_IDX;
        }
        let features = t.negotiate(wanted)?;
        let mut mac = FALLBACK_MAC;
        if features & F_MAC != 0 {
            for (i, byte) in mac.iter_mut().enumerate() {
                *byte = t.cfg(i as u64, 1)? as u8;
            }
        }
        let mtu = if features & F_MTU != 0 {
            Some(t.cfg(10, 2)? as u16)
        } else {
            None
        };
        let rx = t.setup_queue(0, opts.queue_size)?;
        let tx = t.setup_queue(1, opts.queue_size)?;
        let rx_buf = heap::alloc_pages(u64::from(RX_SLOTS) * u64::from(RX_SLOT_LEN) / PAGE_SIZE)?;
        let tx_buf = heap::alloc_pages(1)?;
        t.driver_ok()?;
        let size = usize::from(rx.size);
        let mut net = Self {
            t,
            rx,
            tx,
            mac,
            mac_from_device: features & F_MAC != 0,
            mtu,
            rx_buf,
            rx_slot: alloc::vec![0; size],
            tx_buf,
        };
        for slot in 0..RX_SLOTS.min(net.rx.size) {
            net.post_rx(slot)?;
        }
        net.rx.kick();
        Ok(net)
    }

    fn post_rx(&mut self, slot: u16) -> Result<(), Fail> {
        let addr = self.rx_buf + u64::from(slot) * u64::from(RX_SLOT_LEN);
        let head = self.rx.submit(&[Buf::inn(addr, RX_SLOT_LEN)])?;
        self.rx_slot[usize::from(head)] = slot;
        Ok(())
    }

    /// The link state (None without VIRTIO_NET_F_STATUS: then the link is up).
    pub fn link_up(&self) -> Result<Option<bool>, Fail> {
        if self.t.features & F_STATUS == 0 {
            return Ok(None);
        }
        Ok(Some(self.t.cfg(6, 2)? as u16 & S_LINK_UP != 0))
    }

    /// Sends one Ethernet frame (without FCS) and waits until the device has taken it.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Fail> {
        ensure!(
            HDR_LEN + frame.len() <= PAGE_SIZE as usize,
            "a {}-byte frame does not fit the transmit page",
            frame.len()
        );
        // SAFETY: this driver's transmit page; nothing is in flight on the queue.
        unsafe {
            core::ptr::write_bytes(self.tx_buf as *mut u8, 0, HDR_LEN);
            core::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                (self.tx_buf + HDR_LEN as u64) as *mut u8,
                frame.len(),
            );
        }
        let head = self
            .tx
            .submit(&[Buf::out(self.tx_buf, (HDR_LEN + frame.len()) as u32)])?;
        self.tx.kick();
        let used = self.t.wait_used(&mut self.tx, TIMEOUT_MS)?;
        ensure!(
            used.known && used.id == u32::from(head),
            "transmitq: the device returned chain {} (in flight: {head})",
            used.id
        );
        Ok(())
    }

    /// The next received frame (header stripped), or None by the deadline.
    pub fn recv(&mut self, deadline: &Deadline) -> Result<Option<Vec<u8>>, Fail> {
        let left_ms = deadline.remaining_us().div_ceil(1000);
        if left_ms == 0 && !self.rx.has_used() {
            return Ok(None);
        }
        let used = match self.t.wait_used(&mut self.rx, left_ms.max(1)) {
            Ok(used) => used,
            Err(QueueError::Timeout(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        ensure!(
            used.known && used.len as usize >= HDR_LEN && used.len <= RX_SLOT_LEN,
            "receiveq: used entry {} len {} (unknown chain, shorter than the header or longer \
             than the buffer)",
            used.id,
            used.len
        );
        let slot = self.rx_slot[used.id as usize];
        let addr = self.rx_buf + u64::from(slot) * u64::from(RX_SLOT_LEN);
        let mut frame = Vec::with_capacity(used.len as usize - HDR_LEN);
        for i in HDR_LEN as u64..u64::from(used.len) {
            // SAFETY: a receive slot the device has finished with.
            frame.push(unsafe { core::ptr::read_volatile((addr + i) as *const u8) });
        }
        self.post_rx(slot)?;
        self.rx.kick();
        Ok(Some(frame))
    }
}
