//! The audit chain: every settled request and every admin action appends one entry, each entry
//! naming the hash of the one before, `hash = sha256(prev_hash ‖ canonical_json(entry))` (hex).
//!
//! Fork-proof across instances and crash-safe:
//! 1. the entry is written first, content-addressed (`v1/audit/entry/{hash}`);
//! 2. then the head record `{seq, hash}` is advanced by compare-and-swap from the head the entry
//!    was built on. A loser of the race deletes its entry and rebuilds on the new head, so two
//!    entries can never share a `seq` in the chain;
//! 3. then the `seq → hash` index is written (a convenience; the chain does not need it).
//!
//! A process killed between 1 and 2 leaves an unreferenced entry and an intact chain; killed
//! between 2 and 3 leaves an intact chain with one index entry missing. Entries hold ids, model,
//! tokens, cost and outcome only, never prompt or response content (Lumen stores no content for
//! any key, so zero-retention keys have nothing to omit).

use crate::kv::{self, AuditEntryKey, AuditHeadKey, AuditSeqKey, Kv, KvError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Compare-and-swap attempts before an append gives up (each loser rebuilds on the new head).
pub const MAX_ATTEMPTS: usize = 1000;

/// Tokens of an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditTokens {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
}

/// One entry, as hashed and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// 1-based position in the chain.
    pub seq: u64,
    /// Unix ms.
    pub time: u64,
    /// `request` for a settled request, `admin.<action>` for an admin action.
    pub kind: String,
    /// The request id, or what the admin action acted on.
    pub subject: String,
    /// API key id (empty for admin actions on tenants).
    pub key_id: String,
    /// Model (empty when none).
    pub model: String,
    /// Provider (empty when none).
    pub provider: String,
    /// Tokens.
    pub tokens: AuditTokens,
    /// Cost in nano-dollars.
    pub cost: i64,
    /// Outcome (`ok`, `upstream_error`, ..., or `done` for admin actions).
    pub outcome: String,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev: String,
}

/// What an append is about (the chain fills in `seq` and `prev`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// See [`AuditEntry::time`].
    pub time: u64,
    /// See [`AuditEntry::kind`].
    pub kind: String,
    /// See [`AuditEntry::subject`].
    pub subject: String,
    /// See [`AuditEntry::key_id`].
    pub key_id: String,
    /// See [`AuditEntry::model`].
    pub model: String,
    /// See [`AuditEntry::provider`].
    pub provider: String,
    /// See [`AuditEntry::tokens`].
    pub tokens: AuditTokens,
    /// See [`AuditEntry::cost`].
    pub cost: i64,
    /// See [`AuditEntry::outcome`].
    pub outcome: String,
}

/// The head of the chain: the last entry's seq and hash (`GET /admin/audit/head`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    /// Entries in the chain.
    pub seq: u64,
    /// Hash of the last entry ([`GENESIS`] when empty).
    pub hash: String,
}

/// JSON with object keys sorted (recursively) and no whitespace: the bytes that are hashed.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&m[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// `sha256(prev ‖ canonical_json(entry))`, hex; `prev` is the entry's own `prev` field.
pub fn entry_hash(e: &AuditEntry) -> String {
    let v = serde_json::to_value(e).unwrap_or(Value::Null);
    let mut h = Sha256::new();
    h.update(e.prev.as_bytes());
    h.update(canonical_json(&v).as_bytes());
    hex::encode(h.finalize())
}

fn read_head(store: &dyn Kv) -> Result<(Option<Vec<u8>>, AuditHead), KvError> {
    let raw = store.get(&kv::Family::key(&AuditHeadKey))?;
    let head = match &raw {
        None => AuditHead {
            seq: 0,
            hash: GENESIS.into(),
        },
        Some(b) => {
            serde_json::from_slice(b).map_err(|e| KvError(format!("corrupt audit head: {e}")))?
        }
    };
    Ok((raw, head))
}

/// The current head.
pub fn head(store: &dyn Kv) -> Result<AuditHead, KvError> {
    read_head(store).map(|(_, h)| h)
}

/// Appends one entry; returns it and its hash.
pub fn append(store: &dyn Kv, ev: &AuditEvent) -> Result<(AuditEntry, String), KvError> {
    for _ in 0..MAX_ATTEMPTS {
        let (raw, head) = read_head(store)?;
        let entry = AuditEntry {
            seq: head.seq + 1,
            time: ev.time,
            kind: ev.kind.clone(),
            subject: ev.subject.clone(),
            key_id: ev.key_id.clone(),
            model: ev.model.clone(),
            provider: ev.provider.clone(),
            tokens: ev.tokens,
            cost: ev.cost,
            outcome: ev.outcome.clone(),
            prev: head.hash.clone(),
        };
        let hash = entry_hash(&entry);
        kv::store(store, &AuditEntryKey(&hash), &entry)?;
        let next = serde_json::to_vec(&AuditHead {
            seq: entry.seq,
            hash: hash.clone(),
        })
        .map_err(|e| KvError(e.to_string()))?;
        if store.compare_and_swap(&kv::Family::key(&AuditHeadKey), raw.as_deref(), &next)? {
            kv::store(store, &AuditSeqKey(entry.seq), &hash)?;
            return Ok((entry, hash));
        }
        // Lost the race: this entry will never be referenced.
        kv::remove(store, &AuditEntryKey(&hash))?;
    }
    Err(KvError(format!(
        "audit head still contended after {MAX_ATTEMPTS} attempts"
    )))
}

