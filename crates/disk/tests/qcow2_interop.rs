//! qcow2 interoperability with the real qemu-img and qemu-io (skipped,
//! loudly, without them):
//! - images qemu made, with every option qemu-img has for them, read by
//!   Vireo exactly as `qemu-img convert -O raw` reads them;
//! - images Vireo made and wrote, with the same options, pass
//!   `qemu-img check` and read back in qemu as what was written;
//! - seeded random workloads over backing files, with internal snapshots
//!   taken by qemu-img in between (so Vireo copies shared tables and data
//!   on write), checked against an in-memory model after every phase, and
//!   `qemu-img snapshot -a` bringing back each snapshot's contents.
//!
//! Replay a randomized failure with `VIREO_QCOW2_SEED=<seed>`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::workload::{self, generate, Op, Params, Rng};
use common::{
    assert_both_checks_clean, assert_same, display_chain, have_qemu, open, pattern, qemu_img,
    qemu_info, qemu_io, qemu_raw, read_all, s, seed, vireo_raw, Model, TempDir, KIB, MIB,
};
use vireo_disk::image::qcow2::RepairMode;
use vireo_disk::image::{
    self, Allocation, CompressionType, CreateOptions, Image, ImageError, Preallocation, Qcow2,
};

// ---- helpers ----------------------------------------------------------------

/// qemu-io commands that put a bit of everything into an image: pattern
/// writes (unaligned, across clusters, some large), zero writes with and
/// without unmap, discards, and with `compressed` (for images none of whose
/// clusters are allocated yet: qemu compresses only into unallocated
/// clusters) compressed clusters first, which the rest then partly
/// overwrites.
fn qemu_commands(rng: &mut Rng, size: u64, cs: u64, n: usize, compressed: bool) -> Vec<String> {
    let mut cmds = Vec::new();
    if compressed {
        let mut clusters: Vec<u64> = (0..n / 5 + 1).map(|_| rng.below(size / cs)).collect();
        clusters.sort_unstable();
        clusters.dedup();
        for c in clusters {
            let pat = rng.range(1, 255);
            cmds.push(format!("write -c -P {pat:#x} {} {cs}", c * cs));
        }
    }
    let sector_floor = |x: u64| x & !511;
    for _ in 0..n {
        let pat = rng.range(1, 255);
        let off = match rng.below(3) {
            0 => rng.below(size),
            // Just before a cluster boundary.
            1 => (rng.below(size / cs) * cs).saturating_sub(rng.range(1, 700)),
            _ => rng.below(size / cs) * cs + rng.below(cs),
        };
        let max = if rng.chance(15) { 600 * KIB } else { 3 * cs };
        let len = rng.range(1, max).min(size - off);
        let cmd = match rng.below(100) {
            0..=59 => format!("write -P {pat:#x} {off} {len}"),
            60..=72 => format!("write -z {off} {len}"),
            73..=82 => {
                // Unmapping needs sector alignment.
                let off = sector_floor(off);
                let len = sector_floor(len).max(512).min(size - off);
                format!("write -z -u {off} {len}")
            }
            _ => {
                let off = sector_floor(off);
                let len = sector_floor(len + rng.below(4) * cs)
                    .max(512)
                    .min(size - off);
                format!("discard {off} {len}")
            }
        };
        cmds.push(cmd);
    }
    cmds
}

/// Creates a qcow2 image with qemu-img.
fn qemu_create(path: &Path, opts: &str, size: u64) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let size = size.to_string();
    args.extend([s(path), &size]);
    qemu_img(&args);
}

fn qemu_snapshot(path: &Path, flag: &str, name: &str) {
    qemu_img(["snapshot", flag, name, s(path)]);
}

/// Vireo's reading of the image at `path`, compared with qemu-img's: the
/// whole disk at once, odd pieces of it, and block status that agrees with
/// the data.
fn assert_vireo_reads_like_qemu(path: &Path, what: &str, rng: &mut Rng) {
    assert_both_checks_clean(path, &format!("{what}: as qemu left it"));
    let want = qemu_raw(path);
    let image = open(path, true);
    assert_eq!(image.size(), want.len() as u64, "{what}: virtual size");
    assert_same(
        &format!("{what}: whole disk"),
        &read_all(&*image, image.size()),
        &want,
    );
    let got = read_all(&*image, 3 * MIB + 4097);
    assert_same(&format!("{what}: read in odd chunks"), &got, &want);
    for _ in 0..40 {
        let off = rng.below(want.len() as u64);
        let len = rng.range(1, 300 * KIB).min(want.len() as u64 - off);
        let mut buf = vec![0u8; len as usize];
        image.read_at(&mut buf, off).expect("read a piece");
        assert!(
            buf[..] == want[off as usize..(off + len) as usize],
            "{what}: read of {len} bytes at {off:#x} differs from qemu's"
        );
    }
    assert_block_status_consistent(&image, &want, what);
}

/// Block status covers the disk, and what it calls zero reads as zeros.
fn assert_block_status_consistent(image: &Arc<dyn Image>, want: &[u8], what: &str) {
    let size = image.size();
    let mut pos = 0;
    while pos < size {
        let st = image
            .block_status(pos, size - pos)
            .unwrap_or_else(|e| panic!("{what}: block status at {pos:#x}: {e}"));
        assert!(
            st.len > 0 && st.len <= size - pos,
            "{what}: block status at {pos:#x} has length {}",
            st.len
        );
        let range = &want[pos as usize..(pos + st.len) as usize];
        let zeros = match st.allocation {
            Allocation::Zero => true,
            Allocation::Unallocated => image.backing().is_none(),
            Allocation::Data { .. } => false,
        };
        assert!(
            !zeros || range.iter().all(|&b| b == 0),
            "{what}: block status calls {:#x}+{:#x} {:?}, but it holds data",
            pos,
            st.len,
            st.allocation
        );
        pos += st.len;
    }
}

