//! Metering over the log ([`crate::store::log`]): settle a request into one log entry (and its
//! budget hold), and read usage back — totals by day, model or key from the sealed summaries,
//! and a key's newest records.

use crate::contracts::{Outcome, SettleRequest, UsageRow, UsageSummary};
use crate::domain::pricing::{cost_nanos, NANOS_PER_USD};
use crate::domain::saved::{saved_nanos, Saved};
use crate::store::log::{self, Entry, EntryKind};
use crate::store::{ledger, Kv, KvError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A settled request as `GET /v1/usage/records` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// Request id.
    pub request_id: String,
    /// Key id.
    pub key_id: String,
    /// Unix ms of arrival.
    pub time_ms: u64,
    /// Catalog model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Tokens were estimated.
    pub estimated: bool,
    /// Cost in nano-dollars.
    pub cost_nanos: i64,
    /// Gateway latency, ms.
    pub latency_ms: f64,
    /// Upstream time to headers, ms.
    pub upstream_ms: f64,
    /// Streamed.
    pub stream: bool,
    /// Outcome.
    pub outcome: Outcome,
    /// Position in the log (and the audit chain).
    pub seq: u64,
    /// Saved against the reference model, nano-dollars (negative: the served model cost more).
    pub saved_nanos: i64,
    /// The model `saved_nanos` is priced against (absent on records written before savings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
    /// The route that was taken: tier, score at routing time, cascade outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::store::log::RouteRecord>,
    /// `hit` or `miss` when the response cache was used.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache: String,
    /// On a cache hit: what the original answer cost (saved), nano-dollars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_cost_nanos: i64,
    /// The shadow experiment of a shadow call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow: String,
    /// Every upstream leg, when there was more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<crate::store::log::EntryLeg>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl UsageRecord {
    /// The record of a request entry.
    pub fn of(e: &Entry) -> UsageRecord {
        UsageRecord {
            request_id: e.subject.clone(),
            key_id: e.key_id.clone(),
            time_ms: e.time_ms,
            model: e.model.clone(),
            provider: e.provider.clone(),
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            cached_tokens: e.cached_tokens,
            estimated: e.estimated,
            cost_nanos: e.cost_nanos,
            latency_ms: e.latency_ms,
            upstream_ms: e.upstream_ms,
            stream: e.stream,
            outcome: e.outcome.unwrap_or(Outcome::Ok),
            seq: e.seq,
            saved_nanos: e.saved_nanos,
            reference_model: (!e.reference_model.is_empty()).then(|| e.reference_model.clone()),
            route: e.route.clone(),
            cache: e.cache.clone(),
            cached_cost_nanos: e.cached_cost_nanos,
            shadow: e.shadow.clone(),
            legs: e.legs.clone(),
        }
    }
}

/// What settling did.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The entry, with its seq.
    pub entry: Entry,
    /// What the request saved against its reference model (none without a reference).
    pub saved: Option<Saved>,
}

/// The cost of what a request used: each leg at its own price when it failed over.
pub fn cost_of(req: &SettleRequest) -> i64 {
    if req.report.legs.is_empty() {
        req.price
            .as_ref()
            .map_or(0, |p| cost_nanos(&req.report.usage, p))
    } else {
        req.report
            .legs
            .iter()
            .map(|l| cost_nanos(&l.usage, &l.price))
            .sum()
    }
}

