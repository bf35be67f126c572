"""Every child of a NIMService, or the instruction to delete one whose feature is off."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.group_layout import GroupLayout
from nim_operator.placement import Placement
from nim_operator.render import dra, lws
from nim_operator.render.apis import requires, unserved
from nim_operator.render.deployment import render_deployment
from nim_operator.render.epp import render_epp
from nim_operator.render.kserve import KSERVE_API, render_inference_service
from nim_operator.render.meta import Owner, child_metadata, selector_labels
from nim_operator.render.pod_extras import service_ports
from nim_operator.render.router import GATEWAY_API, render_grpc_route, render_http_route, render_router_ingress

if TYPE_CHECKING:
    from nim_operator.cache_mount import CacheMount


@dataclass(frozen=True)
class Child:
    """One child: its identity, and its desired body or None when it must not exist.

    ``requires`` marks an optional integration (its API may be absent from a cluster): what to install,
    and what to turn off instead. Without its API the service still serves and says what is missing.
    """

    api_version: str
    kind: str
    name: str
    body: dict[str, Any] | None
    requires: str | None = None
    #: For a required child whose API may be absent (KServe's InferenceService): what to install and how to
    #: do without, for the Failed condition (reason MissingAPI) while the cluster does not serve it.
    unserved: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.api_version, self.kind, self.name)


def service_name(owner: Owner, spec: NIMServiceSpec) -> str:
    return spec.expose.service.name or owner.name


def render_service(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    svc = spec.expose.service
    selector = selector_labels(owner)
    if spec.multi_node is not None:
        selector[c.LABEL_ROLE] = lws.LEADER  # only a group's leader serves the API
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, service_name(owner, spec), {**spec.labels, **svc.labels}, svc.annotations),
        "spec": {
            "type": svc.type,
            "selector": selector,
            "ports": [
                {"name": c.API_PORT_NAME, "port": svc.port, "targetPort": c.API_PORT_NAME, "protocol": "TCP"},
                *service_ports(spec),
            ],
        },
    }


def render_pdb(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    """At most one pod down at a time for voluntary disruptions; an unhealthy pod never blocks a drain.

    None for a single replica: a budget of one unavailable pod out of one protects nothing (a drain may
    always evict it), so it would only be one more object per service.
    """
    if not spec.autoscaling and spec.desired_replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(owner, owner.name, spec.labels),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def default_hpa_metrics() -> list[dict[str, Any]]:
    """Scale on queued requests per pod (the runtime's metric, through a custom-metrics adapter)."""
    return [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": c.DEFAULT_HPA_METRIC},
                "target": {"type": "AverageValue", "averageValue": c.DEFAULT_HPA_QUEUE_TARGET},
            },
        }
    ]


def render_hpa(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    if not spec.autoscaling or spec.scale is None or spec.scale.hpa is None:
        return None
    hpa = spec.scale.hpa
    body: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
        "minReplicas": hpa.min_replicas,
        "maxReplicas": hpa.max_replicas,
        "metrics": copy.deepcopy(hpa.metrics) or default_hpa_metrics(),
    }
    if hpa.behavior:
        body["behavior"] = copy.deepcopy(hpa.behavior)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(owner, owner.name, spec.labels),
        "spec": body,
    }


def render_service_monitor(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    if spec.metrics is None or not spec.metrics.enabled:
        return None
    sm = spec.metrics.service_monitor
    endpoint: dict[str, Any] = {"port": c.API_PORT_NAME, "path": c.METRICS_PATH}
    if sm.interval:
        endpoint["interval"] = sm.interval
    if sm.scrape_timeout:
        endpoint["scrapeTimeout"] = sm.scrape_timeout
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": child_metadata(owner, owner.name, {**spec.labels, **sm.additional_labels}, sm.annotations),
        "spec": {"selector": {"matchLabels": selector_labels(owner)}, "endpoints": [endpoint]},
    }


def render_ingress(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    ingress = spec.expose.ingress
    if ingress is None or not ingress.enabled:
        return None
    backend = {"service": {"name": service_name(owner, spec), "port": {"name": c.API_PORT_NAME}}}
    body = copy.deepcopy(ingress.spec) if ingress.spec else {}
    # Paths without a backend point at our Service, so a host and a path are all a user must write.
    for rule in body.get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            path.setdefault("backend", backend)
            path.setdefault("pathType", "Prefix")
    if not body.get("rules") and "defaultBackend" not in body:
        body["defaultBackend"] = backend
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": child_metadata(owner, owner.name, spec.labels, ingress.annotations),
        "spec": body,
    }


