//! The virtio-blk device: features, configuration space, activation and
//! reset, and the asynchronous request path.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vireo_disk::{
    Completion, Disk, DiskInfo, DiskQueue, DiskSerial, IoBuf, QueueConfig, Request, SerialError,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::request::{self, status, BlockRequest, Command, DiskLimits, ParseError, SECTOR_SIZE};
use crate::ratelimit::RateLimitedLog;
use crate::virtio::queue::{ActiveQueues, GuestBuffer, QueueError};
use crate::virtio::{
    ActivateError, GuestMemoryMmap, Queue, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
};
use crate::{guest_debug, guest_warn, HostEvents};

/// Default size of each queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Most queues a device may have.
pub const MAX_QUEUES: u16 = 16;
/// Bytes of configuration space: `struct virtio_blk_config` through
/// `write_zeroes_may_unmap` and its padding (secure erase and zoned fields
/// are not offered).
pub const CONFIG_SIZE: usize = 60;
/// Most sectors of one discard (1 GiB): bounds the time one request can
/// hold a device reset, which waits for requests in flight.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most sectors of one write-zeroes (1 GiB), for the same reason (a file
/// system without zero-range support gets zeros written).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 21;
/// Most bytes of one disk request made by merging contiguous reads (or
/// writes) of a batch; a single larger request is never split.
pub const MAX_MERGE_BYTES: u64 = 4 << 20;

/// Device feature bits.
pub mod features {
    use virtio_bindings::virtio_blk as b;

    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << b::VIRTIO_BLK_F_SEG_MAX;
    /// The disk is read-only.
    pub const RO: u64 = 1 << b::VIRTIO_BLK_F_RO;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << b::VIRTIO_BLK_F_BLK_SIZE;
    /// The FLUSH command exists (a write-back cache).
    pub const FLUSH: u64 = 1 << b::VIRTIO_BLK_F_FLUSH;
    /// The topology fields are valid.
    pub const TOPOLOGY: u64 = 1 << b::VIRTIO_BLK_F_TOPOLOGY;
    /// `num_queues` is valid.
    pub const MQ: u64 = 1 << b::VIRTIO_BLK_F_MQ;
    /// The DISCARD command exists.
    pub const DISCARD: u64 = 1 << b::VIRTIO_BLK_F_DISCARD;
    /// The WRITE_ZEROES command exists.
    pub const WRITE_ZEROES: u64 = 1 << b::VIRTIO_BLK_F_WRITE_ZEROES;
}

/// How to build a [`Block`] device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Number of request queues, 1 to [`MAX_QUEUES`] (more than one offers
    /// VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
    /// Maximum size of each queue: a power of two, 2 to 32768.
    pub queue_size: u16,
    /// How each disk queue runs (engine, depth, workers). Queue `i`'s
    /// worker threads are labelled `"{name}-q{i}"`.
    pub io: QueueConfig,
    /// The GET_ID serial (up to 20 printable ASCII bytes); the disk's own
    /// when absent.
    pub serial: Option<String>,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            num_queues: 1,
            queue_size: BLOCK_QUEUE_SIZE,
            io: QueueConfig::default(),
            serial: None,
        }
    }
}

/// Why a [`Block`] device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The number of queues is out of range.
    #[error("{0} queues requested; virtio-blk supports 1 to 16")]
    NumQueues(u16),
    /// The queue size is not a power of two in range.
    #[error("queue size {0} is not a power of two from 2 to 32768")]
    QueueSize(u16),
    /// The serial override is unusable.
    #[error("invalid virtio-blk serial")]
    Serial(#[source] SerialError),
    /// A disk queue could not be opened.
    #[error("cannot open I/O queue {queue} of the disk")]
    OpenQueue {
        queue: u16,
        #[source]
        source: vireo_disk::QueueError,
    },
}

/// One virtio request (chain) completed by a disk request.
#[derive(Debug, Clone, Copy)]
struct Member {
    head: u16,
    status: GuestAddress,
    /// Used length on success: data read plus the status byte.
    used_len: u32,
}

/// A disk request in flight: the chains it completes (several when
/// contiguous requests were merged), in the order they were taken.
#[derive(Debug, Default)]
struct InFlight {
    live: bool,
    /// Write-through: follow a successful write with a flush before
    /// completing it (the driver did not negotiate FLUSH).
    flush_after: bool,
    /// Kept (emptied) when the slot is freed, so that its allocation is
    /// reused.
    members: Vec<Member>,
}

