//! `POST /call`: tries the plan's candidates in order (falling back on retryable failures before
//! the first byte) and answers with the upstream's JSON or relays its SSE stream, always telling
//! auth what was used (`lumen-usage` header, or the final internal `lumen-usage` event).

use crate::cascade;
use crate::failover::{self, attempts_json, backoff_ms, fallbacks_header, Attempt, Policy};
use crate::timer::{after_ms, sleep_until, within};
use crate::upstream::{
    answer_usage, class_of, send_class, send_error, status_class, status_error, wants_error_body,
};
use crate::{queue, spin_llm};
use futures::{SinkExt, StreamExt};
use lumen_shared::contracts::{headers, CallKind, CallRequest, Candidate, Outcome, UsageReport};
use lumen_shared::domain::catalog::Dialect;
use lumen_shared::domain::deadline::Deadlines;
use lumen_shared::domain::health;
use lumen_shared::domain::pricing::{cost_header, lumen_object};
use lumen_shared::domain::retry::FailureClass;
use lumen_shared::domain::trace;
use lumen_shared::store::byok::{self, ByokRecord};
use lumen_shared::store::health as health_store;
use lumen_shared::store::ledger::max_output_tokens;
use lumen_shared::store::{ByokKey, Target};
use lumen_shared::wire::dialect::{self, anthropic, gemini, openai_compat};
use lumen_shared::wire::openai::{estimate_prompt_tokens, Usage};
use lumen_shared::wire::sse::{Event, Parser};
use lumen_shared::ApiError;
use lumen_spin::http::{json_post, read_response_body, response_header, send_request};
use lumen_spin::pipe::Out;
use lumen_spin::relay::{CostTag, UpstreamRelay};
use lumen_spin::util::{elapsed_ms, format_ms, now_ms, origin_of};
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;
use spin_sdk::http::IncomingResponse;
use spin_sdk::variables;
use std::time::Instant;

/// Largest upstream answer read whole (non-streamed answers and error bodies).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Largest upstream error body read for its message.
const MAX_ERROR_BYTES: usize = 256 * 1024;

/// What a successful attempt produced.
pub(crate) enum Success {
    /// A non-streamed answer, read whole.
    Whole {
        answer: Value,
        usage: Usage,
        estimated: bool,
    },
    /// A streamed answer, headers received.
    Stream(IncomingResponse),
    /// A queue-style job, submitted.
    Queued(queue::Job),
}

/// One failed attempt.
pub(crate) struct Failure {
    pub(crate) error: ApiError,
    pub(crate) upstream_ms: f64,
    /// What kind of failure, for the retry policy and health.
    pub(crate) class: FailureClass,
}

impl Failure {
    pub(crate) fn new(error: ApiError) -> Failure {
        Failure {
            class: class_of(&error),
            error,
            upstream_ms: 0.0,
        }
    }

    fn classed(error: ApiError, class: FailureClass, upstream_ms: f64) -> Failure {
        Failure {
            error,
            upstream_ms,
            class,
        }
    }
}

fn config_error(c: &Candidate, message: String) -> Failure {
    let mut e = ApiError::internal(format!(
        "provider \"{}\" is misconfigured: {message}",
        c.provider.name
    ));
    // Another candidate may be configured correctly; this one is not tried again.
    e.retryable = true;
    Failure::classed(e, FailureClass::Misconfigured, 0.0)
}

