//! The thread-pool engine: a few named worker threads run requests with
//! blocking system calls (preadv, pwritev, fdatasync, fallocate, block
//! device ioctls) and post completions to the queue's eventfd.
//!
//! The queue's side collects enqueued requests in a local batch and hands
//! the batch over under one lock at [`PoolEngine::submit`]. Buffer lists
//! travel with their request and come back with its completion, to be
//! reused: after warm-up nothing is allocated per request.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::engine::exec::{self, Scratch};
use crate::engine::JobSpec;
use crate::file::FileCtx;
use crate::image::Image;
use crate::sys::EventFd;
use crate::{Completion, IoBuf, QueueError};
use std::path::Path;

/// A request on its way to or from a worker.
struct PoolJob {
    spec: JobSpec,
    bufs: Vec<IoBuf>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<PoolJob>,
    /// Completions with the buffer lists to recycle.
    done: Vec<(Completion, Vec<IoBuf>)>,
    stop: bool,
}

/// What the workers run requests against.
pub(crate) enum Target {
    /// A raw file or block device, with system calls.
    File(Arc<FileCtx>),
    /// A disk image format, through its blocking [`Image`] methods.
    Image(Arc<dyn Image>),
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    target: Target,
    path: Arc<Path>,
    eventfd: Arc<EventFd>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock, and the state stays
        // consistent even if one did: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) struct PoolEngine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Enqueued, not yet handed to the workers.
    batch: Vec<PoolJob>,
    /// Buffer lists to reuse.
    spare: Vec<Vec<IoBuf>>,
    /// Completions moved out of the shared state, with their buffer lists.
    reaped: Vec<(Completion, Vec<IoBuf>)>,
    in_flight: usize,
}

impl PoolEngine {
    /// Starts `workers` threads named "`name`-`n`" (cut to 15 bytes).
    pub(crate) fn new(
        file: Arc<FileCtx>,
        eventfd: Arc<EventFd>,
        workers: usize,
        name: &str,
    ) -> Result<Self, QueueError> {
        let path = file.path.clone();
        Self::with_target(Target::File(file), path, eventfd, workers, name)
    }

    /// Starts `workers` threads running requests against `target`.
    pub(crate) fn with_target(
        target: Target,
        path: Arc<Path>,
        eventfd: Arc<EventFd>,
        workers: usize,
        name: &str,
    ) -> Result<Self, QueueError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            target,
            path,
            eventfd,
        });
        let mut engine = Self {
            shared: shared.clone(),
            workers: Vec::with_capacity(workers),
            batch: Vec::new(),
            spare: Vec::new(),
            reaped: Vec::new(),
            in_flight: 0,
        };
        for n in 0..workers {
            let thread_name = thread_name(name, n);
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || worker(&shared))
                .map_err(|source| QueueError::SpawnWorker {
                    path: engine.shared.path.clone(),
                    name: thread_name,
                    source,
                })?;
            // On error the engine is dropped here, stopping the workers
            // already started.
            engine.workers.push(handle);
        }
        Ok(engine)
    }

    pub(crate) fn eventfd(&self) -> &EventFd {
        &self.shared.eventfd
    }

    /// Adds a request to the batch.
    pub(crate) fn push(&mut self, spec: JobSpec, bufs: &[IoBuf]) {
        let mut list = self.spare.pop().unwrap_or_default();
        list.extend_from_slice(bufs);
        self.batch.push(PoolJob { spec, bufs: list });
        self.in_flight += 1;
    }

    /// Hands the batch to the workers.
    pub(crate) fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let count = self.batch.len();
        {
            let mut state = self.shared.lock();
            state.queue.extend(self.batch.drain(..));
        }
        if count >= self.workers.len() {
            self.shared.work.notify_all();
        } else {
            for _ in 0..count {
                self.shared.work.notify_one();
            }
        }
    }

    /// Resets the eventfd, then moves finished requests to `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.shared.eventfd.clear();
        self.collect(out)
    }

    /// Moves finished requests to `out`, leaving the eventfd alone: for the
    /// io_uring engine, which shares it and resets it itself before looking
    /// at either source (resetting it here could lose a ring completion that
    /// arrived in between).
    pub(crate) fn collect(&mut self, out: &mut Vec<Completion>) -> usize {
        {
            let mut state = self.shared.lock();
            std::mem::swap(&mut state.done, &mut self.reaped);
        }
        let count = self.reaped.len();
        for (completion, mut list) in self.reaped.drain(..) {
            out.push(completion);
            list.clear();
            self.spare.push(list);
        }
        self.in_flight -= count;
        count
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for PoolEngine {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            // Requests no worker has started are abandoned.
            state.queue.clear();
        }
        self.shared.work.notify_all();
        // Each worker finishes the request it is running (which may still
        // use its buffers) before it exits.
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                log::error!(
                    "an I/O worker thread of {} panicked",
                    self.shared.path.display()
                );
            }
        }
    }
}

fn thread_name(name: &str, n: usize) -> String {
    let mut text = format!("{name}-{n}");
    // Linux keeps 15 bytes of a thread name; cut on a character boundary.
    while text.len() > 15 {
        text.pop();
    }
    text
}

fn worker(shared: &Shared) {
    let mut scratch = Scratch::default();
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        let Some(mut job) = state.queue.pop_front() else {
            state = shared
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        };
        drop(state);
        let result = match &shared.target {
            Target::File(file) => exec::execute(file, &job.spec, &mut job.bufs, &mut scratch),
            Target::Image(image) => {
                exec::execute_image(&**image, &shared.path, &job.spec, &job.bufs)
            }
        };
        let completion = Completion {
            id: job.spec.id,
            result,
        };
        state = shared.lock();
        state.done.push((completion, job.bufs));
        shared.eventfd.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_fit_linux_limit() {
        assert_eq!(thread_name("vda-q0", 3), "vda-q0-3");
        assert_eq!(thread_name("a-very-long-disk-name", 12).len(), 15);
    }
}
