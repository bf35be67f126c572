"""Starting something at a lower CPU priority: the thread's nice value, and what its children inherit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from nim_runtime.niceness import run_niced


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_the_call_runs_niced_and_its_children_inherit_it() -> None:
    base = _own_nice()

    def start_child() -> tuple[int, int, int]:
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return threading.get_native_id(), _own_nice(), int(child.stdout)

    thread_id, thread_nice, child_nice = asyncio.run(run_niced(start_child, 5))
    assert thread_id != threading.get_native_id()
    assert thread_nice == child_nice == min(base + 5, 19)
    assert _own_nice() == base  # the caller keeps its priority


def test_zero_leaves_the_priority_alone() -> None:
    assert asyncio.run(run_niced(_own_nice, 0)) == _own_nice()


def test_the_calls_exception_reaches_the_caller() -> None:
    def fail() -> None:
        raise LookupError("no engine")

    with pytest.raises(LookupError, match="no engine"):
        asyncio.run(run_niced(fail, 3))
