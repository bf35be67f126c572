"""Multi-node groups and DRA claims on the real control plane.

The LeaderWorkerSet controller (built from sigs.k8s.io/lws, its webhooks on the host) creates each group's
pods; the real scheduler places them and, for DRA, allocates devices from the ResourceSlices that
tests/cluster publishes for kwok's simulated GPUs; kwok runs the pods. Nothing here is mocked.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.cluster import dra_slices
from tests.operator.conftest import NIM, wait_for

pytestmark = pytest.mark.cluster

# Our runtime with our catalog's models: the profile ids below are ours (an NVIDIA image takes only its own).
RUNTIME = {"repository": "nim-runtime", "tag": "dev"}
LLAMA_8B = {"image": RUNTIME, "model": {"name": "meta/llama-3.1-8b-instruct"}}
LLAMA_70B = {"image": RUNTIME, "model": {"name": "meta/llama-3.1-70b-instruct"}}
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
RESOURCE = ("resource.k8s.io", "v1")
GROUP_TIMEOUT = 120


def _pods(nim: NIM, name: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = nim.core.list_namespaced_pod(
        nim.namespace, label_selector=f"app.kubernetes.io/name={name}"
    ).items
    return pods


def _running(nim: NIM, name: str, count: int) -> list[client.V1Pod]:
    def probe() -> list[client.V1Pod] | None:
        pods = [p for p in _pods(nim, name) if p.status.phase == "Running" and p.spec.node_name]
        return pods if len(pods) == count else None

    return wait_for(probe, timeout=GROUP_TIMEOUT, what=f"{count} running pod(s) of {name}")


def _product(nim: NIM, pod: client.V1Pod) -> str:
    product: str = nim.core.read_node(pod.spec.node_name).metadata.labels["nvidia.com/gpu.product"]
    return product


def _lws(nim: NIM, name: str) -> dict[str, Any]:
    group, version, plural = LWS
    body: dict[str, Any] = nim.custom.get_namespaced_custom_object(group, version, nim.namespace, plural, name)
    return body


def test_a_profile_bigger_than_a_node_runs_as_a_group_of_the_lws_controller(nim: NIM) -> None:
    """70B in bf16 over 8 L40S GPUs: two L40S nodes of 4, one group of a leader and a worker."""
    nim.create("llama", {**LLAMA_70B, "profile": "vllm-bf16-tp8-l40s", "multiNode": {"parallelism": {}}})
    status = nim.wait_state("llama", "Ready", timeout=GROUP_TIMEOUT)
    assert "served by a LeaderWorkerSet in groups of 2 pods x 4 GPU(s) of NVIDIA-L40S" in status["profile"]["reason"]
    assert nim.deployment("llama") is None
    lws = _lws(nim, "llama-lws")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["status"]["readyReplicas"] == 1
    pods = _running(nim, "llama", 2)
    # The LWS controller's webhook labelled them: this is its group, not pods we made.
    roles = {p.metadata.labels["leaderworkerset.sigs.k8s.io/worker-index"]: p for p in pods}
    assert sorted(roles) == ["0", "1"]
    assert roles["0"].metadata.labels["nimoperator.dev/role"] == "leader"
    assert roles["1"].metadata.labels["nimoperator.dev/role"] == "worker"
    assert roles["1"].metadata.annotations["leaderworkerset.sigs.k8s.io/leader-name"] == roles["0"].metadata.name
    assert {_product(nim, p) for p in pods} == {"NVIDIA-L40S"}
    assert len({p.spec.node_name for p in pods}) == 2, "one pod per node: each takes a whole node's GPUs"
    assert all(p.spec.containers[0].resources.limits["nvidia.com/gpu"] == "4" for p in pods)
    assert roles["0"].spec.containers[0].readiness_probe is not None
    assert roles["1"].spec.containers[0].readiness_probe is None
    endpoints = nim.core.read_namespaced_endpoints("llama", nim.namespace)
    addresses = [a.target_ref.name for s in endpoints.subsets or [] for a in s.addresses or []]
    assert addresses == [roles["0"].metadata.name], "the Service reaches the leader only"


def test_nvidias_multi_node_sample_shape_lands_on_two_h100_nodes(nim: NIM) -> None:
    """NVIDIA's sample (parallelism pipeline 2 x tensor 8, 8 GPUs in resources) for an image we know no
    profiles of, then turned back into a single-node service: the group goes, a Deployment comes."""
    spec = {
        "image": {"repository": "nvcr.io/nim/deepseek-ai/deepseek-r1", "tag": "1.7.3"},
        "resources": {"limits": {"nvidia.com/gpu": 8}, "requests": {"nvidia.com/gpu": 8}},
        "multiNode": {"parallelism": {"pipeline": 2, "tensor": 8}, "mpi": {"mpiStartTimeout": 6000}},
    }
    nim.create("deepseek", spec)
    status = nim.wait_state("deepseek", "Ready", timeout=GROUP_TIMEOUT)
    pods = _running(nim, "deepseek", 2)
    assert {_product(nim, p) for p in pods} == {"NVIDIA-H100-80GB-HBM3"}
    leader = next(p for p in pods if p.metadata.labels["nimoperator.dev/role"] == "leader")
    env = {e.name: e.value for e in leader.spec.containers[0].env}
    assert (env["NIM_NUM_COMPUTE_NODES"], env["CLUSTER_START_TIMEOUT"], env["GPUS_PER_NODE"]) == ("2", "6000", "8")
    ignored = next(c for c in status["conditions"] if c["type"] == "FieldsIgnored")
    assert "spec.multiNode.mpi" in ignored["message"]
    one_gpu = {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 1}}
    nim.patch("deepseek", {"spec": {"multiNode": None, "resources": one_gpu}})
    wait_for(lambda: nim.deployment("deepseek") is not None, timeout=60, what="the Deployment")
    group, version, plural = LWS
    wait_for(
        lambda: not nim.custom.list_namespaced_custom_object(group, version, nim.namespace, plural)["items"],
        timeout=60,
        what="the LeaderWorkerSet to be deleted",
    )
    nim.wait_state("deepseek", "Ready", timeout=GROUP_TIMEOUT)


def _claims(nim: NIM) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = nim.custom.list_namespaced_custom_object(*RESOURCE, nim.namespace, "resourceclaims")[
        "items"
    ]
    return items


def _allocated(nim: NIM) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        return next((c for c in _claims(nim) if (c.get("status") or {}).get("allocation")), None)

    return wait_for(probe, timeout=GROUP_TIMEOUT, what="a ResourceClaim allocated by the scheduler")


def test_claim_creation_spec_is_allocated_by_the_scheduler(nim: NIM) -> None:
    """NVIDIA's auto-creation sample with a Hopper selector: the scheduler picks an H100 from the slices."""
    device = {
        "name": "gpu",
        "attributeSelectors": [{"key": "architecture", "op": "Equal", "value": {"stringValue": "Hopper"}}],
        "capacitySelectors": [{"key": "memory", "op": "GreaterThanOrEqual", "value": "40Gi"}],
    }
    nim.create("llama", {**LLAMA_8B, "draResources": [{"claimCreationSpec": {"devices": [device]}}]})
    status = nim.wait_state("llama", "Ready", timeout=GROUP_TIMEOUT)
    assert "spec.draResources chooses the devices" in status["profile"]["reason"]
    templates = nim.custom.list_namespaced_custom_object(*RESOURCE, nim.namespace, "resourceclaimtemplates")["items"]
    assert [t["metadata"]["name"].startswith("llama-claim-0-") for t in templates] == [True]
    claim = _allocated(nim)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["request"]) == ("gpu.nvidia.com", "gpu")
    assert result["pool"].startswith("kwok-h100-")
    assert result["device"].startswith("gpu-")
    (pod,) = _running(nim, "llama", 1)
    assert pod.spec.node_name == result["pool"], "the pod runs where its device was allocated"
    assert [r.name for r in pod.spec.resource_claims] == ["dra-0"]
    assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})
    assert claim["status"]["reservedFor"][0]["name"] == pod.metadata.name


