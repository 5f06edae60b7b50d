//! From the plan to the client: call the provider, relay its answer (whole, or event by event
//! without the internal usage event), and settle with the meter *before* the client's last bytes
//! (the whole body, or the stream's `data: [DONE]`) are released, so a response the client saw
//! complete always has its usage record, ledger settlement and audit entry, even if this
//! process is killed right after.
//!
//! A stream whose client set no `max_tokens` was held for [`ledger::DEFAULT_HOLD_OUTPUT_TOKENS`]
//! output tokens; going past that extends the hold, and when the budget cannot cover the
//! extension the stream ends cleanly: a last chunk with `finish_reason: "length"` and a `lumen`
//! note, then `[DONE]`.

use crate::chat::Admitted;
use crate::ctx::Ctx;
use crate::deps::{self, ProviderAnswer};
use crate::limits;
use crate::saved;
use futures::SinkExt;
use lumen_shared::contracts::{
    headers, CallKind, CallRequest, Outcome, Plan, SettleRequest, UsageReport,
};
use lumen_shared::domain::saved::Saved;
use lumen_shared::store::ledger::{self, Hold};
use lumen_shared::store::limits::Taken;
use lumen_shared::store::{log, TenantRecord};
use lumen_shared::wire::dialect::messages;
use lumen_shared::wire::openai::{estimate_prompt_tokens, Usage};
use lumen_shared::wire::sse::{self, Parser};
use lumen_shared::ApiError;
use lumen_spin::http::{respond, start_stream, ResponseSink, ONE_WRITE_LIMIT};
use lumen_spin::pipe::Polled;
use lumen_spin::relay::{ClientRelay, Outgoing};
use lumen_spin::util::elapsed_ms;
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;
use spin_sdk::http::ResponseOutparam;
use std::time::{Duration, Instant};

/// Largest non-streamed answer relayed.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

fn fallback_report(ctx: &Ctx, usage: Usage, estimated: bool, outcome: Outcome) -> UsageReport {
    UsageReport {
        model: ctx.model.clone(),
        provider: ctx.provider.clone(),
        usage,
        estimated,
        outcome,
        upstream_ms: ctx.upstream_ms,
        legs: Vec::new(),
    }
}

/// The budget state a relay carries to its settlement, and what settling returned.
struct Budget {
    hold: Option<Hold>,
    tenant_id: String,
    tenant: TenantRecord,
    held_output: (u64, bool),
    taken: Vec<Taken>,
    /// The request's place in the log, once settled.
    seq: Option<u64>,
    /// What it saved against its reference model, once settled.
    saved: Option<Saved>,
    /// The provider's `lumen-cascade` header: the candidates the cascade escalated from.
    escalated: Option<String>,
}

/// The wire shape the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages (`/v1/messages`): answers, events and errors converted back.
    Anthropic,
    /// OpenAI embeddings (`/v1/embeddings`).
    Embeddings,
}

/// Calls the provider, answers the client, settles.
pub async fn run(ctx: Ctx, admitted: Admitted, out: ResponseOutparam) {
    run_shaped(ctx, admitted, out, Shape::OpenAi).await;
}

/// A reply in the client's shape (error bodies converted for Anthropic clients).
pub fn shaped(mut reply: Reply, shape: Shape) -> Reply {
    if shape == Shape::Anthropic && !(200..300).contains(&reply.status) {
        reply.body = messages::error_body(reply.status, &reply.body);
    }
    reply
}

