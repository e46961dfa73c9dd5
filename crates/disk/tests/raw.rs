//! Raw disks on real files in a temporary directory, through the public API,
//! with both engines.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use vireo_disk::{
    Completion, Disk, DiskQueue, EngineKind, IoBuf, OpenError, Operation, QueueConfig, QueueError,
    RawDisk, RawOptions, Request, RequestError,
};

const MIB: u64 = 1024 * 1024;
const ENGINES: [EngineKind; 2] = [EngineKind::IoUring, EngineKind::ThreadPool];

/// A directory under the target directory, removed on drop. Not /tmp: that
/// may be tmpfs, which refuses O_DIRECT.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "disk-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create the temporary directory");
        Self(path)
    }

    /// A file of `size` bytes filled with the pattern of `seed` (or sparse
    /// when `seed` is `None`).
    fn file(&self, name: &str, size: u64, seed: Option<u8>) -> PathBuf {
        let path = self.0.join(name);
        let mut file = File::create(&path).expect("create the disk file");
        match seed {
            Some(seed) => file
                .write_all(&pattern(seed, size as usize))
                .expect("fill the disk file"),
            None => file.set_len(size).expect("size the disk file"),
        }
        file.sync_all().expect("sync the disk file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Bytes that differ from position to position and from seed to seed.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed) % 32) as u8
                ^ seed
        })
        .collect()
}

/// Opens a queue, or returns `None` (saying so) when io_uring is not
/// available on this host.
fn queue(disk: &RawDisk, engine: EngineKind, depth: u32) -> Option<Box<dyn DiskQueue>> {
    let config = QueueConfig {
        engine,
        depth,
        workers: 3,
        name: "test".to_owned(),
    };
    match disk.open_queue(&config) {
        Ok(queue) => {
            assert_eq!(queue.engine(), engine);
            Some(queue)
        }
        Err(err) if err.is_uring_unavailable() => {
            eprintln!("SKIPPED io_uring case: {err}");
            None
        }
        Err(err) => panic!("cannot open a {engine} queue: {err}"),
    }
}

fn open(path: &Path, options: &RawOptions) -> RawDisk {
    RawDisk::open(path, options).expect("open the disk")
}

/// `IoBuf`s over consecutive pieces of `mem` of the given sizes.
fn split(mem: &mut [u8], sizes: &[usize]) -> Vec<IoBuf> {
    assert_eq!(sizes.iter().sum::<usize>(), mem.len());
    let mut rest = mem;
    let mut bufs = Vec::new();
    for &size in sizes {
        let (head, tail) = rest.split_at_mut(size);
        // SAFETY: every test keeps its buffers alive and untouched until its
        // requests have completed (`run` waits for them).
        bufs.push(unsafe { IoBuf::from_slice(head) });
        rest = tail;
    }
    bufs
}

