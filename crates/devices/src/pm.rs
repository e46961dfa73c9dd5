//! ACPI fixed-hardware power management: the PM1a event and control blocks,
//! and the 0xCF9 reset-control register.
//!
//! # Bus placement (port I/O)
//! - [`Pm1`]: base [`PM1_BASE`] (0x600), length [`PM1_LEN`] (8). The FADT
//!   describes PM1a_EVT_BLK = 0x600 (PM1_EVT_LEN = 4) and PM1a_CNT_BLK =
//!   0x604 (PM1_CNT_LEN = 2); offsets 6 and 7 are unused and read all-ones.
//! - [`ResetControl`]: base [`RESET_PORT`] (0xcf9), length 1. The FADT's
//!   RESET_REG is a system-I/O byte at 0xcf9 with RESET_VALUE
//!   [`RESET_VALUE`] (0x06).
//!
//! # What the guest sees
//! - PM1 status (+0, u16): write-1-to-clear. Only PWRBTN_STS (bit 8) is ever
//!   set, by [`Pm1::press_power_button`].
//! - PM1 enable (+2, u16): read/write (TMR, GBL, PWRBTN, SLPBTN, RTC enables,
//!   PCIEXP_WAKE_DIS); only PWRBTN_EN has an effect.
//! - PM1 control (+4, u16): SCI_EN (bit 0) reads 1 from reset, since the
//!   FADT has no SMI_CMD port and the machine is always in ACPI mode.
//!   Writing SLP_EN (bit 13) with SLP_TYP (bits 10-12) equal to
//!   [`SLP_TYP_S5`] asks for [`VmRequest::PowerOff`]; the DSDT's `\_S5`
//!   package must therefore carry SLP_TYPa = 5. Other sleep types (S1-S4)
//!   are not supported and are ignored with a rate-limited log line.
//!
//! Registers are modelled as a little byte file, so byte, word and dword
//! accesses at any offset work (a dword at +0 reads status and enable).
//!
//! # SCI
//! The SCI (an [`Interrupt`]) is raised when the power button is pressed
//! while PWRBTN_EN and SCI_EN are set, and when a guest write makes a pending
//! status newly enabled. Delivery is an edge per event; the guest's handler
//! clears the status. There is no PM timer (PM_TMR_BLK) yet.

use std::sync::Arc;

use crate::ratelimit::RateLimitedLog;
use crate::{guest_info, guest_warn, BusDevice, Interrupt, VmControl, VmRequest};

/// Port of the PM1a event block (and of this device).
pub const PM1_BASE: u64 = 0x600;
/// Length of the [`Pm1`] port range.
pub const PM1_LEN: u64 = 8;
/// Offset of PM1a_CNT_BLK from [`PM1_BASE`].
pub const PM1_CNT_OFFSET: u64 = 4;
/// The SLP_TYP value meaning S5 (soft off). The DSDT's `\_S5` must use it.
pub const SLP_TYP_S5: u16 = 5;

/// PM1 status: power button pressed.
pub const PWRBTN_STS: u16 = 1 << 8;
/// PM1 enable: power button event enable.
pub const PWRBTN_EN: u16 = 1 << 8;
/// PM1 control: SCI enable (ACPI mode).
pub const SCI_EN: u16 = 1 << 0;
/// PM1 control: sleep enable (write-only).
pub const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// Enable bits that read back: TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN,
/// PCIEXP_WAKE_DIS.
const EN_MASK: u16 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14);
/// Control bits that read back: SCI_EN, BM_RLD, SLP_TYP. GBL_RLS (bit 2)
/// and SLP_EN are write-only.
const CNT_MASK: u16 = SCI_EN | (1 << 1) | SLP_TYP_MASK;

/// The PM1a event + control blocks.
pub struct Pm1 {
    status: u16,
    enable: u16,
    control: u16,
    sci: Arc<dyn Interrupt>,
    vm: Arc<dyn VmControl>,
    log: RateLimitedLog,
}

