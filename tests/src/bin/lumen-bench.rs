//! `lumen-bench`: measures the latency Lumen adds over calling the upstream directly.
//!
//! Every phase runs against both targets in the same process, one after the other: `direct`
//! (the mock upstream's `/v1`) and `gateway` (the Lumen host's `/v1`), with `POST
//! {base}/chat/completions` over keep-alive HTTP/1.1 connections (one per worker).
//!
//! Phases, each bounded in request count and time:
//! 1. non-stream latency at concurrency 1 (`--requests`, after `--warmup` requests);
//! 2. stream time to first token (first `data:` chunk with content) at concurrency 1;
//! 3. open-loop latency at fixed rates (`--rates`, each for `--duration-s`): requests are sent on
//!    schedule whether or not earlier ones have finished, so a stalled server cannot hide its
//!    queueing delay; latency counts from the actual send (the dispatcher's lag behind the
//!    schedule, i.e. timer slack or a saturated client, is reported separately);
//! 4. maximum throughput at `--concurrency` closed-loop workers for `--duration-s`.
//!
//! Prints a markdown table; `--out FILE` appends it with the date and host facts.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lumen_tests::bench::{
    cpu_model, markdown_table, proc_status_kib, utc_timestamp, Row, SseScanner, Summary,
};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use lumen_tests::failover_bench;

/// Benchmark the latency Lumen adds over calling the upstream directly.
#[derive(Debug, Parser)]
#[command(name = "lumen-bench", version)]
struct Args {
    /// Gateway base URL, e.g. http://127.0.0.1:3000/v1.
    #[arg(long)]
    gateway: String,
    /// Upstream (mock) base URL, e.g. http://127.0.0.1:4000/v1.
    #[arg(long)]
    direct: String,
    /// Lumen API key for the gateway.
    #[arg(long)]
    key: String,
    /// API key sent to the direct target.
    #[arg(long, default_value = "bench")]
    direct_key: String,
    /// Model to request.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Measured requests per target for the concurrency-1 phases.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Unmeasured warm-up requests per target before the concurrency-1 phases.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Seconds per target for each open-loop rate and for the throughput phase.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Open-loop request rates (requests per second), comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [50u32, 200])]
    rates: Vec<u32>,
    /// Closed-loop workers for the throughput phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Completion tokens per request (sent as a `[mock tokens=N]` directive).
    #[arg(long, default_value_t = 8)]
    tokens: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Append the results to this markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// PID of the lumen-host process, to report its VmRSS before and after.
    #[arg(long)]
    host_pid: Option<u32>,
    /// Failover mode instead of the latency phases: this many requests (1..=100000) while the
    /// model's first provider is hard down (`scripts/bench.sh --failover 1000`).
    #[arg(long)]
    failover: Option<usize>,
}

/// Most requests one closed-loop worker sends in one phase (a count bound next to the time bound).
const MAX_REQUESTS_PER_WORKER: usize = 1_000_000;
/// Most requests in flight during an open-loop phase; beyond it a send is counted as an error.
const MAX_IN_FLIGHT: usize = 1024;
/// Longest any concurrency-1 phase may run, per target.
const SERIAL_PHASE_LIMIT: Duration = Duration::from_secs(30);

/// One endpoint under test.
#[derive(Debug)]
struct Target {
    name: &'static str,
    /// `host:port` to connect to.
    authority: String,
    /// Origin-form path of the chat completions endpoint.
    path: String,
    auth: HeaderValue,
    host: HeaderValue,
    plain_body: Bytes,
    stream_body: Bytes,
}

impl Target {
    fn new(
        name: &'static str,
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
            name,
            path: uri.path().to_owned(),
            host: HeaderValue::from_str(uri.authority().context("URL without host")?.as_str())?,
            authority,
            auth: HeaderValue::from_str(&format!("Bearer {key}"))?,
            plain_body: body(false),
            stream_body: body(true),
        })
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
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
        request
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Timings of one successful request, measured from its start (or scheduled start).
#[derive(Debug, Clone, Copy)]
struct Sample {
    total: Duration,
    ttft: Option<Duration>,
}

