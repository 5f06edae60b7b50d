//! `POST /v1/chat/completions` up to the plan: authenticate the key and count it against its
//! requests per minute from the headers alone, then read and validate the body, ask the router
//! for a plan, take the windowed limits and hold the most the request can cost against the
//! tenant's budget. Nothing unauthenticated gets as far as the body.

use crate::account::authenticate;
use crate::ctx::{read_body, Ctx, ReqInfo};
use crate::deps;
use crate::limits;
use crate::relay::{self, shaped, Shape};
use lumen_shared::contracts::{Plan, PlanRequest};
use lumen_shared::domain::route;
use lumen_shared::store::ledger::{self, Hold};
use lumen_shared::store::limits::{
    check_rpm, refund_rpm as rpm_refund, Kind, RateStatus, Refused, Taken,
};
use lumen_shared::store::{ApiKeyRecord, Family as _, TenantKey, TenantRecord};
use lumen_shared::wire::openai::{self, estimate_prompt_tokens, ChatRequest};
use lumen_shared::ApiError;
use lumen_spin::http::respond;
use lumen_spin::util::now_ms;
use lumen_spin::{Reply, SpinKv};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

/// The route that uses the response cache and shadow experiments.
const CHAT_PATH: &str = "/v1/chat/completions";

/// A request that was admitted and planned.
pub struct Admitted {
    /// The caller's key.
    pub key: ApiKeyRecord,
    /// The validated request.
    pub chat: ChatRequest,
    /// The router's plan (never empty).
    pub plan: Plan,
    /// The budget hold (none when the tenant has no budget); settled with the request.
    pub hold: Option<Hold>,
    /// The tenant's budget settings.
    pub tenant: TenantRecord,
    /// Output tokens the hold covers, and whether the client capped output itself.
    pub held_output: (u64, bool),
    /// Windowed limits taken (token reservations are reconciled after settlement).
    pub taken: Vec<Taken>,
}

/// The caller as the headers alone tell it: the key, counted against its requests per minute.
pub struct Caller {
    /// The key.
    pub key: ApiKeyRecord,
    /// Its per-minute window as counted (to give the request back).
    pub rpm: RateStatus,
}

/// Before a byte of the body is read: the key from the headers (401 for none, a wrong or an
/// expired one) and its requests per minute (429), so a stranger or a flooding key costs a
/// header parse and a KV read or two, never a body.
pub fn gate(ctx: &mut Ctx, kv: &SpinKv, info: &ReqInfo) -> Result<Caller, ApiError> {
    let key = authenticate(kv, info)?;
    match check_rpm(kv, &key.id, key.rpm_limit, now_ms()) {
        Ok(rpm) => {
            ctx.set_rate(&rpm);
            Ok(Caller { key, rpm })
        }
        Err(e) => {
            if e.status == 429 {
                ctx.set_rate(&RateStatus {
                    limit: key.rpm_limit,
                    remaining: 0,
                    reset_secs: e.retry_after.unwrap_or(1),
                    window: 0,
                });
            }
            Err(e)
        }
    }
}

/// Gives the caller's request back to its per-minute window: a model the key may not use is a
/// 403 that costs no request (a malformed body, a 400, still counts: it was read and parsed).
pub fn refund(ctx: &mut Ctx, kv: &SpinKv, caller: &Caller) {
    match rpm_refund(kv, &caller.key.id, caller.rpm.window) {
        Ok(()) => ctx.set_rate(&RateStatus {
            remaining: caller.rpm.remaining.saturating_add(1).min(caller.rpm.limit),
            ..caller.rpm
        }),
        Err(e) => eprintln!(
            "lumen: could not give a refused request back to key {}: {}",
            caller.key.id, e.message
        ),
    }
}

/// A refusal by a windowed limit, with the token headers when it was a token limit.
fn refused(ctx: &mut Ctx, r: Refused) -> ApiError {
    if let (true, Some(s)) = (r.kind.counts_tokens(), r.status.as_ref()) {
        ctx.set_token_rate(s);
    }
    r.error
}

async fn admit(ctx: &mut Ctx, info: &ReqInfo, req: IncomingRequest) -> Result<Admitted, ApiError> {
    let kv = SpinKv::open_or_503()?;
    let caller = gate(ctx, &kv, info)?;
    let body = read_body(req, info).await?;
    let chat = openai::parse_chat_request(&body)?;
    drop(body);
    admit_chat(ctx, &kv, info, caller, chat).await
}

