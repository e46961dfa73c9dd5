//! Guest physical memory: the layout and the host mappings behind it.
//!
//! Layout (x86_64):
//! ```text
//! 0x0000_0000 .. 0x0009_fc00   RAM (boot structures live at the bottom, see `arch::x86_64::boot`)
//! 0x0009_fc00 .. 0x0010_0000   RAM, reserved in the guest's memory map (EBDA, VGA, BIOS area:
//!                              the MP table, the ACPI tables)
//! 0x0010_0000 .. low_end       RAM, at most up to MMIO_HOLE_START (3 GiB)
//! 0xc000_0000 .. 0x1_0000_0000 32-bit MMIO hole: PCI, IOAPIC, LAPIC, ...
//! 0x1_0000_0000 .. high_end    the rest of RAM for guests larger than 3 GiB
//! ```
//! Guest RAM is anonymous, private, MAP_NORESERVE memory: untouched guest pages
//! cost the host nothing, so guests can be overcommitted, and nothing here ever
//! touches guest pages eagerly.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB): RAM above the hole starts here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The legacy window (the last KiB of base memory, where an EBDA would be,
/// then VGA and BIOS), reserved in the guest's memory map.
pub const LEGACY_HOLE_START: u64 = 0x9_fc00;
/// End of the legacy window: where high memory (and the kernel) starts.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// The PCI host bridge's 32-bit MMIO window (BARs), at the bottom of the hole.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// Size of the 32-bit MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 512 * MIB;
/// ECAM (PCI Express enhanced configuration access), right after the window.
pub const PCI_ECAM_START: u64 = PCI_MMIO32_START + PCI_MMIO32_SIZE;
/// Last PCI bus number decoded (64 buses: 64 MiB of ECAM).
pub const PCI_LAST_BUS: u8 = 0x3f;
/// The I/O port window forwarded to PCI.
pub const PCI_IO_START: u64 = 0x1000;
/// Size of the I/O port window.
pub const PCI_IO_SIZE: u64 = 0xf000;

/// The smallest guest accepted.
pub const MIN_MEMORY: u64 = 8 * MIB;

/// Errors in choosing a memory size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Below [`MIN_MEMORY`].
    #[error("guest memory of {size} bytes is too small: at least {} MiB is needed", MIN_MEMORY / MIB)]
    TooSmall { size: u64 },
    /// Does not fit the guest physical address space the host supports.
    #[error(
        "guest memory of {} MiB is too large: this host's CPU addresses {phys_bits} bits \
         of guest physical memory, so at most {} MiB fits",
        size / MIB, max / MIB
    )]
    TooLarge { size: u64, max: u64, phys_bits: u8 },
    /// Not a multiple of 4 KiB.
    #[error("guest memory of {size} bytes is not a multiple of 4 KiB")]
    Unaligned { size: u64 },
}

/// Kind of a guest memory-map entry (the e820 / PVH memmap types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Usable RAM.
    Ram,
    /// Reserved: present but not for the OS to use.
    Reserved,
}

/// One entry of the memory map the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the guest may do with it.
    pub kind: RegionKind,
}

/// Where guest RAM lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    size: u64,
}

impl MemoryLayout {
    /// Checks `size` (bytes) against the limits; `phys_bits` is the width of guest
    /// physical addresses the host supports.
    pub fn new(size: u64, phys_bits: u8) -> Result<MemoryLayout, LayoutError> {
        if size < MIN_MEMORY {
            return Err(LayoutError::TooSmall { size });
        }
        if !size.is_multiple_of(4096) {
            return Err(LayoutError::Unaligned { size });
        }
        let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
        // RAM above the hole ends at 4 GiB + (size - 3 GiB).
        let max = limit.saturating_sub(MMIO_HOLE_END - MMIO_HOLE_START);
        if size > max {
            return Err(LayoutError::TooLarge {
                size,
                max,
                phys_bits,
            });
        }
        Ok(MemoryLayout { size })
    }

