//! Per-request context: the request id, the clock, the headers every response carries
//! (`x-request-id`, `x-lumen-model`, `x-lumen-provider`, `x-lumen-overhead-ms`, rate-limit
//! headers once known), and what was read from the incoming request before its body.

use crate::after::After;
use lumen_shared::store::limits::RateStatus;
use lumen_shared::wire::openai::check_json_content_type;
use lumen_shared::ApiError;
use lumen_spin::http::read_request_body;
use lumen_spin::util::{
    content_length_exceeds, elapsed_ms, format_ms, now_ms, parse_byte_limit, request_id_at,
    split_path, DEFAULT_MAX_REQUEST_BYTES,
};
use lumen_spin::Reply;
use spin_sdk::http::IncomingRequest;
use spin_sdk::variables;
use std::cell::RefCell;
use std::time::Instant;

/// `x-lumen-model` / `x-lumen-provider` when no model was involved.
pub const NONE: &str = "none";

/// What a response needs to know about its request.
pub struct Ctx {
    /// `req_` + 24 hex characters: the arrival in ms, then random ([`lumen_shared::wire::request_id`]).
    pub request_id: String,
    /// Arrival.
    pub started: Instant,
    /// Arrival, unix ms.
    pub started_ms: u64,
    /// Catalog model planned or served.
    pub model: String,
    /// Provider planned or served.
    pub provider: String,
    /// Upstream time to headers, as reported by the provider.
    pub upstream_ms: f64,
    /// Time the provider waited before the answer beyond that (failed attempts, retry backoff,
    /// a cold start), as reported by the provider.
    pub waited_ms: f64,
    /// Rate-limit headers, once the key was counted.
    pub rate: Vec<(String, String)>,
    /// `x-lumen-route`, once planned.
    pub route: Option<String>,
    /// What happens after the answer (response cache fill, shadow call) and what it needs from
    /// the answer as it passes (`crate::after`).
    pub after: RefCell<After>,
    /// The request's trace (`crate::trace`), kept past the handler for the export.
    pub trace: crate::trace::Shared,
    /// A streamed answer's burst gap in microseconds (`stream_burst_gap_us`), read when the
    /// request asks for a stream.
    pub burst_gap_us: u32,
}

impl Default for Ctx {
    fn default() -> Ctx {
        Ctx::new()
    }
}

impl Ctx {
    /// A context for a request arriving now.
    pub fn new() -> Ctx {
        let started_ms = now_ms();
        Ctx {
            request_id: request_id_at(started_ms),
            started: Instant::now(),
            started_ms,
            model: NONE.into(),
            provider: NONE.into(),
            upstream_ms: 0.0,
            waited_ms: 0.0,
            rate: Vec::new(),
            route: None,
            after: RefCell::new(After::default()),
            trace: Default::default(),
            burst_gap_us: 0,
        }
    }

    /// One event of a streamed answer on its way to the client (the response cache and a
    /// shadow comparison keep what they need; nothing when neither is on).
    pub fn tap(&self, ev: &lumen_shared::wire::sse::Event) {
        if let Ok(mut a) = self.after.try_borrow_mut() {
            a.on_event(self.started, ev);
        }
    }

    /// The settle request, kept for what runs after the answer.
    pub fn settled(&self, req: &lumen_shared::contracts::SettleRequest) {
        if let Ok(mut a) = self.after.try_borrow_mut() {
            a.on_settled(self.started, req);
        }
    }

    /// How the request used the response cache, for its settlement.
    pub fn mark(&self) -> lumen_shared::contracts::Mark {
        self.after.borrow().mark()
    }

    /// Records the rate-limit state for the `x-ratelimit-*` headers.
    pub fn set_rate(&mut self, s: &RateStatus) {
        self.rate = vec![
            ("x-ratelimit-limit-requests".into(), s.limit.to_string()),
            (
                "x-ratelimit-remaining-requests".into(),
                s.remaining.to_string(),
            ),
            (
                "x-ratelimit-reset-requests".into(),
                format!("{}s", s.reset_secs),
            ),
        ];
    }

    /// Adds the token-limit state (`x-ratelimit-*-tokens`).
    pub fn set_token_rate(&mut self, s: &lumen_shared::store::limits::RateStatus64) {
        self.rate.extend([
            ("x-ratelimit-limit-tokens".into(), s.limit.to_string()),
            (
                "x-ratelimit-remaining-tokens".into(),
                s.remaining.to_string(),
            ),
            (
                "x-ratelimit-reset-tokens".into(),
                format!("{}s", s.reset_secs),
            ),
        ]);
    }

