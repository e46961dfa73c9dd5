//! The real `vireo` binary's daemon verbs against a fake vireod: a thread
//! serving the REST API on a temporary Unix socket from a small in-memory
//! model (domains, their XML, canned events) and recording each request.
//! The tests assert what a user sees: tables, messages, errors, exit codes.
//! (End-to-end tests against the real vireod live in crates/e2e.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vireo_api::daemon::{DomainInfo, Event};
use vireo_api::domain_state::{PausedReason, RunningReason, ShutOffReason};
use vireo_api::DomainState;

const PID: i32 = 4242;

#[derive(Default)]
struct Model {
    domains: BTreeMap<String, DomainInfo>,
    xml: BTreeMap<String, String>,
    /// "POST /v1/domains/vm1/start" and the body, in order.
    requests: Vec<(String, String)>,
    /// What `/v1/events` sends, then it holds the stream open (or closes it).
    events: Vec<Event>,
    close_events: bool,
}

struct FakeDaemon {
    dir: PathBuf,
    socket: PathBuf,
    model: Arc<Mutex<Model>>,
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn domain_xml(name: &str, memory_kib: u64) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>{memory_kib}</memory>\n  <vcpu>2</vcpu>\n</domain>\n"
    )
}

fn info(name: &str, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.to_owned(),
        uuid: format!("6f1c4a52-1b5e-4c7e-9a43-{:012x}", name.len()),
        state,
        persistent: true,
        autostart: false,
        vcpus: 2,
        memory_kib: 1048576,
        cpu_time_ns: if state.is_active() { 2_500_000_000 } else { 0 },
        pid: state.is_active().then_some(PID),
        last_exit: None,
    }
}

fn event(domain: &str, kind: &str, state: DomainState) -> Event {
    Event {
        domain: domain.to_owned(),
        uuid: info(domain, state).uuid,
        event: kind.to_owned(),
        state,
        detail: None,
    }
}

fn answer(stream: &mut UnixStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn api_error(stream: &mut UnixStream, status: &str, code: &str, message: &str) {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    answer(stream, status, "application/json", &body);
}

fn json(stream: &mut UnixStream, value: &impl serde::Serialize) {
    let body = serde_json::to_string(value).expect("serialises");
    answer(stream, "200 OK", "application/json", &body);
}

/// The fake's "did you mean": a known name that starts with the one asked.
fn no_domain(stream: &mut UnixStream, model: &Model, name: &str) {
    let hint = model
        .domains
        .keys()
        .find(|n| n.starts_with(name))
        .map(|n| format!("; did you mean '{n}'?"))
        .unwrap_or_default();
    api_error(
        stream,
        "404 Not Found",
        "no-domain",
        &format!("no domain named '{name}'{hint}"),
    );
}

fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}"))?;
    let open_end = start + xml[start..].find('>')? + 1;
    let close = open_end + xml[open_end..].find(&format!("</{name}>"))?;
    Some(&xml[open_end..close])
}

