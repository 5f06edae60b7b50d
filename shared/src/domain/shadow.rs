//! Shadow traffic: a route (catalog `[shadows.<name>]`) or a plan (`[plans.<p>.shadow]`) names a
//! candidate model and a share of requests; each selected request is also sent to the candidate
//! after the client's answer is complete, and the pair is compared. Pure: the configuration, the
//! selection, one pair's [`Sample`] and the [`Report`] over many (sample counts, confidence
//! intervals and a verdict sentence). Samples hold comparison numbers, not answers (answers only
//! when the experiment asks for them and the key's plan allows retention).

use crate::contracts::{Candidate, Plan};
use crate::domain::catalog::Catalog;
use crate::domain::compare::Comparison;
use crate::domain::pricing::NANOS_PER_USD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default cap on shadow calls running at once (per experiment, across instances).
pub const DEFAULT_MAX_CONCURRENT: u32 = 4;
/// Token overlap from which a candidate's answer counts as matching (without a judge).
pub const MATCH_OVERLAP: f64 = 0.8;

/// A shadow experiment as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The route whose traffic is mirrored: a catalog model id or alias (requests the plan
    /// sends to that model first) or a virtual model (`lumen/auto`, a split). Required in the
    /// catalog; in a plan, absent means every request of the plan's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The candidate model (catalog id or alias).
    pub candidate: String,
    /// Percent of matching requests mirrored, 0 to 100.
    pub share: f64,
    /// Shadow calls running at once, at most (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// What the experiment may spend per UTC day, US dollars (absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    /// A judge model asked whether the two answers are equivalent (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// Keep both answers in the samples, when the key's plan allows retention (default false).
    #[serde(default)]
    pub retain_answers: bool,
}

impl ShadowConfig {
    /// Checks the values and the catalog references; `at` names the table in messages.
    pub fn check(&self, at: &str, cat: &Catalog, needs_route: bool) -> Result<(), String> {
        if !(self.share.is_finite() && (0.0..=100.0).contains(&self.share)) {
            return Err(format!("{at}.share must be 0 to 100, got {}", self.share));
        }
        if self.max_concurrent == Some(0) {
            return Err(format!("{at}.max_concurrent must be at least 1"));
        }
        if let Some(b) = self.daily_budget_usd {
            if !(b.is_finite() && b >= 0.0) {
                return Err(format!(
                    "{at}.daily_budget_usd must be a non-negative number, got {b}"
                ));
            }
        }
        let model = |field: &str, name: &str| {
            cat.lookup(name)
                .map(|_| ())
                .ok_or_else(|| format!("{at}.{field} \"{name}\" is not a catalog model or alias"))
        };
        model("candidate", &self.candidate)?;
        if let Some(j) = &self.judge {
            model("judge", j)?;
        }
        match &self.route {
            None if needs_route => Err(format!(
                "{at}.route is missing; name the model or virtual model whose traffic to mirror"
            )),
            Some(r) if !is_virtual(r) => model("route", r),
            _ => Ok(()),
        }
    }
}

fn is_virtual(name: &str) -> bool {
    name == "auto" || name.starts_with(crate::domain::route::TIER_PREFIX)
}

/// A shadow the router selected for one request (in the plan auth gets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShadowPlan {
    /// Experiment name (`GET /admin/shadow/{name}`).
    pub name: String,
    /// The candidate: its catalog model on its providers (no fallback models).
    pub candidates: Vec<Candidate>,
    /// The judge's candidates (empty: no judge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub judge: Vec<Candidate>,
    /// Shadow calls at once, at most.
    pub max_concurrent: u32,
    /// Daily budget, nano-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_nanos: Option<i64>,
    /// Keep answers (still only for keys whose plan allows retention).
    #[serde(default)]
    pub retain_answers: bool,
}

fn candidates_of(cat: &Catalog, model: &str) -> Vec<Candidate> {
    cat.plan(model, &[])
        .map(|p| p.candidates)
        .unwrap_or_default()
}

/// Whether a configured shadow applies to a request for `requested` (the model string's name)
/// whose plan starts with `winner`.
fn applies(cat: &Catalog, cfg: &ShadowConfig, requested: &str, winner: &str) -> bool {
    match &cfg.route {
        None => true,
        Some(r) if is_virtual(r) => {
            let norm = |s: &str| {
                if s == "auto" {
                    "lumen/auto".to_string()
                } else {
                    s.to_string()
                }
            };
            norm(r) == norm(requested)
        }
        Some(r) => cat.lookup(r).is_some_and(|(id, _)| id == winner),
    }
}

