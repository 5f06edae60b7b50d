//! The admin API (`/admin/...`): guarded by the `admin_token` variable (disabled when empty),
//! compared as sha256 digests in constant time. Keys (create, list, rotate, expire, revoke),
//! tenants (budget, credits, ledger), any key's or tenant's usage, and the audit chain. Every
//! action that changes something is appended to the audit chain.

use crate::account::{records_reply, usage_reply};
use crate::ctx::{read_body, ReqInfo};
use crate::deps;
use lumen_shared::domain::pricing::NANOS_PER_USD;
use lumen_shared::store::log::{self, Entry, EntryKind};
use lumen_shared::store::{self as kvs, TenantKey, TenantRecord};
use lumen_shared::{store::apikeys, store::ledger, ApiError};
use lumen_spin::kv::unavailable;
use lumen_spin::util::{fill_random, now_ms, query_param};
use lumen_spin::{Reply, SpinKv};
use serde::Deserialize;
use spin_sdk::http::IncomingRequest;
use spin_sdk::variables;

/// Checks the caller's bearer against the `admin_token` variable.
pub fn check_admin(info: &ReqInfo) -> Result<(), ApiError> {
    let token = variables::get("admin_token").unwrap_or_default();
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::permission(
            "the admin API is disabled: set the admin_token variable (SPIN_VARIABLE_ADMIN_TOKEN)",
            "admin_disabled",
        ));
    }
    let wrong = || {
        ApiError::authentication(
            "missing or incorrect admin token; send 'Authorization: Bearer <admin_token>'",
        )
    };
    let given = apikeys::bearer(info.authorization.as_deref()).map_err(|_| wrong())?;
    if apikeys::ct_eq(
        apikeys::hash_secret(given).as_bytes(),
        apikeys::hash_secret(token).as_bytes(),
    ) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// Appends an admin change to the log (the audit chain); a failure fails the request (503), so
/// no admin change goes unrecorded without the caller knowing.
pub fn record(
    kv: &SpinKv,
    action: &str,
    subject: &str,
    key_id: &str,
    cost: i64,
) -> Result<(), ApiError> {
    let now = now_ms();
    log::append(
        kv,
        Entry {
            kind: EntryKind::Admin,
            time_ms: now,
            written_ms: now,
            action: action.to_string(),
            subject: subject.to_string(),
            key_id: key_id.to_string(),
            cost_nanos: cost,
            ..Entry::default()
        },
    )
    .map(|_| ())
    .map_err(|e| unavailable(&e))
}

/// `POST /admin/keys`: 201 with the key's public view and, this once, its secret.
pub async fn create(info: &ReqInfo, req: IncomingRequest) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let body = read_body(req, info).await?;
    let mut ask = apikeys::parse_create(&body)?;
    if let Some(name) = &ask.plan {
        let all = crate::limits::load_plans()?;
        let plan = lumen_shared::domain::plans::find(&all, name)?;
        if ask.rpm_limit.is_none() {
            ask.rpm_limit = plan.rpm;
        }
        if ask.allowed_models.is_empty() {
            ask.allowed_models = plan.allowed_models.clone();
        }
        ask.zero_retention |= plan.zero_retention;
    }
    if !ask.allowed_models.is_empty() || ask.reference_model.is_some() {
        let models = deps::models()?;
        apikeys::check_allowed_models(&ask.allowed_models, &models)?;
        if let Some(m) = &ask.reference_model {
            apikeys::check_reference_model(m, &models)?;
        }
    }
    let kv = SpinKv::open_or_503()?;
    let mut secret = [0u8; 32];
    let mut id = [0u8; 8];
    fill_random(&mut secret)?;
    fill_random(&mut id)?;
    let (rec, secret) = apikeys::create(&kv, ask, &secret, &id, now_ms() / 1000)?;
    record(&kv, "key.create", &rec.id, &rec.id, 0)?;
    let mut view = apikeys::public_view(&rec);
    if let Some(obj) = view.as_object_mut() {
        obj.insert("key".into(), secret.into());
    }
    Ok(Reply::json(201, &view))
}

/// `GET /admin/keys`.
pub fn list(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let recs = apikeys::list(&SpinKv::open_or_503()?)?;
    let data: Vec<_> = recs.iter().map(apikeys::public_view).collect();
    Ok(Reply::json(
        200,
        &serde_json::json!({"object": "list", "data": data}),
    ))
}

/// `DELETE /admin/keys/{id}`: revokes the key at once.
pub fn delete(info: &ReqInfo, id: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let rec = apikeys::delete(&kv, id, now_ms() / 1000)?;
    // Its provider keys go with it.
    lumen_shared::store::byok::remove_all(&kv, id, &rec.byok).map_err(|e| unavailable(&e))?;
    record(&kv, "key.revoke", &rec.id, &rec.id, 0)?;
    Ok(Reply::json(
        200,
        &serde_json::json!({"id": rec.id, "object": "api_key", "deleted": true}),
    ))
}

/// `POST /admin/keys/{id}/rotate`: a new secret (shown once); the old one stops working.
pub fn rotate(info: &ReqInfo, id: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let mut secret = [0u8; 32];
    fill_random(&mut secret)?;
    let (rec, secret) = apikeys::rotate(&kv, id, &secret, now_ms() / 1000)?;
    record(&kv, "key.rotate", &rec.id, &rec.id, 0)?;
    let mut view = apikeys::public_view(&rec);
    if let Some(obj) = view.as_object_mut() {
        obj.insert("key".into(), secret.into());
    }
    Ok(Reply::json(200, &view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    expires_at: Option<u64>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        ApiError::invalid_request(
            format!("invalid request body: {}; expected {expected}", e.inner()),
            param,
            "invalid_value",
        )
    })
}

