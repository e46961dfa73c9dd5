//! Disk image formats: the synchronous [`Image`] interface, raw files
//! ([`RawImage`]) and qcow2 ([`Qcow2`]), backing chains, and [`open`].
//!
//! An [`Image`] is used from several threads at once (the I/O workers of
//! every virtio-blk queue, or `vireo img`'s copy loop). Its methods block on
//! the host file; [`ImageDisk`](crate::ImageDisk) runs them on worker
//! threads so that virtio-blk's event loop never waits.
//!
//! Everything read from an image file is untrusted: headers, tables and
//! offsets are checked before use, memory for tables is bounded, and a bad
//! image gives an [`ImageError`] that names the file and the problem.

pub(crate) mod bufs;
mod error;
mod open;
pub mod qcow2;
pub(crate) mod raw;
pub mod tools;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use error::ImageError;
pub use open::{open, probe, resolve_backing, BackingMode, ImageOptions};
pub use qcow2::{
    CompressionType, CreateOptions, Preallocation, Qcow2, Qcow2Info, Snapshot, SnapshotInfo,
};
pub use raw::RawImage;

use crate::IoBuf;

/// The formats Vireo reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The name qemu-img uses ("raw", "qcow2").
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            other => Err(format!(
                "unknown image format '{other}' (known: raw, qcow2)"
            )),
        }
    }
}

/// Where the data of a range of the virtual disk comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Stored in this image; `offset` is the host file offset of the range's
    /// first byte (`None` for compressed data, which has no plain offset).
    Data {
        offset: Option<u64>,
        compressed: bool,
    },
    /// Reads as zeros, decided by this image (a zero cluster, a hole of a
    /// raw file), whatever the backing file holds.
    Zero,
    /// Not stored here: reads come from the backing file, or are zeros when
    /// there is none (or it is shorter).
    Unallocated,
}

/// One answer of [`Image::block_status`]: the first `len` bytes of the asked
/// range share `allocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatus {
    pub len: u64,
    pub allocation: Allocation,
}

/// A disk image: a virtual disk of [`size`](Self::size) bytes stored in a
/// host file, maybe on top of a backing image.
pub trait Image: Send + Sync + fmt::Debug {
    /// The format of this layer.
    fn format(&self) -> ImageFormat;

    /// The file this layer lives in.
    fn path(&self) -> &Path;

    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// Whether writes are refused.
    fn read_only(&self) -> bool;

    /// The image below this one, if any.
    fn backing(&self) -> Option<&Arc<dyn Image>>;

    /// Fills `bufs`, in order, from the virtual disk at `offset`.
    fn read_vectored(&self, offset: u64, bufs: &[IoBuf]) -> Result<(), ImageError>;

    /// Writes `bufs`, in order, to the virtual disk at `offset`.
    fn write_vectored(&self, offset: u64, bufs: &[IoBuf]) -> Result<(), ImageError>;

    /// Makes the range read as zeros; with `unmap`, space may be freed.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), ImageError>;

    /// The guest no longer needs the range. Afterwards it reads as zeros
    /// (qcow2 v3, raw files) or as the backing file's data (qcow2 v2).
    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError>;

    /// Makes every completed write durable, metadata included.
    fn flush(&self) -> Result<(), ImageError>;

    /// How the range starting at `offset` is stored in this layer (not
    /// looking at backing files); `len` > 0 and within the disk.
    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus, ImageError>;

    /// Host bytes the file occupies (allocated blocks).
    fn allocated_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.path())
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }

    /// Reads into a byte slice.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        // SAFETY: the slice stays borrowed (alive, untouched) for the call,
        // and read_vectored keeps no reference to it afterwards.
        let iov = unsafe { IoBuf::from_slice(buf) };
        self.read_vectored(offset, &[iov])
    }

    /// Writes a byte slice.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        // SAFETY: as above; write_vectored only reads through the pointer.
        let iov = unsafe { IoBuf::from_raw_parts(buf.as_ptr().cast_mut(), buf.len()) };
        self.write_vectored(offset, &[iov])
    }
}

/// The chain from `image` down, top first.
pub fn chain(image: &Arc<dyn Image>) -> Vec<Arc<dyn Image>> {
    let mut out = vec![image.clone()];
    while let Some(next) = out.last().and_then(|i| i.backing().cloned()) {
        out.push(next);
    }
    out
}

/// Checks that `offset..offset+len` lies within an image of `size` bytes.
pub(crate) fn check_range(
    path: &Path,
    what: &'static str,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<(), ImageError> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(ImageError::OutOfRange {
            path: path.to_owned(),
            what,
            offset,
            len,
            size,
        });
    }
    Ok(())
}
