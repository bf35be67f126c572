"""A corpus of invalid NIMServices: each is refused at admission or fails with a reason naming the field,
and none leaves a child behind."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.operator.conftest import NIM

pytestmark = pytest.mark.cluster

# Our runtime with a catalog model, so the profile cases meet our catalog's ids.
IMAGE = {"repository": "nim-runtime", "tag": "dev"}
OK: dict[str, Any] = {"image": IMAGE, "model": {"name": "meta/llama-3.1-8b-instruct"}}

# (case id, spec, text the API server's rejection must contain)
REJECTED_AT_ADMISSION: list[tuple[str, dict[str, Any], str]] = [
    ("replicas-not-int", {**OK, "replicas": "two"}, "spec.replicas"),
    ("replicas-negative", {**OK, "replicas": -1}, "spec.replicas"),
    ("unknown-inference-platform", {**OK, "inferencePlatform": "triton"}, "spec.inferencePlatform"),
    (
        "multinode-mpi-and-ray",
        {**OK, "multiNode": {"parallelism": {"tensor": 8}, "mpi": {}, "ray": {}}},
        "multiNode takes mpi or ray, not both",
    ),
    (
        "multinode-with-autoscaling",
        {**OK, "multiNode": {"parallelism": {}}, "scale": {"enabled": True, "hpa": {"maxReplicas": 2}}},
        "spec.multiNode cannot autoscale",
    ),
    (
        "dra-claim-and-template",
        {**OK, "draResources": [{"resourceClaimName": "a", "resourceClaimTemplateName": "b"}]},
        "set exactly one of resourceClaimName",
    ),
    (
        "router-ingress-and-gateway",
        {
            **OK,
            "expose": {"router": {"ingress": {"ingressClass": "nginx"}, "gateway": {"name": "g", "namespace": "n"}}},
        },
        "set router.ingress or router.gateway, not both",
    ),
    ("gateway-without-name", {**OK, "expose": {"router": {"gateway": {"namespace": "n"}}}}, "name: Required value"),
    ("two-storage-sources", {**OK, "storage": {"pvc": {"name": "m"}, "emptyDir": {}}}, "spec.storage takes one source"),
    ("port-zero", {**OK, "expose": {"service": {"port": 0}}}, "spec.expose.service.port"),
    ("port-too-big", {**OK, "expose": {"service": {"port": 65536}}}, "spec.expose.service.port"),
    ("image-without-tag", {"image": {"repository": "nvcr.io/nim/x"}}, "spec.image.tag"),
    ("no-image", {"replicas": 1}, "spec.image"),
    ("autoscaling-without-hpa", {**OK, "scale": {"enabled": True}}, "spec.scale.enabled needs spec.scale.hpa"),
    (
        "hpa-min-above-max",
        {**OK, "scale": {"enabled": True, "hpa": {"minReplicas": 5, "maxReplicas": 2}}},
        "minReplicas must not exceed maxReplicas",
    ),
    ("profile-and-selector", {**OK, "profile": "vllm-bf16-tp1", "profileSelector": {"precision": "bf16"}}, "not both"),
    ("unknown-precision", {**OK, "profileSelector": {"precision": "fp7"}}, "spec.profileSelector.precision"),
    ("zero-tp", {**OK, "profileSelector": {"tensorParallelism": 0}}, "spec.profileSelector.tensorParallelism"),
    ("bad-service-type", {**OK, "expose": {"service": {"type": "Magic"}}}, "spec.expose.service.type"),
    ("pvc-create-without-size", {**OK, "storage": {"pvc": {"create": True}}}, "needs spec.storage.pvc.size"),
    ("empty-model", {**OK, "model": {}}, "spec.model needs name"),
    ("root-user", {**OK, "userID": 0}, "spec.userID"),
    ("bad-pull-policy", {**OK, "image": {**IMAGE, "pullPolicy": "Sometimes"}}, "spec.image.pullPolicy"),
    ("bad-quantity", {**OK, "resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits"),
    ("metrics-enabled-not-bool", {**OK, "metrics": {"enabled": "yes"}}, "spec.metrics.enabled"),
]

# (case id, spec, condition reason, text the Failed message must contain)
FAILED_BY_OPERATOR: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown-profile", {**OK, "profile": "vllm-typo"}, "UnknownProfile", "valid profiles: vllm-fp8-tp1-h100"),
    (
        "no-profile-fits",
        {**OK, "profileSelector": {"tensorParallelism": 16}},
        "NoProfileFits",
        "profileSelector.tensorParallelism is 16",
    ),
    ("bad-label", {**OK, "labels": {"not a key!": "x"}}, "InvalidSpec", "not a key!"),
    ("env-without-name", {**OK, "env": [{"value": "x"}]}, "InvalidSpec", "name: Required value"),
    ("missing-manifest-configmap", {**OK, "modelManifest": "nope"}, "InvalidManifest", "ConfigMap"),
    (
        "multinode-shape-contradicts-profile",
        {**OK, "profile": "vllm-bf16-tp1", "multiNode": {"parallelism": {"pipeline": 4, "tensor": 8}}},
        "InvalidMultiNodeGroup",
        "spec.multiNode.parallelism",
    ),
    (
        "multinode-no-pool-holds-the-group",
        {
            **OK,
            "image": {"repository": "nvcr.io/nim/deepseek-ai/deepseek-r1", "tag": "1.7.3"},
            "multiNode": {"parallelism": {"pipeline": 3, "tensor": 8}},
        },
        "MultiNodeGroupDoesNotFit",
        "lower spec.multiNode.parallelism.pipeline",
    ),
    (
        "dra-device-class-missing",
        {
            **OK,
            "draResources": [
                {"claimCreationSpec": {"devices": [{"name": "gpu", "deviceClassName": "tpu.example.com"}]}}
            ],
        },
        "DeviceClassNotFound",
        "spec.draResources[0].claimCreationSpec.devices[0].deviceClassName: DeviceClass tpu.example.com does not exist",
    ),
    (
        "dra-template-missing",
        {**OK, "draResources": [{"resourceClaimTemplateName": "nowhere"}]},
        "ResourceClaimNotFound",
        "spec.draResources[0].resourceClaimTemplateName: ResourceClaimTemplate",
    ),
]


def test_corpus_is_large_enough() -> None:
    assert len(REJECTED_AT_ADMISSION) + len(FAILED_BY_OPERATOR) >= 20


@pytest.mark.parametrize(("case", "spec", "expected"), REJECTED_AT_ADMISSION, ids=[c[0] for c in REJECTED_AT_ADMISSION])
def test_rejected_at_admission(nim: NIM, case: str, spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(client.ApiException) as err:
        nim.create(case, spec)
    assert err.value.status == 422, err.value.body
    assert expected in err.value.body


@pytest.mark.parametrize(
    ("case", "spec", "reason", "expected"), FAILED_BY_OPERATOR, ids=[c[0] for c in FAILED_BY_OPERATOR]
)
def test_failed_with_reason_and_nothing_created(
    nim: NIM, case: str, spec: dict[str, Any], reason: str, expected: str
) -> None:
    nim.create(case, spec)
    status = nim.wait_state(case, "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == reason
    assert expected in failed["message"]
    assert nim.deployment(case) is None
    assert nim.core.list_namespaced_service(nim.namespace).items == []
    assert nim.core.list_namespaced_persistent_volume_claim(nim.namespace).items == []
    assert client.PolicyV1Api(nim.api).list_namespaced_pod_disruption_budget(nim.namespace).items == []


def test_fixing_a_failed_spec_recovers(nim: NIM) -> None:
    nim.create("fixme", {**OK, "profile": "vllm-typo"})
    nim.wait_state("fixme", "Failed")
    nim.patch("fixme", {"spec": {"profile": "vllm-bf16-tp1-h100"}})
    status = nim.wait_state("fixme", "Ready")
    assert status["profile"]["id"] == "vllm-bf16-tp1-h100"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "False"


def test_invalid_update_leaves_running_children_untouched(nim: NIM) -> None:
    nim.create("steady", OK)
    nim.wait_state("steady", "Ready")
    deployment = nim.deployment("steady")
    assert deployment is not None
    service_version = nim.core.read_namespaced_service("steady", nim.namespace).metadata.resource_version
    nim.patch("steady", {"spec": {"labels": {"not a key!": "x"}}})
    status = nim.wait_state("steady", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    after = nim.deployment("steady")
    assert after is not None
    assert after.metadata.resource_version == deployment.metadata.resource_version
    assert nim.core.read_namespaced_service("steady", nim.namespace).metadata.resource_version == service_version
