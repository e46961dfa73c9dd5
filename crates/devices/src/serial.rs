//! A 16550A UART (COM1) on top of `vm-superio`'s `Serial`.
//!
//! # Bus placement (port I/O)
//! COM1: base [`COM1_BASE`] (0x3f8), length [`SERIAL_LEN`] (8), IRQ
//! [`COM1_IRQ`] (4). Accesses wider than a byte are split into byte accesses
//! at consecutive registers (as on an 8-bit ISA bus); bytes past register 7
//! read all-ones and ignore writes.
//!
//! # Wiring
//! - Interrupt: pass the COM1 line as an [`Interrupt`] (in the monitor, an
//!   eventfd registered as a KVM irqfd for GSI 4). The UART raises it as an
//!   edge per event, which is what Linux's 8250 driver expects of it.
//! - Output: any `Box<dyn Write + Send>` (the monitor opens stdout, files and
//!   console sockets, see vireo-vmm's `console` module), wrapped in a
//!   [`GuestOutput`] so it never stalls or crashes the guest: a sink that would
//!   block loses the byte; a failing one is abandoned until
//!   [`Serial::set_output`] installs a new sink. Dropped bytes are counted
//!   ([`Serial::dropped_output_bytes`]). A *blocking* sink can still block the
//!   vCPU: give sockets and pipes non-blocking mode.
//! - Input: call [`Serial::enqueue_input`] with bytes from the host. It takes
//!   at most the free FIFO space ([`Serial::input_room`], 64 bytes when
//!   empty) and returns how many bytes it took; keep the rest. When it took
//!   fewer than offered, the [`Interrupt`] given to
//!   [`Serial::set_input_ready_notifier`] is triggered once the guest has
//!   drained the FIFO: stop polling the host input until then.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::Trigger;

use crate::guest_output::GuestOutput;
use crate::ratelimit::RateLimitedLog;
use crate::{guest_debug, guest_warn, BusDevice, Interrupt};

/// Port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// Length of a UART's port range.
pub const SERIAL_LEN: u64 = 8;

const DATA: u8 = 0;
const MCR: u8 = 4;
const MCR_LOOP: u8 = 1 << 4;

/// Adapts an [`Interrupt`] to `vm-superio`'s `Trigger`.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// A 16550A UART.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, GuestOutput>,
    irq: Arc<dyn Interrupt>,
    /// FIFO size, measured when empty.
    fifo_size: usize,
    input_ready: Option<Arc<dyn Interrupt>>,
    /// Input was refused since the FIFO was last drained.
    input_refused: bool,
    log: RateLimitedLog,
}

