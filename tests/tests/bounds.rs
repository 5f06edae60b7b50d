//! Limits and money at their edges, through the gateway (issue 13, D2/D3): output-token caps at
//! every boundary (2^31, 2^53, 2^63 − 1, 2^63, 2^64 − 1) are a 400 naming the field, never a 5xx,
//! and every limit stays exact after them — tokens per minute and per day, per-model tokens per
//! minute, the monthly budget; the largest accepted cap is refused by the limit (429, with its
//! token headers) or the budget (402). A prepaid tenant's ledger never goes negative, and a cap
//! set mid-month holds.

mod common;

use common::{chat_body, Gateway, ADMIN};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The boundaries of the issue, and the largest value the gateway accepts.
const BOUNDARIES: [&str; 5] = [
    "2147483648",
    "9007199254740992",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
];
const LARGEST: u64 = (1 << 31) - 1;

/// A plan with every token limit, for this file only: the manifest is copied to a temporary
/// directory whose `config/` holds the shipped catalog and this plans file.
const PLANS: &str = r#"
[plans.edges]
rpm = 1000
tpm = 50000
tpd = 45000

[plans.edges.models."gpt-4o"]
tpm = 30000
"#;

fn manifest_with_plans(plans: &str) -> PathBuf {
    let repo = common::repo();
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("lumen-bounds-{}-{n}", std::process::id()));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    for f in ["catalog.toml", "router-weights.bin"] {
        std::fs::copy(repo.join("config").join(f), config.join(f)).unwrap();
    }
    std::fs::write(config.join("plans.toml"), plans).unwrap();
    let abs = |p: &str| repo.join(p).display().to_string();
    let manifest = std::fs::read_to_string(repo.join("spin.toml"))
        .unwrap()
        .replace(
            "source = \"target/",
            &format!("source = \"{}/", abs("target")),
        )
        .replace(
            "source = \"config\"",
            &format!("source = \"{}\"", config.display()),
        );
    // Spin maps only files inside the application directory: the dashboard's static files are
    // copied next to the manifest.
    let statics = "components/dashboard/static";
    common::config::copy_dir(&repo.join(statics), &dir.join(statics));
    let path = dir.join("spin.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

async fn start_with_plans() -> Gateway {
    let manifest = manifest_with_plans(PLANS);
    Gateway::start_with(
        lumen_tests::mock::MockConfig {
            api_key: Some(common::UPSTREAM_KEY.into()),
            ..Default::default()
        },
        |o| o.manifest = manifest,
    )
    .await
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Value) -> Value {
    let body = (!body.is_null()).then(|| body.to_string().into_bytes());
    let r = gw.call(method, path, Some(ADMIN), body).await;
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Waits so the next seconds stay inside one minute window.
async fn early_in_a_minute() {
    let sec = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 60;
    if sec >= 45 {
        tokio::time::sleep(Duration::from_secs(61 - sec)).await;
    }
}

/// A chat body whose `field` is the raw JSON number `n` (beyond what serde_json's `Value` holds
/// exactly, so the body is written as text).
fn with_cap(model: &str, text: &str, field: &str, n: &str) -> Vec<u8> {
    let mut b = chat_body(model, text);
    b[field] = json!(0);
    b.to_string()
        .replace(&format!("\"{field}\":0"), &format!("\"{field}\":{n}"))
        .into_bytes()
}

fn remaining_tokens(r: &common::Resp) -> u64 {
    r.header("x-ratelimit-remaining-tokens")
        .unwrap_or_else(|| panic!("no token headers: {:?}", r.headers))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_caps_at_every_boundary_are_400s_and_token_limits_stay_exact() {
    let gw = start_with_plans().await;
    let key = admin(
        &gw,
        "POST",
        "/admin/keys",
        json!({"name": "e", "plan": "edges"}),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_string();
    early_in_a_minute().await;
    for model in ["gpt-4o-mini", "gpt-4o"] {
        for field in ["max_tokens", "max_completion_tokens"] {
            for n in BOUNDARIES {
                let body = with_cap(model, "edge [mock tokens=2]", field, n);
                let r = gw
                    .call("POST", "/v1/chat/completions", Some(&key), Some(body))
                    .await;
                let e = r.error(400);
                assert_eq!(e["param"], field, "{model} {field}={n}: {e}");
                assert!(
                    e["message"]
                        .as_str()
                        .unwrap()
                        .contains("at most 2147483647"),
                    "{e}"
                );
            }
            // The largest accepted cap cannot fit the window: a 429 with the token headers.
            let body = with_cap(model, "edge", field, &LARGEST.to_string());
            let r = gw
                .call("POST", "/v1/chat/completions", Some(&key), Some(body))
                .await;
            let e = r.error(429);
            assert!(e["message"].as_str().unwrap().contains("tokens per"), "{e}");
            assert!(
                r.header("x-ratelimit-limit-tokens").is_some(),
                "{:?}",
                r.headers
            );
            assert!(r.header("retry-after").is_some());
        }
    }
    assert_eq!(
        gw.mock.request_count(),
        0,
        "no refused request went upstream"
    );

    // Every window is untouched: a request reserving exactly what is left of the per-model
    // window (30,000) fits, one token more does not.
    let prompt = lumen_tests::mock::prompt_tokens(&chat_body("gpt-4o", "fit [mock tokens=3]"));
    let mut fit = chat_body("gpt-4o", "fit [mock tokens=3]");
    fit["max_tokens"] = json!(30_000 - prompt);
    let r = gw.chat(&key, fit.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Key tpm: 50,000 − the reservation, exactly.
    assert_eq!(remaining_tokens(&r), 50_000 - 30_000);
    // Reconciled to the actual prompt + 3 tokens: the model window has 30,000 − used left.
    let used = prompt + 3;
    fit["max_tokens"] = json!(30_000 - used - prompt + 1);
    let e = gw.chat(&key, fit.clone()).await.error(429);
    assert!(
        e["message"].as_str().unwrap().contains("on this model"),
        "{e}"
    );
    fit["max_tokens"] = json!(30_000 - used - prompt);
    let r = gw.chat(&key, fit).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(remaining_tokens(&r), 50_000 - used - (30_000 - used));

    // Tokens per day (45,000) now hold 2 × used: a request for exactly the rest fits (the
    // minute window, 50,000, has room), one token more does not.
    let mut day = chat_body("gpt-4o-mini", "day [mock tokens=3]");
    let p2 = lumen_tests::mock::prompt_tokens(&day);
    day["max_tokens"] = json!(45_000 - 2 * used - p2);
    let r = gw.chat(&key, day.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(remaining_tokens(&r), 50_000 - 45_000);
    let used2 = p2 + 3;
    day["max_tokens"] = json!(45_000 - 2 * used - used2 - p2 + 1);
    let r = gw.chat(&key, day.clone()).await;
    let e = r.error(429);
    assert!(
        e["message"].as_str().unwrap().contains("tokens per day"),
        "{e}"
    );
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("45000"));
    day["max_tokens"] = json!(45_000 - 2 * used - used2 - p2);
    let r = gw.chat(&key, day).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_budget_refuses_the_largest_caps_with_402_and_stays_exact() {
    let gw = Gateway::start().await;
    let key = admin(
        &gw,
        "POST",
        "/admin/keys",
        json!({"name": "b", "tenant": "edge-co"}),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_string();
    admin(
        &gw,
        "PUT",
        "/admin/tenants/edge-co",
        json!({"monthly_budget_usd": 1.0}),
    )
    .await;
    for field in ["max_tokens", "max_completion_tokens"] {
        for n in BOUNDARIES {
            let body = with_cap("gpt-4o", "edge", field, n);
            let r = gw
                .call("POST", "/v1/chat/completions", Some(&key), Some(body))
                .await;
            assert_eq!(r.error(400)["param"], field, "{n}");
        }
        // 2^31 − 1 output tokens of gpt-4o cost far more than $1: 402, not a 503.
        let body = with_cap("gpt-4o", "edge", field, &LARGEST.to_string());
        let r = gw
            .call("POST", "/v1/chat/completions", Some(&key), Some(body))
            .await;
        let e = r.error(402);
        assert_eq!(e["code"], "insufficient_quota");
        assert!(!e["message"].as_str().unwrap().contains("v2/"), "{e}");
    }
    let l = admin(&gw, "GET", "/admin/tenants/edge-co", Value::Null).await;
    assert_eq!(
        (l["committed_usd"].as_f64(), l["held_usd"].as_f64()),
        (Some(0.0), Some(0.0)),
        "{l}"
    );
    // The budget still admits what it covers.
    let mut ok = chat_body("gpt-4o", "fine [mock tokens=2]");
    ok["max_tokens"] = json!(100);
    let r = gw.chat(&key, ok).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A prepaid tenant with no cap: its ledger's committed total never goes negative (each hold was
/// released from it without being added), and a cap set mid-month counts what the month already
/// spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_ledger_never_goes_negative_and_a_cap_set_mid_month_holds() {
    let gw = Gateway::start().await;
    let key = admin(
        &gw,
        "POST",
        "/admin/keys",
        json!({"name": "p", "tenant": "pre-co"}),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_string();
    admin(
        &gw,
        "PUT",
        "/admin/tenants/pre-co",
        json!({"prepaid": true}),
    )
    .await;
    admin(
        &gw,
        "POST",
        "/admin/tenants/pre-co/credits",
        json!({"amount_usd": 1.0}),
    )
    .await;
    let mut body = chat_body("gpt-4o-mini", "spend [mock tokens=5]");
    body["max_tokens"] = json!(5);
    for _ in 0..10 {
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let l = admin(&gw, "GET", "/admin/tenants/pre-co", Value::Null).await;
    let committed = l["committed_usd"].as_f64().unwrap();
    let settled = l["settled_usd"].as_f64().unwrap();
    assert!(committed > 0.0, "{l}");
    assert!((committed - settled).abs() < 1e-12, "no hold left: {l}");
    assert!(
        (l["credits_committed_usd"].as_f64().unwrap() - settled).abs() < 1e-12,
        "{l}"
    );
    // A cap set now at what the month spent plus less than any request's hold (a hold covers
    // at least the request's cost): nothing more is admitted. (With committed negative, this
    // cap was overspent several times.)
    let one: f64 = {
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(r.status, 200);
        r.header("x-lumen-cost").unwrap().parse().unwrap()
    };
    let l = admin(&gw, "GET", "/admin/tenants/pre-co", Value::Null).await;
    let spent = l["settled_usd"].as_f64().unwrap();
    let cap = spent + one / 2.0;
    admin(
        &gw,
        "PUT",
        "/admin/tenants/pre-co",
        json!({"monthly_budget_usd": cap, "prepaid": true}),
    )
    .await;
    for _ in 0..10 {
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(r.error(402)["code"], "insufficient_quota");
    }
    let l = admin(&gw, "GET", "/admin/tenants/pre-co", Value::Null).await;
    let committed = l["committed_usd"].as_f64().unwrap();
    assert!(
        (0.0..=cap + 1e-12).contains(&committed),
        "the cap held: {l}"
    );
    // Raised again, it admits.
    admin(
        &gw,
        "PUT",
        "/admin/tenants/pre-co",
        json!({"monthly_budget_usd": spent + 1.0, "prepaid": true}),
    )
    .await;
    assert_eq!(gw.chat(&key, body).await.status, 200);
}

/// Usage totals are summed in integer nano-dollars and rendered once: ten requests of one cost
/// total exactly ten times it (summing dollars as floats showed `0.00007000000000000001`).
#[tokio::test]
async fn usage_totals_are_exact_sums_of_nano_dollars() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let mut nanos = 0u64;
    for _ in 0..10 {
        let r = gw
            .chat(&key, chat_body("gpt-4o-mini", "x [mock tokens=1]"))
            .await;
        assert_eq!(r.status, 200);
        let (whole, frac) = r.header("x-lumen-cost").unwrap().split_once('.').unwrap();
        nanos += whole.parse::<u64>().unwrap() * 1_000_000_000 + frac.parse::<u64>().unwrap();
    }
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 10).await;
    assert_eq!(
        u["total"]["cost_usd"].as_f64(),
        Some(nanos as f64 / 1e9),
        "{u}"
    );
    let text = u["total"]["cost_usd"].to_string();
    assert!(text.len() <= 12, "rendered once, no float noise: {text}");
}