fn serve(mut stream: UnixStream, model: Arc<Mutex<Model>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // `Client::connect`'s probe
    }
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("a Content-Length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the request body");
    let body = String::from_utf8(body).expect("a UTF-8 body");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut m = model.lock().expect("the model");
    m.requests
        .push((format!("{method} {target}"), body.clone()));

    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let segments: Vec<String> = path
        .trim_start_matches("/v1/")
        .split('/')
        .map(|s| s.replace("%20", " "))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => json(
            &mut stream,
            &serde_json::json!({"version": "0.1.0", "api": "v1"}),
        ),
        ("GET", ["domains"]) => {
            let list: Vec<&DomainInfo> = m.domains.values().collect();
            json(&mut stream, &list);
        }
        ("POST", ["domains"]) | ("POST", ["domains", "create"]) => {
            let transient = segments.len() == 2;
            if body.contains("<bogus") {
                return api_error(
                    &mut stream,
                    "400 Bad Request",
                    "invalid-xml",
                    "line 5: element <bogus> is not part of a domain definition",
                );
            }
            let Some(name) = tag(&body, "name").map(str::to_owned) else {
                return api_error(
                    &mut stream,
                    "400 Bad Request",
                    "invalid-xml",
                    "line 1: <domain> has no <name>",
                );
            };
            let memory = tag(&body, "memory")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1048576);
            let mut d = m
                .domains
                .get(&name)
                .cloned()
                .unwrap_or_else(|| info(&name, DomainState::ShutOff(ShutOffReason::Unknown)));
            d.memory_kib = memory;
            if transient {
                d.persistent = false;
                d.state = DomainState::Running(RunningReason::Booted);
                d.pid = Some(PID);
            }
            m.xml.insert(name.clone(), body.clone());
            m.domains.insert(name, d.clone());
            json(&mut stream, &d);
        }
        (method, ["domains", name, rest @ ..]) => {
            let name = name.to_string();
            let Some(mut d) = m.domains.get(&name).cloned() else {
                return no_domain(&mut stream, &m, &name);
            };
            match (method, rest) {
                ("GET", []) => json(&mut stream, &d),
                ("DELETE", []) => {
                    m.domains.remove(&name);
                    answer(&mut stream, "204 No Content", "text/plain", "");
                }
                ("GET", ["xml"]) => {
                    assert!(query.is_empty() || query == "inactive=true", "{query}");
                    let xml = m.xml.get(&name).cloned().unwrap_or_default();
                    answer(&mut stream, "200 OK", "application/xml", &xml);
                }
                ("PUT", ["autostart"]) => {
                    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                    d.autostart = v["enabled"].as_bool().expect("enabled");
                    m.domains.insert(name, d);
                    answer(&mut stream, "204 No Content", "text/plain", "");
                }
                ("POST", [action]) => {
                    let running = d.state.is_active();
                    let next = match *action {
                        "start" if running => {
                            return api_error(
                                &mut stream,
                                "409 Conflict",
                                "operation-invalid",
                                &format!("domain '{name}' is already running"),
                            )
                        }
                        "start" => DomainState::Running(RunningReason::Booted),
                        _ if !running => {
                            return api_error(
                                &mut stream,
                                "409 Conflict",
                                "operation-invalid",
                                &format!("domain '{name}' is not running"),
                            )
                        }
                        "suspend" => DomainState::Paused(PausedReason::User),
                        "resume" => DomainState::Running(RunningReason::Unpaused),
                        "destroy" => DomainState::ShutOff(ShutOffReason::Destroyed),
                        "shutdown" => DomainState::ShutOff(ShutOffReason::Shutdown),
                        "reboot" | "reset" => d.state,
                        other => panic!("unknown action {other}"),
                    };
                    d.state = next;
                    d.pid = next.is_active().then_some(PID);
                    m.domains.insert(name, d.clone());
                    json(&mut stream, &d);
                }
                _ => panic!("unexpected request {method} {target}"),
            }
        }
        ("GET", ["events"]) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            for e in &m.events {
                let line = format!("{}\n", serde_json::to_string(e).expect("serialises"));
                let _ = write!(stream, "{:x}\r\n{line}\r\n", line.len());
            }
            if m.close_events {
                let _ = write!(stream, "0\r\n\r\n");
                return;
            }
            drop(m);
            // Hold the stream open until the client goes away.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
        _ => panic!("unexpected request {method} {target}"),
    }
}

impl FakeDaemon {
    fn new(test: &str, domains: Vec<DomainInfo>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vireo-daemon-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        let socket = dir.join("vireod.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake vireod");
        let mut model = Model::default();
        for d in domains {
            model
                .xml
                .insert(d.name.clone(), domain_xml(&d.name, d.memory_kib));
            model.domains.insert(d.name.clone(), d);
        }
        let model = Arc::new(Mutex::new(model));
        let shared = model.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let model = shared.clone();
                std::thread::spawn(move || serve(stream, model));
            }
        });
        FakeDaemon { dir, socket, model }
    }

    /// Runs `vireo ARGS` against this daemon (through VIREO_SOCKET), in
    /// the scratch directory.
    fn vireo(&self, args: &[&str]) -> Output {
        self.vireo_with(args, &[], "")
    }

    fn vireo_with(&self, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
        run_vireo(&self.dir, args, &self.socket, env, stdin)
    }

    /// The requests seen so far, as "METHOD TARGET".
    fn requests(&self) -> Vec<String> {
        let m = self.model.lock().expect("the model");
        m.requests.iter().map(|(r, _)| r.clone()).collect()
    }

    fn last_body(&self) -> String {
        let m = self.model.lock().expect("the model");
        m.requests
            .last()
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }

    fn domain(&self, name: &str) -> DomainInfo {
        let m = self.model.lock().expect("the model");
        m.domains.get(name).cloned().expect("the domain exists")
    }
}

