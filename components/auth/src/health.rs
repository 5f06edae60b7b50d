//! `GET /admin/health`: every provider+model health record the provider component wrote
//! (latency averages, the sliding error window, `Retry-After`, the circuit breaker) and what
//! the router makes of it now.

use crate::admin::check_admin;
use crate::ctx::ReqInfo;
use lumen_shared::health::{self, Availability, Policy};
use lumen_shared::ApiError;
use lumen_spin::util::now_ms;
use lumen_spin::{Reply, SpinKv};
use serde_json::json;

/// `GET /admin/health`.
pub fn admin_health(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let policy = Policy::default();
    let now = now_ms();
    let data: Vec<_> = health::all(&kv)
        .map_err(|e| lumen_spin::kv::unavailable(&e))?
        .into_iter()
        .map(|(name, h)| {
            let (provider, model) = name.split_once('/').unwrap_or((name.as_str(), ""));
            let (calls, errors) = h.counts(&policy, now);
            let availability = match h.availability(&policy, now) {
                Availability::Up => json!({"state": "up"}),
                Availability::Probe => json!({"state": "probe"}),
                Availability::Down { until_ms } => json!({"state": "down", "until_ms": until_ms}),
            };
            json!({"provider": provider, "model": model, "availability": availability,
                   "window_calls": calls, "window_errors": errors, "record": h})
        })
        .collect();
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
}
