//! The virtio-console device (port 0 only).

use std::io::Write;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::request;
use crate::guest_output::GuestOutput;
use crate::ratelimit::RateLimitedLog;
use crate::virtio::queue::{ActiveQueues, Chain, ChainError, QueueError};
use crate::virtio::{
    ActivateError, GuestMemoryMmap, Queue, VirtioDevice, VirtioInterrupt, TYPE_CONSOLE,
};
use crate::{guest_warn, Interrupt};

/// Size of each queue.
pub const CONSOLE_QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (host to guest).
pub const RECEIVE_QUEUE: u16 = 0;
/// Index of the transmit queue (guest to host).
pub const TRANSMIT_QUEUE: u16 = 1;
/// Bytes of configuration space: cols, rows (u16 each), max_nr_ports,
/// emerg_wr (u32 each). All read 0: no feature that gives them meaning is
/// offered.
const CONFIG_SIZE: usize = 12;
/// Chunk in which guest output is copied to the sink.
const CHUNK: usize = 4096;

/// The console's writer: never fails, never retries a failing sink.
/// A virtio console with one port.
pub struct Console {
    output: GuestOutput,
    active: Option<ActiveQueues>,
    input_ready: Option<Arc<dyn Interrupt>>,
    /// Input was refused since the guest last posted receive buffers.
    input_refused: bool,
    log: RateLimitedLog,
}

impl Console {
    /// A console writing the guest's output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            output: GuestOutput::new("virtio-console", out),
            active: None,
            input_ready: None,
            input_refused: false,
            log: RateLimitedLog::default(),
        }
    }

    /// Replaces the output sink and forgets an earlier sink failure.
    pub fn set_output(&mut self, out: Box<dyn Write + Send>) {
        self.output.set_sink(out);
    }

    /// Bytes of guest output lost to a slow or failed sink.
    pub fn dropped_output_bytes(&self) -> u64 {
        self.output.dropped()
    }

    /// Sets what to trigger when the guest posts receive buffers after
    /// [`Console::enqueue_input`] refused bytes.
    pub fn set_input_ready_notifier(&mut self, notify: Arc<dyn Interrupt>) {
        self.input_ready = Some(notify);
    }

    /// Whether the device gave up on the driver (needs reset).
    pub fn is_broken(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.is_broken())
    }

    /// Offers host input to the guest. Returns how many bytes of `input`
    /// were taken (a prefix): as many as the posted receive buffers hold,
    /// 0 before the driver is up.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() {
            return 0;
        }
        let mut taken = 0;
        if let Some(active) = self.active.as_mut().filter(|a| a.usable(RECEIVE_QUEUE)) {
            taken = match fill_receive(active, input) {
                Ok(n) => n,
                Err((n, e)) => {
                    active.fail(RECEIVE_QUEUE, &e);
                    n
                }
            };
        }
        if taken < input.len() {
            self.input_refused = true;
            // Ask the driver to notify when it posts buffers; if some raced
            // in already, say so at once.
            if let Some(active) = self.active.as_mut().filter(|a| a.usable(RECEIVE_QUEUE)) {
                match active.enable_notification(RECEIVE_QUEUE) {
                    Ok(true) => self.notify_input_ready(),
                    Ok(false) => {}
                    Err(e) => active.fail(RECEIVE_QUEUE, &e),
                }
            }
        }
        taken
    }

    fn notify_input_ready(&mut self) {
        if !std::mem::take(&mut self.input_refused) {
            return;
        }
        if let Some(n) = &self.input_ready {
            if let Err(e) = n.trigger() {
                guest_warn!(self.log, "virtio-console: failed to signal input room: {e}");
            }
        }
    }

    /// The guest notified the receive queue: tell the host side there is
    /// room, if it was waiting for some.
    fn receive_notified(&mut self) {
        if !self.input_refused {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match active.has_available(RECEIVE_QUEUE) {
            Ok(true) => self.notify_input_ready(),
            Ok(false) => {
                if let Err(e) = active.enable_notification(RECEIVE_QUEUE) {
                    active.fail(RECEIVE_QUEUE, &e);
                }
            }
            Err(e) => active.fail(RECEIVE_QUEUE, &e),
        }
    }

    fn transmit(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let output = &mut self.output;
        let res = active.drain(TRANSMIT_QUEUE, |mem, chain| {
            send_chain(output, mem, chain)?;
            Ok(0)
        });
        let _ = self.output.flush(); // GuestOutput never fails
        if let Err(e) = res {
            active.fail(TRANSMIT_QUEUE, &e);
        }
    }
}