/// `GET /admin/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Verification {
    /// True when every link from the head back to genesis holds.
    pub ok: bool,
    /// The head that was verified.
    pub head: AuditHead,
    /// Entries checked.
    pub checked: u64,
    /// The lowest broken link, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<BrokenLink>,
}

/// A link that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BrokenLink {
    /// The entry's seq.
    pub seq: u64,
    /// The hash the chain expects for it.
    pub hash: String,
    /// What is wrong.
    pub reason: String,
}

/// Re-walks the chain from the head to genesis, recomputing every hash. Keeps walking past a
/// tampered entry (by its stored `prev`) so the lowest broken link is the one named.
pub fn verify(store: &dyn Kv) -> Result<Verification, KvError> {
    let head = head(store)?;
    let mut want_hash = head.hash.clone();
    let mut want_seq = head.seq;
    let mut checked = 0;
    let mut broken: Option<BrokenLink> = None;
    fn note(broken: &mut Option<BrokenLink>, seq: u64, hash: &str, reason: String) {
        *broken = Some(BrokenLink {
            seq,
            hash: hash.to_string(),
            reason,
        });
    }
    while want_seq > 0 {
        let entry = match store.get(&kv::Family::key(&AuditEntryKey(&want_hash)))? {
            None => {
                note(&mut broken, want_seq, &want_hash, "entry is missing".into());
                break;
            }
            Some(bytes) => match serde_json::from_slice::<AuditEntry>(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    note(
                        &mut broken,
                        want_seq,
                        &want_hash,
                        format!("entry is not a valid audit entry: {e}"),
                    );
                    break;
                }
            },
        };
        checked += 1;
        if entry.seq != want_seq {
            note(
                &mut broken,
                want_seq,
                &want_hash,
                format!("entry says seq {} where {want_seq} was expected", entry.seq),
            );
        } else if entry_hash(&entry) != want_hash {
            note(
                &mut broken,
                want_seq,
                &want_hash,
                "entry content does not match its hash".into(),
            );
        }
        want_hash = entry.prev;
        want_seq -= 1;
    }
    if broken.is_none() && want_seq == 0 && want_hash != GENESIS {
        note(
            &mut broken,
            1,
            &want_hash,
            "the first entry does not start at genesis".into(),
        );
    }
    Ok(Verification {
        ok: broken.is_none(),
        head,
        checked,
        first_broken: broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemKv;

    fn ev(n: u64) -> AuditEvent {
        AuditEvent {
            time: 1_800_000_000_000 + n,
            kind: "request".into(),
            subject: format!("req_{n}"),
            key_id: "key_a".into(),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            tokens: AuditTokens {
                prompt: 10,
                completion: n,
            },
            cost: 42,
            outcome: "ok".into(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_without_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, "x"], "c": null}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn hash_is_sha256_of_prev_and_canonical_json() {
        let kv = MemKv::default();
        let (e, h) = append(&kv, &ev(1)).unwrap();
        assert_eq!(e.prev, GENESIS);
        let v = serde_json::to_value(&e).unwrap();
        let expect = hex::encode(Sha256::digest(
            format!("{GENESIS}{}", canonical_json(&v)).as_bytes(),
        ));
        assert_eq!(h, expect);
        let (e2, h2) = append(&kv, &ev(2)).unwrap();
        assert_eq!((e2.seq, e2.prev.as_str()), (2, h.as_str()));
        assert_eq!(head(&kv).unwrap(), AuditHead { seq: 2, hash: h2 });
    }

    #[test]
    fn verify_names_the_tampered_entry() {
        let kv = MemKv::default();
        let hashes: Vec<String> = (1..=5).map(|n| append(&kv, &ev(n)).unwrap().1).collect();
        let v = verify(&kv).unwrap();
        assert!(v.ok && v.checked == 5, "{v:?}");
        // Tamper with entry 3's cost, keeping it at its key.
        let key = kv::Family::key(&AuditEntryKey(&hashes[2]));
        let mut e: AuditEntry = serde_json::from_slice(&kv.get(&key).unwrap().unwrap()).unwrap();
        e.cost = 1;
        kv.set(&key, &serde_json::to_vec(&e).unwrap()).unwrap();
        let v = verify(&kv).unwrap();
        assert!(!v.ok);
        let b = v.first_broken.unwrap();
        assert_eq!((b.seq, b.hash.as_str()), (3, hashes[2].as_str()));
        // A deleted entry is named too.
        kv.delete(&kv::Family::key(&AuditEntryKey(&hashes[1])))
            .unwrap();
        let b = verify(&kv).unwrap().first_broken.unwrap();
        assert_eq!((b.seq, b.reason.as_str()), (2, "entry is missing"));
    }

    /// Many appenders interleaving on one store never fork: the chain has every entry once.
    #[test]
    fn concurrent_appends_do_not_fork() {
        let kv = std::sync::Arc::new(MemKv::default());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        append(kv.as_ref(), &ev(t * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let v = verify(kv.as_ref()).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.head.seq, v.checked), (200, 200));
        let entries = kv
            .keys()
            .iter()
            .filter(|k| k.starts_with("v1/audit/entry/"))
            .count();
        assert_eq!(entries, 200, "losers' entries are removed");
    }
}
