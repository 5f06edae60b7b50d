//! The model catalog (`config/catalog.toml`): providers, models, prices and the resolution of a
//! requested model name to an ordered plan.
//!
//! Parsed once per load with unknown keys rejected, then cross-checked so that every error names
//! both ends of a broken reference.

use crate::contracts::{Candidate, Plan, ProviderTarget};
use crate::error::ApiError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Wire dialects a provider may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// OpenAI Chat Completions and every compatible server (vLLM, TGI, Groq, Azure, ...).
    Openai,
    /// Anthropic Messages (`POST {base}/messages`).
    Anthropic,
    /// Google Gemini (`{base}/models/{id}:generateContent` / `:streamGenerateContent`).
    Gemini,
    /// Queue-style GPU serverless (`POST {base}/run`, `GET {base}/status/{id}`), OpenAI bodies.
    Queue,
    /// Spin's own LLM interface (`fermyon:spin/llm`), e.g. Fermyon Cloud's serverless GPUs; only
    /// with the catalog's top-level `spin_llm = true`.
    SpinLlm,
}

impl Dialect {
    /// The name used in the catalog and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Openai => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Queue => "queue",
            Dialect::SpinLlm => "spin-llm",
        }
    }
}

/// Capabilities a model may have.
pub const CAPABILITIES: &[&str] = &[
    "chat",
    "stream",
    "tools",
    "json_object",
    "json_schema",
    "vision",
    "embeddings",
];

/// A provider: how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire dialect.
    pub dialect: Dialect,
    /// Spin variable holding the base URL (e.g. `https://api.openai.com/v1`); not for `spin-llm`.
    #[serde(default)]
    pub base_url_variable: String,
    /// Spin variable holding the API key; empty value means no key is sent. Not for `spin-llm`.
    #[serde(default)]
    pub api_key_variable: String,
    /// Header that carries the key as-is (e.g. Azure's `api-key`); default: the dialect's own
    /// (`Authorization: Bearer` for openai, `x-api-key` for anthropic, `x-goog-api-key` for gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<String>,
    /// API version: Azure's `api-version` query parameter (openai dialect), or the
    /// `anthropic-version` header (default `2023-06-01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Azure deployment URLs: `{base}/openai/deployments/{upstream_id}/chat/completions`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deployment_path: bool,
    /// The backend scales to zero and may take long to start: it gets the longer first-token
    /// deadline and its cold starts are recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold_start: bool,
    /// Deadline for the first token, ms (default 30 000; 300 000 with `cold_start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_timeout_ms: Option<u64>,
}

/// The same model served by another provider, at that provider's price; tried after the model's
/// own provider, in the order listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Key into `[providers]`.
    pub provider: String,
    /// The id that provider knows the model by.
    pub upstream_id: String,
    /// That provider's prices.
    pub price: Price,
}

/// Prices in US dollars per million tokens, with where and when they were read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input: f64,
    /// Output (completion) tokens.
    pub output: f64,
    /// Prompt tokens read from the provider's cache; defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache (Anthropic); defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Reasoning (thinking) tokens; defaults to `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<f64>,
    /// Where the price was read.
    pub source: String,
    /// When it was read (`YYYY-MM-DD`).
    pub as_of: String,
}

/// A model offered through one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Key into `[providers]`.
    pub provider: String,
    /// The id the upstream knows the model by.
    pub upstream_id: String,
    /// Context window in tokens.
    pub context_window: u64,
    /// Subset of [`CAPABILITIES`].
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Other names clients may use.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Prices.
    pub price: Price,
    /// Other providers serving the same model (fallbacks, each at its own price).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offers: Vec<Offer>,
    /// Ability on the router's difficulty scale (see `bench/ROUTER-eval.md`); models without one
    /// are never chosen by a tier, only when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// Brand (maker) for `brand_pref`, e.g. `"meta"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// Other catalog models to fall back to, in order, after every provider of this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Retries of one provider before the next, before the first byte: a number (5xx, 429 and
    /// connect failures; default 1, at most 5) or a table per failure class
    /// ([`crate::domain::retry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<crate::domain::retry::RetryOverrides>,
    /// Deadlines for this model (`connect_ms`, `first_token_ms`, `stall_ms`, `total_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadlines: Option<crate::domain::deadline::Overrides>,
}

