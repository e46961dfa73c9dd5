//! ACPI tables as an OS finds them: the RSDP, the root table (XSDT or RSDT), any table by
//! signature, and the few fields other kit modules need (MCFG allocations, the DSDT for
//! aml.rs). The `acpi` scenario builds its checks on these.
//!
//! Everything is copied out of physical memory (identity mapped) before it is parsed, so a
//! corrupt table can only make a check fail, never fault. A field beyond a table's length
//! reads as zero, as ACPICA treats a short FADT.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::kit::{Ctx, Fail};
use crate::{ensure, fail};

/// Where an OS without a boot protocol pointer scans for the RSDP (16-byte steps).
pub const SCAN_START: u64 = 0xe_0000;
pub const SCAN_END: u64 = 0x10_0000;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// ACPI 1.0 RSDP (what the first checksum covers), and the ACPI 2.0+ one.
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
/// The common header of every table except FACS.
pub const HEADER_LEN: usize = 36;
/// No sane table is longer; a corrupt length would otherwise have the guest crawl through
/// unbacked memory one MMIO exit at a time.
pub const MAX_TABLE_LEN: u64 = 1 << 20;
/// Below this the guest's static page tables map everything.
const FOUR_GIB: u64 = 1 << 32;

/// Generic Address Structure address spaces.
pub const SPACE_MEMORY: u8 = 0;
pub const SPACE_IO: u8 = 1;

/// Copies `len` bytes of physical memory at `addr` (mapping it first if above 4 GiB).
pub fn read_phys(ctx: &Ctx, addr: u64, len: u64) -> Result<Vec<u8>, Fail> {
    ensure!(addr != 0, "null table pointer");
    let end = addr
        .checked_add(len)
        .ok_or_else(|| Fail::new(alloc::format!("{addr:#x} + {len:#x} overflows")))?;
    if end > FOUR_GIB {
        ctx.map_identity(addr, len)?;
    }
    let mut bytes = vec![0u8; len as usize];
    for (i, byte) in bytes.iter_mut().enumerate() {
        // SAFETY: [addr, end) is non-null and mapped (0-4 GiB statically, higher addresses
        // just above); bytes are only read, and volatile reads of firmware-owned memory
        // (or of nothing: unbacked addresses read as the VMM decides) assume nothing.
        *byte = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
    }
    Ok(bytes)
}

/// Sum of all bytes, modulo 256: zero for a table with a correct checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Little-endian unsigned field of `n` bytes (n <= 8) at `offset`; zero beyond the end.
pub fn field(bytes: &[u8], offset: usize, n: usize) -> u64 {
    (0..n).rev().fold(0, |value, i| {
        (value << 8) | u64::from(bytes.get(offset + i).copied().unwrap_or(0))
    })
}

/// `N` bytes at `offset` (zero beyond the end).
pub fn bytes_n<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = bytes.get(offset + i).copied().unwrap_or(0);
    }
    out
}

/// Formats a signature or OEM ID: printable ASCII as is, anything else as `?`.
pub struct Sig<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Display for Sig<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The RSDP, checked (signature, checksums).
#[derive(Debug)]
pub struct Rsdp {
    pub addr: u64,
    pub len: u64,
    pub revision: u8,
    pub oem: [u8; 6],
    /// Whether the root table is the XSDT (revision 2 and later), else the RSDT.
    pub xsdt: bool,
    /// The root table's address (XSDT or RSDT).
    pub root: u64,
    /// The RSDT address field (0: none).
    pub rsdt: u64,
    /// How it was found (the boot protocol's pointer, or the BIOS-area scan).
    pub how: &'static str,
}

impl Rsdp {
    pub fn root_name(&self) -> &'static str {
        if self.xsdt {
            "XSDT"
        } else {
            "RSDT"
        }
    }

    pub fn root_signature(&self) -> &'static [u8; 4] {
        if self.xsdt {
            b"XSDT"
        } else {
            b"RSDT"
        }
    }

    /// Bytes per root table entry.
    pub fn entry_size(&self) -> usize {
        if self.xsdt {
            8
        } else {
            4
        }
    }
}

/// The first 16-byte aligned "RSD PTR " in [SCAN_START, SCAN_END).
pub fn scan_for_rsdp() -> Option<u64> {
    let signature = u64::from_le_bytes(*RSDP_SIGNATURE);
    (SCAN_START..SCAN_END).step_by(16).find(|&addr| {
        // SAFETY: the BIOS area below 1 MiB is mapped (static 0-4 GiB map); an aligned
        // 8-byte volatile read (one exit per candidate if nothing backs it).
        unsafe { core::ptr::read_volatile(addr as *const u64) == signature }
    })
}

