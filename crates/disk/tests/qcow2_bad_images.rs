//! A corpus of bad qcow2 images. Each starts as a valid image (made by
//! Vireo, or by qemu-img where only QEMU makes it) with a few bytes patched,
//! and must be refused with an error that names the file and the problem:
//! never a panic, a hang, or an allocation sized by a header field.
//!
//! Every open and read here runs through [`bounded`]: on its own thread,
//! answering within [`TIME_BOUND`], allocating at most [`MEMORY_BOUND`]
//! bytes (a counting global allocator measures that thread's live bytes; the
//! images are a few hundred KiB, so anything near the bound means a table
//! was sized from the header rather than from the file).
//!
//! The comments quote what QEMU 7.2 makes of the same bytes (`qemu-img
//! info` / `check`, `qemu-io`), for comparison: it accepts some of them.
//! Tests that need qemu-img print "SKIPPED" without it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::error::Error;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vireo_disk::image::{
    self, BackingMode, CreateOptions, Image, ImageError, ImageFormat, ImageOptions, Qcow2,
};

// ---- bounds ---------------------------------------------------------------

/// The most one open (and read) of a bad image may have allocated at once.
const MEMORY_BOUND: i64 = 64 << 20;
/// The longest one open (and read) of a bad image may take.
const TIME_BOUND: Duration = Duration::from_secs(20);

/// The system allocator, counting each thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn note(delta: i64) {
    // try_with: nothing to count while the thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting touches only const-initialized thread locals without destructors,
