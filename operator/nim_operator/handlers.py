"""The kopf shell: watches that feed the reconciler. No decisions are made here.

NIMService spec changes go through kopf's create/update/resume handlers (with kopf's retries and
backoff); Deployment, Pod and Node events re-run the same level-based reconcile.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.cache_reconciler import CacheReconciler, cache_of
from nim_operator.kube import PLURALS, Kube, api_client
from nim_operator.placement import node_facts
from nim_operator.reconciler import Reconciler

log = logging.getLogger(__name__)

# Every kind the operator writes: the kinds it lists once at start to learn what it applied before.
CHILD_KINDS = list(PLURALS)

# NIMService bodies by (namespace, name), kept current by their watch, for child- and node-triggered runs.
_services: dict[tuple[str, str], dict[str, Any]] = {}


def _emit(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message[:1024])


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base in annotations of our own prefix: status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="nimoperator.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="nimoperator.dev", key="last-handled-configuration"
    )
    # kopf would post an Event for every handler's success; ours (kopf.event) are the ones users need.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = int(os.environ.get("NIM_OPERATOR_WORKERS", "8"))
    settings.watching.server_timeout = 300
    kube = Kube(api_client(os.environ.get("KUBECONFIG")))
    reconciler = Reconciler(kube, _emit)
    for node in kube.list_nodes():
        facts = node_facts(node)
        if facts is not None:
            reconciler.nodes[facts.name] = facts
    learned = kube.warm(CHILD_KINDS, memo.get("namespaces") or None)
    log.info("learned %d existing children; watching %d nodes", learned, len(reconciler.nodes))
    memo["reconciler"] = reconciler
    pull_secrets = os.environ.get(c.ENV_RUNTIME_PULL_SECRETS, "")
    memo["caches"] = CacheReconciler(
        kube,
        _emit,
        runtime_image=os.environ.get(c.ENV_RUNTIME_IMAGE) or c.DEFAULT_RUNTIME_IMAGE,
        runtime_pull_secrets=tuple(s for s in pull_secrets.split(",") if s),
    )


def _reconciler(memo: kopf.Memo) -> Reconciler:
    reconciler: Reconciler = memo["reconciler"]
    return reconciler


def _caches(memo: kopf.Memo) -> CacheReconciler:
    caches: CacheReconciler = memo["caches"]
    return caches


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
def track(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if type == "DELETED":
        _services.pop(key, None)
        metrics.STATES.set(key[0], key[1], None)
        _reconciler(memo).forget(body.metadata.uid or "", namespace=key[0], name=key[1])
    else:
        _services[key] = dict(body)


@kopf.on.resume(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.create(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, c.PLURAL)
def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).reconcile(dict(body))


@kopf.on.event("apps", "v1", "deployments", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
def deployment_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    reconciler = _reconciler(memo)
    deployment = dict(body)
    deployment.setdefault("apiVersion", "apps/v1")
    deployment.setdefault("kind", "Deployment")
    owner = next((r for r in body.metadata.get("ownerReferences", []) if r.get("kind") == c.KIND), None)
    if owner is None:
        return
    service = _services.get((body.metadata.namespace or "", owner["name"]))
    if service is None or service["metadata"].get("uid") != owner.get("uid"):
        return
    if type == "DELETED":
        reconciler.deployment_gone(body.metadata.namespace or "", body.metadata.name or "")
    else:
        reconciler.deployment_seen(deployment)
    reconciler.reconcile(service)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
def pod_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Pod health feeds status: a waiting reason, a crash or the scheduler's verdict says why replicas are
    missing. Pods belong to ReplicaSets, so the reconciler finds their NIMService by its selector labels.

    Pods are remembered even before their NIMService's first event (the watches start together), so its
    first reconcile already knows them.
    """
    reconciler = _reconciler(memo)
    pod = dict(body)
    if cache_of(pod) is not None:
        _cache_child_changed(memo, pod, type, pod=True)
        return
    key = reconciler.pod_gone(pod) if type == "DELETED" else reconciler.pod_seen(pod)
    if key is None:
        return
    service = _services.get(key)
    if service is not None:
        reconciler.reconcile(service)


@kopf.on.event("", "v1", "nodes")
def node_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Re-place services only when the GPU facts change: node heartbeats are not news."""
    reconciler = _reconciler(memo)
    name = body.metadata.name or ""
    facts = None if type == "DELETED" else node_facts(dict(body))
    if reconciler.nodes.get(name) == facts:
        return
    if facts is None:
        reconciler.nodes.pop(name, None)
    else:
        reconciler.nodes[name] = facts
    for service in list(_services.values()):
        try:
            reconciler.reconcile(service)
        except Exception:  # one broken service must not starve the others; its own handler retries
            log.exception(
                "re-placing %s/%s after a node change failed",
                service["metadata"]["namespace"],
                service["metadata"]["name"],
            )


# NIMCaches: bodies kept for their Jobs' and pods' events and for the NIMServices that mount them.
_cache_bodies: dict[tuple[str, str], dict[str, Any]] = {}


@kopf.on.event(c.GROUP, c.VERSION, c.CACHE_PLURAL)
def track_cache(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Keep the NIMCache's body; a cache that changed state re-runs the NIMServices that mount it."""
    key = (body.metadata.namespace or "", body.metadata.name or "")
    reconciler = _reconciler(memo)
    before = reconciler.caches.get(key)
    if type == "DELETED":
        _cache_bodies.pop(key, None)
        reconciler.caches.pop(key, None)
        _caches(memo).forget(body.metadata.uid or "", key[0], key[1])
    else:
        _cache_bodies[key] = reconciler.caches[key] = dict(body)
    after = reconciler.caches.get(key)
    if (before or {}).get("status") == (after or {}).get("status") and (before is None) == (after is None):
        return
    for service_key in reconciler.services_mounting(*key):
        service = _services.get(service_key)
        if service is not None:
            reconciler.reconcile(service)


@kopf.on.resume(c.GROUP, c.VERSION, c.CACHE_PLURAL)
@kopf.on.create(c.GROUP, c.VERSION, c.CACHE_PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, c.CACHE_PLURAL)
def reconcile_cache(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _caches(memo).reconcile(dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
def job_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    job = dict(body)
    job.setdefault("apiVersion", "batch/v1")
    job.setdefault("kind", "Job")
    _cache_child_changed(memo, job, type, pod=False)


def _cache_child_changed(memo: kopf.Memo, obj: dict[str, Any], type: str | None, *, pod: bool) -> None:
    caches = _caches(memo)
    if pod:
        key = caches.pod_gone(obj) if type == "DELETED" else caches.pod_seen(obj)
    else:
        key = caches.job_gone(obj) if type == "DELETED" else caches.job_seen(obj)
    cache = _cache_bodies.get(key) if key is not None else None
    if cache is None:
        return
    try:
        caches.reconcile(cache)
    except Exception:  # the cache's own handler retries; one failure must not stop the watch
        log.exception("reconciling NIMCache %s/%s failed", *key)  # type: ignore[misc]
