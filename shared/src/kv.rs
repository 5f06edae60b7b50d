//! KV key families and stored values. Keys are values: one struct per family with one `key()`,
//! versioned (`v1/...`), so a key's spelling lives in exactly one place. Never `format!` a key at
//! a call site.
//!
//! Counters are built on atomic `increment` (exact on every Spin backend). Compare-and-swap
//! (`wasi:keyvalue/atomics` `cas` + `swap`) is used only where one record must move from one
//! known state to the next, the audit chain's head; lumen-host implements it atomically on
//! every backend.

use crate::contracts::{Outcome, SettleRequest};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A KV failure, as text for logs; callers map it to a 500/503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key-value store: {}", self.0)
    }
}

impl std::error::Error for KvError {}

/// The store operations cores need; implemented over Spin KV in components and in memory for tests.
pub trait Kv {
    /// Reads a value.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Writes a value.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes a value (absent is fine).
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Atomically adds `delta` to a counter (absent = 0) and returns the new value.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Atomically writes `new` when the value is still `expected` (`None` = absent); returns
    /// whether it wrote.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError>;
}

/// A family of keys holding serde values.
pub trait Family {
    /// The stored value.
    type Value: Serialize + DeserializeOwned;
    /// The key.
    fn key(&self) -> String;
}

/// A family of keys holding atomic counters.
pub trait Counter {
    /// The key.
    fn key(&self) -> String;
}

/// Reads a typed value.
pub fn load<F: Family>(kv: &dyn Kv, f: &F) -> Result<Option<F::Value>, KvError> {
    match kv.get(&f.key())? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| KvError(format!("corrupt value at {}: {e}", f.key()))),
    }
}

/// Writes a typed value.
pub fn store<F: Family>(kv: &dyn Kv, f: &F, value: &F::Value) -> Result<(), KvError> {
    let bytes = serde_json::to_vec(value).map_err(|e| KvError(e.to_string()))?;
    kv.set(&f.key(), &bytes)
}

/// Removes a typed value.
pub fn remove<F: Family>(kv: &dyn Kv, f: &F) -> Result<(), KvError> {
    kv.delete(&f.key())
}

/// Adds to a counter.
pub fn incr<C: Counter>(kv: &dyn Kv, c: &C, delta: i64) -> Result<i64, KvError> {
    kv.increment(&c.key(), delta)
}

/// Reads a counter without changing it.
pub fn read_counter<C: Counter>(kv: &dyn Kv, c: &C) -> Result<i64, KvError> {
    kv.increment(&c.key(), 0)
}

/// An API key as stored; the secret itself is never stored, only its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Public id (`key_…`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Hex sha256 of the secret.
    pub hash: String,
    /// Requests per minute.
    pub rpm_limit: u32,
    /// Models the key may use; empty = all.
    pub allowed_models: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Tenant the key belongs to (its usage, budget and credits); empty = the key's own id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Unix seconds after which the key is refused (none = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Unix seconds of the last rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<u64>,
    /// Plan from `config/plans.toml` (empty = none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plan: String,
}

impl ApiKeyRecord {
    /// The tenant id: `tenant`, or the key id for a key created without one.
    pub fn tenant_id(&self) -> &str {
        if self.tenant.is_empty() {
            &self.id
        } else {
            &self.tenant
        }
    }
}

/// `v1/key/hash/{sha256}` → [`ApiKeyRecord`].
pub struct KeyByHash<'a>(pub &'a str);
impl Family for KeyByHash<'_> {
    type Value = ApiKeyRecord;
    fn key(&self) -> String {
        format!("v1/key/hash/{}", self.0)
    }
}

/// `v1/key/id/{id}` → the key's sha256, for admin lookups by id.
pub struct KeyById<'a>(pub &'a str);
impl Family for KeyById<'_> {
    type Value = String;
    fn key(&self) -> String {
        format!("v1/key/id/{}", self.0)
    }
}

/// `v1/key/seq` — how many keys were ever created (indexes [`KeyIndex`]).
pub struct KeySeq;
impl Counter for KeySeq {
    fn key(&self) -> String {
        "v1/key/seq".into()
    }
}

/// `v1/key/index/{n}` → key id of the n-th created key (1-based).
pub struct KeyIndex(pub i64);
impl Family for KeyIndex {
    type Value = String;
    fn key(&self) -> String {
        format!("v1/key/index/{}", self.0)
    }
}

/// `v1/catalog/compiled/{sha256 of catalog.toml}` → the checked [`crate::catalog::Catalog`].
pub struct CompiledCatalog(pub String);
impl Family for CompiledCatalog {
    type Value = crate::catalog::Catalog;
    fn key(&self) -> String {
        format!("v1/catalog/compiled/{}", self.0)
    }
}

