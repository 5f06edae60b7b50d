//! Model fusion: `model: "lumen/fusion"` (or `"lumen": {"fusion": …}` on a tier) runs a panel of
//! models on the request at once, then a synthesizer model that reads the panel's answers and
//! writes one answer, streamed like any other. Pure: the panel's choice (the catalog's
//! `[fusion]`, the request's, or three diverse catalog models), the budget hold that covers every
//! leg, the synthesizer's prompt, and the `lumen.fusion` report. The provider component runs it
//! (`components/provider/src/fusion.rs`): panel legs concurrently in one instance, then the
//! synthesizer through the ordinary call path, so fallbacks and the stitched stream apply.

use crate::contracts::{Candidate, Plan};
use crate::domain::catalog::{Catalog, Dialect, ModelConfig};
use crate::domain::compare::{Agreement, Answer};
use crate::domain::route::{RouteExplain, TIER_PREFIX};
use crate::error::ApiError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The virtual model.
pub const FUSION_MODEL: &str = "lumen/fusion";
/// Panel size when none is configured.
pub const DEFAULT_SIZE: usize = 3;
/// Most panel members.
pub const MAX_SIZE: usize = 8;
/// Panel deadline when none is configured: a member slower than this is dropped.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;
/// Tokens the synthesizer's instructions add to its prompt (for the hold).
pub const SYNTH_OVERHEAD_TOKENS: u64 = 200;

/// The catalog's `[fusion]`: the default panel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FusionConfig {
    /// Panel models (ids or aliases); empty: [`DEFAULT_SIZE`] diverse catalog models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub panel: Vec<String>,
    /// Size of a panel picked from the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Synthesizer (default: the strongest catalog model by `quality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthesizer: Option<String>,
    /// Members not done by then are dropped, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panel_deadline_ms: Option<u64>,
}

impl FusionConfig {
    /// Checks references and values.
    pub fn check(&self, cat: &Catalog) -> Result<(), String> {
        for (i, m) in self.panel.iter().enumerate() {
            if cat.lookup(m).is_none() {
                return Err(format!(
                    "fusion.panel[{i}] \"{m}\" is not a catalog model or alias"
                ));
            }
        }
        if let Some(s) = &self.synthesizer {
            if cat.lookup(s).is_none() {
                return Err(format!(
                    "fusion.synthesizer \"{s}\" is not a catalog model or alias"
                ));
            }
        }
        if self.size.is_some_and(|n| !(1..=MAX_SIZE).contains(&n)) || self.panel.len() > MAX_SIZE {
            return Err(format!("a fusion panel has 1 to {MAX_SIZE} members"));
        }
        if self.panel_deadline_ms == Some(0) {
            return Err("fusion.panel_deadline_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// The request's `lumen.fusion`: `true`, or `{"panel", "size", "synthesizer", "deadline_ms"}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FusionAsk {
    /// Fusion asked for (on a tier).
    pub on: bool,
    /// Panel models.
    pub panel: Vec<String>,
    /// Panel size.
    pub size: Option<usize>,
    /// Synthesizer.
    pub synthesizer: Option<String>,
    /// Panel deadline, ms.
    pub deadline_ms: Option<u64>,
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(param), "invalid_value")
}

impl FusionAsk {
    /// Reads `lumen.fusion` of a body; errors name the field.
    pub fn from_body(body: &Map<String, Value>) -> Result<FusionAsk, ApiError> {
        let Some(v) = body.get("lumen").and_then(|l| l.get("fusion")) else {
            return Ok(FusionAsk::default());
        };
        match v {
            Value::Null => Ok(FusionAsk::default()),
            Value::Bool(on) => Ok(FusionAsk {
                on: *on,
                ..FusionAsk::default()
            }),
            Value::Object(o) => {
                let mut a = FusionAsk {
                    on: true,
                    ..FusionAsk::default()
                };
                for (k, v) in o {
                    let param = format!("lumen.fusion.{k}");
                    match k.as_str() {
                        "panel" => {
                            a.panel = v
                                .as_array()
                                .and_then(|xs| {
                                    xs.iter()
                                        .map(|x| x.as_str().map(str::to_string))
                                        .collect::<Option<Vec<_>>>()
                                })
                                .filter(|p| (1..=MAX_SIZE).contains(&p.len()))
                                .ok_or_else(|| {
                                    bad(
                                        &param,
                                        format!("'{param}' must be 1 to {MAX_SIZE} model names"),
                                    )
                                })?
                        }
                        "size" => {
                            a.size = Some(
                                v.as_u64()
                                    .map(|n| n as usize)
                                    .filter(|n| (1..=MAX_SIZE).contains(n))
                                    .ok_or_else(|| {
                                        bad(&param, format!("'{param}' must be 1 to {MAX_SIZE}"))
                                    })?,
                            )
                        }
                        "synthesizer" => {
                            a.synthesizer = Some(v.as_str().map(str::to_string).ok_or_else(
                                || bad(&param, format!("'{param}' must be a model name")),
                            )?)
                        }
                        "deadline_ms" => {
                            a.deadline_ms = Some(v.as_u64().filter(|n| *n > 0).ok_or_else(
                                || bad(&param, format!("'{param}' must be a positive integer")),
                            )?)
                        }
                        _ => {
                            return Err(bad(
                                &param,
                                format!("unknown field '{param}'; known: panel, size, synthesizer, deadline_ms"),
                            ))
                        }
                    }
                }
                Ok(a)
            }
            _ => Err(bad(
                "lumen.fusion",
                "'lumen.fusion' must be a boolean or an object".into(),
            )),
        }
    }
}

/// One panel member as planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PanelMember {
    /// Catalog model.
    pub model: String,
    /// Its offers, in order (no fallback models: a member that fails is dropped).
    pub candidates: Vec<Candidate>,
}

/// The fusion part of a plan; the plan's `candidates` are the synthesizer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FusionPlan {
    /// The panel.
    pub panel: Vec<PanelMember>,
    /// The synthesizer's catalog model.
    pub synthesizer: String,
    /// Members not done by then are dropped, ms.
    pub deadline_ms: u64,
}

