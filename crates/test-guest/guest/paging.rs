//! Identity mapping beyond the static 0-4 GiB (boot.s): 2 MiB pages, present | rw | user.
//!
//! New tables come from the heap; entries only ever go from not-present to present, which
//! needs no TLB flush.
//!
//! Physical addresses from 128 TiB to 256 TiB (bit 47 set: MMIO windows such as QEMU
//! microvm's 64-bit PCI window) cannot be identity mapped with 4-level paging: they are
//! mapped at their sign-extended, canonical upper-half address instead ([`virt`]), which
//! the same table walk produces since bits 47:39 pick the PML4 entry either way.

use crate::bootinfo::BootInfo;
use crate::heap;
use crate::kit::Fail;

const PRESENT_RW_USER: u64 = 0x7;
const LARGE: u64 = 0x80;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE_2M: u64 = 1 << 21;
/// Below this the static tables already map everything.
const STATIC_END: u64 = 1 << 32;
/// Identity mapping in the lower canonical half stops here (PML4 entries 0-255).
const IDENTITY_END: u64 = 1 << 47;
/// Above IDENTITY_END, addresses are mapped at [`virt`] up to here (PML4 entries 256-511).
const MAX_ADDR: u64 = 1 << 48;

/// Maps every RAM region of the memory map.
pub fn map_ram(boot: &BootInfo) -> Result<(), Fail> {
    // A VMM that resets the VM without reloading the image leaves the previous boot's
    // entries (pointing into the old heap) in the static tables: drop them. Nothing was
    // mapped through them since the reset, and loading CR3 flushed the TLB.
    // SAFETY: the static PML4 and PDPT (boot.s), mapped user-writable; entries beyond the
    // static 0-4 GiB are only ever created by this module, later.
    unsafe {
        let pml4 = core::ptr::addr_of_mut!(crate::boot::vireo_pml4).cast::<u64>();
        let pdpt = core::ptr::addr_of_mut!(crate::boot::vireo_pdpt).cast::<u64>();
        for i in 1..512 {
            pml4.add(i).write_volatile(0);
        }
        for i in 4..512 {
            pdpt.add(i).write_volatile(0);
        }
    }
    for region in boot.memmap().iter().filter(|r| r.is_ram()) {
        map_identity(region.addr, region.size)?;
    }
    Ok(())
}

/// Returns the table an entry points to, creating it (zeroed) if the entry is empty.
///
/// # Safety
/// `entry` must point at a page-table entry of the active hierarchy.
unsafe fn next_table(entry: *mut u64) -> Result<*mut u64, Fail> {
    // SAFETY: the caller guarantees `entry` is a valid page-table entry.
    let value = unsafe { entry.read_volatile() };
    if value & 1 != 0 {
        return Ok((value & ADDR_MASK) as *mut u64);
    }
    let table = heap::alloc_pages(1)?;
    // SAFETY: as above; the new table is zeroed, so publishing it maps nothing yet.
    unsafe { entry.write_volatile(table | PRESENT_RW_USER) };
    Ok(table as *mut u64)
}

/// The virtual address physical `addr` is mapped at: itself below 128 TiB, the
/// sign-extended (upper-half) address from 128 TiB to 256 TiB.
pub fn virt(addr: u64) -> u64 {
    if addr >= IDENTITY_END {
        addr | 0xffff_0000_0000_0000
    } else {
        addr
    }
}

/// The physical address width the CPU reports (CPUID 0x80000008, at CPL0: the VMM's),
/// read once.
pub fn phys_bits() -> u32 {
    use core::sync::atomic::{AtomicU32, Ordering};
    static BITS: AtomicU32 = AtomicU32::new(0);
    let known = BITS.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let max_ext = crate::svc::cpuid(0x8000_0000, 0).eax;
    let bits = if max_ext >= 0x8000_0008 {
        (crate::svc::cpuid(0x8000_0008, 0).eax & 0xff).clamp(32, 52)
    } else {
        36
    };
    BITS.store(bits, Ordering::Relaxed);
    bits
}

/// Whether [`map_identity`] can map `[start, end)`.
pub fn mappable(start: u64, end: u64) -> bool {
    let limit = MAX_ADDR.min(1u64 << phys_bits());
    start <= end && end <= limit && (end <= IDENTITY_END || start >= IDENTITY_END)
}

/// Maps `[start, start + len)` (rounded out to 2 MiB) where not mapped yet: identity below
/// 128 TiB, at [`virt`] above (the range must not straddle 128 TiB, and must lie below 256
/// TiB and the CPU's physical address width). Page-table pages come from the heap (4 KiB
/// per GiB mapped).
pub fn map_identity(start: u64, len: u64) -> Result<(), Fail> {
    let end = start.checked_add(len).unwrap_or(u64::MAX);
    if end <= STATIC_END {
        return Ok(());
    }
    let end = Some(end).filter(|&e| mappable(start, e)).ok_or_else(|| {
        Fail::new(alloc::format!(
            "cannot map [{start:#x}, +{len:#x}): beyond the physical address width \
                 ({} bits) or 256 TiB, or across 128 TiB",
            phys_bits()
        ))
    })?;
    let mut addr = (start & !(PAGE_2M - 1)).max(STATIC_END);
    while addr < end {
        // SAFETY: CR3 is the static PML4 (boot.s), mapped user-writable; walking it with the
        // indices of an address below 2^48 stays inside each 512-entry table.
        unsafe {
            let pml4 = core::ptr::addr_of_mut!(crate::boot::vireo_pml4).cast::<u64>();
            let pdpt = next_table(pml4.add(((addr >> 39) & 511) as usize))?;
            let pd = next_table(pdpt.add(((addr >> 30) & 511) as usize))?;
            let entry = pd.add(((addr >> 21) & 511) as usize);
            if entry.read_volatile() & 1 == 0 {
                entry.write_volatile(addr | PRESENT_RW_USER | LARGE);
            }
        }
        addr += PAGE_2M;
    }
    Ok(())
}
