//! Requests against a real raw disk: features and configuration, data
//! integrity, refusals, hostile rings, queues and reset.

use super::*;
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
