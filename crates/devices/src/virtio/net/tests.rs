//! Device tests: against a SOCK_SEQPACKET stand-in for the TAP (no
//! privilege needed), and against a real TAP when the host allows it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net as vn;
use vm_memory::{Bytes, GuestAddress};

use super::request::{MAX_PACKET_LEN, NET_HDR_LEN};
use super::tap::host;
use super::*;
use crate::virtio::testutil::{activation, DriverQueue, MockVirtioInterrupt};
use crate::virtio::{GuestMemoryMmap, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1};
use crate::HostEvents;

const fn f(b: u32) -> u64 {
    1 << b
}
const MRG: u64 = f(vn::VIRTIO_NET_F_MRG_RXBUF);
const CTRL_VQ: u64 = f(vn::VIRTIO_NET_F_CTRL_VQ);
const MQ: u64 = f(vn::VIRTIO_NET_F_MQ);
const GUEST_CSUM: u64 = f(vn::VIRTIO_NET_F_GUEST_CSUM);
const MTU: u64 = f(vn::VIRTIO_NET_F_MTU);

/// Records what the device asks the event loop to watch.
#[derive(Default)]
struct MockEvents {
    watched: Mutex<Vec<(RawFd, u32)>>,
    unwatched: Mutex<Vec<RawFd>>,
}

impl MockEvents {
    fn fd(&self, token: u32) -> Option<RawFd> {
        self.watched
            .lock()
            .expect("not poisoned")
            .iter()
            .rev()
            .find(|(_, t)| *t == token)
            .map(|(fd, _)| *fd)
    }
    fn take(&self) -> (Vec<(RawFd, u32)>, Vec<RawFd>) {
        (
            std::mem::take(&mut *self.watched.lock().expect("not poisoned")),
            std::mem::take(&mut *self.unwatched.lock().expect("not poisoned")),
        )
    }
}

impl HostEvents for MockEvents {
    fn watch(&self, fd: RawFd, token: u32) -> io::Result<()> {
        self.watched.lock().expect("not poisoned").push((fd, token));
        Ok(())
    }
    fn unwatch(&self, fd: RawFd) {
        self.unwatched.lock().expect("not poisoned").push(fd);
    }
}

/// A device over SOCK_SEQPACKET "TAP queues", activated, with the far side
/// of each queue and a driver for each virtqueue.
struct Harness {
    net: Net,
    mem: GuestMemoryMmap,
    irq: Arc<MockVirtioInterrupt>,
    q: Vec<DriverQueue>,
    peers: Vec<OwnedFd>,
    events: Arc<MockEvents>,
}

const RING_SIZE: u16 = 128;

fn harness(pairs: usize, features: u64, config: NetConfig) -> Harness {
    let mut taps = Vec::new();
    let mut peers = Vec::new();
    for i in 0..pairs {
        let (a, b) = host::seqpacket_pair();
        taps.push(Tap::for_test(a, &format!("mock{i}"), pairs > 1));
        peers.push(b);
    }
    let mut net = Net::new(taps, config).expect("valid device");
    let events = Arc::new(MockEvents::default());
    net.set_host_events(events.clone());
    let (mem, irq) = activation();
    let n = net.queue_max_sizes().len();
    let size = RING_SIZE.min(net.queue_max_sizes()[0]);
    let q: Vec<DriverQueue> = (0..n)
        .map(|i| DriverQueue::new(&mem, 0x10_0000 + 0x1_0000 * i as u64, size))
        .collect();
    let queues = q
        .iter()
        .zip(net.queue_max_sizes())
        .map(|(d, &max)| d.queue(max))
        .collect();
    net.activate(
        mem.clone(),
        queues,
        irq.clone(),
        VIRTIO_F_VERSION_1 | features,
    )
    .expect("activates");
    Harness {
        net,
        mem,
        irq,
        q,
        peers,
        events,
    }
}

fn send(fd: &OwnedFd, packet: &[u8]) -> io::Result<usize> {
    // SAFETY: `packet` is readable for its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn recv_all(fd: &OwnedFd) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET_LEN + 64];
    while let Ok(n) = host::recv(fd, &mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr))
        .expect("in memory");
    v
}

fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(addr))
        .expect("in memory");
}

/// A packet as the TAP or driver sees it: header (`flags`, `gso_type`, the
/// rest 0) and a frame of `len` bytes whose bytes count up from `seed`.
fn packet(flags: u8, gso: u8, len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; NET_HDR_LEN];
    p[0] = flags;
    p[1] = gso;
    p.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    p
}

