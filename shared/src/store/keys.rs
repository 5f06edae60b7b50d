//! Every key family of the store, in one place: one struct per family with one `key()`,
//! versioned, so a key's spelling is written exactly once. Never `format!` a key at a call site.
//!
//! | family | kind | written by | per request |
//! |---|---|---|---|
//! | `v1/key/hash/{sha256}` → [`ApiKeyRecord`] | value | admin | read once (auth) |
//! | `v1/key/id/{id}` → sha256 | value | admin | – |
//! | `v1/key/revoked/{id}` → unix s | value | admin (DELETE) | – |
//! | `v1/key/seq`, `v1/key/index/{n}` → id | counter, value | admin | – |
//! | `v1/rl/{kind}/{id}/{window}` | counter | auth | 1 increment per limit the key has |
//! | `v1/tenant/{tenant}` → [`TenantRecord`] | value | admin | read once, in the router's health batch (auth's `read_also`) |
//! | `v2/ledger/{tenant}/{YYYY-MM}/{committed,settled}` | counter | auth, meter | only with a budget |
//! | `v1/credit/{tenant}/{granted,committed}` | counter | admin, auth, meter | only prepaid |
//! | `v2/log/seq`, `v2/log/entry/{n}` | counter, value | meter, admin | 1 increment + 1 set |
//! | `v2/log/block/{b}`, `v2/log/super/{s}`, `v2/log/sealed` | value | whoever seals | every 64th request |
//! | `v2/health/{p}/{m}` → [`crate::domain::health::Record`] | value | provider | on change only |
//! | `v2/health/{fail,ok}/{p}/{m}/{slot}` | counter | provider | failures (and successes while failing) |
//! | `v2/health/probe/{p}/{m}/{since}/{period}` | counter | router | one per half-open probe |
//! | `v2/catalog/mount/{size}/{secs}.{nanos}` → sha256 | value | router | read in the health batch where the mounted catalog is a copy (Spin); 1 set per copy |
//! | `v1/byok/{key}/{provider}`, `v1/byok-index/{key}` | value | admin | read only for keys with one |
//! | `v1/coldstart/{provider}` | value | provider | queue backends only |
//! | `v1/feedback/claim/{key}/{request_id}` | counter | auth (`POST /v1/feedback`) | – (the first to reach 1 owns the request's feedback) |
//! | `v1/feedback/seq`, `v1/feedback/item/{n}` → [`crate::store::feedback::FeedbackRecord`] | counter, value | auth (`POST /v1/feedback`) | – |
//! | `v1/cache/{tenant}/{sha256}` → [`crate::domain::cache::CacheEntry`] | value | auth | cacheable requests: 1 get; a miss also 1 set |
//! | `v1/cache-bytes/{tenant}/{YYYY-MM-DD}` | counter | auth | 1 increment per entry written |
//! | `v1/shadow/{name}/seq`, `v1/shadow/{name}/sample/{n mod 1024}` → [`crate::domain::shadow::Sample`] | counter, value | auth | shadowed requests: 1 increment + 1 set |
//! | `v1/shadow/{name}/inflight/{minute}`, `v1/shadow/{name}/spent/{YYYY-MM-DD}` | counter | auth | shadowed requests: 2 increments each (take, give back) |

use super::{Counter, Family};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// Providers this key has its own upstream key for (bring your own key): the provider
    /// reads `v1/byok/...` only for these, so other keys cost no read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byok: Vec<String>,
    /// The hash this record replaced in a rotation, removed again by every later admin change
    /// of the key (a rotation that died half way leaves no second valid secret for long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    /// Reference model for `lumen.saved` (catalog id or alias); none = the plan's, else the
    /// route's own ([`crate::domain::saved`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
    /// Nothing of this key's content is ever stored (the response cache is off for it); set at
    /// creation, or by its plan's `zero_retention`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_retention: bool,
    /// The key's response-cache settings (before its plan's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::domain::cache::CachePolicy>,
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

