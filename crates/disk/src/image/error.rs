//! [`ImageError`]: what went wrong with an image, naming the file.

use std::io;
use std::path::PathBuf;

/// An image operation failed. Each variant names the file; the message says
/// what was being done or what is wrong, with offsets where they help.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The file is not a valid image of its format (bad header values).
    #[error("{} is not a valid {format} image: {what}", path.display())]
    Invalid {
        path: PathBuf,
        format: &'static str,
        what: String,
    },
    /// The image's metadata is inconsistent.
    #[error("{} is corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// A valid image using something Vireo does not implement.
    #[error("{}: {what} is not supported", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{}: {what} of {len} bytes at offset {offset} goes past the end of the disk ({size} bytes)", path.display())]
    OutOfRange {
        path: PathBuf,
        what: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{}: {what} refused: the image is open read-only", path.display())]
    ReadOnly { path: PathBuf, what: &'static str },
    #[error("{}: backing file {} leads back to an image already in the chain", path.display(), backing.display())]
    BackingLoop { path: PathBuf, backing: PathBuf },
    #[error("{}: cannot open its backing file {backing}", path.display())]
    Backing {
        path: PathBuf,
        backing: String,
        #[source]
        source: Box<ImageError>,
    },
    /// An argument the caller gave makes no sense for this image.
    #[error("{}: {what}", path.display())]
    InvalidArgument { path: PathBuf, what: String },
}

impl ImageError {
    pub(crate) fn io(path: &std::path::Path, what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            what: what.into(),
            source,
        }
    }

    /// The OS error behind this one, if any (ENOSPC, EIO, ...).
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            Self::Open { source, .. } | Self::Io { source, .. } => Some(source),
            Self::Backing { source, .. } => source.os_error(),
            _ => None,
        }
    }

    /// Whether the host cannot do this at all (for example discard where the
    /// file system cannot punch holes): virtio-blk reports UNSUPP.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported { .. })
            || self
                .os_error()
                .is_some_and(crate::error::is_unsupported_errno)
    }
}