/// Requests in flight on one queue, keyed by a slot id that goes to the
/// disk as the request id. Holds at most `cap` chains (the queue size: a
/// ring cannot have more chains outstanding), however they are merged.
#[derive(Debug, Default)]
struct Slots {
    entries: Vec<InFlight>,
    free: Vec<u32>,
    cap: usize,
    /// Chains in flight (members of live entries).
    len: usize,
}

impl Slots {
    /// Empties the table and sets its capacity.
    fn reset(&mut self, cap: usize) {
        self.entries.clear();
        self.free.clear();
        self.cap = cap;
        self.len = 0;
    }

    /// Inserts a disk request completing `members` (at least one).
    fn insert(
        &mut self,
        members: impl ExactSizeIterator<Item = Member>,
        flush_after: bool,
    ) -> Option<u64> {
        let n = members.len();
        if n == 0 || self.len + n > self.cap {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.entries.push(InFlight::default());
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[index];
        e.live = true;
        e.flush_after = flush_after;
        e.members.clear();
        e.members.extend(members);
        self.len += n;
        Some(index as u64)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut InFlight> {
        let i = usize::try_from(id).ok()?;
        self.entries.get_mut(i).filter(|e| e.live)
    }

    /// Frees slot `id`; returns the chains it completes (valid until the
    /// next insert).
    fn remove(&mut self, id: u64) -> Option<&[Member]> {
        let i = usize::try_from(id).ok()?;
        let e = self.entries.get_mut(i).filter(|e| e.live)?;
        e.live = false;
        // i < entries.len() <= cap <= 32768.
        self.free.push(i as u32);
        self.len -= e.members.len();
        Some(&e.members)
    }
}

/// A read or write taken from the ring, waiting for the end of its batch
/// to be merged with its neighbours and handed to the disk.
#[derive(Debug, Clone, Copy)]
struct Batched {
    member: Member,
    write: bool,
    offset: u64,
    len: u64,
    /// Its host buffers: `IoQueue::batch_bufs[bufs.0..bufs.1]`.
    bufs: (usize, usize),
}

/// One virtqueue's disk side.
#[derive(Debug)]
struct IoQueue {
    /// `None` only if reopening after a failed quiesce failed: requests
    /// then fail with IOERR.
    disk: Option<Box<dyn DiskQueue>>,
    /// The completion fd is watched by the monitor's event loop; if not,
    /// requests are waited for inline.
    watched: bool,
    slots: Slots,
    /// Chains may be available that were left (slots full, or the per-call
    /// budget spent): take them after the next completions.
    pending: bool,
    /// The last `take` stopped at its per-call budget (not for want of
    /// slots): the event loop should call again.
    budget_spent: bool,
    /// Requests enqueued since the last submit.
    unsubmitted: bool,
    completions: Vec<Completion>,
    /// Reads and writes of the batch being taken, in ring order.
    batch: Vec<Batched>,
    /// Their host buffers, in the same order (a run of contiguous batched
    /// requests has contiguous buffers here).
    batch_bufs: Vec<IoBuf>,
}

/// What the request path needs besides one queue.
struct Ctx<'a> {
    limits: &'a DiskLimits,
    serial: &'a DiskSerial,
    log: &'a RateLimitedLog,
    write_through: bool,
    /// Most host buffers of one merged read or write.
    max_buffers: usize,
}

/// Whether a chain went to the disk or was used at once.
enum Started {
    Async,
    Used,
}

/// The `QueueError` a malformed request becomes (the device needs reset).
fn malformed(log: &RateLimitedLog, e: &ParseError) -> QueueError {
    guest_warn!(log, "virtio-blk: {e}");
    QueueError::Ring(virtio_queue::Error::InvalidChain)
}

/// Writes `status` to the status byte at `addr`.
fn write_status(
    mem: &GuestMemoryMmap,
    log: &RateLimitedLog,
    head: u16,
    addr: GuestAddress,
    status: u8,
) -> Result<(), QueueError> {
    mem.write_obj(status, addr)
        .map_err(|_| malformed(log, &ParseError::Memory { head, addr: addr.0 }))
}

/// Appends the host buffers behind guest buffer `b` (one per memory
/// region it spans) to `out`.
fn guest_iobufs(
    mem: &GuestMemoryMmap,
    head: u16,
    b: &GuestBuffer,
    out: &mut Vec<IoBuf>,
) -> Result<(), ParseError> {
    let bad = ParseError::Memory {
        head,
        addr: b.addr.0,
    };
    for slice in GuestMemoryBackend::get_slices(mem, b.addr, b.len as usize) {
        let slice = slice.map_err(|_| bad)?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr..ptr + len` is guest RAM mapped by `mem`. The device
        // holds a clone of `mem` (in its `ActiveQueues`), which keeps the
        // mapping alive, until every request naming this buffer has been
        // reaped: `Block::reset` quiesces each disk queue before dropping
        // the memory, and `Block`'s fields drop the disk queues (which
        // waits for requests in the kernel) before the memory. Guest RAM is
        // only ever accessed through volatile copies and raw pointers, never
        // through Rust references.
        out.push(unsafe { IoBuf::from_raw_parts(ptr, slice.len()) });
    }
    Ok(())
}

/// Writes the serial's first bytes to `data`; returns how many.
fn write_id(
    mem: &GuestMemoryMmap,
    log: &RateLimitedLog,
    head: u16,
    serial: &DiskSerial,
    data: &[GuestBuffer],
) -> Result<u32, QueueError> {
    let id = serial.as_bytes();
    let mut done = 0usize;
    for b in data {
        if done == id.len() {
            break;
        }
        let n = (b.len as usize).min(id.len() - done);
        mem.write_slice(&id[done..done + n], b.addr).map_err(|_| {
            malformed(
                log,
                &ParseError::Memory {
                    head,
                    addr: b.addr.0,
                },
            )
        })?;
        done += n;
    }
    // done <= 20.
    Ok(done as u32)
}

/// The status a failed disk request reports.
/// The disk refused request `id` at enqueue: frees its slot and returns the
/// status its members complete with.
fn refused(
    slots: &mut Slots,
    id: u64,
    log: &RateLimitedLog,
    e: &vireo_disk::RequestError,
) -> Option<u8> {
    slots.remove(id);
    Some(error_status(log, e))
}

fn error_status(log: &RateLimitedLog, e: &vireo_disk::RequestError) -> u8 {
    if e.is_unsupported() {
        guest_debug!(log, "virtio-blk: {}", ErrorChain(e));
        status::UNSUPP
    } else {
        guest_warn!(log, "virtio-blk: {}", ErrorChain(e));
        status::IOERR
    }
}

/// Displays an error with its sources.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl IoQueue {
    fn new(disk: Box<dyn DiskQueue>) -> IoQueue {
        IoQueue {
            disk: Some(disk),
            watched: false,
            slots: Slots::default(),
            pending: false,
            budget_spent: false,
            unsubmitted: false,
            completions: Vec::new(),
            batch: Vec::new(),
            batch_bufs: Vec::new(),
        }
    }

    fn fd(&self) -> Option<RawFd> {
        self.disk.as_ref().map(|d| d.completion_fd().as_raw_fd())
    }

    /// Serves queue `q`: reaps completions if `reap`, takes available
    /// chains, submits, and interrupts once for everything used.
    fn service(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
        reap: bool,
    ) -> Result<(), QueueError> {
        let mut used = 0;
        if reap {
            self.reap(ctx.log);
            used += self.finish(active, q, ctx)?;
        }
        if !reap || self.pending {
            used += self.take(active, q, ctx)?;
        }
        self.submit(ctx);
        if !self.watched {
            used += self.wait_inline(active, q, ctx)?;
        }
        if used > 0 {
            active.signal_used(q)?;
        }
        Ok(())
    }

    /// Moves every finished request to `self.completions`.
    fn reap(&mut self, log: &RateLimitedLog) {
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        // Bounded: only requests this queue enqueued complete.
        loop {
            match disk.reap(&mut self.completions) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    guest_warn!(log, "virtio-blk: {}", ErrorChain(&e));
                    break;
                }
            }
        }
    }

    /// Frees the slots of reaped requests without touching the guest (the
    /// device is broken or not live).
    fn discard_completions(&mut self) {
        for c in self.completions.drain(..) {
            self.slots.remove(c.id);
        }
    }

    /// Completes the reaped requests; returns how many chains were used.
    fn finish(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
    ) -> Result<usize, QueueError> {
        let mut used = 0;
        let mut completions = std::mem::take(&mut self.completions);
        let mut result = Ok(());
        for c in completions.drain(..) {
            if result.is_err() {
                // Broken: only free the slots.
                self.slots.remove(c.id);
                continue;
            }
            result = self.finish_one(active, q, ctx, c).map(|n| used += n);
        }
        self.completions = completions;
        result.map(|()| used)
    }

    /// Completes one disk request: every chain it stands for (or starts
    /// its write-through flush); returns how many chains were used.
    fn finish_one(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
        c: Completion,
    ) -> Result<usize, QueueError> {
        let Some(slot) = self.slots.get_mut(c.id) else {
            log::error!(
                "virtio-blk: queue {q}: completion for unknown request {}",
                c.id
            );
            return Ok(0);
        };
        let mut status = match &c.result {
            Ok(_) => status::OK,
            Err(e) => error_status(ctx.log, e),
        };
        if status == status::OK && slot.flush_after {
            slot.flush_after = false;
            let disk = self.disk.as_mut().ok_or(QueueError::NoSuchQueue(q))?;
            match disk.enqueue(c.id, Request::Flush) {
                Ok(()) => {
                    self.unsubmitted = true;
                    return Ok(0);
                }
                Err(e) => status = error_status(ctx.log, &e),
            }
        }
        let Some(members) = self.slots.remove(c.id) else {
            return Ok(0);
        };
        for m in members {
            let used_len = if status == status::OK { m.used_len } else { 1 };
            write_status(active.memory(), ctx.log, m.head, m.status, status)?;
            active.add_used(q, m.head, used_len)?;
        }
        Ok(members.len())
    }

    /// Whether no more chains may be taken: those in flight and those
    /// batched fill the queue.
    fn is_full(&self) -> bool {
        self.slots.len + self.batch.len() >= self.slots.cap
    }

    /// Takes available chains (notifications off meanwhile, then on and a
    /// last look, as [`ActiveQueues::drain`] does), while slots are free and
    /// at most `4 * queue size` per call. Reads and writes are batched and
    /// merged (see [`Self::start_batch`]); any other request first starts
    /// the batch before it, so nothing is reordered across it. Returns how
    /// many chains were used at once (the rest went to the disk).
    fn take(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
    ) -> Result<usize, QueueError> {
        self.batch.clear();
        self.batch_bufs.clear();
        let result = self.take_batches(active, q, ctx);
        self.batch.clear();
        self.batch_bufs.clear();
        result
    }

    fn take_batches(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
    ) -> Result<usize, QueueError> {
        self.pending = false;
        self.budget_spent = false;
        let budget = 4 * self.slots.cap.max(1);
        let mut taken = 0;
        let mut used = 0;
        // See ActiveQueues::drain: overlapping rings can make
        // enable_notification report chains that pop never finds.
        let mut empty_passes = 0;
        'outer: loop {
            active.disable_notification(q)?;
            let before = taken;
            loop {
                if self.is_full() || taken >= budget {
                    self.pending = true;
                    self.budget_spent = !self.is_full();
                    active.enable_notification(q)?;
                    break 'outer;
                }
                let Some(chain) = active.pop(q)? else {
                    break;
                };
                taken += 1;
                let req = request::parse(&chain, active.memory(), ctx.limits)
                    .map_err(|e| malformed(ctx.log, &e))?;
                let (write, offset, len, data) = match &req.command {
                    Command::Read { offset, len, data } if *len > 0 => (false, *offset, *len, data),
                    Command::Write { offset, len, data } if *len > 0 => (true, *offset, *len, data),
                    _ => {
                        used += self.start_batch(active, q, ctx)?;
                        if let Started::Used = self.start(active, q, ctx, req)? {
                            used += 1;
                        }
                        continue;
                    }
                };
                let first = self.batch_bufs.len();
                for b in data {
                    guest_iobufs(active.memory(), req.head, b, &mut self.batch_bufs)
                        .map_err(|e| malformed(ctx.log, &e))?;
                }
                let used_len = if write {
                    1
                } else {
                    // A chain is less than 4 GiB (virtio-queue stops there).
                    u32::try_from(len + 1).unwrap_or(u32::MAX)
                };
                self.batch.push(Batched {
                    member: Member {
                        head: req.head,
                        status: req.status,
                        used_len,
                    },
                    write,
                    offset,
                    len,
                    bufs: (first, self.batch_bufs.len()),
                });
            }
            if taken == before {
                empty_passes += 1;
            }
            if !active.enable_notification(q)? {
                break;
            }
            if empty_passes > 1 {
                // Served again later (queue_has_more), not spun on here.
                self.pending = true;
                self.budget_spent = true;
                break;
            }
        }
        used += self.start_batch(active, q, ctx)?;
        Ok(used)
    }

    /// Hands the batched reads and writes to the disk, each run of
    /// same-direction requests whose byte ranges follow each other as one
    /// request of at most [`MAX_MERGE_BYTES`] (unless a single request is
    /// larger) and `ctx.max_buffers` buffers. Returns how many chains were
    /// used at once (the disk refused their request).
    fn start_batch(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
    ) -> Result<usize, QueueError> {
        let mut used = 0;
        let mut i = 0;
        let n = self.batch.len();
        while i < n {
            let first = self.batch[i];
            let mut end = i + 1;
            let mut bytes = first.len;
            while let Some(b) = self.batch.get(end) {
                // Offsets and lengths lie within the disk: no overflow.
                if b.write != first.write
                    || b.offset != first.offset + bytes
                    || bytes + b.len > MAX_MERGE_BYTES
                    || b.bufs.1 - first.bufs.0 > ctx.max_buffers
                {
                    break;
                }
                bytes += b.len;
                end += 1;
            }
            let run = i..end;
            i = end;
            let Some(status) = self.enqueue_run(ctx, run.clone()) else {
                continue;
            };
            for b in &self.batch[run] {
                let m = b.member;
                write_status(active.memory(), ctx.log, m.head, m.status, status)?;
                active.add_used(q, m.head, 1)?;
                used += 1;
            }
        }
        self.batch.clear();
        self.batch_bufs.clear();
        Ok(used)
    }

    /// Hands batched requests `run` (same direction, contiguous) to the
    /// disk as one request. Returns `None` if it went, or the status to
    /// complete them with at once if the disk refused it.
    fn enqueue_run(&mut self, ctx: &Ctx<'_>, run: std::ops::Range<usize>) -> Option<u8> {
        let Some(disk) = self.disk.as_mut() else {
            return Some(status::IOERR);
        };
        let members = &self.batch[run];
        let (first, last) = (members.first()?, members.last()?);
        let bufs = &self.batch_bufs[first.bufs.0..last.bufs.1];
        let offset = first.offset;
        let (request, flush_after) = if first.write {
            (Request::Write { offset, bufs }, ctx.write_through)
        } else {
            (Request::Read { offset, bufs }, false)
        };
        let Some(id) = self
            .slots
            .insert(members.iter().map(|b| b.member), flush_after)
        else {
            // take() checked for room; never reached.
            return Some(status::IOERR);
        };
        match disk.enqueue(id, request) {
            Ok(()) => {
                self.unsubmitted = true;
                None
            }
            Err(e) => refused(&mut self.slots, id, ctx.log, &e),
        }
    }

    /// Starts one request other than a non-empty read or write: at once
    /// (GET_ID, refusals, empty transfers) or on the disk.
    fn start(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
        req: BlockRequest,
    ) -> Result<Started, QueueError> {
        let BlockRequest {
            head,
            status: status_addr,
            command,
        } = req;
        let now = |active: &mut ActiveQueues, status, used_len| {
            write_status(active.memory(), ctx.log, head, status_addr, status)?;
            active.add_used(q, head, used_len)?;
            Ok(Started::Used)
        };
        let request = match command {
            Command::Flush => Request::Flush,
            Command::Discard { offset, len } => Request::Discard { offset, len },
            Command::WriteZeroes { offset, len, unmap } => {
                Request::WriteZeroes { offset, len, unmap }
            }
            Command::Refused(why) => {
                // The guest sees the error; it is not the host's concern.
                guest_debug!(ctx.log, "virtio-blk: queue {q}: {why}");
                return now(active, why.status(), 1);
            }
            Command::GetId { data } => {
                let n = write_id(active.memory(), ctx.log, head, ctx.serial, &data)?;
                return now(active, status::OK, n + 1);
            }
            // take() batches the non-empty ones.
            Command::Read { .. } | Command::Write { .. } => return now(active, status::OK, 1),
        };
        match self.enqueue(ctx, head, status_addr, request) {
            None => Ok(Started::Async),
            Some(status) => now(active, status, 1),
        }
    }

    /// Hands a flush, discard or write-zeroes to the disk. Returns `None`
    /// if it went, or the status to complete it with at once if the disk
    /// refused it.
    fn enqueue(
        &mut self,
        ctx: &Ctx<'_>,
        head: u16,
        status_addr: GuestAddress,
        request: Request<'_>,
    ) -> Option<u8> {
        let Some(disk) = self.disk.as_mut() else {
            return Some(status::IOERR);
        };
        let member = Member {
            head,
            status: status_addr,
            used_len: 1,
        };
        let Some(id) = self.slots.insert(std::iter::once(member), false) else {
            // take() checked for room; never reached.
            return Some(status::IOERR);
        };
        match disk.enqueue(id, request) {
            Ok(()) => {
                self.unsubmitted = true;
                None
            }
            Err(e) => refused(&mut self.slots, id, ctx.log, &e),
        }
    }

    /// Starts what was enqueued.
    fn submit(&mut self, ctx: &Ctx<'_>) {
        if !std::mem::take(&mut self.unsubmitted) {
            return;
        }
        if let Some(disk) = self.disk.as_mut() {
            // The requests stay queued; the next submit or reap retries.
            if let Err(e) = disk.submit() {
                guest_warn!(ctx.log, "virtio-blk: {}", ErrorChain(&e));
            }
        }
    }

    /// Without an event loop watching the completion fd: waits for every
    /// request in flight and completes it.
    fn wait_inline(
        &mut self,
        active: &mut ActiveQueues,
        q: u16,
        ctx: &Ctx<'_>,
    ) -> Result<usize, QueueError> {
        let mut used = 0;
        loop {
            let Some(disk) = self.disk.as_mut() else {
                return Ok(used);
            };
            if disk.in_flight() == 0 {
                return Ok(used);
            }
            if let Err(e) = disk.quiesce(&mut self.completions) {
                guest_warn!(ctx.log, "virtio-blk: {}", ErrorChain(&e));
                return Ok(used);
            }
            used += self.finish(active, q, ctx)?;
            self.submit(ctx);
        }
    }
}

/// A virtio block device serving a [`Disk`].
///
/// Disk queues are opened (and their worker threads, if any, started) at
/// construction and live as long as the device; reset waits for their
/// requests. See the module docs for the wiring.
pub struct Block {
    /// One per virtqueue. Declared before `active`, so that dropping the
    /// device drops the disk queues (which waits for requests in the
    /// kernel) before the guest memory they may still write.
    io: Vec<IoQueue>,
    active: Option<ActiveQueues>,
    disk: Arc<dyn Disk>,
    io_config: QueueConfig,
    info: DiskInfo,
    serial: DiskSerial,
    limits: DiskLimits,
    features: u64,
    queue_sizes: Vec<u16>,
    config: [u8; CONFIG_SIZE],
    write_through: bool,
    host_events: Option<Arc<dyn HostEvents>>,
    log: RateLimitedLog,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("queues", &self.io.len())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    /// A device serving `disk`, read-only if the disk is.
    pub fn new(disk: Arc<dyn Disk>, config: BlockConfig) -> Result<Block, BlockError> {
        if config.num_queues == 0 || config.num_queues > MAX_QUEUES {
            return Err(BlockError::NumQueues(config.num_queues));
        }
        if !config.queue_size.is_power_of_two() || config.queue_size < 2 {
            return Err(BlockError::QueueSize(config.queue_size));
        }
        let serial = match &config.serial {
            Some(s) => DiskSerial::new(s).map_err(BlockError::Serial)?,
            None => disk.serial(),
        };
        let info = disk.info();
        let limits = DiskLimits {
            capacity: info.size / SECTOR_SIZE,
            read_only: info.read_only,
            discard: info.discard && !info.read_only,
            write_zeroes: info.write_zeroes && !info.read_only,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS,
        };
        let mut features =
            features::SEG_MAX | features::BLK_SIZE | features::FLUSH | features::TOPOLOGY;
        if config.num_queues > 1 {
            features |= features::MQ;
        }
        if limits.read_only {
            features |= features::RO;
        }
        if limits.discard {
            features |= features::DISCARD;
        }
        if limits.write_zeroes {
            features |= features::WRITE_ZEROES;
        }
        let mut io = Vec::with_capacity(usize::from(config.num_queues));
        for i in 0..config.num_queues {
            let queue = disk
                .open_queue(&queue_config(&config.io, i))
                .map_err(|source| BlockError::OpenQueue { queue: i, source })?;
            io.push(IoQueue::new(queue));
        }
        let config_space = config_space(&info, &limits, config.num_queues, config.queue_size);
        Ok(Block {
            io,
            active: None,
            disk,
            io_config: config.io,
            info,
            serial,
            limits,
            features,
            queue_sizes: vec![config.queue_size; usize::from(config.num_queues)],
            config: config_space,
            write_through: false,
            host_events: None,
            log: RateLimitedLog::default(),
        })
    }

    /// The GET_ID serial.
    pub fn serial(&self) -> DiskSerial {
        self.serial
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// What the disk reported when the device was built.
    pub fn disk_info(&self) -> DiskInfo {
        self.info
    }

    /// Whether the device gave up on the driver (needs reset).
    pub fn is_broken(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.is_broken())
    }

    /// Requests of queue `q` handed to the disk and not completed yet.
    pub fn in_flight(&self, q: u16) -> usize {
        self.io.get(usize::from(q)).map_or(0, |io| io.slots.len)
    }

    /// The completion fds to watch, with their tokens (the queue index), as
    /// [`VirtioDevice::set_host_events`] registers them.
    pub fn completion_fds(&self) -> Vec<(RawFd, u32)> {
        self.io
            .iter()
            .enumerate()
            .filter_map(|(i, io)| io.fd().map(|fd| (fd, i as u32)))
            .collect()
    }

    /// Serves queue `q` (see [`IoQueue::service`]).
    fn service(&mut self, q: u16, reap: bool) {
        let Some(io) = self.io.get_mut(usize::from(q)) else {
            return;
        };
        let Some(active) = self.active.as_mut().filter(|a| a.usable(q)) else {
            // Not live, broken, or a queue the driver did not enable: free
            // the slots of whatever completed, touch nothing.
            if reap {
                io.reap(&self.log);
                io.discard_completions();
            }
            return;
        };
        let ctx = Ctx {
            limits: &self.limits,
            serial: &self.serial,
            log: &self.log,
            write_through: self.write_through,
            max_buffers: self.info.max_buffers.clamp(1, vireo_disk::MAX_BUFFERS),
        };
        if let Err(e) = io.service(active, q, &ctx, reap) {
            active.fail(q, &e);
        }
    }

    /// Waits for every request of queue `i` and forgets them; reopens the
    /// disk queue if that fails, so that nothing can write to guest memory
    /// afterwards.
    fn quiesce(&mut self, i: usize) {
        let Some(io) = self.io.get_mut(i) else {
            return;
        };
        if let Some(disk) = io.disk.as_mut() {
            if let Err(e) = disk.quiesce(&mut io.completions) {
                // A guest can reset at will: rate limited.
                guest_warn!(
                    self.log,
                    "virtio-blk: queue {i}: {}; reopening it",
                    ErrorChain(&e)
                );
                if let (Some(events), true, Some(fd)) = (&self.host_events, io.watched, io.fd()) {
                    events.unwatch(fd);
                }
                // Dropping waits for requests in the kernel and abandons
                // the rest.
                io.disk = None;
                io.watched = false;
                let q = i as u16; // i < MAX_QUEUES
                match self.disk.open_queue(&queue_config(&self.io_config, q)) {
                    Ok(disk) => {
                        io.disk = Some(disk);
                        io.watched = watch(self.host_events.as_deref(), io, q);
                    }
                    Err(e) => guest_warn!(
                        self.log,
                        "virtio-blk: cannot reopen queue {i}; its requests will fail: {}",
                        ErrorChain(&e)
                    ),
                }
            }
        }
        io.completions.clear();
        io.batch.clear();
        io.batch_bufs.clear();
        io.slots.reset(0);
        io.pending = false;
        io.unsubmitted = false;
    }
}

/// Queue `i`'s configuration.
fn queue_config(io: &QueueConfig, i: u16) -> QueueConfig {
    QueueConfig {
        name: format!("{}-q{i}", io.name),
        ..io.clone()
    }
}

/// Registers `io`'s completion fd with `events`; returns whether it is
/// watched.
fn watch(events: Option<&dyn HostEvents>, io: &IoQueue, q: u16) -> bool {
    let (Some(events), Some(fd)) = (events, io.fd()) else {
        return false;
    };
    match events.watch(fd, u32::from(q)) {
        Ok(()) => true,
        Err(e) => {
            log::error!(
                "virtio-blk: cannot watch queue {q}'s completions ({e}); \
                 its requests will be waited for inline"
            );
            false
        }
    }
}

/// `struct virtio_blk_config`, little-endian.
fn config_space(
    info: &DiskInfo,
    limits: &DiskLimits,
    num_queues: u16,
    queue_size: u16,
) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    let logical = info.logical_block_size.max(512);
    let physical = info.physical_block_size.max(logical);
    // Data segments per request: the ring minus header and status, and
    // what the disk takes.
    let seg_max = u32::from(queue_size.saturating_sub(2))
        .min(u32::try_from(info.max_buffers).unwrap_or(u32::MAX))
        .max(1);
    put(0, &limits.capacity.to_le_bytes()); // capacity
                                            // size_max (4) and geometry (16): their features are not offered.
    put(12, &seg_max.to_le_bytes()); // seg_max
    put(20, &logical.to_le_bytes()); // blk_size
                                     // physical_block_exp: logical blocks per physical block, log2.
    let exp = (physical / logical).max(1).trailing_zeros() as u8;
    put(24, &[exp]);
    // alignment_offset 0; min_io_size: one physical block, in logical
    // blocks; opt_io_size 0 (none).
    let min_io = u16::try_from(physical / logical).unwrap_or(u16::MAX);
    put(26, &min_io.to_le_bytes());
    // writeback: a write-back cache (FLUSH is offered; CONFIG_WCE is not,
    // so the driver cannot change it).
    put(32, &[1]);
    put(34, &num_queues.to_le_bytes()); // num_queues
    let align = logical / 512;
    put(36, &limits.max_discard_sectors.to_le_bytes());
    put(40, &1u32.to_le_bytes()); // max_discard_seg
    put(44, &align.to_le_bytes()); // discard_sector_alignment
    put(48, &limits.max_write_zeroes_sectors.to_le_bytes());
    put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(events) = &self.host_events {
            for io in &self.io {
                if let (true, Some(fd)) = (io.watched, io.fd()) {
                    events.unwatch(fd);
                }
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    // write_config: nothing is writable (VIRTIO_BLK_F_CONFIG_WCE is not
    // offered).

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != self.io.len() {
            return Err(ActivateError::QueueCount {
                expected: self.io.len(),
                got: queues.len(),
            });
        }
        if self.active.is_some() {
            self.reset();
        }
        for (io, q) in self.io.iter_mut().zip(&queues) {
            let cap = if q.ready() { usize::from(q.size()) } else { 0 };
            io.slots.reset(cap);
            io.pending = false;
        }
        // A driver without FLUSH expects every completed write durable.
        self.write_through = features & features::FLUSH == 0;
        self.active = Some(ActiveQueues::new("virtio-blk", mem, queues, interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        for i in 0..self.io.len() {
            self.quiesce(i);
        }
        self.active = None;
    }

    fn process_queue(&mut self, index: u16) {
        self.service(index, false);
    }

    fn queue_has_more(&self, index: u16) -> bool {
        self.active.is_some()
            && self
                .io
                .get(usize::from(index))
                .is_some_and(|io| io.budget_spent)
    }

    fn set_host_events(&mut self, events: Arc<dyn HostEvents>) {
        if let Some(old) = self.host_events.take() {
            for io in &mut self.io {
                if let (true, Some(fd)) = (io.watched, io.fd()) {
                    old.unwatch(fd);
                }
                io.watched = false;
            }
        }
        for (i, io) in self.io.iter_mut().enumerate() {
            io.watched = watch(Some(&*events), io, i as u16);
        }
        self.host_events = Some(events);
    }

    fn host_event(&mut self, token: u32) {
        let Ok(q) = u16::try_from(token) else {
            return;
        };
        self.service(q, true);
    }
}
