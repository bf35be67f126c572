"""The manifests shipped with the runtime, one YAML file per model under ``catalog/``.

Their profile ids are ours: only an image that runs our runtime accepts them in NIM_MODEL_PROFILE. No
catalog entry claims another vendor's image (NVIDIA's NIM images accept only the ids of their own
manifest, which the operator reads from the image itself).
"""

from __future__ import annotations

import functools
from importlib import resources

import yaml

from nim_runtime.profiles.manifest import ModelManifest


def parse_manifest(text: str) -> ModelManifest:
    """Parse one manifest from YAML (or JSON) text, as found in a file or a ConfigMap.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) with the offending field.
    """
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a model manifest must be a YAML mapping with `name`, `source` and `profiles`")
    return ModelManifest.model_validate(data)


@functools.cache
def load_catalog() -> dict[str, ModelManifest]:
    """Every shipped manifest, keyed by catalog name. Cached: the files never change at run time."""
    folder = resources.files(__package__).joinpath("catalog")
    manifests = (parse_manifest(f.read_text()) for f in folder.iterdir() if f.name.endswith(".yaml"))
    return {m.name: m for m in sorted(manifests, key=lambda m: m.name)}


def find_manifest(name: str) -> ModelManifest | None:
    """The manifest for a catalog name or served name, case-insensitively, or None."""
    wanted = name.casefold()
    for manifest in load_catalog().values():
        if wanted in (manifest.name.casefold(), manifest.model_name.casefold()):
            return manifest
    return None


def catalog_listing(default_model: str, runtime: str) -> str:
    """The catalog as ``nim-runtime manifest`` prints it for the operator's discovery Job."""
    from nim_runtime.profiles.listing import render_listing

    return render_listing(list(load_catalog().values()), runtime=runtime, default_model=default_model)
