//! Queue-style GPU serverless backends (RunPod-like serverless endpoints in front of vLLM):
//! submit a job (`POST {base}/run` with `{"input": <OpenAI chat body>}`), then poll
//! `GET {base}/status/{id}` until it leaves the queue. A scaled-to-zero worker makes the first job
//! wait for a cold start; the provider keeps the client's stream alive with SSE comments meanwhile,
//! enforces the provider's first-token deadline and records the observed cold start.
//! The finished job's `output` is an OpenAI `chat.completion`; for streams it is replayed as chunks.

use super::{chunk, DONE};
use serde_json::{json, Map, Value};

/// What a status poll said.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// `IN_QUEUE`: no worker has it yet (a cold start is under way).
    Queued,
    /// `IN_PROGRESS`: a worker runs it.
    Running,
    /// `COMPLETED` with its output (a `chat.completion`).
    Done(Value),
    /// `FAILED`, `CANCELLED`, `TIMED_OUT` or an unknown status, with the reason.
    Failed(String),
}

/// The job input: the client's body for the upstream model, never streamed (the queue answers
/// whole; streams are replayed from the output).
pub fn submit_body(client: &Map<String, Value>, upstream_model: &str) -> Map<String, Value> {
    let mut input = client.clone();
    input.remove("lumen");
    input.remove("stream");
    input.remove("stream_options");
    input.insert("model".into(), upstream_model.into());
    let mut body = Map::new();
    body.insert("input".into(), Value::Object(input));
    body
}

/// The job id of a submit answer.
pub fn job_id(answer: &Value) -> Option<&str> {
    answer
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Reads a status answer.
pub fn job_state(answer: &Value) -> JobState {
    match answer.get("status").and_then(Value::as_str).unwrap_or("") {
        "IN_QUEUE" => JobState::Queued,
        "IN_PROGRESS" => JobState::Running,
        "COMPLETED" => match answer.get("output") {
            Some(o) if o.is_object() => JobState::Done(o.clone()),
            _ => JobState::Failed("the job completed without an output".into()),
        },
        other => JobState::Failed(answer.get("error").and_then(Value::as_str).map_or_else(
            || format!("the job ended with status {other:?}"),
            str::to_string,
        )),
    }
}

/// A whole `chat.completion` as stream chunk data: role, content, tool calls, finish, usage,
/// `[DONE]`.
pub fn completion_chunks(c: &Value) -> Vec<String> {
    let id = c["id"].as_str().unwrap_or("chatcmpl-queue");
    let created = c["created"].as_u64().unwrap_or(0);
    let model = c["model"].as_str().unwrap_or("");
    let mut out = Vec::new();
    for (i, choice) in c["choices"].as_array().into_iter().flatten().enumerate() {
        let index = choice["index"].as_u64().unwrap_or(i as u64);
        let msg = &choice["message"];
        let one = |delta: Value, finish: Value| {
            chunk(
                id,
                created,
                model,
                json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]),
                None,
            )
        };
        out.push(one(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
            out.push(one(json!({"content": t}), Value::Null));
        }
        for (n, tc) in msg["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mut tc = tc.clone();
            tc["index"] = n.into();
            out.push(one(json!({"tool_calls": [tc]}), Value::Null));
        }
        out.push(one(json!({}), choice["finish_reason"].clone()));
    }
    if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
        out.push(chunk(id, created, model, json!([]), Some(u.clone())));
    }
    out.push(DONE.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_status_and_replay() {
        let client = json!({"model": "llama", "stream": true, "stream_options": {"include_usage": true}, "messages": []});
        let b = submit_body(client.as_object().unwrap(), "meta-llama/x");
        assert_eq!(
            Value::Object(b),
            json!({"input": {"model": "meta-llama/x", "messages": []}})
        );
        assert_eq!(
            job_id(&json!({"id": "job-1", "status": "IN_QUEUE"})),
            Some("job-1")
        );
        assert_eq!(job_state(&json!({"status": "IN_QUEUE"})), JobState::Queued);
        assert_eq!(
            job_state(&json!({"status": "IN_PROGRESS"})),
            JobState::Running
        );
        assert_eq!(
            job_state(&json!({"status": "FAILED", "error": "oom"})),
            JobState::Failed("oom".into())
        );
        assert_eq!(
            job_state(&json!({"status": "COMPLETED"})),
            JobState::Failed("the job completed without an output".into())
        );
        let done = json!({"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        let JobState::Done(out) = job_state(&json!({"status": "COMPLETED", "output": done})) else {
            panic!()
        };
        let chunks = completion_chunks(&out);
        assert_eq!(chunks.len(), 5);
        let parsed: Vec<Value> = chunks[..4]
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        assert_eq!(parsed[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(parsed[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(parsed[3]["usage"]["prompt_tokens"], 3);
        assert_eq!(chunks[4], DONE);
    }
}