// which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64));
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` on its own thread; fails the test if it panics, takes longer
/// than [`TIME_BOUND`] or allocates more than [`MEMORY_BOUND`] at once.
#[track_caller]
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("bad-image".into())
        .spawn(move || {
            let out = f();
            let peak = PEAK.with(Cell::get);
            let _ = tx.send((out, peak));
        })
        .expect("spawn a thread");
    let (out, peak) = match rx.recv_timeout(TIME_BOUND) {
        Ok(x) => x,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {TIME_BOUND:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked (see above)"),
    };
    assert!(
        peak <= MEMORY_BOUND,
        "{what}: allocated {} MiB at once, more than the {} MiB bound",
        peak >> 20,
        MEMORY_BOUND >> 20
    );
    out
}

/// `Qcow2::open`, bounded.
#[track_caller]
fn open_qcow2(path: &Path, read_only: bool) -> Result<Qcow2, ImageError> {
    let p = path.to_owned();
    bounded(&format!("opening {}", path.display()), move || {
        Qcow2::open(&p, read_only)
    })
}

/// `image::open` (format probed, backing chain followed), bounded.
#[track_caller]
fn open_chain(path: &Path, read_only: bool) -> Result<Arc<dyn Image>, ImageError> {
    let p = path.to_owned();
    bounded(&format!("opening {}", path.display()), move || {
        image::open(
            &p,
            &ImageOptions {
                read_only,
                ..Default::default()
            },
        )
    })
}

/// Reads the whole virtual disk in 64 KiB pieces, bounded; the first error.
#[track_caller]
fn read_all(image: Arc<dyn Image>) -> Result<(), ImageError> {
    bounded("reading the disk", move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = 0;
        while pos < image.size() {
            let n = (image.size() - pos).min(buf.len() as u64) as usize;
            image.read_at(&mut buf[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    })
}

/// Reads `len` bytes at `offset`, bounded.
#[track_caller]
fn read_at(image: &Arc<dyn Image>, offset: u64, len: usize) -> Result<Vec<u8>, ImageError> {
    let image = image.clone();
    bounded("reading", move || {
        let mut buf = vec![0u8; len];
        image.read_at(&mut buf, offset).map(|()| buf)
    })
}

/// Writes `len` bytes of `byte` at `offset` and flushes, bounded.
#[track_caller]
fn write_at(image: &Arc<dyn Image>, offset: u64, len: usize, byte: u8) -> Result<(), ImageError> {
    let image = image.clone();
    bounded("writing", move || {
        image.write_at(&vec![byte; len], offset)?;
        image.flush()
    })
}

/// The error with its causes, as the CLI prints it.
fn message(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Asserts `result` is an error naming the file `path` and containing every
/// one of `needles`; returns the message.
#[track_caller]
fn refused<T>(result: Result<T, ImageError>, path: &Path, needles: &[&str]) -> String {
    let err = match result {
        Ok(_) => panic!(
            "{} was accepted; expected an error saying {needles:?}",
            path.display()
        ),
        Err(err) => err,
    };
    let text = message(&err);
    let name = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    assert!(
        text.contains(&name),
        "the error does not name the file {name}: {text}"
    );
    for needle in needles {
        assert!(text.contains(needle), "expected '{needle}' in: {text}");
    }
    text
}

/// Asserts that `Qcow2::open` refuses `path` (read-only) as `refused` does.
#[track_caller]
fn refused_open(path: &Path, needles: &[&str]) -> String {
    refused(open_qcow2(path, true), path, needles)
}

#[track_caller]
fn ok<T>(result: Result<T, ImageError>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: {}", message(&e)),
    }
}

// ---- images ---------------------------------------------------------------

const CS: u64 = 65536;
const MIB: u64 = 1 << 20;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

/// Header fields (byte offsets, big-endian).
mod at {
    pub const MAGIC: u64 = 0;
    pub const VERSION: u64 = 4;
    pub const BACKING_OFFSET: u64 = 8;
    pub const BACKING_LEN: u64 = 16;
    pub const CLUSTER_BITS: u64 = 20;
    pub const SIZE: u64 = 24;
    pub const CRYPT: u64 = 32;
    pub const L1_SIZE: u64 = 36;
    pub const L1_OFFSET: u64 = 40;
    pub const REFTABLE_OFFSET: u64 = 48;
    pub const REFTABLE_CLUSTERS: u64 = 56;
    pub const NB_SNAPSHOTS: u64 = 60;
    pub const SNAPSHOTS_OFFSET: u64 = 64;
    pub const INCOMPATIBLE: u64 = 72;
}

/// A directory under the target directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "bad-qcow2-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the temporary directory");
        Self(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A 1 MiB image with 4 KiB clusters and `bits`-bit refcounts.
fn narrow_refcounts(dir: &Dir, name: &str, bits: u32, data: &[(u64, usize, u8)]) -> PathBuf {
    let opts = CreateOptions {
        size: MIB,
        cluster_size: 4096,
        refcount_bits: bits,
        ..Default::default()
    };
    vireo_image(dir, name, &opts, data)
}

/// A valid image made by Vireo, with data written through the library.
fn vireo_image(dir: &Dir, name: &str, opts: &CreateOptions, data: &[(u64, usize, u8)]) -> PathBuf {
    let path = dir.path(name);
    ok(Qcow2::create(&path, opts), "creating the image");
    let image = ok(
        image::open(
            &path,
            &ImageOptions {
                backing: BackingMode::Ignore,
                ..Default::default()
            },
        ),
        "opening the new image",
    );
    for &(offset, len, byte) in data {
        ok(image.write_at(&vec![byte; len], offset), "writing");
    }
    ok(image.flush(), "flushing");
    path
}

/// The image most cases patch: v3, 4 MiB, 64 KiB clusters, 64 KiB of 0x11
/// at 0 and 4 KiB of 0x22 at 1 MiB. Layout (what Vireo writes): header,
/// refcount table at 64K, refcount block at 128K, L1 table at 192K, then
/// the L2 table and data.
fn base(dir: &Dir, name: &str) -> PathBuf {
    vireo_image(
        dir,
        name,
        &CreateOptions {
            size: 4 * MIB,
            ..Default::default()
        },
        &[(0, CS as usize, 0x11), (MIB, 4096, 0x22)],
    )
}

/// A copy of `src` named `name`.
fn copy(dir: &Dir, src: &Path, name: &str) -> PathBuf {
    let path = dir.path(name);
    fs::copy(src, &path).expect("copy the image");
    path
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the image for patching");
    file.write_all_at(bytes, offset).expect("patch the image");
}

fn patch32(path: &Path, offset: u64, value: u32) {
    patch(path, offset, &value.to_be_bytes());
}

fn patch64(path: &Path, offset: u64, value: u64) {
    patch(path, offset, &value.to_be_bytes());
}

fn read_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = fs::File::open(path).expect("open the image");
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .expect("read the image");
    buf
}

fn read64(path: &Path, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&read_bytes(path, offset, 8));
    u64::from_be_bytes(b)
}

fn read32(path: &Path, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&read_bytes(path, offset, 4));
    u32::from_be_bytes(b)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat the image").len()
}

/// The file offset of the L2 entry of `guest` (64 KiB clusters), whose L2
/// table must exist.
fn l2_entry_at(path: &Path, guest: u64) -> u64 {
    let l1 = read64(path, at::L1_OFFSET);
    let per_l2 = CS / 8;
    let l1_index = guest / CS / per_l2;
    let l2 = read64(path, l1 + l1_index * 8) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0, "guest offset {guest:#x} has no L2 table");
    l2 + (guest / CS % per_l2) * 8
}

fn have_qemu_img() -> bool {
    let found = Command::new("qemu-img").arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIPPED: qemu-img not installed");
    }
    found
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

// ---- the header -------------------------------------------------------------

#[test]
fn truncated_files() {
    let dir = Dir::new("truncated");
    let good = base(&dir, "good.qcow2");
    // (length, what the error says). QEMU 7.2 probes up to 4 bytes as raw,
    // says "qcow2 header too short" up to 103 bytes, and from 104 on opens
    // the file and reads zeros (tables past the end read as zeros).
    #[rustfmt::skip]
    let cases: &[(u64, &str)] = &[
        (0, "0 bytes long, shorter than a qcow2 header"),
        (3, "3 bytes long, shorter than a qcow2 header"),
        (4, "4 bytes long, shorter than a qcow2 header"),
        (71, "71 bytes long, shorter than a qcow2 header"),
        (72, "the version 3 header is truncated"),
        (103, "the version 3 header is truncated"),
        (104, "header length 112 is outside 104..=104"),
        (111, "header length 112 is outside 104..=111"),
        // In the middle of the feature name table (an extension).
        (130, "goes past the first cluster"),
        (4096, "the L1 table at offset 0x30000 (8 bytes) lies beyond the end of the file"),
        (CS, "the L1 table at offset 0x30000 (8 bytes) lies beyond the end of the file"),
        // Inside the refcount table, then inside the L1 table.
        (CS + 100, "the L1 table at offset 0x30000"),
        (3 * CS + 4, "the L1 table at offset 0x30000 (8 bytes) lies beyond"),
    ];
    for &(len, needle) in cases {
        let path = copy(&dir, &good, &format!("cut-{len}.qcow2"));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len))
            .expect("truncate");
        for read_only in [true, false] {
            refused(
                open_qcow2(&path, read_only),
                &path,
                &["not a valid qcow2 image", needle],
            );
        }
        // Probing: fewer than 4 bytes cannot hold the magic, so the file is
        // raw (an empty raw disk); from 4 bytes on, it is a broken qcow2.
        let probed = ok(image::probe(&path), "probing");
        if len < 4 {
            assert_eq!(probed, ImageFormat::Raw, "{len} bytes");
            let raw = ok(open_chain(&path, true), "opening as raw");
            assert_eq!(raw.size(), len);
        } else {
            assert_eq!(probed, ImageFormat::Qcow2, "{len} bytes");
            refused(open_chain(&path, true), &path, &[needle]);
        }
    }
}

#[test]
fn bad_magic_is_raw_to_the_probe_and_refused_as_qcow2() {
    let dir = Dir::new("magic");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "magic.qcow2");
    patch(&path, at::MAGIC, b"QFI\x00");
    assert_eq!(ok(image::probe(&path), "probing"), ImageFormat::Raw);
    let raw = ok(open_chain(&path, true), "opening as raw");
    assert_eq!(raw.format(), ImageFormat::Raw);
    assert_eq!(raw.size(), file_len(&path));
    refused_open(&path, &["no qcow2 magic"]);
    // QEMU with -f qcow2: "Image is not in qcow2 format".
    let p = path.clone();
    let forced = bounded("opening with the format given", move || {
        image::open(
            &p,
            &ImageOptions {
                read_only: true,
                format: Some(ImageFormat::Qcow2),
                ..Default::default()
            },
        )
    });
    refused(forced, &path, &["no qcow2 magic"]);
}

#[test]
fn versions_1_and_4() {
    let dir = Dir::new("version");
    let good = base(&dir, "good.qcow2");
    // QEMU: version 1 is the older qcow format (its own driver; this header
    // makes it say "Cluster size must be between 512 and 64k"); version 4:
    // "Unsupported qcow2 version 4".
    for version in [0u32, 1, 4, 0xffff_ffff] {
        let path = copy(&dir, &good, &format!("v{version}.qcow2"));
        patch32(&path, at::VERSION, version);
        refused_open(
            &path,
            &[&format!("qcow2 version {version} is not supported")],
        );
    }
}

#[test]
fn cluster_bits_out_of_range() {
    let dir = Dir::new("cluster-bits");
    let good = base(&dir, "good.qcow2");
    // QEMU: "Unsupported cluster size: 2^8" / "2^22".
    for bits in [0u32, 8, 22, 64, 0xffff_ffff] {
        let path = copy(&dir, &good, &format!("bits-{bits}.qcow2"));
        patch32(&path, at::CLUSTER_BITS, bits);
        refused_open(&path, &[&format!("cluster_bits is {bits}, outside 9..=21")]);
    }
}

#[test]
fn huge_virtual_sizes_and_l1_tables_allocate_nothing() {
    let dir = Dir::new("huge");
    let good = base(&dir, "good.qcow2");
    // (virtual size, L1 entries, message). QEMU: "Image is too big" for the
    // sizes, "Active L1 table too large" for the L1 tables.
    #[rustfmt::skip]
    let cases: &[(u64, u32, &str)] = &[
        (1 << 60, 1, "the L1 table has 1 entries, too few for a virtual size of 1152921504606846976 bytes"),
        // What the size needs: 2^31 entries, 16 GiB of table.
        (1 << 60, 1 << 31, "the L1 table is 17179869184 bytes, more than the 33554432 allowed"),
        (1 << 63, 1 << 31, "virtual size 9223372036854775808 is too large"),
        (u64::MAX, u32::MAX, "virtual size 18446744073709551615 is too large"),
        // A small disk with an L1 table of 2^32 - 1 entries (32 GiB).
        (4 * MIB, u32::MAX, "the L1 table is 34359738360 bytes, more than the 33554432 allowed"),
    ];
    for (i, &(size, l1_size, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("huge-{i}.qcow2"));
        patch64(&path, at::SIZE, size);
        patch32(&path, at::L1_SIZE, l1_size);
        refused_open(&path, &[needle]);
    }
}

#[test]
fn l1_table_too_small_for_the_size() {
    let dir = Dir::new("l1-small");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "l1-small.qcow2");
    // One L1 entry maps 512 MiB with 64 KiB clusters; claim 2 GiB.
    // QEMU: "L1 table is too small" too.
    patch64(&path, at::SIZE, 2 << 30);
    refused_open(
        &path,
        &["the L1 table has 1 entries, too few for a virtual size of 2147483648 bytes (needs 4)"],
    );
}

#[test]
fn tables_past_the_end_of_the_file() {
    let dir = Dir::new("past-eof");
    let good = base(&dir, "good.qcow2");
    let len = file_len(&good);
    // (field, value, message). QEMU 7.2 opens the first two (qemu-io reads
    // fine; `qemu-img check` reports "ERROR: counting reference for region
    // exceeding the end of the file"), and refuses a table whose end
    // overflows ("Active L1 table offset invalid").
    #[rustfmt::skip]
    let cases: &[(u64, u64, &str)] = &[
        (at::L1_OFFSET, 1 << 40, "the L1 table at offset 0x10000000000 (8 bytes) lies beyond the end of the file"),
        (at::L1_OFFSET, len.next_multiple_of(CS), "the L1 table at offset"),
        // The end overflows u64.
        (at::L1_OFFSET, 0xffff_ffff_ffff_0000, "the L1 table at offset 0xffffffffffff0000 (8 bytes) lies beyond"),
        (at::REFTABLE_OFFSET, 1 << 40, "the refcount table at offset 0x10000000000 (65536 bytes) lies beyond the end of the file"),
        (at::REFTABLE_OFFSET, 0xffff_ffff_ffff_0000, "the refcount table at offset 0xffffffffffff0000"),
    ];
    for (i, &(field, value, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("eof-{i}.qcow2"));
        patch64(&path, field, value);
        refused_open(&path, &[needle, &format!("({len} bytes)")]);
    }
    // An L1 table within the memory bound (4 Mi entries, 32 MiB) that
    // starts in the file and ends far past it.
    let path = copy(&dir, &good, "l1-long.qcow2");
    patch32(&path, at::L1_SIZE, 4 << 20);
    refused_open(
        &path,
        &["the L1 table at offset 0x30000 (33554432 bytes) lies beyond the end of the file"],
    );
}

#[test]
fn refcount_table_too_large_or_empty() {
    let dir = Dir::new("reftable-size");
    let good = base(&dir, "good.qcow2");
    // QEMU: "Reference count table too large"; for 0: "Image does not
    // contain a reference count table".
    #[rustfmt::skip]
    let cases: &[(u32, &str)] = &[
        (u32::MAX, "the refcount table is 281474976645120 bytes, more than the 8388608 allowed"),
        (129, "the refcount table is 8454144 bytes, more than the 8388608 allowed"),
        (0, "the refcount table is empty"),
    ];
    for &(clusters, needle) in cases {
        let path = copy(&dir, &good, &format!("rt-{clusters}.qcow2"));
        patch32(&path, at::REFTABLE_CLUSTERS, clusters);
        refused_open(&path, &[needle]);
    }
}

#[test]
fn tables_overlapping_the_header_or_each_other() {
    let dir = Dir::new("overlap");
    let good = base(&dir, "good.qcow2");
    // QEMU 7.2 opens the first three (`qemu-img check` lists refcount
    // errors), and the first write marks the image corrupt: "Preventing
    // invalid write on metadata (overlaps with qcow2_header)".
    let l1 = read64(&good, at::L1_OFFSET);
    let reftable = read64(&good, at::REFTABLE_OFFSET);
    #[rustfmt::skip]
    let cases: &[(&[(u64, u64)], &str)] = &[
        (&[(at::L1_OFFSET, 0)], "the L1 table overlaps the header"),
        (&[(at::REFTABLE_OFFSET, 0)], "the refcount table overlaps the header"),
        (&[(at::L1_OFFSET, reftable)], "the refcount table overlaps the L1 table"),
        (&[(at::SNAPSHOTS_OFFSET, l1), (at::NB_SNAPSHOTS, 1)], "the snapshot table overlaps the L1 table"),
        (&[(at::SNAPSHOTS_OFFSET, reftable), (at::NB_SNAPSHOTS, 1)], "the snapshot table overlaps the refcount table"),
    ];
    for (i, &(fields, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("overlap-{i}.qcow2"));
        for &(field, value) in fields {
            if field == at::NB_SNAPSHOTS {
                patch32(&path, field, value as u32);
            } else {
                patch64(&path, field, value);
            }
        }
        refused_open(&path, &[needle]);
    }
}

#[test]
fn unaligned_table_offsets() {
    let dir = Dir::new("unaligned");
    let good = base(&dir, "good.qcow2");
    let l1 = read64(&good, at::L1_OFFSET);
    let reftable = read64(&good, at::REFTABLE_OFFSET);
    // QEMU: "Active L1 table offset invalid", "Reference count table offset
    // invalid", "Snapshot table offset invalid".
    #[rustfmt::skip]
    let cases: &[(u64, u64, &str)] = &[
        (at::L1_OFFSET, l1 + 512, "the L1 table offset 0x30200 is not aligned to the cluster size 65536"),
        (at::L1_OFFSET, l1 + 8, "the L1 table offset 0x30008 is not aligned"),
        (at::REFTABLE_OFFSET, reftable + 4096, "the refcount table offset 0x11000 is not aligned"),
        (at::SNAPSHOTS_OFFSET, l1 + 1, "the snapshot table offset 0x30001 is not aligned"),
    ];
    for (i, &(field, value, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("unaligned-{i}.qcow2"));
        patch64(&path, field, value);
        if field == at::SNAPSHOTS_OFFSET {
            patch32(&path, at::NB_SNAPSHOTS, 1);
        }
        refused_open(&path, &[needle]);
    }
}

// ---- feature bits -----------------------------------------------------------

#[test]
fn unknown_incompatible_features_are_named() {
    let dir = Dir::new("features");
    let good = base(&dir, "good.qcow2");

    // Without a name: QEMU says "Unsupported qcow2 feature(s): Unknown
    // incompatible feature: 10000000000".
    let path = copy(&dir, &good, "bit40.qcow2");
    patch64(&path, at::INCOMPATIBLE, 1 << 40);
    refused_open(
        &path,
        &["unknown incompatible feature bit 40 is not supported"],
    );

    // Named in the image's own feature name table (Vireo writes one, as QEMU
    // does): rename the entry of bit 4 to a bit 9 called "teleportation".
    // QEMU: "Unsupported qcow2 feature(s): teleportation".
    let path = copy(&dir, &good, "bit9.qcow2");
    let first = read_bytes(&path, 0, 4096);
    let name = b"extended L2 entries";
    let at_name = first
        .windows(name.len())
        .position(|w| w == name)
        .expect("Vireo writes a feature name table") as u64;
    assert_eq!(
        first[at_name as usize - 2],
        0,
        "an incompatible feature entry"
    );
    let mut entry = [0u8; 47];
    entry[0] = 9;
    entry[1..14].copy_from_slice(b"teleportation");
    patch(&path, at_name - 1, &entry);
    patch64(&path, at::INCOMPATIBLE, 1 << 9);
    let text = refused_open(
        &path,
        &["unknown incompatible feature bit 9 (teleportation)"],
    );
    assert!(!text.contains("extended"), "{text}");

    // Several at once, all listed.
    let path = copy(&dir, &good, "bits.qcow2");
    patch64(&path, at::INCOMPATIBLE, (1 << 5) | (1 << 63));
    refused_open(&path, &["bit 5, bit 63"]);
}

#[test]
fn corrupt_bit_allows_reading_only() {
    let dir = Dir::new("corrupt-bit");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "corrupt.qcow2");
    patch64(&path, at::INCOMPATIBLE, 1 << 1);
    // QEMU: qemu-io -r reads; writable: "qcow2: Image is corrupt; cannot be
    // opened read/write"; `qemu-img info` shows "corrupt: true".
    let image = ok(open_chain(&path, true), "read-only open of a corrupt image");
    assert_eq!(ok(read_at(&image, 0, 4096), "reading"), vec![0x11; 4096]);
    drop(image);
    refused(
        open_qcow2(&path, false),
        &path,
        &["is corrupt", "opened read-only"],
    );
    refused(open_chain(&path, false), &path, &["is corrupt"]);
    // Refusing did not touch the file.
    assert_eq!(read64(&path, at::INCOMPATIBLE), 1 << 1);
}

#[test]
fn dirty_bit_allows_reading_only() {
    let dir = Dir::new("dirty-bit");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "dirty.qcow2");
    patch64(&path, at::INCOMPATIBLE, 1 << 0);
    // QEMU opens it writable and rebuilds the refcounts first (silently);
    // Vireo reads it but asks for a repair before writing.
    let image = ok(open_chain(&path, true), "read-only open of a dirty image");
    assert_eq!(ok(read_at(&image, MIB, 4096), "reading"), vec![0x22; 4096]);
    drop(image);
    refused(
        open_qcow2(&path, false),
        &path,
        &["dirty flag", "is not supported"],
    );
}

#[test]
fn encryption_is_refused() {
    let dir = Dir::new("crypt");
    let good = base(&dir, "good.qcow2");
    // QEMU opens the header, then wants a key: "Parameter
    // 'encrypt.key-secret' is required for cipher".
    for method in [1u32, 2, 77] {
        let path = copy(&dir, &good, &format!("crypt-{method}.qcow2"));
        patch32(&path, at::CRYPT, method);
        refused_open(
            &path,
            &[&format!("encryption (method {method}) is not supported")],
        );
    }
    // The crypto header extension alone: the feature name table's
    // extension retyped (its contents do not matter to a reader that
    // refuses the type).
    let path = copy(&dir, &good, "crypto-ext.qcow2");
    assert_eq!(
        read32(&path, 112),
        0x6803_f857,
        "the feature name table comes first"
    );
    patch32(&path, 112, 0x0537_be77);
    refused_open(
        &path,
        &["encryption (LUKS header extension) is not supported"],
    );
    if !have_qemu_img() {
        return;
    }
    // A real LUKS image: method 2 and the crypto header extension. Its key
    // derivation times itself, which fails now and then on a loaded
    // machine ("Unable to get accurate CPU usage"): not this test's concern.
    let path = dir.path("luks.qcow2");
    let created = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=vireo",
        ])
        .args([
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        ])
        .arg(&path)
        .arg("1M")
        .output()
        .expect("qemu-img runs");
    if !created.status.success() {
        eprintln!(
            "SKIPPED the LUKS image: qemu-img create failed: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        );
        return;
    }
    refused_open(&path, &["encryption", "is not supported"]);
    // Only the extension, the method cleared.
    patch32(&path, at::CRYPT, 0);
    refused_open(
        &path,
        &["encryption (LUKS header extension) is not supported"],
    );
}

#[test]
fn external_data_files_are_refused() {
    let dir = Dir::new("data-file");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "bit2.qcow2");
    patch64(&path, at::INCOMPATIBLE, 1 << 2);
    // QEMU: "'data-file' is required for this image".
    refused_open(&path, &["external data files is not supported"]);
    if !have_qemu_img() {
        return;
    }
    let path = dir.path("external.qcow2");
    let data = dir.path("external.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", path_str(&data)),
        path_str(&path),
        "1M",
    ]);
    refused_open(&path, &["external data files is not supported"]);
}

#[test]
fn extended_l2_entries_are_refused() {
    let dir = Dir::new("extl2");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "bit4.qcow2");
    patch64(&path, at::INCOMPATIBLE, 1 << 4);
    refused_open(
        &path,
        &["extended L2 entries (subclusters) is not supported"],
    );
    if !have_qemu_img() {
        return;
    }
    let path = dir.path("extl2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        path_str(&path),
        "1M",
    ]);
    refused_open(
        &path,
        &["extended L2 entries (subclusters) is not supported"],
    );
}

// ---- backing files ------------------------------------------------------------

/// An image over `backing` (a name as recorded in the header).
fn overlay(dir: &Dir, name: &str, backing: &str) -> PathBuf {
    let path = dir.path(name);
    ok(
        Qcow2::create(
            &path,
            &CreateOptions {
                size: 4 * MIB,
                backing_file: Some(backing.into()),
                backing_format: Some("qcow2".into()),
                ..Default::default()
            },
        ),
        "creating an overlay",
    );
    path
}

#[test]
fn backing_file_names_outside_bounds() {
    let dir = Dir::new("backing-name");
    let good = overlay(&dir, "good.qcow2", "base.qcow2");
    let offset = read64(&good, at::BACKING_OFFSET);
    assert_eq!(read32(&good, at::BACKING_LEN), 10);
    // (offset, length, message). QEMU: "Backing file name too long" for
    // both kinds.
    #[rustfmt::skip]
    let cases: &[(u64, u32, &str)] = &[
        (offset, 1024, "the backing file name is 1024 bytes long, more than 1023"),
        (offset, u32::MAX, "the backing file name is 4294967295 bytes long"),
        (CS - 4, 100, "the backing file name at offset 65532 (100 bytes) lies outside the first cluster"),
        (CS, 1, "lies outside the first cluster"),
        (u64::MAX - 2, 10, "lies outside the first cluster"),
    ];
    for (i, &(off, len, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("name-{i}.qcow2"));
        patch64(&path, at::BACKING_OFFSET, off);
        patch32(&path, at::BACKING_LEN, len);
        refused_open(&path, &[needle]);
    }
    let path = copy(&dir, &good, "not-utf8.qcow2");
    patch(&path, offset + 2, &[0xff, 0xfe]);
    refused_open(&path, &["the backing file name is not UTF-8"]);
}

#[test]
fn backing_loops_are_refused() {
    let dir = Dir::new("loops");
    // a -> a. QEMU: `qemu-img info --backing-chain`: "Backing file
    // 'self.qcow2' creates an infinite loop."; qemu-io fails on its own
    // image lock.
    let a = overlay(&dir, "self.qcow2", "self.qcow2");
    refused(
        open_chain(&a, true),
        &a,
        &["leads back to an image already in the chain"],
    );
    // a -> b -> a.
    let a = overlay(&dir, "a.qcow2", "b.qcow2");
    let b = overlay(&dir, "b.qcow2", "a.qcow2");
    let text = refused(
        open_chain(&a, true),
        &b,
        &["leads back to an image already in the chain"],
    );
    assert!(
        text.contains(path_str(&a)),
        "names the repeated image: {text}"
    );
    // c -> d -> e -> d, d reached again through another name (a symlink):
    // a loop by identity, not by name.
    let c = overlay(&dir, "c.qcow2", "d.qcow2");
    overlay(&dir, "d.qcow2", "e.qcow2");
    overlay(&dir, "e.qcow2", "d-again.qcow2");
    std::os::unix::fs::symlink(dir.path("d.qcow2"), dir.path("d-again.qcow2")).expect("symlink");
    refused(
        open_chain(&c, true),
        &c.with_file_name("e.qcow2"),
        &["leads back"],
    );
    // Writable open of the top: the same.
    refused(open_chain(&a, false), &b, &["leads back"]);
    // Without following the chain each one opens.
    let p = a.clone();
    let alone = bounded("opening without the chain", move || {
        image::open(
            &p,
            &ImageOptions {
                read_only: true,
                backing: BackingMode::Ignore,
                ..Default::default()
            },
        )
    });
    ok(alone, "opening a looping image alone");
}

#[test]
fn missing_backing_file_is_named() {
    let dir = Dir::new("missing");
    let top = overlay(&dir, "top.qcow2", "missing-base.qcow2");
    // QEMU: "Could not open backing file: Could not open
    // 'missing-base.qcow2': No such file or directory".
    refused(
        open_chain(&top, true),
        &top,
        &[
            "cannot open its backing file missing-base.qcow2",
            "No such file or directory",
        ],
    );
    // One level down: the error names the image whose backing file is
    // missing (top.qcow2), not the one asked for.
    let upper = overlay(&dir, "upper.qcow2", "top.qcow2");
    let needles = [
        "cannot open its backing file missing-base.qcow2",
        "No such file",
    ];
    refused(open_chain(&upper, true), &top, &needles);
    // The image alone opens and names its backing file.
    let alone = ok(open_qcow2(&top, true), "opening without the chain");
    assert_eq!(
        alone.backing_file_name().as_deref(),
        Some("missing-base.qcow2")
    );
}

// ---- snapshots ------------------------------------------------------------------

/// Appends a snapshot table of one entry (pointing at the active L1 table,
/// as a snapshot taken before any write would) and links it in the header.
/// Returns the table's offset.
fn add_snapshot_table(path: &Path) -> u64 {
    let offset = file_len(path).next_multiple_of(CS);
    let mut entry = Vec::new();
    entry.extend_from_slice(&read64(path, at::L1_OFFSET).to_be_bytes());
    entry.extend_from_slice(&read32(path, at::L1_SIZE).to_be_bytes());
    entry.extend_from_slice(&1u16.to_be_bytes()); // id length
    entry.extend_from_slice(&4u16.to_be_bytes()); // name length
    entry.extend_from_slice(&[0u8; 16]); // date, VM clock
    entry.extend_from_slice(&0u32.to_be_bytes()); // VM state size
    entry.extend_from_slice(&0u32.to_be_bytes()); // extra data length
    entry.extend_from_slice(b"1snap");
    entry.resize(CS as usize, 0);
    patch(path, offset, &entry);
    patch64(path, at::SNAPSHOTS_OFFSET, offset);
    patch32(path, at::NB_SNAPSHOTS, 1);
    offset
}

#[test]
fn snapshot_tables_out_of_bounds() {
    let dir = Dir::new("snapshots");
    let good = base(&dir, "good.qcow2");
    let with_snap = copy(&dir, &good, "with-snap.qcow2");
    let table = add_snapshot_table(&with_snap);
    let opened = ok(
        open_qcow2(&with_snap, true),
        "the hand-made snapshot table is valid",
    );
    assert_eq!(opened.snapshots().len(), 1);
    assert_eq!(opened.snapshots()[0].name, "snap");
    drop(opened);

    // QEMU 7.2 opens the first one (`qemu-img check`: "ERROR snapshot
    // table entry 0 is incomplete"); over 65536 snapshots: "Snapshot table
    // too large".
    let path = copy(&dir, &good, "snap-eof.qcow2");
    patch64(&path, at::SNAPSHOTS_OFFSET, 1 << 40);
    patch32(&path, at::NB_SNAPSHOTS, 1);
    refused_open(
        &path,
        &["the snapshot table at offset 0x10000000000 (40 bytes) lies beyond the end of the file"],
    );
    let path = copy(&dir, &with_snap, "snap-many.qcow2");
    patch32(&path, at::NB_SNAPSHOTS, 70_000);
    refused_open(&path, &["70000 snapshots, more than the 65536 allowed"]);
    // Two entries: 2 * 40 bytes fit the file (the check at the header),
    // but the first one's extra data leaves no room for the second.
    let path = copy(&dir, &with_snap, "snap-count.qcow2");
    patch32(&path, at::NB_SNAPSHOTS, 2);
    patch32(&path, table + 36, 65480);
    let needle = "snapshot 1 lies past the end of the file";
    refused_open(&path, &[needle]);
    // The second entry's name runs past the table.
    let path = copy(&dir, &with_snap, "snap-name.qcow2");
    patch32(&path, at::NB_SNAPSHOTS, 2);
    patch(&path, table + 48 + 14, &u16::MAX.to_be_bytes());
    let needle = "snapshot 1 runs past the end of the snapshot table";
    refused_open(&path, &[needle]);
    // An entry whose lengths run past the table.
    let path = copy(&dir, &with_snap, "snap-extra.qcow2");
    patch32(&path, table + 36, u32::MAX);
    refused_open(
        &path,
        &["snapshot 0 runs past the end of the snapshot table"],
    );
    // The snapshot's own L1 table: past the end of the file, unaligned,
    // too large.
    #[rustfmt::skip]
    let cases: &[(u64, u32, &str)] = &[
        (1 << 40, 1, "snapshot 0's L1 table (1 entries at 0x10000000000) is too large or lies past the end of the file"),
        (3 * CS + 8, 1, "snapshot 0's L1 table offset 0x30008 is not cluster aligned"),
        (3 * CS, u32::MAX, "snapshot 0's L1 table (4294967295 entries at 0x30000) is too large"),
    ];
    for (i, &(l1, l1_size, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &with_snap, &format!("snap-l1-{i}.qcow2"));
        patch64(&path, table, l1);
        patch32(&path, table + 8, l1_size);
        refused_open(&path, &[needle]);
    }
}

#[test]
fn snapshot_made_by_qemu_with_its_l1_table_past_the_end() {
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new("qemu-snapshot");
    let path = base(&dir, "snap.qcow2");
    qemu_img(&["snapshot", "-c", "first", path_str(&path)]);
    let opened = ok(open_qcow2(&path, true), "opening QEMU's snapshot");
    assert_eq!(opened.snapshots().len(), 1);
    drop(opened);
    let table = read64(&path, at::SNAPSHOTS_OFFSET);
    patch64(&path, table, 1 << 40);
    // QEMU 7.2 opens it and reads the active disk (it looks at a
    // snapshot's L1 table when the snapshot is used).
    refused_open(
        &path,
        &["snapshot 0's L1 table", "lies past the end of the file"],
    );
}

// ---- L1 and L2 entries (found at read time) -------------------------------------

#[test]
fn bad_l2_entries_fail_the_read_naming_the_guest_offset() {
    let dir = Dir::new("l2");
    let good = base(&dir, "good.qcow2");
    let entry_at = l2_entry_at(&good, MIB);
    let entry = read64(&good, entry_at);
    let host = entry & 0x00ff_ffff_ffff_fe00;
    assert_eq!(entry, host | COPIED, "a plain data cluster");
    // (new entry, message). QEMU 7.2 reads through reserved bits (`qemu-img
    // check` counts an error); for the unaligned offset: "read failed:
    // Input/output error", and it marks the image corrupt ("Cluster
    // allocation offset 0x50200 unaligned (L2 offset: 0x40000, L2 index:
    // 0)").
    #[rustfmt::skip]
    let cases: &[(u64, &str)] = &[
        (entry | 0x2, "the L2 entry of guest offset 0x100000 has reserved bits set"),
        (entry | (1 << 56), "the L2 entry of guest offset 0x100000 has reserved bits set"),
        (entry + 512, "the L2 entry of guest offset 0x100000 points to unaligned offset"),
        (COPIED | COMPRESSED | host, "the compressed L2 entry of guest offset 0x100000 is invalid"),
        (COMPRESSED, "the compressed L2 entry of guest offset 0x100000 is invalid"),
    ];
    for (i, &(bad, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("l2-{i}.qcow2"));
        patch64(&path, entry_at, bad);
        // Opening does not read L2 tables; reading the cluster does.
        let image = ok(open_chain(&path, true), "opening");
        assert_eq!(
            ok(read_at(&image, 0, 4096), "another cluster"),
            vec![0x11; 4096]
        );
        refused(read_at(&image, MIB + 512, 512), &path, &[needle]);
        refused(read_all(image), &path, &[needle]);
        // Writing there is refused the same way, and leaves the entry.
        let image = ok(open_chain(&path, false), "opening writable");
        refused(write_at(&image, MIB, 4096, 0x33), &path, &[needle]);
        drop(image);
        assert_eq!(read64(&path, entry_at), bad, "the bad entry was rewritten");
    }
}

