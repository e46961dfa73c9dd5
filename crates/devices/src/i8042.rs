//! A minimal i8042 PS/2 controller: enough for guests that probe it and for
//! the classic reset paths. No keyboard or mouse is attached.
//!
//! # Bus placement (port I/O)
//! One device at base [`I8042_BASE`] (0x60), length [`I8042_LEN`] (5):
//! offset 0 is the data port (0x60), offset 4 the status (read) / command
//! (write) port (0x64). Offsets 1-3 (0x61-0x63) read all-ones and ignore
//! writes; with KVM's in-kernel PIT, port 0x61 (speaker/NMI status) is
//! handled by the kernel and never reaches this device. Wider accesses are
//! split into byte accesses at consecutive ports.
//!
//! # Behaviour
//! - Reset: command 0xFE (or any 0xF0-0xFF pulse command with bit 0 clear),
//!   or command 0xD1 followed by a data byte with bit 0 clear, sends
//!   [`VmRequest::Reset`].
//! - 0x20-0x3F / 0x60-0x7F read / write the controller RAM (byte 0 is the
//!   command byte, CTR). 0xAA self-test answers 0x55, 0xAB and 0xA9 (port
//!   tests) 0x00. 0xAD / 0xAE and 0xA7 / 0xA8 disable / enable the keyboard
//!   and aux ports (CTR bits 4 and 5). 0xD0 reads the output port; 0xD2 /
//!   0xD3 echo the next data byte as keyboard / aux data.
//! - Bytes sent to the keyboard (plain data writes) or to the mouse (0xD4)
//!   find no device: the controller answers 0xFF with the time-out status
//!   bit set, as an AT controller does, so drivers give up quickly.
//! - Status: output-buffer-full (bit 0), system flag (bit 2, from CTR), last
//!   write was a command (bit 3), not inhibited (bit 4), aux data (bit 5),
//!   time-out (bit 6).
//! - Interrupts are optional: without [`I8042::set_keyboard_interrupt`] /
//!   [`I8042::set_aux_interrupt`] drivers must poll (firmware and the reset
//!   paths do). With them, a byte entering the output buffer raises IRQ 1 or
//!   12 when CTR enables it.

use std::sync::Arc;

use crate::ratelimit::RateLimitedLog;
use crate::{guest_debug, guest_warn, BusDevice, Interrupt, VmControl, VmRequest};

/// First port of the controller.
pub const I8042_BASE: u64 = 0x60;
/// Length of its port range (0x60..=0x64).
pub const I8042_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const SR_OBF: u8 = 1 << 0;
const SR_SYS: u8 = 1 << 2;
const SR_CMD: u8 = 1 << 3;
const SR_NOT_INHIBITED: u8 = 1 << 4;
const SR_AUX_OBF: u8 = 1 << 5;
const SR_TIMEOUT: u8 = 1 << 6;

// Command byte (CTR) bits.
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_AUX_INT: u8 = 1 << 1;
const CTR_SYS: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;
/// Keyboard interrupt on, system flag set (POST passed), aux port disabled
/// (there is no mouse), scancode translation on.
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_TRANSLATE;

// Output port bits.
const OP_RESET_N: u8 = 1 << 0;
const OP_A20: u8 = 1 << 1;
const OP_KBD_OBF: u8 = 1 << 4;
const OP_AUX_OBF: u8 = 1 << 5;
/// Reset line not asserted, A20 enabled (KVM does not mask A20).
const OP_DEFAULT: u8 = OP_RESET_N | OP_A20;

// Commands.
const CMD_READ_RAM: u8 = 0x20;
const CMD_WRITE_RAM: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX_DEVICE: u8 = 0xd4;
const CMD_PULSE_BASE: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// What the controller answers when no device responds.
const NO_DEVICE: u8 = 0xff;

/// Where the next byte written to the data port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    Ram(u8),
    OutputPort,
    KbdBuffer,
    AuxBuffer,
    AuxDevice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Kbd,
    Aux,
}

/// The controller.
pub struct I8042 {
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; 32],
    output_port: u8,
    /// The output buffer (one byte, as on the real part).
    out: Option<(u8, Source)>,
    /// What a data read returns when the buffer is empty (the stale latch).
    last_out: u8,
    timeout: bool,
    last_was_command: bool,
    next_data: DataTarget,
    vm: Arc<dyn VmControl>,
    kbd_irq: Option<Arc<dyn Interrupt>>,
    aux_irq: Option<Arc<dyn Interrupt>>,
    log: RateLimitedLog,
}

