//! Budgets and credits: a ledger per tenant in KV (grants, holds, settlements, releases), in
//! integer nano-dollars.
//!
//! Before a call, auth holds the most the request can cost (prompt estimate + max output tokens
//! at the dearest price among the plan's candidates); after, the meter settles the hold to the
//! actual cost and releases the rest. Monthly caps reset on schedule because every monthly
//! counter is keyed by `YYYY-MM` (UTC).
//!
//! Why increment-then-check (and not compare-and-swap): the hold is one atomic `increment` of
//! the month's `committed` counter (settled spend + outstanding holds); when the new value is
//! over the cap the same amount is added back negatively and the request is refused. Committed
//! can therefore never settle above the cap through holds, whatever the number of instances.
//! The price is a false refusal under contention: a request can be refused because a
//! concurrent request's hold was counted for an instant before it was rolled back. That is
//! the safe direction and needs no retry loop, where CAS on a shared total would make every
//! concurrent request of a tenant retry against the others.
//!
//! A request can only spend more than its hold when the upstream reports more tokens than the
//! estimate (the prompt estimate is 4 characters a token; output is capped by `max_tokens`),
//! so spend is at most the cap plus one request's overshoot.

use crate::domain::catalog::Price;
use crate::domain::pricing::{cost_nanos, NANOS_PER_USD};
use crate::error::ApiError;
use crate::store::{
    self as kv, Credit, CreditField, Kv, KvError, LedgerField, MonthLedger, TenantKey, TenantRecord,
};
use crate::wire::openai::Usage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Output tokens held for a request that sets neither `max_tokens` nor `max_completion_tokens`
/// (a stream that goes past it extends its hold by this much again, or ends with "length").
pub const DEFAULT_HOLD_OUTPUT_TOKENS: u64 = 4096;

/// An outstanding hold, carried from auth to the meter in the settle request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM` the hold was taken in (settled in the same month).
    pub month: String,
    /// Held nano-dollars.
    pub nanos: i64,
    /// Also held against prepaid credits.
    pub prepaid: bool,
}

/// `YYYY-MM` (UTC) of a unix time in ms.
pub fn month_of(unix_ms: u64) -> String {
    crate::time::utc_day(unix_ms)[..7].to_string()
}

/// The output tokens to hold for: the request's `max_completion_tokens` / `max_tokens`, else
/// [`DEFAULT_HOLD_OUTPUT_TOKENS`].
pub fn max_output_tokens(body: &Map<String, Value>) -> (u64, bool) {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .map_or((DEFAULT_HOLD_OUTPUT_TOKENS, false), |n| (n, true))
}

/// The most a request can cost across candidate prices.
pub fn max_cost_nanos<'a>(
    prompt_tokens: u64,
    output_tokens: u64,
    prices: impl IntoIterator<Item = &'a Price>,
) -> i64 {
    // The dearest way the tokens can be billed: every prompt token at the input or the cache
    // write price, every output token at the output or the reasoning price.
    let shapes: Vec<Usage> = [(0, 0), (prompt_tokens, 0), (0, output_tokens)]
        .into_iter()
        .chain([(prompt_tokens, output_tokens)])
        .map(|(written, reasoning)| Usage {
            prompt_tokens,
            completion_tokens: output_tokens,
            cache_write_tokens: written,
            reasoning_tokens: reasoning,
            ..Usage::default()
        })
        .collect();
    prices
        .into_iter()
        .flat_map(|p| shapes.iter().map(move |u| cost_nanos(u, p)))
        .max()
        .unwrap_or(0)
}

/// The most one hold may take: a million dollars. Every real hold is far below it (output is
/// capped at [`crate::wire::openai::MAX_OUTPUT_TOKENS`]); it keeps ledger counters from ever
/// overflowing whatever a catalog price is.
pub const MAX_HOLD_NANOS: i64 = 1_000_000 * 1_000_000_000;

fn store_err(e: KvError) -> ApiError {
    // The detail names ledger keys: logged here, never sent to the client.
    eprintln!("lumen: budget ledger: {e}");
    let mut err = ApiError::internal("the budget ledger is unavailable; retry shortly");
    err.status = 503;
    err.retryable = true;
    err
}

fn add(store: &dyn Kv, tenant: &str, m: &str, field: LedgerField, v: i64) -> Result<i64, KvError> {
    kv::incr(
        store,
        &MonthLedger {
            tenant,
            month: m,
            field,
        },
        v,
    )
}

