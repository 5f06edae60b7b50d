//! Several `lumen-host up` processes on one Redis, like several Spin replicas on one store:
//! limits hold across them, and a replica killed with SIGKILL under load leaves the audit chain
//! verifiable and every completed request with its usage record.

mod common;

use common::procs::{try_send, HostProc, RedisServer};
use common::{chat_body, ADMIN, UPSTREAM_KEY};
use futures::stream::{self, StreamExt};
use lumen_tests::mock::{MockConfig, MockUpstream};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let r = try_send(
        addr,
        method,
        path,
        Some(ADMIN),
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
    .expect("admin call");
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).expect("json")
}

async fn create_key(addr: SocketAddr, rpm: u32) -> String {
    let v = admin(
        addr,
        "POST",
        "/admin/keys",
        Some(json!({"name": "replicas", "rpm_limit": rpm})),
    )
    .await;
    v["key"].as_str().expect("secret").to_string()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 2,000 requests split across two replicas against a key limited to 600 per minute admit at
/// most 606 (the limit is one atomic INCRBY per request in the shared Redis, so it is exact; the
/// 6 is the tolerance). A run that straddles a minute boundary sees two windows and is
/// redone once in the next minute with a fresh key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_admit_at_most_the_limit() {
    let redis = RedisServer::start("rpm");
    let mock = mock().await;
    let rc = redis.runtime_config();
    let a = HostProc::start("rpm-a", &rc, &mock);
    let b = HostProc::start("rpm-b", &rc, &mock);
    let addrs = [a.addr, b.addr];
    for attempt in 0..2 {
        // Start early in a minute so the run fits in one window.
        let sec = unix_secs() % 60;
        if sec >= 30 {
            tokio::time::sleep(Duration::from_secs(60 - sec)).await;
        }
        let key = create_key(a.addr, 600).await;
        let window = unix_secs() / 60;
        let body = chat_body("gpt-4o-mini", "hi [mock tokens=2]").to_string();
        let outcomes: Vec<Result<u16, String>> = stream::iter(0..2000usize)
            .map(|i| {
                let (key, body) = (key.clone(), body.clone());
                async move {
                    try_send(
                        addrs[i % 2],
                        "POST",
                        "/v1/chat/completions",
                        Some(&key),
                        Some(body.into_bytes()),
                    )
                    .await
                    .map(|r| r.status)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        if unix_secs() / 60 != window {
            assert_eq!(attempt, 0, "two runs in a row straddled a minute boundary");
            continue;
        }
        let ok = outcomes.iter().filter(|o| matches!(o, Ok(200))).count();
        let limited = outcomes.iter().filter(|o| matches!(o, Ok(429))).count();
        let failed: Vec<_> = outcomes
            .iter()
            .filter(|o| !matches!(o, Ok(200) | Ok(429)))
            .take(3)
            .collect();
        eprintln!(
            "admitted {ok} of 2000 across two replicas (limit 600/min), {limited} refused with 429"
        );
        assert!(failed.is_empty(), "unexpected outcomes: {failed:?}");
        assert!(ok <= 606, "admitted {ok} > 606");
        assert!(ok >= 590, "admitted only {ok}: the limit refused too much");
        assert_eq!(ok + limited, 2000);
        return;
    }
}

/// Under load across two replicas, one is killed with SIGKILL. The survivor then verifies the
/// whole audit chain, and every request a client saw complete (200 with a full body, or a
/// stream that reached `[DONE]`) has its usage record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_keeps_the_chain_and_every_completed_record() {
    let redis = RedisServer::start("kill");
    let mock = mock().await;
    let rc = redis.runtime_config();
    let mut a = HostProc::start("kill-a", &rc, &mock);
    let b = HostProc::start("kill-b", &rc, &mock);
    let key = create_key(b.addr, 100_000).await;
    let addrs = [a.addr, b.addr];
    let total = 400usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let load = {
        let key = key.clone();
        tokio::spawn(async move {
            stream::iter(0..total)
                .map(|i| {
                    let key = key.clone();
                    let tx = tx.clone();
                    async move {
                        let streamed = i % 3 == 0;
                        let mut body = chat_body("gpt-4o-mini", "load [mock tokens=20 delay_ms=5]");
                        if streamed {
                            body["stream"] = json!(true);
                        }
                        let r = try_send(
                            addrs[i % 2],
                            "POST",
                            "/v1/chat/completions",
                            Some(&key),
                            Some(body.to_string().into_bytes()),
                        )
                        .await;
                        let _ = tx.send(());
                        let r = r.ok()?;
                        let complete = r.status == 200
                            && if streamed {
                                String::from_utf8_lossy(&r.body).contains("data: [DONE]")
                            } else {
                                serde_json::from_slice::<Value>(&r.body)
                                    .is_ok_and(|v| v["choices"][0]["finish_reason"].is_string())
                            };
                        let id = r.headers.get("x-request-id")?.to_str().ok()?.to_string();
                        complete.then_some(id)
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<Option<String>>>()
                .await
        })
    };
    // Kill replica A once a quarter of the requests are done, while the rest are in flight.
    for _ in 0..total / 4 {
        rx.recv().await.expect("load runs");
    }
    a.kill9();
    let results = tokio::time::timeout(Duration::from_secs(180), load)
        .await
        .expect("load finishes within 180 s")
        .expect("load task");
    let completed: Vec<String> = results.into_iter().flatten().collect();
    assert!(
        completed.len() > total / 2,
        "only {} of {total} completed",
        completed.len()
    );
    assert!(completed.len() < total, "the kill interrupted nothing");

    let v = admin(b.addr, "GET", "/admin/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{v}");
    let recs = try_send(
        b.addr,
        "GET",
        "/v1/usage/records?limit=10000",
        Some(&key),
        None,
    )
    .await
    .expect("records");
    assert_eq!(recs.status, 200);
    let recs: Value = serde_json::from_slice(&recs.body).expect("json");
    let recorded: HashSet<&str> = recs["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let missing: Vec<&String> = completed
        .iter()
        .filter(|id| !recorded.contains(id.as_str()))
        .collect();
    eprintln!(
        "{} of {total} completed, {} usage records, audit chain of {} entries verified",
        completed.len(),
        recorded.len(),
        v["checked"]
    );
    assert!(
        missing.is_empty(),
        "completed without a usage record: {missing:?}"
    );
    assert!(
        v["checked"].as_u64().unwrap_or(0) >= completed.len() as u64,
        "{v}"
    );
}