def _ingress(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    return render_ingress(owner, spec) or render_router_ingress(owner, spec)


def render_network_policy(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    """Ingress to the pods on the api port only (inference, health and metrics all live there)."""
    policy = spec.network_policy
    if policy is None or not policy.enabled:
        return None
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": spec.expose.service.port}]}
    if policy.from_:
        rule["from"] = copy.deepcopy(policy.from_)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(owner, owner.name, spec.labels),
        "spec": {"podSelector": {"matchLabels": selector_labels(owner)}, "policyTypes": ["Ingress"], "ingress": [rule]},
    }


def render_pvc(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    pvc = spec.storage.pvc if spec.storage else None
    if pvc is None or not pvc.create:
        return None
    body: dict[str, Any] = {
        "accessModes": [pvc.volume_access_mode or "ReadWriteOnce"],
        "resources": {"requests": {"storage": pvc.size}},
    }
    if pvc.storage_class:
        body["storageClassName"] = pvc.storage_class
    meta = child_metadata(owner, pvc_name(owner, spec), spec.labels)
    # Not owned: the claim holds weights that outlive the NIMService (a delete and re-create, a GitOps
    # rename, must find them), so garbage collection never takes it. Its labels say whose it is.
    del meta["ownerReferences"]
    if pvc.annotations:
        meta["annotations"] = dict(pvc.annotations)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": body}


def pvc_name(owner: Owner, spec: NIMServiceSpec) -> str:
    pvc = spec.storage.pvc if spec.storage else None
    return (pvc.name if pvc and pvc.name else None) or f"{owner.name}-pvc"


def _workload(
    owner: Owner,
    spec: NIMServiceSpec,
    placement: Placement,
    cache: CacheMount | None,
    surge_blocked: bool,
    group: GroupLayout | None,
    claims: dra.ClaimPlan,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(Deployment, LeaderWorkerSet): the one that runs the pods, the other None (to be deleted); both None
    under KServe, whose InferenceService runs them."""
    if spec.inference_platform == "kserve":
        return None, None
    if group is None:
        deployment = render_deployment(owner, spec, placement, cache, surge_blocked=surge_blocked)
        dra.apply_to_pod(deployment["spec"]["template"]["spec"], claims, spec)
        return deployment, None
    group_set = lws.render_leader_worker_set(owner, spec, placement, group, cache)
    templates = group_set["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        dra.apply_to_pod(templates[role]["spec"], claims, spec)
    return None, group_set


def _inference_service(
    owner: Owner, spec: NIMServiceSpec, placement: Placement, cache: CacheMount | None, claims: dra.ClaimPlan
) -> dict[str, Any] | None:
    """KServe's InferenceService, its predictor pod with the DRA claims the Deployment's would have."""
    isvc = render_inference_service(owner, spec, placement, cache)
    if isvc is not None:
        dra.apply_to_pod(isvc["spec"]["predictor"], claims, spec)
    return isvc


def render_children(
    owner: Owner,
    spec: NIMServiceSpec,
    placement: Placement,
    cache: CacheMount | None = None,
    *,
    surge_blocked: bool = False,
    group: GroupLayout | None = None,
    claims: dra.ClaimPlan | None = None,
) -> list[Child]:
    """All children in apply order (storage and claim templates before the pods that use them).

    ``surge_blocked`` as for :func:`~nim_operator.render.deployment.rollout_strategy`. ``group`` (a
    multi-node layout) makes the pods a LeaderWorkerSet's instead of a Deployment's; ``claims`` are the
    pods' DRA claims, with the templates the operator makes for them.
    """
    claims = claims or dra.ClaimPlan()
    rendered: list[tuple[str, str, str, dict[str, Any] | None]] = []
    claim = render_pvc(owner, spec)
    if claim is not None:
        # Only ever applied, never rendered as a deletion: no reconcile deletes a claim that holds weights
        # (turning storage.pvc.create off, or moving to emptyDir, leaves it for the user to remove).
        rendered.append(("v1", "PersistentVolumeClaim", pvc_name(owner, spec), claim))
    # Templates come and go by name (their spec is immutable); the reconciler prunes the ones not rendered.
    rendered += [(dra.API_VERSION, dra.TEMPLATE_KIND, t["metadata"]["name"], t) for t in claims.templates]
    deployment, group_set = _workload(owner, spec, placement, cache, surge_blocked, group, claims)
    # Under KServe, the InferenceService's controller makes the Deployment, Service, autoscaler and routes.
    standalone = spec.inference_platform != "kserve"
    rendered += [
        ("apps/v1", "Deployment", owner.name, deployment),
        (lws.API_VERSION, lws.KIND, lws.lws_name(owner), group_set),
        ("v1", "Service", service_name(owner, spec), render_service(owner, spec) if standalone else None),
        ("policy/v1", "PodDisruptionBudget", owner.name, render_pdb(owner, spec)),
        ("autoscaling/v2", "HorizontalPodAutoscaler", owner.name, render_hpa(owner, spec) if standalone else None),
        # One Ingress, from either field (admission refuses both): expose.ingress or router.ingress.
        ("networking.k8s.io/v1", "Ingress", owner.name, _ingress(owner, spec) if standalone else None),
        ("networking.k8s.io/v1", "NetworkPolicy", owner.name, render_network_policy(owner, spec)),
        (KSERVE_API, "InferenceService", owner.name, _inference_service(owner, spec, placement, cache, claims)),
        *render_epp(owner, spec),
        (GATEWAY_API, "HTTPRoute", owner.name, render_http_route(owner, spec)),
        (GATEWAY_API, "GRPCRoute", owner.name, render_grpc_route(owner, spec)),
    ]
    children = [
        Child(api, kind, name, body, requires=requires(spec, api, kind), unserved=unserved(spec, api, kind))
        for api, kind, name, body in rendered
    ]
    children.append(
        Child(
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
            owner.name,
            render_service_monitor(owner, spec),
            requires="spec.metrics asks for a ServiceMonitor: install the Prometheus Operator's CRDs "
            "(monitoring.coreos.com/v1) and it is created within a minute, or set spec.metrics.enabled to false",
        )
    )
    return children
