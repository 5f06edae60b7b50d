//! End-to-end: the compiled components in `spin.toml`, run by lumen-host or real Spin
//! (`LUMEN_TEST_RUNTIME`), in front of the mock upstream. Covers the request path (auth → limit → plan → call → meter), streaming, usage,
//! the admin API and bad input.

mod common;

use common::*;
use lumen_tests::mock;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn non_stream_completion_end_to_end() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let mut body = chat_body("gpt-4o-mini", "Say hi [mock tokens=5]");
    body["seed"] = json!(42);
    body["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    body["response_format"] = json!({"type": "json_object"});
    let r = gw.chat(&key, body.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.assert_lumen_headers();
    assert_eq!(r.header("x-lumen-model"), Some("gpt-4o-mini"));
    assert_eq!(r.header("x-lumen-provider"), Some("openai"));
    assert!(
        r.header("x-lumen-overhead-ms")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 0.0
    );
    assert!(r.header("content-length").is_some());
    assert!(
        r.headers.keys().all(|k| !k.as_str().starts_with("lumen-")),
        "internal headers leaked: {:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["prompt_tokens"], mock::prompt_tokens(&body));

    // The upstream got our key, the upstream model id, and every unknown field untouched.
    assert_eq!(gw.mock.request_count(), 1);
    let up = gw.mock.last_request().unwrap();
    assert_eq!(up.header("authorization"), Some("Bearer upstream-secret"));
    let ub = up.body.unwrap();
    assert_eq!(ub["model"], "gpt-4o-mini");
    for field in ["seed", "tools", "response_format", "messages"] {
        assert_eq!(
            ub[field], body[field],
            "{field} changed on the way upstream"
        );
    }
}

#[tokio::test]
async fn stream_relays_chunks_and_usage_only_when_asked() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;

    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "[mock tokens=4]"}]});
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body.clone(), None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(s.headers.get("x-lumen-model").unwrap(), "gpt-4o-mini");
    let data = s.data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 ");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["prompt_tokens"], mock::prompt_tokens(&body));

    // Without include_usage: no usage chunk and no usage fields, but the upstream was still asked.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[mock tokens=3]"}]});
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    let data = s.data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    for d in &data[..data.len() - 1] {
        let c: Value = serde_json::from_str(d).unwrap();
        assert!(
            c.get("usage").is_none_or(Value::is_null),
            "usage leaked: {c}"
        );
        assert_ne!(c["choices"], json!([]), "usage-only chunk leaked: {c}");
    }
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(up["stream_options"]["include_usage"], true);

    // Both streams were metered with the upstream's real counts.
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 2).await;
    assert_eq!(u["total"]["requests"], 2);
    assert_eq!(u["total"]["completion_tokens"], 7);
}

#[tokio::test]
async fn stream_chunks_arrive_as_the_upstream_sends_them() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[mock tokens=5 delay_ms=200]"}]});
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    assert_eq!(s.status, 200);
    let content_times: Vec<_> = s
        .frames
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains("\"content\":\"tok"))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        content_times.len(),
        5,
        "each token arrives in its own frame: {}",
        s.text()
    );
    let gaps: Vec<u128> = content_times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= 150),
        "chunks were batched: gaps {gaps:?} ms"
    );
}

#[tokio::test]
async fn wrong_or_missing_key_is_401() {
    let gw = Gateway::start().await;
    gw.create_key(100, &[]).await;
    for bearer in [Some("lm_wrong"), Some("sk-not-ours"), None] {
        let r = gw
            .call(
                "POST",
                "/v1/chat/completions",
                bearer,
                Some(chat_body("gpt-4o-mini", "hi").to_string().into_bytes()),
            )
            .await;
        let e = r.error(401);
        assert_eq!(e["type"], "authentication_error");
        r.assert_lumen_headers();
    }
    let r = gw.call("GET", "/v1/models", Some("lm_wrong"), None).await;
    r.error(401);
    assert_eq!(
        gw.mock.request_count(),
        0,
        "unauthenticated requests never reach the upstream"
    );
}

