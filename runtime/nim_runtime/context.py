"""The per-process runtime context routes reach through ``request.app.state.runtime``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from nim_runtime.config import RuntimeConfig
from nim_runtime.errors import ApiError
from nim_runtime.lifecycle import Lifecycle, Phase
from nim_runtime.metrics import RuntimeMetrics
from nim_runtime.plan import ServingPlan

if TYPE_CHECKING:  # the engine module imports vLLM; routes must import without it
    from nim_runtime.engine import Engine


@dataclass(kw_only=True)
class RuntimeContext:
    config: RuntimeConfig
    plan: ServingPlan
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    metrics: RuntimeMetrics
    engine: Engine | None = None


def runtime(request: Request) -> RuntimeContext:
    ctx: RuntimeContext = request.app.state.runtime
    return ctx


def require_engine(request: Request) -> Engine:
    """The engine, or a 503 while it loads (the middleware normally answers first)."""
    ctx = runtime(request)
    if ctx.engine is None or ctx.lifecycle.phase is Phase.LOADING:
        raise ApiError(503, "The model is still loading; retry when /v1/health/ready answers 200")
    return ctx.engine


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx saying what is wrong with it.

    The size is checked again here because a chunked body has no Content-Length for the middleware.
    ``NaN`` and ``Infinity`` are refused: Python's parser accepts them, but they are not JSON, and a NaN
    passes every range check vLLM makes (all comparisons with it are false).
    """
    limit = runtime(request).config.max_request_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "The request body is empty; send a JSON object")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"The request body must be a JSON object, not a {type(body).__name__}")
    return body


def _refuse_constant(name: str) -> Any:
    raise ApiError(400, f"The request body is not valid JSON: {name} is not a JSON number; send a finite number")
