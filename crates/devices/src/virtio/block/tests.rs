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

// ---------------------------------------------------------------------------
// Features and configuration.

fn config_u32(blk: &Block, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    blk.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn features_and_configuration_space() {
    let disk = MockDisk::new(mock_info());
    let blk = Block::new(disk.clone(), BlockConfig::default()).expect("valid");
    assert_eq!(blk.device_type(), TYPE_BLOCK);
    assert_eq!(
        blk.features(),
        features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH
            | features::TOPOLOGY
            | features::DISCARD
            | features::WRITE_ZEROES
    );
    // virtio 1.2 feature bit numbers.
    assert_eq!(
        [
            features::SEG_MAX,
            features::RO,
            features::BLK_SIZE,
            features::FLUSH
        ],
        [1 << 2, 1 << 5, 1 << 6, 1 << 9]
    );
    assert_eq!(
        [
            features::TOPOLOGY,
            features::MQ,
            features::DISCARD,
            features::WRITE_ZEROES
        ],
        [1 << 10, 1 << 12, 1 << 13, 1 << 14]
    );
    assert_eq!(blk.queue_max_sizes(), &[BLOCK_QUEUE_SIZE]);
    assert_eq!(blk.config_size(), CONFIG_SIZE);
    assert_eq!(blk.serial().as_str(), "MOCK-SERIAL");

    let mut cfg = [0u8; CONFIG_SIZE];
    blk.read_config(0, &mut cfg);
    // capacity: whole sectors only.
    assert_eq!(cfg[..8], (DISK_SIZE / 512).to_le_bytes());
    assert_eq!(blk.capacity(), DISK_SIZE / 512);
    assert_eq!(config_u32(&blk, 12), 254, "seg_max: queue size - 2");
    assert_eq!(config_u32(&blk, 20), 512, "blk_size");
    assert_eq!(cfg[24], 3, "physical_block_exp: 4096 = 512 << 3");
    assert_eq!(u16::from_le_bytes([cfg[26], cfg[27]]), 8, "min_io_size");
    assert_eq!(cfg[32], 1, "writeback");
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 1, "num_queues");
    assert_eq!(config_u32(&blk, 36), MAX_DISCARD_SECTORS);
    assert_eq!(config_u32(&blk, 40), 1, "max_discard_seg");
    assert_eq!(config_u32(&blk, 44), 1, "discard_sector_alignment");
    assert_eq!(config_u32(&blk, 48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(config_u32(&blk, 52), 1, "max_write_zeroes_seg");
    assert_eq!(cfg[56], 1, "write_zeroes_may_unmap");
    // Unaligned and partial reads; nothing past the end.
    let mut b = [0xaa; 4];
    blk.read_config(CONFIG_SIZE as u64 - 2, &mut b);
    assert_eq!(b, [0; 4]);
    blk.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
    let mut b = [0u8; 2];
    blk.read_config(1, &mut b);
    assert_eq!(b, [cfg[1], cfg[2]]);

    // Several queues; a read-only disk with 4 KiB blocks.
    let info = DiskInfo {
        read_only: true,
        logical_block_size: 4096,
        ..mock_info()
    };
    let config = BlockConfig {
        num_queues: 4,
        queue_size: 64,
        serial: Some("override".to_owned()),
        ..BlockConfig::default()
    };
    let mut blk = Block::new(MockDisk::new(info), config).expect("valid");
    let f = blk.features();
    assert_eq!(
        f & (features::MQ | features::RO),
        features::MQ | features::RO
    );
    assert_eq!(f & (features::DISCARD | features::WRITE_ZEROES), 0);
    assert_eq!(blk.queue_max_sizes(), &[64; 4]);
    blk.read_config(0, &mut cfg);
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 4);
    assert_eq!(config_u32(&blk, 12), 62);
    assert_eq!(config_u32(&blk, 20), 4096);
    assert_eq!(cfg[24], 0);
    assert_eq!(config_u32(&blk, 44), 8);
    assert_eq!(blk.serial().as_str(), "override");
    // Writes to configuration space change nothing.
    blk.write_config(32, &[0]);
    blk.read_config(0, &mut b);
    assert_eq!(b[..], cfg[..2]);
    let mut again = [0u8; CONFIG_SIZE];
    blk.read_config(0, &mut again);
    assert_eq!(again, cfg);
}

#[test]
fn construction_is_validated() {
    let disk = MockDisk::new(mock_info());
    let build = |config: BlockConfig| Block::new(disk.clone(), config).map(|_| ());
    for n in [0, MAX_QUEUES + 1] {
        let e = build(BlockConfig {
            num_queues: n,
            ..BlockConfig::default()
        });
        assert!(matches!(e, Err(BlockError::NumQueues(x)) if x == n));
    }
    for size in [0, 1, 100] {
        let e = build(BlockConfig {
            queue_size: size,
            ..BlockConfig::default()
        });
        assert!(matches!(e, Err(BlockError::QueueSize(_))));
    }
    let e = build(BlockConfig {
        serial: Some("a serial longer than twenty".to_owned()),
        ..BlockConfig::default()
    });
    assert!(matches!(e, Err(BlockError::Serial(_))));
    let failing = Arc::new(MockDisk {
        info: mock_info(),
        state: Arc::default(),
        fds: Mutex::default(),
        fail_open: true,
    });
    let e = Block::new(failing, BlockConfig::default());
    assert!(matches!(e, Err(BlockError::OpenQueue { queue: 0, .. })));
    // A bad engine configuration, from the real disk.
    let file = TempFile::new("config", DISK_SIZE, 1);
    let mut config = config(EngineKind::ThreadPool);
    config.io.workers = 0;
    let e = Block::new(raw_disk(&file, false), config);
    assert!(matches!(e, Err(BlockError::OpenQueue { .. })));
    // The wrong number of queues at activation.
    let mut blk = Block::new(disk.clone(), BlockConfig::default()).expect("valid");
    let (mem, irq) = crate::virtio::testutil::activation();
    assert!(blk.activate(mem, vec![], irq, 0).is_err());
}

// ---------------------------------------------------------------------------
// Requests on a real disk.

#[test]
fn write_then_read_back_across_descriptors() {
    for engine in ENGINES {
        let file = TempFile::new("rw", DISK_SIZE, 1);
        let mut h = raw_harness(&file, engine, false);
        let data = pattern(9, 1536);

        // A write of 3 sectors at sector 2, its data over three descriptors.
        let hdr = h.header(types::OUT, 2);
        let (a, b, c) = (
            h.put(&data[..100]),
            h.put(&data[100..1100]),
            h.put(&data[1100..]),
        );
        let st = h.buffer(1);
        let head = h.post(
            0,
            &[
                (hdr, 16, false),
                (a, 100, false),
                (b, 1000, false),
                (c, 436, false),
                (st, 1, true),
            ],
        );
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 1), vec![(head, 1)], "{engine}");
        assert_eq!(h.status(st), status::OK);
        let on_disk = file.contents();
        assert!(on_disk[1024..2560] == data[..], "{engine}: written");
        assert!(
            on_disk[..1024] == pattern(1, 1024)[..],
            "{engine}: before untouched"
        );
        assert!(
            on_disk[2560..4096] == pattern(1, 4096)[2560..],
            "{engine}: after untouched"
        );

        // Read it back: the header split 5 + 11, the status byte sharing
        // the last data descriptor.
        let hdr = h.header(types::IN, 2);
        let hdr_bytes = h.read(hdr, 16);
        let hdr2 = h.put(&hdr_bytes[5..]);
        let d1 = h.buffer(700);
        let d2 = h.buffer(836 + 1);
        let head = h.post(
            0,
            &[
                (hdr, 5, false),
                (hdr2, 11, false),
                (d1, 700, true),
                (d2, 837, true),
            ],
        );
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 1), vec![(head, 1537)], "{engine}");
        assert_eq!(h.status(d2 + 836), status::OK);
        let mut back = h.read(d1, 700);
        back.extend(h.read(d2, 836));
        assert!(back == data, "{engine}: read back");

        // Flush.
        let (head, st) = h.simple(0, types::FLUSH, 0);
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 1), vec![(head, 1)]);
        assert_eq!(h.status(st), status::OK);
        assert!(!h.irq.queue_interrupts().is_empty());
        assert!(!h.blk.is_broken());
        assert_eq!(h.blk.in_flight(0), 0);
    }
}

