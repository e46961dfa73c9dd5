//! The test guest's PCI and virtio-pci drivers against QEMU's devices: microvm with a PCIe
//! host bridge (`pcie=on`: ECAM found through the DSDT's `_CBA`, no firmware, so the guest
//! assigns every BAR from the `_CRS` windows) and modern-only virtio devices
//! (`disable-legacy=on`). The same scenarios will test Vireo's own devices; passing on
//! QEMU first shows the drivers are right.
//!
//! Skips loudly without /dev/kvm or qemu-system-x86_64.

use std::path::{Path, PathBuf};
use std::process::Command;

use vireo_e2e::{assert_pattern_in_file, kvm_or_skip, run, Finished, Scratch};

/// QEMU's isa-debug-exit turns guest status v into exit code (v << 1) | 1.
const QEMU_PASS: i32 = 1;

fn qemu_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    found
}

/// Whether to run: /dev/kvm usable and QEMU installed (each says why not).
fn ready(test: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) {
        return None;
    }
    qemu_binary()
}

/// Where COM1 goes: QEMU's stdout, or a file (when stdio carries hvc0 instead).
enum Com1<'a> {
    Stdio,
    File(&'a Path),
}

/// microvm with PCIe and ACPI, the test guest, `cmdline`, and `devices` (QEMU arguments).
fn microvm(qemu: &Path, cmdline: &str, com1: Com1<'_>, devices: &[&str]) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=on,pic=on,acpi=on,pcie=on",
    ])
    .args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"])
    .args(["-m", "256", "-smp", "1"])
    .args(["-nodefaults", "-no-user-config", "-nographic"]);
    match com1 {
        Com1::Stdio => c.args(["-serial", "stdio"]),
        Com1::File(path) => c.arg("-serial").arg(format!("file:{}", path.display())),
    };
    c.arg("-kernel")
        .arg(vireo_test_guest::elf_path())
        .args(["-append", cmdline])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(devices);
    c
}

fn expect_pass(r: &Finished, what: &str) {
    assert_eq!(r.code, Some(QEMU_PASS), "{what} on QEMU\n{r}");
}

fn blk_device(image: &Path, extra: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},if=none,id=d0,format=raw{extra}", image.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,disable-legacy=on,serial=vireo-e2e,num-queues=2".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn pci_enumeration_assigns_bars_on_qemu_microvm() {
    let Some(qemu) = ready("pci_enumeration_assigns_bars_on_qemu_microvm") else {
        return;
    };
    let scratch = Scratch::new("pci-qemu-pci");
    let image = scratch.disk("disk.img", 8 << 20);
    let mut devices = blk_device(&image, "");
    devices.extend(
        [
            "-device",
            "virtio-rng-pci,disable-legacy=on",
            "-device",
            "virtio-serial-pci,disable-legacy=on",
        ]
        .map(String::from),
    );
    let r = run(
        microvm(
            &qemu,
            "scenario=pci expect=1af4:1042,1af4:1044,1af4:1043",
            Com1::Stdio,
            &strs(&devices),
        ),
        b"",
    );
    expect_pass(&r, "pci");
    r.expect_stdout("pci: config access ECAM at 0xe0000000")
        .expect_stdout("pci: 00:01.0 1af4:1042 class 010000 bars [1 mem32 ")
        .expect_stdout("pci: 00:02.0 1af4:1044 class 00ff00 bars ")
        .expect_stdout("pci: 00:03.0 1af4:1043 class 078000 bars ")
        .expect_stdout("pci: 00:01.0 msix 3 entries")
        .expect_stdout("BARs assigned by the guest, 0 by firmware, 0 unassigned");

    // Behind PCIe root ports: the guest numbers the buses and opens the bridges' windows.
    let bridged = [
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
        "-device",
        "virtio-rng-pci,bus=rp1,disable-legacy=on",
    ];
    let r = run(
        microvm(
            &qemu,
            "scenario=pci expect=1af4:1044",
            Com1::Stdio,
            &bridged,
        ),
        b"",
    );
    expect_pass(&r, "pci behind a root port");
    r.expect_stdout("pci: 00:01.0 1b36:000c class 060400 bridge buses 01-01")
        .expect_stdout("pci: 01:00.0 1af4:1044 class 00ff00 bars ");
    let r = run(
        microvm(
            &qemu,
            "scenario=virtio-rng mode=msix",
            Com1::Stdio,
            &bridged,
        ),
        b"",
    );
    expect_pass(&r, "virtio-rng behind a root port");
}

