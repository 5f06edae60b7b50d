//! Budgets through the gateway: holds at admission, settlement to actual cost, `insufficient_quota`
//! refusals, no leftover holds, and a stream ended cleanly when the budget runs out mid-way.

mod common;

use common::{chat_body, Gateway, ADMIN};
use futures::future::join_all;
use serde_json::{json, Value};

/// Creates a key of tenant `tenant` with a high rate limit.
async fn tenant_key(gw: &Gateway, tenant: &str) -> (String, String) {
    let r = gw
        .call(
            "POST",
            "/admin/keys",
            Some(ADMIN),
            Some(
                json!({"name": "budget", "rpm_limit": 100000, "tenant": tenant})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

async fn set_budget(gw: &Gateway, tenant: &str, usd: f64) {
    let r = gw
        .call(
            "PUT",
            &format!("/admin/tenants/{tenant}"),
            Some(ADMIN),
            Some(json!({"monthly_budget_usd": usd}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

async fn ledger(gw: &Gateway, tenant: &str) -> Value {
    let r = gw
        .call(
            "GET",
            &format!("/admin/tenants/{tenant}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Nano-dollars of one gpt-4o-mini request: `prompt × 0.15 + completion × 0.60` per 1e6 $.
fn nanos(prompt: u64, completion: u64) -> i64 {
    (prompt * 150 + completion * 600) as i64
}

/// A hold is taken at the dearest candidate's price: gpt-4o-mini on Azure ($0.165 / $0.66).
fn hold_nanos(prompt: u64, completion: u64) -> i64 {
    (prompt * 165 + completion * 660) as i64
}

fn usd_nanos(v: &Value) -> i64 {
    (v.as_f64().expect("number") * 1e9).round() as i64
}

/// 200 concurrent requests against a budget that covers 50 of them: the tenant never spends
/// more than the budget plus one request's actual cost, refusals are 402 `insufficient_quota`,
/// and every hold is settled or released (none outstanding after).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_overspend_and_leave_no_holds() {
    let gw = Gateway::start().await;
    let (key, _) = tenant_key(&gw, "acme").await;
    // Each request asks for up to 40 output tokens and uses 10, so its hold is dearer than its
    // actual cost and released parts must come back for later requests to fit.
    let mut body = chat_body("gpt-4o-mini", "spend [mock tokens=10]");
    body["max_tokens"] = json!(40);
    let prompt = lumen_tests::mock::prompt_tokens(&body);
    let one = nanos(prompt, 10);
    let budget = 50 * one;
    set_budget(&gw, "acme", budget as f64 / 1e9).await;

    let calls = (0..200).map(|_| gw.chat(&key, body.clone()));
    let answers = join_all(calls).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    for r in answers.iter().filter(|r| r.status != 200) {
        let e = r.error(402);
        assert_eq!(e["code"], "insufficient_quota", "{e}");
        assert_eq!(e["type"], "insufficient_quota", "{e}");
    }
    let l = ledger(&gw, "acme").await;
    let settled = usd_nanos(&l["settled_usd"]);
    eprintln!(
        "budget {budget} n$ (50 requests of {one}); {ok} of 200 admitted; settled {settled} n$; ledger {l}"
    );
    assert!(ok >= 1, "nothing was admitted");
    assert!(ok <= 50, "{ok} requests admitted, the budget covers 50");
    assert!(
        settled <= budget + one,
        "spent {settled} n$ > budget {budget} + one request {one}"
    );
    assert_eq!(
        usd_nanos(&l["held_usd"]),
        0,
        "holds left after the run: {l}"
    );
    assert_eq!(usd_nanos(&l["committed_usd"]), settled, "{l}");
    let usage = gw
        .usage_until(&key, |v| v["total"]["requests"] == json!(ok))
        .await;
    assert_eq!(usage["total"]["requests"], json!(ok));
    assert_eq!(usd_nanos(&usage["total"]["cost_usd"]), settled);

    // Sequentially, the released parts let the budget be used up to the last whole request.
    loop {
        let r = gw.chat(&key, body.clone()).await;
        if r.status != 200 {
            r.error(402);
            break;
        }
    }
    let l = ledger(&gw, "acme").await;
    let settled = usd_nanos(&l["settled_usd"]);
    assert!(settled <= budget, "{l}");
    assert!(
        budget - settled < nanos(prompt, 40),
        "a request whose hold fits was refused: {l}"
    );
    assert_eq!(usd_nanos(&l["held_usd"]), 0, "{l}");
}

/// A stream with no `max_tokens` holds 4096 output tokens; when it goes past them and the budget
/// cannot cover more, it ends cleanly with `finish_reason: "length"` and a `lumen` note, then
/// `[DONE]`, and settles what was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_crossing_the_budget_ends_with_length() {
    let gw = Gateway::start().await;
    let (key, _) = tenant_key(&gw, "tiny").await;
    let mut body = chat_body("gpt-4o-mini", "long [mock tokens=5000]");
    body["stream"] = json!(true);
    let prompt = lumen_tests::mock::prompt_tokens(&body);
    let hold = hold_nanos(prompt, 4096);
    // Room for the first hold and a little more, not for a second block of 4096 tokens.
    set_budget(&gw, "tiny", (hold + 1000) as f64 / 1e9).await;

    let s = common::stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    assert_eq!(s.status, 200);
    let data = s.data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).expect("final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    assert!(
        last["lumen"]["note"]
            .as_str()
            .unwrap_or("")
            .contains("budget"),
        "{last}"
    );
    let content = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert_eq!(content, 4096, "delivered exactly what was held");
    let l = ledger(&gw, "tiny").await;
    assert_eq!(usd_nanos(&l["held_usd"]), 0, "{l}");
    let settled = usd_nanos(&l["settled_usd"]);
    assert!(settled <= hold + 1000, "{l}");
    assert_eq!(
        settled,
        nanos(prompt, 4096),
        "settled to the tokens delivered, at the price of the provider that served: {l}"
    );
    // The budget is spent: the next request is refused up front.
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "more [mock tokens=1]"))
        .await;
    assert_eq!(r.error(402)["code"], "insufficient_quota");
}

/// Prepaid tenants spend only granted credits; grants are admin actions on the audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepaid_credits_limit_spend() {
    let gw = Gateway::start().await;
    let (key, _) = tenant_key(&gw, "pre").await;
    let r = gw
        .call(
            "PUT",
            "/admin/tenants/pre",
            Some(ADMIN),
            Some(json!({"prepaid": true}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut body = chat_body("gpt-4o-mini", "pay [mock tokens=10]");
    body["max_tokens"] = json!(10);
    let r = gw.chat(&key, body.clone()).await;
    assert_eq!(r.error(402)["code"], "insufficient_quota");
    let one = nanos(lumen_tests::mock::prompt_tokens(&body), 10);
    // Room for two requests plus the hold of a third (holds are at the dearest candidate's price).
    let grant = 2 * one + hold_nanos(lumen_tests::mock::prompt_tokens(&body), 10);
    let r = gw
        .call(
            "POST",
            "/admin/tenants/pre/credits",
            Some(ADMIN),
            Some(
                json!({"amount_usd": grant as f64 / 1e9})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(gw.chat(&key, body.clone()).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 402]);
    let l = ledger(&gw, "pre").await;
    assert_eq!(usd_nanos(&l["credits_committed_usd"]), 3 * one, "{l}");
    let bad = gw
        .call(
            "POST",
            "/admin/tenants/pre/credits",
            Some(ADMIN),
            Some(json!({"amount": 1}).to_string().into_bytes()),
        )
        .await;
    assert!(bad.error(400)["message"]
        .as_str()
        .unwrap()
        .contains("amount"));
}
