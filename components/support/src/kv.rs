//! [`SpinKv`]: the shared [`Kv`] trait over Spin's `default` key-value store, with counters and
//! compare-and-swap on `wasi:keyvalue/atomics`.

use lumen_shared::kv::{Kv, KvError};
use lumen_shared::ApiError;
use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::keyvalue::{atomics, store as wasi_store};

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
    let mut err = ApiError::internal(format!("the key-value store is unavailable ({})", e.0));
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

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        let fail = |e: &dyn std::fmt::Display| KvError(format!("compare-and-swap {key}: {e}"));
        let cas = atomics::Cas::new(&self.bucket, key).map_err(|e| fail(&e))?;
        if cas.current().map_err(|e| fail(&e))?.as_deref() != expected {
            return Ok(false);
        }
        match atomics::swap(cas, new) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(fail(&e)),
        }
    }
}
