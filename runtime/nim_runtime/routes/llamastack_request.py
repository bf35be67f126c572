"""A Llama Stack ``chat_completion`` request as the OpenAI chat request vLLM answers (pure, no I/O).

Clients send more than one generation of the Llama Stack API to these paths, so both shapes are read:

- ``sampling_params.strategy`` as a string with ``temperature``/``top_p``/``top_k`` beside it
  (llama-stack-client 0.0.x, the releases whose ``inference.chat_completion`` posts here), or as an
  object ``{"type": "greedy" | "top_p" | "top_k", ...}`` holding them (later releases);
- ``model`` (0.0.x) or ``model_id``;
- image items as ``{"image": "<url>"}`` (0.0.x), ``{"image": {"uri": ...}}`` (NIM's documentation),
  or ``{"type": "image", "image": {"url": {"uri": ...}} | {"data": <base64>}}`` (later releases).

Every shape error is a 400 whose ``param`` is the field's path in the Llama Stack request
(``sampling_params.strategy.type``, ``messages.0.content.1``), never an exception's text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nim_runtime.errors import ApiError

#: Llama Stack roles -> OpenAI roles (``ipython`` is a tool's answer).
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "tool", "tool": "tool"}
STRATEGIES = ("greedy", "top_p", "top_k")

_JSON_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer",
               "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
               "list": "array", "array": "array", "dict": "object", "object": "object"}  # fmt: skip


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, f"must be an object, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), "a number"
    )


def _number(params: dict[str, Any], key: str, param: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{param}.{key}", f"must be a number, not {_kind(value)}")
    return float(value)


def _integer(params: dict[str, Any], key: str, param: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{param}.{key}", f"must be an integer, not {_kind(value)}")
    return value


def to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request for a Llama Stack ``chat_completion`` body."""
    model = body.get("model_id", body.get("model"))
    if not isinstance(model, str) or not model:
        raise _bad("model_id", "is required (or model, as llama-stack-client 0.0.x sends it) and must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be a boolean, not {_kind(stream)}")
    request: dict[str, Any] = {
        "model": model,
        "messages": [to_openai_message(m, f"messages.{i}") for i, m in enumerate(messages)],
        "stream": stream,
    }
    request |= sampling(body.get("sampling_params"))
    request |= _tools(body)
    if (logprobs := body.get("logprobs")) is not None:
        top_k = _integer(_object(logprobs, "logprobs"), "top_k", "logprobs")
        request |= {"logprobs": True, "top_logprobs": 1 if top_k is None else top_k}
    if (fmt := body.get("response_format")) is not None:
        request["response_format"] = _response_format(_object(fmt, "response_format"))
    return request


def to_openai_message(message: Any, param: str) -> dict[str, Any]:
    """One Llama Stack message (user, system, assistant with tool calls, or a tool's answer)."""
    message = _object(message, param)
    given = message.get("role", "user")
    role = ROLES.get(given) if isinstance(given, str) else None
    if role is None:
        raise _bad(f"{param}.role", f"must be one of {', '.join(ROLES)}, not {given!r}")
    if "content" not in message:
        raise _bad(f"{param}.content", "is required")
    content = to_openai_content(message["content"], f"{param}.content")
    if role == "user" and message.get("context") is not None:
        # 0.0.x's retrieval context: more user content after the question.
        context = to_openai_content(message["context"], f"{param}.context")
        content = _parts(content) + _parts(context)
    entry: dict[str, Any] = {"role": role, "content": content}
    if role == "tool":
        call_id = message.get("call_id", message.get("tool_call_id"))
        if not isinstance(call_id, str):
            raise _bad(f"{param}.call_id", "a tool's answer needs the call_id of the call it answers")
        entry["tool_call_id"] = call_id
    if role == "assistant" and message.get("tool_calls"):
        calls = message["tool_calls"]
        if not isinstance(calls, list):
            raise _bad(f"{param}.tool_calls", f"must be a list, not {_kind(calls)}")
        entry["tool_calls"] = [_tool_call(c, f"{param}.tool_calls.{j}") for j, c in enumerate(calls)]
    return entry


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _tool_call(call: Any, param: str) -> dict[str, Any]:
    call = _object(call, param)
    name = call.get("tool_name")
    if not isinstance(name, str):
        raise _bad(f"{param}.tool_name", "is required and must be a string")
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {"id": str(call.get("call_id", "")), "type": "function", "function": {"name": name, "arguments": arguments}}


def to_openai_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """Llama Stack content (a string, one item, or a list of strings and items) as OpenAI content."""
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    return [_content_item(item, f"{param}.{i}" if isinstance(content, list) else param) for i, item in enumerate(items)]


def _content_item(item: Any, param: str) -> dict[str, Any]:
    match item:
        case str():
            return {"type": "text", "text": item}
        case {"text": str(text)}:
            return {"type": "text", "text": text}
        case {"image": image}:
            return {"type": "image_url", "image_url": {"url": _image_url(image, param)}}
        case {"type": "image_url", "image_url": {"url": str(url)}}:
            return {"type": "image_url", "image_url": {"url": url}}
    raise _bad(
        param,
        "content items must be strings, {'text': ...}, {'image': '<url>'}, {'image': {'uri': ...}} "
        "or {'type': 'image', 'image': {'url': {'uri': ...}} | {'data': <base64>}}",
    )