/// Settles one request: its log entry (one increment, one set) and its budget hold.
pub fn settle(store: &dyn Kv, req: &SettleRequest, now_ms: u64) -> Result<Settled, KvError> {
    let cost = cost_of(req);
    let r = &req.report;
    let saved = req.reference.as_ref().map(|rf| Saved {
        nanos: saved_nanos(&r.usage, &r.legs, &rf.price, cost),
        reference_model: rf.model.clone(),
        from: rf.from,
    });
    let mut entry = Entry {
        seq: 0,
        kind: EntryKind::Request,
        time_ms: req.started_ms,
        written_ms: now_ms,
        subject: req.request_id.clone(),
        action: String::new(),
        key_id: req.key_id.clone(),
        tenant: if req.tenant.is_empty() {
            req.key_id.clone()
        } else {
            req.tenant.clone()
        },
        model: r.model.clone(),
        provider: r.provider.clone(),
        prompt_tokens: r.usage.prompt_tokens,
        completion_tokens: r.usage.completion_tokens,
        cached_tokens: r.usage.cached_tokens,
        estimated: r.estimated,
        cost_nanos: cost,
        latency_ms: req.latency_ms,
        upstream_ms: r.upstream_ms,
        stream: req.stream,
        outcome: Some(r.outcome),
        saved_nanos: saved.as_ref().map_or(0, |s| s.nanos),
        reference_model: saved
            .as_ref()
            .map(|s| s.reference_model.clone())
            .unwrap_or_default(),
        route: req.route.clone(),
        cache: req.mark.cache.clone(),
        cached_cost_nanos: req.mark.cached_cost_nanos,
        shadow: req.mark.shadow.clone(),
        legs: r
            .legs
            .iter()
            .map(|l| log::EntryLeg {
                model: l.model.clone(),
                provider: l.provider.clone(),
                role: l.role.clone().unwrap_or_default(),
                prompt_tokens: l.usage.prompt_tokens,
                completion_tokens: l.usage.completion_tokens,
                cost_nanos: cost_nanos(&l.usage, &l.price),
            })
            .collect(),
    };
    if let Some(h) = &req.hold {
        ledger::settle(store, h, cost)?;
    }
    entry.seq = log::append(store, entry.clone())?;
    Ok(Settled { entry, saved })
}

/// How `GET /v1/usage` groups rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per (day, model) (the default).
    #[default]
    DayModel,
    /// One row per day.
    Day,
    /// One row per model.
    Model,
    /// One row per API key.
    Key,
}

/// Filters of `GET /v1/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// First day included, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// Last day included, `YYYY-MM-DD`.
    pub to: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Grouping.
    pub group_by: GroupBy,
}

fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Parses the query string of `GET /v1/usage`; errors name the parameter.
pub fn parse_query(
    get: impl Fn(&str) -> Option<String>,
) -> Result<UsageQuery, crate::error::ApiError> {
    let bad =
        |p: &str, m: String| crate::error::ApiError::invalid_request(m, Some(p), "invalid_value");
    let mut q = UsageQuery::default();
    for (name, slot) in [("from", &mut q.from), ("to", &mut q.to)] {
        if let Some(v) = get(name).filter(|v| !v.is_empty()) {
            if !is_day(&v) {
                return Err(bad(
                    name,
                    format!("'{name}' must be a day as YYYY-MM-DD, got {v:?}"),
                ));
            }
            *slot = Some(v);
        }
    }
    q.model = get("model").filter(|v| !v.is_empty());
    q.group_by = match get("group_by").as_deref() {
        None | Some("") => GroupBy::DayModel,
        Some("day") => GroupBy::Day,
        Some("model") => GroupBy::Model,
        Some("key") => GroupBy::Key,
        Some(other) => {
            return Err(bad(
                "group_by",
                format!("'group_by' must be one of day, model, key; got {other:?}"),
            ))
        }
    };
    Ok(q)
}

/// A row's (day, model, key id) group.
type Group = (Option<String>, Option<String>, Option<String>);

