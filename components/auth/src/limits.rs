//! Plans and the limits beyond the per-key RPM: requests per day, tokens per minute and per day
//! per key, requests per minute per tenant, requests and tokens per minute per key on one model,
//! all on atomic KV increments shared by every instance.
//! Token limits reserve the request's estimate (prompt estimate + max output) at admission and
//! are reconciled with the actual usage once the request is settled.

use lumen_shared::domain::plans::{self, Plan, Plans};
use lumen_shared::domain::pricing::NANOS_PER_USD;
use lumen_shared::store::limits::{self, Kind, Refused, Taken};
use lumen_shared::store::{self as kvs, ApiKeyRecord, Family as _, TenantKey, TenantRecord};
use lumen_shared::ApiError;
use lumen_spin::kv::unavailable;
use lumen_spin::SpinKv;

/// Where the plans file is mounted (`files` of the auth component in spin.toml).
const PLANS_PATH: &str = "/config/plans.toml";

/// The plans; none when the file is absent.
pub fn load_plans() -> Result<Plans, ApiError> {
    match std::fs::read_to_string(PLANS_PATH) {
        Ok(text) => plans::parse(&text, "config/plans.toml").map_err(ApiError::internal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Plans::new()),
        Err(e) => Err(ApiError::internal(format!(
            "cannot read config/plans.toml: {e}"
        ))),
    }
}

/// The key's plan, if it has one.
pub fn key_plan(key: &ApiKeyRecord) -> Result<Option<Plan>, ApiError> {
    if key.plan.is_empty() {
        return Ok(None);
    }
    let all = load_plans()?;
    plans::find(&all, &key.plan).map(|p| Some(p.clone()))
}

/// The tenant's budget: its own record if set, else its plan's monthly budget, else none.
/// `read`: the record as the router read it with the plan (`Some(None)`: there is none);
/// `None` when it was not read there, and then it is read here.
pub fn tenant_budget(
    kv: &SpinKv,
    tenant: &str,
    plan: Option<&Plan>,
    read: Option<Option<String>>,
) -> Result<TenantRecord, ApiError> {
    let family = TenantKey(tenant);
    let own = match read {
        Some(Some(text)) => Some(
            kvs::decode::<TenantRecord>(&family.key(), text.as_bytes())
                .map_err(|e| unavailable(&e))?,
        ),
        Some(None) => None,
        None => kvs::load(kv, &family).map_err(|e| unavailable(&e))?,
    };
    if let Some(rec) = own {
        return Ok(rec);
    }
    Ok(TenantRecord {
        monthly_budget_nanos: plan
            .and_then(|p| p.monthly_budget_usd)
            .map(|usd| (usd * NANOS_PER_USD).round() as i64),
        prepaid: false,
    })
}

/// Gives back what was taken (a later refusal); a failure is logged, never dropped silently:
/// the window then over-counts until it ends, which can refuse, never over-admit.
fn give_back_all<'a>(kv: &SpinKv, taken: impl IntoIterator<Item = &'a Taken>) {
    for t in taken {
        if let Err(e) = limits::give_back(kv, t) {
            eprintln!(
                "lumen: could not give back {} of the {:?} window of {}: {}",
                t.amount, t.kind, t.id, e.message
            );
        }
    }
}

/// Takes every windowed limit of the plan; on a refusal, gives back what was already taken.
pub fn take_windows(
    kv: &SpinKv,
    key: &ApiKeyRecord,
    plan: Option<&Plan>,
    tokens: u64,
    now_ms: u64,
) -> Result<Vec<Taken>, Box<Refused>> {
    let Some(p) = plan else {
        return Ok(Vec::new());
    };
    let asks = [
        (Kind::KeyRpd, key.id.as_str(), p.rpd.map(u64::from), 1),
        (
            Kind::TenantRpm,
            key.tenant_id(),
            p.tenant_rpm.map(u64::from),
            1,
        ),
        (Kind::KeyTpm, key.id.as_str(), p.tpm, tokens),
        (Kind::KeyTpd, key.id.as_str(), p.tpd, tokens),
    ];
    let mut taken: Vec<Taken> = Vec::new();
    for (kind, id, limit, amount) in asks {
        let Some(limit) = limit else { continue };
        match limits::take(kv, kind, id, limit, amount, now_ms) {
            Ok(t) => taken.push(t),
            Err(e) => {
                give_back_all(kv, &taken);
                return Err(e);
            }
        }
    }
    Ok(taken)
}

/// Takes the plan's per-model limits for the planned model; on a refusal, gives back what was
/// already taken, `earlier` included.
pub fn take_model_windows(
    kv: &SpinKv,
    key: &ApiKeyRecord,
    plan: Option<&Plan>,
    model: &str,
    tokens: u64,
    now_ms: u64,
    earlier: &[Taken],
) -> Result<Vec<Taken>, Box<Refused>> {
    let Some(m) = plan.and_then(|p| p.models.get(model)) else {
        return Ok(Vec::new());
    };
    let id = format!("{}/{model}", key.id);
    let asks = [
        (Kind::ModelRpm, m.rpm.map(u64::from), 1),
        (Kind::ModelTpm, m.tpm, tokens),
    ];
    let mut taken: Vec<Taken> = Vec::new();
    for (kind, limit, amount) in asks {
        let Some(limit) = limit else { continue };
        match limits::take(kv, kind, &id, limit, amount, now_ms) {
            Ok(t) => taken.push(t),
            Err(e) => {
                give_back_all(kv, taken.iter().chain(earlier));
                return Err(e);
            }
        }
    }
    Ok(taken)
}

/// Reconciles token reservations with the tokens actually used (failures logged).
pub fn reconcile(taken: &[Taken], actual_tokens: u64) {
    let kv = match SpinKv::open() {
        Ok(kv) => kv,
        Err(e) => {
            eprintln!("lumen: could not reconcile token limits: {e}");
            return;
        }
    };
    for t in taken.iter().filter(|t| t.kind.counts_tokens()) {
        if let Err(e) = limits::reconcile(&kv, t, actual_tokens) {
            eprintln!(
                "lumen: could not reconcile the {:?} window of {}: {}",
                t.kind, t.id, e.message
            );
        }
    }
}
