//! A mock OpenAI-compatible upstream: a hyper server speaking the Chat Completions wire format.
//!
//! The mock stands in for `api.openai.com` in end-to-end tests, Python SDK tests and benchmarks.
//! It is deterministic: the completion text, the token counts and the timing of every response are
//! fixed by the request, so tests can assert exact values after a round trip through the gateway.
//!
//! # Endpoints
//!
//! * `POST /v1/chat/completions`: non-stream JSON or an SSE stream (`"stream": true`).
//! * `POST /v1/embeddings`: deterministic vectors (see [`crate::mock_dialects::embedding`]),
//!   `float` or `base64`, with usage.
//! * Other dialects (Anthropic, Gemini, Azure, a queue API): [`crate::mock_dialects`].
//! * `GET /v1/models` and `GET /v1/models/{id}`: an OpenAI model list with [`MockConfig::models`].
//! * `GET /mock/requests`: JSON array with the parsed JSON body of every recorded request that had
//!   one (`?full=1` gives objects with `method`, `path`, `headers` and `body`); `DELETE
//!   /mock/requests` clears the record. `GET /mock/stats` returns `{"requests":N,"disconnects":N}`.
//!   Only the last [`KEPT_REQUESTS`] requests are kept; `requests` in the stats counts them all.
//!   The `/mock/*` endpoints are never recorded and need no API key.
//!
//! # Steering a request
//!
//! The text of the **last user message** may contain one directive `[mock k=v k=v ...]` (see
//! [`Directive`]): `tokens=N`, `delay_ms=N`, `ttft_ms=N`, `status=N`, `die_after=K`, `content=word`,
//! `if_model=ID` (apply only to requests for that model). An unknown key or a malformed value is answered with a 400 so broken tests fail loudly.
//!
//! Faults: `status=N` (`retry_after=S` for a 429, `code=context_length_exceeded|content_filter`
//! for a 400), `reset=1`, `ttft_ms=N`, `die_after=K`, `stall_after=K stall_ms=N`,
//! `malformed_after=K`, `eof_after=K`, `no_done=1` (a complete stream without `[DONE]`; with
//! `stall_after=0 stall_ms=N` the headers and role chunk come at once and the first token after
//! N ms). The same prompt reaches every fallback, so `only=X` scopes
//! them to one upstream (`openai`, `azure`, `anthropic`, or an upstream model id), and `id=x`
//! with `times=N` (the first N requests fail) or `flap=1` (every other one) keeps state across
//! requests. `reject_prefill=1` makes the Anthropic route refuse an assistant prefill.
//!
//! # Token accounting
//!
//! * Completion: `tokens` tokens (default 8), each `"tok{i} "` or `"{content} "`, capped by the
//!   request's `max_completion_tokens` / `max_tokens` (then `finish_reason` is `"length"`).
//! * Prompt: see [`prompt_tokens`]: `3 + Σ over messages (3 + ceil(chars(text) / 4))`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Error type carried by response bodies; a body error makes hyper drop the connection.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The response body type used by the mock.
pub(crate) type MockBody = BoxBody<Bytes, BoxError>;

/// Completion tokens produced when the request has no `tokens=` directive.
pub const DEFAULT_TOKENS: u64 = 8;

/// The `system_fingerprint` reported on every completion and chunk.
pub const SYSTEM_FINGERPRINT: &str = "fp_mock";

/// The SSE event that terminates a stream.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// How the mock behaves; `Default` gives an open (no key) server on `127.0.0.1:0`.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// When set, every `/v1/*` request must carry `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// Delay before each streamed token chunk unless the request says `delay_ms=N`.
    pub token_delay: Duration,
    /// Address to bind; `None` binds `127.0.0.1:0` (an ephemeral port).
    pub listen: Option<SocketAddr>,
    /// Model ids listed by `GET /v1/models`.
    pub models: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            token_delay: Duration::ZERO,
            listen: None,
            models: vec!["gpt-4o-mini".to_owned(), "gpt-4o".to_owned()],
        }
    }
}

/// One request as the mock received it (control endpoints under `/mock/` excluded).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON; `None` when empty or not JSON.
    pub body: Option<Value>,
}

impl RecordedRequest {
    /// The value of header `name` as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A JSON view (`method`, `path`, `headers`, `body`) as served by `GET /mock/requests?full=1`.
    pub fn to_json(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "headers": headers,
            "body": self.body,
        })
    }
}

