//! Internal contracts between components: small JSON documents sent over
//! `http://<component>.spin.internal/...`. Defined once here so each component is testable alone.

use crate::domain::catalog::{Dialect, Price};
use crate::wire::openai::Usage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Internal routes.
pub mod routes {
    /// router: `POST` a [`super::PlanRequest`], get a [`super::Plan`].
    pub const PLAN: &str = "http://router.spin.internal/plan";
    /// router: `POST` `{"allowed_models", "requests": [body, …], "explain"}`, get plans.
    pub const ROUTE: &str = "http://router.spin.internal/route";
    /// router: `GET` the `/v1/models` list.
    pub const MODELS: &str = "http://router.spin.internal/models";
    /// provider: `POST` a [`super::CallRequest`], get the client-facing response.
    pub const CALL: &str = "http://provider.spin.internal/call";
    /// meter: `POST` a [`super::SettleRequest`].
    pub const SETTLE: &str = "http://meter.spin.internal/settle";
    /// meter: `GET` with `?key_id=` (or `?key_ids=a,b`) and `from`, `to`, `model`,
    /// `group_by` for a [`super::UsageSummary`].
    pub const USAGE: &str = "http://meter.spin.internal/usage";
    /// meter: `GET` with `?key_id=` (or `?key_ids=`) and `limit` for the newest usage records.
    pub const RECORDS: &str = "http://meter.spin.internal/records";
}

/// Headers on internal responses (never forwarded to clients).
pub mod headers {
    /// provider → auth, non-stream and errors: the [`super::UsageReport`] as JSON.
    pub const USAGE: &str = "lumen-usage";
    /// provider → auth: milliseconds the upstream took to answer with headers.
    pub const UPSTREAM_MS: &str = "lumen-upstream-ms";
    /// provider → auth: milliseconds spent before the answer's head on anything but the serving
    /// upstream's own time to headers: failed attempts, retry backoff, a queue's cold start.
    /// Like [`UPSTREAM_MS`], not counted in `x-lumen-overhead-ms`.
    pub const WAITED_MS: &str = "lumen-waited-ms";
    /// provider → auth: catalog model that served.
    pub const MODEL: &str = "lumen-model";
    /// provider → auth: provider that served.
    pub const PROVIDER: &str = "lumen-provider";
    /// provider → auth, non-stream: the cost in dollars (auth sends it as `x-lumen-cost`).
    pub const COST: &str = "lumen-cost";
    /// provider → auth: cold-start wait in ms (auth sends it as `x-lumen-cold-start-ms`).
    pub const COLD_START: &str = "lumen-cold-start-ms";
    /// provider → auth: candidates the cascade escalated from, with why.
    pub const CASCADE: &str = "lumen-cascade";
    /// provider → auth: the attempts before the answer, `provider/model=outcome` comma-separated
    /// (auth sends it as `x-lumen-fallbacks`).
    pub const FALLBACKS: &str = "lumen-fallbacks";
    /// provider → auth: every attempt before the answer's head as JSON
    /// (`[{"provider","model","outcome","latency_ms"}]`, the answer's `lumen.attempts`), for the
    /// request's trace.
    pub const ATTEMPTS: &str = "lumen-attempts";
}

/// The SSE event name of the provider's final, internal usage event (stripped by auth).
pub const USAGE_EVENT: &str = "lumen-usage";

/// auth → router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanRequest {
    /// The `model` of the request.
    pub model: String,
    /// Models the key may use; empty means all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// The client's body (for tiers: scoring, capabilities, routing preferences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Map<String, serde_json::Value>>,
    /// The request's own ordered fallback models (OpenRouter-style `models`); they replace the
    /// catalog's `fallbacks` for this request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The reference model for `lumen.saved` the request, key or plan asks for (auth resolves
    /// which applies); none = the plan's default ([`crate::domain::saved`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::domain::saved::ReferenceAsk>,
    /// The shadow experiment of the key's plan, as (plan name, settings): the router resolves
    /// its models and rolls its share with the catalog's own experiments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<(String, crate::domain::shadow::ShadowConfig)>,
    /// Store keys the caller reads for this request anyway (auth: the tenant's record): the
    /// router reads them in the batch of the candidates' health, so they cost no round trip of
    /// their own, and hands their values back in [`Plan::read_also`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_also: Vec<String>,
}