/// [`run`] for a client of the given shape.
pub async fn run_shaped(mut ctx: Ctx, admitted: Admitted, out: ResponseOutparam, shape: Shape) {
    let Admitted {
        key,
        chat,
        plan,
        hold,
        tenant,
        held_output,
        taken,
    } = admitted;
    let mut budget = Budget {
        hold,
        tenant_id: key.tenant_id().to_string(),
        tenant,
        held_output,
        taken,
        seq: None,
        saved: None,
        escalated: None,
    };
    let prompt_estimate = estimate_prompt_tokens(&chat.body);
    let call = CallRequest {
        kind: if shape == Shape::Embeddings {
            CallKind::Embeddings
        } else {
            CallKind::Chat
        },
        request_id: ctx.request_id.clone(),
        key_id: Some(key.id.clone()),
        byok: key.byok.clone(),
        candidates: plan.candidates.clone(),
        include_usage: chat.include_usage,
        body: chat.body,
        cascade: plan.cascade,
        fusion: plan.fusion.clone(),
        trace_id: ctx.trace.borrow().propagate(),
    };
    ctx.trace.borrow_mut().call_at = Some(crate::trace::mark(ctx.started));
    let sent = deps::call(&call);
    drop(call);
    match sent {
        Err(e) => {
            let report = fallback_report(&ctx, Usage::default(), false, Outcome::UpstreamError);
            settle(&ctx, &key.id, chat.stream, report, &plan, &mut budget).await;
            respond(out, ctx.stamp(shaped(Reply::error(&e), shape))).await;
        }
        Ok(resp) => {
            if let Some(m) = resp.header(headers::MODEL) {
                ctx.model = m;
            }
            if let Some(p) = resp.header(headers::PROVIDER) {
                ctx.provider = p;
            }
            // `x-lumen-route` and `lumen.route` name the model that served.
            let route = plan.route.clone().map(|r| r.served_by(&ctx.model));
            if let Some(r) = &route {
                ctx.route = Some(r.header());
            }
            ctx.waited_ms = resp
                .header(headers::WAITED_MS)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            if let Some(why) = resp.header(headers::CASCADE) {
                let r = ctx.route.take().unwrap_or_default();
                ctx.route = Some(format!("{r}; escalated={why}"));
                budget.escalated = Some(why);
            }
            ctx.upstream_ms = resp
                .header(headers::UPSTREAM_MS)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            {
                let mut t = ctx.trace.borrow_mut();
                t.set_attempts(resp.header(headers::ATTEMPTS));
                t.upstream_ms = ctx.upstream_ms;
            }
            let content_type = resp.header("content-type").unwrap_or_default();
            if content_type
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
            {
                let seen = (key.id.as_str(), chat.stream, &plan);
                stream(&ctx, resp, out, prompt_estimate, &mut budget, seen, shape).await;
            } else {
                let (reply, report) =
                    whole(&ctx, resp, prompt_estimate, &content_type, shape).await;
                let cache = crate::after::on_whole(&ctx, &reply);
                settle(&ctx, &key.id, chat.stream, report, &plan, &mut budget).await;
                let stamps = saved::Stamps {
                    route: route.as_ref(),
                    saved: budget.saved.as_ref(),
                    cache,
                };
                let reply = saved::finish_whole(reply, &stamps);
                respond(out, ctx.stamp(reply)).await;
            }
        }
    }
    // After the answer's last byte: the request that ended a block of the log seals it.
    if budget.seq.is_some_and(log::ends_block) {
        if let Err(e) = deps::seal() {
            eprintln!("lumen: could not seal the log: {}", e.message);
        }
    }
    // Then the response cache fill and the shadow call, if the request has them.
    crate::after::finish(&ctx);
}

