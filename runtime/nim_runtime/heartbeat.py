"""Waiting for the engine core's heartbeat answer, counting only time this process could have seen it.

A heartbeat that times out marks the engine hung, and the pod restarts. A plain timeout also counts time
during which this process itself could not run: the whole pod suspended (SIGSTOP of its processes, a
paused VM, a checkpoint) or the event loop blocked. After such a pause the engine core, paused with it,
answers at once, yet a plain timeout would already have expired. So the wait is cut into slices, and a
slice that overran counts for at most twice what it was asked to take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

#: Seconds per slice of the wait.
SLICE_SECONDS = 1.0


async def answered_within(question: Awaitable[object], budget: float, *, slice_seconds: float = SLICE_SECONDS) -> bool:
    """Whether ``question`` completes within ``budget`` seconds of waiting this process could observe;
    its exception, if it fails, is raised. Cancelled when the budget runs out."""
    task = asyncio.ensure_future(question)
    waited = 0.0
    try:
        while True:
            started = time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=min(slice_seconds, budget - waited))
            if done:
                task.result()
                return True
            waited += min(time.monotonic() - started, 2 * slice_seconds)
            if waited >= budget:
                return False
    finally:
        task.cancel()
