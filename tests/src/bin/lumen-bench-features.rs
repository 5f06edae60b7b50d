//! `lumen-bench-features`: what the response cache, shadow traffic and fusion cost and give
//! (issue 14), measured against a running gateway and the mock behind it
//! (`scripts/bench-features.sh` starts both, with a shadow experiment on `gpt-4o-mini`).
//!
//! - cache: non-stream c=1 p50 of the mock directly, of the gateway without the cache
//!   (`temperature` 1: bypassed), of misses (a new deterministic prompt each time: lookup, call,
//!   fill) and of hits (one deterministic prompt repeated);
//! - shadow: client latency on a route mirrored 100 % to a candidate the mock slows by 2 s,
//!   against the same call on a route without a shadow, then `GET /admin/shadow/{name}`;
//! - fusion: a streamed `lumen/fusion` answer whose panel member answers after 200 ms and whose
//!   synthesizer streams 20 tokens 10 ms apart: time to first token, total, and the panel time
//!   `lumen.fusion` reports, against a single streamed model.
//!
//! Prints a markdown section; `--out FILE` appends it.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lumen_tests::bench::{cpu_model, ms, utc_timestamp, Summary};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// Benchmark the response cache, shadow traffic and fusion.
#[derive(Debug, Parser)]
#[command(name = "lumen-bench-features", version)]
struct Args {
    /// Gateway origin, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    gateway: String,
    /// Mock origin, e.g. http://127.0.0.1:4000.
    #[arg(long)]
    direct: String,
    /// Lumen API key.
    #[arg(long)]
    key: String,
    /// Key for the mock.
    #[arg(long, default_value = "bench")]
    direct_key: String,
    /// Admin token (for the shadow report).
    #[arg(long)]
    admin_token: String,
    /// The shadow experiment on gpt-4o-mini.
    #[arg(long, default_value = "bench-shadow")]
    shadow: String,
    /// Measured requests per cache phase.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Requests in the shadow phases (each).
    #[arg(long, default_value_t = 50)]
    shadow_requests: usize,
    /// Requests in the fusion phases (each).
    #[arg(long, default_value_t = 20)]
    fusion_requests: usize,
    /// Append the results to this markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One keep-alive connection to one origin.
struct Client {
    authority: String,
    host: HeaderValue,
    auth: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// What one call gave.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
    first_content: Option<Duration>,
    total: Duration,
}

impl Client {
    fn new(origin: &str, key: &str) -> anyhow::Result<Client> {
        let uri: Uri = origin
            .parse()
            .with_context(|| format!("bad URL {origin}"))?;
        let authority = uri
            .authority()
            .context("URL without host")?
            .as_str()
            .to_owned();
        Ok(Client {
            host: HeaderValue::from_str(&authority)?,
            authority,
            auth: HeaderValue::from_str(&format!("Bearer {key}"))?,
            sender: None,
        })
    }

    async fn conn(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let stale = self.sender.as_ref().is_none_or(|s| s.is_closed());
        if stale {
            let stream = TcpStream::connect(&self.authority).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected"))
    }

    /// One call; a connection the server closed in between is reopened once.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Got> {
        match self.send_once(method, path, body).await {
            Ok(g) => Ok(g),
            Err(first) => {
                self.sender = None;
                self.send_once(method, path, body)
                    .await
                    .with_context(|| format!("{method} {path} (after: {first:#})"))
            }
        }
    }

    async fn send_once(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Got> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::new(Full::new(bytes));
        *req.method_mut() = method.parse()?;
        *req.uri_mut() = Uri::try_from(path)?;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(AUTHORIZATION, self.auth.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let start = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            self.conn().await?.send_request(req),
        )
        .await
        .context("no response within 60 s")??;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut first_content = None;
        let mut incoming = resp.into_body();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame?.into_data() {
                if first_content.is_none() && content_in(&data) {
                    first_content = Some(start.elapsed());
                }
                body.extend_from_slice(&data);
            }
        }
        Ok(Got {
            status,
            headers,
            body,
            first_content,
            total: start.elapsed(),
        })
    }
}

