//! Requests-per-minute limiting on an atomic counter per key and one-minute window.
//!
//! The window is fixed (aligned to the minute): each request increments the window's counter and
//! is admitted when the new value is within the limit, so concurrent requests across instances
//! admit exactly `limit` per window. Rejected requests also count, which keeps the decision a
//! single atomic operation.

use crate::error::ApiError;
use crate::kv::{self, Kv, RpmWindow};

/// Window length.
pub const WINDOW_SECS: u64 = 60;

/// The state reported in `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    /// Limit per window.
    pub limit: u32,
    /// Requests left in this window.
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// Admits or refuses one request of `key_id` at `now_ms`.
pub fn check_rpm(
    store: &dyn Kv,
    key_id: &str,
    limit: u32,
    now_ms: u64,
) -> Result<RateStatus, ApiError> {
    let now = now_ms / 1000;
    let window = now - now % WINDOW_SECS;
    let reset_secs = (window + WINDOW_SECS - now).max(1);
    let count = kv::incr(store, &RpmWindow { key_id, window }, 1).map_err(|e| {
        ApiError::internal(format!("could not reach the rate-limit store ({})", e.0))
    })?;
    if count == 1 && window >= 2 * WINDOW_SECS {
        // First request of a window: drop the counter of the window before last, which no one reads.
        let _ = store.delete(&kv::Counter::key(&RpmWindow {
            key_id,
            window: window - 2 * WINDOW_SECS,
        }));
    }
    if count > i64::from(limit) {
        return Err(ApiError::rate_limited(
            format!("rate limit reached for this API key: {limit} requests per minute; retry in {reset_secs} s"),
            reset_secs,
        ));
    }
    Ok(RateStatus {
        limit,
        remaining: (i64::from(limit) - count).max(0) as u32,
        reset_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemKv;

    #[test]
    fn admits_limit_then_refuses_until_next_window() {
        let kv = MemKv::default();
        let t0 = 1_800_000_000_000; // aligned to a minute
        for i in 0..3 {
            let s = check_rpm(&kv, "k", 3, t0 + i * 1000).unwrap();
            assert_eq!(s.remaining, 2 - i as u32);
        }
        let e = check_rpm(&kv, "k", 3, t0 + 15_000).unwrap_err();
        assert_eq!((e.status, e.retry_after), (429, Some(45)));
        assert!(
            check_rpm(&kv, "other", 3, t0 + 15_000).is_ok(),
            "keys are independent"
        );
        assert!(
            check_rpm(&kv, "k", 3, t0 + 60_000).is_ok(),
            "a new window admits again"
        );
    }

    #[test]
    fn old_windows_are_cleaned() {
        let kv = MemKv::default();
        let t0 = 1_800_000_000_000;
        check_rpm(&kv, "k", 3, t0).unwrap();
        check_rpm(&kv, "k", 3, t0 + 120_000).unwrap();
        assert_eq!(kv.keys(), vec![format!("v1/rl/rpm/k/{}", t0 / 1000 + 120)]);
    }
}
