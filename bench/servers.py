"""The two servers the runtime benchmark compares, started from one environment and always stopped.

Both get the engine arguments our runtime computes (:func:`nim_runtime.plan.engine_argv`) and the
environment it prepares before importing vLLM (:func:`nim_runtime.config.apply_engine_environment`), so
the only difference left is the HTTP front end: ``nim-runtime`` or vLLM's own OpenAI server. Each
server runs in its own process group, which is what :meth:`ServerProcess.pause`, ``resume`` and ``stop``
signal (never a name).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from nim_runtime.config import RuntimeConfig, apply_engine_environment
from nim_runtime.plan import engine_argv, make_plan, model_source_path

HOST = "127.0.0.1"
#: Seconds a server may take to become ready (start-up is 1-3 minutes on 2 cores, mostly importing vLLM).
START_TIMEOUT = 600.0
#: Seconds a server gets to exit after SIGTERM before its process group is killed.
STOP_TIMEOUT = 40.0


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    """How to start one server and how to tell it is ready (every path answers 200)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_paths: tuple[str, ...]
    health_paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Our runtime and vLLM's server for the same model, engine arguments and environment."""

    ours: ServerSpec
    peer: ServerSpec
    served_name: str
    engine_args: list[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def make_comparison() -> Comparison:
    """Resolve the default model the way ``nim-runtime`` does; convert it first if the cache lacks it."""
    env = dict(os.environ)
    config = RuntimeConfig.from_env(env)
    plan = make_plan(config)
    model_dir, needs_conversion = model_source_path(plan, config)
    if needs_conversion:
        subprocess.run([sys.executable, "-m", "nim_runtime", "prepare", plan.manifest.name], check=True, env=env)
    apply_engine_environment(config, env, cpu=plan.on_cpu)
    args = engine_argv(plan, config, model_dir)
    ours_env = env | {"NIM_SERVER_HOST": HOST}
    ours = ServerSpec(
        name="ours",
        argv=[sys.executable, "-m", "nim_runtime"],
        env=ours_env,
        ready_paths=("/v1/health/ready",),
        health_paths=("/v1/health/ready", "/v1/health/live"),
    )
    peer = ServerSpec(
        name="vllm",
        argv=[sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args, "--host", HOST],
        env=env,
        ready_paths=("/health", "/v1/models"),
        health_paths=("/health",),
    )
    return Comparison(ours=ours, peer=peer, served_name=plan.served_name, engine_args=args)


class ServerProcess:
    """A started server: its base URL, process group and the seconds it took to become ready."""

    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        argv, env = list(spec.argv), dict(spec.env)
        if spec.name == "ours":
            env["NIM_SERVER_PORT"] = str(self.port)
        else:
            argv += ["--port", str(self.port)]
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.pid = self.process.pid
        self.startup_seconds: float | None = None

    def wait_ready(self) -> float:
        """Seconds from process start until every ready path answers 200; raises with the log's tail."""
        deadline = self.started + START_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.spec.name} exited with {self.process.returncode}:\n{self.log_tail()}")
                if all(_answers_200(client, path) for path in self.spec.ready_paths):
                    self.startup_seconds = time.perf_counter() - self.started
                    return self.startup_seconds
                time.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} not ready after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def pause(self) -> None:
        """Stop the whole process group (SIGSTOP): a paused server takes no CPU from the one measured."""
        _signal_group(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        _signal_group(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM the server, wait, then SIGKILL whatever is left of its process group (engine included)."""
        try:
            self.resume()  # a paused process would not act on SIGTERM
            if self.process.poll() is None:
                # Like a kubelet: SIGTERM to the server only, which shuts its engine down itself.
                self.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=STOP_TIMEOUT)
            _signal_group(self.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            self._log.close()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds used so far by the front end (the started process) and by its descendants."""
        try:
            front = psutil.Process(self.pid)
            front_times = front.cpu_times()
            children = front.children(recursive=True)
        except psutil.Error:
            return 0.0, 0.0
        engine = 0.0
        for child in children:
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            engine += times.user + times.system
        return front_times.user + front_times.system, engine

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _answers_200(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The group was created by start_new_session, so its id is the started process's pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
