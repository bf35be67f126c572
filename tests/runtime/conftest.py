"""Real servers for the runtime tests: ``python -m nim_runtime`` in a subprocess, one per model.

Servers start lazily (a session fixture per model) and are stopped with SIGTERM at the end. The model
cache is shared across runs (``NIM_TEST_CACHE``, default ``~/.cache/nim-runtime``), so SmolLM2's
one-time conversion happens at most once per machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NIM_TEST_CACHE", "~/.cache/nim-runtime")).expanduser()
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
START_TIMEOUT = float(os.environ.get("NIM_TEST_START_TIMEOUT", "600"))


@dataclass
class Server:
    """A runtime process and what was seen while it started."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started_at: float
    ready_after: float | None = None
    #: (ready status, live status) pairs polled from process start until ready.
    startup_statuses: list[tuple[int | None, int | None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
                ready = _status(client, f"{self.url}/v1/health/ready")
                live = _status(client, f"{self.url}/v1/health/live")
                self.startup_statuses.append((ready, live))
                if ready == 200:
                    self.ready_after = time.monotonic() - self.started_at
                    return
                time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def metric(server: Server, name: str) -> float:
    """The sum of a metric's samples across label sets (vLLM labels by model and engine)."""
    text = httpx.get(f"{server.url}/v1/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


def _status(client: httpx.Client, url: str) -> int | None:
    try:
        return client.get(url).status_code
    except httpx.HTTPError:
        return None


def start_server(tmp: Path, name: str, **env: str) -> Server:
    port = free_port()
    log = tmp / f"{name}.log"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")}
    full_env = {**inherited, "NIM_SERVER_PORT": str(port), "NIM_CACHE_PATH": str(CACHE), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nim_runtime"], env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    return Server(proc=proc, port=port, log=log, started_at=time.monotonic())


@pytest.fixture(scope="session")
def runtime_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nim-runtime")


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """The server once ready, stopped afterwards (also when it never became ready)."""
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smollm2(runtime_tmp: Path) -> Iterator[Server]:
    with serving(start_server(runtime_tmp, "smollm2")) as server:
        yield server


@pytest.fixture(scope="session")
def minilm(runtime_tmp: Path) -> Iterator[Server]:
    with serving(start_server(runtime_tmp, "minilm", NIM_MODEL_NAME=MINILM)) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model(runtime_tmp: Path, smollm2: Server) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (taken from the converted SmolLM2 folder)."""
    from nim_runtime.sources import smollm2_folder

    target = CACHE / "test-models" / "tiny-llama-v1"
    subprocess.run(
        [sys.executable, str(Path(__file__).with_name("tiny_model.py")), str(smollm2_folder(CACHE)), str(target)],
        check=True,
    )
    return target


#: The served name of the tiny random Llama.
TINY = "tiny-llama"
#: The engine batch and the admission limit of the `tiny_small_batch` server: small, so a handful of
#: test clients fill both.
SMALL_BATCH = 2
SMALL_QUEUE = 6


def start_tiny_server(tmp: Path, name: str, model: Path, **env: str) -> Server:
    """A tiny-model server (starts in seconds) with a 1024-token context; ``env`` adds NIM_* settings."""
    return start_server(
        tmp, name, NIM_MODEL_PATH=str(model), NIM_SERVED_MODEL_NAME=TINY, NIM_MAX_MODEL_LEN="1024", **env
    )


@pytest.fixture(scope="session")
def tiny_small_batch(runtime_tmp: Path, tiny_model: Path) -> Iterator[Server]:
    """A tiny-model server whose engine runs SMALL_BATCH sequences at once and admits SMALL_QUEUE requests.

    Shared by the fuzzing and the pressure tests; neither stops it.
    """
    server = start_tiny_server(
        runtime_tmp, "tiny-small-batch", tiny_model,
        NIM_PASSTHROUGH_ARGS=f"--max-num-seqs {SMALL_BATCH}", NIM_MAX_QUEUED_REQUESTS=str(SMALL_QUEUE),
    )  # fmt: skip
    with serving(server):
        yield server
