//! An MC146818-compatible CMOS real-time clock with 128 bytes of CMOS RAM.
//!
//! # Bus placement (port I/O)
//! Base [`RTC_BASE`] (0x70), length [`RTC_LEN`] (2): offset 0 is the index
//! register (bits 0-6 select a CMOS byte, bit 7 masks NMI; reads return
//! all-ones as the port is write-only), offset 1 the data register. A word
//! write at 0x70 sets the index and then writes the data byte.
//!
//! # Time
//! The time registers (0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 weekday
//! (1 = Sunday), 0x07 day, 0x08 month, 0x09 year, 0x32 century) are computed
//! on every read from an injected [`Clock`] (the host's UTC wall clock in
//! production) plus a guest offset, in the format register B selects: BCD or
//! binary (DM, bit 2), 24- or 12-hour (bit 1; 12-hour sets bit 7 for PM).
//!
//! The guest sets the time as on the real part: it sets register B's SET bit
//! (the time registers then freeze and accept writes), writes them, and
//! clears SET; the written time (read in the register-B format in force while
//! SET was set) becomes an offset from the host clock (whole seconds) kept
//! for the device's lifetime. A time register written while
//! SET is clear takes effect at once the same way. The weekday is always
//! derived from the date outside SET mode (writes to it are kept only while
//! SET is set). An invalid time (bad BCD digit, month 13, ...) is refused with
//! a rate-limited log line and the clock keeps its previous offset.
//!
//! # Control registers
//! - A (0x0a): divider and rate-select bits are stored and read back. UIP
//!   (bit 7) reads 1 during the 244 us before each second boundary and the
//!   1984 us update after it, when the divider is in its normal setting
//!   (010) and SET is clear.
//! - B (0x0b): stored; SET as above (setting SET also clears UIE, per the
//!   datasheet). Power-on value 0x02: BCD, 24-hour.
//! - C (0x0c): read-only flags, cleared by reading. UF (bit 4) reports that
//!   at least one update happened since the last read; IRQF (bit 7) follows
//!   UF && UIE.
//! - D (0x0d): VRT (bit 7) always set: the battery is good.
//!
//! Missing: alarm and periodic interrupts (AF and PF never set, no IRQ 8
//! delivery; the alarm registers 0x01/0x03/0x05 are plain storage), the
//! daylight-saving bit, and a stopped clock while the divider is held in
//! reset (only UIP notices the divider).
//!
//! # CMOS RAM
//! All other bytes (0x0e-0x7f except 0x32) are plain RAM that lives as long
//! as the device: the monitor keeps the device across guest resets, like a
//! battery-backed part, so there is deliberately no `reset()`. [`Rtc::with_ram_size`]
//! fills the PC memory-size bytes firmware expects.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ratelimit::RateLimitedLog;
use crate::{guest_debug, BusDevice};

/// First port of the RTC.
pub const RTC_BASE: u64 = 0x70;
/// Length of its port range.
pub const RTC_LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

const A_UIP: u8 = 1 << 7;
const A_DIVIDER_MASK: u8 = 0b111 << 4;
const A_DIVIDER_NORMAL: u8 = 0b010 << 4;
/// Divider 32.768 kHz, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
const B_SET: u8 = 1 << 7;
const B_UIE: u8 = 1 << 4;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;
const B_DEFAULT: u8 = B_24H;
const C_IRQF: u8 = 1 << 7;
const C_UF: u8 = 1 << 4;
const D_VRT: u8 = 1 << 7;
const HOUR_PM: u8 = 1 << 7;

/// UIP is raised this long before the second boundary...
const UIP_BEFORE_NS: u32 = 244_000;
/// ...and stays up this long after it (the update cycle).
const UIP_AFTER_NS: u32 = 1_984_000;

const SECS_PER_DAY: i64 = 86_400;

/// A source of wall-clock time: the time elapsed since the Unix epoch, UTC.
pub trait Clock: Send {
    /// Now, as a duration since 1970-01-01T00:00:00Z.
    fn now(&self) -> Duration;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A host clock before 1970 is broken; report the epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl<F: Fn() -> Duration + Send> Clock for F {
    fn now(&self) -> Duration {
        self()
    }
}

/// Guest RAM sizes for the CMOS memory bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RamSize {
    /// Bytes of RAM below 4 GiB (including the first MiB).
    pub below_4g: u64,
    /// Bytes of RAM above 4 GiB.
    pub above_4g: u64,
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday ... 7 = Saturday.
    weekday: u8,
}

