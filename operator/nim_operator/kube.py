"""The operator's only door to the API server: server-side apply, reads, deletes, status writes.

Kept small so the reconciler reads as intent. Every child is applied with one field manager, and
each carries a hash of its desired body so an unchanged child costs no request at all.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes import client, config

from nim_operator import constants as c
from nim_operator import metrics
from nim_operator.applied import AppliedState, key_of

log = logging.getLogger(__name__)

HASH_ANNOTATION = c.HASH_ANNOTATION
#: Seconds to connect and to wait for an answer; a hung API server must not hold a worker forever.
REQUEST_TIMEOUT = (5.0, 30.0)
#: How long a kind found not served is taken as still absent before one request asks again.
UNSERVED_RECHECK_SECONDS = 30.0


class ChildRejected(Exception):
    """The API server refused a child as invalid: the spec must change."""


class KindNotServed(ChildRejected):
    """The cluster does not serve the child's kind (its CRDs are not installed): the cluster must change."""

    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(f"the cluster does not serve {kind} ({api_version})")
        self.api_version = api_version
        self.kind = kind


def _kind_unknown(err: client.ApiException) -> bool:
    """Whether a 404 says the resource type is not served (not that the object or namespace is missing)."""
    try:
        details = json.loads(err.body or "{}").get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return True  # an unknown API group is answered with a plain "404 page not found"
    # A missing object or namespace names it in details; an unknown type has no name to report.
    return not details.get("name")


def _message(err: client.ApiException) -> str:
    try:
        message: str = json.loads(err.body or "{}").get("message", "")
    except (TypeError, ValueError):
        message = str(err.reason)
    return message


#: Posts an Event about an object: (object, type, reason, message); :meth:`Kube.post_event` is the real one.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]

#: The kinds the operator writes, by (apiVersion, kind) -> plural. A fixed table instead of API
#: discovery: discovery of a whole cluster costs ~80 MB of memory and a burst of requests at start.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "resourceclaimtemplates",
    # The router (render/router.py, render/epp.py) and KServe (render/kserve.py).
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "ConfigMap"): "configmaps",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "grpcroutes",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepools",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices",
}
#: Kinds the operator only reads: the DRA objects a NIMService's claims name, the Gateway its routes name.
READ_PLURALS: dict[tuple[str, str], str] = {
    ("resource.k8s.io/v1", "ResourceClaim"): "resourceclaims",
    ("resource.k8s.io/v1", "DeviceClass"): "deviceclasses",
    ("gateway.networking.k8s.io/v1", "Gateway"): "gateways",
}


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    tail = f"/{name}" if name else ""
    plural = PLURALS.get((api_version, kind)) or READ_PLURALS[(api_version, kind)]
    return f"{root}{scope}/{plural}{tail}"


