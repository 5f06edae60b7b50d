//! The quality-floor cascade (opt-in with `"lumen": {"cascade": true}`): a non-final candidate's
//! answer is checked before it is released, and a failed check escalates to the next candidate.
//!
//! The check is cheap and local: the answer is empty, refused, truncated (`finish_reason` =
//! `length`), or not valid JSON when the request asked for JSON. For streams, the check runs
//! before the first byte: non-final candidates are asked for a whole (non-stream) answer, which
//! is checked and, if it passes, released to the client as an SSE stream
//! ([`as_stream_events`]); the last candidate streams live. The delay budget before the first
//! byte is therefore the checked candidates' full answer time (bounded by the upstream's own
//! timeouts), which is why the cascade is opt-in.

use serde_json::{Map, Value};

/// Openings of refusals (lowercase, apostrophes normalised).
const REFUSALS: &[&str] = &[
    "i'm sorry",
    "i am sorry",
    "sorry,",
    "sorry ",
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "as an ai",
];

/// Why an answer fails the check, or `Ok` when it passes. `request` is the client's body.
pub fn check(answer: &Value, request: &Map<String, Value>) -> Result<(), String> {
    let choice = answer
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("the answer has no choices")?;
    let msg = choice.get("message");
    if msg
        .and_then(|m| m.get("refusal"))
        .is_some_and(|r| r.as_str().is_some_and(|s| !s.is_empty()))
    {
        return Err("refused (message.refusal)".into());
    }
    if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
        return Err("truncated (finish_reason length)".into());
    }
    let has_tool_calls = msg
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let text = msg
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    if text.is_empty() {
        return if has_tool_calls {
            Ok(())
        } else {
            Err("empty answer".into())
        };
    }
    let opening = text
        .chars()
        .take(40)
        .collect::<String>()
        .to_lowercase()
        .replace('’', "'");
    if REFUSALS.iter().any(|r| opening.starts_with(r)) {
        return Err("refused".into());
    }
    let wants_json = request
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema");
    if wants_json && serde_json::from_str::<Value>(text).is_err() {
        return Err("invalid JSON for a JSON request".into());
    }
    Ok(())
}

/// The client's body for a checked attempt of a streamed request: asked whole.
pub fn whole_body(body: &Map<String, Value>) -> Map<String, Value> {
    let mut b = body.clone();
    b.remove("stream");
    b.remove("stream_options");
    b
}

/// The `data:` payloads of a stream equivalent to a whole answer: per choice a chunk with the
/// role, content and tool calls, then one with the finish reason; then the usage chunk (if the
/// answer had usage) and `[DONE]`.
pub fn as_stream_events(answer: &Value) -> Vec<String> {
    let mut base = Map::new();
    for k in ["id", "created", "model", "system_fingerprint"] {
        if let Some(v) = answer.get(k) {
            base.insert(k.into(), v.clone());
        }
    }
    base.insert("object".into(), Value::from("chat.completion.chunk"));
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut c = base.clone();
        c.insert("choices".into(), choices);
        if let Some(u) = usage {
            c.insert("usage".into(), u.clone());
        }
        Value::Object(c).to_string()
    };
    let mut out = Vec::new();
    let choices = answer.get("choices").and_then(Value::as_array);
    for (i, ch) in choices.into_iter().flatten().enumerate() {
        let index = ch.get("index").cloned().unwrap_or(Value::from(i));
        let msg = ch.get("message").cloned().unwrap_or_default();
        let mut delta = Map::new();
        delta.insert("role".into(), Value::from("assistant"));
        for k in ["content", "refusal"] {
            if let Some(v) = msg.get(k) {
                delta.insert(k.into(), v.clone());
            }
        }
        if let Some(Value::Array(calls)) = msg.get("tool_calls") {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let mut c = c.clone();
                    if let Some(o) = c.as_object_mut() {
                        o.insert("index".into(), Value::from(j));
                    }
                    c
                })
                .collect();
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(chunk(
            serde_json::json!([{"index": index, "delta": delta, "finish_reason": null}]),
            None,
        ));
        out.push(chunk(
            serde_json::json!([{"index": index, "delta": {}, "finish_reason": ch.get("finish_reason").cloned().unwrap_or(Value::from("stop"))}]),
            None,
        ));
    }
    if let Some(u) = answer.get("usage").filter(|u| !u.is_null()) {
        out.push(chunk(Value::Array(vec![]), Some(u)));
    }
    out.push("[DONE]".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(content: &str, finish: &str) -> Value {
        json!({"choices":[{"message":{"role":"assistant","content":content},"finish_reason":finish}]})
    }

    #[test]
    fn whole_answers_become_equivalent_streams() {
        let a = json!({"id":"c1","object":"chat.completion","created":5,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":2}});
        let evs = as_stream_events(&a);
        assert_eq!(evs.len(), 4);
        let first: Value = serde_json::from_str(&evs[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "c1");
        assert_eq!(first["choices"][0]["delta"]["content"], "hi there");
        let fin: Value = serde_json::from_str(&evs[1]).unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(&evs[2]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_eq!(evs[3], "[DONE]");
        let b = json!({"model":"m","stream":true,"stream_options":{"include_usage":true},"seed":1});
        assert_eq!(
            Value::Object(whole_body(b.as_object().unwrap())),
            json!({"model":"m","seed":1})
        );
    }

    #[test]
    fn checks() {
        let plain = Map::new();
        let json_req = json!({"response_format":{"type":"json_object"}});
        let json_req = json_req.as_object().unwrap();
        assert!(check(&answer("Paris.", "stop"), &plain).is_ok());
        assert!(check(&answer("  ", "stop"), &plain)
            .unwrap_err()
            .contains("empty"));
        assert!(
            check(&answer("I’m sorry, but I can't help", "stop"), &plain)
                .unwrap_err()
                .contains("refused")
        );
        assert!(check(&answer("Sorry Sorry", "stop"), &plain).is_err());
        assert!(check(&answer("Paris", "length"), &plain)
            .unwrap_err()
            .contains("truncated"));
        assert!(check(&answer("{\"a\":1}", "stop"), json_req).is_ok());
        assert!(check(&answer("tok0 tok1", "stop"), json_req)
            .unwrap_err()
            .contains("JSON"));
        assert!(check(&answer("tok0 tok1", "stop"), &plain).is_ok());
        let r =
            json!({"choices":[{"message":{"content":null,"refusal":"no"},"finish_reason":"stop"}]});
        assert!(check(&r, &plain).is_err());
        let t = json!({"choices":[{"message":{"content":null,"tool_calls":[{"id":"1"}]},"finish_reason":"tool_calls"}]});
        assert!(check(&t, &plain).is_ok());
        assert!(check(&json!({}), &plain).is_err());
    }
}
