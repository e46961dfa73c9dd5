//! `virtio-rng`, `virtio-console` and `virtio-net`: bring the device up, use it once,
//! check the answer.

use crate::kit::prelude::*;
use crate::virtio::console::Console;
use crate::virtio::net::{self, Net};
use crate::virtio::rng::Rng;
use crate::virtio::{Mode, Options, Transport};
use pci::Pci;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints the interrupt count of every queue vector (msix) and fails if one stayed 0.
fn check_interrupts(name: &str, t: &Transport, vectors: &[(u16, Option<u8>)]) -> Result<(), Fail> {
    if t.mode != Mode::Msix {
        return Ok(());
    }
    irq::drain();
    if t.shared_vectors {
        println!("{name}: the MSI-X table is too small for one entry per queue: queues share one");
    }
    for &(queue, vector) in vectors {
        let vector = vector.unwrap_or(0);
        let n = irq::count(vector);
        println!("{name}: queue {queue} vector {vector:#x}: {n} interrupts");
        ensure!(n > 0, "queue {queue}: no interrupt on vector {vector:#x}");
    }
    Ok(())
}

pub fn rng(ctx: &mut Ctx) -> Result<(), Fail> {
    let want = ctx.arg_u64("bytes", 64)?;
    ensure!(
        (8..=1 << 20).contains(&want),
        "bytes={want}: expected 8 to 1048576"
    );
    let pci = Pci::probe(ctx)?;
    let f = virtio::find(ctx, &pci, virtio::TYPE_RNG)?;
    let opts = Options::from_ctx(ctx)?;
    let mut dev = Rng::open(&pci, f, &opts)?;
    println!(
        "virtio-rng: {} {:04x}:{:04x} mode {:?}, negotiated {}",
        f.bdf,
        f.vendor,
        f.device,
        opts.mode,
        virtio::feature_names(dev.t.features, &[])
    );
    let mut bytes = Vec::new();
    let mut requests = 0;
    while (bytes.len() as u64) < want {
        let chunk = dev.read((want - bytes.len() as u64).min(4096) as u32)?;
        requests += 1;
        ensure!(
            !chunk.is_empty() || requests < 1000,
            "the device returned no bytes in {requests} requests"
        );
        bytes.extend_from_slice(&chunk);
    }
    let shown = &bytes[..bytes.len().min(16)];
    println!(
        "virtio-rng: {} bytes in {requests} requests: {}...",
        bytes.len(),
        hex(shown)
    );
    ensure!(
        bytes.iter().any(|&b| b != bytes[0]),
        "all {} bytes are {:#04x}",
        bytes.len(),
        bytes[0]
    );
    check_interrupts("virtio-rng", &dev.t, &[(0, dev.q.vector)])
}

pub fn console(ctx: &mut Ctx) -> Result<(), Fail> {
    let echo = ctx.arg_u64("echo", 0)? != 0;
    let timeout_ms = ctx.arg_u64("timeout_ms", 10_000)?;
    let pci = Pci::probe(ctx)?;
    let f = virtio::find(ctx, &pci, virtio::TYPE_CONSOLE)?;
    let opts = Options::from_ctx(ctx)?;
    let mut dev = Console::open(&pci, f, &opts)?;
    println!(
        "virtio-console: {} {:04x}:{:04x} mode {:?}, offered {}, negotiated {}",
        f.bdf,
        f.vendor,
        f.device,
        opts.mode,
        virtio::feature_names(
            dev.t.offered,
            &[(0, "SIZE"), (1, "MULTIPORT"), (2, "EMERG_WRITE")]
        ),
        virtio::feature_names(dev.t.features, &[])
    );
    dev.write(b"virtio-console: hello\n")?;
    println!("virtio-console: wrote 'virtio-console: hello' on port 0");
    if echo {
        let deadline = Deadline::after_ms(timeout_ms);
        let Some(line) = dev.read_line(&deadline)? else {
            fail!("no line on port 0 within {timeout_ms} ms");
        };
        dev.write(format!("virtio-console: echo {line}\n").as_bytes())?;
        println!("virtio-console: echo {line}");
    }
    check_interrupts("virtio-console", &dev.t, &[(1, dev.tx.vector)])
}

/// Parses a dotted IPv4 address.
pub(super) fn ipv4(key: &str, text: &str) -> Result<[u8; 4], Fail> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for slot in &mut out {
        let Some(part) = parts.next().and_then(|p| p.parse().ok()) else {
            fail!("{key}={text}: not an IPv4 address");
        };
        *slot = part;
    }
    ensure!(parts.next().is_none(), "{key}={text}: not an IPv4 address");
    Ok(out)
}

pub(super) fn mac_text(mac: &[u8]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len().max(46));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    // Pad to the 60-byte minimum (the FCS is the device's).
    f.resize(f.len().max(60), 0);
    f
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4]); // Ethernet, IPv4, sizes
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa);
    p
}

