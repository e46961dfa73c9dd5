//! Helpers for the virtio unit tests: guest memory, descriptors, a mock
//! transport interrupt, and a driver for devices activated directly.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{GuestMemoryMmap, Queue, VirtioInterrupt, VirtioInterruptType};

/// Size of the test guest's memory.
pub const MEM_SIZE: u64 = 0x20_0000;

/// 2 MiB of guest memory at 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("2 MiB")
}

/// A split-ring descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    Descriptor::new(addr, len, flags, next).into()
}

/// Records what a device signalled.
#[derive(Default)]
pub struct MockVirtioInterrupt {
    queues: Mutex<Vec<u16>>,
    needs_reset: AtomicUsize,
}

impl MockVirtioInterrupt {
    /// Queue interrupts so far (taken).
    pub fn queue_interrupts(&self) -> Vec<u16> {
        std::mem::take(&mut *self.queues.lock().expect("not poisoned"))
    }
    /// needs-reset requests so far.
    pub fn needs_reset_count(&self) -> usize {
        self.needs_reset.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for MockVirtioInterrupt {
    fn trigger(&self, interrupt: VirtioInterruptType) -> io::Result<()> {
        match interrupt {
            VirtioInterruptType::Queue(q) => self.queues.lock().expect("not poisoned").push(q),
            // Devices only raise configuration interrupts through
            // set_needs_reset here, which is counted there.
            VirtioInterruptType::Config => {}
        }
        Ok(())
    }
    fn set_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
    }
}

/// A driver's view of one split queue laid out in guest memory at `base`:
/// it posts chains of its own descriptors and reads the used ring.
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// A queue of `size` entries at `base`: descriptor table, then the
    /// avail ring, then the used ring (4-byte aligned), all zeroed.
    /// (`MockSplitQueue`'s own layout overlaps the used ring with the end of
    /// the avail ring, which hides EVENT_IDX bugs.)
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> DriverQueue {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        let end = used + 6 + 8 * n;
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .expect("in memory");
        DriverQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A `virtio_queue::Queue` as a transport would hand it over, ready.
    pub fn queue(&self, max: u16) -> Queue {
        let mut q = Queue::new(max).expect("valid max");
        q.try_set_size(self.size).expect("valid size");
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .expect("aligned");
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .expect("aligned");
        q.try_set_used_ring_address(GuestAddress(self.used))
            .expect("aligned");
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index`.
    pub fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, d: RawDescriptor) {
        mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(index)))
            .expect("in memory");
    }

    /// Puts `head` in the avail ring without publishing it.
    fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).expect("in memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the avail index.
    pub fn publish(&self, mem: &GuestMemoryMmap) {
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("in memory");
    }

    /// Posts a chain of `(addr, len, device_writable)` buffers; returns its
    /// head.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if w { 2 } else { 0 } | if last { 0 } else { 1 };
            let next = (index + 1) % self.size;
            self.write_desc(mem, index, desc(addr, len, flags, next));
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.push_avail(mem, head);
        self.publish(mem);
        head
    }

    /// Posts an arbitrary head index (for hostile tests).
    pub fn add_head(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.push_avail(mem, head);
        self.publish(mem);
    }

    /// Sets the avail index to any value (for hostile tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        self.publish(mem);
    }

    /// Sets used_event (EVENT_IDX): interrupt once the used index passes it.
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, v: u16) {
        let addr = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(v, GuestAddress(addr)).expect("in memory");
    }

    /// New `(head, len)` used elements since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("in memory");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(slot)).expect("in memory");
            let len: u32 = mem.read_obj(GuestAddress(slot + 4)).expect("in memory");
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Memory and an interrupt for direct device tests.
pub fn activation() -> (GuestMemoryMmap, Arc<MockVirtioInterrupt>) {
    (guest_memory(), Arc::new(MockVirtioInterrupt::default()))
}
