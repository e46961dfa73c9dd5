//! qcow2 images: the fuzz input is the whole image file.
//!
//! 1. Read-only: `Qcow2::open`; if it opens, `block_status` over the first
//!    64 MiB of the virtual disk and its last MiB, reading every range it
//!    reports as data (at most 64 MiB in all) and the first 4 KiB of every
//!    other range, plus a few reads at odd offsets across cluster
//!    boundaries; the snapshot list and `qcow2_info`.
//! 2. Writable, on a copy: a few writes (partial clusters, across
//!    clusters, the disk's last byte), write-zeroes, discard, a compressed
//!    cluster, flush; then the copy is opened again and read where it was
//!    written.
//!
//! Errors are the expected answer to most inputs; a panic, an abort, an
//! allocation past libFuzzer's malloc limit (a table sized from a header
//! field) or a hang is a finding. `block_status` must answer with a length
//! within what was asked, never 0.
//!
//! Backing files are never opened (`Qcow2::open` does not follow them): an
//! input naming /etc/passwd must not make the fuzzer read it.

#![no_main]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_disk::image::{Allocation, Image, Qcow2};

/// How much of the virtual disk is walked from its start (and, separately,
/// from its end).
const WALK_HEAD: u64 = 64 << 20;
const WALK_TAIL: u64 = 1 << 20;
/// Bytes of data read per input, at most.
const READ_BUDGET: u64 = 64 << 20;
/// `block_status` calls per input, at most (each may look at up to 16 MiB
/// of clusters).
const MAX_STATUS_CALLS: usize = 4096;
const CHUNK: usize = 1 << 20;

/// The two files of this process: the image as given, and the copy that is
/// written to. In /dev/shm where there is one (see blk_request.rs: a disk
/// file system's flushes can stall behind a build and read as hangs).
struct Files {
    image: PathBuf,
    copy: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let pid = std::process::id();
        Files {
            image: dir.join(format!("vireo-fuzz-qcow2-{pid}.qcow2")),
            copy: dir.join(format!("vireo-fuzz-qcow2-{pid}-rw.qcow2")),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let files = files();
    std::fs::write(&files.image, data).expect("write the image file");
    if let Some(image) = open(&files.image, true) {
        read_only(&image, data);
    }
    std::fs::write(&files.copy, data).expect("write the copy");
    if let Some(image) = open(&files.copy, false) {
        let written = writes(&image, data);
        drop(image);
        if let Some(image) = open(&files.copy, true) {
            for (offset, len) in written {
                let mut buf = vec![0u8; len];
                let _ = image.read_at(&mut buf, offset);
            }
        }
    }
    // A later input must not see a previous one's file: they are rewritten
    // whole, and a write that grew the copy to terabytes (sparse) frees
    // nothing until then.
    let _ = std::fs::remove_file(&files.copy);
});

/// Opens the image; an error must format (Display and the source chain)
/// without panicking.
fn open(path: &Path, read_only: bool) -> Option<Qcow2> {
    match Qcow2::open(path, read_only) {
        Ok(image) => Some(image),
        Err(err) => {
            let mut text = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            assert!(!text.is_empty());
            None
        }
    }
}

/// A cheap hash of the input, to pick offsets the input decides.
fn hash(data: &[u8], salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for &b in data.iter().take(4096) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (data.len() as u64)
}

fn read_only(image: &Qcow2, data: &[u8]) {
    let size = image.size();
    let _ = image.snapshots();
    let _ = image.qcow2_info();
    let _ = image.backing_file_name();
    let mut budget = READ_BUDGET;
    let mut calls = 0;
    walk(image, 0, size.min(WALK_HEAD), &mut budget, &mut calls);
    let tail = size.saturating_sub(WALK_TAIL).max(WALK_HEAD.min(size));
    walk(image, tail, size, &mut budget, &mut calls);
    // Reads across cluster boundaries at offsets the input picks.
    if size > 0 {
        let cs = image.cluster_size();
        let mut buf = vec![0u8; (2 * cs + 7).min(CHUNK as u64) as usize];
        for salt in 0..3 {
            let pos = hash(data, salt) % size;
            let pos = (pos / cs * cs + cs - 3).min(size - 1);
            let len = (buf.len() as u64).min(size - pos) as usize;
            let _ = image.read_at(&mut buf[..len], pos);
        }
    }
}

/// `block_status` from `start` to `end`, reading what it reports.
fn walk(image: &Qcow2, start: u64, end: u64, budget: &mut u64, calls: &mut usize) {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = start;
    while pos < end && *calls < MAX_STATUS_CALLS {
        *calls += 1;
        let asked = end - pos;
        let status = match image.block_status(pos, asked) {
            Ok(status) => status,
            Err(_) => {
                // Step over the cluster the error is about.
                let cs = image.cluster_size();
                pos = (pos / cs + 1) * cs;
                continue;
            }
        };
        assert!(
            status.len > 0 && status.len <= asked,
            "block_status({pos}, {asked}) answered {status:?}"
        );
        let want = match status.allocation {
            Allocation::Data { .. } => status.len.min(*budget),
            _ => status.len.min(4096).min(*budget),
        };
        let mut done = 0;
        while done < want {
            let n = (want - done).min(CHUNK as u64) as usize;
            if image.read_at(&mut buf[..n], pos + done).is_err() {
                break;
            }
            done += n as u64;
        }
        *budget -= want;
        pos += status.len;
    }
}

/// Writes a few ranges the input picks; returns them.
fn writes(image: &Qcow2, data: &[u8]) -> Vec<(u64, usize)> {
    let size = image.size();
    if size == 0 {
        let _ = image.flush();
        return Vec::new();
    }
    let cs = image.cluster_size();
    let mut written = Vec::new();
    let pattern: Vec<u8> = (0..(2 * cs + 1).min(CHUNK as u64))
        .map(|i| (i % 251) as u8 + 1)
        .collect();
    // Within one cluster, across two, the last byte of the disk.
    let ranges = [
        (hash(data, 10) % size, 1000u64),
        (
            ((hash(data, 11) % size) / cs * cs + cs / 2).min(size - 1),
            cs + 1,
        ),
        (size - 1, 1),
    ];
    for (pos, len) in ranges {
        let len = len.min(size - pos).min(pattern.len() as u64);
        if image.write_at(&pattern[..len as usize], pos).is_ok() {
            written.push((pos, len as usize));
        }
    }
    let pos = hash(data, 12) % size;
    let len = (3 * cs).min(size - pos);
    let _ = image.write_zeroes(pos, len, hash(data, 13) & 1 == 0);
    let pos = hash(data, 14) % size;
    let _ = image.discard(pos, (2 * cs).min(size - pos));
    let pos = (hash(data, 15) % size) / cs * cs;
    let cluster = vec![0x5a; cs.min(size - pos).min(CHUNK as u64) as usize];
    if image.write_compressed(pos, &cluster).is_ok() {
        written.push((pos, cluster.len()));
    }
    let _ = image.flush();
    written
}
