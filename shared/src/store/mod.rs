//! The key-value store: the [`Kv`] trait the cores take, typed access to the key families of
//! [`keys`], and (in submodules) every operation on state that outlives a request.
//!
//! Built on what every Spin store does exactly, across instances and replicas: atomic
//! `increment`, and plain `get` / `set` / `delete`. There is no compare-and-swap (Spin's Redis
//! store reports every swap as failed after writing it; its SQLite store loses updates when the
//! key does not exist yet): counters, limits, holds and sequence numbers are increments; records
//! that several writers may touch are written whole, last writer wins, where that is harmless
//! (health averages), or are immutable once written (log entries, sealed blocks).
//!
//! Every operation is a round trip on Spin's SQLite and Redis stores, so each request's count is
//! kept small and tested (`tests/tests/kv_ops.rs`); reads that repeat go in one
//! [`Kv::get_many`].

pub mod apikeys;
pub mod byok;
pub mod cache;
pub mod coldstart;
pub mod feedback;
pub mod health;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod shadow;
pub mod usage;

pub use keys::*;

use serde::de::DeserializeOwned;
use serde::Serialize;
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

/// The store operations cores need; implemented over Spin KV in components and in memory for
/// tests.
pub trait Kv {
    /// Reads a value.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Writes a value.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes a value (absent is fine).
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Atomically adds `delta` to a counter (absent = 0) and returns the new value.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Reads several values in one round trip (`wasi:keyvalue/batch`), in the order asked.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
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

/// Decodes a stored value of `key`.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, KvError> {
    serde_json::from_slice(bytes).map_err(|e| KvError(format!("corrupt value at {key}: {e}")))
}

/// Reads a typed value.
pub fn load<F: Family>(kv: &dyn Kv, f: &F) -> Result<Option<F::Value>, KvError> {
    let key = f.key();
    match kv.get(&key)? {
        None => Ok(None),
        Some(bytes) => decode(&key, &bytes).map(Some),
    }
}

/// Reads several typed values of one family in one round trip.
pub fn load_many<F: Family>(kv: &dyn Kv, fs: &[F]) -> Result<Vec<Option<F::Value>>, KvError> {
    let keys: Vec<String> = fs.iter().map(Family::key).collect();
    let raw = kv.get_many(&keys)?;
    keys.iter()
        .zip(raw)
        .map(|(k, v)| v.map(|b| decode(k, &b)).transpose())
        .collect()
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

/// Reads a counter without changing it: a plain read (in either stored encoding, see
/// [`decode_counter`]), so it counts as a read, not a write.
pub fn read_counter<C: Counter>(kv: &dyn Kv, c: &C) -> Result<i64, KvError> {
    Ok(decode_counter(kv.get(&c.key())?.as_deref()))
}

/// A counter's value as `get` returns it: Spin's SQLite store (and lumen-host's) keep counters
/// as 8-byte little-endian i64, its Redis store as decimal text (`INCRBY`). Text never holds a
/// 0x00 or 0xFF byte, and every counter below 2^56 in magnitude has one of them as its top byte,
/// so the two cannot be confused. Absent or unreadable is 0.
pub fn decode_counter(bytes: Option<&[u8]>) -> i64 {
    let Some(b) = bytes else { return 0 };
    if let Ok(arr) = <[u8; 8]>::try_from(b) {
        if matches!(arr[7], 0x00 | 0xFF) {
            return i64::from_le_bytes(arr);
        }
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// An in-memory [`Kv`] for unit tests of the cores, counting round trips like lumen-host does.
#[derive(Debug, Default)]
pub struct MemKv {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
    ops: Mutex<(u32, u32)>,
}

impl MemKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, write: bool) {
        let mut o = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if write {
            o.1 += 1;
        } else {
            o.0 += 1;
        }
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Round trips so far: (reads, writes).
    pub fn ops(&self) -> (u32, u32) {
        *self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Kv for MemKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.count(false);
        Ok(self.map().get(key).cloned())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.count(true);
        self.map().insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.count(true);
        self.map().remove(key);
        Ok(())
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.count(true);
        let mut map = self.map();
        let cur = match map.get(key) {
            None => 0,
            Some(b) => i64::from_le_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| KvError(format!("{key} is not a counter")))?,
            ),
        };
        let next = cur
            .checked_add(delta)
            .ok_or_else(|| KvError(format!("counter {key} overflowed")))?;
        map.insert(key.to_string(), next.to_le_bytes().to_vec());
        Ok(next)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.count(false);
        let map = self.map();
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_le_i64_and_read_back_in_either_encoding() {
        let kv = MemKv::default();
        assert_eq!(kv.increment("c", 5).unwrap(), 5);
        assert_eq!(kv.increment("c", -7).unwrap(), -2);
        assert_eq!(
            kv.get("c").unwrap().unwrap(),
            (-2i64).to_le_bytes().to_vec()
        );
        kv.set("s", b"x").unwrap();
        assert!(kv.increment("s", 1).is_err());
        // SQLite-style and Redis-style encodings of the same counters.
        for n in [0i64, 1, 7, 12_345_678, -3, 1 << 40] {
            assert_eq!(decode_counter(Some(&n.to_le_bytes())), n, "{n}");
            assert_eq!(decode_counter(Some(n.to_string().as_bytes())), n, "{n}");
        }
        assert_eq!(decode_counter(None), 0);
        assert_eq!(decode_counter(Some(b"junk")), 0);
    }

    #[test]
    fn load_many_reads_in_one_round_trip() {
        let kv = MemKv::default();
        store(&kv, &KeyIndex(1), &"key_a".to_string()).unwrap();
        let before = kv.ops();
        let got = load_many(&kv, &[KeyIndex(1), KeyIndex(2)]).unwrap();
        assert_eq!(got, vec![Some("key_a".to_string()), None]);
        assert_eq!(kv.ops().0, before.0 + 1);
    }
}
