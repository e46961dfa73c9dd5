//! `vireo console DOMAIN` (and `start --console`): the guest's console on
//! this terminal through vireod, until Ctrl-] (as virsh).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use vireo_client::Client;

use super::{connect, DomainArg, GlobalArgs};

/// Ctrl-]: leaves the console.
const ESCAPE: u8 = 0x1d;

/// Puts a terminal in raw mode and restores it when dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a valid out-pointer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid descriptor and settings derived from its own.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// `vireo console DOMAIN`.
pub fn console(global: &GlobalArgs, args: &DomainArg) -> anyhow::Result<ExitCode> {
    attach(&connect(global)?, &args.domain)
}

/// Attaches this terminal to `name`'s console until Ctrl-] or until the
/// console closes (the VM stopped).
pub fn attach(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let mut console = client.console(name)?;
    println!("Connected to domain '{name}'");
    println!("Escape character is ^] (Ctrl + ])");
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let raw = RawMode::enter(fd);
    let mut stdout = std::io::stdout();
    let mut input_open = true;
    let mut buf = [0u8; 1024];
    let mut ended_by_vm = false;
    'outer: loop {
        if input_open {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no waiting.
            if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
                let n = stdin.lock().read(&mut buf)?;
                if n == 0 {
                    // End of input (not a terminal): keep showing output
                    // until the console closes or Ctrl-] came.
                    input_open = false;
                } else if let Some(at) = buf[..n].iter().position(|&b| b == ESCAPE) {
                    console.send(&buf[..at])?;
                    break 'outer;
                } else {
                    console.send(&buf[..n])?;
                }
            }
        }
        match console.recv_timeout(Duration::from_millis(20)) {
            Ok(Some(bytes)) => {
                // Raw terminals want \r\n; the guest sends what it sends.
                stdout.write_all(&bytes)?;
                stdout.flush()?;
            }
            Ok(None) => {}
            Err(_) => {
                ended_by_vm = true;
                break;
            }
        }
    }
    drop(raw);
    console.close();
    println!();
    if ended_by_vm {
        println!("The console of domain '{name}' closed.");
    }
    Ok(ExitCode::SUCCESS)
}
