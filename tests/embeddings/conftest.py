"""Fixtures for the embeddings layer: the packaged model (loaded once) and the OpenAI stub."""

from __future__ import annotations

import os

import numpy as np
import pytest
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)

# Nothing in these tests may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class CountingEncoder:
    """Wraps an encoder and records every text it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.batch_size = inner.batch_size
        self.normalize = inner.normalize
        self.calls: list[list[str]] = []

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture(scope="session")
def minilm():
    """The real packaged all-MiniLM-L6-v2 encoder, loaded once per test session (~6 s)."""
    from contextkit.embeddings import get_encoder

    encoder = get_encoder("minilm")
    encoder.encode(["warm up"])
    return encoder


@pytest.fixture
def count_calls():
    """``count_calls(encoder)`` wraps an encoder so a test can see every text it encoded."""
    return CountingEncoder