/// Enqueues the requests (ids 0, 1, ...), submits them together and waits
/// for all of them as an event loop would: poll the eventfd, then reap.
/// Returns the results in id order.
fn run(queue: &mut dyn DiskQueue, requests: &[Request<'_>]) -> Vec<Result<u64, RequestError>> {
    for (id, request) in requests.iter().enumerate() {
        queue
            .enqueue(id as u64, *request)
            .expect("request accepted");
    }
    queue.submit().expect("submit");
    let mut done = wait_all(queue, requests.len());
    done.sort_by_key(|c| c.id);
    let ids: Vec<u64> = done.iter().map(|c| c.id).collect();
    assert_eq!(ids, (0..requests.len() as u64).collect::<Vec<_>>());
    done.into_iter().map(|c| c.result).collect()
}

/// Waits until `count` completions have been reaped.
fn wait_all(queue: &mut dyn DiskQueue, count: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    while done.len() < count {
        assert!(
            poll(queue, 10_000),
            "no completion within 10 s ({} of {count})",
            done.len()
        );
        queue.reap(&mut done).expect("reap");
    }
    assert_eq!(done.len(), count, "no extra completions");
    assert_eq!(queue.in_flight(), 0);
    done
}

/// Whether the completion eventfd becomes readable within `timeout_ms`.
fn poll(queue: &dyn DiskQueue, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: queue.completion_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(ret >= 0, "poll: {}", std::io::Error::last_os_error());
    ret > 0
}

fn ok(result: &Result<u64, RequestError>) -> u64 {
    match result {
        Ok(n) => *n,
        Err(err) => panic!("request failed: {err}"),
    }
}

fn blocks(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").blocks()
}

/// `lseek(SEEK_HOLE)` from `offset`.
fn next_hole(path: &Path, offset: u64) -> u64 {
    let file = File::open(path).expect("open for SEEK_HOLE");
    // SAFETY: lseek on our own descriptor takes no pointers.
    let pos = unsafe {
        libc::lseek(
            file.as_fd().as_raw_fd(),
            offset as libc::off_t,
            libc::SEEK_HOLE,
        )
    };
    assert!(pos >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
    pos as u64
}

#[test]
fn info_describes_the_file() {
    let dir = TempDir::new("info");
    let path = dir.file("a.img", 3 * MIB, None);
    let disk = open(&path, &RawOptions::default());
    let info = disk.info();
    assert_eq!(info.size, 3 * MIB);
    assert_eq!(info.logical_block_size, 512);
    assert!(info.physical_block_size >= 512 && info.physical_block_size.is_power_of_two());
    assert!(!info.read_only && !info.direct && info.discard && info.write_zeroes);
    assert_eq!(disk.path(), path);

    let ro = open(
        &path,
        &RawOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .info();
    assert!(ro.read_only && !ro.discard && !ro.write_zeroes);
}

#[test]
fn serial_is_stable_per_file_unless_given() {
    let dir = TempDir::new("serial");
    let a = dir.file("a.img", MIB, None);
    let b = dir.file("b.img", MIB, None);
    let serial_a = open(&a, &RawOptions::default()).serial();
    assert_eq!(
        serial_a,
        open(&a, &RawOptions::default()).serial(),
        "same file, same serial"
    );
    assert_ne!(serial_a, open(&b, &RawOptions::default()).serial());
    assert_eq!(serial_a.as_bytes().len(), 20);

    let given = RawOptions {
        serial: Some("vireo-disk-7".to_owned()),
        ..Default::default()
    };
    assert_eq!(open(&a, &given).serial().to_string(), "vireo-disk-7");
    assert_eq!(&open(&a, &given).serial().as_bytes()[12..], &[0; 8]);

    let too_long = RawOptions {
        serial: Some("x".repeat(21)),
        ..Default::default()
    };
    let err = RawDisk::open(&a, &too_long).expect_err("21-byte serial");
    assert!(matches!(err, OpenError::Serial { .. }));
}

#[test]
fn open_errors_name_the_file() {
    let dir = TempDir::new("open-errors");
    let missing = dir.0.join("missing.img");
    let err = RawDisk::open(&missing, &RawOptions::default()).expect_err("missing file");
    assert!(err.to_string().contains("missing.img"), "{err}");
    let err = RawDisk::open(&dir.0, &RawOptions::default()).expect_err("a directory");
    assert!(
        matches!(err, OpenError::Open { .. } | OpenError::NotADisk { .. }),
        "{err}"
    );
    let err = RawDisk::open(
        &dir.0,
        &RawOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect_err("a directory");
    assert!(
        matches!(
            err,
            OpenError::NotADisk {
                kind: "directory",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn round_trips_with_many_buffers_at_various_offsets() {
    let dir = TempDir::new("round-trip");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), 2 * MIB, Some(1));
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 16) else {
            continue;
        };
        let cases: &[(u64, &[usize])] = &[
            (0, &[512]),
            (512, &[4096, 512, 1024]),
            (7, &[1, 2, 3, 4093]),
            (65_536 - 100, &[100, 65_536, 300]),
            (2 * MIB - 8192, &[4096, 4096]),
            (MIB + 3, &[100_000, 17, 200_000]),
        ];
        let mut expected = fs::read(&path).expect("read the file");
        for (n, &(offset, sizes)) in cases.iter().enumerate() {
            let len: usize = sizes.iter().sum();
            let mut data = pattern(n as u8 + 10, len);
            let write_bufs = split(&mut data, sizes);
            let results = run(
                &mut *q,
                &[Request::Write {
                    offset,
                    bufs: &write_bufs,
                }],
            );
            assert_eq!(ok(&results[0]), len as u64);
            expected[offset as usize..offset as usize + len].copy_from_slice(&data);

            // Read back through a different split.
            let mut back = vec![0u8; len];
            let read_sizes = [len / 3, len - len / 3];
            let read_bufs = split(&mut back, &read_sizes);
            let results = run(
                &mut *q,
                &[Request::Read {
                    offset,
                    bufs: &read_bufs,
                }],
            );
            assert_eq!(ok(&results[0]), len as u64);
            assert!(
                back == data,
                "{engine}: read back differs at offset {offset}"
            );
        }
        assert!(
            fs::read(&path).expect("read the file") == expected,
            "{engine}: file contents"
        );
    }
}

#[test]
fn flush_completes_and_data_is_in_the_file() {
    let dir = TempDir::new("flush");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, None);
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        let mut data = pattern(3, 8192);
        let bufs = split(&mut data, &[8192]);
        let results = run(
            &mut *q,
            &[Request::Write {
                offset: 4096,
                bufs: &bufs,
            }],
        );
        ok(&results[0]);
        let results = run(&mut *q, &[Request::Flush]);
        assert_eq!(ok(&results[0]), 0);
        let mut on_disk = vec![0u8; 8192];
        File::open(&path)
            .expect("open")
            .read_exact_at(&mut on_disk, 4096)
            .expect("read");
        assert!(on_disk == data);
    }
}

#[test]
fn discard_punches_a_hole_that_reads_as_zeros() {
    let dir = TempDir::new("discard");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, Some(5));
        assert_eq!(next_hole(&path, 0), MIB, "fully allocated at first");
        let before = blocks(&path);
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        let results = run(
            &mut *q,
            &[Request::Discard {
                offset: 256 * 1024,
                len: 256 * 1024,
            }],
        );
        match &results[0] {
            Err(err) if err.is_unsupported() => {
                eprintln!("SKIPPED: this file system cannot punch holes: {err}");
                return;
            }
            result => assert_eq!(ok(result), 0),
        }
        assert_eq!(
            next_hole(&path, 0),
            256 * 1024,
            "{engine}: a hole where discarded"
        );
        assert!(blocks(&path) < before, "{engine}: space freed");
        assert_eq!(fs::metadata(&path).expect("stat").len(), MIB, "size kept");

        let mut back = vec![0xffu8; 300 * 1024];
        let bufs = split(&mut back, &[300 * 1024]);
        run(
            &mut *q,
            &[Request::Read {
                offset: 240 * 1024,
                bufs: &bufs,
            }],
        );
        let original = pattern(5, MIB as usize);
        assert!(
            back[..16 * 1024] == original[240 * 1024..256 * 1024],
            "before the hole"
        );
        assert!(
            back[16 * 1024..272 * 1024].iter().all(|&b| b == 0),
            "the hole"
        );
        assert!(
            back[272 * 1024..] == original[512 * 1024..540 * 1024],
            "after the hole"
        );
    }
}