/// `v1/key/revoked/{id}` → unix seconds of the revocation: written before a key's records are
/// removed, and checked by every other admin change after it writes, so a change racing a
/// revocation never brings the key back.
pub struct KeyRevoked<'a>(pub &'a str);
impl Family for KeyRevoked<'_> {
    type Value = u64;
    fn key(&self) -> String {
        format!("v1/key/revoked/{}", self.0)
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

/// `v1/rl/{kind}/{id}/{window_start_secs}` — what one limit admitted in one window.
pub struct RateWindow<'a> {
    /// The limit's name (`rpm`, `rpd`, `tpm`, …).
    pub kind: &'a str,
    /// Key, tenant or `key/model` id.
    pub id: &'a str,
    /// Unix seconds at the window's start.
    pub window: u64,
}
impl Counter for RateWindow<'_> {
    fn key(&self) -> String {
        format!("v1/rl/{}/{}/{}", self.kind, self.id, self.window)
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

/// Monthly ledger counters of a tenant, in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerField {
    /// Settled spend plus outstanding holds (checked against the monthly cap).
    Committed,
    /// Settled spend.
    Settled,
}

/// `v2/ledger/{tenant}/{YYYY-MM}/{committed|settled}`.
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
            LedgerField::Committed => "committed",
            LedgerField::Settled => "settled",
        };
        format!("v2/ledger/{}/{}/{f}", self.tenant, self.month)
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

/// `v1/credit/{tenant}/{granted|committed}`.
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

/// `v2/log/seq` — the last sequence number handed out (entries are 1-based).
pub struct LogSeq;
impl Counter for LogSeq {
    fn key(&self) -> String {
        "v2/log/seq".into()
    }
}

/// `v2/log/entry/{seq}` → [`crate::store::log::Entry`].
pub struct LogEntryKey(pub u64);
impl Family for LogEntryKey {
    type Value = crate::store::log::Entry;
    fn key(&self) -> String {
        format!("v2/log/entry/{}", self.0)
    }
}

/// `v2/log/block/{b}` → [`crate::store::log::Block`]: the hashes and usage of entries
/// `64·b + 1 ..= 64·b + 64`, written once they are all present.
pub struct LogBlockKey(pub u64);
impl Family for LogBlockKey {
    type Value = crate::store::log::Block;
    fn key(&self) -> String {
        format!("v2/log/block/{}", self.0)
    }
}

/// `v2/log/super/{s}` → [`crate::store::log::Super`]: the usage of blocks `64·s ..= 64·s + 63`.
pub struct LogSuperKey(pub u64);
impl Family for LogSuperKey {
    type Value = crate::store::log::Super;
    fn key(&self) -> String {
        format!("v2/log/super/{}", self.0)
    }
}

/// `v2/log/sealed` → how many blocks are sealed (a hint: plain writes may race, so readers check
/// the blocks after it).
pub struct LogSealed;
impl Family for LogSealed {
    type Value = u64;
    fn key(&self) -> String {
        "v2/log/sealed".into()
    }
}

/// A provider and one of its models.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// Catalog model id.
    pub model: &'a str,
}

/// `v2/health/{provider}/{model}` → [`crate::domain::health::Record`].
pub struct HealthKey<'a>(pub Target<'a>);
impl Family for HealthKey<'_> {
    type Value = crate::domain::health::Record;
    fn key(&self) -> String {
        format!("v2/health/{}/{}", self.0.provider, self.0.model)
    }
}

/// `v2/catalog/mount/{size}/{secs}.{nanos}` → the hex sha256 of the catalog source a router
/// found, byte for byte, in a mounted `catalog.toml` of that size and modification time. Spin
/// mounts a copy of `config/` (new times on every start), so the router cannot tell the built
/// file by its metadata; the first to read the copy records what it holds, and routers after it
/// read that in the health batch they read anyway instead of reading the file.
pub struct CatalogMount(pub crate::domain::catalog::FileStamp);
impl Family for CatalogMount {
    type Value = String;
    fn key(&self) -> String {
        let (size, secs, nanos) = self.0;
        format!("v2/catalog/mount/{size}/{secs}.{nanos:09}")
    }
}

/// Which calls a health counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Failures.
    Fail,
    /// Successes (counted only while failures are in the window).
    Ok,
}

/// `v2/health/{fail|ok}/{provider}/{model}/{slot_start_ms}`.
pub struct HealthCount<'a> {
    /// What is counted.
    pub tally: Tally,
    /// Whose calls.
    pub target: Target<'a>,
    /// Start of the slot, ms since the epoch.
    pub slot_ms: u64,
}
impl Counter for HealthCount<'_> {
    fn key(&self) -> String {
        let t = match self.tally {
            Tally::Fail => "fail",
            Tally::Ok => "ok",
        };
        format!(
            "v2/health/{t}/{}/{}/{}",
            self.target.provider, self.target.model, self.slot_ms
        )
    }
}

