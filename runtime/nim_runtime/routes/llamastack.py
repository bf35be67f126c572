"""The Llama Stack chat endpoint (``/inference/chat_completion``, also under ``/ls``).

It translates the Llama Stack request into an OpenAI chat request, lets the same vLLM chat handler
answer, and translates back: ``completion_message`` with ``stop_reason`` (``end_of_turn``,
``out_of_tokens`` or ``end_of_message`` after tool calls). Streaming answers Llama Stack's
``start``/``progress``/``complete`` events as server-sent events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from nim_runtime.content import check_chat_images
from nim_runtime.context import read_json_object, require_engine, runtime
from nim_runtime.errors import ApiError

router = APIRouter()

#: OpenAI finish_reason -> Llama Stack stop_reason.
STOP_REASONS = {"stop": "end_of_turn", "length": "out_of_tokens", "tool_calls": "end_of_message"}


def to_openai_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """Llama Stack content (a string, one item, or a list of strings and items) as OpenAI content."""
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    parts: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        match item:
            case str():
                parts.append({"type": "text", "text": item})
            case {"text": str(text)}:
                parts.append({"type": "text", "text": text})
            case {"image": dict(image)}:
                parts.append({"type": "image_url", "image_url": {"url": _image_url(image, f"{param}.{i}")}})
            case _:
                raise ApiError(
                    400,
                    f"{param}.{i}: content items must be strings, {{'text': ...}} or {{'image': {{'uri': ...}}}}",
                    param=f"{param}.{i}",
                )
    return parts


def _image_url(image: dict[str, Any], param: str) -> str:
    url = image.get("url", image)
    if isinstance(url, dict):
        url = url.get("uri")
    if isinstance(url, str):
        return url
    data = image.get("data")
    if isinstance(data, str):
        return f"data:image/jpeg;base64,{data}"
    raise ApiError(400, f"{param}: an image item needs {{'uri': ...}} or base64 'data'", param=param)


def to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request for a Llama Stack ``chat_completion`` request."""
    model = body.get("model_id") or body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model_id (or model) is required and must be a string", param="model_id")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    converted = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "content" not in message:
            raise ApiError(400, f"messages.{i} must be an object with role and content", param=f"messages.{i}")
        role = {"ipython": "tool"}.get(message.get("role", "user"), message.get("role", "user"))
        entry: dict[str, Any] = {"role": role, "content": to_openai_content(message["content"], f"messages.{i}")}
        if role == "tool" and "call_id" in message:
            entry["tool_call_id"] = message["call_id"]
        converted.append(entry)
    request: dict[str, Any] = {"model": model, "messages": converted, "stream": bool(body.get("stream"))}
    request |= _sampling(body.get("sampling_params") or {})
    if tools := body.get("tools"):
        request["tools"] = [_tool(t) for t in tools]
        choice = body.get("tool_choice") or (body.get("tool_config") or {}).get("tool_choice")
        if isinstance(choice, str) and choice not in ("auto", "required", "none"):
            choice = {"type": "function", "function": {"name": choice}}
        if choice:
            request["tool_choice"] = choice
    if isinstance(body.get("logprobs"), dict):
        request["logprobs"] = True
        request["top_logprobs"] = int(body["logprobs"].get("top_k", 1))
    if (fmt := body.get("response_format")) and fmt.get("type") == "json_schema":
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt.get("json_schema")},
        }
    return request


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params.get("max_tokens"):
        out["max_tokens"] = params["max_tokens"]
    if "repetition_penalty" in params:
        out["repetition_penalty"] = params["repetition_penalty"]
    strategy = params.get("strategy") or {}
    match strategy.get("type"):
        case "greedy":
            out["temperature"] = 0.0
        case "top_p":
            out |= {k: strategy[k] for k in ("temperature", "top_p") if k in strategy}
        case "top_k":
            out["top_k"] = strategy.get("top_k")
    return out


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Llama Stack tool definition as an OpenAI function tool."""
    name = tool.get("tool_name") or tool.get("name")
    schema = tool.get("input_schema")
    if schema is None:
        params = tool.get("parameters") or {}
        schema = {
            "type": "object",
            "properties": {
                p: {
                    "type": _JSON_TYPES.get(d.get("param_type", "string"), "string"),
                    "description": d.get("description", ""),
                }
                for p, d in params.items()
            },
            "required": [p for p, d in params.items() if d.get("required", True)],
        }
    return {
        "type": "function",
        "function": {"name": name, "description": tool.get("description", ""), "parameters": schema},
    }


_JSON_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer",
               "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
               "list": "array", "array": "array", "dict": "object", "object": "object"}  # fmt: skip


def from_openai_response(response: dict[str, Any]) -> dict[str, Any]:
    """The Llama Stack response for an OpenAI chat completion."""
    choice = response["choices"][0]
    message = choice.get("message") or {}
    tool_calls = [
        {"call_id": c.get("id"), "tool_name": c["function"]["name"], "arguments": c["function"]["arguments"]}
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


async def _stream_events(chunks: AsyncIterable[Any]) -> AsyncIterator[str]:
    """Llama Stack stream events from vLLM's OpenAI SSE chunks."""

    def event(kind: str, text: str = "", **extra: Any) -> str:
        payload = {"event": {"event_type": kind, "delta": {"type": "text", "text": text}, **extra}}
        return f"data: {json.dumps(payload)}\n\n"

    yield event("start")
    stop_reason = "end_of_turn"
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
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    yield event("progress", text)
                if choice.get("finish_reason"):
                    stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_of_turn")
    yield event("complete", stop_reason=stop_reason)


async def chat_completion(request: Request) -> Response:
    body = await read_json_object(request)
    engine = require_engine(request)
    try:
        openai_request = to_openai_request(body)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        # The translation reads client JSON only, so a wrong shape deep inside (sampling_params as a
        # string, a tool as a number) is the client's error, not ours (each such case was a 500).
        raise ApiError(400, f"Invalid Llama Stack chat_completion request: {type(exc).__name__}: {exc}") from None
    manifest = runtime(request).plan.manifest
    check_chat_images(openai_request["messages"], multimodal=manifest.multimodal, model=openai_request["model"])
    response = await engine.chat(openai_request, request)
    if isinstance(response, StreamingResponse):
        return StreamingResponse(_stream_events(response.body_iterator), media_type="text/event-stream")
    if response.status_code != 200:
        return response
    return JSONResponse(from_openai_response(json.loads(bytes(response.body))))


#: The request body as OpenAPI shows it: the common fields, loosely (the translation checks the rest).
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_id", "messages"],
    "properties": {
        "model_id": {"type": "string"},
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "ipython"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {}}, {"type": "object"}]},
                    "call_id": {"type": "string"},
                },
            },
        },
        "sampling_params": {
            "type": "object",
            "properties": {
                "max_tokens": {"type": "integer"},
                "repetition_penalty": {"type": "number"},
                "strategy": {"type": "object", "properties": {"type": {"enum": ["greedy", "top_p", "top_k"]}}},
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
