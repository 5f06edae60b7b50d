//! What a chat request does after its client has the whole answer: fill the response cache
//! after a miss, and run its shadow call. Both need a little of the answer as it passes (the
//! relay hands each event to [`After::on_event`], the whole body to [`on_whole`], the settle
//! request to [`After::on_settled`]); a request that uses neither keeps nothing and does nothing.
//!
//! Spin runs no background tasks: this runs in the request's own instance, after the response
//! body is finished (the client has its answer and Spin has ended the response), before the
//! handler returns.

use crate::ctx::Ctx;
use crate::shadow::Job;
use lumen_shared::contracts::{Mark, Outcome, SettleRequest};
use lumen_shared::domain::cache::{self, Recorder, Stored, Use};
use lumen_shared::domain::compare::Answer;
use lumen_shared::store::usage::cost_of;
use lumen_shared::wire::sse::Event;
use lumen_spin::util::{elapsed_ms, now_ms};
use lumen_spin::{Reply, SpinKv};
use serde_json::Value;
use std::time::Instant;

/// How a request uses the response cache.
#[derive(Debug, Default)]
pub enum CacheUse {
    /// Not a chat completion: no `x-lumen-cache`.
    #[default]
    None,
    /// Not cached (`x-lumen-cache: bypass`).
    Bypass,
    /// Answered upstream; written after the answer if it completes.
    Miss {
        /// Tenant.
        tenant: String,
        /// Request hash.
        hash: String,
        /// TTL and caps.
        caps: Use,
        /// The streamed answer, as it passes.
        recorder: Recorder,
        /// The whole answer.
        whole: Option<Stored>,
    },
    /// Served from the cache.
    Hit {
        /// What the original answer cost.
        saved_nanos: i64,
    },
}

/// The after-answer work of one request.
#[derive(Debug, Default)]
pub struct After {
    /// The response cache.
    pub cache: CacheUse,
    /// The shadow call to make.
    pub shadow: Option<Job>,
    /// The answer's text and tool calls (kept only for a shadow comparison).
    pub answer: Answer,
    /// Arrival to the first content event, ms.
    pub first_content_ms: Option<f64>,
    /// `[DONE]` passed.
    pub done: bool,
    /// The settle request and arrival-to-settlement ms.
    pub settled: Option<(SettleRequest, f64)>,
    /// The entry of a cache hit, from admission to [`crate::cache::serve_hit`].
    pub hit: Option<Box<cache::CacheEntry>>,
}

impl After {
    /// `x-lumen-cache`.
    pub fn cache_header(&self) -> Option<&'static str> {
        match self.cache {
            CacheUse::None => None,
            CacheUse::Bypass => Some("bypass"),
            CacheUse::Miss { .. } => Some("miss"),
            CacheUse::Hit { .. } => Some("hit"),
        }
    }

    /// The cache part of the settlement.
    pub fn mark(&self) -> Mark {
        match self.cache {
            CacheUse::Miss { .. } => Mark {
                cache: "miss".into(),
                ..Mark::default()
            },
            CacheUse::Hit { saved_nanos } => Mark {
                cache: "hit".into(),
                cached_cost_nanos: saved_nanos,
                ..Mark::default()
            },
            _ => Mark::default(),
        }
    }

    fn watching(&self) -> bool {
        self.shadow.is_some() || matches!(self.cache, CacheUse::Miss { .. })
    }

    /// One streamed event on its way to the client.
    pub fn on_event(&mut self, started: Instant, ev: &Event) {
        if !self.watching() || ev.comment_only || ev.event.is_some() {
            return;
        }
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        if let CacheUse::Miss { recorder, .. } = &mut self.cache {
            recorder.on_data(data);
        }
        if self.shadow.is_some() {
            if let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) {
                let before = (self.answer.text.len(), self.answer.tool_calls.len());
                self.answer.push_chunk(&chunk);
                if self.first_content_ms.is_none()
                    && before != (self.answer.text.len(), self.answer.tool_calls.len())
                {
                    self.first_content_ms = Some(elapsed_ms(started));
                }
            }
        }
    }

    /// The settle request (the answer is complete but for its last bytes).
    pub fn on_settled(&mut self, started: Instant, req: &SettleRequest) {
        if self.watching() {
            self.settled = Some((req.clone(), elapsed_ms(started)));
        }
    }
}

/// A whole answer on its way to the client, parsed once: kept for the cache and the shadow.
/// Returns the `lumen.cache` status the answer is to carry ("miss"), which
/// [`crate::saved::finish_whole`] stamps in its own pass. Untouched (not even parsed) when
/// neither the cache nor a shadow is on.
pub fn on_whole(ctx: &Ctx, reply: &Reply) -> Option<&'static str> {
    let mut a = ctx.after.borrow_mut();
    if !a.watching() || !(200..300).contains(&reply.status) {
        return None;
    }
    a.done = true;
    let parsed = serde_json::from_slice::<Value>(&reply.body).ok();
    if a.shadow.is_some() {
        if let Some(v) = &parsed {
            a.answer = Answer::from_completion(v);
        }
        a.first_content_ms = Some(elapsed_ms(ctx.started));
    }
    if let CacheUse::Miss { whole, .. } = &mut a.cache {
        *whole = parsed.and_then(cache::stored_whole_value);
        return Some("miss");
    }
    None
}

/// Runs the after-answer work: the cache fill, then the shadow call.
pub fn finish(ctx: &Ctx) {
    let after = std::mem::take(&mut *ctx.after.borrow_mut());
    let Some((req, total_ms)) = after.settled else {
        return;
    };
    let complete = after.done && req.report.outcome == Outcome::Ok;
    if let CacheUse::Miss {
        tenant,
        hash,
        caps,
        recorder,
        whole,
    } = after.cache
    {
        let body = if req.stream {
            recorder.into_stream()
        } else {
            whole
        };
        if let (true, Some(body)) = (complete, body) {
            let now = now_ms();
            let entry = cache::CacheEntry {
                created_ms: now,
                expires_ms: now + caps.ttl_s * 1000,
                model: req.report.model.clone(),
                provider: req.report.provider.clone(),
                usage: req.report.usage,
                cost_nanos: cost_of(&req),
                body,
            };
            if let Ok(kv) = SpinKv::open() {
                if let Err(e) =
                    lumen_shared::store::cache::fill(&kv, &tenant, &hash, &entry, &caps, now)
                {
                    eprintln!("lumen: could not write the response cache: {e}");
                }
            }
        }
    }
    if let (Some(job), true) = (after.shadow, complete) {
        let primary = crate::shadow::Primary {
            answer: after.answer,
            ttft_ms: after.first_content_ms.unwrap_or(total_ms),
            total_ms,
            cost_nanos: cost_of(&req),
            model: req.report.model.clone(),
            provider: req.report.provider.clone(),
        };
        crate::shadow::run(ctx, job, primary);
    }
}
