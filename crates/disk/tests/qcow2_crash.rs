//! Crash safety of qcow2 writes: `examples/qcow2_writer.rs` runs a seeded
//! random workload (writes, write-zeroes, discards, flushes and, in some
//! rounds, internal snapshots created and deleted) on an overlay and is
//! killed with SIGKILL at random moments (before it opened the image, a few
//! milliseconds in, right after a flush, in the middle of the run). After
//! every kill:
//! - `qemu-img check` finds no corruption (leaked clusters are allowed:
//!   exit 0 or 3), and Vireo's own check finds the same leaks;
//! - Vireo and qemu read the same disk, in which every byte holds what it
//!   held at the last flush the writer reported, or a value a later
//!   operation wrote there (writes after the last flush may or may not have
//!   landed);
//! - every internal snapshot in the image (taken before the run, or by the
//!   writer) holds the contents of its moment;
//! - Vireo can write on: a further workload, closed cleanly, leaves an
//!   image that `qemu-img check` accepts and qemu reads as written, and
//!   Vireo's leak repair then leaves it clean.
//!
//! The test builds the writer with cargo (a no-op when it is up to date).
//! Replay a failure with `VIREO_QCOW2_SEED=<seed>` (the kill timing still
//! varies from run to run; the printed plan says what it was).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::workload::{self, generate, Op, Params, Rng};
use common::{
    assert_both_checks_clean, assert_same, display_chain, have_qemu, open, pattern, qemu_check,
    qemu_img, qemu_io, qemu_leaks, qemu_raw, read_all, s, seed, vireo_check, Model, TempDir, KIB,
    MIB,
};
use vireo_disk::image::qcow2::RepairMode;
use vireo_disk::image::{CreateOptions, Qcow2};

/// The writer example, built for the profile this test was built with
/// (cargo makes that a no-op when it is up to date; without cargo, as when
/// the tests run from an archive, the example already built is used).
fn writer() -> &'static Path {
    static WRITER: OnceLock<PathBuf> = OnceLock::new();
    WRITER.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        // <target>/<profile>/deps/qcow2_crash-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from <target>/<profile>/deps");
        let target = profile_dir.parent().expect("a target directory");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a profile directory");
        let path = profile_dir.join("examples").join("qcow2_writer");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "vireo-disk",
                "--example",
                "qcow2_writer",
            ])
            .arg("--target-dir")
            .arg(target);
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        match build.status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!(
                "WARNING: building examples/qcow2_writer failed ({status}); using {} as it is",
                path.display()
            ),
            Err(e) => eprintln!(
                "WARNING: cannot run cargo ({e}); using {} as it is",
                path.display()
            ),
        }
        assert!(
            path.exists(),
            "the writer is not at {} (cargo build -p vireo-disk --example qcow2_writer)",
            path.display()
        );
        path
    })
}

/// When the writer dies.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Right after it starts (usually before it opened the image).
    AtOnce,
    /// This long after it starts.
    After(Duration),
    /// This long after it reported this many flushes.
    AfterFlushes(usize, Duration),
}

#[derive(Clone, Copy, Debug)]
enum Base {
    Raw,
    Qcow2,
}

struct Round {
    name: &'static str,
    opts: CreateOptions,
    base: Base,
    /// qemu-img creates the overlay (else Vireo).
    qemu_creates: bool,
    /// The writer takes an internal snapshot every this many flushes (0:
    /// none), deleting older ones: killed in the middle of that too.
    snapshot_every: usize,
    /// Fill the overlay and take an internal snapshot (qemu-img) first, so
    /// the writer copies shared tables and clusters.
    snapshot_first: bool,
    ops: usize,
    flush_every: usize,
    max_write: u64,
    kill: Kill,
}

/// What one killed run left behind.
struct Outcome {
    /// The first this many operations are durable.
    flushed: usize,
    done: bool,
    lines: Vec<String>,
}