#[test]
fn bad_l1_entries_fail_the_read() {
    let dir = Dir::new("l1");
    let good = base(&dir, "good.qcow2");
    let l1 = read64(&good, at::L1_OFFSET);
    let entry = read64(&good, l1);
    // QEMU 7.2 reads through reserved bits; unaligned: "L2 table offset
    // 0x40200 unaligned (L1 index: 0)" and the image marked corrupt; past
    // the end of the file it reads zeros.
    let l2 = entry & !COPIED;
    #[rustfmt::skip]
    let cases = [
        (entry | 0x100, format!("L1 entry 0 ({:#x}) has reserved", entry | 0x100)),
        (entry | (1 << 60), format!("L1 entry 0 ({:#x}) has reserved", entry | (1 << 60))),
        (l2 + 512, format!("L2 table offset {:#x} is unaligned or beyond", l2 + 512)),
        (COPIED | (1 << 40), "L2 table offset 0x10000000000 is unaligned or beyond".into()),
    ];
    for (i, (bad, needle)) in cases.iter().enumerate() {
        let (bad, needle) = (*bad, needle.as_str());
        let path = copy(&dir, &good, &format!("l1-{i}.qcow2"));
        patch64(&path, l1, bad);
        let image = ok(open_chain(&path, true), "opening");
        refused(read_at(&image, 0, 4096), &path, &[needle]);
    }
}

