"""The OpenAI API of the embedded SmolLM2, through the OpenAI Python SDK."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.runtime.conftest import SMOLLM2, Server

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def client(smollm2: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smollm2.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_health_goes_from_503_to_200_while_live_answers(smollm2: Server) -> None:
    statuses = smollm2.startup_statuses
    assert statuses[-1][0] == 200
    assert any(ready == 503 and live == 200 for ready, live in statuses), statuses[:5]
    body = httpx.get(f"{smollm2.url}/v1/health/ready").json()
    assert body == {"object": "health.response", "message": "Service is ready."}
    assert httpx.get(f"{smollm2.url}/v1/health/live").json()["object"] == "health.response"


def test_completion_knows_the_capital_of_france(client: openai.OpenAI) -> None:
    result = client.completions.create(model=SMOLLM2, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert result.choices[0].text.strip().startswith("Paris")
    assert result.usage is not None
    assert result.usage.completion_tokens <= 4


def test_chat_answers_as_assistant(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0
    )
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert result.model == SMOLLM2


def test_streamed_chat_arrives_in_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Count to five."}], max_tokens=16, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3
    assert text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_named_tool_choice_returns_valid_arguments(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    result = client.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        temperature=0,
    )
    calls = result.choices[0].message.tool_calls
    assert calls
    assert calls[0].function.name == "get_weather"
    arguments = json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments.get("city"), str)


def test_logprobs(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logprobs=True, top_logprobs=2
    )
    content = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content
    assert len(content) <= 3
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in content)


def test_tokenize_detokenize_round_trip(smollm2: Server) -> None:
    text = "Kubernetes schedules pods."
    tokens = httpx.post(f"{smollm2.url}/tokenize", json={"model": SMOLLM2, "prompt": text}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    back = httpx.post(f"{smollm2.url}/detokenize", json={"model": SMOLLM2, "tokens": tokens["tokens"]}).json()
    assert back["prompt"] == text


def test_models_has_the_nim_shape(client: openai.OpenAI, smollm2: Server) -> None:
    body = httpx.get(f"{smollm2.url}/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == SMOLLM2
    assert card["root"] == SMOLLM2
    assert card["parent"] is None
    assert card["max_model_len"] == 8192
    assert card["permission"][0]["object"] == "model_permission"
    assert [m.id for m in client.models.list()] == [SMOLLM2]


def test_single_stream_throughput(client: openai.OpenAI) -> None:
    """Not a benchmark; prints tokens/s for the closing note and guards against a 10x regression."""
    started = time.perf_counter()
    result = client.completions.create(
        model=SMOLLM2, prompt="Once upon a time", max_tokens=64, temperature=0, extra_body={"ignore_eos": True}
    )
    seconds = time.perf_counter() - started
    assert result.usage is not None
    assert result.usage.completion_tokens == 64
    print(f"\nSmolLM2 single stream: {64 / seconds:.1f} tokens/s")
    assert 64 / seconds > 1
