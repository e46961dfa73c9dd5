//! The io_uring engine.
//!
//! Each request takes a slot (its index is the SQE's user data) holding its
//! buffer list; slots are recycled, so the steady state allocates nothing.
//! At most `depth` requests are in the kernel at once, which keeps the
//! completion queue (twice as large) from overflowing; the rest wait in
//! `ready` and go in as completions make room. Requests are pushed to the
//! submission queue as they are enqueued and entered with one
//! `io_uring_enter` per [`UringEngine::submit`]. The kernel signals the
//! queue's eventfd (registered with the ring) on every completion.
//!
//! What io_uring cannot express goes to a helper thread pool (one worker,
//! started on first use) sharing the eventfd: block-device discard and
//! write-zeroes (ioctls), O_DIRECT requests needing a bounce buffer, and
//! write-zeroes on file systems without FALLOC_FL_ZERO_RANGE.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};

use crate::engine::exec::{short_transfer, PUNCH_HOLE, ZERO_RANGE};
use crate::engine::{JobKind, JobSpec, PoolEngine};
use crate::file::FileCtx;
use crate::iobuf::advance_bufs;
use crate::sys::EventFd;
use crate::{Completion, IoBuf, QueueConfig, QueueError, RequestError};

/// A request owned by the ring.
#[derive(Debug)]
struct Slot {
    spec: JobSpec,
    bufs: Vec<IoBuf>,
    /// First buffer not yet fully transferred.
    start: usize,
    /// Bytes transferred so far (short transfers are continued).
    done: u64,
}

impl Slot {
    fn empty() -> Self {
        Self {
            spec: JobSpec {
                id: 0,
                kind: JobKind::Flush,
                offset: 0,
                len: 0,
            },
            bufs: Vec::new(),
            start: 0,
            done: 0,
        }
    }
}

pub(crate) struct UringEngine {
    ring: IoUring,
    file: Arc<FileCtx>,
    eventfd: Arc<EventFd>,
    /// The file is registered as fixed file 0.
    fixed_file: bool,
    /// The kernel has IORING_OP_FALLOCATE (5.6).
    has_fallocate: bool,
    depth: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots waiting for room in the kernel.
    ready: VecDeque<u32>,
    /// Slots pushed to the submission queue and not yet completed.
    in_kernel: usize,
    /// Pushed to the submission queue but not yet entered.
    unsubmitted: usize,
    /// Completion queue entries copied out of the ring: (slot, result).
    cqes: Vec<(u64, i32)>,
    helper: Option<PoolEngine>,
    helper_name: String,
}

/// Sorts an io_uring setup failure: missing or forbidden (the thread pool
/// should take over) or a real failure.
pub(crate) fn classify_setup_error(path: Arc<Path>, depth: u32, source: io::Error) -> QueueError {
    match source.raw_os_error() {
        // ENOSYS: no io_uring in this kernel; EPERM/EACCES: disabled by
        // sysctl kernel.io_uring_disabled, seccomp or an LSM; ENOMEM: locked
        // memory limit on kernels before 5.12.
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::ENOMEM) => {
            QueueError::UringUnavailable { path, source }
        }
        _ => QueueError::UringSetup {
            path,
            depth,
            source,
        },
    }
}

