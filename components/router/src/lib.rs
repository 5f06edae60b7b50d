//! The router component: resolves a requested model against `config/catalog.toml` into an ordered
//! plan, scores requests for the tiers with the difficulty scorer (`config/router-weights.bin`),
//! plans a batch without calling any model (`/v1/route`) and lists the catalog's models. It
//! exports `lumen:gateway/planner` (`components/wit/lumen.wit`) and is composed into auth at
//! build time.

use lumen_shared::contracts::{Candidate, Plan, PlanRequest};
use lumen_shared::domain::catalog::{Catalog, FileStamp};
use lumen_shared::domain::fallback;
use lumen_shared::domain::health::{Availability, Policy, Snapshot};
use lumen_shared::domain::route::{self, decide, keep_providers, Inputs, Prefs};
use lumen_shared::domain::saved;
use lumen_shared::domain::scorer::Packed;
use lumen_shared::domain::shadow;
use lumen_shared::store::{self as kv, health, CatalogMount, Family, Target};
use lumen_shared::ApiError;
use lumen_spin::util::{now_ms, to_wire as wire};
use lumen_spin::SpinKv;
use serde_json::{Map, Value};
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

/// The built catalog source's sha256 (hex): what a router records for a mounted copy it found
/// to hold that source ([`CatalogMount`]).
const BAKED_SHA256: &str = include_str!(concat!(env!("OUT_DIR"), "/catalog.sha256"));

/// The catalog this instance uses, once known.
static CATALOG: OnceLock<Result<&'static Catalog, String>> = OnceLock::new();

fn invalid_catalog(e: String) -> ApiError {
    ApiError::internal(format!("the model catalog is invalid: {e}"))
}

/// The catalog, once per instance: the mounted file, decoded from the baked, checked form when
/// it is the file the router was built with, parsed and checked otherwise. A mount with the
/// baked file's size and modification time is that file (one `stat-at` instead of opening,
/// reading and comparing 10 KB: five WASI calls); any other mount is read and compared byte for
/// byte, so an edit (which moves the time), a copy or a deployment that does not keep the time
/// only costs the read. Planning a chat avoids even the read on a copy: see [`plan`].
fn catalog() -> Result<&'static Catalog, ApiError> {
    catalog_at(lumen_spin::mount::stamp(CATALOG_PATH))
}

/// [`catalog`] for a mount whose metadata was already read: `stamp`.
fn catalog_at(stamp: Option<FileStamp>) -> Result<&'static Catalog, ApiError> {
    CATALOG
        .get_or_init(|| load_catalog(stamp))
        .clone()
        .map_err(invalid_catalog)
}

/// The catalog of the mount whose metadata is `stamp` (see [`catalog`]).
fn load_catalog(stamp: Option<FileStamp>) -> Result<&'static Catalog, String> {
    let built = BAKED_STAMP.is_some() && stamp == BAKED_STAMP;
    if let Some(c) = built.then(baked).flatten() {
        return Ok(c);
    }
    let bytes =
        std::fs::read(CATALOG_PATH).map_err(|e| format!("could not read {CATALOG_NAME}: {e}"))?;
    if let Some(c) = same_bytes(&bytes, BAKED_TOML.as_bytes())
        .then(baked)
        .flatten()
    {
        return Ok(c);
    }
    let text = String::from_utf8(bytes).map_err(|e| format!("{CATALOG_NAME} is not UTF-8: {e}"))?;
    // Kept for the instance's life, like the baked one.
    Catalog::from_toml(&text, CATALOG_NAME).map(|c| &*Box::leak(Box::new(c)))
}