/// One try of one candidate with `body` (the client's, or with an assistant prefill), under the
/// candidate's deadlines: the answer's headers within the first-token deadline, a whole answer
/// within the total one.
pub(crate) async fn attempt(
    c: &Candidate,
    call: &CallRequest,
    body: &serde_json::Map<String, Value>,
    stream: bool,
    prompt_estimate: u64,
    d: &Deadlines,
    n: usize,
) -> Result<(Success, f64), Failure> {
    let total_until = after_ms(d.total_ms);
    let p = &c.provider;
    let base = variables::get(&p.base_url_variable).map_err(|e| {
        config_error(
            c,
            format!("could not read the {} variable: {e}", p.base_url_variable),
        )
    })?;
    let base = base.trim().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(config_error(
            c,
            format!(
                "the {} variable must be an http:// or https:// URL, got \"{base}\"",
                p.base_url_variable
            ),
        ));
    }
    let key = provider_key(c, call)?;
    let embeddings = call.kind == CallKind::Embeddings;
    let up = if embeddings {
        dialect::build_embeddings(p, base, &key, &call.body, &c.upstream_model)
    } else {
        dialect::build(p, base, &key, body, &c.upstream_model, stream)
    }
    .map_err(Failure::new)?;
    // Output a whole answer may produce (its wait grows with it); embeddings produce none.
    let output_tokens = if embeddings {
        0
    } else {
        max_output_tokens(body).0
    };
    let body = serde_json::to_vec(&up.body).map_err(|e| {
        Failure::new(ApiError::internal(format!(
            "could not serialise the upstream request: {e}"
        )))
    })?;
    let mut req = json_post(&up.url, body);
    for (name, value) in &up.headers {
        req.set_header(name, value.as_str());
    }
    // The request's trace continues upstream: this attempt's span is the parent.
    if let Some(t) = &call.trace_id {
        req.set_header(
            "traceparent",
            trace::traceparent(t, &trace::attempt_span_id(t, n)),
        );
    }

    let sent = Instant::now();
    // A stream's headers come before its first token; a whole answer's with its last, so its
    // wait grows with the output it may produce.
    let first_ms = if stream {
        d.first_token_ms
    } else {
        d.whole_answer_ms(output_tokens)
    };
    let first_until = after_ms(first_ms).min(total_until);
    let resp = within(first_until, send_request(req))
        .await
        .ok_or_else(|| {
            Failure::classed(
                deadline_error(p, "first-token", first_ms),
                FailureClass::FirstToken,
                elapsed_ms(sent),
            )
        })?
        .map_err(|e| {
            Failure::classed(
                send_error(p, &origin_of(base), &e),
                send_class(&e),
                elapsed_ms(sent),
            )
        })?;
    let upstream_ms = elapsed_ms(sent);
    let status = resp.status();
    if !(200..300).contains(&status) {
        let retry_after = response_header(&resp, "retry-after");
        let body = if wants_error_body(status) {
            read_response_body(&resp, MAX_ERROR_BYTES).await.ok()
        } else {
            None
        };
        let error = status_error(p, status, body.as_deref(), retry_after.as_deref());
        let class = status_class(status, &error);
        return Err(Failure::classed(error, class, upstream_ms));
    }
    if p.dialect == Dialect::Queue {
        let body = read_response_body(&resp, MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
        let Some(id) = dialect::queue::job_id(&answer) else {
            return Err(Failure::classed(
                ApiError::upstream(
                    502,
                    format!("provider \"{}\" accepted the job without an id", p.name),
                    true,
                ),
                FailureClass::Server,
                upstream_ms,
            ));
        };
        return Ok((
            Success::Queued(queue::Job {
                base: base.to_string(),
                key: key.trim().to_string(),
                id: id.to_string(),
                submitted: sent,
            }),
            upstream_ms,
        ));
    }
    if stream {
        return Ok((Success::Stream(resp), upstream_ms));
    }
    let lost = |why: String| {
        Failure::classed(
            ApiError::upstream(
                502,
                format!("provider \"{}\" failed mid-answer: {why}", p.name),
                true,
            ),
            FailureClass::Server,
            upstream_ms,
        )
    };
    let body = within(total_until, read_response_body(&resp, MAX_ANSWER_BYTES))
        .await
        .ok_or_else(|| {
            Failure::classed(
                deadline_error(p, "total", d.total_ms),
                FailureClass::Stall,
                upstream_ms,
            )
        })?
        .map_err(lost)?;
    drop(resp);
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| lost(format!("the answer is not JSON ({e})")))?;
    let created = now_ms() / 1000;
    let mut answer = match p.dialect {
        Dialect::Openai if embeddings => openai_compat::embeddings_answer(
            answer,
            call.body.get("encoding_format").and_then(Value::as_str) == Some("base64"),
        ),
        Dialect::Openai => answer,
        Dialect::Anthropic => anthropic::response(&answer, created).map_err(lost)?,
        Dialect::Gemini => gemini::response(&answer, created, &c.upstream_model).map_err(lost)?,
        Dialect::Queue | Dialect::SpinLlm => answer,
    };
    let (usage, estimated) = answer_usage(&answer, prompt_estimate);
    if let Some(obj) = answer.as_object_mut() {
        obj.insert(
            "lumen".into(),
            lumen_object(&usage, &c.price, &c.model, &p.name),
        );
    }
    Ok((
        Success::Whole {
            answer,
            usage,
            estimated,
        },
        upstream_ms,
    ))
}

