"""A claim that is not bound is named as what the pods wait for (no pod condition says it otherwise)."""

from __future__ import annotations

from nim_operator.cache_status import compute_cache_status
from nim_operator.pod_health import replica_failure, unbound_claim


def _pvc(phase: str, storage_class: str | None = "local-path") -> dict[str, object]:
    spec = {"storageClassName": storage_class} if storage_class else {}
    return {"metadata": {"name": "m"}, "spec": spec, "status": {"phase": phase}}


def test_a_pending_claim_is_named_with_its_class() -> None:
    problem = unbound_claim("m", _pvc("Pending"))
    assert problem is not None
    assert problem.reason == "PVCNotBound"
    assert "PersistentVolumeClaim m is not bound: storage class local-path has not provided a volume" in problem.message
    without = unbound_claim("m", _pvc("Pending", None))
    assert without is not None
    assert "names no storage class" in without.message
    assert unbound_claim("m", _pvc("Bound")) is None
    missing = unbound_claim("m", None)
    assert missing is not None
    assert missing.reason == "PVCNotFound"


def test_a_download_held_for_its_claim_says_so() -> None:
    job = {"metadata": {"name": "c-job"}, "status": {}}
    pod = {"metadata": {"name": "c-job-x", "creationTimestamp": "t"}, "status": {"phase": "Pending"}}
    status = compute_cache_status(
        generation=1, previous=None, pvc_name="m", pvc=_pvc("Pending"), job=job, pods=[pod], failure=None, now="t"
    )
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (status.state, ready.reason) == ("Pending", "PVCNotBound")
    assert "the download Job waits for it" in ready.message


def test_a_refused_pod_creation_is_named() -> None:
    deployment = {
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "x-" is forbidden: pod rejected: RuntimeClass "kata" not found',
                }
            ]
        }
    }
    problem = replica_failure(deployment)
    assert problem is not None
    assert problem.reason == "FailedCreate"
    assert 'RuntimeClass "kata" not found' in problem.message
    assert replica_failure({"status": {}}) is None
