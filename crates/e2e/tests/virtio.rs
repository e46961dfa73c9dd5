//! Vireo's virtio-pci devices driven by the test guest's drivers (the same
//! scenarios pass on QEMU's devices in pci_qemu.rs).

use vireo_e2e::{boot, kvm_or_skip, run, vmm, MonitorExit};

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
    ] {
        let r = run(vmm("scenario=hello", args), b"");
        r.expect_exit(MonitorExit::Usage).expect_stderr(needle);
    }
}
