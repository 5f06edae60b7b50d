//! The admin API for bring-your-own provider keys (`/admin/keys/{id}/provider-keys[/{provider}]`):
//! a Lumen API key's own upstream key per provider, stored encrypted under the secret
//! `byok_encryption_key` variable or as a reference to a Spin variable. Keys are never echoed
//! back and never logged.

use crate::admin::check_admin;
use crate::ctx::{read_body, ReqInfo};
use crate::deps;
use lumen_shared::store::byok::{self, ByokAsk, ByokRecord};
use lumen_shared::{store::apikeys, ApiError};
use lumen_spin::kv::unavailable;
use lumen_spin::util::fill_random;
use lumen_spin::{Reply, SpinKv};
use serde_json::{json, Value};
use spin_sdk::http::IncomingRequest;
use spin_sdk::variables;

fn key_exists(kv: &SpinKv, id: &str) -> Result<lumen_shared::store::ApiKeyRecord, ApiError> {
    match apikeys::get(kv, id)? {
        Some(rec) => Ok(rec),
        None => Err(ApiError::not_found(
            format!("no API key with id \"{id}\""),
            None,
            "key_not_found",
        )),
    }
}

async fn provider_exists(provider: &str) -> Result<(), ApiError> {
    let models = deps::models()?;
    let mut known: Vec<String> = Vec::new();
    for m in models["data"].as_array().into_iter().flatten() {
        known.extend(m["owned_by"].as_str().map(str::to_string));
        for o in m["offers"].as_array().into_iter().flatten() {
            known.extend(o["provider"].as_str().map(str::to_string));
        }
    }
    known.sort();
    known.dedup();
    if known.iter().any(|p| p == provider) {
        Ok(())
    } else {
        Err(ApiError::not_found(
            format!(
                "unknown provider \"{provider}\"; catalog providers: {}",
                known.join(", ")
            ),
            None,
            "provider_not_found",
        ))
    }
}

/// `PUT /admin/keys/{id}/provider-keys/{provider}`.
pub async fn put(
    info: &ReqInfo,
    req: IncomingRequest,
    id: &str,
    provider: &str,
) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let ask = byok::parse_put(&read_body(req, info).await?)?;
    provider_exists(provider).await?;
    let kv = SpinKv::open_or_503()?;
    key_exists(&kv, id)?;
    let rec = match ask {
        ByokAsk::Key(secret) => {
            let master = variables::get("byok_encryption_key").unwrap_or_default();
            if master.trim().len() < 16 {
                return Err(ApiError::permission(
                    "storing provider keys needs the secret byok_encryption_key variable (16+ characters); or store {\"variable\": \"<name>\"} instead",
                    "byok_disabled",
                ));
            }
            let mut nonce = [0u8; 12];
            fill_random(&mut nonce)?;
            byok::seal(master.trim(), id, provider, &secret, nonce).map_err(ApiError::internal)?
        }
        ByokAsk::Variable(name) => {
            check_reference(&name)?;
            ByokRecord::Variable { name }
        }
    };
    byok::put(&kv, id, provider, &rec)?;
    crate::admin::record(&kv, "provider_key.put", &format!("{id}/{provider}"), id, 0)?;
    Ok(Reply::json(200, &byok::view(provider, &rec)))
}

/// `GET /admin/keys/{id}/provider-keys`.
pub fn list(info: &ReqInfo, id: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let key = key_exists(&kv, id)?;
    let data: Vec<Value> = byok::list(&kv, id, &key.byok)
        .map_err(|e| unavailable(&e))?
        .iter()
        .map(|(p, r)| byok::view(p, r))
        .collect();
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
}

/// `DELETE /admin/keys/{id}/provider-keys/{provider}`.
pub fn delete(info: &ReqInfo, id: &str, provider: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    key_exists(&kv, id)?;
    if !byok::remove(&kv, id, provider)? {
        return Err(ApiError::not_found(
            format!("API key \"{id}\" has no key for provider \"{provider}\""),
            None,
            "provider_key_not_found",
        ));
    }
    crate::admin::record(
        &kv,
        "provider_key.delete",
        &format!("{id}/{provider}"),
        id,
        0,
    )?;
    Ok(Reply::json(
        200,
        &json!({"provider": provider, "deleted": true}),
    ))
}

/// A reference may name only a variable meant for it: `byok_…` (never the master key
/// `byok_encryption_key`, never a platform key such as `openai_api_key`), and one that exists,
/// so a typo is a 400 now instead of a 500 on the first call.
fn check_reference(name: &str) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::invalid_request(m, Some("variable"), "invalid_value");
    if !name.starts_with("byok_") || name == "byok_encryption_key" {
        return Err(bad(format!(
            "provider-key variable \"{name}\" is not allowed: a reference must name a variable whose name starts with byok_ (not byok_encryption_key), declared in spin.toml for this purpose"
        )));
    }
    match variables::get(name) {
        Ok(v) if !v.trim().is_empty() => Ok(()),
        Ok(_) => Err(bad(format!("provider-key variable \"{name}\" is empty; set SPIN_VARIABLE_{}", name.to_ascii_uppercase()))),
        Err(_) => Err(bad(format!(
            "no variable \"{name}\" is declared for the gateway component; add it to spin.toml [variables] and [component.gateway.variables]"
        ))),
    }
}
