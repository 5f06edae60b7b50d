//! OpenAI wire types and the validation of `POST /v1/chat/completions` bodies.
//!
//! Validation works on the parsed JSON value, not a typed struct, for two reasons: every error
//! names the exact field and what was wrong with it, and fields Lumen does not know (tools,
//! response_format, seed, ...) survive byte-for-byte to the upstream.

use crate::error::ApiError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Roles accepted in `messages[].role`.
pub const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A validated chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The requested model (catalog id, alias or tier).
    pub model: String,
    /// Whether the client asked for SSE.
    pub stream: bool,
    /// Whether the client asked for a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// The whole body, unknown fields included.
    pub body: Map<String, Value>,
}

/// Token usage as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning ones included.
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (Anthropic `cache_creation_input_tokens`).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Completion tokens spent on reasoning (part of `completion_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Reads the `usage` object of an OpenAI response or chunk.
    pub fn from_openai(usage: &Value) -> Option<Usage> {
        let obj = usage.as_object()?;
        Some(Usage {
            prompt_tokens: obj.get("prompt_tokens")?.as_u64()?,
            completion_tokens: obj
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            cached_tokens: detail(obj, "prompt_tokens_details", "cached_tokens"),
            cache_write_tokens: detail(obj, "prompt_tokens_details", "cache_write_tokens"),
            reasoning_tokens: detail(obj, "completion_tokens_details", "reasoning_tokens"),
        })
    }

    /// The OpenAI `usage` object for these counts (cache writes reported as
    /// `prompt_tokens_details.cache_write_tokens`, a Lumen extension).
    pub fn to_openai(&self) -> Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
            "prompt_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.cache_write_tokens,
            },
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

fn detail(obj: &Map<String, Value>, group: &str, field: &str) -> u64 {
    obj.get(group)
        .and_then(|d| d.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid_request(
        format!(
            "invalid type for '{param}': expected {expected}, but got {}",
            type_name(got)
        ),
        Some(param),
        "invalid_type",
    )
}

fn invalid_value(param: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(param), "invalid_value")
}

/// Parses the JSON text of a request body into an object, naming what is wrong.
pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "request body is empty; send a JSON object with 'model' and 'messages'",
            None,
            "invalid_json",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid_request(
            format!(
                "request body must be a JSON object, but got {}",
                type_name(&other)
            ),
            None,
            "invalid_json",
        )),
        Err(e) => Err(ApiError::invalid_request(
            format!("request body is not valid JSON: {e}"),
            None,
            "invalid_json",
        )),
    }
}

/// Checks the `content-type` of a JSON request body: `application/json` in any case and with any
/// parameters (`; charset=utf-8`), or a structured `application/*+json` type. A request without
/// the header is read as JSON (HTTP lets a sender leave it out, and tools that do mean JSON
/// here); any other type — `curl -d` sends `application/x-www-form-urlencoded` — is a 415 naming
/// the header, with the fix.
pub fn check_json_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let Some(ct) = content_type else {
        return Ok(());
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"));
    if json || essence.is_empty() {
        return Ok(());
    }
    Err(ApiError::unsupported_media_type(format!(
        "the request body must be JSON, but its content-type is {ct:?}; send 'content-type: application/json' (curl: -H 'content-type: application/json')"
    )))
}

fn check_number(
    body: &Map<String, Value>,
    param: &str,
    min: f64,
    max: f64,
) -> Result<(), ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(()),
        Some(v @ Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x >= min && x <= max {
                Ok(())
            } else {
                Err(invalid_value(
                    param,
                    format!("'{param}' must be between {min} and {max}, but got {v}"),
                ))
            }
        }
        Some(v) => Err(wrong_type(param, "a number", v)),
    }
}

/// The most output tokens a request may ask for (`max_tokens`, `max_completion_tokens`): 2^31 − 1,
/// far above any model's output limit, and small enough that token reservations and budget holds
/// (tokens × price) stay exact integers. Larger values are a 400 naming the field.
pub const MAX_OUTPUT_TOKENS: u64 = (1 << 31) - 1;

/// An output-token cap: an integer from 1 to [`MAX_OUTPUT_TOKENS`].
fn check_output_tokens(body: &Map<String, Value>, param: &str) -> Result<(), ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|x| (1..=MAX_OUTPUT_TOKENS).contains(&x)) => {
            Ok(())
        }
        Some(v @ Value::Number(n))
            if n.as_u64().is_some_and(|x| x > MAX_OUTPUT_TOKENS)
                || n
                    .as_f64()
                    .is_some_and(|x| x.fract() == 0.0 && x > MAX_OUTPUT_TOKENS as f64) =>
        {
            Err(invalid_value(
                param,
                format!(
                    "'{param}' must be at most {MAX_OUTPUT_TOKENS}, but got {v}; ask for what the model can produce (or leave it out)"
                ),
            ))
        }
        Some(v @ Value::Number(_)) => Err(invalid_value(
            param,
            format!("'{param}' must be an integer of at least 1, but got {v}"),
        )),
        Some(v) => Err(wrong_type(param, "an integer", v)),
    }
}

fn check_positive_int(body: &Map<String, Value>, param: &str) -> Result<(), ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|x| x >= 1) => Ok(()),
        Some(v @ Value::Number(_)) => Err(invalid_value(
            param,
            format!("'{param}' must be an integer of at least 1, but got {v}"),
        )),
        Some(v) => Err(wrong_type(param, "an integer", v)),
    }
}

fn check_message(i: usize, msg: &Value) -> Result<(), ApiError> {
    let at = format!("messages[{i}]");
    let obj = msg
        .as_object()
        .ok_or_else(|| wrong_type(&at, "a message object", msg))?;
    let role_param = format!("{at}.role");
    let role = match obj.get("role") {
        None => {
            return Err(ApiError::invalid_request(
                format!("missing required parameter: '{role_param}'"),
                Some(&role_param),
                "missing_required_parameter",
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(wrong_type(&role_param, "a string", v)),
    };
    if !ROLES.contains(&role) {
        return Err(invalid_value(
            &role_param,
            format!(
                "invalid value for '{role_param}': \"{role}\"; expected one of {}",
                ROLES.join(", ")
            ),
        ));
    }
    if role == "tool" {
        let id_param = format!("{at}.tool_call_id");
        match obj.get("tool_call_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_request(
                    format!("missing required parameter: '{id_param}'; a tool message answers the assistant's tool call with that call's id"),
                    Some(&id_param),
                    "missing_required_parameter",
                ))
            }
            Some(Value::String(_)) => {
                return Err(invalid_value(&id_param, format!("'{id_param}' must not be empty")))
            }
            Some(v) => return Err(wrong_type(&id_param, "a string", v)),
        }
    }
    let content_param = format!("{at}.content");
    match obj.get("content") {
        Some(Value::String(_)) | Some(Value::Array(_)) => Ok(()),
        Some(Value::Null) | None if role == "assistant" => Ok(()),
        None => Err(ApiError::invalid_request(
            format!("missing required parameter: '{content_param}'"),
            Some(&content_param),
            "missing_required_parameter",
        )),
        Some(v) => Err(wrong_type(
            &content_param,
            "a string or an array of content parts",
            v,
        )),
    }
}

/// Validates a chat completion body. Errors are 400s that name the field.
pub fn parse_chat_request(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let body = parse_json_object(bytes)?;
    let model = match body.get("model") {
        None => {
            return Err(ApiError::invalid_request(
                "missing required parameter: 'model'; name a model from GET /v1/models",
                Some("model"),
                "missing_required_parameter",
            ))
        }
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(invalid_value("model", "'model' must not be empty".into()))
        }
        Some(v) => return Err(wrong_type("model", "a string", v)),
    };
    match body.get("messages") {
        None => {
            return Err(ApiError::invalid_request(
                "missing required parameter: 'messages'",
                Some("messages"),
                "missing_required_parameter",
            ))
        }
        Some(Value::Array(msgs)) if msgs.is_empty() => {
            return Err(invalid_value(
                "messages",
                "'messages' must contain at least one message".into(),
            ))
        }
        Some(Value::Array(msgs)) => {
            for (i, m) in msgs.iter().enumerate() {
                check_message(i, m)?;
            }
        }
        Some(v) => return Err(wrong_type("messages", "an array of message objects", v)),
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong_type("stream", "a boolean", v)),
    };
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(invalid_value(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true".into(),
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(wrong_type("stream_options.include_usage", "a boolean", v)),
            }
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    check_number(&body, "temperature", 0.0, 2.0)?;
    check_number(&body, "top_p", 0.0, 1.0)?;
    check_number(&body, "frequency_penalty", -2.0, 2.0)?;
    check_number(&body, "presence_penalty", -2.0, 2.0)?;
    check_output_tokens(&body, "max_tokens")?;
    check_output_tokens(&body, "max_completion_tokens")?;
    check_positive_int(&body, "n")?;
    // Routing fields (provider, brand_pref, max_price, ...) are checked here, used by the router
    // and removed before the body goes upstream.
    crate::domain::route::Prefs::from_body(&body)?;
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        body,
    })
}

/// A rough prompt size in tokens (4 characters a token) used where the upstream's count is not
/// known, e.g. when a client abandons a stream before the final usage chunk.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    fn text_len(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(parts) => parts
                .iter()
                .map(|p| p.get("text").map_or(0, text_len))
                .sum(),
            _ => 0,
        }
    }
    let msgs = body.get("messages").and_then(Value::as_array);
    msgs.map_or(0, |m| {
        m.iter()
            .map(|msg| 3 + (msg.get("content").map_or(0, text_len) as u64).div_ceil(4))
            .sum::<u64>()
            + 3
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_chat_request(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn accepts_minimal_and_keeps_unknown_fields() {
        let r = parse_chat_request(br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"seed":7,"tools":[]}"#).unwrap();
        assert_eq!(r.model, "gpt-4o-mini");
        assert!(!r.stream);
        assert_eq!(r.body["seed"], 7);
        assert!(r.body.contains_key("tools"));
    }

    #[test]
    fn stream_options() {
        let r = parse_chat_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(r.stream && r.include_usage);
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#).param.as_deref(), Some("stream_options"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("{", "", "request body is not valid JSON"),
            (
                "[1]",
                "",
                "request body must be a JSON object, but got an array",
            ),
            (
                r#"{"messages":[]}"#,
                "model",
                "missing required parameter: 'model'",
            ),
            (
                r#"{"model":5,"messages":[]}"#,
                "model",
                "invalid type for 'model': expected a string, but got a number",
            ),
            (
                r#"{"model":"m"}"#,
                "messages",
                "missing required parameter: 'messages'",
            ),
            (
                r#"{"model":"m","messages":"hi"}"#,
                "messages",
                "invalid type for 'messages'",
            ),
            (
                r#"{"model":"m","messages":[]}"#,
                "messages",
                "at least one message",
            ),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                "messages[0].role",
                "missing required parameter",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
                "\"robot\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
                "got a number",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
                "expected a boolean",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
                "between 0 and 2",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
                "at least 1",
            ),
        ];
        for (body, param, needle) in cases {
            let e = err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref().unwrap_or(""), *param, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    /// D2/D3: output-token caps beyond 2^31 − 1 (and every boundary up to 2^64 − 1 and past
    /// it) are a 400 naming the field, so no reservation or hold ever sees them.
    #[test]
    fn output_token_caps_are_bounded() {
        let body = |field: &str, n: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"{field}":{n}}}"#)
        };
        for field in ["max_tokens", "max_completion_tokens"] {
            for ok in ["1", "4096", "2147483647"] {
                assert!(
                    parse_chat_request(body(field, ok).as_bytes()).is_ok(),
                    "{field}={ok}"
                );
            }
            for big in [
                "2147483648",
                "9007199254740992",
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709551615",
                "18446744073709551616",
                "1e300",
            ] {
                let e = err(&body(field, big));
                assert_eq!((e.status, e.param.as_deref()), (400, Some(field)), "{big}");
                assert!(
                    e.message.contains("at most 2147483647"),
                    "{big}: {}",
                    e.message
                );
            }
            for bad in ["0", "-1", "1.5", "0.5"] {
                let e = err(&body(field, bad));
                assert_eq!(e.param.as_deref(), Some(field), "{bad}");
            }
            assert_eq!(
                err(&body(field, "\"9\"")).code.as_deref(),
                Some("invalid_type")
            );
        }
    }

    #[test]
    fn a_tool_message_needs_its_call_id() {
        let with = |m: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}},{m}]}}"#)
        };
        parse_chat_request(
            with(r#"{"role":"tool","tool_call_id":"c1","content":"ok"}"#).as_bytes(),
        )
        .unwrap();
        for (m, code) in [
            (
                r#"{"role":"tool","content":"ok"}"#,
                "missing_required_parameter",
            ),
            (
                r#"{"role":"tool","tool_call_id":"","content":"ok"}"#,
                "invalid_value",
            ),
            (
                r#"{"role":"tool","tool_call_id":7,"content":"ok"}"#,
                "invalid_type",
            ),
        ] {
            let e = err(&with(m));
            assert_eq!(e.param.as_deref(), Some("messages[1].tool_call_id"), "{m}");
            assert_eq!(e.code.as_deref(), Some(code), "{m}");
        }
    }

    #[test]
    fn json_bodies_need_a_json_content_type_or_none() {
        for ok in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/vnd.api+json"),
            Some(""),
        ] {
            assert!(check_json_content_type(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data; boundary=x",
        ] {
            let e = check_json_content_type(Some(bad)).unwrap_err();
            assert_eq!(e.status, 415, "{bad}");
            assert_eq!(e.param.as_deref(), Some("content-type"));
            assert!(e.message.contains("application/json"), "{}", e.message);
        }
    }

    #[test]
    fn assistant_may_omit_content() {
        parse_chat_request(br#"{"model":"m","messages":[{"role":"assistant","tool_calls":[]},{"role":"user","content":"x"}]}"#).unwrap();
    }

    #[test]
    fn usage_reads_cached_tokens() {
        let u = Usage::from_openai(&serde_json::json!({"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":4}})).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 3,
                cached_tokens: 4,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn estimate_counts_text_parts() {
        let m = parse_json_object(br#"{"messages":[{"role":"user","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"}]}]}"#).unwrap();
        assert_eq!(estimate_prompt_tokens(&m), 3 + 2 + 3 + 1 + 3);
    }
}