#[test]
fn write_zeroes_zeroes_with_and_without_unmap() {
    let dir = TempDir::new("zeroes");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, Some(6));
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        let before = blocks(&path);
        let results = run(
            &mut *q,
            &[
                Request::WriteZeroes {
                    offset: 1000,
                    len: 70_000,
                    unmap: false,
                },
                Request::WriteZeroes {
                    offset: 4096,
                    len: 0,
                    unmap: false,
                },
            ],
        );
        for result in &results {
            assert_eq!(ok(result), 0);
        }
        assert!(
            blocks(&path) >= before,
            "{engine}: without unmap the space stays allocated"
        );
        let results = run(
            &mut *q,
            &[Request::WriteZeroes {
                offset: 512 * 1024,
                len: 128 * 1024,
                unmap: true,
            }],
        );
        assert_eq!(ok(&results[0]), 0);
        let data = fs::read(&path).expect("read the file");
        let original = pattern(6, MIB as usize);
        assert_eq!(data.len() as u64, MIB, "size kept");
        assert!(data[..1000] == original[..1000]);
        assert!(
            data[1000..71_000].iter().all(|&b| b == 0),
            "{engine}: zeroed"
        );
        assert!(data[71_000..512 * 1024] == original[71_000..512 * 1024]);
        assert!(
            data[512 * 1024..640 * 1024].iter().all(|&b| b == 0),
            "{engine}: zeroed"
        );
        assert!(data[640 * 1024..] == original[640 * 1024..]);
    }
}

