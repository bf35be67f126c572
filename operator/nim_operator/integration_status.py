"""The reads behind the router's and KServe's part of a NIMService's status (shell; the meaning is in
``render.router`` and ``render.kserve``).

A Gateway lives wherever its owner put it and is read by name: None when it does not exist. A live route
or InferenceService comes from this pass's apply when there was one, else from one GET.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.kube import Kube, _message
from nim_operator.render.children import service_name
from nim_operator.render.kserve import KSERVE_API, isvc_endpoints, isvc_readiness
from nim_operator.render.meta import Owner
from nim_operator.render.router import GATEWAY_API, ROUTED_CONDITION, route_kinds, route_state
from nim_operator.status import StatusExtras


def _live(kube: Kube, applied: Mapping[str, dict[str, Any]], api_version: str, kind: str, owner: Owner) -> Any:
    return applied.get(kind) or kube.get(api_version, kind, owner.namespace, owner.name)


def _gateway(kube: Kube, spec: NIMServiceSpec) -> tuple[dict[str, Any] | None, str | None]:
    """(the named Gateway or None, why it could not be read)."""
    router = spec.effective_router
    gateway = router.gateway if router is not None else None
    if gateway is None:
        return None, None
    try:
        return kube.get(GATEWAY_API, "Gateway", gateway.namespace, gateway.name), None
    except client.ApiException as err:
        if err.status == 403:
            return None, f"{_message(err) or 'forbidden'} (give the operator get on gateways in {gateway.namespace})"
        raise


def _ready_pods(pods: list[dict[str, Any]]) -> tuple[int, int]:
    """(ready, current) pods, for an InferenceService whose status counts none."""
    current = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    ready = [
        p
        for p in current
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]
    return len(ready), len(current)


def status_extras(
    kube: Kube, owner: Owner, spec: NIMServiceSpec, applied: Mapping[str, dict[str, Any]], pods: list[dict[str, Any]]
) -> StatusExtras:
    """KServe's readiness and endpoints, and the Routed condition, for this pass's status."""
    readiness = cluster = external = None
    if spec.inference_platform == "kserve":
        isvc = _live(kube, applied, KSERVE_API, "InferenceService", owner)
        ready, reason, message = isvc_readiness(isvc)
        readiness = (ready, reason, message, *_ready_pods(pods))
        cluster, external = isvc_endpoints(isvc)
    conditions: tuple[tuple[str, bool, str, str], ...] = ()
    # Without the Gateway API the routes are left out, and the Degraded condition says what to install.
    kinds = [kind for kind in route_kinds(spec) if kube.served(GATEWAY_API, kind)]
    if kinds:
        gateway, unreadable = _gateway(kube, spec)
        routes = [r for kind in kinds if (r := _live(kube, applied, GATEWAY_API, kind, owner)) is not None]
        port = spec.expose.service.port
        endpoint = f"{service_name(owner, spec)}.{owner.namespace}.svc.cluster.local:{port}"
        state = route_state(spec, gateway=gateway, routes=routes, endpoint=endpoint, unreadable=unreadable)
        if state is not None:
            conditions = ((ROUTED_CONDITION, state.ok, state.reason, state.message),)
    return StatusExtras(
        readiness=readiness, cluster_endpoint=cluster, external_endpoint=external, conditions=conditions
    )