/// Posts `bytes` as a transmit chain cut into `pieces` buffers at `addr`.
fn post_tx(h: &mut Harness, queue: usize, addr: u64, bytes: &[u8], pieces: usize) -> u16 {
    write(&h.mem, addr, bytes);
    let step = bytes.len().div_ceil(pieces);
    let bufs: Vec<(u64, u32, bool)> = bytes
        .chunks(step)
        .enumerate()
        .map(|(i, c)| (addr + (i * step) as u64, c.len() as u32, false))
        .collect();
    h.q[queue].add(&h.mem, &bufs)
}

#[test]
fn features_config_and_queues() {
    let h = harness(1, 0, NetConfig::default());
    let feats = h.net.features();
    for bit in [
        vn::VIRTIO_NET_F_MAC,
        vn::VIRTIO_NET_F_STATUS,
        vn::VIRTIO_NET_F_MRG_RXBUF,
        vn::VIRTIO_NET_F_CSUM,
        vn::VIRTIO_NET_F_GUEST_CSUM,
        vn::VIRTIO_NET_F_HOST_TSO4,
        vn::VIRTIO_NET_F_HOST_TSO6,
        vn::VIRTIO_NET_F_HOST_ECN,
        vn::VIRTIO_NET_F_HOST_UFO,
        vn::VIRTIO_NET_F_GUEST_TSO4,
        vn::VIRTIO_NET_F_GUEST_TSO6,
        vn::VIRTIO_NET_F_GUEST_ECN,
        vn::VIRTIO_NET_F_GUEST_UFO,
    ] {
        assert_ne!(feats & f(bit), 0, "feature {bit}");
    }
    // No MQ with one pair, no MTU unless set, no USO where the "TAP"
    // refuses TUNSETOFFLOAD.
    for bit in [
        vn::VIRTIO_NET_F_CTRL_VQ,
        vn::VIRTIO_NET_F_MQ,
        vn::VIRTIO_NET_F_MTU,
        vn::VIRTIO_NET_F_HOST_USO,
    ] {
        assert_eq!(feats & f(bit), 0, "feature {bit}");
    }
    assert_eq!(h.net.device_type(), TYPE_NET);
    assert_eq!(h.net.queue_max_sizes(), &[NET_QUEUE_SIZE; 2]);
    assert_eq!(h.net.config_size(), 12);
    let mac = h.net.mac();
    assert_eq!(&mac[..3], &[0x52, 0x54, 0x00]);
    let mut cfg = [0xffu8; 16];
    h.net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &mac);
    assert_eq!(&cfg[6..], &[1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    let mut two = [0u8; 2];
    h.net.read_config(6, &mut two);
    assert_eq!(two, [1, 0]);
    h.net.read_config(11, &mut two);
    assert_eq!(two, [0, 0]);
    h.net.read_config(u64::MAX, &mut two);
    assert_eq!(two, [0, 0]);

    let config = NetConfig {
        mac: Some([2, 0, 0, 0, 0, 7]),
        queue_size: 64,
        mtu: Some(9000),
    };
    let mut h = harness(3, 0, config);
    let feats = h.net.features();
    assert_eq!(feats & (CTRL_VQ | MQ | MTU), CTRL_VQ | MQ | MTU);
    assert_eq!(h.net.queue_max_sizes(), &[64; 7]);
    let mut cfg = [0u8; 12];
    h.net.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0, 0, 0, 0, 7, 1, 0, 3, 0, 0x28, 0x23]);
    // Writes change nothing.
    h.net.write_config(0, &[9; 6]);
    assert_eq!(h.net.mac(), [2, 0, 0, 0, 0, 7]);
    assert_eq!(h.net.queue_pairs(), 3);
    assert_eq!(h.net.active_queue_pairs(), 1);
    assert_eq!(h.net.tap_name(), "mock0");
}

