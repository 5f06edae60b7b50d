//! What orchestrators and monitoring call: `/healthz` (alive, no credentials, no KV),
//! `/readyz` (KV and catalog, 503 naming what failed) and `/metrics` (admin token). The
//! Prometheus text itself is parsed with a Prometheus parser in
//! `tests/python/test_observability.py`.

mod common;

use common::procs::{temp_dir, RedisServer};
use common::runtime::skip_under_spin;
use common::{chat_body, Gateway, ADMIN, UPSTREAM_KEY};
use lumen_tests::mock::MockConfig;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn probes_need_no_credentials_and_metrics_needs_the_admin_token() {
    let gw = Gateway::start().await;
    let r = gw.call("GET", "/healthz", None, None).await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = gw.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(gw.call("POST", "/healthz", None, None).await.status, 405);

    let r = gw.call("GET", "/metrics", None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error(401)["type"], "authentication_error");
    let r = gw.call("GET", "/metrics", Some("lm_wrong"), None).await;
    assert_eq!(r.status, 401);

    let (key, _) = gw.create_key(600, &[]).await;
    assert_eq!(
        gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await.status,
        200
    );
    let r = gw.call("GET", "/metrics", Some(ADMIN), None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("lumen_requests_total{model=\"gpt-4o-mini\"} 1\n"),
        "{text}"
    );
}

/// The default store is a Redis server that goes away after start: `/readyz` says 503 naming
/// the key-value store, `/healthz` still says the process is alive.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_when_the_store_is_unreachable() {
    if skip_under_spin(
        "readyz_is_503_when_the_store_is_unreachable",
        "under Spin 4.1 a KV call to a Redis that went away may block past the client's 20 s \
         (seen on spin-sqlite with the default store on Redis: /readyz or /healthz did not \
         answer), and the spin-redis leg's Redis is its own",
    ) {
        return;
    }
    let redis = RedisServer::start("readyz");
    let rc = redis.runtime_config();
    let state = temp_dir("readyz-state");
    let gw = Gateway::start_with(
        MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        },
        |o| {
            o.memory_kv = false;
            o.runtime_config = Some(rc);
            o.state_dir = Some(state);
        },
    )
    .await;
    let r = gw.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    drop(redis);
    let r = gw.call("GET", "/readyz", None, None).await;
    let e = r.error(503);
    assert_eq!(e["code"], "kv_unavailable");
    assert_eq!(e["param"], "key-value store");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("key-value store")),
        "{e}"
    );
    let r = gw.call("GET", "/healthz", None, None).await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
}
