//! The client against a fake daemon: a thread answering canned HTTP on a
//! temporary Unix socket and recording what it was asked.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use vireo_api::daemon::ErrorCode;
use vireo_api::domain_state::{RunningReason, ShutOffReason};
use vireo_api::DomainState;

use super::*;

/// One request as the fake daemon saw it.
#[derive(Debug)]
struct Seen {
    /// "GET /v1/domains".
    line: String,
    headers: Vec<String>,
    body: String,
}

struct Fake {
    dir: PathBuf,
    socket: PathBuf,
    seen: mpsc::Receiver<Seen>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fake {
    /// Serves one connection per canned answer, in order.
    fn new(name: &str, answers: Vec<Vec<u8>>) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        let socket = dir.join("vireod.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake daemon");
        let (tx, seen) = mpsc::channel();
        thread::spawn(move || {
            // `Client::connect` checks the socket with a connection of its own.
            let _ = listener.accept();
            for answer in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut headers = Vec::new();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().expect("a length");
                    }
                    headers.push(h.trim().to_owned());
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("the request body");
                let _ = tx.send(Seen {
                    line: line.trim().to_owned(),
                    headers,
                    body: String::from_utf8(body).expect("UTF-8 body"),
                });
                let mut stream = reader.into_inner();
                let _ = stream.write_all(&answer);
            }
        });
        Fake { dir, socket, seen }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).expect("the fake daemon listens")
    }

    fn next(&self) -> Seen {
        self.seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake daemon saw a request")
    }
}

fn json_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn info(name: &str, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.to_owned(),
        uuid: "c7a5fdbd-cdaf-9455-926a-d65c16db1809".to_owned(),
        state,
        persistent: true,
        autostart: false,
        vcpus: 2,
        memory_kib: 1048576,
        cpu_time_ns: 0,
        pid: None,
        last_exit: None,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialises")
}

#[test]
fn lists_and_inspects_domains() {
    let vm1 = info("vm1", DomainState::Running(RunningReason::Booted));
    let vm2 = info("vm2", DomainState::ShutOff(ShutOffReason::Destroyed));
    let fake = Fake::new(
        "list",
        vec![
            json_answer("200 OK", &to_json(&vec![vm1.clone(), vm2.clone()])),
            json_answer("200 OK", &to_json(&vm2)),
        ],
    );
    let client = fake.client();
    assert_eq!(client.list().expect("lists"), vec![vm1, vm2.clone()]);
    assert_eq!(fake.next().line, "GET /v1/domains HTTP/1.1");
    // Names are one path segment, whatever they contain.
    assert_eq!(client.info("my vm/2").expect("info"), vm2);
    assert_eq!(fake.next().line, "GET /v1/domains/my%20vm%2F2 HTTP/1.1");
}

