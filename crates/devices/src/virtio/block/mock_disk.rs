//! A scripted disk for the device tests: requests wait until the test
//! completes them, so what a real disk cannot show deterministically (how
//! many requests are in flight, errors, write-through) can be checked.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vireo_disk::{
    Completion, Disk, DiskInfo, DiskQueue, DiskSerial, EngineKind, Extent, Operation, QueueConfig,
    Request, RequestError,
};

pub(super) const DISK_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MockReq {
    pub(super) queue: usize,
    pub(super) id: u64,
    pub(super) op: Operation,
    pub(super) offset: u64,
    pub(super) len: u64,
    /// Host buffers: (address, length).
    pub(super) bufs: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
pub(super) struct MockState {
    /// Enqueued, not completed.
    pub(super) pending: Vec<MockReq>,
    /// Completed, not reaped: (queue, completion).
    pub(super) done: Vec<(usize, Completion)>,
    /// Every request enqueued.
    pub(super) history: Vec<MockReq>,
    /// Refuse requests at enqueue with this errno.
    pub(super) refuse: Option<i32>,
    pub(super) quiesces: usize,
}

#[derive(Debug)]
pub(super) struct MockDisk {
    pub(super) info: DiskInfo,
    pub(super) state: Arc<Mutex<MockState>>,
    pub(super) fds: Mutex<Vec<Arc<OwnedFd>>>,
    pub(super) fail_open: bool,
}

pub(super) fn mock_info() -> DiskInfo {
    DiskInfo {
        size: DISK_SIZE + 100,
        logical_block_size: 512,
        physical_block_size: 4096,
        read_only: false,
        direct: false,
        discard: true,
        write_zeroes: true,
        max_buffers: vireo_disk::MAX_BUFFERS,
    }
}

pub(super) fn mock_error(op: Operation, errno: i32) -> RequestError {
    RequestError::Io {
        path: Arc::from(Path::new("mock.img")),
        extent: Extent {
            op,
            offset: 0,
            len: 0,
        },
        source: std::io::Error::from_raw_os_error(errno),
    }
}

pub(super) fn eventfd_write(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let one = 1u64;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

pub(super) fn eventfd_clear(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let mut v = 0u64;
    // SAFETY: reads at most 8 bytes into a valid u64; the fd is
    // non-blocking, so an empty eventfd fails with EAGAIN.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

impl MockDisk {
    pub(super) fn new(info: DiskInfo) -> Arc<MockDisk> {
        Arc::new(MockDisk {
            info,
            state: Arc::default(),
            fds: Mutex::default(),
            fail_open: false,
        })
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, MockState> {
        self.state.lock().expect("not poisoned")
    }

    pub(super) fn pending(&self) -> Vec<MockReq> {
        self.state().pending.clone()
    }

    /// Completes pending request `id` of `queue` with `result`.
    pub(super) fn complete(&self, queue: usize, id: u64, result: Result<u64, RequestError>) {
        let mut st = self.state();
        let i = st
            .pending
            .iter()
            .position(|r| r.queue == queue && r.id == id)
            .expect("a pending request");
        st.pending.remove(i);
        st.done.push((queue, Completion { id, result }));
        eventfd_write(self.fds.lock().expect("not poisoned")[queue].as_fd());
    }

    /// Completes every pending request of `queue` successfully.
    pub(super) fn complete_all(&self, queue: usize) {
        let ids: Vec<(u64, u64)> = self
            .pending()
            .iter()
            .filter(|r| r.queue == queue)
            .map(|r| (r.id, r.len))
            .collect();
        for (id, len) in ids {
            self.complete(queue, id, Ok(len));
        }
    }
}

impl Disk for MockDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn serial(&self) -> DiskSerial {
        DiskSerial::new("MOCK-SERIAL").expect("valid")
    }

    fn open_queue(
        &self,
        _config: &QueueConfig,
    ) -> Result<Box<dyn DiskQueue>, vireo_disk::QueueError> {
        if self.fail_open {
            return Err(vireo_disk::QueueError::InvalidConfig {
                path: Arc::from(Path::new("mock.img")),
                reason: "refused by the test".to_owned(),
            });
        }
        // SAFETY: eventfd(2) takes no pointers.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(raw >= 0, "eventfd");
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let mut fds = self.fds.lock().expect("not poisoned");
        fds.push(fd.clone());
        Ok(Box::new(MockQueue {
            index: fds.len() - 1,
            fd,
            state: self.state.clone(),
        }))
    }
}

#[derive(Debug)]
pub(super) struct MockQueue {
    index: usize,
    fd: Arc<OwnedFd>,
    pub(super) state: Arc<Mutex<MockState>>,
}

impl DiskQueue for MockQueue {
    fn engine(&self) -> EngineKind {
        EngineKind::ThreadPool
    }

    fn enqueue(&mut self, id: u64, request: Request<'_>) -> Result<(), RequestError> {
        let (op, offset, len, bufs) = match request {
            Request::Read { offset, bufs } => (Operation::Read, offset, 0, bufs),
            Request::Write { offset, bufs } => (Operation::Write, offset, 0, bufs),
            Request::Flush => (Operation::Flush, 0, 0, &[][..]),
            Request::Discard { offset, len } => (Operation::Discard, offset, len, &[][..]),
            Request::WriteZeroes { offset, len, .. } => {
                (Operation::WriteZeroes, offset, len, &[][..])
            }
        };
        let mut st = self.state.lock().expect("not poisoned");
        if let Some(errno) = st.refuse {
            return Err(mock_error(op, errno));
        }
        let bufs: Vec<(usize, usize)> = bufs
            .iter()
            .map(|b| (b.as_ptr() as usize, b.len()))
            .collect();
        let len = len + bufs.iter().map(|b| b.1 as u64).sum::<u64>();
        let r = MockReq {
            queue: self.index,
            id,
            op,
            offset,
            len,
            bufs,
        };
        st.history.push(r.clone());
        st.pending.push(r);
        Ok(())
    }

    fn submit(&mut self) -> Result<(), vireo_disk::QueueError> {
        Ok(())
    }

    fn completion_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize, vireo_disk::QueueError> {
        eventfd_clear(self.fd.as_fd());
        let mut st = self.state.lock().expect("not poisoned");
        let before = out.len();
        let done = std::mem::take(&mut st.done);
        for (q, c) in done {
            if q == self.index {
                out.push(c);
            } else {
                st.done.push((q, c));
            }
        }
        Ok(out.len() - before)
    }

    fn in_flight(&self) -> usize {
        let st = self.state.lock().expect("not poisoned");
        st.pending.iter().filter(|r| r.queue == self.index).count()
            + st.done.iter().filter(|(q, _)| *q == self.index).count()
    }

    fn quiesce(&mut self, out: &mut Vec<Completion>) -> Result<(), vireo_disk::QueueError> {
        {
            let mut st = self.state.lock().expect("not poisoned");
            st.quiesces += 1;
            let index = self.index;
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
                .into_iter()
                .partition(|r| r.queue == index);
            st.pending = rest;
            for r in mine {
                st.done.push((
                    index,
                    Completion {
                        id: r.id,
                        result: Ok(r.len),
                    },
                ));
            }
        }
        self.reap(out).map(|_| ())
    }
}