/// A deadline breach: retryable (it counts as a failure of that provider).
fn deadline_error(p: &lumen_shared::contracts::ProviderTarget, which: &str, ms: u64) -> ApiError {
    ApiError::upstream(
        504,
        format!(
            "provider \"{}\" missed the {which} deadline ({ms} ms)",
            p.name
        ),
        true,
    )
}

/// The upstream key: the calling API key's own key for this provider when it has one (encrypted
/// in KV, or named Spin variable), else the platform key variable. Never logged.
fn provider_key(c: &Candidate, call: &CallRequest) -> Result<String, Failure> {
    let p = &c.provider;
    // Only a key that has its own key for this provider costs a read.
    let own = call.byok.contains(&p.name);
    if let (Some(id), true, Ok(kv)) = (call.key_id.as_deref(), own, SpinKv::open()) {
        let slot = ByokKey {
            key_id: id,
            provider: &p.name,
        };
        match lumen_shared::store::load(&kv, &slot) {
            Ok(Some(rec @ ByokRecord::Encrypted { .. })) => {
                let master = variables::get("byok_encryption_key").unwrap_or_default();
                return byok::open(master.trim(), id, &p.name, &rec)
                    .map_err(|why| config_error(c, format!("this API key's own provider key: {why}")));
            }
            Ok(Some(ByokRecord::Variable { name })) => {
                return variables::get(&name).map_err(|e| {
                    config_error(
                        c,
                        format!("this API key's provider key variable {name} could not be read ({e}); declare it under [component.gateway.variables]"),
                    )
                })
            }
            _ => {}
        }
    }
    Ok(variables::get(&p.api_key_variable).unwrap_or_default())
}

pub(crate) fn served_headers(c: &Candidate, upstream_ms: f64) -> Vec<(String, String)> {
    vec![
        (headers::MODEL.into(), c.model.clone()),
        (headers::PROVIDER.into(), c.provider.name.clone()),
        (headers::UPSTREAM_MS.into(), format_ms(upstream_ms)),
    ]
}

pub(crate) fn report(
    c: &Candidate,
    usage: Usage,
    estimated: bool,
    outcome: Outcome,
    upstream_ms: f64,
) -> UsageReport {
    UsageReport {
        model: c.model.clone(),
        provider: c.provider.name.clone(),
        usage,
        estimated,
        outcome,
        upstream_ms,
        legs: Vec::new(),
    }
}

pub(crate) fn with_usage(mut reply: Reply, r: &UsageReport) -> Reply {
    reply.set_header(headers::USAGE, serde_json::to_string(r).unwrap_or_default());
    reply
}

/// The internal headers of an answer besides who served it: the cascade's escalations and the
/// time waited before it (failed and escalated tries, backoff).
fn extra_headers(escalated: &[String], waited_ms: f64) -> Vec<(String, String)> {
    let mut hs = vec![(headers::WAITED_MS.to_string(), format_ms(waited_ms))];
    if !escalated.is_empty() {
        hs.push((headers::CASCADE.to_string(), escalated.join("; ")));
    }
    hs
}

