//! The two SSE relays as pure state machines (no Spin imports), so they are unit-tested natively:
//! [`UpstreamRelay`] (provider: upstream events → events for auth, plus the internal usage event)
//! and [`ClientRelay`] (auth: provider events → client events, stripping the usage event).
//!
//! Both take whole events from [`lumen_shared::wire::sse::Parser`] and return the bytes to write for
//! each one, so every event is written as soon as it is complete.

use lumen_shared::contracts::{Outcome, UsageReport, USAGE_EVENT};
use lumen_shared::domain::catalog::Price;
use lumen_shared::domain::pricing::lumen_object;
use lumen_shared::wire::openai::Usage;
use lumen_shared::wire::sse::{self, Event, Parser};
use serde_json::{Map, Value};

/// Written when a stream ends without `data: [DONE]`.
pub const STREAM_CUT_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"the upstream stream ended before completion\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"upstream_stream_cut\"}}\n\n";

/// A keep-alive comment.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Frames an event; multi-line data becomes one `data:` line per line.
pub fn frame(event: Option<&str>, data: &str) -> Vec<u8> {
    if event.is_none() && !data.contains('\n') {
        return sse::data_event(data);
    }
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(name) = event {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out.into_bytes()
}

/// True when a chunk carries generated content (text, a refusal or tool-call deltas).
pub fn is_content_chunk(chunk: &Map<String, Value>) -> bool {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return false;
    };
    choices.iter().any(|c| {
        let Some(delta) = c.get("delta") else {
            return false;
        };
        let text = |k: &str| {
            delta
                .get(k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        text("content")
            || text("refusal")
            || delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    })
}

/// What an event is, for the relays.
enum Kind<'a> {
    Comment,
    Named(&'a str),
    Done,
    Json(Map<String, Value>),
    Other,
}

fn classify(ev: &Event) -> Kind<'_> {
    if ev.comment_only {
        return Kind::Comment;
    }
    if let Some(name) = ev.event.as_deref().filter(|n| *n != "message") {
        return Kind::Named(name);
    }
    let data = ev.data.trim();
    if data == "[DONE]" {
        return Kind::Done;
    }
    if data.starts_with('{') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(data) {
            return Kind::Json(map);
        }
    }
    Kind::Other
}

/// Who served a stream and at what price: the `lumen` cost object of its final chunk.
#[derive(Debug, Clone)]
pub struct CostTag {
    /// Catalog prices of the candidate that served.
    pub price: Price,
    /// Catalog model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Observed cold start, ms, shown as `lumen.cold_start_ms` when set.
    pub cold_start_ms: Option<u64>,
}

/// True for the chunks at the end of a stream: a finish reason, or no choices (the usage chunk).
fn is_tail_chunk(chunk: &Map<String, Value>) -> bool {
    match chunk.get("choices").and_then(Value::as_array) {
        Some(cs) if cs.is_empty() => true,
        Some(cs) => cs
            .iter()
            .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null())),
        None => false,
    }
}

/// Provider side: relays upstream events, remembers usage, counts content chunks, and drops the
/// usage chunk when the client did not ask for one. With a [`CostTag`], the final chunk before
/// `[DONE]` carries the `lumen` cost object: tail chunks (finish reason, usage) are held until
/// the next event shows whether they are the last one.
#[derive(Debug, Default)]
pub struct UpstreamRelay {
    include_usage: bool,
    usage: Option<Usage>,
    done: bool,
    content_chunks: u64,
    cost: Option<CostTag>,
    held: Option<String>,
    attempts: Option<Value>,
}

impl UpstreamRelay {
    /// A relay for a client that did (`include_usage`) or did not ask for the usage chunk.
    pub fn new(include_usage: bool) -> Self {
        Self {
            include_usage,
            ..Self::default()
        }
    }

    /// Puts the `lumen` cost object on the final chunk.
    pub fn with_cost(mut self, tag: CostTag) -> Self {
        self.cost = Some(tag);
        self
    }

    /// Adds `cold_start_ms` to the `lumen` object of the final chunk.
    pub fn set_cold_start(&mut self, ms: u64) {
        if let Some(tag) = self.cost.as_mut() {
            tag.cold_start_ms = Some(ms);
        }
    }

