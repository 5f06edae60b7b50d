//! Host side of the Spin interfaces the components import: `fermyon:spin/key-value@2.0.0`,
//! `fermyon:spin/variables@2.0.0`, `fermyon:spin/llm@2.0.0` (answered with a clear "not available
//! here": lumen-host runs no model) and `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2`.
//! Bindings are generated from the WIT shipped in the spin-sdk crate (copied under `host/wit`).

use crate::kv::KvBackend;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};

/// Generated bindings.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "lumen:host/spin-imports",
        with: {
            "fermyon:spin/key-value.store": super::OpenStore,
            "wasi:keyvalue/store.bucket": super::OpenStore,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
        // Key-value data operations may suspend the instance once, after its response is set
        // (`SpinView::yield_after_response`); everything else runs to completion.
        imports: {
            "fermyon:spin/key-value.[method]store.get": async,
            "fermyon:spin/key-value.[method]store.set": async,
            "fermyon:spin/key-value.[method]store.delete": async,
            "fermyon:spin/key-value.[method]store.exists": async,
            "wasi:keyvalue/store.[method]bucket.get": async,
            "wasi:keyvalue/store.[method]bucket.set": async,
            "wasi:keyvalue/store.[method]bucket.delete": async,
            "wasi:keyvalue/store.[method]bucket.exists": async,
            "wasi:keyvalue/atomics.increment": async,
            "wasi:keyvalue/batch.get-many": async,
            "wasi:keyvalue/batch.set-many": async,
            "wasi:keyvalue/batch.delete-many": async,
        },
    });
}

use bindings::fermyon::spin::{key_value as spin_kv, llm as spin_llm, variables as spin_vars};
use bindings::wasi::keyvalue::{atomics, batch, store as wasi_kv};

/// An opened store label.
pub struct OpenStore {
    label: String,
    backend: Arc<dyn KvBackend>,
}

/// A compare-and-swap handle: the value seen when it was created.
pub struct Cas {
    label: String,
    backend: Arc<dyn KvBackend>,
    key: String,
    seen: Option<Vec<u8>>,
}

/// Per-instance Spin state: the stores this component may open and its variables.
pub struct SpinState {
    /// Store label → backend, only for labels in the component's `key_value_stores`.
    pub stores: Arc<HashMap<String, Arc<dyn KvBackend>>>,
    /// The component's resolved variables.
    pub variables: Arc<HashMap<String, String>>,
    /// Key-value round trips this instance made.
    pub ops: KvOps,
    /// The request's response outparam (its table index), until the instance has yielded
    /// after the guest set it.
    pub outparam: Option<u32>,
}

/// Key-value round trips of one instance, by operation: what each request costs a store where
/// every operation is a round trip (Spin's SQLite and Redis stores). A batch is one round trip.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvOps {
    /// `get`.
    pub get: u32,
    /// `set`.
    pub set: u32,
    /// `delete`.
    pub delete: u32,
    /// `exists`.
    pub exists: u32,
    /// `get-keys` / `list-keys`.
    pub list: u32,
    /// `increment`.
    pub increment: u32,
    /// Compare-and-swap: `cas.new` (a read) and `swap`.
    pub cas: u32,
    /// `get-many`.
    pub get_many: u32,
    /// `set-many`.
    pub set_many: u32,
    /// `delete-many`.
    pub delete_many: u32,
}

impl KvOps {
    /// Every round trip.
    pub fn total(&self) -> u32 {
        self.reads() + self.writes()
    }

    /// Round trips that only read.
    pub fn reads(&self) -> u32 {
        self.get + self.exists + self.list + self.get_many
    }

    /// Round trips that write.
    pub fn writes(&self) -> u32 {
        self.set + self.delete + self.increment + self.cas + self.set_many + self.delete_many
    }
}

/// The view the generated `Host` traits are implemented on.
pub struct SpinView<'a> {
    /// Spin state.
    pub state: &'a mut SpinState,
    /// The instance's resource table.
    pub table: &'a mut ResourceTable,
}

/// Why a store could not be opened.
enum OpenError {
    /// The label is not in the component's `key_value_stores`.
    Denied,
    /// The resource table refused another handle.
    Table(String),
}

