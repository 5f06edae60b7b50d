//! Cold starts of scale-to-zero backends: observed once per request that waited for one, kept in
//! KV per provider (`v1/coldstart/{provider}`), shown in `x-lumen-cold-start-ms`, and readable by
//! the router to prefer a warm backend.

use crate::store::{self as kv, ColdStartKey, Kv, KvError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What was seen of a provider's cold starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColdStartStats {
    /// The last observed wait, ms (submit → a worker took the job).
    pub last_ms: u64,
    /// The longest observed wait, ms.
    pub max_ms: u64,
    /// Observations recorded (last writer wins under concurrency: an approximate count).
    pub samples: u64,
    /// Unix ms of the last observation.
    pub observed_at_ms: u64,
}

/// Records one observed cold start.
pub fn record(
    store: &dyn Kv,
    provider: &str,
    waited_ms: u64,
    now_ms: u64,
) -> Result<ColdStartStats, KvError> {
    let mut s = kv::load(store, &ColdStartKey(provider))?.unwrap_or_default();
    s.last_ms = waited_ms;
    s.max_ms = s.max_ms.max(waited_ms);
    s.samples += 1;
    s.observed_at_ms = now_ms;
    kv::store(store, &ColdStartKey(provider), &s)?;
    Ok(s)
}

/// The provider's stats, if any cold start was seen.
pub fn last(store: &dyn Kv, provider: &str) -> Result<Option<ColdStartStats>, KvError> {
    kv::load(store, &ColdStartKey(provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    #[test]
    fn records_last_and_max() {
        let store = MemKv::default();
        assert_eq!(last(&store, "q").unwrap(), None);
        record(&store, "q", 3000, 10).unwrap();
        let s = record(&store, "q", 1200, 20).unwrap();
        assert_eq!(
            s,
            ColdStartStats {
                last_ms: 1200,
                max_ms: 3000,
                samples: 2,
                observed_at_ms: 20
            }
        );
        assert!(
            store.get("v1/coldstart/q").unwrap().is_some(),
            "the key is pinned"
        );
        assert_eq!(last(&store, "other").unwrap(), None);
    }
}
