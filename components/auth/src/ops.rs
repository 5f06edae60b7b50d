//! What orchestrators and monitoring call: `GET /healthz` (the process answers; nothing is
//! read), `GET /readyz` (the key-value store answers one read and the catalog loads; 503
//! naming what failed otherwise), both without credentials, and `GET /metrics` (Prometheus
//! text, admin token; see [`lumen_shared::store::metrics`] for what it reads).

use crate::admin::check_admin;
use crate::ctx::ReqInfo;
use crate::deps;
use lumen_shared::store::{self as kvs, metrics, LogSeq, Target};
use lumen_shared::ApiError;
use lumen_spin::util::now_ms;
use lumen_spin::{Reply, SpinKv};
use serde_json::json;

/// `GET /healthz`: alive.
pub fn healthz() -> Reply {
    Reply::json(200, &json!({"status": "ok"}))
}

/// A 503 naming the check that failed.
fn not_ready(what: &str, detail: &str) -> ApiError {
    // The detail can name internal keys or paths: logged, never sent.
    eprintln!("lumen: not ready: {what}: {detail}");
    let mut e = ApiError::internal(format!(
        "not ready: the {what} is unavailable; retry shortly"
    ));
    e.status = 503;
    e.code = Some(
        if what == "catalog" {
            "catalog_unavailable"
        } else {
            "kv_unavailable"
        }
        .into(),
    );
    e.param = Some(what.to_string());
    e.retryable = true;
    e
}

/// `GET /readyz`: one read of the key-value store (the log's sequence counter) and the catalog
/// as the router loads it.
pub fn readyz() -> Result<Reply, ApiError> {
    let kv = SpinKv::open().map_err(|e| not_ready("key-value store", &e.0))?;
    kvs::read_counter(&kv, &LogSeq).map_err(|e| not_ready("key-value store", &e.0))?;
    deps::models().map_err(|e| not_ready("catalog", &e.message))?;
    Ok(Reply::json(
        200,
        &json!({"status": "ready", "checks": {"kv": "ok", "catalog": "ok"}}),
    ))
}

/// `GET /metrics`: Prometheus text exposition (admin token).
pub fn metrics(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let pairs = crate::health::catalog_pairs()?;
    let targets: Vec<Target> = pairs
        .iter()
        .map(|(provider, model)| Target { provider, model })
        .collect();
    let m =
        metrics::gather(&kv, now_ms(), &targets).map_err(|e| lumen_spin::kv::unavailable(&e))?;
    Ok(Reply::new(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        metrics::render(&m).into_bytes(),
    ))
}