/// Per-request steering parsed from a `[mock k=v ...]` directive; `None` fields take defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directive {
    /// `tokens=N`: number of completion tokens.
    pub tokens: Option<u64>,
    /// `delay_ms=N`: delay before each streamed token chunk (overrides the server default).
    pub delay_ms: Option<u64>,
    /// `ttft_ms=N`: delay before the response headers are sent.
    pub ttft_ms: Option<u64>,
    /// `status=N` (400..=599): answer with this status and an OpenAI error body.
    pub status: Option<u16>,
    /// `die_after=K`: stream K token chunks then drop the connection; non-stream: drop it at once.
    pub die_after: Option<u64>,
    /// `content=word`: use this word (plus a space) for every token instead of `tok{i} `.
    pub content: Option<String>,
    /// `tool=name`: answer with one call of this tool, arguments [`TOOL_ARGUMENTS`], instead of text.
    pub tool: Option<String>,
    /// `cached=N`: N prompt tokens read from the prompt cache (OpenAI `cached_tokens`, Anthropic
    /// `cache_read_input_tokens`, Gemini `cachedContentTokenCount`).
    pub cached: Option<u64>,
    /// `cache_write=N`: N prompt tokens written to the cache (Anthropic `cache_creation_input_tokens`).
    pub cache_write: Option<u64>,
    /// `reasoning=N`: N extra reasoning tokens (OpenAI `reasoning_tokens`, Gemini `thoughtsTokenCount`).
    pub reasoning: Option<u64>,
    /// `safety=1`: Gemini blocks the prompt (`promptFeedback.blockReason = SAFETY`).
    pub safety: Option<u64>,
    /// `fixture=dialect/name.ext`: answer with this recorded file from `tests/fixtures/` verbatim.
    pub fixture: Option<String>,
    /// `cold_ms=N`: queue-style backend: the job stays queued N ms (a cold start).
    pub cold_ms: Option<u64>,
    /// `if_model=ID`: the directive applies only to requests whose `model` is `ID` (others get
    /// the defaults), so one prompt can steer a cascade's cheap and strong calls differently.
    pub if_model: Option<String>,
    /// `only=X`: the faults of this directive apply only to the upstream `X`: a route (`openai` for
    /// `/v1/chat/completions`, `azure` for deployment URLs) or the upstream model id. Other
    /// upstreams answer normally (the same prompt reaches every fallback).
    pub only: Option<String>,
    /// `id=name`: a fault counter shared by every request with this id (with `times` or `flap`).
    pub id: Option<String>,
    /// `times=N`: the faults apply to the first N matching requests of the `id`, then success.
    pub times: Option<u64>,
    /// `flap=1`: the faults apply to every other matching request of the `id` (1st, 3rd, ...).
    pub flap: Option<u64>,
    /// `retry_after=N`: the `Retry-After` seconds of a `status=429` (default 1).
    pub retry_after: Option<u64>,
    /// `code=X`: the error `code` of a `status=400` (`context_length_exceeded`, `content_filter`).
    pub code: Option<String>,
    /// `stall_after=K`: stream K token chunks, then go silent for `stall_ms` (default 30 s).
    pub stall_after: Option<u64>,
    /// `stall_ms=N`: length of a `stall_after` stall.
    pub stall_ms: Option<u64>,
    /// `malformed_after=K`: stream K token chunks, then a chunk that is not JSON, then stop.
    pub malformed_after: Option<u64>,
    /// `eof_after=K`: stream K token chunks, then end the body cleanly without a finish chunk
    /// or `[DONE]`.
    pub eof_after: Option<u64>,
    /// `reset=1`: drop the connection without any response.
    pub reset: Option<u64>,
    /// `no_done=1`: a complete stream (every token, the finish chunk, the usage chunk) that ends
    /// without `data: [DONE]`.
    pub no_done: Option<u64>,
    /// `reject_prefill=1` (Anthropic): a request ending with an assistant message (a prefill)
    /// gets a 400. Without it the Anthropic mock continues the prefill's text. A capability of
    /// the upstream, not a fault: `only=` does not scope it.
    pub reject_prefill: Option<u64>,
}

impl Directive {
    /// Whether this directive carries a fault (anything `only`/`times`/`flap` gate).
    fn has_fault(&self) -> bool {
        self.status.is_some()
            || self.ttft_ms.is_some()
            || self.die_after.is_some()
            || self.stall_after.is_some()
            || self.malformed_after.is_some()
            || self.eof_after.is_some()
            || self.reset.is_some()
            || self.no_done.is_some()
    }

    /// The directive without its faults (for upstreams the faults are not scoped to).
    fn healthy(mut self) -> Directive {
        self.status = None;
        self.ttft_ms = None;
        self.die_after = None;
        self.stall_after = None;
        self.malformed_after = None;
        self.eof_after = None;
        self.reset = None;
        self.no_done = None;
        self
    }
}

/// The arguments of every mock tool call.
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

/// Parses the first `[mock ...]` directive in `text`.
///
/// Returns `Ok(None)` when there is none, and an error message for an unknown key, a pair
/// without `=`, a malformed number, an out-of-range status or a missing closing `]`.
pub fn parse_directive(text: &str) -> Result<Option<Directive>, String> {
    const OPEN: &str = "[mock";
    let mut search_from = 0;
    let start = loop {
        let Some(found) = text[search_from..].find(OPEN) else {
            return Ok(None);
        };
        let after = search_from + found + OPEN.len();
        // `[mockery]` is not a directive: the tag must end at whitespace or `]`.
        match text[after..].chars().next() {
            Some(c) if c.is_whitespace() || c == ']' => break after,
            _ => search_from = after,
        }
    };
    let Some(len) = text[start..].find(']') else {
        return Err("mock directive: missing closing ']'".to_owned());
    };
    let mut directive = Directive::default();
    for pair in text[start..start + len].split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("mock directive: expected key=value, got {pair:?}"))?;
        let number = || {
            value.parse::<u64>().map_err(|_| {
                format!("mock directive: {key} must be a non-negative integer, got {value:?}")
            })
        };
        match key {
            "tokens" => directive.tokens = Some(number()?),
            "delay_ms" => directive.delay_ms = Some(number()?),
            "ttft_ms" => directive.ttft_ms = Some(number()?),
            "die_after" => directive.die_after = Some(number()?),
            "cached" => directive.cached = Some(number()?),
            "cache_write" => directive.cache_write = Some(number()?),
            "reasoning" => directive.reasoning = Some(number()?),
            "safety" => directive.safety = Some(number()?),
            "cold_ms" => directive.cold_ms = Some(number()?),
            "times" => directive.times = Some(number()?),
            "flap" => directive.flap = Some(number()?),
            "retry_after" => directive.retry_after = Some(number()?),
            "stall_after" => directive.stall_after = Some(number()?),
            "stall_ms" => directive.stall_ms = Some(number()?),
            "malformed_after" => directive.malformed_after = Some(number()?),
            "eof_after" => directive.eof_after = Some(number()?),
            "reset" => directive.reset = Some(number()?),
            "no_done" => directive.no_done = Some(number()?),
            "reject_prefill" => directive.reject_prefill = Some(number()?),
            "only" | "id" | "code" => {
                if value.is_empty() {
                    return Err(format!("mock directive: {key} must not be empty"));
                }
                let v = Some(value.to_owned());
                match key {
                    "only" => directive.only = v,
                    "id" => directive.id = v,
                    _ => directive.code = v,
                }
            }
            "tool" | "fixture" => {
                if value.is_empty() {
                    return Err(format!("mock directive: {key} must not be empty"));
                }
                if key == "tool" {
                    directive.tool = Some(value.to_owned());
                } else {
                    directive.fixture = Some(value.to_owned());
                }
            }
            "status" => {
                let status = number()?;
                if !(400..=599).contains(&status) {
                    return Err(format!(
                        "mock directive: status must be 400..=599, got {status}"
                    ));
                }
                directive.status = Some(status as u16);
            }
            "content" => {
                if value.is_empty() {
                    return Err("mock directive: content must not be empty".to_owned());
                }
                directive.content = Some(value.to_owned());
            }
            "if_model" => directive.if_model = Some(value.to_owned()),
            _ => return Err(format!("mock directive: unknown key {key:?}")),
        }
    }
    Ok(Some(directive))
}

