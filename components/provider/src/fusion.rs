//! Model fusion, inside one provider call: the panel's members are called at once (one future
//! per member, joined on spin-sdk's executor, each trying its offers in order) under the panel
//! deadline; members that fail or are late are dropped. The synthesizer then gets the panel's
//! answers and goes through the ordinary call path (its offers and fallbacks, the stitched
//! stream), and its answer is passed on with `lumen.fusion` on it (the final chunk of a stream,
//! or the body) and every leg in its usage report, so the meter charges each leg at its own
//! price. With every member dropped, the synthesizer's plan answers the request itself, like any
//! other request. Decisions and the report's shape are `lumen_shared::domain::fusion`.

use crate::call::{attempt, Success};
use crate::failover::{Attempt, Policy};
use crate::timer::{after_ms, within};
use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use futures::{SinkExt, StreamExt};
use lumen_shared::contracts::{headers, CallRequest, Candidate, Leg, UsageReport, USAGE_EVENT};
use lumen_shared::domain::catalog::Dialect;
use lumen_shared::domain::compare::{self, Answer};
use lumen_shared::domain::fusion::{self, FusionPlan, PanelMember, PanelOutcome};
use lumen_shared::domain::pricing::{cost_nanos, NANOS_PER_USD};
use lumen_shared::wire::openai::Usage;
use lumen_shared::wire::sse::{self, Parser};
use lumen_shared::ApiError;
use lumen_spin::pipe::{Head, Out};
use lumen_spin::relay::{frame, KEEP_ALIVE};
use lumen_spin::util::elapsed_ms;
use lumen_spin::Reply;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::time::Instant;

/// What the panel left for the synthesizer's answer.
struct Panel {
    outcomes: Vec<PanelOutcome>,
    legs: Vec<Leg>,
    panel_ms: f64,
    agreement: Option<compare::Agreement>,
    fell_back: bool,
    synthesizer: String,
    candidates: Vec<Candidate>,
}

/// One member: its offers in order, whole answers, until one answers or the deadline passes.
async fn run_member(
    m: &PanelMember,
    call: &CallRequest,
    body: &Map<String, Value>,
    prompt_estimate: u64,
    until_ns: u64,
    deadline_ms: u64,
) -> (PanelOutcome, Option<Leg>, Vec<Attempt>) {
    let started = Instant::now();
    // The request's own deadlines apply to each member (checked when the call was parsed).
    let policy = Policy::from_body(body)
        .or_else(|_| Policy::from_body(&Map::new()))
        .ok();
    let attempts: RefCell<Vec<Attempt>> = RefCell::new(Vec::new());
    let tried: RefCell<Option<&Candidate>> = RefCell::new(None);
    let work = async {
        let mut why = format!("no offer of {} can sit on a panel", m.model);
        for c in &m.candidates {
            if matches!(c.provider.dialect, Dialect::Queue | Dialect::SpinLlm) {
                continue;
            }
            *tried.borrow_mut() = Some(c);
            let t = Instant::now();
            let Some(d) = policy.as_ref().map(|p| p.deadlines(c)) else {
                break;
            };
            // Panel members run at once: the index is the tries finished so far.
            let n = attempts.borrow().len();
            match attempt(c, call, body, false, prompt_estimate, &d, n).await {
                Ok((
                    Success::Whole {
                        answer,
                        usage,
                        estimated,
                    },
                    _,
                )) => {
                    attempts
                        .borrow_mut()
                        .push(Attempt::new(c, "ok", elapsed_ms(t)));
                    return Ok((c, answer, usage, estimated));
                }
                Ok(_) => why = format!("provider \"{}\" did not answer whole", c.provider.name),
                Err(f) => {
                    attempts.borrow_mut().push(Attempt::failed(
                        c,
                        &f.error,
                        f.class,
                        elapsed_ms(t),
                    ));
                    why = f.error.message;
                    if !f.error.retryable {
                        break;
                    }
                }
            }
        }
        Err(why)
    };
    let done = within(until_ns, work).await;
    let latency_ms = elapsed_ms(started);
    let last = *tried.borrow();
    let mut out = PanelOutcome {
        model: m.model.clone(),
        provider: last.map_or_else(String::new, |c| c.provider.name.clone()),
        latency_ms,
        ..PanelOutcome::default()
    };
    let mut leg = None;
    match done {
        None => {
            out.dropped = Some(format!("missed the panel deadline ({deadline_ms} ms)"));
            if let Some(c) = last {
                attempts
                    .borrow_mut()
                    .push(Attempt::new(c, "panel_deadline", latency_ms));
            }
        }
        Some(Err(why)) => out.dropped = Some(why),
        Some(Ok((c, answer, usage, estimated))) => {
            out.provider = c.provider.name.clone();
            out.answer = Some(Answer::from_completion(&answer));
            out.cost_nanos = cost_nanos(&usage, &c.price);
            out.tokens = usage.prompt_tokens + usage.completion_tokens;
            leg = Some(Leg {
                model: c.model.clone(),
                provider: c.provider.name.clone(),
                usage,
                estimated,
                price: c.price.clone(),
                role: Some("panel".into()),
            });
        }
    }
    (out, leg, attempts.into_inner())
}

