//! Checked access to virtqueues on top of `virtio-queue`.
//!
//! `virtio-queue` walks descriptor chains but reports a broken chain (an
//! index past the table, a loop, a nested indirect table, a total length
//! past 4 GiB, an unreadable table) by simply ending the walk.
//! [`parse_chain`] tells those apart from a proper end (the last descriptor
//! has no NEXT flag), checks that every buffer lies in guest memory and that
//! device-readable buffers come before device-writable ones, and yields a
//! [`Chain`] of plain buffers: pure, and the thing to fuzz.
//!
//! [`ActiveQueues`] is the live state every device keeps after activation:
//! memory, queues, the interrupt, and whether the driver broke the device.
//! [`ActiveQueues::drain`] implements the batching discipline: serve every
//! available chain with notifications off, re-enable them and look again
//! (so a buffer added meanwhile is not missed), then interrupt once if the
//! driver asked for it (EVENT_IDX's used_event honoured by virtio-queue).

use std::ops::Deref;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::{GuestMemoryMmap, Queue, VirtioInterrupt, VirtioInterruptType};
use crate::guest_warn;
use crate::ratelimit::RateLimitedLog;

/// One buffer of a chain, checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBuffer {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0: empty descriptors are skipped).
    pub len: u32,
}

/// A descriptor chain, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// Index of the head descriptor (what goes in the used ring).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<GuestBuffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<GuestBuffer>,
}

impl Chain {
    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }
}

/// A malformed descriptor chain.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The walk ended on a descriptor with NEXT set, or found no descriptor:
    /// an index out of range, a loop, a bad or nested indirect table, a
    /// total length past 4 GiB, or a descriptor table outside memory.
    #[error("descriptor chain at head {head} is broken (bad index, loop, bad indirect table or too long)")]
    Broken { head: u16 },
    /// A descriptor has both INDIRECT and NEXT set (virtio 1.2, 2.7.5.3.1:
    /// the driver must not).
    #[error("descriptor chain at head {head} has a descriptor with both INDIRECT and NEXT")]
    IndirectWithNext { head: u16 },
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    /// A device-readable buffer follows a device-writable one.
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
    /// The device only reads from this queue but got a writable buffer.
    #[error("device-writable buffer in a chain the device only reads")]
    UnexpectedWritable,
    /// The device only writes to this queue but got a readable buffer.
    #[error("device-readable buffer in a chain the device only writes")]
    UnexpectedReadable,
}

/// Parses a chain `virtio-queue` handed out; see the module docs.
pub fn parse_chain<M>(mut chain: DescriptorChain<M>) -> Result<Chain, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let mut out = Chain {
        head,
        ..Chain::default()
    };
    // Until a descriptor without NEXT is seen, the chain is unfinished.
    let mut unfinished = true;
    while let Some(desc) = chain.next() {
        unfinished = desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let len = desc.len();
        if !chain
            .memory()
            .check_range(desc.addr(), len as usize, access)
        {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().raw_value(),
                len,
            });
        }
        let buf = GuestBuffer {
            addr: desc.addr(),
            len,
        };
        if desc.is_write_only() {
            out.writable.push(buf);
        } else if !out.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            out.readable.push(buf);
        }
    }
    if unfinished {
        return Err(ChainError::Broken { head });
    }
    Ok(out)
}

/// Walks the direct part of a chain in the descriptor table and refuses a
/// descriptor with both INDIRECT and NEXT, which `virtio-queue` would follow
/// into the table, silently dropping the rest of the chain. Everything else
/// (bad indexes, loops, tables outside memory) is left to the main walk.
/// `table` and `size` are the queue's descriptor table and size.
pub fn check_direct_links<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<(), ChainError> {
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
    let mut index = head;
    for _ in 0..size {
        if index >= size {
            return Ok(());
        }
        let Some(at) = table.checked_add(u64::from(index) * 16) else {
            return Ok(());
        };
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, at).is_err() {
            return Ok(());
        }
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        match (flags & INDIRECT != 0, flags & NEXT != 0) {
            (true, true) => return Err(ChainError::IndirectWithNext { head }),
            (true, false) | (false, false) => return Ok(()),
            (false, true) => index = u16::from_le_bytes([raw[14], raw[15]]),
        }
    }
    Ok(())
}