/// The plain text of a message `content`: a string, or the concatenated `text` of an array of
/// content parts (`[{"type":"text","text":"..."}]`); anything else (e.g. `null`) is empty.
pub fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The directive in the text of the last message whose role is `user`, if any.
pub fn request_directive(body: &Value) -> Result<Directive, String> {
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    match last_user {
        Some(message) => {
            let text = message_text(message.get("content").unwrap_or(&Value::Null));
            let d = parse_directive(&text)?.unwrap_or_default();
            match &d.if_model {
                Some(m) if body.get("model").and_then(Value::as_str) != Some(m.as_str()) => {
                    Ok(Directive::default())
                }
                _ => Ok(d),
            }
        }
        None => Ok(Directive::default()),
    }
}

/// The deterministic prompt-token count the mock reports for a chat request body.
///
/// `prompt_tokens = 3 + Σ_messages (3 + ceil(chars(text) / 4))`, where `text` is
/// [`message_text`] of the message's `content` and `chars` counts Unicode scalar values (Python's
/// `len(str)`). A body without a `messages` array counts 3.
///
/// Example: `[{"role":"user","content":"hello"}]` → `3 + (3 + ceil(5/4)) = 8`.
pub fn prompt_tokens(body: &Value) -> u64 {
    let messages = body.get("messages").and_then(Value::as_array);
    3 + messages
        .into_iter()
        .flatten()
        .map(|m| {
            let chars = message_text(m.get("content").unwrap_or(&Value::Null))
                .chars()
                .count() as u64;
            3 + chars.div_ceil(4)
        })
        .sum::<u64>()
}

/// The text of completion token `i`: `"tok{i} "`, or `"{word} "` with a `content=` directive.
pub fn token_text(i: u64, word: Option<&str>) -> String {
    match word {
        Some(word) => format!("{word} "),
        None => format!("tok{i} "),
    }
}

/// Frames one JSON value as a server-sent event: `data: <json>\n\n`.
pub fn sse_event<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    serde_json::to_writer(&mut out, value).expect("mock payloads serialize");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// OpenAI `usage` object (same shape for non-stream and streamed usage).
#[derive(Debug, Clone, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, completion: u64, cached: u64, reasoning: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: reasoning,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

/// Non-stream `chat.completion` object.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [CompletionChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    message: AssistantMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: Option<String>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Value>,
}

/// Streamed `chat.completion.chunk` object.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice>,
    /// Absent without `include_usage`; `null` on regular chunks with it; set on the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    /// `Some(None)` serializes as `"refusal": null` (first chunk only).
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Value>,
}

/// Everything needed to produce one completion, fixed before the response starts.
struct Plan {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: &'static str,
    word: Option<String>,
    token_delay: Duration,
    die_after: Option<u64>,
    /// After this many token chunks, a silence this long.
    stall: Option<(u64, Duration)>,
    malformed_after: Option<u64>,
    eof_after: Option<u64>,
    /// End a complete stream without `[DONE]`.
    no_done: bool,
    include_usage: bool,
    cached: u64,
    reasoning: u64,
    tool: Option<String>,
}

impl Plan {
    fn token(&self, i: u64) -> String {
        token_text(i, self.word.as_deref())
    }

    fn text(&self) -> String {
        (0..self.completion_tokens).map(|i| self.token(i)).collect()
    }

    fn usage(&self) -> Usage {
        Usage::new(
            self.prompt_tokens,
            self.completion_tokens + self.reasoning,
            self.cached.min(self.prompt_tokens),
            self.reasoning,
        )
    }

    fn tool_call_id(&self) -> String {
        format!("call_{}", self.id.trim_start_matches("chatcmpl-"))
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Bytes {
        sse_event(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }

    fn delta_chunk(&self, delta: Delta, finish_reason: Option<&'static str>) -> Bytes {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        };
        self.chunk(vec![choice], None)
    }

    fn completion_json(&self) -> Vec<u8> {
        let completion = Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: [CompletionChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: self.tool.is_none().then(|| self.text()),
                    refusal: None,
                    tool_calls: self.tool.as_ref().map(|name| {
                        serde_json::json!([{"id": self.tool_call_id(), "type": "function",
                            "function": {"name": name, "arguments": TOOL_ARGUMENTS}}])
                    }),
                },
                logprobs: None,
                finish_reason: if self.tool.is_some() {
                    "tool_calls"
                } else {
                    self.finish_reason
                },
            }],
            usage: self.usage(),
        };
        serde_json::to_vec(&completion).expect("mock payloads serialize")
    }
}

/// Recorded requests a mock keeps: the most recent ones. A standalone mock serving a benchmark
/// sees millions of requests (tens of thousands a second); keeping every one grew `lumen-mock`
/// to 24 GB until the kernel killed it mid-run.
pub const KEPT_REQUESTS: usize = 10_000;

