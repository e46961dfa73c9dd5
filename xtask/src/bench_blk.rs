//! `bench blk`: virtio-blk throughput, Vireo against QEMU and against the host itself.
//!
//! One raw image (fully written once, so every block is allocated) in a scratch directory
//! under target/, on the build's file system. Six workloads: 4 KiB random read and write
//! at queue depth 1 and 32 (IOPS), 1 MiB sequential read and write at `--seq-qd` (MB/s).
//! They run as host fio (io_uring, O_DIRECT) on the image, then as the test guest's
//! `bench-blk` scenario (a polling CPL3 driver, no interrupts) on QEMU (microvm,
//! virtio-blk-pci, aio=io_uring, cache=none) and on Vireo (`--disk IMG,direct`).
//! A VMM that cannot run it gets "n/a" and the reason below the table.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::bench::{backend, which};
use crate::bench_vm::{
    build_vireo, cell, field_f64, qemu_command, ratio, run_guest, vireo_command, Scratch, Vmm,
};

const SCENARIO: &str = "bench-blk";
const MIB: u64 = 1 << 20;

/// One workload: the guest's test name, fio's parameters, and the row's unit.
#[derive(Debug, Clone)]
struct Workload {
    /// The guest's `tests=` name.
    id: &'static str,
    fio_rw: &'static str,
    fio_bs: &'static str,
    qd: u32,
    /// IOPS row (else MB/s).
    iops: bool,
}

impl Workload {
    fn label(&self) -> String {
        let unit = if self.iops { "IOPS" } else { "MB/s" };
        let kind = match self.fio_rw {
            "read" => "seqread",
            "write" => "seqwrite",
            other => other,
        };
        format!("{} {kind} qd{} ({unit})", self.fio_bs, self.qd)
    }
}

fn workloads(seq_qd: u32) -> Vec<Workload> {
    let w = |id, fio_rw, fio_bs, qd, iops| Workload {
        id,
        fio_rw,
        fio_bs,
        qd,
        iops,
    };
    vec![
        w("randread1", "randread", "4k", 1, true),
        w("randread32", "randread", "4k", 32, true),
        w("randwrite1", "randwrite", "4k", 1, true),
        w("randwrite32", "randwrite", "4k", 32, true),
        w("seqread", "read", "1M", seq_qd, false),
        w("seqwrite", "write", "1M", seq_qd, false),
    ]
}

/// A column of the table: workload id -> value in the row's unit, or why there is none.
type Column = Result<HashMap<String, f64>, String>;

struct Options {
    secs: u64,
    size: u64,
    seq_qd: u32,
    tests: Option<Vec<String>>,
}

const USAGE: &str =
    "usage: cargo xtask bench blk [--secs N] [--size SIZE] [--seq-qd N] [--tests LIST]\n  \
     --secs N      seconds per workload (default 2)\n  \
     --size SIZE   image size, e.g. 512M or 4G (default 1G)\n  \
     --seq-qd N    queue depth of the 1 MiB sequential workloads (default 8)\n  \
     --tests LIST  some of randread1,randread32,randwrite1,randwrite32,seqread,seqwrite";

/// `512M`, `1G`, `4096K` or bytes.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (digits, unit) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .with_context(|| format!("'{text}' is not a size like 512M or 1G"))
}