/// Reads a whole answer (success or error) into the reply to relay, with its status, content
/// type and `retry-after`, and the report to settle.
async fn whole(
    ctx: &Ctx,
    resp: ProviderAnswer,
    prompt_estimate: u64,
    content_type: &str,
    shape: Shape,
) -> (Reply, UsageReport) {
    let status = resp.status();
    let retry_after = resp.header("retry-after");
    let cost = resp.header(headers::COST);
    let cold = resp.header(headers::COLD_START);
    let fallbacks = resp.header(headers::FALLBACKS);
    let usage = resp
        .header(headers::USAGE)
        .and_then(|v| serde_json::from_str::<UsageReport>(&v).ok());
    let body = resp.read_all(MAX_ANSWER_BYTES);
    drop(resp);
    let ok = (200..300).contains(&status);
    let (reply, report) = match body {
        Ok(body) => {
            let content_type = if content_type.is_empty() {
                "application/json"
            } else {
                content_type
            };
            let body = match shape {
                Shape::Anthropic if ok => serde_json::from_slice::<Value>(&body)
                    .map(|v| messages::response(&v).to_string().into_bytes())
                    .unwrap_or(body),
                _ => body,
            };
            let mut reply = shaped(Reply::new(status, content_type, body), shape);
            if let Some(ra) = retry_after {
                reply.set_header("retry-after", ra);
            }
            if let Some(cost) = cost {
                reply.set_header("x-lumen-cost", cost);
            }
            if let Some(ms) = cold {
                reply.set_header("x-lumen-cold-start-ms", ms);
            }
            if let Some(f) = fallbacks {
                reply.set_header("x-lumen-fallbacks", f);
            }
            let report = usage.unwrap_or_else(|| {
                if ok {
                    fallback_report(
                        ctx,
                        Usage {
                            prompt_tokens: prompt_estimate,
                            ..Usage::default()
                        },
                        true,
                        Outcome::Ok,
                    )
                } else {
                    fallback_report(ctx, Usage::default(), false, Outcome::UpstreamError)
                }
            });
            (reply, report)
        }
        Err(why) => {
            let e = ApiError::upstream(
                502,
                format!("the provider component failed mid-answer: {why}"),
                false,
            );
            (
                shaped(Reply::error(&e), shape),
                fallback_report(ctx, Usage::default(), false, Outcome::UpstreamError),
            )
        }
    };
    (reply, report)
}

/// The chunk that ends a stream cut by the budget.
fn budget_cut_chunk(ctx: &Ctx) -> Vec<u8> {
    let chunk = serde_json::json!({
        "id": format!("chatcmpl-{}", ctx.request_id),
        "object": "chat.completion.chunk",
        "created": ctx.started_ms / 1000,
        "model": ctx.model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        "lumen": {"note": "the stream was ended because the tenant's budget cannot cover more output tokens"},
    });
    sse::data_event(&chunk.to_string())
}

/// Extends the hold for another block of output tokens; false when the budget cannot cover it.
fn extend_hold(budget: &mut Budget, plan: &Plan, model: &str) -> bool {
    let Some(hold) = budget.hold.as_mut() else {
        return true;
    };
    let price = plan
        .candidates
        .iter()
        .find(|c| c.model == model)
        .or_else(|| plan.candidates.first())
        .map(|c| c.price.clone());
    let extra = price.map_or(0, |p| {
        ledger::max_cost_nanos(0, ledger::DEFAULT_HOLD_OUTPUT_TOKENS, [&p])
    });
    let Ok(kv) = SpinKv::open() else {
        return false;
    };
    match ledger::extend(&kv, hold, &budget.tenant, extra) {
        Ok(true) => {
            budget.held_output.0 += ledger::DEFAULT_HOLD_OUTPUT_TOKENS;
            true
        }
        Ok(false) => false,
        Err(e) => {
            // Ended as if the budget were spent (never an overspend), and said so in the log.
            eprintln!("lumen: could not extend the hold of {}: {e}", hold.tenant);
            false
        }
    }
}

/// The longest a streamed event is held for the rest of its burst (see `stream`): a provider
/// that never pauses for the burst gap is still written this often.
const MAX_HOLD: Duration = Duration::from_millis(20);

