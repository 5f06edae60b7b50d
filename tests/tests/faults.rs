//! Fault injection end to end: for each upstream fault (the mock's `[mock ...]` fault
//! directives, scoped to one upstream with `only=`), what the client receives, how many upstream
//! calls were made, and what was metered. `gpt-4o-mini` is planned as OpenAI first, then the same
//! model on Azure (its own price), both served by the mock on different routes.

mod common;

use common::*;
use lumen_tests::mock;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const OPENAI_IN: f64 = 0.15;
const OPENAI_OUT: f64 = 0.60;
const AZURE_IN: f64 = 0.165;
const AZURE_OUT: f64 = 0.66;

/// Upstream calls on (OpenAI, Azure).
fn calls(gw: &Gateway) -> (usize, usize) {
    let reqs = gw.mock.requests();
    let on = |prefix: &str| reqs.iter().filter(|r| r.path.starts_with(prefix)).count();
    (on("/v1/chat/completions"), on("/openai/deployments/"))
}

fn stream_body(text: &str, include_usage: bool, lumen: Value) -> Value {
    let mut b = json!({"model": "gpt-4o-mini", "stream": true,
                       "messages": [{"role": "user", "content": text}]});
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    if !lumen.is_null() {
        b["lumen"] = lumen;
    }
    b
}

/// The chunks of a stream (everything but `[DONE]`), the text, and whether `[DONE]` came.
fn parse(s: &Streamed) -> (Vec<Value>, String, bool) {
    let data = s.data();
    let done = data.last().map(String::as_str) == Some("[DONE]");
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (chunks, text, done)
}

