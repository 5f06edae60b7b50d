//! Which runtime the end-to-end tests run the compiled gateway under, chosen by
//! `LUMEN_TEST_RUNTIME`:
//!
//! - `host` (default): lumen-host in this process (`lumen_host::start`);
//! - `spin-sqlite`: a real `spin up` child process on Spin's default SQLite key-value store;
//! - `spin-redis`: two real `spin up` child processes sharing one `redis-server` (runtime
//!   config `[key_value_store.default] type = "redis"`), requests alternating between them.
//!
//! The Spin binary is `SPIN_BIN`, else `spin` on `PATH`, else the build kept in
//! `../shared/tools` (unpacked by its `get-spin.sh`). Spin takes its variables as
//! `SPIN_VARIABLE_<NAME>`, which is how the harness's variables reach it; it listens on a port
//! the harness picks (Spin cannot bind port 0 and say which port it got).

use super::procs::{temp_dir, RedisServer};
use super::repo;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The runtime under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// lumen-host, in process.
    Host,
    /// One `spin up` on its SQLite store.
    SpinSqlite,
    /// Two `spin up` on one Redis.
    SpinRedis,
}

impl Runtime {
    /// From `LUMEN_TEST_RUNTIME` (unset or empty: `host`).
    pub fn current() -> Runtime {
        match std::env::var("LUMEN_TEST_RUNTIME").as_deref() {
            Err(_) | Ok("") | Ok("host") => Runtime::Host,
            Ok("spin-sqlite") => Runtime::SpinSqlite,
            Ok("spin-redis") => Runtime::SpinRedis,
            Ok(other) => {
                panic!("LUMEN_TEST_RUNTIME={other:?}: expected host, spin-sqlite or spin-redis")
            }
        }
    }

    /// The name `LUMEN_TEST_RUNTIME` uses.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Host => "host",
            Runtime::SpinSqlite => "spin-sqlite",
            Runtime::SpinRedis => "spin-redis",
        }
    }

    /// Whether this is one of the real-Spin legs.
    pub fn is_spin(self) -> bool {
        self != Runtime::Host
    }
}

/// Under a Spin leg, prints that `test` is skipped and why (tests/README.md lists every such
/// skip) and returns true; the caller returns at once.
pub fn skip_under_spin(test: &str, why: &str) -> bool {
    let rt = Runtime::current();
    if rt.is_spin() {
        eprintln!("skipped under {}: {test}: {why}", rt.name());
        return true;
    }
    false
}

/// The Spin CLI: `SPIN_BIN`, `spin` on `PATH`, or `../shared/tools/get-spin.sh`; `Err` says
/// where it looked.
pub fn spin_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find_spin).clone()
}

fn find_spin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("SPIN_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("SPIN_BIN={} is not a file", bin.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(bin) = std::env::split_paths(&path)
            .map(|d| d.join("spin"))
            .find(|b| b.is_file())
        {
            return Ok(bin);
        }
    }
    let get = repo().join("../shared/tools/get-spin.sh");
    if !get.is_file() {
        return Err(format!(
            "no spin binary: SPIN_BIN is unset, no spin on PATH, no {}",
            get.display()
        ));
    }
    let out = Command::new(&get)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", get.display()))?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} failed ({})", get.display(), out.status))
    }
}

/// A port nobody listens on right now (Spin needs a concrete one; a lost race is retried).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A unique tag for temp dirs of this process.
pub fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// How long a Spin start may take: the first one compiles the component (seconds on a quiet
/// machine, much longer on a busy 2-core one); later ones load it from Spin's cache.
const SPIN_START_TIMEOUT: Duration = Duration::from_secs(300);

/// What a `spin up` child needs.
#[derive(Debug, Clone, Default)]
pub struct SpinOptions {
    /// Manifest (default: the repository's `spin.toml`).
    pub manifest: Option<PathBuf>,
    /// Variables by their manifest name; passed as `SPIN_VARIABLE_<NAME>`.
    pub variables: HashMap<String, String>,
    /// `--state-dir` (default: a fresh temp dir, removed on drop).
    pub state_dir: Option<PathBuf>,
    /// `--runtime-config-file`.
    pub runtime_config: Option<PathBuf>,
}

/// A `spin up` child process, killed on drop.
pub struct SpinProc {
    child: Child,
    bin: PathBuf,
    opts: SpinOptions,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its `--state-dir` (the SQLite store is `sqlite_key_value.db` in it).
    pub state: PathBuf,
    own_state: bool,
}

