//! Device tests: a driver in mock guest memory, against a real [`RawDisk`]
//! on a temporary file (thread-pool and automatic engines) and against a
//! scripted mock disk for what a real one cannot show deterministically.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vireo_disk::{Disk, DiskInfo, EngineKind, Operation, QueueConfig, RawDisk, RawOptions};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use super::mock_disk::{mock_error, mock_info, MockDisk, DISK_SIZE};
use super::request::{status, types, FLAG_UNMAP};
use super::*;
use crate::virtio::testutil::{guest_memory, DriverQueue, MockVirtioInterrupt};
use crate::virtio::{GuestMemoryMmap, VirtioDevice, TYPE_BLOCK};
use crate::HostEvents;

const ENGINES: [EngineKind; 2] = [EngineKind::ThreadPool, EngineKind::Auto];
const TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes that differ from position to position.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
                ^ seed
        })
        .collect()
}

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    /// `size` bytes of `pattern(seed)`.
    fn new(name: &str, size: u64, seed: u8) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vireo-blk-{name}-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, pattern(seed, size as usize)).expect("write the disk file");
        TempFile(path)
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read the disk file")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Records what the device watches.
#[derive(Default)]
struct TestEvents {
    watched: Mutex<Vec<(RawFd, u32)>>,
    refuse: bool,
}

impl TestEvents {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        self.watched.lock().expect("not poisoned").clone()
    }
}

impl HostEvents for TestEvents {
    fn watch(&self, fd: RawFd, token: u32) -> std::io::Result<()> {
        if self.refuse {
            return Err(std::io::Error::other("no event loop"));
        }
        self.watched.lock().expect("not poisoned").push((fd, token));
        Ok(())
    }

    fn unwatch(&self, fd: RawFd) {
        self.watched
            .lock()
            .expect("not poisoned")
            .retain(|&(f, _)| f != fd);
    }
}

/// A device activated on mock guest memory, and the driver's side.
struct Harness {
    blk: Block,
    mem: GuestMemoryMmap,
    dqs: Vec<DriverQueue>,
    irq: Arc<MockVirtioInterrupt>,
    events: Arc<TestEvents>,
    next: u64,
}

/// Where the driver's queues live (buffers are allocated below).
const QUEUE_BASE: u64 = 0x18_0000;

impl Harness {
    /// `blk` with host events, activated with every queue ready and the
    /// features it offers.
    fn new(blk: Block) -> Harness {
        let features = blk.features();
        Harness::with(blk, guest_memory(), Some(TestEvents::default()), features)
    }

    /// `blk` activated on `mem` with `features`; with `events` as its host
    /// events, or none.
    fn with(
        mut blk: Block,
        mem: GuestMemoryMmap,
        events: Option<TestEvents>,
        features: u64,
    ) -> Harness {
        let given = events.is_some();
        let events = Arc::new(events.unwrap_or_default());
        if given {
            blk.set_host_events(events.clone());
        }
        let mut h = Harness {
            blk,
            mem,
            dqs: Vec::new(),
            irq: Arc::new(MockVirtioInterrupt::default()),
            events,
            next: 0x1000,
        };
        h.activate(features);
        h
    }

    /// Activates with fresh driver queues.
    fn activate(&mut self, features: u64) {
        let sizes = self.blk.queue_max_sizes().to_vec();
        self.dqs = sizes
            .iter()
            .enumerate()
            .map(|(i, &max)| {
                DriverQueue::new(&self.mem, QUEUE_BASE + 0x4000 * i as u64, max.min(256))
            })
            .collect();
        let queues = self
            .dqs
            .iter()
            .zip(&sizes)
            .map(|(dq, &max)| dq.queue(max))
            .collect();
        self.blk
            .activate(self.mem.clone(), queues, self.irq.clone(), features)
            .expect("activates");
    }

