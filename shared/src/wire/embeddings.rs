//! Validation of `POST /v1/embeddings` bodies (every 400 names its field).

use crate::error::ApiError;
use crate::wire::openai::{parse_json_object, ChatRequest};
use serde_json::Value;

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(param), "invalid_value")
}

/// Validates an embeddings body: `model`, `input` (a string, an array of strings, or token
/// arrays; never empty), `encoding_format` (`float` or `base64`), `dimensions` (≥ 1). The result
/// is a non-stream [`ChatRequest`] so it goes through the same admission and plan.
pub fn parse_embeddings_request(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let body = parse_json_object(bytes)?;
    let model = match body.get("model") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        None => {
            return Err(ApiError::invalid_request(
                "missing required parameter: 'model'",
                Some("model"),
                "missing_required_parameter",
            ))
        }
        Some(_) => return Err(bad("model", "'model' must be a non-empty string".into())),
    };
    let ok = match body.get("input") {
        None => {
            return Err(ApiError::invalid_request(
                "missing required parameter: 'input'",
                Some("input"),
                "missing_required_parameter",
            ))
        }
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => {
            !a.is_empty()
                && (a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
                    || a.iter().all(|x| x.as_u64().is_some())
                    || a.iter().all(|x| {
                        x.as_array().is_some_and(|t| {
                            !t.is_empty() && t.iter().all(|n| n.as_u64().is_some())
                        })
                    }))
        }
        Some(_) => false,
    };
    if !ok {
        return Err(bad(
            "input",
            "'input' must be a non-empty string, an array of non-empty strings, or token arrays"
                .into(),
        ));
    }
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(v) => {
            return Err(bad(
                "encoding_format",
                format!("'encoding_format' must be \"float\" or \"base64\", but got {v}"),
            ))
        }
    }
    match body.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|d| d >= 1) => {}
        Some(v) => {
            return Err(bad(
                "dimensions",
                format!("'dimensions' must be an integer of at least 1, but got {v}"),
            ))
        }
    }
    Ok(ChatRequest {
        model,
        stream: false,
        include_usage: false,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_names_bad_fields() {
        for ok in [
            r#"{"model":"e","input":"hi"}"#,
            r#"{"model":"e","input":["a","b"],"encoding_format":"base64","dimensions":8}"#,
            r#"{"model":"e","input":[1,2,3]}"#,
            r#"{"model":"e","input":[[1],[2,3]]}"#,
        ] {
            assert!(parse_embeddings_request(ok.as_bytes()).is_ok(), "{ok}");
        }
        for (body, param) in [
            (r#"{"input":"hi"}"#, "model"),
            (r#"{"model":"e"}"#, "input"),
            (r#"{"model":"e","input":[]}"#, "input"),
            (r#"{"model":"e","input":["a",1]}"#, "input"),
            (
                r#"{"model":"e","input":"a","encoding_format":"hex"}"#,
                "encoding_format",
            ),
            (r#"{"model":"e","input":"a","dimensions":0}"#, "dimensions"),
        ] {
            let e = parse_embeddings_request(body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
    }
}
