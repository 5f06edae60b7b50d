//! Test harness: the real `.wasm` components from `spin.toml` in front of the mock upstream,
//! run by lumen-host in process or by real `spin up` processes (`LUMEN_TEST_RUNTIME`, see
//! [`runtime`]), plus a small HTTP client that records when each body frame arrives.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod config;
pub mod procs;
pub mod raw;
pub mod runtime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lumen_host::{HostOptions, RunningHost};
use lumen_tests::mock::{MockConfig, MockUpstream};
use runtime::{Runtime, SpinGateway, SpinOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "test-admin-token";
pub const UPSTREAM_KEY: &str = "upstream-secret";
pub const BYOK_MASTER: &str = "test-byok-master-key-0123456789";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary scripts/build.sh builds into `target/release`.
pub fn release_bin(name: &str) -> PathBuf {
    let bin = repo().join("target/release").join(name);
    assert!(
        bin.is_file(),
        "{} missing: run scripts/build.sh",
        bin.display()
    );
    bin
}

/// The `lumen` command built by scripts/build.sh.
pub fn lumen_bin() -> PathBuf {
    release_bin("lumen")
}

fn check_built() {
    let wasm = repo().join("target/wasm32-wasip2/release/lumen_gateway.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/build.sh (scripts/test.sh does) before cargo test",
        wasm.display()
    );
}

/// Host options for tests: in-memory KV, shared compile cache, mock upstream variables.
pub fn options(mock: &MockUpstream) -> HostOptions {
    check_built();
    let mut o = HostOptions::new(repo().join("spin.toml"));
    o.memory_kv = true;
    o.cache_dir = Some(repo().join("target/lumen-cache"));
    let origin = format!("http://{}", mock.addr());
    let mut vars = vec![
        ("admin_token".to_string(), ADMIN.to_string()),
        ("max_request_bytes".to_string(), "65536".to_string()),
        ("byok_encryption_key".to_string(), BYOK_MASTER.to_string()),
    ];
    // Every catalog provider points at the mock, which serves each dialect on its own routes.
    for (p, base) in [
        ("openai", mock.base_url()),
        ("azure", origin.clone()),
        ("anthropic", format!("{origin}/v1")),
        ("gemini", format!("{origin}/v1beta")),
        ("vllm", mock.base_url()),
        ("runpod", format!("{origin}/v2/qwen")),
    ] {
        vars.push((format!("{p}_base_url"), base));
        vars.push((format!("{p}_allowed_host"), origin.clone()));
        vars.push((format!("{p}_api_key"), UPSTREAM_KEY.to_string()));
    }
    // The same mock under another origin, so the together provider's allowed host is its own.
    let together = format!("http://localhost:{}", mock.addr().port());
    vars.push(("together_base_url".into(), format!("{together}/v1")));
    vars.push(("together_allowed_host".into(), together));
    vars.push(("together_api_key".into(), UPSTREAM_KEY.to_string()));
    o.variables = vars.into_iter().collect::<HashMap<_, _>>();
    // The suite fires bursts of up to 200 concurrent requests from 127.0.0.1, with keys the
    // host has not yet seen succeed; the server's caps would turn some of them into 429s and
    // confound what those tests count. The caps are tested with their defaults in
    // hardening.rs and attack.rs (which reset `limits`).
    let relaxed = 1_000_000;
    o.limits.max_connections = relaxed;
    o.limits.max_connections_per_ip = relaxed;
    o.limits.max_unauthenticated_requests = relaxed;
    o.limits.max_unauthenticated_requests_per_ip = relaxed;
    o.limits.max_requests_per_credential = relaxed;
    o
}

/// The gateway under test and its mock upstream.
pub struct Gateway {
    server: Server,
    pub mock: MockUpstream,
    turn: AtomicUsize,
    opts: HostOptions,
}

enum Server {
    Host(RunningHost),
    Spin(SpinGateway),
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts an OpenAI error body with this status and returns the error object.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let e = v["error"].clone();
        for field in ["message", "type", "param", "code"] {
            assert!(e.get(field).is_some(), "error body lacks {field}: {v}");
        }
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        e
    }
    /// Every response carries the x-lumen headers.
    pub fn assert_lumen_headers(&self) {
        for h in ["x-lumen-model", "x-lumen-provider", "x-lumen-overhead-ms"] {
            assert!(
                self.header(h).is_some(),
                "missing {h} in {:?}",
                self.headers
            );
        }
    }
}

/// A streamed response: body frames with their arrival times.
pub struct Streamed {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub frames: Vec<(Instant, Bytes)>,
}

impl Streamed {
    pub fn text(&self) -> String {
        self.frames
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
    /// The `data:` payloads in order.
    pub fn data(&self) -> Vec<String> {
        let mut p = lumen_shared::wire::sse::Parser::default();
        let evs = p.push(self.text().as_bytes());
        evs.into_iter()
            .filter(|e| !e.comment_only)
            .map(|e| {
                assert!(
                    e.event.is_none(),
                    "named event leaked to the client: {:?}",
                    e.event
                );
                e.data
            })
            .collect()
    }
}

impl Gateway {
    pub async fn start() -> Gateway {
        Self::start_with(
            MockConfig {
                api_key: Some(UPSTREAM_KEY.into()),
                ..MockConfig::default()
            },
            |_| {},
        )
        .await
    }

