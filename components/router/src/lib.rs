//! The router component: resolves a requested model against `config/catalog.toml` into an ordered
//! plan, scores requests for the tiers with the difficulty scorer (`config/router-weights.bin`),
//! plans a batch without calling any model (`/v1/route`) and lists the catalog's models. It
//! exports `lumen:gateway/planner` (`components/wit/lumen.wit`) and is composed into auth at
//! build time.

use lumen_shared::contracts::{Candidate, Plan, PlanRequest};
use lumen_shared::domain::catalog::{file_stamp, Catalog, FileStamp};
use lumen_shared::domain::fallback;
use lumen_shared::domain::health::{Availability, Policy};
use lumen_shared::domain::route::{self, decide, keep_providers, Inputs, Prefs};
use lumen_shared::domain::saved;
use lumen_shared::domain::scorer::Packed;
use lumen_shared::domain::shadow;
use lumen_shared::store::{health, Target};
use lumen_shared::ApiError;
use lumen_spin::util::{now_ms, to_wire as wire};
use lumen_spin::SpinKv;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::OnceLock;

/// Where spin.toml mounts the catalog.
const CATALOG_PATH: &str = "/config/catalog.toml";
/// How the catalog is named in messages.
const CATALOG_NAME: &str = "config/catalog.toml";
/// Where spin.toml mounts the scorer's weights.
const WEIGHTS_PATH: &str = "/config/router-weights.bin";

/// The catalog this router was built with (see build.rs): its source and the checked result.
const BAKED_TOML: &str = include_str!(concat!(env!("OUT_DIR"), "/catalog.toml"));
const BAKED_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/catalog.json"));
/// The size and modification time (seconds, nanoseconds) the file had when it was baked.
const BAKED_STAMP: Option<FileStamp> = include!(concat!(env!("OUT_DIR"), "/catalog.stamp"));

/// The catalog, once per instance: the mounted file, decoded from the baked, checked form when
/// it is the file the router was built with, parsed and checked otherwise. A mount with the
/// baked file's size and modification time is that file (one metadata call instead of opening,
/// reading and comparing 10 KB: five WASI calls); any other mount is read and compared byte for
/// byte, so an edit (which moves the time), a copy or a deployment that does not keep the time
/// only costs the read.
fn catalog() -> Result<&'static Catalog, ApiError> {
    static CATALOG: OnceLock<Result<&'static Catalog, String>> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            let built = BAKED_STAMP.is_some() && file_stamp(Path::new(CATALOG_PATH)) == BAKED_STAMP;
            if let Some(c) = built.then(baked).flatten() {
                return Ok(c);
            }
            let bytes = std::fs::read(CATALOG_PATH)
                .map_err(|e| format!("could not read {CATALOG_NAME}: {e}"))?;
            if let Some(c) = same_bytes(&bytes, BAKED_TOML.as_bytes())
                .then(baked)
                .flatten()
            {
                return Ok(c);
            }
            let text = String::from_utf8(bytes)
                .map_err(|e| format!("{CATALOG_NAME} is not UTF-8: {e}"))?;
            // Kept for the instance's life, like the baked one.
            Catalog::from_toml(&text, CATALOG_NAME).map(|c| &*Box::leak(Box::new(c)))
        })
        .clone()
        .map_err(|e| ApiError::internal(format!("the model catalog is invalid: {e}")))
}

/// The catalog this router was built with, decoded once: at build time, when `lumen-compose`
/// pre-initializes the router (`wizer-initialize`), so an instance starts with it in memory.
fn baked() -> Option<&'static Catalog> {
    static BAKED: OnceLock<Option<Catalog>> = OnceLock::new();
    BAKED
        .get_or_init(|| serde_json::from_str(BAKED_JSON).ok())
        .as_ref()
}

/// Whether `a` and `b` are equal, eight bytes at a time: slice equality is wasi-libc's
/// byte-by-byte `memcmp` in wasm, ~0.8 % of lumen-host's samples for the 10 KB catalog
/// compared on every request (and the file is no longer checked as UTF-8 when it is the
/// baked one).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, ta) = a.split_at(a.len() / 8 * 8);
    let (wb, tb) = b.split_at(wa.len());
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    wa.chunks_exact(8)
        .zip(wb.chunks_exact(8))
        .all(|(x, y)| word(x) == word(y))
        && ta == tb
}

