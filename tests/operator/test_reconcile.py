"""The operator against the real control plane: placement, children, status, idempotence, recovery.

kwok runs the pods, so "Ready" here means the scheduler placed them on a fitting node and the
Deployment controller counted them available, exactly as on a real cluster.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from nim_operator.placement import runs_our_runtime
from tests.conftest import REPO
from tests.operator.conftest import NIM, wait_for

pytestmark = pytest.mark.cluster

# Our runtime serving Llama 3.1 8B from our catalog: its ids are ours (NVIDIA's own image takes only the
# ids of the manifest it carries; see test_nim_manifests_on_cluster.py).
LLAMA_8B = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "meta/llama-3.1-8b-instruct"}}
SMOL = {"image": {"repository": "nim-runtime", "tag": "dev"}, "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}


def _env(deployment: client.V1Deployment) -> dict[str, str | None]:
    return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}


def test_llama_is_placed_on_h100_and_becomes_ready(nim: NIM) -> None:
    nim.create("llama", LLAMA_8B)
    status = nim.wait_state("llama", "Ready")
    assert status["profile"]["id"] == "vllm-fp8-tp1-h100"
    assert status["profile"]["gpuProducts"] == ["NVIDIA-H100-80GB-HBM3"]
    assert status["profile"]["gpuCount"] == 1
    assert any(r["id"] == "vllm-bf16-tp2-a10g" and "needs 2" in r["why"] for r in status["profile"]["rejected"])
    assert status["availableReplicas"] == 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["ProfileSelected"]["status"] == "True"
    generation = nim.get("llama")["metadata"]["generation"]
    assert all(c["observedGeneration"] == generation for c in status["conditions"])
    assert status["model"]["clusterEndpoint"] == f"llama.{nim.namespace}.svc.cluster.local:8000"

    deployment = nim.deployment("llama")
    assert deployment is not None
    assert _env(deployment)["NIM_MODEL_PROFILE"] == "vllm-fp8-tp1-h100"
    pods = nim.core.list_namespaced_pod(nim.namespace, label_selector="app.kubernetes.io/name=llama").items
    assert len(pods) == 1
    node = nim.core.read_node(pods[0].spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pods[0].spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    events = nim.core.list_namespaced_event(nim.namespace, field_selector="involvedObject.name=llama").items
    assert any(e.reason == "ProfileSelected" and "vllm-fp8-tp1-h100" in e.message for e in events)


def test_selector_moves_the_service_to_l40s(nim: NIM) -> None:
    nim.create("llama", {**LLAMA_8B, "profileSelector": {"gpus": [{"product": "NVIDIA-L40S"}]}})
    status = nim.wait_state("llama", "Ready")
    assert status["profile"]["id"] == "vllm-fp8-tp1-l40s"
    pods = nim.core.list_namespaced_pod(nim.namespace, label_selector="app.kubernetes.io/name=llama").items
    node = nim.core.read_node(pods[0].spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-L40S"


def test_cpu_profile_lands_on_the_cpu_node_without_gpu_toleration(nim: NIM) -> None:
    nim.create("smol", {**SMOL, "profile": "vllm-cpu-bf16"})
    nim.wait_state("smol", "Ready")
    pod = nim.core.list_namespaced_pod(nim.namespace, label_selector="app.kubernetes.io/name=smol").items[0]
    assert not any(t.key == "nvidia.com/gpu" for t in pod.spec.tolerations or [])
    assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})
    assert nim.core.read_node(pod.spec.node_name).metadata.labels.get("nvidia.com/gpu.present") is None


def test_no_fitting_profile_fails_with_reasons_and_creates_nothing(nim: NIM) -> None:
    nim.create("big", {**LLAMA_8B, "profileSelector": {"tensorParallelism": 16}})
    status = nim.wait_state("big", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NoProfileFits"
    assert "profileSelector.tensorParallelism is 16" in failed["message"]
    assert len(status["profile"]["rejected"]) == 9
    assert nim.deployment("big") is None
    events = nim.core.list_namespaced_event(nim.namespace, field_selector="involvedObject.name=big").items
    assert any(e.type == "Warning" and e.reason == "NoProfileFits" for e in events)


def test_unknown_image_is_deployed_as_specified(nim: NIM) -> None:
    """An image that is not ours is asked for its manifest by a probe Job; on kwok the probe's log cannot
    be read (no kubelet), so the manifest stays unknown: no profile is injected, status says why."""
    spec = {
        "image": {"repository": "nvcr.io/nim/acme/secret-model", "tag": "1"},
        "resources": {"limits": {"nvidia.com/gpu": 2}},
    }
    nim.create("acme", spec)
    status = nim.wait_state("acme", "Ready")
    assert "the manifest of nvcr.io/nim/acme/secret-model:1 is unknown" in status["profile"]["reason"]
    assert "the image selects its own profile" in status["profile"]["reason"]
    selected = next(c for c in status["conditions"] if c["type"] == "ProfileSelected")
    assert selected["reason"] == "RuntimeSelects"
    deployment = nim.deployment("acme")
    assert deployment is not None
    assert "NIM_MODEL_PROFILE" not in _env(deployment)
    tolerations = deployment.spec.template.spec.tolerations
    assert any(t.key == "nvidia.com/gpu" for t in tolerations), "a GPU pod must tolerate the GPU taint"


def test_admission_rejects_invalid_combinations(nim: NIM) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        # replicas beside scale.enabled is accepted (NVIDIA's samples do it) and reported as ignored.
        ({**LLAMA_8B, "storage": {"pvc": {"name": "a"}, "hostPath": "/models"}}, "spec.storage takes one source"),
        ({**LLAMA_8B, "expose": {"service": {"port": 70000}}}, "should be less than or equal to 65535"),
        ({**LLAMA_8B, "replicas": -1}, "should be greater than or equal to 0"),
    ]
    for spec, message in cases:
        with pytest.raises(client.ApiException) as err:
            nim.create("bad", spec)
        assert err.value.status == 422
        assert message in err.value.body


def test_disabling_a_feature_deletes_its_child(nim: NIM) -> None:
    ingress = {"enabled": True, "spec": {"rules": [{"host": "llm.local", "http": {"paths": [{"path": "/"}]}}]}}
    nim.create("web", {**SMOL, "expose": {"ingress": ingress}})
    net = client.NetworkingV1Api(nim.api)

    def ingress_exists() -> bool:
        try:
            net.read_namespaced_ingress("web", nim.namespace)
        except client.ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    wait_for(ingress_exists, what="the Ingress")
    nim.patch("web", {"spec": {"expose": {"ingress": {"enabled": False}}}})
    wait_for(lambda: not ingress_exists(), what="the Ingress to be deleted")


def test_resync_with_nothing_changed_writes_nothing(nim: NIM) -> None:
    nim.create("calm", SMOL)
    nim.wait_state("calm", "Ready")
    time.sleep(2)  # let the last Deployment status events settle
    before = nim.get("calm")["metadata"]["resourceVersion"]
    deployment = nim.deployment("calm")
    assert deployment is not None
    before_dep = deployment.metadata.resource_version
    # A label change is a spec-level event for kopf: the operator reconciles, and must find nothing to do.
    nim.patch("calm", {"metadata": {"labels": {"touched": "yes"}}})
    changes = []
    for event in watch.Watch().stream(
        nim.custom.list_namespaced_custom_object,
        "apps.nimoperator.dev",
        "v1alpha1",
        nim.namespace,
        "nimservices",
        field_selector="metadata.name=calm",
        resource_version=before,
        timeout_seconds=4,
    ):
        changes.append(event["object"])
    deployment = nim.deployment("calm")
    assert deployment is not None
    assert deployment.metadata.resource_version == before_dep, "the Deployment was written"
    # Our label patch, then kopf's note of the handled configuration; never a status write.
    assert len(changes) <= 2, [c["metadata"].get("managedFields", [])[-1:] for c in changes]
    assert all(c["status"] == changes[0]["status"] for c in changes), [c["status"] for c in changes]
    assert changes[-1]["status"]["state"] == "Ready"


def test_child_deleted_by_hand_is_restored_and_owner_delete_collects(nim: NIM) -> None:
    nim.create("phoenix", SMOL)
    nim.wait_state("phoenix", "Ready")
    first = nim.deployment("phoenix")
    assert first is not None
    nim.apps.delete_namespaced_deployment("phoenix", nim.namespace)
    restored = wait_for(
        lambda: (d := nim.deployment("phoenix")) is not None and d.metadata.uid != first.metadata.uid and d,
        what="the Deployment to be recreated",
    )
    assert restored.metadata.owner_references[0].kind == "NIMService"
    nim.wait_state("phoenix", "Ready")
    nim.delete("phoenix")
    wait_for(lambda: nim.deployment("phoenix") is None, timeout=60, what="garbage collection of the Deployment")


def test_scale_subresource_drives_replicas(nim: NIM) -> None:
    nim.create("scaled", SMOL)
    nim.wait_state("scaled", "Ready")
    nim.custom.patch_namespaced_custom_object_scale(
        "apps.nimoperator.dev", "v1alpha1", nim.namespace, "nimservices", "scaled", {"spec": {"replicas": 3}}
    )
    status = wait_for(
        lambda: (s := nim.status("scaled")).get("availableReplicas") == 3 and s, what="three available replicas"
    )
    assert status["replicas"] == 3
    scale = nim.custom.get_namespaced_custom_object_scale(
        "apps.nimoperator.dev", "v1alpha1", nim.namespace, "nimservices", "scaled"
    )
    assert scale["status"]["replicas"] == 3
    assert "app.kubernetes.io/name=scaled" in scale["status"]["selector"]


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_examples_reconcile_to_ready(nim: NIM, example: str) -> None:
    """The demo's manifests, as users copy them: accepted, placed, Ready."""
    body = yaml.safe_load((REPO / "examples" / example).read_text())
    if os.environ.get("NIM_REAL_NODES") == "0" and any(
        t.get("key") == "nimoperator.dev/real-node" for t in body["spec"].get("tolerations", [])
    ):
        # A light cluster (a developer's choice, never CI's) has no real node for this example to run on.
        pytest.skip("needs the real nodes, which NIM_REAL_NODES=0 leaves out")
    nim.create(body["metadata"]["name"], body["spec"])
    status = nim.wait_state(body["metadata"]["name"], "Ready", timeout=90)
    if runs_our_runtime(body["spec"]["image"]["repository"]):
        assert status["profile"]["id"]
    else:
        # NVIDIA's image: its own manifest decides, which kwok's nodes cannot print (no kubelet, no log).
        assert "the image selects its own profile" in status["profile"]["reason"]


