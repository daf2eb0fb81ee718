//! Rate-limited logging for things a guest can trigger at line rate.
//!
//! A hostile or buggy guest can produce millions of bad frames per second; each is counted, but
//! only a few log lines per second per call site may reach the log. Written here rather than
//! taken from a crate because all it needs is one atomic per call site.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Minimum interval between two lines from the same call site.
pub const INTERVAL_MS: u64 = 1000;

/// Milliseconds since the first call (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Returns true if the call site whose state is `last` may log now, and records that it did.
pub fn allow(last: &AtomicU64) -> bool {
    let now = now_ms() + INTERVAL_MS; // +INTERVAL so that the very first call is allowed
    let prev = last.load(Ordering::Relaxed);
    if prev != 0 && now < prev + INTERVAL_MS {
        return false;
    }
    last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// `warn!` at most once per [`INTERVAL_MS`] per call site.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => {{
        static LAST: ::std::sync::atomic::AtomicU64 = ::std::sync::atomic::AtomicU64::new(0);
        if $crate::ratelimit::allow(&LAST) {
            ::log::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_line_within_interval_is_suppressed() {
        let last = AtomicU64::new(0);
        assert!(allow(&last));
        assert!(!allow(&last));
    }
}
