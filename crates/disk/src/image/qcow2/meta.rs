//! qcow2 metadata: the L1 table, cached L2 tables, refcounts, cluster
//! allocation, and the order in which changes reach the file.
//!
//! Crash safety rests on three rules (the same ones QEMU follows), which
//! together mean a crash at any point leaves at most leaked clusters:
//! 1. A cluster's refcount is on disk (written and synced) before any table
//!    on disk points to it: dirty refcount blocks are flushed before a dirty
//!    L2 table is written, and before a new L2 table or refcount block is
//!    linked into the L1 or refcount table.
//! 2. Data is written before the L2 entry that points to it.
//! 3. Refcounts are decremented only after the table change that dropped the
//!    reference is on disk: frees wait in `deferred` until the next flush has
//!    written and synced the L2 tables.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::cache::TableCache;
use super::header::{Header, MAX_REFTABLE_BYTES};
use crate::image::ImageError;
use crate::sys;

pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const COPIED: u64 = 1 << 63;
pub(crate) const COMPRESSED: u64 = 1 << 62;
pub(crate) const ZERO: u64 = 1;
/// L1 bits that must be zero: 1-8 and 56-62.
const L1_RESERVED: u64 = 0x7f00_0000_0000_01fe;
/// Standard L2 bits that must be zero: 1-8 and 56-61.
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Refcount table bits that must be zero: 0-8.
const REFTABLE_RESERVED: u64 = 0x1ff;

/// The unchanging facts of an open image, shared by every thread.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) cluster_bits: u32,
    pub(crate) version: u32,
    pub(crate) refcount_order: u32,
    pub(crate) compression: super::CompressionType,
    pub(crate) read_only: bool,
}

impl Ctx {
    pub(crate) fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub(crate) fn l2_bits(&self) -> u32 {
        self.cluster_bits - 3
    }
    /// log2 of the refcount entries in one refcount block.
    pub(crate) fn rb_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }
    pub(crate) fn max_refcount(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.refcount_order)) - 1
        }
    }
    pub(crate) fn io(&self, what: impl Into<String>, e: std::io::Error) -> ImageError {
        ImageError::io(&self.path, what, e)
    }
    pub(crate) fn corrupt(&self, what: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }
    pub(crate) fn read_exact(
        &self,
        buf: &mut [u8],
        offset: u64,
        what: &str,
    ) -> Result<(), ImageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io(format!("reading {what} at offset {offset:#x}"), e))
    }
    pub(crate) fn write_all(&self, buf: &[u8], offset: u64, what: &str) -> Result<(), ImageError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io(format!("writing {what} at offset {offset:#x}"), e))
    }
    pub(crate) fn sync(&self) -> Result<(), ImageError> {
        sys::fdatasync(self.file.as_raw_fd()).map_err(|e| self.io("fdatasync", e))
    }
    pub(crate) fn file_len(&self) -> Result<u64, ImageError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io("stat", e))
    }
}

pub(crate) fn get_be64(data: &[u8], index: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[index * 8..index * 8 + 8]);
    u64::from_be_bytes(b)
}

pub(crate) fn put_be64(data: &mut [u8], index: usize, value: u64) {
    data[index * 8..index * 8 + 8].copy_from_slice(&value.to_be_bytes());
}

/// Reads refcount entry `i` of a block with entries of 2^order bits.
pub(crate) fn get_refcount(block: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[i / per_byte];
            u64::from((byte >> ((i % per_byte) * bits)) & ((1u8 << bits) - 1))
        }
        3 => u64::from(block[i]),
        4 => u64::from(u16::from_be_bytes([block[2 * i], block[2 * i + 1]])),
        5 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(&block[4 * i..4 * i + 4]);
            u64::from(u32::from_be_bytes(b))
        }
        _ => get_be64(block, i),
    }
}

/// Writes refcount entry `i` (the value fits the width; checked by callers).
pub(crate) fn set_refcount(block: &mut [u8], order: u32, i: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let byte = &mut block[i / per_byte];
            *byte = (*byte & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[i] = value as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => put_be64(block, i, value),
    }
}