/// The catalog a plan starts from.
enum Start {
    /// Known: the mount is the built file (its metadata says so) or was read.
    Known(&'static Catalog),
    /// The built catalog, taken on trust for a mount with other metadata (Spin mounts a copy,
    /// with new times) until the store confirms that a router found this mount to hold it.
    Guess(&'static Catalog, FileStamp),
}

/// The catalog for planning a chat: [`catalog`], except that a mount that may be a copy of the
/// built file is not read yet (see [`plan`]).
fn catalog_for_plan() -> Result<Start, ApiError> {
    if let Some(known) = CATALOG.get() {
        return known.clone().map(Start::Known).map_err(invalid_catalog);
    }
    let stamp = lumen_spin::mount::stamp(CATALOG_PATH);
    match (stamp, baked()) {
        (Some(s), Some(b)) if stamp != BAKED_STAMP => Ok(Start::Guess(b, s)),
        _ => catalog_at(stamp).map(Start::Known),
    }
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

/// Plans a chat. Where the mounted catalog may be a copy of the built one (its metadata differs:
/// Spin mounts copies), the plan is made on the built catalog and the store is asked, in the
/// same batch as the candidates' health, whether a router found this mount (by its size and
/// modification time) to hold the built source; only when it does not know is the file read and
/// compared, and what it holds recorded. A mount that holds something else is planned again on
/// what it holds, and health is applied only to the plan that stands (a half-open probe is
/// claimed once).
fn plan(body: &[u8]) -> Result<Plan, ApiError> {
    let ask: PlanRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!("invalid plan request: {e}"), None, "invalid_json")
    })?;
    let kv = SpinKv::open().ok();
    let start = catalog_for_plan()?;
    let (&Start::Guess(baked, stamp), Some(kv)) = (&start, kv.as_ref()) else {
        // A known catalog; or a guess without a store to confirm it with: the file decides.
        let cat = match start {
            Start::Known(cat) => cat,
            Start::Guess(_, stamp) => catalog_at(Some(stamp))?,
        };
        return plan_on(cat, &ask, kv.as_ref());
    };
    let marker = CatalogMount(stamp);
    let mut plan = match plan_core(baked, &ask, Some(kv)) {
        Ok(p) => p,
        // A model the built catalog lacks may be in the mount: the file decides.
        Err(e) => {
            return match confirm_by_reading(kv, &marker, baked)? {
                Some(cat) => plan_on(cat, &ask, Some(kv)),
                None => Err(e),
            }
        }
    };
    // The marker, then the keys the caller asked to have read.
    let mut extra = Vec::with_capacity(1 + ask.read_also.len());
    extra.push(marker.key());
    extra.extend(ask.read_also.iter().cloned());
    let read = read_health(kv, &plan, &extra);
    let confirmed = read
        .as_ref()
        .and_then(|(_, values)| values.first().cloned().flatten())
        .and_then(|b| kv::decode::<String>(&extra[0], &b).ok())
        .is_some_and(|sha| sha == BAKED_SHA256);
    if confirmed {
        let _ = CATALOG.set(Ok(baked));
    } else if let Some(cat) = confirm_by_reading(kv, &marker, baked)? {
        return plan_on(cat, &ask, Some(kv));
    }
    if let Some((snaps, mut values)) = read {
        apply_health(kv, &mut plan, snaps);
        plan.read_also = as_text(values.split_off(1));
    }
    Ok(plan)
}

/// The values of a request's `read_also` keys for [`Plan::read_also`]: none when it asked for
/// none or one is not UTF-8 text (the caller then reads them itself).
fn as_text(values: health::Values) -> Option<Vec<Option<String>>> {
    if values.is_empty() {
        return None;
    }
    values
        .into_iter()
        .map(|v| match v {
            None => Some(None),
            Some(b) => String::from_utf8(b).ok().map(Some),
        })
        .collect()
}

/// Reads the mount whose metadata `marker` holds ([`catalog_at`]); when it holds the built
/// source, records that for the mount and answers `None` (the guess stands), else the catalog it
/// holds.
fn confirm_by_reading(
    kv: &SpinKv,
    marker: &CatalogMount,
    baked: &'static Catalog,
) -> Result<Option<&'static Catalog>, ApiError> {
    let cat = catalog_at(Some(marker.0))?;
    if std::ptr::eq(cat, baked) {
        if let Err(e) = kv::store(kv, marker, &BAKED_SHA256.to_owned()) {
            eprintln!(
                "lumen router: could not record the mounted catalog: {}",
                e.0
            );
        }
        Ok(None)
    } else {
        Ok(Some(cat))
    }
}

