"""Shared helpers of the end-to-end tests on the real nodes: kubectl, manifests, finished pods.

The real nodes carry the taint ``nimoperator.dev/real-node=true:NoSchedule``; every pod here
tolerates it and pins its node, so nothing lands on a kwok node by accident.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


GROUP, VERSION, PLURAL = "apps.nimoperator.dev", "v1alpha1", "nimservices"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The runtime alone needs about 100 s to be ready on this machine; two at once share two cores.
READY_TIMEOUT_S = 600
STORE = "/model-store"


@dataclass
class Release:
    name: str
    namespace: str
    operator_pod: str
    log: Path


def custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def nimservice(name: str, **spec: Any) -> dict[str, Any]:
    """The embedded SmolLM2 on the CPU, pinned to the node that holds the runtime image."""
    body: dict[str, Any] = {
        "image": {"repository": RUNTIME_IMAGE.split(":")[0], "tag": "dev", "pullPolicy": "Never"},
        "model": {"name": MODEL},
        "profile": "vllm-cpu-bf16",
        "nodeSelector": {"kubernetes.io/hostname": RUNTIME_NODE},
        "tolerations": TOLERATE_REAL,
        "replicas": 1,
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NIMService", "metadata": {"name": name}, "spec": body}


def read(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def patch(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom(cluster).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def state(obj: dict[str, Any]) -> str | None:
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == obj["metadata"]["generation"]
    return status.get("state") if current else None


def service_pods(cluster: Cluster, namespace: str, name: str) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/instance={name}"
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def pod_ready(p: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = READY_TIMEOUT_S) -> float:
    """Seconds until the NIMService is Ready; fails if it ever says Ready before its pods are."""
    started = time.monotonic()

    def ready() -> bool:
        obj = read(cluster, namespace, name)
        if state(obj) != "Ready":
            return False
        pods = service_pods(cluster, namespace, name)
        assert pods, f"{name} says Ready without pods"
        assert all(pod_ready(p) for p in pods), f"{name} says Ready while a pod is not"
        return True

    wait_for(ready, timeout=timeout, what=f"NIMService {name} to be Ready")
    return time.monotonic() - started


def load_seconds(log: str) -> float:
    """The runtime's own load time, from its "Ready to serve ... after N s" line."""
    found = re.search(r"Ready to serve .* after ([0-9.]+) s", log)
    assert found, log[-2000:]
    return float(found.group(1))


def warnings_for(cluster: Cluster, namespace: str, name: str) -> list[client.CoreV1Event]:
    events = client.CoreV1Api(cluster.api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=NIMService,type=Warning"
    )
    return list(events.items)


@pytest.fixture(scope="module")
def release(cluster: Cluster, images: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed as a user would, with the image built from our own Dockerfile."""
    # Unique per run: the chart's cluster-scoped objects of a run that was killed never block the next.
    name = f"nim-e2e-{secrets.token_hex(3)}"
    namespace = f"e2e-{secrets.token_hex(4)}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    values = {
        "image": {"repository": OPERATOR_IMAGE.split(":")[0], "tag": "dev", "pullPolicy": "Never"},
        "runtimeImage": {"repository": RUNTIME_IMAGE.split(":")[0], "tag": "dev"},
        "watchNamespaces": [namespace],
        "nodeSelector": {"kubernetes.io/hostname": "real-1"},
        "tolerations": TOLERATE_REAL,
        "verbose": True,
        # NIMCache progress read every second, so a download of a few seconds shows progress live.
        "cacheProgressIntervalSeconds": 1,
    }
    values_file = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    log = values_file.parent / "operator.log"
    helm = [str(HELM), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace]
    proc = subprocess.run(
        [*helm, "install", name, str(REPO / "charts" / "nim-operator"), "-f", str(values_file), "--wait=true"],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={name}").items
    if proc.returncode != 0:
        described = kubectl(cluster, "-n", namespace, "describe", "pods")
        pytest.fail(f"helm install failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{described}")
    assert len(pods) == 1, [p.metadata.name for p in pods]
    try:
        yield Release(name=name, namespace=namespace, operator_pod=pods[0].metadata.name, log=log)
    finally:
        log.write_text(kubectl(cluster, "-n", namespace, "logs", pods[0].metadata.name))
        # NIMServices first, while the operator still runs, so their children go with them.
        kubectl(cluster, "-n", namespace, "delete", "nimservices,nimcaches", "--all", "--wait=true", timeout=180)
        subprocess.run([*helm, "uninstall", name, "--wait"], capture_output=True, timeout=120, check=False)
        core.delete_namespace(namespace)
