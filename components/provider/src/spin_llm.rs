//! `spin-llm` providers: Spin's own LLM interface (`fermyon:spin/llm`), for Fermyon Cloud's
//! serverless GPUs. Only with the catalog's `spin_llm = true`; the component must list the models
//! in `ai_models` under real Spin. lumen-host runs no model and answers every call with a clear
//! "not available here" error, which the client gets as a 502 naming the provider.

use crate::call::Failure;
use crate::queue::{replay_stream, whole_reply};
use lumen_shared::contracts::{CallRequest, Candidate};
use lumen_shared::wire::dialect::{spin_llm, unsupported};
use lumen_shared::ApiError;
use lumen_spin::pipe::Out;
use lumen_spin::util::now_ms;
use serde_json::Value;
use spin_sdk::llm;

/// Runs the inference; the answer is an OpenAI `chat.completion`.
pub fn infer(c: &Candidate, call: &CallRequest) -> Result<Value, Failure> {
    let (prompt, p) =
        spin_llm::request(&call.body).map_err(|e| Failure::new(unsupported(e, &c.provider)))?;
    let params = llm::InferencingParams {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        ..llm::InferencingParams::default()
    };
    let r = llm::infer_with_options(
        llm::InferencingModel::Other(&c.upstream_model),
        &prompt,
        params,
    )
    .map_err(|e| {
        let why = match e {
            llm::Error::ModelNotSupported => "model not supported".to_string(),
            llm::Error::RuntimeError(m) | llm::Error::InvalidInput(m) => m,
        };
        Failure::new(ApiError::upstream(
            502,
            format!(
                "provider \"{}\" (Spin LLM interface) failed: {why}",
                c.provider.name
            ),
            true,
        ))
    })?;
    let now = now_ms();
    Ok(spin_llm::completion(
        &format!("chatcmpl-spin-{now}"),
        now / 1000,
        &c.upstream_model,
        &r.text,
        r.usage.prompt_token_count,
        r.usage.generated_token_count,
    ))
}

/// Answers with an inference result, whole or replayed as a stream.
pub async fn serve(
    out: Out,
    c: &Candidate,
    call: &CallRequest,
    output: Value,
    stream: bool,
    prompt_estimate: u64,
) {
    if stream {
        replay_stream(out, c, &output, call.include_usage, prompt_estimate, 0.0).await;
    } else {
        out.respond(whole_reply(c, output, None, prompt_estimate, 0.0))
            .await;
    }
}