/// An L2 entry pointing past the end of the file must not read as zeros:
/// data the image claims to hold is missing.
#[test]
fn l2_entry_past_the_end_of_the_file() {
    let dir = Dir::new("l2-eof");
    let good = base(&dir, "good.qcow2");
    let entry_at = l2_entry_at(&good, MIB);
    let path = copy(&dir, &good, "l2-eof.qcow2");
    patch64(&path, entry_at, COPIED | (1 << 40));
    // QEMU 7.2: qemu-io reads zeros; `qemu-img check`: "ERROR: counting
    // reference for region exceeding the end of the file by one cluster or
    // more: offset 0x10000000000 size 0x10000".
    let image = ok(open_chain(&path, true), "opening");
    refused(
        read_at(&image, MIB, 4096),
        &path,
        &["guest offset 0x100000", "beyond the end of the file"],
    );
    drop(image);
    let image = ok(open_chain(&path, false), "opening writable");
    refused(
        write_at(&image, MIB, 4096, 0x33),
        &path,
        &["guest offset 0x100000", "beyond the end of the file"],
    );
    drop(image);
    assert!(
        file_len(&path) < 1 << 40,
        "the write extended the file to 1 TiB"
    );
}

// ---- compressed clusters ----------------------------------------------------------

#[test]
fn garbage_in_a_compressed_cluster() {
    let dir = Dir::new("compressed");
    let path = base(&dir, "good.qcow2");
    let guest = 2 * MIB;
    {
        let image = ok(Qcow2::open(&path, false), "opening");
        // Compressible, but to more than one 512-byte sector.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..CS)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0x3f) as u8
            })
            .collect();
        ok(image.write_compressed(guest, &data), "compressed write");
        ok(image.flush(), "flushing");
    }
    let entry_at = l2_entry_at(&path, guest);
    let entry = read64(&path, entry_at);
    assert_ne!(entry & COMPRESSED, 0, "the cluster is compressed");
    // 64 KiB clusters: the host offset is in bits 0..54.
    let host = entry & ((1 << 54) - 1);
    let image = ok(open_chain(&path, true), "opening");
    ok(
        read_at(&image, guest, CS as usize),
        "reading the good cluster",
    );
    drop(image);

    // QEMU: qemu-io "read failed: Input/output error".
    let bad = copy(&dir, &path, "garbage.qcow2");
    patch(&bad, host, &[0xff; 64]);
    let image = ok(open_chain(&bad, true), "opening");
    refused(
        read_at(&image, guest + 4096, 4096),
        &bad,
        &["the compressed cluster of guest offset 0x200000 cannot be decompressed"],
    );
    refused(read_all(image.clone()), &bad, &["cannot be decompressed"]);
    // A partial write must read the old cluster to merge: refused too.
    let image = ok(open_chain(&bad, false), "opening writable");
    refused(
        write_at(&image, guest + 100, 100, 0x44),
        &bad,
        &["cannot be decompressed"],
    );
    drop(image);

    // Truncated after the first sector of the stream: "deflate data ends".
    let bad = copy(&dir, &path, "short.qcow2");
    let sectors_mask = (1u64 << 8) - 1;
    patch64(&bad, entry_at, entry & !(sectors_mask << 54));
    let image = ok(open_chain(&bad, true), "opening");
    refused(
        read_at(&image, guest, 4096),
        &bad,
        &["the compressed cluster of guest offset 0x200000 cannot be decompressed"],
    );

    // The stream's offset past the end of the file.
    let bad = copy(&dir, &path, "compressed-eof.qcow2");
    patch64(&bad, entry_at, COMPRESSED | (1 << 40));
    let image = ok(open_chain(&bad, true), "opening");
    refused(
        read_at(&image, guest, 4096),
        &bad,
        &["guest offset 0x200000", "beyond the end of the file"],
    );
}

