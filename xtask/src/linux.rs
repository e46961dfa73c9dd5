//! `cargo xtask test-linux [--cpus 1,2] [--timeout SECS] [--qemu] [--quiet]
//! [--append WORDS] [--uncompressed-initrd]`: the slow, opt-in Linux boot
//! test. Never part of `cargo xtask ci`.
//!
//! Builds the release monitor, makes sure the guest kernel and initramfs are
//! in the cache (`guest_assets`), then boots the kernel in `vireo-vmm` once per
//! vCPU count and checks, from the kernel's own console output, what the
//! kernel does: banner, command line, ACPI, CPUs, memory, reaching init. The
//! expected lines are one table, [`EXPECTATIONS`]. With `--qemu` the same
//! kernel also boots in QEMU (microvm, PVH) for a side-by-side boot time.
//!
//! On hosts whose KVM cannot run guest user space (kvm_pvm, see
//! shared/kvm-host.md) /init dies on its first system call, the kernel
//! panics and `panic=-1` resets the machine: the test stops at "Run /init".
//! On hardware KVM the init's own report (`vireo-linux: ...`) is checked too.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::guest_assets;
use crate::{cargo, workspace_root};

const MEMORY_MIB: u64 = 256;
const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Console lines shown when a run fails.
const TAIL_LINES: usize = 30;
/// The line that ends the kernel's own boot.
const RUN_INIT: &str = "Run /init as init process";

/// CPUID features QEMU must hide from the guest on hosts whose KVM emulates
/// guest kernel code (kvm-host.md, "Linux guests here"): XRSTOR and the other
/// instructions behind these bits are not emulated at CPL0.
/// `arch-capabilities`: plain `-cpu host` aborts on MSR 0x10a there.
const QEMU_HIDDEN_FEATURES: &[&str] = &[
    "arch-capabilities",
    "xsave",
    "xsaveopt",
    "xsavec",
    "xsaves",
    "avx",
    "avx2",
    "avx-vnni",
    "avx512f",
    "avx512dq",
    "avx512ifma",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vnni",
    "avx512bitalg",
    "avx512-vpopcntdq",
    "avx512-bf16",
    "avx512-fp16",
    "avx512-vp2intersect",
    "f16c",
    "fma",
    "vaes",
    "vpclmulqdq",
    "gfni",
    "popcnt",
    "cx16",
    "rdtscp",
    "rdpid",
    "movbe",
    "smap",
    "smep",
    "pcid",
    "invpcid",
    "fsgsbase",
    "sse4.2",
    "aes",
    "pclmulqdq",
    "sha-ni",
];

/// Added to QEMU's kernel command line on hosts whose KVM emulates guest
/// kernel code. There the kernel's own CPUID reads return the host's values
/// whatever table the VMM gave KVM (even `-cpu qemu64` shows XSAVE and
/// AVX-512), so the features the emulator lacks are cleared from the kernel's
/// side; and QEMU stops the VM on the kernel's `int3` self-test (Vireo
/// delivers the #BP instead), which `no_int3_selftest` skips
/// (guest-linux/patches/0001-int3-selftest-param.patch).
const QEMU_EMULATED_HOST_CMDLINE: &str = "clearcpuid=xsave,popcnt,cx16,rdtscp,rdpid,movbe,\
    smap,smep,pcid,invpcid,fsgsbase,sse4_2,aes,pclmulqdq,sha_ni no_int3_selftest";

