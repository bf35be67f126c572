"""Fixtures for tests that talk to the local Kubernetes control plane in tests/cluster/.

The control plane is a set of real processes (etcd, kube-apiserver, controller-manager, scheduler, kwok),
so it is started at most once per session. If `make cluster-up` already started it, `up.sh` is a no-op
and the session only pays for a /readyz check.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO / "tests" / "cluster"
STATE = Path(os.environ.get("NIM_CLUSTER_STATE", REPO / ".cache" / "cluster"))
# A cold start may have to build the binaries first (tens of minutes on two cores).
UP_TIMEOUT_S = 3600


def free_port() -> int:
    """A local TCP port nobody listens on right now (for servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def go_module_file(module: str, version: str, path: str) -> Path:
    """A file shipped in a Go module (a project's own CRD, say), from the module proxy into Go's module
    cache: what the project publishes, not a copy of ours. Cached after the first download."""
    go = shutil.which("go") or "/usr/local/go/bin/go"  # not always on PATH outside login shells
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    if proc.returncode != 0:
        pytest.fail(f"go mod download {module}@{version} failed:\n{proc.stdout}\n{proc.stderr}")
    found = Path(json.loads(proc.stdout)["Dir"]) / path
    if not found.is_file():
        pytest.fail(f"{module}@{version} has no {path}")
    return found


@dataclass(frozen=True)
class Cluster:
    """Handle on the running control plane: the admin kubeconfig and a client built from it."""

    kubeconfig: Path
    api: client.ApiClient


def _apiserver_running() -> bool:
    """Whether an apiserver from an earlier `up.sh` is alive, so the session knows it did not start it."""
    try:
        os.kill(int((STATE / "pids" / "apiserver.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Bring the control plane up once per session and hand out an admin client.

    A cluster this session started is stopped at the end, so a plain `pytest` leaves no daemons behind;
    one started by `make cluster-up` (or kept with NIM_CLUSTER_KEEP=1) is left running for the next run.
    Under xdist every worker shares one cluster, so none of them stops it.
    """
    started_here = not _apiserver_running()
    proc = subprocess.run(
        [str(CLUSTER_DIR / "up.sh")], capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"tests/cluster/up.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    kubeconfig = STATE / "kubeconfig"
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Cluster(kubeconfig=kubeconfig, api=api)
    finally:
        api.close()
        keep = os.environ.get("NIM_CLUSTER_KEEP") == "1" or "PYTEST_XDIST_WORKER" in os.environ
        if started_here and not keep:
            subprocess.run([str(CLUSTER_DIR / "down.sh")], capture_output=True, timeout=120, check=False)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's objects; deleted afterwards.

    Deletion is not awaited: the namespace controller finishes it in the background.
    """
    core = client.CoreV1Api(cluster.api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"nim-operator.dev/test": "true"}))
    )
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as exc:
            if exc.status != 404:
                raise
