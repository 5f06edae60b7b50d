//! End-to-end: one OpenAI-style request reaches every wire dialect (Anthropic, Gemini,
//! OpenAI-compatible, a self-hosted open model, Azure) through the compiled components, streamed
//! and not, tools included; usage and the `lumen` cost object are right on every path.

mod common;

use common::*;
use lumen_shared::domain::catalog::Catalog;
use lumen_shared::domain::pricing::{cost_header, cost_nanos, lumen_object};
use lumen_shared::wire::openai::Usage;
use lumen_tests::mock::{self, TOOL_ARGUMENTS};
use lumen_tests::mock_dialects::{self, anthropic_prompt_tokens, gemini_prompt_tokens};
use serde_json::{json, Value};

/// (model, provider, upstream path the mock must see).
const MODELS: &[(&str, &str, &str)] = &[
    ("claude-3-5-haiku", "anthropic", "/v1/messages"),
    (
        "gemini-2.0-flash",
        "gemini",
        "/v1beta/models/gemini-2.0-flash:generateContent",
    ),
    ("gpt-4o-mini", "openai", "/v1/chat/completions"),
    ("llama-3.1-8b-instruct", "vllm", "/v1/chat/completions"),
];

fn catalog() -> Catalog {
    Catalog::from_toml(include_str!("../../config/catalog.toml"), "catalog").unwrap()
}

/// The usage the mock reports for the request it recorded, in OpenAI terms.
fn expected_usage(
    provider: &str,
    upstream: &Value,
    completion: u64,
    cached: u64,
    write: u64,
) -> Usage {
    let prompt = match provider {
        "anthropic" => anthropic_prompt_tokens(upstream) + cached + write,
        "gemini" => gemini_prompt_tokens(upstream),
        _ => mock::prompt_tokens(upstream),
    };
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
        cache_write_tokens: write,
        reasoning_tokens: 0,
    }
}

/// Compares `lumen` objects: strings exactly, numbers to 1e-12 relative (JSON float round trips).
fn assert_lumen(got: &Value, want: &Value, what: &str) {
    for k in ["model", "provider", "currency"] {
        assert_eq!(got[k], want[k], "{what}: lumen.{k} in {got}");
    }
    for k in ["cost", "cost_per_1k"] {
        let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
        assert!(
            (g - w).abs() <= w.abs() * 1e-12,
            "{what}: lumen.{k} {g} != {w}"
        );
    }
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// What a stream delivered: text, tool calls (id, name, arguments) by index, finish reason, the
/// usage chunk and the `lumen` object of the last chunk.
struct Collected {
    text: String,
    calls: Vec<(String, String, String)>,
    finish: String,
    usage: Option<Value>,
    lumen: Value,
}

fn collect(s: &Streamed) -> Collected {
    let data = s.data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut c = Collected {
        text: String::new(),
        calls: Vec::new(),
        finish: String::new(),
        usage: None,
        lumen: Value::Null,
    };
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk", "{ch}");
        for choice in ch["choices"].as_array().unwrap() {
            let d = &choice["delta"];
            c.text.push_str(d["content"].as_str().unwrap_or(""));
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if c.calls.len() <= i {
                    c.calls.resize(i + 1, Default::default());
                }
                let e = &mut c.calls[i];
                e.0.push_str(tc["id"].as_str().unwrap_or(""));
                e.1.push_str(tc["function"]["name"].as_str().unwrap_or(""));
                e.2.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                c.finish = f.to_string();
            }
        }
        if !ch["usage"].is_null() && ch.get("usage").is_some() {
            c.usage = Some(ch["usage"].clone());
        }
    }
    let last = chunks.last().unwrap();
    c.lumen = last["lumen"].clone();
    for ch in &chunks[..chunks.len() - 1] {
        assert!(
            ch.get("lumen").is_none(),
            "only the final chunk carries the cost: {ch}"
        );
    }
    c
}