/// What one L2 entry says about its guest cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not here: backing file, or zeros.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster kept for reuse.
    Zero { host: Option<u64>, copied: bool },
    /// Plain data at `host`; `copied`: refcount 1, writable in place.
    Data { host: u64, copied: bool },
    /// Compressed: `offset` and byte count of the compressed stream.
    Compressed { offset: u64, len: u64 },
}

/// The mutable metadata, behind the image's lock.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) header: Header,
    pub(crate) l1: Vec<u64>,
    pub(crate) l2: TableCache,
    pub(crate) reftable: Vec<u64>,
    /// Entries of the refcount table as it is on disk; entries past this
    /// exist only in memory while the table is being grown.
    pub(crate) reftable_disk_entries: usize,
    pub(crate) refblocks: TableCache,
    /// Search for free clusters starts here (a cluster index).
    pub(crate) free_hint: u64,
    /// Cluster index past the last cluster in use or in the file.
    pub(crate) end: u64,
    /// Length the file is known to have.
    pub(crate) file_len: u64,
    /// Clusters whose refcount drops once the tables no longer pointing to
    /// them are on disk: (host offset, cluster count).
    pub(crate) deferred: Vec<(u64, u64)>,
    /// Punch holes in clusters whose refcount drops to zero.
    pub(crate) punch_freed: bool,
    /// Byte offset where the next compressed cluster may be packed (0: none).
    pub(crate) compressed_cursor: u64,
    /// The snapshot table.
    pub(crate) snapshots_cache: Vec<super::Snapshot>,
    /// Bytes of the snapshot table on disk.
    pub(crate) snapshot_table_len: u64,
    /// Offsets of the refcount blocks (the refcount table's entries), to
    /// refuse allocating over one.
    pub(crate) refblock_offsets: std::collections::HashSet<u64>,
}

/// How far past the end of the file refcounts may claim clusters before
/// allocation calls the image corrupt rather than skipping them one by one
/// (a crash between a refcount update and its data leaves a few).
const MAX_USED_PAST_END: u64 = 65536;

impl Meta {
    // ---- L2 tables --------------------------------------------------------

    /// Makes sure the L2 table at `offset` is cached.
    pub(crate) fn load_l2(&mut self, ctx: &Ctx, offset: u64) -> Result<(), ImageError> {
        if self.l2.contains(offset) {
            return Ok(());
        }
        let cs = ctx.cs();
        if !offset.is_multiple_of(cs)
            || offset
                .checked_add(cs)
                .is_none_or(|e| e > self.file_len.max(self.end << ctx.cluster_bits))
        {
            return Err(ctx.corrupt(format!(
                "L2 table offset {offset:#x} is unaligned or beyond the end of the file"
            )));
        }
        if offset < cs {
            return Err(ctx.corrupt("an L2 table overlaps the header"));
        }
        if let Some(victim) = self.l2.victim() {
            self.evict_l2(ctx, victim)?;
        }
        let mut data = vec![0u8; cs as usize].into_boxed_slice();
        read_padded(ctx, &mut data, offset, self.file_len, "an L2 table")?;
        self.l2.insert(offset, data, false);
        Ok(())
    }

    fn evict_l2(&mut self, ctx: &Ctx, offset: u64) -> Result<(), ImageError> {
        let dirty = self.l2.get(offset).is_some_and(|e| e.dirty);
        if dirty {
            // Rule 1: refcounts first.
            self.flush_refblocks(ctx)?;
            if let Some(entry) = self.l2.get(offset) {
                ctx.write_all(&entry.data, offset, "an L2 table")?;
            }
        }
        self.l2.remove(offset);
        Ok(())
    }

    /// The L1 index and L2 index of a guest cluster.
    fn split(&self, ctx: &Ctx, guest_cluster: u64) -> (usize, usize) {
        let l2_bits = ctx.l2_bits();
        (
            (guest_cluster >> l2_bits) as usize,
            (guest_cluster & ((1 << l2_bits) - 1)) as usize,
        )
    }

