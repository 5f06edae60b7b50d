//! The request's OpenTelemetry trace: what auth notes as the request passes (when admission,
//! planning and settlement ran, the attempts the provider reports, the answer's status) and,
//! after the response is finished, one OTLP/HTTP JSON export to
//! `{otel_exporter_otlp_endpoint}/v1/traces` when that variable is set. Spans: `lumen.request`
//! (the root, a child of the client's `traceparent` when it sent one), `auth` (key, limits,
//! body, budget) with `route` (the router's plan) inside it, one `upstream` span per attempt,
//! and `settle`. Attempt spans use the ids the provider sent upstream in `traceparent`
//! ([`lumen_shared::domain::trace::attempt_span_id`]); their start times are laid end to end
//! from the provider call's start (retry backoff is not measured, so later attempts start a
//! little early).

use crate::ctx::ReqInfo;
use lumen_shared::domain::trace::{self as t, Attr, Kind, Span};
use lumen_spin::http::{json_post, send_request};
use lumen_spin::util::{elapsed_ms, random_hex};
use serde::Deserialize;
use spin_sdk::variables;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// The variable naming the collector's base URL (`/v1/traces` is appended); empty: no export.
const ENDPOINT_VARIABLE: &str = "otel_exporter_otlp_endpoint";

/// One upstream attempt, as the provider reports it (`lumen.attempts`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Attempt {
    /// Provider.
    #[serde(default)]
    pub provider: String,
    /// Catalog model.
    #[serde(default)]
    pub model: String,
    /// `ok` or what went wrong (`error_502`, `deadline`, …).
    #[serde(default)]
    pub outcome: String,
    /// How long the try took, ms.
    #[serde(default)]
    pub latency_ms: f64,
}

/// What the trace records of one request; shared (`Rc`) so it outlives the handler's `Ctx`.
#[derive(Debug, Default)]
pub struct Trace {
    /// 32 hex digits: the client's trace id, or a new one.
    pub trace_id: String,
    /// The client's span (from `traceparent`), the root's parent.
    pub remote_parent: Option<String>,
    /// Whether the request is traced (an export endpoint is set or the client sent a
    /// `traceparent`): only then does the provider send `traceparent` upstream.
    pub on: bool,
    /// Export endpoint (empty: none).
    pub endpoint: String,
    /// Method and path.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Planning, ms since arrival (start, end).
    pub route: Option<(f64, f64)>,
    /// The provider call's start, ms since arrival (the end of admission).
    pub call_at: Option<f64>,
    /// Attempts the provider reported.
    pub attempts: Vec<Attempt>,
    /// The serving upstream's time to headers, ms.
    pub upstream_ms: f64,
    /// Settlement, ms since arrival (start, end).
    pub settle: Option<(f64, f64)>,
    /// The response's status.
    pub status: u16,
    /// Model and provider that served (or were planned).
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Request id.
    pub request_id: String,
}

/// The handle a request's context keeps.
pub type Shared = Rc<RefCell<Trace>>;

impl Trace {
    /// Starts the trace of a request from its headers.
    pub fn begin(info: &ReqInfo, request_id: &str) -> Trace {
        let endpoint = variables::get(ENDPOINT_VARIABLE)
            .unwrap_or_default()
            .trim()
            .trim_end_matches('/')
            .to_string();
        let incoming = info.traceparent.as_deref().and_then(t::parse_traceparent);
        let on = !endpoint.is_empty() || incoming.is_some();
        let (trace_id, remote_parent) = match incoming {
            Some(p) => (p.trace_id, Some(p.parent_id)),
            None => (random_hex(16), None),
        };
        Trace {
            trace_id,
            remote_parent,
            on,
            endpoint,
            method: info.method.clone(),
            path: info.path.clone(),
            request_id: request_id.to_string(),
            ..Trace::default()
        }
    }

    /// The trace id to pass to the provider (none when the request is not traced).
    pub fn propagate(&self) -> Option<String> {
        self.on.then(|| self.trace_id.clone())
    }

    /// The provider's `lumen-attempts` header.
    pub fn set_attempts(&mut self, header: Option<String>) {
        if let Some(a) = header.and_then(|h| serde_json::from_str::<Vec<Attempt>>(&h).ok()) {
            self.attempts = a;
        }
    }
}

/// Milliseconds since `started`, for a mark.
pub fn mark(started: Instant) -> f64 {
    elapsed_ms(started)
}

fn ns(started_ms: u64, at_ms: f64) -> u64 {
    started_ms * 1_000_000 + (at_ms.max(0.0) * 1_000_000.0) as u64
}

