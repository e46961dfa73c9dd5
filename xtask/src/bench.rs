//! Benchmarks: Vireo against the reference, side by side in one run.
//!
//! `bench blk` and `bench net` (virtio-blk and virtio-net throughput against host fio
//! and QEMU) live in bench_blk.rs and bench_net.rs; `bench img` (image conversion and
//! the image library's IOPS against qemu-img and qemu-io) in bench_img.rs.
//!
//! `bench boot`: spawn the monitor with the test guest (`scenario=wait`), time
//! to the guest's ready line, read the monitor's RSS without guest RAM while the
//! guest idles, then let it finish. Separately, time a whole `scenario=hello`
//! run from spawn to the monitor's exit. The same for QEMU (microvm, PVH
//! `-kernel`, isa-debug-exit) on the same guest binary. Medians of N runs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{cargo, workspace_root};

const MEMORY_MIB: u64 = 128;

pub fn main(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("blk") => return crate::bench_blk::main(&args[1..]),
        Some("net") => return crate::bench_net::main(&args[1..]),
        Some("img") => return crate::bench_img::main(&args[1..]),
        Some("lifecycle") => return crate::bench_lifecycle::main(&args[1..]),
        _ => {}
    }
    let mut runs = 10usize;
    let mut what = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args
                    .get(i + 1)
                    .context("--runs needs a number")?
                    .parse()
                    .context("--runs")?;
                i += 1;
            }
            w if what.is_none() => what = Some(w.to_string()),
            other => bail!("unexpected argument '{other}'"),
        }
        i += 1;
    }
    match what.as_deref() {
        Some("boot") => boot(runs.max(1)),
        _ => bail!(
            "usage: cargo xtask bench boot [--runs N]\n\
             usage: cargo xtask bench blk [--secs N] [--size 1G] [--seq-qd N] [--tests LIST]\n\
             usage: cargo xtask bench net [--secs N] [--frames 64,1514]\n\
             usage: cargo xtask bench img [--size 4G] [--secs N] [--tests LIST]\n\
             usage: cargo xtask bench lifecycle [--cycles N] [--calls N] [--idle N]"
        ),
    }
}

/// One measured boot.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ready: Duration,
    exit: Duration,
    /// Monitor RSS minus guest RAM, KiB.
    overhead_kib: u64,
    /// Guest RAM the guest touched (RSS of the guest RAM mapping), KiB.
    guest_kib: u64,
}

pub(crate) fn backend() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm (guest kernel code emulated)"
    } else {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cpuinfo.contains(" vmx") {
            "kvm_intel (VT-x)"
        } else if cpuinfo.contains(" svm") {
            "kvm_amd (AMD-V)"
        } else {
            "unknown"
        }
    }
}

