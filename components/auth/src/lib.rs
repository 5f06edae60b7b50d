//! The auth component, Lumen's only public component: validates requests, authenticates API keys,
//! applies rate limits, serves the admin API, and drives router → provider → meter for chat
//! completions. Every response carries `x-request-id`, `x-lumen-model`, `x-lumen-provider` and
//! `x-lumen-overhead-ms`; internal `lumen-*` headers never reach clients.

mod account;
mod admin;
mod chat;
mod ctx;
mod explain;
mod relay;
mod routes;

use ctx::{Ctx, ReqInfo};
use lumen_spin::http::respond;
use lumen_spin::Reply;
use routes::{match_route, Route};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;

async fn route(req: IncomingRequest, out: ResponseOutparam) {
    let ctx = Ctx::new();
    let info = ReqInfo::read(&req);
    let reply = match match_route(&info.method, &info.path) {
        Ok(Route::Chat) => return chat::handle(ctx, info, req, out).await,
        Ok(Route::Models) => account::models(&info).await,
        Ok(Route::Usage) => account::usage(&info).await,
        Ok(Route::Plan) => explain::route(&info, req).await,
        Ok(Route::CreateKey) => admin::create(&info, req).await,
        Ok(Route::ListKeys) => admin::list(&info),
        Ok(Route::DeleteKey(id)) => admin::delete(&info, &id),
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
