"""Checks on message content that vLLM would answer late or vaguely: images.

A text-only model gets a clear 400 naming the message part, instead of a template error; an image URL
that can never load (wrong scheme, broken data URL) gets a 400 before any fetch is attempted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from nim_runtime.errors import ApiError

IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image", "image_pil", "image_embeds"})
ALLOWED_SCHEMES = frozenset({"http", "https", "data"})


def image_parts(messages: Any) -> Iterator[tuple[str, Any]]:
    """``(param, url)`` for every image part of OpenAI chat messages; malformed shapes are skipped
    (vLLM's own validation reports them)."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
                value = part.get(part["type"])
                url = value.get("url") if isinstance(value, dict) else value
                yield f"messages.{i}.content.{j}", url


def image_url_problem(url: Any) -> str | None:
    """Why this image URL cannot work, or None when it might."""
    if not isinstance(url, str) or not url.strip():
        return "the image URL must be a non-empty string"
    parts = urlsplit(url.strip())
    if parts.scheme not in ALLOWED_SCHEMES:
        return f"unsupported image URL scheme {parts.scheme or '(none)'!r}; use http(s):// or data:image/..."
    if parts.scheme == "data":
        header, sep, payload = url.partition(",")
        if not sep or not header.startswith("data:image/") or ";base64" not in header:
            return "a data URL must look like data:image/<format>;base64,<payload>"
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return "the data URL's payload is not valid base64"
    elif not parts.netloc:
        return "the image URL has no host"
    return None


def check_chat_images(messages: Any, *, multimodal: bool, model: str) -> None:
    """Raise a 400 for an unusable image URL, or for any image sent to a text-only model."""
    for param, url in image_parts(messages):
        problem = image_url_problem(url)
        if problem is not None:
            raise ApiError(400, f"Invalid image in {param}: {problem}", param=param)
        if not multimodal:
            raise ApiError(
                400,
                f"The model {model!r} is text-only and cannot take images ({param}); send text content "
                "or serve a multimodal model",
                param=param,
            )
