"""What the operator keeps of a watched object: the object without the bookkeeping no decision reads.

Every NIMService, Deployment, pod and Job the watches deliver is kept between reconciles (status reads
them instead of a GET). ``metadata.managedFields`` (one entry per field manager, each a tree of every field
it set) is a large share of such an object, and kubectl's last-applied annotation repeats the whole
spec; at 1,000 services they were most of the operator's memory. The one fact read from managedFields,
which managers own a Deployment's ``spec.replicas`` (the hand-over to an autoscaler), is kept in reduced
entries that say just that.

Deployments and pods of NIMServices, one or more per service, are also kept without the pod spec that no
decision reads of them (two thirds of each object as Python holds it): status reads a Deployment's counts
and a pod's state, and of a pod's spec only its containers' resources (an OOM-killed container's limit).
"""

from __future__ import annotations

from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def owns_replicas(entry: dict[str, Any]) -> bool:
    """Whether a managedFields entry owns ``spec.replicas``."""
    return "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without managedFields (but who owns ``spec.replicas``) and without kubectl's last-applied
    annotation. A shallow copy: the rest is shared with ``obj``, which the caller no longer changes."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    annotations = meta.get("annotations") or {}
    if "managedFields" not in meta and LAST_APPLIED not in annotations:
        return obj
    kept = {key: value for key, value in meta.items() if key != "managedFields"}
    replicas = [
        {"manager": e.get("manager"), "operation": e.get("operation"), "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for e in meta.get("managedFields") or []
        if owns_replicas(e)
    ]
    if replicas:
        kept["managedFields"] = replicas
    if LAST_APPLIED in annotations:
        kept["annotations"] = {key: value for key, value in annotations.items() if key != LAST_APPLIED}
    return {**obj, "metadata": kept}


def slim_deployment(deployment: dict[str, Any]) -> dict[str, Any]:
    """:func:`slim`, and without ``spec.template``: what a Deployment is kept as between reconciles."""
    kept = slim(deployment)
    spec = kept.get("spec")
    if not isinstance(spec, dict) or "template" not in spec:
        return kept
    return {**kept, "spec": {key: value for key, value in spec.items() if key != "template"}}


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """:func:`slim`, with a spec of the node and the containers' names and resources only."""
    kept = slim(pod)
    spec = kept.get("spec")
    if not isinstance(spec, dict):
        return kept
    containers = [
        {key: container[key] for key in ("name", "resources") if key in container}
        for container in spec.get("containers") or []
    ]
    reduced: dict[str, Any] = {"containers": containers}
    if "nodeName" in spec:
        reduced["nodeName"] = spec["nodeName"]
    return {**kept, "spec": reduced}