    /// Total guest RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// End of RAM below the MMIO hole.
    pub fn low_end(&self) -> u64 {
        self.size.min(MMIO_HOLE_START)
    }

    /// The RAM ranges (start, length) that back guest memory.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(0, self.low_end())];
        if self.size > MMIO_HOLE_START {
            v.push((MMIO_HOLE_END, self.size - MMIO_HOLE_START));
        }
        v
    }

    /// The memory map described to the guest, in address order.
    pub fn memory_map(&self) -> Vec<MapEntry> {
        let mut v = vec![
            MapEntry {
                start: 0,
                len: LEGACY_HOLE_START,
                kind: RegionKind::Ram,
            },
            MapEntry {
                start: LEGACY_HOLE_START,
                len: HIGH_MEMORY_START - LEGACY_HOLE_START,
                kind: RegionKind::Reserved,
            },
            MapEntry {
                start: HIGH_MEMORY_START,
                len: self.low_end() - HIGH_MEMORY_START,
                kind: RegionKind::Ram,
            },
            // ECAM, so that the guest may use it as soon as it reads the map.
            MapEntry {
                start: PCI_ECAM_START,
                len: (u64::from(PCI_LAST_BUS) + 1) << 20,
                kind: RegionKind::Reserved,
            },
        ];
        if self.size > MMIO_HOLE_START {
            v.push(MapEntry {
                start: MMIO_HOLE_END,
                len: self.size - MMIO_HOLE_START,
                kind: RegionKind::Ram,
            });
        }
        v
    }

    /// Maps fresh guest memory for this layout. Nothing is touched: the host
    /// commits a page only when the guest (or a loader) writes to it.
    pub fn allocate(&self) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
        let ranges: Vec<(GuestAddress, usize)> = self
            .ram_ranges()
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges)
    }
}

pub use vireo_api::size::parse_size;

/// Host guest-physical address width, from CPUID leaf 0x8000_0008.
pub fn host_phys_bits() -> u8 {
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext < 0x8000_0008 {
        return 36;
    }
    let bits = std::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff;
    u8::try_from(bits).unwrap_or(36).clamp(32, 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range_below_the_hole() {
        let l = MemoryLayout::new(128 * MIB, 40).expect("valid");
        assert_eq!(l.ram_ranges(), vec![(0, 128 * MIB)]);
        let map = l.memory_map();
        assert_eq!(map.len(), 4);
        assert_eq!(
            (map[3].start, map[3].kind),
            (PCI_ECAM_START, RegionKind::Reserved)
        );
        assert_eq!(map[1].kind, RegionKind::Reserved);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == RegionKind::Ram)
            .map(|e| e.len)
            .sum();
        assert_eq!(ram, 128 * MIB - (HIGH_MEMORY_START - LEGACY_HOLE_START));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let l = MemoryLayout::new(5 * GIB, 40).expect("valid");
        assert_eq!(l.ram_ranges(), vec![(0, 3 * GIB), (4 * GIB, 2 * GIB)]);
        let map = l.memory_map();
        let last = map.last().expect("entries");
        assert_eq!((last.start, last.len), (4 * GIB, 2 * GIB));
        for w in map.windows(2) {
            assert!(w[0].start + w[0].len <= w[1].start, "sorted and disjoint");
        }
        assert!(map
            .iter()
            .filter(|e| e.kind == RegionKind::Ram)
            .all(|e| e.start >= MMIO_HOLE_END || e.start + e.len <= MMIO_HOLE_START));
    }

    #[test]
    fn limits() {
        assert!(matches!(
            MemoryLayout::new(MIB, 40),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(matches!(
            MemoryLayout::new(8 * MIB + 1, 40),
            Err(LayoutError::Unaligned { .. })
        ));
        // 36 bits = 64 GiB of address space, minus the 1 GiB hole.
        assert!(MemoryLayout::new(63 * GIB, 36).is_ok());
        let e = MemoryLayout::new(64 * GIB, 36).expect_err("too large");
        assert!(e.to_string().contains("at most 64512 MiB"), "{e}");
    }
}
