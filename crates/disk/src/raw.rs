//! [`RawDisk`]: a raw image file or a host block device, the guest's bytes
//! stored as they are.

use std::fs::OpenOptions;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::engine::{self, Engine, JobKind, JobSpec};
use crate::file::FileCtx;
use crate::{
    sys, Completion, Disk, DiskInfo, DiskQueue, DiskSerial, EngineKind, IoBuf, OpenError,
    QueueConfig, QueueError, Request, RequestError, MAX_BUFFERS,
};

/// How to open a raw disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawOptions {
    /// Open read-only: the guest sees a read-only disk.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT, "cache=none"). Offsets and
    /// lengths must then be multiples of the disk's logical block size;
    /// buffers the kernel would refuse are copied through a bounce buffer.
    pub direct: bool,
    /// The serial for GET_ID; derived from the file's identity when absent.
    pub serial: Option<String>,
}

/// A raw disk image file or block device.
#[derive(Debug)]
pub struct RawDisk {
    file: Arc<FileCtx>,
    info: DiskInfo,
    serial: DiskSerial,
}

impl RawDisk {
    /// Opens `path`, a regular file or a block device.
    pub fn open(path: impl AsRef<Path>, options: &RawOptions) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let file = open_file(path, options)?;
        let fd = std::os::fd::AsFd::as_fd(&file);
        let meta = file.metadata().map_err(|source| OpenError::Stat {
            path: path.to_owned(),
            source,
        })?;
        let file_type = meta.file_type();
        let block_device = file_type.is_block_device();
        if !block_device && !file_type.is_file() {
            return Err(OpenError::NotADisk {
                path: path.to_owned(),
                kind: kind_name(&meta),
            });
        }
        let ioctl_error = |ioctl: &'static str| {
            move |source| OpenError::BlockDevice {
                path: path.to_owned(),
                ioctl,
                source,
            }
        };

        let (size, logical, physical) = if block_device {
            let size = sys::block_device_size(fd).map_err(ioctl_error("BLKGETSIZE64"))?;
            let logical = sys::block_device_logical_size(fd).map_err(ioctl_error("BLKSSZGET"))?;
            let physical =
                sys::block_device_physical_size(fd).map_err(ioctl_error("BLKPBSZGET"))?;
            (size, logical, physical.max(logical))
        } else {
            // Files: 512-byte sectors (or direct I/O's alignment, below),
            // the file system block as the physical block.
            let blksize = u32::try_from(meta.blksize()).unwrap_or(0);
            let physical = if blksize.is_power_of_two() && (512..=65536).contains(&blksize) {
                blksize
            } else {
                4096
            };
            (meta.size(), 512, physical)
        };

        let (mem_align, offset_align) = if options.direct {
            direct_alignment(fd, block_device, logical, meta.blksize())
        } else {
            (1, 1)
        };
        let logical = logical.max(offset_align);
        check_block_size(path, "logical block size", logical)?;
        let physical = physical.max(logical);
        check_block_size(path, "physical block size", physical)?;

        let serial = match &options.serial {
            Some(serial) => DiskSerial::new(serial).map_err(|source| OpenError::Serial {
                path: path.to_owned(),
                source,
            })?,
            // A block device node's inode lives in devtmpfs and changes at
            // every boot; its device number is the stable part.
            None if block_device => DiskSerial::from_identity(&[meta.rdev()]),
            None => DiskSerial::from_identity(&[meta.dev(), meta.ino()]),
        };

        let writable = !options.read_only;
        let info = DiskInfo {
            size,
            logical_block_size: logical,
            physical_block_size: physical,
            read_only: options.read_only,
            direct: options.direct,
            discard: writable,
            write_zeroes: writable,
            max_buffers: MAX_BUFFERS,
        };
        let file = FileCtx {
            file,
            path: Arc::from(path),
            block_device,
            read_only: options.read_only,
            direct: options.direct,
            size,
            mem_align,
            offset_align,
            zero_range_unsupported: AtomicBool::new(false),
        };
        log::debug!(
            "{}: {} bytes, blocks {logical}/{physical}{}{}",
            path.display(),
            size,
            if options.read_only { ", read-only" } else { "" },
            if options.direct { ", direct I/O" } else { "" },
        );
        Ok(Self {
            file: Arc::new(file),
            info,
            serial,
        })
    }

    /// The path the disk was opened with.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Opens a queue, with its concrete type.
    pub fn open_raw_queue(&self, config: &QueueConfig) -> Result<RawQueue, QueueError> {
        Ok(RawQueue {
            engine: Engine::open(&self.file, config)?,
            file: self.file.clone(),
        })
    }
}