/// Streams a whole (already checked) answer to auth as SSE events, with the internal usage event.
async fn relay_whole(
    out: Out,
    body: &[u8],
    c: &Candidate,
    upstream_ms: f64,
    call: &CallRequest,
    prompt_estimate: u64,
    extra: Vec<(String, String)>,
) {
    let answer: Value = serde_json::from_slice(body).unwrap_or_default();
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(served_headers(c, upstream_ms));
    hs.extend(extra);
    let mut sink = out.start_stream(200, &hs);
    let mut relay = UpstreamRelay::new(call.include_usage).with_cost(CostTag {
        price: c.price.clone(),
        model: c.model.clone(),
        provider: c.provider.name.clone(),
        cold_start_ms: None,
    });
    for data in cascade::as_stream_events(&answer) {
        let ev = lumen_shared::wire::sse::Event {
            event: None,
            data,
            comment_only: false,
        };
        if let Some(bytes) = relay.on_event(&ev) {
            if sink.send(bytes).await.is_err() {
                return;
            }
        }
    }
    let (tail, _) = relay.finish(&c.model, &c.provider.name, upstream_ms, prompt_estimate);
    let _ = sink.send(tail).await;
    let _ = sink.close().await;
}

/// Serves one call (a [`CallRequest`] as JSON).
pub async fn call(request: Vec<u8>, out: Out) {
    let attempts = serve(request, out).await;
    // After the response's last byte: health never delays an answer.
    record_health(&attempts);
}

/// Writes what each attempt showed of its provider to the shared health records.
fn record_health(attempts: &[Attempt]) {
    let Ok(kv) = SpinKv::open() else {
        return;
    };
    let policy = health::Policy::default();
    for a in attempts {
        if let Some(what) = a.observation() {
            let target = Target {
                provider: &a.provider,
                model: &a.model,
            };
            let snap = a.health.clone().unwrap_or_default();
            let _ = health_store::observe(&kv, &policy, target, &snap, now_ms(), what);
        }
    }
}

