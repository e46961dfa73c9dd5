//! Initial register, MSR, FPU and local-APIC state of the vCPUs.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};

/// Where the boot GDT is written in guest memory. The kernel reloads its own
/// GDT early; this one exists so that the descriptor caches KVM is given match
/// a real table.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// The boot GDT: null, flat 32-bit code (0x08, PVH), 64-bit code (0x10, Linux's
/// `__BOOT_CS`), flat data (0x18, `__BOOT_DS`), TSS (0x20).
pub const BOOT_GDT: [u64; 5] = [
    0,
    0x00cf_9b00_0000_ffff, // code: base 0, limit 4 GiB, present, exec/read, accessed, 32-bit
    0x00af_9b00_0000_ffff, // code: 64-bit (L=1)
    0x00cf_9300_0000_ffff, // data: base 0, limit 4 GiB, present, read/write, accessed
    0x0000_8b00_0000_0067, // 32-bit busy TSS, base 0, limit 0x67
];
const CODE32: u16 = 0x08;
const CODE64: u16 = 0x10;
const DATA: u16 = 0x18;
const TSS: u16 = 0x20;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn descriptor(selector: u16) -> u64 {
    BOOT_GDT[usize::from(selector >> 3)]
}

fn segment(selector: u16) -> kvm_segment {
    let descriptor = descriptor(selector);
    let flags = (descriptor >> 40) as u16;
    kvm_segment {
        base: 0,
        limit: if descriptor & (1 << 55) != 0 {
            0xffff_ffff
        } else {
            (descriptor & 0xffff) as u32
        },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((descriptor >> 54) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((descriptor >> 53) & 1) as u8,
        g: ((descriptor >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn flat_segments(sregs: &mut kvm_sregs, code: u16) {
    let data = segment(DATA);
    sregs.cs = segment(code);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS);
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
}

/// Special registers for the PVH entry: 32-bit protected mode, paging off,
/// flat segments (PVH boot ABI, xen `docs/misc/pvh.pandoc`).
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    flat_segments(&mut sregs, CODE32);
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers for the PVH entry: EBX points at `hvm_start_info`.
pub fn pvh_regs(entry: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rbx: start_info,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Special registers for Linux's 64-bit entry: long mode with paging on the
/// identity map at `pml4`, `__BOOT_CS`/`__BOOT_DS` loaded.
pub fn long_mode_sregs(mut sregs: kvm_sregs, pml4: u64) -> kvm_sregs {
    flat_segments(&mut sregs, CODE64);
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = pml4;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers for Linux's 64-bit entry: RSI points at `boot_params`.
pub fn linux_regs(entry: u64, boot_params: u64, stack: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: boot_params,
        rsp: stack,
        rbp: stack,
        rflags: 0x2,
        ..Default::default()
    }
}

/// The FPU as after FNINIT, with SSE exceptions masked.
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR indexes set at boot.
pub mod msr {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The MSRs every vCPU starts with: syscall MSRs cleared, fast strings on, and
/// MTRRs enabled with write-back as the default memory type (as firmware would
/// leave them; without it guests treat all memory as uncached).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(msr::IA32_SYSENTER_CS, 0),
        e(msr::IA32_SYSENTER_ESP, 0),
        e(msr::IA32_SYSENTER_EIP, 0),
        e(msr::STAR, 0),
        e(msr::CSTAR, 0),
        e(msr::KERNEL_GS_BASE, 0),
        e(msr::SYSCALL_MASK, 0),
        e(msr::LSTAR, 0),
        e(msr::IA32_MISC_ENABLE, 1),
        e(msr::IA32_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Wraps MSR entries for KVM_SET_MSRS.
pub fn msrs_fam(entries: &[kvm_msr_entry]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    Msrs::from_entries(entries)
}

/// Local APIC register offsets and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;
const APIC_MODE_NMI: u32 = 0x4 << 8;

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b = |i: usize| regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
        regs[off + i] = b as std::os::raw::c_char;
    }
}

/// Puts LINT0 in ExtINT and LINT1 in NMI mode (the PC "virtual wire" setup
/// firmware leaves behind), so the 8259 PIC's interrupts reach the CPU.
pub fn set_virtual_wire(regs: &mut [std::os::raw::c_char]) {
    let lvt0 = lapic_reg(regs, APIC_LVT0);
    set_lapic_reg(regs, APIC_LVT0, (lvt0 & !0x700) | APIC_MODE_EXTINT);
    let lvt1 = lapic_reg(regs, APIC_LVT1);
    set_lapic_reg(regs, APIC_LVT1, (lvt1 & !0x700) | APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_state_is_flat_protected_mode() {
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & 1, 1);
        assert_eq!(
            (s.cs.base, s.cs.limit, s.cs.db, s.cs.l, s.cs.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        assert_eq!((s.ss.limit, s.ss.type_, s.ss.present), (0xffff_ffff, 3, 1));
        assert_eq!((s.tr.type_, s.tr.limit, s.tr.s), (0xb, 0x67, 0));
        assert_eq!(s.gdt.limit, 39);
        let r = pvh_regs(0x10_0000, 0x6000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, 0x6000, 2));
    }

    #[test]
    fn linux_state_is_long_mode_on_boot_selectors() {
        let s = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db),
            (0x10, 1, 0),
            "__BOOT_CS, 64-bit"
        );
        assert_eq!(s.ds.selector, 0x18, "__BOOT_DS");
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        let r = linux_regs(0x100_0200, 0x7000, 0x8ff0);
        assert_eq!((r.rip, r.rsi, r.rsp), (0x100_0200, 0x7000, 0x8ff0));
    }

    #[test]
    fn virtual_wire_sets_lint_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT0, 0x1_0000); // masked, fixed
        set_virtual_wire(&mut regs);
        assert_eq!(lapic_reg(&regs, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&regs, APIC_LVT1) & 0x700, 0x400);
    }

    #[test]
    fn boot_msrs_enable_mtrrs() {
        let m = boot_msrs();
        let def = m
            .iter()
            .find(|e| e.index == msr::IA32_MTRR_DEF_TYPE)
            .expect("present");
        assert_eq!(def.data, 0x806, "enabled, write-back, fixed ranges off");
        assert!(msrs_fam(&m).is_ok());
    }
}
