//! The routing decision: a model string (id, alias, regex alias, tier, `provider:` prefix,
//! `?param=value` defaults) and the request's routing preferences become an ordered plan with an
//! explanation. Pure: the router component passes the catalog, the scorer and observed latencies.
//!
//! Tiers (`lumen/auto` = `auto`, `lumen/fast`, `lumen/balanced`, `lumen/reasoning`, as the
//! catalog's `[tiers]` define them) pick, among the eligible catalog models that have a
//! `quality`, the cheapest whose predicted quality for this request clears the quality floor;
//! pinned models always win.
//!
//! The scale, calibrated on held-out data (`bench/ROUTER.md`): a candidate's predicted quality is
//! `1 − P(it falls short of the strongest eligible candidate)`, the probability that its answer is
//! as good as the strongest one's would be ([`crate::domain::scorer`] predicts "the cheap model fails where
//! the strong one succeeds"); the strongest candidate itself has 1. The quality floor is on that
//! scale: a floor of 0.6 accepts a cheaper model while the chance that it falls short stays at or
//! below 40 %; floor 0 always takes the cheapest, floor 1 always the strongest. The route's
//! `score` is `P(the cheapest eligible candidate falls short)`, in [0, 1].

use crate::contracts::{Candidate, Plan};
use crate::domain::catalog::{Catalog, ModelConfig};
use crate::domain::saved::{Reference, ReferenceFrom};
use crate::domain::scorer::Packed;
use crate::error::ApiError;
use crate::wire::openai::estimate_prompt_tokens;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Request fields that steer routing; removed before the body goes upstream.
pub const ROUTING_FIELDS: &[&str] = &[
    "provider",
    "brand_pref",
    "max_price",
    "max_latency_ms",
    "quality_floor",
];

/// Keys of the request's `lumen` object the router reads; the others (`fallbacks`, `retries`,
/// `deadlines`) are the provider's and travel on to it.
pub const LUMEN_ROUTING_KEYS: &[&str] = &["cascade", "session", "reference_model", "fusion"];

/// Model-string parameters that may not be set as defaults.
const FORBIDDEN_PARAMS: &[&str] = &["model", "messages", "stream", "stream_options"];

/// The prefix of virtual tier models.
pub const TIER_PREFIX: &str = "lumen/";

/// `provider: {order, only, ignore, allow_fallbacks}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderPrefs {
    /// Providers to prefer, in order.
    pub order: Vec<String>,
    /// Only these providers.
    pub only: Vec<String>,
    /// Never these providers.
    pub ignore: Vec<String>,
    /// `false`: the plan holds the winner only.
    pub allow_fallbacks: bool,
}

/// Routing preferences of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prefs {
    /// Provider preferences.
    pub provider: ProviderPrefs,
    /// Preferred brands (catalog `brand`), most preferred first.
    pub brand_pref: Vec<String>,
    /// Price ceilings in dollars per million (input, output) tokens.
    pub max_price: Option<(f64, f64)>,
    /// Latency SLO in ms (observed EWMA of the provider+model).
    pub max_latency_ms: Option<f64>,
    /// Quality floor in [0, 1].
    pub quality_floor: Option<f64>,
    /// Quality-floor cascade.
    pub cascade: bool,
    /// Session key for sticky splits (`lumen.session`).
    pub session: Option<String>,
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(param), "invalid_value")
}

fn strings(v: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    bad(
                        param,
                        format!("'{param}' must be a string or an array of strings"),
                    )
                })
            })
            .collect(),
        _ => Err(bad(
            param,
            format!("'{param}' must be a string or an array of strings"),
        )),
    }
}

fn positive(v: &Value, param: &str) -> Result<f64, ApiError> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(bad(
            param,
            format!("'{param}' must be a non-negative number, but got {v}"),
        )),
    }
}

impl Prefs {
    /// Reads and checks the routing fields of a body (absent fields take defaults). Errors are
    /// 400s naming the field.
    pub fn from_body(body: &Map<String, Value>) -> Result<Prefs, ApiError> {
        let mut p = Prefs {
            provider: ProviderPrefs {
                allow_fallbacks: true,
                ..ProviderPrefs::default()
            },
            ..Prefs::default()
        };
        match body.get("provider") {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    let param = format!("provider.{k}");
                    match k.as_str() {
                        "order" => p.provider.order = strings(v, &param)?,
                        "only" => p.provider.only = strings(v, &param)?,
                        "ignore" => p.provider.ignore = strings(v, &param)?,
                        "allow_fallbacks" => {
                            p.provider.allow_fallbacks = v.as_bool().ok_or_else(|| {
                                bad(&param, format!("'{param}' must be a boolean"))
                            })?
                        }
                        _ => {
                            return Err(bad(
                                &param,
                                format!("unknown field '{param}'; known: order, only, ignore, allow_fallbacks"),
                            ))
                        }
                    }
                }
            }
            Some(_) => return Err(bad("provider", "'provider' must be an object".into())),
        }
        if let Some(v) = body.get("brand_pref").filter(|v| !v.is_null()) {
            p.brand_pref = strings(v, "brand_pref")?;
        }
        match body.get("max_price") {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                let x = positive(v, "max_price")?;
                p.max_price = Some((x, x));
            }
            Some(Value::Object(o)) => {
                let (mut i, mut out) = (f64::INFINITY, f64::INFINITY);
                for (k, v) in o {
                    let param = format!("max_price.{k}");
                    match k.as_str() {
                        "prompt" | "input" => i = positive(v, &param)?,
                        "completion" | "output" => out = positive(v, &param)?,
                        _ => {
                            return Err(bad(
                                &param,
                                format!("unknown field '{param}'; known: prompt (or input), completion (or output)"),
                            ))
                        }
                    }
                }
                p.max_price = Some((i, out));
            }
            Some(v) => {
                return Err(bad(
                    "max_price",
                    format!("'max_price' must be a number or an object with prompt/completion prices per million tokens, but got {v}"),
                ))
            }
        }
        if let Some(v) = body.get("max_latency_ms").filter(|v| !v.is_null()) {
            let x = positive(v, "max_latency_ms")?;
            if x == 0.0 {
                return Err(bad(
                    "max_latency_ms",
                    "'max_latency_ms' must be above 0".into(),
                ));
            }
            p.max_latency_ms = Some(x);
        }
        if let Some(v) = body.get("quality_floor").filter(|v| !v.is_null()) {
            match v.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => p.quality_floor = Some(x),
                _ => {
                    return Err(bad(
                        "quality_floor",
                        format!("'quality_floor' must be a number between 0 and 1, but got {v}"),
                    ))
                }
            }
        }
        match body.get("lumen") {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    match k.as_str() {
                        "cascade" => {
                            p.cascade = v.as_bool().ok_or_else(|| {
                                bad("lumen.cascade", "'lumen.cascade' must be a boolean".into())
                            })?
                        }
                        "session" => {
                            p.session = Some(v.as_str().map(str::to_string).ok_or_else(|| {
                                bad("lumen.session", "'lumen.session' must be a string".into())
                            })?)
                        }
                        // Auth reads and checks it (pinned models never reach here).
                        "reference_model" => {}
                        // The provider's options, validated there; fusion by
                        // `fusion::FusionAsk`, cache by auth.
                        "fallbacks" | "retries" | "deadlines" | "fusion" | "cache" => {}
                        _ => {
                            return Err(bad(
                                &format!("lumen.{k}"),
                                format!("unknown field 'lumen.{k}'; known: cascade, session, reference_model, fusion, cache, fallbacks, retries, deadlines"),
                            ))
                        }
                    }
                }
            }
            Some(_) => return Err(bad("lumen", "'lumen' must be an object".into())),
        }
        Ok(p)
    }
}

