//! The OpenAI-compatible dialect (OpenAI, Azure OpenAI, Groq, Together, Fireworks, DeepSeek,
//! Mistral, xAI, OpenRouter, vLLM, TGI, SGLang, Ollama): the body passes through with `model`
//! set to the upstream id and, for streams, `stream_options.include_usage` forced on so every
//! stream is metered. Answers and chunks are already in the gateway's shape.

use serde_json::{Map, Value};

/// The client's body for one candidate. Everything but `model` and `stream_options` is untouched.
pub fn request(client: &Map<String, Value>, upstream_model: &str) -> Map<String, Value> {
    let mut body = client.clone();
    body.remove("lumen");
    // Lumen's own fallback list (OpenRouter-style), not the upstream's.
    body.remove("models");
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

/// The client's view of an embeddings answer: with `encoding_format: "base64"` every float
/// vector becomes base64 of little-endian f32s (what OpenAI sends), whatever the upstream sent.
pub fn embeddings_answer(mut answer: Value, base64: bool) -> Value {
    use base64::Engine as _;
    if !base64 {
        return answer;
    }
    for item in answer
        .get_mut("data")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(v) = item.get("embedding").and_then(Value::as_array) {
            let bytes: Vec<u8> = v
                .iter()
                .flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                .collect();
            item["embedding"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    answer
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

    #[test]
    fn embeddings_base64_is_little_endian_f32() {
        let a = json!({"data": [{"embedding": [1.0, -2.0]}]});
        assert_eq!(embeddings_answer(a.clone(), false), a);
        // 1.0f32 = 00 00 80 3f, -2.0f32 = 00 00 00 c0.
        assert_eq!(
            embeddings_answer(a, true)["data"][0]["embedding"],
            "AACAPwAAAMA="
        );
    }
}
