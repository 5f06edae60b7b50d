//! Metering: settle each request exactly once into a usage record and per-(day, model) rollups,
//! and read a key's totals back.
//!
//! Exactly once: the settle guard is an atomic counter per request id; only the call that takes
//! it from 0 to 1 writes. Rollups are atomic increments, so concurrent instances never lose an
//! update. A rollup's (day, model) is indexed the first time its request counter goes to 1.

use crate::audit::{self, AuditEvent, AuditTokens};
use crate::budget;
use crate::contracts::{Outcome, SettleRequest, UsageRow, UsageSummary};
use crate::kv::{
    self, Kv, KvError, Rollup, RollupField, SettleOnce, UsageDim, UsageDimKey, UsageDimSeq,
    UsageRecord, UsageRecordKey, UsageSeq,
};
use crate::pricing::{cost_nanos, NANOS_PER_USD};
use crate::time::utc_day;

/// What settling did.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// False when this request id was already settled (nothing written).
    pub recorded: bool,
    /// The record.
    pub record: UsageRecord,
}

/// Settles one request.
pub fn settle(store: &dyn Kv, req: &SettleRequest) -> Result<Settled, KvError> {
    let cost = if req.report.legs.is_empty() {
        req.price
            .as_ref()
            .map_or(0, |p| cost_nanos(&req.report.usage, p))
    } else {
        // A stream that failed over: each leg at its own price.
        req.report
            .legs
            .iter()
            .map(|l| cost_nanos(&l.usage, &l.price))
            .sum()
    };
    let record = UsageRecord::from_settle(req, cost);
    if kv::incr(store, &SettleOnce(&req.request_id), 1)? != 1 {
        return Ok(Settled {
            recorded: false,
            record,
        });
    }
    let key_id = record.key_id.as_str();
    let seq = kv::incr(store, &UsageSeq(key_id), 1)?;
    kv::store(store, &UsageRecordKey { key_id, seq }, &record)?;

    let day = utc_day(record.time_ms);
    let model = record.model.as_str();
    let add = |field, v: i64| -> Result<i64, KvError> {
        kv::incr(
            store,
            &Rollup {
                key_id,
                day: &day,
                model,
                field,
            },
            v,
        )
    };
    if add(RollupField::Requests, 1)? == 1 {
        let n = kv::incr(store, &UsageDimSeq(key_id), 1)?;
        kv::store(
            store,
            &UsageDimKey { key_id, n },
            &UsageDim {
                day: day.clone(),
                model: model.to_string(),
            },
        )?;
    }
    if record.outcome != Outcome::Ok {
        add(RollupField::Errors, 1)?;
    }
    for (field, v) in [
        (RollupField::PromptTokens, record.prompt_tokens),
        (RollupField::CompletionTokens, record.completion_tokens),
        (RollupField::CachedTokens, record.cached_tokens),
    ] {
        if v > 0 {
            add(field, v as i64)?;
        }
    }
    if cost != 0 {
        add(RollupField::CostNanos, cost)?;
    }
    if let Some(h) = &req.hold {
        budget::settle(store, h, cost)?;
    }
    audit::append(
        store,
        &AuditEvent {
            time: record.time_ms,
            kind: "request".into(),
            subject: record.request_id.clone(),
            key_id: record.key_id.clone(),
            model: record.model.clone(),
            provider: record.provider.clone(),
            tokens: AuditTokens {
                prompt: record.prompt_tokens,
                completion: record.completion_tokens,
            },
            cost,
            outcome: serde_json::to_value(record.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        },
    )?;
    Ok(Settled {
        recorded: true,
        record,
    })
}

/// A key's usage by day and model, oldest day first, plus totals.
pub fn summary(store: &dyn Kv, key_id: &str) -> Result<UsageSummary, KvError> {
    let n = kv::read_counter(store, &UsageDimSeq(key_id))?;
    let mut rows = Vec::new();
    let mut total = UsageRow::default();
    for i in 1..=n {
        let Some(dim) = kv::load(store, &UsageDimKey { key_id, n: i })? else {
            continue;
        };
        let get = |field| {
            kv::read_counter(
                store,
                &Rollup {
                    key_id,
                    day: &dim.day,
                    model: &dim.model,
                    field,
                },
            )
            .map(|v| v.max(0) as u64)
        };
        let cost = kv::read_counter(
            store,
            &Rollup {
                key_id,
                day: &dim.day,
                model: &dim.model,
                field: RollupField::CostNanos,
            },
        )?;
        let row = UsageRow {
            requests: get(RollupField::Requests)?,
            errors: get(RollupField::Errors)?,
            prompt_tokens: get(RollupField::PromptTokens)?,
            completion_tokens: get(RollupField::CompletionTokens)?,
            cached_tokens: get(RollupField::CachedTokens)?,
            cost_usd: cost as f64 / NANOS_PER_USD,
            day: Some(dim.day),
            model: Some(dim.model),
            key_id: None,
        };
        total.requests += row.requests;
        total.errors += row.errors;
        total.prompt_tokens += row.prompt_tokens;
        total.completion_tokens += row.completion_tokens;
        total.cached_tokens += row.cached_tokens;
        total.cost_usd += row.cost_usd;
        rows.push(row);
    }
    rows.sort_by(|a, b| (&a.day, &a.model).cmp(&(&b.day, &b.model)));
    Ok(UsageSummary {
        object: "usage".into(),
        data: rows,
        total,
    })
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

/// Usage of `key_ids` filtered and grouped by `q`.
pub fn query(store: &dyn Kv, key_ids: &[String], q: &UsageQuery) -> Result<UsageSummary, KvError> {
    let mut groups: std::collections::BTreeMap<Group, UsageRow> = std::collections::BTreeMap::new();
    let mut total = UsageRow::default();
    for key_id in key_ids {
        for row in summary(store, key_id)?.data {
            let day = row.day.clone().unwrap_or_default();
            let model = row.model.clone().unwrap_or_default();
            if q.from.as_ref().is_some_and(|f| day < *f)
                || q.to.as_ref().is_some_and(|t| day > *t)
                || q.model.as_ref().is_some_and(|m| model != *m)
            {
                continue;
            }
            let group = match q.group_by {
                GroupBy::DayModel => (Some(day), Some(model), None),
                GroupBy::Day => (Some(day), None, None),
                GroupBy::Model => (None, Some(model), None),
                GroupBy::Key => (None, None, Some(key_id.clone())),
            };
            let g = groups.entry(group.clone()).or_default();
            (g.day, g.model, g.key_id) = group;
            for acc in [g, &mut total] {
                acc.requests += row.requests;
                acc.errors += row.errors;
                acc.prompt_tokens += row.prompt_tokens;
                acc.completion_tokens += row.completion_tokens;
                acc.cached_tokens += row.cached_tokens;
                acc.cost_usd += row.cost_usd;
            }
        }
    }
    Ok(UsageSummary {
        object: "usage".into(),
        data: groups.into_values().collect(),
        total,
    })
}

/// CSV of a summary's rows: `day,model,key_id,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd`.
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
        "day,model,key_id,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd\n",
    );
    for r in &s.data {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{:.9}\n",
            field(&r.day),
            field(&r.model),
            field(&r.key_id),
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.cost_usd
        ));
    }
    out
}

