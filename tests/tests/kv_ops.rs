//! Key-value round trips per route, as lumen-host counts them (`HostOptions::kv_log`, one JSON
//! line per request). On Spin's SQLite and Redis stores every operation is a round trip, so each
//! route has a ceiling here and a change that adds one fails. Raise a ceiling only with a reason
//! in the commit and in bench/RESULTS.md.

mod common;

use common::{chat_body, Gateway, Resp};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// (total, writes) a request may cost.
struct Ceiling {
    total: u64,
    writes: u64,
}

/// A warm chat: the key record, one batch of reads (the candidates' health and the tenant's
/// record); the rpm increment, the log's seq increment and the log entry.
const WARM_CHAT: Ceiling = Ceiling {
    total: 5,
    writes: 3,
};
/// A 401 with a key that does not exist: one read of its hash.
const UNAUTHORIZED: Ceiling = Ceiling {
    total: 1,
    writes: 0,
};
/// A 401 without any key: nothing.
const NO_KEY: Ceiling = Ceiling {
    total: 0,
    writes: 0,
};
/// A 429: the key record and the rpm increment that refused it.
const RATE_LIMITED: Ceiling = Ceiling {
    total: 2,
    writes: 1,
};
/// `GET /v1/models`: the key record.
const MODELS: Ceiling = Ceiling {
    total: 1,
    writes: 0,
};

/// The log line of the request that answered `r`, waiting for its instance to finish.
fn ops_of(log: &std::path::Path, r: &Resp) -> Value {
    let id = r.header("x-request-id").expect("x-request-id").to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == id.as_str())
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no KV log line for {id} in {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(what: &str, line: &Value, c: &Ceiling) {
    let (total, writes) = (
        line["total"].as_u64().unwrap(),
        line["writes"].as_u64().unwrap(),
    );
    eprintln!(
        "{what}: {total} KV operations ({writes} writes): {}",
        line["ops"]
    );
    assert!(
        total <= c.total && writes <= c.writes,
        "{what} costs {total} KV operations ({writes} writes), over its ceiling of {} ({} writes): {line}",
        c.total,
        c.writes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_stays_under_its_kv_ceiling() {
    let dir = common::procs::temp_dir("kv-ops");
    let log = dir.join("kv.log");
    let gw = Gateway::start_with(
        lumen_tests::mock::MockConfig {
            api_key: Some(common::UPSTREAM_KEY.into()),
            ..Default::default()
        },
        |o| o.kv_log = Some(log.clone()),
    )
    .await;
    let (key, _) = gw.create_key(3, &[]).await;

    // Warm up: the first request of a minute window also drops an old window, and the first
    // answer of a provider writes its health record.
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "warm [mock tokens=2]"))
        .await;
    assert_eq!(r.status, 200);
    ops_of(&log, &r);

    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "hi [mock tokens=2]"))
        .await;
    assert_eq!(r.status, 200);
    check("warm non-stream chat", &ops_of(&log, &r), &WARM_CHAT);

    let mut body = chat_body("gpt-4o-mini", "hi [mock tokens=4]");
    body["stream"] = json!(true);
    let r = gw.chat(&key, body).await;
    assert_eq!(r.status, 200);
    check("warm stream", &ops_of(&log, &r), &WARM_CHAT);

    // The key allows 3 a minute: this one is refused.
    let r = gw.chat(&key, chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    check("429", &ops_of(&log, &r), &RATE_LIMITED);

    let r = gw
        .chat(
            "lm_not_a_key_at_all_000000000000000000000000",
            chat_body("gpt-4o-mini", "hi"),
        )
        .await;
    assert_eq!(r.status, 401);
    check("401 (unknown key)", &ops_of(&log, &r), &UNAUTHORIZED);

    let r = gw
        .call(
            "POST",
            "/v1/chat/completions",
            None,
            Some(chat_body("gpt-4o-mini", "hi").to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 401);
    check("401 (no key)", &ops_of(&log, &r), &NO_KEY);

    let r = gw.call("GET", "/v1/models", Some(&key), None).await;
    assert_eq!(r.status, 200);
    check("GET /v1/models", &ops_of(&log, &r), &MODELS);
    drop(gw);
    std::fs::remove_dir_all(&dir).ok();
}

/// Where the mounted catalog is a copy of the built one (as Spin mounts it), the router learns
/// that from a record in the health batch it reads anyway: the first chat reads the file and
/// writes the record (one more write, once); the next one stays under the warm ceiling and
/// writes only its log entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_catalog_costs_one_write_once() {
    let dir = common::procs::temp_dir("kv-ops-copy");
    let log = dir.join("kv.log");
    let cfg = common::config::Config::new("", "");
    let shipped = std::fs::read(common::repo().join("config/catalog.toml")).unwrap();
    std::fs::write(cfg.dir.join("config/catalog.toml"), shipped).unwrap();
    let gw = Gateway::start_config(&cfg, |o| o.kv_log = Some(log.clone())).await;
    let (key, _) = gw.create_key(100, &[]).await;
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "warm [mock tokens=2]"))
        .await;
    assert_eq!(r.status, 200);
    ops_of(&log, &r);
    assert_eq!(
        gw.store_keys("v2/catalog/mount/").len(),
        1,
        "the first chat records the copy"
    );
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "hi [mock tokens=2]"))
        .await;
    assert_eq!(r.status, 200);
    let next = ops_of(&log, &r);
    check("warm chat on a copied catalog", &next, &WARM_CHAT);
    assert_eq!(next["ops"]["set"], 1, "{next}");
    drop(gw);
    std::fs::remove_dir_all(&dir).ok();
}