/// Usage of `key_ids` filtered and grouped by `q`; money summed in nano-dollars and rendered
/// once.
pub fn query(
    store: &dyn Kv,
    key_ids: &[String],
    q: &UsageQuery,
    now_ms: u64,
) -> Result<UsageSummary, KvError> {
    #[derive(Default)]
    struct Acc {
        row: UsageRow,
        nanos: i64,
        saved: i64,
        cache_saved: i64,
    }
    let mut groups: std::collections::BTreeMap<Group, Acc> = std::collections::BTreeMap::new();
    let mut total = Acc::default();
    for row in log::rows(store, now_ms)? {
        if !key_ids.contains(&row.key_id)
            || q.from.as_ref().is_some_and(|f| row.day < *f)
            || q.to.as_ref().is_some_and(|t| row.day > *t)
            || q.model.as_ref().is_some_and(|m| row.model != *m)
        {
            continue;
        }
        let group = match q.group_by {
            GroupBy::DayModel => (Some(row.day.clone()), Some(row.model.clone()), None),
            GroupBy::Day => (Some(row.day.clone()), None, None),
            GroupBy::Model => (None, Some(row.model.clone()), None),
            GroupBy::Key => (None, None, Some(row.key_id.clone())),
        };
        let g = groups.entry(group.clone()).or_default();
        (g.row.day, g.row.model, g.row.key_id) = group;
        for acc in [g, &mut total] {
            acc.row.requests += row.requests;
            acc.row.errors += row.errors;
            acc.row.prompt_tokens += row.prompt_tokens;
            acc.row.completion_tokens += row.completion_tokens;
            acc.row.cached_tokens += row.cached_tokens;
            acc.row.cache_hits += row.cache_hits;
            acc.nanos += row.cost_nanos;
            acc.saved += row.saved_nanos;
            acc.cache_saved += row.cache_saved_nanos;
        }
    }
    let render = |a: Acc| UsageRow {
        cost_usd: a.nanos as f64 / NANOS_PER_USD,
        saved_usd: a.saved as f64 / NANOS_PER_USD,
        cache_saved_usd: a.cache_saved as f64 / NANOS_PER_USD,
        ..a.row
    };
    Ok(UsageSummary {
        object: "usage".into(),
        data: groups.into_values().map(render).collect(),
        total: render(total),
    })
}

/// CSV of a summary's rows: `day,model,key_id,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd,saved_usd`.
pub fn to_csv(s: &UsageSummary) -> String {
    let field = |v: &Option<String>| {
        let v = v.clone().unwrap_or_default();
        if v.contains([',', '"', '\n']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v
        }
    };
    let mut out = String::from(
        "day,model,key_id,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd,saved_usd\n",
    );
    for r in &s.data {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{:.9},{:.9}\n",
            field(&r.day),
            field(&r.model),
            field(&r.key_id),
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.cost_usd,
            r.saved_usd
        ));
    }
    out
}

