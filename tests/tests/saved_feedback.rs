//! End-to-end "what you saved" and feedback (issue 12 items 5 and 6), through the composed
//! components in front of the mock upstream: `lumen.saved` on whole answers (with
//! `x-lumen-saved`), on the final chunk of streams and on `/v1/messages`' `message_delta`, priced
//! against the reference model (tier's strongest, pinned model, request, key) with the catalog's
//! own arithmetic; savings totalled by `/v1/usage`; `POST /v1/feedback`'s 4xx refusals and the
//! `GET /admin/feedback` export with the cascade's labels.

mod common;

use common::*;
use lumen_shared::domain::catalog::{Catalog, Price};
use lumen_shared::domain::pricing::cost_nanos;
use lumen_shared::wire::openai::Usage;
use lumen_shared::wire::sse::Parser;
use serde_json::{json, Value};

const CHEAP: &str = "meta-llama/llama-3.1-8b-instruct";
const CHEAP_UPSTREAM: &str = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo";
const MINI: &str = "gpt-4o-mini";
const STRONG: &str = "gpt-4o";
const EASY: &str = "What is the capital of France?";

fn catalog() -> Catalog {
    Catalog::from_toml(
        include_str!("../../config/catalog.toml"),
        "config/catalog.toml",
    )
    .unwrap()
}

fn price(model: &str) -> Price {
    catalog().models[model].price.clone()
}

fn usage_of(u: &Value) -> Usage {
    Usage::from_openai(u).expect("an OpenAI usage object")
}

fn nanos(dollars: &Value) -> i64 {
    (dollars.as_f64().expect("a number") * 1e9).round() as i64
}

/// What the catalog says `usage` saved when served by `served` against `reference`.
fn expected_saved(usage: &Usage, served: &str, reference: &str) -> i64 {
    cost_nanos(usage, &price(reference)) - cost_nanos(usage, &price(served))
}

fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn create_key(gw: &Gateway, extra: Value) -> Resp {
    let body = with(json!({"name": "saver", "rpm_limit": 10_000}), extra);
    gw.call(
        "POST",
        "/admin/keys",
        Some(ADMIN),
        Some(body.to_string().into_bytes()),
    )
    .await
}

