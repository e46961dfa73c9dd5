//! BARs: sizing, assignment from the host bridge's windows, bridge windows, decoding.
//!
//! Assignment only touches BARs that read 0 (nobody assigned them); what firmware set is
//! kept and its ranges are avoided. Sizes are powers of two and every BAR is aligned to
//! its size (at least 4 KiB for memory): allocating in descending size order from a
//! power-of-two region packs perfectly, which is how a bridge's window is sized (the sum
//! of what is behind it, rounded up to a power of two, at least 1 MiB).
//!
//! Behind bridges everything goes into the bridge's non-prefetchable (32-bit) window;
//! I/O BARs are assigned only on the root bus, from the host bridge's I/O window if any.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::{Bdf, Pci, BAR0, CMD_BUS_MASTER, CMD_IO, CMD_MEMORY, COMMAND};
use crate::aml::{HostBridge, Resource};
use crate::fail;
use crate::kit::{Ctx, Fail};

const FOUR_GIB: u64 = 1 << 32;
const MIB: u64 = 1 << 20;
/// Type 1 header: memory base/limit, prefetchable base/limit (+ upper halves), I/O.
const BRIDGE_IO: u16 = 0x1c;
const BRIDGE_MEMORY: u16 = 0x20;
const BRIDGE_PREF: u16 = 0x24;
const BRIDGE_PREF_BASE_UPPER: u16 = 0x28;
const BRIDGE_PREF_LIMIT_UPPER: u16 = 0x2c;

/// An address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

impl Window {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    pub fn contains(&self, addr: u64, size: u64) -> bool {
        self.base <= addr && addr.saturating_add(size) <= self.end()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.base, self.end() - 1)
    }
}

/// The windows BARs are assigned from (the largest of each kind), and every memory window
/// the host bridge forwards.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    pub mmio32: Option<Window>,
    pub mmio64: Option<Window>,
    pub io: Option<Window>,
    /// All memory windows (from `_CRS` and the arguments).
    pub memory: Vec<Window>,
    /// Whether the kit can map the 64-bit window (within the physical address width, and
    /// below or above 128 TiB as a whole: see `paging::virt`).
    pub mmio64_mappable: bool,
}

impl Windows {
    /// From `mmio32=`/`mmio64=`/`io=` arguments, else the host bridge's `_CRS`.
    pub fn find(ctx: &Ctx, bridge: Option<&HostBridge>) -> Result<(Self, String), Fail> {
        let mut windows = Self::default();
        let mut from = Vec::new();
        if let Some(b) = bridge {
            for r in &b.resources {
                let (slot, window) = match *r {
                    Resource::Memory { min, max, .. } if max >= min => {
                        let w = Window {
                            base: min,
                            size: max - min + 1,
                        };
                        windows.memory.push(w);
                        if max < FOUR_GIB {
                            (&mut windows.mmio32, w)
                        } else {
                            (&mut windows.mmio64, w)
                        }
                    }
                    Resource::Io { min, max } if max >= min => (
                        &mut windows.io,
                        Window {
                            base: min,
                            size: max - min + 1,
                        },
                    ),
                    _ => continue,
                };
                // The largest window of each kind.
                if slot.is_none_or(|old| old.size < window.size) {
                    *slot = Some(window);
                }
            }
            if !b.resources.is_empty() {
                from.push(format!("the DSDT's {} _CRS", crate::acpi::Sig(b.name)));
            }
        }
        for (key, slot) in [
            ("mmio32", &mut windows.mmio32),
            ("mmio64", &mut windows.mmio64),
            ("io", &mut windows.io),
        ] {
            if let Some(text) = ctx.arg(key) {
                *slot = Some(super::parse_window(key, text)?);
                from.push(format!("{key}="));
            }
        }
        for w in [windows.mmio32, windows.mmio64].into_iter().flatten() {
            if !windows.memory.contains(&w) {
                windows.memory.push(w);
            }
        }
        if let Some(w) = windows.mmio32 {
            if w.end() > FOUR_GIB {
                fail!("the 32-bit MMIO window {w} goes beyond 4 GiB");
            }
        }
        windows.mmio64_mappable = windows
            .mmio64
            .is_some_and(|w| crate::paging::mappable(w.base, w.end()));
        let from = if from.is_empty() {
            String::from("none known (no _CRS, no mmio32=/mmio64=/io= arguments)")
        } else {
            from.join(", ")
        };
        Ok((windows, from))
    }
}

