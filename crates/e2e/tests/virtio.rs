//! Vireo's virtio-pci devices driven by the test guest's drivers (the same
//! scenarios pass on QEMU's devices in pci_qemu.rs).

use vireo_e2e::{assert_pattern_in_file, boot, kvm_or_skip, run, vmm, MonitorExit, Scratch};

#[test]
fn virtio_rng_delivers_entropy_polled_and_by_msix() {
    if !kvm_or_skip("virtio_rng_delivers_entropy_polled_and_by_msix") {
        return;
    }
    for mode in ["poll", "msix"] {
        let r = boot(
            &format!("scenario=virtio-rng bytes=4096 mode={mode}"),
            &["--rng"],
        );
        r.expect_exit(MonitorExit::Ok)
            .expect_stdout("virtio-rng: 00:01.0 1af4:1044")
            .expect_stdout("negotiated INDIRECT_DESC,EVENT_IDX,VERSION_1")
            .expect_stdout("virtio-rng: 4096 bytes in ");
        if mode == "msix" {
            r.expect_stdout("virtio-rng: queue 0 vector ");
        }
    }
}

#[test]
fn virtio_console_prints_and_echoes() {
    if !kvm_or_skip("virtio_console_prints_and_echoes") {
        return;
    }
    for mode in ["poll", "msix"] {
        let cmdline = format!("scenario=virtio-console echo=1 mode={mode}");
        let r = run(
            vmm(&cmdline, &["--console", "virtio"]),
            b"a line for hvc0\n",
        );
        r.expect_exit(MonitorExit::Ok)
            .expect_stdout("virtio-console: hello\n")
            .expect_stdout("virtio-console: echo a line for hvc0\n")
            .expect_stdout("PASS virtio-console");
    }
}

#[test]
fn devices_take_consecutive_slots_with_firmware_assigned_bars() {
    if !kvm_or_skip("devices_take_consecutive_slots_with_firmware_assigned_bars") {
        return;
    }
    boot(
        "scenario=pci expect=1af4:1043,1af4:1044",
        &["--console", "virtio", "--rng"],
    )
    .expect_exit(MonitorExit::Ok)
    .expect_stdout("pci: 00:01.0 1af4:1043 class 078000 bars [0 mem64 0xc0000000+0x8000 fw]")
    .expect_stdout("pci: 00:02.0 1af4:1044 ")
    .expect_stdout("pci: 00:01.0 msix 3 entries")
    .expect_stdout("0 BARs assigned by the guest, 2 by firmware, 0 unassigned");
}

#[test]
fn bad_device_arguments_are_refused_clearly() {
    for (args, needle) in [
        (&["--console", "hvc"][..], "'hvc' is not a console device"),
        (&["--disk", "x.img,fast"][..], "'fast' is not a disk option"),
        (
            &["--disk", "/nonexistent/x.img"][..],
            "disk 0: cannot open /nonexistent/x.img",
        ),
    ] {
        let r = run(vmm("scenario=hello", args), b"");
        r.expect_exit(MonitorExit::Usage).expect_stderr(needle);
    }
}

const DISK_BYTES: u64 = 8 << 20;

#[test]
fn virtio_blk_writes_reach_the_image() {
    if !kvm_or_skip("virtio_blk_writes_reach_the_image") {
        return;
    }
    let scratch = Scratch::new("virtio-blk");
    let image = scratch.disk("disk.img", DISK_BYTES);
    let disk = format!("{},serial=vireo-e2e,queues=2", image.display());
    for (mode, pattern, start, count) in
        [("poll", "e2e-poll", 3, 20), ("msix", "e2e-msix", 1000, 64)]
    {
        let cmdline = format!(
            "scenario=virtio-blk mode={mode} pattern={pattern} start={start} sectors={count} discard=1"
        );
        let r = boot(&cmdline, &["--disk", &disk]);
        r.expect_exit(MonitorExit::Ok)
            .expect_stdout("virtio-blk: id 'vireo-e2e'")
            .expect_stdout(&format!(
                "flushed and read back (direct chains) {count} sectors at {start}: match"
            ))
            .expect_stdout("virtio-blk: read at sector 16384 (beyond the end): IOERR")
            .expect_stdout("queues 2 of 2")
            .expect_stdout("virtio-blk: discard of 8 sectors at ")
            .expect_stdout("virtio-blk: write-zeroes of 8 sectors at ");
        if mode == "msix" {
            r.expect_stdout("virtio-blk: queue 1 vector ");
        }
        // Found by the host in the file once the monitor has exited.
        assert_pattern_in_file(&image, pattern, start, count);
    }
    // Without INDIRECT_DESC and EVENT_IDX; and with O_DIRECT.
    let cmdline = "scenario=virtio-blk indirect=0 event_idx=0 pattern=e2e-plain start=40 sectors=9";
    let direct = format!("{},direct", image.display());
    boot(cmdline, &["--disk", &direct])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("wrote (direct chains)");
    assert_pattern_in_file(&image, "e2e-plain", 40, 9);
}

#[test]
fn read_only_disks_refuse_writes_and_keep_the_image() {
    if !kvm_or_skip("read_only_disks_refuse_writes_and_keep_the_image") {
        return;
    }
    let scratch = Scratch::new("virtio-blk-ro");
    let image = scratch.disk("disk.img", DISK_BYTES);
    std::fs::write(&image, vec![0x5a; DISK_BYTES as usize]).expect("filling the image");
    let before = std::fs::read(&image).expect("reading the image");
    let ro = format!("{},readonly", image.display());
    boot("scenario=virtio-blk readonly=1 start=3", &["--disk", &ro])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout(
            "virtio-blk: write to the read-only device failed with IOERR (RO feature offered)",
        );
    assert!(
        std::fs::read(&image).expect("reading the image") == before,
        "the read-only image changed"
    );
}

#[test]
fn hostile_chains_are_refused_and_devices_recover() {
    if !kvm_or_skip("hostile_chains_are_refused_and_devices_recover") {
        return;
    }
    let scratch = Scratch::new("virtio-hostile");
    let image = scratch.disk("disk.img", DISK_BYTES);
    let disk = image.display().to_string();
    let r = boot(
        "scenario=virtio-hostile strict=1",
        &["--disk", &disk, "--rng"],
    );
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout("virtio-hostile: descriptor-loop: DEVICE_NEEDS_RESET")
        .expect_stdout("virtio-hostile: indirect-and-next: DEVICE_NEEDS_RESET")
        .expect_stdout("virtio-hostile: buffer-outside-ram: DEVICE_NEEDS_RESET")
        .expect_stdout("virtio-hostile: unknown-request-type: failed: status UNSUPP")
        .expect_stdout("0 handled leniently")
        .expect_stdout(" still works: 32 random bytes");
    // Rate limited: a guest cannot flood the host's log.
    let lines = r.stderr.lines().count();
    assert!(lines <= 40, "{lines} log lines:\n{}", r.stderr);
    assert_eq!(
        std::fs::metadata(&image).map(|m| m.len()).ok(),
        Some(DISK_BYTES),
        "the image changed size"
    );
}
