//! [`FileCtx`]: an open disk file or block device and what the engines need
//! to know about it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::engine::JobSpec;
use crate::RequestError;

/// An open disk, shared by all its queues.
#[derive(Debug)]
pub(crate) struct FileCtx {
    pub(crate) file: File,
    pub(crate) path: Arc<Path>,
    pub(crate) block_device: bool,
    pub(crate) read_only: bool,
    pub(crate) direct: bool,
    pub(crate) size: u64,
    /// Direct I/O: required alignment of buffer addresses (1 otherwise).
    pub(crate) mem_align: u32,
    /// Direct I/O: required alignment of offsets and lengths (1 otherwise).
    pub(crate) offset_align: u32,
    /// Set once FALLOC_FL_ZERO_RANGE has been refused, so later write-zeroes
    /// go straight to the fallback.
    pub(crate) zero_range_unsupported: AtomicBool,
}

impl FileCtx {
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Alignment of the bounce and zero buffers: satisfies both direct I/O
    /// requirements, and is at least a page-friendly 4096.
    pub(crate) fn buffer_align(&self) -> usize {
        let align = self.mem_align.max(self.offset_align).max(4096);
        usize::try_from(align.next_power_of_two()).unwrap_or(4096)
    }

    pub(crate) fn zero_range_supported(&self) -> bool {
        !self.zero_range_unsupported.load(Ordering::Relaxed)
    }

    pub(crate) fn set_zero_range_unsupported(&self) {
        if !self.zero_range_unsupported.swap(true, Ordering::Relaxed) {
            log::info!(
                "{}: the file system has no FALLOC_FL_ZERO_RANGE; write-zeroes falls back",
                self.path.display()
            );
        }
    }

    /// The error for a failed system call of a request.
    pub(crate) fn io_error(&self, spec: &JobSpec, source: io::Error) -> RequestError {
        RequestError::Io {
            path: self.path.clone(),
            extent: spec.extent(),
            source,
        }
    }
}
