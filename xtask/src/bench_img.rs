//! `bench img`: Vireo's image tools and library against QEMU's, on the same files in
//! the same run.
//!
//! The source: a qcow2 image of `--size` virtual bytes (64 KiB clusters) written through
//! the library: per MiB, 40% never written, 5% zero clusters, 5% zeros written as data,
//! 25% random bytes and 25% text-like bytes (compressible about 3x), with one 64 KiB
//! hole in 16 inside the data; and the same disk as a sparse raw file. Both are made
//! once and kept in `target/img-bench-cache/` (about 10 s at 4G), and read
//! from the page cache by every run.
//!
//! Rows, each the median of 3 rounds with the two sides alternating (the machine may be
//! shared):
//! - `convert`: `vireo img convert` against `qemu-img convert`, qcow2 -> raw, raw ->
//!   qcow2, qcow2 -> qcow2 compressed, both with `-t writeback` (the output flushed at
//!   the end: qemu-img's default for convert is `unsafe`, which never flushes, while
//!   Vireo's flushes), otherwise each tool's defaults, `sync` before each run. Wall
//!   time, and MB/s of virtual disk (size / time). The first round's two outputs are
//!   compared with `qemu-img compare`: a row whose outputs differ says so instead of a
//!   ratio.
//! - `4k randread` / `4k randwrite`, queue depth 1, on the source qcow2 (writes on
//!   fresh copies of it): the library (`image::open`, `read_at` / `write_at` in a loop
//!   for `--secs`) against `qemu-img bench -d 1 -s 4096` for the same number of
//!   operations at the same offsets, with QEMU's default cache mode (writeback: the
//!   page cache, as the library uses it) and the faster of aio=threads and io_uring.
//!   The offsets are not random: qemu-img bench has only a fixed stride (`-S`), so
//!   both sides step by about 0.382 of the disk (prime to its block count) modulo the
//!   size, which visits every 4 KiB block once, consecutive operations far apart
//!   (about half land on unallocated clusters: reads of zeros, writes that allocate).
//!   qemu-img bench was chosen over a qemu-io script of random `read`/`write`
//!   commands because qemu-io's per-command parsing and prompt cost more than the I/O
//!   (about 36k IOPS against qemu-img bench's 150-300k on the same reads), which
//!   would measure qemu-io rather than QEMU's qcow2 driver. Each side times its loop
//!   only (not start-up, open, or the flush at close).
//!
//! The library side must be measured optimized: from a debug build (what `cargo
//! xtask` runs), this job builds the release xtask and runs itself from there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vireo_disk::image::{self, CreateOptions, Image, ImageOptions, Qcow2};

use crate::bench::which;
use crate::bench_blk::parse_size;
use crate::bench_vm::{cell, ratio, Scratch};
use crate::{cargo, workspace_root};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 << 10;
/// Bumped when the source's recipe changes, so an old cached source is not reused.
const SOURCE_VERSION: u32 = 1;
/// Set in the release child so that it does not rebuild and re-run itself.
const CHILD_ENV: &str = "VIREO_BENCH_IMG_CHILD";

const USAGE: &str = "usage: cargo xtask bench img [--size SIZE] [--secs N] [--tests LIST]\n  \
     --size SIZE   virtual size of the source image, e.g. 1G or 4G (default 4G)\n  \
     --secs N      seconds of each IOPS workload on the library side (default 5)\n  \
     --tests LIST  some of convert-raw,convert-qcow2,convert-compressed,randread,randwrite";

const TESTS: [&str; 5] = [
    "convert-raw",
    "convert-qcow2",
    "convert-compressed",
    "randread",
    "randwrite",
];

struct Options {
    size: u64,
    secs: u64,
    tests: Vec<String>,
}

