//! The response cache in the store: one `get` to look an answer up, and after a miss one
//! `increment` (the tenant's daily byte count, given back when it passes the cap) and one `set`
//! to write it. No compare-and-swap: an entry is written whole, last writer wins (two identical
//! misses at once both call upstream and both write; either answer is a valid one). Expiry is
//! the time stored in the entry, checked on every lookup; an expired entry is overwritten by the
//! next miss of the same request.

use crate::domain::cache::{CacheEntry, Use};
use crate::store::{self as kv, CacheBytes, CacheSlot, Kv, KvError};

/// Looks an answer up: `Some` only for an entry still fresh for a request accepting entries up
/// to `ttl_s` old. One `get`.
pub fn lookup(
    store: &dyn Kv,
    tenant: &str,
    hash: &str,
    now_ms: u64,
    ttl_s: u64,
) -> Result<Option<CacheEntry>, KvError> {
    let Some(bytes) = store.get(&kv::Family::key(&CacheSlot { tenant, hash }))? else {
        return Ok(None);
    };
    // A value written by another version is a miss, not an error.
    let entry: Option<CacheEntry> = serde_json::from_slice(&bytes).ok();
    Ok(entry.filter(|e| e.fresh(now_ms, ttl_s)))
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Written.
    Stored(u64),
    /// Larger than the entry cap: not written (no operation).
    TooLarge(u64),
    /// The tenant's daily cap is reached: not written.
    OverTenantCap(u64),
}

/// Writes an entry after a miss, within the entry and tenant caps.
pub fn fill(
    store: &dyn Kv,
    tenant: &str,
    hash: &str,
    entry: &CacheEntry,
    caps: &Use,
    now_ms: u64,
) -> Result<Filled, KvError> {
    let bytes = serde_json::to_vec(entry).map_err(|e| KvError(e.to_string()))?;
    let size = bytes.len() as u64;
    if size > caps.max_entry_bytes {
        return Ok(Filled::TooLarge(size));
    }
    let day = crate::time::utc_day(now_ms);
    let counter = CacheBytes { tenant, day: &day };
    let written = kv::incr(store, &counter, size as i64)?;
    if written > caps.tenant_bytes_per_day as i64 {
        kv::incr(store, &counter, -(size as i64))?;
        return Ok(Filled::OverTenantCap(size));
    }
    store.set(&kv::Family::key(&CacheSlot { tenant, hash }), &bytes)?;
    Ok(Filled::Stored(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cache::Stored;
    use crate::store::MemKv;
    use crate::wire::openai::Usage;

    const NOW: u64 = 1_800_000_000_000;

    fn entry(text: &str) -> CacheEntry {
        CacheEntry {
            created_ms: NOW,
            expires_ms: NOW + 60_000,
            model: "m".into(),
            provider: "p".into(),
            usage: Usage::default(),
            cost_nanos: 5,
            body: Stored::Whole(text.into()),
        }
    }

    fn caps(entry: u64, tenant: u64) -> Use {
        Use {
            lookup: true,
            ttl_s: 60,
            max_entry_bytes: entry,
            tenant_bytes_per_day: tenant,
        }
    }

    #[test]
    fn a_fill_is_one_increment_and_one_set_and_a_lookup_one_get() {
        let kv = MemKv::default();
        assert_eq!(lookup(&kv, "t", "h", NOW, 60).unwrap(), None);
        assert_eq!(kv.ops(), (1, 0));
        let e = entry("{}");
        assert!(matches!(
            fill(&kv, "t", "h", &e, &caps(1 << 20, 1 << 20), NOW).unwrap(),
            Filled::Stored(_)
        ));
        assert_eq!(kv.ops(), (1, 2));
        assert_eq!(lookup(&kv, "t", "h", NOW + 1, 60).unwrap(), Some(e.clone()));
        // Another tenant never sees it; it expires with its time.
        assert_eq!(lookup(&kv, "u", "h", NOW + 1, 60).unwrap(), None);
        assert_eq!(lookup(&kv, "t", "h", NOW + 60_000, 600).unwrap(), None);
        // A request accepting younger entries only does not get it either.
        assert_eq!(lookup(&kv, "t", "h", NOW + 20_000, 10).unwrap(), None);
    }

    #[test]
    fn caps_per_entry_and_per_tenant_day() {
        let kv = MemKv::default();
        let e = entry(&"x".repeat(100));
        let size = serde_json::to_vec(&e).unwrap().len() as u64;
        assert_eq!(
            fill(&kv, "t", "h", &e, &caps(size - 1, 1 << 20), NOW).unwrap(),
            Filled::TooLarge(size)
        );
        assert_eq!(kv.ops(), (0, 0));
        let c = caps(size, size * 2);
        assert!(matches!(
            fill(&kv, "t", "a", &e, &c, NOW).unwrap(),
            Filled::Stored(_)
        ));
        assert!(matches!(
            fill(&kv, "t", "b", &e, &c, NOW).unwrap(),
            Filled::Stored(_)
        ));
        assert_eq!(
            fill(&kv, "t", "c", &e, &c, NOW).unwrap(),
            Filled::OverTenantCap(size)
        );
        assert_eq!(lookup(&kv, "t", "c", NOW, 60).unwrap(), None);
        // The refused bytes were given back; another tenant has its own cap; so has the next day.
        let day = crate::time::utc_day(NOW);
        let counter = CacheBytes {
            tenant: "t",
            day: &day,
        };
        assert_eq!(kv::read_counter(&kv, &counter).unwrap(), (size * 2) as i64);
        assert!(matches!(
            fill(&kv, "u", "c", &e, &c, NOW).unwrap(),
            Filled::Stored(_)
        ));
        assert!(matches!(
            fill(&kv, "t", "c", &e, &c, NOW + 86_400_000).unwrap(),
            Filled::Stored(_)
        ));
    }
}
