"""Multi-node NIMServices: the group's shape from the profile and the nodes, and the LeaderWorkerSet."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nim_operator import constants as c
from nim_operator.api.multinode import MultiNode
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.group_layout import NO_POOL_REASON, SHAPE_REASON, GroupError, GroupLayout, layout, pooled_facts
from nim_operator.placement import decide, placement_of
from nim_operator.render import Owner, render_children
from nim_operator.render.lws import lws_name, readiness_view, render_leader_worker_set
from nim_runtime.profiles import NodeGpuFacts, ProfileError, find_manifest
from tests.unit.nim_manifests import kept_answer
from tests.unit.test_dra import _reconciler as listing_reconciler
from tests.unit.test_reconciler_pod_events import SERVICE, _reconciler

OWNER = Owner("llama", "team-a", "uid-1")
H100 = [NodeGpuFacts(f"h100-{i}", "NVIDIA-H100-80GB-HBM3", 8, 81559) for i in range(2)]
L40S = [NodeGpuFacts(f"l40s-{i}", "NVIDIA-L40S", 4, 46068) for i in range(2)]
A10G = [NodeGpuFacts("a10g-0", "NVIDIA-A10G", 1, 23028)]
IMAGE_70B = {"repository": "nvcr.io/nim/meta/llama-3.1-70b-instruct", "tag": "1.3"}
DEEPSEEK = {"repository": "nvcr.io/nim/deepseek-ai/deepseek-r1", "tag": "1.7.3"}


def _multi(**parallelism: int) -> MultiNode:
    return MultiNode.model_validate({"parallelism": parallelism})


def _spec(image: dict[str, str] = IMAGE_70B, **fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": image, "multiNode": {"parallelism": {}}, **fields})


def test_a_profile_larger_than_any_node_is_runnable_on_a_pool() -> None:
    """70B in bf16 over 8 GPUs: no L40S node has 8, two of them together do."""
    manifest = find_manifest("meta/llama-3.1-70b-instruct")
    assert manifest is not None
    spec = _spec(profileSelector={"tensorParallelism": 8})
    with pytest.raises(ProfileError, match="has 4 GPU"):
        decide(spec, manifest, L40S, previous=None)
    pools = pooled_facts([*L40S, NodeGpuFacts("cpu-0")])
    assert [(p.product, p.gpus, p.memory_mib) for p in pools] == [(None, 0, None), ("NVIDIA-L40S", 8, 46068)]
    decision = decide(spec, manifest, pools, previous=None)
    assert decision.profile.gpus == 8
    assert decision.gpu_products == ("NVIDIA-L40S",)


def test_group_takes_as_many_gpus_per_pod_as_a_node_holds() -> None:
    manifest = find_manifest("meta/llama-3.1-70b-instruct")
    assert manifest is not None
    tp8 = manifest.profile("vllm-bf16-tp8-l40s")
    assert tp8 is not None
    on_l40s = layout(_multi(), tp8, L40S + H100, products=("NVIDIA-L40S",))
    assert on_l40s == GroupLayout(size=2, gpus_per_pod=4, tensor=8, pipeline=1, product="NVIDIA-L40S")
    generic = manifest.profile("vllm-bf16-tp8")
    assert generic is not None
    # Both products can hold it: the one that needs the fewest pods (whole groups on one node) wins.
    both = layout(_multi(), generic, L40S + H100, products=("NVIDIA-H100-80GB-HBM3", "NVIDIA-L40S"))
    assert (both.size, both.gpus_per_pod, both.product) == (1, 8, "NVIDIA-H100-80GB-HBM3")
    assert both.describe() == "groups of 1 pod x 8 GPU(s) of NVIDIA-H100-80GB-HBM3"


def test_nvidia_shape_without_a_known_profile() -> None:
    """NVIDIA's sample: tensor 8 GPUs per pod, pipeline 2 pods, an image whose profiles we do not know."""
    group = layout(_multi(tensor=8, pipeline=2), None, H100 + L40S, user_gpus=8)
    assert (group.size, group.gpus_per_pod, group.tensor, group.pipeline, group.product) == (2, 8, 8, 2, None)


def test_a_group_no_pool_holds_names_the_field_and_the_fix() -> None:
    with pytest.raises(GroupError) as err:
        layout(_multi(tensor=8, pipeline=3), None, H100 + L40S + A10G)
    assert err.value.reason == NO_POOL_REASON
    message = str(err.value)
    assert message.startswith("spec.multiNode: a group of 3 pod(s) with 8 GPU(s) each needs 3 node(s)")
    assert "NVIDIA-H100-80GB-HBM3: 2 node(s) with 8 GPU(s)" in message
    assert "lower spec.multiNode.parallelism.pipeline" in message


