//! BAR placement in the host bridge's windows.
//!
//! [`PciAllocator`] wraps one `vm_allocator::AddressAllocator` per window:
//! the I/O port window, the 32-bit MMIO window below 4 GiB and the optional
//! 64-bit window. The windows are those the monitor describes to the guest
//! (the ACPI module's `PciHostBridge { io, mmio32, mmio64 }`). Every BAR is
//! placed naturally aligned (to its size), as the BAR registers require.
//!
//! Policy: I/O BARs in the I/O window; 32-bit BARs in the 32-bit window;
//! 64-bit BARs in the 64-bit window when there is one, else in the 32-bit
//! window. When the guest moves a BAR ([`BarMoved`](super::BarMoved)), the
//! monitor keeps the books straight with [`PciAllocator::free`] of the old
//! range and [`PciAllocator::reserve`] of the new one, so later hotplugged
//! devices are not placed over it.

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use super::{BarKind, BarSpec};

/// A range of addresses: `size` bytes (or ports) from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Length; never 0.
    pub size: u64,
}

/// The windows a host bridge forwards to PCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindows {
    /// I/O ports, if any (within 0..0x10000).
    pub io: Option<Window>,
    /// Memory below 4 GiB.
    pub mmio32: Window,
    /// Memory above 4 GiB, if any.
    pub mmio64: Option<Window>,
}

/// Errors from BAR placement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciAllocatorError {
    /// A window is empty, wraps, or (for mmio32) crosses 4 GiB.
    #[error("invalid {which} window {base:#x}+{size:#x}")]
    InvalidWindow {
        which: &'static str,
        base: u64,
        size: u64,
    },
    /// There is no window for this kind of BAR.
    #[error("no window for {0:?} BARs")]
    NoWindow(BarKind),
    /// The BAR does not fit in the free space.
    #[error("no room for a {size:#x}-byte {kind:?} BAR")]
    Exhausted { kind: BarKind, size: u64 },
    /// The range was not allocated, or overlaps an allocation.
    #[error("range {base:#x}+{size:#x} cannot be freed or reserved: {source}")]
    Range {
        base: u64,
        size: u64,
        #[source]
        source: vm_allocator::Error,
    },
}

/// Places BARs in the host bridge's windows.
#[derive(Debug, Clone)]
pub struct PciAllocator {
    io: Option<AddressAllocator>,
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
}

fn allocator(
    which: &'static str,
    w: Window,
    limit: u64,
) -> Result<AddressAllocator, PciAllocatorError> {
    let bad = || PciAllocatorError::InvalidWindow {
        which,
        base: w.base,
        size: w.size,
    };
    let last = w
        .size
        .checked_sub(1)
        .and_then(|s| s.checked_add(w.base))
        .ok_or_else(bad)?;
    if last > limit {
        return Err(bad());
    }
    AddressAllocator::new(w.base, w.size).map_err(|_| bad())
}

impl PciAllocator {
    /// An allocator over `windows`.
    pub fn new(windows: PciWindows) -> Result<PciAllocator, PciAllocatorError> {
        Ok(PciAllocator {
            io: windows
                .io
                .map(|w| allocator("I/O", w, 0xffff))
                .transpose()?,
            mmio32: allocator("32-bit MMIO", windows.mmio32, u64::from(u32::MAX))?,
            mmio64: windows
                .mmio64
                .map(|w| allocator("64-bit MMIO", w, u64::MAX))
                .transpose()?,
        })
    }

    fn pick(&mut self, kind: BarKind) -> Option<&mut AddressAllocator> {
        match kind {
            BarKind::Io => self.io.as_mut(),
            BarKind::Mmio32 => Some(&mut self.mmio32),
            BarKind::Mmio64 => match self.mmio64 {
                Some(ref mut a) => Some(a),
                None => Some(&mut self.mmio32),
            },
        }
    }

    /// Places a BAR; returns its base address.
    pub fn allocate(&mut self, spec: &BarSpec) -> Result<u64, PciAllocatorError> {
        let a = self
            .pick(spec.kind)
            .ok_or(PciAllocatorError::NoWindow(spec.kind))?;
        a.allocate(spec.size, spec.size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| PciAllocatorError::Exhausted {
                kind: spec.kind,
                size: spec.size,
            })
    }

    /// The allocator holding `[base, base + size)`, by kind and address.
    fn holding(&mut self, kind: BarKind, base: u64) -> Option<&mut AddressAllocator> {
        let inside = |a: &AddressAllocator| (a.base()..=a.end()).contains(&base);
        match kind {
            BarKind::Io => self.io.as_mut().filter(|a| inside(a)),
            _ => {
                if inside(&self.mmio32) {
                    Some(&mut self.mmio32)
                } else {
                    self.mmio64.as_mut().filter(|a| inside(a))
                }
            }
        }
    }

    fn range(base: u64, size: u64) -> Result<RangeInclusive, PciAllocatorError> {
        let end = size
            .checked_sub(1)
            .and_then(|s| s.checked_add(base))
            .ok_or(PciAllocatorError::Range {
                base,
                size,
                source: vm_allocator::Error::Overflow,
            })?;
        RangeInclusive::new(base, end).map_err(|source| PciAllocatorError::Range {
            base,
            size,
            source,
        })
    }