/// Picks the shadow of one request: the plan's own experiment (`plan_shadow`, named
/// `plan-<plan>`) first, then the catalog's in name order; the first that applies rolls its share
/// (`roll` uniform over u64). None for the request that is not mirrored.
pub fn select(
    cat: &Catalog,
    requested: &str,
    plan: &Plan,
    plan_shadow: Option<(&str, &ShadowConfig)>,
    roll: u64,
) -> Option<ShadowPlan> {
    let winner = plan.candidates.first()?.model.as_str();
    let named = plan_shadow
        .map(|(p, c)| (format!("plan-{p}"), c))
        .into_iter()
        .chain(cat.shadows.iter().map(|(n, c)| (n.clone(), c)));
    for (name, cfg) in named {
        if !applies(cat, cfg, requested, winner) {
            continue;
        }
        // Basis points, so shares like 0.5 % work.
        if (roll % 10_000) as f64 >= cfg.share * 100.0 {
            return None;
        }
        let candidates = candidates_of(cat, &cfg.candidate);
        if candidates.is_empty() || candidates[0].model == winner {
            return None;
        }
        return Some(ShadowPlan {
            name,
            candidates,
            judge: cfg
                .judge
                .as_deref()
                .map(|j| candidates_of(cat, j))
                .unwrap_or_default(),
            max_concurrent: cfg.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT),
            daily_budget_nanos: cfg
                .daily_budget_usd
                .map(|usd| (usd * NANOS_PER_USD).round() as i64),
            retain_answers: cfg.retain_answers,
        });
    }
    None
}

/// One side of a pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Side {
    /// Catalog model that answered (or was tried).
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Whether it answered.
    pub ok: bool,
    /// Time to the first content (the whole answer for non-stream requests), ms.
    pub ttft_ms: f64,
    /// Time to the end of the answer, ms.
    pub total_ms: f64,
    /// Cost, nano-dollars.
    pub cost_nanos: i64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One compared pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Unix ms of the live request.
    pub time_ms: u64,
    /// The live answer.
    pub primary: Side,
    /// The candidate's.
    pub candidate: Side,
    /// How the answers compare (absent when the candidate failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// The judge's verdict: equivalent or not (absent without a judge or a readable verdict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<bool>,
    /// Both answers (primary, candidate), only when retention allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<(String, String)>,
}

/// A proportion with its 95 % Wilson interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rate {
    /// Pairs counted.
    pub n: u64,
    /// Share in [0, 1].
    pub rate: f64,
    /// Interval low.
    pub low: f64,
    /// Interval high.
    pub high: f64,
}

/// 95 % Wilson score interval of `k` successes in `n`.
pub fn wilson(k: u64, n: u64) -> Rate {
    if n == 0 {
        return Rate::default();
    }
    let (k, nf, z) = (k as f64, n as f64, 1.96f64);
    let p = k / nf;
    let denom = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / denom;
    let half = z * ((p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt()) / denom;
    Rate {
        n,
        rate: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// A mean with its 95 % normal-approximation interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Mean {
    /// Values.
    pub n: u64,
    /// Mean.
    pub mean: f64,
    /// Interval low.
    pub low: f64,
    /// Interval high.
    pub high: f64,
}

/// Mean of `xs` with a 95 % interval (1.96 standard errors).
pub fn mean(xs: &[f64]) -> Mean {
    let n = xs.len();
    if n == 0 {
        return Mean::default();
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let half = 1.96 * (var / n as f64).sqrt();
    Mean {
        n: n as u64,
        mean: m,
        low: m - half,
        high: m + half,
    }
}

/// A median with its 95 % distribution-free interval (order statistics) and the p90.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Median {
    /// Values.
    pub n: u64,
    /// Median.
    pub p50: f64,
    /// Interval low.
    pub low: f64,
    /// Interval high.
    pub high: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// Median of `xs` with its interval: the order statistics `n/2 ∓ 0.98·√n`.
pub fn median(xs: &[f64]) -> Median {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Median::default();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let at = |q: f64| v[((q * (n - 1) as f64).round() as usize).min(n - 1)];
    let half = 0.98 * (n as f64).sqrt();
    let lo = ((n as f64 / 2.0 - half).floor().max(1.0) as usize).min(n) - 1;
    let hi = ((n as f64 / 2.0 + half).ceil() as usize).clamp(1, n) - 1;
    Median {
        n: n as u64,
        p50: at(0.5),
        low: v[lo],
        high: v[hi],
        p90: at(0.9),
    }
}

/// One side over all samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SideStats {
    /// Models seen on this side (usually one).
    pub models: Vec<String>,
    /// Samples where it answered.
    pub ok: u64,
    /// Samples where it failed.
    pub failed: u64,
    /// Time to first content, ms (answers only).
    pub ttft_ms: Median,
    /// Total time, ms (answers only).
    pub total_ms: Median,
    /// Cost per request, US dollars (answers only).
    pub cost_usd: Mean,
    /// Total cost of this side, US dollars.
    pub cost_usd_total: f64,
}

fn side_stats<'a>(sides: impl Iterator<Item = &'a Side>) -> SideStats {
    let mut s = SideStats::default();
    let (mut ttft, mut total, mut cost) = (Vec::new(), Vec::new(), Vec::new());
    let mut nanos = 0i64;
    for side in sides {
        if !side.model.is_empty() && !s.models.contains(&side.model) {
            s.models.push(side.model.clone());
        }
        nanos += side.cost_nanos;
        if side.ok {
            s.ok += 1;
            ttft.push(side.ttft_ms);
            total.push(side.total_ms);
            cost.push(side.cost_nanos as f64 / NANOS_PER_USD);
        } else {
            s.failed += 1;
        }
    }
    s.ttft_ms = median(&ttft);
    s.total_ms = median(&total);
    s.cost_usd = mean(&cost);
    s.cost_usd_total = nanos as f64 / NANOS_PER_USD;
    s
}

/// `GET /admin/shadow/{name}`: both sides side by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// Experiment name.
    pub name: String,
    /// Samples recorded in all.
    pub recorded: u64,
    /// Samples this report covers (the newest ones kept).
    pub samples: u64,
    /// The live side.
    pub primary: SideStats,
    /// The candidate.
    pub candidate: SideStats,
    /// Pairs whose answers are identical.
    pub exact_match: Rate,
    /// Pairs whose answers match: the judge's verdict where there is one, else token overlap of
    /// at least [`MATCH_OVERLAP`].
    pub matches: Rate,
    /// Normalised token overlap.
    pub overlap: Mean,
    /// JSON requests: the primary's answers that were valid JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_valid_primary: Option<Rate>,
    /// JSON requests: the candidate's answers that were valid JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_valid_candidate: Option<Rate>,
    /// Requests with tools: pairs calling the same tools with the same arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_agreement: Option<Rate>,
    /// Pairs the judge found equivalent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_agreement: Option<Rate>,
    /// Candidate cost over primary cost (mean per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_ratio: Option<f64>,
    /// Candidate p50 minus primary p50, total time, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_delta_ms: Option<f64>,
    /// Candidate p50 minus primary p50, time to first content, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50_delta_ms: Option<f64>,
    /// The newest samples with answers (retention only), at most 5.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Sample>,
    /// One sentence.
    pub verdict: String,
}