/// Serves one call; returns its attempts.
pub(crate) async fn serve(request: Vec<u8>, out: Out) -> Vec<Attempt> {
    let parsed = serde_json::from_slice::<CallRequest>(&request).map_err(|e| {
        ApiError::invalid_request(format!("invalid call request: {e}"), None, "invalid_json")
    });
    drop(request);
    let mut call = match parsed {
        Ok(call) => call,
        Err(e) => {
            out.respond(Reply::error(&e)).await;
            return Vec::new();
        }
    };
    let stream = call.body.get("stream").and_then(Value::as_bool) == Some(true);
    let prompt_estimate = estimate_prompt_tokens(&call.body);
    // The request's fallback models are in the plan already; no upstream gets them.
    call.body.remove("models");
    let policy = match Policy::from_body(&call.body) {
        Ok(p) => p,
        Err(e) => {
            out.respond(Reply::error(&e)).await;
            return Vec::new();
        }
    };
    if let Some(plan) = call.fusion.take() {
        return crate::fusion::serve(out, call, plan, prompt_estimate).await;
    }

    let mut attempts: Vec<Attempt> = Vec::new();
    let mut last: Option<(&Candidate, Failure)> = None;
    let mut escalated: Vec<String> = Vec::new();
    // A streamed cascade asks the checked candidates for whole answers (see cascade.rs).
    let whole_body = (stream && call.cascade).then(|| cascade::whole_body(&call.body));
    // After a context-length error: only models with a larger window are tried.
    let mut min_window: Option<u64> = None;
    // Time spent before the answer on failed tries, escalated ones and backoff (not overhead).
    let mut waited_ms = 0.0;
    'candidates: for (i, c) in call.candidates.iter().enumerate() {
        if i > 0 && !policy.fallbacks {
            break;
        }
        if min_window.is_some_and(|w| c.context_window <= w) {
            continue;
        }
        if c.provider.dialect == Dialect::SpinLlm {
            match spin_llm::infer(c, &call) {
                Ok(output) => {
                    spin_llm::serve(out, c, &call, output, stream, prompt_estimate).await;
                    return attempts;
                }
                Err(f) => {
                    let retry = f.error.retryable;
                    attempts.push(Attempt::failed(c, &f.error, f.class, f.upstream_ms));
                    last = Some((c, f));
                    if retry {
                        continue;
                    }
                    break;
                }
            }
        }
        let d = policy.deadlines(c);
        let retries = policy.retries(c);
        // Tries of this candidate so far; how many more depends on the failure's class.
        let mut n = 0;
        loop {
            let start = Instant::now();
            let checked = call.cascade && i + 1 < call.candidates.len();
            let (body, this_stream) = match &whole_body {
                Some(w) if checked => (w, false),
                _ => (&call.body, stream),
            };
            match attempt(
                c,
                &call,
                body,
                this_stream,
                prompt_estimate,
                &d,
                attempts.len(),
            )
            .await
            {
                Ok((
                    Success::Whole {
                        mut answer,
                        usage,
                        estimated,
                    },
                    ms,
                )) => {
                    if checked {
                        if let Err(why) = cascade::check(&answer, &call.body) {
                            attempts.push(Attempt::escalated(c, elapsed_ms(start)));
                            waited_ms += elapsed_ms(start);
                            escalated.push(format!("{}: {why}", c.model));
                            continue 'candidates;
                        }
                    }
                    attempts.push(Attempt::new(c, "ok", elapsed_ms(start)));
                    let cascade_hs = extra_headers(&escalated, waited_ms);
                    if stream {
                        // A checked whole answer, released as the stream the client asked for.
                        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                        relay_whole(out, &bytes, c, ms, &call, prompt_estimate, cascade_hs).await;
                        return attempts;
                    }
                    if let Some(l) = answer.get_mut("lumen") {
                        l["attempts"] = attempts_json(&attempts);
                    }
                    let mut reply =
                        Reply::json_bytes(200, serde_json::to_vec(&answer).unwrap_or_default());
                    reply.headers.extend(served_headers(c, ms));
                    if let Some(f) = fallbacks_header(&attempts) {
                        reply.set_header(headers::FALLBACKS, f);
                    }
                    reply.set_header(headers::ATTEMPTS, attempts_json(&attempts).to_string());
                    reply.set_header(headers::COST, cost_header(&usage, &c.price));
                    reply.headers.extend(cascade_hs);
                    let reply = with_usage(reply, &report(c, usage, estimated, Outcome::Ok, ms));
                    out.respond(reply).await;
                    // After the answer: the latency record never delays it.
                    return attempts;
                }
                Ok((Success::Stream(resp), ms)) => {
                    let cascade_hs = extra_headers(&escalated, waited_ms);
                    if call.body.get("n").and_then(Value::as_u64).unwrap_or(1) > 1 {
                        // Several choices: relayed as they come (the stitcher follows one).
                        let (inc, est) = (call.include_usage, prompt_estimate);
                        relay(out, resp, c, ms, inc, est, cascade_hs).await;
                        return attempts;
                    }
                    let attempts = failover::serve_stream(
                        out,
                        &call,
                        &policy,
                        i,
                        resp,
                        ms,
                        attempts,
                        prompt_estimate,
                        cascade_hs,
                    )
                    .await;
                    return attempts;
                }
                Ok((Success::Queued(job), ms)) => {
                    let served = queue::Served {
                        upstream_ms: ms,
                        waited_ms,
                        attempts: &attempts,
                    };
                    queue::serve(out, job, c, &call, stream, prompt_estimate, served).await;
                    return attempts;
                }
                Err(f) => {
                    attempts.push(Attempt::failed(c, &f.error, f.class, elapsed_ms(start)));
                    waited_ms += elapsed_ms(start);
                    let class = f.class;
                    let wait = backoff_ms(n, f.error.retry_after, jitter());
                    last = Some((c, f));
                    match class {
                        // Only a larger window can take this prompt.
                        FailureClass::ContextLength => {
                            min_window = Some(c.context_window);
                            continue 'candidates;
                        }
                        // Would fail anywhere: answered at once.
                        FailureClass::Request => break 'candidates,
                        _ => {}
                    }
                    // Misconfigured and unsupported routes have no retries: the next candidate.
                    match wait {
                        Some(ms) if n < retries.of(class) => {
                            sleep_until(after_ms(ms)).await;
                            waited_ms += ms as f64;
                            n += 1;
                        }
                        _ => continue 'candidates,
                    }
                }
            }
        }
    }
    let reply = match last {
        Some((c, f)) => {
            let mut reply = Reply::error(&f.error);
            reply.headers.extend(served_headers(c, f.upstream_ms));
            reply.set_header(headers::WAITED_MS, format_ms(waited_ms - f.upstream_ms));
            if let Some(h) = fallbacks_header(&attempts) {
                reply.set_header(headers::FALLBACKS, h);
            }
            reply.set_header(headers::ATTEMPTS, attempts_json(&attempts).to_string());
            with_usage(
                reply,
                &report(
                    c,
                    Usage::default(),
                    false,
                    Outcome::UpstreamError,
                    f.upstream_ms,
                ),
            )
        }
        None => Reply::error(&ApiError::internal("the plan has no candidates")),
    };
    out.respond(reply).await;
    attempts
}