impl I8042 {
    /// A controller sending reset requests to `vm`, with no interrupts wired.
    pub fn new(vm: Arc<dyn VmControl>) -> I8042 {
        let mut ram = [0u8; 32];
        ram[0] = CTR_DEFAULT;
        I8042 {
            ram,
            output_port: OP_DEFAULT,
            out: None,
            last_out: 0,
            timeout: false,
            last_was_command: false,
            next_data: DataTarget::Keyboard,
            vm,
            kbd_irq: None,
            aux_irq: None,
            log: RateLimitedLog::default(),
        }
    }

    /// Wires the keyboard interrupt (IRQ 1).
    pub fn set_keyboard_interrupt(&mut self, irq: Arc<dyn Interrupt>) {
        self.kbd_irq = Some(irq);
    }

    /// Wires the aux (mouse) interrupt (IRQ 12).
    pub fn set_aux_interrupt(&mut self, irq: Arc<dyn Interrupt>) {
        self.aux_irq = Some(irq);
    }

    /// Returns the controller to its power-on state (for a machine reset).
    /// The interrupt wiring is kept.
    pub fn reset(&mut self) {
        self.ram = [0; 32];
        self.ram[0] = CTR_DEFAULT;
        self.output_port = OP_DEFAULT;
        self.out = None;
        self.last_out = 0;
        self.timeout = false;
        self.last_was_command = false;
        self.next_data = DataTarget::Keyboard;
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut s = SR_NOT_INHIBITED;
        if let Some((_, src)) = self.out {
            s |= SR_OBF;
            if src == Source::Aux {
                s |= SR_AUX_OBF;
            }
        }
        if self.ctr() & CTR_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_was_command {
            s |= SR_CMD;
        }
        if self.timeout {
            s |= SR_TIMEOUT;
        }
        s
    }

    /// Puts `byte` in the output buffer and raises the matching interrupt
    /// if the command byte enables it.
    fn push(&mut self, byte: u8, src: Source) {
        self.out = Some((byte, src));
        let (enabled, irq) = match src {
            Source::Kbd => (self.ctr() & CTR_KBD_INT != 0, &self.kbd_irq),
            Source::Aux => (self.ctr() & CTR_AUX_INT != 0, &self.aux_irq),
        };
        if let (true, Some(irq)) = (enabled, irq) {
            if let Err(e) = irq.trigger() {
                guest_warn!(self.log, "i8042: failed to raise interrupt: {e}");
            }
        }
    }

    /// A byte sent to a device that is not there.
    fn no_device(&mut self, src: Source) {
        self.timeout = true;
        self.push(NO_DEVICE, src);
    }

