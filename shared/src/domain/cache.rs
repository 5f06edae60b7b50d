//! The exact response cache, as pure decisions: whether a request may use the cache (from what
//! admission already read: the key record, its plan, the request and its `cache-control` header,
//! so a request that does not use the cache costs no key-value operation), the key of an
//! answer (sha256 of the canonical request, scoped by tenant), what an entry holds, and how a hit
//! is replayed: a whole answer as it was, a stream with its original chunking and usage.
//! The store side (lookup, fill, size caps) is [`crate::store::cache`].

use crate::error::ApiError;
use crate::store::log::canonical_json;
use crate::wire::openai::Usage;
use crate::wire::sse;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Default time to live of an entry.
pub const DEFAULT_TTL_S: u64 = 3_600;
/// Longest time to live: entries never outlive the per-tenant size window (one UTC day), so a
/// tenant's live entries are at most what it wrote today and yesterday.
pub const MAX_TTL_S: u64 = 86_400;
/// Default size cap of one entry (the answer as stored).
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 256 * 1024;
/// Default cap on the bytes a tenant writes to the cache per UTC day.
pub const DEFAULT_TENANT_BYTES_PER_DAY: u64 = 64 * 1024 * 1024;

/// Body fields that do not change the answer, left out of the cache key.
const NO_EFFECT: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "lumen",
    "models",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

/// Which requests are cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Only deterministic requests: `temperature` 0 or a `seed` (the default).
    #[default]
    Deterministic,
    /// Every request.
    All,
}

/// Cache settings of a key (`"cache"` of `POST /admin/keys`) or a plan (`[plans.<name>.cache]`).
/// Unset fields take the next layer's value: request, then key, then plan, then the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// `false` opts out: no lookup, no write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Time to live of written entries, and the oldest entry a lookup accepts (1 to 86,400 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Which requests are cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Larger answers are not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_bytes: Option<u64>,
    /// Bytes the tenant may write per UTC day; past it, answers are not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tenant_bytes_per_day: Option<u64>,
}

