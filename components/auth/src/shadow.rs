//! The shadow call: after the client has its whole answer, the same request goes to the
//! experiment's candidate (and, when configured, both answers to a judge), under the
//! experiment's concurrency cap and daily budget; the pair is compared and recorded as a sample,
//! and the call is metered as a shadow entry of the log (key `shadow:<name>`, never billed to
//! the tenant). Nothing here can reach the client: its response was finished before this starts,
//! and every failure ends here. `GET /admin/shadow/{name}` reports the samples.

use crate::admin::check_admin;
use crate::ctx::{Ctx, ReqInfo};
use crate::deps::{self, ProviderAnswer};
use lumen_shared::contracts::{
    headers, CallKind, CallRequest, Candidate, Leg, Mark, Outcome, SettleRequest, UsageReport,
    USAGE_EVENT,
};
use lumen_shared::domain::compare::{self, Answer};
use lumen_shared::domain::pricing::cost_nanos;
use lumen_shared::domain::shadow::{Sample, ShadowPlan, Side};
use lumen_shared::store::ledger;
use lumen_shared::store::log;
use lumen_shared::store::shadow as store;
use lumen_shared::store::usage::cost_of;
use lumen_shared::wire::openai::Usage;
use lumen_shared::wire::sse::Parser;
use lumen_shared::ApiError;
use lumen_spin::kv::unavailable;
use lumen_spin::util::{elapsed_ms, now_ms};
use lumen_spin::{Reply, SpinKv};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Largest shadow answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A shadow call to make after the answer.
#[derive(Debug, Clone)]
pub struct Job {
    /// The experiment.
    pub plan: ShadowPlan,
    /// The request as the live call got it.
    pub body: Map<String, Value>,
    /// Streamed like the live call.
    pub stream: bool,
    /// Keep the answers (the experiment asks and the key's plan allows retention).
    pub retain: bool,
    /// Prompt estimate and output tokens held, for the budget hold.
    pub tokens: (u64, u64),
}

/// The live side, as the client got it.
#[derive(Debug, Clone)]
pub struct Primary {
    /// Its answer.
    pub answer: Answer,
    /// Arrival to first content, ms.
    pub ttft_ms: f64,
    /// Arrival to the end, ms.
    pub total_ms: f64,
    /// Cost, nano-dollars.
    pub cost_nanos: i64,
    /// Model.
    pub model: String,
    /// Provider.
    pub provider: String,
}

/// What one call to the candidate (or the judge) gave.
struct Called {
    ok: bool,
    error: Option<String>,
    answer: Answer,
    report: Option<UsageReport>,
    ttft_ms: f64,
    total_ms: f64,
}

fn call(request_id: String, candidates: &[Candidate], body: Map<String, Value>) -> Called {
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let req = CallRequest {
        kind: CallKind::Chat,
        request_id,
        // The platform's upstream keys: a shadow never spends a tenant's own provider key.
        key_id: None,
        byok: Vec::new(),
        candidates: candidates.to_vec(),
        include_usage: false,
        body,
        cascade: false,
        fusion: None,
        trace_id: None,
    };
    let started = Instant::now();
    let failed = |why: String, started: Instant| Called {
        ok: false,
        error: Some(why),
        answer: Answer::default(),
        report: None,
        ttft_ms: elapsed_ms(started),
        total_ms: elapsed_ms(started),
    };
    let resp = match deps::call(&req) {
        Ok(r) => r,
        Err(e) => return failed(e.message, started),
    };
    drop(req);
    let status = resp.status();
    if !(200..300).contains(&status) {
        let report = usage_header(&resp);
        let body = resp.read_all(MAX_ANSWER_BYTES).unwrap_or_default();
        let why = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let mut c = failed(why, started);
        c.report = report;
        return c;
    }
    if stream {
        read_stream(&resp, started)
    } else {
        let report = usage_header(&resp);
        match resp.read_all(MAX_ANSWER_BYTES) {
            Ok(body) => {
                let answer = serde_json::from_slice::<Value>(&body)
                    .map(|v| Answer::from_completion(&v))
                    .unwrap_or_default();
                let ms = elapsed_ms(started);
                Called {
                    ok: report.as_ref().is_none_or(|r| r.outcome == Outcome::Ok),
                    error: None,
                    answer,
                    report,
                    ttft_ms: ms,
                    total_ms: ms,
                }
            }
            Err(why) => failed(why, started),
        }
    }
}

fn usage_header(resp: &ProviderAnswer) -> Option<UsageReport> {
    resp.header(headers::USAGE)
        .and_then(|v| serde_json::from_str(&v).ok())
}

