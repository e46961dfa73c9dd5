//! Rate-limited logging for events a guest can trigger.
//!
//! A guest controls how often its devices hit error paths, so every log line
//! it can cause goes through a [`RateLimitedLog`]: a token bucket that lets a
//! burst of `burst` messages through, then refills at `burst` messages per
//! `interval`. Messages over the limit are counted, and the next message that
//! gets through says how many were suppressed.
//!
//! ```
//! use std::time::Duration;
//! use vireo_devices::guest_warn;
//! use vireo_devices::ratelimit::RateLimitedLog;
//!
//! static LOG: RateLimitedLog = RateLimitedLog::new(5, Duration::from_secs(10));
//! let port = 0x3f8;
//! guest_warn!(LOG, "odd access at {port:#x}");
//! ```
//!
//! Each device usually keeps its own limiter in a field, so one noisy device
//! does not silence another.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use log::Level;

/// The pure token-bucket state, driven by explicit instants (the injected
/// clock), so it is testable without sleeping.
///
/// The bucket holds up to `interval` worth of credit; each admitted event
/// costs `interval / burst`. Credit accrues with elapsed time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Credit needed for one event.
    cost: Duration,
    /// Maximum credit (a full bucket: `burst` events).
    max: Duration,
    /// Current credit.
    credit: Duration,
    /// When credit was last brought up to date; `None` until first use.
    last: Option<Instant>,
    /// Events refused since the last admitted one.
    suppressed: u64,
}

/// The outcome of [`TokenBucket::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The event may proceed; `suppressed` events were refused since the
    /// previous admitted one.
    Allow { suppressed: u64 },
    /// The event is over the limit (and has been counted).
    Deny,
}

impl TokenBucket {
    /// A full bucket admitting `burst` events at once and `burst` per
    /// `interval` after that. A `burst` of 0 is treated as 1.
    pub const fn new(burst: u32, interval: Duration) -> TokenBucket {
        let burst = if burst == 0 { 1 } else { burst };
        // Duration division is not const; do it on nanoseconds (an interval
        // longer than u64::MAX ns, ~584 years, saturates harmlessly).
        let nanos = interval.as_nanos();
        let max_nanos = if nanos > u64::MAX as u128 {
            u64::MAX
        } else {
            nanos as u64
        };
        let cost = Duration::from_nanos(max_nanos / burst as u64);
        let max = Duration::from_nanos(max_nanos);
        TokenBucket {
            cost,
            max,
            credit: max,
            last: None,
            suppressed: 0,
        }
    }

    /// Decides whether an event happening at `now` may proceed.
    pub fn check(&mut self, now: Instant) -> Admission {
        if let Some(last) = self.last {
            // A clock that goes backwards adds nothing.
            let elapsed = now.saturating_duration_since(last);
            self.credit = self.credit.saturating_add(elapsed).min(self.max);
        }
        // Keep the later instant, so a backwards step is not credited twice.
        self.last = Some(match self.last {
            Some(last) if last > now => last,
            _ => now,
        });
        if self.credit >= self.cost {
            self.credit -= self.cost;
            let suppressed = std::mem::take(&mut self.suppressed);
            Admission::Allow { suppressed }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Admission::Deny
        }
    }

    /// Events refused since the last admitted one.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// A log source limited to a burst of messages per interval. Thread-safe and
/// const-constructible, so it can live in a `static` or in a device field.
///
/// Use it through [`guest_warn!`](crate::guest_warn) and friends, which add
/// the caller's module as the log target.
#[derive(Debug)]
pub struct RateLimitedLog {
    bucket: Mutex<TokenBucket>,
}

impl Default for RateLimitedLog {
    /// Ten messages per minute, the default for device error paths.
    fn default() -> Self {
        RateLimitedLog::new(10, Duration::from_secs(60))
    }
}

impl RateLimitedLog {
    /// A limiter letting `burst` messages through at once and `burst` per
    /// `interval` after that.
    pub const fn new(burst: u32, interval: Duration) -> RateLimitedLog {
        RateLimitedLog {
            bucket: Mutex::new(TokenBucket::new(burst, interval)),
        }
    }

    /// Takes the decision for a message at `now`. Exposed for tests of the
    /// callers; [`RateLimitedLog::log`] uses the real clock.
    pub fn check_at(&self, now: Instant) -> Admission {
        // A poisoned bucket only means a panic elsewhere mid-check; its state
        // is still a valid bucket.
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(now)
    }

    /// Logs `args` at `level` with `target`, unless over the limit. Returns
    /// whether the message was emitted. Messages below the logger's level
    /// neither print nor use up the budget.
    pub fn log(&self, level: Level, target: &str, args: fmt::Arguments<'_>) -> bool {
        if !log::log_enabled!(target: target, level) {
            return false;
        }
        match self.check_at(Instant::now()) {
            Admission::Allow { suppressed: 0 } => {
                log::log!(target: target, level, "{args}");
                true
            }
            Admission::Allow { suppressed } => {
                log::log!(target: target, level, "{args} ({suppressed} earlier messages suppressed)");
                true
            }
            Admission::Deny => false,
        }
    }

