//! "What you saved": the cost of the same tokens at a **reference model** minus what they
//! actually cost, priced with the same integer nano-dollar arithmetic as the cost itself
//! ([`crate::domain::pricing::cost_nanos`]), so `lumen.saved` on an answer is exactly what the
//! log records and `/v1/usage` sums.
//!
//! **The reference**, first that applies:
//!
//! | from | when |
//! |---|---|
//! | `request` | the request's `"lumen": {"reference_model": "gpt-4o"}` (an unknown model is a 400 naming `lumen.reference_model`) |
//! | `key` | the API key's `reference_model` (`POST /admin/keys`) |
//! | `plan` | the key's plan's `reference_model` (`config/plans.toml`) |
//! | `tier` | tier requests: the tier's strongest eligible candidate (highest `quality`, the dearest on a tie) |
//! | `pinned` | a pinned model (id, alias, `provider:` prefix): the model asked for, at the asked provider's price — routing chose nothing, so nothing is claimed; a fallback to a dearer model or offer shows as a negative saving |
//! | `split` | an A/B split: the target the split picked, for the same reason |
//!
//! A key's or plan's reference that is no longer in the catalog is passed over (the next row
//! applies) rather than failing the key's requests; the answer names the reference it used.
//!
//! **Never negative without saying so**: `saved` is not clamped — usage totals must add up to
//! what was really paid against the reference — and a negative saving carries a `saved_note`
//! naming the reference (`"the model that served costs more than the reference …"`).

use crate::contracts::Leg;
use crate::domain::catalog::{Catalog, Price};
use crate::domain::pricing::{cost_nanos, NANOS_PER_USD};
use crate::error::ApiError;
use crate::wire::openai::Usage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Where a reference model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceFrom {
    /// The request's `lumen.reference_model`.
    Request,
    /// The API key's `reference_model`.
    Key,
    /// The key's plan's `reference_model`.
    Plan,
    /// The tier's strongest eligible candidate.
    Tier,
    /// The pinned model itself.
    Pinned,
    /// The target an A/B split picked.
    Split,
}

/// A reference model asked for (auth → router): from the request, the key or its plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferenceAsk {
    /// A catalog id or alias.
    pub model: String,
    /// Where it came from (`request`, `key` or `plan`).
    pub from: ReferenceFrom,
}

/// The reference a plan prices savings against (router → auth → meter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reference {
    /// Catalog model id.
    pub model: String,
    /// Its prices.
    pub price: Price,
    /// Where it came from.
    pub from: ReferenceFrom,
}

/// What a settled request saved against its reference (meter → auth → the answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Saved {
    /// Reference cost minus actual cost, nano-dollars; negative when the served model cost more.
    pub nanos: i64,
    /// The reference model.
    pub reference_model: String,
    /// Where the reference came from.
    pub from: ReferenceFrom,
}

/// The reference cost of what a request used (each leg of a failed-over stream priced apart,
/// like its cost) minus `cost`, in nano-dollars.
pub fn saved_nanos(usage: &Usage, legs: &[Leg], reference: &Price, cost: i64) -> i64 {
    let at_reference: i64 = if legs.is_empty() {
        cost_nanos(usage, reference)
    } else {
        legs.iter().map(|l| cost_nanos(&l.usage, reference)).sum()
    };
    at_reference - cost
}

/// Signed dollars with nine decimals (exact nano-dollars), as `x-lumen-saved` carries them.
pub fn usd_text(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let a = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

impl Saved {
    /// Dollars.
    pub fn usd(&self) -> f64 {
        self.nanos as f64 / NANOS_PER_USD
    }

    /// The `x-lumen-saved` header value.
    pub fn header(&self) -> String {
        usd_text(self.nanos)
    }

    /// The fields added to an answer's `lumen` object: `saved` (dollars), `reference_model`,
    /// `reference_from`, and `saved_note` when the saving is negative.
    pub fn lumen_fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("saved".into(), json!(self.usd()));
        m.insert("reference_model".into(), json!(self.reference_model));
        m.insert("reference_from".into(), json!(self.from));
        if self.nanos < 0 {
            m.insert(
                "saved_note".into(),
                json!(format!(
                    "negative: the model that served costs more than the reference model {} for these tokens",
                    self.reference_model
                )),
            );
        }
        m
    }

    /// Adds [`Saved::lumen_fields`] to the `lumen` object of a JSON answer (created when absent).
    pub fn stamp(&self, answer: &mut Map<String, Value>) {
        let lumen = answer
            .entry("lumen")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(obj) = lumen.as_object_mut() {
            obj.extend(self.lumen_fields());
        }
    }
}

