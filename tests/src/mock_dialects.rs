//! The mock's other wire dialects, each on its own routes and protocol-faithful:
//!
//! * Anthropic Messages: `POST /v1/messages` (`x-api-key`, `anthropic-version` required;
//!   `max_tokens` required), JSON or SSE events `message_start`, `content_block_start`,
//!   `ping`, `content_block_delta` (`text_delta` / `input_json_delta`), `content_block_stop`,
//!   `message_delta` (stop reason, output tokens), `message_stop`; usage with
//!   `cache_creation_input_tokens` / `cache_read_input_tokens`; errors
//!   `{"type":"error","error":{"type","message"}}` (529 `overloaded_error`).
//! * Gemini: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse` (`x-goog-api-key`), `usageMetadata`, safety blocks
//!   (`promptFeedback.blockReason`), function calls; errors `{"error":{"code","message","status"}}`.
//! * Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions?api-version=...` with
//!   the `api-key` header, answered like `/v1/chat/completions` for model `{deployment}`.
//! * Queue-style GPU serverless (RunPod-like): `POST /v2/{endpoint}/run` with `{"input": <chat
//!   body>}` → `{"id","status":"IN_QUEUE"}`; `GET /v2/{endpoint}/status/{id}` → `IN_QUEUE` until
//!   the cold start (`cold_ms=N`, default 0) has passed, then `COMPLETED` with the
//!   `chat.completion` as `output`. Bearer key as for OpenAI.
//!
//! The same `[mock ...]` directives steer every dialect (read from the last user turn). With
//! `fixture=dialect/file` the mock answers with that recorded file from `tests/fixtures/` verbatim
//! (SSE files event by event), with `status=N` as its HTTP status.

use crate::mock::{
    abort_stream, chat_completions, full_body, json_response, message_text, parse_directive,
    prompt_tokens, request_directive, token_text, unix_now, Abort, BoxError, Directive, MockBody,
    State, DEFAULT_TOKENS, TOOL_ARGUMENTS,
};
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Recorded fixtures the mock can replay (`fixture=` directive), by path under `tests/fixtures/`.
pub const FIXTURES: &[(&str, &str)] = &[
    (
        "anthropic/tool_use.json",
        include_str!("../fixtures/anthropic/tool_use.json"),
    ),
    (
        "anthropic/tool_stream.sse",
        include_str!("../fixtures/anthropic/tool_stream.sse"),
    ),
    (
        "anthropic/error_overloaded.json",
        include_str!("../fixtures/anthropic/error_overloaded.json"),
    ),
    (
        "anthropic/error_invalid.json",
        include_str!("../fixtures/anthropic/error_invalid.json"),
    ),
    (
        "gemini/function_call.json",
        include_str!("../fixtures/gemini/function_call.json"),
    ),
    (
        "gemini/safety_block.json",
        include_str!("../fixtures/gemini/safety_block.json"),
    ),
    (
        "gemini/stream.sse",
        include_str!("../fixtures/gemini/stream.sse"),
    ),
    (
        "gemini/error_invalid.json",
        include_str!("../fixtures/gemini/error_invalid.json"),
    ),
    (
        "openai/tool_stream.sse",
        include_str!("../fixtures/openai/tool_stream.sse"),
    ),
    (
        "openai/error_invalid.json",
        include_str!("../fixtures/openai/error_invalid.json"),
    ),
];

/// A queue-style job.
#[derive(Debug, Clone)]
pub struct Job {
    ready_at: Instant,
    output: Value,
}

/// Answers the dialect routes; `None` for paths that are not theirs.
pub(crate) async fn route(
    state: &State,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    json: Option<Value>,
) -> Option<Result<Response<MockBody>, Abort>> {
    if path == "/v1/messages" && method == Method::POST {
        return Some(anthropic(state, headers, json).await);
    }
    if let Some(rest) = path.strip_prefix("/v1beta/models/") {
        if method == Method::POST {
            return Some(gemini(state, headers, rest, query, json).await);
        }
    }
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        return Some(azure(state, headers, rest, query, json).await);
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        return Some(Ok(queue(state, method, headers, rest, json)));
    }
    None
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn key_ok(state: &State, presented: Option<&str>) -> bool {
    match &state.cfg.api_key {
        Some(k) => presented == Some(k.as_str()),
        None => true,
    }
}

