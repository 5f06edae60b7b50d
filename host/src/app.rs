//! The loaded application: components pre-linked as `ProxyPre`s, HTTP routing by the manifest's
//! triggers, one fresh instance per request, and `http://<id>.spin.internal` service chaining
//! dispatched in process with bodies streaming both ways.

use crate::engine;
use crate::kv::KvBackend;
use crate::manifest::{Component as ComponentDef, Manifest, Route};
use crate::outbound::{chaining_target, AllowedHost};
use crate::outbound_http::OutboundHttp;
use crate::reply;
use crate::spin::{bindings::SpinImports, KvOps, SpinState, SpinView};
use crate::variables::AppVariables;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{format_err, Engine, Result, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// A response body as the host hands it to hyper.
pub type HostBody = HyperOutgoingBody;

/// A response as the host hands it to hyper.
pub type HostResponse = http::Response<HostBody>;

/// One component, ready to instantiate.
pub struct ComponentRuntime {
    id: String,
    pre: ProxyPre<Ctx>,
    def: ComponentDef,
    variables: Arc<HashMap<String, String>>,
    stores: Arc<HashMap<String, Arc<dyn KvBackend>>>,
    allowed: Vec<AllowedHost>,
    /// The next request's instance, made after the last request ended (see [`App::refill`]).
    spare: std::sync::Mutex<Option<Spare>>,
    /// Whether a task is making the spare now (one at a time).
    refilling: AtomicBool,
}

impl ComponentRuntime {
    /// The spare slot, locked.
    fn spare(&self) -> std::sync::MutexGuard<'_, Option<Spare>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spare instance, if one is waiting.
    fn take_spare(&self) -> Option<Spare> {
        self.spare().take()
    }
}

/// A fresh store with the component instantiated in it, waiting for a request. Its handler has
/// not been called: the request's call is the first, as with an instance made for it.
struct Spare {
    store: Store<Ctx>,
    proxy: Proxy,
}

/// A public route.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// As written in the manifest.
    pub pattern: String,
    /// Component id.
    pub component: String,
    segments: Vec<String>,
    wildcard: bool,
}

impl RouteEntry {
    fn new(pattern: &str, component: &str) -> Self {
        let (base, wildcard) = match pattern.strip_suffix("/...") {
            Some(b) => (b, true),
            None => (pattern.trim_end_matches('/'), false),
        };
        let segments = base
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Self {
            pattern: pattern.to_string(),
            component: component.to_string(),
            segments,
            wildcard,
        }
    }

    /// The matched base path and the rest (`spin-path-info`), when `path` matches.
    fn matches(&self, path: &str) -> Option<(String, String)> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        for (want, got) in self.segments.iter().zip(&parts) {
            if !want.starts_with(':') && want != got {
                return None;
            }
        }
        let base = format!("/{}", parts[..self.segments.len()].join("/"));
        let rest = format!("/{}", parts[self.segments.len()..].join("/"));
        Some((base, rest))
    }

    /// Exact routes before wildcards; longer before shorter.
    fn priority(&self) -> (bool, std::cmp::Reverse<usize>) {
        (self.wildcard, std::cmp::Reverse(self.segments.len()))
    }

    /// `auth: http://ADDR/v1 (wildcard)` as `spin up` prints it.
    pub fn describe(&self, addr: SocketAddr) -> String {
        let base = self.pattern.strip_suffix("/...").unwrap_or(&self.pattern);
        format!(
            "{}: http://{addr}{base}{}",
            self.component,
            if self.wildcard { " (wildcard)" } else { "" }
        )
    }
}

/// The whole application.
pub struct App {
    engine: Engine,
    max_instances: u32,
    components: HashMap<String, Arc<ComponentRuntime>>,
    routes: Vec<RouteEntry>,
    private: Vec<String>,
    kv_log: Option<std::sync::Mutex<std::fs::File>>,
    /// Requests that found their instance made ahead (tests read it).
    spares_used: AtomicU64,
}

