//! `GET /admin/health`: the health of every provider+model the catalog offers, as the provider
//! component recorded it (latency averages, `Retry-After`, the circuit breaker), the calls
//! counted in the window, and what the router makes of it now.

use crate::admin::check_admin;
use crate::ctx::ReqInfo;
use crate::deps;
use lumen_shared::domain::health::{Availability, Policy};
use lumen_shared::store::{health, Target};
use lumen_shared::ApiError;
use lumen_spin::util::now_ms;
use lumen_spin::{Reply, SpinKv};
use serde_json::{json, Value};

/// Every (provider, model) the catalog offers, sorted.
pub fn catalog_pairs() -> Result<Vec<(String, String)>, ApiError> {
    let models = deps::models()?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for m in models["data"].as_array().into_iter().flatten() {
        let Some(id) = m["id"].as_str() else { continue };
        for o in m["offers"].as_array().into_iter().flatten() {
            if let Some(p) = o["provider"].as_str() {
                pairs.push((p.to_string(), id.to_string()));
            }
        }
        if let Some(p) = m["owned_by"].as_str() {
            pairs.push((p.to_string(), id.to_string()));
        }
    }
    pairs.sort();
    pairs.dedup();
    Ok(pairs)
}

/// `GET /admin/health`: one row per (provider, model) that has a record.
pub fn admin_health(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let policy = Policy::default();
    let now = now_ms();
    let pairs = catalog_pairs()?;
    let targets: Vec<Target> = pairs
        .iter()
        .map(|(provider, model)| Target { provider, model })
        .collect();
    let snaps = health::snapshots(&kv, &policy, &targets, now)
        .map_err(|e| lumen_spin::kv::unavailable(&e))?;
    let data: Vec<Value> = targets
        .iter()
        .zip(snaps)
        .filter_map(|(t, s)| {
            let record = s.record.clone()?;
            let (failures, successes) = s.window(&policy, now);
            let availability = match s.availability(&policy, now) {
                Availability::Up => json!({"state": "up"}),
                Availability::Probe { .. } => json!({"state": "probe"}),
                Availability::Down { until_ms } => json!({"state": "down", "until_ms": until_ms}),
            };
            let breaker = if record.open_since_ms.is_some() {
                "open"
            } else {
                "closed"
            };
            Some(
                json!({"provider": t.provider, "model": t.model, "availability": availability,
                   "breaker": breaker, "window_failures": failures,
                   "window_successes_counted": successes, "record": record}),
            )
        })
        .collect();
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
}