/// Fewer pairs than this make the verdict say so.
pub const FEW_SAMPLES: u64 = 30;

/// The report over `samples` (newest last) out of `recorded`.
pub fn report(name: &str, recorded: u64, samples: &[Sample]) -> Report {
    let primary = side_stats(samples.iter().map(|s| &s.primary));
    let candidate = side_stats(samples.iter().map(|s| &s.candidate));
    let pairs: Vec<(&Sample, &Comparison)> = samples
        .iter()
        .filter_map(|s| s.comparison.as_ref().map(|c| (s, c)))
        .collect();
    let n = pairs.len() as u64;
    let count = |f: &dyn Fn(&Sample, &Comparison) -> bool| {
        pairs.iter().filter(|(s, c)| f(s, c)).count() as u64
    };
    let exact_match = wilson(count(&|_, c| c.exact), n);
    let matches = wilson(
        count(&|s, c| s.judge.unwrap_or(c.overlap >= MATCH_OVERLAP)),
        n,
    );
    let overlap = mean(&pairs.iter().map(|(_, c)| c.overlap).collect::<Vec<_>>());
    let json: Vec<(bool, bool)> = pairs.iter().filter_map(|(_, c)| c.json_valid).collect();
    let jn = json.len() as u64;
    let tools: Vec<bool> = pairs.iter().filter_map(|(_, c)| c.tools_agree).collect();
    let judged: Vec<bool> = pairs.iter().filter_map(|(s, _)| s.judge).collect();
    let cost_ratio = (primary.cost_usd.n > 0 && primary.cost_usd.mean > 0.0 && candidate.ok > 0)
        .then(|| candidate.cost_usd.mean / primary.cost_usd.mean);
    let both = primary.ok > 0 && candidate.ok > 0;
    let p50_delta_ms = both.then_some(candidate.total_ms.p50 - primary.total_ms.p50);
    let ttft_p50_delta_ms = both.then_some(candidate.ttft_ms.p50 - primary.ttft_ms.p50);
    let examples: Vec<Sample> = samples
        .iter()
        .rev()
        .filter(|s| s.answers.is_some())
        .take(5)
        .cloned()
        .collect();
    let mut r = Report {
        name: name.to_string(),
        recorded,
        samples: samples.len() as u64,
        primary,
        candidate,
        exact_match,
        matches,
        overlap,
        json_valid_primary: (jn > 0)
            .then(|| wilson(json.iter().filter(|j| j.0).count() as u64, jn)),
        json_valid_candidate: (jn > 0)
            .then(|| wilson(json.iter().filter(|j| j.1).count() as u64, jn)),
        tool_agreement: (!tools.is_empty()).then(|| {
            wilson(
                tools.iter().filter(|t| **t).count() as u64,
                tools.len() as u64,
            )
        }),
        judge_agreement: (!judged.is_empty()).then(|| {
            wilson(
                judged.iter().filter(|t| **t).count() as u64,
                judged.len() as u64,
            )
        }),
        cost_ratio,
        p50_delta_ms,
        ttft_p50_delta_ms,
        examples,
        verdict: String::new(),
    };
    r.verdict = verdict(&r);
    r
}