#[test]
fn bad_configurations_are_refused() {
    let mock = |mq| {
        let (a, _) = host::seqpacket_pair();
        Tap::for_test(a, "m", mq)
    };
    let e = Net::new(vec![], NetConfig::default())
        .err()
        .expect("no queue");
    assert!(matches!(e, NetError::QueuePairs(0)), "{e}");
    let e = Net::new(vec![mock(false), mock(false)], NetConfig::default())
        .err()
        .expect("single-queue TAP");
    assert_eq!(
        e.to_string(),
        "TAP 'm' is not multi-queue (IFF_MULTI_QUEUE), but several queue pairs were asked for"
    );
    for qs in [0, 1, 100, 65535] {
        let c = NetConfig {
            queue_size: qs,
            ..NetConfig::default()
        };
        assert!(matches!(
            Net::new(vec![mock(false)], c),
            Err(NetError::QueueSize(_))
        ));
    }
    let c = NetConfig {
        mtu: Some(67),
        ..NetConfig::default()
    };
    assert!(matches!(
        Net::new(vec![mock(false)], c),
        Err(NetError::Mtu(67))
    ));
    // Activation wants every queue.
    let mut net = Net::new(vec![mock(false)], NetConfig::default()).expect("valid");
    let (mem, irq) = activation();
    assert!(matches!(
        net.activate(mem, vec![], irq, VIRTIO_F_VERSION_1),
        Err(crate::virtio::ActivateError::QueueCount { expected: 2, .. })
    ));
}

#[test]
fn transmit_passes_frames_unchanged() {
    let mut h = harness(1, 0, NetConfig::default());
    let p1 = packet(1, 0, 60, 7);
    let p2 = packet(0, 0, 1500, 9);
    let a = post_tx(&mut h, 1, 0x1000, &p1, 2);
    let b = post_tx(&mut h, 1, 0x2000, &p2, 5);
    h.net.process_queue(1);
    assert_eq!(recv_all(&h.peers[0]), vec![p1, p2]);
    assert_eq!(h.q[1].take_used(&h.mem), vec![(a, 0), (b, 0)]);
    assert_eq!(h.irq.queue_interrupts(), vec![1]);
    let c = h.net.counters();
    assert_eq!((c.tx_packets, c.tx_bytes, c.tx_dropped), (2, 1560, 0));
    // Notifications of the receive queue do not transmit.
    post_tx(&mut h, 1, 0x1000, &packet(0, 0, 60, 0), 1);
    h.net.process_queue(0);
    assert!(recv_all(&h.peers[0]).is_empty());
}

#[test]
fn transmit_in_many_pieces_goes_through_a_host_buffer() {
    let mut h = harness(1, 0, NetConfig::default());
    // 100 pieces: more than fit one writev from guest memory.
    let p = packet(0, 0, 1000 - NET_HDR_LEN, 3);
    let head = post_tx(&mut h, 1, 0x1000, &p, 100);
    // And the largest frame allowed, in one piece.
    let big = packet(0, 0, MAX_FRAME_LEN, 5);
    let head2 = post_tx(&mut h, 1, 0x2_0000, &big, 1);
    h.net.process_queue(1);
    assert_eq!(recv_all(&h.peers[0]), vec![p, big]);
    assert_eq!(h.q[1].take_used(&h.mem), vec![(head, 0), (head2, 0)]);
    assert_eq!(h.net.counters().tx_packets, 2);
}

#[test]
fn bad_transmit_chains_are_dropped() {
    let mut h = harness(1, 0, NetConfig::default());
    // A device-writable buffer, a chain shorter than the header, and one
    // past the largest frame.
    write(&h.mem, 0x1000, &packet(0, 0, 60, 1));
    let w = h.q[1].add(&h.mem, &[(0x1000, 72, false), (0x3000, 16, true)]);
    let short = h.q[1].add(&h.mem, &[(0x1000, 11, false)]);
    let long = h.q[1].add(
        &h.mem,
        &[
            (0x2_0000, 12, false),
            (0x2_0000, MAX_FRAME_LEN as u32 + 1, false),
        ],
    );
    let good = post_tx(&mut h, 1, 0x4000, &packet(0, 0, 60, 2), 1);
    h.net.process_queue(1);
    assert_eq!(
        h.q[1].take_used(&h.mem),
        vec![(w, 0), (short, 0), (long, 0), (good, 0)]
    );
    assert_eq!(recv_all(&h.peers[0]), vec![packet(0, 0, 60, 2)]);
    let c = h.net.counters();
    assert_eq!((c.tx_packets, c.tx_dropped), (1, 3));
    assert!(!h.net.is_broken());

    // A backend that cannot take more (EAGAIN) drops, and goes on.
    let big = packet(0, 0, 60_000, 0);
    write(&h.mem, 0x2_0000, &big);
    for _ in 0..100 {
        h.q[1].add(&h.mem, &[(0x2_0000, big.len() as u32, false)]);
        h.net.process_queue(1);
        assert_eq!(h.q[1].take_used(&h.mem).len(), 1);
        if h.net.counters().tx_dropped > 3 {
            break;
        }
    }
    assert!(h.net.counters().tx_dropped > 3, "the socket never filled");
    assert!(!h.net.is_broken());
}

