"""``inferencePlatform: kserve``: the NIM pod as a KServe InferenceService predictor, and its readiness as
KServe reports it. Pure.

The predictor carries the same pod the Deployment would (placement, probes, security, storage, proxy,
init and sidecar containers), and KServe makes the Deployment (or Knative Service), Service, autoscaler
and routes from it. What NVIDIA's operator sets is set here too: the deployment mode (see
``api.kserve.deployment_mode``), metric
aggregation and Prometheus scraping, cluster-local visibility unless an ingress is asked for, replicas as
min = max (or the HPA's bounds and first cpu/memory metric), and in Knative mode unnamed ports and
numeric probe ports. Knative also refuses a pod-level security context, a grace period and preStop hooks
by default, so those are left to it there.
"""

from __future__ import annotations

import copy
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubernetes.utils.quantity import parse_quantity

from nim_operator import constants as c
from nim_operator.api.kserve import DEPLOYMENT_MODE_ANNOTATION, deployment_mode
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement
from nim_operator.render.deployment import render_deployment
from nim_operator.render.meta import Owner, child_metadata

if TYPE_CHECKING:
    from nim_operator.cache_mount import CacheMount

KSERVE_API = "serving.kserve.io/v1beta1"
VISIBILITY_LABEL = "networking.kserve.io/visibility"
_ANNOTATIONS = {
    "serving.kserve.io/enable-metric-aggregation": "true",
    "serving.kserve.io/enable-prometheus-scraping": "true",
}
_AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
#: KServe's readiness of the predictor, and of the whole InferenceService when it reports no predictor.
_READY_CONDITIONS = ("PredictorReady", "Ready")


def _scaling(spec: NIMServiceSpec) -> tuple[dict[str, Any], dict[str, str]]:
    """(predictor scaling fields, InferenceService annotations) for Standard mode."""
    hpa = spec.scale.hpa if spec.autoscaling and spec.scale is not None else None
    if hpa is None:
        return {"minReplicas": spec.desired_replicas, "maxReplicas": spec.desired_replicas}, {}
    fields: dict[str, Any] = {"minReplicas": hpa.min_replicas, "maxReplicas": hpa.max_replicas}
    for metric in hpa.metrics:
        resource = metric.get("resource") or {}
        if metric.get("type") != "Resource" or resource.get("name") not in ("cpu", "memory"):
            continue  # FieldsIgnored says so (api.coverage.kserve_ignored)
        target = resource.get("target") or {}
        fields.update(scaleMetric=resource["name"], scaleMetricType=target.get("type"))
        value = _target(target)
        if value is not None:
            fields["scaleTarget"] = value
        break
    return fields, {_AUTOSCALER_CLASS: "hpa"}


def _target(target: dict[str, Any]) -> int | None:
    """The metric target as the whole number KServe's scaleTarget takes (a quantity rounded up)."""
    key = {"Utilization": "averageUtilization", "AverageValue": "averageValue", "Value": "value"}.get(
        target.get("type", "")
    )
    raw = target.get(key) if key else None
    if raw is None:
        return None
    try:
        value: Decimal = parse_quantity(raw)
    except ValueError:
        return None  # admission of the HPA spec is the API server's; an odd value leaves KServe's default
    return math.ceil(value)


def _numeric_port(probe: dict[str, Any] | None, port: int) -> dict[str, Any] | None:
    """A probe on the named api port, pointed at its number (Knative's containers have unnamed ports)."""
    if probe is None:
        return None
    out = copy.deepcopy(probe)
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if out.get(handler, {}).get("port") == c.API_PORT_NAME:
            out[handler]["port"] = port
    return out


def _knative_pod(pod: dict[str, Any], spec: NIMServiceSpec) -> dict[str, Any]:
    nim = pod["containers"][0]
    for port in nim.get("ports", []):
        port.pop("name", None)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in nim:
            nim[probe] = _numeric_port(nim[probe], spec.expose.service.port)
    nim.pop("lifecycle", None)
    for key in ("securityContext", "terminationGracePeriodSeconds"):
        pod.pop(key, None)
    return pod


def _ingress_asked(spec: NIMServiceSpec) -> bool:
    router = spec.effective_router
    legacy = spec.expose.ingress is not None and spec.expose.ingress.enabled
    return legacy or (router is not None and router.ingress is not None)


def render_inference_service(
    owner: Owner, spec: NIMServiceSpec, placement: Placement, cache: CacheMount | None = None
) -> dict[str, Any] | None:
    if spec.inference_platform != "kserve":
        return None
    template = render_deployment(owner, spec, placement, cache)["spec"]["template"]
    mode = deployment_mode(spec.annotations)
    pod = copy.deepcopy(template["spec"])
    annotations = {DEPLOYMENT_MODE_ANNOTATION: mode, **spec.annotations, **_ANNOTATIONS}
    predictor: dict[str, Any] = {"labels": dict(template["metadata"]["labels"])}
    if template["metadata"].get("annotations"):
        predictor["annotations"] = dict(template["metadata"]["annotations"])  # the pods', as the Deployment's
    if mode == "Standard":
        scaling, extra = _scaling(spec)
        predictor.update(scaling)
        annotations.update(extra)
        predictor["deploymentStrategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        }
    else:
        pod = _knative_pod(pod, spec)
    predictor.update(pod)
    meta = child_metadata(owner, owner.name, spec.labels, annotations)
    if VISIBILITY_LABEL not in spec.labels and not _ingress_asked(spec):
        meta["labels"][VISIBILITY_LABEL] = "cluster-local"
    return {"apiVersion": KSERVE_API, "kind": "InferenceService", "metadata": meta, "spec": {"predictor": predictor}}


def isvc_readiness(isvc: dict[str, Any] | None) -> tuple[bool, str, str]:
    """(ready, reason, message) of the predictor, in KServe's words where it has spoken."""
    if isvc is None:
        return False, "InferenceServiceMissing", "the InferenceService does not exist yet"
    name = isvc["metadata"]["name"]
    status = isvc.get("status") or {}
    generation = int(isvc["metadata"].get("generation") or 0)
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}
    found = next((conditions[t] for t in _READY_CONDITIONS if t in conditions), None)
    if found is None or int(status.get("observedGeneration") or 0) < generation:
        return (
            False,
            "WaitingForKServe",
            f"KServe has not reported on InferenceService {name} (generation {generation}) yet: is KServe's "
            "controller (kserve-controller-manager) running?",
        )
    if found.get("status") == "True":
        return True, str(found["type"]), found.get("message") or f"InferenceService {name} is ready"
    reason = found.get("reason") or f"{found['type']}False"
    return False, str(reason), f"InferenceService {name}: {found.get('message') or reason}"


def isvc_endpoints(isvc: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(cluster, external) URLs of a ready InferenceService, as KServe publishes them."""
    status = (isvc or {}).get("status") or {}
    return (status.get("address") or {}).get("url"), status.get("url")
