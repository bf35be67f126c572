"""The LeaderWorkerSet controller and the DRA objects of the local cluster, as up.sh leaves them.

Checked directly against the API (no operator): a LeaderWorkerSet written by hand gets its group from
the real controller, the webhooks only see a group's pods, and every kwok GPU is published in a
ResourceSlice that agrees with the node's GPU labels, so the real scheduler can allocate it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from kubernetes import client

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

T = TypeVar("T")
LWS = ("leaderworkerset.x-k8s.io", "v1")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    core = client.CoreV1Api(cluster.api)
    name = f"lws-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def test_the_lws_controller_makes_a_group_of_a_hand_written_leader_worker_set(cluster: Cluster, namespace: str) -> None:
    pod = {
        "metadata": {"labels": {"app": "group"}},
        "spec": {
            "containers": [{"name": "c", "image": "example/serve:1", "resources": {"limits": {"nvidia.com/gpu": "4"}}}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"},
        },
    }
    body = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "group"},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": pod}},
    }
    custom = client.CustomObjectsApi(cluster.api)
    created = custom.create_namespaced_custom_object(*LWS, namespace, "leaderworkersets", body)
    # The controller's mutating webhook defaulted what the manifest left out.
    assert created["spec"]["startupPolicy"] == "LeaderCreated"
    core = client.CoreV1Api(cluster.api)

    def group() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="leaderworkerset.sigs.k8s.io/name=group").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == 2 else None

    pods = wait_for("the group's two pods to run", group)
    indexes = sorted(p.metadata.labels["leaderworkerset.sigs.k8s.io/worker-index"] for p in pods)
    assert indexes == ["0", "1"]
    assert {core.read_node(p.spec.node_name).metadata.labels["nvidia.com/gpu.product"] for p in pods} == {"NVIDIA-L40S"}
    ready = wait_for(
        "the LeaderWorkerSet to count its group ready",
        lambda: (
            custom.get_namespaced_custom_object(*LWS, namespace, "leaderworkersets", "group")
            .get("status", {})
            .get("readyReplicas")
        ),
    )
    assert ready == 1
    # The controller's validating webhook, called by URL, refuses what its own checks refuse.
    bad = {
        **body,
        "metadata": {"name": "bad"},
        "spec": {**body["spec"], "leaderWorkerTemplate": {"size": 0, "workerTemplate": pod}},
    }
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*LWS, namespace, "leaderworkersets", bad)
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert message.startswith('admission webhook "vleaderworkerset.kb.io" denied the request')
    assert "size must be equal or greater than 1" in message


def test_pod_webhooks_see_only_a_groups_pods(cluster: Cluster) -> None:
    """A pod webhook with failurePolicy Fail on every pod would tie all pods of the cluster to one process."""
    admission = client.AdmissionregistrationV1Api(cluster.api)
    mutating = admission.read_mutating_webhook_configuration("lws-mutating-webhook-configuration")
    validating = admission.read_validating_webhook_configuration("lws-validating-webhook-configuration")
    for hook in list(mutating.webhooks) + list(validating.webhooks):
        assert hook.client_config.url.startswith("https://127.0.0.1:"), hook.name
        assert hook.client_config.ca_bundle
        if any("pods" in rule.resources for rule in hook.rules):
            expressions = hook.object_selector.match_expressions
            assert [(e.key, e.operator) for e in expressions] == [("leaderworkerset.sigs.k8s.io/name", "Exists")]


def _slices(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = client.CustomObjectsApi(cluster.api).list_cluster_custom_object("resource.k8s.io", "v1", "resourceslices")
    return {s["spec"]["nodeName"]: s for s in items["items"] if s["spec"]["driver"] == "gpu.nvidia.com"}


def test_every_kwok_gpu_is_published_through_dra(cluster: Cluster) -> None:
    slices = _slices(cluster)
    nodes = client.CoreV1Api(cluster.api).list_node(label_selector="nvidia.com/gpu.present=true").items
    kwok = [n for n in nodes if (n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"]
    assert len(kwok) >= 5
    for node in kwok:
        labels = node.metadata.labels
        devices = slices[node.metadata.name]["spec"]["devices"]
        assert len(devices) == int(labels["nvidia.com/gpu.count"])
        first = devices[0]
        assert first["attributes"]["productName"]["string"] == labels["nvidia.com/gpu.product"].replace("-", " ")
        major, minor = labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]
        assert first["attributes"]["cudaComputeCapability"]["version"] == f"{major}.{minor}.0"
        assert first["capacity"]["memory"]["value"] == f"{labels['nvidia.com/gpu.memory']}Mi"
    device_class = client.CustomObjectsApi(cluster.api).get_cluster_custom_object(
        "resource.k8s.io", "v1", "deviceclasses", "gpu.nvidia.com"
    )
    assert "device.driver == 'gpu.nvidia.com'" in device_class["spec"]["selectors"][0]["cel"]["expression"]
