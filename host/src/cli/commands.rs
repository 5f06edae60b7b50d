//! The admin subcommands of `lumen`: each is one or two admin API calls, printed as a table
//! (or as the API's JSON with `--json`).

use super::client::{encode, query, Auth, Client};
use super::render::{pairs, text, unix_ms, unix_time, usd, Align, Table};
use anyhow::{bail, Result};
use http::Method;
use serde_json::{json, Map, Value};

/// How to print.
#[derive(Clone, Copy)]
pub struct Out {
    /// The API's JSON instead of tables.
    pub json: bool,
}

impl Out {
    fn json(self, v: &Value) -> bool {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
            );
        }
        self.json
    }
}

/// `lumen keys create`.
pub struct NewKey {
    /// Name.
    pub name: String,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Allowed models.
    pub models: Vec<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Reference model for `lumen.saved`.
    pub reference_model: Option<String>,
}

fn key_block(v: &Value) -> String {
    pairs(&[
        ("id", text(&v["id"])),
        ("name", text(&v["name"])),
        ("tenant", text(&v["tenant"])),
        ("plan", text(&v["plan"])),
        ("rpm limit", text(&v["rpm_limit"])),
        (
            "models",
            if v["allowed_models"].as_array().is_some_and(Vec::is_empty) {
                "all".into()
            } else {
                text(&v["allowed_models"])
            },
        ),
        ("expires", unix_time(&v["expires_at"], "never")),
        ("key", text(&v["key"])),
    ])
}

/// `POST /admin/keys`.
pub async fn keys_create(c: &Client, out: Out, k: NewKey) -> Result<()> {
    let mut body = Map::new();
    body.insert("name".into(), json!(k.name));
    if let Some(rpm) = k.rpm {
        body.insert("rpm_limit".into(), json!(rpm));
    }
    if !k.models.is_empty() {
        body.insert("allowed_models".into(), json!(k.models));
    }
    for (field, v) in [
        ("tenant", k.tenant),
        ("plan", k.plan),
        ("reference_model", k.reference_model),
    ] {
        if let Some(v) = v {
            body.insert(field.into(), json!(v));
        }
    }
    if let Some(t) = k.expires_at {
        body.insert("expires_at".into(), json!(t));
    }
    let v = c
        .call(
            Method::POST,
            "/admin/keys",
            Auth::Admin,
            Some(&Value::Object(body)),
        )
        .await?;
    if !out.json(&v) {
        print!("{}", key_block(&v));
        println!("\nThe key is shown once: store it now.");
    }
    Ok(())
}

/// `GET /admin/keys`.
pub async fn keys_list(c: &Client, out: Out) -> Result<()> {
    let v = c.get("/admin/keys").await?;
    if out.json(&v) {
        return Ok(());
    }
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("TENANT", Align::Left),
        ("PLAN", Align::Left),
        ("RPM", Align::Right),
        ("MODELS", Align::Left),
        ("CREATED", Align::Left),
        ("EXPIRES", Align::Left),
    ]);
    for k in v["data"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&k["id"]),
            text(&k["name"]),
            text(&k["tenant"]),
            text(&k["plan"]),
            text(&k["rpm_limit"]),
            if k["allowed_models"].as_array().is_some_and(Vec::is_empty) {
                "all".into()
            } else {
                text(&k["allowed_models"])
            },
            unix_time(&k["created"], "-"),
            unix_time(&k["expires_at"], "never"),
        ]);
    }
    if t.is_empty() {
        println!("No API keys yet: create one with `lumen keys create --name NAME`.");
    } else {
        print!("{}", t.render());
    }
    Ok(())
}

/// `POST /admin/keys/{id}/rotate`.
pub async fn keys_rotate(c: &Client, out: Out, id: &str) -> Result<()> {
    let path = format!("/admin/keys/{}/rotate", encode(id));
    let v = c.call(Method::POST, &path, Auth::Admin, None).await?;
    if !out.json(&v) {
        print!("{}", key_block(&v));
        println!("\nThe new key is shown once: store it now. The old one no longer works.");
    }
    Ok(())
}

/// `DELETE /admin/keys/{id}`.
pub async fn keys_revoke(c: &Client, out: Out, id: &str) -> Result<()> {
    let path = format!("/admin/keys/{}", encode(id));
    let v = c.call(Method::DELETE, &path, Auth::Admin, None).await?;
    if !out.json(&v) {
        println!("Revoked {}.", text(&v["id"]));
    }
    Ok(())
}

fn ledger_block(v: &Value) -> String {
    let budget = match v["monthly_budget_usd"].as_f64() {
        Some(_) => usd(&v["monthly_budget_usd"]),
        None => "none".into(),
    };
    pairs(&[
        ("tenant", text(&v["tenant"])),
        ("month", text(&v["month"])),
        ("monthly budget", budget),
        ("prepaid", text(&v["prepaid"])),
        ("committed", usd(&v["committed_usd"])),
        ("held", usd(&v["held_usd"])),
        ("settled", usd(&v["settled_usd"])),
        ("released", usd(&v["released_usd"])),
        ("credits granted", usd(&v["credits_granted_usd"])),
        ("credits committed", usd(&v["credits_committed_usd"])),
    ])
}

