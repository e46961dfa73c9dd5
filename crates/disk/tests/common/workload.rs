//! A seeded, reproducible disk workload: the operations, the bytes each
//! write puts down, and running them on an [`Image`].
//!
//! Shared by the crash-test writer (`examples/qcow2_writer.rs`, which runs
//! it) and the tests (which regenerate the same operations from the seed to
//! know what the disk must hold).

use vireo_disk::image::{Image, ImageError};

/// splitmix64: a good 64-bit mix, used to seed and to make write data.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// xorshift64*: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(mix(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times out of 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One guest-visible operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes the bytes of [`fill`] for `tag`.
    Write {
        offset: u64,
        len: u64,
        tag: u64,
    },
    Zeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Flush,
}

impl Op {
    /// The byte range the operation may change (empty for a flush).
    pub fn range(&self) -> (u64, u64) {
        match *self {
            Op::Write { offset, len, .. }
            | Op::Zeroes { offset, len, .. }
            | Op::Discard { offset, len } => (offset, offset + len),
            Op::Flush => (0, 0),
        }
    }
}

/// The bytes write `tag` puts at disk offsets `offset..offset+buf.len()`:
/// they depend on the tag and on the position, so data from another write,
/// or shifted to another place, never passes for the right data.
pub fn fill(tag: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0usize;
    while i < buf.len() {
        let pos = offset + i as u64;
        let word = mix(tag ^ (pos >> 3).wrapping_mul(0x1000_0000_01b3)).to_le_bytes();
        let from = (pos & 7) as usize;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
    }
}

/// The data of a write operation.
pub fn write_data(tag: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    fill(tag, offset, &mut buf);
    buf
}

/// The shape of a generated workload.
#[derive(Clone, Debug)]
pub struct Params {
    /// Virtual disk size.
    pub size: u64,
    /// The image's cluster size: offsets crowd around cluster and L2-table
    /// boundaries.
    pub cluster_size: u64,
    pub ops: usize,
    /// A flush after every this many operations (and a few at random).
    pub flush_every: usize,
    /// The longest write.
    pub max_write: u64,
    /// Percentages of write-zeroes and discards (the rest are writes).
    pub zeroes_percent: u64,
    pub discard_percent: u64,
}

impl Params {
    pub fn new(size: u64, cluster_size: u64, ops: usize) -> Self {
        Self {
            size,
            cluster_size,
            ops,
            flush_every: 25,
            max_write: 2 << 20,
            zeroes_percent: 10,
            discard_percent: 10,
        }
    }
}

fn pick_offset(rng: &mut Rng, p: &Params, hot: &[u64]) -> u64 {
    let cs = p.cluster_size;
    // Guest bytes one L2 table maps.
    let table_span = cs * (cs / 8);
    let near = |rng: &mut Rng, unit: u64, spread: u64| -> u64 {
        let k = rng.below(p.size / unit + 1) * unit;
        let delta = rng.below(2 * spread + 1);
        (k + delta).saturating_sub(spread)
    };
    let at = match rng.below(100) {
        0..=29 => rng.below(p.size),
        30..=59 => hot[rng.below(hot.len() as u64) as usize] + rng.below(8 * cs),
        60..=84 => near(rng, cs, 600.min(cs)),
        _ => near(rng, table_span, 2 * cs),
    };
    at.min(p.size - 1)
}

fn pick_len(rng: &mut Rng, p: &Params) -> u64 {
    let cs = p.cluster_size;
    match rng.below(100) {
        0..=49 => rng.range(1, 1024),
        50..=79 => rng.range(1, 4 * cs),
        80..=94 => rng.range(1, p.max_write.min(256 << 10)),
        _ => rng.range(1, p.max_write),
    }
}

/// The operations of workload `seed`: writes of every size at unaligned
/// offsets (many near cluster and L2-table boundaries, many over the same
/// few hot spots so clusters are rewritten), write-zeroes with and without
/// unmap, discards, and flushes.
pub fn generate(seed: u64, p: &Params) -> Vec<Op> {
    assert!(p.size > 0 && p.cluster_size.is_power_of_two());
    let mut rng = Rng::new(seed);
    let hot: Vec<u64> = (0..4).map(|_| rng.below(p.size)).collect();
    let mut ops = Vec::with_capacity(p.ops + p.ops / p.flush_every.max(1) + 1);
    for i in 0..p.ops {
        let offset = pick_offset(&mut rng, p, &hot);
        let len = pick_len(&mut rng, p).min(p.size - offset);
        let kind = rng.below(100);
        let op = if kind < p.zeroes_percent {
            Op::Zeroes {
                offset,
                len,
                unmap: rng.chance(50),
            }
        } else if kind < p.zeroes_percent + p.discard_percent {
            // Discards are mostly larger: whole clusters are what they free.
            let len = (len + rng.below(8) * p.cluster_size).min(p.size - offset);
            Op::Discard { offset, len }
        } else {
            Op::Write {
                offset,
                len,
                tag: mix(seed ^ mix(i as u64 + 1)),
            }
        };
        ops.push(op);
        if (i + 1) % p.flush_every.max(1) == 0 || rng.chance(2) {
            ops.push(Op::Flush);
        }
    }
    ops
}

/// Runs one operation on `image`.
pub fn run(image: &dyn Image, op: &Op) -> Result<(), ImageError> {
    match *op {
        Op::Write { offset, len, tag } => image.write_at(&write_data(tag, offset, len), offset),
        Op::Zeroes { offset, len, unmap } => image.write_zeroes(offset, len, unmap),
        Op::Discard { offset, len } => image.discard(offset, len),
        Op::Flush => image.flush(),
    }
}

/// Where the writer takes internal snapshots when asked to take one every
/// `every` flushes: after the flush operations numbered `every`, `2 *
/// every`, ... (counting from 1); the snapshot after flush `k * every` is
/// named `s<k-1>` and holds operations `0..n` for the returned `n`. Each
/// new snapshot deletes the one two before it.
pub fn snapshot_points(ops: &[Op], every: usize) -> Vec<usize> {
    if every == 0 {
        return Vec::new();
    }
    ops.iter()
        .enumerate()
        .filter(|(_, op)| **op == Op::Flush)
        .map(|(i, _)| i + 1)
        .enumerate()
        .filter(|(k, _)| (k + 1) % every == 0)
        .map(|(_, n)| n)
        .collect()
}
