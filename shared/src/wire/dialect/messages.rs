//! Anthropic Messages *ingress* (`POST /v1/messages`): a Messages request from an Anthropic client
//! (coding agents, the `anthropic` SDK) becomes an OpenAI chat body that any backend can serve,
//! and the OpenAI answer, stream and errors go back in Anthropic's shapes, usage included:
//! `input_tokens` (fresh), `cache_read_input_tokens`, `cache_creation_input_tokens`,
//! `output_tokens`, both in the answer and in the stream's `message_delta`.
//!
//! Translated: `system` (string or text blocks), text / image / `tool_use` / `tool_result`
//! blocks, `tools`, `tool_choice` (incl. `disable_parallel_tool_use`), `stop_sequences`,
//! `temperature`, `top_p`, `max_tokens`, `metadata.user_id`, `stream`. `cache_control` markers are
//! accepted and not forwarded (they are hints; backends that cache do so on their own). Refused by
//! name: `top_k`, `thinking`, other block types, unknown fields.

use super::{Untranslatable, DONE};
use crate::error::ApiError;
use crate::wire::openai::Usage;
use serde_json::{json, Map, Value};

const SUPPORTED: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "metadata",
];

fn text_of(blocks: &Value, at: &str) -> Result<String, Untranslatable> {
    match blocks {
        Value::String(s) => Ok(s.clone()),
        Value::Array(bs) => bs
            .iter()
            .enumerate()
            .map(|(i, b)| match b.get("type").and_then(Value::as_str) {
                Some("text") => Ok(b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()),
                _ => Err(Untranslatable::unsupported(format!("{at}[{i}].type"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join("")),
        _ => Err(Untranslatable::value(
            at.to_string(),
            "must be a string or text blocks",
        )),
    }
}

fn image_part(b: &Value, at: &str) -> Result<Value, Untranslatable> {
    let src = b.get("source").cloned().unwrap_or_default();
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            src.get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            src.get("data").and_then(Value::as_str).unwrap_or("")
        ),
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => return Err(Untranslatable::unsupported(format!("{at}.source.type"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Converts a Messages request to an OpenAI chat body. Errors name the Anthropic field.
pub fn request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    to_openai(body).map_err(|e| {
        ApiError::invalid_request(
            format!("parameter '{}' {} by Lumen's /v1/messages", e.param, e.why),
            Some(&e.param),
            "unsupported_parameter",
        )
    })
}

fn to_openai(body: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    for (k, v) in body {
        if !v.is_null() && !SUPPORTED.contains(&k.as_str()) {
            return Err(Untranslatable::unsupported(k.clone()));
        }
    }
    let mut msgs = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(s) => msgs.push(json!({"role": "system", "content": text_of(s, "system")?})),
    }
    let empty = Vec::new();
    let messages = match body.get("messages") {
        Some(Value::Array(m)) => m,
        None => return Err(Untranslatable::value("messages", "is required")),
        Some(_) => return Err(Untranslatable::value("messages", "must be an array")),
    };
    for (i, m) in messages.iter().chain(empty.iter()).enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        let blocks = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b,
            _ => {
                return Err(Untranslatable::value(
                    format!("{at}.content"),
                    "must be a string or content blocks",
                ))
            }
        };
        match role {
            "user" => {
                let mut parts = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    let bat = format!("{at}.content[{j}]");
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or_default()})),
                        Some("image") => parts.push(image_part(b, &bat)?),
                        Some("tool_result") => {
                            let text = match b.get("content") {
                                None | Some(Value::Null) => String::new(),
                                Some(c) => text_of(c, &format!("{bat}.content"))?,
                            };
                            let id = match b.get("tool_use_id") {
                                Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
                                _ => {
                                    return Err(Untranslatable::value(
                                        format!("{bat}.tool_use_id"),
                                        "is required (the id of the tool_use block this result answers)",
                                    ))
                                }
                            };
                            msgs.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                        }
                        _ => return Err(Untranslatable::unsupported(format!("{bat}.type"))),
                    }
                }
                if !parts.is_empty() {
                    msgs.push(json!({"role": "user", "content": parts}));
                }
            }
            "assistant" => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                        Some("tool_use") => calls.push(json!({
                            "id": b.get("id").cloned().unwrap_or_default(),
                            "type": "function",
                            "function": {"name": b.get("name").cloned().unwrap_or_default(), "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})).to_string()},
                        })),
                        _ => return Err(Untranslatable::unsupported(format!("{at}.content[{j}].type"))),
                    }
                }
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() }});
                if !calls.is_empty() {
                    msg["tool_calls"] = calls.into();
                }
                msgs.push(msg);
            }
            _ => {
                return Err(Untranslatable::value(
                    format!("{at}.role"),
                    "must be \"user\" or \"assistant\"",
                ))
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or_default(),
    );
    out.insert("messages".into(), msgs.into());
    match body.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
            out.insert("max_tokens".into(), n.clone().into());
        }
        _ => {
            return Err(Untranslatable::value(
                "max_tokens",
                "is required and must be an integer of at least 1",
            ))
        }
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = body.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), s.clone());
    }
    if let Some(u) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .filter(|v| !v.is_null())
    {
        out.insert("user".into(), u.clone());
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let tools = match body.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(t)) => Some(t),
        Some(_) => {
            return Err(Untranslatable::value(
                "tools",
                "must be an array of tool definitions ([{\"name\", \"input_schema\", …}])",
            ))
        }
    };
    if let Some(tools) = tools {
        let tools: Result<Vec<Value>, _> = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.get("type").and_then(Value::as_str).is_some_and(|ty| ty != "custom") {
                    return Err(Untranslatable::unsupported(format!("tools[{i}].type")));
                }
                let mut f = json!({"name": t.get("name").cloned().unwrap_or_default(), "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                Ok(json!({"type": "function", "function": f}))
            })
            .collect();
        out.insert("tools".into(), tools?.into());
    }
    if let Some(tc) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or_default()}})
            }
            _ => {
                return Err(Untranslatable::value(
                    "tool_choice.type",
                    "must be auto, any, tool or none",
                ))
            }
        };
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), false.into());
        }
    }
    Ok(out)
}

