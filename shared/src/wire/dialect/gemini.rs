//! The Google Gemini dialect (`generateContent` / `streamGenerateContent?alt=sse`): OpenAI chat
//! body → `GenerateContentRequest`; answers, usage metadata, safety blocks and stream chunks →
//! OpenAI shapes.
//!
//! Translated: roles (`assistant` → `model`, system/developer → `systemInstruction`), text and
//! data-URL image parts (`inlineData`), `tools` → `functionDeclarations`, assistant `tool_calls`
//! → `functionCall` parts, `tool` messages → `functionResponse` parts (named by the call they
//! answer), `tool_choice` → `toolConfig.functionCallingConfig`, `response_format` json_object /
//! json_schema → `responseMimeType` / `responseJsonSchema`, `n` → `candidateCount`, `seed`,
//! `stop`, penalties, `max_completion_tokens`. Safety blocks (prompt or candidate) →
//! `finish_reason: "content_filter"`. Refused by name: `logprobs`, `parallel_tool_calls: false`,
//! image URLs that are not `data:` URLs, and anything unknown.

use super::{
    chunk, data_url, error_event, max_tokens, only, plain_text, stop_list, Untranslatable, DONE,
};
use crate::wire::openai::Usage;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const SUPPORTED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "n",
];

fn parts(i: usize, content: Option<&Value>) -> Result<Vec<Value>, Untranslatable> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(ps)) => ps
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let at = format!("messages[{i}].content[{j}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        Ok(json!({"text": p.get("text").and_then(Value::as_str).unwrap_or("")}))
                    }
                    Some("image_url") => {
                        let url = p
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        match data_url(url) {
                            Some((media, data)) => {
                                Ok(json!({"inlineData": {"mimeType": media, "data": data}}))
                            }
                            None => Err(Untranslatable::value(
                                format!("{at}.image_url.url"),
                                "must be a data: URL (base64) for this dialect",
                            )),
                        }
                    }
                    _ => Err(Untranslatable::unsupported(format!("{at}.type"))),
                }
            })
            .collect(),
        Some(_) => Err(Untranslatable::value(
            format!("messages[{i}].content"),
            "must be a string or content parts",
        )),
    }
}

/// Converts an OpenAI chat body to a `GenerateContentRequest`.
pub fn request(client: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    only(client, SUPPORTED)?;
    if client.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        return Err(Untranslatable::value(
            "parallel_tool_calls",
            "set to false is not supported",
        ));
    }
    let mut system = Vec::new();
    let mut contents: Vec<(String, Vec<Value>)> = Vec::new();
    // tool_call_id → function name, for functionResponse parts.
    let mut call_names: BTreeMap<String, String> = BTreeMap::new();
    let empty = Vec::new();
    for (i, msg) in client
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, ps) = match role {
            "system" | "developer" => {
                system.push(plain_text(msg.get("content")));
                continue;
            }
            "user" => ("user", parts(i, msg.get("content"))?),
            "assistant" => {
                let mut ps = parts(i, msg.get("content"))?;
                for (j, c) in msg
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        call_names.insert(id.to_string(), name.to_string());
                    }
                    let args = c
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let args: Value =
                        serde_json::from_str(if args.trim().is_empty() { "{}" } else { args })
                            .map_err(|_| {
                                Untranslatable::value(
                                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                    "must be a JSON object to be translated",
                                )
                            })?;
                    ps.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                ("model", ps)
            }
            "tool" => {
                let id = msg
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let name = call_names.get(id).cloned().ok_or_else(|| {
                    Untranslatable::value(
                        format!("messages[{i}].tool_call_id"),
                        "must name a tool call of an earlier assistant message",
                    )
                })?;
                let text = plain_text(msg.get("content"));
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            _ => {
                return Err(Untranslatable::value(
                    format!("messages[{i}].role"),
                    format!("\"{role}\" is not supported"),
                ))
            }
        };
        match contents.last_mut() {
            Some((last, p)) if last == role => p.extend(ps),
            _ => contents.push((role.to_string(), ps)),
        }
    }
    let mut out = Map::new();
    out.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    );
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = client.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(m) = max_tokens(client) {
        config.insert("maxOutputTokens".into(), m.into());
    }
    if let Some(stop) = stop_list(client)? {
        config.insert("stopSequences".into(), stop.into());
    }
    match client.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), "application/json".into());
                let schema = f.pointer("/json_schema/schema").cloned().ok_or_else(|| {
                    Untranslatable::value("response_format.json_schema.schema", "is missing")
                })?;
                config.insert("responseJsonSchema".into(), schema);
            }
            _ => {
                return Err(Untranslatable::value(
                    "response_format.type",
                    "must be text, json_object or json_schema",
                ))
            }
        },
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), config.into());
    }
    if let Some(tools) = client.get("tools").and_then(Value::as_array) {
        let decls: Result<Vec<Value>, _> = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(Untranslatable::unsupported(format!("tools[{i}].type")));
                }
                let f = t.get("function").cloned().unwrap_or_default();
                let mut d = json!({"name": f.get("name").cloned().unwrap_or_default()});
                if let Some(v) = f.get("description") {
                    d["description"] = v.clone();
                }
                if let Some(v) = f.get("parameters") {
                    d["parametersJsonSchema"] = v.clone();
                }
                Ok(d)
            })
            .collect();
        out.insert("tools".into(), json!([{"functionDeclarations": decls?}]));
    }
    let fc = match client.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            other => {
                return Err(Untranslatable::value(
                    "tool_choice",
                    format!("\"{other}\" is not supported"),
                ))
            }
        }),
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            None => return Err(Untranslatable::value("tool_choice", "must name a function")),
        },
    };
    if let Some(fc) = fc {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": fc}));
    }
    Ok(out)
}