/// Why a queue cannot be used any more.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring itself is unusable (avail index jumped past the ring size,
    /// ring memory inaccessible).
    #[error("ring error: {0}")]
    Ring(#[source] virtio_queue::Error),
    /// A malformed chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// No such queue.
    #[error("no queue {0}")]
    NoSuchQueue(u16),
}

/// The state of an activated device: memory, queues, interrupt.
pub struct ActiveQueues {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
    broken: bool,
    /// Queues whose last drain stopped at its budget with chains left.
    budget_spent: u64,
    name: &'static str,
    log: RateLimitedLog,
}

impl ActiveQueues {
    /// Live state for device `name` (used in log lines).
    pub fn new(
        name: &'static str,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> ActiveQueues {
        ActiveQueues {
            mem,
            queues,
            interrupt,
            broken: false,
            budget_spent: 0,
            name,
            log: RateLimitedLog::default(),
        }
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Whether the device gave up on the driver (needs reset).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the last [`ActiveQueues::drain`] of `q` stopped at its budget
    /// (see [`VirtioDevice::queue_has_more`](super::VirtioDevice::queue_has_more)).
    pub fn budget_spent(&self, q: u16) -> bool {
        q < 64 && self.budget_spent & (1 << q) != 0
    }

    /// Whether queue `q` exists, was enabled, and the device is not broken.
    pub fn usable(&self, q: u16) -> bool {
        !self.broken && self.queues.get(usize::from(q)).is_some_and(|q| q.ready())
    }

    /// Marks the device broken after `err` on queue `q`: logs (rate
    /// limited), stops all queue work, asks the transport for
    /// DEVICE_NEEDS_RESET.
    pub fn fail(&mut self, q: u16, err: &QueueError) {
        if self.broken {
            return;
        }
        self.broken = true;
        guest_warn!(
            self.log,
            "{}: queue {q}: {err}; the device needs a reset",
            self.name
        );
        self.interrupt.set_needs_reset();
    }

    /// Memory and ready queue `q`, borrowed together.
    fn parts(&mut self, q: u16) -> Result<(&GuestMemoryMmap, &mut Queue), QueueError> {
        let queue = self
            .queues
            .get_mut(usize::from(q))
            .filter(|q| q.ready())
            .ok_or(QueueError::NoSuchQueue(q))?;
        Ok((&self.mem, queue))
    }

    /// Whether the driver made chains available on `q` that the device has
    /// not taken yet.
    pub fn has_available(&mut self, q: u16) -> Result<bool, QueueError> {
        let (mem, queue) = self.parts(q)?;
        let avail = queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(QueueError::Ring)?;
        Ok(avail.0 != queue.next_avail())
    }

    /// Takes the next available chain of `q`, parsed.
    pub fn pop(&mut self, q: u16) -> Result<Option<Chain>, QueueError> {
        let (mem, queue) = self.parts(q)?;
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        let mut iter = queue.iter(mem).map_err(QueueError::Ring)?;
        match iter.next() {
            None => Ok(None),
            Some(chain) => {
                check_direct_links(mem, table, size, chain.head_index())?;
                Ok(Some(parse_chain(chain)?))
            }
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, q: u16, head: u16, len: u32) -> Result<(), QueueError> {
        let (mem, queue) = self.parts(q)?;
        queue.add_used(mem, head, len).map_err(QueueError::Ring)
    }

    /// Asks the driver to notify on new buffers (EVENT_IDX: from the next
    /// one on). Returns whether chains are already available.
    pub fn enable_notification(&mut self, q: u16) -> Result<bool, QueueError> {
        let (mem, queue) = self.parts(q)?;
        queue.enable_notification(mem).map_err(QueueError::Ring)
    }

    /// Asks the driver not to notify (no-op with EVENT_IDX).
    pub fn disable_notification(&mut self, q: u16) -> Result<(), QueueError> {
        let (mem, queue) = self.parts(q)?;
        queue.disable_notification(mem).map_err(QueueError::Ring)
    }

    /// Interrupts for used buffers of `q`, if the driver wants one.
    pub fn signal_used(&mut self, q: u16) -> Result<(), QueueError> {
        let (mem, queue) = self.parts(q)?;
        if queue.needs_notification(mem).map_err(QueueError::Ring)? {
            if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Queue(q)) {
                guest_warn!(self.log, "{}: queue {q}: interrupt failed: {e}", self.name);
            }
        }
        Ok(())
    }

    /// Serves every available chain of `q` with `serve`, which returns the
    /// bytes it wrote into the chain; see the module docs. At most
    /// `4 * size` chains per call, so a driver refilling the ring as fast as
    /// it drains cannot hold the caller forever. Returns how many chains
    /// were used.
    pub fn drain<F>(&mut self, q: u16, mut serve: F) -> Result<usize, QueueError>
    where
        F: FnMut(&GuestMemoryMmap, &Chain) -> Result<u32, QueueError>,
    {
        let budget = 4 * usize::from(self.parts(q)?.1.size());
        let bit = if q < 64 { 1u64 << q } else { 0 };
        self.budget_spent &= !bit;
        let mut used = 0;
        // A pass that finds nothing although enable_notification said there
        // was something happens when the driver overlaps its rings (the used
        // ring's flags on the avail index): give up after one such retry
        // instead of looping forever.
        let mut empty_passes = 0;
        'outer: loop {
            self.disable_notification(q)?;
            let before = used;
            while let Some(chain) = self.pop(q)? {
                let len = serve(&self.mem, &chain)?;
                self.add_used(q, chain.head, len)?;
                used += 1;
                if used >= budget {
                    self.budget_spent |= bit;
                    self.enable_notification(q)?;
                    break 'outer;
                }
            }
            if used == before {
                empty_passes += 1;
            }
            if !self.enable_notification(q)? {
                break;
            }
            if empty_passes > 1 {
                // Served again later (queue_has_more), not spun on here.
                self.budget_spent |= bit;
                break;
            }
        }
        if used > 0 {
            self.signal_used(q)?;
        }
        Ok(used)
    }
}

