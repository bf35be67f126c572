"""Placement that knows what the cluster can become, against the real Karpenter (kwok provider).

tests/cluster/up.sh runs Karpenter beside the static pools with GPU NodePools at zero nodes
(tests/cluster/karpenter/). Those pools carry the taint ``nim-operator.dev/autoscaled``: the services
here tolerate it, so Karpenter acts for them and for no other test. A100 is the product only a NodePool
offers. Nodes Karpenter creates are simulated by kwok, which also plays GPU Feature Discovery on them.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import REPO, Cluster
from tests.operator.conftest import NIM, wait_for

pytestmark = pytest.mark.cluster

AUTOSCALED = {"key": "nim-operator.dev/autoscaled", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
# Our runtime with our catalog's model: the profile ids below are ours (an NVIDIA image takes only its own).
LLAMA_70B = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "meta/llama-3.1-70b-instruct"}}
A100 = "NVIDIA-A100-SXM4-80GB"
#: Karpenter batches pods (1 s idle), kwok registers the node (5 s, the KWOKNodeClass), GFD labels it
#: (2 s), and consolidation waits 10 s on an empty node: minutes would mean something is wrong.
SCALE_TIMEOUT = 120


@pytest.fixture
def karpenter(cluster: Cluster) -> client.CustomObjectsApi:
    """Karpenter's NodePools, which up.sh creates; their absence is a broken cluster, not a skip."""
    custom = client.CustomObjectsApi(cluster.api)
    pools = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodepools")["items"]
    names = {p["metadata"]["name"] for p in pools}
    assert {"gpu-a100", "gpu-h100", "gpu-l40s", "gpu-a10g"} <= names, f"up.sh made no GPU NodePools: {names}"
    return custom


def _pool_nodes(core: client.CoreV1Api, pool: str) -> list[client.V1Node]:
    nodes: list[client.V1Node] = core.list_node(label_selector=f"karpenter.sh/nodepool={pool}").items
    return nodes


def _wait_pool_empty(core: client.CoreV1Api, pool: str) -> None:
    wait_for(lambda: not _pool_nodes(core, pool), timeout=SCALE_TIMEOUT, what=f"NodePool {pool} to have no nodes")


