"""NIM manifests for tests: NVIDIA's own examples (read-only, under ../shared) and one written here in
NVIDIA's schema 2.0.0 with the profile shapes an LLM NIM ships (TensorRT-LLM per GPU, vLLM and SGLang
generic, LoRA, buildable), with opaque hash ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NVIDIA_MANIFESTS = REPO.parent / "shared" / "compat" / "nim-manifests"


def fake_id(name: str) -> str:
    """A 64-hex id like NIM's, stable per name."""
    return hashlib.sha256(name.encode()).hexdigest()


_PROFILES = [
    # (readable name, tags)
    ("trt-h100-fp8-tp1", "llm_engine: tensorrt_llm, precision: fp8, tp: '1', pp: '1', profile: throughput, "
     "gpu: H100, gpu_device: '2330:10de', feat_lora: 'false'"),
    ("trt-h100-fp8-tp2-latency", "llm_engine: tensorrt_llm, precision: fp8, tp: '2', pp: '1', profile: latency, "
     "gpu: H100, gpu_device: '2330:10de', feat_lora: 'false'"),
    ("trt-h100-bf16-tp1", "llm_engine: tensorrt_llm, precision: bf16, tp: '1', pp: '1', profile: throughput, "
     "gpu: H100, gpu_device: '2330:10de', feat_lora: 'false'"),
    ("trt-h100nvl-fp8-tp1", "llm_engine: tensorrt_llm, precision: fp8, tp: '1', pp: '1', profile: throughput, "
     "gpu: H100_NVL, gpu_device: '2321:10de', feat_lora: 'false'"),
    ("trt-l40s-fp8-tp1", "llm_engine: tensorrt_llm, precision: fp8, tp: '1', pp: '1', profile: throughput, "
     "gpu: L40S, gpu_device: '26b5:10de', feat_lora: 'false'"),
    ("trt-a10g-bf16-tp2", "llm_engine: tensorrt_llm, precision: bf16, tp: '2', pp: '1', profile: throughput, "
     "gpu: A10G, gpu_device: '2237:10de', feat_lora: 'false'"),
    ("trt-buildable-bf16-tp1", "llm_engine: tensorrt_llm, precision: bf16, tp: '1', pp: '1', profile: throughput, "
     "trtllm_buildable: 'true', feat_lora: 'false'"),
    ("vllm-bf16-tp1", "llm_engine: vllm, precision: bf16, tp: '1', pp: '1', feat_lora: 'false'"),
    ("vllm-bf16-tp1-lora", "llm_engine: vllm, precision: bf16, tp: '1', pp: '1', feat_lora: 'true', "
     "feat_lora_max_rank: '32'"),
    ("sglang-bf16-tp1", "llm_engine: sglang, precision: bf16, tp: '1', pp: '1', feat_lora: 'false'"),
    ("trt-b200-fp4-tp1", "llm_engine: tensorrt_llm, precision: nvfp4, tp: '1', pp: '1', profile: throughput, "
     "gpu: B200, gpu_device: '2901:10de', feat_lora: 'false'"),
    # A precision no table knows: kept out of selection, and said so.
    ("trt-h100-fp3-tp1", "llm_engine: tensorrt_llm, precision: fp3, tp: '1', pp: '1', profile: throughput, "
     "gpu: H100, gpu_device: '2330:10de'"),
]  # fmt: skip

IDS = {name: fake_id(name) for name, _ in _PROFILES}

LLAMA_8B_V2 = "schema_version: 2.0.0\nprofile_selection_criteria: default\nprofiles:\n" + "".join(
    f"  - id: {IDS[name]}\n    tags: {{{tags}}}\n    workspace:\n      files:\n"
    f'        weights: {{uri: "ngc://nim/meta/llama-3.1-8b-instruct:{name}/rank0.engine"}}\n'
    for name, tags in _PROFILES
)


def kept_answer(namespace: str, image: str, listing: str | None = None) -> tuple[str, dict[str, object]]:
    """(path, ConfigMap) of the operator's kept answer for ``image`` (``repository:tag``), as the manifest
    probe writes it: for in-memory API servers of unit tests whose image stands for an NVIDIA one but whose
    subject is not the probe. ``listing`` None: the image carries no manifest."""
    from nim_operator.manifest_probe import object_name

    data = {"image": image, "key": image, "kind": "none"}
    if listing is not None:
        data.update(kind="nim", **{"listing.json": listing})
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": object_name(image)}, "data": data}
    return f"/api/v1/namespaces/{namespace}/configmaps/{object_name(image)}", body
