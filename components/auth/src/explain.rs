//! Routing explainability: `lumen.route` in non-stream answers, and `POST /v1/route` (the plan
//! for one request or a batch, without calling any model).

use crate::account::authenticate;
use crate::ctx::{read_body, ReqInfo};
use crate::deps;
use lumen_shared::contracts::PlanRequest;
use lumen_shared::domain::route::RouteExplain;
use lumen_shared::store::limits::check_rpm;
use lumen_shared::wire::openai::{parse_chat_request, parse_json_object};
use lumen_shared::ApiError;
use lumen_spin::util::now_ms;
use lumen_spin::{Reply, SpinKv};
use serde_json::{json, Value};
use spin_sdk::http::IncomingRequest;

/// Adds `lumen.route` to a JSON answer (kept as is when it is not a JSON object).
pub fn with_route(body: Vec<u8>, route: Option<&RouteExplain>) -> Vec<u8> {
    let Some(route) = route else { return body };
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let lumen = answer
        .entry("lumen")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(obj) = lumen.as_object_mut() {
        obj.insert("route".into(), json!(route));
    }
    serde_json::to_vec(&answer).unwrap_or(body)
}

/// `POST /v1/route`: a chat completion body → its plan; `{"requests": [...], "explain": bool}` →
/// `{"object":"list","data":[plan or error, …]}`. Counts as one request against the key's limit.
pub async fn route(info: &ReqInfo, req: IncomingRequest) -> Result<Reply, ApiError> {
    let body = read_body(req, info).await?;
    let kv = SpinKv::open_or_503()?;
    let key = authenticate(&kv, info)?;
    check_rpm(&kv, &key.id, key.rpm_limit, now_ms())?;
    let obj = parse_json_object(&body)?;
    if let Some(reqs) = obj.get("requests") {
        if !reqs.is_array() {
            return Err(ApiError::invalid_request(
                "'requests' must be an array of chat completion bodies",
                Some("requests"),
                "invalid_type",
            ));
        }
        let explain = obj.get("explain").and_then(Value::as_bool).unwrap_or(false);
        let ask =
            json!({"allowed_models": key.allowed_models, "requests": reqs, "explain": explain});
        let list = deps::route(&ask)?;
        return Ok(Reply::json(200, &list));
    }
    let chat = parse_chat_request(&body)?;
    let ask = PlanRequest {
        model: chat.model.clone(),
        allowed_models: key.allowed_models.clone(),
        models: lumen_shared::domain::fallback::request_models(&chat.body)?,
        request: Some(chat.body),
        shadow: None,
    };
    let plan = deps::plan(&ask)?;
    Ok(Reply::json(200, &plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_goes_into_lumen_object() {
        let r = RouteExplain {
            model: "m".into(),
            reason: "why".into(),
            ..RouteExplain::default()
        };
        let out = with_route(br#"{"id":"x","lumen":{"cost":1}}"#.to_vec(), Some(&r));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["lumen"]["cost"], 1);
        assert_eq!(v["lumen"]["route"]["model"], "m");
        assert_eq!(with_route(b"[1]".to_vec(), Some(&r)), b"[1]".to_vec());
        assert_eq!(with_route(b"{}".to_vec(), None), b"{}".to_vec());
    }
}