fn tokens(n: u64) -> String {
    (0..n).map(|i| mock::token_text(i, None)).collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

fn outcomes(lumen: &Value) -> Vec<String> {
    lumen["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no lumen.attempts in {lumen}"))
        .iter()
        .map(|a| {
            format!(
                "{}={}",
                a["provider"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

fn usd(prompt: u64, completion: u64, input: f64, output: f64) -> f64 {
    (prompt as f64 * input + completion as f64 * output) / 1e6
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

async fn metered(gw: &Gateway, key: &str, requests: u64) -> Value {
    let u = gw
        .usage_until(key, |u| u["total"]["requests"] == requests)
        .await;
    assert_eq!(u["total"]["requests"], requests, "{u}");
    u["total"].clone()
}

#[tokio::test]
async fn a_stream_cut_at_token_40_of_80_arrives_whole_with_usage_for_both_legs() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let text = "[mock tokens=80 die_after=40 only=openai]";
    let body = stream_body(text, true, Value::Null);
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body.clone(), None).await;
    assert_eq!(s.status, 200);
    let (chunks, got, done) = parse(&s);
    assert_eq!(
        got,
        tokens(80),
        "one answer of 80 tokens, prefix not repeated"
    );
    assert!(done, "ends with [DONE]");
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    assert_eq!(calls(&gw), (1, 1), "OpenAI cut, Azure continued");
    let ids: std::collections::BTreeSet<&str> =
        chunks.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one coherent stream: {ids:?}");

    // One final usage block covering both legs: 40 (cut leg, counted) + 80 (fallback).
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 120);
    let lumen = &last["lumen"];
    assert_eq!(outcomes(lumen), ["openai=connection_lost", "azure=ok"]);
    let prompt = last["usage"]["prompt_tokens"].as_u64().unwrap();
    let p2 = mock::prompt_tokens(&body);
    let p1 = prompt - p2;
    let expected = usd(p1, 40, OPENAI_IN, OPENAI_OUT) + usd(p2, 80, AZURE_IN, AZURE_OUT);
    assert!(close(lumen["cost"].as_f64().unwrap(), expected), "{lumen}");

    // Metered once, as a success, each leg at its own price.
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 0, "{t}");
    assert_eq!(t["completion_tokens"], 120, "{t}");
    assert!(close(t["cost_usd"].as_f64().unwrap(), expected), "{t}");
}

#[tokio::test]
async fn mid_stream_faults_continue_on_the_fallback() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let quick = json!({"deadlines": {"stall_ms": 400}});
    let cases = [
        (
            "stall",
            "[mock tokens=20 stall_after=5 stall_ms=15000 only=openai]",
            "openai=deadline",
        ),
        (
            "malformed chunk",
            "[mock tokens=20 malformed_after=5 only=openai]",
            "openai=malformed_chunk",
        ),
        (
            "no [DONE]",
            "[mock tokens=20 eof_after=5 only=openai]",
            "openai=no_terminal_event",
        ),
        (
            "reset mid-stream",
            "[mock tokens=20 die_after=5 only=openai]",
            "openai=connection_lost",
        ),
    ];
    for (i, (what, text, first)) in cases.into_iter().enumerate() {
        gw.mock.clear_requests();
        let started = Instant::now();
        let s = stream(
            gw.addr(),
            "/v1/chat/completions",
            &key,
            stream_body(text, false, quick.clone()),
            None,
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: no hang"
        );
        let (chunks, got, done) = parse(&s);
        assert_eq!(got, tokens(20), "{what}");
        assert!(done, "{what}");
        assert_eq!(finish_reasons(&chunks), ["stop"], "{what}");
        assert_eq!(calls(&gw), (1, 1), "{what}");
        let lumen = &chunks.last().unwrap()["lumen"];
        assert_eq!(outcomes(lumen), [first, "azure=ok"], "{what}");
        let t = metered(&gw, &key, i as u64 + 1).await;
        assert_eq!(t["errors"], 0, "{what}: {t}");
    }
}

#[tokio::test]
async fn a_cut_with_no_healthy_fallback_ends_with_an_error_finish_never_a_normal_one() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    // Both upstreams cut at token 4.
    let s = stream(
        gw.addr(),
        "/v1/chat/completions",
        &key,
        stream_body("[mock tokens=10 die_after=4]", false, Value::Null),
        None,
    )
    .await;
    let data = s.data();
    assert_ne!(data.last().map(String::as_str), Some("[DONE]"));
    let (chunks, got, _) = parse(&s);
    assert_eq!(
        got,
        tokens(4),
        "the fallback's repeat of the prefix is suppressed"
    );
    assert_eq!(finish_reasons(&chunks), ["error"], "never a normal finish");
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_failed", "{last}");
    assert_eq!(calls(&gw), (1, 1));
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 1, "{t}");

    // With fallbacks switched off for the request, the cut is not continued at all.
    gw.mock.clear_requests();
    let s = stream(
        gw.addr(),
        "/v1/chat/completions",
        &key,
        stream_body(
            "[mock tokens=10 die_after=4 only=openai]",
            false,
            json!({"fallbacks": false}),
        ),
        None,
    )
    .await;
    let (chunks, got, done) = parse(&s);
    assert!(!done);
    assert_eq!(got, tokens(4));
    assert_eq!(finish_reasons(&chunks), ["error"]);
    assert_eq!(calls(&gw), (1, 0));
    let t = metered(&gw, &key, 2).await;
    assert_eq!(t["errors"], 2, "{t}");
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_retried_after_it() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let started = Instant::now();
    let r = gw
        .chat(
            &key,
            chat_body(
                "gpt-4o-mini",
                "[mock status=429 retry_after=1 times=1 id=r1 only=openai]",
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited Retry-After"
    );
    assert_eq!(r.header("x-lumen-provider"), Some("openai"));
    assert_eq!(calls(&gw), (2, 0));
    assert_eq!(
        r.header("x-lumen-fallbacks"),
        Some("openai/gpt-4o-mini=rate_limited, openai/gpt-4o-mini=ok")
    );
    assert_eq!(
        outcomes(&r.json()["lumen"]),
        ["openai=rate_limited", "openai=ok"]
    );
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 0, "{t}");
}

