"""Capacity that may exist: NodePools, node groups and the GPU catalogue mapped onto one set of GPU facts."""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator import capacity
from nim_operator.capacity import Catalog, CatalogError, gpu_from_labels, node_group, nodepool, options_for
from nim_operator.gpu_usage import GpuUsage, pod_gpus
from nim_runtime.profiles import NodeGpuFacts
from nim_runtime.profiles import hardware as hw

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _pool(name: str, requirements: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    template: dict[str, Any] = {"spec": {"requirements": requirements, "taints": extra.pop("taints", [GPU_TAINT])}}
    if "labels" in extra:
        template["metadata"] = {"labels": extra.pop("labels")}
    return {"metadata": {"name": name}, "spec": {"template": template, **extra.pop("spec", {})}, **extra}


def _in(key: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": list(values)}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8"},
            ("NVIDIA-H100-80GB-HBM3", 8, None),
        ),
        ({"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}, ("NVIDIA-A100-SXM4-40GB", None, 40960)),
        ({"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}, ("NVIDIA-A100-SXM4-80GB", None, 81920)),
        (
            {"karpenter.k8s.aws/instance-gpu-name": "a100", "karpenter.k8s.aws/instance-gpu-memory": "81920"},
            ("NVIDIA-A100-SXM4-80GB", None, 81920),
        ),
        # Without a memory, the smaller A100 is assumed: never place on memory a pool may not have.
        ({"karpenter.k8s.aws/instance-gpu-name": "a100"}, ("NVIDIA-A100-SXM4-40GB", None, 40960)),
        (
            {"karpenter.k8s.aws/instance-gpu-name": "l40s", "karpenter.k8s.aws/instance-gpu-count": "4"},
            ("NVIDIA-L40S", 4, 46068),
        ),
        ({"kubernetes.io/arch": "amd64"}, None),
    ],
)
def test_every_vocabulary_maps_to_one_product(
    labels: dict[str, str], expected: tuple[str, int | None, int | None]
) -> None:
    assert gpu_from_labels(labels) == expected


def test_families_match_products_by_token() -> None:
    assert hw.products_of_family("H100") == ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-NVL")
    assert "NVIDIA-A10G" not in hw.products_of_family("A100")
    assert hw.products_of_family("A10G") == ("NVIDIA-A10G",)
    assert hw.by_product("Tesla-T4-SHARED") == hw.by_product("Tesla-T4")


def test_nodepool_by_aws_labels_renders_its_own_vocabulary() -> None:
    pool = nodepool(
        _pool(
            "gpu-a100",
            [
                _in("karpenter.k8s.aws/instance-gpu-name", "a100"),
                _in("karpenter.k8s.aws/instance-gpu-count", "8"),
                _in("karpenter.k8s.aws/instance-gpu-memory", "81920"),
            ],
            spec={"limits": {"nvidia.com/gpu": "16"}},
        ),
        Catalog(),
    )
    (option,) = pool.options
    assert (option.product, option.gpus, option.memory_mib, option.compute) == (
        "NVIDIA-A100-SXM4-80GB",
        8,
        81920,
        (8, 0),
    )
    # Karpenter knows these labels before the node exists; GFD's product label it cannot promise.
    assert option.requirements == (
        ("karpenter.sh/nodepool", "In", ("gpu-a100",)),
        ("karpenter.k8s.aws/instance-gpu-name", "In", ("a100",)),
        ("karpenter.k8s.aws/instance-gpu-count", "In", ("8",)),
    )
    assert pool.blocked is None


def test_nodepool_by_instance_type_needs_the_catalogue() -> None:
    body = _pool("gpu-h100", [_in("node.kubernetes.io/instance-type", "p5.48xlarge", "x9.huge")])
    assert nodepool(body, Catalog()).options == ()
    catalog = capacity.parse_catalog(
        {"catalog.yaml": "instanceTypes:\n  p5.48xlarge: {product: NVIDIA-H100-80GB-HBM3, gpus: 8, memoryMiB: 81559}\n"}
    )
    pool = nodepool(body, catalog)
    (option,) = pool.options
    assert (option.pool, option.product, option.gpus, option.shape) == (
        "gpu-h100",
        "NVIDIA-H100-80GB-HBM3",
        8,
        "p5.48xlarge",
    )
    assert option.requirements[-1] == ("node.kubernetes.io/instance-type", "In", ("p5.48xlarge",))
    assert pool.unknown == ("x9.huge",)


def test_nodepool_promising_gfd_labels() -> None:
    labels = {"nvidia.com/gpu.product": "NVIDIA-L40S", "nvidia.com/gpu.count": "4"}
    (option,) = nodepool(_pool("gpu-l40s", [], labels=labels), Catalog()).options
    assert (option.product, option.gpus, option.memory_mib, option.compute) == ("NVIDIA-L40S", 4, 46068, (8, 9))


@pytest.mark.parametrize(
    ("limits", "used", "expected"),
    [
        ({"nvidia.com/gpu": "4"}, {}, "limits nvidia.com/gpu: 4 is below one node (8 GPUs): raise spec.limits"),
        ({"nvidia.com/gpu": "16"}, {"nvidia.com/gpu": "16"}, "is at its limit nvidia.com/gpu: 16"),
        ({"nvidia.com/gpu": "16"}, {"nvidia.com/gpu": "8"}, None),
        ({"nodes": "2"}, {"nodes": "2"}, "is at its limit nodes: 2"),
    ],
)
def test_limits_block_a_pool_and_name_the_limit(
    limits: dict[str, str], used: dict[str, str], expected: str | None
) -> None:
    body = _pool(
        "gpu-a100",
        [_in("karpenter.k8s.aws/instance-gpu-name", "a100"), _in("karpenter.k8s.aws/instance-gpu-count", "8")],
        spec={"limits": limits},
        status={"resources": used},
    )
    blocked = nodepool(body, Catalog()).blocked
    assert blocked == expected if expected is None else (blocked or "").startswith(expected)


def test_taints_the_pods_do_not_tolerate_exclude_a_pool() -> None:
    taint = {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}
    pool = nodepool(
        _pool("gpu-a10g", [_in("karpenter.k8s.aws/instance-gpu-name", "a10g")], taints=[GPU_TAINT, taint]), Catalog()
    )
    (excluded,) = options_for([pool], [GPU_TOLERATION])
    assert excluded.excluded
    assert excluded.blocked == "taints dedicated=batch:NoSchedule, which the pods do not tolerate (spec.tolerations)"
    (allowed,) = options_for([pool], [GPU_TOLERATION, {"key": "dedicated", "operator": "Equal", "value": "batch"}])
    assert allowed.blocked is None
    assert not allowed.excluded
    # A toleration of another value does not do.
    (other,) = options_for([pool], [GPU_TOLERATION, {"key": "dedicated", "value": "web", "effect": "NoSchedule"}])
    assert other.excluded


def test_not_ready_nodepool_is_blocked() -> None:
    body = _pool(
        "gpu-a10g",
        [_in("karpenter.k8s.aws/instance-gpu-name", "a10g")],
        status={"conditions": [{"type": "Ready", "status": "False", "reason": "NodeClassNotReady"}]},
    )
    assert nodepool(body, Catalog()).blocked == "is not Ready (NodeClassNotReady)"


def test_cluster_api_node_group_annotations() -> None:
    notes = {
        "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
        "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "3",
        "capacity.cluster-autoscaler.kubernetes.io/gpu-count": "8",
        "capacity.cluster-autoscaler.kubernetes.io/gpu-type": "nvidia.com/gpu",
        "capacity.cluster-autoscaler.kubernetes.io/labels": "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3,pool=h100",
        "capacity.cluster-autoscaler.kubernetes.io/taints": "nvidia.com/gpu=present:NoSchedule",
    }
    group = node_group({"metadata": {"name": "md-h100", "annotations": notes}, "spec": {"replicas": 0}})
    assert group is not None
    (option,) = group.options
    assert (option.kind, option.product, option.gpus) == ("node group", "NVIDIA-H100-80GB-HBM3", 8)
    assert option.requirements == (
        ("nvidia.com/gpu.product", "In", ("NVIDIA-H100-80GB-HBM3",)),
        ("pool", "In", ("h100",)),
    )
    assert group.taints == ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},)
    full = node_group({"metadata": {"name": "md-h100", "annotations": notes}, "spec": {"replicas": 3}})
    assert full is not None
    assert (full.blocked or "").startswith("is at its max size 3")
    assert node_group({"metadata": {"name": "cpu", "annotations": {}}}) is None