/// A random byte for backoff jitter.
fn jitter() -> u8 {
    let mut b = [0u8; 1];
    let _ = lumen_spin::util::fill_random(&mut b);
    b[0]
}

/// Relays an upstream SSE stream event by event; stops as soon as auth goes away.
async fn relay(
    out: Out,
    resp: IncomingResponse,
    c: &Candidate,
    upstream_ms: f64,
    include_usage: bool,
    prompt_estimate: u64,
    extra: Vec<(String, String)>,
) {
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(served_headers(c, upstream_ms));
    hs.extend(extra);
    let mut sink = out.start_stream(200, &hs);
    let mut relay = UpstreamRelay::new(include_usage).with_cost(CostTag {
        price: c.price.clone(),
        model: c.model.clone(),
        provider: c.provider.name.clone(),
        cold_start_ms: None,
    });
    let mut parser = Parser::default();
    let mut convert = Converter::new(c);
    {
        let mut body = resp.take_body_stream();
        while let Some(Ok(chunk)) = body.next().await {
            for ev in parser.push(&chunk) {
                for ev in convert.on_event(ev) {
                    if let Some(bytes) = relay.on_event(&ev) {
                        if sink.send(bytes).await.is_err() {
                            // The caller went away: dropping `body` and `resp` cancels the upstream.
                            return;
                        }
                    }
                }
            }
        }
        // An upstream that ends its last event without the blank line: complete it, but keep only
        // whole events (a cut JSON chunk is dropped, the cut is reported below).
        if !parser.pending().iter().all(u8::is_ascii_whitespace) {
            for ev in parser.push(b"\n\n") {
                let data = ev.data.trim();
                if data != "[DONE]"
                    && serde_json::from_str::<serde_json::Map<String, Value>>(data).is_err()
                {
                    continue;
                }
                for ev in convert.on_event(ev) {
                    if let Some(bytes) = relay.on_event(&ev) {
                        if sink.send(bytes).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        for ev in convert.finish() {
            if let Some(bytes) = relay.on_event(&ev) {
                if sink.send(bytes).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(resp);
    let (tail, _) = relay.finish(&c.model, &c.provider.name, upstream_ms, prompt_estimate);
    let _ = sink.send(tail).await;
    let _ = sink.close().await;
}

/// A stream in the upstream's dialect, turned into OpenAI chunk events.
pub(crate) enum Converter {
    Openai,
    Anthropic(anthropic::Stream),
    Gemini(gemini::Stream),
}

fn data(text: String) -> Event {
    Event {
        event: None,
        data: text,
        comment_only: false,
    }
}

impl Converter {
    pub(crate) fn new(c: &Candidate) -> Converter {
        let created = now_ms() / 1000;
        match c.provider.dialect {
            Dialect::Openai => Converter::Openai,
            Dialect::Anthropic => Converter::Anthropic(anthropic::Stream::new(created)),
            Dialect::Gemini => Converter::Gemini(gemini::Stream::new(created, &c.upstream_model)),
            Dialect::Queue | Dialect::SpinLlm => Converter::Openai,
        }
    }

    pub(crate) fn on_event(&mut self, ev: Event) -> Vec<Event> {
        if ev.comment_only {
            return vec![ev];
        }
        match self {
            Converter::Openai => vec![ev],
            Converter::Anthropic(s) => s.on_event(&ev.data).into_iter().map(data).collect(),
            Converter::Gemini(s) => s.on_event(&ev.data).into_iter().map(data).collect(),
        }
    }

    pub(crate) fn finish(&mut self) -> Vec<Event> {
        match self {
            Converter::Gemini(s) => s.finish().into_iter().map(data).collect(),
            _ => Vec::new(),
        }
    }
}
