//! The log: one entry per settled request and per admin change. It is the usage record, the
//! audit chain and the source of every usage total, written with one `increment` and one `set`
//! per request, without compare-and-swap and without forking across replicas.
//!
//! **Appending.** `seq = increment(v2/log/seq)` hands each writer its own slot, then the entry is
//! written under `v2/log/entry/{seq}`. Two replicas can never take the same slot, so the chain
//! cannot fork; an entry is immutable once written.
//!
//! **Sealing.** Hashes are computed later, in order, by whoever finds complete blocks unsealed:
//! the request that takes the last slot of a block (after its response), and every reader of
//! totals, the head or the chain. For block `b` (entries `64·b+1 ..= 64·b+64`) the sealer reads
//! the 64 entries in one batch, chains `h_n = sha256(h_{n-1} ‖ canonical_json(entry_n))` from the
//! previous block's last hash, and writes `v2/log/block/{b}` with the 64 hashes and the block's
//! usage rows; every 64 blocks it also writes `v2/log/super/{s}`, the usage of 4,096 entries.
//! Sealing is deterministic, so two sealers at once write the same bytes: plain `set` is enough.
//! `GET /admin/audit/head` and `/verify` also seal the incomplete last block (rewritten whole
//! once it fills, its first hashes unchanged), so the head they return anchors every entry.
//!
//! **Lost slots.** A writer that died between its increment and its `set` leaves a hole. A hole
//! that a later entry shows to be older than [`VOID_AFTER_MS`] is filled with a void entry
//! (fixed content, so every sealer writes the same one) and sealed like any other; until then
//! sealing waits at the hole.
//!
//! **Tamper evidence.** [`verify`] recomputes every hash from genesis and compares it with the
//! sealed ones: the first entry whose content no longer matches is named.

use crate::contracts::Outcome;
use crate::store::{
    self as kv, Kv, KvError, LogBlockKey, LogEntryKey, LogSealed, LogSeq, LogSuperKey,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// Entries per block.
pub const BLOCK: u64 = 64;
/// Blocks per super-block.
pub const SUPER: u64 = 64;
/// A hole older than this (as later entries show) is a lost slot and is voided.
pub const VOID_AFTER_MS: u64 = 60_000;
/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A settled request.
    #[default]
    Request,
    /// An admin change.
    Admin,
    /// A lost slot, filled so the chain can go on.
    Void,
}

/// One entry, as stored and hashed. No prompt or response content, ever.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1-based position.
    pub seq: u64,
    /// What it records.
    pub kind: EntryKind,
    /// Unix ms: the request's arrival, or the admin change.
    pub time_ms: u64,
    /// Unix ms the entry was written (0 for a void entry).
    pub written_ms: u64,
    /// The request id, or what the admin change acted on.
    pub subject: String,
    /// The admin change (`key.create`, `tenant.put`, …); empty for requests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// API key id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// Tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Catalog model that served (or was last tried).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Provider.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Tokens were estimated.
    #[serde(default)]
    pub estimated: bool,
    /// Cost in nano-dollars.
    #[serde(default)]
    pub cost_nanos: i64,
    /// Gateway latency, ms.
    #[serde(default)]
    pub latency_ms: f64,
    /// Upstream time to headers, ms.
    #[serde(default)]
    pub upstream_ms: f64,
    /// Streamed.
    #[serde(default)]
    pub stream: bool,
    /// How a request ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Saved against the reference model, nano-dollars (negative: the served model cost more).
    /// Absent (0) on entries written before savings were recorded, so their hashes hold.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub saved_nanos: i64,
    /// The model `saved_nanos` is priced against.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference_model: String,
    /// The route that was taken: tier, score at routing time, cascade outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteRecord>,
    // Response cache, shadow and fusion (issue 14).
    /// `hit` (served from the response cache, cost 0) or `miss` (answered and cached).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache: String,
    /// On a cache hit: what the original answer cost, nano-dollars (what the hit saved).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_cost_nanos: i64,
    /// A shadow call: the experiment's name (`key_id` is then `shadow:<name>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow: String,
    /// Every upstream leg when there was more than one (fusion panel and synthesizer, a stream
    /// continued on a fallback), each at its own price.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<EntryLeg>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The routing decision a request's entry keeps, so feedback and training labels can join it
