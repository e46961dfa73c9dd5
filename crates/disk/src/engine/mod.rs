//! The I/O engines behind a queue: io_uring ([`uring`]) and a thread pool
//! ([`pool`]), with the same crate-internal interface, [`Engine`].
//!
//! Requests reach an engine already checked (range, read-only, alignment) as
//! a [`JobSpec`] plus the request's buffer list, which the engine copies into
//! storage it recycles, so the steady state allocates nothing.

pub(crate) mod exec;
pub(crate) mod pool;
pub(crate) mod uring;

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::error::Extent;
use crate::file::FileCtx;
use crate::sys::EventFd;
use crate::{
    Completion, EngineKind, IoBuf, Operation, QueueConfig, QueueError, Request, RequestError,
    MAX_BUFFERS,
};

pub(crate) use pool::PoolEngine;
pub(crate) use uring::UringEngine;

/// The largest io_uring depth a queue may ask for.
pub(crate) const MAX_DEPTH: u32 = 4096;
/// The most worker threads a thread-pool queue may ask for.
pub(crate) const MAX_WORKERS: usize = 64;

/// What one checked request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// `bounce`: O_DIRECT with buffers the kernel would refuse, copied
    /// through an aligned buffer.
    Read {
        bounce: bool,
    },
    Write {
        bounce: bool,
    },
    Flush,
    Discard,
    WriteZeroes {
        unmap: bool,
    },
    /// Nothing to do (an empty discard or write-zeroes): completes at once.
    Nop(Operation),
}

impl JobKind {
    pub(crate) fn operation(self) -> Operation {
        match self {
            Self::Read { .. } => Operation::Read,
            Self::Write { .. } => Operation::Write,
            Self::Flush => Operation::Flush,
            Self::Discard => Operation::Discard,
            Self::WriteZeroes { .. } => Operation::WriteZeroes,
            Self::Nop(op) => op,
        }
    }
}

/// One checked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JobSpec {
    pub(crate) id: u64,
    pub(crate) kind: JobKind,
    pub(crate) offset: u64,
    /// Bytes: the buffers' total for reads and writes.
    pub(crate) len: u64,
}

impl JobSpec {
    pub(crate) fn extent(&self) -> Extent {
        Extent {
            op: self.kind.operation(),
            offset: self.offset,
            len: self.len,
        }
    }
}

/// The checks every disk makes before queueing a request: read-only,
/// buffer count, range. Returns the job (an empty discard or write-zeroes
/// becomes a no-op) and the request's buffers.
pub(crate) fn check_request<'a>(
    path: &Arc<std::path::Path>,
    read_only: bool,
    size: u64,
    id: u64,
    request: &Request<'a>,
) -> Result<(JobSpec, &'a [IoBuf]), RequestError> {
    let (kind, offset, len, bufs) = match *request {
        Request::Read { offset, bufs } => (
            JobKind::Read { bounce: false },
            offset,
            total_len(bufs),
            bufs,
        ),
        Request::Write { offset, bufs } => (
            JobKind::Write { bounce: false },
            offset,
            total_len(bufs),
            bufs,
        ),
        Request::Flush => (JobKind::Flush, 0, 0, &[][..]),
        Request::Discard { offset, len } => (JobKind::Discard, offset, len, &[][..]),
        Request::WriteZeroes { offset, len, unmap } => {
            (JobKind::WriteZeroes { unmap }, offset, len, &[][..])
        }
    };
    let op = kind.operation();
    let extent = Extent { op, offset, len };
    if read_only && op.modifies() {
        return Err(RequestError::ReadOnly {
            path: path.clone(),
            op,
        });
    }
    if bufs.len() > MAX_BUFFERS {
        return Err(RequestError::TooManyBuffers {
            path: path.clone(),
            extent,
            count: bufs.len(),
            max: MAX_BUFFERS,
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(RequestError::OutOfRange {
            path: path.clone(),
            extent,
            size,
        });
    }
    let kind = if len == 0 && matches!(kind, JobKind::Discard | JobKind::WriteZeroes { .. }) {
        JobKind::Nop(op)
    } else {
        kind
    };
    Ok((
        JobSpec {
            id,
            kind,
            offset,
            len,
        },
        bufs,
    ))
}

fn total_len(bufs: &[IoBuf]) -> u64 {
    // Saturates instead of overflowing: such a request is out of range.
    bufs.iter()
        .fold(0u64, |sum, b| sum.saturating_add(b.len() as u64))
}

/// A queue's engine.
pub(crate) enum Engine {
    /// Boxed: the ring and its bookkeeping are much larger than the pool's
    /// handle, and the box is allocated once per queue.
    Uring(Box<UringEngine>),
    Pool(PoolEngine),
}

impl Engine {
    /// Sets up the engine `config` asks for: with [`EngineKind::Auto`],
    /// io_uring unless this host lacks or forbids it.
    pub(crate) fn open(file: &Arc<FileCtx>, config: &QueueConfig) -> Result<Self, QueueError> {
        let invalid = |reason: String| QueueError::InvalidConfig {
            path: file.path.clone(),
            reason,
        };
        if config.depth == 0 || config.depth > MAX_DEPTH {
            return Err(invalid(format!(
                "depth {} is outside 1..={MAX_DEPTH}",
                config.depth
            )));
        }
        if config.workers == 0 || config.workers > MAX_WORKERS {
            return Err(invalid(format!(
                "{} workers is outside 1..={MAX_WORKERS}",
                config.workers
            )));
        }
        let eventfd = EventFd::new().map_err(|source| QueueError::EventFd {
            path: file.path.clone(),
            source,
        })?;
        let eventfd = Arc::new(eventfd);
        let chosen = choose(
            config.engine,
            || UringEngine::new(file.clone(), eventfd.clone(), config),
            || PoolEngine::new(file.clone(), eventfd.clone(), config.workers, &config.name),
        )?;
        Ok(match chosen {
            Choice::Uring(engine) => Self::Uring(Box::new(engine)),
            Choice::Pool(engine) => Self::Pool(engine),
        })
    }

    pub(crate) fn kind(&self) -> EngineKind {
        match self {
            Self::Uring(_) => EngineKind::IoUring,
            Self::Pool(_) => EngineKind::ThreadPool,
        }
    }

    pub(crate) fn push(&mut self, spec: JobSpec, bufs: &[IoBuf]) -> Result<(), RequestError> {
        match self {
            Self::Uring(engine) => engine.push(spec, bufs),
            Self::Pool(engine) => {
                engine.push(spec, bufs);
                Ok(())
            }
        }
    }

    pub(crate) fn submit(&mut self) -> Result<(), QueueError> {
        match self {
            Self::Uring(engine) => engine.submit(),
            Self::Pool(engine) => {
                engine.submit();
                Ok(())
            }
        }
    }

    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize, QueueError> {
        match self {
            Self::Uring(engine) => engine.reap(out),
            Self::Pool(engine) => Ok(engine.reap(out)),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Self::Uring(engine) => engine.in_flight(),
            Self::Pool(engine) => engine.in_flight(),
        }
    }

    pub(crate) fn completion_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Self::Uring(engine) => engine.eventfd().as_fd(),
            Self::Pool(engine) => engine.eventfd().as_fd(),
        }
    }
}