#[test]
fn malformed_chains_break_the_device_until_reset() {
    let mut h = harness(2, CTRL_VQ | MQ, NetConfig::default());
    let p = packet(0, 0, 60, 1);
    post_tx(&mut h, 1, 0x1000, &p, 1);
    h.net.process_queue(1);
    assert_eq!(recv_all(&h.peers[0]), vec![p.clone()]);
    // A descriptor loop on tx1.
    let dq = &mut h.q[3];
    dq.write_desc(&h.mem, 0, crate::virtio::testutil::desc(0x1000, 8, 1, 1));
    dq.write_desc(&h.mem, 1, crate::virtio::testutil::desc(0x1000, 8, 1, 0));
    dq.add_head(&h.mem, 0);
    h.net.process_queue(3);
    assert!(h.net.is_broken());
    assert_eq!(h.irq.needs_reset_count(), 1);
    assert!(h.q[3].take_used(&h.mem).is_empty());
    // The device stops using every queue until reset, quietly.
    let _ = h.q[1].take_used(&h.mem);
    post_tx(&mut h, 1, 0x1000, &p, 1);
    h.net.process_queue(1);
    send(&h.peers[0], &p).expect("queued");
    h.q[0].add(&h.mem, &[(0x8000, 2048, true)]);
    h.net.host_event(0);
    assert!(h.q[1].take_used(&h.mem).is_empty());
    assert!(h.q[0].take_used(&h.mem).is_empty());
    assert!(recv_all(&h.peers[0]).is_empty());
    assert_eq!(h.irq.needs_reset_count(), 1);

    // A receive chain with a device-readable buffer breaks it too.
    let mut h = harness(1, 0, NetConfig::default());
    send(&h.peers[0], &p).expect("queued");
    h.q[0].add(&h.mem, &[(0x8000, 16, false), (0x9000, 2048, true)]);
    h.net.host_event(0);
    assert!(h.net.is_broken());

    // Reset and a new activation bring it back (the frame read before the
    // bad chain was found is lost with the queues), and frames queued
    // meanwhile are read without waiting for a TAP event.
    h.net.reset();
    assert!(!h.net.is_broken());
    let p = packet(0, 0, 70, 2);
    send(&h.peers[0], &p).expect("queued");
    let (mem, irq) = activation();
    let rx = DriverQueue::new(&mem, 0x10_0000, 16);
    let tx = DriverQueue::new(&mem, 0x11_0000, 16);
    h.net
        .activate(
            mem.clone(),
            vec![rx.queue(NET_QUEUE_SIZE), tx.queue(NET_QUEUE_SIZE)],
            irq,
            VIRTIO_F_VERSION_1,
        )
        .expect("activates");
    let mut rx = rx;
    let head = rx.add(&mem, &[(0x8000, 2048, true)]);
    h.net.process_queue(0);
    assert_eq!(rx.take_used(&mem), vec![(head, p.len() as u32)]);
}

#[test]
fn receive_without_mergeable_buffers() {
    let mut h = harness(1, 0, NetConfig::default());
    let valid = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
    let p = packet(valid, 0, 88, 1);
    send(&h.peers[0], &p).expect("queued");
    let head = h.q[0].add(&h.mem, &[(0x8000, 40, true), (0x9000, 1486, true)]);
    h.net.host_event(0);
    assert_eq!(h.q[0].take_used(&h.mem), vec![(head, 100)]);
    assert_eq!(h.irq.queue_interrupts(), vec![0]);
    // Flags cleared (no GUEST_CSUM), num_buffers 1, frame intact across
    // the two buffers.
    let mut got = read(&h.mem, 0x8000, 40);
    got.extend(read(&h.mem, 0x9000, 60));
    let mut want = p.clone();
    want[0] = 0;
    want[10] = 1;
    assert_eq!(got, want);

    // A frame larger than the chain is dropped; the chain waits for a
    // smaller one.
    let small = h.q[0].add(&h.mem, &[(0xa000, 64, true)]);
    send(&h.peers[0], &packet(0, 0, 88, 2)).expect("queued");
    send(&h.peers[0], &packet(0, 0, 40, 3)).expect("queued");
    h.net.host_event(0);
    assert_eq!(h.q[0].take_used(&h.mem), vec![(small, 52)]);
    assert_eq!(read(&h.mem, 0xa000 + 12, 2), vec![3, 4]);
    let c = h.net.counters();
    assert_eq!((c.rx_packets, c.rx_bytes, c.rx_dropped), (2, 128, 1));
}

