//! Guest assets for the Linux boot test, built from Debian packages into a
//! cache outside the repository (`${XDG_CACHE_HOME:-$HOME/.cache}/vireo/guest-linux`).
//!
//! - `cargo xtask guest-kernel [--force]`: a small kernel from `linux-source-6.12`
//!   with `guest-linux/patches/*.patch` applied: `make tinyconfig`,
//!   `guest-linux/test-kernel.fragment` merged with
//!   `scripts/kconfig/merge_config.sh`, `make olddefconfig`, `make vmlinux bzImage`.
//! - `cargo xtask initramfs [--force]`: a gzipped cpio (newc) with
//!   `busybox-static` and `guest-linux/init`, byte-for-byte reproducible.
//!
//! Each artefact lives in `<cache>/<hash>/`, the hash covering everything that
//! goes into it; it is rebuilt only when an input changes. Missing Debian
//! packages are installed with apt-get (the command says which).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::workspace_root;

/// The kernel source package and the tarball it installs.
const LINUX_SOURCE_PACKAGE: &str = "linux-source-6.12";
const LINUX_SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// The directory the tarball unpacks into.
const LINUX_SOURCE_DIR: &str = "linux-source-6.12";
/// The config fragment and the init script, relative to the workspace root.
const FRAGMENT: &str = "guest-linux/test-kernel.fragment";
/// Patches applied to the unpacked source (`patch -p1`), in name order.
const PATCHES: &str = "guest-linux/patches";
const INIT_SCRIPT: &str = "guest-linux/init";

/// How the kernel is built. Part of the cache key: change the version when the
/// steps in `build_kernel` change in a way that changes the output.
const KERNEL_RECIPE: &str =
    "kernel v2: patches; tinyconfig + merge_config.sh -m fragment; olddefconfig; \
    vmlinux bzImage; KBUILD_BUILD_USER=vireo KBUILD_BUILD_HOST=xtask \
    KBUILD_BUILD_TIMESTAMP=fixed KBUILD_BUILD_VERSION=1";
const KBUILD_TIMESTAMP: &str = "Wed Jan  1 00:00:00 UTC 2025";

/// How the initramfs is built (part of its cache key).
const INITRAMFS_RECIPE: &str =
    "initramfs v2: newc, mtime 0, uid 0; initramfs.cpio.gz (gzip -n -9) and initramfs.cpio";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const BUSYBOX: &str = "/bin/busybox";
/// Busybox applets the init script uses, linked in /bin.
const APPLETS: &[&str] = &[
    "sh", "mount", "grep", "sed", "cat", "ls", "poweroff", "echo", "dmesg", "uname", "sleep",
];

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Uncompressed ELF with the PVH entry note.
    pub vmlinux: PathBuf,
    /// `arch/x86/boot/bzImage`.
    pub bzimage: PathBuf,
}

/// `cargo xtask guest-kernel [--force]`.
pub fn kernel_main(args: &[String]) -> anyhow::Result<()> {
    let force = parse_force(args, "guest-kernel")?;
    let k = ensure_kernel(force)?;
    println!("vmlinux: {}", k.vmlinux.display());
    println!("bzImage: {}", k.bzimage.display());
    Ok(())
}

/// `cargo xtask initramfs [--force]`.
pub fn initramfs_main(args: &[String]) -> anyhow::Result<()> {
    let force = parse_force(args, "initramfs")?;
    let initramfs = ensure_initramfs(force)?;
    println!("initramfs: {}", initramfs.gzip.display());
    println!("initramfs (uncompressed): {}", initramfs.cpio.display());
    Ok(())
}

