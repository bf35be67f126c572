"""The heartbeat's wait: a slow answer is a hang, a pause of this process is not the engine's fault."""

from __future__ import annotations

import asyncio
import time

import pytest

from nim_runtime.heartbeat import answered_within


async def test_an_answer_in_time_counts_and_none_does_not() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.05, answer.set_result, None)
    assert await answered_within(answer, 1.0, slice_seconds=0.1)
    never: asyncio.Future[None] = loop.create_future()
    started = time.monotonic()
    assert not await answered_within(never, 0.3, slice_seconds=0.1)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert never.cancelled()


async def test_the_question_s_error_is_raised() -> None:
    failing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failing.set_exception(RuntimeError("engine dead"))
    with pytest.raises(RuntimeError, match="engine dead"):
        await answered_within(failing, 1.0)


async def test_time_this_process_was_stopped_does_not_count() -> None:
    """The event loop blocked for 1 s (as when the pod is suspended) with a 0.5 s budget: an answer that
    comes right after the pause still counts; a plain timeout would have called the engine hung."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.05, time.sleep, 1.0)
    loop.call_later(0.15, answer.set_result, None)
    assert await answered_within(answer, 0.5, slice_seconds=0.1)
