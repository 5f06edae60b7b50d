//! API keys: minting, hashing, authentication and the admin operations on them.
//!
//! Secrets are `lm_` + 43 base64url characters (32 random bytes). Only `sha256(secret)` is
//! stored; lookups go by hash and the stored hash is compared again in constant time.

use crate::error::ApiError;
use crate::store::{
    self as kv, ApiKeyRecord, KeyByHash, KeyById, KeyIndex, KeyRevoked, KeySeq, Kv, KvError,
};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every secret.
pub const SECRET_PREFIX: &str = "lm_";
/// Default requests per minute of a new key.
pub const DEFAULT_RPM: u32 = 600;

/// Hex sha256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two byte strings (length may leak, content does not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Extracts the bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let h = header.ok_or_else(|| {
        ApiError::authentication(
            "missing Authorization header; send 'Authorization: Bearer <your Lumen API key>'",
        )
    })?;
    // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
    let token = h
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::authentication(
                "malformed Authorization header; expected 'Bearer <your Lumen API key>'",
            )
        })?;
    Ok(token)
}

fn kv_failure(e: KvError) -> ApiError {
    ApiError::internal(format!("could not reach the key store ({})", e.0))
}

/// Looks a secret up and returns its record, or 401 (also for a key past its `expires_at`).
pub fn authenticate(store: &dyn Kv, secret: &str, now_secs: u64) -> Result<ApiKeyRecord, ApiError> {
    let wrong =
        || ApiError::authentication("incorrect API key provided; create one with POST /admin/keys");
    if !secret.starts_with(SECRET_PREFIX) {
        return Err(wrong());
    }
    let hash = hash_secret(secret);
    let rec = kv::load(store, &KeyByHash(&hash))
        .map_err(kv_failure)?
        .ok_or_else(wrong)?;
    if !ct_eq(rec.hash.as_bytes(), hash.as_bytes()) {
        return Err(wrong());
    }
    if rec.expires_at.is_some_and(|t| now_secs >= t) {
        let mut e = ApiError::authentication(format!(
            "this API key expired at {} (unix seconds); create or rotate a key with the admin API",
            rec.expires_at.unwrap_or_default()
        ));
        e.code = Some("expired_api_key".into());
        return Err(e);
    }
    Ok(rec)
}

/// `POST /admin/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Display name.
    pub name: String,
    /// Requests per minute.
    #[serde(default)]
    pub rpm_limit: Option<u32>,
    /// Allowed models (empty = all).
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Tenant (default: the key is its own tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Unix seconds after which the key is refused.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Plan from `config/plans.toml`.
    #[serde(default)]
    pub plan: Option<String>,
    /// Reference model for `lumen.saved` (a catalog id or alias; default: the plan's, else the
    /// route's own, see [`crate::domain::saved`]).
    #[serde(default)]
    pub reference_model: Option<String>,
    /// Nothing of the key's content is ever stored (no response cache writes).
    #[serde(default)]
    pub zero_retention: bool,
    /// Response cache settings (`{"enabled", "ttl_s", "mode", "max_entry_bytes",
    /// "max_tenant_bytes_per_day"}`).
    #[serde(default)]
    pub cache: Option<crate::domain::cache::CachePolicy>,
}

/// Parses a `POST /admin/keys` body, naming what is wrong.
pub fn parse_create(bytes: &[u8]) -> Result<CreateKey, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let req: CreateKey = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        ApiError::invalid_request(
            format!("invalid key request: {}; expected {{\"name\": string, \"rpm_limit\": integer, \"allowed_models\": [string], \"tenant\": string, \"expires_at\": unix seconds, \"plan\": string, \"reference_model\": string, \"zero_retention\": bool, \"cache\": {{\"enabled\", \"ttl_s\", \"mode\", \"max_entry_bytes\", \"max_tenant_bytes_per_day\"}}}}", e.inner()),
            param,
            "invalid_value",
        )
    })?;
    if req.name.trim().is_empty() || req.name.chars().count() > 128 {
        return Err(ApiError::invalid_request(
            "'name' must be 1 to 128 characters",
            Some("name"),
            "invalid_value",
        ));
    }
    if let Some(t) = &req.tenant {
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !ok {
            return Err(ApiError::invalid_request(
                "'tenant' must be 1 to 64 characters of letters, digits, '_', '-' or '.'",
                Some("tenant"),
                "invalid_value",
            ));
        }
    }
    if let Some(c) = &req.cache {
        c.check("cache")
            .map_err(|m| ApiError::invalid_request(m, Some("cache"), "invalid_value"))?;
    }
    if req.rpm_limit == Some(0) {
        return Err(ApiError::invalid_request(
            "'rpm_limit' must be at least 1",
            Some("rpm_limit"),
            "invalid_value",
        ));
    }
    Ok(req)
}