#[tokio::test]
async fn a_persistent_429_with_a_long_retry_after_moves_to_the_next_provider_at_its_price() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let body = chat_body(
        "gpt-4o-mini",
        "[mock status=429 retry_after=30 only=openai tokens=6]",
    );
    let started = Instant::now();
    let r = gw.chat(&key, body.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait 30 s"
    );
    assert_eq!(r.header("x-lumen-provider"), Some("azure"));
    assert_eq!(calls(&gw), (1, 1), "not retried on OpenAI");
    let v = r.json();
    assert_eq!(outcomes(&v["lumen"]), ["openai=rate_limited", "azure=ok"]);
    let expected = usd(mock::prompt_tokens(&body), 6, AZURE_IN, AZURE_OUT);
    let t = metered(&gw, &key, 1).await;
    assert!(
        close(t["cost_usd"].as_f64().unwrap(), expected),
        "metered at Azure's price: {t}"
    );
}

#[tokio::test]
async fn persistent_503_everywhere_is_one_bounded_502() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "[mock status=503]"))
        .await;
    let e = r.error(502);
    assert!(e["message"].as_str().unwrap().contains("503"), "{e}");
    assert_eq!(calls(&gw), (2, 2), "one retry per provider, then the next");
    assert_eq!(
        r.header("x-lumen-fallbacks"),
        Some("openai/gpt-4o-mini=error_502, openai/gpt-4o-mini=error_502, azure/gpt-4o-mini=error_502, azure/gpt-4o-mini=error_502")
    );
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 1, "{t}");
    assert_eq!(t["completion_tokens"], 0, "{t}");
}

#[tokio::test]
async fn a_500_once_then_success_is_retried_on_the_same_provider() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw
        .chat(
            &key,
            chat_body("gpt-4o-mini", "[mock status=500 times=1 id=once tokens=3]"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-provider"), Some("openai"));
    assert_eq!(calls(&gw), (2, 0));
    assert_eq!(r.json()["choices"][0]["message"]["content"], tokens(3));
    let t = metered(&gw, &key, 1).await;
    assert_eq!(
        (t["errors"].clone(), t["completion_tokens"].clone()),
        (json!(0), json!(3))
    );
}

#[tokio::test]
async fn a_connection_reset_falls_back_after_a_retry() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for stream_it in [false, true] {
        gw.mock.clear_requests();
        let mut body = chat_body("gpt-4o-mini", "[mock reset=1 only=openai tokens=3]");
        body["stream"] = json!(stream_it);
        let r = gw.chat(&key, body).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-lumen-provider"), Some("azure"));
        assert_eq!(calls(&gw), (2, 1), "stream={stream_it}");
    }
    let t = metered(&gw, &key, 2).await;
    assert_eq!(t["errors"], 0, "{t}");
}

#[tokio::test]
async fn no_response_at_all_breaches_the_first_token_deadline_and_falls_back() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let lumen = json!({"retries": 0, "deadlines": {"first_token_ms": 500}});
    // Non-stream and stream: OpenAI never answers (the mock holds the request for 20 s). A whole
    // answer's first byte is its last: its wait is the first-token deadline plus 50 ms per
    // output token it may produce (3 here).
    let mut body = chat_body("gpt-4o-mini", "[mock ttft_ms=20000 only=openai tokens=3]");
    body["lumen"] = lumen.clone();
    body["max_tokens"] = json!(3);
    let started = Instant::now();
    let r = gw.chat(&key, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        outcomes(&r.json()["lumen"]),
        ["openai=deadline", "azure=ok"]
    );

    let started = Instant::now();
    let s = stream(
        gw.addr(),
        "/v1/chat/completions",
        &key,
        stream_body(
            "[mock ttft_ms=20000 only=openai tokens=3]",
            false,
            lumen.clone(),
        ),
        None,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.headers.get("x-lumen-provider").unwrap(), "azure");
    assert_eq!(
        s.headers.get("x-lumen-fallbacks").unwrap(),
        "openai/gpt-4o-mini=deadline, azure/gpt-4o-mini=ok"
    );
    let (_, got, done) = parse(&s);
    assert_eq!((got, done), (tokens(3), true));
    assert_eq!(calls(&gw), (2, 2));

    // With nowhere to fall back, the deadline is a 504 at once, never a hang.
    let mut body = chat_body("gpt-4o-mini", "[mock ttft_ms=20000 tokens=3]");
    body["lumen"] = json!({"retries": 0, "fallbacks": false, "deadlines": {"first_token_ms": 300}});
    body["max_tokens"] = json!(3);
    let started = Instant::now();
    let r = gw.chat(&key, body).await;
    let e = r.error(504);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("first-token deadline"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let t = metered(&gw, &key, 3).await;
    assert_eq!(t["errors"], 1, "{t}");
}