    /// Starts the mock and the gateway under [`Runtime::current`]; `tweak` adjusts the host
    /// options, which the Spin legs translate: `variables` become `SPIN_VARIABLE_*`,
    /// `state_dir` and `runtime_config` their flags; `memory_kv` means a fresh store, which a
    /// fresh Spin state dir (or Redis) is. `kv_log` and `listen` are lumen-host only.
    pub async fn start_with(cfg: MockConfig, tweak: impl FnOnce(&mut HostOptions)) -> Gateway {
        let mock = MockUpstream::start(cfg).await.expect("mock starts");
        let mut o = options(&mock);
        tweak(&mut o);
        let rt = Runtime::current();
        let kept = o.clone();
        let server = if rt.is_spin() {
            assert!(
                o.kv_log.is_none(),
                "kv_log is lumen-host only: skip this test under {}",
                rt.name()
            );
            let opts = SpinOptions {
                manifest: Some(o.manifest.clone()),
                variables: o.variables.clone(),
                state_dir: o.state_dir.clone(),
                runtime_config: o.runtime_config.clone(),
            };
            Server::Spin(
                tokio::task::spawn_blocking(move || SpinGateway::start(rt, opts))
                    .await
                    .expect("spin starts"),
            )
        } else {
            Server::Host(lumen_host::start(o).await.expect("host starts"))
        };
        Gateway {
            server,
            mock,
            turn: AtomicUsize::new(0),
            opts: kept,
        }
    }

    /// Stops the gateway's processes and starts them again on the same store (lumen-host: the
    /// same options, so a persistent store needs `memory_kv = false`).
    pub async fn restart(&mut self) {
        match &mut self.server {
            Server::Host(_) => {
                let Server::Host(h) =
                    std::mem::replace(&mut self.server, Server::Spin(SpinGateway::empty()))
                else {
                    unreachable!()
                };
                h.shutdown().await;
                self.server = Server::Host(
                    lumen_host::start(self.opts.clone())
                        .await
                        .expect("host restarts"),
                );
            }
            Server::Spin(s) => {
                let mut s = std::mem::replace(s, SpinGateway::empty());
                s = tokio::task::spawn_blocking(move || {
                    s.restart();
                    s
                })
                .await
                .expect("spin restarts");
                self.server = Server::Spin(s);
            }
        }
    }

    /// Where to send the next request: the one server, or (spin-redis) each Spin process in
    /// turn, so every test exercises two replicas sharing one store.
    pub fn addr(&self) -> SocketAddr {
        match &self.server {
            Server::Host(h) => h.addr(),
            Server::Spin(s) => {
                let i = self.turn.fetch_add(1, Ordering::Relaxed);
                s.procs[i % s.procs.len()].addr
            }
        }
    }

    /// The lumen-host instance, when the runtime is lumen-host.
    pub fn host(&self) -> Option<&RunningHost> {
        match &self.server {
            Server::Host(h) => Some(h),
            Server::Spin(_) => None,
        }
    }

    /// Every key of the default store, read around the gateway.
    fn raw_keys(&self) -> Vec<String> {
        match &self.server {
            Server::Host(h) => h
                .store("default")
                .expect("a default store")
                .keys("default")
                .expect("keys"),
            Server::Spin(s) => s.store().keys(),
        }
    }

    /// Keys of the default store that start with `prefix`.
    pub fn store_keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .raw_keys()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys
    }

    /// A value of the default store, read around the gateway.
    pub fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        match &self.server {
            Server::Host(h) => h
                .store("default")
                .expect("a default store")
                .get("default", key)
                .expect("get"),
            Server::Spin(s) => s.store().get(key),
        }
    }

    /// Overwrites a value of the default store around the gateway (tamper tests).
    pub fn store_set(&self, key: &str, value: &[u8]) {
        match &self.server {
            Server::Host(h) => h
                .store("default")
                .expect("a default store")
                .set("default", key, value)
                .expect("set"),
            Server::Spin(s) => s.store().set(key, value),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        send(self.addr(), method, path, bearer, body).await
    }

    pub async fn chat(&self, key: &str, body: Value) -> Resp {
        self.call(
            "POST",
            "/v1/chat/completions",
            Some(key),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn create_key(&self, rpm: u32, allowed: &[&str]) -> (String, String) {
        let r = self
            .call(
                "POST",
                "/admin/keys",
                Some(ADMIN),
                Some(
                    json!({"name": "test", "rpm_limit": rpm, "allowed_models": allowed})
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        (
            v["key"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    /// Polls `GET /v1/usage` until `pred` holds (at most 5 s).
    pub async fn usage_until(&self, key: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.call("GET", "/v1/usage", Some(key), None).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            if pred(&v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap()
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
) -> Resp {
    send_with(addr, method, path, bearer, body, &[]).await
}

/// [`send`] with extra request headers.
pub async fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut s = connect(addr).await;
    let mut req = request(addr, method, path, bearer, body);
    for (name, value) in extra {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), s.send_request(req))
        .await
        .expect("response within 20 s")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// Sends a request and reads the body frame by frame; `stop_after` frames then drops the
/// connection (a client abandoning the stream).
pub async fn stream(
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    body: Value,
    stop_after: Option<usize>,
) -> Streamed {
    let mut s = connect(addr).await;
    let resp = s
        .send_request(request(
            addr,
            "POST",
            path,
            Some(bearer),
            Some(body.to_string().into_bytes()),
        ))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("frame within 20 s")
    {
        if let Ok(data) = frame.expect("frame").into_data() {
            frames.push((Instant::now(), data));
        }
        if stop_after.is_some_and(|n| frames.len() >= n) {
            break;
        }
    }
    Streamed {
        status,
        headers,
        frames,
    }
}