/// Relays an SSE answer as it comes, a burst of events per write; stops and drops the provider
/// stream if the client goes. `[DONE]` is held back until the request is settled.
async fn stream(
    ctx: &Ctx,
    resp: ProviderAnswer,
    out: ResponseOutparam,
    prompt_estimate: u64,
    budget: &mut Budget,
    (key_id, is_stream, plan): (&str, bool, &Plan),
    shape: Shape,
) {
    let mut convert = (shape == Shape::Anthropic).then(messages::Stream::new);
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(ctx.headers());
    if let Some(ms) = resp.header(headers::COLD_START) {
        hs.push(("x-lumen-cold-start-ms".to_string(), ms));
    }
    if let Some(f) = resp.header(headers::FALLBACKS) {
        hs.push(("x-lumen-fallbacks".to_string(), f));
    }
    // Events are held while the provider keeps sending and written once it has been silent for
    // the burst gap (`stream_burst_gap_us`, 1 ms by default), so a burst leaves in one write: on
    // a host that leaves Nagle's algorithm on (stock Spin), a second small write within a round
    // trip waits for the client's delayed ACK (~40 ms). The events of one upstream read reach
    // auth one by one, each after a hop through the host (~0.1-0.2 ms apart under Spin on a
    // 2-core machine), hence a gap longer than that; it is also the most a streamed token waits
    // before it is written. The head waits for the first event, so both leave in one write (see
    // `start_stream`); a stream whose provider ends within its first burst goes whole, after its
    // settlement, with a `content-length` and no chunked ending. Nothing is held longer than
    // `MAX_HOLD` or beyond `ONE_WRITE_LIMIT` bytes. lumen-host sends small writes
    // at once (`TCP_NODELAY`) and sets the gap to 0: what is there at once still leaves
    // together.
    let status = resp.status();
    ctx.note_response(status);
    let mut out = Some(out);
    let mut sink: Option<ResponseSink> = None;
    let mut held: Vec<u8> = Vec::new();
    // Content events among `held`: counted as delivered once written.
    let mut held_content = 0u64;
    let mut relay = ClientRelay::default();
    let mut parser = Parser::default();
    let mut disconnected = false;
    let mut cut_by_budget = false;
    let done_event = sse::data_event("[DONE]");
    let mut held_done: Option<Vec<u8>> = None;
    // The final chunk waits for the settlement's `saved`.
    let mut fin = saved::FinalChunk::default();
    let mut started = false;
    // When the oldest of `held` was taken.
    let mut held_since: Option<Instant> = None;
    'read: loop {
        let piece = match resp.poll_piece(ctx.burst_gap_us) {
            Polled::Piece(piece) => Some(piece),
            Polled::End => break 'read,
            Polled::Pending => None,
        };
        // A provider that never pauses (a fast model, a long replay) still gets written.
        let overdue =
            held.len() >= ONE_WRITE_LIMIT || held_since.is_some_and(|t| t.elapsed() >= MAX_HOLD);
        if started && (piece.is_none() || overdue) {
            held_since = None;
            match sink.as_mut() {
                None => {
                    if let Some(out) = out.take() {
                        let first = std::mem::take(&mut held);
                        sink = Some(start_stream(out, status, &hs, first).await);
                    }
                }
                Some(s) if !held.is_empty() => {
                    if s.send(std::mem::take(&mut held)).await.is_err() {
                        disconnected = true;
                        break 'read;
                    }
                }
                Some(_) => {}
            }
            // Written (content events always hold bytes, so nothing held counts 0).
            relay.delivered_content(std::mem::take(&mut held_content));
        }
        let chunk = match piece {
            Some(piece) => piece,
            None => match resp.next_piece() {
                Some(piece) => piece,
                None => break 'read,
            },
        };
        started = true;
        for ev in parser
            .push(&chunk)
            .into_iter()
            .inspect(|ev| ctx.tap(ev))
            .flat_map(|ev| fin.pass(ev))
        {
            if let Some(Outgoing { bytes, content }) = relay.on_event(&ev) {
                if bytes == done_event {
                    held_done = Some(bytes);
                    continue;
                }
                if content
                    && !budget.held_output.1
                    && relay.delivered_chunks() + held_content >= budget.held_output.0
                    && !extend_hold(budget, plan, &ctx.model)
                {
                    cut_by_budget = true;
                    break 'read;
                }
                let bytes = match convert.as_mut() {
                    Some(c) if !ev.comment_only => c.on_data(&ev.data),
                    _ => bytes,
                };
                if bytes.is_empty() {
                    continue;
                }
                if held.is_empty() {
                    held_since = Some(Instant::now());
                }
                held.extend(bytes);
                if content {
                    held_content += 1;
                }
            }
        }
    }
    drop(resp);
    // What is still held leaves with the last bytes.
    if !disconnected {
        relay.delivered_content(held_content);
    }
    let fallback = (ctx.model.as_str(), ctx.provider.as_str(), ctx.upstream_ms);
    let (report, last) = if cut_by_budget {
        let report = UsageReport {
            model: ctx.model.clone(),
            provider: ctx.provider.clone(),
            usage: Usage {
                prompt_tokens: prompt_estimate,
                completion_tokens: relay.delivered_chunks(),
                ..Usage::default()
            },
            estimated: true,
            outcome: Outcome::Ok,
            upstream_ms: ctx.upstream_ms,
            legs: Vec::new(),
        };
        let mut last = budget_cut_chunk(ctx);
        last.extend_from_slice(&done_event);
        (report, Some(last))
    } else if disconnected {
        (relay.report(true, fallback, prompt_estimate), None)
    } else {
        let mut last = relay.cut_tail().map(<[u8]>::to_vec).unwrap_or_default();
        last.extend(held_done.unwrap_or_default());
        (relay.report(false, fallback, prompt_estimate), Some(last))
    };
    settle(ctx, key_id, is_stream, report, plan, budget).await;
    let last = last.map(|l| [fin.release(budget.saved.as_ref()), l].concat());
    // The last bytes are OpenAI events: Anthropic clients get them converted.
    let last = match (last, convert.as_mut()) {
        (Some(last), Some(c)) => Some(
            Parser::default()
                .push(&last)
                .iter()
                .flat_map(|ev| c.on_data(&ev.data))
                .collect::<Vec<u8>>(),
        ),
        (last, _) => last,
    };
    match (sink, out) {
        (Some(mut sink), _) => {
            if let Some(last) = last {
                held.extend(last);
                if held.is_empty() || sink.send(held).await.is_ok() {
                    let _ = sink.close().await;
                }
            }
        }
        (None, Some(out)) => {
            // Nothing written yet: the whole stream in one response with its length.
            held.extend(last.unwrap_or_default());
            let reply = Reply {
                status,
                headers: hs,
                body: held,
            };
            respond(out, reply).await;
        }
        (None, None) => {}
    }
}