    /// Returns `[base, base + size)` of a `kind` BAR to its window.
    pub fn free(&mut self, kind: BarKind, base: u64, size: u64) -> Result<(), PciAllocatorError> {
        let range = Self::range(base, size)?;
        let a = self
            .holding(kind, base)
            .ok_or(PciAllocatorError::NoWindow(kind))?;
        a.free(&range)
            .map_err(|source| PciAllocatorError::Range { base, size, source })
    }

    /// Marks `[base, base + size)` as used (a BAR the guest placed itself).
    /// `base` must be aligned to `size` (BAR addresses are).
    pub fn reserve(
        &mut self,
        kind: BarKind,
        base: u64,
        size: u64,
    ) -> Result<(), PciAllocatorError> {
        Self::range(base, size)?;
        let a = self
            .holding(kind, base)
            .ok_or(PciAllocatorError::NoWindow(kind))?;
        a.allocate(size, size, AllocPolicy::ExactMatch(base))
            .map(|_| ())
            .map_err(|source| PciAllocatorError::Range { base, size, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> PciWindows {
        PciWindows {
            io: Some(Window {
                base: 0xc000,
                size: 0x1000,
            }),
            mmio32: Window {
                base: 0xc000_0000,
                size: 0x1000_0000,
            },
            mmio64: Some(Window {
                base: 0x100_0000_0000,
                size: 0x10_0000_0000,
            }),
        }
    }

    fn spec(size: u64, kind: BarKind) -> BarSpec {
        BarSpec {
            index: 0,
            size,
            kind,
            prefetchable: false,
        }
    }

    #[test]
    fn bars_go_to_their_windows_aligned() {
        let mut a = PciAllocator::new(windows()).expect("valid");
        let io = a.allocate(&spec(0x20, BarKind::Io)).expect("room");
        let m32 = a.allocate(&spec(0x1000, BarKind::Mmio32)).expect("room");
        let m32b = a.allocate(&spec(0x4000, BarKind::Mmio32)).expect("room");
        let m64 = a.allocate(&spec(0x8000, BarKind::Mmio64)).expect("room");
        assert!((0xc000..0xd000).contains(&io));
        assert_eq!(io % 0x20, 0);
        assert!((0xc000_0000..0xd000_0000).contains(&m32));
        assert_eq!(m32b % 0x4000, 0);
        assert_ne!(m32, m32b);
        assert!(m64 >= 0x100_0000_0000);
        assert_eq!(m64 % 0x8000, 0);
    }

    #[test]
    fn fallbacks_and_exhaustion() {
        let mut w = windows();
        w.io = None;
        w.mmio64 = None;
        let mut a = PciAllocator::new(w).expect("valid");
        assert_eq!(
            a.allocate(&spec(0x20, BarKind::Io)),
            Err(PciAllocatorError::NoWindow(BarKind::Io))
        );
        let m64 = a.allocate(&spec(0x8000, BarKind::Mmio64)).expect("room");
        assert!(m64 < 1 << 32);
        let big = spec(0x1000_0000, BarKind::Mmio32);
        assert!(matches!(
            a.allocate(&big),
            Err(PciAllocatorError::Exhausted { .. })
        ));
        a.free(BarKind::Mmio64, m64, 0x8000).expect("was allocated");
        assert_eq!(a.allocate(&big), Ok(0xc000_0000));
    }

    #[test]
    fn guest_moves_are_booked() {
        let mut a = PciAllocator::new(windows()).expect("valid");
        let first = a.allocate(&spec(0x1000, BarKind::Mmio32)).expect("room");
        // The guest moved it up by 64 KiB.
        a.free(BarKind::Mmio32, first, 0x1000)
            .expect("was allocated");
        a.reserve(BarKind::Mmio32, first + 0x1_0000, 0x1000)
            .expect("free range");
        // Now the next allocation takes the old place, never the new one.
        assert_eq!(a.allocate(&spec(0x1000, BarKind::Mmio32)), Ok(first));
        assert!(a
            .reserve(BarKind::Mmio32, first + 0x1_0000, 0x1000)
            .is_err());
        assert!(a.free(BarKind::Mmio32, 0x1000, 0x1000).is_err());
        assert!(a.reserve(BarKind::Io, 0x10, 0x10).is_err());
    }

    #[test]
    fn invalid_windows() {
        let mut w = windows();
        w.mmio32 = Window {
            base: 0xf000_0000,
            size: 0x2000_0000,
        };
        assert!(matches!(
            PciAllocator::new(w),
            Err(PciAllocatorError::InvalidWindow { .. })
        ));
        let mut w = windows();
        w.io = Some(Window {
            base: 0xf000,
            size: 0,
        });
        assert!(PciAllocator::new(w).is_err());
        let mut w = windows();
        w.mmio64 = Some(Window {
            base: u64::MAX,
            size: 2,
        });
        assert!(PciAllocator::new(w).is_err());
    }
}