/// The providers of some candidates, in order, each once.
fn provider_names(cs: &[Candidate]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in cs {
        if !out.contains(&c.provider.name) {
            out.push(c.provider.name.clone());
        }
    }
    out
}

/// Keeps the candidates `provider.only` / `provider.ignore` allow (every candidate of a plan,
/// the fallback models' included).
pub fn keep_providers(candidates: &mut Vec<Candidate>, pp: &ProviderPrefs) {
    candidates.retain(|c| {
        (pp.only.is_empty() || pp.only.contains(&c.provider.name))
            && !pp.ignore.contains(&c.provider.name)
    });
}

/// The routing fields of a body alone (`None` when it has none): what the router needs to plan a
/// named model, without copying the whole body to it.
pub fn routing_fields(body: &Map<String, Value>) -> Option<Map<String, Value>> {
    let out: Map<String, Value> = ROUTING_FIELDS
        .iter()
        .filter_map(|f| body.get(*f).map(|v| (f.to_string(), v.clone())))
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Removes the routing fields from a body before it goes upstream.
pub fn strip_routing_fields(body: &mut Map<String, Value>) {
    for f in ROUTING_FIELDS {
        body.remove(*f);
    }
    if let Some(Value::Object(l)) = body.get_mut("lumen") {
        for k in LUMEN_ROUTING_KEYS {
            l.remove(*k);
        }
        if l.is_empty() {
            body.remove("lumen");
        }
    }
}

/// Applies model-string parameters as defaults (fields the client set win).
pub fn apply_defaults(body: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (k, v) in defaults {
        if !body.contains_key(k) {
            body.insert(k.clone(), v.clone());
        }
    }
}

/// A parsed model string.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Provider pinned with `provider:name`.
    pub provider: Option<String>,
    /// The name without prefix and parameters.
    pub name: String,
    /// `?k=v&…` parameters (values as JSON when they parse, else strings).
    pub params: Map<String, Value>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether planning a model string needs the request body: only virtual models (tiers `auto` and
/// `lumen/...`, splits, all named under `lumen/`) do; pinned models are planned from the name, so
/// auth does not copy large bodies to the router for them.
pub fn needs_body(model: &str) -> bool {
    let head = model.split('?').next().unwrap_or("");
    let name = head.split_once(':').map_or(head, |(_, n)| n);
    name == "auto"
        || head == "auto"
        || name.starts_with(TIER_PREFIX)
        || head.starts_with(TIER_PREFIX)
}

/// Splits `provider:name?k=v` (the provider prefix only when it names a catalog provider).
pub fn parse_model(s: &str, cat: &Catalog) -> Result<ModelSpec, ApiError> {
    let (head, query) = match s.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (s, None),
    };
    let (provider, name) = match head.split_once(':') {
        Some((p, n)) if cat.providers.contains_key(p) => (Some(p.to_string()), n),
        _ => (None, head),
    };
    let mut params = Map::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let (k, v) = (percent_decode(k), percent_decode(v));
        if FORBIDDEN_PARAMS.contains(&k.as_str()) || k.is_empty() {
            return Err(bad(
                "model",
                format!("the model string may not set '{k}' as a parameter"),
            ));
        }
        let value = serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v));
        params.insert(k, value);
    }
    if !params.is_empty() {
        // The defaults must be valid request fields themselves.
        let mut probe = params.clone();
        probe.insert("model".into(), Value::String("m".into()));
        probe.insert(
            "messages".into(),
            serde_json::json!([{"role": "user", "content": "x"}]),
        );
        let bytes = serde_json::to_vec(&probe).unwrap_or_default();
        crate::wire::openai::parse_chat_request(&bytes).map_err(|e| {
            bad(
                "model",
                format!("invalid parameter in the model string: {}", e.message),
            )
        })?;
    }
    Ok(ModelSpec {
        provider,
        name: name.to_string(),
        params,
    })
}

/// One model the decision looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Considered {
    /// Catalog model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Predicted chance that its answer does not fall short of the strongest eligible
    /// candidate's (1 for that candidate), in [0, 1].
    pub predicted_quality: f64,
    /// Input + output price, dollars per million tokens.
    pub price: f64,
    /// Why it was not eligible (absent = eligible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<String>,
}

