//! The real `vireod` binary, driven over its Unix socket as a client
//! would: definitions, lifecycle through the guest, a daemon killed and
//! restarted while VMs run, a monitor killed, many VMs at once with
//! nothing leaked.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::{bin, kvm_or_skip, NetNs};

struct Vireod {
    root: PathBuf,
    child: Option<Child>,
}

impl Vireod {
    fn start(root: &Path) -> Vireod {
        Self::start_in(root, None)
    }

    /// Starts vireod, inside network namespace `ns` if given.
    fn start_in(root: &Path, ns: Option<&NetNs>) -> Vireod {
        std::fs::create_dir_all(root).expect("root");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("vireod.log"))
            .expect("log");
        let mut command = Command::new(bin("vireod"));
        command
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--run-dir")
            .arg(root.join("run"))
            .arg("--log-dir")
            .arg(root.join("log"))
            .args(["--destroy-grace", "5"]);
        let mut command = match ns {
            Some(ns) => ns.wrap(&command),
            None => command,
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vireod");
        let d = Vireod {
            root: root.to_owned(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(d.socket()).is_err() {
            assert!(Instant::now() < deadline, "vireod did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/vireod.sock")
    }

    /// One request; returns (status, body).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = UnixStream::connect(self.socket()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: vireod\r\nConnection: close\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read");
        let status = reply[9..12].parse().expect("status");
        let body = reply.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // Chunked bodies are not used by these routes.
        (status, body.to_owned())
    }

    fn ok(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let (status, text) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    fn state(&self, name: &str) -> String {
        let v = self.ok("GET", &format!("/v1/domains/{name}"), "");
        format!(
            "{} ({})",
            v["state"]["state"].as_str().unwrap_or("?"),
            v["state"]["reason"].as_str().unwrap_or("?")
        )
    }

    fn wait_state(&self, name: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.state(name);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{name}: {got}, never {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for Vireod {
    fn drop(&mut self) {
        self.kill();
        // Whatever a failed test left running goes too.
        for pid in monitors_of(&self.root) {
            // SAFETY: kill(2) on a monitor of this test's run directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn domain(name: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><cmdline>scenario=powerbutton timeout_ms=600000</cmdline></os>\
         <devices><serial type='pty'><target port='0'/></serial></devices></domain>"
    )
}

fn scratch(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("vireod-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    root
}

fn monitors_of(root: &Path) -> Vec<u32> {
    // Monitors whose command line names this test's run directory.
    let needle = root.join("run").display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("vireo-vmm") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn define_start_shutdown_undefine_through_the_daemon() {
    if !kvm_or_skip("define_start_shutdown_undefine_through_the_daemon") {
        return;
    }
    let root = scratch("life");
    let d = Vireod::start(&root);
    let v = d.ok("POST", "/v1/domains", &domain("vm1"));
    assert_eq!(v["name"], "vm1");
    assert!(root.join("state/domains/vm1.xml").exists());
    let (status, text) = d.call("GET", "/v1/domains/vm2", "");
    assert_eq!(status, 404);
    assert!(text.contains("did you mean 'vm1'"), "{text}");
    let (status, text) = d.call(
        "POST",
        "/v1/domains",
        "<domain type='kvm'><name>bad</name><memory unit='parsecs'>1</memory></domain>",
    );
    assert_eq!(status, 400);
    assert!(
        text.contains("invalid-xml") && text.contains("parsecs"),
        "{text}"
    );
    d.ok("POST", "/v1/domains/vm1/start", "");
    assert_eq!(d.state("vm1"), "running (booted)");
    std::thread::sleep(Duration::from_millis(500));
    d.ok("POST", "/v1/domains/vm1/shutdown", "");
    d.wait_state("vm1", "shut-off (shutdown)");
    let (status, _) = d.call("DELETE", "/v1/domains/vm1", "");
    assert_eq!(status, 204);
    assert!(!root.join("state/domains/vm1.xml").exists());
    assert_eq!(d.ok("GET", "/v1/domains", ""), serde_json::json!([]));
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn vms_outlive_a_killed_daemon_and_a_killed_monitor_is_reported_crashed() {
    if !kvm_or_skip("vms_outlive_a_killed_daemon_and_a_killed_monitor_is_reported_crashed") {
        return;
    }
    let root = scratch("restart");
    let mut d = Vireod::start(&root);
    d.ok("POST", "/v1/domains", &domain("a"));
    d.ok("POST", "/v1/domains", &domain("b"));
    let pid_a = d.ok("POST", "/v1/domains/a/start", "")["pid"]
        .as_i64()
        .expect("pid");
    d.ok("POST", "/v1/domains/b/start", "");
    d.kill();
    // SAFETY: signal 0 only checks the process exists.
    let alive = unsafe { libc::kill(pid_a as i32, 0) } == 0;
    assert!(alive, "the VM died with the daemon");
    let d = Vireod::start(&root);
    let a = d.ok("GET", "/v1/domains/a", "");
    assert_eq!(a["pid"].as_i64(), Some(pid_a), "not managed again: {a}");
    assert_eq!(d.state("a"), "running (unknown)");
    // Managed again: destroy works.
    d.ok("POST", "/v1/domains/a/destroy", "");
    assert_eq!(d.state("a"), "shut-off (destroyed)");
    // A monitor killed behind the daemon's back is reported crashed.
    let pid_b = d.ok("GET", "/v1/domains/b", "")["pid"]
        .as_i64()
        .expect("pid");
    // SAFETY: kill(2) on the monitor this test started.
    unsafe { libc::kill(pid_b as i32, libc::SIGKILL) };
    d.wait_state("b", "shut-off (crashed)");
    assert!(monitors_of(&root).is_empty());
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn many_vms_start_and_stop_concurrently_without_leaks() {
    if !kvm_or_skip("many_vms_start_and_stop_concurrently_without_leaks") {
        return;
    }
    let root = scratch("many");
    let d = Vireod::start(&root);
    let fds_before = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("fds")
        .count();
    const N: usize = 8;
    for round in 0..2 {
        std::thread::scope(|s| {
            for i in 0..N {
                let d = &d;
                s.spawn(move || {
                    let name = format!("vm{i}");
                    if round == 0 {
                        d.ok("POST", "/v1/domains", &domain(&name));
                    }
                    d.ok("POST", &format!("/v1/domains/{name}/start"), "");
                });
            }
        });
        assert_eq!(monitors_of(&root).len(), N);
        std::thread::scope(|s| {
            for i in 0..N {
                let d = &d;
                s.spawn(move || {
                    d.ok("POST", &format!("/v1/domains/vm{i}/destroy"), "");
                });
            }
        });
        assert!(monitors_of(&root).is_empty(), "monitors left running");
        let left: Vec<_> = std::fs::read_dir(root.join("run/domains"))
            .expect("run dir")
            .flatten()
            .collect();
        assert!(left.is_empty(), "runtime directories left: {left:?}");
    }
    // The daemon's descriptors are back where they were (sockets, pidfds).
    std::thread::sleep(Duration::from_millis(200));
    let fds_after = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("fds")
        .count();
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leaked: {fds_before} -> {fds_after}"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs `vireo --connect SOCKET ARGS...`; returns (exit code, stdout, stderr).
fn vireo(d: &Vireod, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("vireo"))
        .arg("--connect")
        .arg(d.socket())
        .args(args)
        .output()
        .expect("run vireo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_vireo_command_line_manages_vms_like_virsh() {
    if !kvm_or_skip("the_vireo_command_line_manages_vms_like_virsh") {
        return;
    }
    let root = scratch("cli");
    let d = Vireod::start(&root);
    let xml = root.join("web.xml");
    std::fs::write(&xml, domain("web")).expect("xml");
    let xml = xml.display().to_string();
    let (code, out, _) = vireo(&d, &["define", &xml]);
    assert_eq!(code, 0);
    assert!(out.contains("Domain 'web' defined from"), "{out}");
    let (code, out, _) = vireo(&d, &["start", "web"]);
    assert_eq!(code, 0);
    assert!(out.contains("Domain 'web' started"), "{out}");
    let (_, out, _) = vireo(&d, &["list", "--all"]);
    assert!(out.contains("web") && out.contains("running"), "{out}");
    let (_, out, _) = vireo(&d, &["domstate", "--reason", "web"]);
    assert_eq!(out.trim(), "running (booted)");
    let (_, out, _) = vireo(&d, &["dominfo", "web"]);
    assert!(
        out.contains("State:") && out.contains("Max memory:") && out.contains("32768 KiB"),
        "{out}"
    );
    let (_, out, _) = vireo(&d, &["dumpxml", "web"]);
    assert!(out.contains("<name>web</name>"), "{out}");
    let (code, _, err) = vireo(&d, &["start", "wbe"]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean 'web'"), "{err}");
    let (code, out, _) = vireo(&d, &["destroy", "web"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = vireo(&d, &["domstate", "--reason", "web"]);
    assert_eq!(out.trim(), "shut off (destroyed)");
    let (code, _, _) = vireo(&d, &["undefine", "web"]);
    assert_eq!(code, 0);
    let (_, out, _) = vireo(&d, &["list", "--all", "--name"]);
    assert!(out.trim().is_empty(), "{out}");
    drop(d);
    let (code, _, err) = vireo(
        &Vireod {
            root: root.clone(),
            child: None,
        },
        &["list"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is vireod running?"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn duplicate_uuids_are_refused_and_a_daemon_killed_mid_define_leaves_whole_definitions() {
    if !kvm_or_skip(
        "duplicate_uuids_are_refused_and_a_daemon_killed_mid_define_leaves_whole_definitions",
    ) {
        return;
    }
    let root = scratch("define-crash");
    let mut d = Vireod::start(&root);
    let with_uuid = |name: &str| {
        domain(name).replace(
            "<memory",
            "<uuid>8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b</uuid><memory",
        )
    };
    d.ok("POST", "/v1/domains", &with_uuid("one"));
    let (status, text) = d.call("POST", "/v1/domains", &with_uuid("two"));
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("already has uuid"), "{text}");
    // Redefining the same domain (same uuid) is an update, not a clash.
    d.ok("POST", "/v1/domains", &with_uuid("one"));
    // Kill the daemon at odd moments while definitions pour in.
    for round in 0..5u64 {
        let socket = d.socket();
        let writer = std::thread::spawn(move || {
            for i in 0..200 {
                let Ok(mut s) = UnixStream::connect(&socket) else {
                    return;
                };
                let body = domain(&format!("d{round}-{i}"));
                let _ = write!(
                    s,
                    "POST /v1/domains HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut sink = String::new();
                let _ = s.read_to_string(&mut sink);
            }
        });
        std::thread::sleep(Duration::from_millis(20 + round * 17));
        d.kill();
        let _ = writer.join();
        let dir = root.join("state/domains");
        for entry in std::fs::read_dir(&dir).expect("store").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "autostart" {
                continue;
            }
            // Leftover temporaries are cleaned at the next start; every
            // definition in place parses whole.
            if name.ends_with(".xml") {
                let text = std::fs::read_to_string(entry.path()).expect("read");
                assert!(
                    text.trim_end().ends_with("</domain>"),
                    "{name} is cut: {text}"
                );
            }
        }
        d = Vireod::start(&root);
        let list = d.ok("GET", "/v1/domains", "");
        let stored = std::fs::read_dir(&dir)
            .expect("store")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".xml"))
            .count();
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(stored),
            "the daemon lost or invented definitions"
        );
        assert!(
            std::fs::read_dir(&dir)
                .expect("store")
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")),
            "temporary files left after a restart"
        );
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_console_reaches_the_guest_through_the_daemon() {
    if !kvm_or_skip("the_console_reaches_the_guest_through_the_daemon") {
        return;
    }
    let root = scratch("console");
    let d = Vireod::start(&root);
    let xml = root.join("echo.xml");
    std::fs::write(
        &xml,
        domain("echo").replace("scenario=powerbutton timeout_ms=600000", "scenario=echo"),
    )
    .expect("xml");
    let (code, _, _) = vireo(&d, &["define", &xml.display().to_string()]);
    assert_eq!(code, 0);
    // start --console, type a line, then leave with Ctrl-].
    let mut child = Command::new(bin("vireo"))
        .arg("--connect")
        .arg(d.socket())
        .args(["start", "--console", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vireo start --console");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"hello console\n").expect("type");
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(&[0x1d]).expect("escape");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Connected to domain 'echo'"), "{stdout}");
    assert!(stdout.contains("echo: hello console"), "{stdout}");
    // Detaching left the VM running.
    assert_eq!(d.state("echo"), "running (booted)");
    // A console the daemon does not provide is refused clearly.
    let (code, _, err) = vireo(&d, &["console", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no domain named 'nosuch'"), "{err}");
    d.ok("POST", "/v1/domains/echo/destroy", "");
    let (code, _, err) = vireo(&d, &["console", "echo"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not running"), "{err}");
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_bridged_nic_reaches_the_host_through_a_tap_the_daemon_made() {
    if !kvm_or_skip("a_bridged_nic_reaches_the_host_through_a_tap_the_daemon_made") {
        return;
    }
    let Some(ns) = NetNs::new(
        "a_bridged_nic_reaches_the_host_through_a_tap_the_daemon_made",
        &format!("vireod-br-{}", std::process::id()),
    ) else {
        return;
    };
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.0.2.2/24", "dev", "br0"]);
    ns.ip(&["link", "set", "br0", "up"]);
    let root = scratch("bridge");
    let d = Vireod::start_in(&root, Some(&ns));
    let console = root.join("console.log");
    let xml = format!(
        "<domain type='kvm'><name>net1</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><cmdline>scenario=virtio-net mode=msix</cmdline></os>\
         <devices><interface type='bridge'><source bridge='br0'/><mac address='52:54:00:12:34:56'/>\
         <target dev='vtap-br'/><model type='virtio'/></interface>\
         <serial type='file'><source path='{}'/><target port='0'/></serial></devices></domain>",
        console.display()
    );
    d.ok("POST", "/v1/domains", &xml);
    d.ok("POST", "/v1/domains/net1/start", "");
    // The guest ARPs and pings the host's bridge address, then powers off.
    d.wait_state("net1", "shut-off (shutdown)");
    let text = std::fs::read_to_string(&console).expect("console");
    assert!(
        text.contains("virtio-net: ping reply from 10.0.2.2"),
        "{text}"
    );
    // The TAP the daemon made is gone with the VM.
    assert_eq!(
        ns.sys_net("vtap-br", "ifindex"),
        "",
        "the TAP is still there"
    );
    // A bridge that does not exist is a clear error, and nothing is left.
    let missing = xml
        .replace("net1", "net2")
        .replace("br0", "nosuchbr")
        .replace("vtap-br", "vtap-no");
    d.ok("POST", "/v1/domains", &missing);
    let (status, text) = d.call("POST", "/v1/domains/net2/start", "");
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("bridge 'nosuchbr' does not exist"), "{text}");
    assert_eq!(d.state("net2"), "shut-off (unknown)");
    drop(d);
    let _ = std::fs::remove_dir_all(&root);
}