/// Serves a fused call; returns every attempt (panel and synthesizer) for health.
pub async fn serve(
    out: Out,
    call: CallRequest,
    plan: FusionPlan,
    prompt_estimate: u64,
) -> Vec<Attempt> {
    let started = Instant::now();
    let body = fusion::panel_body(&call.body);
    let until = after_ms(plan.deadline_ms);
    let runs = plan
        .panel
        .iter()
        .map(|m| run_member(m, &call, &body, prompt_estimate, until, plan.deadline_ms));
    let results = futures::future::join_all(runs).await;
    let panel_ms = elapsed_ms(started);
    let mut attempts = Vec::new();
    let mut outcomes = Vec::new();
    let mut legs = Vec::new();
    for (o, leg, a) in results {
        outcomes.push(o);
        legs.extend(leg);
        attempts.extend(a);
    }
    let answered: Vec<&PanelOutcome> = outcomes.iter().filter(|o| o.answer.is_some()).collect();
    let agreement = (answered.len() >= 2).then(|| {
        let names: Vec<String> = answered.iter().map(|o| o.model.clone()).collect();
        let answers: Vec<Answer> = answered.iter().filter_map(|o| o.answer.clone()).collect();
        compare::agreement(&names, &answers)
    });
    let fell_back = answered.is_empty();
    let mut inner = call.clone();
    inner.fusion = None;
    if !fell_back {
        inner.body = fusion::synthesis_body(&call.body, &outcomes);
    }
    let panel = Panel {
        outcomes,
        legs,
        panel_ms,
        agreement,
        fell_back,
        synthesizer: plan.synthesizer.clone(),
        candidates: call.candidates.clone(),
    };
    drop(call);
    let (inner_out, head, pieces) = Out::channel();
    let request = serde_json::to_vec(&inner).unwrap_or_default();
    drop(inner);
    // The synthesizer goes through the ordinary call path (boxed: that path leads here).
    let synth: LocalBoxFuture<'static, Vec<Attempt>> =
        Box::pin(crate::call::serve(request, inner_out));
    let (synth_attempts, ()) = futures::join!(synth, pass_on(out, head, pieces, &panel));
    attempts.extend(synth_attempts);
    attempts
}

fn add(a: &mut Usage, b: &Usage) {
    a.prompt_tokens += b.prompt_tokens;
    a.completion_tokens += b.completion_tokens;
    a.cached_tokens += b.cached_tokens;
    a.cache_write_tokens += b.cache_write_tokens;
    a.reasoning_tokens += b.reasoning_tokens;
}

/// The synthesizer's report with every panel leg added (usage summed, each leg priced).
fn fused_report(mut r: UsageReport, p: &Panel) -> UsageReport {
    let role = (!p.fell_back).then(|| "synthesizer".to_string());
    let mut legs: Vec<Leg> = if r.legs.is_empty() {
        p.candidates
            .iter()
            .find(|c| c.model == r.model && c.provider.name == r.provider)
            .or_else(|| p.candidates.iter().find(|c| c.model == r.model))
            .map(|c| Leg {
                model: r.model.clone(),
                provider: r.provider.clone(),
                usage: r.usage,
                estimated: r.estimated,
                price: c.price.clone(),
                role: role.clone(),
            })
            .into_iter()
            .collect()
    } else {
        r.legs
            .iter()
            .cloned()
            .map(|mut l| {
                l.role = role.clone();
                l
            })
            .collect()
    };
    if p.legs.is_empty() {
        return r;
    }
    legs.extend(p.legs.iter().cloned());
    let mut usage = Usage::default();
    for l in &legs {
        add(&mut usage, &l.usage);
    }
    r.usage = usage;
    r.estimated = legs.iter().any(|l| l.estimated);
    r.legs = legs;
    r
}

