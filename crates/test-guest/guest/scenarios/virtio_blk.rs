//! `virtio-blk`: brings up a virtio-blk device, prints its configuration and ID, writes a
//! pattern, flushes, reads it back and compares; checks reads beyond the capacity fail,
//! every queue works, and (msix) that completions raised interrupts. Optional: read-only
//! devices (`readonly=1`), DISCARD and WRITE_ZEROES (`discard=1`).
//!
//! The pattern: sector `lba` holds the line `<pattern> lba <lba>\n` repeated and cut at 512
//! bytes, so a host can check the image file (and a misplaced sector shows).

use crate::kit::prelude::*;
use crate::virtio::blk::{self, Blk, SECTOR};
use crate::virtio::{Mode, Options};
use pci::Pci;

/// The pattern's bytes for sector `lba`.
pub fn sector_pattern(pattern: &str, lba: u64) -> [u8; SECTOR as usize] {
    let line = format!("{pattern} lba {lba}\n");
    let mut out = [0u8; SECTOR as usize];
    for (i, b) in out.iter_mut().enumerate() {
        *b = line.as_bytes()[i % line.len()];
    }
    out
}

fn fill(addr: u64, bytes: &[u8]) {
    // SAFETY: callers pass buffers from `alloc_pages` that are large enough.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
}

fn zero(addr: u64, len: u64) {
    // SAFETY: as for `fill`.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) };
}