fn run_writer(path: &Path, seed: u64, round: &Round) -> Outcome {
    let mut child = Command::new(writer())
        .arg(path)
        .arg(seed.to_string())
        .arg(round.ops.to_string())
        .arg(round.flush_every.to_string())
        .arg(round.max_write.to_string())
        .arg(round.snapshot_every.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the writer");
    let started = Instant::now();
    let stdout = child.stdout.take().expect("the writer's stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    match round.kill {
        Kill::AtOnce => {}
        Kill::After(d) => {
            // Stop waiting early if the writer finishes.
            let deadline = started + d;
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if line == "done" || Instant::now() >= deadline {
                    break;
                }
            }
        }
        Kill::AfterFlushes(n, d) => {
            let mut seen = 0;
            while seen < n {
                match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(l) if l.starts_with("flushed") => seen += 1,
                    Ok(l) if l == "done" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            std::thread::sleep(d);
        }
    }
    // SIGKILL: nothing of the writer runs after this, as in a crash of the
    // VMM (the host's page cache keeps what it had written).
    let _ = child.kill();
    let status = child.wait().expect("reap the writer");
    let lines = reader.join().expect("the reader thread");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let done = lines.iter().any(|l| l == "done");
    // Killed, it says nothing; if it exited, it finished and said done.
    assert!(stderr.is_empty(), "the writer failed: {stderr}");
    if let Some(code) = status.code() {
        assert!(code == 0 && done, "the writer exited with {code}: {stderr}");
    }
    let flushed = lines
        .iter()
        .filter_map(|l| l.strip_prefix("flushed "))
        .map(|n| n.parse::<usize>().expect("a flush count"))
        .max()
        .unwrap_or(0);
    Outcome {
        flushed,
        done,
        lines,
    }
}

/// Every byte of `got` is what `flushed` holds, or a value one of
/// `pending` (the operations after the last reported flush, which may or
/// may not have landed, wholly or partly) writes there.
fn check_crash_state(got: &[u8], flushed: &Model, pending: &[Op]) -> Result<(), String> {
    // The values each pending operation leaves, by range.
    let mut alts: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    for op in pending {
        match *op {
            Op::Write { offset, len, tag } => {
                alts.push((offset, offset + len, workload::write_data(tag, offset, len)));
            }
            Op::Zeroes { offset, len, .. } => {
                alts.push((offset, offset + len, vec![0; len as usize]))
            }
            Op::Discard { offset, len } => {
                if let Some((a, b)) = flushed.discarded(offset, len) {
                    let values = (a..b)
                        .map(|p| flushed.value_after(op, p).expect("inside the discard"))
                        .collect();
                    alts.push((a, b, values));
                }
            }
            Op::Flush => {}
        }
    }
    let mut bad = Vec::new();
    for (i, (&g, &f)) in got.iter().zip(&flushed.data).enumerate() {
        if g == f {
            continue;
        }
        let pos = i as u64;
        let explained = alts
            .iter()
            .any(|(a, b, v)| (*a..*b).contains(&pos) && v[(pos - a) as usize] == g);
        if !explained {
            bad.push(pos);
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let first = bad[0];
    let covering: Vec<&Op> = pending
        .iter()
        .filter(|op| {
            let (a, b) = op.range();
            (a..b).contains(&first)
        })
        .collect();
    Err(format!(
        "{} bytes hold neither their value at the last flush nor one written after it; \
         the first at {first:#x}: got {:#04x}, at the flush {:#04x}; pending operations over it: {covering:?}; \
         the last at {:#x}",
        bad.len(),
        got[first as usize],
        flushed.data[first as usize],
        bad[bad.len() - 1]
    ))
}

/// The snapshot tags `qemu-img snapshot -l` lists.
fn snapshot_names(path: &Path) -> Vec<String> {
    qemu_img(["snapshot", "-l", s(path)])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let id = words.next()?;
            let tag = words.next()?;
            id.parse::<u64>().is_ok().then(|| tag.to_owned())
        })
        .collect()
}

/// Runs one round; returns its summary and whether the writer was killed
/// before it finished.
fn run_round(round: &Round, seed: u64) -> (String, bool) {
    let name = round.name;
    let dir = TempDir::new(name);
    let mut opts = round.opts.clone();
    let size = opts.size;
    let cs = opts.cluster_size;
    let base_size = size - size / 4;
    let below = match round.base {
        Base::Raw => {
            let data = pattern(seed, base_size);
            std::fs::write(dir.join("base.raw"), &data).expect("write the backing file");
            opts.backing_file = Some("base.raw".into());
            opts.backing_format = Some("raw".into());
            data
        }
        Base::Qcow2 => {
            let base = dir.join("base.qcow2");
            qemu_img([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=65536",
                s(&base),
                &base_size.to_string(),
            ]);
            qemu_io(
                &base,
                "qcow2",
                &[
                    format!("write -P 0x77 0 {}", base_size / 2),
                    format!("write -P 0x99 {} {}", base_size - 3 * MIB, MIB),
                ],
            );
            opts.backing_file = Some("base.qcow2".into());
            opts.backing_format = Some("qcow2".into());
            qemu_raw(&base)
        }
    };
    let path = dir.join("top.qcow2");
    if round.qemu_creates {
        let backing = opts.backing_file.as_deref().expect("a backing file");
        let fmt = opts.backing_format.as_deref().expect("a backing format");
        let o = format!(
            "compat={},cluster_size={},refcount_bits={},backing_file={backing},backing_fmt={fmt}",
            if opts.version == 2 { "0.10" } else { "1.1" },
            opts.cluster_size,
            opts.refcount_bits
        );
        qemu_img([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &o,
            s(&path),
            &size.to_string(),
        ]);
    } else {
        Qcow2::create(&path, &opts).expect("create the overlay");
    }
    let discard_uncovers = opts.version == 2;
    let mut params = Params::new(size, cs, 0);
    params.max_write = round.max_write;
    params.flush_every = round.flush_every;
    if round.snapshot_first {
        let image = open(&path, false);
        params.ops = 150;
        for op in generate(seed ^ 0x5ee, &params) {
            workload::run(&*image, &op).expect("fill the overlay");
        }
        drop(image);
        qemu_img(["snapshot", "-c", "before", s(&path)]);
    }
    let start = qemu_raw(&path);

    // The run, killed.
    let outcome = run_writer(&path, seed, round);
    params.ops = round.ops;
    let ops = generate(seed, &params);
    assert!(
        outcome.flushed <= ops.len(),
        "{name}: {:?}",
        outcome.lines.last()
    );
    let mut model = Model::new(size, cs, &below, discard_uncovers);
    model.data.clone_from(&start);
    for op in &ops[..outcome.flushed] {
        model.apply(op);
    }
    // What may have landed after the last flush: up to and including the
    // next flush (the writer may have died before reporting it).
    let rest = &ops[outcome.flushed..];
    let pending = match rest.iter().position(|op| *op == Op::Flush) {
        Some(i) => &rest[..=i],
        None => rest,
    };
    let summary = format!(
        "{name}: seed {seed:#x}, kill {:?}: {} of {} operations flushed{}",
        round.kill,
        outcome.flushed,
        ops.len(),
        if outcome.done { ", finished" } else { "" }
    );

    let (code, report) = qemu_check(&path);
    assert!(
        code == 0 || code == 3,
        "{summary}: qemu-img check exited {code} after the crash:\n{report}"
    );
    let leaked = qemu_leaks(&report);
    // Vireo's check agrees: no corruption, the same leaks.
    let ours = vireo_check(&path, RepairMode::None);
    assert!(
        ours.corruptions == 0 && ours.leaks == leaked,
        "{summary}: qemu-img check finds {leaked} leaks and no corruption, vireo's check {} leaks and {} corruptions: {:?}",
        ours.leaks,
        ours.corruptions,
        ours.messages
    );
    let got = {
        let image = open(&path, true);
        read_all(&*image, 8 * MIB)
    };
    assert_same(
        &format!("{summary}: vireo's and qemu's readings after the crash"),
        &got,
        &qemu_raw(&path),
    );
    if outcome.done {
        assert_same(
            &format!("{summary}: after a finished run"),
            &got,
            &model.data,
        );
    } else if let Err(why) = check_crash_state(&got, &model, pending) {
        panic!("{summary}: {why}");
    }
    // Every snapshot in the image is whole, with the contents of its moment,
    // whatever the crash interrupted (the writer's own may be there or not).
    let listed = snapshot_names(&path);
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    if round.snapshot_first {
        assert!(
            listed.iter().any(|n| n == "before"),
            "{summary}: the snapshot taken before the run is gone: {listed:?}"
        );
        expected.push(("before".into(), start.clone()));
    }
    let reached = outcome.flushed + pending.len();
    for (k, &n) in workload::snapshot_points(&ops, round.snapshot_every)
        .iter()
        .enumerate()
    {
        let tag = format!("s{k}");
        if !listed.contains(&tag) {
            continue;
        }
        assert!(
            n <= reached,
            "{summary}: snapshot {tag} of operation {n} exists, but the writer never got there"
        );
        let mut at = Model::new(size, cs, &below, discard_uncovers);
        at.data.clone_from(&start);
        for op in &ops[..n] {
            at.apply(op);
        }
        expected.push((tag, at.data));
    }
    for (tag, contents) in &expected {
        let copy = dir.join("snapshot-check.qcow2");
        std::fs::copy(&path, &copy).expect("copy the image");
        qemu_img(["snapshot", "-a", tag, s(&copy)]);
        assert_same(
            &format!("{summary}: snapshot {tag}"),
            &qemu_raw(&copy),
            contents,
        );
        let _ = std::fs::remove_file(&copy);
    }

    // Vireo writes on, then closes cleanly.
    let mut model = Model::new(size, cs, &below, discard_uncovers);
    model.data = got;
    params.ops = 150;
    {
        let image = open(&path, false);
        for op in generate(workload::mix(seed), &params) {
            workload::run(&*image, &op).unwrap_or_else(|e| {
                panic!(
                    "{summary}: writing after the crash: {op:?}: {}",
                    display_chain(&e)
                )
            });
            model.apply(&op);
        }
    }
    let (code, report) = qemu_check(&path);
    assert!(
        code == 0 || code == 3,
        "{summary}: qemu-img check exited {code} after writing on:\n{report}"
    );
    assert_same(
        &format!("{summary}: qemu's reading after writing on"),
        &qemu_raw(&path),
        &model.data,
    );
    // `vireo img check -r leaks` gives the leaked clusters back.
    let repaired = vireo_check(&path, RepairMode::Leaks);
    assert!(
        repaired.corruptions == 0 && repaired.leaks == 0,
        "{summary}: after repairing leaks: {repaired:?}"
    );
    assert_both_checks_clean(&path, &format!("{summary}: leaks repaired"));
    assert_same(
        &format!("{summary}: qemu's reading after the repair"),
        &qemu_raw(&path),
        &model.data,
    );
    (
        format!(
            "{summary}, {leaked} clusters leaked, {} snapshots verified",
            expected.len()
        ),
        !outcome.done,
    )
}

#[test]
fn killed_writer_leaves_a_consistent_image() {
    let test = "killed_writer_leaves_a_consistent_image";
    if !have_qemu(test) {
        return;
    }
    let base_seed = seed(test, 0x5eed_c0de);
    writer();
    let mut rng = Rng::new(base_seed);
    let mut ms = |lo: u64, hi: u64| Duration::from_millis(rng.range(lo, hi));
    let v3 = |size: u64, cluster_size: u64, refcount_bits: u32| CreateOptions {
        size,
        cluster_size,
        refcount_bits,
        ..Default::default()
    };
    let v2 = |size: u64, cluster_size: u64| CreateOptions {
        size,
        cluster_size,
        version: 2,
        ..Default::default()
    };
    let rounds = [
        Round {
            name: "at-once",
            opts: v3(32 * MIB, 4096, 16),
            base: Base::Raw,
            qemu_creates: false,
            snapshot_first: false,
            ops: 600,
            flush_every: 20,
            max_write: MIB,
            snapshot_every: 0,
            kill: Kill::AtOnce,
        },
        Round {
            name: "very-early",
            opts: v3(32 * MIB, 4096, 16),
            base: Base::Raw,
            qemu_creates: false,
            snapshot_first: false,
            ops: 600,
            flush_every: 5,
            max_write: MIB,
            snapshot_every: 0,
            kill: Kill::After(ms(1, 15)),
        },
        Round {
            name: "first-flush",
            opts: v3(32 * MIB, 2048, 8),
            base: Base::Qcow2,
            qemu_creates: false,
            snapshot_first: false,
            ops: 600,
            flush_every: 10,
            max_write: MIB,
            snapshot_every: 0,
            kill: Kill::AfterFlushes(1, ms(0, 2)),
        },
        Round {
            name: "c512-flushes",
            opts: v3(32 * MIB, 512, 16),
            base: Base::Qcow2,
            qemu_creates: true,
            snapshot_first: false,
            ops: 2000,
            flush_every: 30,
            max_write: 512 * KIB,
            snapshot_every: 5,
            kill: Kill::AfterFlushes(20, ms(0, 3)),
        },
        Round {
            name: "v2-c512-timed",
            opts: v2(32 * MIB, 512),
            base: Base::Raw,
            qemu_creates: false,
            snapshot_first: false,
            ops: 2000,
            flush_every: 40,
            max_write: 512 * KIB,
            snapshot_every: 0,
            kill: Kill::After(ms(50, 400)),
        },
        Round {
            name: "c64k-rb64-snapshot",
            opts: v3(64 * MIB, 65536, 64),
            base: Base::Raw,
            qemu_creates: false,
            snapshot_first: true,
            ops: 2000,
            flush_every: 25,
            max_write: 2 * MIB,
            snapshot_every: 3,
            kill: Kill::AfterFlushes(10, ms(0, 5)),
        },
        Round {
            name: "c1k-rb1-timed",
            opts: v3(32 * MIB, 1024, 1),
            base: Base::Raw,
            qemu_creates: true,
            snapshot_first: false,
            ops: 2000,
            flush_every: 40,
            max_write: 512 * KIB,
            snapshot_every: 0,
            kill: Kill::After(ms(30, 300)),
        },
        Round {
            name: "c4k-snapshot-timed",
            opts: v3(32 * MIB, 4096, 16),
            base: Base::Qcow2,
            qemu_creates: false,
            snapshot_first: true,
            ops: 2000,
            flush_every: 40,
            max_write: MIB,
            snapshot_every: 4,
            kill: Kill::After(ms(20, 300)),
        },
        Round {
            name: "v2-c4k-snapshot-flushes",
            opts: v2(32 * MIB, 4096),
            base: Base::Qcow2,
            qemu_creates: false,
            snapshot_first: true,
            ops: 2000,
            flush_every: 20,
            max_write: MIB,
            snapshot_every: 2,
            kill: Kill::AfterFlushes(7, ms(0, 2)),
        },
        Round {
            name: "c16k-rb32-timed",
            opts: v3(64 * MIB, 16384, 32),
            base: Base::Raw,
            qemu_creates: false,
            snapshot_first: false,
            ops: 2000,
            flush_every: 50,
            max_write: 2 * MIB,
            snapshot_every: 0,
            kill: Kill::After(ms(10, 500)),
        },
    ];
    let seeds: Vec<u64> = (0..rounds.len() as u64)
        .map(|i| workload::mix(base_seed ^ i))
        .collect();
    // Two rounds at a time: the host has other work too, which only varies
    // the moments of the kills further.
    let work: Vec<_> = rounds.iter().zip(&seeds).collect();
    let results: Vec<Result<(String, bool), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks(work.len().div_ceil(2))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(round, &seed)| {
                            std::panic::catch_unwind(|| run_round(round, seed)).map_err(|e| {
                                e.downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_else(|| format!("{} panicked", round.name))
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("round threads catch their panics"))
            .collect()
    });
    let mut failures = Vec::new();
    let mut killed = 0;
    for r in results {
        match r {
            Ok((line, was_killed)) => {
                eprintln!("{line}");
                killed += usize::from(was_killed);
            }
            Err(why) => failures.push(why),
        }
    }
    // A round whose writer finished first tested no crash; most must not.
    assert!(
        killed * 2 >= rounds.len(),
        "only {killed} of {} writers were killed before they finished",
        rounds.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rounds failed:\n{}",
        failures.len(),
        rounds.len(),
        failures.join("\n")
    );
}