fn panel_nanos(p: &Panel) -> i64 {
    p.outcomes.iter().map(|o| o.cost_nanos).sum()
}

/// Adds `lumen.fusion` to a `lumen` object and makes its cost the whole request's.
fn tag(lumen: &mut Map<String, Value>, p: &Panel) {
    let synth_nanos = lumen
        .get("cost")
        .and_then(Value::as_f64)
        .map_or(0, |usd| (usd * NANOS_PER_USD).round() as i64);
    let total = synth_nanos + panel_nanos(p);
    lumen.insert("cost".into(), (total as f64 / NANOS_PER_USD).into());
    lumen.insert(
        "fusion".into(),
        fusion::report(
            &p.outcomes,
            p.panel_ms,
            &p.synthesizer,
            synth_nanos,
            p.agreement.as_ref(),
            p.fell_back,
        ),
    );
}

fn format_cost(nanos: i64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// Passes the synthesizer's answer on with the panel in it.
async fn pass_on(
    out: Out,
    head: oneshot::Receiver<Head>,
    mut pieces: mpsc::Receiver<Vec<u8>>,
    p: &Panel,
) {
    let Ok(head) = head.await else {
        out.respond(Reply::error(&ApiError::internal(
            "the fusion synthesizer ended without an answer",
        )))
        .await;
        return;
    };
    let stream = head
        .headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream"));
    let mut hs: Vec<(String, String)> = head
        .headers
        .into_iter()
        .filter(|(n, _)| n != "content-length")
        .collect();
    if !stream {
        let mut body = Vec::new();
        while let Some(piece) = pieces.next().await {
            body.extend(piece);
        }
        let mut synth_nanos = 0;
        if let Ok(Value::Object(mut v)) = serde_json::from_slice::<Value>(&body) {
            if let Some(Value::Object(l)) = v.get_mut("lumen") {
                synth_nanos = l
                    .get("cost")
                    .and_then(Value::as_f64)
                    .map_or(0, |usd| (usd * NANOS_PER_USD).round() as i64);
                tag(l, p);
                body = Value::Object(v).to_string().into_bytes();
            }
        }
        for (n, v) in hs.iter_mut() {
            if n == headers::USAGE {
                if let Ok(r) = serde_json::from_str::<UsageReport>(v) {
                    *v = serde_json::to_string(&fused_report(r, p)).unwrap_or_default();
                }
            } else if n == headers::COST {
                *v = format_cost(synth_nanos + panel_nanos(p));
            }
        }
        out.respond(Reply {
            status: head.status,
            headers: hs,
            body,
        })
        .await;
        return;
    }
    let mut sink = out.start_stream(head.status, &hs);
    let mut parser = Parser::default();
    while let Some(piece) = pieces.next().await {
        let mut bytes = Vec::with_capacity(piece.len() + 256);
        for ev in parser.push(&piece) {
            if ev.comment_only {
                bytes.extend_from_slice(KEEP_ALIVE);
            } else if ev.event.as_deref() == Some(USAGE_EVENT) {
                let data = serde_json::from_str::<UsageReport>(&ev.data)
                    .map(|r| serde_json::to_string(&fused_report(r, p)).unwrap_or_default())
                    .unwrap_or(ev.data);
                bytes.extend(sse::named_event(USAGE_EVENT, &data));
            } else if ev.event.is_none() && ev.data.contains("\"lumen\"") {
                match serde_json::from_str::<Value>(&ev.data) {
                    Ok(Value::Object(mut chunk)) => {
                        if let Some(Value::Object(l)) = chunk.get_mut("lumen") {
                            tag(l, p);
                        }
                        bytes.extend(sse::data_event(&Value::Object(chunk).to_string()));
                    }
                    _ => bytes.extend(frame(None, &ev.data)),
                }
            } else {
                bytes.extend(frame(ev.event.as_deref(), &ev.data));
            }
        }
        if !bytes.is_empty() && sink.send(bytes).await.is_err() {
            // The client went away: dropping `pieces` stops the synthesizer too.
            return;
        }
    }
    let _ = sink.close().await;
}
