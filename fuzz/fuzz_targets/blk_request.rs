//! virtio-blk requests, from the fuzz input's virtqueue (layout in
//! src/lib.rs).
//!
//! 1. Pure: every chain `ActiveQueues::pop` yields goes through
//!    `block::request::parse`, whose result is checked against the chain:
//!    the status byte is the chain's last writable byte, data lengths add
//!    up, sector ranges lie within the disk, refusals carry IOERR or UNSUPP,
//!    and only a chain without a writable byte is an error.
//! 2. Device: the same input against a whole `Block` on a 64 KiB raw file
//!    with the thread-pool engine: `process_queue`, completions waited for
//!    inline or through `host_event` (as the monitor's event loop does), a
//!    reset while requests are in flight, a second round of chains. Nothing
//!    may panic or hang, every request completes, and the file never
//!    changes size.
//!
//! Header byte 1, bits 3-7 (`flags`): bit 0 a read-only disk, bit 1 the
//! driver negotiated FLUSH (else write-through), bit 2 completions through
//! `host_event`, bit 3 reset after the first `process_queue`, bit 4 pure
//! limits without DISCARD / WRITE_ZEROES. Byte 8 (`extra`): chains added
//! for the second round.

#![no_main]

use std::fs::File;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::block::request::{self, status, Command, DiskLimits, ParseError};
use vireo_devices::virtio::block::{features, Block, BlockConfig};
use vireo_devices::virtio::queue::{ActiveQueues, Chain, GuestBuffer, QueueError};
use vireo_devices::virtio::{GuestMemoryMmap, VirtioDevice, VIRTIO_F_VERSION_1};
use vireo_devices::HostEvents;
use vireo_disk::{Disk, EngineKind, QueueConfig, RawDisk, RawOptions};
use vireo_fuzz::{assert_chain_sane, FuzzQueue, MockInterrupt};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

/// Size of the disk file: 128 sectors.
const DISK_LEN: u64 = 64 * 1024;

/// The disk, opened once per process (read-write and read-only), and a
/// handle on its file to check its size. The file is unlinked at once: the
/// open descriptors keep it alive and nothing is left behind. It lives in
/// /dev/shm where there is one: on a disk-backed file system a flush can
/// stall for seconds behind other writers (a build), which would read as a
/// hang.
struct Disks {
    rw: Arc<dyn Disk>,
    ro: Arc<dyn Disk>,
    file: File,
}

fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("vireo-fuzz-blk-{}.img", std::process::id()));
        let file = File::create(&path).expect("create the disk file");
        file.set_len(DISK_LEN).expect("size the disk file");
        let rw = RawDisk::open(&path, &RawOptions::default()).expect("open the disk");
        let ro = RawDisk::open(
            &path,
            &RawOptions {
                read_only: true,
                ..RawOptions::default()
            },
        )
        .expect("open the disk read-only");
        std::fs::remove_file(&path).expect("unlink the disk file");
        Disks {
            rw: Arc::new(rw),
            ro: Arc::new(ro),
            file,
        }
    })
}

/// The monitor's side of `HostEvents`: remembers what is watched.
#[derive(Default)]
struct Watched(Mutex<Vec<(RawFd, u32)>>);

impl HostEvents for Watched {
    fn watch(&self, fd: RawFd, token: u32) -> std::io::Result<()> {
        self.0.lock().expect("not poisoned").push((fd, token));
        Ok(())
    }
    fn unwatch(&self, fd: RawFd) {
        self.0.lock().expect("not poisoned").retain(|w| w.0 != fd);
    }
}

fuzz_target!(|data: &[u8]| {
    pure(data);
    device(data);
});

/// Sums buffer lengths.
fn total(bufs: &[GuestBuffer]) -> u64 {
    bufs.iter().map(|b| u64::from(b.len)).sum()
}

fn in_memory(mem: &GuestMemoryMmap, bufs: &[GuestBuffer]) -> bool {
    bufs.iter()
        .all(|b| mem.check_range(b.addr, b.len as usize, Permissions::Read))
}

/// Checks one parsed request against its chain.
fn check_request(mem: &GuestMemoryMmap, chain: &Chain, limits: &DiskLimits) {
    let req = match request::parse(chain, mem, limits) {
        Ok(req) => req,
        Err(ParseError::NoStatus { head }) => {
            assert_eq!(head, chain.head);
            assert!(chain.writable.is_empty(), "a status byte was there");
            return;
        }
        Err(e @ ParseError::Memory { .. }) => {
            panic!("{e} for a chain parse_chain checked: {chain:?}")
        }
    };
    assert_eq!(req.head, chain.head);
    let last = chain.writable.last().expect("a status byte");
    assert_eq!(
        req.status,
        GuestAddress(last.addr.0 + u64::from(last.len) - 1)
    );
    assert!(mem.check_range(req.status, 1, Permissions::Write));
    // Data bytes in each direction, for requests past the header check.
    let in_data = chain
        .readable_len()
        .saturating_sub(request::HEADER_LEN as u64);
    let out_data = chain.writable_len() - 1;
    let capacity = limits.capacity * request::SECTOR_SIZE;
    let within = |offset: u64, len: u64| {
        offset.is_multiple_of(request::SECTOR_SIZE)
            && len.is_multiple_of(request::SECTOR_SIZE)
            && offset.checked_add(len).is_some_and(|end| end <= capacity)
    };
    match req.command {
        Command::Read { offset, len, data } => {
            assert!(len > 0 && within(offset, len), "read {offset}+{len}");
            assert_eq!((total(&data), in_data, out_data), (len, 0, len));
            assert!(in_memory(mem, &data));
        }
        Command::Write { offset, len, data } => {
            assert!(!limits.read_only);
            assert!(len > 0 && within(offset, len), "write {offset}+{len}");
            assert_eq!((total(&data), in_data, out_data), (len, len, 0));
            assert!(in_memory(mem, &data));
        }
        Command::Flush => {}
        Command::GetId { data } => {
            assert_eq!((total(&data), in_data), (out_data, 0));
            assert!(in_memory(mem, &data));
        }
        Command::Discard { offset, len } => {
            assert!(limits.discard && !limits.read_only);
            assert!(within(offset, len));
            assert!(len <= u64::from(limits.max_discard_sectors) * request::SECTOR_SIZE);
            assert_eq!((in_data, out_data), (request::SEGMENT_LEN as u64, 0));
        }
        Command::WriteZeroes { offset, len, .. } => {
            assert!(limits.write_zeroes && !limits.read_only);
            assert!(within(offset, len));
            assert!(len <= u64::from(limits.max_write_zeroes_sectors) * request::SECTOR_SIZE);
            assert_eq!((in_data, out_data), (request::SEGMENT_LEN as u64, 0));
        }
        Command::Refused(why) => {
            assert!(
                [status::IOERR, status::UNSUPP].contains(&why.status()),
                "{why}"
            );
        }
    }
}

