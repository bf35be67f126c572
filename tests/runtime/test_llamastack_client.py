"""The Llama Stack endpoints with the real llama-stack-client 0.0.40, at / and at /ls.

0.0.40 sends ``sampling_params.strategy`` as a string with the knobs beside it, ``model`` rather than
``model_id``, and images as ``{"image": "<url>"}``; later shapes (the strategy object) are sent through
the same client, as its TypedDicts do not check them. Every call runs in the client's own interpreter
(see clients.py); the client parses answers with strict validation against its own types.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.clients import llama_stack_client_python
from tests.runtime.conftest import SMOLLM2, Server

pytestmark = pytest.mark.runtime

CALLS = Path(__file__).with_name("llamastack_calls.py")
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "tool_name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {"city": {"param_type": "str", "description": "The city", "required": True}},
}
GREEDY_STRING = {"strategy": "greedy", "max_tokens": 24}
GREEDY_OBJECT = {"strategy": {"type": "greedy"}, "max_tokens": 24}

SPECS: list[dict[str, Any]] = [
    {"name": "greedy-string", "stream": False, "kwargs": {"messages": FRANCE, "sampling_params": GREEDY_STRING}},
    {"name": "greedy-string-stream", "stream": True, "kwargs": {"messages": FRANCE, "sampling_params": GREEDY_STRING}},
    {"name": "greedy-object", "stream": False, "kwargs": {"messages": FRANCE, "sampling_params": GREEDY_OBJECT}},
    {"name": "greedy-object-stream", "stream": True, "kwargs": {"messages": FRANCE, "sampling_params": GREEDY_OBJECT}},
    {
        "name": "top-p-string",
        "stream": False,
        "kwargs": {
            "messages": FRANCE,
            "sampling_params": {"strategy": "top_p", "temperature": 0.7, "top_p": 0.9, "max_tokens": 16},
        },
    },
    {"name": "no-sampling-params", "stream": False, "kwargs": {"messages": [{"role": "user", "content": "Say hi."}]}},
    {
        "name": "tool-required",
        "stream": False,
        "kwargs": {
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "sampling_params": {"strategy": "greedy", "max_tokens": 64},
        },
    },
    {
        "name": "tool-required-stream",
        "stream": True,
        "kwargs": {
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "sampling_params": {"strategy": "greedy", "max_tokens": 64},
        },
    },
    {
        "name": "image",
        "stream": False,
        "kwargs": {
            "messages": [
                {"role": "user", "content": [{"image": "https://example.com/boardwalk.jpg"}, "What is in this image?"]}
            ]
        },
    },
    {"name": "bad-strategy", "stream": False, "kwargs": {"messages": FRANCE, "sampling_params": {"strategy": "beam"}}},
]


@cache
def _run(base_url: str) -> dict[str, dict[str, Any]]:
    python = llama_stack_client_python()
    done = subprocess.run(
        [str(python), str(CALLS), base_url, SMOLLM2],
        input=json.dumps(SPECS), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["name"]: r for r in json.loads(done.stdout)}
    for name, result in results.items():
        print(f"\nllama-stack-client 0.0.40 {base_url} {name}: {result['seconds']:.2f} s")
    return results


@pytest.fixture(params=["", "/ls"], ids=["root", "ls"])
def results(request: pytest.FixtureRequest, smollm2: Server) -> dict[str, dict[str, Any]]:
    """Every call of SPECS made once per base path (the client joins its paths to base_url's)."""
    return _run(smollm2.url + request.param)


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["event_type"] == "progress" and isinstance(e["delta"], str))


def test_string_strategy_is_greedy(results: dict[str, dict[str, Any]]) -> None:
    """The call that was a 400 AttributeError; greedy must mean the same answer as the object form."""
    message = results["greedy-string"]["response"]["completion_message"]
    assert message["role"] == "assistant"
    assert message["content"].strip()
    assert message["stop_reason"] in ("end_of_turn", "out_of_tokens")
    assert message["tool_calls"] == []
    assert results["greedy-object"]["response"]["completion_message"]["content"] == message["content"]


@pytest.mark.parametrize("name", ["greedy-string-stream", "greedy-object-stream"])
def test_streams_carry_the_same_greedy_answer(results: dict[str, dict[str, Any]], name: str) -> None:
    events = results[name]["events"]
    assert events[0]["event_type"] == "start"
    assert events[-1]["event_type"] == "complete"
    assert events[-1]["stop_reason"] in ("end_of_turn", "out_of_tokens")
    assert _text(events) == results["greedy-string"]["response"]["completion_message"]["content"]


def test_top_p_string_strategy_samples(results: dict[str, dict[str, Any]]) -> None:
    assert results["top-p-string"]["response"]["completion_message"]["content"]


def test_no_sampling_params_ends_by_itself(results: dict[str, dict[str, Any]]) -> None:
    """Without max_tokens the manifest's default applies (this call took 152 s before it existed)."""
    result = results["no-sampling-params"]
    assert result["response"]["completion_message"]["stop_reason"] in ("end_of_turn", "out_of_tokens")
    assert result["seconds"] < 30


def test_a_required_tool_is_called_with_object_arguments(results: dict[str, dict[str, Any]]) -> None:
    message = results["tool-required"]["response"]["completion_message"]
    assert message["stop_reason"] == "end_of_message"
    [call] = message["tool_calls"]
    assert call["tool_name"] == "get_weather"
    assert isinstance(call["arguments"], dict)
    assert "city" in call["arguments"]


def test_a_streamed_tool_call_arrives_whole(results: dict[str, dict[str, Any]]) -> None:
    events = results["tool-required-stream"]["events"]
    calls = [e["delta"]["content"] for e in events if isinstance(e["delta"], dict)]
    assert [c["tool_name"] for c in calls] == ["get_weather"]
    assert "city" in calls[0]["arguments"]
    assert events[-1]["stop_reason"] == "end_of_message"


@pytest.mark.parametrize(
    ("name", "param", "words"),
    [("image", "messages.0.content.0", "text-only"), ("bad-strategy", "sampling_params.strategy", "greedy")],
)
def test_errors_name_the_field(results: dict[str, dict[str, Any]], name: str, param: str, words: str) -> None:
    error = results[name]["error"]
    assert error["status"] == 400
    body = error["body"]["error"]
    assert body["param"] == param
    assert words in body["message"]
    assert "AttributeError" not in body["message"]
