"""The official Anthropic Python SDK, unmodified, against Lumen's ``POST /v1/messages``: chat,
stream, tools and errors, routed to an Anthropic, a Gemini, an OpenAI and a self-hosted backend,
with usage (cache read and write included) in Anthropic's shape."""

from __future__ import annotations

import anthropic
import pytest

from conftest import Server

MODELS = ["claude-3-5-haiku", "gemini-2.0-flash", "gpt-4o-mini", "llama-3.1-8b-instruct"]
WEATHER = [{"name": "get_weather", "description": "weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture()
def claude(gateway: Server, api_key: str):
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=30) as c:
        yield c


@pytest.mark.parametrize("model", MODELS)
def test_messages_non_stream(claude: anthropic.Anthropic, model: str) -> None:
    msg = claude.messages.create(model=model, max_tokens=64, system="be brief",
                                 messages=[{"role": "user", "content": "hi [mock tokens=3]"}])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == "tok0 tok1 tok2 "
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 3
    assert msg.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream_has_usage(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "hi [mock tokens=4]"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 "
    assert final.usage.output_tokens == 4
    assert final.usage.input_tokens > 0, "Anthropic clients must not see zero usage"
    assert final.stop_reason == "end_turn"


def test_cache_tokens_round_trip(claude: anthropic.Anthropic) -> None:
    text = "hi [mock tokens=2 cached=1800 cache_write=200]"
    msg = claude.messages.create(model="claude-3-5-haiku", max_tokens=64, messages=[{"role": "user", "content": text}])
    assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (1800, 200)
    with claude.messages.stream(model="claude-3-5-haiku", max_tokens=64, messages=[{"role": "user", "content": text}]) as s:
        final = s.get_final_message()
    assert (final.usage.cache_read_input_tokens, final.usage.cache_creation_input_tokens) == (1800, 200)
    assert final.usage.input_tokens == msg.usage.input_tokens


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_stream_and_not(claude: anthropic.Anthropic, model: str) -> None:
    messages = [{"role": "user", "content": "Weather? [mock tool=get_weather]"}]
    msg = claude.messages.create(model=model, max_tokens=64, tools=WEATHER, messages=messages)
    assert msg.stop_reason == "tool_use"
    use = [b for b in msg.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    with claude.messages.stream(model=model, max_tokens=64, tools=WEATHER, messages=messages) as s:
        final = s.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"][0]
    assert streamed.name == "get_weather" and streamed.input == {"city": "Paris"}
    follow = claude.messages.create(model=model, max_tokens=64, tools=WEATHER, messages=messages + [
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                                     {"type": "text", "text": "thanks [mock tokens=1]"}]},
    ])
    assert follow.content[0].text == "tok0 "


def test_errors_are_typed(claude: anthropic.Anthropic, gateway: Server) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="gpt-4o-mini", max_tokens=8, extra_body={"top_k": 3}, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["param"] == "top_k"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gateway.url, api_key="lm_wrong", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="claude-3-5-haiku", max_tokens=8, messages=[{"role": "user", "content": "[mock status=429]"}])