/// Whether an SSE frame carries a content delta (or is a whole JSON body).
fn content_in(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    !text.starts_with("data:") || text.contains("\"content\":\"")
}

fn chat(model: &str, text: &str, extra: Value) -> Value {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

async fn phase(
    client: &mut Client,
    n: usize,
    mut body: impl FnMut(usize) -> Value,
    expect_cache: Option<&str>,
) -> anyhow::Result<(Summary, Vec<Got>)> {
    let mut lat = Vec::with_capacity(n);
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let got = client
            .send("POST", "/v1/chat/completions", Some(&body(i)))
            .await?;
        if got.status != 200 {
            bail!(
                "HTTP {}: {}",
                got.status,
                String::from_utf8_lossy(&got.body)
            );
        }
        if let Some(want) = expect_cache {
            let seen = got
                .headers
                .get("x-lumen-cache")
                .and_then(|v| v.to_str().ok());
            if seen != Some(want) {
                bail!("expected x-lumen-cache {want}, got {seen:?}");
            }
        }
        lat.push(got.total);
        all.push(got);
    }
    Ok((Summary::of(&lat).context("no samples")?, all))
}

/// One call's latency, checking `x-lumen-cache`.
async fn expect(client: &mut Client, body: &Value, cache: &str) -> anyhow::Result<Duration> {
    let got = client
        .send("POST", "/v1/chat/completions", Some(body))
        .await?;
    let seen = got
        .headers
        .get("x-lumen-cache")
        .and_then(|v| v.to_str().ok());
    if got.status != 200 || seen != Some(cache) {
        bail!(
            "expected 200 with x-lumen-cache {cache}, got {} with {seen:?}: {}",
            got.status,
            String::from_utf8_lossy(&got.body)
        );
    }
    Ok(got.total)
}

/// One call's latency; anything but a 200 is an error.
async fn one(client: &mut Client, body: &Value) -> anyhow::Result<Duration> {
    let got = client
        .send("POST", "/v1/chat/completions", Some(body))
        .await?;
    if got.status != 200 {
        bail!(
            "HTTP {}: {}",
            got.status,
            String::from_utf8_lossy(&got.body)
        );
    }
    Ok(got.total)
}

fn p50(s: &Summary) -> String {
    ms(s.p50)
}