fn run_vireo(
    dir: &Path,
    args: &[&str],
    socket: &Path,
    env: &[(&str, &str)],
    stdin: &str,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vireo"));
    cmd.args(args)
        .current_dir(dir)
        .env("VIREO_SOCKET", socket)
        .env_remove("VISUAL")
        .env_remove("EDITOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run vireo");
    {
        let mut input = child.stdin.take().expect("stdin");
        let _ = input.write_all(stdin.as_bytes());
    }
    wait_bounded(child)
}

/// Waits at most 30 s: a hung CLI fails the test rather than CI.
fn wait_bounded(mut child: std::process::Child) -> Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait for vireo").is_some() {
            return child.wait_with_output().expect("vireo's output");
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("vireo's output");
            panic!(
                "vireo hung; stdout: {} stderr: {}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command succeeded; its standard output.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "vireo failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The command failed with status 1 and nothing on standard output; its
/// standard error.
fn fails(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "", "nothing on stdout when failing");
    stderr(&out)
}

fn two_domains() -> Vec<DomainInfo> {
    vec![
        info("web", DomainState::ShutOff(ShutOffReason::Shutdown)),
        info("db-primary", DomainState::Running(RunningReason::Booted)),
    ]
}

#[test]
fn list_prints_virshs_table() {
    let fake = FakeDaemon::new("list", two_domains());
    assert_eq!(
        ok(fake.vireo(&["list"])),
        " Id     Name         State\n\
         ------------------------------\n \
         4242   db-primary   running\n\n"
    );
    assert_eq!(
        ok(fake.vireo(&["list", "--all"])),
        " Id     Name         State\n\
         -------------------------------\n \
         4242   db-primary   running\n \
         -      web          shut off\n\n"
    );
    assert_eq!(ok(fake.vireo(&["list", "--inactive", "--name"])), "web\n\n");
    let json: Vec<DomainInfo> =
        serde_json::from_str(&ok(fake.vireo(&["list", "--all", "--json"]))).expect("JSON");
    assert_eq!(json.len(), 2);
    assert_eq!(json[1].name, "web");
}

