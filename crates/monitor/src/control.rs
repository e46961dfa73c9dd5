//! The control socket: a named thread that accepts one client at a time and
//! turns each request line into a call on the [`MachineHandle`]. It never
//! touches VM state itself (the machine's event loop does), and bad input gets
//! an error reply, never a panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vireo_api::control::{ControlErrorCode, ControlReply, ControlRequest, MAX_REQUEST_LINE};
use vireo_vmm::MachineHandle;

/// The bound socket; removed from the file system on drop.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (owner-only permissions) and serves it on a thread named
/// "control" for the life of the process.
pub fn serve(path: &Path, handle: MachineHandle) -> std::io::Result<ControlSocket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => client(s, &handle),
                    Err(e) => log::warn!("control socket: accept failed: {e}"),
                }
            }
        })?;
    Ok(ControlSocket {
        path: path.to_path_buf(),
    })
}

fn client(stream: UnixStream, handle: &MachineHandle) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read at most one byte past the limit, so an endless line is refused
        // without being buffered.
        let limit = (MAX_REQUEST_LINE + 1) as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() > MAX_REQUEST_LINE;
        let reply = if too_long {
            ControlReply::error(
                ControlErrorCode::BadRequest,
                format!("request longer than {MAX_REQUEST_LINE} bytes"),
            )
        } else {
            answer(&line, handle)
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() || too_long {
            return;
        }
    }
}

/// Parses one request, refusing fields it does not know.
fn parse(line: &[u8]) -> Result<ControlRequest, String> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if let Some(extra) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "cmd"))
    {
        return Err(format!("unknown field '{extra}'"));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn answer(line: &[u8], handle: &MachineHandle) -> ControlReply {
    let request = match parse(line) {
        Ok(r) => r,
        Err(e) => {
            return ControlReply::error(
                ControlErrorCode::BadRequest,
                format!(
                    "not a request ({e}); send one JSON object per line, like {{\"cmd\":\"pause\"}}"
                ),
            )
        }
    };
    let failed = |m: String| ControlReply::error(ControlErrorCode::Failed, m);
    match request {
        ControlRequest::Ping => ControlReply::ok(),
        ControlRequest::Pause => handle.pause().map_or_else(failed, |()| ControlReply::ok()),
        ControlRequest::Resume => handle.resume().map_or_else(failed, |()| ControlReply::ok()),
        ControlRequest::PowerButton => match handle.power_button() {
            Ok(listening) => ControlReply {
                guest_listening: Some(listening),
                ..ControlReply::ok()
            },
            Err(m) => failed(m),
        },
        ControlRequest::Stop => {
            handle.stop();
            ControlReply::ok()
        }
    }
}
