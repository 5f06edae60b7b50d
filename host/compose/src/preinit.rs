//! Pre-initialization with Wizer, Wasmtime's pre-initializer: a component that exports
//! `wizer-initialize` is instantiated here, at build time, with every import trapping; its
//! `wizer-initialize` runs, and its memories and globals are written into a new component whose
//! instances start in that state. The router decodes its baked catalog there, so no request
//! decodes it again (`components/router/src/lib.rs`, `baked`).
//!
//! The export stays in the result: Wasmtime 48's pre-initializer writes an invalid component
//! when asked to remove it. Calling it again does nothing (what it initializes is already set).

use anyhow::{anyhow, Context, Result};
use wasmtime::component::{Component, Instance, Lift, Linker, WasmList};
use wasmtime::{Engine, Store};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// The export a component pre-initializes itself with.
pub const INIT: &str = "wizer-initialize";

/// `wasm`, which exports [`INIT`], pre-initialized.
pub fn preinit(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut wizer = Wizer::new();
    wizer.init_func(INIT).keep_init_func(true);
    let (cx, instrumented) = wizer
        .instrument_component(wasm)
        .map_err(|e| anyhow!("{e:?}"))
        .context("instrumenting the component for pre-initialization")?;
    let engine = Engine::default();
    let component = Component::new(&engine, &instrumented).map_err(|e| anyhow!("{e:?}"))?;
    let mut linker = Linker::new(&engine);
    linker
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| anyhow!("{e:?}"))?;
    let mut store = Store::new(&engine, ());
    let instance = linker
        .instantiate(&mut store, &component)
        .map_err(|e| anyhow!("{e:?}"))?;
    instance
        .get_typed_func::<(), ()>(&mut store, INIT)
        .and_then(|init| init.call(&mut store, ()))
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("`{INIT}` failed (it may not call any import: WASI, Spin)"))?;
    let snapshot = futures::executor::block_on(wizer.snapshot_component(
        &cx,
        &mut Snapshot {
            store: &mut store,
            instance,
        },
    ))
    .map_err(|e| anyhow!("{e:?}"))
    .context("snapshotting the pre-initialized component")?;
    Ok(snapshot)
}

/// The initialized instance, read by the pre-initializer through the accessors it added.
struct Snapshot<'a> {
    store: &'a mut Store<()>,
    instance: Instance,
}

impl Snapshot<'_> {
    /// Calls `instance`'s accessor `func` and hands its result to `read`.
    fn call<R: Lift + 'static, T>(
        &mut self,
        instance: &str,
        func: &str,
        read: impl FnOnce(&Store<()>, R) -> T,
    ) -> T {
        let store = &mut *self.store;
        let (_, at) = self
            .instance
            .get_export(&mut *store, None, instance)
            .unwrap_or_else(|| panic!("the instrumented component exports {instance}"));
        let (_, at) = self
            .instance
            .get_export(&mut *store, Some(&at), func)
            .unwrap_or_else(|| panic!("the instrumented component exports {instance}.{func}"));
        let f = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *store, at)
            .unwrap_or_else(|e| panic!("{instance}.{func} has the accessor's type: {e:?}"));
        let (value,) = f
            .call(&mut *store, ())
            .unwrap_or_else(|e| panic!("{instance}.{func} trapped: {e:?}"));
        read(store, value)
    }
}

impl ComponentInstanceState for Snapshot<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(store))
        })
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, v| v)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, v| v)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, v: f32| v.to_bits())
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, v: f64| v.to_bits())
    }
}
