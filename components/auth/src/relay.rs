//! From the plan to the client: call the provider, relay its answer (whole, or event by event
//! without the internal usage event), then settle with the meter once the client's response is
//! finished.

use crate::chat::Admitted;
use crate::ctx::Ctx;
use futures::{SinkExt, StreamExt};
use lumen_shared::contracts::{
    headers, routes, CallRequest, Outcome, Plan, SettleRequest, UsageReport,
};
use lumen_shared::openai::{estimate_prompt_tokens, Usage};
use lumen_shared::route::RouteExplain;
use lumen_shared::sse::Parser;
use lumen_shared::ApiError;
use lumen_spin::http::{
    post_json, post_streaming, read_response_body, respond, response_header, start_stream,
};
use lumen_spin::relay::{ClientRelay, Outgoing};
use lumen_spin::util::elapsed_ms;
use lumen_spin::Reply;
use serde_json::Value;
use spin_sdk::http::{IncomingResponse, ResponseOutparam};

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
    }
}

/// Calls the provider, answers the client, settles.
pub async fn run(mut ctx: Ctx, admitted: Admitted, out: ResponseOutparam) {
    let Admitted { key, chat, plan } = admitted;
    let prompt_estimate = estimate_prompt_tokens(&chat.body);
    let call = CallRequest {
        request_id: ctx.request_id.clone(),
        candidates: plan.candidates.clone(),
        include_usage: chat.include_usage,
        body: chat.body,
        cascade: plan.cascade,
    };
    let sent = match serde_json::to_vec(&call) {
        Ok(bytes) => {
            drop(call);
            post_streaming("provider", routes::CALL, bytes).await
        }
        Err(e) => Err(ApiError::internal(format!(
            "could not serialise the provider call: {e}"
        ))),
    };
    let report = match sent {
        Err(e) => {
            respond(out, ctx.stamp(Reply::error(&e))).await;
            fallback_report(&ctx, Usage::default(), false, Outcome::UpstreamError)
        }
        Ok(resp) => {
            if let Some(m) = response_header(&resp, headers::MODEL) {
                ctx.model = m;
            }
            if let Some(p) = response_header(&resp, headers::PROVIDER) {
                ctx.provider = p;
            }
            if let Some(why) = response_header(&resp, headers::CASCADE) {
                let r = ctx.route.take().unwrap_or_default();
                ctx.route = Some(format!("{r}; escalated={why}"));
            }
            ctx.upstream_ms = response_header(&resp, headers::UPSTREAM_MS)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            let content_type = response_header(&resp, "content-type").unwrap_or_default();
            if content_type
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
            {
                stream(&ctx, resp, out, prompt_estimate).await
            } else {
                let route = plan.route.as_ref();
                whole(&ctx, resp, out, prompt_estimate, &content_type, route).await
            }
        }
    };
    settle(&ctx, &key.id, chat.stream, report, &plan).await;
}

/// Relays a whole answer (success or error), with its status, content type and `retry-after`.
async fn whole(
    ctx: &Ctx,
    resp: IncomingResponse,
    out: ResponseOutparam,
    prompt_estimate: u64,
    content_type: &str,
    route: Option<&RouteExplain>,
) -> UsageReport {
    let status = resp.status();
    let retry_after = response_header(&resp, "retry-after");
    let usage = response_header(&resp, headers::USAGE)
        .and_then(|v| serde_json::from_str::<UsageReport>(&v).ok());
    let body = read_response_body(&resp, MAX_ANSWER_BYTES).await;
    drop(resp);
    let ok = (200..300).contains(&status);
    let (reply, report) = match body {
        Ok(body) => {
            let body = if ok {
                crate::explain::with_route(body, route)
            } else {
                body
            };
            let content_type = if content_type.is_empty() {
                "application/json"
            } else {
                content_type
            };
            let mut reply = Reply::new(status, content_type, body);
            if let Some(ra) = retry_after {
                reply.set_header("retry-after", ra);
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
                Reply::error(&e),
                fallback_report(ctx, Usage::default(), false, Outcome::UpstreamError),
            )
        }
    };
    respond(out, ctx.stamp(reply)).await;
    report
}

/// Relays an SSE answer event by event; stops and drops the provider stream if the client goes.
async fn stream(
    ctx: &Ctx,
    resp: IncomingResponse,
    out: ResponseOutparam,
    prompt_estimate: u64,
) -> UsageReport {
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(ctx.headers());
    let mut sink = start_stream(out, resp.status(), &hs);
    let mut relay = ClientRelay::default();
    let mut parser = Parser::default();
    let mut disconnected = false;
    {
        let mut body = resp.take_body_stream();
        'read: while let Some(Ok(chunk)) = body.next().await {
            for ev in parser.push(&chunk) {
                if let Some(Outgoing { bytes, content }) = relay.on_event(&ev) {
                    if sink.send(bytes).await.is_err() {
                        disconnected = true;
                        break 'read;
                    }
                    relay.delivered(content);
                }
            }
        }
    }
    drop(resp);
    if !disconnected {
        if let Some(tail) = relay.cut_tail() {
            disconnected = sink.send(tail.to_vec()).await.is_err();
        }
        let _ = sink.close().await;
    }
    drop(sink);
    relay.report(
        disconnected,
        (&ctx.model, &ctx.provider, ctx.upstream_ms),
        prompt_estimate,
    )
}

/// Settles once with the meter after the response is finished: retried once, then logged.
async fn settle(ctx: &Ctx, key_id: &str, stream: bool, report: UsageReport, plan: &Plan) {
    let price = plan
        .candidates
        .iter()
        .find(|c| c.model == report.model)
        .map(|c| c.price.clone());
    let req = SettleRequest {
        request_id: ctx.request_id.clone(),
        key_id: key_id.to_string(),
        started_ms: ctx.started_ms,
        latency_ms: elapsed_ms(ctx.started),
        stream,
        report,
        price,
    };
    let mut last = None;
    for _ in 0..2 {
        match post_json::<_, Value>("meter", routes::SETTLE, &req).await {
            Ok(_) => return,
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