impl SpinProc {
    /// Starts `spin up` and waits until it serves. Blocking.
    pub fn start(tag: &str, opts: &SpinOptions) -> SpinProc {
        let bin = spin_bin().unwrap_or_else(|e| {
            panic!(
                "LUMEN_TEST_RUNTIME={} needs Spin: {e}",
                Runtime::current().name()
            )
        });
        // The first start in a process compiles (or loads) the component alone, so parallel
        // tests do not all compile it at once.
        static WARM: Mutex<bool> = Mutex::new(false);
        let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
        if *warm {
            drop(warm);
            return Self::start_with(&bin, tag, opts);
        }
        let started = Self::start_with(&bin, tag, opts);
        *warm = true;
        started
    }

    fn start_with(bin: &Path, tag: &str, opts: &SpinOptions) -> SpinProc {
        let (state, own_state) = match &opts.state_dir {
            Some(dir) => (dir.clone(), false),
            None => (temp_dir(&unique(&format!("spin-{tag}"))), true),
        };
        std::fs::create_dir_all(&state).expect("state dir");
        let manifest = opts
            .manifest
            .clone()
            .unwrap_or_else(|| repo().join("spin.toml"));
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let err_log = state.join("spin.stderr.log");
            let mut cmd = Command::new(bin);
            cmd.arg("up")
                .arg("-f")
                .arg(&manifest)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--state-dir")
                .arg(&state);
            if let Some(rc) = &opts.runtime_config {
                cmd.arg("--runtime-config-file").arg(rc);
            }
            // Only the harness's variables: none leak in from the caller's environment.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                    cmd.env_remove(k);
                }
            }
            for (name, value) in &opts.variables {
                cmd.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
            }
            // Its own process group: `spin up` runs the app in a child (`spin trigger http`)
            // that outlives a SIGKILL of its parent, so the whole group is killed.
            let mut child = cmd
                .process_group(0)
                .current_dir(repo())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&err_log).expect("stderr log"))
                .spawn()
                .unwrap_or_else(|e| panic!("{} up: {e}", bin.display()));
            let (tx, rx) = mpsc::channel();
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            // Hands the lines to the waiter, then keeps draining so Spin never blocks on a
            // full pipe.
            std::thread::spawn(move || {
                for line in out.lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + SPIN_START_TIMEOUT;
            let mut serving = false;
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(line) if line.starts_with("Serving http://") => {
                        serving = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if serving && wait_accepting(addr, &mut child) {
                return SpinProc {
                    child,
                    bin: bin.to_path_buf(),
                    opts: SpinOptions {
                        manifest: Some(manifest),
                        state_dir: Some(state.clone()),
                        ..opts.clone()
                    },
                    addr,
                    state,
                    own_state,
                };
            }
            kill_group(&mut child);
            let status = child.wait();
            last_err = format!(
                "spin up ({}) did not serve on {addr} within {}s ({status:?}); stderr:\n{}",
                bin.display(),
                SPIN_START_TIMEOUT.as_secs(),
                std::fs::read_to_string(&err_log).unwrap_or_default()
            );
            let lost_port_race = last_err.contains("in use");
            if !lost_port_race {
                break;
            }
        }
        panic!("{last_err}");
    }

    /// Stops the process and starts a new one on the same state dir (and store).
    pub fn restart(&mut self) {
        self.kill9();
        let mut next = Self::start_with(&self.bin, "restart", &self.opts);
        std::mem::swap(&mut self.child, &mut next.child);
        self.addr = next.addr;
        next.own_state = false; // `next` dies now; the state dir stays ours
    }

    /// SIGKILL to `spin up` and its trigger process: no shutdown, like a crashed replica.
    pub fn kill9(&mut self) {
        kill_group(&mut self.child);
    }

    /// The process that serves: `spin up` runs the app in a child (`spin trigger http`); its
    /// id when there is one (for `/proc` readings), else `spin up`'s.
    pub fn pid(&self) -> u32 {
        let id = self.child.id();
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(id)
    }
}