impl UringEngine {
    pub(crate) fn new(
        file: Arc<FileCtx>,
        eventfd: Arc<EventFd>,
        config: &QueueConfig,
    ) -> Result<Self, QueueError> {
        let path = file.path.clone();
        let ring = IoUring::builder()
            .build(config.depth)
            .map_err(|e| classify_setup_error(path.clone(), config.depth, e))?;

        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            // Probing arrived in 5.6, with the operations we need.
            .map_err(|source| QueueError::UringUnavailable {
                path: path.clone(),
                source,
            })?;
        for (code, opcode) in [
            (opcode::Readv::CODE, "READV"),
            (opcode::Writev::CODE, "WRITEV"),
            (opcode::Fsync::CODE, "FSYNC"),
            (opcode::Nop::CODE, "NOP"),
        ] {
            if !probe.is_supported(code) {
                return Err(QueueError::UringMissingOp {
                    path: path.clone(),
                    opcode,
                });
            }
        }
        let has_fallocate = probe.is_supported(opcode::Fallocate::CODE);

        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(|source| QueueError::UringSetup {
                path: path.clone(),
                depth: config.depth,
                source,
            })?;
        // A fixed file spares the kernel a file-table lookup per request.
        let fixed_file = match ring.submitter().register_files(&[file.raw_fd()]) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("{}: io_uring file registration failed: {e}", path.display());
                false
            }
        };

        let depth = usize::try_from(config.depth).unwrap_or(usize::MAX);
        Ok(Self {
            ring,
            file,
            eventfd,
            fixed_file,
            has_fallocate,
            depth,
            slots: Vec::with_capacity(depth),
            free: Vec::with_capacity(depth),
            ready: VecDeque::with_capacity(depth),
            in_kernel: 0,
            unsubmitted: 0,
            cqes: Vec::with_capacity(depth * 2),
            helper: None,
            helper_name: format!("{}-aux", config.name),
        })
    }

    pub(crate) fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() + self.helper.as_ref().map_or(0, PoolEngine::in_flight)
    }

    /// Whether io_uring can run this request itself.
    fn runs_in_ring(&self, kind: JobKind) -> bool {
        match kind {
            JobKind::Read { bounce } | JobKind::Write { bounce } => !bounce,
            JobKind::Flush | JobKind::Nop(_) => true,
            JobKind::Discard => self.has_fallocate && !self.file.block_device,
            JobKind::WriteZeroes { .. } => {
                self.has_fallocate && !self.file.block_device && self.file.zero_range_supported()
            }
        }
    }

    fn helper(&mut self) -> Result<&mut PoolEngine, io::Error> {
        match &mut self.helper {
            Some(helper) => Ok(helper),
            slot @ None => {
                let helper = PoolEngine::new(
                    self.file.clone(),
                    self.eventfd.clone(),
                    1,
                    &self.helper_name,
                )
                .map_err(|e| match e {
                    QueueError::SpawnWorker { source, .. } => source,
                    other => io::Error::other(other.to_string()),
                })?;
                Ok(slot.insert(helper))
            }
        }
    }

    /// Hands a request to the helper pool (and starts it at once: the
    /// helper has no batching of its own to wait for).
    fn push_to_helper(&mut self, spec: JobSpec, bufs: &[IoBuf]) -> Result<(), RequestError> {
        let file = self.file.clone();
        let helper = self.helper().map_err(|e| file.io_error(&spec, e))?;
        helper.push(spec, bufs);
        helper.submit();
        Ok(())
    }

    pub(crate) fn push(&mut self, spec: JobSpec, bufs: &[IoBuf]) -> Result<(), RequestError> {
        if !self.runs_in_ring(spec.kind) {
            return self.push_to_helper(spec, bufs);
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let Ok(index) = u32::try_from(self.slots.len()) else {
                    return Err(self
                        .file
                        .io_error(&spec, io::Error::from_raw_os_error(libc::EBUSY)));
                };
                self.slots.push(Slot::empty());
                index
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.spec = spec;
        slot.bufs.clear();
        slot.bufs.extend_from_slice(bufs);
        slot.start = 0;
        slot.done = 0;
        advance_bufs(&mut slot.bufs, &mut slot.start, 0);
        self.ready.push_back(index);
        self.fill_sq();
        Ok(())
    }

    /// The submission queue entry for a slot's (remaining) work.
    fn entry(&self, index: u32) -> squeue::Entry {
        let slot = &self.slots[index as usize];
        let spec = &slot.spec;
        let rest = &slot.bufs[slot.start..];
        let iov = IoBuf::as_iovecs(rest);
        // At most MAX_BUFFERS (1024): checked when the request was enqueued.
        let count = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let offset = spec.offset + slot.done;
        macro_rules! target {
            (|$fd:ident| $build:expr) => {
                if self.fixed_file {
                    let $fd = types::Fixed(0);
                    $build
                } else {
                    let $fd = types::Fd(self.file.raw_fd());
                    $build
                }
            };
        }
        let entry = match spec.kind {
            JobKind::Read { .. } => {
                target!(|fd| opcode::Readv::new(fd, iov, count).offset(offset).build())
            }
            JobKind::Write { .. } => {
                target!(|fd| opcode::Writev::new(fd, iov, count).offset(offset).build())
            }
            JobKind::Flush => target!(|fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            JobKind::Discard => target!(|fd| opcode::Fallocate::new(fd, spec.len)
                .offset(spec.offset)
                .mode(PUNCH_HOLE)
                .build()),
            JobKind::WriteZeroes { .. } => target!(|fd| opcode::Fallocate::new(fd, spec.len)
                .offset(spec.offset)
                .mode(ZERO_RANGE)
                .build()),
            JobKind::Nop(_) => opcode::Nop::new().build(),
        };
        entry.user_data(u64::from(index))
    }

    /// Moves waiting slots into the submission queue while the kernel has
    /// room for them.
    fn fill_sq(&mut self) {
        while self.in_kernel < self.depth {
            let Some(&index) = self.ready.front() else {
                break;
            };
            let entry = self.entry(index);
            // SAFETY: the entry's buffer list lives in the slot, untouched
            // until the slot's completion is reaped; the buffers themselves
            // obey the IoBuf contract; the engine waits for every entry in
            // the kernel before it is dropped.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                break;
            }
            self.ready.pop_front();
            self.in_kernel += 1;
            self.unsubmitted += 1;
        }
    }

    pub(crate) fn submit(&mut self) -> Result<(), QueueError> {
        self.fill_sq();
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(n) => {
                    self.unsubmitted = self.unsubmitted.saturating_sub(n);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of kernel resources for now: the entries stay in the
                // submission queue and go in at the next submit or reap. If
                // nothing is in the kernel to complete and so trigger that
                // reap, signal the eventfd ourselves.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    if self.in_kernel == self.unsubmitted {
                        self.eventfd.notify();
                    }
                    break;
                }
                Err(source) => {
                    return Err(QueueError::Submit {
                        path: self.file.path.clone(),
                        source,
                    })
                }
            }
        }
        if let Some(helper) = &mut self.helper {
            helper.submit();
        }
        Ok(())
    }

    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize, QueueError> {
        let before = out.len();
        // Reset the eventfd before looking at the ring and the helper, so a
        // completion arriving meanwhile leaves it signalled.
        self.eventfd.clear();
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            if cqes.is_empty() {
                break;
            }
            for &(user_data, result) in &cqes {
                self.complete(user_data, result, out);
            }
        }
        self.cqes = cqes;
        // Completions made room: start what was waiting.
        if !self.ready.is_empty() || self.unsubmitted > 0 {
            self.submit()?;
        }
        if let Some(helper) = &mut self.helper {
            helper.collect(out);
        }
        Ok(out.len() - before)
    }

    /// Handles one completion queue entry.
    fn complete(&mut self, user_data: u64, result: i32, out: &mut Vec<Completion>) {
        let Some(index) = u32::try_from(user_data)
            .ok()
            .filter(|&i| (i as usize) < self.slots.len())
        else {
            log::error!("io_uring returned unknown user data {user_data:#x}");
            return;
        };
        self.in_kernel = self.in_kernel.saturating_sub(1);
        let slot = &mut self.slots[index as usize];
        let spec = slot.spec;
        if result < 0 {
            let errno = -result;
            if errno == libc::EINTR || errno == libc::EAGAIN {
                self.ready.push_front(index);
                return;
            }
            let source = io::Error::from_raw_os_error(errno);
            if matches!(spec.kind, JobKind::WriteZeroes { .. })
                && crate::error::is_unsupported_errno(&source)
            {
                // The helper knows the fallbacks.
                self.file.set_zero_range_unsupported();
                self.release(index);
                if let Err(err) = self.push_to_helper(spec, &[]) {
                    out.push(Completion {
                        id: spec.id,
                        result: Err(err),
                    });
                }
                return;
            }
            let err = self.file.io_error(&spec, source);
            self.finish(index, Err(err), out);
            return;
        }
        let n = u64::try_from(result).unwrap_or(0);
        match spec.kind {
            JobKind::Read { .. } | JobKind::Write { .. } => {
                slot.done += n;
                if slot.done >= spec.len {
                    self.finish(index, Ok(spec.len), out);
                } else if n == 0 {
                    let read = matches!(spec.kind, JobKind::Read { .. });
                    let err = short_transfer(&self.file, &spec, slot.done, read);
                    self.finish(index, Err(err), out);
                } else {
                    // Short transfer: continue with the rest, first.
                    advance_bufs(&mut slot.bufs, &mut slot.start, n as usize);
                    self.ready.push_front(index);
                }
            }
            _ => self.finish(index, Ok(0), out),
        }
    }

    fn finish(&mut self, index: u32, result: Result<u64, RequestError>, out: &mut Vec<Completion>) {
        let id = self.slots[index as usize].spec.id;
        out.push(Completion { id, result });
        self.release(index);
    }

    fn release(&mut self, index: u32) {
        self.slots[index as usize].bufs.clear();
        self.free.push(index);
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still be writing into the buffers of requests in
        // flight: wait for all of them before the memory can go away.
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!(
                        "cannot wait for the I/O in flight on {}: {e}",
                        self.file.path.display()
                    );
                    return;
                }
            }
            let completed = self.ring.completion().count();
            self.in_kernel = self.in_kernel.saturating_sub(completed);
        }
    }
}