/// `v2/health/probe/{provider}/{model}/{open_since_ms}/{period}` — the request that takes it
/// from 0 to 1 holds the half-open probe of that period.
pub struct HealthProbe<'a> {
    /// Whose breaker.
    pub target: Target<'a>,
    /// When the breaker opened.
    pub since_ms: u64,
    /// Which probe period.
    pub period: u64,
}
impl Counter for HealthProbe<'_> {
    fn key(&self) -> String {
        format!(
            "v2/health/probe/{}/{}/{}/{}",
            self.target.provider, self.target.model, self.since_ms, self.period
        )
    }
}

/// `v1/byok/{key_id}/{provider}` → [`crate::store::byok::ByokRecord`].
pub struct ByokKey<'a> {
    /// Lumen API key id.
    pub key_id: &'a str,
    /// Catalog provider.
    pub provider: &'a str,
}
impl Family for ByokKey<'_> {
    type Value = crate::store::byok::ByokRecord;
    fn key(&self) -> String {
        format!("v1/byok/{}/{}", self.key_id, self.provider)
    }
}

/// `v1/coldstart/{provider}` → [`crate::store::coldstart::ColdStartStats`].
pub struct ColdStartKey<'a>(pub &'a str);
impl Family for ColdStartKey<'_> {
    type Value = crate::store::coldstart::ColdStartStats;
    fn key(&self) -> String {
        format!("v1/coldstart/{}", self.0)
    }
}

/// `v1/feedback/claim/{key_id}/{request_id}` — incremented by every feedback on that request by
/// that key: the one that takes it to 1 is the request's feedback, later ones are duplicates.
pub struct FeedbackClaim<'a> {
    /// API key id.
    pub key_id: &'a str,
    /// Request id (checked to be `req_` + hex before it is used in a key).
    pub request_id: &'a str,
}
impl Counter for FeedbackClaim<'_> {
    fn key(&self) -> String {
        format!("v1/feedback/claim/{}/{}", self.key_id, self.request_id)
    }
}

/// `v1/feedback/seq` — how many feedback records were ever taken (indexes [`FeedbackItem`]).
pub struct FeedbackSeq;
impl Counter for FeedbackSeq {
    fn key(&self) -> String {
        "v1/feedback/seq".into()
    }
}

/// `v1/feedback/item/{n}` → [`crate::store::feedback::FeedbackRecord`], the n-th (1-based).
pub struct FeedbackItem(pub u64);
impl Family for FeedbackItem {
    type Value = crate::store::feedback::FeedbackRecord;
    fn key(&self) -> String {
        format!("v1/feedback/item/{}", self.0)
    }
}

/// `v1/cache/{tenant}/{sha256}` → [`crate::domain::cache::CacheEntry`]: one cached answer,
/// expiring by the time stored in it (the store has no TTL).
pub struct CacheSlot<'a> {
    /// Tenant: entries are never shared across tenants.
    pub tenant: &'a str,
    /// [`crate::domain::cache::request_hash`] of the request.
    pub hash: &'a str,
}
impl Family for CacheSlot<'_> {
    type Value = crate::domain::cache::CacheEntry;
    fn key(&self) -> String {
        format!("v1/cache/{}/{}", self.tenant, self.hash)
    }
}

/// `v1/cache-bytes/{tenant}/{YYYY-MM-DD}` — bytes the tenant wrote to the cache that UTC day.
pub struct CacheBytes<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// `YYYY-MM-DD` (UTC).
    pub day: &'a str,
}
impl Counter for CacheBytes<'_> {
    fn key(&self) -> String {
        format!("v1/cache-bytes/{}/{}", self.tenant, self.day)
    }
}

/// `v1/shadow/{name}/seq` — samples a shadow experiment has recorded.
pub struct ShadowSeq<'a>(pub &'a str);
impl Counter for ShadowSeq<'_> {
    fn key(&self) -> String {
        format!("v1/shadow/{}/seq", self.0)
    }
}

/// `v1/shadow/{name}/sample/{slot}` → [`crate::domain::shadow::Sample`]: sample `n` lives in
/// slot `n mod` [`crate::store::shadow::RING`], so the newest samples are kept.
pub struct ShadowSample<'a> {
    /// Shadow name.
    pub name: &'a str,
    /// Ring slot.
    pub slot: u64,
}
impl Family for ShadowSample<'_> {
    type Value = crate::domain::shadow::Sample;
    fn key(&self) -> String {
        format!("v1/shadow/{}/sample/{}", self.name, self.slot)
    }
}

