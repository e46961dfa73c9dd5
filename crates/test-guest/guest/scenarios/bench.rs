//! `bench-blk` and `bench-net`: throughput of the first virtio-blk / virtio-net device,
//! driven from CPL3 by polling (no interrupts), timed with the calibrated TSC. The host
//! side is `cargo xtask bench blk|net`, which runs the same workloads under host fio, QEMU
//! and Vireo and prints ratios.
//!
//! Every test prints one machine-readable line:
//! `bench-blk: randread qd=32 bs=4096 ops=<n> secs=<s.mmm> iops=<n> mbps=<MB/s> test=randread32`
//! and
//! `bench-net: tx frame=<bytes> packets=<n> secs=<s.mmm> pps=<n> gbps=<Gb/s>` (MB and Gb
//! are decimal units; `frame` is the Ethernet frame without FCS, and Gb/s counts those
//! bytes). `bench-net` prints `bench-net: begin frame=<bytes>`, then waits `settle_ms=`
//! (200) before each timed run, so a host can read its own counters (the TAP's
//! rx_packets) at both ends: nothing is sent between a result line and the next run.
//!
//! A timed run keeps `qd` requests (blk) or a full ring (net) in flight: it posts them,
//! notifies once, then polls the used ring, and for every batch of completions reposts
//! as many and notifies once more (EVENT_IDX or NO_NOTIFY may spare that). When the time
//! is up it stops posting and waits for what is in flight; those completions count, and
//! `secs` runs until the last one.

use core::ptr::{read_volatile, write_volatile};

use super::virtio_misc::{checksum, ipv4, mac_text};
use crate::kit::prelude::*;
use crate::virtio::blk::{self, Blk, SECTOR};
use crate::virtio::net::{self, Net};
use crate::virtio::{Buf, Mode, Options, Used, Virtqueue};
use pci::Pci;

/// How long in-flight requests may take to come back once a run stops posting.
const DRAIN_MS: u64 = 10_000;
/// How long a run may see no completion at all before it fails.
const STALL_MS: u64 = 10_000;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// xorshift64* (Vigna): plenty for spreading offsets over a disk.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `1G`, `512M`, `64K`, or a number of bytes.
fn parse_size(key: &str, text: &str) -> Result<u64, Fail> {
    let (digits, unit) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], KIB),
        Some(b'M' | b'm') => (&text[..text.len() - 1], MIB),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 1024 * MIB),
        Some(b'T' | b't') => (&text[..text.len() - 1], 1024 * 1024 * MIB),
        _ => (text, 1),
    };
    let Some(n) = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)) else {
        fail!("{key}={text}: expected a size such as 1G, 512M or a number of bytes");
    };
    Ok(n)
}

/// `secs=`: seconds per test (1 to 3600).
fn secs_arg(ctx: &Ctx) -> Result<u64, Fail> {
    let secs = ctx.arg_u64("secs", 2)?;
    ensure!(
        (1..=3600).contains(&secs),
        "secs={secs}: expected 1 to 3600"
    );
    Ok(secs)
}

/// Polling only: interrupts would measure another path.
fn poll_options(ctx: &Ctx, name: &str) -> Result<Options, Fail> {
    let opts = Options::from_ctx(ctx)?;
    ensure!(
        opts.mode == Mode::Poll,
        "{name} measures the polling driver: mode=msix is not supported"
    );
    Ok(opts)
}

/// `n / 10^digits` as a decimal with `digits` places.
fn fixed(n: u64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    format!(
        "{}.{:0width$}",
        n / scale,
        n % scale,
        width = digits as usize
    )
}

/// `per_us * 10^6 / us`, rounded down (0 for no time).
fn per_second(count: u64, us: u64) -> u64 {
    if us == 0 {
        return 0;
    }
    ((u128::from(count) * 1_000_000) / u128::from(us)) as u64
}

/// `bytes / us` (= MB/s) with `digits` decimals, as an integer scaled by 10^digits.
fn bytes_per_us_scaled(bytes: u64, us: u64, digits: u32) -> u64 {
    if us == 0 {
        return 0;
    }
    ((u128::from(bytes) * u128::from(10u64.pow(digits))) / u128::from(us)) as u64
}

/// Pops every used entry there is right now into `out` (cleared first), keeping the
/// device from signalling (polling: EVENT_IDX's used_event is put back behind us).
fn drain_used(q: &mut Virtqueue, out: &mut Vec<Used>) {
    out.clear();
    while let Some(used) = q.pop_used() {
        out.push(used);
    }
    if !out.is_empty() {
        q.want_interrupts(false);
    }
}