/// Everything needed to build an [`App`].
pub struct AppConfig<'a> {
    /// The manifest.
    pub manifest: &'a Manifest,
    /// Resolved application variables.
    pub variables: &'a AppVariables,
    /// Store label → backend.
    pub stores: &'a HashMap<String, Arc<dyn KvBackend>>,
    /// Where compiled components are cached.
    pub cache_dir: &'a Path,
    /// Component instances alive at once (the pooling allocator's size).
    pub max_instances: u32,
    /// KiB of a freed instance's memory kept resident for the next one (see `Limits`).
    pub instance_keep_kib: u32,
    /// Where to append one JSON line per request with its key-value round trips.
    pub kv_log: Option<&'a Path>,
}

impl App {
    /// Compiles (or loads from cache) and pre-links every component.
    pub fn load(cfg: AppConfig<'_>) -> Result<Arc<App>> {
        let engine = engine::engine_for(cfg.max_instances, cfg.instance_keep_kib)?;
        let mut linker: Linker<Ctx> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        SpinImports::add_to_linker::<Ctx, SpinData>(&mut linker, Ctx::spin_view)?;

        let mut components = HashMap::new();
        for (id, def) in &cfg.manifest.components {
            let at = |e: wasmtime::Error| format_err!("component {id:?}: {e}");
            let variables = cfg.variables.for_component(&def.variables).map_err(at)?;
            let mut allowed = Vec::new();
            for rule in &def.allowed_outbound_hosts {
                let resolved = cfg
                    .variables
                    .expand_over(Some(&variables), rule)
                    .map_err(at)?;
                allowed.push(
                    AllowedHost::parse(&resolved).map_err(|e| {
                        format_err!("component {id:?}: allowed_outbound_hosts: {e}")
                    })?,
                );
            }
            let mut stores = HashMap::new();
            for label in &def.key_value_stores {
                let backend = cfg.stores.get(label).ok_or_else(|| {
                    format_err!("component {id:?} uses key-value store {label:?}, which is not defined; define it in the runtime config ([key_value_store.{label}])")
                })?;
                stores.insert(label.clone(), backend.clone());
            }
            let component = engine::load_component(&engine, &def.source, cfg.cache_dir)?;
            let pre = linker.instantiate_pre(&component).map_err(|e| {
                format_err!("component {id:?} imports something lumen-host does not provide (only what Spin provides is available): {e}")
            })?;
            let pre = ProxyPre::new(pre).map_err(|e| {
                format_err!("component {id:?} does not export wasi:http/incoming-handler: {e}")
            })?;
            components.insert(
                id.clone(),
                Arc::new(ComponentRuntime {
                    id: id.clone(),
                    pre,
                    def: def.clone(),
                    variables: Arc::new(variables),
                    stores: Arc::new(stores),
                    allowed,
                    spare: std::sync::Mutex::new(None),
                    refilling: AtomicBool::new(false),
                }),
            );
        }
        let mut routes: Vec<RouteEntry> = Vec::new();
        let mut private = Vec::new();
        for t in &cfg.manifest.triggers {
            match &t.route {
                Route::Private => private.push(t.component.clone()),
                Route::Path(p) => routes.push(RouteEntry::new(p, &t.component)),
            }
        }
        routes.sort_by_key(RouteEntry::priority);
        let kv_log = match cfg.kv_log {
            None => None,
            Some(p) => Some(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format_err!("cannot open the KV log {}: {e}", p.display()))?,
            )),
        };
        Ok(Arc::new(App {
            engine,
            max_instances: cfg.max_instances,
            components,
            routes,
            private,
            kv_log,
            spares_used: AtomicU64::new(0),
        }))
    }

    /// Public routes in matching order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// Components reachable only by service chaining.
    pub fn private_components(&self) -> &[String] {
        &self.private
    }

    /// Serves one public request.
    pub async fn handle_public<B>(
        self: &Arc<Self>,
        req: http::Request<B>,
        client: SocketAddr,
        local: SocketAddr,
    ) -> HostResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let path = req.uri().path().to_string();
        let Some((route, base, rest)) = self
            .routes
            .iter()
            .find_map(|r| r.matches(&path).map(|(b, rest)| (r, b, rest)))
        else {
            return error_response(
                404,
                "route_not_found",
                &format!("no route in spin.toml matches {path}"),
            );
        };
        let Some(comp) = self.components.get(&route.component).cloned() else {
            return error_response(500, "internal_error", "route points at a missing component");
        };
        let (mut parts, body) = req.into_parts();
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| local.to_string());
        let full = format!(
            "http://{host}{}",
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        if let Ok(uri) = full.parse() {
            parts.uri = uri;
        }
        let h = &mut parts.headers;
        for (name, value) in [
            ("spin-full-url", full.as_str()),
            (
                "spin-path-info",
                if rest == "/" && !path.ends_with('/') {
                    ""
                } else {
                    rest.as_str()
                },
            ),
            ("spin-matched-route", route.pattern.as_str()),
            ("spin-raw-component-route", route.pattern.as_str()),
            ("spin-component-route", base.as_str()),
            ("spin-base-path", "/"),
            ("spin-client-addr", &client.to_string()),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
        let req = http::Request::from_parts(parts, body);
        let method = req.method().to_string();
        match self
            .clone()
            .invoke(comp, req, Scheme::Http, (method, path.clone()))
            .await
        {
            Ok(resp) => resp,
            Err(InvokeError::PoolExhausted(id)) => {
                static LOG: AtomicU64 = AtomicU64::new(0);
                let max = self.max_instances;
                reply::log_throttled(&LOG, || {
                    format!("lumen-host: {path}: no free instance for component {id:?}: all {max} instances are in use (max_instances); answered 503")
                });
                let mut resp = error_response(
                    503,
                    "server_busy",
                    "the gateway is at its limit of concurrent requests; retry shortly",
                );
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                resp
            }
            Err(InvokeError::Failed(e)) => {
                eprintln!("lumen-host: {path}: {e:?}");
                error_response(
                    500,
                    "internal_error",
                    "the gateway failed while handling this request",
                )
            }
        }
    }

    /// Runs `comp`'s handler on a fresh instance; resolves when the guest sets its response.
    /// The guest keeps running afterwards (streaming the body, settling usage) in its own task.
    async fn invoke<B>(
        self: Arc<Self>,
        comp: Arc<ComponentRuntime>,
        req: http::Request<B>,
        scheme: Scheme,
        (method, path): (String, String),
    ) -> Result<HostResponse, InvokeError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spare = comp.take_spare();
        if spare.is_some() {
            self.spares_used.fetch_add(1, Ordering::Relaxed);
        }
        let id = comp.id.clone();
        let app = self.clone();
        let task_comp = comp.clone();
        let task = tokio::spawn(async move {
            let comp = task_comp;
            let Spare { mut store, proxy } = match spare {
                Some(s) => s,
                None => app.instantiate(&comp).await?,
            };
            let req = store.data_mut().http().new_incoming_request(scheme, req)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            store.data_mut().spin.outparam = Some(out.rep());
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
                .map_err(InvokeError::Failed)?;
            let ops = store.data().spin.ops;
            // The connection task woken by the response waits on this worker's thread until
            // this task yields; dropping the store first (the pool's reset of every
            // instance's memories and tables) held the answer back by that much. Yield once so
            // the answer is written first, then tear down, then make the next request's
            // instance.
            tokio::task::yield_now().await;
            drop(store);
            app.refill(&comp).await;
            Ok::<KvOps, InvokeError>(ops)
        });
        match rx.await {
            Ok(Ok(resp)) => {
                let request_id = resp
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let status = resp.status().as_u16();
                let app = self.clone();
                tokio::spawn(async move {
                    match task.await {
                        Ok(Err(e)) => {
                            eprintln!("lumen-host: component {id:?} failed after responding: {e}")
                        }
                        Ok(Ok(ops)) => app.log_kv(&method, &path, status, &request_id, ops),
                        Err(_) => {}
                    }
                });
                Ok(resp)
            }
            Ok(Err(code)) => {
                Err(format_err!("component {:?} answered with error {code:?}", comp.id).into())
            }
            Err(_) => match task.await {
                Ok(Ok(_)) => Err(format_err!(
                    "component {:?} returned without setting a response",
                    comp.id
                )
                .into()),
                Ok(Err(InvokeError::PoolExhausted(_))) => Err(InvokeError::PoolExhausted(id)),
                Ok(Err(InvokeError::Failed(e))) => {
                    Err(e.context(format!("component {:?} trapped", comp.id)).into())
                }
                Err(e) => Err(format_err!("component {:?} task failed: {e}", comp.id).into()),
            },
        }
    }

    /// Appends a request's key-value round trips to the KV log, when one is configured.
    fn log_kv(&self, method: &str, path: &str, status: u16, request_id: &str, ops: KvOps) {
        let Some(log) = &self.kv_log else { return };
        let line = serde_json::json!({
            "method": method,
            "path": path,
            "status": status,
            "request_id": request_id,
            "total": ops.total(),
            "reads": ops.reads(),
            "writes": ops.writes(),
            "ops": ops,
        });
        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::io::Write::write_all(&mut *f, format!("{line}\n").as_bytes());
    }

    /// A fresh store with `comp` instantiated in it. When the pool is full, the spares that
    /// other components hold are given back first, so that a spare never costs a request its
    /// instance.
    async fn instantiate(
        self: &Arc<Self>,
        comp: &Arc<ComponentRuntime>,
    ) -> Result<Spare, InvokeError> {
        // A failed attempt's store (and anything it allocated) is dropped before the retry.
        match self.new_instance(comp).await {
            Err(e) if e.is::<wasmtime::PoolConcurrencyLimitError>() && self.drop_spares() => {
                self.new_instance(comp).await
            }
            made => made,
        }
        .map_err(InvokeError::instantiation)
    }

    /// A new store with `comp` instantiated in it.
    async fn new_instance(self: &Arc<Self>, comp: &Arc<ComponentRuntime>) -> Result<Spare> {
        let mut store = self.new_store(comp)?;
        let proxy = comp.pre.instantiate_async(&mut store).await?;
        Ok(Spare { store, proxy })
    }

    /// Makes `comp`'s next instance after a request ended, off any request's path: store and
    /// instantiation (~0.2 ms at idle) are then done before the next request arrives. One
    /// spare per component, made by one task at a time; none while the pool is full (and a
    /// request that finds the pool full takes back the other components' spares, see
    /// [`App::instantiate`]).
    async fn refill(self: &Arc<Self>, comp: &Arc<ComponentRuntime>) {
        if comp.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        // Only this task fills the slot, so it is still empty when the instance is made.
        if comp.spare().is_none() {
            if let Ok(spare) = self.new_instance(comp).await {
                *comp.spare() = Some(spare);
            }
        }
        comp.refilling.store(false, Ordering::Release);
    }

    /// Drops every component's spare; whether there was one.
    fn drop_spares(&self) -> bool {
        let mut dropped = false;
        for comp in self.components.values() {
            let spare = comp.take_spare();
            dropped |= spare.is_some();
            drop(spare);
        }
        dropped
    }

    /// Requests so far whose instance was made ahead of them.
    pub fn spares_used(&self) -> u64 {
        self.spares_used.load(Ordering::Relaxed)
    }

    /// Components whose spare is waiting now.
    pub fn spares_waiting(&self) -> usize {
        self.components
            .values()
            .filter(|c| c.spare().is_some())
            .count()
    }

    fn new_store(self: &Arc<Self>, comp: &Arc<ComponentRuntime>) -> Result<Store<Ctx>> {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout()
            .inherit_stderr()
            .allow_blocking_current_thread(true);
        for (k, v) in &comp.def.environment {
            wasi.env(k, v);
        }
        for m in &comp.def.files {
            wasi.preopened_dir(&m.source, &m.destination, FsPerms::ReadOnly)
                .map_err(|e| {
                    format_err!(
                        "component {:?}: cannot mount {}: {e}",
                        comp.id,
                        m.source.display()
                    )
                })?;
        }
        let ctx = Ctx {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                app: self.clone(),
                component: comp.clone(),
            },
            spin: SpinState {
                stores: comp.stores.clone(),
                variables: comp.variables.clone(),
                ops: KvOps::default(),
                outparam: None,
            },
        };
        Ok(Store::new(&self.engine, ctx))
    }
}

