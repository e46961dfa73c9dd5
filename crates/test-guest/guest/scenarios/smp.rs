//! Multiprocessor start-up and CPU topology.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::kit::prelude::*;
use protocol::MAX_CPUS;

/// What one CPU saw.
struct Seen {
    done: AtomicBool,
    lapic_id: AtomicU32,
    leaf1_apic_id: AtomicU32,
    x2apic_id: AtomicU32,
    core_level: AtomicU32,
    core_level_type: AtomicU32,
}

impl Seen {
    const fn new() -> Self {
        Self {
            done: AtomicBool::new(false),
            lapic_id: AtomicU32::new(0),
            leaf1_apic_id: AtomicU32::new(0),
            x2apic_id: AtomicU32::new(0),
            core_level: AtomicU32::new(0),
            core_level_type: AtomicU32::new(0),
        }
    }
}

pub fn smp(ctx: &mut Ctx) -> Result<(), Fail> {
    let cpus = ctx.cpus()?;
    // With sockets=S the core level of leaf 0xB counts one socket's CPUs.
    let sockets = ctx.arg_u64("sockets", 1)? as usize;
    ensure!(
        sockets > 0 && cpus % sockets == 0,
        "sockets={sockets} does not divide cpus={cpus}"
    );
    let per_socket = cpus / sockets;
    let max_leaf = svc::cpuid(0, 0).eax;
    ensure!(
        max_leaf >= 0xb,
        "CPUID leaf 0xB is not offered (highest basic leaf {max_leaf:#x})"
    );
    ctx.start_aps(cpus)?;

    let seen: [Seen; MAX_CPUS] = [const { Seen::new() }; MAX_CPUS];
    ctx.run_on_all(|cpu| {
        let leaf1 = svc::cpuid(1, 0);
        let smt = svc::cpuid(0xb, 0);
        let core = svc::cpuid(0xb, 1);
        let lapic_id = smp::lapic::id();
        println!("cpu {cpu}: apic {}", smt.edx);
        let s = &seen[cpu];
        s.lapic_id.store(lapic_id, Ordering::Relaxed);
        s.leaf1_apic_id.store(leaf1.ebx >> 24, Ordering::Relaxed);
        s.x2apic_id.store(smt.edx, Ordering::Relaxed);
        s.core_level.store(core.ebx & 0xffff, Ordering::Relaxed);
        s.core_level_type
            .store((core.ecx >> 8) & 0xff, Ordering::Relaxed);
        s.done.store(true, Ordering::Release);
    })?;

    let mut ids = Vec::with_capacity(cpus);
    for (cpu, s) in seen.iter().enumerate().take(cpus) {
        ensure!(
            s.done.load(Ordering::Acquire),
            "cpu {cpu} did not run its part"
        );
        let lapic_id = s.lapic_id.load(Ordering::Relaxed);
        let leaf1 = s.leaf1_apic_id.load(Ordering::Relaxed);
        let x2apic = s.x2apic_id.load(Ordering::Relaxed);
        let core_level = s.core_level.load(Ordering::Relaxed);
        let level_type = s.core_level_type.load(Ordering::Relaxed);
        ensure!(
            leaf1 == x2apic,
            "cpu {cpu}: CPUID.1:EBX[31:24] is {leaf1} but CPUID.0xB:EDX is {x2apic}"
        );
        ensure!(
            lapic_id == leaf1,
            "cpu {cpu}: the local APIC ID register says {lapic_id} but CPUID says {leaf1}"
        );
        ensure!(
            level_type == 2 && core_level as usize == per_socket,
            "cpu {cpu}: CPUID.(0xB,1) reports {core_level} logical processors at level type \
             {level_type}, expected {per_socket} at level type 2 (core)"
        );
        ensure!(
            !ids.contains(&lapic_id),
            "cpu {cpu}: APIC ID {lapic_id} is not unique"
        );
        ids.push(lapic_id);
    }
    let arrived = smp::arrived_aps();
    ensure!(
        arrived + 1 == cpus,
        "{} CPUs came up, but cpus={cpus}",
        arrived + 1
    );
    println!("smp: {cpus} cpus online");
    Ok(())
}