/// Vireo writes a random workload into an image qemu made (over qemu's
/// compressed, zero, preallocated and snapshot-shared clusters); then
/// qemu-img check finds nothing and qemu reads what was written.
/// `below`: what discarded clusters show (the backing chain's contents) in
/// a version 2 image with a backing file; empty otherwise.
fn assert_vireo_writes_into(path: &Path, what: &str, seed: u64, cs: u64, below: &[u8]) {
    let before = qemu_raw(path);
    let size = before.len() as u64;
    let mut model = Model::new(size, cs, below, !below.is_empty());
    model.data = before;
    let mut params = Params::new(size, cs, ops_for(cs, 40));
    params.max_write = (2 * cs).max(512 * KIB);
    {
        let image = open(path, false);
        for op in generate(seed, &params) {
            workload::run(&*image, &op)
                .unwrap_or_else(|e| panic!("{what}: {op:?}: {}", common::display_chain(&e)));
            model.apply(&op);
        }
    }
    assert_both_checks_clean(path, &format!("{what}: written by vireo"));
    assert_same(
        &format!("{what}: qemu's reading of vireo's writes"),
        &qemu_raw(path),
        &model.data,
    );
}

/// How many random operations to run on an image: fewer with large
/// clusters, where each small write copies a whole cluster (the runtime
/// stays small in debug builds).
fn ops_for(cs: u64, ops: usize) -> usize {
    if cs >= 256 * KIB {
        ops / 3
    } else {
        ops
    }
}

/// A backing file holding data that differs everywhere, with a hole.
fn raw_backing(path: &Path, size: u64, tag: u64) -> Vec<u8> {
    let mut data = pattern(tag, size);
    let hole = (size / 3) as usize..(size / 2) as usize;
    data[hole].fill(0);
    std::fs::write(path, &data).expect("write the raw backing file");
    data
}

/// A qcow2 backing file made and filled by qemu; returns its contents.
fn qcow2_backing(path: &Path, opts: &str, size: u64, rng: &mut Rng) -> Vec<u8> {
    qemu_create(path, opts, size);
    let mut cmds = qemu_commands(rng, size, cluster_size_of(opts), 12, true);
    // Most of the file written too (after the compressed clusters).
    let at = cmds
        .iter()
        .take_while(|c| c.starts_with("write -c"))
        .count();
    cmds.insert(at, format!("write -P 0x5a {} {}", size / 4, size / 2));
    qemu_io(path, "qcow2", &cmds);
    qemu_raw(path)
}

// ---- qemu writes, Vireo reads -------------------------------------------------

#[test]
fn vireo_reads_images_qemu_made_with_every_option() {
    let test = "vireo_reads_images_qemu_made_with_every_option";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_0001));
    let dir = TempDir::new("qemu-made");
    // (name, qemu-img -o options, virtual size, snapshots taken between
    // the batches of writes)
    let cases: &[(&str, &str, u64, usize)] = &[
        ("c512", "cluster_size=512", 8 * MIB, 1),
        ("c1k-rb1", "cluster_size=1024,refcount_bits=1", 8 * MIB, 0),
        ("c2k-rb2", "cluster_size=2048,refcount_bits=2", 8 * MIB, 0),
        ("c4k-rb4", "cluster_size=4096,refcount_bits=4", 16 * MIB, 2),
        ("c8k-rb8", "cluster_size=8192,refcount_bits=8", 16 * MIB, 1),
        (
            "c16k-rb32",
            "cluster_size=16384,refcount_bits=32",
            32 * MIB,
            1,
        ),
        (
            "c32k-rb64",
            "cluster_size=32768,refcount_bits=64",
            32 * MIB,
            1,
        ),
        ("c64k-v2", "compat=0.10", 32 * MIB, 2),
        ("c512-v2", "compat=0.10,cluster_size=512", 8 * MIB, 1),
        (
            "c128k-lazy-off",
            "cluster_size=131072,lazy_refcounts=off",
            32 * MIB,
            0,
        ),
        ("c64k-lazy-on", "lazy_refcounts=on", 32 * MIB, 0),
        (
            "c256k-zstd",
            "cluster_size=262144,compression_type=zstd",
            32 * MIB,
            1,
        ),
        (
            "c4k-zstd-rb16",
            "cluster_size=4096,compression_type=zstd",
            16 * MIB,
            0,
        ),
        ("c512k", "cluster_size=524288", 16 * MIB, 0),
        (
            "c1m-zstd",
            "cluster_size=1048576,compression_type=zstd",
            24 * MIB,
            0,
        ),
        ("c2m", "cluster_size=2097152", 32 * MIB, 1),
        (
            "prealloc-metadata",
            "preallocation=metadata,cluster_size=4096",
            16 * MIB,
            0,
        ),
        (
            "prealloc-falloc",
            "preallocation=falloc,cluster_size=16384",
            16 * MIB,
            0,
        ),
        ("prealloc-full", "preallocation=full", 16 * MIB, 1),
        (
            "prealloc-metadata-v2",
            "preallocation=metadata,compat=0.10",
            16 * MIB,
            0,
        ),
    ];
    for &(name, opts, size, snapshots) in cases {
        let path = dir.join(&format!("{name}.qcow2"));
        qemu_create(&path, opts, size);
        let cs = cluster_size_of(opts);
        let fresh = !opts.contains("preallocation");
        for batch in 0..=snapshots {
            let cmds = qemu_commands(&mut rng, size, cs, 24, fresh && batch == 0);
            qemu_io(&path, "qcow2", &cmds);
            if batch < snapshots {
                qemu_snapshot(&path, "-c", &format!("snap{batch}"));
            }
        }
        assert_vireo_reads_like_qemu(&path, name, &mut rng);
        assert_vireo_writes_into(&path, name, rng.next_u64(), cs, &[]);
    }
}

fn cluster_size_of(opts: &str) -> u64 {
    opts.split(',')
        .find_map(|o| o.strip_prefix("cluster_size="))
        .map_or(64 * KIB, |v| v.parse().expect("a number"))
}

