//! Interrupts for drivers: IDT vectors for MSI-X, this CPU's local APIC, and waiting for a
//! condition with interrupts as the wake-up and a deadline.
//!
//! Every vector 32-255 already has a CPL0 stub (boot.s `irq_stubs`) that counts the
//! interrupt per vector (`svc::irq_count`, `count` here) and EOIs the xAPIC: a handful of
//! instructions, no loops, as the emulating host wants. Device vectors are handed out from
//! [`FIRST_DEVICE_VECTOR`]; [`TIMER_VECTOR`] is the local APIC timer that bounds each halt
//! in [`wait_until`], so a missing interrupt costs a timeout, never a hang.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::kit::Fail;
use crate::smp::lapic;
use crate::time::{self, Deadline};
use crate::{io, svc};

/// First vector [`alloc_vectors`] hands out, and the one after the last.
pub const FIRST_DEVICE_VECTOR: u8 = 0x40;
pub const END_DEVICE_VECTOR: u8 = 0xe0;
/// The local APIC timer's vector (wake-ups of [`wait_until`]).
pub const TIMER_VECTOR: u8 = 0xe0;

const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;
/// Divide configuration: by 16.
const DIVIDE_BY_16: u32 = 0x3;
const LVT_MASKED: u32 = 1 << 16;
/// The longest a single halt lasts before the condition and deadline are checked again.
const MAX_HALT_US: u64 = 10_000;

static NEXT_VECTOR: AtomicU8 = AtomicU8::new(FIRST_DEVICE_VECTOR);
/// Local APIC timer ticks (divided by 16) per millisecond; 0 until calibrated, u32::MAX
/// if the timer does not count.
static TIMER_PER_MS: AtomicU32 = AtomicU32::new(0);

/// Prepares this CPU to take device interrupts: masks the 8259s (firmware may have left
/// them delivering through LINT0) and software-enables the local APIC.
pub fn init() {
    io::mask_pic();
    lapic::enable();
}

/// This CPU's local APIC ID: the MSI destination for interrupts meant for it.
pub fn apic_id() -> u32 {
    lapic::id()
}

/// Reserves `n` consecutive IDT vectors for device interrupts; returns the first.
pub fn alloc_vectors(n: u8) -> Result<u8, Fail> {
    let first = NEXT_VECTOR.fetch_add(n, Ordering::Relaxed);
    if u32::from(first) + u32::from(n) > u32::from(END_DEVICE_VECTOR) {
        return Err(Fail::new(alloc::format!(
            "out of interrupt vectors ({n} wanted, {:#x}-{:#x} all handed out)",
            FIRST_DEVICE_VECTOR,
            END_DEVICE_VECTOR - 1
        )));
    }
    Ok(first)
}

/// Interrupts taken on `vector` so far (all CPUs).
pub fn count(vector: u8) -> u32 {
    svc::irq_count(vector)
}

/// Takes the interrupts pending on this CPU (CPL3 runs with them masked, so a device that
/// completed before the driver had to wait leaves its interrupt pending): lets them in
/// at CPL3 for a moment.
pub fn drain() {
    svc::irqs_on();
    time::spin_cycles(10_000);
    svc::irqs_off();
}

/// Ticks per millisecond of the local APIC timer (divide by 16), measured once against the
/// TSC; u32::MAX if it does not count.
fn timer_per_ms() -> u32 {
    let known = TIMER_PER_MS.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    lapic::write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    lapic::write(TIMER_DIVIDE, DIVIDE_BY_16);
    lapic::write(TIMER_INITIAL, u32::MAX);
    time::sleep_us(2000);
    let counted = u32::MAX - lapic::read(TIMER_CURRENT);
    lapic::write(TIMER_INITIAL, 0);
    let per_ms = if counted < 2 { u32::MAX } else { counted / 2 };
    TIMER_PER_MS.store(per_ms, Ordering::Relaxed);
    per_ms
}

/// Arms the local APIC timer to fire once after about `us` microseconds.
fn arm_timer(per_ms: u32, us: u64) {
    let ticks = (u64::from(per_ms) * us / 1000).clamp(1, u64::from(u32::MAX)) as u32;
    lapic::write(LVT_TIMER, u32::from(TIMER_VECTOR));
    lapic::write(TIMER_INITIAL, ticks);
}

/// Waits until `done()` holds or `deadline` passes, halting between checks: the CPU sleeps
/// until an interrupt (a device's, or the local APIC timer bounding each halt to 10 ms).
/// Returns whether `done()` held. Call [`init`] first.
pub fn wait_until(deadline: &Deadline, mut done: impl FnMut() -> bool) -> bool {
    let per_ms = timer_per_ms();
    let result = loop {
        if done() {
            break true;
        }
        let left = deadline.remaining_us();
        if left == 0 {
            break false;
        }
        if per_ms == u32::MAX {
            // No timer to bound the halt: take interrupts at CPL3 while spinning instead.
            svc::irqs_on();
            time::sleep_us(left.min(100));
            svc::irqs_off();
            continue;
        }
        arm_timer(per_ms, left.min(MAX_HALT_US));
        svc::wait_irq();
    };
    if per_ms != u32::MAX {
        lapic::write(TIMER_INITIAL, 0);
    }
    result
}