/// Latency the provider observed for one provider+model (time to response headers), as an
/// exponentially weighted moving average. Written after each call off the path of the first byte;
/// concurrent writers may lose an update, which only slows the average down.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyRecord {
    /// EWMA of time to headers, ms.
    pub ewma_ms: f64,
    /// Calls observed.
    pub samples: u64,
    /// Unix ms of the last update.
    pub updated_ms: u64,
}

impl LatencyRecord {
    /// Weight of the newest sample.
    pub const ALPHA: f64 = 0.3;

    /// The record after one more sample (the first sample is taken as is).
    pub fn update(prev: Option<LatencyRecord>, sample_ms: f64, now_ms: u64) -> LatencyRecord {
        match prev {
            None => LatencyRecord {
                ewma_ms: sample_ms,
                samples: 1,
                updated_ms: now_ms,
            },
            Some(p) => LatencyRecord {
                ewma_ms: p.ewma_ms + Self::ALPHA * (sample_ms - p.ewma_ms),
                samples: p.samples + 1,
                updated_ms: now_ms,
            },
        }
    }
}

/// `v1/health/latency/{provider}/{model}` → [`LatencyRecord`].
pub struct LatencyKey<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// Catalog model id.
    pub model: &'a str,
}
impl Family for LatencyKey<'_> {
    type Value = LatencyRecord;
    fn key(&self) -> String {
        format!("v1/health/latency/{}/{}", self.provider, self.model)
    }
}

/// `v1/rl/rpm/{key_id}/{window_start_secs}` — requests admitted in one minute window.
pub struct RpmWindow<'a> {
    /// Key id.
    pub key_id: &'a str,
    /// Unix seconds at the window's start.
    pub window: u64,
}
impl Counter for RpmWindow<'_> {
    fn key(&self) -> String {
        format!("v1/rl/rpm/{}/{}", self.key_id, self.window)
    }
}

/// `v1/usage/once/{request_id}` — settle guard: only the call that takes it from 0 to 1 records.
pub struct SettleOnce<'a>(pub &'a str);
impl Counter for SettleOnce<'_> {
    fn key(&self) -> String {
        format!("v1/usage/once/{}", self.0)
    }
}

/// `v1/usage/seq/{key_id}` — number of usage records of a key.
pub struct UsageSeq<'a>(pub &'a str);
impl Counter for UsageSeq<'_> {
    fn key(&self) -> String {
        format!("v1/usage/seq/{}", self.0)
    }
}

/// A settled request as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// Request id.
    pub request_id: String,
    /// Key id.
    pub key_id: String,
    /// Unix ms of arrival.
    pub time_ms: u64,
    /// Catalog model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Tokens were estimated.
    pub estimated: bool,
    /// Cost in nano-dollars.
    pub cost_nanos: i64,
    /// Gateway latency, ms.
    pub latency_ms: f64,
    /// Upstream time to headers, ms.
    pub upstream_ms: f64,
    /// Streamed.
    pub stream: bool,
    /// Outcome.
    pub outcome: Outcome,
}

impl UsageRecord {
    /// Builds the record for a settle request at a computed cost.
    pub fn from_settle(s: &SettleRequest, cost_nanos: i64) -> Self {
        let r = &s.report;
        UsageRecord {
            request_id: s.request_id.clone(),
            key_id: s.key_id.clone(),
            time_ms: s.started_ms,
            model: r.model.clone(),
            provider: r.provider.clone(),
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            cached_tokens: r.usage.cached_tokens,
            estimated: r.estimated,
            cost_nanos,
            latency_ms: s.latency_ms,
            upstream_ms: r.upstream_ms,
            stream: s.stream,
            outcome: r.outcome,
        }
    }
}

/// `v1/usage/rec/{key_id}/{seq}` → [`UsageRecord`].
pub struct UsageRecordKey<'a> {
    /// Key id.
    pub key_id: &'a str,
    /// 1-based sequence from [`UsageSeq`].
    pub seq: i64,
}
impl Family for UsageRecordKey<'_> {
    type Value = UsageRecord;
    fn key(&self) -> String {
        format!("v1/usage/rec/{}/{}", self.key_id, self.seq)
    }
}

/// `v1/usage/dimseq/{key_id}` — number of (day, model) rollups of a key.
pub struct UsageDimSeq<'a>(pub &'a str);
impl Counter for UsageDimSeq<'_> {
    fn key(&self) -> String {
        format!("v1/usage/dimseq/{}", self.0)
    }
}

