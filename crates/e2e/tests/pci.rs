//! Vireo's PCI root complex as the test guest's driver sees it.

use vireo_e2e::{boot, kvm_or_skip, MonitorExit};

#[test]
fn host_bridge_answers_through_ecam_and_the_legacy_ports() {
    if !kvm_or_skip("host_bridge_answers_through_ecam_and_the_legacy_ports") {
        return;
    }
    for access in ["ecam", "legacy"] {
        let r = boot(&format!("scenario=pci pci={access} expect=1b36:0008"), &[]);
        r.expect_exit(MonitorExit::Ok)
            .expect_stdout("pci: 00:00.0 1b36:0008 class 060000")
            .expect_stdout("PASS pci");
    }
    // ECAM comes from the MCFG, the windows from PCI0's _CRS.
    boot("scenario=pci", &[])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("(from ACPI MCFG)")
        .expect_stdout("mmio32 0xc0000000-0xdfffffff");
}

#[test]
fn reset_register_still_works_inside_the_config_ports() {
    if !kvm_or_skip("reset_register_still_works_inside_the_config_ports") {
        return;
    }
    boot("scenario=reset method=cf9", &[])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("reset: rebooted");
}
