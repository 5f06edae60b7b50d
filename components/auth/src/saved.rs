//! What an answer says about its route and its saving, once the meter has settled it: the
//! `lumen` object gains `route` (non-stream) and `saved`, `reference_model`, `reference_from`
//! (and `saved_note` when negative), non-stream answers get `x-lumen-saved`, and a stream's
//! final chunk (the one carrying the `lumen` cost) is held until settlement so it carries the
//! same `saved` the log records. Also the route record the log entry keeps for feedback.

use lumen_shared::contracts::Plan;
use lumen_shared::domain::route::RouteExplain;
use lumen_shared::domain::saved::Saved;
use lumen_shared::store::log::RouteRecord;
use lumen_shared::wire::sse::{self, Event};
use lumen_spin::Reply;
use serde_json::{json, Value};

/// What a settled whole answer is stamped with.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamps<'a> {
    /// `lumen.route` (a routed request).
    pub route: Option<&'a RouteExplain>,
    /// The saving (`lumen.saved` and friends, `x-lumen-saved`).
    pub saved: Option<&'a Saved>,
    /// `lumen.cache.status` (set where the answer has a `lumen` object).
    pub cache: Option<&'a str>,
}

/// Adds the stamps to a JSON answer in one pass (kept as is when it is not a JSON object).
pub fn stamp_body(body: Vec<u8>, stamps: &Stamps<'_>) -> Vec<u8> {
    if stamps.route.is_none() && stamps.saved.is_none() && stamps.cache.is_none() {
        return body;
    }
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if let (Some(status), Some(Value::Object(l))) = (stamps.cache, answer.get_mut("lumen")) {
        l.insert("cache".into(), json!({ "status": status }));
    }
    if let Some(s) = stamps.saved {
        s.stamp(&mut answer);
    }
    if let Some(r) = stamps.route {
        let lumen = answer
            .entry("lumen")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(obj) = lumen.as_object_mut() {
            obj.insert("route".into(), json!(r));
        }
    }
    serde_json::to_vec(&answer).unwrap_or(body)
}

/// A settled whole answer: a successful one gets its stamps and `x-lumen-saved`.
pub fn finish_whole(mut reply: Reply, stamps: &Stamps<'_>) -> Reply {
    if !(200..300).contains(&reply.status) {
        return reply;
    }
    reply.body = stamp_body(std::mem::take(&mut reply.body), stamps);
    if let Some(s) = stamps.saved {
        reply.set_header("x-lumen-saved", s.header());
    }
    reply
}

/// Whether an event is a chunk carrying the `lumen` cost object (the stream's final chunk).
fn carries_cost(ev: &Event) -> bool {
    !ev.comment_only
        && ev.event.as_deref().is_none_or(|n| n == "message")
        && ev.data.contains("\"lumen\"")
        && serde_json::from_str::<Value>(&ev.data)
            .ok()
            .is_some_and(|v| v.get("lumen").is_some_and(Value::is_object))
}

/// The events [`FinalChunk::pass`] lets through: a released chunk, then the event itself.
pub type Passed = std::iter::Chain<std::option::IntoIter<Event>, std::option::IntoIter<Event>>;

/// Holds a stream's final chunk (the one with the `lumen` cost) until the request is settled.
#[derive(Debug, Default)]
pub struct FinalChunk {
    held: Option<Event>,
}

impl FinalChunk {
    /// The events to relay now, in order. The cost chunk is held; `[DONE]`, keep-alives and named
    /// events pass it, and any other event releases it first (it was not the last after all).
    pub fn pass(&mut self, ev: Event) -> Passed {
        let (before, now) = if carries_cost(&ev) {
            (self.held.replace(ev), None)
        } else if ev.comment_only || ev.event.is_some() || ev.data.trim() == "[DONE]" {
            (None, Some(ev))
        } else {
            (self.held.take(), Some(ev))
        };
        before.into_iter().chain(now)
    }