def test_a_shape_that_contradicts_the_profile_is_refused() -> None:
    manifest = find_manifest("meta/llama-3.1-70b-instruct")
    assert manifest is not None
    tp4 = manifest.profile("vllm-fp8-tp4-h100")
    with pytest.raises(GroupError) as err:
        layout(_multi(tensor=8, pipeline=2), tp4, H100)
    assert err.value.reason == SHAPE_REASON
    assert "spec.multiNode.parallelism: 8 GPU(s) per pod x pipeline 2 is 16 GPUs" in str(err.value)
    with pytest.raises(GroupError, match=r"parallelism.pipeline: 3 does not divide"):
        layout(_multi(pipeline=3), tp4, H100)
    with pytest.raises(GroupError, match=r"parallelism.tensor: no profile of this image is known"):
        layout(_multi(), None, H100)


def test_nodes_pinned_for_the_autoscaler_are_not_checked() -> None:
    manifest = find_manifest("meta/llama-3.1-70b-instruct")
    assert manifest is not None
    group = layout(_multi(pipeline=2), manifest.profile("vllm-bf16-tp8-h100"), [], waiting_for_nodes=True)
    assert (group.size, group.gpus_per_pod) == (2, 4)


def _lws(spec: NIMServiceSpec, nodes: list[NodeGpuFacts]) -> tuple[dict[str, Any], GroupLayout]:
    manifest = find_manifest("meta/llama-3.1-70b-instruct")
    assert manifest is not None
    decision = decide(spec, manifest, pooled_facts(nodes), previous=None)
    placement = placement_of(spec, manifest, decision)
    group = layout(spec.multi_node or _multi(), placement.profile, nodes, products=placement.gpu_products)
    return render_leader_worker_set(OWNER, spec, placement, group), group


def _env(template: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in template["spec"]["containers"][0]["env"]}


def test_leader_worker_set_groups_pods_on_one_product() -> None:
    spec = _spec(profile="vllm-bf16-tp8-l40s", replicas=2, env=[{"name": "NIM_NODE_RANK", "value": "7"}])
    body, group = _lws(spec, L40S + H100)
    assert (body["apiVersion"], body["kind"], body["metadata"]["name"]) == (
        "leaderworkerset.x-k8s.io/v1",
        "LeaderWorkerSet",
        "llama-lws",
    )
    lws = body["spec"]
    assert lws["replicas"] == 2
    assert lws["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxUnavailable": 1, "maxSurge": 0}
    template = lws["leaderWorkerTemplate"]
    assert (template["size"], template["restartPolicy"]) == (2, "RecreateGroupOnPodRestart")
    leader, worker = template["leaderTemplate"], template["workerTemplate"]
    assert leader["metadata"]["labels"][c.LABEL_ROLE] == "leader"
    assert worker["metadata"]["labels"][c.LABEL_ROLE] == "worker"
    for pod in (leader, worker):
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"][c.GPU_RESOURCE] == "4", "GPUs per pod, not per replica"
        term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["NVIDIA-L40S"]
        env = _env(pod)
        assert env[c.ENV_MODEL_PROFILE] == "vllm-bf16-tp8-l40s"
        assert (env["NIM_MULTI_NODE"], env["NIM_NUM_COMPUTE_NODES"], env["NIM_TENSOR_PARALLEL_SIZE"]) == ("1", "2", "8")
        assert env["NIM_NODE_RANK"] == "7", "the user's env wins over the operator's"
    assert "readinessProbe" in leader["spec"]["containers"][0]
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(worker["spec"]["containers"][0])
    assert _env(leader)["NIM_LEADER_ROLE"] == "1"
    assert _env(worker)["NIM_LEADER_ROLE"] == "0"
    assert _env(leader)["CLUSTER_SIZE"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['leaderworkerset.sigs.k8s.io/size']"}
    }
    assert _env(worker)["LEADER_NAME"]["fieldRef"]["fieldPath"].endswith("['leaderworkerset.sigs.k8s.io/leader-name']")
    assert group.gpus == 8


