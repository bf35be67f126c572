"""DRA claims in the pods: the user's (spec.draResources) and the chosen profile's own, and the ResourceSlice
facts the latter come from. Pure functions, plus the reconciler against an in-memory API server."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.dra_inventory import (
    DraGpu,
    DraInventory,
    allocated_alternatives,
    describe_allocation,
    profile_claim,
    slice_gpus,
)
from nim_operator.placement import decide, node_facts
from nim_operator.reconciler import Reconciler
from nim_operator.render import Owner
from nim_operator.render.dra import ClaimPlan, DraSpecError, apply_to_pod, user_claims
from nim_operator.workload import selection_nodes
from nim_runtime.profiles import ProfileSelector, find_manifest
from tests.cluster import dra_slices
from tests.unit.test_reconciler_pod_events import SERVICE, MemoryKube

OWNER = Owner("llama", "team-a", "uid-1")
# Our runtime with our catalog's Llama 3.1 8B (NVIDIA's image would take only its own manifest's ids).
IMAGE = {"repository": "nim-runtime", "tag": "dev"}
MODEL = {"name": "meta/llama-3.1-8b-instruct"}
NODES = Path(__file__).resolve().parents[1] / "cluster" / "nodes.yaml"
DEVICE_CLASS_PATH = "/apis/resource.k8s.io/v1/deviceclasses/gpu.nvidia.com"


def _spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": IMAGE, "model": MODEL, **fields})


def _cel(template: dict[str, Any]) -> list[str]:
    request = template["spec"]["spec"]["devices"]["requests"][0]
    return [s["cel"]["expression"] for s in request["exactly"]["selectors"]]


def test_claim_creation_spec_becomes_a_template_with_cel_selectors() -> None:
    """NVIDIA's sample: an Ampere GPU with at least 40Gi."""
    device = {
        "name": "gpu",
        "attributeSelectors": [
            {"key": "architecture", "op": "Equal", "value": {"stringValue": "Ampere"}},
            {"key": "cudaComputeCapability", "op": "GreaterThanOrEqual", "value": {"versionValue": "8.0.0"}},
            {"key": "example.com/numa", "op": "LessThan", "value": {"intValue": 2}},
        ],
        "capacitySelectors": [{"key": "memory", "op": "GreaterThanOrEqual", "value": "40Gi"}],
    }
    plan = user_claims(OWNER, _spec(draResources=[{"claimCreationSpec": {"devices": [device]}, "requests": ["gpu"]}]))
    (template,) = plan.templates
    assert template["kind"] == "ResourceClaimTemplate"
    assert template["metadata"]["name"].startswith("llama-claim-0-")
    assert template["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    request = template["spec"]["spec"]["devices"]["requests"][0]
    assert request["name"] == "gpu"
    assert {k: v for k, v in request["exactly"].items() if k != "selectors"} == {
        "deviceClassName": "gpu.nvidia.com",
        "allocationMode": "ExactCount",
        "count": 1,
    }
    assert _cel(template) == [
        'device.driver == "gpu.nvidia.com"',
        'device.attributes["gpu.nvidia.com"].architecture == "Ampere"',
        'device.attributes["gpu.nvidia.com"].cudaComputeCapability.compareTo(semver("8.0.0")) >= 0',
        'device.attributes["example.com"].numa < 2',
        'device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("40Gi")) >= 0',
    ]
    (claim,) = plan.claims
    assert claim.pod_entry() == {"name": "dra-0", "resourceClaimTemplateName": template["metadata"]["name"]}
    assert claim.container_entries() == [{"name": "dra-0", "request": "gpu"}]
    assert plan.device_classes == (
        ("spec.draResources[0].claimCreationSpec.devices[0].deviceClassName", "gpu.nvidia.com"),
    )


def test_template_name_follows_its_immutable_spec() -> None:
    def name(memory: str) -> str:
        device = {"name": "gpu", "capacitySelectors": [{"key": "memory", "op": "GreaterThan", "value": memory}]}
        plan = user_claims(OWNER, _spec(draResources=[{"claimCreationSpec": {"devices": [device]}}]))
        return str(plan.templates[0]["metadata"]["name"])

    assert name("40Gi") == name("40Gi")
    assert name("40Gi") != name("80Gi"), "a changed spec is a new template, not an update the server refuses"


def test_an_ordering_on_a_string_names_the_field_and_the_fix() -> None:
    device = {
        "name": "gpu",
        "attributeSelectors": [{"key": "productName", "op": "GreaterThan", "value": {"stringValue": "A"}}],
    }
    with pytest.raises(DraSpecError) as err:
        user_claims(OWNER, _spec(draResources=[{"claimCreationSpec": {"devices": [device]}}]))
    assert str(err.value).startswith(
        "spec.draResources[0].claimCreationSpec.devices[0].attributeSelectors[0].op: GreaterThan does not apply"
    )
    assert "use Equal or NotEqual" in str(err.value)


def test_named_claims_and_templates_go_into_the_pod_and_replace_the_profiles_gpus() -> None:
    spec = _spec(draResources=[{"resourceClaimName": "shared-gpu"}, {"resourceClaimTemplateName": "per-pod"}])
    plan = user_claims(OWNER, spec)
    assert plan.templates == ()
    pod: dict[str, Any] = {
        "containers": [
            {"name": "nim", "resources": {"limits": {c.GPU_RESOURCE: "1"}, "requests": {c.GPU_RESOURCE: "1"}}}
        ]
    }
    apply_to_pod(pod, plan, spec)
    assert pod["resourceClaims"] == [
        {"name": "dra-0", "resourceClaimName": "shared-gpu"},
        {"name": "dra-1", "resourceClaimTemplateName": "per-pod"},
    ]
    assert pod["containers"][0]["resources"] == {"claims": [{"name": "dra-0"}, {"name": "dra-1"}]}
    assert {"key": c.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    asked = _spec(resources={"limits": {c.GPU_RESOURCE: 2}}, draResources=[{"resourceClaimName": "x"}])
    kept: dict[str, Any] = {"containers": [{"resources": {"limits": {c.GPU_RESOURCE: "2"}}}]}
    apply_to_pod(kept, user_claims(OWNER, asked), asked)
    assert kept["containers"][0]["resources"]["limits"] == {c.GPU_RESOURCE: "2"}, "the user's own GPUs stay"
    untouched: dict[str, Any] = {"containers": [{}]}
    apply_to_pod(untouched, ClaimPlan(), spec)
    assert untouched == {"containers": [{}]}


def _cluster_nodes() -> list[dict[str, Any]]:
    nodes = [d for d in yaml.safe_load_all(NODES.read_text()) if d]
    for i, node in enumerate(nodes):
        node["metadata"]["uid"] = f"uid-{i}"
    return nodes


def _dra_only(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kwok pools as a cluster that runs NVIDIA's DRA driver instead of its device plugin."""
    out = copy.deepcopy(nodes)
    for node in out:
        for section in ("capacity", "allocatable"):
            node["status"][section].pop(c.GPU_RESOURCE, None)
    return out


def test_slices_published_for_the_kwok_pools_are_read_back() -> None:
    nodes = _cluster_nodes()
    slices = [dra_slices.resource_slice(n) for n in nodes if n["metadata"]["labels"].get(c.GPU_PRODUCT_LABEL)]
    node, gpus = slice_gpus(json.loads(json.dumps(slices[0])))
    assert node == "kwok-h100-0"
    assert gpus == (DraGpu("NVIDIA H100 80GB HBM3", 81559),) * 8
    attributes = slices[0]["spec"]["devices"][0]["attributes"]
    assert attributes["architecture"] == {"string": "Hopper"}
    assert attributes["cudaComputeCapability"] == {"version": "9.0.0"}
    assert slice_gpus({"metadata": {"name": "x"}, "spec": {"driver": "other.example.com", "devices": []}}) == (None, ())
    inventory = DraInventory()
    assert all(inventory.slice_seen(s) for s in slices)
    assert not inventory.slice_seen(slices[0]), "the same slice again is no news"
    for n in nodes:
        inventory.node_seen(n)
    assert inventory.dra_only() == {}, "nodes with the device plugin keep requesting nvidia.com/gpu"
    for n in _dra_only(nodes):
        inventory.node_seen(n)
    assert sorted(inventory.dra_only()) == ["kwok-a10g-0", "kwok-h100-0", "kwok-h100-1", "kwok-l40s-0", "kwok-l40s-1"]


def _dra_world(nodes: list[dict[str, Any]]) -> tuple[DraInventory, list[Any]]:
    inventory = DraInventory()
    for n in nodes:
        inventory.node_seen(n)
        if n["metadata"]["labels"].get(c.GPU_PRODUCT_LABEL):
            inventory.slice_seen(dra_slices.resource_slice(n))
    label_facts = [f for n in nodes if (f := node_facts(n)) is not None]
    return inventory, selection_nodes(label_facts, inventory.dra_only())


def test_the_chosen_profile_becomes_a_claim_with_ranked_fallbacks() -> None:
    inventory, nodes = _dra_world(_dra_only(_cluster_nodes()))
    manifest = find_manifest("meta/llama-3.1-8b-instruct")
    assert manifest is not None
    spec = _spec()
    decision = decide(spec, manifest, nodes, previous=None)
    assert decision.profile.id == "vllm-fp8-tp1-h100"
    plan = profile_claim(OWNER, spec, manifest, decision, inventory.dra_only(), ProfileSelector())
    assert plan is not None
    (template,) = plan.templates
    request = template["spec"]["spec"]["devices"]["requests"][0]
    assert request["name"] == "gpus"
    alternatives = request["firstAvailable"]
    assert [a["name"] for a in alternatives][:3] == ["vllm-fp8-tp1-h100", "vllm-fp8-tp1-l40s", "vllm-bf16-tp1-h100"]
    assert 1 < len(alternatives) <= 8
    first = alternatives[0]
    assert (first["deviceClassName"], first["count"]) == ("gpu.nvidia.com", 1)
    assert [s["cel"]["expression"] for s in first["selectors"]] == [
        'device.driver == "gpu.nvidia.com"',
        'device.attributes["gpu.nvidia.com"].productName in ["NVIDIA H100 80GB HBM3"]',
        'device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("40960Mi")) >= 0',
    ]
    assert "first available of vllm-fp8-tp1-h100 (1 x NVIDIA H100 80GB HBM3, >= 40960 MiB)" in plan.explanation
    pinned = _spec(profile="vllm-bf16-tp1-l40s")
    exact = profile_claim(
        OWNER, pinned, manifest, decide(pinned, manifest, nodes, previous=None), inventory.dra_only(), ProfileSelector()
    )
    assert exact is not None
    only = exact.templates[0]["spec"]["spec"]["devices"]["requests"][0]
    assert "firstAvailable" not in only
    assert only["exactly"]["count"] == 1


def test_no_claim_where_the_device_plugin_serves_the_gpus() -> None:
    inventory, nodes = _dra_world(_cluster_nodes())
    manifest = find_manifest("meta/llama-3.1-8b-instruct")
    assert manifest is not None
    decision = decide(_spec(), manifest, nodes, previous=None)
    assert profile_claim(OWNER, _spec(), manifest, decision, inventory.dra_only(), ProfileSelector()) is None


class ListingKube(MemoryKube):
    """MemoryKube that also answers LISTs (the reconciler lists its ResourceClaimTemplates to prune them)."""

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path.endswith("/resourceclaimtemplates"):
            items = [copy.deepcopy(o) for k, o in self.objects.items() if k.startswith(path + "/")]
            return 200, {"items": items}
        if method == "DELETE" and path in self.objects:
            del self.objects[path]
            return 200, {}
        return super().call(method, path, **kwargs)


def _reconciler() -> tuple[Reconciler, ListingKube, list[tuple[str, str, str]]]:
    kube = ListingKube()
    events: list[tuple[str, str, str]] = []
    return Reconciler(kube, lambda body, kind, reason, message: events.append((kind, reason, message))), kube, events


def _service(spec: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(SERVICE)
    body["spec"] = spec
    return body


def _deployment(kube: MemoryKube) -> dict[str, Any]:
    return kube.objects["/apis/apps/v1/namespaces/team-a/deployments/llama"]


def test_reconciler_claims_the_profile_on_dra_only_nodes() -> None:
    reconciler, kube, _ = _reconciler()
    kube.objects[DEVICE_CLASS_PATH] = dra_slices.device_class()
    for n in _dra_only(_cluster_nodes()):
        reconciler.dra.node_seen(n)
        if (facts := node_facts(n)) is not None:
            reconciler.nodes[facts.name] = facts
        if n["metadata"]["labels"].get(c.GPU_PRODUCT_LABEL):
            reconciler.dra.slice_seen(dra_slices.resource_slice(n))
    outcome = reconciler.reconcile(_service({"image": IMAGE, "model": MODEL}))
    templates = [a for a in outcome.applied if a.startswith("ResourceClaimTemplate/llama-gpus-")]
    assert len(templates) == 1
    pod = _deployment(kube)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": templates[0].split("/")[1]}]
    assert container["resources"].get("claims") == [{"name": "gpus"}]
    assert c.GPU_RESOURCE not in container["resources"].get("limits", {})
    assert "affinity" not in pod, "DRA picks the devices, so no product affinity"
    env = {e["name"] for e in container["env"]}
    assert c.ENV_MODEL_PROFILE not in env, "with fallbacks the runtime runs the profile of the GPUs it gets"
    assert outcome.status.profile is not None
    assert "GPUs claimed through DRA" in outcome.status.profile.reason
    assert outcome.status.profile.id == "vllm-fp8-tp1-h100"


def test_reconciler_fails_a_claim_no_device_class_serves_and_applies_nothing() -> None:
    reconciler, kube, _ = _reconciler()
    device = {"name": "gpu", "deviceClassName": "tpu.example.com"}
    outcome = reconciler.reconcile(
        _service({"image": IMAGE, "model": MODEL, "draResources": [{"claimCreationSpec": {"devices": [device]}}]})
    )
    assert outcome.status.state == "Failed"
    failed = next(cond for cond in outcome.status.conditions if cond.type == "Failed")
    assert failed.reason == "DeviceClassNotFound"
    assert failed.message.startswith(
        "spec.draResources[0].claimCreationSpec.devices[0].deviceClassName: DeviceClass tpu.example.com does not exist"
    )
    assert [p for p in kube.objects if "deviceclasses" not in p] == []
    kube.objects[DEVICE_CLASS_PATH] = dra_slices.device_class()
    good = _service(
        {"image": IMAGE, "model": MODEL, "draResources": [{"claimCreationSpec": {"devices": [{"name": "gpu"}]}}]}
    )
    good["metadata"]["generation"] = 2
    applied = reconciler.reconcile(good)
    assert applied.status.state == "Pending"
    assert applied.applied[0].startswith("Deployment/")
    assert any(a.startswith("ResourceClaimTemplate/llama-claim-0-") for a in applied.applied)
    container = _deployment(kube)["spec"]["template"]["spec"]["containers"][0]
    assert c.ENV_MODEL_PROFILE not in {e["name"] for e in container["env"]}, "the user's claim picks the GPUs"
    assert applied.status.profile is not None
    assert "spec.draResources chooses the devices" in applied.status.profile.reason


def test_a_changed_claim_spec_replaces_its_template() -> None:
    reconciler, kube, _ = _reconciler()
    kube.objects[DEVICE_CLASS_PATH] = dra_slices.device_class()

    def service(memory: str, generation: int) -> dict[str, Any]:
        device = {"name": "gpu", "capacitySelectors": [{"key": "memory", "op": "GreaterThanOrEqual", "value": memory}]}
        body = _service(
            {"image": IMAGE, "model": MODEL, "draResources": [{"claimCreationSpec": {"devices": [device]}}]}
        )
        body["metadata"]["generation"] = generation
        return body

    first = reconciler.reconcile(service("40Gi", 1))
    (old,) = [a.split("/")[1] for a in first.applied if a.startswith("ResourceClaimTemplate/")]
    body = service("80Gi", 2)
    body["status"] = kube.status_writes[-1]
    second = reconciler.reconcile(body)
    (new,) = [a.split("/")[1] for a in second.applied if a.startswith("ResourceClaimTemplate/")]
    assert new != old
    assert second.deleted == [old]
    names = [p.rsplit("/", 1)[1] for p in kube.objects if "/resourceclaimtemplates/" in p]
    assert names == [new]
    pod = _deployment(kube)["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [{"name": "dra-0", "resourceClaimTemplateName": new}]


def test_status_says_which_fallback_each_pod_was_given() -> None:
    def claim(pod: str, request: str, pod_claim: str = "gpus") -> dict[str, Any]:
        return {
            "metadata": {
                "annotations": {"resource.kubernetes.io/pod-claim-name": pod_claim},
                "ownerReferences": [{"kind": "Pod", "name": pod}],
            },
            "status": {"allocation": {"devices": {"results": [{"request": request, "device": "gpu-0"}]}}},
        }

    claims = [
        claim("llama-a", "gpus/vllm-fp8-tp1-h100"),
        claim("llama-b", "gpus/vllm-fp8-tp1-l40s"),
        claim("llama-c", "gpus/vllm-fp8-tp1-h100"),
        claim("other-x", "gpus/vllm-fp8-tp1-h100"),
        claim("llama-d", "gpu", pod_claim="dra-0"),
        {"metadata": {"annotations": {"resource.kubernetes.io/pod-claim-name": "gpus"}}},
    ]
    counts = allocated_alternatives(claims, ["llama-a", "llama-b", "llama-c", "llama-d"])
    assert counts == {"vllm-fp8-tp1-h100": 2, "vllm-fp8-tp1-l40s": 1}
    assert describe_allocation(counts) == "allocated: vllm-fp8-tp1-h100 to 2 pods, vllm-fp8-tp1-l40s to 1 pod"
    assert describe_allocation({}) == ""
