//! Whole-image operations: creation, resizing, and what `info` reports.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::header::{self, CompressionType, Header};
use super::meta::{self, Mapping, COPIED};
use super::Qcow2;
use crate::image::{Image, ImageError};
use crate::sys;

/// How much of a new image's space is set up in advance (qemu-img's
/// `preallocation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Preallocation {
    /// Nothing: clusters are allocated on first write.
    #[default]
    Off,
    /// All metadata (L2 tables, refcounts) and data clusters mapped, the
    /// file sparse.
    Metadata,
    /// As metadata, with the data space reserved (fallocate).
    Falloc,
    /// As metadata, with zeros written over the data space.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "metadata" => Ok(Self::Metadata),
            "falloc" => Ok(Self::Falloc),
            "full" => Ok(Self::Full),
            other => Err(format!(
                "unknown preallocation mode '{other}' (known: off, metadata, falloc, full)"
            )),
        }
    }
}

impl Preallocation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Metadata => "metadata",
            Self::Falloc => "falloc",
            Self::Full => "full",
        }
    }
}

/// What a new qcow2 image looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// 512 B to 2 MiB, a power of two; 64 KiB by default.
    pub cluster_size: u64,
    /// 2 ("0.10") or 3 ("1.1", the default).
    pub version: u32,
    /// 1 to 64, a power of two; 16 by default.
    pub refcount_bits: u32,
    pub compression: CompressionType,
    /// The backing file name as it is recorded (relative names are relative
    /// to the new image's directory), and its format.
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub preallocation: Preallocation,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            compression: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            preallocation: Preallocation::Off,
        }
    }
}

/// Facts about a qcow2 image for `vireo img info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Info {
    pub version: u32,
    pub cluster_size: u64,
    pub refcount_bits: u32,
    pub compression: CompressionType,
    pub lazy_refcounts: bool,
    pub corrupt: bool,
    pub dirty: bool,
    pub extended_l2: bool,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

fn invalid_arg(path: &Path, what: String) -> ImageError {
    ImageError::InvalidArgument {
        path: path.to_owned(),
        what,
    }
}

/// Reserves or zero-fills `offset..offset+len` of a file as preallocation
/// mode `mode` asks (nothing for off and metadata).
pub fn preallocate_file(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
    mode: Preallocation,
) -> Result<(), ImageError> {
    match mode {
        Preallocation::Off | Preallocation::Metadata => Ok(()),
        Preallocation::Falloc => sys::fallocate(file.as_raw_fd(), 0, offset, len)
            .map_err(|e| ImageError::io(path, format!("reserving {len} bytes (fallocate)"), e)),
        Preallocation::Full => crate::image::raw::write_zero_bytes(file, path, offset, len),
    }
}