/// Part 1: the pure parser on every chain of the ring.
fn pure(data: &[u8]) {
    let Some(mut fq) = FuzzQueue::new(data) else {
        return;
    };
    let offered = fq.flags & 16 == 0;
    let limits = DiskLimits {
        capacity: DISK_LEN / request::SECTOR_SIZE,
        read_only: fq.flags & 1 != 0,
        discard: offered,
        write_zeroes: offered,
        max_discard_sectors: 64,
        max_write_zeroes_sectors: 64,
    };
    let size = fq.size;
    let queue = std::mem::take(&mut fq.queue);
    let mut a = ActiveQueues::new("fuzz", fq.mem.clone(), vec![queue], MockInterrupt::new());
    for _ in 0..4 * u32::from(size) {
        match a.pop(0) {
            Ok(Some(chain)) => {
                assert_chain_sane(&fq.mem, &chain, size);
                check_request(&fq.mem, &chain, &limits);
                a.add_used(0, chain.head, 1).expect("head in range");
            }
            Ok(None) | Err(QueueError::Chain(_) | QueueError::Ring(_)) => break,
            Err(e @ QueueError::NoSuchQueue(_)) => panic!("{e}"),
        }
    }
}

/// Part 2: the whole device.
fn device(data: &[u8]) {
    let Some(mut fq) = FuzzQueue::new(data) else {
        return;
    };
    let disks = disks();
    let read_only = fq.flags & 1 != 0;
    let disk = if read_only { &disks.ro } else { &disks.rw };
    let config = BlockConfig {
        io: QueueConfig {
            engine: EngineKind::ThreadPool,
            depth: 16,
            workers: 1,
            name: "fuzz".to_owned(),
        },
        ..BlockConfig::default()
    };
    let mut block = Block::new(disk.clone(), config).expect("a valid configuration");
    let watched = Arc::new(Watched::default());
    let use_events = fq.flags & 4 != 0;
    if use_events {
        block.set_host_events(watched.clone());
    }
    let mut acked = block.features() | VIRTIO_F_VERSION_1;
    if fq.flags & 2 == 0 {
        acked &= !features::FLUSH;
    }
    let irq = MockInterrupt::new();
    let queue = std::mem::take(&mut fq.queue);
    block
        .activate(fq.mem.clone(), vec![queue], irq.clone(), acked)
        .expect("one queue, as offered");

    // Waits for every request in flight, through host_event as the
    // monitor's event loop would (inline mode waited in process_queue).
    // Not on a broken device: requests it had enqueued before the chain
    // that broke it may wait for the reset the driver must do.
    let complete = |block: &mut Block| {
        if block.is_broken() {
            return;
        }
        if !use_events {
            assert_eq!(block.in_flight(0), 0, "inline requests all completed");
            return;
        }
        let fds = watched.0.lock().expect("not poisoned").clone();
        let (fd, token) = *fds.first().expect("the completion fd is watched");
        let mut rounds = 0;
        while block.in_flight(0) > 0 && !block.is_broken() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
            assert!(
                n > 0,
                "no completion within 5 s, {} requests in flight",
                block.in_flight(0)
            );
            block.host_event(token);
            rounds += 1;
            assert!(rounds < 10_000, "completions never end");
        }
    };

    block.process_queue(0);
    if fq.flags & 8 == 0 {
        complete(&mut block);
        if fq.extra != 0 && !block.is_broken() {
            let idx = fq.avail_idx().wrapping_add(u16::from(fq.extra));
            fq.set_avail_idx(idx);
            block.process_queue(0);
            complete(&mut block);
        }
    }
    // A broken device asked for a reset, once.
    assert_eq!(irq.needs_reset_count(), usize::from(block.is_broken()));
    // Reset (with requests in flight when flags bit 3 is set, or on a broken
    // device) waits for everything: nothing is left in flight.
    if fq.flags & 8 != 0 || block.is_broken() {
        block.reset();
        assert_eq!(block.in_flight(0), 0, "reset left requests in flight");
    }
    drop(block);
    let len = disks.file.metadata().expect("fstat the disk file").len();
    assert_eq!(len, DISK_LEN, "the disk file changed size");
}
