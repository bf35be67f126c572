"""What the operator keeps of a watched object."""

from __future__ import annotations

import copy
from typing import Any

from nim_operator.slim import LAST_APPLIED, owns_replicas, slim

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "llama",
        "namespace": "team-a",
        "generation": 3,
        "annotations": {LAST_APPLIED: '{"spec": "..."}', "team": "a"},
        "managedFields": [
            {
                "manager": "nim-operator",
                "operation": "Apply",
                "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}},
            },
            {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}},
        ],
    },
    "spec": {"replicas": 2},
    "status": {"availableReplicas": 2},
}


def test_slim_drops_bookkeeping_but_keeps_who_owns_replicas() -> None:
    original = copy.deepcopy(DEPLOYMENT)
    kept = slim(DEPLOYMENT)
    assert original == DEPLOYMENT, "the watched object is not changed"
    assert kept["metadata"]["annotations"] == {"team": "a"}
    owners = kept["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"]) for e in owners] == [("nim-operator", "Apply")]
    assert all(owns_replicas(e) for e in owners)
    assert kept["spec"] is DEPLOYMENT["spec"]
    assert kept["status"] is DEPLOYMENT["status"]
    assert {k: v for k, v in kept["metadata"].items() if k not in ("managedFields", "annotations")} == {
        "name": "llama",
        "namespace": "team-a",
        "generation": 3,
    }


def test_slim_leaves_objects_without_bookkeeping_as_they_are() -> None:
    pod = {"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {}}
    assert slim(pod) is pod
    with_fields = {"metadata": {"name": "p", "managedFields": [{"manager": "kubelet", "fieldsV1": {}}]}}
    assert slim(with_fields) == {"metadata": {"name": "p"}}
    assert slim({"kind": "List"}) == {"kind": "List"}
