//! The public route table: which handler a method and path go to, 404 for unknown paths and 405
//! for a known path with the wrong method. Pure, so it is unit-tested natively.

use lumen_shared::ApiError;
use lumen_spin::util::percent_decode;

/// A public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/messages` (Anthropic Messages ingress).
    Messages,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`: one model (id or alias), as `/v1/models` lists it.
    Model(String),
    /// `GET /v1/usage`.
    Usage,
    /// `POST /v1/route`.
    Plan,
    /// `POST /v1/feedback`: feedback on one of the key's answers.
    Feedback,
    /// `GET /admin/feedback`: feedback and cascade labels as JSONL for retraining.
    AdminFeedback,
    /// `POST /admin/keys`.
    CreateKey,
    /// `GET /admin/keys`.
    ListKeys,
    /// `DELETE /admin/keys/{id}`.
    DeleteKey(String),
    /// `PATCH /admin/keys/{id}`: set or clear `expires_at`.
    UpdateKey(String),
    /// `POST /admin/keys/{id}/rotate`.
    RotateKey(String),
    /// `GET /v1/usage/records`: the caller's own newest usage records.
    UsageRecords,
    /// `GET /admin/usage`: any key's or tenant's usage.
    AdminUsage,
    /// `GET /admin/usage/records`.
    AdminUsageRecords,
    /// `GET /admin/tenants/{tenant}`: settings and this month's ledger.
    GetTenant(String),
    /// `PUT /admin/tenants/{tenant}`: budget settings.
    PutTenant(String),
    /// `POST /admin/tenants/{tenant}/credits`: grant credits.
    GrantCredits(String),
    /// `GET /admin/audit/head`.
    AuditHead,
    /// `GET /admin/audit/verify`.
    AuditVerify,
    /// `GET /admin/health`: provider health records.
    AdminHealth,
    /// `GET /admin/shadow/{name}`: a shadow experiment's report.
    AdminShadow(String),
    /// `GET /admin/keys/{id}/provider-keys`.
    ListProviderKeys(String),
    /// `PUT /admin/keys/{id}/provider-keys/{provider}`.
    PutProviderKey(String, String),
    /// `DELETE /admin/keys/{id}/provider-keys/{provider}`.
    DeleteProviderKey(String, String),
    /// `GET /healthz`: alive (no credentials, no KV).
    Healthz,
    /// `GET /readyz`: KV and catalog answer (no credentials).
    Readyz,
    /// `GET /metrics`: Prometheus text (admin token).
    Metrics,
}

/// One raw path segment (non-empty, no `/`).
fn segment(s: &str) -> Option<&str> {
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

/// A path segment's value, percent-decoded. One that decodes to what could not be a segment of
/// its own — a `/` or `\` (`a%2Fb` would name `a/b`), a control character, `.` or `..` — is a
/// 400 naming `what`, never an id with a slash in it.
fn decoded(raw: &str, what: &str) -> Result<String, ApiError> {
    let v = percent_decode(raw);
    let bad = v.contains(['/', '\\']) || v.chars().any(char::is_control) || v == "." || v == "..";
    if bad {
        return Err(ApiError::invalid_request(
            format!(
                "invalid {what} in the path: {raw:?} decodes to {v:?}; a {what} may not contain '/', '\\', control characters, or be '.' or '..'"
            ),
            Some(what),
            "invalid_path_segment",
        ));
    }
    Ok(v)
}

/// Resolves a method and path.
pub fn match_route(method: &str, path: &str) -> Result<Route, ApiError> {
    let only = |want: &str, route: Route| {
        if method == want {
            Ok(route)
        } else {
            Err(ApiError::method_not_allowed(method, path, want))
        }
    };
    match path {
        "/v1/chat/completions" => only("POST", Route::Chat),
        "/v1/messages" => only("POST", Route::Messages),
        "/v1/embeddings" => only("POST", Route::Embeddings),
        "/v1/models" => only("GET", Route::Models),
        _ if path.starts_with("/v1/models/") => {
            // Model ids may hold a '/' themselves (`lumen/auto`, `meta-llama/…`): the rest of
            // the path is the id.
            let id = percent_decode(&path["/v1/models/".len()..]);
            if id.is_empty() {
                return Err(ApiError::not_found(
                    format!("unknown route {method} {path}"),
                    None,
                    "unknown_route",
                ));
            }
            only("GET", Route::Model(id))
        }
        "/v1/usage" => only("GET", Route::Usage),
        "/v1/usage/records" => only("GET", Route::UsageRecords),
        "/admin/usage" => only("GET", Route::AdminUsage),
        "/admin/usage/records" => only("GET", Route::AdminUsageRecords),
        "/admin/audit/head" => only("GET", Route::AuditHead),
        "/admin/audit/verify" => only("GET", Route::AuditVerify),
        "/v1/route" => only("POST", Route::Plan),
        "/v1/feedback" => only("POST", Route::Feedback),
        "/admin/feedback" => only("GET", Route::AdminFeedback),
        "/admin/health" => only("GET", Route::AdminHealth),
        "/healthz" => only("GET", Route::Healthz),
        "/readyz" => only("GET", Route::Readyz),
        "/metrics" => only("GET", Route::Metrics),
        "/admin/keys" => match method {
            "GET" => Ok(Route::ListKeys),
            "POST" => Ok(Route::CreateKey),
            _ => Err(ApiError::method_not_allowed(method, path, "GET or POST")),
        },
        _ => {
            if let Some(rest) = path.strip_prefix("/admin/keys/") {
                if let Some((id, provider)) = byok_path(rest) {
                    let id = decoded(id, "key id")?;
                    return match (provider, method) {
                        (None, _) => only("GET", Route::ListProviderKeys(id)),
                        (Some(p), "PUT") => Ok(Route::PutProviderKey(id, decoded(p, "provider")?)),
                        (Some(p), "DELETE") => {
                            Ok(Route::DeleteProviderKey(id, decoded(p, "provider")?))
                        }
                        (Some(_), _) => {
                            Err(ApiError::method_not_allowed(method, path, "PUT or DELETE"))
                        }
                    };
                }
                if let Some(id) = rest.strip_suffix("/rotate").and_then(segment) {
                    return only("POST", Route::RotateKey(decoded(id, "key id")?));
                }
                if let Some(id) = segment(rest) {
                    return match method {
                        "DELETE" => Ok(Route::DeleteKey(decoded(id, "key id")?)),
                        "PATCH" => Ok(Route::UpdateKey(decoded(id, "key id")?)),
                        _ => Err(ApiError::method_not_allowed(
                            method,
                            path,
                            "DELETE or PATCH",
                        )),
                    };
                }
            }
            if let Some(name) = path.strip_prefix("/admin/shadow/").and_then(segment) {
                return only("GET", Route::AdminShadow(decoded(name, "shadow name")?));
            }
            if let Some(rest) = path.strip_prefix("/admin/tenants/") {
                if let Some(t) = rest.strip_suffix("/credits").and_then(segment) {
                    return only("POST", Route::GrantCredits(decoded(t, "tenant")?));
                }
                if let Some(t) = segment(rest) {
                    return match method {
                        "GET" => Ok(Route::GetTenant(decoded(t, "tenant")?)),
                        "PUT" => Ok(Route::PutTenant(decoded(t, "tenant")?)),
                        _ => Err(ApiError::method_not_allowed(method, path, "GET or PUT")),
                    };
                }
            }
            Err(ApiError::not_found(
                format!("unknown route {method} {path}"),
                None,
                "unknown_route",
            ))
        }
    }
}

/// `{id}/provider-keys` or `{id}/provider-keys/{provider}` → (id, provider), still encoded.
fn byok_path(rest: &str) -> Option<(&str, Option<&str>)> {
    let mut parts = rest.split('/');
    let (id, lit) = (parts.next()?, parts.next()?);
    if id.is_empty() || lit != "provider-keys" {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None, None) => Some((id, None)),
        (Some(p), None) if !p.is_empty() => Some((id, Some(p))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(match_route("POST", "/v1/chat/completions"), Ok(Route::Chat));
        assert_eq!(match_route("GET", "/v1/models"), Ok(Route::Models));
        assert_eq!(match_route("POST", "/v1/messages"), Ok(Route::Messages));
        assert_eq!(match_route("POST", "/v1/embeddings"), Ok(Route::Embeddings));
        assert_eq!(
            match_route("GET", "/admin/keys/k1/provider-keys"),
            Ok(Route::ListProviderKeys("k1".into()))
        );
        assert_eq!(
            match_route("PUT", "/admin/keys/k1/provider-keys/openai"),
            Ok(Route::PutProviderKey("k1".into(), "openai".into()))
        );
        assert_eq!(
            match_route("DELETE", "/admin/keys/k1/provider-keys/openai"),
            Ok(Route::DeleteProviderKey("k1".into(), "openai".into()))
        );
        assert_eq!(
            match_route("POST", "/admin/keys/k1/provider-keys/openai")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            match_route("GET", "/admin/keys/k1/provider-keys/a/b")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(match_route("GET", "/v1/usage"), Ok(Route::Usage));
        assert_eq!(match_route("GET", "/healthz"), Ok(Route::Healthz));
        assert_eq!(match_route("GET", "/readyz"), Ok(Route::Readyz));
        assert_eq!(match_route("GET", "/metrics"), Ok(Route::Metrics));
        assert_eq!(match_route("POST", "/metrics").unwrap_err().status, 405);
        assert_eq!(
            match_route("GET", "/admin/shadow/mini-vs-4o"),
            Ok(Route::AdminShadow("mini-vs-4o".into()))
        );
        assert_eq!(
            match_route("POST", "/admin/shadow/x").unwrap_err().status,
            405
        );
        assert_eq!(match_route("POST", "/v1/route"), Ok(Route::Plan));
        assert_eq!(match_route("POST", "/v1/feedback"), Ok(Route::Feedback));
        assert_eq!(match_route("GET", "/v1/feedback").unwrap_err().status, 405);
        assert_eq!(
            match_route("GET", "/admin/feedback"),
            Ok(Route::AdminFeedback)
        );
        assert_eq!(match_route("GET", "/admin/keys"), Ok(Route::ListKeys));
        assert_eq!(match_route("POST", "/admin/keys"), Ok(Route::CreateKey));
        assert_eq!(
            match_route("DELETE", "/admin/keys/key_ab"),
            Ok(Route::DeleteKey("key_ab".into()))
        );
        assert_eq!(
            match_route("POST", "/admin/keys/key_ab/rotate"),
            Ok(Route::RotateKey("key_ab".into()))
        );
        assert_eq!(
            match_route("PATCH", "/admin/keys/key_ab"),
            Ok(Route::UpdateKey("key_ab".into()))
        );
        assert_eq!(
            match_route("PUT", "/admin/tenants/acme"),
            Ok(Route::PutTenant("acme".into()))
        );
        assert_eq!(
            match_route("POST", "/admin/tenants/acme/credits"),
            Ok(Route::GrantCredits("acme".into()))
        );
        assert_eq!(
            match_route("GET", "/admin/audit/verify"),
            Ok(Route::AuditVerify)
        );
        assert_eq!(
            match_route("GET", "/v1/usage/records"),
            Ok(Route::UsageRecords)
        );
        assert_eq!(
            match_route("GET", "/admin/keys/key_ab/rotate")
                .unwrap_err()
                .status,
            405
        );
    }

    /// `%2F` in an admin path segment used to store ids with slashes (`a%2Fb%2Fc` → tenant
    /// `a/b/c`): refused with a 400 naming the segment.
    #[test]
    fn encoded_slashes_in_admin_segments_are_refused() {
        for (method, path, what) in [
            ("PUT", "/admin/tenants/a%2Fb%2Fc", "tenant"),
            ("GET", "/admin/tenants/a%2fb", "tenant"),
            ("POST", "/admin/tenants/a%5Cb/credits", "tenant"),
            ("GET", "/admin/tenants/%2E%2E", "tenant"),
            ("DELETE", "/admin/keys/key%2F1", "key id"),
            ("POST", "/admin/keys/key%2F1/rotate", "key id"),
            ("PUT", "/admin/keys/k1/provider-keys/open%2Fai", "provider"),
            ("GET", "/admin/keys/k%00/provider-keys", "key id"),
        ] {
            let e = match_route(method, path).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref(), e.code.as_deref()),
                (400, Some(what), Some("invalid_path_segment")),
                "{method} {path}"
            );
        }
        assert_eq!(
            match_route("PUT", "/admin/tenants/acme%20co"),
            Ok(Route::PutTenant("acme co".into()))
        );
    }

    #[test]
    fn one_model_by_id_even_with_a_slash() {
        assert_eq!(
            match_route("GET", "/v1/models/gpt-4o-mini"),
            Ok(Route::Model("gpt-4o-mini".into()))
        );
        assert_eq!(
            match_route("GET", "/v1/models/lumen/auto"),
            Ok(Route::Model("lumen/auto".into()))
        );
        assert_eq!(match_route("POST", "/v1/models/x").unwrap_err().status, 405);
        assert_eq!(match_route("GET", "/v1/models/").unwrap_err().status, 404);
    }

    #[test]
    fn wrong_method_is_405_and_unknown_path_404() {
        let e = match_route("GET", "/v1/chat/completions").unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (
                405,
                "method GET is not allowed on /v1/chat/completions; use POST"
            )
        );
        assert_eq!(match_route("PUT", "/admin/keys").unwrap_err().status, 405);
        assert_eq!(
            match_route("GET", "/admin/keys/key_ab").unwrap_err().status,
            405
        );
        let e = match_route("GET", "/v1/nope").unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (404, "unknown route GET /v1/nope")
        );
        assert_eq!(
            match_route("DELETE", "/admin/keys/").unwrap_err().status,
            404
        );
        assert_eq!(
            match_route("DELETE", "/admin/keys/a/b").unwrap_err().status,
            404
        );
        assert_eq!(
            match_route("POST", "/v1/chat/completions/")
                .unwrap_err()
                .status,
            404
        );
    }
}