fn parse_args(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        secs: 2,
        size: 1 << 30,
        seq_qd: 8,
        tests: None,
    };
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .with_context(|| format!("{} needs a value\n{USAGE}", args[i]))
        };
        match args[i].as_str() {
            "--secs" => o.secs = value()?.parse().context("--secs: expected seconds")?,
            "--size" => o.size = parse_size(value()?).context("--size")?,
            "--seq-qd" => o.seq_qd = value()?.parse().context("--seq-qd: expected a number")?,
            "--tests" => o.tests = Some(value()?.split(',').map(str::to_string).collect()),
            other => bail!("unexpected argument '{other}'\n{USAGE}"),
        }
        i += 2;
    }
    if !(1..=3600).contains(&o.secs) {
        bail!("--secs {}: expected 1 to 3600", o.secs);
    }
    if o.size < 16 * MIB || !o.size.is_multiple_of(MIB) {
        bail!("--size: expected a whole number of MiB, at least 16M");
    }
    if !(1..=32).contains(&o.seq_qd) {
        bail!("--seq-qd {}: expected 1 to 32", o.seq_qd);
    }
    Ok(o)
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let mut loads = workloads(o.seq_qd);
    if let Some(tests) = &o.tests {
        for t in tests {
            if !loads.iter().any(|w| w.id == t) {
                bail!("--tests: unknown workload '{t}'\n{USAGE}");
            }
        }
        loads.retain(|w| tests.iter().any(|t| t == w.id));
    }
    let vmm = build_vireo()?;
    let qemu = which("qemu-system-x86_64");
    let fio = which("fio");

    let scratch = Scratch::new("bench-blk-")?;
    let image = scratch.path("disk.img");
    eprintln!(
        "writing a {} MiB image at {} ...",
        o.size / MIB,
        image.display()
    );
    write_image(&image, o.size)?;
    println!(
        "backend: {}; image: raw, {} MiB, fully written, on the build's file system ({}); \
         {} s per workload",
        backend(),
        o.size / MIB,
        image.display(),
        o.secs
    );
    println!(
        "host fio: ioengine=io_uring direct=1; QEMU: microvm, virtio-blk-pci (1 queue, main \
         loop, no iothread), -drive aio=io_uring,cache=none; Vireo: --disk IMG,direct; \
         guests: scenario {SCENARIO}, polling driver at CPL3, 1 vCPU"
    );

    let fio_col: Column = match &fio {
        None => Err("fio not found: install it (apt-get install fio / dnf install fio)".into()),
        Some(fio) => run_fio_all(fio, &image, &loads, &o),
    };
    let tests: Vec<&str> = loads.iter().map(|w| w.id).collect();
    let cmdline = format!(
        "scenario={SCENARIO} secs={} size={} seq_qd={} tests={}",
        o.secs,
        o.size,
        o.seq_qd,
        tests.join(",")
    );
    let timeout = Duration::from_secs(60 + loads.len() as u64 * (o.secs + 25));
    let qemu_col: Column = match &qemu {
        None => Err("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into()),
        Some(q) => {
            let drive = vec![
                "-drive".into(),
                format!(
                    "file={},if=none,id=d0,format=raw,aio=io_uring,cache=none",
                    image.display()
                ),
                "-device".into(),
                "virtio-blk-pci,drive=d0,disable-legacy=on".into(),
            ];
            guest_column(
                Vmm::Qemu,
                qemu_command(q, &cmdline, &drive),
                timeout,
                &loads,
            )
        }
    };
    let disk = vec!["--disk".into(), format!("{},direct", image.display())];
    let vireo_col = guest_column(
        Vmm::Vireo,
        vireo_command(&vmm, &cmdline, &disk),
        timeout,
        &loads,
    );

    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>11} {:>10}",
        "workload", "host fio", "QEMU", "Vireo", "Vireo/QEMU", "Vireo/fio"
    );
    let get = |c: &Column, id: &str| c.as_ref().ok().and_then(|m| m.get(id).copied());
    for w in &loads {
        let (f, q, v) = (
            get(&fio_col, w.id),
            get(&qemu_col, w.id),
            get(&vireo_col, w.id),
        );
        let decimals = if w.iops { 0 } else { 1 };
        let vireo_cell = match (&vireo_col, v) {
            (Err(_), _) => "n/a (error)".to_string(),
            (Ok(_), v) => cell(v, decimals),
        };
        println!(
            "{:<28} {:>10} {:>10} {:>12} {:>11} {:>10}",
            w.label(),
            cell(f, decimals),
            cell(q, decimals),
            vireo_cell,
            ratio(v, q),
            ratio(v, f)
        );
    }
    if o.seq_qd > 1 && loads.iter().any(|w| !w.iops) {
        println!(
            "note: QEMU's virtio-blk merges adjacent requests of one batch into larger I/Os, \
             so its sequential figures can beat host fio, which submits every 1 MiB alone"
        );
    }
    for (name, col) in [
        ("host fio", &fio_col),
        ("QEMU", &qemu_col),
        ("Vireo", &vireo_col),
    ] {
        if let Err(why) = col {
            println!("{name}: n/a: {why}");
        }
    }
    Ok(())
}

