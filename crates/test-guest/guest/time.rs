//! Time from the TSC (native at CPL3), calibrated once, on first use, against the PIT.
//!
//! Calibration costs ~10 ms, so scenarios that never ask for time (and the boot benchmark's
//! path to the ready line) never pay it.
//!
//! It counts TSC ticks while PIT channel 0 counts down, reading the counter back with the
//! latch command. Channel 2 (gated through port 0x61) would leave channel 0 alone, but
//! QEMU's microvm has no port 0x61 (QEMU keeps it in its PC-speaker device, which microvm
//! lacks), so channel 2 never counts there; channel 0 exists on every PC-like VMM.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use crate::io;
use crate::sync::SpinLock;

/// TSC ticks per microsecond times 1024 (0: not calibrated yet).
static TSC_PER_US_X1024: AtomicU64 = AtomicU64::new(0);
static CALIBRATION: SpinLock<()> = SpinLock::new(());

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;
const PIT_CH0_DATA: u16 = 0x40;
const PIT_COMMAND: u16 = 0x43;
/// Channel 0, lobyte/hibyte, mode 0 (one-shot: after terminal count the output stays high,
/// so the PIT raises IRQ0 once at most), binary.
const PIT_CH0_ONESHOT: u8 = 0x30;
/// Channel 0 counter latch.
const PIT_CH0_LATCH: u8 = 0x00;

/// Reads the TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter (CR4.TSD is clear, so CPL3 may).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC value at the PVH entry (the first guest instruction).
pub fn boot_tsc() -> u64 {
    // SAFETY: written once by boot.s before any Rust code runs, read-only afterwards.
    unsafe { core::ptr::addr_of!(crate::boot::vireo_boot_tsc).read_volatile() }
}

/// TSC values the BSP took on its way to the ready line: (entering Rust, ready line printed).
pub static READY_TSC: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Spins for about `cycles` TSC ticks (no calibration needed).
pub fn spin_cycles(cycles: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// TSC ticks per microsecond, times 1024; calibrates on first use.
fn tsc_per_us_x1024() -> u64 {
    let known = TSC_PER_US_X1024.load(Ordering::Acquire);
    if known != 0 {
        return known;
    }
    let _guard = CALIBRATION.lock();
    let known = TSC_PER_US_X1024.load(Ordering::Acquire);
    if known != 0 {
        return known;
    }
    let value = calibrate();
    TSC_PER_US_X1024.store(value, Ordering::Release);
    value
}

/// The calibrated TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    tsc_per_us_x1024() * 1000 / 1024
}

/// One reading: (TSC just before latching, PIT channel 0 count).
fn sample() -> (u64, u16) {
    let tsc = rdtsc();
    io::outb(PIT_COMMAND, PIT_CH0_LATCH);
    let lo = io::inb(PIT_CH0_DATA);
    let hi = io::inb(PIT_CH0_DATA);
    (tsc, u16::from_le_bytes([lo, hi]))
}

/// Counts TSC ticks while PIT channel 0 counts CALIBRATION_MS worth of PIT clocks.
fn calibrate() -> u64 {
    let pit_counts = PIT_HZ * CALIBRATION_MS / 1000;
    // IRQ0 must not reach the CPU through the PIC when this one-shot ends.
    io::mask_pic();
    io::outb(PIT_COMMAND, PIT_CH0_ONESHOT);
    io::outb(PIT_CH0_DATA, 0xff);
    io::outb(PIT_CH0_DATA, 0xff);
    // Both samples are taken the same way, so the VM-exit latency of the reads cancels out.
    let (tsc0, count0) = sample();
    let mut polls = 0u32;
    let (tsc1, count1) = loop {
        let (tsc, count) = sample();
        polls += 1;
        // Each sample is three VM exits (~75 us here, a few us on hardware KVM): 100k polls
        // is far beyond 10 ms everywhere.
        if u64::from(count0.wrapping_sub(count)) >= pit_counts || polls >= 100_000 {
            break (tsc, count);
        }
    };
    let counted = u64::from(count0.wrapping_sub(count1));
    let ticks = tsc1.wrapping_sub(tsc0);
    // ticks / (counted / PIT_HZ s) / 1e6 = ticks per microsecond.
    let per_us_x1024 = if counted == 0 {
        0
    } else {
        ((u128::from(ticks) * u128::from(PIT_HZ) * 1024) / (u128::from(counted) * 1_000_000)) as u64
    };
    // Anything outside 100 MHz..20 GHz means the PIT is missing or broken.
    if !(100 * 1024..=20_000 * 1024).contains(&per_us_x1024) {
        println!(
            "vireo-test-guest: warning: PIT calibration failed ({counted} PIT counts in {ticks} TSC ticks, {polls} polls); assuming a 2 GHz TSC"
        );
        return 2_000 * 1024;
    }
    per_us_x1024
}

/// Microseconds to TSC ticks.
pub fn us_to_ticks(us: u64) -> u64 {
    ((u128::from(us) * u128::from(tsc_per_us_x1024())) / 1024) as u64
}

/// TSC ticks to microseconds.
pub fn ticks_to_us(ticks: u64) -> u64 {
    ((u128::from(ticks) * 1024) / u128::from(tsc_per_us_x1024())) as u64
}

/// Sleeps (spins) for `us` microseconds.
pub fn sleep_us(us: u64) {
    spin_cycles(us_to_ticks(us));
}

/// Sleeps (spins) for `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    sleep_us(ms.saturating_mul(1000));
}

/// A point in time (TSC based) to wait for.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    tsc: u64,
}

impl Deadline {
    pub fn after_us(us: u64) -> Self {
        Self {
            tsc: rdtsc().saturating_add(us_to_ticks(us)),
        }
    }

    pub fn after_ms(ms: u64) -> Self {
        Self::after_us(ms.saturating_mul(1000))
    }

    pub fn expired(&self) -> bool {
        rdtsc() >= self.tsc
    }

    /// Moves the deadline `us` later.
    pub fn extend_us(&mut self, us: u64) {
        self.tsc = self.tsc.saturating_add(us_to_ticks(us));
    }

    /// Microseconds left (0 once expired).
    pub fn remaining_us(&self) -> u64 {
        ticks_to_us(self.tsc.saturating_sub(rdtsc()))
    }

    /// Spins until the deadline.
    pub fn wait(&self) {
        while !self.expired() {
            core::hint::spin_loop();
        }
    }
}

/// A TSC timestamp for measuring elapsed time.
#[derive(Clone, Copy, Debug)]
pub struct Instant {
    tsc: u64,
}

impl Instant {
    pub fn now() -> Self {
        Self { tsc: rdtsc() }
    }

    pub fn elapsed_us(&self) -> u64 {
        ticks_to_us(rdtsc().wrapping_sub(self.tsc))
    }
}
