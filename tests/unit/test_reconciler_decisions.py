"""The reconciler's decisions against an in-memory API server: all or nothing, degrading, cluster problems.

``Kube`` is used as it is; only its one HTTP call is answered from a dict (see ``MemoryKube``), so the
requests the reconciler makes, and their order, are what a real API server would see.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from nim_operator.kube import PLURALS
from nim_operator.reconciler import Reconciler
from tests.unit.test_reconciler_pod_events import SERVICE, MemoryKube


class RefusingKube(MemoryKube):
    """Refuses (422) applies of one kind, says 404 for a kind it does not serve, and can fail with a 500."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: str | None = None
        self.unserved: set[str] = set()
        self.fail_with: int | None = None
        self.calls: list[tuple[str, str, bool]] = []
        # What the operator does at start: one LIST per child kind (none exist in this empty server).
        self.warm(list(PLURALS), None)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        dry = ("dryRun", "All") in (kwargs.get("query") or [])
        self.calls.append((method, path, dry))
        if self.fail_with is not None and method == "PATCH" and not path.endswith("/status"):
            raise client.ApiException(status=self.fail_with, reason="Internal Server Error")
        if method == "PATCH" and any(f"/{plural}/" in path for plural in self.unserved):
            raise client.ApiException(status=404, reason="Not Found")  # "404 page not found": no JSON body
        if method == "PATCH" and self.refuse and f"/{self.refuse}/" in path:
            err = client.ApiException(status=422, reason="Unprocessable Entity")
            err.body = '{"message": "spec.rules[0].host: Invalid value"}'
            raise err
        return super().call(method, path, **kwargs)


def _service(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(SERVICE)
    body["spec"].update(spec)
    return body


def _generation(body: dict[str, Any], n: int) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["metadata"]["generation"] = n
    return body


def test_an_update_is_dry_run_whole_before_its_first_write() -> None:
    kube = RefusingKube()
    reconciler = Reconciler(kube)
    reconciler.reconcile(SERVICE)
    deployment_path = next(p for p in kube.objects if "/deployments/" in p)
    before = copy.deepcopy(kube.objects[deployment_path])
    kube.refuse = "ingresses"
    first_calls = len(kube.calls)
    updated = _generation(_service(env=[{"name": "NEW", "value": "1"}], expose={"ingress": {"enabled": True}}), 2)
    outcome = reconciler.reconcile(updated)
    assert outcome.status.state == "Failed"
    assert kube.objects[deployment_path] == before, "the Deployment must not change when a sibling is refused"
    update_writes = [p for m, p, dry in kube.calls[first_calls:] if m == "PATCH" and not dry]
    assert not any("/deployments/" in p for p in update_writes)
    assert any("/deployments/" in p for m, p, dry in kube.calls[first_calls:] if dry), "the update was dry-run"


def test_a_missing_optional_api_degrades_and_a_missing_required_one_fails_retriably() -> None:
    kube = RefusingKube()
    kube.unserved.add("servicemonitors")
    reconciler = Reconciler(kube)
    outcome = reconciler.reconcile(_service(metrics={"enabled": True}))
    assert outcome.status.state != "Failed"
    degraded = next(c for c in outcome.status.conditions if c.type == "Degraded")
    assert "ServiceMonitor" in degraded.message
    calls = len(kube.calls)
    reconciler.reconcile(_service(metrics={"enabled": True}))
    assert not any("servicemonitors" in p for _, p, _ in kube.calls[calls:]), "known absent: not asked again at once"


def test_a_cluster_error_keeps_the_state_and_says_it_is_retried() -> None:
    kube = RefusingKube()
    reconciler = Reconciler(kube)
    first = reconciler.reconcile(SERVICE)
    kube.fail_with = 500
    changed = _generation(_service(env=[{"name": "X", "value": "1"}]), 2)
    with pytest.raises(client.ApiException):
        reconciler.reconcile(changed)
    reconciler.report_error(changed, client.ApiException(status=500, reason="Internal Server Error"))
    written = kube.status_writes[-1]
    assert written["state"] == first.status.state, "a cluster problem is not a failed spec"
    failed = next(c for c in written["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "False"
    assert failed["reason"] == "ApiError"
    assert "retried" in failed["message"]
    kube.fail_with = None
    healed = reconciler.reconcile(changed)
    assert next(c for c in healed.status.conditions if c.type == "Failed").reason == "Reconciled"


def test_forget_drops_everything_of_a_deleted_service() -> None:
    kube = RefusingKube()
    reconciler = Reconciler(kube)
    reconciler.reconcile(SERVICE)
    assert len(kube.applied) > 0
    reconciler.forget("uid-1", namespace="team-a", name="llama")
    assert len(kube.applied) == 0
    assert reconciler.last_status(SERVICE) is None