fn tenant_path(tenant: &str) -> String {
    format!("/admin/tenants/{}", encode(tenant))
}

/// `GET /admin/tenants/{t}`.
pub async fn tenants_get(c: &Client, out: Out, tenant: &str) -> Result<()> {
    let v = c.get(&tenant_path(tenant)).await?;
    if !out.json(&v) {
        print!("{}", ledger_block(&v));
    }
    Ok(())
}

/// What `lumen tenants set` changes.
pub enum Budget {
    /// Leave as it is.
    Keep,
    /// No monthly cap.
    Unlimited,
    /// This many dollars a month.
    Usd(f64),
}

/// `PUT /admin/tenants/{t}`: fields not given keep the tenant's current values.
pub async fn tenants_set(
    c: &Client,
    out: Out,
    tenant: &str,
    budget: Budget,
    prepaid: Option<bool>,
) -> Result<()> {
    if matches!(budget, Budget::Keep) && prepaid.is_none() {
        bail!("nothing to set: give --budget USD, --no-budget or --prepaid true|false");
    }
    let current = c.get(&tenant_path(tenant)).await?;
    let budget = match budget {
        Budget::Keep => current["monthly_budget_usd"].clone(),
        Budget::Unlimited => Value::Null,
        Budget::Usd(x) => json!(x),
    };
    let prepaid = prepaid.unwrap_or_else(|| current["prepaid"].as_bool().unwrap_or(false));
    let body = json!({"monthly_budget_usd": budget, "prepaid": prepaid});
    let v = c
        .call(Method::PUT, &tenant_path(tenant), Auth::Admin, Some(&body))
        .await?;
    if !out.json(&v) {
        print!("{}", ledger_block(&v));
    }
    Ok(())
}

/// `POST /admin/tenants/{t}/credits`.
pub async fn tenants_credit(c: &Client, out: Out, tenant: &str, amount: f64) -> Result<()> {
    let path = format!("{}/credits", tenant_path(tenant));
    let body = json!({"amount_usd": amount});
    let v = c
        .call(Method::POST, &path, Auth::Admin, Some(&body))
        .await?;
    if !out.json(&v) {
        print!("{}", ledger_block(&v));
    }
    Ok(())
}

/// Filters of `lumen usage`.
pub struct UsageFilter {
    /// One key.
    pub key_id: Option<String>,
    /// One tenant.
    pub tenant: Option<String>,
    /// First day, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// Last day.
    pub to: Option<String>,
    /// One model.
    pub model: Option<String>,
    /// `day`, `model` or `key`.
    pub group_by: Option<String>,
}

/// `GET /admin/usage`.
pub async fn usage(c: &Client, out: Out, f: &UsageFilter) -> Result<()> {
    if f.key_id.is_none() == f.tenant.is_none() {
        bail!("give one of --key-id ID or --tenant TENANT (`lumen keys list` shows both)");
    }
    let q = query(&[
        ("key_id", f.key_id.as_deref()),
        ("tenant", f.tenant.as_deref()),
        ("from", f.from.as_deref()),
        ("to", f.to.as_deref()),
        ("model", f.model.as_deref()),
        ("group_by", f.group_by.as_deref()),
    ]);
    let v = c.get(&format!("/admin/usage{q}")).await?;
    if out.json(&v) {
        return Ok(());
    }
    let rows = v["data"].as_array().cloned().unwrap_or_default();
    // Show the grouping columns the answer has.
    let has = |field: &str| rows.iter().any(|r| r.get(field).is_some());
    let groups: Vec<(&'static str, &'static str)> =
        [("DAY", "day"), ("MODEL", "model"), ("KEY", "key_id")]
            .into_iter()
            .filter(|(_, f)| has(f))
            .collect();
    let mut headers: Vec<(&'static str, Align)> =
        groups.iter().map(|(h, _)| (*h, Align::Left)).collect();
    headers.extend([
        ("REQUESTS", Align::Right),
        ("ERRORS", Align::Right),
        ("PROMPT", Align::Right),
        ("COMPLETION", Align::Right),
        ("CACHED", Align::Right),
        ("COST", Align::Right),
        ("SAVED", Align::Right),
    ]);
    let mut t = Table::new(&headers);
    let numbers = |r: &Value| {
        vec![
            text(&r["requests"]),
            text(&r["errors"]),
            text(&r["prompt_tokens"]),
            text(&r["completion_tokens"]),
            text(&r["cached_tokens"]),
            usd(&r["cost_usd"]),
            usd(&r["saved_usd"]),
        ]
    };
    for r in &rows {
        let mut cells: Vec<String> = groups.iter().map(|(_, f)| text(&r[*f])).collect();
        cells.extend(numbers(r));
        t.row(cells);
    }
    let mut total: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if i == 0 {
                "TOTAL".into()
            } else {
                String::new()
            }
        })
        .collect();
    if total.is_empty() {
        // No grouping column: the total row is the only row.
        t = Table::new(&headers);
    }
    total.extend(numbers(&v["total"]));
    t.row(total);
    print!("{}", t.render());
    Ok(())
}