def _image_url(image: Any, param: str) -> str:
    """The URL of any of the image item shapes (see the module docstring)."""
    match image:
        case str():
            return image
        case {"uri": str(uri)} | {"url": str(uri)} | {"url": {"uri": str(uri)}}:
            return uri
        case {"data": str(data)}:
            return data if data.startswith("data:") else f"data:image/jpeg;base64,{data}"
    raise _bad(f"{param}.image", "an image needs a URL: '<url>', {'uri': ...}, {'url': {'uri': ...}} or {'data': ...}")


def sampling(params: Any) -> dict[str, Any]:
    """OpenAI sampling fields for ``sampling_params``, in either strategy shape; absent keeps the defaults."""
    if params is None:
        return {}
    params = _object(params, "sampling_params")
    out: dict[str, Any] = {}
    # 0.0.x sends max_tokens 0 for "unset".
    if max_tokens := _integer(params, "max_tokens", "sampling_params"):
        out["max_tokens"] = max_tokens
    if (penalty := _number(params, "repetition_penalty", "sampling_params")) is not None:
        out["repetition_penalty"] = penalty
    strategy = params.get("strategy")
    # The knobs sit in the strategy object (later releases) or beside a string strategy (0.0.x).
    sources: list[tuple[str, dict[str, Any]]] = [("sampling_params", params)]
    if isinstance(strategy, dict):
        sources.insert(0, ("sampling_params.strategy", strategy))
        kind, kind_param = strategy.get("type"), "sampling_params.strategy.type"
    elif strategy is None or isinstance(strategy, str):
        kind, kind_param = strategy, "sampling_params.strategy"
    else:
        raise _bad("sampling_params.strategy", f"must be a string or an object, not {_kind(strategy)}")
    if kind is not None and kind not in STRATEGIES:
        raise _bad(kind_param, f"must be one of {', '.join(STRATEGIES)}, not {kind!r}")

    def knob(key: str, read: Callable[[dict[str, Any], str, str], float | int | None]) -> float | int | None:
        return next((v for where, src in sources if (v := read(src, key, where)) is not None), None)

    given = {
        "temperature": knob("temperature", _number),
        "top_p": knob("top_p", _number),
        "top_k": knob("top_k", _integer),
    }
    # Greedy is temperature 0 whatever else is sent; a named strategy uses its own knobs (and the
    # temperature); no strategy passes on whatever knobs were given.
    wanted = {"greedy": (), "top_p": ("temperature", "top_p"), "top_k": ("temperature", "top_k")}.get(
        kind or "", tuple(given)
    )
    out |= {k: v for k, v in given.items() if k in wanted and v is not None}
    if kind == "greedy":
        out["temperature"] = 0.0
    return out


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if not tools:
        return {}
    if not isinstance(tools, list):
        raise _bad("tools", f"must be a list, not {_kind(tools)}")
    out: dict[str, Any] = {"tools": [_tool(t, f"tools.{i}") for i, t in enumerate(tools)]}
    config = body.get("tool_config")
    choice = body.get("tool_choice")
    if choice is None and config is not None:
        choice = _object(config, "tool_config").get("tool_choice")
    if choice is None:
        return out
    if not isinstance(choice, str):
        raise _bad("tool_choice", f"must be 'auto', 'required', 'none' or a tool name, not {_kind(choice)}")
    if choice not in ("auto", "required", "none"):
        choice = {"type": "function", "function": {"name": choice}}
    return out | {"tool_choice": choice}


def _tool(tool: Any, param: str) -> dict[str, Any]:
    """A Llama Stack tool definition (``parameters`` by name, or a JSON ``input_schema``) as an OpenAI tool."""
    tool = _object(tool, param)
    name = tool.get("tool_name", tool.get("name"))
    if not isinstance(name, str) or not name:
        raise _bad(f"{param}.tool_name", "is required and must be a string")
    schema = tool.get("input_schema")
    if schema is None:
        params = _object(tool.get("parameters") or {}, f"{param}.parameters")
        properties: dict[str, Any] = {}
        required = []
        for key, spec in params.items():
            spec = _object(spec, f"{param}.parameters.{key}")
            kind = spec.get("param_type", "string")
            if not isinstance(kind, str):
                raise _bad(f"{param}.parameters.{key}.param_type", f"must be a string, not {_kind(kind)}")
            properties[key] = {"type": _JSON_TYPES.get(kind, "string"), "description": str(spec.get("description", ""))}
            if spec.get("required", True):
                required.append(key)
        schema = {"type": "object", "properties": properties, "required": required}
    description = tool.get("description", "")
    return {"type": "function", "function": {"name": name, "description": str(description), "parameters": schema}}


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    match fmt.get("type"):
        case "json_schema":
            schema = _object(fmt.get("json_schema"), "response_format.json_schema")
            return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
        case "json_object":
            return {"type": "json_object"}
    raise _bad("response_format.type", f"must be 'json_schema' or 'json_object', not {fmt.get('type')!r}")