/// Finds the RSDP (start_info's pointer, else the BIOS-area scan) and checks it.
pub fn find_rsdp(ctx: &Ctx) -> Result<Rsdp, Fail> {
    // Scan only without a pointer: 8192 reads, each a VM exit where nothing backs them.
    let scanned = if ctx.rsdp() == 0 {
        scan_for_rsdp()
    } else {
        None
    };
    let (addr, how) = match (ctx.rsdp(), scanned) {
        (0, Some(addr)) => (addr, "found by scanning 0xe0000-0xfffff"),
        (0, None) => fail!(
            "no RSDP found: start_info.rsdp_paddr is 0 and there is no \"RSD PTR \" at a \
             16-byte boundary in {SCAN_START:#x}-{:#x}",
            SCAN_END - 1
        ),
        (given, _) => (given, "from start_info.rsdp_paddr"),
    };
    let bytes = read_phys(ctx, addr, RSDP_V2_LEN as u64)?;
    ensure!(
        bytes[..8] == RSDP_SIGNATURE[..],
        "no \"RSD PTR \" signature at {addr:#x} ({how}): found {}",
        Sig(bytes_n::<8>(&bytes, 0))
    );
    let sum = checksum(&bytes[..RSDP_V1_LEN]);
    ensure!(
        sum == 0,
        "RSDP at {addr:#x}: the checksum of its first 20 bytes is {sum:#04x}, not 0"
    );
    let revision = bytes[15];
    let rsdt = field(&bytes, 16, 4);
    let mut len = RSDP_V1_LEN as u64;
    let mut xsdt = 0;
    if revision >= 2 {
        len = field(&bytes, 20, 4);
        ensure!(
            (RSDP_V2_LEN as u64..=4096).contains(&len),
            "RSDP at {addr:#x} (revision {revision}): length {len} (expected at least 36)"
        );
        let whole = read_phys(ctx, addr, len)?;
        let sum = checksum(&whole);
        ensure!(
            sum == 0,
            "RSDP at {addr:#x}: the extended checksum over {len} bytes is {sum:#04x}, not 0"
        );
        xsdt = field(&bytes, 24, 8);
        ensure!(
            xsdt != 0,
            "RSDP at {addr:#x} is revision {revision} but has no XSDT address"
        );
    } else {
        ensure!(rsdt != 0, "RSDP at {addr:#x} has no RSDT address");
    }
    Ok(Rsdp {
        addr,
        len,
        revision,
        oem: bytes_n(&bytes, 9),
        xsdt: revision >= 2,
        root: if revision >= 2 { xsdt } else { rsdt },
        rsdt,
        how,
    })
}

/// A table copied out of guest memory, its header, bounds and checksum checked.
#[derive(Debug)]
pub struct Table {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

impl Table {
    pub fn signature(&self) -> [u8; 4] {
        bytes_n(&self.bytes, 0)
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Little-endian field (n <= 8 bytes) at `offset`; zero beyond the table's end.
    pub fn get(&self, offset: usize, n: usize) -> u64 {
        field(&self.bytes, offset, n)
    }

    pub fn revision(&self) -> u8 {
        self.bytes[8]
    }

    pub fn oem_id(&self) -> [u8; 6] {
        bytes_n(&self.bytes, 10)
    }

    pub fn oem_table_id(&self) -> [u8; 8] {
        bytes_n(&self.bytes, 16)
    }

    /// A Generic Address Structure at `offset`.
    pub fn gas(&self, offset: usize) -> Gas {
        Gas {
            space: self.get(offset, 1) as u8,
            width: self.get(offset + 1, 1) as u8,
            addr: self.get(offset + 4, 8),
        }
    }

    /// The body after the common header (AML for the DSDT and SSDTs).
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN.min(self.bytes.len())..]
    }
}

