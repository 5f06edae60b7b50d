//! Requests-per-minute limiting on an atomic counter per key and one-minute window.
//!
//! The window is fixed (aligned to the minute): each request increments the window's counter and
//! is admitted when the new value is within the limit, so concurrent requests across instances
//! admit exactly `limit` per window. Rejected requests also count, which keeps the decision a
//! single atomic operation.

use crate::error::ApiError;
use crate::store::{self as kv, Kv, RateWindow};

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
    let w = |window| RateWindow {
        kind: "rpm",
        id: key_id,
        window,
    };
    let count = kv::incr(store, &w(window), 1).map_err(|e| {
        ApiError::internal(format!("could not reach the rate-limit store ({})", e.0))
    })?;
    if count == 1 && window >= 2 * WINDOW_SECS {
        // First request of a window: drop the counter of the window before last, which no one reads.
        let _ = store.delete(&kv::Counter::key(&w(window - 2 * WINDOW_SECS)));
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

/// A limit on a fixed window other than the per-key RPM: requests per day, tokens per minute or
/// day, requests per minute of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests per UTC day, per key.
    KeyRpd,
    /// Tokens per minute, per key.
    KeyTpm,
    /// Tokens per UTC day, per key.
    KeyTpd,
    /// Requests per minute across a tenant's keys.
    TenantRpm,
    /// Requests per minute of a key on one model (id = `{key}/{model}`).
    ModelRpm,
    /// Tokens per minute of a key on one model (id = `{key}/{model}`).
    ModelTpm,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::KeyRpd => "rpd",
            Kind::KeyTpm => "tpm",
            Kind::KeyTpd => "tpd",
            Kind::TenantRpm => "tenant-rpm",
            Kind::ModelRpm => "model-rpm",
            Kind::ModelTpm => "model-tpm",
        }
    }
    fn window_secs(self) -> u64 {
        match self {
            Kind::KeyRpd | Kind::KeyTpd => 86_400,
            Kind::KeyTpm | Kind::TenantRpm | Kind::ModelRpm | Kind::ModelTpm => WINDOW_SECS,
        }
    }
    fn what(self) -> &'static str {
        match self {
            Kind::KeyRpd => "requests per day for this API key",
            Kind::KeyTpm => "tokens per minute for this API key",
            Kind::KeyTpd => "tokens per day for this API key",
            Kind::TenantRpm => "requests per minute for this tenant",
            Kind::ModelRpm => "requests per minute for this API key on this model",
            Kind::ModelTpm => "tokens per minute for this API key on this model",
        }
    }
}

/// The counter of `kind` for `id` in the window starting at `window`.
fn window_key(kind: Kind, id: &str, window: u64) -> RateWindow<'_> {
    RateWindow {
        kind: kind.name(),
        id,
        window,
    }
}

/// An amount taken from a window, to reconcile or give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// What was limited.
    pub kind: Kind,
    /// Key or tenant id.
    pub id: String,
    /// Window start.
    pub window: u64,
    /// Amount taken.
    pub amount: u64,
    /// The state for headers.
    pub status: RateStatus64,
}

/// [`RateStatus`] for token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus64 {
    /// Limit per window.
    pub limit: u64,
    /// Left in this window.
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

fn rl_err(e: kv::KvError) -> ApiError {
    ApiError::internal(format!("could not reach the rate-limit store ({})", e.0))
}

/// Takes `amount` from `id`'s window of `kind` by one atomic increment; over the limit, the
/// amount is given back at once and the request is refused with 429 (so refused requests do
/// not use up the window).
pub fn take(
    store: &dyn Kv,
    kind: Kind,
    id: &str,
    limit: u64,
    amount: u64,
    now_ms: u64,
) -> Result<Taken, ApiError> {
    let now = now_ms / 1000;
    let len = kind.window_secs();
    let window = now - now % len;
    let reset_secs = (window + len - now).max(1);
    let w = window_key(kind, id, window);
    let count = kv::incr(store, &w, amount as i64).map_err(rl_err)?;
    if count > limit as i64 {
        kv::incr(store, &w, -(amount as i64)).map_err(rl_err)?;
        return Err(ApiError::rate_limited(
            format!(
                "rate limit reached: {limit} {}; this request needs {amount}; retry in {reset_secs} s",
                kind.what()
            ),
            reset_secs,
        ));
    }
    Ok(Taken {
        kind,
        id: id.to_string(),
        window,
        amount,
        status: RateStatus64 {
            limit,
            remaining: (limit as i64 - count).max(0) as u64,
            reset_secs,
        },
    })
}

/// Adds `delta` to a taken window (token reservations reconciled with actual usage; a negative
/// delta gives tokens back).
pub fn adjust(store: &dyn Kv, t: &Taken, delta: i64) -> Result<(), ApiError> {
    let w = window_key(t.kind, &t.id, t.window);
    kv::incr(store, &w, delta).map(|_| ()).map_err(rl_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

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
    fn token_windows_reserve_give_back_and_reconcile() {
        let kv = MemKv::default();
        let t0 = 1_800_000_000_000;
        let a = take(&kv, Kind::KeyTpm, "k", 100, 60, t0).unwrap();
        assert_eq!(a.status.remaining, 40);
        let e = take(&kv, Kind::KeyTpm, "k", 100, 60, t0).unwrap_err();
        assert_eq!(e.status, 429);
        assert!(e.message.contains("tokens per minute"), "{}", e.message);
        // The refused reservation was given back; reconcile the first to its actual 20.
        adjust(&kv, &a, 20 - 60).unwrap();
        assert_eq!(
            take(&kv, Kind::KeyTpm, "k", 100, 80, t0)
                .unwrap()
                .status
                .remaining,
            0
        );
        assert!(take(&kv, Kind::KeyTpm, "k", 100, 80, t0 + 60_000).is_ok());
        // Day windows are keyed by the UTC day.
        let d = take(&kv, Kind::KeyRpd, "k", 2, 1, t0).unwrap();
        assert_eq!(d.window % 86_400, 0);
        take(&kv, Kind::KeyRpd, "k", 2, 1, t0).unwrap();
        assert!(take(&kv, Kind::KeyRpd, "k", 2, 1, t0 + 3_600_000).is_err());
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