/// The spans of a finished request (`total_ms`: arrival to now).
pub fn spans(tr: &Trace, started_ms: u64, total_ms: f64) -> Vec<Span> {
    let id = &tr.trace_id;
    let root_id = t::root_span_id(id);
    let auth_id = t::derive_span_id(id, "auth");
    let at = |ms: f64| ns(started_ms, ms);
    let s = |k: &str, v: &str| (k.to_string(), Attr::Str(v.to_string()));
    let mut root_attrs = vec![
        s("http.request.method", &tr.method),
        s("url.path", &tr.path),
        s("lumen.request_id", &tr.request_id),
    ];
    if tr.status != 0 {
        root_attrs.push((
            "http.response.status_code".into(),
            Attr::Int(tr.status.into()),
        ));
    }
    if !tr.model.is_empty() {
        root_attrs.push(s("lumen.model", &tr.model));
        root_attrs.push(s("lumen.provider", &tr.provider));
    }
    let mut out = vec![Span {
        name: "lumen.request".into(),
        span_id: root_id.clone(),
        parent_span_id: tr.remote_parent.clone().unwrap_or_default(),
        start_ns: at(0.0),
        end_ns: at(total_ms),
        kind: Kind::Server,
        attributes: root_attrs,
        error: tr.status >= 500,
    }];
    let admitted = tr.call_at.unwrap_or(total_ms);
    out.push(Span {
        name: "auth".into(),
        span_id: auth_id.clone(),
        parent_span_id: root_id.clone(),
        start_ns: at(0.0),
        end_ns: at(admitted),
        kind: Kind::Internal,
        attributes: vec![s("lumen.phase", "key, limits, body, budget")],
        error: false,
    });
    if let Some((a, b)) = tr.route {
        out.push(Span {
            name: "route".into(),
            span_id: t::derive_span_id(id, "route"),
            parent_span_id: auth_id,
            start_ns: at(a),
            end_ns: at(b),
            kind: Kind::Internal,
            attributes: vec![s("lumen.model", &tr.model)],
            error: false,
        });
    }
    let mut cursor = admitted;
    let last = tr.attempts.len().saturating_sub(1);
    for (n, a) in tr.attempts.iter().enumerate() {
        let mut attrs = vec![
            s("lumen.provider", &a.provider),
            s("lumen.model", &a.model),
            s("gen_ai.system", &a.provider),
            s("gen_ai.request.model", &a.model),
            s("lumen.outcome", &a.outcome),
            ("lumen.attempt".into(), Attr::Int(n as i64)),
            ("lumen.latency_ms".into(), Attr::Double(a.latency_ms)),
        ];
        if let Some(code) = t::outcome_status(&a.outcome) {
            attrs.push(("http.response.status_code".into(), Attr::Int(code.into())));
        }
        if n == last && a.outcome == "ok" {
            attrs.push((
                "lumen.time_to_headers_ms".into(),
                Attr::Double(tr.upstream_ms),
            ));
        }
        out.push(Span {
            name: "upstream".into(),
            span_id: t::attempt_span_id(id, n),
            parent_span_id: root_id.clone(),
            start_ns: at(cursor),
            end_ns: at(cursor + a.latency_ms),
            kind: Kind::Client,
            attributes: attrs,
            error: a.outcome != "ok",
        });
        cursor += a.latency_ms;
    }
    if let Some((a, b)) = tr.settle {
        out.push(Span {
            name: "settle".into(),
            span_id: t::derive_span_id(id, "settle"),
            parent_span_id: root_id,
            start_ns: at(a),
            end_ns: at(b),
            kind: Kind::Internal,
            attributes: vec![],
            error: false,
        });
    }
    out
}

/// After the response is finished: posts the trace to the collector when an endpoint is set.
/// A failed export is logged once and otherwise ignored.
pub async fn export(tr: &Shared, started_ms: u64, started: Instant) {
    let (url, body) = {
        let tr = tr.borrow();
        if tr.endpoint.is_empty() {
            return;
        }
        let spans = spans(&tr, started_ms, elapsed_ms(started));
        let body = t::export_body("lumen", &tr.trace_id, &spans);
        (format!("{}/v1/traces", tr.endpoint), body.to_string())
    };
    match send_request(json_post(&url, body.into_bytes())).await {
        Ok(resp) if (200..300).contains(&resp.status()) => {}
        Ok(resp) => eprintln!(
            "lumen: the trace collector at {url} answered {}",
            resp.status()
        ),
        Err(e) => eprintln!("lumen: could not export a trace to {url}: {e:?}"),
    }
}
