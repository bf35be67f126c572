"""NIM's model manifests (NVIDIA's own examples and one of NIM's shapes) read into our profile model,
and ranked by the same selection as our catalog, against the simulated cluster's node pools."""

from __future__ import annotations

from pathlib import Path

import pytest

from nim_runtime.profiles import (
    NOT_FOUND,
    ImageManifest,
    ManifestFormatError,
    ModelManifest,
    NodeGpuFacts,
    ProfileError,
    ProfileSelector,
    RuntimeListing,
    catalog_listing,
    find_manifest,
    parse_listing,
    parse_manifest_document,
    parse_nim_manifest,
    select_profile,
)
from tests.unit.nim_manifests import IDS, LLAMA_8B_V2, NVIDIA_MANIFESTS
from tests.unit.test_profiles import CLUSTER, _pool

# What each of NVIDIA's example files holds, as NVIDIA's parser tests state it:
# (schema, profile id, readable name, engine, precision, tp, gpu, device, lora, qos).
EXPECTED = {
    "manifest_lora.yaml": [
        ("nim-v1", "36fc1fa4fc35c1d54da115a39323080b08d7937dceb8ba47be44f4da0ec720ff",
         "tensorrt_llm-h100-fp16-tp4-pp1-throughput-lora", "tensorrt_llm", "fp16", 4, "H100", "2330", True,
         "throughput"),
    ],
    "manifest_trtllm_v1.yaml": [
        ("nim-v1", "03fdb4d11f01be10c31b00e7c0540e2835e89a0079b483ad2dd3c25c8cc29b61",
         "tensorrt_llm-l40s-fp16-tp8-pp1-throughput", "tensorrt_llm", "fp16", 8, "L40S", "26b5", False,
         "throughput"),
    ],
    "manifest_vllm_v1.yaml": [
        ("nim-v1", "0f3de1afe11d355e01657424a267fbaad19bfea3143a9879307c49aed8299db0", "vllm-fp16-tp8-pp1-lora",
         "vllm", "fp16", 8, None, None, True, "throughput"),
    ],
    "manifest_v2.yaml": [
        ("nim-v2", "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999",
         "tensorrt_llm-l40s-fp16-tp8-pp1-throughput", "tensorrt_llm", "fp16", 8, "L40S", "26b5", False,
         "throughput"),
        ("nim-v2", "1111222233334444555566667777888899990000aaaabbbbccccddddeeeeffff", "vllm-fp16-tp1-pp1",
         "vllm", "fp16", 1, None, None, False, "latency"),
    ],
}  # fmt: skip


def _files() -> list[Path]:
    return sorted(NVIDIA_MANIFESTS.glob("*.yaml"))


def test_every_nvidia_example_is_covered() -> None:
    """A new file in the examples directory must get its expectations here, not pass unread."""
    assert [f.name for f in _files()] == sorted(EXPECTED)


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_nvidia_example_parses_into_profiles(path: Path) -> None:
    manifest = parse_nim_manifest(path.read_text(), fallback_name="nvcr.io/nim/meta/llama3-70b-instruct:1.0.0")
    got = [
        (manifest.nim_schema, p.id, p.name, p.engine, p.precision, p.tp, p.gpu, p.gpu_device, p.lora, p.mode)
        for p in manifest.profiles
    ]
    assert got == EXPECTED[path.name]
    assert manifest.skipped == ()
    # The image's own tags are kept as they are (status shows them), strings included.
    for profile in manifest.profiles:
        assert profile.tags["tp"] == str(profile.tp)
        assert profile.tags["precision"] == profile.precision
    if manifest.nim_schema == "nim-v1":
        assert manifest.name == "meta/llama3-70b-instruct"
        assert manifest.release == "1.0.0"
    else:
        assert manifest.name == "nvcr.io/nim/meta/llama3-70b-instruct:1.0.0"
        assert manifest.selection_criteria == "default"


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_nvidia_example_is_read_the_same_from_a_config_map_and_a_probe(path: Path) -> None:
    text = path.read_text()
    from_config_map = parse_manifest_document(text, fallback_name="img")
    from_probe = parse_listing(text, image="img")
    assert isinstance(from_config_map, ImageManifest)
    assert from_config_map == from_probe


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_nvidia_example_is_ranked_on_the_simulated_cluster(path: Path) -> None:
    """Each example on the 8x H100 / 4x L40S / 1x A10G / CPU pools: chosen where a node fits, and
    otherwise refused with what each profile lacked, in GPU products' words."""
    manifest = parse_nim_manifest(path.read_text(), fallback_name="img")
    outcome: dict[str, str] = {}
    try:
        decision = select_profile(manifest, CLUSTER)
        outcome = {"chosen": decision.profile.id, "products": ", ".join(decision.gpu_products)}
    except ProfileError as err:
        outcome = {"error": str(err)}
    expected = {
        "manifest_lora.yaml": {"chosen": EXPECTED["manifest_lora.yaml"][0][1], "products": "NVIDIA-H100-80GB-HBM3"},
        "manifest_trtllm_v1.yaml": {
            "error": "no profile of meta/llama3-70b-instruct fits this cluster, now or after a scale-up ("
            f"{EXPECTED['manifest_trtllm_v1.yaml'][0][1]} (tensorrt_llm-l40s-fp16-tp8-pp1-throughput): no node "
            "can run it: NVIDIA-L40S has 4 GPU(s), needs 8; nodes without GPUs has no GPUs; NVIDIA-A10G is "
            "NVIDIA-A10G, not L40S; NVIDIA-H100-80GB-HBM3 is NVIDIA-H100-80GB-HBM3, not L40S)"
        },
        "manifest_vllm_v1.yaml": {
            "chosen": EXPECTED["manifest_vllm_v1.yaml"][0][1],
            "products": "NVIDIA-H100-80GB-HBM3",
        },
        "manifest_v2.yaml": {
            "chosen": EXPECTED["manifest_v2.yaml"][1][1],
            "products": "NVIDIA-A10G, NVIDIA-H100-80GB-HBM3, NVIDIA-L40S",
        },
    }[path.name]
    assert outcome == expected


