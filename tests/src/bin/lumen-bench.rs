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
//!
//! Two more modes: `--target name=…,url=…` (repeated; the first is `name=direct`, the upstream)
//! measures several gateways side by side ([`lumen_tests::compare`]; what `scripts/bench.sh`
//! runs), and `--kv-ops LOG` reports the key-value round trips of a warm chat, a stream, a 401
//! and a 429 from a lumen-host run with `LUMEN_HOST_KV_LOG=LOG`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use lumen_tests::bench::{cpu_model, markdown_table, proc_status_kib, utc_timestamp, Row, Summary};
use lumen_tests::load::{call, open_loop, saturate, serial, PhaseResult, Target};

use lumen_tests::{compare, failover_bench};

/// Benchmark the latency Lumen adds over calling the upstream directly.
#[derive(Debug, Parser)]
#[command(name = "lumen-bench", version)]
struct Args {
    /// Gateway base URL, e.g. http://127.0.0.1:3000/v1.
    #[arg(long, required_unless_present = "target")]
    gateway: Option<String>,
    /// Upstream (mock) base URL, e.g. http://127.0.0.1:4000/v1.
    #[arg(long, required_unless_present_any = ["target", "kv_ops"])]
    direct: Option<String>,
    /// Lumen API key for the gateway.
    #[arg(long, required_unless_present_any = ["target", "kv_ops"])]
    key: Option<String>,
    /// API key sent to the direct target.
    #[arg(long, default_value = "bench")]
    direct_key: String,
    /// Model to request.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Measured requests per target for the concurrency-1 phases (side-by-side: the warm
    /// phase, sequential non-stream requests right after the warm-up).
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
    /// Side-by-side mode: one system per flag, `name=…,url=…,key=…[,pid=…][,header=Name:Value]…`;
    /// the first must be `name=direct` (the upstream itself).
    #[arg(long)]
    target: Vec<compare::TargetSpec>,
    /// Side-by-side: rounds over every system (the tables show medians and spreads).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Side-by-side: open-loop rate of the latency phases.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Side-by-side: seconds of each latency phase (non-stream, stream).
    #[arg(long, default_value_t = 20.0)]
    latency_s: f64,
    /// Side-by-side: systems the ratio table compares with (comma separated names).
    #[arg(long, value_delimiter = ',', default_values_t = ["portkey".to_string(), "lumen-host".to_string()])]
    ratio_vs: Vec<String>,
    /// KV-operations mode: lumen-host's `LUMEN_HOST_KV_LOG` file (with `--gateway` and
    /// `--admin-token`).
    #[arg(long)]
    kv_ops: Option<PathBuf>,
    /// Admin token for `--kv-ops`.
    #[arg(long, default_value = "")]
    admin_token: String,
    /// Failover mode instead of the latency phases: this many requests (1..=100000) while the
    /// model's first provider is hard down (`scripts/bench.sh --failover 1000`).
    #[arg(long)]
    failover: Option<usize>,
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

/// Prints `text` and appends it to `--out` (no header: `scripts/bench.sh` writes the section's).
fn emit(args: &Args, text: &str) -> anyhow::Result<()> {
    println!("{text}");
    if let Some(path) = &args.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// `--failover N`: prints (and appends to `--out`) the failover table; fails unless every
/// request succeeded.
async fn failover(
    args: &Args,
    (gateway, direct, key): (&str, &str, &str),
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    if n == 0 || n > 100_000 {
        bail!("--failover must be in 1..=100000");
    }
    let r = failover_bench::run(
        gateway,
        direct,
        key,
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
    if let Some(log) = &args.kv_ops {
        let gateway = args
            .gateway
            .as_deref()
            .context("--kv-ops needs --gateway")?;
        let base = gateway.trim_end_matches('/').trim_end_matches("/v1");
        let table = compare::kv_ops(base, &args.admin_token, &args.model, log).await?;
        return emit(&args, &table);
    }
    if !args.target.is_empty() {
        let settings = compare::Settings {
            runs: args.runs,
            rate: args.rate,
            latency: Duration::from_secs_f64(args.latency_s.clamp(1.0, 300.0)),
            throughput: duration,
            concurrency: args.concurrency,
            warmup: args.warmup,
            warm: args.requests,
            timeout,
            model: args.model.clone(),
            tokens: args.tokens,
        };
        let results = compare::run(args.target.clone(), &settings).await?;
        return emit(&args, &results.markdown(&settings, &args.ratio_vs));
    }
    let (Some(gateway), Some(direct), Some(key)) = (&args.gateway, &args.direct, &args.key) else {
        bail!("--gateway, --direct and --key are required");
    };
    if let Some(n) = args.failover {
        return failover(&args, (gateway, direct, key), n, timeout).await;
    }
    let targets = [
        Arc::new(Target::new(
            "direct",
            direct,
            &args.direct_key,
            &args.model,
            args.tokens,
        )?),
        Arc::new(Target::new(
            "gateway",
            gateway,
            key,
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
                open_loop(&t, false, rate, duration, timeout).await
            })
            .await,
        );
    }
    let concurrency = args.concurrency;
    let saturated = both(
        format!("closed-loop c={concurrency}"),
        &targets,
        |t| async move { saturate(&t, false, concurrency, duration, timeout).await },
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