/// Plans `ask` on a known catalog, health applied, its `read_also` keys read in the same batch.
fn plan_on(cat: &Catalog, ask: &PlanRequest, kv: Option<&SpinKv>) -> Result<Plan, ApiError> {
    let mut plan = plan_core(cat, ask, kv)?;
    if let Some(kv) = kv {
        if let Some((snaps, values)) = read_health(kv, &plan, &ask.read_also) {
            apply_health(kv, &mut plan, snaps);
            plan.read_also = as_text(values);
        }
    }
    Ok(plan)
}

/// The plan before health: the decision, the reference, fallbacks, provider preferences and a
/// shadow experiment. Observed latencies are read only when the request sets a latency SLO.
fn plan_core(cat: &Catalog, ask: &PlanRequest, kv: Option<&SpinKv>) -> Result<Plan, ApiError> {
    let kv = kv.filter(|_| wants_latency(ask.request.as_ref()));
    let mut plan = plan_one(
        cat,
        kv,
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

/// The provider and model a candidate calls.
fn target(c: &Candidate) -> Target<'_> {
    Target {
        provider: &c.provider.name,
        model: &c.model,
    }
}

/// Every target whose health a plan reads: its candidates, then fusion panel members and a
/// shadow candidate ([`apply_health`] hands the snapshots out in this order).
fn health_targets(plan: &Plan) -> Vec<Target<'_>> {
    let mut all: Vec<Target> = plan.candidates.iter().map(target).collect();
    if let Some(f) = plan.fusion.as_ref() {
        all.extend(f.panel.iter().flat_map(|m| m.candidates.iter()).map(target));
    }
    if let Some(s) = plan.shadow.as_ref() {
        all.extend(s.candidates.iter().map(target));
    }
    all
}

/// The health of every target of `plan` and the values of `extra` keys, in one batch; `None`
/// when the store cannot answer (health is advisory: the catalog order stands).
fn read_health(
    kv: &SpinKv,
    plan: &Plan,
    extra: &[String],
) -> Option<(Vec<Snapshot>, health::Values)> {
    health::snapshots_and(
        kv,
        &Policy::default(),
        &health_targets(plan),
        now_ms(),
        extra,
    )
    .ok()
}

/// Claims a due half-open probe (one increment, only while a breaker is open), moves candidates
/// that are down behind the healthy ones ([`lumen_shared::domain::fallback::order`]) and hands
/// each its snapshot (`snaps`, from [`read_health`] of this plan), against which the provider
/// records what its call showed.
fn apply_health(kv: &SpinKv, plan: &mut Plan, mut snaps: Vec<Snapshot>) {
    let policy = Policy::default();
    let now = now_ms();
    // The candidates' snapshots first, then fusion panel members' and a shadow candidate's.
    let rest = snaps.split_off(plan.candidates.len().min(snaps.len()));
    let avail: Vec<Availability> = plan
        .candidates
        .iter()
        .zip(&snaps)
        .map(|(c, s)| {
            health::availability(kv, &policy, target(c), s, now).unwrap_or(Availability::Up)
        })
        .collect();
    let mut extra: Vec<&mut Candidate> = Vec::new();
    if let Some(f) = plan.fusion.as_mut() {
        extra.extend(f.panel.iter_mut().flat_map(|m| m.candidates.iter_mut()));
    }
    if let Some(s) = plan.shadow.as_mut() {
        extra.extend(s.candidates.iter_mut());
    }
    for (c, s) in extra.into_iter().zip(rest) {
        c.health = Some(s);
    }
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

#[cfg(test)]
mod tests {
    use super::as_text;

    #[test]
    fn values_read_with_the_plan_are_text_or_not_handed_back() {
        assert_eq!(as_text(vec![]), None, "nothing asked, nothing handed back");
        assert_eq!(
            as_text(vec![Some(b"{\"prepaid\":true}".to_vec()), None]),
            Some(vec![Some("{\"prepaid\":true}".to_string()), None]),
            "an absent key is a null, not a missing read"
        );
        assert_eq!(
            as_text(vec![Some(vec![0xff, 0xfe]), None]),
            None,
            "a value that is not text: the caller reads every key itself"
        );
    }
}
