//! Small scenarios: greeting, command line, requested failure, exception, the
//! unemulatable instruction, periodic ticks.

use crate::kit::prelude::*;

pub fn hello(ctx: &mut Ctx) -> Result<(), Fail> {
    let cpus = ctx.cpus()?;
    println!("hello: Vireo test guest here, told it has {cpus} vcpu(s)");
    Ok(())
}

pub fn cmdline(ctx: &mut Ctx) -> Result<(), Fail> {
    println!("cmdline: {}", ctx.cmdline());
    Ok(())
}

pub fn fail(_ctx: &mut Ctx) -> Result<(), Fail> {
    Err(Fail::new("requested"))
}

pub fn exception(_ctx: &mut Ctx) -> Result<(), Fail> {
    const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;
    println!("exception: reading non-canonical address {NON_CANONICAL:#x} (expect #GP)");
    let value: u64;
    // SAFETY: the access faults (#GP) before reading anything; the CPL0 handler then
    // reports it and ends the run. Inline asm, not a Rust dereference, so no UB is involved.
    unsafe {
        core::arch::asm!("mov {}, qword ptr [{}]", out(reg) value, in(reg) NON_CANONICAL, options(nostack, readonly));
    }
    fail!("reading {NON_CANONICAL:#x} did not fault (read {value:#x})")
}

pub fn unemulated(_ctx: &mut Ctx) -> Result<(), Fail> {
    println!("unemulated: running x87 fninit + fld1 at CPL0");
    svc::x87_at_cpl0();
    println!("unemulated: instruction ran natively");
    rt::exit(protocol::STATUS_UNEMULATED_RAN)
}

pub fn boottime(_ctx: &mut Ctx) -> Result<(), Fail> {
    use core::sync::atomic::Ordering;
    let entry = time::boot_tsc();
    let rust = time::READY_TSC[0].load(Ordering::Relaxed);
    let ready = time::READY_TSC[1].load(Ordering::Relaxed);
    ensure!(
        entry != 0 && entry < rust && rust < ready,
        "TSC readings out of order: {entry} {rust} {ready}"
    );
    println!(
        "boottime: pvh entry to rust {} us, to ready line printed {} us",
        time::ticks_to_us(rust - entry),
        time::ticks_to_us(ready - entry)
    );
    Ok(())
}

pub fn ticks(ctx: &mut Ctx) -> Result<(), Fail> {
    let count = ctx.arg_u64("count", 10)?;
    let interval_us = ctx.arg_u64("interval_ms", 100)?.saturating_mul(1000);
    println!(
        "ticks: TSC at {} kHz, {count} ticks every {} ms",
        time::tsc_khz(),
        interval_us / 1000
    );
    let mut next = Deadline::after_us(interval_us);
    for i in 1..=count {
        next.wait();
        println!("tick {i}");
        // Keep a steady rhythm, but after a long stall (VM paused) restart from now rather
        // than print a burst of late ticks.
        next.extend_us(interval_us);
        if next.expired() {
            next = Deadline::after_us(interval_us);
        }
    }
    Ok(())
}

/// Prints CPUID leaves as the guest kernel sees them (executed at CPL0, where
/// the VMM's table applies) next to what CPL3 gets on the emulating host (the
/// host's own values there). `leaves=0,1,7` picks the leaves (hex).
pub fn cpuid(ctx: &mut Ctx) -> Result<(), Fail> {
    let list = ctx.arg("leaves").unwrap_or("0,1,7,d,80000001,40000000,40000001");
    for word in list.split(',') {
        let leaf = u32::from_str_radix(word.trim_start_matches("0x"), 16)
            .map_err(|_| Fail::new(format!("leaves: '{word}' is not a hex number")))?;
        let k = svc::cpuid(leaf, 0);
        let u = core::arch::x86_64::__cpuid_count(leaf, 0);
        println!(
            "cpuid {leaf:#010x}: cpl0 {:08x} {:08x} {:08x} {:08x}  cpl3 {:08x} {:08x} {:08x} {:08x}",
            k.eax, k.ebx, k.ecx, k.edx, u.eax, u.ebx, u.ecx, u.edx
        );
    }
    Ok(())
}
