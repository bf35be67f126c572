"""Accepted but not built, or accepted and ignored: neither passes in silence."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_operator.api.coverage import IGNORED_CONDITION, UNSUPPORTED_REASON, ignored, not_built
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.render import Owner
from nim_operator.status import compute_status
from tests.unit.test_reconciler_pod_events import SERVICE, _reconciler

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "compat" / "nvidia-samples"
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}
GATEWAY = {"name": "inference-gateway", "namespace": "gw"}
EPP = {"containerSpec": {"name": "epp", "image": {"repository": "epp", "tag": "v1"}}, "config": {}}


def _spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": IMAGE, **fields})


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"podAffinity": {}}, ["spec.podAffinity"]),
    ],
)
def test_each_field_not_built_is_named(fields: dict[str, Any], named: list[str]) -> None:
    found = not_built(_spec(**fields))
    assert [u.field for u in found] == named
    assert all("does not build yet" in u.message and u.field in u.message for u in found)


@pytest.mark.parametrize(
    "fields",
    [
        {
            "inferencePlatform": "standalone",
            "replicas": 2,
            "expose": {"router": {"hostDomainName": "example.com"}, "ingress": {"enabled": True, "spec": {}}},
            "storage": {"pvc": {"create": True, "size": "1Gi"}},
        },
        {"inferencePlatform": "kserve"},
        {"expose": {"router": {"hostDomainName": "example.com", "gateway": GATEWAY, "eppConfig": EPP}}},
        {"router": {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}}},
        {"proxy": {"httpsProxy": "http://proxy:3128", "certConfigMap": "ca"}},
        {"initContainers": [{"name": "init", "image": IMAGE}]},
        {"sidecarContainers": [{"name": "side", "image": IMAGE}]},
        {"expose": {"service": {"grpcPort": 50051, "metricsPort": 8002}}},
    ],
)
def test_fields_that_are_built_are_not_named(fields: dict[str, Any]) -> None:
    spec = _spec(**fields)
    assert not_built(spec) == []
    assert ignored(spec) == []


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"expose": {"router": {"hostDomainName": "example.com", "gateway": GATEWAY, "eppConfig": EPP}}},
            ["spec.expose.router.gateway", "spec.expose.router.eppConfig"],
        ),
        (
            {"expose": {"service": {"type": "NodePort", "name": "other"}}},
            ["spec.expose.service (type, name, annotations, labels)"],
        ),
        ({"replicas": 2, "annotations": {"serving.kserve.io/deploymentMode": "Knative"}}, ["spec.replicas"]),
        (
            {
                "scale": {
                    "enabled": True,
                    "hpa": {
                        "maxReplicas": 3,
                        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
                        "metrics": [{"type": "Pods", "pods": {"metric": {"name": "queue"}}}],
                    },
                }
            },
            ["spec.scale.hpa.behavior", "spec.scale.hpa.metrics"],
        ),
    ],
)
def test_what_kserve_cannot_carry_is_reported_as_ignored(fields: dict[str, Any], named: list[str]) -> None:
    found = ignored(_spec(inferencePlatform="kserve", **fields))
    assert [i.field for i in found] == named
    assert all("KServe" in i.message for i in found)
    assert ignored(_spec(**fields)) == [] or "scale" in fields, "standalone builds them"


def test_replicas_under_autoscaling_is_reported_as_ignored() -> None:
    spec = _spec(replicas=1, scale={"enabled": True, "hpa": {"maxReplicas": 2}, "annotations": {"a": "b"}})
    found = ignored(spec)
    assert [(i.field, i.reason) for i in found] == [
        ("spec.replicas", "ReplicasUnderAutoscaling"),
        ("spec.scale.annotations", "NotApplied"),
    ]
    assert "HorizontalPodAutoscaler sets the replica count" in found[0].message


def _status(spec: NIMServiceSpec, previous: Any = None, now: str = "t1") -> Any:
    deployment = {
        "metadata": {"generation": 1},
        "spec": {},
        "status": {"observedGeneration": 1, "availableReplicas": 1, "replicas": 1, "updatedReplicas": 1},
    }
    return compute_status(
        owner=Owner("svc", "ns", "uid"),
        spec=spec,
        generation=1,
        previous=previous,
        profile=None,
        served_model_name="m",
        failure=None,
        deployment=deployment,
        now=now,
    )


def test_ignored_fields_condition_is_present_only_while_something_is_ignored() -> None:
    autoscaled = _spec(replicas=1, scale={"enabled": True, "hpa": {"maxReplicas": 2}})
    status = _status(autoscaled)
    condition = next(c for c in status.conditions if c.type == IGNORED_CONDITION)
    assert (condition.status, condition.reason) == ("True", "ReplicasUnderAutoscaling")
    assert "spec.replicas is ignored" in condition.message
    assert status.state == "Ready", "an ignored field does not make the service unready"
    assert _status(autoscaled, previous=status, now="t2") == status, "recomputing changes nothing"
    plain = _status(_spec(replicas=1))
    assert IGNORED_CONDITION not in {c.type for c in plain.conditions}


def test_reconciler_fails_a_field_it_does_not_build_and_applies_nothing() -> None:
    reconciler, kube, events = _reconciler()
    body = copy.deepcopy(SERVICE)
    body["spec"]["podAffinity"] = {}
    outcome = reconciler.reconcile(body)
    assert outcome.status.state == "Failed"
    failed = next(c for c in outcome.status.conditions if c.type == "Failed")
    assert failed.reason == UNSUPPORTED_REASON
    assert "spec.podAffinity asks for pod affinity rules" in failed.message
    assert kube.objects == {}, "nothing is applied"
    assert ("Warning", UNSUPPORTED_REASON, failed.message) in events
    body["status"] = kube.status_writes[-1]
    again = reconciler.reconcile(body)
    assert again.status == outcome.status
    assert not again.status_written, "the same failure is not written again"


def _samples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "NIMService":
                out.append((str(path.relative_to(SAMPLES)), doc["spec"]))
    return out


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="NVIDIA's samples are not beside this checkout")
def test_nvidia_samples_that_ask_for_what_is_not_built_are_told_so() -> None:
    """Every sample parses, and every field of theirs is built now: multi-node, DRA, routers, KServe."""
    named = {path: [u.field for u in not_built(NIMServiceSpec.model_validate(spec))] for path, spec in _samples()}
    assert len(named) >= 20
    for path, fields in named.items():
        if path.startswith(("serving/advanced/", "serving/kserve/", "serving/standalone/routers/")):
            assert fields == [], f"{path}: {fields}"
    assert named["serving/advanced/multi-node/multi-node-nimservice.yaml"] == []
    assert named["serving/advanced/dra/manual/llm.yaml"] == []
    assert named["serving/standalone/basic/llm.yaml"] == []
