"""The official OpenAI Python SDK, unmodified, against Lumen (lumen-host + the mock upstream).

The mock's behaviour is steered by a ``[mock k=v ...]`` directive in the last user message and
its token counts are deterministic (see ``tests/src/mock.rs``), so these tests assert exact values
after the round trip through the gateway.
"""

from __future__ import annotations

import math
import time
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import UPSTREAM_KEY, Server, create_key, sdk_client

MODEL = "gpt-4o-mini"


def message_text(content: object) -> str:
    """Mirrors the mock: a string, or the concatenated ``text`` of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def expected_prompt_tokens(messages: list[dict]) -> int:
    """The mock's formula: 3 + sum over messages of (3 + ceil(chars / 4))."""
    return 3 + sum(3 + math.ceil(len(message_text(m.get("content"))) / 4) for m in messages)


def expected_text(tokens: int, word: str | None = None) -> str:
    return "".join(f"{word} " if word else f"tok{i} " for i in range(tokens))


def recorded_body(mock_http: httpx.Client, marker: str) -> dict:
    """The upstream request body whose last message contains ``marker``."""
    bodies = mock_http.get("/mock/requests").json()
    matches = [b for b in bodies if marker in message_text(b.get("messages", [{}])[-1].get("content"))]
    assert len(matches) == 1, f"expected one upstream request with {marker!r}, found {len(matches)}"
    return matches[0]


def test_models_list(client: OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"gpt-4o-mini", "gpt-4o"} <= ids


def test_non_stream_completion_usage(client: OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello. [mock tokens=7]"}]},
    ]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    for header in ("x-lumen-model", "x-lumen-provider", "x-lumen-overhead-ms"):
        assert header in raw.headers, f"missing {header}: {dict(raw.headers)}"
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == expected_text(7)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_prompt_tokens(messages)
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 7


def test_stream_with_include_usage(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Count. [mock tokens=4 content=hey]"}]
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(4, "hey")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]

    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, "exactly one usage chunk"
    last = chunks[-1]
    assert last is usage_chunks[0], "the usage chunk comes last"
    assert last.choices == []
    assert last.usage.prompt_tokens == expected_prompt_tokens(messages)
    assert last.usage.completion_tokens == 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + 4


def test_stream_without_include_usage_has_no_usage_chunk(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Count. [mock tokens=3]"}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(3)
    assert all(c.usage is None for c in chunks), "usage must not be sent unless requested"
    assert all(c.choices for c in chunks), "no choice-less (usage) chunk"


def test_wrong_key_is_authentication_error(gateway: Server) -> None:
    with sdk_client(gateway, "lm_this_key_does_not_exist") as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    error = caught.value.response.json()["error"]
    assert {"message", "type", "param", "code"} <= error.keys()


def test_sdk_params_reach_upstream_untouched(client: OpenAI, mock_http: httpx.Client) -> None:
    marker = f"passthrough-{uuid.uuid4().hex}"
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"{marker} [mock tokens=2]"}],
        seed=1234,
        tools=tools,
        response_format={"type": "json_object"},
        temperature=0.25,
    )
    body = recorded_body(mock_http, marker)
    assert body["seed"] == 1234
    assert body["tools"] == tools
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.25


def test_unknown_extra_body_fields_reach_upstream(client: OpenAI, mock_http: httpx.Client) -> None:
    marker = f"extra-{uuid.uuid4().hex}"
    extra = {"x_lumen_future_param": {"nested": [1, 2, {"deep": True}], "s": "é"}}
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": marker}], extra_body=extra
    )
    assert recorded_body(mock_http, marker)["x_lumen_future_param"] == extra["x_lumen_future_param"]


def test_upstream_gets_provider_key_not_client_key(client: OpenAI, api_key: str, mock_http: httpx.Client) -> None:
    marker = f"auth-{uuid.uuid4().hex}"
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": marker}])
    recorded = [
        r for r in mock_http.get("/mock/requests", params={"full": "1"}).json()
        if r["body"] and r["body"].get("messages") and marker in message_text(r["body"]["messages"][-1].get("content"))
    ]
    assert len(recorded) == 1
    headers = recorded[0]["headers"]
    assert headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert api_key not in str(headers), "the client's Lumen key must not leak upstream"


def test_rpm_limit_raises_rate_limit_error_with_retry_after(gateway: Server, admin: httpx.Client) -> None:
    key = create_key(admin, "python-rate-limit", rpm_limit=2)["key"]
    with sdk_client(gateway, key) as limited:
        caught = None
        # 2 requests fit the limit; the rest must be refused (5 tolerates one window roll-over).
        for _ in range(5):
            try:
                limited.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi [mock tokens=1]"}])
            except openai.RateLimitError as err:
                caught = err
                break
    assert caught is not None, "rpm_limit=2 was never enforced"
    assert caught.status_code == 429
    retry_after = caught.response.headers.get("retry-after")
    assert retry_after is not None, f"429 without retry-after: {dict(caught.response.headers)}"
    assert 0 <= int(retry_after) <= 60


def test_stream_chunks_arrive_paced(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Slowly. [mock delay_ms=200 tokens=5]"}]
    arrivals = []
    with client.chat.completions.create(model=MODEL, messages=messages, stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    slow = [g for g in gaps if g >= 0.15]
    assert len(slow) >= 3, f"chunks were buffered, not streamed: gaps {[round(g, 3) for g in gaps]}"


def test_usage_api_reports_metered_tokens(gateway: Server, admin: httpx.Client) -> None:
    key = create_key(admin, "python-usage")["key"]
    sent = [
        [{"role": "user", "content": "first [mock tokens=3]"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "second [mock tokens=5]"}],
    ]
    with sdk_client(gateway, key) as c:
        for messages in sent:
            c.chat.completions.create(model=MODEL, messages=messages)
    want_prompt = sum(expected_prompt_tokens(m) for m in sent)

    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        deadline = time.monotonic() + 10
        while True:
            response = http.get("/v1/usage")
            assert response.status_code == 200, response.text
            usage = response.json()
            if usage["total"]["requests"] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # metering may land just after the response
    assert usage["object"] == "usage"
    total = usage["total"]
    assert total["requests"] == 2
    assert total.get("errors", 0) == 0
    assert total["prompt_tokens"] == want_prompt
    assert total["completion_tokens"] == 8
    assert total["cost_usd"] > 0
    rows = [row for row in usage["data"] if row["model"] == MODEL]
    assert len(rows) == 1
    assert len(rows[0]["day"]) == 10 and rows[0]["day"][4] == "-"
    assert rows[0]["requests"] == 2


def test_admin_key_listing_hides_secrets(admin: httpx.Client) -> None:
    created = create_key(admin, "python-listing")
    listing = admin.get("/admin/keys")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["object"] == "list"
    ours = [k for k in body["data"] if k["id"] == created["id"]]
    assert len(ours) == 1
    assert "key" not in ours[0]
    assert created["key"] not in listing.text
