"""The kopf shell: watches that feed the controller. No decisions are made here.

Every kind the operator owns is watched with a server-side label selector (the API server sends only
our children, not every Deployment or pod of the cluster); every event is handed to the controller,
which queues the reconciles it can affect. Reconciles run on the controller's workers, retried with
backoff whatever triggered them, and a periodic resync re-queues everything.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import kopf

from nim_operator import constants as c
from nim_operator.cache_reconciler import CacheReconciler
from nim_operator.capacity import options_for
from nim_operator.cluster_capacity import POOL_KINDS
from nim_operator.controller import Controller
from nim_operator.discovery import ManifestDiscovery, is_probe
from nim_operator.integrations import IngressClasses
from nim_operator.kopf_watch import tolerate_vanishing_resources
from nim_operator.kube import PLURALS, Kube, api_client
from nim_operator.manifest_probe import split_image
from nim_operator.placement import node_facts, node_schedulable
from nim_operator.reconciler import Reconciler

log = logging.getLogger(__name__)

#: Every kind the operator writes: listed once at start to learn what it applied before, then watched.
CHILD_KINDS = list(PLURALS)
OURS = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
#: Seconds between two resyncs of every object (env NIM_OPERATOR_RESYNC_SECONDS; 0 turns it off).
DEFAULT_RESYNC_SECONDS = 60.0


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: every handler here is an event handler that only queues a reconcile, so kopf has no
    change to detect. Its default builds one per event anyway, deep-copying the whole watched object (a
    pod, a Deployment with its managed fields): the largest CPU cost of the operator at a thousand
    services, and CPU the API server on the same nodes then lacks."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo["controller"]
    return controller


def _with_kind(body: kopf.Body, api_version: str, kind: str) -> dict[str, Any]:
    obj = dict(body)
    obj.setdefault("apiVersion", api_version)
    obj.setdefault("kind", kind)
    return obj


def select_our_objects(settings: kopf.OperatorSettings) -> None:
    """Ask the API server for our children and pods only (a label selector on each watch): kopf's handler
    filters alone would still receive, decode and drop every Deployment and pod of the cluster."""
    for api_version, kind in CHILD_KINDS:
        settings.watching.label_selectors[api_version, PLURALS[api_version, kind]] = OURS
    settings.watching.label_selectors["v1", "pods"] = OURS


#: Seconds kopf keeps an object's worker after its last event (kopf's default is 5). An idle worker still
#: holds that event's whole parsed body; when a thousand services start at once, their Deployments' and
#: pods' bodies held this way were a share of the creation burst's peak of memory (bench-operator:
#: 225 -> 211 MB). Our handlers only queue a reconcile, so a worker restarted for the next event costs little.
WORKER_IDLE_SECONDS = 0.5


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our Events are posted by the reconcilers themselves
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    tolerate_vanishing_resources()
    select_our_objects(settings)

    kube = Kube(api_client(os.environ.get("KUBECONFIG")))
    runtime_image = os.environ.get(c.ENV_RUNTIME_IMAGE) or c.DEFAULT_RUNTIME_IMAGE
    # Images' own manifests, asked once per image, for NIMServices and NGC NIMCaches alike.
    discovery = ManifestDiscovery(kube)
    reconciler = Reconciler(
        kube, kube.post_event, discovery=discovery, runtime_repository=split_image(runtime_image)[0]
    )
    for node in kube.list_nodes():
        reconciler.set_node(node["metadata"]["name"], node_facts(node), schedulable=node_schedulable(node))
        reconciler.dra.node_seen(node)
    # Before any reconcile, so that services on DRA-only nodes are not first placed without them.
    for resource_slice in kube.list_resource_slices():
        reconciler.dra.slice_seen(resource_slice)
    classes = kube.list_ingress_classes()
    if classes is not None:
        reconciler.ingress_classes = IngressClasses.of(classes)
    if memo.get("namespaces"):
        reconciler.capacity.without_usage("the operator watches only its namespaces (--namespace)")
    reconciler.capacity.prime()  # autoscaler pools, before the first decision counts on them
    # Before any reconcile: what was applied before a restart, so nothing is re-applied.

    def seen(obj: dict[str, Any]) -> None:
        if obj["kind"] == "Deployment":
            reconciler.deployment_seen(obj)
        elif is_probe(obj):
            discovery.seen(obj)

    learned = kube.warm(CHILD_KINDS, memo.get("namespaces") or None, seen=seen)
    log.info("learned %d existing children; watching %d nodes", learned, len(reconciler.nodes))
    pull_secrets = os.environ.get(c.ENV_RUNTIME_PULL_SECRETS, "")
    caches = CacheReconciler(
        kube,
        kube.post_event,
        runtime_image=runtime_image,
        runtime_pull_secrets=tuple(s for s in pull_secrets.split(",") if s),
        progress_interval=float(os.environ.get(c.ENV_PROGRESS_INTERVAL) or c.DEFAULT_PROGRESS_INTERVAL_S),
        discovery=discovery,
        nodes=lambda: list(reconciler.nodes.values()),
        pools=lambda: options_for(reconciler.capacity.pools(), [c.GPU_TOLERATION]),
    )
    controller = Controller(
        reconciler,
        caches,
        workers=int(os.environ.get("NIM_OPERATOR_WORKERS", "8")),
        resync_seconds=float(os.environ.get("NIM_OPERATOR_RESYNC_SECONDS", DEFAULT_RESYNC_SECONDS)),
    )
    controller.start()
    caches.start_progress(controller.cache_progress)
    memo["reconciler"] = reconciler
    memo["controller"] = controller


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    if "controller" in memo:
        _controller(memo).stop()


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
def nimservice(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).service_event(type, _with_kind(body, c.API_VERSION, c.KIND))


@kopf.on.event(c.GROUP, c.VERSION, c.CACHE_PLURAL)
def nimcache(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).cache_event(type, _with_kind(body, c.API_VERSION, c.CACHE_KIND))


def _child_handler(api_version: str, kind: str) -> None:
    """Register the event handler of one child kind (a function per kind: kopf keys handlers by id)."""
    group, _, version = api_version.rpartition("/")

    def child(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        obj = _with_kind(body, api_version, kind)
        if kind == "Job":
            _controller(memo).job_event(type, obj)
        else:
            _controller(memo).child_event(type, obj)

    kopf.on.event(group, version, PLURALS[api_version, kind], labels={c.LABEL_MANAGED_BY: c.MANAGED_BY}, id=kind)(child)


for _api_version, _kind in CHILD_KINDS:
    _child_handler(_api_version, _kind)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
def pod(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Pod health feeds status: a waiting reason, a crash or the scheduler's verdict says why replicas
    are missing. Pods are remembered even before their NIMService's first event (the watches start
    together), so its first reconcile already knows them."""
    _controller(memo).pod_event(type, _with_kind(body, "v1", "Pod"))


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions")
def crd(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).crd_event(type, dict(body))


@kopf.on.event("networking.k8s.io", "v1", "ingressclasses")
def ingress_class(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).ingress_class_event(type, dict(body))


@kopf.on.event("", "v1", "nodes")
def node(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).node_event(type, dict(body))


@kopf.on.event("resource.k8s.io", "v1", "resourceslices")
def resource_slice(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """GPUs offered through DRA are placement facts, like node labels."""
    _controller(memo).slice_event(type, dict(body))


# Capacity that may exist: Karpenter NodePools and Cluster API node groups (kopf serves these only where
# their CRDs exist). A change that placement reads re-queues the services.
@kopf.on.event(*POOL_KINDS["NodePool"])
def nodepool(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _pool_event(memo, "NodePool", body, type)


@kopf.on.event(*POOL_KINDS["MachineDeployment"])
def node_group(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _pool_event(memo, "MachineDeployment", body, type)


def _pool_event(memo: kopf.Memo, kind: str, body: kopf.Body, type: str | None) -> None:
    reconciler: Reconciler = memo["reconciler"]
    if reconciler.capacity.pool_seen(kind, dict(body), deleted=type == "DELETED"):
        _controller(memo).capacity_changed()
