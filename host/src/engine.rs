//! The wasmtime engine (pooling allocator) and the on-disk cache of compiled components, so a
//! restart deserialises in milliseconds instead of recompiling for a second or more.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Result};

/// Concurrent component instances the pool holds by default (each request uses up to four at
/// once); `--max-instances` changes it.
pub const POOL_INSTANCES: u32 = 1000;

/// The process-wide engine of the default pool size.
pub fn shared_engine() -> Result<Engine> {
    engine_for(POOL_INSTANCES)
}

/// The process-wide engine with a pool of `instances` instances: one pooling allocator per
/// size, shared by every app this process loads with that size (each pool reserves address
/// space for all its slots, so tests starting many hosts must not make one each).
pub fn engine_for(instances: u32) -> Result<Engine> {
    static ENGINES: std::sync::Mutex<Vec<(u32, Engine)>> = std::sync::Mutex::new(Vec::new());
    let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, e)) = engines.iter().find(|(n, _)| *n == instances) {
        return Ok(e.clone());
    }
    let engine = new_engine_with(instances.max(1))?;
    engines.push((instances, engine.clone()));
    Ok(engine)
}

/// Builds an engine with the default pool size.
pub fn new_engine() -> Result<Engine> {
    new_engine_with(POOL_INSTANCES)
}

/// Builds an engine: pooling allocator sized for `instances` component instances; falls back
/// to on-demand allocation where the machine cannot reserve the pool's address space.
pub fn new_engine_with(instances: u32) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    // Core instances, memories and tables: at least what one component may use, so that a
    // tiny pool still fits one instance of each component.
    pool.total_component_instances(instances)
        // The composed gateway is four components in one: per request it instantiates their
        // core modules (and the glue wit-component adds), each with its memory and tables.
        .total_core_instances((instances * 20).max(50))
        .total_memories((instances * 6).max(10))
        .total_tables((instances * 20).max(20))
        .total_stacks(instances)
        .max_memory_size(512 << 20)
        .max_core_instances_per_component(50)
        .max_memories_per_component(10)
        .max_tables_per_component(20)
        // Give every freed instance's memory back to the kernel at once (issue 13, D16). Keeping
        // 128 KiB resident per slot and decommitting in batches of 16 saved a syscall per
        // instance, but left each touched slot's 128 KiB and up to 15 whole memories per queue
        // shard (megabytes each after a 4 MiB body) resident for good: RSS after a burst of
        // large requests stayed 1.5–2.8× idle. Measured on 2 vCPU, the gateway's added p50
        // and its throughput did not move beyond run-to-run noise (scripts/bench.sh).
        .linear_memory_keep_resident(0)
        .table_keep_resident(0)
        .decommit_batch_size(1);
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if std::env::var_os("LUMEN_HOST_PERFMAP").is_some() {
        // `perf` names the guests' functions (/tmp/perf-<pid>.map); for profiling only.
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    match Engine::new(&cfg) {
        Ok(e) => Ok(e),
        Err(err) => {
            eprintln!(
                "lumen-host: pooling allocator unavailable ({err}); using on-demand allocation"
            );
            let mut cfg = Config::new();
            cfg.wasm_component_model(true);
            Engine::new(&cfg)
        }
    }
}

/// Loads a component, from `cache_dir` when it holds a build for these exact bytes and this
/// engine configuration, otherwise compiling and writing the cache.
pub fn load_component(engine: &Engine, wasm_path: &Path, cache_dir: &Path) -> Result<Component> {
    let bytes = std::fs::read(wasm_path).map_err(|e| {
        wasmtime::format_err!(
            "cannot read component {}: {e} (build the components first: scripts/build.sh)",
            wasm_path.display()
        )
    })?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let key = format!(
        "{}-{:016x}.cwasm",
        hex::encode(Sha256::digest(&bytes)),
        h.finish()
    );
    let cached = cache_dir.join(key);
    if cached.is_file() {
        // SAFETY: the file was written by `Component::serialize` of this engine configuration
        // (the name binds the wasm's sha256 and the engine's compatibility hash) into a cache
        // directory only this host writes; wasmtime also checks the header before use.
        #[expect(unsafe_code, reason = "deserialising our own precompiled cache")]
        let loaded = unsafe { Component::deserialize_file(engine, &cached) };
        match loaded {
            Ok(c) => return Ok(c),
            Err(e) => eprintln!(
                "lumen-host: ignoring unusable cache entry {}: {e}",
                cached.display()
            ),
        }
    }
    let component = Component::new(engine, &bytes)
        .map_err(|e| wasmtime::format_err!("cannot compile {}: {e}", wasm_path.display()))?;
    if std::fs::create_dir_all(cache_dir).is_ok() {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = cached.with_extension(format!("tmp{}-{n}", std::process::id()));
        if let Ok(ser) = component.serialize() {
            if std::fs::write(&tmp, ser).is_ok() {
                let _ = std::fs::rename(&tmp, &cached);
            }
        }
    }
    Ok(component)
}