#[tokio::test]
async fn a_slow_first_token_within_the_deadline_is_served_by_the_first_provider() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let s = stream(
        gw.addr(),
        "/v1/chat/completions",
        &key,
        stream_body(
            "[mock ttft_ms=700 tokens=4]",
            false,
            json!({"deadlines": {"first_token_ms": 3000}}),
        ),
        None,
    )
    .await;
    assert_eq!(s.headers.get("x-lumen-provider").unwrap(), "openai");
    assert!(s.headers.get("x-lumen-fallbacks").is_none());
    let (_, got, done) = parse(&s);
    assert_eq!((got, done), (tokens(4), true));
    assert_eq!(calls(&gw), (1, 0));
    let t = metered(&gw, &key, 1).await;
    assert_eq!(
        (t["errors"].clone(), t["completion_tokens"].clone()),
        (json!(0), json!(4))
    );
}

#[tokio::test]
async fn a_content_filter_400_is_not_retried_anywhere() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw
        .chat(
            &key,
            chat_body("gpt-4o-mini", "[mock status=400 code=content_filter]"),
        )
        .await;
    let e = r.error(400);
    assert_eq!(e["code"], "content_filter");
    assert_eq!(
        calls(&gw),
        (1, 0),
        "a 4xx that would fail anywhere is not retried"
    );
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 1, "{t}");
}

#[tokio::test]
async fn a_context_length_400_is_only_retried_on_a_larger_window() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    // Azure serves the same 128k-window model: no larger window in the plan, so no retry.
    let r = gw
        .chat(
            &key,
            chat_body(
                "gpt-4o-mini",
                "[mock status=400 code=context_length_exceeded]",
            ),
        )
        .await;
    let e = r.error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(calls(&gw), (1, 0));
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 1, "{t}");
}

#[tokio::test]
async fn a_flapping_provider_never_fails_a_request() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for i in 0..6 {
        let mut body = chat_body(
            "gpt-4o-mini",
            "[mock status=503 flap=1 id=flap only=openai tokens=2]",
        );
        body["stream"] = json!(i % 2 == 1);
        let r = gw.chat(&key, body).await;
        assert_eq!(
            r.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-lumen-provider"), Some("openai"));
    }
    // Every request: a 503, then its retry succeeds (the flap alternates).
    assert_eq!(calls(&gw), (12, 0));
    let t = metered(&gw, &key, 6).await;
    assert_eq!(t["errors"], 0, "{t}");
}

#[tokio::test]
async fn a_provider_hard_down_opens_its_circuit_and_is_no_longer_tried_first() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let body = chat_body("gpt-4o-mini", "[mock reset=1 only=openai tokens=2]");
    // Each request: OpenAI resets twice (a try and a retry), then Azure answers. Five
    // consecutive failures open OpenAI's circuit (health is written after each response).
    for _ in 0..3 {
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-lumen-provider"), Some("azure"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls(&gw), (6, 3));
    for _ in 0..10 {
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-lumen-provider"), Some("azure"));
        assert!(r.header("x-lumen-fallbacks").is_none(), "Azure was first");
    }
    assert_eq!(
        calls(&gw),
        (6, 13),
        "the open circuit keeps OpenAI off the first attempt"
    );

    // The health records, admin only.
    let r = gw.call("GET", "/admin/health", Some(&key), None).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let r = gw.call("GET", "/admin/health", Some(ADMIN), None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let find = |p: &str| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["provider"] == p && h["model"] == "gpt-4o-mini")
            .unwrap_or_else(|| panic!("no {p} record in {v}"))
            .clone()
    };
    let openai = find("openai");
    assert_eq!(openai["availability"]["state"], "down", "{openai}");
    assert_eq!(openai["breaker"], "open", "{openai}");
    assert!(
        openai["record"]["open_since_ms"].as_u64().is_some(),
        "{openai}"
    );
    assert_eq!(openai["window_failures"], 6, "{openai}");
    let azure = find("azure");
    assert_eq!(azure["availability"]["state"], "up", "{azure}");
    assert_eq!(azure["breaker"], "closed", "{azure}");
    // Successes are counted only while failures are in the window: none for Azure.
    assert_eq!(azure["window_failures"], 0, "{azure}");
    assert!(
        azure["record"]["ttft_ms"].as_f64().unwrap() > 0.0,
        "{azure}"
    );
}

