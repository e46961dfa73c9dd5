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
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "vireo-monitor",
            "-p",
            "vireo-cli",
            "-p",
            "vireo-daemon",
        ]);
        if release {
            cmd.arg("--release");
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = cmd.current_dir(root).status().expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
        dir
    })
}

/// Path of a workspace binary (`vireo`, `vireo-vmm`, `vireod`).
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

/// A network namespace created for one test and deleted when dropped, so
/// tests can make TAP devices and addresses without touching the host's
/// network.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with its loopback up, or says why not (no
    /// `ip`, no permission) and returns `None`: the caller skips.
    pub fn new(test: &str, name: &str) -> Option<NetNs> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        match Command::new("ip").args(["netns", "add", name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "SKIPPED {test}: cannot create a network namespace (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run ip (apt-get install iproute2): {e}");
                return None;
            }
        }
        let ns = NetNs {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Runs `ip ARGS` inside the namespace; panics with its output on failure.
    pub fn ip(&self, args: &[&str]) {
        let o = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            o.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Reads a file of /sys/class/net/IFACE inside the namespace.
    pub fn sys_net(&self, iface: &str, file: &str) -> String {
        let o = self
            .exec(&["cat", &format!("/sys/class/net/{iface}/{file}")])
            .output()
            .expect("running cat in the namespace");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// `cmd` (program and arguments) run inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        c
    }

    /// `command` (built for the host) run inside the namespace instead.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args());
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A scratch directory removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory named after `name` and this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// A sparse raw disk image of `bytes` zero bytes.
    pub fn disk(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.path(name);
        let file = std::fs::File::create(&path).expect("creating the disk image");
        file.set_len(bytes).expect("sizing the disk image");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes of a disk sector.
pub const SECTOR: usize = 512;

/// What the guest's virtio-blk scenario writes to sector `lba`: the line
/// `<pattern> lba <lba>\n` repeated and cut at 512 bytes.
pub fn sector_pattern(pattern: &str, lba: u64) -> Vec<u8> {
    let line = format!("{pattern} lba {lba}\n");
    line.bytes().cycle().take(SECTOR).collect()
}

/// Checks, from the host side, that sectors `start..start + count` of the
/// image hold the guest's pattern and the sector before is untouched.
pub fn assert_pattern_in_file(path: &Path, pattern: &str, start: u64, count: u64) {
    let bytes = std::fs::read(path).expect("reading the disk image back");
    for lba in start..start + count {
        let at = lba as usize * SECTOR;
        assert_eq!(
            bytes[at..at + SECTOR],
            sector_pattern(pattern, lba)[..],
            "sector {lba} of {} does not hold the guest's pattern",
            path.display()
        );
    }
    if start > 0 {
        let before = (start as usize - 1) * SECTOR;
        assert!(
            bytes[before..before + SECTOR].iter().all(|&b| b == 0),
            "sector {} (before the range) was written",
            start - 1
        );
    }
}
