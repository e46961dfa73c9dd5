//! Kernel services: CPL0 operations CPL3 code asks for with `int3`.
//!
//! Entry: `int3` (vector 3, a DPL3 interrupt gate). `int $0x80` reaches the same
//! dispatcher on hardware KVM, but on the project's KVM host (kvm_pvm) `int $n` from CPL3
//! raises #UD for every n but 3: KVM's instruction emulator does not implement
//! protected-mode INT n, while int3 is delivered through the guest IDT like on any x86.
//! So the kit uses `int3`; a stray breakpoint at CPL3 is therefore a service call.
//!
//! ABI (boot.s `svc_entry`): `rax` = function number, arguments in `rdi`, `rsi`; results
//! in `rax` (and for CPUID `rdi`, `rcx`, `rdx`). Each handler is a handful of instructions
//! ending in `iretq`; an unknown number returns `rax = -1`. Interrupts are off in the
//! handlers (interrupt gate). All other registers are preserved.
//!
//! | rax | function          | in                    | out                                  |
//! |-----|-------------------|-----------------------|--------------------------------------|
//! | 0   | CPUID at CPL0     | rdi leaf, rsi subleaf | rax eax, rdi ebx, rcx ecx, rdx edx   |
//! | 1   | RDMSR             | rdi msr               | rax value (rcx, rdx clobbered)        |
//! | 2   | WRMSR             | rdi msr, rsi value    | (rax, rcx, rdx clobbered)             |
//! | 3   | read CR0          |                       | rax                                  |
//! | 4   | read CR3          |                       | rax                                  |
//! | 5   | read CR4          |                       | rax                                  |
//! | 6   | wait for an IRQ   | (`sti; hlt; cli`)     |                                      |
//! | 7   | halt, IRQs off    | (`hlt`)               |                                      |
//! | 8   | x87 at CPL0       | (`fninit; fld1; fninit`)|                                    |
//! | 9   | INVLPG            | rdi address           |                                      |
//! | 10  | IRQs on at CPL3   | (sets the caller's RFLAGS.IF)  |                             |
//! | 11  | IRQs off at CPL3  | (clears the caller's RFLAGS.IF)|                             |
//! | 12  | triple fault      | (empty IDT + `ud2`: shutdown; does not return) |             |
//!
//! A `#GP` in RDMSR/WRMSR (unknown MSR) goes to the exception handler: the run ends with
//! the EXCEPTION line.

// Kit API for scenarios: not every service has a user yet.
#![allow(dead_code)]

use core::arch::asm;

pub const SVC_CPUID: u64 = 0;
pub const SVC_RDMSR: u64 = 1;
pub const SVC_WRMSR: u64 = 2;
pub const SVC_READ_CR0: u64 = 3;
pub const SVC_READ_CR3: u64 = 4;
pub const SVC_READ_CR4: u64 = 5;
pub const SVC_WAIT_IRQ: u64 = 6;
pub const SVC_HALT: u64 = 7;
pub const SVC_X87: u64 = 8;
pub const SVC_INVLPG: u64 = 9;
pub const SVC_IRQ_ON: u64 = 10;
pub const SVC_IRQ_OFF: u64 = 11;
pub const SVC_TRIPLE_FAULT: u64 = 12;

/// CPUID output registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// CPUID executed at CPL0: the values the VMM configured (CPL3 CPUID shows the host's here).
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u64, u64, u64, u64);
    // SAFETY: the service only runs CPUID; `int3` switches to the kernel stack, so the user
    // stack (and red zone) is untouched.
    unsafe {
        asm!("int3",
            inout("rax") SVC_CPUID => eax,
            inout("rdi") u64::from(leaf) => ebx,
            in("rsi") u64::from(subleaf),
            out("rcx") ecx,
            out("rdx") edx,
            options(nomem, nostack, preserves_flags));
    }
    // The registers carry 32-bit values.
    Cpuid {
        eax: eax as u32,
        ebx: ebx as u32,
        ecx: ecx as u32,
        edx: edx as u32,
    }
}

/// Reads an MSR (an MSR the VMM does not know ends the run with an exception #GP).
pub fn rdmsr(msr: u32) -> u64 {
    let value: u64;
    // SAFETY: reading an MSR changes no memory of this program.
    unsafe {
        asm!("int3",
            inout("rax") SVC_RDMSR => value,
            in("rdi") u64::from(msr),
            out("rcx") _,
            out("rdx") _,
            options(nomem, nostack, preserves_flags));
    }
    value
}

