//! The plan's order with health: candidates whose circuit is open, or that asked us to wait
//! (`Retry-After`), or whose half-open probe another request already took, move behind the
//! healthy ones (still tried last, so a request never fails for want of trying). A candidate
//! whose probe this request claimed keeps its place: the probe is real traffic.

use crate::contracts::{Candidate, Plan};
use crate::domain::catalog::Catalog;
use crate::domain::health::Availability;
use crate::ApiError;

/// The request's OpenRouter-style `models` (ordered fallback models): absent or an array of up
/// to 10 model names; anything else is a 400 naming `models`.
pub fn request_models(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<String>, ApiError> {
    let Some(v) = body.get("models") else {
        return Ok(Vec::new());
    };
    let bad = || {
        ApiError::invalid_request(
            "models must be an array of up to 10 model names (the fallbacks, in order)",
            Some("models"),
            "invalid_value",
        )
    };
    let list = v.as_array().filter(|a| a.len() <= 10).ok_or_else(bad)?;
    list.iter()
        .map(|m| {
            m.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(bad)
        })
        .collect()
}

/// Appends the fallback models' candidates to `plan`: the request's `models` when it sent some
/// (each must exist and be allowed; a bad one is a 400/403 naming `models[i]`), else the
/// catalog's `fallbacks` of the planned model (those the key may not use are skipped). A
/// provider+model already in the plan is not repeated.
pub fn merge(
    cat: &Catalog,
    plan: &mut Plan,
    requested: &[String],
    allowed: &[String],
) -> Result<(), ApiError> {
    let primary = plan.candidates.first().map(|c| c.model.clone());
    let chain: Vec<(String, bool)> = if requested.is_empty() {
        primary
            .and_then(|id| cat.models.get(&id))
            .map(|m| m.fallbacks.iter().map(|f| (f.clone(), false)).collect())
            .unwrap_or_default()
    } else {
        requested.iter().map(|f| (f.clone(), true)).collect()
    };
    let mut added = Vec::new();
    for (i, (name, strict)) in chain.iter().enumerate() {
        let more = match cat.plan(name, allowed) {
            Ok(p) => p.candidates,
            Err(mut e) if *strict => {
                e.param = Some(format!("models[{i}]"));
                return Err(e);
            }
            Err(_) => continue,
        };
        for c in more {
            let dup = plan
                .candidates
                .iter()
                .any(|o| o.model == c.model && o.provider.name == c.provider.name);
            if !dup {
                if !added.contains(&c.model) {
                    added.push(c.model.clone());
                }
                plan.candidates.push(c);
            }
        }
    }
    if !added.is_empty() {
        plan.reason = format!("{}; fallbacks: {}", plan.reason, added.join(", "));
    }
    Ok(())
}

/// Reorders `candidates` by `avail` (one per candidate, same order): up and claimed-probe
/// candidates first in plan order, then the down ones, soonest back first. Returns the names
/// (`provider/model`) moved back.
pub fn order(candidates: &mut Vec<Candidate>, avail: &[Availability]) -> Vec<String> {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for (c, a) in candidates.drain(..).zip(
        avail
            .iter()
            .copied()
            .chain(std::iter::repeat(Availability::Up)),
    ) {
        match a {
            Availability::Up | Availability::Probe { .. } => up.push(c),
            Availability::Down { until_ms } => down.push((until_ms, c)),
        }
    }
    down.sort_by_key(|(until, _)| *until);
    let moved = down
        .iter()
        .map(|(_, c)| format!("{}/{}", c.provider.name, c.model))
        .collect();
    candidates.extend(up);
    candidates.extend(down.into_iter().map(|(_, c)| c));
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::ProviderTarget;
    use crate::domain::catalog::{Dialect, Price};

    fn cand(provider: &str) -> Candidate {
        Candidate {
            model: "m".into(),
            upstream_model: "m".into(),
            price: Price {
                input: 1.0,
                output: 1.0,
                cached_input: None,
                cache_write: None,
                reasoning: None,
                source: "s".into(),
                as_of: "d".into(),
            },
            context_window: 1000,
            retries: None,
            deadlines: None,
            health: None,
            provider: ProviderTarget {
                name: provider.into(),
                dialect: Dialect::Openai,
                base_url_variable: format!("{provider}_base_url"),
                api_key_variable: format!("{provider}_api_key"),
                auth_header: None,
                api_version: None,
                deployment_path: false,
                cold_start: false,
                first_token_timeout_ms: None,
            },
        }
    }

    fn names(cs: &[Candidate]) -> Vec<&str> {
        cs.iter().map(|c| c.provider.name.as_str()).collect()
    }

    const CATALOG: &str = r#"
[providers.a]
dialect = "openai"
base_url_variable = "a_base_url"
api_key_variable = "a_api_key"
[providers.b]
dialect = "anthropic"
base_url_variable = "b_base_url"
api_key_variable = "b_api_key"
[models.small]
provider = "a"
upstream_id = "small"
context_window = 1000
price = { input = 1.0, output = 1.0, source = "s", as_of = "d" }
fallbacks = ["big", "other"]
retries = 2
deadlines = { stall_ms = 500 }
[models.big]
provider = "b"
upstream_id = "big"
context_window = 9000
price = { input = 1.0, output = 1.0, source = "s", as_of = "d" }
offers = [{ provider = "a", upstream_id = "big-a", price = { input = 2.0, output = 2.0, source = "s", as_of = "d" } }]
[models.other]
provider = "a"
upstream_id = "other"
context_window = 5000
price = { input = 1.0, output = 1.0, source = "s", as_of = "d" }
"#;

    fn pairs(p: &Plan) -> Vec<String> {
        p.candidates
            .iter()
            .map(|c| format!("{}/{}", c.provider.name, c.model))
            .collect()
    }

    #[test]
    fn catalog_fallbacks_and_request_models_extend_the_plan() {
        let cat = Catalog::from_toml(CATALOG, "t").unwrap();
        let mut p = cat.plan("small", &[]).unwrap();
        assert_eq!(
            p.candidates[0].retries,
            Some(crate::domain::retry::RetryOverrides::All(2))
        );
        assert_eq!(p.candidates[0].deadlines.unwrap().stall_ms, Some(500));
        merge(&cat, &mut p, &[], &[]).unwrap();
        assert_eq!(pairs(&p), ["a/small", "b/big", "a/big", "a/other"]);
        assert!(p.reason.ends_with("fallbacks: big, other"), "{}", p.reason);

        // The key may not use "big": skipped from the catalog chain.
        let allowed = vec!["small".to_string(), "other".to_string()];
        let mut p = cat.plan("small", &allowed).unwrap();
        merge(&cat, &mut p, &[], &allowed).unwrap();
        assert_eq!(pairs(&p), ["a/small", "a/other"]);

        // The request's models replace the catalog's chain, and a bad one is named.
        let mut p = cat.plan("small", &[]).unwrap();
        merge(&cat, &mut p, &["other".into(), "small".into()], &[]).unwrap();
        assert_eq!(pairs(&p), ["a/small", "a/other"]);
        let mut p = cat.plan("small", &[]).unwrap();
        let e = merge(&cat, &mut p, &["other".into(), "nope".into()], &[]).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (404, Some("models[1]")));
        let e = merge(&cat, &mut p, &["big".into()], &allowed).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (403, Some("models[0]")));
    }

    #[test]
    fn request_models_are_checked() {
        let body = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(request_models(&body(serde_json::json!({})))
            .unwrap()
            .is_empty());
        assert_eq!(
            request_models(&body(serde_json::json!({"models": ["a", "b"]}))).unwrap(),
            ["a", "b"]
        );
        for bad in [
            serde_json::json!({"models": "a"}),
            serde_json::json!({"models": [1]}),
            serde_json::json!({"models": [""]}),
            serde_json::json!({"models": vec!["m"; 11]}),
        ] {
            let e = request_models(&body(bad)).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some("models")));
        }
    }

    #[test]
    fn bad_fallback_settings_are_catalog_errors() {
        for (from, to, want) in [
            (
                "fallbacks = [\"big\", \"other\"]",
                "fallbacks = [\"ghost\"]",
                "fallbacks[0]",
            ),
            (
                "fallbacks = [\"big\", \"other\"]",
                "fallbacks = [\"small\"]",
                "fallbacks[0]",
            ),
            ("retries = 2", "retries = 9", "retries"),
            (
                "deadlines = { stall_ms = 500 }",
                "deadlines = { stall_ms = 0 }",
                "stall_ms",
            ),
            (
                "deadlines = { stall_ms = 500 }",
                "deadlines = { stal_ms = 5 }",
                "stal_ms",
            ),
        ] {
            let e = Catalog::from_toml(&CATALOG.replace(from, to), "t").unwrap_err();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn down_candidates_go_last_soonest_back_first_and_probes_keep_their_place() {
        let mut cs = vec![cand("a"), cand("b"), cand("c"), cand("d")];
        let moved = order(
            &mut cs,
            &[
                Availability::Down { until_ms: 50 },
                Availability::Probe {
                    since_ms: 0,
                    period: 0,
                },
                Availability::Down { until_ms: 10 },
                Availability::Up,
            ],
        );
        assert_eq!(names(&cs), ["b", "d", "c", "a"]);
        assert_eq!(moved, ["c/m", "a/m"]);
        let mut cs = vec![cand("a"), cand("b")];
        assert!(order(&mut cs, &[Availability::Up]).is_empty());
        assert_eq!(names(&cs), ["a", "b"], "missing health counts as up");
    }
}
