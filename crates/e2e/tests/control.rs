//! The monitor's control socket, driven as the daemon will drive it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vireo_e2e::{kvm_or_skip, vmm, MonitorExit};

fn connect(path: &std::path::Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                return s;
            }
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("no control socket: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn call(s: &mut UnixStream, line: &str) -> String {
    s.write_all(line.as_bytes()).expect("send");
    s.write_all(b"\n").expect("send");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut reply = String::new();
    r.read_line(&mut reply).expect("reply");
    reply
}

#[test]
fn pause_resume_power_button_and_stop_over_the_socket() {
    if !kvm_or_skip("pause_resume_power_button_and_stop_over_the_socket") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("vireo-control-{}.sock", std::process::id()));
    let mut cmd = vmm(
        "scenario=ticks count=1000 interval_ms=20",
        &["--control", &sock.display().to_string()],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut s = connect(&sock);
    let mode =
        std::fs::metadata(&sock).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(
        mode.ok().map(|m| m & 0o777),
        Some(0o600),
        "owner-only socket"
    );
    assert_eq!(call(&mut s, r#"{"cmd":"ping"}"#).trim(), r#"{"ok":true}"#);
    // Wait until the guest ticks, then pause: no ticks while paused.
    let first = rx.iter().find(|l| l.starts_with("tick ")).expect("ticking");
    assert_eq!(
        call(&mut s, r#"{"cmd":"pause"}"#).trim(),
        r#"{"ok":true}"#,
        "after {first}"
    );
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
    assert!(
        rx.recv_timeout(Duration::from_millis(400)).is_err(),
        "output while paused"
    );
    assert_eq!(call(&mut s, r#"{"cmd":"resume"}"#).trim(), r#"{"ok":true}"#);
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "ticks again after resume"
    );
    // The test guest has not enabled the power button event.
    assert_eq!(
        call(&mut s, r#"{"cmd":"power-button"}"#).trim(),
        r#"{"ok":true,"guest_listening":false}"#
    );
    let bad = call(&mut s, r#"{"cmd":"frobnicate"}"#);
    assert!(bad.contains(r#""code":"bad-request""#), "{bad}");
    assert!(call(&mut s, "not json").contains("bad-request"));
    let extra = call(&mut s, r#"{"cmd":"pause","now":true}"#);
    assert!(extra.contains("unknown field 'now'"), "{extra}");
    assert_eq!(call(&mut s, r#"{"cmd":"stop"}"#).trim(), r#"{"ok":true}"#);
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(i32::from(MonitorExit::Terminated.code()))
    );
    assert!(!sock.exists(), "socket removed at exit");
}

#[test]
fn oversized_request_is_refused_and_the_monitor_lives_on() {
    if !kvm_or_skip("oversized_request_is_refused_and_the_monitor_lives_on") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("vireo-control-big-{}.sock", std::process::id()));
    let mut cmd = vmm("scenario=wait", &["--control", &sock.display().to_string()]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut s = connect(&sock);
    let junk = vec![b'x'; 1 << 20];
    let _ = s.write_all(&junk);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("longer than"), "{reply}");
    let mut s = connect(&sock);
    assert_eq!(
        call(&mut s, r#"{"cmd":"ping"}"#).trim(),
        r#"{"ok":true}"#,
        "still serving"
    );
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"q")
        .expect("input");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn power_button_asks_a_listening_guest_to_shut_down() {
    if !kvm_or_skip("power_button_asks_a_listening_guest_to_shut_down") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("vireo-control-pb-{}.sock", std::process::id()));
    let mut cmd = vmm(
        "scenario=powerbutton",
        &["--control", &sock.display().to_string()],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines().map_while(Result::ok);
    assert!(
        lines.any(|l| l.contains("waiting for the power button")),
        "guest listening"
    );
    let mut s = connect(&sock);
    let reply = call(&mut s, r#"{"cmd":"power-button"}"#);
    assert_eq!(reply.trim(), r#"{"ok":true,"guest_listening":true}"#);
    assert!(
        lines.any(|l| l.contains("pressed; powering off")),
        "guest saw the press"
    );
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "a graceful power-off");
}
