"""Choosing a profile: manifest + node GPU facts -> a decision that explains itself.

Pure functions, no I/O (except :func:`local_gpu_facts`, which the runtime alone calls). The operator
feeds them the nodes of the cluster; the runtime feeds them the GPUs of its own machine.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nim_runtime.profiles.manifest import PRECISION_BITS, ModelManifest, Profile


class ProfileError(ValueError):
    """No profile can be used; the message says why for each one and what to change."""

    def __init__(self, message: str, rejected: Sequence[Rejection] = ()) -> None:
        super().__init__(message)
        self.rejected = tuple(rejected)


@dataclass(frozen=True)
class NodeGpuFacts:
    """What GPU Feature Discovery says about one node (labels) plus its allocatable GPUs."""

    name: str
    product: str | None = None
    gpus: int = 0
    memory_mib: int | None = None
    family: str | None = None


@dataclass(frozen=True)
class ProfileSelector:
    """Constraints from the user; None (or empty) means any."""

    engine: str | None = None
    precision: str | None = None
    tensor_parallelism: int | None = None
    qos_profile: str | None = None
    lora: bool | None = None
    gpu_products: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejection:
    id: str
    why: str


@dataclass(frozen=True)
class ProfileDecision:
    """The chosen profile, where it can run, and why every other profile was not chosen."""

    profile: Profile
    gpu_products: tuple[str, ...]
    nodes: tuple[str, ...]
    reason: str
    rejected: tuple[Rejection, ...] = field(default=())


def gpu_matches(family: str, product: str) -> bool:
    """Whether a GFD product label (``NVIDIA-H100-80GB-HBM3``) is of a family tag (``H100``).

    Token match, not substring, so ``A10`` never matches ``NVIDIA-A100-SXM4-80GB``.
    """
    tokens = product.upper().replace("_", "-").replace(" ", "-").split("-")
    return family.upper() in tokens or family.upper() == product.upper()


def _selector_violation(profile: Profile, selector: ProfileSelector) -> str | None:
    checks: list[tuple[object, object, str]] = [
        (selector.engine, profile.engine, "engine"),
        (selector.precision, profile.precision, "precision"),
        (selector.tensor_parallelism, profile.tp, "tensorParallelism"),
        (selector.qos_profile, profile.mode, "qosProfile"),
        (selector.lora, profile.lora, "lora"),
    ]
    for wanted, actual, name in checks:
        if wanted is not None and wanted != actual:
            return f"profileSelector.{name} is {wanted}, profile has {actual}"
    if selector.gpu_products:
        if profile.device == "cpu":
            return "profileSelector.gpus asks for GPUs, profile runs on the CPU"
        if profile.gpu is not None and not any(gpu_matches(profile.gpu, p) for p in selector.gpu_products):
            return f"profileSelector.gpus is {', '.join(selector.gpu_products)}, profile is tuned for {profile.gpu}"
    return None


def _node_misfit(profile: Profile, node: NodeGpuFacts, selector: ProfileSelector) -> str | None:
    """Why this node cannot run one replica of the profile, or None when it can."""
    if profile.device == "cpu":
        return "has GPUs (CPU profiles stay off GPU nodes)" if node.gpus else None
    if node.gpus == 0 or node.product is None:
        return "has no GPUs"
    if selector.gpu_products and not any(
        s.casefold() == node.product.casefold() or gpu_matches(s, node.product) for s in selector.gpu_products
    ):
        return f"is {node.product}, not in profileSelector.gpus"
    if profile.gpu is not None and not gpu_matches(profile.gpu, node.product):
        return f"is {node.product}, not {profile.gpu}"
    if node.gpus < profile.gpus:
        return f"has {node.gpus} GPU(s), needs {profile.gpus}"
    if profile.min_gpu_memory_mib is not None:
        if node.memory_mib is None:
            return "has no nvidia.com/gpu.memory label"
        if node.memory_mib < profile.min_gpu_memory_mib:
            return f"has {node.memory_mib} MiB per GPU, needs {profile.min_gpu_memory_mib}"
    return None


def _why_no_node(misfits: dict[str, str], nodes: Sequence[NodeGpuFacts]) -> str:
    """One part per distinct reason, naming the GPU products (not the nodes) it applies to.

    The text lands in every NIMService's status: with node names or counts in it, each node joining or
    leaving the cluster would rewrite the status of every service; products change far less often.
    """
    if not misfits:
        return "the cluster has no nodes"
    product = {n.name: n.product or "nodes without GPUs" for n in nodes}
    by_reason: dict[str, set[str]] = {}
    for node, why in misfits.items():
        by_reason.setdefault(why, set()).add(product.get(node, "nodes without GPUs"))
    parts = [f"{', '.join(sorted(products))} {why}" for why, products in sorted(by_reason.items())]
    return "no node can run it: " + "; ".join(parts)


def _rank(profile: Profile) -> tuple[bool, bool, bool, bool, int, int, str]:
    """Sort key: GPU before CPU, hardware-specific before generic, throughput before latency,
    without LoRA before with, fewer bits, then fewer GPUs per replica (more for latency), then id."""
    gpus = -profile.gpus if profile.mode == "latency" else profile.gpus
    return (
        profile.device == "cpu",
        profile.gpu is None,
        profile.mode != "throughput",
        profile.lora,
        PRECISION_BITS[profile.precision],
        gpus,
        profile.id,
    )


def _products(nodes: Iterable[NodeGpuFacts]) -> tuple[str, ...]:
    return tuple(sorted({n.product for n in nodes if n.product}))


def select_profile(
    manifest: ModelManifest,
    nodes: Sequence[NodeGpuFacts],
    *,
    selector: ProfileSelector | None = None,
    pinned: str | None = None,
    previous: str | None = None,
    pinned_by: str = "spec.profile",
) -> ProfileDecision:
    """Choose the profile to run, deterministically, with a reason for every profile.

    ``pinned`` (``spec.profile``, or the field ``pinned_by`` names) wins over everything, even when no node
    can run it yet: the pods then wait, Pending, for the cluster autoscaler. ``previous`` is kept while it
    is still feasible, so a node joining the cluster does not flip a running service to another profile. A
    selector that pins GPU products keeps profiles no node can run yet, for the same autoscaler reason.
    Raises :class:`ProfileError` when nothing fits, listing what each profile lacked.
    """
    selector = selector or ProfileSelector()
    if pinned is not None:
        return _pinned_decision(manifest, nodes, pinned, selector, pinned_by)

    rejected: list[Rejection] = []
    feasible: list[tuple[Profile, tuple[NodeGpuFacts, ...]]] = []
    for profile in manifest.profiles:
        violation = _selector_violation(profile, selector)
        if violation is not None:
            rejected.append(Rejection(profile.id, violation))
            continue
        misfits = {n.name: why for n in nodes if (why := _node_misfit(profile, n, selector)) is not None}
        able = tuple(n for n in nodes if n.name not in misfits)
        if able or (selector.gpu_products and profile.device == "gpu"):
            feasible.append((profile, able))
        else:
            rejected.append(Rejection(profile.id, _why_no_node(misfits, nodes)))

    if not feasible:
        lines = "; ".join(f"{r.id}: {r.why}" for r in rejected)
        raise ProfileError(f"no profile of {manifest.name} fits this cluster ({lines})", rejected)

    feasible.sort(key=lambda pair: _rank(pair[0]))
    kept = next(((p, a) for p, a in feasible if p.id == previous and a), None)
    chosen, able = kept or feasible[0]
    for profile, _ in feasible:
        if profile.id != chosen.id:
            rejected.append(Rejection(profile.id, f"feasible, ranked below {chosen.id}"))

    products = _products(able) or (selector.gpu_products if chosen.device == "gpu" else ())
    where = ", ".join(products) if products else "nodes without GPUs"
    best = feasible[0][0]
    if kept is not None and chosen.id != best.id:
        reason = (
            f"{chosen.id}: kept the earlier decision while it stays runnable ({where}), "
            f"so the service does not move; {best.id} would rank first for a new one"
        )
    elif not able:
        reason = (
            f"{chosen.id}: no node can run it yet; pinned to {', '.join(products)} by profileSelector.gpus, "
            "so pods wait for the cluster autoscaler"
        )
    else:
        reason = (
            f"{chosen.id}: runnable on {where}; best of {len(feasible)} feasible "
            "(hardware-specific, then lower precision, then fewer GPUs per replica)"
        )
    return ProfileDecision(
        profile=chosen,
        gpu_products=products,
        nodes=tuple(sorted(n.name for n in able)),
        reason=reason,
        rejected=tuple(sorted(rejected, key=lambda r: r.id)),
    )


def _pinned_decision(
    manifest: ModelManifest, nodes: Sequence[NodeGpuFacts], pinned: str, selector: ProfileSelector, pinned_by: str
) -> ProfileDecision:
    profile = manifest.profile(pinned)
    if profile is None:
        raise ProfileError(
            f"profile {pinned!r} is not in the manifest of {manifest.name}; "
            f"valid profiles: {', '.join(manifest.profile_ids)}"
        )
    misfits = {n.name: why for n in nodes if (why := _node_misfit(profile, n, selector)) is not None}
    able = tuple(n for n in nodes if n.name not in misfits)
    reason = f"{profile.id}: pinned by {pinned_by}"
    if not able:
        reason += f"; {_why_no_node(misfits, nodes)}, so pods stay Pending until such a node joins"
    rejected = tuple(Rejection(p.id, f"{pinned_by} pins {profile.id}") for p in manifest.profiles if p != profile)
    return ProfileDecision(profile, _products(able), tuple(sorted(n.name for n in able)), reason, rejected)


def local_gpu_facts(name: str = "local") -> NodeGpuFacts:
    """This machine's GPUs as nvidia-smi reports them; no GPUs when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return NodeGpuFacts(name=name)
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return NodeGpuFacts(name=name)
    rows = [line.split(",") for line in out.strip().splitlines() if line.strip()]
    if not rows:
        return NodeGpuFacts(name=name)
    product = rows[0][0].strip().replace(" ", "-")
    memory = min(int(float(r[1])) for r in rows)
    return NodeGpuFacts(name=name, product=product, gpus=len(rows), memory_mib=memory)


def select_local_profile(manifest: ModelManifest, requested: str | None) -> Profile:
    """The profile the runtime serves with: the requested one, or the best for this machine.

    An unknown id is an error at once (listing the valid ids) rather than a silent fallback: a typo in
    NIM_MODEL_PROFILE should stop the pod, not serve the wrong precision.
    """
    if requested:
        profile = manifest.profile(requested)
        if profile is None:
            raise ProfileError(
                f"NIM_MODEL_PROFILE={requested!r} is not a profile of {manifest.name}; "
                f"valid profiles: {', '.join(manifest.profile_ids)}"
            )
        return profile
    return select_profile(manifest, [local_gpu_facts()]).profile