/// `v1/shadow/{name}/inflight/{minute_start_s}` — shadow calls running, counted in the minute
/// they started (a call lost mid-way is forgotten with its minute).
pub struct ShadowInflight<'a> {
    /// Shadow name.
    pub name: &'a str,
    /// Unix seconds of the minute's start.
    pub minute: u64,
}
impl Counter for ShadowInflight<'_> {
    fn key(&self) -> String {
        format!("v1/shadow/{}/inflight/{}", self.name, self.minute)
    }
}

/// `v1/shadow/{name}/spent/{YYYY-MM-DD}` — nano-dollars a shadow experiment spent (and holds)
/// that UTC day.
pub struct ShadowSpent<'a> {
    /// Shadow name.
    pub name: &'a str,
    /// `YYYY-MM-DD` (UTC).
    pub day: &'a str,
}
impl Counter for ShadowSpent<'_> {
    fn key(&self) -> String {
        format!("v1/shadow/{}/spent/{}", self.name, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key spellings are part of the stored format: pin them byte for byte.
    #[test]
    fn key_spellings_are_pinned() {
        let t = Target {
            provider: "openai",
            model: "gpt-4o",
        };
        let cases: Vec<(String, &str)> = vec![
            (KeyByHash("ab").key(), "v1/key/hash/ab"),
            (KeyById("key_1").key(), "v1/key/id/key_1"),
            (KeyRevoked("key_1").key(), "v1/key/revoked/key_1"),
            (KeySeq.key(), "v1/key/seq"),
            (KeyIndex(3).key(), "v1/key/index/3"),
            (
                RateWindow {
                    kind: "rpm",
                    id: "key_1",
                    window: 60,
                }
                .key(),
                "v1/rl/rpm/key_1/60",
            ),
            (TenantKey("t1").key(), "v1/tenant/t1"),
            (
                MonthLedger {
                    tenant: "t1",
                    month: "2026-11",
                    field: LedgerField::Settled,
                }
                .key(),
                "v2/ledger/t1/2026-11/settled",
            ),
            (
                Credit {
                    tenant: "t1",
                    field: CreditField::Granted,
                }
                .key(),
                "v1/credit/t1/granted",
            ),
            (LogSeq.key(), "v2/log/seq"),
            (LogEntryKey(7).key(), "v2/log/entry/7"),
            (LogBlockKey(2).key(), "v2/log/block/2"),
            (LogSuperKey(0).key(), "v2/log/super/0"),
            (LogSealed.key(), "v2/log/sealed"),
            (HealthKey(t).key(), "v2/health/openai/gpt-4o"),
            (
                CatalogMount((10_240, 1_700_000_000, 5)).key(),
                "v2/catalog/mount/10240/1700000000.000000005",
            ),
            (
                HealthCount {
                    tally: Tally::Fail,
                    target: t,
                    slot_ms: 30_000,
                }
                .key(),
                "v2/health/fail/openai/gpt-4o/30000",
            ),
            (
                HealthProbe {
                    target: t,
                    since_ms: 5,
                    period: 1,
                }
                .key(),
                "v2/health/probe/openai/gpt-4o/5/1",
            ),
            (
                ByokKey {
                    key_id: "k",
                    provider: "openai",
                }
                .key(),
                "v1/byok/k/openai",
            ),
            (ColdStartKey("runpod").key(), "v1/coldstart/runpod"),
            (
                FeedbackClaim {
                    key_id: "key_1",
                    request_id: "req_ab",
                }
                .key(),
                "v1/feedback/claim/key_1/req_ab",
            ),
            (FeedbackSeq.key(), "v1/feedback/seq"),
            (FeedbackItem(4).key(), "v1/feedback/item/4"),
            (
                CacheSlot {
                    tenant: "t1",
                    hash: "ab",
                }
                .key(),
                "v1/cache/t1/ab",
            ),
            (
                CacheBytes {
                    tenant: "t1",
                    day: "2026-11-21",
                }
                .key(),
                "v1/cache-bytes/t1/2026-11-21",
            ),
            (ShadowSeq("s").key(), "v1/shadow/s/seq"),
            (
                ShadowSample { name: "s", slot: 3 }.key(),
                "v1/shadow/s/sample/3",
            ),
            (
                ShadowInflight {
                    name: "s",
                    minute: 60,
                }
                .key(),
                "v1/shadow/s/inflight/60",
            ),
            (
                ShadowSpent {
                    name: "s",
                    day: "2026-11-21",
                }
                .key(),
                "v1/shadow/s/spent/2026-11-21",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
