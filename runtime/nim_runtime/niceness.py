"""Running a call in a thread of lower CPU priority, so the processes it starts inherit that priority.

On Linux the nice value belongs to a thread, and a process started from a thread inherits that thread's
value. Starting the engine from a thread niced this way leaves the API process's own threads (the event
loop, which answers probes and streams tokens) at their priority, while the engine core and its workers,
which keep every core busy, yield to them. Raising the nice value needs no privilege, so this works in
a restricted pod; it cannot be lowered again without CAP_SYS_NICE, hence a thread of its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_niced(call: Callable[[], T], increment: int) -> T:
    """``call()`` in a new thread whose nice value is ``increment`` above this process's."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def set_result(value: T) -> None:
        if not result.cancelled():
            result.set_result(value)

    def set_exception(exc: BaseException) -> None:
        if not result.cancelled():
            result.set_exception(exc)

    def body() -> None:
        try:
            if increment > 0:
                # who=0 is the calling thread on Linux (per-thread nice values), not the whole process.
                os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + increment)
            value = call()
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            if not loop.is_closed():
                loop.call_soon_threadsafe(set_exception, exc)
        else:
            if not loop.is_closed():
                loop.call_soon_threadsafe(set_result, value)

    threading.Thread(target=body, name="niced-start", daemon=True).start()
    return await result
