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

/// KiB of a freed instance's linear memory kept resident for the next request by default
/// (tables keep half); `--instance-keep-kib` changes it.
pub const KEEP_RESIDENT_KIB: u32 = 128;

/// The process-wide engine of the default pool size.
pub fn shared_engine() -> Result<Engine> {
    engine_for(POOL_INSTANCES, KEEP_RESIDENT_KIB)
}

/// The process-wide engine with a pool of `instances` instances keeping `keep_kib` KiB of each
/// freed memory warm: one pooling allocator per setting, shared by every app this process loads
/// with it (each pool reserves address space for all its slots, so tests starting many hosts
/// must not make one each).
pub fn engine_for(instances: u32, keep_kib: u32) -> Result<Engine> {
    type Engines = Vec<((u32, u32), Engine)>;
    static ENGINES: std::sync::Mutex<Engines> = std::sync::Mutex::new(Vec::new());
    let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
    let setting = (instances, keep_kib);
    if let Some((_, e)) = engines.iter().find(|(s, _)| *s == setting) {
        return Ok(e.clone());
    }
    let engine = new_engine_with(instances.max(1), keep_kib)?;
    engines.push((setting, engine.clone()));
    Ok(engine)
}

/// Builds an engine with the default pool size.
pub fn new_engine() -> Result<Engine> {
    new_engine_with(POOL_INSTANCES, KEEP_RESIDENT_KIB)
}

/// Builds an engine: pooling allocator sized for `instances` component instances, keeping
/// `keep_kib` KiB of each freed memory (half that of each table) resident for the next
/// instance; falls back to on-demand allocation where the machine cannot reserve the pool's
/// address space.
pub fn new_engine_with(instances: u32, keep_kib: u32) -> Result<Engine> {
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
        // Resetting a freed instance is the largest cost of a request after the guest's own
        // work. Returning every page to the kernel at once (madvise) made each request fault
        // its pages back in and send a TLB-shootdown IPI to the other core per memory: 45 % of
        // lumen-host's CPU was kernel time (1.9 ms per non-stream request, 2 vCPU). Instead,
        // the kernel's PAGEMAP_SCAN (Linux >= 6.7; plain memset of the low bytes before that)
        // finds the pages an instance dirtied and zeroes up to `keep_kib` of them in place;
        // what lies beyond goes back to the kernel at once (batch of 1), so a 4 MiB body's
        // memory still leaves as soon as its instance ends (issue 13, D16). Measured with wrk,
        // 8 connections, 128 KiB: 0.87-1.05 ms CPU per request and 1.5-1.9k req/s, from
        // 1.7-2.3 ms and 0.75-1.07k req/s. What stays resident is bounded by the peak
        // concurrency: no unused warm slot is preferred, so the slots reused are the most
        // recently freed, and each keeps at most `keep_kib` (about 0.75 MiB per request that
        // ran at once with 128 KiB; scripts/bench-memory.sh reports it).
        .linear_memory_keep_resident((keep_kib as usize) << 10)
        .table_keep_resident((keep_kib as usize) << 9)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .max_unused_warm_slots(0)
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
