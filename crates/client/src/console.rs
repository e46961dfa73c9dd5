//! A domain's console through vireod: a WebSocket on the daemon's socket
//! (`/v1/domains/NAME/console`) carrying the guest's console bytes.

use std::io::{self, ErrorKind};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tungstenite::handshake::HandshakeError;
use tungstenite::{Message, WebSocket};
use vireo_api::daemon::ApiError;

use crate::{http, Client, Error};

/// An attached console.
pub struct Console {
    ws: WebSocket<UnixStream>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Console")
    }
}

impl Client {
    /// Attaches to a running domain's console.
    pub fn console(&self, name: &str) -> Result<Console, Error> {
        let stream = self.open()?;
        let url = format!(
            "ws://vireod/v1/domains/{}/console",
            http::encode_segment(name)
        );
        let io_err = |e: tungstenite::Error| Error::Io {
            path: self.path.clone(),
            source: io::Error::other(e.to_string()),
        };
        match tungstenite::client::client(url, stream) {
            Ok((ws, _)) => Ok(Console { ws }),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let body = response.body().clone().unwrap_or_default();
                match serde_json::from_slice::<ApiError>(&body) {
                    Ok(api) => Err(Error::Api(api)),
                    Err(_) => Err(Error::Io {
                        path: self.path.clone(),
                        source: io::Error::other(format!(
                            "the console request was refused with HTTP {}",
                            response.status()
                        )),
                    }),
                }
            }
            Err(HandshakeError::Failure(e)) => Err(io_err(e)),
            Err(HandshakeError::Interrupted(_)) => Err(Error::Io {
                path: self.path.clone(),
                source: io::Error::from(ErrorKind::Interrupted),
            }),
        }
    }
}

impl Console {
    /// Sends bytes to the guest's console.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .map_err(to_io)
    }

    /// The next bytes from the guest, waiting at most `timeout`:
    /// `Ok(None)` when nothing came in time; an error once the console
    /// closed.
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.ws
            .get_mut()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.ws.read() {
            Ok(Message::Binary(data)) => Ok(Some(data.to_vec())),
            Ok(Message::Text(text)) => Ok(Some(text.as_bytes().to_vec())),
            Ok(Message::Close(_)) => Err(io::Error::from(ErrorKind::ConnectionAborted)),
            Ok(_) => Ok(Some(Vec::new())),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Ok(None)
            }
            Err(e) => Err(to_io(e)),
        }
    }

    /// Detaches (the VM keeps running).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::from(ErrorKind::ConnectionAborted)
        }
        other => io::Error::other(other.to_string()),
    }
}