impl Pm1 {
    /// A PM1 block raising `sci` (the FADT's SCI_INT, usually IRQ 9) and
    /// sending power-off requests to `vm`.
    pub fn new(sci: Arc<dyn Interrupt>, vm: Arc<dyn VmControl>) -> Pm1 {
        Pm1 {
            status: 0,
            enable: 0,
            control: SCI_EN,
            sci,
            vm,
            log: RateLimitedLog::default(),
        }
    }

    /// Returns the registers to their power-on values (for a machine reset).
    pub fn reset(&mut self) {
        self.status = 0;
        self.enable = 0;
        self.control = SCI_EN;
    }

    /// Presses the power button: sets PWRBTN_STS and raises the SCI if the
    /// guest enabled power-button events. Returns whether the SCI was raised,
    /// that is whether the guest's OSPM is listening (a caller may fall back to
    /// a hard power-off if it is not, or if the guest ignores the event).
    pub fn press_power_button(&mut self) -> bool {
        self.status |= PWRBTN_STS;
        if self.sci_pending() {
            self.raise_sci();
            true
        } else {
            false
        }
    }

    /// The PM1 status register.
    pub fn status(&self) -> u16 {
        self.status
    }

    fn sci_pending(&self) -> bool {
        self.control & SCI_EN != 0 && self.status & self.enable != 0
    }

    fn raise_sci(&self) {
        if let Err(e) = self.sci.trigger() {
            guest_warn!(self.log, "pm: failed to raise the SCI: {e}");
        }
    }

    fn read_byte(&self, addr: u64) -> u8 {
        let (reg, shift) = match addr {
            0 | 1 => (self.status, addr * 8),
            2 | 3 => (self.enable, (addr - 2) * 8),
            4 | 5 => (self.control & CNT_MASK, (addr - 4) * 8),
            _ => return 0xff,
        };
        (reg >> shift) as u8
    }

    fn sleep(&self, slp_typ: u16) {
        if slp_typ == SLP_TYP_S5 {
            self.vm.request(VmRequest::PowerOff);
        } else {
            guest_info!(
                self.log,
                "pm: guest asked for unsupported sleep type {slp_typ}; ignored"
            );
        }
    }
}

/// Replaces byte `shift / 8` of `reg` with `byte`.
fn set_byte(reg: u16, shift: u64, byte: u8) -> u16 {
    (reg & !(0xff << shift)) | (u16::from(byte) << shift)
}

impl BusDevice for Pm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .map_or(0xff, |a| self.read_byte(a));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let was_pending = self.sci_pending();
        // The control value as written (including write-only bits), if any
        // byte of it was written.
        let mut cnt_written: Option<u16> = None;
        for (i, &byte) in data.iter().enumerate() {
            let Some(addr) = offset.checked_add(i as u64) else {
                break;
            };
            match addr {
                0 | 1 => self.status &= !(u16::from(byte) << (addr * 8)),
                2 | 3 => self.enable = set_byte(self.enable, (addr - 2) * 8, byte) & EN_MASK,
                4 | 5 => {
                    let base = cnt_written.unwrap_or(self.control & CNT_MASK);
                    cnt_written = Some(set_byte(base, (addr - 4) * 8, byte));
                }
                _ => {}
            }
        }
        if let Some(cnt) = cnt_written {
            self.control = cnt & CNT_MASK;
            if cnt & SLP_EN != 0 {
                self.sleep((cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT);
            }
        }
        if !was_pending && self.sci_pending() {
            self.raise_sci();
        }
    }
}

/// Port of the reset-control register.
pub const RESET_PORT: u64 = 0xcf9;
/// Length of its port range.
pub const RESET_LEN: u64 = 1;
/// The value the FADT's RESET_VALUE should hold (RST_CPU | SYS_RST).
pub const RESET_VALUE: u8 = 0x06;
/// RST_CPU: writing it set resets the machine.
pub const RST_CPU: u8 = 1 << 2;