#[tokio::test]
async fn every_dialect_answers_non_stream_with_usage_and_cost() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let cat = catalog();
    let mut total_nanos = 0;
    for (model, provider, path) in MODELS {
        gw.mock.clear_requests();
        let r = gw
            .chat(&key, chat_body(model, "Say hi [mock tokens=3]"))
            .await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["object"], "chat.completion", "{model}");
        assert_eq!(
            v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ",
            "{model}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{model}");
        let up = gw.mock.last_request().unwrap();
        assert_eq!(up.path.split('?').next(), Some(*path), "{model}");
        match *provider {
            "anthropic" => assert_eq!(up.header("x-api-key"), Some(UPSTREAM_KEY)),
            "gemini" => assert_eq!(up.header("x-goog-api-key"), Some(UPSTREAM_KEY)),
            _ => assert_eq!(
                up.header("authorization"),
                Some(format!("Bearer {UPSTREAM_KEY}").as_str())
            ),
        }
        let want = expected_usage(provider, up.body.as_ref().unwrap(), 3, 0, 0);
        assert_eq!(Usage::from_openai(&v["usage"]), Some(want), "{model}");
        let price = &cat.models[*model].price;
        assert_lumen(
            &v["lumen"],
            &lumen_object(&want, price, model, provider),
            model,
        );
        assert_eq!(
            r.header("x-lumen-cost"),
            Some(cost_header(&want, price).as_str()),
            "{model}"
        );
        assert_eq!(r.header("x-lumen-provider"), Some(*provider));
        total_nanos += cost_nanos(&want, price);
    }
    // The meter priced each request the same way.
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 4).await;
    assert_eq!(u["total"]["requests"], 4);
    assert!(
        (u["total"]["cost_usd"].as_f64().unwrap() - total_nanos as f64 / 1e9).abs() < 1e-12,
        "{u}"
    );
}

#[tokio::test]
async fn every_dialect_streams_with_usage_and_cost_on_the_final_chunk() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let cat = catalog();
    for (model, provider, _) in MODELS {
        for include_usage in [true, false] {
            gw.mock.clear_requests();
            let mut body = chat_body(model, "Say hi [mock tokens=4]");
            body["stream"] = json!(true);
            if include_usage {
                body["stream_options"] = json!({"include_usage": true});
            }
            let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
            assert_eq!(s.status, 200, "{model}: {}", s.text());
            let c = collect(&s);
            assert_eq!(c.text, "tok0 tok1 tok2 tok3 ", "{model}");
            assert_eq!(c.finish, "stop", "{model}");
            let up = gw.mock.last_request().unwrap();
            if *provider == "gemini" {
                assert!(
                    up.path.ends_with(":streamGenerateContent?alt=sse"),
                    "{}",
                    up.path
                );
            }
            let want = expected_usage(provider, up.body.as_ref().unwrap(), 4, 0, 0);
            assert_eq!(
                c.usage.as_ref().and_then(Usage::from_openai),
                include_usage.then_some(want),
                "{model}"
            );
            assert_lumen(
                &c.lumen,
                &lumen_object(&want, &cat.models[*model].price, model, provider),
                model,
            );
        }
    }
}