#[test]
fn receive_with_mergeable_buffers_spans_chains() {
    let mut h = harness(1, MRG | GUEST_CSUM, NetConfig::default());
    let needs = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let p = packet(needs, 0, 3100 - NET_HDR_LEN, 1);
    send(&h.peers[0], &p).expect("queued");
    let heads: Vec<u16> = (0..4)
        .map(|i| h.q[0].add(&h.mem, &[(0x8000 + 0x1000 * i, 1500, true)]))
        .collect();
    h.net.host_event(0);
    assert_eq!(
        h.q[0].take_used(&h.mem),
        vec![(heads[0], 1500), (heads[1], 1500), (heads[2], 100)]
    );
    assert_eq!(h.irq.queue_interrupts(), vec![0]);
    let mut got = read(&h.mem, 0x8000, 1500);
    got.extend(read(&h.mem, 0x9000, 1500));
    got.extend(read(&h.mem, 0xa000, 100));
    let mut want = p;
    want[10] = 3;
    assert_eq!(got, want);
    // The fourth chain takes the next frame.
    send(&h.peers[0], &packet(0, 0, 20, 0)).expect("queued");
    h.net.host_event(0);
    assert_eq!(h.q[0].take_used(&h.mem), vec![(heads[3], 32)]);
    assert_eq!(read(&h.mem, 0xb000 + 10, 2), vec![1, 0]);
}

#[test]
fn receive_waits_for_buffers_then_drains_the_tap() {
    let mut h = harness(1, MRG, NetConfig::default());
    let p1 = packet(0, 0, 1000, 1);
    let p2 = packet(0, 0, 1000, 2);
    send(&h.peers[0], &p1).expect("queued");
    send(&h.peers[0], &p2).expect("queued");
    // No buffers: nothing happens.
    h.net.host_event(0);
    assert_eq!(h.net.counters(), NetCounters::default());
    // A chain too short for a header goes back empty; one of 600 bytes
    // takes the first frame's start, which then waits for more.
    let tiny = h.q[0].add(&h.mem, &[(0x7000, 8, true)]);
    let a = h.q[0].add(&h.mem, &[(0x8000, 600, true)]);
    h.net.process_queue(0);
    assert_eq!(h.q[0].take_used(&h.mem), vec![(tiny, 0)]);
    assert_eq!(h.net.counters().rx_packets, 0);
    // The next buffers complete it, and the device goes on to the second
    // frame without another TAP event.
    let b = h.q[0].add(&h.mem, &[(0x9000, 600, true)]);
    let c = h.q[0].add(&h.mem, &[(0xa000, 2000, true)]);
    h.net.process_queue(0);
    assert_eq!(
        h.q[0].take_used(&h.mem),
        vec![(a, 600), (b, 412), (c, 1012)]
    );
    assert_eq!(read(&h.mem, 0xa000 + 12, 3), vec![2, 3, 4]);
    let counters = h.net.counters();
    assert_eq!((counters.rx_packets, counters.rx_bytes), (2, 2000));
    // Each batch signalled once (the first only returned the short chain).
    assert_eq!(h.irq.queue_interrupts(), vec![0, 0]);
}

#[test]
fn receive_drops_what_the_driver_cannot_take() {
    let config = NetConfig {
        mtu: Some(1000),
        ..NetConfig::default()
    };
    let mut h = harness(1, MTU, config);
    let needs = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let tso = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    // A partial checksum without GUEST_CSUM; TSO without GUEST_TSO4; over
    // the MTU; a runt; then a good one at the MTU.
    send(&h.peers[0], &packet(needs, 0, 60, 0)).expect("queued");
    send(&h.peers[0], &packet(needs, tso, 3000, 0)).expect("queued");
    send(&h.peers[0], &packet(0, 0, 1000 + 18 + 1, 0)).expect("queued");
    send(&h.peers[0], &[0u8; 5]).expect("queued");
    send(&h.peers[0], &packet(0, 0, 1000 + 18, 0)).expect("queued");
    let head = h.q[0].add(&h.mem, &[(0x8000, 4000, true)]);
    h.net.host_event(0);
    assert_eq!(h.q[0].take_used(&h.mem), vec![(head, 1030)]);
    let c = h.net.counters();
    assert_eq!((c.rx_packets, c.rx_dropped), (1, 4));
}