/// The scorer's weights, read once per instance that routes a tier (a 64 KiB file, used in
/// place: see [`Packed`]).
fn weights() -> Option<&'static Packed> {
    static WEIGHTS: OnceLock<Option<Packed>> = OnceLock::new();
    WEIGHTS
        .get_or_init(|| match std::fs::read(WEIGHTS_PATH) {
            Ok(b) => Packed::from_bytes(b)
                .map_err(|e| eprintln!("lumen router: config/router-weights.bin: {e}"))
                .ok(),
            Err(e) => {
                eprintln!("lumen router: could not read config/router-weights.bin: {e}");
                None
            }
        })
        .as_ref()
}

/// Microseconds on the monotonic clock.
fn now_us() -> f64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1e6
}

/// A random number for splits without a sticky key.
fn roll() -> u64 {
    let mut b = [0u8; 8];
    let _ = lumen_spin::util::fill_random(&mut b);
    u64::from_le_bytes(b)
}

/// Plans one request. Observed latencies are read from KV only when the request sets a latency SLO.
fn plan_one(
    cat: &Catalog,
    kv: Option<&SpinKv>,
    model: &str,
    allowed: &[String],
    body: Option<&Map<String, Value>>,
) -> Result<lumen_shared::contracts::Plan, ApiError> {
    let latency = |provider: &str, model: &str| {
        health::record(kv?, Target { provider, model })
            .ok()
            .flatten()
            .and_then(|r| r.ttft_ms)
    };
    decide(
        cat,
        &Inputs {
            model,
            allowed,
            body,
            weights: &|| weights(),
            latency: &latency,
            now_us: &now_us,
            roll: roll(),
        },
    )
}

fn wants_latency(body: Option<&Map<String, Value>>) -> bool {
    body.is_some_and(|b| b.get("max_latency_ms").is_some_and(|v| !v.is_null()))
}

fn plan(body: &[u8]) -> Result<Plan, ApiError> {
    let ask: PlanRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!("invalid plan request: {e}"), None, "invalid_json")
    })?;
    let kv = if wants_latency(ask.request.as_ref()) {
        SpinKv::open().ok()
    } else {
        None
    };
    let cat = catalog()?;
    let mut plan = plan_one(
        cat,
        kv.as_ref(),
        &ask.model,
        &ask.allowed_models,
        ask.request.as_ref(),
    )?;
    plan.reference = saved::resolve(cat, ask.reference.as_ref(), plan.reference.take())?;
    // Fallbacks (the request's `models`, else the catalog's) after the decision, unless the
    // request said `provider.allow_fallbacks: false`; then health.
    let no_fallbacks = ask
        .request
        .as_ref()
        .and_then(|b| b.get("provider"))
        .and_then(|p| p.get("allow_fallbacks"))
        .and_then(Value::as_bool)
        == Some(false);
    if !no_fallbacks {
        fallback::merge(cat, &mut plan, &ask.models, &ask.allowed_models)?;
    }
    // `provider.only` / `ignore` hold for the fallback models' candidates too (the decision
    // already applied them to the first).
    if let Some(body) = ask.request.as_ref() {
        let prefs = Prefs::from_body(body)?;
        let mut rest = plan.candidates.split_off(1.min(plan.candidates.len()));
        keep_providers(&mut rest, &prefs.provider);
        plan.candidates.extend(rest);
    }
    // A shadow experiment (the key's plan's, then the catalog's) rolls its share here.
    if let Some((name, cfg)) = &ask.shadow {
        cfg.check(&format!("plans.{name}.shadow"), cat, false)
            .map_err(|e| ApiError::internal(format!("config/plans.toml: {e}")))?;
    }
    let requested = route::parse_model(&ask.model, cat)
        .map(|s| s.name)
        .unwrap_or_default();
    let plan_shadow = ask.shadow.as_ref().map(|(p, c)| (p.as_str(), c));
    plan.shadow = shadow::select(cat, &requested, &plan, plan_shadow, roll());
    order_by_health(&mut plan);
    Ok(plan)
}

