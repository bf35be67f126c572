"""The app factory: routes, error handlers and the middleware around one runtime context.

Middleware, outermost first: CORS (only with vLLM's ``--allowed-origins``, so that preflights, which
carry no credentials, are answered before the API key check), then the gatekeeper (metrics, API keys,
body size, drain, admission).

The engine is not part of the app: it is loaded in the background (see :mod:`nim_runtime.loader`)
while the app already answers health probes.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from nim_runtime.context import RuntimeContext
from nim_runtime.errors import install_error_handlers
from nim_runtime.middleware import Gatekeeper
from nim_runtime.routes import llamastack, management, openai, vllm_api
from nim_runtime.version import runtime_version


def create_app(ctx: RuntimeContext) -> FastAPI:
    frontend = ctx.config.frontend
    # vLLM's --disable-fastapi-docs: no /docs, /redoc or /openapi.json.
    docs: dict[str, Any] = {"openapi_url": None, "docs_url": None, "redoc_url": None} if frontend.disable_docs else {}
    app = FastAPI(
        title="nim-runtime",
        version=runtime_version(),
        description="A NIM-compatible inference server backed by vLLM.",
        **docs,
    )
    app.state.runtime = ctx
    app.include_router(management.router)
    app.include_router(openai.router)
    app.include_router(vllm_api.router)
    app.include_router(llamastack.router)
    install_error_handlers(app)
    app.add_middleware(
        Gatekeeper,
        lifecycle=ctx.lifecycle,
        metrics=ctx.metrics,
        api_key=ctx.config.api_keys or None,
        max_request_bytes=ctx.config.max_request_bytes,
        max_queued_requests=ctx.config.max_queued_requests,
    )
    if frontend.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(frontend.allowed_origins),
            allow_methods=list(frontend.allowed_methods),
            allow_headers=list(frontend.allowed_headers),
            allow_credentials=frontend.allow_credentials,
        )
    _describe_request_bodies(app, ctx)
    return app


def _describe_request_bodies(app: FastAPI, ctx: RuntimeContext) -> None:
    """Serve ``/openapi.json`` with vLLM's request schemas once the engine has loaded.

    FastAPI caches the first schema it builds; before the engine is up that one has no request bodies, so
    it is not cached until the engine can contribute its schemas.
    """
    plain = app.openapi
    complete: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal complete
        if complete is not None:
            return complete
        base = plain()
        app.openapi_schema = None  # let FastAPI rebuild until the engine is there
        if ctx.engine is None:
            return base
        bodies, definitions = ctx.engine.request_schemas()
        complete = with_request_bodies(base, bodies, definitions)
        return complete

    app.openapi = openapi  # type: ignore[method-assign]


def with_request_bodies(
    schema: dict[str, Any], bodies: dict[str, dict[str, Any]], definitions: dict[str, Any]
) -> dict[str, Any]:
    """A copy of an OpenAPI document whose POST operations on ``bodies``' paths take those JSON bodies."""
    result = copy.deepcopy(schema)
    components = result.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in definitions.items():
        components.setdefault(name, definition)
    for path, body in bodies.items():
        operation = result.get("paths", {}).get(path, {}).get("post")
        if operation is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return result
