//! Key-value backends: SQLite (the default, like `spin up`), Redis (several hosts sharing one
//! store, like several Spin replicas) and in-memory (tests).
//!
//! The SQLite file uses Spin's own table layout (`spin_key_value(store, key, value)`), so a
//! state directory is interchangeable between `lumen-host up` and `spin up`. Counters written by
//! `increment` are 8-byte little-endian i64 values, as Spin stores them.
//!
//! Redis keeps every value as a plain Redis string under the key itself (as Spin's Redis store
//! does). Counters there are Redis integers (decimal ASCII), because `increment` is `INCRBY`,
//! the one operation that is atomic across every client of the server; components read counters
//! only through `increment(key, 0)`, never by `get`, so the two encodings never meet.
//!
//! `compare_and_swap` is atomic on every backend: SQLite in a `BEGIN IMMEDIATE` transaction,
//! memory under its lock, Redis in one Lua script (`EVAL` runs alone on the server).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    /// Reads several values, in the order of `keys` (`None` for an absent one): one round trip
    /// where the backend has one for it (SQLite: one read transaction; Redis: `MGET`).
    fn get_many(&self, store: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(store, k)).collect()
    }
    /// Writes several values (SQLite: one transaction; Redis: `MSET`).
    fn set_many(&self, store: &str, kvs: &[(String, Vec<u8>)]) -> Result<()> {
        kvs.iter().try_for_each(|(k, v)| self.set(store, k, v))
    }
    /// Removes several values (SQLite: one transaction; Redis: one `DEL`).
    fn delete_many(&self, store: &str, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| self.delete(store, k))
    }
    /// All keys of a store.
    fn keys(&self, store: &str) -> Result<Vec<String>>;
    /// Atomically adds `delta` to the i64 at `key` (absent = 0); fails on a non-counter value.
    fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64>;
    /// Atomically writes `new` when the current value is `expected` (`None` = absent); returns
    /// whether it wrote.
    fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool>;
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
    fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        let mut map = self.map();
        let k = (store.to_string(), key.to_string());
        if map.get(&k).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(k, new.to_vec());
        Ok(true)
    }
}

/// SQLite file store. One connection behind a mutex: writes are serialised in process, and
/// `BEGIN IMMEDIATE` serialises increments across processes sharing the file.
///
/// The write-ahead log is checkpointed by a thread of the store's own on a second connection
/// ([`CHECKPOINT_EVERY`]), not by SQLite's auto-checkpoint, which runs inside the commit that
/// crosses 1,000 pages — under the mutex, on a request's path, with its fsyncs (one measured
/// 4.9 ms, about every 400 chats).
pub struct SqliteKv {
    conn: Arc<Mutex<Connection>>,
    /// Dropping it stops the checkpointer.
    _stop: std::sync::mpsc::Sender<()>,
}

/// How often the checkpointer copies the log back into the database (a passive checkpoint:
/// it never waits for a writer or a reader, and an idle store costs it one read of the
/// log's index). A second, not less: hot keys (counters) are rewritten many times a second and a
/// checkpoint copies each page once, so 200 ms cost more CPU than SQLite's own checkpoints.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);

/// Log frames (pages) past which the checkpointer also starts the log over (a `RESTART`
/// checkpoint after the passive ones). A passive checkpoint never waits for the writer, so under a
/// steady stream of writes it never reaches the log's end, and SQLite only starts a log over once
/// all of it is copied: without this the log grew without bound under load (600 MB after 20 s of
/// wrk, 30,000 chats), each request slower as its index grew. The restart holds the store's lock
/// (requests' key-value calls wait) for ~2 ms: the passive ones before it copy all but the last few
/// frames, and it does not truncate the file (truncating a 16 MB log measured 13–22 ms), so the
/// file stays at its high-water mark, about a second of writes past this threshold (41 MB under
/// wrk). 4,096 pages is 16 MiB.
pub const RESTART_FRAMES: i64 = 4096;

