//! Routing explainability: `POST /v1/route`, the plan for one request or a batch, without
//! calling any model (`lumen.route` on answers is added in `saved.rs`).

use crate::chat::{gate, refund};
use crate::ctx::{read_body, Ctx, ReqInfo};
use crate::deps;
use lumen_shared::contracts::PlanRequest;
use lumen_shared::wire::openai::{parse_chat_request, parse_json_object};
use lumen_shared::ApiError;
use lumen_spin::{Reply, SpinKv};
use serde_json::{json, Value};
use spin_sdk::http::IncomingRequest;

/// `POST /v1/route`: a chat completion body → its plan; `{"requests": [...], "explain": bool}` →
/// `{"object":"list","data":[plan or error, …]}`. Counts as one request against the key's limit,
/// checked with the key from the headers before the body is read.
pub async fn route(ctx: &mut Ctx, info: &ReqInfo, req: IncomingRequest) -> Result<Reply, ApiError> {
    let kv = SpinKv::open_or_503()?;
    let caller = gate(ctx, &kv, info)?;
    let key = &caller.key;
    let body = read_body(req, info).await?;
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
    let key_plan = crate::limits::key_plan(key)?;
    let ask = PlanRequest {
        model: chat.model.clone(),
        allowed_models: key.allowed_models.clone(),
        models: lumen_shared::domain::fallback::request_models(&chat.body)?,
        reference: reference_ask(&chat.body, key, key_plan.as_ref())?,
        request: Some(chat.body),
        shadow: None,
        read_also: Vec::new(),
    };
    match deps::plan(&ask) {
        Ok(plan) => Ok(Reply::json(200, &plan)),
        Err(e) => {
            if e.status == 403 {
                refund(ctx, &kv, &caller);
            }
            Err(e)
        }
    }
}

/// The reference model for `lumen.saved` a request asks for: its own `lumen.reference_model`,
/// else the key's, else the key's plan's ([`lumen_shared::domain::saved`]).
pub fn reference_ask(
    body: &serde_json::Map<String, Value>,
    key: &lumen_shared::store::ApiKeyRecord,
    plan: Option<&lumen_shared::domain::plans::Plan>,
) -> Result<Option<lumen_shared::domain::saved::ReferenceAsk>, ApiError> {
    lumen_shared::domain::saved::ask(
        body,
        key.reference_model.as_deref(),
        plan.and_then(|p| p.reference_model.as_deref()),
    )
}
