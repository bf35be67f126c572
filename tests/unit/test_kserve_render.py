"""``inferencePlatform: kserve``: the InferenceService NVIDIA's operator would make, from NVIDIA's own
samples, and its readiness in KServe's words. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import Placement
from nim_operator.render import Owner, render_children
from nim_operator.render.kserve import isvc_endpoints, isvc_readiness, render_inference_service

OWNER = Owner("meta-llama-3-2-1b-instruct", "nim-service", "uid-1")
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "compat" / "nvidia-samples" / "serving" / "kserve"
NONE = Placement(None)


def _sample(name: str) -> NIMServiceSpec:
    docs = [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d and d["kind"] == "NIMService"]
    return NIMServiceSpec.model_validate(docs[0]["spec"])


def _isvc(spec: NIMServiceSpec) -> dict[str, Any]:
    isvc = render_inference_service(OWNER, spec, NONE)
    assert isvc is not None
    return isvc


needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="NVIDIA's samples are not beside this checkout")


@needs_samples
def test_standard_sample_scales_by_kserves_hpa_on_cpu() -> None:
    isvc = _isvc(_sample("standard/llm.yaml"))
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "true"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert isvc["metadata"]["labels"]["networking.kserve.io/visibility"] == "exposed", "the sample's label stays"
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert (predictor["scaleMetric"], predictor["scaleMetricType"], predictor["scaleTarget"]) == (
        "cpu",
        "Utilization",
        80,
    )
    assert predictor["deploymentStrategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    nim = predictor["containers"][0]
    assert nim["image"] == "nvcr.io/nim/meta/llama-3.2-1b-instruct:1.12.0"
    assert nim["ports"][0] == {"name": "api", "containerPort": 8000, "protocol": "TCP"}
    assert nim["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "api"}
    assert nim["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["labels"]["app.kubernetes.io/instance"] == OWNER.name, "KServe's pods carry our pod labels"
    assert predictor["imagePullSecrets"] == [{"name": "ngc-secret"}]
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == "meta-llama-3-2-1b-instruct-pvc"


@needs_samples
def test_knative_sample_leaves_scaling_and_pod_settings_to_knative() -> None:
    isvc = _isvc(_sample("knative/llm.yaml"))
    annotations = isvc["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/target"] == "10"
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative", "named no mode, but configures Knative"
    predictor = isvc["spec"]["predictor"]
    for key in ("minReplicas", "maxReplicas", "deploymentStrategy", "securityContext", "terminationGracePeriodSeconds"):
        assert key not in predictor, key
    nim = predictor["containers"][0]
    assert nim["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]
    assert nim["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": 8000}
    assert "lifecycle" not in nim
    assert isvc["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"


def test_unannotated_kserve_runs_standard_with_fixed_replicas_and_cluster_local() -> None:
    fields: dict[str, Any] = {"image": {"repository": "nim", "tag": "1"}, "inferencePlatform": "kserve", "replicas": 2}
    isvc = _isvc(NIMServiceSpec.model_validate(fields))
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"]["annotations"]
    assert (isvc["spec"]["predictor"]["minReplicas"], isvc["spec"]["predictor"]["maxReplicas"]) == (2, 2)
    assert isvc["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"
    exposed = {**fields, "router": {"hostDomainName": "x.io", "ingress": {"ingressClass": "nginx"}}}
    assert "networking.kserve.io/visibility" not in _isvc(NIMServiceSpec.model_validate(exposed))["metadata"]["labels"]


def test_under_kserve_the_operator_makes_no_deployment_service_autoscaler_or_route() -> None:
    spec = NIMServiceSpec.model_validate(
        {
            "image": {"repository": "nim", "tag": "1"},
            "inferencePlatform": "kserve",
            "scale": {"enabled": True, "hpa": {"maxReplicas": 2}},
            "router": {"hostDomainName": "x.io", "gateway": {"name": "g", "namespace": "n"}},
        }
    )
    children = {(ch.kind, ch.name): ch.body for ch in render_children(OWNER, spec, NONE)}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Ingress", "HTTPRoute"):
        assert children[(kind, OWNER.name)] is None, kind
    assert children[("InferenceService", OWNER.name)] is not None
    back = spec.model_copy(update={"inference_platform": "standalone"})
    standalone = {(ch.kind, ch.name): ch.body for ch in render_children(OWNER, back, NONE)}
    assert standalone[("InferenceService", OWNER.name)] is None, "switching back deletes it"


def _status(conditions: list[dict[str, str]], observed: int = 1, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "llm", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "conditions": conditions,
            "address": {"url": "http://llm-predictor.ns.svc.cluster.local"},
            "url": "http://llm.ns.example.com",
        },
    }


@pytest.mark.parametrize(
    ("isvc", "expected"),
    [
        (None, (False, "InferenceServiceMissing")),
        ({"metadata": {"name": "llm", "generation": 1}}, (False, "WaitingForKServe")),
        (
            _status([{"type": "PredictorReady", "status": "True"}], observed=1, generation=2),
            (False, "WaitingForKServe"),
        ),
        (
            _status([{"type": "PredictorReady", "status": "False", "reason": "RevisionMissing", "message": "m"}]),
            (False, "RevisionMissing"),
        ),
        (_status([{"type": "Ready", "status": "True"}]), (True, "Ready")),
        (
            _status([{"type": "Ready", "status": "False"}, {"type": "PredictorReady", "status": "True"}]),
            (True, "PredictorReady"),
        ),
    ],
)
def test_readiness_is_kserves(isvc: dict[str, Any] | None, expected: tuple[bool, str]) -> None:
    ready, reason, message = isvc_readiness(isvc)
    assert (ready, reason) == expected
    if reason == "WaitingForKServe":
        assert "kserve-controller-manager" in message


def test_endpoints_are_kserves() -> None:
    assert isvc_endpoints(_status([])) == ("http://llm-predictor.ns.svc.cluster.local", "http://llm.ns.example.com")
    assert isvc_endpoints(None) == (None, None)