/// What a boot must show. Patterns may contain `{cpus}` (the run's vCPU
/// count) and `{marker}` (a word the run put on the kernel command line).
/// In boot order; extend here (virtio-blk root, DHCP, ...).
const EXPECTATIONS: &[Expect] = &[
    Expect {
        name: "kernel banner",
        rule: Rule::Line(&["Linux version "]),
        when: When::Always,
    },
    Expect {
        name: "command line echoed",
        rule: Rule::Line(&["Command line: ", "{marker}"]),
        when: When::Always,
    },
    Expect {
        name: "ACPI tables found",
        rule: Rule::Line(&["ACPI: RSDP "]),
        when: When::Always,
    },
    Expect {
        name: "ACPI interpreter enabled",
        rule: Rule::Line(&["ACPI: Interpreter enabled"]),
        when: When::Always,
    },
    Expect {
        name: "no ACPI errors",
        rule: Rule::NoLine(&[
            "ACPI Error",
            "ACPI BIOS Error",
            "ACPI: Unable",
            "ACPI Exception",
        ]),
        when: When::Always,
    },
    Expect {
        name: "all CPUs brought up",
        rule: Rule::Line(&["smp: Brought up 1 node, {cpus} CPU"]),
        when: When::Always,
    },
    Expect {
        name: "memory size",
        rule: Rule::Custom(memory_size),
        when: When::Always,
    },
    Expect {
        name: "PCI: virtio-blk function found",
        rule: Rule::Line(&["pci 0000:00:", "[1af4:1042]"]),
        when: When::Always,
    },
    Expect {
        name: "PCI: virtio-rng function found",
        rule: Rule::Line(&["pci 0000:00:", "[1af4:1044]"]),
        when: When::Always,
    },
    Expect {
        name: "virtio-blk disk vda with its size",
        rule: Rule::Line(&["virtio_blk", "[vda] 16384 512-byte logical blocks"]),
        when: When::Always,
    },
    Expect {
        name: "init started",
        rule: Rule::Line(&[RUN_INIT]),
        when: When::Always,
    },
    Expect {
        name: "init: cpus",
        rule: Rule::Line(&["vireo-linux: cpus {cpus}"]),
        when: When::UserSpace,
    },
    Expect {
        name: "init: memory",
        rule: Rule::Line(&["vireo-linux: memory "]),
        when: When::UserSpace,
    },
    Expect {
        name: "init: cmdline",
        rule: Rule::Line(&["vireo-linux: cmdline ", "{marker}"]),
        when: When::UserSpace,
    },
    Expect {
        name: "init: block devices",
        rule: Rule::Line(&["vireo-linux: block"]),
        when: When::UserSpace,
    },
    Expect {
        name: "init: network interfaces",
        rule: Rule::Line(&["vireo-linux: net"]),
        when: When::UserSpace,
    },
    Expect {
        name: "VM ended by itself",
        rule: Rule::Custom(ended),
        when: When::Always,
    },
];

/// One expected property of a boot.
struct Expect {
    name: &'static str,
    rule: Rule,
    when: When,
}

enum Rule {
    /// Some console line contains every one of these.
    Line(&'static [&'static str]),
    /// No console line contains any of these.
    NoLine(&'static [&'static str]),
    /// Anything else: PASS or FAIL with a detail.
    Custom(fn(&Run) -> Verdict),
}

#[derive(Clone, Copy, PartialEq)]
enum When {
    Always,
    /// Only where guest user space can run (hardware KVM).
    UserSpace,
}

enum Verdict {
    Pass(String),
    Fail(String),
    Skip(String),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Vmm {
    Vireo,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Vireo => "vireo",
            Vmm::Qemu => "qemu",
        }
    }
}

/// How a run ended.
enum End {
    Exited(ExitStatus),
    /// Killed (with its process group) at the timeout.
    TimedOut,
    /// Killed because stderr said the VM cannot go on ([`STUCK_PATTERNS`]).
    Stuck(&'static str),
}

/// One boot: the console as it arrived, and how it ended.
struct Run {
    vmm: Vmm,
    cpus: u32,
    marker: String,
    /// Console lines with their arrival time since spawn (host clock).
    lines: Vec<(Duration, String)>,
    end: End,
    elapsed: Duration,
    stderr: String,
    log: PathBuf,
}

impl Run {
    fn pattern(&self, p: &str) -> String {
        p.replace("{cpus}", &self.cpus.to_string())
            .replace("{marker}", &self.marker)
    }

    fn find(&self, parts: &[&str]) -> Option<&(Duration, String)> {
        let parts: Vec<String> = parts.iter().map(|p| self.pattern(p)).collect();
        self.lines
            .iter()
            .find(|(_, l)| parts.iter().all(|p| l.contains(p.as_str())))
    }

    /// When a line containing `what` arrived.
    fn time_of(&self, what: &str) -> Option<Duration> {
        self.find(&[what]).map(|(t, _)| *t)
    }

