//! Pure helpers with no Spin imports: clocks, ids, paths and queries, limits, header values and
//! the decoding of error envelopes returned by internal routes.

use lumen_shared::error::{Blame, ErrorEnvelope};
use lumen_shared::ApiError;
use std::time::{SystemTime, UNIX_EPOCH};

/// Default of the `max_request_bytes` variable (4 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Fills `buf` with cryptographically secure random bytes from the host (`wasi:random/random`,
/// through spin-sdk's own bindings so the component's WASI imports stay at spin-sdk's version).
#[cfg(target_arch = "wasm32")]
pub fn fill_random(buf: &mut [u8]) -> Result<(), ApiError> {
    let bytes = spin_sdk::wit::wasi::random0_2_6::random::get_random_bytes(buf.len() as u64);
    if bytes.len() != buf.len() {
        return Err(ApiError::internal("the host returned too few random bytes"));
    }
    buf.copy_from_slice(&bytes);
    Ok(())
}

/// Native builds (unit tests only): std's randomly keyed SipHash, never used for secrets.
#[cfg(not(target_arch = "wasm32"))]
pub fn fill_random(buf: &mut [u8]) -> Result<(), ApiError> {
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    Ok(())
}

/// `n` random bytes as lowercase hex. Falls back to clock-derived bytes if the host has no
/// randomness (only used for ids that need to be unique, never for secrets).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if fill_random(&mut buf).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
    to_hex(&buf)
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// A request id for a request arriving at `now_ms`: `req_` + 24 hex characters, the arrival then
/// 6 random bytes ([`lumen_shared::wire::request_id`]).
pub fn request_id_at(now_ms: u64) -> String {
    let mut random = [0u8; 6];
    if fill_random(&mut random).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        random[..4].copy_from_slice(&nanos.to_le_bytes());
    }
    lumen_shared::wire::request_id::new(now_ms, random)
}

/// A request id for a request arriving now.
pub fn request_id() -> String {
    request_id_at(now_ms())
}

/// Picks the handler for `method` and `path` from a fixed table of `(path, method, handler)`:
/// 405 naming the allowed method when only the method is wrong, 404 when the path is unknown.
pub fn dispatch<R: Copy>(
    method: &str,
    path: &str,
    table: &[(&str, &str, R)],
) -> Result<R, ApiError> {
    if let Some((_, _, r)) = table.iter().find(|(p, m, _)| *p == path && *m == method) {
        return Ok(*r);
    }
    match table.iter().find(|(p, _, _)| *p == path) {
        Some((_, allowed, _)) => Err(ApiError::method_not_allowed(method, path, allowed)),
        None => Err(ApiError::not_found(
            format!("unknown route {method} {path}"),
            None,
            "unknown_route",
        )),
    }
}

/// Splits a request target into path and query (without `?`). A full URL (`http://host/p?q`) is
/// reduced to its path first.
pub fn split_path(target: &str) -> (&str, &str) {
    let rest = match target.find("://") {
        Some(i) => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => target,
    };
    let rest = rest.split('#').next().unwrap_or("");
    match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a query value: everything but unreserved characters becomes `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first value of `name` in a query string, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Reads the byte limit in variable `name`: unset or empty gives `default`; anything but a
/// positive integer is a configuration error naming the variable (never silently ignored).
pub fn parse_byte_limit(
    name: &str,
    value: Option<&str>,
    default: usize,
) -> Result<usize, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::internal(format!(
                "the {name} variable must be a positive number of bytes, got \"{v}\"; fix SPIN_VARIABLE_{}",
                name.to_ascii_uppercase()
            ))
        }),
    }
}

/// The variable [`parse_burst_gap`] reads.
pub const BURST_GAP_VARIABLE: &str = "stream_burst_gap_us";

/// Default of the `stream_burst_gap_us` variable: 1 ms.
pub const DEFAULT_BURST_GAP_US: u32 = 1_000;

/// The largest `stream_burst_gap_us` (20 ms, the longest auth holds a streamed event anyway).
pub const MAX_BURST_GAP_US: u32 = 20_000;

/// Reads the `stream_burst_gap_us` variable: unset or empty gives [`DEFAULT_BURST_GAP_US`]; a
/// whole number of microseconds up to [`MAX_BURST_GAP_US`] (0: write what is there at once);
/// anything else is a configuration error naming the variable.
pub fn parse_burst_gap(value: Option<&str>) -> Result<u32, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_BURST_GAP_US),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|&n| n <= MAX_BURST_GAP_US)
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "the {BURST_GAP_VARIABLE} variable must be a whole number of microseconds from 0 to {MAX_BURST_GAP_US}, got \"{v}\"; fix SPIN_VARIABLE_{}",
                    BURST_GAP_VARIABLE.to_ascii_uppercase()
                ))
            }),
    }
}

/// True when a `content-length` header announces more than `limit` bytes.
pub fn content_length_exceeds(content_length: Option<&str>, limit: usize) -> bool {
    content_length
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// Milliseconds with three decimals, never negative (`12.345`).
pub fn format_ms(ms: f64) -> String {
    let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
    format!("{ms:.3}")
}

/// Milliseconds elapsed since `start`.
pub fn elapsed_ms(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// `scheme://host[:port]` of a URL (the whole text when it has no scheme).
pub fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            format!("{}{}", &url[..i + 3], &after[..end])
        }
        None => url.to_string(),
    }
}

