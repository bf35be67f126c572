"""Accepted but not built, or accepted and ignored: neither passes in silence."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_operator.api.coverage import IGNORED_CONDITION, ignored
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
def test_fields_that_are_built_are_not_reported_as_ignored(fields: dict[str, Any]) -> None:
    assert ignored(_spec(**fields)) == []


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


POD_AFFINITY = {
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {
            "weight": 50,
            "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"app": "vector-db"}},
                "topologyKey": "kubernetes.io/hostname",
            },
        }
    ]
}
DEPLOYMENT = "/apis/apps/v1/namespaces/team-a/deployments/llama"


def test_reconciler_renders_nvidias_deprecated_pod_affinity_into_the_pods() -> None:
    """NVIDIA's operator accepts ``spec.podAffinity`` and drops it; ours co-locates as asked."""
    reconciler, kube, _ = _reconciler()
    body = copy.deepcopy(SERVICE)
    body["spec"]["podAffinity"] = POD_AFFINITY
    outcome = reconciler.reconcile(body)
    assert outcome.status.state != "Failed", outcome.status
    affinity = kube.objects[DEPLOYMENT]["spec"]["template"]["spec"]["affinity"]
    assert affinity["podAffinity"] == POD_AFFINITY
    assert IGNORED_CONDITION not in {c.type for c in outcome.status.conditions}


def test_affinity_pod_affinity_wins_over_the_deprecated_field_and_says_so() -> None:
    reconciler, kube, _ = _reconciler()
    body = copy.deepcopy(SERVICE)
    ours = {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            POD_AFFINITY["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
        ]
    }
    body["spec"]["podAffinity"] = POD_AFFINITY
    body["spec"]["affinity"] = {"podAffinity": ours}
    outcome = reconciler.reconcile(body)
    assert kube.objects[DEPLOYMENT]["spec"]["template"]["spec"]["affinity"]["podAffinity"] == ours
    condition = next(c for c in outcome.status.conditions if c.type == IGNORED_CONDITION)
    assert condition.reason == "Superseded"
    assert "spec.podAffinity is ignored: spec.affinity.podAffinity is set" in condition.message


def _samples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "NIMService":
                out.append((str(path.relative_to(SAMPLES)), doc["spec"]))
    return out


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="NVIDIA's samples are not beside this checkout")
def test_every_nvidia_sample_parses_and_none_is_reported_superseded() -> None:
    """Every sample's spec is ours to build: none sets a field that another of its fields overrides."""
    reported = {path: [i.reason for i in ignored(NIMServiceSpec.model_validate(spec))] for path, spec in _samples()}
    assert len(reported) >= 20
    assert all("Superseded" not in reasons for reasons in reported.values()), reported
