"""Health that asks the engine: a hung engine core makes the pod unready, not live, and exit non-zero;
a normal SIGTERM shutdown logs no ERROR (alerting pages on those).

A dead engine core (killed) is covered by test_engine_death.py. Both tests here start their own tiny
server, since they end it.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.runtime.conftest import TINY, serving, start_tiny_server
from tests.runtime.test_engine_death import engine_core

pytestmark = pytest.mark.runtime

STALL_TIMEOUT = 3
#: A log line at ERROR or above, in our format ("... ERROR logger: ...") or vLLM's ("ERROR 12-03 ...").
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def test_hung_engine_is_neither_ready_nor_live_and_the_server_exits_non_zero(
    runtime_tmp: Path, tiny_model: Path
) -> None:
    server = start_tiny_server(runtime_tmp, "tiny-hung", tiny_model, NIM_ENGINE_STALL_TIMEOUT=str(STALL_TIMEOUT))
    with serving(server), httpx.Client(base_url=server.url, timeout=5) as client:
        answer = client.post("/v1/completions", json={"model": TINY, "prompt": "hi", "max_tokens": 2})
        assert answer.status_code == 200
        core = engine_core(server)
        descendants = psutil.Process(server.proc.pid).children(recursive=True)
        core.suspend()  # SIGSTOP: alive, holding its sockets, answering nothing
        stopped = time.monotonic()
        try:
            ready = client.get("/v1/health/ready")
            while ready.status_code == 200 and time.monotonic() - stopped < STALL_TIMEOUT + 10:
                time.sleep(0.1)
                ready = client.get("/v1/health/ready")
            to_unready = time.monotonic() - stopped
            assert ready.status_code == 503, ready.text
            assert "hung" in ready.json()["message"]
            assert client.get("/v1/health/live").status_code == 503
            refused = client.post("/v1/completions", json={"model": TINY, "prompt": "hi", "max_tokens": 2})
            assert refused.status_code == 503
            code = server.proc.wait(30)
        finally:
            for proc in descendants:  # SIGCONT, so nothing stays stopped if the server did not kill it
                if proc.is_running():
                    proc.resume()
            _, lingering = psutil.wait_procs(descendants, timeout=15)
            for proc in lingering:
                proc.kill()
    print(f"SIGSTOP -> ready 503 after {to_unready:.1f} s; exit code {code}")
    assert to_unready >= STALL_TIMEOUT - 0.5  # it waited for the heartbeat, not less
    assert code == 1
    assert "did not answer a heartbeat" in server.log.read_text(errors="replace")


def test_sigterm_after_serving_exits_0_and_logs_no_error(runtime_tmp: Path, tiny_model: Path) -> None:
    server = start_tiny_server(runtime_tmp, "tiny-clean-exit", tiny_model)
    with serving(server):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
            with client.stream("POST", "/v1/completions", json={"model": TINY, "prompt": "a", "max_tokens": 8,
                                                                "stream": True}) as stream:  # fmt: skip
                assert sum(1 for line in stream.iter_lines() if line.startswith("data: ")) > 1
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
    log = server.log.read_text(errors="replace")
    errors = [line for line in log.splitlines() if ERROR_LINE.search(line)]
    assert code == 0
    assert "Drained; shutting down" in log
    assert errors == [], "\n".join(errors)