impl Qcow2 {
    /// Creates a qcow2 image at `path` (replacing any file there).
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<(), ImageError> {
        let cs = opts.cluster_size;
        if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
            return Err(invalid_arg(
                path,
                format!("cluster size {cs} must be a power of two between 512 and 2M"),
            ));
        }
        let cluster_bits = cs.trailing_zeros();
        if !(2..=3).contains(&opts.version) {
            return Err(invalid_arg(
                path,
                format!("qcow2 version {} (known: 2, 3)", opts.version),
            ));
        }
        let rb = opts.refcount_bits;
        if !rb.is_power_of_two() || rb > 64 {
            return Err(invalid_arg(
                path,
                format!("refcount width {rb} must be a power of two up to 64"),
            ));
        }
        if opts.version == 2 && (rb != 16 || opts.compression != CompressionType::Zlib) {
            return Err(invalid_arg(
                path,
                "version 2 images (compat=0.10) have 16-bit refcounts and zlib compression only"
                    .into(),
            ));
        }
        if opts.backing_file.is_none() && opts.backing_format.is_some() {
            return Err(invalid_arg(
                path,
                "a backing format without a backing file".into(),
            ));
        }
        let l1_entries = header::l1_entries_for(opts.size, cluster_bits);
        if l1_entries * 8 > header::MAX_L1_BYTES || opts.size > 1 << 62 {
            return Err(invalid_arg(
                path,
                format!(
                    "a virtual size of {} bytes is too large for {cs}-byte clusters",
                    opts.size
                ),
            ));
        }
        let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
        // Layout: header, refcount table, one refcount block, L1 table (what
        // QEMU writes too). The first block covers everything so far.
        let refcount_order = rb.trailing_zeros();
        let rb_entries = (cs * 8) >> refcount_order;
        let used = 3 + l1_clusters;
        if used > rb_entries {
            return Err(invalid_arg(
                path,
                format!("{rb}-bit refcounts with {cs}-byte clusters cannot describe the initial metadata"),
            ));
        }
        let header = Header {
            version: opts.version,
            cluster_bits,
            size: opts.size,
            l1_size: l1_entries as u32,
            l1_table_offset: 3 * cs,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: if opts.compression == CompressionType::Zstd {
                header::INCOMPAT_COMPRESSION
            } else {
                0
            },
            compatible: 0,
            autoclear: 0,
            refcount_order,
            compression: opts.compression,
            backing_file: opts.backing_file.clone(),
            backing_format: opts.backing_format.clone(),
            feature_names: feature_table(opts.version),
            other_extensions: Vec::new(),
            extra_header: Vec::new(),
        };
        let first = header.serialize().map_err(|what| invalid_arg(path, what))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?;
        let write = |buf: &[u8], at: u64| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(buf, at)
                .map_err(|e| ImageError::io(path, format!("writing at offset {at:#x}"), e))
        };
        write(&first, 0)?;
        let mut reftable = vec![0u8; cs as usize];
        meta::put_be64(&mut reftable, 0, 2 * cs);
        write(&reftable, cs)?;
        let mut block = vec![0u8; cs as usize];
        for i in 0..used as usize {
            meta::set_refcount(&mut block, refcount_order, i, 1);
        }
        write(&block, 2 * cs)?;
        // The L1 table: zeros, the file extended over it.
        file.set_len(3 * cs + l1_entries.max(1) * 8)
            .map_err(|e| ImageError::io(path, "setting the file size", e))?;
        if opts.preallocation != Preallocation::Off {
            drop(file);
            let image = Qcow2::open(path, false)?;
            image.preallocate(opts.preallocation)?;
            image.flush()?;
        } else {
            sys::fdatasync(file.as_raw_fd()).map_err(|e| ImageError::io(path, "fdatasync", e))?;
        }
        Ok(())
    }

    /// Maps every guest cluster to a data cluster of its own (and reserves
    /// or zero-fills the data space for falloc and full).
    pub(crate) fn preallocate(&self, mode: Preallocation) -> Result<(), ImageError> {
        let ctx = &self.ctx;
        let cb = ctx.cluster_bits;
        let clusters = self.size.div_ceil(ctx.cs());
        let per_table = 1u64 << ctx.l2_bits();
        let mut gc = 0;
        while gc < clusters {
            let n = (per_table - (gc & (per_table - 1))).min(clusters - gc);
            let mut meta = self.lock();
            let mut todo = Vec::new();
            for c in gc..gc + n {
                if meta.mapping(ctx, c)? == Mapping::Unallocated {
                    todo.push(c);
                }
            }
            if !todo.is_empty() {
                let host = meta.alloc_clusters(ctx, todo.len() as u64)?;
                for (i, &c) in todo.iter().enumerate() {
                    meta.set_l2_entry(ctx, c, (host + ((i as u64) << cb)) | COPIED)?;
                }
                preallocate_file(&ctx.file, &ctx.path, host, (todo.len() as u64) << cb, mode)?;
            }
            drop(meta);
            gc += n;
        }
        Ok(())
    }

    /// Header facts for `info`.
    pub fn qcow2_info(&self) -> Qcow2Info {
        let meta = self.lock();
        let h = &meta.header;
        Qcow2Info {
            version: h.version,
            cluster_size: h.cluster_size(),
            refcount_bits: 1 << h.refcount_order,
            compression: h.compression,
            lazy_refcounts: h.compatible & header::COMPAT_LAZY_REFCOUNTS != 0,
            corrupt: h.incompatible & header::INCOMPAT_CORRUPT != 0,
            dirty: h.incompatible & header::INCOMPAT_DIRTY != 0,
            extended_l2: h.incompatible & header::INCOMPAT_EXTL2 != 0,
            backing_file: h.backing_file.clone(),
            backing_format: h.backing_format.clone(),
        }
    }

    /// Changes the virtual size. Shrinking needs `shrink` and drops the
    /// data past the new end.
    pub fn resize(&mut self, new_size: u64, shrink: bool) -> Result<(), ImageError> {
        self.check_writable("resize")?;
        let ctx = &self.ctx;
        let path = ctx.path.clone();
        if new_size < self.size && !shrink {
            return Err(invalid_arg(
                &path,
                format!(
                    "shrinking from {} to {new_size} bytes loses data; pass --shrink to do it anyway",
                    self.size
                ),
            ));
        }
        if new_size < self.size && !self.lock().snapshots_cache.is_empty() {
            // Growing is fine: snapshots keep their own tables and size.
            return Err(ImageError::Unsupported {
                path,
                what: "shrinking an image with internal snapshots".into(),
            });
        }
        let cs = ctx.cs();
        if new_size < self.size {
            // Free every cluster past the new end (the partial last cluster
            // keeps its data, which reads past the end never reach).
            let first = new_size.div_ceil(cs);
            let last = self.size.div_ceil(cs);
            if first < last {
                self.zero_clusters(first, last - 1, false, false)?;
            }
        }
        let needed = header::l1_entries_for(new_size, ctx.cluster_bits);
        if needed * 8 > header::MAX_L1_BYTES || new_size > 1 << 62 {
            return Err(invalid_arg(
                &path,
                format!("{new_size} bytes is too large for this cluster size"),
            ));
        }
        let mut meta = self.lock();
        meta.flush(ctx)?;
        if needed > u64::from(meta.header.l1_size) {
            // A larger L1 table elsewhere; the old one is freed afterwards.
            let bytes = needed * 8;
            let clusters = bytes.div_ceil(cs);
            let new_offset = meta.alloc_clusters(ctx, clusters)?;
            let mut l1 = meta.l1.clone();
            l1.resize(needed as usize, 0);
            meta.flush_refblocks(ctx)?;
            ctx.write_all(
                &meta::table_bytes(&l1, (clusters * cs) as usize),
                new_offset,
                "the new L1 table",
            )?;
            ctx.sync()?;
            let mut fields = [0u8; 12];
            fields[..4].copy_from_slice(&(needed as u32).to_be_bytes());
            fields[4..].copy_from_slice(&new_offset.to_be_bytes());
            ctx.write_all(&fields, 36, "the header")?;
            ctx.sync()?;
            let old = (
                meta.header.l1_table_offset,
                (u64::from(meta.header.l1_size) * 8).div_ceil(cs),
            );
            meta.header.l1_table_offset = new_offset;
            meta.header.l1_size = needed as u32;
            meta.l1 = l1;
            if old.0 != 0 && old.1 > 0 {
                meta.deferred.push(old);
            }
        }
        ctx.write_all(&new_size.to_be_bytes(), 24, "the header")?;
        ctx.sync()?;
        meta.header.size = new_size;
        meta.flush(ctx)?;
        meta.flush(ctx)?;
        drop(meta);
        self.size = new_size;
        Ok(())
    }
}

