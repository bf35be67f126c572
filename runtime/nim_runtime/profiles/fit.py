"""Whether one GPU shape can run one replica of a profile, and if not, why, in words a user can act on.

A shape is what a node has now (:class:`NodeGpuFacts`) or what an autoscaler may add
(:class:`ScaleUpOption`). Both are judged by the same rules: product family, compute capability for the
precision, tensor parallelism on shared GPUs, GPUs per node, and memory per GPU including the KV cache
at the served context length.
"""

from __future__ import annotations

from dataclasses import dataclass

from nim_runtime.profiles import hardware as hw
from nim_runtime.profiles.manifest import Profile, ProfileSet

#: GFD's sharing kinds, as they shape what a pod's ``nvidia.com/gpu`` is.
Sharing = str  # "" (whole GPUs), "time-slicing", "mig"


@dataclass(frozen=True)
class NodeGpuFacts:
    """What GPU Feature Discovery says about one node (labels) plus its allocatable and free GPUs.

    ``gpus`` is allocatable ``nvidia.com/gpu``: whole GPUs, or slices on a time-sliced (``replicas`` per
    GPU) or MIG node. ``free_gpus`` is what pods other than the service being placed leave; None when not
    known (then all are taken to be free).
    """

    name: str
    product: str | None = None
    gpus: int = 0
    memory_mib: int | None = None
    family: str | None = None
    free_gpus: int | None = None
    compute: tuple[int, int] | None = None
    replicas: int = 1
    mig: bool = False

    @property
    def sharing(self) -> Sharing:
        return "mig" if self.mig else ("time-slicing" if self.replicas > 1 else "")

    @property
    def slice_memory_mib(self) -> int | None:
        """Memory one ``nvidia.com/gpu`` gives: a time slice is sized by its share of the GPU (MIG's label
        already names the slice's memory)."""
        if self.memory_mib is None or self.mig:
            return self.memory_mib
        return self.memory_mib // self.replicas

    @property
    def free(self) -> int:
        return self.gpus if self.free_gpus is None else self.free_gpus


@dataclass(frozen=True)
class ScaleUpOption:
    """One node shape an autoscaler may add: an instance type of a Karpenter NodePool, a node group.

    ``requirements`` are node-selector expressions in the provisioner's own vocabulary (its NodePool
    label, instance types, its GPU labels), which it can promise before a node boots; GFD's labels
    appear only after. ``blocked`` says why this pool adds no node for the service being placed now (a
    limit it reached, a pool not Ready): such options explain, and stay in the pods' affinity so the pool
    serves them once it has room again. ``excluded`` options (a taint the pods do not tolerate) only
    explain: the pods can never land there.
    """

    pool: str
    product: str
    gpus: int
    memory_mib: int | None = None
    compute: tuple[int, int] | None = None
    kind: str = "NodePool"
    shape: str | None = None
    blocked: str | None = None
    excluded: bool = False
    requirements: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.kind} {self.pool}"


@dataclass(frozen=True)
class ProfileNeeds:
    """What one replica of a profile asks of each GPU, resolved once per profile."""

    gpus: int
    min_memory_mib: int | None
    memory: hw.MemoryNeed | None
    min_compute: tuple[int, int]


def context_of(manifest: ProfileSet, profile: Profile, context_cap: int | None) -> int:
    """Tokens one sequence may hold: the model's, capped by the profile and by the user's NIM_MAX_MODEL_LEN."""
    caps = [manifest.max_model_len, profile.max_model_len, context_cap]
    return min(c for c in caps if c is not None)


def _kv_bytes(profile: Profile) -> float:
    """Bytes per KV-cache element: fp8 when the profile asks vLLM for it, else the weights' width (min 2)."""
    args = list(profile.vllm_args)
    if "--kv-cache-dtype" in args:
        i = args.index("--kv-cache-dtype")
        if i + 1 < len(args) and args[i + 1].startswith("fp8"):
            return 1
    return max(hw.WEIGHT_BYTES[profile.precision], 2)


def _split(manifest: ProfileSet, profile: Profile) -> hw.Split | None:
    arch = manifest.architecture
    if arch is None:
        return None
    return hw.Split(
        parameters_billions=arch.parameters_billions,
        layers=arch.layers,
        kv_heads=arch.kv_heads,
        # An encoder (embedding task) keeps no KV cache.
        head_dim=arch.head_dim if manifest.task != "embedding" else 0,
        precision=profile.precision,
        kv_bytes=_kv_bytes(profile),
        tp=profile.tp,
        pp=profile.pp,
    )