def test_catalogue_errors_name_the_field() -> None:
    with pytest.raises(CatalogError, match=r"instanceTypes.p5 needs product and gpus"):
        capacity.parse_catalog({"catalog.yaml": "instanceTypes:\n  p5: {product: NVIDIA-H100-80GB-HBM3}\n"})
    with pytest.raises(CatalogError, match=r"nodeGroups\[0\].gpus must be a positive integer"):
        capacity.parse_catalog({"catalog.yaml": "nodeGroups:\n- {name: g, product: nvidia-l4, gpus: x}\n"})
    with pytest.raises(CatalogError, match="is not YAML"):
        capacity.parse_catalog({"catalog.yaml": "a: [b"})


def test_catalogue_node_groups_steer_by_their_node_selector() -> None:
    catalog = capacity.parse_catalog(
        {
            "catalog.yaml": "nodeGroups:\n"
            "- {name: l4-pool, product: nvidia-l4, gpus: 2, nodeSelector: {cloud.google.com/gke-nodepool: l4-pool}}\n"
            "- {name: hidden, product: nvidia-l4, gpus: 2}\n"
        }
    )
    steered, hidden = (p.options[0] for p in catalog.node_groups)
    assert (steered.product, steered.memory_mib, steered.excluded) == ("NVIDIA-L4", 23034, False)
    assert steered.requirements == (("cloud.google.com/gke-nodepool", "In", ("l4-pool",)),)
    assert hidden.excluded


def _gpu_pod(uid: str, node: str, gpus: int, service: str | None = None, phase: str = "Running") -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": service, "app.kubernetes.io/instance": service} if service else {}
    return {
        "metadata": {"uid": uid, "namespace": "ns", "name": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase},
    }


def test_free_gpus_exclude_the_service_s_own_pods() -> None:
    usage = GpuUsage()
    usage.observe(_gpu_pod("a", "h100-0", 4, "llama"))
    usage.observe(_gpu_pod("b", "h100-0", 2))
    usage.observe(_gpu_pod("c", "h100-0", 2, phase="Succeeded"))
    node = NodeGpuFacts("h100-0", "NVIDIA-H100-80GB-HBM3", 8, 81559)
    assert [n.free_gpus for n in usage.free([node])] == [2]
    assert [n.free_gpus for n in usage.free([node], exclude=("ns", "llama"))] == [6]
    usage.observe(_gpu_pod("b", "h100-0", 2), deleted=True)
    assert [n.free_gpus for n in usage.free([node])] == [4]


def test_pod_gpus_counts_init_containers_as_the_scheduler_does() -> None:
    pod = {
        "spec": {
            "containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}, {}],
            "initContainers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}],
        }
    }
    assert pod_gpus(pod) == 2
