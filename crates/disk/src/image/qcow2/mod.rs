//! [`Qcow2`]: qcow2 images, version 2 (read and write, as QEMU allows) and
//! version 3.
//!
//! Structure: [`header`] parses and checks the header; [`meta`] holds the
//! L1 table, cached L2 tables and refcounts, allocates clusters and orders
//! metadata writes for crash safety; this module maps guest I/O onto them
//! (copy-on-write from backing files, compressed clusters, zero clusters);
//! [`snapshot`] and [`ops`] add internal snapshots, resize, creation and
//! checking.
//!
//! Concurrency: one mutex guards the metadata. Reads and in-place writes
//! (to clusters this image owns alone) take it only to look up the mapping
//! and do their data I/O without it; writes that allocate hold it to the
//! end, so two writes can never allocate the same guest cluster twice.

mod cache;
mod check;
mod compress;
mod header;
mod meta;
mod ops;
mod snapshot;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

pub use check::{CheckReport, RepairMode};
pub use header::CompressionType;
pub use ops::{preallocate_file, CreateOptions, Preallocation, Qcow2Info};
pub use snapshot::{Snapshot, SnapshotInfo};

use self::cache::TableCache;
use self::header::Header;
use self::meta::{Ctx, Mapping, Meta, COMPRESSED, COPIED, ZERO};
use super::{bufs, check_range, Allocation, BlockStatus, Image, ImageError, ImageFormat};
use crate::IoBuf;

/// The longest run one lookup returns, so that the lock is not held long.
const MAX_RUN: u64 = 16 << 20;
/// Metadata cache bound: enough L2 tables for the whole disk, at most this.
const MAX_L2_CACHE_BYTES: u64 = 32 << 20;

/// An open qcow2 image.
pub struct Qcow2 {
    ctx: Ctx,
    meta: Mutex<Meta>,
    /// Held (shared) by reads and in-place writes for their data I/O, which
    /// they do without the metadata lock; a flush takes it exclusively
    /// before freeing clusters, so no such I/O can land in a cluster freed
    /// and handed to another guest offset meanwhile.
    io_gate: RwLock<()>,
    size: u64,
    backing: Option<Arc<dyn Image>>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.ctx.path)
            .field("size", &self.size)
            .field("read_only", &self.ctx.read_only)
            .finish()
    }
}