fn parse_args(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        size: 4 << 30,
        secs: 5,
        tests: TESTS.iter().map(|t| t.to_string()).collect(),
    };
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .with_context(|| format!("{} needs a value\n{USAGE}", args[i]))
        };
        match args[i].as_str() {
            "--size" => o.size = parse_size(value()?).context("--size")?,
            "--secs" => o.secs = value()?.parse().context("--secs: expected seconds")?,
            "--tests" => o.tests = value()?.split(',').map(str::to_string).collect(),
            other => bail!("unexpected argument '{other}'\n{USAGE}"),
        }
        i += 2;
    }
    if !(1..=600).contains(&o.secs) {
        bail!("--secs {}: expected 1 to 600", o.secs);
    }
    if o.size < 64 * MIB || !o.size.is_multiple_of(MIB) {
        bail!("--size: expected a whole number of MiB, at least 64M");
    }
    for t in &o.tests {
        if !TESTS.contains(&t.as_str()) {
            bail!("--tests: unknown workload '{t}'\n{USAGE}");
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    if cfg!(debug_assertions) && std::env::var_os(CHILD_ENV).is_none() {
        cargo(&["build", "--release", "--quiet", "-p", "xtask"])?;
        let exe = workspace_root().join("target/release/xtask");
        let status = Command::new(&exe)
            .args(["bench", "img"])
            .args(args)
            .env(CHILD_ENV, "1")
            .status()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !status.success() {
            bail!("{} bench img failed ({status})", exe.display());
        }
        return Ok(());
    }
    let want = |t: &str| o.tests.iter().any(|x| x == t);
    let qemu_img = which("qemu-img");
    let vireo = build_cli();

    let cache = workspace_root().join("target/img-bench-cache");
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let name = format!("src-v{SOURCE_VERSION}-{}M", o.size / MIB);
    let src = cache.join(format!("{name}.qcow2"));
    let src_raw = cache.join(format!("{name}.raw"));
    let mix = ensure_source(&src, &src_raw, o.size)?;
    let scratch = Scratch::new("bench-img-")?;

    println!(
        "source: {} (qcow2, {} MiB virtual, 64 KiB clusters, {} MiB of data: {mix}) and \
         the same disk as a sparse raw file, both in the page cache",
        src.display(),
        o.size / MIB,
        allocated(&src) / MIB,
    );
    println!(
        "convert: -t writeback, MB/s of virtual disk; IOPS: queue depth 1, strided \
         offsets, the library in-process against qemu-img bench (cache=writeback)"
    );

    let mut rows = Vec::new();
    let convert_cases = [
        (
            "convert-raw",
            "convert qcow2 -> raw",
            &src,
            "qcow2",
            "raw",
            false,
        ),
        (
            "convert-qcow2",
            "convert raw -> qcow2",
            &src_raw,
            "raw",
            "qcow2",
            false,
        ),
        (
            "convert-compressed",
            "convert qcow2 -> qcow2 -c",
            &src,
            "qcow2",
            "qcow2",
            true,
        ),
    ];
    for (id, label, input, from, to, compress) in convert_cases {
        if want(id) {
            let case = ConvertCase {
                label,
                input,
                from,
                to,
                compress,
                size: o.size,
            };
            rows.push(convert_row(
                &case,
                qemu_img.as_deref(),
                vireo.as_ref(),
                &scratch,
            ));
        }
    }
    for write in [false, true] {
        if want(if write { "randwrite" } else { "randread" }) {
            rows.push(iops_row(&src, write, &o, qemu_img.as_deref(), &scratch));
        }
    }

    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>11}  detail",
        "workload", "QEMU", "Vireo", "Vireo/QEMU"
    );
    for r in &rows {
        let decimals = if r.unit == "IOPS" { 0 } else { 1 };
        let vs = match &r.mismatch {
            Some(_) => "DIFFERENT".to_string(),
            None => ratio(
                r.vireo.as_ref().ok().copied(),
                r.qemu.as_ref().ok().copied(),
            ),
        };
        println!(
            "{:<34} {:>10} {:>10} {:>11}  {}",
            format!("{} ({})", r.label, r.unit),
            cell(r.qemu.as_ref().ok().copied(), decimals),
            cell(r.vireo.as_ref().ok().copied(), decimals),
            vs,
            r.detail
        );
    }
    for r in &rows {
        if let Err(why) = &r.qemu {
            println!("{} QEMU: n/a: {why}", r.label);
        }
        if let Err(why) = &r.vireo {
            println!("{} Vireo: n/a: {why}", r.label);
        }
        if let Some(why) = &r.mismatch {
            println!("{}: the outputs differ: {why}", r.label);
        }
    }
    Ok(())
}