fn sse_response(
    events: Vec<(bool, Bytes)>,
    delay: Duration,
    die_at: Option<usize>,
    state: &State,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let disconnects = state.disconnects.clone();
    tokio::spawn(async move {
        for (i, (delayed, ev)) in events.into_iter().enumerate() {
            if die_at == Some(i) {
                return abort_stream(tx).await;
            }
            if delayed && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(ev))).await.is_err() {
                disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Replays a recorded fixture.
fn fixture(state: &State, name: &str, status: Option<u16>, delay: Duration) -> Response<MockBody> {
    let Some((_, text)) = FIXTURES.iter().find(|(n, _)| *n == name) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": format!("mock: unknown fixture {name:?}")}})
                .to_string()
                .into_bytes(),
        );
    };
    if name.ends_with(".sse") {
        let events = text
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| (true, Bytes::from(format!("{e}\n\n"))))
            .collect();
        return sse_response(events, delay, None, state);
    }
    let code = StatusCode::from_u16(status.unwrap_or(200)).unwrap_or(StatusCode::OK);
    json_response(code, text.trim_end().as_bytes().to_vec())
}

fn delay_of(state: &State, d: &Directive) -> Duration {
    d.delay_ms
        .map_or(state.cfg.token_delay, Duration::from_millis)
}

/// (completion tokens, capped by `max`?) for a directive.
fn completion(d: &Directive, max: Option<u64>) -> (u64, bool) {
    let want = d.tokens.unwrap_or(DEFAULT_TOKENS);
    match max {
        Some(m) if m < want => (m, true),
        _ => (want, false),
    }
}

// ---------------------------------------------------------------- Anthropic

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response<MockBody> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(
        code,
        json!({"type": "error", "error": {"type": kind, "message": message}})
            .to_string()
            .into_bytes(),
    );
    if status == 429 {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    r
}

/// The prompt tokens the Anthropic mock reports as `input_tokens`: the OpenAI formula over
/// `messages` plus `3 + ceil(chars(system) / 4)` for a system prompt.
pub fn anthropic_prompt_tokens(body: &Value) -> u64 {
    let system = body.get("system").map_or(0, |s| {
        let n = message_text(s).chars().count() as u64;
        3 + n.div_ceil(4)
    });
    prompt_tokens(body) + system
}

