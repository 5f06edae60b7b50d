//! The error model: every failure is classified once (who is to blame, may it be retried, which
//! status) and rendered once as an OpenAI error body `{"error":{"message","type","param","code"}}`.

use serde::{Deserialize, Serialize};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The caller sent something wrong.
    Client,
    /// The upstream provider failed or refused.
    Upstream,
    /// Lumen itself failed.
    Internal,
}

/// An error ready to be sent to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// OpenAI error `type` (`invalid_request_error`, `authentication_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Human readable message naming the offending input.
    pub message: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// A machine readable code.
    pub code: Option<String>,
    /// Who is to blame.
    pub blame: Blame,
    /// Whether retrying elsewhere may succeed.
    pub retryable: bool,
    /// Seconds the client should wait before retrying (sets `retry-after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// The OpenAI error envelope as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error object.
    pub error: ErrorObject,
}

/// The inner OpenAI error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Message.
    pub message: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Parameter at fault.
    pub param: Option<String>,
    /// Code.
    pub code: Option<String>,
}

impl ApiError {
    fn new(status: u16, kind: &str, blame: Blame, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.to_string(),
            message: message.into(),
            param: None,
            code: None,
            blame,
            retryable: false,
            retry_after: None,
        }
    }

    /// 400: the request is malformed; `param` names the field.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        let mut e = Self::new(400, "invalid_request_error", Blame::Client, message);
        e.param = param.map(str::to_string);
        e.code = Some(code.to_string());
        e
    }

    /// 401: missing or wrong credentials.
    pub fn authentication(message: impl Into<String>) -> Self {
        let mut e = Self::new(401, "authentication_error", Blame::Client, message);
        e.code = Some("invalid_api_key".into());
        e
    }

    /// 403: authenticated but not allowed.
    pub fn permission(message: impl Into<String>, code: &str) -> Self {
        let mut e = Self::new(403, "permission_error", Blame::Client, message);
        e.code = Some(code.to_string());
        e
    }

    /// 404: no such route, model or object.
    pub fn not_found(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        let mut e = Self::new(404, "invalid_request_error", Blame::Client, message);
        e.param = param.map(str::to_string);
        e.code = Some(code.to_string());
        e
    }

    /// 409: the request conflicts with what is already recorded (e.g. a second feedback on one
    /// request); `param` names the field.
    pub fn conflict(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        let mut e = Self::new(409, "invalid_request_error", Blame::Client, message);
        e.param = param.map(str::to_string);
        e.code = Some(code.to_string());
        e
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        let mut e = Self::new(
            405,
            "invalid_request_error",
            Blame::Client,
            format!("method {method} is not allowed on {path}; use {allowed}"),
        );
        e.code = Some("method_not_allowed".into());
        e
    }

    /// 413: the body is over the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        let mut e = Self::new(
            413,
            "invalid_request_error",
            Blame::Client,
            format!("request body is larger than the limit of {limit} bytes"),
        );
        e.code = Some("request_too_large".into());
        e
    }

    /// 415: the body is not in a media type the route reads; `param` names the header.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        let mut e = Self::new(415, "invalid_request_error", Blame::Client, message);
        e.param = Some("content-type".into());
        e.code = Some("unsupported_media_type".into());
        e
    }

    /// 429: a Lumen limit was hit; retry after `retry_after` seconds.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(429, "rate_limit_error", Blame::Client, message);
        e.code = Some("rate_limit_exceeded".into());
        e.retry_after = Some(retry_after);
        e
    }

    /// 402: the tenant's budget or credits cannot cover the request (OpenAI's
    /// `insufficient_quota`).
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        let mut e = Self::new(402, "insufficient_quota", Blame::Client, message);
        e.code = Some("insufficient_quota".into());
        e
    }

    /// An upstream failure with the status the client should see.
    pub fn upstream(status: u16, message: impl Into<String>, retryable: bool) -> Self {
        let kind = if status == 429 {
            "rate_limit_error"
        } else if status < 500 {
            "invalid_request_error"
        } else {
            "upstream_error"
        };
        let mut e = Self::new(status, kind, Blame::Upstream, message);
        e.code = Some(if status == 429 {
            "upstream_rate_limited".into()
        } else {
            "upstream_error".into()
        });
        e.retryable = retryable;
        e
    }

    /// 500: Lumen failed; the message must not leak internals.
    pub fn internal(message: impl Into<String>) -> Self {
        let mut e = Self::new(500, "server_error", Blame::Internal, message);
        e.code = Some("internal_error".into());
        e
    }

    /// The wire envelope.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.clone(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }

    /// The wire body as bytes.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope()).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = ApiError::invalid_request(
            "missing required parameter: 'messages'",
            Some("messages"),
            "missing_required_parameter",
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"missing required parameter: 'messages'","type":"invalid_request_error","param":"messages","code":"missing_required_parameter"}})
        );
        assert_eq!(e.status, 400);
    }

    #[test]
    fn upstream_429_is_rate_limit_and_retryable() {
        let e = ApiError::upstream(429, "upstream rate limited", true);
        assert_eq!(e.kind, "rate_limit_error");
        assert!(e.retryable);
        assert_eq!(e.blame, Blame::Upstream);
    }
}
