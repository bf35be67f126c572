"""What an image says about its models, and every manifest format the operator reads, told apart.

An image is asked for its manifest the way NVIDIA's operator asks a NIM image: print the file at NIM's
manifest path, or say it is not there. Our runtime's image has no single model, so it answers with
``nim-runtime manifest``: a listing of its whole catalog (:class:`RuntimeListing`), which tells the
operator both that the image runs our runtime and which profile ids it accepts for each model.

Formats, as :func:`parse_listing` and :func:`parse_manifest_document` tell them apart:

- ours, one model (``name``, ``source``, ``profiles``): :class:`ModelManifest`, the catalog's format;
- ours, a runtime's catalog (``schema_version: nim-runtime/1``): :class:`RuntimeListing`;
- NIM schema v1 (a map of profile hash to tags) or 2.x (a profile list): :class:`ImageManifest`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from nim_runtime.profiles.manifest import ModelManifest
from nim_runtime.profiles.nim_manifest import (
    IMAGE_MANIFEST_PATHS,
    ImageManifest,
    ManifestFormatError,
    is_nim_manifest,
    load_yaml,
    nim_manifest_from_data,
)

LISTING_SCHEMA = "nim-runtime/1"
#: What the probe prints when an image has no manifest (NVIDIA's operator looks for the same words).
NOT_FOUND = "model_manifest.yaml not found"


class RuntimeListing(BaseModel):
    """Our runtime image's answer: its version, default model and every catalog manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["nim-runtime/1"]
    runtime: str = Field(description="The nim-runtime version of the image.")
    default_model: str = Field(description="The model served when NIM_MODEL_NAME is unset.")
    models: tuple[ModelManifest, ...]

    def find(self, name: str) -> ModelManifest | None:
        """The model by catalog or served name, case-insensitively, as the runtime itself finds it."""
        wanted = name.casefold()
        return next((m for m in self.models if wanted in (m.name.casefold(), m.model_name.casefold())), None)


ImageListing = RuntimeListing | ImageManifest


def render_listing(models: list[ModelManifest], *, runtime: str, default_model: str) -> str:
    """The YAML ``nim-runtime manifest`` prints."""
    listing = RuntimeListing(
        schema_version=LISTING_SCHEMA, runtime=runtime, default_model=default_model, models=tuple(models)
    )
    return yaml.safe_dump(listing.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def probe_script() -> str:
    """The shell line the discovery Job runs in any image: NIM's manifest file, else our runtime's
    listing, else the words NVIDIA's operator also looks for. Output on stdout only: it is the pod's log."""
    files = " ".join(IMAGE_MANIFEST_PATHS)
    return (
        f'for f in {files}; do if [ -f "$f" ]; then exec cat "$f"; fi; done; '
        "if command -v nim-runtime >/dev/null 2>&1; then exec nim-runtime manifest; fi; "
        f'echo "{NOT_FOUND}"'
    )


def _is_ours(data: Mapping[str, Any]) -> bool:
    return "profiles" in data and "name" in data and "source" in data


def parse_listing(text: str, *, image: str) -> ImageListing | None:
    """What an image's probe printed: its listing, or None when the image has no manifest.

    Raises ``ManifestFormatError`` (a ``ValueError``) naming what was found instead of a manifest.
    """
    stripped = text.strip()
    if not stripped or stripped.splitlines()[-1].strip() == NOT_FOUND:
        return None
    junk = ManifestFormatError(f"{image} printed something that is no manifest: {stripped[:160]!r}")
    try:
        data = load_yaml(stripped)
    except yaml.YAMLError as err:
        raise junk from err
    if isinstance(data, Mapping) and data.get("schema_version") == LISTING_SCHEMA:
        return RuntimeListing.model_validate(data)
    if isinstance(data, Mapping) and is_nim_manifest(data):
        return nim_manifest_from_data(data, fallback_name=image)
    raise junk


def parse_manifest_document(text: str, *, fallback_name: str) -> ModelManifest | ImageManifest:
    """A manifest handed over in a ConfigMap: ours (one model) or NIM's (v1 or v2)."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ManifestFormatError(f"not valid YAML: {err}") from err
    if isinstance(data, Mapping) and _is_ours(data):
        return ModelManifest.model_validate(data)
    if isinstance(data, Mapping) and is_nim_manifest(data):
        return nim_manifest_from_data(data, fallback_name=fallback_name)
    if isinstance(data, Mapping) and "schema_version" in data:
        raise ManifestFormatError(
            f"schema_version {data['schema_version']!r} is not one the operator reads: NIM's v1 (no "
            "schema_version) or 2.x, or ours (no schema_version, with name, source and profiles)"
        )
    raise ManifestFormatError(
        "a model manifest is either ours (a mapping with name, source and profiles) or NIM's (a v1 map of "
        "profile ids to {model, release, tags} or schema_version 2.x with a profiles list)"
    )