/// A key's records, oldest first (at most `limit`, newest kept).
pub fn records(store: &dyn Kv, key_id: &str, limit: usize) -> Result<Vec<UsageRecord>, KvError> {
    let n = kv::read_counter(store, &UsageSeq(key_id))?;
    let first = (n - limit as i64 + 1).max(1);
    let mut out = Vec::new();
    for seq in first..=n {
        if let Some(r) = kv::load(store, &UsageRecordKey { key_id, seq })? {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Price;
    use crate::contracts::UsageReport;
    use crate::kv::MemKv;
    use crate::openai::Usage;

    fn req(id: &str, model: &str, day_ms: u64, p: u64, c: u64, outcome: Outcome) -> SettleRequest {
        SettleRequest {
            request_id: id.into(),
            key_id: "key_a".into(),
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
        }
    }

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
        };
        r.report.legs = vec![leg("openai", 40, 2.0), leg("azure", 80, 4.0)];
        let done = settle(&kv, &r).unwrap();
        // Leg 1: 10 × $1/M + 40 × $2/M = 90 µ$; leg 2: 10 × $1/M + 80 × $4/M = 330 µ$.
        assert_eq!(done.record.cost_nanos, 90_000 + 330_000);
        // The single price of the request would have given 20 × 1 + 80 × 2 = 180 µ$.
        assert_ne!(done.record.cost_nanos, 180_000);
    }

    #[test]
    fn settles_once_and_sums_by_day_and_model() {
        let kv = MemKv::default();
        let d1 = 1_795_000_000_000;
        let d2 = d1 + 86_400_000;
        assert!(
            settle(&kv, &req("r1", "m1", d1, 100, 10, Outcome::Ok))
                .unwrap()
                .recorded
        );
        assert!(
            !settle(&kv, &req("r1", "m1", d1, 100, 10, Outcome::Ok))
                .unwrap()
                .recorded,
            "second settle is a no-op"
        );
        settle(
            &kv,
            &req("r2", "m1", d1, 50, 5, Outcome::ClientDisconnected),
        )
        .unwrap();
        settle(&kv, &req("r3", "m2", d1, 1, 1, Outcome::Ok)).unwrap();
        settle(&kv, &req("r4", "m1", d2, 1_000_000, 0, Outcome::Ok)).unwrap();
        let s = summary(&kv, "key_a").unwrap();
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
        // 150×1 + 15×2 = 180 µ$; 1+2 = 3 µ$; 1e6×1 = 1 $.
        assert!((s.data[0].cost_usd - 180e-6).abs() < 1e-12);
        assert!((s.total.cost_usd - (1.0 + 183e-6)).abs() < 1e-9);
        assert_eq!(records(&kv, "key_a", 10).unwrap().len(), 4);
        let by_model = query(
            &kv,
            &["key_a".into()],
            &UsageQuery {
                group_by: GroupBy::Model,
                from: Some("2026-11-18".into()),
                to: Some("2026-11-18".into()),
                ..UsageQuery::default()
            },
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
        assert!(csv.contains("\n,m1,,2,1,150,15,0,0.000180000\n"), "{csv}");
        // Every settled request is on the audit chain.
        let v = audit::verify(&kv).unwrap();
        assert!(v.ok && v.head.seq == 4, "{v:?}");
        let e = parse_query(|k| (k == "group_by").then(|| "week".to_string())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("group_by"));
        let e = parse_query(|k| (k == "from").then(|| "2026-1-01".to_string())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("from"));
        assert_eq!(summary(&kv, "key_b").unwrap().data, vec![]);
    }
}
