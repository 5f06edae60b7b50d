//! Feedback on answers: `POST /v1/feedback` (`{"request_id", "score": 0..1 | "thumbs": "up" |
//! "down", "label"?}`) and its export for retraining the router (`GET /admin/feedback`).
//!
//! **Finding the request without an index.** No KV write is added to the request path: the
//! request's log entry already holds the route that was taken (model, provider, tier, score at
//! routing time, cascade outcome, reference). Feedback walks the calling key's newest entries
//! ([`log::walk_newest`], which reads only blocks whose rows name the key) and stops at the
//! first of: the request found; an entry written before the request arrived (request ids carry
//! their arrival, [`crate::wire::request_id`]; [`CLOCK_SKEW_MS`] of slack between replicas); an
//! entry older than [`WINDOW_MS`] (7 days); [`WINDOW_RECORDS`] (10,000) of the key's entries.
//! Feedback given within seconds of the answer reads a block or two.
//!
//! **One per request id per key, without compare-and-swap.** Each feedback increments
//! `v1/feedback/claim/{key}/{request_id}`; the one that takes it to 1 is recorded, every later one
//! is a 409. The record goes to `v1/feedback/item/{n}` (`n` from the `v1/feedback/seq` counter),
//! which the export reads in batches. A request of another key is not found (404, worded like an
//! unknown id, so its existence does not leak).
//!
//! **Export.** One JSON object per line, in the format `scripts/train-router.sh --feedback`
//! reads (`bench/ROUTER.md`) minus the prompt, which Lumen never stores: every line carries
//! `request_id`, so the operator joins prompts from their own logs (`lumen-train --prompts`).
//! Feedback lines carry `score`; cascade lines (entries whose cascade escalated or kept an answer)
//! carry `label` `escalated` / `kept`.

use crate::contracts::Outcome;
use crate::error::ApiError;
use crate::store::log::{self, Entry, RouteRecord};
use crate::store::{self as kv, FeedbackClaim, FeedbackItem, FeedbackSeq, Kv, KvError};
use crate::wire::request_id;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::ops::ControlFlow;

/// Feedback is taken on requests at most this old (7 days).
pub const WINDOW_MS: u64 = 7 * 86_400_000;
/// Feedback looks through at most this many of the key's newest requests.
pub const WINDOW_RECORDS: usize = 10_000;
/// Clock difference allowed between the replica that took a request and the one that logged it.
pub const CLOCK_SKEW_MS: u64 = 300_000;
/// Longest `label`, in characters.
pub const MAX_LABEL_CHARS: usize = 128;

/// A thumbs rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Thumbs {
    /// Good (score 1).
    Up,
    /// Bad (score 0).
    Down,
}

/// A checked `POST /v1/feedback` body.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackAsk {
    /// The request's `x-request-id`.
    pub request_id: String,
    /// How good the answer was, 0..1 (thumbs up = 1, down = 0).
    pub score: f64,
    /// The thumbs given, if that is how the score was given.
    pub thumbs: Option<Thumbs>,
    /// A free label.
    pub label: Option<String>,
}

fn bad(param: &str, code: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(param), code)
}

