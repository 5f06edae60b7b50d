//! End-to-end routing: tiers (`model: "auto"` and friends) with the learned difficulty scorer,
//! pins, aliases (incl. regex rules), model-string parameters, price ceiling, latency SLO,
//! provider order/only/ignore, brand preference, `POST /v1/route` and the quality-floor cascade,
//! through the real components in front of the mock upstream.

mod common;

use common::config::Config;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Cheapest catalog model (together).
const CHEAP: &str = "meta-llama/llama-3.1-8b-instruct";
const CHEAP_UPSTREAM: &str = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo";
const MINI: &str = "gpt-4o-mini";
const STRONG: &str = "gpt-4o";
const LLAMA70: &str = "meta-llama/llama-3.1-70b-instruct";

const EASY: &str = "What is the capital of France?";
const HARD_MATH: &str = "Let f(x) = x^3 - 6x^2 + 11x - 6. Find all roots, then compute the integral of f from 0 to 4, derive the second derivative, determine the inflection point, and prove that f has exactly three real roots. Finally evaluate the limit of f(x)/x^3 as x approaches infinity. Show every step.";
const HARD_CODE: &str = "Write a Python function `merge_intervals(intervals)` that merges overlapping intervals, with unit tests:\n```python\ndef test_merge():\n    assert merge_intervals([[1,3],[2,6],[8,10]]) == [[1,6],[8,10]]\n    assert merge_intervals([]) == []\n```\nMake the implementation O(n log n) and explain the complexity.";