/// Writes an MSR.
///
/// # Safety
/// Some MSRs change how this program runs (EFER, PAT, FS/GS base, ...): the caller must
/// know the write keeps the environment boot.s set up intact.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the effect of the write.
    unsafe {
        asm!("int3",
            inout("rax") SVC_WRMSR => _,
            in("rdi") u64::from(msr),
            in("rsi") value,
            out("rcx") _,
            out("rdx") _,
            options(nostack, preserves_flags));
    }
}

fn simple(function: u64) -> u64 {
    let value: u64;
    // SAFETY: used only for the read-only services (CR reads), which touch no memory.
    unsafe {
        asm!("int3", inout("rax") function => value, options(nomem, nostack, preserves_flags));
    }
    value
}

pub fn read_cr0() -> u64 {
    simple(SVC_READ_CR0)
}

pub fn read_cr3() -> u64 {
    simple(SVC_READ_CR3)
}

pub fn read_cr4() -> u64 {
    simple(SVC_READ_CR4)
}

/// Waits at CPL0 with interrupts enabled until one interrupt has been handled (the stub
/// counts it in [`irq_count`] and EOIs the local APIC). Interrupts pending while CPL3 had
/// them masked are taken right away, so checking a flag and then calling this loses no
/// wake-up.
pub fn wait_irq() {
    // SAFETY: interrupt stubs only count and EOI; memory may change (the counters).
    unsafe { asm!("int3", inout("rax") SVC_WAIT_IRQ => _, options(nostack, preserves_flags)) };
}

/// Halts with interrupts disabled (only NMI/INIT/SMI wake the CPU).
pub fn halt() {
    // SAFETY: `hlt` has no effect on memory.
    unsafe { asm!("int3", inout("rax") SVC_HALT => _, options(nomem, nostack, preserves_flags)) };
}

/// Runs x87 instructions at CPL0 (`fninit; fld1; fninit`): the project's emulating KVM host
/// cannot, and ends the VM with KVM_EXIT_INTERNAL_ERROR (emulation failure); hardware KVM
/// runs them and this returns. (KVM's emulator does implement `fninit` alone; `fld1` is what
/// it lacks.)
pub fn x87_at_cpl0() {
    // SAFETY: the x87 state, which this program does not use, is left reset (empty stack).
    unsafe { asm!("int3", inout("rax") SVC_X87 => _, options(nomem, nostack, preserves_flags)) };
}

/// Flushes the TLB entry of `addr` (needed after changing a present page-table entry).
pub fn invlpg(addr: u64) {
    // SAFETY: a TLB flush changes no memory.
    unsafe {
        asm!("int3", inout("rax") SVC_INVLPG => _, in("rdi") addr, options(nostack, preserves_flags));
    }
}

/// Lets interrupts reach this CPU while it runs CPL3 code (until [`irqs_off`]).
pub fn irqs_on() {
    // SAFETY: the service edits the saved RFLAGS in its own iret frame only.
    unsafe { asm!("int3", inout("rax") SVC_IRQ_ON => _, options(nostack)) };
}

/// Masks interrupts at CPL3 again (the state at start-up).
pub fn irqs_off() {
    // SAFETY: as for `irqs_on`.
    unsafe { asm!("int3", inout("rax") SVC_IRQ_OFF => _, options(nostack)) };
}

/// Shuts the CPU down with a triple fault (QEMU resets the machine on it).
pub fn triple_fault() -> ! {
    // SAFETY: the service does not return.
    unsafe { asm!("int3", in("rax") SVC_TRIPLE_FAULT, options(noreturn, nostack)) }
}

/// Zeroes the interrupt counters (at start-up: a reset may not have reloaded the image).
pub fn reset_irq_counts() {
    // SAFETY: the counters are a static array of atomics defined in boot.s.
    let counts = unsafe { &crate::boot::vireo_irq_counts };
    for count in counts {
        count.store(0, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Interrupts taken on `vector` so far, over all CPUs.
pub fn irq_count(vector: u8) -> u32 {
    // SAFETY: the counters are a static array of atomics defined in boot.s.
    unsafe {
        crate::boot::vireo_irq_counts[usize::from(vector)]
            .load(core::sync::atomic::Ordering::Acquire)
    }
}
