//! Raw mode for an interactive console, restored on drop.

/// Saved terminal settings; restoring them on drop.
pub struct RawMode {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode; `None` if it is not a terminal.
    pub fn enter(fd: libc::c_int) -> Option<RawMode> {
        // SAFETY: termios calls on a descriptor the caller owns; `t` is a local.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing so the guest's "\n" still starts a line.
            t.c_oflag |= libc::OPOST;
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores settings read from the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
