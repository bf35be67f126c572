"""The reconciler's pod memory and its Warning Events, against an in-memory API server (no cluster).

``Kube`` is used as it is; only its one HTTP call is answered from a dict, so what the reconciler
writes (status patches) and emits (Events) is what it would do against a real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client

from nim_operator.kube import Kube
from nim_operator.reconciler import Reconciler
from tests.unit.pods import HASH, backing_off, exited, make_pod, pulling_failed, running

SERVICE: dict[str, Any] = {
    "apiVersion": "apps.nimoperator.dev/v1alpha1",
    "kind": "NIMService",
    "metadata": {"name": "llama", "namespace": "team-a", "uid": "uid-1", "generation": 1},
    # Our runtime without a catalog model: no manifest, no probe; the pods are what the test is about.
    "spec": {"image": {"repository": "registry.example/nim-runtime", "tag": "1"}, "replicas": 1},
}


class MemoryKube(Kube):
    """Answers server-side applies, GETs and status patches from memory; records status writes."""

    def __init__(self) -> None:
        super().__init__(cast(client.ApiClient, None))
        self.objects: dict[str, dict[str, Any]] = {}
        self.status_writes: list[dict[str, Any]] = []

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        if method == "PATCH" and path.endswith("/status"):
            self.status_writes.append(copy.deepcopy(body["status"]))
            return 200, {}
        if method == "PATCH":  # a server-side apply; a dry run stores nothing
            created = path not in self.objects
            live = copy.deepcopy(body)
            live["metadata"]["generation"] = 1
            if ("dryRun", "All") not in (query or []):
                self.objects[path] = live
            return (201 if created else 200), copy.deepcopy(live)
        if method == "GET" and path in self.objects:
            return 200, copy.deepcopy(self.objects[path])
        if method in ("GET", "DELETE"):
            raise client.ApiException(status=404, reason="Not Found")
        raise AssertionError(f"unexpected {method} {path}")


def _reconciler() -> tuple[Reconciler, MemoryKube, list[tuple[str, str, str]]]:
    kube = MemoryKube()
    events: list[tuple[str, str, str]] = []

    def emit(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        events.append((kind, reason, message))

    return Reconciler(kube, emit), kube, events


def _warnings(events: list[tuple[str, str, str]]) -> list[str]:
    return [reason for kind, reason, _ in events if kind == "Warning"]


def _ready(kube: MemoryKube) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = kube.status_writes[-1]["conditions"]
    return next(c for c in conditions if c["type"] == "Ready")


def test_a_pod_problem_is_announced_once_and_reaches_status() -> None:
    reconciler, kube, events = _reconciler()
    assert reconciler.pod_seen(backing_off()) == ("team-a", "llama")
    reconciler.reconcile(SERVICE)
    assert _warnings(events) == ["ImagePullBackOff"]
    assert _ready(kube)["reason"] == "ImagePullBackOff"
    assert kube.status_writes[-1]["state"] == "Pending"
    assert f"pod llama-{HASH}-4xkz2: container nim: ImagePullBackOff:" in _ready(kube)["message"]

    writes = len(kube.status_writes)
    for _ in range(3):
        reconciler.reconcile(SERVICE)
    reconciler.pod_seen(pulling_failed())  # the kubelet's next retry: the same problem
    reconciler.reconcile(SERVICE)
    assert _warnings(events) == ["ImagePullBackOff"], "no Event per reconcile or per retry"
    assert len(kube.status_writes) == writes, "nothing changed: no status write"

    reconciler.pod_seen(exited(2, "Error", "nim-runtime: unknown profile"))  # a new image that now crashes
    reconciler.reconcile(SERVICE)
    assert _warnings(events) == ["ImagePullBackOff", "CrashLoopBackOff"]
    assert _ready(kube)["reason"] == "CrashLoopBackOff"


def test_probe_churn_is_not_news_and_a_cleared_problem_may_return() -> None:
    reconciler, kube, events = _reconciler()
    loading = running(ready=False, started=False)
    assert reconciler.pod_seen(loading) == ("team-a", "llama")
    churned = copy.deepcopy(loading)
    churned["metadata"]["resourceVersion"] = "4242"
    churned["status"]["conditions"].append({"type": "ContainersReady", "status": "False"})
    assert reconciler.pod_seen(churned) is None, "nothing status reads changed: no reconcile needed"

    crashing = exited(137, "OOMKilled")
    assert reconciler.pod_seen(crashing) == ("team-a", "llama")
    reconciler.reconcile(SERVICE)
    reconciler.pod_seen(running(ready=False, started=True))  # recovered, still warming up
    reconciler.reconcile(SERVICE)
    assert _ready(kube)["reason"] == "ReplicasNotReady"
    reconciler.pod_seen(crashing)
    reconciler.reconcile(SERVICE)
    assert _warnings(events) == ["OOMKilled", "OOMKilled"]


def test_deleted_pods_and_services_are_forgotten() -> None:
    reconciler, _, events = _reconciler()
    crashing = exited(1, "Error")
    reconciler.pod_seen(crashing)
    reconciler.pod_seen(make_pod("zzzzz"))
    assert reconciler.pod_gone(crashing) == ("team-a", "llama")
    assert [p["metadata"]["name"] for p in reconciler.pods_of("team-a", "llama")] == [f"llama-{HASH}-zzzzz"]
    reconciler.reconcile(SERVICE)
    assert _warnings(events) == []

    reconciler.pod_seen(crashing)
    reconciler.reconcile(SERVICE)
    reconciler.forget("uid-1", namespace="team-a", name="llama")
    assert reconciler.pods_of("team-a", "llama") == []
    reconciler.pod_seen(crashing)
    reconciler.reconcile(SERVICE)
    assert _warnings(events) == ["CrashLoopBackOff", "CrashLoopBackOff"], "a recreated service hears it anew"


def test_a_first_rollout_is_told_by_status_and_state_events_start_once_it_served() -> None:
    reconciler, kube, events = _reconciler()
    reconciler.reconcile(SERVICE)
    deployment = copy.deepcopy(kube.objects["/apis/apps/v1/namespaces/team-a/deployments/llama"])

    def rollout(available: int) -> str:
        """The Deployment controller reports ``available`` of its one replica; the state status says."""
        counts = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": available, "availableReplicas": available}
        deployment["status"] = {"observedGeneration": 1, **counts}
        reconciler.deployment_seen(copy.deepcopy(deployment))
        reconciler.reconcile(SERVICE)
        state: str = kube.status_writes[-1]["state"]
        return state

    assert kube.status_writes[-1]["state"] == "Pending"
    assert rollout(1) == "Ready"
    assert [e for e in events if e[0] == "Normal"] == [], "a first rollout posts no state Event"
    assert rollout(0) == "Pending"
    assert rollout(1) == "Ready"
    assert [(reason, message) for kind, reason, message in events if kind == "Normal"] == [
        ("Pending", "state Ready -> Pending"),
        ("Ready", "state Pending -> Ready"),
    ]
    # A restarted operator (nothing in memory) knows from the status it reads that the service has served.
    restarted, memory, heard = _reconciler()
    served = {**SERVICE, "status": kube.status_writes[-1]}
    memory.objects = kube.objects
    deployment["status"]["availableReplicas"] = 0
    restarted.deployment_seen(copy.deepcopy(deployment))
    restarted.reconcile(served)
    assert [(kind, reason) for kind, reason, _ in heard] == [("Normal", "Pending")]