    fn read_data(&mut self) -> u8 {
        self.timeout = false;
        match self.out.take() {
            Some((byte, _)) => {
                self.last_out = byte;
                byte
            }
            None => self.last_out,
        }
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.timeout = false;
        // A new command cancels one still waiting for its data byte.
        self.next_data = DataTarget::Keyboard;
        match cmd {
            0x20..=0x3f => self.push(self.ram[usize::from(cmd - CMD_READ_RAM)], Source::Kbd),
            0x60..=0x7f => self.next_data = DataTarget::Ram(cmd - CMD_WRITE_RAM),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST => self.push(PORT_TEST_OK, Source::Kbd),
            CMD_SELF_TEST => {
                self.ram[0] |= CTR_SYS;
                self.push(SELF_TEST_OK, Source::Kbd);
            }
            CMD_KBD_TEST => self.push(PORT_TEST_OK, Source::Kbd),
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBD_DISABLE,
            CMD_READ_OUTPUT_PORT => {
                let mut v = self.output_port & !(OP_KBD_OBF | OP_AUX_OBF);
                match self.out {
                    Some((_, Source::Kbd)) => v |= OP_KBD_OBF,
                    Some((_, Source::Aux)) => v |= OP_AUX_OBF,
                    None => {}
                }
                self.push(v, Source::Kbd);
            }
            CMD_WRITE_OUTPUT_PORT => self.next_data = DataTarget::OutputPort,
            CMD_WRITE_KBD_BUFFER => self.next_data = DataTarget::KbdBuffer,
            CMD_WRITE_AUX_BUFFER => self.next_data = DataTarget::AuxBuffer,
            CMD_WRITE_AUX_DEVICE => self.next_data = DataTarget::AuxDevice,
            CMD_PULSE_BASE..=0xff => {
                // Bits 0-3 select output lines to pulse low; line 0 is reset.
                if cmd & OP_RESET_N == 0 {
                    self.vm.request(VmRequest::Reset);
                }
            }
            _ => {
                guest_debug!(self.log, "i8042: ignoring unsupported command {cmd:#04x}");
            }
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.last_was_command = false;
        self.timeout = false;
        let target = std::mem::replace(&mut self.next_data, DataTarget::Keyboard);
        match target {
            DataTarget::Keyboard => self.no_device(Source::Kbd),
            DataTarget::Ram(i) => self.ram[usize::from(i) % self.ram.len()] = byte,
            DataTarget::OutputPort => {
                self.output_port = byte;
                if byte & OP_RESET_N == 0 {
                    self.vm.request(VmRequest::Reset);
                }
            }
            DataTarget::KbdBuffer => self.push(byte, Source::Kbd),
            DataTarget::AuxBuffer => self.push(byte, Source::Aux),
            DataTarget::AuxDevice => self.no_device(Source::Aux),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(DATA) => self.read_data(),
                Some(COMMAND) => self.status(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(DATA) => self.write_data(b),
                Some(COMMAND) => self.write_command(b),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hammer, MockControl, MockIrq};

    fn dev() -> (I8042, Arc<MockControl>) {
        let ctl = Arc::new(MockControl::default());
        (I8042::new(ctl.clone()), ctl)
    }

    fn cmd(d: &mut I8042, c: u8) {
        d.write(COMMAND, &[c]);
    }
    fn data(d: &mut I8042, v: u8) {
        d.write(DATA, &[v]);
    }
    fn status(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(COMMAND, &mut b);
        b[0]
    }
    fn read(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(DATA, &mut b);
        b[0]
    }

    #[test]
    fn pulse_reset_command_requests_reset() {
        let (mut d, ctl) = dev();
        cmd(&mut d, 0xfe);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
        // 0xFF pulses no line; 0xF0 pulses all including reset.
        cmd(&mut d, 0xff);
        assert!(ctl.take().is_empty());
        cmd(&mut d, 0xf0);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
    }

    #[test]
    fn output_port_write_with_bit0_clear_resets() {
        let (mut d, ctl) = dev();
        cmd(&mut d, CMD_WRITE_OUTPUT_PORT);
        data(&mut d, 0x03);
        assert!(ctl.take().is_empty());
        cmd(&mut d, CMD_WRITE_OUTPUT_PORT);
        data(&mut d, 0x02);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
        // The next data byte goes to the (absent) keyboard, not the port.
        data(&mut d, 0x00);
        assert!(ctl.take().is_empty());
    }

    #[test]
    fn command_cancels_pending_output_port_write() {
        let (mut d, ctl) = dev();
        cmd(&mut d, CMD_WRITE_OUTPUT_PORT);
        cmd(&mut d, CMD_KBD_ENABLE);
        data(&mut d, 0x00);
        assert!(ctl.take().is_empty());
    }

    #[test]
    fn self_test_and_port_tests() {
        let (mut d, _) = dev();
        assert_eq!(status(&mut d) & SR_OBF, 0);
        cmd(&mut d, CMD_SELF_TEST);
        let s = status(&mut d);
        assert_eq!(s & (SR_OBF | SR_SYS | SR_CMD), SR_OBF | SR_SYS | SR_CMD);
        assert_eq!(read(&mut d), 0x55);
        assert_eq!(status(&mut d) & SR_OBF, 0);
        cmd(&mut d, CMD_KBD_TEST);
        assert_eq!(read(&mut d), 0x00);
        cmd(&mut d, CMD_AUX_TEST);
        assert_eq!(read(&mut d), 0x00);
        // An empty buffer returns the stale latch.
        assert_eq!(read(&mut d), 0x00);
    }

    #[test]
    fn command_byte_read_write_and_port_enables() {
        let (mut d, _) = dev();
        cmd(&mut d, 0x20);
        assert_eq!(read(&mut d), CTR_DEFAULT);
        cmd(&mut d, 0x60);
        assert_eq!(status(&mut d) & SR_CMD, SR_CMD);
        data(&mut d, 0x00);
        assert_eq!(status(&mut d) & (SR_CMD | SR_SYS | SR_OBF), 0);
        cmd(&mut d, CMD_KBD_DISABLE);
        cmd(&mut d, CMD_AUX_DISABLE);
        cmd(&mut d, 0x20);
        assert_eq!(read(&mut d), CTR_KBD_DISABLE | CTR_AUX_DISABLE);
        cmd(&mut d, CMD_KBD_ENABLE);
        cmd(&mut d, CMD_AUX_ENABLE);
        cmd(&mut d, 0x20);
        assert_eq!(read(&mut d), 0);
        // Other RAM bytes.
        cmd(&mut d, 0x7f);
        data(&mut d, 0xab);
        cmd(&mut d, 0x3f);
        assert_eq!(read(&mut d), 0xab);
    }

    #[test]
    fn output_port_and_echo_commands() {
        let (mut d, _) = dev();
        cmd(&mut d, CMD_READ_OUTPUT_PORT);
        assert_eq!(read(&mut d), OP_DEFAULT);
        cmd(&mut d, CMD_WRITE_AUX_BUFFER);
        data(&mut d, 0x5a);
        assert_eq!(status(&mut d) & (SR_OBF | SR_AUX_OBF), SR_OBF | SR_AUX_OBF);
        assert_eq!(read(&mut d), 0x5a);
        cmd(&mut d, CMD_WRITE_KBD_BUFFER);
        data(&mut d, 0x1c);
        assert_eq!(status(&mut d) & (SR_OBF | SR_AUX_OBF), SR_OBF);
        cmd(&mut d, CMD_READ_OUTPUT_PORT);
        // The read replaces the pending byte; the port shows no OBF bits
        // beyond the one for the byte that was pending.
        assert_eq!(read(&mut d), OP_DEFAULT | OP_KBD_OBF);
    }

    #[test]
    fn absent_keyboard_and_mouse_time_out() {
        let (mut d, _) = dev();
        data(&mut d, 0xf2); // keyboard "identify"
        assert_eq!(status(&mut d) & (SR_OBF | SR_TIMEOUT), SR_OBF | SR_TIMEOUT);
        assert_eq!(read(&mut d), NO_DEVICE);
        assert_eq!(status(&mut d) & (SR_OBF | SR_TIMEOUT), 0);
        cmd(&mut d, CMD_WRITE_AUX_DEVICE);
        data(&mut d, 0xf2);
        assert_eq!(
            status(&mut d) & (SR_OBF | SR_AUX_OBF | SR_TIMEOUT),
            SR_OBF | SR_AUX_OBF | SR_TIMEOUT
        );
        assert_eq!(read(&mut d), NO_DEVICE);
    }

    #[test]
    fn interrupts_follow_the_command_byte() {
        let (mut d, _) = dev();
        let kbd = Arc::new(MockIrq::default());
        let aux = Arc::new(MockIrq::default());
        d.set_keyboard_interrupt(kbd.clone());
        d.set_aux_interrupt(aux.clone());
        cmd(&mut d, CMD_SELF_TEST);
        assert_eq!((kbd.count(), aux.count()), (1, 0));
        // Aux data with the aux interrupt disabled (default CTR).
        cmd(&mut d, CMD_WRITE_AUX_BUFFER);
        data(&mut d, 1);
        assert_eq!((kbd.count(), aux.count()), (1, 0));
        cmd(&mut d, 0x60);
        data(&mut d, CTR_AUX_INT | CTR_SYS);
        cmd(&mut d, CMD_WRITE_AUX_BUFFER);
        data(&mut d, 1);
        cmd(&mut d, CMD_KBD_TEST);
        assert_eq!((kbd.count(), aux.count()), (1, 1));
        // A failing interrupt is logged, not fatal.
        aux.set_fail(true);
        cmd(&mut d, CMD_WRITE_AUX_BUFFER);
        data(&mut d, 7);
        assert_eq!(read(&mut d), 7);
    }

    #[test]
    fn unused_ports_and_wide_accesses() {
        let (mut d, ctl) = dev();
        let mut b = [0u8; 3];
        d.read(1, &mut b);
        assert_eq!(b, [0xff; 3]);
        d.write(1, &[0xfe, 0xfe, 0xfe]);
        assert!(ctl.take().is_empty());
        // A word write at 0x63 reaches 0x64 with its second byte.
        d.write(3, &[0x00, 0xfe]);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
        // A 5-byte read from 0x60 sees data, three unused ports, then status.
        cmd(&mut d, CMD_SELF_TEST);
        let mut w = [0u8; 5];
        d.read(0, &mut w);
        assert_eq!(w[..4], [0x55, 0xff, 0xff, 0xff]);
        assert_eq!(w[4] & SR_OBF, 0);
    }

    #[test]
    fn reset_restores_power_on_state() {
        let (mut d, _) = dev();
        cmd(&mut d, 0x60);
        data(&mut d, 0);
        cmd(&mut d, CMD_WRITE_OUTPUT_PORT);
        d.reset();
        cmd(&mut d, 0x20);
        assert_eq!(read(&mut d), CTR_DEFAULT);
        assert_eq!(d.next_data, DataTarget::Keyboard);
    }

    #[test]
    fn hammering_never_panics() {
        let (mut d, ctl) = dev();
        d.set_keyboard_interrupt(Arc::new(MockIrq::default()));
        hammer(&mut d, 0x8042, 8, 50_000);
        assert!(ctl.take().iter().all(|r| *r == VmRequest::Reset));
    }
}