/// A (day, model) rollup a key has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageDim {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Model.
    pub model: String,
}

/// `v1/usage/dim/{key_id}/{n}` → [`UsageDim`].
pub struct UsageDimKey<'a> {
    /// Key id.
    pub key_id: &'a str,
    /// 1-based index from [`UsageDimSeq`].
    pub n: i64,
}
impl Family for UsageDimKey<'_> {
    type Value = UsageDim;
    fn key(&self) -> String {
        format!("v1/usage/dim/{}/{}", self.key_id, self.n)
    }
}

/// Fields of a rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupField {
    /// Requests.
    Requests,
    /// Non-ok requests.
    Errors,
    /// Prompt tokens.
    PromptTokens,
    /// Completion tokens.
    CompletionTokens,
    /// Cached tokens.
    CachedTokens,
    /// Cost in nano-dollars.
    CostNanos,
}

impl RollupField {
    /// All fields.
    pub const ALL: [RollupField; 6] = [
        RollupField::Requests,
        RollupField::Errors,
        RollupField::PromptTokens,
        RollupField::CompletionTokens,
        RollupField::CachedTokens,
        RollupField::CostNanos,
    ];

    fn name(self) -> &'static str {
        match self {
            RollupField::Requests => "requests",
            RollupField::Errors => "errors",
            RollupField::PromptTokens => "prompt_tokens",
            RollupField::CompletionTokens => "completion_tokens",
            RollupField::CachedTokens => "cached_tokens",
            RollupField::CostNanos => "cost_nanos",
        }
    }
}

/// `v1/usage/sum/{key_id}/{day}/{field}/{model}` — one rollup counter.
pub struct Rollup<'a> {
    /// Key id.
    pub key_id: &'a str,
    /// Day.
    pub day: &'a str,
    /// Model.
    pub model: &'a str,
    /// Field.
    pub field: RollupField,
}
impl Counter for Rollup<'_> {
    fn key(&self) -> String {
        format!(
            "v1/usage/sum/{}/{}/{}/{}",
            self.key_id,
            self.day,
            self.field.name(),
            self.model
        )
    }
}

/// `v1/tenant/{tenant}` → [`TenantRecord`]: a tenant's budget settings.
pub struct TenantKey<'a>(pub &'a str);
impl Family for TenantKey<'_> {
    type Value = TenantRecord;
    fn key(&self) -> String {
        format!("v1/tenant/{}", self.0)
    }
}

/// A tenant's budget settings (set with `PUT /admin/tenants/{tenant}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// Hard cap on spend per calendar month (UTC), nano-dollars; none = no monthly cap.
    #[serde(default)]
    pub monthly_budget_nanos: Option<i64>,
    /// When true, spend is also limited by prepaid credits (grants minus spend, all time).
    #[serde(default)]
    pub prepaid: bool,
}

/// Ledger counters of a tenant, in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerField {
    /// Settled spend plus outstanding holds, this month (checked against the monthly cap).
    MonthCommitted,
    /// Outstanding holds, this month.
    MonthHeld,
    /// Settled spend, this month.
    MonthSettled,
    /// Released hold amounts (hold minus actual), this month.
    MonthReleased,
}

/// `v1/ledger/{tenant}/{YYYY-MM}/{field}` — a tenant's monthly ledger counter.
pub struct MonthLedger<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// `YYYY-MM` (UTC).
    pub month: &'a str,
    /// Field.
    pub field: LedgerField,
}
impl Counter for MonthLedger<'_> {
    fn key(&self) -> String {
        let f = match self.field {
            LedgerField::MonthCommitted => "committed",
            LedgerField::MonthHeld => "held",
            LedgerField::MonthSettled => "settled",
            LedgerField::MonthReleased => "released",
        };
        format!("v1/ledger/{}/{}/{f}", self.tenant, self.month)
    }
}

/// Prepaid-credit counters of a tenant (all time), in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditField {
    /// Credits granted (negative grants are refunds to the operator / corrections).
    Granted,
    /// Settled spend plus outstanding holds against credits.
    Committed,
}

/// `v1/credit/{tenant}/{field}`.
pub struct Credit<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Field.
    pub field: CreditField,
}
impl Counter for Credit<'_> {
    fn key(&self) -> String {
        let f = match self.field {
            CreditField::Granted => "granted",
            CreditField::Committed => "committed",
        };
        format!("v1/credit/{}/{f}", self.tenant)
    }
}

/// `v1/audit/head` → [`crate::audit::AuditHead`], moved only by compare-and-swap.
pub struct AuditHeadKey;
impl Family for AuditHeadKey {
    type Value = crate::audit::AuditHead;
    fn key(&self) -> String {
        "v1/audit/head".into()
    }
}