/// A routing tier (`lumen/<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Default quality floor in [0, 1] (a request's `quality_floor` overrides it).
    pub quality_floor: f64,
    /// What the tier is for.
    #[serde(default)]
    pub description: String,
}

/// A weighted split (A/B test): a virtual model whose traffic goes to catalog models by weight,
/// sticky per session/user and, without one, per long system prompt (prompt-cache affinity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Targets with their weights.
    pub targets: Vec<SplitTarget>,
}

/// One arm of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// Catalog model id or alias.
    pub model: String,
    /// Relative weight (at least 1).
    pub weight: u32,
}

/// A regex alias rule: a requested name matching `pattern` resolves to `target` with `\1` or
/// `$1` replaced by capture groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasRule {
    /// Regular expression (`regex` crate syntax), anchored by the author.
    pub pattern: String,
    /// Model id or alias it resolves to.
    pub target: String,
}

/// The whole catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Allows `spin-llm` providers (Spin's `fermyon:spin/llm` interface); off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spin_llm: bool,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Models by id.
    pub models: BTreeMap<String, ModelConfig>,
    /// Routing tiers by name (`lumen/<name>`; `auto` is also accepted bare).
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Regex alias rules, tried in order after ids and aliases.
    #[serde(default)]
    pub alias_rules: Vec<AliasRule>,
    /// Weighted splits by virtual model name.
    #[serde(default)]
    pub splits: BTreeMap<String, SplitConfig>,
    /// Shadow experiments by name: a route's traffic mirrored to a candidate model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shadows: BTreeMap<String, crate::domain::shadow::ShadowConfig>,
    /// The default fusion panel (`lumen/fusion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<crate::domain::fusion::FusionConfig>,
}

/// An alias rule's regex, compiled for one lookup. For an ASCII name and pattern it is compiled
/// without Unicode classes when the pattern allows: on an ASCII haystack `\d`, `\w`, `\s` and `\b`
/// match exactly what their Unicode forms match, and compiling Unicode `\d{4}` into automata
/// measured ~0.4 ms of CPU in wasm, paid afresh by every instance (every request) whose model is
/// not a plain id or alias. Patterns that need Unicode mode (`.`, negated classes) fall back to
/// it; so do non-ASCII names and patterns.
fn alias_regex(pattern: &str, ascii_name: bool) -> Option<regex::Regex> {
    if ascii_name && pattern.is_ascii() {
        if let Ok(re) = regex::RegexBuilder::new(pattern).unicode(false).build() {
            return Some(re);
        }
    }
    regex::Regex::new(pattern).ok()
}

fn rule_target(target: &str) -> String {
    // `\1` (sed style) is accepted as `${1}`.
    let mut out = String::with_capacity(target.len());
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str("${");
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                out.push(d);
                chars.next();
            }
            out.push('}');
        } else {
            out.push(c);
        }
    }
    out
}

/// A file's size and modification time (seconds and nanoseconds since the Unix epoch): the
/// router's build script records the catalog's when it bakes it, and the router compares the
/// mounted file's with it (`components/router`), natively and through WASI alike.
pub type FileStamp = (u64, u64, u32);

/// `path`'s [`FileStamp`], if the file and its modification time can be read.
pub fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    let since = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some((meta.len(), since.as_secs(), since.subsec_nanos()))
}

/// Whether `v` is a valid Spin variable name (lowercase letters, digits and '_', starting with a
/// letter).
pub fn is_variable_name(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && v.starts_with(|c: char| c.is_ascii_lowercase())
}

fn check_price(p: &Price, at: &str, id: &str) -> Result<(), String> {
    for (name, v) in [
        ("input", Some(p.input)),
        ("output", Some(p.output)),
        ("cached_input", p.cached_input),
        ("cache_write", p.cache_write),
        ("reasoning", p.reasoning),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "{at}.{name} of model \"{id}\" must be a non-negative number, got {v}"
                ));
            }
        }
    }
    Ok(())
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    it.map(String::as_str).collect::<Vec<_>>().join(", ")
}

