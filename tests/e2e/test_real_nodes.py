"""The real worker nodes: pods run under a kubelet and containerd, and behave as in any cluster.

A web pod on one real node and a client pod on the other prove scheduling past the real-node taint,
the kubelet's readiness probe, pod-to-pod routing between nodes, a Service by its DNS name (CoreDNS)
through kube-proxy (nftables), the in-cluster API through the `kubernetes` Service with a ServiceAccount
token, and the apiserver-to-kubelet paths behind `kubectl logs`, `exec` and `port-forward`. A claim
on the default StorageClass binds to a directory on the node of its first consumer and outlives it.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import Cluster, free_port
from tests.e2e.conftest import KUBECTL, REAL_NODE_LABEL, apply, finished_pod_logs, kubectl, pod
from tests.operator.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


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

    # From the other node: the Service by its DNS name (cluster DNS, then kube-proxy), then the API
    # server through `kubernetes`. Endpoints reach each node's kube-proxy a moment after the pod turns
    # Ready; until then the virtual IP rejects connections (as in any cluster), so the client retries
    # a refusal briefly.
    client_script = f"""
import json, socket, ssl, time, urllib.request
print(socket.gethostbyname("web.{namespace}.svc"))
deadline = time.monotonic() + 30
while True:
    try:
        print(urllib.request.urlopen("http://web.{namespace}.svc/hostname", timeout=10).read().decode().strip())
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
    assert lines[0] == cluster_ip, lines
    assert lines[1] == "web", lines
    assert lines[2].startswith("v1."), lines

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


def test_default_storage_class_binds_on_the_consumers_node_and_keeps_data(cluster: Cluster, namespace: str) -> None:
    storage = client.StorageV1Api(cluster.api)
    defaults = [
        sc.metadata.name
        for sc in storage.list_storage_class().items
        if (sc.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert defaults == ["local-path"], defaults
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    writer = pod("writer", "real-1", ["sh", "-c", "echo kept > /data/note && id -u"], **mount)
    writer["spec"].update(volume)
    apply(cluster, namespace, claim, writer)
    assert finished_pod_logs(cluster, namespace, "writer").strip() == "1000"

    core = client.CoreV1Api(cluster.api)
    pvc = core.read_namespaced_persistent_volume_claim("data", namespace)
    assert pvc.status.phase == "Bound"
    assert pvc.spec.storage_class_name == "local-path"
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    terms = pv.spec.node_affinity.required.node_selector_terms
    assert [v for t in terms for e in t.match_expressions for v in e.values] == ["real-1"]
    host_dir = Path(pv.spec.host_path.path if pv.spec.host_path else pv.spec.local.path)
    assert (host_dir / "note").read_text() == "kept\n"

    # A later pod on the same claim sees what the first wrote.
    reader = pod("reader", "real-1", ["cat", "/data/note"], **mount)
    reader["spec"].update(volume)
    apply(cluster, namespace, reader)
    assert finished_pod_logs(cluster, namespace, "reader").strip() == "kept"

    # Deleting the claim (after its pods) deletes the volume and its directory (reclaimPolicy Delete).
    kubectl(cluster, "-n", namespace, "delete", "pod", "writer", "reader", "--wait=true", timeout=90)
    kubectl(cluster, "-n", namespace, "delete", "pvc", "data", "--wait=true", timeout=90)

    def volume_gone() -> bool:
        try:
            core.read_persistent_volume(pv.metadata.name)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(volume_gone, timeout=90, what=f"volume {pv.metadata.name} to be deleted")
    wait_for(lambda: not host_dir.exists(), timeout=30, what=f"{host_dir} to be removed")
