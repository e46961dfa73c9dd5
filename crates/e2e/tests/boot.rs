//! The monitor boots the test guest: what a user of `vireo-vmm` sees.

use std::time::Duration;

use vireo_e2e::{boot, emulated_backend, kvm_or_skip, run, vmm, vmm_unlimited, MonitorExit};

const READY: &str = "vireo-test-guest: ready";

#[test]
fn hello_passes_and_exits_zero() {
    if !kvm_or_skip("hello_passes_and_exits_zero") {
        return;
    }
    let r = boot("scenario=hello", &["--serial", "stdio"]);
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout(READY)
        .expect_stdout("PASS hello");
    assert!(
        r.stderr.trim().is_empty(),
        "a clean run prints nothing on stderr\n{r}"
    );
}

#[test]
fn guest_sees_its_memory_size() {
    if !kvm_or_skip("guest_sees_its_memory_size") {
        return;
    }
    boot("scenario=mem mem=128", &["--memory", "128M"])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("memory: ");
    // The guest checks the size it finds against mem= and fails if they differ.
    boot("scenario=mem mem=128", &["--memory", "256M"]).expect_exit(MonitorExit::GuestFailed);
}

#[test]
fn large_guest_has_ram_above_4g() {
    if !kvm_or_skip("large_guest_has_ram_above_4g") {
        return;
    }
    // 5 GiB: 3 GiB below the MMIO hole, 2 GiB above 4 GiB; the guest writes and
    // reads back the first and last page of every region.
    let r = boot("scenario=mem mem=5120", &["--memory", "5G"]);
    r.expect_exit(MonitorExit::Ok).expect_stdout("0x100000000");
}

#[test]
fn command_line_reaches_the_guest() {
    if !kvm_or_skip("command_line_reaches_the_guest") {
        return;
    }
    boot("scenario=cmdline answer=42 some words", &[])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("cmdline: scenario=cmdline answer=42 some words");
}

fn smp(n: u32) {
    let r = boot(
        &format!("scenario=smp cpus={n}"),
        &["--cpus", &n.to_string()],
    );
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout(&format!("smp: {n} cpus online"));
}

#[test]
fn smp_one_cpu() {
    if kvm_or_skip("smp_one_cpu") {
        smp(1);
    }
}

#[test]
fn smp_two_cpus() {
    if kvm_or_skip("smp_two_cpus") {
        smp(2);
    }
}

#[test]
fn smp_four_cpus_on_a_two_core_host() {
    if kvm_or_skip("smp_four_cpus_on_a_two_core_host") {
        smp(4);
    }
}

#[test]
fn topology_reaches_cpuid_apic_ids_and_madt() {
    if !kvm_or_skip("topology_reaches_cpuid_apic_ids_and_madt") {
        return;
    }
    let topo = ["--cpus", "4", "--topology", "sockets=2,cores=2,threads=1"];
    boot("scenario=smp cpus=4 sockets=2", &topo)
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("smp: 4 cpus online");
    boot("scenario=acpi cpus=4", &topo)
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("4 enabled cpus (apic ids 0 1 2 3)");
    // Threads: APIC IDs 0,1 (socket 0 core 0), 2,3 (core 1) with one socket.
    let smt = ["--cpus", "4", "--topology", "cores=2,threads=2"];
    boot("scenario=smp cpus=4", &smt).expect_exit(MonitorExit::Ok);
}

#[test]
fn reset_reboots_the_guest() {
    if !kvm_or_skip("reset_reboots_the_guest") {
        return;
    }
    let r = boot("scenario=reset", &[]);
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout("reset: resetting")
        .expect_stdout("reset: rebooted");
    assert_eq!(r.stdout.matches(READY).count(), 2, "booted twice\n{r}");
    // With --no-reboot the reset ends the monitor instead.
    let r = boot("scenario=reset", &["--no-reboot"]);
    r.expect_exit(MonitorExit::Reset).expect_stderr("reset");
    assert!(!r.stdout.contains("rebooted"), "{r}");
}

#[test]
fn every_reset_method_reboots() {
    if !kvm_or_skip("every_reset_method_reboots") {
        return;
    }
    for method in ["cf9", "triple-fault"] {
        let r = boot(&format!("scenario=reset method={method}"), &[]);
        r.expect_exit(MonitorExit::Ok)
            .expect_stdout("reset: rebooted");
    }
    // A triple fault with rebooting disabled ends the VM with its own code and a dump.
    boot("scenario=reset method=triple-fault", &["--no-reboot"])
        .expect_exit(MonitorExit::TripleFault)
        .expect_stderr("triple-faulted")
        .expect_stderr("rip=");
}

