//! Answers the host gives itself, before or instead of a component: OpenAI-shaped error bodies
//! (`{"error":{"message","type","param","code"}}`), `x-request-id` values, and whole raw HTTP/1.1
//! responses for the places where hyper is not writing (refused connections, header timeouts,
//! hyper's own parse-error answers).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A new request id: `req_` and 24 hex digits (96 bits), unique in this process and not
/// guessable from the previous one.
pub fn request_id() -> String {
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(std::collections::hash_map::RandomState::new);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let hi = seed.hash_one((n, 0x9e37_79b9_u32));
    let lo = seed.hash_one((n, 0x7f4a_7c15_u32));
    format!("req_{:016x}{:08x}", hi, lo as u32)
}

/// The `type` of an OpenAI error for `status`.
pub fn error_type(status: u16) -> &'static str {
    match status {
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// An OpenAI-shaped error body.
pub fn error_body(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": error_type(status),
        "param": null,
        "code": code,
    }});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A whole HTTP/1.1 error response with `connection: close`, for writing straight to a socket.
pub fn raw_response(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Vec<u8> {
    let body = error_body(status, code, message);
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n",
        body.len(),
        request_id()
    );
    if let Some(s) = retry_after {
        out.push_str(&format!("retry-after: {s}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Logs `line` at most once a second per `slot`, with the number of lines left out since, so a
/// flood of refusals cannot flood the log.
pub fn log_throttled(slot: &AtomicU64, line: impl FnOnce() -> String) {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1;
    // The slot holds `second << 32 | suppressed`.
    let prev = slot.load(Ordering::Relaxed);
    let (second, suppressed) = (prev >> 32, prev & 0xffff_ffff);
    if second == now {
        slot.store(prev.saturating_add(1), Ordering::Relaxed);
        return;
    }
    slot.store(now << 32, Ordering::Relaxed);
    if suppressed > 0 {
        eprintln!("{} ({suppressed} more like it left out)", line());
    } else {
        eprintln!("{}", line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_req_and_24_hex_digits_and_differ() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            let hex = id.strip_prefix("req_").expect("req_ prefix");
            assert_eq!(hex.len(), 24, "{id}");
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
    }

    #[test]
    fn raw_responses_parse_and_carry_an_openai_error() {
        let raw = raw_response(
            429,
            "too_many_connections_from_client",
            "slow down",
            Some(1),
        );
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = resp.parse(&raw).unwrap() else {
            panic!("incomplete head")
        };
        assert_eq!(resp.code, Some(429));
        let get = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap().to_string())
        };
        assert_eq!(get("retry-after").as_deref(), Some("1"));
        assert!(get("x-request-id").unwrap().starts_with("req_"));
        let body = &raw[head_len..];
        assert_eq!(get("content-length"), Some(body.len().to_string()));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "slow down", "type": "rate_limit_error",
                "param": null, "code": "too_many_connections_from_client"}})
        );
    }
}