/// Gemini `usageMetadata` in OpenAI terms (thoughts are completion tokens priced as reasoning).
pub fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("promptTokenCount"),
        completion_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
        cached_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
        reasoning_tokens: n("thoughtsTokenCount"),
    }
}

/// `finishReason` → `finish_reason` (a stop with function calls is `tool_calls`).
pub fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// (text, tool calls) of a candidate's parts; call ids are `call_{choice}_{n}` from `first`.
fn split_parts(cand: &Value, choice: u64, first: u64) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in cand
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let n = first + calls.len() as u64;
            calls.push(json!({
                "id": fc.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{choice}_{n}"), str::to_string),
                "type": "function",
                "function": {
                    "name": fc.get("name").cloned().unwrap_or_default(),
                    "arguments": fc.get("args").cloned().unwrap_or_else(|| json!({})).to_string(),
                },
            }));
        }
    }
    (text, calls)
}

fn blocked(answer: &Value) -> bool {
    answer.pointer("/promptFeedback/blockReason").is_some()
        && answer
            .get("candidates")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
}

/// Converts a `GenerateContentResponse` to a `chat.completion`.
pub fn response(answer: &Value, created: u64, model: &str) -> Result<Value, String> {
    let mut choices = Vec::new();
    if blocked(answer) {
        choices.push(json!({"index": 0, "message": {"role": "assistant", "content": null, "refusal": null}, "logprobs": null, "finish_reason": "content_filter"}));
    }
    for (i, cand) in answer
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let index = cand
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(i as u64);
        let (text, calls) = split_parts(cand, index, 0);
        let reason = cand
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("STOP");
        let mut message = json!({"role": "assistant", "content": if text.is_empty() && (!calls.is_empty() || reason != "STOP") { Value::Null } else { text.into() }, "refusal": null});
        let called = !calls.is_empty();
        if called {
            message["tool_calls"] = calls.into();
        }
        choices.push(json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish_reason(reason, called)}));
    }
    if choices.is_empty() {
        return Err("the answer has no candidates".into());
    }
    Ok(json!({
        "id": answer.get("responseId").and_then(Value::as_str).map_or_else(|| format!("chatcmpl-gemini-{created}"), |id| id.to_string()),
        "object": "chat.completion",
        "created": created,
        "model": answer.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
        "usage": usage(answer.get("usageMetadata").unwrap_or(&Value::Null)).to_openai(),
    }))
}

/// Converts `streamGenerateContent?alt=sse` chunks into OpenAI chunk data. Gemini sends no end
/// marker: the stream is complete when a finish reason (or a prompt block) was seen before the
/// body ended, and [`Stream::finish`] then adds the usage chunk and `[DONE]`.
#[derive(Debug, Default)]
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    usage: Usage,
    started: std::collections::BTreeSet<u64>,
    tool_calls: BTreeMap<u64, u64>,
    finished: bool,
}

impl Stream {
    /// A converter; `created` stamps the chunks, `model` names them until Gemini does.
    pub fn new(created: u64, model: &str) -> Self {
        Stream {
            id: format!("chatcmpl-gemini-{created}"),
            model: model.to_string(),
            created,
            ..Stream::default()
        }
    }

