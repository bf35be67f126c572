"""Which of an NGC model's profiles a NIMCache fetches: what our placement would run. Pure.

NVIDIA's operator caches every profile that matches ``source.ngc.model``'s filters, and with no GPU
node in sight that is every GPU profile of the model: tens of gigabytes nobody will load. Here the
filters (precision, engine, tensorParallelism, qosProfile, gpus, lora, buildable) narrow the image's
manifest first, then the same selection that places NIMServices picks, for each GPU product the
cluster has (or, when ``gpus`` names products, for each of those, which the autoscaler may add), the
profile a NIMService would run there. That set, usually one profile per GPU product, is what is
fetched; each entry says why. ``model.profiles`` given by hand wins over all of this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nim_operator.api.nimcache import CachedProfile, ModelSelector, NIMCacheSpec, NIMCacheStatus
from nim_operator.discovery import Known, Probing, Unknown
from nim_operator.status import Failure
from nim_runtime.profiles import (
    ImageManifest,
    NodeGpuFacts,
    Profile,
    ProfileError,
    ProfileSelector,
    ScaleUpOption,
    select_profile,
)
from nim_runtime.profiles.hardware import device_id
from nim_runtime.profiles.selection import Rejection

FIELD = "spec.source.ngc.model"
_ENGINES = {"tensorrt": "tensorrt_llm", "trtllm": "tensorrt_llm", "tensorrt_llm": "tensorrt_llm"}


@dataclass(frozen=True)
class ChosenProfile:
    profile: Profile
    why: str


def _constraint_misfit(profile: Profile, model: ModelSelector) -> str | None:
    """Why the profile fails the NIMCache's filters (NVIDIA's fields, their meaning), or None."""
    if model.engine:
        wanted = _ENGINES.get(model.engine.lower(), model.engine.lower())
        if profile.engine != wanted:
            return f"{FIELD}.engine is {model.engine}, profile has {profile.engine}"
    checks: list[tuple[str | None, str, str]] = [
        (model.precision, profile.precision, "precision"),
        (model.tensor_parallelism, str(profile.tp), "tensorParallelism"),
        (model.qos_profile, profile.mode, "qosProfile"),
    ]
    for wanted_value, actual, name in checks:
        if wanted_value and wanted_value.lower() != actual.lower():
            return f"{FIELD}.{name} is {wanted_value}, profile has {actual}"
    if model.lora is not None and model.lora != profile.lora:
        return f"{FIELD}.lora is {str(model.lora).lower()}, profile has feat_lora {str(profile.lora).lower()}"
    if model.buildable is not None and model.buildable != profile.buildable:
        return f"{FIELD}.buildable is {str(model.buildable).lower()}, profile has {str(profile.buildable).lower()}"
    ids = {d for g in model.gpus for i in g.ids if (d := device_id(i))}
    if ids and profile.gpu_device is not None and profile.gpu_device not in ids:
        return f"{FIELD}.gpus[].ids are {', '.join(sorted(ids))}, profile is built for device {profile.gpu_device}"
    return None


def _products(
    model: ModelSelector | None, nodes: Sequence[NodeGpuFacts], pools: Sequence[ScaleUpOption]
) -> list[tuple[str, bool]]:
    """(GPU product, pinned by the spec) to choose a profile for: the spec's, else the cluster's now and
    what its autoscalers' pools may add."""
    named = [g.product for g in (model.gpus if model else []) if g.product]
    if named:
        return [(p, True) for p in dict.fromkeys(named)]
    products = {n.product for n in nodes if n.product and n.gpus} | {o.product for o in pools if not o.excluded}
    return [(p, False) for p in sorted(products)]


