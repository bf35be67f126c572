"""The optional API key (ours, beyond NIM): ``Authorization: Bearer <NIM_API_KEY>`` on inference routes.

Health, metrics and the management endpoints stay open: probes and scrapers carry no credentials.
"""

from __future__ import annotations

import hmac

#: Path prefixes that need the key when one is configured.
PROTECTED_PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize",
                      "/detokenize", "/inference/", "/ls/")  # fmt: skip


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES)


def bearer_matches(authorization: str | None, api_key: str) -> bool:
    """Whether the header carries the key; compared in constant time."""
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())