/// Writes `size` bytes of non-zero data (every block allocated, nothing sparse) and syncs.
fn write_image(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the image {}", path.display()))?;
    let mut chunk = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for word in chunk.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    for i in 0..size / MIB {
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(&chunk)
            .with_context(|| format!("writing the image {}", path.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("syncing the image {}", path.display()))?;
    Ok(())
}

/// Every workload under host fio; the first failure makes the column n/a.
fn run_fio_all(fio: &Path, image: &Path, loads: &[Workload], o: &Options) -> Column {
    let mut out = HashMap::new();
    for w in loads {
        eprintln!("host fio: {} ...", w.label());
        let v = run_fio(fio, image, w, o).map_err(|e| format!("{e:#}"))?;
        out.insert(w.id.to_string(), v);
    }
    Ok(out)
}

/// One fio job; IOPS or MB/s.
fn run_fio(fio: &Path, image: &Path, w: &Workload, o: &Options) -> anyhow::Result<f64> {
    let out = Command::new(fio)
        .arg(format!("--name={}", w.id))
        .arg(format!("--filename={}", image.display()))
        .args(["--ioengine=io_uring", "--direct=1"])
        .arg(format!("--rw={}", w.fio_rw))
        .arg(format!("--bs={}", w.fio_bs))
        .arg(format!("--iodepth={}", w.qd))
        .arg(format!("--runtime={}", o.secs))
        .arg("--time_based")
        .arg(format!("--size={}", o.size))
        .args(["--norandommap", "--randrepeat=0"])
        .args(["--output-format=terse", "--terse-version=3"])
        .output()
        .with_context(|| format!("cannot run {}", fio.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio {} failed ({}): {}",
            w.id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("3;"))
        .with_context(|| format!("no terse (version 3) line in fio's output: {stdout}"))?;
    // Terse v3: 5 error; read: 6 KiB, 7 KiB/s, 8 IOPS; write: 47 KiB, 48 KiB/s, 49 IOPS
    // (1-based).
    let f: Vec<&str> = line.split(';').collect();
    let num = |i: usize| -> anyhow::Result<f64> {
        f.get(i - 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("fio's terse field {i} is missing or not a number: {line}"))
    };
    if num(5)? != 0.0 {
        bail!("fio {} reported error {}", w.id, num(5)?);
    }
    let write = w.fio_rw.contains("write");
    if w.iops {
        num(if write { 49 } else { 8 })
    } else {
        // KiB/s to MB/s.
        Ok(num(if write { 48 } else { 7 })? * 1024.0 / 1e6)
    }
}

/// The guest scenario on one VMM: its result lines, or why there are none.
fn guest_column(vmm: Vmm, cmd: Command, timeout: Duration, loads: &[Workload]) -> Column {
    let name = match vmm {
        Vmm::Qemu => "QEMU",
        Vmm::Vireo => "Vireo",
    };
    eprintln!("{name}: scenario {SCENARIO} ...");
    let finished = run_guest(cmd, timeout, |line| {
        if line.starts_with("bench-blk:") {
            eprintln!("  {name}: {line}");
        }
    })
    .map_err(|e| format!("{e:#}"))?;
    if let Some(why) = finished.failure(vmm, SCENARIO) {
        return Err(why);
    }
    let mut out = HashMap::new();
    for line in &finished.lines {
        let Some(rest) = line.strip_prefix("bench-blk: ") else {
            continue;
        };
        let Some(id) = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("test="))
        else {
            continue; // the device description line
        };
        let Some(w) = loads.iter().find(|w| w.id == id) else {
            return Err(format!("unexpected result line '{line}'"));
        };
        let key = if w.iops { "iops" } else { "mbps" };
        let v = field_f64(line, key).map_err(|e| format!("{e:#}"))?;
        out.insert(id.to_string(), v);
    }
    for w in loads {
        if !out.contains_key(w.id) {
            return Err(format!("the guest printed no result for {}", w.id));
        }
    }
    Ok(out)
}