/// The newest records of `key_id`, oldest first (at most `limit`).
pub fn records(
    store: &dyn Kv,
    key_id: &str,
    limit: usize,
    now_ms: u64,
) -> Result<Vec<UsageRecord>, KvError> {
    let mut out: Vec<UsageRecord> = log::newest(store, now_ms, &|k| k == key_id, limit)?
        .iter()
        .map(UsageRecord::of)
        .collect();
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::UsageReport;
    use crate::domain::catalog::Price;
    use crate::store::MemKv;
    use crate::wire::openai::Usage;

    fn req(id: &str, model: &str, day_ms: u64, p: u64, c: u64, outcome: Outcome) -> SettleRequest {
        SettleRequest {
            request_id: id.into(),
            key_id: "key_a".into(),
            tenant: String::new(),
            started_ms: day_ms,
            latency_ms: 12.5,
            stream: false,
            report: UsageReport {
                model: model.into(),
                provider: "openai".into(),
                usage: Usage {
                    prompt_tokens: p,
                    completion_tokens: c,
                    cached_tokens: 0,
                    ..Usage::default()
                },
                estimated: false,
                outcome,
                upstream_ms: 10.0,
                legs: Vec::new(),
            },
            price: Some(Price {
                input: 1.0,
                output: 2.0,
                cached_input: None,
                cache_write: None,
                reasoning: None,
                source: "s".into(),
                as_of: "d".into(),
            }),
            hold: None,
            reference: None,
            route: None,
            mark: Default::default(),
        }
    }

    const NOW: u64 = 1_796_000_000_000;

    #[test]
    fn a_failed_over_stream_charges_each_leg_at_its_own_price() {
        let kv = MemKv::default();
        let mut r = req(
            "r-legs",
            "gpt-4o-mini",
            1_795_000_000_000,
            20,
            80,
            Outcome::Ok,
        );
        let leg = |provider: &str, c: u64, output: f64| crate::contracts::Leg {
            model: "gpt-4o-mini".into(),
            provider: provider.into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: c,
                ..Usage::default()
            },
            estimated: false,
            price: Price {
                output,
                ..r.price.clone().unwrap()
            },
            role: None,
        };
        r.report.legs = vec![leg("openai", 40, 2.0), leg("azure", 80, 4.0)];
        let done = settle(&kv, &r, NOW).unwrap();
        // Leg 1: 10 × $1/M + 40 × $2/M = 90 µ$; leg 2: 10 × $1/M + 80 × $4/M = 330 µ$.
        assert_eq!(done.entry.cost_nanos, 90_000 + 330_000);
        // The single price of the request would have given 20 × 1 + 80 × 2 = 180 µ$.
        assert_ne!(done.entry.cost_nanos, 180_000);
    }

    #[test]
    fn savings_are_recorded_with_the_route_and_summed() {
        use crate::domain::saved::{Reference, ReferenceFrom};
        let kv = MemKv::default();
        let d1 = 1_795_000_000_000;
        let reference = Reference {
            model: "big".into(),
            price: Price {
                input: 10.0,
                output: 20.0,
                ..req("x", "m", d1, 0, 0, Outcome::Ok).price.unwrap()
            },
            from: ReferenceFrom::Tier,
        };
        let route = crate::store::log::RouteRecord {
            tier: "lumen/auto".into(),
            score: Some(0.25),
            ..Default::default()
        };
        // 100 prompt + 10 completion: 120 µ$ at $1/$2, 1,200 µ$ at the reference's $10/$20.
        let mut r1 = req("r1", "m1", d1, 100, 10, Outcome::Ok);
        r1.reference = Some(reference.clone());
        r1.route = Some(route.clone());
        let before = kv.ops();
        let done = settle(&kv, &r1, NOW).unwrap();
        assert_eq!((kv.ops().0 - before.0, kv.ops().1 - before.1), (0, 2));
        assert_eq!(done.entry.saved_nanos, 1_080_000);
        assert_eq!(done.entry.reference_model, "big");
        let saved = done.saved.unwrap();
        assert_eq!((saved.nanos, saved.from), (1_080_000, ReferenceFrom::Tier));
        // A model dearer than its reference saves a negative amount, summed as such.
        let mut r2 = req("r2", "m1", d1, 100, 10, Outcome::Ok);
        r2.reference = Some(Reference {
            price: Price {
                input: 0.5,
                output: 1.0,
                ..reference.price.clone()
            },
            ..reference
        });
        assert_eq!(settle(&kv, &r2, NOW).unwrap().entry.saved_nanos, -60_000);
        // No reference (e.g. a request settled by an older auth): nothing saved.
        settle(&kv, &req("r3", "m2", d1, 100, 10, Outcome::Ok), NOW).unwrap();
        let keys = ["key_a".to_string()];
        let s = query(&kv, &keys, &UsageQuery::default(), NOW).unwrap();
        assert_eq!(s.total.saved_usd, 1_020_000.0 / NANOS_PER_USD);
        assert_eq!(s.data[0].saved_usd, 0.00102);
        assert!(to_csv(&s).contains(",0.001020000\n"), "{}", to_csv(&s));
        let recs = records(&kv, "key_a", 10, NOW).unwrap();
        assert_eq!(recs[0].saved_nanos, 1_080_000);
        assert_eq!(recs[0].reference_model.as_deref(), Some("big"));
        assert_eq!(recs[0].route.as_ref(), Some(&route));
        assert_eq!(
            (recs[2].saved_nanos, recs[2].reference_model.clone()),
            (0, None)
        );
        assert!(log::verify(&kv, NOW).unwrap().ok);
    }

    #[test]
    fn settling_is_two_writes_and_sums_by_day_and_model() {
        let kv = MemKv::default();
        let d1 = 1_795_000_000_000;
        let d2 = d1 + 86_400_000;
        let before = kv.ops();
        settle(&kv, &req("r1", "m1", d1, 100, 10, Outcome::Ok), NOW).unwrap();
        assert_eq!((kv.ops().0 - before.0, kv.ops().1 - before.1), (0, 2));
        settle(
            &kv,
            &req("r2", "m1", d1, 50, 5, Outcome::ClientDisconnected),
            NOW,
        )
        .unwrap();
        settle(&kv, &req("r3", "m2", d1, 1, 1, Outcome::Ok), NOW).unwrap();
        settle(&kv, &req("r4", "m1", d2, 1_000_000, 0, Outcome::Ok), NOW).unwrap();
        let keys = ["key_a".to_string()];
        let s = query(&kv, &keys, &UsageQuery::default(), NOW).unwrap();
        let rows: Vec<_> = s
            .data
            .iter()
            .map(|r| {
                (
                    r.day.clone().unwrap(),
                    r.model.clone().unwrap(),
                    r.requests,
                    r.errors,
                    r.prompt_tokens,
                    r.completion_tokens,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("2026-11-18".into(), "m1".into(), 2, 1, 150, 15),
                ("2026-11-18".into(), "m2".into(), 1, 0, 1, 1),
                ("2026-11-19".into(), "m1".into(), 1, 0, 1_000_000, 0),
            ]
        );
        assert_eq!(s.total.requests, 4);
        // 150×1 + 15×2 = 180 µ$; 1+2 = 3 µ$; 1e6×1 = 1 $; summed in nano-dollars.
        assert_eq!(s.data[0].cost_usd, 180e-6);
        assert_eq!(s.total.cost_usd, 1_000_183_000.0 / NANOS_PER_USD);
        let recs = records(&kv, "key_a", 10, NOW).unwrap();
        assert_eq!(
            recs.iter()
                .map(|r| r.request_id.as_str())
                .collect::<Vec<_>>(),
            ["r1", "r2", "r3", "r4"]
        );
        assert_eq!(records(&kv, "key_a", 2, NOW).unwrap()[0].request_id, "r3");
        let by_model = query(
            &kv,
            &keys,
            &UsageQuery {
                group_by: GroupBy::Model,
                from: Some("2026-11-18".into()),
                to: Some("2026-11-18".into()),
                ..UsageQuery::default()
            },
            NOW,
        )
        .unwrap();
        let rows: Vec<_> = by_model
            .data
            .iter()
            .map(|r| (r.model.clone().unwrap(), r.requests))
            .collect();
        assert_eq!(rows, vec![("m1".into(), 2), ("m2".into(), 1)]);
        assert_eq!(by_model.total.requests, 3);
        let csv = to_csv(&by_model);
        assert!(csv.starts_with("day,model,key_id,requests"), "{csv}");
        assert!(
            csv.contains("\n,m1,,2,1,150,15,0,0.000180000,0.000000000\n"),
            "{csv}"
        );
        // Every settled request is on the audit chain.
        let v = log::verify(&kv, NOW).unwrap();
        assert!(v.ok && v.head.seq == 4, "{v:?}");
        let e = parse_query(|k| (k == "group_by").then(|| "week".to_string())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("group_by"));
        let e = parse_query(|k| (k == "from").then(|| "2026-1-01".to_string())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("from"));
        let other = query(&kv, &["key_b".to_string()], &UsageQuery::default(), NOW).unwrap();
        assert_eq!(other.data, vec![]);
    }
}