    /// Adds `attempts` (the tries before and of this answer) to the `lumen` object of the final
    /// chunk.
    pub fn set_attempts(&mut self, attempts: Value) {
        self.attempts = Some(attempts);
    }

    /// The bytes to forward for one upstream event, if any.
    pub fn on_event(&mut self, ev: &Event) -> Option<Vec<u8>> {
        if self.cost.is_none() {
            return self.forward(ev);
        }
        let (tail, done, json) = match classify(ev) {
            Kind::Json(c) => (is_tail_chunk(&c), false, true),
            Kind::Done => (false, true, false),
            _ => (false, false, false),
        };
        let out = self.forward(ev);
        if !json && !done {
            // Keep-alives and named events pass without releasing a held tail chunk.
            return out;
        }
        let mut bytes = Vec::new();
        if done {
            let last = self.held.take().unwrap_or_else(|| {
                r#"{"object":"chat.completion.chunk","choices":[]}"#.to_string()
            });
            bytes.extend(self.tagged(&last));
            bytes.extend(out.unwrap_or_default());
            return Some(bytes);
        }
        let out = out?;
        if tail {
            // Keep the data of the framed event; the previous tail chunk was not the last.
            let data = Parser::default()
                .push(&out)
                .into_iter()
                .next()
                .map(|e| e.data)
                .unwrap_or_default();
            if let Some(prev) = self.held.replace(data) {
                bytes.extend(frame(None, &prev));
            }
            return (!bytes.is_empty()).then_some(bytes);
        }
        if let Some(prev) = self.held.take() {
            bytes.extend(frame(None, &prev));
        }
        bytes.extend(out);
        Some(bytes)
    }

    /// `data` with the `lumen` object added, framed.
    fn tagged(&self, data: &str) -> Vec<u8> {
        let Some(tag) = &self.cost else {
            return frame(None, data);
        };
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(data) else {
            return frame(None, data);
        };
        let usage = self.usage.unwrap_or_default();
        let mut lumen = lumen_object(&usage, &tag.price, &tag.model, &tag.provider);
        if let Some(ms) = tag.cold_start_ms {
            lumen["cold_start_ms"] = ms.into();
        }
        if let Some(a) = &self.attempts {
            lumen["attempts"] = a.clone();
        }
        chunk.insert("lumen".into(), lumen);
        sse::data_event(&Value::Object(chunk).to_string())
    }

    fn forward(&mut self, ev: &Event) -> Option<Vec<u8>> {
        match classify(ev) {
            Kind::Comment => Some(KEEP_ALIVE.to_vec()),
            // Never let an upstream forge the internal usage event.
            Kind::Named(name) if name == USAGE_EVENT => None,
            Kind::Named(name) => Some(frame(Some(name), &ev.data)),
            Kind::Done => {
                self.done = true;
                Some(sse::data_event("[DONE]"))
            }
            Kind::Json(mut chunk) => {
                if let Some(u) = chunk
                    .get("usage")
                    .filter(|u| !u.is_null())
                    .and_then(Usage::from_openai)
                {
                    self.usage = Some(u);
                }
                if is_content_chunk(&chunk) {
                    self.content_chunks += 1;
                }
                if self.include_usage {
                    return Some(frame(None, &ev.data));
                }
                if chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    return None;
                }
                if chunk.contains_key("usage") {
                    chunk.remove("usage");
                    return Some(sse::data_event(&Value::Object(chunk).to_string()));
                }
                Some(frame(None, &ev.data))
            }
            Kind::Other if ev.data.trim().is_empty() => None,
            Kind::Other => Some(frame(None, &ev.data)),
        }
    }

    /// Whether `[DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Content chunks seen.
    pub fn content_chunks(&self) -> u64 {
        self.content_chunks
    }

    /// The end of the stream: the bytes still to write (the cut error event when `[DONE]` never
    /// came, then the internal usage event) and the report they carry.
    pub fn finish(
        &self,
        model: &str,
        provider: &str,
        upstream_ms: f64,
        prompt_estimate: u64,
    ) -> (Vec<u8>, UsageReport) {
        let mut tail = Vec::new();
        if let Some(held) = &self.held {
            // Cut after a finish chunk: forward it untagged (the answer did not complete).
            tail.extend(frame(None, held));
        }
        let outcome = if self.done {
            Outcome::Ok
        } else {
            tail.extend_from_slice(STREAM_CUT_EVENT);
            Outcome::UpstreamError
        };
        let (usage, estimated) = match self.usage {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt_tokens: prompt_estimate,
                    completion_tokens: self.content_chunks,
                    cached_tokens: 0,
                    ..Usage::default()
                },
                true,
            ),
        };
        let report = UsageReport {
            model: model.to_string(),
            provider: provider.to_string(),
            usage,
            estimated,
            outcome,
            upstream_ms,
            legs: Vec::new(),
        };
        let json = serde_json::to_string(&report).unwrap_or_default();
        tail.extend_from_slice(&sse::named_event(USAGE_EVENT, &json));
        (tail, report)
    }
}