/// `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage in Anthropic terms (`input_tokens` excludes cache reads and writes).
pub fn usage_json(u: &Usage) -> Value {
    let read = u.cached_tokens.min(u.prompt_tokens);
    let write = u.cache_write_tokens.min(u.prompt_tokens - read);
    json!({
        "input_tokens": u.prompt_tokens - read - write,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": u.completion_tokens,
    })
}

/// Converts a `chat.completion` (with Lumen's `lumen` object) to a Messages answer.
pub fn response(answer: &Value) -> Value {
    let choice = &answer["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": c["id"],
            "name": c["function"]["name"],
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
        }));
    }
    let usage = Usage::from_openai(&answer["usage"]).unwrap_or_default();
    let mut out = json!({
        "id": answer["id"],
        "type": "message",
        "role": "assistant",
        "model": answer["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": usage_json(&usage),
    });
    if let Some(l) = answer.get("lumen") {
        out["lumen"] = l.clone();
    }
    out
}

/// Anthropic's error `type` for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body both SDKs read: Anthropic's `{"type":"error","error":{"type","message"}}` that
/// also keeps OpenAI's `param` and `code`.
pub fn error_body(status: u16, openai_body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(openai_body).unwrap_or_default();
    let e = &v["error"];
    json!({
        "type": "error",
        "error": {
            "type": error_type(status),
            "message": e["message"].as_str().unwrap_or("request failed"),
            "param": e["param"],
            "code": e["code"],
        },
    })
    .to_string()
    .into_bytes()
}

