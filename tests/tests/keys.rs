//! Key lifecycle through the admin API (create, rotate, expire, revoke) and tenant isolation of
//! usage: a key reads only its own usage; only the admin token reads another's.

mod common;

use common::{chat_body, Gateway, ADMIN};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn create(gw: &Gateway, body: Value) -> Value {
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn chat_status(gw: &Gateway, key: &str) -> u16 {
    gw.chat(key, chat_body("gpt-4o-mini", "hi [mock tokens=2]"))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_swaps_the_secret_and_keeps_the_id() {
    let gw = Gateway::start().await;
    let v = create(&gw, json!({"name": "rot"})).await;
    let (old, id) = (v["key"].as_str().unwrap(), v["id"].as_str().unwrap());
    assert_eq!(chat_status(&gw, old).await, 200);
    let r = gw
        .call(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rotated = r.json();
    let new = rotated["key"].as_str().unwrap();
    assert_eq!(rotated["id"], id);
    assert_ne!(new, old);
    assert!(rotated["rotated"].as_u64().is_some(), "{rotated}");
    let e = gw
        .chat(old, chat_body("gpt-4o-mini", "hi"))
        .await
        .error(401);
    assert_eq!(e["code"], "invalid_api_key");
    assert_eq!(chat_status(&gw, new).await, 200);
    // Usage follows the id across the rotation.
    let u = gw
        .usage_until(new, |u| u["total"]["requests"] == json!(2))
        .await;
    assert_eq!(u["total"]["requests"], 2, "{u}");
    // Only admins rotate; unknown ids are 404.
    let r = gw
        .call("POST", &format!("/admin/keys/{id}/rotate"), Some(new), None)
        .await;
    r.error(401);
    let r = gw
        .call("POST", "/admin/keys/key_nope/rotate", Some(ADMIN), None)
        .await;
    assert_eq!(r.error(404)["code"], "key_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_immediate() {
    let gw = Gateway::start().await;
    let v = create(&gw, json!({"name": "rev"})).await;
    let (key, id) = (v["key"].as_str().unwrap(), v["id"].as_str().unwrap());
    assert_eq!(chat_status(&gw, key).await, 200);
    let r = gw
        .call("DELETE", &format!("/admin/keys/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200);
    gw.chat(key, chat_body("gpt-4o-mini", "hi"))
        .await
        .error(401);
    gw.call("GET", "/v1/usage", Some(key), None)
        .await
        .error(401);
    let list = gw
        .call("GET", "/admin/keys", Some(ADMIN), None)
        .await
        .json();
    assert!(
        !list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_refused() {
    let gw = Gateway::start().await;
    // Expiry set at creation passes on its own.
    let v = create(&gw, json!({"name": "exp", "expires_at": now_secs() + 2})).await;
    let key = v["key"].as_str().unwrap().to_string();
    assert_eq!(chat_status(&gw, &key).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let e = gw
        .chat(&key, chat_body("gpt-4o-mini", "hi"))
        .await
        .error(401);
    assert_eq!(e["code"], "expired_api_key", "{e}");
    // Expiry can be moved by the admin API: cleared, then set in the past.
    let path = format!("/admin/keys/{}", v["id"].as_str().unwrap());
    let patch = |body: Value| {
        gw.call(
            "PATCH",
            &path,
            Some(ADMIN),
            Some(body.to_string().into_bytes()),
        )
    };
    assert_eq!(patch(json!({"expires_at": null})).await.status, 200);
    assert_eq!(chat_status(&gw, &key).await, 200);
    assert_eq!(patch(json!({"expires_at": 1})).await.status, 200);
    assert_eq!(
        gw.chat(&key, chat_body("gpt-4o-mini", "hi"))
            .await
            .error(401)["code"],
        "expired_api_key"
    );
    let bad = patch(json!({"expires": 1})).await;
    assert!(bad.error(400)["message"]
        .as_str()
        .unwrap()
        .contains("expires"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reads_only_its_own_usage() {
    let gw = Gateway::start().await;
    let a = create(&gw, json!({"name": "a", "tenant": "alpha"})).await;
    let b = create(&gw, json!({"name": "b", "tenant": "beta"})).await;
    let (ka, kb) = (a["key"].as_str().unwrap(), b["key"].as_str().unwrap());
    let (ia, ib) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let mut a_ids = Vec::new();
    for _ in 0..2 {
        let r = gw
            .chat(ka, chat_body("gpt-4o-mini", "a [mock tokens=3]"))
            .await;
        assert_eq!(r.status, 200);
        a_ids.push(r.header("x-request-id").unwrap().to_string());
    }
    let r = gw.chat(kb, chat_body("gpt-4o", "b [mock tokens=5]")).await;
    assert_eq!(r.status, 200);
    let b_id = r.header("x-request-id").unwrap().to_string();

    let own = gw
        .usage_until(ka, |u| u["total"]["requests"] == json!(2))
        .await;
    assert_eq!(own["total"]["requests"], 2, "{own}");
    // Asking for another key's usage with a key still answers with the caller's own.
    for q in [
        format!("?key_id={ib}"),
        format!("?tenant=beta&key_ids={ib}"),
    ] {
        let r = gw
            .call("GET", &format!("/v1/usage{q}"), Some(ka), None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["total"]["requests"], 2, "{q}");
    }
    let recs = gw
        .call("GET", "/v1/usage/records", Some(ka), None)
        .await
        .json();
    let ids: Vec<&str> = recs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{recs}");
    assert!(a_ids.iter().all(|i| ids.contains(&i.as_str())));
    assert!(!ids.contains(&b_id.as_str()));
    // The admin variants need the admin token; a tenant key gets 401.
    for path in [
        format!("/admin/usage?key_id={ib}"),
        format!("/admin/usage/records?key_id={ib}"),
        "/admin/usage?tenant=beta".to_string(),
    ] {
        gw.call("GET", &path, Some(ka), None).await.error(401);
    }
    let theirs = gw
        .call(
            "GET",
            &format!("/admin/usage?key_id={ib}"),
            Some(ADMIN),
            None,
        )
        .await
        .json();
    assert_eq!(theirs["total"]["requests"], 1, "{theirs}");
    let tenant = gw
        .call(
            "GET",
            "/admin/usage?tenant=alpha&group_by=key",
            Some(ADMIN),
            None,
        )
        .await
        .json();
    assert_eq!(tenant["data"][0]["key_id"], ia, "{tenant}");
    assert_eq!(tenant["data"].as_array().unwrap().len(), 1, "{tenant}");

    // Filters, grouping and CSV.
    let by_model = gw
        .call(
            "GET",
            "/v1/usage?group_by=model&model=gpt-4o-mini",
            Some(ka),
            None,
        )
        .await
        .json();
    assert_eq!(by_model["data"][0]["model"], "gpt-4o-mini", "{by_model}");
    assert!(by_model["data"][0].get("day").is_none(), "{by_model}");
    let none = gw
        .call(
            "GET",
            "/v1/usage?from=2000-01-01&to=2000-01-31",
            Some(ka),
            None,
        )
        .await
        .json();
    assert_eq!(none["total"]["requests"], 0, "{none}");
    let csv = gw
        .call("GET", "/v1/usage?format=csv&group_by=day", Some(ka), None)
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let text = String::from_utf8_lossy(&csv.body).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "day,model,key_id,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd,saved_usd"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].contains(",,,2,0,"), "{text}");
    let e = gw
        .call("GET", "/v1/usage?group_by=week", Some(ka), None)
        .await
        .error(400);
    assert_eq!(e["param"], "group_by");
}
