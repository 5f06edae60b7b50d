//! Spin's LLM interface (`fermyon:spin/llm@2.0.0`, Fermyon Cloud's serverless GPUs): a prompt and
//! a few sampling parameters in, text and token counts out. The chat is rendered as a plain
//! transcript; tools, JSON modes and anything else the interface cannot express are refused by
//! name.

use super::{max_tokens, only, plain_text, Untranslatable};
use serde_json::{json, Map, Value};

const SUPPORTED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
];

/// Sampling parameters for `infer`.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// `max_completion_tokens` / `max_tokens` (default 256).
    pub max_tokens: u32,
    /// `temperature` (default 0.8).
    pub temperature: f32,
    /// `top_p` (default 0.9).
    pub top_p: f32,
}

/// The prompt (`role: text` lines, then `assistant:`) and parameters for a chat body.
pub fn request(body: &Map<String, Value>) -> Result<(String, Params), Untranslatable> {
    only(body, SUPPORTED)?;
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(Untranslatable::value(
            "n",
            "greater than 1 is not supported",
        ));
    }
    let mut prompt = String::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        prompt.push_str(&format!("{role}: {}\n", plain_text(m.get("content"))));
    }
    prompt.push_str("assistant:");
    let f = |k: &str, d: f32| body.get(k).and_then(Value::as_f64).map_or(d, |x| x as f32);
    Ok((
        prompt,
        Params {
            max_tokens: max_tokens(body).map_or(256, |m| m.min(u64::from(u32::MAX)) as u32),
            temperature: f("temperature", 0.8),
            top_p: f("top_p", 0.9),
        },
    ))
}

/// The `chat.completion` for an `infer` result.
pub fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    prompt_tokens: u32,
    generated: u32,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_params_and_refusals() {
        let b = json!({"model": "llama2-chat", "max_tokens": 20, "temperature": 0.5,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
        let (prompt, p) = request(b.as_object().unwrap()).unwrap();
        assert_eq!(prompt, "system: be brief\nuser: hi\nassistant:");
        assert_eq!(
            p,
            Params {
                max_tokens: 20,
                temperature: 0.5,
                top_p: 0.9
            }
        );
        let b = json!({"model": "m", "messages": [], "tools": []});
        assert_eq!(request(b.as_object().unwrap()).unwrap_err().param, "tools");
        let c = completion("x", 1, "m", "hello", 5, 2);
        assert_eq!(c["usage"]["total_tokens"], 7);
    }
}
