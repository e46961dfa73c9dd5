//! The virtio-rng device.

use std::io;
use std::sync::Arc;

use vm_memory::Bytes;

use super::request::{self, MAX_REQUEST_BYTES};
use crate::guest_warn;
use crate::ratelimit::RateLimitedLog;
use crate::virtio::queue::{ActiveQueues, ChainError, QueueError};
use crate::virtio::{
    ActivateError, GuestMemoryMmap, Queue, VirtioDevice, VirtioInterrupt, TYPE_RNG,
};

/// Size of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;

/// Where entropy comes from.
pub trait EntropySource: Send {
    /// Fills `buf` entirely.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's CSPRNG, through getrandom(2) without flags (it blocks
/// only before the host's pool is initialised, long before a VM runs).
#[derive(Debug, Default)]
pub struct Getrandom;

impl EntropySource for Getrandom {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: `rest` is a valid, writable buffer of `rest.len()`
            // bytes for the duration of the call, and getrandom writes at
            // most that many bytes into it.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                // Not expected for a non-empty buffer; never spin on it.
                return Err(io::Error::other("getrandom returned no bytes"));
            }
            // 0 < n <= rest.len().
            done += n as usize;
        }
        Ok(())
    }
}

/// A virtio entropy device.
pub struct Rng {
    source: Box<dyn EntropySource>,
    active: Option<ActiveQueues>,
    log: RateLimitedLog,
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

impl Rng {
    /// A device serving the host's getrandom(2).
    pub fn new() -> Rng {
        Rng::with_source(Box::new(Getrandom))
    }

    /// A device serving `source`.
    pub fn with_source(source: Box<dyn EntropySource>) -> Rng {
        Rng {
            source,
            active: None,
            log: RateLimitedLog::default(),
        }
    }

    /// Whether the device gave up on the driver (needs reset).
    pub fn is_broken(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.is_broken())
    }
}

