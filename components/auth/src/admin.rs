//! The admin API (`/admin/keys`): guarded by the `admin_token` variable (disabled when empty),
//! compared as sha256 digests in constant time.

use crate::ctx::{read_body, ReqInfo};
use lumen_shared::contracts::routes;
use lumen_shared::{keys, ApiError};
use lumen_spin::http::get_json;
use lumen_spin::util::{fill_random, now_ms};
use lumen_spin::{Reply, SpinKv};
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
    let given = keys::bearer(info.authorization.as_deref()).map_err(|_| wrong())?;
    if keys::ct_eq(
        keys::hash_secret(given).as_bytes(),
        keys::hash_secret(token).as_bytes(),
    ) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// `POST /admin/keys`: 201 with the key's public view and, this once, its secret.
pub async fn create(info: &ReqInfo, req: IncomingRequest) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let body = read_body(req, info).await?;
    let ask = keys::parse_create(&body)?;
    if !ask.allowed_models.is_empty() {
        let models: serde_json::Value = get_json("router", routes::MODELS).await?;
        keys::check_allowed_models(&ask.allowed_models, &models)?;
    }
    let kv = SpinKv::open_or_503()?;
    let mut secret = [0u8; 32];
    let mut id = [0u8; 8];
    fill_random(&mut secret)?;
    fill_random(&mut id)?;
    let (rec, secret) = keys::create(&kv, ask, &secret, &id, now_ms() / 1000)?;
    let mut view = keys::public_view(&rec);
    if let Some(obj) = view.as_object_mut() {
        obj.insert("key".into(), secret.into());
    }
    Ok(Reply::json(201, &view))
}

/// `GET /admin/keys`.
pub fn list(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let recs = keys::list(&SpinKv::open_or_503()?)?;
    let data: Vec<_> = recs.iter().map(keys::public_view).collect();
    Ok(Reply::json(
        200,
        &serde_json::json!({"object": "list", "data": data}),
    ))
}

/// `DELETE /admin/keys/{id}`.
pub fn delete(info: &ReqInfo, id: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let rec = keys::delete(&SpinKv::open_or_503()?, id)?;
    Ok(Reply::json(
        200,
        &serde_json::json!({"id": rec.id, "object": "api_key", "deleted": true}),
    ))
}
