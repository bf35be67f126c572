"""Model manifests, the shipped catalog, and profile selection.

Importable without vLLM: the operator uses this package to place pods.
"""

from nim_runtime.profiles.catalog import find_manifest, find_manifest_for_image, load_catalog, parse_manifest
from nim_runtime.profiles.fit import NodeGpuFacts, ScaleUpOption
from nim_runtime.profiles.manifest import GenerationDefaults, ModelArchitecture, ModelManifest, Profile
from nim_runtime.profiles.selection import (
    Availability,
    ProfileDecision,
    ProfileError,
    ProfileSelector,
    Rejection,
    gpu_matches,
    pool_order,
    select_local_profile,
    select_profile,
    selector_products,
)

__all__ = [
    "Availability",
    "GenerationDefaults",
    "ModelArchitecture",
    "ModelManifest",
    "NodeGpuFacts",
    "Profile",
    "ProfileDecision",
    "ProfileError",
    "ProfileSelector",
    "Rejection",
    "ScaleUpOption",
    "find_manifest",
    "find_manifest_for_image",
    "gpu_matches",
    "load_catalog",
    "parse_manifest",
    "pool_order",
    "select_local_profile",
    "select_profile",
    "selector_products",
]