/// Checks that a ready queue's rings are aligned and lie in `mem`, as
/// activation requires; `virtio-queue` would only log. The avail ring may not
/// be at address 0 (`virtio-queue` refuses to iterate it there).
pub fn queue_in_memory(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    let size = u64::from(queue.size());
    let fits = |addr: u64, len: u64, align: u64, access| {
        addr.is_multiple_of(align)
            && usize::try_from(len)
                .is_ok_and(|len| mem.check_range(GuestAddress(addr), len, access))
    };
    queue.avail_ring() != 0
        && fits(queue.desc_table(), 16 * size, 16, Permissions::Read)
        && fits(queue.avail_ring(), 6 + 2 * size, 2, Permissions::Read)
        && fits(queue.used_ring(), 6 + 8 * size, 4, Permissions::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::{desc, guest_memory, DriverQueue, MockVirtioInterrupt};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;

    /// Parses the chain at head `head` of a 16-entry queue whose table holds
    /// `descs`.
    fn parse(descs: &[(u64, u32, u16, u16)], head: u16) -> Result<Chain, ChainError> {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table()
                .store(i as u16, desc(d.0, d.1, d.2, d.3))
                .expect("in table");
        }
        vq.avail().ring().ref_at(0).expect("in ring").store(head);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().expect("valid");
        let table = GuestAddress(q.desc_table());
        check_direct_links(&mem, table, 16, head)?;
        let chain = q.iter(&mem).expect("ready").next().expect("one chain");
        parse_chain(chain)
    }

    #[test]
    fn indirect_with_next_is_refused() {
        // virtio-queue would follow the table and drop descriptor 1.
        assert_eq!(
            parse(
                &[(0x1000, 16, NEXT, 1), (0x8000, 32, INDIRECT | NEXT, 2)],
                0
            ),
            Err(ChainError::IndirectWithNext { head: 0 })
        );
    }

    #[test]
    fn a_well_formed_chain() {
        let c = parse(
            &[
                (0x1000, 16, NEXT, 1),
                (0x2000, 0, NEXT, 2),
                (0x3000, 100, WRITE | NEXT, 3),
                (0x4000, 4, WRITE, 0),
            ],
            0,
        )
        .expect("valid");
        assert_eq!(c.head, 0);
        assert_eq!(c.readable.len(), 1);
        assert_eq!(c.writable.len(), 2);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 104));
    }

    #[test]
    fn hostile_chains_are_errors() {
        // A loop.
        assert_eq!(
            parse(&[(0x1000, 1, NEXT, 1), (0x2000, 1, NEXT, 0)], 0),
            Err(ChainError::Broken { head: 0 })
        );
        // A self-loop.
        assert!(parse(&[(0x1000, 1, NEXT, 0)], 0).is_err());
        // NEXT out of range.
        assert!(parse(&[(0x1000, 1, NEXT, 16)], 0).is_err());
        // Head out of range.
        assert_eq!(parse(&[], 40), Err(ChainError::Broken { head: 40 }));
        // Outside memory, or wrapping the address space.
        assert!(matches!(
            parse(&[(0x10_0000_0000, 16, 0, 0)], 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        assert!(matches!(
            parse(&[(u64::MAX - 4, 16, WRITE, 0)], 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        assert!(matches!(
            parse(&[(0x1000, u32::MAX, 0, 0)], 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        // Readable after writable.
        assert_eq!(
            parse(&[(0x1000, 8, WRITE | NEXT, 1), (0x2000, 8, 0, 0)], 0),
            Err(ChainError::ReadableAfterWritable)
        );
    }

    #[test]
    fn chains_past_4_gib_are_broken() {
        // 2 GiB of (untouched, MAP_NORESERVE) memory: each buffer is in
        // memory, but two add up past u32::MAX, where virtio-queue stops.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8000_1000)])
            .expect("reserve 2 GiB of address space");
        let vq = MockSplitQueue::new(&mem, 16);
        let big = 0x8000_0000;
        for (i, d) in [(0x1000, big, NEXT, 1), (0x1000, big, 0, 0)]
            .iter()
            .enumerate()
        {
            vq.desc_table()
                .store(i as u16, desc(d.0, d.1, d.2, d.3))
                .expect("in table");
        }
        vq.avail().ring().ref_at(0).expect("in ring").store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().expect("valid");
        let chain = q.iter(&mem).expect("ready").next().expect("one chain");
        assert_eq!(parse_chain(chain), Err(ChainError::Broken { head: 0 }));
    }

    #[test]
    fn indirect_tables() {
        let mem = guest_memory();
        let table = 0x8000u64;
        let write_table = |descs: &[(u64, u32, u16, u16)]| {
            for (i, d) in descs.iter().enumerate() {
                let raw: RawDescriptor = Descriptor::new(d.0, d.1, d.2, d.3).into();
                vm_memory::Bytes::write_obj(&mem, raw, GuestAddress(table + 16 * i as u64))
                    .expect("in memory");
            }
        };
        let run = |head: (u64, u32, u16, u16)| {
            let vq = MockSplitQueue::new(&mem, 16);
            vq.desc_table()
                .store(0, desc(head.0, head.1, head.2, head.3))
                .expect("in table");
            vq.avail().ring().ref_at(0).expect("in ring").store(0);
            vq.avail().idx().store(1);
            let mut q: Queue = vq.create_queue().expect("valid");
            let chain = q.iter(&mem).expect("ready").next().expect("one chain");
            parse_chain(chain)
        };
        write_table(&[(0x1000, 8, NEXT, 1), (0x2000, 8, WRITE, 0)]);
        let c = run((table, 32, INDIRECT, 0)).expect("valid");
        assert_eq!((c.readable.len(), c.writable.len()), (1, 1));
        // A table whose length is not a whole number of descriptors.
        assert!(run((table, 20, INDIRECT, 0)).is_err());
        // An empty table.
        assert!(run((table, 0, INDIRECT, 0)).is_err());
        // A nested indirect descriptor.
        write_table(&[(0x1000, 8, NEXT, 1), (table, 32, INDIRECT, 0)]);
        assert!(run((table, 32, INDIRECT, 0)).is_err());
        // A loop inside the table.
        write_table(&[(0x1000, 8, NEXT, 1), (0x2000, 8, NEXT, 0)]);
        assert!(run((table, 32, INDIRECT, 0)).is_err());
        // A table outside memory.
        assert!(run((0x10_0000_0000, 32, INDIRECT, 0)).is_err());
    }

    #[test]
    fn drain_batches_and_honours_event_idx() {
        let mem = guest_memory();
        let mut dq = DriverQueue::new(&mem, 0x10_0000, 16);
        for i in 0..3u64 {
            dq.add(&mem, &[(0x1000 + 0x100 * i, 8, true)]);
        }
        let mut q = dq.queue(16);
        q.set_event_idx(true);
        // No interrupt until the used index passes 5.
        dq.set_used_event(&mem, 5);
        let irq = Arc::new(MockVirtioInterrupt::default());
        let mut a = ActiveQueues::new("test", mem.clone(), vec![q], irq.clone());
        let n = a
            .drain(0, |_, c| Ok(c.writable_len() as u32))
            .expect("fine");
        assert_eq!(n, 3);
        assert_eq!(dq.take_used(&mem), vec![(0, 8), (1, 8), (2, 8)]);
        assert!(irq.queue_interrupts().is_empty());
        // avail_event was set to the next index to come.
        let avail_event = GuestAddress(dq.used + 4 + 8 * 16);
        let ev: u16 = vm_memory::Bytes::read_obj(&mem, avail_event).expect("in memory");
        assert_eq!(ev, 3);
        // Three more; now used_event 5 is crossed.
        for _ in 0..3 {
            dq.add(&mem, &[(0x2000, 8, true)]);
        }
        assert!(a.has_available(0).expect("fine"));
        assert_eq!(a.drain(0, |_, _| Ok(0)).expect("fine"), 3);
        assert_eq!(irq.queue_interrupts(), vec![0]);
        assert!(!a.has_available(0).expect("fine"));
        // A failing server breaks the device exactly once.
        assert!(!a.is_broken());
        a.fail(0, &QueueError::Chain(ChainError::UnexpectedReadable));
        a.fail(0, &QueueError::Chain(ChainError::UnexpectedReadable));
        assert!(a.is_broken());
        assert!(!a.usable(0));
        assert_eq!(irq.needs_reset_count(), 1);
    }

    #[test]
    fn drain_is_bounded_and_stops_on_errors() {
        let mem = guest_memory();
        let mut dq = DriverQueue::new(&mem, 0x10_0000, 4);
        let irq = Arc::new(MockVirtioInterrupt::default());
        let mut a = ActiveQueues::new("test", mem.clone(), vec![dq.queue(4)], irq.clone());
        // A server that errors: the chain is not returned.
        dq.add(&mem, &[(0x1000, 8, true)]);
        assert!(a
            .drain(0, |_, _| Err(ChainError::UnexpectedWritable.into()))
            .is_err());
        assert!(dq.take_used(&mem).is_empty());
        // A driver that refills the ring from inside the device's loop (as
        // another vCPU could) is served at most 4 * size chains per call.
        let mut refills = 0;
        let dq2 = std::cell::RefCell::new(DriverQueue::new(&mem, 0x11_0000, 4));
        let mut a = ActiveQueues::new("test", mem.clone(), vec![dq2.borrow().queue(4)], irq);
        dq2.borrow_mut().add(&mem, &[(0x1000, 8, true)]);
        let n = a
            .drain(0, |m, _| {
                refills += 1;
                let mut d = dq2.borrow_mut();
                let _ = d.take_used(m);
                d.add(m, &[(0x1000, 8, true)]);
                Ok(0)
            })
            .expect("fine");
        assert_eq!(n, 16);
        assert_eq!(refills, 16);
    }

    #[test]
    fn bad_avail_index_is_a_ring_error() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.avail().idx().store(100);
        let q: Queue = vq.create_queue().expect("valid");
        let irq = Arc::new(MockVirtioInterrupt::default());
        let mut a = ActiveQueues::new("test", mem, vec![q], irq);
        assert!(matches!(a.drain(0, |_, _| Ok(0)), Err(QueueError::Ring(_))));
        assert!(matches!(a.pop(1), Err(QueueError::NoSuchQueue(1))));
    }

    #[test]
    fn rings_must_lie_in_memory() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().expect("valid");
        // MockSplitQueue puts the table at 0 and the avail ring after it.
        assert!(queue_in_memory(&q, &mem));
        q.try_set_used_ring_address(GuestAddress(0x10_0000_0000 - 4))
            .expect("aligned");
        assert!(!queue_in_memory(&q, &mem));
        q.set_ready(true);
        q.try_set_avail_ring_address(GuestAddress(0))
            .expect("aligned");
        assert!(!queue_in_memory(&q, &mem));
    }
}
