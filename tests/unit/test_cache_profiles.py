"""Which profiles an NGC NIMCache fetches: the ones placement would run, not every GPU profile."""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator.api.nimcache import CachedProfile, ModelSelector, NIMCacheSpec, NIMCacheStatus
from nim_operator.cache_profiles import choose_cache_profiles, ngc_profiles
from nim_operator.discovery import Known, Probing, Unknown
from nim_operator.render.cache import PULLER as PULLER_CONTAINER
from nim_operator.render.cache import Cache, render_job
from nim_runtime.profiles import (
    NodeGpuFacts,
    ProfileError,
    RuntimeListing,
    ScaleUpOption,
    catalog_listing,
    parse_nim_manifest,
)
from tests.unit.nim_manifests import IDS, LLAMA_8B_V2
from tests.unit.test_profiles import CLUSTER, _pool

PULLER = "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0"
LLAMA = parse_nim_manifest(LLAMA_8B_V2, fallback_name=PULLER)
CPU_ONLY = [NodeGpuFacts("cpu-0")]


def _ids(chosen: list[Any]) -> set[str]:
    return {c.profile.id for c in chosen}


def test_one_profile_per_gpu_product_of_the_cluster() -> None:
    chosen = choose_cache_profiles(LLAMA, None, CLUSTER)
    # What a NIMService would run on each product: TensorRT-LLM fp8 on H100 and L40S; on the one-GPU
    # A10G nodes the A10G engine needs two GPUs, so the generic vLLM bf16 profile.
    assert _ids(chosen) == {IDS["trt-h100-fp8-tp1"], IDS["trt-l40s-fp8-tp1"], IDS["vllm-bf16-tp1"]}
    why = {c.profile.id: c.why for c in chosen}
    assert why[IDS["trt-h100-fp8-tp1"]].startswith("for NVIDIA-H100-80GB-HBM3: ")
    assert len(chosen) < len(LLAMA.profiles)


def test_no_gpu_node_caches_nothing_and_says_what_to_set() -> None:
    with pytest.raises(ProfileError, match=r"no node of the cluster has GPUs.*spec.source.ngc.model.gpus"):
        choose_cache_profiles(LLAMA, None, CPU_ONLY)


def test_named_gpus_are_cached_for_even_before_such_a_node_exists() -> None:
    model = ModelSelector.model_validate({"gpus": [{"product": "H100_NVL"}, {"product": "NVIDIA-A10G"}]})
    chosen = choose_cache_profiles(LLAMA, model, CPU_ONLY)
    assert _ids(chosen) == {IDS["trt-h100nvl-fp8-tp1"], IDS["trt-a10g-bf16-tp2"]}
    assert all("cluster autoscaler" in c.why for c in chosen)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # NVIDIA's samples write engine "tensorrt" for tensorrt_llm.
        # (On the one-GPU A10G nodes only the buildable engine fits.)
        (
            {"engine": "tensorrt", "tensorParallelism": "1"},
            {"trt-h100-fp8-tp1", "trt-l40s-fp8-tp1", "trt-buildable-bf16-tp1"},
        ),
        ({"engine": "vllm"}, {"vllm-bf16-tp1"}),
        ({"precision": "bf16"}, {"trt-h100-bf16-tp1", "vllm-bf16-tp1"}),
        ({"qosProfile": "latency"}, {"trt-h100-fp8-tp2-latency"}),
        ({"lora": True}, {"vllm-bf16-tp1-lora"}),
        ({"buildable": True}, {"trt-buildable-bf16-tp1"}),
        ({"gpus": [{"product": "h100", "ids": ["2330"]}]}, {"trt-h100-fp8-tp1"}),
    ],
)
def test_nvidias_filters_narrow_the_manifest_first(model: dict[str, Any], expected: set[str]) -> None:
    chosen = choose_cache_profiles(LLAMA, ModelSelector.model_validate(model), CLUSTER)
    assert _ids(chosen) == {IDS[name] for name in expected}


def test_filters_that_leave_nothing_name_the_field() -> None:
    with pytest.raises(ProfileError, match=r"passes spec.source.ngc.model .*precision is int8"):
        choose_cache_profiles(LLAMA, ModelSelector(precision="int8"), CLUSTER)


def _spec(model: dict[str, Any] | None = None) -> NIMCacheSpec:
    ngc: dict[str, Any] = {"authSecret": "ngc-api-secret", "modelPuller": PULLER, "pullSecret": "ngc-secret"}
    if model is not None:
        ngc["model"] = model
    return NIMCacheSpec.model_validate(
        {"source": {"ngc": ngc}, "storage": {"pvc": {"create": True, "size": "50Gi", "storageClass": ""}}}
    )


def _never() -> Known:
    raise AssertionError("the image must not be asked")