#[test]
fn vireo_reads_qemu_overlays_over_raw_and_qcow2_backing_files() {
    let test = "vireo_reads_qemu_overlays_over_raw_and_qcow2_backing_files";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_0002));
    let dir = TempDir::new("qemu-backing");
    // Backing files shorter than the overlay: past their end reads zeros.
    let raw = dir.join("base.raw");
    let raw_data = raw_backing(&raw, 6 * MIB + 1536, 7);
    let base = dir.join("base.qcow2");
    let qcow2_data = qcow2_backing(&base, "cluster_size=16384", 10 * MIB, &mut rng);
    // And one longer than the overlay: reads stop at the overlay's end.
    let big_data = raw_backing(&dir.join("big.raw"), 24 * MIB, 8);
    let cases = [
        ("raw-v3", "base.raw", "raw", "cluster_size=4096"),
        ("raw-v2", "base.raw", "raw", "compat=0.10,cluster_size=8192"),
        ("qcow2-v3", "base.qcow2", "qcow2", "cluster_size=65536"),
        (
            "qcow2-v2",
            "base.qcow2",
            "qcow2",
            "compat=0.10,cluster_size=512",
        ),
        ("qcow2-zstd", "base.qcow2", "qcow2", "compression_type=zstd"),
        (
            "raw-longer-v2",
            "big.raw",
            "raw",
            "compat=0.10,cluster_size=4096",
        ),
    ];
    for (name, backing, fmt, opts) in cases {
        let path = dir.join(&format!("{name}.qcow2"));
        let cs = cluster_size_of(opts);
        let opts = format!("{opts},backing_file={backing},backing_fmt={fmt}");
        qemu_create(&path, &opts, 16 * MIB);
        qemu_io(
            &path,
            "qcow2",
            &qemu_commands(&mut rng, 16 * MIB, cs, 30, true),
        );
        assert_vireo_reads_like_qemu(&path, name, &mut rng);
        let below = match (opts.contains("compat=0.10"), fmt) {
            (false, _) => &[][..],
            (true, "raw") if backing == "big.raw" => &big_data[..],
            (true, "raw") => &raw_data[..],
            (true, _) => &qcow2_data[..],
        };
        assert_vireo_writes_into(&path, name, rng.next_u64(), cs, below);
    }
}

#[test]
fn vireo_reads_backing_chains_with_relative_and_absolute_names() {
    let test = "vireo_reads_backing_chains_with_relative_and_absolute_names";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_0003));
    let dir = TempDir::new("qemu-chain");
    std::fs::create_dir_all(dir.join("sub/deeper")).expect("create directories");
    // base.raw <- l1.qcow2 ("base.raw", relative) <- sub/l2.qcow2 (absolute
    // name of l1) <- sub/deeper/l3.qcow2 ("../l2.qcow2") <- sub/deeper/top
    // ("l3.qcow2"); every layer writes some of the disk, and the layers
    // differ in size, version and cluster size.
    raw_backing(&dir.join("base.raw"), 4 * MIB, 11);
    let l1 = dir.join("l1.qcow2");
    let layers: [(PathBuf, String, &str, u64); 4] = [
        (
            l1.clone(),
            "backing_file=base.raw,backing_fmt=raw,cluster_size=4096".into(),
            "l1",
            8 * MIB,
        ),
        (
            dir.join("sub/l2.qcow2"),
            format!(
                "backing_file={},backing_fmt=qcow2,compat=0.10,cluster_size=512",
                s(&l1)
            ),
            "l2",
            8 * MIB,
        ),
        (
            dir.join("sub/deeper/l3.qcow2"),
            "backing_file=../l2.qcow2,backing_fmt=qcow2,cluster_size=2097152".into(),
            "l3",
            12 * MIB,
        ),
        (
            dir.join("sub/deeper/top.qcow2"),
            "backing_file=l3.qcow2,backing_fmt=qcow2,compression_type=zstd,refcount_bits=64".into(),
            "top",
            16 * MIB,
        ),
    ];
    for (path, opts, name, size) in &layers {
        qemu_create(path, opts, *size);
        let cs = cluster_size_of(opts);
        qemu_io(path, "qcow2", &qemu_commands(&mut rng, *size, cs, 16, true));
        assert_vireo_reads_like_qemu(path, name, &mut rng);
    }
    let top = open(&layers[3].0, true);
    assert_eq!(
        image::chain(&top).len(),
        5,
        "the whole chain is opened, down to base.raw"
    );
}

#[test]
fn vireo_reads_images_after_qemu_snapshot_operations() {
    let test = "vireo_reads_images_after_qemu_snapshot_operations";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_0004));
    let dir = TempDir::new("qemu-snapshots");
    for (name, opts) in [
        ("v3", "cluster_size=4096"),
        ("v2", "compat=0.10,cluster_size=1024"),
        (
            "rb4-zstd",
            "refcount_bits=4,compression_type=zstd,cluster_size=8192",
        ),
    ] {
        let path = dir.join(&format!("{name}.qcow2"));
        let size = 16 * MIB;
        let cs = cluster_size_of(opts);
        qemu_create(&path, opts, size);
        for i in 0..3 {
            qemu_io(
                &path,
                "qcow2",
                &qemu_commands(&mut rng, size, cs, 20, i == 0),
            );
            qemu_snapshot(&path, "-c", &format!("s{i}"));
        }
        qemu_io(
            &path,
            "qcow2",
            &qemu_commands(&mut rng, size, cs, 20, false),
        );
        assert_vireo_reads_like_qemu(&path, &format!("{name}: after three snapshots"), &mut rng);
        qemu_snapshot(&path, "-a", "s1");
        assert_vireo_reads_like_qemu(&path, &format!("{name}: back at s1"), &mut rng);
        qemu_io(
            &path,
            "qcow2",
            &qemu_commands(&mut rng, size, cs, 20, false),
        );
        qemu_snapshot(&path, "-d", "s0");
        qemu_snapshot(&path, "-d", "s2");
        assert_vireo_reads_like_qemu(&path, &format!("{name}: after deletions"), &mut rng);
    }
}