fn on(gw: &Gateway, prefix: &str) -> usize {
    gw.mock
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn a_context_length_400_falls_back_to_a_model_with_a_larger_window() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    // gpt-4o (128k, OpenAI only) with the request's own fallbacks: gpt-4o-mini has the same
    // window and is skipped; claude-3-5-haiku (200k) serves.
    let mut body = chat_body(
        "gpt-4o",
        "[mock status=400 code=context_length_exceeded only=gpt-4o tokens=3]",
    );
    body["models"] = json!(["gpt-4o-mini", "claude-3-5-haiku"]);
    let r = gw.chat(&key, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some("claude-3-5-haiku"));
    assert_eq!(r.header("x-lumen-provider"), Some("anthropic"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], tokens(3));
    assert_eq!(
        calls(&gw),
        (1, 0),
        "gpt-4o once, gpt-4o-mini (same window) never"
    );
    assert_eq!(on(&gw, "/v1/messages"), 1);
    let up = gw.mock.requests()[0].body.clone().unwrap();
    assert!(
        up.get("models").is_none(),
        "Lumen's own field stays home: {up}"
    );
    assert_eq!(
        outcomes(&r.json()["lumen"]),
        ["openai=context_length_exceeded", "anthropic=ok"]
    );
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 0, "{t}");

    // A bad fallback list is a 400 naming it; an unknown model in it a 404 naming its index.
    let mut body = chat_body("gpt-4o", "hi");
    body["models"] = json!("claude-3-5-haiku");
    assert_eq!(gw.chat(&key, body).await.error(400)["param"], "models");
    let mut body = chat_body("gpt-4o", "hi");
    body["models"] = json!(["claude-3-5-haiku", "gpt-9"]);
    assert_eq!(gw.chat(&key, body).await.error(404)["param"], "models[1]");
}

#[tokio::test]
async fn a_cut_continues_on_an_anthropic_fallback_by_prefill_or_regenerates_when_it_is_rejected() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for reject in [false, true] {
        gw.mock.clear_requests();
        let text = format!(
            "[mock tokens=12 die_after=5 only=gpt-4o{}]",
            if reject { " reject_prefill=1" } else { "" }
        );
        let mut body = stream_body(&text, true, Value::Null);
        body["model"] = json!("gpt-4o");
        body["models"] = json!(["claude-3-5-haiku"]);
        let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
        let (chunks, got, done) = parse(&s);
        assert_eq!(got, tokens(12), "reject={reject}: whole, prefix once");
        assert!(done);
        assert_eq!(finish_reasons(&chunks), ["stop"]);
        let last = chunks.last().unwrap();
        let o = outcomes(&last["lumen"]);
        let msgs: Vec<Value> = gw
            .mock
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/messages")
            .map(|r| r.body.clone().unwrap())
            .collect();
        // The first Anthropic request continues the text sent so far as an assistant prefill.
        let prefill = msgs[0]["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(prefill["role"], "assistant", "{prefill}");
        assert_eq!(
            lumen_tests::mock::message_text(&prefill["content"]),
            tokens(5)
        );
        if reject {
            assert_eq!(msgs.len(), 2, "prefill rejected, then regenerated there");
            let retry = msgs[1]["messages"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .clone();
            assert_eq!(retry["role"], "user", "{retry}");
            assert_eq!(o.len(), 3, "{o:?}");
            assert!(o[1].starts_with("anthropic="), "{o:?}");
            // Legs: 5 (cut) + 12 (regenerated in full).
            assert_eq!(last["usage"]["completion_tokens"], 17);
        } else {
            assert_eq!(msgs.len(), 1);
            assert_eq!(o, ["openai=connection_lost", "anthropic=ok"]);
            // Legs: 5 (cut) + 7 (the continuation only).
            assert_eq!(last["usage"]["completion_tokens"], 12);
        }
    }
    let t = metered(&gw, &key, 2).await;
    assert_eq!(t["errors"], 0, "{t}");
    assert_eq!(t["completion_tokens"], 12 + 17, "{t}");
}

#[tokio::test]
async fn a_cut_inside_a_tool_call_restarts_the_turn_and_sends_only_complete_calls() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    // OpenAI streams the call's name and both argument pieces, then drops the connection.
    let s = stream(
        gw.addr(),
        "/v1/chat/completions",
        &key,
        stream_body(
            "[mock tool=get_weather die_after=0 only=openai]",
            false,
            Value::Null,
        ),
        None,
    )
    .await;
    let (chunks, _, done) = parse(&s);
    assert!(done);
    let calls_seen: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(
        calls_seen.len(),
        1,
        "one whole call, no partial deltas: {chunks:?}"
    );
    assert_eq!(calls_seen[0]["function"]["name"], "get_weather");
    assert_eq!(
        calls_seen[0]["function"]["arguments"],
        lumen_tests::mock::TOOL_ARGUMENTS
    );
    assert_eq!(finish_reasons(&chunks), ["tool_calls"]);
    assert_eq!(calls(&gw), (1, 1));
    let t = metered(&gw, &key, 1).await;
    assert_eq!(t["errors"], 0, "{t}");
}

