//! The meter component: settles every request exactly once into usage records, rollups, the
//! tenant's budget ledger and the audit chain (`POST /settle`), and reads usage back
//! (`GET /usage?key_id=` or `?key_ids=a,b` with `from`, `to`, `model`, `group_by`;
//! `GET /records?key_id=&limit=`). Private to the app.

use lumen_shared::contracts::SettleRequest;
use lumen_shared::pricing::NANOS_PER_USD;
use lumen_shared::{usage, ApiError};
use lumen_spin::http::{read_request_body, respond};
use lumen_spin::kv::{unavailable, SpinKv};
use lumen_spin::util::{dispatch, query_param, split_path};
use lumen_spin::Reply;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;

/// Settle requests are small; anything larger is a bug in the caller.
const MAX_BODY: usize = 256 * 1024;

async fn settle(req: IncomingRequest) -> Result<Reply, ApiError> {
    let body = read_request_body(req, MAX_BODY).await?;
    let settle: SettleRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!("invalid settle request: {e}"), None, "invalid_json")
    })?;
    let kv = SpinKv::open_or_503()?;
    let done = usage::settle(&kv, &settle).map_err(|e| unavailable(&e))?;
    Ok(Reply::json(
        200,
        &serde_json::json!({"recorded": done.recorded, "cost_usd": done.record.cost_nanos as f64 / NANOS_PER_USD}),
    ))
}

fn key_ids(query: &str) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = match query_param(query, "key_ids") {
        Some(list) => list
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
        None => query_param(query, "key_id")
            .filter(|k| !k.is_empty())
            .into_iter()
            .collect(),
    };
    if ids.is_empty() && query_param(query, "key_ids").is_none() {
        return Err(ApiError::invalid_request(
            "missing required query parameter: 'key_id'",
            Some("key_id"),
            "missing_required_parameter",
        ));
    }
    Ok(ids)
}

fn summary(query: &str) -> Result<Reply, ApiError> {
    let ids = key_ids(query)?;
    let q = usage::parse_query(|name| query_param(query, name))?;
    let kv = SpinKv::open_or_503()?;
    let s = usage::query(&kv, &ids, &q).map_err(|e| unavailable(&e))?;
    Ok(Reply::json(200, &s))
}

fn records(query: &str) -> Result<Reply, ApiError> {
    let ids = key_ids(query)?;
    let limit = query_param(query, "limit")
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_request(
                        "'limit' must be an integer from 1 to 10000",
                        Some("limit"),
                        "invalid_value",
                    )
                })
        })
        .transpose()?
        .unwrap_or(100);
    let kv = SpinKv::open_or_503()?;
    let mut data = Vec::new();
    for id in &ids {
        data.extend(usage::records(&kv, id, limit).map_err(|e| unavailable(&e))?);
    }
    Ok(Reply::json(
        200,
        &serde_json::json!({"object": "list", "data": data}),
    ))
}

async fn route(req: IncomingRequest) -> Result<Reply, ApiError> {
    let method = req.method();
    let target = req.path_with_query().unwrap_or_default();
    let (path, query) = split_path(&target);
    #[derive(Clone, Copy)]
    enum Op {
        Settle,
        Usage,
        Records,
    }
    let table = [
        ("/settle", "POST", Op::Settle),
        ("/usage", "GET", Op::Usage),
        ("/records", "GET", Op::Records),
    ];
    match dispatch(&method.to_string(), path, &table)? {
        Op::Settle => settle(req).await,
        Op::Usage => summary(query),
        Op::Records => records(query),
    }
}

/// The export: the code `#[http_component]` generates is the only unsafe code in the component.
#[allow(unsafe_code)]
mod entry {
    use super::*;

    #[http_component]
    async fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let reply = route(req).await.unwrap_or_else(Reply::from);
        respond(out, reply).await;
    }
}
