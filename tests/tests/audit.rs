//! The audit chain through the gateway: settled requests and admin actions are appended, the
//! head is readable, and tampering with one stored entry (edited straight in the store)
//! is detected and named. The edit goes around the gateway, into whatever store the runtime
//! uses (lumen-host's, Spin's SQLite file, or the Redis two Spin processes share).

mod common;

use common::{chat_body, Gateway, ADMIN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_one_entry_is_detected() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    for i in 0..4 {
        let r = gw
            .chat(
                &key,
                chat_body("gpt-4o-mini", &format!("n{i} [mock tokens=3]")),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    gw.usage_until(&key, |u| u["total"]["requests"] == json!(4))
        .await;
    let head = gw
        .call("GET", "/admin/audit/head", Some(ADMIN), None)
        .await
        .json();
    // One admin action (key.create) and four requests.
    assert_eq!(head["seq"], 5, "{head}");
    assert_eq!(head["hash"].as_str().unwrap().len(), 64);
    let v = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(
        (v["ok"].clone(), v["checked"].clone()),
        (json!(true), json!(5)),
        "{v}"
    );
    gw.call("GET", "/admin/audit/verify", Some(&key), None)
        .await
        .error(401);

    // Change the cost of entry 3 in the store itself (the head above anchored it).
    let rows: Vec<(String, Vec<u8>)> = gw
        .store_keys("v2/log/entry/")
        .into_iter()
        .map(|k| {
            let v = gw.store_get(&k).expect("listed key");
            (k, v)
        })
        .collect();
    let (k, bytes) = rows.iter().find(|(k, _)| k == "v2/log/entry/3").unwrap();
    let mut entry: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(entry["kind"], "request");
    assert_eq!(entry["seq"], 3);
    for field in [
        "time_ms",
        "kind",
        "subject",
        "key_id",
        "model",
        "provider",
        "prompt_tokens",
        "completion_tokens",
        "cost_nanos",
        "outcome",
    ] {
        assert!(entry.get(field).is_some(), "entry lacks {field}: {entry}");
    }
    assert!(
        !entry.to_string().contains("n2"),
        "no content is stored: {entry}"
    );
    entry["cost_nanos"] = json!(0);
    gw.store_set(k, &serde_json::to_vec(&entry).unwrap());
    let v = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["seq"], 3, "{v}");
    assert_eq!(
        v["first_broken"]["reason"], "entry content does not match its sealed hash",
        "{v}"
    );
    assert_eq!(v["first_broken"]["hash"].as_str().unwrap().len(), 64, "{v}");
}