/// Where and how to call a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderTarget {
    /// Provider name in the catalog.
    pub name: String,
    /// Wire dialect.
    pub dialect: Dialect,
    /// Spin variable with the base URL.
    pub base_url_variable: String,
    /// Spin variable with the API key.
    pub api_key_variable: String,
    /// Header carrying the key as-is instead of the dialect's default (catalog `auth_header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<String>,
    /// Catalog `api_version` (Azure `api-version`, `anthropic-version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Catalog `deployment_path` (Azure deployment URLs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deployment_path: bool,
    /// Catalog `cold_start`: a scale-to-zero backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold_start: bool,
    /// Catalog `first_token_timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_timeout_ms: Option<u64>,
}

impl ProviderTarget {
    /// The first-token deadline in ms: the catalog's, else 300 s for cold-start backends and 30 s
    /// for the rest.
    pub fn first_token_deadline_ms(&self) -> u64 {
        self.first_token_timeout_ms
            .unwrap_or(if self.cold_start { 300_000 } else { 30_000 })
    }
}

/// One model on one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    /// Catalog model id.
    pub model: String,
    /// Id the upstream knows it by.
    pub upstream_model: String,
    /// Prices.
    pub price: Price,
    /// Context window.
    pub context_window: u64,
    /// The provider.
    pub provider: ProviderTarget,
    /// Catalog `retries` of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<crate::domain::retry::RetryOverrides>,
    /// Catalog `deadlines` of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadlines: Option<crate::domain::deadline::Overrides>,
    /// The provider's health as the router read it (one batch per plan); the provider records
    /// what its call showed against it, writing only what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::domain::health::Snapshot>,
}

/// router → auth: candidates in the order to try them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// What the client asked for.
    pub requested: String,
    /// Why this plan.
    pub reason: String,
    /// Ordered candidates; never empty.
    pub candidates: Vec<Candidate>,
    /// Parameters from the model string (`?temperature=0.7`), applied as body defaults.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub defaults: serde_json::Map<String, serde_json::Value>,
    /// Quality-floor cascade requested (`lumen.cascade`).
    #[serde(default)]
    pub cascade: bool,
    /// Why this plan, for `x-lumen-route` and `lumen.route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::domain::route::RouteExplain>,
    /// The model `lumen.saved` is priced against ([`crate::domain::saved`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::domain::saved::Reference>,
    /// The shadow experiment this request also feeds, when its share picked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::domain::shadow::ShadowPlan>,
    /// Fusion: the panel run before the synthesizer (whose candidates are `candidates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<crate::domain::fusion::FusionPlan>,
    /// The values of the request's [`PlanRequest::read_also`] keys, in their order (`null`: no
    /// such key), as UTF-8 text; absent when the router did not read them (no store, a failed
    /// read, a value that is not text): the caller then reads them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_also: Option<Vec<Option<String>>>,
}

impl Plan {
    /// The plan of a request answered from the response cache before any planning: no
    /// candidates (nothing is called).
    pub fn cached(requested: &str) -> Plan {
        Plan {
            requested: requested.to_string(),
            reason: "served from the response cache".into(),
            candidates: Vec::new(),
            defaults: serde_json::Map::new(),
            cascade: false,
            route: None,
            reference: None,
            shadow: None,
            fusion: None,
            read_also: None,
        }
    }
}

/// Which upstream endpoint a call is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// Chat completions.
    #[default]
    Chat,
    /// Embeddings.
    Embeddings,
}

