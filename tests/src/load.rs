//! The load phases behind `lumen-bench`: one endpoint ([`Target`]) called over keep-alive
//! HTTP/1.1 connections one request at a time ([`serial`]), on a fixed schedule ([`open_loop`]),
//! or by closed-loop workers ([`saturate`]); each bounded in request count and time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use crate::bench::{SseScanner, Summary};

/// Most requests one closed-loop worker sends in one phase (a count bound next to the time bound).
pub const MAX_REQUESTS_PER_WORKER: usize = 1_000_000;
/// Most requests in flight during an open-loop phase; beyond it a send is counted as an error.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Longest any concurrency-1 phase may run, per target.
pub const SERIAL_PHASE_LIMIT: Duration = Duration::from_secs(30);

/// One endpoint under test.
#[derive(Debug)]
pub struct Target {
    /// What the reports call it.
    pub name: String,
    /// `host:port` to connect to.
    authority: String,
    /// Origin-form path of the chat completions endpoint.
    path: String,
    auth: HeaderValue,
    host: HeaderValue,
    plain_body: Bytes,
    stream_body: Bytes,
    /// Headers added to every request (e.g. a peer gateway's routing headers).
    extra: Vec<(HeaderName, HeaderValue)>,
}

impl Target {
    /// A target at `base` (…/v1), calling `model` with `Bearer key` for `tokens` completion tokens
    /// (a `[mock tokens=N]` directive).
    pub fn new(
        name: &str,
        base: &str,
        key: &str,
        model: &str,
        tokens: u64,
    ) -> anyhow::Result<Self> {
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid {name} URL {base:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{name} URL must be http://, got {base:?}");
        }
        let authority = uri
            .authority()
            .context("URL without host")?
            .as_str()
            .to_owned();
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        let prompt = format!("Benchmark request. Reply briefly. [mock tokens={tokens}]");
        let body = |stream: bool| {
            let mut json = serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
            });
            if stream {
                json["stream"] = serde_json::Value::Bool(true);
            }
            Bytes::from(json.to_string())
        };
        Ok(Self {
            name: name.to_owned(),
            path: uri.path().to_owned(),
            host: HeaderValue::from_str(uri.authority().context("URL without host")?.as_str())?,
            authority,
            auth: HeaderValue::from_str(&format!("Bearer {key}"))?,
            plain_body: body(false),
            stream_body: body(true),
            extra: Vec::new(),
        })
    }

    /// Adds a header to every request.
    pub fn header(mut self, name: &str, value: &str) -> anyhow::Result<Self> {
        self.extra.push((
            HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("header name {name:?}"))?,
            HeaderValue::from_str(value).with_context(|| format!("header {name} value"))?,
        ));
        Ok(self)
    }

    /// Opens one keep-alive connection.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to {} ({})", self.name, self.authority))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, task })
    }

    fn request(&self, stream: bool) -> Request<Full<Bytes>> {
        let body = if stream {
            &self.stream_body
        } else {
            &self.plain_body
        };
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = Uri::try_from(self.path.as_str()).expect("path was parsed from a URI");
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(AUTHORIZATION, self.auth.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &self.extra {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    /// The HTTP/1.1 sender.
    pub sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Timings of one successful request, measured from its start (or scheduled start).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Until the body's last byte.
    pub total: Duration,
    /// Until the first content chunk (streams).
    pub ttft: Option<Duration>,
}

/// Sends one request on `conn` and reads the whole response; `start` is when it counts from.
pub async fn call(
    conn: &mut Conn,
    target: &Target,
    stream: bool,
    start: Instant,
) -> anyhow::Result<Sample> {
    conn.sender.ready().await.context("connection closed")?;
    let response = conn.sender.send_request(target.request(stream)).await?;
    let status = response.status();
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        );
    }
    let mut scanner = SseScanner::default();
    let mut ttft = None;
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading response body")?;
        if let Some(data) = frame.data_ref() {
            received += data.len();
            if stream && scanner.feed(data) && ttft.is_none() {
                ttft = Some(start.elapsed());
            }
        }
    }
    let total = start.elapsed();
    if stream && !(scanner.saw_content() && scanner.saw_done()) {
        bail!("incomplete stream ({} events)", scanner.events());
    }
    if !stream && received == 0 {
        bail!("empty response body");
    }
    Ok(Sample { total, ttft })
}

/// Results of one phase against one target.
#[derive(Debug, Default)]
pub struct PhaseResult {
    /// Successful requests.
    pub samples: Vec<Sample>,
    /// Failed requests.
    pub errors: usize,
    /// The first failure, for the log.
    pub first_error: Option<String>,
    /// How long the phase ran.
    pub elapsed: Duration,
    /// Open loop only: the largest delay between a request's scheduled and actual send.
    pub max_lag: Duration,
}

