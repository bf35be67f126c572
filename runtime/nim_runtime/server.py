"""Serving: uvicorn up first, the model loading behind it, and a graceful drain on SIGTERM.

Uvicorn's own SIGTERM handling stops accepting connections at once, so Kubernetes would see refused
probes instead of a 503 and clients mid-stream would race the exit. Here SIGTERM only flips the
lifecycle to draining: readiness answers 503, inference requests on connections opened after the
SIGTERM get 503 while those on connections already open (a client's keep-alive pool) are served, every
answer closing its connection, and uvicorn is asked to exit once the in-flight requests (streams
included) are done or NIM_DRAIN_TIMEOUT has passed.

A dead engine (its core process exited: OOM-killed, crashed) cannot come back inside this process, as
with vLLM's own server. Once the engine client reports it dead, probes and inference requests answer 503,
and the process exits with code 1 ENGINE_DEAD_EXIT_SECONDS later so the kubelet restarts the container.
A hung engine (alive, but not answering a heartbeat within NIM_ENGINE_STALL_TIMEOUT) is treated the same.

Health probes are answered by the probe door's thread, which owns the listening sockets and hands every
other connection to uvicorn on the event loop (see :mod:`nim_runtime.probe_door`); without it a probe
waits for the loop, busy with the streams' chunks after every engine step. TLS comes from vLLM's
``--ssl-*`` options in NIM_PASSTHROUGH_ARGS (see :mod:`nim_runtime.frontend`); with TLS uvicorn listens
itself and the loop answers the probes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from nim_runtime.context import RuntimeContext
from nim_runtime.loader import load_engine
from nim_runtime.probe_door import ProbeDoor, bind_listeners

logger = logging.getLogger(__name__)

#: Seconds uvicorn gives connections still open after the drain before closing them.
CLOSE_GRACE_SECONDS = 2
#: How often the engine's liveness flag is checked (a flag read; probes also check it themselves).
ENGINE_CHECK_SECONDS = 0.2
#: Seconds between noticing the engine died and starting to exit: in-flight requests get their 503s and
#: a probe arriving meanwhile sees the 503 rather than a refused connection.
ENGINE_DEAD_EXIT_SECONDS = 2.0
#: Seconds a thread runs Python before it must give the GIL to another that waits (Python's default is
#: 0.005). The probe door's thread takes the GIL three or four times per probe, each time waiting for the
#: busy event loop to give it up; at the default that alone could pass the 5 ms a probe may take. Only
#: threads that wait for the GIL make the loop give it up, and the door waits only while it answers.
#: 0.1 ms rather than 0.5 ms: health p99 under 32 streams was below 5 ms in 23 of 28 readings instead of
#: 4 of 12, with throughput unchanged (0.987 and 1.106 of vLLM's in two same-run benchmarks; README Results).
SWITCH_INTERVAL_SECONDS = 0.0001


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ctx: RuntimeContext, door: ProbeDoor | None = None) -> None:
        super().__init__(config)
        self.ctx = ctx
        self.door = door
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """With a door, uvicorn does not listen: the door accepts and hands connections to its protocol."""
        if self.door is None:
            await super().startup(sockets)
            return
        loop = asyncio.get_running_loop()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        self.servers = []  # uvicorn's shutdown closes these; the door is closed in shutdown below
        self.door.open(loop, create_protocol)
        self._log_started_message(self.door.listeners)
        self.started = True

    async def on_tick(self, counter: int) -> bool:
        if self.door is not None:
            self.door.loop_turned()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.door is not None:
            self.door.close()  # stop accepting, as uvicorn's shutdown does with its own listeners
        await super().shutdown(sockets)

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
        # uvicorn's set of open connections; each protocol knows its peer's address.
        open_clients = [c for conn in self.server_state.connections if (c := getattr(conn, "client", None))]
        if self.door is not None:
            open_clients += self.door.clients()
        lifecycle.start_draining(open_clients)
        timeout = self.ctx.config.drain_timeout
        logger.info("Draining: %d request(s) in flight, waiting up to %.0f s", lifecycle.in_flight, timeout)
        if not await lifecycle.wait_idle(timeout):
            logger.warning("Drain timeout: %d request(s) still in flight are cut off", lifecycle.in_flight)
        else:
            logger.info("Drained; shutting down")
        self.should_exit = True

    def engine_died(self) -> None:
        """The engine core is gone for good: answer 503 for a moment, then exit non-zero."""
        logger.error(
            "The vLLM engine core died or hung (see above for its cause); answering 503 and exiting with code 1 "
            "in %.0f s",
            ENGINE_DEAD_EXIT_SECONDS,
        )
        self.exit_code = 1
        asyncio.get_running_loop().call_later(ENGINE_DEAD_EXIT_SECONDS, self._exit_now)

    def _exit_now(self) -> None:
        self.should_exit = True

    def fail(self, reason: str) -> None:
        """The model cannot load: exit non-zero so the pod restarts with the reason in its log."""
        logger.error("Model loading failed: %s", reason)
        self.ctx.lifecycle.mark_failed(reason)
        self.exit_code = 1
        self.should_exit = True


async def serve(ctx: RuntimeContext, app: object) -> int:
    """Run until drained or failed; returns the process exit code."""
    try:
        server = make_server(ctx, app)
    except OSError as exc:
        logger.error("Cannot listen on %s:%d: %s", ctx.config.host, ctx.config.port, exc)
        return 1
    serve_task = asyncio.create_task(server.serve())
    while not server.started and not serve_task.done():  # noqa: ASYNC110 (uvicorn offers no event)
        await asyncio.sleep(0.02)
    load_task = asyncio.create_task(load_engine(ctx))

    watch_tasks: list[asyncio.Task[None]] = []

    def loaded(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            logger.error("Loading failed", exc_info=exc)
            server.fail(f"{type(exc).__name__}: {exc}")
            return
        watch_tasks.append(asyncio.ensure_future(_watch_engine(server)))
        if ctx.engine is not None and ctx.config.engine_stall_timeout > 0:
            watch_tasks.append(
                asyncio.ensure_future(ctx.engine.heartbeat(stall_timeout=ctx.config.engine_stall_timeout))
            )

    load_task.add_done_callback(loaded)
    try:
        await serve_task
    finally:
        if not load_task.done():
            load_task.cancel()
        for watcher in watch_tasks:
            watcher.cancel()
        if ctx.engine is not None:
            await ctx.engine.shutdown()
    if not server.started:
        return 1  # could not bind the port; uvicorn logged why
    return server.exit_code


def make_server(ctx: RuntimeContext, app: object) -> DrainingServer:
    """The server for ``app`` on the configured address, with the probe door unless TLS is on; raises
    OSError when the port cannot be had."""
    frontend = ctx.config.frontend
    tls: dict[str, Any] = {}
    if frontend.tls:
        tls = {"ssl_keyfile": frontend.ssl_keyfile, "ssl_certfile": frontend.ssl_certfile,
               "ssl_ca_certs": frontend.ssl_ca_certs, "ssl_cert_reqs": frontend.ssl_cert_reqs}  # fmt: skip
        if frontend.ssl_ciphers:
            tls["ssl_ciphers"] = frontend.ssl_ciphers
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=ctx.config.host,
        port=ctx.config.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=CLOSE_GRACE_SECONDS,
        h11_max_incomplete_event_size=frontend.h11_max_incomplete_event_size,
        **tls,
    )
    if frontend.tls:
        return DrainingServer(config, ctx)
    door = ProbeDoor(bind_listeners(ctx.config.host, ctx.config.port, config.backlog), ctx.lifecycle, ctx.metrics)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return DrainingServer(config, ctx, door)


async def _watch_engine(server: DrainingServer) -> None:
    """Until the server exits: once the engine is dead, have the server exit non-zero."""
    lifecycle = server.ctx.lifecycle
    while not server.should_exit:
        if not lifecycle.engine_alive():
            server.engine_died()
            return
        await asyncio.sleep(ENGINE_CHECK_SECONDS)