/// Reads and checks the table at `addr` (signature `expected`, if given): header, length
/// bounds, checksum.
pub fn load_table(ctx: &Ctx, addr: u64, expected: Option<&[u8; 4]>) -> Result<Table, Fail> {
    let header = read_phys(ctx, addr, HEADER_LEN as u64)?;
    let sig = bytes_n::<4>(&header, 0);
    if let Some(want) = expected {
        ensure!(
            &sig == want,
            "the table at {addr:#x} should be the {} but its signature is {}",
            Sig(*want),
            Sig(sig)
        );
    }
    let len = field(&header, 4, 4);
    ensure!(
        (HEADER_LEN as u64..=MAX_TABLE_LEN).contains(&len),
        "{} at {addr:#x}: length {len} is out of bounds (36 to {MAX_TABLE_LEN})",
        Sig(sig)
    );
    let bytes = read_phys(ctx, addr, len)?;
    let sum = checksum(&bytes);
    ensure!(
        sum == 0,
        "{} at {addr:#x} len {len}: bad checksum (bytes sum to {sum:#04x}, not 0)",
        Sig(sig)
    );
    Ok(Table { addr, bytes })
}

/// The root table and the table addresses it lists.
pub fn root_table(ctx: &Ctx, rsdp: &Rsdp) -> Result<(Table, Vec<u64>), Fail> {
    let root = load_table(ctx, rsdp.root, Some(rsdp.root_signature()))?;
    let entry_size = rsdp.entry_size();
    let entries = &root.bytes[HEADER_LEN..];
    ensure!(
        entries.len().is_multiple_of(entry_size),
        "{}: length {} leaves a partial {entry_size}-byte entry",
        rsdp.root_name(),
        root.len()
    );
    let pointers = (0..entries.len() / entry_size)
        .map(|i| root.get(HEADER_LEN + i * entry_size, entry_size))
        .collect();
    Ok((root, pointers))
}

/// The first table with signature `sig` the root table lists (checked), if any.
pub fn find_table(ctx: &Ctx, sig: &[u8; 4]) -> Result<Option<Table>, Fail> {
    let rsdp = find_rsdp(ctx)?;
    let (_, pointers) = root_table(ctx, &rsdp)?;
    for addr in pointers.into_iter().filter(|&a| a != 0) {
        let header = read_phys(ctx, addr, 4)?;
        if header[..] == sig[..] {
            return load_table(ctx, addr, Some(sig)).map(Some);
        }
    }
    Ok(None)
}

/// The DSDT (through the FADT), if there are ACPI tables with one.
pub fn dsdt(ctx: &Ctx) -> Result<Option<Table>, Fail> {
    let Some(fadt) = find_table(ctx, b"FACP")? else {
        return Ok(None);
    };
    let (p32, p64) = (fadt.get(40, 4), fadt.get(140, 8));
    let addr = if p64 != 0 { p64 } else { p32 };
    if addr == 0 {
        return Ok(None);
    }
    load_table(ctx, addr, Some(b"DSDT")).map(Some)
}

/// One MCFG allocation: the ECAM of `bus_start..=bus_end` of a segment. Bus `b`'s
/// configuration space is at `base + (b << 20)` (the base is that of bus 0, even when
/// `bus_start` is not 0).
#[derive(Clone, Copy, Debug)]
pub struct EcamArea {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// The MCFG's allocations (empty without an MCFG).
pub fn mcfg(ctx: &Ctx) -> Result<Vec<EcamArea>, Fail> {
    let Some(t) = find_table(ctx, b"MCFG")? else {
        return Ok(Vec::new());
    };
    Ok(mcfg_areas(&t))
}

/// The allocations of an MCFG table (whole 16-byte entries after the 44-byte header).
pub fn mcfg_areas(t: &Table) -> Vec<EcamArea> {
    let body = t.bytes.len().saturating_sub(44);
    (0..body / 16)
        .map(|i| {
            let o = 44 + 16 * i;
            EcamArea {
                base: t.get(o, 8),
                segment: t.get(o + 8, 2) as u16,
                bus_start: t.get(o + 10, 1) as u8,
                bus_end: t.get(o + 11, 1) as u8,
            }
        })
        .collect()
}

/// A Generic Address Structure (the fields used here).
#[derive(Clone, Copy, Debug)]
pub struct Gas {
    pub space: u8,
    pub width: u8,
    pub addr: u64,
}

impl fmt::Display for Gas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.space {
            SPACE_IO => write!(f, "io {:#x}", self.addr)?,
            SPACE_MEMORY => write!(f, "mmio {:#x}", self.addr)?,
            space => write!(f, "space {space} {:#x}", self.addr)?,
        }
        write!(f, " ({} bits)", self.width)
    }
}
