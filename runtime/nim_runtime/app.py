"""The app factory: routes, error handlers and the gatekeeper middleware around one runtime context.

The engine is not part of the app: it is loaded in the background (see :mod:`nim_runtime.loader`)
while the app already answers health probes.
"""

from __future__ import annotations

from fastapi import FastAPI

from nim_runtime.context import RuntimeContext
from nim_runtime.errors import install_error_handlers
from nim_runtime.middleware import Gatekeeper
from nim_runtime.routes import llamastack, management, openai
from nim_runtime.version import runtime_version


def create_app(ctx: RuntimeContext) -> FastAPI:
    app = FastAPI(
        title="nim-runtime",
        version=runtime_version(),
        description="A NIM-compatible inference server backed by vLLM.",
    )
    app.state.runtime = ctx
    app.include_router(management.router)
    app.include_router(openai.router)
    app.include_router(llamastack.router)
    install_error_handlers(app)
    app.add_middleware(
        Gatekeeper,
        lifecycle=ctx.lifecycle,
        metrics=ctx.metrics,
        api_key=ctx.config.api_key,
        max_request_bytes=ctx.config.max_request_bytes,
    )
    return app
