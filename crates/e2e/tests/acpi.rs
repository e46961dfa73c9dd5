//! ACPI tables: the monitor describes the machine (RSDP, XSDT, FADT, MADT, DSDT) and the
//! test guest's `acpi` scenario checks them as an OS would find and read them. The same
//! guest passes on QEMU's microvm (hardware-reduced ACPI), so the checks are not written
//! to fit Vireo alone.

use std::ffi::OsString;
use std::process::Command;

use vireo_e2e::{boot, kvm_or_skip, qemu, run, Finished, MonitorExit};

/// QEMU's isa-debug-exit turns guest status v into exit code (v << 1) | 1.
const QEMU_PASS: i32 = 1;
const QEMU_GUEST_FAILED: i32 = 3;

/// What Vireo's FADT promises (the ports its devices use); and its RSDP is where a legacy
/// OS scans for it as well as in start_info.
const VIREO_ACPI: &str = "sci=9 pm1a_cnt=0x604 reset=0xcf9 scan=1";

fn acpi_on_vireo(cpus: u32) {
    let r = boot(
        &format!("scenario=acpi cpus={cpus} {VIREO_ACPI}"),
        &["--cpus", &cpus.to_string()],
    );
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout("acpi: RSDP at ")
        .expect_stdout("acpi: FACP at ")
        .expect_stdout("acpi: APIC at ")
        .expect_stdout("acpi: DSDT at ")
        .expect_stdout(&format!(", {cpus} enabled cpus "))
        .expect_stdout("PASS acpi");
}

#[test]
fn acpi_tables_describe_one_cpu() {
    if kvm_or_skip("acpi_tables_describe_one_cpu") {
        acpi_on_vireo(1);
    }
}

#[test]
fn acpi_tables_describe_four_cpus() {
    if kvm_or_skip("acpi_tables_describe_four_cpus") {
        acpi_on_vireo(4);
    }
}

#[test]
fn memory_map_is_sorted_with_no_ram_in_the_mmio_hole() {
    if !kvm_or_skip("memory_map_is_sorted_with_no_ram_in_the_mmio_hole") {
        return;
    }
    // 5 GiB: RAM below the hole and above 4 GiB; the guest checks the map is sorted, has no
    // overlaps and no RAM in 0xc0000000-0xffffffff.
    boot("scenario=mem mem=5120 sorted=1", &["--memory", "5G"])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("memory: no overlaps, sorted, no RAM in the 32-bit MMIO hole");
}

/// `cmd` (the e2e helper's microvm command line) with `acpi=on` added to the machine.
fn with_acpi(cmd: &Command) -> Command {
    let mut out = Command::new(cmd.get_program());
    let mut after_machine = false;
    for arg in cmd.get_args() {
        if after_machine {
            let mut machine = OsString::from(arg);
            machine.push(",acpi=on");
            out.arg(machine);
        } else {
            out.arg(arg);
        }
        after_machine = arg == "-M";
    }
    out
}

/// The test guest in QEMU microvm with ACPI on; None (having said so) without QEMU.
fn on_qemu_with_acpi(cmdline: &str, cpus: u32) -> Option<Finished> {
    let Some(cmd) = qemu(cmdline, cpus, 128) else {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return None;
    };
    let cmd = with_acpi(&cmd);
    assert!(
        cmd.get_args()
            .any(|a| a.to_string_lossy().contains(",acpi=on")),
        "acpi=on added to {cmd:?}"
    );
    Some(run(cmd, b""))
}

#[test]
fn acpi_passes_on_qemu_microvm() {
    if !kvm_or_skip("acpi_passes_on_qemu_microvm") {
        return;
    }
    let Some(r) = on_qemu_with_acpi("scenario=acpi cpus=2", 2) else {
        return;
    };
    assert_eq!(r.code, Some(QEMU_PASS), "acpi on QEMU microvm\n{r}");
    r.expect_stdout("acpi: FACP at ")
        .expect_stdout("acpi: APIC at ")
        .expect_stdout("acpi: DSDT at ")
        .expect_stdout(", 2 enabled cpus ")
        .expect_stdout("(hardware-reduced)")
        .expect_stdout("PASS acpi");
}

#[test]
fn acpi_check_fails_on_wrong_expectations() {
    if !kvm_or_skip("acpi_check_fails_on_wrong_expectations") {
        return;
    }
    // microvm is hardware-reduced (no SCI_INT, no PM1 blocks) and has two vCPUs here: the
    // guest must notice both a wrong CPU count and an expectation the FADT does not meet.
    let vireo_acpi = format!("scenario=acpi cpus=2 {VIREO_ACPI}");
    for (cmdline, reason) in [
        (
            "scenario=acpi cpus=1",
            "MADT has 2 enabled processors, expected 1",
        ),
        (vireo_acpi.as_str(), "FADT SCI_INT is 0, expected 9"),
    ] {
        let Some(r) = on_qemu_with_acpi(cmdline, 2) else {
            return;
        };
        assert_eq!(r.code, Some(QEMU_GUEST_FAILED), "{cmdline} on QEMU\n{r}");
        r.expect_stdout(&format!("FAIL acpi: {reason}"));
    }
}
