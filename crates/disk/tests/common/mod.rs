//! Helpers shared by the qcow2 tests that run the real qemu-img and
//! qemu-io: temporary directories, the tools themselves, an in-memory model
//! of a virtual disk, and comparisons that say where data differs.

// Each test binary uses its own subset of these helpers; the rest would
// warn as dead code in that binary. Removing it would mean one helper
// module per test file.
#![allow(dead_code)]

pub mod workload;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use vireo_disk::image::qcow2::{CheckReport, RepairMode};
use vireo_disk::image::{self, BackingMode, Image, ImageOptions, Qcow2};

use self::workload::{fill, Op};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// A directory for a test's images, removed on drop unless the test
/// failed: then it is kept and its path printed, to look at the images.
///
/// It lies in RAM (/dev/shm) when there is one: the qcow2 code and
/// qemu-img sync often (every new table is synced before it is linked), and
/// on a busy host disk those syncs, not the tests, would take most of the
/// time. Nothing here needs the data to survive a power cut (the crash test
/// kills a process; the host's page cache survives that). Set
/// `VIREO_QCOW2_TEST_DIR` to run on another file system; the target
/// directory is the fallback.
pub struct TempDir(PathBuf);

fn temp_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIREO_QCOW2_TEST_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable = fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm.to_owned()
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    }
}

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = temp_root().join(format!(
            "vireo-qcow2-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the images of the failed test in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Whether qemu-img and qemu-io are installed; says loudly when not.
pub fn have_qemu(test: &str) -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("SKIPPED: {test}: qemu-img or qemu-io is not installed");
    }
    ok
}

/// The seed of a randomized test: `VIREO_QCOW2_SEED` if set (to replay a
/// failure), else `default`; printed either way.
pub fn seed(test: &str, default: u64) -> u64 {
    let seed = match std::env::var("VIREO_QCOW2_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.expect("VIREO_QCOW2_SEED is a number")
        }
        Err(_) => default,
    };
    eprintln!("{test}: seed {seed:#x} (replay with VIREO_QCOW2_SEED={seed:#x})");
    seed
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs qemu-img; returns its exit code and everything it printed.
pub fn qemu_img_status<I, S>(args: I) -> (i32, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    (out.status.code().unwrap_or(-1), text(&out))
}

/// Runs qemu-img, which must succeed; returns what it printed.
pub fn qemu_img<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let (code, out) = qemu_img_status(&args);
    assert_eq!(code, 0, "qemu-img {args:?} failed:\n{out}");
    out
}

/// Runs qemu-io's commands on one image in a single run; every command
/// must succeed.
pub fn qemu_io(path: &Path, format: &str, cmds: &[String]) {
    if cmds.is_empty() {
        return;
    }
    let mut command = Command::new("qemu-io");
    command.args(["-f", format]);
    for c in cmds {
        command.arg("-c").arg(c);
    }
    let out = command.arg(path).output().expect("run qemu-io");
    let printed = text(&out);
    let failed = printed.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("error") || l.contains("failed") || l.contains("not ")
    });
    assert!(
        out.status.success() && !failed,
        "qemu-io on {}: {cmds:?}:\n{printed}",
        path.display()
    );
}

/// `qemu-img check`: exit code and report.
pub fn qemu_check(path: &Path) -> (i32, String) {
    qemu_img_status([OsStr::new("check"), path.as_os_str()])
}

/// `qemu-img check` finds nothing at all: no corruption, no leak.
pub fn assert_check_clean(path: &Path, what: &str) {
    let (code, out) = qemu_check(path);
    assert!(
        code == 0 && out.contains("No errors were found"),
        "{what}: qemu-img check {} exited {code}:\n{out}",
        path.display()
    );
}

/// The leaked clusters a `qemu-img check` report counts.
pub fn qemu_leaks(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_suffix(" leaked clusters were found on the image."))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Vireo's own check of a qcow2 image (`vireo img check`), repairing what
/// `repair` allows.
pub fn vireo_check(path: &Path, repair: RepairMode) -> CheckReport {
    let image = if repair == RepairMode::None {
        Qcow2::open(path, true)
    } else {
        Qcow2::open_for_repair(path)
    };
    let mut image =
        image.unwrap_or_else(|e| panic!("vireo opens {}: {}", path.display(), display_chain(&e)));
    image
        .check(repair)
        .unwrap_or_else(|e| panic!("vireo checks {}: {}", path.display(), display_chain(&e)))
}

/// Both qemu-img and Vireo find the image free of corruption and leaks.
pub fn assert_both_checks_clean(path: &Path, what: &str) {
    assert_check_clean(path, what);
    let report = vireo_check(path, RepairMode::None);
    assert!(
        report.corruptions == 0 && report.leaks == 0,
        "{what}: qemu-img check finds nothing, vireo's check finds {} corruptions and {} leaks: {:?}",
        report.corruptions,
        report.leaks,
        report.messages
    );
}

/// The whole virtual disk as qemu-img sees it (`convert -O raw`).
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    let out = path.with_extension("qemu-raw");
    qemu_img([
        OsStr::new("convert"),
        OsStr::new("-O"),
        OsStr::new("raw"),
        path.as_os_str(),
        out.as_os_str(),
    ]);
    let data = fs::read(&out).expect("read qemu-img's raw conversion");
    let _ = fs::remove_file(&out);
    data
}