def choose_cache_profiles(
    manifest: ImageManifest,
    model: ModelSelector | None,
    nodes: Sequence[NodeGpuFacts],
    pools: Sequence[ScaleUpOption] = (),
) -> list[ChosenProfile]:
    """The profiles to fetch, one per GPU product (fewer when products share one), each with why.
    ``pools`` are the node shapes autoscalers may add: their products count as the cluster's.

    Raises :class:`ProfileError` listing why no profile fits (the filters, or no GPU node at all).
    """
    model = model or ModelSelector()
    rejected = [Rejection(s.id, s.why) for s in manifest.skipped]
    kept = []
    for profile in manifest.profiles:
        misfit = _constraint_misfit(profile, model)
        if misfit is None:
            kept.append(profile)
        else:
            rejected.append(Rejection(profile.id, misfit))
    if not kept:
        lines = "; ".join(f"{r.id}: {r.why}" for r in rejected)
        raise ProfileError(f"no profile of {manifest.name} passes {FIELD} ({lines})", rejected)
    narrowed = manifest.model_copy(update={"profiles": tuple(kept)})
    products = _products(model, nodes, pools)
    if not products:
        raise ProfileError(
            f"no node of the cluster has GPUs, so no profile of {manifest.name} can run here yet: name the GPUs "
            f"to cache for in {FIELD}.gpus (the cluster autoscaler may add them) or the profiles in {FIELD}.profiles",
            rejected,
        )
    chosen: dict[str, ChosenProfile] = {}
    failures: list[str] = []
    for product, pinned in products:
        if pinned:
            selector = ProfileSelector(gpu_products=(product,))
            decision_nodes, decision_pools = list(nodes), list(pools)
        else:
            selector = ProfileSelector()
            decision_nodes = [n for n in nodes if n.product == product]
            decision_pools = [o for o in pools if o.product == product]
        try:
            decision = select_profile(narrowed, decision_nodes, selector=selector, capacity=decision_pools)
        except ProfileError as err:
            failures.append(f"{product}: {err}")
            continue
        why = f"for {product}: {decision.reason.removeprefix(f'{decision.profile.id}: ')}"
        before = chosen.get(decision.profile.id)
        chosen[decision.profile.id] = ChosenProfile(decision.profile, f"{before.why}; {why}" if before else why)
    if not chosen:
        raise ProfileError(
            f"no profile of {manifest.name} can run on the cluster's GPUs: {'; '.join(failures)}", rejected
        )
    return sorted(chosen.values(), key=lambda c: c.profile.id)


@dataclass(frozen=True)
class NgcProfiles:
    """What the download of an NGC cache fetches: ``ids`` for ``--profiles`` (None: the image decides),
    the status entries saying why, or why the cache must wait or fails."""

    ids: tuple[str, ...] | None = None
    cached: tuple[CachedProfile, ...] = ()
    waiting: Failure | None = None
    failure: Failure | None = None


def _cached(profile: Profile, manifest: ImageManifest, why: str) -> CachedProfile:
    return CachedProfile(
        name=profile.id,
        model=manifest.models[0] if len(manifest.models) == 1 else None,
        release=manifest.release,
        config=profile.tags,
        reason=why if profile.name is None else f"{profile.name}, {why}",
    )


def ngc_profiles(
    spec: NIMCacheSpec,
    *,
    lookup: Callable[[], Known | Unknown | Probing],
    nodes: Sequence[NodeGpuFacts],
    previous: NIMCacheStatus | None,
    generation: int,
    pools: Sequence[ScaleUpOption] = (),
) -> NgcProfiles:
    """The profiles of an ``ngc`` source. ``lookup`` asks the puller image for its manifest (called only
    when the choice is not made yet): the choice is made once per generation of the spec and kept in
    status, so a node joining later never changes the download of a cache that is filling or filled."""
    ngc = spec.source.ngc
    if ngc is None or ngc.model_endpoint is not None:
        return NgcProfiles()
    if ngc.model is not None and ngc.model.profiles:
        given = tuple(ngc.model.profiles)
        return NgcProfiles(given, tuple(CachedProfile(name=p, reason=f"listed in {FIELD}.profiles") for p in given))
    if previous is not None and previous.profiles and previous.observed_generation == generation:
        return NgcProfiles(tuple(p.name for p in previous.profiles), tuple(previous.profiles))
    found = lookup()
    if isinstance(found, Probing):
        return NgcProfiles(waiting=Failure("DiscoveringManifest", found.message))
    if isinstance(found, Unknown):
        return NgcProfiles(
            failure=Failure(
                "ManifestUnavailable",
                f"the profiles to cache come from the manifest of spec.source.ngc.modelPuller, which cannot be "
                f"read: {found.message}; or list them in {FIELD}.profiles",
            )
        )
    listing = found.listing
    if listing is None:
        return NgcProfiles()  # a model-free NIM: download-to-cache decides, as NVIDIA's operator lets it
    if not isinstance(listing, ImageManifest):
        return NgcProfiles(
            failure=Failure(
                "NotANIMImage",
                f"spec.source.ngc.modelPuller {found.image} runs nim-runtime, not a NIM: cache one of its models "
                "with spec.source.catalog instead",
            )
        )
    try:
        chosen = choose_cache_profiles(listing, ngc.model, nodes, pools)
    except ProfileError as err:
        return NgcProfiles(failure=Failure("NoProfileFits", str(err)))
    return NgcProfiles(tuple(c.profile.id for c in chosen), tuple(_cached(c.profile, listing, c.why) for c in chosen))
