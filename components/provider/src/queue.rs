//! Queue-style GPU serverless backends: after the job is submitted (in `call::attempt`), poll its
//! status until a worker has answered. While the job waits for a cold start a streamed request
//! gets an SSE comment (`: keep-alive`) every second, so clients and proxies keep the connection;
//! the provider's first-token deadline (longer for `cold_start` backends) bounds the wait. The
//! observed wait is recorded in KV ([`lumen_shared::store::coldstart`]) and reported as
//! `x-lumen-cold-start-ms` (this request's wait for whole answers, and `lumen.cold_start_ms` in the
//! final chunk of a stream, whose headers carry the last recorded wait).

use crate::call::{report, served_headers, with_usage};
use crate::failover::{attempts_json, fallbacks_header, outcome_of, Attempt};
use crate::upstream::answer_usage;
use futures::SinkExt;
use lumen_shared::contracts::{headers, CallRequest, Candidate, Outcome, UsageReport};
use lumen_shared::domain::pricing::{cost_header, lumen_object};
use lumen_shared::store::coldstart;
use lumen_shared::wire::dialect::queue::{completion_chunks, job_state, JobState};
use lumen_shared::wire::openai::Usage;
use lumen_shared::wire::sse::Event;
use lumen_shared::ApiError;
use lumen_spin::http::{read_response_body, send_request};
use lumen_spin::pipe::Out;
use lumen_spin::relay::{CostTag, UpstreamRelay, KEEP_ALIVE};
use lumen_spin::util::{elapsed_ms, format_ms, now_ms};
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;
use spin_sdk::http::{Method, Request};
use std::time::{Duration, Instant};

/// Time between status polls.
const POLL: Duration = Duration::from_millis(250);
/// Keep-alive comments while waiting, one per this many polls (1 s).
const POLLS_PER_KEEP_ALIVE: u32 = 4;

/// A submitted job.
pub struct Job {
    /// Provider base URL.
    pub base: String,
    /// Provider key (may be empty).
    pub key: String,
    /// Job id.
    pub id: String,
    /// When it was submitted.
    pub submitted: Instant,
}

/// How a wait ended.
enum Waited {
    Done { output: Value, cold_ms: Option<u64> },
    Failed(ApiError),
}

async fn poll_once(job: &Job) -> Result<JobState, String> {
    let mut req = Request::new(Method::Get, format!("{}/status/{}", job.base, job.id));
    if !job.key.is_empty() {
        req.set_header("authorization", format!("Bearer {}", job.key));
    }
    let resp = send_request(req).await.map_err(|e| e.to_string())?;
    if !(200..300).contains(&resp.status()) {
        return Err(format!("status poll answered HTTP {}", resp.status()));
    }
    let body = read_response_body(&resp, 64 * 1024 * 1024).await?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| format!("status is not JSON ({e})"))?;
    Ok(job_state(&v))
}