#[test]
fn many_requests_in_one_batch() {
    for engine in ENGINES {
        let file = TempFile::new("batch", DISK_SIZE, 2);
        let mut h = raw_harness(&file, engine, false);
        // Twelve writes then twelve reads, 4 KiB each, in two batches.
        let mut heads = Vec::new();
        for i in 0..12u64 {
            heads.push(h.write(0, i * 8, &pattern(i as u8 + 10, 4096)).0);
        }
        h.blk.process_queue(0);
        let mut used = h.wait(0, 12);
        used.sort_unstable();
        heads.sort_unstable();
        assert_eq!(used, heads.iter().map(|&h| (h, 1)).collect::<Vec<_>>());
        let reads: Vec<_> = (0..12u64).map(|i| h.read_req(0, i * 8, 4096)).collect();
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 12).len(), 12);
        for (i, (_, d, st)) in reads.iter().enumerate() {
            assert_eq!(h.status(*st), status::OK);
            assert!(
                h.read(*d, 4096) == pattern(i as u8 + 10, 4096),
                "{engine}: read {i}"
            );
        }
    }
}

#[test]
fn get_id_returns_the_serial() {
    let file = TempFile::new("id", DISK_SIZE, 1);
    let disk = raw_disk(&file, false);
    let serial = disk.serial();
    let mut h = Harness::new(Block::new(disk, config(EngineKind::ThreadPool)).expect("valid"));
    assert_eq!(h.blk.serial(), serial);
    let hdr = h.header(types::GET_ID, 0);
    let d = h.buffer(20);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (d, 20, true), (st, 1, true)]);
    h.blk.process_queue(0);
    // Synchronous: used before any disk event.
    assert_eq!(h.used(0), vec![(head, 21)]);
    assert_eq!(h.status(st), status::OK);
    assert_eq!(h.read(d, 20), serial.as_bytes());

    // An override; a short buffer gets a prefix.
    let config = BlockConfig {
        serial: Some("vireo-disk-7".to_owned()),
        ..config(EngineKind::ThreadPool)
    };
    let mut h = Harness::new(Block::new(raw_disk(&file, false), config).expect("valid"));
    let hdr = h.header(types::GET_ID, 0);
    let d = h.buffer(8 + 1);
    let head = h.post(0, &[(hdr, 16, false), (d, 9, true)]);
    let hdr = h.header(types::GET_ID, 0);
    let d2 = h.buffer(64);
    let head2 = h.post(0, &[(hdr, 16, false), (d2, 64, true)]);
    h.blk.process_queue(0);
    assert_eq!(h.used(0), vec![(head, 9), (head2, 21)]);
    assert_eq!(h.read(d, 9), b"vireo-di\0");
    let mut want = b"vireo-disk-7".to_vec();
    want.resize(20, 0);
    assert_eq!(h.read(d2, 20), want);
    assert_eq!(h.status(d2 + 63), status::OK);
    assert_eq!(h.irq.queue_interrupts(), vec![0]);
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    for engine in ENGINES {
        let file = TempFile::new("zero", DISK_SIZE, 3);
        let mut h = raw_harness(&file, engine, false);
        let mut heads = Vec::new();
        let mut statuses = Vec::new();
        for (t, sector, flags) in [
            (types::DISCARD, 8, 0),
            (types::WRITE_ZEROES, 64, 0),
            (types::WRITE_ZEROES, 128, FLAG_UNMAP),
        ] {
            let hdr = h.header(t, 0);
            let seg = h.segment(sector, 16, flags);
            let st = h.buffer(1);
            heads.push(h.post(0, &[(hdr, 16, false), (seg, 16, false), (st, 1, true)]));
            statuses.push(st);
        }
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 3).len(), 3);
        if h.status(statuses[0]) == status::UNSUPP {
            eprintln!("SKIPPED discard: this file system cannot punch holes");
        } else {
            assert_eq!(h.status(statuses[0]), status::OK, "{engine}: discard");
        }
        assert_eq!(h.status(statuses[1]), status::OK, "{engine}: write-zeroes");
        assert_eq!(
            h.status(statuses[2]),
            status::OK,
            "{engine}: write-zeroes unmap"
        );
        let on_disk = file.contents();
        let original = pattern(3, DISK_SIZE as usize);
        let zeroed = |s: usize| s * 512..(s + 16) * 512;
        for range in [zeroed(64), zeroed(128)] {
            assert!(
                on_disk[range.clone()].iter().all(|&b| b == 0),
                "{engine}: {range:?}"
            );
        }
        if h.status(statuses[0]) == status::OK {
            assert!(
                on_disk[zeroed(8)].iter().all(|&b| b == 0),
                "{engine}: discarded"
            );
        }
        for range in [
            0..8 * 512,
            24 * 512..64 * 512,
            80 * 512..128 * 512,
            144 * 512..DISK_SIZE as usize,
        ] {
            assert!(
                on_disk[range.clone()] == original[range.clone()],
                "{engine}: {range:?} untouched"
            );
        }
        // Read the zeros through the device too.
        let (_, d, st) = h.read_req(0, 64, 8192);
        h.blk.process_queue(0);
        h.wait(0, 1);
        assert_eq!(h.status(st), status::OK);
        assert!(h.read(d, 8192).iter().all(|&b| b == 0));
    }
}