impl SpinView<'_> {
    /// Suspends the instance once, at its first key-value operation after its response is set,
    /// so the response leaves before the work the guest does after it (settlement, the cache
    /// fill, the audit log). Without it, the connection task woken by the response waits in the
    /// same worker's next-task slot, which no other worker may take, until the guest ends: a
    /// cache hit's settlement ran before its answer left (issue 14).
    async fn yield_after_response(&mut self) {
        let Some(rep) = self.state.outparam else {
            return;
        };
        // Setting the response consumes the outparam: its index is then free or another type.
        let out = Resource::<wasmtime_wasi_http::p2::types::HostResponseOutparam>::new_borrow(rep);
        if self.table.get(&out).is_ok() {
            return;
        }
        self.state.outparam = None;
        tokio::task::yield_now().await;
    }

    /// Opens `label` when the component may use it.
    fn open_store(&mut self, label: String) -> Result<Resource<OpenStore>, OpenError> {
        let backend = self
            .state
            .stores
            .get(&label)
            .cloned()
            .ok_or(OpenError::Denied)?;
        self.table
            .push(OpenStore { label, backend })
            .map_err(|e| OpenError::Table(e.to_string()))
    }

    /// Runs `op` on an open store; any failure is reported as text, which each interface wraps
    /// in its own error type.
    fn on<T>(
        &mut self,
        store: &Resource<OpenStore>,
        count: fn(&mut KvOps) -> &mut u32,
        op: impl FnOnce(&dyn KvBackend, &str) -> wasmtime::Result<T>,
    ) -> Result<T, String> {
        *count(&mut self.state.ops) += 1;
        let s = self.table.get(store).map_err(|e| e.to_string())?;
        op(s.backend.as_ref(), &s.label).map_err(|e| e.to_string())
    }
}

// ---- fermyon:spin/key-value@2.0.0 ----

impl spin_kv::Host for SpinView<'_> {}

impl spin_kv::HostStore for SpinView<'_> {
    fn open(&mut self, label: String) -> Result<Resource<OpenStore>, spin_kv::Error> {
        self.open_store(label).map_err(|e| match e {
            OpenError::Denied => spin_kv::Error::AccessDenied,
            OpenError::Table(_) => spin_kv::Error::StoreTableFull,
        })
    }
    async fn get(
        &mut self,
        s: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, spin_kv::Error> {
        self.yield_after_response().await;
        self.on(&s, |o| &mut o.get, |kv, l| kv.get(l, &key))
            .map_err(spin_kv::Error::Other)
    }
    async fn set(
        &mut self,
        s: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), spin_kv::Error> {
        self.yield_after_response().await;
        self.on(&s, |o| &mut o.set, |kv, l| kv.set(l, &key, &value))
            .map_err(spin_kv::Error::Other)
    }
    async fn delete(&mut self, s: Resource<OpenStore>, key: String) -> Result<(), spin_kv::Error> {
        self.yield_after_response().await;
        self.on(&s, |o| &mut o.delete, |kv, l| kv.delete(l, &key))
            .map_err(spin_kv::Error::Other)
    }
    async fn exists(
        &mut self,
        s: Resource<OpenStore>,
        key: String,
    ) -> Result<bool, spin_kv::Error> {
        self.yield_after_response().await;
        self.on(&s, |o| &mut o.exists, |kv, l| kv.exists(l, &key))
            .map_err(spin_kv::Error::Other)
    }
    fn get_keys(&mut self, s: Resource<OpenStore>) -> Result<Vec<String>, spin_kv::Error> {
        self.on(&s, |o| &mut o.list, |kv, l| kv.keys(l))
            .map_err(spin_kv::Error::Other)
    }
    fn drop(&mut self, s: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(s)?;
        Ok(())
    }
}

// ---- fermyon:spin/variables@2.0.0 ----

impl spin_vars::Host for SpinView<'_> {
    fn get(&mut self, name: String) -> Result<String, spin_vars::Error> {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(spin_vars::Error::InvalidName(format!(
                "invalid variable name {name:?}"
            )));
        }
        self.state.variables.get(&name).cloned().ok_or_else(|| {
            spin_vars::Error::Undefined(format!(
                "no variable named {name:?} in this component's [component.<id>.variables]"
            ))
        })
    }
}

// ---- wasi:keyvalue@0.2.0-draft2 ----

