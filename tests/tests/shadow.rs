//! End-to-end: shadow traffic (issue 14). A route's requests are mirrored to a candidate after
//! the client has its answer: a slow candidate leaves the client's latency alone, a failing one
//! never surfaces, the pairs are compared in `GET /admin/shadow/{name}`, the calls are metered as
//! shadow entries (never the tenant's), under the experiment's concurrency cap.

mod common;

use common::config::Config;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CATALOG: &str = r#"
[shadows.mini-vs-4o]
route = "gpt-4o-mini"
candidate = "gpt-4o"
share = 100
max_concurrent = 64

[shadows.one-at-a-time]
route = "meta-llama/llama-3.1-8b-instruct"
candidate = "gpt-4o"
share = 100
max_concurrent = 1
"#;

const PLANS: &str = r#"
[plans.shadowed]
rpm = 6000
zero_retention = false

[plans.shadowed.shadow]
candidate = "gemini-2.0-flash"
share = 100
retain_answers = true
"#;

async fn report(gw: &Gateway, name: &str, samples: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = gw
            .call("GET", &format!("/admin/shadow/{name}"), Some(ADMIN), None)
            .await;
        if r.status == 200 {
            let v = r.json();
            if v["samples"].as_u64() >= Some(samples) || Instant::now() > deadline {
                return v;
            }
        } else {
            assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
            assert!(Instant::now() < deadline, "no samples for {name}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_never_delays_the_client_and_the_pairs_are_reported() {
    let cfg = Config::new(CATALOG, "");
    let gw = Gateway::start_config(&cfg, |_| {}).await;
    let (key, key_id) = gw.create_key(6000, &[]).await;
    // The candidate (gpt-4o) answers after 2 s; the live model at once.
    let body = chat_body(
        "gpt-4o-mini",
        "shadow me [mock tokens=6 ttft_ms=2000 only=gpt-4o]",
    );
    let mut client_ms = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = gw.chat(&key, body.clone()).await;
        client_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-lumen-model"), Some("gpt-4o-mini"));
        assert_eq!(r.json()["lumen"]["model"], "gpt-4o-mini");
    }
    client_ms.sort_by(f64::total_cmp);
    let p50 = client_ms[25];
    assert!(
        p50 < 500.0,
        "the client waited for the shadow: p50 {p50:.1} ms"
    );
    let v = report(&gw, "mini-vs-4o", 50).await;
    assert_eq!(v["samples"], 50, "{v}");
    assert_eq!(v["primary"]["models"], json!(["gpt-4o-mini"]));
    assert_eq!(v["candidate"]["models"], json!(["gpt-4o"]));
    assert_eq!(
        (v["primary"]["ok"].as_u64(), v["candidate"]["ok"].as_u64()),
        (Some(50), Some(50))
    );
    assert!(
        v["candidate"]["ttft_ms"]["p50"].as_f64().unwrap() >= 2000.0,
        "{v}"
    );
    assert!(
        v["primary"]["total_ms"]["p50"].as_f64().unwrap() < 500.0,
        "{v}"
    );
    // The mock writes the same words for both models: every pair matches.
    assert_eq!(v["exact_match"]["rate"], 1.0);
    assert_eq!(v["matches"]["n"], 50);
    assert!(v["matches"]["low"].as_f64().unwrap() > 0.9);
    assert!(v["p50_delta_ms"].as_f64().unwrap() >= 1900.0);
    let ratio = v["cost_ratio"].as_f64().unwrap();
    assert!(
        (ratio - 10.0 / 0.6).abs() < 1.0,
        "gpt-4o is ~16.7× dearer per output token: {ratio}"
    );
    let verdict = v["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("gpt-4o matches 100 % (95 % CI"),
        "{verdict}"
    );
    assert!(verdict.contains("over 50 pairs"), "{verdict}");
    // No answers kept: the catalog's experiment does not ask for them.
    assert!(v.get("examples").is_none());

    // Metered as shadow: the tenant's usage holds only its own 50 requests …
    let usage = gw.usage_until(&key, |u| u["total"]["requests"] == 50).await;
    assert_eq!(usage["total"]["requests"], 50);
    // … and the experiment's calls are under its own key, at the candidate's price.
    let q = "/admin/usage?key_id=shadow:mini-vs-4o";
    let s = gw.call("GET", q, Some(ADMIN), None).await.json();
    assert_eq!(s["total"]["requests"], 50, "{s}");
    assert!(
        s["total"]["cost_usd"].as_f64().unwrap() > usage["total"]["cost_usd"].as_f64().unwrap()
    );
    let recs = gw
        .call(
            "GET",
            "/admin/usage/records?key_id=shadow:mini-vs-4o&limit=1",
            Some(ADMIN),
            None,
        )
        .await
        .json();
    let rec = &recs["data"][0];
    assert_eq!(
        (rec["shadow"].as_str(), rec["model"].as_str()),
        (Some("mini-vs-4o"), Some("gpt-4o"))
    );
    let _ = key_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_never_surfaces_and_the_cap_holds() {
    let cfg = Config::new(CATALOG, "");
    let gw = Gateway::start_config(&cfg, |_| {}).await;
    let (key, _) = gw.create_key(6000, &[]).await;
    let body = chat_body(
        "gpt-4o-mini",
        "fail the shadow [mock tokens=3 status=500 only=gpt-4o]",
    );
    for _ in 0..3 {
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.header("x-lumen-fallbacks").is_none());
    }
    // Streams too: the client's stream ends cleanly.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let s = stream(gw.addr(), "/v1/chat/completions", &key, sbody, None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.data().last().unwrap(), "[DONE]");
    let v = report(&gw, "mini-vs-4o", 4).await;
    assert_eq!(
        (
            v["candidate"]["failed"].as_u64(),
            v["candidate"]["ok"].as_u64()
        ),
        (Some(4), Some(0)),
        "{v}"
    );
    assert_eq!(v["matches"]["n"], 0);
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .contains("failed all 4 shadow calls"),
        "{v}"
    );

    // One call at a time: three concurrent requests, a 2 s candidate, one sample.
    let slow = chat_body(
        "meta-llama/llama-3.1-8b-instruct",
        "cap [mock tokens=2 ttft_ms=2000 only=gpt-4o]",
    );
    let reqs = (0..3).map(|_| gw.chat(&key, slow.clone()));
    for r in futures::future::join_all(reqs).await {
        assert_eq!(r.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let v = report(&gw, "one-at-a-time", 1).await;
    assert_eq!(v["samples"], 1, "the cap let {} through", v["samples"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_names_its_own_experiment_and_keeps_answers_when_it_may() {
    let cfg = Config::new("", PLANS);
    let gw = Gateway::start_config(&cfg, |_| {}).await;
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(
                json!({"name": "p", "plan": "shadowed"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 201);
    let key = r.json()["key"].as_str().unwrap().to_string();
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "plan shadow [mock tokens=3]"}]});
    for _ in 0..2 {
        let s = stream(gw.addr(), "/v1/chat/completions", &key, body.clone(), None).await;
        assert_eq!(s.status, 200);
    }
    let v = report(&gw, "plan-shadowed", 2).await;
    assert_eq!(v["candidate"]["models"], json!(["gemini-2.0-flash"]));
    assert_eq!(v["candidate"]["ok"], 2, "{v}");
    assert!(v["candidate"]["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
    let ex = &v["examples"][0];
    assert_eq!(ex["answers"][0], ex["answers"][1], "{v}");
    // Unknown experiments are a 404; the admin token is required.
    let r = gw
        .call("GET", "/admin/shadow/nope", Some(ADMIN), None)
        .await;
    assert_eq!(r.error(404)["code"], "shadow_not_found");
    assert_eq!(
        gw.call("GET", "/admin/shadow/plan-shadowed", Some(&key), None)
            .await
            .status,
        401
    );
}