fn credit(store: &dyn Kv, tenant: &str, field: CreditField, v: i64) -> Result<i64, KvError> {
    kv::incr(store, &Credit { tenant, field }, v)
}

/// The tenant's settings (default: no cap, not prepaid).
pub fn tenant(store: &dyn Kv, tenant: &str) -> Result<TenantRecord, ApiError> {
    Ok(kv::load(store, &TenantKey(tenant))
        .map_err(store_err)?
        .unwrap_or_default())
}

fn refuse(what: &str) -> ApiError {
    ApiError::insufficient_quota(format!(
        "this request could cost more than the {what} left; lower max_tokens, add credits or raise the budget"
    ))
}

/// Takes `nanos` from the month's committed total (and, prepaid, from the credits): one
/// increment each, given back at once when it passes the cap. False when refused.
fn take(
    store: &dyn Kv,
    tenant_id: &str,
    month: &str,
    rec: &TenantRecord,
    nanos: i64,
) -> Result<Result<(), &'static str>, KvError> {
    // Committed is kept for every budgeted tenant, capped or not, so a cap set mid-month
    // starts from what the month really spent.
    let committed = add(store, tenant_id, month, LedgerField::Committed, nanos)?;
    if rec.monthly_budget_nanos.is_some_and(|cap| committed > cap) {
        add(store, tenant_id, month, LedgerField::Committed, -nanos)?;
        return Ok(Err("monthly budget"));
    }
    if rec.prepaid {
        let used = credit(store, tenant_id, CreditField::Committed, nanos)?;
        let granted = credit(store, tenant_id, CreditField::Granted, 0)?;
        if used > granted {
            credit(store, tenant_id, CreditField::Committed, -nanos)?;
            add(store, tenant_id, month, LedgerField::Committed, -nanos)?;
            return Ok(Err("credit"));
        }
    }
    Ok(Ok(()))
}

/// Holds `nanos` for a tenant; `None` when the tenant has no budget (nothing to hold against).
pub fn hold(
    store: &dyn Kv,
    tenant_id: &str,
    rec: &TenantRecord,
    now_ms: u64,
    nanos: i64,
) -> Result<Option<Hold>, ApiError> {
    if rec.monthly_budget_nanos.is_none() && !rec.prepaid {
        return Ok(None);
    }
    let m = month_of(now_ms);
    let nanos = nanos.clamp(0, MAX_HOLD_NANOS);
    // A hold above the cap itself can never fit: refused without touching the ledger.
    if rec.monthly_budget_nanos.is_some_and(|cap| nanos > cap) {
        return Err(refuse("monthly budget"));
    }
    take(store, tenant_id, &m, rec, nanos)
        .map_err(store_err)?
        .map_err(refuse)?;
    Ok(Some(Hold {
        tenant: tenant_id.to_string(),
        month: m,
        nanos,
        prepaid: rec.prepaid,
    }))
}

/// Adds `extra` to an outstanding hold (a stream going past what was held); false (and nothing
/// changed) when the budget cannot cover it.
pub fn extend(
    store: &dyn Kv,
    h: &mut Hold,
    rec: &TenantRecord,
    extra: i64,
) -> Result<bool, KvError> {
    let extra = extra.clamp(0, MAX_HOLD_NANOS);
    let rec = TenantRecord {
        prepaid: h.prepaid,
        ..rec.clone()
    };
    if take(store, &h.tenant, &h.month, &rec, extra)?.is_err() {
        return Ok(false);
    }
    h.nanos = h.nanos.saturating_add(extra);
    Ok(true)
}

/// Settles a hold to the actual cost: committed moves by `actual - held` and the settled spend
/// grows by `actual` (two increments; three for a prepaid tenant). Called once per request.
pub fn settle(store: &dyn Kv, h: &Hold, actual: i64) -> Result<(), KvError> {
    let actual = actual.clamp(0, MAX_HOLD_NANOS);
    let delta = actual - h.nanos;
    add(store, &h.tenant, &h.month, LedgerField::Committed, delta)?;
    add(store, &h.tenant, &h.month, LedgerField::Settled, actual)?;
    if h.prepaid {
        credit(store, &h.tenant, CreditField::Committed, delta)?;
    }
    Ok(())
}

/// Grants (or, negative, withdraws) prepaid credits; returns the new granted total.
pub fn grant(store: &dyn Kv, tenant_id: &str, nanos: i64) -> Result<i64, KvError> {
    credit(store, tenant_id, CreditField::Granted, nanos)
}

