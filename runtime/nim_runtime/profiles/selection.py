"""Choosing a profile: manifest + GPU facts of the nodes now + what autoscalers may add -> a decision
that explains itself.

Pure functions, no I/O (except :func:`local_gpu_facts`, which the runtime alone calls). The operator
feeds them the nodes of the cluster and the node shapes of its autoscalers' pools; the runtime feeds them
the GPUs of its own machine. Whether one shape fits one profile is :mod:`nim_runtime.profiles.fit`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from nim_runtime.profiles import hardware as hw
from nim_runtime.profiles.fit import NodeGpuFacts, ScaleUpOption, needs_of, node_misfit, option_misfit
from nim_runtime.profiles.manifest import PRECISION_BITS, ModelManifest, Profile, ProfileSet

gpu_matches = hw.gpu_matches

#: Where a feasible profile can run, best first: on free GPUs now, on a node an autoscaler adds, on GPUs
#: other pods hold now (it waits for them), or only on a product the selector names that nothing offers.
Availability = Literal["now", "scale-up", "busy", "waiting"]
_TIER: dict[str, int] = {"now": 0, "scale-up": 1, "busy": 2, "waiting": 3}


class ProfileError(ValueError):
    """No profile can be used; the message says why for each one and what to change."""

    def __init__(self, message: str, rejected: Sequence[Rejection] = ()) -> None:
        super().__init__(message)
        self.rejected = tuple(rejected)


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
    """The chosen profile, where it can run (now, or after a scale-up), and why every other was not.

    ``gpu_products`` are GFD products for the pods' affinity: those of nodes that can run it and those the
    chosen pools add, so a node a pool adds changes nothing rendered. ``pools`` are the autoscaler shapes
    that can run it (rendered as affinity terms the provisioner understands, so scale-outs get nodes).
    """

    profile: Profile
    gpu_products: tuple[str, ...]
    nodes: tuple[str, ...]
    reason: str
    rejected: tuple[Rejection, ...] = field(default=())
    availability: Availability = "now"
    pools: tuple[ScaleUpOption, ...] = ()


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
        if profile.gpu is not None and not any(
            gpu_matches(profile.gpu, p) or any(gpu_matches(profile.gpu, q) for q in hw.products_of_family(p))
            for p in selector.gpu_products
        ):
            return f"profileSelector.gpus is {', '.join(selector.gpu_products)}, profile is tuned for {profile.gpu}"
    return None


def selector_products(selector: ProfileSelector) -> tuple[str, ...]:
    """The GFD products ``profileSelector.gpus`` names: a family (``H100``) becomes the products of that
    family the hardware table knows; a name it does not know is kept as written (a product label)."""
    products: list[str] = []
    for wanted in selector.gpu_products:
        products += hw.products_of_family(wanted) or [wanted]
    return tuple(sorted(set(products)))


def _why_nowhere(misfits: dict[str, str], nodes: Sequence[NodeGpuFacts], pool_misfits: dict[str, str]) -> str:
    """One part per distinct reason, naming the GPU products and pools (not nodes) it applies to.

    The text lands in every NIMService's status: with node names or counts in it, each node joining or
    leaving the cluster would rewrite the status of every service; products and pools change far less.
    """
    product = {n.name: n.product or "nodes without GPUs" for n in nodes}
    by_reason: dict[str, set[str]] = {}
    for node, why in misfits.items():
        by_reason.setdefault(why, set()).add(product.get(node, "nodes without GPUs"))
    parts = [f"{', '.join(sorted(products))} {why}" for why, products in sorted(by_reason.items())]
    text = "no node can run it: " + "; ".join(parts) if parts else "the cluster has no nodes"
    if pool_misfits:
        text += "; nor can a scale-up: " + "; ".join(f"{p} {why}" for p, why in sorted(pool_misfits.items()))
    return text


def _rank(profile: Profile, availability: Availability) -> tuple[bool, int, bool, bool, int, int, int, str]:
    """Sort key: GPU before CPU, hardware-specific before generic (a device id or a longer product name
    before a shorter one), throughput before latency, without LoRA before with, fewer bits, then runnable
    now before after a scale-up (before waiting for busy GPUs), then fewer GPUs per replica (more for
    latency), then id."""
    gpus = -profile.gpus if profile.mode == "latency" else profile.gpus
    return (
        profile.device == "cpu",
        -hw.gpu_specificity(profile.gpu, profile.gpu_device),
        profile.mode != "throughput",
        profile.lora,
        PRECISION_BITS[profile.precision],
        _TIER[availability],
        gpus,
        profile.id,
    )


def _ranked(entry: tuple[Profile, Availability, _Where]) -> tuple[object, ...]:
    """:func:`_rank`, with ties before the id broken by what the profiles stand for: between equal
    profiles tuned for different GPUs (an fp8 engine for H100 and one for L40S) the larger GPU keeps more
    KV cache; then an engine that starts at once before one TensorRT-LLM builds at start; then vLLM (NIM's
    default) before SGLang. The id alone would decide by the spelling of a name, or by a NIM hash."""
    profile, availability, where = entry
    *rank, id_ = _rank(profile, availability)
    memory = max([n.memory_mib or 0 for n in where.now + where.busy] + [p.memory_mib or 0 for p in where.pools] + [0])
    return (*rank, -memory, profile.buildable, profile.engine == "sglang", id_)


def _label(manifest: ProfileSet, id_: str) -> str:
    """A profile as messages name it: NIM's hash ids with their readable name."""
    profile = manifest.profile(id_)
    return profile.label if profile is not None else id_


