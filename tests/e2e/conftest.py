"""Shared helpers of the end-to-end tests on the real nodes: kubectl, manifests, finished pods.

The real nodes carry the taint ``nimoperator.dev/real-node=true:NoSchedule``; every pod here
tolerates it and pins its node, so nothing lands on a kwok node by accident.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import REPO, Cluster
from tests.operator.conftest import wait_for

KUBECTL = Path(sys.executable).parent / "kubectl"
HELM = Path(sys.executable).parent / "helm"
BASE_IMAGE = "localhost/nim-base:bookworm"
OPERATOR_IMAGE = "localhost/nim-operator:dev"
RUNTIME_IMAGE = "localhost/nim-runtime:dev"
# The node holding the runtime image (tests/cluster/lib.sh RUNTIME_NODES).
RUNTIME_NODE = "real-0"
REAL_NODE_LABEL = "nimoperator.dev/real-node"
TOLERATE_REAL = [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}]
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 2000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}
# A cold runtime image build takes minutes (vLLM, torch); an unchanged tree takes seconds.
IMAGES_TIMEOUT_S = 40 * 60


def kubectl(cluster: Cluster, *args: str, timeout: float = 60, input: str | None = None) -> str:
    proc = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def pod(name: str, node: str, command: list[str], image: str = BASE_IMAGE, **extra: Any) -> dict[str, Any]:
    """A restricted, run-once pod pinned to a real node."""
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": RESTRICTED_CONTAINER,
        **extra,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": TOLERATE_REAL,
            "securityContext": RESTRICTED_POD,
            "restartPolicy": "Never",
            "containers": [container],
        },
    }


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    kubectl(cluster, "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all(objects))


def finished_pod_logs(cluster: Cluster, namespace: str, name: str, timeout: float = 120) -> str:
    core = client.CoreV1Api(cluster.api)
    phase = wait_for(
        lambda: (p := core.read_namespaced_pod(name, namespace).status.phase) in ("Succeeded", "Failed") and p,
        timeout=timeout,
        what=f"pod {name} to finish",
    )
    logs = kubectl(cluster, "-n", namespace, "logs", name)
    assert phase == "Succeeded", f"{name} ended {phase}:\n{logs}"
    return logs


@pytest.fixture(scope="session")
def images(cluster: Cluster) -> str:
    """localhost/nim-operator:dev and localhost/nim-runtime:dev in the real nodes (make images)."""
    proc = subprocess.run(
        [str(REPO / "tests" / "cluster" / "images.sh")],
        capture_output=True,
        text=True,
        timeout=IMAGES_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"tests/cluster/images.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    print(proc.stdout)
    return proc.stdout