// ---------------------------------------------------------------------------------------
// bench-blk

/// One block workload.
#[derive(Clone, Copy, Debug)]
struct BlkTest {
    /// The name in `tests=`.
    id: &'static str,
    /// The name in the result line.
    kind: &'static str,
    write: bool,
    random: bool,
    bs: u64,
    qd: u16,
}

/// The workloads, in `tests=` order (sequential ones take `seq_qd=`).
const BLK_TESTS: [BlkTest; 6] = [
    BlkTest {
        id: "randread1",
        kind: "randread",
        write: false,
        random: true,
        bs: 4 * KIB,
        qd: 1,
    },
    BlkTest {
        id: "randread32",
        kind: "randread",
        write: false,
        random: true,
        bs: 4 * KIB,
        qd: 32,
    },
    BlkTest {
        id: "randwrite1",
        kind: "randwrite",
        write: true,
        random: true,
        bs: 4 * KIB,
        qd: 1,
    },
    BlkTest {
        id: "randwrite32",
        kind: "randwrite",
        write: true,
        random: true,
        bs: 4 * KIB,
        qd: 32,
    },
    BlkTest {
        id: "seqread",
        kind: "seqread",
        write: false,
        random: false,
        bs: MIB,
        qd: 0,
    },
    BlkTest {
        id: "seqwrite",
        kind: "seqwrite",
        write: true,
        random: false,
        bs: MIB,
        qd: 0,
    },
];

/// Request slots: one 64-byte header + status record per slot in one page.
const SLOT_STRIDE: u64 = 64;
const SLOT_STATUS: u64 = 16;
const MAX_QD: u16 = 64;
const STATUS_UNWRITTEN: u8 = 0xff;

/// The state of one timed block run.
struct BlkRun {
    test: BlkTest,
    /// Request records (header, status) of slot i at `records + i * SLOT_STRIDE`.
    records: u64,
    /// Data buffer of slot i at `data + i * bs`.
    data: u64,
    /// Bytes per data descriptor.
    seg_bytes: u64,
    /// Which slot each chain head carries.
    head_slot: Vec<u16>,
    /// The chain being built (reused: the heap never frees).
    chain: Vec<Buf>,
    /// Blocks of `bs` in the area, and the next sequential one.
    blocks: u64,
    next_block: u64,
    prng: Prng,
}

impl BlkRun {
    /// Posts a request for `slot` at the next offset (not notified yet).
    fn post(&mut self, q: &mut Virtqueue, slot: u16) -> Result<(), Fail> {
        let block = if self.test.random {
            self.prng.next() % self.blocks
        } else {
            let b = self.next_block;
            self.next_block = (self.next_block + 1) % self.blocks;
            b
        };
        let sector = block * self.test.bs / SECTOR;
        let record = self.records + u64::from(slot) * SLOT_STRIDE;
        let ty = if self.test.write {
            blk::T_OUT
        } else {
            blk::T_IN
        };
        // SAFETY: slot `slot`'s record in a page from `alloc_pages`; the slot is not in
        // flight, so the device is not using it.
        unsafe {
            write_volatile(record as *mut u32, ty);
            write_volatile((record + 4) as *mut u32, 0);
            write_volatile((record + 8) as *mut u64, sector);
            write_volatile((record + SLOT_STATUS) as *mut u8, STATUS_UNWRITTEN);
        }
        let data = self.data + u64::from(slot) * self.test.bs;
        self.chain.clear();
        self.chain.push(Buf::out(record, 16));
        let mut at = 0;
        while at < self.test.bs {
            let n = (self.test.bs - at).min(self.seg_bytes);
            self.chain.push(Buf {
                addr: data + at,
                len: n as u32,
                write: !self.test.write,
            });
            at += n;
        }
        self.chain.push(Buf::inn(record + SLOT_STATUS, 1));
        let head = q.submit_reusing(&self.chain)?;
        self.head_slot[usize::from(head)] = slot;
        Ok(())
    }

    /// The status byte of `slot`'s finished request.
    fn status(&self, slot: u16) -> u8 {
        let at = self.records + u64::from(slot) * SLOT_STRIDE + SLOT_STATUS;
        // SAFETY: as in `post`; the device is done with the request.
        unsafe { read_volatile(at as *const u8) }
    }
}

