"""Selection over now and after a scale-up, and what the hardware allows (pure functions, no cluster)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nim_operator import constants as c
from nim_operator.api.spec import NIMServiceSpec
from nim_operator.placement import decide, placement_of, pool_terms, profile_status
from nim_operator.render import Owner, render_deployment
from nim_runtime.config import RuntimeConfig
from nim_runtime.plan import ServingPlan, engine_argv
from nim_runtime.profiles import NodeGpuFacts, Profile, ProfileError, ScaleUpOption, find_manifest, select_profile

LLAMA_8B = find_manifest("meta/llama-3.1-8b-instruct")
LLAMA_70B = find_manifest("meta/llama-3.1-70b-instruct")
assert LLAMA_8B is not None
assert LLAMA_70B is not None
H100 = NodeGpuFacts("h100-0", "NVIDIA-H100-80GB-HBM3", 8, 81559, compute=(9, 0))
L40S = NodeGpuFacts("l40s-0", "NVIDIA-L40S", 4, 46068)
A10G = NodeGpuFacts("a10g-0", "NVIDIA-A10G", 1, 23028)
A100_POOL = ScaleUpOption(
    "gpu-a100",
    "NVIDIA-A100-SXM4-80GB",
    8,
    81920,
    (8, 0),
    requirements=(
        ("karpenter.sh/nodepool", "In", ("gpu-a100",)),
        ("karpenter.k8s.aws/instance-gpu-name", "In", ("a100",)),
    ),
)
H100_POOL = ScaleUpOption(
    "gpu-h100",
    "NVIDIA-H100-80GB-HBM3",
    8,
    81559,
    (9, 0),
    requirements=(("karpenter.sh/nodepool", "In", ("gpu-h100",)),),
)


def test_pools_at_zero_make_gpu_profiles_feasible() -> None:
    # No GPU node at all: before, every GPU profile was rejected and the service Failed.
    decision = select_profile(LLAMA_8B, [NodeGpuFacts("cpu-0")], capacity=[H100_POOL])
    assert decision.profile.id == "vllm-fp8-tp1-h100"
    assert decision.availability == "scale-up"
    assert decision.reason.startswith("vllm-fp8-tp1-h100: after scale-up via NodePool gpu-h100 (NVIDIA-H100-80GB-HBM3)")
    assert decision.gpu_products == ("NVIDIA-H100-80GB-HBM3",)
    assert decision.pools == (H100_POOL,)


def test_runnable_now_wins_over_the_same_profile_after_a_scale_up() -> None:
    smol = find_manifest("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert smol is not None
    decision = select_profile(smol, [L40S], capacity=[A100_POOL])
    assert (decision.profile.id, decision.availability) == ("vllm-bf16-tp1", "now")
    assert decision.reason.startswith("vllm-bf16-tp1: runnable now on NVIDIA-L40S")
    # The pool stays in the pods' affinity: a scale-out beyond the L40S's GPUs gets an A100 node.
    assert decision.pools == (A100_POOL,)
    assert decision.gpu_products == ("NVIDIA-A100-SXM4-80GB", "NVIDIA-L40S")


def test_a_better_profile_after_a_scale_up_wins_over_a_worse_one_now() -> None:
    # Only the A10G is here: its profile is hardware-specific bf16 tp2 (needs 2 GPUs: not now). An H100 pool
    # offers the fp8 profile, which ranks higher than anything the cluster can run now.
    decision = select_profile(LLAMA_8B, [A10G], capacity=[H100_POOL])
    assert (decision.profile.id, decision.availability) == ("vllm-fp8-tp1-h100", "scale-up")


def test_free_gpus_steer_a_new_service_to_the_product_with_room() -> None:
    taken = replace(H100, free_gpus=0)
    decision = select_profile(LLAMA_8B, [taken, L40S])
    assert (decision.profile.id, decision.availability) == ("vllm-fp8-tp1-l40s", "now")
    # Nothing free anywhere: the best profile still waits for GPUs to free up, and says so.
    waiting = select_profile(LLAMA_8B, [taken])
    assert (waiting.profile.id, waiting.availability) == ("vllm-fp8-tp1-h100", "busy")
    assert "once their GPUs free up" in waiting.reason
    # A pool that can add a node beats waiting.
    assert select_profile(LLAMA_8B, [taken], capacity=[H100_POOL]).availability == "scale-up"


def test_previous_decision_sticks_when_gpus_are_taken() -> None:
    taken = replace(H100, free_gpus=0)
    kept = select_profile(LLAMA_8B, [taken, L40S], previous="vllm-fp8-tp1-h100")
    assert kept.profile.id == "vllm-fp8-tp1-h100"


def test_compute_capability_per_precision() -> None:
    v100 = NodeGpuFacts("v100-0", "Tesla-V100-SXM2-16GB", 8, 16384)
    a100 = NodeGpuFacts("a100-0", "NVIDIA-A100-SXM4-80GB", 8, 81920, compute=(8, 0))
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA_8B, [v100])
    assert "Tesla-V100-SXM2-16GB is compute capability 7.0, bf16 needs 8.0 or newer" in str(err.value)
    # fp8 needs 8.9: an A100 runs the generic bf16 profile, not an fp8 one.
    decision = select_profile(LLAMA_70B, [a100])
    assert decision.profile.precision == "bf16"
    assert decision.profile.id == "vllm-bf16-tp4"


def test_time_sliced_gpus_run_tp1_profiles_sized_by_the_slice() -> None:
    # A shared A100-80GB in 4 time slices: allocatable says 32, but each slice has 20 GiB.
    shared = NodeGpuFacts("a100-s", "NVIDIA-A100-SXM4-80GB-SHARED", 32, 81920, replicas=4)
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA_70B, [shared])
    message = str(err.value)
    assert "offers time-sliced GPUs, which run only tp=1 profiles (needs 4 GPUs)" in message
    smol = find_manifest("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert smol is not None
    assert select_profile(smol, [shared]).profile.id == "vllm-bf16-tp1"
    # Llama 8B fp8 would fit 20 GiB, but an A100 (8.0) cannot run fp8; bf16 needs more than a slice.
    with pytest.raises(ProfileError, match="has 20480 MiB per GPU"):
        select_profile(LLAMA_8B, [shared])


def test_mig_slices_are_tp1_and_their_own_memory() -> None:
    mig = NodeGpuFacts("mig-0", "NVIDIA-A100-SXM4-80GB-MIG-3g.40gb", 2, 40192, compute=(8, 0), mig=True)
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA_70B, [mig])
    assert "offers MIG slices, which run only tp=1 profiles" in str(err.value)
    assert select_profile(LLAMA_8B, [mig]).profile.id == "vllm-bf16-tp1"


def test_kv_cache_at_the_context_length_and_the_context_cap() -> None:
    a10g_pair = NodeGpuFacts("a10g-2", "NVIDIA-A10G", 2, 23028)
    # bf16 tp1 at 131072 tokens needs ~37 GiB; the L40S (45 GiB) runs it, the A10G (22.5 GiB) does not.
    pinned = select_profile(LLAMA_8B, [L40S], pinned="vllm-bf16-tp1")
    assert pinned.nodes == ("l40s-0",)
    assert select_profile(LLAMA_8B, [a10g_pair]).profile.id == "vllm-bf16-tp2-a10g"
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA_8B, [A10G], selector=None)
    assert "needs 37498 MiB per GPU (15316 weights + 16384 KV cache at 131072 tokens" in str(err.value)


def test_no_profile_fits_names_the_pool_limit() -> None:
    blocked = replace(A100_POOL, blocked="limits nvidia.com/gpu: 4 is below one node (8 GPUs): raise spec.limits")
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA_70B, [NodeGpuFacts("cpu-0")], capacity=[blocked])
    message = str(err.value)
    assert message.startswith("no profile of meta/llama-3.1-70b-instruct fits this cluster, now or after a scale-up")
    assert "NodePool gpu-a100 limits nvidia.com/gpu: 4 is below one node (8 GPUs)" in message


def test_a_blocked_pool_still_shapes_the_affinity_so_a_limit_never_rewrites_pods() -> None:
    at_limit = replace(A100_POOL, blocked="is at its limit nvidia.com/gpu: 16")
    a100 = NodeGpuFacts("a100-0", "NVIDIA-A100-SXM4-80GB", 8, 81920, compute=(8, 0))
    free, full = (
        select_profile(LLAMA_70B, [a100], capacity=[A100_POOL]),
        select_profile(LLAMA_70B, [a100], capacity=[at_limit]),
    )
    assert free.profile == full.profile
    assert free.gpu_products == full.gpu_products
    assert {p.requirements for p in free.pools} == {p.requirements for p in full.pools}


def test_selector_family_matches_real_products() -> None:
    spec = NIMServiceSpec.model_validate(
        {
            "image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1"},
            "profileSelector": {"gpus": [{"product": "H100"}]},
        }
    )
    decision = decide(spec, LLAMA_8B, [NodeGpuFacts("cpu-0")], previous=None)
    # Before, the affinity said "nvidia.com/gpu.product In [H100]", which no node carries.
    assert decision.availability == "waiting"
    assert decision.gpu_products == ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-NVL")


def _render(spec_fields: dict[str, Any], nodes: list[NodeGpuFacts], pools: list[ScaleUpOption]) -> dict[str, Any]:
    spec = NIMServiceSpec.model_validate(
        {"image": {"repository": "nvcr.io/nim/meta/llama-3.1-70b-instruct", "tag": "1"}, **spec_fields}
    )
    decision = decide(spec, LLAMA_70B, nodes, previous=None, capacity=pools)
    pod: dict[str, Any] = render_deployment(Owner("l", "ns", "u"), spec, placement_of(spec, LLAMA_70B, decision))
    return pod


def test_scale_up_pods_carry_terms_the_provisioner_understands_first() -> None:
    deployment = _render({}, [NodeGpuFacts("cpu-0")], [A100_POOL])
    pod = deployment["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["gpu-a100"]},
                {"key": "karpenter.k8s.aws/instance-gpu-name", "operator": "In", "values": ["a100"]},
            ]
        },
        {"matchExpressions": [{"key": c.GPU_PRODUCT_LABEL, "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}]},
    ]
    assert pod["containers"][0]["resources"]["limits"][c.GPU_RESOURCE] == "4"
    assert deployment["spec"]["progressDeadlineSeconds"] == c.PROGRESS_DEADLINE_SECONDS
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {c.DO_NOT_DISRUPT_ANNOTATION: "true"}


def test_a_users_do_not_disrupt_is_theirs() -> None:
    deployment = _render({"annotations": {c.DO_NOT_DISRUPT_ANNOTATION: "false"}}, [H100], [])
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {c.DO_NOT_DISRUPT_ANNOTATION: "false"}


def test_status_says_where_and_names_pools_not_counts() -> None:
    one = select_profile(LLAMA_70B, [NodeGpuFacts("cpu-0")], capacity=[A100_POOL])
    two = select_profile(LLAMA_70B, [NodeGpuFacts("cpu-0"), NodeGpuFacts("cpu-1")], capacity=[A100_POOL, A100_POOL])
    status = profile_status(one)
    assert (status.placement, status.node_pools) == ("AfterScaleUp", ["NodePool gpu-a100"])
    assert one.reason == two.reason


def test_pool_terms_put_the_smallest_fitting_node_first() -> None:
    smol = find_manifest("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert smol is not None
    a10g_pool = ScaleUpOption(
        "gpu-a10g", "NVIDIA-A10G", 1, 23028, (8, 6), requirements=(("karpenter.sh/nodepool", "In", ("gpu-a10g",)),)
    )
    decision = select_profile(smol, [NodeGpuFacts("cpu-0")], capacity=[A100_POOL, H100_POOL, a10g_pool])
    # Karpenter provisions for the first term: a tiny model must not get an eight-A100 node.
    assert [term[0][2] for term in pool_terms(decision)] == [("gpu-a10g",), ("gpu-h100",), ("gpu-a100",)]


def test_a_profile_context_cap_sizes_the_kv_cache_and_reaches_the_engine(tmp_path: Path) -> None:
    # A 24 GiB profile of Llama 8B that serves 16k tokens: weights plus a 2 GiB cache fit an A10G.
    capped = LLAMA_8B.model_copy(
        update={
            "profiles": (
                Profile(id="vllm-bf16-tp1-a10g-16k", precision="bf16", gpu="A10G", max_model_len=16384),
                *LLAMA_8B.profiles,
            )
        }
    )
    decision = select_profile(capped, [A10G])
    assert decision.profile.id == "vllm-bf16-tp1-a10g-16k"
    plan = ServingPlan(manifest=capped, profile=decision.profile, served_names=("llama",), source="hf://x")
    argv = engine_argv(plan, RuntimeConfig(), tmp_path)
    assert argv[argv.index("--max-model-len") + 1] == "16384"


def test_a_pool_added_later_does_not_rewrite_a_running_service() -> None:
    smol = find_manifest("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert smol is not None
    first = select_profile(smol, [L40S], capacity=[H100_POOL])
    status = profile_status(first)
    assert (status.placement, status.node_pools) == ("Now", ["NodePool gpu-h100"])
    later = select_profile(
        smol, [L40S], capacity=[H100_POOL, A100_POOL], previous=first.profile.id, previous_pools=status.node_pools
    )
    assert (later.pools, later.gpu_products) == (first.pools, first.gpu_products)
    # A new service (no earlier decision) may use the new pool.
    assert A100_POOL in select_profile(smol, [L40S], capacity=[H100_POOL, A100_POOL]).pools