fn wasi_err(e: impl std::fmt::Display) -> wasi_kv::Error {
    wasi_kv::Error::Other(e.to_string())
}

impl wasi_kv::Host for SpinView<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<OpenStore>, wasi_kv::Error> {
        self.open_store(identifier).map_err(|e| match e {
            OpenError::Denied => wasi_kv::Error::AccessDenied,
            OpenError::Table(m) => wasi_kv::Error::Other(m),
        })
    }
}

impl wasi_kv::HostBucket for SpinView<'_> {
    async fn get(
        &mut self,
        b: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(&b, |o| &mut o.get, |kv, l| kv.get(l, &key))
            .map_err(wasi_kv::Error::Other)
    }
    async fn set(
        &mut self,
        b: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(&b, |o| &mut o.set, |kv, l| kv.set(l, &key, &value))
            .map_err(wasi_kv::Error::Other)
    }
    async fn delete(&mut self, b: Resource<OpenStore>, key: String) -> Result<(), wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(&b, |o| &mut o.delete, |kv, l| kv.delete(l, &key))
            .map_err(wasi_kv::Error::Other)
    }
    async fn exists(
        &mut self,
        b: Resource<OpenStore>,
        key: String,
    ) -> Result<bool, wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(&b, |o| &mut o.exists, |kv, l| kv.exists(l, &key))
            .map_err(wasi_kv::Error::Other)
    }
    fn list_keys(
        &mut self,
        b: Resource<OpenStore>,
        cursor: Option<String>,
    ) -> Result<wasi_kv::KeyResponse, wasi_kv::Error> {
        if cursor.is_some() {
            return Err(wasi_kv::Error::Other(
                "list-keys cursors are not supported; the first call returns every key".into(),
            ));
        }
        let keys = self
            .on(&b, |o| &mut o.list, |kv, l| kv.keys(l))
            .map_err(wasi_kv::Error::Other)?;
        Ok(wasi_kv::KeyResponse { keys, cursor: None })
    }
    fn drop(&mut self, b: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for SpinView<'_> {
    async fn increment(
        &mut self,
        b: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> Result<i64, wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(
            &b,
            |o| &mut o.increment,
            |kv, l| kv.increment(l, &key, delta),
        )
        .map_err(wasi_kv::Error::Other)
    }
    /// Writes `value` only if the key still holds what the handle saw, in one atomic backend
    /// operation; on a mismatch the caller gets a fresh handle with the current value.
    fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        self.state.ops.cas += 1;
        let cas = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(wasi_err(e)))?;
        let swapped = cas
            .backend
            .compare_and_swap(&cas.label, &cas.key, cas.seen.as_deref(), &value)
            .map_err(|e| atomics::CasError::StoreError(wasi_err(e)))?;
        if swapped {
            return Ok(());
        }
        let now = cas
            .backend
            .get(&cas.label, &cas.key)
            .map_err(|e| atomics::CasError::StoreError(wasi_err(e)))?;
        let again = Cas { seen: now, ..cas };
        let res = self
            .table
            .push(again)
            .map_err(|e| atomics::CasError::StoreError(wasi_err(e)))?;
        Err(atomics::CasError::CasFailed(res))
    }
}

impl atomics::HostCas for SpinView<'_> {
    fn new(
        &mut self,
        b: Resource<OpenStore>,
        key: String,
    ) -> Result<Resource<Cas>, wasi_kv::Error> {
        self.state.ops.cas += 1;
        let b = self.table.get(&b).map_err(wasi_err)?;
        let (label, backend) = (b.label.clone(), b.backend.clone());
        let seen = backend.get(&label, &key).map_err(wasi_err)?;
        self.table
            .push(Cas {
                label,
                backend,
                key,
                seen,
            })
            .map_err(wasi_err)
    }
    fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, wasi_kv::Error> {
        Ok(self.table.get(&cas).map_err(wasi_err)?.seen.clone())
    }
    fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for SpinView<'_> {
    async fn get_many(
        &mut self,
        b: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(
            &b,
            |o| &mut o.get_many,
            |kv, l| {
                let values = kv.get_many(l, &keys)?;
                Ok(keys.into_iter().zip(values).collect())
            },
        )
        .map_err(wasi_kv::Error::Other)
    }
    async fn set_many(
        &mut self,
        b: Resource<OpenStore>,
        kvs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(&b, |o| &mut o.set_many, |kv, l| kv.set_many(l, &kvs))
            .map_err(wasi_kv::Error::Other)
    }
    async fn delete_many(
        &mut self,
        b: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> Result<(), wasi_kv::Error> {
        self.yield_after_response().await;
        self.on(&b, |o| &mut o.delete_many, |kv, l| kv.delete_many(l, &keys))
            .map_err(wasi_kv::Error::Other)
    }
}

