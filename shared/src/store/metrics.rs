//! `GET /metrics`: Prometheus text exposition computed at scrape time from what is stored
//! anyway — nothing is written per request for it. Three sources, each bounded:
//!
//! - **all-time totals by model** from the log's sealed usage rows ([`log::rows`]: one read per
//!   4,096 requests plus the unsealed tail): requests, errors, tokens, cost, saved, cache hits;
//! - **today (UTC) by model and provider** from the newest log entries of the current day, at
//!   most [`WINDOW`] of them: requests by outcome and histograms of the gateway's latency and
//!   the upstream's time to headers. They restart at 00:00 UTC (Prometheus sees a counter
//!   reset); `lumen_metrics_window_truncated` is 1 when the day had more entries than the window;
//! - **provider health** for the catalog's (provider, model) pairs ([`health::snapshots`], one
//!   batch read): breaker state, availability, errors in the sliding window, EWMA time to first
//!   token.
//!
//! Not exported, because nothing records them: rate-limit refusals (a 429 writes nothing) and
//! each request's own time to first token (the log keeps latency and time to headers; the
//! EWMA per provider is the nearest).

use crate::contracts::Outcome;
use crate::domain::health::{Availability, Policy};
use crate::domain::pricing::NANOS_PER_USD;
use crate::store::log::{self, Entry, EntryKind, Row};
use crate::store::{self as kv, health, Kv, KvError, LogSeq, Target};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The most log entries read for today's metrics.
pub const WINDOW: u64 = 4096;

/// Histogram bucket bounds, seconds.
pub const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// One histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (cumulative).
    pub buckets: [u64; BUCKETS.len()],
    /// Observations.
    pub count: u64,
    /// Sum, seconds.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Today's figures of one (model, provider).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Today {
    /// Requests by outcome (`ok`, `upstream_error`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// Gateway latency, arrival to last byte.
    pub latency: Histogram,
    /// Upstream time to headers.
    pub upstream: Histogram,
}

/// One provider's health.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealth {
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Breaker open.
    pub open: bool,
    /// `up`, `probe` or `down`.
    pub state: &'static str,
    /// Failures in the sliding window.
    pub window_failures: i64,
    /// EWMA time to first token, ms.
    pub ttft_ms: Option<f64>,
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// All-time usage by model.
    pub totals: BTreeMap<String, Row>,
    /// Today by (model, provider).
    pub today: BTreeMap<(String, String), Today>,
    /// Entries read for today.
    pub window_entries: u64,
    /// Today had more entries than [`WINDOW`].
    pub truncated: bool,
    /// Health of every pair that has a record.
    pub health: Vec<ProviderHealth>,
}

fn outcome_name(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Ok) => "ok",
        Some(Outcome::UpstreamError) => "upstream_error",
        Some(Outcome::ClientDisconnected) => "client_disconnected",
        Some(Outcome::Rejected) => "rejected",
        None => "unknown",
    }
}

/// Reads what `/metrics` shows at `now`; `targets` are the catalog's (provider, model) pairs.
pub fn gather(store: &dyn Kv, now: u64, targets: &[Target<'_>]) -> Result<Metrics, KvError> {
    let mut m = Metrics::default();
    for r in log::rows(store, now)? {
        let acc = m.totals.entry(r.model.clone()).or_insert_with(|| Row {
            model: r.model.clone(),
            ..Row::default()
        });
        acc.requests += r.requests;
        acc.errors += r.errors;
        acc.prompt_tokens += r.prompt_tokens;
        acc.completion_tokens += r.completion_tokens;
        acc.cached_tokens += r.cached_tokens;
        acc.cost_nanos += r.cost_nanos;
        acc.saved_nanos += r.saved_nanos;
        acc.cache_hits += r.cache_hits;
    }
    let day_start = now - now % 86_400_000;
    let head = kv::read_counter(store, &LogSeq)?.max(0) as u64;
    let mut hi = head;
    'read: while hi >= 1 {
        let lo = hi.saturating_sub(log::BLOCK - 1).max(1);
        let mut any_today = false;
        for (_, e) in log::entries(store, lo..=hi)?.into_iter().rev() {
            let Some(e) = e else { continue };
            if m.window_entries >= WINDOW {
                m.truncated = true;
                break 'read;
            }
            if e.kind != EntryKind::Request || e.time_ms < day_start {
                continue;
            }
            any_today = true;
            m.window_entries += 1;
            add_today(&mut m, &e);
        }
        if !any_today || lo == 1 {
            break;
        }
        hi = lo - 1;
    }
    let policy = Policy::default();
    for (t, s) in targets
        .iter()
        .zip(health::snapshots(store, &policy, targets, now)?)
    {
        let Some(record) = s.record.as_ref() else {
            continue;
        };
        let state = match s.availability(&policy, now) {
            Availability::Up => "up",
            Availability::Probe { .. } => "probe",
            Availability::Down { .. } => "down",
        };
        m.health.push(ProviderHealth {
            provider: t.provider.to_string(),
            model: t.model.to_string(),
            open: record.open_since_ms.is_some(),
            state,
            window_failures: s.window(&policy, now).0,
            ttft_ms: record.ttft_ms,
        });
    }
    Ok(m)
}

