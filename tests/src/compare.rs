//! Several gateways side by side against one upstream (`lumen-bench --target …`, run by
//! `scripts/bench.sh`): per system, the 16-concurrent non-stream and stream throughput, the
//! system's own CPU time per non-stream request (from `/proc`), the latency it adds at a fixed
//! low rate (non-stream p50/p90/p99, stream first-token p50, stream end p50/p90) and warm
//! (sequential non-stream requests right after the warm-up: at a low rate an idle machine adds
//! its own wake-up and cold caches) over calling the upstream directly, and its memory; then
//! ratios against named peers. Systems are measured one after another and the whole round is
//! repeated (`--runs`), so a slow moment of the machine hits every system alike; each number is
//! the median of the runs, with the spread when there are several.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use http_body_util::BodyExt as _;
use serde_json::Value;

use crate::bench::{proc_status_kib, Summary};
use crate::load::{open_loop, saturate, serial, PhaseResult, Target};

/// One system under test, from `--target name=…,url=…,key=…[,pid=…][,header=Name:Value]…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Its name in the tables (`direct` is the upstream itself, the floor).
    pub name: String,
    /// Base URL up to `/v1`.
    pub url: String,
    /// Bearer token.
    pub key: String,
    /// The process that serves, for CPU time and memory.
    pub pid: Option<u32>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

impl FromStr for TargetSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (mut name, mut url, mut key, mut pid, mut headers) = (None, None, None, None, vec![]);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("target part {part:?} is not key=value"))?;
            match k {
                "name" => name = Some(v.to_owned()),
                "url" => url = Some(v.to_owned()),
                "key" => key = Some(v.to_owned()),
                "pid" => pid = Some(v.parse().with_context(|| format!("pid {v:?}"))?),
                "header" => {
                    let (h, hv) = v
                        .split_once(':')
                        .with_context(|| format!("header {v:?} is not Name:Value"))?;
                    headers.push((h.to_owned(), hv.to_owned()));
                }
                other => bail!("unknown target part {other:?}; known: name, url, key, pid, header"),
            }
        }
        Ok(TargetSpec {
            name: name.context("target without name=")?,
            url: url.context("target without url=")?,
            key: key.unwrap_or_default(),
            pid,
            headers,
        })
    }
}

/// How long and how hard each phase runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rounds over every system.
    pub runs: usize,
    /// Open-loop rate of the latency phases (requests per second).
    pub rate: u32,
    /// Length of each latency phase (non-stream, stream).
    pub latency: Duration,
    /// Length of each throughput phase (non-stream, stream).
    pub throughput: Duration,
    /// Closed-loop workers of the throughput phases.
    pub concurrency: usize,
    /// Unmeasured requests per system and kind before each run's phases.
    pub warmup: usize,
    /// Sequential non-stream requests of the warm phase (right after the warm-up, one at a
    /// time on one connection): the latency a system adds when nothing is idle.
    pub warm: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Model asked for.
    pub model: String,
    /// Completion tokens per answer (`[mock tokens=N]`).
    pub tokens: u64,
}

/// One system's numbers in one run.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Non-stream requests per second at `concurrency`.
    pub rps: f64,
    /// Stream requests per second at `concurrency`.
    pub stream_rps: f64,
    /// The system's CPU milliseconds per non-stream request in the throughput phase.
    pub cpu_ms: Option<f64>,
    /// Non-stream latency at `rate`.
    pub latency: Option<Summary>,
    /// Non-stream latency of `warm` sequential requests (c=1).
    pub warm: Option<Summary>,
    /// Stream time to first token at `rate`.
    pub ttft: Option<Summary>,
    /// Stream time to the end of the answer at `rate` (a stall after the first token shows here).
    pub stream_end: Option<Summary>,
    /// Failed requests over every phase.
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, else Linux's usual 100).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of a process (all its threads), in milliseconds.
pub fn proc_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 * 1000.0 / clock_ticks())
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn note(result: &PhaseResult, m: &mut Measured) {
    m.errors += result.errors;
    if m.first_error.is_none() {
        m.first_error.clone_from(&result.first_error);
    }
}

