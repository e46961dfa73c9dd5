//! [`ImageDisk`]: any [`Image`] (qcow2, a backing chain) served to
//! virtio-blk as a [`Disk`]. Requests run on a queue's worker threads
//! through the image's blocking methods, so the event loop never waits.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use crate::engine::pool::{PoolEngine, Target};
use crate::engine::{self, MAX_WORKERS};
use crate::image::Image;
use crate::sys::{self, EventFd};
use crate::{
    Completion, Disk, DiskInfo, DiskQueue, DiskSerial, EngineKind, OpenError, QueueConfig,
    QueueError, Request, RequestError, MAX_BUFFERS,
};

/// An image served as a disk.
#[derive(Debug)]
pub struct ImageDisk {
    image: Arc<dyn Image>,
    path: Arc<Path>,
    info: DiskInfo,
    serial: DiskSerial,
}

impl ImageDisk {
    /// Wraps an opened image; `serial` overrides the GET_ID serial (derived
    /// from the top file's identity otherwise).
    pub fn new(image: Arc<dyn Image>, serial: Option<&str>) -> Result<Self, OpenError> {
        let path: Arc<Path> = Arc::from(image.path());
        let serial = match serial {
            Some(s) => DiskSerial::new(s).map_err(|source| OpenError::Serial {
                path: path.to_path_buf(),
                source,
            })?,
            None => {
                let meta = std::fs::metadata(&path).map_err(|source| OpenError::Stat {
                    path: path.to_path_buf(),
                    source,
                })?;
                DiskSerial::from_identity(&[meta.dev(), meta.ino()])
            }
        };
        let writable = !image.read_only();
        let info = DiskInfo {
            size: image.size(),
            logical_block_size: 512,
            physical_block_size: 4096,
            read_only: image.read_only(),
            direct: false,
            discard: writable,
            write_zeroes: writable,
            max_buffers: MAX_BUFFERS,
        };
        Ok(Self {
            image,
            path,
            info,
            serial,
        })
    }

    /// The image behind the disk.
    pub fn image(&self) -> &Arc<dyn Image> {
        &self.image
    }
}

impl Disk for ImageDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn serial(&self) -> DiskSerial {
        self.serial
    }

    fn open_queue(&self, config: &QueueConfig) -> Result<Box<dyn DiskQueue>, QueueError> {
        if config.engine == EngineKind::IoUring {
            return Err(QueueError::InvalidConfig {
                path: self.path.clone(),
                reason: format!(
                    "{} images run on the thread pool, not io_uring",
                    self.image.format()
                ),
            });
        }
        if config.workers == 0 || config.workers > MAX_WORKERS {
            return Err(QueueError::InvalidConfig {
                path: self.path.clone(),
                reason: format!("{} workers is outside 1..={MAX_WORKERS}", config.workers),
            });
        }
        let eventfd = EventFd::new().map_err(|source| QueueError::EventFd {
            path: self.path.clone(),
            source,
        })?;
        let engine = PoolEngine::with_target(
            Target::Image(self.image.clone()),
            self.path.clone(),
            Arc::new(eventfd),
            config.workers,
            &config.name,
        )?;
        Ok(Box::new(ImageQueue {
            engine,
            path: self.path.clone(),
            info: self.info,
        }))
    }
}

/// A request queue of an [`ImageDisk`].
pub struct ImageQueue {
    engine: PoolEngine,
    path: Arc<Path>,
    info: DiskInfo,
}

impl std::fmt::Debug for ImageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageQueue")
            .field("path", &self.path)
            .field("in_flight", &self.engine.in_flight())
            .finish()
    }
}

impl DiskQueue for ImageQueue {
    fn engine(&self) -> EngineKind {
        EngineKind::ThreadPool
    }

    fn enqueue(&mut self, id: u64, request: Request<'_>) -> Result<(), RequestError> {
        let (spec, bufs) = engine::check_request(
            &self.path,
            self.info.read_only,
            self.info.size,
            id,
            &request,
        )?;
        self.engine.push(spec, bufs);
        Ok(())
    }

    fn submit(&mut self) -> Result<(), QueueError> {
        self.engine.submit();
        Ok(())
    }

    fn completion_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.engine.eventfd().as_fd()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize, QueueError> {
        Ok(self.engine.reap(out))
    }

    fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    fn quiesce(&mut self, out: &mut Vec<Completion>) -> Result<(), QueueError> {
        self.submit()?;
        while self.in_flight() > 0 {
            sys::poll_readable(self.completion_fd(), 100).map_err(|source| QueueError::Wait {
                path: self.path.clone(),
                source,
            })?;
            self.reap(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{self, CreateOptions, ImageOptions, Qcow2};
    use crate::IoBuf;

    #[test]
    fn a_qcow2_disk_serves_queued_requests() {
        let dir = std::env::temp_dir().join(format!("vireo-imgdisk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("d.qcow2");
        Qcow2::create(
            &path,
            &CreateOptions {
                size: 8 << 20,
                ..Default::default()
            },
        )
        .expect("create");
        let img = image::open(&path, &ImageOptions::default()).expect("open");
        let disk = ImageDisk::new(img, Some("sn")).expect("disk");
        assert_eq!(disk.info().size, 8 << 20);
        let mut q = disk.open_queue(&QueueConfig::default()).expect("queue");
        let mut data = vec![0x5au8; 8192];
        let mut back = vec![0u8; 8192];
        // SAFETY: both buffers outlive the requests, which complete in quiesce.
        let (w, r) = unsafe { (IoBuf::from_slice(&mut data), IoBuf::from_slice(&mut back)) };
        q.enqueue(
            1,
            Request::Write {
                offset: 4096,
                bufs: &[w],
            },
        )
        .expect("write");
        q.enqueue(2, Request::Flush).expect("flush");
        let mut done = Vec::new();
        q.quiesce(&mut done).expect("quiesce");
        q.enqueue(
            3,
            Request::Read {
                offset: 4096,
                bufs: &[r],
            },
        )
        .expect("read");
        q.quiesce(&mut done).expect("quiesce");
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        assert_eq!(back, vec![0x5au8; 8192]);
        let err = q
            .enqueue(
                4,
                Request::Discard {
                    offset: 8 << 20,
                    len: 512,
                },
            )
            .expect_err("out of range");
        assert!(matches!(err, RequestError::OutOfRange { .. }));
        drop(q);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