/// The 0xCF9 reset-control register (as on Intel chipsets). A write with
/// RST_CPU (bit 2) set asks for [`VmRequest::Reset`]; the other bits are
/// stored and read back. RST_CPU itself reads back as 0: the reset it starts
/// completes at once, and leaving it set would make a later ACPI reset (a
/// single write of [`RESET_VALUE`]) look like no transition to a guest that
/// reads first.
pub struct ResetControl {
    value: u8,
    vm: Arc<dyn VmControl>,
}

impl ResetControl {
    /// A reset register sending its requests to `vm`.
    pub fn new(vm: Arc<dyn VmControl>) -> ResetControl {
        ResetControl { value: 0, vm }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = if offset.checked_add(i as u64) == Some(0) {
                self.value
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only the byte landing on offset 0 is the register.
        let (0, Some(&byte)) = (offset, data.first()) else {
            return;
        };
        self.value = byte & !RST_CPU;
        if byte & RST_CPU != 0 {
            self.vm.request(VmRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hammer, MockControl, MockIrq};

    fn pm() -> (Pm1, Arc<MockIrq>, Arc<MockControl>) {
        let irq = Arc::new(MockIrq::default());
        let ctl = Arc::new(MockControl::default());
        (Pm1::new(irq.clone(), ctl.clone()), irq, ctl)
    }

    fn r16(d: &mut dyn BusDevice, off: u64) -> u16 {
        let mut b = [0u8; 2];
        d.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn w16(d: &mut dyn BusDevice, off: u64, v: u16) {
        d.write(off, &v.to_le_bytes());
    }

    #[test]
    fn power_on_values() {
        let (mut p, _, _) = pm();
        assert_eq!(r16(&mut p, 0), 0);
        assert_eq!(r16(&mut p, 2), 0);
        assert_eq!(r16(&mut p, 4), SCI_EN);
        let mut b = [0u8; 2];
        p.read(6, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }

    #[test]
    fn power_button_without_enable_sets_status_only() {
        let (mut p, irq, _) = pm();
        assert!(!p.press_power_button());
        assert_eq!(irq.count(), 0);
        assert_eq!(r16(&mut p, 0), PWRBTN_STS);
        // Enabling with the status pending raises the SCI at once.
        w16(&mut p, 2, PWRBTN_EN);
        assert_eq!(irq.count(), 1);
        // Rewriting the same enable does not raise it again.
        w16(&mut p, 2, PWRBTN_EN);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn power_button_with_enable_raises_sci_and_status_is_w1c() {
        let (mut p, irq, _) = pm();
        w16(&mut p, 2, PWRBTN_EN);
        assert_eq!(r16(&mut p, 2), PWRBTN_EN);
        assert!(p.press_power_button());
        assert_eq!(irq.count(), 1);
        assert_eq!(r16(&mut p, 0), PWRBTN_STS);
        // Writing 0 clears nothing; writing the bit clears it.
        w16(&mut p, 0, 0);
        assert_eq!(r16(&mut p, 0), PWRBTN_STS);
        w16(&mut p, 0, PWRBTN_STS);
        assert_eq!(r16(&mut p, 0), 0);
        // A byte write to the high status byte clears it too.
        p.press_power_button();
        p.write(1, &[0x01]);
        assert_eq!(p.status(), 0);
    }

    #[test]
    fn sci_needs_sci_en() {
        let (mut p, irq, _) = pm();
        w16(&mut p, 4, 0);
        assert_eq!(r16(&mut p, 4), 0);
        w16(&mut p, 2, PWRBTN_EN);
        assert!(!p.press_power_button());
        assert_eq!(irq.count(), 0);
        // Turning SCI_EN back on with the event pending raises it.
        w16(&mut p, 4, SCI_EN);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn sci_failure_is_not_fatal() {
        let (mut p, irq, _) = pm();
        irq.set_fail(true);
        w16(&mut p, 2, PWRBTN_EN);
        assert!(p.press_power_button());
        assert_eq!(p.status(), PWRBTN_STS);
    }

    #[test]
    fn dword_access_covers_status_and_enable() {
        let (mut p, _, _) = pm();
        p.press_power_button();
        p.write(0, &(u32::from(PWRBTN_EN) << 16).to_le_bytes());
        let mut b = [0u8; 4];
        p.read(0, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            u32::from(PWRBTN_STS) | (u32::from(PWRBTN_EN) << 16)
        );
    }

    #[test]
    fn s5_powers_off() {
        let (mut p, _, ctl) = pm();
        w16(&mut p, 4, SCI_EN | (SLP_TYP_S5 << 10) | SLP_EN);
        assert_eq!(ctl.take(), vec![VmRequest::PowerOff]);
        // SLP_EN is write-only; SLP_TYP reads back.
        assert_eq!(r16(&mut p, 4), SCI_EN | (SLP_TYP_S5 << 10));
    }

    #[test]
    fn s5_by_high_byte_write() {
        let (mut p, _, ctl) = pm();
        p.write(5, &[((SLP_TYP_S5 << 10 | SLP_EN) >> 8) as u8]);
        assert_eq!(ctl.take(), vec![VmRequest::PowerOff]);
        // And through a dword write at the start of the event block.
        let v = u64::from(SCI_EN | (SLP_TYP_S5 << 10) | SLP_EN) << 32;
        p.write(0, &v.to_le_bytes());
        assert_eq!(ctl.take(), vec![VmRequest::PowerOff]);
    }

    #[test]
    fn other_sleep_types_and_slp_typ_without_slp_en_do_nothing() {
        let (mut p, _, ctl) = pm();
        for typ in 0..8u16 {
            if typ != SLP_TYP_S5 {
                w16(&mut p, 4, (typ << 10) | SLP_EN);
            }
        }
        w16(&mut p, 4, SLP_TYP_S5 << 10);
        // Writing only the low byte keeps SLP_TYP but has no SLP_EN.
        p.write(4, &[1]);
        assert!(ctl.take().is_empty());
        assert_eq!(r16(&mut p, 4), SCI_EN | (SLP_TYP_S5 << 10));
    }

    #[test]
    fn reset_restores_power_on_values() {
        let (mut p, _, _) = pm();
        w16(&mut p, 2, 0xffff);
        assert_eq!(r16(&mut p, 2), EN_MASK);
        p.press_power_button();
        w16(&mut p, 4, 0);
        p.reset();
        assert_eq!((p.status, p.enable, p.control), (0, 0, SCI_EN));
    }

    #[test]
    fn reset_register() {
        let ctl = Arc::new(MockControl::default());
        let mut r = ResetControl::new(ctl.clone());
        r.write(0, &[0x02]);
        assert!(ctl.take().is_empty());
        let mut b = [0u8; 2];
        r.read(0, &mut b);
        assert_eq!(b, [0x02, 0xff]);
        r.write(0, &[RESET_VALUE]);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
        r.read(0, &mut b[..1]);
        assert_eq!(b[0], RESET_VALUE & !RST_CPU);
        // The same value again resets again (the machine was reset in between).
        r.write(0, &[RESET_VALUE]);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
        // Writes not landing on offset 0 are ignored; wider ones use byte 0.
        r.write(1, &[0xff]);
        r.write(0, &[]);
        assert!(ctl.take().is_empty());
        r.write(0, &[0x0e, 0, 0, 0]);
        assert_eq!(ctl.take(), vec![VmRequest::Reset]);
    }

    #[test]
    fn hammering_never_panics() {
        let (mut p, _, ctl) = pm();
        hammer(&mut p, 0x9a11, 12, 50_000);
        p.press_power_button();
        assert!(ctl.take().iter().all(|r| *r == VmRequest::PowerOff));
        let ctl = Arc::new(MockControl::default());
        let mut r = ResetControl::new(ctl.clone());
        hammer(&mut r, 0xcf9, 4, 50_000);
        assert!(ctl.take().iter().all(|r| *r == VmRequest::Reset));
    }
}