impl SqliteKv {
    /// Opens (creating if needed) the database at `path`.
    /// The store holds key hashes, usage and the audit log: a directory it creates is `0700`
    /// and the database file (with SQLite's `-wal`/`-shm`, which take its mode) `0600`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, CHECKPOINT_EVERY, RESTART_FRAMES)
    }

    /// [`SqliteKv::open`] with the checkpointer's period and restart threshold.
    fn open_with(
        path: &Path,
        checkpoint_every: std::time::Duration,
        restart_frames: i64,
    ) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let cannot_open = |e: &dyn std::fmt::Display| {
            wasmtime::format_err!("cannot open key-value database {}: {e}", path.display())
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| wasmtime::format_err!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| cannot_open(&e))?;
        let conn = Connection::open(path).map_err(|e| cannot_open(&e))?;
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
        let checkpointer = Connection::open(path).map_err(|e| cannot_open(&e))?;
        // How long a restarting checkpoint waits for another process's reader or writer (this
        // process's are held off by the store's lock) before trying again at the next tick.
        checkpointer
            .busy_timeout(std::time::Duration::from_millis(50))
            .map_err(sql)?;
        // Its own writes (the log's restart, below) sync as the requests' do.
        checkpointer
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.execute(RESTART_TABLE, []).map_err(sql)?;
        // Only once the checkpointer is there may the request connection stop checkpointing.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sql)?;
        let conn = Arc::new(Mutex::new(conn));
        let requests = conn.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("lumen-kv-checkpoint".into())
            .spawn(move || {
                checkpoint_loop(
                    &checkpointer,
                    &requests,
                    &stopped,
                    checkpoint_every,
                    restart_frames,
                )
            })
            .map_err(|e| wasmtime::format_err!("cannot start the key-value checkpointer: {e}"))?;
        Ok(Self { conn, _stop: stop })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `body` in one `BEGIN IMMEDIATE` transaction (serialised with other processes'
    /// writers) and commits it; an error rolls it back.
    fn write<T>(&self, body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let out = body(&tx)?;
        tx.commit().map_err(sql)?;
        Ok(out)
    }
}

/// Checkpoints the log every `every` until the store is dropped, starting it over once it holds
/// `restart_frames` ([`RESTART_FRAMES`]) under the store's lock (`requests`: SQLite's own lock
/// is not fair, and a busy writer would starve the restart). A failed checkpoint (the file gone,
/// a disk error) is reported once and tried again: the log only grows meanwhile.
fn checkpoint_loop(
    conn: &Connection,
    requests: &Mutex<Connection>,
    stopped: &std::sync::mpsc::Receiver<()>,
    every: std::time::Duration,
    restart_frames: i64,
) {
    let mut failing = false;
    let mut seen = None;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
        match checkpoint_once(conn, requests, restart_frames, &mut seen) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                eprintln!("lumen-host: key-value checkpoint failed (will retry): {e}");
            }
            Err(_) => {}
        }
    }
}

/// One tick of the checkpointer: nothing when no other connection wrote since the last tick
/// (`seen`: SQLite's `data_version`); otherwise a passive checkpoint, and when the log holds
/// `restart_frames` or more, passive ones again while each still has many frames to copy (those
/// written during the one before), then a restarting one under the store's lock, which copies
/// the last few.
///
/// Once a checkpoint has copied the whole log, the next write starts the log over, and doing
/// so writes the log's new header and syncs it: one `fsync` (3.8 ms measured on this VM) in
/// whichever request wrote next — at 10 requests a second, about one request in ten, since an
/// idle store's passive checkpoint copies everything every tick. The checkpointer makes that
/// write itself ([`restart_log`]), under the store's lock, so no request's answer waits for it.
fn checkpoint_once(
    conn: &Connection,
    requests: &Mutex<Connection>,
    restart_frames: i64,
    seen: &mut Option<i64>,
) -> rusqlite::Result<()> {
    // Changes when another connection commits; the checkpointer's own writes leave it be.
    let version = conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))?;
    if seen.replace(version) == Some(version) {
        return Ok(());
    }
    // Its row: (busy, frames in the log, frames copied); busy = 1 when it gave up waiting.
    let checkpoint = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
    };
    let (_, mut frames, mut copied) = checkpoint("PASSIVE")?;
    if frames < restart_frames {
        if frames > 0 && copied == frames {
            let _held = requests.lock().unwrap_or_else(|e| e.into_inner());
            restart_log(conn)?;
        }
        return Ok(());
    }
    for _ in 0..4 {
        if frames - copied <= LEFT_UNDER_LOCK {
            break;
        }
        (_, frames, copied) = checkpoint("PASSIVE")?;
    }
    let _held = requests.lock().unwrap_or_else(|e| e.into_inner());
    let (busy, ..) = checkpoint("RESTART")?;
    if busy == 0 {
        restart_log(conn)?;
    }
    Ok(())
}

