//! Typed, blocking client for vireod's REST API over its Unix socket
//! (`/v1/...`, JSON; the types are `vireo_api::daemon`'s).
//!
//! Each request opens its own connection and asks the daemon to close it
//! after answering: a Unix-socket connect costs microseconds, and no
//! connection is ever found half-closed by the daemon's idle timeout (the
//! `vireo edit` user may keep the editor open for an hour). The HTTP is the
//! small subset in `http`, with every size bounded.
//!
//! ```no_run
//! let client = vireo_client::Client::connect(vireo_client::DEFAULT_SOCKET)?;
//! for d in client.list()? {
//!     println!("{} {}", d.name, d.state);
//! }
//! # Ok::<(), vireo_client::Error>(())
//! ```

use std::io::{self, BufReader, ErrorKind};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;
use vireo_api::daemon::{ApiError, DomainInfo, Event, API_PREFIX};

mod console;
mod http;

pub use console::Console;
pub use http::ProtocolError;

/// Where vireod listens unless told otherwise (`vireod --socket`,
/// `VIREO_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/vireo/vireod.sock";

/// How long an ordinary request may wait for the daemon's answer. Requests
/// that stop a VM wait for the monitor to go (vireod's `--destroy-grace`,
/// 10 s by default, then a kill), so this is generous.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest event line accepted from the event stream.
const MAX_EVENT_LINE: usize = 1024 * 1024;

/// What can go wrong talking to vireod.
#[derive(Debug, Error)]
pub enum Error {
    /// Nothing answers on the socket.
    #[error("cannot reach the daemon at {}{}", path.display(), reach_hint(source))]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon refused the request; its message says why.
    #[error(transparent)]
    Api(ApiError),
    /// The connection failed after it was made.
    #[error("lost the connection to the daemon at {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time.
    #[error("the daemon at {} did not answer within {} s", path.display(), timeout.as_secs())]
    Timeout { path: PathBuf, timeout: Duration },
    /// The answer was not what the API promises.
    #[error("the daemon at {} gave an answer this client does not understand", path.display())]
    Protocol {
        path: PathBuf,
        #[source]
        source: ProtocolError,
    },
}

impl Error {
    /// The daemon's error, if it refused the request.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }
}

fn reach_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => " (is vireod running?)",
        ErrorKind::PermissionDenied => " (only root and the 'vireo' group may use it)",
        _ => "",
    }
}

pub use vireo_api::daemon::VersionInfo;

/// A connection to vireod (a socket path; each request connects anew).
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
}

type Stream = BufReader<UnixStream>;

/// A response whose head has been read.
struct Response {
    head: http::Head,
    body: http::Body<Stream>,
}

impl Client {
    /// A client for the daemon at `path`, checking that something listens
    /// there.
    pub fn connect(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let client = Self {
            path: path.into(),
            timeout: Some(DEFAULT_TIMEOUT),
        };
        drop(client.open()?);
        Ok(client)
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes how long a request waits for the answer (`None`: forever).
    /// The event stream never times out.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    fn open(&self) -> Result<UnixStream, Error> {
        UnixStream::connect(&self.path).map_err(|source| Error::Unreachable {
            path: self.path.clone(),
            source,
        })
    }

