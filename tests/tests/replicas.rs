//! Several replicas on one Redis, like several Spin processes on one store — `lumen-host up`
//! processes under the host leg, real `spin up` processes under the Spin legs
//! (`LUMEN_TEST_RUNTIME`): a burst against one key's limit is admitted exactly and every
//! admitted request answered, with Redis connections bounded; and a replica killed with
//! SIGKILL under load leaves the audit chain verifiable and every completed request with its
//! usage record.

mod common;

use common::procs::{redis_clients, try_send, RedisServer, Replica};
use common::runtime::{skip_under_spin, Runtime};
use common::{chat_body, ADMIN, UPSTREAM_KEY};
use futures::stream::{self, StreamExt};
use lumen_tests::mock::{MockConfig, MockUpstream};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The spin-sqlite leg is about Spin's SQLite store; these tests need a shared Redis, which the
/// spin-redis leg runs under Spin.
fn skip_on_sqlite(test: &str) -> bool {
    Runtime::current() == Runtime::SpinSqlite
        && skip_under_spin(
            test,
            "replicas share Redis; the spin-redis leg runs this under Spin",
        )
}

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
    let r = try_send(
        addr,
        "POST",
        "/admin/keys",
        Some(ADMIN),
        Some(
            json!({"name": "replicas", "rpm_limit": rpm})
                .to_string()
                .into_bytes(),
        ),
    )
    .await
    .expect("admin call");
    assert_eq!(
        r.status,
        201,
        "POST /admin/keys: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    v["key"].as_str().expect("secret").to_string()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Samples Redis's `connected_clients` every 20 ms (for at most 10 minutes) until dropped;
/// [`ClientSampler::peak`] is the most seen.
struct ClientSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientSampler {
    fn start(url: &str) -> ClientSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let mut clients = redis_clients(url);
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(n) = clients() {
                    p.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ClientSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The largest `connected_clients` seen (the sampler's own connection included).
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for ClientSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests in flight during the burst (each with a 30 s timeout).
const BURST_CONCURRENCY: usize = 64;

/// A burst of 1,500 chat requests split across two replicas against a key limited to 600 per
/// minute: exactly 600 ± 1 % are admitted (the limit is one atomic increment per request in the
/// shared store), every admitted request is answered 200 with a whole answer and every other
/// one 429 — no 500, no hang (every request has a timeout) — the audit chain verifies
/// afterwards, and Redis's connections stay bounded (the peak is printed). Key creation
/// answers 201. A run that straddles a minute boundary sees two windows and is redone once in
/// the next minute with a fresh key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_across_two_replicas_admits_exactly_the_limit_and_answers_every_admitted_request() {
    if skip_on_sqlite("a_burst_across_two_replicas_admits_exactly_the_limit") {
        return;
    }
    let redis = RedisServer::start("burst");
    let mock = mock().await;
    let rc = redis.runtime_config();
    let a = Replica::start("burst-a", &rc, &mock);
    let b = Replica::start("burst-b", &rc, &mock);
    let addrs = [a.addr(), b.addr()];
    let total = 1500usize;
    for attempt in 0..2 {
        // Start early in a minute so the burst fits in one window.
        let sec = unix_secs() % 60;
        if sec >= 30 {
            tokio::time::sleep(Duration::from_secs(60 - sec)).await;
        }
        let key = create_key(a.addr(), 600).await;
        let window = unix_secs() / 60;
        let sampler = ClientSampler::start(&redis.url());
        let began = Instant::now();
        let body = chat_body("gpt-4o-mini", "hi [mock tokens=2]").to_string();
        let outcomes: Vec<Result<(u16, bool), String>> = stream::iter(0..total)
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
                    .map(|r| {
                        let whole = serde_json::from_slice::<Value>(&r.body)
                            .is_ok_and(|v| v["choices"][0]["finish_reason"] == "stop");
                        (r.status, whole)
                    })
                }
            })
            .buffer_unordered(BURST_CONCURRENCY)
            .collect()
            .await;
        let took = began.elapsed();
        let peak = sampler.peak();
        drop(sampler);
        if unix_secs() / 60 != window {
            assert_eq!(
                attempt, 0,
                "two bursts in a row straddled a minute boundary"
            );
            continue;
        }
        let ok = outcomes
            .iter()
            .filter(|o| matches!(o, Ok((200, _))))
            .count();
        let whole = outcomes
            .iter()
            .filter(|o| matches!(o, Ok((200, true))))
            .count();
        let limited = outcomes
            .iter()
            .filter(|o| matches!(o, Ok((429, _))))
            .count();
        let other: Vec<_> = outcomes
            .iter()
            .filter(|o| !matches!(o, Ok((200, _)) | Ok((429, _))))
            .take(5)
            .collect();
        eprintln!(
            "{}: burst of {total} across two replicas (limit 600/min, {BURST_CONCURRENCY} in flight) \
             in {:.1}s: {ok} admitted and answered 200, {limited} refused with 429, {} other; \
             peak Redis connected_clients {peak} (this test's sampler included)",
            Runtime::current().name(),
            took.as_secs_f64(),
            total - ok - limited
        );
        assert!(other.is_empty(), "neither 200 nor 429: {other:?}");
        assert_eq!(
            whole, ok,
            "admitted requests answered without a whole answer"
        );
        assert!((594..=606).contains(&ok), "admitted {ok}, not 600 ± 1 %");
        assert_eq!(ok + limited, total);
        // One connection per request in flight at most (lumen-host pools them; Spin multiplexes
        // one per process), plus the sampler's.
        assert!(
            peak <= BURST_CONCURRENCY as u64 + 1,
            "Redis connections not bounded: peak {peak}"
        );
        let v = admin(b.addr(), "GET", "/admin/audit/verify", None).await;
        assert_eq!(v["ok"], true, "{v}");
        assert!(
            v["checked"].as_u64().unwrap_or(0) > ok as u64,
            "the chain holds every admitted request and the key's creation: {v}"
        );
        return;
    }
}

/// Under load across two replicas, one is killed with SIGKILL. The survivor then verifies the
/// whole audit chain, and every request a client saw complete (200 with a full body, or a
/// stream that reached `[DONE]`) has its usage record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_keeps_the_chain_and_every_completed_record() {
    if skip_on_sqlite("sigkill_under_load_keeps_the_chain_and_every_completed_record") {
        return;
    }
    let redis = RedisServer::start("kill");
    let mock = mock().await;
    let rc = redis.runtime_config();
    let mut a = Replica::start("kill-a", &rc, &mock);
    let b = Replica::start("kill-b", &rc, &mock);
    let key = create_key(b.addr(), 100_000).await;
    let addrs = [a.addr(), b.addr()];
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

    let v = admin(b.addr(), "GET", "/admin/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{v}");
    let recs = try_send(
        b.addr(),
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
    // A slot the killed replica took but never wrote holds sealing back until it is voided,
    // once a later entry is older than the log's VOID_AFTER_MS (60 s; shared/src/store/log.rs):
    // then the chain verifies through every completed request.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut v = v;
    while v["checked"].as_u64().unwrap_or(0) < completed.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "lost slots not voided within 120 s: {v}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        v = admin(b.addr(), "GET", "/admin/audit/verify", None).await;
        assert_eq!(v["ok"], true, "{v}");
    }
    eprintln!("after voiding lost slots: {v}");
}