impl Qcow2 {
    /// Opens a qcow2 file without its backing file (see
    /// [`set_backing`](Self::set_backing), or use [`open`](crate::image::open)
    /// which follows the chain).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?;
        Self::from_file(file, path, read_only)
    }

    /// Opens a qcow2 file for `check -r` even when QEMU marked it dirty or
    /// corrupt (which a plain writable open refuses).
    pub fn open_for_repair(path: &Path) -> Result<Self, ImageError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?;
        Self::from_file_flags(file, path, false, true)
    }

    pub(crate) fn from_file(file: File, path: &Path, read_only: bool) -> Result<Self, ImageError> {
        Self::from_file_flags(file, path, read_only, false)
    }

    fn from_file_flags(
        file: File,
        path: &Path,
        read_only: bool,
        repair: bool,
    ) -> Result<Self, ImageError> {
        use std::os::unix::fs::FileExt;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io(path, "stat", e))?
            .len();
        let mut first = vec![0u8; file_len.min(1 << header::MAX_CLUSTER_BITS) as usize];
        file.read_exact_at(&mut first, 0)
            .map_err(|e| ImageError::io(path, "reading the header", e))?;
        let header = Header::parse(path, &first, file_len)?;
        let ctx = Ctx {
            file,
            path: path.to_owned(),
            cluster_bits: header.cluster_bits,
            version: header.version,
            refcount_order: header.refcount_order,
            compression: header.compression,
            read_only,
        };
        if !read_only && !repair && header.incompatible & header::INCOMPAT_CORRUPT != 0 {
            return Err(ctx.corrupt(
                "QEMU marked it corrupt; it can be opened read-only, or repaired with 'vireo img check -r all'",
            ));
        }
        if !read_only && !repair && header.incompatible & header::INCOMPAT_DIRTY != 0 {
            return Err(ImageError::Unsupported {
                path: path.to_owned(),
                what: "writing an image whose dirty flag is set (lazy refcounts); repair it first with 'vireo img check -r all'".into(),
            });
        }
        let l1 = meta::read_table(
            &ctx,
            header.l1_table_offset,
            header.l1_size as usize,
            "the L1 table",
        )?;
        let reftable_entries = (u64::from(header.refcount_table_clusters) * ctx.cs() / 8) as usize;
        let reftable = meta::read_table(
            &ctx,
            header.refcount_table_offset,
            reftable_entries,
            "the refcount table",
        )?;
        let snapshots = snapshot::read_table(
            &ctx,
            header.snapshots_offset,
            header.nb_snapshots,
            file_len,
            header::MAX_L1_BYTES,
        )?;
        let cs = ctx.cs();
        let l2_tables = (header.l1_size as u64).clamp(16, (MAX_L2_CACHE_BYTES / cs).max(16));
        let size = header.size;
        let mut meta = Meta {
            header,
            l1,
            l2: TableCache::new(l2_tables as usize),
            reftable,
            reftable_disk_entries: reftable_entries,
            refblocks: TableCache::new((l2_tables as usize / 4).max(16)),
            free_hint: 0,
            end: file_len.div_ceil(cs),
            file_len,
            deferred: Vec::new(),
            punch_freed: true,
            compressed_cursor: 0,
            snapshots_cache: Vec::new(),
            snapshot_table_len: 0,
            refblock_offsets: Default::default(),
        };
        meta.refblock_offsets = meta
            .reftable
            .iter()
            .map(|&e| e & meta::OFFSET_MASK)
            .filter(|&e| e != 0)
            .collect();
        if !read_only && meta.header.version >= 3 && meta.header.autoclear != 0 {
            // Vireo keeps no bitmaps: say so, as the spec asks of writers
            // that do not understand the autoclear bits.
            meta.header.autoclear = 0;
            ctx.write_all(&0u64.to_be_bytes(), 88, "the header")?;
            ctx.sync()?;
        }
        Ok(Self {
            ctx,
            meta: Mutex::new(meta),
            io_gate: RwLock::new(()),
            size,
            backing: None,
        }
        .with_snapshots(snapshots))
    }

    fn with_snapshots(self, snapshots: Vec<Snapshot>) -> Self {
        {
            let mut meta = self.lock();
            meta.snapshot_table_len = snapshot::table_bytes(&snapshots).len() as u64;
            meta.snapshots_cache = snapshots;
        }
        self
    }

    fn io_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.io_gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        // The metadata stays consistent between statements that could
        // panic; keep going after a poisoned lock.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backing file name recorded in the header, as written there.
    pub fn backing_file_name(&self) -> Option<String> {
        self.lock().header.backing_file.clone()
    }

    /// The backing format recorded in the header.
    pub fn backing_format_name(&self) -> Option<String> {
        self.lock().header.backing_format.clone()
    }

    /// Sets (or removes) the backing image used for unallocated clusters.
    pub fn set_backing(&mut self, backing: Option<Arc<dyn Image>>) {
        self.backing = backing;
    }

    pub fn cluster_size(&self) -> u64 {
        self.ctx.cs()
    }

    fn cluster_offset(&self, pos: u64) -> u64 {
        pos & (self.ctx.cs() - 1)
    }

    /// How the guest range from `pos` (at most `max` bytes) is stored: the
    /// length of a run sharing the first cluster's kind (contiguous on the
    /// host for data), and that kind.
    fn run(&self, meta: &mut Meta, pos: u64, max: u64) -> Result<(u64, Mapping), ImageError> {
        let cb = self.ctx.cluster_bits;
        let cs = self.ctx.cs();
        let first = pos >> cb;
        let mapping = meta.mapping(&self.ctx, first)?;
        let limit = meta.file_len.max(meta.end << cb);
        match mapping {
            Mapping::Data { host, .. } if host >= limit => {
                return Err(self.ctx.corrupt(format!(
                    "the data of guest offset {:#x} is mapped to {host:#x}, beyond the end of the file",
                    first << cb
                )));
            }
            Mapping::Compressed { offset, .. } if offset >= limit => {
                return Err(self.ctx.corrupt(format!(
                    "the compressed data of guest offset {:#x} is at {offset:#x}, beyond the end of the file",
                    first << cb
                )));
            }
            _ => {}
        }
        let max = max.min(MAX_RUN.max(cs));
        let mut len = (cs - self.cluster_offset(pos)).min(max);
        let mut next = first + 1;
        while len < max {
            let want = match mapping {
                Mapping::Data { host, copied } => Mapping::Data {
                    host: host + ((next - first) << cb),
                    copied,
                },
                Mapping::Compressed { .. } => break,
                Mapping::Zero { .. } => Mapping::Zero {
                    host: None,
                    copied: false,
                },
                Mapping::Unallocated => Mapping::Unallocated,
            };
            let got = match meta.mapping(&self.ctx, next)? {
                Mapping::Zero { .. } => Mapping::Zero {
                    host: None,
                    copied: false,
                },
                other => other,
            };
            let same = match (want, got) {
                (Mapping::Zero { .. }, Mapping::Zero { .. }) => true,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            len = (len + cs).min(max);
            next += 1;
        }
        Ok((len, mapping))
    }

    /// Reads guest range `pos..` (the length of `out`) from the backing
    /// file, zeros past its end or without one.
    fn read_backing(&self, pos: u64, out: &[IoBuf]) -> Result<(), ImageError> {
        let len = bufs::total(out);
        let Some(backing) = &self.backing else {
            bufs::zero(out);
            return Ok(());
        };
        let avail = backing.size().saturating_sub(pos).min(len);
        if avail == 0 {
            bufs::zero(out);
            return Ok(());
        }
        let mut head = Vec::new();
        bufs::sub(out, 0, avail, &mut head);
        backing.read_vectored(pos, &head)?;
        if avail < len {
            let mut tail = Vec::new();
            bufs::sub(out, avail, len - avail, &mut tail);
            bufs::zero(&tail);
        }
        Ok(())
    }

    fn read_compressed(
        &self,
        pos: u64,
        offset: u64,
        len: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let cs = self.ctx.cs();
        let file_len = self.ctx.file_len()?;
        if offset >= file_len {
            return Err(self.ctx.corrupt(format!(
                "the compressed cluster of guest offset {:#x} lies beyond the end of the file",
                pos & !(cs - 1)
            )));
        }
        let avail = (file_len - offset).min(len) as usize;
        let mut packed = vec![0u8; avail];
        self.ctx
            .read_exact(&mut packed, offset, "a compressed cluster")?;
        compress::decompress(self.ctx.compression, &packed, out).map_err(|why| {
            self.ctx.corrupt(format!(
                "the compressed cluster of guest offset {:#x} cannot be decompressed: {why}",
                pos & !(cs - 1)
            ))
        })
    }

    /// Fills `out` (within one guest cluster starting at `pos`) with what
    /// that cluster holds according to `mapping`.
    fn read_mapped(&self, pos: u64, mapping: Mapping, out: &[IoBuf]) -> Result<(), ImageError> {
        match mapping {
            Mapping::Unallocated => self.read_backing(pos, out),
            Mapping::Zero { .. } => {
                bufs::zero(out);
                Ok(())
            }
            Mapping::Data { host, .. } => {
                let at = host + self.cluster_offset(pos);
                bufs::preadv_full(self.ctx.file.as_raw_fd(), out, at).map_err(|e| {
                    self.ctx.io(
                        format!("reading {} bytes at offset {at:#x}", bufs::total(out)),
                        e,
                    )
                })
            }
            Mapping::Compressed { offset, len } => {
                let mut cluster = vec![0u8; self.ctx.cs() as usize];
                self.read_compressed(pos, offset, len, &mut cluster)?;
                let start = self.cluster_offset(pos) as usize;
                bufs::copy_in(out, &cluster[start..]);
                Ok(())
            }
        }
    }

    /// Old contents of `range` of one guest cluster, for copy-on-write.
    fn old_bytes(
        &self,
        guest_cluster: u64,
        mapping: Mapping,
        start: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let pos = (guest_cluster << self.ctx.cluster_bits) + start;
        // SAFETY: `out` is borrowed for the whole call and only written.
        let buf = unsafe { IoBuf::from_slice(out) };
        self.read_mapped(pos, mapping, &[buf])
    }

    /// Whether a cluster's old contents are all zeros without reading.
    fn known_zero(&self, guest_cluster: u64, mapping: Mapping) -> bool {
        match mapping {
            Mapping::Zero { .. } => true,
            Mapping::Unallocated => self
                .backing
                .as_ref()
                .is_none_or(|b| b.size() <= guest_cluster << self.ctx.cluster_bits),
            _ => false,
        }
    }

    /// Writes `src` (guest range `pos..pos+n`, all clusters needing a new
    /// host cluster) under the lock: allocate, copy the old head and tail,
    /// write the data, point the L2 entries at it.
    fn write_allocating(
        &self,
        meta: &mut Meta,
        pos: u64,
        n: u64,
        src: &[IoBuf],
    ) -> Result<(), ImageError> {
        let ctx = &self.ctx;
        let cb = ctx.cluster_bits;
        let cs = ctx.cs();
        let first = pos >> cb;
        let last = (pos + n - 1) >> cb;
        let count = last - first + 1;
        let mut olds = Vec::with_capacity(count as usize);
        for gc in first..=last {
            olds.push(meta.mapping(ctx, gc)?);
        }
        let file_len_before = meta.file_len;
        let host = meta.alloc_clusters(ctx, count)?;
        let fresh = host >= file_len_before;
        let head = self.cluster_offset(pos);
        let tail_start = self.cluster_offset(pos + n);
        let cow =
            |gc: u64, mapping: Mapping, start: u64, len: u64, at: u64| -> Result<(), ImageError> {
                if fresh && self.known_zero(gc, mapping) {
                    return Ok(());
                }
                let mut buf = vec![0u8; len as usize];
                self.old_bytes(gc, mapping, start, &mut buf)?;
                if fresh && bufs::is_zero(&buf) {
                    return Ok(());
                }
                ctx.write_all(&buf, at, "copy-on-write data")
            };
        if head > 0 {
            cow(first, olds[0], 0, head, host)?;
        }
        if tail_start > 0 {
            let last_host = host + ((count - 1) << cb);
            cow(
                last,
                olds[count as usize - 1],
                tail_start,
                cs - tail_start,
                last_host + tail_start,
            )?;
        }
        let at = host + head;
        bufs::pwritev_all(ctx.file.as_raw_fd(), src, at)
            .map_err(|e| ctx.io(format!("writing {n} bytes at offset {at:#x}"), e))?;
        for (i, gc) in (first..=last).enumerate() {
            meta.set_l2_entry(ctx, gc, (host + ((i as u64) << cb)) | COPIED)?;
            meta.release_entry(ctx, olds[i]);
        }
        Ok(())
    }

    /// The guest clusters `offset..offset+len` covers whole, as the first
    /// and last index; the disk's last cluster counts as whole when the
    /// range reaches the end of the disk.
    fn whole_clusters(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let cs = self.ctx.cs();
        let end = offset + len;
        let first = offset.next_multiple_of(cs);
        let whole_end = if end == self.size {
            end.next_multiple_of(cs)
        } else {
            end & !(cs - 1)
        };
        (first < whole_end).then(|| {
            (
                first >> self.ctx.cluster_bits,
                (whole_end >> self.ctx.cluster_bits) - 1,
            )
        })
    }

    fn check_writable(&self, what: &'static str) -> Result<(), ImageError> {
        if self.ctx.read_only {
            return Err(ImageError::ReadOnly {
                path: self.ctx.path.clone(),
                what,
            });
        }
        Ok(())
    }

    /// Sets whole clusters `first..=last` to read as zeros (`zero`: v3 zero
    /// flag, else unallocated), keeping preallocated clusters when `keep`.
    fn zero_clusters(
        &self,
        first: u64,
        last: u64,
        zero: bool,
        keep: bool,
    ) -> Result<(), ImageError> {
        let ctx = &self.ctx;
        let mut meta = self.lock();
        for gc in first..=last {
            let old = meta.mapping(ctx, gc)?;
            let new = match old {
                Mapping::Data { host, copied: true } if keep && zero => host | COPIED | ZERO,
                Mapping::Zero {
                    host: Some(host),
                    copied: true,
                } if keep && zero => host | COPIED | ZERO,
                _ if zero => ZERO,
                _ => 0,
            };
            let unchanged = match old {
                Mapping::Unallocated => new == 0,
                Mapping::Zero { host: None, .. } => new == ZERO,
                _ => false,
            };
            if unchanged {
                continue;
            }
            meta.set_l2_entry(ctx, gc, new)?;
            if new & meta::OFFSET_MASK == 0 {
                meta.release_entry(ctx, old);
            }
        }
        Ok(())
    }

    /// Writes one whole guest cluster compressed (for `convert -c`); falls
    /// back to a plain write when compression does not help.
    pub fn write_compressed(&self, guest_offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.check_writable("compressed write")?;
        let ctx = &self.ctx;
        let cs = ctx.cs();
        if !guest_offset.is_multiple_of(cs) || data.len() as u64 > cs {
            return Err(ImageError::InvalidArgument {
                path: ctx.path.clone(),
                what: format!(
                    "compressed writes take one whole cluster at a cluster boundary (offset {guest_offset}, {} bytes)",
                    data.len()
                ),
            });
        }
        check_range(
            &ctx.path,
            "compressed write",
            guest_offset,
            data.len() as u64,
            self.size,
        )?;
        let padded;
        let cluster = if (data.len() as u64) < cs {
            let mut v = vec![0u8; cs as usize];
            v[..data.len()].copy_from_slice(data);
            padded = v;
            &padded[..]
        } else {
            data
        };
        let Some(packed) = compress::compress(ctx.compression, cluster) else {
            return self.write_at(data, guest_offset);
        };
        let gc = guest_offset >> ctx.cluster_bits;
        let mut meta = self.lock();
        let old = meta.mapping(ctx, gc)?;
        let len = packed.len() as u64;
        let cursor = meta.compressed_cursor;
        let room = if cursor == 0 {
            0
        } else {
            cs - (cursor & (cs - 1))
        };
        let shareable = cursor != 0
            && cursor & (cs - 1) != 0
            && room >= len
            && meta.refcount(ctx, cursor >> ctx.cluster_bits)? < ctx.max_refcount();
        let offset = if shareable {
            meta.change_refcount(ctx, cursor >> ctx.cluster_bits, 1)?;
            cursor
        } else {
            meta.alloc_clusters(ctx, len.div_ceil(cs))?
        };
        ctx.write_all(&packed, offset, "a compressed cluster")?;
        meta.compressed_cursor = offset + len;
        let x = 62 - (ctx.cluster_bits - 8);
        let sectors = ((offset & 511) + len).div_ceil(512);
        let entry = COMPRESSED | ((sectors - 1) << x) | offset;
        meta.set_l2_entry(ctx, gc, entry)?;
        meta.release_entry(ctx, old);
        Ok(())
    }

    /// Snapshots in the image.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.lock()
            .snapshots_cache
            .iter()
            .map(|s| s.info.clone())
            .collect()
    }
}