fn byte(addr: u64) -> u8 {
    // SAFETY: as for `fill`; the device is done with the buffer.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// The first offset where `[a, a + len)` and `[b, b + len)` differ.
fn first_difference(a: u64, b: u64, len: u64) -> Option<u64> {
    (0..len).find(|&i| byte(a + i) != byte(b + i))
}

fn write_pattern(buf: &[u64; 2], pattern: &str, start: u64, count: u64) {
    for i in 0..count {
        fill(buf[0] + i * SECTOR, &sector_pattern(pattern, start + i));
    }
    zero(buf[1], count * SECTOR);
}

pub fn virtio_blk(ctx: &mut Ctx) -> Result<(), Fail> {
    let pattern = ctx.arg("pattern").unwrap_or("vireo");
    ensure!(!pattern.is_empty(), "pattern= must not be empty");
    let start = ctx.arg_u64("start", 0)?;
    let count = ctx.arg_u64("sectors", 8)?;
    let readonly = ctx.arg_u64("readonly", 0)? != 0;
    let discard = ctx.arg_u64("discard", 0)? != 0;
    let want_queues = ctx.arg_u64("queues", 4)?.clamp(1, 64) as u16;
    ensure!(
        (1..=4096).contains(&count),
        "sectors={count}: expected 1 to 4096"
    );

    let pci = Pci::probe(ctx)?;
    let f = virtio::find(ctx, &pci, virtio::TYPE_BLOCK)?;
    let opts = Options::from_ctx(ctx)?;
    let mut dev = Blk::open(&pci, f, &opts, want_queues)?;
    let cfg = dev.cfg;
    println!(
        "virtio-blk: {} {:04x}:{:04x} mode {:?}, offered {}",
        f.bdf,
        f.vendor,
        f.device,
        opts.mode,
        virtio::feature_names(dev.t.offered, blk::FEATURE_NAMES)
    );
    println!(
        "virtio-blk: negotiated {}",
        virtio::feature_names(dev.t.features, blk::FEATURE_NAMES)
    );
    let show = |v: Option<u32>| v.map_or(String::from("-"), |v| format!("{v}"));
    println!(
        "virtio-blk: capacity {} sectors ({} KiB), blk_size {}, seg_max {}, size_max {}, \
         queues {} of {} (size {})",
        cfg.capacity,
        cfg.capacity / 2,
        show(cfg.blk_size),
        show(cfg.seg_max),
        show(cfg.size_max),
        dev.queues.len(),
        cfg.num_queues,
        dev.queues[0].size
    );
    let (status, id) = dev.get_id(0)?;
    match status {
        blk::S_OK => println!("virtio-blk: id '{id}'"),
        s => println!("virtio-blk: get-id: {} (no ID)", blk::status_name(s)),
    }
    ensure!(
        start + count < cfg.capacity,
        "sectors {start}..{} do not fit the {}-sector disk",
        start + count,
        cfg.capacity
    );
    let ro = dev.has(blk::F_RO);
    ensure!(
        readonly || !ro,
        "the device offers VIRTIO_BLK_F_RO: pass readonly=1 to test a read-only disk"
    );
    let indirect = dev.queues[0].indirect_enabled();
    let len = count * SECTOR;
    let pages = len.div_ceil(4096);
    let buf = [ctx.alloc_pages(pages)?, ctx.alloc_pages(pages)?];

    if readonly {
        write_pattern(&buf, pattern, start, count);
        let status = dev.rw(0, true, start, buf[0], len, indirect)?;
        ensure!(
            matches!(status, blk::S_IOERR | blk::S_UNSUPP),
            "a write to a read-only device (RO feature {}) completed with {}",
            if ro { "offered" } else { "not offered" },
            blk::status_name(status)
        );
        println!(
            "virtio-blk: write to the read-only device failed with {} (RO feature {})",
            blk::status_name(status),
            if ro { "offered" } else { "not offered" }
        );
        let status = dev.rw(0, false, start, buf[1], len, false)?;
        ensure!(
            status == blk::S_OK,
            "reading a read-only device: {}",
            blk::status_name(status)
        );
        println!("virtio-blk: read {count} sectors at {start} from the read-only device");
    } else {
        write_pattern(&buf, pattern, start, count);
        let status = dev.rw(0, true, start, buf[0], len, indirect)?;
        ensure!(status == blk::S_OK, "write: {}", blk::status_name(status));
        if dev.has(blk::F_FLUSH) {
            let status = dev.flush(0)?;
            ensure!(status == blk::S_OK, "flush: {}", blk::status_name(status));
            println!("virtio-blk: flush OK");
        } else {
            println!("virtio-blk: note: no VIRTIO_BLK_F_FLUSH (write-through device)");
        }
        let status = dev.rw(0, false, start, buf[1], len, false)?;
        ensure!(status == blk::S_OK, "read: {}", blk::status_name(status));
        if let Some(at) = first_difference(buf[0], buf[1], len) {
            fail!(
                "read back differs from what was written at byte {at} (sector {}): {:#04x} != {:#04x}",
                start + at / SECTOR,
                byte(buf[1] + at),
                byte(buf[0] + at)
            );
        }
        println!(
            "virtio-blk: wrote ({}), flushed and read back ({}) {count} sectors at {start}: match",
            if indirect {
                "indirect chains"
            } else {
                "direct chains"
            },
            "direct chains"
        );
    }

    // Every further queue reads the first sector of the range.
    for q in 1..dev.queues.len() {
        zero(buf[1], SECTOR);
        let status = dev.rw(q, false, start, buf[1], SECTOR, false)?;
        ensure!(
            status == blk::S_OK,
            "read on queue {q}: {}",
            blk::status_name(status)
        );
        if !readonly {
            ensure!(
                first_difference(buf[0], buf[1], SECTOR).is_none(),
                "queue {q} read different data for sector {start}"
            );
        }
    }
    if dev.queues.len() > 1 {
        println!(
            "virtio-blk: queues 1-{} read sector {start} too",
            dev.queues.len() - 1
        );
    }

    // Beyond the end: the device must not succeed.
    let status = dev.rw(0, false, cfg.capacity, buf[1], SECTOR, false)?;
    ensure!(
        status != blk::S_OK,
        "reading sector {} (the capacity) succeeded",
        cfg.capacity
    );
    println!(
        "virtio-blk: read at sector {} (beyond the end): {}",
        cfg.capacity,
        blk::status_name(status)
    );

    if discard && !readonly {
        discard_and_zeroes(&mut dev, &buf, pattern, start + count, cfg.capacity)?;
    }

    if opts.mode == Mode::Msix {
        irq::drain();
        for q in &dev.queues {
            let vector = q.vector.unwrap_or(0);
            let n = irq::count(vector);
            println!(
                "virtio-blk: queue {} vector {vector:#x}: {n} interrupts",
                q.index
            );
            ensure!(
                n > 0,
                "queue {}: no interrupt on vector {vector:#x}",
                q.index
            );
        }
    }
    let notifies: u64 = dev.queues.iter().map(|q| q.notifies).sum();
    let skipped: u64 = dev.queues.iter().map(|q| q.notifies_skipped).sum();
    println!("virtio-blk: {notifies} notifications, {skipped} suppressed by the device");
    println!(
        "virtio-blk: {} requests, {} us each on average (submit to used)",
        dev.requests,
        time::ticks_to_us(dev.request_ticks) / dev.requests.max(1)
    );
    Ok(())
}

/// DISCARD (reading back zeros is reported, not required) and WRITE_ZEROES (zeros
/// required) on 8 sectors after the pattern.
fn discard_and_zeroes(
    dev: &mut Blk,
    buf: &[u64; 2],
    pattern: &str,
    at: u64,
    capacity: u64,
) -> Result<(), Fail> {
    const N: u64 = 8;
    ensure!(
        at + N <= capacity,
        "no room for the discard test after the pattern"
    );
    let len = N * SECTOR;
    let all_zero = |addr: u64| (0..len).all(|i| byte(addr + i) == 0);
    for (feature, ty, name) in [
        (blk::F_DISCARD, blk::T_DISCARD, "discard"),
        (blk::F_WRITE_ZEROES, blk::T_WRITE_ZEROES, "write-zeroes"),
    ] {
        if !dev.has(feature) {
            println!("virtio-blk: {name}: not offered");
            continue;
        }
        write_pattern(buf, pattern, at, N);
        let status = dev.rw(0, true, at, buf[0], len, false)?;
        ensure!(
            status == blk::S_OK,
            "write before {name}: {}",
            blk::status_name(status)
        );
        let status = dev.discard_or_zero(0, ty, at, N as u32, false)?;
        ensure!(
            status == blk::S_OK,
            "{name} of {N} sectors at {at}: {}",
            blk::status_name(status)
        );
        let status = dev.rw(0, false, at, buf[1], len, false)?;
        ensure!(
            status == blk::S_OK,
            "read after {name}: {}",
            blk::status_name(status)
        );
        let zeros = all_zero(buf[1]);
        if ty == blk::T_WRITE_ZEROES {
            ensure!(
                zeros,
                "sectors {at}..{} are not zero after write-zeroes",
                at + N
            );
        }
        println!(
            "virtio-blk: {name} of {N} sectors at {at}: OK, reads back {}",
            if zeros {
                "zeros"
            } else {
                "the old data (allowed after a discard)"
            }
        );
    }
    Ok(())
}
