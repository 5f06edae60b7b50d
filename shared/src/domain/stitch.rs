//! Stitching one client stream out of several upstream legs: what the client has been sent,
//! what a continuing leg may add, and when continuing is not safe.
//!
//! The provider feeds every OpenAI-shaped chunk of the current leg through [`Stitcher::push`] and
//! forwards what comes out. When a leg fails mid-stream it calls [`Stitcher::begin_leg`] with the
//! way the next leg continues:
//!
//! - [`Resume::Prefill`]: the next upstream is asked to continue the text already sent
//!   ([`Stitcher::prefill_message`] is the assistant message to append), so its text is new text.
//! - [`Resume::Regenerate`]: the next upstream answers from scratch; the part of its text that
//!   repeats what was already sent is suppressed. If it says something else instead, the stream
//!   cannot be continued truthfully and [`Stitcher::push`] answers [`Diverged`].
//!
//! Tool calls are held back until their leg finishes, so the client only ever sees complete tool
//! calls and a failure inside a tool-call delta restarts the whole turn on the next leg.
//! Usage chunks (no choices) are not forwarded: the provider sums every leg's usage and sends one
//! final usage block itself. Only single-choice streams (`n` = 1) can be stitched.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// How the next leg continues the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The upstream continues after the text already sent (assistant prefill).
    Prefill,
    /// The upstream answers from scratch; its repeat of the sent text is suppressed.
    Regenerate,
}

/// The continuing leg said something other than what the client already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverged {
    /// Bytes of the sent text the leg had repeated before it diverged.
    pub at: usize,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the fallback's answer differs from the text already sent after {} bytes",
            self.at
        )
    }
}

/// One tool call being assembled from its deltas.
#[derive(Debug, Default, Clone)]
struct ToolCall {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

/// The state of one client stream across legs.
#[derive(Debug, Default)]
pub struct Stitcher {
    /// `id` and `created` of the first leg: every forwarded chunk carries them.
    id: Option<Value>,
    created: Option<Value>,
    /// Whether anything has been forwarded (the first chunk carries the role).
    role_sent: bool,
    /// The assistant text the client has received.
    sent: String,
    /// While regenerating: bytes of `sent` the current leg has repeated so far.
    repeating: Option<usize>,
    /// Tool calls of the current leg, by index, held until the leg finishes.
    tools: BTreeMap<u64, ToolCall>,
    finish: Option<String>,
    legs: u32,
}

impl Stitcher {
    /// A stream with its first leg under way.
    pub fn new() -> Stitcher {
        Stitcher {
            legs: 1,
            ..Stitcher::default()
        }
    }

    /// The text the client has received so far.
    pub fn sent_text(&self) -> &str {
        &self.sent
    }

    /// The finish reason forwarded to the client, once the answer is complete.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish.as_deref()
    }

    /// How many legs this stream has used.
    pub fn legs(&self) -> u32 {
        self.legs
    }

    /// Whether the current leg is still repeating text the client already has.
    pub fn repeating(&self) -> bool {
        self.repeating.is_some()
    }

    /// Starts the next leg after the current one failed. Its partial tool calls are dropped:
    /// the next leg produces the turn's tool calls again, whole.
    pub fn begin_leg(&mut self, how: Resume) {
        self.tools.clear();
        self.legs += 1;
        self.repeating = match how {
            Resume::Regenerate if !self.sent.is_empty() => Some(0),
            _ => None,
        };
    }

    /// The assistant message that asks a prefill-capable upstream to continue, if any text has
    /// been sent.
    pub fn prefill_message(&self) -> Option<Value> {
        (!self.sent.is_empty()).then(|| json!({"role": "assistant", "content": self.sent}))
    }