impl Catalog {
    /// Parses and checks a catalog; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Catalog, String> {
        let cat: Catalog = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        cat.check().map_err(|e| format!("{origin}: {e}"))?;
        Ok(cat)
    }

    fn check(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("the catalog lists no models; add a [models.\"<id>\"] table".into());
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, m) in &self.models {
            if !self.providers.contains_key(&m.provider) {
                return Err(format!(
                    "unknown provider \"{}\" in model \"{id}\"; configured providers: {}",
                    m.provider,
                    names(self.providers.keys())
                ));
            }
            for cap in &m.capabilities {
                if !CAPABILITIES.contains(&cap.as_str()) {
                    return Err(format!(
                        "unknown capability \"{cap}\" in model \"{id}\"; known capabilities: {}",
                        CAPABILITIES.join(", ")
                    ));
                }
            }
            for (i, o) in m.offers.iter().enumerate() {
                if !self.providers.contains_key(&o.provider) {
                    return Err(format!(
                        "unknown provider \"{}\" in offers[{i}] of model \"{id}\"; configured providers: {}",
                        o.provider,
                        names(self.providers.keys())
                    ));
                }
                check_price(&o.price, &format!("offers[{i}].price"), id)?;
            }
            check_price(&m.price, "price", id)?;
            for (i, f) in m.fallbacks.iter().enumerate() {
                if f == id || !self.models.contains_key(f) {
                    return Err(format!(
                        "fallbacks[{i}] of model \"{id}\" must name another catalog model, got \"{f}\"; models: {}",
                        names(self.models.keys())
                    ));
                }
            }
            if let Some(r) = &m.retries {
                r.check()
                    .map_err(|e| format!("retries of model \"{id}\": {e}"))?;
            }
            if let Some(d) = &m.deadlines {
                d.check()
                    .map_err(|e| format!("deadlines of model \"{id}\": {e}"))?;
            }
            for name in std::iter::once(id).chain(&m.aliases) {
                if let Some(other) = seen.insert(name, id) {
                    return Err(format!("model name \"{name}\" is used by both \"{other}\" and \"{id}\"; names and aliases must be unique"));
                }
            }
        }
        for (name, t) in &self.tiers {
            if !(0.0..=1.0).contains(&t.quality_floor) {
                return Err(format!(
                    "tiers.{name}.quality_floor must be between 0 and 1, got {}",
                    t.quality_floor
                ));
            }
        }
        for (name, sp) in &self.splits {
            if !name.starts_with(crate::domain::route::TIER_PREFIX) {
                return Err(format!(
                    "split \"{name}\" must be named under \"{}\" (virtual models live there)",
                    crate::domain::route::TIER_PREFIX
                ));
            }
            if sp.targets.is_empty() {
                return Err(format!("splits.\"{name}\" has no targets"));
            }
            if self.lookup_plain(name).is_some() {
                return Err(format!("split \"{name}\" has the name of a model or alias"));
            }
            for (i, t) in sp.targets.iter().enumerate() {
                if t.weight == 0 {
                    return Err(format!(
                        "splits.\"{name}\".targets[{i}].weight must be at least 1"
                    ));
                }
                if self.lookup_plain(&t.model).is_none() {
                    return Err(format!(
                        "splits.\"{name}\".targets[{i}].model \"{}\" is not a catalog model; configured models: {}",
                        t.model,
                        names(self.models.keys())
                    ));
                }
            }
        }
        for (i, r) in self.alias_rules.iter().enumerate() {
            regex::Regex::new(&r.pattern).map_err(|e| {
                format!(
                    "alias_rules[{i}].pattern \"{}\" is not a valid regex: {e}",
                    r.pattern
                )
            })?;
        }
        for (id, m) in &self.models {
            if let Some(q) = m.quality {
                if !q.is_finite() {
                    return Err(format!("quality of model \"{id}\" must be a finite number"));
                }
            }
        }
        for (name, s) in &self.shadows {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(format!(
                    "shadow name \"{name}\" may hold only letters, digits, '-' and '_'"
                ));
            }
            s.check(&format!("shadows.{name}"), self, true)?;
        }
        if let Some(f) = &self.fusion {
            f.check(self)?;
        }
        for (id, p) in &self.providers {
            if p.dialect == Dialect::SpinLlm {
                if !self.spin_llm {
                    return Err(format!("provider \"{id}\" uses dialect \"spin-llm\", which is behind a flag; set spin_llm = true at the top of the catalog"));
                }
                // Spin's LLM interface needs no URL or key.
                continue;
            }
            for (field, v) in [
                ("base_url_variable", &p.base_url_variable),
                ("api_key_variable", &p.api_key_variable),
            ] {
                let ok = !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && v.starts_with(|c: char| c.is_ascii_lowercase());
                if !ok {
                    return Err(format!("{field} \"{v}\" of provider \"{id}\" is not a valid Spin variable name (lowercase letters, digits and '_', starting with a letter)"));
                }
            }
        }
        Ok(())
    }

    fn lookup_plain(&self, name: &str) -> Option<(&str, &ModelConfig)> {
        if let Some((id, m)) = self.models.get_key_value(name) {
            return Some((id.as_str(), m));
        }
        self.models
            .iter()
            .find(|(_, m)| m.aliases.iter().any(|a| a == name))
            .map(|(id, m)| (id.as_str(), m))
    }

    /// Finds a model by id, alias, or the first regex alias rule whose rewrite names one;
    /// returns its canonical id.
    pub fn lookup(&self, name: &str) -> Option<(&str, &ModelConfig)> {
        self.lookup_plain(name).or_else(|| {
            self.alias_rules.iter().find_map(|r| {
                let re = alias_regex(&r.pattern, name.is_ascii())?;
                if !re.is_match(name) {
                    return None;
                }
                let target = re.replace(name, rule_target(&r.target).as_str());
                self.lookup_plain(&target)
            })
        })
    }

    /// The plan entry of a catalog model (`id` must exist).
    pub fn candidate(&self, id: &str) -> Candidate {
        let model = &self.models[id];
        Candidate {
            model: id.to_string(),
            upstream_model: model.upstream_id.clone(),
            price: model.price.clone(),
            context_window: model.context_window,
            provider: self.target(&model.provider),
            retries: model.retries,
            deadlines: model.deadlines,
            health: None,
        }
    }

    /// Resolves a requested model to an ordered plan, honouring the key's allowed models
    /// (empty = all).
    pub fn plan(&self, requested: &str, allowed: &[String]) -> Result<Plan, ApiError> {
        let (id, model) = self.lookup(requested).ok_or_else(|| {
            ApiError::not_found(
                format!(
                    "the model \"{requested}\" does not exist; available models: {}",
                    names(self.models.keys())
                ),
                Some("model"),
                "model_not_found",
            )
        })?;
        if !allowed.is_empty() && !allowed.iter().any(|a| a == id || a == requested) {
            return Err(ApiError::permission(
                format!(
                    "this API key may not use model \"{id}\"; allowed models: {}",
                    names(allowed.iter())
                ),
                "model_not_allowed",
            ));
        }
        let reason = if id == requested {
            "pinned model"
        } else if self.lookup_plain(requested).is_some() {
            "alias"
        } else {
            "alias rule"
        };
        Ok(Plan {
            requested: requested.to_string(),
            reason: format!("{reason} \"{requested}\" → {id} on {}", model.provider),
            candidates: std::iter::once((&model.provider, &model.upstream_id, &model.price))
                .chain(
                    model
                        .offers
                        .iter()
                        .map(|o| (&o.provider, &o.upstream_id, &o.price)),
                )
                .map(|(p, upstream, price)| Candidate {
                    model: id.to_string(),
                    upstream_model: upstream.clone(),
                    price: price.clone(),
                    context_window: model.context_window,
                    provider: self.target(p),
                    retries: model.retries,
                    deadlines: model.deadlines,
                    health: None,
                })
                .collect(),
            defaults: serde_json::Map::new(),
            cascade: false,
            route: None,
            reference: None,
            shadow: None,
            fusion: None,
            read_also: None,
        })
    }

    /// How to reach provider `name` (which [`Catalog::check`] guarantees exists).
    fn target(&self, name: &str) -> ProviderTarget {
        let p = &self.providers[name];
        ProviderTarget {
            name: name.to_string(),
            dialect: p.dialect,
            base_url_variable: p.base_url_variable.clone(),
            api_key_variable: p.api_key_variable.clone(),
            auth_header: p.auth_header.clone(),
            api_version: p.api_version.clone(),
            deployment_path: p.deployment_path,
            cold_start: p.cold_start,
            first_token_timeout_ms: p.first_token_timeout_ms,
        }
    }

    /// The `GET /v1/models` list.
    pub fn models_list(&self, created: u64) -> serde_json::Value {
        let data: Vec<_> = self
            .models
            .iter()
            .map(|(id, m)| {
                serde_json::json!({
                    "id": id,
                    "object": "model",
                    "created": created,
                    "owned_by": m.provider,
                    "context_window": m.context_window,
                    "capabilities": m.capabilities,
                    "aliases": m.aliases,
                    "dialect": self.providers[&m.provider].dialect.as_str(),
                    "pricing": pricing_json(&m.price),
                    "offers": m.offers.iter().map(|o| serde_json::json!({
                        "provider": o.provider,
                        "dialect": self.providers[&o.provider].dialect.as_str(),
                        "pricing": pricing_json(&o.price),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut data = data;
        for (name, sp) in &self.splits {
            let targets: Vec<_> = sp
                .targets
                .iter()
                .map(|t| serde_json::json!({"model": t.model, "weight": t.weight}))
                .collect();
            data.push(serde_json::json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "lumen",
                "virtual": true,
                "split": targets,
                "aliases": [],
            }));
        }
        for (name, t) in &self.tiers {
            let aliases: Vec<&str> = if name == "auto" { vec!["auto"] } else { vec![] };
            data.push(serde_json::json!({
                "id": format!("{}{name}", crate::domain::route::TIER_PREFIX),
                "object": "model",
                "created": created,
                "owned_by": "lumen",
                "virtual": true,
                "description": t.description,
                "quality_floor": t.quality_floor,
                "aliases": aliases,
            }));
        }
        data.push(serde_json::json!({
            "id": crate::domain::fusion::FUSION_MODEL,
            "object": "model",
            "created": created,
            "owned_by": "lumen",
            "virtual": true,
            "description": "a panel of models answers, then a synthesizer writes one answer from theirs",
            "fusion": self.fusion.clone().unwrap_or_default(),
            "aliases": [],
        }));
        serde_json::json!({"object": "list", "data": data})
    }
}

/// A price as `GET /v1/models` shows it: every rate resolved (defaults applied), per million tokens.
fn pricing_json(p: &Price) -> serde_json::Value {
    serde_json::json!({
        "currency": "USD",
        "input_per_mtok": p.input,
        "output_per_mtok": p.output,
        "cached_input_per_mtok": p.cached_input.unwrap_or(p.input),
        "cache_write_per_mtok": p.cache_write.unwrap_or(p.input),
        "reasoning_per_mtok": p.reasoning.unwrap_or(p.output),
        "source": p.source,
        "as_of": p.as_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[providers.openai]
dialect = "openai"
base_url_variable = "openai_base_url"
api_key_variable = "openai_api_key"

[models."gpt-4o-mini"]
provider = "openai"
upstream_id = "gpt-4o-mini"
context_window = 128000
capabilities = ["chat", "tools"]
aliases = ["mini"]
price = { input = 0.15, output = 0.6, cached_input = 0.075, source = "https://openai.com/api/pricing", as_of = "2026-11-01" }
"#;

    #[test]
    fn the_bundled_catalog_parses() {
        let text = include_str!("../../../config/catalog.toml");
        let cat = Catalog::from_toml(text, "config/catalog.toml").unwrap();
        assert!(cat.lookup("gpt-4o-mini").is_some());
        assert!(cat.lookup("gpt-4o").is_some());
    }

    #[test]
    fn alias_rules_resolve_in_ascii_and_unicode_mode_alike() {
        let text = format!(
            "{GOOD}{}",
            r#"
[[alias_rules]]
pattern = '^(gpt-4o-mini)-\d{4}-\d{2}-\d{2}$'
target = '\1'

[[alias_rules]]
pattern = '^m\w+-(\w+)$'
target = '\1'

[[alias_rules]]
pattern = '^any:.+$'
target = 'mini'
"#
        );
        let cat = Catalog::from_toml(&text, "t").unwrap();
        let id = |name: &str| cat.lookup(name).map(|(id, _)| id.to_string());
        assert_eq!(id("gpt-4o-mini-2024-07-18").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(id("gpt-4o-mini-2024-07-1"), None);
        // Unicode digits are digits to the rule, as they were before ASCII mode.
        assert_eq!(id("gpt-4o-mini-٢٠٢٤-07-18").as_deref(), Some("gpt-4o-mini"));
        // `\w` takes a non-ASCII letter in a non-ASCII name.
        assert_eq!(id("méga-mini").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(id("mega-mini").as_deref(), Some("gpt-4o-mini"));
        // `.` needs Unicode mode (it could match invalid UTF-8 without it): still works.
        assert_eq!(id("any:thing").as_deref(), Some("gpt-4o-mini"));
        for (pattern, name) in [
            (
                r"^(gpt-4o(?:-mini)?)-\d{4}-\d{2}-\d{2}$",
                "gpt-4o-2024-08-06",
            ),
            (r"^gpt-\w+\b", "gpt-4o"),
            (r"^\s*x$", " x"),
            (r"^[^a]+$", "bcd"),
        ] {
            let unicode = regex::Regex::new(pattern).unwrap();
            let fast = alias_regex(pattern, true).unwrap();
            assert_eq!(
                fast.is_match(name),
                unicode.is_match(name),
                "{pattern} on {name}"
            );
            assert!(fast.is_match(name), "{pattern} on {name}");
        }
    }

    #[test]
    fn resolves_ids_and_aliases() {
        let cat = Catalog::from_toml(GOOD, "t").unwrap();
        let p = cat.plan("mini", &[]).unwrap();
        assert_eq!(p.candidates[0].model, "gpt-4o-mini");
        assert_eq!(p.candidates[0].provider.name, "openai");
        let e = cat.plan("gpt-5", &[]).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_deref()),
            (404, Some("model_not_found"))
        );
        let e = cat.plan("gpt-4o-mini", &["gpt-4o".into()]).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(cat.plan("mini", &["gpt-4o-mini".into()]).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_refs_are_errors() {
        let e = Catalog::from_toml(&GOOD.replace("context_window", "context_windw"), "cat.toml")
            .unwrap_err();
        assert!(
            e.starts_with("cat.toml:") && e.contains("context_windw"),
            "{e}"
        );
        let e = Catalog::from_toml(
            &GOOD.replace("provider = \"openai\"", "provider = \"opena\""),
            "cat.toml",
        )
        .unwrap_err();
        assert!(
            e.contains(
                "unknown provider \"opena\" in model \"gpt-4o-mini\"; configured providers: openai"
            ),
            "{e}"
        );
        let e = Catalog::from_toml(
            &GOOD.replace("dialect = \"openai\"", "dialect = \"spin-llm\""),
            "c",
        )
        .unwrap_err();
        assert!(e.contains("set spin_llm = true"), "{e}");
        let on = format!(
            "spin_llm = true\n{}",
            GOOD.replace("dialect = \"openai\"", "dialect = \"spin-llm\"")
        );
        assert!(Catalog::from_toml(&on, "c").is_ok());
        let e = Catalog::from_toml(&GOOD.replace("\"tools\"", "\"telepathy\""), "c").unwrap_err();
        assert!(e.contains("unknown capability \"telepathy\""), "{e}");
        let e = Catalog::from_toml(
            &GOOD.replace("dialect = \"openai\"", "dialect = \"smoke\""),
            "c",
        )
        .unwrap_err();
        assert!(e.contains("smoke"), "{e}");
    }
}