/// The request record: the last [`KEPT_REQUESTS`] requests and how many were seen.
#[derive(Default)]
struct RequestLog {
    kept: std::collections::VecDeque<RecordedRequest>,
    seen: usize,
}

impl RequestLog {
    fn record(&mut self, r: RecordedRequest) {
        if self.kept.len() == KEPT_REQUESTS {
            self.kept.pop_front();
        }
        self.kept.push_back(r);
        self.seen += 1;
    }

    fn clear(&mut self) {
        self.kept.clear();
        self.seen = 0;
    }
}

/// Shared state of one running mock.
pub(crate) struct State {
    pub(crate) cfg: MockConfig,
    requests: Mutex<RequestLog>,
    pub(crate) next_id: AtomicU64,
    /// Shared with stream producer tasks, which outlive the handler's borrow of `State`.
    pub(crate) disconnects: Arc<AtomicU64>,
    /// Requests seen per fault `id=` (for `times=` and `flap=`).
    pub(crate) fault_counts: Mutex<std::collections::HashMap<String, u64>>,
    /// Queue-style jobs by id.
    pub(crate) jobs: Mutex<std::collections::HashMap<String, crate::mock_dialects::Job>>,
}

/// The error a handler returns to make hyper drop the connection without a response.
#[derive(Debug)]
pub(crate) struct Abort(pub(crate) &'static str);

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mock aborted the connection: {}", self.0)
    }
}

impl StdError for Abort {}