/// Why a component could not answer.
#[derive(Debug)]
pub enum InvokeError {
    /// Every instance of the pooling allocator is in use (the component's id).
    PoolExhausted(String),
    /// Anything else: a trap, a failed instantiation, no response set.
    Failed(wasmtime::Error),
}

impl InvokeError {
    fn instantiation(e: wasmtime::Error) -> Self {
        if e.is::<wasmtime::PoolConcurrencyLimitError>() {
            InvokeError::PoolExhausted(String::new())
        } else {
            InvokeError::Failed(e)
        }
    }
}

impl From<wasmtime::Error> for InvokeError {
    fn from(e: wasmtime::Error) -> Self {
        InvokeError::Failed(e)
    }
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::PoolExhausted(id) => {
                write!(
                    f,
                    "no free instance for component {id:?} (instance pool exhausted)"
                )
            }
            InvokeError::Failed(e) => write!(f, "{e:?}"),
        }
    }
}

/// An OpenAI-shaped error produced by the host itself, with a fresh `x-request-id`.
pub fn error_response(status: u16, code: &str, message: &str) -> HostResponse {
    let bytes = Bytes::from(reply::error_body(status, code, message));
    let len = bytes.len();
    let mut resp = http::Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    if let Ok(id) = http::HeaderValue::from_str(&reply::request_id()) {
        h.insert("x-request-id", id);
    }
    resp
}