/// The reference a request asks for: its `lumen.reference_model`, else the key's, else the
/// plan's. A request field that is not a non-empty string is a 400 naming it.
pub fn ask(
    body: &Map<String, Value>,
    key: Option<&str>,
    plan: Option<&str>,
) -> Result<Option<ReferenceAsk>, ApiError> {
    if let Some(v) = body
        .get("lumen")
        .and_then(|l| l.get("reference_model"))
        .filter(|v| !v.is_null())
    {
        return match v.as_str().map(str::trim).filter(|s| !s.is_empty()) {
            Some(m) => Ok(Some(ReferenceAsk {
                model: m.to_string(),
                from: ReferenceFrom::Request,
            })),
            None => Err(ApiError::invalid_request(
                format!("'lumen.reference_model' must be a catalog model id or alias, got {v}"),
                Some("lumen.reference_model"),
                "invalid_value",
            )),
        };
    }
    let pick = |m: Option<&str>, from| {
        m.filter(|m| !m.is_empty()).map(|m| ReferenceAsk {
            model: m.to_string(),
            from,
        })
    };
    Ok(pick(key, ReferenceFrom::Key).or_else(|| pick(plan, ReferenceFrom::Plan)))
}

/// The reference of a plan: the one asked for when the catalog knows it, else `default` (the
/// tier's strongest candidate, the pinned model, the split's pick). An unknown model asked for by
/// the request is a 400 naming `lumen.reference_model`; one set on a key or plan is passed over.
pub fn resolve(
    cat: &Catalog,
    asked: Option<&ReferenceAsk>,
    default: Option<Reference>,
) -> Result<Option<Reference>, ApiError> {
    let Some(a) = asked else {
        return Ok(default);
    };
    match cat.lookup(&a.model) {
        Some((id, m)) => Ok(Some(Reference {
            model: id.to_string(),
            price: m.price.clone(),
            from: a.from,
        })),
        None if a.from == ReferenceFrom::Request => Err(ApiError::not_found(
            format!(
                "unknown reference model \"{}\" in lumen.reference_model; available models: {}",
                a.model,
                cat.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Some("lumen.reference_model"),
            "model_not_found",
        )),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cached_input: None,
            cache_write: None,
            reasoning: None,
            source: "s".into(),
            as_of: "d".into(),
        }
    }

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            ..Usage::default()
        }
    }

    #[test]
    fn saved_is_reference_cost_minus_cost_in_nanos() {
        // 1,000 prompt + 500 completion at gpt-4o (2.5 / 10) = 2,500 + 5,000 = 7,500 µ$ ...
        let u = usage(1000, 500);
        let reference = price(2.5, 10.0);
        let cost = cost_nanos(&u, &price(0.15, 0.6)); // 150 + 300 = 450 µ$
        assert_eq!(cost, 450_000);
        assert_eq!(saved_nanos(&u, &[], &reference, cost), 7_050_000);
        // ... and a dearer model than the reference saves a negative amount, not clamped.
        assert_eq!(
            saved_nanos(&u, &[], &price(0.1, 0.1), cost),
            150_000 - 450_000
        );
        // Failed-over legs are priced at the reference one by one, like their cost.
        let leg = |p, c| Leg {
            model: "m".into(),
            provider: "p".into(),
            usage: usage(p, c),
            estimated: false,
            price: price(0.15, 0.6),
            role: None,
        };
        let legs = [leg(1000, 200), leg(1000, 300)];
        let cost: i64 = legs.iter().map(|l| cost_nanos(&l.usage, &l.price)).sum();
        assert_eq!(
            saved_nanos(&usage(2000, 500), &legs, &reference, cost),
            (2_500_000 + 2_000_000) + (2_500_000 + 3_000_000) - cost
        );
    }

    #[test]
    fn rendering_says_when_it_is_negative() {
        assert_eq!(usd_text(7_050_000), "0.007050000");
        assert_eq!(usd_text(-300_000), "-0.000300000");
        assert_eq!(usd_text(-1_500_000_001), "-1.500000001");
        assert_eq!(usd_text(0), "0.000000000");
        let s = Saved {
            nanos: 7_050_000,
            reference_model: "gpt-4o".into(),
            from: ReferenceFrom::Tier,
        };
        assert_eq!(
            Value::Object(s.lumen_fields()),
            json!({"saved": 0.00705, "reference_model": "gpt-4o", "reference_from": "tier"})
        );
        let neg = Saved {
            nanos: -300_000,
            ..s
        };
        let f = neg.lumen_fields();
        assert_eq!(f["saved"], -0.0003);
        assert!(f["saved_note"].as_str().unwrap().contains("gpt-4o"));
        assert_eq!(neg.header(), "-0.000300000");
        let mut answer = Map::new();
        answer.insert("lumen".into(), json!({"cost": 1}));
        neg.stamp(&mut answer);
        assert_eq!(answer["lumen"]["cost"], 1);
        assert_eq!(answer["lumen"]["saved"], -0.0003);
    }

    #[test]
    fn the_request_beats_the_key_beats_the_plan() {
        let body = |v: Value| v.as_object().unwrap().clone();
        let a = ask(
            &body(json!({"lumen": {"reference_model": "gpt-4o"}})),
            Some("k"),
            Some("p"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.model.as_str(), a.from),
            ("gpt-4o", ReferenceFrom::Request)
        );
        let a = ask(&body(json!({})), Some("k"), Some("p"))
            .unwrap()
            .unwrap();
        assert_eq!((a.model.as_str(), a.from), ("k", ReferenceFrom::Key));
        let a = ask(&body(json!({})), Some(""), Some("p")).unwrap().unwrap();
        assert_eq!(a.from, ReferenceFrom::Plan);
        assert_eq!(ask(&body(json!({})), None, None).unwrap(), None);
        for bad in [json!(5), json!(""), json!(["gpt-4o"])] {
            let e = ask(
                &body(json!({"lumen": {"reference_model": bad}})),
                None,
                None,
            )
            .unwrap_err();
            assert_eq!(e.param.as_deref(), Some("lumen.reference_model"));
        }
    }

    #[test]
    fn resolving_against_the_catalog() {
        let cat = Catalog::from_toml(
            include_str!("../../../config/catalog.toml"),
            "config/catalog.toml",
        )
        .unwrap();
        let default = Reference {
            model: "gpt-4o-mini".into(),
            price: cat.models["gpt-4o-mini"].price.clone(),
            from: ReferenceFrom::Pinned,
        };
        let asked = |m: &str, from| ReferenceAsk {
            model: m.into(),
            from,
        };
        let r = resolve(
            &cat,
            Some(&asked("openai/gpt-4o", ReferenceFrom::Request)),
            Some(default.clone()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.from),
            ("gpt-4o", ReferenceFrom::Request)
        );
        assert_eq!(r.price.input, 2.5);
        let e = resolve(
            &cat,
            Some(&asked("gpt-9", ReferenceFrom::Request)),
            Some(default.clone()),
        )
        .unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (404, Some("lumen.reference_model"))
        );
        // A stale key or plan setting falls back to the default.
        let r = resolve(
            &cat,
            Some(&asked("gpt-9", ReferenceFrom::Key)),
            Some(default.clone()),
        )
        .unwrap();
        assert_eq!(r, Some(default.clone()));
        assert_eq!(
            resolve(&cat, None, Some(default.clone())).unwrap(),
            Some(default)
        );
    }
}
