"""Profile selection against the simulated cluster's node pools (the same shapes as tests/cluster)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nim_runtime.profiles import (
    NodeGpuFacts,
    ProfileError,
    ProfileSelector,
    find_manifest,
    gpu_matches,
    load_catalog,
    parse_manifest,
    select_local_profile,
    select_profile,
)


def _pool(prefix: str, count: int, product: str, gpus: int, memory: int) -> list[NodeGpuFacts]:
    return [NodeGpuFacts(f"{prefix}-{i}", product, gpus, memory) for i in range(count)]


CLUSTER = (
    _pool("h100", 2, "NVIDIA-H100-80GB-HBM3", 8, 81559)
    + _pool("l40s", 2, "NVIDIA-L40S", 4, 46068)
    + _pool("a10g", 1, "NVIDIA-A10G", 1, 23028)
    + [NodeGpuFacts("cpu-0")]
)
LLAMA_8B = find_manifest("meta/llama-3.1-8b-instruct")
LLAMA_70B = find_manifest("meta/llama-3.1-70b-instruct")
SMOL = find_manifest("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_catalog_has_the_issue_models() -> None:
    assert set(load_catalog()) >= {
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
        "meta/llama-3.1-8b-instruct",
        "meta/llama-3.1-70b-instruct",
    }
    assert find_manifest("META/LLAMA-3.1-8B-INSTRUCT") is LLAMA_8B
    assert find_manifest("no/such-model") is None


def test_profiles_import_without_vllm() -> None:
    code = "import sys, nim_runtime.profiles; assert 'vllm' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_catalog_claims_no_other_vendors_image() -> None:
    """Our ids go only into our runtime: no catalog entry names an image (NVIDIA's NIM images accept
    only their own manifest's ids, which the operator reads from the image)."""
    assert all("images" not in m.model_dump() for m in load_catalog().values())
    for manifest in load_catalog().values():
        assert all(p.source_tags == () for p in manifest.profiles)


@pytest.mark.parametrize(
    ("family", "product", "expected"),
    [
        ("H100", "NVIDIA-H100-80GB-HBM3", True),
        ("L40S", "NVIDIA-L40S", True),
        ("A10G", "NVIDIA-A10G", True),
        ("A10", "NVIDIA-A100-SXM4-80GB", False),
        ("H100", "NVIDIA-H200", False),
        ("H100_NVL", "NVIDIA-H100-NVL", True),
        ("H100_NVL", "NVIDIA-H100-80GB-HBM3", False),
        ("H100", "NVIDIA-H100-NVL", True),
        ("A100_SXM4_40GB", "NVIDIA-A100-SXM4-40GB", True),
        ("A100_SXM4_40GB", "NVIDIA-A100-SXM4-80GB", False),
        ("L40", "NVIDIA-L40S", False),
        ("NVIDIA-L40S", "NVIDIA-L40S", True),
    ],
)
def test_gpu_family_matching_is_by_token(family: str, product: str, expected: bool) -> None:
    assert gpu_matches(family, product) is expected


def test_hardware_specific_low_precision_wins() -> None:
    assert LLAMA_8B is not None
    assert LLAMA_70B is not None
    decision = select_profile(LLAMA_8B, CLUSTER)
    assert decision.profile.id == "vllm-fp8-tp1-h100"
    assert decision.gpu_products == ("NVIDIA-H100-80GB-HBM3",)
    assert decision.nodes == ("h100-0", "h100-1")
    assert select_profile(LLAMA_70B, CLUSTER).profile.id == "vllm-fp8-tp4-h100"


def test_every_other_profile_is_rejected_with_a_reason() -> None:
    assert LLAMA_70B is not None
    decision = select_profile(LLAMA_70B, CLUSTER)
    reasons = {r.id: r.why for r in decision.rejected}
    assert set(reasons) == set(LLAMA_70B.profile_ids) - {"vllm-fp8-tp4-h100"}
    assert "has 4 GPU(s), needs 8" in reasons["vllm-bf16-tp8-l40s"]
    assert reasons["vllm-bf16-tp4-h100"] == "feasible, ranked below vllm-fp8-tp4-h100"


def test_selector_constrains_choice() -> None:
    assert LLAMA_8B is not None
    l40s = select_profile(LLAMA_8B, CLUSTER, selector=ProfileSelector(gpu_products=("NVIDIA-L40S",)))
    assert l40s.profile.id == "vllm-fp8-tp1-l40s"
    assert l40s.nodes == ("l40s-0", "l40s-1")
    bf16 = select_profile(LLAMA_8B, CLUSTER, selector=ProfileSelector(precision="bf16"))
    assert bf16.profile.id == "vllm-bf16-tp1-h100"
    latency = select_profile(LLAMA_8B, CLUSTER, selector=ProfileSelector(qos_profile="latency"))
    assert latency.profile.id == "vllm-fp8-tp2-h100-latency"
    lora = select_profile(LLAMA_8B, CLUSTER, selector=ProfileSelector(lora=True))
    assert lora.profile.id == "vllm-bf16-tp1-lora"


def test_memory_and_gpu_count_rule_out_small_nodes() -> None:
    assert LLAMA_8B is not None
    a10g_only = _pool("a10g", 1, "NVIDIA-A10G", 1, 23028)
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA_8B, a10g_only)
    message = str(err.value)
    # The KV cache of one 131072-token sequence alone is 16 GiB in bf16: 24 GiB GPUs cannot start it.
    assert "vllm-bf16-tp1: no node can run it: NVIDIA-A10G has 23028 MiB per GPU, needs 37498 MiB per GPU" in message
    assert "16384 KV cache at 131072 tokens" in message
    assert "vllm-bf16-tp2-a10g: no node can run it: NVIDIA-A10G has 1 GPU(s), needs 2" in message
    assert len(err.value.rejected) == len(LLAMA_8B.profiles)