/// The time from sending a stream request to its first content frame.
async fn to_first_content(gw: &Gateway, key: &str, body: Value) -> (Streamed, Duration) {
    let started = Instant::now();
    let s = stream(gw.addr(), "/v1/chat/completions", key, body, None).await;
    let first = s
        .frames
        .iter()
        .find(|(_, b)| String::from_utf8_lossy(b).contains("\"content\":\"tok"))
        .map(|(at, _)| at.duration_since(started))
        .unwrap_or_else(|| panic!("no content: {}", s.text()));
    (s, first)
}

/// A route that accepts the connection and never answers costs one first-token deadline, not
/// `retries` of them: by default a timeout is not retried on the same route (it took 2 × the
/// deadline, and 3 × 30 s with `retries: 2`), and the default deadline is 10 s.
#[tokio::test]
async fn a_silent_route_moves_to_the_fallback_within_the_first_token_deadline() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let text = "[mock ttft_ms=30000 only=openai tokens=3]";
    // A request deadline of 1 s.
    let lumen = json!({"deadlines": {"first_token_ms": 1000}});
    let (s, first) = to_first_content(&gw, &key, stream_body(text, false, lumen)).await;
    assert!(
        first >= Duration::from_millis(950) && first < Duration::from_millis(2500),
        "the fallback started at {first:?}"
    );
    assert_eq!(
        s.headers.get("x-lumen-fallbacks").unwrap(),
        "openai/gpt-4o-mini=deadline, azure/gpt-4o-mini=ok"
    );
    assert_eq!(calls(&gw), (1, 1), "the silent route is not retried");
    let (_, got, done) = parse(&s);
    assert_eq!((got, done), (tokens(3), true));

    // No deadline in the request or the catalog: the 10 s default.
    gw.mock.clear_requests();
    let (s, first) = to_first_content(&gw, &key, stream_body(text, false, Value::Null)).await;
    assert!(
        first >= Duration::from_millis(9_900) && first < Duration::from_millis(13_000),
        "the fallback started at {first:?}"
    );
    assert_eq!(s.headers.get("x-lumen-provider").unwrap(), "azure");
    assert_eq!(calls(&gw), (1, 1));
    let t = metered(&gw, &key, 2).await;
    assert_eq!(t["errors"], 0, "{t}");
}

