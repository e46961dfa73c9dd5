//! A minimal AML reader: just enough to find the PCI host bridges of a DSDT (devices whose
//! `_HID` or `_CID` is PNP0A03 or PNP0A08) and read their static objects: `_SEG`, `_BBN`,
//! `_CBA` (a `Name` or a `Method` that only returns a constant, as QEMU writes it) and a
//! `_CRS` that is a `Name` holding a resource template (bus numbers, I/O and memory
//! windows). Objects may sit in the device's body or in a `Scope` naming the device (QEMU's
//! q35 puts `_CRS` there).
//!
//! No interpreter: objects computed at run time are not seen. The reader never indexes
//! out of bounds; malformed AML yields fewer results, never a fault.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use alloc::vec::Vec;
use core::fmt;

const NAME_OP: u8 = 0x08;
const METHOD_OP: u8 = 0x14;
const BUFFER_OP: u8 = 0x11;
const RETURN_OP: u8 = 0xa4;
const SCOPE_OP: u8 = 0x10;
const EXT_OP: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;

/// One window or range from a resource template (inclusive bounds, as ACPI writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Bus {
        min: u64,
        max: u64,
    },
    Io {
        min: u64,
        max: u64,
    },
    Memory {
        min: u64,
        max: u64,
        prefetchable: bool,
    },
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Bus { min, max } => write!(f, "bus {min:#x}-{max:#x}"),
            Self::Io { min, max } => write!(f, "io {min:#x}-{max:#x}"),
            Self::Memory {
                min,
                max,
                prefetchable,
            } => write!(
                f,
                "mem {min:#x}-{max:#x}{}",
                if prefetchable { " prefetchable" } else { "" }
            ),
        }
    }
}

/// A PCI host bridge device of the DSDT.
#[derive(Clone, Debug, Default)]
pub struct HostBridge {
    /// The device's name segment (e.g. `PCI0`).
    pub name: [u8; 4],
    pub seg: Option<u64>,
    pub bbn: Option<u64>,
    /// ECAM base (`_CBA`), for bus 0 of the segment.
    pub cba: Option<u64>,
    /// The `_CRS` windows (empty if `_CRS` is not a static template).
    pub resources: Vec<Resource>,
    /// Whether some window has a non-zero translation offset (ignored here).
    pub translated: bool,
}

/// A decoded PkgLength: (value, bytes it took).
fn pkg_length(aml: &[u8], pos: usize) -> Option<(usize, usize)> {
    let lead = *aml.get(pos)?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    let mut value = usize::from(lead & 0x0f);
    for i in 0..follow {
        value |= usize::from(*aml.get(pos + 1 + i)?) << (4 + 8 * i);
    }
    Some((value, 1 + follow))
}

fn is_name_seg(seg: &[u8]) -> bool {
    seg.len() == 4
        && (seg[0].is_ascii_uppercase() || seg[0] == b'_')
        && seg[1..]
            .iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// A NameString: (its last segment, bytes it took). Root and parent prefixes are skipped.
fn name_string(aml: &[u8], mut pos: usize) -> Option<([u8; 4], usize)> {
    let start = pos;
    while matches!(aml.get(pos), Some(b'\\' | b'^')) {
        pos += 1;
    }
    let segs = match *aml.get(pos)? {
        0x00 => return Some(([0; 4], pos + 1 - start)),
        0x2e => {
            pos += 1;
            2
        }
        0x2f => {
            pos += 2;
            usize::from(*aml.get(pos - 1)?)
        }
        _ => 1,
    };
    let mut last = [0u8; 4];
    for _ in 0..segs {
        let seg = aml.get(pos..pos + 4)?;
        if !is_name_seg(seg) {
            return None;
        }
        last.copy_from_slice(seg);
        pos += 4;
    }
    (segs > 0).then_some((last, pos - start))
}

/// A constant integer data object: (value, bytes it took).
fn integer(aml: &[u8], pos: usize) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let bytes = aml.get(pos + 1..pos + 1 + n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |v, &b| (v << 8) | u64::from(b)),
        )
    };
    match *aml.get(pos)? {
        0x00 => Some((0, 1)),
        0x01 => Some((1, 1)),
        0xff => Some((u64::MAX, 1)),
        0x0a => Some((le(1)?, 2)),
        0x0b => Some((le(2)?, 3)),
        0x0c => Some((le(4)?, 5)),
        0x0e => Some((le(8)?, 9)),
        _ => None,
    }
}