def desired_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from the given kubeconfig, else the in-cluster service account, else ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class Kube:
    """Server-side apply and friends over plain REST paths; thread-safe for kopf's handler threads."""

    def __init__(self, api: client.ApiClient, *, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        # Deliberately no generated API classes: instantiating CoreV1Api alone costs ~80 MB of validators.
        self.api = api
        self.timeout = timeout
        self.applied = AppliedState()
        # (apiVersion, kind) found not served -> monotonic time until which that is assumed without asking.
        self._unserved: dict[tuple[str, str], float] = {}
        self._events: queue.SimpleQueue[tuple[dict[str, Any], str, str, str]] | None = None
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call to the API server; raises ``ApiException`` for any non-2xx answer."""
        return self.call(method, path, body=body, query=query, content_type=content_type)[1]

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """Like :meth:`request`, with the HTTP status (201 tells a server-side apply created the object)."""
        serialized = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized, _request_timeout=self.timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise client.ApiException(http_resp=response)
        result: dict[str, Any] = json.loads(data) if data else {}
        return response.status, result

    def knows(self, body: dict[str, Any]) -> bool:
        """Whether this child exists, as far as applies and watches told (unknown counts as no)."""
        return bool(self.applied.exists(key_of(body)))

    def needs_apply(self, body: dict[str, Any]) -> bool:
        """Whether this desired body differs from the last one applied (or seen applied)."""
        return self.applied.needs_apply(key_of(body), desired_hash(body))

    def served(self, api_version: str, kind: str) -> bool:
        """False while a recent apply found the kind not served (rechecked after a while, by one request)."""
        with self._lock:
            until = self._unserved.get((api_version, kind))
            if until is not None and until <= time.monotonic():
                del self._unserved[(api_version, kind)]
                return True
            return until is None

    def now_served(self, group: str, kind: str) -> bool:
        """A CRD of ``group``/``kind`` became established: forget that it was missing. True if it was."""
        with self._lock:
            found = [key for key in self._unserved if key[1] == kind and key[0].rpartition("/")[0] == group]
            for key in found:
                del self._unserved[key]
        return bool(found)

    def apply(self, body: dict[str, Any], *, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Server-side apply with our field manager; returns the live (or would-be) object and whether
        this call created it.

        Raises :class:`KindNotServed` when the cluster does not serve the kind (without asking again for a
        while once known), :class:`ChildRejected` when the server finds the object invalid.
        """
        meta = body["metadata"]
        if not self.served(body["apiVersion"], body["kind"]):
            raise KindNotServed(body["apiVersion"], body["kind"])
        digest = desired_hash(body)
        stamped = {
            **body,
            "metadata": {**meta, "annotations": {**meta.get("annotations", {}), HASH_ANNOTATION: digest}},
        }
        query = [("fieldManager", c.FIELD_MANAGER), ("force", "true")] + ([("dryRun", "All")] if dry_run else [])
        metrics.API_WRITES.labels(body["kind"], "dry-run" if dry_run else "apply").inc()
        path = resource_path(body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
        try:
            status, result = self.call(
                "PATCH", path, body=stamped, query=query, content_type="application/apply-patch+yaml"
            )
        except client.ApiException as err:
            if err.status == 404 and _kind_unknown(err):
                with self._lock:
                    self._unserved[(body["apiVersion"], body["kind"])] = time.monotonic() + UNSERVED_RECHECK_SECONDS
                raise KindNotServed(body["apiVersion"], body["kind"]) from err
            if err.status in (400, 422):
                raise ChildRejected(f"{body['kind']} {meta['name']} was rejected: {_message(err)}") from err
            raise
        if not dry_run:
            self.applied.record(key_of(body), digest, result)
        return result, status == 201

    def hand_over(self, api_version: str, kind: str, namespace: str, name: str, fields: dict[str, Any]) -> None:
        """Apply ``fields`` (their current values) under a second field manager, which then shares their
        ownership, so that our next apply may drop them without the API server removing them. (An Update
        that changes nothing would take no ownership; an apply always does.)"""
        metrics.API_WRITES.labels(kind, "handover").inc()
        body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}, **fields}
        self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name),
            body=body,
            query=[("fieldManager", c.HANDOVER_FIELD_MANAGER)],
            content_type="application/apply-patch+yaml",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete a child this reconcile just created (rolling back a creation that failed half-way), or
        a Job being replaced. Dependents go too: the API's default for Jobs would orphan their pods."""
        metrics.API_WRITES.labels(kind, "delete").inc()
        try:
            self.request(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except client.ApiException as err:
            if err.status != 404:
                raise
        self.applied.gone((api_version, kind, namespace, name))

    def forget(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Know nothing of this child any more: the next reconcile applies (or asks) again."""
        self.applied.forget((api_version, kind, namespace, name))

    def observe(self, obj: dict[str, Any]) -> bool:
        """Learn a child from a watch event; True when someone else changed it (or it appeared), so that its
        owner must reconcile. See :mod:`nim_operator.applied`."""
        return self.applied.observe(obj)

    def gone(self, obj: dict[str, Any]) -> None:
        """A child's deletion, from its watch."""
        self.applied.gone(key_of(obj))

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        metrics.API_READS.labels(kind).inc()
        return self._get_or_none(resource_path(api_version, kind, namespace, name))

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete_owned(self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete a child only if this NIMService controls it: never a user's object of the same name.

        Known absence costs nothing: after the start-up listing of a kind, a child neither applied nor seen
        does not exist, so a service that never used a feature pays no GET per reconcile for it.
        """
        key = (api_version, kind, namespace, name)
        if self.applied.exists(key) is False or not self.served(api_version, kind):
            return False
        live = self.get(api_version, kind, namespace, name)
        if live is None:
            self.applied.mark_absent(key, owner_uid)
            return False
        refs = live.get("metadata", {}).get("ownerReferences") or []
        if not any(r.get("uid") == owner_uid and r.get("controller") for r in refs):
            self.applied.mark_absent(key, owner_uid)  # not ours to delete, and not to ask about again
            return False
        metrics.API_WRITES.labels(kind, "delete").inc()
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name))
        except client.ApiException as err:
            if err.status != 404:
                raise
        self.applied.gone(key)
        return True

    def delete_owned_except(
        self, api_version: str, kind: str, namespace: str, owner_uid: str, selector: str, keep: set[str]
    ) -> list[str]:
        """Delete the children of this kind that this NIMService controls and that are not in ``keep``;
        their names. For children whose names change with their spec. Known from the watch where the kind
        is listed in full (no request when there is nothing to delete), else found by one LIST by label."""
        names = self.applied.owned(owner_uid, api_version, kind, namespace)
        if names is None:
            metrics.API_READS.labels(kind).inc()
            path = resource_path(api_version, kind, namespace)
            items = self.request("GET", path, query=[("labelSelector", selector)])["items"]
            names = [
                item["metadata"]["name"]
                for item in items
                if any(
                    r.get("uid") == owner_uid and r.get("controller")
                    for r in item["metadata"].get("ownerReferences") or []
                )
            ]
        deleted = []
        for name in names:
            if name not in keep:
                self.delete(api_version, kind, namespace, name)
                deleted.append(name)
        return deleted

    def warm(
        self,
        kinds: list[tuple[str, str]],
        namespaces: list[str] | None,
        *,
        seen: Callable[[dict[str, Any]], None] | None = None,
    ) -> int:
        """Learn what was applied before a restart: one LIST per kind (and namespace) of our children.

        Without it, the first reconcile after a restart would re-apply every child of every service. A kind
        listed in full is from then on known completely (its watch keeps it current), so absence needs no
        GET. Kinds the cluster does not serve, or that we may not list, are left to GETs. ``seen`` gets every
        object listed (the reconciler keeps Deployments for status, so a restart reads none one by one).
        """
        selector = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
        learned = 0
        for api_version, kind in kinds:
            scopes: list[str | None] = list(namespaces) if namespaces else [None]
            items: list[dict[str, Any]] = []
            try:
                for namespace in scopes:
                    metrics.API_READS.labels(kind).inc()
                    path = resource_path(api_version, kind, namespace)
                    items += self.request("GET", path, query=[("labelSelector", selector)])["items"]
            except client.ApiException as err:
                if err.status == 404 and _kind_unknown(err):
                    # Not served: none can exist; when its CRD arrives, the watch reports what we create.
                    self.applied.listed(api_version, kind, [])
                continue  # not ours to list: those children are asked for by GET
            learned += self.applied.listed(api_version, kind, items)
            if seen is not None:
                for item in items:
                    seen({"apiVersion": api_version, "kind": kind, **item})
        return learned

    def list_nodes(self) -> list[dict[str, Any]]:
        metrics.API_READS.labels("Node").inc()
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/nodes")["items"]
        return items

    def list_resource_slices(self) -> list[dict[str, Any]]:
        """Every ResourceSlice (GPUs offered through DRA); none where DRA is not served or not ours to read."""
        metrics.API_READS.labels("ResourceSlice").inc()
        try:
            items: list[dict[str, Any]] = self.request("GET", "/apis/resource.k8s.io/v1/resourceslices")["items"]
        except client.ApiException as err:
            if err.status in (403, 404):
                return []
            raise
        return items

    def list_ingress_classes(self) -> list[dict[str, Any]] | None:
        """Every IngressClass, or None when they are not ours to read (then Ingresses go unchecked)."""
        metrics.API_READS.labels("IngressClass").inc()
        try:
            items: list[dict[str, Any]] = self.request("GET", "/apis/networking.k8s.io/v1/ingressclasses")["items"]
        except client.ApiException as err:
            if err.status in (403, 404):
                return None
            raise
        return items

    def list_optional(self, group: str, plural: str) -> list[dict[str, Any]]:
        """Every object of a kind another project defines (served version), or none when it is not served
        or not ours to list."""
        metrics.API_READS.labels(plural).inc()
        try:
            found = self.request("GET", f"/apis/{group}")
            version = (found.get("preferredVersion") or {}).get("version")
            items: list[dict[str, Any]] = self.request("GET", f"/apis/{group}/{version}/{plural}")["items"]
        except client.ApiException:
            return []
        return items

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        metrics.API_READS.labels("ConfigMap").inc()
        config_map = self._get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if config_map is None:
            return None
        data: dict[str, str] = config_map.get("data") or {}
        return data

    def create_config_map(self, body: dict[str, Any]) -> bool:
        """Create a ConfigMap of ours once; False when one of that name exists (it is never overwritten:
        the operator may create ConfigMaps, not change anyone's)."""
        metrics.API_WRITES.labels("ConfigMap", "create").inc()
        try:
            self.request("POST", f"/api/v1/namespaces/{body['metadata']['namespace']}/configmaps", body=body)
        except client.ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def pod_log(
        self,
        namespace: str,
        name: str,
        container: str,
        *,
        limit_bytes: int,
        timeout: float,
        tail_lines: int | None = None,
    ) -> str:
        """A container's log as text (the API server fetches it from the node's kubelet); only its last
        ``tail_lines`` lines when given (a NIMCache download's progress is in its newest lines).

        ``timeout`` bounds the whole call: a node whose kubelet cannot be reached (a simulated one) must
        not hold a reconcile for the kernel's connect timeout.
        """
        metrics.API_READS.labels("PodLog").inc()
        query = [("container", container), ("limitBytes", str(limit_bytes))]
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        serialized = self.api.param_serialize(
            method="GET",
            resource_path=f"/api/v1/namespaces/{namespace}/pods/{name}/log",
            query_params=query,
            # The log is text/plain, yet the API server refuses that Accept header (406): ask for anything.
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized, _request_timeout=timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise client.ApiException(http_resp=response)
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)

    def get_own(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our own resources (a NIMCache a NIMService mounts), or None."""
        metrics.API_READS.labels(c.CACHE_KIND).inc()
        return self._get_or_none(f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{plural}/{name}")

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue a core/v1 Event about ``obj`` (what `kubectl describe` shows); a background thread posts it.

        Posted by us rather than kopf: reconciles run on our own worker threads, outside the handler
        context kopf's event queue lives in. Posting in the background keeps a reconcile from waiting on
        advice. Events are advice: a refused one is logged, never retried.
        """
        with self._lock:
            if self._events is None:
                self._events = queue.SimpleQueue()
                threading.Thread(target=self._post_events, name="events", daemon=True).start()
            events = self._events
        events.put((dict(obj), type_, reason, message))

    def _post_events(self) -> None:
        assert self._events is not None
        while True:
            obj, type_, reason, message = self._events.get()
            self.send_event(obj, type_, reason, message)

    def send_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post one Event now (see :meth:`post_event`)."""
        meta = obj.get("metadata") or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        namespace = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": c.FIELD_MANAGER},
            "reportingComponent": c.FIELD_MANAGER,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "eventTime": now,
            "action": reason,
            "count": 1,
        }
        metrics.API_WRITES.labels("Event", "create").inc()
        try:
            self.request("POST", f"/api/v1/namespaces/{namespace}/events", body=event)
        except (client.ApiException, OSError, urllib3.exceptions.HTTPError) as err:
            log.warning("could not post the %s event %s on %s/%s: %s", type_, reason, namespace, meta.get("name"), err)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *, plural: str = c.PLURAL) -> None:
        metrics.API_WRITES.labels(c.KIND if plural == c.PLURAL else c.CACHE_KIND, "status").inc()
        path = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{plural}/{name}/status"
        self.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