impl Disk for RawDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn serial(&self) -> DiskSerial {
        self.serial
    }

    fn open_queue(&self, config: &QueueConfig) -> Result<Box<dyn DiskQueue>, QueueError> {
        Ok(Box::new(self.open_raw_queue(config)?))
    }
}

fn open_file(path: &Path, options: &RawOptions) -> Result<std::fs::File, OpenError> {
    let open = |direct: bool| {
        OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(path)
    };
    open(options.direct).map_err(|source| {
        // O_DIRECT refused by the file system (tmpfs, some FUSE): say so,
        // rather than a bare EINVAL.
        if options.direct && source.raw_os_error() == Some(libc::EINVAL) && open(false).is_ok() {
            OpenError::DirectUnsupported {
                path: path.to_owned(),
                source,
            }
        } else {
            OpenError::Open {
                path: path.to_owned(),
                read_only: options.read_only,
                direct: options.direct,
                source,
            }
        }
    })
}

/// Direct I/O's `(memory alignment, offset and length alignment)`: from
/// statx where the kernel reports it, else the block device's logical block
/// size, else the file system block size, which is always enough.
fn direct_alignment(
    fd: BorrowedFd<'_>,
    block_device: bool,
    logical: u32,
    blksize: u64,
) -> (u32, u32) {
    if let Some((mem, offset)) = sys::dio_alignment(fd) {
        return (mem, offset.max(if block_device { logical } else { 1 }));
    }
    if block_device {
        (logical, logical)
    } else {
        let blksize = u32::try_from(blksize)
            .ok()
            .filter(|b| b.is_power_of_two() && (512..=65536).contains(b))
            .unwrap_or(4096);
        (blksize, blksize)
    }
}

fn check_block_size(path: &Path, what: &'static str, value: u32) -> Result<(), OpenError> {
    if value.is_power_of_two() && (512..=65536).contains(&value) {
        Ok(())
    } else {
        Err(OpenError::BlockSize {
            path: path.to_owned(),
            what,
            value: value.into(),
        })
    }
}

fn kind_name(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// A request queue of a [`RawDisk`].
pub struct RawQueue {
    file: Arc<FileCtx>,
    engine: Engine,
}

impl RawQueue {
    /// Checks a request against the disk: range, read-only, buffer count,
    /// and direct I/O alignment.
    fn check<'a>(
        &self,
        id: u64,
        request: &Request<'a>,
    ) -> Result<(JobSpec, &'a [IoBuf]), RequestError> {
        let file = &*self.file;
        let (mut spec, bufs) =
            engine::check_request(&file.path, file.read_only, file.size, id, request)?;
        let (kind, offset, len) = (spec.kind, spec.offset, spec.len);
        let extent = spec.extent();
        if file.direct
            && matches!(
                request,
                Request::Read { .. } | Request::Write { .. } | Request::WriteZeroes { .. }
            )
        {
            let align = u64::from(file.offset_align);
            if !offset.is_multiple_of(align) || !len.is_multiple_of(align) {
                return Err(RequestError::Misaligned {
                    path: file.path.clone(),
                    extent,
                    align: file.offset_align,
                });
            }
            let mem_align = file.mem_align as usize;
            let offset_align = file.offset_align as usize;
            let bounce = bufs.iter().any(|b| {
                !(b.as_ptr() as usize).is_multiple_of(mem_align)
                    || !b.len().is_multiple_of(offset_align)
            });
            spec.kind = match kind {
                JobKind::Read { .. } => JobKind::Read { bounce },
                JobKind::Write { .. } => JobKind::Write { bounce },
                other => other,
            };
        }
        Ok((spec, bufs))
    }
}

impl DiskQueue for RawQueue {
    fn engine(&self) -> EngineKind {
        self.engine.kind()
    }

    fn enqueue(&mut self, id: u64, request: Request<'_>) -> Result<(), RequestError> {
        let (spec, bufs) = self.check(id, &request)?;
        self.engine.push(spec, bufs)
    }

    fn submit(&mut self) -> Result<(), QueueError> {
        self.engine.submit()
    }

    fn completion_fd(&self) -> BorrowedFd<'_> {
        self.engine.completion_fd()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize, QueueError> {
        self.engine.reap(out)
    }

    fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    fn quiesce(&mut self, out: &mut Vec<Completion>) -> Result<(), QueueError> {
        self.submit()?;
        while self.in_flight() > 0 {
            // A timeout, so that a submission the kernel put off (EAGAIN) is
            // retried even if no completion comes.
            sys::poll_readable(self.completion_fd(), 100).map_err(|source| QueueError::Wait {
                path: self.file.path.clone(),
                source,
            })?;
            self.submit()?;
            self.reap(out)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for RawQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawQueue")
            .field("path", &self.file.path)
            .field("engine", &self.engine.kind())
            .field("in_flight", &self.engine.in_flight())
            .finish()
    }
}