LLAMA = parse_nim_manifest(LLAMA_8B_V2, fallback_name="nvcr.io/nim/meta/llama-3.1-8b-instruct:1.8.0")


def test_a_nim_manifest_with_every_shape() -> None:
    names = {p.name for p in LLAMA.profiles}
    assert "tensorrt_llm-h100_nvl-fp8-tp1-pp1-throughput" in names
    assert "sglang-bf16-tp1-pp1" in names
    buildable = LLAMA.profile(IDS["trt-buildable-bf16-tp1"])
    assert buildable is not None
    assert buildable.buildable
    assert buildable.gpu is None
    # An unknown precision is not ranked, and the reason is kept for status.
    assert [(s.id, s.why) for s in LLAMA.skipped] == [
        (IDS["trt-h100-fp3-tp1"], "precision 'fp3' is not one the operator can rank")
    ]


def test_tensorrt_llm_for_the_gpu_wins_like_our_hardware_specific_profiles() -> None:
    decision = select_profile(LLAMA, CLUSTER)
    assert decision.profile.id == IDS["trt-h100-fp8-tp1"]
    assert decision.gpu_products == ("NVIDIA-H100-80GB-HBM3",)
    why = {r.id: r.why for r in decision.rejected}
    assert why[IDS["trt-h100nvl-fp8-tp1"]].startswith("no node can run it:")
    assert "not H100_NVL" in why[IDS["trt-h100nvl-fp8-tp1"]]
    assert why[IDS["trt-b200-fp4-tp1"]].startswith("no node can run it:")
    assert why[IDS["trt-l40s-fp8-tp1"]] == f"feasible, ranked below {IDS['trt-h100-fp8-tp1']}"


def test_device_ids_tell_an_h100_nvl_from_an_h100_sxm() -> None:
    nvl = _pool("nvl", 1, "NVIDIA-H100-NVL", 2, 95830)
    decision = select_profile(LLAMA, nvl)
    # The H100 profiles' tag matches the NVL's name, but their device (2330) is not the NVL's (2321).
    assert decision.profile.id == IDS["trt-h100nvl-fp8-tp1"]
    why = {r.id: r.why for r in decision.rejected}
    assert "is NVIDIA-H100-NVL (device 2321), profile is built for device 2330" in why[IDS["trt-h100-fp8-tp1"]]