/// Headers at once, then no first token: the first-token deadline counts from the request (not
/// from the headers), and `retries.first_token` can ask for one more try on the same route.
#[tokio::test]
async fn a_slow_first_token_after_quick_headers_moves_to_the_fallback_on_time() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    // Headers after 3 s, then silence: with a 3.5 s deadline the fallback starts at 3.5 s
    // (counted from the headers it started at 6.5 s).
    let text = "[mock ttft_ms=3000 stall_after=0 stall_ms=30000 only=openai tokens=3]";
    let lumen = json!({"deadlines": {"first_token_ms": 3500}});
    let (s, first) = to_first_content(&gw, &key, stream_body(text, true, lumen)).await;
    assert!(
        first >= Duration::from_millis(3_400) && first < Duration::from_millis(5_500),
        "the fallback started at {first:?}"
    );
    assert_eq!(calls(&gw), (1, 1));
    let (chunks, got, done) = parse(&s);
    assert_eq!((got, done), (tokens(3), true));
    assert_eq!(
        outcomes(&chunks.last().unwrap()["lumen"]),
        ["openai=deadline", "azure=ok"]
    );

    // One retry of a first-token timeout on the same route, asked for per class.
    gw.mock.clear_requests();
    let text = "[mock stall_after=0 stall_ms=30000 only=openai tokens=3]";
    let lumen = json!({"deadlines": {"first_token_ms": 500}, "retries": {"first_token": 1}});
    let (s, _) = to_first_content(&gw, &key, stream_body(text, true, lumen)).await;
    assert_eq!(calls(&gw), (2, 1), "openai twice, then azure");
    let (chunks, got, _) = parse(&s);
    assert_eq!(got, tokens(3));
    assert_eq!(
        outcomes(&chunks.last().unwrap()["lumen"]),
        ["openai=deadline", "openai=deadline", "azure=ok"]
    );
}

/// A stream with every token, its finish chunk and its usage chunk that ends without
/// `data: [DONE]` is complete: delivered once and billed once (it was bought again from the
/// fallback, 1.5 × the cost).
#[tokio::test]
async fn a_complete_stream_without_done_is_delivered_once_and_billed_once() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for (i, include_usage) in [true, false].into_iter().enumerate() {
        gw.mock.clear_requests();
        let body = stream_body(
            "[mock tokens=6 no_done=1 only=openai]",
            include_usage,
            Value::Null,
        );
        let s = stream(gw.addr(), "/v1/chat/completions", &key, body.clone(), None).await;
        assert_eq!(s.status, 200);
        assert!(
            s.headers.get("x-lumen-fallbacks").is_none(),
            "{:?}",
            s.headers
        );
        let (chunks, got, done) = parse(&s);
        assert_eq!(got, tokens(6), "once");
        assert!(done, "the client gets its [DONE]");
        assert_eq!(finish_reasons(&chunks), ["stop"]);
        assert_eq!(calls(&gw), (1, 0), "never bought again");
        let lumen = &chunks.last().unwrap()["lumen"];
        assert_eq!(outcomes(lumen), ["openai=ok"]);
        let expected = usd(mock::prompt_tokens(&body), 6, OPENAI_IN, OPENAI_OUT);
        assert!(close(lumen["cost"].as_f64().unwrap(), expected), "{lumen}");
        if include_usage {
            assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);
        }
        let t = metered(&gw, &key, i as u64 + 1).await;
        assert_eq!(t["errors"], 0, "{t}");
        assert_eq!(
            t["completion_tokens"],
            6 * (i as u64 + 1),
            "billed once: {t}"
        );
    }
}

