//! Disk images and block I/O for Vireo's virtio-blk.
//!
//! A [`Disk`] is what virtio-blk serves: its size and block sizes
//! ([`DiskInfo`]), its GET_ID serial ([`DiskSerial`]), and request queues
//! ([`DiskQueue`]), one per virtqueue. A queue takes requests with guest
//! memory buffers ([`IoBuf`]), runs them on an I/O engine (io_uring, or a
//! thread pool where io_uring is unavailable) and reports [`Completion`]s
//! through an eventfd that the monitor's event loop polls, so nothing on
//! the vCPU or notification path waits for the disk.
//!
//! [`RawDisk`] serves raw image files and host block devices;
//! [`ImageDisk`] serves any [`Image`] (qcow2 and backing chains, see
//! [`image`]).
//!
//! Threads: a queue is used from one thread (the monitor's event loop, or a
//! per-queue I/O thread); queues of one disk are independent. The io_uring
//! engine adds no thread of its own (a helper thread starts only for what
//! io_uring cannot do: block-device ioctls, O_DIRECT bounce buffering,
//! write-zeroes fallbacks); the thread-pool engine runs
//! [`QueueConfig::workers`] threads named after [`QueueConfig::name`].
//!
//! ```no_run
//! use vireo_disk::{Disk, IoBuf, QueueConfig, RawDisk, RawOptions, Request};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = RawDisk::open("disk.img", &RawOptions::default())?;
//! let mut queue = disk.open_queue(&QueueConfig::default())?;
//! let mut sector = vec![0u8; 512];
//! // SAFETY: `sector` outlives the request and is untouched until it completes.
//! let buf = unsafe { IoBuf::from_slice(&mut sector) };
//! queue.enqueue(7, Request::Read { offset: 0, bufs: &[buf] })?;
//! queue.submit()?;
//! let mut done = Vec::new();
//! queue.quiesce(&mut done)?; // an event loop would poll completion_fd() instead
//! assert_eq!(done[0].id, 7);
//! # Ok(()) }
//! ```

mod disk;
mod engine;
mod error;
mod file;
pub mod image;
mod image_disk;
mod iobuf;
mod raw;
mod serial;
mod sys;

pub use disk::{
    Completion, Disk, DiskInfo, DiskQueue, EngineKind, QueueConfig, Request, MAX_BUFFERS,
};
pub use error::{Extent, OpenError, Operation, QueueError, RequestError, SerialError};
pub use image::{Image, ImageError, ImageFormat};
pub use image_disk::{ImageDisk, ImageQueue};
pub use iobuf::IoBuf;
pub use raw::{RawDisk, RawOptions, RawQueue};
pub use serial::{DiskSerial, SERIAL_LEN};