    /// Logs at warning level (see [`RateLimitedLog::log`]).
    pub fn warn(&self, args: fmt::Arguments<'_>) -> bool {
        self.log(Level::Warn, module_path!(), args)
    }
}

/// Logs through a [`RateLimitedLog`] at the given level:
/// `guest_log!(limiter, Level::Info, "fmt", args...)`. The log target is the
/// calling module. Evaluates to `()`; call [`RateLimitedLog::log`] directly
/// to learn whether the line was emitted.
#[macro_export]
macro_rules! guest_log {
    ($limiter:expr, $level:expr, $($arg:tt)+) => {
        {
            $limiter.log($level, module_path!(), format_args!($($arg)+));
        }
    };
}

/// `guest_warn!(limiter, "fmt", args...)`: a rate-limited warning.
#[macro_export]
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::guest_log!($limiter, $crate::ratelimit::Level::Warn, $($arg)+)
    };
}

/// `guest_info!(limiter, "fmt", args...)`: a rate-limited info message.
#[macro_export]
macro_rules! guest_info {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::guest_log!($limiter, $crate::ratelimit::Level::Info, $($arg)+)
    };
}

/// `guest_debug!(limiter, "fmt", args...)`: a rate-limited debug message.
#[macro_export]
macro_rules! guest_debug {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::guest_log!($limiter, $crate::ratelimit::Level::Debug, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn burst_then_deny_then_report_suppressed() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, secs(30));
        for _ in 0..3 {
            assert_eq!(b.check(t0), Admission::Allow { suppressed: 0 });
        }
        for _ in 0..5 {
            assert_eq!(b.check(t0), Admission::Deny);
        }
        assert_eq!(b.suppressed(), 5);
        // One token costs 10 s; 9 s is not enough.
        assert_eq!(b.check(t0 + secs(9)), Admission::Deny);
        assert_eq!(b.check(t0 + secs(10)), Admission::Allow { suppressed: 6 });
        assert_eq!(b.suppressed(), 0);
        assert_eq!(b.check(t0 + secs(10)), Admission::Deny);
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, secs(10));
        assert!(matches!(b.check(t0), Admission::Allow { .. }));
        // A long quiet period refills only up to the burst.
        let later = t0 + secs(3600);
        assert!(matches!(b.check(later), Admission::Allow { .. }));
        assert!(matches!(b.check(later), Admission::Allow { .. }));
        assert_eq!(b.check(later), Admission::Deny);
    }

    #[test]
    fn sustained_rate_matches_the_limit() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, secs(10));
        // 1000 attempts spread over 100 s, one every 100 ms.
        let allowed = (0..1000u64)
            .filter(|i| {
                matches!(
                    b.check(t0 + Duration::from_millis(i * 100)),
                    Admission::Allow { .. }
                )
            })
            .count();
        // Burst of 5 plus 5 per 10 s over ~100 s.
        assert!((54..=56).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn backwards_clock_adds_no_credit() {
        let t0 = Instant::now() + secs(100);
        let mut b = TokenBucket::new(1, secs(10));
        assert!(matches!(b.check(t0), Admission::Allow { .. }));
        assert_eq!(b.check(t0 - secs(50)), Admission::Deny);
        assert_eq!(b.check(t0 + secs(5)), Admission::Deny);
        assert_eq!(b.check(t0 + secs(10)), Admission::Allow { suppressed: 2 });
    }

    #[test]
    fn zero_burst_and_zero_interval_are_sane() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, secs(10));
        assert!(matches!(b.check(t0), Admission::Allow { .. }));
        assert_eq!(b.check(t0), Admission::Deny);
        // A zero interval costs nothing: everything passes.
        let mut free = TokenBucket::new(3, Duration::ZERO);
        for _ in 0..100 {
            assert!(matches!(free.check(t0), Admission::Allow { .. }));
        }
    }

    #[test]
    fn shared_log_counts_across_callers() {
        let log = RateLimitedLog::new(1, secs(60));
        let t0 = Instant::now();
        assert!(matches!(log.check_at(t0), Admission::Allow { .. }));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(log.check_at(t0), Admission::Deny));
            }
        });
        assert_eq!(
            log.check_at(t0 + secs(60)),
            Admission::Allow { suppressed: 4 }
        );
    }

    #[test]
    fn macros_expand_without_a_logger() {
        // No logger is installed in unit tests, so nothing is enabled and
        // nothing is consumed; this checks the macros compile with format
        // arguments, in statement and expression position.
        let log = RateLimitedLog::new(1, secs(60));
        let x = 5;
        crate::guest_warn!(log, "value {x} and {}", x + 1);
        crate::guest_info!(log, "plain");
        let unit: () = crate::guest_debug!(&log, "ref {x:#x}");
        assert_eq!(unit, ());
        assert!(!log.warn(format_args!("direct")));
        assert!(!log.log(Level::Error, "t", format_args!("direct")));
        assert_eq!(
            log.check_at(Instant::now()),
            Admission::Allow { suppressed: 0 }
        );
    }
}
