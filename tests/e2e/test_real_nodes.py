"""The real worker nodes: pods run under a kubelet and containerd, and behave as in any cluster.

A web pod on one real node and a client pod on the other prove scheduling past the real-node taint,
the kubelet's readiness probe, pod-to-pod routing between nodes, a ClusterIP Service through
kube-proxy (nftables), the in-cluster API through the `kubernetes` Service with a ServiceAccount
token, and the apiserver-to-kubelet paths behind `kubectl logs`, `exec` and `port-forward`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import Cluster, free_port
from tests.operator.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

KUBECTL = Path(sys.executable).parent / "kubectl"
BASE_IMAGE = "localhost/nim-base:bookworm"
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


def kubectl(cluster: Cluster, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def pod(name: str, node: str, command: list[str], **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": BASE_IMAGE,
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
    manifest = yaml.safe_dump_all(objects)
    proc = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace, "apply", "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def finished_pod_logs(cluster: Cluster, namespace: str, name: str) -> str:
    core = client.CoreV1Api(cluster.api)
    phase = wait_for(
        lambda: (p := core.read_namespaced_pod(name, namespace).status.phase) in ("Succeeded", "Failed") and p,
        timeout=120,
        what=f"pod {name} to finish",
    )
    logs = kubectl(cluster, "-n", namespace, "logs", name)
    assert phase == "Succeeded", f"{name} ended {phase}:\n{logs}"
    return logs


def test_both_real_nodes_are_ready_tainted_and_left_alone_by_kwok(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api)
    nodes = core.list_node(label_selector=f"{REAL_NODE_LABEL}=true").items
    assert sorted(n.metadata.name for n in nodes) == ["real-0", "real-1"]
    for node in nodes:
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name
        # A kubelet reports its runtime; kwok would have written its own version string here.
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
        assert node.status.node_info.kubelet_version.startswith("v1.")
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
        assert (REAL_NODE_LABEL, "true", "NoSchedule") in taints
        assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})


def test_service_across_nodes_api_access_logs_exec_and_port_forward(cluster: Cluster, namespace: str) -> None:
    web = pod(
        "web",
        "real-0",
        ["python3", "-m", "http.server", "8000", "--directory", "/etc"],
        ports=[{"containerPort": 8000, "name": "http"}],
        readinessProbe={"httpGet": {"path": "/hostname", "port": "http"}, "periodSeconds": 1},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    apply(cluster, namespace, web, service)
    started = time.monotonic()
    kubectl(cluster, "-n", namespace, "wait", "--for=condition=Ready", "pod/web", "--timeout=120s", timeout=130)
    ready_s = time.monotonic() - started
    core = client.CoreV1Api(cluster.api)
    web_pod = core.read_namespaced_pod("web", namespace)
    assert web_pod.spec.node_name == "real-0"
    assert web_pod.status.pod_ip.startswith("10.245.0."), web_pod.status.pod_ip
    cluster_ip = core.read_namespaced_service("web", namespace).spec.cluster_ip

    # From the other node: the Service's virtual IP, then the API server through `kubernetes`.
    # Endpoints reach each node's kube-proxy a moment after the pod turns Ready; until then the
    # virtual IP rejects connections (as in any cluster), so the client retries a refusal briefly.
    client_script = f"""
import json, ssl, time, urllib.request
deadline = time.monotonic() + 30
while True:
    try:
        print(urllib.request.urlopen("http://{cluster_ip}/hostname", timeout=10).read().decode().strip())
        break
    except urllib.error.URLError as e:
        if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() > deadline:
            raise
        time.sleep(0.5)
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
# The Service's address (the apiserver certificate names it); pods get it as KUBERNETES_SERVICE_HOST.
token = open(sa + "/token").read()
req = urllib.request.Request("https://10.96.0.1/version", headers={{"Authorization": "Bearer " + token}})
print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"])
"""
    apply(cluster, namespace, pod("client", "real-1", ["python3", "-c", client_script]))
    lines = finished_pod_logs(cluster, namespace, "client").split()
    assert lines[0] == "web", lines
    assert lines[1].startswith("v1."), lines

    # kubectl logs: the server logged the client's request and the kubelet's probes.
    assert "GET /hostname" in kubectl(cluster, "-n", namespace, "logs", "web")
    # kubectl exec: a process inside the container, as the restricted user.
    assert kubectl(cluster, "-n", namespace, "exec", "web", "--", "id", "-u").strip() == "1000"
    # kubectl port-forward: a local port into the pod.
    port = free_port()
    forward = subprocess.Popen(
        [
            str(KUBECTL),
            f"--kubeconfig={cluster.kubeconfig}",
            "-n",
            namespace,
            "port-forward",
            "pod/web",
            f"{port}:8000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def fetch() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=2) as response:
                    return bytes(response.read())
            except OSError:
                return None

        assert wait_for(fetch, timeout=30, what="port-forward to answer").strip() == b"web"
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    print(json.dumps({"web_ready_s": round(ready_s, 1)}))
