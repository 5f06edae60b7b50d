//! The plan's order with health: candidates whose circuit is open, or that asked us to wait
//! (`Retry-After`), or whose half-open probe another request already took, move behind the
//! healthy ones (still tried last, so a request never fails for want of trying). A candidate
//! whose probe this request claimed keeps its place: the probe is real traffic.

use crate::contracts::Candidate;
use crate::health::Availability;

/// Reorders `candidates` by `avail` (one per candidate, same order): up and claimed-probe
/// candidates first in plan order, then the down ones, soonest back first. Returns the names
/// (`provider/model`) moved back.
pub fn order(candidates: &mut Vec<Candidate>, avail: &[Availability]) -> Vec<String> {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for (c, a) in candidates.drain(..).zip(avail.iter().copied().chain(std::iter::repeat(Availability::Up))) {
        match a {
            Availability::Up | Availability::Probe => up.push(c),
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
    use crate::catalog::{Dialect, Price};
    use crate::contracts::ProviderTarget;

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

    #[test]
    fn down_candidates_go_last_soonest_back_first_and_probes_keep_their_place() {
        let mut cs = vec![cand("a"), cand("b"), cand("c"), cand("d")];
        let moved = order(
            &mut cs,
            &[
                Availability::Down { until_ms: 50 },
                Availability::Probe,
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
