"""Which watch events are news for which NIMService. Pure: no API calls, no kopf.

Every event only *queues* a reconcile (see ``workqueue``); these functions keep the queue from filling
with work that cannot change anything: status writes of our own, node heartbeats, a GPU node of a
product that no decision involves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceStatus
from nim_runtime.profiles import NodeGpuFacts

#: Failure reasons a change of the cluster's GPU nodes can cure (a spec refusal waits for a spec edit).
NODE_CURABLE_FAILURES = frozenset({"NoProfileFits"})


def spec_level_change(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether a NIMService event changed something a reconcile reads, rather than only its status.

    Our own status writes come back as events; reconciling on them would double every reconcile. The
    generation moves with every spec change; labels and annotations (not counted in it) are read too,
    and a deletion timestamp ends the service.
    """
    if before is None:
        return True
    b, a = before.get("metadata") or {}, after.get("metadata") or {}
    return any(
        b.get(field) != a.get(field) for field in ("uid", "generation", "labels", "annotations", "deletionTimestamp")
    )


def owner_of(obj: Mapping[str, Any], kind: str = c.KIND) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of the controlling owner of ``kind``, or None."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return str(meta.get("namespace") or ""), str(ref.get("name")), str(ref.get("uid"))
    return None


def _failure_reason(status: NIMServiceStatus) -> str | None:
    failed = next((cond for cond in status.conditions if cond.type == "Failed" and cond.status == "True"), None)
    return failed.reason if failed is not None else None


def missing_api(status: NIMServiceStatus | None) -> bool:
    """Whether the service lacks an API the cluster may start serving (an optional integration's, which
    degrades it, or a required one's, which fails it until the CRDs arrive)."""
    if status is None:
        return False
    return any(
        (cond.type == "Degraded" and cond.status == "True")
        or (cond.type == "Failed" and cond.status == "True" and cond.reason == "MissingAPI")
        for cond in status.conditions
    )


def node_change_affects(
    status: NIMServiceStatus | None, before: NodeGpuFacts | None, after: NodeGpuFacts | None
) -> bool:
    """Whether a node's GPU facts going from ``before`` to ``after`` can change this service.

    A service whose decision names GPU products is affected only by nodes of those products (one of them
    leaving may move it; a new product joining never does: decisions stick). A service with no decision
    yet, or one that failed because no profile fit, may fit now. A refused spec or a service whose runtime
    chooses its own profile cannot be changed by any node.
    """
    if status is None:
        return True
    if status.state == "Failed":
        return _failure_reason(status) in NODE_CURABLE_FAILURES
    profile = status.profile
    if profile is None or profile.id is None:
        return False
    products: set[str | None] = set(profile.gpu_products)
    if profile.tags.get("device") == "cpu":
        products.add(None)
    if not products:
        return True  # pinned to products no node offers yet: any GPU node may be the first
    touched = {facts.product for facts in (before, after) if facts is not None}
    return bool(products & touched)