/// The table whose one row the checkpointer rewrites to start the log over (Spin's key-value
/// code reads only `spin_key_value`, so the file stays interchangeable with `spin up`).
const RESTART_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS lumen_log_restart (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)";

/// Starts a fully copied log over by writing one small row (SQLite restarts the log in the
/// first write after a complete checkpoint, and syncs the new header there); the requests'
/// writes after it append to the new log. Called with the store's lock held, so no request's
/// write can be first.
fn restart_log(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO lumen_log_restart (id, n) VALUES (1, 1) \
         ON CONFLICT(id) DO UPDATE SET n = n + 1",
    )?
    .execute([])?;
    Ok(())
}

/// At most this many frames (about) are left for the restarting checkpoint to copy while it
/// holds the store's lock.
const LEFT_UNDER_LOCK: i64 = 64;

const SELECT: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";
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
        let mut stmt = conn.prepare_cached(DELETE).map_err(sql)?;
        stmt.execute(params![store, key]).map_err(sql)?;
        Ok(())
    }
    fn get_many(&self, store: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        // One read transaction: one snapshot, and one lock and unlock of the log's index for
        // all of them (each statement on its own takes both: a chat's health read of 12 keys
        // made 24 `fcntl` calls).
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql)?;
        let values = {
            let mut stmt = tx.prepare_cached(SELECT).map_err(sql)?;
            keys.iter()
                .map(|k| {
                    stmt.query_row(params![store, k], |r| r.get(0))
                        .optional()
                        .map_err(sql)
                })
                .collect::<Result<Vec<_>>>()?
        };
        tx.commit().map_err(sql)?;
        Ok(values)
    }
    fn set_many(&self, store: &str, kvs: &[(String, Vec<u8>)]) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(UPSERT).map_err(sql)?;
            for (k, v) in kvs {
                stmt.execute(params![store, k, v]).map_err(sql)?;
            }
            Ok(())
        })
    }
    fn delete_many(&self, store: &str, keys: &[String]) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(DELETE).map_err(sql)?;
            for k in keys {
                stmt.execute(params![store, k]).map_err(sql)?;
            }
            Ok(())
        })
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
        self.write(|tx| {
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
            Ok(next)
        })
    }
    fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
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
        if cur.as_deref() != expected {
            return Ok(false);
        }
        tx.prepare_cached(UPSERT)
            .map_err(sql)?
            .execute(params![store, key, new])
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(true)
    }
}

/// Redis store: a small pool of synchronous connections to one server. Several host processes
/// pointing at the same server share every key, counter and compare-and-swap.
pub struct RedisKv {
    client: redis::Client,
    pool: Mutex<Vec<redis::Connection>>,
}

/// Connections kept idle per process.
const REDIS_POOL: usize = 32;

/// `KEYS[1]` = key, `ARGV[1]` = "1" when a value is expected ("0" for absent), `ARGV[2]` the
/// expected value, `ARGV[3]` the new value. Runs atomically on the server.
const CAS_SCRIPT: &str = "local cur = redis.call('GET', KEYS[1]) \
if ARGV[1] == '0' then if cur then return 0 end \
elseif cur ~= ARGV[2] then return 0 end \
redis.call('SET', KEYS[1], ARGV[3]) return 1";

fn rerr(e: redis::RedisError) -> wasmtime::Error {
    wasmtime::format_err!("redis: {e}")
}

