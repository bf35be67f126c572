"""Where a NIMService's manifest comes from: a ConfigMap, our catalog, or the image itself.

The profile ids the operator puts in NIM_MODEL_PROFILE must be ids the image accepts. So:

1. ``spec.modelManifest`` names a ConfigMap: its manifest, ours or NIM's (v1 or v2), is the user's word.
2. An image that runs our runtime (see :func:`placement.runs_our_runtime`): our catalog's manifest of
   ``spec.model.name``.
3. Any other image is asked (:mod:`discovery`): a NIM image answers with its own manifest, whose
   hash ids are then ranked like ours; our runtime under another name answers with its catalog. While
   the probe runs, the NIMService waits (nothing is applied, so no rollout follows the answer). When the
   image has no manifest or cannot be asked, no profile is set: the image chooses, and status says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from nim_operator.api.spec import NIMServiceSpec
from nim_operator.discovery import Known, ManifestDiscovery, Probing, Unknown
from nim_operator.kube import Kube
from nim_operator.manifest_probe import probe_request
from nim_operator.placement import manifest_for, runs_our_runtime
from nim_operator.status import Failure
from nim_runtime.profiles import ManifestFormatError, ProfileSet, RuntimeListing, parse_manifest_document

#: ConfigMap keys that may hold a manifest: ours, then the one NVIDIA's operator writes.
MANIFEST_KEYS = ("manifest.yaml", "model_manifest.yaml")
DISCOVERING = "DiscoveringManifest"


@dataclass(frozen=True)
class ManifestChoice:
    """The manifest to select from (None: the image chooses), and a sentence on where it came from."""

    manifest: ProfileSet | None
    about: str
    #: The probe is running: apply nothing yet.
    waiting: Failure | None = None
    #: The spec names a manifest that cannot be used: the NIMService fails until it is fixed.
    refusal: Failure | None = None


def from_config_map(namespace: str, name: str, data: dict[str, str] | None, *, image: str) -> ManifestChoice:
    where = f"spec.modelManifest: ConfigMap {namespace}/{name}"
    if data is None:
        return ManifestChoice(None, "", refusal=Failure("InvalidManifest", f"{where} does not exist"))
    key = next((k for k in MANIFEST_KEYS if k in data), None)
    if key is None:
        keys = " or ".join(MANIFEST_KEYS)
        return ManifestChoice(None, "", refusal=Failure("InvalidManifest", f"{where} has no key {keys}"))
    try:
        manifest = parse_manifest_document(data[key], fallback_name=image)
    except ValueError as err:  # pydantic's ValidationError and ManifestFormatError are ValueErrors
        return ManifestChoice(None, "", refusal=Failure("InvalidManifest", f"{where} holds an invalid manifest: {err}"))
    return ManifestChoice(manifest, f"manifest from {where}")


def from_discovery(spec: NIMServiceSpec, found: Known | Unknown | Probing) -> ManifestChoice:
    """The choice once the image was asked (pure)."""
    image = found.image
    if isinstance(found, Probing):
        return ManifestChoice(
            None, f"waiting for the manifest of {image}: {found.message}", Failure(DISCOVERING, found.message)
        )
    if isinstance(found, Unknown):
        return ManifestChoice(
            None,
            f"the manifest of {image} is unknown ({found.reason}: {found.message}); no NIM_MODEL_PROFILE is set, "
            "the image selects its own profile",
        )
    listing = found.listing
    if listing is None:
        return ManifestChoice(
            None, f"{image} carries no model manifest; no NIM_MODEL_PROFILE is set, the image selects its own profile"
        )
    if isinstance(listing, RuntimeListing):
        wanted = spec.model.name if spec.model and spec.model.name else None
        manifest = listing.find(wanted) if wanted else None
        if manifest is None:
            what = f"has no model {wanted}" if wanted else "serves whichever model NIM_MODEL_NAME names"
            return ManifestChoice(
                None, f"{image} runs nim-runtime {listing.runtime} and {what}; the runtime selects its profile"
            )
        return ManifestChoice(
            manifest, f"{image} runs nim-runtime {listing.runtime}: its catalog's manifest of {manifest.name}"
        )
    return ManifestChoice(
        listing, f"the manifest {image} carries ({listing.nim_schema}, {len(listing.profiles)} profiles)"
    )


def resolve_manifest(
    kube: Kube,
    discovery: ManifestDiscovery,
    namespace: str,
    name: str,
    spec: NIMServiceSpec,
    *,
    runtime_repository: str | None,
) -> ManifestChoice:
    image = spec.image.repository + (f":{spec.image.tag}" if spec.image.tag else "")
    if spec.model_manifest:
        data = kube.read_config_map(namespace, spec.model_manifest)
        return from_config_map(namespace, spec.model_manifest, data, image=image)
    if runs_our_runtime(spec.image.repository, runtime_repository):
        manifest = manifest_for(spec)
        if manifest is not None:
            return ManifestChoice(manifest, f"our catalog's manifest of {manifest.name} ({image} runs our runtime)")
        model = spec.model.name if spec.model and spec.model.name else None
        why = f"{model} is not in the operator's catalog" if model else "spec.model.name names no catalog model"
        return ManifestChoice(None, f"no manifest is known for {image}: {why}; the runtime selects its profile")
    request = probe_request(
        namespace,
        spec.image.repository,
        spec.image.tag,
        pull_policy=spec.image.pull_policy,
        pull_secrets=spec.image.pull_secrets,
        node_selector=spec.node_selector,
        tolerations=spec.tolerations,
        user_id=spec.user_id,
        group_id=spec.group_id,
    )
    return from_discovery(spec, discovery.lookup(request, ("NIMService", namespace, name)))


__all__ = ["DISCOVERING", "MANIFEST_KEYS", "ManifestChoice", "ManifestFormatError", "resolve_manifest"]