fn delta(a: Duration, b: Duration) -> String {
    format!("{:+.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut gw = Client::new(&args.gateway, &args.key)?;
    let mut direct = Client::new(&args.direct, &args.direct_key)?;
    let mut admin = Client::new(&args.gateway, &args.admin_token)?;
    let n = args.requests;
    let started = Instant::now();
    let mut out = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    out.push_str(&format!(
        "\n## Cache, shadow, fusion (issue 14), {}\n\nCPU: {}. lumen-host, SQLite KV, the mock on loopback; concurrency 1; `scripts/bench-features.sh`.\n\n",
        utc_timestamp(now),
        cpu_model()
    ));

    // Cache: on gpt-4o, which no shadow mirrors.
    let words = "[mock tokens=8]";
    let warm = |c: &str| {
        chat(
            "gpt-4o",
            &format!("warm {c} {words}"),
            json!({"temperature": 1}),
        )
    };
    for i in 0..20 {
        gw.send("POST", "/v1/chat/completions", Some(&warm(&i.to_string())))
            .await?;
        direct
            .send("POST", "/v1/chat/completions", Some(&warm(&i.to_string())))
            .await?;
    }
    let run = started.elapsed().as_nanos();
    let hit_body = chat(
        "gpt-4o",
        &format!("bench hit {run} {words}"),
        json!({"temperature": 0}),
    );
    let stream_body = json!({"model": "gpt-4o", "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": format!("bench stream hit {run} {words}")}]});
    gw.send("POST", "/v1/chat/completions", Some(&hit_body))
        .await?;
    gw.send("POST", "/v1/chat/completions", Some(&stream_body))
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Interleaved, so that every path sees the same background.
    let mut lat: [Vec<Duration>; 5] = Default::default();
    for i in 0..n {
        let plain = chat(
            "gpt-4o",
            &format!("bench {i} {words}"),
            json!({"temperature": 1}),
        );
        let miss = chat(
            "gpt-4o",
            &format!("bench miss {run} {i} {words}"),
            json!({"temperature": 0}),
        );
        lat[0].push(one(&mut direct, &plain).await?);
        lat[1].push(expect(&mut gw, &plain, "bypass").await?);
        lat[2].push(expect(&mut gw, &miss, "miss").await?);
        lat[3].push(expect(&mut gw, &hit_body, "hit").await?);
        lat[4].push(expect(&mut gw, &stream_body, "hit").await?);
    }
    let [d, plain, miss, hit, shit] = lat.map(|l| Summary::of(&l).expect("samples in every path"));
    out.push_str(&format!(
        "**Response cache** ({n} requests per row, non-stream, 8 tokens):\n\n\
| path | p50 (ms) | p99 (ms) | vs. |\n|---|---:|---:|---|\n\
| mock directly | {} | {} | |\n\
| gateway, not cacheable (`temperature` 1: no cache operation) | {} | {} | {} over the mock |\n\
| gateway, cache miss (lookup, model, fill after the answer) | {} | {} | {} over not cacheable |\n\
| gateway, cache hit | {} | {} | {} over the mock |\n\
| gateway, cache hit, stream | {} | {} | {} over the mock |\n\n",
        p50(&d),
        ms(d.p99),
        p50(&plain),
        ms(plain.p99),
        delta(plain.p50, d.p50),
        p50(&miss),
        ms(miss.p99),
        delta(miss.p50, plain.p50),
        p50(&hit),
        ms(hit.p99),
        delta(hit.p50, d.p50),
        p50(&shit),
        ms(shit.p99),
        delta(shit.p50, d.p50),
    ));

    // Shadow: interleaved (each shadowed request between two without: the same background for
    // both), then one phase of each (a shadowed request's after-answer work lands on the next).
    let sn = args.shadow_requests;
    let base_body = |i: usize| {
        chat(
            "gpt-4o",
            &format!("no shadow {i} [mock tokens=8]"),
            json!({}),
        )
    };
    let shadow_body = |i: usize| {
        chat(
            "gpt-4o-mini",
            &format!("shadowed {i} [mock tokens=8 ttft_ms=2000 only=gpt-4o]"),
            json!({}),
        )
    };
    let (mut ia, mut ib) = (Vec::new(), Vec::new());
    for i in 0..sn {
        ia.push(one(&mut gw, &base_body(i + 1000)).await?);
        ib.push(one(&mut gw, &shadow_body(i + 1000)).await?);
    }
    let (ia, ib) = (
        Summary::of(&ia).context("no samples")?,
        Summary::of(&ib).context("no samples")?,
    );
    // Let the interleaved shadow calls finish before the separate phases.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (base, _) = phase(&mut gw, sn, base_body, None).await?;
    let (shadowed, _) = phase(&mut gw, sn, shadow_body, None).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = admin
            .send("GET", &format!("/admin/shadow/{}", args.shadow), None)
            .await?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if v["samples"].as_u64() >= Some(2 * sn as u64) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    out.push_str(&format!(
        "**Shadow traffic** ({sn} requests per row; the candidate answers after 2 s):\n\n\
| route | client p50 (ms) | client p90 (ms) | max (ms) |\n|---|---:|---:|---:|\n\
| interleaved: `gpt-4o`, no shadow | {} | {} | {} |\n\
| interleaved: `gpt-4o-mini`, shadowed 100 % to `gpt-4o` | {} | {} | {} |\n\
| separate phase: `gpt-4o`, no shadow | {} | {} | {} |\n\
| separate phase: `gpt-4o-mini`, shadowed 100 % to `gpt-4o` | {} | {} | {} |\n\n\
Difference at p50: {} ms interleaved, {} ms in separate phases. `GET /admin/shadow/{}` after the run: {} samples; primary total p50 {:.1} ms, candidate total p50 {:.1} ms (time to first token {:.1} ms); verdict: \"{}\".\n\n",
        p50(&ia), ms(ia.p90), ms(ia.max),
        p50(&ib), ms(ib.p90), ms(ib.max),
        p50(&base), ms(base.p90), ms(base.max),
        p50(&shadowed), ms(shadowed.p90), ms(shadowed.max),
        delta(ib.p50, ia.p50),
        delta(shadowed.p50, base.p50),
        args.shadow,
        report["samples"],
        report["primary"]["total_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        report["candidate"]["total_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        report["candidate"]["ttft_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        report["verdict"].as_str().unwrap_or("?"),
    ));

    // Fusion.
    let fnn = args.fusion_requests;
    let fusion_text = "fusion [mock tokens=20 delay_ms=10 ttft_ms=200 only=anthropic]";
    let single = |_| json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": fusion_text}]});
    let (one, ones) = phase(&mut gw, fnn, single, None).await?;
    let fused = |_| json!({"model": "lumen/fusion", "stream": true, "messages": [{"role": "user", "content": fusion_text}]});
    let (fus, fuses) = phase(&mut gw, fnn, fused, None).await?;
    let ttft = |gots: &[Got]| {
        Summary::of(
            &gots
                .iter()
                .filter_map(|g| g.first_content)
                .collect::<Vec<_>>(),
        )
    };
    let mut panel_ms = Vec::new();
    let mut legs: Vec<Vec<f64>> = Vec::new();
    for g in &fuses {
        let text = String::from_utf8_lossy(&g.body);
        let last = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| d.contains("\"fusion\""))
            .last()
            .and_then(|d| serde_json::from_str::<Value>(d).ok());
        if let Some(l) = last {
            let f = &l["lumen"]["fusion"];
            panel_ms.push(Duration::from_secs_f64(
                f["panel_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            ));
            for (i, m) in f["panel"].as_array().into_iter().flatten().enumerate() {
                if legs.len() <= i {
                    legs.push(Vec::new());
                }
                legs[i].push(m["latency_ms"].as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    let (t1, tf) = (ttft(&ones), ttft(&fuses));
    let panel = Summary::of(&panel_ms);
    let leg_p50: Vec<String> = legs
        .iter_mut()
        .map(|l| {
            l.sort_by(f64::total_cmp);
            format!("{:.1}", l[l.len() / 2])
        })
        .collect();
    out.push_str(&format!(
        "**Fusion** ({fnn} streamed requests per row; panel gpt-4o-mini, claude-3-5-haiku (answers after 200 ms), gemini-2.0-flash; synthesizer gpt-4o streams 20 tokens 10 ms apart):\n\n\
| request | first token p50 (ms) | total p50 (ms) |\n|---|---:|---:|\n\
| `gpt-4o` alone | {} | {} |\n\
| `lumen/fusion` | {} | {} |\n\n\
Where the fusion time went (p50): panel {} ms (members {} ms, run at once), then the synthesizer: first token {} ms after the panel, last token {} ms after it.\n\n",
        t1.map_or("n/a".into(), |s| ms(s.p50)), p50(&one),
        tf.map_or("n/a".into(), |s| ms(s.p50)), p50(&fus),
        panel.map_or("n/a".into(), |s| ms(s.p50)),
        leg_p50.join(" / "),
        match (tf, panel) { (Some(t), Some(p)) => ms(t.p50.saturating_sub(p.p50)), _ => "n/a".into() },
        panel.map_or("n/a".into(), |p| ms(fus.p50.saturating_sub(p.p50))),
    ));
    out.push_str(&format!(
        "Wall time {:.1} s.\n",
        started.elapsed().as_secs_f64()
    ));
    print!("{out}");
    if let Some(path) = args.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(out.as_bytes())?;
    }
    Ok(())
}
