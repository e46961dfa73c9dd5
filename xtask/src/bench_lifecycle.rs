//! `cargo xtask bench lifecycle [--cycles N] [--calls N] [--idle N]`:
//! vireod against Debian's libvirtd + QEMU, side by side on the same
//! machine and the same test guest (64 MiB, its `idle` scenario: halted).
//!
//! - cycles/s of define + start + destroy + undefine through each daemon's
//!   own API (vireod's REST socket; libvirt's API through python3-libvirt,
//!   which speaks libvirt's RPC as every libvirt client does);
//! - API latency p50/p99 of a domain info call on a running domain;
//! - idle VMs: N running at once, memory per VM (the monitor's or QEMU's
//!   RSS) and the daemon's RSS, and how many such VMs this machine's
//!   available memory would hold.
//!
//! libvirt's side needs `apt-get install libvirt-daemon-system
//! python3-libvirt`; the bench starts libvirtd and virtlogd if they are not
//! running and, as root on a host whose /dev/kvm is root-only, sets
//! `user = "root"` in /etc/libvirt/qemu.conf (saying so). Without libvirt
//! it measures Vireo alone.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench_vm::{cell, ratio};
use crate::cargo;

const GUEST_CMDLINE: &str = "scenario=idle";

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let mut cycles = 20usize;
    let mut calls = 500usize;
    let mut idle = 8usize;
    let mut i = 0;
    while i < args.len() {
        let value = |name: &str| -> anyhow::Result<usize> {
            args.get(i + 1)
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| name.to_owned())
        };
        match args[i].as_str() {
            "--cycles" => cycles = value("--cycles")?.max(1),
            "--calls" => calls = value("--calls")?.max(10),
            "--idle" => idle = value("--idle")?.max(1),
            other => bail!("unexpected argument '{other}'"),
        }
        i += 2;
    }
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "vireo-monitor",
        "-p",
        "vireo-daemon",
    ])?;
    let root = std::env::temp_dir().join(format!("vireo-bench-lifecycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let guest = root.join("guest.elf");
    std::fs::write(&guest, vireo_test_guest::ELF)?;
    let mut perms = std::fs::metadata(&guest)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&guest, perms)?;

    println!("vireod: measuring ({cycles} cycles, {calls} calls, {idle} idle VMs) ...");
    let vireo = bench_vireo(&root, cycles, calls, idle)?;
    let libvirt = match prepare_libvirt() {
        Ok(()) => {
            println!("libvirtd: measuring ...");
            match bench_libvirt(&root, &guest, cycles, calls, idle) {
                Ok(r) => Some(r),
                Err(e) => {
                    println!("libvirtd: failed: {e:#}");
                    None
                }
            }
        }
        Err(e) => {
            println!("libvirtd: not measured: {e:#}");
            None
        }
    };
    let _ = std::fs::remove_dir_all(&root);

    let lv = |f: fn(&Results) -> f64| libvirt.as_ref().map(f);
    let vi = |f: fn(&Results) -> f64| Some(f(&vireo));
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "metric", "libvirt", "Vireo", "Vireo/libvirt"
    );
    let row = |name: &str, a: Option<f64>, b: Option<f64>, decimals: usize, higher_better: bool| {
        let r = if higher_better {
            ratio(b, a)
        } else {
            ratio(a, b)
        };
        println!(
            "{name:<44} {:>12} {:>12} {:>12}",
            cell(a, decimals),
            cell(b, decimals),
            r
        );
    };
    row(
        "define+start+destroy+undefine cycles/s",
        lv(|r| r.cycles_per_s),
        vi(|r| r.cycles_per_s),
        2,
        true,
    );
    row(
        "domain info latency p50 (us)",
        lv(|r| r.p50_us),
        vi(|r| r.p50_us),
        0,
        false,
    );
    row(
        "domain info latency p99 (us)",
        lv(|r| r.p99_us),
        vi(|r| r.p99_us),
        0,
        false,
    );
    row(
        "memory per idle 64 MiB VM (MiB RSS)",
        lv(|r| r.vm_rss_mib),
        vi(|r| r.vm_rss_mib),
        1,
        false,
    );
    row(
        "daemon RSS with the VMs running (MiB)",
        lv(|r| r.daemon_rss_mib),
        vi(|r| r.daemon_rss_mib),
        1,
        false,
    );
    row(
        "idle 64 MiB VMs this machine holds",
        lv(|r| r.capacity),
        vi(|r| r.capacity),
        0,
        true,
    );
    println!(
        "(latency and memory ratios are libvirt/Vireo: above 1 means Vireo is better; \
         capacity = MemAvailable / (guest RAM touched + per-VM RSS))"
    );
    Ok(())
}