/// One event for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The bytes to write.
    pub bytes: Vec<u8>,
    /// Whether it carries generated content (counted once written).
    pub content: bool,
}

/// Auth side: forwards provider events to the client, takes the internal usage event out.
#[derive(Debug, Default)]
pub struct ClientRelay {
    report: Option<UsageReport>,
    done: bool,
    delivered_chunks: u64,
}

impl ClientRelay {
    /// The event to write for one provider event, if any.
    pub fn on_event(&mut self, ev: &Event) -> Option<Outgoing> {
        match classify(ev) {
            Kind::Named(name) if name == USAGE_EVENT => {
                self.report = serde_json::from_str::<UsageReport>(&ev.data).ok();
                None
            }
            Kind::Comment => Some(Outgoing {
                bytes: KEEP_ALIVE.to_vec(),
                content: false,
            }),
            Kind::Named(name) => Some(Outgoing {
                bytes: frame(Some(name), &ev.data),
                content: false,
            }),
            Kind::Done => {
                self.done = true;
                Some(Outgoing {
                    bytes: sse::data_event("[DONE]"),
                    content: false,
                })
            }
            Kind::Json(chunk) => Some(Outgoing {
                bytes: frame(None, &ev.data),
                content: is_content_chunk(&chunk),
            }),
            Kind::Other if ev.data.trim().is_empty() => None,
            Kind::Other => Some(Outgoing {
                bytes: frame(None, &ev.data),
                content: false,
            }),
        }
    }

    /// Records that an event (with `content` from its [`Outgoing`]) reached the client.
    pub fn delivered(&mut self, content: bool) {
        if content {
            self.delivered_chunks += 1;
        }
    }

    /// Records that `chunks` content events written together reached the client.
    pub fn delivered_content(&mut self, chunks: u64) {
        self.delivered_chunks += chunks;
    }

    /// Content chunks that reached the client.
    pub fn delivered_chunks(&self) -> u64 {
        self.delivered_chunks
    }