impl Image for Qcow2 {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }

    fn path(&self) -> &Path {
        &self.ctx.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.ctx.read_only
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.backing.as_ref()
    }

    fn read_vectored(&self, offset: u64, list: &[IoBuf]) -> Result<(), ImageError> {
        let len = bufs::total(list);
        check_range(&self.ctx.path, "read", offset, len, self.size)?;
        let mut done = 0;
        let mut part = Vec::new();
        while done < len {
            let pos = offset + done;
            let (run, mapping, _io) = {
                let mut meta = self.lock();
                let (run, mapping) = self.run(&mut meta, pos, len - done)?;
                (run, mapping, self.io_guard())
            };
            part.clear();
            bufs::sub(list, done, run, &mut part);
            self.read_mapped(pos, mapping, &part)?;
            done += run;
        }
        Ok(())
    }

    fn write_vectored(&self, offset: u64, list: &[IoBuf]) -> Result<(), ImageError> {
        self.check_writable("write")?;
        let len = bufs::total(list);
        check_range(&self.ctx.path, "write", offset, len, self.size)?;
        let mut done = 0;
        let mut part = Vec::new();
        while done < len {
            let pos = offset + done;
            let mut meta = self.lock();
            let (run, mapping) = self.run(&mut meta, pos, len - done)?;
            part.clear();
            bufs::sub(list, done, run, &mut part);
            match mapping {
                Mapping::Data { host, copied: true } => {
                    let _io = self.io_guard();
                    drop(meta);
                    let at = host + self.cluster_offset(pos);
                    bufs::pwritev_all(self.ctx.file.as_raw_fd(), &part, at).map_err(|e| {
                        self.ctx
                            .io(format!("writing {run} bytes at offset {at:#x}"), e)
                    })?;
                }
                _ => self.write_allocating(&mut meta, pos, run, &part)?,
            }
            done += run;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), ImageError> {
        self.check_writable("write-zeroes")?;
        check_range(&self.ctx.path, "write-zeroes", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let whole = self.whole_clusters(offset, len);
        let zeros = |from: u64, to: u64| -> Result<(), ImageError> {
            let mut pos = from;
            let buf = vec![0u8; (to - from).min(1 << 20) as usize];
            while pos < to {
                let n = (to - pos).min(buf.len() as u64) as usize;
                self.write_at(&buf[..n], pos)?;
                pos += n as u64;
            }
            Ok(())
        };
        let cb = self.ctx.cluster_bits;
        match whole {
            Some((first, last)) if self.ctx.version >= 3 => {
                zeros(offset, first << cb)?;
                self.zero_clusters(first, last, true, !unmap)?;
                let whole_end = ((last + 1) << cb).min(end);
                zeros(whole_end, end)
            }
            _ => zeros(offset, end),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_writable("discard")?;
        check_range(&self.ctx.path, "discard", offset, len, self.size)?;
        // Discard is advisory: partial clusters stay as they are.
        let Some((first, last)) = self.whole_clusters(offset, len) else {
            return Ok(());
        };
        let zero = self.ctx.version >= 3 && self.backing.is_some();
        self.zero_clusters(first, last, zero, false)
    }

    fn flush(&self) -> Result<(), ImageError> {
        if self.ctx.read_only {
            return Ok(());
        }
        let mut meta = self.lock();
        let _no_io = self.io_gate.write().unwrap_or_else(|p| p.into_inner());
        meta.flush(&self.ctx)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus, ImageError> {
        check_range(&self.ctx.path, "block status", offset, len, self.size)?;
        let mut meta = self.lock();
        let (run, mapping) = self.run(&mut meta, offset, len)?;
        let allocation = match mapping {
            Mapping::Data { host, .. } => Allocation::Data {
                offset: Some(host + self.cluster_offset(offset)),
                compressed: false,
            },
            Mapping::Compressed { .. } => Allocation::Data {
                offset: None,
                compressed: true,
            },
            Mapping::Zero { .. } => Allocation::Zero,
            Mapping::Unallocated => Allocation::Unallocated,
        };
        Ok(BlockStatus {
            len: run,
            allocation,
        })
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if self.ctx.read_only {
            return;
        }
        let ctx = &self.ctx;
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        // Twice: the second pass writes the refcounts the first one freed.
        for _ in 0..2 {
            if !meta.dirty() {
                break;
            }
            if let Err(err) = meta.flush(ctx) {
                log::error!("{}: flushing on close failed: {err}", ctx.path.display());
                return;
            }
        }
    }
}
