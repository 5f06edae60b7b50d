//! The `lumen` command against a running gateway: every admin subcommand as a table and as
//! `--json`, and its errors (unreachable server, refused token, the API's own 4xx message).
//! `lumen up` is tested in `first_run.rs`.

mod common;

use common::{chat_body, lumen_bin, Gateway, ADMIN};
use serde_json::Value;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    fn success(self) -> Run {
        assert!(
            self.ok,
            "lumen failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    fn failure(self) -> Run {
        assert!(!self.ok, "lumen succeeded: {}", self.stdout);
        assert!(self.stdout.is_empty(), "stdout on failure: {}", self.stdout);
        self
    }
}

/// Runs `lumen ARGS` with `LUMEN_URL` / `LUMEN_ADMIN_TOKEN` from `env` (and nothing else of ours).
async fn lumen(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(lumen_bin());
    cmd.args(args)
        .env_remove("LUMEN_URL")
        .env_remove("LUMEN_ADMIN_TOKEN")
        .env_remove("LUMEN_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("lumen finishes within 60 s")
        .expect("lumen runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn env(gw: &Gateway) -> (String, &'static str) {
    (format!("http://{}", gw.addr()), ADMIN)
}

/// The data row of a `lumen keys list` table whose first cell is `id`.
fn row<'a>(table: &'a str, id: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_list_rotate_revoke() {
    let gw = Gateway::start().await;
    let (url, token) = env(&gw);
    let e = [("LUMEN_URL", url.as_str()), ("LUMEN_ADMIN_TOKEN", token)];

    // create: a table with the secret, once.
    let r = lumen(
        &e,
        &[
            "keys",
            "create",
            "--name",
            "alice",
            "--rpm",
            "42",
            "--model",
            "gpt-4o-mini",
            "--tenant",
            "acme",
        ],
    )
    .await
    .success();
    let field = |name: &str| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} line in {}", r.stdout))
    };
    let (id, secret) = (field("id "), field("key "));
    assert!(
        id.starts_with("key_") && secret.starts_with("lm_"),
        "{}",
        r.stdout
    );
    assert_eq!(field("rpm limit"), "42");
    assert_eq!(field("models"), "gpt-4o-mini");
    assert_eq!(field("tenant"), "acme");
    assert!(r.stdout.contains("shown once"), "{}", r.stdout);
    assert_eq!(
        gw.chat(&secret, chat_body("gpt-4o-mini", "hi"))
            .await
            .status,
        200
    );

    // create --json: the API's answer.
    let bob = lumen(&e, &["--json", "keys", "create", "--name", "bob"])
        .await
        .success()
        .json();
    assert_eq!(bob["name"], "bob");
    assert_eq!(bob["object"], "api_key");
    let bob_id = bob["id"].as_str().unwrap().to_string();

    // list: both keys, no secret anywhere.
    let list = lumen(&e, &["keys", "list"]).await.success();
    assert!(list.stdout.starts_with("ID "), "{}", list.stdout);
    let alice = row(&list.stdout, &id).expect("alice listed");
    let cells: Vec<&str> = alice.split_whitespace().collect();
    assert_eq!(
        &cells[1..6],
        ["alice", "acme", "-", "42", "gpt-4o-mini"],
        "{alice}"
    );
    assert!(row(&list.stdout, &bob_id).is_some(), "{}", list.stdout);
    assert!(!list.stdout.contains(&secret));
    let listed = lumen(&e, &["keys", "list", "--json"])
        .await
        .success()
        .json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&bob_id.as_str()),
        "{listed}"
    );

    // rotate: a new secret; the old one stops working.
    let rotated = lumen(&e, &["--json", "keys", "rotate", &id])
        .await
        .success()
        .json();
    let new_secret = rotated["key"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(
        gw.chat(&secret, chat_body("gpt-4o-mini", "hi"))
            .await
            .status,
        401
    );
    assert_eq!(
        gw.chat(new_secret, chat_body("gpt-4o-mini", "hi"))
            .await
            .status,
        200
    );

    // revoke: gone from the list, the key refused.
    let r = lumen(&e, &["keys", "revoke", &id]).await.success();
    assert_eq!(r.stdout.trim(), format!("Revoked {id}."));
    assert_eq!(
        gw.chat(new_secret, chat_body("gpt-4o-mini", "hi"))
            .await
            .status,
        401
    );
    let list = lumen(&e, &["keys", "list"]).await.success();
    assert!(row(&list.stdout, &id).is_none(), "{}", list.stdout);
    assert!(row(&list.stdout, &bob_id).is_some(), "{}", list.stdout);

    // The API's 4xx message, with its code and field, on stderr; exit status 1.
    let r = lumen(&e, &["keys", "revoke", "key_nope"]).await.failure();
    assert_eq!(
        r.stderr.trim(),
        "lumen: no API key with id \"key_nope\" (404 key_not_found); field: id"
    );
    let r = lumen(
        &e,
        &["keys", "create", "--name", "x", "--model", "no-such-model"],
    )
    .await
    .failure();
    assert!(
        r.stderr.contains("no-such-model") && r.stderr.contains("(400 "),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_budget_and_credits() {
    let gw = Gateway::start().await;
    let (url, token) = env(&gw);
    let e = [("LUMEN_URL", url.as_str()), ("LUMEN_ADMIN_TOKEN", token)];

    let v = lumen(
        &e,
        &["--json", "tenants", "set", "acme", "--budget", "12.5"],
    )
    .await
    .success()
    .json();
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["monthly_budget_usd"], 12.5);
    assert_eq!(v["prepaid"], false);
    // Prepaid on: the budget set before is kept.
    let v = lumen(
        &e,
        &["--json", "tenants", "set", "acme", "--prepaid", "true"],
    )
    .await
    .success()
    .json();
    assert_eq!(
        (v["monthly_budget_usd"].as_f64(), v["prepaid"].as_bool()),
        (Some(12.5), Some(true))
    );
    lumen(&e, &["tenants", "credit", "acme", "3.25"])
        .await
        .success();
    let v = lumen(&e, &["--json", "tenants", "credit", "acme", "-1"])
        .await
        .success()
        .json();
    assert_eq!(v["credits_granted_usd"], 2.25);
    let table = lumen(&e, &["tenants", "get", "acme"])
        .await
        .success()
        .stdout;
    let lines: Vec<&str> = table.lines().map(str::trim_end).collect();
    for expected in [
        "monthly budget     $12.50",
        "prepaid            true",
        "credits granted    $2.25",
    ] {
        assert!(lines.contains(&expected), "{expected:?} not in\n{table}");
    }
    let v = lumen(&e, &["--json", "tenants", "set", "acme", "--no-budget"])
        .await
        .success()
        .json();
    assert_eq!(v["monthly_budget_usd"], Value::Null);
    assert_eq!(v["prepaid"], true);
    let r = lumen(&e, &["tenants", "set", "acme"]).await.failure();
    assert!(r.stderr.contains("nothing to set"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_records_audit_and_route() {
    let gw = Gateway::start().await;
    let (url, token) = env(&gw);
    let e = [("LUMEN_URL", url.as_str()), ("LUMEN_ADMIN_TOKEN", token)];
    let (key, id) = gw.create_key(600, &[]).await;
    for _ in 0..2 {
        let r = gw
            .chat(&key, chat_body("gpt-4o-mini", "hi [mock tokens=5]"))
            .await;
        assert_eq!(r.status, 200);
    }

    // usage: totals as JSON and as a table with a TOTAL row.
    let v = lumen(&e, &["--json", "usage", "--key-id", &id])
        .await
        .success()
        .json();
    assert_eq!(v["total"]["requests"], 2, "{v}");
    assert_eq!(v["total"]["completion_tokens"], 10, "{v}");
    let table = lumen(&e, &["usage", "--key-id", &id, "--group-by", "model"])
        .await
        .success()
        .stdout;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "MODEL",
            "REQUESTS",
            "ERRORS",
            "PROMPT",
            "COMPLETION",
            "CACHED",
            "COST",
            "SAVED"
        ]
    );
    let model_row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&model_row[..3], ["gpt-4o-mini", "2", "0"], "{table}");
    assert_eq!(model_row[4], "10", "{table}");
    let total: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&total[..2], ["TOTAL", "2"], "{table}");
    let r = lumen(&e, &["usage"]).await.failure();
    assert!(r.stderr.contains("--key-id"), "{}", r.stderr);

    // records: one row per request.
    let recs = lumen(&e, &["--json", "usage", "--key-id", &id, "--records"])
        .await
        .success()
        .json();
    assert_eq!(recs["data"].as_array().map(Vec::len), Some(2), "{recs}");
    let table = lumen(&e, &["usage", "--key-id", &id, "--records"])
        .await
        .success()
        .stdout;
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.contains("gpt-4o-mini") && l.trim_end().ends_with("ok")),
        "{table}"
    );

    // audit: the head, and verify (ok, exit 0).
    let head = lumen(&e, &["--json", "audit", "head"])
        .await
        .success()
        .json();
    let seq = head["seq"].as_u64().expect("seq");
    assert!(seq >= 3, "a key and two requests were audited: {head}");
    let r = lumen(&e, &["audit", "verify"]).await.success();
    assert!(
        r.stdout
            .starts_with(&format!("ok: the audit chain verifies, {seq} entries")),
        "{}",
        r.stdout
    );
    let v = lumen(&e, &["--json", "audit", "verify"])
        .await
        .success()
        .json();
    assert_eq!(
        (v["ok"].as_bool(), v["checked"].as_u64()),
        (Some(true), Some(seq))
    );

    // route: the plan for a prompt, with an API key (LUMEN_API_KEY or --key).
    let with_key = [e[0], e[1], ("LUMEN_API_KEY", key.as_str())];
    let plan = lumen(&with_key, &["--json", "route", "hi there"])
        .await
        .success()
        .json();
    assert_eq!(plan["requested"], "auto");
    let winner = plan["candidates"][0]["model"]
        .as_str()
        .expect("a winner")
        .to_string();
    let table = lumen(&e, &["route", "hi there", "--key", &key])
        .await
        .success()
        .stdout;
    assert!(table.starts_with("auto → "), "{table}");
    let first = table
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .expect("row 1");
    assert_eq!(
        first.split_whitespace().nth(1),
        Some(winner.as_str()),
        "{table}"
    );
    let pinned = lumen(&with_key, &["--json", "route", "hi", "--model", "gpt-4o"])
        .await
        .success()
        .json();
    assert_eq!(pinned["candidates"][0]["model"], "gpt-4o");
    let r = lumen(&e, &["route", "hi"]).await.failure();
    assert!(
        r.stderr.contains("needs an API key") && r.stderr.contains("LUMEN_API_KEY"),
        "{}",
        r.stderr
    );
    let r = lumen(&e, &["route", "hi", "--key", "lm_wrong"])
        .await
        .failure();
    assert!(
        r.stderr.contains("(401 ") && r.stderr.contains("LUMEN_API_KEY"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_no_server_no_token_and_a_wrong_token() {
    let gw = Gateway::start().await;
    let (url, _) = env(&gw);

    // Nothing listens on a port we just released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = lumen(
        &[("LUMEN_URL", &dead), ("LUMEN_ADMIN_TOKEN", ADMIN)],
        &["keys", "list"],
    )
    .await
    .failure();
    assert!(
        r.stderr
            .starts_with(&format!("lumen: cannot reach the gateway at {dead}: ")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("lumen up") && r.stderr.contains("LUMEN_URL"),
        "{}",
        r.stderr
    );

    // --url wins over LUMEN_URL.
    lumen(
        &[("LUMEN_URL", &dead), ("LUMEN_ADMIN_TOKEN", ADMIN)],
        &["--url", &url, "keys", "list"],
    )
    .await
    .success();

    let r = lumen(&[("LUMEN_URL", &url)], &["keys", "list"])
        .await
        .failure();
    assert!(
        r.stderr
            .starts_with("lumen: no admin token: set LUMEN_ADMIN_TOKEN"),
        "{}",
        r.stderr
    );

    let r = lumen(
        &[("LUMEN_URL", &url), ("LUMEN_ADMIN_TOKEN", "wrong")],
        &["audit", "verify"],
    )
    .await
    .failure();
    assert!(r.stderr.contains("(401 invalid_api_key)"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("hint: the gateway refused the admin token"),
        "{}",
        r.stderr
    );
    let r = lumen(
        &[("LUMEN_URL", &url)],
        &["--admin-token", "wrong", "keys", "list"],
    )
    .await
    .failure();
    assert!(r.stderr.contains("(401 invalid_api_key)"), "{}", r.stderr);

    let r = lumen(
        &[
            ("LUMEN_URL", "localhost:3000"),
            ("LUMEN_ADMIN_TOKEN", ADMIN),
        ],
        &["keys", "list"],
    )
    .await
    .failure();
    assert!(
        r.stderr.contains("must start with http:// or https://"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_fails_on_a_tampered_chain() {
    let gw = Gateway::start().await;
    let (url, token) = env(&gw);
    let e = [("LUMEN_URL", url.as_str()), ("LUMEN_ADMIN_TOKEN", token)];
    let (key, _) = gw.create_key(600, &[]).await;
    assert_eq!(
        gw.chat(&key, chat_body("gpt-4o-mini", "hi [mock tokens=3]"))
            .await
            .status,
        200
    );
    lumen(&e, &["audit", "verify"]).await.success();

    // Edit the request's entry in the store itself (as tests/tests/audit.rs does).
    let (k, bytes) = gw
        .store_keys("v2/log/entry/")
        .into_iter()
        .map(|k| {
            let v = gw.store_get(&k).expect("listed key");
            (k, v)
        })
        .find(|(_, v)| String::from_utf8_lossy(v).contains(r#""kind":"request""#))
        .expect("the request's entry");
    let mut entry: Value = serde_json::from_slice(&bytes).unwrap();
    entry["cost_nanos"] = serde_json::json!(0);
    gw.store_set(&k, &serde_json::to_vec(&entry).unwrap());

    let r = lumen(&e, &["audit", "verify"]).await;
    assert!(!r.ok, "verify succeeded on a tampered chain: {}", r.stdout);
    assert!(
        r.stdout
            .starts_with(&format!("BROKEN: entry seq {} (", entry["seq"])),
        "{}",
        r.stdout
    );
    assert_eq!(r.stderr.trim(), "lumen: the audit chain does not verify");
    let r = lumen(&e, &["--json", "audit", "verify"]).await;
    assert!(!r.ok);
    assert_eq!(r.json()["ok"], false);
}