#[tokio::test]
async fn saved_is_on_every_answer_and_totalled_by_usage() {
    let gw = Gateway::start().await;
    let (key, key_id) = gw.create_key(10_000, &[]).await;
    let mut total = 0i64;

    // A tier request: the cheapest model serves, priced against the tier's strongest candidate.
    let r = gw.chat(&key, chat_body("lumen/fast", EASY)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-model"), Some(CHEAP));
    let v = r.json();
    let lumen = &v["lumen"];
    let want = expected_saved(&usage_of(&v["usage"]), CHEAP, STRONG);
    assert!(want > 0);
    assert_eq!(nanos(&lumen["saved"]), want, "{lumen}");
    assert_eq!(
        (
            lumen["reference_model"].as_str(),
            lumen["reference_from"].as_str()
        ),
        (Some(STRONG), Some("tier"))
    );
    assert!(lumen.get("saved_note").is_none());
    assert_eq!(
        r.header("x-lumen-saved"),
        Some(format!("{}.{:09}", want / 1_000_000_000, want % 1_000_000_000).as_str())
    );
    assert_eq!(lumen["route"]["tier"], "lumen/fast", "{lumen}");
    assert!(lumen["cost"].is_number());
    total += want;

    // A pinned model is its own reference: nothing claimed.
    let r = gw.chat(&key, chat_body(MINI, EASY)).await;
    let lumen = &r.json()["lumen"];
    assert_eq!(
        (
            nanos(&lumen["saved"]),
            lumen["reference_model"].as_str(),
            lumen["reference_from"].as_str()
        ),
        (0, Some(MINI), Some("pinned"))
    );
    assert_eq!(r.header("x-lumen-saved"), Some("0.000000000"));

    // The request's reference wins; a dearer model than the reference saves a negative amount,
    // and says so.
    let b = with(
        chat_body(MINI, EASY),
        json!({"lumen": {"reference_model": "openai/gpt-4o"}}),
    );
    let r = gw.chat(&key, b).await;
    let v = r.json();
    let want = expected_saved(&usage_of(&v["usage"]), MINI, STRONG);
    assert_eq!(nanos(&v["lumen"]["saved"]), want);
    assert_eq!(v["lumen"]["reference_from"], "request");
    assert!(
        gw.mock.requests().last().unwrap().body.as_ref().unwrap()["lumen"].is_null(),
        "lumen.reference_model never reaches the upstream"
    );
    total += want;
    let b = with(
        chat_body(STRONG, EASY),
        json!({"lumen": {"reference_model": MINI}}),
    );
    let r = gw.chat(&key, b).await;
    let v = r.json();
    let want = expected_saved(&usage_of(&v["usage"]), STRONG, MINI);
    assert!(want < 0);
    assert_eq!(nanos(&v["lumen"]["saved"]), want);
    assert!(v["lumen"]["saved_note"]
        .as_str()
        .is_some_and(|n| n.starts_with("negative") && n.contains(MINI)));
    assert!(r.header("x-lumen-saved").unwrap().starts_with("-0.0"));
    total += want;

    // An unknown reference is refused naming the field, before any upstream call.
    let calls = gw.mock.request_count();
    for model in [MINI, "lumen/fast"] {
        let b = with(
            chat_body(model, EASY),
            json!({"lumen": {"reference_model": "gpt-9"}}),
        );
        let e = gw.chat(&key, b).await.error(404);
        assert_eq!(e["param"], "lumen.reference_model", "{e}");
        let b = with(
            chat_body(model, EASY),
            json!({"lumen": {"reference_model": 5}}),
        );
        assert_eq!(
            gw.chat(&key, b).await.error(400)["param"],
            "lumen.reference_model"
        );
    }
    assert_eq!(gw.mock.request_count(), calls);

    // Streams carry it on the final chunk (the usage chunk when asked for, else the finish
    // chunk), never as a header.
    for include_usage in [true, false] {
        let b = with(
            chat_body("lumen/fast", EASY),
            json!({"stream": true, "stream_options": {"include_usage": include_usage}}),
        );
        let s = stream(gw.addr(), "/v1/chat/completions", &key, b, None).await;
        assert_eq!(s.status, 200);
        assert!(s.headers.get("x-lumen-saved").is_none());
        let data = s.data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        let lumen = &last["lumen"];
        assert_eq!(lumen["reference_model"], STRONG, "{last}");
        let chunks_with_saved = data.iter().filter(|d| d.contains("\"saved\"")).count();
        assert_eq!(chunks_with_saved, 1, "{data:?}");
        let saved = nanos(&lumen["saved"]);
        assert!(saved > 0);
        if include_usage {
            assert_eq!(
                saved,
                expected_saved(&usage_of(&last["usage"]), CHEAP, STRONG)
            );
        } else {
            assert_eq!(last["choices"][0]["finish_reason"], "stop");
        }
        total += saved;
    }

    // Anthropic Messages: in the body, and on message_delta when streamed.
    let msg = json!({"model": "lumen/fast", "max_tokens": 50, "messages": [{"role": "user", "content": EASY}]});
    let r = gw
        .call(
            "POST",
            "/v1/messages",
            Some(&key),
            Some(msg.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let saved = nanos(&v["lumen"]["saved"]);
    assert!(saved > 0, "{v}");
    assert_eq!(r.header("x-lumen-saved").map(str::is_empty), Some(false));
    total += saved;
    let s = stream(
        gw.addr(),
        "/v1/messages",
        &key,
        with(msg, json!({"stream": true})),
        None,
    )
    .await;
    let evs = Parser::default().push(s.text().as_bytes());
    let delta = evs
        .iter()
        .find(|e| e.event.as_deref() == Some("message_delta"))
        .expect("a message_delta");
    let delta: Value = serde_json::from_str(&delta.data).unwrap();
    let saved = nanos(&delta["lumen"]["saved"]);
    assert!(saved > 0, "{delta}");
    assert_eq!(evs.last().unwrap().event.as_deref(), Some("message_stop"));
    total += saved;

    // /v1/usage totals what the answers said, by day, model and key, in JSON and CSV.
    let usage = gw.usage_until(&key, |u| u["total"]["requests"] == 8).await;
    assert_eq!(usage["total"]["requests"], 8, "{usage}");
    assert_eq!(nanos(&usage["total"]["saved_usd"]), total, "{usage}");
    let by_model = gw
        .call("GET", "/v1/usage?group_by=model", Some(&key), None)
        .await
        .json();
    let saved_of = |m: &str| {
        by_model["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == m)
            .map(|r| nanos(&r["saved_usd"]))
    };
    assert!(saved_of(CHEAP).unwrap() > 0);
    assert!(saved_of(STRONG).unwrap() < 0);
    let by_key = gw
        .call(
            "GET",
            &format!("/admin/usage?key_id={key_id}&group_by=key"),
            Some(ADMIN),
            None,
        )
        .await
        .json();
    assert_eq!(nanos(&by_key["data"][0]["saved_usd"]), total, "{by_key}");
    let csv = gw
        .call("GET", "/v1/usage?format=csv&group_by=day", Some(&key), None)
        .await;
    let text = String::from_utf8_lossy(&csv.body).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(",cost_usd,saved_usd"), "{text}");
    let saved_col: f64 = lines[1].rsplit(',').next().unwrap().parse().unwrap();
    assert_eq!((saved_col * 1e9).round() as i64, total, "{text}");

    // Records carry the saving, the reference and the route (what the dashboard shows).
    let recs = gw
        .call("GET", "/v1/usage/records?limit=1", Some(&key), None)
        .await
        .json();
    let rec = &recs["data"][0];
    assert_eq!(rec["reference_model"], STRONG, "{rec}");
    assert!(rec["saved_nanos"].as_i64().unwrap() > 0);
    assert_eq!(rec["route"]["tier"], "lumen/fast");
    assert!(rec["route"]["score"].is_number());

    // Every entry is still on the audit chain.
    let v = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test]
async fn a_key_or_plan_reference_applies_and_unknown_ones_are_refused() {
    let gw = Gateway::start().await;
    let r = create_key(&gw, json!({"reference_model": "claude-sonnet-4"})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["reference_model"], "claude-sonnet-4");
    let key = v["key"].as_str().unwrap().to_string();
    let r = gw.chat(&key, chat_body(MINI, EASY)).await;
    let v = r.json();
    assert_eq!(v["lumen"]["reference_from"], "key");
    assert_eq!(
        nanos(&v["lumen"]["saved"]),
        expected_saved(&usage_of(&v["usage"]), MINI, "claude-sonnet-4")
    );
    // The request still wins over the key.
    let b = with(
        chat_body(MINI, EASY),
        json!({"lumen": {"reference_model": MINI}}),
    );
    let v = gw.chat(&key, b).await.json();
    assert_eq!(
        (
            nanos(&v["lumen"]["saved"]),
            v["lumen"]["reference_from"].as_str()
        ),
        (0, Some("request"))
    );
    let e = create_key(&gw, json!({"reference_model": "gpt-9"}))
        .await
        .error(400);
    assert_eq!(e["param"], "reference_model");
}

async fn feedback(gw: &Gateway, key: Option<&str>, body: Value) -> Resp {
    gw.call(
        "POST",
        "/v1/feedback",
        key,
        Some(body.to_string().into_bytes()),
    )
    .await
}

#[tokio::test]
async fn feedback_is_one_per_request_and_key_and_is_exported_with_cascade_labels() {
    let gw = Gateway::start().await;
    let (a, a_id) = gw.create_key(10_000, &[]).await;
    let (b, _) = gw.create_key(10_000, &[]).await;
    let r = gw.chat(&a, chat_body("lumen/fast", EASY)).await;
    assert_eq!(r.status, 200);
    let rid = r.header("x-request-id").unwrap().to_string();

    // Thumbs up, with a label: stored with the route that was taken.
    let r = feedback(
        &gw,
        Some(&a),
        json!({"request_id": rid, "thumbs": "up", "label": "spot on"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (
            v["score"].as_f64(),
            v["model"].as_str(),
            v["route"]["tier"].as_str()
        ),
        (Some(1.0), Some(CHEAP), Some("lumen/fast")),
        "{v}"
    );

    // Duplicates, other keys' requests, unknown ids, bad bodies: clear 4xx naming the field.
    let e = feedback(&gw, Some(&a), json!({"request_id": rid, "score": 0.2}))
        .await
        .error(409);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("request_id"), Some("feedback_exists"))
    );
    let other = feedback(&gw, Some(&b), json!({"request_id": rid, "score": 0.2}))
        .await
        .error(404);
    let unknown_id = "req_000000000000000000000000";
    let unknown = feedback(
        &gw,
        Some(&b),
        json!({"request_id": unknown_id, "score": 0.2}),
    )
    .await
    .error(404);
    assert_eq!(other["param"], "request_id");
    assert_eq!(
        other["message"].as_str().unwrap().replace(&rid, "ID"),
        unknown["message"]
            .as_str()
            .unwrap()
            .replace(unknown_id, "ID"),
        "another key's request reads exactly like an unknown one"
    );
    for (body, param) in [
        (json!({"request_id": rid, "score": 1.5}), "score"),
        (json!({"request_id": rid, "score": -1}), "score"),
        (json!({"request_id": rid}), "score"),
        (
            json!({"request_id": rid, "score": 1, "thumbs": "up"}),
            "thumbs",
        ),
        (json!({"request_id": rid, "thumbs": "sideways"}), "thumbs"),
        (
            json!({"request_id": "chatcmpl-1", "score": 1}),
            "request_id",
        ),
        (json!({"score": 1}), "request_id"),
        (json!({"request_id": rid, "score": 1, "label": ""}), "label"),
    ] {
        let e = feedback(&gw, Some(&a), body.clone()).await.error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    feedback(&gw, None, json!({"request_id": rid, "score": 1}))
        .await
        .error(401);
    gw.call("GET", "/v1/feedback", Some(&a), None)
        .await
        .error(405);

    // Key b rates its own request; a cascade that escalated leaves labels without feedback.
    let r = gw.chat(&b, chat_body(MINI, EASY)).await;
    let b_rid = r.header("x-request-id").unwrap().to_string();
    let r = feedback(&gw, Some(&b), json!({"request_id": b_rid, "score": 0.25})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let text = format!("{EASY} [mock content=Sorry if_model={CHEAP_UPSTREAM}]");
    let cascade = with(
        chat_body("lumen/fast", &text),
        json!({"lumen": {"cascade": true}}),
    );
    let r = gw.chat(&a, cascade).await;
    assert_eq!(r.status, 200);
    let served = r.header("x-lumen-model").unwrap().to_string();
    assert_ne!(served, CHEAP);
    let cascade_rid = r.header("x-request-id").unwrap().to_string();

    // The export: feedback lines (training format's model + score), then the cascade's labels.
    let e = gw
        .call("GET", "/admin/feedback", Some(&a), None)
        .await
        .error(401);
    assert!(e["message"].as_str().unwrap().contains("admin token"));
    let r = gw.call("GET", "/admin/feedback", Some(ADMIN), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String, String, Value, Value)> = lines
        .iter()
        .map(|l| {
            (
                l["source"].as_str().unwrap().to_string(),
                l["request_id"].as_str().unwrap().to_string(),
                l["model"].as_str().unwrap().to_string(),
                l["score"].clone(),
                l["label"].clone(),
            )
        })
        .collect();
    let mut want = vec![
        (
            "feedback".to_string(),
            rid.clone(),
            CHEAP.to_string(),
            json!(1.0),
            Value::Null,
        ),
        (
            "feedback".to_string(),
            b_rid.clone(),
            MINI.to_string(),
            json!(0.25),
            Value::Null,
        ),
        (
            "cascade".to_string(),
            cascade_rid.clone(),
            CHEAP.to_string(),
            Value::Null,
            json!("escalated"),
        ),
    ];
    if lines.len() == 4 {
        // The served model was itself checked (not the plan's last candidate) and kept.
        want.push((
            "cascade".to_string(),
            cascade_rid.clone(),
            served.clone(),
            Value::Null,
            json!("kept"),
        ));
    }
    assert_eq!(got, want, "{lines:?}");
    assert_eq!(lines[0]["key_id"], a_id.as_str());
    assert_eq!(lines[0]["tier"], "lumen/fast");
    assert_eq!(lines[0]["feedback_label"], "spot on");
    assert!(lines[0]["route_score"].is_number());
    assert!(lines[0].get("prompt").is_none(), "Lumen stores no content");
    let only_a = gw
        .call(
            "GET",
            &format!("/admin/feedback?key_id={a_id}&cascade=false"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(String::from_utf8_lossy(&only_a.body).lines().count(), 1);
    gw.call("GET", "/admin/feedback?limit=0", Some(ADMIN), None)
        .await
        .error(400);

    let v = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
}