/// Runs every phase once against `target` (the stream phases only when `streams`).
pub async fn measure(
    target: &Arc<Target>,
    pid: Option<u32>,
    streams: bool,
    s: &Settings,
) -> Measured {
    let mut m = Measured::default();
    // Warm connections, caches and JITs; not counted.
    serial(target, false, s.warmup, 0, s.timeout).await;
    if streams {
        serial(target, true, s.warmup, 0, s.timeout).await;
    }
    if s.warm > 0 {
        let warm = serial(target, false, 0, s.warm, s.timeout).await;
        m.warm = warm.totals();
        note(&warm, &mut m);
    }

    let lat = open_loop(target, false, s.rate, s.latency, s.timeout).await;
    m.latency = lat.totals();
    note(&lat, &mut m);
    if streams {
        let ttft = open_loop(target, true, s.rate, s.latency, s.timeout).await;
        m.ttft = ttft.ttfts();
        m.stream_end = ttft.totals();
        note(&ttft, &mut m);
    }

    let cpu0 = pid.and_then(proc_cpu_ms);
    let plain = saturate(target, false, s.concurrency, s.throughput, s.timeout).await;
    let cpu1 = pid.and_then(proc_cpu_ms);
    m.rps = plain.throughput();
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if !plain.samples.is_empty() {
            m.cpu_ms = Some((b - a) / plain.samples.len() as f64);
        }
    }
    note(&plain, &mut m);
    if streams {
        let streamed = saturate(target, true, s.concurrency, s.throughput, s.timeout).await;
        m.stream_rps = streamed.throughput();
        note(&streamed, &mut m);
    } else {
        m.stream_rps = f64::NAN;
    }
    m
}

/// Every system's runs, in `--target` order (the floor first).
pub struct Results {
    /// The systems.
    pub specs: Vec<TargetSpec>,
    /// `runs[i]` holds system `i`'s measurements, one per run.
    pub runs: Vec<Vec<Measured>>,
    /// Memory of each system at the end, in KiB: (VmRSS, VmHWM).
    pub memory: Vec<Option<(u64, u64)>>,
    /// Wall time of all runs.
    pub wall: Duration,
    /// Why a system's streams were not measured (its stream probe failed), per system.
    pub no_streams: Vec<Option<String>>,
}

