"""Model manifests, the shipped catalog, and profile selection.

Importable without vLLM: the operator uses this package to place pods.
"""

from nim_runtime.profiles.catalog import find_manifest, find_manifest_for_image, load_catalog, parse_manifest
from nim_runtime.profiles.manifest import GenerationDefaults, ModelManifest, Profile
from nim_runtime.profiles.selection import (
    NodeGpuFacts,
    ProfileDecision,
    ProfileError,
    ProfileSelector,
    Rejection,
    gpu_matches,
    select_local_profile,
    select_profile,
)

__all__ = [
    "GenerationDefaults",
    "ModelManifest",
    "NodeGpuFacts",
    "Profile",
    "ProfileDecision",
    "ProfileError",
    "ProfileSelector",
    "Rejection",
    "find_manifest",
    "find_manifest_for_image",
    "gpu_matches",
    "load_catalog",
    "parse_manifest",
    "select_local_profile",
    "select_profile",
]