impl RedisKv {
    /// Connects to `url` (`redis://host:port/db` or `redis+unix:///path/to/socket`) and checks
    /// the server answers.
    pub fn open(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| wasmtime::format_err!("invalid redis url {url:?}: {e}"))?;
        let kv = Self {
            client,
            pool: Mutex::new(Vec::new()),
        };
        kv.with(|c| redis::cmd("PING").query::<String>(c))
            .map_err(|e| wasmtime::format_err!("cannot reach redis at {url:?}: {e}"))?;
        Ok(kv)
    }

    /// Runs `op` on a pooled connection; a connection that failed is not returned to the pool.
    fn with<T>(
        &self,
        op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.client.get_connection().map_err(rerr)?,
        };
        let out = op(&mut conn).map_err(rerr);
        if out.is_ok() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < REDIS_POOL {
                pool.push(conn);
            }
        }
        out
    }
}

impl KvBackend for RedisKv {
    fn get(&self, _store: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| redis::cmd("GET").arg(key).query(c))
    }
    fn set(&self, _store: &str, key: &str, value: &[u8]) -> Result<()> {
        self.with(|c| redis::cmd("SET").arg(key).arg(value).query(c))
    }
    fn delete(&self, _store: &str, key: &str) -> Result<()> {
        self.with(|c| redis::cmd("DEL").arg(key).query(c))
    }
    fn exists(&self, _store: &str, key: &str) -> Result<bool> {
        self.with(|c| redis::cmd("EXISTS").arg(key).query(c))
    }
    fn get_many(&self, _store: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|c| redis::cmd("MGET").arg(keys).query(c))
    }
    fn set_many(&self, _store: &str, kvs: &[(String, Vec<u8>)]) -> Result<()> {
        if kvs.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("MSET");
        for (k, v) in kvs {
            cmd.arg(k).arg(v);
        }
        self.with(|c| cmd.query(c))
    }
    fn delete_many(&self, _store: &str, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.with(|c| redis::cmd("DEL").arg(keys).query(c))
    }
    fn keys(&self, _store: &str) -> Result<Vec<String>> {
        self.with(|c| {
            let mut out = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                out.extend(batch);
                if next == 0 {
                    return Ok(out);
                }
                cursor = next;
            }
        })
    }
    fn increment(&self, _store: &str, key: &str, delta: i64) -> Result<i64> {
        self.with(|c| redis::cmd("INCRBY").arg(key).arg(delta).query(c))
            .map_err(|e| wasmtime::format_err!("counter {key:?}: {e}"))
    }
    fn compare_and_swap(
        &self,
        _store: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        let n: i64 = self.with(|c| {
            redis::cmd("EVAL")
                .arg(CAS_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(new)
                .query(c)
        })?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_state_dir_and_database_are_private() {
        // D14: they were 0755 and 0644 (the umask's), readable by every local user.
        use std::os::unix::fs::PermissionsExt as _;
        let root = std::env::temp_dir().join(format!("lumen-perm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let path = root.join("state").join("sqlite_key_value.db");
        let kv = SqliteKv::open(&path).unwrap();
        kv.set("default", "a", b"1").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("state")), 0o700);
        assert_eq!(mode(&path), 0o600);
        // An existing database with a loose mode is tightened when opened.
        drop(kv);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let kv = SqliteKv::open(&path).unwrap();
        assert_eq!(kv.get("default", "a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(mode(&path), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }

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
        cas_semantics(kv);
    }

    fn cas_semantics(kv: &dyn KvBackend) {
        assert!(kv.compare_and_swap("default", "h", None, b"1").unwrap());
        assert!(
            !kv.compare_and_swap("default", "h", None, b"2").unwrap(),
            "absent expected, present found"
        );
        assert!(!kv
            .compare_and_swap("default", "h", Some(b"0"), b"2")
            .unwrap());
        assert!(kv
            .compare_and_swap("default", "h", Some(b"1"), b"2")
            .unwrap());
        assert_eq!(kv.get("default", "h").unwrap().as_deref(), Some(&b"2"[..]));
    }

    /// 8 threads × 50 increments of a JSON number by compare-and-swap retry loops: any lost
    /// update (a get-then-set) shows as a total below 400.
    fn concurrent_cas_is_exact(kv: Arc<dyn KvBackend>) {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        loop {
                            let cur = kv.get("default", "cas").unwrap();
                            let n: u64 = cur
                                .as_deref()
                                .map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
                            let next = (n + 1).to_string();
                            if kv
                                .compare_and_swap("default", "cas", cur.as_deref(), next.as_bytes())
                                .unwrap()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(
            kv.get("default", "cas").unwrap().as_deref(),
            Some(&b"400"[..])
        );
    }

    /// A throwaway `redis-server` on a unix socket in a temp dir (no TCP port), killed on drop.
    struct Redis {
        child: std::process::Child,
        dir: std::path::PathBuf,
    }

    impl Redis {
        fn start(tag: &str) -> Redis {
            let dir =
                std::env::temp_dir().join(format!("lumen-redis-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("redis.sock");
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--unixsocket",
                ])
                .arg(&sock)
                .arg("--dir")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed (apt-get install redis-server)");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !sock.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Redis { child, dir }
        }
        fn url(&self) -> String {
            format!("redis+unix://{}", self.dir.join("redis.sock").display())
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn redis_semantics_and_atomicity() {
        let server = Redis::start("kv");
        let kv = RedisKv::open(&server.url()).unwrap();
        assert_eq!(kv.get("default", "a").unwrap(), None);
        kv.set("default", "a", b"1").unwrap();
        assert_eq!(kv.get("default", "a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.increment("default", "n", 3).unwrap(), 3);
        assert_eq!(kv.increment("default", "n", -1).unwrap(), 2);
        assert!(
            kv.increment("default", "a", 1).is_ok(),
            "\"1\" is a Redis integer"
        );
        kv.set("default", "s", b"x").unwrap();
        assert!(kv.increment("default", "s", 1).is_err(), "not a counter");
        let mut keys = kv.keys("default").unwrap();
        keys.sort();
        assert_eq!(keys, vec!["a", "n", "s"]);
        kv.delete("default", "a").unwrap();
        assert!(!kv.exists("default", "a").unwrap());
        cas_semantics(&kv);
        // A second client (another host process) sees the same store.
        let other = RedisKv::open(&server.url()).unwrap();
        assert_eq!(other.increment("default", "n", 0).unwrap(), 2);
        let kv: Arc<dyn KvBackend> = Arc::new(kv);
        concurrent_cas_is_exact(kv.clone());
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
        assert_eq!(other.increment("default", "c", 0).unwrap(), 800);
        assert!(RedisKv::open("redis+unix:///nonexistent/redis.sock").is_err());
    }

    fn batch_semantics(kv: &dyn KvBackend) {
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert!(kv.get_many("default", &[]).unwrap().is_empty());
        kv.set_many("default", &[]).unwrap();
        kv.delete_many("default", &[]).unwrap();
        kv.set_many(
            "default",
            &[("b1".into(), b"1".to_vec()), ("b2".into(), b"2".to_vec())],
        )
        .unwrap();
        assert_eq!(
            kv.get_many("default", &keys(&["b2", "absent", "b1"]))
                .unwrap(),
            vec![Some(b"2".to_vec()), None, Some(b"1".to_vec())]
        );
        kv.delete_many("default", &keys(&["b1", "absent"])).unwrap();
        assert_eq!(
            kv.get_many("default", &keys(&["b1", "b2"])).unwrap(),
            vec![None, Some(b"2".to_vec())]
        );
    }

    #[test]
    fn batches_read_and_write_alike_on_every_backend() {
        batch_semantics(&MemoryKv::default());
        let (dir, path) = fresh_db("batch");
        batch_semantics(&SqliteKv::open(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        // Redis: one command per batch (a chat's health read is 12 keys), not one per key.
        let server = Redis::start("batch");
        let kv = RedisKv::open(&server.url()).unwrap();
        let mut admin = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut calls = |name: &str| -> u64 {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut admin)
                .unwrap();
            let tag = format!("cmdstat_{name}:calls=");
            info.lines()
                .find_map(|l| l.strip_prefix(tag.as_str()))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse().unwrap())
        };
        batch_semantics(&kv);
        assert_eq!(
            (calls("get"), calls("set"), calls("mget"), calls("mset")),
            (0, 0, 2, 1),
            "get-many and set-many are one MGET / MSET each"
        );
    }

    /// An empty directory of this test's own for a database file: (the directory, `kv.db` in it).
    fn fresh_db(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("lumen-kv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("kv.db");
        (dir, path)
    }

    #[test]
    fn concurrent_cas_is_exact_on_memory_and_sqlite() {
        let (dir, path) = fresh_db("cas");
        concurrent_cas_is_exact(Arc::new(MemoryKv::default()));
        concurrent_cas_is_exact(Arc::new(SqliteKv::open(&path).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Commits never checkpoint the log themselves (SQLite would, inline, at 1,000 pages); the
    /// store's own thread does, off the request path.
    #[test]
    fn sqlite_checkpoints_off_the_write_path() {
        let (dir, path) = fresh_db("ckpt");
        let page = vec![7u8; 4096];
        let db_bytes = || std::fs::metadata(&path).unwrap().len();
        // A checkpointer that never comes: 3,000 pages of writes stay in the log.
        let kv = SqliteKv::open_with(&path, std::time::Duration::from_secs(3600), RESTART_FRAMES)
            .unwrap();
        for i in 0..3000 {
            kv.set("default", &format!("k{i}"), &page).unwrap();
        }
        assert!(
            db_bytes() < 1 << 20,
            "a commit checkpointed: {} bytes",
            db_bytes()
        );
        drop(kv);
        // One every 10 ms copies them into the database file.
        let kv = SqliteKv::open_with(&path, std::time::Duration::from_millis(10), RESTART_FRAMES)
            .unwrap();
        kv.set("default", "one more", b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db_bytes() < 3000 * 4096 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            db_bytes() >= 3000 * 4096,
            "not checkpointed: {} bytes",
            db_bytes()
        );
        assert_eq!(kv.get("default", "k2999").unwrap(), Some(page));
        drop(kv);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_checkpointer_starts_the_log_over_before_a_request_writes() {
        // The log's header (its first 32 bytes) changes only when the log starts over, and that
        // write syncs it: after a few idle ticks the next request's write must find the log
        // already started over by the checkpointer, and append to it.
        let (dir, path) = fresh_db("restart");
        let wal = dir.join("kv.db-wal");
        let kv = SqliteKv::open_with(&path, std::time::Duration::from_millis(20), 4096).unwrap();
        let header = || std::fs::read(&wal).unwrap()[..32].to_vec();
        for round in 0..3 {
            kv.set("default", "a", format!("{round}").as_bytes())
                .unwrap();
            kv.increment("default", "n", 1).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            // A request's write, under the store's lock as every request's is (so no tick of
            // the checkpointer can start the log over between the two reads of its header).
            let conn = kv.conn();
            let before = header();
            conn.execute(UPSERT, params!["default", "b", b"x".to_vec()])
                .unwrap();
            let after = header();
            drop(conn);
            assert_eq!(
                after, before,
                "round {round}: a request's write started the log over (and synced it)"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(kv.increment("default", "n", 0).unwrap(), 3);
        assert_eq!(kv.get("default", "a").unwrap().as_deref(), Some(&b"2"[..]));
        drop(kv);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Under a steady stream of writes the log stays bounded: a passive checkpoint alone never
    /// catches up with the writer, so the log would take all 8,000 writes (~140 MB).
    #[test]
    fn sqlite_log_stays_bounded_under_steady_writes() {
        let (dir, path) = fresh_db("wal");
        let wal = dir.join("kv.db-wal");
        let kv = SqliteKv::open_with(&path, std::time::Duration::from_millis(5), 256).unwrap();
        let page = vec![7u8; 4096];
        let mut largest = 0;
        for i in 0..8000 {
            kv.set("default", &format!("k{i}"), &page).unwrap();
            if i % 50 == 0 {
                largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            }
        }
        assert!(
            largest < 48 << 20,
            "the log grew to {largest} bytes under steady writes"
        );
        assert_eq!(kv.get("default", "k7999").unwrap(), Some(page));
        drop(kv);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_semantics() {
        exercise(&MemoryKv::default());
    }

    #[test]
    fn sqlite_semantics_and_persistence() {
        let (dir, path) = fresh_db("test");
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
        let (dir, path) = fresh_db("conc");
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