/// The Internet checksum (RFC 1071).
pub(super) fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request (id, seq) with a 32-byte payload.
fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend((0..32u8).map(|i| b'a' + i % 26));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]); // id, DF, TTL 64, ICMP
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// Receives frames until `want(frame)` returns a value or the deadline passes; answers
/// ARP requests for `ip` on the way (a peer may ask before it replies).
fn receive<T>(
    dev: &mut Net,
    ip: [u8; 4],
    deadline: &Deadline,
    mut want: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Option<T>, Fail> {
    while let Some(frame) = dev.recv(deadline)? {
        if frame.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype == ETH_ARP
            && frame.len() >= 42
            && frame[20..22] == [0, 1]
            && frame[38..42] == ip
        {
            let mut sha = [0u8; 6];
            sha.copy_from_slice(&frame[22..28]);
            let mut spa = [0u8; 4];
            spa.copy_from_slice(&frame[28..32]);
            let reply = arp(2, dev.mac, ip, sha, spa);
            let mac = dev.mac;
            dev.send(&ethernet(sha, mac, ETH_ARP, &reply))?;
            continue;
        }
        if let Some(v) = want(&frame) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

pub fn net(ctx: &mut Ctx) -> Result<(), Fail> {
    let ip = ipv4("ip", ctx.arg("ip").unwrap_or("10.0.2.15"))?;
    let peer = ipv4("peer", ctx.arg("peer").unwrap_or("10.0.2.2"))?;
    let ping = ctx.arg_u64("ping", 1)? != 0;
    let timeout_ms = ctx.arg_u64("timeout_ms", 5000)?;
    let pci = Pci::probe(ctx)?;
    let f = virtio::find(ctx, &pci, virtio::TYPE_NET)?;
    let opts = Options::from_ctx(ctx)?;
    let mut dev = Net::open(&pci, f, &opts)?;
    println!(
        "virtio-net: {} {:04x}:{:04x} mode {:?}, negotiated {}",
        f.bdf,
        f.vendor,
        f.device,
        opts.mode,
        virtio::feature_names(dev.t.features, net::FEATURE_NAMES)
    );
    let link = dev.link_up()?;
    println!(
        "virtio-net: mac {} ({}), link {}, mtu {}",
        mac_text(&dev.mac),
        if dev.mac_from_device {
            "from the device"
        } else {
            "chosen by the guest"
        },
        match link {
            Some(true) => "up",
            Some(false) => "down",
            None => "unknown (no STATUS feature)",
        },
        dev.mtu.map_or(String::from("-"), |m| format!("{m}"))
    );
    ensure!(link != Some(false), "the link is down");

    let mac = dev.mac;
    let request = arp(1, mac, ip, [0; 6], peer);
    dev.send(&ethernet([0xff; 6], mac, ETH_ARP, &request))?;
    let deadline = Deadline::after_ms(timeout_ms);
    let peer_mac = receive(&mut dev, ip, &deadline, |f| {
        let is_reply = u16::from_be_bytes([f[12], f[13]]) == ETH_ARP
            && f.len() >= 42
            && f[20..22] == [0, 2]
            && f[28..32] == peer;
        is_reply.then(|| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&f[22..28]);
            m
        })
    })?;
    let Some(peer_mac) = peer_mac else {
        fail!(
            "no ARP reply from {} within {timeout_ms} ms",
            peer.map(|b| format!("{b}")).join(".")
        );
    };
    let peer_text = peer.map(|b| format!("{b}")).join(".");
    println!(
        "virtio-net: arp reply: {peer_text} is at {}",
        mac_text(&peer_mac)
    );

    if ping {
        let (id, seq) = (0x7669, 1);
        dev.send(&ethernet(
            peer_mac,
            mac,
            ETH_IPV4,
            &icmp_echo(ip, peer, id, seq),
        ))?;
        let deadline = Deadline::after_ms(timeout_ms);
        let reply = receive(&mut dev, ip, &deadline, |f| {
            let ok = u16::from_be_bytes([f[12], f[13]]) == ETH_IPV4
                && f.len() >= 42
                && f[23] == 1
                && f[26..30] == peer
                && f[34] == 0
                && f[38..40] == id.to_be_bytes()
                && f[40..42] == seq.to_be_bytes();
            ok.then_some(f.len())
        })?;
        let Some(len) = reply else {
            fail!("no ICMP echo reply from {peer_text} within {timeout_ms} ms");
        };
        println!("virtio-net: ping reply from {peer_text} ({len} bytes)");
    }
    check_interrupts(
        "virtio-net",
        &dev.t,
        &[(0, dev.rx.vector), (1, dev.tx.vector)],
    )
}
