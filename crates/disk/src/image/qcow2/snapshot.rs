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

use super::meta::{self, Mapping, Meta, COPIED, OFFSET_MASK};
use super::Qcow2;

impl Meta {
    /// Adds `delta` (+1 or -1) to the refcount of every cluster the tree
    /// under `l1` references: its L2 tables and their data clusters (the
    /// counting qcow2 uses: each tree counts once, shared or not). Tables
    /// freed on the way leave the cache unwritten.
    pub(crate) fn walk_tree(
        &mut self,
        ctx: &Ctx,
        l1: &[u64],
        delta: i64,
    ) -> Result<(), ImageError> {
        let cb = ctx.cluster_bits;
        let entries = 1usize << ctx.l2_bits();
        for (i, &l1e) in l1.iter().enumerate() {
            let table = l1e & OFFSET_MASK;
            if table == 0 {
                continue;
            }
            self.load_l2(ctx, table)?;
            let data = match self.l2.get(table) {
                Some(e) => e.data.clone(),
                None => return Err(ctx.corrupt("L2 table missing from the cache")),
            };
            for j in 0..entries {
                let entry = meta::get_be64(&data, j);
                let gc = ((i << ctx.l2_bits()) + j) as u64;
                match self.classify(ctx, gc, entry)? {
                    Mapping::Data { host, .. }
                    | Mapping::Zero {
                        host: Some(host), ..
                    } => {
                        self.change_refcount(ctx, host >> cb, delta)?;
                    }
                    Mapping::Compressed { offset, len } => {
                        let first = offset >> cb;
                        let last = (offset + len - 1) >> cb;
                        for c in first..=last {
                            self.change_refcount(ctx, c, delta)?;
                        }
                    }
                    Mapping::Zero { host: None, .. } | Mapping::Unallocated => {}
                }
            }
            if self.change_refcount(ctx, table >> cb, delta)? == 0 {
                self.l2.remove(table);
            }
        }
        Ok(())
    }

    /// Checks that every refcount the tree under `l1` holds can grow by one
    /// (compressed clusters sharing a host cluster by as many), so that a
    /// snapshot is refused before anything changes rather than half-way.
    pub(crate) fn check_tree_room(&mut self, ctx: &Ctx, l1: &[u64]) -> Result<(), ImageError> {
        let cb = ctx.cluster_bits;
        let max = ctx.max_refcount();
        let entries = 1usize << ctx.l2_bits();
        let mut shared: std::collections::HashMap<u64, u64> = Default::default();
        let overflow = |cluster: u64| {
            ctx.corrupt(format!(
                "the refcount of cluster {:#x} is at its maximum ({max}); a wider refcount (refcount_bits) is needed for another snapshot (refcount overflow)",
                cluster << cb
            ))
        };
        for (i, &l1e) in l1.iter().enumerate() {
            let table = l1e & OFFSET_MASK;
            if table == 0 {
                continue;
            }
            if self.refcount(ctx, table >> cb)? >= max {
                return Err(overflow(table >> cb));
            }
            self.load_l2(ctx, table)?;
            let data = match self.l2.get(table) {
                Some(e) => e.data.clone(),
                None => return Err(ctx.corrupt("L2 table missing from the cache")),
            };
            for j in 0..entries {
                let gc = ((i << ctx.l2_bits()) + j) as u64;
                let host = match self.classify(ctx, gc, meta::get_be64(&data, j))? {
                    Mapping::Data { host, .. }
                    | Mapping::Zero {
                        host: Some(host), ..
                    } => host,
                    Mapping::Compressed { offset, len } => {
                        for c in (offset >> cb)..=((offset + len - 1) >> cb) {
                            *shared.entry(c).or_default() += 1;
                        }
                        continue;
                    }
                    _ => continue,
                };
                if self.refcount(ctx, host >> cb)? >= max {
                    return Err(overflow(host >> cb));
                }
            }
        }
        for (c, k) in shared {
            if self.refcount(ctx, c)?.saturating_add(k) > max {
                return Err(overflow(c));
            }
        }
        Ok(())
    }