    /// Bytes to write to the client when the provider's stream ended without its usage event and
    /// without `[DONE]` (the provider died mid-stream).
    pub fn cut_tail(&self) -> Option<&'static [u8]> {
        (self.report.is_none() && !self.done).then_some(STREAM_CUT_EVENT)
    }

    /// The report to settle. `fallback` is (model, provider, upstream_ms) for when the provider
    /// never sent its usage event.
    pub fn report(
        self,
        disconnected: bool,
        fallback: (&str, &str, f64),
        prompt_estimate: u64,
    ) -> UsageReport {
        let estimate = Usage {
            prompt_tokens: prompt_estimate,
            completion_tokens: self.delivered_chunks,
            cached_tokens: 0,
            ..Usage::default()
        };
        let (model, provider, upstream_ms) = fallback;
        let base = self.report.unwrap_or_else(|| UsageReport {
            model: model.to_string(),
            provider: provider.to_string(),
            usage: estimate,
            estimated: true,
            outcome: Outcome::UpstreamError,
            upstream_ms,
            legs: Vec::new(),
        });
        if disconnected {
            UsageReport {
                usage: estimate,
                estimated: true,
                outcome: Outcome::ClientDisconnected,
                legs: Vec::new(),
                ..base
            }
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_shared::wire::sse::Parser;

    const ROLE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
    const TOK: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi "}}],"usage":null}"#;
    const FIN: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
    const USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;

    fn upstream_bytes(done: bool) -> Vec<u8> {
        let mut s = String::new();
        for d in [ROLE, TOK, TOK, FIN, USAGE] {
            s.push_str(&format!("data: {d}\n\n"));
        }
        s.push_str(": ping\n\n");
        if done {
            s.push_str("data: [DONE]\n\n");
        }
        s.into_bytes()
    }

    fn run_upstream(include_usage: bool, done: bool) -> (Vec<u8>, UsageReport, Vec<Vec<u8>>) {
        let mut relay = UpstreamRelay::new(include_usage);
        let mut parser = Parser::default();
        let mut out = Vec::new();
        let mut writes = Vec::new();
        // Feed byte by byte: events must come out whole, one write each.
        for b in upstream_bytes(done) {
            for ev in parser.push(&[b]) {
                if let Some(bytes) = relay.on_event(&ev) {
                    out.extend_from_slice(&bytes);
                    writes.push(bytes);
                }
            }
        }
        let (tail, report) = relay.finish("gpt-4o-mini", "openai", 12.5, 40);
        out.extend_from_slice(&tail);
        (out, report, writes)
    }

    fn data_events(bytes: &[u8]) -> Vec<Event> {
        Parser::default().push(bytes)
    }

    /// The `data:` of unnamed, non-comment events: what an OpenAI client reads.
    fn plain_data(evs: &[Event]) -> Vec<&str> {
        evs.iter()
            .filter(|e| !e.comment_only && e.event.is_none())
            .map(|e| e.data.as_str())
            .collect()
    }

    fn tag() -> CostTag {
        CostTag {
            price: Price {
                input: 1.0,
                output: 2.0,
                cached_input: None,
                cache_write: None,
                reasoning: None,
                source: "s".into(),
                as_of: "d".into(),
            },
            model: "m".into(),
            provider: "p".into(),
            cold_start_ms: None,
        }
    }

    fn run_tagged(include_usage: bool) -> Vec<String> {
        let mut relay = UpstreamRelay::new(include_usage).with_cost(tag());
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for b in upstream_bytes(true) {
            for ev in parser.push(&[b]) {
                out.extend(relay.on_event(&ev).unwrap_or_default());
            }
        }
        plain_data(&data_events(&out))
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn final_chunk_carries_the_cost() {
        // 9 prompt × 1 + 2 completion × 2 = 13 per 1e6 dollars.
        let want = serde_json::json!({"cost": 13e-6, "cost_per_1k": 0.001181818, "currency": "USD", "model": "m", "provider": "p"});
        let datas = run_tagged(true);
        assert_eq!(datas.len(), 6, "{datas:?}");
        assert_eq!(&datas[..3], &[ROLE, TOK, TOK]);
        assert_eq!(
            datas[3], FIN,
            "a tail chunk that is not the last is forwarded as it was"
        );
        let last: Value = serde_json::from_str(&datas[4]).unwrap();
        assert_eq!(last["usage"]["prompt_tokens"], 9);
        assert_eq!(last["lumen"], want);
        assert_eq!(datas[5], "[DONE]");

        // Without include_usage the usage chunk is dropped: the finish chunk is the last one.
        let datas = run_tagged(false);
        assert_eq!(datas.len(), 5, "{datas:?}");
        let last: Value = serde_json::from_str(&datas[3]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["lumen"], want);
        assert!(last.get("usage").is_none());
    }

    #[test]
    fn upstream_with_usage_forwards_everything() {
        let (out, report, writes) = run_upstream(true, true);
        let evs = data_events(&out);
        let datas = plain_data(&evs);
        assert_eq!(datas, vec![ROLE, TOK, TOK, FIN, USAGE, "[DONE]"]);
        assert_eq!(writes.len(), 7, "one write per event, keep-alive included");
        assert_eq!(
            report.usage,
            Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                cached_tokens: 0,
                ..Usage::default()
            }
        );
        assert!(!report.estimated);
        assert_eq!(report.outcome, Outcome::Ok);
        let last = evs.last().unwrap();
        assert_eq!(last.event.as_deref(), Some(USAGE_EVENT));
        assert_eq!(
            serde_json::from_str::<UsageReport>(&last.data).unwrap(),
            report
        );
    }

    #[test]
    fn upstream_without_usage_strips_it() {
        let (out, report, _) = run_upstream(false, true);
        let evs = data_events(&out);
        let datas = plain_data(&evs);
        assert_eq!(datas.len(), 5, "{datas:?}");
        assert!(datas.iter().all(|d| !d.contains("usage")), "{datas:?}");
        assert_eq!(
            datas[0], ROLE,
            "untouched chunks are forwarded byte for byte"
        );
        assert_eq!(
            report.usage.prompt_tokens, 9,
            "usage is still recorded for metering"
        );
    }

    #[test]
    fn cut_upstream_gets_an_error_event_and_estimates() {
        let mut relay = UpstreamRelay::new(false);
        let mut parser = Parser::default();
        for ev in parser.push(
            format!(
                "data: {ROLE}\n\ndata: {TOK}\n\ndata: {TOK}\n\ndata: {TOK}\n\ndata: {{\"partial"
            )
            .as_bytes(),
        ) {
            relay.on_event(&ev);
        }
        let (tail, report) = relay.finish("m", "p", 1.0, 40);
        assert!(tail.starts_with(STREAM_CUT_EVENT));
        assert_eq!(report.outcome, Outcome::UpstreamError);
        assert!(report.estimated);
        assert_eq!(
            report.usage,
            Usage {
                prompt_tokens: 40,
                completion_tokens: 3,
                cached_tokens: 0,
                ..Usage::default()
            }
        );
        let err: Value = serde_json::from_str(&data_events(STREAM_CUT_EVENT)[0].data).unwrap();
        assert_eq!(err["error"]["code"], "upstream_stream_cut");
    }

    #[test]
    fn upstream_cannot_forge_the_usage_event() {
        let mut relay = UpstreamRelay::new(true);
        let evs = Parser::default().push(
            format!("event: {USAGE_EVENT}\ndata: {{}}\n\nevent: ping\ndata: a\ndata: b\n\n")
                .as_bytes(),
        );
        assert_eq!(relay.on_event(&evs[0]), None);
        assert_eq!(
            relay.on_event(&evs[1]).unwrap(),
            b"event: ping\ndata: a\ndata: b\n\n".to_vec()
        );
    }

    #[test]
    fn client_relay_strips_usage_event_and_counts() {
        let (provider_out, report, _) = run_upstream(true, true);
        let mut relay = ClientRelay::default();
        let mut client = Vec::new();
        for ev in Parser::default().push(&provider_out) {
            if let Some(o) = relay.on_event(&ev) {
                client.extend_from_slice(&o.bytes);
                relay.delivered(o.content);
            }
        }
        assert!(!String::from_utf8_lossy(&client).contains(USAGE_EVENT));
        assert!(client.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(relay.delivered_chunks(), 2);
        assert_eq!(relay.cut_tail(), None);
        assert_eq!(relay.report(false, ("x", "y", 0.0), 1), report);
    }

    #[test]
    fn client_relay_disconnect_and_missing_report() {
        let mut relay = ClientRelay::default();
        for ev in Parser::default().push(format!("data: {ROLE}\n\ndata: {TOK}\n\n").as_bytes()) {
            let o = relay.on_event(&ev).unwrap();
            relay.delivered(o.content);
        }
        assert_eq!(relay.cut_tail(), Some(STREAM_CUT_EVENT));
        let r = relay.report(true, ("m", "p", 3.0), 17);
        assert_eq!(
            (
                r.outcome,
                r.estimated,
                r.usage.prompt_tokens,
                r.usage.completion_tokens
            ),
            (Outcome::ClientDisconnected, true, 17, 1)
        );
        assert_eq!(
            (r.model.as_str(), r.provider.as_str(), r.upstream_ms),
            ("m", "p", 3.0)
        );

        let r = ClientRelay::default().report(false, ("m", "p", 3.0), 17);
        assert_eq!((r.outcome, r.estimated), (Outcome::UpstreamError, true));
    }

    #[test]
    fn frames_multiline_data() {
        assert_eq!(frame(None, "a\nb"), b"data: a\ndata: b\n\n".to_vec());
        assert_eq!(frame(None, "{}"), b"data: {}\n\n".to_vec());
        assert_eq!(frame(Some("e"), "x"), b"event: e\ndata: x\n\n".to_vec());
    }
}
