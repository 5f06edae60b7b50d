//! The Spin floor: a benchmark reference, not part of Lumen. Per `POST .../chat/completions` it
//! does the I/O a warm Lumen chat does and nothing else: five key-value round trips on the
//! `default` store in Lumen's order and through the same calls ([`SpinKv`]: a `get` of the key's
//! record, a `get-many` like the router's health batch, an `increment` for the rate limit, and
//! after the upstream answer the audit's `increment` and `set`), one upstream `POST` of the
//! request body (written before the request is handed over, as Lumen's provider does), and the
//! upstream's answer passed back whole, head and body in one write (`lumen_spin::http`). No
//! parsing, planning, pricing, usage or stamping. `scripts/bench.sh` runs it under Spin beside Lumen, so the ratio of the two shows
//! what Lumen's own work costs there, and the floor's ratio to lumen-host bounds what any
//! gateway doing this work can reach on Spin.

use lumen_shared::store::Kv;
use lumen_shared::ApiError;
use lumen_spin::http::{json_post, read_request_body, respond, send_request, Reply};
use lumen_spin::kv::{unavailable, SpinKv};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::variables;

/// The largest request body read (Lumen's default `max_request_bytes`).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Whether a JSON body asks for a stream (`"stream": true`), by a byte search: the floor does
/// not parse JSON.
fn wants_stream(body: &[u8]) -> bool {
    let pat = b"\"stream\"";
    body.windows(pat.len())
        .position(|w| w == pat)
        .is_some_and(|at| {
            let rest = body[at + pat.len()..]
                .iter()
                .skip_while(|b| b.is_ascii_whitespace() || **b == b':');
            rest.take(4).copied().eq(b"true".iter().copied())
        })
}

async fn serve(req: IncomingRequest, out: ResponseOutparam) {
    let bearer = lumen_spin::http::request_header(&req, "authorization").unwrap_or_default();
    let body = match read_request_body(req, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return respond(out, Reply::error(&e)).await,
    };
    let stream = wants_stream(&body);
    let kv = match SpinKv::open_or_503() {
        Ok(kv) => kv,
        Err(e) => return respond(out, Reply::error(&e)).await,
    };
    // Admission: the key's record, the plan's batch, the rate-limit counter.
    let key = format!("floor:key:{}", bearer.len());
    let batch = [
        format!("floor:health:{}", body.len()),
        "floor:budget".to_string(),
    ];
    let admitted = kv
        .get(&key)
        .and_then(|_| kv.get_many(&batch))
        .and_then(|_| kv.increment("floor:rpm", 1));
    if let Err(e) = admitted {
        return respond(out, Reply::error(&unavailable(&e))).await;
    }
    let base = variables::get("openai_base_url").unwrap_or_default();
    let api_key = variables::get("openai_api_key").unwrap_or_default();
    let mut upstream_req = json_post(&format!("{base}/chat/completions"), body);
    upstream_req.set_header("authorization", format!("Bearer {api_key}"));
    let Ok(resp) = send_request(upstream_req).await else {
        let e = ApiError::upstream(502, "the upstream call failed", true);
        return respond(out, Reply::error(&e)).await;
    };
    let status = resp.status();
    let settle = |len: usize| {
        // The audit: a sequence number, then the entry under it.
        kv.increment("floor:log:seq", 1).and_then(|seq| {
            kv.set(
                &format!("floor:log:{seq}"),
                format!("{{\"bytes\":{len}}}").as_bytes(),
            )
        })
    };
    // A stream is answered whole once the upstream has ended, as Lumen answers a stream whose
    // provider ends within its first burst (the bench mock's do): head and body in one write,
    // which stock Spin (no TCP_NODELAY) does not hold back for the client's delayed ACK.
    let answer = match lumen_spin::http::read_response_body(&resp, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let e = ApiError::upstream(502, "the upstream answer broke off", true);
            return respond(out, Reply::error(&e)).await;
        }
    };
    if let Err(e) = settle(answer.len()) {
        return respond(out, Reply::error(&unavailable(&e))).await;
    }
    let kind = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    respond(out, Reply::new(status, kind, answer)).await;
}

/// The export: the code `#[http_component]` generates is the only unsafe code here.
#[allow(unsafe_code)]
mod entry {
    use super::*;
    use spin_sdk::http_component;

    #[http_component]
    async fn handle(req: IncomingRequest, out: ResponseOutparam) {
        serve(req, out).await;
    }
}

#[cfg(test)]
mod tests {
    use super::wants_stream;

    #[test]
    fn stream_flag_is_found_with_or_without_spaces() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"stream" :  true, "model":"m"}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":"#));
    }
}
