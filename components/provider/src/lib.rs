//! The provider component: calls upstream providers in their dialect (`POST /call`) with the
//! plan's candidates in order, and streams the answer back to auth. Private to the app.

mod call;
mod cascade;
mod failover;
mod queue;
mod spin_llm;
mod timer;
mod upstream;

use lumen_shared::ApiError;
use lumen_spin::http::respond;
use lumen_spin::util::split_path;
use lumen_spin::Reply;
use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;

async fn route(req: IncomingRequest, out: ResponseOutparam) {
    let method = req.method();
    let target = req.path_with_query().unwrap_or_default();
    let (path, _) = split_path(&target);
    let err = match (path, &method) {
        ("/call", Method::Post) => return call::call(req, out).await,
        ("/call", _) => ApiError::method_not_allowed(&method.to_string(), path, "POST"),
        _ => ApiError::not_found(
            format!("unknown route {method} {path}"),
            None,
            "unknown_route",
        ),
    };
    respond(out, Reply::error(&err)).await;
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