/// What lumen-host answers to `fermyon:spin/llm`: it runs no model (Fermyon Cloud's serverless
/// GPUs do), so every call is a runtime error that says so.
pub const LLM_NOT_AVAILABLE: &str = "fermyon:spin/llm is not available in lumen-host (it runs no model); deploy to a Spin platform with LLM support, e.g. Fermyon Cloud";

impl spin_llm::Host for SpinView<'_> {
    fn infer(
        &mut self,
        _model: String,
        _prompt: String,
        _params: Option<spin_llm::InferencingParams>,
    ) -> Result<spin_llm::InferencingResult, spin_llm::Error> {
        Err(spin_llm::Error::RuntimeError(LLM_NOT_AVAILABLE.into()))
    }

    fn generate_embeddings(
        &mut self,
        _model: String,
        _text: Vec<String>,
    ) -> Result<spin_llm::EmbeddingsResult, spin_llm::Error> {
        Err(spin_llm::Error::RuntimeError(LLM_NOT_AVAILABLE.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryKv;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend where another writer changes `key` right after the second read of it: the read
    /// that a get-then-set `swap` makes.
    struct Racing {
        inner: MemoryKv,
        gets: AtomicUsize,
    }

    impl KvBackend for Racing {
        fn get(&self, store: &str, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
            let v = self.inner.get(store, key)?;
            if self.gets.fetch_add(1, Ordering::SeqCst) == 1 {
                self.inner.set(store, key, b"other writer")?;
            }
            Ok(v)
        }
        fn set(&self, s: &str, k: &str, v: &[u8]) -> wasmtime::Result<()> {
            self.inner.set(s, k, v)
        }
        fn delete(&self, s: &str, k: &str) -> wasmtime::Result<()> {
            self.inner.delete(s, k)
        }
        fn keys(&self, s: &str) -> wasmtime::Result<Vec<String>> {
            self.inner.keys(s)
        }
        fn increment(&self, s: &str, k: &str, d: i64) -> wasmtime::Result<i64> {
            self.inner.increment(s, k, d)
        }
        fn compare_and_swap(
            &self,
            s: &str,
            k: &str,
            e: Option<&[u8]>,
            n: &[u8],
        ) -> wasmtime::Result<bool> {
            if self.gets.fetch_add(1, Ordering::SeqCst) == 1 {
                self.inner.set(s, k, b"other writer")?;
            }
            self.inner.compare_and_swap(s, k, e, n)
        }
    }

    /// Regression: `swap` used to read the value again and then write, so a writer between the
    /// two was silently overwritten. It must fail the swap instead.
    #[test]
    fn swap_never_overwrites_a_concurrent_write() {
        let backend: Arc<dyn KvBackend> = Arc::new(Racing {
            inner: MemoryKv::default(),
            gets: AtomicUsize::new(0),
        });
        backend.set("default", "k", b"v0").unwrap();
        let state = SpinState {
            stores: Arc::new(HashMap::from([("default".to_string(), backend.clone())])),
            variables: Arc::new(HashMap::new()),
            ops: KvOps::default(),
            outparam: None,
        };
        let mut state = state;
        let mut table = ResourceTable::new();
        let mut view = SpinView {
            state: &mut state,
            table: &mut table,
        };
        let bucket = wasi_kv::Host::open(&mut view, "default".into()).unwrap();
        // The first read: the CAS handle remembers "v0".
        let cas = atomics::HostCas::new(&mut view, bucket, "k".into()).unwrap();
        // The other writer lands now, during the swap.
        let res = atomics::Host::swap(&mut view, cas, b"mine".to_vec());
        assert!(
            matches!(res, Err(atomics::CasError::CasFailed(_))),
            "swap must fail when the value changed since the handle was made"
        );
        assert_eq!(
            backend.get("default", "k").unwrap().as_deref(),
            Some(&b"other writer"[..])
        );
    }
}
