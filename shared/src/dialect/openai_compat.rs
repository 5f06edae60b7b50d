//! The OpenAI-compatible dialect (OpenAI, Azure OpenAI, Groq, Together, Fireworks, DeepSeek,
//! Mistral, xAI, OpenRouter, vLLM, TGI, SGLang, Ollama): the body passes through with `model`
//! set to the upstream id and, for streams, `stream_options.include_usage` forced on so every
//! stream is metered. Answers and chunks are already in the gateway's shape.

use serde_json::{Map, Value};

/// The client's body for one candidate. Everything but `model` and `stream_options` is untouched.
pub fn request(client: &Map<String, Value>, upstream_model: &str) -> Map<String, Value> {
    let mut body = client.clone();
    body.remove("lumen");
    body.insert("model".into(), Value::String(upstream_model.to_string()));
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let mut opts = match body.remove("stream_options") {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        opts.insert("include_usage".into(), Value::Bool(true));
        body.insert("stream_options".into(), Value::Object(opts));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn body_rewrites_model_and_asks_for_usage() {
        let client = map(json!({"model":"mini","messages":[],"seed":1,"x_future":{"a":[1]}}));
        let b = request(&client, "gpt-4o-mini");
        assert_eq!(b["model"], "gpt-4o-mini");
        assert_eq!(b["x_future"], json!({"a":[1]}));
        assert!(!b.contains_key("stream_options"));

        let client = map(
            json!({"model":"m","stream":true,"stream_options":{"include_usage":false,"other":3}}),
        );
        let b = request(&client, "u");
        assert_eq!(b["stream_options"], json!({"include_usage":true,"other":3}));
        let b = request(&map(json!({"model":"m","stream":true})), "u");
        assert_eq!(b["stream_options"], json!({"include_usage":true}));
    }
}