impl CachePolicy {
    /// Checks the values; `at` names the field in messages (`cache`, `plans.x.cache`).
    pub fn check(&self, at: &str) -> Result<(), String> {
        if let Some(t) = self.ttl_s {
            if !(1..=MAX_TTL_S).contains(&t) {
                return Err(format!(
                    "{at}.ttl_s must be 1 to {MAX_TTL_S} seconds, got {t}"
                ));
            }
        }
        for (name, v) in [
            ("max_entry_bytes", self.max_entry_bytes),
            ("max_tenant_bytes_per_day", self.max_tenant_bytes_per_day),
        ] {
            if v == Some(0) {
                return Err(format!("{at}.{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What the request's `lumen.cache` asked: `true`, `false`, or `{"enabled", "ttl_s", "mode"}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestCache {
    /// Forced on (`true` also caches a non-deterministic request) or off.
    pub enabled: Option<bool>,
    /// Time to live (and oldest entry accepted).
    pub ttl_s: Option<u64>,
    /// Which requests.
    pub mode: Option<Mode>,
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(param), "invalid_value")
}

/// Takes `lumen.cache` out of a body (it never goes upstream or to the router) and checks it;
/// errors name the field.
pub fn take_request_option(body: &mut Map<String, Value>) -> Result<RequestCache, ApiError> {
    let Some(Value::Object(lumen)) = body.get_mut("lumen") else {
        return Ok(RequestCache::default());
    };
    let Some(v) = lumen.remove("cache") else {
        return Ok(RequestCache::default());
    };
    if lumen.is_empty() {
        body.remove("lumen");
    }
    match v {
        Value::Null => Ok(RequestCache::default()),
        Value::Bool(b) => Ok(RequestCache {
            enabled: Some(b),
            mode: b.then_some(Mode::All),
            ttl_s: None,
        }),
        Value::Object(o) => {
            let mut r = RequestCache::default();
            for (k, v) in o {
                let param = format!("lumen.cache.{k}");
                match k.as_str() {
                    "enabled" => {
                        r.enabled =
                            Some(v.as_bool().ok_or_else(|| {
                                bad(&param, format!("'{param}' must be a boolean"))
                            })?)
                    }
                    "ttl_s" => {
                        let t = v
                            .as_u64()
                            .filter(|t| (1..=MAX_TTL_S).contains(t))
                            .ok_or_else(|| {
                                bad(
                                    &param,
                                    format!("'{param}' must be an integer from 1 to {MAX_TTL_S}"),
                                )
                            })?;
                        r.ttl_s = Some(t);
                    }
                    "mode" => {
                        r.mode = Some(match v.as_str() {
                            Some("deterministic") => Mode::Deterministic,
                            Some("all") => Mode::All,
                            _ => {
                                return Err(bad(
                                    &param,
                                    format!("'{param}' must be \"deterministic\" or \"all\""),
                                ))
                            }
                        })
                    }
                    _ => {
                        return Err(bad(
                            &param,
                            format!("unknown field '{param}'; known: enabled, ttl_s, mode"),
                        ))
                    }
                }
            }
            Ok(r)
        }
        _ => Err(bad(
            "lumen.cache",
            "'lumen.cache' must be a boolean or an object {\"enabled\", \"ttl_s\", \"mode\"}"
                .into(),
        )),
    }
}

/// Whether a request is deterministic: `temperature` 0 or a `seed`.
pub fn is_deterministic(body: &Map<String, Value>) -> bool {
    body.get("temperature").and_then(Value::as_f64) == Some(0.0)
        || body.get("seed").is_some_and(|s| !s.is_null())
}

/// The `cache-control` directives that matter: `no-store` (no lookup, no write) and `no-cache`
/// (no lookup, but the answer is written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
}

impl Control {
    /// Parses a `cache-control` header value.
    pub fn parse(header: Option<&str>) -> Control {
        let mut c = Control::default();
        for d in header.unwrap_or_default().split(',') {
            match d.trim().to_ascii_lowercase().as_str() {
                "no-store" => c.no_store = true,
                "no-cache" => c.no_cache = true,
                _ => {}
            }
        }
        c
    }
}

/// Everything the decision looks at, all already in hand at admission.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The key's own settings.
    pub key: Option<&'a CachePolicy>,
    /// Its plan's settings.
    pub plan: Option<&'a CachePolicy>,
    /// The key or its plan is zero-retention: nothing of its content is ever stored.
    pub zero_retention: bool,
    /// `lumen.cache`.
    pub request: &'a RequestCache,
    /// `cache-control`.
    pub control: Control,
    /// The request body.
    pub body: Option<&'a Map<String, Value>>,
}

/// What to do with the cache for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No cache operation at all (`x-lumen-cache: bypass`), and why.
    Bypass(&'static str),
    /// Use it.
    Use(Use),
}

/// How a cacheable request uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    /// Look an answer up first (false with `cache-control: no-cache`).
    pub lookup: bool,
    /// Time to live of the entry written, and the oldest entry a lookup accepts.
    pub ttl_s: u64,
    /// Answers larger than this are not cached.
    pub max_entry_bytes: u64,
    /// The tenant's daily write cap.
    pub tenant_bytes_per_day: u64,
}

/// Decides from the layers (request, then key, then plan, then defaults). An opt-out of the key
/// or plan, zero retention and `no-store` always win; the request may opt out, or opt a
/// non-deterministic request in.
pub fn decide(inp: &Inputs) -> Decision {
    let layers = [inp.key, inp.plan];
    let first =
        |f: &dyn Fn(&CachePolicy) -> Option<u64>| layers.iter().flatten().find_map(|p| f(p));
    if inp.zero_retention {
        return Decision::Bypass("zero-retention key or plan");
    }
    if inp.control.no_store {
        return Decision::Bypass("cache-control: no-store");
    }
    if layers.iter().flatten().any(|p| p.enabled == Some(false)) {
        return Decision::Bypass("cache disabled for this key or plan");
    }
    if inp.request.enabled == Some(false) {
        return Decision::Bypass("lumen.cache is false");
    }
    let mode = inp
        .request
        .mode
        .or_else(|| layers.iter().flatten().find_map(|p| p.mode))
        .unwrap_or_default();
    if mode == Mode::Deterministic && !inp.body.is_some_and(is_deterministic) {
        return Decision::Bypass("not deterministic (no temperature 0 and no seed)");
    }
    Decision::Use(Use {
        lookup: !inp.control.no_cache,
        ttl_s: inp
            .request
            .ttl_s
            .or_else(|| first(&|p| p.ttl_s))
            .unwrap_or(DEFAULT_TTL_S)
            .clamp(1, MAX_TTL_S),
        max_entry_bytes: first(&|p| p.max_entry_bytes).unwrap_or(DEFAULT_MAX_ENTRY_BYTES),
        tenant_bytes_per_day: first(&|p| p.max_tenant_bytes_per_day)
            .unwrap_or(DEFAULT_TENANT_BYTES_PER_DAY),
    })
}

/// The cache key of a request: hex sha256 of the canonical JSON of the tenant, the resolved
/// model, whether it streams, and every body field that can change the answer (messages,
/// tools, sampling parameters, unknown fields too).
pub fn request_hash(tenant: &str, model: &str, stream: bool, body: &Map<String, Value>) -> String {
    let mut fields = Map::new();
    for (k, v) in body {
        if !NO_EFFECT.contains(&k.as_str()) {
            fields.insert(k.clone(), v.clone());
        }
    }
    let doc = json!({"v": 1, "tenant": tenant, "model": model, "stream": stream, "body": fields});
    hex::encode(Sha256::digest(canonical_json(&doc).as_bytes()))
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    /// Unix ms it was written.
    pub created_ms: u64,
    /// Unix ms after which it is not served.
    pub expires_ms: u64,
    /// Catalog model that answered.
    pub model: String,
    /// Provider that answered.
    pub provider: String,
    /// What the original answer used.
    pub usage: Usage,
    /// What the original answer cost, nano-dollars (what a hit saves).
    pub cost_nanos: i64,
    /// The answer.
    pub body: Stored,
}

/// The answer as stored: no `lumen` object (a hit gets its own), no usage chunk (a stream hit
/// gets one from `usage` when it asks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stored {
    /// A whole answer, JSON text.
    Whole(String),
    /// A stream: the `data` of each chunk, in the original order and chunking.
    Stream(Vec<String>),
}