fn add_today(m: &mut Metrics, e: &Entry) {
    let t = m
        .today
        .entry((e.model.clone(), e.provider.clone()))
        .or_default();
    *t.outcomes
        .entry(outcome_name(e.outcome).to_string())
        .or_default() += 1;
    t.latency.observe(e.latency_ms / 1000.0);
    if e.upstream_ms > 0.0 {
        t.upstream.observe(e.upstream_ms / 1000.0);
    }
}

/// A label value, escaped for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// The text exposition (format 0.0.4).
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    type Field = fn(&Row) -> f64;
    let totals: [(&str, &str, Field); 8] = [
        ("lumen_requests_total", "Requests settled, all time, by model (from the log's usage rows).", |r| r.requests as f64),
        ("lumen_request_errors_total", "Requests that did not end ok, all time, by model.", |r| r.errors as f64),
        ("lumen_prompt_tokens_total", "Prompt tokens, all time, by model.", |r| r.prompt_tokens as f64),
        ("lumen_completion_tokens_total", "Completion tokens, all time, by model.", |r| r.completion_tokens as f64),
        ("lumen_cached_tokens_total", "Cached prompt tokens, all time, by model.", |r| r.cached_tokens as f64),
        ("lumen_cost_usd_total", "Cost in US dollars, all time, by model.", |r| usd(r.cost_nanos)),
        ("lumen_saved_usd_total", "Saved against the reference models in US dollars, all time, by model (negative when dearer).", |r| usd(r.saved_nanos)),
        ("lumen_cache_hits_total", "Requests served from the response cache, all time, by model.", |r| r.cache_hits as f64),
    ];
    for (name, help, f) in totals {
        family(&mut out, name, "counter", help);
        for (model, r) in &m.totals {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", esc(model), f(r));
        }
    }
    family(
        &mut out,
        "lumen_today_requests_total",
        "counter",
        "Requests today (UTC; resets at 00:00) by model, provider and outcome, from the newest log entries (at most 4096).",
    );
    for ((model, provider), t) in &m.today {
        for (outcome, n) in &t.outcomes {
            let _ = writeln!(
                out,
                "lumen_today_requests_total{{model=\"{}\",provider=\"{}\",outcome=\"{}\"}} {n}",
                esc(model),
                esc(provider),
                esc(outcome)
            );
        }
    }
    type HistField = fn(&Today) -> &Histogram;
    let hists: [(&str, &str, HistField); 2] = [
        ("lumen_today_request_duration_seconds", "Gateway latency (arrival to last byte) today (UTC) by model and provider, from the newest log entries (at most 4096).", |t| &t.latency),
        ("lumen_today_upstream_time_to_headers_seconds", "Upstream time to response headers of the serving attempt today (UTC) by model and provider (a stream's headers come before its first token).", |t| &t.upstream),
    ];
    for (name, help, h) in hists {
        family(&mut out, name, "histogram", help);
        for ((model, provider), t) in &m.today {
            let h = h(t);
            let l = format!("model=\"{}\",provider=\"{}\"", esc(model), esc(provider));
            for (b, bound) in h.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{bound}\"}} {b}");
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
        }
    }
    family(
        &mut out,
        "lumen_metrics_window_entries",
        "gauge",
        "Log entries of today read for the lumen_today_* metrics.",
    );
    let _ = writeln!(out, "lumen_metrics_window_entries {}", m.window_entries);
    family(&mut out, "lumen_metrics_window_truncated", "gauge", "1 when today had more than 4096 entries and the lumen_today_* metrics cover only the newest.");
    let _ = writeln!(
        out,
        "lumen_metrics_window_truncated {}",
        u8::from(m.truncated)
    );
    type HealthField = fn(&ProviderHealth) -> Option<f64>;
    let health: [(&str, &str, HealthField); 4] = [
        (
            "lumen_provider_breaker_open",
            "1 when the provider+model circuit breaker is open.",
            |h| Some(f64::from(u8::from(h.open))),
        ),
        (
            "lumen_provider_up",
            "1 when the router may use the provider+model now (availability up).",
            |h| Some(f64::from(u8::from(h.state == "up"))),
        ),
        (
            "lumen_provider_window_failures",
            "Failures of the provider+model in the health sliding window.",
            |h| Some(h.window_failures as f64),
        ),
        (
            "lumen_provider_ttft_ewma_seconds",
            "EWMA time to first token of the provider+model, as the provider records it.",
            |h| h.ttft_ms.map(|ms| ms / 1000.0),
        ),
    ];
    for (name, help, f) in health {
        family(&mut out, name, "gauge", help);
        for h in &m.health {
            if let Some(v) = f(h) {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\",model=\"{}\"}} {v}",
                    esc(&h.provider),
                    esc(&h.model)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn entry(model: &str, provider: &str, ok: bool, time_ms: u64, latency_ms: f64) -> Entry {
        Entry {
            kind: EntryKind::Request,
            time_ms,
            written_ms: time_ms,
            subject: "req".into(),
            key_id: "key_a".into(),
            model: model.into(),
            provider: provider.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_nanos: 1_500,
            latency_ms,
            upstream_ms: latency_ms / 2.0,
            outcome: Some(if ok {
                Outcome::Ok
            } else {
                Outcome::UpstreamError
            }),
            ..Entry::default()
        }
    }

    #[test]
    fn totals_today_and_text() {
        let kv = MemKv::default();
        let now = 3 * 86_400_000 + 5_000;
        let yesterday = now - 86_400_000;
        log::append(&kv, entry("m1", "p1", true, yesterday, 100.0)).unwrap();
        log::append(&kv, entry("m1", "p1", true, now - 10, 30.0)).unwrap();
        log::append(&kv, entry("m1", "p2", false, now - 5, 700.0)).unwrap();
        let m = gather(&kv, now, &[]).unwrap();
        assert_eq!(m.totals["m1"].requests, 3);
        assert_eq!(m.totals["m1"].errors, 1);
        assert_eq!(m.window_entries, 2);
        let p1 = &m.today[&("m1".to_string(), "p1".to_string())];
        assert_eq!(p1.outcomes["ok"], 1);
        assert_eq!(p1.latency.buckets[0], 1);
        let text = render(&m);
        assert!(
            text.contains("lumen_requests_total{model=\"m1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lumen_cost_usd_total{model=\"m1\"} 0.0000045\n"),
            "{text}"
        );
        assert!(text.contains(
            "lumen_today_requests_total{model=\"m1\",provider=\"p2\",outcome=\"upstream_error\"} 1\n"
        ));
        assert!(text.contains(
            "lumen_today_request_duration_seconds_bucket{model=\"m1\",provider=\"p2\",le=\"0.5\"} 0\n"
        ));
        assert!(text.contains(
            "lumen_today_request_duration_seconds_bucket{model=\"m1\",provider=\"p2\",le=\"1\"} 1\n"
        ));
        assert_eq!(esc("a\"b\\"), "a\\\"b\\\\");
    }
}