#[tokio::test]
async fn rpm_limit_gives_429_with_retry_after() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(2, &[]).await;
    for _ in 0..2 {
        let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-limit-requests").is_some());
    }
    let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
    let e = r.error(429);
    assert_eq!(e["type"], "rate_limit_error");
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    r.assert_lumen_headers();
    assert_eq!(gw.mock.request_count(), 2);
    // Another key has its own budget.
    let (other, _) = gw.create_key(2, &[]).await;
    assert_eq!(
        gw.chat(&other, chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );
}

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_problem() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let cases: Vec<(Vec<u8>, u16, Option<&str>, &str)> = vec![
        (b"{not json".to_vec(), 400, None, "not valid JSON"),
        (b"".to_vec(), 400, None, "empty"),
        (b"[1,2]".to_vec(), 400, None, "must be a JSON object"),
        (br#"{"model":"gpt-4o-mini"}"#.to_vec(), 400, Some("messages"), "missing required parameter: 'messages'"),
        (br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, Some("model"), "'model'"),
        (br#"{"model":7,"messages":[]}"#.to_vec(), 400, Some("model"), "expected a string"),
        (br#"{"model":"gpt-4o-mini","messages":{"role":"user"}}"#.to_vec(), 400, Some("messages"), "expected an array"),
        (br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"stream":1}"#.to_vec(), 400, Some("stream"), "boolean"),
        (br#"{"model":"gpt-4o-mini","messages":[{"role":"wizard","content":"x"}]}"#.to_vec(), 400, Some("messages[0].role"), "wizard"),
        (br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#.to_vec(), 400, Some("temperature"), "number"),
        (format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(70_000)).into_bytes(), 413, None, "limit"),
    ];
    for (body, status, param, needle) in cases {
        let r = gw
            .call(
                "POST",
                "/v1/chat/completions",
                Some(&key),
                Some(body.clone()),
            )
            .await;
        let e = r.error(status);
        assert_eq!(
            e["param"].as_str(),
            param,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{} lacks {needle:?}",
            e["message"]
        );
        r.assert_lumen_headers();
    }
    let r = gw.chat(&key, chat_body("no-such-model", "hi")).await;
    assert_eq!(r.error(404)["code"], "model_not_found");
    let r = gw
        .call("GET", "/v1/chat/completions", Some(&key), None)
        .await;
    r.error(405);
    let r = gw.call("GET", "/v1/nothing-here", Some(&key), None).await;
    r.error(404);
    let r = gw.call("GET", "/elsewhere", None, None).await;
    r.error(404);
    r.assert_lumen_headers();
    assert_eq!(gw.mock.request_count(), 0);
}

#[tokio::test]
async fn usage_records_requests_tokens_and_cost_per_key() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let (other, _) = gw.create_key(100, &[]).await;
    let b1 = chat_body("gpt-4o-mini", "[mock tokens=10]");
    let b2 = chat_body("gpt-4o", "[mock tokens=20]");
    assert_eq!(gw.chat(&key, b1.clone()).await.status, 200);
    assert_eq!(gw.chat(&key, b1.clone()).await.status, 200);
    assert_eq!(gw.chat(&key, b2.clone()).await.status, 200);
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 3).await;
    assert_eq!(u["object"], "usage");
    let rows = u["data"].as_array().unwrap();
    let row = |m: &str| {
        rows.iter()
            .find(|r| r["model"] == m)
            .unwrap_or_else(|| panic!("no row for {m}: {u}"))
            .clone()
    };
    let (mini, big) = (row("gpt-4o-mini"), row("gpt-4o"));
    let p1 = mock::prompt_tokens(&b1);
    let p2 = mock::prompt_tokens(&b2);
    assert_eq!(
        (
            mini["requests"].as_u64(),
            mini["prompt_tokens"].as_u64(),
            mini["completion_tokens"].as_u64()
        ),
        (Some(2), Some(2 * p1), Some(20))
    );
    assert_eq!(
        (
            big["requests"].as_u64(),
            big["prompt_tokens"].as_u64(),
            big["completion_tokens"].as_u64()
        ),
        (Some(1), Some(p2), Some(20))
    );
    // Catalog prices: mini $0.15 / $0.60, gpt-4o $2.50 / $10.00 per million tokens.
    let want_mini = (2 * p1) as f64 * 0.15e-6 + 20.0 * 0.60e-6;
    let want_big = p2 as f64 * 2.5e-6 + 20.0 * 10.0e-6;
    assert!(
        (mini["cost_usd"].as_f64().unwrap() - want_mini).abs() < 1e-9,
        "{mini}"
    );
    assert!(
        (big["cost_usd"].as_f64().unwrap() - want_big).abs() < 1e-9,
        "{big}"
    );
    assert!((u["total"]["cost_usd"].as_f64().unwrap() - want_mini - want_big).abs() < 1e-9);
    assert!(mini["day"].as_str().unwrap().len() == 10);
    // Tenants are isolated.
    let o = gw.call("GET", "/v1/usage", Some(&other), None).await.json();
    assert_eq!(o["total"]["requests"], 0);
    assert_eq!(o["data"], json!([]));
}

#[tokio::test]
async fn abandoned_stream_is_recorded_once() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[mock tokens=40 delay_ms=50]"}]});
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, Some(4)).await;
    assert_eq!(s.status, 200);
    drop(s);
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 1).await;
    assert_eq!(u["total"]["requests"], 1, "{u}");
    assert_eq!(u["total"]["errors"], 1, "recorded as not ok: {u}");
    // Still exactly one after the upstream would have finished.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let u = gw.usage_until(&key, |_| true).await;
    assert_eq!(u["total"]["requests"], 1, "{u}");
    assert!(
        u["total"]["completion_tokens"].as_u64().unwrap() < 40,
        "counted only what was sent: {u}"
    );
}

