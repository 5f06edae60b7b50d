//! Upstream failures and usage as pure functions: the classification of upstream failures (in
//! any dialect: each puts its message at `error.message`) into [`ApiError`]s (which ones fall back to the next candidate, what the
//! client is told, never an upstream body or key for credential errors).

use lumen_shared::contracts::ProviderTarget;
use lumen_shared::domain::retry::FailureClass;
use lumen_shared::wire::openai::Usage;
use lumen_shared::ApiError;
use lumen_spin::util::parse_retry_after;
use serde_json::Value;
use spin_sdk::http::{ErrorCode, SendError};

/// The Spin variable that lists the provider's host in `allowed_outbound_hosts`.
pub fn allowed_host_variable(p: &ProviderTarget) -> String {
    match p.base_url_variable.strip_suffix("_base_url") {
        Some(prefix) => format!("{prefix}_allowed_host"),
        None => format!("{}_allowed_host", p.name),
    }
}

/// Whether the body of a failed upstream answer is read (for the upstream's message).
pub fn wants_error_body(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 429)
}

fn upstream_error_field<'a>(body: Option<&'a Value>, field: &str) -> Option<&'a str> {
    body?
        .get("error")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Classifies a non-2xx upstream answer. `retryable` errors fall back to the next candidate.
pub fn status_error(
    p: &ProviderTarget,
    status: u16,
    body: Option<&[u8]>,
    retry_after: Option<&str>,
) -> ApiError {
    let name = &p.name;
    match status {
        401 | 403 => ApiError::upstream(
            502,
            format!(
                "provider \"{name}\" rejected Lumen's credentials; check the {} variable",
                p.api_key_variable
            ),
            true,
        ),
        408 => ApiError::upstream(
            502,
            format!("provider \"{name}\" timed out (HTTP 408)"),
            true,
        ),
        429 => {
            let mut e = ApiError::upstream(
                429,
                format!("provider \"{name}\" is rate limiting Lumen (HTTP 429); retry later"),
                true,
            );
            e.retry_after = retry_after.and_then(parse_retry_after);
            e
        }
        400..=499 => {
            let parsed: Option<Value> = body.and_then(|b| serde_json::from_slice(b).ok());
            let msg = upstream_error_field(parsed.as_ref(), "message")
                .map_or_else(|| format!("HTTP {status}"), str::to_string);
            let mut e =
                ApiError::upstream(400, format!("upstream rejected the request: {msg}"), false);
            e.param = upstream_error_field(parsed.as_ref(), "param").map(str::to_string);
            if let Some(code) = upstream_error_field(parsed.as_ref(), "code") {
                e.code = Some(code.to_string());
            }
            e
        }
        500..=599 => ApiError::upstream(
            502,
            format!("provider \"{name}\" failed with HTTP {status}"),
            true,
        ),
        _ => ApiError::upstream(
            502,
            format!("provider \"{name}\" answered with unexpected HTTP {status}"),
            false,
        ),
    }
}

fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::ConnectionRefused => "connection refused".into(),
        ErrorCode::ConnectionTimeout => "connection timed out".into(),
        ErrorCode::ConnectionReadTimeout => "timed out waiting for the response".into(),
        ErrorCode::ConnectionTerminated => "connection closed before a response".into(),
        ErrorCode::ConnectionLimitReached => "connection limit reached".into(),
        ErrorCode::DestinationNotFound => "destination not found".into(),
        ErrorCode::DestinationUnavailable => "destination unavailable".into(),
        ErrorCode::DestinationIpUnroutable => "destination IP unroutable".into(),
        ErrorCode::DestinationIpProhibited => "destination IP prohibited".into(),
        ErrorCode::DnsTimeout => "DNS lookup timed out".into(),
        ErrorCode::DnsError(_) => "DNS lookup failed".into(),
        ErrorCode::TlsProtocolError => "TLS protocol error".into(),
        ErrorCode::TlsCertificateError => "TLS certificate error".into(),
        ErrorCode::InternalError(Some(m)) => m.clone(),
        other => format!("{other:?}"),
    }
}