#[test]
fn a_read_only_disk_refuses_changes() {
    let file = TempFile::new("ro", DISK_SIZE, 4);
    let mut h = raw_harness(&file, EngineKind::ThreadPool, true);
    assert_ne!(h.blk.features() & features::RO, 0);
    let (w, wst) = h.write(0, 0, &[0u8; 512]);
    let hdr = h.header(types::WRITE_ZEROES, 0);
    let seg = h.segment(0, 8, 0);
    let zst = h.buffer(1);
    let z = h.post(0, &[(hdr, 16, false), (seg, 16, false), (zst, 1, true)]);
    let hdr = h.header(types::DISCARD, 0);
    let seg = h.segment(0, 8, 0);
    let dst = h.buffer(1);
    let d = h.post(0, &[(hdr, 16, false), (seg, 16, false), (dst, 1, true)]);
    h.blk.process_queue(0);
    // Refused at once, nothing reached the disk.
    assert_eq!(h.used(0), vec![(w, 1), (z, 1), (d, 1)]);
    assert_eq!(h.blk.in_flight(0), 0);
    for st in [wst, zst, dst] {
        assert_eq!(h.status(st), status::IOERR);
    }
    assert!(file.contents() == pattern(4, DISK_SIZE as usize));
    // Reads work.
    let (head, data, st) = h.read_req(0, 1, 512);
    h.blk.process_queue(0);
    assert_eq!(h.wait(0, 1), vec![(head, 513)]);
    assert_eq!(h.status(st), status::OK);
    assert!(h.read(data, 512) == pattern(4, 1024)[512..]);
    assert!(!h.blk.is_broken());
}

#[test]
fn invalid_requests_complete_at_once() {
    let file = TempFile::new("invalid", DISK_SIZE, 5);
    let mut h = raw_harness(&file, EngineKind::ThreadPool, false);
    let capacity = DISK_SIZE / 512;
    let mut expect = Vec::new();
    // Reads and writes past the end.
    let (head, _, st) = h.read_req(0, capacity - 1, 1024);
    expect.push((head, st, status::IOERR));
    let (head, st) = h.write(0, capacity, &[1u8; 512]);
    expect.push((head, st, status::IOERR));
    let (head, _, st) = h.read_req(0, u64::MAX, 512);
    expect.push((head, st, status::IOERR));
    // Not a whole sector.
    let (head, _, st) = h.read_req(0, 0, 100);
    expect.push((head, st, status::IOERR));
    let (head, st) = h.write(0, 0, &[1u8; 700]);
    expect.push((head, st, status::IOERR));
    // A read with readable data; a write with writable data.
    let hdr = h.header(types::IN, 0);
    let d = h.put(&[0u8; 512]);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (d, 512, false), (st, 1, true)]);
    expect.push((head, st, status::IOERR));
    let hdr = h.header(types::OUT, 0);
    let d = h.buffer(512);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (d, 512, true), (st, 1, true)]);
    expect.push((head, st, status::IOERR));
    // Unknown types.
    for t in [2, 3, 9, 100] {
        let (head, st) = h.simple(0, t, 0);
        expect.push((head, st, status::UNSUPP));
    }
    // Discard with the unmap flag or unknown flags; two segments; a
    // segment past the end.
    let hdr = h.header(types::DISCARD, 0);
    let seg = h.segment(0, 1, FLAG_UNMAP);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (seg, 16, false), (st, 1, true)]);
    expect.push((head, st, status::UNSUPP));
    let hdr = h.header(types::WRITE_ZEROES, 0);
    let seg = h.segment(0, 1, 0x80);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (seg, 16, false), (st, 1, true)]);
    expect.push((head, st, status::UNSUPP));
    let hdr = h.header(types::DISCARD, 0);
    let seg = h.segment(0, 1, 0);
    h.segment(8, 1, 0);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (seg, 32, false), (st, 1, true)]);
    expect.push((head, st, status::IOERR));
    let hdr = h.header(types::WRITE_ZEROES, 0);
    let seg = h.segment(capacity - 1, 2, 0);
    let st = h.buffer(1);
    let head = h.post(0, &[(hdr, 16, false), (seg, 16, false), (st, 1, true)]);
    expect.push((head, st, status::IOERR));

    h.blk.process_queue(0);
    assert_eq!(h.blk.in_flight(0), 0, "no I/O was issued");
    let used = h.used(0);
    assert_eq!(used, expect.iter().map(|e| (e.0, 1)).collect::<Vec<_>>());
    for (head, st, want) in expect {
        assert_eq!(h.status(st), want, "request at head {head}");
    }
    assert_eq!(
        h.irq.queue_interrupts(),
        vec![0],
        "one interrupt for the batch"
    );
    assert!(!h.blk.is_broken());
    assert!(file.contents() == pattern(5, DISK_SIZE as usize));
}

