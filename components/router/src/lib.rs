//! The router component: resolves a requested model against `config/catalog.toml` into an ordered
//! plan (`POST /plan`) and lists the catalog's models (`GET /models`). Private to the app.

use lumen_shared::catalog::Catalog;
use lumen_shared::contracts::{Plan, PlanRequest};
use lumen_shared::fallback;
use lumen_shared::health::{self, Availability};
use lumen_shared::ApiError;
use lumen_spin::http::{read_request_body, respond};
use lumen_spin::util::{dispatch, now_ms, split_path};
use lumen_spin::{Reply, SpinKv};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;
use std::sync::OnceLock;

/// Where spin.toml mounts the catalog.
const CATALOG_PATH: &str = "/config/catalog.toml";
/// How the catalog is named in messages.
const CATALOG_NAME: &str = "config/catalog.toml";
/// Plan requests are tiny; anything larger is a bug in the caller.
const MAX_BODY: usize = 64 * 1024;

/// The catalog, read and checked once per instance.
fn catalog() -> Result<&'static Catalog, ApiError> {
    static CATALOG: OnceLock<Result<Catalog, String>> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            let text = std::fs::read_to_string(CATALOG_PATH)
                .map_err(|e| format!("could not read {CATALOG_NAME}: {e}"))?;
            // Parsed TOML is cached in KV by content hash: a fresh instance per request would
            // otherwise pay the TOML parse on every plan.
            match SpinKv::open() {
                Ok(kv) => Catalog::from_toml_cached(&text, CATALOG_NAME, &kv),
                Err(_) => Catalog::from_toml(&text, CATALOG_NAME),
            }
        })
        .as_ref()
        .map_err(|e| ApiError::internal(format!("the model catalog is invalid: {e}")))
}

async fn plan(req: IncomingRequest) -> Result<Reply, ApiError> {
    let body = read_request_body(req, MAX_BODY).await?;
    let ask: PlanRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!("invalid plan request: {e}"), None, "invalid_json")
    })?;
    let cat = catalog()?;
    let mut plan = cat.plan(&ask.model, &ask.allowed_models)?;
    fallback::merge(cat, &mut plan, &ask.models, &ask.allowed_models)?;
    order_by_health(&mut plan);
    Ok(Reply::json(200, &plan))
}

/// Moves candidates that health says are down behind the healthy ones
/// ([`lumen_shared::fallback::order`]); claims a due half-open probe. Without KV, the catalog
/// order stands.
fn order_by_health(plan: &mut Plan) {
    let Ok(kv) = SpinKv::open() else {
        return;
    };
    let policy = health::Policy::default();
    let now = now_ms();
    let avail: Vec<Availability> = plan
        .candidates
        .iter()
        .map(|c| {
            health::check(&kv, &policy, &c.provider.name, &c.model, now).unwrap_or(Availability::Up)
        })
        .collect();
    let moved = fallback::order(&mut plan.candidates, &avail);
    if !moved.is_empty() {
        plan.reason = format!(
            "{}; unhealthy, tried last: {}",
            plan.reason,
            moved.join(", ")
        );
    }
}

async fn route(req: IncomingRequest) -> Result<Reply, ApiError> {
    let method = req.method();
    let target = req.path_with_query().unwrap_or_default();
    let (path, _) = split_path(&target);
    #[derive(Clone, Copy)]
    enum Op {
        Plan,
        Models,
    }
    let table = [("/plan", "POST", Op::Plan), ("/models", "GET", Op::Models)];
    match dispatch(&method.to_string(), path, &table)? {
        Op::Plan => plan(req).await,
        Op::Models => Ok(Reply::json(200, &catalog()?.models_list(now_ms() / 1000))),
    }
}

/// The export: the code `#[http_component]` generates is the only unsafe code in the component.
#[allow(unsafe_code)]
mod entry {
    use super::*;

    #[http_component]
    async fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let reply = route(req).await.unwrap_or_else(Reply::from);
        respond(out, reply).await;
    }
}
