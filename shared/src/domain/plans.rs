//! Plans (`config/plans.toml`): named sets of limits, a monthly budget, allowed models and
//! zero-retention, applied to keys created with `{"plan": "<name>"}`. Unknown keys are errors.

use crate::error::ApiError;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One plan.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Requests per minute per key.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Requests per UTC day per key.
    #[serde(default)]
    pub rpd: Option<u32>,
    /// Tokens per minute per key.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Tokens per UTC day per key.
    #[serde(default)]
    pub tpd: Option<u64>,
    /// Requests per minute across the tenant's keys.
    #[serde(default)]
    pub tenant_rpm: Option<u32>,
    /// Monthly spend cap of the tenant (when the tenant has no budget of its own).
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
    /// Models the plan's keys may use; empty = all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// No content retention (always true in effect: Lumen stores no content).
    #[serde(default)]
    pub zero_retention: bool,
    /// Per-key limits on one model (by catalog id), on top of the key's own.
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimits>,
    /// Reference model for `lumen.saved` of the plan's keys (a key's own wins); none = the
    /// route's own ([`crate::domain::saved`]).
    #[serde(default)]
    pub reference_model: Option<String>,
    /// Response cache settings of the plan's keys (a key's own come first).
    #[serde(default)]
    pub cache: Option<crate::domain::cache::CachePolicy>,
    /// A shadow experiment over the plan's requests (`plan-<name>` in `/admin/shadow`); its
    /// models are checked against the catalog by the router.
    #[serde(default)]
    pub shadow: Option<crate::domain::shadow::ShadowConfig>,
}

/// Limits of a key on one model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// Requests per minute on this model, per key.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute on this model, per key.
    #[serde(default)]
    pub tpm: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    plans: BTreeMap<String, Plan>,
}

/// All plans by name.
pub type Plans = BTreeMap<String, Plan>;

/// Parses `plans.toml`; `name` is the file name for messages.
pub fn parse(text: &str, name: &str) -> Result<Plans, String> {
    let f: File = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
    for (n, p) in &f.plans {
        if p.rpm == Some(0) || p.rpd == Some(0) || p.tenant_rpm == Some(0) {
            return Err(format!(
                "{name}: plans.{n}: request limits must be at least 1"
            ));
        }
        if p.tpm == Some(0) || p.tpd == Some(0) {
            return Err(format!(
                "{name}: plans.{n}: token limits must be at least 1"
            ));
        }
        if let Some(c) = &p.cache {
            c.check(&format!("plans.{n}.cache"))
                .map_err(|e| format!("{name}: {e}"))?;
        }
        if p.monthly_budget_usd
            .is_some_and(|b| !b.is_finite() || b < 0.0)
        {
            return Err(format!(
                "{name}: plans.{n}: monthly_budget_usd must be a non-negative number"
            ));
        }
    }
    Ok(f.plans)
}

/// The named plan, or a 400 naming the `plan` field and the plans there are.
pub fn find<'a>(plans: &'a Plans, name: &str) -> Result<&'a Plan, ApiError> {
    plans.get(name).ok_or_else(|| {
        ApiError::invalid_request(
            format!(
                "unknown plan \"{name}\"; plans: {}",
                plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Some("plan"),
            "plan_not_found",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_plans_parse() {
        let p = parse(
            include_str!("../../../config/plans.toml"),
            "config/plans.toml",
        )
        .unwrap();
        assert_eq!(p["free"].rpm, Some(20));
        assert_eq!(p["free"].allowed_models, vec!["gpt-4o-mini".to_string()]);
        assert!(p.contains_key("pro") && p.contains_key("scale"));
        assert_eq!(p["pro"].models["gpt-4o"].rpm, Some(60));
        assert_eq!(find(&p, "gold").unwrap_err().param.as_deref(), Some("plan"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = parse("[plans.x]\nrpm = 5\nrps = 1\n", "p.toml").unwrap_err();
        assert!(e.contains("unknown field `rps`"), "{e}");
        let e = parse("[plans.x]\nrpm = 0\n", "p.toml").unwrap_err();
        assert!(e.contains("plans.x"), "{e}");
        let e = parse("[plan.x]\n", "p.toml").unwrap_err();
        assert!(e.contains("unknown field `plan`"), "{e}");
        assert!(parse("[plans.x]\nmonthly_budget_usd = -1.0\n", "p.toml").is_err());
        let e = parse("[plans.x.models.m]\nrpd = 1\n", "p.toml").unwrap_err();
        assert!(e.contains("unknown field `rpd`"), "{e}");
    }
}
