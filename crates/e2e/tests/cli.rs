//! `vireo run` as a user types it, including every way to get it wrong.

use std::process::Command;

use vireo_e2e::{bin, kvm_or_skip, run, MonitorExit};

fn vireo(args: &[&str]) -> vireo_e2e::Finished {
    let mut c = Command::new(bin("vireo"));
    c.arg("run").args(args);
    run(c, b"")
}

#[test]
fn default_run_boots_the_built_in_guest() {
    if !kvm_or_skip("default_run_boots_the_built_in_guest") {
        return;
    }
    vireo(&[])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("vireo-test-guest: ready")
        .expect_stdout("PASS hello");
}

#[test]
fn scenario_shortcut_passes_cpus_and_memory() {
    if !kvm_or_skip("scenario_shortcut_passes_cpus_and_memory") {
        return;
    }
    vireo(&["--scenario", "smp", "--cpus", "4"])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("smp: 4 cpus online");
    vireo(&["--scenario", "mem", "--memory", "1G"]).expect_exit(MonitorExit::Ok);
}

#[test]
fn bad_arguments_give_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--cpus", "0"], "at least one vCPU"),
        (&["--cpus", "1000"], "at most"),
        (&["--cpus", "two"], "invalid value 'two'"),
        (&["--memory", "1M"], "too small"),
        (&["--memory", "12X"], "unknown unit"),
        (&["--memory", "lots"], "not a size"),
        (&["--memory", "999999T"], "too large"),
        (
            &["--kernel", "/nonexistent/vmlinux"],
            "cannot open the kernel '/nonexistent/vmlinux'",
        ),
        (&["--kernel", "/etc/passwd"], "is not a kernel"),
        (&["--kernel", "/"], "is not a kernel"),
        (
            &["--scenario", "nosuch"],
            "no test-guest scenario named 'nosuch'",
        ),
        (&["--serial", "tcp:1234"], "not a serial sink"),
        (&["--serial", "unix:"], "needs a path"),
        (
            &["--kernel", "/etc/passwd", "--scenario", "hello"],
            "cannot be used with",
        ),
    ];
    for (args, expect) in cases {
        let r = vireo(args);
        assert!(r.code.is_some_and(|c| c != 0), "{args:?} must fail\n{r}");
        assert!(
            r.stderr.contains(expect),
            "{args:?}: expected {expect:?}\n{r}"
        );
        assert!(!r.stderr.contains("panicked"), "{args:?} panicked\n{r}");
        let lines = r.stderr.lines().filter(|l| l.contains("error")).count();
        assert_eq!(lines, 1, "{args:?}: one error line\n{r}");
    }
}

#[test]
fn exit_codes_are_documented() {
    // The README's table and the enum agree.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    for e in MonitorExit::ALL {
        assert!(
            readme.contains(&format!("| {} | {} |", e.code(), e.describe())),
            "README lacks the row for exit code {} ({})",
            e.code(),
            e.describe()
        );
    }
}
