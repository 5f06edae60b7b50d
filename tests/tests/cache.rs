//! End-to-end: the exact response cache (issue 14). Deterministic requests are cached per tenant;
//! a hit is served without a model, metered at cost 0 with what it saved, whole or as the
//! original stream; no-store, zero retention and opted-out requests never read or write it; an
//! entry expires by its TTL; and a request that does not use the cache costs no extra KV
//! operation.

mod common;

use common::*;
use lumen_host::kv::KvBackend;
use lumen_host::KvLayer;
use lumen_tests::mock::MockConfig;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn det(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

/// Waits until the store holds `n` cache entries (the fill runs after the response).
async fn entries(gw: &Gateway, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Vec<String> = gw
            .store_keys("v1/cache/")
            .into_iter()
            .filter(|k| !k.starts_with("v1/cache-bytes/"))
            .collect();
        if keys.len() >= n || Instant::now() > deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(gw: &Gateway, body: Value) -> String {
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["key"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_deterministic_request_is_a_hit_whole_and_streamed() {
    let gw = Gateway::start().await;
    let key = create(&gw, json!({"name": "c", "tenant": "acme"})).await;

    // Whole: a miss, then a hit with the same content, cost 0 and what it saved.
    let body = det("whole [mock tokens=5]");
    let miss = gw.chat(&key, body.clone()).await;
    assert_eq!(miss.status, 200, "{}", String::from_utf8_lossy(&miss.body));
    assert_eq!(miss.header("x-lumen-cache"), Some("miss"));
    let m = miss.json();
    assert_eq!(m["lumen"]["cache"]["status"], "miss");
    let cost = m["lumen"]["cost"].as_f64().unwrap();
    assert!(cost > 0.0);
    assert_eq!(entries(&gw, 1).await.len(), 1);
    assert!(entries(&gw, 1).await[0].starts_with("v1/cache/acme/"));
    let hit = gw.chat(&key, body.clone()).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-lumen-cache"), Some("hit"));
    assert_eq!(hit.header("x-lumen-cost"), Some("0.000000000"));
    assert_eq!(hit.header("x-lumen-model"), Some("gpt-4o-mini"));
    assert!(hit.header("content-length").is_some());
    let h = hit.json();
    for field in ["id", "choices", "usage", "model", "created"] {
        assert_eq!(h[field], m[field], "{field}");
    }
    assert_eq!(h["lumen"]["cost"], 0.0);
    assert_eq!(h["lumen"]["cache"]["status"], "hit");
    assert_eq!(h["lumen"]["cache"]["saved"].as_f64(), Some(cost));
    assert_eq!(gw.mock.request_count(), 1, "the hit reached no model");

    // Streamed with usage: a miss, then a hit with the original chunking and the usage chunk.
    let sbody = json!({"model": "gpt-4o-mini", "seed": 7, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream [mock tokens=4]"}]});
    let s1 = stream(gw.addr(), "/v1/chat/completions", &key, sbody.clone(), None).await;
    assert_eq!(s1.headers.get("x-lumen-cache").unwrap(), "miss");
    entries(&gw, 2).await;
    let s2 = stream(gw.addr(), "/v1/chat/completions", &key, sbody.clone(), None).await;
    assert_eq!(s2.status, 200);
    assert_eq!(s2.headers.get("x-lumen-cache").unwrap(), "hit");
    assert_eq!(s2.headers.get("content-type").unwrap(), "text/event-stream");
    let (d1, d2) = (s1.data(), s2.data());
    assert_eq!(d1.len(), d2.len(), "{d1:?}\n{d2:?}");
    assert_eq!(d2.last().unwrap(), "[DONE]");
    let strip = |d: &str| -> Value {
        let mut v: Value = serde_json::from_str(d).unwrap();
        if let Some(o) = v.as_object_mut() {
            o.remove("lumen");
            if o.get("usage").is_some_and(Value::is_null) {
                o.remove("usage");
            }
        }
        v
    };
    for (a, b) in d1.iter().zip(&d2).take(d1.len() - 2) {
        assert_eq!(strip(a), strip(b));
    }
    let last: Value = serde_json::from_str(&d2[d2.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(last["lumen"]["cost"], 0.0);
    assert!(last["lumen"]["cache"]["saved"].as_f64().unwrap() > 0.0);
    // The same stream without a usage chunk: the hit leaves it out, the lumen object moves to
    // the finish chunk.
    let mut plain = sbody.clone();
    plain.as_object_mut().unwrap().remove("stream_options");
    let s3 = stream(gw.addr(), "/v1/chat/completions", &key, plain, None).await;
    assert_eq!(s3.headers.get("x-lumen-cache").unwrap(), "hit");
    let d3 = s3.data();
    assert_eq!(d3.len(), d2.len() - 1);
    let fin: Value = serde_json::from_str(&d3[d3.len() - 2]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    assert_eq!(fin["lumen"]["cache"]["status"], "hit");
    assert_eq!(gw.mock.request_count(), 2);

    // Metered: every request appears in /v1/usage; hits cost nothing and say what they saved.
    let usage = gw.usage_until(&key, |v| v["total"]["requests"] == 5).await;
    assert_eq!(usage["total"]["requests"], 5, "{usage}");
    assert_eq!(usage["total"]["cache_hits"], 3, "{usage}");
    assert!(usage["total"]["cache_saved_usd"].as_f64().unwrap() > cost);
    let recs = gw
        .call("GET", "/v1/usage/records", Some(&key), None)
        .await
        .json();
    let recs = recs["data"].as_array().unwrap();
    let hits: Vec<&Value> = recs.iter().filter(|r| r["cache"] == "hit").collect();
    assert_eq!(hits.len(), 3);
    assert!(hits
        .iter()
        .all(|r| r["cost_nanos"] == 0 && r["cached_cost_nanos"].as_i64() > Some(0)));
    assert_eq!(recs.iter().filter(|r| r["cache"] == "miss").count(), 2);
    // The chain still verifies with the new fields.
    let v = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_misses_and_only_deterministic_requests_are_cached() {
    let gw = Gateway::start().await;
    let a = create(&gw, json!({"name": "a", "tenant": "t-a"})).await;
    let b = create(&gw, json!({"name": "b", "tenant": "t-b"})).await;
    let body = det("tenants [mock tokens=2]");
    assert_eq!(
        gw.chat(&a, body.clone()).await.header("x-lumen-cache"),
        Some("miss")
    );
    entries(&gw, 1).await;
    assert_eq!(
        gw.chat(&a, body.clone()).await.header("x-lumen-cache"),
        Some("hit")
    );
    let other = gw.chat(&b, body.clone()).await;
    assert_eq!(other.header("x-lumen-cache"), Some("miss"));
    assert_eq!(gw.mock.request_count(), 2);
    entries(&gw, 2).await;

    // Not deterministic: bypassed, nothing written; unless the request opts in.
    let mut hot = det("hot [mock tokens=2]");
    hot["temperature"] = json!(0.7);
    let r = gw.chat(&a, hot.clone()).await;
    assert_eq!(r.header("x-lumen-cache"), Some("bypass"));
    assert!(r.json()["lumen"].get("cache").is_none());
    assert_eq!(entries(&gw, 3).await.len(), 2);
    hot["lumen"] = json!({"cache": true});
    assert_eq!(
        gw.chat(&a, hot.clone()).await.header("x-lumen-cache"),
        Some("miss")
    );
    entries(&gw, 3).await;
    assert_eq!(gw.chat(&a, hot).await.header("x-lumen-cache"), Some("hit"));
    // A bad option is a 400 naming it.
    let mut bad = det("bad");
    bad["lumen"] = json!({"cache": {"ttl": 5}});
    let e = gw.chat(&a, bad).await.error(400);
    assert_eq!(e["param"], "lumen.cache.ttl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_zero_retention_and_opt_outs_never_write() {
    let gw = Gateway::start().await;
    let key = create(&gw, json!({"name": "k"})).await;
    let zr = create(&gw, json!({"name": "zr", "zero_retention": true})).await;
    let free = create(&gw, json!({"name": "f", "plan": "free"})).await;
    let off = create(&gw, json!({"name": "off", "cache": {"enabled": false}})).await;
    let body = det("private [mock tokens=2]");
    let r = send_with(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        Some(&key),
        Some(body.to_string().into_bytes()),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!((r.status, r.header("x-lumen-cache")), (200, Some("bypass")));
    for k in [&zr, &free, &off] {
        for _ in 0..2 {
            let r = gw.chat(k, body.clone()).await;
            assert_eq!((r.status, r.header("x-lumen-cache")), (200, Some("bypass")));
        }
    }
    let mut opt_out = body.clone();
    opt_out["lumen"] = json!({"cache": false});
    assert_eq!(
        gw.chat(&key, opt_out).await.header("x-lumen-cache"),
        Some("bypass")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.store_keys("v1/cache"), Vec::<String>::new());
    assert_eq!(gw.mock.request_count(), 8, "every request went upstream");
    // The views say so.
    let keys = gw
        .call("GET", "/admin/keys", Some(ADMIN), None)
        .await
        .json();
    let zr_view = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "zr")
        .unwrap()
        .clone();
    assert_eq!(zr_view["zero_retention"], true);
    // no-cache: no lookup, but the answer is written.
    let r = send_with(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        Some(&key),
        Some(body.to_string().into_bytes()),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.header("x-lumen-cache"), Some("miss"));
    assert_eq!(entries(&gw, 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_expires_with_its_ttl() {
    let gw = Gateway::start().await;
    let key = create(&gw, json!({"name": "ttl"})).await;
    let mut body = det("ttl [mock tokens=2]");
    body["lumen"] = json!({"cache": {"ttl_s": 1}});
    assert_eq!(
        gw.chat(&key, body.clone()).await.header("x-lumen-cache"),
        Some("miss")
    );
    entries(&gw, 1).await;
    assert_eq!(
        gw.chat(&key, body.clone()).await.header("x-lumen-cache"),
        Some("hit")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.chat(&key, body.clone()).await.header("x-lumen-cache"),
        Some("miss")
    );
    assert_eq!(gw.mock.request_count(), 2);
    // A key's own TTL applies to requests that name none.
    let short = create(&gw, json!({"name": "short", "cache": {"ttl_s": 1}})).await;
    let b2 = det("key ttl [mock tokens=2]");
    assert_eq!(
        gw.chat(&short, b2.clone()).await.header("x-lumen-cache"),
        Some("miss")
    );
    entries(&gw, 2).await;
    assert_eq!(
        gw.chat(&short, b2.clone()).await.header("x-lumen-cache"),
        Some("hit")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.chat(&short, b2).await.header("x-lumen-cache"),
        Some("miss")
    );
    let e = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(
                json!({"name": "x", "cache": {"ttl_s": 0}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await
        .error(400);
    assert_eq!(e["param"], "cache");
}

/// Reads the KV log line of each request id.
fn kv_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn ops_of(path: &std::path::Path, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = kv_lines(path)
            .into_iter()
            .find(|l| l["request_id"] == request_id)
        {
            return l;
        }
        assert!(Instant::now() < deadline, "no KV log line for {request_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_cache_costs_in_key_value_operations() {
    let rt = common::runtime::Runtime::current();
    if rt.is_spin() {
        eprintln!(
            "skipped under {}: the KV operation log is lumen-host's (LUMEN_HOST_KV_LOG)",
            rt.name()
        );
        return;
    }
    let log = std::env::temp_dir().join(format!("lumen-kv-cache-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let path = log.clone();
    let gw = Gateway::start_with(
        lumen_tests::mock::MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..Default::default()
        },
        move |o| o.kv_log = Some(path),
    )
    .await;
    let key = create(&gw, json!({"name": "ops"})).await;
    let mut hot = det("warm up [mock tokens=2]");
    hot["temperature"] = json!(1);
    // Warm the catalog and health records, then measure.
    for _ in 0..2 {
        gw.chat(&key, hot.clone()).await;
    }
    let plain = gw.chat(&key, hot.clone()).await;
    let plain = ops_of(&log, plain.header("x-request-id").unwrap()).await;
    let miss = gw.chat(&key, det("ops [mock tokens=2]")).await;
    assert_eq!(miss.header("x-lumen-cache"), Some("miss"));
    let miss = ops_of(&log, miss.header("x-request-id").unwrap()).await;
    let hit = gw.chat(&key, det("ops [mock tokens=2]")).await;
    assert_eq!(hit.header("x-lumen-cache"), Some("hit"));
    let hit = ops_of(&log, hit.header("x-request-id").unwrap()).await;
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    eprintln!("KV ops: uncached {plain}\nmiss {miss}\nhit {hit}");
    // A request that does not use the cache pays nothing for it.
    assert_eq!(n(&plain, "total"), 5, "{plain}");
    assert_eq!(n(&plain, "writes"), 3, "{plain}");
    // A miss: one lookup, then one increment (the tenant's bytes) and one set (the entry).
    assert_eq!(n(&miss, "reads"), n(&plain, "reads") + 1, "{miss}");
    assert_eq!(n(&miss, "writes"), n(&plain, "writes") + 2, "{miss}");
    // A hit: the lookup instead of the model; no hold, no entry written.
    assert!(n(&hit, "total") <= n(&plain, "total") + 1, "{hit}");
    let _ = std::fs::remove_file(&log);
}

/// A store that holds every write to the audit log (`v2/log/`) until the test opens the gate
/// (or 20 s pass), counting the writes it holds.
struct HeldLog {
    inner: Arc<dyn KvBackend>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    held: Arc<AtomicUsize>,
}

impl HeldLog {
    fn hold(&self, key: &str) {
        if !key.starts_with("v2/log/") {
            return;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        let (open, cv) = &*self.gate;
        let open = open.lock().unwrap();
        let _ = cv
            .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
            .unwrap();
    }
}

impl KvBackend for HeldLog {
    fn get(&self, s: &str, k: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        self.inner.get(s, k)
    }
    fn set(&self, s: &str, k: &str, v: &[u8]) -> wasmtime::Result<()> {
        self.hold(k);
        self.inner.set(s, k, v)
    }
    fn delete(&self, s: &str, k: &str) -> wasmtime::Result<()> {
        self.inner.delete(s, k)
    }
    fn keys(&self, s: &str) -> wasmtime::Result<Vec<String>> {
        self.inner.keys(s)
    }
    fn increment(&self, s: &str, k: &str, d: i64) -> wasmtime::Result<i64> {
        self.hold(k);
        self.inner.increment(s, k, d)
    }
    fn compare_and_swap(
        &self,
        s: &str,
        k: &str,
        e: Option<&[u8]>,
        n: &[u8],
    ) -> wasmtime::Result<bool> {
        self.inner.compare_and_swap(s, k, e, n)
    }
}

/// A hit's answer leaves before its settlement is written (nothing in it depends on the
/// settlement). Before lumen-host suspended an instance at its first key-value operation after
/// its response was set, the woken connection task waited in the worker's next-task slot until
/// the guest ended, so the hit's answer waited for its audit-log writes; here those writes are
/// held until the answer has arrived, and the answer must arrive meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_answers_before_its_settlement_is_written() {
    let rt = common::runtime::Runtime::current();
    if rt.is_spin() {
        eprintln!(
            "skipped under {}: the held store is lumen-host's (Spin's key-value calls already \
             suspend the instance)",
            rt.name()
        );
        return;
    }
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let held = Arc::new(AtomicUsize::new(0));
    let (g, h) = (gate.clone(), held.clone());
    let layer = KvLayer(Arc::new(move |_label: &str, inner| {
        Arc::new(HeldLog {
            inner,
            gate: g.clone(),
            held: h.clone(),
        }) as Arc<dyn KvBackend>
    }));
    let gw = Gateway::start_with(
        MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        },
        move |o| o.kv_layer = Some(layer),
    )
    .await;
    let key = create(&gw, json!({"name": "held"})).await;
    for stream in [false, true] {
        let mut body = det(&format!("held {stream} [mock tokens=3]"));
        body["stream"] = json!(stream);
        let miss = gw.chat(&key, body.clone()).await;
        assert_eq!(miss.header("x-lumen-cache"), Some("miss"));
        assert_eq!(
            entries(&gw, 1 + usize::from(stream)).await.len(),
            1 + usize::from(stream)
        );
        // Close the gate: from now on, audit-log writes wait.
        *gate.0.lock().unwrap() = false;
        let before = held.load(Ordering::SeqCst);
        let hit = tokio::time::timeout(Duration::from_secs(5), gw.chat(&key, body.clone())).await;
        // The settlement reaches its first log write after the answer has left: wait for it
        // to be held (the gate still closed) before opening the gate.
        let deadline = Instant::now() + Duration::from_secs(5);
        while held.load(Ordering::SeqCst) == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let waiting = held.load(Ordering::SeqCst) - before;
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let hit = hit.unwrap_or_else(|_| {
            panic!("stream {stream}: the hit's answer waited for its audit-log writes")
        });
        assert_eq!(hit.status, 200);
        assert_eq!(hit.header("x-lumen-cache"), Some("hit"));
        assert!(
            waiting >= 1,
            "stream {stream}: the hit wrote no log entry while answering"
        );
    }
    // Released, both settlements land: the hits are in /v1/usage.
    let usage = gw
        .usage_until(&key, |v| v["total"]["cache_hits"] == 2)
        .await;
    assert_eq!(usage["total"]["cache_hits"], 2, "{usage}");
}
