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
    /// Unix seconds at the window's start (to give the request back, [`refund_rpm`]).
    pub window: u64,
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
        remaining: (i64::from(limit) - count).clamp(0, i64::from(u32::MAX)) as u32,
        reset_secs,
        window,
    })
}

/// Gives back one request [`check_rpm`] admitted in `window` (a request refused afterwards for a
/// reason that should not cost the key a request: a model it may not use).
pub fn refund_rpm(store: &dyn Kv, key_id: &str, window: u64) -> Result<(), ApiError> {
    let w = RateWindow {
        kind: "rpm",
        id: key_id,
        window,
    };
    kv::incr(store, &w, -1).map(|_| ()).map_err(rl_err)
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
    /// Whether the limit counts tokens (reserved at admission, reconciled after).
    pub fn counts_tokens(self) -> bool {
        matches!(self, Kind::KeyTpm | Kind::KeyTpd | Kind::ModelTpm)
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

/// Token counts are clamped here before they reach a window counter: far above anything a
/// request can reserve ([`crate::wire::openai::MAX_OUTPUT_TOKENS`] plus a body's worth of
/// prompt), so a counter never overflows whatever an upstream reports.
pub const MAX_AMOUNT: u64 = 1 << 40;

/// A refusal by one windowed limit: the 429 (or the store's error), and for a 429 the window's
/// state, so a refused request still gets its `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The error to answer with.
    pub error: ApiError,
    /// Which limit refused.
    pub kind: Kind,
    /// The window's state (a 429 only).
    pub status: Option<RateStatus64>,
}

impl From<Box<Refused>> for ApiError {
    fn from(r: Box<Refused>) -> ApiError {
        r.error
    }
}

/// Takes `amount` from `id`'s window of `kind` by one atomic increment; over the limit, the
/// amount is given back at once and the request is refused with 429 (so refused requests do
/// not use up the window). An amount larger than the limit itself can never fit: it is refused
/// without touching the store.
pub fn take(
    store: &dyn Kv,
    kind: Kind,
    id: &str,
    limit: u64,
    amount: u64,
    now_ms: u64,
) -> Result<Taken, Box<Refused>> {
    let now = now_ms / 1000;
    let len = kind.window_secs();
    let window = now - now % len;
    let reset_secs = (window + len - now).max(1);
    let w = window_key(kind, id, window);
    let store_err = |e| {
        Box::new(Refused {
            error: rl_err(e),
            kind,
            status: None,
        })
    };
    let cap = i64::try_from(limit).unwrap_or(i64::MAX);
    let refuse = |count: i64| {
        Box::new(Refused {
        error: ApiError::rate_limited(
            format!(
                "rate limit reached: {limit} {}; this request needs {amount}; retry in {reset_secs} s",
                kind.what()
            ),
            reset_secs,
        ),
        kind,
        status: Some(RateStatus64 {
            limit,
            remaining: cap.saturating_sub(count).max(0) as u64,
            reset_secs,
        }),
    })
    };
    if amount > limit || amount > MAX_AMOUNT {
        let count = kv::read_counter(store, &w).map_err(store_err)?;
        return Err(refuse(count));
    }
    // amount ≤ MAX_AMOUNT < i64::MAX.
    let delta = amount as i64;
    let count = kv::incr(store, &w, delta).map_err(store_err)?;
    if count > cap {
        kv::incr(store, &w, -delta).map_err(store_err)?;
        return Err(refuse(count - delta));
    }
    Ok(Taken {
        kind,
        id: id.to_string(),
        window,
        amount,
        status: RateStatus64 {
            limit,
            remaining: cap.saturating_sub(count).max(0) as u64,
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

/// Gives back everything a taken window holds (a request refused after it was taken).
pub fn give_back(store: &dyn Kv, t: &Taken) -> Result<(), ApiError> {
    adjust(store, t, -(t.amount.min(MAX_AMOUNT) as i64))
}

/// Reconciles a token reservation with the tokens actually used (clamped to [`MAX_AMOUNT`]):
/// one increment by their difference, exact in integers.
pub fn reconcile(store: &dyn Kv, t: &Taken, actual_tokens: u64) -> Result<(), ApiError> {
    let delta = actual_tokens.min(MAX_AMOUNT) as i64 - t.amount.min(MAX_AMOUNT) as i64;
    if delta == 0 {
        return Ok(());
    }
    adjust(store, t, delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{decode_counter, MemKv};

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
        assert_eq!(e.error.status, 429);
        assert_eq!(e.status.unwrap().remaining, 40);
        assert!(
            e.error.message.contains("tokens per minute"),
            "{}",
            e.error.message
        );
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

    /// D2: reservations of any size keep the window exact: one larger than the limit is refused
    /// without touching the counter, and reconciling with any reported usage cannot overflow.
    #[test]
    fn huge_reservations_never_wrap_the_window() {
        let kv = MemKv::default();
        let t0 = 1_800_000_000_000;
        let a = take(&kv, Kind::KeyTpm, "k", 1000, 100, t0).unwrap();
        for huge in [1u64 << 31, 1 << 53, (1 << 63) - 1, 1 << 63, u64::MAX] {
            let r = take(&kv, Kind::KeyTpm, "k", 1000, huge, t0).unwrap_err();
            assert_eq!(r.error.status, 429, "{huge}");
            assert_eq!(r.status.unwrap().remaining, 900, "{huge}");
            // A limit beyond i64 does not wrap either.
            let t = take(&kv, Kind::KeyTpd, "k", u64::MAX, huge, t0);
            if let Ok(t) = t {
                give_back(&kv, &t).unwrap();
            }
        }
        reconcile(&kv, &a, 40).unwrap();
        assert_eq!(
            take(&kv, Kind::KeyTpm, "k", 1000, 10, t0)
                .unwrap()
                .status
                .remaining,
            950,
            "exact after the refusals"
        );
        let day = kv::Counter::key(&window_key(
            Kind::KeyTpd,
            "k",
            t0 / 1000 - (t0 / 1000) % 86_400,
        ));
        assert_eq!(decode_counter(kv.get(&day).unwrap().as_deref()), 0);
        // An upstream reporting u64::MAX tokens moves the window by at most MAX_AMOUNT.
        reconcile(&kv, &a, u64::MAX).unwrap();
    }

    #[test]
    fn a_refunded_request_frees_its_slot() {
        let kv = MemKv::default();
        let t0 = 1_800_000_000_000;
        let s = check_rpm(&kv, "k", 1, t0).unwrap();
        refund_rpm(&kv, "k", s.window).unwrap();
        assert!(check_rpm(&kv, "k", 1, t0 + 1000).is_ok());
        assert!(check_rpm(&kv, "k", 1, t0 + 2000).is_err());
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
