//! Pausing and resuming a running VM through the library API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vireo_api::MonitorExit;
use vireo_vmm::{Machine, SerialConfig, VmConfig};

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().expect("not poisoned")).into_owned()
}

fn wait_until(buf: &Arc<Mutex<Vec<u8>>>, what: &str, timeout: Duration) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if text(buf).contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn paused_guest_makes_no_progress_and_resumes() {
    if !vireo_e2e::kvm_or_skip("paused_guest_makes_no_progress_and_resumes") {
        return;
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(vireo_test_guest::elf_path());
    config.cmdline = "scenario=ticks count=20".into();
    config.cpus = 2;
    config.serial = SerialConfig::Capture(out.clone());
    let (machine, handle) = Machine::new(config).expect("machine");
    let runner = std::thread::spawn(move || machine.run());
    // A watchdog: nothing may hang the test suite.
    let watchdog = handle.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        watchdog.stop();
    });

    assert!(
        wait_until(&out, "tick 2", Duration::from_secs(30)),
        "ticking:\n{}",
        text(&out)
    );
    handle.pause().expect("pause");
    let frozen = text(&out);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(text(&out), frozen, "no output while paused");
    assert!(!frozen.contains("PASS"), "{frozen}");
    handle.pause().expect("pausing twice is harmless");
    handle.resume().expect("resume");
    let outcome = runner.join().expect("runner").expect("runs");
    assert_eq!(outcome.exit, MonitorExit::Ok, "{outcome:?}\n{}", text(&out));
    assert!(text(&out).contains("PASS ticks"), "{}", text(&out));
    assert!(handle.pause().is_err(), "a finished VM cannot be paused");
}
