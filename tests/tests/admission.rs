//! Admission as a stranger and a new user meet it (issue 13): the key is checked from the
//! headers before a byte of the body is read (a key-less caller gets 401, never a field-level
//! 400, and costs no body); a model the key may not use is a 403 that does not count against
//! its requests per minute; JSON bodies need a JSON `content-type` (or none); admin path
//! segments cannot smuggle a `/`; `GET /v1/models/{id}`; the bearer scheme in any case; tool
//! messages need their call id and Anthropic `tools` must be a list.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a request's head (and `body`, possibly shorter than its `content-length`) on a raw
/// connection and reads the response head: `(status, head)`. Panics when nothing comes within
/// 5 s — a gateway that waits for the body first would wait here for ever.
async fn head_only(gw: &Gateway, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response before the body was sent");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, text)
}

fn head(path: &str, auth: Option<&str>, extra: &str) -> String {
    let auth = auth.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nhost: lumen\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n{auth}{extra}\r\n"
    )
}

/// D5: no key, a wrong key, or a key over its limit: answered from the headers alone while the
/// body (100,000 bytes announced, none sent) has not arrived, on every route that reads one.
#[tokio::test]
async fn the_key_is_checked_before_a_byte_of_the_body() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1, &[]).await;
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/embeddings",
        "/v1/route",
    ] {
        for auth in [None, Some("lm_wrong")] {
            let (status, text) = head_only(&gw, &head(path, auth, ""), b"").await;
            assert_eq!(status, 401, "{path} {auth:?}: {text}");
            assert!(text.to_ascii_lowercase().contains("x-request-id"), "{text}");
        }
    }
    // The key's one request this minute, then a 429 without the body.
    let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 200);
    let (status, text) = head_only(&gw, &head("/v1/chat/completions", Some(&key), ""), b"").await;
    assert_eq!(status, 429, "{text}");
    // A key-less caller sending junk learns nothing about the body's fields.
    let r = gw
        .call(
            "POST",
            "/v1/chat/completions",
            None,
            Some(b"{\"model\":".to_vec()),
        )
        .await;
    assert_eq!(r.error(401)["param"], Value::Null);
    assert_eq!(gw.mock.request_count(), 1);
}

/// A model the key may not use is a 403 that does not burn a request: the key's limit still
/// admits its full count of allowed requests after any number of 403s.
#[tokio::test]
async fn a_refused_model_does_not_count_against_the_rate_limit() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(2, &["gpt-4o-mini"]).await;
    for _ in 0..3 {
        let r = gw.chat(&key, chat_body("gpt-4o", "hi")).await;
        assert_eq!(r.error(403)["code"], "model_not_allowed");
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("2"));
    }
    for left in ["1", "0"] {
        let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(left));
    }
    gw.chat(&key, chat_body("gpt-4o-mini", "hi"))
        .await
        .error(429);
}

