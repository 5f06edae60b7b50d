//! The quality-floor cascade (opt-in with `"lumen": {"cascade": true}`): a non-final candidate's
//! answer is checked before it is released, and a failed check escalates to the next candidate.
//! Also the latency record the router's `max_latency_ms` reads.
//!
//! The check is cheap and local: the answer is empty, refused, truncated (`finish_reason` =
//! `length`), or not valid JSON when the request asked for JSON. Streams with the cascade on are
//! requested from the upstream whole (non-stream) for the non-final candidates, checked, and the
//! final answer is then streamed; the delay budget is the cheap model's full answer time.

use lumen_shared::kv::{self, LatencyKey, LatencyRecord};
use lumen_spin::util::now_ms;
use lumen_spin::SpinKv;
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

/// Folds one observed time to headers into the provider+model's latency record. Best effort:
/// a KV failure only leaves the record older.
pub fn record_latency(provider: &str, model: &str, upstream_ms: f64) {
    let Ok(store) = SpinKv::open() else { return };
    let key = LatencyKey { provider, model };
    let prev = kv::load(&store, &key).ok().flatten();
    let _ = kv::store(
        &store,
        &key,
        &LatencyRecord::update(prev, upstream_ms, now_ms()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(content: &str, finish: &str) -> Value {
        json!({"choices":[{"message":{"role":"assistant","content":content},"finish_reason":finish}]})
    }

    #[test]
    fn checks() {
        let plain = Map::new();
        let json_req = json!({"response_format":{"type":"json_object"}});
        let json_req = json_req.as_object().unwrap();
        assert!(check(&answer("Paris.", "stop"), &plain).is_ok());
        assert!(check(&answer("  ", "stop"), &plain).unwrap_err().contains("empty"));
        assert!(check(&answer("I’m sorry, but I can't help", "stop"), &plain)
            .unwrap_err()
            .contains("refused"));
        assert!(check(&answer("Sorry Sorry", "stop"), &plain).is_err());
        assert!(check(&answer("Paris", "length"), &plain)
            .unwrap_err()
            .contains("truncated"));
        assert!(check(&answer("{\"a\":1}", "stop"), json_req).is_ok());
        assert!(check(&answer("tok0 tok1", "stop"), json_req)
            .unwrap_err()
            .contains("JSON"));
        assert!(check(&answer("tok0 tok1", "stop"), &plain).is_ok());
        let r = json!({"choices":[{"message":{"content":null,"refusal":"no"},"finish_reason":"stop"}]});
        assert!(check(&r, &plain).is_err());
        let t = json!({"choices":[{"message":{"content":null,"tool_calls":[{"id":"1"}]},"finish_reason":"tool_calls"}]});
        assert!(check(&t, &plain).is_ok());
        assert!(check(&json!({}), &plain).is_err());
    }
}
