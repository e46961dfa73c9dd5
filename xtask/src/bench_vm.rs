//! What the device benchmarks (`bench blk`, `bench net`) share: the two VMMs' command
//! lines for the test guest with PCI devices, running a guest scenario with a timeout
//! while its console lines stream in, a result column that may be "n/a", and the
//! clean-up guards (scratch directory, TAP device, child process).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::workspace_root;

/// Guest RAM for the device benchmarks (the guest's buffers take at most a few MiB).
pub const MEMORY_MIB: u64 = 256;

/// QEMU's exit code for a passing guest (isa-debug-exit: (status << 1) | 1).
const QEMU_PASS: i32 = vireo_test_guest::qemu_exit_code(vireo_test_guest::STATUS_PASS);

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    Vireo,
}

/// QEMU microvm with a PCIe host bridge and ACPI (as crates/e2e/tests/pci_qemu.rs runs
/// it), the test guest with `cmdline`, and `devices` (more QEMU arguments).
pub fn qemu_command(qemu: &Path, cmdline: &str, devices: &[String]) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=on,pic=on,acpi=on,pcie=on",
    ])
    .args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"])
    .args(["-m", &MEMORY_MIB.to_string(), "-smp", "1"])
    .args(["-nodefaults", "-no-user-config", "-nographic"])
    .args(["-serial", "stdio", "-kernel"])
    .arg(vireo_test_guest::elf_path())
    .args(["-append", cmdline])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    .args(devices);
    c
}

/// vireo-vmm with the test guest, `cmdline`, and `devices` (more monitor arguments).
pub fn vireo_command(vmm: &Path, cmdline: &str, devices: &[String]) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(vireo_test_guest::elf_path())
        .args(["--cmdline", cmdline, "--cpus", "1"])
        .args(["--memory", &format!("{MEMORY_MIB}M"), "--serial", "stdio"])
        .args(devices);
    c
}

/// The release monitor, built first.
pub fn build_vireo() -> anyhow::Result<PathBuf> {
    crate::cargo(&["build", "--release", "--quiet", "-p", "vireo-monitor"])?;
    Ok(workspace_root().join("target/release/vireo-vmm"))
}

/// A child process killed (and reaped) when dropped, so no VM outlives an error.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// How a guest run ended.
#[derive(Debug)]
pub struct Finished {
    /// Every console line.
    pub lines: Vec<String>,
    /// The process's exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// The monitor's stderr.
    pub stderr: String,
}

impl Finished {
    /// Why the run does not count as a pass, if it does not: the guest's FAIL line, or
    /// the exit status with the last lines of stderr.
    pub fn failure(&self, vmm: Vmm, scenario: &str) -> Option<String> {
        let pass_code = match vmm {
            Vmm::Qemu => QEMU_PASS,
            Vmm::Vireo => 0,
        };
        let passed = self
            .lines
            .iter()
            .any(|l| l.trim_end() == vireo_test_guest::pass_line(scenario));
        if passed && self.code == Some(pass_code) {
            return None;
        }
        let guest = self.lines.iter().rev().find(|l| {
            l.starts_with(vireo_test_guest::FAIL_PREFIX)
                || l.starts_with(vireo_test_guest::EXCEPTION_PREFIX)
                || l.starts_with(vireo_test_guest::PANIC_PREFIX)
        });
        let stderr: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = stderr[stderr.len().saturating_sub(3)..].join(" | ");
        let mut why = format!("exit status {:?}", self.code);
        if let Some(g) = guest {
            why.push_str(&format!("; guest: {}", g.trim_end()));
        }
        if !tail.is_empty() {
            why.push_str(&format!("; stderr: {tail}"));
        }
        Some(why)
    }
}

/// Runs `cmd` (a VMM with the test guest on stdio), hands every console line to
/// `on_line` as it arrives, and returns when the process exits. After `timeout` the
/// process is killed and this fails.
pub fn run_guest(
    mut cmd: Command,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = ChildGuard(
        cmd.spawn()
            .with_context(|| format!("cannot start {program}"))?,
    );
    let stdout = child.0.stdout.take().context("the child's stdout")?;
    let mut stderr = child.0.stderr.take().context("the child's stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{program} did not finish within {} s (last line: {:?})",
                timeout.as_secs(),
                lines.last().map(String::as_str).unwrap_or("")
            );
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                on_line(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // stdout closed: the process is ending.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let code = loop {
        if let Some(status) = child.0.try_wait()? {
            break status.code();
        }
        if Instant::now() > deadline {
            bail!("{program} closed its output but did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Finished {
        lines,
        code,
        stderr,
    })
}

/// The `key=value` words of a result line (after its `<prefix>: <kind>`).
pub fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// A numeric field of a result line.
pub fn field_f64(line: &str, key: &str) -> anyhow::Result<f64> {
    let value = fields(line)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .with_context(|| format!("no {key}= in the guest's line '{line}'"))?;
    value
        .parse()
        .with_context(|| format!("{key}={value} in the guest's line '{line}' is not a number"))
}

/// A directory under the workspace's target/ (the file system of the build), removed
/// when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `target/<prefix><pid>`; first removes directories of earlier runs with the same
    /// prefix whose process is gone (a run killed by a signal skips its Drop).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let target = workspace_root().join("target");
        if let Ok(entries) = std::fs::read_dir(&target) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale(&name, prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = target.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the scratch directory {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Whether `name` is `<prefix><pid>` of a process that no longer exists.
fn stale(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .is_some_and(|pid| {
            pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists()
        })
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run 'ip' (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A persistent TAP device (`ip tuntap add ... mode tap vnet_hdr`, up), deleted when
/// dropped.
pub struct Tap {
    pub name: String,
}

impl Tap {
    /// `<prefix><pid>` (at most 15 characters); removes stale TAPs with the same prefix
    /// first.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale(&name, prefix) {
                    let _ = ip(&["link", "del", &name]);
                }
            }
        }
        let name = format!("{prefix}{}", std::process::id());
        if name.len() > 15 {
            bail!("TAP name {name} is longer than 15 characters");
        }
        ip(&["tuntap", "add", "dev", &name, "mode", "tap", "vnet_hdr"]).with_context(|| {
            format!(
                "cannot create TAP device {name}: this needs root (CAP_NET_ADMIN) and /dev/net/tun"
            )
        })?;
        let tap = Self { name };
        ip(&["link", "set", &tap.name, "up"])?;
        Ok(tap)
    }

    /// The TAP's MAC address (the host side of the link).
    pub fn mac(&self) -> anyhow::Result<String> {
        let path = format!("/sys/class/net/{}/address", self.name);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_string())
    }

    /// A counter from /sys/class/net/<tap>/statistics.
    pub fn stat(&self, counter: &str) -> anyhow::Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/{counter}", self.name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.trim()
            .parse()
            .with_context(|| format!("{path}: '{}' is not a number", text.trim()))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", &self.name]) {
            eprintln!("warning: cannot delete TAP device {}: {e:#}", self.name);
        }
    }
}

/// A table cell: a value, or why there is none.
pub fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "n/a".into(),
    }
}

/// `a / b` as "0.87x" (or "-").
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}