/// Checks a new key's `reference_model` against the catalog's model names, like
/// [`check_allowed_models`] (400 naming `reference_model`).
pub fn check_reference_model(model: &str, models_list: &serde_json::Value) -> Result<(), ApiError> {
    check_allowed_models(&[model.to_string()], models_list).map_err(|mut e| {
        e.message = e.message.replace("in allowed_models", "in reference_model");
        e.param = Some("reference_model".into());
        e
    })
}

/// Checks a new key's `allowed_models` against the model names the catalog knows (ids and
/// aliases, as `GET /v1/models` lists them), so a typo is a 400 instead of a useless key.
pub fn check_allowed_models(
    allowed: &[String],
    models_list: &serde_json::Value,
) -> Result<(), ApiError> {
    let data = models_list
        .get("data")
        .and_then(serde_json::Value::as_array);
    let mut known: Vec<&str> = Vec::new();
    for m in data.into_iter().flatten() {
        known.extend(m.get("id").and_then(serde_json::Value::as_str));
        let aliases = m.get("aliases").and_then(serde_json::Value::as_array);
        known.extend(
            aliases
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str),
        );
    }
    for (i, name) in allowed.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            let ids: Vec<&str> = data
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("id")?.as_str())
                .collect();
            return Err(ApiError::invalid_request(
                format!(
                    "unknown model \"{name}\" in allowed_models; available models: {}",
                    ids.join(", ")
                ),
                Some(&format!("allowed_models[{i}]")),
                "model_not_found",
            ));
        }
    }
    Ok(())
}

/// Mints a key from 32 random bytes for the secret and 8 for the id; returns the stored record
/// and the secret (shown to the caller once).
pub fn create(
    store: &dyn Kv,
    req: CreateKey,
    secret_bytes: &[u8; 32],
    id_bytes: &[u8; 8],
    now_secs: u64,
) -> Result<(ApiKeyRecord, String), ApiError> {
    let secret = format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes)
    );
    let rec = ApiKeyRecord {
        id: format!("key_{}", hex::encode(id_bytes)),
        name: req.name,
        hash: hash_secret(&secret),
        rpm_limit: req.rpm_limit.unwrap_or(DEFAULT_RPM),
        allowed_models: req.allowed_models,
        created: now_secs,
        tenant: req.tenant.unwrap_or_default(),
        expires_at: req.expires_at,
        rotated: None,
        plan: req.plan.unwrap_or_default(),
        byok: Vec::new(),
        previous_hash: None,
        reference_model: req.reference_model,
        zero_retention: req.zero_retention,
        cache: req.cache,
    };
    kv::store(store, &KeyByHash(&rec.hash), &rec).map_err(kv_failure)?;
    kv::store(store, &KeyById(&rec.id), &rec.hash).map_err(kv_failure)?;
    let n = kv::incr(store, &KeySeq, 1).map_err(kv_failure)?;
    kv::store(store, &KeyIndex(n), &rec.id).map_err(kv_failure)?;
    Ok((rec, secret))
}