def _products(nodes: Iterable[NodeGpuFacts], pools: Iterable[ScaleUpOption] = ()) -> tuple[str, ...]:
    return tuple(sorted({n.product for n in nodes if n.product} | {p.product for p in pools}))


@dataclass(frozen=True)
class _Where:
    """Where one profile can run: nodes with room now, nodes whose GPUs are taken, pools that can add one
    now (``pools``) and pools whose nodes could run it at all (``steer``: rendered, so a pool at its limit
    today serves a scale-out once it has room, and a limit reached never rewrites the pods)."""

    now: tuple[NodeGpuFacts, ...]
    busy: tuple[NodeGpuFacts, ...]
    pools: tuple[ScaleUpOption, ...]
    steer: tuple[ScaleUpOption, ...]
    why_not: str
    #: Whether a pool the operator can read offers a product profileSelector.gpus names (fitting or not):
    #: then no unseen autoscaler is waited for, and a blocked pool's reason is the answer.
    offered: bool = False


def _where(
    manifest: ProfileSet,
    profile: Profile,
    nodes: Sequence[NodeGpuFacts],
    capacity: Sequence[ScaleUpOption],
    selector: ProfileSelector,
    context_cap: int | None,
) -> _Where:
    needs = needs_of(manifest, profile, context_cap)
    wanted = selector.gpu_products
    misfits = {n.name: why for n in nodes if (why := node_misfit(manifest, profile, needs, n, wanted)) is not None}
    able = [n for n in nodes if n.name not in misfits]
    now = tuple(n for n in able if profile.device == "cpu" or n.free >= profile.gpus)
    busy = tuple(n for n in able if n not in now)
    pool_misfits: dict[str, str] = {}
    pools: list[ScaleUpOption] = []
    steer: list[ScaleUpOption] = []
    for option in capacity:
        shape_fits = option_misfit(manifest, profile, needs, replace(option, blocked=None), wanted) is None
        if shape_fits and not option.excluded:
            steer.append(option)
        why = option_misfit(manifest, profile, needs, option, wanted)
        if why is None:
            pools.append(option)
        elif profile.device == "gpu":
            shape = f" ({option.shape})" if option.shape else ""
            pool_misfits.setdefault(f"{option.label}{shape}", why)
    offered = any(gpu_matches(w, o.product) for o in capacity for w in wanted)
    return _Where(now, busy, tuple(pools), tuple(steer), _why_nowhere(misfits, nodes, pool_misfits), offered)


def _availability(where: _Where, profile: Profile, selector: ProfileSelector) -> Availability | None:
    if where.now:
        return "now"
    if where.pools:
        return "scale-up"
    if where.busy:
        return "busy"
    if selector.gpu_products and profile.device == "gpu" and not where.offered:
        return "waiting"
    return None


def pool_order(pools: Iterable[ScaleUpOption]) -> list[str]:
    """Pool labels, smallest node first (the order the pods' affinity asks a provisioner in)."""
    ordered = sorted(pools, key=lambda o: (o.gpus, o.memory_mib or 0, o.label))
    return list(dict.fromkeys(o.label for o in ordered))


def _pools_text(pools: Sequence[ScaleUpOption]) -> str:
    return " or ".join(pool_order(pools))


def _reason(chosen: Profile, availability: Availability, where: _Where, products: tuple[str, ...], count: int) -> str:
    listed = ", ".join(products) if products else "nodes without GPUs"
    if availability == "now":
        return (
            f"{chosen.id}: runnable now on {', '.join(_products(where.now)) or 'nodes without GPUs'}; best of "
            f"{count} feasible (hardware-specific, then lower precision, then runnable now before after a "
            "scale-up, then fewer GPUs per replica)"
        )
    if availability == "scale-up":
        return (
            f"{chosen.id}: after scale-up via {_pools_text(where.pools)} ({', '.join(_products([], where.pools))}); "
            f"nothing runnable now ranks higher (best of {count} feasible)"
        )
    if availability == "busy":
        return (
            f"{chosen.id}: runnable on {listed} once their GPUs free up (other pods hold them) and no pool can "
            f"add a node; best of {count} feasible"
        )
    return (
        f"{chosen.id}: no node or pool can run it yet; pinned to {listed} by profileSelector.gpus, "
        "so pods wait for the cluster autoscaler"
    )