#[tokio::test]
async fn upstream_failures_are_openai_errors_and_metered() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "[mock status=500]"))
        .await;
    let e = r.error(502);
    assert!(
        !e["message"].as_str().unwrap().contains("mock error"),
        "upstream body leaked: {e}"
    );
    r.assert_lumen_headers();
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "[mock status=400]"))
        .await;
    assert!(r.error(400)["message"]
        .as_str()
        .unwrap()
        .starts_with("upstream rejected the request"));
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "[mock status=429]"))
        .await;
    r.error(429);
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 3).await;
    assert_eq!(u["total"]["errors"], 3, "{u}");
    // A stream the upstream cuts is never presented as a success.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[mock tokens=10 die_after=3]"}]});
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    let data = s.data();
    assert_ne!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last.get("error").is_some(),
        "ends with an error event: {last}"
    );
}

#[tokio::test]
async fn admin_api_is_behind_its_own_secret() {
    let gw = Gateway::start().await;
    let body = json!({"name": "ci", "rpm_limit": 10})
        .to_string()
        .into_bytes();
    gw.call("POST", "/admin/keys", None, Some(body.clone()))
        .await
        .error(401);
    gw.call("POST", "/admin/keys", Some("wrong"), Some(body.clone()))
        .await
        .error(401);
    let r = gw
        .call("POST", "/admin/keys", Some(ADMIN), Some(body))
        .await;
    assert_eq!(r.status, 201);
    let created = r.json();
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("lm_"));
    let list = gw.call("GET", "/admin/keys", Some(ADMIN), None).await;
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body).to_string();
    assert!(text.contains(&id) && !text.contains(&secret), "{text}");
    assert!(list.json()["data"][0].get("hash").is_none());
    assert_eq!(
        gw.chat(&secret, chat_body("gpt-4o-mini", "hi"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.call("DELETE", &format!("/admin/keys/{id}"), Some(ADMIN), None)
            .await
            .status,
        200
    );
    gw.chat(&secret, chat_body("gpt-4o-mini", "hi"))
        .await
        .error(401);
    gw.call("DELETE", &format!("/admin/keys/{id}"), Some(ADMIN), None)
        .await
        .error(404);
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(br#"{"name":"x","allowed_models":["gpt-4o","gpt-5-typo"]}"#.to_vec()),
        )
        .await;
    let e = r.error(400);
    assert_eq!(e["param"], "allowed_models[1]");
    assert!(e["message"].as_str().unwrap().contains("gpt-5-typo"), "{e}");
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(br#"{"name":"x","rpm":5}"#.to_vec()),
        )
        .await;
    assert!(r.error(400)["message"].as_str().unwrap().contains("rpm"));
}

#[tokio::test]
async fn admin_api_disabled_without_a_token() {
    let gw = Gateway::start_with(mock::MockConfig::default(), |o| {
        o.variables.insert("admin_token".into(), String::new());
    })
    .await;
    let r = gw.call("GET", "/admin/keys", Some(""), None).await;
    assert!(r.error(403)["message"]
        .as_str()
        .unwrap()
        .contains("admin_token"));
}

#[tokio::test]
async fn models_and_allowed_models() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw.call("GET", "/v1/models", Some(&key), None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let ids: Vec<_> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains(&"gpt-4o-mini".to_string()) && ids.contains(&"gpt-4o".to_string()),
        "{ids:?}"
    );
    let mini = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["pricing"]["input_per_mtok"], 0.15);
    assert_eq!(mini["context_window"], 128000);

    let (limited, _) = gw.create_key(100, &["gpt-4o-mini"]).await;
    let v = gw
        .call("GET", "/v1/models", Some(&limited), None)
        .await
        .json();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    gw.chat(&limited, chat_body("gpt-4o", "hi"))
        .await
        .error(403);
    assert_eq!(
        gw.chat(&limited, chat_body("openai/gpt-4o-mini", "hi"))
            .await
            .status,
        200,
        "aliases of allowed models work"
    );
}