/// without another write on the request path. No content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRecord {
    /// Tier (`lumen/auto`, …); empty for pinned models and splits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
    /// The route's score at routing time: P(the cheapest eligible candidate falls short), 0..1,
    /// to three decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The quality floor applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    /// The quality-floor cascade was on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cascade: bool,
    /// Models whose answers the cascade checked and rejected, in order (label `escalated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated_from: Vec<String>,
    /// The served answer was checked by the cascade and kept (label `kept`); false when it was
    /// not checked (cascade off, or the plan's last candidate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

impl RouteRecord {
    /// Whether the cascade left a training label on this entry.
    pub fn has_cascade_label(&self) -> bool {
        self.kept || !self.escalated_from.is_empty()
    }
}

/// One upstream leg of a request, as logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryLeg {
    /// Catalog model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// `panel`, `synthesizer`, or empty for a leg of the answer itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost, nano-dollars.
    pub cost_nanos: i64,
}

impl Entry {
    /// The fixed content of a voided slot.
    pub fn void(seq: u64) -> Entry {
        Entry {
            seq,
            kind: EntryKind::Void,
            ..Entry::default()
        }
    }
}

/// Usage of one (key, day, model) within a block or super-block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// API key id.
    pub key_id: String,
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM-DD` (UTC) of arrival.
    pub day: String,
    /// Model.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Requests that did not end `ok`.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Cost, nano-dollars.
    pub cost_nanos: i64,
    /// Saved against the reference models, nano-dollars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub saved_nanos: i64,
    /// Requests that left a cascade label (how the feedback export finds them).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cascades: u64,
    /// Requests served from the response cache.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cache_hits: u64,
    /// What those hits saved, nano-dollars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_saved_nanos: i64,
    /// The entries (blocks only; how records are found without an index per key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
}

impl Row {
    fn add(&mut self, o: &Row) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cost_nanos += o.cost_nanos;
        self.saved_nanos += o.saved_nanos;
        self.cascades += o.cascades;
        self.cache_hits += o.cache_hits;
        self.cache_saved_nanos += o.cache_saved_nanos;
    }

    /// The row of one request entry.
    pub fn of(e: &Entry) -> Row {
        Row {
            key_id: e.key_id.clone(),
            tenant: e.tenant.clone(),
            day: crate::time::utc_day(e.time_ms),
            model: e.model.clone(),
            requests: 1,
            errors: u64::from(e.outcome != Some(Outcome::Ok)),
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            cached_tokens: e.cached_tokens,
            cost_nanos: e.cost_nanos,
            saved_nanos: e.saved_nanos,
            cascades: u64::from(e.route.as_ref().is_some_and(RouteRecord::has_cascade_label)),
            cache_hits: u64::from(e.cache == "hit"),
            cache_saved_nanos: if e.cache == "hit" {
                e.cached_cost_nanos
            } else {
                0
            },
            seqs: vec![e.seq],
        }
    }
}

/// Sums rows by (key, tenant, day, model), keeping the seqs when `keep_seqs`.
pub fn merge_rows<'a>(rows: impl IntoIterator<Item = &'a Row>, keep_seqs: bool) -> Vec<Row> {
    let mut by: BTreeMap<(String, String, String, String), Row> = BTreeMap::new();
    for r in rows {
        let k = (
            r.key_id.clone(),
            r.tenant.clone(),
            r.day.clone(),
            r.model.clone(),
        );
        let acc = by.entry(k).or_insert_with(|| Row {
            key_id: r.key_id.clone(),
            tenant: r.tenant.clone(),
            day: r.day.clone(),
            model: r.model.clone(),
            ..Row::default()
        });
        acc.add(r);
        if keep_seqs {
            acc.seqs.extend(&r.seqs);
        }
    }
    by.into_values().collect()
}

/// A sealed block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// Block number.
    pub block: u64,
    /// Chain hashes of its entries, in order (fewer than 64 while it is the incomplete last one).
    pub hashes: Vec<String>,
    /// Usage of its request entries.
    pub rows: Vec<Row>,
}

/// A sealed super-block: the usage of 64 blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Super {
    /// Super-block number.
    pub sup: u64,
    /// Usage rows (without seqs).
    pub rows: Vec<Row>,
}

/// The head of the chain (`GET /admin/audit/head`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Entries in the chain.
    pub seq: u64,
    /// Hash of the last entry ([`GENESIS`] when empty).
    pub hash: String,
}

/// JSON with object keys sorted (recursively) and no whitespace: the bytes that are hashed.
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and serde_json writes UTF-8.
    let _ = write_canonical(&mut out, v);
    String::from_utf8(out).unwrap_or_default()
}

/// [`canonical_json`] written to `out` as it is made: no string per key, value or member (the
/// log's sealing hashes 64 entries per block; building those strings was half of its time).
pub fn write_canonical<W: std::io::Write>(out: &mut W, v: &Value) -> std::io::Result<()> {
    match v {
        Value::Object(m) => {
            // serde_json's map is ordered already (no `preserve_order` in this build); sorting
            // anyway keeps the hash independent of that feature.
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.write_all(b"{")?;
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write_canonical(out, v)?;
            }
            out.write_all(b"}")
        }
        Value::Array(a) => {
            out.write_all(b"[")?;
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(out, v)?;
            }
            out.write_all(b"]")
        }
        other => Ok(serde_json::to_writer(out, other)?),
    }
}

/// `sha256(prev ‖ canonical_json(entry))`, hex.
pub fn chain_hash(prev: &str, e: &Entry) -> String {
    let v = serde_json::to_value(e).unwrap_or(Value::Null);
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    // Hashing cannot fail.
    let _ = write_canonical(&mut h, &v);
    hex::encode(h.finalize())
}

/// Takes a slot and writes `e` in it; returns the seq. One increment and one set.
pub fn append(store: &dyn Kv, mut e: Entry) -> Result<u64, KvError> {
    let seq = kv::incr(store, &LogSeq, 1)?;
    e.seq = seq as u64;
    write(store, &e)?;
    Ok(e.seq)
}

/// Writes an entry in its slot (again, after a failed write: same slot, same bytes).
pub fn write(store: &dyn Kv, e: &Entry) -> Result<(), KvError> {
    kv::store(store, &LogEntryKey(e.seq), e)
}

/// Whether `seq` ends a block (its writer seals after answering).
pub fn ends_block(seq: u64) -> bool {
    seq > 0 && seq.is_multiple_of(BLOCK)
}

fn block_range(b: u64) -> std::ops::RangeInclusive<u64> {
    b * BLOCK + 1..=b * BLOCK + BLOCK
}

/// Reads entries `seqs` in batches of [`BLOCK`].
pub fn entries(
    store: &dyn Kv,
    seqs: impl IntoIterator<Item = u64>,
) -> Result<Vec<(u64, Option<Entry>)>, KvError> {
    let seqs: Vec<u64> = seqs.into_iter().collect();
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(BLOCK as usize) {
        let keys: Vec<LogEntryKey> = chunk.iter().map(|&s| LogEntryKey(s)).collect();
        out.extend(chunk.iter().copied().zip(kv::load_many(store, &keys)?));
    }
    Ok(out)
}

/// Where sealing stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Slots handed out.
    pub head_seq: u64,
    /// Complete blocks sealed (entries `1 ..= 64·blocks` are sealed).
    pub blocks: u64,
    /// The last hash of the sealed blocks.
    pub hash: String,
}

/// The hash chained before block `b`, from the sealed block `b - 1`.
fn hash_before(store: &dyn Kv, b: u64) -> Result<Option<String>, KvError> {
    if b == 0 {
        return Ok(Some(GENESIS.to_string()));
    }
    Ok(kv::load(store, &LogBlockKey(b - 1))?
        .filter(|blk| blk.hashes.len() as u64 == BLOCK)
        .and_then(|blk| blk.hashes.last().cloned()))
}

/// Fills voidable holes of `got` (entries of `range`); false when a hole is still too young.
fn fill_holes(
    store: &dyn Kv,
    got: &mut [(u64, Option<Entry>)],
    head_seq: u64,
    now_ms: u64,
) -> Result<bool, KvError> {
    let old = |e: &Entry| e.written_ms + VOID_AFTER_MS <= now_ms;
    for i in 0..got.len() {
        if got[i].1.is_some() {
            continue;
        }
        let seq = got[i].0;
        // A later entry written long ago proves this slot was taken long ago.
        let mut proof = got[i + 1..].iter().flatten_entries().any(old);
        if !proof && seq < head_seq {
            let next = got.last().map_or(seq, |(s, _)| *s) + 1;
            if next <= head_seq {
                proof = kv::load(store, &LogEntryKey(next))?.is_some_and(|e| old(&e));
            }
        }
        if !proof {
            return Ok(false);
        }
        let void = Entry::void(seq);
        write(store, &void)?;
        got[i].1 = Some(void);
    }
    Ok(true)
}

trait FlattenEntries<'a> {
    fn flatten_entries(self) -> Box<dyn Iterator<Item = &'a Entry> + 'a>;
}

impl<'a, I: Iterator<Item = &'a (u64, Option<Entry>)> + 'a> FlattenEntries<'a> for I {
    fn flatten_entries(self) -> Box<dyn Iterator<Item = &'a Entry> + 'a> {
        Box::new(self.filter_map(|(_, e)| e.as_ref()))
    }
}

/// Chains `entries` from `prev`; returns the hashes.
fn chain(prev: &str, entries: &[(u64, Option<Entry>)]) -> Vec<String> {
    let mut prev = prev.to_string();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries.iter().flatten_entries() {
        prev = chain_hash(&prev, e);
        out.push(prev.clone());
    }
    out
}

fn block_of(b: u64, entries: &[(u64, Option<Entry>)], prev: &str) -> Block {
    let rows: Vec<Row> = entries
        .iter()
        .flatten_entries()
        .filter(|e| e.kind == EntryKind::Request)
        .map(Row::of)
        .collect();
    Block {
        block: b,
        hashes: chain(prev, entries),
        rows: merge_rows(&rows, true),
    }
}

/// Seals every complete block that can be sealed now (and, with `tail`, the incomplete last
/// one as far as its entries are contiguous). Idempotent; safe to run from any number of
/// instances at once.
pub fn seal(store: &dyn Kv, now_ms: u64, tail: bool) -> Result<Sealed, KvError> {
    let head_seq = kv::read_counter(store, &LogSeq)?.max(0) as u64;
    let full = head_seq / BLOCK;
    let mut b = kv::load(store, &LogSealed)?.unwrap_or(0).min(full);
    // The hint may run ahead of a block lost to a failed write: step back to a sealed one.
    let mut prev = loop {
        match hash_before(store, b)? {
            Some(h) => break h,
            None => b -= 1,
        }
    };
    let hint = b;
    while b < full {
        if let Some(blk) = kv::load(store, &LogBlockKey(b))? {
            if blk.hashes.len() as u64 == BLOCK {
                prev = blk.hashes.last().cloned().unwrap_or_default();
                b += 1;
                continue;
            }
        }
        let mut got = entries(store, block_range(b))?;
        if !fill_holes(store, &mut got, head_seq, now_ms)? {
            break;
        }
        let blk = block_of(b, &got, &prev);
        kv::store(store, &LogBlockKey(b), &blk)?;
        prev = blk.hashes.last().cloned().unwrap_or_default();
        b += 1;
        if b.is_multiple_of(SUPER) {
            seal_super(store, b / SUPER - 1)?;
        }
    }
    if b > hint {
        kv::store(store, &LogSealed, &b)?;
    }
    if tail && b == full && head_seq > full * BLOCK {
        let got = entries(store, full * BLOCK + 1..=head_seq)?;
        let contiguous: Vec<(u64, Option<Entry>)> =
            got.into_iter().take_while(|(_, e)| e.is_some()).collect();
        if !contiguous.is_empty() {
            let existing = kv::load(store, &LogBlockKey(full))?;
            let blk = block_of(full, &contiguous, &prev);
            // Never shorten or rewrite what an earlier seal anchored: a longer seal whose
            // first hashes differ means an entry changed, which verify reports.
            let extends = existing.as_ref().is_none_or(|old| {
                old.hashes.len() < blk.hashes.len() && blk.hashes.starts_with(&old.hashes)
            });
            if extends {
                kv::store(store, &LogBlockKey(full), &blk)?;
            }
        }
    }
    Ok(Sealed {
        head_seq,
        blocks: b,
        hash: prev,
    })
}

fn seal_super(store: &dyn Kv, s: u64) -> Result<(), KvError> {
    let keys: Vec<LogBlockKey> = (s * SUPER..s * SUPER + SUPER).map(LogBlockKey).collect();
    let blocks = kv::load_many(store, &keys)?;
    let rows: Vec<Row> = blocks
        .iter()
        .flatten()
        .flat_map(|b| b.rows.iter())
        .cloned()
        .collect();
    kv::store(
        store,
        &LogSuperKey(s),
        &Super {
            sup: s,
            rows: merge_rows(&rows, false),
        },
    )
}

/// The head: seals what it can (the incomplete last block too), then the last contiguous
/// entry's seq and hash.
pub fn head(store: &dyn Kv, now_ms: u64) -> Result<Head, KvError> {
    let s = seal(store, now_ms, true)?;
    if let Some(tail) = kv::load(store, &LogBlockKey(s.blocks))? {
        if let Some(h) = tail.hashes.last() {
            return Ok(Head {
                seq: s.blocks * BLOCK + tail.hashes.len() as u64,
                hash: h.clone(),
            });
        }
    }
    Ok(Head {
        seq: s.blocks * BLOCK,
        hash: s.hash,
    })
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verification {
    /// True when every sealed hash matches its entry.
    pub ok: bool,
    /// The head verified up to.
    pub head: Head,
    /// Entries checked.
    pub checked: u64,
    /// The lowest broken link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<BrokenLink>,
}

/// A link that does not hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BrokenLink {
    /// The entry's seq.
    pub seq: u64,
    /// The hash sealed for it.
    pub hash: String,
    /// What is wrong.
    pub reason: String,
}

/// Seals what it can, then recomputes every hash from genesis and compares it with the sealed
/// ones, naming the lowest entry that no longer matches (or is missing).
pub fn verify(store: &dyn Kv, now_ms: u64) -> Result<Verification, KvError> {
    let head = head(store, now_ms)?;
    let mut prev = GENESIS.to_string();
    let mut checked = 0;
    let blocks = head.seq.div_ceil(BLOCK);
    for b in 0..blocks {
        let sealed = kv::load(store, &LogBlockKey(b))?.unwrap_or_default();
        let last = (b * BLOCK + BLOCK).min(head.seq);
        let got = entries(store, b * BLOCK + 1..=last)?;
        for (i, (seq, e)) in got.iter().enumerate() {
            let want = sealed.hashes.get(i).cloned().unwrap_or_default();
            let broken = |reason: &str| BrokenLink {
                seq: *seq,
                hash: want.clone(),
                reason: reason.to_string(),
            };
            let Some(e) = e else {
                return Ok(Verification {
                    ok: false,
                    head,
                    checked,
                    first_broken: Some(broken("entry is missing")),
                });
            };
            let fail = if e.seq != *seq {
                Some(broken(&format!(
                    "entry says seq {} where {seq} was expected",
                    e.seq
                )))
            } else if chain_hash(&prev, e) != want {
                Some(broken("entry content does not match its sealed hash"))
            } else {
                None
            };
            if fail.is_some() {
                return Ok(Verification {
                    ok: false,
                    head,
                    checked,
                    first_broken: fail,
                });
            }
            prev = want;
            checked += 1;
        }
    }
    Ok(Verification {
        ok: true,
        head,
        checked,
        first_broken: None,
    })
}

/// Request rows of everything logged so far, from the widest sealed summaries: super-blocks,
/// then blocks, then the entries after the last sealed block. Seals first.
pub fn rows(store: &dyn Kv, now_ms: u64) -> Result<Vec<Row>, KvError> {
    let s = seal(store, now_ms, false)?;
    let supers = s.blocks / SUPER;
    let mut out = Vec::new();
    let keys: Vec<LogSuperKey> = (0..supers).map(LogSuperKey).collect();
    for chunk in keys.chunks(BLOCK as usize) {
        for sup in kv::load_many(store, chunk)?.into_iter().flatten() {
            out.extend(sup.rows);
        }
    }
    let keys: Vec<LogBlockKey> = (supers * SUPER..s.blocks).map(LogBlockKey).collect();
    for blk in kv::load_many(store, &keys)?.into_iter().flatten() {
        out.extend(blk.rows);
    }
    for e in entries(store, s.blocks * BLOCK + 1..=s.head_seq)?
        .iter()
        .flatten_entries()
        .filter(|e| e.kind == EntryKind::Request)
    {
        out.push(Row::of(e));
    }
    Ok(out)
}

/// The newest request entries of the keys `want` accepts, newest first, at most `limit`; reads
/// only the blocks whose rows name a matching key.
pub fn newest(
    store: &dyn Kv,
    now_ms: u64,
    want: &dyn Fn(&str) -> bool,
    limit: usize,
) -> Result<Vec<Entry>, KvError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    walk_newest(store, now_ms, &|r| want(&r.key_id), &mut |e| {
        out.push(e.clone());
        if out.len() >= limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(out)
}

/// Walks request entries newest first, calling `visit` on each whose row `want` accepts until
/// it breaks: the unsealed tail, then the sealed blocks, reading only the entries of accepted
/// rows (a block's rows list their seqs) and skipping a whole super-block whose rows `want`
/// rejects in one read. Seals first.
pub fn walk_newest(
    store: &dyn Kv,
    now_ms: u64,
    want: &dyn Fn(&Row) -> bool,
    visit: &mut dyn FnMut(&Entry) -> ControlFlow<()>,
) -> Result<(), KvError> {
    let s = seal(store, now_ms, false)?;
    let lo = s.blocks * BLOCK + 1;
    let mut hi = s.head_seq;
    while hi >= lo {
        let from = hi.saturating_sub(BLOCK - 1).max(lo);
        for (_, e) in entries(store, from..=hi)?.iter().rev() {
            let Some(e) = e.as_ref().filter(|e| e.kind == EntryKind::Request) else {
                continue;
            };
            if want(&Row::of(e)) && visit(e).is_break() {
                return Ok(());
            }
        }
        hi = from - 1;
    }
    let mut b = s.blocks;
    while b > 0 {
        let sup_start = (b - 1) / SUPER * SUPER;
        if b == sup_start + SUPER {
            let has = kv::load(store, &LogSuperKey(sup_start / SUPER))?
                .is_none_or(|sup| sup.rows.iter().any(want));
            if !has {
                b = sup_start;
                continue;
            }
        }
        let keys: Vec<LogBlockKey> = (sup_start..b).map(LogBlockKey).collect();
        let mut seqs: Vec<u64> = kv::load_many(store, &keys)?
            .into_iter()
            .flatten()
            .flat_map(|blk| blk.rows)
            .filter(|r| want(r))
            .flat_map(|r| r.seqs)
            .collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        for chunk in seqs.chunks(BLOCK as usize) {
            for (_, e) in entries(store, chunk.iter().copied())? {
                if let Some(e) = e {
                    if visit(&e).is_break() {
                        return Ok(());
                    }
                }
            }
        }
        b = sup_start;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn req(key: &str, t: u64, cost: i64) -> Entry {
        Entry {
            kind: EntryKind::Request,
            time_ms: t,
            written_ms: t,
            subject: format!("req_{t}"),
            key_id: key.into(),
            tenant: key.into(),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            prompt_tokens: 3,
            completion_tokens: 5,
            cost_nanos: cost,
            outcome: Some(Outcome::Ok),
            ..Entry::default()
        }
    }

    const T: u64 = 1_800_000_000_000;

    #[test]
    fn appending_is_one_increment_and_one_set() {
        let kv = MemKv::default();
        let before = kv.ops();
        assert_eq!(append(&kv, req("k", T, 1)).unwrap(), 1);
        assert_eq!(kv.ops().1 - before.1, 2);
        assert_eq!(kv.ops().0, before.0);
        assert!(!ends_block(1) && ends_block(64) && ends_block(128));
    }

    #[test]
    fn blocks_seal_in_order_and_sum_usage() {
        let kv = MemKv::default();
        for i in 0..200u64 {
            let key = if i % 2 == 0 { "a" } else { "b" };
            append(&kv, req(key, T + i, 10)).unwrap();
        }
        let s = seal(&kv, T + 1_000, false).unwrap();
        assert_eq!((s.head_seq, s.blocks), (200, 3));
        // The hashes chain from genesis through every entry.
        let mut prev = GENESIS.to_string();
        for (seq, e) in entries(&kv, 1..=192).unwrap() {
            prev = chain_hash(&prev, &e.unwrap());
            let blk = kv::load(&kv, &LogBlockKey((seq - 1) / BLOCK))
                .unwrap()
                .unwrap();
            assert_eq!(blk.hashes[((seq - 1) % BLOCK) as usize], prev);
        }
        assert_eq!(s.hash, prev);
        let rows = rows(&kv, T + 1_000).unwrap();
        let a: u64 = rows
            .iter()
            .filter(|r| r.key_id == "a")
            .map(|r| r.requests)
            .sum();
        let cost: i64 = rows.iter().map(|r| r.cost_nanos).sum();
        assert_eq!((a, cost), (100, 2000));
        // Sealing again changes nothing and writes nothing but reads.
        let before = kv.ops().1;
        assert_eq!(seal(&kv, T + 2_000, false).unwrap(), s);
        assert_eq!(kv.ops().1, before);
    }

    #[test]
    fn super_blocks_cover_4096_entries() {
        let kv = MemKv::default();
        for i in 0..(BLOCK * SUPER + 10) {
            append(&kv, req("a", T + i, 1)).unwrap();
        }
        let s = seal(&kv, T + 10_000_000, false).unwrap();
        assert_eq!(s.blocks, SUPER);
        let sup = kv::load(&kv, &LogSuperKey(0)).unwrap().unwrap();
        assert_eq!(
            sup.rows.iter().map(|r| r.requests).sum::<u64>(),
            BLOCK * SUPER
        );
        let total: u64 = rows(&kv, T + 10_000_000)
            .unwrap()
            .iter()
            .map(|r| r.requests)
            .sum();
        assert_eq!(total, BLOCK * SUPER + 10);
        let newest = newest(&kv, T + 10_000_000, &|k| k == "a", 70).unwrap();
        assert_eq!(newest.len(), 70);
        assert_eq!(newest[0].seq, BLOCK * SUPER + 10);
        assert!(newest.windows(2).all(|w| w[0].seq > w[1].seq));
    }

    #[test]
    fn a_young_hole_waits_and_an_old_one_is_voided() {
        let kv = MemKv::default();
        for i in 0..64u64 {
            if i == 10 {
                // The writer of slot 11 took its slot and died.
                kv::incr(&kv, &LogSeq, 1).unwrap();
                continue;
            }
            append(&kv, req("a", T + i, 1)).unwrap();
        }
        assert_eq!(seal(&kv, T + 100, false).unwrap().blocks, 0);
        let s = seal(&kv, T + 64 + VOID_AFTER_MS, false).unwrap();
        assert_eq!(s.blocks, 1);
        let hole = kv::load(&kv, &LogEntryKey(11)).unwrap().unwrap();
        assert_eq!(hole, Entry::void(11));
        let v = verify(&kv, T + 64 + VOID_AFTER_MS).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.checked, 64);
    }

    #[test]
    fn two_writers_never_fork_and_sealers_agree() {
        let kv = std::sync::Arc::new(MemKv::default());
        let hs: Vec<_> = (0..4)
            .map(|w| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        append(&*kv, req(&format!("k{w}"), T + i, 1)).unwrap();
                        if i % 16 == 0 {
                            seal(&*kv, T + 100, false).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let v = verify(&*kv, T + 100).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.head.seq, 200);
        let seqs: std::collections::BTreeSet<u64> = entries(&*kv, 1..=200)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.unwrap().seq)
            .collect();
        assert_eq!(seqs.len(), 200);
    }

    #[test]
    fn verify_names_the_tampered_entry_sealed_or_anchored() {
        let kv = MemKv::default();
        for i in 0..70u64 {
            append(&kv, req("a", T + i, 7)).unwrap();
        }
        // The head anchors the incomplete last block too.
        let h = head(&kv, T + 100).unwrap();
        assert_eq!(h.seq, 70);
        assert!(verify(&kv, T + 100).unwrap().ok);
        for seq in [3u64, 67] {
            let mut e = kv::load(&kv, &LogEntryKey(seq)).unwrap().unwrap();
            let orig = e.clone();
            e.cost_nanos = 0;
            write(&kv, &e).unwrap();
            let v = verify(&kv, T + 100).unwrap();
            assert!(!v.ok);
            let broken = v.first_broken.unwrap();
            assert_eq!(broken.seq, seq);
            assert_eq!(
                broken.reason,
                "entry content does not match its sealed hash"
            );
            write(&kv, &orig).unwrap();
        }
        assert!(verify(&kv, T + 100).unwrap().ok);
    }

    /// The form the log's hashes were first made with (a string per member, joined): what
    /// [`write_canonical`] must keep writing byte for byte, or sealed blocks stop verifying.
    fn canonical_by_strings(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let parts: Vec<String> = keys
                    .into_iter()
                    .map(|k| {
                        format!(
                            "{}:{}",
                            Value::String(k.clone()),
                            canonical_by_strings(&m[k])
                        )
                    })
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
            Value::Array(a) => format!(
                "[{}]",
                a.iter()
                    .map(canonical_by_strings)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => other.to_string(),
        }
    }

    #[test]
    fn canonical_json_is_the_form_the_chain_was_made_with() {
        let v = serde_json::json!({
            "zeta": [1, -2, 3.5, 1e300, 0.1, u64::MAX, i64::MIN, null, true, false],
            "a\"quoted\"\\key\n": {"é": "ünï\u{1F600}\u{7}", "": [], "b": {}},
            "A": "tab\there",
            "mid": [{"y": 1, "x": [{"d": 0, "c": null}]}],
        });
        assert_eq!(canonical_json(&v), canonical_by_strings(&v));
        let entry = Entry {
            seq: 7,
            key_id: "key_\"1\"".into(),
            ..Entry::default()
        };
        let want = {
            let mut h = Sha256::new();
            h.update(b"prev");
            h.update(canonical_by_strings(&serde_json::to_value(&entry).unwrap()).as_bytes());
            hex::encode(h.finalize())
        };
        assert_eq!(chain_hash("prev", &entry), want);
    }

    #[test]
    fn canonical_json_sorts_keys_without_whitespace() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": "x"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x","d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }
}