    fn exit_code(&self) -> Option<i32> {
        match &self.end {
            End::Exited(s) => s.code(),
            End::TimedOut | End::Stuck(_) => None,
        }
    }
}

struct Options {
    cpus: Vec<u32>,
    timeout: Duration,
    qemu: bool,
    quiet: bool,
    /// Extra kernel command-line words for every boot.
    append: String,
    /// Boot the uncompressed initramfs (saves the kernel inflating it).
    uncompressed_initrd: bool,
}

const USAGE: &str = "usage: cargo xtask test-linux [--cpus 1,2] [--timeout SECS] [--qemu] \
    [--quiet] [--append WORDS] [--uncompressed-initrd]";

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        cpus: vec![1, 2],
        timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        qemu: false,
        quiet: false,
        append: String::new(),
        uncompressed_initrd: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cpus" => {
                let v = it.next().context("--cpus needs a list, e.g. 1,2")?;
                o.cpus = v
                    .split(',')
                    .map(|n| match n.trim().parse::<u32>() {
                        Ok(n @ 1..=254) => Ok(n),
                        _ => bail!("--cpus: '{n}' is not a vCPU count (1-254)"),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--timeout" => {
                let v = it.next().context("--timeout needs seconds")?;
                let s: u64 = v.parse().with_context(|| format!("--timeout '{v}'"))?;
                if s == 0 {
                    bail!("--timeout must be at least 1 second");
                }
                o.timeout = Duration::from_secs(s);
            }
            "--qemu" => o.qemu = true,
            "--uncompressed-initrd" => o.uncompressed_initrd = true,
            "--append" => {
                let v = it
                    .next()
                    .context("--append needs kernel command-line words")?;
                o.append = v.trim().to_string();
            }
            "--quiet" => o.quiet = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unexpected argument '{other}'\n{USAGE}"),
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        bail!("/dev/kvm is not usable by this user: the Linux boot test needs KVM");
    }
    let qemu = if opts.qemu { Some(find_qemu()?) } else { None };
    cargo(&["build", "--release", "--quiet", "-p", "vireo-monitor"])?;
    let vmm = workspace_root().join("target/release/vireo-vmm");
    let kernel = guest_assets::ensure_kernel(false)?;
    let initramfs = guest_assets::ensure_initramfs(false)?;
    let initrd = if opts.uncompressed_initrd {
        initramfs.cpio
    } else {
        initramfs.gzip
    };
    let (backend, user_space) = backend();
    let logs = guest_assets::cache_dir()?.join("logs");
    std::fs::create_dir_all(&logs)?;
    println!(
        "test-linux: backend {backend}; guest user space {}",
        if user_space {
            "runs (init's report is checked)"
        } else {
            "cannot run here (checks stop at \"Run /init\")"
        }
    );
    println!("  kernel: {}", kernel.vmlinux.display());
    println!("  initrd: {}", initrd.display());
    println!(
        "  {MEMORY_MIB} MiB, vCPUs {:?}, timeout {} s per boot, logs in {}",
        opts.cpus,
        opts.timeout.as_secs(),
        logs.display()
    );

    let mut runs = Vec::new();
    for &cpus in &opts.cpus {
        let mut vmms = vec![(Vmm::Vireo, vmm.clone())];
        if let Some(q) = &qemu {
            vmms.push((Vmm::Qemu, q.clone()));
        }
        for (which_vmm, program) in vmms {
            let marker = format!("vireo_test=linux-{cpus}cpu-{:08x}", nonce());
            let mut cmdline = format!("console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 {marker}");
            if !opts.append.is_empty() {
                cmdline = format!("{cmdline} {}", opts.append);
            }
            if which_vmm == Vmm::Qemu && !user_space {
                cmdline = format!("{cmdline} {QEMU_EMULATED_HOST_CMDLINE}");
            }
            let disk = logs.join(format!("{}-{cpus}cpu.img", which_vmm.name()));
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(DISK_BYTES))
                .with_context(|| format!("creating {}", disk.display()))?;
            let (k, i) = (&kernel.vmlinux, &initrd);
            let cmd = match which_vmm {
                Vmm::Vireo => vireo_cmd(&program, k, i, &disk, cpus, &cmdline),
                Vmm::Qemu => qemu_cmd(&program, k, i, &disk, cpus, &cmdline),
            };
            let log = logs.join(format!("{}-{cpus}cpu.log", which_vmm.name()));
            let run = boot(which_vmm, cmd, cpus, marker, log, &opts)?;
            report(&run, user_space);
            runs.push(run);
        }
    }
    summary(&runs, &opts.cpus);
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !passed(r, user_space))
        .map(|r| format!("{} with {} vCPU(s)", r.vmm.name(), r.cpus))
        .collect();
    if !failed.is_empty() {
        bail!("Linux boot test failed: {}", failed.join(", "));
    }
    println!("test-linux: all checks passed");
    Ok(())
}