    fn chunk(&self, index: u64, delta: Value, finish: Option<&str>) -> String {
        chunk(
            &self.id,
            self.created,
            &self.model,
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }

    /// The last usage reported.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The chunks for one event's data.
    pub fn on_event(&mut self, data: &str) -> Vec<String> {
        let Ok(ev) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        if let Some(e) = ev.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream stream failed");
            let code = e
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("upstream_error");
            return vec![error_event(&format!("upstream error: {msg}"), code)];
        }
        if let Some(id) = ev.get("responseId").and_then(Value::as_str) {
            self.id = id.to_string();
        }
        if let Some(m) = ev.get("modelVersion").and_then(Value::as_str) {
            self.model = m.to_string();
        }
        if let Some(u) = ev.get("usageMetadata") {
            self.usage = usage(u);
        }
        let mut out = Vec::new();
        if blocked(&ev) {
            out.push(self.chunk(0, json!({"role": "assistant", "content": ""}), None));
            out.push(self.chunk(0, json!({}), Some("content_filter")));
            self.finished = true;
            return out;
        }
        for (i, cand) in ev
            .get("candidates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = cand
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(i as u64);
            if self.started.insert(index) {
                out.push(self.chunk(index, json!({"role": "assistant", "content": ""}), None));
            }
            let first = self.tool_calls.get(&index).copied().unwrap_or(0);
            let (text, calls) = split_parts(cand, index, first);
            if !text.is_empty() {
                out.push(self.chunk(index, json!({"content": text}), None));
            }
            for (k, mut c) in calls.into_iter().enumerate() {
                c["index"] = (first + k as u64).into();
                self.tool_calls.insert(index, first + k as u64 + 1);
                out.push(self.chunk(index, json!({"tool_calls": [c]}), None));
            }
            if let Some(reason) = cand.get("finishReason").and_then(Value::as_str) {
                let called = self.tool_calls.get(&index).is_some_and(|n| *n > 0);
                out.push(self.chunk(index, json!({}), Some(finish_reason(reason, called))));
                self.finished = true;
            }
        }
        out
    }

    /// The end of the body: the usage chunk and `[DONE]` when the answer finished, else nothing
    /// (the relay then reports the stream as cut).
    pub fn finish(&mut self) -> Vec<String> {
        if !self.finished {
            return Vec::new();
        }
        vec![
            chunk(
                &self.id,
                self.created,
                &self.model,
                json!([]),
                Some(self.usage.to_openai()),
            ),
            DONE.to_string(),
        ]
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
    fn request_translation() {
        let b = body(json!({
            "model": "g", "max_completion_tokens": 50, "seed": 3, "n": 2, "stop": ["x"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
        }));
        assert_eq!(
            Value::Object(request(&b).unwrap()),
            json!({
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "look", "args": {"q": 1}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "look", "response": {"content": "sunny"}}}]}
                ],
                "generationConfig": {"maxOutputTokens": 50, "seed": 3, "candidateCount": 2, "stopSequences": ["x"], "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
                "tools": [{"functionDeclarations": [{"name": "look", "parametersJsonSchema": {"type": "object"}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["look"]}}
            })
        );
        for (extra, param) in [
            (json!({"logprobs": true}), "logprobs"),
            (json!({"parallel_tool_calls": false}), "parallel_tool_calls"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
        ] {
            let mut b =
                body(json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}));
            b.extend(body(extra));
            assert_eq!(request(&b).unwrap_err().param, param);
        }
    }

    #[test]
    fn response_with_function_call_and_usage() {
        let answer: Value = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/gemini/function_call.json"
        ))
        .unwrap();
        let r = response(&answer, 7, "gemini-2.0-flash").unwrap();
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            Usage::from_openai(&r["usage"]).unwrap(),
            Usage {
                prompt_tokens: 120,
                completion_tokens: 25,
                cached_tokens: 64,
                cache_write_tokens: 0,
                reasoning_tokens: 10
            }
        );
    }

    #[test]
    fn safety_block_is_content_filter() {
        let answer: Value = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/gemini/safety_block.json"
        ))
        .unwrap();
        let r = response(&answer, 7, "g").unwrap();
        assert_eq!(r["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(r["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(r["usage"]["prompt_tokens"], 9);
        let mut s = Stream::new(1, "g");
        let mut out = s.on_event(&answer.to_string());
        out.extend(s.finish());
        assert!(out[1].contains("\"content_filter\""));
        assert_eq!(out.last().map(String::as_str), Some(DONE));
    }

    #[test]
    fn stream_chunks_with_tool_call_and_usage() {
        let text = include_str!("../../../../tests/fixtures/gemini/stream.sse");
        let mut s = Stream::new(7, "gemini-2.0-flash");
        let mut out = Vec::new();
        for ev in Parser::default().push(text.as_bytes()) {
            out.extend(s.on_event(&ev.data));
        }
        out.extend(s.finish());
        assert_eq!(out.last().map(String::as_str), Some(DONE));
        let chunks: Vec<Value> = out[..out.len() - 1]
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Checking the weather.");
        let call = chunks
            .iter()
            .find(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
            .unwrap();
        assert_eq!(
            call["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
        assert_eq!(
            Usage::from_openai(&chunks.last().unwrap()["usage"]).unwrap(),
            Usage {
                prompt_tokens: 12,
                completion_tokens: 14,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            }
        );
        // A body that ends before any finish reason is a cut stream: no [DONE].
        let mut s = Stream::new(7, "g");
        s.on_event(
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"a"}]},"index":0}]}"#,
        );
        assert!(s.finish().is_empty());
    }
}
