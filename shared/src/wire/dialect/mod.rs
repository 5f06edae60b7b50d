//! Wire dialects: one adapter per dialect (not per vendor) turns the client's OpenAI chat body
//! into the upstream's request, and the upstream's answer, errors and stream events back into
//! OpenAI's shapes. Vendor quirks (Azure deployment URLs, `api-key` header, `api-version`) are
//! catalog data on the [`ProviderTarget`].
//!
//! How each dialect reports usage, normalised to [`crate::wire::openai::Usage`]:
//!
//! | dialect   | prompt_tokens                                                    | cached_tokens             | cache_write_tokens            | completion_tokens                         | reasoning_tokens                       |
//! |-----------|------------------------------------------------------------------|---------------------------|-------------------------------|-------------------------------------------|----------------------------------------|
//! | openai    | `prompt_tokens`                                                  | `prompt_tokens_details.cached_tokens` | —                  | `completion_tokens`                       | `completion_tokens_details.reasoning_tokens` |
//! | anthropic | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` | `cache_read_input_tokens` | `cache_creation_input_tokens` | `output_tokens` (last `message_delta` in streams) | —                                 |
//! | gemini    | `promptTokenCount`                                               | `cachedContentTokenCount` | —                             | `candidatesTokenCount + thoughtsTokenCount` | `thoughtsTokenCount`                 |

pub mod anthropic;
pub mod gemini;
pub mod messages;
pub mod openai_compat;
pub mod queue;
pub mod spin_llm;

use crate::contracts::ProviderTarget;
use crate::domain::catalog::Dialect;
use crate::error::ApiError;
use serde_json::{json, Map, Value};

/// A request ready to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    /// Full URL.
    pub url: String,
    /// Headers besides `content-type: application/json`.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Map<String, Value>,
}

/// Builds the upstream request for one candidate. `base` is the provider's base URL without a
/// trailing `/`; `key` may be empty (no key header). A parameter the dialect cannot honour is a
/// 400 naming it, marked retryable so the plan's next candidate may serve it.
pub fn build(
    p: &ProviderTarget,
    base: &str,
    key: &str,
    client: &Map<String, Value>,
    upstream_model: &str,
    stream: bool,
) -> Result<UpstreamRequest, ApiError> {
    let key = key.trim();
    let mut headers = Vec::new();
    let mut key_header = |default: &str, bearer: bool| {
        if key.is_empty() {
            return;
        }
        match &p.auth_header {
            Some(h) => headers.push((h.to_ascii_lowercase(), key.to_string())),
            None if bearer => headers.push((default.to_string(), format!("Bearer {key}"))),
            None => headers.push((default.to_string(), key.to_string())),
        }
    };
    match p.dialect {
        Dialect::Openai => {
            key_header("authorization", true);
            let url = if p.deployment_path {
                format!("{base}/openai/deployments/{upstream_model}/chat/completions")
            } else {
                format!("{base}/chat/completions")
            };
            let url = match &p.api_version {
                Some(v) => format!("{url}?api-version={v}"),
                None => url,
            };
            Ok(UpstreamRequest {
                url,
                headers,
                body: openai_compat::request(client, upstream_model),
            })
        }
        Dialect::Anthropic => {
            key_header("x-api-key", false);
            headers.push((
                "anthropic-version".into(),
                p.api_version
                    .clone()
                    .unwrap_or_else(|| anthropic::DEFAULT_VERSION.into()),
            ));
            let body = anthropic::request(client, upstream_model, stream)
                .map_err(|e| unsupported(e, p))?;
            Ok(UpstreamRequest {
                url: format!("{base}/messages"),
                headers,
                body,
            })
        }
        Dialect::Gemini => {
            key_header("x-goog-api-key", false);
            let body = gemini::request(client).map_err(|e| unsupported(e, p))?;
            let url = if stream {
                format!("{base}/models/{upstream_model}:streamGenerateContent?alt=sse")
            } else {
                format!("{base}/models/{upstream_model}:generateContent")
            };
            Ok(UpstreamRequest { url, headers, body })
        }
        Dialect::SpinLlm => Err(ApiError::internal(
            "spin-llm providers are called through Spin's LLM interface, not HTTP",
        )),
        Dialect::Queue => {
            key_header("authorization", true);
            Ok(UpstreamRequest {
                url: format!("{base}/run"),
                headers,
                body: queue::submit_body(client, upstream_model),
            })
        }
    }
}