def test_ray_backend_starts_the_group_with_nvidias_arguments() -> None:
    spec = _spec(profile="vllm-bf16-tp8-l40s", multiNode={"parallelism": {}, "ray": {"rayPort": 6380}})
    body, _ = _lws(spec, L40S)
    template = body["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    assert leader["args"] == ["nim-serve-ray", "--head", "--port", "6380"]
    assert worker["args"] == ["nim-serve-ray", "--head-address", "$(LWS_LEADER_ADDRESS):6380"]
    assert {"name": "ray", "containerPort": 6380, "protocol": "TCP"} in leader["ports"]
    assert "CLUSTER_START_TIMEOUT" not in _env(template["leaderTemplate"])


def test_children_swap_the_deployment_for_the_group_and_serve_leaders_only() -> None:
    spec = _spec(profile="vllm-bf16-tp8-l40s")
    manifest = find_manifest("meta/llama-3.1-70b-instruct")
    assert manifest is not None
    placement = placement_of(spec, manifest, decide(spec, manifest, pooled_facts(L40S), previous=None))
    group = layout(spec.multi_node or _multi(), placement.profile, L40S, products=placement.gpu_products)
    children = {(ch.kind, ch.name): ch.body for ch in render_children(OWNER, spec, placement, group=group)}
    assert children[("Deployment", "llama")] is None, "a multi-node service has no Deployment"
    assert children[("LeaderWorkerSet", lws_name(OWNER))] is not None
    service = children[("Service", "llama")]
    assert service is not None
    assert service["spec"]["selector"][c.LABEL_ROLE] == "leader"
    single = NIMServiceSpec.model_validate({"image": IMAGE_70B})
    plain = {(ch.kind, ch.name): ch.body for ch in render_children(OWNER, single, placement)}
    assert plain[("LeaderWorkerSet", "llama-lws")] is None
    assert plain[("Deployment", "llama")] is not None


def test_readiness_view_reads_the_groups() -> None:
    lws = {
        "metadata": {"generation": 3},
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 1, "replicas": 2, "updatedReplicas": 2, "observedGeneration": 3},
    }
    view = readiness_view(lws)
    assert view is not None
    assert view["status"] == {"availableReplicas": 1, "replicas": 2, "updatedReplicas": 2, "observedGeneration": 3}
    assert readiness_view(None) is None


def test_reconciler_applies_a_group_and_fails_one_no_pool_holds() -> None:
    reconciler, kube, _ = _reconciler()
    path, answer = kept_answer("team-a", "nvcr.io/nim/deepseek-ai/deepseek-r1:1.7.3")  # no manifest: NVIDIA's layout
    kube.objects[path] = answer
    for node in H100:
        reconciler.nodes[node.name] = node
    body = copy.deepcopy(SERVICE)
    body["spec"] = {"image": DEEPSEEK, "multiNode": {"parallelism": {"tensor": 8, "pipeline": 2}}}
    outcome = reconciler.reconcile(body)
    assert "LeaderWorkerSet/llama-lws" in outcome.applied
    assert not any(a.startswith("Deployment/") for a in outcome.applied)
    assert outcome.status.state == "Pending"
    lws = kube.objects["/apis/leaderworkerset.x-k8s.io/v1/namespaces/team-a/leaderworkersets/llama-lws"]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    body["metadata"]["generation"] = 2
    body["spec"]["multiNode"]["parallelism"]["pipeline"] = 3
    failed = reconciler.reconcile(body)
    assert failed.status.state == "Failed"
    condition = next(c for c in failed.status.conditions if c.type == "Failed")
    assert condition.reason == NO_POOL_REASON
    assert "spec.multiNode: a group of 3 pod(s)" in condition.message
    assert failed.applied == [], "nothing is applied for a group that cannot be placed"


def test_a_group_with_dra_claims_takes_its_devices_from_them() -> None:
    reconciler, kube, _ = listing_reconciler()
    path, answer = kept_answer("team-a", "nvcr.io/nim/deepseek-ai/deepseek-r1:1.7.3")
    kube.objects[path] = answer
    kube.objects["/apis/resource.k8s.io/v1/deviceclasses/gpu.nvidia.com"] = {"metadata": {"name": "gpu.nvidia.com"}}
    for node in H100:
        reconciler.nodes[node.name] = node
    body = copy.deepcopy(SERVICE)
    device = {"name": "gpu", "count": 8}
    body["spec"] = {
        "image": DEEPSEEK,
        "multiNode": {"parallelism": {"pipeline": 2}},
        "draResources": [{"claimCreationSpec": {"devices": [device]}}],
    }
    outcome = reconciler.reconcile(body)
    assert outcome.status.state == "Pending", outcome.status.conditions
    lws = kube.objects["/apis/leaderworkerset.x-k8s.io/v1/namespaces/team-a/leaderworkersets/llama-lws"]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    for role in ("leaderTemplate", "workerTemplate"):
        pod = template[role]["spec"]
        assert pod["resourceClaims"][0]["name"] == "dra-0"
        assert c.GPU_RESOURCE not in pod["containers"][0]["resources"].get("limits", {})