#[tokio::test]
async fn outbound_host_not_allowed_is_a_clear_error() {
    let gw = Gateway::start_with(mock::MockConfig::default(), |o| {
        // Every provider's host variable, as they all point at the same mock origin in tests.
        for p in ["openai", "azure", "anthropic", "gemini", "vllm", "runpod"] {
            o.variables
                .insert(format!("{p}_allowed_host"), "http://127.0.0.1:1".into());
        }
    })
    .await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
    let e = r.error(502);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("allowed_outbound_hosts"),
        "{e}"
    );
    assert_eq!(gw.mock.request_count(), 0);
}

/// The store outlives the processes: lumen-host and `spin up` on their SQLite file, the two
/// Spin processes of spin-redis on Redis.
#[tokio::test]
async fn keys_persist_in_the_store_across_restarts() {
    let state = common::procs::temp_dir("e2e-state");
    let mut gw = Gateway::start_with(mock::MockConfig::default(), |o| {
        o.memory_kv = false;
        o.state_dir = Some(state.clone());
    })
    .await;
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(br#"{"name":"p"}"#.to_vec()),
        )
        .await;
    let key = r.json()["key"].as_str().unwrap().to_string();
    if runtime::Runtime::current() != runtime::Runtime::SpinRedis {
        assert!(state.join("sqlite_key_value.db").is_file());
    }
    gw.restart().await;
    let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    drop(gw);
    std::fs::remove_dir_all(&state).unwrap();
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// A keep-alive HTTP/1.1 connection to `addr`, its connection task running.
async fn keep_alive(
    addr: std::net::SocketAddr,
) -> (Sender, tokio::task::JoinHandle<hyper::Result<()>>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    (s, tokio::spawn(conn))
}

/// The status of `GET /v1/models` (no key) on `s`.
async fn models_status(s: &mut Sender, addr: std::net::SocketAddr) -> u16 {
    let get = http::Request::get("/v1/models")
        .header("host", addr.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    s.send_request(get).await.unwrap().status().as_u16()
}

/// Regression: the listener lacked SO_REUSEADDR, so a restart on the same port failed with
/// "address already in use" while the previous run's connections sat in TIME_WAIT; and
/// `shutdown` left keep-alive connections open, still served by the stopped app.
#[tokio::test]
async fn shutdown_closes_connections_and_the_port_is_reusable_at_once() {
    if runtime::skip_under_spin(
        "shutdown_closes_connections_and_the_port_is_reusable_at_once",
        "a regression test of lumen-host's own listener",
    ) {
        return;
    }
    let mock = mock::MockUpstream::start(mock::MockConfig::default())
        .await
        .unwrap();
    let host = lumen_host::start(options(&mock)).await.unwrap();
    let addr = host.addr();
    let (mut s, conn) = keep_alive(addr).await;
    assert_eq!(models_status(&mut s, addr).await, 401);
    // The server closes the idle keep-alive connection first, leaving TIME_WAIT on its port.
    host.shutdown().await;
    tokio::time::timeout(std::time::Duration::from_secs(5), conn)
        .await
        .expect("shutdown closes open connections")
        .unwrap()
        .unwrap();
    let mut o = options(&mock);
    o.listen = addr;
    let again = lumen_host::start(o)
        .await
        .expect("rebinding the same port succeeds");
    assert_eq!(again.addr(), addr);
    again.shutdown().await;
}

/// lumen-host serves on one thread per worker: the listening worker hands each new connection
/// to the worker with the fewest open. Regression: with every worker accepting from the one
/// listener, the first to wake took a burst of new connections whole and the other core sat
/// idle (throughput fell to a single thread's).
#[tokio::test]
async fn connections_are_spread_over_the_workers() {
    if runtime::skip_under_spin(
        "connections_are_spread_over_the_workers",
        "a test of lumen-host's own listener",
    ) {
        return;
    }
    let mock = mock::MockUpstream::start(mock::MockConfig::default())
        .await
        .unwrap();
    let mut o = options(&mock);
    o.workers = 3;
    let host = lumen_host::start(o).await.unwrap();
    let addr = host.addr();
    assert_eq!(host.connections_per_worker(), vec![0, 0, 0]);
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(keep_alive(addr).await);
    }
    // Each connection answers from whichever worker holds it.
    for (s, _) in &mut conns {
        assert_eq!(models_status(s, addr).await, 401);
    }
    assert_eq!(host.connections_per_worker(), vec![2, 2, 2]);
    drop(conns);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while host.open_connections() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(host.connections_per_worker(), vec![0, 0, 0]);
    // Stopping waits for every worker's thread.
    tokio::time::timeout(std::time::Duration::from_secs(10), host.shutdown())
        .await
        .expect("every worker stops");
}

#[tokio::test]
async fn an_invalid_body_limit_is_named_not_ignored() {
    let gw = Gateway::start_with(mock::MockConfig::default(), |o| {
        o.variables.insert("max_request_bytes".into(), "4MB".into());
    })
    .await;
    // Every route that reads a body refuses, naming the variable to fix.
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(br#"{"name":"k"}"#.to_vec()),
        )
        .await;
    assert!(r.error(500)["message"]
        .as_str()
        .unwrap()
        .contains("SPIN_VARIABLE_MAX_REQUEST_BYTES"));
    // The key is checked from the headers before the body (and its limit) is looked at.
    let r = gw.chat("lm_any", chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.error(401)["code"], "invalid_api_key");
    assert_eq!(gw.mock.request_count(), 0);
}

/// The components run on a 256 KiB stack (`.cargo/config.toml`): JSON nested as deep as
/// serde_json's recursion limit allows is served through every component (auth, router on
/// `auto`, provider, meter), and deeper JSON is a 400, never a trap.
#[tokio::test]
async fn deeply_nested_json_is_served_or_refused_never_a_trap() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let nested = |depth: usize| {
        let mut v = json!("x");
        for _ in 0..depth {
            v = json!([v]);
        }
        v
    };
    for model in ["gpt-4o-mini", "auto"] {
        let mut body = chat_body(model, "hi [mock tokens=2]");
        body["tools"] = json!([{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "x": nested(120)}}}]);
        let r = gw.chat(&key, body).await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let mut body = chat_body(model, "hi");
        body["messages"][0]["extra"] = nested(200);
        let r = gw.chat(&key, body).await;
        assert_eq!(
            r.status,
            400,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.error(400)["message"]
            .as_str()
            .unwrap()
            .contains("recursion limit"));
    }
}
