//! Where a guest console's output goes: a host sink that the guest can never
//! make fail or stall. Shared by the 16550 UART and virtio-console.
//!
//! A sink that would block (a slow socket peer) loses the bytes; a sink that
//! fails (a closed socket, a full disk) is abandoned after one log line until
//! [`GuestOutput::set_sink`] installs a new one. Lost bytes are counted. Logs go
//! through a rate limiter, since the guest triggers them.

use std::io::{self, Write};

use crate::ratelimit::RateLimitedLog;
use crate::{guest_debug, guest_warn};

/// A console's output sink with the rules above. Its `Write` never fails.
pub struct GuestOutput {
    name: &'static str,
    sink: Box<dyn Write + Send>,
    failed: bool,
    dropped: u64,
    log: RateLimitedLog,
}

impl GuestOutput {
    /// Output of the device called `name` (for log lines) to `sink`.
    pub fn new(name: &'static str, sink: Box<dyn Write + Send>) -> GuestOutput {
        GuestOutput {
            name,
            sink,
            failed: false,
            dropped: 0,
            log: RateLimitedLog::default(),
        }
    }

    /// Replaces the sink and forgets an earlier sink failure.
    pub fn set_sink(&mut self, sink: Box<dyn Write + Send>) {
        self.sink = sink;
        self.failed = false;
    }

    /// Bytes lost to a slow or failed sink.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn sink_error(&mut self, err: &io::Error) {
        if err.kind() == io::ErrorKind::WouldBlock {
            guest_debug!(
                self.log,
                "{}: output sink is not keeping up; {} bytes dropped so far",
                self.name,
                self.dropped
            );
        } else {
            // Logged once per sink: nothing is written to it again.
            self.failed = true;
            guest_warn!(
                self.log,
                "{}: output failed, dropping all further output: {err}",
                self.name
            );
        }
    }
}

impl Write for GuestOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            self.dropped = self.dropped.saturating_add(buf.len() as u64);
        } else if let Err(e) = self.sink.write_all(buf) {
            // A partial write loses the tail of the buffer; counted whole.
            self.dropped = self.dropped.saturating_add(buf.len() as u64);
            self.sink_error(&e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.failed {
            if let Err(e) = self.sink.flush() {
                self.sink_error(&e);
            }
        }
        Ok(())
    }
}