/// All live keys, oldest first.
pub fn list(store: &dyn Kv) -> Result<Vec<ApiKeyRecord>, ApiError> {
    let n = kv::read_counter(store, &KeySeq).map_err(kv_failure)?;
    let mut out = Vec::new();
    for i in 1..=n {
        let Some(id) = kv::load(store, &KeyIndex(i)).map_err(kv_failure)? else {
            continue;
        };
        if let Some(rec) = get(store, &id)? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// One key by id.
pub fn get(store: &dyn Kv, id: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
    let Some(hash) = kv::load(store, &KeyById(id)).map_err(kv_failure)? else {
        return Ok(None);
    };
    kv::load(store, &KeyByHash(&hash)).map_err(kv_failure)
}

/// Writes a changed record, then makes sure no revocation or half-done rotation is undone:
/// - a DELETE that raced this change wrote its tombstone before removing the records, so if the
///   tombstone is there now, the record this change wrote is removed again (revocation wins);
/// - the hash a rotation replaced is removed again (a rotation that died before removing it
///   would otherwise leave a second valid secret).
///
/// Read-modify-write without compare-and-swap: two admin changes of one key at the same moment
/// may lose one of the two changes (the last write wins), never a revocation.
fn put(store: &dyn Kv, rec: &ApiKeyRecord) -> Result<(), ApiError> {
    kv::store(store, &KeyByHash(&rec.hash), rec).map_err(kv_failure)?;
    settle_put(store, rec)
}

/// The second half of [`put`], after the record is written.
fn settle_put(store: &dyn Kv, rec: &ApiKeyRecord) -> Result<(), ApiError> {
    if let Some(old) = &rec.previous_hash {
        kv::remove(store, &KeyByHash(old)).map_err(kv_failure)?;
    }
    if kv::load(store, &KeyRevoked(&rec.id))
        .map_err(kv_failure)?
        .is_some()
    {
        kv::remove(store, &KeyByHash(&rec.hash)).map_err(kv_failure)?;
        return Err(no_such_key(&rec.id));
    }
    Ok(())
}

/// Revokes a key; 404 when there is none. The tombstone goes first, so a change racing this
/// one never brings the key back (see [`put`]).
pub fn delete(store: &dyn Kv, id: &str, now_secs: u64) -> Result<ApiKeyRecord, ApiError> {
    let rec = get(store, id)?.ok_or_else(|| no_such_key(id))?;
    kv::store(store, &KeyRevoked(id), &now_secs).map_err(kv_failure)?;
    kv::remove(store, &KeyByHash(&rec.hash)).map_err(kv_failure)?;
    if let Some(old) = &rec.previous_hash {
        kv::remove(store, &KeyByHash(old)).map_err(kv_failure)?;
    }
    kv::remove(store, &KeyById(id)).map_err(kv_failure)?;
    Ok(rec)
}

/// Replaces a key's secret: the old secret stops working at once, the id, limits and usage
/// stay. Returns the record and the new secret (shown once). Order: the new record (naming the
/// old hash), the id index, then the old record removed — a crash at any point leaves the old
/// secret valid until the next admin change of the key removes it, and never two for long.
pub fn rotate(
    store: &dyn Kv,
    id: &str,
    secret_bytes: &[u8; 32],
    now_secs: u64,
) -> Result<(ApiKeyRecord, String), ApiError> {
    let old = get(store, id)?.ok_or_else(|| no_such_key(id))?;
    if let Some(older) = &old.previous_hash {
        kv::remove(store, &KeyByHash(older)).map_err(kv_failure)?;
    }
    let secret = format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes)
    );
    let rec = ApiKeyRecord {
        hash: hash_secret(&secret),
        rotated: Some(now_secs),
        previous_hash: Some(old.hash.clone()),
        ..old
    };
    kv::store(store, &KeyByHash(&rec.hash), &rec).map_err(kv_failure)?;
    kv::store(store, &KeyById(&rec.id), &rec.hash).map_err(kv_failure)?;
    settle_put(store, &rec)?;
    Ok((rec, secret))
}

/// Applies `change` to a key's record (expiry, bring-your-own-key providers).
pub fn update(
    store: &dyn Kv,
    id: &str,
    change: impl FnOnce(&mut ApiKeyRecord),
) -> Result<ApiKeyRecord, ApiError> {
    let mut rec = get(store, id)?.ok_or_else(|| no_such_key(id))?;
    change(&mut rec);
    put(store, &rec)?;
    Ok(rec)
}

/// Sets or clears a key's expiry.
pub fn set_expiry(
    store: &dyn Kv,
    id: &str,
    expires_at: Option<u64>,
) -> Result<ApiKeyRecord, ApiError> {
    update(store, id, |rec| rec.expires_at = expires_at)
}

fn no_such_key(id: &str) -> ApiError {
    ApiError::not_found(
        format!("no API key with id \"{id}\""),
        Some("id"),
        "key_not_found",
    )
}

