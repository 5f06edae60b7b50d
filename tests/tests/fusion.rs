//! End-to-end: model fusion (issue 14). `lumen/fusion` runs the catalog's panel at once, then
//! streams the synthesizer's answer with `lumen.fusion` (each leg's cost and latency, the
//! agreement); a failing or late member is dropped and named; with every member failed the
//! synthesizer answers alone; the budget hold covers every leg before any runs; every leg is
//! metered in the request's log entry.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Instant;

fn fusion(text: &str, stream: bool) -> Value {
    let mut v = json!({"model": "lumen/fusion", "stream": stream,
           "messages": [{"role": "user", "content": text}]});
    if stream {
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

/// The `lumen` object of a stream's last chunk.
fn last_lumen(data: &[String]) -> Value {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    last["lumen"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fusion_streams_the_synthesis_with_every_leg_reported_and_metered() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(600, &[]).await;
    let t = Instant::now();
    let s = stream(
        gw.addr(),
        "/v1/chat/completions",
        &key,
        // Paced: a stream whose events all come at once leaves in one write.
        fusion("Is 17 prime? [mock tokens=5 delay_ms=20]", true),
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(s.headers.get("x-lumen-model").unwrap(), "gpt-4o");
    assert!(s
        .headers
        .get("x-lumen-route")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("tier=lumen/fusion"));
    let data = s.data();
    // Streamed: the synthesizer's answer arrives in several chunks.
    assert!(s.frames.len() > 3, "{} frames", s.frames.len());
    let lumen = last_lumen(&data);
    let f = &lumen["fusion"];
    let panel = f["panel"].as_array().unwrap();
    let models: Vec<&str> = panel.iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        ["gpt-4o-mini", "claude-3-5-haiku", "gemini-2.0-flash"]
    );
    assert!(panel
        .iter()
        .all(|m| m["ok"] == true && m["cost"].as_f64() > Some(0.0)));
    assert!(panel.iter().all(|m| m["latency_ms"].as_f64().is_some()));
    assert_eq!(f["synthesizer"]["model"], "gpt-4o");
    assert!(f["panel_ms"].as_f64().unwrap() <= t.elapsed().as_secs_f64() * 1000.0);
    // The mock gives every member the same words: they agree.
    assert_eq!(f["agreement"]["summary"], "all 3 answers are identical");
    let legs_cost: f64 = panel
        .iter()
        .map(|m| m["cost"].as_f64().unwrap())
        .sum::<f64>()
        + f["synthesizer"]["cost"].as_f64().unwrap();
    assert!(
        (lumen["cost"].as_f64().unwrap() - legs_cost).abs() < 1e-12,
        "{lumen}"
    );
    assert!((f["cost"].as_f64().unwrap() - legs_cost).abs() < 1e-12);
    // Four upstream calls: three whole panel answers at once, then the streamed synthesis
    // with the panel's answers in its last message.
    let reqs = gw.mock.requests();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    let synth = reqs.iter().find(|r| {
        r.body
            .as_ref()
            .is_some_and(|b| b["model"] == "gpt-4o" && b["stream"] == true)
    });
    let synth = synth
        .expect("a streamed synthesizer call")
        .body
        .clone()
        .unwrap();
    let msgs = synth["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    let last = msgs.last().unwrap()["content"].as_str().unwrap();
    assert!(last.starts_with("The request:\nIs 17 prime?"), "{last}");
    assert!(
        last.contains("\n\nPanel answers:\n\n[1] gpt-4o-mini:\n"),
        "{last}"
    );

    // Metered once, with every leg at its own price.
    let recs = gw.usage_until(&key, |u| u["total"]["requests"] == 1).await;
    let total = recs["total"]["cost_usd"].as_f64().unwrap();
    assert!((total - legs_cost).abs() < 1e-9, "{recs} vs {legs_cost}");
    let r = gw
        .call("GET", "/v1/usage/records", Some(&key), None)
        .await
        .json();
    let legs = r["data"][0]["legs"].as_array().unwrap().clone();
    let roles: Vec<&str> = legs.iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["synthesizer", "panel", "panel", "panel"], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_member_is_dropped_and_named_and_a_late_one_too() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(600, &[]).await;
    let r = gw
        .chat(
            &key,
            fusion("drop one [mock tokens=4 status=500 only=anthropic]", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let f = &v["lumen"]["fusion"];
    assert_eq!(f["panel"][1]["model"], "claude-3-5-haiku");
    assert_eq!(f["panel"][1]["ok"], false);
    let dropped = f["dropped"][0].as_str().unwrap();
    assert!(dropped.starts_with("claude-3-5-haiku ("), "{dropped}");
    assert!(f["note"].as_str().unwrap().contains("claude-3-5-haiku"));
    assert_eq!(
        f["agreement"]["pairs"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    assert!(v["choices"][0]["message"]["content"].as_str().is_some());
    // Whole answers carry the total in x-lumen-cost.
    let cost: f64 = r.header("x-lumen-cost").unwrap().parse().unwrap();
    assert!((cost - v["lumen"]["cost"].as_f64().unwrap()).abs() < 1e-9);

    // A member past the panel deadline is dropped without waiting for it.
    let mut late = fusion("late [mock tokens=2 ttft_ms=3000 only=anthropic]", false);
    late["lumen"] = json!({"fusion": {"deadline_ms": 400}});
    let t = Instant::now();
    let r = gw.chat(&key, late).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed().as_millis() < 2500, "{:?}", t.elapsed());
    let f = r.json()["lumen"]["fusion"].clone();
    assert_eq!(
        f["panel"][1]["dropped"],
        "missed the panel deadline (400 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_failed_the_synthesizer_answers_alone() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(600, &[]).await;
    let mut body = fusion("all fail [mock tokens=3 status=500 only=anthropic]", true);
    body["lumen"] = json!({"fusion": {"panel": ["claude-3-5-haiku"]}});
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    assert_eq!(s.status, 200);
    let lumen = last_lumen(&s.data());
    assert_eq!(lumen["fusion"]["panel"][0]["ok"], false);
    assert!(lumen["fusion"]["note"]
        .as_str()
        .unwrap()
        .starts_with("every panel member failed"));
    // The synthesizer got the client's own request, not a synthesis prompt.
    let last = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(last["model"], "gpt-4o");
    assert_eq!(last["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_too_small_for_the_whole_panel_is_402_before_any_leg() {
    let gw = Gateway::start().await;
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(
                json!({"name": "b", "tenant": "small"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    let key = r.json()["key"].as_str().unwrap().to_string();
    let put = gw
        .call(
            "PUT",
            "/admin/tenants/small",
            Some(ADMIN),
            Some(
                json!({"monthly_budget_usd": 0.002})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let mut body = fusion("pricey [mock tokens=2]", false);
    body["max_tokens"] = json!(1000);
    let r = gw.chat(&key, body).await;
    assert_eq!(r.error(402)["code"], "insufficient_quota");
    assert_eq!(gw.mock.request_count(), 0, "no leg ran");
    // The same budget holds one model's answer.
    let mut one = chat_body("gpt-4o-mini", "cheap [mock tokens=2]");
    one["max_tokens"] = json!(1000);
    assert_eq!(gw.chat(&key, one).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fusion_on_a_tier() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(600, &[]).await;
    let body = json!({"model": "lumen/balanced", "lumen": {"fusion": {"size": 2}},
        "messages": [{"role": "user", "content": "tier fusion [mock tokens=2]"}]});
    let r = gw.chat(&key, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let f = &v["lumen"]["fusion"];
    assert_eq!(f["panel"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        f["synthesizer"]["model"], "gpt-4o",
        "the strongest eligible"
    );
    assert_eq!(gw.mock.request_count(), 3);
    // A bad option names its field.
    let bad = json!({"model": "lumen/fusion", "lumen": {"fusion": {"size": 0}},
        "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(
        gw.chat(&key, bad).await.error(400)["param"],
        "lumen.fusion.size"
    );
}