/// `retries` per failure class: 5xx retries as asked; a route that cannot serve the request
/// (misconfigured, or a parameter its dialect cannot honour) is never retried, the next
/// candidate is tried at once.
#[tokio::test]
async fn retries_follow_the_failure_class() {
    let gw = Gateway::start_with(
        mock::MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..mock::MockConfig::default()
        },
        |o| {
            o.variables
                .insert("azure_base_url".into(), "not-a-url".into());
        },
    )
    .await;
    let (key, _) = gw.create_key(100, &[]).await;
    // Two retries of a 503 on OpenAI, then Azure is misconfigured: tried once, not retried.
    let mut body = chat_body("gpt-4o-mini", "[mock status=503 only=openai]");
    body["lumen"] = json!({"retries": {"5xx": 2}});
    let r = gw.chat(&key, body).await;
    assert!(r.error(500)["message"]
        .as_str()
        .unwrap()
        .contains("azure_base_url"));
    assert_eq!(calls(&gw), (3, 0));
    assert_eq!(
        r.header("x-lumen-fallbacks"),
        Some("openai/gpt-4o-mini=error_502, openai/gpt-4o-mini=error_502, openai/gpt-4o-mini=error_502, azure/gpt-4o-mini=error_500")
    );

    // A parameter the Anthropic dialect cannot honour: the next candidate (the request's own
    // fallback model) at once, and not a failure of the provider.
    gw.mock.clear_requests();
    let mut body = chat_body("claude-3-5-haiku", "hi [mock tokens=2]");
    body["logprobs"] = json!(true);
    body["models"] = json!(["gpt-4o"]);
    let r = gw.chat(&key, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some("gpt-4o"));
    assert_eq!(
        outcomes(&r.json()["lumen"]),
        ["anthropic=unsupported_parameter", "openai=ok"]
    );
    let h = gw
        .call("GET", "/admin/health", Some(ADMIN), None)
        .await
        .json();
    let haiku = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["model"] == "claude-3-5-haiku");
    assert!(
        haiku.is_none_or(|x| x["window_failures"] == 0),
        "not counted against anthropic: {haiku:?}"
    );
}

/// An answer served by the queue dialect after failed attempts says so like any other
/// (`x-lumen-fallbacks`, `lumen.attempts`), and `x-lumen-route` names the model that served.
#[tokio::test]
async fn a_queue_answer_after_failures_carries_its_attempts_and_the_served_route() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for stream_it in [false, true] {
        let mut body = chat_body("gpt-4o-mini", "[mock status=503 only=gpt-4o-mini tokens=3]");
        body["models"] = json!(["qwen2.5-7b-instruct"]);
        body["lumen"] = json!({"retries": 0});
        body["stream"] = json!(stream_it);
        let want = ["openai=error_502", "azure=error_502", "runpod=ok"];
        let header = "openai/gpt-4o-mini=error_502, azure/gpt-4o-mini=error_502, runpod/qwen2.5-7b-instruct=ok";
        if stream_it {
            let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
            assert_eq!(s.headers.get("x-lumen-fallbacks").unwrap(), header);
            let route = s.headers.get("x-lumen-route").unwrap().to_str().unwrap();
            assert!(
                route.starts_with("model=qwen2.5-7b-instruct; planned=gpt-4o-mini"),
                "{route}"
            );
            let (chunks, got, done) = parse(&s);
            assert_eq!((got.is_empty(), done), (false, true));
            assert_eq!(outcomes(&chunks.last().unwrap()["lumen"]), want);
        } else {
            let r = gw.chat(&key, body).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("x-lumen-fallbacks"), Some(header));
            let v = r.json();
            assert_eq!(outcomes(&v["lumen"]), want);
            assert_eq!(v["lumen"]["route"]["served"], "qwen2.5-7b-instruct");
            assert!(r
                .header("x-lumen-route")
                .unwrap()
                .starts_with("model=qwen2.5-7b-instruct; planned=gpt-4o-mini"));
        }
    }
}

/// `x-lumen-overhead-ms` is the gateway's own time: a retry's backoff (here a 1 s
/// `Retry-After`) and a queue's cold start are the upstream's.
#[tokio::test]
async fn overhead_excludes_retry_backoff_and_cold_starts() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let overhead = |r: &Resp| -> f64 { r.header("x-lumen-overhead-ms").unwrap().parse().unwrap() };
    let r = gw
        .chat(
            &key,
            chat_body(
                "gpt-4o-mini",
                "[mock status=429 retry_after=1 times=1 id=oh only=openai]",
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        overhead(&r) < 500.0,
        "{:?}",
        r.header("x-lumen-overhead-ms")
    );
    let r = gw
        .chat(
            &key,
            chat_body("qwen2.5-7b-instruct", "[mock cold_ms=1500 tokens=2]"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-lumen-cold-start-ms").is_some());
    assert!(
        overhead(&r) < 500.0,
        "{:?}",
        r.header("x-lumen-overhead-ms")
    );
}
