//! What an API key may read about itself: `GET /v1/models` (the catalog, filtered to the key's
//! allowed models) and `GET /v1/models/{id}`, `GET /v1/usage` (the key's own usage only, with `from`, `to`, `model`,
//! `group_by`, `format=csv`) and `GET /v1/usage/records` (its own newest records).

use crate::ctx::ReqInfo;
use crate::deps;
use lumen_shared::store::ApiKeyRecord;
use lumen_shared::{store::apikeys, store::usage, ApiError};
use lumen_spin::util::{now_ms, percent_encode, query_param};
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;

/// Authenticates the caller's bearer key (401 when missing, wrong or expired).
pub fn authenticate(kv: &SpinKv, info: &ReqInfo) -> Result<ApiKeyRecord, ApiError> {
    let secret = apikeys::bearer(info.authorization.as_deref())?;
    apikeys::authenticate(kv, secret, now_ms() / 1000)
}

/// Whether a `/models` entry may be used with `allowed` (by id or by one of its aliases).
pub fn model_allowed(model: &Value, allowed: &[String]) -> bool {
    let named = |v: &Value| v.as_str().is_some_and(|s| allowed.iter().any(|a| a == s));
    model.get("id").is_some_and(named)
        || model
            .get("aliases")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(named))
}

/// `GET /v1/models`.
pub async fn models(info: &ReqInfo) -> Result<Reply, ApiError> {
    let key = authenticate(&SpinKv::open_or_503()?, info)?;
    let mut list = deps::models()?;
    if !key.allowed_models.is_empty() {
        if let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) {
            data.retain(|m| model_allowed(m, &key.allowed_models));
        }
    }
    Ok(Reply::json(200, &list))
}

/// `GET /v1/models/{id}`: one model of the list, by id or alias (a 404 naming `model` for one
/// the list does not have, or the key may not use).
pub async fn model(info: &ReqInfo, id: &str) -> Result<Reply, ApiError> {
    let key = authenticate(&SpinKv::open_or_503()?, info)?;
    let list = deps::models()?;
    let wanted = [id.to_string()];
    let found = list
        .get("data")
        .and_then(Value::as_array)
        .and_then(|data| data.iter().find(|m| model_allowed(m, &wanted)))
        .filter(|m| key.allowed_models.is_empty() || model_allowed(m, &key.allowed_models));
    match found {
        Some(m) => Ok(Reply::json(200, m)),
        None => Err(ApiError::not_found(
            format!("the model \"{id}\" does not exist or this API key may not use it; GET /v1/models lists the models it may use"),
            Some("model"),
            "model_not_found",
        )),
    }
}

/// The usage filters of a query string, re-encoded for the meter (validated here so errors
/// name the parameter before any call).
pub fn usage_filters(query: &str) -> Result<String, ApiError> {
    usage::parse_query(|n| query_param(query, n))?;
    let mut out = String::new();
    for name in ["from", "to", "model", "group_by"] {
        if let Some(v) = query_param(query, name) {
            out.push_str(&format!("&{name}={}", percent_encode(&v)));
        }
    }
    Ok(out)
}

/// Whether the caller asked for CSV (`format=csv` or `Accept: text/csv`).
fn wants_csv(info: &ReqInfo) -> Result<bool, ApiError> {
    match query_param(&info.query, "format").as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        None | Some("") => Ok(info
            .accept
            .as_deref()
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/csv"))),
        Some(other) => Err(ApiError::invalid_request(
            format!("'format' must be json or csv, got {other:?}"),
            Some("format"),
            "invalid_value",
        )),
    }
}

/// Asks the meter for the usage of `key_ids` and answers in JSON or CSV.
pub async fn usage_reply(info: &ReqInfo, key_ids: &[String]) -> Result<Reply, ApiError> {
    let csv = wants_csv(info)?;
    let filters = usage_filters(&info.query)?;
    let ids: Vec<String> = key_ids.iter().map(|k| percent_encode(k)).collect();
    let summary = deps::usage(&format!("key_ids={}{filters}", ids.join(",")))?;
    if csv {
        return Ok(Reply::new(
            200,
            "text/csv; charset=utf-8",
            usage::to_csv(&summary).into_bytes(),
        ));
    }
    Ok(Reply::json(200, &summary))
}

/// The newest usage records of `key_id` (`limit`, default 100).
pub async fn records_reply(info: &ReqInfo, key_id: &str) -> Result<Reply, ApiError> {
    let mut query = format!("key_id={}", percent_encode(key_id));
    if let Some(l) = query_param(&info.query, "limit") {
        query.push_str(&format!("&limit={}", percent_encode(&l)));
    }
    let list = deps::records(&query)?;
    Ok(Reply::json(200, &list))
}

/// `GET /v1/usage`: always the caller's own key, whatever the query says.
pub async fn usage(info: &ReqInfo) -> Result<Reply, ApiError> {
    let key = authenticate(&SpinKv::open_or_503()?, info)?;
    usage_reply(info, &[key.id]).await
}

/// `GET /v1/usage/records`: the caller's own records.
pub async fn usage_records(info: &ReqInfo) -> Result<Reply, ApiError> {
    let key = authenticate(&SpinKv::open_or_503()?, info)?;
    records_reply(info, &key.id).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_by_id_or_alias() {
        let m = json!({"id":"gpt-4o-mini","aliases":["openai/gpt-4o-mini"]});
        assert!(model_allowed(&m, &["gpt-4o-mini".into()]));
        assert!(model_allowed(&m, &["openai/gpt-4o-mini".into()]));
        assert!(!model_allowed(&m, &["gpt-4o".into()]));
        assert!(!model_allowed(&json!({"id":5}), &["5".into()]));
    }

    #[test]
    fn usage_filters_are_checked_and_reencoded() {
        assert_eq!(
            usage_filters("key_id=other&from=2026-11-01&group_by=model").unwrap(),
            "&from=2026-11-01&group_by=model"
        );
        assert_eq!(
            usage_filters("group_by=week").unwrap_err().param.as_deref(),
            Some("group_by")
        );
    }
}
