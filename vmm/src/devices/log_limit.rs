//! A limit on log lines a guest can cause.
//!
//! A misbehaving guest driver can repeat the same mistake millions of times a
//! second (a bad descriptor chain, a notification for a queue that does not
//! exist). Each device logs such events through a [`LogLimiter`]: at most
//! [`LOG_BURST`] lines per [`LOG_WINDOW`], and the next line logged after a
//! quiet spell says how many were left out.

use std::time::{Duration, Instant};

/// Lines logged per window before the limiter goes quiet.
pub const LOG_BURST: u32 = 10;
/// Length of one window.
pub const LOG_WINDOW: Duration = Duration::from_secs(5);

/// Counts guest-caused log lines and decides which ones are written.
#[derive(Debug, Default)]
pub struct LogLimiter {
    window_start: Option<Instant>,
    logged_in_window: u32,
    suppressed: u64,
    total: u64,
}

impl LogLimiter {
    /// A limiter that has logged nothing yet.
    pub const fn new() -> Self {
        LogLimiter {
            window_start: None,
            logged_in_window: 0,
            suppressed: 0,
            total: 0,
        }
    }

    /// Records one event. `Some(n)` means: log it, and say that `n` earlier
    /// events were not logged; `None` means: stay quiet.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= LOG_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.logged_in_window = 0;
        }
        if self.logged_in_window < LOG_BURST {
            self.logged_in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Events recorded so far, logged or not.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Logs a warning about guest behaviour through a [`LogLimiter`]:
/// `guest_warn!(limiter, "what happened: {detail}")`.
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            if suppressed == 0 {
                tracing::warn!($($arg)+);
            } else {
                tracing::warn!(suppressed, $($arg)+);
            }
        }
    };
}
pub(crate) use guest_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_quiet_then_reports_the_gap() {
        let mut limiter = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(limiter.check_at(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limiter.check_at(t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(limiter.check_at(t0 + LOG_WINDOW), Some(1000));
        assert_eq!(limiter.check_at(t0 + LOG_WINDOW), Some(0));
        assert_eq!(limiter.total(), u64::from(LOG_BURST) + 1002);
    }

    #[test]
    fn macro_compiles_with_and_without_arguments() {
        let mut limiter = LogLimiter::new();
        let queue = 3;
        guest_warn!(limiter, "plain");
        guest_warn!(limiter, "queue {queue} is odd");
        assert_eq!(limiter.total(), 2);
    }
}