#[test]
fn long_receive_bursts_resume_through_the_event_loop() {
    // Queue size 2: at most 8 frames per call.
    let config = NetConfig {
        queue_size: 2,
        ..NetConfig::default()
    };
    let (a, peer) = host::seqpacket_pair();
    let mut net = Net::new(vec![Tap::for_test(a, "mock", false)], config).expect("valid");
    let events = Arc::new(MockEvents::default());
    net.set_host_events(events.clone());
    let (mem, irq) = activation();
    let mut rx = DriverQueue::new(&mem, 0x10_0000, 2);
    let tx = DriverQueue::new(&mem, 0x11_0000, 2);
    net.activate(
        mem.clone(),
        vec![rx.queue(2), tx.queue(2)],
        irq,
        VIRTIO_F_VERSION_1,
    )
    .expect("activates");
    let resume = events.fd(RESUME_TOKEN).expect("resume eventfd watched");
    // SAFETY: the device keeps the eventfd open while it lives.
    let resume = unsafe { BorrowedFd::borrow_raw(resume) };
    // A chain too small for any of 20 frames: each is read and dropped.
    rx.add(&mem, &[(0x8000, 20, true)]);
    for i in 0..20 {
        send(&peer, &packet(0, 0, 100, i)).expect("queued");
    }
    net.host_event(0);
    assert_eq!(net.counters().rx_dropped, 8);
    assert!(host::wait_readable(resume, 0));
    net.host_event(RESUME_TOKEN);
    assert_eq!(net.counters().rx_dropped, 16);
    net.host_event(RESUME_TOKEN);
    assert_eq!(net.counters().rx_dropped, 20);
    assert!(!host::wait_readable(resume, 0));
    // A small frame still finds the chain.
    send(&peer, &packet(0, 0, 4, 0)).expect("queued");
    net.host_event(0);
    assert_eq!(rx.take_used(&mem), vec![(0, 16)]);
}

/// Posts a control command; returns its head.
fn post_ctrl(h: &mut Harness, queue: usize, cmd: &[u8], ack: bool) -> u16 {
    write(&h.mem, 0x6000, cmd);
    write(&h.mem, 0x6100, &[0xaa]);
    let mut bufs = vec![];
    if !cmd.is_empty() {
        bufs.push((0x6000, cmd.len() as u32, false));
    }
    if ack {
        bufs.push((0x6100, 1, true));
    }
    h.q[queue].add(&h.mem, &bufs)
}

fn ack(h: &Harness) -> u8 {
    read(&h.mem, 0x6100, 1)[0]
}

#[test]
fn control_queue_enables_pairs() {
    let mut h = harness(2, CTRL_VQ | MQ, NetConfig::default());
    let mq = vn::VIRTIO_NET_CTRL_MQ as u8;
    let set = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    let ok = vn::VIRTIO_NET_OK as u8;
    let err = vn::VIRTIO_NET_ERR as u8;
    // Pair 1 is off: its TAP events deliver nothing.
    send(&h.peers[1], &packet(0, 0, 60, 1)).expect("queued");
    let rx1 = h.q[2].add(&h.mem, &[(0x8000, 2048, true)]);
    h.net.host_event(1);
    h.net.process_queue(2);
    assert!(h.q[2].take_used(&h.mem).is_empty());
    // Out of range, then right.
    for (pairs, want) in [(0u16, err), (3, err), (2, ok)] {
        let [lo, hi] = pairs.to_le_bytes();
        let head = post_ctrl(&mut h, 4, &[mq, set, lo, hi], true);
        h.net.process_queue(4);
        assert_eq!(h.q[4].take_used(&h.mem), vec![(head, 1)]);
        assert_eq!(ack(&h), want, "{pairs} pairs");
    }
    assert_eq!(h.net.active_queue_pairs(), 2);
    // The frame waiting on pair 1 is delivered at once.
    assert_eq!(h.q[2].take_used(&h.mem), vec![(rx1, 72)]);
    assert_eq!(h.irq.queue_interrupts(), vec![4, 4, 4, 2]);
    // Back to one pair.
    let head = post_ctrl(&mut h, 4, &[mq, set, 1, 0], true);
    h.net.process_queue(4);
    assert_eq!(h.q[4].take_used(&h.mem), vec![(head, 1)]);
    assert_eq!((ack(&h), h.net.active_queue_pairs()), (ok, 1));

    // RX mode and MAC tables are acknowledged; other commands refused.
    let rx = vn::VIRTIO_NET_CTRL_RX as u8;
    let mac = vn::VIRTIO_NET_CTRL_MAC as u8;
    let cases: [(&[u8], u8); 6] = [
        (&[rx, 0, 1], ok),
        (&[mac, 0, 0, 0, 0, 0, 0, 0, 0, 0], ok),
        (&[mac, 1, 1, 2, 3, 4, 5, 6], err),
        (&[9, 9], err),
        (&[rx], err),
        (&[mq, set, 1], err),
    ];
    for (cmd, want) in cases {
        let head = post_ctrl(&mut h, 4, cmd, true);
        h.net.process_queue(4);
        assert_eq!(h.q[4].take_used(&h.mem), vec![(head, 1)], "{cmd:?}");
        assert_eq!(ack(&h), want, "{cmd:?}");
    }
    // No status buffer: returned with nothing written.
    let head = post_ctrl(&mut h, 4, &[rx, 0, 1], false);
    h.net.process_queue(4);
    assert_eq!(h.q[4].take_used(&h.mem), vec![(head, 0)]);
    assert!(!h.net.is_broken());
}