/// tmpfs has no FALLOC_FL_ZERO_RANGE: write-zeroes must still work (io_uring
/// hands it to its helper thread after the first refusal).
#[test]
fn write_zeroes_falls_back_where_zero_range_is_missing() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIPPED: no /dev/shm");
        return;
    }
    let path = shm.join(format!("vireo-disk-zeroes-{}.img", std::process::id()));
    for engine in ENGINES {
        fs::write(&path, pattern(11, 256 * 1024)).expect("write the file");
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        for round in 0..2 {
            let offset = round * 64 * 1024 + 100;
            let results = run(
                &mut *q,
                &[
                    Request::WriteZeroes {
                        offset,
                        len: 5000,
                        unmap: false,
                    },
                    Request::WriteZeroes {
                        offset: offset + 8192,
                        len: 8192,
                        unmap: true,
                    },
                ],
            );
            ok(&results[0]);
            ok(&results[1]);
            let data = fs::read(&path).expect("read back");
            let start = offset as usize;
            assert!(
                data[start..start + 5000].iter().all(|&b| b == 0),
                "{engine} round {round}"
            );
            assert!(data[start + 8192..start + 16_384].iter().all(|&b| b == 0));
            assert!(
                data[start + 5000..start + 8192]
                    == pattern(11, 256 * 1024)[start + 5000..start + 8192]
            );
        }
    }
    let _ = fs::remove_file(&path);
}

#[test]
fn read_only_disks_refuse_changes_and_still_read() {
    let dir = TempDir::new("read-only");
    let path = dir.file("ro.img", MIB, Some(7));
    for engine in ENGINES {
        let disk = open(
            &path,
            &RawOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        let mut data = vec![0u8; 4096];
        let bufs = split(&mut data, &[4096]);
        for request in [
            Request::Write {
                offset: 0,
                bufs: &bufs,
            },
            Request::Discard {
                offset: 0,
                len: 4096,
            },
            Request::WriteZeroes {
                offset: 0,
                len: 4096,
                unmap: true,
            },
        ] {
            let err = q.enqueue(1, request).expect_err("refused");
            assert!(matches!(err, RequestError::ReadOnly { .. }), "{err}");
            assert!(err.to_string().contains("ro.img"), "{err}");
            assert!(err.to_string().contains("read-only"), "{err}");
        }
        assert_eq!(q.in_flight(), 0, "refused requests are not queued");
        let results = run(
            &mut *q,
            &[
                Request::Read {
                    offset: 0,
                    bufs: &bufs,
                },
                Request::Flush,
            ],
        );
        ok(&results[0]);
        ok(&results[1]);
        assert!(data == pattern(7, 4096));
    }
    assert!(fs::read(&path).expect("read") == pattern(7, MIB as usize));
}

#[test]
fn requests_past_the_end_are_refused() {
    let dir = TempDir::new("range");
    let path = dir.file("small.img", 64 * 1024, None);
    for engine in ENGINES {
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        let mut data = vec![0u8; 1024];
        let bufs = split(&mut data, &[512, 512]);
        let refused = [
            Request::Read {
                offset: 64 * 1024 - 512,
                bufs: &bufs,
            },
            Request::Write {
                offset: 64 * 1024,
                bufs: &bufs,
            },
            Request::Read {
                offset: u64::MAX - 100,
                bufs: &bufs,
            },
            Request::Discard {
                offset: 60 * 1024,
                len: 8192,
            },
            Request::WriteZeroes {
                offset: u64::MAX,
                len: 1,
                unmap: false,
            },
        ];
        for request in refused {
            let err = q.enqueue(9, request).expect_err("out of range");
            assert!(
                matches!(err, RequestError::OutOfRange { size: 65_536, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("past the end of"), "{err}");
            assert!(err.to_string().contains("small.img"), "{err}");
        }
        let err = q
            .enqueue(
                9,
                Request::Read {
                    offset: 64 * 1024 - 512,
                    bufs: &bufs,
                },
            )
            .expect_err("out of range");
        assert_eq!(err.operation(), Operation::Read);
        assert_eq!(
            err.to_string(),
            format!(
                "read of 1024 bytes at offset 65024 goes past the end of {} (65536 bytes)",
                path.display()
            )
        );
        // The last bytes themselves are fine.
        let results = run(
            &mut *q,
            &[Request::Read {
                offset: 63 * 1024,
                bufs: &bufs,
            }],
        );
        assert_eq!(ok(&results[0]), 1024);
    }
}

#[test]
fn a_file_truncated_under_the_disk_gives_an_error_not_garbage() {
    let dir = TempDir::new("truncated");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), 64 * 1024, Some(8));
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(32 * 1024)
            .expect("truncate");
        let mut data = vec![0u8; 8192];
        let bufs = split(&mut data, &[8192]);
        let results = run(
            &mut *q,
            &[Request::Read {
                offset: 28 * 1024,
                bufs: &bufs,
            }],
        );
        match &results[0] {
            Err(RequestError::UnexpectedEof { done: 4096, .. }) => {}
            other => panic!("{engine}: expected an early end of file, got {other:?}"),
        }
    }
}