#[test]
fn poweroff_ends_the_vm() {
    if !kvm_or_skip("poweroff_ends_the_vm") {
        return;
    }
    boot("scenario=poweroff", &[])
        .expect_exit(MonitorExit::Ok)
        .expect_stdout("powering off");
}

#[test]
fn guest_failure_status_is_reported() {
    if !kvm_or_skip("guest_failure_status_is_reported") {
        return;
    }
    boot("scenario=fail", &[])
        .expect_exit(MonitorExit::GuestFailed)
        .expect_stdout("FAIL fail")
        .expect_stderr("failure status 1");
    boot("scenario=nosuch", &[])
        .expect_exit(MonitorExit::GuestFailed)
        .expect_stdout("hello");
}

#[test]
fn guest_exception_is_reported() {
    if !kvm_or_skip("guest_exception_is_reported") {
        return;
    }
    boot("scenario=exception", &[])
        .expect_exit(MonitorExit::GuestFailed)
        .expect_stdout("EXCEPTION vector=13")
        .expect_stderr("failure status 2");
}

#[test]
fn unemulated_instruction_ends_cleanly_with_a_register_dump() {
    if !kvm_or_skip("unemulated_instruction_ends_cleanly_with_a_register_dump") {
        return;
    }
    let r = boot("scenario=unemulated", &[]);
    if emulated_backend() {
        r.expect_exit(MonitorExit::InternalError)
            .expect_stderr("KVM internal error, suberror 1")
            .expect_stderr("rip=")
            .expect_stderr("code at");
        assert!(!r.stderr.contains("panicked"), "{r}");
    } else {
        // Hardware KVM runs the instruction; the guest says so with status 3.
        r.expect_exit(MonitorExit::GuestFailed)
            .expect_stdout("ran natively");
    }
}

#[test]
fn serial_input_reaches_the_guest() {
    if !kvm_or_skip("serial_input_reaches_the_guest") {
        return;
    }
    let r = run(vmm("scenario=echo", &[]), b"hello there\nquit\n");
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout("echo: hello there");
}

#[test]
fn serial_to_a_file() {
    if !kvm_or_skip("serial_to_a_file") {
        return;
    }
    let log = std::env::temp_dir().join(format!("vireo-serial-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let r = boot(
        "scenario=hello",
        &["--serial", &format!("file:{}", log.display())],
    );
    r.expect_exit(MonitorExit::Ok);
    assert!(
        !r.stdout.contains(READY),
        "output went to the file, not stdout\n{r}"
    );
    let text = std::fs::read_to_string(&log).expect("serial log written");
    assert!(text.contains("PASS hello"), "{text}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn serial_on_a_unix_socket() {
    if !kvm_or_skip("serial_on_a_unix_socket") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let path = std::env::temp_dir().join(format!("vireo-serial-{}.sock", std::process::id()));
    let mut cmd = vmm(
        "scenario=echo",
        &["--serial", &format!("unix:{}", path.display())],
    );
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let start = std::time::Instant::now();
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("cannot connect to the console socket: {e}");
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    w.write_all(b"over the socket\nquit\n").expect("write");
    let mut seen = String::new();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("PASS echo") {
            break;
        }
    }
    let status = child.wait().expect("wait");
    assert!(seen.contains("echo: over the socket"), "{seen}");
    assert_eq!(status.code(), Some(0));
    assert!(!path.exists(), "the monitor removes its socket");
}

#[test]
fn sigterm_stops_the_vm_in_order() {
    if !kvm_or_skip("sigterm_stops_the_vm_in_order") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut cmd = vmm("scenario=wait", &["--cpus", "2"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains(READY))),
        "guest became ready"
    );
    let t = std::time::Instant::now();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(i32::from(MonitorExit::Terminated.code()))
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped promptly: {:?}",
        t.elapsed()
    );
}

#[test]
fn exit_budget_stops_a_chatty_guest() {
    if !kvm_or_skip("exit_budget_stops_a_chatty_guest") {
        return;
    }
    // The echo scenario polls the UART forever: a budget of 200 exits ends it.
    let r = run(
        vmm_unlimited("scenario=echo", &["--exit-budget", "200"]),
        b"",
    );
    r.expect_exit(MonitorExit::InternalError)
        .expect_stderr("exit budget is used up")
        .expect_stderr("rip=");
}
