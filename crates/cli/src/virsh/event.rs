//! `event`: waits for the daemon's lifecycle events and prints them as
//! virsh does (`event 'lifecycle' for domain 'vm1': Started Booted`), one
//! event or, with `--loop`, until Ctrl-C or `--timeout`; then the count.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use vireo_api::daemon::Event;

use super::{connect, GlobalArgs};

/// The only kind of event vireod reports.
const LIFECYCLE: &str = "lifecycle";

#[derive(Args, Debug)]
pub struct EventArgs {
    /// Only this domain's events (its name or UUID).
    #[arg(value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// The kind of event (vireod reports `lifecycle` events).
    #[arg(long, value_name = "TYPE")]
    pub event: Option<String>,
    /// Every kind of event.
    #[arg(long)]
    pub all: bool,
    /// List the kinds of event and exit.
    #[arg(long)]
    pub list: bool,
    /// Keep printing events until interrupted, not just the first.
    #[arg(long = "loop")]
    pub keep_going: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Put the time (UTC) before each event.
    #[arg(long)]
    pub timestamp: bool,
}

/// Set by SIGINT while waiting.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// libvirt's words for an event and its detail ("Started Booted",
/// "Stopped Destroyed", "Suspended Paused", ...).
pub fn describe(e: &Event) -> String {
    let detail = match e.event.as_str() {
        "defined" => "Added".to_owned(),
        "undefined" => "Removed".to_owned(),
        "suspended" => "Paused".to_owned(),
        "resumed" => "Unpaused".to_owned(),
        "shutdown" => "Finished".to_owned(),
        _ if e.state.reason() != "unknown" => capitalized(e.state.reason()),
        _ => String::new(),
    };
    let mut text = capitalized(&e.event);
    if !detail.is_empty() {
        text.push(' ');
        text.push_str(&detail);
    }
    text
}

/// One event as `event` prints it.
pub fn render(e: &Event) -> String {
    format!(
        "event '{LIFECYCLE}' for domain '{}': {}",
        e.domain,
        describe(e)
    )
}

/// "2024-05-01 12:34:56.789+0000" for a time since the epoch (UTC).
pub fn timestamp(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's
    // well-known algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

pub fn event(global: &GlobalArgs, args: &EventArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        println!("{LIFECYCLE}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(kind) = &args.event {
        if kind != LIFECYCLE {
            bail!("unknown event type '{kind}' (vireod reports: {LIFECYCLE})");
        }
    }
    let events = connect(global)?.events()?;
    // The stream blocks; a thread reads it so that the wait can end on a
    // timeout or Ctrl-C and still report the count.
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            for e in events {
                if tx.send(e).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the event reader")?;
    INTERRUPTED.store(false, Ordering::SeqCst);
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut count = 0u64;
    let mut timed_out = false;
    let ended = loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break None;
        }
        let mut wait = Duration::from_millis(200);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break None;
            }
            wait = wait.min(left);
        }
        match rx.recv_timeout(wait) {
            Ok(Ok(e)) => {
                if args
                    .domain
                    .as_ref()
                    .is_some_and(|d| *d != e.domain && *d != e.uuid)
                {
                    continue;
                }
                count += 1;
                if global.json {
                    println!("{}", serde_json::to_string(&e)?);
                } else if args.timestamp {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    println!("{}: {}", timestamp(now), render(&e));
                } else {
                    println!("{}", render(&e));
                }
                if !args.keep_going {
                    break None;
                }
            }
            Ok(Err(e)) => break Some(anyhow::Error::from(e)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                break Some(anyhow::anyhow!("vireod closed the event stream"))
            }
        }
    };
    if !global.json {
        if timed_out {
            println!("event loop timed out");
        }
        println!("events received: {count}");
    }
    match ended {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_api::domain_state::{PausedReason, RunningReason, ShutOffReason};
    use vireo_api::DomainState;

    fn ev(event: &str, state: DomainState) -> Event {
        Event {
            domain: "vm1".into(),
            uuid: "u".into(),
            event: event.into(),
            state,
            detail: None,
        }
    }

    #[test]
    fn events_read_like_libvirts() {
        let cases = [
            (
                ev("started", DomainState::Running(RunningReason::Booted)),
                "Started Booted",
            ),
            (
                ev("stopped", DomainState::ShutOff(ShutOffReason::Destroyed)),
                "Stopped Destroyed",
            ),
            (
                ev("suspended", DomainState::Paused(PausedReason::User)),
                "Suspended Paused",
            ),
            (
                ev("resumed", DomainState::Running(RunningReason::Unpaused)),
                "Resumed Unpaused",
            ),
            (
                ev("defined", DomainState::ShutOff(ShutOffReason::Unknown)),
                "Defined Added",
            ),
            (
                ev("crashed", DomainState::ShutOff(ShutOffReason::Unknown)),
                "Crashed",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(describe(&e), want);
        }
        assert_eq!(
            render(&ev(
                "undefined",
                DomainState::ShutOff(ShutOffReason::Unknown)
            )),
            "event 'lifecycle' for domain 'vm1': Undefined Removed"
        );
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(
            timestamp(Duration::from_millis(0)),
            "1970-01-01 00:00:00.000+0000"
        );
        // 2024-02-29 23:59:58.123 UTC (a leap day).
        assert_eq!(
            timestamp(Duration::from_millis(1_709_251_198_123)),
            "2024-02-29 23:59:58.123+0000"
        );
        assert_eq!(
            timestamp(Duration::from_secs(4_102_444_800)),
            "2100-01-01 00:00:00.000+0000"
        );
    }
}