/// A buffer of `len` bytes whose address is `misalign` bytes past a 4096
/// boundary.
struct Aligned {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, misalign: usize) -> Self {
        let mem = vec![0u8; len + 8192];
        let start = (4096 - mem.as_ptr() as usize % 4096) % 4096 + misalign;
        Self { mem, start, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

#[test]
fn direct_io_with_aligned_and_unaligned_buffers() {
    let dir = TempDir::new("direct");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, Some(9));
        let options = RawOptions {
            direct: true,
            ..Default::default()
        };
        let disk = match RawDisk::open(&path, &options) {
            Ok(disk) => disk,
            Err(err @ OpenError::DirectUnsupported { .. }) => {
                eprintln!("SKIPPED: {err}");
                return;
            }
            Err(err) => panic!("open with O_DIRECT: {err}"),
        };
        let info = disk.info();
        assert!(info.direct);
        let block = info.logical_block_size as usize;
        assert!((512..=4096).contains(&block), "block size {block}");
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };

        for (misalign, sizes) in [
            (0, vec![4 * block, 2 * block]), // the kernel takes these as they are
            (1, vec![6 * block]),            // unaligned address: bounced
            (0, vec![block + 100, 5 * block - 100]), // unaligned lengths: bounced
        ] {
            let total: usize = sizes.iter().sum();
            let offset = (8 * block) as u64;
            let mut out = Aligned::new(total, misalign);
            out.bytes()
                .copy_from_slice(&pattern(misalign as u8 + 40, total));
            let bufs = split(out.bytes(), &sizes);
            let results = run(
                &mut *q,
                &[Request::Write {
                    offset,
                    bufs: &bufs,
                }],
            );
            assert_eq!(
                ok(&results[0]),
                total as u64,
                "{engine} write {sizes:?}+{misalign}"
            );

            let mut back = Aligned::new(total, misalign);
            let bufs = split(back.bytes(), &sizes);
            let results = run(
                &mut *q,
                &[Request::Read {
                    offset,
                    bufs: &bufs,
                }],
            );
            assert_eq!(
                ok(&results[0]),
                total as u64,
                "{engine} read {sizes:?}+{misalign}"
            );
            assert!(
                back.bytes() == out.bytes(),
                "{engine}: {sizes:?}+{misalign} round trip"
            );
            let mut on_disk = vec![0u8; total];
            File::open(&path)
                .expect("open")
                .read_exact_at(&mut on_disk, offset)
                .expect("read");
            assert!(
                on_disk == out.bytes(),
                "{engine}: {sizes:?}+{misalign} in the file"
            );
        }