#[test]
fn malformed_chains() {
    let file = TempFile::new("malformed", DISK_SIZE, 6);
    let mut h = raw_harness(&file, EngineKind::ThreadPool, false);
    // A header split short (4 + 4 bytes) with a status byte: IOERR.
    let hdr = h.header(types::IN, 0);
    let st = h.buffer(1);
    let a = h.post(0, &[(hdr, 4, false), (hdr + 4, 4, false), (st, 1, true)]);
    // A header in device-writable memory: IOERR in the last byte.
    let hdr = h.header(types::IN, 0);
    let d = h.buffer(512 + 1);
    let b = h.post(0, &[(hdr, 16, true), (d, 513, true)]);
    h.blk.process_queue(0);
    assert_eq!(h.used(0), vec![(a, 1), (b, 1)]);
    assert_eq!(h.status(st), status::IOERR);
    assert_eq!(h.status(d + 512), status::IOERR);
    assert!(!h.blk.is_broken());
    assert_eq!(h.irq.needs_reset_count(), 0);

    // No status byte at all: the device needs a reset.
    let hdr = h.header(types::OUT, 0);
    let d = h.put(&[7u8; 512]);
    h.post(0, &[(hdr, 16, false), (d, 512, false)]);
    h.blk.process_queue(0);
    assert!(h.blk.is_broken());
    assert_eq!(h.irq.needs_reset_count(), 1);
    assert!(h.used(0).is_empty());
    // Broken stays broken, quietly.
    h.read_req(0, 0, 512);
    h.blk.process_queue(0);
    h.blk.host_event(0);
    assert!(h.used(0).is_empty());
    assert_eq!(h.irq.needs_reset_count(), 1);
    assert!(file.contents() == pattern(6, DISK_SIZE as usize));

    // Reset and reactivation bring it back.
    h.blk.reset();
    let features = h.blk.features();
    h.activate(features);
    assert!(!h.blk.is_broken());
    let (head, st) = h.simple(0, types::FLUSH, 0);
    h.blk.process_queue(0);
    assert_eq!(h.wait(0, 1), vec![(head, 1)]);
    assert_eq!(h.status(st), status::OK);
}

#[test]
fn hostile_rings_need_reset() {
    let file = TempFile::new("hostile", DISK_SIZE, 7);
    // A head index past the ring.
    let mut h = raw_harness(&file, EngineKind::ThreadPool, false);
    h.dqs[0].add_head(&h.mem, 999);
    h.blk.process_queue(0);
    assert!(h.blk.is_broken());
    // An avail index far ahead.
    let mut h = raw_harness(&file, EngineKind::ThreadPool, false);
    h.dqs[0].set_avail_idx(&h.mem, 1000);
    h.blk.process_queue(0);
    assert_eq!(h.irq.needs_reset_count(), 1);
    // Data outside guest memory.
    let mut h = raw_harness(&file, EngineKind::ThreadPool, false);
    let hdr = h.header(types::IN, 0);
    let st = h.buffer(1);
    h.post(
        0,
        &[(hdr, 16, false), (0x10_0000_0000, 512, true), (st, 1, true)],
    );
    h.blk.process_queue(0);
    assert!(h.blk.is_broken());
    assert!(h.used(0).is_empty());
}

#[test]
fn multiple_queues() {
    for engine in ENGINES {
        let file = TempFile::new("mq", DISK_SIZE, 8);
        let config = BlockConfig {
            num_queues: 3,
            ..config(engine)
        };
        let mut blk = Block::new(raw_disk(&file, false), config).expect("valid");
        let events = Arc::new(TestEvents::default());
        blk.set_host_events(events.clone());
        let watched = events.watched();
        assert_eq!(
            watched.iter().map(|w| w.1).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(blk.completion_fds(), watched);
        let mut fds: Vec<_> = watched.iter().map(|w| w.0).collect();
        fds.sort_unstable();
        fds.dedup();
        assert_eq!(fds.len(), 3, "one completion fd per queue");

        // Queue 1 is left disabled by the driver.
        let mem = guest_memory();
        let dqs: Vec<_> = (0..3)
            .map(|i| DriverQueue::new(&mem, QUEUE_BASE + 0x4000 * i, 16))
            .collect();
        let mut queues: Vec<_> = dqs.iter().map(|dq| dq.queue(BLOCK_QUEUE_SIZE)).collect();
        virtio_queue::QueueT::set_ready(&mut queues[1], false);
        let irq = Arc::new(MockVirtioInterrupt::default());
        let features = blk.features();
        blk.activate(mem.clone(), queues, irq.clone(), features)
            .expect("activates");
        let mut h = Harness {
            blk,
            mem,
            dqs,
            irq,
            events,
            next: 0x1000,
        };
        let (w0, _) = h.write(0, 0, &pattern(20, 4096));
        let (w2, _) = h.write(2, 8, &pattern(22, 4096));
        let ignored = h.write(1, 16, &pattern(21, 4096));
        h.blk.process_queue(2);
        h.blk.process_queue(0);
        h.blk.process_queue(1);
        assert_eq!(h.wait(0, 1), vec![(w0, 1)]);
        assert_eq!(h.wait(2, 1), vec![(w2, 1)]);
        let mut irqs = h.irq.queue_interrupts();
        irqs.sort_unstable();
        assert_eq!(irqs, vec![0, 2]);
        assert!(h.used(1).is_empty(), "queue 1 is not enabled: {ignored:?}");
        let on_disk = file.contents();
        assert!(on_disk[..4096] == pattern(20, 4096)[..]);
        assert!(on_disk[4096..8192] == pattern(22, 4096)[..]);
        assert!(on_disk[8192..12288] == pattern(8, 12288)[8192..]);
        // Cross-queue reads.
        let (_, d, st) = h.read_req(2, 0, 4096);
        h.blk.process_queue(2);
        h.wait(2, 1);
        assert_eq!(h.status(st), status::OK);
        assert!(h.read(d, 4096) == pattern(20, 4096));
    }
}

#[test]
fn reset_with_requests_in_flight() {
    for engine in ENGINES {
        let file = TempFile::new("reset", DISK_SIZE, 9);
        let mut h = raw_harness(&file, engine, false);
        let mut reads = Vec::new();
        for i in 0..8 {
            reads.push(h.read_req(0, i * 64, 32 * 1024));
        }
        let (_, wst) = h.write(0, 1024, &pattern(30, 64 * 1024));
        h.blk.process_queue(0);
        h.blk.reset();
        assert_eq!(h.blk.in_flight(0), 0);
        // Nothing may touch guest memory from here on: mark the buffers and
        // look again after a while.
        for &(_, d, st) in &reads {
            h.mem
                .write_slice(&[0xa5; 32 * 1024], GuestAddress(d))
                .expect("in memory");
            h.mem
                .write_obj(0xa5u8, GuestAddress(st))
                .expect("in memory");
        }
        h.mem
            .write_obj(0xa5u8, GuestAddress(wst))
            .expect("in memory");
        for _ in 0..5 {
            h.poll_events(10);
        }
        for &(_, d, st) in &reads {
            assert!(h.read(d, 32 * 1024).iter().all(|&b| b == 0xa5), "{engine}");
            assert_eq!(h.status(st), 0xa5);
        }
        assert_eq!(h.status(wst), 0xa5);
        // The write was carried out before reset returned, or not at all.
        let on_disk = file.contents();
        let range = 1024 * 512..1152 * 512;
        assert!(
            on_disk[range.clone()] == pattern(30, 64 * 1024)[..]
                || on_disk[range.clone()] == pattern(9, DISK_SIZE as usize)[range]
        );
        // The device works again after reactivation.
        let features = h.blk.features();
        h.activate(features);
        let (head, d, st) = h.read_req(0, 1, 512);
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 1), vec![(head, 513)]);
        assert_eq!(h.status(st), status::OK);
        assert!(h.read(d, 512) == pattern(9, 1024)[512..]);
    }
}