/// The engine [`choose`] picked.
#[derive(Debug)]
enum Choice<U, P> {
    Uring(U),
    Pool(P),
}

/// Picks the engine: `Auto` tries io_uring and falls back to the pool only
/// when io_uring is missing or forbidden (ENOSYS, EPERM, ...), not on other
/// failures, which the pool would likely hit too.
fn choose<U, P>(
    kind: EngineKind,
    uring: impl FnOnce() -> Result<U, QueueError>,
    pool: impl FnOnce() -> Result<P, QueueError>,
) -> Result<Choice<U, P>, QueueError> {
    match kind {
        EngineKind::IoUring => uring().map(Choice::Uring),
        EngineKind::ThreadPool => pool().map(Choice::Pool),
        EngineKind::Auto => match uring() {
            Ok(engine) => Ok(Choice::Uring(engine)),
            Err(err) if err.is_uring_unavailable() => {
                log::info!("{}; using the thread-pool I/O engine", error_chain(&err));
                pool().map(Choice::Pool)
            }
            Err(err) => Err(err),
        },
    }
}

/// "error: cause: cause" for a log line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::Path;

    fn unavailable(errno: i32) -> QueueError {
        uring::classify_setup_error(
            Path::new("/d.img").into(),
            8,
            io::Error::from_raw_os_error(errno),
        )
    }

    #[test]
    fn auto_falls_back_to_the_pool_when_io_uring_is_missing_or_forbidden() {
        for errno in [libc::ENOSYS, libc::EPERM, libc::EACCES] {
            let chosen = choose(
                EngineKind::Auto,
                || Err::<(), _>(unavailable(errno)),
                || Ok(()),
            );
            assert!(matches!(chosen, Ok(Choice::Pool(()))), "errno {errno}");
        }
        let missing_op = QueueError::UringMissingOp {
            path: Path::new("/d.img").into(),
            opcode: "READV",
        };
        let chosen = choose(EngineKind::Auto, || Err::<(), _>(missing_op), || Ok(()));
        assert!(matches!(chosen, Ok(Choice::Pool(()))));
    }

    #[test]
    fn auto_prefers_io_uring_and_reports_other_failures() {
        let chosen = choose(EngineKind::Auto, || Ok(1), || Ok(2));
        assert!(matches!(chosen, Ok(Choice::Uring(1))));
        let chosen = choose(
            EngineKind::Auto,
            || Err::<(), _>(unavailable(libc::EINVAL)),
            || Ok(()),
        );
        assert!(matches!(chosen, Err(QueueError::UringSetup { .. })));
    }

    #[test]
    fn an_explicit_engine_is_used_or_fails() {
        let chosen = choose(
            EngineKind::IoUring,
            || Err::<(), _>(unavailable(libc::ENOSYS)),
            || Ok(()),
        );
        assert!(matches!(chosen, Err(QueueError::UringUnavailable { .. })));
        let chosen = choose(
            EngineKind::ThreadPool,
            || -> Result<(), QueueError> { panic!("io_uring must not be tried") },
            || Ok(()),
        );
        assert!(matches!(chosen, Ok(Choice::Pool(()))));
    }
}
