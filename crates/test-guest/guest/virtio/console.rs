//! virtio-console (virtio 1.x, 5.3), port 0 only: without VIRTIO_CONSOLE_F_MULTIPORT the
//! device has one port, receiveq 0 and transmitq 1, and it is the console (hvc0 in a
//! Linux guest).

use alloc::string::String;
use alloc::vec::Vec;

use super::{Buf, Options, QueueError, Transport, Virtqueue, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::heap::PAGE_SIZE;
use crate::kit::Fail;
use crate::pci::{Function, Pci};
use crate::time::Deadline;
use crate::{ensure, heap};

/// Receive buffers kept posted, and their size.
const RX_SLOTS: u16 = 8;
const RX_SLOT_LEN: u32 = 256;
/// How long one transmission may take.
pub const TIMEOUT_MS: u64 = 5_000;

/// Port 0 of a virtio-console device.
#[derive(Debug)]
pub struct Console {
    pub t: Transport,
    pub rx: Virtqueue,
    pub tx: Virtqueue,
    rx_buf: u64,
    /// Receive slot of each posted chain, by head.
    rx_slot: Vec<u16>,
    tx_buf: u64,
    /// Received bytes not yet returned by `read_line`.
    pending: Vec<u8>,
}

impl Console {
    pub fn open(pci: &Pci, f: &Function, opts: &Options) -> Result<Self, Fail> {
        let mut t = Transport::open(pci, f, opts.mode)?;
        let mut wanted = 0;
        if opts.indirect {
            wanted |= F_INDIRECT_DESC;
        }
        if opts.event_idx {
            wanted |= F_EVENT_IDX;
        }
        t.negotiate(wanted)?;
        let rx = t.setup_queue(0, opts.queue_size)?;
        let tx = t.setup_queue(1, opts.queue_size)?;
        let rx_buf =
            heap::alloc_pages(u64::from(RX_SLOTS) * u64::from(RX_SLOT_LEN) / PAGE_SIZE + 1)?;
        let tx_buf = heap::alloc_pages(1)?;
        t.driver_ok()?;
        let size = usize::from(rx.size);
        let mut console = Self {
            t,
            rx,
            tx,
            rx_buf,
            rx_slot: alloc::vec![0; size],
            tx_buf,
            pending: Vec::new(),
        };
        for slot in 0..RX_SLOTS.min(console.rx.size) {
            console.post_rx(slot)?;
        }
        console.rx.kick();
        Ok(console)
    }

    fn post_rx(&mut self, slot: u16) -> Result<(), Fail> {
        let addr = self.rx_buf + u64::from(slot) * u64::from(RX_SLOT_LEN);
        let head = self.rx.submit(&[Buf::inn(addr, RX_SLOT_LEN)])?;
        self.rx_slot[usize::from(head)] = slot;
        Ok(())
    }

    /// Sends bytes on port 0 (in page-sized pieces, each waited for).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        for piece in bytes.chunks(PAGE_SIZE as usize) {
            // SAFETY: this driver's transmit page; nothing is in flight on the queue.
            unsafe {
                core::ptr::copy_nonoverlapping(piece.as_ptr(), self.tx_buf as *mut u8, piece.len())
            };
            let head = self
                .tx
                .submit(&[Buf::out(self.tx_buf, piece.len() as u32)])?;
            self.tx.kick();
            let used = self.t.wait_used(&mut self.tx, TIMEOUT_MS)?;
            ensure!(
                used.known && used.id == u32::from(head),
                "transmitq: the device returned chain {} (in flight: {head})",
                used.id
            );
        }
        Ok(())
    }

    /// Reads one line (without its `\n`; a `\r` before it is dropped) from port 0, or None
    /// if none arrives by the deadline.
    pub fn read_line(&mut self, deadline: &Deadline) -> Result<Option<String>, Fail> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            let left_ms = deadline.remaining_us().div_ceil(1000);
            if left_ms == 0 {
                return Ok(None);
            }
            let used = match self.t.wait_used(&mut self.rx, left_ms) {
                Ok(used) => used,
                Err(QueueError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            ensure!(
                used.known && used.len <= RX_SLOT_LEN,
                "receiveq: used entry {} len {} (unknown chain or longer than the buffer)",
                used.id,
                used.len
            );
            let slot = self.rx_slot[used.id as usize];
            let addr = self.rx_buf + u64::from(slot) * u64::from(RX_SLOT_LEN);
            for i in 0..u64::from(used.len) {
                // SAFETY: a receive slot the device has finished with.
                self.pending
                    .push(unsafe { core::ptr::read_volatile((addr + i) as *const u8) });
            }
            self.post_rx(slot)?;
            self.rx.kick();
        }
    }
}
