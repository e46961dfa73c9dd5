//! The qcow2 snapshot table: parsing (bounded, checked) and writing.
//!
//! Entry layout (big-endian): L1 offset u64 @0, L1 entries u32 @8, id
//! length u16 @12, name length u16 @14, date seconds u32 @16, date
//! nanoseconds u32 @20, VM clock ns u64 @24, VM state size u32 @32, extra
//! data length u32 @36, extra data @40 (v3: VM state size u64, disk size
//! u64, instruction count u64), then id and name, padded to 8 bytes.

use super::meta::Ctx;
use crate::image::ImageError;

/// Bound on the snapshot table's size (QEMU's limit too).
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Extra data Vireo writes: VM state size, disk size, instruction count.
const EXTRA_LEN: usize = 24;

/// What `vireo img snapshot -l` and `info` show about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// Virtual disk size when the snapshot was taken (v3 images).
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
}

/// One snapshot table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub info: SnapshotInfo,
    pub(crate) l1_offset: u64,
    pub(crate) l1_size: u32,
    /// Extra data past the fields Vireo knows, kept.
    pub(crate) extra_tail: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Reads and checks the snapshot table.
pub(crate) fn read_table(
    ctx: &Ctx,
    offset: u64,
    count: u32,
    file_len: u64,
    l1_limit: u64,
) -> Result<Vec<Snapshot>, ImageError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let invalid = |what: String| ImageError::Invalid {
        path: ctx.path.clone(),
        format: "qcow2",
        what,
    };
    let avail = file_len.saturating_sub(offset).min(MAX_TABLE_BYTES);
    let mut table = vec![0u8; avail as usize];
    ctx.read_exact(&mut table, offset, "the snapshot table")?;
    let mut out = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    for n in 0..count {
        if at + 40 > table.len() {
            return Err(invalid(format!(
                "snapshot {n} lies past the end of the file or the {MAX_TABLE_BYTES}-byte table limit"
            )));
        }
        let e = &table[at..];
        let l1_offset = be64(e, 0);
        let l1_size = be32(e, 8);
        let id_len = be16(e, 12) as usize;
        let name_len = be16(e, 14) as usize;
        let extra_len = be32(e, 36) as usize;
        let total = 40usize
            .checked_add(extra_len)
            .and_then(|t| t.checked_add(id_len))
            .and_then(|t| t.checked_add(name_len))
            .filter(|&t| at + t <= table.len())
            .ok_or_else(|| {
                invalid(format!(
                    "snapshot {n} runs past the end of the snapshot table"
                ))
            })?;
        if !l1_offset.is_multiple_of(ctx.cs()) {
            return Err(invalid(format!(
                "snapshot {n}'s L1 table offset {l1_offset:#x} is not cluster aligned"
            )));
        }
        if u64::from(l1_size) * 8 > l1_limit
            || l1_offset
                .checked_add(u64::from(l1_size) * 8)
                .is_none_or(|end| end > file_len)
        {
            return Err(invalid(format!(
                "snapshot {n}'s L1 table ({l1_size} entries at {l1_offset:#x}) is too large or lies past the end of the file"
            )));
        }
        let extra = &e[40..40 + extra_len];
        let vm_state_size = if extra_len >= 8 {
            be64(extra, 0)
        } else {
            u64::from(be32(e, 32))
        };
        let disk_size = (extra_len >= 16).then(|| be64(extra, 8));
        let icount = (extra_len >= 24)
            .then(|| be64(extra, 16))
            .filter(|&i| i != u64::MAX);
        let id = &e[40 + extra_len..40 + extra_len + id_len];
        let name = &e[40 + extra_len + id_len..40 + extra_len + id_len + name_len];
        out.push(Snapshot {
            info: SnapshotInfo {
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                date_sec: be32(e, 16),
                date_nsec: be32(e, 20),
                vm_clock_nsec: be64(e, 24),
                vm_state_size,
                disk_size,
                icount,
            },
            l1_offset,
            l1_size,
            extra_tail: extra.get(EXTRA_LEN..).unwrap_or(&[]).to_vec(),
        });
        at += total.next_multiple_of(8);
    }
    Ok(out)
}

/// The snapshot table as bytes.
#[allow(dead_code)] // snapshot creation lands next
pub(crate) fn table_bytes(snapshots: &[Snapshot]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in snapshots {
        let start = out.len();
        out.extend_from_slice(&s.l1_offset.to_be_bytes());
        out.extend_from_slice(&s.l1_size.to_be_bytes());
        out.extend_from_slice(&(s.info.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(s.info.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&s.info.date_sec.to_be_bytes());
        out.extend_from_slice(&s.info.date_nsec.to_be_bytes());
        out.extend_from_slice(&s.info.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(
            &(s.info.vm_state_size.min(u64::from(u32::MAX)) as u32).to_be_bytes(),
        );
        out.extend_from_slice(&((EXTRA_LEN + s.extra_tail.len()) as u32).to_be_bytes());
        out.extend_from_slice(&s.info.vm_state_size.to_be_bytes());
        out.extend_from_slice(&s.info.disk_size.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&s.info.icount.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&s.extra_tail);
        out.extend_from_slice(s.info.id.as_bytes());
        out.extend_from_slice(s.info.name.as_bytes());
        let len = out.len() - start;
        out.resize(start + len.next_multiple_of(8), 0);
    }
    out
}