fn is_denied(e: &SendError) -> bool {
    match e {
        SendError::Http(ErrorCode::HttpRequestDenied) => true,
        SendError::Http(other) => {
            let text = format!("{other:?}").to_ascii_lowercase();
            text.contains("denied") || text.contains("not allowed")
        }
        _ => false,
    }
}

/// Classifies a failure to send the request at all (all retryable: the next candidate may be
/// reachable).
pub fn send_error(p: &ProviderTarget, origin: &str, e: &SendError) -> ApiError {
    if is_denied(e) {
        return ApiError::upstream(
            502,
            format!(
                "outbound request to {origin} was denied by spin.toml allowed_outbound_hosts; set the {} variable to the origin of {}",
                allowed_host_variable(p),
                p.base_url_variable
            ),
            true,
        );
    }
    let why = match e {
        SendError::Http(code) => describe(code),
        SendError::RequestConversion(err) => format!(
            "invalid request URL ({err}); check the {} variable",
            p.base_url_variable
        ),
        other => other.to_string(),
    };
    ApiError::upstream(
        502,
        format!("could not reach provider \"{}\" at {origin}: {why}", p.name),
        true,
    )
}

/// The failure class of a refused or failed send: a host the manifest does not allow, or a URL
/// that is not one, is misconfiguration (no retry on this route); anything else a connection
/// failure.
pub fn send_class(e: &SendError) -> FailureClass {
    if is_denied(e) || matches!(e, SendError::RequestConversion(_)) {
        FailureClass::Misconfigured
    } else {
        FailureClass::Connect
    }
}

/// The failure class of a non-2xx upstream answer classified by [`status_error`].
pub fn status_class(status: u16, e: &ApiError) -> FailureClass {
    match status {
        401 | 403 => FailureClass::Misconfigured,
        408 | 500..=599 => FailureClass::Server,
        429 => FailureClass::RateLimited,
        _ => class_of(e),
    }
}

/// The failure class of an error made without one at hand: Lumen's own translation refusals
/// (`unsupported_parameter`), context-length errors, 429s; otherwise a retryable error is the
/// server's and the rest the request's.
pub fn class_of(e: &ApiError) -> FailureClass {
    match e.code.as_deref() {
        Some("unsupported_parameter") if e.retryable => FailureClass::Unsupported,
        Some("context_length_exceeded") => FailureClass::ContextLength,
        _ if e.status == 429 => FailureClass::RateLimited,
        _ if e.retryable => FailureClass::Server,
        _ => FailureClass::Request,
    }
}

/// A rough completion size when a non-streamed answer carries no `usage` (4 characters a token).
pub fn estimate_completion_tokens(answer: &Value) -> u64 {
    let chars: usize = answer
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, |cs| {
            cs.iter()
                .filter_map(|c| c.get("message")?.get("content")?.as_str())
                .map(|s| s.chars().count())
                .sum()
        });
    (chars as u64).div_ceil(4)
}