/// Parses and checks a `POST /v1/feedback` body; every error is a 400 naming its field.
pub fn parse(body: &[u8]) -> Result<FeedbackAsk, ApiError> {
    const SHAPE: &str = r#"{"request_id": "req_…", "score": 0..1 or "thumbs": "up"|"down", "label": string (optional)}"#;
    let obj: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(_) => {
            return Err(ApiError::invalid_request(
                format!("the body must be a JSON object {SHAPE}"),
                None,
                "invalid_json",
            ))
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["request_id", "score", "thumbs", "label"].contains(&k.as_str()))
    {
        return Err(bad(
            k,
            "unknown_parameter",
            format!("unknown field '{k}'; known: request_id, score, thumbs, label"),
        ));
    }
    let request_id = match obj.get("request_id") {
        None | Some(Value::Null) => {
            return Err(bad(
                "request_id",
                "missing_required_parameter",
                format!("missing required parameter: 'request_id' (the answer's x-request-id); expected {SHAPE}"),
            ))
        }
        Some(Value::String(s)) if request_id::is_valid(s) => s.clone(),
        Some(v) => {
            return Err(bad(
                "request_id",
                "invalid_value",
                format!("'request_id' must be a request id as the answer's x-request-id header gives it (req_ + 24 hex characters), got {v}"),
            ))
        }
    };
    let score = obj.get("score").filter(|v| !v.is_null());
    let thumbs = obj.get("thumbs").filter(|v| !v.is_null());
    let (score, thumbs) = match (score, thumbs) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "thumbs",
                "invalid_value",
                "give either 'score' or 'thumbs', not both".into(),
            ))
        }
        (None, None) => {
            return Err(bad(
                "score",
                "missing_required_parameter",
                "missing 'score' (a number from 0 to 1) or 'thumbs' (\"up\" or \"down\")".into(),
            ))
        }
        (Some(s), None) => match s.as_f64() {
            Some(x) if x.is_finite() && (0.0..=1.0).contains(&x) => (x, None),
            _ => {
                return Err(bad(
                    "score",
                    "invalid_value",
                    format!("'score' must be a number from 0 to 1, got {s}"),
                ))
            }
        },
        (None, Some(t)) => match t.as_str() {
            Some("up") => (1.0, Some(Thumbs::Up)),
            Some("down") => (0.0, Some(Thumbs::Down)),
            _ => {
                return Err(bad(
                    "thumbs",
                    "invalid_value",
                    format!("'thumbs' must be \"up\" or \"down\", got {t}"),
                ))
            }
        },
    };
    let label = match obj.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(l))
            if !l.trim().is_empty()
                && l.chars().count() <= MAX_LABEL_CHARS
                && !l.chars().any(char::is_control) =>
        {
            Some(l.clone())
        }
        Some(v) => {
            return Err(bad(
                "label",
                "invalid_value",
                format!("'label' must be a string of 1 to {MAX_LABEL_CHARS} characters without control characters, got {v}"),
            ))
        }
    };
    Ok(FeedbackAsk {
        request_id,
        score,
        thumbs,
        label,
    })
}

/// A feedback as stored (`v1/feedback/item/{n}`), with the route its request took, copied from
/// the request's log entry so the export reads nothing else. No content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRecord {
    /// Position among all feedback (1-based).
    pub n: u64,
    /// Unix ms the feedback was given.
    pub time_ms: u64,
    /// API key id.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// Score, 0..1.
    pub score: f64,
    /// Thumbs, when the score was given that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbs: Option<Thumbs>,
    /// Free label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The request's log entry.
    pub seq: u64,
    /// Unix ms the request arrived.
    pub request_time_ms: u64,
    /// Catalog model that served.
    pub model: String,
    /// Provider that served.
    pub provider: String,
    /// How the request ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The route that was taken (tier, score at routing time, cascade outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteRecord>,
    /// The request's reference model for `lumen.saved`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference_model: String,
}

impl FeedbackRecord {
    /// The `POST /v1/feedback` answer.
    pub fn view(&self) -> Value {
        let mut v = json!({
            "object": "feedback",
            "id": format!("fb_{}", self.n),
            "request_id": self.request_id,
            "score": self.score,
            "created": self.time_ms / 1000,
            "model": self.model,
            "provider": self.provider,
        });
        if let Some(t) = self.thumbs {
            v["thumbs"] = json!(t);
        }
        if let Some(l) = &self.label {
            v["label"] = json!(l);
        }
        if let Some(r) = &self.route {
            v["route"] = json!(r);
        }
        v
    }