def test_selector_maps_onto_nim_tags() -> None:
    l40s = select_profile(LLAMA, CLUSTER, selector=ProfileSelector(gpu_products=("NVIDIA-L40S",)))
    assert l40s.profile.id == IDS["trt-l40s-fp8-tp1"]
    latency = select_profile(LLAMA, CLUSTER, selector=ProfileSelector(qos_profile="latency"))
    assert latency.profile.id == IDS["trt-h100-fp8-tp2-latency"]
    vllm = select_profile(LLAMA, CLUSTER, selector=ProfileSelector(engine="vllm"))
    assert vllm.profile.id == IDS["vllm-bf16-tp1"]
    lora = select_profile(LLAMA, CLUSTER, selector=ProfileSelector(lora=True))
    assert lora.profile.id == IDS["vllm-bf16-tp1-lora"]
    a10g = select_profile(LLAMA, _pool("a10g", 1, "NVIDIA-A10G", 4, 23028))
    assert a10g.profile.id == IDS["trt-a10g-bf16-tp2"]


def test_a_nim_profile_is_pinned_by_id_or_readable_name() -> None:
    by_name = select_profile(LLAMA, CLUSTER, pinned="tensorrt_llm-l40s-fp8-tp1-pp1-throughput")
    assert by_name.profile.id == IDS["trt-l40s-fp8-tp1"]
    assert select_profile(LLAMA, CLUSTER, pinned=IDS["trt-l40s-fp8-tp1"]) == by_name
    with pytest.raises(ProfileError, match=r"valid profiles: [0-9a-f]{64} \(tensorrt_llm-"):
        select_profile(LLAMA, CLUSTER, pinned="vllm-typo")


def test_no_gpu_node_refuses_every_gpu_profile_with_its_reason() -> None:
    with pytest.raises(ProfileError) as err:
        select_profile(LLAMA, [NodeGpuFacts("cpu-0")])
    assert {r.id for r in err.value.rejected} == {p.id for p in LLAMA.profiles}
    assert all(r.why == "no node can run it: nodes without GPUs has no GPUs" for r in err.value.rejected)


def test_runtime_listing_round_trips_and_finds_models() -> None:
    text = catalog_listing("HuggingFaceTB/SmolLM2-135M-Instruct", "9.9.9")
    listing = parse_listing(text, image="mirror.example/serving:1")
    assert isinstance(listing, RuntimeListing)
    assert listing.runtime == "9.9.9"
    assert listing.find("meta/llama-3.1-8b-instruct") == find_manifest("meta/llama-3.1-8b-instruct")
    assert listing.find("no/such-model") is None


def test_an_image_without_a_manifest_and_junk_are_told_apart() -> None:
    assert parse_listing(f"{NOT_FOUND}\n", image="x") is None
    assert parse_listing("", image="x") is None
    with pytest.raises(ManifestFormatError, match="printed something that is no manifest"):
        parse_listing("sh: 1: cat: Permission denied\n", image="x")
    with pytest.raises(ManifestFormatError, match=r"schema_version '3\.0' is not one the operator reads"):
        parse_manifest_document("schema_version: '3.0'\nprofiles: []\n", fallback_name="x")
    with pytest.raises(ManifestFormatError, match=r"ours .* or NIM's"):
        parse_manifest_document("- a\n- b\n", fallback_name="x")


def test_our_format_still_reads_as_ours_from_a_config_map() -> None:
    ours = parse_manifest_document(
        "name: acme/model\nsource: hf://acme/model\nmax_model_len: 10\nlicense: mit\n"
        "profiles:\n- {id: vllm-bf16-tp1, precision: bf16}\n",
        fallback_name="x",
    )
    assert isinstance(ours, ModelManifest)
    assert ours.profile_ids == ["vllm-bf16-tp1"]


def test_a_manifest_whose_every_profile_is_unusable_says_why_for_each() -> None:
    with pytest.raises(ManifestFormatError, match=r"no profile of the NIM manifest can be used .*engine 'onnx'"):
        parse_nim_manifest("abc123:\n  tags: {backend: onnx, precision: fp16}\n")
    with pytest.raises(ManifestFormatError, match="tag tp='two' is not a positive integer"):
        parse_nim_manifest("abc123:\n  tags: {llm_engine: vllm, precision: fp16, tp: two}\n")


def test_the_e2e_images_manifest_is_the_one_ranked_here() -> None:
    """The stand-in NIM image of the e2e tests carries a copy of LLAMA_8B_V2 (it cannot import Python)."""
    text = (Path(__file__).resolve().parents[1] / "e2e" / "nim-image" / "model_manifest.yaml").read_text()
    assert parse_nim_manifest(text, fallback_name="x") == parse_nim_manifest(LLAMA_8B_V2, fallback_name="x")
