//! The exact response cache at admission: decide from what admission already holds (the key,
//! its plan, the body, `cache-control`) whether a chat completion may use the cache — a request
//! that may not costs no key-value operation — then look its answer up (one `get`), and serve a
//! hit without calling any model: metered at cost 0 with what it saved, no budget hold, the
//! stream replayed with its original chunking. The write after a miss is in [`crate::after`];
//! the decisions are `lumen_shared::domain::cache`, the store side `lumen_shared::store::cache`.

use crate::after::CacheUse;
use crate::chat::Admitted;
use crate::ctx::{Ctx, ReqInfo};
use crate::{deps, limits};
use lumen_shared::contracts::{Outcome, Plan, SettleRequest, UsageReport};
use lumen_shared::domain::cache::{self, CacheEntry, Control, Decision, RequestCache};
use lumen_shared::domain::plans;
use lumen_shared::store::{log, ApiKeyRecord};
use lumen_shared::wire::openai::ChatRequest;
use lumen_spin::http::respond;
use lumen_spin::util::{elapsed_ms, now_ms};
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;
use spin_sdk::http::ResponseOutparam;

/// Whether the cache is looked up before planning: for a pinned model (its string, as asked,
/// is the model part of the key) of a key and plan without model restrictions or per-model
/// limits, the router has nothing to refuse, so a hit skips it too.
pub fn before_plan(key: &ApiKeyRecord, key_plan: Option<&plans::Plan>, chat: &ChatRequest) -> bool {
    !lumen_shared::domain::route::needs_body(&chat.model)
        && key.allowed_models.is_empty()
        && key_plan.is_none_or(|p| p.allowed_models.is_empty() && p.models.is_empty())
}

/// The model part of a request's cache key after planning: the resolved model, and for fusion
/// its panel.
pub fn model_key(plan: &Plan) -> String {
    let first = plan
        .candidates
        .first()
        .map_or("", |c| c.model.as_str())
        .to_string();
    match &plan.fusion {
        None => first,
        Some(f) => {
            let panel: Vec<&str> = f.panel.iter().map(|m| m.model.as_str()).collect();
            format!("{first}+fusion:{}", panel.join(","))
        }
    }
}

/// Decides and, for a cacheable request, looks its answer up. `ask` is `lumen.cache` (only
/// chat completions use the cache). Returns the entry of a hit.
#[expect(clippy::too_many_arguments, reason = "what admission has in hand")]
pub fn admit(
    ctx: &mut Ctx,
    kv: &SpinKv,
    info: &ReqInfo,
    key: &ApiKeyRecord,
    key_plan: Option<&plans::Plan>,
    ask: &RequestCache,
    chat: &ChatRequest,
    model: &str,
) -> Option<CacheEntry> {
    let decision = cache::decide(&cache::Inputs {
        key: key.cache.as_ref(),
        plan: key_plan.and_then(|p| p.cache.as_ref()),
        zero_retention: key.zero_retention || key_plan.is_some_and(|p| p.zero_retention),
        request: ask,
        control: Control::parse(info.cache_control.as_deref()),
        body: Some(&chat.body),
    });
    let caps = match decision {
        Decision::Bypass(_) => {
            ctx.after.borrow_mut().cache = CacheUse::Bypass;
            return None;
        }
        Decision::Use(u) => u,
    };
    let tenant = key.tenant_id().to_string();
    let hash = cache::request_hash(&tenant, model, chat.stream, &chat.body);
    if caps.lookup {
        match lumen_shared::store::cache::lookup(kv, &tenant, &hash, now_ms(), caps.ttl_s) {
            Ok(Some(e)) => {
                ctx.after.borrow_mut().cache = CacheUse::Hit {
                    saved_nanos: e.cost_nanos,
                };
                return Some(e);
            }
            Ok(None) => {}
            // The cache is an optimisation: a store failure here is a miss.
            Err(e) => eprintln!("lumen: response cache lookup failed: {e}"),
        }
    }
    ctx.after.borrow_mut().cache = CacheUse::Miss {
        tenant,
        hash,
        caps,
        recorder: cache::Recorder::new(caps.max_entry_bytes),
        whole: None,
    };
    None
}

/// Settles a hit (retried once): cost 0, the original usage, what it saved.
fn settle(ctx: &Ctx, a: &Admitted, e: &CacheEntry) -> Option<u64> {
    let req = SettleRequest {
        request_id: ctx.request_id.clone(),
        key_id: a.key.id.clone(),
        tenant: a.key.tenant_id().to_string(),
        started_ms: ctx.started_ms,
        latency_ms: elapsed_ms(ctx.started),
        stream: a.chat.stream,
        report: UsageReport {
            model: e.model.clone(),
            provider: e.provider.clone(),
            usage: e.usage,
            estimated: false,
            outcome: Outcome::Ok,
            upstream_ms: 0.0,
            legs: Vec::new(),
        },
        price: None,
        hold: None,
        reference: None,
        route: None,
        mark: ctx.mark(),
    };
    for _ in 0..2 {
        if let Ok(done) = deps::settle(&req) {
            return done.get("seq").and_then(Value::as_u64);
        }
    }
    eprintln!(
        "lumen: could not settle cache hit {} of key {} (usage not recorded)",
        req.request_id, req.key_id
    );
    None
}

/// Serves a hit: nothing in its bytes depends on the settlement (cost 0, the entry's saving),
/// so a whole answer or a replayed stream is settled right after it leaves.
pub async fn serve_hit(mut ctx: Ctx, a: Admitted, e: CacheEntry, out: ResponseOutparam) {
    ctx.model = e.model.clone();
    ctx.provider = e.provider.clone();
    // A hit uses no upstream tokens: give the token reservations back.
    limits::reconcile(&a.taken, 0);
    let now = now_ms();
    // Nothing in a hit's bytes depends on its settlement (cost 0, the entry's saving), so the
    // answer leaves first — a replayed stream as one body, its events (the original chunking)
    // with the head instead of one write each — and the log entry is written after it.
    let (content_type, body) = if a.chat.stream {
        let events = cache::replay_stream(&e, a.chat.include_usage, now).unwrap_or_default();
        ("text/event-stream", events.concat())
    } else {
        (
            "application/json",
            cache::replay_whole(&e, now).unwrap_or_default(),
        )
    };
    let mut reply = Reply::new(200, content_type, body);
    if a.chat.stream {
        reply.set_header("cache-control", "no-cache");
    }
    reply.set_header("x-lumen-cost", "0.000000000".to_string());
    respond(out, ctx.stamp(reply)).await;
    let seq = settle(&ctx, &a, &e);
    if seq.is_some_and(log::ends_block) {
        if let Err(e) = deps::seal() {
            eprintln!("lumen: could not seal the log: {}", e.message);
        }
    }
}
