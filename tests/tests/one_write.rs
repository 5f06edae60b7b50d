//! Head and body leave the gateway in one write. Stock Spin sets `TCP_NODELAY` on none of its
//! sockets, so a small body written after its head waits in Nagle's algorithm for the client's
//! delayed ACK (~40 ms; `../shared/tools/README.md`). The components therefore finish a small
//! body (and a stream's first event) before handing the head to the host. Here a raw client
//! reads once after sending a request: the whole answer (or the head and a first event) must be
//! in that read. Before the fix this failed under `LUMEN_TEST_RUNTIME=spin-sqlite` (the first
//! read held the head alone).

mod common;

use common::{chat_body, Gateway};
use lumen_tests::mock::MockConfig;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `body` to /v1/chat/completions on a fresh connection and returns what the first read
/// after the request brought (up to 256 KiB).
async fn first_read(gw: &Gateway, key: &str, body: &serde_json::Value) -> String {
    let body = serde_json::to_vec(body).unwrap();
    let mut s = TcpStream::connect(gw.addr()).await.expect("connects");
    s.set_nodelay(true).unwrap();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: lumen\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    s.write_all(&req).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("reads");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The first read of request `i` (its `prompt`, streamed or not), split into head and body; it
/// must hold a whole head with status 200.
async fn first_read_200(
    gw: &Gateway,
    key: &str,
    i: usize,
    prompt: &str,
    stream: bool,
) -> (String, String) {
    let mut body = chat_body("gpt-4o-mini", prompt);
    if stream {
        body["stream"] = json!(true);
    }
    let got = first_read(gw, key, &body).await;
    let (head, rest) = got
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("request {i}: the first read holds no whole head: {got:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
    (head.to_string(), rest.to_string())
}

/// A gateway whose `stream_burst_gap_us` is `us` on every leg.
async fn with_burst_gap(us: &str) -> Gateway {
    Gateway::start_with(MockConfig::default(), |o| {
        o.variables.insert("stream_burst_gap_us".into(), us.into());
    })
    .await
}

/// The `content-length` a head announces.
fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

#[tokio::test]
async fn a_small_answer_arrives_with_its_head() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    for i in 0..10 {
        let (head, body) = first_read_200(&gw, &key, i, &format!("hi {i}"), false).await;
        let len = content_length(&head)
            .unwrap_or_else(|| panic!("request {i}: no content-length: {head}"));
        assert_eq!(
            body.len(),
            len,
            "request {i}: the first read brought {} of {len} body bytes (head and body in two writes)",
            body.len()
        );
    }
}

#[tokio::test]
async fn a_stream_head_arrives_with_its_first_event() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    for i in 0..5 {
        // The upstream pauses after its first event: the head and that event leave at once,
        // the rest follows as it comes (chunked).
        let prompt = format!("hi {i} [mock tokens=3 delay_ms=40]");
        let (head, rest) = first_read_200(&gw, &key, i, &prompt, true).await;
        assert!(
            rest.contains("data: {"),
            "request {i}: the first read holds the head but no event: {rest:?}"
        );
        assert!(
            !rest.contains("[DONE]"),
            "request {i}: the stream waited for its end instead of streaming: {rest:?}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "request {i}: {head}"
        );
    }
}

/// A stream whose upstream sends every event in one burst leaves in one write, whole, with a
/// `content-length`: written event by event, every write after the first waited for the
/// client's delayed ACK under stock Spin (each such stream took ~42 ms on a keep-alive
/// connection, against ~2.5 ms whole). Before the change no stream came back whole. The events
/// reach auth one by one through the host, so on a loaded machine a gap may split one; most
/// must come whole.
#[tokio::test]
async fn a_stream_that_ends_in_one_burst_leaves_whole_in_one_write() {
    // Spin's default; lumen-host's own default is 0 (its sockets send small writes at once).
    let gw = with_burst_gap("1000").await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    let mut whole = 0;
    for i in 0..10 {
        let prompt = format!("hi {i} [mock tokens=8]");
        let (head, rest) = first_read_200(&gw, &key, i, &prompt, true).await;
        let len = content_length(&head);
        if let Some(len) = len {
            assert_eq!(rest.len(), len, "request {i}: {head}\n{rest}");
            let events: Vec<&str> = rest.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(events.last(), Some(&"data: [DONE]"), "request {i}: {rest}");
            let last: serde_json::Value =
                serde_json::from_str(events[events.len() - 2].trim_start_matches("data: "))
                    .unwrap();
            assert!(last["lumen"]["cost"].is_number(), "request {i}: {last}");
            let text: String = events
                .iter()
                .filter_map(|e| {
                    serde_json::from_str::<serde_json::Value>(e.strip_prefix("data: ")?).ok()
                })
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(String::from)
                })
                .collect();
            assert_eq!(text.split_whitespace().count(), 8, "request {i}: {text:?}");
            whole += 1;
        }
    }
    assert!(
        whole >= 5,
        "only {whole} of 10 burst streams came whole in one write"
    );
}

/// A provider that keeps sending without ever pausing for the burst gap is still written: no
/// event is held longer than 20 ms. Here the gap is 20 ms and the mock sends an event every
/// 5 ms for ~100 ms; without the bound the whole stream waited for its end.
#[tokio::test]
async fn a_stream_that_never_pauses_is_written_as_it_goes() {
    let gw = with_burst_gap("20000").await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    for i in 0..3 {
        let prompt = format!("hi {i} [mock tokens=20 delay_ms=5]");
        let (head, rest) = first_read_200(&gw, &key, i, &prompt, true).await;
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "request {i}: {head}"
        );
        assert!(rest.contains("data: {"), "request {i}: {rest:?}");
        assert!(
            !rest.contains("[DONE]"),
            "request {i}: the stream was held to its end: {rest:?}"
        );
    }
}
