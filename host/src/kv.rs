//! Key-value backends: SQLite (the default, like `spin up`) and in-memory (tests).
//!
//! The SQLite file uses Spin's own table layout (`spin_key_value(store, key, value)`), so a
//! state directory is interchangeable between `lumen-host up` and `spin up`. Counters written by
//! `increment` are 8-byte little-endian i64 values, as Spin stores them.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use wasmtime::Result;

/// A KV backend shared by every instance; `store` is the label from `key_value_stores`.
pub trait KvBackend: Send + Sync {
    /// Reads a value.
    fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes a value.
    fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<()>;
    /// Removes a value.
    fn delete(&self, store: &str, key: &str) -> Result<()>;
    /// Whether a key exists.
    fn exists(&self, store: &str, key: &str) -> Result<bool> {
        Ok(self.get(store, key)?.is_some())
    }
    /// All keys of a store.
    fn keys(&self, store: &str) -> Result<Vec<String>>;
    /// Atomically adds `delta` to the i64 at `key` (absent = 0); fails on a non-counter value.
    fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64>;
}

fn decode_counter(key: &str, bytes: &[u8]) -> Result<i64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        wasmtime::format_err!(
            "value at {key:?} is not a counter (expected 8 bytes, found {})",
            bytes.len()
        )
    })?;
    Ok(i64::from_le_bytes(arr))
}

/// In-memory store, for unit tests and throwaway runs.
#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KvBackend for MemoryKv {
    fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .map()
            .get(&(store.to_string(), key.to_string()))
            .cloned())
    }
    fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<()> {
        self.map()
            .insert((store.to_string(), key.to_string()), value.to_vec());
        Ok(())
    }
    fn delete(&self, store: &str, key: &str) -> Result<()> {
        self.map().remove(&(store.to_string(), key.to_string()));
        Ok(())
    }
    fn keys(&self, store: &str) -> Result<Vec<String>> {
        Ok(self
            .map()
            .keys()
            .filter(|(s, _)| s == store)
            .map(|(_, k)| k.clone())
            .collect())
    }
    fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64> {
        let mut map = self.map();
        let k = (store.to_string(), key.to_string());
        let cur = match map.get(&k) {
            Some(b) => decode_counter(key, b)?,
            None => 0,
        };
        let next = cur
            .checked_add(delta)
            .ok_or_else(|| wasmtime::format_err!("counter {key:?} overflowed"))?;
        map.insert(k, next.to_le_bytes().to_vec());
        Ok(next)
    }
}

/// SQLite file store. One connection behind a mutex: writes are serialised in process, and
/// `BEGIN IMMEDIATE` serialises increments across processes sharing the file.
pub struct SqliteKv {
    conn: Mutex<Connection>,
}

impl SqliteKv {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| wasmtime::format_err!("cannot create {}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| {
            wasmtime::format_err!("cannot open key-value database {}: {e}", path.display())
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))",
            [],
        )
        .map_err(sql)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const SELECT: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3) \
     ON CONFLICT(store, key) DO UPDATE SET value = excluded.value";

fn sql(e: rusqlite::Error) -> wasmtime::Error {
    wasmtime::format_err!("sqlite: {e}")
}

impl KvBackend for SqliteKv {
    fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(SELECT).map_err(sql)?;
        stmt.query_row(params![store, key], |r| r.get(0))
            .optional()
            .map_err(sql)
    }
    fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(UPSERT).map_err(sql)?;
        stmt.execute(params![store, key, value]).map_err(sql)?;
        Ok(())
    }
    fn delete(&self, store: &str, key: &str) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")
            .map_err(sql)?;
        stmt.execute(params![store, key]).map_err(sql)?;
        Ok(())
    }
    fn keys(&self, store: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1")
            .map_err(sql)?;
        let rows = stmt.query_map(params![store], |r| r.get(0)).map_err(sql)?;
        rows.collect::<std::result::Result<Vec<String>, _>>()
            .map_err(sql)
    }
    fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let cur: Option<Vec<u8>> = tx
            .prepare_cached(SELECT)
            .map_err(sql)?
            .query_row(params![store, key], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        let cur = match cur {
            Some(b) => decode_counter(key, &b)?,
            None => 0,
        };
        let next = cur
            .checked_add(delta)
            .ok_or_else(|| wasmtime::format_err!("counter {key:?} overflowed"))?;
        tx.prepare_cached(UPSERT)
            .map_err(sql)?
            .execute(params![store, key, next.to_le_bytes().to_vec()])
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn exercise(kv: &dyn KvBackend) {
        assert_eq!(kv.get("default", "a").unwrap(), None);
        kv.set("default", "a", b"1").unwrap();
        kv.set("other", "a", b"2").unwrap();
        assert_eq!(kv.get("default", "a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.keys("default").unwrap(), vec!["a".to_string()]);
        assert_eq!(kv.increment("default", "n", 3).unwrap(), 3);
        assert_eq!(kv.increment("default", "n", -1).unwrap(), 2);
        assert_eq!(
            kv.get("default", "n").unwrap().unwrap(),
            2i64.to_le_bytes().to_vec()
        );
        assert!(
            kv.increment("default", "a", 1).is_err(),
            "increment on a non-counter fails"
        );
        kv.delete("default", "a").unwrap();
        assert!(!kv.exists("default", "a").unwrap());
        assert!(kv.exists("other", "a").unwrap());
    }

    #[test]
    fn memory_semantics() {
        exercise(&MemoryKv::default());
    }

    #[test]
    fn sqlite_semantics_and_persistence() {
        let dir = std::env::temp_dir().join(format!("lumen-kv-test-{}", std::process::id()));
        let path = dir.join("kv.db");
        let _ = std::fs::remove_file(&path);
        exercise(&SqliteKv::open(&path).unwrap());
        let again = SqliteKv::open(&path).unwrap();
        assert_eq!(
            again.increment("default", "n", 0).unwrap(),
            2,
            "survives reopen"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_increments_are_exact() {
        let dir = std::env::temp_dir().join(format!("lumen-kv-conc-{}", std::process::id()));
        let path = dir.join("kv.db");
        let _ = std::fs::remove_file(&path);
        let backends: Vec<Arc<dyn KvBackend>> = vec![
            Arc::new(MemoryKv::default()),
            Arc::new(SqliteKv::open(&path).unwrap()),
        ];
        for kv in backends {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let kv = kv.clone();
                    std::thread::spawn(move || {
                        (0..100).for_each(|_| {
                            kv.increment("default", "c", 1).unwrap();
                        })
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            assert_eq!(kv.increment("default", "c", 0).unwrap(), 800);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