/// One line of the table.
struct Row {
    label: String,
    unit: &'static str,
    qemu: Result<f64, String>,
    vireo: Result<f64, String>,
    detail: String,
    /// The two sides' outputs differ (convert): why.
    mismatch: Option<String>,
}

/// Builds `vireo` (the CLI); its absence only empties the convert rows' Vireo column.
fn build_cli() -> Result<PathBuf, String> {
    cargo(&["build", "--release", "--quiet", "-p", "vireo-cli"])
        .map_err(|e| format!("building vireo-cli failed: {e:#}"))?;
    Ok(workspace_root().join("target/release/vireo"))
}

// ---- the source image -------------------------------------------------------------

/// A xorshift generator: the same sequence on both sides of a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            word.copy_from_slice(&x[..word.len()]);
        }
    }
}

/// Text-like bytes: words from a small vocabulary, compressible about 3x.
fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    const WORDS: [&str; 16] = [
        "the ",
        "cluster ",
        "refcount ",
        "table ",
        "of ",
        "guest ",
        "virtual ",
        "disk ",
        "image ",
        "offset ",
        "allocated ",
        "and ",
        "backing ",
        "file ",
        "write\n",
        "read ",
    ];
    let mut at = 0;
    while at < buf.len() {
        let r = rng.next();
        let word = WORDS[(r & 15) as usize].as_bytes();
        let n = word.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&word[..n]);
        at += n;
        // A number now and then, as logs and configuration files have.
        if r & 0x700 == 0 && at + 8 <= buf.len() {
            let digits = format!("{:07} ", (r >> 20) % 10_000_000);
            buf[at..at + 8].copy_from_slice(digits.as_bytes());
            at += 8;
        }
    }
}