#[test]
fn the_lifecycle_verbs_say_what_they_did() {
    let fake = FakeDaemon::new("lifecycle", vec![]);
    std::fs::write(fake.dir.join("vm1.xml"), domain_xml("vm1", 524288)).expect("write XML");
    assert_eq!(
        ok(fake.vireo(&["define", "vm1.xml"])),
        "Domain 'vm1' defined from vm1.xml\n\n"
    );
    assert_eq!(fake.last_body(), domain_xml("vm1", 524288));
    assert_eq!(fake.domain("vm1").memory_kib, 524288);

    let steps: &[(&str, &str, &str)] = &[
        ("start", "started", "running (booted)"),
        ("suspend", "suspended", "paused (user)"),
        ("resume", "resumed", "running (unpaused)"),
        ("reboot", "is being rebooted", "running (unpaused)"),
        ("reset", "was reset", "running (unpaused)"),
        ("destroy", "destroyed", "shut off (destroyed)"),
        ("start", "started", "running (booted)"),
        ("shutdown", "is being shutdown", "shut off (shutdown)"),
    ];
    for (verb, said, state) in steps {
        assert_eq!(
            ok(fake.vireo(&[verb, "vm1"])),
            format!("Domain 'vm1' {said}\n\n"),
            "vireo {verb}"
        );
        assert_eq!(
            fake.requests().last().map(String::as_str),
            Some(format!("POST /v1/domains/vm1/{verb}").as_str())
        );
        assert_eq!(
            ok(fake.vireo(&["domstate", "vm1", "--reason"])),
            format!("{state}\n\n"),
            "after {verb}"
        );
    }
    assert_eq!(ok(fake.vireo(&["domstate", "vm1"])), "shut off\n\n");
    assert_eq!(
        ok(fake.vireo(&["domstate", "vm1", "--json"])).trim(),
        "{\n  \"state\": \"shut-off\",\n  \"reason\": \"shutdown\"\n}"
    );

    assert_eq!(
        ok(fake.vireo(&["autostart", "vm1"])),
        "Domain 'vm1' marked as autostarted\n\n"
    );
    assert!(fake.domain("vm1").autostart);
    assert_eq!(fake.last_body(), r#"{"enabled":true}"#);
    assert_eq!(
        ok(fake.vireo(&["autostart", "--disable", "vm1"])),
        "Domain 'vm1' unmarked as autostarted\n\n"
    );
    assert!(!fake.domain("vm1").autostart);

    assert_eq!(
        ok(fake.vireo(&["undefine", "vm1"])),
        "Domain 'vm1' has been undefined\n\n"
    );
    assert_eq!(ok(fake.vireo(&["list", "--all", "--name"])), "\n");
}

#[test]
fn create_starts_a_transient_domain_and_a_console_needs_the_daemon() {
    let fake = FakeDaemon::new("create", vec![]);
    std::fs::write(fake.dir.join("t1.xml"), domain_xml("t1", 262144)).expect("write XML");
    assert_eq!(
        ok(fake.vireo(&["create", "t1.xml"])),
        "Domain 't1' created from t1.xml\n\n"
    );
    let t1 = fake.domain("t1");
    assert!(!t1.persistent && t1.state.is_active());
    assert_eq!(
        ok(fake.vireo(&["list"])),
        " Id     Name   State\n------------------------\n 4242   t1     running\n\n"
    );

    // The fake daemon has no console route: the error is the daemon's
    // answer, after the start (the real console is tested in e2e).
    let err = fails(fake.vireo(&["console", "t1"]));
    assert!(err.starts_with("error: "), "{err}");
}

#[test]
fn errors_are_the_daemons_message_on_one_line() {
    let fake = FakeDaemon::new("errors", two_domains());
    assert_eq!(
        fails(fake.vireo(&["start", "db"])),
        "error: no domain named 'db'; did you mean 'db-primary'?\n"
    );
    assert_eq!(
        fails(fake.vireo(&["dominfo", "nothing"])),
        "error: no domain named 'nothing'\n"
    );
    assert_eq!(
        fails(fake.vireo(&["start", "db-primary"])),
        "error: domain 'db-primary' is already running\n"
    );
    std::fs::write(
        fake.dir.join("bad.xml"),
        "<domain>\n<name>x</name>\n\n\n<bogus/>\n</domain>\n",
    )
    .expect("write XML");
    assert_eq!(
        fails(fake.vireo(&["define", "bad.xml"])),
        "error: line 5: element <bogus> is not part of a domain definition\n"
    );
    assert_eq!(
        fails(fake.vireo(&["define", "missing.xml"])),
        "error: cannot read 'missing.xml': No such file or directory (os error 2)\n"
    );
}

#[test]
fn without_a_daemon_the_socket_is_named() {
    let dir = std::env::temp_dir().join(format!("vireo-daemon-cli-absent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let absent = dir.join("vireod.sock");
    for args in [
        &["list"][..],
        &["start", "vm1"],
        &["event", "--loop"],
        &["version"],
    ] {
        let err = fails(run_vireo(&dir, args, &absent, &[], ""));
        assert_eq!(
            err,
            format!(
                "error: cannot reach the daemon at {} (is vireod running?): No such file or \
                 directory (os error 2)\n",
                absent.display()
            ),
            "vireo {args:?}"
        );
    }
    // A socket left behind by a daemon that died.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let err = fails(run_vireo(&dir, &["list"], &stale, &[], ""));
    assert!(
        err.contains("(is vireod running?): Connection refused"),
        "{err}"
    );
    // --connect wins over VIREO_SOCKET.
    let fake = FakeDaemon::new("connect-flag", two_domains());
    let socket = fake.socket.to_str().expect("UTF-8 path");
    let out = ok(run_vireo(
        &dir,
        &["--connect", socket, "list", "--name"],
        &absent,
        &[],
        "",
    ));
    assert_eq!(out, "db-primary\n\n");
    // `vireo run` needs no daemon.
    let out = ok(run_vireo(
        &dir,
        &["run", "--list-scenarios"],
        &absent,
        &[],
        "",
    ));
    assert!(out.contains("hello"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dominfo_and_domstats_lay_out_like_virsh() {
    let fake = FakeDaemon::new("dominfo", two_domains());
    assert_eq!(
        ok(fake.vireo(&["dominfo", "db-primary"])),
        "Id:             4242\n\
         Name:           db-primary\n\
         UUID:           6f1c4a52-1b5e-4c7e-9a43-00000000000a\n\
         OS Type:        hvm\n\
         State:          running\n\
         CPU(s):         2\n\
         CPU time:       2.5s\n\
         Max memory:     1048576 KiB\n\
         Used memory:    1048576 KiB\n\
         Persistent:     yes\n\
         Autostart:      disable\n\n"
    );
    let json: DomainInfo =
        serde_json::from_str(&ok(fake.vireo(&["--json", "dominfo", "web"]))).expect("JSON");
    assert_eq!(json, fake.domain("web"));

    assert_eq!(
        ok(fake.vireo(&["domstats"])),
        "Domain: 'db-primary'\n  state.state=1\n  state.reason=1\n  cpu.time=2500000000\n  \
         balloon.current=1048576\n  balloon.maximum=1048576\n  vcpu.current=2\n  \
         vcpu.maximum=2\n\n\
         Domain: 'web'\n  state.state=5\n  state.reason=1\n  balloon.current=1048576\n  \
         balloon.maximum=1048576\n  vcpu.current=2\n  vcpu.maximum=2\n\n"
    );
    assert_eq!(
        ok(fake.vireo(&["domstats", "--state", "web"])),
        "Domain: 'web'\n  state.state=5\n  state.reason=1\n\n"
    );
    assert_eq!(
        ok(fake.vireo(&["domstats", "--list-running", "--vcpu"])),
        "Domain: 'db-primary'\n  vcpu.current=2\n  vcpu.maximum=2\n\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(fake.vireo(&["domstats", "--json", "web"]))).expect("JSON");
    assert_eq!(json[0]["name"], "web");
    assert_eq!(json[0]["stats"]["state.state"], 5);
    assert_eq!(
        fails(fake.vireo(&["domstats", "web", "nope"])),
        "error: no domain named 'nope'\n"
    );
}

#[test]
fn dumpxml_prints_the_definition() {
    let fake = FakeDaemon::new("dumpxml", two_domains());
    assert_eq!(
        ok(fake.vireo(&["dumpxml", "web", "--inactive"])),
        domain_xml("web", 1048576)
    );
    assert_eq!(
        fake.requests().last().map(String::as_str),
        Some("GET /v1/domains/web/xml?inactive=true")
    );
    ok(fake.vireo(&["dumpxml", "web"]));
    assert_eq!(
        fake.requests().last().map(String::as_str),
        Some("GET /v1/domains/web/xml")
    );
}

#[test]
fn edit_redefines_what_the_editor_saved() {
    let fake = FakeDaemon::new("edit", two_domains());
    // An editor that saves nothing new.
    assert_eq!(
        ok(fake.vireo_with(&["edit", "web"], &[("EDITOR", "true")], "")),
        "Domain 'web' XML configuration not changed.\n\n"
    );
    assert!(!fake.requests().iter().any(|r| r == "POST /v1/domains"));

    // $VISUAL comes before $EDITOR, and runs through the shell.
    assert_eq!(
        ok(fake.vireo_with(
            &["edit", "web"],
            &[("VISUAL", "sed -i s/1048576/2097152/"), ("EDITOR", "false")],
            ""
        )),
        "Domain 'web' XML configuration edited.\n\n"
    );
    assert_eq!(fake.last_body(), domain_xml("web", 2097152));
    assert_eq!(fake.domain("web").memory_kib, 2097152);

    // A refused definition: the error, the question; "n" gives up.
    let spoil = "sed -i 's#</domain>#<bogus/></domain>#'";
    let out = fake.vireo_with(&["edit", "web"], &[("EDITOR", spoil)], "n\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: line 5: element <bogus> is not part of a domain definition\n"
    );
    assert_eq!(stdout(&out), "Failed. Try again? [y,n,i,f,?]: ");
    assert_eq!(fake.domain("web").memory_kib, 2097152, "nothing changed");

    // "y" opens the editor again on the same file: this editor spoils the
    // XML the first time and repairs it the second.
    let script = fake.dir.join("editor.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ -e \"$0.done\" ]; then sed -i 's#<bogus/>##; s#2097152#4194304#' \"$1\"; \
         else touch \"$0.done\"; sed -i 's#</domain>#<bogus/></domain>#' \"$1\"; fi\n",
    )
    .expect("write the editor");
    let editor = format!("sh {}", script.display());
    let out = fake.vireo_with(&["edit", "web"], &[("EDITOR", &editor)], "?\ny\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("y - yes, edit the XML again"), "{text}");
    assert!(
        text.ends_with("Domain 'web' XML configuration edited.\n\n"),
        "{text}"
    );
    assert_eq!(fake.domain("web").memory_kib, 4194304);

    assert_eq!(
        fails(fake.vireo_with(&["edit", "wb"], &[("EDITOR", "true")], "")),
        "error: no domain named 'wb'\n"
    );
}

fn with_events(test: &str, close: bool) -> FakeDaemon {
    let fake = FakeDaemon::new(test, two_domains());
    {
        let mut m = fake.model.lock().expect("the model");
        m.events = vec![
            event(
                "web",
                "started",
                DomainState::Running(RunningReason::Booted),
            ),
            event(
                "db-primary",
                "suspended",
                DomainState::Paused(PausedReason::User),
            ),
            event(
                "web",
                "stopped",
                DomainState::ShutOff(ShutOffReason::Destroyed),
            ),
        ];
        m.close_events = close;
    }
    fake
}

#[test]
fn event_prints_lifecycle_events_like_virsh() {
    let fake = with_events("events", false);
    assert_eq!(
        ok(fake.vireo(&["event", "--all"])),
        "event 'lifecycle' for domain 'web': Started Booted\nevents received: 1\n"
    );
    assert_eq!(
        ok(fake.vireo(&["event", "--loop", "--timeout", "1"])),
        "event 'lifecycle' for domain 'web': Started Booted\n\
         event 'lifecycle' for domain 'db-primary': Suspended Paused\n\
         event 'lifecycle' for domain 'web': Stopped Destroyed\n\
         event loop timed out\n\
         events received: 3\n"
    );
    assert_eq!(
        ok(fake.vireo(&["event", "db-primary", "--loop", "--timeout", "1"])),
        "event 'lifecycle' for domain 'db-primary': Suspended Paused\n\
         event loop timed out\n\
         events received: 1\n"
    );
    let out = ok(fake.vireo(&["event", "--loop", "--timeout", "1", "--timestamp"]));
    let first = out.lines().next().expect("a line");
    // "2024-05-01 12:34:56.789+0000: event ..."
    assert_eq!(
        &first[23..],
        "+0000: event 'lifecycle' for domain 'web': Started Booted"
    );
    let out = ok(fake.vireo(&["event", "--json"]));
    let e: Event = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(e.event, "started");
    assert_eq!(ok(fake.vireo(&["event", "--list"])), "lifecycle\n");
    assert_eq!(
        fails(fake.vireo(&["event", "--event", "reboot"])),
        "error: unknown event type 'reboot' (vireod reports: lifecycle)\n"
    );
}

#[test]
fn a_closed_event_stream_is_an_error() {
    let fake = with_events("events-closed", true);
    let out = fake.vireo(&["event", "--loop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).ends_with("events received: 3\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stderr(&out), "error: vireod closed the event stream\n");
}

#[test]
fn version_and_completions() {
    let fake = FakeDaemon::new("version", vec![]);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        ok(fake.vireo(&["version"])),
        format!(
            "Compiled against library: vireo {version}\nUsing API: vireod v1\n\
             Running daemon: vireod 0.1.0\n\n"
        )
    );
    let bash = ok(fake.vireo(&["completions", "bash"]));
    assert!(
        bash.contains("complete -F _vireo"),
        "a bash completion script"
    );
    assert!(bash.contains("dominfo") && bash.contains("--inactive"));
    let fish = ok(fake.vireo(&["completions", "fish"]));
    assert!(fish.contains("complete -c vireo"));
    assert!(fake.requests().iter().all(|r| r == "GET /v1/version"));
}