    fn l1_target(&self, ctx: &Ctx, l1_index: usize) -> Result<(u64, bool), ImageError> {
        let entry = *self
            .l1
            .get(l1_index)
            .ok_or_else(|| ctx.corrupt(format!("L1 index {l1_index} is beyond the L1 table")))?;
        if entry & L1_RESERVED != 0 {
            return Err(ctx.corrupt(format!(
                "L1 entry {l1_index} ({entry:#x}) has reserved bits set"
            )));
        }
        Ok((entry & OFFSET_MASK, entry & COPIED != 0))
    }

    /// The raw L2 entry of a guest cluster (0 if its L2 table is absent).
    pub(crate) fn l2_entry(&mut self, ctx: &Ctx, guest_cluster: u64) -> Result<u64, ImageError> {
        let (l1_index, l2_index) = self.split(ctx, guest_cluster);
        let (l2_offset, _) = self.l1_target(ctx, l1_index)?;
        if l2_offset == 0 {
            return Ok(0);
        }
        self.load_l2(ctx, l2_offset)?;
        let table = self.l2.get(l2_offset).map(|e| get_be64(&e.data, l2_index));
        Ok(table.unwrap_or(0))
    }

    /// Decodes an L2 entry, checking it.
    pub(crate) fn classify(
        &self,
        ctx: &Ctx,
        guest_cluster: u64,
        entry: u64,
    ) -> Result<Mapping, ImageError> {
        if entry & COMPRESSED != 0 {
            let x = 62 - (ctx.cluster_bits - 8);
            let offset = entry & ((1u64 << x) - 1);
            let sectors = ((entry >> x) & ((1u64 << (ctx.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (offset & 511);
            if entry & COPIED != 0 || offset == 0 {
                return Err(ctx.corrupt(format!(
                    "the compressed L2 entry of guest offset {:#x} is invalid ({entry:#x})",
                    guest_cluster << ctx.cluster_bits
                )));
            }
            return Ok(Mapping::Compressed { offset, len });
        }
        if entry & L2_RESERVED != 0 {
            return Err(ctx.corrupt(format!(
                "the L2 entry of guest offset {:#x} has reserved bits set ({entry:#x})",
                guest_cluster << ctx.cluster_bits
            )));
        }
        let host = entry & OFFSET_MASK;
        let copied = entry & COPIED != 0;
        if !host.is_multiple_of(ctx.cs()) {
            return Err(ctx.corrupt(format!(
                "the L2 entry of guest offset {:#x} points to unaligned offset {host:#x}",
                guest_cluster << ctx.cluster_bits
            )));
        }
        if host != 0 && host < ctx.cs() {
            return Err(ctx.corrupt(format!(
                "the data of guest offset {:#x} overlaps the header",
                guest_cluster << ctx.cluster_bits
            )));
        }
        Ok(if entry & ZERO != 0 {
            Mapping::Zero {
                host: (host != 0).then_some(host),
                copied,
            }
        } else if host == 0 {
            Mapping::Unallocated
        } else {
            Mapping::Data { host, copied }
        })
    }

    pub(crate) fn mapping(&mut self, ctx: &Ctx, guest_cluster: u64) -> Result<Mapping, ImageError> {
        let entry = self.l2_entry(ctx, guest_cluster)?;
        self.classify(ctx, guest_cluster, entry)
    }

    /// Makes the L2 table of `l1_index` writable (allocated, not shared with
    /// a snapshot) and returns its offset.
    pub(crate) fn l2_for_write(&mut self, ctx: &Ctx, l1_index: usize) -> Result<u64, ImageError> {
        let (old, copied) = self.l1_target(ctx, l1_index)?;
        if old != 0 && copied {
            self.load_l2(ctx, old)?;
            return Ok(old);
        }
        let cs = ctx.cs();
        let new = self.alloc_clusters(ctx, 1)?;
        let data = if old == 0 {
            vec![0u8; cs as usize].into_boxed_slice()
        } else {
            self.load_l2(ctx, old)?;
            let entry = self
                .l2
                .remove(old)
                .ok_or_else(|| ctx.corrupt("L2 table vanished"))?;
            entry.data
        };
        // Rule 1: the new table's refcount, then the table, then the link.
        self.flush_refblocks(ctx)?;
        ctx.write_all(&data, new, "a new L2 table")?;
        ctx.sync()?;
        self.set_l1(ctx, l1_index, new | COPIED)?;
        if let Some(victim) = self.l2.victim() {
            self.evict_l2(ctx, victim)?;
        }
        self.l2.insert(new, data, false);
        if old != 0 {
            self.deferred.push((old, 1));
        }
        Ok(new)
    }

    pub(crate) fn set_l1(
        &mut self,
        ctx: &Ctx,
        l1_index: usize,
        entry: u64,
    ) -> Result<(), ImageError> {
        let offset = self.header.l1_table_offset + l1_index as u64 * 8;
        ctx.write_all(&entry.to_be_bytes(), offset, "an L1 entry")?;
        self.l1[l1_index] = entry;
        Ok(())
    }

    /// Sets the L2 entry of a guest cluster whose table `l2_for_write` made
    /// writable.
    pub(crate) fn set_l2_entry(
        &mut self,
        ctx: &Ctx,
        guest_cluster: u64,
        entry: u64,
    ) -> Result<(), ImageError> {
        let (l1_index, l2_index) = self.split(ctx, guest_cluster);
        let table = self.l2_for_write(ctx, l1_index)?;
        let cached = self
            .l2
            .get(table)
            .ok_or_else(|| ctx.corrupt("L2 table missing from the cache"))?;
        put_be64(&mut cached.data, l2_index, entry);
        cached.dirty = true;
        Ok(())
    }

    /// Queues the references an old L2 entry held for release after the
    /// next flush.
    pub(crate) fn release_entry(&mut self, ctx: &Ctx, mapping: Mapping) {
        match mapping {
            Mapping::Data { host, .. }
            | Mapping::Zero {
                host: Some(host), ..
            } => {
                self.deferred.push((host, 1));
            }
            Mapping::Compressed { offset, len } => {
                let cs = ctx.cs();
                let first = offset & !(cs - 1);
                let last = (offset + len - 1) & !(cs - 1);
                self.deferred.push((first, (last - first) / cs + 1));
            }
            Mapping::Zero { host: None, .. } | Mapping::Unallocated => {}
        }
    }

    // ---- refcounts --------------------------------------------------------

    fn load_refblock(&mut self, ctx: &Ctx, offset: u64) -> Result<(), ImageError> {
        if self.refblocks.contains(offset) {
            return Ok(());
        }
        let cs = ctx.cs();
        if !offset.is_multiple_of(cs) || offset < cs {
            return Err(ctx.corrupt(format!(
                "refcount block offset {offset:#x} is unaligned or overlaps the header"
            )));
        }
        if offset
            .checked_add(cs)
            .is_none_or(|e| e > self.file_len.max(self.end << ctx.cluster_bits))
        {
            return Err(ctx.corrupt(format!(
                "refcount block at {offset:#x} lies beyond the end of the file"
            )));
        }
        let mut data = vec![0u8; cs as usize].into_boxed_slice();
        read_padded(ctx, &mut data, offset, self.file_len, "a refcount block")?;
        self.cache_refblock(ctx, offset, data)
    }

    fn reftable_entry(&self, ctx: &Ctx, index: usize) -> Result<u64, ImageError> {
        let entry = self.reftable.get(index).copied().unwrap_or(0);
        if entry & REFTABLE_RESERVED != 0 {
            return Err(ctx.corrupt(format!(
                "refcount table entry {index} ({entry:#x}) has reserved bits set"
            )));
        }
        Ok(entry)
    }

    /// The refcount of the cluster with index `cluster`.
    pub(crate) fn refcount(&mut self, ctx: &Ctx, cluster: u64) -> Result<u64, ImageError> {
        let rb_bits = ctx.rb_bits();
        let index = (cluster >> rb_bits) as usize;
        let block = self.reftable_entry(ctx, index)?;
        if block == 0 {
            return Ok(0);
        }
        self.load_refblock(ctx, block)?;
        let i = (cluster & ((1 << rb_bits) - 1)) as usize;
        Ok(self
            .refblocks
            .get(block)
            .map(|e| get_refcount(&e.data, ctx.refcount_order, i))
            .unwrap_or(0))
    }

    /// Adds `delta` to a cluster's refcount; returns the new value.
    pub(crate) fn change_refcount(
        &mut self,
        ctx: &Ctx,
        cluster: u64,
        delta: i64,
    ) -> Result<u64, ImageError> {
        let rb_bits = ctx.rb_bits();
        let index = (cluster >> rb_bits) as usize;
        if self.reftable_entry(ctx, index)? == 0 {
            if delta < 0 {
                return Err(ctx.corrupt(format!(
                    "freeing cluster {:#x}, which has no refcount block",
                    cluster << ctx.cluster_bits
                )));
            }
            self.ensure_refblock(ctx, index)?;
        }
        let block = self.reftable_entry(ctx, index)?;
        self.load_refblock(ctx, block)?;
        let i = (cluster & ((1 << rb_bits) - 1)) as usize;
        let max = ctx.max_refcount();
        let order = ctx.refcount_order;
        let entry = self
            .refblocks
            .get(block)
            .ok_or_else(|| ctx.corrupt("refcount block missing from the cache"))?;
        let old = get_refcount(&entry.data, order, i);
        let new = if delta >= 0 {
            old.checked_add(delta as u64).filter(|&n| n <= max)
        } else {
            old.checked_sub(delta.unsigned_abs())
        };
        let Some(new) = new else {
            return Err(if delta >= 0 {
                ctx.corrupt(format!(
                    "the refcount of cluster {:#x} would exceed {max} (refcount overflow)",
                    cluster << ctx.cluster_bits
                ))
            } else {
                ctx.corrupt(format!(
                    "the refcount of cluster {:#x} would drop below zero",
                    cluster << ctx.cluster_bits
                ))
            });
        };
        set_refcount(&mut entry.data, order, i, new);
        entry.dirty = true;
        if new == 0 && cluster < self.free_hint {
            self.free_hint = cluster;
        }
        Ok(new)
    }

    fn set_reftable(&mut self, ctx: &Ctx, index: usize, offset: u64) -> Result<(), ImageError> {
        self.refblock_offsets
            .remove(&(self.reftable[index] & OFFSET_MASK));
        self.reftable[index] = offset;
        self.refblock_offsets.insert(offset);
        if index < self.reftable_disk_entries {
            let at = self.header.refcount_table_offset + index as u64 * 8;
            ctx.write_all(&offset.to_be_bytes(), at, "a refcount table entry")?;
        }
        Ok(())
    }

    /// Creates the refcount block with index `index` (covering clusters
    /// `index << rb_bits ..`), placing it at the end of the file.
    fn ensure_refblock(&mut self, ctx: &Ctx, index: usize) -> Result<(), ImageError> {
        if index >= self.reftable.len() {
            self.grow_reftable(ctx, index + 1)?;
        }
        let rb_bits = ctx.rb_bits();
        let cs = ctx.cs();
        // Each pass either places the block or creates the block covering
        // the end of the file first; two passes at most in practice, a
        // bound against surprises.
        for _ in 0..64 {
            if self.reftable_entry(ctx, index)? != 0 {
                return Ok(());
            }
            let at = self.skip_used_end(ctx)?;
            let at_index = (at >> rb_bits) as usize;
            let mut block = vec![0u8; cs as usize].into_boxed_slice();
            if at_index == index {
                // The block describes itself.
                set_refcount(
                    &mut block,
                    ctx.refcount_order,
                    (at & ((1 << rb_bits) - 1)) as usize,
                    1,
                );
                ctx.write_all(&block, at << ctx.cluster_bits, "a new refcount block")?;
                self.grow_end(at + 1);
                ctx.sync()?;
                self.set_reftable(ctx, index, at << ctx.cluster_bits)?;
                self.cache_refblock(ctx, at << ctx.cluster_bits, block)?;
                return Ok(());
            }
            if self.reftable_entry(ctx, at_index)? == 0 {
                self.ensure_refblock(ctx, at_index)?;
                continue;
            }
            self.change_refcount(ctx, at, 1)?;
            ctx.write_all(&block, at << ctx.cluster_bits, "a new refcount block")?;
            self.grow_end(at + 1);
            // The block's own refcount (in another block) must be on disk
            // before the table links it.
            self.flush_refblocks(ctx)?;
            self.set_reftable(ctx, index, at << ctx.cluster_bits)?;
            self.cache_refblock(ctx, at << ctx.cluster_bits, block)?;
            return Ok(());
        }
        Err(ctx.corrupt("cannot place a new refcount block"))
    }

    fn cache_refblock(
        &mut self,
        ctx: &Ctx,
        offset: u64,
        block: Box<[u8]>,
    ) -> Result<(), ImageError> {
        if let Some(victim) = self.refblocks.victim() {
            // Refcount blocks may be written at any time (rule 3 keeps
            // decrements out of them until it is safe).
            if let Some(entry) = self.refblocks.get(victim) {
                if entry.dirty {
                    ctx.write_all(&entry.data, victim, "a refcount block")?;
                }
            }
            self.refblocks.remove(victim);
        }
        self.refblocks.insert(offset, block, false);
        Ok(())
    }

    /// The first cluster index at or after `end` with refcount 0.
    fn skip_used_end(&mut self, ctx: &Ctx) -> Result<u64, ImageError> {
        let mut at = self.end;
        while self.refcount(ctx, at)? != 0 {
            at += 1;
            self.check_past_end(ctx, at)?;
        }
        Ok(at)
    }

    fn check_past_end(&self, ctx: &Ctx, at: u64) -> Result<(), ImageError> {
        if at > self.end + MAX_USED_PAST_END {
            return Err(ctx.corrupt(format!(
                "refcounts claim clusters in use up to {:#x} and beyond, far past the end of the file; repair it with 'vireo img check -r all'",
                at << ctx.cluster_bits
            )));
        }
        Ok(())
    }

    /// What metadata, if any, a cluster holds (the structures QEMU also
    /// guards: header, L1 and refcount tables, refcount blocks, snapshot
    /// table and snapshot L1 tables, cached L2 tables).
    fn metadata_at(&self, ctx: &Ctx, cluster: u64) -> Option<&'static str> {
        let cs = ctx.cs();
        let start = cluster << ctx.cluster_bits;
        let within = |offset: u64, len: u64| {
            len > 0 && start < offset.saturating_add(len) && offset < start + cs
        };
        let h = &self.header;
        if cluster == 0 {
            Some("the header")
        } else if within(h.l1_table_offset, u64::from(h.l1_size) * 8) {
            Some("the L1 table")
        } else if within(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        ) {
            Some("the refcount table")
        } else if self.refblock_offsets.contains(&start) {
            Some("a refcount block")
        } else if within(h.snapshots_offset, self.snapshot_table_len) {
            Some("the snapshot table")
        } else if self.l2.contains(start) {
            Some("an L2 table")
        } else if self
            .snapshots_cache
            .iter()
            .any(|s| within(s.l1_offset, u64::from(s.l1_size) * 8))
        {
            Some("a snapshot's L1 table")
        } else {
            None
        }
    }

    pub(crate) fn grow_end(&mut self, end: u64) {
        self.end = self.end.max(end);
    }

    /// Replaces the refcount table by a larger one with at least
    /// `min_entries` entries.
    fn grow_reftable(&mut self, ctx: &Ctx, min_entries: usize) -> Result<(), ImageError> {
        let cs = ctx.cs();
        let per_cluster = (cs / 8) as usize;
        let rb_bits = ctx.rb_bits();
        let old_entries = self.reftable.len();
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        let start = self.skip_used_end(ctx)?;
        // Enough entries for what was asked, for the new table itself and
        // for the blocks describing it, with room to grow.
        let mut entries = min_entries
            .max(old_entries + old_entries / 2)
            .max(per_cluster);
        loop {
            let clusters = entries.div_ceil(per_cluster) as u64;
            let last = start + clusters + 2 * (clusters >> rb_bits) + 4;
            let need = ((last >> rb_bits) as usize) + 2;
            if need <= entries {
                break;
            }
            entries = need;
        }
        let entries = entries.next_multiple_of(per_cluster);
        let clusters = (entries / per_cluster) as u64;
        if clusters * cs > MAX_REFTABLE_BYTES {
            return Err(ImageError::Unsupported {
                path: ctx.path.clone(),
                what: format!(
                    "growing the refcount table past {MAX_REFTABLE_BYTES} bytes (the image is too large for its cluster size)"
                ),
            });
        }
        // Reserve the new table's clusters, then give them refcounts (which
        // may create blocks after them: `end` is already past the table).
        self.reftable.resize(entries, 0);
        self.grow_end(start + clusters);
        for cluster in start..start + clusters {
            self.change_refcount(ctx, cluster, 1)?;
        }
        self.flush_refblocks(ctx)?;
        let mut table = vec![0u8; (clusters * cs) as usize];
        for (i, &e) in self.reftable.iter().enumerate() {
            put_be64(&mut table, i, e);
        }
        let new_offset = start << ctx.cluster_bits;
        ctx.write_all(&table, new_offset, "the new refcount table")?;
        ctx.sync()?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&new_offset.to_be_bytes());
        fields[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        ctx.write_all(&fields, 48, "the header")?;
        ctx.sync()?;
        self.header.refcount_table_offset = new_offset;
        self.header.refcount_table_clusters = clusters as u32;
        self.reftable_disk_entries = entries;
        self.deferred.push((old_offset, old_clusters));
        Ok(())
    }

    // ---- allocation ---------------------------------------------------------

    /// Finds `n` consecutive free clusters from the hint on.
    fn find_free(&mut self, ctx: &Ctx, n: u64) -> Result<u64, ImageError> {
        let rb_bits = ctx.rb_bits();
        let mut start = self.free_hint.max(1);
        let mut at = start;
        while at < start + n {
            let index = (at >> rb_bits) as usize;
            if at >= self.end && self.reftable_entry(ctx, index)? == 0 {
                // Past the end and without a block: all free from here.
                return Ok(start);
            }
            if self.refcount(ctx, at)? != 0 {
                at += 1;
                start = at;
                self.check_past_end(ctx, at)?;
            } else {
                at += 1;
            }
        }
        Ok(start)
    }

    /// Allocates `n` consecutive clusters with refcount 1; returns the host
    /// offset of the first. The file is extended to cover them.
    pub(crate) fn alloc_clusters(&mut self, ctx: &Ctx, n: u64) -> Result<u64, ImageError> {
        let rb_bits = ctx.rb_bits();
        'retry: for _ in 0..64 {
            let start = self.find_free(ctx, n)?;
            let first_block = (start >> rb_bits) as usize;
            let last_block = ((start + n - 1) >> rb_bits) as usize;
            let mut created = false;
            for index in first_block..=last_block {
                if self.reftable_entry(ctx, index)? == 0 {
                    self.ensure_refblock(ctx, index)?;
                    created = true;
                }
            }
            if created {
                for c in start..start + n {
                    if self.refcount(ctx, c)? != 0 {
                        continue 'retry;
                    }
                }
            }
            for c in start..start + n {
                if let Some(what) = self.metadata_at(ctx, c) {
                    return Err(ctx.corrupt(format!(
                        "the refcounts say cluster {:#x} is free, but it holds {what}; repair it with 'vireo img check -r all'",
                        c << ctx.cluster_bits
                    )));
                }
            }
            for c in start..start + n {
                self.change_refcount(ctx, c, 1)?;
            }
            self.free_hint = start + n;
            self.grow_end(start + n);
            let end_bytes = (start + n) << ctx.cluster_bits;
            if end_bytes > self.file_len {
                ctx.file
                    .set_len(end_bytes)
                    .map_err(|e| ctx.io(format!("extending the file to {end_bytes} bytes"), e))?;
                self.file_len = end_bytes;
            }
            return Ok(start << ctx.cluster_bits);
        }
        Err(ctx.corrupt("cluster allocation does not converge"))
    }

    // ---- flushing -----------------------------------------------------------

    pub(crate) fn flush_refblocks(&mut self, ctx: &Ctx) -> Result<(), ImageError> {
        let dirty = self.refblocks.dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        for offset in dirty {
            if let Some(entry) = self.refblocks.get(offset) {
                ctx.write_all(&entry.data, offset, "a refcount block")?;
                entry.dirty = false;
            }
        }
        ctx.sync()
    }

    /// Writes every dirty table in the safe order, syncs, then applies the
    /// deferred frees (their refcount blocks are written at the next flush).
    pub(crate) fn flush(&mut self, ctx: &Ctx) -> Result<(), ImageError> {
        let deferred = std::mem::take(&mut self.deferred);
        self.flush_refblocks(ctx)?;
        for offset in self.l2.dirty() {
            if let Some(entry) = self.l2.get(offset) {
                ctx.write_all(&entry.data, offset, "an L2 table")?;
                entry.dirty = false;
            }
        }
        ctx.sync()?;
        self.free(ctx, &deferred)
    }

    /// Drops references now that no table on disk holds them.
    pub(crate) fn free(&mut self, ctx: &Ctx, list: &[(u64, u64)]) -> Result<(), ImageError> {
        for &(offset, count) in list {
            let first = offset >> ctx.cluster_bits;
            for cluster in first..first + count {
                let left = self.change_refcount(ctx, cluster, -1)?;
                if left == 0 {
                    if self.compressed_cursor >> ctx.cluster_bits == cluster {
                        self.compressed_cursor = 0;
                    }
                    if self.punch_freed {
                        // Give the space back to the host; harmless if the
                        // file system cannot.
                        let _ = sys::fallocate(
                            ctx.file.as_raw_fd(),
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            cluster << ctx.cluster_bits,
                            ctx.cs(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether anything is waiting to be written.
    pub(crate) fn dirty(&self) -> bool {
        !self.deferred.is_empty() || self.l2.has_dirty() || self.refblocks.has_dirty()
    }
}

/// Reads a table cluster; the part past the end of the file reads as zeros.
fn read_padded(
    ctx: &Ctx,
    data: &mut [u8],
    offset: u64,
    file_len: u64,
    what: &str,
) -> Result<(), ImageError> {
    let avail = file_len.saturating_sub(offset).min(data.len() as u64) as usize;
    data[avail..].fill(0);
    ctx.read_exact(&mut data[..avail], offset, what)
}

/// Reads a whole table of big-endian u64 entries.
pub(crate) fn read_table(
    ctx: &Ctx,
    offset: u64,
    entries: usize,
    what: &str,
) -> Result<Vec<u64>, ImageError> {
    let mut bytes = vec![0u8; entries * 8];
    ctx.read_exact(&mut bytes, offset, what)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect())
}

pub(crate) fn table_bytes(entries: &[u64], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.max(entries.len() * 8)];
    for (i, &e) in entries.iter().enumerate() {
        put_be64(&mut out, i, e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_entries_of_every_width() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut block = vec![0u8; 512];
            let n = 512 * 8 / bits as usize;
            for i in 0..n {
                set_refcount(&mut block, order, i, (i as u64) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_refcount(&block, order, i),
                    (i as u64) & max,
                    "order {order} i {i}"
                );
            }
        }
        // QEMU's layout for sub-byte widths: the lowest bits hold entry 0.
        let mut block = vec![0u8; 1];
        set_refcount(&mut block, 0, 0, 1);
        assert_eq!(block[0], 1);
        set_refcount(&mut block, 2, 1, 0xf);
        assert_eq!(block[0], 0xf1);
    }
}