#[test]
fn control_queue_without_mq_is_queue_2() {
    let mut h = harness(2, CTRL_VQ, NetConfig::default());
    let mq = vn::VIRTIO_NET_CTRL_MQ as u8;
    let head = post_ctrl(&mut h, 2, &[mq, 0, 2, 0], true);
    h.net.process_queue(2);
    assert_eq!(h.q[2].take_used(&h.mem), vec![(head, 1)]);
    assert_eq!(ack(&h), vn::VIRTIO_NET_ERR as u8);
    assert_eq!(h.net.active_queue_pairs(), 1);
    // Queues of pair 1 and the MQ control queue are not in use.
    post_tx(&mut h, 3, 0x1000, &packet(0, 0, 60, 0), 1);
    h.net.process_queue(3);
    h.net.process_queue(4);
    assert!(h.q[3].take_used(&h.mem).is_empty());
    assert!(recv_all(&h.peers[1]).is_empty());
}

#[test]
fn watches_follow_activation_and_reset() {
    let mut h = harness(2, CTRL_VQ | MQ, NetConfig::default());
    let (watched, unwatched) = h.events.take();
    let tokens: Vec<u32> = watched.iter().map(|w| w.1).collect();
    assert_eq!(tokens, vec![0, 1, RESUME_TOKEN]);
    assert!(unwatched.is_empty());
    h.net.reset();
    let (watched, unwatched) = h.events.take();
    assert!(watched.is_empty());
    assert_eq!(unwatched.len(), 3);
    // A stale event after reset does nothing (and does not read the TAP).
    send(&h.peers[0], &packet(0, 0, 60, 0)).expect("queued");
    h.net.host_event(0);
    h.net.host_event(RESUME_TOKEN);
    h.net.host_event(99);
    h.net.process_queue(0);
    h.net.reset();
    assert_eq!(h.events.take(), (vec![], vec![]));
    assert_eq!(h.net.counters(), NetCounters::default());
    // Unknown tokens while active are ignored too.
    let mut h = harness(1, 0, NetConfig::default());
    h.net.host_event(7);
    h.net.process_queue(9);
    drop(h.net);
    assert_eq!(h.events.take().1.len(), 2);
}

// ---- A real TAP ----------------------------------------------------------

/// An experimental EtherType (IEEE 802 local experimental 1), so test frames
/// stand out from the host's own traffic.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// Opens TAP `vtt<pid><suffix>` with `pairs` queues, or says why the test is
/// skipped.
fn real_tap(suffix: &str, pairs: usize) -> Option<(String, Vec<Tap>)> {
    let name = format!("vtt{}{suffix}", std::process::id() % 10000);
    match Tap::open_named(&name, pairs) {
        Ok(t) => Some((name, t)),
        Err(e) if host::unavailable(&e) => {
            eprintln!("SKIPPED: cannot create TAP {name}: {e}: {}", cause(&e));
            None
        }
        Err(e) => panic!("{e}: {}", cause(&e)),
    }
}