fn verdict(r: &Report) -> String {
    let cand = r
        .candidate
        .models
        .first()
        .cloned()
        .unwrap_or_else(|| "the candidate".into());
    if r.samples == 0 {
        return format!("no samples yet for {}", r.name);
    }
    if r.candidate.ok == 0 {
        return format!(
            "{cand} failed all {} shadow calls: nothing to compare",
            r.samples
        );
    }
    let mut s = format!(
        "{cand} matches {:.0} % (95 % CI {:.0}–{:.0} %)",
        r.matches.rate * 100.0,
        r.matches.low * 100.0,
        r.matches.high * 100.0
    );
    if let Some(c) = r.cost_ratio {
        s.push_str(&format!(" at {:.0} % of the cost", c * 100.0));
    }
    if let Some(d) = r.p50_delta_ms {
        s.push_str(&format!(", p50 {:+.0} ms", d));
    }
    s.push_str(&format!(" over {} pairs", r.matches.n));
    if r.candidate.failed > 0 {
        s.push_str(&format!(
            "; it failed {} of {} calls",
            r.candidate.failed, r.samples
        ));
    }
    if r.matches.n < FEW_SAMPLES {
        s.push_str(" (few samples: keep watching)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        let w = wilson(47, 50);
        assert!((w.rate - 0.94).abs() < 1e-9);
        assert!(
            w.low > 0.83 && w.low < 0.85 && w.high > 0.97 && w.high < 0.99,
            "{w:?}"
        );
        assert_eq!(wilson(0, 0), Rate::default());
        let m = mean(&[1.0, 2.0, 3.0]);
        assert_eq!(m.mean, 2.0);
        assert!((m.high - 2.0 - 1.96 / 3f64.sqrt()).abs() < 1e-9);
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        let md = median(&xs);
        assert_eq!((md.p50, md.p90), (51.0, 90.0));
        assert!(
            md.low >= 40.0 && md.low < 50.0 && md.high > 50.0 && md.high <= 61.0,
            "{md:?}"
        );
        assert_eq!(median(&[7.0]).low, 7.0);
    }

    fn side(model: &str, ms: f64, cost: i64, ok: bool) -> Side {
        Side {
            model: model.into(),
            provider: "p".into(),
            ok,
            ttft_ms: ms / 2.0,
            total_ms: ms,
            cost_nanos: cost,
            error: (!ok).then(|| "HTTP 500".into()),
        }
    }

    #[test]
    fn a_report_puts_both_sides_side_by_side_with_a_verdict() {
        let mut samples = Vec::new();
        for i in 0..50u64 {
            let exact = i % 10 != 0;
            samples.push(Sample {
                time_ms: i,
                primary: side("gpt-4o-mini", 100.0, 1000, true),
                candidate: side("gpt-4o", 220.0, 380, true),
                comparison: Some(Comparison {
                    exact,
                    overlap: if exact { 1.0 } else { 0.5 },
                    json_valid: None,
                    tools_agree: None,
                }),
                judge: None,
                answers: None,
            });
        }
        let r = report("mini-vs-4o", 50, &samples);
        assert_eq!((r.samples, r.primary.ok, r.candidate.ok), (50, 50, 50));
        assert!((r.matches.rate - 0.9).abs() < 1e-9);
        assert!((r.cost_ratio.unwrap() - 0.38).abs() < 1e-9);
        assert_eq!(r.p50_delta_ms, Some(120.0));
        assert_eq!(
            r.verdict,
            "gpt-4o matches 90 % (95 % CI 79–96 %) at 38 % of the cost, p50 +120 ms over 50 pairs"
        );
        // A failing candidate is counted, never compared.
        samples.push(Sample {
            primary: side("gpt-4o-mini", 100.0, 1000, true),
            candidate: side("gpt-4o", 5.0, 0, false),
            ..Sample::default()
        });
        let r = report("x", 51, &samples);
        assert_eq!((r.candidate.failed, r.matches.n), (1, 50));
        assert!(
            r.verdict.ends_with("; it failed 1 of 51 calls"),
            "{}",
            r.verdict
        );
        assert_eq!(report("x", 0, &[]).verdict, "no samples yet for x");
    }
}
