"""Model manifests (ours and NIM's), the shipped catalog, and profile selection.

Importable without vLLM: the operator uses this package to place pods.
"""

from nim_runtime.profiles.catalog import catalog_listing, find_manifest, load_catalog, parse_manifest
from nim_runtime.profiles.fit import NodeGpuFacts, ScaleUpOption
from nim_runtime.profiles.hardware import device_id
from nim_runtime.profiles.listing import (
    NOT_FOUND,
    ImageListing,
    RuntimeListing,
    parse_listing,
    parse_manifest_document,
    probe_script,
)
from nim_runtime.profiles.manifest import GenerationDefaults, ModelArchitecture, ModelManifest, Profile, ProfileSet
from nim_runtime.profiles.nim_manifest import ImageManifest, ManifestFormatError, parse_nim_manifest, readable_name
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
    "NOT_FOUND",
    "Availability",
    "GenerationDefaults",
    "ImageListing",
    "ImageManifest",
    "ManifestFormatError",
    "ModelArchitecture",
    "ModelManifest",
    "NodeGpuFacts",
    "Profile",
    "ProfileDecision",
    "ProfileError",
    "ProfileSelector",
    "ProfileSet",
    "Rejection",
    "RuntimeListing",
    "ScaleUpOption",
    "catalog_listing",
    "device_id",
    "find_manifest",
    "gpu_matches",
    "load_catalog",
    "parse_listing",
    "parse_manifest",
    "parse_manifest_document",
    "parse_nim_manifest",
    "pool_order",
    "probe_script",
    "readable_name",
    "select_local_profile",
    "select_profile",
    "selector_products",
]
