//! Fallback policy and the stitched stream: the request's `lumen` options (fallbacks on/off,
//! retries, deadlines), the record of every attempt (`lumen.attempts`, `x-lumen-fallbacks`), and
//! a streamed answer that continues on the next candidate when its upstream is cut, stalls past
//! its deadline, sends a malformed chunk or an in-band error, or ends without `[DONE]`
//! ([`lumen_shared::domain::stitch::Stitcher`]: assistant prefill where the dialect supports it, else
//! regeneration with the already-sent prefix suppressed, else a well-formed error event with
//! `finish_reason: "error"`; never a truncated answer with a normal finish).

use crate::call::{attempt, served_headers, Converter, Success};
use crate::timer::{after_ms, now_ns, within};
use futures::{SinkExt, StreamExt};
use lumen_shared::contracts::{
    headers, CallRequest, Candidate, Leg, Outcome, UsageReport, USAGE_EVENT,
};
use lumen_shared::domain::catalog::Dialect;
use lumen_shared::domain::deadline::{Deadlines, Overrides};
use lumen_shared::domain::health::{Failure as HealthFailure, Observation, Snapshot};
use lumen_shared::domain::pricing::{cost_nanos, lumen_object};
use lumen_shared::domain::retry::{FailureClass, Retries, RetryOverrides};
use lumen_shared::domain::stitch::{Resume, Stitcher};
use lumen_shared::wire::openai::Usage;
use lumen_shared::wire::sse::{self, Parser};
use lumen_shared::ApiError;
use lumen_spin::pipe::Out;
use lumen_spin::relay::{is_content_chunk, KEEP_ALIVE};
use lumen_spin::util::elapsed_ms;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use spin_sdk::http::IncomingResponse;
use std::time::Instant;

/// A `Retry-After` longer than this is not waited for: the next candidate is tried instead.
pub const MAX_RETRY_AFTER_MS: u64 = 2_000;
/// First backoff before a retry; doubled per retry, with jitter.
pub const BACKOFF_MS: u64 = 100;

/// The request's fallback options: `"lumen": {"fallbacks": false, "retries": N, "deadlines":
/// {"connect_ms", "first_token_ms", "stall_ms", "total_ms"}}` (stripped before the upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// False: only the first candidate is tried.
    pub fallbacks: bool,
    /// Retries of one candidate before the next, per failure class (`None`: the model's
    /// catalog `retries`, else [`Retries::default`]).
    pub retries: Option<RetryOverrides>,
    /// Request-level deadline overrides.
    pub deadlines: Overrides,
}

impl Policy {
    /// Reads the request's `lumen` object; a bad value is a 400 naming it.
    pub fn from_body(body: &Map<String, Value>) -> Result<Policy, ApiError> {
        let bad = |field: &str, why: &str| {
            ApiError::invalid_request(
                format!("lumen.{field} {why}"),
                Some(&format!("lumen.{field}")),
                "invalid_value",
            )
        };
        let mut p = Policy {
            fallbacks: true,
            retries: None,
            deadlines: Overrides::default(),
        };
        let Some(l) = body.get("lumen").and_then(Value::as_object) else {
            return Ok(p);
        };
        if let Some(v) = l.get("fallbacks") {
            p.fallbacks = v
                .as_bool()
                .ok_or_else(|| bad("fallbacks", "must be true or false"))?;
        }
        if let Some(v) = l.get("retries") {
            let r = RetryOverrides::deserialize(v)
                .map_err(|e| e.to_string())
                .and_then(|r| r.check().map(|()| r))
                .map_err(|e| {
                    bad(
                        "retries",
                        &format!("must be an integer from 0 to 5, or an object of them per failure class (5xx, 429, connect, first_token, stall): {e}"),
                    )
                })?;
            p.retries = Some(r);
        }
        if let Some(v) = l.get("deadlines") {
            p.deadlines = serde_json::from_value(v.clone())
                .map_err(|e| bad("deadlines", &format!("is invalid: {e}")))?;
            p.deadlines
                .check()
                .map_err(|e| bad("deadlines", &format!("is invalid: {e}")))?;
        }
        Ok(p)
    }

    /// Retries of candidate `c` per failure class: the defaults, the model's catalog
    /// `retries`, then the request's.
    pub fn retries(&self, c: &Candidate) -> Retries {
        Retries::default().layered(c.retries.iter().chain(self.retries.iter()))
    }

