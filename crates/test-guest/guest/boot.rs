//! The CPL0 part (boot.s) and the symbols it shares with Rust.

use core::arch::global_asm;
use core::sync::atomic::AtomicU32;

use crate::protocol;

/// The exception line's prefix as bytes the CPL0 handler prints (`lodsb` reads it).
static EXCEPTION_PREFIX: [u8; protocol::EXCEPTION_PREFIX.len()] = {
    let text = protocol::EXCEPTION_PREFIX.as_bytes();
    let mut bytes = [0u8; protocol::EXCEPTION_PREFIX.len()];
    let mut i = 0;
    while i < text.len() {
        bytes[i] = text[i];
        i += 1;
    }
    bytes
};

global_asm!(
    include_str!("boot.s"),
    load_addr = const protocol::LOAD_ADDR,
    max_cpus = const protocol::MAX_CPUS,
    com1 = const protocol::COM1_PORT,
    exit_port = const protocol::EXIT_PORT,
    status_exception = const protocol::STATUS_EXCEPTION,
    exc_prefix = sym EXCEPTION_PREFIX,
    exc_prefix_len = const protocol::EXCEPTION_PREFIX.len(),
    bsp_main = sym crate::bsp_main,
    ap_main = sym crate::smp::ap_main,
    options(att_syntax)
);

/// Byte offset of RSP0 in a TSS.
pub const TSS_RSP0: usize = 4;
/// Distance between two CPUs' TSSs (boot.s `TSS_STRIDE`).
pub const TSS_STRIDE: usize = 128;
/// Byte offset of the access byte in a GDT system descriptor.
pub const DESC_ACCESS: usize = 5;
/// Access byte of an available (not busy) 64-bit TSS descriptor.
pub const TSS_AVAILABLE: u8 = 0x89;

// Everything below is defined in boot.s (or link.ld) and lives in RAM mapped user-writable,
// so CPL3 code may prepare it; the CPU reads it only at the points boot.s describes.
extern "C" {
    /// The top-level page table (CR3).
    pub static mut vireo_pml4: [u64; 512];
    /// The page-directory-pointer table of PML4 entry 0 (entries 0-3 static, for 0-4 GiB).
    pub static mut vireo_pdpt: [u64; 512];
    /// MAX_CPUS TSSs, `TSS_STRIDE` bytes apart.
    pub static mut vireo_tss_area: [u8; protocol::MAX_CPUS * TSS_STRIDE];
    /// MAX_CPUS 16-byte TSS descriptors (GDT selector 0x28 + 16 * cpu).
    pub static mut vireo_gdt_tss: [[u8; 16]; protocol::MAX_CPUS];
    /// Per CPU: [kernel stack top, user stack top] for APs.
    pub static mut vireo_percpu: [[u64; 2]; protocol::MAX_CPUS];
    /// Next index an arriving AP takes (starts at 1).
    pub static vireo_ap_next: AtomicU32;
    /// APs with an index >= this park themselves (halted at CPL0).
    pub static vireo_ap_limit: AtomicU32;
    /// The TSC when the BSP entered pvh_entry.
    pub static vireo_boot_tsc: u64;
    /// Interrupts taken per vector, summed over CPUs.
    pub static vireo_irq_counts: [AtomicU32; 256];
    /// The real-mode AP start-up code, copied below 1 MiB before SIPI.
    pub static vireo_ap_trampoline: u8;
    pub static vireo_ap_trampoline_end: u8;
    /// End of the image including BSS and the boot stacks (page aligned).
    pub static __image_end: u8;
}