/// Sends one request on `conn` and reads the whole response; `start` is when it counts from.
async fn call(
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
struct PhaseResult {
    samples: Vec<Sample>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Open loop only: the largest delay between a request's scheduled and actual send.
    max_lag: Duration,
}

impl PhaseResult {
    fn record(&mut self, outcome: anyhow::Result<Sample>) {
        match outcome {
            Ok(sample) => self.samples.push(sample),
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    fn merge(&mut self, other: PhaseResult) {
        self.samples.extend(other.samples);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn totals(&self) -> Option<Summary> {
        Summary::of(&self.samples.iter().map(|s| s.total).collect::<Vec<_>>())
    }

    fn ttfts(&self) -> Option<Summary> {
        Summary::of(
            &self
                .samples
                .iter()
                .filter_map(|s| s.ttft)
                .collect::<Vec<_>>(),
        )
    }

    fn throughput(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `warmup + requests` requests one at a time on one connection, recording the last
/// `requests`; stops early at [`SERIAL_PHASE_LIMIT`].
async fn serial(
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
async fn open_loop(
    target: &Arc<Target>,
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
                let sample = call(&mut conn, &target, false, dispatched).await?;
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
async fn saturate(
    target: &Arc<Target>,
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
                        false,
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

/// Results of both targets for one phase.
struct Pair {
    label: String,
    direct: PhaseResult,
    gateway: PhaseResult,
}

impl Pair {
    fn latency_rows(&self, rows: &mut Vec<Row>, percentiles: &[&str]) {
        let (d, g) = (self.direct.totals(), self.gateway.totals());
        for p in percentiles {
            let pick = |s: Summary| match *p {
                "p50" => s.p50,
                "p90" => s.p90,
                _ => s.p99,
            };
            rows.push(Row::latency(
                format!("{} {p} (ms)", self.label),
                d.map(pick),
                g.map(pick),
            ));
        }
    }

    fn errors(&self) -> (usize, usize) {
        (self.direct.errors, self.gateway.errors)
    }
}

/// Runs `phase` against direct, then gateway.
async fn both<F, Fut>(label: impl Into<String>, targets: &[Arc<Target>; 2], phase: F) -> Pair
where
    F: Fn(Arc<Target>) -> Fut,
    Fut: std::future::Future<Output = PhaseResult>,
{
    let label = label.into();
    let direct = phase(targets[0].clone()).await;
    let gateway = phase(targets[1].clone()).await;
    for (target, result) in targets.iter().zip([&direct, &gateway]) {
        eprintln!(
            "lumen-bench: {label} [{}]: {} ok, {} errors in {:.1}s{}{}",
            target.name,
            result.samples.len(),
            result.errors,
            result.elapsed.as_secs_f64(),
            if result.max_lag.is_zero() {
                String::new()
            } else {
                format!(
                    ", max send lag {:.2} ms",
                    result.max_lag.as_secs_f64() * 1000.0
                )
            },
            result
                .first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
    }
    Pair {
        label,
        direct,
        gateway,
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `--failover N`: prints (and appends to `--out`) the failover table; fails unless every
/// request succeeded.
async fn failover(args: &Args, n: usize, timeout: Duration) -> anyhow::Result<()> {
    if n == 0 || n > 100_000 {
        bail!("--failover must be in 1..=100000");
    }
    let r = failover_bench::run(
        &args.gateway,
        &args.direct,
        &args.key,
        &args.model,
        n,
        args.concurrency,
        timeout,
    )
    .await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let text = format!(
        "\n## Failover: {} with its first provider hard down, {}\n\nCPU: {}. The mock resets every connection on the OpenAI route; Azure serves.\n\n{}",
        args.model,
        utc_timestamp(now),
        cpu_model(),
        r.markdown(args.concurrency)
    );
    print!("{text}");
    if let Some(path) = &args.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    if r.ok != r.requests {
        bail!(
            "{} of {} requests failed; first error: {}",
            r.requests - r.ok,
            r.requests,
            r.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.duration_s <= 0.0 || args.duration_s > 120.0 {
        bail!("--duration-s must be in (0, 120]");
    }
    if args.rates.iter().any(|&r| r == 0 || r > 5000) {
        bail!("--rates must be in 1..=5000");
    }
    if args.requests == 0
        || args.requests > 100_000
        || args.concurrency == 0
        || args.concurrency > 1024
    {
        bail!("--requests must be in 1..=100000 and --concurrency in 1..=1024");
    }
    let duration = Duration::from_secs_f64(args.duration_s);
    let timeout = Duration::from_secs_f64(args.timeout_s);
    if let Some(n) = args.failover {
        return failover(&args, n, timeout).await;
    }
    let targets = [
        Arc::new(Target::new(
            "direct",
            &args.direct,
            &args.direct_key,
            &args.model,
            args.tokens,
        )?),
        Arc::new(Target::new(
            "gateway",
            &args.gateway,
            &args.key,
            &args.model,
            args.tokens,
        )?),
    ];
    // Fail fast with a clear message when a target is unusable.
    for target in &targets {
        let mut conn = target.connect().await?;
        call(&mut conn, target, false, Instant::now())
            .await
            .with_context(|| format!("probe request to {} failed", target.name))?;
    }

    let rss_before = args.host_pid.and_then(|pid| proc_status_kib(pid, "VmRSS"));
    let began = Instant::now();
    let (warmup, requests) = (args.warmup, args.requests);

    let non_stream = both("non-stream c=1", &targets, |t| async move {
        serial(&t, false, warmup, requests, timeout).await
    })
    .await;
    let stream = both("stream c=1", &targets, |t| async move {
        serial(&t, true, warmup, requests, timeout).await
    })
    .await;
    let mut open = Vec::new();
    for &rate in &args.rates {
        let label = format!("open-loop {rate} req/s");
        open.push(
            both(label, &targets, |t| async move {
                open_loop(&t, rate, duration, timeout).await
            })
            .await,
        );
    }
    let concurrency = args.concurrency;
    let saturated = both(
        format!("closed-loop c={concurrency}"),
        &targets,
        |t| async move { saturate(&t, concurrency, duration, timeout).await },
    )
    .await;
    let wall = began.elapsed();
    let rss_after = args.host_pid.and_then(|pid| proc_status_kib(pid, "VmRSS"));
    let hwm = args.host_pid.and_then(|pid| proc_status_kib(pid, "VmHWM"));

    let mut rows = Vec::new();
    non_stream.latency_rows(&mut rows, &["p50", "p90", "p99"]);
    let (d, g) = (stream.direct.ttfts(), stream.gateway.ttfts());
    rows.push(Row::latency(
        "stream c=1 TTFT p50 (ms)",
        d.map(|s| s.p50),
        g.map(|s| s.p50),
    ));
    rows.push(Row::latency(
        "stream c=1 TTFT p99 (ms)",
        d.map(|s| s.p99),
        g.map(|s| s.p99),
    ));
    for pair in &open {
        pair.latency_rows(&mut rows, &["p50", "p99"]);
    }
    saturated.latency_rows(&mut rows, &["p50", "p99"]);
    let (dt, gt) = (
        saturated.direct.throughput(),
        saturated.gateway.throughput(),
    );
    rows.push(Row {
        metric: format!("closed-loop c={concurrency} throughput (req/s)"),
        direct: format!("{dt:.0}"),
        gateway: format!("{gt:.0}"),
        added: if dt > 0.0 {
            format!("{:.1}% of direct", 100.0 * gt / dt)
        } else {
            "n/a".to_owned()
        },
    });
    let mut errors = (0, 0);
    for pair in [&non_stream, &stream, &saturated].into_iter().chain(&open) {
        let (d, g) = pair.errors();
        errors = (errors.0 + d, errors.1 + g);
    }
    rows.push(Row {
        metric: "errors (all phases)".to_owned(),
        direct: errors.0.to_string(),
        gateway: errors.1.to_string(),
        added: String::new(),
    });

    let mut report = markdown_table(&rows);
    report.push_str(&format!(
        "\nSettings: model `{}`, {} tokens/response, {} measured requests (+{} warm-up) per c=1 phase, \
         {}s per open-loop rate and throughput phase, c={}; wall time {:.1}s.\n",
        args.model,
        args.tokens,
        args.requests,
        args.warmup,
        args.duration_s,
        args.concurrency,
        wall.as_secs_f64()
    ));
    let lags: Vec<String> = open
        .iter()
        .map(|p| {
            let lag = |r: &PhaseResult| r.max_lag.as_secs_f64() * 1000.0;
            format!(
                "{} {:.2}/{:.2} ms",
                p.label,
                lag(&p.direct),
                lag(&p.gateway)
            )
        })
        .collect();
    if !lags.is_empty() {
        report.push_str(&format!(
            "Open-loop max send lag behind schedule (direct/gateway): {}.\n",
            lags.join(", ")
        ));
    }
    if let Some(pid) = args.host_pid {
        report.push_str(&format!(
            "lumen-host (pid {pid}) VmRSS: {} before, {} after (peak VmHWM {}).\n",
            mib(rss_before),
            mib(rss_after),
            mib(hwm)
        ));
    }
    println!("{report}");

    if let Some(path) = &args.out {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let is_new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if is_new {
            writeln!(
                file,
                "# Lumen benchmark results\n\nAppended by `scripts/bench.sh` (`lumen-bench`). \"direct\" calls the mock \
                 upstream, \"gateway\" calls it through lumen-host; \"added\" is gateway minus direct. Client, gateway \
                 and mock share the machine's cores.\n"
            )?;
        }
        writeln!(
            file,
            "## {}\n\n- Kernel: `{}`\n- CPUs: {} × {}\n\n{report}",
            utc_timestamp(now),
            command_output("uname", &["-srm"]),
            std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model(),
        )?;
        eprintln!("lumen-bench: appended results to {}", path.display());
    }
    Ok(())
}