/// Polls until the job is done, failed or past the deadline, sending a keep-alive comment to
/// `sink` every second meanwhile; `None` when the client went away.
async fn wait<S>(job: &Job, c: &Candidate, mut sink: Option<&mut S>) -> Option<Waited>
where
    S: futures::Sink<Vec<u8>> + Unpin,
{
    let p = &c.provider;
    let deadline = Duration::from_millis(p.first_token_deadline_ms());
    let mut cold_ms = None;
    let mut polls = 0u32;
    loop {
        let state = match poll_once(job).await {
            Ok(s) => s,
            Err(why) => {
                return Some(Waited::Failed(ApiError::upstream(
                    502,
                    format!(
                        "provider \"{}\" failed while running the job: {why}",
                        p.name
                    ),
                    false,
                )))
            }
        };
        if polls > 0 && cold_ms.is_none() && state != JobState::Queued {
            cold_ms = Some(elapsed_ms(job.submitted) as u64);
        }
        match state {
            JobState::Done(output) => return Some(Waited::Done { output, cold_ms }),
            JobState::Failed(why) => {
                return Some(Waited::Failed(ApiError::upstream(
                    502,
                    format!("provider \"{}\" job failed: {why}", p.name),
                    false,
                )))
            }
            JobState::Queued | JobState::Running => {}
        }
        if job.submitted.elapsed() > deadline {
            let mut e = ApiError::upstream(
                504,
                format!(
                    "provider \"{}\" produced no first token within {} ms{}",
                    p.name,
                    deadline.as_millis(),
                    if p.cold_start {
                        " (cold-start deadline)"
                    } else {
                        ""
                    }
                ),
                false,
            );
            e.code = Some("first_token_timeout".into());
            return Some(Waited::Failed(e));
        }
        polls += 1;
        if polls.is_multiple_of(POLLS_PER_KEEP_ALIVE) {
            if let Some(s) = sink.as_mut() {
                if s.send(KEEP_ALIVE.to_vec()).await.is_err() {
                    return None;
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

fn remember(c: &Candidate, cold_ms: Option<u64>) {
    if let (Some(ms), Ok(kv)) = (cold_ms, SpinKv::open()) {
        // Best effort: an observation lost to a KV failure costs nothing but the statistic.
        let _ = coldstart::record(&kv, &c.provider.name, ms, now_ms());
    }
}

/// How a job came to be served: the submission's time to headers, what was waited before it
/// (failed tries, backoff) and the tries before it, for `x-lumen-fallbacks` and
/// `lumen.attempts` (a queue answer after failed attempts carries them like any other).
pub struct Served<'a> {
    /// The submission's time to headers.
    pub upstream_ms: f64,
    /// Time waited before the submission.
    pub waited_ms: f64,
    /// The tries before this one.
    pub attempts: &'a [Attempt],
}

impl Served<'_> {
    /// The tries with this one's outcome last.
    fn with(&self, c: &Candidate, outcome: &str, latency_ms: f64) -> Vec<Attempt> {
        let mut all = self.attempts.to_vec();
        all.push(Attempt::new(c, outcome, latency_ms));
        all
    }

    /// The internal headers that say so: who served, how long it waited, the tries.
    fn headers(&self, c: &Candidate, upstream_ms: f64, all: &[Attempt]) -> Vec<(String, String)> {
        let mut hs = served_headers(c, upstream_ms);
        hs.push((headers::WAITED_MS.to_string(), format_ms(self.waited_ms)));
        if let Some(f) = fallbacks_header(all) {
            hs.push((headers::FALLBACKS.to_string(), f));
        }
        hs.push((
            headers::ATTEMPTS.to_string(),
            attempts_json(all).to_string(),
        ));
        hs
    }
}

/// Serves a submitted job: whole, or as a stream with keep-alives while it waits.
pub async fn serve(
    out: Out,
    job: Job,
    c: &Candidate,
    call: &CallRequest,
    stream: bool,
    prompt_estimate: u64,
    served: Served<'_>,
) {
    if stream {
        return serve_stream(out, job, c, call.include_usage, prompt_estimate, served).await;
    }
    let waited = wait::<futures::sink::Drain<Vec<u8>>>(&job, c, None).await;
    // A whole answer's wait in the queue is the upstream's time, not the gateway's.
    let upstream_ms = served.upstream_ms + elapsed_ms(job.submitted);
    let reply = match waited {
        Some(Waited::Done {
            mut output,
            cold_ms,
        }) => {
            remember(c, cold_ms);
            let all = served.with(c, "ok", upstream_ms);
            let (usage, estimated) = answer_usage(&output, prompt_estimate);
            if let Some(obj) = output.as_object_mut() {
                let mut lumen = lumen_object(&usage, &c.price, &c.model, &c.provider.name);
                lumen["cold_start_ms"] = cold_ms.unwrap_or(0).into();
                lumen["attempts"] = attempts_json(&all);
                obj.insert("lumen".into(), lumen);
            }
            let mut reply = Reply::json(200, &output);
            reply.headers.extend(served.headers(c, upstream_ms, &all));
            reply.set_header(headers::COST, cost_header(&usage, &c.price));
            reply.set_header(headers::COLD_START, cold_ms.unwrap_or(0).to_string());
            with_usage(
                reply,
                &report(c, usage, estimated, Outcome::Ok, upstream_ms),
            )
        }
        failed => {
            let e = match failed {
                Some(Waited::Failed(e)) => e,
                _ => ApiError::internal("the job wait ended without an answer"),
            };
            let all = served.with(c, &outcome_of(&e), upstream_ms);
            let mut reply = Reply::error(&e);
            reply.headers.extend(served.headers(c, upstream_ms, &all));
            with_usage(
                reply,
                &report(
                    c,
                    Usage::default(),
                    false,
                    Outcome::UpstreamError,
                    upstream_ms,
                ),
            )
        }
    };
    out.respond(reply).await;
}

/// A finished OpenAI `chat.completion` as the whole reply to auth: `lumen` object, cost header,
/// usage report, and the cold start when there was a queue.
pub fn whole_reply(
    c: &Candidate,
    mut output: Value,
    cold_ms: Option<u64>,
    prompt_estimate: u64,
    upstream_ms: f64,
) -> Reply {
    let (usage, estimated) = answer_usage(&output, prompt_estimate);
    if let Some(obj) = output.as_object_mut() {
        let mut lumen = lumen_object(&usage, &c.price, &c.model, &c.provider.name);
        if let Some(ms) = cold_ms {
            lumen["cold_start_ms"] = ms.into();
        }
        obj.insert("lumen".into(), lumen);
    }
    let mut reply = Reply::json(200, &output);
    reply.headers.extend(served_headers(c, upstream_ms));
    reply.set_header(headers::COST, cost_header(&usage, &c.price));
    if let Some(ms) = cold_ms {
        reply.set_header(headers::COLD_START, ms.to_string());
    }
    with_usage(
        reply,
        &report(c, usage, estimated, Outcome::Ok, upstream_ms),
    )
}

/// A finished `chat.completion` replayed as a stream (role, content, finish, usage, `[DONE]`).
pub async fn replay_stream(
    out: Out,
    c: &Candidate,
    output: &Value,
    include_usage: bool,
    prompt_estimate: u64,
    upstream_ms: f64,
) {
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(served_headers(c, upstream_ms));
    let mut sink = out.start_stream(200, &hs);
    let mut relay = UpstreamRelay::new(include_usage).with_cost(CostTag {
        price: c.price.clone(),
        model: c.model.clone(),
        provider: c.provider.name.clone(),
        cold_start_ms: None,
    });
    for data in completion_chunks(output) {
        let ev = Event {
            event: None,
            data,
            comment_only: false,
        };
        if let Some(bytes) = relay.on_event(&ev) {
            if sink.send(bytes).await.is_err() {
                return;
            }
        }
    }
    let (tail, _) = relay.finish(&c.model, &c.provider.name, upstream_ms, prompt_estimate);
    let _ = sink.send(tail).await;
    let _ = sink.close().await;
}

async fn serve_stream(
    out: Out,
    job: Job,
    c: &Candidate,
    include_usage: bool,
    prompt_estimate: u64,
    served: Served<'_>,
) {
    let upstream_ms = served.upstream_ms;
    let all = served.with(c, "ok", upstream_ms);
    let mut hs = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    hs.extend(served.headers(c, upstream_ms, &all));
    // The wait is not known yet: the header carries the last recorded cold start.
    if let Some(s) = SpinKv::open()
        .ok()
        .and_then(|kv| coldstart::last(&kv, &c.provider.name).ok().flatten())
    {
        hs.push((headers::COLD_START.to_string(), s.last_ms.to_string()));
    }
    let mut sink = out.start_stream(200, &hs);
    let waited = wait(&job, c, Some(&mut sink)).await;
    let mut relay = UpstreamRelay::new(include_usage).with_cost(CostTag {
        price: c.price.clone(),
        model: c.model.clone(),
        provider: c.provider.name.clone(),
        cold_start_ms: None,
    });
    relay.set_attempts(attempts_json(&all));
    match waited {
        None => return,
        Some(Waited::Failed(e)) => {
            let ev = serde_json::json!({"error": {"message": e.message, "type": e.kind, "param": null, "code": e.code}});
            if sink
                .send(lumen_spin::relay::frame(None, &ev.to_string()))
                .await
                .is_err()
            {
                return;
            }
        }
        Some(Waited::Done { output, cold_ms }) => {
            remember(c, cold_ms);
            relay.set_cold_start(cold_ms.unwrap_or(0));
            for data in completion_chunks(&output) {
                let ev = Event {
                    event: None,
                    data,
                    comment_only: false,
                };
                if let Some(bytes) = relay.on_event(&ev) {
                    if sink.send(bytes).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let (tail, _): (Vec<u8>, UsageReport) =
        relay.finish(&c.model, &c.provider.name, upstream_ms, prompt_estimate);
    let _ = sink.send(tail).await;
    let _ = sink.close().await;
}
