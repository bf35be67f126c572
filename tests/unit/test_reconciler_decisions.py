"""The reconciler's decisions against an in-memory API server: all or nothing, degrading, cluster problems.

``Kube`` is used as it is; only its one HTTP call is answered from a dict (see ``MemoryKube``), so the
requests the reconciler makes, and their order, are what a real API server would see.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from nim_operator.api.spec import Condition, NIMServiceStatus, ProfileStatus
from nim_operator.kube import PLURALS
from nim_operator.manifest_source import DISCOVERING, ManifestChoice
from nim_operator.reconciler import AS_SPECIFIED, Reconciler, _keep_while_probing
from nim_operator.status import Failure
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


def _running_without_manifest(reason: str, generation: int = 3) -> NIMServiceStatus:
    return NIMServiceStatus(
        state="Ready",
        observed_generation=generation,
        profile=ProfileStatus(reason=reason + AS_SPECIFIED),
        conditions=[
            Condition(type="Ready", status="True", reason="AllReplicasReady"),
            Condition(type="ProfileSelected", status="True", reason="RuntimeSelects", message=reason),
        ],
    )


def test_a_reprobe_leaves_a_service_deployed_without_a_manifest_as_it_was() -> None:
    """The image is asked again (retry interval, operator restart): the service keeps its text, waits for
    nothing, and the reason _choose writes is the one already in status (so nothing is rewritten)."""
    probing = ManifestChoice(None, "waiting for the manifest of x:1", Failure(DISCOVERING, "the probe is starting"))
    before = _running_without_manifest("the manifest of x:1 is unknown (ErrImagePull: ...)")
    kept = _keep_while_probing(probing, before, 3)
    assert kept.waiting is None
    assert kept.manifest is None
    assert kept.about + AS_SPECIFIED == before.profile.reason  # type: ignore[union-attr]


def test_a_first_probe_or_a_new_generation_or_a_chosen_profile_still_waits() -> None:
    probing = ManifestChoice(None, "waiting", Failure(DISCOVERING, "the probe is starting"))
    assert _keep_while_probing(probing, None, 1) is probing
    assert _keep_while_probing(probing, _running_without_manifest("unknown", generation=2), 3) is probing
    chosen = _running_without_manifest("unknown")
    chosen.profile.id = "vllm-fp8-tp1-h100"  # type: ignore[union-attr]
    assert _keep_while_probing(probing, chosen, 3) is probing
    first = _running_without_manifest("waiting for the manifest of x:1")
    first.conditions[0] = Condition(type="Ready", status="False", reason=DISCOVERING)
    assert _keep_while_probing(probing, first, 3) is probing