impl Serial {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: Arc<dyn Interrupt>, out: Box<dyn Write + Send>) -> Serial {
        let uart =
            vm_superio::Serial::new(IrqTrigger(irq.clone()), GuestOutput::new("serial", out));
        let fifo_size = uart.fifo_capacity();
        Serial {
            uart,
            irq,
            fifo_size,
            input_ready: None,
            input_refused: false,
            log: RateLimitedLog::default(),
        }
    }

    /// Sets what to trigger when the guest has drained the receive FIFO
    /// after [`Serial::enqueue_input`] refused bytes (typically an eventfd
    /// the event loop polls to resume reading host input).
    pub fn set_input_ready_notifier(&mut self, notify: Arc<dyn Interrupt>) {
        self.input_ready = Some(notify);
    }

    /// Replaces the output sink (for instance when a new console client
    /// connects) and forgets an earlier sink failure.
    pub fn set_output(&mut self, out: Box<dyn Write + Send>) {
        self.uart.writer_mut().set_sink(out);
    }

    /// Bytes of guest output lost to a slow or failed sink.
    pub fn dropped_output_bytes(&self) -> u64 {
        self.uart.writer().dropped()
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Offers host input to the guest. Returns how many bytes of `input`
    /// were taken (a prefix); the caller keeps the rest and waits for the
    /// input-ready notification. While the guest has the UART in loopback
    /// mode the line is disconnected: input is taken and discarded, as on
    /// the real part.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() {
            return 0;
        }
        if self.uart.read(MCR) & MCR_LOOP != 0 {
            guest_debug!(
                self.log,
                "serial: discarding {} input bytes in loopback mode",
                input.len()
            );
            return input.len();
        }
        let room = self.uart.fifo_capacity();
        let taken = match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(UartError::FullFifo) => 0,
            Err(e) => {
                // The bytes went in before the interrupt failed.
                guest_warn!(
                    self.log,
                    "serial: failed to raise the receive interrupt: {e}"
                );
                room.min(input.len())
            }
        };
        if taken < input.len() {
            self.input_refused = true;
        }
        taken
    }

    /// Returns the UART registers to their power-on values (for a machine
    /// reset), discarding pending input. The sink and the wiring are kept.
    pub fn reset(&mut self) {
        let out = std::mem::replace(
            self.uart.writer_mut(),
            GuestOutput::new("serial", Box::new(io::sink())),
        );
        self.uart = vm_superio::Serial::new(IrqTrigger(self.irq.clone()), out);
        self.notify_if_drained();
    }

    fn notify_if_drained(&mut self) {
        if self.input_refused && self.uart.fifo_capacity() == self.fifo_size {
            self.input_refused = false;
            if let Some(n) = &self.input_ready {
                if let Err(e) = n.trigger() {
                    guest_warn!(self.log, "serial: failed to signal input room: {e}");
                }
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut read_data = false;
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(r) if r < SERIAL_LEN => {
                    read_data |= r == u64::from(DATA);
                    self.uart.read(r as u8)
                }
                _ => 0xff,
            };
        }
        if read_data {
            self.notify_if_drained();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(r) = offset.checked_add(i as u64).filter(|&r| r < SERIAL_LEN) else {
                continue;
            };
            if let Err(e) = self.uart.write(r as u8, b) {
                guest_warn!(self.log, "serial: register write failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hammer, CaptureSink, MockIrq};
    use std::fs::File;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 1;
    const IER_THRE: u8 = 2;
    const LSR_DR: u8 = 1;

    fn serial() -> (Serial, Arc<MockIrq>, CaptureSink) {
        let irq = Arc::new(MockIrq::default());
        let cap = CaptureSink::default();
        (Serial::new(irq.clone(), Box::new(cap.clone())), irq, cap)
    }

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0];
        s.read(off, &mut b);
        b[0]
    }

    fn guest_print(s: &mut Serial, text: &[u8]) {
        for &c in text {
            s.write(0, &[c]);
        }
    }

    #[test]
    fn guest_output_reaches_the_sink() {
        let (mut s, irq, cap) = serial();
        guest_print(&mut s, b"hello\n");
        assert_eq!(cap.bytes(), b"hello\n");
        // No interrupts enabled, none raised.
        assert_eq!(irq.count(), 0);
        assert_eq!(s.dropped_output_bytes(), 0);
    }

    #[test]
    fn thr_empty_interrupt_when_enabled() {
        let (mut s, irq, _) = serial();
        s.write(IER, &[IER_THRE]);
        assert_eq!(irq.count(), 1);
        // Reading IIR acknowledges it; the next byte raises it again.
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        guest_print(&mut s, b"x");
        assert_eq!(irq.count(), 2);
    }

    #[test]
    fn input_respects_fifo_capacity_and_raises_rda() {
        let (mut s, irq, _) = serial();
        s.write(IER, &[IER_RDA]);
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(s.input_room(), 64);
        assert_eq!(s.enqueue_input(&input), 64);
        assert_eq!(s.input_room(), 0);
        assert_eq!(irq.count(), 1);
        assert_eq!(s.enqueue_input(&input[64..]), 0);
        assert_eq!(s.enqueue_input(&[]), 0);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, LSR_DR);
        for expected in 0..64u8 {
            assert_eq!(rd(&mut s, 0), expected);
        }
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
        assert_eq!(s.input_room(), 64);
    }

    #[test]
    fn input_ready_notification_after_refusal() {
        let (mut s, _, _) = serial();
        let ready = Arc::new(MockIrq::default());
        s.set_input_ready_notifier(ready.clone());
        // Accepted in full: no notification owed.
        assert_eq!(s.enqueue_input(b"ab"), 2);
        rd(&mut s, 0);
        rd(&mut s, 0);
        assert_eq!(ready.count(), 0);
        // Refused in part: notified once the guest drains the FIFO.
        assert_eq!(s.enqueue_input(&[b'z'; 70]), 64);
        for _ in 0..63 {
            rd(&mut s, 0);
        }
        assert_eq!(ready.count(), 0);
        rd(&mut s, 0);
        assert_eq!(ready.count(), 1);
        // Further reads of the empty FIFO do not notify again.
        rd(&mut s, 0);
        assert_eq!(ready.count(), 1);
        // A failing notifier is not fatal.
        ready.set_fail(true);
        assert_eq!(s.enqueue_input(&[0; 65]), 64);
        let mut all = [0u8; 64];
        for chunk in all.chunks_mut(1) {
            s.read(0, chunk);
        }
        assert_eq!(s.input_room(), 64);
    }

    #[test]
    fn loopback_mode_discards_host_input() {
        let (mut s, _, cap) = serial();
        s.write(u64::from(MCR), &[MCR_LOOP]);
        assert_eq!(s.enqueue_input(b"lost"), 4);
        assert_eq!(s.input_room(), 64);
        // The guest's own bytes loop back instead of leaving.
        guest_print(&mut s, b"L");
        assert_eq!(rd(&mut s, 0), b'L');
        assert!(cap.bytes().is_empty());
    }

    #[test]
    fn failed_sink_drops_output_without_retrying() {
        let (mut s, irq, cap) = serial();
        s.write(IER, &[IER_THRE]);
        cap.fail_with(Some(io::ErrorKind::BrokenPipe));
        guest_print(&mut s, b"abc");
        // One attempt, then the sink is abandoned; the guest still gets its
        // THR-empty interrupts.
        assert_eq!(cap.attempts(), 1);
        assert_eq!(s.dropped_output_bytes(), 3);
        assert_eq!(irq.count(), 1);
        cap.fail_with(None);
        guest_print(&mut s, b"d");
        assert!(cap.bytes().is_empty());
        // A new sink brings output back.
        let fresh = CaptureSink::default();
        s.set_output(Box::new(fresh.clone()));
        guest_print(&mut s, b"ok");
        assert_eq!(fresh.bytes(), b"ok");
        assert_eq!(s.dropped_output_bytes(), 4);
    }

    #[test]
    fn would_block_drops_the_byte_but_keeps_the_sink() {
        let (mut s, _, cap) = serial();
        cap.fail_with(Some(io::ErrorKind::WouldBlock));
        guest_print(&mut s, b"xy");
        cap.fail_with(None);
        guest_print(&mut s, b"z");
        assert_eq!(cap.bytes(), b"z");
        assert_eq!(s.dropped_output_bytes(), 2);
    }

    #[test]
    fn stalled_socket_peer_does_not_block_the_guest() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        let out: Box<dyn Write + Send> = Box::new(ours);
        let mut s = Serial::new(Arc::new(MockIrq::default()), out);
        // Far more than a socket buffer holds, with nobody reading.
        let chunk = [b'.'; 4096];
        for _ in 0..256 {
            guest_print(&mut s, &chunk);
        }
        assert!(s.dropped_output_bytes() > 0);
        // Then the peer hangs up: still no panic.
        let mut got = vec![0u8; 16];
        theirs.read_exact(&mut got).expect("some output arrived");
        assert_eq!(got, [b'.'; 16]);
        drop(theirs);
        guest_print(&mut s, &chunk);
    }

    #[test]
    fn output_reaches_a_file() {
        let path = std::env::temp_dir().join(format!("vireo-serial-test-{}", std::process::id()));
        let f = File::create(&path).expect("temp file");
        let mut s = Serial::new(Arc::new(MockIrq::default()), Box::new(f));
        guest_print(&mut s, b"to a file\n");
        drop(s);
        let text = std::fs::read(&path).expect("read back");
        std::fs::remove_file(&path).expect("cleanup");
        assert_eq!(text, b"to a file\n");
    }

    #[test]
    fn wide_and_out_of_range_accesses() {
        let (mut s, _, cap) = serial();
        // A word write at 0: THR then IER.
        s.write(0, &[b'W', IER_RDA]);
        assert_eq!(cap.bytes(), b"W");
        assert_eq!(rd(&mut s, IER), IER_RDA);
        // A dword read at 4 crosses the end: MCR, LSR, MSR, SCR.
        s.write(7, &[0x5c]);
        let mut b = [0u8; 4];
        s.read(4, &mut b);
        assert_eq!(b[3], 0x5c);
        let mut b = [0u8; 4];
        s.read(6, &mut b);
        assert_eq!(b[1..], [0x5c, 0xff, 0xff]);
        s.write(8, b"!");
        s.write(u64::MAX, b"!!");
        assert_eq!(cap.bytes(), b"W");
    }

    #[test]
    fn dlab_hides_data_register() {
        let (mut s, _, cap) = serial();
        s.enqueue_input(b"k");
        s.write(LCR, &[0x80]);
        s.write(0, &[0x01]); // divisor low, not output
        assert_eq!(rd(&mut s, 0), 0x01);
        s.write(LCR, &[0x03]);
        assert_eq!(rd(&mut s, 0), b'k');
        assert!(cap.bytes().is_empty());
    }

    #[test]
    fn interrupt_failure_is_not_fatal() {
        let (mut s, irq, cap) = serial();
        irq.set_fail(true);
        s.write(IER, &[IER_RDA | IER_THRE]);
        guest_print(&mut s, b"q");
        assert_eq!(s.enqueue_input(b"in"), 2);
        assert_eq!(cap.bytes(), b"q");
        assert_eq!(rd(&mut s, 0), b'i');
    }

    #[test]
    fn reset_restores_registers_and_keeps_the_sink() {
        let (mut s, _, cap) = serial();
        let ready = Arc::new(MockIrq::default());
        s.set_input_ready_notifier(ready.clone());
        s.write(IER, &[0x0f]);
        s.write(7, &[0xaa]);
        assert_eq!(s.enqueue_input(&[1; 80]), 64);
        s.reset();
        assert_eq!(rd(&mut s, IER), 0);
        assert_eq!(rd(&mut s, 7), 0);
        assert_eq!(s.input_room(), 64);
        // The refused input may now be offered again.
        assert_eq!(ready.count(), 1);
        guest_print(&mut s, b"after");
        assert_eq!(cap.bytes(), b"after");
    }

    #[test]
    fn hammering_never_panics() {
        let (mut s, _, _) = serial();
        s.set_input_ready_notifier(Arc::new(MockIrq::default()));
        let mut rng = crate::testutil::Rng::new(0x3f8);
        for round in 0..100 {
            hammer(&mut s, round, 12, 500);
            let n = rng.below(100) as usize;
            let taken = s.enqueue_input(&vec![0x41; n]);
            assert!(taken <= n);
            assert!(s.input_room() <= 64);
        }
    }
}
