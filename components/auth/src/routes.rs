//! The public route table: which handler a method and path go to, 404 for unknown paths and 405
//! for a known path with the wrong method. Pure, so it is unit-tested natively.

use lumen_shared::ApiError;
use lumen_spin::util::percent_decode;

/// A public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/usage`.
    Usage,
    /// `POST /v1/route`.
    Plan,
    /// `POST /admin/keys`.
    CreateKey,
    /// `GET /admin/keys`.
    ListKeys,
    /// `DELETE /admin/keys/{id}`.
    DeleteKey(String),
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
        "/v1/models" => only("GET", Route::Models),
        "/v1/usage" => only("GET", Route::Usage),
        "/v1/route" => only("POST", Route::Plan),
        "/admin/keys" => match method {
            "GET" => Ok(Route::ListKeys),
            "POST" => Ok(Route::CreateKey),
            _ => Err(ApiError::method_not_allowed(method, path, "GET or POST")),
        },
        _ => match path.strip_prefix("/admin/keys/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                only("DELETE", Route::DeleteKey(percent_decode(id)))
            }
            _ => Err(ApiError::not_found(
                format!("unknown route {method} {path}"),
                None,
                "unknown_route",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(match_route("POST", "/v1/chat/completions"), Ok(Route::Chat));
        assert_eq!(match_route("GET", "/v1/models"), Ok(Route::Models));
        assert_eq!(match_route("GET", "/v1/usage"), Ok(Route::Usage));
        assert_eq!(match_route("POST", "/v1/route"), Ok(Route::Plan));
        assert_eq!(match_route("GET", "/admin/keys"), Ok(Route::ListKeys));
        assert_eq!(match_route("POST", "/admin/keys"), Ok(Route::CreateKey));
        assert_eq!(
            match_route("DELETE", "/admin/keys/key_ab"),
            Ok(Route::DeleteKey("key_ab".into()))
        );
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