def needs_of(manifest: ProfileSet, profile: Profile, context_cap: int | None = None) -> ProfileNeeds:
    memory = None
    split = _split(manifest, profile)
    if split is not None and profile.device == "gpu":
        memory = hw.memory_need(split, context=context_of(manifest, profile, context_cap))
    floors = [m for m in (profile.min_gpu_memory_mib, memory.total_mib if memory else None) if m is not None]
    return ProfileNeeds(
        gpus=profile.gpus,
        min_memory_mib=max(floors) if floors else None,
        memory=memory,
        min_compute=hw.PRECISION_MIN_COMPUTE.get(profile.precision, (7, 0)),
    )


def _memory_misfit(manifest: ProfileSet, profile: Profile, needs: ProfileNeeds, memory_mib: int | None) -> str | None:
    if needs.min_memory_mib is None:
        return None
    if memory_mib is None:
        return "has no nvidia.com/gpu.memory label"
    if memory_mib >= needs.min_memory_mib:
        return None
    memory = needs.memory
    if memory is None or memory.total_mib < needs.min_memory_mib:
        return f"has {memory_mib} MiB per GPU, needs {needs.min_memory_mib}"
    why = f"has {memory_mib} MiB per GPU, needs {memory.explain()}"
    split = _split(manifest, profile)
    fits = hw.context_that_fits(memory_mib, split) if split else 0
    if fits >= 1024 and (profile.min_gpu_memory_mib or 0) <= memory_mib:
        why += f"; NIM_MAX_MODEL_LEN={fits // 1024 * 1024} in spec.env would fit"
    return why


def shape_misfit(
    manifest: ProfileSet,
    profile: Profile,
    needs: ProfileNeeds,
    *,
    product: str,
    gpus: int,
    memory_mib: int | None,
    compute: tuple[int, int] | None,
    sharing: Sharing = "",
    selector_products: tuple[str, ...] = (),
) -> str | None:
    """Why a GPU shape cannot run one replica of a GPU profile, or None when it can."""
    if selector_products and not any(hw.gpu_matches(s, product) for s in selector_products):
        return f"is {product}, not in profileSelector.gpus"
    if profile.gpu is not None and not hw.gpu_matches(profile.gpu, product):
        return f"is {product}, not {profile.gpu}"
    if (device := hw.device_misfit(profile.gpu_device, product)) is not None:
        return device
    known = hw.by_product(product)
    compute = compute or (known.compute if known else None)
    if compute is not None and compute < needs.min_compute:
        wanted = ".".join(map(str, needs.min_compute))
        return f"is compute capability {compute[0]}.{compute[1]}, {profile.precision} needs {wanted} or newer"
    if sharing and needs.gpus > 1:
        kind = "MIG slices" if sharing == "mig" else "time-sliced GPUs"
        return f"offers {kind}, which run only tp=1 profiles (needs {needs.gpus} GPUs)"
    if gpus < needs.gpus:
        return f"has {gpus} GPU(s), needs {needs.gpus}"
    return _memory_misfit(manifest, profile, needs, memory_mib)


def node_misfit(
    manifest: ProfileSet,
    profile: Profile,
    needs: ProfileNeeds,
    node: NodeGpuFacts,
    selector_products: tuple[str, ...],
) -> str | None:
    """Why this node cannot run one replica of the profile (free GPUs aside), or None when it can."""
    if profile.device == "cpu":
        return "has GPUs (CPU profiles stay off GPU nodes)" if node.gpus else None
    if node.gpus == 0 or node.product is None:
        return "has no GPUs"
    return shape_misfit(
        manifest,
        profile,
        needs,
        product=node.product,
        gpus=node.gpus,
        memory_mib=node.slice_memory_mib,
        compute=node.compute,
        sharing=node.sharing,
        selector_products=selector_products,
    )


def option_misfit(
    manifest: ProfileSet,
    profile: Profile,
    needs: ProfileNeeds,
    option: ScaleUpOption,
    selector_products: tuple[str, ...],
) -> str | None:
    """Why an autoscaler's node of this shape could not run one replica, or None when it could."""
    if profile.device == "cpu":
        return "adds GPU nodes (CPU profiles stay off GPU nodes)"
    misfit = shape_misfit(
        manifest,
        profile,
        needs,
        product=option.product,
        gpus=option.gpus,
        memory_mib=option.memory_mib,
        compute=option.compute,
        selector_products=selector_products,
    )
    return misfit or option.blocked