#[test]
fn without_an_event_loop_requests_complete_inline() {
    let file = TempFile::new("inline", DISK_SIZE, 10);
    // No host events at all, or an event loop that refuses the fds.
    for events in [
        None,
        Some(TestEvents {
            refuse: true,
            ..TestEvents::default()
        }),
    ] {
        let refused = events.is_some();
        let blk =
            Block::new(raw_disk(&file, false), config(EngineKind::ThreadPool)).expect("valid");
        let features = blk.features();
        let mut h = Harness::with(blk, guest_memory(), events, features);
        assert!(h.events.watched().is_empty());
        // One after the other: requests in flight together may complete
        // in any order.
        let (w, _) = h.write(0, 3, &pattern(40, 512));
        h.blk.process_queue(0);
        assert_eq!(h.used(0), vec![(w, 1)], "refused: {refused}");
        let (r, d, st) = h.read_req(0, 3, 512);
        h.blk.process_queue(0);
        assert_eq!(h.used(0), vec![(r, 513)], "refused: {refused}");
        assert_eq!(h.status(st), status::OK);
        assert!(h.read(d, 512) == pattern(40, 512));
    }
}

#[test]
fn stale_events_and_unknown_queues_are_ignored() {
    let file = TempFile::new("stale", DISK_SIZE, 11);
    let mut blk =
        Block::new(raw_disk(&file, false), config(EngineKind::ThreadPool)).expect("valid");
    blk.host_event(0);
    blk.process_queue(0);
    blk.reset();
    let mut h = Harness::new(blk);
    h.blk.host_event(7);
    h.blk.host_event(u32::MAX);
    h.blk.process_queue(9);
    h.blk.host_event(0);
    assert!(!h.blk.is_broken());
    assert!(h.used(0).is_empty());
}

#[test]
fn dropping_the_device_unwatches() {
    let file = TempFile::new("drop", DISK_SIZE, 12);
    let config = BlockConfig {
        num_queues: 2,
        ..config(EngineKind::ThreadPool)
    };
    let mut blk = Block::new(raw_disk(&file, false), config).expect("valid");
    let first = Arc::new(TestEvents::default());
    blk.set_host_events(first.clone());
    assert_eq!(first.watched().len(), 2);
    // A second event loop takes over.
    let second = Arc::new(TestEvents::default());
    blk.set_host_events(second.clone());
    assert!(first.watched().is_empty());
    assert_eq!(second.watched().len(), 2);
    // Requests in flight when the device goes away.
    let mut h = Harness::new(blk);
    for i in 0..4 {
        h.read_req(0, i, 4096);
    }
    h.blk.process_queue(0);
    let events = h.events.clone();
    drop(h);
    assert!(events.watched().is_empty());
}

// ---------------------------------------------------------------------------
// Requests on the scripted disk.

#[test]
fn in_flight_requests_are_bounded_by_the_queue_size() {
    let disk = MockDisk::new(mock_info());
    let config = BlockConfig {
        queue_size: 4,
        ..BlockConfig::default()
    };
    let mut h = mock_harness(&disk, config);
    // One flush chain made available four times (a ring of four has no
    // room for four distinct requests): four requests in flight.
    let (head, _) = h.simple(0, types::FLUSH, 0);
    for _ in 0..3 {
        h.dqs[0].add_head(&h.mem, head);
    }
    h.blk.process_queue(0);
    assert_eq!(disk.pending().len(), 4);
    assert_eq!(h.blk.in_flight(0), 4);
    // Four more: the ring allows them, but the device takes none while
    // four are in flight.
    for _ in 0..4 {
        h.dqs[0].add_head(&h.mem, head);
    }
    h.blk.process_queue(0);
    assert_eq!(disk.pending().len(), 4);
    // Two complete: two more go to the disk.
    let ids: Vec<_> = disk.pending().iter().map(|r| r.id).collect();
    disk.complete(0, ids[0], Ok(0));
    disk.complete(0, ids[1], Ok(0));
    assert_eq!(h.wait(0, 2), vec![(head, 1); 2]);
    assert_eq!(disk.pending().len(), 4);
    assert_eq!(disk.state().history.len(), 6);
    disk.complete_all(0);
    h.wait(0, 4);
    assert_eq!(disk.pending().len(), 2);
    disk.complete_all(0);
    h.wait(0, 2);
    assert_eq!(disk.state().history.len(), 8);
    assert_eq!(h.blk.in_flight(0), 0);
    assert!(!h.blk.is_broken());
}

#[test]
fn disk_errors_become_status_bytes() {
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    let (a, _, ast) = h.read_req(0, 0, 512);
    let (b, bst) = h.write(0, 0, &[0u8; 512]);
    let hdr = h.header(types::DISCARD, 0);
    let seg = h.segment(0, 8, 0);
    let cst = h.buffer(1);
    let c = h.post(0, &[(hdr, 16, false), (seg, 16, false), (cst, 1, true)]);
    h.blk.process_queue(0);
    let reqs = disk.pending();
    assert_eq!(
        reqs.iter()
            .map(|r| (r.op, r.offset, r.len))
            .collect::<Vec<_>>(),
        vec![
            (Operation::Read, 0, 512),
            (Operation::Write, 0, 512),
            (Operation::Discard, 0, 4096)
        ]
    );
    disk.complete(0, reqs[0].id, Err(mock_error(Operation::Read, libc::EIO)));
    disk.complete(0, reqs[1].id, Ok(512));
    disk.complete(
        0,
        reqs[2].id,
        Err(mock_error(Operation::Discard, libc::EOPNOTSUPP)),
    );
    let mut used = h.wait(0, 3);
    used.sort_unstable();
    let mut want = vec![(a, 1), (b, 1), (c, 1)];
    want.sort_unstable();
    assert_eq!(used, want, "a failed read reports only the status byte");
    assert_eq!(h.status(ast), status::IOERR);
    assert_eq!(h.status(bst), status::OK);
    assert_eq!(h.status(cst), status::UNSUPP);
    assert_eq!(h.irq.queue_interrupts(), vec![0], "one interrupt per batch");

    // The disk refuses at enqueue: completed at once.
    disk.state().refuse = Some(libc::EINVAL);
    let (d, _, dst) = h.read_req(0, 0, 512);
    h.blk.process_queue(0);
    assert_eq!(h.used(0), vec![(d, 1)]);
    assert_eq!(h.status(dst), status::IOERR);
    assert_eq!(h.blk.in_flight(0), 0);
    assert!(!h.blk.is_broken());
}