impl Drop for SpinProc {
    fn drop(&mut self) {
        self.kill9();
        if self.own_state {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

/// SIGKILL to the process group `child` leads (it was spawned with `process_group(0)`), then
/// reaps `child`.
fn kill_group(child: &mut Child) {
    // Also when `spin up` itself has exited: its trigger may live on in the group.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (at most 10 s) until `addr` accepts connections while `child` lives.
fn wait_accepting(addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The gateway under a Spin leg: one process on SQLite, or two on one Redis.
pub struct SpinGateway {
    /// The processes (requests alternate between them).
    pub procs: Vec<SpinProc>,
    /// The shared Redis (spin-redis only). Declared after `procs`: dropped after them.
    pub redis: Option<RedisServer>,
}

impl SpinGateway {
    /// Starts the gateway for `rt` (a Spin leg). Blocking.
    pub fn start(rt: Runtime, opts: SpinOptions) -> SpinGateway {
        match rt {
            Runtime::SpinSqlite => SpinGateway {
                procs: vec![SpinProc::start("sqlite", &opts)],
                redis: None,
            },
            Runtime::SpinRedis => {
                let redis = RedisServer::start(&unique("spin"));
                let mut opts = opts;
                assert!(
                    opts.runtime_config.is_none(),
                    "spin-redis brings its own runtime config"
                );
                opts.runtime_config = Some(redis.runtime_config());
                let procs = match opts.state_dir.take() {
                    // One state dir each (Spin keeps logs there); the store is Redis.
                    Some(dir) => vec![
                        SpinProc::start(
                            "redis-a",
                            &SpinOptions {
                                state_dir: Some(dir.join("a")),
                                ..opts.clone()
                            },
                        ),
                        SpinProc::start(
                            "redis-b",
                            &SpinOptions {
                                state_dir: Some(dir.join("b")),
                                ..opts.clone()
                            },
                        ),
                    ],
                    None => vec![
                        SpinProc::start("redis-a", &opts),
                        SpinProc::start("redis-b", &opts),
                    ],
                };
                SpinGateway {
                    procs,
                    redis: Some(redis),
                }
            }
            Runtime::Host => unreachable!("SpinGateway is for the Spin legs"),
        }
    }

    /// No processes (a placeholder while restarting).
    pub fn empty() -> SpinGateway {
        SpinGateway {
            procs: Vec::new(),
            redis: None,
        }
    }

    /// Restarts every process on the same store. Blocking.
    pub fn restart(&mut self) {
        for p in &mut self.procs {
            p.restart();
        }
    }

    /// Direct access to the store the processes share.
    pub fn store(&self) -> RawStore {
        match &self.redis {
            Some(r) => RawStore::Redis(r.url()),
            None => RawStore::Sqlite(self.procs[0].state.join("sqlite_key_value.db")),
        }
    }
}

/// A key-value store reached around the gateway (to read or tamper with what it wrote).
pub enum RawStore {
    /// Spin's SQLite file (`spin_key_value(store, key, value)`).
    Sqlite(PathBuf),
    /// A Redis URL.
    Redis(String),
}

impl RawStore {
    fn sqlite(path: &Path) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(path).expect("open the SQLite store");
        db.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        db
    }

    fn redis(url: &str) -> redis::Connection {
        redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("connect to redis")
    }

    /// Every key of the default store.
    pub fn keys(&self) -> Vec<String> {
        match self {
            RawStore::Sqlite(p) => {
                let conn = Self::sqlite(p);
                // Spin creates its table on the store's first use: none yet is no key.
                let Ok(mut q) =
                    conn.prepare("SELECT key FROM spin_key_value WHERE store = 'default'")
                else {
                    return Vec::new();
                };
                q.query_map([], |r| r.get(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
            RawStore::Redis(url) => redis::cmd("KEYS")
                .arg("*")
                .query(&mut Self::redis(url))
                .expect("KEYS"),
        }
    }

    /// A value of the default store.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            RawStore::Sqlite(p) => {
                use rusqlite::OptionalExtension as _;
                Self::sqlite(p)
                    .query_row(
                        "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
                        [key],
                        |r| r.get(0),
                    )
                    .optional()
                    .expect("select")
            }
            RawStore::Redis(url) => redis::cmd("GET")
                .arg(key)
                .query(&mut Self::redis(url))
                .expect("GET"),
        }
    }

    /// Overwrites a value of the default store.
    pub fn set(&self, key: &str, value: &[u8]) {
        match self {
            RawStore::Sqlite(p) => {
                Self::sqlite(p)
                    .execute(
                        "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2) \
                         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                        rusqlite::params![key, value],
                    )
                    .expect("upsert");
            }
            RawStore::Redis(url) => redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query::<()>(&mut Self::redis(url))
                .expect("SET"),
        }
    }
}
