//! Error types: one enum per kind of operation, each naming the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a request asks of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Operation {
    /// Whether the operation changes the disk's contents.
    pub fn modifies(self) -> bool {
        matches!(self, Self::Write | Self::Discard | Self::WriteZeroes)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::Discard => "discard",
            Self::WriteZeroes => "write-zeroes",
        })
    }
}

/// An operation with its extent, displayed as "read of 4096 bytes at offset
/// 8192" (or just "flush").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub op: Operation,
    pub offset: u64,
    pub len: u64,
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Operation::Flush => write!(f, "flush"),
            op => write!(f, "{op} of {} bytes at offset {}", self.len, self.offset),
        }
    }
}

/// Opening a disk failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {} {}", path.display(), mode_name(*read_only, *direct))]
    Open {
        path: PathBuf,
        read_only: bool,
        direct: bool,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} does not support direct I/O (O_DIRECT): its file system refuses it; \
         open it without direct I/O",
        path.display()
    )]
    DirectUnsupported {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot stat {}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is a {kind}, not a regular file or a block device", path.display())]
    NotADisk { path: PathBuf, kind: &'static str },
    #[error("cannot query {} with {ioctl}", path.display())]
    BlockDevice {
        path: PathBuf,
        ioctl: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} reports a {what} of {value} bytes; a power of two from 512 to 65536 is needed",
        path.display()
    )]
    BlockSize {
        path: PathBuf,
        what: &'static str,
        value: u64,
    },
    #[error("invalid serial for {}", path.display())]
    Serial {
        path: PathBuf,
        #[source]
        source: SerialError,
    },
}

fn mode_name(read_only: bool, direct: bool) -> &'static str {
    match (read_only, direct) {
        (true, false) => "read-only",
        (true, true) => "read-only with direct I/O",
        (false, false) => "read-write",
        (false, true) => "read-write with direct I/O",
    }
}

/// A user-given disk serial is unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("the serial {serial:?} is {len} bytes long; virtio-blk allows at most 20")]
    TooLong { serial: String, len: usize },
    #[error("the serial {serial:?} contains a character other than printable ASCII")]
    NotPrintable { serial: String },
}

/// Setting up, feeding or draining a queue's I/O engine failed. These are
/// failures of the engine, not of one request.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid I/O queue configuration for {}: {reason}", path.display())]
    InvalidConfig { path: Arc<Path>, reason: String },
    #[error("io_uring is unavailable on this host (needed for {})", path.display())]
    UringUnavailable {
        path: Arc<Path>,
        #[source]
        source: io::Error,
    },
    #[error(
        "io_uring on this kernel lacks the {opcode} operation (needed for {})",
        path.display()
    )]
    UringMissingOp {
        path: Arc<Path>,
        opcode: &'static str,
    },
    #[error("cannot set up an io_uring of depth {depth} for {}", path.display())]
    UringSetup {
        path: Arc<Path>,
        depth: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the completion eventfd for {}", path.display())]
    EventFd {
        path: Arc<Path>,
        #[source]
        source: io::Error,
    },
    #[error("cannot start I/O worker thread {name} for {}", path.display())]
    SpawnWorker {
        path: Arc<Path>,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot submit I/O on {} to io_uring", path.display())]
    Submit {
        path: Arc<Path>,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for I/O completions on {}", path.display())]
    Wait {
        path: Arc<Path>,
        #[source]
        source: io::Error,
    },
}

impl QueueError {
    /// Whether io_uring itself is missing or forbidden here (as opposed to a
    /// failure that would also hit the thread pool), so that choosing the
    /// engine automatically should fall back to the thread pool.
    pub fn is_uring_unavailable(&self) -> bool {
        matches!(
            self,
            Self::UringUnavailable { .. } | Self::UringMissingOp { .. }
        )
    }
}

/// One request was refused or failed. virtio-blk turns these into
/// `VIRTIO_BLK_S_IOERR`, or `VIRTIO_BLK_S_UNSUPP` when
/// [`is_unsupported`](Self::is_unsupported).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "{extent} goes past the end of {} ({size} bytes)",
        path.display()
    )]
    OutOfRange {
        path: Arc<Path>,
        extent: Extent,
        size: u64,
    },
    #[error("{op} refused: {} is open read-only", path.display())]
    ReadOnly { path: Arc<Path>, op: Operation },
    #[error(
        "{extent} on {} is not aligned to {align} bytes, as direct I/O requires",
        path.display()
    )]
    Misaligned {
        path: Arc<Path>,
        extent: Extent,
        align: u32,
    },
    #[error(
        "{extent} on {} has {count} buffers, more than the {max} allowed",
        path.display()
    )]
    TooManyBuffers {
        path: Arc<Path>,
        extent: Extent,
        count: usize,
        max: usize,
    },
    #[error(
        "{extent} on {} stopped at the end of the file after {done} bytes \
         (was the file truncated while in use?)",
        path.display()
    )]
    UnexpectedEof {
        path: Arc<Path>,
        extent: Extent,
        done: u64,
    },
    #[error("{extent} on {} failed", path.display())]
    Image {
        path: Arc<Path>,
        extent: Extent,
        #[source]
        source: Box<crate::image::ImageError>,
    },
    #[error("{extent} on {} failed", path.display())]
    Io {
        path: Arc<Path>,
        extent: Extent,
        #[source]
        source: io::Error,
    },
}

impl RequestError {
    /// The operation that failed.
    pub fn operation(&self) -> Operation {
        match self {
            Self::ReadOnly { op, .. } => *op,
            Self::OutOfRange { extent, .. }
            | Self::Misaligned { extent, .. }
            | Self::TooManyBuffers { extent, .. }
            | Self::UnexpectedEof { extent, .. }
            | Self::Image { extent, .. }
            | Self::Io { extent, .. } => extent.op,
        }
    }

    /// Whether the host cannot do this kind of operation at all on this file
    /// (for example discard on a file system without hole punching).
    pub fn is_unsupported(&self) -> bool {
        match self {
            Self::Io { source, .. } => is_unsupported_errno(source),
            Self::Image { source, .. } => source.is_unsupported(),
            _ => false,
        }
    }
}

/// EOPNOTSUPP (also spelled ENOTSUP on Linux) and ENOTTY (an ioctl the device
/// lacks).
pub(crate) fn is_unsupported_errno(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
    )
}