fn boot(runs: usize) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--quiet", "-p", "vireo-monitor"])?;
    let vmm = workspace_root().join("target/release/vireo-vmm");
    let guest = vireo_test_guest::elf_path().to_path_buf();
    let qemu = which("qemu-system-x86_64");
    println!(
        "backend: {}; guest: {}; {runs} runs each, 1 vCPU, {MEMORY_MIB} MiB",
        backend(),
        guest.display()
    );

    let mut vireo = Vec::new();
    let mut reference = Vec::new();
    for _ in 0..runs {
        vireo.push(measure(|s| vireo_cmd(&vmm, &guest, s), "vireo-guest-ram")?);
        if let Some(q) = &qemu {
            reference.push(measure(|s| qemu_cmd(q, &guest, s), "qemu-has-no-name")?);
        }
    }
    let v = medians(&vireo);
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>9}",
        "median of runs", "vireo", "qemu", "qemu/vireo"
    );
    let q = (!reference.is_empty()).then(|| medians(&reference));
    let row = |name: &str, a: f64, b: Option<f64>, unit: &str| {
        let (bs, ratio) = match b {
            Some(b) => (format!("{b:.2} {unit}"), format!("{:.1}x", b / a)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:<34} {:>12} {bs:>12} {ratio:>9}",
            format!("{a:.2} {unit}")
        );
    };
    row(
        "spawn to ready line",
        ms(v.ready),
        q.map(|q| ms(q.ready)),
        "ms",
    );
    row(
        "spawn to exit (scenario hello)",
        ms(v.exit),
        q.map(|q| ms(q.exit)),
        "ms",
    );
    row(
        "monitor RSS without guest RAM",
        mib(v.overhead_kib),
        q.map(|q| mib(q.overhead_kib)),
        "MiB",
    );
    row(
        "guest RAM touched",
        mib(v.guest_kib),
        q.map(|q| mib(q.guest_kib)),
        "MiB",
    );
    if qemu.is_none() {
        println!(
            "(qemu-system-x86_64 not found: install qemu-system-x86 for the reference column)"
        );
    }
    println!();
    println!(
        "targets: ready <= 15 ms: {}; >= 5x faster than QEMU: {}; overhead <= 5 MiB: {}",
        verdict(ms(v.ready) <= 15.0),
        q.map(|q| verdict(ms(q.ready) / ms(v.ready) >= 5.0))
            .unwrap_or("n/a"),
        verdict(mib(v.overhead_kib) <= 5.0)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn medians(s: &[Sample]) -> Sample {
    fn med<T: Copy + Ord>(mut v: Vec<T>) -> T {
        v.sort();
        v[v.len() / 2]
    }
    Sample {
        ready: med(s.iter().map(|x| x.ready).collect()),
        exit: med(s.iter().map(|x| x.exit).collect()),
        overhead_kib: med(s.iter().map(|x| x.overhead_kib).collect()),
        guest_kib: med(s.iter().map(|x| x.guest_kib).collect()),
    }
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn vireo_cmd(vmm: &Path, guest: &Path, scenario: &str) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(guest)
        .args(["--cmdline", &format!("scenario={scenario}"), "--cpus", "1"])
        .args(["--memory", &format!("{MEMORY_MIB}M"), "--serial", "stdio"]);
    c
}

fn qemu_cmd(qemu: &Path, guest: &Path, scenario: &str) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=on,pic=on",
    ])
    .args([
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-smp",
        "1",
    ])
    .args([
        "-m",
        &format!("{MEMORY_MIB}M"),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .args(["-serial", "stdio", "-kernel"])
    .arg(guest)
    .args([
        "-append",
        &format!("scenario={scenario}"),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]);
    c
}

/// Runs one boot of `scenario=wait` (time to the ready line, memory while
/// idle) and one of `scenario=hello` (time to exit).
fn measure(cmd: impl Fn(&str) -> Command, ram_name: &str) -> anyhow::Result<Sample> {
    let mut hello = cmd("hello");
    hello
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = hello.spawn().context("spawning the monitor")?;
    let status = wait_timeout(&mut child, Duration::from_secs(60))?;
    let exit = start.elapsed();
    // Vireo exits 0 on guest status 0; QEMU's isa-debug-exit gives (0 << 1) | 1.
    if !matches!(status, Some(0) | Some(1)) {
        bail!("the monitor ended with status {status:?}");
    }

    let mut cmd = cmd("wait");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning the monitor")?;
    let out = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(out).lines();
    let deadline = start + Duration::from_secs(60);
    let ready = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(vireo_test_guest::READY_LINE) => break start.elapsed(),
            Some(Ok(_)) => {}
            _ => {
                let _ = child.kill();
                bail!("the guest never printed its ready line");
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("timed out waiting for the ready line");
        }
    };
    // Let the guest settle into its idle loop before reading memory.
    std::thread::sleep(Duration::from_millis(50));
    let (overhead_kib, guest_kib) = rss(child.id(), ram_name)?;
    child.stdin.as_mut().context("stdin")?.write_all(b"q")?;
    // Drain the console so the guest never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let status = wait_timeout(&mut child, Duration::from_secs(30))?;
    if !matches!(status, Some(0) | Some(1)) {
        bail!("the monitor ended with status {status:?}");
    }
    Ok(Sample {
        ready,
        exit,
        overhead_kib,
        guest_kib,
    })
}

fn wait_timeout(child: &mut Child, t: Duration) -> anyhow::Result<Option<i32>> {
    let end = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code());
        }
        if Instant::now() > end {
            let _ = child.kill();
            bail!("the monitor did not exit");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// (RSS without guest RAM, RSS of guest RAM) in KiB, from /proc/PID/smaps.
/// Guest RAM is the mapping named `[anon:<ram_name>]`, or an anonymous mapping
/// at least as large as the guest's memory.
fn rss(pid: u32, ram_name: &str) -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("reading smaps")?;
    let mut total = 0;
    let mut guest = 0;
    let mut is_guest = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let (a, b) = first.split_once('-').unwrap_or(("0", "0"));
            let size = u64::from_str_radix(b, 16)
                .unwrap_or(0)
                .saturating_sub(u64::from_str_radix(a, 16).unwrap_or(0));
            let name = line.split_whitespace().nth(5).unwrap_or("");
            // Vireo names its guest RAM where the kernel allows it
            // (CONFIG_ANON_VMA_NAME); otherwise, and for QEMU, guest RAM is the
            // anonymous mapping at least as large as the guest's memory.
            is_guest = name == format!("[anon:{ram_name}]")
                || (name.is_empty() && size >= MEMORY_MIB << 20);
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if is_guest {
                guest += kib;
            }
        }
    }
    Ok((total - guest, guest))
}