/// Usage of a non-streamed answer, or an estimate (`true`) when the upstream reported none.
pub fn answer_usage(answer: &Value, prompt_estimate: u64) -> (Usage, bool) {
    match answer.get("usage").and_then(Usage::from_openai) {
        Some(u) => (u, false),
        None => (
            Usage {
                prompt_tokens: prompt_estimate,
                completion_tokens: estimate_completion_tokens(answer),
                cached_tokens: 0,
                ..Usage::default()
            },
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_shared::domain::catalog::Dialect;
    use serde_json::json;

    fn openai() -> ProviderTarget {
        ProviderTarget {
            name: "openai".into(),
            dialect: Dialect::Openai,
            base_url_variable: "openai_base_url".into(),
            api_key_variable: "openai_api_key".into(),
            auth_header: None,
            api_version: None,
            deployment_path: false,
            cold_start: false,
            first_token_timeout_ms: None,
        }
    }

    #[test]
    fn statuses_are_classified() {
        let p = openai();
        let e = status_error(
            &p,
            401,
            Some(b"{\"error\":{\"message\":\"sk-secret is wrong\"}}"),
            None,
        );
        assert_eq!((e.status, e.retryable), (502, true));
        assert_eq!(
            e.message,
            "provider \"openai\" rejected Lumen's credentials; check the openai_api_key variable"
        );
        let e = status_error(&p, 404, Some(br#"{"error":{"message":"The model `x` does not exist","param":"model","code":"model_not_found"}}"#), None);
        assert_eq!(
            (e.status, e.retryable, e.param.as_deref(), e.code.as_deref()),
            (400, false, Some("model"), Some("model_not_found"))
        );
        assert_eq!(
            e.message,
            "upstream rejected the request: The model `x` does not exist"
        );
        let e = status_error(&p, 422, Some(b"not json"), None);
        assert_eq!(e.message, "upstream rejected the request: HTTP 422");
        let e = status_error(&p, 429, None, Some("7"));
        assert_eq!((e.status, e.retryable, e.retry_after), (429, true, Some(7)));
        let e = status_error(&p, 503, None, None);
        assert_eq!((e.status, e.retryable), (502, true));
        assert_eq!(status_error(&p, 408, None, None).status, 502);
        assert!(!status_error(&p, 302, None, None).retryable);
        assert!(
            wants_error_body(400)
                && wants_error_body(422)
                && !wants_error_body(401)
                && !wants_error_body(429)
                && !wants_error_body(500)
        );
    }

    #[test]
    fn failures_are_classed_for_retries() {
        let p = openai();
        let class = |status: u16, body: &[u8]| {
            status_class(status, &status_error(&p, status, Some(body), None))
        };
        assert_eq!(class(503, b""), FailureClass::Server);
        assert_eq!(class(408, b""), FailureClass::Server);
        assert_eq!(class(429, b""), FailureClass::RateLimited);
        assert_eq!(class(401, b""), FailureClass::Misconfigured);
        assert_eq!(
            class(
                400,
                br#"{"error":{"message":"m","code":"unsupported_parameter"}}"#
            ),
            FailureClass::Request
        );
        assert_eq!(
            class(
                400,
                br#"{"error":{"message":"m","code":"context_length_exceeded"}}"#
            ),
            FailureClass::ContextLength
        );
        assert_eq!(class(400, b""), FailureClass::Request);
        assert_eq!(
            send_class(&SendError::Http(ErrorCode::HttpRequestDenied)),
            FailureClass::Misconfigured
        );
        assert_eq!(
            send_class(&SendError::Http(ErrorCode::ConnectionRefused)),
            FailureClass::Connect
        );
        let mut e = ApiError::invalid_request("m", Some("logprobs"), "unsupported_parameter");
        e.retryable = true;
        assert_eq!(class_of(&e), FailureClass::Unsupported);
    }

    #[test]
    fn send_errors_name_the_fix() {
        let p = openai();
        let e = send_error(
            &p,
            "http://127.0.0.1:9000",
            &SendError::Http(ErrorCode::HttpRequestDenied),
        );
        assert_eq!(e.status, 502);
        assert_eq!(
            e.message,
            "outbound request to http://127.0.0.1:9000 was denied by spin.toml allowed_outbound_hosts; set the openai_allowed_host variable to the origin of openai_base_url"
        );
        let e = send_error(
            &p,
            "http://127.0.0.1:9",
            &SendError::Http(ErrorCode::ConnectionRefused),
        );
        assert_eq!(
            e.message,
            "could not reach provider \"openai\" at http://127.0.0.1:9: connection refused"
        );
        assert!(e.retryable);
    }

    #[test]
    fn usage_or_estimate() {
        let a = json!({"choices":[{"message":{"content":"12345"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}});
        assert_eq!(
            answer_usage(&a, 99),
            (
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    cached_tokens: 0,
                    ..Usage::default()
                },
                false
            )
        );
        let a = json!({"choices":[{"message":{"content":"12345"}}]});
        assert_eq!(
            answer_usage(&a, 99),
            (
                Usage {
                    prompt_tokens: 99,
                    completion_tokens: 2,
                    cached_tokens: 0,
                    ..Usage::default()
                },
                true
            )
        );
    }
}
