//! Requests against the scripted mock disk: what a real disk cannot show
//! deterministically (bounded in-flight, error statuses, write-through).

use super::*;
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