/// Seconds of a `retry-after` header given as a number (HTTP dates are ignored).
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let v = value.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    v.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(|f| f.ceil() as u64)
}

/// Rebuilds an [`ApiError`] from an internal route's non-2xx answer (an OpenAI error envelope);
/// an answer without one becomes a 500 naming `what`.
pub fn api_error_from_wire(
    what: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<u64>,
) -> ApiError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => {
            let blame = if status >= 500 {
                if env.error.kind == "upstream_error" {
                    Blame::Upstream
                } else {
                    Blame::Internal
                }
            } else {
                Blame::Client
            };
            ApiError {
                status,
                kind: env.error.kind,
                message: env.error.message,
                param: env.error.param,
                code: env.error.code,
                blame,
                retryable: false,
                retry_after,
            }
        }
        Err(_) => ApiError::internal(format!(
            "{what} answered HTTP {status} without an error body"
        )),
    }
}

/// A component-call result on the wire (`components/wit/lumen.wit`): the JSON of the value, or
/// of the [`ApiError`] that prevented it.
pub fn to_wire<T: serde::Serialize>(r: Result<T, ApiError>) -> Result<Vec<u8>, Vec<u8>> {
    let encoded = r.and_then(|v| {
        serde_json::to_vec(&v)
            .map_err(|e| ApiError::internal(format!("could not serialise the answer: {e}")))
    });
    encoded.map_err(|e| serde_json::to_vec(&e).unwrap_or_default())
}