/// `PATCH /admin/keys/{id}` with `{"expires_at": unix seconds | null}`.
pub async fn update(info: &ReqInfo, id: &str, req: IncomingRequest) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let body = read_body(req, info).await?;
    let ask: UpdateKey = parse(&body, "{\"expires_at\": unix seconds or null}")?;
    let kv = SpinKv::open_or_503()?;
    let rec = apikeys::set_expiry(&kv, id, ask.expires_at)?;
    record(&kv, "key.expire", &rec.id, &rec.id, 0)?;
    Ok(Reply::json(200, &apikeys::public_view(&rec)))
}

fn tenant_keys(kv: &SpinKv, tenant: &str) -> Result<Vec<String>, ApiError> {
    Ok(apikeys::list(kv)?
        .into_iter()
        .filter(|k| k.tenant_id() == tenant)
        .map(|k| k.id)
        .collect())
}

/// `GET /admin/usage?key_id=` or `?tenant=` (all keys of the tenant), with the usage filters.
pub async fn usage(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let ids = match (
        query_param(&info.query, "key_id").filter(|v| !v.is_empty()),
        query_param(&info.query, "tenant").filter(|v| !v.is_empty()),
    ) {
        (Some(k), None) => vec![k],
        (None, Some(t)) => tenant_keys(&SpinKv::open_or_503()?, &t)?,
        _ => {
            return Err(ApiError::invalid_request(
                "give exactly one of the query parameters 'key_id' or 'tenant'",
                Some("key_id"),
                "missing_required_parameter",
            ))
        }
    };
    usage_reply(info, &ids).await
}

/// `GET /admin/usage/records?key_id=`.
pub async fn usage_records(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let key = query_param(&info.query, "key_id")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_request(
                "missing required query parameter: 'key_id'",
                Some("key_id"),
                "missing_required_parameter",
            )
        })?;
    records_reply(info, &key).await
}

/// `GET /admin/tenants/{tenant}`: settings and this month's ledger.
pub fn get_tenant(info: &ReqInfo, tenant: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let view = ledger::view(&SpinKv::open_or_503()?, tenant, now_ms())?;
    Ok(Reply::json(200, &view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutTenant {
    #[serde(default)]
    monthly_budget_usd: Option<f64>,
    #[serde(default)]
    prepaid: bool,
}

fn usd_to_nanos(v: f64, param: &str) -> Result<i64, ApiError> {
    if !v.is_finite() || v.abs() > 1e9 {
        return Err(ApiError::invalid_request(
            format!("'{param}' must be a finite amount of US dollars"),
            Some(param),
            "invalid_value",
        ));
    }
    Ok((v * NANOS_PER_USD).round() as i64)
}

/// `PUT /admin/tenants/{tenant}` with `{"monthly_budget_usd": number | null, "prepaid": bool}`.
pub async fn put_tenant(
    info: &ReqInfo,
    tenant: &str,
    req: IncomingRequest,
) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let body = read_body(req, info).await?;
    let ask: PutTenant = parse(
        &body,
        "{\"monthly_budget_usd\": number or null, \"prepaid\": boolean}",
    )?;
    let monthly_budget_nanos = ask
        .monthly_budget_usd
        .map(|v| {
            if v < 0.0 {
                Err(ApiError::invalid_request(
                    "'monthly_budget_usd' must not be negative",
                    Some("monthly_budget_usd"),
                    "invalid_value",
                ))
            } else {
                usd_to_nanos(v, "monthly_budget_usd")
            }
        })
        .transpose()?;
    let kv = SpinKv::open_or_503()?;
    let rec = TenantRecord {
        monthly_budget_nanos,
        prepaid: ask.prepaid,
    };
    kvs::store(&kv, &TenantKey(tenant), &rec).map_err(|e| unavailable(&e))?;
    record(
        &kv,
        "tenant.budget",
        tenant,
        "",
        monthly_budget_nanos.unwrap_or(0),
    )?;
    Ok(Reply::json(200, &ledger::view(&kv, tenant, now_ms())?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    amount_usd: f64,
}

/// `POST /admin/tenants/{tenant}/credits` with `{"amount_usd": number}` (negative withdraws).
pub async fn grant(info: &ReqInfo, tenant: &str, req: IncomingRequest) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let body = read_body(req, info).await?;
    let ask: Grant = parse(&body, "{\"amount_usd\": number}")?;
    let nanos = usd_to_nanos(ask.amount_usd, "amount_usd")?;
    let kv = SpinKv::open_or_503()?;
    ledger::grant(&kv, tenant, nanos).map_err(|e| unavailable(&e))?;
    record(&kv, "tenant.credits", tenant, "", nanos)?;
    Ok(Reply::json(200, &ledger::view(&kv, tenant, now_ms())?))
}

/// `GET /admin/audit/head`: the head hash, to anchor elsewhere.
pub fn audit_head(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let head = log::head(&SpinKv::open_or_503()?, now_ms()).map_err(|e| unavailable(&e))?;
    Ok(Reply::json(200, &head))
}

/// `GET /admin/audit/verify`: re-walks the chain; names the first broken link.
pub fn audit_verify(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let v = log::verify(&SpinKv::open_or_503()?, now_ms()).map_err(|e| unavailable(&e))?;
    Ok(Reply::json(200, &v))
}
