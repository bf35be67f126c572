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


def _reconciler(memo: kopf.Memo) -> Reconciler:
    reconciler: Reconciler = memo["reconciler"]
    return reconciler


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
