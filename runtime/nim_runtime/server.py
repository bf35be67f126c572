"""Serving: uvicorn up first, the model loading behind it, and a graceful drain on SIGTERM.

Uvicorn's own SIGTERM handling stops accepting connections at once, so Kubernetes would see refused
probes instead of a 503 and clients mid-stream would race the exit. Here SIGTERM only flips the
lifecycle to draining: readiness answers 503, new inference requests get 503, and uvicorn is asked to
exit once the in-flight requests (streams included) are done or NIM_DRAIN_TIMEOUT has passed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from nim_runtime.context import RuntimeContext
from nim_runtime.loader import load_engine

logger = logging.getLogger(__name__)

#: Seconds uvicorn gives connections still open after the drain before closing them.
CLOSE_GRACE_SECONDS = 2


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ctx: RuntimeContext) -> None:
        super().__init__(config)
        self.ctx = ctx
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM/SIGINT drains; a second SIGINT exits at once. The signal is not re-raised
        after shutdown (uvicorn's default), so a completed drain exits 0."""
        if self._drain_task is None and self._loop is not None and sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        if sig == signal.SIGINT and self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        lifecycle = self.ctx.lifecycle
        lifecycle.start_draining()
        timeout = self.ctx.config.drain_timeout
        logger.info("Draining: %d request(s) in flight, waiting up to %.0f s", lifecycle.in_flight, timeout)
        if not await lifecycle.wait_idle(timeout):
            logger.warning("Drain timeout: %d request(s) still in flight are cut off", lifecycle.in_flight)
        else:
            logger.info("Drained; shutting down")
        self.should_exit = True

    def fail(self, reason: str) -> None:
        """The model cannot load: exit non-zero so the pod restarts with the reason in its log."""
        logger.error("Model loading failed: %s", reason)
        self.ctx.lifecycle.mark_failed(reason)
        self.exit_code = 1
        self.should_exit = True


async def serve(ctx: RuntimeContext, app: object) -> int:
    """Run until drained or failed; returns the process exit code."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=ctx.config.host,
        port=ctx.config.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=CLOSE_GRACE_SECONDS,
    )
    server = DrainingServer(config, ctx)
    serve_task = asyncio.create_task(server.serve())
    while not server.started and not serve_task.done():  # noqa: ASYNC110 (uvicorn offers no event)
        await asyncio.sleep(0.02)
    load_task = asyncio.create_task(load_engine(ctx))

    def loaded(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            logger.error("Loading failed", exc_info=exc)
            server.fail(f"{type(exc).__name__}: {exc}")

    load_task.add_done_callback(loaded)
    try:
        await serve_task
    finally:
        if not load_task.done():
            load_task.cancel()
        if ctx.engine is not None:
            await asyncio.to_thread(ctx.engine.shutdown)
    if not server.started:
        return 1  # could not bind the port; uvicorn logged why
    return server.exit_code
