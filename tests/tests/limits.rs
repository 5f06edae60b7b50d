//! Plans and windowed limits through the gateway: a plan's allowed models and limits apply to
//! its keys, token limits reserve at admission and give back after, a tenant's limit holds
//! across its keys under concurrency, and the `x-ratelimit-*` headers report both.

mod common;

use common::{chat_body, Gateway, ADMIN};
use futures::future::join_all;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn create(gw: &Gateway, body: Value) -> Value {
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Waits so the next few seconds stay inside one minute window.
async fn early_in_a_minute() {
    let sec = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 60;
    if sec >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - sec)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_sets_models_limits_and_token_headers() {
    let gw = Gateway::start().await;
    let v = create(&gw, json!({"name": "f", "plan": "free"})).await;
    assert_eq!(
        (v["plan"].clone(), v["rpm_limit"].clone()),
        (json!("free"), json!(20)),
        "{v}"
    );
    assert_eq!(v["allowed_models"], json!(["gpt-4o-mini"]));
    assert_eq!(v["zero_retention"], true);
    let key = v["key"].as_str().unwrap();
    let bad = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(
                json!({"name": "g", "plan": "gold"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(bad.error(400)["param"], "plan");

    early_in_a_minute().await;
    assert_ne!(
        gw.chat(key, chat_body("gpt-4o", "hi")).await.status,
        200,
        "the free plan does not allow gpt-4o"
    );
    // Reserve nearly the whole token window; the actual usage gives most of it back.
    let mut big = chat_body("gpt-4o-mini", "big [mock tokens=3]");
    big["max_tokens"] = json!(39_000);
    let prompt = lumen_tests::mock::prompt_tokens(&big);
    let r = gw.chat(key, big.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("40000"));
    let remaining: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(remaining, 40_000 - prompt - 39_000);
    assert!(r.header("x-ratelimit-reset-tokens").unwrap().ends_with('s'));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("20"));
    // Reconciled to prompt + 3, so the same reservation fits again.
    let r = gw.chat(key, big.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    big["max_tokens"] = json!(50_000);
    let e = gw.chat(key, big).await.error(429);
    assert!(
        e["message"].as_str().unwrap().contains("tokens per minute"),
        "{e}"
    );
}

/// Three keys of one tenant on the free plan (20 rpm each, 40 rpm per tenant) send 60 requests
/// at once: exactly 40 are admitted (a get-then-set counter would admit more).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_limit_holds_across_its_keys_under_concurrency() {
    let gw = Gateway::start().await;
    let mut keys = Vec::new();
    for i in 0..3 {
        let v = create(
            &gw,
            json!({"name": format!("k{i}"), "plan": "free", "tenant": "shared"}),
        )
        .await;
        keys.push(v["key"].as_str().unwrap().to_string());
    }
    early_in_a_minute().await;
    let mut body = chat_body("gpt-4o-mini", "t [mock tokens=1]");
    body["max_tokens"] = json!(5);
    let calls = (0..60).map(|i| gw.chat(&keys[i % 3], body.clone()));
    let answers = join_all(calls).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    for r in answers.iter().filter(|r| r.status != 200) {
        assert_eq!(r.error(429)["code"], "rate_limit_exceeded");
    }
    assert_eq!(ok, 40, "tenant limit 40/min");
}

/// The pro plan limits each key to 60 gpt-4o requests a minute (its own limit is 600): 70 at
/// once admit exactly 60, and other models are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_model_limit_holds_under_concurrency() {
    let gw = Gateway::start().await;
    let v = create(&gw, json!({"name": "p", "plan": "pro"})).await;
    let key = v["key"].as_str().unwrap().to_string();
    early_in_a_minute().await;
    let mut body = chat_body("gpt-4o", "m [mock tokens=1]");
    body["max_tokens"] = json!(5);
    let answers = join_all((0..70).map(|_| gw.chat(&key, body.clone()))).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    for r in answers.iter().filter(|r| r.status != 200) {
        let e = r.error(429);
        assert!(
            e["message"].as_str().unwrap().contains("on this model"),
            "{e}"
        );
    }
    assert_eq!(ok, 60, "per-model limit 60/min");
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "other [mock tokens=1]"))
        .await;
    assert_eq!(r.status, 200);
}
