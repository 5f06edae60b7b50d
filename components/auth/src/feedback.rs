//! `POST /v1/feedback` (an API key rates one of its own answers) and `GET /admin/feedback` (the
//! feedback and the cascade's labels as JSONL for `scripts/train-router.sh --feedback`). The
//! logic is `lumen_shared::store::feedback`.

use crate::account::authenticate;
use crate::admin::check_admin;
use crate::ctx::{read_body, ReqInfo};
use lumen_shared::store::feedback::{self, ExportQuery};
use lumen_shared::store::limits::check_rpm;
use lumen_shared::ApiError;
use lumen_spin::kv::unavailable;
use lumen_spin::util::{now_ms, query_param};
use lumen_spin::{Reply, SpinKv};
use spin_sdk::http::IncomingRequest;

/// Most lines of each kind one export returns.
const MAX_EXPORT: usize = 100_000;

/// `POST /v1/feedback`: 201 with the stored feedback; 400 naming the field, 404 for a request
/// that is not the key's (or too old), 409 for a second feedback on one request. Counts against
/// the key's requests per minute.
pub async fn give(info: &ReqInfo, req: IncomingRequest) -> Result<Reply, ApiError> {
    let kv = SpinKv::open_or_503()?;
    let key = authenticate(&kv, info)?;
    let body = read_body(req, info).await?;
    let ask = feedback::parse(&body)?;
    check_rpm(&kv, &key.id, key.rpm_limit, now_ms())?;
    let rec = feedback::give(&kv, &key.id, ask, now_ms())?;
    Ok(Reply::json(201, &rec.view()))
}

/// `GET /admin/feedback?key_id=&limit=&cascade=`: JSONL, oldest first — each key's feedback
/// (`source: "feedback"`, with `score`), then the cascade's labels (`source: "cascade"`, with
/// `label`), the newest `limit` (default 10,000) of each.
pub fn export(info: &ReqInfo) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let limit = match query_param(&info.query, "limit") {
        None => 10_000,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_EXPORT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_request(
                    format!("'limit' must be an integer from 1 to {MAX_EXPORT}, got {l:?}"),
                    Some("limit"),
                    "invalid_value",
                )
            })?,
    };
    let cascade = match query_param(&info.query, "cascade").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::invalid_request(
                format!("'cascade' must be true or false, got {other:?}"),
                Some("cascade"),
                "invalid_value",
            ))
        }
    };
    let q = ExportQuery {
        key_id: query_param(&info.query, "key_id").filter(|k| !k.is_empty()),
        limit,
        cascade,
    };
    let kv = SpinKv::open_or_503()?;
    let lines = feedback::export(&kv, &q, now_ms()).map_err(|e| unavailable(&e))?;
    let mut body = Vec::new();
    for l in lines {
        body.extend(l.to_string().into_bytes());
        body.push(b'\n');
    }
    Ok(Reply::new(200, "application/x-ndjson", body))
}
