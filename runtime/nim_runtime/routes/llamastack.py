"""The Llama Stack chat endpoint (``/inference/chat_completion``, also under ``/ls``).

The request is translated into an OpenAI chat request (:mod:`.llamastack_request`, which reads both
generations of the request shape), the same vLLM chat handler answers, and the answer is translated
back: ``completion_message`` with ``stop_reason`` (``end_of_turn``, ``out_of_tokens``, or
``end_of_message`` after tool calls) and ``tool_calls`` whose ``arguments`` are an object. Streaming
answers server-sent ``start``/``progress``/``complete`` events whose ``delta`` is the text itself, or a
tool call ``{"content": <call>, "parse_status": "success"}``: the shape llama-stack-client 0.0.x, the
releases that post to these paths, reads (its event logger prints ``delta`` as is).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from nim_runtime.content import check_chat_images
from nim_runtime.context import read_json_object, require_engine, runtime
from nim_runtime.errors import error_response
from nim_runtime.routes.llamastack_request import to_openai_request

router = APIRouter()

#: OpenAI finish_reason -> Llama Stack stop_reason.
STOP_REASONS = {"stop": "end_of_turn", "length": "out_of_tokens", "tool_calls": "end_of_message"}
#: vLLM names the OpenAI field in an error's param; the client sent it under another name.
PARAMS = {
    "model": "model_id",
    "max_tokens": "sampling_params.max_tokens",
    "max_completion_tokens": "sampling_params.max_tokens",
    "temperature": "sampling_params.temperature",
    "top_p": "sampling_params.top_p",
    "top_k": "sampling_params.top_k",
    "repetition_penalty": "sampling_params.repetition_penalty",
    "top_logprobs": "logprobs.top_k",
    "tool_choice": "tool_choice",
}


def _tool_call(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    """A Llama Stack tool call: ``arguments`` is an object (the raw text if the model wrote no JSON object)."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        parsed = arguments
    return {"call_id": call_id or "", "tool_name": name, "arguments": parsed if isinstance(parsed, dict) else arguments}


def from_openai_response(response: dict[str, Any]) -> dict[str, Any]:
    """The Llama Stack response for an OpenAI chat completion."""
    choice = response["choices"][0]
    message = choice.get("message") or {}
    tool_calls = [
        _tool_call(c.get("id"), c["function"]["name"], c["function"].get("arguments") or "")
        for c in message.get("tool_calls") or []
    ]
    logprobs = None
    if choice.get("logprobs") and choice["logprobs"].get("content"):
        logprobs = [
            {"logprobs_by_token": {t["token"]: t["logprob"] for t in (entry.get("top_logprobs") or [entry])}}
            for entry in choice["logprobs"]["content"]
        ]
    return {
        "completion_message": {
            "role": "assistant",
            "content": message.get("content") or "",
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_of_turn"),
            "tool_calls": tool_calls,
        },
        "logprobs": logprobs,
    }


def _event(kind: str, delta: Any = "", **extra: Any) -> str:
    return f"data: {json.dumps({'event': {'event_type': kind, 'delta': delta, **extra}})}\n\n"


async def _stream_events(chunks: AsyncIterable[Any]) -> AsyncIterator[str]:
    """Llama Stack stream events from vLLM's OpenAI SSE chunks.

    Tool calls arrive from vLLM in fragments (name first, then pieces of the arguments); they are
    gathered and sent whole, once each, before ``complete``.
    """
    yield _event("start")
    stop_reason = "end_of_turn"
    calls: dict[int, dict[str, str]] = {}
    buffer = ""
    async for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else str(chunk)
        *complete, buffer = buffer.split("\n\n")
        for line in complete:
            data = line.removeprefix("data: ").strip()
            if not data or data == "[DONE]":
                continue
            parsed = json.loads(data)
            if "error" in parsed:
                yield f"data: {json.dumps(parsed)}\n\n"
                continue
            for choice in parsed.get("choices", []):
                delta = choice.get("delta") or {}
                if text := delta.get("content"):
                    yield _event("progress", text)
                for piece in delta.get("tool_calls") or []:
                    call = calls.setdefault(piece.get("index", 0), {"id": "", "name": "", "arguments": ""})
                    call["id"] = piece.get("id") or call["id"]
                    function = piece.get("function") or {}
                    call["name"] += function.get("name") or ""
                    call["arguments"] += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_of_turn")
    for call in calls.values():
        done = _tool_call(call["id"], call["name"], call["arguments"])
        yield _event("progress", {"content": done, "parse_status": "success"})
    if calls:
        stop_reason = "end_of_message"
    yield _event("complete", stop_reason=stop_reason)


def _renamed_error(response: Response) -> Response:
    """vLLM's error with ``param`` named as in the Llama Stack request."""
    try:
        error = json.loads(bytes(response.body))["error"]
    except (ValueError, KeyError, TypeError):
        return response
    param = PARAMS.get(error.get("param"), error.get("param"))
    return error_response(response.status_code, error.get("message") or "Invalid request", param=param)


async def chat_completion(request: Request) -> Response:
    body = await read_json_object(request)
    engine = require_engine(request)
    openai_request = to_openai_request(body)
    manifest = runtime(request).plan.manifest
    check_chat_images(openai_request["messages"], multimodal=manifest.multimodal, model=openai_request["model"])
    response = await engine.chat(openai_request, request)
    if isinstance(response, StreamingResponse):
        return StreamingResponse(_stream_events(response.body_iterator), media_type="text/event-stream")
    if response.status_code != 200:
        return _renamed_error(response)
    return JSONResponse(from_openai_response(json.loads(bytes(response.body))))


_KNOBS: dict[str, Any] = {"temperature": {"type": "number"}, "top_p": {"type": "number"}, "top_k": {"type": "integer"}}
_STRATEGY = {"type": "string", "enum": ["greedy", "top_p", "top_k"]}

#: The request body as OpenAPI shows it: both generations of the shape, loosely (the translation checks
#: the rest and names the field of anything it refuses).
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "anyOf": [{"required": ["model_id"]}, {"required": ["model"]}],
    "properties": {
        "model_id": {"type": "string"},
        "model": {"type": "string", "description": "llama-stack-client 0.0.x's name for model_id"},
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "ipython"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {}}, {"type": "object"}]},
                    "call_id": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
        "sampling_params": {
            "type": "object",
            "properties": {
                "max_tokens": {"type": "integer"},
                "repetition_penalty": {"type": "number"},
                "strategy": {
                    "anyOf": [
                        _STRATEGY,
                        {"type": "object", "required": ["type"], "properties": {"type": _STRATEGY, **_KNOBS}},
                    ]
                },
                **_KNOBS,
            },
        },
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "string"},
        "logprobs": {"type": "object", "properties": {"top_k": {"type": "integer"}}},
        "response_format": {"type": "object"},
        "stream": {"type": "boolean"},
    },
}
_OPENAPI = {"requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}}

router.add_api_route("/inference/chat_completion", chat_completion, methods=["POST"], openapi_extra=_OPENAPI)
router.add_api_route("/ls/inference/chat_completion", chat_completion, methods=["POST"], openapi_extra=_OPENAPI)