/// Plans, limits and holds budget for an authenticated caller's validated chat request.
pub async fn admit_chat(
    ctx: &mut Ctx,
    kv: &SpinKv,
    info: &ReqInfo,
    caller: Caller,
    mut chat: ChatRequest,
) -> Result<Admitted, ApiError> {
    if chat.stream {
        ctx.burst_gap_us = crate::ctx::stream_burst_gap_us()?;
    }
    // `lumen.cache` never goes further; only chat completions use the response cache.
    let cache_ask = lumen_shared::domain::cache::take_request_option(&mut chat.body)?;
    let chat_completion = info.path == CHAT_PATH;
    let key_plan = limits::key_plan(&caller.key)?;
    let reference = crate::explain::reference_ask(&chat.body, &caller.key, key_plan.as_ref())?;
    let held_output = ledger::max_output_tokens(&chat.body);
    let prompt_estimate = estimate_prompt_tokens(&chat.body);
    // Both are bounded (the body's size, MAX_OUTPUT_TOKENS): the sum cannot wrap.
    let reserve = prompt_estimate.saturating_add(held_output.0);
    let key = &caller.key;
    // A pinned model's answer is looked up before planning: a hit needs no router (and takes
    // no windows: nothing is generated).
    let early = chat_completion && crate::cache::before_plan(key, key_plan.as_ref(), &chat);
    if early {
        let model = chat.model.clone();
        let hit = crate::cache::admit(
            ctx,
            kv,
            info,
            key,
            key_plan.as_ref(),
            &cache_ask,
            &chat,
            &model,
        );
        if let Some(e) = hit {
            let plan = Plan::cached(&chat.model);
            return Ok(admit_hit(
                ctx,
                e,
                caller.key,
                chat,
                plan,
                held_output,
                Vec::new(),
            ));
        }
    }
    let allowed_models = if key.allowed_models.is_empty() {
        key_plan
            .as_ref()
            .map(|p| p.allowed_models.clone())
            .unwrap_or_default()
    } else {
        key.allowed_models.clone()
    };
    let ask = PlanRequest {
        model: chat.model.clone(),
        allowed_models,
        request: None,
        models: lumen_shared::domain::fallback::request_models(&chat.body)?,
        reference,
        shadow: key_plan
            .as_ref()
            .and_then(|p| p.shadow.clone())
            .filter(|_| chat_completion)
            .map(|s| (key.plan.clone(), s)),
        // The tenant's record, read below for the budget hold, rides in the health batch.
        read_also: vec![TenantKey(key.tenant_id()).key()],
    };
    // Only virtual models are planned from the body; a pinned model's body stays here and the
    // router gets its routing fields alone (provider preferences).
    let virtual_model = route::needs_body(&chat.model);
    let (ask, mut chat) = if virtual_model {
        let ask = PlanRequest {
            request: Some(chat.body),
            ..ask
        };
        let chat = ChatRequest {
            body: Default::default(),
            ..chat
        };
        (ask, chat)
    } else {
        let ask = PlanRequest {
            request: route::routing_fields(&chat.body),
            ..ask
        };
        (ask, chat)
    };
    let route_from = crate::trace::mark(ctx.started);
    let planned = deps::plan(&ask);
    ctx.trace.borrow_mut().route = Some((route_from, crate::trace::mark(ctx.started)));
    if let (true, Some(body)) = (virtual_model, ask.request) {
        chat.body = body;
    }
    let mut plan = match planned {
        Ok(p) => p,
        Err(e) => {
            if e.status == 403 {
                refund(ctx, kv, &caller);
            }
            return Err(e);
        }
    };
    // The tenant's record as the router read it (it goes no further than the budget hold).
    let read_with_plan = plan.read_also.take().and_then(|mut v| v.pop());
    // Model-string parameters become defaults; routing fields never go upstream.
    route::apply_defaults(&mut chat.body, &plan.defaults);
    route::strip_routing_fields(&mut chat.body);
    ctx.route = plan.route.as_ref().map(route::RouteExplain::header);
    let first = plan
        .candidates
        .first()
        .ok_or_else(|| ApiError::internal("the router returned a plan without candidates"))?;
    ctx.model = first.model.clone();
    ctx.provider = first.provider.name.clone();
    // Windows are taken once the request is known to be servable (a 400/403/404 from the
    // router takes none).
    let mut taken = limits::take_windows(kv, key, key_plan.as_ref(), reserve, now_ms())
        .map_err(|r| refused(ctx, *r))?;
    if let Some(t) = taken.iter().find(|t| t.kind == Kind::KeyTpm) {
        ctx.set_token_rate(&t.status);
    }
    let more = limits::take_model_windows(
        kv,
        key,
        key_plan.as_ref(),
        &ctx.model,
        reserve,
        now_ms(),
        &taken,
    )
    .map_err(|r| refused(ctx, *r))?;
    taken.extend(more);
    if chat_completion {
        // A hit is served without a model, a budget hold or a shadow (`chat::handle`).
        let hit = if early {
            None
        } else {
            let model = crate::cache::model_key(&plan);
            crate::cache::admit(
                ctx,
                kv,
                info,
                key,
                key_plan.as_ref(),
                &cache_ask,
                &chat,
                &model,
            )
        };
        if let Some(e) = hit {
            return Ok(admit_hit(
                ctx,
                e,
                caller.key,
                chat,
                plan,
                held_output,
                taken,
            ));
        }
        if let Some(s) = plan.shadow.clone() {
            let zero_retention =
                key.zero_retention || key_plan.as_ref().is_some_and(|p| p.zero_retention);
            ctx.after.borrow_mut().shadow = Some(crate::shadow::Job {
                retain: s.retain_answers && !zero_retention,
                plan: s,
                body: chat.body.clone(),
                stream: chat.stream,
                tokens: (prompt_estimate, held_output.0),
            });
        }
    }
    // The hold comes after planning: only the plan knows which prices can apply (for fusion,
    // every panel member and the synthesizer).
    let tenant_id = key.tenant_id().to_string();
    let tenant = limits::tenant_budget(kv, &tenant_id, key_plan.as_ref(), read_with_plan)?;
    let nanos = lumen_shared::domain::fusion::max_cost_nanos(&plan, prompt_estimate, held_output.0);
    let hold = match ledger::hold(kv, &tenant_id, &tenant, now_ms(), nanos) {
        Ok(h) => h,
        Err(e) => {
            limits::reconcile(&taken, 0);
            return Err(e);
        }
    };
    Ok(Admitted {
        key: caller.key,
        chat,
        plan,
        hold,
        tenant,
        held_output,
        taken,
    })
}

