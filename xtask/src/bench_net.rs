//! `bench net`: virtio-net transmit, Vireo against QEMU.
//!
//! The test guest's `bench-net` scenario (a polling CPL3 driver, no interrupts) sends UDP
//! frames of each size for `--secs` as fast as the transmit ring allows, to the MAC of a
//! TAP device on the host (created for each run, deleted afterwards). Guest transmit is
//! the TAP's receive, so besides the guest's own count of completed sends the host reads
//! /sys/class/net/<tap>/statistics/rx_packets when the guest announces a run (it then
//! waits 200 ms before sending) and when it reports it: the packets that really reached
//! the host, over the run time the guest measured. QEMU runs with vhost=off, and also
//! with vhost=on where /dev/vhost-net exists. Needs root (CAP_NET_ADMIN) for the TAPs.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::bench::{backend, which};
use crate::bench_vm::{
    build_vireo, cell, field_f64, qemu_command, ratio, run_guest, vireo_command, Tap, Vmm,
};

const SCENARIO: &str = "bench-net";

const USAGE: &str = "usage: cargo xtask bench net [--secs N] [--frames 64,1514]\n  \
     --secs N       seconds per frame size (default 2)\n  \
     --frames LIST  Ethernet frame sizes without FCS, 60 to 1514 (default 64,1514)";

/// One frame size's result on one VMM.
#[derive(Debug, Clone, Copy)]
struct NetResult {
    /// What the guest counted (completed sends) and its rate.
    guest_packets: u64,
    guest_pps: f64,
    /// What the TAP received between the guest's begin and result lines.
    host_packets: u64,
    host_dropped: u64,
    /// The run's length as the guest timed it (TSC); the host's own clock would add the
    /// settling time and the console's latency.
    secs: f64,
}

impl NetResult {
    /// The TAP's count over the guest's run time.
    fn host_pps(&self) -> f64 {
        if self.secs > 0.0 {
            self.host_packets as f64 / self.secs
        } else {
            0.0
        }
    }

    fn host_gbps(&self, frame: u64) -> f64 {
        self.host_pps() * frame as f64 * 8.0 / 1e9
    }
}

/// A column: frame size -> result, or why there is none.
type Column = Result<HashMap<u64, NetResult>, String>;

/// How a row reads a result: (label, value of a result for a frame size, decimals).
type Metric = (&'static str, fn(&NetResult, u64) -> f64, usize);

const METRICS: [Metric; 3] = [
    ("packets/s sent (guest)", |r, _| r.guest_pps, 0),
    ("packets/s received (TAP)", |r, _| r.host_pps(), 0),
    ("Gb/s received (TAP)", |r, f| r.host_gbps(f), 3),
];

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let mut secs = 2u64;
    let mut frames: Vec<u64> = vec![64, 1514];
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value\n{USAGE}", args[i]))?;
        match args[i].as_str() {
            "--secs" => secs = value.parse().context("--secs: expected seconds")?,
            "--frames" => {
                frames = value
                    .split(',')
                    .map(|f| f.parse().with_context(|| format!("--frames: '{f}'")))
                    .collect::<anyhow::Result<_>>()?
            }
            other => bail!("unexpected argument '{other}'\n{USAGE}"),
        }
        i += 2;
    }
    if !(1..=3600).contains(&secs) {
        bail!("--secs {secs}: expected 1 to 3600");
    }
    if frames.is_empty() || frames.iter().any(|f| !(60..=1514).contains(f)) {
        bail!("--frames: expected sizes from 60 to 1514\n{USAGE}");
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: TAP devices are not available on this host");
    }
    let vmm = build_vireo()?;
    let qemu = which("qemu-system-x86_64");
    let vhost = Path::new("/dev/vhost-net").exists();

    let list: Vec<String> = frames.iter().map(u64::to_string).collect();
    let cmdline = |mac: &str| {
        format!(
            "scenario={SCENARIO} secs={secs} frames={} peer_mac={mac}",
            list.join(",")
        )
    };
    let timeout = Duration::from_secs(60 + frames.len() as u64 * (secs + 25));
    println!(
        "backend: {}; {secs} s per frame size; guest: scenario {SCENARIO}, polling driver at \
         CPL3, 1 vCPU, UDP to the TAP's MAC; TAP: mode tap vnet_hdr, no address; QEMU: \
         microvm, virtio-net-pci, -netdev tap",
        backend()
    );

    // (column name, result); Vireo last, compared with the first (QEMU vhost=off: both
    // userspace backends).
    let mut columns: Vec<(String, Column)> = Vec::new();
    let mut notes = Vec::new();
    match &qemu {
        None => columns.push((
            "QEMU".into(),
            Err("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into()),
        )),
        Some(q) => {
            let modes: &[&str] = if vhost { &["off", "on"] } else { &["off"] };
            if !vhost {
                notes.push("QEMU vhost=on: not measured, /dev/vhost-net is absent on this host");
            }
            for mode in modes {
                let name = format!("QEMU vhost={mode}");
                let col = run_column(Vmm::Qemu, &name, "vbq", timeout, &frames, |tap, mac| {
                    let dev = vec![
                        "-netdev".into(),
                        format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost={mode}"),
                        "-device".into(),
                        "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=".into(),
                    ];
                    qemu_command(q, &cmdline(mac), &dev)
                });
                columns.push((name, col));
            }
        }
    }
    let vireo = run_column(Vmm::Vireo, "Vireo", "vbv", timeout, &frames, |tap, mac| {
        let dev = vec!["--net".into(), format!("tap={tap}")];
        vireo_command(&vmm, &cmdline(mac), &dev)
    });
    columns.push(("Vireo".into(), vireo));

    print_table(&columns, &frames);
    for n in notes {
        println!("{n}");
    }
    Ok(())
}