/// JSON bodies need a JSON `content-type`: `application/json` with any parameters, a `+json`
/// type, or none at all; anything else (`curl -d`'s form type) is a 415 naming the header.
#[tokio::test]
async fn json_routes_check_the_content_type() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let body = chat_body("gpt-4o-mini", "hi [mock tokens=1]")
        .to_string()
        .into_bytes();
    for (ct, status) in [
        ("application/json; charset=utf-8", 200),
        ("APPLICATION/JSON", 200),
        ("application/x-www-form-urlencoded", 415),
        ("text/plain", 415),
    ] {
        let r = send_with(
            gw.addr(),
            "POST",
            "/v1/chat/completions",
            Some(&key),
            Some(body.clone()),
            &[("content-type", ct)],
        )
        .await;
        assert_eq!(
            r.status,
            status,
            "{ct}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if status == 415 {
            let e = r.error(415);
            assert_eq!(
                (e["param"].as_str(), e["code"].as_str()),
                (Some("content-type"), Some("unsupported_media_type"))
            );
            assert!(e["message"].as_str().unwrap().contains("application/json"));
        }
    }
    // No content-type at all (what some clients send): read as JSON.
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: lumen\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (status, text) = head_only(&gw, &raw, &body).await;
    assert_eq!(status, 200, "{text}");
    // Admin routes too (after the admin token).
    let r = send_with(
        gw.addr(),
        "POST",
        "/admin/keys",
        Some(ADMIN),
        Some(br#"{"name":"x"}"#.to_vec()),
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(r.error(415)["param"], "content-type");
    let r = send_with(
        gw.addr(),
        "POST",
        "/admin/keys",
        Some("wrong"),
        Some(br#"{"name":"x"}"#.to_vec()),
        &[("content-type", "text/plain")],
    )
    .await;
    r.error(401);
}

/// `PUT /admin/tenants/a%2Fb%2Fc` stored tenant `a/b/c`: a segment that decodes to a `/` is a
/// 400 naming it, and nothing is stored.
#[tokio::test]
async fn admin_path_segments_cannot_hold_a_slash() {
    let gw = Gateway::start().await;
    let body = Some(json!({"monthly_budget_usd": 5}).to_string().into_bytes());
    let r = gw
        .call("PUT", "/admin/tenants/a%2Fb%2Fc", Some(ADMIN), body.clone())
        .await;
    let e = r.error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("tenant"), Some("invalid_path_segment"))
    );
    assert!(gw.store_keys("v1/tenant/").is_empty());
    for (method, path) in [
        ("DELETE", "/admin/keys/key%2Fx"),
        ("POST", "/admin/tenants/a%2F..%2Fb/credits"),
        ("PUT", "/admin/keys/key_1/provider-keys/open%2Fai"),
    ] {
        let r = gw.call(method, path, Some(ADMIN), body.clone()).await;
        assert_eq!(
            r.error(400)["code"],
            "invalid_path_segment",
            "{method} {path}"
        );
    }
    let r = gw
        .call("PUT", "/admin/tenants/acme", Some(ADMIN), body)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `GET /v1/models/{id}`, as OpenAI has it: by id, alias or tier; a 404 naming `model` for an
/// unknown one or one the key may not use.
#[tokio::test]
async fn one_model_by_id() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for (asked, id) in [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("openai%2Fgpt-4o-mini", "gpt-4o-mini"),
        ("lumen/auto", "lumen/auto"),
        (
            "meta-llama/llama-3.1-8b-instruct",
            "meta-llama/llama-3.1-8b-instruct",
        ),
    ] {
        let r = gw
            .call("GET", &format!("/v1/models/{asked}"), Some(&key), None)
            .await;
        assert_eq!(
            r.status,
            200,
            "{asked}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["id"], id, "{asked}");
    }
    let e = gw
        .call("GET", "/v1/models/gpt-9", Some(&key), None)
        .await
        .error(404);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("model"), Some("model_not_found"))
    );
    let (narrow, _) = gw.create_key(100, &["gpt-4o-mini"]).await;
    gw.call("GET", "/v1/models/gpt-4o", Some(&narrow), None)
        .await
        .error(404);
    gw.call("GET", "/v1/models/gpt-4o", None, None)
        .await
        .error(401);
}

/// The scheme of `Authorization` is case-insensitive (RFC 9110): `BEARER k` and `bearer k` work.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    for scheme in ["BEARER", "bearer", "Bearer"] {
        let r = send_with(
            gw.addr(),
            "GET",
            "/v1/models",
            None,
            None,
            &[("authorization", &format!("{scheme} {key}"))],
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{scheme}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// A tool message without `tool_call_id` went upstream as `""`; Anthropic `tools` given as an
/// object was dropped: both are 400s naming the field, and nothing goes upstream.
#[tokio::test]
async fn tool_fields_are_checked_not_dropped() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny"}]});
    let e = gw.chat(&key, body).await.error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (
            Some("messages[2].tool_call_id"),
            Some("missing_required_parameter")
        )
    );
    let msg = json!({"model": "gpt-4o-mini", "max_tokens": 10,
        "tools": {"name": "get_weather", "input_schema": {"type": "object"}},
        "messages": [{"role": "user", "content": "weather?"}]});
    let r = gw
        .call(
            "POST",
            "/v1/messages",
            Some(&key),
            Some(msg.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["type"].as_str(), v["error"]["param"].as_str()),
        (Some("error"), Some("tools"))
    );
    let msg = json!({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "content": "sunny"}]}]});
    let r = gw
        .call(
            "POST",
            "/v1/messages",
            Some(&key),
            Some(msg.to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        r.json()["error"]["param"],
        "messages[0].content[0].tool_use_id"
    );
    assert_eq!(gw.mock.request_count(), 0);
}