/// Probes each system (a non-stream request must succeed; a system whose stream probe fails is
/// measured without streams, and the table says why), then runs the rounds.
pub async fn run(specs: Vec<TargetSpec>, s: &Settings) -> anyhow::Result<Results> {
    if !(1..=10).contains(&s.runs) {
        bail!("--runs must be in 1..=10");
    }
    if specs.first().is_none_or(|t| t.name != "direct") {
        bail!("the first --target must be name=direct (the upstream itself, the floor)");
    }
    let mut targets = Vec::new();
    let mut no_streams = Vec::new();
    for spec in &specs {
        let mut t = Target::new(&spec.name, &spec.url, &spec.key, &s.model, s.tokens)?;
        for (h, v) in &spec.headers {
            t = t.header(h, v)?;
        }
        let t = Arc::new(t);
        let mut conn = t.connect().await?;
        crate::load::call(&mut conn, &t, false, Instant::now())
            .await
            .with_context(|| format!("probe request to {} failed", spec.name))?;
        let mut conn = t.connect().await?;
        let streams = crate::load::call(&mut conn, &t, true, Instant::now()).await;
        if let Err(e) = &streams {
            eprintln!(
                "lumen-bench: {}: stream probe failed ({e:#}); streams not measured",
                spec.name
            );
        }
        no_streams.push(streams.err().map(|e| format!("{e:#}")));
        targets.push(t);
    }
    let began = Instant::now();
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); specs.len()];
    for run in 0..s.runs {
        for (i, (t, spec)) in targets.iter().zip(&specs).enumerate() {
            let m = measure(t, spec.pid, no_streams[i].is_none(), s).await;
            eprintln!(
                "lumen-bench: run {}/{} {}: {:.0} req/s, stream {:.0} req/s, cpu {} ms/req, p50 {} ms, warm p50 {} ms, ttft p50 {} ms, {} errors{}",
                run + 1,
                s.runs,
                spec.name,
                m.rps,
                m.stream_rps,
                m.cpu_ms.map_or("n/a".into(), |c| format!("{c:.3}")),
                m.latency.map_or("n/a".into(), |l| ms(l.p50)),
                m.warm.map_or("n/a".into(), |l| ms(l.p50)),
                m.ttft.map_or("n/a".into(), |l| ms(l.p50)),
                m.errors,
                m.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            runs[i].push(m);
        }
    }
    let memory = specs
        .iter()
        .map(|t| {
            let pid = t.pid?;
            Some((
                proc_status_kib(pid, "VmRSS")?,
                proc_status_kib(pid, "VmHWM")?,
            ))
        })
        .collect();
    Ok(Results {
        specs,
        runs,
        memory,
        wall: began.elapsed(),
        no_streams,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The median of `v` (mean of the middle two when even); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A metric across runs: its median, and `(min–max)` when there are several runs.
fn cell(v: &[f64], decimals: usize) -> String {
    let Some(mid) = median(v) else {
        return "n/a".into();
    };
    let mut out = format!("{mid:.decimals$}");
    if v.len() > 1 {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = write!(out, " ({lo:.decimals$}–{hi:.decimals$})");
    }
    out
}

fn signed_cell(v: &[f64]) -> String {
    let Some(mid) = median(v) else {
        return "n/a".into();
    };
    let mut out = format!("{mid:+.2}");
    if v.len() > 1 {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = write!(out, " ({lo:+.2}…{hi:+.2})");
    }
    out
}

fn secs_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Results {
    fn series(&self, i: usize, f: impl Fn(&Measured) -> Option<f64>) -> Vec<f64> {
        self.runs[i].iter().filter_map(f).collect()
    }

    /// Per run, system `i`'s metric minus the floor's in the same run.
    fn added(&self, i: usize, f: impl Fn(&Measured) -> Option<f64>) -> Vec<f64> {
        self.runs[i]
            .iter()
            .zip(&self.runs[0])
            .filter_map(|(m, d)| Some(f(m)? - f(d)?))
            .collect()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// The main table, the ratio table and the notes, as markdown.
    pub fn markdown(&self, s: &Settings, ratio_vs: &[String]) -> String {
        let mut out = String::new();
        let rate = s.rate;
        let _ = writeln!(
            out,
            "| system | non-stream req/s (c={c}) | stream req/s (c={c}) | CPU ms / non-stream req | added p50 ms @{rate}/s | added p90 ms | added p99 ms | added p50 ms warm (c=1) | added first-token p50 ms @{rate}/s | added stream-end p50 / p90 ms | RSS now / peak MiB |",
            c = s.concurrency
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let lat = |p: fn(&Summary) -> Duration| {
            move |m: &Measured| m.latency.as_ref().map(|l| secs_ms(p(l)))
        };
        let ttft = |m: &Measured| m.ttft.as_ref().map(|l| secs_ms(l.p50));
        let warm = |m: &Measured| m.warm.as_ref().map(|l| secs_ms(l.p50));
        let end = |p: fn(&Summary) -> Duration| {
            move |m: &Measured| m.stream_end.as_ref().map(|l| secs_ms(p(l)))
        };
        for (i, spec) in self.specs.iter().enumerate() {
            let rps = cell(&self.series(i, |m| Some(m.rps)), 0);
            let srps = cell(&self.series(i, |m| Some(m.stream_rps)), 0);
            let cpu = cell(&self.series(i, |m| m.cpu_ms), 3);
            let (p50, p90, p99, warm_p50, first, ends) = if i == 0 {
                (
                    format!("floor {}", cell(&self.series(0, lat(|l| l.p50)), 2)),
                    format!("floor {}", cell(&self.series(0, lat(|l| l.p90)), 2)),
                    format!("floor {}", cell(&self.series(0, lat(|l| l.p99)), 2)),
                    format!("floor {}", cell(&self.series(0, warm), 2)),
                    format!("floor {}", cell(&self.series(0, ttft), 2)),
                    format!(
                        "floor {} / {}",
                        cell(&self.series(0, end(|l| l.p50)), 2),
                        cell(&self.series(0, end(|l| l.p90)), 2)
                    ),
                )
            } else {
                (
                    signed_cell(&self.added(i, lat(|l| l.p50))),
                    signed_cell(&self.added(i, lat(|l| l.p90))),
                    signed_cell(&self.added(i, lat(|l| l.p99))),
                    signed_cell(&self.added(i, warm)),
                    signed_cell(&self.added(i, ttft)),
                    format!(
                        "{} / {}",
                        signed_cell(&self.added(i, end(|l| l.p50))),
                        signed_cell(&self.added(i, end(|l| l.p90)))
                    ),
                )
            };
            let mem = self.memory[i].map_or("n/a".into(), |(rss, hwm)| {
                format!("{:.0} / {:.0}", rss as f64 / 1024.0, hwm as f64 / 1024.0)
            });
            let _ = writeln!(
                out,
                "| {} | {rps} | {srps} | {cpu} | {p50} | {p90} | {p99} | {warm_p50} | {first} | {ends} | {mem} |",
                spec.name
            );
        }
        // Ratios of medians: throughput (higher is better) and CPU / added latency (lower is better).
        let peers: Vec<(usize, &String)> = ratio_vs
            .iter()
            .filter_map(|n| Some((self.index(n)?, n)))
            .collect();
        if !peers.is_empty() {
            out.push('\n');
            let mut head = String::from("| system |");
            let mut rule = String::from("|---|");
            for (_, n) in &peers {
                let _ = write!(
                    head,
                    " req/s ÷ {n} | stream req/s ÷ {n} | CPU/req ÷ {n} | added p50 ÷ {n} | added p99 ÷ {n} | added TTFT p50 ÷ {n} |"
                );
                rule.push_str("---:|---:|---:|---:|---:|---:|");
            }
            let _ = writeln!(out, "{head}\n{rule}");
            let med = |i: usize, f: &dyn Fn(&Measured) -> Option<f64>| {
                median(&self.runs[i].iter().filter_map(f).collect::<Vec<_>>())
            };
            let added_med = |i: usize, f: &dyn Fn(&Measured) -> Option<f64>| {
                median(
                    &self.runs[i]
                        .iter()
                        .zip(&self.runs[0])
                        .filter_map(|(m, d)| Some(f(m)? - f(d)?))
                        .collect::<Vec<_>>(),
                )
            };
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b.abs() > 1e-9 => format!("{:.2}", a / b),
                _ => "n/a".into(),
            };
            let p50 = |m: &Measured| m.latency.as_ref().map(|l| secs_ms(l.p50));
            let p99 = |m: &Measured| m.latency.as_ref().map(|l| secs_ms(l.p99));
            for (i, spec) in self.specs.iter().enumerate().skip(1) {
                let mut row = format!("| {} |", spec.name);
                for &(j, _) in &peers {
                    let _ = write!(
                        row,
                        " {} | {} | {} | {} | {} | {} |",
                        ratio(med(i, &|m| Some(m.rps)), med(j, &|m| Some(m.rps))),
                        ratio(
                            med(i, &|m| Some(m.stream_rps)),
                            med(j, &|m| Some(m.stream_rps))
                        ),
                        ratio(med(i, &|m| m.cpu_ms), med(j, &|m| m.cpu_ms)),
                        ratio(added_med(i, &p50), added_med(j, &p50)),
                        ratio(added_med(i, &p99), added_med(j, &p99)),
                        ratio(added_med(i, &ttft), added_med(j, &ttft)),
                    );
                }
                let _ = writeln!(out, "{row}");
            }
        }
        let errors: Vec<String> = self
            .specs
            .iter()
            .zip(&self.runs)
            .map(|(spec, runs)| {
                let n: usize = runs.iter().map(|m| m.errors).sum();
                let first = runs.iter().find_map(|m| m.first_error.clone());
                match first {
                    Some(e) if n > 0 => format!("{} {n} (first: {e})", spec.name),
                    _ => format!("{} {n}", spec.name),
                }
            })
            .collect();
        for (spec, why) in self.specs.iter().zip(&self.no_streams) {
            if let Some(why) = why {
                let _ = writeln!(
                    out,
                    "\n{}: its stream probe failed ({why}), so its streams are not measured.",
                    spec.name
                );
            }
        }
        let _ = writeln!(
            out,
            "\nMedian of {} run(s){}; model `{}`, {} completion tokens per answer; per system and run: {} warm-up requests of each kind, {} sequential non-stream requests (warm, c=1), {:.0} s at {rate} req/s non-stream and again streamed (open loop), {:.0} s of {} closed-loop workers non-stream and again streamed. CPU is the system's own process (utime + stime from `/proc/<pid>/stat`) over the non-stream throughput phase; \"added\" is the system's latency minus the direct call's in the same run. Errors: {}. Wall time {:.0} s.",
            s.runs,
            if s.runs > 1 { ", (min–max) across runs" } else { "" },
            s.model,
            s.tokens,
            s.warmup,
            s.warm,
            s.latency.as_secs_f64(),
            s.throughput.as_secs_f64(),
            s.concurrency,
            errors.join(", "),
            self.wall.as_secs_f64()
        );
        out
    }
}

/// A request whose key-value round trips `--kv-ops` reports.
struct Probe {
    label: &'static str,
    status: u16,
    request_id: String,
}

async fn send(
    base: &str,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let uri: http::Uri = format!("{}{path}", base.trim_end_matches('/')).parse()?;
    let authority = uri.authority().context("URL without host")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", &authority)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        anyhow::Ok((status, id, body))
    })
    .await
    .context("no answer within 30 s")??;
    Ok(resp)
}

/// `--kv-ops`: a warm non-stream chat, a warm stream, a 401 and a 429 against lumen-host run
/// with `LUMEN_HOST_KV_LOG=log`, and each one's key-value round trips from that log, as a
/// markdown table.
pub async fn kv_ops(
    base: &str,
    admin: &str,
    model: &str,
    log: &std::path::Path,
) -> anyhow::Result<String> {
    let key = |rpm: u32| async move {
        let (status, _, body) = send(
            base,
            "POST",
            "/admin/keys",
            admin,
            Some(serde_json::json!({"name": format!("kv-ops-{rpm}"), "rpm_limit": rpm})),
        )
        .await?;
        if status != 201 {
            bail!(
                "POST /admin/keys answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body)?;
        anyhow::Ok(
            v["key"]
                .as_str()
                .context("no key in the answer")?
                .to_owned(),
        )
    };
    let (open, one) = (key(100_000).await?, key(1).await?);
    let chat = |stream: bool| {
        serde_json::json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "kv ops [mock tokens=8]"}]})
    };
    let mut probes = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            send(
                base,
                "POST",
                "/v1/chat/completions",
                &open,
                Some(chat(false)),
            )
            .await?,
        );
    }
    let (status, request_id, _) = last.take().context("three chats")?;
    probes.push(Probe {
        label: "warm non-stream chat",
        status,
        request_id,
    });
    for _ in 0..2 {
        last = Some(
            send(
                base,
                "POST",
                "/v1/chat/completions",
                &open,
                Some(chat(true)),
            )
            .await?,
        );
    }
    let (status, request_id, _) = last.context("two streams")?;
    probes.push(Probe {
        label: "warm stream",
        status,
        request_id,
    });
    let (status, request_id, _) = send(
        base,
        "POST",
        "/v1/chat/completions",
        "lm_not_a_key",
        Some(chat(false)),
    )
    .await?;
    probes.push(Probe {
        label: "unknown key (401)",
        status,
        request_id,
    });
    send(
        base,
        "POST",
        "/v1/chat/completions",
        &one,
        Some(chat(false)),
    )
    .await?;
    let (status, request_id, _) = send(
        base,
        "POST",
        "/v1/chat/completions",
        &one,
        Some(chat(false)),
    )
    .await?;
    probes.push(Probe {
        label: "over the key's rpm (429)",
        status,
        request_id,
    });

    let mut out = String::from(
        "| request | status | KV round trips | reads | writes | get | get-many | set | increment | delete |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in &probes {
        let line = find_log_line(log, &p.request_id).await?;
        let n = |k: &str| line["ops"][k].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            p.status,
            line["total"],
            line["reads"],
            line["writes"],
            n("get"),
            n("get_many"),
            n("set"),
            n("increment"),
            n("delete"),
        );
    }
    Ok(out)
}