    /// Guest memory for `len` bytes.
    fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next;
        self.next = (self.next + len + 15) & !15;
        assert!(self.next < QUEUE_BASE, "test guest memory exhausted");
        addr
    }

    /// `bytes` in guest memory.
    fn put(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u64);
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("in memory");
        addr
    }

    /// A request header in guest memory.
    fn header(&mut self, t: u32, sector: u64) -> u64 {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.put(&h)
    }

    /// A discard / write-zeroes segment in guest memory.
    fn segment(&mut self, sector: u64, n: u32, flags: u32) -> u64 {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        self.put(&s)
    }

    /// `len` bytes of 0xff (status bytes and read buffers start so).
    fn buffer(&mut self, len: u32) -> u64 {
        self.put(&vec![0xff; len as usize])
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("in memory");
        v
    }

    fn status(&self, addr: u64) -> u8 {
        self.read(addr, 1)[0]
    }

    fn post(&mut self, q: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        self.dqs[usize::from(q)].add(&self.mem, bufs)
    }

    /// Posts a request without data: header, status. Returns (head, status
    /// address).
    fn simple(&mut self, q: u16, t: u32, sector: u64) -> (u16, u64) {
        let hdr = self.header(t, sector);
        let st = self.buffer(1);
        (self.post(q, &[(hdr, 16, false), (st, 1, true)]), st)
    }

    /// Posts a write of `data` at `sector`. Returns (head, status address).
    fn write(&mut self, q: u16, sector: u64, data: &[u8]) -> (u16, u64) {
        let hdr = self.header(types::OUT, sector);
        let d = self.put(data);
        let st = self.buffer(1);
        let head = self.post(
            q,
            &[
                (hdr, 16, false),
                (d, data.len() as u32, false),
                (st, 1, true),
            ],
        );
        (head, st)
    }

    /// Posts a read of `len` bytes at `sector`. Returns (head, data
    /// address, status address).
    fn read_req(&mut self, q: u16, sector: u64, len: u32) -> (u16, u64, u64) {
        let hdr = self.header(types::IN, sector);
        let d = self.buffer(len);
        let st = self.buffer(1);
        let head = self.post(q, &[(hdr, 16, false), (d, len, true), (st, 1, true)]);
        (head, d, st)
    }

    /// Used elements so far on `q` (taken).
    fn used(&mut self, q: u16) -> Vec<(u16, u32)> {
        self.dqs[usize::from(q)].take_used(&self.mem)
    }

    /// Drives the device's host events until `n` chains of `q` are used.
    fn wait(&mut self, q: u16, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut used = self.used(q);
        while used.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out with {} of {n} chains used",
                used.len()
            );
            self.poll_events(20);
            used.extend(self.used(q));
        }
        used
    }

    /// Polls the watched fds for up to `ms` and delivers what is readable.
    fn poll_events(&mut self, ms: i32) {
        let fds = self.events.watched();
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&(fd, _)| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        for (p, &(_, token)) in pfds.iter().zip(&fds) {
            if p.revents & libc::POLLIN != 0 {
                self.blk.host_event(token);
            }
        }
    }
}

fn raw_disk(file: &TempFile, read_only: bool) -> Arc<dyn Disk> {
    let options = RawOptions {
        read_only,
        ..RawOptions::default()
    };
    Arc::new(RawDisk::open(&file.0, &options).expect("open the disk"))
}

fn config(engine: EngineKind) -> BlockConfig {
    BlockConfig {
        io: QueueConfig {
            engine,
            depth: 16,
            workers: 2,
            name: "test".to_owned(),
        },
        ..BlockConfig::default()
    }
}

fn raw_harness(file: &TempFile, engine: EngineKind, read_only: bool) -> Harness {
    let blk = Block::new(raw_disk(file, read_only), config(engine)).expect("valid");
    Harness::new(blk)
}

fn mock_harness(disk: &Arc<MockDisk>, config: BlockConfig) -> Harness {
    let blk = Block::new(disk.clone(), config).expect("valid");
    Harness::new(blk)
}

mod merging;
mod real_disk;
mod scripted_disk;