/// What a panel member may sit on a panel with: a chat model on a provider that answers
/// directly (no queue backends with cold starts, no Spin LLM), allowed for the key, with the
/// capabilities the request needs.
fn eligible(cat: &Catalog, id: &str, m: &ModelConfig, allowed: &[&str], caps: &[&str]) -> bool {
    let direct = !matches!(
        cat.providers[&m.provider].dialect,
        Dialect::Queue | Dialect::SpinLlm
    ) && !cat.providers[&m.provider].cold_start;
    let chat = m.capabilities.is_empty() || m.capabilities.iter().any(|c| c == "chat");
    direct
        && chat
        && (allowed.is_empty()
            || allowed
                .iter()
                .any(|a| *a == id || m.aliases.iter().any(|x| x == a)))
        && caps.iter().all(|c| m.capabilities.iter().any(|x| x == c))
}

fn group(m: &ModelConfig) -> &str {
    m.brand.as_deref().unwrap_or(&m.provider)
}

/// Strongest first: by `quality`, then dearest (price as a proxy), then id.
fn strength_order<'a>(models: &mut [(&'a String, &'a ModelConfig)]) {
    models.sort_by(|a, b| {
        b.1.quality
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.1.quality.unwrap_or(f64::NEG_INFINITY))
            .then(
                (b.1.price.input + b.1.price.output)
                    .total_cmp(&(a.1.price.input + a.1.price.output)),
            )
            .then(a.0.cmp(b.0))
    });
}

/// `size` diverse models: the strongest eligible model of each brand (or provider), strongest
/// brands first, then more of the same brands when there are fewer brands than seats.
pub fn default_panel(cat: &Catalog, allowed: &[&str], caps: &[&str], size: usize) -> Vec<String> {
    let mut models: Vec<(&String, &ModelConfig)> = cat
        .models
        .iter()
        .filter(|(id, m)| eligible(cat, id, m, allowed, caps))
        .collect();
    strength_order(&mut models);
    let mut picked: Vec<String> = Vec::new();
    let mut groups: Vec<&str> = Vec::new();
    for (id, m) in &models {
        if picked.len() < size && !groups.contains(&group(m)) {
            groups.push(group(m));
            picked.push((*id).clone());
        }
    }
    for (id, _) in &models {
        if picked.len() < size && !picked.contains(id) {
            picked.push((*id).clone());
        }
    }
    picked
}

fn resolve(cat: &Catalog, name: &str, param: &str) -> Result<String, ApiError> {
    cat.lookup(name)
        .map(|(id, _)| id.to_string())
        .ok_or_else(|| {
            ApiError::not_found(
                format!("the model \"{name}\" does not exist"),
                Some(param),
                "model_not_found",
            )
        })
}