struct Results {
    cycles_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    vm_rss_mib: f64,
    daemon_rss_mib: f64,
    capacity: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn pids_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

// ---- Vireo -----------------------------------------------------------------

struct Vireod {
    child: Child,
    socket: PathBuf,
}

impl Drop for Vireod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(socket: &Path, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vireod\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply.get(9..12).unwrap_or("000");
    if !status.starts_with('2') {
        bail!("{method} {path}: {reply}");
    }
    Ok(reply)
}

fn vireo_xml(name: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><cmdline>{GUEST_CMDLINE}</cmdline></os>\
         <devices><serial type='null'><target port='0'/></serial></devices></domain>"
    )
}

fn bench_vireo(root: &Path, cycles: usize, calls: usize, idle: usize) -> anyhow::Result<Results> {
    let bin = crate::workspace_root().join("target/release");
    let dir = root.join("vireod");
    let socket = dir.join("run/vireod.sock");
    let child = Command::new(bin.join("vireod"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--log-dir")
        .arg(dir.join("log"))
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .context("starting vireod")?;
    let d = Vireod { child, socket };
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&d.socket).is_err() {
        if Instant::now() > deadline {
            bail!("vireod did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    for i in 0..cycles {
        let name = format!("cycle{i}");
        call(&d.socket, "POST", "/v1/domains", &vireo_xml(&name))?;
        call(&d.socket, "POST", &format!("/v1/domains/{name}/start"), "")?;
        call(
            &d.socket,
            "POST",
            &format!("/v1/domains/{name}/destroy"),
            "",
        )?;
        call(&d.socket, "DELETE", &format!("/v1/domains/{name}"), "")?;
    }
    let cycles_per_s = cycles as f64 / t.elapsed().as_secs_f64();

    for i in 0..idle {
        let name = format!("idle{i}");
        call(&d.socket, "POST", "/v1/domains", &vireo_xml(&name))?;
        call(&d.socket, "POST", &format!("/v1/domains/{name}/start"), "")?;
    }
    std::thread::sleep(Duration::from_secs(2));
    // One kept-alive connection, as libvirt's client keeps one.
    let mut conn = std::io::BufReader::new(UnixStream::connect(&d.socket)?);
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        conn.get_mut()
            .write_all(b"GET /v1/domains/idle0 HTTP/1.1\r\nHost: vireod\r\n\r\n")?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut conn, &mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let monitors = pids_matching(&dir.join("run/domains").display().to_string());
    let vm_rss: f64 = monitors.iter().map(|&p| rss_kib(p)).sum::<f64>() / 1024.0;
    let per_vm = vm_rss / monitors.len().max(1) as f64;
    let daemon_rss_mib = rss_kib(d.child.id()) / 1024.0;
    for i in 0..idle {
        call(
            &d.socket,
            "POST",
            &format!("/v1/domains/idle{i}/destroy"),
            "",
        )?;
    }
    Ok(Results {
        cycles_per_s,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        vm_rss_mib: per_vm,
        daemon_rss_mib,
        capacity: mem_available_mib() / per_vm.max(1.0),
    })
}

// ---- libvirt ---------------------------------------------------------------

fn running(name: &str) -> bool {
    !pids_matching(name).iter().all(|&p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| !String::from_utf8_lossy(&c).starts_with(name))
            .unwrap_or(true)
    })
}

/// Debian's python3 (where python3-libvirt lives), not a pyenv shim.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn prepare_libvirt() -> anyhow::Result<()> {
    if Command::new(python())
        .args(["-c", "import libvirt"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        bail!("python3-libvirt is missing (apt-get install libvirt-daemon-system python3-libvirt)");
    }
    if !Path::new("/usr/sbin/libvirtd").exists() {
        bail!("libvirtd is missing (apt-get install libvirt-daemon-system)");
    }
    let conf = Path::new("/etc/libvirt/qemu.conf");
    let kvm_root_only = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o066 == 0)
        .unwrap_or(false);
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    let mut restart = false;
    if kvm_root_only && !text.lines().any(|l| l.trim() == "user = \"root\"") {
        println!(
            "libvirtd: /dev/kvm is root-only here: adding user = \"root\" to {}",
            conf.display()
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(conf)?;
        writeln!(f, "user = \"root\"\ngroup = \"root\"")?;
        restart = true;
    }
    if !running("/usr/sbin/virtlogd") && !running("virtlogd") {
        Command::new("virtlogd").arg("-d").status()?;
    }
    if restart {
        let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
        std::thread::sleep(Duration::from_millis(500));
    }
    if !running("/usr/sbin/libvirtd") && !running("libvirtd") {
        Command::new("libvirtd").arg("-d").status()?;
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(())
}

/// The same work through libvirt's own API (python3-libvirt), printing
/// `key value` lines.
const LIBVIRT_SCRIPT: &str = r#"
import sys, time, libvirt
guest, cycles, calls, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open("qemu:///system")
def xml(name):
    return f"""<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>{guest}</kernel><cmdline>scenario=idle</cmdline></os>
<features><acpi/></features><devices><emulator>/usr/bin/qemu-system-x86_64</emulator><serial type='null'/><memballoon model='none'/></devices></domain>"""
for name in [f"vbench-cycle{i}" for i in range(cycles)] + [f"vbench-idle{i}" for i in range(idle)]:
    try:
        d = conn.lookupByName(name)
        if d.isActive(): d.destroy()
        d.undefine()
    except libvirt.libvirtError:
        pass
t = time.monotonic()
for i in range(cycles):
    d = conn.defineXML(xml(f"vbench-cycle{i}"))
    d.create()
    d.destroy()
    d.undefine()
print("cycles_per_s", cycles / (time.monotonic() - t))
doms = []
for i in range(idle):
    d = conn.defineXML(xml(f"vbench-idle{i}"))
    d.create()
    doms.append(d)
time.sleep(2)
lat = []
for _ in range(calls):
    t = time.monotonic()
    doms[0].info()
    lat.append((time.monotonic() - t) * 1e6)
lat.sort()
print("p50_us", lat[len(lat) // 2])
print("p99_us", lat[min(len(lat) - 1, round((len(lat) - 1) * 0.99))])
print("pids", " ".join(open(f"/run/libvirt/qemu/vbench-idle{i}.pid").read().strip() for i in range(idle)))
sys.stdout.flush()
input()
for d in doms:
    d.destroy()
    d.undefine()
"#;

fn bench_libvirt(
    root: &Path,
    guest: &Path,
    cycles: usize,
    calls: usize,
    idle: usize,
) -> anyhow::Result<Results> {
    let script = root.join("libvirt_bench.py");
    std::fs::write(&script, LIBVIRT_SCRIPT)?;
    let mut child = Command::new(python())
        .arg(&script)
        .arg(guest)
        .args([cycles.to_string(), calls.to_string(), idle.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running python3")?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut values = std::collections::HashMap::new();
    let pids: Vec<u32> = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line)? == 0 {
            bail!("the libvirt script ended early (see its error above)");
        }
        let (key, value) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        if key == "pids" {
            break value
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect();
        }
        values.insert(key.to_owned(), value.parse::<f64>().unwrap_or(0.0));
    };
    let vm_rss: f64 = pids.iter().map(|&p| rss_kib(p)).sum::<f64>() / 1024.0;
    let per_vm = vm_rss / pids.len().max(1) as f64;
    let daemon = pids_matching("libvirtd")
        .into_iter()
        .next()
        .map(rss_kib)
        .unwrap_or(0.0)
        / 1024.0;
    let capacity = mem_available_mib() / per_vm.max(1.0);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin);
    }
    let _ = child.wait();
    let get = |k: &str| values.get(k).copied().unwrap_or(0.0);
    Ok(Results {
        cycles_per_s: get("cycles_per_s"),
        p50_us: get("p50_us"),
        p99_us: get("p99_us"),
        vm_rss_mib: per_vm,
        daemon_rss_mib: daemon,
        capacity,
    })
}