impl fmt::Display for Windows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |w: Option<Window>| w.map_or(String::from("none"), |w| format!("{w}"));
        write!(
            f,
            "mmio32 {}, mmio64 {}{}, io {}",
            show(self.mmio32),
            show(self.mmio64),
            if self.mmio64.is_some() && !self.mmio64_mappable {
                " (the kit cannot map it: unused)"
            } else {
                ""
            },
            show(self.io)
        )?;
        if self.memory.len() > 2 {
            f.write_str("; all memory windows")?;
            for w in &self.memory {
                write!(f, " {w}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// Who gave a BAR its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Firmware,
    Guest,
    Unassigned,
}

/// One implemented BAR (a 64-bit BAR counts once, by its lower index).
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    /// Physical address (identity mapped, so also the pointer), 0 if unassigned.
    pub addr: u64,
    pub size: u64,
    pub origin: Origin,
}

impl Bar {
    pub fn is_memory(&self) -> bool {
        self.kind != BarKind::Io
    }

    pub fn is_live(&self) -> bool {
        self.origin != Origin::Unassigned
    }

    /// Where the guest reaches the BAR: its address, or above 128 TiB its sign-extended
    /// upper-half alias (`paging::virt`).
    pub fn va(&self) -> u64 {
        crate::paging::virt(self.addr)
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        let origin = match self.origin {
            Origin::Firmware => "fw",
            Origin::Guest => "guest",
            Origin::Unassigned => "unassigned",
        };
        write!(
            f,
            "{} {kind}{} {:#x}+{:#x} {origin}",
            self.index,
            if self.prefetchable { "pf" } else { "" },
            self.addr,
            self.size
        )
    }
}

/// Sizes the BARs of a function (decoding off meanwhile), keeping their addresses.
pub fn size_bars(pci: &Pci, bdf: Bdf, header: u8) -> Vec<Bar> {
    let count = match header {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let command = pci.read16(bdf, COMMAND);
    pci.write16(bdf, COMMAND, command & !(CMD_IO | CMD_MEMORY));
    let probe = |off: u16| {
        let orig = pci.read32(bdf, off);
        pci.write32(bdf, off, u32::MAX);
        let mask = pci.read32(bdf, off);
        pci.write32(bdf, off, orig);
        (orig, mask)
    };
    let mut bars = Vec::new();
    let mut i = 0u8;
    while i < count {
        let off = BAR0 + 4 * u16::from(i);
        let (orig, mask) = probe(off);
        if orig & 1 == 1 {
            // I/O: some devices implement only the low 16 bits.
            let mut bits = mask & !3;
            if bits & 0xffff_0000 == 0 {
                bits |= 0xffff_0000;
            }
            if mask & !3 != 0 {
                bars.push(bar(
                    i,
                    BarKind::Io,
                    false,
                    u64::from(orig & !3),
                    u64::from((!bits).wrapping_add(1)),
                ));
            }
            i += 1;
            continue;
        }
        let prefetchable = orig & 8 != 0;
        if (orig >> 1) & 3 == 2 && i + 1 < count {
            let (orig_hi, mask_hi) = probe(off + 4);
            let bits = (u64::from(mask_hi) << 32) | u64::from(mask & !0xf);
            if bits != 0 {
                let addr = (u64::from(orig_hi) << 32) | u64::from(orig & !0xf);
                bars.push(bar(
                    i,
                    BarKind::Mem64,
                    prefetchable,
                    addr,
                    (!bits).wrapping_add(1),
                ));
            }
            i += 2;
        } else {
            let bits = mask & !0xf;
            if bits != 0 {
                bars.push(bar(
                    i,
                    BarKind::Mem32,
                    prefetchable,
                    u64::from(orig & !0xf),
                    u64::from((!bits).wrapping_add(1)),
                ));
            }
            i += 1;
        }
    }
    pci.write16(bdf, COMMAND, command);
    bars
}

fn bar(index: u8, kind: BarKind, prefetchable: bool, addr: u64, size: u64) -> Bar {
    Bar {
        index,
        kind,
        prefetchable,
        addr,
        size,
        origin: if addr != 0 {
            Origin::Firmware
        } else {
            Origin::Unassigned
        },
    }
}

/// First-fit allocation in a window, avoiding ranges in use.
struct Allocator {
    window: Window,
    used: Vec<(u64, u64)>,
}

impl Allocator {
    fn new(window: Window, used: &[(u64, u64)]) -> Self {
        Self {
            window,
            used: used.to_vec(),
        }
    }

    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let mut at = self.window.base.checked_next_multiple_of(align)?;
        loop {
            let end = at.checked_add(size)?;
            if end > self.window.end() {
                return None;
            }
            match self.used.iter().find(|&&(s, e)| s < end && at < e) {
                Some(&(_, e)) => at = e.checked_next_multiple_of(align)?,
                None => {
                    self.used.push((at, end));
                    return Some(at);
                }
            }
        }
    }
}

/// Bytes of (unassigned) memory BARs on `bus` and behind its bridges, as a bridge window
/// size: a power of two of at least 1 MiB, or 0 if nothing needs a place.
fn need(pci: &Pci, bus: u8, depth: u32) -> u64 {
    let mut sum = 0u64;
    for f in pci.functions.iter().filter(|f| f.bdf.bus == bus) {
        for b in f.bars.iter().filter(|b| b.is_memory() && !b.is_live()) {
            sum += b.size.max(4096);
        }
        if let Some((secondary, _)) = f.buses {
            if depth < super::MAX_DEPTH && secondary > bus {
                sum += need(pci, secondary, depth + 1);
            }
        }
    }
    if sum == 0 {
        0
    } else {
        sum.next_power_of_two().max(MIB)
    }
}

enum Item {
    Bar { function: usize, bar: usize },
    Bridge { function: usize, secondary: u8 },
}

/// Assigns every unassigned BAR reachable from `root_bus`.
pub fn assign(ctx: &Ctx, pci: &mut Pci, root_bus: u8) -> Result<(), Fail> {
    let high = match ctx.arg("bar64").unwrap_or("high") {
        "high" => true,
        "low" => false,
        other => fail!("bar64={other}: expected high or low"),
    };
    let mut mem_used = Vec::new();
    let mut io_used = Vec::new();
    for b in pci
        .functions
        .iter()
        .flat_map(|f| &f.bars)
        .filter(|b| b.is_live())
    {
        let range = (b.addr, b.addr.saturating_add(b.size));
        if b.is_memory() {
            mem_used.push(range);
        } else {
            io_used.push(range);
        }
    }
    let w = pci.windows.clone();
    let mut a32 = w.mmio32.map(|w| Allocator::new(w, &mem_used));
    let mut a64 = w
        .mmio64
        .filter(|_| w.mmio64_mappable && high)
        .map(|w| Allocator::new(w, &mem_used));
    let mut aio = w.io.map(|w| Allocator::new(w, &io_used));
    assign_bus(pci, root_bus, a32.as_mut(), a64.as_mut(), aio.as_mut(), 0);
    Ok(())
}

fn assign_bus(
    pci: &mut Pci,
    bus: u8,
    mut a32: Option<&mut Allocator>,
    mut a64: Option<&mut Allocator>,
    mut aio: Option<&mut Allocator>,
    depth: u32,
) {
    let mut items: Vec<(u64, Item)> = Vec::new();
    for (fi, f) in pci
        .functions
        .iter()
        .enumerate()
        .filter(|(_, f)| f.bdf.bus == bus)
    {
        for (bi, b) in f.bars.iter().enumerate().filter(|(_, b)| !b.is_live()) {
            items.push((
                b.size.max(if b.is_memory() { 4096 } else { 4 }),
                Item::Bar {
                    function: fi,
                    bar: bi,
                },
            ));
        }
        if let Some((secondary, _)) = f.buses {
            if depth < super::MAX_DEPTH && secondary > bus {
                let size = need(pci, secondary, depth + 1);
                if size > 0 {
                    items.push((
                        size,
                        Item::Bridge {
                            function: fi,
                            secondary,
                        },
                    ));
                }
            }
        }
    }
    items.sort_by_key(|item| core::cmp::Reverse(item.0));
    for (size, item) in items {
        match item {
            Item::Bar { function, bar } => {
                let b = pci.functions[function].bars[bar];
                let bdf = pci.functions[function].bdf;
                let allocator = match b.kind {
                    BarKind::Io => aio.as_deref_mut(),
                    BarKind::Mem64 if a64.is_some() => a64.as_deref_mut(),
                    _ => a32.as_deref_mut(),
                };
                let Some(addr) = allocator.and_then(|a| a.alloc(size, size)) else {
                    pci.notes.push(format!(
                        "{bdf} BAR {} ({:#x} bytes) left unassigned: no room in a window",
                        b.index, b.size
                    ));
                    continue;
                };
                let off = BAR0 + 4 * u16::from(b.index);
                pci.write32(bdf, off, addr as u32);
                if b.kind == BarKind::Mem64 {
                    pci.write32(bdf, off + 4, (addr >> 32) as u32);
                }
                let slot = &mut pci.functions[function].bars[bar];
                slot.addr = addr;
                slot.origin = Origin::Guest;
            }
            Item::Bridge {
                function,
                secondary,
            } => {
                let bdf = pci.functions[function].bdf;
                let Some(base) = a32.as_deref_mut().and_then(|a| a.alloc(size, size)) else {
                    pci.notes.push(format!(
                        "bridge {bdf}: no room for a {size:#x}-byte window for bus {secondary:02x}"
                    ));
                    continue;
                };
                let window = Window { base, size };
                program_bridge(pci, bdf, window);
                let mut child = Allocator::new(window, &[]);
                assign_bus(pci, secondary, Some(&mut child), None, None, depth + 1);
            }
        }
    }
}

/// Opens the bridge's memory window on `window`, closes its prefetchable and I/O ones.
fn program_bridge(pci: &Pci, bdf: Bdf, window: Window) {
    let base = ((window.base >> 16) & 0xfff0) as u32;
    let limit = (((window.end() - 1) >> 16) & 0xfff0) as u32;
    pci.write32(bdf, BRIDGE_MEMORY, base | (limit << 16));
    // Base above limit: closed.
    pci.write32(bdf, BRIDGE_PREF, 0x0000_fff0);
    pci.write32(bdf, BRIDGE_PREF_BASE_UPPER, 0);
    pci.write32(bdf, BRIDGE_PREF_LIMIT_UPPER, 0);
    pci.write16(bdf, BRIDGE_IO, 0x00f0);
}

/// Checks the BARs read back as assigned, maps BARs above 4 GiB, and turns on decoding and
/// bus mastering of every function with a live BAR (and of bridges).
pub fn enable(ctx: &Ctx, pci: &mut Pci) -> Result<(), Fail> {
    let mut notes = Vec::new();
    for f in &pci.functions {
        let mut set = 0;
        for b in f.bars.iter().filter(|b| b.is_live()) {
            let off = BAR0 + 4 * u16::from(b.index);
            let mut read =
                u64::from(pci.read32(f.bdf, off) & if b.is_memory() { !0xf } else { !3 });
            if b.kind == BarKind::Mem64 {
                read |= u64::from(pci.read32(f.bdf, off + 4)) << 32;
            }
            if read != b.addr {
                fail!(
                    "{} BAR {} reads {read:#x} after {:#x} was written",
                    f.bdf,
                    b.index,
                    b.addr
                );
            }
            if b.is_memory() {
                if !crate::paging::mappable(b.addr, b.addr.saturating_add(b.size)) {
                    notes.push(format!(
                        "{} BAR {} at {:#x} is beyond what the kit can map",
                        f.bdf, b.index, b.addr
                    ));
                    continue;
                }
                if b.addr.saturating_add(b.size) > FOUR_GIB {
                    ctx.map_identity(b.addr, b.size)?;
                }
                set |= CMD_MEMORY;
            } else {
                set |= CMD_IO;
            }
        }
        if f.is_bridge() {
            set |= CMD_MEMORY;
        }
        if set != 0 {
            pci.update_command(f.bdf, set | CMD_BUS_MASTER, 0);
        }
    }
    pci.notes.extend(notes);
    Ok(())
}
