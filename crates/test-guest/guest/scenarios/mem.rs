//! The memory map and RAM reachability.

use crate::bootinfo::BootInfo;
use crate::kit::prelude::*;

const PAGE: u64 = 4096;
/// The 32-bit MMIO hole (PCI, IO APIC, local APIC, firmware): never RAM.
const MMIO_HOLE_START: u64 = 0xc000_0000;
const MMIO_HOLE_END: u64 = 0x1_0000_0000;

pub fn mem(ctx: &mut Ctx) -> Result<(), Fail> {
    let map = ctx.memmap();
    ensure!(
        !map.is_empty(),
        "the VMM passed no memory map (start_info version {})",
        ctx.boot().start_info_version
    );
    let ram: u64 = map.iter().filter(|r| r.is_ram()).map(|r| r.size).sum();
    let ram_mib = ram >> 20;
    println!("memory: {ram_mib} MiB");
    for r in map {
        println!(
            "memory: {:#x}-{:#x} {} ({} KiB)",
            r.addr,
            r.end().saturating_sub(1),
            r.kind_name(),
            r.size / 1024
        );
    }
    for &(start, end) in ctx.boot().modules() {
        println!("memory: module {start:#x}-{:#x}", end.saturating_sub(1));
    }
    check_layout(ctx, map)?;
    if ctx.arg("mem").is_some() {
        let want = ctx.arg_u64("mem", 0)?;
        // The legacy 640 KiB-1 MiB hole may be left out of RAM: allow one MiB less.
        ensure!(
            ram_mib <= want && ram_mib + 1 >= want,
            "the memory map has {ram_mib} MiB of RAM, expected {want} MiB (mem={want})"
        );
    }

    // Everything above the heap's current top is free, except what the VMM placed there (an
    // initrd): test the first and the last free page of each RAM region there.
    let boot = ctx.boot();
    let floor = ctx.heap_top().next_multiple_of(PAGE);
    let mut pages = 0;
    for r in map.iter().filter(|r| r.is_ram() && r.end() > floor) {
        let start = r.addr.max(floor).next_multiple_of(PAGE);
        let end = r.end() & !(PAGE - 1);
        let Some(first) = first_free_page(boot, start, end) else {
            continue;
        };
        let last = last_free_page(boot, start, end).unwrap_or(first);
        test_page(first)?;
        pages += 1;
        if last != first {
            test_page(last)?;
            pages += 1;
        }
    }
    ensure!(
        pages > 0,
        "no RAM above the guest image ({floor:#x}) to test"
    );
    println!(
        "mem: {pages} pages written and read back, up to {:#x}",
        map.iter()
            .filter(|r| r.is_ram())
            .map(|r| r.end())
            .max()
            .unwrap_or(0)
    );
    Ok(())
}

/// The map's shape: no two entries overlap; entries in ascending order (required with
/// `sorted=1`: E820 allows any order, and QEMU's firmware lists RAM above 1 MiB last); no
/// RAM in the 32-bit MMIO hole (unless `hole=0`).
fn check_layout(ctx: &Ctx, map: &[MemRegion]) -> Result<(), Fail> {
    let mut by_addr: Vec<MemRegion> = map.to_vec();
    by_addr.sort_unstable_by_key(|r| (r.addr, r.size));
    for pair in by_addr.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        ensure!(
            a.end() <= b.addr,
            "memory map entries {:#x}-{:#x} ({}) and {:#x}-{:#x} ({}) overlap",
            a.addr,
            a.end() - 1,
            a.kind_name(),
            b.addr,
            b.end() - 1,
            b.kind_name()
        );
    }
    let sorted = map.windows(2).all(|pair| pair[0].addr < pair[1].addr);
    if !sorted {
        ensure!(
            ctx.arg_u64("sorted", 0)? == 0,
            "the memory map is not sorted by address (sorted=1)"
        );
        println!("memory: note: the map is not sorted by address");
    }
    let hole = ctx.arg_u64("hole", 1)? != 0;
    if hole {
        if let Some(r) = map
            .iter()
            .find(|r| r.is_ram() && r.addr < MMIO_HOLE_END && MMIO_HOLE_START < r.end())
        {
            fail!(
                "RAM {:#x}-{:#x} reaches into the 32-bit MMIO hole {MMIO_HOLE_START:#x}-{:#x} \
                 (hole=0 allows it)",
                r.addr,
                r.end() - 1,
                MMIO_HOLE_END - 1
            );
        }
    }
    println!(
        "memory: no overlaps{}{}",
        if sorted { ", sorted" } else { "" },
        if hole {
            ", no RAM in the 32-bit MMIO hole"
        } else {
            ""
        }
    );
    Ok(())
}

/// The lowest page in `[start, end)` clear of the VMM's boot data and modules.
fn first_free_page(boot: &BootInfo, start: u64, end: u64) -> Option<u64> {
    let mut page = start;
    while page + PAGE <= end {
        match boot.reserved_overlap(page, page + PAGE) {
            None => return Some(page),
            Some((_, taken_end)) => page = taken_end.next_multiple_of(PAGE),
        }
    }
    None
}

/// The highest page in `[start, end)` clear of the VMM's boot data and modules.
fn last_free_page(boot: &BootInfo, start: u64, end: u64) -> Option<u64> {
    let mut page = end.checked_sub(PAGE)?;
    while page >= start {
        match boot.reserved_overlap(page, page + PAGE) {
            None => return Some(page),
            Some((taken_start, _)) => page = (taken_start & !(PAGE - 1)).checked_sub(PAGE)?,
        }
    }
    None
}

/// Writes a pattern over a free RAM page, checks it, and restores the old contents.
fn test_page(addr: u64) -> Result<(), Fail> {
    let page = addr as *mut u64;
    let words = (PAGE / 8) as usize;
    let mut saved = [0u64; (PAGE / 8) as usize];
    let pattern = |i: usize| addr ^ ((i as u64) << 3) ^ 0xa5a5_5a5a_0f0f_f0f0;
    // SAFETY: `addr` is a page of a RAM region above everything the guest uses (the heap
    // top), identity mapped by paging::map_ram; nothing else accesses it meanwhile.
    let bad = unsafe {
        for (i, slot) in saved.iter_mut().enumerate() {
            *slot = page.add(i).read_volatile();
        }
        for i in 0..words {
            page.add(i).write_volatile(pattern(i));
        }
        let bad = (0..words).find(|&i| page.add(i).read_volatile() != pattern(i));
        for (i, value) in saved.iter().enumerate() {
            page.add(i).write_volatile(*value);
        }
        bad
    };
    if let Some(i) = bad {
        fail!(
            "RAM at {:#x} did not keep the pattern written there",
            addr + 8 * i as u64
        );
    }
    println!("mem: page {addr:#x} ok");
    Ok(())
}