/// The KV-log line of `request_id` (waiting up to 5 s: a stream's line is written when it ends).
async fn find_log_line(log: &std::path::Path, request_id: &str) -> anyhow::Result<Value> {
    if request_id.is_empty() {
        bail!("a probe's answer had no x-request-id");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == request_id)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{request_id} is not in {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs_parse() {
        let t: TargetSpec =
            "name=portkey,url=http://127.0.0.1:9/v1,key=k,pid=42,header=x-portkey-provider:openai,header=x-portkey-custom-host:http://127.0.0.1:8/v1"
                .parse()
                .unwrap();
        assert_eq!(t.name, "portkey");
        assert_eq!(t.pid, Some(42));
        assert_eq!(
            t.headers,
            vec![
                ("x-portkey-provider".to_owned(), "openai".to_owned()),
                (
                    "x-portkey-custom-host".to_owned(),
                    "http://127.0.0.1:8/v1".to_owned()
                )
            ]
        );
        assert!("url=http://x".parse::<TargetSpec>().is_err());
        assert!("name=a,url=u,colour=red".parse::<TargetSpec>().is_err());
    }

    #[test]
    fn stat_cpu_fields_after_the_command_name() {
        let stat = "1234 (spin (trigger) x) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 8 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(290));
        assert!(proc_cpu_ms(std::process::id()).is_some());
    }

    #[test]
    fn medians_and_cells() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(cell(&[10.0, 30.0, 20.0], 0), "20 (10–30)");
        assert_eq!(cell(&[1.5], 1), "1.5");
        assert_eq!(signed_cell(&[0.5, -0.3]), "+0.10 (-0.30…+0.50)");
    }
}
