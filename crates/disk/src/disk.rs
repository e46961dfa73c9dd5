//! The interface virtio-blk programs against: [`Disk`] (one per disk) and
//! [`DiskQueue`] (one per virtqueue).

use std::os::fd::BorrowedFd;

use crate::{DiskSerial, IoBuf, QueueError, RequestError};

/// The most buffers one read or write may have (Linux's `IOV_MAX`).
pub const MAX_BUFFERS: usize = 1024;

/// What the guest is told about a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in bytes. virtio-blk's capacity is this in 512-byte sectors,
    /// rounded down.
    pub size: u64,
    /// The smallest unit the disk can address (virtio-blk's `blk_size`):
    /// 512, or the device's or direct I/O's larger requirement.
    pub logical_block_size: u32,
    /// The unit of efficient writes (virtio-blk's `physical_block_exp`).
    pub physical_block_size: u32,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// The host page cache is bypassed (O_DIRECT).
    pub direct: bool,
    /// Discard is offered (it may still fail with an "unsupported" error on
    /// file systems without hole punching).
    pub discard: bool,
    /// Write-zeroes is offered.
    pub write_zeroes: bool,
    /// The most buffers one read or write may have.
    pub max_buffers: usize,
}

/// One request. The buffers are copied out (as addresses, not data) by
/// [`DiskQueue::enqueue`], so the slice itself may be reused at once.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// Fills `bufs`, in order, from the disk at `offset`.
    Read { offset: u64, bufs: &'a [IoBuf] },
    /// Writes `bufs`, in order, to the disk at `offset`.
    Write { offset: u64, bufs: &'a [IoBuf] },
    /// Makes every write completed before this request was enqueued durable
    /// (fdatasync). Writes still in flight are not ordered against it, which
    /// is what virtio-blk's VIRTIO_BLK_T_FLUSH promises.
    Flush,
    /// The guest no longer needs the range: the host may free it. Reads of
    /// the range return zeros afterwards on a file (hole punching), and
    /// whatever the device returns on a block device.
    Discard { offset: u64, len: u64 },
    /// Makes the range read as zeros. With `unmap` the host may free the
    /// space; without, it stays allocated.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// The end of one request.
#[derive(Debug)]
pub struct Completion {
    /// The id given to [`DiskQueue::enqueue`].
    pub id: u64,
    /// Bytes transferred (a read's or write's full length; 0 for the others),
    /// or why it failed.
    pub result: Result<u64, RequestError>,
}

/// Which I/O engine runs a queue's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// io_uring if this host allows it, else the thread pool.
    #[default]
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// Worker threads doing blocking system calls.
    ThreadPool,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::ThreadPool => "thread pool",
        })
    }
}

/// How to run one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The engine to use.
    pub engine: EngineKind,
    /// How many requests may be in the kernel at once (io_uring's submission
    /// queue size; 1 to 4096). More may be enqueued: they wait their turn.
    pub depth: u32,
    /// Worker threads of the thread-pool engine (1 to 64).
    pub workers: usize,
    /// A short label for the worker threads' names (for example "vda-q0");
    /// thread names are cut to Linux's 15 bytes.
    pub name: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            engine: EngineKind::Auto,
            depth: 128,
            workers: 4,
            name: "blk".to_owned(),
        }
    }
}

/// A virtual disk as virtio-blk sees it. Raw files and block devices
/// implement it ([`RawDisk`](crate::RawDisk)); image formats such as qcow2
/// will too.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// Size, block sizes and what the disk can do.
    fn info(&self) -> DiskInfo;

    /// The identity for `VIRTIO_BLK_T_GET_ID`.
    fn serial(&self) -> DiskSerial;

    /// Opens an independent request queue (one per virtqueue). Queues may be
    /// used from different threads at the same time.
    fn open_queue(&self, config: &QueueConfig) -> Result<Box<dyn DiskQueue>, QueueError>;
}

/// An asynchronous request queue.
///
/// Usage from an event loop: [`enqueue`](Self::enqueue) the requests of a
/// virtqueue notification, [`submit`](Self::submit) them in one go, and when
/// [`completion_fd`](Self::completion_fd) becomes readable call
/// [`reap`](Self::reap). None of these block on I/O.
///
/// Dropping a queue waits for the requests already in the kernel (which may
/// still be writing into their buffers) and abandons those not yet started;
/// their completions are never reported.
pub trait DiskQueue: Send + std::fmt::Debug {
    /// The engine running this queue (never [`EngineKind::Auto`]).
    fn engine(&self) -> EngineKind;

    /// Checks a request and queues it under `id`; it starts at the next
    /// [`submit`](Self::submit) (or earlier). On `Err` nothing was queued and
    /// no completion will come for it.
    fn enqueue(&mut self, id: u64, request: Request<'_>) -> Result<(), RequestError>;

    /// Starts every queued request, in as few system calls as possible.
    fn submit(&mut self) -> Result<(), QueueError>;

    /// Readable when completions are waiting. Level-triggered until
    /// [`reap`](Self::reap) is called.
    fn completion_fd(&self) -> BorrowedFd<'_>;

    /// Appends the finished requests to `out` (in completion order, which is
    /// not submission order) and returns how many. Also starts requests that
    /// were waiting for room in the kernel.
    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize, QueueError>;

    /// Requests enqueued whose completion has not been reaped yet.
    fn in_flight(&self) -> usize;

    /// Submits everything and blocks until every request has completed,
    /// appending the completions to `out`: for device reset, pause and
    /// snapshot, never on the vCPU path.
    fn quiesce(&mut self, out: &mut Vec<Completion>) -> Result<(), QueueError>;
}