/// A running mock upstream; it stops when dropped or on [`MockUpstream::shutdown`].
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Binds `cfg.listen` (default `127.0.0.1:0`) and serves in a background task.
    pub async fn start(cfg: MockConfig) -> anyhow::Result<Self> {
        let listen = cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding mock upstream to {listen}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            cfg,
            requests: Mutex::new(RequestLog::default()),
            next_id: AtomicU64::new(1),
            disconnects: Arc::new(AtomicU64::new(0)),
            jobs: Mutex::new(std::collections::HashMap::new()),
            fault_counts: Mutex::new(std::collections::HashMap::new()),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, state.clone(), stopped));
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task,
        })
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL of this mock, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A copy of the recorded requests (the last [`KEPT_REQUESTS`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let log = self.state.requests.lock().expect("request log poisoned");
        log.kept.iter().cloned().collect()
    }

    /// How many requests were recorded (all of them, not only those kept).
    pub fn request_count(&self) -> usize {
        self.state
            .requests
            .lock()
            .expect("request log poisoned")
            .seen
    }

    /// The most recent recorded request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state
            .requests
            .lock()
            .expect("request log poisoned")
            .kept
            .back()
            .cloned()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state
            .requests
            .lock()
            .expect("request log poisoned")
            .clear();
    }

    /// How many streams ended early because the client went away (a chunk could not be sent).
    pub fn disconnects(&self) -> u64 {
        self.state.disconnects.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every open connection and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// Accepts connections until `stopped` fires; connection tasks live in a JoinSet so they end
/// together with this task.
async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                Err(err) => {
                    // E.g. EMFILE: back off briefly instead of spinning.
                    eprintln!("lumen-mock: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves HTTP/1.1 (keep-alive) on one connection.
async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(state.clone(), req));
    // Errors here are expected: clients that hang up, and deliberate `die_after` aborts.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn full_body(bytes: impl Into<Bytes>) -> MockBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<MockBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An OpenAI-shaped error response: `{"error":{"message","type","param","code"}}`.
fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<MockBody> {
    let body = ErrorEnvelope {
        error: ErrorBody {
            message,
            kind,
            param,
            code,
        },
    };
    json_response(
        status,
        serde_json::to_vec(&body).expect("mock payloads serialize"),
    )
}

/// `{"error": {...}}`, fields in OpenAI's order.
#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// An entry of `GET /v1/models`.
#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// The body of `GET /v1/models`.
#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// The error a real upstream would send for `status`, used by the `status=N` directive.
fn directive_error(status: u16, model: &str) -> Response<MockBody> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match status {
        401 => error_response(
            code,
            "Incorrect API key provided",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        404 => error_response(
            code,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
        429 => error_response(
            code,
            &format!("Rate limit reached for {model} (mock)."),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        500 => error_response(
            code,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        503 => error_response(
            code,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        ),
        s if s >= 500 => error_response(
            code,
            &format!("Mock upstream error {s}."),
            "server_error",
            None,
            None,
        ),
        s => error_response(
            code,
            &format!("Mock request error {s}."),
            "invalid_request_error",
            None,
            None,
        ),
    };
    if status == 429 {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}

/// Routes one request.
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, Abort> {
    let (parts, body) = req.into_parts();
    let raw = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Abort("request body read failed")),
    };
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let json: Option<Value> = if raw.is_empty() {
        None
    } else {
        serde_json::from_slice(&raw).ok()
    };

    if let Some(control) = path.strip_prefix("/mock/") {
        return Ok(handle_control(
            &state,
            &parts.method,
            control,
            parts.uri.query(),
        ));
    }

    state
        .requests
        .lock()
        .expect("request log poisoned")
        .record(RecordedRequest {
            method: parts.method.clone(),
            path: path_and_query,
            headers: parts.headers.clone(),
            body: json.clone(),
        });

    if let Some(answer) = crate::mock_dialects::route(
        &state,
        &parts.method,
        &path,
        parts.uri.query().unwrap_or(""),
        &parts.headers,
        json.clone(),
    )
    .await
    {
        return answer;
    }

    if path.starts_with("/v1/") {
        if let Some(expected) = &state.cfg.api_key {
            let presented = parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if presented != Some(expected.as_str()) {
                return Ok(error_response(
                    StatusCode::UNAUTHORIZED,
                    "Incorrect API key provided",
                    "invalid_request_error",
                    None,
                    Some("invalid_api_key"),
                ));
            }
        }
    }

    match (&parts.method, path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => {
            chat_completions(&state, json, raw.is_empty(), "openai").await
        }
        (&Method::POST, "/v1/embeddings") => Ok(crate::mock_dialects::embeddings(&state, json)),
        (&Method::GET, "/v1/models") => Ok(models(&state)),
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            Ok(model(&state, &p["/v1/models/".len()..]))
        }
        (method, p) => Ok(error_response(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({method} {p})"),
            "invalid_request_error",
            None,
            None,
        )),
    }
}

/// `/mock/*` control endpoints (not recorded, no auth).
fn handle_control(
    state: &State,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<MockBody> {
    let full = query.is_some_and(|q| q.split('&').any(|p| p == "full=1" || p == "full=true"));
    match (method, path) {
        (&Method::GET, "requests") => {
            let log = state.requests.lock().expect("request log poisoned");
            let items: Vec<Value> = if full {
                log.kept.iter().map(RecordedRequest::to_json).collect()
            } else {
                log.kept.iter().filter_map(|r| r.body.clone()).collect()
            };
            json_response(StatusCode::OK, Value::Array(items).to_string().into_bytes())
        }
        (&Method::DELETE, "requests") => {
            state.requests.lock().expect("request log poisoned").clear();
            let mut response = Response::new(full_body(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        (&Method::GET, "stats") => {
            let requests = state.requests.lock().expect("request log poisoned").seen;
            let body = serde_json::json!({
                "requests": requests,
                "disconnects": state.disconnects.load(Ordering::SeqCst),
            });
            json_response(StatusCode::OK, body.to_string().into_bytes())
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "Unknown mock control endpoint",
            "invalid_request_error",
            None,
            None,
        ),
    }
}

fn model_object(id: &str) -> ModelObject<'_> {
    ModelObject {
        id,
        object: "model",
        created: 1_700_000_000,
        owned_by: "lumen-mock",
    }
}

fn models(state: &State) -> Response<MockBody> {
    let list = ModelList {
        object: "list",
        data: state.cfg.models.iter().map(|id| model_object(id)).collect(),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).expect("mock payloads serialize"),
    )
}

fn model(state: &State, id: &str) -> Response<MockBody> {
    if state.cfg.models.iter().any(|m| m == id) {
        json_response(
            StatusCode::OK,
            serde_json::to_vec(&model_object(id)).expect("mock payloads serialize"),
        )
    } else {
        error_response(
            StatusCode::NOT_FOUND,
            &format!("The model `{id}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        )
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    state: &State,
    json: Option<Value>,
    empty: bool,
    route: &str,
) -> Result<Response<MockBody>, Abort> {
    let Some(body) = json.filter(Value::is_object) else {
        let message = if empty {
            "You must provide a JSON body (mock)."
        } else {
            "We could not parse the JSON body of your request. (mock)"
        };
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            None,
            None,
        ));
    };
    let Some(model) = body.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        ));
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            Some("messages"),
            Some("missing_required_parameter"),
        ));
    }
    let directive = match request_directive(&body) {
        Ok(d) => scoped(state, d, route, &model),
        Err(message) => {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                Some("messages"),
                None,
            ))
        }
    };

    if directive.reset.is_some() {
        return Err(Abort("reset"));
    }
    if let Some(ms) = directive.ttft_ms.filter(|&ms| ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) = directive.status {
        let mut response = match (status, directive.code.as_deref()) {
            (400, Some(code @ "context_length_exceeded")) => error_response(
                StatusCode::BAD_REQUEST,
                &format!("This model's maximum context length is exceeded (mock, {model})."),
                "invalid_request_error",
                Some("messages"),
                Some(code),
            ),
            (400, Some(code @ "content_filter")) => error_response(
                StatusCode::BAD_REQUEST,
                "The response was filtered due to the prompt triggering the content management policy (mock).",
                "invalid_request_error",
                Some("prompt"),
                Some(code),
            ),
            _ => directive_error(status, &model),
        };
        if let Some(secs) = directive.retry_after.filter(|_| status == 429) {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        return Ok(response);
    }

    let requested = directive.tokens.unwrap_or(DEFAULT_TOKENS);
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64));
    let (completion_tokens, finish_reason) = match cap {
        Some(cap) if cap < requested => (cap, "length"),
        _ => (requested, "stop"),
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream
        && body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let n = state.next_id.fetch_add(1, Ordering::SeqCst);
    let plan = Plan {
        id: format!("chatcmpl-mock-{n}"),
        created: unix_now(),
        model,
        prompt_tokens: prompt_tokens(&body),
        completion_tokens,
        finish_reason,
        word: directive.content,
        token_delay: directive
            .delay_ms
            .map_or(state.cfg.token_delay, Duration::from_millis),
        die_after: directive.die_after,
        stall: directive.stall_after.map(|k| {
            (
                k,
                Duration::from_millis(directive.stall_ms.unwrap_or(30_000)),
            )
        }),
        malformed_after: directive.malformed_after,
        eof_after: directive.eof_after,
        no_done: directive.no_done.is_some_and(|n| n > 0),
        include_usage,
        cached: directive.cached.unwrap_or(0),
        reasoning: directive.reasoning.unwrap_or(0),
        tool: directive.tool,
    };

    let mut response = if stream {
        stream_response(state, plan)
    } else {
        if plan.die_after.is_some() {
            return Err(Abort("die_after on a non-stream request"));
        }
        if let Some((_, stall)) = plan.stall {
            tokio::time::sleep(stall).await;
        }
        if plan.malformed_after.is_some() || plan.eof_after.is_some() {
            let mut r = Response::new(full_body(&b"{\"id\": \"chatcmpl-cut"[..]));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(r);
        }
        json_response(StatusCode::OK, plan.completion_json())
    };
    let headers = response.headers_mut();
    headers.insert(
        "x-request-id",
        HeaderValue::from_str(&format!("req_mock_{n}")).expect("ascii header"),
    );
    headers.insert("openai-processing-ms", HeaderValue::from_static("0"));
    Ok(response)
}

