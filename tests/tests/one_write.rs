//! Head and body leave the gateway in one write. Stock Spin sets `TCP_NODELAY` on none of its
//! sockets, so a small body written after its head waits in Nagle's algorithm for the client's
//! delayed ACK (~40 ms; `../shared/tools/README.md`). The components therefore finish a small
//! body (and a stream's first event) before handing the head to the host. Here a raw client
//! reads once after sending a request: the whole answer (or the head and a first event) must be
//! in that read. Before the fix this failed under `LUMEN_TEST_RUNTIME=spin-sqlite` (the first
//! read held the head alone).

mod common;

use common::{chat_body, Gateway};
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

#[tokio::test]
async fn a_small_answer_arrives_with_its_head() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(10_000, &[]).await;
    for i in 0..10 {
        let got = first_read(&gw, &key, &chat_body("gpt-4o-mini", &format!("hi {i}"))).await;
        let (head, body) = got
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("request {i}: the first read holds no whole head: {got:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
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
    for i in 0..10 {
        let mut body = chat_body("gpt-4o-mini", &format!("hi {i} [mock tokens=3]"));
        body["stream"] = json!(true);
        let got = first_read(&gw, &key, &body).await;
        let (head, rest) = got
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("request {i}: the first read holds no whole head: {got:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(
            rest.contains("data: {"),
            "request {i}: the first read holds the head but no event: {got:?}"
        );
    }
}