def test_nvidias_manual_template_sample(nim: NIM) -> None:
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "gpu-resourceclaimtemplate"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "gpu",
                            "exactly": {
                                "allocationMode": "ExactCount",
                                "count": 1,
                                "deviceClassName": "gpu.nvidia.com",
                            },
                        }
                    ]
                }
            }
        },
    }
    nim.custom.create_namespaced_custom_object(*RESOURCE, nim.namespace, "resourceclaimtemplates", template)
    nim.create("llama", {**LLAMA_8B, "draResources": [{"resourceClaimTemplateName": "gpu-resourceclaimtemplate"}]})
    nim.wait_state("llama", "Ready", timeout=GROUP_TIMEOUT)
    claim = _allocated(nim)
    assert claim["metadata"]["annotations"]["resource.kubernetes.io/pod-claim-name"] == "dra-0"


@pytest.fixture
def dra_only_node(nim: NIM) -> Iterator[str]:
    """A kwok node that offers 4 A100s through DRA only (no device plugin), as NVIDIA's driver would,
    tainted so that only the test's service goes there. Removed afterwards (its slice goes with it)."""
    name = f"kwok-dra-a100-{uuid.uuid4().hex[:6]}"
    labels = {
        "kubernetes.io/hostname": name,
        "type": "kwok",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "nvidia.com/gpu.count": "4",
        "nvidia.com/gpu.memory": "81920",
        "nvidia.com/gpu.family": "ampere",
        "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.compute.minor": "0",
    }
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": labels},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"}},
    }
    node["status"]["capacity"] = copy.deepcopy(node["status"]["allocatable"])
    created = nim.core.create_node(node)
    body = {"metadata": {"name": name, "uid": created.metadata.uid, "labels": labels}}
    nim.custom.create_cluster_custom_object(*RESOURCE, "resourceslices", dra_slices.resource_slice(body))
    try:
        yield name
    finally:
        nim.core.delete_node(name)