/// The directive as it applies to this upstream: without its faults when `only=` names another
/// upstream, or when the `id=` counter says this request succeeds (`times=`, `flap=`).
pub(crate) fn scoped(state: &State, d: Directive, route: &str, model: &str) -> Directive {
    if !d.has_fault() {
        return d;
    }
    if let Some(only) = d.only.as_deref() {
        if only != route && only != model {
            return d.healthy();
        }
    }
    let Some(id) = d.id.clone() else {
        return d;
    };
    let seen = {
        let mut counts = state.fault_counts.lock().expect("fault counts poisoned");
        let n = counts.entry(id).or_insert(0);
        *n += 1;
        *n - 1
    };
    let faulty = match (d.times, d.flap) {
        (Some(times), _) => seen < times,
        (None, Some(f)) if f > 0 => seen % 2 == 0,
        _ => true,
    };
    if faulty {
        d
    } else {
        d.healthy()
    }
}

/// Starts the producer task for an SSE stream and returns the response that drains it.
fn stream_response(state: &State, plan: Plan) -> Response<MockBody> {
    // Capacity 1: the producer runs at most one chunk ahead of the socket, so a vanished client
    // is noticed on the next send and every chunk is flushed on its own.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tokio::spawn(produce_stream(tx, plan, state.disconnects.clone()));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Sends the role chunk, the token chunks (each after the token delay), then the finish chunk,
/// the optional usage chunk and `[DONE]`; or aborts the connection for `die_after`.
async fn produce_stream(
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    plan: Plan,
    disconnects: Arc<AtomicU64>,
) {
    let send = |bytes: Bytes| tx.send(Ok(Frame::data(bytes)));
    let gone = || {
        disconnects.fetch_add(1, Ordering::SeqCst);
    };
    let role = Delta {
        role: Some("assistant"),
        content: Some(String::new()),
        refusal: Some(None),
        tool_calls: None,
    };
    if send(plan.delta_chunk(role, None)).await.is_err() {
        return gone();
    }
    if let Some(name) = &plan.tool {
        // The call's name first, then its arguments in two pieces (as OpenAI streams them).
        let (a, b) = TOOL_ARGUMENTS.split_at(8);
        let deltas = [
            serde_json::json!([{"index": 0, "id": plan.tool_call_id(), "type": "function",
                "function": {"name": name, "arguments": ""}}]),
            serde_json::json!([{"index": 0, "function": {"arguments": a}}]),
            serde_json::json!([{"index": 0, "function": {"arguments": b}}]),
        ];
        for d in deltas {
            if !plan.token_delay.is_zero() {
                tokio::time::sleep(plan.token_delay).await;
            }
            let delta = Delta {
                tool_calls: Some(d),
                ..Delta::default()
            };
            if send(plan.delta_chunk(delta, None)).await.is_err() {
                return gone();
            }
        }
    }
    let die_at = plan.die_after.map(|k| k.min(plan.completion_tokens));
    let tokens = if plan.tool.is_some() {
        0
    } else {
        plan.completion_tokens
    };
    for i in 0..tokens {
        if die_at == Some(i) {
            break;
        }
        if plan.eof_after == Some(i) {
            // A clean end of the body: no finish chunk, no `[DONE]`.
            return;
        }
        if plan.malformed_after == Some(i) {
            let _ = send(Bytes::from_static(
                b"data: {\"id\": \"chatcmpl-broken\", \"choices\": [\n\n",
            ))
            .await;
            return;
        }
        if let Some((_, stall)) = plan.stall.filter(|(k, _)| *k == i) {
            tokio::time::sleep(stall).await;
        }
        if !plan.token_delay.is_zero() {
            tokio::time::sleep(plan.token_delay).await;
        }
        let delta = Delta {
            content: Some(plan.token(i)),
            ..Delta::default()
        };
        if send(plan.delta_chunk(delta, None)).await.is_err() {
            return gone();
        }
    }
    if die_at.is_some() {
        return abort_stream(tx).await;
    }
    let finish = if plan.tool.is_some() {
        "tool_calls"
    } else {
        plan.finish_reason
    };
    if send(plan.delta_chunk(Delta::default(), Some(finish)))
        .await
        .is_err()
    {
        return gone();
    }
    if plan.include_usage
        && send(plan.chunk(Vec::new(), Some(plan.usage())))
            .await
            .is_err()
    {
        return gone();
    }
    if plan.no_done {
        return;
    }
    if send(Bytes::from_static(SSE_DONE)).await.is_err() {
        gone();
    }
}

/// Drops the connection mid-body once the chunks already sent have reached the socket.
///
/// hyper discards its unflushed write buffer when a body errors, so wait until the body has
/// taken every queued chunk (and give it a moment to flush) before sending the error.
pub(crate) async fn abort_stream(tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>) {
    for _ in 0..200 {
        if tx.capacity() == tx.max_capacity() || tx.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _ = tx.send(Err(Box::new(Abort("die_after")))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_request_log_keeps_the_latest_and_counts_all() {
        let mut log = RequestLog::default();
        for i in 0..KEPT_REQUESTS + 5 {
            log.record(RecordedRequest {
                method: Method::POST,
                path: format!("/v1/chat/completions?n={i}"),
                headers: HeaderMap::new(),
                body: None,
            });
        }
        assert_eq!(log.seen, KEPT_REQUESTS + 5);
        assert_eq!(log.kept.len(), KEPT_REQUESTS);
        assert_eq!(log.kept.front().unwrap().path, "/v1/chat/completions?n=5");
        log.clear();
        assert_eq!((log.seen, log.kept.len()), (0, 0));
    }

    #[test]
    fn parses_directive_with_all_keys() {
        let d = parse_directive(
            "hi [mock tokens=3 delay_ms=5 ttft_ms=7 status=429 die_after=2 content=yo] there",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            d,
            Directive {
                tokens: Some(3),
                delay_ms: Some(5),
                ttft_ms: Some(7),
                status: Some(429),
                die_after: Some(2),
                content: Some("yo".into()),
                ..Directive::default()
            }
        );
    }

    #[test]
    fn directive_absent_or_empty() {
        assert_eq!(parse_directive("no directive here").unwrap(), None);
        assert_eq!(parse_directive("[mockery] is not one").unwrap(), None);
        assert_eq!(
            parse_directive("x [mock] y").unwrap(),
            Some(Directive::default())
        );
        assert_eq!(
            parse_directive("[mockery] [mock\ttokens=1]").unwrap(),
            Some(Directive {
                tokens: Some(1),
                ..Directive::default()
            })
        );
    }

    #[test]
    fn directive_errors() {
        assert!(parse_directive("[mock tokens=abc]").is_err());
        assert!(parse_directive("[mock tokens]").is_err());
        assert!(parse_directive("[mock colour=red]").is_err());
        assert!(parse_directive("[mock status=200]").is_err());
        assert!(parse_directive("[mock tokens=1").is_err());
        assert!(parse_directive("[mock tokens=-1]").is_err());
    }

    #[test]
    fn directive_comes_from_last_user_message() {
        let body = json!({
            "messages": [
                {"role": "user", "content": "[mock tokens=1]"},
                {"role": "assistant", "content": "[mock tokens=2]"},
                {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "[mock tokens=3]"}]},
                {"role": "system", "content": "[mock tokens=4]"}
            ]
        });
        assert_eq!(request_directive(&body).unwrap().tokens, Some(3));
        assert_eq!(
            request_directive(&json!({"messages": []})).unwrap(),
            Directive::default()
        );
    }

    #[test]
    fn if_model_limits_a_directive_to_one_model() {
        let body = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "[mock content=no if_model=cheap]"}]});
        assert_eq!(
            request_directive(&body("cheap"))
                .unwrap()
                .content
                .as_deref(),
            Some("no")
        );
        assert_eq!(
            request_directive(&body("strong")).unwrap(),
            Directive::default()
        );
    }

    #[test]
    fn prompt_token_formula() {
        assert_eq!(prompt_tokens(&json!({})), 3);
        assert_eq!(
            prompt_tokens(&json!({"messages": [{"role": "user", "content": "hello"}]})),
            8
        );
        // "abcd" → 1, "" → 0, null → 0, parts "ab"+"cde" (5 chars) → 2, "é" counts one char → 1.
        let body = json!({"messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "cde"}]},
            {"role": "user", "content": "é"}
        ]});
        assert_eq!(
            prompt_tokens(&body),
            3 + (3 + 1) + 3 + 3 + (3 + 2) + (3 + 1)
        );
    }

    fn plan(include_usage: bool) -> Plan {
        Plan {
            id: "chatcmpl-mock-1".into(),
            created: 1,
            model: "gpt-4o-mini".into(),
            prompt_tokens: 8,
            completion_tokens: 2,
            finish_reason: "stop",
            word: None,
            token_delay: Duration::ZERO,
            die_after: None,
            stall: None,
            malformed_after: None,
            eof_after: None,
            no_done: false,
            include_usage,
            cached: 0,
            reasoning: 0,
            tool: None,
        }
    }

    fn parse_event(bytes: &Bytes) -> Value {
        let text = std::str::from_utf8(bytes).unwrap();
        let payload = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert!(!payload.contains('\n'), "one event, one line");
        serde_json::from_str(payload).unwrap()
    }

    #[test]
    fn sse_framing_and_chunk_shapes() {
        let p = plan(false);
        let role = parse_event(&p.delta_chunk(
            Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                refusal: Some(None),
                tool_calls: None,
            },
            None,
        ));
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["system_fingerprint"], "fp_mock");
        assert_eq!(
            role["choices"][0]["delta"],
            json!({"role": "assistant", "content": "", "refusal": null})
        );
        assert_eq!(role["choices"][0]["finish_reason"], Value::Null);
        assert!(
            role.get("usage").is_none(),
            "no usage key without include_usage"
        );

        let tok = parse_event(&p.delta_chunk(
            Delta {
                content: Some(p.token(0)),
                ..Delta::default()
            },
            None,
        ));
        assert_eq!(tok["choices"][0]["delta"], json!({"content": "tok0 "}));
        let fin = parse_event(&p.delta_chunk(Delta::default(), Some("stop")));
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        assert_eq!(SSE_DONE, b"data: [DONE]\n\n");
    }

    #[test]
    fn usage_chunks_with_include_usage() {
        let p = plan(true);
        let tok = parse_event(&p.delta_chunk(
            Delta {
                content: Some("x".into()),
                ..Delta::default()
            },
            None,
        ));
        assert!(
            tok.get("usage").is_some_and(Value::is_null),
            "usage: null on regular chunks"
        );
        let usage = parse_event(&p.chunk(Vec::new(), Some(p.usage())));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 8);
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_eq!(usage["usage"]["total_tokens"], 10);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(
            usage["usage"]["completion_tokens_details"]["rejected_prediction_tokens"],
            0
        );
    }

    #[test]
    fn completion_shape() {
        let mut p = plan(false);
        p.word = Some("hey".into());
        let v: Value = serde_json::from_slice(&p.completion_json()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": "hey hey ", "refusal": null})
        );
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["usage"]["total_tokens"], 10);
    }

    /// A response as seen by a plain HTTP/1.1 client: each body frame with its arrival time.
    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        frames: Vec<(Duration, Bytes)>,
        body_error: bool,
    }

    impl Reply {
        fn text(&self) -> String {
            self.frames
                .iter()
                .map(|(_, b)| String::from_utf8_lossy(b))
                .collect()
        }

        fn json(&self) -> Value {
            serde_json::from_str(&self.text()).unwrap()
        }

        /// The SSE `data:` payloads, in order.
        fn events(&self) -> Vec<String> {
            let text = self.text();
            text.split_terminator("\n\n")
                .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
                .collect()
        }
    }

    async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    async fn send(
        mock: &MockUpstream,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> hyper::Result<Reply> {
        let mut sender = connect(mock.addr()).await;
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", mock.addr().to_string());
        if let Some(key) = key {
            builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let start = std::time::Instant::now();
        let response = sender
            .send_request(builder.body(Full::new(payload)).unwrap())
            .await?;
        let (parts, mut body) = response.into_parts();
        let mut reply = Reply {
            status: parts.status,
            headers: parts.headers,
            frames: Vec::new(),
            body_error: false,
        };
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        reply.frames.push((start.elapsed(), data));
                    }
                }
                Err(_) => {
                    reply.body_error = true;
                    break;
                }
            }
        }
        Ok(reply)
    }

    fn chat(content: &str, extra: Value) -> Value {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    async fn keyed_mock(token_delay: Duration) -> MockUpstream {
        MockUpstream::start(MockConfig {
            api_key: Some("sk-mock".into()),
            token_delay,
            ..MockConfig::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn auth_non_stream_and_recording() {
        let mock = keyed_mock(Duration::ZERO).await;
        assert!(
            mock.base_url().starts_with("http://127.0.0.1:") && mock.base_url().ends_with("/v1")
        );
        let body = chat("hello [mock tokens=3]", json!({"seed": 7}));

        let denied = send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            Some("nope"),
            Some(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            denied.text(),
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
        );

        let ok = send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            Some("sk-mock"),
            Some(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            ok.headers["content-length"],
            ok.text().len().to_string().as_str()
        );
        let v = ok.json();
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(&body));
        assert_eq!(v["usage"]["completion_tokens"], 3);

        assert_eq!(mock.request_count(), 2);
        let last = mock.last_request().unwrap();
        assert_eq!(last.method, Method::POST);
        assert_eq!(last.path, "/v1/chat/completions");
        assert_eq!(last.header("authorization"), Some("Bearer sk-mock"));
        assert_eq!(last.body.as_ref().unwrap()["seed"], 7);

        let recorded = send(&mock, Method::GET, "/mock/requests", None, None)
            .await
            .unwrap();
        assert_eq!(
            recorded.json().as_array().unwrap().len(),
            2,
            "control endpoints are not recorded"
        );
        let models = send(&mock, Method::GET, "/v1/models", Some("sk-mock"), None)
            .await
            .unwrap();
        assert_eq!(models.json()["data"][1]["id"], "gpt-4o");
        mock.clear_requests();
        assert_eq!(mock.request_count(), 0);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn stream_is_paced_and_complete() {
        let mock = keyed_mock(Duration::from_millis(1)).await;
        let body = chat(
            "[mock tokens=3 delay_ms=60]",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        );
        let reply = send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            Some("sk-mock"),
            Some(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers[CONTENT_TYPE], "text/event-stream");
        assert!(!reply.body_error);
        let events = reply.events();
        assert_eq!(
            events.len(),
            7,
            "role, 3 tokens, finish, usage, [DONE]: {events:?}"
        );
        assert_eq!(events.last().unwrap(), "[DONE]");
        let usage: Value = serde_json::from_str(&events[5]).unwrap();
        assert_eq!(usage["usage"]["prompt_tokens"], prompt_tokens(&body));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        // Token chunks arrive as separate frames, one delay apart.
        let token_times: Vec<Duration> = reply
            .frames
            .iter()
            .filter(|(_, b)| String::from_utf8_lossy(b).contains("\"tok"))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(token_times.len(), 3, "each token chunk is its own frame");
        for pair in token_times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(45),
                "{token_times:?}"
            );
        }
        assert_eq!(mock.disconnects(), 0);
    }

    #[tokio::test]
    async fn die_after_truncates_stream_and_drops_non_stream() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let body = chat("[mock tokens=5 die_after=2]", json!({"stream": true}));
        let reply = send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            None,
            Some(body),
        )
        .await
        .unwrap();
        assert!(reply.body_error, "connection must break mid-body");
        let text = reply.text();
        assert!(
            text.contains("\"tok1 \"") && !text.contains("tok2"),
            "{text}"
        );
        assert!(!text.contains("[DONE]") && !text.contains("finish_reason\":\"stop"));

        let plain = chat("[mock die_after=0]", json!({}));
        assert!(send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            None,
            Some(plain)
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn status_directive_and_ttft() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let started = std::time::Instant::now();
        let body = chat("[mock status=429 ttft_ms=100]", json!({}));
        let reply = send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            None,
            Some(body),
        )
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers["retry-after"], "1");
        assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

        let bad = send(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            None,
            Some(chat("[mock nope=1]", json!({}))),
        )
        .await
        .unwrap();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn early_client_disconnect_is_counted() {
        let mock = MockUpstream::start(MockConfig {
            token_delay: Duration::from_millis(20),
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let mut sender = connect(mock.addr()).await;
        let body = chat("[mock tokens=100]", json!({"stream": true}));
        let request = Request::post("/v1/chat/completions")
            .header("host", "mock")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let mut response = sender.send_request(request).await.unwrap().into_body();
        response.frame().await.unwrap().unwrap();
        drop(response);
        drop(sender);
        for _ in 0..200 {
            if mock.disconnects() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(mock.disconnects(), 1);
    }
}
