//! What an API key may read about itself: `GET /v1/models` (the catalog, filtered to the key's
//! allowed models) and `GET /v1/usage` (the key's own usage only).

use crate::ctx::ReqInfo;
use lumen_shared::contracts::routes;
use lumen_shared::kv::ApiKeyRecord;
use lumen_shared::{keys, ApiError};
use lumen_spin::http::get_json;
use lumen_spin::util::percent_encode;
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;

/// Authenticates the caller's bearer key (401 when missing or wrong).
pub fn authenticate(kv: &SpinKv, info: &ReqInfo) -> Result<ApiKeyRecord, ApiError> {
    let secret = keys::bearer(info.authorization.as_deref())?;
    keys::authenticate(kv, secret)
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
    let mut list: Value = get_json("router", routes::MODELS).await?;
    if !key.allowed_models.is_empty() {
        if let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) {
            data.retain(|m| model_allowed(m, &key.allowed_models));
        }
    }
    Ok(Reply::json(200, &list))
}

/// `GET /v1/usage`: always the caller's own key, whatever the query says.
pub async fn usage(info: &ReqInfo) -> Result<Reply, ApiError> {
    let key = authenticate(&SpinKv::open_or_503()?, info)?;
    let summary: Value = get_json(
        "meter",
        &format!("{}?key_id={}", routes::USAGE, percent_encode(&key.id)),
    )
    .await?;
    Ok(Reply::json(200, &summary))
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
}