/// `POST /route`: `{"allowed_models": [...], "requests": [body, ...], "explain": bool}` →
/// `{"object":"list","data":[plan or {"error":...}, ...]}`; each plan lists the considered
/// candidates only with `explain: true`.
fn route_batch(body: &[u8]) -> Result<Value, ApiError> {
    #[derive(serde::Deserialize)]
    struct Batch {
        #[serde(default)]
        allowed_models: Vec<String>,
        requests: Vec<Value>,
        #[serde(default)]
        explain: bool,
    }
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!("invalid route request: {e}"), None, "invalid_json")
    })?;
    let cat = catalog()?;
    let kv = SpinKv::open().ok();
    let mut out = Vec::with_capacity(batch.requests.len());
    for (i, r) in batch.requests.iter().enumerate() {
        let planned = match r.as_object() {
            None => Err(ApiError::invalid_request(
                format!("requests[{i}] must be an object"),
                Some(&format!("requests[{i}]")),
                "invalid_type",
            )),
            Some(o) => match o.get("model").and_then(Value::as_str) {
                None => Err(ApiError::invalid_request(
                    format!("missing required parameter: 'requests[{i}].model'"),
                    Some(&format!("requests[{i}].model")),
                    "missing_required_parameter",
                )),
                Some(model) => {
                    let kv = if wants_latency(Some(o)) {
                        kv.as_ref()
                    } else {
                        None
                    };
                    saved::ask(o, None, None).and_then(|asked| {
                        let mut p = plan_one(cat, kv, model, &batch.allowed_models, Some(o))?;
                        p.reference = saved::resolve(cat, asked.as_ref(), p.reference.take())?;
                        Ok(p)
                    })
                }
            },
        };
        out.push(match planned {
            Ok(mut p) => {
                if !batch.explain {
                    if let Some(r) = p.route.as_mut() {
                        r.candidates.clear();
                    }
                }
                serde_json::to_value(&p).unwrap_or(Value::Null)
            }
            Err(e) => serde_json::json!({"error": {
                "message": e.message, "type": e.kind, "param": e.param, "code": e.code}}),
        });
    }
    Ok(serde_json::json!({"object": "list", "data": out}))
}

/// Reads the health of every candidate in one batch, claims a due half-open probe (one
/// increment, only while a breaker is open), moves candidates that are down behind the healthy
/// ones ([`lumen_shared::domain::fallback::order`]) and hands each its snapshot, against which
/// the provider records what its call showed. Without KV, the catalog order stands.
fn order_by_health(plan: &mut Plan) {
    let Ok(kv) = SpinKv::open() else {
        return;
    };
    let policy = Policy::default();
    let now = now_ms();
    // Fusion panel members and a shadow candidate get their snapshots in the same batch.
    let mut extra: Vec<&mut Candidate> = Vec::new();
    if let Some(f) = plan.fusion.as_mut() {
        extra.extend(f.panel.iter_mut().flat_map(|m| m.candidates.iter_mut()));
    }
    if let Some(s) = plan.shadow.as_mut() {
        extra.extend(s.candidates.iter_mut());
    }
    let target = |c: &Candidate| (c.provider.name.clone(), c.model.clone());
    let extra_targets: Vec<(String, String)> = extra.iter().map(|c| target(c)).collect();
    let main_targets: Vec<(String, String)> = plan.candidates.iter().map(target).collect();
    let all: Vec<Target> = main_targets
        .iter()
        .chain(&extra_targets)
        .map(|(provider, model)| Target { provider, model })
        .collect();
    let Ok(mut snaps) = health::snapshots(&kv, &policy, &all, now) else {
        return;
    };
    for (c, s) in extra.into_iter().zip(snaps.split_off(main_targets.len())) {
        c.health = Some(s);
    }
    let targets: Vec<Target> = all[..main_targets.len()].to_vec();
    let avail: Vec<Availability> = targets
        .iter()
        .zip(&snaps)
        .map(|(&t, s)| health::availability(&kv, &policy, t, s, now).unwrap_or(Availability::Up))
        .collect();
    for (c, s) in plan.candidates.iter_mut().zip(snaps) {
        c.health = Some(s);
    }
    let moved = fallback::order(&mut plan.candidates, &avail);
    if !moved.is_empty() {
        plan.reason = format!(
            "{}; unhealthy, tried last: {}",
            plan.reason,
            moved.join(", ")
        );
    }
}

/// The export glue `wit_bindgen::generate!` writes is the only unsafe code in the component.
#[expect(
    unsafe_code,
    reason = "the component-model export glue generated by wit-bindgen"
)]
mod bindings {
    wit_bindgen::generate!({
        world: "router",
        path: "../wit",
    });
    use super::Router;
    export!(Router);
}

struct Router;

impl bindings::Guest for Router {
    fn wizer_initialize() {
        let _ = baked();
    }
}

impl bindings::exports::lumen::gateway::planner::Guest for Router {
    fn plan(request: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
        wire(plan(&request))
    }

    fn route(batch: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
        wire(route_batch(&batch))
    }

    fn models() -> Result<Vec<u8>, Vec<u8>> {
        wire(catalog().map(|c| c.models_list(now_ms() / 1000)))
    }
}