/// The public view of a key (never the secret or its hash).
pub fn public_view(rec: &ApiKeyRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": rec.id,
        "object": "api_key",
        "name": rec.name,
        "tenant": rec.tenant_id(),
        "plan": (!rec.plan.is_empty()).then_some(&rec.plan),
        "rpm_limit": rec.rpm_limit,
        "allowed_models": rec.allowed_models,
        "created": rec.created,
        "expires_at": rec.expires_at,
        "rotated": rec.rotated,
        "reference_model": rec.reference_model,
        // Content is stored only in the response cache, never for a zero-retention key.
        "zero_retention": rec.zero_retention,
    });
    if let Some(c) = &rec.cache {
        v["cache"] = serde_json::to_value(c).unwrap_or_default();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn mk(kv: &MemKv, name: &str, seed: u8) -> (ApiKeyRecord, String) {
        let req = parse_create(format!(r#"{{"name":"{name}","rpm_limit":5}}"#).as_bytes()).unwrap();
        create(kv, req, &[seed; 32], &[seed; 8], 100).unwrap()
    }

    #[test]
    fn create_authenticate_list_delete() {
        let kv = MemKv::default();
        let (rec, secret) = mk(&kv, "a", 1);
        assert!(secret.starts_with("lm_") && secret.len() == 46);
        assert_eq!(authenticate(&kv, &secret, 100).unwrap(), rec);
        assert!(
            !kv.keys().iter().any(|k| k.contains(&secret)),
            "secret must not be stored"
        );
        let (b, _) = mk(&kv, "b", 2);
        assert_eq!(
            list(&kv)
                .unwrap()
                .iter()
                .map(|r| r.id.clone())
                .collect::<Vec<_>>(),
            vec![rec.id.clone(), b.id.clone()]
        );
        delete(&kv, &rec.id, 100).unwrap();
        assert_eq!(authenticate(&kv, &secret, 100).unwrap_err().status, 401);
        assert_eq!(list(&kv).unwrap(), vec![b]);
        assert_eq!(delete(&kv, &rec.id, 100).unwrap_err().status, 404);
        // A change racing the revocation does not bring the key back.
        let stale = ApiKeyRecord {
            expires_at: Some(1),
            ..rec.clone()
        };
        assert_eq!(put(&kv, &stale).unwrap_err().status, 404);
        assert_eq!(authenticate(&kv, &secret, 100).unwrap_err().status, 401);
    }

    #[test]
    fn rotate_and_expire() {
        let kv = MemKv::default();
        let (rec, old) = mk(&kv, "a", 1);
        let (rotated, new) = rotate(&kv, &rec.id, &[9; 32], 200).unwrap();
        assert_eq!(
            (rotated.id.as_str(), rotated.rotated),
            (rec.id.as_str(), Some(200))
        );
        assert_eq!(authenticate(&kv, &old, 201).unwrap_err().status, 401);
        assert_eq!(authenticate(&kv, &new, 201).unwrap().id, rec.id);
        set_expiry(&kv, &rec.id, Some(300)).unwrap();
        assert!(authenticate(&kv, &new, 299).is_ok());
        let e = authenticate(&kv, &new, 300).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_deref()),
            (401, Some("expired_api_key"))
        );
        assert_eq!(
            rotate(&kv, "key_none", &[1; 32], 1).unwrap_err().status,
            404
        );
        assert_eq!(
            parse_create(br#"{"name":"a","tenant":"a b"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("tenant")
        );
    }

    #[test]
    fn wrong_and_missing_keys_are_401() {
        let kv = MemKv::default();
        mk(&kv, "a", 1);
        assert_eq!(authenticate(&kv, "lm_nope", 100).unwrap_err().status, 401);
        assert_eq!(authenticate(&kv, "sk-other", 100).unwrap_err().status, 401);
        assert_eq!(bearer(None).unwrap_err().status, 401);
        assert_eq!(bearer(Some("Basic abc")).unwrap_err().status, 401);
        assert_eq!(bearer(Some("Bearer  lm_x ")).unwrap(), "lm_x");
    }

    #[test]
    fn allowed_models_must_exist() {
        let list = serde_json::json!({"object": "list", "data": [
            {"id": "gpt-4o-mini", "aliases": ["openai/gpt-4o-mini"]},
            {"id": "gpt-4o", "aliases": []}
        ]});
        check_allowed_models(&[], &list).unwrap();
        check_allowed_models(&["gpt-4o".into(), "openai/gpt-4o-mini".into()], &list).unwrap();
        let e = check_allowed_models(&["gpt-4o".into(), "gpt-4o-mni".into()], &list).unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some("allowed_models[1]"))
        );
        assert_eq!(
            e.message,
            "unknown model \"gpt-4o-mni\" in allowed_models; available models: gpt-4o-mini, gpt-4o"
        );
    }

    #[test]
    fn create_body_errors_name_the_field() {
        let e = parse_create(br#"{"name":"a","rpm":5}"#).unwrap_err();
        assert!(e.message.contains("unknown field `rpm`"), "{}", e.message);
        let e = parse_create(br#"{"name":"a","rpm_limit":"five"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("rpm_limit"));
        let e = parse_create(br#"{"rpm_limit":5}"#).unwrap_err();
        assert!(e.message.contains("missing field `name`"), "{}", e.message);
        assert_eq!(
            parse_create(br#"{"name":"a","rpm_limit":0}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("rpm_limit")
        );
    }
}