        // Offsets and lengths must be whole blocks: a clear error.
        let mut buf = Aligned::new(block, 0);
        let bufs = split(buf.bytes(), &[block]);
        let err = q
            .enqueue(
                1,
                Request::Read {
                    offset: 100,
                    bufs: &bufs,
                },
            )
            .expect_err("unaligned offset");
        assert!(matches!(err, RequestError::Misaligned { .. }), "{err}");
        assert!(err.to_string().contains("direct I/O"), "{err}");
        let bufs = split(&mut buf.bytes()[..block - 1], &[block - 1]);
        let err = q
            .enqueue(
                1,
                Request::Write {
                    offset: 0,
                    bufs: &bufs,
                },
            )
            .expect_err("unaligned length");
        assert!(matches!(err, RequestError::Misaligned { .. }), "{err}");

        let results = run(
            &mut *q,
            &[
                Request::WriteZeroes {
                    offset: 0,
                    len: block as u64,
                    unmap: false,
                },
                Request::Flush,
            ],
        );
        ok(&results[0]);
        ok(&results[1]);
    }
}

#[test]
fn many_outstanding_requests_complete_in_any_order() {
    const BLOCK: usize = 4096;
    const COUNT: usize = 192;
    let dir = TempDir::new("many");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), (COUNT * BLOCK) as u64, None);
        let disk = open(&path, &RawOptions::default());
        // A depth far below the number of requests: the rest wait their turn.
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        let mut data: Vec<Vec<u8>> = (0..COUNT).map(|i| pattern(i as u8, BLOCK)).collect();
        let bufs: Vec<Vec<IoBuf>> = data
            .iter_mut()
            .map(|d| {
                let (a, b) = d.split_at_mut(BLOCK / 4);
                split_pair(a, b)
            })
            .collect();
        // Submit in a scattered order, in batches, reaping in between as an
        // event loop would.
        let mut done = Vec::new();
        for batch in (0..COUNT).collect::<Vec<_>>().chunks(50) {
            for &i in batch {
                let block = (i * 97) % COUNT;
                q.enqueue(
                    i as u64,
                    Request::Write {
                        offset: (block * BLOCK) as u64,
                        bufs: &bufs[i],
                    },
                )
                .expect("accepted");
            }
            q.submit().expect("submit");
            q.reap(&mut done).expect("reap");
        }
        done.extend(wait_all(&mut *q, COUNT - done.len()));
        let ids: HashSet<u64> = done.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), COUNT, "{engine}: every request completes once");
        for c in &done {
            assert_eq!(ok(&c.result), BLOCK as u64);
        }

        // Read them all back at once, into fresh buffers.
        let mut back = vec![vec![0u8; BLOCK]; COUNT];
        let read_bufs: Vec<Vec<IoBuf>> = back.iter_mut().map(|b| split(b, &[BLOCK])).collect();
        let requests: Vec<Request<'_>> = (0..COUNT)
            .map(|i| Request::Read {
                offset: (((i * 97) % COUNT) * BLOCK) as u64,
                bufs: &read_bufs[i],
            })
            .collect();
        for result in run(&mut *q, &requests) {
            ok(&result);
        }
        for i in 0..COUNT {
            assert!(back[i] == data[i], "{engine}: block of request {i}");
        }
    }
}

fn split_pair(a: &mut [u8], b: &mut [u8]) -> Vec<IoBuf> {
    let mut bufs = split(a, &[a.len()]);
    bufs.extend(split(b, &[b.len()]));
    bufs
}

#[test]
fn the_eventfd_is_quiet_until_completions_and_after_reaping() {
    let dir = TempDir::new("eventfd");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, None);
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 8) else {
            continue;
        };
        assert!(!poll(&*q, 0), "{engine}: nothing yet");
        q.enqueue(5, Request::Flush).expect("accepted");
        q.submit().expect("submit");
        let done = wait_all(&mut *q, 1);
        assert_eq!(done[0].id, 5);
        assert!(!poll(&*q, 0), "{engine}: quiet after reaping");
    }
}

#[test]
fn dropping_a_busy_queue_waits_for_the_kernel() {
    let dir = TempDir::new("drop");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, Some(2));
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 4) else {
            continue;
        };
        let mut mem = vec![0u8; 32 * 16 * 1024];
        let bufs: Vec<Vec<IoBuf>> = mem
            .chunks_mut(16 * 1024)
            .map(|c| split(c, &[c.len()]))
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            q.enqueue(
                i as u64,
                Request::Read {
                    offset: (i * 16 * 1024) as u64,
                    bufs: b,
                },
            )
            .expect("accepted");
        }
        q.submit().expect("submit");
        drop(q);
        // `mem` is ours again; nothing writes to it any more.
        mem.fill(0xaa);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            mem.iter().all(|&b| b == 0xaa),
            "{engine}: no write after drop"
        );
    }
}