fn read_stream(resp: &ProviderAnswer, started: Instant) -> Called {
    let mut parser = Parser::default();
    let mut answer = Answer::default();
    let mut ttft = None;
    let mut report = None;
    let mut done = false;
    while let Some(piece) = resp.next_piece() {
        for ev in parser.push(&piece) {
            if ev.event.as_deref() == Some(USAGE_EVENT) {
                report = serde_json::from_str::<UsageReport>(&ev.data).ok();
                continue;
            }
            if ev.comment_only || ev.event.is_some() {
                continue;
            }
            let data = ev.data.trim();
            if data == "[DONE]" {
                done = true;
                continue;
            }
            if let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) {
                let before = answer.text.len() + answer.tool_calls.len();
                answer.push_chunk(&chunk);
                if ttft.is_none() && answer.text.len() + answer.tool_calls.len() != before {
                    ttft = Some(elapsed_ms(started));
                }
            }
        }
    }
    let total = elapsed_ms(started);
    let ok = done && report.as_ref().is_none_or(|r| r.outcome == Outcome::Ok);
    Called {
        ok,
        error: (!ok).then(|| "the candidate's stream did not complete".to_string()),
        answer,
        report,
        ttft_ms: ttft.unwrap_or(total),
        total_ms: total,
    }
}

fn price_of<'a>(cs: &'a [Candidate], r: &UsageReport) -> Option<&'a Candidate> {
    cs.iter()
        .find(|c| c.model == r.model && c.provider.name == r.provider)
        .or_else(|| cs.iter().find(|c| c.model == r.model))
        .or_else(|| cs.first())
}

/// The legs of a call, each at its own price (the provider reports legs of a failed-over
/// stream itself).
fn legs(cs: &[Candidate], r: &UsageReport, role: &str) -> Vec<Leg> {
    if !r.legs.is_empty() {
        return r
            .legs
            .iter()
            .cloned()
            .map(|mut l| {
                l.role = Some(role.to_string());
                l
            })
            .collect();
    }
    price_of(cs, r)
        .map(|c| Leg {
            model: r.model.clone(),
            provider: r.provider.clone(),
            usage: r.usage,
            estimated: r.estimated,
            price: c.price.clone(),
            role: Some(role.to_string()),
        })
        .into_iter()
        .collect()
}

