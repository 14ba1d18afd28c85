"""Errors raised by ``contextkit.embeddings``.

Every error carries the same fields as the core's ``ContextKitError`` (``code``, ``http_status``,
``message``, ``hint``, ``details``), so the core can turn them into its error body without knowing
each class::

    try:
        encoder = build_encoder("openai_small", config)
    except EmbeddingError as err:
        body = {"error": {"code": err.code, "message": err.message, "details": err.details}}

This module imports nothing outside the standard library (``embeddings`` is a leaf layer).
"""

from __future__ import annotations

from typing import Any


class EmbeddingError(Exception):
    """Base class of every error this package raises on purpose."""

    code = "embedding_error"
    http_status = 400

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def details(self) -> dict[str, Any]:
        """Machine-readable context for the error body (always JSON-serialisable)."""
        return {"hint": self.hint} if self.hint else {}

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class EncoderConfigError(EmbeddingError):
    """A model entry in the repo config is invalid: unknown type, missing path, bad option."""

    code = "invalid_embedding_model"


class EncoderFailure(EmbeddingError):
    """Encoding failed at run time: the model could not load, or the hosted API kept failing.

    ``attempts`` counts the calls made for the failing batch (retries included);
    ``provider_status`` is the upstream HTTP status when there was one.
    """

    code = "encoder_failure"
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        hint: str | None = None,
        attempts: int = 1,
        provider_status: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.attempts = attempts
        self.provider_status = provider_status

    @property
    def details(self) -> dict[str, Any]:
        return {
            **super().details,
            "model": self.model,
            "attempts": self.attempts,
            "provider_status": self.provider_status,
        }


class ChunkingError(EmbeddingError):
    """Chunking options are invalid (size/overlap), or don't fit the encoder's input limit."""

    code = "invalid_chunking"


class PipelineInputError(EmbeddingError):
    """The rows given to the encode pipeline don't match the view: a missing key or text column,
    a column name the vector table reserves, a duplicate key."""

    code = "invalid_embedding_input"