/// A compressed EISA ID (as `EISAID ("PNP0A08")` stores it) as its 7 characters.
pub fn eisa_id(value: u32) -> [u8; 7] {
    let b = value.to_le_bytes();
    let hex = |n: u8| b"0123456789ABCDEF"[usize::from(n & 0xf)];
    [
        0x40 + ((b[0] >> 2) & 0x1f),
        0x40 + (((b[0] & 3) << 3) | (b[1] >> 5)),
        0x40 + (b[1] & 0x1f),
        hex(b[2] >> 4),
        hex(b[2]),
        hex(b[3] >> 4),
        hex(b[3]),
    ]
}

/// A hardware ID object: a string or a compressed EISA ID.
fn hardware_id(aml: &[u8], pos: usize) -> Option<[u8; 7]> {
    if *aml.get(pos)? == 0x0d {
        let id = aml.get(pos + 1..pos + 8)?;
        let mut out = [0u8; 7];
        out.copy_from_slice(id);
        return Some(out);
    }
    let (value, _) = integer(aml, pos)?;
    Some(eisa_id(value as u32))
}

/// A device: its name, where it starts, where its body starts and where it ends.
struct Device {
    name: [u8; 4],
    start: usize,
    body: usize,
    end: usize,
}

/// Every `Device` (`ext` true) or `Scope` (false) block of the AML.
fn blocks(aml: &[u8], ext: bool) -> Vec<Device> {
    let mut out = Vec::new();
    for pos in 0..aml.len().saturating_sub(2) {
        let head = if ext {
            if aml[pos] != EXT_OP || aml[pos + 1] != DEVICE_OP {
                continue;
            }
            2
        } else {
            if aml[pos] != SCOPE_OP {
                continue;
            }
            1
        };
        let Some((len, n)) = pkg_length(aml, pos + head) else {
            continue;
        };
        let end = pos + head + len;
        let Some((name, name_len)) = name_string(aml, pos + head + n) else {
            continue;
        };
        let body = pos + head + n + name_len;
        if end <= aml.len() && body <= end {
            out.push(Device {
                name,
                start: pos,
                body,
                end,
            });
        }
    }
    out
}

/// Offsets in `[start, end)` right after `NameOp <seg>` or a method header named `seg`
/// (for a method: the offset of its first term), outside the `skip` ranges.
fn objects(
    aml: &[u8],
    start: usize,
    end: usize,
    seg: &[u8; 4],
    skip: &[(usize, usize)],
) -> Vec<(bool, usize)> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos + 5 <= end {
        if skip.iter().any(|&(s, e)| s <= pos && pos < e) {
            pos += 1;
            continue;
        }
        if aml[pos] == NAME_OP && &aml[pos + 1..pos + 5] == seg {
            out.push((false, pos + 5));
        } else if aml[pos] == METHOD_OP {
            if let Some((_, n)) = pkg_length(aml, pos + 1) {
                if aml.get(pos + 1 + n..pos + 5 + n) == Some(&seg[..]) {
                    // Skip the MethodFlags byte.
                    out.push((true, pos + 6 + n));
                }
            }
        }
        pos += 1;
    }
    out
}

/// The PCI host bridges (PNP0A03/PNP0A08 by `_HID` or `_CID`) of an AML body.
pub fn host_bridges(aml: &[u8]) -> Vec<HostBridge> {
    let all = blocks(aml, true);
    let scopes = blocks(aml, false);
    let mut bridges = Vec::new();
    for dev in &all {
        // The device's body and the bodies of scopes named like it; nested devices are
        // searched on their own, their objects are not this device's.
        let ranges: Vec<(usize, usize)> = core::iter::once((dev.body, dev.end))
            .chain(
                scopes
                    .iter()
                    .filter(|s| s.name == dev.name)
                    .map(|s| (s.body, s.end)),
            )
            .collect();
        let find = |seg: &[u8; 4]| {
            let mut found = Vec::new();
            for &(start, end) in &ranges {
                let nested: Vec<(usize, usize)> = all
                    .iter()
                    .filter(|d| d.start >= start && d.end <= end && d.start != dev.start)
                    .map(|d| (d.start, d.end))
                    .collect();
                found.extend(objects(aml, start, end, seg, &nested));
            }
            found
        };
        let is_pci = [b"_HID", b"_CID"].iter().any(|seg| {
            find(seg).iter().any(|&(method, at)| {
                !method
                    && matches!(hardware_id(aml, at), Some(id) if &id == b"PNP0A03" || &id == b"PNP0A08")
            })
        });
        if !is_pci {
            continue;
        }
        let constant = |seg: &[u8; 4]| {
            find(seg).into_iter().find_map(|(method, at)| {
                if method {
                    (aml.get(at) == Some(&RETURN_OP))
                        .then(|| integer(aml, at + 1))
                        .flatten()
                } else {
                    integer(aml, at)
                }
                .map(|(v, _)| v)
            })
        };
        let mut bridge = HostBridge {
            name: dev.name,
            seg: constant(b"_SEG"),
            bbn: constant(b"_BBN"),
            cba: constant(b"_CBA"),
            ..HostBridge::default()
        };
        if let Some(template) = find(b"_CRS")
            .into_iter()
            .find_map(|(method, at)| (!method).then(|| buffer(aml, at)).flatten())
        {
            let (resources, translated) = resources(template);
            bridge.resources = resources;
            bridge.translated = translated;
        }
        bridges.push(bridge);
    }
    bridges
}