#[tokio::test]
async fn every_dialect_calls_tools_streamed_and_not() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    for (model, provider, _) in MODELS {
        let mut body = chat_body(model, "Weather in Paris? [mock tool=get_weather]");
        body["tools"] = weather_tool();
        body["tool_choice"] = json!("auto");
        let r = gw.chat(&key, body.clone()).await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{model}");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather", "{model}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            args,
            serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap(),
            "{model}"
        );
        assert!(
            call["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{model}"
        );
        // The tool reached the upstream in its dialect.
        let up = gw.mock.last_request().unwrap().body.unwrap();
        match *provider {
            "anthropic" => {
                assert_eq!(up["tools"][0]["name"], "get_weather");
                assert_eq!(up["tools"][0]["input_schema"]["required"], json!(["city"]));
                assert_eq!(up["tool_choice"], json!({"type": "auto"}));
            }
            "gemini" => {
                assert_eq!(
                    up["tools"][0]["functionDeclarations"][0]["name"],
                    "get_weather"
                );
                assert_eq!(up["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
            }
            _ => assert_eq!(up["tools"], body["tools"]),
        }

        // Streamed: the call arrives as tool_call deltas that reassemble to the same call.
        body["stream"] = json!(true);
        let s = stream(gw.addr(), "/v1/chat/completions", &key, body.clone(), None).await;
        let c = collect(&s);
        assert_eq!(c.finish, "tool_calls", "{model}");
        assert_eq!(c.calls.len(), 1, "{model}");
        assert_eq!(c.calls[0].1, "get_weather", "{model}");
        assert!(!c.calls[0].0.is_empty(), "{model}: a tool call id");
        let args: Value = serde_json::from_str(&c.calls[0].2).unwrap();
        assert_eq!(
            args,
            serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap(),
            "{model}"
        );

        // The tool result goes back in the dialect's own shape, and the answer comes back.
        let id = call["id"].as_str().unwrap();
        let follow = json!({"model": model, "tools": weather_tool(), "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "{\"sky\":\"sunny\"}"},
            {"role": "user", "content": "thanks [mock tokens=2]"}
        ]});
        let r = gw.chat(&key, follow).await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "tok0 tok1 ",
            "{model}"
        );
        let up = gw.mock.last_request().unwrap().body.unwrap();
        match *provider {
            "anthropic" => {
                assert_eq!(up["messages"][1]["content"][0]["type"], "tool_use");
                assert_eq!(
                    up["messages"][2]["content"][0],
                    json!({"type": "tool_result", "tool_use_id": id, "content": "{\"sky\":\"sunny\"}"})
                );
            }
            "gemini" => {
                assert_eq!(
                    up["contents"][1]["parts"][0]["functionCall"]["name"],
                    "get_weather"
                );
                assert_eq!(
                    up["contents"][2]["parts"][0]["functionResponse"],
                    json!({"name": "get_weather", "response": {"sky": "sunny"}})
                );
            }
            _ => assert_eq!(up["messages"][2]["tool_call_id"], id),
        }
    }
}

#[tokio::test]
async fn anthropic_cache_tokens_are_counted_and_priced_apart() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let price = catalog().models["claude-3-5-haiku"].price.clone();
    let text = "Summarise [mock tokens=5 cached=1800 cache_write=200]";
    let r = gw.chat(&key, chat_body("claude-3-5-haiku", text)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let input = anthropic_prompt_tokens(gw.mock.last_request().unwrap().body.as_ref().unwrap());
    let want = Usage {
        prompt_tokens: input + 2000,
        completion_tokens: 5,
        cached_tokens: 1800,
        cache_write_tokens: 200,
        reasoning_tokens: 0,
    };
    assert_eq!(Usage::from_openai(&v["usage"]), Some(want));
    // Golden: fresh × 0.80 + 1800 × 0.08 + 200 × 1.00 + 5 × 4.00 per million tokens.
    let nanos = (input as f64 * 0.80 + 1800.0 * 0.08 + 200.0 * 1.00 + 5.0 * 4.00) * 1000.0;
    assert_eq!(cost_nanos(&want, &price), nanos.round() as i64);
    assert_eq!(v["lumen"]["cost"], json!(nanos.round() / 1e9));

    let mut body = chat_body("claude-3-5-haiku", text);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let c = collect(&stream(gw.addr(), "/v1/chat/completions", &key, body, None).await);
    assert_eq!(c.usage.as_ref().and_then(Usage::from_openai), Some(want));
    assert_eq!(c.lumen["cost"], json!(nanos.round() / 1e9));
}