/// Builds an embeddings request. Only the OpenAI dialect has one; the upstream is always asked
/// for floats (the provider encodes base64 itself, see [`openai_compat::embeddings_answer`]).
pub fn build_embeddings(
    p: &ProviderTarget,
    base: &str,
    key: &str,
    client: &Map<String, Value>,
    upstream_model: &str,
) -> Result<UpstreamRequest, ApiError> {
    if p.dialect != Dialect::Openai {
        let mut e = ApiError::invalid_request(
            format!(
                "provider \"{}\" ({} dialect) has no embeddings endpoint; choose an embeddings model from GET /v1/models",
                p.name,
                p.dialect.as_str()
            ),
            Some("model"),
            "unsupported_endpoint",
        );
        e.retryable = true;
        return Err(e);
    }
    let mut r = build(p, base, key, &Map::new(), upstream_model, false)?;
    r.url = r.url.replacen("/chat/completions", "/embeddings", 1);
    let mut body = client.clone();
    body.insert("model".into(), upstream_model.into());
    body.insert("encoding_format".into(), "float".into());
    r.body = body;
    Ok(r)
}

/// Why a request could not be translated: the parameter and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Untranslatable {
    /// The client's parameter path, e.g. `logprobs` or `messages[2].content[0].type`.
    pub param: String,
    /// What cannot be done.
    pub why: String,
}

impl Untranslatable {
    /// A parameter the dialect has no equivalent for.
    pub fn unsupported(param: impl Into<String>) -> Self {
        Untranslatable {
            param: param.into(),
            why: "is not supported".into(),
        }
    }

    /// A parameter whose value cannot be honoured.
    pub fn value(param: impl Into<String>, why: impl Into<String>) -> Self {
        Untranslatable {
            param: param.into(),
            why: why.into(),
        }
    }
}

/// A translation refusal as the client sees it: a 400 naming the parameter, retryable so the
/// plan's next candidate may serve it.
pub fn unsupported(e: Untranslatable, p: &ProviderTarget) -> ApiError {
    let mut err = ApiError::invalid_request(
        format!(
            "parameter '{}' {} by provider \"{}\" ({} dialect); remove it or choose another model",
            e.param,
            e.why,
            p.name,
            p.dialect.as_str()
        ),
        Some(&e.param),
        "unsupported_parameter",
    );
    err.retryable = true;
    err
}

/// Rejects every non-null top-level parameter outside `supported` (never a silent drop).
pub(crate) fn only(body: &Map<String, Value>, supported: &[&str]) -> Result<(), Untranslatable> {
    for (k, v) in body {
        if !v.is_null() && !supported.contains(&k.as_str()) && k != "lumen" {
            return Err(Untranslatable::unsupported(k.clone()));
        }
    }
    Ok(())
}

/// `max_completion_tokens`, else `max_tokens`.
pub(crate) fn max_tokens(body: &Map<String, Value>) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
}

/// `stop` as a list of strings.
pub(crate) fn stop_list(body: &Map<String, Value>) -> Result<Option<Vec<Value>>, Untranslatable> {
    match body.get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(s @ Value::String(_)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(a.clone())),
        Some(_) => Err(Untranslatable::value(
            "stop",
            "must be a string or an array of strings to be translated",
        )),
    }
}

/// The text of an OpenAI message `content` (a string or text parts); `None` for other parts.
pub(crate) fn plain_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Splits a `data:` URL into (media type, base64 data).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// One `chat.completion.chunk` as JSON text.
pub(crate) fn chunk(
    id: &str,
    created: u64,
    model: &str,
    choices: Value,
    usage: Option<Value>,
) -> String {
    let mut c = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        c["usage"] = u;
    }
    c.to_string()
}

/// An OpenAI-shaped error event for a stream (the relay then reports the stream as cut).
pub(crate) fn error_event(message: &str, code: &str) -> String {
    json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": code}})
        .to_string()
}