/// Decodes what [`to_wire`] encoded; `what` names the component in messages.
pub fn from_wire<T: serde::de::DeserializeOwned>(
    what: &str,
    r: Result<Vec<u8>, Vec<u8>>,
) -> Result<T, ApiError> {
    match r {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::internal(format!("the {what} component answered unexpectedly: {e}"))
        }),
        Err(bytes) => Err(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            ApiError::internal(format!("the {what} component failed unexpectedly: {e}"))
        })),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_burst_gap_variable_is_checked() {
        assert_eq!(parse_burst_gap(None), Ok(DEFAULT_BURST_GAP_US));
        assert_eq!(parse_burst_gap(Some(" ")), Ok(DEFAULT_BURST_GAP_US));
        assert_eq!(parse_burst_gap(Some("0")), Ok(0));
        assert_eq!(parse_burst_gap(Some(" 250 ")), Ok(250));
        assert_eq!(parse_burst_gap(Some("20000")), Ok(MAX_BURST_GAP_US));
        for bad in ["20001", "-1", "1.5", "1ms", "lots"] {
            let e = parse_burst_gap(Some(bad)).unwrap_err();
            assert_eq!(e.status, 500);
            assert!(
                e.message.contains("stream_burst_gap_us") && e.message.contains(bad),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn dispatch_answers_404_and_405() {
        let table = [("/plan", "POST", 1), ("/models", "GET", 2)];
        assert_eq!(dispatch("POST", "/plan", &table), Ok(1));
        assert_eq!(dispatch("GET", "/models", &table), Ok(2));
        let e = dispatch("GET", "/plan", &table).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (405, "method GET is not allowed on /plan; use POST")
        );
        let e = dispatch("GET", "/nope", &table).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (404, "unknown route GET /nope")
        );
    }

    use super::*;

    #[test]
    fn ids_are_hex_of_the_right_length() {
        let id = request_id();
        assert!(id.starts_with("req_") && id.len() == 28, "{id}");
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(request_id(), request_id());
        assert_eq!(to_hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn paths_and_queries() {
        assert_eq!(split_path("/v1/usage?key_id=a"), ("/v1/usage", "key_id=a"));
        assert_eq!(
            split_path("http://router.spin.internal/plan"),
            ("/plan", "")
        );
        assert_eq!(
            split_path("http://h:3000/v1/models?x=1#f"),
            ("/v1/models", "x=1")
        );
        assert_eq!(split_path("http://h"), ("/", ""));
        assert_eq!(split_path("/admin/keys"), ("/admin/keys", ""));
        assert_eq!(
            query_param("a=1&key_id=key_%41b+c", "key_id").as_deref(),
            Some("key_Ab c")
        );
        assert_eq!(query_param("a=1", "key_id"), None);
        assert_eq!(query_param("key_id", "key_id").as_deref(), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
        assert_eq!(percent_encode("key_ab/c d"), "key_ab%2Fc%20d");
        assert_eq!(
            query_param(&format!("k={}", percent_encode("a&b=c é")), "k").as_deref(),
            Some("a&b=c é")
        );
    }

    #[test]
    fn limits() {
        assert_eq!(parse_byte_limit("m", None, 7), Ok(7));
        assert_eq!(parse_byte_limit("m", Some(""), 7), Ok(7));
        assert_eq!(parse_byte_limit("m", Some(" 1024 "), 7), Ok(1024));
        for bad in ["abc", "0", "-5", "4MB"] {
            let e = parse_byte_limit("max_request_bytes", Some(bad), 7).unwrap_err();
            assert!(
                e.message.contains("max_request_bytes") && e.message.contains(bad),
                "{}",
                e.message
            );
        }
        assert!(content_length_exceeds(Some("11"), 10));
        assert!(!content_length_exceeds(Some("10"), 10));
        assert!(!content_length_exceeds(Some("x"), 10));
        assert!(!content_length_exceeds(None, 10));
    }

    #[test]
    fn formats_and_origins() {
        assert_eq!(format_ms(1.23456), "1.235");
        assert_eq!(format_ms(-4.0), "0.000");
        assert_eq!(format_ms(f64::NAN), "0.000");
        assert_eq!(
            origin_of("https://api.openai.com/v1"),
            "https://api.openai.com"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:9000/v1/"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(origin_of("http://h:1?x"), "http://h:1");
        assert_eq!(origin_of("nonsense"), "nonsense");
        assert_eq!(parse_retry_after("7"), Some(7));
        assert_eq!(parse_retry_after(" 1.2 "), Some(2));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn component_results_round_trip() {
        let ok: Result<Vec<u32>, ApiError> = from_wire("router", to_wire(Ok(vec![1u32, 2])));
        assert_eq!(ok, Ok(vec![1, 2]));
        let mut e = ApiError::upstream(429, "slow down", true);
        e.retry_after = Some(3);
        let back: Result<u8, ApiError> = from_wire("router", to_wire::<u8>(Err(e.clone())));
        assert_eq!(back, Err(e));
        let garbled: Result<u8, ApiError> = from_wire("meter", Err(b"<html>".to_vec()));
        let g = garbled.unwrap_err();
        assert_eq!(g.status, 500);
        assert!(g.message.contains("the meter component"), "{}", g.message);
    }

    #[test]
    fn wire_errors_round_trip() {
        let e = ApiError::permission("no", "model_not_allowed");
        let back = api_error_from_wire("router", 403, &e.body(), None);
        assert_eq!(
            (
                back.status,
                back.kind.as_str(),
                back.message.as_str(),
                back.code.as_deref()
            ),
            (403, "permission_error", "no", Some("model_not_allowed"))
        );
        assert_eq!(back.blame, Blame::Client);
        let back = api_error_from_wire("router", 502, b"<html>", Some(3));
        assert_eq!(back.status, 500);
        assert!(
            back.message.contains("router answered HTTP 502"),
            "{}",
            back.message
        );
        let up = ApiError::upstream(429, "slow down", true);
        let back = api_error_from_wire("provider", 429, &up.body(), Some(9));
        assert_eq!(
            (back.status, back.retry_after, back.code.as_deref()),
            (429, Some(9), Some("upstream_rate_limited"))
        );
    }
}
