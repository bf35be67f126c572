"""Llama Stack requests of every client generation, as the OpenAI requests vLLM answers (pure)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nim_runtime.errors import ApiError
from nim_runtime.routes.llamastack import _stream_events
from nim_runtime.routes.llamastack_request import sampling, to_openai_request

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # llama-stack-client 0.0.40: a string strategy, the knobs beside it.
        ({"strategy": "greedy", "max_tokens": 24}, {"temperature": 0.0, "max_tokens": 24}),
        ({"strategy": "top_p", "temperature": 0.7, "top_p": 0.95}, {"temperature": 0.7, "top_p": 0.95}),
        ({"strategy": "top_k", "top_k": 5}, {"top_k": 5}),
        # 0.0.40 sends max_tokens 0 and repetition_penalty 1 when they are left alone.
        (
            {"strategy": "greedy", "max_tokens": 0, "repetition_penalty": 1.0},
            {"temperature": 0.0, "repetition_penalty": 1.0},
        ),
        # Later releases: the strategy object holds its knobs.
        ({"strategy": {"type": "greedy"}}, {"temperature": 0.0}),
        ({"strategy": {"type": "top_p", "temperature": 0.5, "top_p": 0.8}}, {"temperature": 0.5, "top_p": 0.8}),
        ({"strategy": {"type": "top_k", "top_k": 3}, "max_tokens": 9}, {"top_k": 3, "max_tokens": 9}),
        # No strategy: the knobs given, nothing else (the manifest's defaults apply).
        ({"temperature": 0.3}, {"temperature": 0.3}),
        ({}, {}),
    ],
    ids=[
        "str-greedy",
        "str-top-p",
        "str-top-k",
        "str-unset-defaults",
        "obj-greedy",
        "obj-top-p",
        "obj-top-k",
        "no-strategy",
        "empty",
    ],
)
def test_both_sampling_shapes(params: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sampling(params) == expected


def test_greedy_wins_over_a_temperature_sent_beside_it() -> None:
    assert sampling({"strategy": "greedy", "temperature": 0.9}) == {"temperature": 0.0}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"sampling_params": "fast"}, "sampling_params"),
        ({"sampling_params": {"strategy": "beam"}}, "sampling_params.strategy"),
        ({"sampling_params": {"strategy": {"type": "beam"}}}, "sampling_params.strategy.type"),
        ({"sampling_params": {"strategy": 3}}, "sampling_params.strategy"),
        ({"sampling_params": {"strategy": "top_p", "temperature": "hot"}}, "sampling_params.temperature"),
        ({"sampling_params": {"strategy": {"type": "top_p", "top_p": "x"}}}, "sampling_params.strategy.top_p"),
        ({"sampling_params": {"max_tokens": "24"}}, "sampling_params.max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [7]}, "tools.0"),
        ({"tools": [{"description": "no name"}]}, "tools.0.tool_name"),
        ({"logprobs": {"top_k": "many"}}, "logprobs.top_k"),
        ({"response_format": "json"}, "response_format"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": ["ok", {"audio": 1}]}]}, "messages.0.content.1"),
        ({"messages": [{"role": "user", "content": [{"image": 5}]}]}, "messages.0.content.0.image"),
        ({"messages": [{"role": "ipython", "content": "42"}]}, "messages.0.call_id"),
        ({"model_id": 7}, "model_id"),
    ],
)
def test_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        to_openai_request({"model": "m", "messages": HI, **body})
    assert caught.value.status == 400
    assert caught.value.param == param
    assert param in caught.value.message
    assert "Error" not in caught.value.message  # no exception class names


@pytest.mark.parametrize(
    "item",
    [
        {"image": "https://e.com/a.jpg"},  # 0.0.40's ImageMedia
        {"image": {"uri": "https://e.com/a.jpg"}},  # NIM's documentation
        {"type": "image", "image": {"url": {"uri": "https://e.com/a.jpg"}}},  # later releases
    ],
)
def test_image_items_of_every_generation(item: dict[str, Any]) -> None:
    request = to_openai_request({"model": "m", "messages": [{"role": "user", "content": [item, "What is it?"]}]})
    assert request["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": "https://e.com/a.jpg"}}


def test_base64_image_data_becomes_a_data_url() -> None:
    item = {"type": "image", "image": {"data": "aGk="}}
    request = to_openai_request({"model": "m", "messages": [{"role": "user", "content": item}]})
    assert request["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,aGk="}}
    ]


def test_a_tool_conversation_round_trips() -> None:
    """0.0.40's history: the assistant's call (arguments an object) and the tool's answer (role ipython)."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"call_id": "c1", "tool_name": "weather", "arguments": {"city": "Paris"}}]},
        {"role": "ipython", "call_id": "c1", "tool_name": "weather", "content": "sunny"},
    ]  # fmt: skip
    tools = [{"tool_name": "weather", "description": "d", "parameters": {"city": {"param_type": "str"}}}]
    request = to_openai_request({"model": "m", "messages": messages, "tools": tools, "tool_choice": "auto"})
    assistant, tool = request["messages"][1:]
    assert assistant["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    assert request["tool_choice"] == "auto"
    assert request["tools"][0]["function"]["parameters"]["required"] == ["city"]


def test_user_context_follows_the_content() -> None:
    request = to_openai_request({"model": "m", "messages": [{"role": "user", "content": "Q?", "context": "facts"}]})
    assert request["messages"][0]["content"] == [{"type": "text", "text": "Q?"}, {"type": "text", "text": "facts"}]


def _events(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def sse() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def collect() -> list[str]:
        return [e async for e in _stream_events(sse())]

    return [json.loads(e.removeprefix("data: "))["event"] for e in asyncio.run(collect())]


def test_stream_deltas_are_text_as_0_0_x_reads_them() -> None:
    events = _events([{"choices": [{"delta": {"content": "Hel"}}]},
                      {"choices": [{"delta": {"content": "lo"}, "finish_reason": "length"}]}])  # fmt: skip
    assert [(e["event_type"], e["delta"]) for e in events] == [
        ("start", ""), ("progress", "Hel"), ("progress", "lo"), ("complete", "")
    ]  # fmt: skip
    assert events[-1]["stop_reason"] == "out_of_tokens"


def test_streamed_tool_calls_are_gathered_into_one_event() -> None:
    pieces = [
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "weather"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    events = _events(pieces)
    assert events[1] == {
        "event_type": "progress",
        "delta": {"content": {"call_id": "c1", "tool_name": "weather", "arguments": {"city": "Paris"}},
                  "parse_status": "success"},
    }  # fmt: skip
    assert events[-1]["stop_reason"] == "end_of_message"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
FIELDS = ["model", "model_id", "messages", "sampling_params", "stream", "tools", "tool_choice", "tool_config",
          "logprobs", "response_format"]  # fmt: skip
MESSAGE_KEYS = ["role", "content", "context", "call_id", "tool_calls"]


@settings(max_examples=400, deadline=None)
@given(
    top=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6),
    message=st.dictionaries(st.sampled_from(MESSAGE_KEYS), JSON, max_size=5),
    sampling=st.dictionaries(st.sampled_from(["strategy", "max_tokens", "temperature", "top_p", "top_k"]), JSON),
)
def test_any_json_is_translated_or_refused_with_a_field(
    top: dict[str, Any], message: dict[str, Any], sampling: dict[str, Any]
) -> None:
    """Whatever the shapes, the translation answers or raises ApiError with a param: never another error."""
    body = {"model": "m", "messages": [message], "sampling_params": sampling, **top}
    refused: ApiError | None = None
    try:
        to_openai_request(body)
    except ApiError as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 400
        assert refused.param