/// `v1/audit/entry/{hash}` → [`crate::audit::AuditEntry`] (content-addressed).
pub struct AuditEntryKey<'a>(pub &'a str);
impl Family for AuditEntryKey<'_> {
    type Value = crate::audit::AuditEntry;
    fn key(&self) -> String {
        format!("v1/audit/entry/{}", self.0)
    }
}

/// `v1/audit/seq/{n}` → hash of the n-th entry (an index written after the head moved).
pub struct AuditSeqKey(pub u64);
impl Family for AuditSeqKey {
    type Value = String;
    fn key(&self) -> String {
        format!("v1/audit/seq/{}", self.0)
    }
}

/// An in-memory [`Kv`] for unit tests of the cores.
#[derive(Debug, Default)]
pub struct MemKv {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemKv {
    /// All keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

impl Kv for MemKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(())
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let cur = match map.get(key) {
            None => 0,
            Some(b) => i64::from_le_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| KvError(format!("{key} is not a counter")))?,
            ),
        };
        let next = cur + delta;
        map.insert(key.to_string(), next.to_le_bytes().to_vec());
        Ok(next)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(key.to_string(), new.to_vec());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key spellings are part of the stored format: pin them byte for byte.
    #[test]
    fn key_spellings_are_pinned() {
        assert_eq!(KeyByHash("ab").key(), "v1/key/hash/ab");
        assert_eq!(KeyById("key_1").key(), "v1/key/id/key_1");
        assert_eq!(KeySeq.key(), "v1/key/seq");
        assert_eq!(CompiledCatalog("ab".into()).key(), "v1/catalog/compiled/ab");
        assert_eq!(KeyIndex(3).key(), "v1/key/index/3");
        assert_eq!(
            RpmWindow {
                key_id: "key_1",
                window: 60
            }
            .key(),
            "v1/rl/rpm/key_1/60"
        );
        assert_eq!(SettleOnce("req_1").key(), "v1/usage/once/req_1");
        assert_eq!(TenantKey("t1").key(), "v1/tenant/t1");
        assert_eq!(
            MonthLedger {
                tenant: "t1",
                month: "2026-11",
                field: LedgerField::MonthHeld
            }
            .key(),
            "v1/ledger/t1/2026-11/held"
        );
        assert_eq!(
            Credit {
                tenant: "t1",
                field: CreditField::Granted
            }
            .key(),
            "v1/credit/t1/granted"
        );
        assert_eq!(AuditHeadKey.key(), "v1/audit/head");
        assert_eq!(AuditEntryKey("ab").key(), "v1/audit/entry/ab");
        assert_eq!(AuditSeqKey(7).key(), "v1/audit/seq/7");
        assert_eq!(
            LatencyKey {
                provider: "openai",
                model: "gpt-4o"
            }
            .key(),
            "v1/health/latency/openai/gpt-4o"
        );
        assert_eq!(UsageSeq("key_1").key(), "v1/usage/seq/key_1");
        assert_eq!(
            UsageRecordKey {
                key_id: "key_1",
                seq: 2
            }
            .key(),
            "v1/usage/rec/key_1/2"
        );
        assert_eq!(UsageDimSeq("key_1").key(), "v1/usage/dimseq/key_1");
        assert_eq!(
            UsageDimKey {
                key_id: "key_1",
                n: 1
            }
            .key(),
            "v1/usage/dim/key_1/1"
        );
        assert_eq!(
            Rollup {
                key_id: "key_1",
                day: "2026-11-21",
                model: "openai/gpt-4o",
                field: RollupField::CostNanos
            }
            .key(),
            "v1/usage/sum/key_1/2026-11-21/cost_nanos/openai/gpt-4o"
        );
    }

    #[test]
    fn latency_ewma() {
        let r = LatencyRecord::update(None, 100.0, 1);
        assert_eq!((r.ewma_ms, r.samples), (100.0, 1));
        let r = LatencyRecord::update(Some(r), 200.0, 2);
        assert!((r.ewma_ms - 130.0).abs() < 1e-9);
        assert_eq!((r.samples, r.updated_ms), (2, 2));
    }

    #[test]
    fn counters_are_le_i64() {
        let kv = MemKv::default();
        assert_eq!(kv.increment("c", 5).unwrap(), 5);
        assert_eq!(kv.increment("c", -2).unwrap(), 3);
        assert_eq!(kv.get("c").unwrap().unwrap(), 3i64.to_le_bytes().to_vec());
        kv.set("s", b"x").unwrap();
        assert!(kv.increment("s", 1).is_err());
    }
}