impl CacheEntry {
    /// Stored size in bytes (what the caps count).
    pub fn size(&self) -> u64 {
        serde_json::to_vec(self).map_or(u64::MAX, |b| b.len() as u64)
    }

    /// Whether it may be served at `now_ms` to a request accepting entries up to `ttl_s` old.
    pub fn fresh(&self, now_ms: u64, ttl_s: u64) -> bool {
        now_ms < self.expires_ms && now_ms < self.created_ms.saturating_add(ttl_s * 1000)
    }
}

/// Collects an answer as it goes to the client, to store it after a miss.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Vec<String>,
    bytes: usize,
    limit: usize,
    over: bool,
}

impl Recorder {
    /// A recorder that gives up past `limit` bytes.
    pub fn new(limit: u64) -> Recorder {
        Recorder {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            ..Recorder::default()
        }
    }

    /// One client event (the `data` of an SSE event): chunks are kept without `usage` and
    /// `lumen`; the usage-only chunk, `[DONE]` and anything that is not a chunk are skipped.
    pub fn on_data(&mut self, data: &str) {
        if self.over {
            return;
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return;
        }
        let stripped = chunk.remove("usage").is_some() | chunk.remove("lumen").is_some();
        let text = if stripped {
            Value::Object(chunk).to_string()
        } else {
            data.to_string()
        };
        self.bytes += text.len();
        if self.bytes > self.limit {
            self.over = true;
            self.events.clear();
            return;
        }
        self.events.push(text);
    }