/// Days from 1970-01-01 to `year-month-day` in the proleptic Gregorian
/// calendar. `day` past the month's end rolls into the next month.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    // Count years from March, so that February (and its leap day) is the
    // last month of a "year" and month lengths before it are fixed.
    let (y, m) = if month <= 2 {
        (year - 1, i64::from(month) + 9)
    } else {
        (year, i64::from(month) - 3)
    };
    let cycle = y.div_euclid(400); // 400-year cycles of 146,097 days
    let year_of_cycle = y.rem_euclid(400);
    // Days from March 1 to the first of month m (March = 0): month lengths
    // 31,30,31,30,31,31,30,31,30,31,31,(29) follow (153 m + 2) / 5.
    let day_of_year = (153 * m + 2) / 5 + i64::from(day) - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    // 719,468 days separate 0000-03-01 from 1970-01-01.
    cycle * 146_097 + day_of_cycle - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let cycle = z.div_euclid(146_097);
    let day_of_cycle = z.rem_euclid(146_097);
    // Remove the leap days to find the year within the cycle.
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let m = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * m + 2) / 5 + 1;
    let (month, year_shift) = if m < 10 { (m + 3, 0) } else { (m - 9, 1) };
    // All three are in range by construction: month 1..=12, day 1..=31.
    (
        year_of_cycle + cycle * 400 + year_shift,
        month as u8,
        day as u8,
    )
}

impl DateTime {
    fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5 in RTC numbering).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0xf);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

/// The register format selected by register B.
#[derive(Debug, Clone, Copy)]
struct Format {
    binary: bool,
    h24: bool,
}

impl Format {
    fn from_b(b: u8) -> Format {
        Format {
            binary: b & B_BINARY != 0,
            h24: b & B_24H != 0,
        }
    }

    fn encode(self, v: u8) -> u8 {
        if self.binary {
            v
        } else {
            to_bcd(v)
        }
    }

    /// Decodes a register value that must lie in `range`.
    fn decode(self, v: u8, range: std::ops::RangeInclusive<u8>) -> Option<u8> {
        let v = if self.binary { v } else { from_bcd(v)? };
        range.contains(&v).then_some(v)
    }

    fn encode_hour(self, h24: u8) -> u8 {
        if self.h24 {
            return self.encode(h24);
        }
        let pm = if h24 >= 12 { HOUR_PM } else { 0 };
        let h12 = match h24 % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(self, v: u8) -> Option<u8> {
        if self.h24 {
            return self.decode(v, 0..=23);
        }
        let h12 = self.decode(v & !HOUR_PM, 1..=12)?;
        Some(h12 % 12 + if v & HOUR_PM != 0 { 12 } else { 0 })
    }

    /// The value of time register `reg` for `t`.
    fn field(self, t: &DateTime, reg: u8) -> u8 {
        match reg {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS => self.encode_hour(t.hour),
            WEEKDAY => self.encode(t.weekday),
            DAY => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode(t.year.rem_euclid(100) as u8),
            CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u8),
            _ => 0,
        }
    }
}

/// The time registers as raw bytes, in register order.
const TIME_REGS: [u8; 8] = [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY];

fn is_time_reg(reg: u8) -> bool {
    TIME_REGS.contains(&reg)
}

/// Decodes a set of raw time registers (indexed like the CMOS) into Unix
/// seconds. The weekday is ignored (it is derived from the date).
fn decode_time(fmt: Format, raw: impl Fn(u8) -> u8) -> Option<i64> {
    let t = DateTime {
        second: fmt.decode(raw(SECONDS), 0..=59)?,
        minute: fmt.decode(raw(MINUTES), 0..=59)?,
        hour: fmt.decode_hour(raw(HOURS))?,
        day: fmt.decode(raw(DAY), 1..=31)?,
        month: fmt.decode(raw(MONTH), 1..=12)?,
        year: i64::from(fmt.decode(raw(CENTURY), 0..=99)?) * 100
            + i64::from(fmt.decode(raw(YEAR), 0..=99)?),
        weekday: 0,
    };
    Some(t.to_unix())
}