/// `qemu-img info --output=json` of one image.
pub fn qemu_info(path: &Path) -> String {
    qemu_img([
        OsStr::new("info"),
        OsStr::new("--output=json"),
        path.as_os_str(),
    ])
}

/// Opens an image with its backing chain.
pub fn open(path: &Path, read_only: bool) -> std::sync::Arc<dyn Image> {
    image::open(
        path,
        &ImageOptions {
            read_only,
            format: None,
            backing: BackingMode::Follow,
        },
    )
    .unwrap_or_else(|e| panic!("vireo opens {}: {e}", display_chain(&e)))
}

/// An error with its causes, as the binaries print it.
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The whole virtual disk read through `image`, in pieces of `chunk`.
pub fn read_all(image: &dyn Image, chunk: u64) -> Vec<u8> {
    let size = image.size();
    let mut out = vec![0u8; size as usize];
    let mut pos = 0;
    while pos < size {
        let n = chunk.min(size - pos);
        image
            .read_at(&mut out[pos as usize..(pos + n) as usize], pos)
            .unwrap_or_else(|e| panic!("vireo reads {n} bytes at {pos:#x}: {}", display_chain(&e)));
        pos += n;
    }
    out
}

/// The whole virtual disk of the image at `path`, read by Vireo.
pub fn vireo_raw(path: &Path) -> Vec<u8> {
    read_all(&*open(path, true), 8 * MIB)
}

/// Asserts two disks are the same, saying where they differ if not.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: the disk sizes differ (got {}, want {})",
        got.len(),
        want.len()
    );
    if got == want {
        return;
    }
    let diffs: Vec<usize> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    let first = diffs[0];
    let last = diffs[diffs.len() - 1];
    panic!(
        "{what}: {} bytes differ, from {first:#x} (got {:#04x}, want {:#04x}) to {last:#x} (got {:#04x}, want {:#04x})",
        diffs.len(),
        got[first],
        want[first],
        got[last],
        want[last]
    );
}

/// What a virtual disk must hold: the bytes the guest wrote on top of what
/// the layers below show.
#[derive(Clone)]
pub struct Model {
    pub data: Vec<u8>,
    /// What the backing chain shows (zeros past its end), or empty when
    /// discarded clusters read as zeros.
    below: Vec<u8>,
    cluster_size: u64,
}

impl Model {
    /// A model of a new image over `below` (the backing chain's contents,
    /// any length). `discard_uncovers_backing`: discarded clusters read as
    /// the backing file (qcow2 v2 with a backing file) instead of zeros.
    pub fn new(size: u64, cluster_size: u64, below: &[u8], discard_uncovers_backing: bool) -> Self {
        let mut data = vec![0u8; size as usize];
        let n = below.len().min(data.len());
        data[..n].copy_from_slice(&below[..n]);
        Self {
            below: if discard_uncovers_backing {
                data.clone()
            } else {
                Vec::new()
            },
            data,
            cluster_size,
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The clusters a discard of `offset..offset+len` drops: the whole
    /// clusters inside the range (and the disk's last, partial cluster when
    /// the range reaches the end of the disk).
    pub fn discarded(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let cs = self.cluster_size;
        let end = offset + len;
        let first = offset.next_multiple_of(cs);
        let last = if end == self.size() {
            end
        } else {
            end & !(cs - 1)
        };
        (first < last).then_some((first, last))
    }

    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { offset, len, tag } => {
                fill(
                    tag,
                    offset,
                    &mut self.data[offset as usize..(offset + len) as usize],
                );
            }
            Op::Zeroes { offset, len, .. } => {
                self.data[offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Discard { offset, len } => {
                if let Some((a, b)) = self.discarded(offset, len) {
                    let (a, b) = (a as usize, b as usize);
                    if self.below.is_empty() {
                        self.data[a..b].fill(0);
                    } else {
                        self.data[a..b].copy_from_slice(&self.below[a..b]);
                    }
                }
            }
            Op::Flush => {}
        }
    }

    /// The value op `op` leaves at `pos` (inside its range).
    pub fn value_after(&self, op: &Op, pos: u64) -> Option<u8> {
        let (a, b) = op.range();
        if pos < a || pos >= b {
            return None;
        }
        match *op {
            Op::Write { tag, .. } => {
                let mut x = [0u8];
                fill(tag, pos, &mut x);
                Some(x[0])
            }
            Op::Zeroes { .. } => Some(0),
            Op::Discard { offset, len } => {
                let (a, b) = self.discarded(offset, len)?;
                (a..b).contains(&pos).then(|| {
                    if self.below.is_empty() {
                        0
                    } else {
                        self.below[pos as usize]
                    }
                })
            }
            Op::Flush => None,
        }
    }
}

/// A file of `len` bytes whose contents differ from place to place.
pub fn pattern(seed: u64, len: u64) -> Vec<u8> {
    workload::write_data(seed, 0, len)
}

/// The path as a string for tools' command lines.
pub fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
