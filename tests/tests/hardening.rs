//! lumen-host as a server strangers cannot knock over (issue 13): header, idle, body and write
//! timeouts, connection and request caps, unread bodies drained so the client reads the 413,
//! instance-pool exhaustion as a 503, and hyper's own parse-error answers made OpenAI-shaped.
//! Every refusal is `{"error":{…}}` with an `x-request-id`. Raw sockets, so the tests control
//! exactly what the client sends and when; per-IP caps are told apart by binding clients to
//! other loopback addresses (127.0.0.2, …).

mod common;

use common::raw::{
    connect_from, connect_small_rcvbuf, post_head, read_response, read_to_close, write_all,
};
use common::{chat_body, Gateway, ADMIN, UPSTREAM_KEY};
use lumen_host::HostOptions;
use lumen_tests::mock::MockConfig;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const THIRD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A gateway with the host's default limits (the shared harness relaxes the caps), tweaked.
async fn gateway(tweak: impl FnOnce(&mut HostOptions)) -> Gateway {
    Gateway::start_with(
        MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        },
        |o| {
            o.limits = lumen_host::Limits::default();
            tweak(o);
        },
    )
    .await
}

/// Polls `cond` for up to `within`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A chat body of about `size` bytes.
fn big_chat(size: usize) -> Vec<u8> {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(size)}]})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_without_expect_continue() {
    let gw = gateway(|_| {}).await;
    let (key, _) = gw.create_key(600, &[]).await;
    // 8 MiB against the tests' 64 KiB max_request_bytes: far more than the socket buffers hold,
    // so the client is still writing when the gateway has answered — as the openai and
    // anthropic SDKs do, which send no `Expect: 100-continue`.
    let body = big_chat(8 << 20);
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut s,
        post_head("/v1/chat/completions", body.len(), Some(&key)).as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), s.write_all(&body))
        .await
        .expect("the whole body is taken within 20 s")
        .expect("the gateway reads (and discards) the rest of the body instead of resetting");
    let r = read_response(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_beyond_the_drain_bound_is_closed_not_waited_for() {
    let gw = gateway(|o| o.limits.drain_max_bytes = 1 << 20).await;
    let (key, _) = gw.create_key(600, &[]).await;
    let body = big_chat(64 << 20);
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut s,
        post_head("/v1/chat/completions", body.len(), Some(&key)).as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let wrote = tokio::time::timeout(Duration::from_secs(20), s.write_all(&body))
        .await
        .expect("the gateway closes within 20 s instead of reading 64 MiB or hanging");
    assert!(
        wrote.is_err(),
        "64 MiB were accepted although drain_max_bytes is 1 MiB"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_stops_reading_is_closed_after_the_write_timeout() {
    let gw = gateway(|o| o.limits.write_timeout = Duration::from_secs(1)).await;
    let (key, _) = gw.create_key(600, &[]).await;
    let mut body = chat_body(
        "gpt-4o-mini",
        "[mock tokens=200000 content=abcdefghijklmnopqrstuvwxyz]",
    );
    body["stream"] = json!(true);
    let body = body.to_string().into_bytes();
    let mut s = connect_small_rcvbuf(LOCAL, gw.addr(), 4096).await.unwrap();
    write_all(
        &mut s,
        post_head("/v1/chat/completions", body.len(), Some(&key)).as_bytes(),
    )
    .await
    .unwrap();
    write_all(&mut s, &body).await.unwrap();
    // Read nothing for a while: the socket buffers fill and the gateway's writes stall.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Then read everything: the connection must already have been closed mid-stream.
    let got = read_to_close(&mut s, Duration::from_secs(30))
        .await
        .expect("the connection ends within 30 s");
    let text = String::from_utf8_lossy(got.as_deref().unwrap_or_default()).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(
        !text.contains("[DONE]"),
        "the stream was held open for a client that read nothing for 6 s ({} bytes)",
        text.len()
    );
    // The component saw its write fail, settled the request and exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.call("GET", "/v1/usage/records", Some(&key), None).await;
        let v = r.json();
        let outcomes: Vec<String> = v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if outcomes.iter().any(|o| o == "client_disconnected") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no client_disconnected record: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_pool_exhaustion_is_a_503_with_retry_after() {
    let gw = gateway(|o| o.limits.max_instances = 1).await;
    // An admin request whose body trickles in holds the pool's only instance (the admin token
    // is checked and the body read by the same instance, whatever the order).
    let mut holder = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut holder,
        post_head("/admin/keys", 1000, Some(ADMIN)).as_bytes(),
    )
    .await
    .unwrap();
    write_all(&mut holder, b"{").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get(&gw, UNKNOWN_KEY_MODELS).await;
    let e = r.openai_error(503);
    assert_eq!(e["code"], "server_busy", "{e}");
    assert_eq!(e["type"], "server_error", "{e}");
    assert_eq!(r.header("retry-after"), Some("1"));
}

/// Sends `request` on a new connection and reads the answer.
async fn get(gw: &Gateway, request: &[u8]) -> common::raw::RawResponse {
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(&mut s, request).await.unwrap();
    read_response(&mut s, Duration::from_secs(10))
        .await
        .unwrap()
}

/// A `GET /v1/models` with a key that does not exist (401 from auth, one instance).
const UNKNOWN_KEY_MODELS: &[u8] =
    b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer lm_x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_finds_its_instance_made() {
    let gw = gateway(|_| {}).await;
    let host = gw.host().expect("lumen-host");
    assert_eq!(get(&gw, UNKNOWN_KEY_MODELS).await.status, 401);
    assert!(
        eventually(Duration::from_secs(5), || host.spares_waiting() == 1).await,
        "no instance made after the first request ended"
    );
    let before = host.spares_used();
    assert_eq!(get(&gw, UNKNOWN_KEY_MODELS).await.status, 401);
    assert_eq!(
        host.spares_used(),
        before + 1,
        "the second request made its own"
    );
    // And the one after that again (the spare is made anew after each request).
    assert!(eventually(Duration::from_secs(5), || host.spares_waiting() == 1).await);
    assert_eq!(get(&gw, UNKNOWN_KEY_MODELS).await.status, 401);
    assert_eq!(host.spares_used(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_instance_never_costs_another_component_its_instance() {
    // One instance in the whole pool: the gateway's spare, made after its request, holds it.
    let gw = gateway(|o| o.limits.max_instances = 1).await;
    let host = gw.host().expect("lumen-host");
    assert_eq!(get(&gw, UNKNOWN_KEY_MODELS).await.status, 401);
    assert!(
        eventually(Duration::from_secs(5), || host.spares_waiting() == 1).await,
        "no instance made after the first request ended"
    );
    // The dashboard is another component: it gets the instance, not a 503.
    let r = get(&gw, b"GET /app/dashboard HTTP/1.1\r\nHost: gateway\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypers_own_parse_errors_are_openai_shaped() {
    let gw = gateway(|_| {}).await;
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut s,
        b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nthis is not a header\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.openai_error(400)["code"], "malformed_request");

    let mut head = String::from("GET /v1/models HTTP/1.1\r\nHost: gateway\r\n");
    for i in 0..150 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(&mut s, head.as_bytes()).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.openai_error(431)["code"], "request_headers_too_large");

    // A good request after a good one on the same connection still passes untouched (the
    // layer that finds hyper's answers follows the framing of every response).
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    for _ in 0..3 {
        write_all(
            &mut s,
            b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer lm_nope\r\n\r\n",
        )
        .await
        .unwrap();
        let r = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.status, 401);
    }

    // After a streamed (chunked) answer on a keep-alive connection, a malformed request still
    // gets JSON: the layer followed the chunked framing to the next head.
    let (key, _) = gw.create_key(600, &[]).await;
    // Paced, so the answer streams chunked (a burst would leave whole, with a length).
    let mut body = chat_body("gpt-4o-mini", "[mock tokens=20 delay_ms=3]");
    body["stream"] = json!(true);
    let body = body.to_string();
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut s,
        format!(
            "{}{body}",
            post_head("/v1/chat/completions", body.len(), Some(&key))
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut streamed = Vec::new();
    let mut chunk = [0u8; 4096];
    while !streamed.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("stream within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-stream: {}",
            String::from_utf8_lossy(&streamed)
        );
        streamed.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&streamed);
    assert!(
        text.contains("transfer-encoding: chunked") && text.contains("[DONE]"),
        "{text}"
    );
    write_all(&mut s, b"BROKEN\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.openai_error(400)["code"], "malformed_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_gets_408_and_an_idle_connection_is_closed() {
    let gw = gateway(|o| {
        o.limits.header_timeout = Duration::from_secs(1);
        o.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(&mut s, b"GET /v1/models HTTP/1.1\r\nHost: gate")
        .await
        .unwrap();
    let r = read_response(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.openai_error(408)["code"], "request_timeout");
    assert!(read_to_close(&mut s, Duration::from_secs(5))
        .await
        .is_some());

    // A keep-alive connection that served a request and then sends nothing is closed.
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(&mut s, b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut s, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        401
    );
    let closed = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(
        matches!(closed, Some(Ok(ref rest)) if rest.is_empty()),
        "idle connection not closed: {closed:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || gw
            .host()
            .expect("lumen-host")
            .open_connections()
            == 0)
        .await,
        "{} connections still open",
        gw.host().expect("lumen-host").open_connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_its_connection_closed() {
    let gw = gateway(|o| o.limits.body_timeout = Duration::from_secs(1)).await;
    let (key, _) = gw.create_key(600, &[]).await;
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut s,
        post_head("/v1/chat/completions", 60_000, Some(&key)).as_bytes(),
    )
    .await
    .unwrap();
    write_all(&mut s, b"{\"model\"").await.unwrap();
    let started = Instant::now();
    let r = read_response(&mut s, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(r.openai_error(408)["code"], "request_timeout");
    assert_eq!(r.header("connection"), Some("close"));
    // 1 s of grace plus 8 bytes at 8 KiB/s; generous bound for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_answer_429_per_client_and_503_in_all() {
    let gw = gateway(|o| {
        o.limits.max_connections = 3;
        o.limits.max_connections_per_ip = 2;
    })
    .await;
    let _a = connect_from(OTHER, gw.addr()).await.unwrap();
    let _b = connect_from(OTHER, gw.addr()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || gw
            .host()
            .expect("lumen-host")
            .open_connections()
            == 2)
        .await
    );
    let mut c = connect_from(OTHER, gw.addr()).await.unwrap();
    let r = read_response(&mut c, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        r.openai_error(429)["code"],
        "too_many_connections_from_client"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another address still gets in, up to the global cap.
    let mut d = connect_from(THIRD, gw.addr()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || gw
            .host()
            .expect("lumen-host")
            .open_connections()
            == 3)
        .await
    );
    let mut e = connect_from(LOCAL, gw.addr()).await.unwrap();
    let r = read_response(&mut e, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.openai_error(503)["code"], "too_many_connections");
    // The admitted connection from the third address is served normally.
    write_all(&mut d, b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut d, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_caps_bound_strangers_per_ip_and_callers_per_key() {
    let gw = gateway(|o| {
        o.limits.max_unauthenticated_requests_per_ip = 1;
        o.limits.max_requests_per_credential = 1;
    })
    .await;
    let (fresh, _) = gw.create_key(600, &[]).await;
    let (used, _) = gw.create_key(600, &[]).await;
    // `used` gets a 2xx: the host now counts it per key, not per address.
    assert_eq!(
        gw.call("GET", "/v1/models", Some(&used), None).await.status,
        200
    );
    // A request from 127.0.0.2 with a key the host has not seen accepted yet, its body
    // trickling in, is in flight before authentication as far as the host can tell.
    let mut slow = connect_from(OTHER, gw.addr()).await.unwrap();
    write_all(
        &mut slow,
        post_head("/v1/chat/completions", 1000, Some(&fresh)).as_bytes(),
    )
    .await
    .unwrap();
    write_all(&mut slow, b"{").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = connect_from(OTHER, gw.addr()).await.unwrap();
    write_all(&mut s, b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.openai_error(429)["code"], "too_many_requests_from_client");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Other addresses are not affected.
    let mut s = connect_from(THIRD, gw.addr()).await.unwrap();
    write_all(&mut s, b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut s, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        401
    );
    // One request in flight per key: a second with the same key waits its turn.
    let mut held = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut held,
        post_head("/v1/chat/completions", 1000, Some(&used)).as_bytes(),
    )
    .await
    .unwrap();
    write_all(&mut held, b"{").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = gw.call("GET", "/v1/models", Some(&used), None).await;
    assert_eq!(r.error(429)["code"], "too_many_requests_for_key");
    assert!(r
        .header("x-request-id")
        .is_some_and(|id| id.starts_with("req_")));
    drop(held);
    // Released when the held request ends.
    let mut ok = false;
    for _ in 0..50 {
        if gw.call("GET", "/v1/models", Some(&used), None).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the per-key slot was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_expecting_100_continue_is_not_asked_for_its_body() {
    let gw = gateway(|o| o.limits.max_unauthenticated_requests_per_ip = 0).await;
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(
        &mut s,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The refusal comes first: no `100 Continue` invites the client to send a body nobody reads.
    let r = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.openai_error(429)["code"], "too_many_requests_from_client");
    // Nor after it: the gateway closes instead of asking for the body to throw it away.
    let rest = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&rest, Some(Ok(b)) if b.is_empty()),
        "after the refusal: {:?}",
        rest.map(|r| r.map(|b| String::from_utf8_lossy(&b).into_owned()))
    );
}

/// `Expect: 100-continue` with a key: the `100 Continue` head leaves at once on its own (the
/// host holds a response head to send it with its body, and must not hold this one), then the
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_gets_its_100_at_once_then_the_answer() {
    let gw = gateway(|_| {}).await;
    let (key, _) = gw.create_key(600, &[]).await;
    let body = big_chat(4096);
    let head = post_head("/v1/chat/completions", body.len(), Some(&key))
        .replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    let mut s = connect_from(LOCAL, gw.addr()).await.unwrap();
    write_all(&mut s, head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let started = Instant::now();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the 100 Continue comes within 2 s")
            .unwrap();
        assert!(n > 0, "closed before 100 Continue");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    write_all(&mut s, &body).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
