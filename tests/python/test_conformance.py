"""Conformance of the official OpenAI Python SDK across every dialect behind Lumen: chat, stream,
tools, JSON mode, embeddings, models and errors, for an Anthropic, a Gemini, an OpenAI and a
self-hosted open model (all served by the mock, each on its own dialect's routes)."""

from __future__ import annotations

import json
import time

import openai
import pytest
from openai import OpenAI

MODELS = ["claude-3-5-haiku", "gemini-2.0-flash", "gpt-4o-mini", "llama-3.1-8b-instruct"]
WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


@pytest.mark.parametrize("model", MODELS)
def test_chat_with_usage_and_cost(client: OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi [mock tokens=3]"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens > 0
    lumen = completion.model_extra["lumen"]
    assert lumen["model"] == model and lumen["currency"] == "USD"
    assert float(raw.headers["x-lumen-cost"]) == pytest.approx(lumen["cost"], abs=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_stream_with_usage_and_cost(client: OpenAI, model: str) -> None:
    chunks = list(client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi [mock tokens=4]"}],
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].model_extra["lumen"]["model"] == model
    assert all("lumen" not in (c.model_extra or {}) for c in chunks[:-1])


@pytest.mark.parametrize("model", MODELS)
def test_tools_stream_and_not(client: OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "Weather in Paris? [mock tool=get_weather]"}]
    done = client.chat.completions.create(model=model, messages=messages, tools=WEATHER, tool_choice="auto")
    call = done.choices[0].message.tool_calls[0]
    assert done.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # The SDK's stream helper reassembles tool-call deltas.
    with client.chat.completions.stream(model=model, messages=messages, tools=WEATHER) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "get_weather"
    assert json.loads(streamed.function.arguments) == {"city": "Paris"}

    # The tool result goes back and the conversation continues.
    follow = client.chat.completions.create(model=model, tools=WEATHER, messages=messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny"})},
        {"role": "user", "content": "thanks [mock tokens=2]"},
    ])
    assert follow.choices[0].message.content == "tok0 tok1 "


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "gpt-4o-mini"])
def test_json_mode(client: OpenAI, model: str, mock_http) -> None:
    for fmt in [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}]:
        done = client.chat.completions.create(
            model=model, response_format=fmt, messages=[{"role": "user", "content": f"json {fmt['type']} [mock tokens=1]"}]
        )
        assert done.choices[0].message.content == "tok0 "
    last = mock_http.get("/mock/requests").json()[-1]
    if model.startswith("gemini"):
        assert last["generationConfig"]["responseMimeType"] == "application/json"
        assert last["generationConfig"]["responseJsonSchema"] == {"type": "object"}
    else:
        assert last["response_format"]["type"] == "json_schema"


def test_json_mode_unsupported_is_a_named_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="claude-3-5-haiku", response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "json"}],
        )
    assert e.value.status_code == 400
    assert e.value.body["param"] == "response_format"
    assert e.value.body["code"] == "unsupported_parameter"


def test_embeddings_default_base64_and_float(client: OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it; Lumen encodes whatever the upstream sent.
    r = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"], dimensions=4)
    assert [len(d.embedding) for d in r.data] == [4, 4]
    f = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"], dimensions=4, encoding_format="float")
    for b64, flt in zip(r.data, f.data):
        assert b64.embedding == pytest.approx(flt.embedding, abs=1e-6)
    assert r.usage.prompt_tokens == 4


def test_models_have_pricing_context_and_capabilities(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(MODELS) | {"text-embedding-3-small"} <= set(models)
    claude = models["claude-3-5-haiku"].model_extra
    assert claude["context_window"] == 200000
    assert "tools" in claude["capabilities"]
    assert claude["pricing"]["cache_write_per_mtok"] == 1.0
    assert claude["pricing"]["source"].startswith("https://")


def test_errors_are_typed(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude-3-5-haiku", logprobs=True, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gemini-2.0-flash", messages=[{"role": "user", "content": "[mock status=429]"}])


def test_cold_start_streams_without_client_timeout(gateway, api_key: str) -> None:
    """A queue-style backend that takes 3 s to start, under a client whose read timeout is 2 s:
    the gateway's keep-alive comments keep the stream alive, and the cold start is reported."""
    # The SDK's own timeout type (its HTTP library's): httpx2 2.17 refuses httpx's.
    slow = OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0,
                  timeout=openai.Timeout(30.0, read=2.0))
    start = time.monotonic()
    chunks = list(slow.chat.completions.create(
        model="qwen2.5-7b-instruct", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi [mock tokens=3 cold_ms=3000]"}],
    ))
    assert time.monotonic() - start >= 3.0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    assert chunks[-1].model_extra["lumen"]["cold_start_ms"] >= 3000
    # Without keep-alives the same client times out: prove the timeout is real on a silent wait.
    with pytest.raises(openai.APITimeoutError):
        slow.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "[mock ttft_ms=2500]"}])