/// `GET /admin/usage/records`.
pub async fn usage_records(c: &Client, out: Out, key_id: &str, limit: Option<u32>) -> Result<()> {
    let limit = limit.map(|n| n.to_string());
    let q = query(&[("key_id", Some(key_id)), ("limit", limit.as_deref())]);
    let v = c.get(&format!("/admin/usage/records{q}")).await?;
    if out.json(&v) {
        return Ok(());
    }
    let mut t = Table::new(&[
        ("TIME", Align::Left),
        ("REQUEST", Align::Left),
        ("MODEL", Align::Left),
        ("PROVIDER", Align::Left),
        ("PROMPT", Align::Right),
        ("COMPLETION", Align::Right),
        ("COST", Align::Right),
        ("MS", Align::Right),
        ("OUTCOME", Align::Left),
    ]);
    for r in v["data"].as_array().into_iter().flatten() {
        let cost = r["cost_nanos"]
            .as_i64()
            .map(|n| json!(n as f64 / 1e9))
            .unwrap_or(Value::Null);
        t.row(vec![
            unix_ms(&r["time_ms"]),
            text(&r["request_id"]),
            text(&r["model"]),
            text(&r["provider"]),
            text(&r["prompt_tokens"]),
            text(&r["completion_tokens"]),
            usd(&cost),
            r["latency_ms"]
                .as_f64()
                .map_or("-".into(), |ms| format!("{ms:.1}")),
            text(&r["outcome"]),
        ]);
    }
    if t.is_empty() {
        println!("No usage records for {key_id}.");
    } else {
        print!("{}", t.render());
    }
    Ok(())
}

/// `GET /admin/audit/head`.
pub async fn audit_head(c: &Client, out: Out) -> Result<()> {
    let v = c.get("/admin/audit/head").await?;
    if !out.json(&v) {
        print!(
            "{}",
            pairs(&[("seq", text(&v["seq"])), ("hash", text(&v["hash"]))])
        );
    }
    Ok(())
}

/// `GET /admin/audit/verify`; a broken chain is an error (exit status 1).
pub async fn audit_verify(c: &Client, out: Out) -> Result<()> {
    let v = c.get("/admin/audit/verify").await?;
    let ok = v["ok"].as_bool() == Some(true);
    if !out.json(&v) {
        if ok {
            println!(
                "ok: the audit chain verifies, {} entries from the head (seq {}, {}) to genesis",
                text(&v["checked"]),
                text(&v["head"]["seq"]),
                text(&v["head"]["hash"])
            );
        } else {
            let b = &v["first_broken"];
            println!(
                "BROKEN: entry seq {} ({}): {}; {} entries checked",
                text(&b["seq"]),
                text(&b["hash"]),
                text(&b["reason"]),
                text(&v["checked"])
            );
        }
    }
    if !ok {
        bail!("the audit chain does not verify");
    }
    Ok(())
}

/// `POST /v1/route`: the plan for a one-message chat body, without calling a model.
pub async fn route(
    c: &Client,
    out: Out,
    key: Option<&str>,
    model: &str,
    prompt: &str,
) -> Result<()> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        bail!(
            "`lumen route` needs an API key (POST /v1/route plans for a key, its models and limits): \
             set LUMEN_API_KEY or pass --key; make one with `lumen keys create --name cli`"
        );
    };
    let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    let v = c
        .call(Method::POST, "/v1/route", Auth::Key(key), Some(&body))
        .await?;
    if out.json(&v) {
        return Ok(());
    }
    println!("{} → {}", text(&v["requested"]), text(&v["reason"]));
    if let Some(score) = v["route"]["score"].as_f64() {
        println!(
            "difficulty {score:.3}, quality floor {}",
            text(&v["route"]["quality_floor"])
        );
    }
    let mut t = Table::new(&[
        ("#", Align::Right),
        ("MODEL", Align::Left),
        ("PROVIDER", Align::Left),
        ("UPSTREAM MODEL", Align::Left),
        ("$/M IN", Align::Right),
        ("$/M OUT", Align::Right),
        ("CONTEXT", Align::Right),
    ]);
    for (i, cand) in v["candidates"].as_array().into_iter().flatten().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            text(&cand["model"]),
            text(&cand["provider"]["name"]),
            text(&cand["upstream_model"]),
            text(&cand["price"]["input"]),
            text(&cand["price"]["output"]),
            text(&cand["context_window"]),
        ]);
    }
    println!();
    print!("{}", t.render());
    Ok(())
}
