//! `pci`: enumerates PCI as an OS would (see the kit's pci module for how configuration
//! space and windows are found and BARs assigned) and checks what it finds.

use crate::kit::prelude::*;
use pci::msix::Msix;
use pci::{Origin, Pci};

pub fn pci(ctx: &mut Ctx) -> Result<(), Fail> {
    let pci = Pci::probe(ctx)?;
    println!(
        "pci: config access {} (from {})",
        pci.access, pci.access_from
    );
    println!("pci: windows {} (from {})", pci.windows, pci.windows_from);
    for f in &pci.functions {
        println!("pci: {f}");
    }
    for note in &pci.notes {
        println!("pci: note: {note}");
    }
    ensure!(!pci.functions.is_empty(), "no PCI function found");

    let assigning = ctx.arg("assign") != Some("0");
    let mut live: Vec<(pci::Bdf, u8, u64, u64)> = Vec::new();
    for f in &pci.functions {
        if let Some(e) = &f.cap_error {
            fail!("{}: malformed capability list: {e}", f.bdf);
        }
        for b in &f.bars {
            ensure!(
                b.size.is_power_of_two(),
                "{} BAR {}: size {:#x} is not a power of two",
                f.bdf,
                b.index,
                b.size
            );
            if !b.is_live() {
                ensure!(
                    !assigning || !b.is_memory(),
                    "{} BAR {} ({:#x} bytes) is unassigned",
                    f.bdf,
                    b.index,
                    b.size
                );
                continue;
            }
            if !b.is_memory() {
                continue;
            }
            ensure!(
                b.addr.is_multiple_of(b.size),
                "{} BAR {} at {:#x} is not aligned to its size {:#x}",
                f.bdf,
                b.index,
                b.addr,
                b.size
            );
            let end = b.addr + b.size;
            if let Some(r) = ctx
                .memmap()
                .iter()
                .find(|r| r.is_ram() && r.addr < end && b.addr < r.end())
            {
                fail!(
                    "{} BAR {} at {:#x}-{:#x} overlaps RAM {:#x}-{:#x}",
                    f.bdf,
                    b.index,
                    b.addr,
                    end - 1,
                    r.addr,
                    r.end() - 1
                );
            }
            let windows = &pci.windows.memory;
            if !windows.is_empty() {
                ensure!(
                    windows.iter().any(|w| w.contains(b.addr, b.size)),
                    "{} BAR {} at {:#x}-{:#x} lies outside the host bridge's windows ({})",
                    f.bdf,
                    b.index,
                    b.addr,
                    end - 1,
                    pci.windows
                );
            }
            if let Some(&(other, index, _, _)) =
                live.iter().find(|&&(_, _, a, e)| a < end && b.addr < e)
            {
                fail!(
                    "{} BAR {} at {:#x} overlaps {other} BAR {index}",
                    f.bdf,
                    b.index,
                    b.addr
                );
            }
            live.push((f.bdf, b.index, b.addr, end));
        }
        if f.bars.iter().any(|b| b.is_live() && b.is_memory()) {
            let command = pci.read16(f.bdf, pci::COMMAND);
            ensure!(
                command & pci::CMD_MEMORY != 0,
                "{}: memory decoding is off (command {command:#06x}) with live memory BARs",
                f.bdf
            );
        }
        if let Some(m) = Msix::find(&pci, f)? {
            println!(
                "pci: {} msix {} entries, table bar {} + {:#x}, pba bar {} + {:#x}, {}",
                f.bdf,
                m.entries,
                m.table_bar.0,
                m.table_bar.1,
                m.pba_bar.0,
                m.pba_bar.1,
                if m.enabled() { "enabled" } else { "disabled" }
            );
        }
    }

    if let Some(list) = ctx.arg("expect") {
        for want in list.split(',').filter(|w| !w.is_empty()) {
            let ids = want.split_once(':').and_then(|(v, d)| {
                Some((
                    u16::from_str_radix(v, 16).ok()?,
                    u16::from_str_radix(d, 16).ok()?,
                ))
            });
            let Some((vendor, device)) = ids else {
                fail!("expect={list}: '{want}' is not vendor:device in hex");
            };
            ensure!(
                pci.find(vendor, device).is_some(),
                "expected {vendor:04x}:{device:04x}, not found"
            );
        }
        println!("pci: expected functions present: {list}");
    }
    let by = |origin: Origin| {
        pci.functions
            .iter()
            .flat_map(|f| &f.bars)
            .filter(|b| b.origin == origin)
            .count()
    };
    println!(
        "pci: {} functions, {} BARs assigned by the guest, {} by firmware, {} unassigned",
        pci.functions.len(),
        by(Origin::Guest),
        by(Origin::Firmware),
        by(Origin::Unassigned)
    );
    Ok(())
}
