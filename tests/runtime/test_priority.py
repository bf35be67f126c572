"""The engine processes yield the CPU to the API process (see nim_runtime.niceness), in a real process tree."""

from __future__ import annotations

import psutil
import pytest

from nim_runtime.config import DEFAULT_ENGINE_NICENESS
from tests.runtime.conftest import Server

pytestmark = pytest.mark.runtime


def test_engine_processes_run_at_lower_priority_than_the_event_loop(smollm2: Server) -> None:
    api = psutil.Process(smollm2.proc.pid)
    engine = [p for p in api.children(recursive=True) if p.name().startswith("VLLM::")]
    names = sorted(p.name() for p in engine)
    assert any(n.startswith("VLLM::EngineCore") for n in names), names
    assert any(n.startswith("VLLM::Worker") for n in names), names
    expected = min(api.nice() + DEFAULT_ENGINE_NICENESS, 19)
    assert {p.name(): p.nice() for p in engine} == dict.fromkeys(names, expected)
    # Every thread of the worker, the OpenMP pool that does the arithmetic included, inherited it.
    worker = next(p for p in engine if p.name().startswith("VLLM::Worker"))
    thread_nices = {_thread_nice(worker.pid, t.id) for t in worker.threads()}
    assert thread_nices == {expected}
    # The API process's main thread (the event loop answering probes and streaming tokens) did not.
    assert _thread_nice(api.pid, api.pid) == api.nice() < expected


def _thread_nice(pid: int, tid: int) -> int:
    # Field 19 of /proc/<pid>/task/<tid>/stat; the command name (field 2) may hold spaces, so split after it.
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[16])
