//! The admin API client of `lumen`: one JSON request at a time to `LUMEN_URL`, with errors that
//! say what went wrong and what to do (unreachable server, refused token, the API's own message).

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// Which credential a request carries.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    /// The admin token (`/admin/...`).
    Admin,
    /// An API key (`/v1/...`).
    Key(&'a str),
}

/// A client of one gateway.
pub struct Client {
    base: String,
    admin_token: Option<String>,
    timeout: Duration,
    http: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// A client of the gateway at `base` (`http://…` or `https://…`).
    pub fn new(base: &str, admin_token: Option<String>, timeout: Duration) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("the gateway URL must start with http:// or https:// (LUMEN_URL or --url): got {base:?}");
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            base,
            admin_token: admin_token.filter(|t| !t.is_empty()),
            timeout,
            http,
        })
    }

    /// `GET path` as the admin.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, Auth::Admin, None).await
    }

    /// Sends one request and returns the JSON answer of a 2xx; any other outcome is an error
    /// message meant for a person.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let bearer = match auth {
            Auth::Admin => self.admin_token.as_deref().ok_or_else(|| {
                anyhow!(
                    "no admin token: set LUMEN_ADMIN_TOKEN (or pass --admin-token) to the gateway's \
                     admin_token; `lumen up` prints the one it generates"
                )
            })?,
            Auth::Key(key) => key,
        };
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("authorization", format!("Bearer {bearer}"))
            .header("accept", "application/json")
            .header("user-agent", concat!("lumen/", env!("CARGO_PKG_VERSION")));
        let payload = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| anyhow!("cannot build a request for {url}: {e}"))?;
        let exchange = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => bail!(
                "no answer from {url} within {} s (--timeout)",
                self.timeout.as_secs()
            ),
            Ok(Err(e)) => return Err(self.transport_error(e)),
            Ok(Ok(answer)) => answer,
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| {
                anyhow!(
                    "{method} {url} answered {status} with a body that is not JSON ({}); is LUMEN_URL a Lumen gateway?",
                    snippet(&body)
                )
            });
        }
        Err(api_error(&method, path, status, json.as_ref(), &body, auth))
    }

    fn transport_error(&self, e: anyhow::Error) -> anyhow::Error {
        let connect = e
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect);
        // The innermost cause names the failure ("Connection refused", "dns error", …).
        let cause = e
            .chain()
            .last()
            .map(ToString::to_string)
            .unwrap_or_default();
        if connect {
            anyhow!(
                "cannot reach the gateway at {}: {cause}\nhint: is it running? start it with `lumen up`, or point LUMEN_URL (or --url) at it",
                self.base
            )
        } else {
            anyhow!("the exchange with {} failed: {cause}", self.base)
        }
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty".into();
    }
    let cut: String = text.chars().take(120).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Renders a non-2xx answer: the API's own message, its status and code, and a hint where one
/// helps.
fn api_error(
    method: &Method,
    path: &str,
    status: StatusCode,
    json: Option<&Value>,
    raw: &[u8],
    auth: Auth<'_>,
) -> anyhow::Error {
    let err = json.and_then(|v| v.get("error"));
    let Some(err) = err else {
        return anyhow!(
            "{method} {path} answered {status} ({}); is LUMEN_URL a Lumen gateway?",
            snippet(raw)
        );
    };
    let message = err["message"].as_str().unwrap_or("(no message)");
    let code = err["code"].as_str().or_else(|| err["type"].as_str());
    let mut text = match code {
        Some(code) => format!("{message} ({} {code})", status.as_u16()),
        None => format!("{message} ({})", status.as_u16()),
    };
    if let Some(param) = err["param"].as_str() {
        text.push_str(&format!("; field: {param}"));
    }
    let hint = match (status, auth) {
        (StatusCode::UNAUTHORIZED, Auth::Admin) => Some(
            "the gateway refused the admin token: set LUMEN_ADMIN_TOKEN (or --admin-token) to its admin_token",
        ),
        (StatusCode::UNAUTHORIZED, Auth::Key(_)) => Some(
            "the gateway refused the API key: set LUMEN_API_KEY (or --key) to a key from `lumen keys create`",
        ),
        (StatusCode::FORBIDDEN, Auth::Admin) => Some(
            "the admin API is off when the gateway's admin_token is empty (set SPIN_VARIABLE_ADMIN_TOKEN where it runs)",
        ),
        _ => None,
    };
    if let Some(hint) = hint {
        text.push_str("\nhint: ");
        text.push_str(hint);
    }
    anyhow!("{text}")
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters pass).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?a=1&b=2` from the pairs whose value is set (empty when none is).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_builds_queries() {
        assert_eq!(encode("acme corp/1"), "acme%20corp%2F1");
        assert_eq!(
            query(&[
                ("tenant", Some("a b")),
                ("model", None),
                ("from", Some("2026-01-01"))
            ]),
            "?tenant=a%20b&from=2026-01-01"
        );
        assert_eq!(query(&[("x", None)]), "");
    }

    #[test]
    fn api_errors_carry_message_code_field_and_hint() {
        let body = serde_json::json!({"error": {"message": "no API key with id \"k\"", "type": "invalid_request_error", "param": "id", "code": "key_not_found"}});
        let e = api_error(
            &Method::DELETE,
            "/admin/keys/k",
            StatusCode::NOT_FOUND,
            Some(&body),
            b"",
            Auth::Admin,
        );
        assert_eq!(
            e.to_string(),
            "no API key with id \"k\" (404 key_not_found); field: id"
        );
        let body = serde_json::json!({"error": {"message": "bad token", "type": "authentication_error", "param": null, "code": "invalid_api_key"}});
        let e = api_error(
            &Method::GET,
            "/admin/keys",
            StatusCode::UNAUTHORIZED,
            Some(&body),
            b"",
            Auth::Admin,
        );
        assert!(
            e.to_string().starts_with(
                "bad token (401 invalid_api_key)\nhint: the gateway refused the admin token"
            ),
            "{e}"
        );
        let e = api_error(
            &Method::GET,
            "/admin/keys",
            StatusCode::BAD_GATEWAY,
            None,
            b"<html>",
            Auth::Admin,
        );
        assert!(e.to_string().contains("\"<html>\""), "{e}");
    }
}
