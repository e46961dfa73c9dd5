//! virtio-rng (virtio 1.x, 5.4): one request queue of device-writable buffers the device
//! fills with entropy.

use alloc::vec::Vec;

use super::{Buf, Options, Transport, Virtqueue, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::heap::PAGE_SIZE;
use crate::kit::Fail;
use crate::pci::{Function, Pci};
use crate::{ensure, heap};

/// How long one request may take.
pub const TIMEOUT_MS: u64 = 5_000;

/// A virtio-rng device, ready for requests.
#[derive(Debug)]
pub struct Rng {
    pub t: Transport,
    pub q: Virtqueue,
    buf: u64,
}

impl Rng {
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
        let q = t.setup_queue(0, opts.queue_size)?;
        let buf = heap::alloc_pages(1)?;
        t.driver_ok()?;
        Ok(Self { t, q, buf })
    }

    /// One request for up to `len` bytes (at most a page); returns what the device wrote
    /// (it may write fewer bytes than asked).
    pub fn read(&mut self, len: u32) -> Result<Vec<u8>, Fail> {
        let len = len.min(PAGE_SIZE as u32);
        // SAFETY: this driver's buffer page; nothing is in flight.
        unsafe { core::ptr::write_bytes(self.buf as *mut u8, 0, len as usize) };
        let head = self.q.submit(&[Buf::inn(self.buf, len)])?;
        self.q.kick();
        let used = self.t.wait_used(&mut self.q, TIMEOUT_MS)?;
        ensure!(
            used.known && used.id == u32::from(head),
            "the device returned chain {} (in flight: {head})",
            used.id
        );
        ensure!(
            used.len <= len,
            "the device says it wrote {} bytes into a {len}-byte buffer",
            used.len
        );
        let mut out = Vec::with_capacity(used.len as usize);
        for i in 0..u64::from(used.len) {
            // SAFETY: as above; the device is done with the buffer.
            out.push(unsafe { core::ptr::read_volatile((self.buf + i) as *const u8) });
        }
        Ok(out)
    }
}