def _plan(cluster: Cluster, tmp_path: Path, docs: list[dict[str, Any]]) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nim_operator",
            "plan",
            "--table",
            "-f",
            str(path),
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def _doc(name: str, spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps.nimoperator.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.fixture
def clean_a100(cluster: Cluster, karpenter: client.CustomObjectsApi) -> Iterator[client.CoreV1Api]:
    core = client.CoreV1Api(cluster.api)
    _wait_pool_empty(core, "gpu-a100")  # a test before may have left nodes Karpenter is still removing
    return core


def test_a100_service_scales_up_exactly_and_back_down(
    nim: NIM, cluster: Cluster, clean_a100: client.CoreV1Api, tmp_path: Path
) -> None:
    core = clean_a100
    spec = {
        **LLAMA_70B,
        "replicas": 3,
        "tolerations": [AUTOSCALED],
        # A family, as users write it: it must match the real product, which only a NodePool offers.
        "profileSelector": {"precision": "bf16", "gpus": [{"product": "A100"}]},
    }
    planned = _plan(cluster, tmp_path, [_doc("a100", spec, nim.namespace)])
    assert "a100: vllm-bf16-tp4: after scale-up via NodePool gpu-a100 (NVIDIA-A100-SXM4-80GB)" in planned
    assert "vllm-bf16-tp4  AfterScaleUp  NodePool gpu-a100" in planned

    started = time.monotonic()
    nim.create("a100", spec)
    status = nim.wait_state("a100", "Ready", timeout=SCALE_TIMEOUT)
    ready_after = time.monotonic() - started
    assert status["profile"]["id"] == "vllm-bf16-tp4"
    assert status["availableReplicas"] == 3
    assert status["profile"]["nodePools"] == ["NodePool gpu-a100"]
    events = core.list_namespaced_event(nim.namespace, field_selector="involvedObject.name=a100").items
    selected = [e.message for e in events if e.reason == "ProfileSelected"]
    # The decision as it was made, before the nodes existed (status now says "runnable now").
    assert any("vllm-bf16-tp4: after scale-up via NodePool gpu-a100" in m for m in selected), selected

    nodes = _pool_nodes(core, "gpu-a100")
    needed = math.ceil(3 * 4 / 8)  # three tp=4 replicas, eight A100s per node
    print(f"\napply -> Ready with a scale-up: {ready_after:.1f} s; nodes created {len(nodes)}, needed {needed}")
    assert len(nodes) == needed
    for node in nodes:
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
    # GFD labels a node a moment after it booted (pods may already run there).
    wait_for(
        lambda: all(n.metadata.labels.get("nvidia.com/gpu.product") == A100 for n in _pool_nodes(core, "gpu-a100")),
        what="GFD's labels on the new nodes",
    )
    pods = core.list_namespaced_pod(nim.namespace, label_selector="app.kubernetes.io/name=a100").items
    assert {p.spec.node_name for p in pods} == {n.metadata.name for n in nodes}
    # Serving pods keep Karpenter from repacking their nodes; empty ones go (below).
    assert all(p.metadata.annotations.get("karpenter.sh/do-not-disrupt") == "true" for p in pods)

    nim.delete("a100")
    started = time.monotonic()
    _wait_pool_empty(core, "gpu-a100")
    print(f"delete -> Karpenter removed the nodes: {time.monotonic() - started:.1f} s (consolidateAfter 10 s)")


def test_hpa_scale_out_gets_a_new_gpu_node(nim: NIM, clean_a100: client.CoreV1Api) -> None:
    core = clean_a100
    spec = {
        **LLAMA_70B,
        "tolerations": [AUTOSCALED],
        "profileSelector": {"precision": "bf16", "tensorParallelism": 8, "gpus": [{"product": "A100"}]},
        "scale": {"enabled": True, "hpa": {"minReplicas": 1, "maxReplicas": 2}},
    }
    nim.create("hpa", spec)
    nim.wait_state("hpa", "Ready", timeout=SCALE_TIMEOUT)
    assert len(_pool_nodes(core, "gpu-a100")) == 1
    # As a user would: the HPA's floor rises, the HPA scales the Deployment, the new pod needs a node.
    started = time.monotonic()
    nim.patch("hpa", {"spec": {"scale": {"hpa": {"minReplicas": 2}}}})
    wait_for(
        lambda: nim.status("hpa").get("availableReplicas") == 2,
        timeout=SCALE_TIMEOUT,
        what="the second replica on a new node",
    )
    print(f"\nHPA scale-out to a new GPU node: {time.monotonic() - started:.1f} s to two available replicas")
    assert len(_pool_nodes(core, "gpu-a100")) == 2
    nim.delete("hpa")
    _wait_pool_empty(core, "gpu-a100")


def test_fits_nowhere_even_after_scale_up_names_the_limit(
    nim: NIM, cluster: Cluster, karpenter: client.CustomObjectsApi, tmp_path: Path
) -> None:
    # A pool of its own (with a taint only this service tolerates) whose limit is below one node.
    limited = yaml.safe_load((REPO / "tests/cluster/karpenter/nodepools.yaml").read_text().split("---")[-1])
    limited["metadata"]["name"] = "gpu-a100-small"
    limited["spec"]["limits"] = {"nvidia.com/gpu": "4"}
    taints = limited["spec"]["template"]["spec"]["taints"]
    taints[-1] = {"key": "nim-operator.dev/autoscaled", "value": "limited", "effect": "NoSchedule"}
    karpenter.create_cluster_custom_object("karpenter.sh", "v1", "nodepools", limited)
    try:
        spec = {
            **LLAMA_70B,
            "tolerations": [dict(AUTOSCALED, value="limited")],
            "profileSelector": {"gpus": [{"product": "A100"}]},
        }
        wait_for(
            lambda: "limits nvidia.com/gpu: 4" in _plan(cluster, tmp_path, [_doc("nowhere", spec, nim.namespace)]),
            what="plan to see the new NodePool",
        )
        nim.create("nowhere", spec)
        status = nim.wait_state("nowhere", "Failed")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "NoProfileFits"
        assert "now or after a scale-up" in failed["message"]
        assert "NodePool gpu-a100-small limits nvidia.com/gpu: 4 is below one node (8 GPUs)" in failed["message"]
        assert "NodePool gpu-a100 taints nim-operator.dev/autoscaled=true:NoSchedule" in failed["message"]
        assert nim.deployment("nowhere") is None
        assert not _pool_nodes(client.CoreV1Api(cluster.api), "gpu-a100-small")
    finally:
        karpenter.delete_cluster_custom_object("karpenter.sh", "v1", "nodepools", "gpu-a100-small")


def test_static_pools_and_other_services_are_left_alone(nim: NIM, karpenter: client.CustomObjectsApi) -> None:
    # A service that does not tolerate the pools' taint, pinned to a product only a pool has: the operator
    # says why it cannot have that pool (before, it waited Pending for an autoscaler), and Karpenter, which
    # sees no pod, adds nothing.
    nim.create("plain", {**LLAMA_70B, "profileSelector": {"gpus": [{"product": "A100"}]}})
    status = nim.wait_state("plain", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (
        "NodePool gpu-a100 taints nim-operator.dev/autoscaled=true:NoSchedule, which the pods do not"
        in failed["message"]
    )
    time.sleep(12)  # a Karpenter batch and a node registration
    core = client.CoreV1Api(nim.api)
    assert not _pool_nodes(core, "gpu-a100")
    assert karpenter.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"] == []
    static = core.list_node(label_selector="nim-operator.dev/pool").items
    assert len(static) == 6
    assert all("karpenter.sh/nodepool" not in (n.metadata.labels or {}) for n in static)
    assert all(not (n.spec.taints or []) or n.spec.taints[0].key == "nvidia.com/gpu" for n in static)
