//! The model catalog (`config/catalog.toml`): providers, models, prices and the resolution of a
//! requested model name to an ordered plan.
//!
//! Parsed once per load with unknown keys rejected, then cross-checked so that every error names
//! both ends of a broken reference.

use crate::contracts::{Candidate, Plan, ProviderTarget};
use crate::error::ApiError;
use crate::kv::{self, CompiledCatalog, Kv};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Wire dialects a provider may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// OpenAI Chat Completions and every compatible server (vLLM, TGI, Groq, ...).
    Openai,
}

/// Capabilities a model may have.
pub const CAPABILITIES: &[&str] = &[
    "chat",
    "stream",
    "tools",
    "json_object",
    "json_schema",
    "vision",
];

/// A provider: how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire dialect.
    pub dialect: Dialect,
    /// Spin variable holding the base URL (e.g. `https://api.openai.com/v1`).
    pub base_url_variable: String,
    /// Spin variable holding the API key; empty value means no `Authorization` header.
    pub api_key_variable: String,
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
    /// Ability on the router's difficulty scale (see `bench/ROUTER-eval.md`); models without one
    /// are never chosen by a tier, only when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// Brand (maker) for `brand_pref`, e.g. `"meta"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
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
            let p = &m.price;
            for (name, v) in [
                ("input", Some(p.input)),
                ("output", Some(p.output)),
                ("cached_input", p.cached_input),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(format!(
                            "price.{name} of model \"{id}\" must be a non-negative number, got {v}"
                        ));
                    }
                }
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
            if !name.starts_with(crate::route::TIER_PREFIX) {
                return Err(format!(
                    "split \"{name}\" must be named under \"{}\" (virtual models live there)",
                    crate::route::TIER_PREFIX
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
        for (id, p) in &self.providers {
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

    /// Like [`Catalog::from_toml`], but reuses the checked catalog stored in `kv` under the
    /// sha256 of `text` (JSON parses several times faster than TOML in wasm). An edited file has
    /// a new hash, so a stale catalog is never served.
    pub fn from_toml_cached(text: &str, origin: &str, kv: &dyn Kv) -> Result<Catalog, String> {
        let key = CompiledCatalog(hex::encode(Sha256::digest(text.as_bytes())));
        if let Ok(Some(cat)) = kv::load(kv, &key) {
            return Ok(cat);
        }
        let cat = Self::from_toml(text, origin)?;
        // A cache write failure only costs the next request a parse.
        let _ = kv::store(kv, &key, &cat);
        Ok(cat)
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
                let re = regex::Regex::new(&r.pattern).ok()?;
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
        let provider = &self.providers[&model.provider];
        Candidate {
            model: id.to_string(),
            upstream_model: model.upstream_id.clone(),
            price: model.price.clone(),
            context_window: model.context_window,
            provider: ProviderTarget {
                name: model.provider.clone(),
                dialect: provider.dialect,
                base_url_variable: provider.base_url_variable.clone(),
                api_key_variable: provider.api_key_variable.clone(),
            },
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
            candidates: vec![self.candidate(id)],
            defaults: serde_json::Map::new(),
            cascade: false,
            route: None,
        })
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
                    "pricing": {
                        "input_per_mtok": m.price.input,
                        "output_per_mtok": m.price.output,
                        "cached_input_per_mtok": m.price.cached_input.unwrap_or(m.price.input),
                        "source": m.price.source,
                        "as_of": m.price.as_of,
                    },
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
                "id": format!("{}{name}", crate::route::TIER_PREFIX),
                "object": "model",
                "created": created,
                "owned_by": "lumen",
                "virtual": true,
                "description": t.description,
                "quality_floor": t.quality_floor,
                "aliases": aliases,
            }));
        }
        serde_json::json!({"object": "list", "data": data})
    }
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
        let text = include_str!("../../config/catalog.toml");
        let cat = Catalog::from_toml(text, "config/catalog.toml").unwrap();
        assert!(cat.lookup("gpt-4o-mini").is_some());
        assert!(cat.lookup("gpt-4o").is_some());
    }

    #[test]
    fn cached_parse_reuses_the_checked_catalog_and_follows_edits() {
        let store = crate::kv::MemKv::default();
        let a = Catalog::from_toml_cached(GOOD, "t", &store).unwrap();
        assert_eq!(store.keys().len(), 1);
        assert_eq!(Catalog::from_toml_cached(GOOD, "t", &store).unwrap(), a);
        let edited = GOOD.replace("context_window = 128000", "context_window = 64000");
        let b = Catalog::from_toml_cached(&edited, "t", &store).unwrap();
        assert_eq!(b.models["gpt-4o-mini"].context_window, 64000);
        assert_eq!(store.keys().len(), 2);
        let e = Catalog::from_toml_cached("nonsense = 1", "t", &store).unwrap_err();
        assert!(e.contains("nonsense"), "{e}");
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
