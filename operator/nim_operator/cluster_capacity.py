"""The facts placement reads besides the nodes: GPUs held by pods, autoscaler pools, the catalogue.

Pools come from the shell's watches (Karpenter NodePools, Cluster API node groups). Pods and the GPU
catalogue ConfigMaps are listed when a decision needs them, at most every few seconds (pods) or once a
minute (catalogue): the operator watches only its own pods (server-side label selector), and a watch
on every pod or ConfigMap of the cluster would cost far more than these lists. Parsing happens at
decision time, so a changed catalogue applies to NodePools seen before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client

from nim_operator import capacity, metrics
from nim_operator import constants as c
from nim_operator.gpu_usage import GpuUsage
from nim_operator.kube import Kube
from nim_runtime.profiles import NodeGpuFacts, ScaleUpOption

log = logging.getLogger(__name__)

#: Autoscaler pools the operator reads, by kind: (API group, plural). Served only where their CRDs exist.
POOL_KINDS: dict[str, tuple[str, str]] = {
    "NodePool": ("karpenter.sh", "nodepools"),
    "MachineDeployment": ("cluster.x-k8s.io", "machinedeployments"),
}
#: Seconds a listed GPU catalogue is used before it is listed again.
CATALOG_TTL_SECONDS = 60.0
#: Pods per page of that list.
POD_PAGE = 250
#: Seconds the GPUs held by pods (one list of every pod) are used before they are listed again.
USAGE_TTL_SECONDS = 10.0


class ClusterCapacity:
    """Thread-safe store of the pools autoscalers offer and the GPUs pods hold."""

    def __init__(self, kube: Kube | None, *, namespace: str | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.usage = GpuUsage()
        self._pools: dict[tuple[str, str], dict[str, Any]] = {}
        self._catalog = capacity.Catalog()
        self._catalog_read = -CATALOG_TTL_SECONDS
        self._usage_read = -USAGE_TTL_SECONDS
        self._usage_denied = False
        self._lock = threading.Lock()

    def prime(self, *, pods: bool = False) -> None:
        """Read the pools (and, for a one-off plan, the pods) once, before any watch delivers them."""
        if self.kube is None:
            return
        for kind, (group, plural) in POOL_KINDS.items():
            for obj in self.kube.list_optional(group, plural):
                self.pool_seen(kind, obj)
        if pods:
            self.refresh_usage(force=True)

    def without_usage(self, why: str) -> None:
        """Never list pods: every allocatable GPU counts as free (an operator watching only some
        namespaces may not read the pods of the others, and asking would only be refused)."""
        self._usage_denied = True
        log.info("free GPUs are taken to be all allocatable ones: %s", why)

    def refresh_usage(self, *, force: bool = False) -> None:
        """List the pods that hold a node (not finished) when the last list is older than the TTL.

        Where the operator may not list pods cluster-wide (namespaced mode) GPUs count as free, once said.
        """
        now = time.monotonic()
        if self.kube is None or self._usage_denied or (not force and now - self._usage_read < USAGE_TTL_SECONDS):
            return
        self._usage_read = now
        try:
            self.usage.replace(self._pods_on_nodes())
        except client.ApiException as err:
            # Free GPUs only inform a decision: a failed list must not fail the reconcile that asked.
            if err.status == 403:
                self._usage_denied = True
                log.info("may not list pods cluster-wide: free GPUs are taken to be all allocatable ones")
            else:
                log.warning("cannot list pods for free GPUs (%s): the last list is used", err.reason)

    def _pods_on_nodes(self) -> Iterator[dict[str, Any]]:
        """Every pod that holds a node, a page at a time: one response of every pod in a large cluster
        (tens of MB parsed at once) set the operator's peak memory."""
        assert self.kube is not None
        token = ""
        while True:
            query = [("fieldSelector", "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed")]
            query += [("limit", str(POD_PAGE)), *([("continue", token)] if token else [])]
            metrics.API_READS.labels("Pod").inc()
            page = self.kube.request("GET", "/api/v1/pods", query=query)
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def pool_seen(self, kind: str, obj: Mapping[str, Any], *, deleted: bool = False) -> bool:
        """Remember a NodePool (kind ``NodePool``) or node group; whether what placement reads of it changed
        (status heartbeats and node counts below a limit are not news)."""
        key = (kind, obj["metadata"]["name"])
        with self._lock:
            before = self._pools.get(key)
            if deleted:
                self._pools.pop(key, None)
            else:
                self._pools[key] = dict(obj)
            after = self._pools.get(key)
        return self._parse(key[0], before) != self._parse(key[0], after)

    def _parse(self, kind: str, obj: Mapping[str, Any] | None) -> capacity.Pool | None:
        if obj is None:
            return None
        return capacity.nodepool(obj, self._catalog) if kind == "NodePool" else capacity.node_group(obj)

    def catalog(self) -> capacity.Catalog:
        """The GPU catalogue from the ConfigMaps labelled ``nimoperator.dev/gpu-catalog``, merged; a broken
        one is logged and skipped (it must not stop placement of every service)."""
        now = time.monotonic()
        if self.kube is None or now - self._catalog_read < CATALOG_TTL_SECONDS:
            return self._catalog
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        metrics.API_READS.labels("ConfigMap").inc()
        try:
            items = self.kube.request(
                "GET", f"/api/v1{scope}/configmaps", query=[("labelSelector", c.GPU_CATALOG_LABEL)]
            )["items"]
        except client.ApiException as err:
            log.warning("cannot list GPU catalogue ConfigMaps: %s", err.reason)
            items = []
        types: dict[str, ScaleUpOption] = {}
        groups: list[capacity.Pool] = []
        for item in sorted(items, key=lambda i: (i["metadata"]["namespace"], i["metadata"]["name"])):
            where = f"ConfigMap {item['metadata']['namespace']}/{item['metadata']['name']}"
            try:
                parsed = capacity.parse_catalog(item.get("data") or {}, where=where)
            except capacity.CatalogError as err:
                log.warning("%s", err)
                continue
            types.update(parsed.instance_types)
            groups += parsed.node_groups
        self._catalog = capacity.Catalog(types, tuple(groups))
        self._catalog_read = now
        return self._catalog

    def pools(self) -> list[capacity.Pool]:
        catalog = self.catalog()
        with self._lock:
            raw = list(self._pools.items())
        parsed = [
            capacity.nodepool(obj, catalog) if kind == "NodePool" else capacity.node_group(obj)
            for (kind, _), obj in raw
        ]
        return [p for p in parsed if p is not None] + list(catalog.node_groups)

    def for_service(
        self, key: tuple[str, str], nodes: list[NodeGpuFacts], tolerations: list[dict[str, Any]]
    ) -> tuple[list[NodeGpuFacts], list[ScaleUpOption]]:
        """The nodes with the GPUs other pods leave free, and the pools' shapes for this service."""
        self.refresh_usage()
        return self.usage.free(nodes, exclude=key), capacity.options_for(self.pools(), tolerations)