    /// The deadlines for one candidate: defaults, the cold-start variant for scale-to-zero
    /// backends, the provider's first-token deadline, the model's catalog `deadlines`, then the
    /// request's overrides.
    pub fn deadlines(&self, c: &Candidate) -> Deadlines {
        let mut d = Deadlines::default();
        if c.provider.cold_start {
            d = d.cold_start();
        }
        if let Some(ms) = c.provider.first_token_timeout_ms {
            d.first_token_ms = ms;
            d.total_ms = d.total_ms.max(ms);
        }
        d.layered(c.deadlines.iter().chain([&self.deadlines]))
    }
}

/// The wait before retry `n` (0-based) of a candidate: its `Retry-After` when short enough
/// (`None` when it is too long to wait for), else jittered exponential backoff.
pub fn backoff_ms(n: u32, retry_after_s: Option<u64>, jitter: u8) -> Option<u64> {
    if let Some(s) = retry_after_s {
        let ms = s.saturating_mul(1000);
        return (ms <= MAX_RETRY_AFTER_MS).then_some(ms);
    }
    let base = BACKOFF_MS << n.min(6);
    // Between half and the whole of the base (full jitter would allow zero).
    Some(base / 2 + base / 2 * u64::from(jitter) / 255)
}

/// One try of one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Provider.
    pub provider: String,
    /// Catalog model.
    pub model: String,
    /// `ok`, or what went wrong.
    pub outcome: String,
    /// Milliseconds the try took.
    pub latency_ms: f64,
    /// Whether the failure was the provider's (counts against its health); `false` for the
    /// client's own errors (a 4xx that would fail anywhere) and for a client that went away.
    pub provider_fault: bool,
    /// The provider's `Retry-After`, seconds.
    pub retry_after_s: Option<u64>,
    /// The provider's health as the plan read it.
    pub health: Option<Snapshot>,
}

impl Attempt {
    /// A try of `c`; anything but `ok` counts as the provider's fault.
    pub fn new(c: &Candidate, outcome: impl Into<String>, latency_ms: f64) -> Attempt {
        let outcome = outcome.into();
        Attempt {
            provider: c.provider.name.clone(),
            model: c.model.clone(),
            provider_fault: outcome != "ok",
            outcome,
            latency_ms: (latency_ms * 10.0).round() / 10.0,
            retry_after_s: None,
            health: c.health.clone(),
        }
    }

    /// A failed try of `c`: its class says whether it was the provider's fault (an upstream or
    /// route failure) or not (the request's own, or a parameter this dialect cannot honour).
    pub fn failed(c: &Candidate, e: &ApiError, class: FailureClass, latency_ms: f64) -> Attempt {
        Attempt {
            provider_fault: class.is_provider_fault(),
            retry_after_s: e.retry_after,
            ..Attempt::new(c, outcome_of(e), latency_ms)
        }
    }

    /// A try of `c` whose answer the cascade checked and passed over: the provider answered,
    /// so it counts as a success of it, never a failure.
    pub fn escalated(c: &Candidate, latency_ms: f64) -> Attempt {
        Attempt {
            provider_fault: false,
            ..Attempt::new(c, "escalated", latency_ms)
        }
    }

    /// What this try says of its provider's health, if anything.
    pub fn observation(&self) -> Option<Observation> {
        if self.outcome == "ok" || self.outcome == "escalated" {
            return Some(Observation::Success {
                ttft_ms: self.latency_ms,
                tokens: 1,
                total_ms: self.latency_ms,
            });
        }
        if !self.provider_fault {
            return None;
        }
        Some(Observation::Failure(match self.retry_after_s {
            Some(s) => HealthFailure::RateLimited {
                retry_after_ms: s.saturating_mul(1000),
            },
            None => HealthFailure::Error,
        }))
    }
}

/// `lumen.attempts`.
pub fn attempts_json(attempts: &[Attempt]) -> Value {
    Value::Array(
        attempts
            .iter()
            .map(|a| {
                json!({"provider": a.provider, "model": a.model, "outcome": a.outcome,
                       "latency_ms": a.latency_ms})
            })
            .collect(),
    )
}