#[test]
fn vireo_reads_compressed_images_from_qemu_convert() {
    let test = "vireo_reads_compressed_images_from_qemu_convert";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_0005));
    let dir = TempDir::new("qemu-convert");
    // Compressible data (text-like runs), random data that does not
    // compress, and zeros; a shorter disk for 512-byte clusters (each is a
    // compressed stream of its own, slow to inflate in debug builds).
    let mut data = pattern(3, 6 * MIB);
    for (i, b) in data[..(2 * MIB) as usize].iter_mut().enumerate() {
        *b = b"the quick brown fox jumps over the lazy dog "[i % 44] ^ ((i >> 12) as u8 & 3);
    }
    data[(3 * MIB) as usize..(4 * MIB) as usize].fill(0);
    let src = dir.join("src.raw");
    std::fs::write(&src, &data).expect("write the source");
    let small = dir.join("small.raw");
    std::fs::write(&small, &data[..(5 * MIB / 2) as usize]).expect("write the source");
    for (name, opts) in [
        ("zlib-64k", "compression_type=zlib"),
        ("zstd-64k", "compression_type=zstd"),
        ("zlib-512", "cluster_size=512"),
        ("zstd-4k", "cluster_size=4096,compression_type=zstd"),
        ("zlib-2m", "cluster_size=2097152"),
        ("zlib-v2", "compat=0.10,cluster_size=16384"),
        (
            "zstd-rb1",
            "refcount_bits=1,compression_type=zstd,cluster_size=8192",
        ),
    ] {
        let cs = cluster_size_of(opts);
        let (src, data) = if cs == 512 {
            (&small, &data[..(5 * MIB / 2) as usize])
        } else {
            (&src, &data[..])
        };
        let size = data.len() as u64;
        let path = dir.join(&format!("{name}.qcow2"));
        qemu_img(["convert", "-c", "-O", "qcow2", "-o", opts, s(src), s(&path)]);
        assert_same(
            &format!("{name}: qemu's own reading"),
            &qemu_raw(&path),
            data,
        );
        assert_vireo_reads_like_qemu(&path, name, &mut rng);
        // Then rewritten partly by qemu: compressed clusters half overwritten.
        qemu_io(
            &path,
            "qcow2",
            &qemu_commands(&mut rng, size, cs, 20, false),
        );
        assert_vireo_reads_like_qemu(&path, &format!("{name}: rewritten"), &mut rng);
    }
}

// ---- Vireo writes, qemu reads ---------------------------------------------------

/// The backing file of a case of [`qemu_reads_images_vireo_made`].
#[derive(Clone, Copy, Debug)]
enum Backing {
    None,
    Raw,
    Qcow2,
}

/// Data that compresses (for compressed clusters), different per `tag`.
fn compressible(tag: u64, len: usize) -> Vec<u8> {
    let word = workload::write_data(tag, 0, 64);
    (0..len).map(|i| word[i % 61] ^ (i / 4096) as u8).collect()
}