#[test]
fn virtio_blk_writes_reach_the_image_on_qemu() {
    let Some(qemu) = ready("virtio_blk_writes_reach_the_image_on_qemu") else {
        return;
    };
    let scratch = Scratch::new("pci-qemu-blk");
    let image = scratch.disk("disk.img", 8 << 20);
    let devices = blk_device(&image, ",discard=unmap");
    for (mode, pattern, start, count) in
        [("poll", "e2e-poll", 3, 20), ("msix", "e2e-msix", 1000, 64)]
    {
        let cmdline = format!(
            "scenario=virtio-blk mode={mode} pattern={pattern} start={start} sectors={count} discard=1"
        );
        let r = run(microvm(&qemu, &cmdline, Com1::Stdio, &strs(&devices)), b"");
        expect_pass(&r, &cmdline);
        r.expect_stdout("virtio-blk: id 'vireo-e2e'")
            .expect_stdout(&format!(
                "flushed and read back (direct chains) {count} sectors at {start}: match"
            ))
            .expect_stdout("virtio-blk: read at sector 16384 (beyond the end): IOERR")
            .expect_stdout("queues 2 of 2")
            .expect_stdout("virtio-blk: write-zeroes of 8 sectors at ");
        if mode == "msix" {
            r.expect_stdout("virtio-blk: queue 1 vector ");
        }
        assert_pattern_in_file(&image, pattern, start, count);
    }
    // Without INDIRECT_DESC and EVENT_IDX: direct chains, plain notification suppression.
    let cmdline = "scenario=virtio-blk indirect=0 event_idx=0 pattern=e2e-plain start=40 sectors=9";
    let r = run(microvm(&qemu, cmdline, Com1::Stdio, &strs(&devices)), b"");
    expect_pass(&r, cmdline);
    r.expect_stdout("wrote (direct chains)");
    assert_pattern_in_file(&image, "e2e-plain", 40, 9);

    // A read-only drive: writes fail, reads work, the image is unchanged.
    let before = std::fs::read(&image).expect("reading the image");
    let ro = blk_device(&image, ",readonly=on");
    let r = run(
        microvm(
            &qemu,
            "scenario=virtio-blk readonly=1 start=3",
            Com1::Stdio,
            &strs(&ro),
        ),
        b"",
    );
    expect_pass(&r, "virtio-blk readonly=1");
    r.expect_stdout(
        "virtio-blk: write to the read-only device failed with IOERR (RO feature offered)",
    );
    assert!(
        std::fs::read(&image).expect("reading the image") == before,
        "the read-only image changed"
    );
}

#[test]
fn virtio_rng_and_hostile_chains_on_qemu() {
    let Some(qemu) = ready("virtio_rng_and_hostile_chains_on_qemu") else {
        return;
    };
    let rng = ["-device", "virtio-rng-pci,disable-legacy=on"];
    for mode in ["poll", "msix"] {
        let cmdline = format!("scenario=virtio-rng bytes=4096 mode={mode}");
        let r = run(microvm(&qemu, &cmdline, Com1::Stdio, &rng), b"");
        expect_pass(&r, &cmdline);
        r.expect_stdout("virtio-rng: 4096 bytes in ");
    }

    // Malformed chains: QEMU fails them or sets DEVICE_NEEDS_RESET (a few it carries out
    // leniently, which the spec allows); it must recover after a reset every time.
    let scratch = Scratch::new("pci-qemu-hostile");
    let image = scratch.disk("disk.img", 8 << 20);
    let mut devices = blk_device(&image, "");
    devices.extend(rng.map(String::from));
    let r = run(
        microvm(
            &qemu,
            "scenario=virtio-hostile",
            Com1::Stdio,
            &strs(&devices),
        ),
        b"",
    );
    expect_pass(&r, "virtio-hostile");
    r.expect_stdout("virtio-hostile: descriptor-loop: DEVICE_NEEDS_RESET")
        .expect_stdout("virtio-hostile: head-out-of-range: DEVICE_NEEDS_RESET")
        .expect_stdout("virtio-hostile: unknown-request-type: failed: status UNSUPP")
        .expect_stdout("virtio-hostile: virtio-rng at ")
        .expect_stdout(" still works: 32 random bytes");
}

#[test]
fn virtio_console_prints_and_echoes_on_hvc0_on_qemu() {
    let Some(qemu) = ready("virtio_console_prints_and_echoes_on_hvc0_on_qemu") else {
        return;
    };
    let scratch = Scratch::new("pci-qemu-console");
    let com1 = scratch.path("com1.log");
    // hvc0 (port 0 of the virtio-serial device) on QEMU's stdio, COM1 in a file.
    let devices = [
        "-device",
        "virtio-serial-pci,disable-legacy=on",
        "-chardev",
        "stdio,id=hvc0",
        "-device",
        "virtconsole,chardev=hvc0",
    ];
    for mode in ["poll", "msix"] {
        let cmdline = format!("scenario=virtio-console echo=1 mode={mode}");
        let r = run(
            microvm(&qemu, &cmdline, Com1::File(&com1), &devices),
            b"a line for hvc0\n",
        );
        let log = std::fs::read_to_string(&com1).unwrap_or_default();
        assert_eq!(
            r.code,
            Some(QEMU_PASS),
            "{cmdline} on QEMU\n{r}\n--- COM1\n{log}"
        );
        r.expect_stdout("virtio-console: hello\n")
            .expect_stdout("virtio-console: echo a line for hvc0\n");
        assert!(log.contains("PASS virtio-console"), "COM1:\n{log}");
    }
}

#[test]
fn virtio_net_talks_to_slirp_on_qemu() {
    let Some(qemu) = ready("virtio_net_talks_to_slirp_on_qemu") else {
        return;
    };
    // QEMU's user-mode network answers ARP and ping for its gateway 10.0.2.2 without any
    // host network access.
    let devices = [
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
    ];
    for mode in ["poll", "msix"] {
        let cmdline = format!("scenario=virtio-net mode={mode}");
        let r = run(microvm(&qemu, &cmdline, Com1::Stdio, &devices), b"");
        if r.stderr.contains("'user'") && r.stderr.contains("not") {
            eprintln!(
                "SKIPPED virtio_net_talks_to_slirp_on_qemu: this QEMU has no user networking\n{r}"
            );
            return;
        }
        expect_pass(&r, &cmdline);
        r.expect_stdout("virtio-net: mac 52:54:00:12:34:56 (from the device), link up")
            .expect_stdout("virtio-net: arp reply: 10.0.2.2 is at 52:55:0a:00:02:02")
            .expect_stdout("virtio-net: ping reply from 10.0.2.2");
    }
}