/// The data of the `[DONE]` event.
pub const DONE: &str = "[DONE]";

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dialect: Dialect) -> ProviderTarget {
        ProviderTarget {
            name: "p".into(),
            dialect,
            base_url_variable: "p_base_url".into(),
            api_key_variable: "p_api_key".into(),
            auth_header: None,
            api_version: None,
            deployment_path: false,
            cold_start: false,
            first_token_timeout_ms: None,
        }
    }

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn urls_and_key_headers_per_dialect() {
        let b = body(json!({"model":"x","messages":[{"role":"user","content":"hi"}]}));
        let r = build(
            &target(Dialect::Openai),
            "https://api.openai.com/v1",
            "sk",
            &b,
            "gpt",
            false,
        )
        .unwrap();
        assert_eq!(r.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(
            r.headers,
            vec![("authorization".into(), "Bearer sk".into())]
        );
        assert_eq!(r.body["model"], "gpt");

        let mut azure = target(Dialect::Openai);
        azure.auth_header = Some("api-key".into());
        azure.api_version = Some("2024-10-21".into());
        azure.deployment_path = true;
        let r = build(
            &azure,
            "https://res.openai.azure.com",
            "k",
            &b,
            "my-dep",
            false,
        )
        .unwrap();
        assert_eq!(
            r.url,
            "https://res.openai.azure.com/openai/deployments/my-dep/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(r.headers, vec![("api-key".into(), "k".into())]);

        let r = build(
            &target(Dialect::Anthropic),
            "https://api.anthropic.com/v1",
            "ak",
            &b,
            "claude",
            true,
        )
        .unwrap();
        assert_eq!(r.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(
            r.headers,
            vec![
                ("x-api-key".into(), "ak".into()),
                ("anthropic-version".into(), "2023-06-01".into())
            ]
        );
        let g = target(Dialect::Gemini);
        let base = "https://generativelanguage.googleapis.com/v1beta";
        let r = build(&g, base, "gk", &b, "gemini-2.0-flash", true).unwrap();
        assert_eq!(
            r.url,
            format!("{base}/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
        );
        assert_eq!(r.headers, vec![("x-goog-api-key".into(), "gk".into())]);
        let r = build(&g, base, "", &b, "gemini-2.0-flash", false).unwrap();
        assert_eq!(
            r.url,
            format!("{base}/models/gemini-2.0-flash:generateContent")
        );
        assert!(r.headers.is_empty(), "an empty key sends no header");
    }

    #[test]
    fn unsupported_parameters_are_400s_naming_them() {
        let b =
            body(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"logprobs":true}));
        let e = build(&target(Dialect::Anthropic), "http://h", "", &b, "c", false).unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref(), e.code.as_deref()),
            (400, Some("logprobs"), Some("unsupported_parameter"))
        );
        assert_eq!(e.message, "parameter 'logprobs' is not supported by provider \"p\" (anthropic dialect); remove it or choose another model");
        assert!(e.retryable, "the next candidate may honour it");
        // Null means absent; the OpenAI dialect passes everything through.
        let b =
            body(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"logprobs":null}));
        assert!(build(&target(Dialect::Anthropic), "http://h", "", &b, "c", false).is_ok());
        let b = body(
            json!({"model":"x","messages":[{"role":"user","content":"hi"}],"logprobs":true,"x_future":1}),
        );
        assert!(build(&target(Dialect::Openai), "http://h", "", &b, "c", false).is_ok());
    }
}

/// Golden costs: each dialect's own usage shape, normalised, priced. The numbers are worked out by
/// hand in the comments, so a change to normalisation or pricing shows here.
#[cfg(test)]
mod golden {
    use super::{anthropic, gemini};
    use crate::domain::catalog::Price;
    use crate::domain::pricing::cost_nanos;
    use crate::wire::openai::Usage;
    use serde_json::json;

    fn price(
        input: f64,
        output: f64,
        cached: f64,
        write: Option<f64>,
        reasoning: Option<f64>,
    ) -> Price {
        Price {
            input,
            output,
            cached_input: Some(cached),
            cache_write: write,
            reasoning,
            source: "s".into(),
            as_of: "d".into(),
        }
    }

    #[test]
    fn openai_usage_with_cached_and_reasoning_tokens() {
        let u = Usage::from_openai(&json!({"prompt_tokens": 2000, "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 1500}, "completion_tokens_details": {"reasoning_tokens": 300}})).unwrap();
        // o-series-like prices: 1.10 in, 4.40 out, 0.275 cached, reasoning at output.
        // 500 × 1.10 + 1500 × 0.275 + 500 × 4.40 = 550 + 412.5 + 2200 = 3162.5 → 3_162_500 n$.
        assert_eq!(
            cost_nanos(&u, &price(1.10, 4.40, 0.275, None, None)),
            3_162_500
        );
    }

    #[test]
    fn anthropic_usage_with_cache_read_and_write() {
        let u = anthropic::usage(
            &json!({"input_tokens": 21, "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 1800, "output_tokens": 57}),
        );
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens),
            (2021, 1800, 200)
        );
        // Sonnet: 21 × 3 + 1800 × 0.30 + 200 × 3.75 + 57 × 15 = 63 + 540 + 750 + 855 = 2208 µ$.
        assert_eq!(
            cost_nanos(&u, &price(3.0, 15.0, 0.30, Some(3.75), None)),
            2_208_000
        );
        // Haiku 3.5: 21 × 0.8 + 1800 × 0.08 + 200 × 1 + 57 × 4 = 16.8 + 144 + 200 + 228 = 588.8 µ$.
        assert_eq!(
            cost_nanos(&u, &price(0.8, 4.0, 0.08, Some(1.0), None)),
            588_800
        );
    }

    #[test]
    fn gemini_usage_with_cached_content_and_thoughts() {
        let u = gemini::usage(&json!({"promptTokenCount": 120, "candidatesTokenCount": 15,
            "totalTokenCount": 145, "cachedContentTokenCount": 64, "thoughtsTokenCount": 10}));
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (120, 25, 64, 10)
        );
        // 2.5 Flash: 56 × 0.30 + 64 × 0.075 + 15 × 2.50 + 10 × 3.50 (reasoning priced apart here)
        // = 16.8 + 4.8 + 37.5 + 35 = 94.1 µ$.
        assert_eq!(
            cost_nanos(&u, &price(0.30, 2.50, 0.075, None, Some(3.50))),
            94_100
        );
    }
}
