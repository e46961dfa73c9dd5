//! Helpers for the end-to-end tests in `tests/`: locating (and building) the
//! real binaries, running them with a hard timeout, and skipping loudly when
//! the host has no /dev/kvm.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use vireo_api::MonitorExit;

/// Every test VM is killed after this long: nothing may hang CI.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Every test VM is stopped after this many exits to the monitor.
pub const EXIT_BUDGET: u64 = 1_000_000;

/// Whether /dev/kvm can be used. When it cannot, prints why: KVM tests then
/// return early, loudly, instead of passing silently.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: /dev/kvm is not usable here ({e})");
            false
        }
    }
}

/// Whether guest kernel code is emulated (the kvm_pvm backend; see
/// shared/kvm-host.md), which changes what some instructions do.
pub fn emulated_backend() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The directory holding the workspace's binaries for this test's profile,
/// built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Test executables live in target/<profile>/deps.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "vireo-monitor", "-p", "vireo-cli"]);
        if release {
            cmd.arg("--release");
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = cmd.current_dir(root).status().expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
        dir
    })
}

/// Path of a workspace binary (`vireo`, `vireo-vmm`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (None if killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Whether the process ended with `e`.
    pub fn ended(&self, e: MonitorExit) -> bool {
        self.code == Some(i32::from(e.code()))
    }

    /// Panics with the whole output unless the exit matches `e`.
    #[track_caller]
    pub fn expect_exit(&self, e: MonitorExit) -> &Self {
        assert!(
            self.ended(e),
            "expected exit {e:?} ({}), got {:?}\n{self}",
            e.code(),
            self.code
        );
        self
    }

    /// Panics unless stdout contains `text`.
    #[track_caller]
    pub fn expect_stdout(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text), "stdout lacks {text:?}\n{self}");
        self
    }

    /// Panics unless stderr contains `text`.
    #[track_caller]
    pub fn expect_stderr(&self, text: &str) -> &Self {
        assert!(self.stderr.contains(text), "stderr lacks {text:?}\n{self}");
        self
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with `input` on stdin, killing it after [`TIMEOUT`].
pub fn run(mut cmd: Command, input: &[u8]) -> Finished {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // Keep stdin open until the process ends, like a terminal would.
        std::thread::sleep(TIMEOUT);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            break status.code();
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&o.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not finish within {TIMEOUT:?}; stdout so far:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(feeder);
    Finished {
        code,
        stdout: String::from_utf8_lossy(&o.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&e.join().unwrap_or_default()).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// `vireo-vmm` with the test guest, `cmdline`, extra arguments and the
/// standard exit budget.
pub fn vmm(cmdline: &str, extra: &[&str]) -> Command {
    let mut c = vmm_unlimited(cmdline, extra);
    c.args(["--exit-budget", &EXIT_BUDGET.to_string()]);
    c
}

/// `vireo-vmm` with the test guest, `cmdline` and extra arguments only.
pub fn vmm_unlimited(cmdline: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(bin("vireo-vmm"));
    c.arg("--kernel")
        .arg(vireo_test_guest::elf_path())
        .args(["--cmdline", cmdline])
        .args(extra);
    c
}

/// Boots the test guest in vireo-vmm and waits for it to end.
pub fn boot(cmdline: &str, extra: &[&str]) -> Finished {
    run(vmm(cmdline, extra), b"")
}

/// QEMU booting the same test guest (microvm, PVH, isa-debug-exit), if
/// qemu-system-x86_64 is installed.
pub fn qemu(cmdline: &str, cpus: u32, mem_mib: u64) -> Option<Command> {
    let path = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())?;
    let mut c = Command::new(path);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=on,pic=on",
    ])
    .args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"])
    .args(["-smp", &cpus.to_string(), "-m", &format!("{mem_mib}M")])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(vireo_test_guest::elf_path())
    .args([
        "-append",
        cmdline,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]);
    Some(c)
}
