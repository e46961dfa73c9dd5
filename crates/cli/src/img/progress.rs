//! `-p`: progress on stdout. A bar on a terminal; elsewhere qemu-img's
//! plain `    (12.34/100%)\r` updates, which scripts already parse.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

enum Mode {
    Off,
    Plain { last: Mutex<Option<f64>> },
    Bar(ProgressBar),
}

/// Shows the progress of one operation (if enabled).
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// `enabled`: `-p` given and not `-q`.
    pub fn new(enabled: bool) -> Self {
        let mode = if !enabled {
            Mode::Off
        } else if std::io::stdout().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{wide_bar} {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Mode::Bar(bar)
        } else {
            Mode::Plain {
                last: Mutex::new(None),
            }
        };
        Self { mode }
    }

    /// Work done so far out of `total` (bytes).
    pub fn update(&self, done: u64, total: u64) {
        match &self.mode {
            Mode::Off => {}
            Mode::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            Mode::Plain { last } => {
                let pct = if total == 0 {
                    if done == 0 {
                        0.0
                    } else {
                        100.0
                    }
                } else {
                    (done.min(total) as f64 * 100.0 / total as f64).min(100.0)
                };
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let due = match *last {
                    None => true,
                    Some(prev) => pct - prev >= 1.0 || (pct >= 100.0 && prev < 100.0),
                };
                if due {
                    *last = Some(pct);
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "    ({pct:.2}/100%)\r");
                    let _ = out.flush();
                }
            }
        }
    }

    /// The operation ended (well or not).
    pub fn finish(&self, success: bool) {
        match &self.mode {
            Mode::Off => {}
            Mode::Bar(bar) => {
                if success {
                    bar.finish();
                } else {
                    bar.abandon();
                }
            }
            Mode::Plain { last } => {
                let last = *last.lock().unwrap_or_else(|p| p.into_inner());
                let mut out = std::io::stdout().lock();
                if last.is_none() {
                    let _ = write!(out, "    (0.00/100%)\r");
                }
                if success && last.is_none_or(|l| l < 100.0) {
                    let _ = write!(out, "    (100.00/100%)\r");
                }
                let _ = writeln!(out);
                let _ = out.flush();
            }
        }
    }

    /// A callback for the tools.
    pub fn callback(&self) -> impl Fn(u64, u64) + Sync + '_ {
        move |done, total| self.update(done, total)
    }
}