/// `x-lumen-fallbacks`: `provider/model=outcome` per attempt; `None` for a single clean try.
pub fn fallbacks_header(attempts: &[Attempt]) -> Option<String> {
    (attempts.len() > 1 || attempts.iter().any(|a| a.outcome != "ok")).then(|| {
        attempts
            .iter()
            .map(|a| format!("{}/{}={}", a.provider, a.model, a.outcome))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// A short outcome for a failed try.
pub fn outcome_of(e: &ApiError) -> String {
    match e.code.as_deref() {
        Some(code) if e.status == 400 => code.to_string(),
        _ if e.message.contains("deadline") => "deadline".into(),
        _ if e.retry_after.is_some() || e.status == 429 => "rate_limited".into(),
        _ => format!("error_{}", e.status),
    }
}

/// The `lumen` object for every leg: the summed cost, each leg at its own price.
pub fn lumen_for_legs(legs: &[Leg], attempts: &[Attempt]) -> Value {
    let last = legs.last();
    let mut lumen = match last {
        Some(l) if legs.len() == 1 => lumen_object(&l.usage, &l.price, &l.model, &l.provider),
        Some(l) => {
            let nanos: i64 = legs.iter().map(|l| cost_nanos(&l.usage, &l.price)).sum();
            let total = sum_usage(legs);
            let tokens = total.prompt_tokens + total.completion_tokens;
            let per_1k = if tokens == 0 {
                0.0
            } else {
                (nanos as f64 * 1000.0 / tokens as f64).round() / 1e9
            };
            json!({"cost": nanos as f64 / 1e9, "cost_per_1k": per_1k, "currency": "USD",
                   "model": l.model, "provider": l.provider})
        }
        None => json!({}),
    };
    lumen["attempts"] = attempts_json(attempts);
    lumen
}

/// The usage of every leg together.
pub fn sum_usage(legs: &[Leg]) -> Usage {
    legs.iter().fold(Usage::default(), |a, l| Usage {
        prompt_tokens: a.prompt_tokens + l.usage.prompt_tokens,
        completion_tokens: a.completion_tokens + l.usage.completion_tokens,
        cached_tokens: a.cached_tokens + l.usage.cached_tokens,
        cache_write_tokens: a.cache_write_tokens + l.usage.cache_write_tokens,
        reasoning_tokens: a.reasoning_tokens + l.usage.reasoning_tokens,
    })
}

/// How the next candidate continues the text already sent: prefill where its dialect takes an
/// assistant prefill (Anthropic), else regeneration with the prefix suppressed.
pub fn resume_for(c: &Candidate, sent: &str) -> Resume {
    if c.provider.dialect == Dialect::Anthropic && !sent.is_empty() {
        Resume::Prefill
    } else {
        Resume::Regenerate
    }
}

/// The client's body with the text already sent as an assistant prefill.
pub fn with_prefill(body: &Map<String, Value>, prefill: Value) -> Map<String, Value> {
    let mut b = body.clone();
    if let Some(Value::Array(m)) = b.get_mut("messages") {
        m.push(prefill);
    }
    b
}

/// How one leg ended.
enum LegEnd {
    Done,
    Failed(&'static str),
    Diverged,
    ClientGone,
}

/// Per-leg observations.
#[derive(Default)]
struct LegState {
    usage: Option<Usage>,
    content_chunks: u64,
    done: bool,
    /// The last chunk with a finish reason, held for the `lumen` object.
    held: Option<Value>,
}

/// One upstream leg through the stitcher, under its deadlines.
async fn run_leg<S: futures::Sink<Vec<u8>> + Unpin>(
    sink: &mut S,
    resp: IncomingResponse,
    c: &Candidate,
    d: &Deadlines,
    started_ns: u64,
    st: &mut Stitcher,
    leg: &mut LegState,
) -> LegEnd {
    let total_until = started_ns.saturating_add(d.total_ms.saturating_mul(1_000_000));
    let first_until = started_ns.saturating_add(d.first_token_ms.saturating_mul(1_000_000));
    let mut parser = Parser::default();
    let mut convert = Converter::new(c);
    let mut body = resp.take_body_stream();
    // Events already in the OpenAI shape (the converter's own output).
    let mut events: Vec<sse::Event> = Vec::new();
    let mut ended = false;
    loop {
        for ev in events.drain(..) {
            {
                if ev.comment_only {
                    if sink.send(KEEP_ALIVE.to_vec()).await.is_err() {
                        return LegEnd::ClientGone;
                    }
                    continue;
                }
                if ev.event.as_deref().is_some_and(|n| n != "message") {
                    return LegEnd::Failed("in_band_error");
                }
                let data = ev.data.trim();
                if data == "[DONE]" {
                    leg.done = true;
                    continue;
                }
                let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
                    if data.is_empty() {
                        continue;
                    }
                    return LegEnd::Failed("malformed_chunk");
                };
                if chunk.contains_key("error") {
                    return LegEnd::Failed("in_band_error");
                }
                if let Some(u) = chunk
                    .get("usage")
                    .filter(|u| !u.is_null())
                    .and_then(Usage::from_openai)
                {
                    leg.usage = Some(u);
                }
                if is_content_chunk(&chunk) {
                    leg.content_chunks += 1;
                }
                let out = match st.push(&Value::Object(chunk)) {
                    Ok(out) => out,
                    Err(_) => return LegEnd::Diverged,
                };
                for chunk in out {
                    if chunk["choices"][0]["finish_reason"].is_string() {
                        leg.held = Some(chunk);
                        continue;
                    }
                    if sink
                        .send(sse::data_event(&chunk.to_string()))
                        .await
                        .is_err()
                    {
                        return LegEnd::ClientGone;
                    }
                }
            }
        }
        if ended {
            break;
        }
        let until = if leg.content_chunks == 0 {
            first_until
        } else {
            after_ms(d.stall_ms)
        }
        .min(total_until);
        match within(until, body.next()).await {
            None => return LegEnd::Failed("deadline"),
            Some(Some(Err(_))) => return LegEnd::Failed("connection_lost"),
            Some(Some(Ok(bytes))) => {
                events = parser
                    .push(&bytes)
                    .into_iter()
                    .flat_map(|ev| convert.on_event(ev))
                    .collect();
            }
            Some(None) => {
                ended = true;
                // A last event without its blank line counts when whole; a cut chunk is dropped
                // (the leg then ends without `[DONE]`).
                if !parser.pending().iter().all(u8::is_ascii_whitespace) {
                    for ev in parser.push(b"\n\n") {
                        let data = ev.data.trim();
                        if data == "[DONE]"
                            || serde_json::from_str::<Map<String, Value>>(data).is_ok()
                        {
                            events.extend(convert.on_event(ev));
                        }
                    }
                }
                events.extend(convert.finish());
            }
        }
    }
    if leg.done {
        LegEnd::Done
    } else {
        LegEnd::Failed("no_terminal_event")
    }
}

/// Where the next leg starts.
struct Next {
    index: usize,
    resp: IncomingResponse,
    how: Resume,
}

/// Finds the next candidate from `from` on that answers with a stream, prefilling where it can
/// (`from` is the failed leg's own candidate when its class still has a retry there).
async fn next_leg(
    call: &CallRequest,
    policy: &Policy,
    from: usize,
    st: &Stitcher,
    prompt_estimate: u64,
    attempts: &mut Vec<Attempt>,
) -> Option<Next> {
    if !policy.fallbacks && from > 0 {
        return None;
    }
    for (j, c) in call.candidates.iter().enumerate().skip(from) {
        if c.provider.dialect == Dialect::SpinLlm || c.provider.dialect == Dialect::Queue {
            continue;
        }
        let d = policy.deadlines(c);
        let mut how = resume_for(c, st.sent_text());
        loop {
            let body = match (how, st.prefill_message()) {
                (Resume::Prefill, Some(m)) => with_prefill(&call.body, m),
                _ => call.body.clone(),
            };
            let start = Instant::now();
            match attempt(c, call, &body, true, prompt_estimate, &d, attempts.len()).await {
                Ok((Success::Stream(resp), _)) => {
                    return Some(Next {
                        index: j,
                        resp,
                        how,
                    })
                }
                Ok(_) => {
                    attempts.push(Attempt::new(c, "not_a_stream", elapsed_ms(start)));
                    break;
                }
                Err(f) => {
                    attempts.push(Attempt::failed(c, &f.error, f.class, elapsed_ms(start)));
                    if how == Resume::Prefill && f.error.status == 400 {
                        // The fallback rejects the prefill: regenerate there instead.
                        how = Resume::Regenerate;
                        continue;
                    }
                    break;
                }
            }
        }
    }
    None
}

/// Serves a streamed answer that begins with `resp` from candidate `i`, failing over mid-stream.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_stream(
    out: Out,
    call: &CallRequest,
    policy: &Policy,
    mut i: usize,
    mut resp: IncomingResponse,
    upstream_ms: f64,
    mut attempts: Vec<Attempt>,
    prompt_estimate: u64,
    extra: Vec<(String, String)>,
) -> Vec<Attempt> {
    let first = &call.candidates[i];
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(served_headers(first, upstream_ms));
    hs.extend(extra);
    let mut before = attempts.clone();
    before.push(Attempt::new(first, "ok", upstream_ms));
    if let Some(f) = fallbacks_header(&before) {
        hs.push((headers::FALLBACKS.to_string(), f));
    }
    hs.push((
        headers::ATTEMPTS.to_string(),
        attempts_json(&before).to_string(),
    ));
    let mut sink = out.start_stream(200, &hs);
    let mut st = Stitcher::new();
    let mut legs: Vec<Leg> = Vec::new();
    let mut held = None;
    let mut ok = false;
    // A leg's deadlines count from its request, not from its headers.
    let upstream_ns = (upstream_ms.max(0.0) * 1e6) as u64;
    let mut started = Instant::now();
    let mut started_ns = now_ns().saturating_sub(upstream_ns);
    // Same-candidate retries taken after timeouts (first token, stall), per leg's candidate.
    let mut retried = 0u32;
    loop {
        let c = &call.candidates[i];
        let d = policy.deadlines(c);
        let mut leg = LegState::default();
        let end = run_leg(&mut sink, resp, c, &d, started_ns, &mut st, &mut leg).await;
        // A leg whose finish chunk arrived is complete: what it lacks after that (`[DONE]`,
        // its usage chunk) is not bought again from a fallback.
        let end = match end {
            LegEnd::Failed(_) if leg.held.is_some() => LegEnd::Done,
            end => end,
        };
        let (usage, estimated) = match leg.usage {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt_tokens: prompt_estimate,
                    completion_tokens: leg.content_chunks,
                    ..Usage::default()
                },
                true,
            ),
        };
        legs.push(Leg {
            model: c.model.clone(),
            provider: c.provider.name.clone(),
            usage,
            estimated,
            role: None,
            price: c.price.clone(),
        });
        let outcome = match &end {
            LegEnd::Done => "ok",
            LegEnd::Failed(why) => why,
            LegEnd::Diverged => "diverged",
            LegEnd::ClientGone => "client_disconnected",
        };
        attempts.push(Attempt::new(c, outcome, elapsed_ms(started)));
        match end {
            LegEnd::Done => {
                held = leg.held;
                ok = true;
                break;
            }
            LegEnd::ClientGone => {
                if let Some(a) = attempts.last_mut() {
                    a.provider_fault = false;
                }
                return attempts;
            }
            LegEnd::Diverged => {
                if let Some(a) = attempts.last_mut() {
                    a.provider_fault = false;
                }
                break;
            }
            LegEnd::Failed(why) => {
                // Timeouts are retried on the same candidate only as far as the policy says
                // (none by default); every other failure moves on.
                let class = match (why, leg.content_chunks) {
                    ("deadline", 0) => Some(FailureClass::FirstToken),
                    ("deadline", _) => Some(FailureClass::Stall),
                    _ => None,
                };
                let again = class.is_some_and(|k| retried < policy.retries(c).of(k));
                let from = if again {
                    retried += 1;
                    i
                } else {
                    i + 1
                };
                started = Instant::now();
                started_ns = now_ns();
                match next_leg(call, policy, from, &st, prompt_estimate, &mut attempts).await {
                    Some(n) => {
                        if n.index != i {
                            retried = 0;
                        }
                        st.begin_leg(n.how);
                        i = n.index;
                        resp = n.resp;
                    }
                    None => break,
                }
            }
        }
    }
    let last = &call.candidates[i];
    let usage = sum_usage(&legs);
    let lumen = lumen_for_legs(&legs, &attempts);
    let mut tail = Vec::new();
    if ok {
        let mut fin = held.unwrap_or_else(|| {
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        });
        if call.include_usage {
            tail.extend(sse::data_event(&fin.to_string()));
            let mut u = json!({"object": "chat.completion.chunk", "choices": [],
                               "usage": usage.to_openai(), "lumen": lumen});
            for k in ["id", "created", "model"] {
                if let Some(v) = fin.get(k) {
                    u[k] = v.clone();
                }
            }
            tail.extend(sse::data_event(&u.to_string()));
        } else {
            fin["lumen"] = lumen;
            tail.extend(sse::data_event(&fin.to_string()));
        }
        tail.extend(sse::data_event("[DONE]"));
    } else {
        let mut e = st.error_chunk();
        e["lumen"] = lumen;
        tail.extend(sse::data_event(&e.to_string()));
        let err = json!({"error": {
            "message": "the upstream stream failed and no fallback could continue it",
            "type": "upstream_error", "param": null, "code": "upstream_stream_failed"}});
        tail.extend(sse::data_event(&err.to_string()));
    }
    let report = UsageReport {
        model: last.model.clone(),
        provider: last.provider.name.clone(),
        usage,
        estimated: legs.iter().any(|l| l.estimated),
        outcome: if ok {
            Outcome::Ok
        } else {
            Outcome::UpstreamError
        },
        upstream_ms,
        legs: if legs.len() > 1 { legs } else { Vec::new() },
    };
    let json = serde_json::to_string(&report).unwrap_or_default();
    tail.extend(sse::named_event(USAGE_EVENT, &json));
    let _ = sink.send(tail).await;
    let _ = sink.close().await;
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lumen_options_are_read_and_checked() {
        let body: Map<String, Value> = serde_json::from_value(json!({"lumen": {
            "fallbacks": false, "retries": 0, "deadlines": {"stall_ms": 500}}}))
        .unwrap();
        let p = Policy::from_body(&body).unwrap();
        assert!(!p.fallbacks);
        assert_eq!(p.retries, Some(RetryOverrides::All(0)));
        assert_eq!(p.deadlines.stall_ms, Some(500));
        for bad in [
            json!({"lumen": {"fallbacks": "no"}}),
            json!({"lumen": {"retries": 9}}),
            json!({"lumen": {"retries": {"stall": 6}}}),
            json!({"lumen": {"retries": {"timeouts": 1}}}),
            json!({"lumen": {"deadlines": {"stall_ms": 0}}}),
            json!({"lumen": {"deadlines": {"typo_ms": 5}}}),
        ] {
            let body: Map<String, Value> = serde_json::from_value(bad).unwrap();
            let e = Policy::from_body(&body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.param.as_deref().unwrap().starts_with("lumen."), "{e:?}");
        }
        let p = Policy::from_body(&Map::new()).unwrap();
        assert!(p.fallbacks && p.retries.is_none());
        let body: Map<String, Value> =
            serde_json::from_value(json!({"lumen": {"retries": {"5xx": 2, "first_token": 1}}}))
                .unwrap();
        let r = Policy::from_body(&body).unwrap().retries.unwrap();
        let r = Retries::default().with(&r);
        assert_eq!((r.server, r.connect, r.first_token, r.stall), (2, 1, 1, 0));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_short_retry_after() {
        assert_eq!(backoff_ms(0, None, 0), Some(50));
        assert_eq!(backoff_ms(0, None, 255), Some(100));
        assert_eq!(backoff_ms(2, None, 255), Some(400));
        assert_eq!(backoff_ms(0, Some(1), 0), Some(1_000));
        assert_eq!(backoff_ms(0, Some(30), 0), None, "too long: next candidate");
    }

    #[test]
    fn the_fallbacks_header_lists_each_try() {
        let a = |p: &str, o: &str| Attempt {
            provider: p.into(),
            model: "m".into(),
            outcome: o.into(),
            latency_ms: 1.0,
            provider_fault: o != "ok",
            retry_after_s: None,
            health: None,
        };
        assert_eq!(fallbacks_header(&[a("openai", "ok")]), None);
        assert_eq!(
            fallbacks_header(&[a("openai", "error_502"), a("azure", "ok")]).as_deref(),
            Some("openai/m=error_502, azure/m=ok")
        );
    }
}
