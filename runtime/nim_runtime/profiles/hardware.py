"""What a GPU is and what a profile needs of one: products, compute capability, memory.

One table of the GPUs we know (:data:`GPUS`), read in every vocabulary that names them: GPU Feature
Discovery's product label (``NVIDIA-H100-80GB-HBM3``), Karpenter's AWS labels (``instance-gpu-name`` =
``h100`` with ``instance-gpu-memory`` in MiB), GKE's ``cloud.google.com/gke-accelerator``
(``nvidia-h100-80gb``) and the product families of profile tags and ``profileSelector.gpus`` (``H100``).
And the memory a profile needs per GPU: weights, the KV cache of one sequence at the served context
length, and the engine's overhead, at vLLM's default share of the GPU's memory.

Pure data and arithmetic; no I/O. The operator and the runtime both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: vLLM's default ``--gpu-memory-utilization``: the share of a GPU's memory it takes for itself.
GPU_MEMORY_UTILIZATION = 0.9
#: CUDA context, activations and CUDA graphs of one engine worker, beside weights and KV cache (MiB).
ENGINE_OVERHEAD_MIB = 2048
#: Minimum compute capability per precision: fp8 kernels need Ada or Hopper (8.9), bfloat16 needs
#: Ampere (8.0); vLLM runs nothing older than Volta (7.0).
PRECISION_MIN_COMPUTE: dict[str, tuple[int, int]] = {
    "fp8": (8, 9),
    "bf16": (8, 0),
    "fp16": (7, 0),
    "fp32": (7, 0),
    "int8": (7, 0),
    "int4": (7, 0),
    # NIM's 4-bit floats run on Blackwell (10.0) only.
    "nvfp4": (10, 0),
    "fp4": (10, 0),
}
#: Bytes per weight by precision (NIM's weight-only and AWQ formats by their weights).
WEIGHT_BYTES: dict[str, float] = {
    "fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int8_wo": 1,
    "int4": 0.5, "int4_wo": 0.5, "int4_awq": 0.5, "w4a16": 0.5, "nvfp4": 0.5, "mxfp4": 0.5, "fp4": 0.5,
}  # fmt: skip


@dataclass(frozen=True)
class GpuModel:
    """One GPU product: GFD's name for it, and what the other vocabularies call it."""

    product: str
    family: str
    architecture: str
    compute: tuple[int, int]
    memory_mib: int
    aws_name: str | None = None
    gke_accelerator: str | None = None
    #: PCI device id (NIM manifests' ``gpu_device`` without the vendor): tells an H100 SXM from an H100 NVL,
    #: which share a family name while TensorRT-LLM engines are built for one of them.
    device_id: str | None = None


#: The GPUs this table knows. Memory as GFD reports it (MiB per GPU).
GPUS: tuple[GpuModel, ...] = (
    GpuModel("NVIDIA-H200", "H200", "hopper", (9, 0), 143771, "h200", "nvidia-h200-141gb", "2335"),
    GpuModel("NVIDIA-H100-80GB-HBM3", "H100", "hopper", (9, 0), 81559, "h100", "nvidia-h100-80gb", "2330"),
    GpuModel("NVIDIA-H100-NVL", "H100", "hopper", (9, 0), 95830, None, None, "2321"),
    GpuModel("NVIDIA-A100-SXM4-80GB", "A100", "ampere", (8, 0), 81920, "a100", "nvidia-a100-80gb", "20b2"),
    GpuModel("NVIDIA-A100-SXM4-40GB", "A100", "ampere", (8, 0), 40960, "a100", "nvidia-tesla-a100", "20b0"),
    GpuModel("NVIDIA-L40S", "L40S", "ada-lovelace", (8, 9), 46068, "l40s", None, "26b5"),
    GpuModel("NVIDIA-L4", "L4", "ada-lovelace", (8, 9), 23034, "l4", "nvidia-l4", "27b8"),
    GpuModel("NVIDIA-A10G", "A10G", "ampere", (8, 6), 23028, "a10g", None, "2237"),
    GpuModel("Tesla-T4", "T4", "turing", (7, 5), 15360, "t4", "nvidia-tesla-t4", "1eb8"),
    GpuModel("Tesla-V100-SXM2-16GB", "V100", "volta", (7, 0), 16384, "v100", "nvidia-tesla-v100", "1db1"),
)


def _tokens(name: str) -> list[str]:
    return [t for t in name.upper().replace("_", "-").replace(" ", "-").split("-") if t and t != "NVIDIA"]


def gpu_matches(family: str, product: str) -> bool:
    """Whether a product (``NVIDIA-H100-80GB-HBM3``) is of a family or profile tag (``H100``), or is that
    product.

    Every token of the tag must be a token of the product, so ``A10`` never matches
    ``NVIDIA-A100-SXM4-80GB``, and NIM's ``H100_NVL`` matches ``NVIDIA-H100-NVL`` but not
    ``NVIDIA-H100-80GB-HBM3`` (``H100`` matches both).
    """
    wanted, have = _tokens(family), set(_tokens(product))
    return family.casefold() == product.casefold() or (bool(wanted) and all(t in have for t in wanted))


def device_id(tag: str | None) -> str | None:
    """NIM's ``gpu_device`` (``2330:10de``, or ``0x2330``) as the bare lowercase device id; None when absent."""
    if not tag:
        return None
    return tag.strip().lower().split(":", 1)[0].removeprefix("0x") or None