#[tokio::test]
async fn gemini_safety_block_is_content_filter_and_fixtures_replay() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let r = gw
        .chat(
            &key,
            chat_body("gemini-2.0-flash", "bad things [mock safety=1]"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);

    // A recorded Anthropic stream (text, then a tool call in input_json_delta pieces).
    let mut body = chat_body(
        "claude-sonnet-4",
        "[mock fixture=anthropic/tool_stream.sse]",
    );
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let c = collect(&stream(gw.addr(), "/v1/chat/completions", &key, body, None).await);
    assert_eq!(c.text, "Let me check.");
    assert_eq!(
        c.calls,
        vec![(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
            "get_weather".into(),
            "{\"city\": \"Paris\"}".into()
        )]
    );
    assert_eq!(c.finish, "tool_calls");
    let want = Usage {
        prompt_tokens: 2021,
        completion_tokens: 57,
        cached_tokens: 1800,
        cache_write_tokens: 200,
        reasoning_tokens: 0,
    };
    assert_eq!(c.usage.as_ref().and_then(Usage::from_openai), Some(want));
    // 21 × 3 + 1800 × 0.30 + 200 × 3.75 + 57 × 15 = 63 + 540 + 750 + 855 = 2208 µ$.
    assert_eq!(c.lumen["cost"], json!(0.002208));

    // A recorded Gemini stream with a function call.
    let mut body = chat_body("gemini-2.0-flash", "[mock fixture=gemini/stream.sse]");
    body["stream"] = json!(true);
    let c = collect(&stream(gw.addr(), "/v1/chat/completions", &key, body, None).await);
    assert_eq!(c.text, "Checking the weather.");
    assert_eq!(c.calls[0].1, "get_weather");
    assert_eq!(c.finish, "tool_calls");

    // A recorded Anthropic error: overloaded (529) is retryable → 502 for the client.
    let r = gw
        .chat(
            &key,
            chat_body(
                "claude-3-5-haiku",
                "[mock fixture=anthropic/error_overloaded.json status=529]",
            ),
        )
        .await;
    let e = r.error(502);
    assert_eq!(e["message"], "provider \"anthropic\" failed with HTTP 529");
    let r = gw
        .chat(
            &key,
            chat_body(
                "gemini-2.0-flash",
                "[mock fixture=gemini/error_invalid.json status=400]",
            ),
        )
        .await;
    let e = r.error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("upstream rejected the request: Invalid JSON payload received."),
        "{e}"
    );
}

