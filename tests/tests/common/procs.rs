//! Processes for the multi-replica tests: a throwaway `redis-server` on a unix socket (no TCP
//! port taken) and replicas sharing it — `lumen-host up` child processes, or real `spin up`
//! ones under a Spin leg ([`Replica`]) — plus a client that reports failures instead of
//! panicking (a killed replica is expected there).

use super::runtime::{Runtime, SpinOptions, SpinProc};
use super::{repo, ADMIN, UPSTREAM_KEY};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lumen_tests::mock::MockUpstream;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A unique temp dir for this test process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lumen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `redis-server --port 0 --unixsocket <dir>/redis.sock --save '' --appendonly no`, killed on drop.
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start(tag: &str) -> RedisServer {
        let dir = temp_dir(&format!("redis-{tag}"));
        let sock = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&sock)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, dir }
    }

    /// The URL for Spin's runtime config (`redis+unix://` + socket path).
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }

    /// A `runtime-config.toml` pointing the default store at this server.
    pub fn runtime_config(&self) -> PathBuf {
        let path = self.dir.join("runtime-config.toml");
        std::fs::write(
            &path,
            format!(
                "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
                self.url()
            ),
        )
        .expect("write runtime config");
        path
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `lumen-host up` child process on 127.0.0.1:0, killed on drop.
pub struct HostProc {
    pub child: Child,
    pub addr: SocketAddr,
    state: PathBuf,
}

impl HostProc {
    pub fn start(tag: &str, runtime_config: &Path, mock: &MockUpstream) -> HostProc {
        let bin = repo().join("target/release/lumen-host");
        assert!(
            bin.is_file(),
            "{} missing: run scripts/build.sh",
            bin.display()
        );
        let state = temp_dir(&format!("host-{tag}"));
        let mut child = Command::new(bin)
            .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(repo().join("spin.toml"))
            .arg("--runtime-config-file")
            .arg(runtime_config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--cache-dir")
            .arg(repo().join("target/lumen-cache"))
            .env("SPIN_VARIABLE_ADMIN_TOKEN", ADMIN)
            .env("SPIN_VARIABLE_OPENAI_BASE_URL", mock.base_url())
            .env(
                "SPIN_VARIABLE_OPENAI_ALLOWED_HOST",
                format!("http://{}", mock.addr()),
            )
            .env("SPIN_VARIABLE_OPENAI_API_KEY", UPSTREAM_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("lumen-host starts");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        let addr = line
            .trim()
            .strip_prefix("Serving http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        HostProc { child, addr, state }
    }

    /// SIGKILL: no shutdown, no flushing, like a crashed replica.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// One replica on a shared store: lumen-host under the host leg, real Spin under the Spin
/// legs; killed on drop.
pub enum Replica {
    /// `lumen-host up`.
    Host(HostProc),
    /// `spin up`.
    Spin(SpinProc),
}

impl Replica {
    /// Starts a replica of the runtime under test on `runtime_config`'s store, with the mock
    /// as its OpenAI upstream.
    pub fn start(tag: &str, runtime_config: &Path, mock: &MockUpstream) -> Replica {
        if !Runtime::current().is_spin() {
            return Replica::Host(HostProc::start(tag, runtime_config, mock));
        }
        let variables = [
            ("admin_token", ADMIN.to_string()),
            ("openai_base_url", mock.base_url()),
            ("openai_allowed_host", format!("http://{}", mock.addr())),
            ("openai_api_key", UPSTREAM_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Replica::Spin(SpinProc::start(
            tag,
            &SpinOptions {
                variables,
                runtime_config: Some(runtime_config.to_path_buf()),
                ..SpinOptions::default()
            },
        ))
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Replica::Host(h) => h.addr,
            Replica::Spin(s) => s.addr,
        }
    }

    /// SIGKILL: no shutdown, no flushing, like a crashed replica.
    pub fn kill9(&mut self) {
        match self {
            Replica::Host(h) => h.kill9(),
            Replica::Spin(s) => s.kill9(),
        }
    }

    /// The process serving requests (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        match self {
            Replica::Host(h) => h.child.id(),
            Replica::Spin(s) => s.pid(),
        }
    }
}

/// A Redis connection for reading server facts (`INFO clients`) during a test.
pub fn redis_clients(url: &str) -> impl FnMut() -> Option<u64> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .ok();
    move || {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(conn.as_mut()?)
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
    }
}

/// A finished exchange, or why there was none.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends one request; any connection or body failure is an `Err` (within 30 s).
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<Answer, String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
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
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
}
