"""Admission of the router, KServe, proxy and extra-container fields: the generated CRD's CEL rules, run by
cel-python, say yes to what can be built and no, naming the field and the fix, to what cannot.

(tests/operator/test_router_and_kserve.py sends the same refusals to the real API server.)
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.cel_admission import Evaluator, spec_schema

SCHEMA = spec_schema()
CEL = Evaluator()
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}
GATEWAY = {"name": "inference-gateway", "namespace": "gw"}
EPP_CONTAINER = {"name": "epp", "image": {"repository": "registry.k8s.io/epp", "tag": "v1.3.1"}}
KNATIVE = {"serving.kserve.io/deploymentMode": "Knative"}


def _refusals(spec: dict[str, Any]) -> list[str]:
    return CEL.violations(SCHEMA, {"image": IMAGE, **spec})


def _router(**router: Any) -> dict[str, Any]:
    return {"expose": {"router": {"hostDomainName": "example.com", **router}}}


@pytest.mark.parametrize(
    ("case", "spec"),
    [
        (
            "grpc route with its port",
            {
                "expose": {
                    "service": {"grpcPort": 50051},
                    "router": {"hostDomainName": "example.com", "gateway": {**GATEWAY, "grpcRoutesEnabled": True}},
                }
            },
        ),
        ("all three ports distinct", {"expose": {"service": {"port": 9000, "grpcPort": 50051, "metricsPort": 8002}}}),
        ("grpcPort beside the default port", {"expose": {"service": {"grpcPort": 8001}}}),
        ("epp with inline config", _router(eppConfig={"containerSpec": EPP_CONTAINER, "config": {"plugins": []}})),
        (
            "epp with a ConfigMap",
            _router(eppConfig={"containerSpec": EPP_CONTAINER, "configMapRef": {"name": "c", "key": "k"}}),
        ),
        (
            "kserve standard with everything",
            {
                "inferencePlatform": "kserve",
                "annotations": {"serving.kserve.io/deploymentMode": "Standard"},
                "scale": {"enabled": True, "hpa": {"maxReplicas": 3}},
                "metrics": {"enabled": True},
                **_router(ingress={"ingressClass": "nginx"}),
            },
        ),
        ("kserve knative, plain", {"inferencePlatform": "kserve", "annotations": KNATIVE, "replicas": 1}),
        (
            "knative annotation on a standalone service",
            {"annotations": KNATIVE, "scale": {"enabled": True, "hpa": {"maxReplicas": 2}}},
        ),
        (
            "init and sidecar of distinct names",
            {
                "initContainers": [{"name": "fetch", "image": IMAGE}],
                "sidecarContainers": [{"name": "log", "image": IMAGE}],
            },
        ),
        ("proxy with CA", {"proxy": {"httpsProxy": "http://proxy:3128", "noProxy": ".svc", "certConfigMap": "ca"}}),
    ],
)
def test_accepted(case: str, spec: dict[str, Any]) -> None:
    assert _refusals(spec) == []


@pytest.mark.parametrize(
    ("case", "spec", "message"),
    [
        (
            "grpc route without a grpc port",
            _router(gateway={**GATEWAY, "grpcRoutesEnabled": True}),
            "spec.expose.router.gateway.grpcRoutesEnabled needs spec.expose.service.grpcPort",
        ),
        (
            "grpc route in spec.router without a grpc port",
            {"router": {"hostDomainName": "example.com", "gateway": {**GATEWAY, "grpcRoutesEnabled": True}}},
            "spec.router.gateway.grpcRoutesEnabled needs spec.expose.service.grpcPort",
        ),
        ("gateway without a domain", {"expose": {"router": {"gateway": GATEWAY}}}, "need router.hostDomainName"),
        ("ingress without a domain", {"router": {"ingress": {"ingressClass": "nginx"}}}, "need router.hostDomainName"),
        ("grpcPort on the api port", {"expose": {"service": {"grpcPort": 8000}}}, "grpcPort must differ from port"),
        (
            "metricsPort on the grpc port",
            {"expose": {"service": {"port": 9000, "grpcPort": 8001, "metricsPort": 8001}}},
            "metricsPort must differ from grpcPort",
        ),
        ("epp without config", _router(eppConfig={"containerSpec": EPP_CONTAINER}), "needs its EndpointPickerConfig"),
        (
            "kserve with multiNode",
            {"inferencePlatform": "kserve", "multiNode": {"parallelism": {"tensor": 8, "pipeline": 2}}},
            "spec.multiNode cannot be used with inferencePlatform kserve",
        ),
        (
            "kserve with ModelMesh",
            {"inferencePlatform": "kserve", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
            "must be Standard, RawDeployment, Knative or Serverless",
        ),
        (
            "knative with autoscaling",
            {
                "inferencePlatform": "kserve",
                "annotations": KNATIVE,
                "scale": {"enabled": True, "hpa": {"maxReplicas": 2}},
            },
            "spec.scale.enabled cannot be true when KServe runs in Knative mode",
        ),
        (
            "serverless with a gateway",
            {
                "inferencePlatform": "kserve",
                "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
                **_router(gateway=GATEWAY),
            },
            "cannot be used when KServe runs in Knative mode",
        ),
        (
            "knative with the legacy ingress",
            {"inferencePlatform": "kserve", "annotations": KNATIVE, "expose": {"ingress": {"enabled": True}}},
            "cannot be used when KServe runs in Knative mode",
        ),
        (
            "knative with a ServiceMonitor",
            {"inferencePlatform": "kserve", "annotations": KNATIVE, "metrics": {"enabled": True}},
            "spec.metrics.enabled cannot be true when KServe runs in Knative mode",
        ),
        ("sidecar named nim", {"sidecarContainers": [{"name": "nim", "image": IMAGE}]}, "belong to the operator's"),
        (
            "init named like the CA bundle's",
            {"initContainers": [{"name": "update-ca-certificates", "image": IMAGE}]},
            "belong to the operator's",
        ),
        (
            "init and sidecar of one name",
            {"initContainers": [{"name": "x", "image": IMAGE}], "sidecarContainers": [{"name": "x", "image": IMAGE}]},
            "share a container name",
        ),
    ],
)
def test_refused_naming_the_field(case: str, spec: dict[str, Any], message: str) -> None:
    refusals = _refusals(spec)
    assert len(refusals) == 1, refusals
    assert message in refusals[0]
    assert "error evaluating" not in refusals[0]


def test_extra_containers_are_unique_by_name_as_in_a_pod() -> None:
    """Duplicates inside one list are refused by the API server itself (a list of type map keyed by name)."""
    for field in ("initContainers", "sidecarContainers"):
        node = SCHEMA["properties"][field]
        assert (node["x-kubernetes-list-type"], node["x-kubernetes-list-map-keys"]) == ("map", ["name"])
        assert node["maxItems"] == 32