pub fn bench_blk(ctx: &mut Ctx) -> Result<(), Fail> {
    let secs = secs_arg(ctx)?;
    let size = match ctx.arg("size") {
        Some(text) => parse_size("size", text)?,
        None => u64::MAX,
    };
    let seq_qd = ctx.arg_u64("seq_qd", 8)?;
    ensure!(
        (1..=u64::from(MAX_QD)).contains(&seq_qd),
        "seq_qd={seq_qd}: expected 1 to {MAX_QD}"
    );
    let mut tests = Vec::new();
    for id in ctx
        .arg("tests")
        .unwrap_or("randread1,randread32,randwrite1,randwrite32,seqread,seqwrite")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let Some(t) = BLK_TESTS.iter().find(|t| t.id == id) else {
            let known: Vec<&str> = BLK_TESTS.iter().map(|t| t.id).collect();
            fail!("tests=: unknown test '{id}' (known: {})", known.join(","));
        };
        let mut t = *t;
        if t.qd == 0 {
            t.qd = seq_qd as u16;
        }
        tests.push(t);
    }
    ensure!(!tests.is_empty(), "tests= names no test");
    let opts = poll_options(ctx, "bench-blk")?;

    let pci = Pci::probe(ctx)?;
    let f = virtio::find(ctx, &pci, virtio::TYPE_BLOCK)?;
    let mut dev = Blk::open(&pci, f, &opts, 1)?;
    let cfg = dev.cfg;
    let disk = cfg.capacity * SECTOR;
    let area = size.min(disk);
    ensure!(
        !dev.has(blk::F_RO) || tests.iter().all(|t| !t.write),
        "the device is read-only (VIRTIO_BLK_F_RO): choose read tests only (tests=)"
    );
    // Bytes per data descriptor: whole pages unless size_max says less.
    let seg_bytes = match cfg.size_max {
        Some(m) if u64::from(m) < MIB => {
            let m = u64::from(m) - u64::from(m) % SECTOR;
            ensure!(m > 0, "size_max {m} is below one sector");
            m
        }
        _ => MIB,
    };
    println!(
        "bench-blk: {} {:04x}:{:04x}, capacity {} MiB, area {} MiB, queue size {}, negotiated {}, \
         {secs} s per test, tsc {} kHz",
        f.bdf,
        f.vendor,
        f.device,
        disk / MIB,
        area / MIB,
        dev.queues[0].size,
        virtio::feature_names(dev.t.features, blk::FEATURE_NAMES),
        time::tsc_khz()
    );

    // Buffers for the largest test, allocated once (the heap never frees).
    let data_bytes = tests
        .iter()
        .map(|t| t.bs * u64::from(t.qd))
        .max()
        .unwrap_or(0);
    let data = ctx.alloc_pages(data_bytes.div_ceil(4096))?;
    // What writes write: not zeros (a file system might treat those specially).
    for i in 0..data_bytes / 8 {
        // SAFETY: inside the pages just allocated.
        unsafe { write_volatile((data + i * 8) as *mut u64, 0x7669_7265_6f00_0000 ^ i) };
    }
    let records = ctx.alloc_pages(1)?;
    let queue_size = dev.queues[0].size;
    let mut run = BlkRun {
        test: tests[0],
        records,
        data,
        seg_bytes,
        head_slot: vec![0; usize::from(queue_size)],
        chain: Vec::with_capacity((MIB / SECTOR) as usize + 2),
        blocks: 1,
        next_block: 0,
        prng: Prng(0x9e37_79b9_7f4a_7c15),
    };
    let mut used = Vec::with_capacity(usize::from(queue_size));
    for t in tests {
        let segs = t.bs.div_ceil(seg_bytes);
        if let Some(max) = cfg.seg_max {
            ensure!(
                segs <= u64::from(max),
                "{}: {segs} data segments per request, the device takes {max} (seg_max)",
                t.id
            );
        }
        let per_request = segs + 2;
        let fits = (u64::from(queue_size) / per_request).min(u64::from(MAX_QD)) as u16;
        ensure!(
            fits >= 1,
            "{}: a request needs {per_request} descriptors, the queue has {queue_size}",
            t.id
        );
        let qd = t.qd.min(fits);
        if qd < t.qd {
            println!(
                "bench-blk: note: {}: queue depth {} does not fit the {queue_size}-entry queue \
                 ({per_request} descriptors per request): using {qd}",
                t.id, t.qd
            );
        }
        ensure!(
            area >= t.bs,
            "{}: the area ({area} bytes) is smaller than one {}-byte block",
            t.id,
            t.bs
        );
        run.test = BlkTest { qd, ..t };
        run.blocks = area / t.bs;
        run.next_block = 0;
        let (ops, us) = blk_timed(&mut dev, &mut run, &mut used, secs)?;
        println!(
            "bench-blk: {} qd={qd} bs={} ops={ops} secs={} iops={} mbps={} test={}",
            t.kind,
            t.bs,
            fixed(us / 1000, 3),
            per_second(ops, us),
            fixed(bytes_per_us_scaled(ops * t.bs, us, 1), 1),
            t.id
        );
    }
    Ok(())
}

