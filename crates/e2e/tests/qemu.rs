//! The same test-guest binary passes in QEMU: the guest is a fair reference
//! for comparing Vireo with QEMU, and Vireo is not the only thing it runs on.

use vireo_e2e::{kvm_or_skip, qemu, run};

/// QEMU's isa-debug-exit turns guest status v into exit code (v << 1) | 1.
const QEMU_PASS: i32 = 1;

fn on_qemu(cmdline: &str, cpus: u32, mem: u64) -> Option<vireo_e2e::Finished> {
    match qemu(cmdline, cpus, mem) {
        Some(cmd) => Some(run(cmd, b"")),
        None => {
            eprintln!(
                "SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
            );
            None
        }
    }
}

#[test]
fn test_guest_passes_in_qemu() {
    if !kvm_or_skip("test_guest_passes_in_qemu") {
        return;
    }
    for (cmdline, cpus, mem, expect) in [
        ("scenario=hello", 1, 128, "PASS hello"),
        (
            "scenario=cmdline a=b",
            1,
            128,
            "cmdline: scenario=cmdline a=b",
        ),
        ("scenario=mem mem=256", 1, 256, "PASS mem"),
        ("scenario=smp cpus=2", 2, 128, "smp: 2 cpus online"),
        ("scenario=smp cpus=4", 4, 128, "smp: 4 cpus online"),
    ] {
        let Some(r) = on_qemu(cmdline, cpus, mem) else {
            return;
        };
        assert_eq!(r.code, Some(QEMU_PASS), "{cmdline} on QEMU\n{r}");
        r.expect_stdout(expect);
    }
}