#[test]
fn write_through_without_the_flush_feature() {
    let disk = MockDisk::new(mock_info());
    let blk = Block::new(disk.clone(), BlockConfig::default()).expect("valid");
    let features = blk.features() & !features::FLUSH;
    let mut h = Harness::with(blk, guest_memory(), Some(TestEvents::default()), features);
    let (w, st) = h.write(0, 4, &[1u8; 1024]);
    h.blk.process_queue(0);
    let reqs = disk.pending();
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].op, reqs[0].offset), (Operation::Write, 2048));
    disk.complete(0, reqs[0].id, Ok(1024));
    // Not done yet: a flush follows under the same id.
    let deadline = Instant::now() + TIMEOUT;
    while disk.pending().is_empty() {
        assert!(Instant::now() < deadline, "no flush");
        h.poll_events(10);
    }
    assert!(h.used(0).is_empty());
    let reqs = disk.pending();
    assert_eq!(reqs[0].op, Operation::Flush);
    disk.complete(0, reqs[0].id, Ok(0));
    assert_eq!(h.wait(0, 1), vec![(w, 1)]);
    assert_eq!(h.status(st), status::OK);
    // A failed write is not flushed.
    let (w, st) = h.write(0, 4, &[1u8; 512]);
    h.blk.process_queue(0);
    let id = disk.pending()[0].id;
    disk.complete(0, id, Err(mock_error(Operation::Write, libc::EIO)));
    assert_eq!(h.wait(0, 1), vec![(w, 1)]);
    assert_eq!(h.status(st), status::IOERR);
    assert!(disk.pending().is_empty());

    // With FLUSH negotiated, a write completes on its own.
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    let (w, _) = h.write(0, 4, &[1u8; 512]);
    h.blk.process_queue(0);
    let id = disk.pending()[0].id;
    disk.complete(0, id, Ok(512));
    assert_eq!(h.wait(0, 1), vec![(w, 1)]);
    assert!(disk.pending().is_empty());
}

#[test]
fn reset_waits_for_the_disk_and_forgets_its_requests() {
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    // Not contiguous: three disk requests.
    let reads: Vec<_> = (0..3).map(|i| h.read_req(0, 2 * i, 512)).collect();
    h.blk.process_queue(0);
    assert_eq!(disk.pending().len(), 3);
    let quiesces = disk.state().quiesces;
    h.blk.reset();
    assert_eq!(disk.state().quiesces, quiesces + 1);
    assert!(disk.pending().is_empty());
    assert_eq!(h.blk.in_flight(0), 0);
    // Their completions never reach the guest.
    h.blk.host_event(0);
    assert!(h.used(0).is_empty());
    for (_, _, st) in reads {
        assert_eq!(h.status(st), 0xff);
    }
    // Reactivated, the slots start afresh.
    let features = h.blk.features();
    h.activate(features);
    let (head, _, st) = h.read_req(0, 0, 512);
    h.blk.process_queue(0);
    let r = disk.pending();
    assert_eq!(r.len(), 1);
    disk.complete(0, r[0].id, Ok(512));
    assert_eq!(h.wait(0, 1), vec![(head, 513)]);
    assert_eq!(h.status(st), status::OK);
}

#[test]
fn buffers_spanning_memory_regions_are_split() {
    // Two regions, adjacent in guest-physical space but separate mappings.
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(0x10_0000), 0x10_0000),
    ])
    .expect("two regions");
    let disk = MockDisk::new(mock_info());
    let blk = Block::new(disk.clone(), BlockConfig::default()).expect("valid");
    let features = blk.features();
    let mut h = Harness::with(blk, mem, Some(TestEvents::default()), features);
    let hdr = h.header(types::IN, 0);
    let st = h.buffer(1);
    let start = 0x10_0000 - 1024;
    h.post(0, &[(hdr, 16, false), (start, 4096, true), (st, 1, true)]);
    h.blk.process_queue(0);
    let r = disk.pending();
    assert_eq!(r.len(), 1);
    let host = |addr: u64| {
        GuestMemoryBackend::get_host_address(&h.mem, GuestAddress(addr)).expect("in memory")
            as usize
    };
    assert_eq!(
        r[0].bufs,
        vec![(host(start), 1024), (host(0x10_0000), 3072)]
    );
    assert!(GuestMemory::check_range(
        &h.mem,
        GuestAddress(start),
        4096,
        vm_memory::Permissions::Write
    ));
    disk.complete_all(0);
    assert_eq!(h.wait(0, 1).len(), 1);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let disk = MockDisk::new(mock_info());
    let mut blk = Block::new(disk.clone(), BlockConfig::default()).expect("valid");
    let events = Arc::new(TestEvents::default());
    blk.set_host_events(events.clone());
    let mem = guest_memory();
    let dq = DriverQueue::new(&mem, QUEUE_BASE, 16);
    let mut q = dq.queue(BLOCK_QUEUE_SIZE);
    virtio_queue::QueueT::set_event_idx(&mut q, true);
    let irq = Arc::new(MockVirtioInterrupt::default());
    let features = blk.features();
    blk.activate(mem.clone(), vec![q], irq.clone(), features)
        .expect("activates");
    let mut h = Harness {
        blk,
        mem,
        dqs: vec![dq],
        irq,
        events,
        next: 0x1000,
    };
    // The driver wants an interrupt only once used index 2 is passed.
    h.dqs[0].set_used_event(&h.mem, 2);
    // Not contiguous: three disk requests.
    for i in 0..3 {
        h.read_req(0, 2 * i, 512);
    }
    h.blk.process_queue(0);
    let ids: Vec<_> = disk.pending().iter().map(|r| r.id).collect();
    disk.complete(0, ids[0], Ok(512));
    h.wait(0, 1);
    assert!(h.irq.queue_interrupts().is_empty());
    disk.complete(0, ids[1], Ok(512));
    disk.complete(0, ids[2], Ok(512));
    h.wait(0, 2);
    assert_eq!(h.irq.queue_interrupts(), vec![0]);
}

// ---------------------------------------------------------------------------
// Merging contiguous requests of one batch.

