"""The operator's only door to the API server: server-side apply, reads, deletes, status writes.

Kept small so the reconciler reads as intent. Every child is applied with one field manager, and
each carries a hash of its desired body so an unchanged child costs no request at all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from kubernetes import client, config

from nim_operator import constants as c
from nim_operator import metrics

HASH_ANNOTATION = "nimoperator.dev/desired-hash"
ABSENT = ("absent", 0)


class ChildRejected(Exception):
    """The API server refused a child as invalid (or does not know its kind): the spec must change."""


def _message(err: client.ApiException) -> str:
    try:
        message: str = json.loads(err.body or "{}").get("message", "")
    except (TypeError, ValueError):
        message = str(err.reason)
    return message


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
}


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    tail = f"/{name}" if name else ""
    return f"{root}{scope}/{PLURALS[(api_version, kind)]}{tail}"


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

    def __init__(self, api: client.ApiClient) -> None:
        # Deliberately no generated API classes: instantiating CoreV1Api alone costs ~80 MB of validators.
        self.api = api
        # Child -> (hash of the desired body we applied, metadata.generation the server gave it back).
        self._applied: dict[tuple[str, str, str, str], tuple[str, int]] = {}
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
        response = self.api.call_api(*serialized)
        data = response.read()
        if not 200 <= response.status < 300:
            raise client.ApiException(http_resp=response)
        result: dict[str, Any] = json.loads(data) if data else {}
        return response.status, result

    def knows(self, body: dict[str, Any]) -> bool:
        """Whether this child was applied (or seen) before, i.e. probably exists."""
        meta = body["metadata"]
        with self._lock:
            known = self._applied.get((body["apiVersion"], body["kind"], meta["namespace"], meta["name"]))
        return known is not None and known != ABSENT

    def needs_apply(self, body: dict[str, Any]) -> bool:
        """Whether this desired body differs from the last one applied (or seen applied)."""
        meta = body["metadata"]
        key = (body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
        with self._lock:
            return self._applied.get(key, ("", 0))[0] != desired_hash(body)

    def apply(self, body: dict[str, Any], *, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Server-side apply with our field manager; returns the live (or would-be) object and whether
        this call created it.

        Raises :class:`ChildRejected` when the server finds the object invalid or its kind unknown.
        """
        meta = body["metadata"]
        key = (body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
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
            if err.status == 404:
                raise ChildRejected(
                    f"the cluster does not serve {body['kind']} ({body['apiVersion']}): install its CRDs or turn "
                    "the feature off"
                ) from err
            if err.status in (400, 422):
                raise ChildRejected(f"{body['kind']} {meta['name']} was rejected: {_message(err)}") from err
            raise
        if not dry_run:
            with self._lock:
                self._applied[key] = (digest, int(result["metadata"].get("generation") or 0))
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
        self.forget(api_version, kind, namespace, name)

    def forget(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Drop the memory of an applied child (it was changed or deleted by someone else)."""
        with self._lock:
            self._applied.pop((api_version, kind, namespace, name), None)

    def observe(self, obj: dict[str, Any]) -> None:
        """Learn from a watch event of a child.

        After a restart the hash annotation tells what was applied, so nothing is re-applied. A
        generation other than the one our apply produced means someone else changed the spec: forget
        it, and the next reconcile applies it again (restoring the fields we own).
        """
        meta = obj.get("metadata", {})
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        generation = int(meta.get("generation") or 0)
        digest = (meta.get("annotations") or {}).get(HASH_ANNOTATION)
        with self._lock:
            known = self._applied.get(key)
            if known is None and digest:
                self._applied[key] = (digest, generation)
            elif known is not None and known[1] != generation:
                del self._applied[key]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
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
        """Delete a child only if this NIMService controls it: never a user's object of the same name."""
        key = (api_version, kind, namespace, name)
        with self._lock:
            if self._applied.get(key) == ABSENT:
                return False
        live = self.get(api_version, kind, namespace, name)
        deleted = False
        if live is not None:
            refs = live.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == owner_uid and r.get("controller") for r in refs):
                metrics.API_WRITES.labels(kind, "delete").inc()
                self.request("DELETE", resource_path(api_version, kind, namespace, name))
                deleted = True
        with self._lock:
            self._applied[key] = ABSENT
        return deleted

    def warm(self, kinds: list[tuple[str, str]], namespaces: list[str] | None) -> int:
        """Learn what was applied before a restart: one LIST per kind (and namespace) of our children.

        Without it, the first reconcile after a restart would re-apply every child of every service.
        Kinds the cluster does not serve, or that we may not list, are skipped: they are applied once.
        """
        selector = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
        learned = 0
        for api_version, kind in kinds:
            scopes: list[str | None] = list(namespaces) if namespaces else [None]
            for namespace in scopes:
                metrics.API_READS.labels(kind).inc()
                path = resource_path(api_version, kind, namespace)
                try:
                    items = self.request("GET", path, query=[("labelSelector", selector)])["items"]
                except client.ApiException:
                    continue  # not served, or not ours to list: those children are applied once
                for item in items:
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                    self.observe(item)
                    learned += 1
        return learned

    def list_nodes(self) -> list[dict[str, Any]]:
        metrics.API_READS.labels("Node").inc()
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/nodes")["items"]
        return items

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        metrics.API_READS.labels("ConfigMap").inc()
        config_map = self._get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if config_map is None:
            return None
        data: dict[str, str] = config_map.get("data") or {}
        return data

    def get_own(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our own resources (a NIMCache a NIMService mounts), or None."""
        metrics.API_READS.labels(c.CACHE_KIND).inc()
        return self._get_or_none(f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{plural}/{name}")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *, plural: str = c.PLURAL) -> None:
        metrics.API_WRITES.labels(c.KIND if plural == c.PLURAL else c.CACHE_KIND, "status").inc()
        path = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{plural}/{name}/status"
        self.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
