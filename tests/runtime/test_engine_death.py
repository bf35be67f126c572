"""A dead engine core: probes and requests answer 503 at once, and the process exits non-zero.

vLLM's engine core is a child process; when it dies (OOM-killed, crashed) the engine cannot come back
inside this process, so the pod must stop looking healthy and exit for the kubelet to restart it. The
test starts its own SmolLM2 server, since it ends it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.runtime.conftest import SMOLLM2, Server, serving, start_server

pytestmark = pytest.mark.runtime

#: Seconds from the kill until every answer must be a 503, and until the process must have exited.
ANSWER_WITHIN = 10
EXIT_WITHIN = 30


@pytest.fixture
def doomed(runtime_tmp: Path) -> Iterator[Server]:
    with serving(start_server(runtime_tmp, "engine-death")) as server:
        yield server


def engine_core(server: Server) -> psutil.Process:
    """The engine core among the server's child processes (vLLM names it ``VLLM::EngineCore``)."""
    children = psutil.Process(server.proc.pid).children(recursive=True)
    cores = [p for p in children if "EngineCore" in _name(p)]
    assert len(cores) == 1, [(p.pid, _name(p)) for p in children]
    return cores[0]


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join([proc.name(), *proc.cmdline()])
    except psutil.Error:
        return ""


def test_dead_engine_answers_503_then_exits_non_zero(doomed: Server) -> None:
    chat = {"model": SMOLLM2, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with httpx.Client(base_url=doomed.url, timeout=5) as client:
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert client.get("/v1/health/live").status_code == 200

        descendants = psutil.Process(doomed.proc.pid).children(recursive=True)
        core = engine_core(doomed)
        core.kill()
        killed = time.monotonic()

        ready = client.get("/v1/health/ready")
        while ready.status_code != 503 and time.monotonic() - killed < ANSWER_WITHIN:
            time.sleep(0.02)
            ready = client.get("/v1/health/ready")
        to_ready_503 = time.monotonic() - killed
        assert ready.status_code == 503, ready.text
        assert ready.json()["object"] == "health.response"
        assert "engine" in ready.json()["message"]

        live = client.get("/v1/health/live")
        assert live.status_code == 503
        assert live.json()["object"] == "health.response"

        asked = time.monotonic()
        refused = client.post("/v1/chat/completions", json=chat)
        chat_seconds = time.monotonic() - asked
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "ServiceUnavailableError"
        assert chat_seconds < 1

    code = doomed.proc.wait(EXIT_WITHIN)
    to_exit = time.monotonic() - killed
    print(f"kill -> ready 503 {to_ready_503:.2f} s, chat 503 in {chat_seconds:.3f} s; exit {code} at {to_exit:.1f} s")
    # The worker the engine core ran notices its parent is gone and quits; make sure nothing lingers.
    _, lingering = psutil.wait_procs(descendants, timeout=15)
    for proc in lingering:
        proc.kill()
    assert code != 0
    assert "engine core died" in doomed.log.read_text(errors="replace")
