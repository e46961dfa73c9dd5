//! Merging contiguous requests of one batch.

use super::*;
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
