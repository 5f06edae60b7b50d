//! `lumen-bench --failover N` (the driver lives here so it is a library module): N requests through the gateway while the first provider of the
//! model is hard down (the mock resets every connection on its OpenAI route: the prompt carries
//! `[mock reset=1 only=openai]`), with `--concurrency` closed-loop workers. Counts successes,
//! the requests whose first attempt went to the dead provider (`x-lumen-fallbacks` starting with
//! `openai/`), and the dead provider's upstream calls from the mock's own request log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What the failover run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests sent.
    pub requests: usize,
    /// Requests answered 200.
    pub ok: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Completion order (1-based) of each request whose first attempt was the dead provider.
    pub dead_first: Vec<usize>,
    /// Upstream calls the mock logged on the dead route.
    pub dead_calls: usize,
    /// Upstream calls the mock logged on the live route.
    pub live_calls: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// The results as a markdown table.
    pub fn markdown(&self, concurrency: usize) -> String {
        let last = self.dead_first.last().copied().unwrap_or(0);
        let after_open = self
            .dead_first
            .iter()
            .filter(|&&i| i > 2 * concurrency)
            .count();
        format!(
            "| metric | value |\n|---|---:|\n\
             | requests (concurrency {concurrency}) | {} |\n\
             | succeeded | {} |\n\
             | requests that tried the dead provider first | {} |\n\
             | of those, completed after the first {} (planned before the open circuit was written, or a half-open probe) | {} |\n\
             | last request that tried it first (completion order) | {} |\n\
             | upstream calls to the dead provider (mock log) | {} |\n\
             | upstream calls to the live provider (mock log) | {} |\n\
             | wall time (s) | {:.1} |\n\
             | throughput (req/s) | {:.0} |\n",
            self.requests,
            self.ok,
            self.dead_first.len(),
            2 * concurrency,
            after_open,
            last,
            self.dead_calls,
            self.live_calls,
            self.elapsed.as_secs_f64(),
            self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9),
        )
    }
}

fn authority(base: &str) -> anyhow::Result<(String, String)> {
    let uri: http::Uri = base
        .parse()
        .with_context(|| format!("invalid URL {base:?}"))?;
    let a = uri
        .authority()
        .context("URL without host")?
        .as_str()
        .to_owned();
    Ok((a, uri.path().trim_end_matches('/').to_owned()))
}

async fn send(
    authority: &str,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    task.abort();
    Ok((status, headers, body))
}

fn request(
    method: &str,
    authority: &str,
    path: &str,
    key: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        b = b.header(AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(Full::new(body)).expect("valid request")
}

/// Runs the failover phase: `total` requests, `concurrency` workers, each bounded by `timeout`.
pub async fn run(
    gateway: &str,
    direct: &str,
    key: &str,
    model: &str,
    total: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let (gw, gw_path) = authority(gateway)?;
    let (mock, _) = authority(direct)?;
    // A clean request log on the mock.
    send(
        &mock,
        request("DELETE", &mock, "/mock/requests", None, Bytes::new()),
    )
    .await?;
    let body = Bytes::from(
        serde_json::json!({"model": model, "messages": [{"role": "user",
            "content": "Failover benchmark. [mock tokens=8 reset=1 only=openai]"}]})
        .to_string(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(Report {
        requests: total,
        ..Report::default()
    }));
    let began = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (gw, path, key, body) = (
            gw.clone(),
            format!("{gw_path}/chat/completions"),
            key.to_owned(),
            body.clone(),
        );
        let (next, done, report) = (next.clone(), done.clone(), report.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let req = request("POST", &gw, &path, Some(&key), body.clone());
                let outcome = tokio::time::timeout(timeout, send(&gw, req)).await;
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let mut r = report.lock().expect("report poisoned");
                match outcome {
                    Ok(Ok((status, headers, _))) if status == StatusCode::OK => {
                        r.ok += 1;
                        let first = headers
                            .get("x-lumen-fallbacks")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if first.starts_with("openai/") {
                            r.dead_first.push(n);
                        }
                    }
                    Ok(Ok((status, _, body))) => {
                        r.first_error.get_or_insert_with(|| {
                            format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Ok(Err(e)) => {
                        r.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        r.first_error
                            .get_or_insert_with(|| format!("timed out after {timeout:?}"));
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = began.elapsed();
    let (status, _, log) = send(
        &mock,
        request("GET", &mock, "/mock/requests?full=1", None, Bytes::new()),
    )
    .await?;
    if status != StatusCode::OK {
        bail!("the mock's request log answered HTTP {status}");
    }
    let log: serde_json::Value = serde_json::from_slice(&log)?;
    let paths: Vec<&str> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["path"].as_str())
        .collect();
    let mut r = std::mem::take(&mut *report.lock().expect("report poisoned"));
    r.dead_calls = paths
        .iter()
        .filter(|p| p.starts_with("/v1/chat/completions"))
        .count();
    r.live_calls = paths
        .iter()
        .filter(|p| p.starts_with("/openai/deployments/"))
        .count();
    r.dead_first.sort_unstable();
    r.elapsed = elapsed;
    Ok(r)
}