/// One timed run: (requests completed, microseconds).
fn blk_timed(
    dev: &mut Blk,
    run: &mut BlkRun,
    used: &mut Vec<Used>,
    secs: u64,
) -> Result<(u64, u64), Fail> {
    let qd = run.test.qd;
    let q = &mut dev.queues[0];
    q.want_interrupts(false);
    let start = time::rdtsc();
    let deadline = Deadline::after_us(secs * 1_000_000);
    for slot in 0..qd {
        run.post(q, slot)?;
    }
    q.kick();
    let mut in_flight = u64::from(qd);
    let mut ops = 0u64;
    let mut stopping = false;
    let mut stall = Deadline::after_ms(STALL_MS);
    loop {
        drain_used(q, used);
        if used.is_empty() {
            if stall.expired() {
                fail!(
                    "{}: no request completed in {} ms ({in_flight} in flight, device status {:#x})",
                    run.test.id,
                    if stopping { DRAIN_MS } else { STALL_MS },
                    dev.t.status()
                );
            }
            core::hint::spin_loop();
            continue;
        }
        let mut posted = false;
        for u in used.iter() {
            let slot = run.head_slot.get(u.id as usize).copied();
            let Some(slot) = slot.filter(|_| u.known) else {
                fail!(
                    "{}: the device returned chain {}, which was not in flight",
                    run.test.id,
                    u.id
                );
            };
            let status = run.status(slot);
            ensure!(
                status == blk::S_OK,
                "{}: a request completed with status {}",
                run.test.id,
                blk::status_name(status)
            );
            ops += 1;
            in_flight -= 1;
            if !stopping {
                run.post(q, slot)?;
                in_flight += 1;
                posted = true;
            }
        }
        if posted {
            q.kick();
        }
        if in_flight == 0 {
            break;
        }
        if !stopping && deadline.expired() {
            stopping = true;
            stall = Deadline::after_ms(DRAIN_MS);
        } else {
            stall = Deadline::after_ms(if stopping { DRAIN_MS } else { STALL_MS });
        }
    }
    let us = time::ticks_to_us(time::rdtsc().wrapping_sub(start));
    Ok((ops, us))
}

// ---------------------------------------------------------------------------------------
// bench-net

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(key: &str, text: &str) -> Result<[u8; 6], Fail> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for slot in &mut out {
        let Some(b) = parts
            .next()
            .filter(|p| p.len() == 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
        else {
            fail!("{key}={text}: expected a MAC address such as 52:54:00:12:34:56");
        };
        *slot = b;
    }
    ensure!(
        parts.next().is_none(),
        "{key}={text}: expected a MAC address such as 52:54:00:12:34:56"
    );
    Ok(out)
}