/// The RTC and CMOS RAM.
pub struct Rtc {
    cmos: [u8; 128],
    index: u8,
    nmi_masked: bool,
    clock: Box<dyn Clock>,
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// Guest second seen at the last read of register C.
    last_c_second: i64,
    log: RateLimitedLog,
}

impl Rtc {
    /// An RTC reading time from `clock`, with empty CMOS RAM.
    pub fn new(clock: Box<dyn Clock>) -> Rtc {
        let mut cmos = [0u8; 128];
        cmos[usize::from(REG_A)] = A_DEFAULT;
        cmos[usize::from(REG_B)] = B_DEFAULT;
        let mut rtc = Rtc {
            cmos,
            index: 0,
            nmi_masked: false,
            clock,
            offset: 0,
            last_c_second: 0,
            log: RateLimitedLog::default(),
        };
        rtc.last_c_second = rtc.guest_now().0;
        rtc
    }

    /// An RTC whose CMOS carries the standard PC memory-size bytes for `ram`:
    /// 0x15/0x16 base memory (640 KiB), 0x17/0x18 and 0x30/0x31 KiB above
    /// 1 MiB (capped at 0xffff), 0x34/0x35 64-KiB units above 16 MiB below
    /// 4 GiB, 0x5b-0x5d 64-KiB units above 4 GiB, and the standard checksum
    /// of 0x10-0x2d at 0x2e/0x2f. All little-endian except the checksum.
    pub fn with_ram_size(clock: Box<dyn Clock>, ram: RamSize) -> Rtc {
        let mut rtc = Rtc::new(clock);
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        const UNIT_64K: u64 = 64 * KIB;
        let put16 = |c: &mut [u8; 128], at: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            c[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(&mut rtc.cmos, 0x15, 640);
        let ext_kib = ram.below_4g.saturating_sub(MIB) / KIB;
        put16(&mut rtc.cmos, 0x17, ext_kib);
        put16(&mut rtc.cmos, 0x30, ext_kib);
        put16(
            &mut rtc.cmos,
            0x34,
            ram.below_4g.saturating_sub(16 * MIB) / UNIT_64K,
        );
        let high = (ram.above_4g / UNIT_64K).min(0xff_ffff) as u32;
        rtc.cmos[0x5b..=0x5d].copy_from_slice(&high.to_le_bytes()[..3]);
        let sum: u16 = rtc.cmos[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
        rtc.cmos[0x2e..=0x2f].copy_from_slice(&sum.to_be_bytes());
        rtc
    }

    /// Whether the guest masked NMIs through bit 7 of the index port.
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// The guest's current time as (Unix seconds, nanoseconds into it).
    fn guest_now(&self) -> (i64, u32) {
        let now = self.clock.now();
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        (secs.saturating_add(self.offset), now.subsec_nanos())
    }

    fn reg_b(&self) -> u8 {
        self.cmos[usize::from(REG_B)]
    }

    fn format(&self) -> Format {
        Format::from_b(self.reg_b())
    }

    fn frozen(&self) -> bool {
        self.reg_b() & B_SET != 0
    }

    fn running(&self) -> bool {
        !self.frozen() && self.cmos[usize::from(REG_A)] & A_DIVIDER_MASK == A_DIVIDER_NORMAL
    }

    /// The time register `reg` as the guest sees it now.
    fn time_reg(&self, reg: u8) -> u8 {
        if self.frozen() {
            return self.cmos[usize::from(reg)];
        }
        self.format()
            .field(&DateTime::from_unix(self.guest_now().0), reg)
    }

    /// Makes the guest clock read `guest_secs` now.
    fn set_time(&mut self, guest_secs: i64) {
        let host = i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX);
        self.offset = guest_secs.saturating_sub(host);
        self.last_c_second = guest_secs;
    }

    fn read_data(&mut self) -> u8 {
        let reg = self.index;
        match reg {
            r if is_time_reg(r) => self.time_reg(r),
            REG_A => {
                let (_, nanos) = self.guest_now();
                let in_update = !(UIP_AFTER_NS..1_000_000_000 - UIP_BEFORE_NS).contains(&nanos);
                let uip = if self.running() && in_update {
                    A_UIP
                } else {
                    0
                };
                (self.cmos[usize::from(REG_A)] & !A_UIP) | uip
            }
            REG_C => {
                let (now, _) = self.guest_now();
                let mut c = 0;
                if self.running() && now != self.last_c_second {
                    c |= C_UF;
                    if self.reg_b() & B_UIE != 0 {
                        c |= C_IRQF;
                    }
                }
                self.last_c_second = now;
                c
            }
            REG_D => D_VRT,
            _ => self.cmos[usize::from(reg & 0x7f)],
        }
    }

    fn write_data(&mut self, v: u8) {
        let reg = self.index;
        match reg {
            r if is_time_reg(r) && self.frozen() => self.cmos[usize::from(r)] = v,
            WEEKDAY => {} // derived from the date while the clock runs
            r if is_time_reg(r) => {
                // Apply one field: take the current registers, replace it,
                // and decode.
                let fmt = self.format();
                let now = DateTime::from_unix(self.guest_now().0);
                match decode_time(fmt, |x| if x == r { v } else { fmt.field(&now, x) }) {
                    Some(t) => self.set_time(t),
                    None => {
                        guest_debug!(
                            self.log,
                            "rtc: ignoring invalid value {v:#04x} for register {r:#04x}"
                        )
                    }
                }
            }
            REG_A => self.cmos[usize::from(REG_A)] = v & !A_UIP,
            REG_B => self.write_b(v),
            REG_C | REG_D => {} // read-only
            _ => self.cmos[usize::from(reg & 0x7f)] = v,
        }
    }

    fn write_b(&mut self, v: u8) {
        let was_frozen = self.frozen();
        let v = if v & B_SET != 0 { v & !B_UIE } else { v };
        if !was_frozen && v & B_SET != 0 {
            // Freeze: latch the current time into the registers, in the
            // new format (the one the guest will read them in).
            let fmt = Format::from_b(v);
            let now = DateTime::from_unix(self.guest_now().0);
            for r in TIME_REGS {
                self.cmos[usize::from(r)] = fmt.field(&now, r);
            }
        }
        // Frozen registers were written in the format in force while SET
        // was set, so they are read back in it.
        let written_in = self.format();
        self.cmos[usize::from(REG_B)] = v;
        if was_frozen && v & B_SET == 0 {
            match decode_time(written_in, |r| self.cmos[usize::from(r)]) {
                Some(t) => self.set_time(t),
                None => guest_debug!(
                    self.log,
                    "rtc: guest set an invalid time; keeping the old one"
                ),
            }
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(1) => self.read_data(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => {
                    self.index = b & 0x7f;
                    self.nmi_masked = b & 0x80 != 0;
                }
                Some(1) => self.write_data(b),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hammer, Rng};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A settable clock (nanoseconds since the epoch).
    #[derive(Clone, Default)]
    struct TestClock(Arc<AtomicU64>);

    impl TestClock {
        fn at(secs: u64) -> TestClock {
            let c = TestClock::default();
            c.set(secs, 0);
            c
        }
        fn set(&self, secs: u64, nanos: u64) {
            self.0.store(secs * 1_000_000_000 + nanos, Ordering::SeqCst);
        }
        fn advance(&self, secs: u64) {
            self.0.fetch_add(secs * 1_000_000_000, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn rtc_at(secs: u64) -> (Rtc, TestClock) {
        let c = TestClock::at(secs);
        (Rtc::new(Box::new(c.clone())), c)
    }

    fn rd(r: &mut Rtc, reg: u8) -> u8 {
        r.write(0, &[reg]);
        let mut b = [0];
        r.read(1, &mut b);
        b[0]
    }

    fn wr(r: &mut Rtc, reg: u8, v: u8) {
        r.write(0, &[reg]);
        r.write(1, &[v]);
    }

    /// (sec, min, hour, weekday, day, month, year, century) as read.
    fn read_time(r: &mut Rtc) -> [u8; 8] {
        TIME_REGS.map(|reg| rd(r, reg))
    }

    // 2024-02-29T13:45:30Z, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_330;

    #[test]
    fn civil_conversions_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        // 1900 is not a leap year, 2000 is, 2100 is not.
        assert_eq!(
            civil_from_days(days_from_civil(1900, 2, 28) + 1),
            (1900, 3, 1)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2000, 2, 28) + 1),
            (2000, 2, 29)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            (2100, 3, 1)
        );
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // Day overflow rolls over.
        assert_eq!(days_from_civil(2023, 2, 31), days_from_civil(2023, 3, 3));
        assert_eq!(DateTime::from_unix(LEAP_DAY as i64).weekday, 5);
        assert_eq!(DateTime::from_unix(0).weekday, 5); // Thursday
        assert_eq!(DateTime::from_unix(3 * SECS_PER_DAY).weekday, 1); // Sunday
    }

    #[test]
    fn civil_round_trip_over_ten_millennia() {
        let mut prev: Option<(i64, u8, u8)> = None;
        for days in days_from_civil(0, 1, 1)..=days_from_civil(9999, 12, 31) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            if let Some((py, pm, pd)) = prev {
                // Consecutive days: next day in the month, or the 1st.
                assert!(
                    (y, m, d) == (py, pm, pd + 1)
                        || (d == 1 && (m == pm + 1 || (m == 1 && y == py + 1)))
                );
            }
            if m == 2 && d == 29 {
                assert!(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0), "{y}");
            }
            prev = Some((y, m, d));
        }
    }

    #[test]
    fn reads_time_in_bcd_24h_by_default() {
        let (mut r, _) = rtc_at(LEAP_DAY);
        assert_eq!(
            read_time(&mut r),
            [0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let (mut r, c) = rtc_at(LEAP_DAY);
        wr(&mut r, REG_B, B_BINARY | B_24H);
        assert_eq!(read_time(&mut r), [30, 45, 13, 5, 29, 2, 24, 20]);
        wr(&mut r, REG_B, B_BINARY);
        assert_eq!(rd(&mut r, HOURS), 1 | HOUR_PM);
        wr(&mut r, REG_B, 0);
        assert_eq!(rd(&mut r, HOURS), 0x01 | HOUR_PM);
        // Midnight is 12 AM, noon 12 PM, 23:00 is 11 PM.
        let midnight = LEAP_DAY - (13 * 3600 + 45 * 60 + 30);
        c.set(midnight, 0);
        assert_eq!(rd(&mut r, HOURS), 0x12);
        c.set(midnight + 12 * 3600, 0);
        assert_eq!(rd(&mut r, HOURS), 0x12 | HOUR_PM);
        c.set(midnight + 23 * 3600, 0);
        assert_eq!(rd(&mut r, HOURS), 0x11 | HOUR_PM);
        wr(&mut r, REG_B, B_BINARY);
        assert_eq!(rd(&mut r, HOURS), 11 | HOUR_PM);
    }

    #[test]
    fn time_follows_the_clock_across_new_year() {
        // 1999-12-31T23:59:59Z
        let (mut r, c) = rtc_at(946_684_799);
        assert_eq!(
            read_time(&mut r),
            [0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]
        );
        c.advance(1);
        assert_eq!(
            read_time(&mut r),
            [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]
        );
    }

    #[test]
    fn guest_sets_time_with_set_bit() {
        let (mut r, c) = rtc_at(LEAP_DAY);
        wr(&mut r, REG_B, B_SET | B_24H);
        // Frozen: the clock advancing changes nothing.
        c.advance(5);
        assert_eq!(rd(&mut r, SECONDS), 0x30);
        // 2031-07-04 08:09:10 (BCD).
        for (reg, v) in [
            (SECONDS, 0x10),
            (MINUTES, 0x09),
            (HOURS, 0x08),
            (DAY, 0x04),
            (MONTH, 0x07),
            (YEAR, 0x31),
        ] {
            wr(&mut r, reg, v);
        }
        wr(&mut r, WEEKDAY, 0x03);
        assert_eq!(rd(&mut r, WEEKDAY), 0x03);
        wr(&mut r, REG_B, B_24H);
        assert_eq!(
            read_time(&mut r),
            [0x10, 0x09, 0x08, 0x06, 0x04, 0x07, 0x31, 0x20]
        );
        // And it keeps running from there.
        c.advance(65);
        assert_eq!(read_time(&mut r)[..3], [0x15, 0x10, 0x08]);
    }

    #[test]
    fn set_bit_clears_uie_and_latches_in_the_new_format() {
        let (mut r, _) = rtc_at(LEAP_DAY);
        wr(&mut r, REG_B, B_SET | B_UIE | B_BINARY);
        assert_eq!(rd(&mut r, REG_B), B_SET | B_BINARY);
        assert_eq!(rd(&mut r, HOURS), 1 | HOUR_PM);
        wr(&mut r, HOURS, 3 | HOUR_PM); // 15:00, 12-hour binary
                                        // Leaving SET mode and the format in one write: the registers are
                                        // decoded in the format they were written in.
        wr(&mut r, REG_B, B_BINARY | B_24H);
        assert_eq!(rd(&mut r, HOURS), 15);
        wr(&mut r, REG_B, B_24H);
        assert_eq!(rd(&mut r, HOURS), 0x15);
    }

    #[test]
    fn invalid_time_is_refused() {
        let (mut r, _) = rtc_at(LEAP_DAY);
        wr(&mut r, REG_B, B_SET | B_24H);
        wr(&mut r, MONTH, 0x13);
        wr(&mut r, REG_B, B_24H);
        assert_eq!(
            read_time(&mut r),
            [0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        // Bad BCD digits or ranges written directly are refused too.
        wr(&mut r, SECONDS, 0x5a);
        wr(&mut r, MINUTES, 0x60);
        wr(&mut r, HOURS, 0x24);
        wr(&mut r, DAY, 0x00);
        assert_eq!(rd(&mut r, SECONDS), 0x30);
        assert_eq!(rd(&mut r, MINUTES), 0x45);
        assert_eq!(rd(&mut r, HOURS), 0x13);
        assert_eq!(rd(&mut r, DAY), 0x29);
    }

    #[test]
    fn direct_field_writes_shift_the_clock() {
        let (mut r, c) = rtc_at(LEAP_DAY);
        wr(&mut r, YEAR, 0x25);
        // 2025 has no Feb 29: the date rolls to March 1.
        assert_eq!(
            read_time(&mut r),
            [0x30, 0x45, 0x13, 0x07, 0x01, 0x03, 0x25, 0x20]
        );
        wr(&mut r, CENTURY, 0x21);
        assert_eq!(rd(&mut r, CENTURY), 0x21);
        assert_eq!(rd(&mut r, YEAR), 0x25);
        c.advance(30);
        assert_eq!(rd(&mut r, SECONDS), 0x00);
        assert_eq!(rd(&mut r, MINUTES), 0x46);
        // Weekday writes are ignored while running: 2125-03-01 is a Thursday.
        wr(&mut r, WEEKDAY, 0x01);
        assert_eq!(rd(&mut r, WEEKDAY), 0x05);
    }

    #[test]
    fn register_a_uip_and_divider() {
        let (mut r, c) = rtc_at(LEAP_DAY);
        c.set(LEAP_DAY, 500_000_000);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT);
        c.set(LEAP_DAY, 999_900_000);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT | A_UIP);
        c.set(LEAP_DAY + 1, 1_000_000);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT | A_UIP);
        c.set(LEAP_DAY + 1, 2_000_000);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT);
        // Divider held in reset: stored, no UIP. UIP itself is read-only.
        c.set(LEAP_DAY, 999_900_000);
        wr(&mut r, REG_A, 0x70 | A_UIP);
        assert_eq!(rd(&mut r, REG_A), 0x70);
        wr(&mut r, REG_A, A_DEFAULT);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT | A_UIP);
        // No UIP while SET is set.
        wr(&mut r, REG_B, B_SET | B_24H);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT);
    }

    #[test]
    fn register_c_reports_updates_and_clears_on_read() {
        let (mut r, c) = rtc_at(LEAP_DAY);
        assert_eq!(rd(&mut r, REG_C), 0);
        c.advance(1);
        assert_eq!(rd(&mut r, REG_C), C_UF);
        assert_eq!(rd(&mut r, REG_C), 0);
        wr(&mut r, REG_B, B_UIE | B_24H);
        c.advance(3);
        assert_eq!(rd(&mut r, REG_C), C_UF | C_IRQF);
        wr(&mut r, REG_C, 0xff);
        assert_eq!(rd(&mut r, REG_C), 0);
    }

    #[test]
    fn register_d_is_valid_and_read_only() {
        let (mut r, _) = rtc_at(LEAP_DAY);
        assert_eq!(rd(&mut r, REG_D), D_VRT);
        wr(&mut r, REG_D, 0);
        assert_eq!(rd(&mut r, REG_D), D_VRT);
    }

    #[test]
    fn nvram_persists_and_index_port_masks_nmi() {
        let (mut r, _) = rtc_at(LEAP_DAY);
        for i in 0x0eu8..0x80 {
            if i != CENTURY {
                wr(&mut r, i | 0x80, i ^ 0xa5);
            }
        }
        assert!(r.nmi_masked());
        for i in 0x0eu8..0x80 {
            if i != CENTURY {
                assert_eq!(rd(&mut r, i), i ^ 0xa5);
            }
        }
        assert!(!r.nmi_masked());
        // Alarm registers are plain storage.
        wr(&mut r, 0x01, 0x59);
        assert_eq!(rd(&mut r, 0x01), 0x59);
        // The index port reads as open bus.
        let mut b = [0];
        r.read(0, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn word_access_sets_index_then_data() {
        let (mut r, _) = rtc_at(LEAP_DAY);
        r.write(0, &[0x5f, 0x42]);
        assert_eq!(rd(&mut r, 0x5f), 0x42);
        r.write(0, &[0x5f]);
        let mut b = [0u8; 2];
        r.read(0, &mut b);
        assert_eq!(b, [0xff, 0x42]);
    }

    #[test]
    fn memory_size_bytes() {
        let clock = TestClock::at(LEAP_DAY);
        // 3 GiB below 4 GiB, 5 GiB above.
        let mut r = Rtc::with_ram_size(
            Box::new(clock),
            RamSize {
                below_4g: 3 << 30,
                above_4g: 5 << 30,
            },
        );
        let le16 = |r: &mut Rtc, at: u8| u16::from_le_bytes([rd(r, at), rd(r, at + 1)]);
        assert_eq!(le16(&mut r, 0x15), 640);
        assert_eq!(le16(&mut r, 0x17), 0xffff);
        assert_eq!(le16(&mut r, 0x30), 0xffff);
        assert_eq!(
            u32::from(le16(&mut r, 0x34)),
            ((3u32 << 30) - (16 << 20)) / 65536
        );
        let high = u32::from_le_bytes([rd(&mut r, 0x5b), rd(&mut r, 0x5c), rd(&mut r, 0x5d), 0]);
        assert_eq!(u64::from(high), (5u64 << 30) / 65536);
        let sum: u16 = (0x10..=0x2d).map(|i| u16::from(rd(&mut r, i))).sum();
        assert_eq!(
            u16::from_be_bytes([rd(&mut r, 0x2e), rd(&mut r, 0x2f)]),
            sum
        );

        // A small guest: 32 MiB.
        let mut r = Rtc::with_ram_size(
            Box::new(TestClock::at(0)),
            RamSize {
                below_4g: 32 << 20,
                above_4g: 0,
            },
        );
        assert_eq!(le16(&mut r, 0x17), 31 * 1024);
        assert_eq!(le16(&mut r, 0x34), 256);
        assert_eq!(rd(&mut r, 0x5b), 0);
        // Tiny or zero sizes do not underflow.
        let mut r = Rtc::with_ram_size(Box::new(TestClock::at(0)), RamSize::default());
        assert_eq!(le16(&mut r, 0x17), 0);
        assert_eq!(le16(&mut r, 0x34), 0);
    }

    #[test]
    fn closure_and_system_clocks() {
        let mut r = Rtc::new(Box::new(|| Duration::from_secs(LEAP_DAY)));
        assert_eq!(rd(&mut r, MINUTES), 0x45);
        // The system clock is after 2020 on any sane host.
        let mut r = Rtc::new(Box::new(SystemClock));
        assert!(rd(&mut r, CENTURY) >= 0x20);
    }

    #[test]
    fn hammering_never_panics_and_time_stays_decodable() {
        let (mut r, c) = rtc_at(LEAP_DAY);
        let mut rng = Rng::new(0x70);
        for round in 0..200 {
            hammer(&mut r, round, 4, 500);
            // Up to ~2242: the test clock counts nanoseconds in a u64.
            c.set(rng.below(1 << 33), rng.below(1_000_000_000));
        }
        // Whatever the guest did, a sane format reads a decodable time.
        wr(&mut r, REG_B, B_24H);
        wr(&mut r, REG_A, A_DEFAULT);
        let fmt = Format::from_b(B_24H);
        let t = read_time(&mut r);
        let raw = |reg: u8| {
            t[TIME_REGS
                .iter()
                .position(|&x| x == reg)
                .expect("time register")]
        };
        assert!(decode_time(fmt, raw).is_some(), "{t:x?}");
    }
}