fn member(cat: &Catalog, id: &str) -> Result<PanelMember, ApiError> {
    Ok(PanelMember {
        model: id.to_string(),
        candidates: cat.plan(id, &[])?.candidates,
    })
}

/// The plan of `model: "lumen/fusion"`: the request's panel, else the catalog's, else
/// [`default_panel`]; the synthesizer likewise (default: the strongest eligible model).
/// `allowed` are the key's concrete models (empty: all); `caps` what the request needs.
pub fn plan(
    cat: &Catalog,
    requested: &str,
    allowed: &[&str],
    caps: &[&str],
    ask: &FusionAsk,
) -> Result<Plan, ApiError> {
    let cfg = cat.fusion.clone().unwrap_or_default();
    let panel_caps: Vec<&str> = caps.iter().copied().filter(|c| *c != "stream").collect();
    let size = ask.size.or(cfg.size).unwrap_or(DEFAULT_SIZE);
    let (names, param): (Vec<String>, &str) = if !ask.panel.is_empty() {
        (ask.panel.clone(), "lumen.fusion.panel")
    } else if !cfg.panel.is_empty() {
        (cfg.panel.clone(), "model")
    } else {
        (default_panel(cat, allowed, &panel_caps, size), "model")
    };
    let mut panel = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let id = resolve(cat, n, &format!("{param}[{i}]"))?;
        if !allowed.is_empty() && !allowed.contains(&id.as_str()) && !allowed.contains(&n.as_str())
        {
            return Err(ApiError::permission(
                format!("this API key may not use model \"{id}\" (fusion panel member)"),
                "model_not_allowed",
            ));
        }
        if !panel.iter().any(|m: &PanelMember| m.model == id) {
            panel.push(member(cat, &id)?);
        }
    }
    if panel.is_empty() {
        return Err(ApiError::invalid_request(
            "no catalog model can sit on a fusion panel for this request",
            Some("model"),
            "no_eligible_model",
        ));
    }
    let synthesizer = match ask.synthesizer.as_ref().or(cfg.synthesizer.as_ref()) {
        Some(s) => resolve(cat, s, "lumen.fusion.synthesizer")?,
        None => {
            let mut models: Vec<(&String, &ModelConfig)> = cat
                .models
                .iter()
                .filter(|(id, m)| eligible(cat, id, m, allowed, caps))
                .collect();
            strength_order(&mut models);
            models
                .first()
                .map(|(id, _)| (*id).clone())
                .unwrap_or_else(|| panel[0].model.clone())
        }
    };
    let mut plan = cat.plan(&synthesizer, &[])?;
    plan.requested = requested.to_string();
    let names: Vec<&str> = panel.iter().map(|m| m.model.as_str()).collect();
    plan.reason = format!(
        "fusion: panel {} → synthesizer {synthesizer}",
        names.join(", ")
    );
    plan.route = Some(RouteExplain {
        tier: Some(FUSION_MODEL.to_string()),
        model: synthesizer.clone(),
        reason: plan.reason.clone(),
        ..RouteExplain::default()
    });
    plan.fusion = Some(FusionPlan {
        panel,
        synthesizer,
        deadline_ms: ask
            .deadline_ms
            .or(cfg.panel_deadline_ms)
            .unwrap_or(DEFAULT_DEADLINE_MS),
    });
    Ok(plan)
}

/// Fusion on a tier's plan: the panel is the first `size` eligible candidates of the tier, one
/// per brand where it can; the synthesizer the strongest eligible one (highest predicted
/// quality) — its candidates lead the plan.
pub fn on_tier(cat: &Catalog, mut plan: Plan, ask: &FusionAsk) -> Result<Plan, ApiError> {
    let cfg = cat.fusion.clone().unwrap_or_default();
    let size = ask.size.or(cfg.size).unwrap_or(DEFAULT_SIZE);
    let route = plan.route.clone().unwrap_or_default();
    let mut eligible: Vec<&crate::domain::route::Considered> = route
        .candidates
        .iter()
        .filter(|c| c.excluded.is_none())
        .collect();
    let order: Vec<&str> = plan.candidates.iter().map(|c| c.model.as_str()).collect();
    eligible.sort_by_key(|c| {
        order
            .iter()
            .position(|m| *m == c.model)
            .unwrap_or(usize::MAX)
    });
    let synth = eligible
        .iter()
        .max_by(|a, b| {
            a.predicted_quality
                .total_cmp(&b.predicted_quality)
                .then(b.price.total_cmp(&a.price))
        })
        .map(|c| c.model.clone())
        .unwrap_or_else(|| route.model.clone());
    let mut names: Vec<String> = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for c in &eligible {
        let g = group(&cat.models[&c.model]).to_string();
        if names.len() < size && !groups.contains(&g) {
            groups.push(g);
            names.push(c.model.clone());
        }
    }
    for c in &eligible {
        if names.len() < size && !names.contains(&c.model) {
            names.push(c.model.clone());
        }
    }
    let panel = names
        .iter()
        .map(|n| member(cat, n))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = plan.candidates.iter().position(|c| c.model == synth) {
        let c = plan.candidates.remove(i);
        plan.candidates.insert(0, c);
    }
    plan.reason = format!(
        "{}; fusion: panel {} → synthesizer {synth}",
        plan.reason,
        names.join(", ")
    );
    if let Some(r) = plan.route.as_mut() {
        r.reason = format!("{}; fusion → synthesizer {synth}", r.reason);
        r.model = synth.clone();
    }
    plan.fusion = Some(FusionPlan {
        panel,
        synthesizer: synth,
        deadline_ms: ask
            .deadline_ms
            .or(cfg.panel_deadline_ms)
            .unwrap_or(DEFAULT_DEADLINE_MS),
    });
    Ok(plan)
}