// ---- refcounts --------------------------------------------------------------------

#[test]
fn refcount_block_past_the_end_of_the_file() {
    let dir = Dir::new("refblock");
    let good = base(&dir, "good.qcow2");
    let reftable = read64(&good, at::REFTABLE_OFFSET);
    // QEMU 7.2, on a write that allocates: past the end, "Preventing
    // invalid write on metadata (overlaps with qcow2_header)"; unaligned,
    // "Refblock offset 0x21000 unaligned (reftable index: 0)", both marking
    // the image corrupt; reserved bits are ignored.
    #[rustfmt::skip]
    let cases: &[(u64, &str)] = &[
        (1 << 40, "refcount block at 0x10000000000 lies beyond the end of the file"),
        (2 * CS + 0x100, "refcount table entry 0 (0x20100) has reserved bits set"),
        (2 * CS + 4096, "refcount block offset 0x21000 is unaligned or overlaps the header"),
        (2 * CS + 65536 * 4096, "refcount block at 0x10020000 lies beyond the end of the file"),
    ];
    for (i, &(block, needle)) in cases.iter().enumerate() {
        let path = copy(&dir, &good, &format!("refblock-{i}.qcow2"));
        patch64(&path, reftable, block);
        // Reading needs no refcounts.
        let image = ok(open_chain(&path, true), "read-only open");
        ok(read_all(image), "reading");
        // Writing in place needs none either; allocating does.
        let image = ok(open_chain(&path, false), "writable open");
        ok(write_at(&image, 0, 4096, 0x55), "an in-place write");
        refused(write_at(&image, 3 * MIB, 4096, 0x66), &path, &[needle]);
        drop(image);
        assert_eq!(
            read64(&path, reftable),
            block,
            "the table entry was rewritten"
        );
    }
}