def device_misfit(device: str | None, product: str) -> str | None:
    """Why a node of ``product`` is not the device a profile was built for, or None (also when either id
    is unknown: the ``gpu`` tag then decides alone)."""
    known = by_product(product)
    have = known.device_id if known else None
    if device is None or have is None or have == device:
        return None
    return f"is {product} (device {have}), profile is built for device {device}"


def gpu_specificity(family: str | None, device: str | None) -> int:
    """How precisely a profile names its GPU: a device id beats a name, a longer name a shorter one
    (``H100_NVL`` over ``H100``), any name none. Ranks profiles that fit the same nodes."""
    if family is None and device is None:
        return 0
    return (100 if device else 0) + len(_tokens(family or ""))


def by_product(product: str) -> GpuModel | None:
    """The table's entry for a GFD product label (time-slicing's ``-SHARED`` suffix ignored)."""
    base = product.removesuffix("-SHARED").casefold()
    return next((g for g in GPUS if g.product.casefold() == base), None)


def by_aws_name(name: str, memory_mib: int | None = None) -> GpuModel | None:
    """Karpenter's ``karpenter.k8s.aws/instance-gpu-name`` (``a100``), told apart by memory when given.

    Without a memory two products of one name (A100 40 GB and 80 GB) are ambiguous: the smaller one is
    taken, so a profile is never placed on memory the pool may not have.
    """
    candidates = [g for g in GPUS if g.aws_name == name.casefold()]
    if memory_mib is not None:
        close = [g for g in candidates if abs(g.memory_mib - memory_mib) <= 0.1 * memory_mib]
        candidates = close or candidates
    return min(candidates, key=lambda g: g.memory_mib, default=None)


def by_gke_accelerator(name: str) -> GpuModel | None:
    """GKE's ``cloud.google.com/gke-accelerator`` value (``nvidia-tesla-a100``)."""
    return next((g for g in GPUS if g.gke_accelerator == name.casefold()), None)


def resolve(name: str) -> GpuModel | None:
    """A GPU named in any vocabulary: a GFD product, an AWS or GKE name."""
    return by_product(name) or by_gke_accelerator(name) or by_aws_name(name)


def products_of_family(family: str) -> tuple[str, ...]:
    """The GFD products of a family (``H100``) or of a product name given whole, for selectors."""
    return tuple(g.product for g in GPUS if gpu_matches(family, g.product))


def compute_ok(precision: str, compute: tuple[int, int] | None) -> bool:
    """Whether a GPU of this compute capability runs this precision (unknown capability: assumed yes)."""
    return compute is None or compute >= PRECISION_MIN_COMPUTE.get(precision, (7, 0))


@dataclass(frozen=True)
class MemoryNeed:
    """Memory per GPU one replica of a profile needs, and where it goes (MiB)."""

    weights_mib: int
    kv_cache_mib: int
    context: int
    total_mib: int

    def explain(self) -> str:
        return (
            f"{self.total_mib} MiB per GPU ({self.weights_mib} weights + {self.kv_cache_mib} KV cache at "
            f"{self.context} tokens + {ENGINE_OVERHEAD_MIB} overhead, at {GPU_MEMORY_UTILIZATION:.0%} of the GPU)"
        )


@dataclass(frozen=True)
class Split:
    """A model's shape (size, layers, KV heads) laid over a profile's GPUs (precision, tp x pp)."""

    parameters_billions: float
    layers: int
    kv_heads: int
    head_dim: int
    precision: str
    kv_bytes: float
    tp: int
    pp: int

    def bytes_per_gpu(self) -> tuple[float, float]:
        """One GPU's share of the weights, and of the KV cache per token, in bytes.

        KV heads are split across tensor-parallel ranks but never below one per rank (with tp above the
        model's KV heads, heads are replicated); layers are split across pipeline stages.
        """
        weights = self.parameters_billions * 1e9 * WEIGHT_BYTES[self.precision] / (self.tp * self.pp)
        layers_per_stage = math.ceil(self.layers / self.pp)
        per_token = 2 * layers_per_stage * math.ceil(self.kv_heads / self.tp) * self.head_dim * self.kv_bytes
        return weights, per_token


def memory_need(split: Split, *, context: int) -> MemoryNeed:
    """Per-GPU memory for weights split over tp x pp, one sequence's KV cache at ``context`` tokens
    (vLLM refuses to start when the cache cannot hold one sequence of the maximum length), and overhead.
    """
    weights, per_token = split.bytes_per_gpu()
    kv = per_token * context
    mib = 1024 * 1024
    total = (weights + kv) / mib + ENGINE_OVERHEAD_MIB
    return MemoryNeed(
        weights_mib=round(weights / mib),
        kv_cache_mib=round(kv / mib),
        context=context,
        total_mib=math.ceil(total / GPU_MEMORY_UTILIZATION),
    )


def context_that_fits(memory_mib: int, split: Split) -> int:
    """The longest context whose KV cache fits beside the weights in ``memory_mib`` per GPU (0: none)."""
    usable = memory_mib * GPU_MEMORY_UTILIZATION - ENGINE_OVERHEAD_MIB
    weight_bytes, token_bytes = split.bytes_per_gpu()
    weights, per_token = weight_bytes / (1024 * 1024), token_bytes / (1024 * 1024)
    if usable <= weights or per_token <= 0:
        return 0
    return int((usable - weights) / per_token)