fn last_user_text(body: &Map<String, Value>) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// Asks the judge whether two answers are equivalent: `Some(true)` for SAME, `Some(false)` for
/// DIFFERENT, `None` when it said neither.
fn judge(ctx: &Ctx, job: &Job, a: &Answer, b: &Answer) -> (Option<bool>, Option<UsageReport>) {
    let show = |x: &Answer| {
        let mut s = x.text.trim().to_string();
        for t in &x.tool_calls {
            s.push_str(&format!("\n(calls {}({}))", t.name, t.arguments));
        }
        s
    };
    let prompt = format!(
        "Request:\n{}\n\nAnswer A:\n{}\n\nAnswer B:\n{}\n\nDo A and B say the same thing in substance (same result, same facts, same tool calls)? Reply with one word: SAME or DIFFERENT.",
        last_user_text(&job.body),
        show(a),
        show(b)
    );
    let body = json!({
        "model": job.plan.judge.first().map_or("", |c| c.model.as_str()),
        "messages": [
            {"role": "system", "content": "You are a strict judge of whether two answers are equivalent."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0,
        "max_tokens": 5,
    });
    let got = call(
        format!("{}-judge", ctx.request_id),
        &job.plan.judge,
        body.as_object().cloned().unwrap_or_default(),
    );
    let word = got.answer.text.to_ascii_uppercase();
    let verdict = if !got.ok {
        None
    } else if word.contains("DIFFERENT") {
        Some(false)
    } else if word.contains("SAME") {
        Some(true)
    } else {
        None
    };
    (verdict, got.report)
}

/// Makes the shadow call of one request and records the pair. Never fails: what goes wrong is
/// logged and, where there is a sample, recorded in it.
pub fn run(ctx: &Ctx, job: Job, primary: Primary) {
    let Ok(kv) = SpinKv::open() else {
        return;
    };
    let name = job.plan.name.clone();
    let hold = ledger::max_cost_nanos(
        job.tokens.0,
        job.tokens.1,
        job.plan.candidates.iter().map(|c| &c.price),
    );
    let started_ms = now_ms();
    let admission = match store::admit(&kv, &job.plan, hold, started_ms) {
        Ok(Ok(a)) => a,
        Ok(Err(skipped)) => {
            eprintln!(
                "lumen: shadow {name} skipped for {}: {skipped:?}",
                ctx.request_id
            );
            return;
        }
        Err(e) => {
            eprintln!("lumen: shadow {name}: {e}");
            return;
        }
    };
    let started = Instant::now();
    let mut body = job.body.clone();
    body.insert("stream".into(), Value::Bool(job.stream));
    let got = call(
        format!("{}-shadow", ctx.request_id),
        &job.plan.candidates,
        body,
    );
    let (verdict, judged) = if got.ok && !job.plan.judge.is_empty() {
        judge(ctx, &job, &primary.answer, &got.answer)
    } else {
        (None, None)
    };
    let first = job.plan.candidates.first();
    let report = got.report.clone().unwrap_or_else(|| UsageReport {
        model: first.map_or_else(String::new, |c| c.model.clone()),
        provider: first.map_or_else(String::new, |c| c.provider.name.clone()),
        usage: Usage::default(),
        estimated: false,
        outcome: Outcome::UpstreamError,
        upstream_ms: 0.0,
        legs: Vec::new(),
    });
    let mut all_legs = legs(&job.plan.candidates, &report, "candidate");
    if let Some(j) = &judged {
        all_legs.extend(legs(&job.plan.judge, j, "judge"));
    }
    let cost: i64 = all_legs
        .iter()
        .map(|l| cost_nanos(&l.usage, &l.price))
        .sum();
    if let Err(e) = store::release(&kv, &name, &admission, cost) {
        eprintln!("lumen: shadow {name}: {e}");
    }
    let candidate_cost: i64 = all_legs
        .iter()
        .filter(|l| l.role.as_deref() == Some("candidate"))
        .map(|l| cost_nanos(&l.usage, &l.price))
        .sum();
    // Metered as a shadow entry of the log: every leg at its own price.
    let settle = SettleRequest {
        request_id: format!("{}-shadow", ctx.request_id),
        key_id: format!("shadow:{name}"),
        tenant: format!("shadow:{name}"),
        started_ms,
        latency_ms: elapsed_ms(started),
        stream: job.stream,
        report: UsageReport {
            legs: all_legs,
            ..report.clone()
        },
        price: price_of(&job.plan.candidates, &report).map(|c| c.price.clone()),
        hold: None,
        reference: None,
        route: None,
        mark: Mark {
            shadow: name.clone(),
            ..Mark::default()
        },
    };
    debug_assert_eq!(cost_of(&settle), cost);
    match deps::settle(&settle) {
        Ok(done) => {
            if done
                .get("seq")
                .and_then(Value::as_u64)
                .is_some_and(log::ends_block)
            {
                let _ = deps::seal();
            }
        }
        Err(e) => eprintln!("lumen: shadow {name}: could not meter: {}", e.message),
    }
    let sample = Sample {
        time_ms: ctx.started_ms,
        primary: Side {
            model: primary.model,
            provider: primary.provider,
            ok: true,
            ttft_ms: primary.ttft_ms,
            total_ms: primary.total_ms,
            cost_nanos: primary.cost_nanos,
            error: None,
        },
        candidate: Side {
            model: report.model.clone(),
            provider: report.provider.clone(),
            ok: got.ok,
            ttft_ms: got.ttft_ms,
            total_ms: got.total_ms,
            cost_nanos: candidate_cost,
            error: got.error.clone(),
        },
        comparison: got
            .ok
            .then(|| compare::compare(&job.body, &primary.answer, &got.answer)),
        judge: verdict,
        answers: (job.retain && got.ok).then_some((primary.answer.text, got.answer.text)),
    };
    if let Err(e) = store::record(&kv, &name, &sample) {
        eprintln!("lumen: shadow {name}: could not record the sample: {e}");
    }
}

/// `GET /admin/shadow/{name}`: both sides side by side, with sample counts, confidence
/// intervals and a verdict.
pub fn admin_report(info: &ReqInfo, name: &str) -> Result<Reply, ApiError> {
    check_admin(info)?;
    let kv = SpinKv::open_or_503()?;
    let r = store::report(&kv, name).map_err(|e| unavailable(&e))?;
    if r.recorded == 0 {
        return Err(ApiError::not_found(
            format!("no shadow samples for \"{name}\" yet; experiments are named in config/catalog.toml [shadows.<name>] or plan-<plan> for a plan's"),
            None,
            "shadow_not_found",
        ));
    }
    Ok(Reply::json(200, &r))
}