/// Two compressed clusters share a host cluster, so packing the second one
/// takes a second reference to it: with refcount_bits=1 the counter is
/// already full. QEMU then starts a new host cluster (qemu-io `write -c`
/// twice on a refcount_bits=1 image succeeds and `qemu-img check` is
/// clean); so must Vireo (this is `convert -c` to a refcount_bits=1 image).
/// The other way to a second reference, an internal snapshot, is refused:
/// see snapshot_on_one_bit_refcounts_is_refused_cleanly.
#[test]
fn compressed_writes_on_one_bit_refcounts() {
    let dir = Dir::new("refcount1");
    let path = narrow_refcounts(&dir, "r1.qcow2", 1, &[]);
    let image = ok(Qcow2::open(&path, false), "opening");
    let data = vec![0x5a; 4096];
    for i in 0..4 {
        ok(image.write_compressed(i * 4096, &data), "compressed write");
    }
    ok(image.flush(), "flushing");
    drop(image);
    let image = ok(open_chain(&path, true), "reopening");
    assert_eq!(
        ok(read_at(&image, 0, 4 * 4096), "reading"),
        vec![0x5a; 4 * 4096]
    );
    let bs = ok(image.block_status(0, 4096), "block status");
    assert!(
        matches!(
            bs.allocation,
            image::Allocation::Data {
                compressed: true,
                ..
            }
        ),
        "{bs:?}"
    );
    drop(image);
    if have_qemu_img() {
        let (code, text) = qemu_check(&path);
        assert_eq!(code, 0, "{text}");
    }
}

