"""GPUs held by pods, per node, from a list of the cluster's pods: what makes allocatable GPUs free or not.

Free GPUs inform a new decision (a service is not pinned to a product whose GPUs are all taken while
another product has room). A service's own pods never count against it, so the GPUs it holds keep its
decision feasible. Nothing here triggers a reconcile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from nim_operator import constants as c
from nim_operator.pod_health import service_of
from nim_runtime.profiles import NodeGpuFacts

Owner = tuple[str, str]


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """``nvidia.com/gpu`` a pod holds on its node: the sum over its containers, or its largest init
    container's when that is more (as the scheduler counts)."""
    spec = pod.get("spec") or {}

    def each(containers: Iterable[Mapping[str, Any]]) -> list[int]:
        out = []
        for container in containers:
            resources = container.get("resources") or {}
            wanted = (resources.get("requests") or {}).get(c.GPU_RESOURCE) or (resources.get("limits") or {}).get(
                c.GPU_RESOURCE
            )
            out.append(_quantity(wanted))
        return out

    return max(sum(each(spec.get("containers") or [])), max(each(spec.get("initContainers") or []), default=0))


class GpuUsage:
    """Thread-safe index: pod uid -> (node, GPUs, owning NIMService)."""

    def __init__(self) -> None:
        self._pods: dict[str, tuple[str, int, Owner | None]] = {}
        self._lock = threading.Lock()

    def observe(self, pod: Mapping[str, Any], *, deleted: bool = False) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        gpus = pod_gpus(pod)
        with self._lock:
            if deleted or not node or not gpus or phase in ("Succeeded", "Failed"):
                self._pods.pop(uid, None)
                return
            service = service_of(pod)
            owner = (str(meta.get("namespace")), service) if service else None
            self._pods[uid] = (node, gpus, owner)

    def replace(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Start over from a complete list of pods."""
        fresh = GpuUsage()
        for pod in pods:
            fresh.observe(pod)
        with self._lock:
            self._pods = fresh._pods

    def held(self, *, exclude: Owner | None = None) -> dict[str, int]:
        """GPUs held per node by pods other than those of ``exclude``."""
        totals: dict[str, int] = {}
        with self._lock:
            for node, gpus, owner in self._pods.values():
                if owner is None or owner != exclude:
                    totals[node] = totals.get(node, 0) + gpus
        return totals

    def free(self, nodes: Iterable[NodeGpuFacts], *, exclude: Owner | None = None) -> list[NodeGpuFacts]:
        """The nodes with ``free_gpus`` set: allocatable minus what other pods hold."""
        held = self.held(exclude=exclude)
        return [replace(n, free_gpus=max(n.gpus - held.get(n.name, 0), 0)) for n in nodes]
