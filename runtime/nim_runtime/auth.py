"""API keys on inference routes: ``Authorization: Bearer <key>``, as ``vllm serve --api-key`` asks.

The gatekeeper middleware (:mod:`nim_runtime.middleware`) applies these rules.

The keys are NIM_API_KEY (ours) and vLLM's ``--api-key`` in NIM_PASSTHROUGH_ARGS (or ``VLLM_API_KEY``);
any of them is accepted. vLLM guards everything under ``/v1``; here too, except the management
endpoints NIM puts under ``/v1`` (health, metrics, version, metadata, manifest, license): probes and
scrapers carry no credentials. vLLM's own extra routes (score, rerank, pooling, classify, tokenize)
are guarded as well, since they run the model.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

#: Path prefixes that need a key when one is configured.
PROTECTED_PREFIXES = ("/v1/", "/v2/", "/inference/", "/ls/", "/tokenize", "/detokenize", "/score", "/rerank",
                      "/pooling", "/classify")  # fmt: skip
#: NIM's management paths under /v1, open to probes and scrapers.
OPEN_PREFIXES = ("/v1/health/", "/v1/metrics", "/v1/version", "/v1/metadata", "/v1/manifest", "/v1/license")


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) and not path.startswith(OPEN_PREFIXES)


def bearer_matches(authorization: str | None, api_key: str | Sequence[str]) -> bool:
    """Whether the header carries the key (or one of the keys); compared in constant time."""
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    offered = token.strip().encode()
    keys = [api_key] if isinstance(api_key, str) else api_key
    matched = False
    for key in keys:  # every key is compared, so the time does not tell which one nearly matched
        matched |= hmac.compare_digest(offered, key.encode())
    return matched
