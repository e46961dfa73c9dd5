//! [`RawImage`]: a raw file as an [`Image`] (for `vireo img` and as a
//! backing file; virtio-blk serves raw files through the faster
//! [`RawDisk`](crate::RawDisk)).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{bufs, check_range, Allocation, BlockStatus, Image, ImageError, ImageFormat};
use crate::{sys, IoBuf};

/// A raw image file (or block device).
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    block_device: bool,
}

impl RawImage {
    /// Opens `path`.
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

    pub(crate) fn from_file(file: File, path: &Path, read_only: bool) -> Result<Self, ImageError> {
        let meta = file
            .metadata()
            .map_err(|e| ImageError::io(path, "stat", e))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            sys::block_device_size(std::os::fd::AsFd::as_fd(&file))
                .map_err(|e| ImageError::io(path, "BLKGETSIZE64", e))?
        } else {
            meta.len()
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            read_only,
            block_device,
        })
    }

    /// Creates (or truncates) a raw image of `size` bytes; `full` writes
    /// zeros, `falloc` reserves the space, otherwise it is sparse.
    pub fn create(
        path: &Path,
        size: u64,
        prealloc: super::Preallocation,
    ) -> Result<(), ImageError> {
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
        file.set_len(size)
            .map_err(|e| ImageError::io(path, format!("setting the size to {size} bytes"), e))?;
        super::qcow2::preallocate_file(&file, path, 0, size, prealloc)
    }

    fn check_writable(&self, what: &'static str) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
                what,
            });
        }
        Ok(())
    }

    /// Changes the size (files only).
    pub fn resize(&mut self, size: u64) -> Result<(), ImageError> {
        self.check_writable("resize")?;
        if self.block_device {
            return Err(ImageError::Unsupported {
                path: self.path.clone(),
                what: "resizing a block device".into(),
            });
        }
        self.file
            .set_len(size)
            .map_err(|e| ImageError::io(&self.path, format!("resizing to {size} bytes"), e))?;
        self.size = size;
        Ok(())
    }
}

impl Image for RawImage {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }

    fn read_vectored(&self, offset: u64, list: &[IoBuf]) -> Result<(), ImageError> {
        let len = bufs::total(list);
        check_range(&self.path, "read", offset, len, self.size)?;
        bufs::preadv_full(self.file.as_raw_fd(), list, offset).map_err(|e| {
            ImageError::io(
                &self.path,
                format!("reading {len} bytes at offset {offset}"),
                e,
            )
        })
    }

    fn write_vectored(&self, offset: u64, list: &[IoBuf]) -> Result<(), ImageError> {
        self.check_writable("write")?;
        let len = bufs::total(list);
        check_range(&self.path, "write", offset, len, self.size)?;
        bufs::pwritev_all(self.file.as_raw_fd(), list, offset).map_err(|e| {
            ImageError::io(
                &self.path,
                format!("writing {len} bytes at offset {offset}"),
                e,
            )
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), ImageError> {
        self.check_writable("write-zeroes")?;
        check_range(&self.path, "write-zeroes", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let done = if self.block_device {
            sys::block_device_zeroout(fd, offset, len).is_ok()
        } else if unmap {
            sys::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .is_ok()
        } else {
            sys::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, offset, len).is_ok()
        };
        if done {
            return Ok(());
        }
        write_zero_bytes(&self.file, &self.path, offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_writable("discard")?;
        check_range(&self.path, "discard", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let result = if self.block_device {
            sys::block_device_discard(fd, offset, len)
        } else {
            sys::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        result.map_err(|e| {
            ImageError::io(
                &self.path,
                format!("discarding {len} bytes at offset {offset}"),
                e,
            )
        })
    }

    fn flush(&self) -> Result<(), ImageError> {
        if self.read_only {
            return Ok(());
        }
        sys::fdatasync(self.file.as_raw_fd())
            .map_err(|e| ImageError::io(&self.path, "fdatasync", e))
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus, ImageError> {
        check_range(&self.path, "block status", offset, len, self.size)?;
        let data = Allocation::Data {
            offset: Some(offset),
            compressed: false,
        };
        if self.block_device {
            return Ok(BlockStatus {
                len,
                allocation: data,
            });
        }
        // SEEK_DATA / SEEK_HOLE: holes read as zeros.
        let fd = self.file.as_raw_fd();
        let end = offset + len;
        let seek = |whence| {
            // SAFETY: lseek on our own descriptor; no memory involved.
            let ret = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
            (ret >= 0).then_some(ret as u64)
        };
        match seek(libc::SEEK_DATA) {
            // No data at or after offset: all hole.
            None => Ok(BlockStatus {
                len,
                allocation: Allocation::Zero,
            }),
            Some(data_at) if data_at > offset => Ok(BlockStatus {
                len: (data_at - offset).min(len),
                allocation: Allocation::Zero,
            }),
            Some(_) => {
                let hole_at = seek(libc::SEEK_HOLE).unwrap_or(end);
                Ok(BlockStatus {
                    len: hole_at.clamp(offset + 1, end) - offset,
                    allocation: data,
                })
            }
        }
    }
}

/// Writes `len` zero bytes at `offset` (the fallback of write-zeroes).
pub(crate) fn write_zero_bytes(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<(), ImageError> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = (end - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)
            .map_err(|e| ImageError::io(path, format!("writing zeros at offset {pos}"), e))?;
        pos += n as u64;
    }
    Ok(())
}
