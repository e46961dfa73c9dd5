//! Identity mapping beyond the static 0-4 GiB (boot.s): 2 MiB pages, present | rw | user.
//!
//! New tables come from the heap; entries only ever go from not-present to present, which
//! needs no TLB flush.

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
const MAX_ADDR: u64 = 1 << 47;

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

/// Identity-maps `[start, start + len)` (rounded out to 2 MiB) where not mapped yet.
/// Page-table pages come from the heap (4 KiB per GiB mapped).
pub fn map_identity(start: u64, len: u64) -> Result<(), Fail> {
    let end = start
        .checked_add(len)
        .filter(|&e| e <= MAX_ADDR)
        .ok_or_else(|| {
            Fail::new(alloc::format!(
                "cannot map [{start:#x}, +{len:#x}): beyond 128 TiB"
            ))
        })?;
    let mut addr = (start & !(PAGE_2M - 1)).max(STATIC_END);
    while addr < end {
        // SAFETY: CR3 is the static PML4 (boot.s), mapped user-writable; walking it with the
        // indices of an address below 2^47 stays inside each 512-entry table.
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