/// Turns the OpenAI chunk stream into Messages events (`event:` + `data:` framed bytes).
#[derive(Debug, Default)]
pub struct Stream {
    started: bool,
    /// Index and kind of the open content block.
    open: Option<(u64, Open)>,
    next_index: u64,
    stop: Option<&'static str>,
    usage: Option<Usage>,
    lumen: Option<Value>,
    id: String,
    model: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Open {
    Text,
    Tool(u64),
}

fn event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

impl Stream {
    /// A converter.
    pub fn new() -> Self {
        Stream::default()
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = chunk["id"].as_str().unwrap_or("msg_lumen").to_string();
        self.model = chunk["model"].as_str().unwrap_or("").to_string();
        out.extend(event("message_start", &json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}}})));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((i, _)) = self.open.take() {
            out.extend(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            ));
        }
    }

    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) -> u64 {
        if let Some((i, k)) = &self.open {
            if *k == kind {
                return *i;
            }
        }
        self.close(out);
        let i = self.next_index;
        self.next_index += 1;
        out.extend(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": block}),
        ));
        self.open = Some((i, kind));
        i
    }

    /// The bytes for one OpenAI event's data (`[DONE]` ends the message).
    pub fn on_data(&mut self, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if data.trim() == DONE {
            return self.finish();
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if let Some(e) = chunk.get("error") {
            out.extend(event("error", &json!({"type": "error", "error": {"type": "api_error", "message": e["message"].as_str().unwrap_or("the stream failed")}})));
            return out;
        }
        self.start(&chunk, &mut out);
        if let Some(u) = chunk.get("usage").and_then(Usage::from_openai) {
            self.usage = Some(u);
        }
        if let Some(l) = chunk.get("lumen") {
            self.lumen = Some(l.clone());
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let d = &choice["delta"];
            if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
                let i = self.open(Open::Text, json!({"type": "text", "text": ""}), &mut out);
                out.extend(event("content_block_delta", &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t}})));
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let n = tc["index"].as_u64().unwrap_or(0);
                let block = json!({"type": "tool_use", "id": tc["id"].as_str().unwrap_or(""), "name": tc["function"]["name"].as_str().unwrap_or(""), "input": {}});
                let i = self.open(Open::Tool(n), block, &mut out);
                if let Some(a) = tc["function"]["arguments"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                {
                    out.extend(event("content_block_delta", &json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": a}})));
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                self.stop = Some(stop_reason(f));
            }
        }
        out
    }

    /// The end of a complete message: the open block closes, `message_delta` carries the stop
    /// reason and the whole usage (and the `lumen` cost), then `message_stop`.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage_json(&self.usage.unwrap_or_default())});
        if let Some(l) = &self.lumen {
            delta["lumen"] = l.clone();
        }
        out.extend(event("message_delta", &delta));
        out.extend(event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sse::Parser;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn request_becomes_openai() {
        let b = body(json!({
            "model": "claude-3-5-haiku", "max_tokens": 64, "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "stream": true, "stop_sequences": ["X"], "metadata": {"user_id": "u"},
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "t1", "name": "look", "input": {"x": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "cat"}]}, {"type": "text", "text": "so?"}]}
            ]
        }));
        assert_eq!(
            Value::Object(request(&b).unwrap()),
            json!({
                "model": "claude-3-5-haiku", "max_tokens": 64, "stream": true, "stream_options": {"include_usage": true},
                "stop": ["X"], "user": "u", "tool_choice": "required", "parallel_tool_calls": false,
                "tools": [{"type": "function", "function": {"name": "look", "description": "d", "parameters": {"type": "object"}}}],
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
                    {"role": "assistant", "content": "ok", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "look", "arguments": "{\"x\":1}"}}]},
                    {"role": "tool", "tool_call_id": "t1", "content": "cat"},
                    {"role": "user", "content": [{"type": "text", "text": "so?"}]}
                ]
            })
        );
        let e = request(&body(
            json!({"model": "m", "max_tokens": 5, "top_k": 3, "messages": []}),
        ))
        .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("top_k")));
        // `tools` as an object was dropped silently; a tool_result without its id went
        // upstream as "": both are 400s naming the field.
        let e = request(&body(json!({"model": "m", "max_tokens": 5,
            "tools": {"name": "look", "input_schema": {"type": "object"}},
            "messages": [{"role": "user", "content": "hi"}]})))
        .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("tools")));
        let e = request(&body(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "content": "cat"}]}]})))
        .unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some("messages[0].content[0].tool_use_id"))
        );
        let e = request(&body(json!({"model": "m", "messages": []}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn answer_and_usage_in_anthropic_terms() {
        let a = json!({"id": "c1", "model": "gpt", "choices": [{"message": {"content": "hi", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{\"a\":2}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30}}, "lumen": {"cost": 1}});
        assert_eq!(
            response(&a),
            json!({
                "id": "c1", "type": "message", "role": "assistant", "model": "gpt",
                "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 2}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 60, "output_tokens": 7},
                "lumen": {"cost": 1}
            })
        );
        let e: Value = serde_json::from_slice(&error_body(
            429,
            br#"{"error":{"message":"slow down","type":"x","param":null,"code":"rate_limited"}}"#,
        ))
        .unwrap();
        assert_eq!(
            e,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down", "param": null, "code": "rate_limited"}})
        );
    }

    #[test]
    fn stream_becomes_events_with_usage_in_message_delta() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        for d in [
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"Hi "}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}},"lumen":{"cost":2}}"#,
            "[DONE]",
        ] {
            out.extend(s.on_data(d));
        }
        let evs = Parser::default().push(&out);
        let names: Vec<&str> = evs.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let delta: Value = serde_json::from_str(&evs[7].data).unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 3})
        );
        assert_eq!(delta["lumen"], json!({"cost": 2}));
        let start: Value = serde_json::from_str(&evs[4].data).unwrap();
        assert_eq!(
            start["content_block"],
            json!({"type": "tool_use", "id": "t", "name": "f", "input": {}})
        );
    }
}