/// Whether a model string asks for fusion by name.
pub fn is_fusion_model(name: &str) -> bool {
    name == FUSION_MODEL
}

/// The most a fused request can cost: every member at its dearest offer, then the synthesizer
/// reading the prompt, its instructions and every member's longest answer.
pub fn max_cost_nanos(plan: &Plan, prompt_tokens: u64, output_tokens: u64) -> i64 {
    let Some(f) = &plan.fusion else {
        return crate::store::ledger::max_cost_nanos(
            prompt_tokens,
            output_tokens,
            plan.candidates.iter().map(|c| &c.price),
        );
    };
    let panel: i64 = f
        .panel
        .iter()
        .map(|m| max_cost_nanos_of(prompt_tokens, output_tokens, &m.candidates))
        .sum();
    let synth_prompt = prompt_tokens + SYNTH_OVERHEAD_TOKENS + output_tokens * f.panel.len() as u64;
    panel + max_cost_nanos_of(synth_prompt, output_tokens, &plan.candidates)
}

fn max_cost_nanos_of(prompt: u64, output: u64, cs: &[Candidate]) -> i64 {
    crate::store::ledger::max_cost_nanos(prompt, output, cs.iter().map(|c| &c.price))
}

/// How one panel member did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PanelOutcome {
    /// Catalog model.
    pub model: String,
    /// Provider that answered (or was last tried).
    pub provider: String,
    /// Its answer (when it answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// Why it was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
    /// Cost, nano-dollars.
    pub cost_nanos: i64,
    /// Time it took, ms.
    pub latency_ms: f64,
    /// Tokens used.
    pub tokens: u64,
}