/// A UDP/IPv4 Ethernet frame of exactly `len` bytes (without FCS) from `src` to `dst`
/// (port 9, discard).
fn udp_frame(
    len: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
) -> Vec<u8> {
    let ip_len = (len - 14) as u16;
    let udp_len = ip_len - 20;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0x76, 0x62, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL 64, UDP
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let c = checksum(&f[ip_start..]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    let payload = len - f.len();
    f.extend((0..payload).map(|i| b'a' + (i % 26) as u8));
    f
}

pub fn bench_net(ctx: &mut Ctx) -> Result<(), Fail> {
    let secs = secs_arg(ctx)?;
    let ip = ipv4("ip", ctx.arg("ip").unwrap_or("10.0.2.15"))?;
    let peer = ipv4("peer", ctx.arg("peer").unwrap_or("10.0.2.2"))?;
    let peer_mac = match ctx.arg("peer_mac") {
        Some(text) => parse_mac("peer_mac", text)?,
        None => [0xff; 6],
    };
    let mut frames = Vec::new();
    for text in ctx
        .arg("frames")
        .unwrap_or("64,1514")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let Ok(len) = text.parse::<usize>() else {
            fail!("frames=: '{text}' is not a number");
        };
        frames.push(len);
    }
    ensure!(!frames.is_empty(), "frames= names no frame size");
    let settle_ms = ctx.arg_u64("settle_ms", 200)?;
    ensure!(
        settle_ms <= 10_000,
        "settle_ms={settle_ms}: expected at most 10000"
    );
    let opts = poll_options(ctx, "bench-net")?;

    let pci = Pci::probe(ctx)?;
    let f = virtio::find(ctx, &pci, virtio::TYPE_NET)?;
    let mut dev = Net::open(&pci, f, &opts)?;
    let max_frame = 14 + usize::from(dev.mtu.unwrap_or(1500));
    for &len in &frames {
        ensure!(
            (60..=max_frame).contains(&len),
            "frames=: {len} bytes; expected 60 to {max_frame} (Ethernet header + MTU, no FCS)"
        );
    }
    let link = dev.link_up()?;
    ensure!(link != Some(false), "the link is down");
    println!(
        "bench-net: {} {:04x}:{:04x}, mac {}, to {} ({}), tx queue size {}, negotiated {}, \
         {secs} s per test, tsc {} kHz",
        f.bdf,
        f.vendor,
        f.device,
        mac_text(&dev.mac),
        peer.map(|b| format!("{b}")).join("."),
        mac_text(&peer_mac),
        dev.tx.size,
        virtio::feature_names(dev.t.features, net::FEATURE_NAMES),
        time::tsc_khz()
    );
    // One buffer per frame size: every descriptor in flight points at it (the device
    // only reads it).
    let buf = ctx.alloc_pages(1)?;
    let mut used = Vec::with_capacity(usize::from(dev.tx.size));
    for len in frames {
        let frame = udp_frame(len, dev.mac, peer_mac, ip, peer);
        // SAFETY: `buf` is a page from `alloc_pages` and no chain is in flight; the
        // virtio-net header (all zeros: no offloads) is followed by the frame.
        unsafe {
            core::ptr::write_bytes(buf as *mut u8, 0, net::HDR_LEN);
            core::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                (buf + net::HDR_LEN as u64) as *mut u8,
                len,
            );
        }
        let chain = [Buf::out(buf, (net::HDR_LEN + len) as u32)];
        println!("bench-net: begin frame={len}");
        // Time for a host to read its counters before the first frame leaves.
        time::sleep_ms(settle_ms);
        let (packets, us) = net_timed(&mut dev, &chain, &mut used, secs)?;
        println!(
            "bench-net: tx frame={len} packets={packets} secs={} pps={} gbps={}",
            fixed(us / 1000, 3),
            per_second(packets, us),
            // bits per microsecond = Mb/s, printed as Gb/s
            fixed(bytes_per_us_scaled(packets * len as u64 * 8, us, 0), 3)
        );
    }
    Ok(())
}

/// One timed transmit run: (packets completed, microseconds).
fn net_timed(
    dev: &mut Net,
    chain: &[Buf],
    used: &mut Vec<Used>,
    secs: u64,
) -> Result<(u64, u64), Fail> {
    let q = &mut dev.tx;
    q.want_interrupts(false);
    let start = time::rdtsc();
    let deadline = Deadline::after_us(secs * 1_000_000);
    let mut in_flight = 0u64;
    while q.free_count() > 0 {
        q.submit_reusing(chain)?;
        in_flight += 1;
    }
    q.kick();
    let mut packets = 0u64;
    let mut stopping = false;
    let mut stall = Deadline::after_ms(STALL_MS);
    loop {
        drain_used(q, used);
        if used.is_empty() {
            if stall.expired() {
                fail!(
                    "tx: no frame completed in {} ms ({in_flight} in flight, device status {:#x})",
                    if stopping { DRAIN_MS } else { STALL_MS },
                    dev.t.status()
                );
            }
            core::hint::spin_loop();
            continue;
        }
        for u in used.iter() {
            ensure!(
                u.known,
                "tx: the device returned chain {}, which was not in flight",
                u.id
            );
        }
        let done = used.len() as u64;
        packets += done;
        in_flight -= done;
        if !stopping {
            while q.free_count() > 0 {
                q.submit_reusing(chain)?;
                in_flight += 1;
            }
            q.kick();
        }
        if in_flight == 0 {
            break;
        }
        if !stopping && deadline.expired() {
            stopping = true;
            stall = Deadline::after_ms(DRAIN_MS);
        } else {
            stall = Deadline::after_ms(if stopping { DRAIN_MS } else { STALL_MS });
        }
    }
    let us = time::ticks_to_us(time::rdtsc().wrapping_sub(start));
    Ok((packets, us))
}