/// A tenant's ledger for one month (`GET /admin/tenants/{tenant}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LedgerView {
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Monthly cap, US dollars (null = none).
    pub monthly_budget_usd: Option<f64>,
    /// Prepaid.
    pub prepaid: bool,
    /// Settled spend plus outstanding holds this month.
    pub committed_usd: f64,
    /// Outstanding holds this month (committed minus settled).
    pub held_usd: f64,
    /// Settled spend this month.
    pub settled_usd: f64,
    /// Credits granted (all time).
    pub credits_granted_usd: f64,
    /// Credits committed (all time).
    pub credits_committed_usd: f64,
}

/// Reads a tenant's ledger.
pub fn view(store: &dyn Kv, tenant_id: &str, now_ms: u64) -> Result<LedgerView, ApiError> {
    let rec = tenant(store, tenant_id)?;
    let m = month_of(now_ms);
    let usd = |n: i64| n as f64 / NANOS_PER_USD;
    let get = |f| add(store, tenant_id, &m, f, 0).map_err(store_err);
    let cget = |f| credit(store, tenant_id, f, 0).map_err(store_err);
    let committed = get(LedgerField::Committed)?;
    let settled = get(LedgerField::Settled)?;
    Ok(LedgerView {
        tenant: tenant_id.to_string(),
        month: m.clone(),
        monthly_budget_usd: rec.monthly_budget_nanos.map(usd),
        prepaid: rec.prepaid,
        committed_usd: usd(committed),
        held_usd: usd(committed - settled),
        settled_usd: usd(settled),
        credits_granted_usd: usd(cget(CreditField::Granted)?),
        credits_committed_usd: usd(cget(CreditField::Committed)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    const T0: u64 = 1_795_000_000_000; // 2026-11-18

    fn capped(n: i64) -> TenantRecord {
        TenantRecord {
            monthly_budget_nanos: Some(n),
            prepaid: false,
        }
    }

    #[test]
    fn month_keys_reset_monthly() {
        assert_eq!(month_of(T0), "2026-11");
        assert_eq!(month_of(T0 + 14 * 86_400_000), "2026-12");
    }

    #[test]
    fn holds_never_exceed_the_cap_and_settle_to_actual() {
        let kv = MemKv::default();
        let rec = capped(1000);
        let a = hold(&kv, "t", &rec, T0, 600).unwrap().unwrap();
        let e = hold(&kv, "t", &rec, T0, 600).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_deref()),
            (402, Some("insufficient_quota"))
        );
        settle(&kv, &a, 250).unwrap();
        let b = hold(&kv, "t", &rec, T0, 600).unwrap().unwrap();
        settle(&kv, &b, 600).unwrap();
        let v = view(&kv, "t", T0).unwrap();
        assert_eq!(v.held_usd, 0.0);
        assert!((v.settled_usd - 850e-9).abs() < 1e-15);
        assert!((v.committed_usd - 850e-9).abs() < 1e-15);
        // Next month starts from zero.
        assert!(hold(&kv, "t", &rec, T0 + 14 * 86_400_000, 900)
            .unwrap()
            .is_some());
    }

    #[test]
    fn no_budget_holds_nothing_and_credits_limit_prepaid() {
        let kv = MemKv::default();
        assert_eq!(
            hold(&kv, "t", &TenantRecord::default(), T0, 5).unwrap(),
            None
        );
        let pre = TenantRecord {
            monthly_budget_nanos: None,
            prepaid: true,
        };
        assert_eq!(hold(&kv, "p", &pre, T0, 1).unwrap_err().status, 402);
        grant(&kv, "p", 100).unwrap();
        let mut h = hold(&kv, "p", &pre, T0, 60).unwrap().unwrap();
        assert!(!extend(&kv, &mut h, &pre, 50).unwrap());
        assert!(extend(&kv, &mut h, &pre, 40).unwrap());
        assert_eq!(h.nanos, 100);
        settle(&kv, &h, 70).unwrap();
        let v = view(&kv, "p", T0).unwrap();
        assert!((v.credits_committed_usd - 70e-9).abs() < 1e-15);
        assert_eq!(v.held_usd, 0.0);
    }

    /// Regression: a prepaid tenant without a cap released holds from `committed` without ever
    /// adding them, so committed went negative and a cap set later was overspent.
    #[test]
    fn a_prepaid_ledger_never_goes_negative_and_a_cap_set_mid_month_holds() {
        let kv = MemKv::default();
        let pre = TenantRecord {
            monthly_budget_nanos: None,
            prepaid: true,
        };
        grant(&kv, "p", 1_000_000).unwrap();
        for _ in 0..10 {
            let h = hold(&kv, "p", &pre, T0, 100).unwrap().unwrap();
            settle(&kv, &h, 12).unwrap();
        }
        let v = view(&kv, "p", T0).unwrap();
        assert!((v.committed_usd - 120e-9).abs() < 1e-15, "{v:?}");
        assert!(v.committed_usd >= 0.0 && v.held_usd.abs() < 1e-15);
        // A cap of 150 n$ set now: 30 n$ of room, so the next 100 n$ hold is refused.
        let capped = TenantRecord {
            monthly_budget_nanos: Some(150),
            prepaid: true,
        };
        assert_eq!(hold(&kv, "p", &capped, T0, 100).unwrap_err().status, 402);
        assert!(hold(&kv, "p", &capped, T0, 30).unwrap().is_some());
    }

    /// D3: a hold of any size is a 402 (or fits), never a store error: the largest are refused
    /// before the ledger is touched, so committed stays exact.
    #[test]
    fn huge_holds_are_refused_not_overflowed() {
        let kv = MemKv::default();
        let rec = capped(1_000_000);
        for nanos in [1i64 << 31, 1 << 53, i64::MAX - 1, i64::MAX] {
            let e = hold(&kv, "t", &rec, T0, nanos).unwrap_err();
            assert_eq!(
                (e.status, e.code.as_deref()),
                (402, Some("insufficient_quota"))
            );
        }
        let pre = TenantRecord {
            monthly_budget_nanos: None,
            prepaid: true,
        };
        grant(&kv, "t", 500).unwrap();
        assert_eq!(hold(&kv, "t", &pre, T0, i64::MAX).unwrap_err().status, 402);
        let v = view(&kv, "t", T0).unwrap();
        assert_eq!(
            (v.committed_usd, v.credits_committed_usd),
            (0.0, 0.0),
            "{v:?}"
        );
        // The dearest hold a priced request can ask for is far inside i64.
        let p = Price {
            input: 1e6,
            output: 1e6,
            cached_input: None,
            cache_write: None,
            reasoning: None,
            source: "s".into(),
            as_of: "d".into(),
        };
        let n = max_cost_nanos(4 << 20, crate::wire::openai::MAX_OUTPUT_TOKENS, [&p]);
        assert!(n > 0 && n < i64::MAX, "{n}");
    }

    /// Concurrent holds against one cap: the committed total never passes it.
    #[test]
    fn concurrent_holds_respect_the_cap() {
        let kv = std::sync::Arc::new(MemKv::default());
        let rec = capped(50 * 100);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (kv, rec) = (kv.clone(), rec.clone());
                std::thread::spawn(move || {
                    (0..25)
                        .filter_map(|_| hold(kv.as_ref(), "t", &rec, T0, 100).ok().flatten())
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 50);
        assert!((view(kv.as_ref(), "t", T0).unwrap().committed_usd - 5000e-9).abs() < 1e-15);
    }

    #[test]
    fn max_cost_takes_the_dearest_candidate() {
        let p = |i, o| Price {
            input: i,
            output: o,
            cached_input: None,
            cache_write: None,
            reasoning: None,
            source: "s".into(),
            as_of: "d".into(),
        };
        let (a, b) = (p(1.0, 2.0), p(3.0, 1.0));
        // 100 prompt + 10 output: a = 120 µ$·1e-? → 100×1 + 10×2 = 120 per 1e6 $; b = 310.
        assert_eq!(max_cost_nanos(100, 10, [&a, &b]), 310_000);
        // Cache writes and reasoning dearer than input and output: the hold covers them.
        let c = Price {
            cache_write: Some(1.25),
            reasoning: Some(4.0),
            ..p(1.0, 2.0)
        };
        assert_eq!(max_cost_nanos(100, 10, [&c]), 165_000);
        let body: Map<String, Value> = serde_json::from_str(r#"{"max_tokens": 7}"#).unwrap();
        assert_eq!(max_output_tokens(&body), (7, true));
        assert_eq!(
            max_output_tokens(&Map::new()),
            (DEFAULT_HOLD_OUTPUT_TOKENS, false)
        );
    }
}