/// The text of the last user message of a request.
fn last_user_text(body: &Map<String, Value>) -> String {
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    match last.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The synthesizer's request: the client's, with a system instruction first and a last user
/// turn restating the request and holding the panel's answers (and who was dropped).
pub fn synthesis_body(body: &Map<String, Value>, panel: &[PanelOutcome]) -> Map<String, Value> {
    let mut out = body.clone();
    let mut messages: Vec<Value> = vec![json!({
        "role": "system",
        "content": "You are the synthesizer of a panel of models. The last message holds the panel's answers to the conversation before it. Write the single best answer to that conversation: keep what the answers agree on, resolve where they conflict by reasoning it through, fix their mistakes, and answer in the form the conversation asks for. Do not mention the panel."
    })];
    messages.extend(
        body.get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    );
    let mut text = format!(
        "The request:\n{}\n\nPanel answers:\n",
        last_user_text(body).trim()
    );
    let mut n = 0;
    for p in panel {
        if let Some(a) = &p.answer {
            n += 1;
            text.push_str(&format!("\n[{n}] {}:\n{}\n", p.model, a.text.trim()));
            for t in &a.tool_calls {
                text.push_str(&format!("(calls {}({}))\n", t.name, t.arguments));
            }
        }
    }
    let dropped: Vec<&str> = panel
        .iter()
        .filter(|p| p.answer.is_none())
        .map(|p| p.model.as_str())
        .collect();
    if !dropped.is_empty() {
        text.push_str(&format!(
            "\n(Dropped, no answer: {}.)\n",
            dropped.join(", ")
        ));
    }
    text.push_str("\nWrite the final answer now.");
    messages.push(json!({"role": "user", "content": text}));
    out.insert("messages".into(), Value::Array(messages));
    out
}

/// The panel's request: the client's, whole (not streamed).
pub fn panel_body(body: &Map<String, Value>) -> Map<String, Value> {
    let mut out = body.clone();
    out.remove("stream");
    out.remove("stream_options");
    out
}

/// `lumen.fusion`: the panel with each leg's cost and latency, who was dropped and why, the
/// synthesizer, and where the answers agree and conflict.
pub fn report(
    panel: &[PanelOutcome],
    panel_ms: f64,
    synthesizer: &str,
    synth_cost_nanos: i64,
    agreement: Option<&Agreement>,
    fell_back: bool,
) -> Value {
    let nanos = crate::domain::pricing::NANOS_PER_USD;
    let members: Vec<Value> = panel
        .iter()
        .map(|p| {
            let mut m = json!({
                "model": p.model,
                "provider": p.provider,
                "ok": p.answer.is_some(),
                "cost": p.cost_nanos as f64 / nanos,
                "latency_ms": (p.latency_ms * 10.0).round() / 10.0,
                "tokens": p.tokens,
            });
            if let Some(why) = &p.dropped {
                m["dropped"] = why.clone().into();
            }
            m
        })
        .collect();
    let dropped: Vec<String> = panel
        .iter()
        .filter_map(|p| p.dropped.as_ref().map(|why| format!("{} ({why})", p.model)))
        .collect();
    let panel_cost: i64 = panel.iter().map(|p| p.cost_nanos).sum();
    let mut v = json!({
        "panel": members,
        "panel_ms": (panel_ms * 10.0).round() / 10.0,
        "synthesizer": {"model": synthesizer, "cost": synth_cost_nanos as f64 / nanos},
        "cost": (panel_cost + synth_cost_nanos) as f64 / nanos,
    });
    if let Some(a) = agreement {
        v["agreement"] = serde_json::to_value(a).unwrap_or(Value::Null);
    }
    if !dropped.is_empty() {
        v["dropped"] = json!(dropped);
        v["note"] = format!(
            "answered without {}: dropped from the panel",
            dropped.join(", ")
        )
        .into();
    }
    if fell_back {
        v["note"] = "every panel member failed: the synthesizer answered the request alone".into();
    }
    v
}

/// Whether a model string names a virtual tier model (for fusion on tiers).
pub fn is_tier_model(name: &str) -> bool {
    name == "auto" || name.starts_with(TIER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAT: &str = r#"
[providers.a]
dialect = "openai"
base_url_variable = "a_base_url"
api_key_variable = "a_api_key"
[providers.b]
dialect = "anthropic"
base_url_variable = "b_base_url"
api_key_variable = "b_api_key"
[providers.q]
dialect = "queue"
base_url_variable = "q_base_url"
api_key_variable = "q_api_key"

[models.a-small]
provider = "a"
upstream_id = "s"
context_window = 1000
capabilities = ["chat", "stream"]
quality = 0.5
price = { input = 0.1, output = 0.1, source = "s", as_of = "2026-01-01" }
[models.a-big]
provider = "a"
upstream_id = "b"
context_window = 1000
capabilities = ["chat", "stream", "tools"]
quality = 2.0
price = { input = 5.0, output = 10.0, source = "s", as_of = "2026-01-01" }
[models.b-mid]
provider = "b"
upstream_id = "m"
context_window = 1000
capabilities = ["chat", "stream"]
price = { input = 1.0, output = 2.0, source = "s", as_of = "2026-01-01" }
[models.q-open]
provider = "q"
upstream_id = "o"
context_window = 1000
capabilities = ["chat", "stream"]
quality = 3.0
price = { input = 0.0, output = 0.0, source = "s", as_of = "2026-01-01" }
"#;

    fn cat() -> Catalog {
        Catalog::from_toml(CAT, "t").unwrap()
    }

    #[test]
    fn the_default_panel_is_diverse_and_skips_queue_backends() {
        let c = cat();
        assert_eq!(
            default_panel(&c, &[], &[], 3),
            ["a-big", "b-mid", "a-small"]
        );
        assert_eq!(default_panel(&c, &[], &[], 2), ["a-big", "b-mid"]);
        assert_eq!(default_panel(&c, &[], &["tools"], 3), ["a-big"]);
        assert_eq!(
            default_panel(&c, &["a-small", "b-mid"], &[], 3),
            ["a-small", "b-mid"]
        );
        let p = plan(&c, FUSION_MODEL, &[], &["stream"], &FusionAsk::default()).unwrap();
        let f = p.fusion.as_ref().unwrap();
        assert_eq!(f.synthesizer, "a-big");
        assert_eq!(p.candidates[0].model, "a-big");
        assert_eq!(f.panel.len(), 3);
        assert_eq!(f.deadline_ms, DEFAULT_DEADLINE_MS);
    }

    #[test]
    fn the_request_names_its_panel_and_errors_name_the_field() {
        let c = cat();
        let body = json!({"lumen": {"fusion": {"panel": ["a-small", "b-mid"], "synthesizer": "b-mid", "deadline_ms": 500}}});
        let ask = FusionAsk::from_body(body.as_object().unwrap()).unwrap();
        let p = plan(&c, FUSION_MODEL, &[], &[], &ask).unwrap();
        let f = p.fusion.unwrap();
        assert_eq!(
            f.panel.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(),
            ["a-small", "b-mid"]
        );
        assert_eq!((f.synthesizer.as_str(), f.deadline_ms), ("b-mid", 500));
        for (v, param) in [
            (json!({"panel": []}), "lumen.fusion.panel"),
            (json!({"size": 99}), "lumen.fusion.size"),
            (json!({"judge": "x"}), "lumen.fusion.judge"),
            (json!("yes"), "lumen.fusion"),
        ] {
            let b = json!({"lumen": {"fusion": v}});
            let e = FusionAsk::from_body(b.as_object().unwrap()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param));
        }
        let ask = FusionAsk {
            panel: vec!["nope".into()],
            on: true,
            ..FusionAsk::default()
        };
        let e = plan(&c, FUSION_MODEL, &[], &[], &ask).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("lumen.fusion.panel[0]"));
        // A key limited to some models cannot put others on its panel.
        let ask = FusionAsk {
            panel: vec!["a-big".into()],
            on: true,
            ..FusionAsk::default()
        };
        assert_eq!(
            plan(&c, FUSION_MODEL, &["a-small"], &[], &ask)
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn the_hold_covers_every_leg() {
        let c = cat();
        let ask = FusionAsk {
            panel: vec!["a-small".into(), "b-mid".into()],
            synthesizer: Some("a-big".into()),
            on: true,
            ..FusionAsk::default()
        };
        let p = plan(&c, FUSION_MODEL, &[], &[], &ask).unwrap();
        // small: 1000×0.1 + 100×0.1 = 110 µ$; mid: 1000×1 + 100×2 = 1,200 µ$;
        // synth: (1000 + 200 + 2×100)×5 + 100×10 = 8,000 µ$ (per million tokens).
        assert_eq!(
            max_cost_nanos(&p, 1000, 100),
            110_000 + 1_200_000 + 8_000_000
        );
    }

    #[test]
    fn the_synthesizer_reads_the_answers_and_the_report_names_the_dropped() {
        let body = json!({"model": FUSION_MODEL, "stream": true, "messages": [{"role": "user", "content": "2+2?"}]});
        let body = body.as_object().unwrap();
        let panel = vec![
            PanelOutcome {
                model: "a-small".into(),
                provider: "a".into(),
                answer: Some(Answer {
                    text: "4".into(),
                    tool_calls: vec![],
                }),
                cost_nanos: 10,
                latency_ms: 12.34,
                tokens: 5,
                dropped: None,
            },
            PanelOutcome {
                model: "b-mid".into(),
                provider: "b".into(),
                dropped: Some("provider \"b\" failed with HTTP 500".into()),
                ..PanelOutcome::default()
            },
        ];
        let s = synthesis_body(body, &panel);
        let msgs = s["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0]["role"], "system");
        let last = msgs[2]["content"].as_str().unwrap();
        assert!(
            last.starts_with("The request:\n2+2?\n\nPanel answers:\n"),
            "{last}"
        );
        assert!(
            last.contains("[1] a-small:\n4") && last.contains("Dropped, no answer: b-mid"),
            "{last}"
        );
        assert_eq!(s["stream"], true);
        assert!(panel_body(body).get("stream").is_none());
        let r = report(&panel, 40.0, "a-big", 90, None, false);
        assert_eq!(r["cost"], 100e-9);
        assert_eq!(r["panel"][1]["ok"], false);
        assert_eq!(
            r["dropped"],
            json!(["b-mid (provider \"b\" failed with HTTP 500)"])
        );
        assert!(r["note"].as_str().unwrap().contains("b-mid"));
    }
}