#[test]
fn sends_xml_and_actions_as_the_api_describes() {
    let vm = info("vm1", DomainState::Running(RunningReason::Booted));
    let no_content = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
    let fake = Fake::new(
        "actions",
        vec![
            json_answer("200 OK", &to_json(&vm)),
            json_answer("200 OK", &to_json(&vm)),
            json_answer("200 OK", &to_json(&vm)),
            no_content.clone(),
            no_content,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 20\r\n\r\n<domain>x</domain>\n\n"
                .to_vec(),
            json_answer("200 OK", r#"{"version":"0.1.0","api":"v1"}"#),
        ],
    );
    let client = fake.client();
    client.define("<domain/>").expect("defines");
    let seen = fake.next();
    assert_eq!(seen.line, "POST /v1/domains HTTP/1.1");
    assert!(seen
        .headers
        .contains(&"Content-Type: application/xml".to_owned()));
    assert_eq!(seen.body, "<domain/>");

    client.create("<domain t/>").expect("creates");
    let seen = fake.next();
    assert_eq!(seen.line, "POST /v1/domains/create HTTP/1.1");
    assert_eq!(seen.body, "<domain t/>");

    assert_eq!(client.destroy("vm1").expect("destroys"), vm);
    let seen = fake.next();
    assert_eq!(seen.line, "POST /v1/domains/vm1/destroy HTTP/1.1");
    assert!(seen.body.is_empty());

    client.set_autostart("vm1", false).expect("autostart");
    let seen = fake.next();
    assert_eq!(seen.line, "PUT /v1/domains/vm1/autostart HTTP/1.1");
    assert_eq!(seen.body, r#"{"enabled":false}"#);

    client.undefine("vm1").expect("undefines");
    assert_eq!(fake.next().line, "DELETE /v1/domains/vm1 HTTP/1.1");

    assert_eq!(
        client.xml("vm1", true).expect("xml"),
        "<domain>x</domain>\n\n"
    );
    assert_eq!(
        fake.next().line,
        "GET /v1/domains/vm1/xml?inactive=true HTTP/1.1"
    );

    assert_eq!(
        client.version().expect("version"),
        VersionInfo {
            version: "0.1.0".into(),
            api: "v1".into()
        }
    );
}

#[test]
fn refusals_carry_the_daemons_code_and_message() {
    let fake = Fake::new(
        "refusal",
        vec![
            json_answer(
                "404 Not Found",
                r#"{"code":"no-domain","message":"no domain named 'vm'; did you mean 'vm1'?"}"#,
            ),
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n\r\nproxy error".to_vec(),
        ],
    );
    let client = fake.client();
    let e = client.start("vm").expect_err("refused");
    assert_eq!(e.to_string(), "no domain named 'vm'; did you mean 'vm1'?");
    assert_eq!(e.api().map(|a| a.code), Some(ErrorCode::NoDomain));
    assert!(std::error::Error::source(&e).is_none(), "said once");

    let e = client.list().expect_err("refused");
    let Error::Protocol { source, .. } = &e else {
        panic!("not a protocol error: {e:?}");
    };
    assert_eq!(
        source.to_string(),
        "unexpected answer: HTTP 502 Bad Gateway: proxy error"
    );
}

#[test]
fn an_absent_daemon_is_named_with_its_socket() {
    let path =
        std::env::temp_dir().join(format!("vireo-client-absent-{}.sock", std::process::id()));
    let e = Client::connect(&path).expect_err("nothing listens");
    assert!(matches!(e, Error::Unreachable { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "cannot reach the daemon at {} (is vireod running?)",
            path.display()
        )
    );
}

#[test]
fn garbage_and_cut_answers_are_protocol_errors() {
    let fake = Fake::new(
        "garbage",
        vec![
            json_answer("200 OK", "[{\"name\": 1}]"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[".to_vec(),
            b"hello\r\n\r\n".to_vec(),
        ],
    );
    let client = fake.client();
    for _ in 0..3 {
        let e = client.list().expect_err("not understood");
        assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
        assert!(e.to_string().contains("does not understand"), "{e}");
    }
}

#[test]
fn a_silent_daemon_times_out() {
    let dir = std::env::temp_dir().join(format!("vireo-client-silent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let socket = dir.join("vireod.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let mut client = Client::connect(&socket).expect("listens");
    client.set_timeout(Some(Duration::from_millis(100)));
    // The listener's backlog holds the connection; nobody ever answers.
    let e = client.list().expect_err("times out");
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn events_stream_as_chunks_split_anywhere() {
    let started = Event {
        domain: "vm1".into(),
        uuid: "u".into(),
        event: "started".into(),
        state: DomainState::Running(RunningReason::Booted),
        detail: None,
    };
    let stopped = Event {
        event: "stopped".into(),
        state: DomainState::ShutOff(ShutOffReason::Destroyed),
        detail: Some("killed".into()),
        ..started.clone()
    };
    let payload = format!("{}\n\n{}\n", to_json(&started), to_json(&stopped)).into_bytes();
    // Chunks of 7 bytes: lines and chunk boundaries never line up.
    let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in payload.chunks(7) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let fake = Fake::new("events", vec![raw]);
    let client = fake.client();
    let events: Vec<Event> = client
        .events()
        .expect("subscribes")
        .collect::<Result<_, _>>()
        .expect("events parse");
    assert_eq!(events, vec![started, stopped]);
    assert_eq!(fake.next().line, "GET /v1/events HTTP/1.1");
}

#[test]
fn a_refused_event_subscription_is_an_api_error() {
    let fake = Fake::new(
        "events-refused",
        vec![json_answer(
            "403 Forbidden",
            r#"{"code":"forbidden","message":"only root may"}"#,
        )],
    );
    let e = fake.client().events().expect_err("refused");
    assert_eq!(e.api().map(|a| a.code), Some(ErrorCode::Forbidden));
}