def select_profile(
    manifest: ProfileSet,
    nodes: Sequence[NodeGpuFacts],
    *,
    selector: ProfileSelector | None = None,
    pinned: str | None = None,
    previous: str | None = None,
    capacity: Sequence[ScaleUpOption] = (),
    context_cap: int | None = None,
    previous_pools: Collection[str] | None = None,
    pinned_by: str = "spec.profile",
) -> ProfileDecision:
    """Choose the profile to run, deterministically, with a reason for every profile.

    ``capacity`` lists the node shapes autoscalers may add: a profile that only a scale-up can run is
    chosen when nothing runnable now ranks higher. ``pinned`` (``spec.profile``, or the field ``pinned_by``
    names) wins over everything, even when nothing can run it yet. ``previous`` is kept while it is still
    feasible, so a node joining or GPUs freeing up does not flip a running service to another profile. A
    selector that pins GPU products keeps profiles nothing offers yet, for a cluster autoscaler this
    operator cannot read.
    ``context_cap`` (the user's NIM_MAX_MODEL_LEN) sizes the KV cache. ``previous_pools`` (labels) limits
    the pools of a kept decision to those it had, so a NodePool added later does not rewrite the pods of
    a running service. Raises :class:`ProfileError` when nothing fits now or after a scale-up, listing
    what each profile lacked.
    """
    selector = selector or ProfileSelector()
    if pinned is not None:
        kept_pools = previous_pools if pinned == previous else None
        return _pinned_decision(manifest, nodes, pinned, selector, capacity, context_cap, kept_pools, pinned_by)

    rejected: list[Rejection] = []
    feasible: list[tuple[Profile, Availability, _Where]] = []
    for profile in manifest.profiles:
        violation = _selector_violation(profile, selector)
        if violation is not None:
            rejected.append(Rejection(profile.id, violation))
            continue
        where = _where(manifest, profile, nodes, capacity, selector, context_cap)
        availability = _availability(where, profile, selector)
        if availability is None:
            rejected.append(Rejection(profile.id, where.why_not))
        else:
            feasible.append((profile, availability, where))

    if not feasible:
        lines = "; ".join(f"{_label(manifest, r.id)}: {r.why}" for r in rejected)
        raise ProfileError(
            f"no profile of {manifest.name} fits this cluster, now or after a scale-up ({lines})", rejected
        )

    feasible.sort(key=_ranked)
    kept = next((e for e in feasible if e[0].id == previous), None)
    chosen, availability, where = kept or feasible[0]
    if kept is not None:
        where = _keep_pools(where, previous_pools)
    for profile, _, _ in feasible:
        if profile.id != chosen.id:
            rejected.append(Rejection(profile.id, f"feasible, ranked below {chosen.id}"))

    able = where.now + where.busy
    products = _products(able, where.steer)
    if availability == "waiting":
        products = selector_products(selector)
    best = feasible[0][0]
    if kept is not None and chosen.id != best.id:
        reason = (
            f"{chosen.id}: kept the earlier decision while it stays runnable "
            f"({', '.join(products) or 'nodes without GPUs'}), so the service does not move; {best.id} would "
            "rank first for a new one"
        )
    else:
        reason = _reason(chosen, availability, where, products, len(feasible))
    return ProfileDecision(
        profile=chosen,
        gpu_products=products,
        nodes=tuple(sorted(n.name for n in able)),
        reason=reason,
        rejected=tuple(sorted(rejected, key=lambda r: r.id)),
        availability=availability,
        pools=where.steer,
    )


def _keep_pools(where: _Where, labels: Collection[str] | None) -> _Where:
    """Steer only to the pools named (a kept decision's own), so pools added later rewrite no pods."""
    if labels is None:
        return where
    return replace(where, steer=tuple(p for p in where.steer if p.label in labels))


def _pinned_decision(
    manifest: ProfileSet,
    nodes: Sequence[NodeGpuFacts],
    pinned: str,
    selector: ProfileSelector,
    capacity: Sequence[ScaleUpOption],
    context_cap: int | None,
    kept_pools: Collection[str] | None,
    pinned_by: str,
) -> ProfileDecision:
    profile = manifest.profile(pinned)
    if profile is None:
        raise ProfileError(
            f"profile {pinned!r} is not in the manifest of {manifest.name}; "
            f"valid profiles: {', '.join(manifest.profile_labels)}"
        )
    where = _where(manifest, profile, nodes, capacity, selector, context_cap)
    availability = _availability(where, profile, selector) or "waiting"
    where = _keep_pools(where, kept_pools)
    reason = f"{profile.id}: pinned by {pinned_by}"
    if availability == "scale-up":
        reason += f"; after scale-up via {_pools_text(where.pools)}"
    elif availability == "busy":
        reason += "; its nodes' GPUs are held by other pods, so pods stay Pending until some free up"
    elif availability == "waiting":
        reason += f"; {where.why_not}, so pods stay Pending until such a node joins"
    able = where.now + where.busy
    rejected = tuple(Rejection(p.id, f"{pinned_by} pins {profile.id}") for p in manifest.profiles if p != profile)
    return ProfileDecision(
        profile,
        _products(able, where.steer),
        tuple(sorted(n.name for n in able)),
        reason,
        rejected,
        availability,
        where.steer,
    )


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