def test_the_chosen_profile_becomes_the_claim_on_dra_only_nodes(nim: NIM, dra_only_node: str) -> None:
    """No claim in the spec, GPUs offered through DRA only: the operator claims its profile's devices."""
    spec = {**LLAMA_8B, "profileSelector": {"gpus": [{"product": "NVIDIA-A100-SXM4-80GB"}]}}
    nim.create("llama", spec)
    status = nim.wait_state("llama", "Ready", timeout=GROUP_TIMEOUT)
    profile = status["profile"]
    assert profile["id"] == "vllm-bf16-tp1"
    assert "GPUs claimed through DRA" in profile["reason"]
    assert "first available of vllm-bf16-tp1 (1 x NVIDIA A100 SXM4 80GB" in profile["reason"]
    claim = _allocated(nim)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["request"] == "gpus/vllm-bf16-tp1", "the best alternative was available"
    assert result["pool"] == dra_only_node
    (pod,) = _running(nim, "llama", 1)
    assert pod.spec.node_name == dra_only_node
    env = {e.name for e in pod.spec.containers[0].env}
    assert "NIM_MODEL_PROFILE" not in env
    wait_for(
        lambda: "allocated: vllm-bf16-tp1 to 1 pod" in nim.status("llama")["profile"]["reason"],
        timeout=30,
        what="status to say which alternative the pod was given",
    )


def test_a_group_whose_pods_claim_their_gpus_through_dra(nim: NIM) -> None:
    """Multi-node and DRA together: each pod of the group gets its own claim of a whole H100 node."""
    h100 = {"key": "productName", "op": "Equal", "value": {"stringValue": "NVIDIA H100 80GB HBM3"}}
    spec = {
        "image": {"repository": "nvcr.io/nim/deepseek-ai/deepseek-r1", "tag": "1.7.3"},
        "multiNode": {"parallelism": {"pipeline": 2}},
        "draResources": [
            {"claimCreationSpec": {"devices": [{"name": "gpu", "count": 8, "attributeSelectors": [h100]}]}}
        ],
    }
    nim.create("deepseek", spec)
    nim.wait_state("deepseek", "Ready", timeout=GROUP_TIMEOUT)
    pods = _running(nim, "deepseek", 2)
    assert len({p.spec.node_name for p in pods}) == 2
    claims = wait_for(
        lambda: [c for c in _claims(nim) if (c.get("status") or {}).get("allocation")] or None,
        timeout=GROUP_TIMEOUT,
        what="the group's claims to be allocated",
    )
    assert len(claims) == 2
    for claim in claims:
        results = claim["status"]["allocation"]["devices"]["results"]
        assert len(results) == 8
        assert len({r["pool"] for r in results}) == 1
    assert {c["status"]["reservedFor"][0]["name"] for c in claims} == {p.metadata.name for p in pods}