/// auth → provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// The endpoint (chat unless said otherwise).
    #[serde(default)]
    pub kind: CallKind,
    /// Request id.
    pub request_id: String,
    /// The calling API key's id: the provider uses that key's own provider keys when it has some
    /// (`crate::store::byok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The providers that key has its own upstream key for (the provider reads one only then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byok: Vec<String>,
    /// Candidates in order.
    pub candidates: Vec<Candidate>,
    /// Whether the client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
    /// The client's body, unknown fields included.
    pub body: serde_json::Map<String, serde_json::Value>,
    /// Quality-floor cascade: check each non-final answer and escalate when the check fails.
    #[serde(default)]
    pub cascade: bool,
    /// Fusion: run this panel first, then `candidates` as the synthesizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<crate::domain::fusion::FusionPlan>,
    /// The request's trace id (32 hex digits) when it is traced: each upstream attempt then
    /// carries `traceparent` with the attempt's derived span id
    /// ([`crate::domain::trace::attempt_span_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed normally.
    Ok,
    /// The upstream failed (status, connection, malformed or cut stream).
    UpstreamError,
    /// The client went away before the end.
    ClientDisconnected,
    /// Lumen refused or failed before calling an upstream.
    Rejected,
}

/// provider → auth: what one request used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageReport {
    /// Catalog model that served (or was last tried).
    pub model: String,
    /// Provider that served.
    pub provider: String,
    /// Tokens.
    pub usage: Usage,
    /// True when tokens are estimated (upstream never reported them).
    #[serde(default)]
    pub estimated: bool,
    /// Outcome.
    pub outcome: Outcome,
    /// Milliseconds the upstream took to answer with headers.
    pub upstream_ms: f64,
    /// When a stream failed over mid-answer: every leg, each priced at its own price by the
    /// meter (`usage` is then their sum).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<Leg>,
}

/// One upstream leg of a request that continued on a fallback mid-stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Leg {
    /// Catalog model of the leg.
    pub model: String,
    /// Provider of the leg.
    pub provider: String,
    /// Tokens of the leg.
    pub usage: Usage,
    /// True when the leg's tokens are estimated (it was cut before reporting usage).
    #[serde(default)]
    pub estimated: bool,
    /// The leg's prices.
    pub price: Price,
    /// What the leg was for, when not the answer itself: `panel` (a fusion panel member) or
    /// `synthesizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// auth → meter: settle one request (auth settles each request once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SettleRequest {
    /// Request id.
    pub request_id: String,
    /// API key id.
    pub key_id: String,
    /// The key's tenant (empty: the key is its own tenant).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Unix time in ms when the request arrived.
    pub started_ms: u64,
    /// Gateway latency in ms, arrival to last byte.
    pub latency_ms: f64,
    /// Whether the response was streamed.
    pub stream: bool,
    /// What was used.
    pub report: UsageReport,
    /// Prices of the model that served.
    pub price: Option<Price>,
    /// The budget hold taken at admission, settled to the actual cost with this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<crate::store::ledger::Hold>,
    /// The plan's reference model: the meter records what the request saved against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::domain::saved::Reference>,
    /// The route that was taken (tier, score at routing time, cascade outcome), recorded in the
    /// log entry for feedback to join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::store::log::RouteRecord>,
    /// What the response cache or a shadow experiment made of the request.
    #[serde(default, skip_serializing_if = "Mark::is_empty")]
    pub mark: Mark,
}

/// How a settled request used the response cache, or which shadow experiment it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Mark {
    /// `hit` (served from the cache: cost 0) or `miss` (answered upstream and cached).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache: String,
    /// On a hit: what the original answer cost, nano-dollars (what the hit saved).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_cost_nanos: i64,
    /// A shadow call of this experiment (metered on its own, never billed to the tenant).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Mark {
    /// Nothing marked.
    pub fn is_empty(&self) -> bool {
        self == &Mark::default()
    }
}

/// One row of `GET /v1/usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRow {
    /// `YYYY-MM-DD` (UTC); absent in totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// Model; absent in totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// API key id, with `group_by=key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Requests that did not end `ok`.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Saved against each request's reference model, US dollars (negative when the models that
    /// served cost more than their references).
    #[serde(default)]
    pub saved_usd: f64,
    /// Requests served from the response cache.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cache_hits: u64,
    /// What the cache hits saved (their original cost), US dollars.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub cache_saved_usd: f64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageSummary {
    /// Always `"usage"`.
    pub object: String,
    /// Rows by day and model.
    pub data: Vec<UsageRow>,
    /// Totals.
    pub total: UsageRow,
}