fn parse_force(args: &[String], job: &str) -> anyhow::Result<bool> {
    match args {
        [] => Ok(false),
        [f] if f == "--force" => Ok(true),
        _ => bail!("usage: cargo xtask {job} [--force]"),
    }
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/vireo/guest-linux`, created if needed.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    let dir = base.join("vireo/guest-linux");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Returns the cached kernel for the current inputs, building it if needed.
pub fn ensure_kernel(force: bool) -> anyhow::Result<Kernel> {
    let fragment_path = workspace_root().join(FRAGMENT);
    let fragment = fs::read_to_string(&fragment_path)
        .with_context(|| format!("reading {}", fragment_path.display()))?;
    let patches = kernel_patches()?;
    ensure_packages(&kernel_needs())?;
    let version = package_version(LINUX_SOURCE_PACKAGE)?;
    let gcc = first_line_of("gcc", &["--version"])?;
    let mut patch_parts: Vec<&[u8]> = Vec::new();
    for (name, text) in &patches {
        patch_parts.push(name.as_bytes());
        patch_parts.push(text);
    }
    let mut parts: Vec<&[u8]> = vec![
        KERNEL_RECIPE.as_bytes(),
        version.as_bytes(),
        gcc.as_bytes(),
        fragment.as_bytes(),
    ];
    parts.extend(&patch_parts);
    let key = hash(&parts)?;
    // The unpacked tree depends on the package and the patches only.
    let tree_key = format!("{version} patches {}", hash(&patch_parts)?);
    let cache = cache_dir()?;
    let out = cache.join(&key);
    let kernel = Kernel {
        vmlinux: out.join("vmlinux"),
        bzimage: out.join("bzImage"),
    };
    if !force && out.join("complete").is_file() {
        println!(
            "guest kernel up to date ({LINUX_SOURCE_PACKAGE} {version}, {})",
            out.display()
        );
        print_config_warnings(&out);
        return Ok(kernel);
    }

    let _lock = Lock::take(&cache.join("kernel-build.lock"))?;
    println!("building the guest kernel from {LINUX_SOURCE_PACKAGE} {version} ({gcc})");
    let started = Instant::now();
    let src = unpack_source(&cache, &tree_key, &patches)?;
    let build = cache.join("build");
    // A build tree belongs to one source tree.
    if fs::read_to_string(build.join("vireo-source-version"))
        .ok()
        .as_deref()
        != Some(&tree_key)
    {
        remove_dir_if_present(&build)?;
    }
    fs::create_dir_all(&build)?;
    fs::write(build.join("vireo-source-version"), &tree_key)?;
    let log_path = build.join("build.log");
    let mut log = fs::File::create(&log_path)?;
    writeln!(
        log,
        "# {KERNEL_RECIPE}\n# {LINUX_SOURCE_PACKAGE} {version}; {gcc}"
    )?;

    let step = |what: &str, log: &mut fs::File, cmd: &mut Command| -> anyhow::Result<()> {
        let t = Instant::now();
        print!("  {what} ... ");
        std::io::stdout().flush().ok();
        writeln!(log, "\n# {what}")?;
        log.flush()?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .status()
            .with_context(|| format!("cannot run {what}"))?;
        if !status.success() {
            println!("failed");
            print_tail(&log_path, 40);
            bail!("{what} failed ({status}); full log: {}", log_path.display());
        }
        println!("{:.1} s", t.elapsed().as_secs_f64());
        Ok(())
    };
    let make = |args: &[&str]| {
        let mut c = Command::new("nice");
        c.args(["-n", "10", "make", "-C"])
            .arg(&src)
            .arg(format!("O={}", build.display()))
            .args(args);
        kbuild_env(&mut c);
        c
    };
    step("make tinyconfig", &mut log, &mut make(&["tinyconfig"]))?;
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    // The script writes temporary files into its working directory.
    merge
        .current_dir(&build)
        .args(["-m", "-O"])
        .arg(&build)
        .arg(build.join(".config"))
        .arg(&fragment_path);
    kbuild_env(&mut merge);
    step("merge_config.sh -m (fragment)", &mut log, &mut merge)?;
    step("make olddefconfig", &mut log, &mut make(&["olddefconfig"]))?;
    let config = fs::read_to_string(build.join(".config")).context("reading the final .config")?;
    let dropped = check_config(&fragment, &config);

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let jobs = format!("-j{jobs}");
    step(
        &format!("make {jobs} vmlinux bzImage"),
        &mut log,
        &mut make(&[&jobs, "vmlinux", "bzImage"]),
    )?;

    let tmp = cache.join(format!("{key}.tmp"));
    remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    fs::copy(build.join("vmlinux"), tmp.join("vmlinux"))?;
    fs::copy(build.join("arch/x86/boot/bzImage"), tmp.join("bzImage"))?;
    fs::write(tmp.join("config"), &config)?;
    fs::write(tmp.join("test-kernel.fragment"), &fragment)?;
    let names: Vec<&str> = patches.iter().map(|(n, _)| n.as_str()).collect();
    fs::write(tmp.join("patches.txt"), names.join("\n"))?;
    fs::write(tmp.join("config-warnings.txt"), dropped.join("\n"))?;
    fs::copy(&log_path, tmp.join("build.log"))?;
    fs::write(
        tmp.join("complete"),
        format!("{KERNEL_RECIPE}\n{LINUX_SOURCE_PACKAGE} {version}\n{gcc}\n"),
    )?;
    remove_dir_if_present(&out)?;
    fs::rename(&tmp, &out)?;
    println!(
        "guest kernel built in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    print_config_warnings(&out);
    Ok(kernel)
}

/// Environment for kbuild: nothing inherited that changes the build, fixed
/// identity strings so the banner does not depend on who built it.
fn kbuild_env(c: &mut Command) {
    for v in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "ARCH",
        "CROSS_COMPILE",
        "KCONFIG_CONFIG",
        "KBUILD_OUTPUT",
        "CC",
        "LLVM",
    ] {
        c.env_remove(v);
    }
    c.env("KBUILD_BUILD_USER", "vireo")
        .env("KBUILD_BUILD_HOST", "xtask")
        .env("KBUILD_BUILD_TIMESTAMP", KBUILD_TIMESTAMP)
        .env("KBUILD_BUILD_VERSION", "1");
}

/// The fragment's `CONFIG_` lines that did not survive into the final
/// configuration, each with what the configuration says instead.
fn check_config(fragment: &str, config: &str) -> Vec<String> {
    let mut dropped = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(sym) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
            .filter(|s| s.starts_with("CONFIG_"))
        {
            // "Not set" also holds when the symbol is not visible at all.
            let set = format!("{sym}=");
            if let Some(actual) = config.lines().find(|l| l.starts_with(&set)) {
                dropped.push(format!("{line}  (final: {actual})"));
            }
        } else if let Some((sym, _)) = line
            .split_once('=')
            .filter(|(s, _)| s.starts_with("CONFIG_"))
        {
            if !config.lines().any(|l| l == line) {
                let set = format!("{sym}=");
                let unset = format!("# {sym} is not set");
                let actual = config
                    .lines()
                    .find(|l| l.starts_with(&set) || *l == unset)
                    .unwrap_or("absent");
                dropped.push(format!("{line}  (final: {actual})"));
            }
        }
    }
    dropped
}

fn print_config_warnings(out: &Path) {
    let text = fs::read_to_string(out.join("config-warnings.txt")).unwrap_or_default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        println!("warning: fragment line lost in olddefconfig: {line}");
    }
}

/// The kernel patches: (file name, contents), in name order.
fn kernel_patches() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = workspace_root().join(PATCHES);
    let mut patches = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(patches),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "patch") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            patches.push((name, text));
        }
    }
    patches.sort();
    Ok(patches)
}

/// Unpacks the kernel source into `<cache>/src` and applies the patches,
/// once per `tree_key` (package version and patches).
fn unpack_source(
    cache: &Path,
    tree_key: &str,
    patches: &[(String, Vec<u8>)],
) -> anyhow::Result<PathBuf> {
    let src = cache.join("src");
    let tree = src.join(LINUX_SOURCE_DIR);
    let stamp = src.join("vireo-tree");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(tree_key) && tree.is_dir() {
        return Ok(tree);
    }
    let t = Instant::now();
    print!("  unpacking {LINUX_SOURCE_TARBALL} ... ");
    std::io::stdout().flush().ok();
    remove_dir_if_present(&src)?;
    let tmp = cache.join("src.tmp");
    remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(LINUX_SOURCE_TARBALL)
        .arg("-C")
        .arg(&tmp)
        .status()
        .context("cannot run tar")?;
    if !status.success() || !tmp.join(LINUX_SOURCE_DIR).is_dir() {
        bail!("unpacking {LINUX_SOURCE_TARBALL} failed ({status})");
    }
    println!("{:.1} s", t.elapsed().as_secs_f64());
    for (name, text) in patches {
        println!("  applying {PATCHES}/{name}");
        let mut child = Command::new("patch")
            .args(["-p1", "--forward", "--batch", "--quiet"])
            .current_dir(tmp.join(LINUX_SOURCE_DIR))
            .stdin(Stdio::piped())
            .spawn()
            .context("cannot run patch")?;
        child
            .stdin
            .take()
            .context("patch stdin")?
            .write_all(text)
            .with_context(|| format!("feeding {name} to patch"))?;
        let status = child.wait()?;
        if !status.success() {
            bail!("{PATCHES}/{name} does not apply to {LINUX_SOURCE_TARBALL} ({status})");
        }
    }
    fs::write(tmp.join("vireo-tree"), tree_key)?;
    fs::rename(&tmp, &src)?;
    Ok(tree)
}

/// A built initramfs in the cache, in two encodings of the same archive.
#[derive(Debug, Clone)]
pub struct Initramfs {
    /// `initramfs.cpio.gz`: what the test boots by default.
    pub gzip: PathBuf,
    /// `initramfs.cpio`: the same, uncompressed. Where guest kernel code is
    /// emulated, inflating the gzip one costs the kernel about a minute.
    pub cpio: PathBuf,
}

/// Returns the cached initramfs for the current inputs, building it if needed.
pub fn ensure_initramfs(force: bool) -> anyhow::Result<Initramfs> {
    let init_path = workspace_root().join(INIT_SCRIPT);
    let init = fs::read(&init_path).with_context(|| format!("reading {}", init_path.display()))?;
    ensure_packages(&[Need {
        package: BUSYBOX_PACKAGE,
        why: "the initramfs",
        present: busybox_static_installed,
    }])?;
    let version = package_version(BUSYBOX_PACKAGE)?;
    let applets = APPLETS.join(" ");
    let key = hash(&[
        INITRAMFS_RECIPE.as_bytes(),
        applets.as_bytes(),
        version.as_bytes(),
        &init,
    ])?;
    let cache = cache_dir()?;
    let out = cache.join(&key);
    let initramfs = Initramfs {
        gzip: out.join("initramfs.cpio.gz"),
        cpio: out.join("initramfs.cpio"),
    };
    if !force && initramfs.gzip.is_file() && initramfs.cpio.is_file() {
        println!(
            "initramfs up to date ({BUSYBOX_PACKAGE} {version}, {})",
            out.display()
        );
        return Ok(initramfs);
    }
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "root"] {
        cpio.entry(dir, 0o040_755, (0, 0), &[]);
    }
    // The kernel opens /dev/console before /init can mount devtmpfs.
    cpio.entry("dev/console", 0o020_600, (5, 1), &[]);
    cpio.entry("bin/busybox", 0o100_755, (0, 0), &busybox);
    for applet in APPLETS {
        cpio.entry(&format!("bin/{applet}"), 0o120_777, (0, 0), b"busybox");
    }
    cpio.entry("init", 0o100_755, (0, 0), &init);
    let archive = cpio.finish();
    let gz = gzip(&archive)?;

    let tmp = cache.join(format!("{key}.tmp"));
    remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    fs::write(tmp.join("initramfs.cpio.gz"), &gz)?;
    fs::write(tmp.join("initramfs.cpio"), &archive)?;
    fs::write(tmp.join("init"), &init)?;
    remove_dir_if_present(&out)?;
    fs::rename(&tmp, &out)?;
    println!(
        "initramfs built ({} KiB gzip, {} KiB cpio, {BUSYBOX_PACKAGE} {version}): {}",
        gz.len() / 1024,
        archive.len() / 1024,
        out.display()
    );
    Ok(initramfs)
}

/// A cpio archive in the "newc" format the kernel unpacks, with every
/// timestamp 0 and every file owned by root, so equal inputs give equal bytes.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        self.header(self.next_ino, mode, nlink, body.len(), rdev, name);
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: usize,
        (rmajor, rminor): (u32, u32),
        name: &str,
    ) {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(size).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            rmajor,
            rminor,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!");
        self.data
    }
}

/// gzip without a file name or timestamp in the header.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("gzip stdout")?
        .read_to_end(&mut out)?;
    let status = child.wait()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))?
        .context("writing to gzip")?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    Ok(out)
}

/// Something the build needs from a Debian package.
struct Need {
    package: &'static str,
    why: &'static str,
    present: fn() -> bool,
}

fn kernel_needs() -> Vec<Need> {
    fn tool(name: &str) -> bool {
        crate::linux::which(name).is_some()
    }
    vec![
        Need {
            package: LINUX_SOURCE_PACKAGE,
            why: "the kernel source",
            present: || Path::new(LINUX_SOURCE_TARBALL).is_file(),
        },
        Need {
            package: "make",
            why: "kbuild",
            present: || tool("make"),
        },
        Need {
            package: "gcc",
            why: "the compiler",
            present: || tool("gcc"),
        },
        Need {
            package: "flex",
            why: "kconfig",
            present: || tool("flex"),
        },
        Need {
            package: "bison",
            why: "kconfig",
            present: || tool("bison"),
        },
        Need {
            package: "bc",
            why: "kbuild",
            present: || tool("bc"),
        },
        Need {
            package: "xz-utils",
            why: "the source tarball and the compressed bzImage",
            present: || tool("xz"),
        },
        Need {
            package: "patch",
            why: "guest-linux/patches",
            present: || tool("patch"),
        },
        Need {
            package: "libelf-dev",
            why: "objtool",
            present: || Path::new("/usr/include/gelf.h").is_file(),
        },
    ]
}

fn busybox_static_installed() -> bool {
    Path::new(BUSYBOX).is_file() && package_version(BUSYBOX_PACKAGE).is_ok()
}

/// Installs the packages of the needs that are missing, saying so.
fn ensure_packages(needs: &[Need]) -> anyhow::Result<()> {
    let missing: Vec<&Need> = needs.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    for n in &missing {
        println!("missing: {} (for {})", n.package, n.why);
    }
    let is_root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !is_root {
        bail!(
            "install them first: sudo apt-get install --no-install-recommends {}",
            packages.join(" ")
        );
    }
    println!(
        "installing with apt-get: {} (Debian packages)",
        packages.join(" ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().context("cannot run apt-get")?.success() {
        // Perhaps the package lists are stale or absent.
        Command::new("apt-get").arg("update").status()?;
        let status = install()?;
        if !status.success() {
            bail!("apt-get install {} failed ({status})", packages.join(" "));
        }
    }
    if let Some(n) = needs.iter().find(|n| !(n.present)()) {
        bail!("{} is installed but {} is still missing", n.package, n.why);
    }
    Ok(())
}

/// The installed version of a Debian package.
fn package_version(package: &str) -> anyhow::Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}\t${Version}", package])
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_once('\t') {
        Some((status, version)) if out.status.success() && status.ends_with(" installed") => {
            Ok(version.to_string())
        }
        _ => bail!("package {package} is not installed"),
    }
}

fn first_line_of(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The first 16 hex digits of the SHA-256 of the parts, each prefixed with its
/// length so that moving bytes between parts changes the hash.
fn hash(parts: &[&[u8]]) -> anyhow::Result<String> {
    let mut input = Vec::new();
    for p in parts {
        input.extend_from_slice(format!("{}:", p.len()).as_bytes());
        input.extend_from_slice(p);
    }
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("sha256sum writer panicked"))?
        .context("writing to sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.get(..16) {
        Some(h) if out.status.success() && h.chars().all(|c| c.is_ascii_hexdigit()) => {
            Ok(h.to_string())
        }
        _ => bail!("sha256sum failed ({})", out.status),
    }
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn print_tail(path: &Path, n: usize) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(n)..] {
        println!("    {l}");
    }
}

/// A lock file holding the builder's pid; a lock whose process is gone is
/// taken over. Removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> anyhow::Result<Lock> {
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())?;
                    return Ok(Lock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = fs::read_to_string(path).unwrap_or_default();
                    let pid = pid.trim();
                    if !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() {
                        bail!(
                            "another build (pid {pid}) holds {}; wait for it or remove the file",
                            path.display()
                        );
                    }
                    fs::remove_file(path).ok();
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("cannot take {}", path.display())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        fs::remove_file(&self.0).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_reports_lost_lines() {
        let fragment = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n# CONFIG_D is not set\n\
                        CONFIG_E=100\n# comment\n";
        let config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_E=250\n";
        assert_eq!(
            check_config(fragment, config),
            [
                "# CONFIG_B is not set  (final: CONFIG_B=y)",
                "CONFIG_C=y  (final: # CONFIG_C is not set)",
                "CONFIG_E=100  (final: CONFIG_E=250)",
            ]
        );
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.entry("init", 0o100_755, (0, 0), b"abc");
        let data = c.finish();
        assert_eq!(&data[..6], b"070701");
        // header (110) + "init\0" (5) padded to 116, body 3 padded to 4
        assert_eq!(&data[110..115], b"init\0");
        assert_eq!(&data[116..119], b"abc");
        assert_eq!(&data[120..126], b"070701");
        assert!(data.len().is_multiple_of(4));
        assert_eq!(&data[230..240], b"TRAILER!!!");
    }
}
