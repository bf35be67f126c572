"""Free GPUs come from a paged list of every pod on a node: the pages add up to the whole cluster."""

from __future__ import annotations

import pytest
from kubernetes import client

from nim_operator import cluster_capacity, metrics
from nim_operator.cluster_capacity import ClusterCapacity
from nim_operator.kube import Kube
from tests.conftest import Cluster

#: A node without GPUs: pods bound to it hold GPUs in the list without changing anyone's free GPUs.
NODE = "kwok-cpu-0"
HOLDERS = 5


def _pod_reads() -> float:
    return metrics.API_READS.labels("Pod")._value.get()


def test_gpus_held_are_counted_across_every_page(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = client.CoreV1Api(cluster.api)
    for i in range(HOLDERS):
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"holder-{i}"},
                "spec": {
                    "nodeName": NODE,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "c", "image": "holder", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
                },
            },
        )
    try:
        whole = ClusterCapacity(Kube(cluster.api))
        whole.refresh_usage(force=True)
        assert whole.usage.held().get(NODE, 0) >= 2 * HOLDERS

        monkeypatch.setattr(cluster_capacity, "POD_PAGE", 2)
        paged = ClusterCapacity(Kube(cluster.api))
        before = _pod_reads()
        paged.refresh_usage(force=True)
        assert _pod_reads() - before >= 3, "five holders at two a page take at least three pages"
        assert paged.usage.held() == whole.usage.held()
    finally:
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
