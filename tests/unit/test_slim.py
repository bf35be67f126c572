"""What the operator keeps of a watched object."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.pod_health import find_pod_problem, pod_health
from nim_operator.slim import LAST_APPLIED, owns_replicas, slim, slim_deployment, slim_pod
from nim_operator.status import _readiness
from tests.unit.pods import backing_off, exited, make_pod, running

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


TEMPLATE: dict[str, Any] = {"metadata": {"labels": {"app": "llama"}}, "spec": {"containers": [{"name": "nim"}]}}


def test_a_deployment_is_kept_without_its_pod_template() -> None:
    deployment = {
        **DEPLOYMENT,
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "llama"}}, "template": TEMPLATE},
    }
    kept = slim_deployment(deployment)
    assert kept["spec"] == {"replicas": 2, "selector": {"matchLabels": {"app": "llama"}}}
    assert "template" in deployment["spec"], "the watched object is not changed"
    assert kept["status"] is deployment["status"]
    assert [e["manager"] for e in kept["metadata"]["managedFields"]] == ["nim-operator"]
    spec = NIMServiceSpec.model_validate({"image": {"repository": "r", "tag": "t"}})
    assert _readiness(spec, kept) == _readiness(spec, deployment)


@pytest.mark.parametrize(
    "pod",
    [
        exited(137, "OOMKilled"),
        backing_off(),
        running(ready=True, started=True),
        make_pod(state={"waiting": {"reason": "ContainerCreating"}}),
    ],
    ids=["oom-killed", "image-pull-back-off", "running", "creating"],
)
def test_a_pod_is_kept_with_what_its_health_reads(pod: dict[str, Any]) -> None:
    pod = {**pod, "spec": {**pod["spec"], "nodeName": "gpu-1", "volumes": [{"name": "model"}], "tolerations": []}}
    kept = slim_pod(pod)
    assert set(kept["spec"]) == {"containers", "nodeName"}
    assert all(set(container) <= {"name", "resources"} for container in kept["spec"]["containers"])
    assert pod_health(kept) == pod_health(pod)
    assert find_pod_problem([kept]) == find_pod_problem([pod])
