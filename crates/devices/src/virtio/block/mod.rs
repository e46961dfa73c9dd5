//! virtio-blk (virtio 1.2, section 5.2) on a [`vireo_disk::Disk`].
//!
//! - Features: SEG_MAX, BLK_SIZE, FLUSH, TOPOLOGY always; MQ with more than
//!   one queue; RO for a read-only disk; DISCARD and WRITE_ZEROES when the
//!   disk offers them (never on a read-only disk). One discard or
//!   write-zeroes segment per request, at most [`MAX_DISCARD_SECTORS`] /
//!   [`MAX_WRITE_ZEROES_SECTORS`] sectors.
//! - Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; anything else
//!   completes with UNSUPP. [`request::parse`] checks every guest-controlled
//!   value (framing, directions, lengths, sector ranges, flags) before
//!   anything reaches the disk; invalid requests complete at once with
//!   IOERR or UNSUPP, and only a chain without a status byte breaks the
//!   device (DEVICE_NEEDS_RESET).
//! - I/O is asynchronous: each virtqueue has its own
//!   [`DiskQueue`](vireo_disk::DiskQueue), opened when the device is built.
//!   A queue notification parses the available chains, hands their guest
//!   buffers to the disk without copying, and submits once; completions are
//!   reaped when the disk queue's completion fd becomes readable. At most
//!   queue-size requests per queue are in flight.
//! - Within one batch (the chains taken for one notification), runs of
//!   reads, or of writes, whose byte ranges follow each other in ring order
//!   go to the disk as one request (as QEMU's `virtio_blk_submit_multireq`
//!   does), up to [`MAX_MERGE_BYTES`] and the disk's
//!   [`max_buffers`](vireo_disk::DiskInfo::max_buffers); each of its chains
//!   completes with its status. Flush, discard, write-zeroes and get-id are
//!   never merged and nothing is merged or reordered across them.
//! - A driver that does not negotiate FLUSH gets write-through semantics:
//!   each write is followed by a flush before it completes.
//!
//! # Wiring
//! - [`VirtioDevice::set_host_events`](crate::virtio::VirtioDevice::set_host_events)
//!   registers each disk queue's completion fd with token = queue index
//!   (0..num_queues); the monitor calls `host_event(token)` when one becomes
//!   readable (edge-triggered is fine: the device reaps until empty).
//!   [`Block::completion_fds`] lists them. Without host events (or if
//!   watching fails) the device waits for each batch inline in
//!   `process_queue`, which blocks the caller on disk I/O.
//! - Reset waits for the requests in flight (the disk never writes to
//!   guest memory after a reset), then forgets them. Dropping the device
//!   unwatches the fds and waits the same way.

mod device;
#[cfg(test)]
mod mock_disk;
pub mod request;
#[cfg(test)]
mod tests;

pub use device::{
    features, Block, BlockConfig, BlockError, BLOCK_QUEUE_SIZE, CONFIG_SIZE, MAX_DISCARD_SECTORS,
    MAX_MERGE_BYTES, MAX_QUEUES, MAX_WRITE_ZEROES_SECTORS,
};
pub use request::SECTOR_SIZE;