/// Why a plan is what it is (`x-lumen-route`, `lumen.route`, `POST /v1/route`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RouteExplain {
    /// Tier (`lumen/auto`, …); absent for pinned models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Probability, in [0, 1], that the cheapest eligible candidate falls short of the strongest
    /// (fails where the strongest succeeds) for this request (tiers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Quality floor applied (tiers only): the least predicted quality (chance of not falling
    /// short of the strongest eligible candidate) the winner must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_floor: Option<f64>,
    /// Microseconds the scorer took (tiers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_us: Option<f64>,
    /// The winner.
    pub model: String,
    /// Why the winner won.
    pub reason: String,
    /// The models looked at (tiers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Considered>,
    /// Whether the cascade is on.
    #[serde(default)]
    pub cascade: bool,
    /// The model that served, when it is not the winner (a fallback or a cascade escalation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<String>,
}

impl RouteExplain {
    /// This explanation for an answer `model` served: `served` is set when it is not the winner.
    pub fn served_by(mut self, model: &str) -> RouteExplain {
        self.served = (model != self.model && !model.is_empty()).then(|| model.to_string());
        self
    }

    /// The one-line `x-lumen-route` header: `model=` is the model that served; `planned=`
    /// follows when the plan's winner did not.
    pub fn header(&self) -> String {
        let mut h = match &self.served {
            Some(s) => format!("model={s}; planned={}", self.model),
            None => format!("model={}", self.model),
        };
        if let Some(t) = &self.tier {
            h.push_str(&format!("; tier={t}"));
        }
        if let Some(s) = self.score {
            h.push_str(&format!("; score={s:.3}"));
        }
        if let Some(f) = self.quality_floor {
            h.push_str(&format!("; floor={f}"));
        }
        if !self.candidates.is_empty() {
            h.push_str(&format!("; candidates={}", self.candidates.len()));
        }
        if self.cascade {
            h.push_str("; cascade=on");
        }
        // Header values must be visible ASCII.
        let reason: String = self
            .reason
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        h.push_str(&format!("; reason={reason}"));
        h
    }
}

/// What the decision needs besides the catalog.
pub struct Inputs<'a> {
    /// The request's `model`.
    pub model: &'a str,
    /// Models the key may use (empty = all).
    pub allowed: &'a [String],
    /// The request body (routing fields included), when known.
    pub body: Option<&'a Map<String, Value>>,
    /// The scorer, loaded only when a tier needs it (a pinned model never pays for it).
    pub weights: &'a dyn Fn() -> Option<&'a Packed>,
    /// Observed latency (ms) of a provider+model, if any.
    pub latency: &'a dyn Fn(&str, &str) -> Option<f64>,
    /// The monotonic clock in microseconds (to time the scorer).
    pub now_us: &'a dyn Fn() -> f64,
    /// A random number, for splits of requests with no sticky key.
    pub roll: u64,
}

/// System prompts at least this long pin a split's choice (prompt-cache affinity).
pub const AFFINITY_MIN_CHARS: usize = 1024;

fn fnv(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a split's choice sticks to: the session, else the user, else a long system prompt.
fn sticky_key(prefs: &Prefs, body: &Map<String, Value>) -> Option<(&'static str, String)> {
    if let Some(s) = &prefs.session {
        return Some(("lumen.session", s.clone()));
    }
    if let Some(u) = body.get("user").and_then(Value::as_str) {
        return Some(("user", u.to_string()));
    }
    let system = body
        .get("messages")?
        .as_array()?
        .first()
        .filter(|m| {
            matches!(
                m.get("role").and_then(Value::as_str),
                Some("system" | "developer")
            )
        })?
        .get("content")?
        .as_str()?;
    (system.chars().count() >= AFFINITY_MIN_CHARS).then(|| ("system prompt", system.to_string()))
}

fn split_plan(
    cat: &Catalog,
    name: &str,
    spec: ModelSpec,
    prefs: &Prefs,
    inp: &Inputs,
    body: &Map<String, Value>,
) -> Result<Plan, ApiError> {
    if !inp.allowed.is_empty() && !inp.allowed.iter().any(|a| a == name) {
        return Err(ApiError::permission(
            format!(
                "this API key may not use model \"{name}\"; allowed models: {}",
                inp.allowed.join(", ")
            ),
            "model_not_allowed",
        ));
    }
    let sp = &cat.splits[name];
    let total: u64 = sp.targets.iter().map(|t| u64::from(t.weight)).sum();
    let (by, roll) = match sticky_key(prefs, body) {
        Some((by, key)) => (by, fnv(&key)),
        None => ("random", inp.roll),
    };
    let mut at = roll % total.max(1);
    let mut pick = 0;
    for (i, t) in sp.targets.iter().enumerate() {
        if at < u64::from(t.weight) {
            pick = i;
            break;
        }
        at -= u64::from(t.weight);
    }
    let mut order: Vec<usize> = (0..sp.targets.len()).filter(|i| *i != pick).collect();
    order.sort_by_key(|i| std::cmp::Reverse(sp.targets[*i].weight));
    order.insert(0, pick);
    let candidates: Vec<_> = order
        .iter()
        .filter_map(|i| {
            cat.lookup(&sp.targets[*i].model)
                .map(|(id, _)| cat.candidate(id))
        })
        .collect();
    let winner = candidates
        .first()
        .map(|c| c.model.clone())
        .ok_or_else(|| ApiError::internal(format!("split \"{name}\" has no usable targets")))?;
    let reason = format!(
        "split {name}: {winner} (weight {} of {total}), chosen by {by}",
        sp.targets[pick].weight
    );
    // The split picked for an experiment, not to save: its pick is the reference.
    let reference = candidates.first().map(|c| Reference {
        model: c.model.clone(),
        price: c.price.clone(),
        from: ReferenceFrom::Split,
    });
    Ok(Plan {
        requested: inp.model.to_string(),
        reason: reason.clone(),
        candidates,
        defaults: spec.params,
        cascade: prefs.cascade,
        shadow: None,
        fusion: None,
        read_also: None,
        route: Some(RouteExplain {
            model: winner,
            reason,
            cascade: prefs.cascade,
            ..RouteExplain::default()
        }),
        reference,
    })
}

fn blended(m: &ModelConfig) -> f64 {
    m.price.input + m.price.output
}

/// The capabilities a request needs (`stream`, `tools`, JSON modes, `vision`).
pub fn needs(body: &Map<String, Value>) -> Vec<&'static str> {
    let mut caps = vec![];
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        caps.push("stream");
    }
    if body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        caps.push("tools");
    }
    match body
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_schema") => caps.push("json_schema"),
        Some("json_object") => caps.push("json_object"),
        _ => {}
    }
    let vision = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .any(|p| p.get("type").and_then(Value::as_str) == Some("image_url"));
    if vision {
        caps.push("vision");
    }
    caps
}