fn cause(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

fn frame(dst: [u8; 6], src: [u8; 6], marker: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(marker);
    f.resize(60, 0);
    f
}

#[test]
fn real_tap_exchanges_frames() {
    let Some((name, taps)) = real_tap("x", 1) else {
        return;
    };
    // Keep the host's IPv6 chatter off the interface (best effort).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    host::link_up(&name).expect("link up");
    let ifindex = host::ifindex(&name).expect("ifindex");
    let sock = host::packet_socket(ifindex).expect("AF_PACKET socket");
    let mut net = Net::new(taps, NetConfig::default()).expect("valid");
    let events = Arc::new(MockEvents::default());
    net.set_host_events(events.clone());
    let (mem, irq) = activation();
    let mut rx = DriverQueue::new(&mem, 0x10_0000, 16);
    let mut tx = DriverQueue::new(&mem, 0x11_0000, 16);
    net.activate(
        mem.clone(),
        vec![rx.queue(NET_QUEUE_SIZE), tx.queue(NET_QUEUE_SIZE)],
        irq,
        VIRTIO_F_VERSION_1 | MRG | GUEST_CSUM,
    )
    .expect("activates");
    let tap_fd = events.fd(0).expect("TAP watched");
    // SAFETY: the device keeps the TAP open while it lives.
    let tap_fd = unsafe { BorrowedFd::borrow_raw(tap_fd) };

    // Guest to host: the frame shows up on the interface.
    let out = frame([0xff; 6], net.mac(), b"vireo guest->host");
    let mut pkt = vec![0u8; NET_HDR_LEN];
    pkt.extend_from_slice(&out);
    write(&mem, 0x1000, &pkt);
    let head = tx.add(
        &mem,
        &[(0x1000, 12, false), (0x100c, out.len() as u32, false)],
    );
    net.process_queue(1);
    assert_eq!(tx.take_used(&mem), vec![(head, 0)]);
    assert_eq!(net.counters().tx_packets, 1, "{:?}", net.counters());
    let mut seen = false;
    let mut buf = vec![0u8; 65536];
    for _ in 0..50 {
        if !host::wait_readable(sock.as_fd(), 100) {
            continue;
        }
        while let Ok(n) = host::recv(&sock, &mut buf) {
            seen |= n >= 60 && buf[..60] == out[..];
        }
        if seen {
            break;
        }
    }
    assert!(seen, "guest frame not seen on {name}");

    // Host to guest: a frame sent on the interface reaches the guest.
    let heads: Vec<u16> = (0..16)
        .map(|i| rx.add(&mem, &[(0x2_0000 + 0x1000 * i, 0x1000, true)]))
        .collect();
    let inbound = frame(net.mac(), [2, 0, 0, 0, 0, 1], b"vireo host->guest");
    host::send_frame(&sock, ifindex, &inbound).expect("sent");
    let mut found = false;
    for _ in 0..50 {
        if host::wait_readable(tap_fd, 100) {
            net.host_event(0);
        }
        for (h, len) in rx.take_used(&mem) {
            let slot = heads.iter().position(|&x| x == h).expect("our chain");
            let got = read(&mem, 0x2_0000 + 0x1000 * slot as u64, len as usize);
            // num_buffers is 1 for a small frame.
            found |=
                got.len() == NET_HDR_LEN + 60 && got[10] == 1 && got[NET_HDR_LEN..] == inbound[..];
        }
        if found {
            break;
        }
    }
    assert!(found, "host frame not received by the guest");
    assert!(net.counters().rx_packets >= 1);
    net.reset();
}

#[test]
fn real_multi_queue_tap_follows_the_driver() {
    let Some((_name, taps)) = real_tap("m", 2) else {
        return;
    };
    let mut net = Net::new(taps, NetConfig::default()).expect("valid");
    assert_ne!(net.features() & MQ, 0);
    let (mem, irq) = activation();
    let mut q: Vec<DriverQueue> = (0..5)
        .map(|i| DriverQueue::new(&mem, 0x10_0000 + 0x1_0000 * i, 16))
        .collect();
    let queues = q.iter().map(|d| d.queue(NET_QUEUE_SIZE)).collect();
    net.activate(mem.clone(), queues, irq, VIRTIO_F_VERSION_1 | CTRL_VQ | MQ)
        .expect("activates");
    // Only the first pair's TAP queue carries traffic at first.
    assert!(net.tap(0).is_queue_enabled());
    assert!(!net.tap(1).is_queue_enabled());
    let mq = vn::VIRTIO_NET_CTRL_MQ as u8;
    write(&mem, 0x6000, &[mq, 0, 2, 0]);
    q[4].add(&mem, &[(0x6000, 4, false), (0x6100, 1, true)]);
    net.process_queue(4);
    assert_eq!(read(&mem, 0x6100, 1), vec![vn::VIRTIO_NET_OK as u8]);
    assert!(net.tap(1).is_queue_enabled());
    // A reset and a driver without MQ: back to one queue.
    net.reset();
    let (mem, irq) = activation();
    let queues = (0..5)
        .map(|i| DriverQueue::new(&mem, 0x10_0000 + 0x1_0000 * i, 16).queue(NET_QUEUE_SIZE))
        .collect();
    net.activate(mem, queues, irq, VIRTIO_F_VERSION_1)
        .expect("activates");
    assert!(!net.tap(1).is_queue_enabled());
}