def test_listed_profiles_are_fetched_as_given_without_asking_the_image() -> None:
    chosen = ngc_profiles(
        _spec({"profiles": ["abc", "def"]}), lookup=_never, nodes=CLUSTER, previous=None, generation=1
    )
    assert chosen.ids == ("abc", "def")
    assert [p.reason for p in chosen.cached] == ["listed in spec.source.ngc.model.profiles"] * 2


def test_the_choice_is_made_once_per_generation() -> None:
    chosen = ngc_profiles(_spec(), lookup=lambda: Known(PULLER, LLAMA), nodes=CLUSTER, previous=None, generation=1)
    assert set(chosen.ids or ()) == {IDS["trt-h100-fp8-tp1"], IDS["trt-l40s-fp8-tp1"], IDS["vllm-bf16-tp1"]}
    assert all(p.reason and p.config.get("precision") for p in chosen.cached)
    before = NIMCacheStatus(state="InProgress", observed_generation=1, profiles=list(chosen.cached))
    # A node leaving later does not change what a filling cache downloads.
    kept = ngc_profiles(_spec(), lookup=_never, nodes=CPU_ONLY, previous=before, generation=1)
    assert kept.ids == chosen.ids


def test_the_download_command_takes_the_chosen_profiles() -> None:
    chosen = ngc_profiles(_spec(), lookup=lambda: Known(PULLER, LLAMA), nodes=CLUSTER, previous=None, generation=1)
    job = render_job(Cache("llama", "team-a", "uid"), _spec(), runtime_image="x", profiles=chosen.ids)
    # NVIDIA's puller runs as the init container; our downloader then seals what it wrote.
    puller = next(i for i in job["spec"]["template"]["spec"]["initContainers"] if i["name"] == PULLER_CONTAINER)
    command = puller["command"]
    assert command[:2] == ["download-to-cache", "--profiles"]
    assert set(command[2:]) == set(chosen.ids or ())


def test_what_an_ngc_cache_does_with_each_answer() -> None:
    def ask(found: Known | Unknown | Probing, nodes: list[NodeGpuFacts] = CLUSTER) -> Any:
        return ngc_profiles(_spec(), lookup=lambda: found, nodes=nodes, previous=None, generation=1)

    waiting = ask(Probing(PULLER, "the manifest probe is running"))
    assert waiting.waiting is not None
    assert waiting.waiting.reason == "DiscoveringManifest"
    assert waiting.ids is None
    failed = ask(Unknown(PULLER, "ImagePullBackOff", "pulling image: unauthorized"))
    assert failed.failure is not None
    assert failed.failure.reason == "ManifestUnavailable"
    assert "unauthorized" in failed.failure.message
    assert "spec.source.ngc.model.profiles" in failed.failure.message
    model_free = ask(Known(PULLER, None))
    assert model_free.failure is None
    assert model_free.ids is None
    no_gpu = ask(Known(PULLER, LLAMA), CPU_ONLY)
    assert no_gpu.failure is not None
    assert no_gpu.failure.reason == "NoProfileFits"
    ours = RuntimeListing.model_validate(__import__("yaml").safe_load(catalog_listing("x", "1")))
    not_nim = ask(Known("localhost/nim-runtime:dev", ours))
    assert not_nim.failure is not None
    assert not_nim.failure.reason == "NotANIMImage"


def test_cached_profile_status_names_the_profile_and_why() -> None:
    chosen = ngc_profiles(
        _spec(),
        lookup=lambda: Known(PULLER, LLAMA),
        nodes=_pool("l", 1, "NVIDIA-L40S", 4, 46068),
        previous=None,
        generation=1,
    )
    assert chosen.cached == (
        CachedProfile(
            name=IDS["trt-l40s-fp8-tp1"],
            config=dict(LLAMA.profile(IDS["trt-l40s-fp8-tp1"]).source_tags),  # type: ignore[union-attr]
            reason=chosen.cached[0].reason,
        ),
    )
    assert chosen.cached[0].reason is not None
    assert chosen.cached[0].reason.startswith("tensorrt_llm-l40s-fp8-tp1-pp1-throughput, for NVIDIA-L40S: ")


def test_a_pool_that_may_add_gpus_counts_as_the_clusters() -> None:
    """No GPU node yet, a NodePool of L40S nodes: the profile a NIMService would get after the scale-up."""
    pool = ScaleUpOption(pool="gpu-l40s", product="NVIDIA-L40S", gpus=4, memory_mib=46068, compute=(8, 9))
    chosen = choose_cache_profiles(LLAMA, None, CPU_ONLY, [pool])
    assert _ids(chosen) == {IDS["trt-l40s-fp8-tp1"]}
    assert "after scale-up via NodePool gpu-l40s" in chosen[0].why
    blocked = ScaleUpOption(pool="gpu-l40s", product="NVIDIA-L40S", gpus=4, excluded=True, blocked="a taint")
    with pytest.raises(ProfileError, match="no node of the cluster has GPUs"):
        choose_cache_profiles(LLAMA, None, CPU_ONLY, [blocked])