/// Settles once with the meter before the response's last bytes (retried once, then logged),
/// then reconciles the token reservations with the actual usage.
async fn settle(
    ctx: &Ctx,
    key_id: &str,
    stream: bool,
    report: UsageReport,
    plan: &Plan,
    budget: &mut Budget,
) {
    let used = report.usage.prompt_tokens + report.usage.completion_tokens;
    let route = saved::route_record(
        plan,
        (&report.model, &report.provider),
        report.outcome == Outcome::Ok,
        budget.escalated.as_deref(),
    );
    limits::reconcile(&budget.taken, used);
    let hold = budget.hold.take();
    // The price of the provider that served (the same model can be offered at several prices).
    let price = plan
        .candidates
        .iter()
        .find(|c| c.model == report.model && c.provider.name == report.provider)
        .or_else(|| plan.candidates.iter().find(|c| c.model == report.model))
        .map(|c| c.price.clone());
    let req = SettleRequest {
        request_id: ctx.request_id.clone(),
        key_id: key_id.to_string(),
        tenant: budget.tenant_id.clone(),
        started_ms: ctx.started_ms,
        latency_ms: elapsed_ms(ctx.started),
        stream,
        report,
        price,
        hold,
        reference: plan.reference.clone(),
        route,
        mark: ctx.mark(),
    };
    ctx.settled(&req);
    let settle_from = crate::trace::mark(ctx.started);
    let _settled = SettleMark(ctx, settle_from);
    let mut last = None;
    for _ in 0..2 {
        match deps::settle(&req) {
            Ok(done) => {
                budget.seq = done.get("seq").and_then(Value::as_u64);
                budget.saved = done
                    .get("saved")
                    .and_then(|s| serde_json::from_value(s.clone()).ok());
                return;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        eprintln!(
            "lumen: could not settle request {} of key {}: {} (usage not recorded)",
            req.request_id, req.key_id, e.message
        );
    }
}

/// Notes the settlement's span in the trace when the settle returns (every path).
struct SettleMark<'a>(&'a Ctx, f64);

impl Drop for SettleMark<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.trace.try_borrow_mut() {
            t.settle = Some((self.1, crate::trace::mark(self.0.started)));
        }
    }
}