fn body(model: &str, text: &str, extra: Value) -> Value {
    let mut b = chat_body(model, text);
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

async fn setup() -> (Gateway, String) {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    (gw, key)
}

/// `POST /v1/route` for one request: the plan.
async fn plan(gw: &Gateway, key: &str, b: Value) -> Value {
    let r = gw
        .call(
            "POST",
            "/v1/route",
            Some(key),
            Some(b.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn winner(plan: &Value) -> &str {
    plan["candidates"][0]["model"].as_str().unwrap()
}

fn excluded<'a>(plan: &'a Value, model: &str) -> Option<&'a str> {
    plan["route"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == model)
        .and_then(|c| c["excluded"].as_str())
}

#[tokio::test]
async fn auto_sends_easy_prompts_cheap_and_hard_prompts_strong_with_the_reason() {
    let (gw, key) = setup().await;

    let r = gw.chat(&key, body("auto", EASY, json!({}))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some(CHEAP));
    assert_eq!(r.header("x-lumen-provider"), Some("together"));
    let h = r.header("x-lumen-route").unwrap();
    assert!(
        h.contains("tier=lumen/auto") && h.contains("score=") && h.contains("reason="),
        "{h}"
    );
    let v = r.json();
    let route = &v["lumen"]["route"];
    assert_eq!(route["tier"], "lumen/auto");
    assert_eq!(route["model"], CHEAP);
    assert!(route["reason"]
        .as_str()
        .unwrap()
        .contains("clears the floor"));
    assert!(route["candidates"].as_array().unwrap().len() >= 4);
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(up["model"], CHEAP_UPSTREAM);

    for hard in [HARD_MATH, HARD_CODE] {
        let r = gw.chat(&key, body("lumen/auto", hard, json!({}))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-lumen-model"), Some(STRONG), "{hard}");
        let v = r.json();
        let route = &v["lumen"]["route"];
        // The cheap models were considered and fell short of the floor for this request.
        let floor = route["quality_floor"].as_f64().unwrap();
        for c in route["candidates"].as_array().unwrap() {
            if c["model"] == CHEAP || c["model"] == MINI {
                assert!(c["predicted_quality"].as_f64().unwrap() < floor, "{c}");
            }
        }
    }
    // The easy prompt scored lower than both hard ones.
    let easy = plan(&gw, &key, body("auto", EASY, json!({}))).await;
    let math = plan(&gw, &key, body("auto", HARD_MATH, json!({}))).await;
    assert!(
        easy["route"]["score"].as_f64().unwrap() + 0.5 < math["route"]["score"].as_f64().unwrap()
    );
}

#[tokio::test]
async fn tiers_are_listed_and_respect_the_keys_models() {
    let (gw, key) = setup().await;
    let v = gw.call("GET", "/v1/models", Some(&key), None).await.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for t in [
        "lumen/auto",
        "lumen/fast",
        "lumen/balanced",
        "lumen/reasoning",
        CHEAP,
    ] {
        assert!(ids.contains(&t), "{t} missing from {ids:?}");
    }
    let auto = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "lumen/auto")
        .unwrap();
    assert_eq!(auto["aliases"], json!(["auto"]));

    // A key limited to gpt-4o and auto: auto routes among its models only.
    let (limited, _) = gw.create_key(100, &["gpt-4o", "auto"]).await;
    let r = gw.chat(&limited, body("auto", EASY, json!({}))).await;
    assert_eq!(r.header("x-lumen-model"), Some(STRONG));
    // A key without the tier may not use it.
    let (no_tier, _) = gw.create_key(100, &["gpt-4o"]).await;
    gw.chat(&no_tier, body("lumen/fast", EASY, json!({})))
        .await
        .error(403);
}

#[tokio::test]
async fn pins_always_win() {
    let (gw, key) = setup().await;
    let r = gw.chat(&key, body(STRONG, EASY, json!({}))).await;
    assert_eq!(r.header("x-lumen-model"), Some(STRONG));
    assert!(r.header("x-lumen-route").unwrap().contains("pinned model"));
    let r = gw.chat(&key, body(CHEAP, HARD_MATH, json!({}))).await;
    assert_eq!(r.header("x-lumen-model"), Some(CHEAP));
    assert_eq!(r.json()["lumen"]["route"]["model"], CHEAP);
}

#[tokio::test]
async fn aliases_and_regex_alias_rules() {
    let (gw, key) = setup().await;
    for (asked, served, why) in [
        ("openai/gpt-4o", STRONG, "alias"),
        ("gpt-4o-2024-08-06", STRONG, "alias rule"),
        ("gpt-4o-mini-2024-07-18", MINI, "alias rule"),
        ("llama-3.1-70b-instruct-turbo", LLAMA70, "alias rule"),
        ("llama-3.1-8b", CHEAP, "alias"),
    ] {
        let r = gw.chat(&key, body(asked, EASY, json!({}))).await;
        assert_eq!(
            r.status,
            200,
            "{asked}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-lumen-model"), Some(served), "{asked}");
        assert!(
            r.header("x-lumen-route").unwrap().contains(why),
            "{asked}: {:?}",
            r.header("x-lumen-route")
        );
    }
    let e = gw
        .chat(&key, body("gpt-4o-1999", EASY, json!({})))
        .await
        .error(404);
    assert_eq!(e["param"], "model");
}

#[tokio::test]
async fn uri_params_are_defaults_and_provider_prefixes_pin_the_provider() {
    let (gw, key) = setup().await;
    let r = gw
        .chat(
            &key,
            body("gpt-4o-mini?temperature=0.7&max_tokens=3", EASY, json!({})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(
        (up["model"].as_str(), up["temperature"].as_f64()),
        (Some(MINI), Some(0.7))
    );
    assert_eq!(up["max_tokens"], 3);

    // The client's own value wins over the default.
    gw.chat(
        &key,
        body(
            "gpt-4o-mini?temperature=0.7",
            EASY,
            json!({"temperature": 0.2}),
        ),
    )
    .await;
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(up["temperature"].as_f64(), Some(0.2));

    // Tiers take parameters too.
    gw.chat(&key, body("auto?top_p=0.5", EASY, json!({}))).await;
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(
        (up["model"].as_str(), up["top_p"].as_f64()),
        (Some(CHEAP_UPSTREAM), Some(0.5))
    );

    let e = gw
        .chat(&key, body("gpt-4o-mini?temperature=9", EASY, json!({})))
        .await
        .error(400);
    assert_eq!(e["param"], "model");
    let e = gw
        .chat(&key, body("gpt-4o-mini?stream=true", EASY, json!({})))
        .await
        .error(400);
    assert_eq!(e["param"], "model");

    let r = gw
        .chat(&key, body("openai:gpt-4o-mini", EASY, json!({})))
        .await;
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    gw.chat(&key, body("together:gpt-4o-mini", EASY, json!({})))
        .await
        .error(404);
    // A provider prefix on a tier restricts its candidates.
    let p = plan(&gw, &key, body("openai:auto", EASY, json!({}))).await;
    assert!(p["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["provider"]["name"] == "openai"));
}

#[tokio::test]
async fn price_ceiling() {
    let (gw, key) = setup().await;
    let p = plan(&gw, &key, body("lumen/reasoning", HARD_MATH, json!({}))).await;
    assert_eq!(winner(&p), STRONG);
    // Under $1 per Mtok the strongest is gpt-4o-mini.
    let p = plan(
        &gw,
        &key,
        body("lumen/reasoning", HARD_MATH, json!({"max_price": 1})),
    )
    .await;
    assert_eq!(winner(&p), MINI);
    assert!(excluded(&p, STRONG).unwrap().contains("max_price"), "{p}");
    let p = plan(
        &gw,
        &key,
        body(
            "lumen/reasoning",
            HARD_MATH,
            json!({"max_price": {"prompt": 1, "completion": 0.5}}),
        ),
    )
    .await;
    assert_eq!(winner(&p), CHEAP);
    assert!(excluded(&p, MINI).is_some() && excluded(&p, LLAMA70).is_some());
    // Through chat too, and the field never reaches the upstream.
    let r = gw
        .chat(
            &key,
            body("lumen/reasoning", HARD_MATH, json!({"max_price": 1})),
        )
        .await;
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert!(up.get("max_price").is_none(), "{up}");

    let e = gw
        .chat(&key, body("auto", EASY, json!({"max_price": 0.01})))
        .await
        .error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("max_price"), Some("no_eligible_model"))
    );
    let e = gw
        .chat(&key, body("auto", EASY, json!({"max_price": "cheap"})))
        .await
        .error(400);
    assert_eq!(e["param"], "max_price");
}

#[tokio::test]
async fn latency_slo_uses_observed_latency() {
    let (gw, key) = setup().await;
    let only_openai = json!({"provider": {"only": ["openai"]}});
    let p = plan(&gw, &key, body("lumen/fast", EASY, only_openai.clone())).await;
    assert_eq!(winner(&p), MINI);
    // gpt-4o-mini answers slowly once: its latency record goes above the SLO.
    let r = gw
        .chat(
            &key,
            body(MINI, "slow [mock ttft_ms=400 tokens=1]", json!({})),
        )
        .await;
    assert_eq!(r.status, 200);
    let slo = json!({"provider": {"only": ["openai"]}, "max_latency_ms": 200});
    let deadline = Instant::now() + Duration::from_secs(5);
    let p = loop {
        let p = plan(&gw, &key, body("lumen/fast", EASY, slo.clone())).await;
        if winner(&p) != MINI || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(winner(&p), STRONG, "{p}");
    assert!(
        excluded(&p, MINI).unwrap().contains("max_latency_ms"),
        "{p}"
    );
    // A looser SLO keeps it.
    let loose = json!({"provider": {"only": ["openai"]}, "max_latency_ms": 60000});
    let p = plan(&gw, &key, body("lumen/fast", EASY, loose)).await;
    assert_eq!(winner(&p), MINI);
    let e = gw
        .chat(&key, body("auto", EASY, json!({"max_latency_ms": -1})))
        .await
        .error(400);
    assert_eq!(e["param"], "max_latency_ms");
}

#[tokio::test]
async fn provider_order_only_ignore_and_fallbacks() {
    let (gw, key) = setup().await;
    let p = plan(&gw, &key, body("lumen/fast", EASY, json!({}))).await;
    assert_eq!(winner(&p), CHEAP);
    assert!(
        p["candidates"].as_array().unwrap().len() >= 4,
        "an ordered fallback plan"
    );

    let p = plan(
        &gw,
        &key,
        body(
            "lumen/fast",
            EASY,
            json!({"provider": {"order": ["openai"]}}),
        ),
    )
    .await;
    assert_eq!(winner(&p), MINI);
    assert!(p["route"]["reason"]
        .as_str()
        .unwrap()
        .contains("provider.order"));
    let providers: Vec<&str> = p["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["provider"]["name"].as_str().unwrap())
        .collect();
    assert!(
        providers.contains(&"together"),
        "order keeps the others as fallbacks"
    );

    let p = plan(
        &gw,
        &key,
        body(
            "lumen/fast",
            EASY,
            json!({"provider": {"only": ["openai"]}}),
        ),
    )
    .await;
    assert_eq!(winner(&p), MINI);
    assert!(p["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["provider"]["name"] == "openai"));
    assert!(excluded(&p, CHEAP).unwrap().contains("provider.only"));

    let p = plan(
        &gw,
        &key,
        body(
            "lumen/fast",
            EASY,
            json!({"provider": {"ignore": ["together"]}}),
        ),
    )
    .await;
    assert_eq!(winner(&p), MINI);
    assert!(excluded(&p, LLAMA70).unwrap().contains("provider.ignore"));

    let p = plan(
        &gw,
        &key,
        body(
            "lumen/fast",
            EASY,
            json!({"provider": {"allow_fallbacks": false}}),
        ),
    )
    .await;
    assert_eq!(p["candidates"].as_array().unwrap().len(), 1);

    // Through chat: the upstream never sees the field.
    let r = gw
        .chat(
            &key,
            body(
                "lumen/fast",
                EASY,
                json!({"provider": {"ignore": ["together"]}}),
            ),
        )
        .await;
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert!(up.get("provider").is_none(), "{up}");

    let e = gw
        .chat(
            &key,
            body("auto", EASY, json!({"provider": {"sort": "price"}})),
        )
        .await
        .error(400);
    assert_eq!(e["param"], "provider.sort");
    let e = gw
        .chat(
            &key,
            body("auto", EASY, json!({"provider": {"only": ["nobody"]}})),
        )
        .await
        .error(400);
    assert_eq!(e["code"], "no_eligible_model");
}

#[tokio::test]
async fn brand_preference() {
    let (gw, key) = setup().await;
    let p = plan(
        &gw,
        &key,
        body("lumen/fast", EASY, json!({"brand_pref": "openai"})),
    )
    .await;
    assert_eq!(winner(&p), MINI);
    assert!(p["route"]["reason"]
        .as_str()
        .unwrap()
        .contains("brand openai"));
    let p = plan(
        &gw,
        &key,
        body(
            "lumen/fast",
            EASY,
            json!({"brand_pref": ["meta", "openai"]}),
        ),
    )
    .await;
    assert_eq!(winner(&p), CHEAP);
    let r = gw
        .chat(
            &key,
            body("lumen/fast", EASY, json!({"brand_pref": ["openai"]})),
        )
        .await;
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    let e = gw
        .chat(&key, body("auto", EASY, json!({"brand_pref": 5})))
        .await
        .error(400);
    assert_eq!(e["param"], "brand_pref");
}

#[tokio::test]
async fn route_endpoint_plans_without_calling_a_model() {
    let (gw, key) = setup().await;
    let p = plan(&gw, &key, body("auto", HARD_MATH, json!({}))).await;
    assert_eq!(winner(&p), STRONG);
    assert_eq!(p["route"]["tier"], "lumen/auto");
    assert!(p["route"]["score_us"].as_f64().unwrap() >= 0.0);
    assert!(!p["route"]["candidates"].as_array().unwrap().is_empty());

    let mut reqs: Vec<Value> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                chat_body("auto", EASY)
            } else {
                chat_body("auto", HARD_MATH)
            }
        })
        .collect();
    reqs.push(json!({"messages": []}));
    reqs.push(chat_body("gpt-4o-mini", "pinned"));
    let r = gw
        .call(
            "POST",
            "/v1/route",
            Some(&key),
            Some(json!({"requests": reqs}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 202);
    for (i, d) in data[..200].iter().enumerate() {
        assert_eq!(winner(d), if i % 2 == 0 { CHEAP } else { STRONG }, "{i}");
        assert!(d["route"].get("candidates").is_none(), "explain is off");
    }
    assert_eq!(data[200]["error"]["param"], "requests[200].model");
    assert_eq!(winner(&data[201]), MINI);
    assert_eq!(gw.mock.request_count(), 0, "no model was called");

    gw.call("POST", "/v1/route", Some("lm_wrong"), Some(b"{}".to_vec()))
        .await
        .error(401);
    let e = gw
        .call(
            "POST",
            "/v1/route",
            Some(&key),
            Some(br#"{"requests":5}"#.to_vec()),
        )
        .await
        .error(400);
    assert_eq!(e["param"], "requests");
    gw.call("GET", "/v1/route", Some(&key), None)
        .await
        .error(405);
}

#[tokio::test]
async fn cascade_escalates_on_refusal() {
    let (gw, key) = setup().await;
    let text = format!("{EASY} [mock content=Sorry if_model={CHEAP_UPSTREAM}]");
    let r = gw
        .chat(
            &key,
            body("lumen/fast", &text, json!({"lumen": {"cascade": true}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_ne!(r.header("x-lumen-model"), Some(CHEAP));
    let h = r.header("x-lumen-route").unwrap();
    assert!(h.contains("escalated=") && h.contains("refused"), "{h}");
    let seen = gw.mock.requests();
    assert_eq!(seen.len(), 2);
    let first = seen[0].body.clone().unwrap();
    let second = seen[1].body.clone().unwrap();
    assert_eq!(first["model"], CHEAP_UPSTREAM);
    assert!(first.get("lumen").is_none() && second.get("lumen").is_none());
    assert!(!r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Sorry"));

    // Without the cascade the refusal is the answer.
    let r = gw.chat(&key, body("lumen/fast", &text, json!({}))).await;
    assert_eq!(r.header("x-lumen-model"), Some(CHEAP));
}

#[tokio::test]
async fn cascade_escalates_on_invalid_json_and_not_when_the_check_passes() {
    let (gw, key) = setup().await;
    let json_mode = json!({"lumen": {"cascade": true}, "response_format": {"type": "json_object"}});
    // The cheap model answers "tok0 tok1 …" (not JSON); gpt-4o-mini answers "{}".
    let text = format!("{EASY} [mock content={{}} tokens=1 if_model={MINI}]");
    let r = gw
        .chat(&key, body("lumen/fast", &text, json_mode.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    assert!(r.header("x-lumen-route").unwrap().contains("invalid JSON"));
    assert_eq!(gw.mock.request_count(), 2);

    // A passing check: one call, the cheap model answers.
    gw.mock.clear_requests();
    let ok = format!("{EASY} [mock content={{}} tokens=1]");
    let r = gw.chat(&key, body("lumen/fast", &ok, json_mode)).await;
    assert_eq!(r.header("x-lumen-model"), Some(CHEAP));
    assert!(!r.header("x-lumen-route").unwrap().contains("escalated"));
    assert_eq!(gw.mock.request_count(), 1);
}

#[tokio::test]
async fn streamed_cascade_checks_before_the_first_byte() {
    let (gw, key) = setup().await;
    let text = format!("{EASY} [mock content=Sorry if_model={CHEAP_UPSTREAM}]");
    let mut b = body(
        "lumen/fast",
        &text,
        json!({"lumen": {"cascade": true}, "stream": true,
                                                 "stream_options": {"include_usage": true}}),
    );
    let s = stream(gw.addr(), "/v1/chat/completions", &key, b.clone(), None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers.get("x-lumen-model").unwrap(), MINI);
    let route = s.headers.get("x-lumen-route").unwrap().to_str().unwrap();
    assert!(
        route.contains("escalated=") && route.contains("refused"),
        "{route}"
    );
    let data = s.data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text_out: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        text_out.starts_with("tok0 ") && !text_out.contains("Sorry"),
        "{text_out}"
    );
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let seen = gw.mock.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|r| r.body.as_ref().unwrap().get("stream").is_none()),
        "checked attempts are asked whole"
    );

    // Without the cascade the same stream is the cheap model's, live.
    b.as_object_mut().unwrap().remove("lumen");
    let s = stream(gw.addr(), "/v1/chat/completions", &key, b, None).await;
    assert_eq!(s.headers.get("x-lumen-model").unwrap(), CHEAP);
    assert!(s.text().contains("Sorry"));
}

#[tokio::test]
async fn weighted_split_is_sticky_per_user_and_per_long_system_prompt() {
    let (gw, key) = setup().await;
    let models = gw.call("GET", "/v1/models", Some(&key), None).await.json();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "lumen/ab-small" && m["split"].as_array().unwrap().len() == 2));
    let mut arms = std::collections::BTreeSet::new();
    for u in 0..20 {
        let b = body("lumen/ab-small", EASY, json!({"user": format!("user-{u}")}));
        let first = plan(&gw, &key, b.clone()).await;
        let again = plan(&gw, &key, b).await;
        assert_eq!(winner(&first), winner(&again), "sticky per user");
        assert!(first["reason"].as_str().unwrap().contains("chosen by user"));
        arms.insert(winner(&first).to_string());
    }
    assert_eq!(arms.len(), 2, "both arms get traffic: {arms:?}");
    // Through chat, the served model is the plan's.
    let b = body("lumen/ab-small", EASY, json!({"user": "user-3"}));
    let expected = winner(&plan(&gw, &key, b.clone()).await).to_string();
    let r = gw.chat(&key, b).await;
    assert_eq!(r.header("x-lumen-model"), Some(expected.as_str()));
    // Requests sharing a long system prompt go to the same arm.
    let sys = "You are the support assistant of ACME. Follow the policy. ".repeat(30);
    let mut seen = std::collections::BTreeSet::new();
    for q in ["one", "two", "three", "four"] {
        let b = json!({"model": "lumen/ab-small", "messages": [
            {"role": "system", "content": sys}, {"role": "user", "content": q}]});
        let p = plan(&gw, &key, b).await;
        assert!(p["reason"].as_str().unwrap().contains("system prompt"));
        seen.insert(winner(&p).to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

/// A pin to a provider's non-primary offer (`azure:gpt-4o-mini`) serves from that offer (it was a
/// 404), and `provider.only` / `order` / `ignore` hold for named models, fallbacks included.
#[tokio::test]
async fn named_models_honour_offer_pins_and_provider_preferences() {
    let (gw, key) = setup().await;
    let azure = |gw: &Gateway| {
        gw.mock
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/openai/deployments/"))
            .count()
    };
    let r = gw
        .chat(
            &key,
            body("azure:gpt-4o-mini", "hi [mock tokens=2]", json!({})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-provider"), Some("azure"));
    assert_eq!((gw.mock.request_count(), azure(&gw)), (1, 1));
    // The pin holds when the pinned offer fails: no other provider of the model.
    gw.mock.clear_requests();
    let r = gw
        .chat(
            &key,
            body(
                "azure:gpt-4o-mini",
                "[mock status=503 only=azure]",
                json!({"lumen": {"retries": 0}}),
            ),
        )
        .await;
    r.error(502);
    assert_eq!((gw.mock.request_count(), azure(&gw)), (1, 1));
    let e = gw
        .chat(&key, body("together:gpt-4o", EASY, json!({})))
        .await
        .error(404);
    assert!(
        e["message"].as_str().unwrap().contains("offered by openai"),
        "{e}"
    );

    for (prefs, want) in [
        (json!({"only": ["azure"]}), "azure"),
        (json!({"order": ["azure", "openai"]}), "azure"),
        (json!({"ignore": ["openai"]}), "azure"),
        (json!({}), "openai"),
    ] {
        gw.mock.clear_requests();
        let r = gw
            .chat(
                &key,
                body(
                    MINI,
                    "hi [mock tokens=2]",
                    json!({"provider": prefs.clone()}),
                ),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-lumen-provider"), Some(want), "{prefs}");
        let up = gw.mock.last_request().unwrap().body.unwrap();
        assert!(
            up.get("provider").is_none(),
            "routing fields stay home: {up}"
        );
    }
    // `only` also bounds the fallbacks: OpenAI fails, Azure is not allowed, nothing else is.
    gw.mock.clear_requests();
    let r = gw
        .chat(
            &key,
            body(
                MINI,
                "[mock status=503 only=openai]",
                json!({"provider": {"only": ["openai"]}, "lumen": {"retries": 0}}),
            ),
        )
        .await;
    r.error(502);
    assert_eq!((gw.mock.request_count(), azure(&gw)), (1, 0));
    let p = plan(
        &gw,
        &key,
        body(MINI, EASY, json!({"provider": {"order": ["azure"]}})),
    )
    .await;
    assert_eq!(p["candidates"][0]["provider"]["name"], "azure");
    let e = gw
        .chat(
            &key,
            body(MINI, EASY, json!({"provider": {"only": ["gemini"]}})),
        )
        .await
        .error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("provider"), Some("no_eligible_model"))
    );
}

/// A cascade escalation is not a failure of the provider that answered: six escalations leave
/// the cheap model's breaker closed with no failure counted (five used to open it).
#[tokio::test]
async fn cascade_escalations_never_open_a_healthy_breaker() {
    let (gw, key) = setup().await;
    let text = format!("{EASY} [mock content=Sorry if_model={CHEAP_UPSTREAM}]");
    for _ in 0..6 {
        let r = gw
            .chat(
                &key,
                body("lumen/fast", &text, json!({"lumen": {"cascade": true}})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_ne!(r.header("x-lumen-model"), Some(CHEAP));
        let route = r.header("x-lumen-route").unwrap();
        assert!(route.contains(&format!("planned={CHEAP}")), "{route}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = gw
        .call("GET", "/admin/health", Some(ADMIN), None)
        .await
        .json();
    let cheap = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["model"] == CHEAP)
        .cloned();
    if let Some(c) = cheap {
        assert_eq!(c["breaker"], "closed", "{c}");
        assert_eq!(c["window_failures"], 0, "{c}");
        assert_eq!(c["availability"]["state"], "up", "{c}");
    }
    // Still planned first.
    let r = gw.chat(&key, body("lumen/fast", EASY, json!({}))).await;
    assert_eq!(r.header("x-lumen-model"), Some(CHEAP));
}

/// The router takes a mounted catalog with the built file's size and modification time for the
/// built one without reading it. A catalog edited in place to the same size (an alias renamed
/// letter for letter) has another modification time: it is read, and the edit holds.
#[tokio::test]
async fn a_catalog_edited_to_the_same_size_is_read() {
    let cfg = Config::new("", "");
    let shipped = std::fs::read(repo().join("config/catalog.toml")).unwrap();
    std::fs::write(cfg.dir.join("config/catalog.toml"), &shipped).unwrap();
    cfg.replace(
        "catalog.toml",
        "\"openai/gpt-4o-mini\"",
        "\"openai/gpt-4o-mino\"",
    );
    let edited = std::fs::metadata(cfg.dir.join("config/catalog.toml")).unwrap();
    assert_eq!(edited.len(), shipped.len() as u64);
    let gw = Gateway::start_config(&cfg, |_| {}).await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    let r = gw
        .chat(&key, body("openai/gpt-4o-mino", EASY, json!({})))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some(MINI));
    let r = gw
        .chat(&key, body("openai/gpt-4o-mini", EASY, json!({})))
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
}

/// The store key a router records a mounted catalog under (`CatalogMount`): its size and
/// modification time (as lumen-host, which mounts `config/` in place, shows it to the guest).
fn mount_marker(path: &std::path::Path) -> String {
    let m = std::fs::metadata(path).unwrap();
    let t = m
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "v2/catalog/mount/{}/{}.{:09}",
        m.len(),
        t.as_secs(),
        t.subsec_nanos()
    )
}

/// A copy of the built catalog (Spin mounts copies: new modification times) is read once: the
/// router that reads it records, under the copy's size and time, the sha256 of the source it
/// holds, and routers after it find that in the health batch: one record per copy (spin-redis
/// runs two processes, each with its own). A record that names another source (a router built
/// from another catalog) is not trusted: the file is read again and the record corrected.
#[tokio::test]
async fn a_copy_of_the_built_catalog_is_read_once_and_recorded() {
    use sha2::Digest;
    let cfg = Config::new("", "");
    let shipped = std::fs::read(repo().join("config/catalog.toml")).unwrap();
    let copy = cfg.dir.join("config/catalog.toml");
    std::fs::write(&copy, &shipped).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&shipped));
    let gw = Gateway::start_config(&cfg, |_| {}).await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    // Spin mounts a copy of the copy: which stamp the guest sees is Spin's; find it by prefix.
    let recorded = |gw: &Gateway| -> Vec<(String, String)> {
        gw.store_keys("v2/catalog/mount/")
            .into_iter()
            .map(|k| {
                let v = gw.store_get(&k).unwrap();
                (k, serde_json::from_slice::<String>(&v).unwrap())
            })
            .collect()
    };
    assert!(recorded(&gw).is_empty(), "{:?}", recorded(&gw));
    // Two chats: under spin-redis each of the two processes (each with its own copy) serves one.
    for _ in 0..2 {
        let r = gw.chat(&key, body(MINI, EASY, json!({}))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let after = recorded(&gw);
    assert!(
        (1..=2).contains(&after.len()),
        "one record per copy: {after:?}"
    );
    assert!(after.iter().all(|(_, v)| *v == sha), "{after:?}");
    if gw.host().is_some() {
        assert_eq!(
            after,
            [(mount_marker(&copy), sha.clone())],
            "lumen-host mounts config/ in place"
        );
    }
    // Records naming another source: read again, corrected, and the catalog still holds.
    for (k, _) in &after {
        gw.store_set(k, b"\"0000\"");
    }
    for _ in 0..2 {
        let r = gw.chat(&key, body(MINI, EASY, json!({}))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-lumen-model"), Some(MINI));
    }
    assert_eq!(recorded(&gw), after);
    // A model the built catalog lacks is a 404 on the copy too.
    let r = gw
        .chat(&key, body("openai/gpt-4o-mino", EASY, json!({})))
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
}