/// The refcounts say the L1 table's cluster is free: allocating must not
/// hand it out (QEMU refuses the write with "Preventing invalid write on
/// metadata (overlaps with active L1 table)" and marks the image corrupt).
#[test]
fn allocation_never_overwrites_metadata() {
    let dir = Dir::new("overlap-write");
    let good = base(&dir, "good.qcow2");
    let path = copy(&dir, &good, "free-l1.qcow2");
    let l1 = read64(&path, at::L1_OFFSET);
    let block = read64(&path, read64(&path, at::REFTABLE_OFFSET));
    // 16-bit refcounts: entry 3 (the L1 table's cluster) is at byte 6.
    assert_eq!(l1, 3 * CS);
    patch(&path, block + 6, &[0, 0]);
    let l1_before = read_bytes(&path, l1, 8);
    let image = ok(open_chain(&path, false), "opening");
    // Either refused, or written elsewhere.
    let _ = write_at(&image, 3 * MIB, 4096, 0x77);
    drop(image);
    assert_eq!(
        read_bytes(&path, l1, 8),
        l1_before,
        "the L1 table was overwritten"
    );
}

/// `qemu-img check` on `path`: its exit code (0 clean, 2 errors, 3 only
/// leaked clusters) and output.
fn qemu_check(path: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", path_str(path)])
        .output()
        .expect("qemu-img runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Takes a snapshot through the library, bounded; the image is closed
/// (flushed) before this returns.
#[track_caller]
fn snapshot(path: &Path, name: &'static str) -> Result<(), ImageError> {
    let p = path.to_owned();
    bounded("creating a snapshot", move || {
        let mut image = Qcow2::open(&p, false)?;
        image.snapshot_create(name).map(drop)
    })
}

/// An internal snapshot takes a second reference to every cluster, which
/// 1-bit refcounts cannot count. QEMU refuses (`qemu-img snapshot -c`:
/// "Could not create snapshot 's1': -22 (Invalid argument)") and the image
/// stays clean.
#[test]
fn snapshot_on_one_bit_refcounts_is_refused_cleanly() {
    let dir = Dir::new("snapshot-r1");
    let path = narrow_refcounts(
        &dir,
        "r1.qcow2",
        1,
        &[(0, 4096, 0x11), (512 << 10, 4096, 0x22)],
    );
    refused(snapshot(&path, "s1"), &path, &["refcount overflow"]);
    let image = ok(open_chain(&path, true), "reopening");
    assert_eq!(ok(read_at(&image, 0, 4096), "reading"), vec![0x11; 4096]);
    assert_eq!(
        ok(read_at(&image, 512 << 10, 4096), "reading"),
        vec![0x22; 4096]
    );
    drop(image);
    assert!(ok(open_qcow2(&path, true), "reopening")
        .snapshots()
        .is_empty());
    if have_qemu_img() {
        let (code, text) = qemu_check(&path);
        assert_eq!(code, 0, "{text}");
    }
}

/// A snapshot refused half-way (2-bit refcounts: three snapshots of one
/// cluster fill its counter, while a cluster written since has room) must
/// not leave refcounts that disagree with the tables: leaked clusters at
/// worst (`qemu-img check` exit 3), never errors.
#[test]
fn refused_snapshot_leaves_consistent_refcounts() {
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new("snapshot-r2");
    let path = narrow_refcounts(
        &dir,
        "r2.qcow2",
        2,
        &[(0, 4096, 0x11), (512 << 10, 4096, 0x22)],
    );
    ok(snapshot(&path, "s1"), "the first snapshot");
    ok(snapshot(&path, "s2"), "the second snapshot");
    // Guest offset 0 gets a cluster of its own (refcount 1) and its L2 table
    // a copy; 512K keeps the cluster the snapshots share (refcount 3).
    let image = ok(open_chain(&path, false), "opening");
    ok(write_at(&image, 0, 4096, 0x33), "writing");
    drop(image);
    let (code, text) = qemu_check(&path);
    assert_eq!(code, 0, "before the refused snapshot: {text}");
    refused(snapshot(&path, "s3"), &path, &["refcount overflow"]);
    let (code, text) = qemu_check(&path);
    assert!(code == 0 || code == 3, "after the refused snapshot: {text}");
    let image = ok(open_chain(&path, true), "reopening");
    assert_eq!(ok(read_at(&image, 0, 4096), "reading"), vec![0x33; 4096]);
}