/// The bytes of a `Buffer` data object at `pos`.
fn buffer(aml: &[u8], pos: usize) -> Option<&[u8]> {
    if *aml.get(pos)? != BUFFER_OP {
        return None;
    }
    let (len, n) = pkg_length(aml, pos + 1)?;
    let end = pos + 1 + len;
    let (size, m) = integer(aml, pos + 1 + n)?;
    let start = pos + 1 + n + m;
    let end = end.min(start.saturating_add(size as usize));
    aml.get(start..end)
}

/// Parses a resource template into its windows; also says whether any window had a
/// translation offset.
pub fn resources(template: &[u8]) -> (Vec<Resource>, bool) {
    let mut out = Vec::new();
    let mut translated = false;
    let le = |b: &[u8], o: usize, n: usize| -> u64 {
        (0..n).rev().fold(0u64, |v, i| {
            (v << 8) | u64::from(b.get(o + i).copied().unwrap_or(0))
        })
    };
    let mut pos = 0;
    while pos < template.len() {
        let tag = template[pos];
        if tag & 0x80 == 0 {
            // Small item: type in bits 6:3, length in bits 2:0.
            let (kind, len) = ((tag >> 3) & 0xf, usize::from(tag & 7));
            let item = template.get(pos + 1..pos + 1 + len).unwrap_or(&[]);
            match kind {
                0xf => break, // end tag
                0x8 if len >= 7 => {
                    let (min, size) = (le(item, 1, 2), le(item, 6, 1));
                    if size > 0 {
                        out.push(Resource::Io {
                            min,
                            max: min + size - 1,
                        });
                    }
                }
                0x9 if len >= 3 => {
                    let (min, size) = (le(item, 0, 2), le(item, 2, 1));
                    if size > 0 {
                        out.push(Resource::Io {
                            min,
                            max: min + size - 1,
                        });
                    }
                }
                _ => {}
            }
            pos += 1 + len;
            continue;
        }
        let len = le(template, pos + 1, 2) as usize;
        let item = template.get(pos + 3..pos + 3 + len).unwrap_or(&[]);
        // Word (0x88), DWord (0x87), QWord (0x8a) address space descriptors.
        let width = match tag {
            0x88 => 2,
            0x87 => 4,
            0x8a => 8,
            0x86 if len >= 9 => {
                // Memory32Fixed: flags, base, length.
                let (base, size) = (le(item, 1, 4), le(item, 5, 4));
                if size > 0 {
                    out.push(Resource::Memory {
                        min: base,
                        max: base + size - 1,
                        prefetchable: false,
                    });
                }
                0
            }
            _ => 0,
        };
        if width > 0 && len >= 3 + 5 * width {
            let kind = item[0];
            let specific = item[2];
            let field = |i: usize| le(item, 3 + i * width, width);
            let (min, max, offset) = (field(1), field(2), field(3));
            translated |= offset != 0;
            match kind {
                0 => out.push(Resource::Memory {
                    min,
                    max,
                    prefetchable: (specific >> 1) & 3 == 3,
                }),
                1 => out.push(Resource::Io { min, max }),
                2 => out.push(Resource::Bus { min, max }),
                _ => {}
            }
        }
        pos += 3 + len;
    }
    (out, translated)
}
