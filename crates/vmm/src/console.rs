//! The host side of COM1: where guest output goes and where input comes from.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::SerialConfig;

/// The current client of a socket console, shared by the output sink and the
/// event loop that accepts clients.
pub type SharedClient = Arc<Mutex<Option<UnixStream>>>;

/// Errors setting up the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot open the serial log '{}'", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on the serial socket '{}'", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot duplicate a standard stream")]
    Dup(#[source] io::Error),
}

/// Output sink that writes to whichever client is connected, never blocking:
/// if the client does not keep up, output is dropped rather than stalling the
/// guest's vCPU.
struct ClientWriter(SharedClient);

impl Write for ClientWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = c.as_mut() {
            match s.write(buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => *c = None,
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes into a shared buffer (for [`SerialConfig::Capture`]).
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One console sink written by several devices (COM1 and virtio-console):
/// clones write to the same place, a write at a time.
#[derive(Clone)]
pub struct SharedSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedSink {
    /// Shares `sink`.
    pub fn new(sink: Box<dyn Write + Send>) -> SharedSink {
        SharedSink(Arc::new(Mutex::new(sink)))
    }
}

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// Where input comes from.
pub enum Input {
    /// No input.
    None,
    /// A file descriptor to read (stdin), with an optional escape byte.
    Fd { fd: OwnedFd, escape: Option<u8> },
    /// A listening socket; clients come and go.
    Listener {
        listener: UnixListener,
        client: SharedClient,
        path: PathBuf,
    },
}

/// The opened console: an output sink for the UART and an input source for
/// the event loop.
pub struct Console {
    pub output: Box<dyn Write + Send>,
    pub input: Input,
}

fn dup(fd: RawFd) -> Result<OwnedFd, ConsoleError> {
    // SAFETY: dup of a standard descriptor; the result is checked.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(ConsoleError::Dup(io::Error::last_os_error()));
    }
    // SAFETY: `new` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

impl Console {
    /// Opens the console described by `config`.
    pub fn open(config: &SerialConfig) -> Result<Console, ConsoleError> {
        Ok(match config {
            SerialConfig::Stdio { escape } => Console {
                output: Box::new(File::from(dup(libc::STDOUT_FILENO)?)),
                input: Input::Fd {
                    fd: dup(libc::STDIN_FILENO)?,
                    escape: *escape,
                },
            },
            SerialConfig::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ConsoleError::File {
                        path: path.clone(),
                        source,
                    })?;
                Console {
                    output: Box::new(f),
                    input: Input::None,
                }
            }
            SerialConfig::Socket(path) => {
                let listener = listen(path)?;
                let client: SharedClient = Arc::default();
                Console {
                    output: Box::new(ClientWriter(client.clone())),
                    input: Input::Listener {
                        listener,
                        client,
                        path: path.clone(),
                    },
                }
            }
            SerialConfig::Capture(buf) => Console {
                output: Box::new(CaptureWriter(buf.clone())),
                input: Input::None,
            },
            SerialConfig::Null => Console {
                output: Box::new(io::sink()),
                input: Input::None,
            },
        })
    }
}

fn listen(path: &Path) -> Result<UnixListener, ConsoleError> {
    let err = |source| ConsoleError::Socket {
        path: path.to_path_buf(),
        source,
    };
    // A stale socket from an earlier run is replaced; anything else is refused.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let l = UnixListener::bind(path).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

impl Input {
    /// The descriptor to poll for input or clients.
    pub fn poll_fd(&self) -> Option<RawFd> {
        match self {
            Input::None => None,
            Input::Fd { fd, .. } => Some(fd.as_raw_fd()),
            Input::Listener { listener, .. } => Some(listener.as_raw_fd()),
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let Input::Listener { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