/// Per-request store data.
pub struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    spin: SpinState,
}

impl Ctx {
    fn spin_view(&mut self) -> SpinView<'_> {
        SpinView {
            state: &mut self.spin,
            table: &mut self.table,
        }
    }
}

struct SpinData;
impl HasData for SpinData {
    type Data<'a> = SpinView<'a>;
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// Outbound HTTP policy of one instance: the allow-list, then chaining or the network.
struct Hooks {
    app: Arc<App>,
    component: Arc<ComponentRuntime>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16();
        if !self
            .component
            .allowed
            .iter()
            .any(|r| r.allows(&scheme, &host, port))
        {
            eprintln!(
                "lumen-host: component {:?} may not reach {scheme}://{host}{}: not in its allowed_outbound_hosts",
                self.component.id,
                port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let Some(target) = chaining_target(&host) {
            let target = self.app.components.get(target).cloned();
            let app = self.app.clone();
            return Box::new(async move {
                let Some(target) = target else {
                    return Err(wasmtime_wasi_http::Error::DestinationNotFound);
                };
                let id = target.id.clone();
                let max = app.max_instances;
                let what = (
                    request.method().to_string(),
                    request.uri().path().to_string(),
                );
                match app.invoke(target, request, Scheme::Http, what).await {
                    Ok(resp) => Ok((
                        resp,
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    )),
                    Err(InvokeError::PoolExhausted(_)) => {
                        static LOG: AtomicU64 = AtomicU64::new(0);
                        reply::log_throttled(&LOG, || {
                            format!("lumen-host: service chaining to {id:?}: no free instance (all {max} in use, max_instances)")
                        });
                        Err(wasmtime_wasi_http::Error::ConnectionLimitReached)
                    }
                    Err(e) => {
                        eprintln!("lumen-host: service chaining to {id:?} failed: {e}");
                        Err(wasmtime_wasi_http::Error::InternalError(Some(format!(
                            "component {id:?} failed"
                        ))))
                    }
                }
            });
        }
        let client = OutboundHttp::this_thread();
        Box::new(async move {
            let resp = client.send(request, options).await?;
            Ok((
                resp,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_like_spin() {
        let w = RouteEntry::new("/v1/...", "auth");
        assert_eq!(
            w.matches("/v1/chat/completions"),
            Some(("/v1".into(), "/chat/completions".into()))
        );
        assert_eq!(w.matches("/v1"), Some(("/v1".into(), "/".into())));
        assert_eq!(w.matches("/v2/x"), None);
        assert_eq!(w.matches("/v10"), None);
        let e = RouteEntry::new("/health", "h");
        assert!(e.matches("/health").is_some() && e.matches("/health/x").is_none());
        let p = RouteEntry::new("/users/:id", "u");
        assert!(p.matches("/users/42").is_some());
        let mut rs = [
            RouteEntry::new("/...", "root"),
            RouteEntry::new("/v1/...", "auth"),
            e,
        ];
        rs.sort_by_key(RouteEntry::priority);
        assert_eq!(
            rs.iter().map(|r| r.component.as_str()).collect::<Vec<_>>(),
            vec!["h", "auth", "root"]
        );
    }
}
