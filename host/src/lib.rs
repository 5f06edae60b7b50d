//! `lumen-host`: Lumen's runtime on wasmtime. It runs the Spin application described by
//! `spin.toml` — the same manifest and `.wasm` files `spin up` runs — providing exactly the
//! imports Spin provides, so tests and single-machine deployments need no `spin` CLI.

pub mod app;
pub mod body;
pub mod conn_io;
pub mod engine;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod outbound;
pub mod outbound_http;
pub mod reply;
pub mod runtime_config;
pub mod server;
pub mod spin;
pub mod sys;
pub mod variables;

use app::{App, AppConfig};
use kv::{KvBackend, MemoryKv, RedisKv, SqliteKv};
pub use limits::Limits;
use runtime_config::KvStoreConfig;
use server::Activity;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{format_err, Result};

/// How to run the app.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Path to `spin.toml`.
    pub manifest: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Spin runtime config file (key-value store backends).
    pub runtime_config: Option<PathBuf>,
    /// State directory (default `<manifest dir>/.spin`): the default SQLite store lives here.
    pub state_dir: Option<PathBuf>,
    /// Keep the default store in memory instead of SQLite (unit tests).
    pub memory_kv: bool,
    /// Variable values, highest precedence (the CLI passes `SPIN_VARIABLE_*` here).
    pub variables: HashMap<String, String>,
    /// Compiled-component cache (default `<state dir>/cache`).
    pub cache_dir: Option<PathBuf>,
    /// Timeouts and caps of the listener (see [`Limits`] for the defaults).
    pub limits: Limits,
    /// Append one JSON line per request with its key-value round trips here
    /// (`LUMEN_HOST_KV_LOG`): how the KV-operation ceilings are tested and reported.
    pub kv_log: Option<PathBuf>,
    /// Wraps each key-value store as it is opened (tests: a store that stalls on chosen keys);
    /// the CLI sets none.
    pub kv_layer: Option<KvLayer>,
    /// Threads serving connections (default: the CPUs this process may use). The first
    /// accepts and hands each connection to the one with the fewest open; each serves its
    /// connections on a single-threaded runtime, so a request runs start to end on one thread.
    pub workers: usize,
}

/// The CPUs this process may use (1 when unknown): the default number of workers.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What wraps a store: given its label and the store, the store instances will use.
pub type WrapStore = dyn Fn(&str, Arc<dyn KvBackend>) -> Arc<dyn KvBackend> + Send + Sync;

/// A wrapper put around every key-value store when the host opens it.
#[derive(Clone)]
pub struct KvLayer(pub Arc<WrapStore>);

impl std::fmt::Debug for KvLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvLayer(..)")
    }
}

impl HostOptions {
    /// Defaults for `manifest`: 127.0.0.1:0, SQLite under `.spin`, no variable overrides.
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            runtime_config: None,
            state_dir: None,
            memory_kv: false,
            variables: HashMap::new(),
            cache_dir: None,
            limits: Limits::default(),
            kv_log: None,
            kv_layer: None,
            workers: default_workers(),
        }
    }
}

/// A host serving requests.
pub struct RunningHost {
    addr: SocketAddr,
    app: Arc<App>,
    admission: limits::Admission,
    stores: HashMap<String, Arc<dyn KvBackend>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Each worker's open connections, the listening worker first.
    workers: Vec<Arc<std::sync::atomic::AtomicUsize>>,
}

impl RunningHost {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A key-value store by label, as the components see it (tests inspect what was stored).
    pub fn store(&self, label: &str) -> Option<Arc<dyn KvBackend>> {
        self.stores.get(label).cloned()
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The route table as `spin up` prints it.
    pub fn describe_routes(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .app
            .routes()
            .iter()
            .map(|r| r.describe(self.addr))
            .collect();
        for id in self.app.private_components() {
            lines.push(format!("{id}: private (http://{id}.spin.internal)"));
        }
        lines
    }

    /// Client connections open now on each serving worker, the listening one first.
    pub fn connections_per_worker(&self) -> Vec<usize> {
        use std::sync::atomic::Ordering;
        self.workers
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Client connections open now (refused ones excluded).
    pub fn open_connections(&self) -> usize {
        self.admission.connections()
    }

    /// Requests so far whose instance was made ahead of them, after the request before ended.
    pub fn spares_used(&self) -> u64 {
        self.app.spares_used()
    }

    /// Components with an instance made and waiting for their next request.
    pub fn spares_waiting(&self) -> usize {
        self.app.spares_waiting()
    }

    /// Stops accepting, waits up to 5 s for requests in flight, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What every serving worker shares.
#[derive(Clone)]
struct Worker {
    served: server::Served,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    /// After the host stops: waits up to 5 s for the requests in flight.
    async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.served.activity().in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves the connections handed to it on a thread of its own with a single-threaded
    /// runtime; the receiver completes when that thread is done.
    fn spawn_thread(self, n: usize) -> Result<(server::Door, tokio::sync::oneshot::Receiver<()>)> {
        let (door, handed) = server::Door::remote();
        let open = door.open();
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("lumen-worker-{n}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(async move {
                        server::serve_handed(
                            handed,
                            self.served.clone(),
                            open,
                            self.stopped.clone(),
                        )
                        .await;
                        self.drain().await;
                    }),
                    Err(e) => eprintln!("lumen-host: worker {n} cannot start its runtime: {e}"),
                }
                let _ = done.send(());
            })
            .map_err(|e| format_err!("cannot start worker thread {n}: {e}"))?;
        Ok((door, finished))
    }
}

