//! Vireo's test guest: a bare-metal x86_64 program booted by PVH (Vireo's monitor, QEMU).
//!
//! A few dozen CPL0 instructions (boot.s) set up long mode, GDT, IDT, TSS and page tables
//! from tables the ELF carries ready-made, then drop to CPL3, where all of this Rust code
//! runs. See README.md in the crate for the protocol, the kit and how to add a scenario.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations, unused_qualifications)]

extern crate alloc;

#[macro_use]
mod console;
mod acpi;
mod aml;
mod boot;
mod bootinfo;
mod heap;
mod io;
mod irq;
mod kit;
mod paging;
mod pci;
// Shared with the host crate, which uses every constant; the guest needs only some.
#[allow(dead_code)]
mod protocol;
mod rt;
mod scenarios;
mod smp;
mod svc;
mod sync;
mod time;
mod virtio;

use kit::{Ctx, Fail};
use protocol::{DEFAULT_SCENARIO, FAIL_PREFIX, PASS_PREFIX, READY_LINE};

/// The boot CPU's first Rust code, at CPL3 with BSS zeroed (boot.s `user_entry`).
extern "C" fn bsp_main(start_info: u64) -> ! {
    time::READY_TSC[0].store(time::rdtsc(), core::sync::atomic::Ordering::Relaxed);
    println!("{}", READY_LINE);
    time::READY_TSC[1].store(time::rdtsc(), core::sync::atomic::Ordering::Relaxed);
    // The image may not have been reloaded since the last boot (a VMM reset without reload).
    svc::reset_irq_counts();

    let boot = match bootinfo::init(start_info) {
        Ok(boot) => boot,
        Err(fail) => finish("boot", Err(fail)),
    };
    let scenario_name = boot.arg("scenario").unwrap_or(DEFAULT_SCENARIO);
    rt::set_scenario_name(scenario_name);
    if let Err(fail) = heap::init(boot).and_then(|()| paging::map_ram(boot)) {
        finish(scenario_name, Err(fail));
    }

    let Some(scenario) = scenarios::find(scenario_name) else {
        let mut known = alloc::string::String::new();
        for s in scenarios::SCENARIOS {
            println!("vireo-test-guest: scenario {}: {}", s.name, s.about);
            if !known.is_empty() {
                known.push_str(", ");
            }
            known.push_str(s.name);
        }
        finish(
            scenario_name,
            Err(Fail::new(alloc::format!(
                "unknown scenario (known: {known})"
            ))),
        );
    };
    let mut ctx = Ctx::new(boot, scenario.name);
    let result = (scenario.run)(&mut ctx);
    finish(scenario.name, result)
}

/// Prints the final PASS/FAIL line and exits with the matching status.
fn finish(scenario: &str, result: Result<(), Fail>) -> ! {
    match result {
        Ok(()) => {
            println!("{}{}", PASS_PREFIX, scenario);
            rt::exit(protocol::STATUS_PASS)
        }
        Err(fail) => {
            println!("{}{}: {}", FAIL_PREFIX, scenario, fail);
            rt::exit(protocol::STATUS_FAIL)
        }
    }
}
