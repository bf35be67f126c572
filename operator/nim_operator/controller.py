"""Between the watches and the reconcilers: what is known of the cluster, and which object to reconcile next.

kopf's handlers (``handlers``) hand every event here and return at once. Events update what is known
(object bodies, children's applied state, pods, GPU nodes) and queue the keys of the objects they can
affect; worker threads reconcile those keys from the newest knowledge, retrying failures with backoff,
and a periodic resync queues every key as a safety net. No decision about *what* to do is made here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

from kubernetes import client

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.cache_mount import mount_facts
from nim_operator.cache_reconciler import CacheReconciler, cache_of
from nim_operator.discovery import is_probe
from nim_operator.integrations import IngressClasses
from nim_operator.placement import node_facts, node_schedulable
from nim_operator.reconciler import Reconciler
from nim_operator.render import lws
from nim_operator.slim import slim
from nim_operator.triggers import missing_api, node_change_affects, owner_of, spec_level_change
from nim_operator.workqueue import Resync, Workers, WorkQueue

log = logging.getLogger(__name__)


class Key(NamedTuple):
    """What a worker reconciles: a NIMService or a NIMCache, by namespace and name."""

    kind: str
    namespace: str
    name: str


class Controller:
    """Owns the queue, the workers and the resync; knows the watched bodies of our own resources."""

    def __init__(
        self,
        reconciler: Reconciler,
        caches: CacheReconciler,
        *,
        workers: int = 4,
        resync_seconds: float = 60.0,
        base_delay: float = 0.5,
        max_delay: float = 300.0,
    ) -> None:
        self.reconciler = reconciler
        self.caches = caches
        self.queue: WorkQueue[Key] = WorkQueue(base_delay=base_delay, max_delay=max_delay)
        self._guard = threading.Lock()
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.cache_bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self._ingress_classes: dict[str, dict[str, Any]] = {}
        self._workers = Workers(self.queue, self._process, count=workers, on_error=self._failed)
        self._resync = Resync(self.queue, self._all_keys, period=resync_seconds)

    def start(self) -> None:
        self._workers.start()
        self._resync.start()

    def stop(self) -> None:
        self.caches.progress.stop()
        self._resync.stop()
        self._workers.stop()

    def _queue(self, key: Key, trigger: str) -> None:
        metrics.QUEUED.labels(trigger).inc()
        self.queue.add(key)

    def _all_keys(self) -> list[Key]:
        with self._guard:
            keys = [Key(c.KIND, *k) for k in self.services] + [Key(c.CACHE_KIND, *k) for k in self.cache_bodies]
        metrics.QUEUED.labels("resync").inc(len(keys))
        return keys

    # --- events -------------------------------------------------------------------------------------

    def service_event(self, event: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event == "DELETED":
            with self._guard:
                self.services.pop(key, None)
            self.queue.forget(Key(c.KIND, *key))
            metrics.STATES.set(key[0], key[1], None)
            self.reconciler.forget(str(meta.get("uid") or ""), namespace=key[0], name=key[1])
            self.reconciler.discovery.forget_waiter((c.KIND, *key))
            return
        with self._guard:
            before = self.services.get(key)
            self.services[key] = slim(dict(body))
        if spec_level_change(before, body):
            self._queue(Key(c.KIND, *key), "spec")

    def child_event(self, event: str | None, obj: dict[str, Any]) -> None:
        """A child of any kind changed: learn it, and queue its NIMService when the change is news.

        A Deployment is news when a count status reads moved (its status is the service's readiness). Every
        kind is news when it is gone or was changed by someone else (see ``Kube.observe``): the reconcile
        restores it.
        """
        owner = owner_of(obj)
        trigger = "deployment" if obj.get("kind") == "Deployment" else "child"
        if obj.get("kind") == "Deployment":
            if event == "DELETED":
                self.reconciler.deployment_gone(obj["metadata"]["namespace"], obj["metadata"]["name"])
                news = True
            else:
                news = self.reconciler.deployment_seen(obj)
        elif obj.get("kind") == lws.KIND and owner is not None:
            # A multi-node service's readiness is its LeaderWorkerSet's status, as a Deployment's is.
            service = (owner[0], owner[1])
            if event == "DELETED":
                self.reconciler.group_gone(service, obj["metadata"]["name"])
            else:
                self.reconciler.group_seen(service, obj)
            news = True
        elif event == "DELETED":
            self.reconciler.kube.gone(obj)
            news = True
        else:
            news = self.reconciler.kube.observe(obj)
        if owner is not None and news and self._owns(owner):
            self._queue(Key(c.KIND, owner[0], owner[1]), trigger)

    def _owns(self, owner: tuple[str, str, str]) -> bool:
        with self._guard:
            body = self.services.get((owner[0], owner[1]))
        return body is not None and body["metadata"].get("uid") == owner[2]

    def probe_event(self, event: str | None, obj: dict[str, Any]) -> None:
        """A manifest probe's Job or pod moved: queue whoever waits for that image's manifest."""
        for kind, namespace, name in self.reconciler.discovery.observe(obj, deleted=event == "DELETED"):
            self._queue(Key(kind, namespace, name), "probe")

    def pod_event(self, event: str | None, pod: dict[str, Any]) -> None:
        if is_probe(pod):
            self.probe_event(event, pod)
            return
        if cache_of(pod) is not None:
            key = self.caches.pod_gone(pod) if event == "DELETED" else self.caches.pod_seen(pod)
            if key is not None:
                self._queue(Key(c.CACHE_KIND, *key), "pod")
            return
        found = self.reconciler.pod_gone(pod) if event == "DELETED" else self.reconciler.pod_seen(pod)
        if found is not None:
            self._queue(Key(c.KIND, *found), "pod")

    def job_event(self, event: str | None, job: dict[str, Any]) -> None:
        if is_probe(job):
            self.probe_event(event, job)
            return
        key = self.caches.job_gone(job) if event == "DELETED" else self.caches.job_seen(job)
        if key is not None:
            self._queue(Key(c.CACHE_KIND, *key), "child")

    def node_event(self, event: str | None, node: Mapping[str, Any]) -> None:
        """Queue only the services a change of this node's GPU facts can affect; heartbeats are not news."""
        name = str((node.get("metadata") or {}).get("name") or "")
        facts = None if event == "DELETED" else node_facts(node)
        schedulable = event != "DELETED" and node_schedulable(node)
        before = self.reconciler.set_node(name, facts, schedulable=schedulable)
        if event == "DELETED":
            self.reconciler.dra.node_gone(name)
        elif self.reconciler.dra.node_seen(node) and self.reconciler.dra.dra_only():
            self._queue_all_services()  # the device plugin came or went on a node whose GPUs DRA offers
        if before == (facts, schedulable):
            return
        with self._guard:
            services = list(self.services.items())
        for key, body in services:
            if node_change_affects(self.reconciler.last_status(body), before[0], facts):
                self._queue(Key(c.KIND, *key), "node")

    def slice_event(self, event: str | None, body: Mapping[str, Any]) -> None:
        """A ResourceSlice of NVIDIA's GPU driver changed what DRA offers: every service may be placed anew
        (slices change when drivers start or GPUs fail, not in steady state)."""
        dra = self.reconciler.dra
        if dra.slice_gone(body) if event == "DELETED" else dra.slice_seen(body):
            self._queue_all_services()

    def _queue_all_services(self) -> None:
        with self._guard:
            keys = list(self.services)
        for key in keys:
            self.queue.add(Key(c.KIND, *key))

    def capacity_changed(self) -> None:
        """An autoscaler pool changed what it can add (its shapes, limits, taints): any service may place
        differently, and one that fit nowhere may fit now. Pools change rarely; all services are queued."""
        with self._guard:
            keys = list(self.services)
        for key in keys:
            self.queue.add(Key(c.KIND, *key))

    def cache_event(self, event: str | None, body: Mapping[str, Any]) -> None:
        """Keep the NIMCache's body and queue it; a cache whose state changed re-runs the services mounting it."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        before = self.reconciler.caches.get(key)
        if event == "DELETED":
            with self._guard:
                self.cache_bodies.pop(key, None)
            self.reconciler.caches.pop(key, None)
            self.caches.forget(str(meta.get("uid") or ""), key[0], key[1])
            self.reconciler.discovery.forget_waiter((c.CACHE_KIND, *key))
            self.queue.forget(Key(c.CACHE_KIND, *key))
        else:
            with self._guard:
                previous = self.cache_bodies.get(key)
                self.cache_bodies[key] = slim(dict(body))
            self.reconciler.caches[key] = self.cache_bodies[key]
            if spec_level_change(previous, body):
                self._queue(Key(c.CACHE_KIND, *key), "spec")
        after = self.reconciler.caches.get(key)
        if mount_facts(before) == mount_facts(after):
            return  # its progress moved, or nothing else a mounting service reads
        for service in self.reconciler.services_mounting(*key):
            self._queue(Key(c.KIND, *service), "cache")

    def cache_progress(self, key: tuple[str, str]) -> None:
        """A running download's progress moved a step (``cache_progress``): its NIMCache reconciles."""
        self.queue.add(Key(c.CACHE_KIND, *key))

    def crd_event(self, event: str | None, crd: Mapping[str, Any]) -> None:
        """A CRD became established: services missing its kind (Degraded, or Failed for a missing API)
        reconcile now instead of at the next resync, so installing an integration heals at once."""
        if event == "DELETED":
            return
        conditions = (crd.get("status") or {}).get("conditions") or []
        established = any(cond.get("type") == "Established" and cond.get("status") == "True" for cond in conditions)
        spec = crd.get("spec") or {}
        kind = str((spec.get("names") or {}).get("kind") or "")
        if not established or not self.reconciler.kube.now_served(str(spec.get("group") or ""), kind):
            return
        with self._guard:
            services = list(self.services.items())
        for key, body in services:
            if missing_api(self.reconciler.last_status(body)):
                self._queue(Key(c.KIND, *key), "crd")

    def ingress_class_event(self, event: str | None, obj: Mapping[str, Any]) -> None:
        """An IngressClass came, went or changed its default mark: every service re-checks its Ingress (a
        rare event; most services have no Ingress and their reconcile writes nothing)."""
        name = str((obj.get("metadata") or {}).get("name"))
        with self._guard:
            if event == "DELETED":
                self._ingress_classes.pop(name, None)
            else:
                self._ingress_classes[name] = dict(obj)
            classes = IngressClasses.of(self._ingress_classes.values())
            if classes == self.reconciler.ingress_classes:
                return  # the start-up listing already knew it
            self.reconciler.ingress_classes = classes
            services = list(self.services)
        for key in services:
            self._queue(Key(c.KIND, *key), "ingressclass")

    # --- work ---------------------------------------------------------------------------------------

    def _process(self, key: Key) -> None:
        with self._guard:
            store = self.services if key.kind == c.KIND else self.cache_bodies
            body = store.get((key.namespace, key.name))
        if body is None:
            return  # deleted since it was queued
        if key.kind == c.KIND:
            self.reconciler.reconcile(body)
        else:
            self.caches.reconcile(body)

    def _failed(self, key: Key, err: BaseException, delay: float) -> None:
        """A reconcile raised: log it, say so in the object's status, and let the queue retry it."""
        if isinstance(err, client.ApiException):
            log.warning("%s %s/%s: API error %s %s; retrying in %.1fs", *key, err.status, err.reason, delay)
        else:
            log.warning("%s %s/%s failed; retrying in %.1fs", *key, delay, exc_info=err)
        if key.kind != c.KIND:
            return
        with self._guard:
            body = self.services.get((key.namespace, key.name))
        if body is not None:
            self.reconciler.report_error(body, err)