    /// Turns an I/O failure during a request into the error to report.
    fn failed(&self, e: io::Error) -> Error {
        match http::protocol_error(e) {
            Ok(source) => self.protocol(source),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Error::Timeout {
                    path: self.path.clone(),
                    timeout: self.timeout.unwrap_or_default(),
                }
            }
            Err(source) => Error::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn protocol(&self, source: ProtocolError) -> Error {
        Error::Protocol {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends a request and reads the answer's head.
    fn send(
        &self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        let mut stream = self.open()?;
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| self.failed(e))?;
        http::write_request(&mut stream, method, target, body).map_err(|e| self.failed(e))?;
        let mut reader = BufReader::new(stream);
        let head = http::read_head(&mut reader).map_err(|e| self.failed(e))?;
        let framing = http::framing(&head).map_err(|e| self.failed(e))?;
        Ok(Response {
            head,
            body: http::Body::new(reader, framing),
        })
    }

    /// A request whose whole answer is read; errors become `Error::Api`.
    fn call(
        &self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Vec<u8>, Error> {
        let response = self.send(method, target, body, self.timeout)?;
        let status = response.head.status;
        let reason = response.head.reason.clone();
        let bytes = response
            .body
            .read_all(http::MAX_BODY)
            .map_err(|e| self.failed(e))?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        Err(self.refusal(status, reason, &bytes))
    }

    /// The error for a non-2xx answer: the daemon's `ApiError` when the
    /// body is one, else the status and the start of the body.
    fn refusal(&self, status: u16, reason: String, body: &[u8]) -> Error {
        if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
            return Error::Api(e);
        }
        let text = String::from_utf8_lossy(body);
        let mut body: String = text.trim().chars().take(200).collect();
        if body.len() < text.trim().len() {
            body.push_str("...");
        }
        self.protocol(ProtocolError::Status {
            status,
            reason,
            body,
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<T, Error> {
        let bytes = self.call(method, target, body)?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(ProtocolError::Json(e)))
    }

    fn domain_path(name: &str, rest: &str) -> String {
        format!("{API_PREFIX}/domains/{}{rest}", http::encode_segment(name))
    }

    /// All domains, sorted by name.
    pub fn list(&self) -> Result<Vec<DomainInfo>, Error> {
        self.json("GET", &format!("{API_PREFIX}/domains"), None)
    }

    /// Defines a persistent domain from its XML, or redefines it.
    pub fn define(&self, xml: &str) -> Result<DomainInfo, Error> {
        self.json(
            "POST",
            &format!("{API_PREFIX}/domains"),
            Some(("application/xml", xml.as_bytes())),
        )
    }

    /// Creates and starts a transient domain from its XML.
    pub fn create(&self, xml: &str) -> Result<DomainInfo, Error> {
        self.json(
            "POST",
            &format!("{API_PREFIX}/domains/create"),
            Some(("application/xml", xml.as_bytes())),
        )
    }

    /// One domain.
    pub fn info(&self, name: &str) -> Result<DomainInfo, Error> {
        self.json("GET", &Self::domain_path(name, ""), None)
    }

    /// Removes a domain's persistent definition.
    pub fn undefine(&self, name: &str) -> Result<(), Error> {
        self.call("DELETE", &Self::domain_path(name, ""), None)
            .map(drop)
    }

    /// A domain's normalised XML: the running definition, or with
    /// `inactive` the one the next start will use.
    pub fn xml(&self, name: &str, inactive: bool) -> Result<String, Error> {
        let query = if inactive { "?inactive=true" } else { "" };
        let bytes = self.call(
            "GET",
            &Self::domain_path(name, &format!("/xml{query}")),
            None,
        )?;
        String::from_utf8(bytes).map_err(|_| self.protocol(ProtocolError::NotUtf8))
    }

    fn action(&self, name: &str, action: &str) -> Result<DomainInfo, Error> {
        self.json(
            "POST",
            &Self::domain_path(name, &format!("/{action}")),
            None,
        )
    }

    /// Starts a defined domain.
    pub fn start(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "start")
    }

    /// Asks the guest to power off (ACPI power button).
    pub fn shutdown(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "shutdown")
    }

    /// Asks the guest to reboot.
    pub fn reboot(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "reboot")
    }

    /// Resets the machine at once, without asking the guest.
    pub fn reset(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "reset")
    }

    /// Stops the domain at once (its monitor is terminated).
    pub fn destroy(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "destroy")
    }

    /// Pauses the domain's vCPUs.
    pub fn suspend(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "suspend")
    }

    /// Resumes a paused domain.
    pub fn resume(&self, name: &str) -> Result<DomainInfo, Error> {
        self.action(name, "resume")
    }

    /// Whether the daemon starts the domain when it starts.
    pub fn set_autostart(&self, name: &str, enabled: bool) -> Result<(), Error> {
        let body = serde_json::json!({ "enabled": enabled }).to_string();
        self.call(
            "PUT",
            &Self::domain_path(name, "/autostart"),
            Some(("application/json", body.as_bytes())),
        )
        .map(drop)
    }

    /// The daemon's version.
    pub fn version(&self) -> Result<VersionInfo, Error> {
        self.json("GET", &format!("{API_PREFIX}/version"), None)
    }

    /// The daemon's lifecycle events from now on, as they happen. The
    /// iterator blocks until the next event and ends when the daemon
    /// closes the stream.
    pub fn events(&self) -> Result<Events, Error> {
        let response = self.send("GET", &format!("{API_PREFIX}/events"), None, self.timeout)?;
        let status = response.head.status;
        if !(200..300).contains(&status) {
            let reason = response.head.reason.clone();
            let bytes = response
                .body
                .read_all(http::MAX_BODY)
                .map_err(|e| self.failed(e))?;
            return Err(self.refusal(status, reason, &bytes));
        }
        // The head came in time; events may be hours apart.
        response
            .body
            .inner()
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| self.failed(e))?;
        Ok(Events {
            client: self.clone(),
            body: Some(BufReader::new(response.body)),
        })
    }
}

/// The event stream (`Client::events`).
#[derive(Debug)]
pub struct Events {
    client: Client,
    /// `None` after the end or an error.
    body: Option<BufReader<http::Body<Stream>>>,
}

impl Iterator for Events {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let body = self.body.as_mut()?;
            let line = match http::read_line(body, MAX_EVENT_LINE) {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.body = None;
                    return None;
                }
                Err(e) => {
                    self.body = None;
                    return Some(Err(self.client.failed(e)));
                }
            };
            // Blank lines may keep the connection alive.
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event = serde_json::from_slice(&line).map_err(|e| {
                self.body = None;
                self.client.protocol(ProtocolError::Json(e))
            });
            return Some(event);
        }
    }
}

#[cfg(test)]
mod tests;