/// Makes the source images if the cache lacks them; returns a description of the mix.
fn ensure_source(qcow2: &Path, raw: &Path, size: u64) -> anyhow::Result<String> {
    let mix = "40% unallocated, 5% zero clusters, 5% written zeros, 25% random, 25% text";
    if qcow2.exists() && raw.exists() {
        return Ok(mix.into());
    }
    eprintln!(
        "writing the source image {} (once; kept for later runs) ...",
        qcow2.display()
    );
    let start = Instant::now();
    let partial = qcow2.with_extension("qcow2.partial");
    Qcow2::create(
        &partial,
        &CreateOptions {
            size,
            cluster_size: CLUSTER,
            ..Default::default()
        },
    )
    .with_context(|| format!("creating {}", partial.display()))?;
    let image = image::open(&partial, &ImageOptions::default())
        .with_context(|| format!("opening {}", partial.display()))?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; MIB as usize];
    let zeros = vec![0u8; MIB as usize];
    for chunk in 0..size / MIB {
        let at = chunk * MIB;
        let kind = rng.next() % 20;
        match kind {
            0..=7 => continue,
            8 => image.write_zeroes(at, MIB, false)?,
            9 => image.write_at(&zeros, at)?,
            _ => {
                if kind < 15 {
                    rng.fill(&mut buf);
                } else {
                    fill_text(&mut rng, &mut buf);
                }
                // One 64 KiB cluster in 16 left out.
                let hole = (rng.next() % 16) * CLUSTER;
                if hole > 0 {
                    image.write_at(&buf[..hole as usize], at)?;
                }
                let after = hole + CLUSTER;
                if after < MIB {
                    image.write_at(&buf[after as usize..], at + after)?;
                }
            }
        }
    }
    image.flush()?;

    // The raw twin: data chunks only, the rest left as holes.
    let raw_partial = raw.with_extension("raw.partial");
    let file = std::fs::File::create(&raw_partial)
        .with_context(|| format!("creating {}", raw_partial.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {}", raw_partial.display()))?;
    for chunk in 0..size / MIB {
        image.read_at(&mut buf, chunk * MIB)?;
        if buf.iter().any(|&b| b != 0) {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&buf, chunk * MIB)?;
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", raw_partial.display()))?;
    drop(image);
    std::fs::rename(&partial, qcow2)
        .with_context(|| format!("renaming {} to {}", partial.display(), qcow2.display()))?;
    std::fs::rename(&raw_partial, raw)
        .with_context(|| format!("renaming {} to {}", raw_partial.display(), raw.display()))?;
    eprintln!("   made in {:.1} s", start.elapsed().as_secs_f64());
    Ok(mix.into())
}

/// Bytes the file occupies on disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

// ---- convert ----------------------------------------------------------------------

struct ConvertCase<'a> {
    label: &'a str,
    input: &'a Path,
    from: &'a str,
    to: &'a str,
    compress: bool,
    size: u64,
}

/// One convert run: wall seconds, or why it failed.
fn run_convert(mut cmd: Command, what: &str) -> Result<f64, String> {
    eprintln!("{what} ...");
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(secs)
}

fn convert_row(
    case: &ConvertCase,
    qemu_img: Option<&Path>,
    vireo: Result<&PathBuf, &String>,
    scratch: &Scratch,
) -> Row {
    let qemu_out = scratch.path(&format!("qemu.{}", case.to));
    let vireo_out = scratch.path(&format!("vireo.{}", case.to));
    let qemu_cmd = || {
        let q = qemu_img.ok_or("qemu-img not found (apt-get install qemu-utils)")?;
        let mut cmd = Command::new(q);
        cmd.args(["convert", "-t", "writeback", "-f", case.from, "-O", case.to]);
        if case.compress {
            cmd.arg("-c");
        }
        cmd.arg(case.input).arg(&qemu_out);
        Ok::<_, String>(cmd)
    };
    let vireo_cmd = || {
        let mut cmd = Command::new(vireo.map_err(Clone::clone)?);
        cmd.args(["img", "convert", "-t", "writeback"])
            .args(["-f", case.from, "-O", case.to]);
        if case.compress {
            cmd.arg("-c");
        }
        cmd.arg(case.input).arg(&vireo_out);
        Ok::<_, String>(cmd)
    };
    // Rounds in alternating order; each run starts with nothing dirty in the page
    // cache (`sync`), so that one side's flush does not wait for the other's data.
    let mut qemu_secs = Vec::new();
    let mut vireo_secs = Vec::new();
    let mut qemu_err = None;
    let mut vireo_err = None;
    let mut sizes = (None, None);
    let mut mismatch = None;
    for round in 0..ROUNDS {
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let (cmd, name, secs, err) = if side == 0 {
                (qemu_cmd(), "qemu-img", &mut qemu_secs, &mut qemu_err)
            } else {
                (vireo_cmd(), "vireo img", &mut vireo_secs, &mut vireo_err)
            };
            let _ = Command::new("sync").status();
            let what = format!("{name} {} (round {}/{ROUNDS})", case.label, round + 1);
            match cmd.and_then(|cmd| run_convert(cmd, &what)) {
                Ok(s) => secs.push(s),
                Err(e) => *err = Some(e),
            }
        }
        if round == 0 {
            let size = |ok: bool, out: &Path| ok.then(|| allocated(out) / MIB);
            sizes = (
                size(!qemu_secs.is_empty(), &qemu_out),
                size(!vireo_secs.is_empty(), &vireo_out),
            );
            if let (false, false, Some(q)) = (qemu_secs.is_empty(), vireo_secs.is_empty(), qemu_img)
            {
                mismatch = compare(q, &qemu_out, &vireo_out, case.to).err();
            }
        }
        let _ = std::fs::remove_file(&qemu_out);
        let _ = std::fs::remove_file(&vireo_out);
    }
    let column = |secs: Vec<f64>, err: Option<String>| match (secs.is_empty(), err) {
        (false, _) => Ok(median(secs)),
        (true, Some(e)) => Err(e),
        (true, None) => Err("no run".to_string()),
    };
    let qemu = column(qemu_secs, qemu_err);
    let vireo = column(vireo_secs, vireo_err);
    let mut detail = format!(
        "median of {ROUNDS}: {} s vs {} s",
        cell(qemu.as_ref().ok().copied(), 2),
        cell(vireo.as_ref().ok().copied(), 2)
    );
    if case.compress {
        let mib = |v: Option<u64>| v.map_or("n/a".to_string(), |v| format!("{v} MiB"));
        detail.push_str(&format!("; output {} vs {}", mib(sizes.0), mib(sizes.1)));
    }
    let mb_s = |secs: Result<f64, String>| secs.map(|s| case.size as f64 / s / 1e6);
    Row {
        label: case.label.to_string(),
        unit: "MB/s",
        qemu: mb_s(qemu),
        vireo: mb_s(vireo),
        detail,
        mismatch,
    }
}