/// A cache hit admitted: it is served without a model, a budget hold or a shadow
/// ([`handle`] finds the entry in `ctx.after`).
fn admit_hit(
    ctx: &mut Ctx,
    entry: lumen_shared::domain::cache::CacheEntry,
    key: ApiKeyRecord,
    chat: ChatRequest,
    plan: Plan,
    held_output: (u64, bool),
    taken: Vec<Taken>,
) -> Admitted {
    ctx.after.borrow_mut().hit = Some(Box::new(entry));
    Admitted {
        key,
        chat,
        plan,
        hold: None,
        tenant: TenantRecord::default(),
        held_output,
        taken,
    }
}

/// Handles the route: refusals before a plan are answered here and never settled; admitted
/// requests go to the provider and are settled exactly once.
pub async fn handle(mut ctx: Ctx, info: ReqInfo, req: IncomingRequest, out: ResponseOutparam) {
    match admit(&mut ctx, &info, req).await {
        Ok(admitted) => {
            let hit = ctx.after.borrow_mut().hit.take();
            match hit {
                Some(e) => crate::cache::serve_hit(ctx, admitted, *e, out).await,
                None => relay::run(ctx, admitted, out).await,
            }
        }
        Err(e) => respond(out, ctx.stamp(Reply::error(&e))).await,
    }
}

/// `POST /v1/messages`: an Anthropic Messages request, translated to a chat request and served by
/// whatever backend the plan picks; the answer goes back in Anthropic's shape.
pub async fn handle_messages(
    mut ctx: Ctx,
    info: ReqInfo,
    req: IncomingRequest,
    out: ResponseOutparam,
) {
    let admitted = async {
        let kv = SpinKv::open_or_503()?;
        let caller = gate(&mut ctx, &kv, &info)?;
        let body = read_body(req, &info).await?;
        let msg = openai::parse_json_object(&body)?;
        let chat_body = lumen_shared::wire::dialect::messages::request(&msg)?;
        let chat = openai::parse_chat_request(&serde_json::to_vec(&chat_body).unwrap_or_default())?;
        admit_chat(&mut ctx, &kv, &info, caller, chat).await
    }
    .await;
    match admitted {
        Ok(admitted) => relay::run_shaped(ctx, admitted, out, Shape::Anthropic).await,
        Err(e) => respond(out, ctx.stamp(shaped(Reply::error(&e), Shape::Anthropic))).await,
    }
}

/// `POST /v1/embeddings`: validated, admitted and planned like a chat request, then sent to the
/// provider's embeddings endpoint.
pub async fn handle_embeddings(
    mut ctx: Ctx,
    info: ReqInfo,
    req: IncomingRequest,
    out: ResponseOutparam,
) {
    let admitted = async {
        let kv = SpinKv::open_or_503()?;
        let caller = gate(&mut ctx, &kv, &info)?;
        let body = read_body(req, &info).await?;
        let chat = lumen_shared::wire::embeddings::parse_embeddings_request(&body)?;
        admit_chat(&mut ctx, &kv, &info, caller, chat).await
    }
    .await;
    match admitted {
        Ok(admitted) => relay::run_shaped(ctx, admitted, out, Shape::Embeddings).await,
        Err(e) => respond(out, ctx.stamp(Reply::error(&e))).await,
    }
}
