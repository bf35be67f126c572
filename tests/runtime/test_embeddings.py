"""Embeddings with the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

import math

import openai
import pytest

from tests.runtime.conftest import MINILM, Server

pytestmark = pytest.mark.runtime


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_related_sentences_are_closer(minilm: Server) -> None:
    client = openai.OpenAI(base_url=f"{minilm.url}/v1", api_key="unused", max_retries=0)
    sentences = ["A cat sits on the mat.", "A kitten is lying on a rug.", "Quarterly tax filings are due."]
    result = client.embeddings.create(model=MINILM, input=sentences)
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_chat_on_an_embedding_model_is_a_clear_400(minilm: Server) -> None:
    client = openai.OpenAI(base_url=f"{minilm.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="does not support"):
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])