fn sse_named(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

async fn anthropic(
    state: &State,
    headers: &HeaderMap,
    json: Option<Value>,
) -> Result<Response<MockBody>, Abort> {
    if !key_ok(state, header(headers, "x-api-key")) {
        return Ok(anthropic_error(
            401,
            "authentication_error",
            "invalid x-api-key",
        ));
    }
    if header(headers, "anthropic-version").is_none() {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    let Some(body) = json.filter(Value::is_object) else {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "The request body is not valid JSON.",
        ));
    };
    let Some(model) = body.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "model: Field required",
        ));
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "messages: Field required",
        ));
    }
    let Some(max_tokens) = body.get("max_tokens").and_then(Value::as_u64) else {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "max_tokens: Field required",
        ));
    };
    if let Some(roles) = body.get("messages").and_then(Value::as_array) {
        for w in roles.windows(2) {
            if w[0].get("role") == w[1].get("role") {
                return Ok(anthropic_error(
                    400,
                    "invalid_request_error",
                    "messages: roles must alternate between \"user\" and \"assistant\"",
                ));
            }
        }
    }
    let d = match request_directive(&body) {
        Ok(d) => crate::mock::scoped(state, d, "anthropic", &model),
        Err(m) => return Ok(anthropic_error(400, "invalid_request_error", &m)),
    };
    // An assistant prefill: the last message is the assistant's own text to continue.
    let prefill = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .map(|m| message_text(m.get("content").unwrap_or(&Value::Null)));
    if prefill.is_some() && d.reject_prefill.is_some() {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "This model does not support assistant message prefill. (mock)",
        ));
    }
    if let Some(ms) = d.ttft_ms.filter(|&ms| ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(f) = &d.fixture {
        return Ok(fixture(state, f, d.status, delay_of(state, &d)));
    }
    if let Some(status) = d.status {
        return Ok(match status {
            401 => anthropic_error(401, "authentication_error", "invalid x-api-key"),
            404 => anthropic_error(404, "not_found_error", &format!("model: {model}")),
            429 => anthropic_error(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
            529 => anthropic_error(529, "overloaded_error", "Overloaded"),
            s if s >= 500 => anthropic_error(s, "api_error", "Internal server error"),
            s => anthropic_error(s, "invalid_request_error", "mock request error"),
        });
    }
    let n = state.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!("msg_mock_{n}");
    let (tokens, capped) = completion(&d, Some(max_tokens));
    // With a prefill that is a prefix of the answer (whole tokens), only the rest is generated.
    let skip = prefill.as_deref().map_or(0, |p| {
        let mut acc = String::new();
        let mut k = 0;
        while k < tokens && acc.len() < p.len() {
            acc.push_str(&token_text(k, d.content.as_deref()));
            k += 1;
        }
        if acc == p {
            k
        } else {
            0
        }
    });
    let stop = if d.tool.is_some() {
        "tool_use"
    } else if capped {
        "max_tokens"
    } else {
        "end_turn"
    };
    let usage = json!({
        "input_tokens": anthropic_prompt_tokens(&body),
        "cache_creation_input_tokens": d.cache_write.unwrap_or(0),
        "cache_read_input_tokens": d.cached.unwrap_or(0),
        "output_tokens": tokens - skip,
    });
    let text: String = (skip..tokens)
        .map(|i| token_text(i, d.content.as_deref()))
        .collect();
    let tool_id = format!("toolu_mock_{n}");
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    if !stream {
        let mut content = Vec::new();
        match &d.tool {
            Some(name) => content.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or_default()})),
            None => content.push(json!({"type": "text", "text": text})),
        }
        if d.die_after.is_some() {
            return Err(Abort("die_after on a non-stream request"));
        }
        let answer = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return Ok(json_response(
            StatusCode::OK,
            answer.to_string().into_bytes(),
        ));
    }
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = 1.into();
    let mut events = vec![(
        false,
        sse_named(
            "message_start",
            &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        ),
    )];
    let mut die_at = None;
    match &d.tool {
        Some(name) => {
            events.push((false, sse_named("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}))));
            events.push((false, sse_named("ping", &json!({"type": "ping"}))));
            let (a, b) = TOOL_ARGUMENTS.split_at(8);
            for piece in ["", a, b] {
                events.push((true, sse_named("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}))));
            }
        }
        None => {
            events.push((false, sse_named("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))));
            events.push((false, sse_named("ping", &json!({"type": "ping"}))));
            for i in skip..tokens {
                if d.die_after == Some(i) {
                    die_at = Some(events.len());
                }
                events.push((true, sse_named("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token_text(i, d.content.as_deref())}}))));
            }
        }
    }
    if d.die_after.is_some() && die_at.is_none() {
        die_at = Some(events.len());
    }
    events.push((
        false,
        sse_named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
    ));
    events.push((false, sse_named("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": tokens - skip}}))));
    events.push((
        false,
        sse_named("message_stop", &json!({"type": "message_stop"})),
    ));
    Ok(sse_response(events, delay_of(state, &d), die_at, state))
}

// ---------------------------------------------------------------- Gemini

fn gemini_error(code: u16, status: &str, message: &str) -> Response<MockBody> {
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        sc,
        json!({"error": {"code": code, "message": message, "status": status}})
            .to_string()
            .into_bytes(),
    )
}

fn parts_text(parts: Option<&Value>) -> String {
    parts
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// The prompt tokens the Gemini mock reports: `3 + Σ contents (3 + ceil(chars(text parts) / 4))`
/// plus the same for `systemInstruction`.
pub fn gemini_prompt_tokens(body: &Value) -> u64 {
    let turn = |t: &Value| 3 + (parts_text(t.get("parts")).chars().count() as u64).div_ceil(4);
    3 + body
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(turn)
        .sum::<u64>()
        + body.get("systemInstruction").map_or(0, turn)
}

async fn gemini(
    state: &State,
    headers: &HeaderMap,
    rest: &str,
    query: &str,
    json: Option<Value>,
) -> Result<Response<MockBody>, Abort> {
    if !key_ok(state, header(headers, "x-goog-api-key")) {
        return Ok(gemini_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
        ));
    }
    let (model, method) = rest.split_once(':').unwrap_or((rest, ""));
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" if query.split('&').any(|p| p == "alt=sse") => true,
        "streamGenerateContent" => {
            return Ok(gemini_error(
                400,
                "INVALID_ARGUMENT",
                "mock: only alt=sse streams are served",
            ))
        }
        _ => {
            return Ok(gemini_error(
                404,
                "NOT_FOUND",
                &format!("method {method:?} not found"),
            ))
        }
    };
    let Some(body) = json.filter(Value::is_object) else {
        return Ok(gemini_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
        ));
    };
    let Some(contents) = body.get("contents").and_then(Value::as_array) else {
        return Ok(gemini_error(
            400,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    };
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c.get("role").and_then(Value::as_str) == Some("user"));
    let d = match parse_directive(
        &last_user
            .map(|c| parts_text(c.get("parts")))
            .unwrap_or_default(),
    ) {
        // `only=` scopes faults here too (`gemini` or the upstream model id).
        Ok(d) => crate::mock::scoped(state, d.unwrap_or_default(), "gemini", model),
        Err(m) => return Ok(gemini_error(400, "INVALID_ARGUMENT", &m)),
    };
    if let Some(ms) = d.ttft_ms.filter(|&ms| ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(f) = &d.fixture {
        return Ok(fixture(state, f, d.status, delay_of(state, &d)));
    }
    if let Some(status) = d.status {
        return Ok(match status {
            429 => gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            ),
            404 => gemini_error(
                404,
                "NOT_FOUND",
                &format!("models/{model} is not found for API version v1beta"),
            ),
            503 => gemini_error(
                503,
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
            ),
            s if s >= 500 => gemini_error(s, "INTERNAL", "An internal error has occurred."),
            s => gemini_error(s, "INVALID_ARGUMENT", "mock request error"),
        });
    }
    let n = state.next_id.fetch_add(1, Ordering::SeqCst);
    let response_id = format!("mock-gemini-{n}");
    let prompt = gemini_prompt_tokens(&body);
    let cfg = body.get("generationConfig").cloned().unwrap_or_default();
    let (tokens, capped) = completion(&d, cfg.get("maxOutputTokens").and_then(Value::as_u64));
    let candidates = cfg
        .get("candidateCount")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let reasoning = d.reasoning.unwrap_or(0);
    let mut usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": tokens * candidates, "totalTokenCount": prompt + tokens * candidates + reasoning});
    if let Some(c) = d.cached {
        usage["cachedContentTokenCount"] = c.into();
    }
    if reasoning > 0 {
        usage["thoughtsTokenCount"] = reasoning.into();
    }
    let finish = if capped { "MAX_TOKENS" } else { "STOP" };
    let ratings = json!([{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}, {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"}]);
    if d.safety.is_some_and(|s| s > 0) {
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}, "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}, "modelVersion": model, "responseId": response_id});
        return Ok(if stream {
            sse_response(
                vec![(false, Bytes::from(format!("data: {blocked}\n\n")))],
                Duration::ZERO,
                None,
                state,
            )
        } else {
            json_response(StatusCode::OK, blocked.to_string().into_bytes())
        });
    }
    let call = |name: &str| json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or_default()}});
    if !stream {
        if d.die_after.is_some() {
            return Err(Abort("die_after on a non-stream request"));
        }
        let text: String = (0..tokens)
            .map(|i| token_text(i, d.content.as_deref()))
            .collect();
        let parts = match &d.tool {
            Some(name) => json!([call(name)]),
            None => json!([{"text": text}]),
        };
        let cands: Vec<Value> = (0..candidates)
            .map(|i| json!({"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": i, "safetyRatings": ratings}))
            .collect();
        let answer = json!({"candidates": cands, "usageMetadata": usage, "modelVersion": model, "responseId": response_id});
        return Ok(json_response(
            StatusCode::OK,
            answer.to_string().into_bytes(),
        ));
    }
    let partial_usage = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
    let ev = |cand: Value, usage: &Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": model, "responseId": response_id})
        ))
    };
    let mut events = Vec::new();
    let mut die_at = None;
    if d.tool.is_none() {
        for i in 0..tokens {
            if d.die_after == Some(i) {
                die_at = Some(events.len());
            }
            let part = json!({"text": token_text(i, d.content.as_deref())});
            events.push((
                true,
                ev(
                    json!({"content": {"parts": [part], "role": "model"}, "index": 0}),
                    &partial_usage,
                ),
            ));
        }
    }
    if d.die_after.is_some() && die_at.is_none() {
        die_at = Some(events.len());
    }
    let last_parts = match &d.tool {
        Some(name) => json!([call(name)]),
        None => json!([{"text": ""}]),
    };
    events.push((true, ev(json!({"content": {"parts": last_parts, "role": "model"}, "finishReason": finish, "index": 0, "safetyRatings": ratings}), &usage)));
    Ok(sse_response(events, delay_of(state, &d), die_at, state))
}

// ---------------------------------------------------------------- Azure OpenAI

async fn azure(
    state: &State,
    headers: &HeaderMap,
    rest: &str,
    query: &str,
    json: Option<Value>,
) -> Result<Response<MockBody>, Abort> {
    let azure_error = |code: StatusCode, c: &str, m: &str| {
        json_response(
            code,
            json!({"error": {"code": c, "message": m}})
                .to_string()
                .into_bytes(),
        )
    };
    if !key_ok(state, header(headers, "api-key")) {
        return Ok(azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint.",
        ));
    }
    if !query
        .split('&')
        .any(|p| p.starts_with("api-version=") && p.len() > "api-version=".len())
    {
        return Ok(azure_error(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ));
    }
    let Some(deployment) = rest.strip_suffix("/chat/completions") else {
        return Ok(azure_error(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ));
    };
    let mut body = json.unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("model".into(), deployment.into());
    }
    chat_completions(state, Some(body), false, "azure").await
}

