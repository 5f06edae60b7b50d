//! [`SpinKv`]: the shared [`Kv`] trait over Spin's `default` key-value store — plain
//! operations through `fermyon:spin/key-value`, counters through `wasi:keyvalue/atomics`
//! `increment`, and batched reads through `wasi:keyvalue/batch` `get-many` (one round trip).
//! No compare-and-swap: see `lumen_shared::store`.

use lumen_shared::store::{Kv, KvError};
use lumen_shared::ApiError;
use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store as wasi_store};

/// The `default` store, opened through both interfaces.
pub struct SpinKv {
    store: Store,
    bucket: wasi_store::Bucket,
}

impl SpinKv {
    /// Opens the `default` store.
    pub fn open() -> Result<SpinKv, KvError> {
        let store = Store::open_default()
            .map_err(|e| KvError(format!("could not open the default store: {e}")))?;
        let bucket = wasi_store::open("default")
            .map_err(|e| KvError(format!("could not open the default bucket: {e}")))?;
        Ok(SpinKv { store, bucket })
    }

    /// Opens the `default` store, mapping a failure to a 503 for the client.
    pub fn open_or_503() -> Result<SpinKv, ApiError> {
        SpinKv::open().map_err(|e| unavailable(&e))
    }
}

/// A 503 for a key-value failure (the message names the store, never a key's value).
pub fn unavailable(e: &KvError) -> ApiError {
    // The detail names internal keys: logged, never sent to the client.
    eprintln!("lumen: {e}");
    let mut err = ApiError::internal("the key-value store is unavailable; retry shortly");
    err.status = 503;
    err.retryable = true;
    err
}

impl Kv for SpinKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.store
            .get(key)
            .map_err(|e| KvError(format!("get {key}: {e}")))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.store
            .set(key, value)
            .map_err(|e| KvError(format!("set {key}: {e}")))
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.store
            .delete(key)
            .map_err(|e| KvError(format!("delete {key}: {e}")))
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        atomics::increment(&self.bucket, key, delta)
            .map_err(|e| KvError(format!("increment {key}: {e}")))
    }

    /// One round trip where the store's batch works. Spin 4.1's Redis store sends `get-many` as
    /// `KEYS k1 k2 …` (not `MGET`): Redis refuses it with more than one key, and with one it
    /// answers key names, not values. So one key is a plain `get` (the same single round trip
    /// everywhere), and a refused batch is read key by key (only on that store; the SQLite
    /// store and lumen-host answer the batch).
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        match keys {
            [] => return Ok(Vec::new()),
            [key] => return Ok(vec![self.get(key)?]),
            _ => {}
        }
        let got = match batch::get_many(&self.bucket, keys) {
            Ok(got) => got,
            Err(batch_err) => {
                return keys
                    .iter()
                    .map(|k| self.get(k))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        KvError(format!(
                            "get-many ({} keys): {batch_err}; one by one: {}",
                            keys.len(),
                            e.0
                        ))
                    })
            }
        };
        // The batch answers (key, value) pairs; put them back in the order asked.
        let mut by_key: std::collections::HashMap<String, Option<Vec<u8>>> =
            got.into_iter().collect();
        Ok(keys.iter().map(|k| by_key.remove(k).flatten()).collect())
    }
}