/// The tier a model string names, if any (`auto` is `lumen/auto`).
pub fn tier_name<'a>(name: &'a str, cat: &Catalog) -> Option<&'a str> {
    let t = if name == "auto" {
        "auto"
    } else {
        name.strip_prefix(TIER_PREFIX)?
    };
    cat.tiers.contains_key(t).then_some(t)
}

/// Decides the plan for a request.
pub fn decide(cat: &Catalog, inp: &Inputs) -> Result<Plan, ApiError> {
    let empty = Map::new();
    let body = inp.body.unwrap_or(&empty);
    let prefs = Prefs::from_body(body)?;
    let spec = parse_model(inp.model, cat)?;
    let fusion = crate::domain::fusion::FusionAsk::from_body(body)?;
    if crate::domain::fusion::is_fusion_model(&spec.name) {
        return fusion_plan(cat, inp, spec, body, &fusion);
    }
    if cat.splits.contains_key(&spec.name) {
        let name = spec.name.clone();
        return split_plan(cat, &name, spec, &prefs, inp, body);
    }
    let Some(tier) = tier_name(&spec.name, cat) else {
        // A pinned model (id, alias or regex alias) always wins.
        let mut plan = cat.plan(&spec.name, inp.allowed)?;
        plan.requested = inp.model.to_string();
        if let Some(p) = &spec.provider {
            // `provider:model` pins the model's offer on that provider, wherever it is listed.
            let offered = provider_names(&plan.candidates);
            plan.candidates.retain(|c| c.provider.name == *p);
            if plan.candidates.is_empty() {
                return Err(ApiError::not_found(
                    format!(
                        "the model \"{}\" is not offered by provider \"{p}\"; it is offered by {}",
                        spec.name,
                        offered.join(", ")
                    ),
                    Some("model"),
                    "model_not_found",
                ));
            }
            plan.reason = format!("{} (pinned to provider {p})", plan.reason);
        }
        let offered = provider_names(&plan.candidates);
        keep_providers(&mut plan.candidates, &prefs.provider);
        if plan.candidates.is_empty() {
            return Err(ApiError::invalid_request(
                format!(
                    "no provider of model \"{}\" is allowed by 'provider' (offered by {})",
                    spec.name,
                    offered.join(", ")
                ),
                Some("provider"),
                "no_eligible_model",
            ));
        }
        let rank = |p: &str| {
            prefs
                .provider
                .order
                .iter()
                .position(|x| x == p)
                .unwrap_or(usize::MAX)
        };
        plan.candidates.sort_by_key(|c| rank(&c.provider.name));
        if !prefs.provider.allow_fallbacks {
            plan.candidates.truncate(1);
        }
        if plan.candidates[0].provider.name != offered[0] {
            plan.reason = format!("{} → {}", plan.reason, plan.candidates[0].provider.name);
        }
        plan.defaults = spec.params;
        plan.cascade = false;
        plan.route = Some(RouteExplain {
            model: plan.candidates[0].model.clone(),
            reason: plan.reason.clone(),
            ..RouteExplain::default()
        });
        // Routing chose nothing: the model asked for (at the asked provider's price) is the
        // reference, so a saving shows only when a fallback served something cheaper.
        plan.reference = Some(Reference {
            model: plan.candidates[0].model.clone(),
            price: plan.candidates[0].price.clone(),
            from: ReferenceFrom::Pinned,
        });
        return Ok(plan);
    };
    let tier_id = format!("{TIER_PREFIX}{tier}");
    if !inp.allowed.is_empty()
        && !inp
            .allowed
            .iter()
            .any(|a| *a == tier_id || (tier == "auto" && a == "auto"))
    {
        return Err(ApiError::permission(
            format!(
                "this API key may not use model \"{tier_id}\"; allowed models: {}",
                inp.allowed.join(", ")
            ),
            "model_not_allowed",
        ));
    }
    // The key's concrete models bound the candidates; a list naming only tiers allows all.
    let concrete: Vec<&String> = inp
        .allowed
        .iter()
        .filter(|a| cat.lookup(a).is_some())
        .collect();
    let weights = (inp.weights)().ok_or_else(|| {
        ApiError::internal("the router's scorer weights are missing (config/router-weights.bin)")
    })?;
    let t0 = (inp.now_us)();
    let scored = weights.score_body(body);
    let score_us = (inp.now_us)() - t0;
    let floor = prefs.quality_floor.unwrap_or(cat.tiers[tier].quality_floor);
    let prompt = estimate_prompt_tokens(body);
    let caps = needs(body);
    let mut looked = Vec::new();
    for (id, m) in &cat.models {
        let Some(q) = m.quality else { continue };
        let allowed = concrete.is_empty()
            || concrete
                .iter()
                .any(|a| *a == id || m.aliases.iter().any(|x| x == *a));
        let pp = &prefs.provider;
        let excluded = if !allowed {
            Some("not allowed for this API key".to_string())
        } else if spec.provider.as_ref().is_some_and(|p| *p != m.provider) {
            Some(format!(
                "provider {} is not the pinned provider",
                m.provider
            ))
        } else if !pp.only.is_empty() && !pp.only.contains(&m.provider) {
            Some(format!("provider {} is not in provider.only", m.provider))
        } else if pp.ignore.contains(&m.provider) {
            Some(format!("provider {} is in provider.ignore", m.provider))
        } else if let Some(c) = caps
            .iter()
            .find(|c| !m.capabilities.iter().any(|x| x == *c))
        {
            Some(format!("lacks capability {c}"))
        } else if prompt > m.context_window {
            Some(format!(
                "prompt (~{prompt} tokens) exceeds the context window of {}",
                m.context_window
            ))
        } else if let Some((pi, po)) = prefs
            .max_price
            .filter(|(pi, po)| m.price.input > *pi || m.price.output > *po)
        {
            Some(format!(
                "price {}/{} per Mtok is over max_price {pi}/{po}",
                m.price.input, m.price.output
            ))
        } else if let Some((max, seen)) = prefs
            .max_latency_ms
            .and_then(|max| Some((max, (inp.latency)(&m.provider, id)?)))
            .filter(|(max, seen)| seen > max)
        {
            Some(format!(
                "observed latency {seen:.0} ms is over max_latency_ms {max}"
            ))
        } else {
            None
        };
        looked.push((id, m, q, excluded));
    }
    // Predicted quality: the chance of not falling short of the strongest eligible candidate.
    let strongest = |eligible_only: bool| {
        looked
            .iter()
            .filter(|l| !eligible_only || l.3.is_none())
            .map(|l| l.2)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let top = match strongest(true) {
        t if t.is_finite() => t,
        _ => strongest(false),
    };
    // The reference for `lumen.saved`: the strongest eligible candidate (the dearest on a tie).
    let reference = looked
        .iter()
        .filter(|l| l.3.is_none() && l.2 == top)
        .max_by(|a, b| blended(a.1).total_cmp(&blended(b.1)).then(b.0.cmp(a.0)))
        .map(|l| Reference {
            model: l.0.clone(),
            price: l.1.price.clone(),
            from: ReferenceFrom::Tier,
        });
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let score = looked
        .iter()
        .filter(|l| l.3.is_none())
        .min_by(|a, b| blended(a.1).total_cmp(&blended(b.1)).then(a.0.cmp(b.0)))
        .map_or(0.0, |l| weights.short_prob(&scored, l.2, top));
    let considered: Vec<Considered> = looked
        .into_iter()
        .map(|(id, m, q, excluded)| Considered {
            model: id.clone(),
            provider: m.provider.clone(),
            predicted_quality: round(1.0 - weights.short_prob(&scored, q, top)),
            price: blended(m),
            excluded,
        })
        .collect();
    let rank = |list: &[String], v: &str| list.iter().position(|x| x == v).unwrap_or(usize::MAX);
    let brand = |id: &str| cat.models[id].brand.clone().unwrap_or_default();
    let mut clearing: Vec<&Considered> = considered
        .iter()
        .filter(|c| c.excluded.is_none() && c.predicted_quality >= floor)
        .collect();
    clearing.sort_by(|a, b| {
        rank(&prefs.provider.order, &a.provider)
            .cmp(&rank(&prefs.provider.order, &b.provider))
            .then(
                rank(&prefs.brand_pref, &brand(&a.model))
                    .cmp(&rank(&prefs.brand_pref, &brand(&b.model))),
            )
            .then(a.price.total_cmp(&b.price))
            .then(a.model.cmp(&b.model))
    });
    let mut rest: Vec<&Considered> = considered
        .iter()
        .filter(|c| c.excluded.is_none() && c.predicted_quality < floor)
        .collect();
    rest.sort_by(|a, b| {
        b.predicted_quality
            .total_cmp(&a.predicted_quality)
            .then(a.price.total_cmp(&b.price))
            .then(a.model.cmp(&b.model))
    });
    let (order, reason): (Vec<&Considered>, String) = match clearing.first() {
        Some(w) => {
            let mut why = format!(
                "predicted quality {:.2} clears the floor {floor}",
                w.predicted_quality
            );
            if rank(&prefs.provider.order, &w.provider) != usize::MAX {
                why.push_str(&format!(
                    "; provider {} is first in provider.order",
                    w.provider
                ));
            } else if rank(&prefs.brand_pref, &brand(&w.model)) != usize::MAX {
                why.push_str(&format!("; brand {} is preferred", brand(&w.model)));
            }
            why.push_str(&format!(
                "; cheapest such at ${}/Mtok in+out among {} eligible",
                w.price,
                clearing.len() + rest.len()
            ));
            (clearing.iter().chain(&rest).copied().collect(), why)
        }
        None => match rest.first() {
            Some(w) => (
                rest.clone(),
                format!(
                    "no eligible model clears the floor {floor}; highest predicted quality {:.2}",
                    w.predicted_quality
                ),
            ),
            None => {
                let why: Vec<String> = considered
                    .iter()
                    .map(|c| format!("{}: {}", c.model, c.excluded.as_deref().unwrap_or("")))
                    .collect();
                let param = if prefs.max_latency_ms.is_some() {
                    "max_latency_ms"
                } else if prefs.max_price.is_some() {
                    "max_price"
                } else if prefs.provider != ProviderPrefs::default() {
                    "provider"
                } else {
                    "model"
                };
                return Err(ApiError::invalid_request(
                    format!(
                        "no model of tier {TIER_PREFIX}{tier} is eligible for this request: {}",
                        why.join("; ")
                    ),
                    Some(param),
                    "no_eligible_model",
                ));
            }
        },
    };
    let take = if prefs.provider.allow_fallbacks {
        order.len()
    } else {
        1
    };
    let candidates: Vec<_> = order[..take]
        .iter()
        .map(|c| cat.candidate(&c.model))
        .collect();
    let winner = order[0].model.clone();
    let mut plan = Plan {
        requested: inp.model.to_string(),
        reason: format!("tier {TIER_PREFIX}{tier} → {winner}: {reason}"),
        candidates,
        defaults: spec.params,
        cascade: prefs.cascade,
        route: None,
        reference,
        shadow: None,
        fusion: None,
        read_also: None,
    };
    plan.route = Some(RouteExplain {
        tier: Some(format!("{TIER_PREFIX}{tier}")),
        score: Some(round(score) as f32),
        quality_floor: Some(floor),
        score_us: Some(score_us),
        model: winner,
        reason,
        candidates: considered,
        cascade: prefs.cascade,
        served: None,
    });
    if fusion.on {
        return crate::domain::fusion::on_tier(cat, plan, &fusion);
    }
    Ok(plan)
}

/// `lumen/fusion`: allowed for the key like a tier; the panel bounded by the key's concrete
/// models.
fn fusion_plan(
    cat: &Catalog,
    inp: &Inputs,
    spec: ModelSpec,
    body: &Map<String, Value>,
    ask: &crate::domain::fusion::FusionAsk,
) -> Result<Plan, ApiError> {
    let name = crate::domain::fusion::FUSION_MODEL;
    if !inp.allowed.is_empty() && !inp.allowed.iter().any(|a| a == name) {
        return Err(ApiError::permission(
            format!(
                "this API key may not use model \"{name}\"; allowed models: {}",
                inp.allowed.join(", ")
            ),
            "model_not_allowed",
        ));
    }
    let concrete: Vec<&str> = inp
        .allowed
        .iter()
        .filter_map(|a| cat.lookup(a).map(|(id, _)| id))
        .collect();
    let mut plan = crate::domain::fusion::plan(cat, inp.model, &concrete, &needs(body), ask)?;
    plan.defaults = spec.params;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::scorer::{PairTerm, Weights};
    use serde_json::json;

    const CAT: &str = r#"
[providers.a]
dialect = "openai"
base_url_variable = "a_base_url"
api_key_variable = "a_api_key"
[providers.b]
dialect = "openai"
base_url_variable = "b_base_url"
api_key_variable = "b_api_key"

[models.small]
provider = "a"
upstream_id = "small"
context_window = 1000
capabilities = ["chat"]
brand = "x"
quality = 0.2
price = { input = 0.1, output = 0.1, source = "s", as_of = "2026-01-01" }
[models.mid]
provider = "b"
upstream_id = "mid"
context_window = 100000
capabilities = ["chat", "tools"]
brand = "y"
quality = 1.0
price = { input = 1.0, output = 1.0, source = "s", as_of = "2026-01-01" }
[models.big]
provider = "a"
upstream_id = "big"
context_window = 100000
capabilities = ["chat", "tools"]
brand = "y"
quality = 2.0
price = { input = 5.0, output = 5.0, source = "s", as_of = "2026-01-01" }
[models.unrated]
provider = "a"
upstream_id = "u"
context_window = 100000
price = { input = 0.0, output = 0.0, source = "s", as_of = "2026-01-01" }
offers = [{ provider = "b", upstream_id = "u-on-b", price = { input = 0.1, output = 0.1, source = "s", as_of = "2026-01-01" } }]

[tiers.auto]
quality_floor = 0.6
[tiers.fast]
quality_floor = 0.0

[[alias_rules]]
pattern = '^big-(\d+)$'
target = 'big'

[splits."lumen/ab"]
targets = [{ model = "small", weight = 1 }, { model = "big", weight = 1 }]
"#;

    fn run(model: &str, body: Value, allowed: &[String]) -> Result<Plan, ApiError> {
        let cat = Catalog::from_toml(CAT, "t").unwrap();
        // No text features: P(falls short) = σ(2Δ − 2.5) for an ability gap Δ, whatever the
        // request; vs big (2.0): mid σ(−0.5) = 0.38, small σ(1.1) = 0.75.
        let w = Packed::from_bytes(
            Weights {
                pair: PairTerm {
                    bias: -2.5,
                    gap: 2.0,
                    ..PairTerm::default()
                },
                ..Weights::zero()
            }
            .to_bytes(),
        )
        .unwrap();
        let none = |_: &str, _: &str| None;
        let slow = |_: &str, m: &str| (m == "mid").then_some(900.0);
        let body = body.as_object().cloned().unwrap();
        let latency: &dyn Fn(&str, &str) -> Option<f64> = if body.contains_key("max_latency_ms") {
            &slow
        } else {
            &none
        };
        decide(
            &cat,
            &Inputs {
                model,
                allowed,
                body: Some(&body),
                weights: &|| Some(&w),
                latency,
                now_us: &|| 0.0,
                roll: 7,
            },
        )
    }

    fn order(p: &Plan) -> Vec<&str> {
        p.candidates.iter().map(|c| c.model.as_str()).collect()
    }

    fn msg(extra: Value) -> Value {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    #[test]
    fn the_reference_for_saved_is_the_strongest_eligible_or_what_was_asked_for() {
        use crate::domain::saved::ReferenceFrom;
        let reference = |p: &Plan| {
            let r = p.reference.as_ref().unwrap();
            (r.model.clone(), r.from, r.price.input)
        };
        // Tiers: the strongest eligible candidate, even when a cheaper one serves.
        let p = run("lumen/fast", msg(json!({})), &[]).unwrap();
        assert_eq!(order(&p)[0], "small");
        assert_eq!(reference(&p), ("big".into(), ReferenceFrom::Tier, 5.0));
        // ... among the eligible only (big is there, but this key may not use it).
        let allowed = ["auto".into(), "small".into(), "mid".into()];
        let p = run("auto", msg(json!({})), &allowed).unwrap();
        assert_eq!(reference(&p), ("mid".into(), ReferenceFrom::Tier, 1.0));
        // Pinned models (and aliases, rules) are their own reference; splits their pick.
        let p = run("big-7", msg(json!({})), &[]).unwrap();
        assert_eq!(reference(&p), ("big".into(), ReferenceFrom::Pinned, 5.0));
        let p = run("lumen/ab", msg(json!({})), &[]).unwrap();
        assert_eq!(reference(&p).1, ReferenceFrom::Split);
        assert_eq!(reference(&p).0, order(&p)[0]);
        // The request's own reference is the router component's to resolve, not decide's.
        let p = run(
            "auto",
            msg(json!({"lumen": {"reference_model": "small"}})),
            &[],
        )
        .unwrap();
        assert_eq!(reference(&p).1, ReferenceFrom::Tier);
    }

    #[test]
    fn cheapest_model_that_clears_the_floor_then_fallbacks() {
        // Predicted quality = 1 − P(falls short of big): small 0.25 < 0.6 ≤ mid 0.62, big 1.
        let p = run("auto", msg(json!({})), &[]).unwrap();
        assert_eq!(order(&p), ["mid", "big", "small"]);
        let r = p.route.unwrap();
        assert_eq!(r.tier.as_deref(), Some("lumen/auto"));
        assert!(r.reason.contains("clears the floor 0.6"), "{}", r.reason);
        assert_eq!(
            r.candidates.len(),
            3,
            "unrated models are not tier candidates"
        );
        let pq = |m: &str| {
            r.candidates
                .iter()
                .find(|c| c.model == m)
                .unwrap()
                .predicted_quality
        };
        assert_eq!((pq("small"), pq("mid"), pq("big")), (0.25, 0.622, 1.0));
        // The score is the chance that the cheapest eligible model (small) falls short.
        assert_eq!(r.score, Some(0.75));
        let p = run("lumen/auto", msg(json!({"quality_floor": 0.2})), &[]).unwrap();
        assert_eq!(order(&p)[0], "small");
        // The strongest eligible model always clears the floor: floor 1 means "the strongest".
        let p = run("auto", msg(json!({"quality_floor": 1.0})), &[]).unwrap();
        assert_eq!(order(&p), ["big", "mid", "small"]);
        assert!(p.route.unwrap().reason.contains("clears the floor 1"));
        // Without big (no tools), mid is the strongest: small is measured against mid.
        let b =
            json!({"messages": [{"role": "user", "content": "hi"}], "provider": {"only": ["a"]}});
        let r = run("auto", b, &[]).unwrap().route.unwrap();
        assert_eq!(r.model, "big", "mid is excluded, big is the strongest left");
        let b = json!({"messages": [{"role": "user", "content": "hi"}], "max_price": 2});
        let r = run("auto", b, &[]).unwrap().route.unwrap();
        // vs mid: σ(2·0.8 − 2.5) = 0.29 → small has 0.711 and wins.
        assert_eq!((r.model.as_str(), r.score), ("small", Some(0.289)));
        assert_eq!(
            order(&run("lumen/fast", msg(json!({})), &[]).unwrap())[0],
            "small"
        );
    }

    #[test]
    fn filters_and_preferences() {
        let fast = |extra: Value| run("lumen/fast", msg(extra), &[]).map(|p| order(&p).join(","));
        assert_eq!(
            fast(json!({"tools": [{"type": "function"}]})).unwrap(),
            "mid,big"
        );
        assert_eq!(fast(json!({"max_price": 2})).unwrap(), "small,mid");
        assert_eq!(fast(json!({"max_latency_ms": 500})).unwrap(), "small,big");
        assert_eq!(fast(json!({"provider": {"only": ["b"]}})).unwrap(), "mid");
        assert_eq!(fast(json!({"provider": {"ignore": ["a"]}})).unwrap(), "mid");
        assert_eq!(
            fast(json!({"provider": {"order": ["b"]}})).unwrap(),
            "mid,small,big"
        );
        assert_eq!(
            fast(json!({"provider": {"order": ["b"], "allow_fallbacks": false}})).unwrap(),
            "mid"
        );
        assert_eq!(fast(json!({"brand_pref": "y"})).unwrap(), "mid,big,small");
        let long = json!({"messages": [{"role": "user", "content": "x".repeat(8000)}]});
        let p = run("lumen/fast", long, &[]).unwrap();
        assert_eq!(order(&p)[0], "mid", "small's context window is too short");
        let e = fast(json!({"max_price": 0.01})).unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code.as_deref()),
            (Some("max_price"), Some("no_eligible_model"))
        );
        // The key's models bound the candidates; a key without the tier may not use it.
        let p = run("auto", msg(json!({})), &["auto".into(), "big".into()]).unwrap();
        assert_eq!(order(&p), ["big"]);
        assert_eq!(
            run("auto", msg(json!({})), &["big".into()])
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn pins_aliases_params_and_provider_prefixes() {
        let p = run("small", msg(json!({"quality_floor": 0.99})), &[]).unwrap();
        assert_eq!(order(&p), ["small"]);
        assert!(p.reason.contains("pinned model"));
        let p = run("big-2024?temperature=0.5&stop=END", msg(json!({})), &[]).unwrap();
        assert_eq!(order(&p), ["big"]);
        assert!(p.reason.contains("alias rule"));
        assert_eq!(p.defaults["temperature"], 0.5);
        assert_eq!(p.defaults["stop"], "END");
        assert_eq!(
            run("b:mid", msg(json!({})), &[]).unwrap().candidates[0].model,
            "mid"
        );
        assert_eq!(run("a:mid", msg(json!({})), &[]).unwrap_err().status, 404);
        let p = run("b:auto", msg(json!({"quality_floor": 0.99})), &[]).unwrap();
        assert_eq!(order(&p), ["mid"]);
        for bad in ["small?temperature=5", "small?model=x", "small?stream=true"] {
            assert_eq!(
                run(bad, msg(json!({})), &[]).unwrap_err().param.as_deref(),
                Some("model"),
                "{bad}"
            );
        }
    }

    /// A pin to a provider's non-primary offer serves from that offer (it was a 404), and
    /// `provider.only` / `ignore` / `order` / `allow_fallbacks` hold for named models too.
    #[test]
    fn named_models_honour_pins_to_offers_and_provider_preferences() {
        let providers = |p: &Plan| -> Vec<String> {
            p.candidates
                .iter()
                .map(|c| format!("{}:{}", c.provider.name, c.upstream_model))
                .collect()
        };
        let p = run("unrated", msg(json!({})), &[]).unwrap();
        assert_eq!(providers(&p), ["a:u", "b:u-on-b"]);
        let p = run("b:unrated", msg(json!({})), &[]).unwrap();
        assert_eq!(providers(&p), ["b:u-on-b"]);
        assert!(p.reason.contains("pinned to provider b"), "{}", p.reason);
        let e = run("b:small", msg(json!({})), &[]).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (404, Some("model")));
        assert!(e.message.contains("offered by a"), "{}", e.message);

        let with = |prov: Value| run("unrated", msg(json!({ "provider": prov })), &[]);
        assert_eq!(
            providers(&with(json!({"only": ["b"]})).unwrap()),
            ["b:u-on-b"]
        );
        assert_eq!(
            providers(&with(json!({"ignore": ["a"]})).unwrap()),
            ["b:u-on-b"]
        );
        assert_eq!(
            providers(&with(json!({"order": ["b"]})).unwrap()),
            ["b:u-on-b", "a:u"]
        );
        assert_eq!(
            providers(&with(json!({"order": ["b"], "allow_fallbacks": false})).unwrap()),
            ["b:u-on-b"]
        );
        let e = with(json!({"only": ["c"]})).unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref(), e.code.as_deref()),
            (400, Some("provider"), Some("no_eligible_model"))
        );
        // The router gets only the routing fields of a named model's body.
        let body = msg(json!({"provider": {"only": ["b"]}, "seed": 1}));
        let f = routing_fields(body.as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(f), json!({"provider": {"only": ["b"]}}));
        assert!(routing_fields(msg(json!({})).as_object().unwrap()).is_none());
    }

    #[test]
    fn prefs_name_the_field_and_are_stripped() {
        let bad = |v: Value| {
            Prefs::from_body(v.as_object().unwrap())
                .unwrap_err()
                .param
                .unwrap_or_default()
        };
        assert_eq!(bad(json!({"provider": 1})), "provider");
        assert_eq!(bad(json!({"provider": {"only": [1]}})), "provider.only");
        assert_eq!(bad(json!({"provider": {"x": 1}})), "provider.x");
        assert_eq!(
            bad(json!({"provider": {"allow_fallbacks": "no"}})),
            "provider.allow_fallbacks"
        );
        assert_eq!(bad(json!({"max_price": {"tokens": 1}})), "max_price.tokens");
        assert_eq!(bad(json!({"max_price": -1})), "max_price");
        assert_eq!(bad(json!({"max_latency_ms": 0})), "max_latency_ms");
        assert_eq!(bad(json!({"quality_floor": 2})), "quality_floor");
        assert_eq!(bad(json!({"lumen": {"cascade": 1}})), "lumen.cascade");
        assert_eq!(bad(json!({"lumen": {"x": 1}})), "lumen.x");
        let mut b = json!({"model": "m", "provider": {}, "brand_pref": "x", "max_price": 1, "max_latency_ms": 5,
                           "quality_floor": 0.5, "lumen": {"cascade": true}, "seed": 1});
        let p = Prefs::from_body(b.as_object().unwrap()).unwrap();
        assert!(p.cascade && p.max_price == Some((1.0, 1.0)));
        strip_routing_fields(b.as_object_mut().unwrap());
        assert_eq!(b, json!({"model": "m", "seed": 1}));
        // The provider's own `lumen` options travel on; the router's do not.
        let mut b = json!({"model": "m", "lumen": {"cascade": true, "session": "s", "retries": 0,
                           "deadlines": {"stall_ms": 500}}});
        assert!(Prefs::from_body(b.as_object().unwrap()).is_ok());
        strip_routing_fields(b.as_object_mut().unwrap());
        assert_eq!(
            b,
            json!({"model": "m", "lumen": {"retries": 0, "deadlines": {"stall_ms": 500}}})
        );
        let mut body = json!({"temperature": 0.1}).as_object().cloned().unwrap();
        apply_defaults(
            &mut body,
            json!({"temperature": 0.9, "top_p": 0.5})
                .as_object()
                .unwrap(),
        );
        assert_eq!(
            Value::Object(body),
            json!({"temperature": 0.1, "top_p": 0.5})
        );
        assert_eq!(percent_decode("a%20b+c%zz"), "a b c%zz");
    }

    #[test]
    fn splits_are_sticky_by_session_user_or_long_system_prompt() {
        let pick = |b: Value| {
            run("lumen/ab", b, &[])
                .map(|p| order(&p).join(","))
                .unwrap()
        };
        let mut seen = std::collections::BTreeSet::new();
        for u in 0..20 {
            let user = format!("user-{u}");
            let a = pick(msg(json!({"user": user})));
            assert_eq!(a, pick(msg(json!({"user": user}))), "sticky per user");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 2, "both arms get traffic: {seen:?}");
        let s = pick(msg(json!({"lumen": {"session": "s1"}, "user": "x"})));
        assert_eq!(
            s,
            pick(msg(json!({"lumen": {"session": "s1"}, "user": "y"}))),
            "session wins over user"
        );
        let sys = "You are a helpful assistant. ".repeat(40);
        let with_sys = |q: &str| json!({"messages": [{"role": "system", "content": sys}, {"role": "user", "content": q}]});
        assert_eq!(
            pick(with_sys("a")),
            pick(with_sys("b")),
            "prompt-cache affinity"
        );
        let p = run("lumen/ab", msg(json!({})), &[]).unwrap();
        assert!(p.reason.contains("chosen by random"), "{}", p.reason);
        assert_eq!(p.candidates.len(), 2, "the other arm is the fallback");
        assert_eq!(
            run("lumen/ab", msg(json!({})), &["small".into()])
                .unwrap_err()
                .status,
            403
        );
        let bad = CAT.replace(
            "weight = 1 }, { model = \"big\"",
            "weight = 0 }, { model = \"big\"",
        );
        assert!(Catalog::from_toml(&bad, "t")
            .unwrap_err()
            .contains("weight must be at least 1"));
        let bad = CAT.replace("model = \"big\", weight", "model = \"huge\", weight");
        assert!(Catalog::from_toml(&bad, "t")
            .unwrap_err()
            .contains("\"huge\" is not a catalog model"));
    }

    #[test]
    fn only_virtual_models_need_the_body() {
        for m in [
            "auto",
            "lumen/auto",
            "lumen/ab-small?temperature=1",
            "openai:auto",
            "together:lumen/fast",
        ] {
            assert!(needs_body(m), "{m}");
        }
        for m in [
            "gpt-4o",
            "openai:gpt-4o?temperature=1",
            "openai/gpt-4o",
            "automatic",
        ] {
            assert!(!needs_body(m), "{m}");
        }
    }

    #[test]
    fn header_is_one_ascii_line() {
        let r = RouteExplain {
            tier: Some("lumen/auto".into()),
            score: Some(0.5),
            quality_floor: Some(0.6),
            model: "m".into(),
            reason: "a → b\nc".into(),
            ..RouteExplain::default()
        };
        let h = r.header();
        assert!(h.is_ascii() && !h.contains('\n'), "{h}");
        assert!(
            h.starts_with("model=m; tier=lumen/auto; score=0.500; floor=0.6"),
            "{h}"
        );
        // An answer served by a fallback names it first, the plan's winner after.
        let s = r.clone().served_by("fb").header();
        assert!(s.starts_with("model=fb; planned=m; tier=lumen/auto"), "{s}");
        assert_eq!(r.clone().served_by("m").served, None);
    }
}
