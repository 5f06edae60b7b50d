//! `POST /v1/chat/completions` up to the plan: validate the body, authenticate the key, count it
//! against its rate limit, then ask the router for a plan. Nothing unauthenticated gets further.

use crate::account::authenticate;
use crate::ctx::{read_body, Ctx, ReqInfo};
use crate::relay;
use lumen_shared::contracts::{routes, Plan, PlanRequest};
use lumen_shared::kv::ApiKeyRecord;
use lumen_shared::openai::{self, ChatRequest};
use lumen_shared::ratelimit::{check_rpm, RateStatus};
use lumen_shared::route;
use lumen_shared::ApiError;
use lumen_spin::http::{post_json, respond};
use lumen_spin::util::now_ms;
use lumen_spin::{Reply, SpinKv};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

/// A request that was admitted and planned.
pub struct Admitted {
    /// The caller's key.
    pub key: ApiKeyRecord,
    /// The validated request.
    pub chat: ChatRequest,
    /// The router's plan (never empty).
    pub plan: Plan,
}

async fn admit(ctx: &mut Ctx, info: &ReqInfo, req: IncomingRequest) -> Result<Admitted, ApiError> {
    let body = read_body(req, info).await?;
    let chat = openai::parse_chat_request(&body)?;
    drop(body);
    let kv = SpinKv::open_or_503()?;
    let key = authenticate(&kv, info)?;
    match check_rpm(&kv, &key.id, key.rpm_limit, now_ms()) {
        Ok(status) => ctx.set_rate(&status),
        Err(e) => {
            if e.status == 429 {
                ctx.set_rate(&RateStatus {
                    limit: key.rpm_limit,
                    remaining: 0,
                    reset_secs: e.retry_after.unwrap_or(1),
                });
            }
            return Err(e);
        }
    }
    let ask = PlanRequest {
        model: chat.model.clone(),
        allowed_models: key.allowed_models.clone(),
        request: None,
    };
    // Only virtual models are planned from the body; a pinned model's body stays here.
    let (ask, mut chat) = if route::needs_body(&chat.model) {
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
        (ask, chat)
    };
    let plan: Plan = post_json("router", routes::PLAN, &ask).await?;
    if let Some(body) = ask.request {
        chat.body = body;
    }
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
    Ok(Admitted { key, chat, plan })
}

/// Handles the route: refusals before a plan are answered here and never settled; admitted
/// requests go to the provider and are settled exactly once.
pub async fn handle(mut ctx: Ctx, info: ReqInfo, req: IncomingRequest, out: ResponseOutparam) {
    match admit(&mut ctx, &info, req).await {
        Ok(admitted) => relay::run(ctx, admitted, out).await,
        Err(e) => respond(out, ctx.stamp(Reply::error(&e))).await,
    }
}