impl PhaseResult {
    /// Counts one outcome.
    pub fn record(&mut self, outcome: anyhow::Result<Sample>) {
        match outcome {
            Ok(sample) => self.samples.push(sample),
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    /// Adds another worker's results.
    pub fn merge(&mut self, other: PhaseResult) {
        self.samples.extend(other.samples);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Whole-request latencies.
    pub fn totals(&self) -> Option<Summary> {
        Summary::of(&self.samples.iter().map(|s| s.total).collect::<Vec<_>>())
    }

    /// Times to the first content chunk (streams).
    pub fn ttfts(&self) -> Option<Summary> {
        Summary::of(
            &self
                .samples
                .iter()
                .filter_map(|s| s.ttft)
                .collect::<Vec<_>>(),
        )
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `warmup + requests` requests one at a time on one connection, recording the last
/// `requests`; stops early at [`SERIAL_PHASE_LIMIT`].
pub async fn serial(
    target: &Target,
    stream: bool,
    warmup: usize,
    requests: usize,
    timeout: Duration,
) -> PhaseResult {
    let mut result = PhaseResult::default();
    let mut conn: Option<Conn> = None;
    let began = Instant::now();
    let deadline = began + SERIAL_PHASE_LIMIT;
    for i in 0..warmup + requests {
        if Instant::now() >= deadline {
            break;
        }
        let start = Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                conn = Some(target.connect().await?);
            }
            call(
                conn.as_mut().expect("connected above"),
                target,
                stream,
                start,
            )
            .await
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")));
        if outcome.is_err() {
            conn = None; // reconnect after any failure
        }
        if i >= warmup {
            result.record(outcome);
        }
    }
    result.elapsed = began.elapsed();
    result
}

/// Open loop: schedules `rate × duration` requests at fixed intervals, each on an idle pooled
/// connection (or a new one), whether or not earlier requests have finished.
pub async fn open_loop(
    target: &Arc<Target>,
    stream: bool,
    rate: u32,
    duration: Duration,
    timeout: Duration,
) -> PhaseResult {
    let mut result = PhaseResult::default();
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let mut in_flight: JoinSet<anyhow::Result<Sample>> = JoinSet::new();
    let began = Instant::now();
    let first = tokio::time::Instant::now() + Duration::from_millis(20);
    for i in 0..total {
        let at = first + interval * i as u32;
        tokio::time::sleep_until(at).await;
        let dispatched = Instant::now();
        result.max_lag = result
            .max_lag
            .max(dispatched.saturating_duration_since(at.into_std()));
        while let Some(done) = in_flight.try_join_next() {
            result.record(done.unwrap_or_else(|e| Err(e.into())));
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            result.record(Err(anyhow::anyhow!(
                "more than {MAX_IN_FLIGHT} requests in flight"
            )));
            continue;
        }
        let (target, pool) = (target.clone(), pool.clone());
        in_flight.spawn(async move {
            let pooled = pool.lock().expect("pool poisoned").pop();
            let outcome = tokio::time::timeout(timeout, async {
                let mut conn = match pooled {
                    Some(conn) => conn,
                    None => target.connect().await?,
                };
                let sample = call(&mut conn, &target, stream, dispatched).await?;
                Ok::<_, anyhow::Error>((sample, conn))
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")));
            outcome.map(|(sample, conn)| {
                pool.lock().expect("pool poisoned").push(conn);
                sample
            })
        });
    }
    // Every task carries its own timeout, so this drain is bounded; the outer timeout is a backstop.
    let drain_deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(1);
    while let Ok(Some(done)) = tokio::time::timeout_at(drain_deadline, in_flight.join_next()).await
    {
        result.record(done.unwrap_or_else(|e| Err(e.into())));
    }
    for _ in 0..in_flight.len() {
        result.record(Err(anyhow::anyhow!(
            "still in flight after the drain deadline"
        )));
    }
    in_flight.abort_all();
    result.elapsed = began.elapsed();
    result
}

/// Closed loop: `concurrency` workers, each sending back-to-back on its own connection until
/// `duration` has passed.
pub async fn saturate(
    target: &Arc<Target>,
    stream: bool,
    concurrency: usize,
    duration: Duration,
    timeout: Duration,
) -> PhaseResult {
    let began = Instant::now();
    let deadline = began + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let target = target.clone();
        workers.spawn(async move {
            let mut result = PhaseResult::default();
            let mut conn: Option<Conn> = None;
            for _ in 0..MAX_REQUESTS_PER_WORKER {
                if Instant::now() >= deadline {
                    break;
                }
                let start = Instant::now();
                let outcome = tokio::time::timeout(timeout, async {
                    if conn.is_none() {
                        conn = Some(target.connect().await?);
                    }
                    call(
                        conn.as_mut().expect("connected above"),
                        &target,
                        stream,
                        start,
                    )
                    .await
                })
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")));
                if outcome.is_err() {
                    conn = None;
                }
                result.record(outcome);
            }
            result
        });
    }
    let mut result = PhaseResult::default();
    while let Some(worker) = workers.join_next().await {
        match worker {
            Ok(part) => result.merge(part),
            Err(err) => result.record(Err(err.into())),
        }
    }
    result.elapsed = began.elapsed();
    result
}