fn find_qemu() -> anyhow::Result<PathBuf> {
    which("qemu-system-x86_64")
        .context("--qemu: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
}

/// The virtio disk both VMMs give the guest: 8 MiB, zeros.
const DISK_BYTES: u64 = 8 << 20;
/// Its GET_ID serial.
const DISK_SERIAL: &str = "vireo-linux-disk";

fn vireo_cmd(
    vmm: &Path,
    kernel: &Path,
    initrd: &Path,
    disk: &Path,
    cpus: u32,
    cmdline: &str,
) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--disk")
        .arg(format!("{},serial={DISK_SERIAL}", disk.display()))
        .arg("--rng");
    c.arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cpus", &cpus.to_string()])
        .args(["--memory", &format!("{MEMORY_MIB}M")])
        .args(["--no-reboot", "--serial", "stdio", "--cmdline", cmdline]);
    c
}

/// QEMU with settings equivalent to Vireo's: microvm with ACPI, the legacy PC
/// devices, PVH boot of the same vmlinux, a CPU model the emulating host can
/// run (features hidden, Intel vendor against the FXSAVE_LEAK FNCLEX path).
fn qemu_cmd(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    disk: &Path,
    cpus: u32,
    cmdline: &str,
) -> Command {
    let mut cpu = String::from("host");
    for f in QEMU_HIDDEN_FEATURES {
        let _ = write!(cpu, ",-{f}");
    }
    cpu.push_str(",vendor=GenuineIntel");
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=on,pic=on,acpi=on,pcie=on",
    ])
    .args(["-accel", "kvm", "-cpu", &cpu, "-smp", &cpus.to_string()])
    .arg("-drive")
    .arg(format!(
        "file={},if=none,id=d0,format=raw,aio=io_uring",
        disk.display()
    ))
    .args([
        "-device",
        &format!("virtio-blk-pci,drive=d0,disable-legacy=on,serial={DISK_SERIAL}"),
        "-device",
        "virtio-rng-pci,disable-legacy=on",
    ])
    .args(["-m", &format!("{MEMORY_MIB}M")])
    .args(["-nodefaults", "-no-user-config", "-nographic"])
    .args(["-serial", "stdio", "-no-reboot", "-kernel"])
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", cmdline]);
    c
}

/// Stderr lines that mean the VMM has stopped the guest for good but keeps
/// running (QEMU pauses the VM on a KVM internal error): the run ends there.
const STUCK_PATTERNS: &[(Vmm, &str)] = &[(Vmm::Qemu, "KVM internal error")];