#[tokio::test]
async fn unsupported_parameters_are_400s_naming_them() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    for (model, param, extra) in [
        ("claude-3-5-haiku", "logprobs", json!({"logprobs": true})),
        ("claude-3-5-haiku", "n", json!({"n": 2})),
        (
            "claude-3-5-haiku",
            "response_format",
            json!({"response_format": {"type": "json_object"}}),
        ),
        (
            "gemini-2.0-flash",
            "parallel_tool_calls",
            json!({"parallel_tool_calls": false}),
        ),
        ("gemini-2.0-flash", "logprobs", json!({"logprobs": true})),
    ] {
        let mut body = chat_body(model, "hi");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        gw.mock.clear_requests();
        let r = gw.chat(&key, body).await;
        let e = r.error(400);
        assert_eq!(
            (e["param"].as_str(), e["code"].as_str()),
            (Some(param), Some("unsupported_parameter")),
            "{model}"
        );
        assert_eq!(
            gw.mock.request_count(),
            0,
            "{model}: nothing reaches the upstream"
        );
    }
    // What a dialect can honour is translated: JSON schema and seed on Gemini.
    let mut body = chat_body("gemini-2.0-flash", "json please [mock tokens=1]");
    body["seed"] = json!(7);
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
    let r = gw.chat(&key, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let up = gw.mock.last_request().unwrap().body.unwrap();
    assert_eq!(up["generationConfig"]["seed"], 7);
    assert_eq!(
        up["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        up["generationConfig"]["responseJsonSchema"],
        json!({"type": "object"})
    );
}

#[tokio::test]
async fn azure_serves_the_same_model_at_its_own_price_when_openai_fails() {
    let gw = Gateway::start_with(
        mock::MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..Default::default()
        },
        |o| {
            // OpenAI unreachable: the plan falls back to the Azure offer of the same model.
            o.variables
                .insert("openai_base_url".into(), "http://127.0.0.1:9/v1".into());
        },
    )
    .await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let r = gw
        .chat(&key, chat_body("gpt-4o-mini", "hi [mock tokens=2]"))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-lumen-provider"), Some("azure"));
    let up = gw.mock.last_request().unwrap();
    assert_eq!(
        up.path,
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(up.header("api-key"), Some(UPSTREAM_KEY));
    assert_eq!(up.header("authorization"), None);
    let v = r.json();
    let usage = Usage::from_openai(&v["usage"]).unwrap();
    let azure = &catalog().models["gpt-4o-mini"].offers[0].price;
    assert_lumen(
        &v["lumen"],
        &lumen_object(&usage, azure, "gpt-4o-mini", "azure"),
        "azure",
    );
    assert_ne!(
        cost_nanos(&usage, azure),
        cost_nanos(&usage, &catalog().models["gpt-4o-mini"].price)
    );
}

#[tokio::test]
async fn models_list_pricing_per_provider_context_and_capabilities() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let r = gw.call("GET", "/v1/models", Some(&key), None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let claude = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "claude-3-5-haiku")
        .unwrap();
    assert_eq!(claude["dialect"], "anthropic");
    assert_eq!(claude["context_window"], 200000);
    assert_eq!(claude["pricing"]["cache_write_per_mtok"], 1.0);
    assert_eq!(claude["pricing"]["cached_input_per_mtok"], 0.08);
    assert!(claude["pricing"]["source"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    let mini = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["offers"][0]["provider"], "azure");
    assert_eq!(mini["offers"][0]["pricing"]["input_per_mtok"], 0.165);
}

fn messages_body(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 100, "system": "be brief", "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn anthropic_messages_ingress_reaches_any_backend_with_usage() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    for (model, provider, _) in MODELS {
        // Non-stream, with cache tokens where the backend reports them.
        let r = gw
            .call(
                "POST",
                "/v1/messages",
                Some(&key),
                Some(
                    messages_body(model, "hi [mock tokens=3 cached=4 cache_write=2]")
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["type"], "message", "{model}");
        assert_eq!(
            v["content"],
            json!([{"type": "text", "text": "tok0 tok1 tok2 "}]),
            "{model}"
        );
        assert_eq!(v["stop_reason"], "end_turn", "{model}");
        let up = gw.mock.last_request().unwrap().body.unwrap();
        let (read, write) = match *provider {
            "anthropic" => (4, 2),
            "gemini" | "openai" | "vllm" => (4, 0),
            _ => unreachable!(),
        };
        let prompt = expected_usage(provider, &up, 3, read, write).prompt_tokens;
        assert_eq!(
            v["usage"],
            json!({"input_tokens": prompt - read - write, "cache_creation_input_tokens": write, "cache_read_input_tokens": read, "output_tokens": 3}),
            "{model}"
        );
        assert!(v["lumen"]["cost"].is_number(), "{model}");

        // Streamed: Anthropic events, usage complete in message_delta.
        let mut body = messages_body(model, "hi [mock tokens=2 cached=4]");
        body["stream"] = json!(true);
        let s = stream(gw.addr(), "/v1/messages", &key, body, None).await;
        assert_eq!(s.status, 200);
        let evs = lumen_shared::wire::sse::Parser::default().push(s.text().as_bytes());
        let names: Vec<&str> = evs.iter().filter_map(|e| e.event.as_deref()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ],
            "{model}"
        );
        let delta: Value = serde_json::from_str(&evs[5].data).unwrap();
        assert_eq!(delta["usage"]["output_tokens"], 2, "{model}");
        assert_eq!(delta["usage"]["cache_read_input_tokens"], 4, "{model}");
        assert!(
            delta["usage"]["input_tokens"].as_u64().unwrap() > 0,
            "{model}"
        );
    }
    // Errors come back in Anthropic's envelope, still naming the field.
    let r = gw
        .call(
            "POST",
            "/v1/messages",
            Some(&key),
            Some(
                json!({"model": "gpt-4o-mini", "messages": []})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(
        (
            v["type"].as_str(),
            v["error"]["type"].as_str(),
            v["error"]["param"].as_str()
        ),
        (
            Some("error"),
            Some("invalid_request_error"),
            Some("max_tokens")
        )
    );
    let r = gw
        .call(
            "POST",
            "/v1/messages",
            Some("lm_wrong"),
            Some(messages_body("gpt-4o-mini", "x").to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
}

#[tokio::test]
async fn embeddings_float_and_base64_with_cost() {
    use base64::Engine as _;
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let price = catalog().models["text-embedding-3-small"].price.clone();
    let post = |body: Value| {
        gw.call(
            "POST",
            "/v1/embeddings",
            Some(&key),
            Some(body.to_string().into_bytes()),
        )
    };
    let r = post(
        json!({"model": "text-embedding-3-small", "input": ["hello", "world!!"], "dimensions": 4}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let want: Vec<f64> = mock_dialects::embedding("hello", 4)
        .into_iter()
        .map(f64::from)
        .collect();
    let got: Vec<f64> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(got, want);
    assert_eq!(v["data"][1]["index"], 1);
    // ceil(5/4) + ceil(7/4) = 4 tokens at 0.02 $/M.
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    let usage = Usage {
        prompt_tokens: 4,
        ..Usage::default()
    };
    assert_lumen(
        &v["lumen"],
        &lumen_object(&usage, &price, "text-embedding-3-small", "openai"),
        "embeddings",
    );
    assert_eq!(r.header("x-lumen-cost"), Some("0.000000080"));
    assert_eq!(
        gw.mock.last_request().unwrap().body.unwrap()["encoding_format"],
        "float"
    );

    // base64: little-endian f32s of the same vector.
    let r = post(json!({"model": "text-embedding-3-small", "input": "hello", "dimensions": 4, "encoding_format": "base64"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b64 = r.json()["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, mock_dialects::embedding("hello", 4));

    // Bad input names the field; a chat-only backend has no embeddings endpoint.
    assert_eq!(
        post(json!({"model": "text-embedding-3-small", "input": []}))
            .await
            .error(400)["param"],
        "input"
    );
    let e = post(json!({"model": "claude-3-5-haiku", "input": "x"}))
        .await
        .error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("model"), Some("unsupported_endpoint"))
    );
    // The meter: 4 + 2 prompt tokens, 80 + 40 nano-dollars.
    let u = gw.usage_until(&key, |u| u["total"]["requests"] == 3).await;
    let row = u["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "text-embedding-3-small")
        .unwrap();
    assert_eq!(
        (row["requests"].as_u64(), row["prompt_tokens"].as_u64()),
        (Some(2), Some(6)),
        "{u}"
    );
    assert!(
        (row["cost_usd"].as_f64().unwrap() - 120e-9).abs() < 1e-18,
        "{u}"
    );
}

#[tokio::test]
async fn queue_backend_cold_start_streams_with_keep_alives_and_is_recorded() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let mut body = chat_body("qwen2.5-7b-instruct", "hi [mock tokens=3 cold_ms=3000]");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let started = std::time::Instant::now();
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    assert_eq!(s.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(3000));
    // The connection was never silent for long while the job was queued: keep-alive comments.
    let keep_alives = s
        .frames
        .iter()
        .filter(|(_, b)| b.starts_with(b": keep-alive"))
        .count();
    assert!(
        keep_alives >= 2,
        "{keep_alives} keep-alives in {:?}",
        s.text()
    );
    let mut last = started;
    for (at, _) in &s.frames {
        assert!(
            at.duration_since(last) < std::time::Duration::from_millis(1500),
            "a silent gap while queued"
        );
        last = *at;
    }
    let c = collect(&s);
    assert_eq!(c.text, "tok0 tok1 tok2 ");
    assert_eq!(
        c.usage
            .as_ref()
            .and_then(Usage::from_openai)
            .map(|u| u.completion_tokens),
        Some(3)
    );
    let cold = c.lumen["cold_start_ms"].as_u64().unwrap();
    assert!((3000..10_000).contains(&cold), "{cold}");
    let up = gw.mock.requests();
    assert!(up.iter().any(|r| r.path == "/v2/qwen/run"));
    assert!(
        up.iter()
            .filter(|r| r.path.starts_with("/v2/qwen/status/"))
            .count()
            >= 10,
        "polled"
    );

    // Recorded in KV: the next stream's headers carry it before its own wait is known.
    let mut body = chat_body("qwen2.5-7b-instruct", "again [mock tokens=1]");
    body["stream"] = json!(true);
    let s = stream(gw.addr(), "/v1/chat/completions", &key, body, None).await;
    let h: u64 = s
        .headers
        .get("x-lumen-cold-start-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(h, cold);
    assert_eq!(collect(&s).text, "tok0 ");

    // A whole answer reports its own wait in the header.
    let r = gw
        .chat(
            &key,
            chat_body("qwen2.5-7b-instruct", "whole [mock tokens=2 cold_ms=600]"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ms: u64 = r.header("x-lumen-cold-start-ms").unwrap().parse().unwrap();
    assert!((600..5000).contains(&ms), "{ms}");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "tok0 tok1 ");
}

#[tokio::test]
async fn spin_llm_provider_answers_not_available_here_clearly() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(1000, &[]).await;
    let r = gw.chat(&key, chat_body("llama2-chat", "hi")).await;
    let e = r.error(502);
    let why = if common::runtime::Runtime::current().is_spin() {
        // Real Spin answers the interface itself: spin.toml grants no `ai_models` (lumen-host
        // refuses the key; config/catalog.toml says to add it where Spin serves models).
        "The component does not have access to use 'llama2-chat'. To give the component access, add 'llama2-chat' to the 'ai_models' key for the component in your spin.toml manifest"
    } else {
        "fermyon:spin/llm is not available in lumen-host (it runs no model); deploy to a Spin platform with LLM support, e.g. Fermyon Cloud"
    };
    assert_eq!(
        e["message"],
        format!("provider \"fermyon\" (Spin LLM interface) failed: {why}")
    );
    assert_eq!(r.header("x-lumen-provider"), Some("fermyon"));
    assert_eq!(gw.mock.request_count(), 0);
    // What the interface cannot express is refused by name before it is called.
    let mut body = chat_body("llama2-chat", "hi");
    body["tools"] = weather_tool();
    assert_eq!(gw.chat(&key, body).await.error(400)["param"], "tools");
}

#[tokio::test]
async fn bring_your_own_provider_keys_are_used_and_never_echoed() {
    // An open mock: it records whichever key arrives.
    let gw = Gateway::start_with(mock::MockConfig::default(), |o| {
        o.variables
            .insert("byok_tenant_key".into(), "sk-tenant-variable-7".into());
    })
    .await;
    let (key_a, id_a) = gw.create_key(1000, &[]).await;
    let (key_b, _) = gw.create_key(1000, &[]).await;
    let tenant = "sk-tenant-own-key-42";
    let put = |id: &str, provider: &str, body: Value| {
        let path = format!("/admin/keys/{id}/provider-keys/{provider}");
        let addr = gw.addr();
        async move {
            send(
                addr,
                "PUT",
                &path,
                Some(ADMIN),
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let r = put(&id_a, "openai", json!({"key": tenant})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        !String::from_utf8_lossy(&r.body).contains(tenant),
        "never echoed"
    );
    assert_eq!(r.json(), json!({"provider": "openai", "kind": "encrypted"}));
    // A reference may not name the master key, a platform key or an undeclared variable.
    for bad in [
        "byok_encryption_key",
        "anthropic_api_key",
        "byok_undeclared",
    ] {
        let e = put(&id_a, "anthropic", json!({"variable": bad}))
            .await
            .error(400);
        assert_eq!(e["param"], "variable", "{bad}: {e}");
    }
    let r = put(&id_a, "anthropic", json!({"variable": "byok_tenant_key"})).await;
    assert_eq!(r.json()["kind"], "variable");

    // Key A's requests carry its own key upstream; key B still uses the platform key.
    gw.chat(&key_a, chat_body("gpt-4o-mini", "hi [mock tokens=1]"))
        .await;
    assert_eq!(
        gw.mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {tenant}").as_str())
    );
    gw.chat(&key_b, chat_body("gpt-4o-mini", "hi [mock tokens=1]"))
        .await;
    assert_eq!(
        gw.mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    gw.chat(&key_a, chat_body("claude-3-5-haiku", "hi [mock tokens=1]"))
        .await;
    assert_eq!(
        gw.mock.last_request().unwrap().header("x-api-key"),
        Some("sk-tenant-variable-7")
    );

    // Listing shows kinds, never keys; delete falls back to the platform key.
    let r = gw
        .call(
            "GET",
            &format!("/admin/keys/{id_a}/provider-keys"),
            Some(ADMIN),
            None,
        )
        .await;
    assert!(!String::from_utf8_lossy(&r.body).contains(tenant));
    assert_eq!(
        r.json()["data"],
        json!([{"provider": "anthropic", "kind": "variable", "variable": "byok_tenant_key"}, {"provider": "openai", "kind": "encrypted"}])
    );
    let r = gw
        .call(
            "DELETE",
            &format!("/admin/keys/{id_a}/provider-keys/openai"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    gw.chat(&key_a, chat_body("gpt-4o-mini", "hi [mock tokens=1]"))
        .await;
    assert_eq!(
        gw.mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );

    // Bad input is named; the API is behind the admin secret; unknown providers and keys are 404s.
    assert_eq!(
        put(&id_a, "openai", json!({"key": ""})).await.error(400)["param"],
        "key"
    );
    assert_eq!(
        put(&id_a, "nope", json!({"key": "x"})).await.error(404)["code"],
        "provider_not_found"
    );
    assert_eq!(
        put("key_missing", "openai", json!({"key": "x"}))
            .await
            .error(404)["code"],
        "key_not_found"
    );
    let r = gw
        .call(
            "PUT",
            &format!("/admin/keys/{id_a}/provider-keys/openai"),
            Some(&key_a),
            Some(b"{\"key\":\"x\"}".to_vec()),
        )
        .await;
    r.error(401);

    // Every change is on the audit chain; revoking the key removes its provider keys.
    let head = gw
        .call("GET", "/admin/audit/head", Some(ADMIN), None)
        .await
        .json();
    let v = gw
        .call("GET", "/admin/audit/verify", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
    // 2 keys created, 2 provider keys put, 1 deleted, 3 settled chats, 1 more chat.
    assert!(head["seq"].as_u64().unwrap() >= 5 + 4, "{head}");
    let r = gw
        .call("DELETE", &format!("/admin/keys/{id_a}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200);
    let left: Vec<String> = gw.store_keys("v1/byok/");
    assert!(left.iter().all(|k| !k.contains(&id_a)), "{left:?}");
}

/// Anthropic-format clients (and `curl` from Anthropic's docs) send the key as `x-api-key`, not as
/// a bearer token: `/v1/messages` accepts it, and a wrong one is a 401 in Anthropic's shape.
#[tokio::test]
async fn anthropic_clients_may_send_the_key_as_x_api_key() {
    let gw = Gateway::start().await;
    let (key, _) = gw.create_key(100, &[]).await;
    let body = messages_body("gpt-4o-mini", "hi [mock tokens=2]")
        .to_string()
        .into_bytes();
    let r = send_with(
        gw.addr(),
        "POST",
        "/v1/messages",
        None,
        Some(body.clone()),
        &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["content"][0]["text"], "tok0 tok1 ");

    let r = send_with(
        gw.addr(),
        "POST",
        "/v1/messages",
        None,
        Some(body),
        &[("x-api-key", "lm_wrong")],
    )
    .await;
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
}