    /// The export line: the training format's `model` and `score`, and what was stored.
    pub fn line(&self) -> Value {
        let mut v = json!({
            "source": "feedback",
            "request_id": self.request_id,
            "key_id": self.key_id,
            "model": self.model,
            "provider": self.provider,
            "score": self.score,
            "time_ms": self.time_ms,
            "request_time_ms": self.request_time_ms,
        });
        if let Some(t) = self.thumbs {
            v["thumbs"] = json!(t);
        }
        // `label` is the training format's (a fixed vocabulary): a free label goes apart.
        if let Some(l) = &self.label {
            v["feedback_label"] = json!(l);
        }
        route_fields(&mut v, self.route.as_ref());
        v
    }
}

fn route_fields(v: &mut Value, route: Option<&RouteRecord>) {
    let Some(r) = route else { return };
    if !r.tier.is_empty() {
        v["tier"] = json!(r.tier);
    }
    if let Some(s) = r.score {
        v["route_score"] = json!(s);
    }
}

/// The request `request_id` of `key_id` in its log entry, looked for as described above; none
/// when it is not (or no longer) found, or belongs to another key.
pub fn find_request(
    store: &dyn Kv,
    key_id: &str,
    request_id: &str,
    now_ms: u64,
) -> Result<Option<Entry>, KvError> {
    // Ids minted before arrivals were embedded read as "arrived in the future": unknown.
    let issued = request_id::issued_ms(request_id).filter(|t| *t <= now_ms + CLOCK_SKEW_MS);
    if issued.is_some_and(|t| t + WINDOW_MS < now_ms) {
        return Ok(None);
    }
    let mut found = None;
    let mut seen = 0usize;
    log::walk_newest(store, now_ms, &|r| r.key_id == key_id, &mut |e| {
        if e.subject == request_id {
            found = Some(e.clone());
            return ControlFlow::Break(());
        }
        seen += 1;
        let before_arrival = issued.is_some_and(|t| e.written_ms + CLOCK_SKEW_MS < t);
        if before_arrival || e.time_ms + WINDOW_MS < now_ms || seen >= WINDOW_RECORDS {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(found)
}

fn unavailable(e: &KvError) -> ApiError {
    let mut err = ApiError::internal(format!("the key-value store is unavailable ({})", e.0));
    err.status = 503;
    err.retryable = true;
    err
}

/// Records feedback of `key_id` on one of its requests: 404 when the request is not one of the
/// key's within the window, 409 when the key already gave feedback on it.
pub fn give(
    store: &dyn Kv,
    key_id: &str,
    ask: FeedbackAsk,
    now_ms: u64,
) -> Result<FeedbackRecord, ApiError> {
    let entry = find_request(store, key_id, &ask.request_id, now_ms)
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| {
            ApiError::not_found(
                format!(
                    "no request \"{}\" of this API key to give feedback on; feedback is taken on the key's own requests (the answer's x-request-id) from the last 7 days and its newest {WINDOW_RECORDS} requests",
                    ask.request_id
                ),
                Some("request_id"),
                "request_not_found",
            )
        })?;
    let claim = FeedbackClaim {
        key_id,
        request_id: &ask.request_id,
    };
    if kv::incr(store, &claim, 1).map_err(|e| unavailable(&e))? > 1 {
        return Err(ApiError::conflict(
            format!(
                "feedback on request \"{}\" was already given with this API key; one feedback per request",
                ask.request_id
            ),
            Some("request_id"),
            "feedback_exists",
        ));
    }
    let record = |n: u64| FeedbackRecord {
        n,
        time_ms: now_ms,
        key_id: key_id.to_string(),
        request_id: ask.request_id.clone(),
        score: ask.score,
        thumbs: ask.thumbs,
        label: ask.label.clone(),
        seq: entry.seq,
        request_time_ms: entry.time_ms,
        model: entry.model.clone(),
        provider: entry.provider.clone(),
        outcome: entry.outcome,
        route: entry.route.clone(),
        reference_model: entry.reference_model.clone(),
    };
    let written = kv::incr(store, &FeedbackSeq, 1).and_then(|n| {
        let rec = record(n as u64);
        kv::store(store, &FeedbackItem(rec.n), &rec).map(|()| rec)
    });
    written.map_err(|e| {
        // Give the claim back, so the client's retry is not a duplicate.
        let _ = kv::incr(store, &claim, -1);
        unavailable(&e)
    })
}

/// What `GET /admin/feedback` exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    /// Only this key's.
    pub key_id: Option<String>,
    /// At most this many feedback lines, and this many cascade entries (the newest).
    pub limit: usize,
    /// Include cascade labels.
    pub cascade: bool,
}

/// The export, oldest first: feedback lines, then cascade lines (the newest `limit` of each).
pub fn export(store: &dyn Kv, q: &ExportQuery, now_ms: u64) -> Result<Vec<Value>, KvError> {
    let want_key = |k: &str| q.key_id.as_deref().is_none_or(|w| w == k);
    let mut out = Vec::new();
    let last = kv::read_counter(store, &FeedbackSeq)?.max(0) as u64;
    let mut hi = last;
    let mut given: Vec<FeedbackRecord> = Vec::new();
    while hi > 0 && given.len() < q.limit {
        let lo = hi.saturating_sub(log::BLOCK - 1).max(1);
        let keys: Vec<FeedbackItem> = (lo..=hi).rev().map(FeedbackItem).collect();
        given.extend(
            kv::load_many(store, &keys)?
                .into_iter()
                .flatten()
                .filter(|r| want_key(&r.key_id)),
        );
        hi = lo - 1;
    }
    given.truncate(q.limit);
    out.extend(given.iter().rev().map(FeedbackRecord::line));
    if q.cascade && q.limit > 0 {
        let mut labelled: Vec<Entry> = Vec::new();
        log::walk_newest(
            store,
            now_ms,
            &|r| r.cascades > 0 && want_key(&r.key_id),
            &mut |e| {
                if e.route.as_ref().is_some_and(RouteRecord::has_cascade_label) {
                    labelled.push(e.clone());
                }
                if labelled.len() >= q.limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        for e in labelled.iter().rev() {
            out.extend(cascade_lines(e));
        }
    }
    Ok(out)
}

/// The cascade's labels on one entry: `escalated` for each model whose answer it rejected,
/// `kept` for the served model when its answer was checked and kept.
pub fn cascade_lines(e: &Entry) -> Vec<Value> {
    let Some(r) = &e.route else {
        return Vec::new();
    };
    let line = |model: &str, label: &str, provider: Option<&str>| {
        let mut v = json!({
            "source": "cascade",
            "request_id": e.subject,
            "key_id": e.key_id,
            "model": model,
            "label": label,
            "request_time_ms": e.time_ms,
        });
        if let Some(p) = provider {
            v["provider"] = json!(p);
        }
        route_fields(&mut v, Some(r));
        v
    };
    let mut out: Vec<Value> = r
        .escalated_from
        .iter()
        .map(|m| line(m, "escalated", None))
        .collect();
    if r.kept {
        out.push(line(&e.model, "kept", Some(&e.provider)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::EntryKind;
    use crate::store::MemKv;

    const NOW: u64 = 1_800_000_000_000;

    fn id(at: u64, n: u8) -> String {
        request_id::new(at, [n, 0, 0, 0, 0, 0])
    }

    fn log_request(kv: &MemKv, key: &str, at: u64, n: u8, route: Option<RouteRecord>) -> String {
        let rid = id(at, n);
        log::append(
            kv,
            Entry {
                kind: EntryKind::Request,
                time_ms: at,
                written_ms: at + 50,
                subject: rid.clone(),
                key_id: key.into(),
                tenant: key.into(),
                model: "gpt-4o-mini".into(),
                provider: "openai".into(),
                outcome: Some(Outcome::Ok),
                reference_model: "gpt-4o".into(),
                route,
                ..Entry::default()
            },
        )
        .unwrap();
        rid
    }

    fn ask(rid: &str) -> FeedbackAsk {
        parse(format!(r#"{{"request_id": "{rid}", "thumbs": "up", "label": "great"}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn bodies_are_checked_naming_the_field() {
        let rid = id(NOW, 1);
        let err = |b: String| parse(b.as_bytes()).unwrap_err();
        let ok = parse(format!(r#"{{"request_id":"{rid}","score":0.25}}"#).as_bytes()).unwrap();
        assert_eq!((ok.score, ok.thumbs, ok.label), (0.25, None, None));
        let ok = parse(format!(r#"{{"request_id":"{rid}","thumbs":"down"}}"#).as_bytes()).unwrap();
        assert_eq!((ok.score, ok.thumbs), (0.0, Some(Thumbs::Down)));
        for (body, param, status) in [
            (
                format!(r#"{{"request_id":"{rid}","score":1.5}}"#),
                "score",
                400,
            ),
            (
                format!(r#"{{"request_id":"{rid}","score":-0.1}}"#),
                "score",
                400,
            ),
            (
                format!(r#"{{"request_id":"{rid}","score":"1"}}"#),
                "score",
                400,
            ),
            (format!(r#"{{"request_id":"{rid}"}}"#), "score", 400),
            (
                format!(r#"{{"request_id":"{rid}","score":1,"thumbs":"up"}}"#),
                "thumbs",
                400,
            ),
            (
                format!(r#"{{"request_id":"{rid}","thumbs":"meh"}}"#),
                "thumbs",
                400,
            ),
            (r#"{"score":1}"#.to_string(), "request_id", 400),
            (
                r#"{"request_id":"abc","score":1}"#.to_string(),
                "request_id",
                400,
            ),
            (
                format!(r#"{{"request_id":"{rid}","score":1,"label":""}}"#),
                "label",
                400,
            ),
            (
                format!(r#"{{"request_id":"{rid}","score":1,"label":7}}"#),
                "label",
                400,
            ),
            (
                format!(r#"{{"request_id":"{rid}","score":1,"stars":5}}"#),
                "stars",
                400,
            ),
        ] {
            let e = err(body.clone());
            assert_eq!(
                (e.status, e.param.as_deref()),
                (status, Some(param)),
                "{body}"
            );
        }
        let e = err("[1]".into());
        assert_eq!((e.status, e.param), (400, None));
    }

    #[test]
    fn feedback_joins_the_route_once_per_key_and_request() {
        let kv = MemKv::default();
        let route = RouteRecord {
            tier: "lumen/auto".into(),
            score: Some(0.125),
            ..RouteRecord::default()
        };
        let mine = log_request(&kv, "key_a", NOW - 5_000, 1, Some(route.clone()));
        let theirs = log_request(&kv, "key_b", NOW - 4_000, 2, None);
        let rec = give(&kv, "key_a", ask(&mine), NOW).unwrap();
        assert_eq!(
            (rec.n, rec.score, rec.model.as_str(), rec.route.as_ref()),
            (1, 1.0, "gpt-4o-mini", Some(&route))
        );
        assert_eq!(rec.reference_model, "gpt-4o");
        // The same key again: 409; another key's request: 404, like an unknown one.
        let e = give(&kv, "key_a", ask(&mine), NOW).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_deref()),
            (409, Some("feedback_exists"))
        );
        let other = give(&kv, "key_a", ask(&theirs), NOW).unwrap_err();
        let unknown = give(&kv, "key_a", ask(&id(NOW - 1_000, 9)), NOW).unwrap_err();
        assert_eq!(
            (other.status, other.param.as_deref()),
            (404, Some("request_id"))
        );
        assert_eq!(
            other.message.replace(&theirs, "ID"),
            unknown.message.replace(&id(NOW - 1_000, 9), "ID")
        );
        // Another key may rate its own request; a request older than the window is not found.
        assert_eq!(give(&kv, "key_b", ask(&theirs), NOW).unwrap().n, 2);
        let old = log_request(&kv, "key_a", NOW - WINDOW_MS - 1, 3, None);
        assert_eq!(give(&kv, "key_a", ask(&old), NOW).unwrap_err().status, 404);
    }

    #[test]
    fn the_search_stops_at_entries_written_before_the_request_arrived() {
        let kv = MemKv::default();
        // 200 requests an hour ago, then the one rated and three more just now.
        for i in 0..200u64 {
            log_request(&kv, "key_a", NOW - 3_600_000 + i * 1_000, 1, None);
        }
        let target = log_request(&kv, "key_a", NOW - 1_000, 2, None);
        for i in 0..3u64 {
            log_request(&kv, "key_a", NOW - 500 + i, 3, None);
        }
        log::seal(&kv, NOW, false).unwrap();
        let before = kv.ops().0;
        assert!(find_request(&kv, "key_a", &target, NOW).unwrap().is_some());
        let reads_found = kv.ops().0 - before;
        // An id that arrived after everything logged is given up on at the newest entries...
        let before = kv.ops().0;
        assert!(find_request(&kv, "key_a", &id(NOW, 9), NOW)
            .unwrap()
            .is_none());
        let reads_late = kv.ops().0 - before;
        // ... while an id with no usable arrival walks the whole window.
        let before = kv.ops().0;
        let legacy = "req_ffffffffffff000000000000";
        assert!(find_request(&kv, "key_a", legacy, NOW).unwrap().is_none());
        let reads_all = kv.ops().0 - before;
        assert!(
            reads_found < reads_all && reads_late < reads_all,
            "{reads_found} {reads_late} {reads_all}"
        );
    }

    #[test]
    fn export_has_feedback_then_cascade_labels() {
        let kv = MemKv::default();
        let cascaded = RouteRecord {
            tier: "lumen/auto".into(),
            score: Some(0.5),
            cascade: true,
            escalated_from: vec!["meta-llama/llama-3.1-8b-instruct".into()],
            kept: true,
            ..RouteRecord::default()
        };
        let a = log_request(&kv, "key_a", NOW - 3_000, 1, Some(cascaded));
        let b = log_request(&kv, "key_b", NOW - 2_000, 2, None);
        give(&kv, "key_a", ask(&a), NOW).unwrap();
        give(&kv, "key_b", ask(&b), NOW).unwrap();
        let all = ExportQuery {
            key_id: None,
            limit: 100,
            cascade: true,
        };
        let lines = export(&kv, &all, NOW).unwrap();
        let summary: Vec<(String, String, Value, Value)> = lines
            .iter()
            .map(|l| {
                (
                    l["source"].as_str().unwrap().to_string(),
                    l["model"].as_str().unwrap().to_string(),
                    l["score"].clone(),
                    l["label"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "feedback".into(),
                    "gpt-4o-mini".into(),
                    json!(1.0),
                    Value::Null
                ),
                (
                    "feedback".into(),
                    "gpt-4o-mini".into(),
                    json!(1.0),
                    Value::Null
                ),
                (
                    "cascade".into(),
                    "meta-llama/llama-3.1-8b-instruct".into(),
                    Value::Null,
                    json!("escalated")
                ),
                (
                    "cascade".into(),
                    "gpt-4o-mini".into(),
                    Value::Null,
                    json!("kept")
                ),
            ]
        );
        assert_eq!(lines[0]["request_id"], a.as_str());
        assert_eq!(lines[0]["tier"], "lumen/auto");
        assert_eq!(lines[0]["feedback_label"], "great");
        let only_b = export(
            &kv,
            &ExportQuery {
                key_id: Some("key_b".into()),
                ..all.clone()
            },
            NOW,
        )
        .unwrap();
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0]["request_id"], b.as_str());
        let newest = export(
            &kv,
            &ExportQuery {
                limit: 1,
                cascade: false,
                ..all
            },
            NOW,
        )
        .unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0]["request_id"], b.as_str());
    }
}
