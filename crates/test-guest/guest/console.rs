//! The console: COM1 output (`print!`/`println!`, whole calls never interleave between CPUs)
//! and polled COM1 input.
//!
//! Output writes THR directly, one `out` per byte: emulated UARTs are always ready, so LSR
//! is not polled. Input polls LSR.DR, pausing briefly (TSC) between empty polls.

use core::fmt::{self, Write};

use crate::io;
use crate::protocol::COM1_PORT;
use crate::sync::SpinLock;
use crate::time::{self, Deadline};

const THR: u16 = COM1_PORT;
const RBR: u16 = COM1_PORT;
const LSR: u16 = COM1_PORT + 5;
const LSR_DATA_READY: u8 = 0x01;

static LOCK: SpinLock<()> = SpinLock::new(());

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            io::outb(THR, b);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    // Com1 never fails.
    let _ = Com1.write_fmt(args);
}

/// Writes without taking the console lock: for the panic path, where the lock may be held
/// by the code that panicked.
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Com1.write_fmt(args);
}

/// Prints to COM1.
#[allow(unused_macros)] // kit API: no scenario prints partial lines yet
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to COM1 (one lock for the whole line).
macro_rules! println {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Returns the next input byte if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    if io::inb(LSR) & LSR_DATA_READY != 0 {
        Some(io::inb(RBR))
    } else {
        None
    }
}

/// Waits for the next input byte, or until `deadline` (None: forever).
pub fn read_byte(deadline: Option<&Deadline>) -> Option<u8> {
    // Poll quickly for a while after the last byte (the host is typing or piping), then
    // settle to about one poll per millisecond: each poll is a VM exit.
    let mut empty_polls = 0u32;
    loop {
        if let Some(b) = try_read_byte() {
            return Some(b);
        }
        if deadline.is_some_and(Deadline::expired) {
            return None;
        }
        empty_polls = empty_polls.saturating_add(1);
        time::sleep_us(if empty_polls < 200 { 50 } else { 1000 });
    }
}

/// Errors of [`read_line`].
#[derive(Debug)]
pub enum ReadLineError {
    /// The line did not fit the buffer (the rest of it is left unread).
    TooLong,
    /// The line is not UTF-8.
    NotUtf8,
    /// The deadline passed first.
    Timeout,
}

impl fmt::Display for ReadLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong => f.write_str("input line too long"),
            Self::NotUtf8 => f.write_str("input line is not UTF-8"),
            Self::Timeout => f.write_str("timed out waiting for input"),
        }
    }
}

/// Reads one line (ended by `\n`; a `\r` before it is dropped) into `buf`.
pub fn read_line<'a>(
    buf: &'a mut [u8],
    deadline: Option<&Deadline>,
) -> Result<&'a str, ReadLineError> {
    // A line ends at LF, CR (what a terminal's Enter sends in raw mode) or
    // CRLF: an LF right after a CR that ended the previous line is skipped.
    static AFTER_CR: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    let mut len = 0;
    loop {
        let b = read_byte(deadline).ok_or(ReadLineError::Timeout)?;
        let after_cr = AFTER_CR.swap(b == b'\r', core::sync::atomic::Ordering::Relaxed);
        if b == b'\n' && after_cr && len == 0 {
            continue;
        }
        if b == b'\n' || b == b'\r' {
            break;
        }
        if len == buf.len() {
            return Err(ReadLineError::TooLong);
        }
        buf[len] = b;
        len += 1;
    }
    core::str::from_utf8(&buf[..len]).map_err(|_| ReadLineError::NotUtf8)
}
