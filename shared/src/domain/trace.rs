//! Request traces: the W3C `traceparent` header (accepted from clients, sent upstream on each
//! attempt) and the OTLP/HTTP JSON body auth posts to a collector after the response is
//! finished. Span ids of upstream attempts are derived from the trace id and the attempt's
//! index, so the provider can send them upstream and auth can rebuild the same spans later
//! without anything crossing the component boundary but the trace id.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `traceparent`: version `00`, a 32-hex trace id, a 16-hex parent span id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero: the caller's span.
    pub parent_id: String,
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && s.bytes().any(|b| b != b'0')
}

/// Parses a `traceparent` header; `None` for anything W3C Trace Context says to ignore
/// (a malformed value, version `ff`, an all-zero id).
pub fn parse_traceparent(v: &str) -> Option<TraceParent> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (parts[0], parts[1], parts[2], parts[3]);
    let version_ok = version.len() == 2
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && version != "ff"
        && (version != "00" || parts.len() == 4);
    let flags_ok = flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit());
    (version_ok && flags_ok && is_hex_id(trace_id, 32) && is_hex_id(parent_id, 16)).then(|| {
        TraceParent {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
        }
    })
}

/// The `traceparent` value for a span of a trace (always sampled: Lumen exports every trace it
/// starts).
pub fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// A span id derived from the trace id and a label: the same inputs give the same id in every
/// component, 16 hex digits, never all zero.
pub fn derive_span_id(trace_id: &str, label: &str) -> String {
    let mut h = Sha256::new();
    h.update(trace_id.as_bytes());
    h.update(b"/");
    h.update(label.as_bytes());
    let mut id = hex::encode(&h.finalize()[..8]);
    if id.bytes().all(|b| b == b'0') {
        id.replace_range(15..16, "1");
    }
    id
}

/// The span id of the request's `n`-th upstream attempt (0-based, in the order they were
/// made), which the provider sends upstream as the parent in `traceparent`.
pub fn attempt_span_id(trace_id: &str, n: usize) -> String {
    derive_span_id(trace_id, &format!("attempt/{n}"))
}

/// The span id of the request's root span.
pub fn root_span_id(trace_id: &str) -> String {
    derive_span_id(trace_id, "request")
}

/// OTLP span kinds used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside the gateway.
    Internal = 1,
    /// The request as the gateway served it.
    Server = 2,
    /// A call the gateway made (an upstream attempt).
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Name (`lumen.request`, `auth`, `route`, `upstream`, `settle`).
    pub name: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root without a remote parent.
    pub parent_span_id: String,
    /// Unix ns.
    pub start_ns: u64,
    /// Unix ns.
    pub end_ns: u64,
    /// Kind.
    pub kind: Kind,
    /// Attributes.
    pub attributes: Vec<(String, Attr)>,
    /// The span failed (OTLP status code 2, error).
    pub error: bool,
}

fn attr_json((k, v): &(String, Attr)) -> Value {
    let value = match v {
        Attr::Str(s) => json!({"stringValue": s}),
        // OTLP/JSON encodes 64-bit integers as strings.
        Attr::Int(i) => json!({"intValue": i.to_string()}),
        Attr::Double(d) => json!({"doubleValue": d}),
    };
    json!({"key": k, "value": value})
}

/// The OTLP/HTTP JSON body (`ExportTraceServiceRequest`) of one trace: one resource
/// (`service.name`), one scope (`lumen`), the spans. Trace and span ids are hex strings, as the
/// OTLP JSON encoding specifies (not base64).
pub fn export_body(service: &str, trace_id: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut v = json!({
                "traceId": trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": s.kind as i32,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.max(s.start_ns).to_string(),
                "attributes": s.attributes.iter().map(attr_json).collect::<Vec<_>>(),
                "status": if s.error { json!({"code": 2}) } else { json!({"code": 1}) },
            });
            if !s.parent_span_id.is_empty() {
                v["parentSpanId"] = json!(s.parent_span_id);
            }
            v
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr_json(&("service.name".to_string(), Attr::Str(service.to_string())))]},
        "scopeSpans": [{"scope": {"name": "lumen"}, "spans": spans}],
    }]})
}

/// The HTTP status an attempt outcome stands for (`ok` → 200, `error_502` → 502); `None` when
/// the outcome names no status (a deadline, a connection failure, an unsupported parameter).
pub fn outcome_status(outcome: &str) -> Option<u16> {
    if outcome == "ok" {
        return Some(200);
    }
    if outcome == "rate_limited" {
        return Some(429);
    }
    outcome.strip_prefix("error_")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn traceparent_round_trip_and_refusals() {
        let p = parse_traceparent(&format!("00-{T}-00f067aa0ba902b7-01")).unwrap();
        assert_eq!(
            (p.trace_id.as_str(), p.parent_id.as_str()),
            (T, "00f067aa0ba902b7")
        );
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        assert_eq!(
            traceparent(T, "00f067aa0ba902b7"),
            format!("00-{T}-00f067aa0ba902b7-01")
        );
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a0 = attempt_span_id(T, 0);
        assert_eq!(a0, attempt_span_id(T, 0));
        assert_eq!(a0.len(), 16);
        assert_ne!(a0, attempt_span_id(T, 1));
        assert_ne!(a0, root_span_id(T));
        assert!(is_hex_id(&a0, 16));
    }

    #[test]
    fn export_body_shape() {
        let s = Span {
            name: "upstream".into(),
            span_id: attempt_span_id(T, 0),
            parent_span_id: root_span_id(T),
            start_ns: 10,
            end_ns: 5,
            kind: Kind::Client,
            attributes: vec![
                ("lumen.provider".into(), Attr::Str("openai".into())),
                ("http.response.status_code".into(), Attr::Int(502)),
            ],
            error: true,
        };
        let v = export_body("lumen", T, &[s]);
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], T);
        assert_eq!(span["kind"], 3);
        assert_eq!(span["endTimeUnixNano"], "10");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][1]["value"]["intValue"], "502");
        assert_eq!(outcome_status("error_502"), Some(502));
        assert_eq!(outcome_status("ok"), Some(200));
        assert_eq!(outcome_status("deadline"), None);
    }
}
