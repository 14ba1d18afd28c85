"""Errors raised by the stores; the core turns them into user-facing errors."""

from __future__ import annotations


class StoreFailure(Exception):
    """A store cannot do what was asked; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class RegistryVersionError(StoreFailure):
    """The registry file was written by a newer contextkit, or is not a registry at all."""


class ApplyConflictError(StoreFailure):
    """The workspace changed between plan and apply."""


class MissingError(StoreFailure):
    """A workspace or record does not exist."""