#[test]
fn quiesce_waits_for_everything() {
    let dir = TempDir::new("quiesce");
    for engine in ENGINES {
        let path = dir.file(&format!("{engine:?}.img"), MIB, Some(4));
        let disk = open(&path, &RawOptions::default());
        let Some(mut q) = queue(&disk, engine, 4) else {
            continue;
        };
        let mut mem = vec![0u8; 16 * 8192];
        let bufs: Vec<Vec<IoBuf>> = mem.chunks_mut(8192).map(|c| split(c, &[c.len()])).collect();
        for (i, b) in bufs.iter().enumerate() {
            q.enqueue(
                i as u64,
                Request::Read {
                    offset: (i * 8192) as u64,
                    bufs: b,
                },
            )
            .expect("accepted");
        }
        let mut done = Vec::new();
        q.quiesce(&mut done).expect("quiesce");
        assert_eq!(done.len(), 16);
        assert_eq!(q.in_flight(), 0);
        assert!(mem == pattern(4, MIB as usize)[..16 * 8192]);
    }
}

#[test]
fn engine_selection() {
    let dir = TempDir::new("select");
    let path = dir.file("a.img", MIB, None);
    let disk = open(&path, &RawOptions::default());
    let pool = QueueConfig {
        engine: EngineKind::ThreadPool,
        ..Default::default()
    };
    assert_eq!(
        disk.open_queue(&pool).expect("pool").engine(),
        EngineKind::ThreadPool
    );

    let auto = disk.open_queue(&QueueConfig::default()).expect("auto");
    let uring = QueueConfig {
        engine: EngineKind::IoUring,
        ..Default::default()
    };
    match disk.open_queue(&uring) {
        Ok(_) => assert_eq!(auto.engine(), EngineKind::IoUring, "auto prefers io_uring"),
        Err(err) if err.is_uring_unavailable() => {
            assert_eq!(
                auto.engine(),
                EngineKind::ThreadPool,
                "auto falls back: {err}"
            )
        }
        Err(err) => panic!("io_uring: {err}"),
    }

    for bad in [
        QueueConfig {
            depth: 0,
            ..Default::default()
        },
        QueueConfig {
            depth: 100_000,
            ..Default::default()
        },
        QueueConfig {
            workers: 0,
            engine: EngineKind::ThreadPool,
            ..Default::default()
        },
    ] {
        let err = disk.open_queue(&bad).expect_err("invalid configuration");
        assert!(matches!(err, QueueError::InvalidConfig { .. }), "{err}");
        assert!(err.to_string().contains("a.img"), "{err}");
    }
}

#[test]
fn queues_of_one_disk_work_side_by_side() {
    let dir = TempDir::new("multiqueue");
    let path = dir.file("mq.img", MIB, None);
    let disk = open(&path, &RawOptions::default());
    std::thread::scope(|s| {
        for (n, engine) in [EngineKind::Auto, EngineKind::ThreadPool, EngineKind::Auto]
            .into_iter()
            .enumerate()
        {
            let disk = &disk;
            s.spawn(move || {
                let config = QueueConfig {
                    engine,
                    name: format!("mq{n}"),
                    ..Default::default()
                };
                let mut q = disk.open_queue(&config).expect("queue");
                let offset = n as u64 * 256 * 1024;
                let mut data = pattern(n as u8 + 50, 64 * 1024);
                let bufs = split(&mut data, &[64 * 1024]);
                ok(&run(
                    &mut *q,
                    &[Request::Write {
                        offset,
                        bufs: &bufs,
                    }],
                )[0]);
                let mut back = vec![0u8; 64 * 1024];
                let rbufs = split(&mut back, &[64 * 1024]);
                ok(&run(
                    &mut *q,
                    &[Request::Read {
                        offset,
                        bufs: &rbufs,
                    }],
                )[0]);
                assert!(back == data, "queue {n}");
            });
        }
    });
}