/// Host address of guest address `addr`.
fn host(h: &Harness, addr: u64) -> usize {
    GuestMemoryBackend::get_host_address(&h.mem, GuestAddress(addr)).expect("in memory") as usize
}

/// The disk's pending requests as (op, offset, len).
fn pending_ops(disk: &MockDisk) -> Vec<(Operation, u64, u64)> {
    disk.pending()
        .iter()
        .map(|r| (r.op, r.offset, r.len))
        .collect()
}

#[test]
fn contiguous_reads_and_writes_are_merged() {
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    // Three contiguous reads (1, 2 and 1 sectors): one disk read.
    let reads = [
        h.read_req(0, 10, 512),
        h.read_req(0, 11, 1024),
        h.read_req(0, 13, 512),
    ];
    h.blk.process_queue(0);
    let r = disk.pending();
    assert_eq!(pending_ops(&disk), vec![(Operation::Read, 10 * 512, 2048)]);
    assert_eq!(
        r[0].bufs,
        reads
            .iter()
            .zip([512, 1024, 512])
            .map(|(&(_, d, _), len)| (host(&h, d), len))
            .collect::<Vec<_>>(),
        "the members' buffers, in order"
    );
    assert_eq!(h.blk.in_flight(0), 3, "in flight counts chains");
    disk.complete(0, r[0].id, Ok(2048));
    let used = h.wait(0, 3);
    assert_eq!(
        used,
        vec![(reads[0].0, 513), (reads[1].0, 1025), (reads[2].0, 513)],
        "each chain's own used length"
    );
    for (_, _, st) in reads {
        assert_eq!(h.status(st), status::OK);
    }
    assert_eq!(h.irq.queue_interrupts(), vec![0]);
    assert_eq!(h.blk.in_flight(0), 0);

    // Writes likewise.
    let writes: Vec<_> = (0..4u64)
        .map(|i| h.write(0, 100 + i, &pattern(i as u8, 512)))
        .collect();
    h.blk.process_queue(0);
    assert_eq!(
        pending_ops(&disk),
        vec![(Operation::Write, 100 * 512, 2048)]
    );
    assert_eq!(disk.pending()[0].bufs.len(), 4);
    disk.complete_all(0);
    assert_eq!(
        h.wait(0, 4),
        writes.iter().map(|&(w, _)| (w, 1)).collect::<Vec<_>>()
    );
    for (_, st) in writes {
        assert_eq!(h.status(st), status::OK);
    }
    assert_eq!(disk.state().history.len(), 2);
}

#[test]
fn merged_requests_move_the_right_data() {
    for engine in ENGINES {
        let file = TempFile::new("merge", DISK_SIZE, 7);
        let mut h = raw_harness(&file, engine, false);
        // Four contiguous writes of different sizes, split over
        // descriptors.
        let sizes = [4096usize, 512, 8192, 1536];
        let mut sector = 64u64;
        let mut want = file.contents();
        for (i, &len) in sizes.iter().enumerate() {
            let data = pattern(i as u8 + 40, len);
            let hdr = h.header(types::OUT, sector);
            let a = h.put(&data[..len / 2]);
            let b = h.put(&data[len / 2..]);
            let st = h.buffer(1);
            let half = (len / 2) as u32;
            h.post(
                0,
                &[
                    (hdr, 16, false),
                    (a, half, false),
                    (b, half, false),
                    (st, 1, true),
                ],
            );
            let at = (sector * 512) as usize;
            want[at..at + len].copy_from_slice(&data);
            sector += (len / 512) as u64;
        }
        h.blk.process_queue(0);
        assert_eq!(h.wait(0, 4).len(), 4);
        assert!(file.contents() == want, "{engine}: file contents");
        // Read it back in contiguous pieces.
        let reads: Vec<_> = (0..6u64).map(|i| h.read_req(0, 64 + 5 * i, 2560)).collect();
        h.blk.process_queue(0);
        let mut used = h.wait(0, 6);
        used.sort_unstable();
        let mut heads: Vec<_> = reads.iter().map(|&(head, _, _)| (head, 2561)).collect();
        heads.sort_unstable();
        assert_eq!(used, heads);
        for (i, &(_, d, st)) in reads.iter().enumerate() {
            assert_eq!(h.status(st), status::OK);
            let at = (64 + 5 * i) * 512;
            assert!(h.read(d, 2560) == want[at..at + 2560], "{engine}: read {i}");
        }
    }
}

#[test]
fn only_contiguous_same_direction_requests_merge() {
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    h.read_req(0, 0, 512);
    h.read_req(0, 2, 512); // a gap
    h.read_req(0, 2, 512); // the same sectors again
    h.read_req(0, 1, 512); // backwards
    h.write(0, 2, &[0u8; 512]); // contiguous, but a write
    h.read_req(0, 3, 512); // contiguous with the write
    h.blk.process_queue(0);
    assert_eq!(
        pending_ops(&disk),
        vec![
            (Operation::Read, 0, 512),
            (Operation::Read, 1024, 512),
            (Operation::Read, 1024, 512),
            (Operation::Read, 512, 512),
            (Operation::Write, 1024, 512),
            (Operation::Read, 1536, 512),
        ]
    );
    disk.complete_all(0);
    assert_eq!(h.wait(0, 6).len(), 6);
}

#[test]
fn other_requests_are_barriers() {
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    h.write(0, 0, &[1u8; 512]);
    h.write(0, 1, &[1u8; 512]);
    h.simple(0, types::FLUSH, 0);
    h.write(0, 2, &[1u8; 512]);
    let hdr = h.header(types::WRITE_ZEROES, 10);
    let seg = h.segment(10, 1, 0);
    let st = h.buffer(1);
    h.post(0, &[(hdr, 16, false), (seg, 16, false), (st, 1, true)]);
    h.write(0, 3, &[1u8; 512]);
    let (id_head, _) = {
        let hdr = h.header(types::GET_ID, 0);
        let d = h.buffer(21);
        (h.post(0, &[(hdr, 16, false), (d, 21, true)]), d)
    };
    h.write(0, 4, &[1u8; 512]);
    h.blk.process_queue(0);
    assert_eq!(
        pending_ops(&disk),
        vec![
            (Operation::Write, 0, 1024),
            (Operation::Flush, 0, 0),
            (Operation::Write, 1024, 512),
            (Operation::WriteZeroes, 5120, 512),
            (Operation::Write, 1536, 512),
            (Operation::Write, 2048, 512),
        ],
        "nothing merges or moves across a flush, write-zeroes or get-id"
    );
    assert_eq!(h.used(0), vec![(id_head, 21)], "get-id completes at once");
    disk.complete_all(0);
    assert_eq!(h.wait(0, 7).len(), 7);
    assert_eq!(h.blk.in_flight(0), 0);
}