/// Copies one transmit chain to the sink.
fn send_chain(
    output: &mut GuestOutput,
    mem: &GuestMemoryMmap,
    chain: &Chain,
) -> Result<(), QueueError> {
    let mut chunk = [0u8; CHUNK];
    for b in request::transmit_buffers(chain)? {
        let mut off = 0u64;
        while off < u64::from(b.len) {
            let n = (u64::from(b.len) - off).min(CHUNK as u64) as usize;
            let addr = GuestAddress(b.addr.0 + off);
            mem.read_slice(&mut chunk[..n], addr)
                .map_err(|_| ChainError::OutsideMemory {
                    addr: b.addr.0,
                    len: b.len,
                })?;
            let _ = output.write(&chunk[..n]); // GuestOutput never fails
            off += n as u64;
        }
    }
    Ok(())
}

/// Fills receive chains with `input`. Returns the bytes taken, or the bytes
/// taken before an error and the error.
fn fill_receive(active: &mut ActiveQueues, input: &[u8]) -> Result<usize, (usize, QueueError)> {
    let mut taken = 0usize;
    let mut used = 0usize;
    while taken < input.len() {
        let chain = match active.pop(RECEIVE_QUEUE) {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err((taken, e)),
        };
        let bufs = request::receive_buffers(&chain).map_err(|e| (taken, e.into()))?;
        let mut n = 0usize;
        for b in bufs {
            let len = (b.len as usize).min(input.len() - taken - n);
            if len == 0 {
                break;
            }
            let bytes = &input[taken + n..taken + n + len];
            active.memory().write_slice(bytes, b.addr).map_err(|_| {
                let e = ChainError::OutsideMemory {
                    addr: b.addr.0,
                    len: b.len,
                };
                (taken, e.into())
            })?;
            n += len;
        }
        // n <= input.len(), and no chain exceeds 4 GiB.
        active
            .add_used(RECEIVE_QUEUE, chain.head, n as u32)
            .map_err(|e| (taken, e))?;
        taken += n;
        used += 1;
    }
    if used > 0 {
        active.signal_used(RECEIVE_QUEUE).map_err(|e| (taken, e))?;
    }
    Ok(taken)
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[CONSOLE_QUEUE_SIZE, CONSOLE_QUEUE_SIZE]
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len(),
            });
        }
        self.active = Some(ActiveQueues::new("virtio-console", mem, queues, interrupt));
        self.receive_notified();
        Ok(())
    }

    fn reset(&mut self) {
        // Input refused meanwhile stays refused: the host side is waiting
        // for the next driver's receive buffers.
        self.active = None;
    }

    fn queue_has_more(&self, index: u16) -> bool {
        self.active.as_ref().is_some_and(|a| a.budget_spent(index))
    }

    fn process_queue(&mut self, index: u16) {
        if !self.active.as_ref().is_some_and(|a| a.usable(index)) {
            return;
        }
        match index {
            RECEIVE_QUEUE => self.receive_notified(),
            TRANSMIT_QUEUE => self.transmit(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{CaptureSink, MockIrq};
    use crate::virtio::testutil::{activation, DriverQueue, MockVirtioInterrupt};
    use std::io;

    struct Setup {
        console: Console,
        rx: DriverQueue,
        tx: DriverQueue,
        mem: GuestMemoryMmap,
        irq: Arc<MockVirtioInterrupt>,
        out: CaptureSink,
    }

    fn setup() -> Setup {
        let (mem, irq) = activation();
        let rx = DriverQueue::new(&mem, 0x10_0000, 8);
        let tx = DriverQueue::new(&mem, 0x11_0000, 8);
        let out = CaptureSink::default();
        let mut console = Console::new(Box::new(out.clone()));
        console
            .activate(
                mem.clone(),
                vec![rx.queue(CONSOLE_QUEUE_SIZE), tx.queue(CONSOLE_QUEUE_SIZE)],
                irq.clone(),
                0,
            )
            .expect("two queues");
        Setup {
            console,
            rx,
            tx,
            mem,
            irq,
            out,
        }
    }

    #[test]
    fn transmits_chains_to_the_sink() {
        let mut s = setup();
        s.mem
            .write_slice(b"hello, ", GuestAddress(0x1000))
            .expect("in memory");
        s.mem
            .write_slice(b"world\n", GuestAddress(0x2000))
            .expect("in memory");
        let big = vec![b'x'; 10_000];
        s.mem
            .write_slice(&big, GuestAddress(0x4000))
            .expect("in memory");
        let a = s.tx.add(&s.mem, &[(0x1000, 7, false), (0x2000, 6, false)]);
        let b = s.tx.add(&s.mem, &[(0x4000, 10_000, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        let got = s.out.bytes();
        assert_eq!(&got[..13], b"hello, world\n");
        assert_eq!(got.len(), 13 + 10_000);
        assert_eq!(s.tx.take_used(&s.mem), vec![(a, 0), (b, 0)]);
        assert_eq!(s.irq.queue_interrupts(), vec![TRANSMIT_QUEUE]);
    }

    #[test]
    fn sink_failures_drop_output() {
        let mut s = setup();
        s.out.fail_with(Some(io::ErrorKind::WouldBlock));
        s.tx.add(&s.mem, &[(0x1000, 5, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        assert_eq!(s.console.dropped_output_bytes(), 5);
        // A hard failure abandons the sink; a new one is used.
        s.out.fail_with(Some(io::ErrorKind::BrokenPipe));
        s.tx.add(&s.mem, &[(0x1000, 5, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        s.out.fail_with(None);
        s.tx.add(&s.mem, &[(0x1000, 5, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        assert_eq!(s.console.dropped_output_bytes(), 15);
        assert!(s.out.bytes().is_empty());
        let fresh = CaptureSink::default();
        s.console.set_output(Box::new(fresh.clone()));
        s.tx.add(&s.mem, &[(0x1000, 5, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        assert_eq!(fresh.bytes().len(), 5);
        // Every chain was returned regardless.
        assert_eq!(s.tx.take_used(&s.mem).len(), 4);
    }

    #[test]
    fn receives_input_with_backpressure() {
        let mut s = setup();
        let ready = Arc::new(MockIrq::default());
        s.console.set_input_ready_notifier(ready.clone());
        // No buffers yet: nothing taken.
        assert_eq!(s.console.enqueue_input(b"abc"), 0);
        assert_eq!(s.console.enqueue_input(b""), 0);
        // The guest posts two small buffers and kicks.
        let h1 = s.rx.add(&s.mem, &[(0x3000, 4, true)]);
        let h2 = s.rx.add(&s.mem, &[(0x3100, 2, true), (0x3200, 2, true)]);
        s.console.process_queue(RECEIVE_QUEUE);
        assert_eq!(ready.count(), 1);
        // Ten bytes offered, eight fit.
        assert_eq!(s.console.enqueue_input(b"0123456789"), 8);
        assert_eq!(s.rx.take_used(&s.mem), vec![(h1, 4), (h2, 4)]);
        let mut got = [0u8; 4];
        s.mem
            .read_slice(&mut got, GuestAddress(0x3000))
            .expect("in memory");
        assert_eq!(&got, b"0123");
        s.mem
            .read_slice(&mut got[..2], GuestAddress(0x3200))
            .expect("in memory");
        assert_eq!(&got[..2], b"67");
        assert_eq!(s.irq.queue_interrupts(), vec![RECEIVE_QUEUE]);
        // The rest waits for room; a kick without buffers says nothing.
        s.console.process_queue(RECEIVE_QUEUE);
        assert_eq!(ready.count(), 1);
        let h3 = s.rx.add(&s.mem, &[(0x3300, 64, true)]);
        s.console.process_queue(RECEIVE_QUEUE);
        assert_eq!(ready.count(), 2);
        assert_eq!(s.console.enqueue_input(b"89"), 2);
        assert_eq!(s.rx.take_used(&s.mem), vec![(h3, 2)]);
        // Not refused since: a kick does not signal again.
        s.rx.add(&s.mem, &[(0x3300, 64, true)]);
        s.console.process_queue(RECEIVE_QUEUE);
        assert_eq!(ready.count(), 2);
    }

    #[test]
    fn hostile_chains_need_reset() {
        // A writable buffer in the transmit queue.
        let mut s = setup();
        s.tx.add(&s.mem, &[(0x1000, 4, true)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        assert!(s.console.is_broken());
        assert_eq!(s.irq.needs_reset_count(), 1);
        assert_eq!(s.console.enqueue_input(b"x"), 0);

        // A readable buffer in the receive queue.
        let mut s = setup();
        s.rx.add(&s.mem, &[(0x1000, 4, false)]);
        assert_eq!(s.console.enqueue_input(b"abc"), 0);
        assert!(s.console.is_broken());
        assert_eq!(s.irq.needs_reset_count(), 1);

        // A transmit buffer running off the end of memory.
        let mut s = setup();
        let end = crate::virtio::testutil::MEM_SIZE;
        s.tx.add(&s.mem, &[(end - 2, 4, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        assert_eq!(s.irq.needs_reset_count(), 1);
        assert!(s.out.bytes().is_empty());

        // Zero-length buffers are fine: nothing to copy.
        let mut s = setup();
        let h = s.tx.add(&s.mem, &[(0x1000, 0, false)]);
        s.console.process_queue(TRANSMIT_QUEUE);
        assert_eq!(s.tx.take_used(&s.mem), vec![(h, 0)]);
        assert!(!s.console.is_broken());
        // Unknown queues are ignored; reset forgets the queues.
        s.console.process_queue(7);
        s.console.reset();
        assert_eq!(s.console.enqueue_input(b"x"), 0);
        assert!(!s.console.is_broken());
    }
}