    /// The held chunk with the saving added, as bytes to write (empty when none is held).
    pub fn release(&mut self, saved: Option<&Saved>) -> Vec<u8> {
        let Some(ev) = self.held.take() else {
            return Vec::new();
        };
        match (serde_json::from_str::<Value>(&ev.data), saved) {
            (Ok(Value::Object(mut chunk)), Some(s)) => {
                s.stamp(&mut chunk);
                sse::data_event(&Value::Object(chunk).to_string())
            }
            _ => sse::data_event(&ev.data),
        }
    }
}

/// Models the cascade escalated from, from the provider's `lumen-cascade` header (`model: why;
/// model: why`), matched against the plan's candidates.
fn escalated_models(plan: &Plan, header: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in header.split("; ") {
        let hit = plan
            .candidates
            .iter()
            .map(|c| c.model.as_str())
            .filter(|m| part.starts_with(&format!("{m}: ")))
            .max_by_key(|m| m.len());
        if let Some(m) = hit {
            out.push(m.to_string());
        }
    }
    out
}

/// What the log entry keeps of the route: tier, score and floor at routing time, and the
/// cascade's outcome (models escalated from; the served answer kept after a check). None for
/// a pinned model without a cascade.
pub fn route_record(
    plan: &Plan,
    served: (&str, &str),
    ok: bool,
    cascade_header: Option<&str>,
) -> Option<RouteRecord> {
    let r = plan.route.as_ref();
    let tier = r.and_then(|r| r.tier.clone()).unwrap_or_default();
    if tier.is_empty() && !plan.cascade {
        return None;
    }
    // The provider checks every candidate's answer but the last one's.
    let index = plan
        .candidates
        .iter()
        .position(|c| c.model == served.0 && c.provider.name == served.1);
    let kept = plan.cascade && ok && index.is_some_and(|i| i + 1 < plan.candidates.len());
    Some(RouteRecord {
        tier,
        // f32 on the plan: widened and rounded, so it reads 0.192, not 0.19200000166893005.
        score: r
            .and_then(|r| r.score)
            .map(|s| (f64::from(s) * 1000.0).round() / 1000.0),
        floor: r.and_then(|r| r.quality_floor),
        cascade: plan.cascade,
        escalated_from: cascade_header
            .map(|h| escalated_models(plan, h))
            .unwrap_or_default(),
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_shared::domain::catalog::Catalog;
    use lumen_shared::domain::saved::ReferenceFrom;
    use lumen_shared::wire::sse::Parser;

    fn saved(nanos: i64) -> Saved {
        Saved {
            nanos,
            reference_model: "gpt-4o".into(),
            from: ReferenceFrom::Tier,
        }
    }

    #[test]
    fn whole_answers_get_route_and_saving() {
        let r = RouteExplain {
            model: "m".into(),
            reason: "why".into(),
            ..RouteExplain::default()
        };
        let reply = Reply::json_bytes(200, br#"{"id":"x","lumen":{"cost":1}}"#.to_vec());
        let stamps = Stamps {
            route: Some(&r),
            saved: Some(&saved(2_500)),
            cache: Some("miss"),
        };
        let out = finish_whole(reply, &stamps);
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["lumen"]["cost"], 1);
        assert_eq!(v["lumen"]["route"]["model"], "m");
        assert_eq!(v["lumen"]["saved"], 2.5e-6);
        assert_eq!(v["lumen"]["reference_model"], "gpt-4o");
        assert_eq!(v["lumen"]["cache"]["status"], "miss");
        assert_eq!(
            out.headers
                .iter()
                .find(|(n, _)| n == "x-lumen-saved")
                .map(|(_, v)| v.as_str()),
            Some("0.000002500")
        );
        // Errors and non-objects are left alone.
        let err = finish_whole(Reply::json_bytes(502, b"{}".to_vec()), &stamps);
        assert_eq!(err.body, b"{}".to_vec());
        assert!(err.headers.iter().all(|(n, _)| n != "x-lumen-saved"));
        assert_eq!(stamp_body(b"[1]".to_vec(), &stamps), b"[1]".to_vec());
        assert_eq!(
            stamp_body(b"{}".to_vec(), &Stamps::default()),
            b"{}".to_vec()
        );
        // The cache status goes only where the answer has a `lumen` object.
        let only_cache = Stamps {
            cache: Some("miss"),
            ..Stamps::default()
        };
        assert_eq!(
            stamp_body(br#"{"id":"x"}"#.to_vec(), &only_cache),
            br#"{"id":"x"}"#.to_vec()
        );
    }

    fn events(text: &str) -> Vec<Event> {
        Parser::default().push(text.as_bytes())
    }

    #[test]
    fn the_cost_chunk_waits_for_the_saving() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                      data: {\"choices\":[],\"lumen\":{\"cost\":1}}\n\n\
                      : keep-alive\n\n\
                      data: [DONE]\n\n";
        let mut fin = FinalChunk::default();
        let passed: Vec<String> = events(stream)
            .into_iter()
            .flat_map(|ev| fin.pass(ev).collect::<Vec<_>>())
            .map(|e| e.data)
            .collect();
        assert_eq!(
            passed,
            vec![
                "{\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}",
                "",
                "[DONE]"
            ]
        );
        let last = fin.release(Some(&saved(-7)));
        let v: Value =
            serde_json::from_str(&events(&String::from_utf8(last).unwrap())[0].data).unwrap();
        assert_eq!(v["lumen"]["cost"], 1);
        assert_eq!(v["lumen"]["saved"], -7e-9);
        assert!(v["lumen"]["saved_note"].is_string());
        assert!(fin.release(None).is_empty());
        // A cost chunk followed by more data was not the last: it goes out first, unchanged.
        let mut fin = FinalChunk::default();
        let mut out = Vec::new();
        for ev in events("data: {\"lumen\":{\"cost\":1}}\n\ndata: {\"choices\":[]}\n\n") {
            out.extend(fin.pass(ev).map(|e| e.data));
        }
        assert_eq!(out, vec!["{\"lumen\":{\"cost\":1}}", "{\"choices\":[]}"]);
        // Content that merely mentions "lumen" is not held.
        let mut fin = FinalChunk::default();
        let ev = events("data: {\"choices\":[{\"delta\":{\"content\":\"\\\"lumen\\\"\"}}]}\n\n");
        assert_eq!(fin.pass(ev[0].clone()).count(), 1);
    }

    #[test]
    fn the_route_record_keeps_tier_score_and_cascade_labels() {
        let cat = Catalog::from_toml(
            include_str!("../../../config/catalog.toml"),
            "config/catalog.toml",
        )
        .unwrap();
        let mut plan = cat.plan("gpt-4o-mini", &[]).unwrap();
        assert_eq!(
            route_record(&plan, ("gpt-4o-mini", "openai"), true, None),
            None
        );
        plan.candidates.push(cat.candidate("gpt-4o"));
        plan.cascade = true;
        plan.route = Some(RouteExplain {
            tier: Some("lumen/auto".into()),
            score: Some(0.25),
            quality_floor: Some(0.6),
            model: "gpt-4o-mini".into(),
            reason: "r".into(),
            ..RouteExplain::default()
        });
        let kept = route_record(&plan, ("gpt-4o-mini", "openai"), true, None).unwrap();
        assert_eq!(
            (kept.tier.as_str(), kept.score, kept.floor, kept.kept),
            ("lumen/auto", Some(0.25), Some(0.6), true)
        );
        assert!(kept.escalated_from.is_empty());
        let header = "gpt-4o-mini: empty answer; gpt-4o-mini: refused (message.refusal)";
        let up = route_record(&plan, ("gpt-4o", "openai"), true, Some(header)).unwrap();
        assert_eq!(up.escalated_from, vec!["gpt-4o-mini", "gpt-4o-mini"]);
        assert!(!up.kept, "the last candidate's answer is never checked");
    }
}