def test_selector_pinning_absent_product_keeps_profile_for_autoscaler() -> None:
    assert LLAMA_8B is not None
    cpu_only = [NodeGpuFacts("cpu-0")]
    decision = select_profile(LLAMA_8B, cpu_only, selector=ProfileSelector(gpu_products=("NVIDIA-H100-80GB-HBM3",)))
    assert decision.profile.id == "vllm-fp8-tp1-h100"
    assert decision.nodes == ()
    assert decision.gpu_products == ("NVIDIA-H100-80GB-HBM3",)
    assert "cluster autoscaler" in decision.reason


def test_previous_decision_sticks_while_feasible() -> None:
    assert LLAMA_8B is not None
    kept = select_profile(LLAMA_8B, CLUSTER, previous="vllm-fp8-tp1-l40s")
    assert kept.profile.id == "vllm-fp8-tp1-l40s"
    assert "kept the earlier decision" in kept.reason
    assert "vllm-fp8-tp1-h100 would rank first" in kept.reason
    # Keeping the best profile reads exactly like choosing it afresh.
    assert select_profile(LLAMA_8B, CLUSTER, previous="vllm-fp8-tp1-h100") == select_profile(LLAMA_8B, CLUSTER)
    no_l40s = [n for n in CLUSTER if not n.name.startswith("l40s")]
    assert select_profile(LLAMA_8B, no_l40s, previous="vllm-fp8-tp1-l40s").profile.id == "vllm-fp8-tp1-h100"


def test_pinned_profile_and_unknown_pin() -> None:
    assert LLAMA_8B is not None
    pinned = select_profile(LLAMA_8B, CLUSTER, pinned="vllm-bf16-tp2-a10g")
    assert pinned.profile.id == "vllm-bf16-tp2-a10g"
    assert pinned.nodes == ()
    assert "stay Pending" in pinned.reason
    with pytest.raises(ProfileError, match="valid profiles: vllm-fp8-tp1-h100"):
        select_profile(LLAMA_8B, CLUSTER, pinned="vllm-typo")


def test_cpu_profile_only_on_gpu_less_nodes() -> None:
    assert SMOL is not None
    decision = select_profile(SMOL, [NodeGpuFacts("cpu-0")])
    assert decision.profile.device == "cpu"
    assert decision.gpu_products == ()
    gpu_decision = select_profile(SMOL, CLUSTER)
    assert gpu_decision.profile.id == "vllm-bf16-tp1"


def test_selection_is_deterministic_under_node_order() -> None:
    assert LLAMA_70B is not None
    assert select_profile(LLAMA_70B, CLUSTER) == select_profile(LLAMA_70B, list(reversed(CLUSTER)))


def test_local_profile_without_gpus_is_cpu_and_typo_lists_valid_ids() -> None:
    assert SMOL is not None
    assert select_local_profile(SMOL, None).id == "vllm-cpu-bf16"
    with pytest.raises(ProfileError, match="valid profiles: vllm-bf16-tp1, vllm-cpu-bf16"):
        select_local_profile(SMOL, "nope")


def test_bad_manifest_names_the_field() -> None:
    with pytest.raises(ValueError, match="precision"):
        parse_manifest(
            "name: x\nsource: hf://x/y\nmax_model_len: 10\nlicense: mit\nprofiles:\n- {id: a, precision: fp7}"
        )
    with pytest.raises(ValueError, match="appears twice"):
        parse_manifest(
            "name: x\nsource: hf://x/y\nmax_model_len: 10\nlicense: mit\n"
            "profiles:\n- {id: a, precision: fp8}\n- {id: a, precision: bf16}"
        )


def test_decision_text_does_not_change_when_a_node_of_a_known_product_joins() -> None:
    assert LLAMA_8B is not None
    one = _pool("a10g", 1, "NVIDIA-A10G", 1, 23028) + _pool("h100", 1, "NVIDIA-H100-80GB-HBM3", 8, 81559)
    more = _pool("a10g", 3, "NVIDIA-A10G", 1, 23028) + _pool("h100", 2, "NVIDIA-H100-80GB-HBM3", 8, 81559)
    before, after = select_profile(LLAMA_8B, one), select_profile(LLAMA_8B, more)
    # Status is written from these; node names or counts in them would rewrite every status on each join.
    assert before.reason == after.reason
    assert before.rejected == after.rejected
    assert before.nodes != after.nodes