    /// Sets the COPIED flags of the active tree from the refcounts: on the
    /// L1 entries of tables only it uses, and on the entries of those
    /// tables whose clusters only it uses. Refcounts go to disk first.
    pub(crate) fn fix_copied(&mut self, ctx: &Ctx) -> Result<(), ImageError> {
        let cb = ctx.cluster_bits;
        let entries = 1usize << ctx.l2_bits();
        self.flush_refblocks(ctx)?;
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let table = l1e & OFFSET_MASK;
            if table == 0 {
                continue;
            }
            let own = self.refcount(ctx, table >> cb)? == 1;
            let want = if own { table | COPIED } else { table };
            if want != l1e {
                self.set_l1(ctx, i, want)?;
            }
            if !own {
                continue;
            }
            self.load_l2(ctx, table)?;
            for j in 0..entries {
                let entry = match self.l2.get(table) {
                    Some(e) => meta::get_be64(&e.data, j),
                    None => return Err(ctx.corrupt("L2 table missing from the cache")),
                };
                let gc = ((i << ctx.l2_bits()) + j) as u64;
                let host = match self.classify(ctx, gc, entry)? {
                    Mapping::Data { host, .. }
                    | Mapping::Zero {
                        host: Some(host), ..
                    } => host,
                    _ => continue,
                };
                let single = self.refcount(ctx, host >> cb)? == 1;
                let fixed = if single {
                    entry | COPIED
                } else {
                    entry & !COPIED
                };
                if fixed != entry {
                    if let Some(e) = self.l2.get(table) {
                        meta::put_be64(&mut e.data, j, fixed);
                        e.dirty = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `snapshots` as the new snapshot table and points the header
    /// at it; the old table is freed afterwards.
    fn write_snapshot_table(
        &mut self,
        ctx: &Ctx,
        snapshots: Vec<Snapshot>,
    ) -> Result<(), ImageError> {
        let cs = ctx.cs();
        let bytes = table_bytes(&snapshots);
        let offset = if bytes.is_empty() {
            0
        } else {
            let clusters = (bytes.len() as u64).div_ceil(cs);
            let at = self.alloc_clusters(ctx, clusters)?;
            self.flush_refblocks(ctx)?;
            ctx.write_all(&bytes, at, "the snapshot table")?;
            ctx.sync()?;
            at
        };
        let mut fields = [0u8; 12];
        fields[..4].copy_from_slice(&(snapshots.len() as u32).to_be_bytes());
        fields[4..].copy_from_slice(&offset.to_be_bytes());
        ctx.write_all(&fields, 60, "the header")?;
        ctx.sync()?;
        let old_offset = self.header.snapshots_offset;
        let old_len = table_bytes(&self.snapshots_cache).len() as u64;
        if old_offset != 0 && old_len > 0 {
            self.deferred.push((old_offset, old_len.div_ceil(cs)));
        }
        self.header.snapshots_offset = offset;
        self.header.nb_snapshots = snapshots.len() as u32;
        self.snapshot_table_len = bytes.len() as u64;
        self.snapshots_cache = snapshots;
        Ok(())
    }

    /// Flushes until nothing is pending (frees included).
    pub(crate) fn settle(&mut self, ctx: &Ctx) -> Result<(), ImageError> {
        for _ in 0..3 {
            self.flush(ctx)?;
            if !self.dirty() {
                break;
            }
        }
        Ok(())
    }
}

impl Qcow2 {
    fn find_snapshot(&self, meta: &Meta, key: &str) -> Result<usize, ImageError> {
        // Like qemu-img: an ID matches first, then a name.
        meta.snapshots_cache
            .iter()
            .position(|s| s.info.id == key)
            .or_else(|| meta.snapshots_cache.iter().position(|s| s.info.name == key))
            .ok_or_else(|| ImageError::InvalidArgument {
                path: self.ctx.path.clone(),
                what: format!("no snapshot with ID or name '{key}'"),
            })
    }

    fn snapshot_l1(&self, snapshot: &Snapshot) -> Result<Vec<u64>, ImageError> {
        meta::read_table(
            &self.ctx,
            snapshot.l1_offset,
            snapshot.l1_size as usize,
            "a snapshot's L1 table",
        )
    }

    /// Takes an internal snapshot of the disk's current contents.
    pub fn snapshot_create(&mut self, name: &str) -> Result<SnapshotInfo, ImageError> {
        self.check_writable("creating a snapshot")?;
        let ctx = &self.ctx;
        if name.is_empty() || name.len() > 1024 {
            return Err(ImageError::InvalidArgument {
                path: ctx.path.clone(),
                what: "a snapshot name is 1 to 1024 bytes".into(),
            });
        }
        let size = self.size;
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        if meta.snapshots_cache.iter().any(|s| s.info.name == name) {
            return Err(ImageError::InvalidArgument {
                path: ctx.path.clone(),
                what: format!("a snapshot named '{name}' already exists"),
            });
        }
        if meta.snapshots_cache.len() >= super::header::MAX_SNAPSHOTS as usize {
            return Err(ImageError::Unsupported {
                path: ctx.path.clone(),
                what: "more snapshots".into(),
            });
        }
        meta.settle(ctx)?;
        let active = meta.l1.clone();
        meta.check_tree_room(ctx, &active)?;
        meta.walk_tree(ctx, &active, 1)?;
        let cs = ctx.cs();
        let l1_bytes = (active.len() as u64 * 8).max(8);
        let copy_at = meta.alloc_clusters(ctx, l1_bytes.div_ceil(cs))?;
        // Refcounts first; then every flag says "shared".
        meta.flush_refblocks(ctx)?;
        let shared: Vec<u64> = active.iter().map(|&e| e & !COPIED).collect();
        for &l1e in &active {
            let table = l1e & OFFSET_MASK;
            if table == 0 {
                continue;
            }
            meta.load_l2(ctx, table)?;
            if let Some(e) = meta.l2.get(table) {
                for j in 0..(cs / 8) as usize {
                    let v = meta::get_be64(&e.data, j);
                    if v & COPIED != 0 {
                        meta::put_be64(&mut e.data, j, v & !COPIED);
                        e.dirty = true;
                    }
                }
            }
        }
        let table = meta::table_bytes(&shared, (l1_bytes.div_ceil(cs) * cs) as usize);
        ctx.write_all(&table, copy_at, "the snapshot's L1 table")?;
        ctx.write_all(
            &meta::table_bytes(&shared, shared.len() * 8),
            meta.header.l1_table_offset,
            "the L1 table",
        )?;
        meta.l1 = shared;
        meta.flush(ctx)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let next_id = meta
            .snapshots_cache
            .iter()
            .filter_map(|s| s.info.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let info = SnapshotInfo {
            id: next_id.to_string(),
            name: name.to_owned(),
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(size),
            // What qemu-img records when no instruction count is kept.
            icount: Some(0),
        };
        let mut list = meta.snapshots_cache.clone();
        list.push(Snapshot {
            info: info.clone(),
            l1_offset: copy_at,
            l1_size: active.len() as u32,
            extra_tail: Vec::new(),
        });
        meta.write_snapshot_table(ctx, list)?;
        meta.settle(ctx)?;
        Ok(info)
    }

    /// Makes the disk's contents those of a snapshot (by ID or name).
    pub fn snapshot_apply(&mut self, key: &str) -> Result<(), ImageError> {
        self.check_writable("applying a snapshot")?;
        let index = self.find_snapshot(&self.lock(), key)?;
        let snapshot = self.lock().snapshots_cache[index].clone();
        // The disk takes the snapshot's size back (as qemu-img does).
        let new_size = snapshot.info.disk_size.unwrap_or(self.size);
        let mut l1 = self.snapshot_l1(&snapshot)?;
        let ctx = &self.ctx;
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        if l1.len() > meta.l1.len() {
            if l1[meta.l1.len()..].iter().any(|&e| e & OFFSET_MASK != 0) {
                return Err(ImageError::Unsupported {
                    path: ctx.path.clone(),
                    what: format!(
                        "applying snapshot '{key}', whose L1 table is larger than the image's"
                    ),
                });
            }
            l1.truncate(meta.l1.len());
        }
        l1.resize(meta.l1.len(), 0);
        for e in &mut l1 {
            *e &= !COPIED;
        }
        meta.settle(ctx)?;
        meta.check_tree_room(ctx, &l1)?;
        meta.walk_tree(ctx, &l1, 1)?;
        meta.flush_refblocks(ctx)?;
        let old = std::mem::replace(&mut meta.l1, l1);
        ctx.write_all(
            &meta::table_bytes(&meta.l1, meta.l1.len() * 8),
            meta.header.l1_table_offset,
            "the L1 table",
        )?;
        ctx.sync()?;
        meta.walk_tree(ctx, &old, -1)?;
        meta.settle(ctx)?;
        meta.fix_copied(ctx)?;
        meta.settle(ctx)?;
        if new_size != self.size {
            ctx.write_all(&new_size.to_be_bytes(), 24, "the header")?;
            ctx.sync()?;
            meta.header.size = new_size;
            self.size = new_size;
        }
        Ok(())
    }

    /// Deletes a snapshot (by ID or name), freeing what only it used.
    pub fn snapshot_delete(&mut self, key: &str) -> Result<(), ImageError> {
        self.check_writable("deleting a snapshot")?;
        let index = self.find_snapshot(&self.lock(), key)?;
        let snapshot = self.lock().snapshots_cache[index].clone();
        let l1 = self.snapshot_l1(&snapshot)?;
        let ctx = &self.ctx;
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        meta.settle(ctx)?;
        let mut list = meta.snapshots_cache.clone();
        list.remove(index);
        meta.write_snapshot_table(ctx, list)?;
        meta.walk_tree(ctx, &l1, -1)?;
        let cs = ctx.cs();
        let l1_clusters = (l1.len() as u64 * 8).max(8).div_ceil(cs);
        meta.free(ctx, &[(snapshot.l1_offset, l1_clusters)])?;
        meta.settle(ctx)?;
        meta.fix_copied(ctx)?;
        meta.settle(ctx)
    }
}
