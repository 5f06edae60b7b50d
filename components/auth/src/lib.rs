//! The auth component, Lumen's only public component: validates requests, authenticates API keys,
//! applies rate limits, serves the admin API, and drives router → provider → meter for chat
//! completions. Every response carries `x-request-id`, `x-lumen-model`, `x-lumen-provider` and
//! `x-lumen-overhead-ms`; internal `lumen-*` headers never reach clients.

mod account;
mod admin;
mod after;
mod byok;
mod cache;
mod chat;
mod ctx;
mod deps;
mod explain;
mod feedback;
mod health;
mod limits;
mod ops;
mod relay;
mod routes;
mod saved;
mod shadow;
mod trace;

use ctx::{Ctx, ReqInfo};
use lumen_spin::http::respond;
use lumen_spin::Reply;
use routes::{match_route, Route};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;
use std::cell::RefCell;
use std::rc::Rc;

async fn route(req: IncomingRequest, out: ResponseOutparam) {
    let mut ctx = Ctx::new();
    let info = ReqInfo::read(&req);
    let route = match_route(&info.method, &info.path);
    // Probes and scrapes are not traced.
    let reply = match route {
        Ok(Route::Healthz) => Ok(ops::healthz()),
        Ok(Route::Readyz) => ops::readyz(),
        Ok(Route::Metrics) => ops::metrics(&info),
        route => {
            let trace = Rc::new(RefCell::new(trace::Trace::begin(&info, &ctx.request_id)));
            ctx.trace = trace.clone();
            let (started_ms, started) = (ctx.started_ms, ctx.started);
            serve(ctx, info, route, req, out).await;
            // After the response is finished: never delays the client.
            trace::export(&trace, started_ms, started).await;
            return;
        }
    };
    respond(out, ctx.stamp(reply.unwrap_or_else(Reply::from))).await;
}

async fn serve(
    mut ctx: Ctx,
    info: ReqInfo,
    route: Result<Route, lumen_shared::ApiError>,
    req: IncomingRequest,
    out: ResponseOutparam,
) {
    let reply = match route {
        Ok(Route::Chat) => return chat::handle(ctx, info, req, out).await,
        Ok(Route::Messages) => return chat::handle_messages(ctx, info, req, out).await,
        Ok(Route::Embeddings) => return chat::handle_embeddings(ctx, info, req, out).await,
        Ok(Route::Models) => account::models(&info).await,
        Ok(Route::Model(id)) => account::model(&info, &id).await,
        Ok(Route::Usage) => account::usage(&info).await,
        Ok(Route::Plan) => explain::route(&mut ctx, &info, req).await,
        Ok(Route::Feedback) => feedback::give(&info, req).await,
        Ok(Route::AdminFeedback) => feedback::export(&info),
        Ok(Route::CreateKey) => admin::create(&info, req).await,
        Ok(Route::ListKeys) => admin::list(&info),
        Ok(Route::DeleteKey(id)) => admin::delete(&info, &id),
        Ok(Route::UpdateKey(id)) => admin::update(&info, &id, req).await,
        Ok(Route::RotateKey(id)) => admin::rotate(&info, &id),
        Ok(Route::UsageRecords) => account::usage_records(&info).await,
        Ok(Route::AdminUsage) => admin::usage(&info).await,
        Ok(Route::AdminUsageRecords) => admin::usage_records(&info).await,
        Ok(Route::GetTenant(t)) => admin::get_tenant(&info, &t),
        Ok(Route::PutTenant(t)) => admin::put_tenant(&info, &t, req).await,
        Ok(Route::GrantCredits(t)) => admin::grant(&info, &t, req).await,
        Ok(Route::AuditHead) => admin::audit_head(&info),
        Ok(Route::AdminHealth) => health::admin_health(&info),
        Ok(Route::AuditVerify) => admin::audit_verify(&info),
        Ok(Route::AdminShadow(name)) => shadow::admin_report(&info, &name),
        Ok(Route::ListProviderKeys(id)) => byok::list(&info, &id),
        Ok(Route::PutProviderKey(id, p)) => byok::put(&info, req, &id, &p).await,
        Ok(Route::DeleteProviderKey(id, p)) => byok::delete(&info, &id, &p),
        Ok(Route::Healthz) => Ok(ops::healthz()),
        Ok(Route::Readyz) => ops::readyz(),
        Ok(Route::Metrics) => ops::metrics(&info),
        Err(e) => Err(e),
    };
    respond(out, ctx.stamp(reply.unwrap_or_else(Reply::from))).await;
}

/// The export: the code `#[http_component]` generates is the only unsafe code in the component.
#[allow(unsafe_code)]
mod entry {
    use super::*;

    #[http_component]
    async fn handle(req: IncomingRequest, out: ResponseOutparam) {
        route(req, out).await;
    }
}