// ---------------------------------------------------------------- Embeddings

/// The mock's embedding of `text`: `dims` values `((Σ bytes + 7·j) mod 1000) / 1000`, exact in f32
/// to three decimals.
pub fn embedding(text: &str, dims: u64) -> Vec<f32> {
    let sum: u64 = text.bytes().map(u64::from).sum();
    (0..dims)
        .map(|j| ((sum + 7 * j) % 1000) as f32 / 1000.0)
        .collect()
}

/// `POST /v1/embeddings` (OpenAI): `input` a string or array of strings; `dimensions` (default 8);
/// `encoding_format` float or base64; usage `prompt_tokens = Σ ceil(chars / 4)`.
pub(crate) fn embeddings(state: &State, json: Option<Value>) -> Response<MockBody> {
    use base64::Engine as _;
    let bad = |m: &str| {
        json_response(StatusCode::BAD_REQUEST, json!({"error": {"message": m, "type": "invalid_request_error", "param": "input", "code": null}}).to_string().into_bytes())
    };
    let Some(body) = json else {
        return bad("You must provide a JSON body (mock).");
    };
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => return bad("'input' must be a string or an array of strings (mock)"),
    };
    let dims = body.get("dimensions").and_then(Value::as_u64).unwrap_or(8);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = embedding(t, dims);
            let e = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|t| (t.chars().count() as u64).div_ceil(4))
        .sum();
    state.next_id.fetch_add(1, Ordering::SeqCst);
    let answer = json!({"object": "list", "data": data, "model": body.get("model").cloned().unwrap_or_default(), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    json_response(StatusCode::OK, answer.to_string().into_bytes())
}

// ---------------------------------------------------------------- Queue-style serverless

fn queue(
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    rest: &str,
    json: Option<Value>,
) -> Response<MockBody> {
    let err = |code: StatusCode, m: &str| {
        json_response(code, json!({"error": m}).to_string().into_bytes())
    };
    let bearer = header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    if !key_ok(state, bearer) {
        return err(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let mut segs = rest.split('/');
    let (_endpoint, op, id) = (
        segs.next().unwrap_or(""),
        segs.next().unwrap_or(""),
        segs.next(),
    );
    match (method, op, id) {
        (&Method::POST, "run", None) => {
            let Some(input) = json
                .as_ref()
                .and_then(|b| b.get("input"))
                .filter(|i| i.is_object())
            else {
                return err(StatusCode::BAD_REQUEST, "input: required object");
            };
            let d = request_directive(input).unwrap_or_default();
            let n = state.next_id.fetch_add(1, Ordering::SeqCst);
            let prompt = prompt_tokens(input);
            let (tokens, capped) = completion(
                &d,
                ["max_completion_tokens", "max_tokens"]
                    .iter()
                    .find_map(|k| input.get(*k).and_then(Value::as_u64)),
            );
            let text: String = (0..tokens)
                .map(|i| token_text(i, d.content.as_deref()))
                .collect();
            let output = json!({
                "id": format!("chatcmpl-queue-{n}"), "object": "chat.completion", "created": unix_now(),
                "model": input.get("model").cloned().unwrap_or_default(),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": if capped { "length" } else { "stop" }}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens},
            });
            let id = format!("job-{n}");
            let job = Job {
                ready_at: Instant::now() + Duration::from_millis(d.cold_ms.unwrap_or(0)),
                output,
            };
            state
                .jobs
                .lock()
                .expect("jobs poisoned")
                .insert(id.clone(), job);
            json_response(
                StatusCode::OK,
                json!({"id": id, "status": "IN_QUEUE"})
                    .to_string()
                    .into_bytes(),
            )
        }
        (&Method::GET, "status", Some(id)) => {
            let jobs = state.jobs.lock().expect("jobs poisoned");
            let Some(job) = jobs.get(id) else {
                return err(StatusCode::NOT_FOUND, "job not found");
            };
            let body = if Instant::now() >= job.ready_at {
                json!({"id": id, "status": "COMPLETED", "output": job.output})
            } else {
                json!({"id": id, "status": "IN_QUEUE"})
            };
            json_response(StatusCode::OK, body.to_string().into_bytes())
        }
        _ => {
            let mut r = Response::new(full_body(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}