/// Serves one chain: returns the bytes written.
fn serve(
    source: &mut dyn EntropySource,
    log: &RateLimitedLog,
    mem: &GuestMemoryMmap,
    chain: &crate::virtio::queue::Chain,
) -> Result<u32, QueueError> {
    let req = request::parse(chain)?;
    if req.len == 0 {
        return Ok(0);
    }
    let mut bytes = [0u8; MAX_REQUEST_BYTES as usize];
    let bytes = &mut bytes[..req.len as usize];
    if let Err(e) = source.fill(bytes) {
        // Nothing written is the honest answer; the driver asks again.
        guest_warn!(log, "virtio-rng: entropy source failed: {e}");
        return Ok(0);
    }
    let mut off = 0usize;
    for b in &req.buffers {
        let len = b.len as usize;
        mem.write_slice(&bytes[off..off + len], b.addr)
            .map_err(|_| ChainError::OutsideMemory {
                addr: b.addr.0,
                len: b.len,
            })?;
        off += len;
    }
    Ok(req.len)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        self.active = Some(ActiveQueues::new("virtio-rng", mem, queues, interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_has_more(&self, index: u16) -> bool {
        self.active.as_ref().is_some_and(|a| a.budget_spent(index))
    }

    fn process_queue(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !active.usable(index) {
            return;
        }
        let source = &mut *self.source;
        let log = &self.log;
        if let Err(e) = active.drain(index, |mem, chain| serve(source, log, mem, chain)) {
            active.fail(index, &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::{activation, DriverQueue};
    use vm_memory::GuestAddress;

    fn active_rng(
        source: Box<dyn EntropySource>,
    ) -> (
        Rng,
        DriverQueue,
        GuestMemoryMmap,
        Arc<crate::virtio::testutil::MockVirtioInterrupt>,
    ) {
        let (mem, irq) = activation();
        let dq = DriverQueue::new(&mem, 0x10_0000, 16);
        let mut rng = Rng::with_source(source);
        rng.activate(mem.clone(), vec![dq.queue(RNG_QUEUE_SIZE)], irq.clone(), 0)
            .expect("one queue");
        (rng, dq, mem, irq)
    }

    struct Fixed(u8);
    impl EntropySource for Fixed {
        fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
            buf.fill(self.0);
            Ok(())
        }
    }

    struct Failing;
    impl EntropySource for Failing {
        fn fill(&mut self, _buf: &mut [u8]) -> io::Result<()> {
            Err(io::Error::other("no entropy"))
        }
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr))
            .expect("in memory");
        v
    }

    #[test]
    fn getrandom_fills_a_buffer() {
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Getrandom));
        let head = dq.add(&mem, &[(0x1000, 64, true)]);
        rng.process_queue(0);
        assert_eq!(dq.take_used(&mem), vec![(head, 64)]);
        // 512 random bits are all zero with probability 2^-512.
        assert_ne!(read(&mem, 0x1000, 64), vec![0; 64]);
        assert_eq!(irq.queue_interrupts(), vec![0]);
    }

    #[test]
    fn requests_are_batched_and_bounded() {
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Fixed(0xa5)));
        let a = dq.add(&mem, &[(0x1000, 16, true), (0x2000, 16, true)]);
        let b = dq.add(&mem, &[(0x3000, 8192, true)]);
        let c = dq.add(&mem, &[(0x6000, 0, true)]);
        rng.process_queue(0);
        assert_eq!(
            dq.take_used(&mem),
            vec![(a, 32), (b, MAX_REQUEST_BYTES), (c, 0)]
        );
        assert_eq!(read(&mem, 0x2000, 16), vec![0xa5; 16]);
        assert_eq!(read(&mem, 0x3000 + 4095, 2), vec![0xa5, 0]);
        // One interrupt for the batch.
        assert_eq!(irq.queue_interrupts(), vec![0]);
        assert!(!rng.is_broken());
    }

    #[test]
    fn event_idx_suppresses_interrupts() {
        let (mem, irq) = activation();
        let mut dq = DriverQueue::new(&mem, 0x10_0000, 16);
        let mut q = dq.queue(RNG_QUEUE_SIZE);
        virtio_queue::QueueT::set_event_idx(&mut q, true);
        let mut rng = Rng::with_source(Box::new(Fixed(1)));
        rng.activate(mem.clone(), vec![q], irq.clone(), 0)
            .expect("one queue");
        // The driver wants an interrupt only after used index 2.
        dq.set_used_event(&mem, 2);
        dq.add(&mem, &[(0x1000, 8, true)]);
        rng.process_queue(0);
        assert!(irq.queue_interrupts().is_empty());
        dq.add(&mem, &[(0x1000, 8, true)]);
        dq.add(&mem, &[(0x1000, 8, true)]);
        rng.process_queue(0);
        assert_eq!(irq.queue_interrupts(), vec![0]);
    }

    #[test]
    fn a_failing_source_writes_nothing() {
        let (mut rng, mut dq, mem, _) = active_rng(Box::new(Failing));
        let head = dq.add(&mem, &[(0x1000, 32, true)]);
        rng.process_queue(0);
        assert_eq!(dq.take_used(&mem), vec![(head, 0)]);
        assert!(!rng.is_broken());
    }

    #[test]
    fn hostile_requests_need_reset() {
        // A readable buffer (wrong direction).
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Fixed(1)));
        dq.add(&mem, &[(0x1000, 32, false)]);
        rng.process_queue(0);
        assert!(rng.is_broken());
        assert_eq!(irq.needs_reset_count(), 1);
        assert!(dq.take_used(&mem).is_empty());
        // Broken stays broken, quietly, until reset.
        dq.add(&mem, &[(0x1000, 32, true)]);
        rng.process_queue(0);
        assert!(dq.take_used(&mem).is_empty());
        assert_eq!(irq.needs_reset_count(), 1);

        // A buffer outside memory.
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Fixed(1)));
        dq.add(&mem, &[(crate::virtio::testutil::MEM_SIZE - 8, 32, true)]);
        rng.process_queue(0);
        assert_eq!(irq.needs_reset_count(), 1);

        // A head index past the ring.
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Fixed(1)));
        dq.add_head(&mem, 999);
        rng.process_queue(0);
        assert_eq!(irq.needs_reset_count(), 1);

        // An avail index that ran ahead by more than the ring size.
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Fixed(1)));
        dq.set_avail_idx(&mem, 17);
        rng.process_queue(0);
        assert_eq!(irq.needs_reset_count(), 1);

        // A descriptor loop.
        let (mut rng, mut dq, mem, irq) = active_rng(Box::new(Fixed(1)));
        dq.write_desc(&mem, 0, crate::virtio::testutil::desc(0x1000, 8, 3, 1));
        dq.write_desc(&mem, 1, crate::virtio::testutil::desc(0x1000, 8, 3, 0));
        dq.add_head(&mem, 0);
        rng.process_queue(0);
        assert_eq!(irq.needs_reset_count(), 1);

        // Reset and reactivation bring it back.
        rng.reset();
        let dq = DriverQueue::new(&mem, 0x18_0000, 16);
        rng.activate(mem.clone(), vec![dq.queue(RNG_QUEUE_SIZE)], irq, 0)
            .expect("one queue");
        assert!(!rng.is_broken());
        // Queues that do not exist, and a missing queue at activation.
        rng.process_queue(5);
        let (mem, irq) = activation();
        assert!(Rng::new().activate(mem, vec![], irq, 0).is_err());
    }
}