def test_turning_on_autoscaling_hands_the_replica_count_to_the_hpa_without_a_drop(nim: NIM) -> None:
    nim.create("handover", {**SMOL, "replicas": 3})
    wait_for(lambda: nim.status("handover").get("availableReplicas") == 3, what="three available replicas")
    # NVIDIA's own samples keep replicas beside scale.enabled; the count must not fall to the default 1.
    nim.patch("handover", {"spec": {"scale": {"enabled": True, "hpa": {"minReplicas": 1, "maxReplicas": 5}}}})
    wait_for(
        lambda: nim.status("handover").get("observedGeneration") == nim.get("handover")["metadata"]["generation"],
        what="the autoscaled generation to be reconciled",
    )
    seen: list[int] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        deployment = nim.deployment("handover")
        assert deployment is not None
        seen.append(deployment.spec.replicas)
        time.sleep(0.2)
    assert min(seen) == 3, seen
    hpa = client.AutoscalingV2Api(nim.api).read_namespaced_horizontal_pod_autoscaler("handover", nim.namespace)
    assert hpa.spec.max_replicas == 5
    # Our apply no longer owns the count; the handover's manager holds it until the autoscaler changes it.
    deployment = nim.deployment("handover")
    assert deployment is not None
    owners = [
        f.manager
        for f in deployment.metadata.managed_fields
        if "f:replicas" in ((f.fields_v1 or {}).get("f:spec") or {})
    ]
    assert "nim-operator" not in owners, owners
    assert owners, owners
    # And back: autoscaling off with no replicas in the spec keeps the count the autoscaler left.
    nim.patch("handover", {"spec": {"scale": {"enabled": False}, "replicas": None}})
    wait_for(
        lambda: client.AutoscalingV2Api(nim.api).list_namespaced_horizontal_pod_autoscaler(nim.namespace).items == [],
        what="the HPA to be deleted",
    )
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        deployment = nim.deployment("handover")
        assert deployment is not None
        seen.append(deployment.spec.replicas)
        time.sleep(0.2)
    assert set(seen) == {3}, seen
