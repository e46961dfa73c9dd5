//! The guest's memory allocator: a lock-free bump allocator over the RAM that follows the
//! image, serving both Rust's `alloc` (Vec, String, format!) and physical pages (identity
//! mapped: a pointer is its own physical address, ready for DMA descriptors).
//!
//! Memory is never returned, except that freeing the most recent allocation rolls it back;
//! a scenario is a short program, so this is enough.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::bootinfo::BootInfo;
use crate::kit::Fail;

/// Highest address the heap may reach before the >4 GiB page tables exist.
const STATIC_MAP_END: u64 = 1 << 32;
pub const PAGE_SIZE: u64 = 4096;

struct Heap {
    next: AtomicU64,
    end: AtomicU64,
}

#[global_allocator]
static HEAP: Heap = Heap {
    next: AtomicU64::new(0),
    end: AtomicU64::new(0),
};

// SAFETY: `alloc` hands out disjoint ranges of RAM nobody else uses (above the image, in a
// memmap RAM region, checked by `init`), with the requested alignment; `dealloc` only
// rolls back the latest range.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.take(layout.size() as u64, layout.align() as u64) {
            Some(addr) => addr as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let start = ptr as u64;
        let end = start + layout.size() as u64;
        // Roll back only if this was the last allocation; otherwise leak it.
        let _ = self
            .next
            .compare_exchange(end, start, Ordering::AcqRel, Ordering::Relaxed);
    }
}

impl Heap {
    fn take(&self, size: u64, align: u64) -> Option<u64> {
        let end = self.end.load(Ordering::Acquire);
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let start = current.checked_add(align - 1)? & !(align - 1);
            let new_next = start.checked_add(size.max(1))?;
            if start == 0 || new_next > end {
                return None;
            }
            match self.next.compare_exchange_weak(
                current,
                new_next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(start),
                Err(seen) => current = seen,
            }
        }
    }
}

/// First byte after the image (BSS and boot stacks included).
pub fn image_end() -> u64 {
    core::ptr::addr_of!(crate::boot::__image_end) as u64
}

/// Starts the heap right after the image (and after anything the VMM placed there), up to
/// the end of the RAM region holding it, the next thing the VMM placed in it (an initrd),
/// or 4 GiB, whichever is lowest.
pub fn init(boot: &BootInfo) -> Result<(), Fail> {
    let mut start = image_end().next_multiple_of(PAGE_SIZE);
    while let Some((_, end)) = boot.reserved_overlap(start, start + PAGE_SIZE) {
        start = end.next_multiple_of(PAGE_SIZE);
    }
    let region = boot
        .memmap()
        .iter()
        .find(|r| r.is_ram() && r.addr <= crate::protocol::LOAD_ADDR && start <= r.end())
        .ok_or_else(|| {
            Fail::new(alloc::format!(
                "the memory map has no RAM region holding the guest image [{:#x}, {start:#x})",
                crate::protocol::LOAD_ADDR
            ))
        })?;
    let next_reserved = boot
        .reserved()
        .iter()
        .map(|&(s, _)| s)
        .filter(|&s| s >= start)
        .min();
    let end = region
        .end()
        .min(STATIC_MAP_END)
        .min(next_reserved.unwrap_or(u64::MAX))
        & !(PAGE_SIZE - 1);
    if end < start + 64 * PAGE_SIZE {
        return Err(Fail::new(alloc::format!(
            "only {} KiB of RAM after the guest image for its heap",
            end.saturating_sub(start) / 1024
        )));
    }
    HEAP.next.store(start, Ordering::Relaxed);
    HEAP.end.store(end, Ordering::Release);
    Ok(())
}

/// The heap's current top: everything above it in its region is untouched so far.
pub fn top() -> u64 {
    HEAP.next.load(Ordering::Acquire)
}

/// The heap's limit.
pub fn end() -> u64 {
    HEAP.end.load(Ordering::Acquire)
}

/// Allocates `count` zeroed, page-aligned 4 KiB pages; returns their physical address.
pub fn alloc_pages(count: u64) -> Result<u64, Fail> {
    let size = count * PAGE_SIZE;
    let addr = HEAP.take(size, PAGE_SIZE).ok_or_else(|| {
        Fail::new(alloc::format!(
            "out of guest heap memory: {count} pages wanted, {} KiB left",
            (end() - top()) / 1024
        ))
    })?;
    // SAFETY: `take` just handed out [addr, addr + size), RAM nobody else uses.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, size as usize) };
    Ok(addr)
}
