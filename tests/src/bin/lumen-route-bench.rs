//! `lumen-route-bench`: scores a batch of prompts through `POST /v1/route` on an in-process
//! lumen-host (the real components, in-memory KV, no upstream is called) and reports the wall
//! time of the batch and the scorer's own time per request inside the wasm router
//! (`route.score_us`, measured there on the monotonic clock).
//!
//! Prompts: MMLU-Pro questions from `--data` (cycled up to `--count`), or a fixed synthetic mix
//! when the file is missing. Bounded: one batch, a 120 s timeout.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmark POST /v1/route and the in-wasm scorer")]
struct Args {
    /// Prompts in the batch.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// MMLU-Pro outcomes (CSV, gzip) to take prompts from.
    #[arg(long, default_value = "../shared/data/mmlu-pro-outcomes.csv.gz")]
    data: PathBuf,
    /// The app manifest.
    #[arg(long, default_value = "spin.toml")]
    manifest: PathBuf,
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(120), s.send_request(req))
        .await
        .context("no answer within 120 s")??;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

fn prompts(args: &Args) -> Vec<String> {
    let base = questions(&args.data).unwrap_or_default();
    let base = if base.is_empty() {
        vec![
            "What is the capital of France?".to_string(),
            "Let f(x) = x^3 - 6x^2 + 11x - 6. Find all roots, then compute the integral of f from 0 to 4 and prove it.".to_string(),
            "Write a Python function with unit tests:\n```python\ndef test_x():\n    assert f(1) == 2\n```".to_string(),
        ]
    } else {
        base
    };
    (0..args.count)
        .map(|i| base[i % base.len()].clone())
        .collect()
}

fn questions(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let h = r.headers()?.clone();
    let q = h
        .iter()
        .position(|c| c == "question")
        .context("question column")?;
    let o = h
        .iter()
        .position(|c| c == "options")
        .context("options column")?;
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        out.push(lumen_tests::train::question_text(
            rec.get(q).unwrap_or(""),
            rec.get(o).unwrap_or(""),
        ));
    }
    Ok(out)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut o = lumen_host::HostOptions::new(&args.manifest);
    o.memory_kv = true;
    o.variables
        .insert("admin_token".into(), "route-bench-admin".into());
    o.variables
        .insert("max_request_bytes".into(), (256 * 1024 * 1024).to_string());
    let host = lumen_host::start(o)
        .await
        .map_err(|e| anyhow::anyhow!("start lumen-host: {e}"))?;
    let addr = host.addr();
    let (status, body) = post(
        addr,
        "/admin/keys",
        "route-bench-admin",
        json!({"name": "route-bench", "rpm_limit": 1_000_000})
            .to_string()
            .into_bytes(),
    )
    .await?;
    if status != 201 {
        bail!(
            "creating a key failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let key: Value = serde_json::from_slice(&body)?;
    let key = key["key"].as_str().context("key")?.to_string();

    let ps = prompts(&args);
    let chars: usize = ps.iter().map(|p| p.chars().count()).sum();
    let reqs: Vec<Value> = ps
        .iter()
        .map(|p| json!({"model": "auto", "messages": [{"role": "user", "content": p}]}))
        .collect();
    let batch = json!({"requests": reqs}).to_string().into_bytes();
    let bytes = batch.len();
    // Warm-up: compile and instantiate once.
    post(addr, "/v1/route", &key, br#"{"requests":[]}"#.to_vec()).await?;
    let t = Instant::now();
    let (status, body) = post(addr, "/v1/route", &key, batch).await?;
    let wall = t.elapsed();
    if status != 200 {
        bail!(
            "/v1/route failed: {status} {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
    }
    let v: Value = serde_json::from_slice(&body)?;
    let data = v["data"].as_array().context("data")?;
    let mut us: Vec<f64> = data
        .iter()
        .filter_map(|p| p["route"]["score_us"].as_f64())
        .collect();
    if us.len() != args.count {
        bail!(
            "expected {} plans with a score, got {}",
            args.count,
            us.len()
        );
    }
    us.sort_by(f64::total_cmp);
    let mut winners = std::collections::BTreeMap::<String, usize>::new();
    for p in data {
        *winners
            .entry(
                p["candidates"][0]["model"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            )
            .or_default() += 1;
    }
    println!("| prompts | request bytes | mean prompt chars | wall time | per prompt | scorer in wasm p50 / p99 / max | winners |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0} | {:.2} s | {:.0} µs | {:.1} / {:.1} / {:.1} µs | {} |",
        args.count,
        bytes,
        chars as f64 / args.count as f64,
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / args.count as f64,
        pct(&us, 0.5),
        pct(&us, 0.99),
        us[us.len() - 1],
        winners
            .iter()
            .map(|(m, n)| format!("{m}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    host.shutdown().await;
    Ok(())
}