    /// Takes one OpenAI chunk of the current leg; returns the chunks to forward (possibly none).
    pub fn push(&mut self, chunk: &Value) -> Result<Vec<Value>, Diverged> {
        let Some(obj) = chunk.as_object() else {
            return Ok(Vec::new());
        };
        if self.id.is_none() {
            self.id = obj.get("id").cloned();
            self.created = obj.get("created").cloned();
        }
        let Some(choice) = obj
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .and_then(Value::as_object)
        else {
            // A usage-only chunk, or one without choices: the provider handles usage itself.
            return Ok(Vec::new());
        };
        let mut delta = choice
            .get("delta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let finish = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);

        if self.role_sent {
            // Only the stream's first chunk names the role.
            delta.remove("role");
        }
        if let Some(Value::Array(calls)) = delta.remove("tool_calls") {
            for call in &calls {
                self.hold_tool_delta(call);
            }
        }
        // `null` content is how some servers say "no text in this chunk".
        if let Some(text) = delta.remove("content").as_ref().and_then(Value::as_str) {
            let fresh = self.fresh_text(text)?;
            if !fresh.is_empty() {
                self.sent.push_str(&fresh);
                delta.insert("content".into(), Value::String(fresh));
            }
        }

        let mut out = Vec::new();
        if let Some(reason) = finish {
            if let Some(at) = self.repeating {
                // The leg finished without repeating everything the client has: it said less.
                return Err(Diverged { at });
            }
            if !self.tools.is_empty() {
                out.push(self.chunk(obj, self.tool_delta(), None, choice));
                self.tools.clear();
            }
            if !delta.is_empty() {
                out.push(self.chunk(obj, delta, None, choice));
            }
            out.push(self.chunk(obj, Map::new(), Some(&reason), choice));
            self.finish = Some(reason);
        } else if !delta.is_empty() {
            out.push(self.chunk(obj, delta, None, choice));
        }
        self.role_sent |= !out.is_empty();
        Ok(out)
    }

    /// The last chunk of a stream that cannot be completed: `finish_reason: "error"`, never a
    /// normal finish. Held tool calls are dropped: they were never complete.
    pub fn error_chunk(&mut self) -> Value {
        self.tools.clear();
        self.finish = Some("error".into());
        let mut c = Map::new();
        if let Some(id) = &self.id {
            c.insert("id".into(), id.clone());
        }
        c.insert("object".into(), "chat.completion.chunk".into());
        if let Some(created) = &self.created {
            c.insert("created".into(), created.clone());
        }
        c.insert(
            "choices".into(),
            json!([{"index": 0, "delta": {}, "finish_reason": "error"}]),
        );
        Value::Object(c)
    }

    /// The part of `text` the client does not have yet.
    fn fresh_text(&mut self, text: &str) -> Result<String, Diverged> {
        let Some(done) = self.repeating else {
            return Ok(text.to_owned());
        };
        let rest = &self.sent.as_bytes()[done..];
        let overlap = rest.len().min(text.len());
        if text.as_bytes()[..overlap] != rest[..overlap] {
            let same = text
                .bytes()
                .zip(rest.iter())
                .take_while(|(a, b)| a == *b)
                .count();
            return Err(Diverged { at: done + same });
        }
        if overlap < rest.len() {
            self.repeating = Some(done + overlap);
            return Ok(String::new());
        }
        self.repeating = None;
        // `text[..overlap]` equals a whole UTF-8 string, so `overlap` is a char boundary.
        Ok(text.get(overlap..).unwrap_or_default().to_owned())
    }

    fn hold_tool_delta(&mut self, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let t = self.tools.entry(index).or_default();
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            t.id = Some(id.to_owned());
        }
        if let Some(kind) = call.get("type").and_then(Value::as_str) {
            t.kind = Some(kind.to_owned());
        }
        if let Some(f) = call.get("function") {
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                t.name.push_str(name);
            }
            if let Some(args) = f.get("arguments").and_then(Value::as_str) {
                t.arguments.push_str(args);
            }
        }
    }

    fn tool_delta(&self) -> Map<String, Value> {
        let calls: Vec<Value> = self
            .tools
            .iter()
            .enumerate()
            .map(|(i, (_, t))| {
                json!({
                    "index": i,
                    "id": t.id,
                    "type": t.kind.as_deref().unwrap_or("function"),
                    "function": {"name": t.name, "arguments": t.arguments},
                })
            })
            .collect();
        let mut d = Map::new();
        if !self.role_sent {
            d.insert("role".into(), "assistant".into());
        }
        d.insert("tool_calls".into(), Value::Array(calls));
        d
    }

    fn chunk(
        &self,
        like: &Map<String, Value>,
        delta: Map<String, Value>,
        finish: Option<&str>,
        choice: &Map<String, Value>,
    ) -> Value {
        let mut c = like.clone();
        c.remove("usage");
        if let Some(id) = &self.id {
            c.insert("id".into(), id.clone());
        }
        if let Some(created) = &self.created {
            c.insert("created".into(), created.clone());
        }
        let mut ch = Map::new();
        ch.insert("index".into(), 0.into());
        ch.insert("delta".into(), Value::Object(delta));
        if let Some(lp) = choice.get("logprobs").filter(|_| finish.is_none()) {
            ch.insert("logprobs".into(), lp.clone());
        }
        ch.insert(
            "finish_reason".into(),
            finish.map_or(Value::Null, |f| Value::String(f.into())),
        );
        c.insert("choices".into(), json!([ch]));
        Value::Object(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(id: &str, t: &str) -> Value {
        json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
    }

    fn finish(id: &str, why: &str) -> Value {
        json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": why}]})
    }

    /// The text the client sees in the forwarded chunks.
    fn seen(out: &[Value]) -> String {
        out.iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    fn feed(s: &mut Stitcher, chunks: &[Value]) -> Result<Vec<Value>, Diverged> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c)?);
        }
        Ok(out)
    }

    #[test]
    fn a_single_leg_passes_through_and_usage_chunks_stay_behind() {
        let mut s = Stitcher::new();
        let role = json!({"id": "a", "created": 7, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
        let usage = json!({"id": "a", "created": 7, "choices": [], "usage": {"prompt_tokens": 3}});
        let out = feed(
            &mut s,
            &[
                role,
                text("a", "Hel"),
                text("a", "lo"),
                finish("a", "stop"),
                usage,
            ],
        )
        .unwrap();
        assert_eq!(seen(&out), "Hello");
        assert_eq!(out[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(out.last().unwrap()["choices"][0]["finish_reason"], "stop");
        assert_eq!(s.finish_reason(), Some("stop"));
        assert!(out.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn regenerating_suppresses_the_repeated_prefix_even_split_differently() {
        let mut s = Stitcher::new();
        feed(&mut s, &[text("a", "The answer"), text("a", " is 4")]).unwrap();
        s.begin_leg(Resume::Regenerate);
        assert!(s.repeating());
        let role = json!({"id": "b", "created": 9, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]});
        let out = feed(
            &mut s,
            &[
                role,
                text("b", "The"),
                text("b", " answer is"),
                text("b", " 42, because"),
                text("b", " math."),
                finish("b", "stop"),
            ],
        )
        .unwrap();
        assert_eq!(seen(&out), "2, because math.");
        assert_eq!(s.sent_text(), "The answer is 42, because math.");
        // One stream: the first leg's id and created, no second role delta.
        assert!(out.iter().all(|c| c["id"] == "a" && c["created"] == 7));
        assert!(out
            .iter()
            .all(|c| c["choices"][0]["delta"].get("role").is_none()));
        assert_eq!(s.legs(), 2);
    }

    #[test]
    fn a_regenerated_answer_that_differs_is_refused() {
        let mut s = Stitcher::new();
        feed(&mut s, &[text("a", "Paris is")]).unwrap();
        s.begin_leg(Resume::Regenerate);
        let err = feed(&mut s, &[text("b", "Paris was")]).unwrap_err();
        assert_eq!(err, Diverged { at: 6 });
        assert_eq!(s.sent_text(), "Paris is");
    }

    #[test]
    fn a_regenerated_answer_that_stops_short_is_refused() {
        let mut s = Stitcher::new();
        feed(&mut s, &[text("a", "one two three")]).unwrap();
        s.begin_leg(Resume::Regenerate);
        let err = feed(&mut s, &[text("b", "one two"), finish("b", "stop")]).unwrap_err();
        assert_eq!(err, Diverged { at: 7 });
    }

    #[test]
    fn prefill_appends_without_suppression_and_offers_the_message() {
        let mut s = Stitcher::new();
        assert_eq!(s.prefill_message(), None);
        feed(&mut s, &[text("a", "Once upon")]).unwrap();
        s.begin_leg(Resume::Prefill);
        assert_eq!(
            s.prefill_message(),
            Some(json!({"role": "assistant", "content": "Once upon"}))
        );
        let out = feed(&mut s, &[text("b", " a time"), finish("b", "stop")]).unwrap();
        assert_eq!(seen(&out), " a time");
        assert_eq!(s.sent_text(), "Once upon a time");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let mut s = Stitcher::new();
        feed(&mut s, &[text("a", "héllo wö")]).unwrap();
        s.begin_leg(Resume::Regenerate);
        let out = feed(&mut s, &[text("b", "hé"), text("b", "llo wörld✓")]).unwrap();
        assert_eq!(seen(&out), "rld✓");
    }

    fn tool(id: &str, index: u64, call_id: Option<&str>, name: &str, args: &str) -> Value {
        let mut call = json!({"index": index, "function": {"arguments": args}});
        if let Some(cid) = call_id {
            call["id"] = cid.into();
            call["type"] = "function".into();
            call["function"]["name"] = name.into();
        }
        json!({"id": id, "created": 7, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]})
    }

    #[test]
    fn tool_calls_are_held_until_the_leg_finishes_and_sent_whole() {
        let mut s = Stitcher::new();
        let out = feed(
            &mut s,
            &[
                tool("a", 0, Some("call_1"), "get_weather", "{\"ci"),
                tool("a", 0, None, "", "ty\":\"Oslo\"}"),
                tool("a", 1, Some("call_2"), "get_time", "{}"),
            ],
        )
        .unwrap();
        assert!(out.is_empty(), "partial tool calls must not be forwarded");
        let out = feed(&mut s, &[finish("a", "tool_calls")]).unwrap();
        assert_eq!(out.len(), 2);
        let calls = &out[0]["choices"][0]["delta"]["tool_calls"];
        assert_eq!(
            calls,
            &json!([
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"index": 1, "id": "call_2", "type": "function",
                 "function": {"name": "get_time", "arguments": "{}"}},
            ])
        );
        assert_eq!(out[1]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn a_cut_inside_a_tool_call_restarts_the_turn() {
        let mut s = Stitcher::new();
        feed(
            &mut s,
            &[
                text("a", "Let me check."),
                tool("a", 0, Some("call_1"), "get_weather", "{\"ci"),
            ],
        )
        .unwrap();
        s.begin_leg(Resume::Regenerate);
        let out = feed(
            &mut s,
            &[
                text("b", "Let me check."),
                tool("b", 0, Some("call_9"), "get_weather", "{\"city\":\"Oslo\"}"),
                finish("b", "tool_calls"),
            ],
        )
        .unwrap();
        assert_eq!(seen(&out), "");
        let calls = out[0]["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(calls.len(), 1, "the first leg's partial call is gone");
        assert_eq!(calls[0]["id"], "call_9");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    }

    #[test]
    fn the_error_chunk_never_looks_like_a_normal_finish() {
        let mut s = Stitcher::new();
        feed(&mut s, &[text("a", "half an ans")]).unwrap();
        let c = s.error_chunk();
        assert_eq!(c["choices"][0]["finish_reason"], "error");
        assert_eq!(c["id"], "a");
        assert_eq!(s.finish_reason(), Some("error"));
    }
}