    /// The headers every response carries, computed now (the overhead excludes the upstream's
    /// time to headers and what the provider waited for: failed attempts, retry backoff, cold
    /// starts).
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("x-request-id".to_string(), self.request_id.clone()),
            ("x-lumen-model".to_string(), self.model.clone()),
            ("x-lumen-provider".to_string(), self.provider.clone()),
            (
                "x-lumen-overhead-ms".to_string(),
                format_ms((elapsed_ms(self.started) - self.upstream_ms - self.waited_ms).max(0.0)),
            ),
        ];
        h.extend(self.rate.iter().cloned());
        if let Some(r) = &self.route {
            h.push(("x-lumen-route".to_string(), r.clone()));
        }
        if let Some(c) = self.after.borrow().cache_header() {
            h.push(("x-lumen-cache".to_string(), c.to_string()));
        }
        h
    }

    /// Notes the response's status, model and provider in the trace.
    pub fn note_response(&self, status: u16) {
        if let Ok(mut t) = self.trace.try_borrow_mut() {
            t.status = status;
            t.model = self.model.clone();
            t.provider = self.provider.clone();
        }
    }

    /// Adds the headers to a whole reply.
    pub fn stamp(&self, mut reply: Reply) -> Reply {
        self.note_response(reply.status);
        for (n, v) in self.headers() {
            reply.set_header(&n, v);
        }
        reply
    }
}

/// The parts of the incoming request used before (or instead of) its body.
pub struct ReqInfo {
    /// Method, upper case.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string (without `?`).
    pub query: String,
    /// `Accept` header.
    pub accept: Option<String>,
    /// `Authorization` header, or `Bearer <x-api-key>` when only Anthropic's `x-api-key` header
    /// is sent (Anthropic-format clients authenticate that way).
    pub authorization: Option<String>,
    /// `Content-Length` header.
    pub content_length: Option<String>,
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// `Cache-Control` header (`no-store`, `no-cache` steer the response cache).
    pub cache_control: Option<String>,
    /// W3C `traceparent` (`crate::trace`).
    pub traceparent: Option<String>,
}

impl ReqInfo {
    /// Reads method, path and the headers that matter (the first value of each). The header
    /// list is fetched once: a `get` per name costs three host calls each (the fields handle,
    /// the lookup, its drop), 20 for these names.
    pub fn read(req: &IncomingRequest) -> ReqInfo {
        let target = req.path_with_query().unwrap_or_default();
        let (path, query) = split_path(&target);
        let headers = req.headers().entries();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        ReqInfo {
            method: req.method().to_string(),
            path: path.to_string(),
            query: query.to_string(),
            accept: header("accept"),
            authorization: header("authorization")
                .or_else(|| header("x-api-key").map(|k| format!("Bearer {}", k.trim()))),
            content_length: header("content-length"),
            content_type: header("content-type"),
            cache_control: header("cache-control"),
            traceparent: header("traceparent"),
        }
    }
}

/// The `stream_burst_gap_us` variable: how long a streamed answer's provider may pause before
/// what is held is written (see `relay::stream`). Unset: 1 ms; anything but a whole number of
/// microseconds up to 20,000 is a configuration error naming the variable.
pub fn stream_burst_gap_us() -> Result<u32, ApiError> {
    use lumen_spin::util::{parse_burst_gap, BURST_GAP_VARIABLE};
    parse_burst_gap(variables::get(BURST_GAP_VARIABLE).ok().as_deref())
}

/// The `max_request_bytes` variable (4 MiB when unset; an invalid value is an error).
pub fn max_request_bytes() -> Result<usize, ApiError> {
    parse_byte_limit(
        "max_request_bytes",
        variables::get("max_request_bytes").ok().as_deref(),
        DEFAULT_MAX_REQUEST_BYTES,
    )
}

/// Reads a JSON body (every body Lumen reads is JSON): refused from its headers before a byte
/// is read when its `content-type` is not JSON (415) or its `content-length` is over the limit
/// (413), and while reading when more arrives than the limit. Callers authenticate first.
pub async fn read_body(req: IncomingRequest, info: &ReqInfo) -> Result<Vec<u8>, ApiError> {
    check_json_content_type(info.content_type.as_deref())?;
    let limit = max_request_bytes()?;
    if content_length_exceeds(info.content_length.as_deref(), limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    read_request_body(req, limit).await
}
