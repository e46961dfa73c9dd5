//! The split virtqueue (virtio 1.x, 2.7): descriptor table, available (driver) ring and used
//! (device) ring in pages from the kit's heap, identity mapped so their addresses are what
//! the device is given.
//!
//! Layout, each part in its own pages: descriptors (16 bytes: addr, len, flags, next),
//! available ring (flags, idx, ring[size], used_event), used ring (flags, idx,
//! ring[size] of {id, len}, avail_event). With INDIRECT_DESC, a further area holds one
//! indirect table of [`INDIRECT_MAX`] descriptors per descriptor slot.
//!
//! All ring memory is accessed with volatile reads and writes; fences order the publication
//! of descriptors, then the ring entry, then the index, then the notification.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::heap::{self, PAGE_SIZE};
use crate::io;
use crate::kit::Fail;
use crate::{ensure, fail};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want interrupts (without EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want notifications (without EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// Descriptors per indirect table.
pub const INDIRECT_MAX: u16 = 32;
const DESC_SIZE: u64 = 16;

/// A buffer in a request: guest-physical address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Buf {
    /// A buffer the device reads.
    pub fn out(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }

    /// A buffer the device writes.
    pub fn inn(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// A raw descriptor, for tests that build chains by hand.
#[derive(Clone, Copy, Debug, Default)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A used ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The head of the chain the device used.
    pub id: u32,
    /// Bytes the device wrote into the chain's device-writable buffers.
    pub len: u32,
    /// Whether `id` was a chain the driver had in flight (false: the device returned
    /// something never made available, or twice).
    pub known: bool,
}

/// One split virtqueue.
#[derive(Debug)]
pub struct Virtqueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Pages holding all of the above (and the indirect tables), for re-zeroing.
    mem: u64,
    mem_pages: u64,
    /// One indirect table per descriptor slot (0: INDIRECT_DESC not in use).
    indirect: u64,
    notify_addr: u64,
    pub event_idx: bool,
    /// The IDT vector this queue's MSI-X entry delivers (None: polled).
    pub vector: Option<u8>,
    free: Vec<u16>,
    /// Per head: the descriptor slots its chain occupies (empty: not in flight).
    chains: Vec<Vec<u16>>,
    next_avail: u16,
    last_used: u16,
    /// `next_avail` at the last notification (for EVENT_IDX).
    notified_at: u16,
    /// MSI-X bookkeeping of `Transport::wait_used`: the vector's count when last seen, and
    /// the used index read right after that interrupt or after used_event last moved
    /// (entries below it need no further interrupt).
    pub(super) irq_seen: u32,
    pub(super) used_at_irq: u16,
    /// Notifications written / skipped because the device said it did not need them.
    pub notifies: u64,
    pub notifies_skipped: u64,
}

fn pages_for(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

impl Virtqueue {
    /// Allocates (zeroed) rings for `size` entries (a power of two).
    pub fn new(index: u16, size: u16, indirect: bool, event_idx: bool) -> Result<Self, Fail> {
        ensure!(
            size.is_power_of_two(),
            "queue {index}: size {size} is not a power of two"
        );
        let n = u64::from(size);
        let desc_pages = pages_for(DESC_SIZE * n);
        let avail_pages = pages_for(6 + 2 * n);
        let used_pages = pages_for(6 + 8 * n);
        let indirect_pages = if indirect {
            pages_for(n * u64::from(INDIRECT_MAX) * DESC_SIZE)
        } else {
            0
        };
        let total = desc_pages + avail_pages + used_pages + indirect_pages;
        let mem = heap::alloc_pages(total)?;
        let avail = mem + desc_pages * PAGE_SIZE;
        let used = avail + avail_pages * PAGE_SIZE;
        Ok(Self {
            index,
            size,
            desc: mem,
            avail,
            used,
            mem,
            mem_pages: total,
            indirect: if indirect {
                used + used_pages * PAGE_SIZE
            } else {
                0
            },
            notify_addr: 0,
            event_idx,
            vector: None,
            free: (0..size).rev().collect(),
            chains: (0..size).map(|_| Vec::new()).collect(),
            next_avail: 0,
            last_used: 0,
            notified_at: 0,
            irq_seen: 0,
            used_at_irq: 0,
            notifies: 0,
            notifies_skipped: 0,
        })
    }

    /// Where notifications for this queue are written (set by the transport).
    pub fn set_notify_addr(&mut self, addr: u64) {
        self.notify_addr = addr;
    }

    pub fn indirect_enabled(&self) -> bool {
        self.indirect != 0
    }

    /// Zeroes the rings and forgets everything in flight (after a device reset).
    pub fn reset(&mut self) {
        // SAFETY: the queue's own pages, allocated in `new`.
        unsafe {
            core::ptr::write_bytes(
                self.mem as *mut u8,
                0,
                (self.mem_pages * PAGE_SIZE) as usize,
            )
        };
        self.free = (0..self.size).rev().collect();
        for chain in &mut self.chains {
            chain.clear();
        }
        self.next_avail = 0;
        self.last_used = 0;
        self.notified_at = 0;
        self.used_at_irq = 0;
    }

    /// Free descriptor slots.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet used.
    pub fn in_flight(&self) -> usize {
        self.chains.iter().filter(|c| !c.is_empty()).count()
    }

    fn write16(addr: u64, value: u16) {
        // SAFETY: ring memory of this queue (heap pages, identity mapped, aligned).
        unsafe { write_volatile(addr as *mut u16, value) }
    }

    fn read16(addr: u64) -> u16 {
        // SAFETY: as for `write16`.
        unsafe { read_volatile(addr as *const u16) }
    }

    fn read32(addr: u64) -> u32 {
        // SAFETY: as for `write16`.
        unsafe { read_volatile(addr as *const u32) }
    }

    /// Writes descriptor slot `i` of the table at `table` (raw: no checks).
    fn put_desc(table: u64, i: u16, d: Desc) {
        let at = table + u64::from(i) * DESC_SIZE;
        // SAFETY: `at` is a 16-byte aligned slot in a descriptor table this queue owns.
        unsafe {
            write_volatile(at as *mut u64, d.addr);
            write_volatile((at + 8) as *mut u32, d.len);
            write_volatile((at + 12) as *mut u16, d.flags);
            write_volatile((at + 14) as *mut u16, d.next);
        }
    }

    /// Writes descriptor `i` of the ring's table as given (tests of malformed chains).
    pub fn write_desc(&mut self, i: u16, d: Desc) {
        Self::put_desc(self.desc, i % self.size, d);
    }

    /// The indirect table of slot `slot` (INDIRECT_DESC only).
    pub fn indirect_table(&self, slot: u16) -> Option<u64> {
        (self.indirect != 0)
            .then(|| self.indirect + u64::from(slot) * u64::from(INDIRECT_MAX) * DESC_SIZE)
    }

    /// Writes entry `i` of slot `slot`'s indirect table as given.
    pub fn write_indirect_desc(&mut self, slot: u16, i: u16, d: Desc) {
        if let Some(table) = self.indirect_table(slot) {
            Self::put_desc(table, i % INDIRECT_MAX, d);
        }
    }

    /// Checks a chain: not empty, device-readable buffers before device-writable ones.
    fn check_chain(&self, bufs: &[Buf]) -> Result<(), Fail> {
        ensure!(!bufs.is_empty(), "queue {}: empty chain", self.index);
        if let Some(pos) = bufs.iter().position(|b| b.write) {
            ensure!(
                bufs[pos..].iter().all(|b| b.write),
                "queue {}: a device-readable buffer after a device-writable one",
                self.index
            );
        }
        Ok(())
    }

    fn flags(b: &Buf, more: bool) -> u16 {
        (if b.write { DESC_F_WRITE } else { 0 }) | (if more { DESC_F_NEXT } else { 0 })
    }

    /// Puts a chain of direct descriptors in the table and makes it available; returns the
    /// head. Call [`Virtqueue::kick`] afterwards (once for several chains if you like).
    pub fn submit(&mut self, bufs: &[Buf]) -> Result<u16, Fail> {
        self.check_chain(bufs)?;
        ensure!(
            bufs.len() <= self.free.len(),
            "queue {}: {} descriptors needed, {} free",
            self.index,
            bufs.len(),
            self.free.len()
        );
        let slots: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, (b, &slot)) in bufs.iter().zip(&slots).enumerate() {
            let next = slots.get(i + 1).copied();
            let d = Desc {
                addr: b.addr,
                len: b.len,
                flags: Self::flags(b, next.is_some()),
                next: next.unwrap_or(0),
            };
            Self::put_desc(self.desc, slot, d);
        }
        let head = slots[0];
        self.chains[usize::from(head)] = slots;
        self.publish(head);
        Ok(head)
    }

    /// Like [`Virtqueue::submit`] (a direct chain, made available; returns the head), but
    /// without allocating once a head has been used before: the head's bookkeeping vector
    /// is reused. The heap never frees, so benchmarks that submit millions of chains use
    /// this one.
    pub fn submit_reusing(&mut self, bufs: &[Buf]) -> Result<u16, Fail> {
        self.check_chain(bufs)?;
        ensure!(
            bufs.len() <= self.free.len(),
            "queue {}: {} descriptors needed, {} free",
            self.index,
            bufs.len(),
            self.free.len()
        );
        let Some(head) = self.free.pop() else {
            fail!("queue {}: no free descriptor", self.index);
        };
        let mut chain = core::mem::take(&mut self.chains[usize::from(head)]);
        chain.clear();
        chain.push(head);
        for _ in 1..bufs.len() {
            if let Some(slot) = self.free.pop() {
                chain.push(slot);
            }
        }
        for (i, b) in bufs.iter().enumerate() {
            let next = chain.get(i + 1).copied();
            let d = Desc {
                addr: b.addr,
                len: b.len,
                flags: Self::flags(b, next.is_some()),
                next: next.unwrap_or(0),
            };
            Self::put_desc(self.desc, chain[i], d);
        }
        self.chains[usize::from(head)] = chain;
        self.publish(head);
        Ok(head)
    }

    /// Puts the chain in an indirect table referenced by one descriptor (INDIRECT_DESC)
    /// and makes it available; returns the head.
    pub fn submit_indirect(&mut self, bufs: &[Buf]) -> Result<u16, Fail> {
        self.check_chain(bufs)?;
        ensure!(
            self.indirect != 0,
            "queue {}: INDIRECT_DESC was not negotiated",
            self.index
        );
        ensure!(
            bufs.len() <= usize::from(INDIRECT_MAX),
            "queue {}: {} buffers, an indirect table holds {INDIRECT_MAX}",
            self.index,
            bufs.len()
        );
        let Some(slot) = self.free.pop() else {
            fail!("queue {}: no free descriptor", self.index);
        };
        let table = self.indirect_table(slot).unwrap_or(0);
        for (i, b) in bufs.iter().enumerate() {
            let more = i + 1 < bufs.len();
            let d = Desc {
                addr: b.addr,
                len: b.len,
                flags: Self::flags(b, more),
                next: if more { i as u16 + 1 } else { 0 },
            };
            Self::put_desc(table, i as u16, d);
        }
        Self::put_desc(
            self.desc,
            slot,
            Desc {
                addr: table,
                len: (bufs.len() as u64 * DESC_SIZE) as u32,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        );
        self.chains[usize::from(slot)] = alloc::vec![slot];
        self.publish(slot);
        Ok(slot)
    }

    /// Adds `head` to the available ring and publishes the new index (no bookkeeping: for
    /// chains built with [`Virtqueue::write_desc`]).
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.next_avail % self.size);
        Self::write16(self.avail + 4 + 2 * slot, head);
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry before the index that covers it.
        fence(Ordering::SeqCst);
        Self::write16(self.avail + 2, self.next_avail);
    }

    /// Sets the available index to any value (tests of a driver that lies about it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.next_avail = idx;
        fence(Ordering::SeqCst);
        Self::write16(self.avail + 2, idx);
    }

    /// The driver's available index.
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    /// Asks for interrupts (or not) when the device uses buffers: the available ring's
    /// NO_INTERRUPT flag, or with EVENT_IDX the used_event field.
    pub fn want_interrupts(&mut self, on: bool) {
        if self.event_idx {
            let used_event = if on {
                self.last_used
            } else {
                self.last_used.wrapping_sub(1)
            };
            Self::write16(self.avail + 4 + 2 * u64::from(self.size), used_event);
        } else {
            Self::write16(self.avail, if on { 0 } else { AVAIL_F_NO_INTERRUPT });
        }
        fence(Ordering::SeqCst);
    }

    /// Notifies the device of new buffers unless it said it does not need it (the used
    /// ring's NO_NOTIFY flag, or with EVENT_IDX its avail_event).
    pub fn kick(&mut self) {
        // The index must be visible before the device's suppression state is read.
        fence(Ordering::SeqCst);
        let new = self.next_avail;
        let old = self.notified_at;
        let needed = if self.event_idx {
            let event = Self::read16(self.used + 4 + 8 * u64::from(self.size));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            Self::read16(self.used) & USED_F_NO_NOTIFY == 0
        };
        self.notified_at = new;
        if needed {
            self.notify();
        } else {
            self.notifies_skipped += 1;
        }
    }

    /// Writes the queue's notification register unconditionally.
    pub fn notify(&mut self) {
        self.notifies += 1;
        // SAFETY: the notify address lies in the device's notification BAR region (checked
        // by the transport); a 16-bit write of the queue index, as the spec asks.
        unsafe { io::mmio_write16(self.notify_addr, self.index) };
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        Self::read16(self.used + 2)
    }

    /// Whether the next used entry was published before the last interrupt was taken, or
    /// before the driver last moved used_event (then the device owes no interrupt for it).
    pub(super) fn next_signalled(&self) -> bool {
        (self.used_at_irq.wrapping_sub(self.last_used) as i16) > 0
    }

    /// Whether the device has used chains not yet popped.
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// Takes the next used entry, returning its chain's descriptors to the free list.
    pub fn pop_used(&mut self) -> Option<Used> {
        if !self.has_used() {
            return None;
        }
        // The entry is read only after the index that covers it.
        fence(Ordering::SeqCst);
        let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let (id, len) = (Self::read32(at), Self::read32(at + 4));
        self.last_used = self.last_used.wrapping_add(1);
        let known = match self.chains.get_mut(id as usize) {
            Some(chain) if !chain.is_empty() => {
                self.free.append(chain);
                true
            }
            _ => false,
        };
        if self.event_idx {
            Self::write16(self.avail + 4 + 2 * u64::from(self.size), self.last_used);
            // Entries the device published before it could see this used_event owe no
            // interrupt (virtio 1.2, 2.7.10: the driver looks at the ring again instead);
            // only those published after it do. The fence orders the write before the read.
            fence(Ordering::SeqCst);
            let idx = self.used_idx();
            if (idx.wrapping_sub(self.used_at_irq) as i16) > 0 {
                self.used_at_irq = idx;
            }
        }
        Some(Used { id, len, known })
    }

    /// Forgets a chain the device will never return (after a reset, or a malformed chain
    /// the device dropped), freeing its slots.
    pub fn forget(&mut self, head: u16) {
        if let Some(chain) = self.chains.get_mut(usize::from(head)) {
            self.free.append(chain);
        }
    }
}