fn print_table(columns: &[(String, Column)], frames: &[u64]) {
    let get = |c: &Column, frame: u64| c.as_ref().ok().and_then(|m| m.get(&frame).copied());
    let (Some((_, qemu_col)), Some((_, vireo_col))) = (columns.first(), columns.last()) else {
        return;
    };
    println!();
    print!("{:<34}", "");
    for (name, _) in columns {
        print!(" {name:>15}");
    }
    println!(" {:>11}", "Vireo/QEMU");
    for &frame in frames {
        for (label, metric, decimals) in METRICS {
            print!("{:<34}", format!("{frame} B: {label}"));
            for (_, col) in columns {
                let text = match col {
                    Err(_) => "n/a (error)".to_string(),
                    Ok(_) => cell(get(col, frame).map(|r| metric(&r, frame)), decimals),
                };
                print!(" {text:>15}");
            }
            let v = get(vireo_col, frame).map(|r| metric(&r, frame));
            let q = get(qemu_col, frame).map(|r| metric(&r, frame));
            println!(" {:>11}", ratio(v, q));
        }
    }
    println!();
    for (name, col) in columns {
        match col {
            Err(why) => println!("{name}: n/a: {why}"),
            Ok(m) => {
                for &frame in frames {
                    let Some(r) = m.get(&frame) else { continue };
                    if r.host_packets != r.guest_packets || r.host_dropped != 0 {
                        println!(
                            "{name}: {frame} B: the guest completed {} sends, the TAP \
                             received {} (rx_dropped +{})",
                            r.guest_packets, r.host_packets, r.host_dropped
                        );
                    }
                }
            }
        }
    }
}

/// TAP counters: (rx_packets, rx_dropped).
fn counters(tap: &Tap) -> anyhow::Result<(u64, u64)> {
    Ok((tap.stat("rx_packets")?, tap.stat("rx_dropped")?))
}

/// One VMM run with a fresh TAP (named `<prefix><pid>`): per frame size, the guest's
/// result and the TAP's counters.
fn run_column(
    vmm: Vmm,
    name: &str,
    tap_prefix: &str,
    timeout: Duration,
    frames: &[u64],
    command: impl FnOnce(&str, &str) -> Command,
) -> Column {
    let tap = Tap::new(tap_prefix).map_err(|e| format!("{e:#}"))?;
    let mac = tap.mac().map_err(|e| format!("{e:#}"))?;
    eprintln!("{name}: scenario {SCENARIO} on TAP {} ...", tap.name);
    let cmd = command(&tap.name, &mac);
    // Counters at the last begin line; per frame size, the TAP's (rx, dropped) deltas.
    let mut begin: Option<(u64, u64)> = None;
    let mut host: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut counter_error = None;
    let finished = run_guest(cmd, timeout, |line| {
        if !line.starts_with("bench-net:") {
            return;
        }
        let now = match counters(&tap) {
            Ok(c) => c,
            Err(e) => {
                counter_error = Some(format!("{e:#}"));
                return;
            }
        };
        if line.starts_with("bench-net: begin ") {
            begin = Some(now);
            return;
        }
        eprintln!("  {name}: {line}");
        if line.starts_with("bench-net: tx ") {
            if let (Some((rx, dropped)), Ok(frame)) = (begin.take(), field_f64(line, "frame")) {
                host.insert(
                    frame as u64,
                    (now.0.saturating_sub(rx), now.1.saturating_sub(dropped)),
                );
            }
        }
    })
    .map_err(|e| format!("{e:#}"))?;
    if let Some(why) = finished.failure(vmm, SCENARIO) {
        return Err(why);
    }
    if let Some(e) = counter_error {
        return Err(format!("reading the TAP's counters: {e}"));
    }
    let mut out = HashMap::new();
    for line in finished
        .lines
        .iter()
        .filter(|l| l.starts_with("bench-net: tx "))
    {
        let num = |key: &str| field_f64(line, key).map_err(|e| format!("{e:#}"));
        let frame = num("frame")? as u64;
        let Some(&(host_packets, host_dropped)) = host.get(&frame) else {
            return Err(format!("no begin line before '{line}'"));
        };
        out.insert(
            frame,
            NetResult {
                guest_packets: num("packets")? as u64,
                guest_pps: num("pps")?,
                host_packets,
                host_dropped,
                // packets / pps: more digits than the printed secs.
                secs: if num("pps")? > 0.0 {
                    num("packets")? / num("pps")?
                } else {
                    num("secs")?
                },
            },
        );
    }
    for f in frames {
        if !out.contains_key(f) {
            return Err(format!("the guest printed no result for {f}-byte frames"));
        }
    }
    Ok(out)
}