    /// The stream as stored, unless it outgrew the limit or was empty.
    pub fn into_stream(self) -> Option<Stored> {
        (!self.over && !self.events.is_empty()).then_some(Stored::Stream(self.events))
    }
}

/// A whole answer as stored: the body without its `lumen` object.
pub fn stored_whole(body: &[u8]) -> Option<Stored> {
    stored_whole_value(serde_json::from_slice::<Value>(body).ok()?)
}

/// [`stored_whole`] of an answer already parsed (`None` unless it is a JSON object).
pub fn stored_whole_value(mut answer: Value) -> Option<Stored> {
    let v = answer.as_object_mut()?;
    v.remove("lumen");
    Some(Stored::Whole(answer.to_string()))
}

/// The `lumen` object of a hit: no cost, what it saved, how old the entry is.
pub fn hit_lumen(e: &CacheEntry, now_ms: u64) -> Value {
    let saved = e.cost_nanos as f64 / crate::domain::pricing::NANOS_PER_USD;
    json!({
        "cost": 0.0,
        "cost_per_1k": 0.0,
        "currency": "USD",
        "model": e.model,
        "provider": e.provider,
        "cache": {
            "status": "hit",
            "saved": saved,
            "age_s": now_ms.saturating_sub(e.created_ms) / 1000,
        },
    })
}

/// The body of a whole hit.
pub fn replay_whole(e: &CacheEntry, now_ms: u64) -> Option<Vec<u8>> {
    let Stored::Whole(text) = &e.body else {
        return None;
    };
    let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    v.insert("lumen".into(), hit_lumen(e, now_ms));
    Some(Value::Object(v).to_string().into_bytes())
}

fn is_finish(chunk: &Map<String, Value>) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
        })
}