#[test]
fn qemu_reads_images_vireo_made_with_every_option() {
    let test = "qemu_reads_images_vireo_made_with_every_option";
    if !have_qemu(test) {
        return;
    }
    let seed = seed(test, 0x5eed_0006);
    let dir = TempDir::new("vireo-made");
    use Backing::{None as NoBacking, Qcow2 as QcowBacking, Raw as RawBacking};
    use CompressionType::{Zlib, Zstd};
    use Preallocation::{Falloc, Full, Metadata, Off};
    // (cluster size, version, refcount bits, compression, preallocation,
    // backing, virtual size)
    let cases = [
        (512, 3, 16, Zlib, Off, NoBacking, 8 * MIB),
        (512, 2, 16, Zlib, Off, RawBacking, 8 * MIB),
        (512, 3, 16, Zlib, Off, QcowBacking, 8 * MIB),
        (1024, 3, 1, Zlib, Off, RawBacking, 8 * MIB),
        (2048, 3, 2, Zstd, Off, NoBacking, 8 * MIB),
        (4096, 3, 4, Zlib, Metadata, NoBacking, 16 * MIB),
        (8192, 3, 8, Zstd, Off, QcowBacking, 16 * MIB),
        (16384, 3, 32, Zlib, Falloc, NoBacking, 16 * MIB),
        (32768, 3, 64, Zstd, Off, RawBacking, 16 * MIB),
        (65536, 2, 16, Zlib, Off, QcowBacking, 16 * MIB),
        (65536, 3, 16, Zlib, Full, NoBacking, 16 * MIB),
        (131072, 2, 16, Zlib, Metadata, NoBacking, 16 * MIB),
        (262144, 3, 16, Zstd, Off, RawBacking, 16 * MIB),
        (524288, 3, 8, Zlib, Falloc, NoBacking, 16 * MIB),
        (1 << 20, 3, 16, Zstd, Off, QcowBacking, 24 * MIB),
        (2 << 20, 3, 64, Zlib, Metadata, NoBacking, 32 * MIB),
        (2 << 20, 2, 16, Zlib, Off, RawBacking, 16 * MIB),
    ];
    let mut failures = Vec::new();
    for (i, &(cs, version, rb, compression, prealloc, backing, size)) in cases.iter().enumerate() {
        let name = format!(
            "c{cs}-v{version}-rb{rb}-{}-{}-{backing:?}",
            compression.name(),
            prealloc.name()
        );
        let result = std::panic::catch_unwind(|| {
            vireo_made_case(
                &dir,
                &name,
                seed ^ i as u64,
                CreateOptions {
                    size,
                    cluster_size: cs,
                    version,
                    refcount_bits: rb,
                    compression,
                    preallocation: prealloc,
                    ..Default::default()
                },
                backing,
            )
        });
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn vireo_made_case(
    dir: &TempDir,
    name: &str,
    seed: u64,
    mut opts: CreateOptions,
    backing: Backing,
) {
    let mut rng = Rng::new(seed);
    let size = opts.size;
    let cs = opts.cluster_size;
    let path = dir.join(&format!("{name}.qcow2"));
    let below = match backing {
        Backing::None => Vec::new(),
        Backing::Raw => {
            let file = format!("{name}.base.raw");
            opts.backing_file = Some(file.clone());
            opts.backing_format = Some("raw".into());
            raw_backing(&dir.join(&file), size / 2 + 512, seed)
        }
        Backing::Qcow2 => {
            let file = format!("{name}.base.qcow2");
            opts.backing_file = Some(file.clone());
            opts.backing_format = Some("qcow2".into());
            qcow2_backing(
                &dir.join(&file),
                "cluster_size=4096",
                size - 2 * MIB,
                &mut rng,
            )
        }
    };
    Qcow2::create(&path, &opts).unwrap_or_else(|e| panic!("{name}: create: {e}"));
    assert_both_checks_clean(&path, &format!("{name}: new"));

    // What qemu-img info tells a user.
    let info = qemu_info(&path);
    let compact: String = info.split_whitespace().collect();
    let compat = if opts.version == 2 { "0.10" } else { "1.1" };
    for want in [
        format!("\"cluster-size\":{cs},"),
        format!("\"virtual-size\":{size},"),
        format!("\"compat\":\"{compat}\""),
    ] {
        assert!(
            compact.contains(&want),
            "{name}: info lacks {want}:\n{info}"
        );
    }
    if opts.version == 3 {
        for want in [
            format!("\"refcount-bits\":{}", opts.refcount_bits),
            format!("\"compression-type\":\"{}\"", opts.compression.name()),
        ] {
            assert!(
                compact.contains(&want),
                "{name}: info lacks {want}:\n{info}"
            );
        }
    }
    if let Some(file) = &opts.backing_file {
        let want = format!("\"backing-filename\":\"{file}\"");
        assert!(
            compact.contains(&want),
            "{name}: info lacks {want}:\n{info}"
        );
    }

    if opts.preallocation != Preallocation::Off {
        let image = open(&path, true);
        let mut pos = 0;
        while pos < size {
            let st = image.block_status(pos, size - pos).expect("block status");
            assert!(
                matches!(st.allocation, Allocation::Data { .. }),
                "{name}: preallocated, yet {pos:#x}+{:#x} is {:?}",
                st.len,
                st.allocation
            );
            pos += st.len;
        }
        if matches!(
            opts.preallocation,
            Preallocation::Falloc | Preallocation::Full
        ) {
            assert!(
                image.allocated_bytes() >= size,
                "{name}: {} preallocation, yet the file has only {} bytes allocated",
                opts.preallocation.name(),
                image.allocated_bytes()
            );
        }
    }

    let discard_uncovers = opts.version == 2 && !below.is_empty();
    let mut model = Model::new(size, cs, &below, discard_uncovers);
    let mut params = Params::new(size, cs, ops_for(cs, 60));
    params.max_write = (2 * cs).max(512 * KIB);
    // Session 1: a random workload through the Image interface.
    {
        let image = open(&path, false);
        for op in generate(seed, &params) {
            workload::run(&*image, &op)
                .unwrap_or_else(|e| panic!("{name}: {op:?}: {}", common::display_chain(&e)));
            model.apply(&op);
        }
        assert_same(
            &format!("{name}: vireo, open"),
            &read_all(&*image, 8 * MIB),
            &model.data,
        );
    }
    // Session 2: compressed clusters (some packed into one host cluster).
    // (Fewer for large clusters: deflating megabytes is slow in debug builds.)
    let count = if cs >= 256 * KIB { 2 } else { 6 };
    let compressed: Vec<u64> = (0..count).map(|_| rng.below(size / cs) * cs).collect();
    {
        let mut image = Qcow2::open(&path, false).expect("open the image alone");
        if let Some(file) = &opts.backing_file {
            image.set_backing(Some(open(&dir.join(file), true)));
        }
        for (j, &at) in compressed.iter().enumerate() {
            let data = compressible(seed ^ j as u64, cs as usize);
            image
                .write_compressed(at, &data)
                .unwrap_or_else(|e| panic!("{name}: compressed write at {at:#x}: {e}"));
            model.data[at as usize..(at + cs) as usize].copy_from_slice(&data);
        }
        // The data compresses well: it must be stored compressed (where
        // that saves a sector at least).
        for &at in compressed.iter().filter(|_| cs > 512) {
            let st = image.block_status(at, cs).expect("block status");
            assert_eq!(
                st.allocation,
                Allocation::Data {
                    offset: None,
                    compressed: true
                },
                "{name}: the cluster at {at:#x} after a compressed write"
            );
        }
    }
    assert_both_checks_clean(&path, &format!("{name}: after compressed writes"));
    // Session 3: more of the workload, part of it over the compressed
    // clusters (copy-on-write out of them, zeroing and discarding them).
    {
        let image = open(&path, false);
        let mut ops = Vec::new();
        for (j, &at) in compressed.iter().enumerate() {
            ops.push(match j % 3 {
                0 => Op::Write {
                    offset: at + cs / 3,
                    len: (cs / 2).min(size - at - cs / 3),
                    tag: seed ^ 0xc0ffee ^ j as u64,
                },
                1 => Op::Zeroes {
                    offset: at,
                    len: cs,
                    unmap: j % 2 == 0,
                },
                _ => Op::Discard {
                    offset: at,
                    len: cs,
                },
            });
        }
        params.ops = ops_for(cs, 30);
        ops.extend(generate(seed ^ 0xffff, &params));
        for op in ops {
            workload::run(&*image, &op)
                .unwrap_or_else(|e| panic!("{name}: {op:?}: {}", common::display_chain(&e)));
            model.apply(&op);
        }
    }
    assert_both_checks_clean(&path, &format!("{name}: written"));
    assert_same(
        &format!("{name}: qemu's reading"),
        &qemu_raw(&path),
        &model.data,
    );
    assert_same(
        &format!("{name}: vireo's reading"),
        &vireo_raw(&path),
        &model.data,
    );
}

// ---- random workloads with snapshots ---------------------------------------------

/// One randomized run: an overlay Vireo creates over a backing file, written
/// in phases by Vireo, with qemu-img taking internal snapshots between
/// phases, applying them back, and deleting them.
struct Scenario {
    name: &'static str,
    opts: CreateOptions,
    /// qemu-img -o options of a qcow2 backing file; a raw one if `None`.
    backing_qcow2: Option<&'static str>,
    backing_size: u64,
}

fn run_scenario(sc: &Scenario, seed: u64) {
    let name = sc.name;
    let dir = TempDir::new(name);
    let mut rng = Rng::new(seed);
    let mut opts = sc.opts.clone();
    let size = opts.size;
    let cs = opts.cluster_size;
    let below = match sc.backing_qcow2 {
        Some(o) => {
            opts.backing_file = Some("base.qcow2".into());
            opts.backing_format = Some("qcow2".into());
            qcow2_backing(&dir.join("base.qcow2"), o, sc.backing_size, &mut rng)
        }
        None => {
            opts.backing_file = Some("base.raw".into());
            opts.backing_format = Some("raw".into());
            raw_backing(&dir.join("base.raw"), sc.backing_size, seed)
        }
    };
    let path = dir.join("top.qcow2");
    Qcow2::create(&path, &opts).expect("create the overlay");
    let mut model = Model::new(size, cs, &below, opts.version == 2);
    let mut params = Params::new(size, cs, 80);
    params.max_write = 2 * MIB;
    let mut phase_seed = seed;
    let mut phase = |model: &mut Model, what: &str| {
        phase_seed = workload::mix(phase_seed);
        let image = open(&path, false);
        for (k, op) in generate(phase_seed, &params).iter().enumerate() {
            workload::run(&*image, op).unwrap_or_else(|e| {
                panic!(
                    "{name}: {what}: op {k} {op:?}: {}",
                    common::display_chain(&e)
                )
            });
            model.apply(op);
        }
        assert_same(
            &format!("{name}: {what}: vireo's reading while open"),
            &read_all(&*image, 8 * MIB),
            &model.data,
        );
    };

    phase(&mut model, "phase 1");
    assert_both_checks_clean(&path, &format!("{name}: after phase 1"));
    qemu_snapshot(&path, "-c", "one");
    let at_one = model.data.clone();
    // Every write now lands in tables and clusters shared with "one".
    phase(&mut model, "phase 2 (over snapshot one)");
    assert_both_checks_clean(&path, &format!("{name}: after phase 2"));
    qemu_snapshot(&path, "-c", "two");
    let at_two = model.data.clone();
    phase(&mut model, "phase 3 (over snapshots one and two)");
    phase(&mut model, "phase 4 (again)");
    assert_both_checks_clean(&path, &format!("{name}: after phase 4"));
    assert_same(
        &format!("{name}: qemu's reading after phase 4"),
        &qemu_raw(&path),
        &model.data,
    );

    qemu_snapshot(&path, "-a", "one");
    assert_both_checks_clean(&path, &format!("{name}: back at snapshot one"));
    assert_same(
        &format!("{name}: qemu's reading back at snapshot one"),
        &qemu_raw(&path),
        &at_one,
    );
    qemu_snapshot(&path, "-a", "two");
    assert_same(
        &format!("{name}: qemu's reading back at snapshot two"),
        &qemu_raw(&path),
        &at_two,
    );
    assert_same(
        &format!("{name}: vireo's reading back at snapshot two"),
        &vireo_raw(&path),
        &at_two,
    );
    model.data = at_two;
    phase(&mut model, "phase 5 (after going back to two)");
    assert_both_checks_clean(&path, &format!("{name}: after phase 5"));
    qemu_snapshot(&path, "-d", "one");
    qemu_snapshot(&path, "-d", "two");
    // Without snapshots every cluster is Vireo's alone again: the counts
    // Vireo kept must add up now.
    assert_both_checks_clean(&path, &format!("{name}: snapshots deleted"));
    phase(&mut model, "phase 6 (snapshots gone)");

    // Vireo's own snapshots, mixed with qemu's.
    let vireo_snapshot = |f: &dyn Fn(&mut Qcow2) -> Result<(), ImageError>, what: &str| {
        let mut image = Qcow2::open(&path, false).expect("open the overlay alone");
        f(&mut image).unwrap_or_else(|e| panic!("{name}: {what}: {}", display_chain(&e)));
        drop(image);
        assert_both_checks_clean(&path, &format!("{name}: after vireo's {what}"));
    };
    vireo_snapshot(
        &|q| q.snapshot_create("vireo-a").map(drop),
        "snapshot create",
    );
    let at_a = model.data.clone();
    phase(&mut model, "phase 7 (over vireo's snapshot)");
    qemu_snapshot(&path, "-c", "qemu-b");
    let at_b = model.data.clone();
    phase(&mut model, "phase 8 (over both)");
    vireo_snapshot(&|q| q.snapshot_apply("vireo-a"), "snapshot apply");
    assert_same(
        &format!("{name}: qemu's reading back at vireo's snapshot"),
        &qemu_raw(&path),
        &at_a,
    );
    vireo_snapshot(&|q| q.snapshot_apply("qemu-b"), "apply of qemu's snapshot");
    assert_same(
        &format!("{name}: vireo's reading back at qemu's snapshot"),
        &vireo_raw(&path),
        &at_b,
    );
    model.data = at_b;
    phase(&mut model, "phase 9 (after vireo applied qemu's snapshot)");
    qemu_snapshot(&path, "-a", "vireo-a");
    assert_same(
        &format!("{name}: qemu's reading after applying vireo's snapshot"),
        &qemu_raw(&path),
        &at_a,
    );
    model.data = at_a;
    vireo_snapshot(&|q| q.snapshot_delete("vireo-a"), "snapshot delete");
    vireo_snapshot(
        &|q| q.snapshot_delete("qemu-b"),
        "delete of qemu's snapshot",
    );
    let listed = qemu_img(["snapshot", "-l", s(&path)]);
    assert!(
        !listed.contains("vireo-a") && !listed.contains("qemu-b"),
        "{name}: snapshots left after deleting them all:\n{listed}"
    );
    phase(&mut model, "phase 10 (all snapshots gone)");
    assert_both_checks_clean(&path, &format!("{name}: at the end"));
    assert_same(
        &format!("{name}: qemu's reading at the end"),
        &qemu_raw(&path),
        &model.data,
    );
}

#[test]
fn random_workloads_over_backing_files_and_qemu_snapshots() {
    let test = "random_workloads_over_backing_files_and_qemu_snapshots";
    if !have_qemu(test) {
        return;
    }
    let seed = seed(test, 0x5eed_0007);
    let scenarios = [
        Scenario {
            name: "v3-4k-qcow2-backing",
            opts: CreateOptions {
                size: 32 * MIB,
                cluster_size: 4096,
                ..Default::default()
            },
            backing_qcow2: Some("cluster_size=65536"),
            backing_size: 24 * MIB,
        },
        Scenario {
            name: "v2-512-raw-backing",
            opts: CreateOptions {
                size: 32 * MIB,
                cluster_size: 512,
                version: 2,
                ..Default::default()
            },
            backing_qcow2: None,
            backing_size: 20 * MIB + 3 * 512,
        },
        Scenario {
            name: "v3-8k-rb64-zstd-raw-backing",
            opts: CreateOptions {
                size: 32 * MIB,
                cluster_size: 8192,
                refcount_bits: 64,
                compression: CompressionType::Zstd,
                ..Default::default()
            },
            backing_qcow2: None,
            backing_size: 32 * MIB,
        },
        Scenario {
            // Two snapshots and the disk share clusters: 3 references, and
            // qemu-img snapshot -a needs a fourth for a moment.
            name: "v3-1k-rb4-qcow2-backing",
            opts: CreateOptions {
                size: 16 * MIB,
                cluster_size: 1024,
                refcount_bits: 4,
                ..Default::default()
            },
            backing_qcow2: Some("compat=0.10,cluster_size=4096"),
            backing_size: 16 * MIB,
        },
    ];
    std::thread::scope(|scope| {
        let handles: Vec<_> = scenarios
            .iter()
            .enumerate()
            .map(|(i, sc)| {
                let seed = workload::mix(seed ^ i as u64);
                std::thread::Builder::new()
                    .name(sc.name.into())
                    .spawn_scoped(scope, move || run_scenario(sc, seed))
                    .expect("spawn a scenario thread")
            })
            .collect();
        let failed: Vec<&str> = handles
            .into_iter()
            .zip(&scenarios)
            .filter_map(|(h, sc)| h.join().is_err().then_some(sc.name))
            .collect();
        assert!(failed.is_empty(), "scenarios failed: {failed:?}");
    });
}

// ---- several threads at once ---------------------------------------------------

#[test]
fn concurrent_writers_sharing_clusters_and_tables() {
    let test = "concurrent_writers_sharing_clusters_and_tables";
    if !have_qemu(test) {
        return;
    }
    let seed = seed(test, 0x5eed_0008);
    let dir = TempDir::new("threads");
    let size = 16 * MIB;
    let cs = 4096;
    // Thread k owns the 1 KiB stripes whose index is k modulo 4: all four
    // write into the same clusters and L2 tables, never the same bytes, so
    // every cluster's first write races with the others' (allocation,
    // copy-on-write from the backing file, flushes in between).
    const THREADS: u64 = 4;
    const STRIPE: u64 = 1024;
    let below = raw_backing(&dir.join("base.raw"), size / 2, seed);
    let path = dir.join("top.qcow2");
    Qcow2::create(
        &path,
        &CreateOptions {
            size,
            cluster_size: cs,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            ..Default::default()
        },
    )
    .expect("create the overlay");
    let mut model = Model::new(size, cs, &below, false);
    let image = open(&path, false);
    let per_thread: Vec<Vec<Op>> = (0..THREADS)
        .map(|k| {
            let mut rng = Rng::new(workload::mix(seed ^ k));
            (0..400)
                .map(|i| {
                    if rng.chance(3) {
                        return Op::Flush;
                    }
                    // Hot first quarter of the disk: many first writes race.
                    let span = if rng.chance(70) { size / 4 } else { size };
                    let stripe = rng.below(span / STRIPE / THREADS) * THREADS + k;
                    let start = stripe * STRIPE + rng.below(STRIPE);
                    let len = rng.range(1, stripe * STRIPE + STRIPE - start);
                    if rng.chance(15) {
                        Op::Zeroes {
                            offset: start,
                            len,
                            unmap: false,
                        }
                    } else {
                        Op::Write {
                            offset: start,
                            len,
                            tag: workload::mix(seed ^ (k << 32) ^ i),
                        }
                    }
                })
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for ops in &per_thread {
            let image = &image;
            scope.spawn(move || {
                for op in ops {
                    workload::run(&**image, op)
                        .unwrap_or_else(|e| panic!("{op:?}: {}", display_chain(&e)));
                }
            });
        }
    });
    for ops in &per_thread {
        for op in ops {
            model.apply(op);
        }
    }
    assert_same(
        "vireo's reading after the threads",
        &read_all(&*image, 8 * MIB),
        &model.data,
    );
    drop(image);
    assert_both_checks_clean(&path, "after concurrent writers");
    assert_same(
        "qemu's reading after the threads",
        &qemu_raw(&path),
        &model.data,
    );
}

// ---- images a crashed qemu left ---------------------------------------------

/// Runs qemu-io's commands and then its `abort` (a crash: qemu's metadata
/// caches are lost, with lazy refcounts the dirty bit stays set).
fn qemu_io_crash(path: &Path, cmds: &[String]) {
    let mut command = std::process::Command::new("qemu-io");
    command.args(["-f", "qcow2"]);
    for c in cmds.iter().map(String::as_str).chain(["abort"]) {
        command.arg("-c").arg(c);
    }
    let out = command.arg(path).output().expect("run qemu-io");
    assert!(
        !out.status.success(),
        "qemu-io abort did not abort: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn vireo_checks_and_repairs_images_a_crashed_qemu_left() {
    let test = "vireo_checks_and_repairs_images_a_crashed_qemu_left";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_0009));
    let dir = TempDir::new("qemu-crashed");
    for (name, opts) in [
        ("lazy", "lazy_refcounts=on,cluster_size=4096"),
        ("lazy-64k", "lazy_refcounts=on"),
        ("eager", "cluster_size=4096"),
    ] {
        let path = dir.join(&format!("{name}.qcow2"));
        let size = 16 * MIB;
        let cs = cluster_size_of(opts);
        qemu_create(&path, opts, size);
        qemu_io(&path, "qcow2", &qemu_commands(&mut rng, size, cs, 20, true));
        let mut cmds = qemu_commands(&mut rng, size, cs, 20, false);
        cmds.insert(10, "flush".into());
        qemu_io_crash(&path, &cmds);

        // Both read the same disk, and both find the same problems.
        let want = qemu_raw(&path);
        assert_same(
            &format!("{name}: vireo's reading"),
            &vireo_raw(&path),
            &want,
        );
        let (code, report) = common::qemu_check(&path);
        let ours = common::vireo_check(&path, RepairMode::None);
        let qemu_errors = report
            .lines()
            .find_map(|l| l.strip_suffix(" errors were found on the image."))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert_eq!(
            (ours.corruptions, ours.leaks),
            (qemu_errors, common::qemu_leaks(&report)),
            "{name}: vireo's check ({:?}) and qemu-img check (exit {code}) disagree:\n{report}",
            ours.messages
        );
        if opts.contains("lazy_refcounts=on") {
            // Refcounts are only brought up to date on a clean close.
            assert!(
                ours.corruptions > 0,
                "{name}: the crash left no work for a repair"
            );
        }
        if ours.corruptions > 0 {
            // Writing would make it worse: refused until repaired.
            let err = image::open(
                &path,
                &image::ImageOptions {
                    read_only: false,
                    ..Default::default()
                },
            )
            .expect_err("vireo refuses to write an image that needs repair");
            assert!(
                display_chain(&err).contains("check"),
                "{name}: the refusal says how to repair: {}",
                display_chain(&err)
            );
        }
        // `vireo img check -r all` repairs it: qemu agrees, the data stays.
        let repaired = common::vireo_check(&path, RepairMode::All);
        assert!(
            repaired.corruptions == 0 && repaired.leaks == 0,
            "{name}: after repair: {repaired:?}"
        );
        assert_both_checks_clean(&path, &format!("{name}: repaired by vireo"));
        assert_same(
            &format!("{name}: qemu's reading after the repair"),
            &qemu_raw(&path),
            &want,
        );
        assert_vireo_writes_into(&path, &format!("{name}: repaired"), rng.next_u64(), cs, &[]);
    }
}

// ---- resizing --------------------------------------------------------------

#[test]
fn images_resized_by_either_tool_stay_readable_by_both() {
    let test = "images_resized_by_either_tool_stay_readable_by_both";
    if !have_qemu(test) {
        return;
    }
    let mut rng = Rng::new(seed(test, 0x5eed_000a));
    let dir = TempDir::new("resize");
    // 512-byte clusters: one L1 cluster maps only 2 MiB, so growing the
    // disk to a few MiB needs a larger L1 table elsewhere in the file.
    for compat in ["1.1", "0.10"] {
        let name = format!("compat-{compat}");
        let path = dir.join(&format!("{name}.qcow2"));
        let cs = 512;
        qemu_create(&path, &format!("cluster_size=512,compat={compat}"), MIB);
        qemu_io(&path, "qcow2", &qemu_commands(&mut rng, MIB, cs, 20, true));
        qemu_img(["resize", "-q", s(&path), "6M"]);
        qemu_io(
            &path,
            "qcow2",
            &qemu_commands(&mut rng, 6 * MIB, cs, 20, false),
        );
        assert_vireo_reads_like_qemu(&path, &format!("{name}: grown by qemu"), &mut rng);

        let resize = |size: u64, shrink: bool, model: &mut Vec<u8>| {
            let mut image = Qcow2::open(&path, false).expect("open the image");
            image
                .resize(size, shrink)
                .unwrap_or_else(|e| panic!("{name}: resize to {size}: {}", display_chain(&e)));
            model.resize(size as usize, 0);
        };
        let mut model = qemu_raw(&path);
        resize(20 * MIB, false, &mut model);
        assert_both_checks_clean(&path, &format!("{name}: grown by vireo"));
        let info: String = qemu_info(&path).split_whitespace().collect();
        assert!(
            info.contains(&format!("\"virtual-size\":{},", 20 * MIB)),
            "{name}: qemu-img info after growing: {info}"
        );
        assert_same(&format!("{name}: grown by vireo"), &qemu_raw(&path), &model);
        let mut m = Model::new(20 * MIB, cs, &[], false);
        m.data = model;
        {
            let image = open(&path, false);
            let mut params = Params::new(20 * MIB, cs, 60);
            params.max_write = 256 * KIB;
            for op in generate(rng.next_u64(), &params) {
                workload::run(&*image, &op).expect("write the grown disk");
                m.apply(&op);
            }
        }
        let mut model = m.data;
        resize(5 * MIB + 1536, true, &mut model);
        assert_both_checks_clean(&path, &format!("{name}: shrunk by vireo"));
        assert_same(
            &format!("{name}: shrunk by vireo"),
            &qemu_raw(&path),
            &model,
        );
        qemu_img(["resize", "-q", "--shrink", s(&path), "3M"]);
        assert_vireo_reads_like_qemu(&path, &format!("{name}: shrunk by qemu"), &mut rng);
    }
}