/// `qemu-img compare`: Ok if both images hold the same disk.
fn compare(qemu_img: &Path, a: &Path, b: &Path, format: &str) -> Result<(), String> {
    let out = Command::new(qemu_img)
        .args(["compare", "-f", format, "-F", format])
        .arg(a)
        .arg(b)
        .output()
        .map_err(|e| format!("cannot run qemu-img compare: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

// ---- 4 KiB IOPS -------------------------------------------------------------------

/// The stride of the IOPS workloads: about 0.382 of the disk (the golden ratio's
/// complement; a step of 0.618 backwards), at most 2 GiB - 1 (qemu-img bench's limit),
/// in 4 KiB blocks prime to the number of blocks, so that `i * stride mod size` visits
/// every block once before repeating and consecutive operations land far apart.
fn stride(size: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let blocks = size / 4096;
    let mut p = ((blocks as f64 * 0.382) as u64).min((1 << 31) / 4096 - 1) | 1;
    while gcd(p, blocks) != 1 {
        p += 2;
    }
    p * 4096
}

const WRITE_BYTE: u8 = 0xa5;

/// The library side: as many operations as fit in `secs`, at the offsets qemu-img
/// bench uses (0, then `stride` on, modulo the size). Returns (operations, seconds);
/// the flush after writes is not timed (qemu-img bench's is not either).
fn library_run(path: &Path, write: bool, secs: u64) -> anyhow::Result<(u64, f64)> {
    let image: Arc<dyn Image> = image::open(
        path,
        &ImageOptions {
            read_only: !write,
            ..Default::default()
        },
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let size = image.size();
    let step = stride(size);
    let mut buf = vec![WRITE_BYTE; 4096];
    let budget = Duration::from_secs(secs);
    let start = Instant::now();
    let mut ops = 0u64;
    let mut offset = 0;
    loop {
        if write {
            image.write_at(&buf, offset)?;
        } else {
            image.read_at(&mut buf, offset)?;
        }
        ops += 1;
        offset = (offset + step) % size;
        if ops.is_multiple_of(256) && start.elapsed() >= budget {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if write {
        image.flush()?;
    }
    Ok((ops, secs))
}

/// One `qemu-img bench` of `ops` operations: its own "Run completed in X seconds".
fn qemu_bench_run(
    qemu_img: &Path,
    path: &Path,
    write: bool,
    ops: u64,
    size: u64,
    aio: &str,
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(qemu_img);
    cmd.args(["bench", "-f", "qcow2", "-d", "1", "-s", "4096", "-i", aio])
        .arg(format!("-c{ops}"))
        .arg(format!("-S{}", stride(size)));
    if write {
        cmd.args(["-w", &format!("--pattern={WRITE_BYTE}")]);
    }
    let out = cmd
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {}", qemu_img.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "qemu-img bench failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|l| l.strip_suffix(" seconds."))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no 'Run completed in X seconds.' in: {}", text.trim()))
}

/// Rounds of each workload, the two sides alternating; the row shows medians (the
/// machine may be shared: one round can catch a neighbour's build).
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn iops_row(
    src: &Path,
    write: bool,
    o: &Options,
    qemu_img: Option<&Path>,
    scratch: &Scratch,
) -> Row {
    let label = if write {
        "4k randwrite qd1"
    } else {
        "4k randread qd1"
    };
    // Writes work on copies of the source, one per run, so that every run starts alike.
    let fresh = |name: &str| -> anyhow::Result<PathBuf> {
        if !write {
            return Ok(src.to_path_buf());
        }
        let path = scratch.path(name);
        std::fs::copy(src, &path)
            .with_context(|| format!("copying the source to {}", path.display()))?;
        Ok(path)
    };
    // (operations, seconds) of one run.
    let run_on_copy = |name: &str, f: &dyn Fn(&Path) -> anyhow::Result<(u64, f64)>| {
        let path = fresh(name)?;
        let r = f(&path);
        if write {
            let _ = std::fs::remove_file(&path);
        }
        r
    };
    let mut lib_iops = Vec::new();
    let mut qemu_iops = Vec::new();
    let mut ops_seen = Vec::new();
    let mut lib_err = None;
    let mut qemu_err = qemu_img
        .is_none()
        .then(|| "qemu-img not found (apt-get install qemu-utils)".to_string());
    // QEMU's aio mode: the faster of the two that suit a buffered file, chosen in the
    // first round.
    let mut aio_modes = vec!["threads", "io_uring"];
    for round in 1..=ROUNDS {
        eprintln!(
            "library: {label} for {} s (round {round}/{ROUNDS}) ...",
            o.secs
        );
        let mut ops = 0;
        match run_on_copy("lib.qcow2", &|p| library_run(p, write, o.secs)) {
            Ok((n, secs)) => {
                ops = n;
                lib_iops.push(n as f64 / secs);
            }
            Err(e) => lib_err = Some(format!("{e:#}")),
        }
        let Some(q) = qemu_img.filter(|_| ops > 0) else {
            continue;
        };
        ops_seen.push(ops);
        let mut best: Option<(f64, &str)> = None;
        for &aio in &aio_modes {
            eprintln!("qemu-img bench: {label}, {ops} operations, aio={aio} ...");
            match run_on_copy("qemu.qcow2", &|p| {
                qemu_bench_run(q, p, write, ops, o.size, aio).map(|secs| (ops, secs))
            })
            .map(|(n, secs)| n as f64 / secs)
            {
                Ok(iops) if best.is_none_or(|(b, _)| iops > b) => best = Some((iops, aio)),
                Ok(_) => {}
                Err(e) => qemu_err = Some(format!("{e:#}")),
            }
        }
        if let Some((iops, aio)) = best {
            qemu_iops.push(iops);
            aio_modes = vec![aio];
        }
    }
    let detail = format!(
        "median of {ROUNDS}; ~{} operations a round{}",
        ops_seen.iter().max().copied().unwrap_or(0),
        match aio_modes.as_slice() {
            [aio] => format!("; QEMU aio={aio} (the faster)"),
            _ => String::new(),
        }
    );
    let column = |v: Vec<f64>, err: Option<String>| match (v.is_empty(), err) {
        (false, _) => Ok(median(v)),
        (true, Some(e)) => Err(e),
        (true, None) => Err("no run".to_string()),
    };
    Row {
        label: label.to_string(),
        unit: "IOPS",
        qemu: column(qemu_iops, qemu_err),
        vireo: column(lib_iops, lib_err),
        detail,
        mismatch: None,
    }
}