/// Binds with `SO_REUSEADDR`, so a restart can take the port while old connections sit in
/// TIME_WAIT (as `spin up` can).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Loads the app and starts serving.
pub async fn start(opts: HostOptions) -> Result<RunningHost> {
    let manifest = manifest::Manifest::load(&opts.manifest)?;
    let vars = variables::AppVariables::resolve(&manifest, &opts.variables)?;
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| manifest.dir.join(".spin"));
    let mut configs: HashMap<String, KvStoreConfig> = HashMap::new();
    configs.insert(
        "default".into(),
        if opts.memory_kv {
            KvStoreConfig::Memory
        } else {
            KvStoreConfig::Sqlite(state_dir.join("sqlite_key_value.db"))
        },
    );
    if let Some(rc) = &opts.runtime_config {
        configs.extend(runtime_config::load(rc)?);
    }
    let mut stores: HashMap<String, Arc<dyn KvBackend>> = HashMap::new();
    for (label, cfg) in configs {
        let backend: Arc<dyn KvBackend> = match cfg {
            KvStoreConfig::Memory => Arc::new(MemoryKv::default()),
            KvStoreConfig::Sqlite(path) => Arc::new(SqliteKv::open(&path)?),
            KvStoreConfig::Redis(url) => Arc::new(RedisKv::open(&url)?),
        };
        let backend = match &opts.kv_layer {
            Some(KvLayer(wrap)) => wrap(&label, backend),
            None => backend,
        };
        stores.insert(label, backend);
    }
    let cache_dir = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("cache"));
    let app = App::load(AppConfig {
        manifest: &manifest,
        variables: &vars,
        stores: &stores,
        cache_dir: &cache_dir,
        max_instances: opts.limits.max_instances,
        instance_keep_kib: opts.limits.instance_keep_kib,
        kv_log: opts.kv_log.as_deref(),
    })?;

    let listener =
        bind(opts.listen).map_err(|e| format_err!("cannot listen on {}: {e}", opts.listen))?;
    let addr = listener.local_addr().map_err(|e| format_err!("{e}"))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admission = limits::Admission::new(opts.limits.clone());
    let activity = Arc::new(Activity::default());
    server::spawn_memory_trimmer(activity.clone(), stopped.clone());
    let worker = Worker {
        served: server::Served::new(app.clone(), admission.clone(), activity, addr),
        stopped,
    };
    // Thread per core: the first worker listens, on the caller's runtime, and hands each new
    // connection to the worker with the fewest open (itself on a tie); every other worker runs
    // on a thread of its own with a single-threaded runtime. A connection stays with its
    // worker, and so does each request on it, its component instances and its upstream
    // connection: no request hops between threads (a multi-threaded runtime moved one to the
    // other core about three times per request at 10 req/s — bench/RESULTS.md).
    let mut others = Vec::new();
    let mut finished = Vec::new();
    for n in 1..opts.workers.max(1) {
        let (door, done) = worker.clone().spawn_thread(n)?;
        others.push(door);
        finished.push(done);
    }
    let here = server::Door::default();
    let workers = std::iter::once(&here)
        .chain(&others)
        .map(server::Door::open)
        .collect();
    let task = tokio::spawn(async move {
        server::serve(
            listener,
            worker.served.clone(),
            here,
            others,
            worker.stopped.clone(),
        )
        .await;
        worker.drain().await;
        for done in finished {
            let _ = done.await;
        }
    });
    Ok(RunningHost {
        addr,
        app,
        admission,
        stores,
        stop,
        task,
        workers,
    })
}