/// Boots once: spawns `cmd` in its own process group, collects the console
/// with host arrival times until the process ends, reports on stderr that it
/// is stuck, or reaches the timeout; the last two kill the whole group.
/// Never hangs.
fn boot(
    vmm: Vmm,
    mut cmd: Command,
    cpus: u32,
    marker: String,
    log: PathBuf,
    opts: &Options,
) -> anyhow::Result<Run> {
    println!();
    println!(
        "== {} with {cpus} vCPU(s): {}",
        vmm.name(),
        shell_line(&cmd)
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one async-signal-safe system call (prctl).
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", vmm.name()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("child stdout")?;
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\r', '\n']).replace('\r', "");
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let (etx, erx) = mpsc::channel::<()>();
    let mut stderr = child.stderr.take().context("child stderr")?;
    let sink = Arc::clone(&stderr_text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        let _ = etx.send(());
    });
    let stuck = || {
        let text = stderr_text.lock().map(|s| s.clone()).unwrap_or_default();
        STUCK_PATTERNS
            .iter()
            .find(|(v, p)| *v == vmm && text.contains(p))
            .map(|(_, p)| *p)
    };

    let mut file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(file, "# {}", shell_line(&cmd))?;
    let mut lines = Vec::new();
    let mut record = |at: Instant, line: String| -> std::io::Result<()> {
        let t = at.saturating_duration_since(start);
        writeln!(file, "[+{:9.3}s] {line}", t.as_secs_f64())?;
        if !opts.quiet {
            println!("  {}/{cpus} +{:7.2}s | {line}", vmm.name(), t.as_secs_f64());
        }
        lines.push((t, line));
        Ok(())
    };

    let deadline = start + opts.timeout;
    let mut console_open = true;
    let end = loop {
        let now = Instant::now();
        if now >= deadline {
            sys::kill_group(child.id());
            let _ = wait_bounded(&mut child, Duration::from_secs(10));
            break End::TimedOut;
        }
        if console_open {
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
                Ok((at, line)) => {
                    record(at, line)?;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => console_open = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(status) = child.try_wait()? {
            break End::Exited(status);
        }
        if let Some(pattern) = stuck() {
            // Let it finish writing its report, then end it.
            std::thread::sleep(Duration::from_millis(500));
            sys::kill_group(child.id());
            let _ = wait_bounded(&mut child, Duration::from_secs(10));
            break End::Stuck(pattern);
        }
    };
    let elapsed = start.elapsed();
    // What the console still held when the process ended.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Ok((at, line)) =
        rx.recv_timeout(drain_until.saturating_duration_since(Instant::now()))
    {
        record(at, line)?;
    }
    let _ = erx.recv_timeout(Duration::from_secs(2));
    let stderr = stderr_text.lock().map(|s| s.clone()).unwrap_or_default();
    if !stderr.is_empty() {
        writeln!(file, "# stderr:\n{stderr}")?;
    }
    writeln!(
        file,
        "# ended after {:.3} s: {}",
        elapsed.as_secs_f64(),
        describe_end(vmm, &end, elapsed)
    )?;
    Ok(Run {
        vmm,
        cpus,
        marker,
        lines,
        end,
        elapsed,
        stderr,
        log,
    })
}

fn describe_end(vmm: Vmm, end: &End, elapsed: Duration) -> String {
    match end {
        End::Exited(s) if vmm == Vmm::Vireo => vireo_exit(s.code()),
        End::Exited(s) => format!("{s}"),
        End::TimedOut => format!("killed at the timeout ({:.0} s)", elapsed.as_secs_f64()),
        End::Stuck(p) => format!("killed: stderr says \"{p}\" (the VM cannot go on)"),
    }
}

fn wait_bounded(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn evaluate(run: &Run, e: &Expect, user_space: bool) -> Verdict {
    if e.when == When::UserSpace && !user_space {
        return Verdict::Skip("guest user space cannot run on this host".into());
    }
    match &e.rule {
        Rule::Line(parts) => match run.find(parts) {
            Some((t, l)) => Verdict::Pass(format!("+{:.1}s {}", t.as_secs_f64(), printk_text(l))),
            None => {
                let want: Vec<String> = parts.iter().map(|p| run.pattern(p)).collect();
                Verdict::Fail(format!("no line with {want:?}"))
            }
        },
        Rule::NoLine(parts) => {
            let bad: Vec<&str> = run
                .lines
                .iter()
                .filter(|(_, l)| parts.iter().any(|p| l.contains(p)))
                .map(|(_, l)| printk_text(l))
                .collect();
            match bad.as_slice() {
                [] => Verdict::Pass(String::new()),
                [one] => Verdict::Fail((*one).to_string()),
                [first, ..] => Verdict::Fail(format!("{first} (and {} more)", bad.len() - 1)),
            }
        }
        Rule::Custom(f) => f(run),
    }
}

/// The kernel's `Memory: 216012K/261624K available (...)`: the total must be
/// close to the configured size (the kernel reserves a little, e.g. below 1 MiB).
fn memory_size(run: &Run) -> Verdict {
    let Some((_, line)) = run.find(&["Memory: ", "K available"]) else {
        return Verdict::Fail("no \"Memory: ...K available\" line".into());
    };
    let total = line
        .split_once("Memory: ")
        .and_then(|(_, rest)| rest.split_once('/'))
        .and_then(|(_, rest)| rest.split_once('K'))
        .and_then(|(kib, _)| kib.trim().parse::<u64>().ok());
    let configured = MEMORY_MIB * 1024;
    match total {
        Some(kib) if kib <= configured && kib * 100 >= configured * 95 => Verdict::Pass(format!(
            "{kib}K of {configured}K ({:.1}%)",
            kib as f64 * 100.0 / configured as f64
        )),
        Some(kib) => Verdict::Fail(format!(
            "{kib}K, expected 95-100% of {configured}K: {}",
            printk_text(line)
        )),
        None => Verdict::Fail(format!("cannot read the total: {}", printk_text(line))),
    }
}

/// The VM must end by itself: `panic=-1` resets it after init dies (Vireo:
/// exit 3 with --no-reboot, QEMU -no-reboot: 0), or init powers it off (0).
fn ended(run: &Run) -> Verdict {
    let what = describe_end(run.vmm, &run.end, run.elapsed);
    let ok = match (&run.end, run.vmm) {
        (End::Exited(s), Vmm::Vireo) => matches!(s.code(), Some(0 | 3)),
        (End::Exited(s), Vmm::Qemu) => s.code() == Some(0),
        (End::TimedOut | End::Stuck(_), _) => false,
    };
    if ok {
        Verdict::Pass(what)
    } else {
        Verdict::Fail(what)
    }
}

/// Vireo's exit code and its meaning (README, `vireo_api::MonitorExit`).
fn vireo_exit(code: Option<i32>) -> String {
    let meaning = match code {
        Some(0) => "guest powered off",
        Some(1) => "guest reported failure",
        Some(2) => "invalid configuration",
        Some(3) => "guest reset the machine",
        Some(4) => "guest triple-faulted",
        Some(5) => "KVM could not run the guest",
        Some(6) => "monitor failed",
        Some(7) => "monitor asked to stop",
        Some(_) => "unknown code",
        None => "killed by a signal",
    };
    match code {
        Some(c) => format!("exit {c} ({meaning})"),
        None => meaning.to_string(),
    }
}

fn passed(run: &Run, user_space: bool) -> bool {
    EXPECTATIONS
        .iter()
        .all(|e| !matches!(evaluate(run, e, user_space), Verdict::Fail(_)))
}

fn report(run: &Run, user_space: bool) {
    println!();
    println!(
        "{} with {} vCPU(s): {:.1} s, {}",
        run.vmm.name(),
        run.cpus,
        run.elapsed.as_secs_f64(),
        describe_end(run.vmm, &run.end, run.elapsed)
    );
    let mut failed = false;
    for e in EXPECTATIONS {
        let (tag, detail) = match evaluate(run, e, user_space) {
            Verdict::Pass(d) => ("PASS", d),
            Verdict::Fail(d) => {
                failed = true;
                ("FAIL", d)
            }
            Verdict::Skip(d) => ("SKIP", d),
        };
        println!("  {tag}  {:<26} {}", e.name, clip(&detail, 100));
    }
    match run.time_of(RUN_INIT) {
        Some(t) => println!(
            "  boot time to \"Run /init\": {:.1} s (host clock, from spawn)",
            t.as_secs_f64()
        ),
        None => println!("  boot time to \"Run /init\": not reached"),
    }
    println!("  console log: {}", run.log.display());
    if failed {
        println!(
            "  --- last {TAIL_LINES} console lines ({} in all):",
            run.lines.len()
        );
        for (t, l) in &run.lines[run.lines.len().saturating_sub(TAIL_LINES)..] {
            println!("  +{:8.2}s | {l}", t.as_secs_f64());
        }
        let code = run
            .exit_code()
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        println!("  --- exit code: {code}");
        let err: Vec<&str> = run.stderr.lines().collect();
        if err.is_empty() {
            println!("  --- stderr: (empty)");
        } else {
            println!("  --- stderr ({} lines, last 60 shown):", err.len());
            for l in &err[err.len().saturating_sub(60)..] {
                println!("  {l}");
            }
        }
    }
}

fn summary(runs: &[Run], cpus: &[u32]) {
    let get = |vmm: Vmm, n: u32| {
        runs.iter()
            .find(|r| r.vmm == vmm && r.cpus == n)
            .and_then(|r| r.time_of(RUN_INIT))
    };
    let have_qemu = runs.iter().any(|r| r.vmm == Vmm::Qemu);
    println!();
    println!("boot time to \"{RUN_INIT}\" (host clock, from spawn)");
    if have_qemu {
        println!(
            "{:>6} {:>12} {:>12} {:>11}",
            "vCPUs", "vireo", "qemu", "qemu/vireo"
        );
    } else {
        println!("{:>6} {:>12}", "vCPUs", "vireo");
    }
    let fmt =
        |t: Option<Duration>| t.map_or("-".to_string(), |t| format!("{:.1} s", t.as_secs_f64()));
    for &n in cpus {
        let v = get(Vmm::Vireo, n);
        if have_qemu {
            let q = get(Vmm::Qemu, n);
            let ratio = match (v, q) {
                (Some(v), Some(q)) => format!("{:.2}x", q.as_secs_f64() / v.as_secs_f64()),
                _ => "-".into(),
            };
            println!("{n:>6} {:>12} {:>12} {ratio:>11}", fmt(v), fmt(q));
        } else {
            println!("{n:>6} {:>12}", fmt(v));
        }
    }
}

/// A console line without its printk timestamp.
fn printk_text(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((ts, rest)) if ts.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n).collect();
        c.push_str("...");
        c
    }
}

/// The command as one could paste it into a shell.
fn shell_line(cmd: &Command) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// The KVM backend, and whether guest user space can run on it.
fn backend() -> (&'static str, bool) {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return ("kvm_pvm (guest kernel code emulated)", false);
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.contains(" vmx") {
        ("kvm_intel (VT-x)", true)
    } else if cpuinfo.contains(" svm") {
        ("kvm_amd (AMD-V)", true)
    } else {
        ("unknown", true)
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The two system calls std does not offer.
mod sys {
    use std::os::raw::c_int;

    extern "C" {
        fn kill(pid: c_int, sig: c_int) -> c_int;
        fn prctl(option: c_int, ...) -> c_int;
    }

    const SIGKILL: c_int = 9;
    const PR_SET_PDEATHSIG: c_int = 1;

    /// SIGKILL to the process group `pgid` (a child spawned with
    /// `process_group(0)`, not yet reaped, so the id is still its own).
    pub fn kill_group(pgid: u32) {
        let Ok(pgid) = c_int::try_from(pgid) else {
            return;
        };
        // SAFETY: kill(2) has no memory effects; a negative pid names a group.
        unsafe {
            kill(-pgid, SIGKILL);
        }
    }

    /// In a child before exec: be killed when xtask dies (Ctrl-C), since the
    /// child's own process group does not get the terminal's signals.
    pub fn die_with_parent() -> std::io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes an integer and touches no memory.
        let r = unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL as std::os::raw::c_ulong) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str], code: i32) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            vmm: Vmm::Vireo,
            cpus: 2,
            marker: "vireo_test=x".into(),
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, l)| (Duration::from_secs(i as u64), l.to_string()))
                .collect(),
            end: End::Exited(ExitStatus::from_raw(code << 8)),
            elapsed: Duration::from_secs(9),
            stderr: String::new(),
            log: PathBuf::new(),
        }
    }

    const GOOD: &[&str] = &[
        "[    0.000000] Linux version 6.12.117 (vireo@xtask) #1",
        "[    0.000000] Command line: console=ttyS0 panic=-1 vireo_test=x",
        "[    0.010000] ACPI: RSDP 0x00000000000F0000 000024 (v02 BOCHS )",
        "[    0.500000] ACPI: Interpreter enabled",
        "[    0.100000] smp: Brought up 1 node, 2 CPUs",
        "[    0.200000] Memory: 216012K/261624K available (4096K kernel code)",
        "[    2.000000] pci 0000:00:01.0: [1af4:1044] type 00 class 0x00ff00 conventional PCI endpoint",
        "[    2.100000] pci 0000:00:02.0: [1af4:1042] type 00 class 0x010000 conventional PCI endpoint",
        "[    8.000000] virtio_blk virtio1: [vda] 16384 512-byte logical blocks (8.39 MB/8.00 MiB)",
        "[    9.000000] Run /init as init process",
    ];

    #[test]
    fn a_good_boot_passes_without_user_space() {
        assert!(passed(&run(GOOD, 3), false));
        // With user space, init's report is required.
        assert!(!passed(&run(GOOD, 3), true));
    }

    #[test]
    fn each_missing_line_fails() {
        for (skip, missing) in GOOD.iter().enumerate() {
            let lines: Vec<&str> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            assert!(!passed(&run(&lines, 3), false), "without {missing}");
        }
    }

    #[test]
    fn errors_wrong_counts_and_exits_fail() {
        let mut lines = GOOD.to_vec();
        lines.push("[    0.3] ACPI Error: AE_NOT_FOUND");
        assert!(!passed(&run(&lines, 3), false));
        let lines: Vec<&str> = GOOD
            .iter()
            .map(|l| {
                if l.contains("smp:") {
                    "smp: Brought up 1 node, 1 CPU"
                } else {
                    l
                }
            })
            .collect();
        assert!(!passed(&run(&lines, 3), false));
        let lines: Vec<&str> = GOOD
            .iter()
            .map(|l| {
                if l.contains("Memory:") {
                    "Memory: 1K/131072K available"
                } else {
                    l
                }
            })
            .collect();
        assert!(!passed(&run(&lines, 3), false));
        assert!(!passed(&run(GOOD, 4), false));
        assert!(passed(&run(GOOD, 0), false));
    }

    #[test]
    fn printk_timestamps_are_stripped() {
        assert_eq!(printk_text("[    1.250000] Run /init"), "Run /init");
        assert_eq!(printk_text("[x] y"), "[x] y");
        assert_eq!(printk_text("plain"), "plain");
    }

    fn quick_options() -> Options {
        Options {
            cpus: vec![1],
            timeout: Duration::from_secs(2),
            qemu: false,
            quiet: true,
            append: String::new(),
            uncompressed_initrd: false,
        }
    }

    fn shell(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn alive(pid: &str) -> bool {
        // Gone, or a zombie waiting for its new parent to reap it.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn the_timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("vireo-xtask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let pidfile = dir.join("grandchild");
        let script = format!(
            "echo 'Linux version test'; sleep 60 & echo $! > {}; wait",
            pidfile.display()
        );
        let started = Instant::now();
        let run = boot(
            Vmm::Vireo,
            shell(&script),
            1,
            "m".into(),
            dir.join("timeout.log"),
            &quick_options(),
        )
        .expect("boot");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(run.end, End::TimedOut));
        assert_eq!(run.lines.len(), 1);
        assert!(matches!(ended(&run), Verdict::Fail(_)));
        let pid = std::fs::read_to_string(&pidfile).expect("pid file");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(pid.trim()), "the grandchild survived the timeout");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_stuck_qemu_is_ended_early_and_its_stderr_kept() {
        let dir = std::env::temp_dir().join(format!("vireo-xtask-stuck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let mut opts = quick_options();
        opts.timeout = Duration::from_secs(30);
        let started = Instant::now();
        let run = boot(
            Vmm::Qemu,
            shell("echo 'KVM internal error. Suberror: 1' >&2; echo RIP=1 >&2; sleep 60"),
            1,
            "m".into(),
            dir.join("stuck.log"),
            &opts,
        )
        .expect("boot");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(run.end, End::Stuck(_)));
        assert!(run.stderr.contains("RIP=1"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_exiting_process_ends_the_run_with_its_status() {
        let dir = std::env::temp_dir().join(format!("vireo-xtask-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let run = boot(
            Vmm::Vireo,
            shell("printf 'a\\r\\nb'; echo oops >&2; exit 3"),
            1,
            "m".into(),
            dir.join("exit.log"),
            &quick_options(),
        )
        .expect("boot");
        assert_eq!(run.exit_code(), Some(3));
        let lines: Vec<&str> = run.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(run.stderr, "oops\n");
        let log = std::fs::read_to_string(dir.join("exit.log")).expect("log");
        assert!(log.contains("exit 3 (guest reset the machine)"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