/// The SSE events of a stream hit, in the original chunking: the chunks, then (when the client
/// asked for usage) the usage chunk, then `[DONE]`; the `lumen` object rides on the last chunk
/// before `[DONE]`, as on any stream.
pub fn replay_stream(e: &CacheEntry, include_usage: bool, now_ms: u64) -> Option<Vec<Vec<u8>>> {
    let Stored::Stream(events) = &e.body else {
        return None;
    };
    let lumen = hit_lumen(e, now_ms);
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(events.len() + 2);
    let last_finish = events.iter().rposition(
        |d| matches!(serde_json::from_str::<Value>(d), Ok(Value::Object(c)) if is_finish(&c)),
    );
    let mut head: Option<Map<String, Value>> = None;
    for (i, d) in events.iter().enumerate() {
        if head.is_none() {
            if let Ok(Value::Object(c)) = serde_json::from_str::<Value>(d) {
                head = Some(c);
            }
        }
        if !include_usage && Some(i) == last_finish {
            if let Ok(Value::Object(mut c)) = serde_json::from_str::<Value>(d) {
                c.insert("lumen".into(), lumen.clone());
                out.push(sse::data_event(&Value::Object(c).to_string()));
                continue;
            }
        }
        out.push(sse::data_event(d));
    }
    if include_usage {
        let head = head.unwrap_or_default();
        let mut chunk = Map::new();
        for k in ["id", "object", "created", "model", "system_fingerprint"] {
            if let Some(v) = head.get(k) {
                chunk.insert(k.into(), v.clone());
            }
        }
        chunk.insert("choices".into(), json!([]));
        chunk.insert("usage".into(), e.usage.to_openai());
        chunk.insert("lumen".into(), lumen);
        out.push(sse::data_event(&Value::Object(chunk).to_string()));
    }
    out.push(sse::data_event("[DONE]"));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn only_deterministic_requests_by_default_and_opt_outs_win() {
        let det = body(json!({"temperature": 0, "messages": []}));
        let hot = body(json!({"temperature": 0.7, "messages": []}));
        let seeded = body(json!({"seed": 3, "temperature": 1.0}));
        let none = RequestCache::default();
        let inp = |b| Inputs {
            key: None,
            plan: None,
            zero_retention: false,
            request: &none,
            control: Control::default(),
            body: Some(b),
        };
        let (det, hot, seeded) = (&det, &hot, &seeded);
        assert!(
            matches!(decide(&inp(det)), Decision::Use(u) if u.lookup && u.ttl_s == DEFAULT_TTL_S)
        );
        assert!(matches!(decide(&inp(seeded)), Decision::Use(_)));
        assert!(matches!(decide(&inp(hot)), Decision::Bypass(_)));
        // The request may opt a non-deterministic request in, with its own TTL.
        let all = RequestCache {
            enabled: Some(true),
            mode: Some(Mode::All),
            ttl_s: Some(60),
        };
        let d = decide(&Inputs {
            request: &all,
            ..inp(hot)
        });
        assert!(matches!(d, Decision::Use(u) if u.ttl_s == 60));
        // … but never past zero retention, no-store, or a key's or plan's opt-out.
        let off = CachePolicy {
            enabled: Some(false),
            ..CachePolicy::default()
        };
        for i in [
            Inputs {
                zero_retention: true,
                request: &all,
                ..inp(det)
            },
            Inputs {
                control: Control::parse(Some("No-Store")),
                ..inp(det)
            },
            Inputs {
                plan: Some(&off),
                request: &all,
                ..inp(det)
            },
        ] {
            assert!(matches!(decide(&i), Decision::Bypass(_)), "{i:?}");
        }
        // no-cache: no lookup, but the answer is written.
        let d = decide(&Inputs {
            control: Control::parse(Some("max-age=0, no-cache")),
            ..inp(det)
        });
        assert!(matches!(d, Decision::Use(u) if !u.lookup));
        // Key settings come before the plan's.
        let key = CachePolicy {
            ttl_s: Some(10),
            ..CachePolicy::default()
        };
        let plan = CachePolicy {
            ttl_s: Some(20),
            max_entry_bytes: Some(5),
            mode: Some(Mode::All),
            ..CachePolicy::default()
        };
        let d = decide(&Inputs {
            key: Some(&key),
            plan: Some(&plan),
            ..inp(hot)
        });
        assert!(matches!(d, Decision::Use(u) if u.ttl_s == 10 && u.max_entry_bytes == 5));
    }

    #[test]
    fn the_request_option_is_taken_out_and_checked() {
        let mut b = body(json!({"lumen": {"cache": {"ttl_s": 5}, "retries": 1}}));
        let r = take_request_option(&mut b).unwrap();
        assert_eq!(r.ttl_s, Some(5));
        assert_eq!(b, body(json!({"lumen": {"retries": 1}})));
        let mut b = body(json!({"lumen": {"cache": false}}));
        assert_eq!(take_request_option(&mut b).unwrap().enabled, Some(false));
        assert!(b.is_empty());
        for (v, param) in [
            (json!({"ttl": 5}), "lumen.cache.ttl"),
            (json!({"ttl_s": 0}), "lumen.cache.ttl_s"),
            (json!({"mode": "some"}), "lumen.cache.mode"),
            (json!(3), "lumen.cache"),
        ] {
            let mut b = body(json!({"lumen": {"cache": v}}));
            let e = take_request_option(&mut b).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param));
        }
        assert!(CachePolicy {
            ttl_s: Some(MAX_TTL_S + 1),
            ..CachePolicy::default()
        }
        .check("cache")
        .unwrap_err()
        .contains("cache.ttl_s"));
    }

    #[test]
    fn the_key_covers_what_changes_the_answer_and_the_tenant() {
        let b = body(
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "user": "u1", "stream_options": {"include_usage": true}}),
        );
        let h = request_hash("t1", "gpt-4o-mini", false, &b);
        assert_eq!(h.len(), 64);
        // Fields that do not change the answer do not change the key.
        let mut same = b.clone();
        same.insert("user".into(), json!("u2"));
        same.insert("model".into(), json!("gpt-4o-mini"));
        assert_eq!(request_hash("t1", "gpt-4o-mini", false, &same), h);
        // Everything else does, and so do the tenant, the model and streaming.
        let mut hotter = b.clone();
        hotter.insert("temperature".into(), json!(0.5));
        for other in [
            request_hash("t2", "gpt-4o-mini", false, &b),
            request_hash("t1", "gpt-4o", false, &b),
            request_hash("t1", "gpt-4o-mini", true, &b),
            request_hash("t1", "gpt-4o-mini", false, &hotter),
        ] {
            assert_ne!(other, h);
        }
    }

    fn entry(body: Stored) -> CacheEntry {
        CacheEntry {
            created_ms: 1_000,
            expires_ms: 61_000,
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                ..Usage::default()
            },
            cost_nanos: 2_700,
            body,
        }
    }

    #[test]
    fn a_whole_hit_is_the_answer_with_a_hit_lumen_object() {
        let orig = json!({"id": "c1", "choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 10}, "lumen": {"cost": 1.0}});
        let stored = stored_whole(orig.to_string().as_bytes()).unwrap();
        let e = entry(stored);
        assert!(e.fresh(60_999, 3_600) && !e.fresh(61_000, 3_600) && !e.fresh(11_001, 10));
        let v: Value = serde_json::from_slice(&replay_whole(&e, 31_000).unwrap()).unwrap();
        assert_eq!(v["choices"], orig["choices"]);
        assert_eq!(v["usage"], orig["usage"]);
        assert_eq!(v["lumen"]["cost"], 0.0);
        assert_eq!(
            v["lumen"]["cache"],
            json!({"status": "hit", "saved": 2.7e-6, "age_s": 30})
        );
    }

    #[test]
    fn a_stream_hit_keeps_the_chunking_and_adds_usage_when_asked() {
        let chunks = [
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}], "usage": null}),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "lumen": {"cost": 1.0}}),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": [], "usage": {"prompt_tokens": 10}}),
        ];
        let mut r = Recorder::new(1 << 20);
        for c in &chunks {
            r.on_data(&c.to_string());
        }
        r.on_data("[DONE]");
        let e = entry(r.into_stream().unwrap());
        let Stored::Stream(ev) = &e.body else {
            panic!()
        };
        assert_eq!(ev.len(), 3);
        let parse = |events: Vec<Vec<u8>>| -> Vec<String> {
            let bytes: Vec<u8> = events.concat();
            sse::Parser::default()
                .push(&bytes)
                .into_iter()
                .map(|e| e.data)
                .collect()
        };
        let plain = parse(replay_stream(&e, false, 2_000).unwrap());
        assert_eq!(plain.len(), 4);
        assert_eq!(plain[3], "[DONE]");
        let last: Value = serde_json::from_str(&plain[2]).unwrap();
        assert_eq!(last["lumen"]["cache"]["status"], "hit");
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let with_usage = parse(replay_stream(&e, true, 2_000).unwrap());
        assert_eq!(with_usage.len(), 5);
        let u: Value = serde_json::from_str(&with_usage[3]).unwrap();
        assert_eq!(u["usage"]["completion_tokens"], 2);
        assert_eq!(u["id"], "c1");
        assert_eq!(u["lumen"]["cost"], 0.0);
        let fin: Value = serde_json::from_str(&with_usage[2]).unwrap();
        assert!(fin.get("lumen").is_none());
        // An answer over the entry cap is not recorded.
        let mut small = Recorder::new(10);
        small.on_data(&chunks[1].to_string());
        assert!(small.into_stream().is_none());
    }
}