/// The feature name table QEMU writes, so tools can name the bits.
fn feature_table(version: u32) -> Vec<(u8, u8, String)> {
    if version < 3 {
        return Vec::new();
    }
    [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ]
    .into_iter()
    .map(|(k, b, n)| (k, b, n.to_owned()))
    .collect()
}

impl Qcow2 {
    /// Records a new backing file name and format in the header (`None`:
    /// no backing file). Only the header changes: the caller decides
    /// whether the data must be adjusted first (safe rebase) or not.
    pub fn set_backing_file(
        &mut self,
        name: Option<&str>,
        format: Option<&str>,
    ) -> Result<(), ImageError> {
        self.check_writable("changing the backing file")?;
        let ctx = &self.ctx;
        let mut meta = self.lock();
        meta.flush(ctx)?;
        let mut header = meta.header.clone();
        header.backing_file = name.map(str::to_owned);
        header.backing_format = name.and(format).map(str::to_owned);
        let bytes = header
            .serialize()
            .map_err(|what| invalid_arg(&ctx.path, what))?;
        ctx.write_all(&bytes, 0, "the header")?;
        ctx.sync()?;
        meta.header = header;
        drop(meta);
        if name.is_none() {
            self.backing = None;
        }
        Ok(())
    }

    /// Unmaps every cluster: afterwards the image reads as its backing file
    /// (what `commit` leaves behind).
    pub fn make_empty(&self) -> Result<(), ImageError> {
        self.check_writable("emptying")?;
        let clusters = self.size.div_ceil(self.ctx.cs());
        if clusters > 0 {
            self.zero_clusters(0, clusters - 1, false, false)?;
        }
        self.flush()
    }
}
