"""Loading the model in the background, after the HTTP server is up.

Everything slow runs off the event loop (threads, or a child process for the one-time conversion) so
``/v1/health/live`` answers at once and ``/v1/health/ready`` tells the truth while the model loads.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
import time

from nim_runtime.context import RuntimeContext
from nim_runtime.plan import default_max_tokens, engine_argv, model_source_path

logger = logging.getLogger(__name__)


class LoadError(RuntimeError):
    pass


async def load_engine(ctx: RuntimeContext) -> None:
    """Resolve the weights, start vLLM and flip the lifecycle to ready; raises on failure."""
    started = time.monotonic()
    plan, config = ctx.plan, ctx.config
    model_dir, needs_conversion = await asyncio.to_thread(model_source_path, plan, config)
    if needs_conversion:
        await _convert_in_child(plan.manifest.name)
    logger.info("Loading %s from %s with profile %s", plan.manifest.name, model_dir, plan.profile.id)
    engine_module = await asyncio.to_thread(importlib.import_module, "nim_runtime.engine")
    args = engine_module.build_server_args(engine_argv(plan, config, model_dir))
    engine = await engine_module.Engine.start(
        args, niceness=config.engine_niceness, default_max_tokens=default_max_tokens(plan, config)
    )
    ctx.engine = engine
    ctx.lifecycle.watch_engine(lambda: engine.dead)
    if ctx.lifecycle.phase.value != "loading":  # SIGTERM arrived while loading
        return
    frozen = freeze_heap()
    ctx.lifecycle.mark_ready()
    elapsed = time.monotonic() - started
    logger.info("Ready to serve %s after %.1f s (%d objects frozen)", plan.served_name, elapsed, frozen)


def freeze_heap() -> int:
    """Move everything allocated so far out of the garbage collector's sight; returns how many objects.

    Importing vLLM and torch and starting the engine leave a large heap of long-lived objects; each full
    collection during serving would walk them all again for nothing. vLLM's own server does the same.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _convert_in_child(name: str) -> None:
    """Run the one-time conversion in a child process, whose memory is returned when it exits."""
    logger.info("Converting %s once; later starts reuse the result", name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nim_runtime", "prepare", name, env=dict(os.environ)
    )
    if await proc.wait() != 0:
        raise LoadError(f"converting {name} failed (exit code {proc.returncode}); see the log above")