#[test]
fn merging_respects_the_size_and_buffer_caps() {
    // Size: 1 MiB writes (one shared data buffer) merge four at a time.
    let disk = MockDisk::new(DiskInfo {
        size: 64 << 20,
        ..mock_info()
    });
    let mut h = mock_harness(&disk, BlockConfig::default());
    let mib = 1u32 << 20;
    let d = h.alloc(u64::from(mib));
    for i in 0..6u64 {
        let hdr = h.header(types::OUT, i * 2048);
        let st = h.buffer(1);
        h.post(0, &[(hdr, 16, false), (d, mib, false), (st, 1, true)]);
    }
    h.blk.process_queue(0);
    assert_eq!(MAX_MERGE_BYTES, 4 << 20);
    assert_eq!(
        pending_ops(&disk),
        vec![
            (Operation::Write, 0, 4 << 20),
            (Operation::Write, 4 << 20, 2 << 20),
        ]
    );
    disk.complete_all(0);
    assert_eq!(h.wait(0, 6).len(), 6);

    // Buffers: a disk taking four per request.
    let disk = MockDisk::new(DiskInfo {
        max_buffers: 4,
        ..mock_info()
    });
    let mut h = mock_harness(&disk, BlockConfig::default());
    for s in 0..3 {
        h.read_req(0, s, 512);
    }
    // Two buffers: five would be too many with the three before.
    let hdr = h.header(types::IN, 3);
    let a = h.buffer(512);
    let b = h.buffer(512);
    let st = h.buffer(1);
    h.post(
        0,
        &[
            (hdr, 16, false),
            (a, 512, true),
            (b, 512, true),
            (st, 1, true),
        ],
    );
    for s in 5..8 {
        h.read_req(0, s, 512);
    }
    h.blk.process_queue(0);
    assert_eq!(
        pending_ops(&disk),
        vec![
            (Operation::Read, 0, 1536),
            (Operation::Read, 1536, 2048),
            (Operation::Read, 3584, 512),
        ]
    );
    assert!(disk.pending().iter().all(|r| r.bufs.len() <= 4));
    disk.complete_all(0);
    assert_eq!(h.wait(0, 7).len(), 7);
}

#[test]
fn a_failed_merged_request_fails_every_member() {
    let disk = MockDisk::new(mock_info());
    let mut h = mock_harness(&disk, BlockConfig::default());
    let reads: Vec<_> = (0..3).map(|i| h.read_req(0, i, 512)).collect();
    h.blk.process_queue(0);
    let r = disk.pending();
    assert_eq!(r.len(), 1);
    disk.complete(0, r[0].id, Err(mock_error(Operation::Read, libc::EIO)));
    assert_eq!(
        h.wait(0, 3),
        reads
            .iter()
            .map(|&(head, _, _)| (head, 1))
            .collect::<Vec<_>>()
    );
    for (_, _, st) in reads {
        assert_eq!(h.status(st), status::IOERR);
    }
    // Refused at enqueue: every member at once.
    disk.state().refuse = Some(libc::EINVAL);
    let writes: Vec<_> = (0..2).map(|i| h.write(0, i, &[0u8; 512])).collect();
    h.blk.process_queue(0);
    assert_eq!(h.used(0), vec![(writes[0].0, 1), (writes[1].0, 1)]);
    for (_, st) in writes {
        assert_eq!(h.status(st), status::IOERR);
    }
    assert_eq!(h.blk.in_flight(0), 0);
    assert!(!h.blk.is_broken());
}

#[test]
fn merged_writes_are_flushed_in_write_through_mode() {
    let disk = MockDisk::new(mock_info());
    let blk = Block::new(disk.clone(), BlockConfig::default()).expect("valid");
    let features = blk.features() & !features::FLUSH;
    let mut h = Harness::with(blk, guest_memory(), Some(TestEvents::default()), features);
    let writes: Vec<_> = (0..3).map(|i| h.write(0, i, &[2u8; 512])).collect();
    h.blk.process_queue(0);
    assert_eq!(pending_ops(&disk), vec![(Operation::Write, 0, 1536)]);
    let id = disk.pending()[0].id;
    disk.complete(0, id, Ok(1536));
    let deadline = Instant::now() + TIMEOUT;
    while disk.pending().is_empty() {
        assert!(Instant::now() < deadline, "no flush");
        h.poll_events(10);
    }
    assert!(h.used(0).is_empty(), "not complete before the flush");
    assert_eq!(pending_ops(&disk), vec![(Operation::Flush, 0, 0)]);
    disk.complete_all(0);
    assert_eq!(
        h.wait(0, 3),
        writes.iter().map(|&(w, _)| (w, 1)).collect::<Vec<_>>()
    );
}

#[test]
fn merged_requests_count_against_the_queue_size_and_reset() {
    let disk = MockDisk::new(mock_info());
    let config = BlockConfig {
        queue_size: 8,
        ..BlockConfig::default()
    };
    let mut h = mock_harness(&disk, config);
    // Four contiguous two-descriptor reads (status after the data).
    let mut heads = Vec::new();
    for s in 0..4u64 {
        let hdr = h.header(types::IN, s);
        let d = h.buffer(513);
        heads.push(h.post(0, &[(hdr, 16, false), (d, 513, true)]));
    }
    h.blk.process_queue(0);
    assert_eq!(pending_ops(&disk), vec![(Operation::Read, 0, 2048)]);
    assert_eq!(h.blk.in_flight(0), 4);
    // The same chains again (a ring can repeat heads): four more merge;
    // a ninth is not taken while eight are in flight.
    for &head in heads.iter().chain(&heads[..1]) {
        h.dqs[0].add_head(&h.mem, head);
    }
    h.blk.process_queue(0);
    assert_eq!(disk.pending().len(), 2);
    assert_eq!(h.blk.in_flight(0), 8);
    let first = disk.pending()[0].id;
    disk.complete(0, first, Ok(2048));
    assert_eq!(h.wait(0, 4).len(), 4);
    assert_eq!(disk.pending().len(), 2, "the ninth went");
    assert_eq!(h.blk.in_flight(0), 5);
    // Reset waits for and forgets every member.
    h.blk.reset();
    assert!(disk.pending().is_empty());
    assert_eq!(h.blk.in_flight(0), 0);
    h.blk.host_event(0);
    assert!(h.used(0).is_empty());
}
